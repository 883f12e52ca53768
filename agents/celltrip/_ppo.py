"""CellTRIP's learner: entity self-attention actor-critic trained with PPO, one file in reading order.

Sun et al., "CellTRIP: multi-agent reinforcement learning of virtual cell environments", bioRxiv 2025,
doi:10.1101/2025.11.21.689815. PPO: Schulman et al. 2017 (arXiv:1707.06347); GAE: Schulman et al. 2016
(arXiv:1506.02438); PopArt: van Hasselt et al. 2016, "Learning values across many orders of magnitude"
(arXiv:1602.07714).

Reading order: config -> networks -> collect_rollout -> update -> train.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellgym.envs.trip._neighbours import for_chunks, gather_rows

if TYPE_CHECKING:
    from cellgym.envs.trip import TripObs, TripParallelEnv


# ============================================================================================== config
@dataclass
class CellTripConfig:
    """Hyperparameters of CellTRIP's attention PPO (names follow SB3 where the meaning matches)."""

    learning_rate: float = 1.0e-3
    """Adam step size."""
    n_steps: int = 100
    """Environment steps (each moves every cell) per rollout."""
    n_epochs: int = 4
    """Passes over each rollout."""
    batch_steps: int = 10
    """Environment steps per minibatch (every cell of those steps is in it)."""
    gamma: float = 0.95
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (Schulman et al. 2016)."""
    clip_range: float = 0.2
    """PPO ratio clipping epsilon."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight (on PopArt-normalised targets)."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    hidden_dim: int = 64
    """Width of the embeddings and the trunk."""
    n_heads: int = 1
    """Attention heads (hidden_dim must be divisible by it); 1 is ~4x faster than 4 at large N on CPU."""
    ff_mult: int = 0
    """0: a 2-layer ReLU trunk on [self, pooled]. >0: CellTRIP's block instead: attention output
    projection, residual + LayerNorm, a ``ff_mult``-times-wide MLP, residual + LayerNorm."""
    actor_hidden: int = 0
    """0: a linear actor head; >0: one hidden ReLU layer this wide (CellTRIP: 256)."""
    log_std_init: float = -1.0
    """Initial log standard deviation of the Gaussian policy."""
    popart_beta: float = 0.1
    """Step size of PopArt's running return moments, applied once per rollout."""
    decoder_steps: int = 300
    """Adam steps when fitting a position -> modality decoder."""
    steady_state_steps: int = 100
    """Simulation length used to reach a steady state before fitting decoders (about the training horizon)."""
    device: str = "cpu"
    """Torch device of the networks and rollouts ("cpu", "cuda", "cuda:<i>", "auto"); the agent moves the
    world there too (``env.to(device)``)."""


@dataclass
class TrainResult:
    """What :func:`train` returns: per-rollout means and the totals."""

    env_steps: int
    agent_steps: int
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)


CELLTRIP_SIZE = {"hidden_dim": 128, "n_heads": 2, "ff_mult": 4, "actor_hidden": 256}
"""CellTRIP's default policy size (attention width 128, 2 heads, LayerNorms, 4x MLP block, 256-wide actor
head): 314k parameters for 64 + 32 input features and dim 32. ``CellTripAgent(**CELLTRIP_SIZE)``."""

SHARED_CHUNK_ELEMENTS = 1 << 20
"""Query rows x keys per chunk of the shared-view attention (its additive mask: 4 MB of float32)."""

ATTENTION_CHUNK_ELEMENTS = 1 << 18
"""Gathered embedding entries per chunk of cells in the neighbour attention (1 MB of float32: the chunk
stays in cache between the gather and the attention; 16 MB chunks measured 1.2-2.6x slower)."""


