"""``CellTripAgent``: CellTRIP's attention-PPO policy in the agent zoo (learn, act, save, load, enjoy)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from cellgym.agents.base import Agent
from cellgym.envs.trip import resolve_device
from cellgym.predictors.base import seeded
from cellgym.predictors.base._checkpoint import load_tensors, read_yaml
from cellgym.predictors.base.errors import CheckpointError

from ._ppo import CellTripConfig, EntityAttentionActorCritic, TrainResult, train

if TYPE_CHECKING:
    from cellgym.envs.trip import TripParallelEnv

    from ._manager import TripManager

FORMAT_VERSION = 1


class CellTripAgent(Agent):
    """CellTRIP's entity self-attention actor-critic, trained with PPO (Sun et al., bioRxiv 2025,
    doi:10.1101/2025.11.21.689815).

    Parameters
    ----------
    **hyperparams
        Fields of :class:`~cellgym.agents.celltrip.CellTripConfig` (unknown names raise).

    Notes
    -----
    ``learn(env, total_timesteps)`` counts environment steps; each step moves every cell, so the number
    of agent-steps is ``total_timesteps`` times the cells per episode.

    Device: networks, decoders and rollouts live on ``device`` (default "cpu"; "cuda" for a GPU, "auto"
    for CUDA when available). A world given to ``learn``/``act``/``manager`` is moved there with
    ``env.to(device)``, so the whole step loop stays on one device; ``act`` on the dict API returns numpy.
    """

    name = "celltrip"
    learns = True

    def __init__(self, **hyperparams: Any) -> None:
        known = {f.name for f in fields(CellTripConfig)}
        unknown = sorted(set(hyperparams) - known)
        if unknown:
            import difflib

            hints = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
            raise TypeError(f"unknown CellTRIP hyperparameters {unknown} (closest: {hints}); "
                            f"expected some of {sorted(known)}.")
        self.config = CellTripConfig(**hyperparams)
        self.device = resolve_device(self.config.device)  # a clear TripConfigError (a CellgymError) if unusable
        self.model: EntityAttentionActorCritic | None = None
        self.env_spec: dict[str, Any] = {}
        self.decoders: dict[int, torch.nn.Module] = {}
        self.result: TrainResult | None = None

    # ------------------------------------------------------------------------------------------ build
    def _build(self, state_size: int, action_dim: int) -> EntityAttentionActorCritic:
        c = self.config
        return EntityAttentionActorCritic(state_size, action_dim, c.hidden_dim, c.n_heads, c.log_std_init,
                                          c.popart_beta, c.ff_mult, c.actor_hidden).to(self.device)

    def _check_env(self, env: TripParallelEnv, seed: int | None = None) -> None:
        env.to(self.device)  # the world's state follows the agent's device (no-op when already there)
        spec = {"state_size": env.state_size, "dim": env.dim}
        if self.model is None:
            with seeded(0 if seed is None else seed):  # weight initialisation draws from torch's global RNG
                self.model = self._build(env.state_size, env.dim)
            self.env_spec = spec
        elif spec != self.env_spec:
            raise CheckpointError(f"this CellTRIP agent was built for a world with {self.env_spec}; "
                                  f"the world given has {spec}. Use a world with the same modalities and dim.")

    # ------------------------------------------------------------------------------------------ learn
    def learn(self, env: TripParallelEnv, total_timesteps: int, *, seed: int | None = None,
              tensorboard_log: str | Path | None = None, progress_bar: bool = False,
              collector: Any = None) -> CellTripAgent:
        """Train on ``env`` for ``total_timesteps`` environment steps, then fit decoders at steady state.

        ``collector``: where rollouts come from (default: ``env`` in this process); pass a
        :class:`~cellgym.agents.celltrip.RayCollector` to collect in Ray actors (one learner updates here).

        TensorBoard scalars (when ``tensorboard_log`` is given): ``rollout/reward_per_cell``,
        ``rollout/velocity``, ``train/*`` losses, ``time/agent_steps_per_s`` and, once decoders are fitted,
        ``cell/imputation_error`` per target modality.
        """
        self._check_env(env, seed)
        writer = None
        if tensorboard_log is not None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(tensorboard_log))
        bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(total_timesteps), unit="step", desc="celltrip")
        try:
            self.result = train(self.config, env, self.model, int(total_timesteps), seed=seed,
                                logger=None if writer is None else writer.add_scalar,
                                progress=None if bar is None else bar.update, collector=collector)
            if bar is not None:  # its rate stays the training's; the decoders get a line of their own
                bar.close()
                bar = None
                print(f"celltrip: fitting decoders ({self.config.steady_state_steps} steady-state steps, "
                      f"{self.config.decoder_steps} Adam steps per target modality)", file=sys.stderr)
            manager = self.manager(env, seed=seed)
            manager.simulate(self.config.steady_state_steps)
            errors = manager.fit_decoders()
            for k, err in errors.items():
                self.result.history.setdefault(f"cell/imputation_error_{k}", []).append(err)
                if writer is not None:
                    writer.add_scalar(f"cell/imputation_error_{env.modalities[k].name}", err,
                                      self.result.env_steps)
        finally:
            if writer is not None:
                writer.close()
            if bar is not None:
                bar.close()
        return self

    # -------------------------------------------------------------------------------------------- act
    def act(self, obs: dict[str, dict[str, np.ndarray]], env: TripParallelEnv, *,
            deterministic: bool = True) -> dict[str, np.ndarray]:
        """Forces for every live cell from the PettingZoo observation dict (batched in one forward)."""
        self._check_env(env)
        agents = list(obs)
        dev = self.device
        values = list(obs.values())
        with torch.no_grad():
            if len(values) > 1 and values[0]["others"] is not values[1]["others"] \
                    and values[0]["self_slot"] == len(values[0]["others"]):
                # the neighbour view: every cell its own rows, never itself
                states, tokens, index = neighbour_obs_to_arrays(obs)
                mean, _ = self.model.forward_neighbours(states.to(dev), tokens.to(dev), index.to(dev))
            else:
                states, others, (rows, cols) = obs_dict_to_arrays(obs)
                mean, _ = self.model(states.to(dev), others.to(dev), (rows.to(dev), cols.to(dev)))
            if not deterministic:
                mean = mean + self.model.log_std.exp() * torch.randn_like(mean)
        actions = mean.cpu().numpy()
        return {a: actions[i] for i, a in enumerate(agents)}

    def act_batch(self, obs: Any, *, deterministic: bool = True) -> torch.Tensor:
        """Forces (N, d) for a batched :class:`~cellgym.envs.trip.TripObs`."""
        with torch.no_grad():
            return self.model.act(obs, deterministic=deterministic)[0]

    # ------------------------------------------------------------------------------------ manager API
    def manager(self, env: TripParallelEnv, *, cells: np.ndarray | None = None,
                seed: int | None = None) -> TripManager:
        """A :class:`~cellgym.agents.celltrip.TripManager` that simulates, imputes and perturbs ``env``'s cells."""
        from ._manager import TripManager

        self._check_env(env)
        return TripManager(self, env, cells=cells, seed=seed)

    # ------------------------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write ``config.yaml`` (hyperparameters, world sizes, format) and ``weights.pt`` (state dicts)."""
        if self.model is None:
            raise CheckpointError("this CellTRIP agent has no network yet; call learn() before save().")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"name": self.name, "format_version": FORMAT_VERSION, "hyperparams": asdict(self.config),
                  "env_spec": self.env_spec,
                  "decoders": {int(k): d.sizes for k, d in self.decoders.items()}}
        (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        state = {"model": self.model.state_dict(),
                 "decoders": {str(k): d.state_dict() for k, d in self.decoders.items()}}
        torch.save(state, path / "weights.pt")
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> CellTripAgent:
        """Read an agent written by :meth:`save` (``yaml.safe_load`` + ``torch.load(weights_only=True)``).

        ``kwargs`` override saved hyperparameters (e.g. ``device="cpu"``); without one, the saved device is
        used, except that a CUDA-trained agent loads on the CPU where CUDA is unavailable.
        """
        path = Path(path)
        if not (path / "config.yaml").is_file() or not (path / "weights.pt").is_file():
            raise CheckpointError(f"{path} is not a saved CellTRIP agent: expected config.yaml and weights.pt there.")
        config = read_yaml(path / "config.yaml")  # invalid or unsafe YAML: one CheckpointError line
        if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path} has CellTRIP checkpoint format {config.get('format_version')}; "
                                  f"this cellgym reads format {FORMAT_VERSION}.")
        hyperparams = {**config["hyperparams"], **kwargs}
        if "device" not in kwargs and str(hyperparams.get("device")).startswith("cuda") and not torch.cuda.is_available():
            hyperparams["device"] = "cpu"  # a GPU-trained checkpoint loads on a CPU-only machine
        agent = cls(**hyperparams)
        agent.env_spec = config["env_spec"]
        agent.model = agent._build(agent.env_spec["state_size"], agent.env_spec["dim"])
        state = load_tensors(path / "weights.pt", map_location=agent.device)  # plain tensors only, one-line errors
        try:
            agent.model.load_state_dict(state["model"])
            for k, (n_in, n_out, hidden) in config.get("decoders", {}).items():
                decoder = PositionDecoder(n_in, n_out, hidden)
                decoder.load_state_dict(state["decoders"][str(k)])
                agent.decoders[int(k)] = decoder.to(agent.device)
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path / 'weights.pt'} does not fit the CellTRIP agent in {path / 'config.yaml'} "
                                  f"({first}); restore both files from one run, or train again.") from exc
        return agent

    # ------------------------------------------------------------------------------------------ enjoy
    def enjoy(self, env: TripParallelEnv, *, episodes: int = 1, plot: str | None = None,
              seed: int | None = None, progress: Callable[[int], None] | None = None) -> str:
        """Run ``episodes`` deterministic episodes; return a text report (and draw positions over time).
        ``progress(1)`` is called after each episode (a progress bar)."""
        from cellgym.envs.trip import plot_positions

        lines = [f"CellTRIP agent on {type(env).__name__}: {episodes} episode(s)"]
        trajectory = None
        for ep in range(episodes):
            manager = self.manager(env, seed=None if seed is None else seed + ep)
            out = manager.run_episode(record_every=5)
            trajectory = out["trajectory"]
            refit = manager.fit_decoders()
            errs = ", ".join(f"{env.modalities[k].name} {v:.4f}" for k, v in refit.items())
            lines.append(f"  episode {ep}: {len(env.cell_index)} cells, {out['steps']} steps, "
                         f"mean reward per cell {out['reward_per_cell']:.4f}, mean speed {out['velocity']:.4f}, "
                         f"imputation error (refitted decoders, processed units) {errs or 'n/a'}")
            if progress is not None:
                progress(1)
        if plot is not None and trajectory is not None:
            labels = getattr(env, "labels", None)
            plot_positions(trajectory, plot, labels=None if labels is None else np.asarray(labels)[env.cell_index],
                           label_name=getattr(env, "label_name", "label"))
            lines.append(f"  positions over time drawn to {plot}")
        return "\n".join(lines)


class PositionDecoder(torch.nn.Module):
    """MLP from standardised positions (n_in) to a processed target modality (n_out).

    The standardisation statistics are buffers set when the decoder is fitted on steady-state positions.
    """

    def __init__(self, n_in: int, n_out: int, hidden: int = 128, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                                       torch.nn.ReLU(), torch.nn.Linear(hidden, n_out))
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        if generator is not None:  # seeded initialisation without touching the global RNG
            for layer in self.net:
                if isinstance(layer, torch.nn.Linear):
                    bound = 1.0 / layer.in_features ** 0.5
                    with torch.no_grad():
                        layer.weight.uniform_(-bound, bound, generator=generator)
                        layer.bias.uniform_(-bound, bound, generator=generator)

    @property
    def sizes(self) -> list[int]:
        """[n_in, n_out, hidden], as saved in config.yaml."""
        return [self.net[0].in_features, self.net[-1].out_features, self.net[0].out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Positions (N, n_in) -> processed modality (N, n_out)."""
        return self.net((x - self.mean) / self.std)


def obs_dict_to_arrays(obs: dict[str, dict[str, Any]]
                       ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """PettingZoo observations -> (states (N, S), others (K, S), self pairs) for the policy.

    The world gives every cell the same ``others`` array (one view per step); padding rows are dropped
    and each cell's own row (``self_slot``) is excluded from its attention.
    """
    from cellgym.envs.trip import TripConfigError

    values = list(obs.values())
    first = values[0]["others"]
    if not all(o["others"] is first for o in values) and \
            not all(np.array_equal(o["others"], first) for o in values):
        raise TripConfigError("the CellTRIP policy needs one view shared by every cell (identical 'others'); "
                              "got different 'others' arrays per cell.")
    n_real = int(values[0]["n_others"])
    states = torch.from_numpy(np.stack([o["self"] for o in values]))
    slots = np.fromiter((o["self_slot"] for o in values), np.int64, len(values))
    rows = np.flatnonzero(slots < n_real)
    return states, torch.from_numpy(first[:n_real]), (torch.from_numpy(rows), torch.from_numpy(slots[rows]))


def neighbour_obs_to_arrays(obs: dict[str, dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PettingZoo observations of the neighbour view -> (states (N, S), tokens (N k, S), index (N, k))."""
    values = list(obs.values())
    k = int(values[0]["n_others"])
    states = torch.from_numpy(np.stack([o["self"] for o in values]))
    tokens = torch.from_numpy(np.stack([o["others"][:k] for o in values])).reshape(len(values) * k, -1)
    return states, tokens, torch.arange(len(values) * k).view(len(values), k)
