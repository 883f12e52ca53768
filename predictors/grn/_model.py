"""``grn.boolean``: a Boolean gene-network model as an exact, dynamic predictor (Boolean or BoolODE dynamics)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..base import DataSpec, FitReport, Predictor, PredictorModule, check_genes
from ..base.errors import DataSpecError
from ._boolean import BooleanNetwork, model_path
from ._boolode import sde_step

if TYPE_CHECKING:
    from anndata import AnnData

    from ..base import FitData

__all__ = ["BooleanModule", "BooleanPredictor"]

Dynamics = Literal["sync", "async", "ode", "sde"]
DYNAMICS = ("sync", "async", "ode", "sde")
KINDS = ("KO", "OE", "KD")
DEFAULT_STEPS = {"sync": 20, "async": 20, "ode": 100, "sde": 100}
PREDICT_SEED = 0  # predict_batch of a stochastic dynamics is one fixed draw (sample_batch draws fresh noise)


def _load_network(model: str) -> BooleanNetwork:
    path = Path(model)
    if path.suffix == ".txt" or path.exists():
        return BooleanNetwork.from_file(path)
    return BooleanNetwork.from_file(model_path(model))


class BooleanModule(PredictorModule):
    """Steps B cells of a Boolean network under clamped perturbations; holds only perturbation masks.

    Parameters
    ----------
    network
        The compiled network.
    dynamics
        ``"sync"`` / ``"async"`` Boolean updates, or ``"ode"`` / ``"sde"`` BoolODE-style continuous dynamics.
    n_steps
        Updates per call: synchronous steps, asynchronous sweeps (G single-gene updates each), or
        integration steps of length ``dt``.
    dt, noise
        Integration step and noise amplitude sigma of the continuous dynamics.
    knockdown
        Production factor of a knockdown (continuous dynamics).
    pert_gene, pert_kind
        For each of the P perturbations, its gene index and kind (``"KO"``, ``"OE"``, ``"KD"``).
    """

    def __init__(
        self,
        network: BooleanNetwork,
        dynamics: Dynamics,
        n_steps: int,
        dt: float,
        noise: float,
        knockdown: float,
        pert_gene: list[int],
        pert_kind: list[str],
    ) -> None:
        super().__init__()
        self.network, self.dynamics, self.n_steps = network, dynamics, n_steps
        self.dt, self.noise, self.knockdown = dt, noise, knockdown
        g, p = network.n_genes, len(pert_gene)
        masks = {k: torch.zeros(p, g) for k in KINDS}
        for i, (gene, kind) in enumerate(zip(pert_gene, pert_kind, strict=True)):
            masks[kind][i, gene] = 1.0
        # persistent=False: the masks follow from the config, checkpoints need no tensors
        self.register_buffer("ko", masks["KO"], persistent=False)
        self.register_buffer("oe", masks["OE"], persistent=False)
        self.register_buffer("kd", masks["KD"], persistent=False)

    def clamps(self, pert: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, P) multi-hot -> genes knocked out, overexpressed (bool (B, G)) and production scale (B, G)."""
        off = (pert @ self.ko) > 0
        on = ((pert @ self.oe) > 0) & ~off
        n_kd = pert @ self.kd
        scale = torch.where(off, torch.zeros_like(n_kd), self.knockdown**n_kd)
        return off, on, scale

    def doses(self, pert: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, P) doses in [0, 1] -> knockdown scale, overexpression level and share kept by knockouts (B, G).

        A 0/1 ``pert`` gives exactly :meth:`clamps` (see :mod:`._boolode` for the dose rule).
        """
        keep = 1.0 - (pert @ self.ko).clamp(0.0, 1.0)
        return self.knockdown ** (pert @ self.kd), (pert @ self.oe).clamp(0.0, 1.0), keep

    def run(self, x: torch.Tensor, pert: torch.Tensor, generator: torch.Generator | None, *, noise: bool) -> torch.Tensor:
        """Evolve cells ``x`` (B, G) for ``n_steps`` under ``pert`` (B, P); returns float32 (B, G).

        Boolean dynamics read a column as applied when it is > 0; continuous dynamics read it as a dose in [0, 1].
        """
        net = self.network
        if self.dynamics in ("sync", "async"):
            off, on, _ = self.clamps(pert.to(x.dtype))
            s = net.clamp(x > 0.5, on, off)
            if self.dynamics == "sync":
                for _ in range(self.n_steps):
                    s = net.step_sync(s, on, off)
            else:
                for _ in range(self.n_steps * net.n_genes):
                    s = net.step_async(s, on, off, generator=generator)
            return s.to(torch.float32)
        y = x.to(torch.float32).clamp_min(0.0)
        scale, oe, keep = self.doses(pert.to(torch.float32))
        sigma = self.noise if noise and self.dynamics == "sde" else 0.0
        for _ in range(self.n_steps):
            y = sde_step(net, y, scale, oe, self.dt, sigma, generator, keep)
        return y

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Deterministic: sync / ODE exactly; async a fixed draw; sde its noise-free (ODE) mean path."""
        generator = torch.Generator(device=x.device).manual_seed(PREDICT_SEED)
        return self.run(x, pert, generator, noise=False)


