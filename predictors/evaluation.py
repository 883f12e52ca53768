"""The evaluation harness: fit predictors on a split's train part, predict its held-out perturbations.

Every held-out (context, perturbation) group is predicted from the control cells of its context and
compared with the real held-out cells by the metrics of :mod:`cellgym.predictors.metrics`.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics as M
from .base import DataSpec, Predictor, Split, expression, validate
from .base.errors import DataSpecError, UnknownPerturbationError

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["FIT_COLUMNS", "METRICS", "EvaluationResult", "discrimination_note", "evaluate"]

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = (
    "pearson_delta",
    "mse",
    "mae",
    "mse_delta",
    "mae_delta",
    "r2",
    "r2_de",
    "r2_scgen_top100",
    "de_overlap",
    "direction_agreement",
    "discrimination",
    "energy_distance",
)
"""Metric columns, in order: see :mod:`cellgym.predictors.metrics` for the definitions.

``r2``: 1 - SS_res/SS_tot of the mean expression over all genes; ``r2_de``: the same over the real top-k
DE genes (``de_k``, ranked as cell-eval does: :func:`~cellgym.predictors.metrics.de_genes`);
``r2_scgen_top100``: the squared Pearson correlation of the mean expression over the 100 genes with the
largest real |mean perturbed - mean control| (scGen / CellGen / CPA's held-out-cell-type "R²").
``discrimination`` is NaN where a context has a single perturbation (nothing to discriminate among).
"""

FIT_COLUMNS: tuple[str, ...] = ("fit_epochs", "fit_seconds")
"""Training budget columns of :attr:`EvaluationResult.metrics`: epochs run (0 for closed-form fits,
fewer than the maximum after early stopping) and wall time of ``fit`` in seconds."""

SCGEN_TOP = 100

CHUNK = 8192


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    metrics
        One row per predictor (index ``predictor``): the mean of each metric over the held-out
        groups it could predict, ``coverage`` (fraction of groups predicted; a predictor that does not
        know a perturbation raises :class:`UnknownPerturbationError`, and that group is skipped) and
        ``n_groups``, and the training budget (:data:`FIT_COLUMNS`; NaN for a predictor passed fitted).
    per_perturbation
        One row per (predictor, context, perturbation): every metric, ``n_cells`` (real held-out
        cells) and ``predicted`` (False where the predictor could not predict it; metrics NaN).
    split
        The split that was evaluated.
    """

    metrics: pd.DataFrame
    per_perturbation: pd.DataFrame
    split: Split


def _make(entry: str | Predictor, extra: list[str], options: dict[str, Any]) -> Predictor:
    """A predictor from a registry name and constructor ``options``; held-out singles go to
    ``extra_perturbations`` where accepted."""
    if isinstance(entry, Predictor):
        return entry
    from cellgym.registry import make_predictor, predictor_class

    kwargs = dict(options)
    if extra and "extra_perturbations" in inspect.signature(predictor_class(entry).__init__).parameters:
        kwargs["extra_perturbations"] = extra
    return make_predictor(entry, **kwargs)


def _predict(predictor: Predictor, x: np.ndarray, label: str, context: str) -> np.ndarray:
    """(N, G) prediction for cells ``x`` under ``label`` in ``context`` (batched, no grad)."""
    pert = predictor.encode_perturbations([label]).expand(x.shape[0], -1)
    ctx_index = predictor.encode_contexts([context]) if predictor.spec.context_key is not None else torch.zeros(1, dtype=torch.long)
    ctx = ctx_index.expand(x.shape[0])
    out = [
        predictor.predict_batch(torch.from_numpy(x[s : s + CHUNK]), pert[s : s + CHUNK], ctx[s : s + CHUNK])
        for s in range(0, x.shape[0], CHUNK)
    ]
    return torch.cat(out).cpu().numpy().astype(np.float64)


def evaluate(
    adata: AnnData,
    spec: DataSpec,
    split: Split,
    predictors: Sequence[str | Predictor],
    *,
    seed: int | None = 0,
    de_k: int = 20,
    max_cells: int = 500,
    fit_kwargs: dict[str, dict[str, Any]] | None = None,
    predictor_kwargs: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
    max_epochs: int | None = None,
) -> EvaluationResult:
    """Fit each predictor on ``split.train`` and score its predictions of the held-out groups.

    Parameters
    ----------
    adata
        The whole data set (train and test cells), validated against ``spec`` first.
    spec
        Which columns mean what.
    split
        From :func:`cellgym.predictors.split`. Control cells are in its train part and are the input.
    predictors
        Registry names (made and fitted here) or :class:`Predictor` objects (fitted here unless already
        fitted, in which case they are used as they are). Held-out single perturbations absent from
        training are passed as ``extra_perturbations`` to predictors whose constructor accepts it
        (names only, never cells), so that predictors that can predict an unseen perturbation do.
    seed
        Seed of fitting and of the cell subsampling of the energy distance.
    de_k
        k of the top-k DE genes (``r2_de``, ``de_overlap``, ``direction_agreement``).
    max_cells
        Cells per side of the energy distance (subsampled above this).
    fit_kwargs
        Extra ``fit`` keyword arguments per registry name (e.g. ``{"gem1.bulk": {"epochs": 5}}``).
    predictor_kwargs
        Constructor options per registry name (e.g. ``{"state.transition": {"n_members": 5}}``); an
        option the predictor does not take fails before any fitting, naming the ones it does.
    progress
        Show a progress bar (stderr) over the held-out groups each predictor predicts.
    max_epochs
        Cap on the epochs of every trained predictor (passed as ``fit(epochs=...)`` unless ``fit_kwargs``
        sets them; closed-form predictors ignore it). Training progress (epoch, loss, validation loss,
        time left) is logged at INFO to ``cellgym.fit``.

    Returns
    -------
    EvaluationResult
    """
    validate(adata, spec)
    if de_k < 1:
        raise DataSpecError(f"de_k must be >= 1, got {de_k}.")
    if max_epochs is not None and max_epochs < 1:
        raise DataSpecError(f"max_epochs must be >= 1, got {max_epochs}.")
    fit_kwargs, predictor_kwargs = fit_kwargs or {}, predictor_kwargs or {}
    by_name = {p for p in predictors if isinstance(p, str)}
    names = by_name | {p.name or type(p).__name__ for p in predictors if not isinstance(p, str)}
    for option, per_name, allowed in (("fit_kwargs", fit_kwargs, names), ("predictor_kwargs", predictor_kwargs, by_name)):
        stray = sorted(set(per_name) - allowed)
        if stray:
            raise DataSpecError(f"{option} names {stray}, which are not among the predictors evaluated by name "
                                f"({sorted(allowed)}); use one of those names.")
    if predictor_kwargs:
        from cellgym.registry import check_options

        for name, options in predictor_kwargs.items():
            check_options("predictors", name, options)
    x = expression(adata, spec)
    labels = adata.obs[spec.perturbation_key].astype(str).to_numpy()
    contexts = adata.obs[spec.context_key].astype(str).to_numpy() if spec.context_key else np.full(adata.n_obs, "", object)
    is_control = labels == spec.control
    train_mask = np.zeros(adata.n_obs, dtype=bool)
    train_mask[split.train] = True
    test_mask = np.zeros(adata.n_obs, dtype=bool)
    test_mask[split.test] = True
    if not test_mask.any():
        raise DataSpecError("the split holds out no cells; nothing to evaluate.")

    # held-out groups and the real quantities they are compared with
    test_df = pd.DataFrame({"context": contexts[test_mask], "perturbation": labels[test_mask]})
    groups = sorted(set(map(tuple, test_df.drop_duplicates().to_numpy())))
    train_singles = {s for lab in set(labels[train_mask]) for s in spec.split_label(lab)}
    extra = sorted({s for _, lab in groups for s in spec.split_label(lab)} - train_singles)
    controls: dict[str, np.ndarray] = {}
    for ctx, _ in groups:
        rows = is_control & train_mask & (contexts == ctx)
        if not rows.any():
            raise DataSpecError(
                f"context {ctx!r} has held-out cells but no control cells in the train part; they are the input "
                "to predict from. Keep its controls (split() does) or drop that context."
            )
        controls[ctx] = x[rows].astype(np.float64)
    real: dict[tuple[str, str], np.ndarray] = {
        g: x[test_mask & (contexts == g[0]) & (labels == g[1])].astype(np.float64) for g in groups
    }
    # discrimination candidates: the real delta of every perturbation of the context (train or test)
    candidates: dict[str, tuple[list[str], np.ndarray]] = {}
    for ctx in sorted({c for c, _ in groups}):
        names = sorted(set(labels[(contexts == ctx) & ~is_control]))
        deltas = np.stack([x[(contexts == ctx) & (labels == n)].mean(0) for n in names]) - controls[ctx].mean(0)
        candidates[ctx] = (names, deltas)

    train = adata[split.train]
    rows: list[dict[str, Any]] = []
    budget: dict[str, tuple[float, float]] = {}
    for entry in predictors:
        predictor = _make(entry, extra, predictor_kwargs.get(entry, {}) if isinstance(entry, str) else {})
        name = predictor.name or type(predictor).__name__
        if predictor.module is None:
            logger.info("fitting %s on %d cells", name, train.n_obs)
            kwargs = {"epochs": max_epochs, **fit_kwargs.get(name, {})}
            report = predictor.fit(train, spec, seed=seed, **kwargs)
            budget[name] = (float(report.epochs), float(report.seconds))
            logger.info("fitted %s: %d epochs in %.1f s", name, report.epochs, report.seconds)
        pred_deltas: dict[tuple[str, str], np.ndarray] = {}
        for i, (ctx, lab) in enumerate(tqdm(groups, desc=f"score {name}", unit="group", disable=not progress,
                                            file=sys.stderr, leave=False)):
            row: dict[str, Any] = {"predictor": name, "context": ctx, "perturbation": lab, "n_cells": len(real[(ctx, lab)])}
            try:
                pred = _predict(predictor, controls[ctx].astype(np.float32), lab, ctx)
            except UnknownPerturbationError as exc:
                logger.warning("%s cannot predict %r in %r: %s", name, lab, ctx, exc)
                rows.append({**row, "predicted": False, **dict.fromkeys(METRICS, np.nan)})
                continue
            pred_ctrl = _predict(predictor, controls[ctx].astype(np.float32), spec.control, ctx)
            rows.append({**row, "predicted": True, **_group_metrics(pred, pred_ctrl, real[(ctx, lab)], controls[ctx], de_k, max_cells, seed, i)})
            pred_deltas[(ctx, lab)] = pred.mean(0) - pred_ctrl.mean(0)
        _add_discrimination(rows, name, pred_deltas, candidates)

    per = pd.DataFrame(rows)
    agg = per.groupby("predictor", sort=False)[list(METRICS)].mean()
    agg["coverage"] = per.groupby("predictor", sort=False)["predicted"].mean()
    agg["n_groups"] = per.groupby("predictor", sort=False).size()
    agg["fit_epochs"] = [budget.get(p, (np.nan, np.nan))[0] for p in agg.index]
    agg["fit_seconds"] = [budget.get(p, (np.nan, np.nan))[1] for p in agg.index]
    return EvaluationResult(metrics=agg, per_perturbation=per, split=split)


def _group_metrics(
    pred: np.ndarray, pred_ctrl: np.ndarray, real: np.ndarray, ctrl: np.ndarray, k: int, max_cells: int, seed: int | None, i: int
) -> dict[str, float]:
    """Every per-group metric (discrimination is added across groups afterwards)."""
    pm, pc, tm, tc = pred.mean(0), pred_ctrl.mean(0), real.mean(0), ctrl.mean(0)
    true_de = M.de_genes(real, ctrl, k)
    pred_de = M.de_genes(pred, pred_ctrl, k)
    top = M.top_changed_genes(real, ctrl, SCGEN_TOP)
    return {
        "pearson_delta": M.pearson_delta(pm, tm, pc, tc),
        "mse": M.mse(pm, tm),
        "mae": M.mae(pm, tm),
        "mse_delta": M.mse_delta(pm, tm, pc, tc),
        "mae_delta": M.mae_delta(pm, tm, pc, tc),
        "r2": M.r2_mean(pm, tm),
        "r2_de": M.r2_mean(pm, tm, true_de) if true_de.size else np.nan,
        "r2_scgen_top100": M.r2_pearson(pm, tm, top),
        "de_overlap": M.de_overlap(pred_de, true_de, k),
        "direction_agreement": M.direction_agreement(pm - pc, tm - tc, true_de),
        "discrimination": np.nan,
        "energy_distance": M.energy_distance(pred, real, max_cells=max_cells, seed=None if seed is None else seed + i),
    }


def _add_discrimination(
    rows: list[dict[str, Any]],
    name: str,
    pred_deltas: dict[tuple[str, str], np.ndarray],
    candidates: dict[str, tuple[list[str], np.ndarray]],
) -> None:
    """Fill ``discrimination`` of this predictor's rows: rank among all real deltas of the context."""
    for ctx, (names, deltas) in candidates.items():
        keys = [(c, lab) for c, lab in pred_deltas if c == ctx]
        if not keys:
            continue
        scores = M.discrimination_score(
            np.stack([pred_deltas[k] for k in keys]), deltas, [names.index(lab) for _, lab in keys]
        )
        score_of = dict(zip(keys, scores, strict=True))
        for row in rows:
            if row["predictor"] == name and (row["context"], row["perturbation"]) in score_of:
                row["discrimination"] = float(score_of[(row["context"], row["perturbation"])])


def discrimination_note(result: EvaluationResult) -> str | None:
    """One line saying why ``discrimination`` is NaN, or None when it is defined everywhere it was scored.

    The score ranks a prediction among the real deltas of all perturbations of its context; a context
    with a single perturbation has nothing to rank it against.
    """
    per = result.per_perturbation
    nan = per[per["predicted"] & per["discrimination"].isna()]
    if nan.empty:
        return None
    contexts = sorted({str(c) or "(all)" for c in nan["context"]})
    return (
        f"discrimination is NaN for {len(nan.drop_duplicates(['context', 'perturbation']))} group(s) in context(s) "
        f"{contexts[:5]}: each has a single perturbation, so there is nothing to rank the prediction against."
    )
