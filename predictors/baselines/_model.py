"""The four baselines as :class:`~cellgym.predictors.Predictor` subclasses, fitted in closed form.

Every baseline works per context (cell type / line): effects are deltas of a perturbation's pseudobulk
(mean log1p expression) against the control pseudobulk *of the same context*. A context with control
cells but no perturbed training cells (a held-out context of ``split(kind="contexts")``) borrows from
the others, as stated in each class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..base import DataSpecError, FitData, FitReport, Predictor, Pseudobulk, pseudobulk, target_gene
from ._module import AdditiveBaselineModule, LinearBaselineModule, MeanBaselineModule, NoChangeBaselineModule

__all__ = ["AdditiveBaseline", "LinearBaseline", "MeanBaseline", "NoChangeBaseline"]

logger = logging.getLogger(__name__)


class _Baseline(Predictor):
    """Shared fitting: pseudobulks, then the vocabulary, then the module's buffers (no training loop).

    ``extra_perturbations`` are single perturbations accepted beyond those in the training data (e.g.
    the held-out ones an evaluation asks about; never their cells). Each subclass says what it predicts
    for them. A name outside ``perturbations`` raises :class:`UnknownPerturbationError`.
    """

    def __init__(self, *, extra_perturbations: Sequence[str] = ()) -> None:
        super().__init__(extra_perturbations=[str(p) for p in extra_perturbations])

    def _fit(
        self, data: FitData, *, epochs: int | None, batch_size: int, device: str, seed: int | None, logger: Any
    ) -> FitReport:
        start = time.perf_counter()
        bulk = pseudobulk(data, len(self.contexts))
        self.perturbations = sorted(set(self.perturbations) | set(self.config["extra_perturbations"]))
        self._build_module()
        with torch.no_grad():
            for name, value in self._buffers_from(bulk).items():
                getattr(self.module, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        self.module.to(device)
        return FitReport(epochs=0, seconds=time.perf_counter() - start, n_obs=int(data.x.shape[0]))

    def _buffers_from(self, bulk: Pseudobulk) -> dict[str, np.ndarray]:
        """Values of the module's buffers, by name."""
        return {}


class NoChangeBaseline(_Baseline):
    """``baseline.nochange``: every cell keeps its control expression (delta 0).

    Predicting from a context's control cells, the predicted population is those controls, so its mean
    is the control mean. Any known perturbation (training or ``extra_perturbations``) gets delta 0.
    """

    name: ClassVar[str] = "baseline.nochange"

    def _build_module(self) -> None:
        self.module = NoChangeBaselineModule()


class MeanBaseline(_Baseline):
    """``baseline.mean``: control plus the mean effect of the context's training perturbations.

    The mean is over perturbations (each training label's delta weighs the same, combinations
    included), per context; a context without perturbed training cells gets the mean over all
    contexts' perturbations. Every perturbation, seen or not, gets the same delta.
    """

    name: ClassVar[str] = "baseline.mean"

    def _build_module(self) -> None:
        self.module = MeanBaselineModule(len(self.contexts), len(self.genes))

    def _buffers_from(self, bulk: Pseudobulk) -> dict[str, np.ndarray]:
        return {"mean_effect": bulk.mean_effect(len(self.contexts))}


