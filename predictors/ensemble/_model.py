"""An ensemble of fitted predictors: prediction = member mean, uncertainty = member disagreement.

Deep ensembles (Lakshminarayanan, Pritzel & Blundell 2017, NeurIPS) estimate predictive uncertainty by
the spread of independently trained members; bootstrap resampling of the training data (Efron 1979)
diversifies members whose fit is deterministic (the closed-form baselines). In model-based RL the
members' disagreement is the standard penalty for model error (MOPO, Yu et al. 2020; MOReL, Kidambi et
al. 2020), which :class:`~cellgym.predictors.rewards.UncertaintyPenalisedReward` implements.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..base import DataSpecError, FitData, FitReport, Predictor, PredictorModule
from ..metrics import energy_distance_torch

if TYPE_CHECKING:
    from anndata import AnnData

    from ..base import DataSpec

__all__ = ["EnsembleModule", "EnsemblePredictor"]

logger = logging.getLogger(__name__)

RESAMPLING = ("seeds", "bootstrap")


class EnsembleModule(PredictorModule):
    """The members' modules, each with a (P, P_k) map from the ensemble's perturbation columns to its own.

    ``predict_members`` runs every member once on the whole batch (K batched calls, no per-cell loop).
    """

    def __init__(self, members: Sequence[nn.Module], maps: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        for k, m in enumerate(maps):
            self.register_buffer(f"map_{k}", m.float())

    def predict_members(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """(K, B, G) prediction of every member."""
        return torch.stack(
            [m.predict_batch(x, pert @ getattr(self, f"map_{k}"), ctx) for k, m in enumerate(self.members)]
        )

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Member mean (B, G)."""
        return self.predict_members(x, pert, ctx).mean(0)


