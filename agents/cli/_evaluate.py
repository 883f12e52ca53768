"""``cellgym evaluate``: fit predictors on a split's train part and score held-out perturbations.

Example::

    cellgym evaluate --data screen.h5ad --split combos \\
        --predictors baseline.nochange baseline.mean baseline.additive baseline.linear

Prints one table (predictors as rows, aggregated metrics as columns) and writes ``metrics.csv`` and
``per_perturbation.csv`` to ``--output`` (default ``runs/evaluate/<data>_<split>_<k>/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cellgym.predictors.base.errors import DataSpecError

if TYPE_CHECKING:
    from anndata import AnnData

SPLITS = ("perturbations", "combos", "contexts", "random")
DEFAULT_CONTEXT_KEY = "cell_type"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` subcommand."""
    p = sub.add_parser(
        "evaluate",
        help="fit predictors on a split and score held-out perturbations against the baselines",
        description="Fit each predictor on the train part of a split of an .h5ad perturbation screen, predict "
        "every held-out (context, perturbation) from that context's control cells and print the metrics.",
    )
    p.add_argument("--data", required=True, metavar="H5AD", help="AnnData file (.h5ad)")
    p.add_argument("--split", required=True, choices=SPLITS, help="what is held out")
    p.add_argument("--holdout", nargs="+", metavar="VALUE", help="perturbations (or contexts) to hold out; default: a seeded random choice")
    p.add_argument("--predictors", nargs="+", required=True, metavar="NAME", help="registered predictor names (see `cellgym list predictors`)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, fitting and subsampling (default 0)")
    p.add_argument("--output", metavar="DIR", help="where metrics.csv and per_perturbation.csv go (default runs/evaluate/<data>_<split>_<k>)")
    p.add_argument("--test-fraction", type=float, metavar="F", help="fraction held out when --holdout is not given (default 0.5 for combos, else 0.3)")
    p.add_argument("--de-k", type=int, default=20, metavar="K", help="k of the top-k DE-gene metrics (default 20)")
    spec = p.add_argument_group("data spec (which obs columns mean what)")
    spec.add_argument("--perturbation-key", default="perturbation", help="obs column of perturbation labels (default perturbation)")
    spec.add_argument("--control", default="control", help="label of control cells (default control)")
    spec.add_argument("--context-key", help=f"obs column of cell type / line (default {DEFAULT_CONTEXT_KEY} when present; 'none' for one context)")
    spec.add_argument("--batch-key", help="obs column of technical batches")
    spec.add_argument("--counts", default="auto", help="where raw counts live: auto (default), X, a layer name, or none")
    spec.add_argument("--subset", nargs="+", default=[], metavar="COLUMN=VALUE", help="keep only cells with these obs values (same column: any of; different columns: all of)")
    spec.add_argument("--exclude", nargs="+", default=[], metavar="COLUMN=VALUE", help="drop cells with these obs values")
    p.set_defaults(run=run)


def parse_filters(items: list[str], option: str) -> dict[str, list[str]]:
    """``["dataset=a", "dataset=b", "x=1"]`` -> ``{"dataset": ["a", "b"], "x": ["1"]}``; bad syntax raises."""
    out: dict[str, list[str]] = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column or not value:
            raise DataSpecError(f"{option} {item!r}: expected COLUMN=VALUE, e.g. {option} dataset=norman19.")
        out.setdefault(column, []).append(value)
    return out


def apply_filters(adata: AnnData, subset: dict[str, list[str]], exclude: dict[str, list[str]]) -> AnnData:
    """Cells matching every ``subset`` column (any of its values) and none of the ``exclude`` values."""
    import numpy as np

    keep = np.ones(adata.n_obs, dtype=bool)
    for option, filters in (("--subset", subset), ("--exclude", exclude)):
        for column, values in filters.items():
            if column not in adata.obs.columns:
                raise DataSpecError(f"{option}: adata.obs has no column {column!r}; columns are {list(adata.obs.columns)}.")
            col = adata.obs[column].astype(str)
            missing = [v for v in values if not (col == v).any()]
            if missing:
                present = col.value_counts().index[:10].tolist()
                raise DataSpecError(f"{option}: no cell has {column}={missing[0]!r}; values are e.g. {present}.")
            hit = col.isin(values).to_numpy()
            keep &= hit if option == "--subset" else ~hit
    if not keep.any():
        raise DataSpecError("--subset/--exclude leave no cells; loosen them.")
    return adata[keep].copy() if not keep.all() else adata


def read_data(path: str) -> AnnData:
    """Read an ``.h5ad``; a missing or unreadable file raises :class:`DataSpecError` (one line)."""
    import anndata

    file = Path(path)
    if not file.is_file():
        raise DataSpecError(f"--data {path!r}: no such file. Pass the path of an .h5ad file.")
    try:
        return anndata.read_h5ad(file)
    except Exception as exc:  # h5py/anndata raise many types for a file that is not an AnnData
        raise DataSpecError(f"--data {path!r} is not a readable .h5ad file ({type(exc).__name__}: {exc}).") from exc


def _output_dir(args: argparse.Namespace) -> Path:
    if args.output:
        return Path(args.output)
    base = Path("runs") / "evaluate"
    stem = f"{Path(args.data).stem}_{args.split}"
    k = 1
    while (base / f"{stem}_{k}").exists():
        k += 1
    return base / f"{stem}_{k}"


def run(args: argparse.Namespace) -> int:
    """Validate the options and the data, evaluate, print the table, write the CSVs."""
    import pandas as pd

    from cellgym.predictors import DataSpec, split, validate
    from cellgym.predictors.evaluation import METRICS, evaluate
    from cellgym.registry import get

    subset = parse_filters(args.subset, "--subset")
    exclude = parse_filters(args.exclude, "--exclude")
    for name in args.predictors:
        get("predictors", name)  # unknown names fail before any work, with close matches
    adata = apply_filters(read_data(args.data), subset, exclude)
    if args.context_key is None:
        context_key = DEFAULT_CONTEXT_KEY if DEFAULT_CONTEXT_KEY in adata.obs.columns else None
    else:
        context_key = None if args.context_key.lower() == "none" else args.context_key
    counts = None if args.counts.lower() == "none" else args.counts
    spec = DataSpec(
        perturbation_key=args.perturbation_key,
        control=args.control,
        context_key=context_key,
        batch_key=args.batch_key,
        counts=counts,
    )
    validate(adata, spec)
    sp = split(adata, spec, args.split, seed=args.seed, holdout=args.holdout, test_fraction=args.test_fraction)
    result = evaluate(adata, spec, sp, args.predictors, seed=args.seed, de_k=args.de_k)

    out = _output_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    result.metrics.to_csv(out / "metrics.csv")
    result.per_perturbation.to_csv(out / "per_perturbation.csv", index=False)
    n_test = len(sp.test)
    print(
        f"{Path(args.data).name}: {adata.n_obs} cells x {adata.n_vars} genes; split={args.split} seed={args.seed}; "
        f"held out {len(sp.holdout)} ({', '.join(sp.holdout[:8])}{' ...' if len(sp.holdout) > 8 else ''}), "
        f"{n_test} test cells, {result.metrics['n_groups'].iloc[0]} (context, perturbation) groups"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(result.metrics[[*METRICS, "coverage"]].round(3).to_string())
    print(f"wrote {out / 'metrics.csv'} and {out / 'per_perturbation.csv'}")
    return 0
