"""The Galaxy network: macrogene autoencoder, species-conditioned decoder, adversary, cell-type classifier."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..base import LossOutput, PredictorModule

__all__ = ["GalaxyModule", "GradientReversal"]


class GradientReversal(torch.autograd.Function):
    """Identity forward, ``-scale * grad`` backward (Ganin & Lempitsky 2015, domain-adversarial training)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def _mlp(n_in: int, n_hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(n_hidden, n_out))


class GalaxyModule(PredictorModule):
    """Encoder on (per-species standardised) macrogene expression -> latent ``z`` (the ``X_galaxy`` space).

    - **Decoder** conditioned on the species (one-hot appended to ``z``), with one linear output head per
      species onto that species' own genes (log1p expression), as SATURN decodes per species.
    - **Species discriminator** on ``z`` behind a gradient-reversal layer: it learns to tell species apart
      while the encoder learns to make it fail.
    - **Cell-type classifier** on ``z`` for cells whose label is known (label ``-1`` = unknown).

    Objective (fixed weights, documented in :class:`~cellgym.predictors.galaxy.GalaxyPredictor`)::

        loss = MSE(decoded genes, x) + adversary_weight * CE(species | GRL(z)) + classifier_weight * CE(type | z)

    Buffers carried in the checkpoint: every species' macrogene weights ``w_<i>`` (G_i, K), the
    standardisation ``shift``/``scale`` (S, K), and the perturbation deltas ``delta`` (P, n_latent)
    used for cross-species transfer.
    """

    def __init__(
        self,
        n_macrogenes: int,
        n_genes: list[int],
        n_celltypes: int,
        n_perturbations: int,
        *,
        n_latent: int = 32,
        n_hidden: int = 256,
        dropout: float = 0.1,
        adversary_weight: float = 1.0,
        classifier_weight: float = 1.0,
        target: int = -1,
    ) -> None:
        super().__init__()
        self.n_species = len(n_genes)
        self.n_genes = list(n_genes)
        self.adversary_weight = adversary_weight
        self.classifier_weight = classifier_weight
        self.target = target % len(n_genes)  # the species predict_batch works in
        self.encoder = _mlp(n_macrogenes, n_hidden, n_latent, dropout)
        self.decoder = nn.Sequential(nn.Linear(n_latent + self.n_species, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(n_hidden, g) for g in n_genes)
        self.discriminator = _mlp(n_latent, n_hidden // 2, self.n_species, 0.0)
        self.classifier = nn.Linear(n_latent, max(n_celltypes, 1))
        self.n_celltypes = n_celltypes
        for i, g in enumerate(n_genes):
            self.register_buffer(f"w_{i}", torch.zeros(g, n_macrogenes))
        self.register_buffer("shift", torch.zeros(self.n_species, n_macrogenes))
        self.register_buffer("scale", torch.ones(self.n_species, n_macrogenes))
        self.register_buffer("delta", torch.zeros(n_perturbations, n_latent))

    # ---------------------------------------------------------------------------------------------- parts
    def weights(self, species: int) -> torch.Tensor:
        """Gene -> macrogene weights (G_species, K) of species index ``species``."""
        return getattr(self, f"w_{species}")

    def macrogenes(self, x: torch.Tensor, species: int) -> torch.Tensor:
        """Macrogene expression (B, K) of log1p cells ``x`` (B, G_species) of one species."""
        return x @ self.weights(species)

    def standardise(self, m: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Per-species standardised macrogene expression (the encoder's input)."""
        return (m - self.shift[species]) / self.scale[species]

    def encode(self, m_std: torch.Tensor) -> torch.Tensor:
        """Latent (B, n_latent) of standardised macrogene expression."""
        return self.encoder(m_std)

    def decode(self, z: torch.Tensor, species: int) -> torch.Tensor:
        """Log1p expression (B, G_species) of latents ``z`` decoded as species ``species``."""
        onehot = torch.zeros(z.shape[0], self.n_species, dtype=z.dtype, device=z.device)
        onehot[:, species] = 1.0
        return self.heads[species](self.decoder(torch.cat([z, onehot], dim=1)))

    def embed_cells(self, x: torch.Tensor, species: int) -> torch.Tensor:
        """``X_galaxy`` (B, n_latent) of log1p cells of one species."""
        s = torch.full((x.shape[0],), species, dtype=torch.long, device=x.device)
        return self.encode(self.standardise(self.macrogenes(x, species), s))

    # ------------------------------------------------------------------------------------------- training
    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Reconstruction + adversarial species loss + cell-type classification (see class docstring)."""
        species = batch["species"]
        z = self.encode(batch["m"])
        recon = z.new_zeros(())
        n = species.shape[0]
        for s in range(self.n_species):
            rows = species == s
            if rows.any():
                target = batch["x"][rows, : self.n_genes[s]]
                recon = recon + F.mse_loss(self.decode(z[rows], s), target, reduction="sum") / (n * self.n_genes[s])
        logits = self.discriminator(GradientReversal.apply(z, 1.0))
        adversary = F.cross_entropy(logits, species)
        labelled = batch["celltype"] >= 0
        if self.n_celltypes > 0 and labelled.any():
            cls = F.cross_entropy(self.classifier(z[labelled]), batch["celltype"][labelled])
        else:
            cls = z.new_zeros(())
        loss = recon + self.adversary_weight * adversary + self.classifier_weight * cls
        # the adversary term enters with + here: the discriminator minimises it, the reversed gradient
        # makes the encoder maximise it (scaled by adversary_weight through the loss weight)
        accuracy = (logits.argmax(1) == species).float().mean()
        return LossOutput(loss, {"reconstruction": recon.detach(), "adversary": adversary.detach(),
                                 "classifier": cls.detach(), "species_accuracy": accuracy})

    # ----------------------------------------------------------------------------------------- prediction
    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Target-species cells ``x`` (B, G) under source-species perturbations ``pert`` (B, P).

        ``x + decode(z + pert @ delta) - decode(z)``: the decoded change of the latent shift is added to
        each cell, so an unperturbed cell is returned unchanged (no reconstruction error added).
        """
        s = self.target
        z = self.embed_cells(x, s)
        shifted = z + pert.to(z.dtype) @ self.delta
        return x + self.decode(shifted, s) - self.decode(z, s)
