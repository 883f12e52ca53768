"""CellTRIP's multi-agent world: every cell is an agent moving in a shared space that should reproduce its modalities."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv

from cellgym.envs._threads import check_num_threads, torch_threads
from cellgym.envs.errors import ResetNeededError
from cellgym.predictors.base.errors import CellgymError, DataSpecError

from ._neighbours import for_chunks, gather_rows, knn_graph
from ._preprocess import Modality, ModalityKind, fit_modality, infer_kind
from ._render import TripFrameRenderer

DENSE_DISTANCE_MAX_CELLS = 8192
"""Up to this many cells the (N, N) modality distances are computed once per episode (N^2 floats)."""

PAIR_CHUNK_ELEMENTS = 1 << 18
"""Gathered (cell, neighbour, feature) entries per chunk of the neighbour view's pair computations (1 MB,
so a chunk stays in cache)."""

View = Literal["sampled", "all", "neighbours"]


class TripConfigError(CellgymError, ValueError):
    """An invalid argument to the CellTRIP world (sizes, modality indices, weights, actions)."""


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward terms (defaults documented in :class:`TripParallelEnv`)."""

    distance: float = 1.0
    """Distance matching: |env distance - modality distance| between a cell and the cells it sees."""
    pinning: float = 1.0
    """Pinning: squared error of a decoder from positions to each target modality (refitted every step)."""
    origin: float = 0.1
    """Distance of the cell from the origin (keeps the population centred)."""
    velocity: float = 0.001
    """Per-step cost on the squared speed."""
    action: float = 0.0001
    """Per-step cost on the squared force."""


class TripObs(NamedTuple):
    """The batched observation of all N cells.

    states : Tensor of shape (N, S), float32
        Row i: position (d), velocity (d) and input-modality features (F_in) of cell i.
    view : Tensor of shape (K,) or (N, k), int64
        1-D (``view="sampled"`` or ``"all"``): indices of the cells every cell sees this step (a cell never
        attends to itself; readers mask ``view == i`` for row i). All cells when N <= ``view_size`` or
        ``view="all"``, a random sample otherwise.
        2-D (``view="neighbours"``): row i holds the k cells that cell i sees (never i itself), fixed for
        the episode.
    """

    states: torch.Tensor
    view: torch.Tensor