# ============================================================================================ networks
class RunningStandardiser(nn.Module):
    """Running mean and std of inputs; the layers it feeds are corrected so their outputs are preserved.

    Adaptive input rescaling: when the statistics move from (mu, sigma) to (mu', sigma'), a first layer
    ``W (x - mu) / sigma + b`` becomes ``W' (x - mu') / sigma' + b'`` with ``W' = W sigma' / sigma`` and
    ``b' = b + W (mu' - mu) / sigma``, so the network computes the same function of the raw input.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("var", torch.ones(n_features))
        self.register_buffer("count", torch.tensor(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise x (..., F)."""
        return (x - self.mean) / self.std

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation, floored so constant inputs do not blow up."""
        return self.var.sqrt().clamp_min(1e-2)

    @torch.no_grad()
    def update(self, x: torch.Tensor, layers: list[nn.Linear]) -> None:
        """Merge the moments of x (B, F) (Chan et al. parallel update) and correct ``layers``."""
        old_mean, old_std = self.mean.clone(), self.std.clone()
        n = x.shape[0]
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total) / total)
        self.count.copy_(total)
        new_std = self.std
        for layer in layers:
            layer.bias += layer.weight @ ((self.mean - old_mean) / old_std)
            layer.weight *= (new_std / old_std)[None, :]


class PopArtHead(nn.Module):
    """Value head with PopArt normalisation (van Hasselt et al. 2016, Alg. 1, "ART" + "POP").

    The linear layer predicts normalised values; ``V = sigma * n(s) + mu``. When (mu, sigma) move, the
    layer is rescaled (``w' = w sigma / sigma'``, ``b' = (sigma b + mu - mu') / sigma'``) so the
    unnormalised predictions are preserved.
    """

    def __init__(self, n_in: int, beta: float) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, 1)
        self.beta = beta
        self.register_buffer("mu", torch.zeros(()))
        self.register_buffer("nu", torch.ones(()))  # second moment

    @property
    def sigma(self) -> torch.Tensor:
        """Scale of the returns."""
        return (self.nu - self.mu.pow(2)).clamp_min(1e-8).sqrt()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Normalised value n(s), (N,)."""
        return self.linear(h).squeeze(-1)

    def unnormalise(self, n: torch.Tensor) -> torch.Tensor:
        """V(s) from n(s)."""
        return n * self.sigma + self.mu

    def normalise(self, v: torch.Tensor) -> torch.Tensor:
        """Targets in the head's normalised scale."""
        return (v - self.mu) / self.sigma

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> None:
        """Move the return moments toward this rollout's and preserve the outputs."""
        old_mu, old_sigma = self.mu.clone(), self.sigma.clone()
        self.mu.lerp_(returns.mean(), self.beta)
        self.nu.lerp_(returns.pow(2).mean(), self.beta)
        new_sigma = self.sigma
        self.linear.weight *= old_sigma / new_sigma
        self.linear.bias.copy_((old_sigma * self.linear.bias + old_mu - self.mu) / new_sigma)


