"""Options and input handling shared by the subcommands: data-spec columns, cell filters, KEY:VALUE lists."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

import yaml

from cellgym.predictors.base.errors import CellgymError, DataSpecError

if TYPE_CHECKING:
    from anndata import AnnData

    from cellgym.predictors import DataSpec

DEFAULT_CONTEXT_KEY = "cell_type"  # the shared perturbation files name cell lines / types so


def add_data_options(p: argparse.ArgumentParser) -> None:
    """The ``DataSpec`` columns and the ``--subset`` / ``--exclude`` cell filters, as one option group."""
    spec = p.add_argument_group("data spec (which obs columns mean what)")
    spec.add_argument("--perturbation-key", default="perturbation", help="obs column of perturbation labels (default perturbation)")
    spec.add_argument("--control", default="control", help="label of control cells (default control)")
    spec.add_argument("--context-key", help=f"obs column of cell type / line (default {DEFAULT_CONTEXT_KEY} when present; 'none' for one context)")
    spec.add_argument("--batch-key", help="obs column of technical batches")
    spec.add_argument("--dose-key", help="obs column of numeric doses")
    spec.add_argument("--time-key", help="obs column of numeric times")
    spec.add_argument("--counts", default="auto", help="where raw counts live: auto (default), X, a layer name, or none")
    spec.add_argument("--subset", nargs="+", default=[], metavar="COLUMN=VALUE",
                      help="keep only cells with these obs values (same column: any of; different columns: all of)")
    spec.add_argument("--exclude", nargs="+", default=[], metavar="COLUMN=VALUE", help="drop cells with these obs values")


def spec_from_args(args: argparse.Namespace, columns: Any) -> DataSpec:
    """The :class:`DataSpec` the options describe (``columns``: the data's obs columns, for the default context)."""
    from cellgym.predictors import DataSpec

    if args.context_key is None:
        context_key = DEFAULT_CONTEXT_KEY if DEFAULT_CONTEXT_KEY in columns else None
    else:
        context_key = None if args.context_key.lower() == "none" else args.context_key
    return DataSpec(
        perturbation_key=args.perturbation_key, control=args.control, context_key=context_key,
        batch_key=args.batch_key, dose_key=args.dose_key, time_key=args.time_key,
        counts=None if args.counts.lower() == "none" else args.counts,
    )


def load_data(args: argparse.Namespace) -> AnnData:
    """``--data`` read and filtered by ``--subset`` / ``--exclude``."""
    subset = parse_filters(args.subset, "--subset")
    exclude = parse_filters(args.exclude, "--exclude")
    return apply_filters(read_data(args.data), subset, exclude)


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
    """Read ``--data`` (an ``.h5ad``); a folder, missing or unreadable file raises :class:`DataSpecError` (one line)."""
    from cellgym.predictors.base._data import read_h5ad

    return read_h5ad(path, what="--data")


def parse_kv(items: list[str], flag: str) -> dict[str, Any]:
    """``["a:1", "b:[64, 64]"]`` -> ``{"a": 1, "b": [64, 64]}`` (each value read with ``yaml.safe_load``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise CellgymError(f"{flag} {item!r}: expected KEY:VALUE, e.g. {flag} n_steps:128.")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise CellgymError(f"{flag} {item!r}: the value is not valid YAML ({exc}).") from exc
    return out


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is at emit time (test captures, redirects)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass


def show_fit_progress() -> None:
    """Print the fit loop's per-epoch progress lines (logger ``cellgym.fit``, INFO) to stderr."""
    log = logging.getLogger("cellgym.fit")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def make_baseline(name: str, seed: int | None) -> Any:
    """A registered non-learning agent, seeded where it draws random numbers (``random``), so that the same
    seed plays the same episodes."""
    import inspect

    from cellgym.registry import get, make_agent

    takes_seed = "seed" in inspect.signature(get("agents", name).load()).parameters
    return make_agent(name, **({"seed": seed} if takes_seed else {}))
