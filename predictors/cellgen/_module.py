"""CellGen's torch modules: gated gene attention, FiLM conditioning, the generator that edits a cell, the critic.

Shapes: B cells, G genes, P single perturbations, S time transitions (0 outside trajectory mode),
T attention tokens of width D, K gene-feature dimensions.

Attention design (CPU-conscious). CellGen attends over projected gene features. Attention with one
token per gene costs O(G²) per cell and head (250k scores per cell at G = 500); here the G genes are
projected into T learned tokens (``Linear(G, T * D)``, each token a learned mix of genes), multi-head
self-attention runs over those T tokens (``nn.MultiheadAttention``, which dispatches to PyTorch's
fused scaled-dot-product attention) and the result is projected back to G genes. Cost per cell:
O(G T D) for the projections plus O(T² D) for the attention (T = 16, D = 32: ~0.5 M multiply-adds at
G = 500, against ~8 M for gene tokens of width 32), with the same gated shortcut
``a = Attn(x) * g + x * (1 - g)``.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..base import PredictorModule

__all__ = ["CellGenModule", "ConditionEncoder", "Critic", "FiLM", "GatedGeneAttention", "Generator"]


class FiLM(nn.Module):
    """Feature-wise linear modulation ``gamma(c) * h + beta(c)`` (Perez et al. 2018, AAAI).

    ``gamma = 1 + W_g c`` and ``beta = W_b c`` with zero-initialised ``W``: the identity at initialisation.
    """

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Modulated ``h`` (B, dim) given conditions ``c`` (B, cond_dim)."""
        d_gamma, beta = self.proj(c).chunk(2, dim=-1)
        return (1.0 + d_gamma) * h + beta