class EnsemblePredictor(Predictor):
    """``ensemble``: K members fitted once on the same training data, predicted together.

    Members are registry names (``members``; repeated round-robin up to ``n_members``), diversified by
    ``resampling``: ``"seeds"`` (member k fitted with seed ``seed + k``; diversifies trained models) or
    ``"bootstrap"`` (member k fitted on a bootstrap resample of the training *groups*: (context,
    perturbation) groups drawn with replacement, every control cell kept; diversifies closed-form
    baselines too). A single that a bootstrap member never saw is passed to it as an extra
    perturbation (it predicts it as its family does for unseen singles).

    The prediction is the member mean; :meth:`disagreement` gives the per-cell spread (std over members
    of the predicted expression, averaged over genes) and :meth:`population_disagreement` the mean
    energy distance (:func:`~cellgym.predictors.metrics.energy_distance_torch`) between members'
    predicted populations. After each :meth:`predict_batch` the per-cell disagreement of that call is
    kept in :attr:`last_disagreement` (B,), which the uncertainty-penalised reward reads, so an
    environment gets prediction and uncertainty from its one batched transition call.

    Parameters
    ----------
    members
        Registry names of the member families (default ``["baseline.linear"]``).
    n_members
        K (default 5).
    resampling
        ``"bootstrap"`` (default) or ``"seeds"``.
    member_kwargs
        Constructor keyword arguments per family name.
    extra_perturbations
        Singles beyond the training ones, passed to every member that accepts them.
    """

    name: ClassVar[str] = "ensemble"

    def __init__(
        self,
        *,
        members: Sequence[str] = ("baseline.linear",),
        n_members: int = 5,
        resampling: str = "bootstrap",
        member_kwargs: dict[str, dict[str, Any]] | None = None,
        extra_perturbations: Sequence[str] = (),
    ) -> None:
        if n_members < 2:
            raise DataSpecError(f"ensemble needs n_members >= 2, got {n_members}.")
        if resampling not in RESAMPLING:
            raise DataSpecError(f"ensemble resampling must be one of {list(RESAMPLING)}, got {resampling!r}.")
        if not members or "ensemble" in members:
            raise DataSpecError(f"ensemble members must be registered non-ensemble predictor names, got {list(members)}.")
        super().__init__(
            members=[str(m) for m in members], n_members=int(n_members), resampling=resampling,
            member_kwargs={k: dict(v) for k, v in (member_kwargs or {}).items()},
            extra_perturbations=[str(p) for p in extra_perturbations],
        )
        self.member_states: list[dict[str, Any]] = []
        self.predictors: list[Predictor] = []
        self.last_disagreement: torch.Tensor | None = None


    # ------------------------------------------------------------------------------------------- fitting
    def fit(self, adata: AnnData, spec: DataSpec | None = None, *, epochs: int | None = None, batch_size: int = 256,
            device: str = "cpu", seed: int | None = 0, logger: Any = None) -> FitReport:
        """Fit the K members (see the class docstring), then assemble them; returns the summed budget."""
        from ..base import DataSpec

        spec = spec or DataSpec()
        self.member_states, self.predictors = [], []
        self._adata, self._fit_kwargs = adata, {"epochs": epochs, "batch_size": batch_size, "device": device, "logger": logger}
        try:
            return super().fit(adata, spec, epochs=epochs, batch_size=batch_size, device=device, seed=seed, logger=logger)
        finally:
            del self._adata, self._fit_kwargs

    def _member(self, k: int) -> Predictor:
        from cellgym.registry import get

        family = self.config["members"][k % len(self.config["members"])]
        entry = get("predictors", family)
        cls = entry.load()
        kwargs = {**entry.kwargs, **self.config["member_kwargs"].get(family, {})}
        if "extra_perturbations" in inspect.signature(cls.__init__).parameters:
            kwargs["extra_perturbations"] = sorted(set(self.perturbations) | set(self.config["extra_perturbations"]))
        return cls(**kwargs)

    def _fit(self, data: FitData, *, epochs: int | None, batch_size: int, device: str, seed: int | None, logger: Any) -> FitReport:
        adata = self._adata
        self.perturbations = sorted(set(self.perturbations) | set(self.config["extra_perturbations"]))
        rng = np.random.default_rng(0 if seed is None else seed)
        labels = data.labels
        group = np.char.add(np.char.add(np.asarray(self.contexts)[data.ctx].astype(str), "\x00"), labels.astype(str))
        groups = np.unique(group[~data.is_control])
        self.predictors, total_epochs, seconds = [], 0, 0.0
        for k in range(self.config["n_members"]):
            member = self._member(k)
            rows = np.arange(adata.n_obs)
            if self.config["resampling"] == "bootstrap" and groups.size:
                drawn = np.unique(rng.choice(groups, size=groups.size, replace=True))
                rows = np.flatnonzero(data.is_control | np.isin(group, drawn))
            member_seed = None if seed is None else seed + k
            rep = member.fit(adata[rows], self.spec, epochs=epochs, batch_size=batch_size, device=device, seed=member_seed,
                             logger=logger)
            total_epochs += rep.epochs
            seconds += rep.seconds
            self.predictors.append(member)
            logging.getLogger("cellgym.fit").info("ensemble: member %d/%d (%s) fitted in %.1f s", k + 1,
                                                  self.config["n_members"], member.name, rep.seconds)
        self.member_states = [self._state_of(m) for m in self.predictors]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # members warn about their unseen singles while mapping columns
            self._assemble()
        return FitReport(epochs=total_epochs, seconds=seconds, n_obs=int(data.x.shape[0]))

    @staticmethod
    def _state_of(member: Predictor) -> dict[str, Any]:
        return {"predictor": member.name, "config": member.config, "spec": member.spec.to_dict(), "genes": list(member.genes),
                "perturbations": list(member.perturbations), "contexts": list(member.contexts),
                "extra": member._extra_state()}

    def _assemble(self) -> None:
        """``self.module`` from ``self.predictors``: member modules and the column maps.

        The ensemble is a simulator (``dynamic``) exactly when its members are.
        """
        dynamic = {bool(m.dynamic) for m in self.predictors}
        if len(dynamic) > 1:
            raise DataSpecError("ensemble members must all be response models or all simulators (grn.*), not a mix.")
        self.dynamic = dynamic.pop()  # instance attribute over the class default
        maps = []
        for m in self.predictors:
            if list(m.genes) != list(self.genes) or list(m.contexts) != list(self.contexts):
                raise DataSpecError("ensemble members must share the ensemble's genes and contexts.")
            rows = [m.encode_perturbations([p])[0] for p in self.perturbations]
            width = max([len(m.perturbations), *(r.shape[0] for r in rows)])  # gem1: + an "unseen" count column
            maps.append(torch.stack([nn.functional.pad(r, (0, width - r.shape[0])) for r in rows])
                        if rows else torch.zeros(0, width))
        self.module = EnsembleModule([m.module for m in self.predictors], maps)

    def _build_module(self) -> None:
        if not self.member_states:  # fitting: the members are made in _fit
            self.module = nn.Module()
            return
        from cellgym.registry import predictor_class

        from ..base import DataSpec

        self.predictors = []
        for st in self.member_states:
            obj = predictor_class(st["predictor"])(**st["config"])
            obj.spec = DataSpec.from_dict(st["spec"])
            obj.genes, obj.perturbations, obj.contexts = list(st["genes"]), list(st["perturbations"]), list(st["contexts"])
            obj._load_extra_state(st["extra"])
            obj._build_module()
            self.predictors.append(obj)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # members warn about their unseen singles while mapping columns
            self._assemble()

    def _extra_state(self) -> dict[str, Any]:
        return {"members": self.member_states}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.member_states = list(extra["members"])

    # ------------------------------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict_members(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(K, B, G) every member's prediction of cells ``x`` (B, G) under ``pert`` (B, P)."""
        self._check_fitted()
        if ctx is None:
            ctx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.module.predict_members(x, pert, ctx)

    @torch.no_grad()
    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Member mean (B, G); the per-cell disagreement of this call goes to :attr:`last_disagreement`."""
        preds = self.predict_members(x, pert, ctx)
        mean, spread = _mean_and_spread(preds)
        self.last_disagreement = spread
        return mean

    @torch.no_grad()
    def disagreement(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) per-cell disagreement: std over members of the predicted expression, mean over genes."""
        return _mean_and_spread(self.predict_members(x, pert, ctx))[1]

    @torch.no_grad()
    def population_disagreement(self, members: torch.Tensor) -> torch.Tensor:
        """(B,) mean energy distance between the members' predicted populations ``members`` (K, B, N, G)."""
        k = members.shape[0]
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        return torch.stack([energy_distance_torch(members[i], members[j]) for i, j in pairs]).mean(0)


def _mean_and_spread(preds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Member mean (B, G) and per-cell spread (B,): std over members (population std), mean over genes.

    Written out instead of ``Tensor.std(0)``, which measured ~30x slower on CPU for (5, 2048, 500).
    """
    mean = preds.mean(0)
    var = torch.zeros_like(mean)
    for member in preds:  # K is small; each term is one vectorised pass over (B, G)
        var += (member - mean) ** 2
    return mean, (var / preds.shape[0]).sqrt().mean(-1)
