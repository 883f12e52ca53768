"""Saving and loading predictor folders: ``config.yaml`` + ``weights.pt``; loading never runs code."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ._atomic import atomic_write, atomic_write_text
from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.pt"


def cellgym_version() -> str:
    """The installed cellgym version (``0+unknown`` from a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cellgym")
    except PackageNotFoundError:
        return "0+unknown"


def write_checkpoint(path: str | Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """Write ``config`` (YAML-safe data) and ``state`` (tensors) into the folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, "cellgym_version": cellgym_version(), **config}
    # each file under a temporary name, then moved, so a crash never leaves half a file
    import torch  # here, not at import: the CLI reads YAML through this module without loading torch

    atomic_write(path / WEIGHTS_FILE, lambda tmp: torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp))
    atomic_write_text(path / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    return path


def read_yaml(file: str | Path, what: str = "checkpoint") -> Any:
    """``yaml.safe_load`` of ``file``; invalid YAML, or a tag that would build a Python object, is one line.

    ``what`` names the file's role in the message (``"checkpoint"``, ``"run config"``).
    """
    file = Path(file)
    try:
        return yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file} is not valid YAML for a {what} ({type(exc).__name__}: {first}); nothing in it was "
                              "run. Restore the file from a complete copy, or save/train again.") from exc


def load_tensors(file: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(file, weights_only=True)``; a file that is not plain tensors raises one :class:`CheckpointError` line.

    Nothing in the file is ever executed. torch's own advice to retry with ``weights_only=False`` (which
    would run whatever code a pickle carries) is not passed on.
    """
    import torch

    file = Path(file)
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{file} holds pickled objects other than tensors, which cellgym never loads (loading "
                              "must not run code). Use a checkpoint saved by cellgym, or retrain.") from exc
    except Exception as exc:  # torch raises several types for truncated, empty or foreign files
        detail = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in detail:
            detail = type(exc).__name__
        size = file.stat().st_size if file.is_file() else 0
        raise CheckpointError(f"{file} cannot be read as tensors ({detail}; {size} bytes): it is truncated, empty or "
                              "corrupt. Restore it from a complete checkpoint, or retrain.") from exc


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by :func:`write_checkpoint`; raise :class:`CheckpointError` on any problem."""
    import torch

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no predictor folder at {str(path)!r}; expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE}.")
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"{str(path)!r} is not a complete predictor folder: {f.name} is missing.")
    config = read_yaml(cfg_file)
    if not isinstance(config, dict) or "predictor" not in config:
        raise CheckpointError(f"{cfg_file} does not describe a predictor (no 'predictor' key); the checkpoint is corrupt.")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version!r}, this cellgym ({cellgym_version()}) reads "
            f"version {FORMAT_VERSION}. Re-save it with the cellgym version it came from "
            f"({config.get('cellgym_version', 'unknown')}) or refit."
        )
    state = load_tensors(weights_file)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_file} does not hold a dict of tensors; the checkpoint is corrupt.")
    return config, state