class TripParallelEnv(ParallelEnv):
    """CellTRIP's world of cells as agents (PettingZoo ``ParallelEnv`` with a batched tensor interface).

    ## Description
    Each cell is an agent with a position and a velocity in a ``dim``-dimensional space. It sees its own
    input-modality features and those of other cells, pushes itself with a continuous force, and is
    rewarded when the arrangement of the population reproduces the target modalities: distances between
    cells match their distances in each target modality, and a decoder from position recovers each
    target modality ("pinning"). With input = target modalities the world integrates modalities; with a
    target that is not an input (e.g. spatial position from expression) it imputes. After CellTRIP
    (Sun et al., bioRxiv 2025, doi:10.1101/2025.11.21.689815).

    ## Action Space
    ``Box(-1.0, 1.0, (dim,), float32)`` per cell: the force it applies (scaled by ``force``).

    ## Observation Space
    ``Dict(self=Box(-inf, inf, (S,)), others=Box(-inf, inf, (K, S)), n_others=Discrete(K + 1),
    self_slot=Discrete(K + 1))`` per cell, with S = 2 * dim + F_in and K = min(max_cells, view_size)
    (``view="all"``: K = max_cells; ``view="neighbours"``: K = min(max_cells - 1, n_neighbours + n_random)).

    | Component | Shape | Meaning |
    |---|---|---|
    | self | (S,) | own position (dim), velocity (dim), processed input features (F_in) |
    | others | (K, S) | rows of the cells in view (zero padding); shared by every cell this step, except with ``view="neighbours"`` |
    | n_others | int | number of real rows in ``others`` (the rest is padding) |
    | self_slot | int | row of ``others`` that is this cell (not to be attended to); K if it is not in view |

    The batched interface returns :class:`TripObs` (all rows once, and the view's indices).

    ## Views
    - ``"sampled"`` (default): all cells when N <= ``view_size``, else ``view_size`` random cells redrawn
      every step, shared by every cell. O(N * view_size) per step.
    - ``"all"``: every cell sees every other cell. O(N^2) per step: the reference for small worlds.
    - ``"neighbours"``: cell i sees its ``n_neighbours`` nearest cells in the processed input modalities
      (concatenated; target modalities when there is no input) plus ``n_random`` random other cells, drawn
      once per episode (the modalities do not move, only positions do). Observations, the policy's
      attention and the distance reward are O(N * k) per step; the kNN graph costs one search per episode
      (exact up to 20,000 cells, else faiss HNSW or pynndescent: :func:`~cellgym.envs.trip.knn_graph`) and
      is reused while the episode's cells stay the same.

    With ``obs_format="flat"`` each cell observes one ``Box(low, high, (S + K S + 2,), float32)``: ``self``,
    ``others`` flattened row by row, then ``n_others`` and ``self_slot`` as floats (what SuperSuit's
    ``pad_observations_v0``, ``flatten_v0``, ``normalize_obs_v0`` and ``black_death_v3`` need). Its bounds:
    positions ``[-bounds, bounds]`` (infinite without ``bounds``; ``normalize_obs_v0`` needs it set),
    velocities ``[-max_velocity, max_velocity]``, input features their range over all the data's cells.

    The global state (``state()``, ``state_space``): ``Box(-inf, inf, (max_cells, S), float32)``, the rows of
    every current cell then zeros.

    ## Transition
    ``v <- clip(v + dt * force * a, -max_velocity, max_velocity)``; ``v <- (1 - friction) v``;
    ``x <- x + dt * v``; with ``bounds`` set, x is clipped to ``[-bounds, bounds]`` and the velocity
    along a clipped axis zeroed. Deterministic.

    ## Rewards
    ``r_i = Phi_i(s') - Phi_i(s) - w_velocity |v'_i|^2 - w_action |a_i|^2`` with potential
    ``Phi_i = -(w_distance * mean_j (|x_i - x_j| - D_ij)^2 + w_pinning * |f(x_i) - y_i|^2 + w_origin |x_i|)``
    summed over target modalities: D is the modality's distance (mean pairwise distance scaled to 1), j runs
    over the cells in view, and f is the least-squares linear decoder from positions (for ``spatial``
    modalities: the best rotation + translation, Procrustes) fitted to the current positions. Default
    weights: distance 1.0, pinning 1.0, origin 0.1, velocity 0.001, action 0.0001 (:class:`RewardWeights`).

    With ``view="neighbours"`` the distance term estimates the mean over **all** other cells in O(N k)
    (``distance_pairs="all"``, default): cell i's k nearest cells count exactly and its r random cells
    (uniform over the others) each weigh (N - 1) / r (0 when one repeats a neighbour), over N - 1 (stratified
    sampling, unbiased; exact when k = N - 1). The random cells stay fixed for the episode unless
    ``resample_random``, and every step's reward uses the same pairs before and after the move.
    ``distance_pairs="view"`` takes the plain mean over the view's k + r pairs instead; it under-weights the far
    pairs (20% of the weight for 8 of 40 pairs where they are 87% of all pairs at 256 cells) and measured
    worse layouts: kNN label agreement 0.35 / 0.24 (seeds 0 / 1) where the exact all-pairs term with the same
    neighbour observations gave 0.41 / 0.47 (``benchmarks/trip.py integration``, docs/trip_scale.md).

    ## Starting State
    ``n_cells`` cells drawn without replacement from the data's rows, or from ``cell_pool`` when given
    (``options={"n_cells": k}`` or ``options={"cells": indices}``; else uniform in ``[min_cells, max_cells]``), positions
    ``N(0, init_scale^2)`` (default ``1/sqrt(dim)``, so |x| ~ 1 like the modality distances), velocities 0.

    ## Episode End
    1. Termination: never (the world has no absorbing state).
    2. Truncation: every cell at a random horizon drawn uniformly from ``episode_length`` at reset, so
       a learner must bootstrap from its critic at every episode end (truncated reward bootstrapping).

    ## Info
    Empty per cell; ``env.cell_index`` holds the data rows of the current cells.

    ## Arguments
    | Parameter | Type | Default | Description |
    |---|---|---|---|
    | modalities | list of arrays/AnnData (N, F_k) | | paired modalities of the same N cells |
    | kinds | list of str | inferred | ``counts``, ``log1p``, ``features`` or ``spatial`` per modality |
    | input_modalities | list of int | all | modalities cells observe |
    | target_modalities | list of int | all | modalities the space must reproduce |
    | dim | int | 32 | dimension of the space |
    | n_pcs | int | 64 | PCA width of expression-like modalities |
    | view | str | "sampled" | ``"sampled"``, ``"all"`` or ``"neighbours"`` (see Views) |
    | view_size | int | 256 | ``view="sampled"``: cells seen: all when N <= view_size, else a random sample drawn every step |
    | n_neighbours, n_random | int | 32, 8 | ``view="neighbours"``: nearest cells in modality space, and random other cells |
    | resample_random | bool | False | ``view="neighbours"``: redraw the ``n_random`` random cells every step (else once per episode); costs O(N n_random F) per step |
    | distance_pairs | str | "all" | ``view="neighbours"``: ``"all"`` estimates the all-pairs distance term (see Rewards); ``"view"``: the mean over the view's own pairs |
    | max_cells / min_cells | int | N / max_cells | range of cells per episode |
    | dt, force, friction, max_velocity | float | 0.1, 1.0, 0.1, 1.0 | dynamics |
    | bounds | float or None | None | box that positions are clipped to |
    | init_scale | float | 1/sqrt(dim) | std of the starting positions (norm ~1) |
    | reward_weights | dict | see Rewards | :class:`RewardWeights` fields |
    | episode_length | (int, int) | (100, 200) | range of the random horizon |
    | device | str | "cpu" | torch device of the state and of every batched tensor (``"cuda"`` for a GPU) |
    | obs_format | str | "dict" | "dict" (see Observation Space) or "flat" (one Box per cell, for SuperSuit) |
    | labels, label_name | array (N,), str | None, "label" | a label per data cell and what it is (colours of ``render()``) |
    | render_mode | str | None | None or "rgb_array": cells in the first two dimensions, coloured by label |
    | num_threads | int | 1 | torch threads of the world's own work (-1: torch's setting); T > 1 also splits the neighbour view's chunks over T Python threads |
    | cell_pool | array of int | None | data rows that drawn episodes take their cells from (a data partition, e.g. one Ray runner's: CellTRIP's ``partition_cols``); all rows when None |

    ``cellgym.registry.make("CellEnv-Trip-Integration-v0")`` builds the default integration world.

    ## Device
    All state (positions, velocities, features, distance caches) lives on ``device``; ``step_batch`` and
    ``reset_batch`` take and return tensors there, and the dict API converts to numpy at the boundary.
    Random draws (starting positions, views) come from a CPU generator and are moved to ``device``, so a
    seed gives the same episode on every device (up to floating-point differences of the arithmetic).
    ``env.to(device)`` moves a world, its current episode included. The fitted preprocessing stays on the CPU.

    ## Vectorized environment
    None: the world is already batched over cells (``step_batch``).

    ## Version History
    - v0: first version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "name": "celltrip_v0", "render_fps": 10}

    def __init__(
        self,
        modalities: Sequence[Any],
        *,
        kinds: Sequence[ModalityKind] | None = None,
        names: Sequence[str] | None = None,
        input_modalities: Sequence[int] | None = None,
        target_modalities: Sequence[int] | None = None,
        dim: int = 32,
        n_pcs: int = 64,
        view: View = "sampled",
        view_size: int = 256,
        n_neighbours: int = 32,
        n_random: int = 8,
        resample_random: bool = False,
        distance_pairs: str = "all",
        max_cells: int | None = None,
        min_cells: int | None = None,
        dt: float = 0.1,
        force: float = 1.0,
        friction: float = 0.1,
        max_velocity: float = 1.0,
        bounds: float | None = None,
        init_scale: float | None = None,
        reward_weights: dict[str, float] | None = None,
        episode_length: tuple[int, int] = (100, 200),
        preprocessing: Sequence[Modality] | None = None,
        device: str | torch.device = "cpu",
        obs_format: str = "dict",
        labels: Sequence[Any] | np.ndarray | None = None,
        label_name: str = "label",
        render_mode: str | None = None,
        num_threads: int | None = None,
        cell_pool: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if obs_format not in ("dict", "flat"):
            raise TripConfigError(f"obs_format must be 'dict' or 'flat'; got {obs_format!r}.")
        if render_mode not in (None, "rgb_array"):
            raise TripConfigError(f"render_mode must be None or 'rgb_array'; got {render_mode!r}.")
        self.num_threads = check_num_threads(num_threads)
        with torch_threads(self.num_threads):
            self._build(modalities, kinds=kinds, names=names, input_modalities=input_modalities,
                        target_modalities=target_modalities, dim=dim, n_pcs=n_pcs, view=view, view_size=view_size,
                        n_neighbours=n_neighbours, n_random=n_random, max_cells=max_cells, min_cells=min_cells, dt=dt, force=force, friction=friction,
                        max_velocity=max_velocity, bounds=bounds, init_scale=init_scale, reward_weights=reward_weights,
                        episode_length=episode_length, preprocessing=preprocessing, device=device, cell_pool=cell_pool)
        self.obs_format = obs_format
        self.resample_random = bool(resample_random)
        if distance_pairs not in ("view", "all"):
            raise TripConfigError(f"distance_pairs must be 'view' or 'all'; got {distance_pairs!r}.")
        self.distance_pairs = distance_pairs
        if labels is not None and len(labels) != self.n_total:
            raise DataSpecError(f"labels must have one entry per cell of the data ({self.n_total}); got {len(labels)}.")
        self.labels = None if labels is None else np.asarray(labels)
        self.label_name = str(label_name)
        self.render_mode = render_mode
        self._renderer: TripFrameRenderer | None = None
        self.state_space = spaces.Box(-np.inf, np.inf, (self.max_cells, self.state_size), np.float32)
        if obs_format == "flat":
            self._observation_space = self._flat_space()

    def _build(self, modalities: Sequence[Any], *, kinds: Sequence[ModalityKind] | None, names: Sequence[str] | None,
               input_modalities: Sequence[int] | None, target_modalities: Sequence[int] | None, dim: int, n_pcs: int,
               view: View, view_size: int, n_neighbours: int, n_random: int, max_cells: int | None, min_cells: int | None, dt: float, force: float, friction: float,
               max_velocity: float, bounds: float | None, init_scale: float | None,
               reward_weights: dict[str, float] | None, episode_length: tuple[int, int],
               preprocessing: Sequence[Modality] | None, device: str | torch.device,
               cell_pool: Sequence[int] | np.ndarray | None = None) -> None:
        """Check the arguments, fit the preprocessing, set the spaces (the constructor's work)."""
        self.device = resolve_device(device)
        raw = [_as_array(m, k) if m is not None else None for k, m in enumerate(modalities)]
        if not raw:
            raise TripConfigError("the CellTRIP world needs at least one modality; got none.")
        sizes = {len(m) for m in raw if m is not None}
        if len(sizes) != 1:
            raise DataSpecError(f"modalities must hold the same cells (paired rows); got row counts "
                                f"{[None if m is None else len(m) for m in raw]}.")
        self.n_total = sizes.pop()
        n_mod = len(raw)
        self.input_modalities = _indices(input_modalities, n_mod, "input_modalities")
        self.target_modalities = _indices(target_modalities, n_mod, "target_modalities")
        for k in self.input_modalities:
            if raw[k] is None:
                raise DataSpecError(f"input modality {k} is None; every input modality needs data.")
        if preprocessing is None:
            if any(m is None for m in raw):
                raise DataSpecError("a modality is None; that is only allowed with fitted `preprocessing`.")
            kinds = list(kinds) if kinds is not None else [infer_kind(m) for m in raw]
            names = list(names) if names is not None else [f"modality_{k}" for k in range(n_mod)]
            if len(kinds) != n_mod or len(names) != n_mod:
                raise TripConfigError(f"kinds/names must have one entry per modality ({n_mod}); got "
                                      f"{len(kinds)} kinds and {len(names)} names.")
            preprocessing = [fit_modality(m, kd, name=nm, n_pcs=n_pcs) for m, kd, nm in zip(raw, kinds, names, strict=True)]
        if len(preprocessing) != n_mod:
            raise TripConfigError(f"preprocessing has {len(preprocessing)} entries for {n_mod} modalities.")
        for mod, m in zip(preprocessing, raw, strict=True):
            if m is not None and m.shape[1] != mod.n_raw:
                raise DataSpecError(f"modality {mod.name!r} has {m.shape[1]} features; its preprocessing "
                                    f"was fitted on {mod.n_raw}. Pass the same features in the same order.")
        for name, value in (("dim", dim), ("view_size", view_size), ("n_neighbours", n_neighbours)):
            if int(value) < 1:
                raise TripConfigError(f"{name} must be >= 1; got {value}.")
        if int(n_random) < 0:
            raise TripConfigError(f"n_random must be >= 0; got {n_random}.")
        if view not in ("sampled", "all", "neighbours"):
            raise TripConfigError(f"view must be 'sampled', 'all' or 'neighbours'; got {view!r}.")
        self.cell_pool = None
        if cell_pool is not None:
            pool = np.asarray(cell_pool)
            if pool.ndim != 1 or len(pool) < 2 or not np.issubdtype(pool.dtype, np.integer) or pool.min() < 0 \
                    or pool.max() >= self.n_total or len(np.unique(pool)) != len(pool):
                raise TripConfigError(f"cell_pool must hold at least 2 distinct row indices in [0, {self.n_total}); "
                                      f"got {len(pool)} entries of dtype {pool.dtype}.")
            self.cell_pool = np.sort(pool.astype(np.int64))
        limit = self.n_total if self.cell_pool is None else len(self.cell_pool)
        max_cells = limit if max_cells is None else int(max_cells)
        min_cells = max_cells if min_cells is None else int(min_cells)
        if not 2 <= min_cells <= max_cells <= limit:
            where = f"n_cells in the data ({self.n_total})" if self.cell_pool is None else f"len(cell_pool) ({limit})"
            raise TripConfigError(f"need 2 <= min_cells <= max_cells <= {where}; "
                                  f"got min_cells={min_cells}, max_cells={max_cells}.")
        lo, hi = (int(episode_length[0]), int(episode_length[1]))
        if not 1 <= lo <= hi:
            raise TripConfigError(f"episode_length must be (min, max) with 1 <= min <= max; got {episode_length}.")
        try:
            self.reward_weights = RewardWeights(**(reward_weights or {}))
        except TypeError:
            raise TripConfigError(f"reward_weights keys must be among {[f.name for f in fields(RewardWeights)]}; "
                                  f"got {sorted(reward_weights or {})}.") from None

        self.modalities = list(preprocessing)
        self.raw = raw
        self.features = [None if m is None else mod.transform(torch.from_numpy(m)).to(self.device)
                         for mod, m in zip(self.modalities, raw, strict=True)]
        self.dim, self.view_size = int(dim), int(view_size)
        self.max_cells, self.min_cells = max_cells, min_cells
        self.dt, self.force, self.friction = float(dt), float(force), float(friction)
        self.max_velocity, self.bounds = float(max_velocity), bounds
        # default: positions of norm ~1, the scale of the modality distances (mean pairwise distance 1)
        self.init_scale = float(init_scale) if init_scale is not None else 1.0 / math.sqrt(self.dim)
        self.episode_length = (lo, hi)
        self.n_inputs = sum(self.features[k].shape[1] for k in self.input_modalities)
        self.state_size = 2 * self.dim + self.n_inputs
        self.view_mode: View = view
        self.n_neighbours, self.n_random = int(n_neighbours), int(n_random)
        if view == "all":
            self.n_view = self.max_cells
        elif view == "neighbours":
            self.n_view = min(self.max_cells - 1, self.n_neighbours + self.n_random)
        else:
            self.n_view = min(self.max_cells, self.view_size)
        self._knn_cache: tuple[np.ndarray, torch.Tensor] | None = None
        self._pin_cache: tuple[list, torch.Tensor | None] | None = None

        self.possible_agents = [f"cell_{i}" for i in range(self.max_cells)]
        self.agents: list[str] = []
        self._ended: str | None = "has not started (step() before reset())"
        self._observation_space = spaces.Dict({
            "self": spaces.Box(-np.inf, np.inf, (self.state_size,), np.float32),
            "others": spaces.Box(-np.inf, np.inf, (self.n_view, self.state_size), np.float32),
            "n_others": spaces.Discrete(self.n_view + 1),
            "self_slot": spaces.Discrete(self.n_view + 1),
        })
        self._action_space = spaces.Box(-1.0, 1.0, (self.dim,), np.float32)
        self.np_random, _ = seeding.np_random(None)
        self._torch_gen = torch.Generator()

    def _flat_space(self) -> spaces.Box:
        """The ``obs_format="flat"`` space: self (S), others (K S), n_others, self_slot, with finite bounds where known."""
        pos = np.inf if self.bounds is None else float(self.bounds)
        feats = [self.features[k] for k in self.input_modalities]
        f_lo = torch.cat([f.min(0).values for f in feats]).cpu().numpy() if feats else np.zeros(0)
        f_hi = torch.cat([f.max(0).values for f in feats]).cpu().numpy() if feats else np.zeros(0)
        row_lo = np.concatenate([np.full(self.dim, -pos), np.full(self.dim, -self.max_velocity), np.minimum(f_lo, 0.0)])
        row_hi = np.concatenate([np.full(self.dim, pos), np.full(self.dim, self.max_velocity), np.maximum(f_hi, 0.0)])
        k = self.n_view
        low = np.concatenate([row_lo, np.tile(row_lo, k), [0.0, 0.0]]).astype(np.float32)
        high = np.concatenate([row_hi, np.tile(row_hi, k), [k, k]]).astype(np.float32)
        return spaces.Box(low, high, dtype=np.float32)

    # ------------------------------------------------------------------------------------------- spaces
    def observation_space(self, agent: str) -> spaces.Dict:
        """The one observation space shared by every cell (see the class docstring)."""
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Box:
        """The one action space shared by every cell: a force in ``[-1, 1]^dim``."""
        return self._action_space

    # --------------------------------------------------------------------------------------------- step
    def step(self, actions: dict[str, np.ndarray]) -> tuple[dict, dict, dict, dict, dict]:
        """PettingZoo step: a dict of actions per live cell -> the five per-cell dicts."""
        self._check_running()
        if set(actions) != set(self.agents):
            missing = sorted(set(self.agents) - set(actions))[:3]
            extra = sorted(set(actions) - set(self.agents))[:3]
            raise TripConfigError(f"actions must name every live cell exactly once; missing {missing}, "
                                  f"unknown {extra}. Pass {{agent: action for agent in env.agents}}.")
        batch = np.stack([actions[a] for a in self.agents]).astype(np.float32, copy=False)
        with torch_threads(self.num_threads):
            obs, rewards, terminated, truncated = self.step_batch(torch.from_numpy(batch))
        agents = self.agents
        out_obs = self._obs_dict(obs)
        reward_dict = dict(zip(agents, rewards.tolist(), strict=True))  # .tolist() copies to the host
        term = dict.fromkeys(agents, terminated)
        trunc = dict.fromkeys(agents, truncated)
        infos: dict[str, dict] = {a: {} for a in agents}
        if terminated or truncated:
            self.agents = []
        return out_obs, reward_dict, term, trunc, infos

    def step_batch(self, actions: torch.Tensor) -> tuple[TripObs, torch.Tensor, bool, bool]:
        """Advance all N cells at once.

        Parameters
        ----------
        actions : Tensor of shape (N, dim), float32
            Forces, clipped to ``[-1, 1]``.

        Returns
        -------
        obs : TripObs
        rewards : Tensor of shape (N,), float32
        terminated, truncated : bool
            Episode end for every cell (cells end together).
        """
        if not hasattr(self, "positions"):  # the batched API may run past the horizon (steady states), not before reset
            raise ResetNeededError("step_batch() before reset(): call env.reset() or env.reset_batch() first.")
        n = len(self.positions)
        actions = torch.as_tensor(actions, dtype=torch.float32, device=self.device)
        if actions.shape != (n, self.dim):
            raise TripConfigError(f"actions must have shape (n_cells, dim) = ({n}, {self.dim}); "
                                  f"got {tuple(actions.shape)}.")
        if not torch.isfinite(actions).all():
            raise TripConfigError("actions contain NaN or inf; the policy produced non-finite forces.")
        a = actions.clamp(-1.0, 1.0)
        w = self.reward_weights
        x_before = self.positions
        v = (self.velocities + self.dt * self.force * a).clamp(-self.max_velocity, self.max_velocity)
        v = v * (1.0 - self.friction)
        x = x_before + self.dt * v
        if self.bounds is not None:
            clipped = x.abs() > self.bounds
            x = x.clamp(-self.bounds, self.bounds)
            v = v.masked_fill(clipped, 0.0)
        self.positions, self.velocities = x, v
        self.steps += 1

        if not self._view_fixed:
            self._draw_view()
            phi_dist_before = self._distance_potential(x_before)
        elif self.resample_random and self.view.ndim == 2 and self.view.shape[1] > self._knn.shape[1]:
            self._redraw_random()
            phi_dist_before = self._distance_potential(x_before)
        else:
            phi_dist_before = self._phi_dist
        self._phi_dist = self._distance_potential(x)
        phi_pin_before, self._phi_pin = self._phi_pin, self._pinning_potential(x)
        phi_before = w.distance * phi_dist_before + w.pinning * phi_pin_before - w.origin * x_before.norm(dim=1)
        phi_after = w.distance * self._phi_dist + w.pinning * self._phi_pin - w.origin * x.norm(dim=1)
        rewards = phi_after - phi_before - w.velocity * v.pow(2).sum(1) - w.action * a.pow(2).sum(1)
        truncated = self.steps >= self.horizon
        if truncated:
            self._ended = f"was truncated at its horizon of {self.horizon} steps"
        return self._obs(), rewards, False, bool(truncated)

    def _check_running(self) -> None:
        """PettingZoo's convention (and gymnasium's): no step before reset or after the episode ended."""
        if self._ended is not None:
            raise ResetNeededError(f"the episode {self._ended}; call env.reset() before stepping again.")

    # -------------------------------------------------------------------------------------------- reset
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """PettingZoo reset; ``options`` may hold ``n_cells`` (int) or ``cells`` (data row indices)."""
        with torch_threads(self.num_threads):
            obs = self.reset_batch(seed=seed, options=options)
        return self._obs_dict(obs), {a: {} for a in self.agents}

    def render(self) -> np.ndarray | None:
        """``render_mode="rgb_array"``: the cells in the first two environment dimensions, coloured by label."""
        if self.render_mode is None:
            return None
        if not hasattr(self, "positions"):
            raise TripConfigError("call reset() before render().")
        if self._renderer is None:
            self._renderer = TripFrameRenderer(self.labels, self.label_name)
        return self._renderer.frame(self.positions.cpu().numpy(), self.cell_index,
                                    f"step {self.steps}: {len(self.positions)} cells")

    def state(self) -> np.ndarray:
        """The global state (``state_space``): every current cell's row (position, velocity, inputs), zero-padded."""
        if not hasattr(self, "positions"):
            raise TripConfigError("call reset() before state().")
        out = np.zeros((self.max_cells, self.state_size), np.float32)
        rows = self._obs().states.cpu().numpy()
        out[: len(rows)] = rows
        return out

    def reset_batch(self, seed: int | None = None, options: dict | None = None) -> TripObs:
        """Start an episode and return the batched observation (see :meth:`reset`)."""
        if seed is not None:
            self.np_random, _ = seeding.np_random(seed)
        self._torch_gen.manual_seed(int(self.np_random.integers(2**62)))
        options = options or {}
        drawn = options.get("cells") is None
        if not drawn:
            cells = np.asarray(options["cells"], dtype=np.int64)
            if cells.ndim != 1 or not 2 <= len(cells) <= self.max_cells or cells.min() < 0 \
                    or cells.max() >= self.n_total or len(np.unique(cells)) != len(cells):
                raise TripConfigError(f"options['cells'] must be 2..{self.max_cells} distinct row indices "
                                      f"in [0, {self.n_total}); got {len(cells)} indices.")
        else:
            n = options.get("n_cells")
            n = int(self.np_random.integers(self.min_cells, self.max_cells + 1)) if n is None else int(n)
            if not 2 <= n <= self.max_cells:
                raise TripConfigError(f"options['n_cells'] must be in [2, {self.max_cells}]; got {n}.")
            if self.cell_pool is None:
                cells = np.sort(self.np_random.choice(self.n_total, n, replace=False))
            else:  # a data partition (e.g. one Ray runner's): its rows only
                cells = self.cell_pool[np.sort(self.np_random.choice(len(self.cell_pool), n, replace=False))]
        if self.view_mode == "neighbours":
            cells, self._knn = self._neighbour_graph(cells, reorder=drawn)
        self.cell_index = cells
        n = len(cells)
        idx = torch.from_numpy(cells).to(self.device)
        self.inputs = torch.cat([self.features[k][idx] for k in self.input_modalities], 1) \
            if self.input_modalities else torch.zeros(n, 0, device=self.device)
        self.targets = [(k, self.modalities[k], self.features[k][idx]) for k in self.target_modalities
                        if self.features[k] is not None]
        self.positions = self.init_scale * torch.randn(n, self.dim, generator=self._torch_gen).to(self.device)
        self.velocities = torch.zeros(n, self.dim, device=self.device)
        self.steps = 0
        self.horizon = int(self.np_random.integers(self.episode_length[0], self.episode_length[1] + 1))
        self._view_fixed = self.view_mode != "sampled" or n <= self.view_size
        self._dense_dist = None
        if not self._view_fixed and n <= DENSE_DISTANCE_MAX_CELLS and self.targets:
            self._dense_dist = sum(_distances(y, y) for _, _, y in self.targets)
        if self.view_mode == "neighbours":
            self.view = self._neighbour_view()
            self._prepare_view()
        elif self._view_fixed:
            self.view = torch.arange(n, device=self.device)
            self._prepare_view()
        else:
            self._draw_view()
        self._phi_dist = self._distance_potential(self.positions)
        self._phi_pin = self._pinning_potential(self.positions)
        self.agents = self.possible_agents[:n]
        self._ended = None
        return self._obs()

    # ------------------------------------------------------------------------------ perturbation hooks
    def set_inputs(self, inputs: torch.Tensor) -> None:
        """Replace the current cells' processed input features (N, F_in), e.g. for in-silico clamping.

        The neighbour view's graph stays that of the cells' own (unclamped) modalities for the episode.
        """
        if inputs.shape != self.inputs.shape:
            raise TripConfigError(f"inputs must have shape {tuple(self.inputs.shape)}; got {tuple(inputs.shape)}.")
        self.inputs = inputs.to(self.device, torch.float32)

    def input_slices(self) -> dict[int, slice]:
        """Column range of each input modality inside the processed input features."""
        out, start = {}, 0
        for k in self.input_modalities:
            width = self.features[k].shape[1]
            out[k] = slice(start, start + width)
            start += width
        return out

    def for_cells(self, modalities: Sequence[Any], **overrides: Any) -> TripParallelEnv:
        """A world over other cells with this world's fitted preprocessing and settings.

        Target modalities may be None (unknown, e.g. held-out cells to impute); their reward terms are dropped.
        """
        kwargs = dict(
            kinds=[m.kind for m in self.modalities], names=[m.name for m in self.modalities],
            input_modalities=self.input_modalities, target_modalities=self.target_modalities, dim=self.dim,
            view=self.view_mode, view_size=self.view_size, n_neighbours=self.n_neighbours,
            n_random=self.n_random, resample_random=self.resample_random, distance_pairs=self.distance_pairs, dt=self.dt, force=self.force, friction=self.friction,
            max_velocity=self.max_velocity, bounds=self.bounds, init_scale=self.init_scale,
            reward_weights=asdict(self.reward_weights), episode_length=self.episode_length,
            preprocessing=self.modalities, device=self.device, obs_format=self.obs_format, num_threads=self.num_threads)
        kwargs.update(overrides)
        return TripParallelEnv(modalities, **kwargs)

    def to(self, device: str | torch.device) -> TripParallelEnv:
        """Move the world (features and the current episode's state) to ``device``; returns ``self``."""
        device = resolve_device(device)
        if device == self.device:
            return self
        self.device = device
        self.features = [None if f is None else f.to(device) for f in self.features]
        for name in ("inputs", "positions", "velocities", "view", "_n_others", "_dist_sum", "_dist_sq",
                     "_dense_dist", "_phi_dist", "_phi_pin", "_pair_dist", "_pair_dist_sq", "_pair_sq", "_pair_w", "_knn"):
            if getattr(self, name, None) is not None:
                setattr(self, name, getattr(self, name).to(device))
        if getattr(self, "targets", None) is not None:
            self.targets = [(k, mod, y.to(device)) for k, mod, y in self.targets]
        if self._knn_cache is not None:
            self._knn_cache = (self._knn_cache[0], self._knn_cache[1].to(device))
        self._pin_cache = None
        return self

    def close(self) -> None:
        """Release the render canvas."""
        self._renderer = None

    # ---------------------------------------------------------------------------------------- internals
    def _draw_view(self) -> None:
        n = len(self.positions)
        self.view = torch.randperm(n, generator=self._torch_gen)[: self.view_size].to(self.device)
        self._prepare_view()

    def _neighbour_graph(self, cells: np.ndarray, *, reorder: bool) -> tuple[np.ndarray, torch.Tensor]:
        """The episode's cells and their (N, k) nearest cells in modality space.

        Drawn cells (not given in ``options``) are put in reverse Cuthill-McKee order of their kNN graph
        (scipy.sparse.csgraph): neighbours then sit close in memory, so the per-step gathers hit the cache
        (measured 2.2x faster gather + attention at 100,000 cells). The graph is reused while the episode's
        cells are the same as the last search's.
        """
        k = min(self.n_neighbours, len(cells) - 1)
        cache = self._knn_cache
        if cache is not None and cache[1].shape[1] == k:
            if (reorder and np.array_equal(np.sort(cache[0]), cells)) or np.array_equal(cache[0], cells):
                return cache[0], cache[1]
        idx = torch.from_numpy(cells).to(self.device)
        if self.input_modalities:
            space = torch.cat([self.features[m][idx] for m in self.input_modalities], 1)
        else:
            space = torch.cat([self.features[m][idx] for m in self.target_modalities], 1)
        nbr = knn_graph(space, k)
        if reorder:
            from scipy.sparse import csr_matrix
            from scipy.sparse.csgraph import reverse_cuthill_mckee

            n = len(cells)
            flat = nbr.cpu().numpy()
            graph = csr_matrix((np.ones(flat.size, np.int8), flat.ravel(), np.arange(0, flat.size + 1, k)), shape=(n, n))
            order = reverse_cuthill_mckee(graph, symmetric_mode=False).astype(np.int64)
            rank = np.empty(n, np.int64)
            rank[order] = np.arange(n)
            cells = cells[order]
            nbr = torch.from_numpy(rank[flat[order]]).to(self.device)
        self._knn_cache = (cells.copy(), nbr)
        return cells, nbr

    def _neighbour_view(self) -> torch.Tensor:
        """(N, k) cells seen by each cell: its nearest cells in modality space, then random other cells."""
        nbr = self._knn
        n = len(nbr)
        r = min(self.n_random, n - 1 - nbr.shape[1])
        if r == 0:
            return nbr
        # i + U{1, .., N-1} mod N: a random other cell, never i itself (it may repeat a neighbour)
        offset = torch.randint(1, n, (n, r), generator=self._torch_gen).to(self.device)
        rand = (torch.arange(n, device=self.device)[:, None] + offset) % n
        return torch.cat([nbr, rand], 1)

    def _redraw_random(self) -> None:
        """New random cells in the neighbour view's last ``n_random`` columns, and their modality distances."""
        kn = self._knn.shape[1]
        rand = self._neighbour_view()[:, kn:]
        dist, sq = self._pair_terms(rand)
        weight = self._random_pair_weights(rand)
        self.view = torch.cat([self.view[:, :kn], rand], 1)
        if weight is not None:
            dist, sq = dist.mul_(weight), sq.mul_(weight)
            self._pair_w = torch.cat([self._pair_w[:, :kn], weight], 1)
        self._pair_dist = torch.cat([self._pair_dist[:, :kn], dist], 1)
        self._pair_sq = torch.cat([self._pair_sq[:, :kn], sq], 1)
        self._pair_dist_sq = self._pair_sq.sum(1)

    def _pair_terms(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over the target modalities of D_ij and of D_ij^2 for the (N, c) pairs (i, pairs[i, j])."""
        dist = torch.zeros(pairs.shape, device=self.device)
        sq = torch.zeros(pairs.shape, device=self.device)
        for _, _, y in self.targets:
            d = _pair_distances(y, pairs)
            dist += d
            sq += d.pow_(2)
        return dist, sq

    def _random_pair_weights(self, rand: torch.Tensor) -> torch.Tensor | None:
        """Weights of the random pairs in the all-pairs estimate (``distance_pairs="all"``), else None.

        Random cells are uniform over the N - 1 others, so weighting each by (N - 1) / r and a repeat of one
        of the cell's own neighbours (counted exactly already) by 0 makes the weighted sum over the random
        pairs an unbiased estimate of the sum over every pair that is not a neighbour pair (stratified
        sampling: the near pairs exactly, the far ones sampled).
        """
        if self.distance_pairs != "all" or rand.shape[1] == 0:
            return None
        n, r = len(rand), rand.shape[1]
        nbr = self._knn
        weight = torch.empty(rand.shape, device=self.device)
        rows = max(1, PAIR_CHUNK_ELEMENTS // max(1, r * nbr.shape[1]))
        for start in range(0, n, rows):  # (chunk, r, k) comparisons: bounded memory
            stop = min(n, start + rows)
            hit = (rand[start:stop, :, None] == nbr[start:stop, None, :]).any(2)
            weight[start:stop] = (~hit).float() * ((n - 1) / r)
        return weight

    def _prepare_view(self) -> None:
        """Per-view constants of the distance potential: sums of modality distances and of their squares.

        Up to ``DENSE_DISTANCE_MAX_CELLS`` cells, the (N, N) sum of modality distances is computed once
        per episode and a new view only gathers its columns. The neighbour view keeps the (N, k) sums
        over its own pairs (computed in chunks of cells, O(N k F)).
        """
        n, view = len(self.positions), self.view
        if view.ndim == 2:
            self._pair_dist, sq = self._pair_terms(view)  # sums over targets of D and of D^2, per pair
            kn = self._knn.shape[1]
            weight = self._random_pair_weights(view[:, kn:])
            self._pair_w = None
            if weight is None:
                self._n_others = torch.full((n,), float(view.shape[1]), device=self.device)
            else:
                # the all-pairs estimate: each pair's squared mismatch weighted, neighbour pairs 1 and random
                # pairs (N - 1) / r, over N - 1. (Sampling only the cross term of the expanded square, with the
                # squared terms in closed form, measured a larger variance: near a good layout the mismatch is
                # small while the cross term is not.)
                self._pair_w = torch.cat([torch.ones(n, kn, device=self.device), weight], 1)
                self._pair_dist *= self._pair_w
                sq *= self._pair_w
                self._n_others = torch.full((n,), float(n - 1), device=self.device)
            self._pair_dist_sq = sq.sum(1)
            self._pair_sq = sq if self.resample_random else None  # kept only to replace the random columns
            return
        self._n_others = len(view) - torch.zeros(n, device=self.device).index_fill_(0, view, 1.0)
        if self._dense_dist is not None:
            self._dist_sum = self._dense_dist[view]  # (K, N): rows of a symmetric matrix, a contiguous gather
        else:
            self._dist_sum = sum((_distances(y[view], y) for _, _, y in self.targets), torch.zeros(len(view), n, device=self.device))
        # sum_j |y_i - y_j|^2 in closed form, per modality
        self._dist_sq = sum((_sum_sq_distances(y, y[view]) for _, _, y in self.targets), torch.zeros(n, device=self.device))

    def _distance_potential(self, x: torch.Tensor) -> torch.Tensor:
        """Minus the mean squared mismatch between env and modality distances to the cells in view, (N,).

        sum_k sum_j (e_ij - D^k_ij)^2 = M sum_j e_ij^2 - 2 sum_j e_ij sum_k D^k_ij + sum_k sum_j (D^k_ij)^2;
        the first and last sums have closed forms, so one pass over the (N, K) env distances is needed.
        A cell's distance to itself is 0 in every space, so it adds nothing.
        """
        if not self.targets:
            return torch.zeros(len(x), device=x.device)
        if self.view.ndim == 2:  # neighbour pairs: one pass over the (N, k) env distances
            e = _pair_distances(x, self.view)
            e_sq = e.pow(2) if self._pair_w is None else e.pow(2).mul_(self._pair_w)
            err = len(self.targets) * e_sq.sum(1) - 2 * (e * self._pair_dist).sum(1) + self._pair_dist_sq
            return -err.clamp_min(0.0) / self._n_others
        xv = x[self.view]
        cross = _distances(xv, x).mul_(self._dist_sum).sum(0)  # (K, N) layout
        err = len(self.targets) * _sum_sq_distances(x, xv) - 2 * cross + self._dist_sq
        return -err.clamp_min(0.0) / self._n_others.clamp_min(1.0)

    def _pinning_potential(self, x: torch.Tensor) -> torch.Tensor:
        """Minus the squared error of the best decoder from positions to each target modality, (N,).

        Least squares decouples over output columns, so the non-spatial targets are decoded together: their
        columns, centred once per episode (targets do not move), share one Gram matrix and one solve.
        """
        cache = self._pin_cache
        if cache is None or cache[0] is not self.targets:
            plain = [y for _, mod, y in self.targets if mod.kind != "spatial"]
            y = torch.cat(plain, 1) if plain else None
            cache = self._pin_cache = (self.targets, None if y is None else y - y.mean(0))
        err = torch.zeros(len(x), device=x.device)
        if cache[1] is not None:
            xc = x - x.mean(0)
            gram = xc.T @ xc + 1e-4 * torch.eye(x.shape[1], device=x.device)
            err += (xc @ torch.linalg.solve(gram, xc.T @ cache[1])).sub_(cache[1]).pow_(2).sum(1)
        for _, mod, y in self.targets:
            if mod.kind == "spatial":
                err += (fit_decoder(x, y, spatial=True) - y).pow(2).sum(1)
        return -err

    def _obs(self) -> TripObs:
        return TripObs(torch.cat([self.positions, self.velocities, self.inputs], 1), self.view)

    def _obs_dict(self, obs: TripObs) -> dict[str, dict[str, Any]]:
        states = obs.states.cpu().numpy()
        view = obs.view.cpu().numpy()
        if view.ndim == 2:  # neighbour view: every cell its own rows (never itself)
            k = view.shape[1]
            others = np.zeros((len(states), self.n_view, self.state_size), np.float32)
            others[:, :k] = states[view]
            return {a: {"self": row, "others": o, "n_others": k, "self_slot": self.n_view}
                    for a, row, o in zip(self.agents, states, others, strict=True)}
        others = np.zeros((self.n_view, self.state_size), np.float32)
        others[: len(view)] = states[view]
        slot = np.full(len(states), self.n_view)
        slot[view] = np.arange(len(view))
        n_others = len(view)
        if self.obs_format == "flat":
            tail = others.ravel()
            return {a: np.concatenate([row, tail, [n_others, s]]).astype(np.float32)
                    for a, row, s in zip(self.agents, states, slot.tolist(), strict=True)}
        return {a: {"self": row, "others": others, "n_others": n_others, "self_slot": s}
                for a, row, s in zip(self.agents, states, slot.tolist(), strict=True)}


def fit_decoder(x: torch.Tensor, y: torch.Tensor, *, spatial: bool) -> torch.Tensor:
    """Predictions of the best decoder from positions ``x`` (N, d) to ``y`` (N, F), fitted on these cells.

    ``spatial``: rotation + translation only (orthogonal Procrustes, Schoenemann 1966; needs F <= d);
    otherwise ordinary least squares with an intercept.
    """
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    if spatial:
        u, _, vh = torch.linalg.svd(xc.T @ yc, full_matrices=False)
        return xc @ (u @ vh) + ym
    gram = xc.T @ xc + 1e-4 * torch.eye(x.shape[1], device=x.device)
    return xc @ torch.linalg.solve(gram, xc.T @ yc) + ym


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` ("auto": CUDA when available, else CPU); a clear error if unusable."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError):
        raise TripConfigError(f"device {device!r} is not a torch device; expected 'cpu', 'cuda', 'cuda:<index>' "
                              "or 'auto'.") from None
    if out.type == "cuda":
        if not torch.cuda.is_available():
            raise TripConfigError(f"device {str(device)!r} requested but torch.cuda.is_available() is False; "
                                  "use device='cpu' (or install a CUDA build of torch on a GPU machine).")
        if out.index is not None and out.index >= torch.cuda.device_count():
            raise TripConfigError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA "
                                  f"device(s) exist.")
        if out.index is None:
            out = torch.device("cuda", torch.cuda.current_device())
    elif out.type != "cpu":
        raise TripConfigError(f"device {str(device)!r} is not supported by the CellTRIP world; use 'cpu' or 'cuda'.")
    return out


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (N, K) between rows, computed in place after one matmul (memory-bound part fused)."""
    d = a @ b.T
    d.mul_(-2.0).add_(a.pow(2).sum(1)[:, None]).add_(b.pow(2).sum(1)[None, :])
    return d.clamp_min_(0.0).sqrt_()


def _pair_distances(y: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """|y_i - y_{pairs[i, j]}| for every cell i and column j, (N, k), in chunks of cells (bounded memory)."""
    n, k = pairs.shape
    out = torch.empty(n, k, device=y.device, dtype=y.dtype)

    def chunk(start: int, stop: int) -> None:
        diff = gather_rows(y, pairs[start:stop].reshape(-1)).view(stop - start, k, -1).sub_(y[start:stop, None, :])
        torch.linalg.vector_norm(diff, dim=2, out=out[start:stop])

    for_chunks(n, max(1, PAIR_CHUNK_ELEMENTS // max(1, k * y.shape[1])), chunk)
    return out


def _sum_sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_j |a_i - b_j|^2 for every row i, (N,), in closed form (no (N, K) matrix)."""
    sq = a.pow(2).sum(1)
    return len(b) * sq - 2 * a @ b.sum(0) + b.pow(2).sum()


def _indices(value: Sequence[int] | None, n_mod: int, name: str) -> list[int]:
    out = list(range(n_mod)) if value is None else [int(k) for k in value]
    bad = [k for k in out if not 0 <= k < n_mod]
    if bad or len(set(out)) != len(out):
        raise TripConfigError(f"{name} must be distinct indices in [0, {n_mod}); got {out}.")
    return out


def _as_array(m: Any, k: int) -> np.ndarray:
    x = getattr(m, "X", m)  # AnnData -> its X
    if hasattr(x, "toarray"):
        x = x.toarray()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DataSpecError(f"modality {k} must be 2-D (cells x features); got shape {x.shape}.")
    return x
