"""The manager API of a trained CellTRIP model: simulate, impute, perturb, prioritise, recover stages.

After Sun et al., CellTRIP (bioRxiv 2025, doi:10.1101/2025.11.21.689815): a trained policy is run to a
steady state; decoders from positions impute modalities; clamping features of the cells' inputs and
re-simulating shows how cells move (in-silico perturbation); developmental stages are matched by optimal
transport between stage pseudocells and the intermediate states read off a simulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cellgym.envs.trip import TripConfigError, TripObs

if TYPE_CHECKING:
    from cellgym.envs.trip import TripParallelEnv

    from ._agent import CellTripAgent

Clamping = Literal["pre", "post", "action"]


@dataclass
class PerturbationResult:
    """Positions (N, d) before, after an unperturbed and after a perturbed continuation; displacement (N,)."""

    before: np.ndarray
    control: np.ndarray
    perturbed: np.ndarray
    displacement: np.ndarray


class TripManager:
    """Simulate a trained CellTRIP policy on a world's cells and query the result.

    Parameters
    ----------
    agent
        A :class:`~cellgym.agents.celltrip.CellTripAgent` with a network.
    env
        The world; an episode is started over ``cells`` (data rows; all of ``max_cells`` random rows if None).
    seed
        Seeds the starting positions (and the view samples).
    """

    def __init__(self, agent: CellTripAgent, env: TripParallelEnv, *, cells: np.ndarray | None = None,
                 seed: int | None = None) -> None:
        self.agent, self.env = agent, env.to(agent.device)
        options = {"cells": cells} if cells is not None else {"n_cells": env.max_cells}
        self.obs: TripObs = env.reset_batch(seed=seed, options=options)
        self._base_inputs = env.inputs.clone()
        self._perturbations: list[tuple[int, torch.Tensor, torch.Tensor, Clamping]] = []
        self._action_delta: torch.Tensor | None = None  # input change applied through the action's gradient

    # ------------------------------------------------------------------------------------- simulation
    @property
    def positions(self) -> np.ndarray:
        """Current positions (N, d)."""
        return self.env.positions.cpu().numpy().copy()

    def _step(self) -> tuple[torch.Tensor, bool]:
        model = self.agent.model
        with torch.no_grad():
            action = model.act(self.obs, deterministic=True)[0]
        if self._action_delta is not None:
            # 'action' clamping: first-order change of the force, J_action(inputs) @ delta (a JVP).
            view = self.obs.view
            tangent = torch.zeros_like(self.obs.states)
            tangent[:, 2 * self.env.dim:] = self._action_delta
            # forward-mode AD runs through SDPA's math kernel (the fused CPU kernel has no forward AD)
            with sdpa_kernel(SDPBackend.MATH):
                _, jvp = torch.func.jvp(lambda s: model.policy(s, view)[0], (self.obs.states,), (tangent,))
            action = action + jvp.detach()
        self.obs, reward, _, truncated = self.env.step_batch(action)
        return reward, truncated

    def simulate(self, time: int, record_every: int = 0) -> np.ndarray:
        """Run the deterministic policy for ``time`` steps (episode horizons are ignored).

        Returns
        -------
        array of shape (R, N, d)
            Positions at step 0 and every ``record_every`` steps (R = 0 when ``record_every`` is 0).
        """
        record = [self.positions] if record_every else []
        for t in range(1, int(time) + 1):
            self._step()
            if record_every and t % record_every == 0:
                record.append(self.positions)
        return np.stack(record) if record else np.zeros((0, *self.env.positions.shape), np.float32)

    def run_episode(self, record_every: int = 5) -> dict[str, object]:
        """Run until the episode's horizon; returns the trajectory and mean reward and speed per cell."""
        record, rewards, speeds = [self.positions], [], []
        truncated, t = False, 0
        while not truncated:
            reward, truncated = self._step()
            rewards.append(float(reward.mean()))
            speeds.append(float(self.env.velocities.norm(dim=1).mean()))
            t += 1
            if t % record_every == 0 or truncated:
                record.append(self.positions)
        return {"trajectory": np.stack(record), "steps": t, "reward_per_cell": float(np.mean(rewards)),
                "velocity": float(np.mean(speeds))}

    def save_state(self) -> dict[str, torch.Tensor]:
        """A copy of the world's state (positions, velocities, inputs, step, view and random state)."""
        env = self.env
        return {"positions": env.positions.clone(), "velocities": env.velocities.clone(),
                "inputs": env.inputs.clone(), "steps": torch.tensor(env.steps), "view": env.view.clone(),
                "rng": env._torch_gen.get_state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`save_state` (same cells)."""
        env = self.env
        if state["positions"].shape != env.positions.shape:
            raise TripConfigError(f"state has {tuple(state['positions'].shape)} positions; the world has "
                                  f"{tuple(env.positions.shape)}. Load states of the same cells.")
        env.positions, env.velocities = state["positions"].clone(), state["velocities"].clone()
        env.inputs, env.steps = state["inputs"].clone(), int(state["steps"])
        env._torch_gen.set_state(state["rng"])
        env.view = state["view"].clone()
        env._prepare_view()
        env._phi_dist = env._distance_potential(env.positions)
        env._phi_pin = env._pinning_potential(env.positions)
        self.obs = env._obs()

    # ------------------------------------------------------------------------------------- imputation
    def fit_decoders(self, known: np.ndarray | None = None, *, targets: dict[int, np.ndarray] | None = None,
                     seed: int = 0) -> dict[int, float]:
        """Fit a decoder from current (steady-state) positions to each target modality on ``known`` cells.

        The space is only defined up to rotation and translation per simulation, so decoders are fitted on
        the cells of this simulation whose targets are known and applied to the others (transductive).

        Parameters
        ----------
        known : bool array of shape (N,), optional
            Cells whose targets are used (all when None).
        targets : dict, optional
            Modality index -> raw features (n_known, F_raw) of the known cells, for worlds built without
            that modality (``env.for_cells([..., None])``); else the world's own features are used.

        Returns
        -------
        dict
            Target modality index -> mean squared error on the held-out fifth of the known cells used for
            early stopping (processed units).
        """
        from ._agent import PositionDecoder

        x, device = self.env.positions, self.env.device
        known_t = torch.ones(len(x), dtype=torch.bool, device=device) if known is None \
            else torch.as_tensor(known, dtype=torch.bool, device=device)
        gen = torch.Generator().manual_seed(seed)
        errors = {}
        pairs = [(k, y[known_t]) for k, _, y in self.env.targets]
        for k, raw in (targets or {}).items():
            pairs = [p for p in pairs if p[0] != k]
            pairs.append((k, self.env.modalities[k].transform(torch.as_tensor(np.asarray(raw, np.float32))).to(device)))
        for k, ys in pairs:
            decoder = PositionDecoder(x.shape[1], ys.shape[1], generator=gen).to(device)
            opt = torch.optim.Adam(decoder.parameters(), lr=3e-3, weight_decay=1e-4)
            xs = x[known_t]
            if len(xs) != len(ys):
                raise TripConfigError(f"targets for modality {k} have {len(ys)} rows; {len(xs)} cells are known.")
            decoder.mean.copy_(xs.mean(0))
            decoder.std.copy_(xs.std(0).clamp_min(1e-6))
            # early stopping on a random 20% of the known cells: the decoder sees few cells in many dimensions
            order = torch.randperm(len(xs), generator=gen).to(device)
            val, fit = order[: max(1, len(xs) // 5)], order[max(1, len(xs) // 5):]
            best, best_state = float("inf"), None
            for _ in range(self.agent.config.decoder_steps):
                loss = (decoder(xs[fit]) - ys[fit]).pow(2).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    val_loss = float((decoder(xs[val]) - ys[val]).pow(2).sum(1).mean())
                if val_loss < best:
                    best, best_state = val_loss, {n: t.clone() for n, t in decoder.state_dict().items()}
            decoder.load_state_dict(best_state)
            loss = torch.tensor(best)
            self.agent.decoders[k] = decoder
            errors[k] = float(loss.detach())
        return errors

    def impute(self, modality: int) -> np.ndarray:
        """Decoded target modality (N, F_raw) in normalised feature units (log1p expression, coordinates)."""
        if modality not in self.agent.decoders:
            raise TripConfigError(f"no decoder for modality {modality}; call fit_decoders() after simulate().")
        with torch.no_grad():
            y = self.agent.decoders[modality](self.env.positions)
        return self.env.modalities[modality].inverse(y.cpu()).numpy()

    def get_state(self, impute: bool = True) -> dict[str, np.ndarray]:
        """Positions and each modality in normalised feature units; decoded from positions when ``impute``."""
        env = self.env
        out: dict[str, np.ndarray] = {"positions": self.positions}
        idx = torch.from_numpy(env.cell_index)
        for k, mod in enumerate(env.modalities):
            if impute and k in self.agent.decoders:
                out[mod.name] = self.impute(k)
            elif env.raw[k] is not None:
                out[mod.name] = mod.normalise(torch.from_numpy(env.raw[k])[idx]).numpy()
        return out

    # ----------------------------------------------------------------------------------- perturbation
    def add_perturbation(self, features: Sequence[int], targets: float | Sequence[float], modality: int = 0,
                         clamping: Clamping = "pre") -> None:
        """Clamp ``features`` of input ``modality`` to ``targets`` in every cell.

        ``pre``: raw values (e.g. counts) before preprocessing; ``post``: normalised values (log1p
        expression) before standardisation and PCA; ``action``: like ``post`` but the cells' inputs stay
        unchanged and the force changes by the policy's first-order response (a Jacobian-vector product).
        """
        env = self.env
        if modality not in env.input_modalities:
            raise TripConfigError(f"modality {modality} is not an input of this world "
                                  f"(inputs: {env.input_modalities}); only inputs can be clamped.")
        if clamping not in ("pre", "post", "action"):
            raise TripConfigError(f"clamping must be 'pre', 'post' or 'action'; got {clamping!r}.")
        feats = torch.as_tensor(np.atleast_1d(features), dtype=torch.long)
        n_raw = env.modalities[modality].n_raw
        if feats.numel() == 0 or feats.min() < 0 or feats.max() >= n_raw:
            raise TripConfigError(f"features must be indices in [0, {n_raw}) of modality {modality}; "
                                  f"got {feats.tolist()}.")
        values = torch.as_tensor(np.broadcast_to(np.asarray(targets, dtype=np.float32), feats.shape).copy())
        self._perturbations.append((modality, feats, values, clamping))
        self._apply()

    def clear_perturbations(self) -> None:
        """Remove every clamp: inputs return to the cells' own features."""
        self._perturbations.clear()
        self._apply()

    def _apply(self) -> None:
        env = self.env
        inputs = self._base_inputs.cpu().clone()  # the fitted preprocessing runs on the CPU
        delta = torch.zeros_like(inputs)
        idx = torch.from_numpy(env.cell_index)
        slices = env.input_slices()
        for k in {p[0] for p in self._perturbations}:
            mod = env.modalities[k]
            raw = torch.from_numpy(env.raw[k])[idx].clone()
            for _, feats, values, _ in (p for p in self._perturbations if p[0] == k and p[3] == "pre"):
                raw[:, feats] = values
            z = mod.normalise(raw)
            for _, feats, values, _ in (p for p in self._perturbations if p[0] == k and p[3] == "post"):
                z[:, feats] = values
            z_action = z.clone()  # 'action' clamps act on top of the observed (pre/post-clamped) features
            for _, feats, values, _ in (p for p in self._perturbations if p[0] == k and p[3] == "action"):
                z_action[:, feats] = values
            inputs[:, slices[k]] = mod.from_normalised(z)
            delta[:, slices[k]] = mod.from_normalised(z_action) - mod.from_normalised(z)
        env.set_inputs(inputs)
        self._action_delta = delta.to(env.device) if delta.abs().sum() > 0 else None
        self.obs = env._obs()

    def simulate_perturbation(self, time: int) -> PerturbationResult:
        """Continue ``time`` steps with and without the current clamps from the same state; compare.

        The manager ends in the perturbed state. ``displacement`` is the per-cell distance between the
        perturbed and the unperturbed continuation.
        """
        start = self.save_state()
        perturbations = list(self._perturbations)
        self.clear_perturbations()
        self.simulate(time)
        control = self.positions
        self.load_state(start)
        self._perturbations = perturbations
        self._apply()
        self.simulate(time)
        perturbed = self.positions
        return PerturbationResult(start["positions"].cpu().numpy(), control, perturbed,
                                  np.linalg.norm(perturbed - control, axis=1))

    def prioritise(self, features: Sequence[int], targets: float | Sequence[float], *, modality: int = 0,
                   clamping: Clamping = "pre", time: int = 50) -> list[tuple[int, float]]:
        """Rank features by the mean cell movement that clamping each one (alone) causes, largest first."""
        start = self.save_state()
        kept = list(self._perturbations)
        values = np.broadcast_to(np.asarray(targets, dtype=np.float32), (len(features),))
        scores = []
        for f, v in zip(features, values, strict=True):
            self.load_state(start)
            self._perturbations = []
            self.add_perturbation([int(f)], float(v), modality, clamping)
            scores.append((int(f), float(self.simulate_perturbation(time).displacement.mean())))
        self.load_state(start)
        self._perturbations = kept
        self._apply()
        return sorted(scores, key=lambda s: -s[1])


# ------------------------------------------------------------------------------------- stage recovery
@dataclass
class StageRecovery:
    """What :func:`recover_stages` returns.

    Attributes
    ----------
    origin, terminal : arrays of shape (k, F)
        Pseudocells (k-means centroids, processed input features) of the first and last stage.
    matching : array of shape (k,)
        Terminal pseudocell matched to each origin pseudocell by optimal transport.
    trajectory : array of shape (R, k, d)
        Positions of the origin pseudocells recorded while they move toward their terminal features.
    states : array of shape (R, k, F)
        Decoded processed input features at each record (the intermediate states).
    """

    origin: np.ndarray
    terminal: np.ndarray
    matching: np.ndarray
    trajectory: np.ndarray
    states: np.ndarray


def recover_stages(agent: CellTripAgent, env: TripParallelEnv, origin: np.ndarray, terminal: np.ndarray, *,
                   n_pseudocells: int = 20, time: int = 100, record_every: int = 10,
                   seed: int = 0) -> StageRecovery:
    """Developmental stage recovery after CellTRIP: simulate pseudocells from an origin to a terminal stage.

    1. k-means (``n_pseudocells``) on each stage's processed input features gives pseudocells;
    2. origin and terminal pseudocells are matched by exact optimal transport (POT's ``ot.emd``, uniform
       weights, squared Euclidean cost), a one-to-one matching when both have k pseudocells;
    3. all 2k pseudocells are simulated to a steady state and a decoder from position to the input
       features is fitted on them;
    4. the origin pseudocells' inputs are set to their matched terminal pseudocells' and the world is
       simulated for ``time`` steps; the decoded recorded positions are the intermediate states.

    Parameters
    ----------
    agent, env
        A trained agent and the world it was trained in (its first input modality is used).
    origin, terminal : arrays of shape (n_cells, F_raw)
        Raw features (as the world's input modality) of cells of the first and the last stage.
    """
    import ot
    from sklearn.cluster import KMeans

    k_mod = env.input_modalities[0]
    mod = env.modalities[k_mod]
    if origin.shape[1] != mod.n_raw or terminal.shape[1] != mod.n_raw:
        raise TripConfigError(f"stages must have the {mod.n_raw} raw features of modality {mod.name!r}; got "
                              f"{origin.shape[1]} and {terminal.shape[1]}.")
    if len(env.input_modalities) != 1:
        raise TripConfigError("stage recovery needs a world with one input modality; got "
                              f"{env.input_modalities}.")
    centroids = []
    for cells in (origin, terminal):
        z = mod.transform(torch.as_tensor(np.asarray(cells, np.float32))).numpy()
        km = KMeans(n_clusters=n_pseudocells, n_init=4, random_state=seed).fit(z)
        centroids.append(km.cluster_centers_.astype(np.float32))
    a = b = np.full(n_pseudocells, 1.0 / n_pseudocells)
    plan = ot.emd(a, b, ot.dist(centroids[0], centroids[1]))
    matching = plan.argmax(1)
    # a world of 2k pseudocells: any 2k rows of raw data, whose inputs are then replaced by the centroids
    rows = np.resize(np.asarray(origin, np.float32), (2 * n_pseudocells, mod.n_raw))
    world = env.for_cells([rows if i == k_mod else None for i in range(len(env.modalities))],
                          target_modalities=[k_mod], max_cells=2 * n_pseudocells)
    manager = TripManager(agent, world, cells=np.arange(2 * n_pseudocells), seed=seed)
    pseudo = torch.from_numpy(np.concatenate(centroids)).to(world.device)
    world.set_inputs(pseudo)
    world.targets = [(k_mod, mod, pseudo)]
    manager._base_inputs = pseudo.clone()
    manager.obs = world._obs()
    manager.simulate(agent.config.steady_state_steps)
    manager.fit_decoders(seed=seed)
    moved = pseudo.clone()
    moved[:n_pseudocells] = pseudo[n_pseudocells:][torch.from_numpy(matching).to(world.device)]
    world.set_inputs(moved)
    manager.obs = world._obs()
    trajectory = manager.simulate(time, record_every=record_every)[:, :n_pseudocells]
    with torch.no_grad():
        states = agent.decoders[k_mod](torch.from_numpy(trajectory).to(world.device)).cpu().numpy()
    return StageRecovery(centroids[0], centroids[1], matching, trajectory, states)
