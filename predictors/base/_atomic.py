"""Atomic writes: a temporary name in the same folder, then ``os.replace``, so a kill leaves the old or the new.

Temporary names start with a dot, so directory listings of finished files (and pyarrow's dataset
discovery, which skips names starting with ``.`` or ``_``) never see a half-written file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_dir", "atomic_write", "atomic_write_text", "tmp_name"]


def tmp_name(path: Path) -> Path:
    """The temporary sibling of ``path`` (``.<name>.tmp``)."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_dir(path: str | Path, fill: Callable[[Path], object]) -> Path:
    """Build the folder ``path`` as a temporary sibling with ``fill(tmp)``, then move it into place.

    An existing ``path`` is replaced: it is first renamed to ``.<name>.old`` and removed after the new one
    is in place, so at every moment either the old or the new complete folder exists under one of the
    two names (readers look for ``path`` first, then ``.<name>.old``).
    """
    path = Path(path)
    tmp, old = tmp_name(path), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
