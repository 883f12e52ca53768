"""``grn.sergio``: a SERGIO gene network (Dibaeinia & Sinha 2020) as an exact, dynamic predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..base import DataSpec, Predictor, PredictorModule
from ..base.errors import DataSpecError
from ._model import BooleanPredictor
from ._sergio import SERGIO_NETWORKS, SergioNetwork

__all__ = ["SergioModule", "SergioPredictor"]

KINDS = ("KO", "OE", "KD")
PREDICT_SEED = 0


class SergioModule(PredictorModule):
    """Chemical-Langevin dynamics of a SERGIO network for B cells at once (buffers hold the network).

    A perturbation column set to d in [0, 1] is a dose: a knockout keeps ``1 - d`` of the production, an
    overexpression mixes ``(1 - d)`` natural and ``d`` overexpressed production (0/1: plain KO / OE).

    Parameters
    ----------
    network
        The parsed network (half-responses filled).
    n_steps, dt, noise
        Euler(-Maruyama) steps per call, step length, and SERGIO's noise amplitude q.
    knockdown, overexpression
        Production factor of a knockdown; an overexpressed gene is produced at ``overexpression`` times
        its maximal production.
    pert_gene, pert_kind
        Gene index and kind of each of the P perturbations.
    """

    def __init__(
        self,
        network: SergioNetwork,
        n_steps: int,
        dt: float,
        noise: float,
        knockdown: float,
        overexpression: float,
        pert_gene: list[int],
        pert_kind: list[str],
    ) -> None:
        super().__init__()
        self.n_steps, self.dt, self.noise, self.knockdown = n_steps, dt, noise, knockdown
        self.decay = float(network.decay)
        f = torch.float32
        # P_i = sum_e |K_e| h or |K_e| (1 - h) = c_i + sum_e K_e h_e: a constant plus one matrix product per
        # distinct Hill coefficient (h depends only on the regulator, since SERGIO's half-response does)
        hills = sorted(set(network.hill.tolist()))
        w = torch.zeros(len(hills), g := network.n_genes, g)
        for e in range(len(network.src)):
            w[hills.index(float(network.hill[e])), network.src[e], network.tgt[e]] += float(network.strength[e])
        const = torch.zeros(g)
        const.index_add_(0, torch.as_tensor(network.tgt), torch.as_tensor(np.clip(-network.strength, 0, None), dtype=f))
        half = torch.ones(g, dtype=torch.float64)
        half[torch.as_tensor(network.src)] = torch.as_tensor(network.half)
        self.register_buffer("hill", torch.tensor(hills, dtype=f).unsqueeze(1))  # (H, 1)
        self.register_buffer("half_n", (half.unsqueeze(0) ** self.hill.double()).to(f))  # (H, G)
        self.register_buffer("weight", w)  # (H, G regulators, G targets)
        self.register_buffer("const", const)  # (G,)
        self.register_buffer("master", torch.as_tensor(network.master, dtype=torch.long))
        self.register_buffer("rates", torch.as_tensor(network.rates.T, dtype=f))  # (C, M)
        self.register_buffer("oe_level", torch.as_tensor(network.max_production() * overexpression, dtype=f))
        p = len(pert_gene)
        masks = {k: torch.zeros(p, g) for k in KINDS}
        for i, (gene, kind) in enumerate(zip(pert_gene, pert_kind, strict=True)):
            masks[kind][i, gene] = 1.0
        self.register_buffer("ko", masks["KO"])
        self.register_buffer("oe", masks["OE"])
        self.register_buffer("kd", masks["KD"])

    def production(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Unperturbed production (B, G) of cells ``x`` (B, G) in cell types ``ctx`` (B,)."""
        xn = x.clamp_min(0.0).unsqueeze(0) ** self.hill.unsqueeze(-1)  # (H, B, G)
        h = xn / (xn + self.half_n.unsqueeze(1))
        p = self.const + torch.einsum("hbg,hgt->bt", h, self.weight)
        p[:, self.master] = self.rates[ctx]
        return p

    def run(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor, generator: torch.Generator | None, *, noise: bool) -> torch.Tensor:
        """Evolve cells ``x`` (B, G) for ``n_steps`` under ``pert`` (B, P) in cell types ``ctx`` (B,)."""
        pert = pert.to(torch.float32)
        # doses in [0, 1]: a knockout of dose d keeps 1 - d of the production, an overexpression of dose d
        # mixes (1 - d) natural + d overexpressed production; 0/1 columns are the plain KO / OE (KO wins)
        keep = 1.0 - (pert @ self.ko).clamp(0.0, 1.0)
        oe = (pert @ self.oe).clamp(0.0, 1.0)
        scale = self.knockdown ** (pert @ self.kd)
        y = x.to(torch.float32).clamp_min(0.0)
        q, dt, lam = (self.noise if noise else 0.0), self.dt, self.decay
        for _ in range(self.n_steps):
            prod = keep * (oe * self.oe_level + (1.0 - oe) * scale * self.production(y, ctx))
            y_next = y + (prod - lam * y) * dt
            if q > 0:
                # sqrt(P) dW_a + sqrt(lam x) dW_b has the law of sqrt(P + lam x) dW: one draw per entry
                dw = torch.randn(y.shape, generator=generator, device=y.device) * dt**0.5
                y_next = y_next + q * (prod + lam * y).sqrt() * dw
            y = y_next.clamp_min(0.0)
        return y

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Noise-free (mean-field) dynamics: deterministic."""
        if ctx is None:
            ctx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.run(x, pert, ctx, None, noise=False)


class SergioPredictor(Predictor):
    """Ground-truth SERGIO world: stochastic expression dynamics of a known GRN; cell types are contexts.

    ``predict_batch(x, pert, ctx)`` evolves cells ``x`` (expression, SERGIO's units: production /
    decay) for ``n_steps`` steps of ``dt`` under the perturbations in force, noise-free;
    ``sample_batch`` adds SERGIO's chemical-Langevin noise. Counts come from :func:`technical_noise`
    (see :func:`~cellgym.predictors.grn.simulate_screen`).

    Parameters
    ----------
    network
        Folder of a SERGIO data set (``Interaction_cID_*.txt`` + ``Regs_cID_*.txt``, e.g.
        ``../shared/data/grn/sergio_ds1``); ``"lineages"``, the shipped network whose three cell types
        are set by master regulators switched on or off (:meth:`SergioNetwork.lineages`, the world of
        ``CellEnv-Reprogram-SERGIO-v0``); or None for a seeded random network
        (:meth:`SergioNetwork.random`: 20 genes, 3 master regulators, 3 cell types).
    n_steps, dt
        Integration steps per call and their length (default 200 x 0.05 = 10 time units, eight decay times).
    noise
        SERGIO's noise amplitude q (``sample_batch`` only).
    decay
        SERGIO's decay rate lambda.
    knockdown
        Production factor of ``_KD``.
    overexpression
        ``_OE`` produces the gene at this multiple of its maximal production over cell types.
    seed
        Seed of the random default network (ignored with ``network``).
    """

    name = "grn.sergio"
    dynamic = True
    takes_doses = True  # a perturbation column in [0, 1] is a dose (see SergioModule)

    def __init__(
        self,
        network: str | None = None,
        n_steps: int = 200,
        dt: float = 0.05,
        noise: float = 1.0,
        decay: float = 0.8,
        knockdown: float = 0.3,
        overexpression: float = 2.0,
        seed: int = 0,
    ) -> None:
        if n_steps < 1 or dt <= 0 or noise < 0 or decay <= 0 or not 0 <= knockdown < 1 or overexpression <= 0:
            raise DataSpecError(
                "expected n_steps >= 1, dt > 0, noise >= 0, decay > 0, 0 <= knockdown < 1, overexpression > 0; got "
                f"n_steps={n_steps}, dt={dt}, noise={noise}, decay={decay}, knockdown={knockdown}, overexpression={overexpression}."
            )
        if dt * decay > 0.5:
            raise DataSpecError(f"dt * decay = {dt * decay} is too large for a stable Euler step; use dt <= {0.5 / decay:.3g}.")
        super().__init__(
            network=None if network is None else str(network), n_steps=int(n_steps), dt=float(dt), noise=float(noise),
            decay=float(decay), knockdown=float(knockdown), overexpression=float(overexpression), seed=int(seed),
        )
        if network is None:
            self.network = SergioNetwork.random(seed=seed, decay=decay)
        elif network in SERGIO_NETWORKS and not Path(network).is_dir():
            self.network = SergioNetwork.lineages(decay=decay)
        else:
            self.network = SergioNetwork.from_folder(network, decay=decay)
        self.genes = list(self.network.genes)
        self.contexts = [f"type{c}" for c in range(self.network.n_types)]
        self.perturbations = [f"{g}_{k}" for k in KINDS for g in self.genes]
        self.spec = DataSpec(counts=None, context_key="cell_type")  # predict() reads simulator states from X
        self._build_module()

    def _build_module(self) -> None:
        c = self.config
        index = {g: i for i, g in enumerate(self.genes)}
        genes, kinds = zip(*(p.rsplit("_", 1) for p in self.perturbations), strict=True)
        self.module = SergioModule(
            self.network, c["n_steps"], c["dt"], c["noise"], c["knockdown"], c["overexpression"],
            [index[g] for g in genes], list(kinds),
        ).eval()

    # a simulator fits nothing: the same no-op fit (a gene check when given data) as the Boolean one
    fit = BooleanPredictor.fit
    _fit = BooleanPredictor._fit

    @torch.no_grad()
    def sample_batch(
        self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Like :meth:`predict_batch` with SERGIO's chemical-Langevin noise drawn from ``generator``."""
        if ctx is None:
            ctx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.module.run(x, pert, ctx, generator, noise=True)

    def steady_state(self, context: str | int = 0) -> torch.Tensor:
        """Analytic noise-free steady state (G,) float32 of an unperturbed cell type (a name or index)."""
        c = self.contexts.index(context) if isinstance(context, str) else int(context)
        return torch.as_tensor(self.network.steady_state(c), dtype=torch.float32)

    def initial_states(self, n_cells: int, ctx: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Steady-state cells of types ``ctx`` (n_cells,): the analytic steady state, then one noisy ``n_steps`` run."""
        ss = torch.stack([self.steady_state(c) for c in range(len(self.contexts))])
        x = ss[ctx]
        return self.sample_batch(x, torch.zeros(n_cells, len(self.perturbations)), ctx, generator=generator)

    def context_index(self, context: str) -> int:
        """Index of a cell type name."""
        if context not in self.contexts:
            raise DataSpecError(f"unknown cell type {context!r}; the network has {self.contexts}.")
        return self.contexts.index(context)