class AdditiveBaseline(_Baseline):
    """``baseline.additive``: control plus the sum of the single-perturbation effects, per context.

    A single's effect in a context is its measured delta there. Fallbacks, in order, when it was not
    measured *alone* in that context (logged when fitting, listed in :attr:`fallbacks`):

    1. measured alone in other contexts: the mean of its deltas there (predicting a held-out cell
       line from the others);
    2. never measured alone (only inside combinations, or only named in ``extra_perturbations``): the
       context's mean perturbation effect (:class:`MeanBaseline`), so an unseen single adds what an
       average perturbation does.

    Names outside the vocabulary raise :class:`UnknownPerturbationError`.
    """

    name: ClassVar[str] = "baseline.additive"

    def __init__(self, *, extra_perturbations: Sequence[str] = ()) -> None:
        super().__init__(extra_perturbations=extra_perturbations)
        self.fallbacks: dict[str, list[str]] = {}

    def _build_module(self) -> None:
        self.module = AdditiveBaselineModule(len(self.contexts), len(self.perturbations), len(self.genes))

    def _buffers_from(self, bulk: Pseudobulk) -> dict[str, np.ndarray]:
        n_ctx, g = len(self.contexts), len(self.genes)
        mean_effect = bulk.mean_effect(n_ctx)
        effects = np.zeros((n_ctx, len(self.perturbations), g))
        single = np.array([len(self.spec.split_label(lab)) == 1 for lab in bulk.labels], dtype=bool)
        from_others: list[str] = []
        as_mean: list[str] = []
        for p, name in enumerate(self.perturbations):
            seen = single & (bulk.labels == name)
            pooled = bulk.delta[seen].mean(0) if seen.any() else None
            for c in range(n_ctx):
                here = seen & (bulk.ctx == c)
                if here.any():
                    effects[c, p] = bulk.delta[here][0]
                elif pooled is not None:
                    effects[c, p] = pooled
                    from_others.append(f"{name}@{self.contexts[c] or 'all'}")
                else:
                    effects[c, p] = mean_effect[c]
                    as_mean.append(f"{name}@{self.contexts[c] or 'all'}")
        self.fallbacks = {"from_other_contexts": from_others, "mean_effect": as_mean}
        if from_others:
            logger.info("baseline.additive: effects borrowed from other contexts for %s", from_others[:20])
        never = sorted({f.rsplit("@", 1)[0] for f in as_mean})
        if never:
            logger.warning(
                "baseline.additive: %d single(s) never measured alone (%s) are predicted with the mean "
                "perturbation effect of each context.", len(never), never[:10],
            )
        return {"effects": effects}


DESIGNS = ("auto", "gene", "indicator")
"""Perturbation designs of :class:`LinearBaseline`."""


