"""``cellgym list [predictors|rewards|agents|tasks]``: everything registered, one line each."""

from __future__ import annotations

import argparse

from cellgym.registry import specs
from cellgym.registry._registry import KINDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``list`` subcommand."""
    p = sub.add_parser("list", help="list registered predictors, reward models, agents and tasks")
    p.add_argument("kind", nargs="?", choices=KINDS, help="only this kind (default: all)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the registry."""
    for kind in [args.kind] if args.kind else KINDS:
        table = specs(kind)
        print(f"{kind} ({len(table)})")
        width = max((len(n) for n in table), default=0)
        for name, spec in table.items():
            print(f"  {name:<{width}}  {spec.summary}")
    return 0
