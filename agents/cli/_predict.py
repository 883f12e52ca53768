"""``cellgym predict``: run a GEM-1 inference task on a (Hive-partitioned) Parquet dataset, study by study.

Example::

    cellgym predict --predictor runs/fit/gem1_sc --task ref_predict_perturbation \\
        --input screens/ --output predictions/ --mode mean

The input and output schemas are documented in :mod:`cellgym.predictors.gem1._parquet`. Every part file is
written under a temporary name and renamed; each study becomes visible only when complete, and
``OUT_DIR/_manifest.json`` records the rows of every finished study (``"complete": true`` at the end). A
non-empty output folder is refused; ``--resume`` finishes an interrupted run (complete studies are kept,
the others redone), ``--overwrite`` starts again.
"""

from __future__ import annotations

import argparse
import sys

from cellgym.predictors.base.errors import DataSpecError

TASKS = ("predict_expression", "ref_predict_perturbation", "predict_perturbation", "classify_samples")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``predict`` subcommand."""
    p = sub.add_parser("predict", help="run a GEM-1 inference task on a Parquet dataset",
                       description="Stream a Parquet dataset one study at a time through a saved GEM-1 predictor "
                       "and write study=<id>/part-*.parquet files.")
    p.add_argument("--predictor", required=True, metavar="DIR", help="folder of a saved GEM-1 predictor (cellgym fit --out)")
    p.add_argument("--task", required=True, choices=TASKS, help="inference task")
    p.add_argument("--input", required=True, metavar="PARQUET_DIR", help="input Parquet dataset (folder)")
    p.add_argument("--output", required=True, metavar="OUT_DIR", help="output folder (must be empty or absent, "
                   "unless --overwrite or --resume)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace what an earlier run wrote into OUT_DIR")
    again.add_argument("--resume", action="store_true", help="finish an interrupted run into OUT_DIR: keep its "
                       "complete studies, redo the others (same options required)")
    p.add_argument("--mode", choices=("mean", "sample"), default="mean", help="decoder expectation or draws (default mean)")
    p.add_argument("--replicates", type=int, default=1, help="output rows per input row (default 1)")
    p.add_argument("--fixed-total-count", type=float, metavar="N", help="one library size for every output row")
    p.add_argument("--seed", type=int, default=0, help="seed of sample mode (default 0)")
    p.add_argument("--batch-size", type=int, default=4096, help="rows through the model at once (default 4096)")
    p.add_argument("--output-batch-size", type=int, default=65_536, help="rows per output file (default 65536)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the predictor, stream the dataset, report rows written per study."""
    from cellgym.predictors import Predictor
    from cellgym.predictors.gem1 import Gem1Base
    from cellgym.predictors.gem1._parquet import run_task

    model = Predictor.load(args.predictor)
    if not isinstance(model, Gem1Base):
        raise DataSpecError(f"--predictor {args.predictor!r} holds a {model.name!r} predictor; `cellgym predict` runs GEM-1 models (gem1.*).")
    if_exists = "overwrite" if args.overwrite else "resume" if args.resume else "error"
    written = run_task(model, args.task, args.input, args.output, mode=args.mode, batch_size=args.batch_size,
                       output_batch_size=args.output_batch_size, replicates=args.replicates,
                       fixed_total_count=args.fixed_total_count, seed=args.seed, if_exists=if_exists,
                       echo=lambda line: print(f"cellgym predict: {line}", file=sys.stderr))
    for study, n in written.items():
        print(f"study={study}: {n} rows")
    print(f"{args.output} holds {sum(written.values())} rows of {args.task} ({args.mode}); complete")
    return 0
