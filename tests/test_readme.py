"""The README cannot drift: its ```python blocks run, and every `cellgym` command in its ```bash blocks parses.

Each python block is self-contained. By default every block compiles and every name it imports exists;
with ``-m slow`` each block runs in a fresh interpreter from a scratch folder (they build worlds and
simulate screens: about a minute each on a busy 2-core machine, CellTRIP's ``learn`` longer). Bash blocks: each ``cellgym ...`` command (bare or ``.venv/bin/``)
is parsed by the real argument parser, so a renamed subcommand or flag fails here; ``python examples/X``
must name an existing script.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[tuple[str, str]]:
    """(section heading, code) of every ```lang block, in order."""
    out, heading = [], ""
    for match in re.finditer(r"^(#{2,3} [^\n]*)$|^```(\w*)\n(.*?)^```", README, flags=re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        elif match.group(2) == lang:
            out.append((heading, match.group(3)))
    return out


PYTHON = _blocks("python")
BASH = _blocks("bash")


def _python_cases(slow: bool) -> list:
    marks = [pytest.mark.slow] if slow else []
    return [pytest.param(code, id=f"{i}-{heading[:30]}", marks=marks) for i, (heading, code) in enumerate(PYTHON)]


def test_readme_has_blocks():
    assert len(PYTHON) >= 4 and len(BASH) >= 6


@pytest.mark.parametrize("code", _python_cases(slow=False))
def test_python_block_imports_resolve(code):
    """Fast: every block compiles and every name it imports exists (a renamed API fails here)."""
    import ast
    import importlib

    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)
                       and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            assert not missing, f"README imports {missing} from {node.module}, which has no such name"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


@pytest.mark.parametrize("code", _python_cases(slow=True))
def test_python_block_runs(code, tmp_path):
    """Each block on its own, in a fresh interpreter (about a minute each on a busy 2-core machine)."""
    script = tmp_path / "block.py"
    script.write_text("import torch; torch.set_num_threads(1)\n" + code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={"OMP_NUM_THREADS": "1", "PATH": "", "CELLGYM_CACHE": str(tmp_path / "cache"),
                               "HOME": str(tmp_path)})
    assert done.returncode == 0, f"README block failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"


def _commands() -> list[str]:
    out = []
    for _, code in BASH:
        code = code.replace("\\\n", " ")
        for line in code.splitlines():
            line = line.split("#", 1)[0] if " #" in line else line
            for part in line.split("&&"):
                part = part.strip()
                if part:
                    out.append(part)
    return out


COMMANDS = _commands()


@pytest.mark.parametrize("command", [c for c in COMMANDS if re.match(r"(\.venv/bin/)?cellgym ", c)])
def test_cellgym_command_parses(command):
    from cellgym.agents.cli import build_parser

    words = shlex.split(command)[1:]
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exc:  # argparse exits 2 on an unknown flag or subcommand
        pytest.fail(f"README command does not parse: {command} (exit {exc.code})")
    assert args.command == words[0]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith(("python examples/", ".venv/bin/python examples/"))])
def test_example_scripts_exist(command):
    script = shlex.split(command)[1]
    assert (ROOT / script).is_file(), f"README runs {script}, which does not exist"
