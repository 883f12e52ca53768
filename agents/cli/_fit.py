"""``cellgym fit``: fit any registered predictor on an .h5ad and save it to a folder.

Example::

    cellgym fit --predictor gem1.sc --data screen.h5ad --out runs/fit/gem1_sc --epochs 20 \\
        --exclude perturbation=unassigned --batch-key bio_rep --tensorboard-log runs/tb

Shows a progress bar over epochs and, with ``--tensorboard-log``, writes every quantity the predictor
logs (``fit/loss``, ``fit/kl_<block>``, ``fit/accuracy_<...>`` ...) as TensorBoard scalars. The folder
``--out`` holds the saved predictor (``config.yaml`` + ``weights.pt``, reload with ``Predictor.load``)
plus ``history.csv`` (per-epoch means) and ``command.txt``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from cellgym.predictors.base.errors import DataSpecError

from . import _fit_species
from ._options import add_data_options, load_data, parse_kv, show_fit_progress, spec_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``fit`` subcommand."""
    p = sub.add_parser("fit", help="fit a predictor on an .h5ad and save it",
                       description="Fit any registered predictor on an AnnData file and save it to a folder.")
    p.add_argument("--predictor", required=True, metavar="NAME", help="registered predictor name (see `cellgym list predictors`)")
    p.add_argument("--data", required=True, nargs="+", metavar="H5AD", help="AnnData file (.h5ad); one per species for galaxy")
    p.add_argument("--out", required=True, metavar="DIR", help="folder the fitted predictor is saved to")
    p.add_argument("--epochs", type=int, help="epochs (default: the predictor's own)")
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and minibatch order (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--predictor-kwargs", nargs="+", default=[], metavar="KEY:VALUE",
                   help="constructor options, VALUE parsed as YAML, e.g. likelihood:multinomial 'groups:{technical: [bio_rep]}'")
    p.add_argument("--tensorboard-log", "-tb", metavar="DIR", help="write TensorBoard scalars here")
    add_data_options(p)
    _fit_species.add_options(p)
    p.set_defaults(run=run)


class ProgressLogger:
    """A ``logger`` for ``Predictor.fit``: advances a progress bar per epoch and forwards scalars to TensorBoard.

    Works with every predictor that logs through the shared loop (``add_scalar(tag, value, step)``).
    """

    def __init__(self, total: int | None, writer: Any = None, desc: str = "fit") -> None:
        self.total, self.desc = total, desc
        self.bar: Any = None  # made at the first logged epoch: closed-form fits (baselines) show no bar
        self.writer = writer
        self.step = -1
        self.last: dict[str, float] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Record one scalar; a new ``step`` advances the bar."""
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit="epoch", file=sys.stderr)
        if step != self.step:
            if self.step >= 0:
                self.bar.update(1)
            self.step = step
        self.last[tag.rsplit("/", 1)[-1]] = float(value)
        if tag.endswith("/loss"):
            self.bar.set_postfix(loss=f"{value:.4g}")

    def close(self) -> None:
        """Finish the bar and flush TensorBoard."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def run(args: argparse.Namespace) -> int:
    """Validate, fit, save."""
    import pandas as pd

    from cellgym.predictors import validate
    from cellgym.registry import get, make_predictor

    if args.epochs is not None and args.epochs < 1:
        raise DataSpecError(f"--epochs must be >= 1, got {args.epochs}.")
    if args.batch_size < 2:
        raise DataSpecError(f"--batch-size must be >= 2, got {args.batch_size}.")
    spec_entry = get("predictors", args.predictor)  # unknown names fail first, with close matches
    if _fit_species.wants_species(args):
        writer = None
        if args.tensorboard_log:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=args.tensorboard_log)
        return _fit_species.run(args, parse_kv(args.predictor_kwargs, "--predictor-kwargs"), ProgressLogger(args.epochs, writer))
    args.data = args.data[0]
    predictor = make_predictor(args.predictor, **parse_kv(args.predictor_kwargs, "--predictor-kwargs"))
    adata = load_data(args)
    spec = spec_from_args(args, adata.obs.columns)
    if getattr(predictor, "response_model", True):  # cell-embedding models (state.embedding) need no perturbation column
        validate(adata, spec, require_counts=predictor.needs_counts)
    writer = None
    if args.tensorboard_log:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=args.tensorboard_log)
    show_fit_progress()
    logger = ProgressLogger(args.epochs, writer)
    try:
        report = predictor.fit(adata, spec, epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                               seed=args.seed, logger=logger)
    finally:
        logger.close()
    out = predictor.save(args.out)
    pd.DataFrame(report.history).rename_axis("epoch").to_csv(out / "history.csv")
    (out / "command.txt").write_text("cellgym " + shlex.join(sys.argv[1:] if sys.argv[0].endswith("cellgym") else []) + "\n")
    last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in report.history.items())
    how = (f"{report.epochs} epochs in {report.seconds:.1f} s "
           f"({report.n_obs * report.epochs / max(report.seconds, 1e-9):,.0f} cells/s)" if report.epochs
           else f"in {report.seconds:.1f} s (closed form, no epochs)")
    print(f"fitted {spec_entry.name} on {adata.n_obs} cells x {adata.n_vars} genes: {how}" + (f"; {last}" if last else ""))
    print(f"saved to {Path(out)}")
    return 0