class EntityAttentionActorCritic(nn.Module):
    """Each cell is a query over the embeddings of the cells it sees; a shared trunk feeds actor and critic.

    Parameters
    ----------
    state_size
        S: position, velocity and input features of one cell.
    action_dim
        d: the force's dimension.
    """

    def __init__(self, state_size: int, action_dim: int, hidden_dim: int = 64, n_heads: int = 1,
                 log_std_init: float = -0.5, popart_beta: float = 0.1, ff_mult: int = 0,
                 actor_hidden: int = 0) -> None:
        super().__init__()
        if hidden_dim % n_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by n_heads ({n_heads}).")
        self.n_heads = n_heads
        self.n_moving = 2 * action_dim  # position and velocity lead each state row; the input features follow
        self._input_cache: tuple | None = None  # see embed_reusing_inputs
        self.standardiser = RunningStandardiser(state_size)
        self.self_embed = nn.Sequential(nn.Linear(state_size, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim))
        self.other_embed = nn.Sequential(nn.Linear(state_size, hidden_dim), nn.ReLU(),
                                         nn.Linear(hidden_dim, hidden_dim))
        self.query = nn.Linear(hidden_dim, hidden_dim)
        self.key_value = nn.Linear(hidden_dim, 2 * hidden_dim)
        if ff_mult > 0:  # CellTRIP's transformer-style block
            self.trunk = TransformerBlock(hidden_dim, ff_mult)
        else:
            self.trunk = ConcatTrunk(hidden_dim)
        last = nn.Linear(actor_hidden or hidden_dim, action_dim)
        self.actor = nn.Sequential(nn.Linear(hidden_dim, actor_hidden), nn.ReLU(), last) if actor_hidden else last
        self.critic = PopArtHead(hidden_dim, popart_beta)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        nn.init.orthogonal_(last.weight, 0.01)
        nn.init.zeros_(last.bias)

    def first_layers(self) -> list[nn.Linear]:
        """The layers fed by the standardised input (corrected by adaptive input rescaling)."""
        return [self.self_embed[0], self.other_embed[0]]

    def embed(self, states: torch.Tensor, others: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Own embeddings of ``states`` (N, hidden) and token embeddings of ``others`` (``states`` when None).

        The standardiser is folded into the first layers (``W (x - mu) / sigma + b = (W / sigma) x +
        (b - (W / sigma) mu)``), so the (N, S) input is read once and never rewritten; when the tokens are the
        states themselves, both first layers run as one matmul.
        """
        first = self.self_embed[0], self.other_embed[0]
        scale, mean = self.standardiser.std.reciprocal(), self.standardiser.mean
        if others is None:
            w = torch.cat([first[0].weight, first[1].weight]) * scale
            h1 = F.linear(states, w, torch.cat([first[0].bias, first[1].bias]) - w @ mean).relu_()
            hd = first[0].out_features
            h1_self, h1_other = h1[:, :hd], h1[:, hd:]
        else:
            w_self, w_other = first[0].weight * scale, first[1].weight * scale
            h1_self = F.linear(states, w_self, first[0].bias - w_self @ mean).relu_()
            h1_other = F.linear(others, w_other, first[1].bias - w_other @ mean).relu_()
        return self.self_embed[2](h1_self), self.other_embed[2](h1_other)

    def embed_reusing_inputs(self, states: torch.Tensor, index: torch.Tensor | None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`embed` of ``states`` and of the token rows ``states[index]`` (all rows when None), reusing the
        input-feature part of the first layers while it cannot have changed (no gradient through it).

        Cells' modalities do not move, only positions and velocities do, so within an episode
        ``W x + b = W_moving x_moving + (W_inputs x_inputs + b)`` has a constant second term, (N, 2 hidden) for
        both first layers (CellTRIP caches the same term, ``feature_embeds``). It is recomputed when the input
        columns of ``states`` differ from those it was computed from (checked exactly: O(N F) reads instead of
        O(N F hidden) multiply-adds) or when the first layers or the standardiser changed (parameter versions).
        The same values as :meth:`embed` up to float32 rounding (the sum runs in another order).
        """
        first = self.self_embed[0], self.other_embed[0]
        std = self.standardiser
        key = tuple((t.data_ptr(), t._version) for t in (first[0].weight, first[0].bias, first[1].weight,
                                                          first[1].bias, std.mean, std.var))
        p = self.n_moving
        inputs = states[:, p:]
        cache = self._input_cache
        if cache is None or cache[0] != key or cache[1].shape != inputs.shape or cache[1].device != inputs.device \
                or not torch.equal(cache[1], inputs):
            scale, mean = std.std.reciprocal(), std.mean
            w = torch.cat([first[0].weight, first[1].weight]) * scale
            b = torch.cat([first[0].bias, first[1].bias]) - w @ mean
            constant = F.linear(inputs, w[:, p:], b)  # (N, 2 hidden)
            cache = self._input_cache = (key, inputs.clone(), constant, w[:, :p].T.contiguous())
        _, _, constant, w_moving = cache
        hd = first[0].out_features
        moving = states[:, :p]
        if index is None:
            h1 = torch.addmm(constant, moving, w_moving).relu_()
            h1_self, h1_other = h1[:, :hd], h1[:, hd:]
        else:
            h1_self = torch.addmm(constant[:, :hd], moving, w_moving[:, :hd]).relu_()
            h1_other = torch.addmm(constant[index, hd:], moving[index], w_moving[:, hd:]).relu_()
        return self.self_embed[2](h1_self), self.other_embed[2](h1_other)

    def forward(self, states: torch.Tensor, others: torch.Tensor | None,
                exclude: tuple[torch.Tensor, torch.Tensor],
                embedded: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Action means and normalised values.

        Parameters
        ----------
        states : Tensor of shape (N, S)
            The querying cells.
        others : Tensor of shape (K, S)
            The cells in view (one view shared by every cell, as the world provides).
        exclude : (rows, cols) LongTensors
            Pairs (cell i, row k of ``others``) not attended to: row k is cell i itself.
        embedded : (own, tokens) embeddings, optional
            :meth:`embed` of ``states`` and ``others`` when already computed (``others`` is then unused).

        Returns
        -------
        mean : Tensor of shape (N, d)
        value : Tensor of shape (N,), PopArt-normalised
        """
        h_self, e = self.embed(states, others) if embedded is None else embedded
        q = self.query(h_self)
        k, v = self.key_value(e).chunk(2, dim=-1)
        n, hd = q.shape
        heads, head = self.n_heads, hd // self.n_heads
        qh = q.view(n, heads, head).transpose(0, 1)[None]  # (1, H, N, h)
        kh = k.view(-1, heads, head).transpose(0, 1)[None]  # (1, H, K, h)
        vh = v.view(-1, heads, head).transpose(0, 1)[None]
        n_keys = kh.shape[2]
        # Chunks of query rows keep the additive mask (-inf at the <= K self pairs) small at any N; SDPA with
        # it measured 2x faster than scores @ softmax @ values on one core (N = K = 1000, 2 heads).
        rows = max(1, SHARED_CHUNK_ELEMENTS // n_keys)
        self_rows, self_cols = exclude
        pooled = []
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            mask = torch.zeros(stop - start, n_keys, device=q.device, dtype=q.dtype)
            inside = (self_rows >= start) & (self_rows < stop)
            mask[self_rows[inside] - start, self_cols[inside]] = float("-inf")
            out = F.scaled_dot_product_attention(qh[:, :, start:stop], kh, vh, attn_mask=mask)
            pooled.append(out[0].transpose(0, 1).reshape(stop - start, hd))
        pooled = torch.cat(pooled) if len(pooled) > 1 else pooled[0]
        z = self.trunk(h_self, pooled)
        return self.actor(z), self.critic(z)

    def forward_neighbours(self, states: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor,
                           reuse_inputs: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Action means and normalised values when every cell sees its own cells (the neighbour view).

        The same attention as :meth:`forward`, rearranged so that only one ``hidden``-wide row per seen
        cell is gathered (its embedding e_j) instead of its key and value (2 ``hidden``): with
        ``k_j = W_k e_j + b_k`` and ``v_j = W_v e_j + b_v``, head h scores ``q_i^h . k_j^h =
        (W_k^h^T q_i^h) . e_j + const_i`` (the constant drops out of the softmax) and pools
        ``sum_j a_ij v_j^h = W_v^h (sum_j a_ij e_j) + b_v^h`` (the weights sum to 1). The queries are
        projected once per cell, the gathered (chunk, k, hidden) embeddings attended with two batched matmuls
        and a softmax for chunks of cells (bounded memory, O(N k hidden) work), and
        the pooled embeddings projected once per cell. Gathering one row instead of two measured about
        1.35x faster for gather + attention at 100,000 cells (one thread, both in one process).

        Parameters
        ----------
        states : Tensor of shape (N, S)
            The querying cells.
        tokens : Tensor of shape (M, S)
            Rows the cells attend to (the batched world passes ``states`` itself).
        index : LongTensor of shape (N, k)
            Row i: the rows of ``tokens`` that cell i attends to.
        reuse_inputs
            With ``tokens is states``: reuse the first layers' input-feature part (:meth:`embed_reusing_inputs`).
        """
        if reuse_inputs and tokens is states:
            h_self, e = self.embed_reusing_inputs(states, None)
        else:
            h_self, e = self.embed(states, None if tokens is states else tokens)  # e: the only rows gathered
        q = self.query(h_self)
        n, hd = q.shape
        k = index.shape[1]
        heads, head = self.n_heads, hd // self.n_heads
        w_k, w_v = self.key_value.weight[:hd].view(heads, head, hd), self.key_value.weight[hd:].view(heads, head, hd)
        # (N, H, hidden): queries in e's space, with the 1 / sqrt(head) of scaled dot-product attention
        q_e = torch.einsum("nhc,hcd->nhd", q.view(n, heads, head), w_k * head ** -0.5)
        rows = max(1, ATTENTION_CHUNK_ELEMENTS // (hd * k))
        chunks: dict[int, torch.Tensor] = {}

        def chunk(start: int, stop: int) -> None:
            ec = gather_rows(e, index[start:stop].reshape(-1)).view(stop - start, k, hd)
            # two batched matmuls over (H, hidden) x (hidden, k): every head reads the same gathered rows. Measured
            # 1.5-1.7x faster than F.scaled_dot_product_attention on the rows expanded over the heads (one
            # thread; 4,000 cells at CellTRIP's size, 100,000 at cellgym's)
            scores = torch.bmm(q_e[start:stop], ec.transpose(1, 2))  # (c, H, k)
            chunks[start] = torch.bmm(scores.softmax(-1), ec)  # (c, H, hidden)

        for_chunks(n, rows, chunk)
        parts = [chunks[start] for start in sorted(chunks)]
        pooled_e = torch.cat(parts) if len(parts) > 1 else parts[0]  # (N, H, hidden)
        pooled = torch.einsum("nhd,hcd->nhc", pooled_e, w_v).reshape(n, hd) + self.key_value.bias[hd:]
        z = self.trunk(h_self, pooled)
        return self.actor(z), self.critic(z)

    def policy(self, states: torch.Tensor, view: torch.Tensor, reuse_inputs: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Action means and normalised values for the world's states and view (1-D shared or 2-D per cell).

        ``reuse_inputs``: reuse the first layers' input-feature part between calls while the cells' inputs
        and the weights stay the same (:meth:`embed_reusing_inputs`; no gradient flows through that part).
        """
        if view.ndim == 2:
            return self.forward_neighbours(states, states, view, reuse_inputs)
        if reuse_inputs:
            return self(states, None, self_pairs(view), embedded=self.embed_reusing_inputs(states, view))
        return self(states, states[view], self_pairs(view))

    def act(self, obs: TripObs, *, deterministic: bool = False, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Actions, their log-probabilities and unnormalised values for a batched observation.

        Without gradient (rollouts, simulation) the first layers' input-feature part is computed once per
        episode (:meth:`embed_reusing_inputs`)."""
        mean, value_n = self.policy(obs.states, obs.view, reuse_inputs=not torch.is_grad_enabled())
        if deterministic:
            action = mean
        else:
            # drawn on the CPU generator and moved: the same seed gives the same noise on every device
            action = mean + self.log_std.exp() * torch.randn(mean.shape, generator=generator).to(mean.device)
        return action, gaussian_log_prob(action, mean, self.log_std), self.critic.unnormalise(value_n)


class ConcatTrunk(nn.Sequential):
    """cellgym's default trunk: a 2-layer ReLU MLP on [own embedding, pooled attention].

    A ``Sequential`` so that its parameter names (``trunk.0.weight``, ...) are those of saved agents."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__(nn.Linear(2 * hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU())

    def forward(self, h_self: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(N, hidden) features for the heads (the first layer on [h_self, pooled] without concatenating them)."""
        first, hd = self[0], h_self.shape[-1]
        z = F.linear(pooled, first.weight[:, hd:], first.bias).addmm_(h_self, first.weight[:, :hd].T).relu_()
        return self[3](self[2](z))


class TransformerBlock(nn.Module):
    """CellTRIP's block: output projection, residual + LayerNorm, ``ff_mult``x MLP, residual + LayerNorm."""

    def __init__(self, hidden_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.out = nn.Linear(hidden_dim, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.ff = nn.Sequential(nn.Linear(hidden_dim, ff_mult * hidden_dim), nn.ReLU(),
                                nn.Linear(ff_mult * hidden_dim, hidden_dim))
        self.norm2 = nn.LayerNorm(hidden_dim)

    def forward(self, h_self: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(N, hidden) features for the heads."""
        z = self.norm1(h_self + self.out(pooled))
        return self.norm2(z + self.ff(z))


def self_pairs(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cell, column) pairs where the view's column k is the querying cell itself: (view[k], k)."""
    return view, torch.arange(len(view), device=view.device)


def gaussian_log_prob(action: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log density of a diagonal Gaussian, summed over action dimensions, (N,)."""
    return (-0.5 * ((action - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


# ====================================================================================== collect_rollout
@dataclass
class Rollout:
    """One rollout: lists over environment steps (the number of cells may change between episodes)."""

    obs: list[TripObs] = field(default_factory=list)
    actions: list[torch.Tensor] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    rewards: list[torch.Tensor] = field(default_factory=list)
    next_values: list[torch.Tensor] = field(default_factory=list)
    episode_ends: list[bool] = field(default_factory=list)
    advantages: list[torch.Tensor] = field(default_factory=list)
    returns: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def collect_rollout(model: EntityAttentionActorCritic, env: TripParallelEnv, obs: TripObs, n_steps: int,
                    gamma: float, gae_lambda: float, generator: torch.Generator,
                    on_step: Callable[[int], None] | None = None) -> tuple[Rollout, TripObs, dict[str, float]]:
    """Run the stochastic policy for ``n_steps`` environment steps (resetting at each episode end);
    ``on_step(1)`` is called after each one (a progress bar).

    Truncated reward bootstrapping: every episode end is a truncation, so the step's target bootstraps
    from the critic's value of the final observation instead of 0.
    """
    ro = Rollout()
    speeds, episodes = [], 0
    for _ in range(n_steps):
        action, log_prob, value = model.act(obs, generator=generator)
        next_obs, reward, terminated, truncated = env.step_batch(action)
        ro.obs.append(obs)
        ro.actions.append(action)
        ro.log_probs.append(log_prob)
        ro.values.append(value)
        ro.rewards.append(reward)
        ro.episode_ends.append(terminated or truncated)
        speeds.append(float(env.velocities.norm(dim=1).mean()))
        if terminated or truncated:
            # the final observation's value is the bootstrap; terminated would mean 0, but never happens here
            _, _, final_value = model.act(next_obs, deterministic=True)
            ro.next_values.append(torch.zeros_like(final_value) if terminated else final_value)
            next_obs = env.reset_batch()
            episodes += 1
        else:
            ro.next_values.append(torch.empty(0))  # filled from the next step's value below
        obs = next_obs
        if on_step is not None:
            on_step(1)
    _, _, last_value = model.act(obs, deterministic=True)
    for t in range(n_steps):
        if not ro.episode_ends[t]:
            ro.next_values[t] = ro.values[t + 1] if t + 1 < n_steps else last_value
    # GAE, per cell, cut at episode ends (the bootstrap above already carries the tail)
    gae = torch.zeros(0)
    ro.advantages = [torch.empty(0)] * n_steps
    for t in reversed(range(n_steps)):
        delta = ro.rewards[t] + gamma * ro.next_values[t] - ro.values[t]
        if ro.episode_ends[t] or t == n_steps - 1:
            gae = delta
        else:
            gae = delta + gamma * gae_lambda * gae
        ro.advantages[t] = gae
    ro.returns = [a + v for a, v in zip(ro.advantages, ro.values, strict=True)]
    stats = {"rollout/reward_per_cell": float(torch.cat(ro.rewards).mean()),
             "rollout/velocity": float(np.mean(speeds)), "rollout/episodes": float(episodes)}
    return ro, obs, stats


# ============================================================================================== update
def update(model: EntityAttentionActorCritic, optimizer: torch.optim.Optimizer, ro: Rollout,
           cfg: CellTripConfig, generator: torch.Generator) -> dict[str, float]:
    """PPO-clip on the rollout, minibatches of ``cfg.batch_steps`` environment steps."""
    returns = torch.cat(ro.returns)
    # fraction of the returns' variance the critic explained while collecting (SB3's explained_variance)
    explained = 1.0 - float((returns - torch.cat(ro.values)).var() / returns.var().clamp_min(1e-12))
    model.critic.update(returns)  # PopArt: targets are normalised with the updated statistics
    all_adv = torch.cat(ro.advantages)
    adv_mean, adv_std = all_adv.mean(), all_adv.std().clamp_min(1e-8)
    n_steps = len(ro.obs)
    logs: dict[str, list[float]] = {"train/policy_loss": [], "train/value_loss": [], "train/approx_kl": [],
                                    "train/clip_fraction": []}
    for _ in range(cfg.n_epochs):
        order = torch.randperm(n_steps, generator=generator)
        for start in range(0, n_steps, cfg.batch_steps):
            steps = order[start:start + cfg.batch_steps].tolist()
            policy_loss = value_loss = entropy = 0.0
            kl, clipped, count = 0.0, 0.0, 0
            for t in steps:
                obs = ro.obs[t]
                mean, value_n = model.policy(obs.states, obs.view)
                new_log_prob = gaussian_log_prob(ro.actions[t], mean, model.log_std)
                log_ratio = new_log_prob - ro.log_probs[t]
                ratio = log_ratio.exp()
                advantages = (ro.advantages[t] - adv_mean) / adv_std
                pg = torch.max(-advantages * ratio,
                               -advantages * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
                policy_loss = policy_loss + pg.sum()
                value_loss = value_loss + (value_n - model.critic.normalise(ro.returns[t])).pow(2).sum()
                entropy = entropy + (model.log_std.sum() + 0.5 * mean.shape[1] * (1 + math.log(2 * math.pi))) * len(mean)
                with torch.no_grad():  # http://joschu.net/blog/kl-approx.html
                    kl += float(((ratio - 1) - log_ratio).sum())
                    clipped += float(((ratio - 1).abs() > cfg.clip_range).float().sum())
                count += len(mean)
            loss = (policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy) / count
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            logs["train/policy_loss"].append(float(policy_loss.detach()) / count)
            logs["train/value_loss"].append(float(value_loss.detach()) / count)
            logs["train/approx_kl"].append(kl / count)
            logs["train/clip_fraction"].append(clipped / count)
    return {**{k: float(np.mean(v)) for k, v in logs.items()}, "train/explained_variance": explained}


# =============================================================================================== train
Logger = Callable[[str, float, int], None]


def seeds(seed: int | None) -> tuple[int, int]:
    """Seeds of the rollout generator (actions) and of the update generator (minibatch order)."""
    state = np.random.SeedSequence(seed).generate_state(2)
    return int(state[0]), int(state[1])


class LocalCollector:
    """Collects rollouts from one world in this process (what :func:`train` uses unless told otherwise)."""

    def __init__(self, env: TripParallelEnv, cfg: CellTripConfig, seed: int | None) -> None:
        self.env, self.cfg, self.seed = env, cfg, seed
        self.generator = torch.Generator().manual_seed(seeds(seed)[0])
        self.obs: TripObs | None = None
        self.on_step: Callable[[int], None] | None = None  # called after every environment step

    def reset(self) -> torch.Tensor:
        """Start the first episode; returns its states (for the input standardiser)."""
        self.obs = self.env.reset_batch(seed=self.seed)
        return self.obs.states

    def collect(self, model: EntityAttentionActorCritic, n_steps: int) -> tuple[Rollout, dict[str, float]]:
        """``n_steps`` environment steps with the current policy."""
        ro, self.obs, stats = collect_rollout(model, self.env, self.obs, n_steps, self.cfg.gamma,
                                              self.cfg.gae_lambda, self.generator, self.on_step)
        return ro, stats


def train(cfg: CellTripConfig, env: TripParallelEnv, model: EntityAttentionActorCritic, total_timesteps: int,
          *, seed: int | None = None, logger: Logger | None = None,
          progress: Callable[[int], None] | None = None, collector: object | None = None) -> TrainResult:
    """Train ``model`` on ``env`` for ``total_timesteps`` environment steps (each moves every cell).

    Adaptive input rescaling runs on each rollout's states before the update; PopArt inside it.
    ``env`` and ``model`` must be on the same device (:class:`CellTripAgent` moves the world to its own).
    ``collector`` (default :class:`LocalCollector` over ``env``) gathers the rollouts: an object with
    ``reset() -> states`` and ``collect(model, n_steps) -> (Rollout, stats)``, e.g. the Ray runners of
    :class:`~cellgym.agents.celltrip._ray.RayCollector`; the update always runs here, on one learner.
    """
    device = next(model.parameters()).device
    if env.device != device:
        from cellgym.envs.trip import TripConfigError

        raise TripConfigError(f"the world is on {env.device} and the network on {device}; call env.to({str(device)!r}).")
    generator = torch.Generator().manual_seed(seeds(seed)[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    collector = collector if collector is not None else LocalCollector(env, cfg, seed)
    per_step = progress is not None and hasattr(collector, "on_step")  # else: progress once per rollout
    if per_step:
        collector.on_step = progress
    model.standardiser.update(collector.reset(), model.first_layers())
    history: dict[str, list[float]] = {}
    env_steps = agent_steps = 0
    start = time.perf_counter()
    while env_steps < total_timesteps:
        ro, stats = collector.collect(model, min(cfg.n_steps, total_timesteps - env_steps))
        n = len(ro.obs)
        model.standardiser.update(torch.cat([o.states for o in ro.obs]), model.first_layers())
        stats.update(update(model, optimizer, ro, cfg, generator))
        env_steps += n
        agent_steps += sum(len(o.states) for o in ro.obs)
        stats["time/agent_steps_per_s"] = agent_steps / (time.perf_counter() - start)
        for key, value in stats.items():
            history.setdefault(key, []).append(value)
            if logger is not None:
                logger(key, value, env_steps)
        if progress is not None and not per_step:
            progress(n)
    return TrainResult(env_steps, agent_steps, time.perf_counter() - start, history)
