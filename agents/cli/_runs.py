"""Run folders of ``cellgym train``: unique names, their checkpoints, and which checkpoint is the newest.

A run folder ``runs/<algo>/<task>_<k>/`` holds ``model/`` (saved at the end, or when a SIGINT/SIGTERM stops
training) and ``checkpoints/step_<n>/`` (saved periodically). Every checkpoint folder is written under a
temporary name and renamed into place, so a folder that exists under its final name is complete.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from cellgym.predictors.base._checkpoint import read_yaml
from cellgym.predictors.base.errors import CellgymError, CheckpointError

__all__ = ["Checkpoint", "checkpoints", "newest_checkpoint", "next_run_dir", "read_yaml", "resolve_resume"]

TB_POINTER = "tensorboard_dir.txt"  # where a run's TensorBoard events live when they are not in the run folder


def next_run_dir(folder: str | Path, algo: str, task: str) -> Path:
    """Create and return ``folder/algo/task_<k>`` with the next free ``k`` (1, 2, ...).

    The name is claimed with an exclusive ``mkdir``, so two processes starting at once get different
    folders (the loser of a race tries the next ``k``).
    """
    root = Path(folder) / algo
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.rsplit("_", 1)[1]) for p in root.glob(f"{task}_*") if p.name.rsplit("_", 1)[1].isdigit()]
    k = max(taken, default=0) + 1
    while True:
        run_dir = root / f"{task}_{k}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            k += 1


class Checkpoint:
    """One complete checkpoint folder of a run and the step it was saved at."""

    def __init__(self, path: Path, step: int) -> None:
        self.path, self.step = path, step

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, step={self.step})"


UNKNOWN_STEP = sys.maxsize  # a model/ whose config cannot be read: still the newest (loading it reports why)


def _step(folder: Path) -> int | None:
    """The step a checkpoint folder was saved at, or None when it is not a checkpoint.

    Checkpoint folders appear under their final name only once complete, so any folder there with both files
    counts; a damaged ``config.yaml`` is not skipped in favour of an older checkpoint but reported on loading.
    """
    if not (folder / "config.yaml").is_file() or not (folder / "weights.pt").is_file():
        return None
    name = folder.name.removeprefix("step_")
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        config = None
    if isinstance(config, dict) and isinstance(config.get("num_timesteps"), int):
        return config["num_timesteps"]
    return int(name) if name.isdigit() else UNKNOWN_STEP


def checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The run's complete checkpoints, oldest first (``model/`` after a periodic one of the same step)."""
    found = [Checkpoint(p, s) for p in sorted((run_dir / "checkpoints").glob("step_*")) if (s := _step(p)) is not None]
    found.sort(key=lambda c: c.step)
    model = run_dir / "model"
    if (step := _step(model)) is not None:
        found.append(Checkpoint(model, step))
        found.sort(key=lambda c: c.step)  # stable: model/ stays after a checkpoint of the same step
    return found


def newest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The checkpoint with the most steps (``model/`` on a tie), or None."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(path: str | Path) -> tuple[Path, Checkpoint]:
    """``train -i PATH`` -> (run folder, checkpoint). PATH: a run folder, its ``model/`` or ``checkpoints/step_N/``.

    A run folder, or a ``model/`` that an interruption never wrote, resolves to the run's newest complete
    checkpoint.
    """
    path = Path(path)
    if (path / "config.yml").is_file():
        run_dir = path
    elif path.name == "model" and (path.parent / "config.yml").is_file():
        run_dir = path.parent
    elif path.parent.name == "checkpoints" and (path.parent.parent / "config.yml").is_file():
        run_dir = path.parent.parent
        step = _step(path)
        if step is None:
            raise CheckpointError(f"train -i {path}: not a complete checkpoint (expected config.yaml and weights.pt); "
                                  f"complete ones of this run: {[str(c.path) for c in checkpoints(run_dir)]}.")
        return run_dir, Checkpoint(path, step)
    else:
        raise CellgymError(f"train -i {path}: no such run or checkpoint folder. Pass a run folder "
                           "(runs/<algo>/<task>_<k>), its model/ or one of its checkpoints/step_N/.")
    newest = newest_checkpoint(run_dir)
    if newest is None:
        raise CheckpointError(f"train -i {path}: the run {run_dir} holds no complete checkpoint (it was stopped "
                              "before the first one); start a new run.")
    if path.name == "model" and newest.path != path:
        print(f"cellgym train: {path} was not written (the run was killed); resuming from its newest checkpoint "
              f"{newest.path} (step {newest.step:,}).")
    return run_dir, newest
