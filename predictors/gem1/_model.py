"""GEM-1 predictors (``gem1.bulk``, ``gem1.nb``, ``gem1.sc``): AnnData in, AnnData out, four inference tasks.

GEM-1 (Synthesize Bio, bioRxiv 2025.09.08.674753) generates expression from metadata and predicts
perturbation responses conditioned on measured controls. The three registered variants share one
module (:class:`~cellgym.predictors.gem1.Gem1Module`) and differ in their likelihood:

========== ================================================ ================= ======================
name        likelihood (training)                            needs raw counts  ``sample`` mode draws
========== ================================================ ================= ======================
gem1.bulk   Gaussian in log1p-normalised space (default) or  no                Gaussian / multinomial
            multinomial over genes given the library size
gem1.nb     negative binomial, mean softmax(logits) x lib,   yes               negative binomial
            per-gene dispersion
gem1.sc     negative binomial (per-cell library)             yes               multinomial(library)
========== ================================================ ================= ======================

The published toolkit describes a multinomial decoder for bulk while its code uses a Gaussian in
log-CPM space; ``gem1.bulk`` offers both and defaults to the Gaussian, which also runs on data that is
already log-normalised (here "log-CPM" is the contract's log1p of counts per 10,000).

Inference tasks (GEM-1 toolkit names), all AnnData / DataFrame in, AnnData out with counts in ``X``:

- :meth:`Gem1Base.predict_expression` — metadata only: latents from the three conditional priors.
- :meth:`Gem1Base.ref_predict_perturbation` — each perturbed sample is paired with the controls of its
  technical + biological group; those two latents come from the controls' posterior, the
  perturbation latent from its prior; ``layers['de_pred']`` holds the predicted log-fold changes.
- :meth:`Gem1Base.predict_perturbation` — the same with synthetic controls (priors for all blocks).
- :meth:`Gem1Base.classify_samples` — per-classifier predicted labels and probabilities, reconstructed
  counts and the latents.

Modes ``mean`` (decoder expectation, deterministic) and ``sample`` (latents and counts drawn),
``replicates`` (rows per input row) and library sizes from an obs column ``total_count`` or one
``fixed_total_count``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from cellgym.predictors.base import (
    DataSpec,
    DataSpecError,
    FitData,
    FitReport,
    Predictor,
    check_genes,
    expression,
    own_target_columns,
    raw_counts,
    train_module,
    validate,
    validation_rows,
)
from cellgym.predictors.base._data import TARGET_SUM, unknown_perturbation_error

from ._groups import MetadataGroups, MetadataVocab
from ._module import Gem1Module, Likelihood

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["Gem1Base", "Gem1Bulk", "Gem1NB", "Gem1SC"]

log = logging.getLogger(__name__)
Mode = Literal["mean", "sample"]
UNSEEN_EFFECTS: tuple[str, ...] = ("measured", "mean_of_seen", "latent", "generic")
TASKS: tuple[str, ...] = ("predict_expression", "ref_predict_perturbation", "predict_perturbation", "classify_samples")
CHUNK = 4096  # rows per module call inside the tasks


@dataclass
class Gem1FitData(FitData):
    """:class:`FitData` plus the GEM-1 metadata features (N rows each) and library sizes."""

    library: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (N,) float32
    meta: dict[str, np.ndarray] = field(default_factory=dict)


class Gem1Base(Predictor):
    """Shared implementation of the GEM-1 family (see the module docstring); use a registered subclass.

    Parameters
    ----------
    likelihood
        Decoder likelihood, one of the class's ``likelihoods`` (only ``gem1.bulk`` has a choice).
    groups
        Metadata groups (dict with keys ``technical / biological / perturbation / numeric``, each a list
        of obs columns; see :class:`MetadataGroups`); default from the DataSpec.
    n_latent
        Sizes of the technical, biological and perturbation latent blocks.
    n_hidden, n_layers, dropout
        Encoder / decoder MLP (Linear -> LayerNorm -> ReLU).
    beta
        KL weight.
    classifier_weight
        Weight of the latent classifiers' cross-entropies.
    unseen_rate
        Probability of showing a training single perturbation as "unseen" (learns the generic effect
        used for the ``extra_perturbations``).
    extra_perturbations
        Single perturbations absent from the training data that the model may still be asked about
        (e.g. the held-out ones of an evaluation split); they get the effect ``unseen_effect`` says. Any
        other unknown name raises :class:`UnknownPerturbationError`.
    prior_decode_rate
        Fraction of training cells decoded with the perturbation latent from its prior (see
        :class:`Gem1Module`; 0 is the plain GEM-1 objective). A trade-off measured in issue 14: 1.0
        (every cell on the matched-control inference path) learns weak effects (weak + strong simulated
        screen: a seen weak single's predicted-vs-real delta correlation 0.19 at 0.5, 0.91 at 1.0, and
        held-out weak singles then match ``baseline.mean``) but loses combinations (Norman19 held-out
        doubles, gem1.bulk pearson_delta 0.408 at 0.5, 0.033 at 1.0). Default 0.5.
    matched_controls
        Decode the ``prior_decode_rate`` share of training cells with the technical / biological
        latents of a matched control cell (same technical + biological metadata; drawn once per fit
        with the fit's seed) instead of their metadata prior: the inference path of
        :meth:`predict_batch`. On whenever ``delta_weight > 0`` (the default); alone (``delta_weight=0``)
        it gained nothing on Norman19 doubles at 0.5 (0.408 vs 0.404).
    unseen_effect
        ``"measured"`` (default of ``gem1.bulk`` / ``gem1.nb``): an unseen single whose target has no gene
        embedding (see ``gene_embeddings``) adds, to every cell of a context, the equal-weight mean of the
        seen singles' *measured* changes there (pseudobulk mean minus the context's control mean, computed
        at fit time: the random-effects prior mean of a knockout the model knows nothing about; listed in
        :attr:`from_measured`); mapped singles get ``"mean_of_seen"``'s ridge-weighted predicted changes;
        and every unseen single whose target (its name) is a measured gene also adds, at that gene, the seen
        singles' mean change at their own target beyond the mean change (``module.target_effect``; listed
        in :attr:`own_target`; the knockout lowers its own target, which the mean spreads over the other
        targets). Both lists are logged and saved. ``"mean_of_seen"`` (``gem1.sc``'s default): the weighted
        mean of the seen singles' *predicted* changes of that cell (equal weights, or ridge weights from its
        target gene's embedding); ``"latent"``: its own perturbation latent, the same weighted mean of the
        seen singles' latents; ``"generic"``: GEM-1's learned generic effect. Measured on Papalexi's
        held-out knockouts (``benchmarks/gem1_decompose.py``, gem1.nb, 30 epochs, seeds 0 / 1):
        ``"mean_of_seen"`` gives pearson_delta 0.089 and 0.323 where ``baseline.mean`` gives 0.127 and
        0.362, because the weak singles' predicted changes are noisy (r 0.5-0.7 with their measured
        changes) and vary from cell to cell, so the clamp at 0 of ``predict_batch`` keeps their positive
        part on sparse genes; ``"measured"`` gives 0.145 and 0.402 (``cellgym evaluate``; energy distance
        0.251 and 0.414 vs the mean's 0.247 and 0.437), 0.127 and 0.362 without the own-target change.
        Applies to ``predict_batch`` (evaluation, environments); the AnnData tasks
        (``ref_predict_perturbation`` ...) decode counts and use the latent form for mapped singles, the
        generic effect for the others.
    combination
        ``"sum"`` (default, ``gem1.sc``: ``"latent"``): a combination's predicted change is the sum of its singles' predicted
        changes (additive composition); ``"latent"``: GEM-1's own, the decoded sum of the perturbation
        latents. Applies to ``predict_batch`` (evaluation, environments); the AnnData tasks decode the
        summed latent. Measured on Norman19 held-out doubles (``benchmarks/gem1_unseen.py``, one fit):
        with ``delta_weight`` 10, pearson_delta 0.738 (sum) vs 0.729 (latent), energy distance 0.197 vs 0.331.
    delta_weight
        Weight of the matched-pair term (see :class:`Gem1Module`): every training cell is paired with a
        matched control (``matched_controls``' pairing) and the squared log1p error of "control + predicted
        change" is added to the loss. Default 10 (``gem1.sc``: 0): on Norman19 held-out doubles (60 epochs,
        seed 0) it lifts gem1.bulk's pearson_delta from 0.408 (0) to 0.738 (10); the seen singles' predicted
        changes then follow their measured ones (median pearson 0.72 -> 0.97), so an unseen single's mean of
        them approaches ``baseline.mean``. Any value > 0 implies the matched-control decoding of
        ``matched_controls``. 0: GEM-1's objective alone.
    gene_embeddings
        Sources of target-gene embeddings for the declared ``extra_perturbations`` (as
        ``state.transition``'s: ``"coexpression"``, a ``{gene: tensor}`` ``.pt`` file, a network edge list or
        ``matrix.npz::genes.txt``); a single's target gene is its name. After fitting, each unseen single
        whose target has an embedding gets ridge weights over the seen singles (:func:`ridge_weights`,
        ridge strength chosen by leave-one-out on the seen singles' predicted changes; infinity = equal
        weights), recorded in ``mapped`` and ``mapping_report`` and saved with the model. Empty (default):
        equal weights for every unseen single.
    embedding_dim
        Width of graph (co-expression / network) embeddings.
    learning_rate, weight_decay
        AdamW.
    epochs
        Default maximum number of epochs (None: ``clip(200_000 / n_cells, 20, 200)``).
    validation_fraction, patience
        Early stopping: ``validation_fraction`` of the cells of every training (context, label) group
        are held out of the gradient steps; training stops once their loss has not improved for
        ``patience`` epochs and the best epoch's weights are kept (``validation_fraction=0``: no
        validation, exactly ``epochs`` epochs). See :func:`cellgym.predictors.base.train_module`.
    """

    likelihoods: ClassVar[tuple[str, ...]] = ("nb",)  # allowed values; the first is the default
    sampler: ClassVar[Literal["nb", "multinomial"]] = "nb"
    default_combination: ClassVar[str] = "sum"
    default_delta_weight: ClassVar[float] = 10.0
    default_unseen_effect: ClassVar[str] = "measured"

    def __init__(
        self,
        *,
        likelihood: Likelihood | None = None,
        groups: dict[str, list[str] | None] | None = None,
        n_latent: Sequence[int] = (8, 16, 16),
        n_hidden: int = 128,
        n_layers: int = 2,
        dropout: float = 0.1,
        beta: float = 1.0,
        classifier_weight: float = 1.0,
        unseen_rate: float = 0.1,
        prior_decode_rate: float = 0.5,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int | None = None,
        validation_fraction: float = 0.1,
        patience: int = 20,
        matched_controls: bool = False,
        unseen_effect: str | None = None,
        combination: str | None = None,
        delta_weight: float | None = None,
        gene_embeddings: Sequence[str] = (),
        embedding_dim: int = 32,
        extra_perturbations: Sequence[str] = (),
    ) -> None:
        unseen_effect = self.default_unseen_effect if unseen_effect is None else unseen_effect
        if unseen_effect not in UNSEEN_EFFECTS:
            raise DataSpecError(f"unseen_effect must be one of {list(UNSEEN_EFFECTS)}, got {unseen_effect!r}.")
        combination = self.default_combination if combination is None else combination
        delta_weight = self.default_delta_weight if delta_weight is None else delta_weight
        if combination not in ("sum", "latent"):
            raise DataSpecError(f"combination must be 'sum' or 'latent', got {combination!r}.")
        if not 0.0 <= validation_fraction < 0.5 or patience < 1:
            raise DataSpecError(
                f"{self.name} needs 0 <= validation_fraction < 0.5 and patience >= 1, got {validation_fraction}, {patience}."
            )
        likelihood = likelihood or self.likelihoods[0]
        if likelihood not in self.likelihoods:
            raise DataSpecError(f"{self.name} likelihood must be one of {list(self.likelihoods)}, got {likelihood!r}.")
        self.groups = MetadataGroups.from_dict(groups)
        if len(n_latent) != 3:
            raise DataSpecError(f"n_latent must give 3 sizes (technical, biological, perturbation), got {list(n_latent)}.")
        super().__init__(
            likelihood=likelihood, groups=self.groups.to_dict(), n_latent=[int(d) for d in n_latent], n_hidden=n_hidden, n_layers=n_layers,
            dropout=dropout, beta=beta, classifier_weight=classifier_weight, unseen_rate=unseen_rate,
            prior_decode_rate=prior_decode_rate, learning_rate=learning_rate, weight_decay=weight_decay, epochs=epochs,
            validation_fraction=float(validation_fraction), patience=int(patience),
            matched_controls=bool(matched_controls), unseen_effect=unseen_effect, combination=combination,
            delta_weight=float(delta_weight),
            gene_embeddings=[str(g) for g in gene_embeddings], embedding_dim=int(embedding_dim),
            extra_perturbations=[str(p) for p in extra_perturbations],
        )
        self.vocab = MetadataVocab()
        self.mapped: list[str] = []  # unseen singles given ridge weights from their gene embedding (fit)
        self._mapped_alpha: list[list[float]] = []  # their weights, as loaded from a checkpoint
        self.mapping_report: dict[str, Any] = {}
        self.from_measured: list[str] = []  # unseen singles given the seen singles' measured mean change (fit)
        self.own_target: list[str] = []  # unseen singles whose target gene gets the knockouts' own-target change
        self.unseen_columns: list[str] = []  # unseen singles with their own column in encode_perturbations (fit)
        self._columns: dict[str, Any] = {}  # those columns' buffers, as loaded from a checkpoint
        self._measured_buffer = True  # False for checkpoints saved before unseen_effect="measured" existed

    @property
    def likelihood(self) -> Likelihood:
        """The decoder likelihood (``config['likelihood']``)."""
        return self.config["likelihood"]

    # ------------------------------------------------------------------------------------------- fitting
    def fit(
        self,
        adata: AnnData,
        spec: DataSpec | None = None,
        *,
        epochs: int | None = None,
        batch_size: int = 128,
        device: str = "cpu",
        seed: int | None = 0,
        logger: Any = None,
    ) -> FitReport:
        """Fit on ``adata`` (validated first, metadata vocabularies built from its ``obs``)."""
        spec = spec or DataSpec()
        validate(adata, spec, require_counts=self.needs_counts)
        self.vocab = MetadataVocab.fit(adata.obs, self.groups, spec)
        self.mapped, self._mapped_alpha, self.from_measured, self._measured_buffer = [], [], [], True
        self.own_target, self.unseen_columns, self._columns = [], [], {}
        return super().fit(adata, spec, epochs=epochs, batch_size=batch_size, device=device, seed=seed, logger=logger)

    def fit_data(self, adata: AnnData) -> Gem1FitData:
        """:class:`FitData` plus library sizes and metadata features."""
        base = super().fit_data(adata)
        library = base.counts.sum(1) if base.counts is not None else np.full(adata.n_obs, TARGET_SUM, np.float32)
        meta = self._features(adata.obs, torch.from_numpy(base.pert))
        return Gem1FitData(**vars(base), library=library.astype(np.float32), meta=meta)

    def _build_module(self) -> None:
        c, v = self.config, self.vocab
        n_pert = len(self.perturbations)
        self.module = Gem1Module(
            n_genes=len(self.genes),
            n_meta=(v.width("technical"), v.width("biological"), n_pert + 1 + v.width("perturbation") + len(v.numeric)),
            n_perturbations=n_pert,
            bio_classes=v.n_classes("biological"),
            n_latent=tuple(c["n_latent"]),
            n_hidden=c["n_hidden"],
            n_layers=c["n_layers"],
            dropout=c["dropout"],
            likelihood=self.likelihood,
            beta=c["beta"],
            classifier_weight=c["classifier_weight"],
            unseen_rate=c["unseen_rate"],
            prior_decode_rate=c["prior_decode_rate"],
            unseen_effect=c.get("unseen_effect", "generic"),
            combination=c.get("combination", "latent"),
            n_mapped=len(self.unseen_columns),
            delta_weight=c.get("delta_weight", 0.0),
            n_contexts=len(self.contexts) if self._measured_buffer else 0,
        )
        if self.unseen_columns:  # a loaded model's columns (see _load_extra_state)
            n, m = len(self.unseen_columns), self.module
            m.extra_alpha = torch.tensor(self._mapped_alpha, dtype=torch.float32).reshape(n, n_pert)
            m.extra_measured = torch.tensor(self._columns.get("measured") or [0.0] * n, dtype=torch.float32)
            m.extra_target = torch.tensor(self._columns.get("target") or [-1] * n, dtype=torch.long)
            m.target_effect = torch.tensor(float(self._columns.get("target_effect", 0.0)))

    def _target(self, data: FitData) -> np.ndarray:
        if self.likelihood == "gaussian":
            return data.x
        if data.counts is not None:
            return data.counts
        return np.expm1(data.x)  # multinomial on log data: normalised (per-10k) values as pseudo-counts

    def _fit(
        self, data: FitData, *, epochs: int | None, batch_size: int, device: str, seed: int | None, logger: Any
    ) -> FitReport:
        assert isinstance(data, Gem1FitData)
        n = data.x.shape[0]
        epochs = epochs or self.config["epochs"] or int(np.clip(round(200_000 / n), 20, 200))
        module: Gem1Module = self.module
        library = data.library if data.counts is not None or self.likelihood != "multinomial" else np.expm1(data.x).sum(1)
        module.library_size.fill_(float(np.median(library)))
        rest = data.meta["m_perturbation"][:, len(self.perturbations) + 1 :]
        ctrl = data.is_control
        with torch.no_grad():
            for row, mask in enumerate((ctrl, ~ctrl)):
                if mask.any() and rest.shape[1]:
                    module.pert_rest_default[row] = torch.from_numpy(rest[mask].mean(0))
        tensors = {"x": data.x, "target": self._target(data), "library": library.astype(np.float32), **data.meta}
        if self.config.get("matched_controls", False) or self.config.get("delta_weight", 0.0) > 0:
            tensors["x_match"] = data.x[matched_controls(data, seed)]
        module.to(device)
        optimizer = torch.optim.AdamW(  # fused: one kernel per step instead of ~10 per parameter tensor
            module.parameters(), lr=self.config["learning_rate"], weight_decay=self.config["weight_decay"], fused=True
        )
        groups = data.ctx.astype(np.int64) * (len(np.unique(data.labels)) + 1) + np.unique(data.labels, return_inverse=True)[1]
        fraction = self.config.get("validation_fraction", 0.0)
        report = train_module(module, tensors, epochs=epochs, batch_size=batch_size, device=device, seed=seed,
                              logger=logger, optimizer=optimizer,
                              validation=validation_rows(groups, fraction, seed) if fraction > 0 else None,
                              patience=self.config.get("patience", 20))
        self._fill_measured_effect(data)
        self._map_unseen(data)
        self._assign_columns()
        return report

    @torch.no_grad()
    def _fill_measured_effect(self, data: FitData) -> None:
        """``module.measured_effect`` (C, G): per context, what ``baseline.mean`` adds there, restricted to the
        single perturbations (the equal-weight mean of their pseudobulk minus the context's control mean); a
        context without measured singles gets the mean over all contexts' singles."""
        from ..base import own_target_change, pseudobulk

        bulk = pseudobulk(data, len(self.contexts))
        mean = bulk.singles(self.spec.split_label).mean_effect(len(self.contexts))
        self.module.measured_effect.copy_(torch.from_numpy(mean.astype(np.float32)))
        # a knockout's own target: its change there beyond the mean change (shared with state.transition)
        change, self._n_own_targets = own_target_change(bulk, self.genes, self.spec.split_label)
        self.module.target_effect = torch.tensor(change)

    @torch.no_grad()
    def _map_unseen(self, data: FitData) -> None:
        """Ridge weights over the seen singles for every declared unseen single whose target has an embedding.

        The seen singles' predicted changes at the average control cell, ``Y`` (P, G), are regressed on
        their targets' gene embeddings ``E`` (ridge with intercept); the ridge prediction for a new row
        ``e`` is ``alpha(e) @ Y`` with ``alpha(e) = 1/n + (e - mean E) (Ec^T Ec + lam I)^-1 Ec^T``, weights
        that sum to 1 and become the equal weights of ``mean_of_seen`` as ``lam`` grows. ``lam`` is chosen
        by exact leave-one-out error on ``Y`` over a grid (infinity included: an embedding that does not
        predict the seen singles' effects leaves the unseen ones at the equal-weight mean). The target
        gene of a single is its name (as in State). Records ``mapping_report``.
        """
        self.mapped, self.mapping_report = [], {}
        extras = [e for e in self.config.get("extra_perturbations") or () if e not in set(self.perturbations)]
        sources = self.config.get("gene_embeddings") or []
        module: Gem1Module = self.module
        self._mapped_alpha = []
        if not sources or not extras or len(self.perturbations) < 3:
            return
        from ..genes import embedding_table, resolve_sources

        names = list(self.perturbations) + extras
        table, present = embedding_table(resolve_sources(sources, data.x, self.genes, dim=self.config.get("embedding_dim", 32),
                                                         seed=0), names, "perturbation targets")
        p = len(self.perturbations)
        seen = np.flatnonzero(present[:p])
        new = [i for i in range(len(extras)) if present[p + i]]
        ctrl = torch.from_numpy(data.x[data.is_control] if data.is_control.any() else data.x)
        q = module.posterior(ctrl[:CHUNK])
        y = module.seen_changes(q[0].mean.mean(0, keepdim=True), q[1].mean.mean(0, keepdim=True)).double().numpy()
        alpha, lam, loo = ridge_weights(table[seen].astype(np.float64), y[seen], table[[p + i for i in new]].astype(np.float64)) \
            if len(seen) >= 3 and new else (np.zeros((0, len(seen))), float("inf"), {})
        full = np.zeros((len(new), p), np.float32)
        full[:, seen] = alpha
        self.mapped = [extras[i] for i in new]
        self._mapped_alpha = full.tolist()
        self.mapping_report = {"lambda": lam, "loo_mse": loo, "seen_with_embedding": len(seen),
                               "unseen_mapped": self.mapped, "unseen_unmapped": [e for e in extras if e not in self.mapped]}
        log.info("%s: %d unseen single(s) mapped from gene embeddings (ridge lambda %s, chosen by leave-one-out over %d "
                 "seen singles); unmapped: %s", self.name, len(self.mapped), lam, len(seen),
                 self.mapping_report["unseen_unmapped"][:10])

    def _assign_columns(self) -> None:
        """The declared unseen singles' own columns (:attr:`unseen_columns`) and their module buffers.

        ``unseen_effect="measured"``: every declared unseen single; the embedding-mapped ones keep their ridge
        weights, the others are predicted from the measured mean change (:attr:`from_measured`); each one whose
        target is a measured gene also gets ``target_effect`` there (:attr:`own_target`). Otherwise only the
        mapped ones (the rest share the count column). Logged.
        """
        p = len(self.perturbations)
        module: Gem1Module = self.module
        extras = [e for e in self.config.get("extra_perturbations") or () if e not in set(self.perturbations)]
        measured = self.config.get("unseen_effect") == "measured"
        self.from_measured = [e for e in extras if e not in self.mapped] if measured else []
        self.unseen_columns = list(self.mapped) + self.from_measured
        index = own_target_columns(self.unseen_columns, self.genes) if measured else {}
        self.own_target = list(index)
        alpha = np.array(self._mapped_alpha + [[1.0 / max(p, 1)] * p] * len(self.from_measured), np.float32)
        module.extra_alpha = torch.from_numpy(alpha.reshape(len(self.unseen_columns), p))
        module.extra_measured = torch.tensor([0.0] * len(self.mapped) + [1.0] * len(self.from_measured))
        module.extra_target = torch.tensor([index[e] if e in self.own_target else -1 for e in self.unseen_columns],
                                           dtype=torch.long)
        if self.from_measured:
            log.info("%s: %d unseen single(s) without a gene embedding get the seen singles' measured mean change "
                     "(unseen_effect='measured'): %s", self.name, len(self.from_measured), self.from_measured[:10])
        if self.own_target:
            log.info("%s: %d unseen single(s) whose target is a measured gene get the knockouts' own-target change "
                     "%.3f there (mean over %d seen singles): %s", self.name, len(self.own_target),
                     float(module.target_effect), getattr(self, "_n_own_targets", 0), self.own_target[:10])

    # ------------------------------------------------------------------------------------------ features
    def _features(self, obs: pd.DataFrame, pert: torch.Tensor) -> dict[str, np.ndarray]:
        """Metadata features of every group and the classifier targets, for rows ``obs``.

        ``pert`` is the multi-hot (N, P) or (N, P + 1) of :meth:`encode_perturbations`.
        """
        v = self.vocab
        n = len(obs)
        n_p = len(self.perturbations)
        if pert.shape[1] > n_p + 1:  # mapped unseen singles: their alpha in the multi-hot; the others: the count
            cols, flag = pert[:, n_p + 1 :], self.module.extra_measured
            pert = torch.cat([pert[:, :n_p] + (cols * (1 - flag)) @ self.module.extra_alpha,
                              pert[:, n_p : n_p + 1] + (cols @ flag)[:, None]], 1)
        p = pert.numpy().astype(np.float32)
        if p.shape[1] == len(self.perturbations):
            p = np.concatenate([p, np.zeros((n, 1), np.float32)], axis=1)
        codes = {g: v.codes(obs, g) for g in ("technical", "biological", "perturbation")}
        return {
            "m_technical": v.one_hot(codes["technical"], "technical"),
            "m_biological": v.one_hot(codes["biological"], "biological"),
            "m_perturbation": np.concatenate(
                [p, v.one_hot(codes["perturbation"], "perturbation"), v.numeric_features(obs)], axis=1
            ).astype(np.float32),
            "y_biological": codes["biological"],
        }

    def encode_perturbations(self, labels: Sequence[str]) -> torch.Tensor:
        """Multi-hot (B, P) over the known singles; with singles unseen in training, (B, P + 1 + len(unseen_columns)).

        Column P counts each row's unseen singles without a column of their own, the last
        ``len(unseen_columns)`` columns mark the others (only names declared in ``extra_perturbations``:
        the gene-embedding-mapped ones, and with ``unseen_effect="measured"`` all of them); the model predicts
        them as ``unseen_effect`` says and warns once per call. Any other unknown name raises
        :class:`UnknownPerturbationError`.
        """
        known = set(self.perturbations)
        labels = [str(x) for x in labels]
        unseen = sorted({s for lab in set(labels) for s in self.spec.split_label(lab) if s not in known})
        if not unseen:
            return super().encode_perturbations(labels)
        undeclared = [u for u in unseen if u not in set(self.config.get("extra_perturbations") or ())]
        if undeclared:
            raise unknown_perturbation_error(undeclared, self.perturbations)
        warnings.warn(
            f"{self.name}: perturbation(s) {unseen[:10]}{' ...' if len(unseen) > 10 else ''} were not seen in "
            "training; they are predicted with "
            + ("the mean of the seen singles' predicted changes (predict_batch) or the learned generic effect "
               "(the AnnData tasks)." if self.config.get("unseen_effect") == "mean_of_seen" else
               "the seen singles' measured mean change plus, where the target is a measured gene, the knockouts' "
               "own-target change there (predict_batch; gene-embedding-mapped ones: the mean of the seen singles' "
               "predicted changes) or the learned generic effect (the AnnData tasks)."
               if self.config.get("unseen_effect") == "measured" else
               "the model's learned generic perturbation effect."),
            stacklevel=2,
        )
        unseen_set = set(unseen)
        mapped = {u: i for i, u in enumerate(self.unseen_columns)}
        sep = self.spec.separator
        known_labels = [sep.join(s for s in self.spec.split_label(lab) if s not in unseen_set) or self.spec.control for lab in labels]
        uniq, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
        extra = np.zeros((len(uniq), 1 + len(mapped)), np.float32)  # [unmapped count | one column per mapped]
        for r, lab in enumerate(uniq):
            for s in self.spec.split_label(lab):
                if s in unseen_set:
                    extra[r, 1 + mapped[s] if s in mapped else 0] += 1.0
        out = super().encode_perturbations(known_labels)
        return torch.cat([out, torch.from_numpy(extra[inverse.reshape(-1)])], dim=1)

    # ----------------------------------------------------------------------------------- sampling helpers
    def _library(self, obs: pd.DataFrame, fixed_total_count: float | None, default: np.ndarray | None = None) -> np.ndarray:
        if fixed_total_count is not None:
            if not fixed_total_count > 0:
                raise DataSpecError(f"fixed_total_count must be > 0, got {fixed_total_count}.")
            return np.full(len(obs), float(fixed_total_count), np.float32)
        if "total_count" in obs.columns:
            lib = pd.to_numeric(obs["total_count"], errors="coerce").to_numpy(np.float32)
            if not np.isfinite(lib).all() or (lib <= 0).any():
                raise DataSpecError("obs['total_count'] must hold positive numbers (the library size of each sample).")
            return lib
        if default is not None:
            return default.astype(np.float32)
        return np.full(len(obs), float(self.module.library_size), np.float32)

    def _output(self, h: torch.Tensor, library: torch.Tensor, mode: Mode, generator: torch.Generator) -> torch.Tensor:
        if mode == "mean":
            return self.module.expected_counts(h, library)
        how = "multinomial" if self.sampler == "multinomial" or self.likelihood != "nb" else "nb"
        return self.module.sample_counts(h, library, how, generator)

    @staticmethod
    def _draw(dist: torch.distributions.Normal, mode: Mode, generator: torch.Generator) -> torch.Tensor:
        if mode == "mean":
            return dist.mean
        return dist.mean + dist.stddev * torch.randn(dist.mean.shape, generator=generator)

    def _check_mode(self, mode: str, replicates: int) -> None:
        self._check_fitted()
        if mode not in ("mean", "sample"):
            raise DataSpecError(f"mode must be 'mean' or 'sample', got {mode!r}.")
        if int(replicates) < 1:
            raise DataSpecError(f"replicates must be >= 1, got {replicates}.")

    def _anndata(self, x: np.ndarray, obs: pd.DataFrame, **layers: np.ndarray) -> AnnData:
        from anndata import AnnData

        obs = obs.reset_index(drop=True)
        obs.index = obs.index.astype(str)
        return AnnData(X=x.astype(np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(self.genes, dtype=str)),
                       layers={k: v.astype(np.float32) for k, v in layers.items()})

    @staticmethod
    def _repeat(obs: pd.DataFrame, replicates: int) -> pd.DataFrame:
        out = obs.loc[obs.index.repeat(replicates)].copy()
        out["replicate"] = np.tile(np.arange(replicates), len(obs))
        return out

    # --------------------------------------------------------------------------------------- the tasks
    @torch.no_grad()
    def predict_expression(
        self,
        obs: pd.DataFrame,
        *,
        mode: Mode = "mean",
        replicates: int = 1,
        fixed_total_count: float | None = None,
        share_technical: bool = False,
        seed: int | None = None,
    ) -> AnnData:
        """Expression from metadata alone: every latent block from its conditional prior.

        Parameters
        ----------
        obs
            One row per sample with the metadata columns of every group and the perturbation column
            (and optionally ``total_count``, the library size of each sample).
        mode
            ``"mean"``: prior means, expected counts; ``"sample"``: latents and counts drawn.
        replicates
            Output rows per input row (column ``replicate``).
        fixed_total_count
            One library size for all rows (default: ``obs['total_count']`` or the training median).
        share_technical
            In ``sample`` mode, draw one technical latent per distinct technical metadata (and
            replicate), i.e. one synthetic reference per technical group.
        seed
            Seed of ``sample`` mode.

        Returns
        -------
        AnnData (N x replicates, G): counts in ``X``, the input metadata in ``obs``.
        """
        self._check_mode(mode, replicates)
        obs = self._repeat(obs, replicates)
        feats = self._features(obs, self.encode_perturbations(obs[self.spec.perturbation_key].astype(str)))
        library = self._library(obs, fixed_total_count)
        gen = torch.Generator().manual_seed(0 if seed is None else seed)
        m = self.module
        priors = [m.prior(g, torch.from_numpy(feats[k])) for g, k in enumerate(("m_technical", "m_biological", "m_perturbation"))]
        z = [self._draw(p, mode, gen) for p in priors]
        if share_technical and mode == "sample":
            cols = [*self.vocab.categorical["technical"], "replicate"]
            group = obs.groupby(cols, sort=False, observed=True).ngroup().to_numpy()  # ids 0..k-1
            _, first_row = np.unique(group, return_index=True)
            z[0] = z[0][torch.from_numpy(first_row[group])]  # every row takes its group's first draw
        out = []
        for s in range(0, len(obs), CHUNK):
            h = m.decode(torch.cat([zg[s : s + CHUNK] for zg in z], -1))
            out.append(self._output(h, torch.from_numpy(library[s : s + CHUNK]), mode, gen))
        return self._anndata(torch.cat(out).numpy(), obs)

    @torch.no_grad()
    def ref_predict_perturbation(
        self,
        adata: AnnData,
        *,
        mode: Mode = "mean",
        replicates: int = 1,
        fixed_total_count: float | None = None,
        seed: int | None = None,
    ) -> AnnData:
        """Predict every perturbed sample of ``adata`` from the measured controls of its group.

        The control cells of ``adata`` (``obs[perturbation_key] == control``) give the technical and
        biological latents (posterior means averaged over the controls with the same technical +
        biological metadata in ``mean`` mode; one random matching control's posterior draw in
        ``sample`` mode); the perturbation latent comes from the prior of each perturbed row.

        Returns
        -------
        AnnData (n_perturbed x replicates, G): predicted counts in ``X``, predicted log-fold changes
        vs the matched reference in ``layers['de_pred']`` (log1p-normalised space).
        """
        self._check_mode(mode, replicates)
        check_genes(self.genes, adata.var_names)
        labels = adata.obs[self.spec.perturbation_key].astype(str).to_numpy()
        is_ctrl = labels == self.spec.control
        if not is_ctrl.any() or is_ctrl.all():
            raise DataSpecError(
                f"ref_predict_perturbation needs control rows ({self.spec.perturbation_key} == {self.spec.control!r}) and "
                f"perturbed rows; got {int(is_ctrl.sum())} controls of {len(labels)}. Use predict_perturbation without controls."
            )
        ctrl = adata[is_ctrl]
        x_ctrl = torch.from_numpy(expression(ctrl, self.spec))
        counts = raw_counts(ctrl, self.spec)
        lib_ctrl = counts.sum(1) if counts is not None else np.full(ctrl.n_obs, TARGET_SUM, np.float32)
        q = [self.module.posterior(x_ctrl[s : s + CHUNK]) for s in range(0, x_ctrl.shape[0], CHUNK)]
        q_mean = [torch.cat([qq[g].mean for qq in q]) for g in range(2)]
        q_std = [torch.cat([qq[g].stddev for qq in q]) for g in range(2)]
        keys = list(self.vocab.categorical["technical"]) + list(self.vocab.categorical["biological"])
        group_key = _group_keys(adata.obs, keys)
        ctrl_key, pert_key = group_key[is_ctrl], group_key[~is_ctrl]
        missing = sorted(set(pert_key) - set(ctrl_key))
        if missing:
            raise DataSpecError(
                f"perturbed samples of technical + biological group(s) {missing[:5]} (columns {keys}) have no control "
                "sample to pair with. Add controls of those groups or use predict_perturbation (synthetic controls)."
            )
        obs = self._repeat(adata.obs[~is_ctrl], replicates)
        rows_key = np.repeat(pert_key, replicates)
        gen = torch.Generator().manual_seed(0 if seed is None else seed)
        uniq, ctrl_group = np.unique(ctrl_key, return_inverse=True)
        row_group = np.searchsorted(uniq, rows_key)
        if mode == "mean":
            counts_per = np.bincount(ctrl_group, minlength=len(uniq)).astype(np.float32)
            sums = [torch.zeros(len(uniq), qm.shape[1]).index_add_(0, torch.from_numpy(ctrl_group), qm) for qm in q_mean]
            z_ctrl = [(s / torch.from_numpy(counts_per).unsqueeze(1))[torch.from_numpy(row_group)] for s in sums]
            lib_group = np.bincount(ctrl_group, weights=lib_ctrl, minlength=len(uniq)) / counts_per
            lib_default = lib_group[row_group]
        else:
            order = np.argsort(ctrl_group, kind="stable")
            starts = np.searchsorted(ctrl_group[order], np.arange(len(uniq)))
            sizes = np.bincount(ctrl_group, minlength=len(uniq))
            u = torch.rand(len(row_group), generator=gen).numpy()
            pick = order[starts[row_group] + np.minimum((u * sizes[row_group]).astype(np.int64), sizes[row_group] - 1)]
            idx = torch.from_numpy(pick)
            z_ctrl = [q_mean[g][idx] + q_std[g][idx] * torch.randn(q_mean[g][idx].shape, generator=gen) for g in range(2)]
            lib_default = lib_ctrl[pick]
        return self._perturb(obs, z_ctrl, self._library(obs, fixed_total_count, lib_default), mode, gen)

    @torch.no_grad()
    def predict_perturbation(
        self,
        obs: pd.DataFrame,
        *,
        mode: Mode = "mean",
        replicates: int = 1,
        fixed_total_count: float | None = None,
        seed: int | None = None,
    ) -> AnnData:
        """Like :meth:`ref_predict_perturbation` with synthetic controls: technical and biological
        latents from their priors (metadata only). ``obs`` holds the perturbed rows' metadata.

        Returns
        -------
        AnnData (N x replicates, G): counts in ``X``, ``layers['de_pred']``.
        """
        self._check_mode(mode, replicates)
        obs = self._repeat(obs, replicates)
        feats = self._features(obs, torch.zeros(len(obs), len(self.perturbations)))
        gen = torch.Generator().manual_seed(0 if seed is None else seed)
        z_ctrl = [self._draw(self.module.prior(g, torch.from_numpy(feats[k])), mode, gen)
                  for g, k in enumerate(("m_technical", "m_biological"))]
        return self._perturb(obs, z_ctrl, self._library(obs, fixed_total_count), mode, gen)

    def _perturb(
        self, obs: pd.DataFrame, z_ctrl: list[torch.Tensor], library: np.ndarray, mode: Mode, gen: torch.Generator
    ) -> AnnData:
        m = self.module
        feats = self._features(obs, self.encode_perturbations(obs[self.spec.perturbation_key].astype(str)))
        m_pert = torch.from_numpy(feats["m_perturbation"])
        m_ref = m_pert.clone()
        m_ref[:, : len(self.perturbations) + 1] = 0.0  # the same metadata without the perturbation
        z_pert = self._draw(m.prior(2, m_pert), mode, gen)
        z_ref = m.prior(2, m_ref).mean
        out, de = [], []
        for s in range(0, len(obs), CHUNK):
            sl = slice(s, s + CHUNK)
            h_pert, h_ref = m.response(z_ctrl[0][sl], z_ctrl[1][sl], z_pert[sl], z_ref[sl])
            de.append(m.log1p_expression(h_pert) - m.log1p_expression(h_ref))
            out.append(self._output(h_pert, torch.from_numpy(library[sl]), mode, gen))
        return self._anndata(torch.cat(out).numpy(), obs, de_pred=torch.cat(de).numpy())

    @torch.no_grad()
    def get_latent_representation(self, adata: AnnData, block: str | None = None) -> np.ndarray:
        """Posterior means of the cells' latents, as scvi-tools' method of this name returns them.

        ``block=None``: the technical, biological and perturbation blocks side by side, (N, d_tech +
        d_bio + d_pert), what :meth:`classify_samples` stores as ``obsm['X_gem1']`` (column ranges in
        ``uns['X_gem1_blocks']``); ``block="biological"`` (or ``"technical"``, ``"perturbation"``): that
        block alone. Typical use: ``adata.obsm["X_gem1"] = model.get_latent_representation(adata)``.
        """
        names = ("technical", "biological", "perturbation")
        if block is not None and block not in names:
            raise DataSpecError(f"get_latent_representation block={block!r}: expected one of {list(names)} or None.")
        self._check_fitted()
        check_genes(self.genes, adata.var_names)
        x = torch.from_numpy(expression(adata, self.spec))
        chunks = []
        for s in range(0, adata.n_obs, CHUNK):
            q = self.module.posterior(x[s : s + CHUNK])
            chunks.append(torch.cat([qg.mean for qg in q], -1) if block is None else q[names.index(block)].mean)
        return torch.cat(chunks).numpy()

    @torch.no_grad()
    def classify_samples(self, adata: AnnData) -> AnnData:
        """Classify samples with the latent classifiers; reconstruct them; return their latents.

        Returns
        -------
        AnnData (N, G): reconstructed expected counts in ``X``; ``obs['pred_<column>']`` for every
        biological column and ``obs['pred_perturbation']``; ``obsm['prob_<column>']`` (N, n_classes)
        with the class names in ``uns['classes'][column]``; ``obsm['z_technical' / 'z_biological' /
        'z_perturbation']`` posterior means, and all three as ``obsm['X_gem1']`` (scverse naming; column
        ranges in ``uns['X_gem1_blocks']``).
        """
        self._check_fitted()
        check_genes(self.genes, adata.var_names)
        x = torch.from_numpy(expression(adata, self.spec))
        counts = raw_counts(adata, self.spec)
        library = torch.from_numpy(counts.sum(1) if counts is not None else np.full(adata.n_obs, TARGET_SUM, np.float32))
        m = self.module
        z: list[list[torch.Tensor]] = [[], [], []]
        recon, probs, pert_prob = [], [], []
        for s in range(0, adata.n_obs, CHUNK):
            q = m.posterior(x[s : s + CHUNK])
            for g in range(3):
                z[g].append(q[g].mean)
            recon.append(m.expected_counts(m.decode(torch.cat([qg.mean for qg in q], -1)), library[s : s + CHUNK]))
            probs.append(m.classify_biological(q[1].mean))
            if m.pert_classifier is not None:
                pert_prob.append(torch.sigmoid(m.pert_classifier(q[2].mean)))
        obs = adata.obs.copy()
        obsm: dict[str, np.ndarray] = {f"z_{name}": torch.cat(z[g]).numpy() for g, name in enumerate(("technical", "biological", "perturbation"))}
        classes: dict[str, list[str]] = {}
        for j, (col, cats) in enumerate(self.vocab.categorical["biological"].items()):
            p = torch.cat([pb[j] for pb in probs]).numpy()
            obs[f"pred_{col}"] = np.asarray(cats, dtype=object)[p.argmax(1)]
            obsm[f"prob_{col}"] = p
            classes[col] = list(cats)
        if pert_prob:
            p = torch.cat(pert_prob).numpy()
            names = np.asarray(self.perturbations, dtype=object)
            obs["pred_perturbation"] = [self.spec.separator.join(names[row > 0.5]) or self.spec.control for row in p]
            obsm["prob_perturbation"] = p
            classes["perturbation"] = list(self.perturbations)
        out = self._anndata(torch.cat(recon).numpy(), obs)
        for k, v in obsm.items():
            out.obsm[k] = v
        out.uns["classes"] = classes
        out.obsm["X_gem1"] = np.concatenate([obsm[f"z_{name}"] for name in ("technical", "biological", "perturbation")], 1)
        ends = np.cumsum([0, *(obsm[f"z_{n}"].shape[1] for n in ("technical", "biological", "perturbation"))])
        out.uns["X_gem1_blocks"] = {n: [int(ends[i]), int(ends[i + 1])]
                                    for i, n in enumerate(("technical", "biological", "perturbation"))}
        return out

    # -------------------------------------------------------------------------------------- env-facing
    @torch.no_grad()
    def sample_batch(
        self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``ref_predict_perturbation`` in sample mode, log1p-normalised (B, G).

        Technical / biological latents drawn from each control cell's posterior, the perturbation
        latent from its prior; counts drawn at the training median library size (NB for ``gem1.nb``,
        multinomial for ``gem1.sc`` and ``gem1.bulk`` multinomial, Gaussian for ``gem1.bulk``).
        """
        self._check_fitted()
        gen = generator or torch.Generator().manual_seed(0)
        m = self.module
        q = m.posterior(x)
        z_ctrl = [self._draw(q[g], "sample", gen) for g in range(2)]
        unseen = "generic" if self.config.get("unseen_effect") == "generic" else "latent"
        z_pert = self._draw(m.prior(2, m.prior_features(pert, unseen=unseen)), "sample", gen)
        h = m.decode(torch.cat([*z_ctrl, z_pert], -1))
        if self.likelihood == "gaussian":
            return (h + m.log_sigma.exp() * torch.randn(h.shape, generator=gen)).clamp_min(0.0)
        library = m.library_size.expand(x.shape[0])
        c = self._output(h, library, "sample", gen)
        return torch.log1p(c / c.sum(-1, keepdim=True).clamp_min(1.0) * TARGET_SUM)

    # ------------------------------------------------------------------------------------- persistence
    def _extra_state(self) -> dict[str, Any]:
        m = self.module
        alpha = m.extra_alpha.tolist() if m is not None else []
        columns = {"measured": m.extra_measured.tolist(), "target": m.extra_target.tolist(),
                   "target_effect": float(m.target_effect)} if m is not None else {}
        return {"vocab": self.vocab.to_dict(), "mapped": list(self.mapped), "mapped_alpha": alpha,
                "mapping_report": self.mapping_report, "from_measured": list(self.from_measured),
                "own_target": list(self.own_target), "unseen_columns": list(self.unseen_columns), "columns": columns}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.vocab = MetadataVocab.from_dict(extra["vocab"])
        self.mapped = list(extra.get("mapped") or [])
        self._mapped_alpha = extra.get("mapped_alpha") or []
        self.mapping_report = dict(extra.get("mapping_report") or {})
        # checkpoints from before unseen_effect="measured" have no measured_effect buffer
        self._measured_buffer = "from_measured" in extra
        if not self._measured_buffer and self.config.get("unseen_effect") == "measured":
            self.config["unseen_effect"] = "mean_of_seen"  # what such a checkpoint predicted when it was saved
        self.from_measured = list(extra.get("from_measured") or [])
        self.own_target = list(extra.get("own_target") or [])
        self.unseen_columns = list(extra.get("unseen_columns") or self.mapped)  # before: the mapped ones only
        self._columns = dict(extra.get("columns") or {})


def matched_controls(data: Gem1FitData, seed: int | None) -> np.ndarray:
    """(N,) row of a control cell for every cell: a random control with the same technical + biological
    features (else the same context, else any control; a control is matched to itself)."""
    rng = np.random.default_rng(0 if seed is None else seed)
    n = data.x.shape[0]
    out = np.arange(n)
    ctrl = np.flatnonzero(data.is_control)
    if ctrl.size == 0:
        return out
    feats = np.concatenate([data.meta["m_technical"], data.meta["m_biological"], data.ctx[:, None].astype(np.float32)], 1)
    levels = [feats, data.ctx[:, None], np.zeros((n, 1))]
    todo = np.flatnonzero(~data.is_control)
    for level in levels:
        if todo.size == 0:
            break
        _, key = np.unique(level, axis=0, return_inverse=True)
        key = key.ravel()
        order = ctrl[np.argsort(key[ctrl], kind="stable")]
        starts = np.searchsorted(key[order], key[todo], side="left")
        ends = np.searchsorted(key[order], key[todo], side="right")
        has = ends > starts
        pick = starts[has] + (rng.random(has.sum()) * (ends[has] - starts[has])).astype(np.int64)
        out[todo[has]] = order[pick]
        todo = todo[~has]
    return out


def ridge_weights(
    emb: np.ndarray, y: np.ndarray, new: np.ndarray, grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
) -> tuple[np.ndarray, float, dict[str, float]]:
    """Ridge (with intercept) of ``y`` (n, G) on ``emb`` (n, D), as weights over the n training rows.

    Returns ``alpha`` (m, n) with ``alpha @ y`` the ridge prediction for the ``new`` rows (m, D) (rows sum
    to 1), the chosen ``lam`` and the leave-one-out MSE of every candidate. ``lam`` is ``grid`` times the
    mean eigenvalue of the centred Gram matrix, or infinity (equal weights 1/n); the exact leave-one-out
    residuals of a linear smoother ``H`` are ``(y - H y) / (1 - H_ii)`` (Hastie, Tibshirani & Friedman,
    *Elements of Statistical Learning*, eq. 7.52).
    """
    n = emb.shape[0]
    mu = emb.mean(0)
    xc, nc = emb - mu, new - mu
    k = xc @ xc.T  # (n, n) kernel form: D may exceed n
    scale = max(float(np.trace(k)) / n, 1e-12)
    loo: dict[str, float] = {"inf": float((((y - y.mean(0)) * n / (n - 1)) ** 2).mean())}
    best, best_err = float("inf"), loo["inf"]
    for g in grid:
        lam = g * scale
        h = np.full((n, n), 1.0 / n) + k @ np.linalg.solve(k + lam * np.eye(n), np.eye(n))
        err = float((((y - h @ y) / np.clip(1.0 - np.diag(h), 1e-6, None)[:, None]) ** 2).mean())
        loo[f"{lam:.4g}"] = err
        if err < best_err:
            best, best_err = lam, err
    if not np.isfinite(best):
        return np.full((new.shape[0], n), 1.0 / n), best, loo
    alpha = np.full((new.shape[0], n), 1.0 / n) + (nc @ xc.T) @ np.linalg.solve(k + best * np.eye(n), np.eye(n))
    return alpha, best, loo


def _group_keys(obs: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """One string key per row joining the values of ``columns`` (``""`` with no columns)."""
    if not columns:
        return np.full(len(obs), "", dtype=object)
    parts = [obs[c].astype(str).to_numpy() for c in columns]
    return np.array(["|".join(t) for t in zip(*parts, strict=True)], dtype=object)


class Gem1Bulk(Gem1Base):
    """GEM-1 for bulk-like data: Gaussian in log1p-normalised space (default) or multinomial.

    ``likelihood="gaussian"`` (default; learned per-gene variance; runs on log-normalised data) or
    ``"multinomial"`` (over genes given the library: raw counts where the data has them, else the
    per-10k normalised values as pseudo-counts). Other options: :class:`Gem1Base`.
    """

    name: ClassVar[str] = "gem1.bulk"
    needs_counts: ClassVar[bool] = False
    likelihoods: ClassVar[tuple[str, ...]] = ("gaussian", "multinomial")
    sampler: ClassVar[Literal["nb", "multinomial"]] = "multinomial"


class Gem1NB(Gem1Base):
    """GEM-1 with a negative-binomial decoder (mean softmax(logits) x library size, per-gene dispersion).

    Needs raw counts; ``sample`` mode draws negative-binomial counts. Options: :class:`Gem1Base`.
    """

    name: ClassVar[str] = "gem1.nb"
    needs_counts: ClassVar[bool] = True
    sampler: ClassVar[Literal["nb", "multinomial"]] = "nb"


class Gem1SC(Gem1Base):
    """GEM-1 for single cells: per-cell library size, negative-binomial training likelihood, and
    multinomial sampling of each cell's library in ``sample`` mode. Options: :class:`Gem1Base`; unlike
    ``gem1.bulk`` / ``gem1.nb`` it defaults to GEM-1's own objective (``delta_weight=0``) and latent
    composition (``combination="latent"``), the world simulator of the learned reprogramming task.
    """

    name: ClassVar[str] = "gem1.sc"
    needs_counts: ClassVar[bool] = True
    sampler: ClassVar[Literal["nb", "multinomial"]] = "multinomial"
    # GEM-1's own objective and latent composition: the learned world of CellEnv-Reprogram-Screen-v0 (a SERGIO
    # network with switch-like interactions) then plans the true 3-step route; with additive composition or the
    # delta term its bfs plan (G0_KO+G3_KO, G3_KO, or G0_KO+G2_KO+G3_KO) fails in the true world (issue 14)
    default_combination: ClassVar[str] = "latent"
    default_delta_weight: ClassVar[float] = 0.0
    default_unseen_effect: ClassVar[str] = "mean_of_seen"
