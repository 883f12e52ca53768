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

from ._options import add_data_options, load_data, parse_filters, parse_kv, show_fit_progress, spec_from_args

SPLITS = ("perturbations", "combos", "contexts", "fewshot", "random")  # cellgym.predictors.base._data.SPLIT_KINDS


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
    p.add_argument("--holdout", nargs="+", metavar="VALUE",
                   help="perturbations (or contexts; for fewshot the one context) to hold out; default: a seeded random choice")
    p.add_argument("--predictors", nargs="+", required=True, metavar="NAME", help="registered predictor names (see `cellgym list predictors`)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, fitting and subsampling (default 0)")
    p.add_argument("--output", metavar="DIR", help="where metrics.csv and per_perturbation.csv go (default runs/evaluate/<data>_<split>_<k>)")
    p.add_argument("--test-fraction", type=float, metavar="F", help="fraction held out when --holdout is not given (default 0.5 for combos, else 0.3)")
    p.add_argument("--de-k", type=int, default=20, metavar="K", help="k of the top-k DE-gene metrics r2_de, de_overlap, direction_agreement (default 20; r2_scgen_top100 always uses 100)")
    p.add_argument("--max-epochs", type=int, metavar="N", help="cap on the epochs of every trained predictor (default: each predictor's own, with early stopping)")
    p.add_argument("--fit-kwargs", nargs="+", default=[], metavar="NAME:KEY:VALUE",
                   help="fit() options per predictor, VALUE parsed as YAML, e.g. gem1.bulk:epochs:5 state.transition:epochs:50")
    p.add_argument("--predictor-kwargs", nargs="+", default=[], metavar="NAME:KEY:VALUE",
                   help="constructor options per predictor, VALUE parsed as YAML, e.g. state.transition:n_members:5 baseline.linear:n_pcs:5")
    add_data_options(p)
    p.set_defaults(run=run)


def _per_predictor(items: list[str], flag: str) -> dict[str, dict]:
    """``["gem1.bulk:epochs:5"]`` -> ``{"gem1.bulk": {"epochs": 5}}``."""
    out: dict[str, dict] = {}
    for item in items:
        name, _, rest = item.partition(":")
        out.setdefault(name, {}).update(parse_kv([rest], f"{flag} {name}:"))
    return out


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

    from cellgym.predictors import split, validate
    from cellgym.predictors.base._atomic import atomic_write_text
    from cellgym.predictors.evaluation import FIT_COLUMNS, METRICS, discrimination_note, evaluate
    from cellgym.registry import get

    parse_filters(args.subset, "--subset"), parse_filters(args.exclude, "--exclude")  # syntax first
    fit_kwargs = _per_predictor(args.fit_kwargs, "--fit-kwargs")
    predictor_kwargs = _per_predictor(args.predictor_kwargs, "--predictor-kwargs")
    for name in args.predictors:
        get("predictors", name)  # unknown names fail before any work, with close matches
    adata = load_data(args)
    spec = spec_from_args(args, adata.obs.columns)
    validate(adata, spec)
    sp = split(adata, spec, args.split, seed=args.seed, holdout=args.holdout, test_fraction=args.test_fraction)
    show_fit_progress()  # per-epoch lines of every trained predictor: epoch, loss, time left
    result = evaluate(adata, spec, sp, args.predictors, seed=args.seed, de_k=args.de_k, progress=True,
                      max_epochs=args.max_epochs, fit_kwargs=fit_kwargs, predictor_kwargs=predictor_kwargs)

    out = _output_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.csv", result.metrics.to_csv())  # a kill leaves the old file or the new one
    atomic_write_text(out / "per_perturbation.csv", result.per_perturbation.to_csv(index=False))
    n_test = len(sp.test)
    print(
        f"{Path(args.data).name}: {adata.n_obs} cells x {adata.n_vars} genes; split={args.split} seed={args.seed}; "
        f"held out {len(sp.holdout)} ({', '.join(sp.holdout[:8])}{' ...' if len(sp.holdout) > 8 else ''}), "
        f"{n_test} test cells, {result.metrics['n_groups'].iloc[0]} (context, perturbation) groups"
    )
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(result.metrics[[*METRICS, "coverage", *FIT_COLUMNS]].round(3).to_string())
    note = discrimination_note(result)
    if note:
        print(f"note: {note}")
    print(f"wrote {out / 'metrics.csv'} and {out / 'per_perturbation.csv'}")
    return 0