class LinearBaseline(_Baseline):
    """``baseline.linear``: the linear model of Ahlmann-Eltze, Huber & Anders 2025 (Nat. Methods,
    "Deep-learning-based gene perturbation effect prediction does not yet outperform simple linear
    baselines").

    With ``Y`` (G x n) the training deltas of the n perturbations of a context (pseudobulk minus the
    control pseudobulk; singles and combinations), ``b`` its row means, ``G`` (G x K) the gene
    embedding = the top-K principal components of the gene-centred pseudobulk (``U_K S_K`` of the SVD
    of ``Y - b``; centring the pseudobulk or the deltas is the same thing) and ``P`` (n x D) the
    perturbation embedding (below; a combination's row is the sum of its singles' rows), the model is
    ``Y ≈ G W Pᵀ + b`` with the closed-form two-sided ridge solution
    ``W = (GᵀG + λI)⁻¹ Gᵀ (Y - b) P (PᵀP + λI)⁻¹``; a perturbation p is predicted as ``b + G W p``.

    Perturbation embeddings (``design``)
    ------------------------------------
    ``"gene"``
        The paper's: the row of ``G`` of each perturbation's target gene (D = K). The target is the
        label itself when it is a measured gene (Norman19's ``TMSB4X``), or ``GENE`` of a label
        ``GENE_KO`` / ``_KD`` / ``_CRISPRi`` (row x -1) / ``GENE_OE`` / ``_CRISPRa`` (row x +1), as on
        the GRN screens (``G3_KO``, ``Gata1_OE``; :func:`~cellgym.predictors.base.target_gene`), so a
        knockout and an overexpression of one gene get opposite embeddings. A target that is not a
        measured gene has a zero row, so it is predicted as ``b`` (exactly :class:`MeanBaseline`): on
        Norman19 (1 of 32 targets among the 500 genes) this design *is* the mean baseline.
    ``"indicator"``
        Learned from the training data: one indicator column per single perturbation (D = P), a
        combination is the sum of its singles' indicators (the paper's double-perturbation design).
        Singles seen in training (alone or inside a combination) get their own fitted effect; a single
        never seen gets a zero row, i.e. ``b``.
    ``"auto"`` (default)
        Both blocks side by side (D = K + P): ``[gene row of the target | indicator]``, each block
        present where it exists, fitted in two stages: the gene block is the paper's model, the
        indicator block is fitted (same ridge) to the residual the gene block leaves, so a design with
        no measured targets is exactly ``"indicator"`` and one with all targets unseen is ``"gene"``. Per perturbation this is: *indicator + gene row* (seen in training,
        target measured), *indicator* (seen, target not measured), *gene row* (unseen, target measured:
        the gene block's weights are fitted on the training perturbations whose targets are measured),
        *mean effect b* (unseen and target not measured). :attr:`variants` records which one applied
        to each perturbation of the vocabulary after fitting (also logged).

    Contexts are fitted separately; a context without perturbed training cells gets the model fitted
    on all contexts' deltas pooled.

    Parameters
    ----------
    n_pcs
        K, the number of principal components (paper: 10). Fewer are used when a context has fewer
        perturbations (the rest of the embedding is zero).
    ridge
        λ of both ridge penalties (paper: 0.1).
    design
        ``"auto"``, ``"gene"`` or ``"indicator"`` (above).
    extra_perturbations
        Single perturbations to accept beyond the training ones (predicted as their design says).
    """

    name: ClassVar[str] = "baseline.linear"

    def __init__(
        self, *, n_pcs: int = 10, ridge: float = 0.1, design: str = "auto", extra_perturbations: Sequence[str] = ()
    ) -> None:
        if n_pcs < 1 or ridge < 0:
            raise DataSpecError(f"LinearBaseline needs n_pcs >= 1 and ridge >= 0, got n_pcs={n_pcs}, ridge={ridge}.")
        if design not in DESIGNS:
            raise DataSpecError(f"LinearBaseline design must be one of {list(DESIGNS)}, got {design!r}.")
        Predictor.__init__(
            self,
            n_pcs=int(n_pcs),
            ridge=float(ridge),
            design=design,
            extra_perturbations=[str(p) for p in extra_perturbations],
        )
        self.variants: dict[str, str] = {}

    def _n_dims(self) -> int:
        k, p = self.config["n_pcs"], len(self.perturbations)
        return {"gene": k, "indicator": p, "auto": k + p}[self.config.get("design", "gene")]

    def _build_module(self) -> None:
        self.module = LinearBaselineModule(
            len(self.contexts), len(self.perturbations), len(self.genes), self.config["n_pcs"], self._n_dims()
        )

    def _target_rows(self, labels: Sequence[str]) -> np.ndarray:
        """(n, G) signed matrix: which measured genes each label targets, and in which direction."""
        gene_index = {g: i for i, g in enumerate(self.genes)}
        rows = np.zeros((len(labels), len(self.genes)))
        for r, label in enumerate(labels):
            for single in self.spec.split_label(label):
                gene, sign = target_gene(single, gene_index)
                if gene is not None:
                    rows[r, gene_index[gene]] += sign
        return rows

    def _indicator_rows(self, labels: Sequence[str]) -> np.ndarray:
        """(n, P) multi-hot of each label's singles over the vocabulary."""
        index = {p: i for i, p in enumerate(self.perturbations)}
        rows = np.zeros((len(labels), len(self.perturbations)))
        for r, label in enumerate(labels):
            for single in self.spec.split_label(label):
                rows[r, index[single]] = 1.0
        return rows

    def _embeddings(self, gene_emb: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """(n, D) perturbation embedding of ``labels`` under the configured design."""
        design = self.config.get("design", "gene")
        blocks = []
        if design in ("gene", "auto"):
            blocks.append(self._target_rows(labels) @ gene_emb)
        if design in ("indicator", "auto"):
            blocks.append(self._indicator_rows(labels))
        return np.concatenate(blocks, axis=1)

    def _fit_linear(self, delta: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(G, W, b)`` for the deltas (n, G) of ``labels``."""
        k, lam = self.config["n_pcs"], self.config["ridge"]
        n_genes = delta.shape[1]
        y = delta.T  # (G, n), the paper's orientation
        b = y.mean(1)
        yc = y - b[:, None]
        u, s, _ = np.linalg.svd(yc, full_matrices=False)
        r = min(k, s.size)
        gene_emb = np.zeros((n_genes, k))
        gene_emb[:, :r] = u[:, :r] * s[:r]
        p = self._embeddings(gene_emb, labels)  # (n, D)
        solve_left = np.linalg.solve(gene_emb.T @ gene_emb + lam * np.eye(k), gene_emb.T)  # (K, G)

        def ridge(target: np.ndarray, emb: np.ndarray) -> np.ndarray:
            return solve_left @ target @ emb @ np.linalg.inv(emb.T @ emb + lam * np.eye(emb.shape[1]))

        if self.config.get("design", "gene") != "auto":
            return gene_emb, ridge(yc, p), b  # (K, D)
        # auto: the paper's gene-row model first, then the indicators on what it leaves unexplained
        w_gene = ridge(yc, p[:, :k])
        w_ind = ridge(yc - gene_emb @ w_gene @ p[:, :k].T, p[:, k:])
        return gene_emb, np.concatenate([w_gene, w_ind], axis=1), b

    def _record_variants(self, bulk: Pseudobulk) -> None:
        design = self.config.get("design", "gene")
        measured = set(self.genes)
        seen = {s for lab in bulk.labels for s in self.spec.split_label(lab)}
        variants = {}
        for p in self.perturbations:
            gene = design != "indicator" and target_gene(p, measured)[0] is not None
            ind = design != "gene" and p in seen
            variants[p] = (
                "indicator + gene row" if gene and ind else "indicator" if ind else "gene row" if gene else "mean effect b"
            )
        self.variants = variants
        as_mean = sorted(p for p, v in variants.items() if v == "mean effect b")
        logger.info("baseline.linear (design=%s): %s", design, variants)
        if as_mean:
            logger.warning(
                "baseline.linear (design=%s): %d perturbation(s) with neither a measured target gene nor training "
                "cells are predicted with the mean training effect b: %s", design, len(as_mean), as_mean[:10],
            )

    def _buffers_from(self, bulk: Pseudobulk) -> dict[str, np.ndarray]:
        n_ctx, n_genes, k, d = len(self.contexts), len(self.genes), self.config["n_pcs"], self._n_dims()
        out = {
            "gene_embedding": np.zeros((n_ctx, n_genes, k)),
            "pert_embedding": np.zeros((n_ctx, len(self.perturbations), d)),
            "weights": np.zeros((n_ctx, k, d)),
            "offset": np.zeros((n_ctx, n_genes)),
        }
        self._record_variants(bulk)
        if len(bulk.labels) == 0:
            return out
        pooled = None
        for c in range(n_ctx):
            here = bulk.ctx == c
            if here.any():
                fitted = self._fit_linear(bulk.delta[here], bulk.labels[here])
            else:
                pooled = pooled or self._fit_linear(bulk.delta, bulk.labels)
                fitted = pooled
            gene_emb, w, b = fitted
            out["gene_embedding"][c], out["weights"][c], out["offset"][c] = gene_emb, w, b
            out["pert_embedding"][c] = self._embeddings(gene_emb, self.perturbations)
        return out

    def _extra_state(self) -> dict[str, Any]:
        return {"variants": self.variants}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.variants = dict(extra.get("variants", {}))
