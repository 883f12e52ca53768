"""``state.embedding``: State's cell-embedding model (SE) and its reward model.

Adduri et al. 2025 (State, Arc Institute, bioRxiv 2025.06.26.661135), SE: a cell is a *sentence* of its
top-expressed genes; each gene token is its gene embedding (the paper: ESM2 protein embeddings) projected
to ``d_model`` plus an encoding of the gene's expression by soft binning; a CLS token is prepended and a
transformer encoder (``nn.TransformerEncoder``, whose attention is SDPA) reads the sentence. Pretraining
predicts the expression of held-out genes from (cell embedding, gene embedding) with an MLP decoder; the
held-out genes are masked out of the sentence. Added here, as the issue asks: a graph-consistency loss
that keeps gene-network neighbours' token embeddings close (Laplacian smoothness over the co-expression
graph of the training data).

CPU-scaled defaults (the paper's in brackets): sentence of 64 genes [2048], d_model 64 [2048], 2 layers
[16], 4 heads [16], no dropout, 32 held-out genes per cell [1280 pos + neg], 16 expression bins [10], cell embedding
width 32 [2048]. ``torch.compile`` is not used (the issue allows it off by default on CPU).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..base import (
    DataSpec,
    FitData,
    FitReport,
    LossOutput,
    Predictor,
    PredictorModule,
    RewardModel,
    seeded,
    train_module,
)
from ..base._data import _finite_check, check_genes, expression
from ..base.errors import DataSpecError
from ..genes import coexpression_graph, embedding_table, resolve_sources
from ..metrics import energy_distance_torch

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["StateEmbedding", "StateEmbeddingModule", "StateEmbeddingReward"]

log = logging.getLogger(__name__)
CHUNK = 2048


class StateEmbeddingModule(PredictorModule):
    """SE network: ``embed(x (N, G)) -> (N, n_embed)`` and the pretraining ``loss``."""

    def __init__(
        self, n_genes: int, gene_dim: int, n_edges: int, *, d_model: int, n_layers: int, n_heads: int, n_bins: int,
        sentence_len: int, n_targets: int, n_embed: int, dropout: float, graph_weight: float,
    ) -> None:
        super().__init__()
        self.sentence_len, self.n_targets, self.graph_weight = min(sentence_len, n_genes), min(n_targets, n_genes), graph_weight
        self.register_buffer("gene_table", torch.zeros(n_genes, gene_dim))
        self.register_buffer("learned_mask", torch.zeros(n_genes, 1))
        self.register_buffer("edges", torch.zeros(n_edges, 2, dtype=torch.long))
        self.register_buffer("edge_weight", torch.zeros(n_edges))
        self.register_buffer("bin_centers", torch.linspace(0.0, 1.0, n_bins))
        self.proj = nn.Linear(gene_dim, d_model)
        self.gene_delta = nn.Parameter(torch.zeros(n_genes, d_model))
        self.bins = nn.Parameter(torch.randn(n_bins, d_model) * 0.02)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, n_embed))
        self.decoder = nn.Sequential(nn.Linear(n_embed + d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, 1))

    def gene_tokens(self) -> torch.Tensor:
        """(G, d_model) token embedding of every gene: projected gene embedding, plus a learned vector
        (the whole token for genes without an embedding: ``learned_mask``)."""
        return self.proj(self.gene_table) * (1.0 - self.learned_mask) + self.gene_delta

    def value_encoding(self, v: torch.Tensor) -> torch.Tensor:
        """Soft binning of expression values (..., ) -> (..., d_model): a softmax over bin centres."""
        width = self.bin_centers[1] - self.bin_centers[0] if self.bin_centers.numel() > 1 else torch.tensor(1.0)
        w = torch.softmax(-((v[..., None] - self.bin_centers) ** 2) / (2 * width**2), dim=-1)
        return w @ self.bins

    def encode(self, x: torch.Tensor, hide: torch.Tensor | None = None) -> torch.Tensor:
        """Cell embeddings (N, n_embed) of cells (N, G); ``hide`` (N, G) bool: genes left out of the sentence."""
        score = x.masked_fill(hide, -1.0) if hide is not None else x
        val, idx = torch.topk(score, self.sentence_len, dim=1)
        pad = val <= 0  # unexpressed or hidden genes are not words of the sentence
        tokens = self.gene_tokens()[idx] + self.value_encoding(val.clamp_min(0.0))
        cls = self.cls.expand(x.shape[0], 1, -1)
        h = self.encoder(torch.cat([cls, tokens], 1), src_key_padding_mask=F.pad(pad, (1, 0), value=False))
        return self.out(h[:, 0])

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Masked expression prediction of ``n_targets`` random genes per cell + graph consistency."""
        x = batch["x"]
        n, g = x.shape
        targets = torch.rand(n, g, device=x.device).argsort(1)[:, : self.n_targets]
        hide = torch.zeros(n, g, dtype=torch.bool, device=x.device).scatter_(1, targets, True)
        z = self.encode(x, hide)
        tok = self.gene_tokens()
        pred = self.decoder(torch.cat([z[:, None, :].expand(-1, self.n_targets, -1), tok[targets]], -1)).squeeze(-1)
        recon = F.mse_loss(pred, x.gather(1, targets))
        if self.edges.shape[0]:
            t = F.normalize(tok, dim=1)
            d = ((t[self.edges[:, 0]] - t[self.edges[:, 1]]) ** 2).sum(1)
            graph = (d * self.edge_weight).sum() / self.edge_weight.sum().clamp_min(1e-12)
        else:
            graph = torch.zeros((), device=x.device)
        return LossOutput(recon + self.graph_weight * graph, {"expression_mse": recon.detach(), "graph": graph.detach()},
                          n_obs=n)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Cell embeddings (N, n_embed), in chunks, no grad."""
        return torch.cat([self.encode(x[s : s + CHUNK]) for s in range(0, x.shape[0], CHUNK)]) if x.shape[0] else \
            x.new_zeros(0, self.out[1].out_features)


class StateEmbedding(Predictor):
    """``state.embedding``: State's SE model (module docstring). Embeds cells; does not predict perturbations.

    Parameters
    ----------
    gene_embeddings
        Gene-embedding sources, concatenated (as for :class:`StateTransition`): ``"coexpression"`` (default),
        ``.pt`` files ``{gene: tensor}`` (e.g. ESM2), network edge lists, ``"matrix.npz::genes.txt"``.
        **Fallback:** genes missing from a source get a learned token embedding (logged); a file that covers
        none of the data's genes raises :class:`GeneEmbeddingError`.
    embedding_dim
        Width of graph embeddings.
    d_model, n_layers, n_heads, dropout
        The transformer.
    n_bins
        Soft expression bins (centres spread over [0, the training data's 99.9th percentile]).
    sentence_len
        Top-expressed genes per cell sentence.
    n_targets
        Genes held out of each sentence and predicted.
    n_embed
        Width of the cell embedding ``obsm['X_state']``.
    graph_weight
        Weight of the graph-consistency loss (co-expression graph of the training data, k = 15).
    learning_rate, weight_decay, epochs
        AdamW; epochs default ``clip(100_000 / n_cells, 10, 100)``.
    """

    name: ClassVar[str] = "state.embedding"
    response_model: ClassVar[bool] = False  # embeds cells; predict_batch raises

    def __init__(
        self,
        *,
        gene_embeddings: Sequence[str] = (),
        embedding_dim: int = 32,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.0,
        n_bins: int = 16,
        sentence_len: int = 64,
        n_targets: int = 32,
        n_embed: int = 32,
        graph_weight: float = 0.1,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int | None = None,
    ) -> None:
        super().__init__(
            gene_embeddings=[str(s) for s in gene_embeddings], embedding_dim=embedding_dim, d_model=d_model,
            n_layers=n_layers, n_heads=n_heads, dropout=dropout, n_bins=n_bins, sentence_len=sentence_len,
            n_targets=n_targets, n_embed=n_embed, graph_weight=graph_weight, learning_rate=learning_rate,
            weight_decay=weight_decay, epochs=epochs,
        )
        self.gene_dim = 1
        self.n_edges = 0

    def fit(
        self,
        adata: AnnData,
        spec: DataSpec | None = None,
        *,
        epochs: int | None = None,
        batch_size: int = 128,
        device: str = "cpu",
        seed: int | None = 0,
        logger: Any = None,
    ) -> FitReport:
        """Pretrain on the cells of ``adata`` (any cells: no perturbation column needed)."""
        spec = spec or DataSpec(counts="auto")
        if adata.n_obs < 2 or adata.n_vars < 2:
            raise DataSpecError(f"state.embedding needs at least 2 cells and 2 genes, got {adata.n_obs} x {adata.n_vars}.")
        _finite_check(adata.X, "adata.X")
        return self.fit_cells(expression(adata, spec), [str(g) for g in adata.var_names], spec=spec, epochs=epochs,
                              batch_size=batch_size, device=device, seed=seed, logger=logger)

    def fit_cells(
        self, x: np.ndarray, genes: Sequence[str] | None = None, *, spec: DataSpec | None = None, epochs: int | None = None,
        batch_size: int = 128, device: str = "cpu", seed: int | None = 0, logger: Any = None,
    ) -> FitReport:
        """Pretrain on log1p expression ``x`` (N, G) with gene names ``genes`` (default ``g0..``): what
        :meth:`fit` does after reading the AnnData (environments and ``state.transition`` call it)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2 or not np.isfinite(x).all():
            raise DataSpecError(f"state.embedding needs finite cells (N >= 2, G >= 2), got shape {x.shape}.")
        self.spec = spec or DataSpec(counts="auto")
        self.genes = [str(g) for g in genes] if genes is not None else [f"g{i}" for i in range(x.shape[1])]
        if len(self.genes) != x.shape[1]:
            raise DataSpecError(f"state.embedding: {len(self.genes)} gene names for {x.shape[1]} genes.")
        spec = self.spec
        self.perturbations, self.contexts = [], [""]
        data = FitData(x=x, counts=None, pert=np.zeros((x.shape[0], 0), np.float32), ctx=np.zeros(x.shape[0], np.int64),
                       labels=np.full(x.shape[0], spec.control, object), is_control=np.ones(x.shape[0], bool))
        with seeded(seed):
            report = self._fit(data, epochs=epochs, batch_size=batch_size, device=device, seed=seed, logger=logger)
        self.module.eval()
        return report

    def _build_module(self) -> None:
        c = self.config
        self.module = StateEmbeddingModule(
            len(self.genes), self.gene_dim, self.n_edges, d_model=c["d_model"], n_layers=c["n_layers"], n_heads=c["n_heads"],
            n_bins=c["n_bins"], sentence_len=c["sentence_len"], n_targets=c["n_targets"], n_embed=c["n_embed"],
            dropout=c["dropout"], graph_weight=c["graph_weight"],
        )

    def _fit(
        self, data: FitData, *, epochs: int | None, batch_size: int, device: str, seed: int | None, logger: Any
    ) -> FitReport:
        c = self.config
        sources = resolve_sources(c["gene_embeddings"], data.x, self.genes, dim=c["embedding_dim"], seed=0)
        table, present = embedding_table(sources, self.genes, "genes")
        if not present.all():
            log.warning("state.embedding: %d of %d genes lack an embedding and get a learned token (first: %s)",
                        int((~present).sum()), len(self.genes), [g for g, p in zip(self.genes, present, strict=True) if not p][:5])
        graph = coexpression_graph(data.x).tocoo()
        upper = graph.row < graph.col
        self.gene_dim, self.n_edges = table.shape[1], int(upper.sum())
        self._build_module()
        m = self.module
        with torch.no_grad():
            m.gene_table.copy_(torch.from_numpy(table / max(float(np.sqrt((table[present] ** 2).sum(1).mean())), 1e-12)
                                                if present.any() else table))
            m.learned_mask.copy_(torch.from_numpy((~present).astype(np.float32))[:, None])
            m.edges.copy_(torch.from_numpy(np.stack([graph.row[upper], graph.col[upper]], 1).astype(np.int64)))
            m.edge_weight.copy_(torch.from_numpy(graph.data[upper].astype(np.float32)))
            top = float(np.quantile(data.x[data.x > 0], 0.999)) if (data.x > 0).any() else 1.0
            m.bin_centers.copy_(torch.linspace(0.0, top, m.bin_centers.numel()))
        epochs = epochs or c["epochs"] or int(np.clip(round(100_000 / data.x.shape[0]), 10, 100))
        return train_module(m, {"x": data.x}, epochs=epochs, batch_size=batch_size, learning_rate=c["learning_rate"],
                            weight_decay=c["weight_decay"], device=device, seed=seed, logger=logger)

    # ------------------------------------------------------------------------------------------ embedding
    def embed(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Cell embeddings (N, n_embed) of log1p expression (N, G) with this model's genes."""
        self._check_fitted()
        t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
        if t.ndim != 2 or t.shape[1] != len(self.genes):
            raise DataSpecError(f"state.embedding: expected cells (N, {len(self.genes)}), got shape {tuple(t.shape)}.")
        return self.module.embed(t.to(next(self.module.parameters()).device))

    def transform(self, adata: AnnData, key: str = "X_state") -> np.ndarray:
        """Embed the cells of ``adata`` into ``adata.obsm[key]`` (in place, as scanpy's tools do); returns it."""
        self._check_fitted()
        check_genes(self.genes, adata.var_names)
        z = self.embed(expression(adata, self.spec)).cpu().numpy()
        adata.obsm[key] = z
        return z

    def predict_batch(self, x: torch.Tensor, pert: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Not a response model: raises :class:`DataSpecError` (use ``state.transition``)."""
        raise DataSpecError("state.embedding embeds cells and does not predict perturbation responses; use "
                            "state.transition (or state.embedding as a reward model / with transform()).")

    def _extra_state(self) -> dict[str, Any]:
        return {"gene_dim": int(self.gene_dim), "n_edges": int(self.n_edges)}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.gene_dim, self.n_edges = int(extra["gene_dim"]), int(extra["n_edges"])


_SE_CACHE: dict[str, StateEmbedding] = {}


def _fitted_se(x: np.ndarray, epochs: int, seed: int) -> StateEmbedding:
    """An SE model with default settings fitted on ``x``, once per process for the same cells, epochs and seed
    (a vector env builds its world once per sub-env; all get the same model)."""
    key = hashlib.sha256(x.tobytes() + repr((x.shape, epochs, seed)).encode()).hexdigest()
    if key not in _SE_CACHE:
        model = StateEmbedding()
        model.fit_cells(x, epochs=epochs, seed=seed)
        log.info("state.embedding reward: fitted an SE model on %d cells (%d epochs)", x.shape[0], epochs)
        if len(_SE_CACHE) >= 4:
            _SE_CACHE.pop(next(iter(_SE_CACHE)))
        _SE_CACHE[key] = model
    return _SE_CACHE[key]


class StateEmbeddingReward(RewardModel):
    """``state.embedding`` reward: energy distance of each population to the goal cells in SE space.

    Parameters
    ----------
    predictor
        A fitted :class:`StateEmbedding` or the folder of a saved one.
    target
        Goal cells (M, G), log1p expression with the model's genes.
    cells, epochs, seed
        Without ``predictor``: an SE model with default settings is fitted on ``cells`` and ``target``
        for ``epochs`` epochs (what ``reward="state.embedding"`` does in a data world, with the world's
        source cells).
    """

    name: ClassVar[str] = "state.embedding"
    response_model: ClassVar[bool] = False  # embeds cells; predict_batch raises

    def __init__(
        self, predictor: StateEmbedding | str | Path | None = None, target: np.ndarray | torch.Tensor | None = None, *,
        cells: np.ndarray | torch.Tensor | None = None, epochs: int = 10, seed: int = 0,
    ) -> None:
        if target is None or (predictor is None and cells is None):
            raise DataSpecError("the state.embedding reward needs target=<goal cells (M, G)> and predictor=<fitted "
                                "state.embedding or its folder> (or cells=<cells to fit one on>); e.g. "
                                "StateEmbeddingReward(model, target=cells), or reward='state.embedding' in a data world.")
        if predictor is None:  # by name in a data world: fit SE on the world's cells (source and goal)
            predictor = _fitted_se(np.concatenate([np.asarray(cells, np.float32), np.asarray(target, np.float32)]),
                                   epochs, seed)
        if not isinstance(predictor, Predictor):
            predictor = Predictor.load(predictor)
        if not isinstance(predictor, StateEmbedding):
            raise DataSpecError(f"the state.embedding reward needs a state.embedding model, got {predictor.name!r}.")
        self.predictor = predictor
        self.goal = predictor.embed(target)

    @torch.no_grad()
    def distance(self, cells: torch.Tensor) -> torch.Tensor:
        """Energy distance (B,) between each population (B, N, G) and the goal, in SE space."""
        b, n, g = cells.shape
        z = self.predictor.embed(cells.reshape(b * n, g)).reshape(b, n, -1)
        # float64: cdist's matrix-product path loses ~1e-5 in float32 and differs with the batch's shape
        return energy_distance_torch(z.double(), self.goal.double().expand(b, -1, -1)).float()
