"""The built wheel ships every file the package reads (a normal `pip wheel .`, not the editable install)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = ("registry", "predictors", "envs", "agents")


def _source_files() -> dict[str, str]:
    """Every file under the package folders, as its path inside the wheel (``cellgym/<root>/...``) -> kind."""
    out = {}
    for root in PACKAGE_ROOTS:
        for path in (ROOT / root).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                out[f"cellgym/{path.relative_to(ROOT).as_posix()}"] = "code" if path.suffix == ".py" else "data"
    return out


def test_wheel_contains_every_module_and_data_file(tmp_path: Path) -> None:
    # build from a clean copy: an in-tree build/ left by an earlier build would hide a missing file
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for root in (*PACKAGE_ROOTS, "cellgym"):  # cellgym/: the top-level package (__version__, python -m cellgym)
        shutil.copytree(ROOT / root, src / root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(src), "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("cellgym-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = _source_files()
    data = sorted(p for p, kind in expected.items() if kind == "data")
    # the files the code reads by path: the shipped Boolean models and the hyperparameter YAML
    assert "cellgym/predictors/grn/models/krumsiek11.txt" in data
    assert "cellgym/agents/hyperparams/maskable_ppo.yml" in data
    expected |= {"cellgym/__init__.py": "code", "cellgym/__main__.py": "code"}
    missing = sorted(set(expected) - shipped)
    assert not missing, f"the wheel lacks {missing}"
