"""``cellgen``: CellGen (Chen lab), a FiLM-conditioned gated-attention Wasserstein GAN that edits the input cell.

The generator takes a cell and a condition (the target perturbation; in trajectory mode also the time
transition t -> t+1) and returns the edited cell ``relu(x * gamma_hat + beta_hat)``; it never sees a
cell type (StarGAN-style, Choi et al. 2018, CVPR), so it can be asked about a cell line it has never
seen perturbed. Training is unpaired: each real cell of a condition is matched with a random control
cell (trajectory mode: a random cell of the previous time point) only through the condition. The
critic (same attention + FiLM + MLP, unbounded score) is trained with the Wasserstein loss and a
gradient penalty (WGAN-GP, Gulrajani et al. 2017; WGAN-div, Wu et al. 2018, as an option); the
generator also pays an identity term (the control condition maps a control cell to itself) and a
cycle term (``G(G(x, c), control) = x``; StarGAN). The context column of the data only ever builds
held-out splits: it is never a model input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from ..base import (
    DataSpec,
    DataSpecError,
    FitData,
    FitReport,
    Predictor,
    check_genes,
    expression,
    target_gene,
    train_module,
)
from ._module import CellGenModule
from ._train import GANStep, GANWeights

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["CellGen"]

log = logging.getLogger(__name__)
CHUNK = 8192


class CellGen(Predictor):
    """``cellgen``: CellGen's generator as a perturbation-response predictor (and time-step forecaster).

    Parameters
    ----------
    n_hidden, n_latent, cond_dim
        Hidden width, generator latent width, condition width.
    n_tokens, token_dim, n_heads
        Gated gene attention: genes projected into ``n_tokens`` tokens of width ``token_dim``,
        ``n_heads`` heads (see :mod:`cellgym.predictors.cellgen._module` for why tokens, not genes).
    n_critic
        Critic steps per generator step (WGAN-GP: 5; default 1, which with the distribution term gives
        five times the generator updates per CPU-second; see the ablation in the report of issue #11).
    penalty
        ``"gp"`` (WGAN-GP) or ``"div"`` (WGAN-div).
    gp_weight, identity_weight, cycle_weight, distribution_weight
        Loss weights (see :class:`GANWeights`; ``gp_weight`` is WGAN-div's k with ``penalty="div"``).
        The defaults come from the ablation in the report of issue #11.
    learning_rate, critic_learning_rate, betas
        Adam of the generator and of the critic (default: the generator's; a higher critic rate is the
        two time-scale update rule of Heusel et al. 2017) and their betas (WGAN-GP: 1e-4, (0.5, 0.9)).
    epochs
        Default epochs (None: enough for about ``default_steps`` critic steps, between 5 and 200).
    default_steps
        Critic steps the default number of epochs aims at.
    n_gene_features
        K, principal components of the training expression used as each target gene's fixed features.
    unseen_rate
        Probability of showing a training perturbation through the generic "unseen" embedding.
    extra_perturbations
        Single perturbations absent from the training data that the model may still be asked about:
        their condition is the generic embedding plus their target gene's features (zero when the target
        is not a measured gene). Any other unknown name raises :class:`UnknownPerturbationError`.
    mode
        ``"auto"`` (trajectory when the DataSpec has a ``time_key``), ``"perturbation"`` or ``"trajectory"``.
    """

    name: ClassVar[str] = "cellgen"

    def __init__(
        self,
        *,
        n_hidden: int = 128,
        n_latent: int = 64,
        cond_dim: int = 32,
        n_tokens: int = 16,
        token_dim: int = 16,
        n_heads: int = 2,
        n_critic: int = 1,
        penalty: Literal["gp", "div"] = "gp",
        gp_weight: float | None = None,
        identity_weight: float = 1.0,
        cycle_weight: float = 1.0,
        distribution_weight: float = 5.0,
        learning_rate: float = 1e-3,
        critic_learning_rate: float | None = None,
        betas: Sequence[float] = (0.5, 0.9),
        epochs: int | None = None,
        default_steps: int = 500,
        n_gene_features: int = 16,
        unseen_rate: float = 0.1,
        extra_perturbations: Sequence[str] = (),
        mode: Literal["auto", "perturbation", "trajectory"] = "auto",
    ) -> None:
        try:  # values from the CLI's --predictor-kwargs may arrive as strings ("1e-3")
            learning_rate, unseen_rate, n_critic = float(learning_rate), float(unseen_rate), int(n_critic)
        except (TypeError, ValueError) as exc:
            raise DataSpecError(f"cellgen: learning_rate, unseen_rate and n_critic must be numbers ({exc}).") from exc
        if penalty not in ("gp", "div"):
            raise DataSpecError(f"cellgen penalty must be 'gp' or 'div', got {penalty!r}.")
        if mode not in ("auto", "perturbation", "trajectory"):
            raise DataSpecError(f"cellgen mode must be 'auto', 'perturbation' or 'trajectory', got {mode!r}.")
        if token_dim % n_heads:
            raise DataSpecError(f"cellgen token_dim ({token_dim}) must be a multiple of n_heads ({n_heads}).")
        if n_critic < 1 or not 0 <= unseen_rate < 1 or learning_rate <= 0:
            raise DataSpecError(
                f"cellgen expects n_critic >= 1, 0 <= unseen_rate < 1, learning_rate > 0; got {n_critic}, {unseen_rate}, {learning_rate}."
            )
        gp_weight = (10.0 if penalty == "gp" else 2.0) if gp_weight is None else float(gp_weight)
        super().__init__(
            n_hidden=int(n_hidden), n_latent=int(n_latent), cond_dim=int(cond_dim), n_tokens=int(n_tokens),
            token_dim=int(token_dim), n_heads=int(n_heads), n_critic=int(n_critic), penalty=penalty, gp_weight=gp_weight,
            identity_weight=float(identity_weight), cycle_weight=float(cycle_weight),
            distribution_weight=float(distribution_weight), learning_rate=float(learning_rate),
            critic_learning_rate=float(learning_rate if critic_learning_rate is None else critic_learning_rate),
            betas=[float(b) for b in betas], epochs=epochs, default_steps=int(default_steps),
            n_gene_features=int(n_gene_features), unseen_rate=float(unseen_rate),
            extra_perturbations=[str(p) for p in extra_perturbations], mode=mode,
        )
        self.times: list[float] = []  # trajectory mode: the sorted time points
        self.seen: list[str] = []  # perturbations measured in training (the rest came from extra_perturbations)
        self.score_stats: dict[str, list[float]] = {}  # condition -> [mean, std] critic score of real training cells
        self._gene_features = torch.zeros(0, 0)

    # ------------------------------------------------------------------------------------------ modes
    @property
    def trajectory(self) -> bool:
        """Whether the model forecasts time steps (conditions include the transition t -> t+1)."""
        mode = self.config["mode"]
        return mode == "trajectory" or (mode == "auto" and self.spec.time_key is not None)

    @property
    def n_steps(self) -> int:
        """Number of time transitions (0 in perturbation mode)."""
        return max(len(self.times) - 1, 0) if self.trajectory else 0

    # ---------------------------------------------------------------------------------------- fitting
    def fit(self, adata: AnnData, spec: DataSpec | None = None, *, epochs: int | None = None, batch_size: int = 256,
            device: str = "cpu", seed: int | None = 0, logger: Any = None) -> FitReport:
        """Fit on ``adata``; in trajectory mode ``spec.time_key`` names a numeric time column."""
        spec = spec or DataSpec()
        self.spec = spec
        if self.trajectory:
            if spec.time_key is None:
                raise DataSpecError("cellgen mode='trajectory' needs DataSpec.time_key (the obs column of each cell's time point).")
            if spec.time_key not in adata.obs:
                raise DataSpecError(f"adata.obs has no column {spec.time_key!r} (DataSpec.time_key); columns are {list(adata.obs)}.")
            t = pd.to_numeric(adata.obs[spec.time_key], errors="coerce")
            if t.isna().any():
                raise DataSpecError(f"adata.obs[{spec.time_key!r}] (DataSpec.time_key) must be numeric; {int(t.isna().sum())} value(s) are not.")
            self.times = sorted(float(v) for v in t.unique())
            if len(self.times) < 2:
                raise DataSpecError(f"trajectory mode needs at least 2 time points in adata.obs[{spec.time_key!r}], found {self.times}.")
        return super().fit(adata, spec, epochs=epochs, batch_size=batch_size, device=device, seed=seed, logger=logger)

    def _gene_feature_rows(self, x: np.ndarray) -> torch.Tensor:
        """(P, K) features of each perturbation's target gene: its loadings on the top-K PCs of ``x``."""
        k = min(self.config["n_gene_features"], x.shape[0] - 1, x.shape[1])
        xc = x.astype(np.float64) - x.mean(0)
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        loadings = vt[:k].T * s[:k] / np.sqrt(x.shape[0])  # (G, k)
        loadings /= max(np.abs(loadings).max(), 1e-8)
        index = {g: i for i, g in enumerate(self.genes)}
        rows = np.zeros((len(self.perturbations), self.config["n_gene_features"]), np.float32)
        for p, name in enumerate(self.perturbations):
            gene = target_gene(name, index)[0]
            if gene in index:
                rows[p, :k] = loadings[index[gene]]
        return torch.from_numpy(rows)

    def _build_module(self) -> None:
        c = self.config
        feats = self._gene_features if self._gene_features.numel() else torch.zeros(len(self.perturbations), c["n_gene_features"])
        self.module = CellGenModule(
            n_genes=len(self.genes), gene_features=feats, n_steps=self.n_steps, cond_dim=c["cond_dim"],
            n_hidden=c["n_hidden"], n_latent=c["n_latent"],
            attention={"n_tokens": c["n_tokens"], "token_dim": c["token_dim"], "n_heads": c["n_heads"]},
        )
        seen = set(self.seen) if self.seen else set(self.perturbations)
        for enc in (self.module.gen_condition, self.module.critic_condition):
            enc.seen.copy_(torch.tensor([p in seen for p in self.perturbations], dtype=torch.float32))

    def _time_index(self, adata_obs: pd.DataFrame, n: int) -> np.ndarray:
        t = pd.to_numeric(adata_obs[self.spec.time_key], errors="coerce").to_numpy(np.float64)
        return np.searchsorted(np.asarray(self.times), t).astype(np.int64)[:n]

    def fit_data(self, adata: AnnData) -> FitData:
        """:class:`FitData` (plus ``time_index`` (N,) in trajectory mode, kept on the predictor)."""
        data = super().fit_data(adata)
        self._fit_time = self._time_index(adata.obs, adata.n_obs) if self.trajectory else None
        return data

    def _fit(self, data: FitData, *, epochs: int | None, batch_size: int, device: str, seed: int | None, logger: Any) -> FitReport:
        c = self.config
        self.seen = list(self.perturbations)
        extra = [p for p in c["extra_perturbations"] if p not in set(self.seen)]
        if extra:  # declared unseen singles join the vocabulary (generic embedding + gene features)
            self.perturbations = sorted(set(self.perturbations) | set(extra))
            index = {p: i for i, p in enumerate(self.perturbations)}
            pert = np.zeros((data.pert.shape[0], len(self.perturbations)), np.float32)
            pert[:, [index[p] for p in self.seen]] = data.pert
            data.pert = pert
        self._gene_features = self._gene_feature_rows(data.x)
        self._build_module()
        tensors, sources, pools = self._training_tensors(data)
        n = tensors["x"].shape[0]
        epochs = epochs or c["epochs"] or int(np.clip(round(c["default_steps"] * batch_size / max(n, 1)), 5, 200))
        module: CellGenModule = self.module
        module.to(device)
        betas = tuple(c["betas"])
        gen_opt = torch.optim.Adam(module.generator_parameters(), lr=c["learning_rate"], betas=betas)
        critic_opt = torch.optim.Adam(module.critic_parameters(), lr=c["critic_learning_rate"], betas=betas)
        order = torch.from_numpy(np.argsort(pools, kind="stable"))
        size = torch.from_numpy(np.bincount(pools, minlength=pools.max() + 1))
        start = torch.cumsum(size, 0) - size
        weights = GANWeights(gp=c["gp_weight"], identity=c["identity_weight"],
                             cycle=0.0 if self.trajectory else c["cycle_weight"], distribution=c["distribution_weight"])
        step = GANStep(
            module, torch.from_numpy(sources).to(device), order.to(device), start.to(device), size.to(device), critic_opt,
            n_critic=c["n_critic"], weights=weights, penalty=c["penalty"], unseen_rate=c["unseen_rate"],
            generator=torch.Generator().manual_seed(0 if seed is None else seed + 1),
        )
        report = train_module(module, tensors, epochs=epochs, batch_size=batch_size, device=device, seed=seed, logger=logger,
                              optimizer=gen_opt, step=step, on_epoch_end=lambda e, _: step.checkpoint(module, e))
        self._score_statistics(tensors)
        return report

    def _training_tensors(self, data: FitData) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Target rows (x, pert, step, pool), the source cells and the pool of each source cell."""
        if not self.trajectory:
            if not data.is_control.any():
                raise DataSpecError("cellgen needs control cells: they are the generator's input.")
            sources = data.x[data.is_control]
            n = data.x.shape[0]
            tensors = {"x": data.x, "pert": data.pert, "step": np.full(n, -1, np.int64), "pool": np.zeros(n, np.int64)}
            return tensors, sources, np.zeros(sources.shape[0], np.int64)
        t = self._fit_time
        later = t >= 1
        tensors = {"x": data.x[later], "pert": data.pert[later], "step": t[later] - 1, "pool": t[later] - 1}
        earlier = t < len(self.times) - 1
        return tensors, data.x[earlier], t[earlier]

    @torch.no_grad()
    def _score_statistics(self, tensors: dict[str, np.ndarray]) -> None:
        """Mean and std of the critic's score of real training cells, per condition label (for the reward)."""
        module: CellGenModule = self.module
        module.eval()
        pert, step = torch.as_tensor(tensors["pert"]), torch.as_tensor(tensors["step"])
        x = torch.as_tensor(tensors["x"])
        scores = torch.cat([module.score(x[s : s + CHUNK], pert[s : s + CHUNK], step[s : s + CHUNK]) for s in range(0, x.shape[0], CHUNK)])
        labels = self._condition_labels(pert.numpy(), step.numpy())
        stats: dict[str, list[float]] = {}
        for lab in np.unique(labels):
            v = scores[torch.from_numpy(labels == lab)]
            stats[str(lab)] = [float(v.mean()), float(v.std()) if v.numel() > 1 else 1.0]
        self.score_stats = stats

    def _condition_labels(self, pert: np.ndarray, step: np.ndarray) -> np.ndarray:
        names = np.asarray(self.perturbations, dtype=object)
        out = []
        for row, s in zip(pert, step, strict=True):
            lab = self.spec.separator.join(names[row > 0]) or self.spec.control
            out.append(lab if s < 0 else f"{lab}@{self.times[s]:g}->{self.times[s + 1]:g}")
        return np.asarray(out, dtype=object)

    # ------------------------------------------------------------------------------------- predicting
    def _time_steps(self, start: float | None, steps: int, n: int) -> list[int]:
        if not self.trajectory:
            if start is not None or steps != 1:
                raise DataSpecError("start/steps only apply to a cellgen model fitted in trajectory mode (DataSpec.time_key).")
            return [-1]
        first = 0 if start is None else self._start_index(start)
        if steps < 1 or first + steps > self.n_steps:
            raise DataSpecError(
                f"cannot roll {steps} step(s) forward from time {self.times[first]:g}: the model knows the transitions "
                f"between {self.times}; pass 1 <= steps <= {self.n_steps - first}."
            )
        return list(range(first, first + steps))

    def _start_index(self, start: float) -> int:
        matches = [i for i, t in enumerate(self.times) if np.isclose(t, float(start))]
        if not matches:
            raise DataSpecError(f"unknown start time {start!r}: the model was fitted on time points {self.times}.")
        return matches[0]

    @torch.no_grad()
    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Edited cells (B, G); ``ctx`` is ignored. Trajectory mode: one step from the first time point."""
        self._check_fitted()
        step = torch.full((x.shape[0],), 0 if self.trajectory else -1, dtype=torch.long, device=x.device)
        return self.module.predict_batch(x, pert, None, step)

    @torch.no_grad()
    def rollout(self, x: torch.Tensor, pert: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
        """Apply the generator for each transition index in ``steps`` in turn: (B, G) -> (B, G)."""
        self._check_fitted()
        for s in steps:
            x = self.module.predict_batch(x, pert, None, torch.full((x.shape[0],), s, dtype=torch.long, device=x.device))
        return x

    def predict(self, control: AnnData, perturbation: str | Sequence[str] = "control", *, context: str | None = None,
                mode: Literal["mean", "sample"] = "mean", n_samples: int | None = None, seed: int | None = None,
                start: float | None = None, steps: int = 1) -> AnnData:
        """Edited cells as AnnData; in trajectory mode, rolled ``steps`` transitions forward from ``start``.

        ``context`` is accepted for the contract and ignored (CellGen takes no cell-type input);
        ``mode="sample"`` equals ``"mean"`` (the generator is deterministic given the input cell).
        Trajectory mode: ``start`` is the cells' time point (default the first), the output's
        ``obs[time_key]`` the time reached.
        """
        from anndata import AnnData

        self._check_fitted()
        check_genes(self.genes, control.var_names)
        if mode not in ("mean", "sample"):
            raise DataSpecError(f"mode must be 'mean' or 'sample', got {mode!r}.")
        plan = self._time_steps(start, steps, control.n_obs)
        x = expression(control, self.spec)
        labels = np.asarray([perturbation] * control.n_obs if isinstance(perturbation, str) else list(perturbation), dtype=object)
        if labels.shape[0] != control.n_obs:
            raise DataSpecError(f"got {labels.shape[0]} perturbation labels for {control.n_obs} cells; pass one label or one per cell.")
        if n_samples is not None:
            rows = np.random.default_rng(seed).integers(0, control.n_obs, size=n_samples)
            x, labels = x[rows], labels[rows]
        pert = self.encode_perturbations(labels)
        out = [self.rollout(torch.from_numpy(x[s : s + CHUNK]), pert[s : s + CHUNK], plan) for s in range(0, x.shape[0], CHUNK)]
        y = torch.cat(out).numpy() if out else np.zeros((0, len(self.genes)), np.float32)
        obs = pd.DataFrame({self.spec.perturbation_key: labels.astype(str)})
        if self.trajectory:
            obs[self.spec.time_key] = self.times[plan[-1] + 1]
        obs.index = obs.index.astype(str)
        return AnnData(X=y.astype(np.float32), obs=obs, var=pd.DataFrame(index=pd.Index(self.genes, dtype=str)))

    @torch.no_grad()
    def critic_score(self, cells: torch.Tensor, perturbation: str = "control", *, start: float | None = None) -> torch.Tensor:
        """The critic's realism score (N,) of cells (N, G) log1p as cells of ``perturbation``.

        Trajectory mode: as cells reached by the transition from ``start`` (default the first time point).
        """
        self._check_fitted()
        pert = self.encode_perturbations([perturbation]).expand(cells.shape[0], -1)
        s = -1 if not self.trajectory else (0 if start is None else self._start_index(start))
        step = torch.full((cells.shape[0],), s, dtype=torch.long)
        return torch.cat([self.module.score(cells[i : i + CHUNK].float(), pert[i : i + CHUNK], step[i : i + CHUNK])
                          for i in range(0, cells.shape[0], CHUNK)])

    # ------------------------------------------------------------------------------------ persistence
    def _extra_state(self) -> dict[str, Any]:
        return {"times": list(self.times), "seen": list(self.seen), "score_stats": self.score_stats}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.times = [float(t) for t in extra.get("times", [])]
        self.seen = list(extra.get("seen", []))
        self.score_stats = {k: [float(a) for a in v] for k, v in (extra.get("score_stats") or {}).items()}