class BooleanPredictor(Predictor):
    """Ground-truth Boolean gene-network world: exact transitions, nothing to fit.

    ``predict_batch(x, pert)`` evolves the given cells ``n_steps`` forward under the perturbations in
    force (a knockout stays applied while its column is set). States are 0/1 for Boolean dynamics and
    concentrations in [0, 1] for the BoolODE-style ``"ode"`` / ``"sde"`` dynamics (see
    :mod:`cellgym.predictors.grn._boolode`, after Pratapa et al. 2020).

    Parameters
    ----------
    model
        ``"krumsiek11"`` (shipped: Krumsiek et al. 2011 myeloid model) or a ``Gene<TAB>Rule`` file path.
    dynamics
        ``"sync"`` (all genes at once, deterministic), ``"async"`` (one random gene per update),
        ``"ode"`` or ``"sde"``.
    n_steps
        Updates per call (default 20 for Boolean dynamics — 20 sweeps of G updates for async — and 100
        integration steps for ode/sde).
    dt
        Integration step of ode/sde (time unit = 1 / decay rate).
    noise
        sigma of the sde noise.
    knockdown
        Production factor of a ``_KD`` perturbation (continuous dynamics only).
    perturbation_kinds
        Kinds in the vocabulary; default ``("KO", "OE")`` for Boolean and ``("KO", "OE", "KD")`` for
        continuous dynamics. ``perturbations`` lists every gene's KO, then every OE, then every KD.

    Examples
    --------
    >>> p = BooleanPredictor()  # Krumsiek 2011, synchronous
    >>> x = p.network.initial_state()[None].float()
    >>> p.attractor_label(p.predict_batch(x, p.encode_perturbations(["control"])))
    ['granulocyte']
    """

    name = "grn.boolean"
    dynamic = True

    def __init__(
        self,
        model: str = "krumsiek11",
        dynamics: Dynamics = "sync",
        n_steps: int | None = None,
        dt: float = 0.1,
        noise: float = 0.05,
        knockdown: float = 0.3,
        perturbation_kinds: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        if dynamics not in DYNAMICS:
            close = difflib.get_close_matches(str(dynamics), DYNAMICS, n=1)
            raise DataSpecError(f"dynamics must be one of {list(DYNAMICS)}, got {dynamics!r}." + (f" Did you mean {close[0]!r}?" if close else ""))
        kinds = tuple(perturbation_kinds) if perturbation_kinds is not None else (
            ("KO", "OE") if dynamics in ("sync", "async") else KINDS
        )
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise DataSpecError(f"perturbation_kinds must be a non-empty subset of {list(KINDS)}, got {list(kinds)}.")
        if "KD" in kinds and dynamics in ("sync", "async"):
            raise DataSpecError("knockdown ('KD') has no meaning for Boolean dynamics; use dynamics='ode' or 'sde', or drop 'KD'.")
        n_steps = DEFAULT_STEPS[dynamics] if n_steps is None else int(n_steps)
        if n_steps < 1 or dt <= 0 or noise < 0 or not 0 <= knockdown < 1:
            raise DataSpecError(
                f"expected n_steps >= 1, dt > 0, noise >= 0 and 0 <= knockdown < 1; got n_steps={n_steps}, dt={dt}, "
                f"noise={noise}, knockdown={knockdown}."
            )
        super().__init__(
            model=str(model), dynamics=dynamics, n_steps=n_steps, dt=float(dt), noise=float(noise),
            knockdown=float(knockdown), perturbation_kinds=list(kinds),
        )
        self.network = _load_network(str(model))
        self.genes = list(self.network.genes)
        self.contexts = [""]
        self.perturbations = [f"{g}_{k}" for k in KINDS if k in kinds for g in self.genes]
        self.spec = DataSpec(counts=None)  # predict() reads simulator states from X
        self._attractor_codes: set[int] | None = None
        self._build_module()

    @property
    def takes_doses(self) -> bool:
        """Continuous dynamics read a perturbation column as a dose in [0, 1] (Boolean ones as on/off)."""
        return self.config["dynamics"] in ("ode", "sde")

    def _build_module(self) -> None:
        c = self.config
        index = {g: i for i, g in enumerate(self.network.genes)}
        genes, kinds = zip(*(p.rsplit("_", 1) for p in self.perturbations), strict=True)
        self.module = BooleanModule(
            self.network, c["dynamics"], c["n_steps"], c["dt"], c["noise"], c["knockdown"],
            [index[g] for g in genes], list(kinds),
        ).eval()

    def fit(self, adata: AnnData | None = None, spec: DataSpec | None = None, **kwargs: Any) -> FitReport:
        """Nothing to fit; with data, only checks that its genes are the model's genes (in order)."""
        if adata is not None:
            check_genes(self.genes, [str(g) for g in adata.var_names])
        return FitReport(epochs=0, seconds=0.0, n_obs=0 if adata is None else adata.n_obs)

    def _fit(self, data: FitData, **kwargs: Any) -> FitReport:
        return FitReport(epochs=0, seconds=0.0, n_obs=int(data.x.shape[0]))

    @torch.no_grad()
    def sample_batch(
        self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Like :meth:`predict_batch`, drawing the asynchronous update order / sde noise from ``generator``."""
        return self.module.run(x, pert, generator, noise=True)

    def initial_states(self, n_cells: int, ctx: torch.Tensor | None = None, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Start cells (n_cells, G) float32 spread over the state space: uniform random 0/1 states for Boolean
        dynamics, uniform concentrations in [0, 1] for ode/sde (every attractor appears in proportion to its basin)."""
        u = torch.rand(n_cells, len(self.genes), generator=generator)
        return (u > 0.5).float() if self.config["dynamics"] in ("sync", "async") else u

    # ------------------------------------------------------------------------------------------ fates
    def attractor_label(self, states: torch.Tensor | np.ndarray) -> list[str]:
        """Fate of each cell (B, G) from the model's fate rules on its binarised state (> 0.5).

        For Krumsiek 2011: erythrocyte (Gata1, Eklf), megakaryocyte (Gata1, Fli1), mep (Gata1 with Eklf
        and Fli1 undecided), granulocyte (Cebpa, Pu1, Gfi1), monocyte (Pu1, cJun/EgrNab, no Gfi1), else
        ``"other"``.
        """
        return self.network.label(torch.as_tensor(states) > 0.5)

    def is_attractor(self, states: torch.Tensor | np.ndarray) -> torch.Tensor:
        """bool (B,): the binarised state lies on an attractor (fixed point or cycle) of the unperturbed
        synchronous dynamics."""
        s = torch.as_tensor(states) > 0.5
        if self._attractor_codes is None:
            self._attractor_codes = {
                int(c) for a in self.network.attractors() for c in self.network._encode(torch.from_numpy(a.states))
            }
        codes = self.network._encode(s).tolist()
        return torch.tensor([c in self._attractor_codes for c in codes], dtype=torch.bool)