class GatedGeneAttention(nn.Module):
    """``a = Attn(x) * g + x * (1 - g)``: multi-head attention over T tokens projected from the genes.

    ``g`` (G,) is learnable per gene and initialised to 1 (CellGen). See the module docstring for why
    the genes are projected into T tokens instead of attending gene to gene.
    """

    def __init__(self, n_genes: int, n_tokens: int = 16, token_dim: int = 32, n_heads: int = 4) -> None:
        super().__init__()
        self.n_tokens, self.token_dim = n_tokens, token_dim
        self.to_tokens = nn.Linear(n_genes, n_tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)
        self.attn = nn.MultiheadAttention(token_dim, n_heads, batch_first=True)
        self.to_genes = nn.Linear(n_tokens * token_dim, n_genes)
        self.gate = nn.Parameter(torch.ones(n_genes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G) -> (B, G)."""
        tokens = self.norm(self.to_tokens(x).view(x.shape[0], self.n_tokens, self.token_dim))
        attended, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        out = self.to_genes((tokens + attended).flatten(1))
        return out * self.gate + x * (1.0 - self.gate)


class ConditionEncoder(nn.Module):
    """The condition c: target perturbation (multi-hot) and, in trajectory mode, the time transition.

    ``e = sum_known pert_p E_p + n_unseen * e_generic + (pert @ F) W + T[step + 1]``, then an MLP.
    ``F`` (P, K) holds fixed gene features of each perturbation's target gene (zero when the target is
    not a measured gene) so that a perturbation declared but never measured (``seen`` 0) still gets a
    gene-specific condition next to the learned generic one. ``step`` is -1 for "no time step".
    """

    def __init__(self, gene_features: torch.Tensor, n_steps: int, dim: int) -> None:
        super().__init__()
        n_pert, k = gene_features.shape
        self.register_buffer("gene_features", gene_features.float())
        self.register_buffer("seen", torch.ones(n_pert))
        self.pert = nn.Parameter(torch.randn(n_pert, dim) * 0.1)
        self.generic = nn.Parameter(torch.randn(dim) * 0.1)
        self.from_genes = nn.Linear(k, dim, bias=False)
        self.time = nn.Embedding(n_steps + 1, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.2), nn.Linear(dim, dim))

    def forward(self, pert: torch.Tensor, step: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Conditions (B, dim) of ``pert`` (B, P) and ``step`` (B,) int64; ``keep`` (B, P) drops learned rows."""
        known = pert * self.seen
        if keep is not None:
            known = known * keep
        n_generic = (pert - known).sum(-1, keepdim=True)
        e = known @ self.pert + n_generic * self.generic + self.from_genes(pert @ self.gene_features) + self.time(step + 1)
        return self.mlp(e)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """CellGen's generator: edits the input cell ``x`` towards condition ``c``.

    ``a = gated attention(x)``; ``h = FiLM_in(a, c)``; ``z = FiLM_latent(encoder(h), c)``;
    ``gamma_hat, beta_hat = heads(decoder(z))``; output ``relu(x * gamma_hat + beta_hat)``. The heads
    start at ``gamma_hat = 1, beta_hat = 0`` (the identity), so training starts from "no change".
    """

    def __init__(self, n_genes: int, cond_dim: int, n_hidden: int, n_latent: int, attention: dict[str, int]) -> None:
        super().__init__()
        self.attention = GatedGeneAttention(n_genes, **attention)
        self.film_in = FiLM(cond_dim, n_genes)
        self.encoder = _mlp([n_genes, n_hidden, n_latent])
        self.film_latent = FiLM(cond_dim, n_latent)
        self.decoder = _mlp([n_latent, n_hidden])
        self.gamma_head = nn.Linear(n_hidden, n_genes)
        self.beta_head = nn.Linear(n_hidden, n_genes)
        for head in (self.gamma_head, self.beta_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Edited cells (B, G) from cells ``x`` (B, G) and conditions ``c`` (B, cond_dim)."""
        h = self.film_in(self.attention(x), c)
        d = self.decoder(self.film_latent(self.encoder(h), c))
        return torch.relu(x * (1.0 + self.gamma_head(d)) + self.beta_head(d))


class Critic(nn.Module):
    """CellGen's critic: the same gated attention + FiLM + MLP, to one unbounded realism score per cell."""

    def __init__(self, n_genes: int, cond_dim: int, n_hidden: int, attention: dict[str, int]) -> None:
        super().__init__()
        self.attention = GatedGeneAttention(n_genes, **attention)
        self.film_in = FiLM(cond_dim, n_genes)
        self.body = _mlp([n_genes, n_hidden, n_hidden])
        self.film_hidden = FiLM(cond_dim, n_hidden)
        self.score = nn.Linear(n_hidden, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of cells ``x`` (B, G) under conditions ``c`` (B, cond_dim).

        Attention runs on PyTorch's math SDPA kernel: the gradient penalty differentiates the critic's
        gradient, and the fused CPU flash kernel has no double backward.
        """
        with sdpa_kernel(SDPBackend.MATH):
            a = self.attention(x)
        h = self.film_hidden(self.body(self.film_in(a, c)), c)
        return self.score(torch.nn.functional.leaky_relu(h, 0.2)).squeeze(-1)


class CellGenModule(PredictorModule):
    """Generator and critic, each with its own condition encoder.

    Parameters
    ----------
    n_genes
        G.
    gene_features
        (P, K) fixed features of each perturbation's target gene (see :class:`ConditionEncoder`).
    n_steps
        S, time transitions of trajectory mode (0 in perturbation mode).
    cond_dim, n_hidden, n_latent
        Width of the condition, hidden layers and the generator's latent.
    attention
        ``n_tokens``, ``token_dim``, ``n_heads`` of :class:`GatedGeneAttention`.
    """

    def __init__(
        self,
        n_genes: int,
        gene_features: torch.Tensor,
        n_steps: int,
        cond_dim: int = 32,
        n_hidden: int = 256,
        n_latent: int = 64,
        attention: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        attention = attention or {}
        self.gen_condition = ConditionEncoder(gene_features, n_steps, cond_dim)
        self.generator = Generator(n_genes, cond_dim, n_hidden, n_latent, attention)
        self.critic_condition = ConditionEncoder(gene_features, n_steps, cond_dim)
        self.critic = Critic(n_genes, cond_dim, n_hidden, attention)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters the generator's optimiser updates."""
        return [*self.gen_condition.parameters(), *self.generator.parameters()]

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters the critic's optimiser updates."""
        return [*self.critic_condition.parameters(), *self.critic.parameters()]

    def generate(self, x: torch.Tensor, pert: torch.Tensor, step: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``G(x, c)`` (B, G) for cells ``x`` under perturbations ``pert`` (B, P) and time ``step`` (B,)."""
        return self.generator(x, self.gen_condition(pert, step, keep))

    def score(self, x: torch.Tensor, pert: torch.Tensor, step: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``D(x, c)`` (B,): the critic's realism score of cells ``x`` as cells of condition (pert, step)."""
        return self.critic(x, self.critic_condition(pert, step, keep))

    def predict_batch(
        self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None, step: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Edited cells (B, G); the context ``ctx`` is ignored (CellGen takes no cell-type input)."""
        if step is None:
            step = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        return self.generate(x, pert.to(x.dtype), step)
