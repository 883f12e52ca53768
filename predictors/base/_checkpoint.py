"""Saving and loading predictor folders: ``config.yaml`` + ``weights.pt``; loading never runs code."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import CheckpointError

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
    (path / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    buffer = io.BytesIO()  # write whole, then move, so a crash never leaves half a file
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buffer)
    tmp = path / (WEIGHTS_FILE + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path / WEIGHTS_FILE)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a folder written by :func:`write_checkpoint`; raise :class:`CheckpointError` on any problem."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no predictor folder at {str(path)!r}; expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE}.")
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"{str(path)!r} is not a complete predictor folder: {f.name} is missing.")
    try:
        config = yaml.safe_load(cfg_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file} is not valid YAML ({type(exc).__name__}: {exc}); the checkpoint is corrupt.") from exc
    if not isinstance(config, dict) or "predictor" not in config:
        raise CheckpointError(f"{cfg_file} does not describe a predictor (no 'predictor' key); the checkpoint is corrupt.")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version!r}, this cellgym ({cellgym_version()}) reads "
            f"version {FORMAT_VERSION}. Re-save it with the cellgym version it came from "
            f"({config.get('cellgym_version', 'unknown')}) or refit."
        )
    try:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{weights_file} cannot be read as tensors ({type(exc).__name__}: {exc}); the checkpoint is corrupt.") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_file} does not hold a dict of tensors; the checkpoint is corrupt.")
    return config, state
