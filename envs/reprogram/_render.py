"""Pictures of reprogramming episodes: source cells, goal cells and the population's path in 2-D.

The embedding is the env's own fixed PCA (its first two components), so pictures of the same task are
comparable across agents and runs. Cells with identical states (Boolean worlds) are jittered slightly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ._env import ReprogramEnv

__all__ = ["episode_cells", "plot_episodes"]

_JITTER = 0.04


def episode_cells(env: ReprogramEnv, seed: int | None, actions: list[Any]) -> list[np.ndarray]:
    """Replay ``actions`` from ``reset(seed=seed)`` and return the cells (N, G) before and after each step."""
    env.reset(seed=seed)
    cells = [env.state.cells[0].numpy().copy()]
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        cells.append(env.state.cells[0].numpy().copy())
        if terminated or truncated:
            break
    return cells


def _embed(env: ReprogramEnv, cells: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cells (M, G) -> (M, 2) in the first two components of the env's PCA."""
    dyn = env.dynamics
    x = torch.as_tensor(np.asarray(cells), dtype=torch.float32)
    return ((x - dyn.mean) @ dyn.components[:, :2]).numpy()


def plot_episodes(env: Any, episodes: list[Any], path: str | Path, *, title: str = "", max_panels: int = 3) -> Path:
    """Write a PNG with one panel per episode (at most ``max_panels``).

    Parameters
    ----------
    env
        The (unwrapped) :class:`ReprogramEnv` the episodes were played in; it is reset and replayed.
    episodes
        Objects with ``seed``, ``actions``, ``names`` and ``success`` (``cellgym.agents.zoo._rollout.Episode``).
    path
        Output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = getattr(env, "unwrapped", env)
    shown = episodes[:max_panels]
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 4.8), squeeze=False)
    rng = np.random.default_rng(0)
    reference = _embed(env, env.dynamics.world.reference)
    target = _embed(env, env.dynamics.world.target)
    for ax, ep in zip(axes[0], shown, strict=False):
        cells = episode_cells(env, ep.seed, ep.actions)
        points = [_embed(env, c) for c in cells]
        ax.scatter(*(reference + rng.normal(0, _JITTER, reference.shape)).T, s=6, c="0.85", label="reference cells")
        ax.scatter(*(points[0] + rng.normal(0, _JITTER, points[0].shape)).T, s=14, c="tab:blue", alpha=0.7,
                   label="source population")
        ax.scatter(*(points[-1] + rng.normal(0, _JITTER, points[-1].shape)).T, s=14, c="tab:green", alpha=0.7,
                   label="final population")
        ax.scatter(*target.T, s=260, marker="*", c="tab:red", edgecolors="k", zorder=5, label="target")
        centroids = np.stack([p.mean(0) for p in points])
        ax.plot(*centroids.T, "-o", c="k", lw=1.5, ms=4, zorder=4, label="population mean")
        for i, name in enumerate(ep.names[: len(centroids) - 1]):
            a, b = centroids[i], centroids[i + 1]
            ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": "->", "color": "k", "lw": 1.5}, zorder=4)
            ax.annotate(f"{i + 1}. {name}", xy=(a + b) / 2, fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_title(f"seed {ep.seed}: {'success' if ep.success else 'failure'} in {len(cells) - 1} steps",
                     fontsize=10)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[0][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
