"""The ``cellgym`` command line: one console script with subcommands in the RL-Zoo tradition.

Each subcommand is a module ``_<name>.py`` with ``add_parser(subparsers)`` and ``run(args) -> int``.
Errors a user can cause (``CellgymError``) print as one line and exit 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cellgym import __version__
from cellgym.predictors.base.errors import CellgymError

# subcommand -> module (in the order `cellgym --help` lists them)
COMMANDS: dict[str, str] = {
    "list": "cellgym.agents.cli._list",
    "evaluate": "cellgym.agents.cli._evaluate",
    "train": "cellgym.agents.cli._train",
    "enjoy": "cellgym.agents.cli._enjoy",
    "benchmark": "cellgym.agents.cli._benchmark",
    "design-benchmark": "cellgym.agents.cli._design_benchmark",
    "leaderboard": "cellgym.agents.cli._leaderboard",
    "fit": "cellgym.agents.cli._fit",
    "predict": "cellgym.agents.cli._predict",
    "embed-genes": "cellgym.agents.cli._embed_genes",
    "record-video": "cellgym.agents.cli._record_video",
    "export": "cellgym.agents.cli._export",  # also registers `import`
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all subcommands)."""
    parser = argparse.ArgumentParser(
        prog="cellgym", description="Gymnasium and PettingZoo worlds for virtual cells, with an agent zoo."
    )
    parser.add_argument("--version", action="version", version=f"cellgym {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``cellgym`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CellgymError as exc:
        print(f"cellgym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"cellgym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, not a traceback (train handles its own: it saves the model first)
        print(f"cellgym {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
