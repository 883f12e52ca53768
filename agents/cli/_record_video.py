"""``cellgym record-video``: play a trained agent (or a baseline) and write its episodes as an animated GIF.

Frames are the env's ``render()`` in ``render_mode="rgb_array"`` (H x W x 3 uint8), collected by gymnasium's
``RenderCollection`` wrapper and written with Pillow (RL Zoo's ``record_video`` writes mp4 through moviepy,
which cellgym does not depend on).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cellgym.predictors.base.errors import CellgymError

from ._zoo import add_enjoy_options, model_dir, resolve_run

__all__ = ["add_parser", "record_video", "run", "write_gif"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``record-video``."""
    p = sub.add_parser("record-video", help="write a trained agent's (or a baseline's) episodes as a GIF",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_enjoy_options(p)  # --env --algo -f --exp-id --load-best --load-checkpoint
    p.add_argument("--episodes", type=int, default=3, help="episodes recorded (default 3)")
    p.add_argument("--seed", type=int, default=0, help="episode k starts from seed + k")
    p.add_argument("-o", "--output", default=None, metavar="GIF",
                   help="output file (default <run>/videos/<algo>-<task>.gif, or videos/ for a baseline)")
    p.add_argument("--fps", type=int, default=2, help="frames per second (default 2: one perturbation per frame)")
    p.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY:VALUE",
                   help="gymnasium.make kwargs (default: those of the run)")
    p.set_defaults(run=run)


def write_gif(frames: list[Any], path: str | Path, fps: int) -> Path:
    """Write H x W x 3 uint8 frames as a looping GIF (atomically); returns ``path``."""
    import numpy as np
    from PIL import Image

    if not frames:
        raise CellgymError("record-video: the env returned no frames.")
    first = np.asarray(frames[0])
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise CellgymError(f"record-video: render() must return H x W x 3 uint8 arrays, got {first.shape} {first.dtype}.")
    images = [Image.fromarray(np.asarray(f)) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / max(fps, 1)), loop=0)
    os.replace(tmp, path)
    return path


def record_video(env: Any, agent: Any, episodes: int, *, seed: int = 0) -> list[Any]:
    """The frames of ``episodes`` episodes of ``agent`` on ``env`` (made with ``render_mode="rgb_array"``)."""
    from gymnasium.wrappers import RenderCollection

    from cellgym.agents.zoo._rollout import run_episodes

    if env.render_mode != "rgb_array":
        raise CellgymError(f"record-video: the env must be made with render_mode='rgb_array', got {env.render_mode!r}.")
    collected = RenderCollection(env, pop_frames=False, reset_clean=False)
    run_episodes(agent, collected, episodes, seed=seed)
    return collected.render()


def run(args: argparse.Namespace) -> int:
    """Load, play, write."""
    import gymnasium

    import cellgym.envs  # noqa: F401  (registers the tasks)
    from cellgym.registry import get, is_parallel_task

    from ._enjoy import load_agent

    get("tasks", args.env)
    if is_parallel_task(args.env):
        raise CellgymError(f"record-video records gymnasium tasks; {args.env} is a PettingZoo task "
                           "(use `cellgym enjoy --plot`).")
    if args.episodes < 1:
        raise CellgymError(f"record-video --episodes: expected >= 1, got {args.episodes}.")
    run_dir, env_kwargs = resolve_run(args)
    try:
        env = gymnasium.make(args.env, render_mode="rgb_array", **env_kwargs)
    except ValueError as exc:  # an env without rgb_array rendering
        raise CellgymError(f"record-video: {args.env} cannot render rgb_array frames ({exc}).") from exc
    agent = load_agent(args.algo, args.env, run_dir, env, model_dir(run_dir, args) if run_dir else None,
                       getattr(args, "seed", None))
    frames = record_video(env, agent, args.episodes, seed=args.seed)
    env.close()
    default = (run_dir / "videos" if run_dir else Path("videos")) / f"{args.algo}-{args.env}.gif"
    path = write_gif(frames, args.output or default, args.fps)
    print(f"wrote {path}: {len(frames)} frames of {args.episodes} episodes, {frames[0].shape[1]}x{frames[0].shape[0]}")
    return 0
