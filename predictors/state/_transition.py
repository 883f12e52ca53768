"""``state.transition``: State's set transformer (ST) — a set of control cells + a perturbation -> a perturbed set.

Adduri et al. 2025, "Predicting cellular responses to perturbation across diverse contexts with State"
(Arc Institute, bioRxiv 2025.06.26.661135). A training example is a *set*: S control cells of one context
and one perturbation; the target is S real perturbed cells of the same (context, perturbation). Each
control cell is a token: ``basal_mlp(x) + pert_mlp(p)``; a bidirectional transformer without positional
encoding mixes the set; a head maps back to genes, added to the control cell (residual) and rectified.
The loss compares the predicted and real sets as distributions: energy distance (the MMD with kernel
``-||x - y||``, as in the paper), or a Sinkhorn divergence (geomloss) or a per-token MSE.

CPU-scaled defaults (the paper's, in brackets): set size 64 [256-512], d_model 128 [328-1440], 2 layers
[4-8], 4 heads [8-12], feed-forward 256, AdamW lr 1e-3 [1e-4], gene space = the data's genes (HVGs) [HVGs
or SE embeddings]. Not in the paper: the effect prior (``effect_prior``; ``_prior.py``) that the network
corrects, and an ensemble of independently initialised members for held-out contexts (``n_members``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ..base import (
    FitData,
    FitReport,
    LossOutput,
    Predictor,
    PredictorModule,
    pseudobulk,
    seeded,
    train_module,
)
from ..base.errors import DataSpecError, UnknownPerturbationError
from ..genes import embedding_table, resolve_sources
from ..metrics import energy_distance_torch
from ._prior import fit_effect_prior

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["StateTransition", "StateTransitionModule", "set_layout"]

log = logging.getLogger(__name__)
LOSSES = ("energy", "sinkhorn", "mse")
FEATURES = ("genes", "onehot")


def _mlp(n_in: int, n_hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(n_hidden, n_out))


class StateTransitionModule(PredictorModule):
    """The ST network on padded sets: ``forward(x (B, S, G), pert (B, P), pad (B, S) | None) -> (B, S, G)``.

    ``pert_matrix`` (P, D) holds each single perturbation's features (one-hot rows, or the gene
    embedding of its target); a multi-hot row sums them (combinations). Perturbations flagged in
    ``learned_mask`` (no gene embedding) add a learned vector instead.
    """

    def __init__(
        self, n_genes: int, n_perturbations: int, pert_dim: int, *, d_model: int, n_layers: int, n_heads: int,
        dim_feedforward: int, dropout: float, loss: str, sinkhorn_blur: float, n_contexts: int = 1,
        se: nn.Module | None = None, n_embed: int = 0, n_batches: int = 0,
    ) -> None:
        super().__init__()
        self.loss_name = loss
        self.sinkhorn_blur = sinkhorn_blur
        self.register_buffer("pert_matrix", torch.zeros(n_perturbations, pert_dim))
        # the effect prior (see _prior.py): zeros when ``effect_prior`` is off
        self.register_buffer("mean_effect", torch.zeros(n_contexts, n_genes))
        self.register_buffer("transfer", torch.zeros(n_contexts, n_perturbations, n_genes))
        self.register_buffer("learned_mask", torch.zeros(n_perturbations))
        # the extrapolation guard (set by the predictor, not saved in the weights): trust (P,) is 1 for trained
        # perturbations and the similarity to the trained targets for unseen embedded ones; max_shift caps the
        # norm of an extrapolated set's mean correction (the largest training effect's norm)
        self.register_buffer("trust", torch.ones(n_perturbations), persistent=False)
        self.register_buffer("max_shift", torch.tensor(float("inf")), persistent=False)
        self.pert_learned = nn.Parameter(torch.zeros(n_perturbations, d_model))
        # "perturbed, identity unknown": the token of unseen perturbations predicted from the prior (and of the
        # guard's prior-only base), trained on perturbed sets shown without their identity
        self.pert_unknown = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.pert_unknown, std=0.02)  # as the batch token: apart from the control token from the start
        self.register_buffer("unknown_mask", torch.zeros(n_perturbations), persistent=False)
        # "context without perturbed training cells" (a held-out cell line): its token, added to every cell of
        # such a context's sets, is trained on sets shown with the prior they would get were their context
        # held out (``novel_rate``); ``novel_context`` (C,) is 1 for the contexts that get it at prediction
        self.ctx_novel = nn.Parameter(torch.zeros(d_model))  # drawn in fit when a context is novel (no RNG use here)
        self.register_buffer("novel_context", torch.zeros(n_contexts))
        # how much of the head's perturbation-specific correction a novel context keeps (the prior's w)
        self.register_buffer("novel_keep", torch.tensor(1.0))
        # input space: the genes, or a frozen SE model's cell embeddings (n_embed wide) with a decoder to genes
        self.se = se
        if se is not None:
            se.requires_grad_(False)
        n_in = n_embed if se is not None else n_genes
        self.decoder = _mlp(n_embed, dim_feedforward, n_genes, dropout) if se is not None else None
        self.basal = _mlp(n_in, dim_feedforward, d_model, dropout)
        self.pert = _mlp(pert_dim, dim_feedforward, d_model, dropout)
        # optional batch token: one learned vector per technical batch, added to each cell's token; the last
        # row is "batch unknown" (what prediction uses: the Predictor contract carries no batch)
        self.batch_token = nn.Embedding(n_batches + 1, d_model) if n_batches else None
        if self.batch_token is not None:
            nn.init.normal_(self.batch_token.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward, dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d_model), _mlp(d_model, dim_feedforward, n_in, dropout))
        nn.init.zeros_(self.head[-1][-1].weight)  # an untrained ST predicts the prior
        nn.init.zeros_(self.head[-1][-1].bias)
        # the other members of an ensemble (``n_members``): independently initialised and trained STs whose
        # predictions are averaged with this one's at prediction; empty for a single model
        self.members = nn.ModuleList()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints from before the unknown-perturbation token: it starts at zero (the control token)
        state_dict.setdefault(prefix + "pert_unknown", torch.zeros_like(self.pert_unknown))
        # ... and from before the novel-context token: no context is novel
        state_dict.setdefault(prefix + "ctx_novel", torch.zeros_like(self.ctx_novel))
        state_dict.setdefault(prefix + "novel_context", torch.zeros_like(self.novel_context))
        state_dict.setdefault(prefix + "novel_keep", torch.ones_like(self.novel_keep))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def pert_token(self, pert: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d_model) perturbation embedding of multi-hot rows (B, P); the unknown-perturbation vector is
        added to rows with an unseen perturbation without features (``unknown_mask``) or flagged ``hidden`` (B,)."""
        unknown = (pert * self.unknown_mask).sum(1) > 0
        if hidden is not None:
            unknown = unknown | hidden
        return (self.pert(pert @ self.pert_matrix) + (pert * self.learned_mask) @ self.pert_learned
                + unknown[:, None].to(pert.dtype) * self.pert_unknown)

    def prior(self, pert: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """(B, G) effect prior of perturbation rows (B, P) in contexts (B,): context mean effect + shrunk
        transfer of each single's deviation from the other contexts (0 for controls)."""
        perturbed = (pert.sum(1, keepdim=True) > 0).to(pert.dtype)
        return perturbed * self.mean_effect[ctx] + torch.einsum("bp,bpg->bg", pert, self.transfer[ctx])

    def train(self, mode: bool = True) -> StateTransitionModule:
        super().train(mode)
        if self.se is not None:
            self.se.eval()  # frozen
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """SE cell embeddings (..., n_embed) of cells (..., G) (input_space='embedding'; no grad)."""
        with torch.no_grad():
            return self.se.embed(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)

    def forward(self, x: torch.Tensor, pert: torch.Tensor, pad: torch.Tensor | None = None,
                prior: torch.Tensor | None = None, z: torch.Tensor | None = None,
                batch: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                novel: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted perturbed sets (B, S, G) from control sets ``x`` (B, S, G); ``pad`` True = padding;
        ``prior`` (B, G) the effect prior of each set (None: 0); ``z`` (B, S, E) the cells' SE embeddings
        (input_space='embedding'; computed when None); ``batch`` (B, S) batch indices (batch token; None:
        unknown); ``hidden`` (B,) True = the perturbation's identity is hidden (the unknown-perturbation token
        is added); ``novel`` (B,) True = the set's context had no perturbed training cells (the novel-context
        token is added). See :meth:`forward_both`."""
        return self.forward_both(x, pert, pad, prior, z, batch, hidden, novel)[0]

    def cell_tokens(self, inputs: torch.Tensor, pert: torch.Tensor, batch: torch.Tensor | None,
                    hidden: torch.Tensor | None = None, novel: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, d_model): basal MLP of each cell + the set's perturbation token (+ each cell's batch token;
        ``batch`` (B, S) int64, None = unknown)."""
        h = self.basal(inputs) + self.pert_token(pert, hidden)[:, None, :]
        if novel is not None:
            h = h + novel[:, None, None].to(h.dtype) * self.ctx_novel
        if self.batch_token is not None:
            unknown = self.batch_token.num_embeddings - 1
            batch = torch.full(inputs.shape[:2], unknown, dtype=torch.long, device=inputs.device) if batch is None else batch
            h = h + self.batch_token(batch)
        return h

    def forward_both(self, x: torch.Tensor, pert: torch.Tensor, pad: torch.Tensor | None = None,
                     prior: torch.Tensor | None = None, z: torch.Tensor | None = None,
                     batch: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                     novel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(genes (B, S, G), embeddings (B, S, E) or None)``. Gene space: ``relu(x + prior + head(h))``.
        Embedding space: ``z' = z + head(h)`` and ``relu(x + prior + dec(z') - dec(z))`` (the decoded change).
        An ensemble (``members``) outside training: the mean of its members' outputs (each cell's prediction
        averaged over the independently trained members)."""
        one = self._forward_one(x, pert, pad, prior, z, batch, hidden, novel)
        if self.training or not len(self.members):
            return one
        outs = [one] + [m._forward_one(x, pert, pad, prior, z, batch, hidden, novel) for m in self.members]
        genes = torch.stack([o[0] for o in outs]).mean(0)
        return genes, None if one[1] is None else torch.stack([o[1] for o in outs]).mean(0)

    def _forward_one(self, x: torch.Tensor, pert: torch.Tensor, pad: torch.Tensor | None, prior: torch.Tensor | None,
                     z: torch.Tensor | None, batch: torch.Tensor | None, hidden: torch.Tensor | None,
                     novel: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward_both` of this member alone."""
        shift = 0.0 if prior is None else prior[:, None, :]
        if self.se is None:
            h = self.encoder(self.cell_tokens(x, pert, batch, hidden, novel), src_key_padding_mask=pad)
            corr = self.novel_shrink(self.guard(self.head(h), x, pert, pad, batch, novel), x, pert, pad, batch, novel)
            return torch.relu(x + shift + corr), None
        z = self.embed(x) if z is None else z
        h = self.encoder(self.cell_tokens(z, pert, batch, hidden, novel), src_key_padding_mask=pad)
        z_new = z + self.guard(self.head(h), z, pert, pad, batch, novel)
        return torch.relu(x + shift + self.decoder(z_new) - self.decoder(z)), z_new

    def guard(self, corr: torch.Tensor, inputs: torch.Tensor, pert: torch.Tensor, pad: torch.Tensor | None,
              batch: torch.Tensor | None, novel: torch.Tensor | None = None) -> torch.Tensor:
        """The head's correction ``corr`` (B, S, D) of sets, with the extrapolated part of unseen embedded
        perturbations kept within what training saw.

        For a set whose perturbation includes an unseen target with a gene embedding (``trust`` < 1), the
        correction is ``base + a * (corr - base)``: ``base`` the correction with the unseen targets replaced
        by the unknown-perturbation token (what an unseen target without an embedding gets), ``a`` =
        the target's ``trust`` (its embedding's largest cosine similarity to a trained target's, clipped to
        [0, 1]), and ``a`` lowered further so that the set's mean extrapolated shift ``a * mean(corr - base)``
        is no longer than ``max_shift`` (the largest training effect's norm). Trained perturbations are
        unchanged."""
        trusted = self.trust >= 1
        rows = (pert * ~trusted).sum(1) > 0
        if not bool(rows.any()):
            return corr
        sub = pert[rows] * trusted  # unseen targets dropped; the unknown-perturbation token below
        pad_r = None if pad is None else pad[rows]
        unknown = torch.ones(sub.shape[0], dtype=torch.bool, device=sub.device)  # the prior-only token
        base = self.head(self.encoder(self.cell_tokens(inputs[rows], sub, None if batch is None else batch[rows], unknown,
                                                       None if novel is None else novel[rows]),
                                      src_key_padding_mask=pad_r))
        a = torch.where(pert[rows] > 0, self.trust, torch.ones_like(self.trust)).min(1).values  # (R,)
        diff = corr[rows] - base
        keep = torch.ones(diff.shape[:2], dtype=diff.dtype, device=diff.device) if pad_r is None else (~pad_r).to(diff.dtype)
        mean = (diff * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        norm = (a * mean.norm(dim=1)).clamp_min(1e-12)
        if self.se is None:  # the cap is in gene units
            a = a * (self.max_shift / norm).clamp(max=1.0)
        out = corr.clone()
        out[rows] = base + a[:, None, None] * diff
        return out

    def novel_shrink(self, corr: torch.Tensor, inputs: torch.Tensor, pert: torch.Tensor, pad: torch.Tensor | None,
                     batch: torch.Tensor | None, novel: torch.Tensor | None) -> torch.Tensor:
        """At prediction, the head's correction ``corr`` (B, S, D) of perturbed sets of a novel context (no perturbed
        training cells) as ``base + novel_keep * (corr - base)``: ``base`` the correction with the perturbation's
        identity hidden (the unknown-perturbation token: what the context's basal cells say about any
        perturbation), ``novel_keep`` the prior's cross-context shrinkage w (how far a perturbation's own
        deviation carries over between contexts). Training sets and other contexts are unchanged."""
        if self.training or novel is None or float(self.novel_keep) >= 1:
            return corr
        rows = novel & (pert.sum(1) > 0)
        if not bool(rows.any()):
            return corr
        hidden = torch.ones(int(rows.sum()), dtype=torch.bool, device=pert.device)
        base = self.head(self.encoder(self.cell_tokens(inputs[rows], torch.zeros_like(pert[rows]),
                                                       None if batch is None else batch[rows], hidden, novel[rows]),
                                      src_key_padding_mask=None if pad is None else pad[rows]))
        out = corr.clone()
        out[rows] = base + self.novel_keep * (corr[rows] - base)
        return out

    def set_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) distance between predicted and real sets."""
        if self.loss_name == "energy":
            return energy_distance_torch(pred, target)
        if self.loss_name == "mse":  # per token against a randomly paired real cell (the sets are shuffled)
            return ((pred - target) ** 2).mean((-1, -2))
        try:
            from geomloss import SamplesLoss
        except ImportError:
            raise DataSpecError("state.transition loss='sinkhorn' needs geomloss: pip install 'cellgym[state]' "
                                "(or pip install geomloss), or use loss='energy'.") from None
        return SamplesLoss("sinkhorn", p=2, blur=self.sinkhorn_blur, backend="tensorized")(pred, target)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Mean set loss of a batch of sets: ``x`` (B, S, G) controls, ``y`` (B, S, G) real, ``pert`` (B, P)."""
        pred, z_new = self.forward_both(batch["x"], batch["pert"], prior=batch.get("prior"), z=batch.get("z"),
                                          batch=batch.get("batch"), hidden=batch.get("hidden"), novel=batch.get("novel"))
        per_set = self.set_loss(pred, batch["y"])
        if z_new is not None:  # the paper's ST trains in SE space; the decoded genes are matched too
            per_set = per_set + self.set_loss(z_new, batch["zy"])
        with torch.no_grad():
            mean_err = ((pred.mean(1) - batch["y"].mean(1)) ** 2).mean()
        return LossOutput(per_set.mean(), {"set_" + self.loss_name: per_set.detach().mean(), "mse_of_means": mean_err},
                          n_obs=int(pred.shape[0] * pred.shape[1]))

    @torch.no_grad()
    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None,
                      run: torch.Tensor | None = None) -> torch.Tensor:
        """Cells (B, G) as sets: consecutive rows with the same perturbation and context (and ``run`` id,
        when given) form a set (see :func:`set_layout`), each at most ``set_size`` cells (stored on the
        module by the predictor)."""
        ctx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if ctx is None else ctx
        set_id, slot, n_sets, size = set_layout(pert, ctx if run is None else ctx * (int(run.max()) + 1) + run,
                                                int(self.set_size))
        xs = x.new_zeros(n_sets, size, x.shape[1])
        xs[set_id, slot] = x
        pad = torch.ones(n_sets, size, dtype=torch.bool, device=x.device)
        pad[set_id, slot] = False
        ps = pert.new_zeros(n_sets, pert.shape[1])
        ps[set_id] = pert
        cs = ctx.new_zeros(n_sets)
        cs[set_id] = ctx
        return self.forward(xs, ps, pad, self.prior(ps, cs), novel=self.novel_context[cs] > 0)[set_id, slot]

    set_size: torch.Tensor  # registered by the predictor as a buffer (0-d int64)


def set_layout(pert: torch.Tensor, ctx: torch.Tensor, set_size: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """How rows (B,) of a flat batch are arranged into sets: ``(set_id (B,), slot (B,), n_sets, width)``.

    A run of consecutive rows with the same perturbation row and context is one population; a run
    longer than ``set_size`` is dealt round-robin into ``ceil(len / set_size)`` sets of near-equal size.
    """
    b = pert.shape[0]
    if b == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 0, 1
    change = torch.ones(b, dtype=torch.bool, device=pert.device)
    change[1:] = (pert[1:] != pert[:-1]).any(1) | (ctx[1:] != ctx[:-1])
    run = torch.cumsum(change.long(), 0) - 1
    starts = torch.nonzero(change).flatten()
    lengths = torch.diff(torch.cat([starts, torch.tensor([b], device=pert.device)]))
    pieces = (lengths + set_size - 1) // set_size
    offset = torch.cumsum(pieces, 0) - pieces
    pos = torch.arange(b, device=pert.device) - starts[run]
    set_id = offset[run] + pos % pieces[run]
    slot = pos // pieces[run]
    return set_id, slot, int(pieces.sum()), int(slot.max()) + 1


class StateTransition(Predictor):
    """``state.transition``: State's set transformer (module docstring: architecture, paper, CPU defaults).

    Parameters
    ----------
    set_size
        Cells per set S (training and prediction). Groups smaller than S are sampled with replacement.
    d_model, n_layers, n_heads, dim_feedforward, dropout
        The transformer (``nn.TransformerEncoder``, pre-norm, no positional encoding) and the MLPs.
    loss
        ``"energy"`` (default; energy distance per set), ``"sinkhorn"`` (geomloss's debiased Sinkhorn
        divergence, squared Euclidean cost, ``blur=sinkhorn_blur``; batched over sets; needs the ``state``
        extra) or ``"mse"`` (per token against a randomly paired real cell).
    perturbation_features
        ``"genes"`` (default): a perturbation is the gene embedding of its target (a combination the sum),
        so unseen perturbations are predicted; ``"onehot"``: seen perturbations only.
    gene_embeddings
        Sources of gene embeddings for ``"genes"`` (concatenated): ``"coexpression"`` (default: spectral
        embeddings of the training data's co-expression graph), ``.pt`` files ``{gene: tensor}``, network
        edge lists, or ``"matrix.npz::genes.txt"`` (see :func:`cellgym.predictors.genes.graph_embeddings`).
        A perturbation is named by its target gene symbol.
    embedding_dim
        Width of graph (and co-expression) embeddings.
    learning_rate, weight_decay
        AdamW.
    sets_per_batch
        Sets per gradient step.
    epochs
        Default epochs (None: ``clip(4000 / sets per epoch, 20, 200)``, about 4000 sets in all); an epoch draws each
        (context, perturbation) group ``max(1, round(n_cells / S))`` times, controls included (they teach
        the identity under no perturbation).
    extra_perturbations
        Singles absent from training that may be asked about (e.g. held-out ones): predicted from their
        gene embedding.
    effect_prior
        True (default): the network predicts a correction to an effect prior computed from the training
        pseudobulks, ``x + prior(c, p) + head(h)`` — the context's mean perturbation effect (what
        ``baseline.mean`` knows; pooled over contexts for a context without perturbed training cells)
        plus each single's deviation measured in *other* contexts, shrunk by a factor w estimated by
        leave-one-context-out regression (``shrinkage``; see ``cellgym.predictors.state._prior``).
        Training groups get their leave-group-out prior, and the head starts at zero, so an untrained
        ST predicts the prior. An unseen single whose target is a measured gene also gets the seen
        knockouts' mean change at their own target beyond the mean change there (:attr:`own_target`,
        logged; as GEM-1). False: ``x + head(h)`` (the previous model).
    unseen_fallback
        What an unseen perturbation without perturbation features (no gene embedding, or
        ``perturbation_features='onehot'``) gets: ``"prior"`` (default; listed in :attr:`from_prior`,
        logged at fit time): the unknown-perturbation token, so ST predicts the effect prior corrected for the basal
        cells — the mean effect, as ``baseline.mean`` and gem1's ``mean_of_seen`` do; ``"error"``:
        :class:`UnknownPerturbationError`. Without ``effect_prior`` it is always ``"error"``.
    input_space
        ``"genes"`` (default): tokens are the cells' log1p expression. ``"embedding"``: tokens are the cells'
        ``state.embedding`` (SE) embeddings (the paper's ST-on-SE); the head predicts the change in SE space
        (``z' = z + head(h)``) and a decoder MLP maps it back to genes as ``dec(z') - dec(z)``, added to the
        control cell and the prior. The loss is the set loss in SE space plus in gene space. The SE model is
        frozen and saved inside this checkpoint.
    embedding_model, embedding_epochs
        ``input_space="embedding"``: the folder of a saved ``state.embedding`` fitted on the same genes, or
        None (default) to fit one with default settings on the training cells for ``embedding_epochs``.
    batch_token, batch_unknown_rate
        The paper's optional batch token: with ``batch_token=True`` (needs ``DataSpec.batch_key``) training
        sets are drawn within a (context, batch) with controls of the same batch, and a learned vector per
        batch is added to every cell's token. Prediction knows no batch (the :class:`Predictor` contract
        passes none), so it uses an "unknown batch" vector, trained on a fraction ``batch_unknown_rate`` of
        the sets shown without their batch; ``module.forward(..., batch=...)`` takes explicit batches.

    extrapolation_guard
        True (default): an unseen perturbation predicted from its target's gene embedding stays within what
        training saw: the part of the head's correction that its embedding adds (against the unknown-perturbation token)
        is weighted by the embedding's largest cosine similarity to a trained target's and capped so that
        its mean over the set is no longer than the largest training effect (:meth:`StateTransitionModule.guard`).
        Trained perturbations are unaffected. False: the perturbation MLP extrapolates freely.

    hide_rate
        When some unseen perturbations will be predicted from the prior (``from_prior`` not empty at fit
        time, e.g. ``extra_perturbations`` without an embedding): the fraction of perturbed training sets
        shown without their perturbation's identity (pert row zero, the learned unknown-perturbation token
        added, the prior kept), so the token those perturbations (and the guard's base) use is trained on
        perturbed sets rather than borrowed from the controls. Otherwise no set is hidden (hiding costs the
        seen perturbations training sets; on the simulated test data it lowered unseen embedded
        perturbations' pearson_delta from 0.67 to 0.41 at 25 epochs).

    novel_rate
        When the training data hold a context with control cells only (a held-out cell line whose controls
        are the input) and at least two contexts with perturbed cells: the fraction of training sets shown as
        if their context were held out: with the prior such a context gets (``u`` times the other measured
        contexts' mean effect, plus the transfer term; see ``_prior.py``) and a learned novel-context token
        added to every cell; half of these perturbed sets also hide the perturbation's identity (the
        unknown-perturbation token). At prediction, a context without perturbed training cells gets the
        token, and the head's perturbation-specific part (its correction minus the one with the identity
        hidden) is kept at the prior's cross-context shrinkage ``w`` (``novel_keep``; how far a
        perturbation's own deviation carries over between contexts, 0.00-0.05 on the mcfaline23 lines): what
        the head learned about each perturbation in other lines is shrunk as the prior's transfer term is.
        0: no such sets (the head is trained on measured contexts only).

    n_members
        How many independently initialised STs are trained (each with its own initialisation and set draws
        from a seed derived from ``seed``; the same prior, features and guard) and averaged at prediction
        (each predicted cell is the members' mean; :attr:`members`). None (default): 3 when the held-out-context
        training is on (a context with controls only, see ``novel_rate``), else 1. Why: in a held-out cell line
        the prior is small (``u`` 0.03-0.09 on the mcfaline23 lines) and pearson_delta is scale-invariant, so
        the direction of the predicted change is the head's context-generic output, an extrapolation to cells
        it never saw perturbed that varies with the initialisation (the mean predicted change of three single
        fits correlated 0.37-0.71 between seeds on A172 and T98G, -0.01-0.46 on U87MG); averaging K members
        divides that variance by K. Measured (``benchmarks/state_heldout_lines.py``): with 3 members above
        ``baseline.mean``'s pearson_delta and below its energy distance on every line for seeds 0-2 (one
        member: 6 of 9 on pearson_delta), and on 14 of 15 (line, seed) pairs over seeds 0-4. Training costs K times one fit; data without a
        context of controls only (Norman19 combinations, Papalexi knockouts) train one member by default.

    Notes
    -----
    **Fallback for missing embeddings (explicit):** a *seen* perturbation whose target has no embedding
    in every source gets a learned vector instead (one-hot-like, logged at fit time); an *unseen* one
    without an embedding follows ``unseen_fallback`` (the effect prior, or
    :class:`UnknownPerturbationError` naming the sources). ``predict_batch`` treats consecutive rows with the same perturbation and context as one set
    (:func:`set_layout`); :meth:`predict_sets` takes explicit populations (what environments use).
    """

    name: ClassVar[str] = "state.transition"

    def __init__(
        self,
        *,
        set_size: int = 64,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        dim_feedforward: int = 256,
        dropout: float = 0.1,
        loss: Literal["energy", "sinkhorn", "mse"] = "energy",
        sinkhorn_blur: float = 0.05,
        perturbation_features: Literal["genes", "onehot"] = "genes",
        gene_embeddings: Sequence[str] = (),
        embedding_dim: int = 32,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        sets_per_batch: int = 8,
        epochs: int | None = None,
        extra_perturbations: Sequence[str] = (),
        effect_prior: bool = True,
        unseen_fallback: Literal["error", "prior"] = "prior",
        input_space: Literal["genes", "embedding"] = "genes",
        embedding_model: str | None = None,
        embedding_epochs: int = 10,
        batch_token: bool = False,
        batch_unknown_rate: float = 0.2,
        extrapolation_guard: bool = True,
        hide_rate: float = 0.2,
        novel_rate: float = 0.5,
        n_members: int | None = None,
    ) -> None:
        if loss not in LOSSES:
            raise DataSpecError(f"state.transition loss must be one of {list(LOSSES)}, got {loss!r}.")
        if perturbation_features not in FEATURES:
            raise DataSpecError(f"perturbation_features must be one of {list(FEATURES)}, got {perturbation_features!r}.")
        if unseen_fallback not in ("error", "prior"):
            raise DataSpecError(f"unseen_fallback must be 'error' or 'prior', got {unseen_fallback!r}.")
        if input_space not in ("genes", "embedding"):
            raise DataSpecError(f"input_space must be 'genes' or 'embedding', got {input_space!r}.")
        if not effect_prior:
            unseen_fallback = "error"  # the fallback predicts the prior; without one, refuse
        if n_members is not None and (isinstance(n_members, bool) or int(n_members) != n_members or n_members < 1):
            raise DataSpecError(f"state.transition n_members must be a whole number >= 1 or None (automatic), got {n_members!r}.")
        if set_size < 2 or d_model % n_heads:
            raise DataSpecError(f"need set_size >= 2 and d_model divisible by n_heads; got {set_size}, {d_model}, {n_heads}.")
        super().__init__(
            set_size=int(set_size), d_model=d_model, n_layers=n_layers, n_heads=n_heads, dim_feedforward=dim_feedforward,
            dropout=dropout, loss=loss, sinkhorn_blur=sinkhorn_blur, perturbation_features=perturbation_features,
            gene_embeddings=[str(s) for s in gene_embeddings], embedding_dim=embedding_dim, learning_rate=learning_rate,
            weight_decay=weight_decay, sets_per_batch=sets_per_batch, epochs=epochs,
            extra_perturbations=[str(p) for p in extra_perturbations], effect_prior=bool(effect_prior),
            unseen_fallback=unseen_fallback, input_space=input_space,
            embedding_model=None if embedding_model is None else str(embedding_model), embedding_epochs=int(embedding_epochs),
            batch_token=bool(batch_token), batch_unknown_rate=float(batch_unknown_rate),
            extrapolation_guard=bool(extrapolation_guard), hide_rate=float(hide_rate), novel_rate=float(novel_rate),
            n_members=None if n_members is None else int(n_members),
        )
        #: batch labels of the batch token (``spec.batch_key``'s values at fit time)
        self.batches: list[str] = []
        #: input_space='embedding': the SE model's config and sizes (rebuilds its module from a checkpoint)
        self.se_state: dict[str, Any] | None = None
        self.seen: list[str] = []
        self.pert_dim = 1
        self.unpredictable: list[str] = []
        #: unseen perturbations without features, predicted from the effect prior (``unseen_fallback='prior'``)
        self.from_prior: list[str] = []
        #: extrapolation guard: per-perturbation trust and the cap on an extrapolated set's mean shift
        self.trust: list[float] | None = None
        self.max_shift: float | None = None
        #: how far an embedding's nearest trained neighbour predicts a trained target's effect (the guard's v)
        self.embedding_transfer: float | None = None
        #: the prior's shrinkage u of the mean effect for a context without perturbed cells (see ``_prior.py``)
        self.context_transfer: float | None = None
        #: the prior's cross-context shrinkage w (see ``_prior.py``); None without a prior
        self.shrinkage: float | None = None
        #: members of the fitted ensemble (``n_members`` resolved at fit time)
        self.members = 1
        #: unseen singles whose target is a measured gene: their prior holds the seen knockouts' mean own-target
        #: change at that gene (see ``_prior.py``; as GEM-1's ``own_target``)
        self.own_target: list[str] = []

    # ------------------------------------------------------------------------------------------ building
    def _build_module(self) -> None:
        self.module = self._new_member()
        self.module.members = nn.ModuleList([self._new_member() for _ in range(self.members - 1)])

    def _new_member(self) -> StateTransitionModule:
        """One untrained ST module of this predictor's shape, with the guard and unknown-token buffers set."""
        c = self.config
        module = StateTransitionModule(
            len(self.genes), len(self.perturbations), self.pert_dim, d_model=c["d_model"], n_layers=c["n_layers"],
            n_heads=c["n_heads"], dim_feedforward=c["dim_feedforward"], dropout=c["dropout"], loss=c["loss"],
            sinkhorn_blur=c["sinkhorn_blur"], n_contexts=len(self.contexts), **self._se_module(),
            n_batches=len(self.batches),
        )
        module.register_buffer("set_size", torch.tensor(c["set_size"]))
        if c.get("extrapolation_guard", True) and self.trust is not None:
            module.trust.copy_(torch.tensor(self.trust, dtype=torch.float32))
            module.max_shift.fill_(float(self.max_shift))
        module.unknown_mask.copy_(torch.from_numpy(np.isin(self.perturbations, self.from_prior).astype(np.float32)))
        return module

    def fit_data(self, adata: AnnData) -> FitData:
        """:class:`FitData`; with ``batch_token``, the cells' batch indices (``spec.batch_key``) are kept for ``_fit``."""
        data = super().fit_data(adata)
        self.members = 1  # a refit starts from one member (``_fit`` adds the others)
        self._fit_batch = None
        if self.config["batch_token"]:
            key = self.spec.batch_key
            if key is None or key not in adata.obs:
                raise DataSpecError(f"state.transition batch_token=True needs DataSpec.batch_key naming an obs column "
                                    f"(got {key!r}); pass --batch-key COLUMN or batch_token=False.")
            labels = adata.obs[key].astype(str).to_numpy()
            self.batches, codes = np.unique(labels, return_inverse=True)
            self.batches = [str(b) for b in self.batches]
            self._fit_batch = codes.astype(np.int64)
        return data

    def _se_module(self) -> dict[str, Any]:
        """``se`` (an unfitted SE module of the recorded shape) and ``n_embed`` for input_space='embedding'."""
        if self.config["input_space"] != "embedding" or self.se_state is None:
            return {}
        from ._embedding import StateEmbedding

        se = StateEmbedding(**self.se_state["config"])
        se.genes = list(self.genes)
        se._load_extra_state(self.se_state)
        se._build_module()
        return {"se": se.module, "n_embed": int(self.se_state["config"]["n_embed"])}

    def _fit_embedding(self, data: FitData, seed: int | None) -> Any:
        """The SE model of input_space='embedding': loaded from ``embedding_model`` or fitted on the cells."""
        from ._embedding import StateEmbedding

        path = self.config["embedding_model"]
        if path is not None:
            se = StateEmbedding.load(path)
            if list(se.genes) != list(self.genes):
                raise DataSpecError(f"embedding_model {path!r} was fitted on other genes ({len(se.genes)}) than the data "
                                    f"({len(self.genes)}); fit state.embedding on the same genes.")
        else:
            se = StateEmbedding()
            se.fit_cells(data.x, self.genes, spec=self.spec, epochs=self.config["embedding_epochs"], seed=seed)
        self.se_state = {"config": dict(se.config), **se._extra_state()}
        return se

    def _guard_values(self, data: FitData, table: np.ndarray, learned: np.ndarray) -> tuple[list[float], float]:
        """``trust`` (P,) and ``max_shift`` of the extrapolation guard (see :meth:`StateTransitionModule.guard`).

        1 for trained perturbations and for unseen ones without features (they get the unknown-perturbation token anyway).
        For an unseen embedded target u, ``trust = v * max(0, cos(u, n(u)))``, n(u) its nearest trained target
        by embedding cosine, and ``v`` in [0, 1] how far the embedding's nearest neighbour predicts an effect
        in training: each trained embedded single s's deviation from its context's mean effect is regressed,
        leaving s out, on ``cos(s, n(s)) * dev(n(s))`` (least squares through 0, clipped; 0 with fewer than
        three such singles: no evidence). ``max_shift`` is the largest norm of a training group's pseudobulk
        effect."""
        seen = np.isin(self.perturbations, self.seen)
        norms = np.linalg.norm(table, axis=1)
        has = norms > 0
        trust = np.ones(len(self.perturbations))
        ref = seen & has & (learned == 0)
        unseen = ~seen & has
        bulk = pseudobulk(data, len(self.contexts))
        max_shift = float(np.linalg.norm(bulk.delta, axis=1).max()) if len(bulk.labels) else 0.0
        self.embedding_transfer = None
        if self.config["perturbation_features"] != "genes" or not unseen.any():
            return trust.tolist(), max_shift
        unit = table / np.maximum(norms, 1e-12)[:, None]
        ref_idx = np.flatnonzero(ref)
        # each reference single's deviation from its context's mean effect, averaged over its contexts
        dev, count = np.zeros((len(self.perturbations), data.x.shape[1])), np.zeros(len(self.perturbations))
        ctx_mean = np.stack([bulk.delta[bulk.ctx == c].mean(0) if (bulk.ctx == c).any() else np.zeros(bulk.delta.shape[1])
                             for c in range(len(self.contexts))]) if len(bulk.labels) else None
        for k, lab in enumerate(bulk.labels):
            singles = self.spec.split_label(str(lab))
            if len(singles) == 1 and singles[0] in self.perturbations:
                q = self.perturbations.index(singles[0])
                dev[q] += bulk.delta[k] - ctx_mean[bulk.ctx[k]]
                count[q] += 1
        ref_idx = ref_idx[count[ref_idx] > 0]
        v = 0.0
        if len(ref_idx) >= 3:
            d = dev[ref_idx] / count[ref_idx, None]
            cos = unit[ref_idx] @ unit[ref_idx].T
            np.fill_diagonal(cos, -np.inf)
            nn_ = cos.argmax(1)
            pred = np.clip(cos[np.arange(len(ref_idx)), nn_], 0.0, None)[:, None] * d[nn_]
            v = float(np.clip((pred * d).sum() / max(float((pred * pred).sum()), 1e-12), 0.0, 1.0))
        self.embedding_transfer = v
        if ref_idx.size:
            near = (unit[unseen] @ unit[ref_idx].T).max(1)
            trust[unseen] = np.minimum(v * np.clip(near, 0.0, 1.0), 1.0 - 1e-6)  # < 1: marks the row as extrapolated
        else:
            trust[unseen] = 0.0
        log.info("state.transition: extrapolation guard, embedding transfer v = %.3f; trust of unseen embedded targets "
                 "%s; max shift %.3f", v, {q: round(float(t), 3) for q, t, u in
                                           zip(self.perturbations, trust, unseen, strict=True) if u}, max_shift)
        return trust.tolist(), max_shift

    def _perturbation_features(self, data: FitData) -> tuple[np.ndarray, np.ndarray]:
        """(P, D) features and (P,) learned-fallback mask of the vocabulary; sets ``unpredictable``."""
        p = len(self.perturbations)
        seen = set(self.seen)
        if self.config["perturbation_features"] == "onehot":
            self.unpredictable = [q for q in self.perturbations if q not in seen]
            return np.eye(p, dtype=np.float32), np.zeros(p, np.float32)
        sources = resolve_sources(self.config["gene_embeddings"], data.x, self.genes, dim=self.config["embedding_dim"],
                                  seed=0)
        table, present = embedding_table(sources, self.perturbations, "perturbation targets")
        table = table / max(float(np.sqrt((table[present] ** 2).sum(1).mean())) if present.any() else 1.0, 1e-12)
        learned = ~present & np.isin(self.perturbations, list(seen))
        self.unpredictable = [q for q, ok in zip(self.perturbations, present, strict=True) if not ok and q not in seen]
        if learned.any():
            log.warning("state.transition: %d seen perturbation(s) have no gene embedding and get a learned vector "
                        "(first: %s)", int(learned.sum()), [q for q, f in zip(self.perturbations, learned, strict=True) if f][:5])
        self._sources = ", ".join(s.source for s in sources)
        return table, learned.astype(np.float32)

    # ------------------------------------------------------------------------------------------- fitting
    def _fit(
        self, data: FitData, *, epochs: int | None, batch_size: int, device: str, seed: int | None, logger: Any
    ) -> FitReport:
        self.seen = list(self.perturbations)
        self.perturbations = sorted(set(self.perturbations) | set(self.config["extra_perturbations"]))
        data.pert = self.encode_perturbations(data.labels, check=False).numpy()
        table, learned = self._perturbation_features(data)
        if self.unpredictable and self.config["unseen_fallback"] == "prior":
            self.from_prior, self.unpredictable = self.unpredictable, []
            table[np.isin(self.perturbations, self.from_prior)] = 0.0  # no features: pert_token adds the unknown-perturbation vector (unknown_mask)
            log.warning("state.transition: %d unseen perturbation(s) have no perturbation features and are predicted "
                        "from the effect prior (unseen_fallback='prior'): %s", len(self.from_prior), self.from_prior[:10])
        self.pert_dim = table.shape[1]
        self.trust, self.max_shift = self._guard_values(data, table, learned)
        se = self._fit_embedding(data, seed) if self.config["input_space"] == "embedding" else None
        self._build_module()
        z = None
        if se is not None:
            self.module.se.load_state_dict(se.module.state_dict())
            z = se.embed(data.x).cpu()
        with torch.no_grad():
            self.module.pert_matrix.copy_(torch.from_numpy(table))
            self.module.learned_mask.copy_(torch.from_numpy(learned))
        group_prior = novel_prior = None
        self.own_target = []
        if self.config["effect_prior"]:
            seen = set(self.seen)
            prior, g_ctx, g_labels, g_prior, g_novel = fit_effect_prior(
                data, self.perturbations, len(self.contexts), self.spec.split_label, genes=self.genes,
                unseen=[q for q in self.perturbations if q not in seen])
            self.own_target = list(prior.own_target)
            if self.own_target:
                log.info("state.transition: %d unseen single(s) whose target is a measured gene get the knockouts' "
                         "own-target change %.3f there in the prior (mean over %d seen singles): %s",
                         len(self.own_target), prior.own_target_change, prior.n_own_targets, self.own_target[:10])
            with torch.no_grad():
                self.module.mean_effect.copy_(torch.from_numpy(prior.mean_effect))
                self.module.transfer.copy_(torch.from_numpy(prior.transfer))
            self.shrinkage = prior.shrinkage
            self.context_transfer = prior.context_transfer
            group_prior = {(int(c), str(lab)): row for c, lab, row in zip(g_ctx, g_labels, g_prior, strict=True)}
            # contexts with control cells only (held-out cell lines): trained for on sets shown as held out
            novel_ctx = np.bincount(g_ctx, minlength=len(self.contexts)) == 0
            if g_novel is not None and novel_ctx.any() and self.config.get("novel_rate", 0.0) > 0:
                novel_prior = {(int(c), str(lab)): row for c, lab, row in zip(g_ctx, g_labels, g_novel, strict=True)}
                with torch.no_grad():
                    nn.init.normal_(self.module.ctx_novel, std=0.02)  # as the batch token: apart from "not novel"
                    self.module.novel_keep.fill_(float(prior.shrinkage))
                    self.module.novel_context.copy_(torch.from_numpy(novel_ctx.astype(np.float32)))
                log.info("state.transition: context(s) %s have no perturbed training cells; a fraction %.2f of the "
                         "training sets are shown as from a held-out context", [self.contexts[i] for i in
                         np.flatnonzero(novel_ctx)], self.config["novel_rate"])
            log.info("state.transition: effect prior with cross-context shrinkage w = %.3f, context transfer u = %.3f",
                     prior.shrinkage, prior.context_transfer)
        # ensemble members: the same buffers (features, prior, guard), their own initialisation and set draws
        n_members = self.config.get("n_members")
        n_members = (3 if novel_prior is not None else 1) if n_members is None else n_members
        members = [(self.module, seed)]
        for k in range(1, n_members):
            member_seed = int(np.random.SeedSequence([0 if seed is None else seed, k]).generate_state(1)[0])
            with seeded(member_seed):
                member = self._new_member()
                for name, buf in self.module.named_buffers():
                    member.get_buffer(name).copy_(buf)
                if se is not None:
                    member.se.load_state_dict(self.module.se.state_dict())
                if novel_prior is not None:
                    with torch.no_grad():
                        nn.init.normal_(member.ctx_novel, std=0.02)
            members.append((member, member_seed))
        report = None
        for k, (member, member_seed) in enumerate(members):
            sampler = SetSampler(data, self.config["set_size"], member_seed, group_prior, z,
                                 batch=getattr(self, "_fit_batch", None), unknown_rate=self.config["batch_unknown_rate"],
                                 hide_rate=self.config["hide_rate"] if group_prior is not None and self.from_prior else 0.0,
                                 novel_prior=novel_prior, novel_rate=self.config.get("novel_rate", 0.0))
            n_sets = sampler.slots.shape[0]
            epochs = epochs or self.config["epochs"] or int(np.clip(round(4_000 / n_sets), 20, 200))
            member.to(device)
            out = train_module(
                member, {"group": sampler.slots}, epochs=epochs, batch_size=self.config["sets_per_batch"],
                learning_rate=self.config["learning_rate"], weight_decay=self.config["weight_decay"], device=device,
                seed=member_seed, logger=logger if k == 0 else None, step=sampler.step,
            )
            if report is None:
                report = out  # the first member's curves; the time is the ensemble's
            else:
                report.seconds += out.seconds
        self.module.members = nn.ModuleList([m for m, _ in members[1:]])
        self.members = n_members
        if n_members > 1:
            log.info("state.transition: %d independently initialised members trained; predictions are their mean",
                     n_members)
        report.n_obs = n_sets * self.config["set_size"]  # predicted cells per epoch (the loop counts sets)
        return report

    # ----------------------------------------------------------------------------------------- predicting
    def encode_perturbations(self, labels: Sequence[str], *, check: bool = True) -> torch.Tensor:
        """Multi-hot (B, P); an unseen perturbation without a gene embedding raises (see Notes)."""
        out = super().encode_perturbations(labels)
        if check and self.unpredictable:
            cols = [self.perturbations.index(q) for q in self.unpredictable]
            hit = out[:, cols].sum(0) > 0
            if hit.any():
                bad = [q for q, h in zip(self.unpredictable, hit.tolist(), strict=True) if h]
                why = ("perturbation_features='onehot' knows only trained perturbations"
                       if self.config["perturbation_features"] == "onehot" else
                       f"their targets have no embedding in {getattr(self, '_sources', 'the gene-embedding sources')}")
                raise UnknownPerturbationError(
                    f"state.transition cannot predict unseen perturbation(s) {bad[:10]}: {why}. Refit with "
                    "perturbation_features='genes' and gene_embeddings=[...] that cover their target genes "
                    "(e.g. a protein-embedding .pt file)."
                )
        return out

    @torch.no_grad()
    def predict_sets(self, cells: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Each population (B, N, G) is one set under its perturbation row (B, P); returns (B, N, G).

        Populations larger than ``set_size`` are split as :func:`set_layout` does.
        """
        self._check_fitted()
        b, n, g = cells.shape
        ctx = torch.zeros(b, dtype=torch.long, device=cells.device) if ctx is None else ctx
        if n <= self.config["set_size"]:
            return self.module(cells, pert, prior=self.module.prior(pert, ctx), novel=self.module.novel_context[ctx] > 0)
        # never merge two populations: each is a run of its own (set_layout splits runs by perturbation/context)
        flat = self.module.predict_batch(cells.reshape(b * n, g), pert.repeat_interleave(n, 0),
                                         ctx.repeat_interleave(n), run=torch.arange(b, device=cells.device).repeat_interleave(n))
        return flat.reshape(b, n, g)

    def _extra_state(self) -> dict[str, Any]:
        return {"seen": list(self.seen), "pert_dim": int(self.pert_dim), "unpredictable": list(self.unpredictable),
                "from_prior": list(self.from_prior), "shrinkage": self.shrinkage, "se_state": self.se_state,
                "batches": list(self.batches), "trust": self.trust, "max_shift": self.max_shift,
                "embedding_transfer": self.embedding_transfer, "context_transfer": self.context_transfer,
                "members": self.members, "own_target": list(self.own_target)}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.seen = list(extra["seen"])
        self.pert_dim = int(extra["pert_dim"])
        self.unpredictable = list(extra["unpredictable"])
        self.from_prior = list(extra.get("from_prior", []))
        self.shrinkage = extra.get("shrinkage")
        self.se_state = extra.get("se_state")
        self.batches = list(extra.get("batches", []))
        self.trust = extra.get("trust")  # None in checkpoints from before the guard: no guard
        self.max_shift = extra.get("max_shift")
        self.embedding_transfer = extra.get("embedding_transfer")
        self.context_transfer = extra.get("context_transfer")
        self.members = int(extra.get("members", 1))
        self.own_target = list(extra.get("own_target") or [])  # [] in checkpoints from before it


class SetSampler:
    """Draws training sets: for each slot (a (context, perturbation) group), S of its cells and S control
    cells of its context, with replacement when a group has fewer than S cells (the fit loop's ``step``).

    With ``batch`` (the batch token), groups are (context, batch, perturbation) and the controls come from
    the same (context, batch), as State matches control and perturbed cells by batch; each set carries its
    batch index, or "unknown" (index n_batches) for a fraction ``unknown_rate`` of the sets, so the token
    that prediction uses (no batch is passed there) is trained too.
    """

    def __init__(self, data: FitData, set_size: int, seed: int | None,
                 group_prior: dict[tuple[int, str], np.ndarray] | None = None, z: torch.Tensor | None = None,
                 batch: np.ndarray | None = None, unknown_rate: float = 0.2, hide_rate: float = 0.0,
                 novel_prior: dict[tuple[int, str], np.ndarray] | None = None, novel_rate: float = 0.0) -> None:
        labels = np.asarray(data.labels, dtype=str)
        ctx = data.ctx.astype(np.int64)
        cell_batch = np.zeros(len(labels), np.int64) if batch is None else batch.astype(np.int64)
        unit = ctx * (int(cell_batch.max()) + 1 if len(cell_batch) else 1) + cell_batch  # (context, batch)
        key = np.char.add(np.char.add(unit.astype(str), "\x00"), labels)
        groups, inverse = np.unique(key, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        sizes = np.bincount(inverse, minlength=len(groups))
        first = order[np.concatenate([[0], np.cumsum(sizes)[:-1]])]
        self.set_size = set_size
        self.x = torch.from_numpy(data.x)
        self.members = torch.from_numpy(order)
        self.start = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)[:-1]]))
        self.size = torch.from_numpy(sizes)
        self.pert = torch.from_numpy(data.pert[first])
        self.prior = None
        self.z = z  # (N, E) SE embeddings of the cells (input_space='embedding')
        self.batch = None if batch is None else torch.from_numpy(cell_batch[first])  # (groups,) batch of each group
        self.n_batches = 0 if batch is None else int(cell_batch.max()) + 1
        self.unknown_rate = unknown_rate
        self.hide_rate = hide_rate
        self.perturbed = torch.from_numpy(~np.asarray(data.is_control[first], dtype=bool))  # (groups,)
        if group_prior is not None:  # leave-group-out effect prior of each group (0 for controls)
            zero = np.zeros(data.x.shape[1], np.float32)
            self.prior = torch.from_numpy(np.stack([group_prior.get((int(c), str(lab)), zero)
                                                    for c, lab in zip(ctx[first], labels[first], strict=True)]))
        self.novel_prior = None
        self.novel_rate = novel_rate
        if novel_prior is not None and self.prior is not None:  # the prior were the group's context held out
            self.novel_prior = torch.from_numpy(np.stack([novel_prior.get((int(c), str(lab)), zero)
                                                          for c, lab in zip(ctx[first], labels[first], strict=True)]))
        g_unit = unit[first]
        ctrl_group = {int(u): i for i, (u, is_c) in enumerate(zip(g_unit, data.is_control[first], strict=True)) if is_c}
        missing = sorted({int(u) for u in g_unit} - set(ctrl_group))
        if missing:
            where = "context index(es)" if batch is None else "(context, batch) unit(s)"
            raise DataSpecError(f"state.transition: {where} {missing} have perturbed cells but no controls to form sets "
                                "from" + ("." if batch is None else "; use batch_token=False or a batch key whose batches "
                                          "all hold control cells."))
        self.control_group = torch.tensor([ctrl_group[int(u)] for u in g_unit])
        self.slots = np.repeat(np.arange(len(groups)), np.maximum(1, np.round(sizes / set_size)).astype(np.int64))
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def draw(self, groups: torch.Tensor) -> torch.Tensor:
        """(B, S) cell indices, uniformly with replacement from each group."""
        u = torch.rand(groups.shape[0], self.set_size, generator=self.generator)
        pick = (u * self.size[groups, None]).long().clamp_max(self.size[groups, None] - 1)
        return self.members[self.start[groups, None] + pick]

    def step(self, module: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> LossOutput:
        """One gradient step on a batch of sets (the ``step`` of :func:`train_module`)."""
        groups = batch["group"].cpu()
        device = next(module.parameters()).device
        x_rows, y_rows = self.draw(self.control_group[groups]), self.draw(groups)
        sets = {
            "x": self.x[x_rows].to(device),
            "y": self.x[y_rows].to(device),
            "pert": self.pert[groups].to(device),
        }
        if self.prior is not None:
            sets["prior"] = self.prior[groups].to(device)
        if self.novel_prior is not None and self.novel_rate > 0:  # sets shown as from a held-out context
            novel = torch.rand(groups.shape, generator=self.generator) < self.novel_rate
            sets["prior"] = torch.where(novel[:, None], self.novel_prior[groups], self.prior[groups]).to(device)
            sets["novel"] = novel.to(device)
            # half of them without their perturbation's identity: trains the base of novel_shrink
            hide = novel & self.perturbed[groups] & (torch.rand(groups.shape, generator=self.generator) < 0.5)
            sets["pert"] = sets["pert"].masked_fill(hide[:, None].to(device), 0.0)
            sets["hidden"] = hide.to(device)
        if self.hide_rate > 0:  # perturbed sets without their identity: teaches the unknown-perturbation token
            hide = (torch.rand(groups.shape, generator=self.generator) < self.hide_rate) & self.perturbed[groups]
            sets["pert"] = sets["pert"].masked_fill(hide[:, None].to(device), 0.0)
            sets["hidden"] = hide.to(device) | sets["hidden"] if "hidden" in sets else hide.to(device)
        if self.batch is not None:
            b = self.batch[groups]
            hide = torch.rand(b.shape, generator=self.generator) < self.unknown_rate
            sets["batch"] = b.masked_fill(hide, self.n_batches)[:, None].expand(-1, self.set_size).to(device)
        if self.z is not None:
            sets["z"], sets["zy"] = self.z[x_rows].to(device), self.z[y_rows].to(device)
        out = module.loss(sets)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out
