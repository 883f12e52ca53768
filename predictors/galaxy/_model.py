"""``galaxy``: cross-species integration through macrogenes, and perturbation transfer between species.

Galaxy (a successor of SATURN, Rosen et al., Nature Methods 2024) embeds cells of several species in one
space without one-to-one orthologs: genes are grouped into shared *macrogenes* by their protein and
text-description embeddings (:mod:`cellgym.predictors.galaxy._macrogenes`), and an autoencoder on
macrogene expression learns ``X_galaxy``.

Training objective (fixed weights; Galaxy's multiple-gradient-descent balancing is not implemented)::

    loss = reconstruction + adversary_weight * species_CE(GRL(z)) + classifier_weight * celltype_CE(z)

- *reconstruction*: mean squared error of the species-conditioned decoder's output against the cell's
  log1p expression over that species' genes (a per-species output head);
- *species_CE*: a discriminator predicts the species from ``z`` behind a gradient-reversal layer, so the
  encoder is trained to remove species information (weight 1.0 by default);
- *celltype_CE*: a linear classifier of cell types on ``z`` for cells whose species' AnnData has the
  ``celltype_key`` column (weight 1.0; cells without a label contribute nothing).

A random ``validation_fraction`` of cells is held out; after every epoch the held-out reconstruction
error plus classifier cross-entropy is computed and the weights of the best epoch are kept (the
*best checkpoint*), recorded in the history as ``val_score``.

Perturbation transfer (``transfer=``): the perturbations of the *source* species are learned as shifts
of ``X_galaxy`` (an additive least-squares fit of per-label mean latents minus the control mean, so
combinations decompose into singles) and applied to the *target* species' cells, decoded by the target
head: ``x + decode_t(z + delta) - decode_t(z)``.

- ``"latent"``: the source's latent deltas are used as they are;
- ``"macrogene"``: the source's deltas in (standardised) macrogene space are added to the target's
  control cells' macrogene expression and encoded; the mean latent change is the delta;
Contexts are the target species' ``spec.context_key`` values (for the predictor contract); the transferred
effect is the same in every context (the source's pooled effect). One AnnData (split by
``spec.species_key``, else a single species) also fits: with one species and no embeddings, the genes'
loadings on the data's principal components (co-expression) are the gene embedding, and ``galaxy`` is a
latent-shift perturbation model within that species.

- ``"basal"``: latents are mapped between species by a linear regression (scikit-learn
  ``LinearRegression``) fitted on mutual-nearest-neighbour pairs of the two species' control cells in
  ``X_galaxy``; the source delta is carried through its linear part.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from ..base import DataSpec, DataSpecError, FitReport, Predictor, expression, seeded, train_module, validate
from ..genes import GeneEmbeddings, load_embeddings
from ._macrogenes import Macrogenes, build_macrogenes
from ._module import GalaxyModule
from ._testbed import pca_gene_embeddings

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["GalaxyPredictor", "Transfer"]

log = logging.getLogger(__name__)
Transfer = Literal["latent", "macrogene", "basal"]
CHUNK = 8192


def _as_embeddings(value: GeneEmbeddings | str | Path, what: str) -> GeneEmbeddings:
    return value if isinstance(value, GeneEmbeddings) else load_embeddings(value)


def write_h5ad(adata: AnnData, path: Path) -> Path:
    """``adata.write_h5ad`` under a temporary name in the same folder, then renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.h5ad")
    adata.write_h5ad(tmp)
    os.replace(tmp, path)
    return path


class GalaxyPredictor(Predictor):
    """Galaxy / SATURN-style cross-species model, registered as ``galaxy``.

    As a perturbation-response predictor it works in the **target** species: ``genes`` are the target's
    genes and ``perturbations`` the source species' perturbations, transferred through ``X_galaxy``.

    Parameters
    ----------
    species
        Species names in order (default: the keys of the dict given to :meth:`fit`).
    source, target
        Species the perturbations come from / are predicted in (default: the species whose data has
        perturbed cells, and the first other species).
    celltype_key
        obs column with cell types (used by the classifier and the trees); ``None``: none.
    n_macrogenes
        Macrogenes per modality (k-means clusters); SATURN's default 2000.
    n_latent, n_hidden, dropout
        Network sizes.
    adversary_weight, classifier_weight
        Loss weights (see the module docstring).
    epochs, learning_rate, validation_fraction
        Training options; the epoch with the best held-out score is kept.
    transfer
        ``"latent"``, ``"macrogene"`` or ``"basal"`` (see the module docstring).
    """

    name: ClassVar[str] = "galaxy"

    def __init__(
        self,
        *,
        species: list[str] | None = None,
        source: str | None = None,
        target: str | None = None,
        celltype_key: str | None = None,
        n_macrogenes: int = 2000,
        n_latent: int = 32,
        n_hidden: int = 256,
        dropout: float = 0.1,
        adversary_weight: float = 1.0,
        classifier_weight: float = 1.0,
        epochs: int = 50,
        learning_rate: float = 1e-3,
        validation_fraction: float = 0.1,
        transfer: Transfer = "latent",
    ) -> None:
        if transfer not in ("latent", "macrogene", "basal"):
            raise DataSpecError(f"galaxy transfer={transfer!r}: expected 'latent', 'macrogene' or 'basal'.")
        super().__init__(
            species=species, source=source, target=target, celltype_key=celltype_key, n_macrogenes=n_macrogenes,
            n_latent=n_latent, n_hidden=n_hidden, dropout=dropout, adversary_weight=adversary_weight,
            classifier_weight=classifier_weight, epochs=epochs, learning_rate=learning_rate,
            validation_fraction=validation_fraction, transfer=transfer,
        )
        self.species_genes: dict[str, list[str]] = {}
        self.celltypes: list[str] = []
        self.macrogene_sizes: list[int] = []
        self.macrogenes: Macrogenes | None = None

    # -------------------------------------------------------------------------------------------- fitting
    def fit(  # type: ignore[override]
        self,
        adata: Mapping[str, AnnData],
        spec: DataSpec | None = None,
        *,
        protein_embeddings: Mapping[str, GeneEmbeddings | str | Path] | None = None,
        text_embeddings: Mapping[str, GeneEmbeddings | str | Path] | None = None,
        macrogenes: Macrogenes | None = None,
        epochs: int | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        seed: int | None = 0,
        logger: Any = None,
    ) -> FitReport:
        """Build macrogenes and train on ``{species: AnnData}`` (log1p X or raw counts, per ``spec``).

        Give ``protein_embeddings`` and/or ``text_embeddings`` as ``{species: GeneEmbeddings or .pt
        path}``, or ready ``macrogenes``. The source species' ``spec.perturbation_key`` column labels
        its perturbed cells; species without that column count as all control.
        """

        spec = spec or DataSpec()
        cfg = self.config
        adata = self._by_species(adata, spec)
        species = list(cfg["species"] or adata)
        if sorted(species) != sorted(adata):
            raise DataSpecError(f"galaxy species {species} differ from the data's {list(adata)}.")
        data = {s: self._with_labels(adata[s], spec, s) for s in species}
        x = {s: expression(data[s], spec) for s in species}
        genes = {s: [str(g) for g in data[s].var_names] for s in species}
        if macrogenes is None:
            modal = {}
            for modality, given in (("protein", protein_embeddings), ("text", text_embeddings)):
                if given:
                    absent = [s for s in species if s not in given]
                    if absent:
                        raise DataSpecError(f"{modality} embeddings: none given for species {absent}; pass one per species.")
                    modal[modality] = {s: _as_embeddings(given[s], modality) for s in species}
            if not modal and len(species) > 1:
                raise DataSpecError("galaxy.fit needs gene embeddings: protein_embeddings= and/or text_embeddings= "
                                    "({species: .pt file or GeneEmbeddings}), or macrogenes=.")
            if not modal:  # one species: the data's own co-expression (PCA loadings) as the gene embedding
                modal = {"protein": {s: pca_gene_embeddings(x[s], genes[s], dim=min(32, len(genes[s]))) for s in species}}
            n_genes = min(sum(len(g) for g in genes.values()), cfg["n_macrogenes"])
            if n_genes < cfg["n_macrogenes"]:
                log.warning("galaxy: %d macrogenes requested but the species have %d genes in all; using %d",
                            cfg["n_macrogenes"], n_genes, n_genes)
            macrogenes = build_macrogenes(genes, modal, n_macrogenes=n_genes, seed=0 if seed is None else seed)
        for s in species:
            for m, lost in macrogenes.missing.get(s, {}).items():
                if lost:
                    log.warning("galaxy: %d of %d %s genes have no %s embedding (zero weight rows), e.g. %s",
                                len(lost), len(genes[s]), s, m, lost[:5])
        self.macrogenes = macrogenes
        labels = {s: data[s].obs[spec.perturbation_key].astype(str).to_numpy() for s in species}
        perturbed = [s for s in species if (labels[s] != spec.control).any()]
        source = cfg["source"] or (perturbed[0] if perturbed else species[0])
        target = cfg["target"] or next((s for s in species if s != source), source)
        for what, s in (("source", source), ("target", target)):
            if s not in species:
                raise DataSpecError(f"galaxy {what} species {s!r} is not among the data's species {species}.")
        self.config.update(species=species, source=source, target=target)
        self.spec = spec
        self.species_genes = genes
        self.genes = genes[target]
        self.perturbations = sorted({p for lab in np.unique(labels[source]) for p in spec.split_label(lab)})
        ctx_key = spec.context_key
        self.contexts = sorted(data[target].obs[ctx_key].astype(str).unique()) if ctx_key and ctx_key in data[target].obs else [""]
        key = cfg["celltype_key"]
        self.celltypes = sorted({str(v) for s in species if key and key in data[s].obs for v in data[s].obs[key].astype(str)})
        self.macrogene_sizes = macrogenes.sizes
        with seeded(seed):
            self._build_module()
            report = self._train(data, x, labels, spec, epochs, batch_size, device, seed, logger)
        self.module.eval()
        return report

    def _by_species(self, adata: Any, spec: DataSpec) -> dict[str, AnnData]:
        """``{species: AnnData}`` from a mapping, or from one AnnData split by ``spec.species_key`` (else one species)."""
        from anndata import AnnData

        if isinstance(adata, Mapping) and adata and all(isinstance(a, AnnData) for a in adata.values()):
            return dict(adata)
        if not isinstance(adata, AnnData):
            raise DataSpecError(
                "galaxy.fit takes {species: AnnData} (e.g. {'human': a, 'mouse': b}) with their gene embeddings, or one "
                "AnnData (split by spec.species_key); from the command line: cellgym fit --predictor galaxy --data A.h5ad "
                "B.h5ad --species human mouse --protein-embeddings A.pt B.pt --out DIR."
            )
        key = spec.species_key
        if key is not None and key in adata.obs:
            col = adata.obs[key].astype(str)
            return {s: adata[(col == s).to_numpy()].copy() for s in col.unique()}
        return {(self.config["species"] or ["species"])[0]: adata}

    def _with_labels(self, adata: AnnData, spec: DataSpec, species: str) -> AnnData:
        if spec.perturbation_key not in adata.obs:
            adata = adata.copy()
            adata.obs[spec.perturbation_key] = spec.control
        try:
            validate(adata, spec, require_control=False)
        except DataSpecError as exc:
            raise DataSpecError(f"species {species!r}: {exc}") from None
        return adata

    def _build_module(self) -> None:
        cfg = self.config
        species = cfg["species"]
        if list(self.genes) != self.species_genes[cfg["target"]]:
            raise ValueError(f"the genes ({len(self.genes)}) differ from the target species' {len(self.species_genes[cfg['target']])}")
        self.module = GalaxyModule(
            sum(self.macrogene_sizes), [len(self.species_genes[s]) for s in species], len(self.celltypes),
            len(self.perturbations), n_latent=cfg["n_latent"], n_hidden=cfg["n_hidden"], dropout=cfg["dropout"],
            adversary_weight=cfg["adversary_weight"], classifier_weight=cfg["classifier_weight"],
            target=species.index(cfg["target"]),
        )

    def _fit(self, data: Any, **kw: Any) -> FitReport:  # the contract's hook; Galaxy trains through fit()
        raise NotImplementedError("GalaxyPredictor trains through fit({species: AnnData}, ...)")

    def _train(self, data, x, labels, spec, epochs, batch_size, device, seed, logger) -> FitReport:
        cfg, module, species = self.config, self.module, self.config["species"]
        rng = np.random.default_rng(0 if seed is None else seed)
        m_all, x_all, s_all, c_all = [], [], [], []
        gmax = max(len(self.species_genes[s]) for s in species)
        index = {c: i for i, c in enumerate(self.celltypes)}
        key = cfg["celltype_key"]
        for i, s in enumerate(species):
            w = torch.from_numpy(self.macrogenes.matrix(s))
            module.get_buffer(f"w_{i}").copy_(w)
            m = torch.from_numpy(x[s]) @ w
            module.shift[i] = m.mean(0)
            module.scale[i] = m.std(0).clamp_min(1e-3)
            m_all.append((m - module.shift[i]) / module.scale[i])
            pad = np.zeros((x[s].shape[0], gmax), np.float32)
            pad[:, : x[s].shape[1]] = x[s]
            x_all.append(torch.from_numpy(pad))
            s_all.append(torch.full((x[s].shape[0],), i, dtype=torch.long))
            if key and key in data[s].obs:
                c_all.append(torch.as_tensor([index[str(v)] for v in data[s].obs[key].astype(str)], dtype=torch.long))
            else:
                c_all.append(torch.full((x[s].shape[0],), -1, dtype=torch.long))
        tensors = {"m": torch.cat(m_all), "x": torch.cat(x_all), "species": torch.cat(s_all), "celltype": torch.cat(c_all)}
        n = tensors["m"].shape[0]
        n_val = round(cfg["validation_fraction"] * n)
        order = rng.permutation(n)
        val_rows, train_rows = order[:n_val], order[n_val:]
        train = {k: v[train_rows] for k, v in tensors.items()}
        val = {k: v[val_rows] for k, v in tensors.items()}
        best: dict[str, Any] = {"score": np.inf, "epoch": -1, "state": None}
        scores: list[float] = []

        def on_epoch_end(epoch: int, means: dict[str, float]) -> None:
            if n_val == 0:
                score = means["reconstruction"] + means["classifier"]
            else:
                module.eval()
                with torch.no_grad():
                    out = module.loss({k: v.to(device) for k, v in val.items()})
                module.train()
                score = float(out.components["reconstruction"] + out.components["classifier"])
            scores.append(score)
            if logger is not None:
                logger.add_scalar("fit/val_score", score, epoch)
            if score < best["score"]:
                best.update(score=score, epoch=epoch, state=copy.deepcopy(module.state_dict()))

        report = train_module(
            module, train, epochs=epochs or cfg["epochs"], batch_size=batch_size, learning_rate=cfg["learning_rate"],
            device=device, seed=seed, logger=logger, on_epoch_end=on_epoch_end,
        )
        report.history["val_score"] = scores
        module.load_state_dict(best["state"])
        module.to("cpu").eval()
        self.best_epoch = best["epoch"]
        self._fit_deltas(x, labels, spec)
        return report

    # ------------------------------------------------------------------------------------------ transfer
    def _latents(self, x: np.ndarray, species: str) -> torch.Tensor:
        i = self.config["species"].index(species)
        with torch.no_grad():
            return torch.cat([self.module.embed_cells(torch.from_numpy(x[a : a + CHUNK]), i) for a in range(0, x.shape[0], CHUNK)]) \
                if x.shape[0] else torch.zeros(0, self.config["n_latent"])

    def _fit_deltas(self, x: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], spec: DataSpec) -> None:
        """Per-perturbation deltas in ``X_galaxy`` (see ``transfer`` in the module docstring)."""
        if not self.perturbations:
            return
        cfg = self.config
        src, tgt = cfg["source"], cfg["target"]
        lab = labels[src]
        control = lab == spec.control
        if not control.any():
            raise DataSpecError(f"source species {src!r} has no {spec.control!r} cells; its perturbation effects need controls.")
        if cfg["transfer"] == "macrogene":
            i = cfg["species"].index(src)
            feats = torch.from_numpy(self.macrogenes.transform(x[src], self.species_genes[src], src))
            feats = (feats - self.module.shift[i]) / self.module.scale[i]
        else:
            feats = self._latents(x[src], src)
        delta = self._additive_deltas(feats, lab, control, spec)
        if cfg["transfer"] == "macrogene":
            t = cfg["species"].index(tgt)
            tgt_ctrl = x[tgt][labels[tgt] == spec.control]
            with torch.no_grad():
                m = (torch.from_numpy(tgt_ctrl) @ self.module.weights(t) - self.module.shift[t]) / self.module.scale[t]
                z0 = self.module.encode(m)
                delta = torch.stack([(self.module.encode(m + d) - z0).mean(0) for d in delta])
        elif cfg["transfer"] == "basal":
            delta = delta @ self._basal_map(x, labels, spec).T
        self.module.delta.copy_(delta)

    def _additive_deltas(self, feats: torch.Tensor, lab: np.ndarray, control: np.ndarray, spec: DataSpec) -> torch.Tensor:
        base = feats[torch.from_numpy(control)].mean(0)
        uniq = [u for u in np.unique(lab) if u != spec.control]
        design = self.encode_perturbations(uniq).double()
        means = torch.stack([feats[torch.from_numpy(lab == u)].mean(0) - base for u in uniq]).double()
        return torch.linalg.lstsq(design, means, driver="gelsd").solution.float()

    def _basal_map(self, x: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], spec: DataSpec) -> torch.Tensor:
        """Linear part A (d, d) of ``z_target ~ A z_source + b`` fitted on mutual nearest neighbours of controls."""
        from sklearn.linear_model import LinearRegression
        from sklearn.neighbors import NearestNeighbors

        src, tgt = self.config["source"], self.config["target"]
        zs = self._latents(x[src][labels[src] == spec.control], src).numpy()
        zt = self._latents(x[tgt][labels[tgt] == spec.control], tgt).numpy()
        k = min(5, zs.shape[0], zt.shape[0])
        st = NearestNeighbors(n_neighbors=k).fit(zt).kneighbors(zs, return_distance=False)
        ts = NearestNeighbors(n_neighbors=k).fit(zs).kneighbors(zt, return_distance=False)
        pairs = [(i, j) for i in range(zs.shape[0]) for j in st[i] if i in ts[j]]
        if len(pairs) < zs.shape[1] + 1:
            raise DataSpecError(f"basal transfer: only {len(pairs)} mutual-nearest-neighbour pairs between {src} and {tgt} "
                                "controls; use transfer='latent' or more control cells.")
        a, b = np.array(pairs).T
        reg = LinearRegression().fit(zs[a], zt[b])
        return torch.as_tensor(reg.coef_, dtype=torch.float32)

    # ------------------------------------------------------------------------------------------ embedding
    def _species_x(self, adata: AnnData, species: str) -> np.ndarray:
        self._check_fitted()
        if species not in self.species_genes:
            raise DataSpecError(f"unknown species {species!r}; the model knows {self.config['species']}.")
        genes = self.species_genes[species]
        if list(map(str, adata.var_names)) != genes:
            from ..base import check_genes

            check_genes(genes, adata.var_names)
            adata = adata[:, genes]
        return expression(adata, self.spec)

    def macrogene_expression(self, adata: AnnData, species: str) -> np.ndarray:
        """Macrogene expression (N, K) of a species' cells (log1p X or counts per the fitted spec)."""
        x = self._species_x(adata, species)
        # numpy, as Macrogenes.transform computes it, so saved weights reproduce these values bit for bit
        return x @ self.module.weights(self.config["species"].index(species)).numpy()

    def embed(self, adata: AnnData, species: str) -> np.ndarray:
        """``X_galaxy`` (N, n_latent) of a species' cells."""
        return self._latents(self._species_x(adata, species), species).numpy()

    def integrate(self, adata: Mapping[str, AnnData]) -> AnnData:
        """One AnnData of macrogene expression of all species with ``obsm['X_galaxy']`` and ``obs['species']``."""
        import anndata as ad

        parts = []
        key = self.config["celltype_key"]
        for s, a in adata.items():
            obs = pd.DataFrame({"species": s}, index=[f"{s}:{i}" for i in a.obs_names])
            if key and key in a.obs:
                obs[key] = a.obs[key].astype(str).to_numpy()
            part = ad.AnnData(self.macrogene_expression(a, s), obs=obs, var=pd.DataFrame(index=self.macrogene_names))
            part.obsm["X_galaxy"] = self.embed(a, s)
            parts.append(part)
        out = ad.concat(parts, join="outer")
        out.obs["species"] = pd.Categorical(out.obs["species"], categories=list(adata))
        return out

    @property
    def macrogene_names(self) -> list[str]:
        """Names of the macrogene columns: ``protein_0 ... text_0 ...``."""
        names = self._extra_state()["modalities"]
        return [f"{m}_{k}" for m, size in zip(names, self.macrogene_sizes, strict=True) for k in range(size)]

    def write_outputs(self, folder: str | Path, adata: Mapping[str, AnnData], *, history: FitReport | None = None,
                      saturn_pickle: bool = False) -> dict[str, Path]:
        """Galaxy's output folder: merged and per-species AnnData, weights, training log, best checkpoint.

        ``macrogene_merged_with_galaxy.h5ad``, ``<species>_processed.h5ad`` (the input cells with
        ``obsm['X_galaxy']`` and ``obsm['X_macrogenes']``), ``macrogenes.npz`` (see
        :class:`Macrogenes`), ``training_log.csv``, ``model/`` (``Predictor.load``-able); with
        ``saturn_pickle`` also SATURN's ``all-<modality>_to_macrogenes.pkl`` (export only).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {"merged": write_h5ad(self.integrate(adata), folder / "macrogene_merged_with_galaxy.h5ad")}
        for s, a in adata.items():
            a = a.copy()
            a.obsm["X_galaxy"] = self.embed(a, s)
            a.obsm["X_macrogenes"] = self.macrogene_expression(a, s)
            out[s] = write_h5ad(a, folder / f"{s}_processed.h5ad")
        if self.macrogenes is not None:
            out["weights"] = self.macrogenes.save(folder / "macrogenes.npz")
            if saturn_pickle:
                self.macrogenes.export_saturn_pickle(folder)
        if history is not None:
            log_path = folder / "training_log.csv"
            tmp = log_path.with_name(f".{log_path.name}.tmp")
            pd.DataFrame(history.history).rename_axis("epoch").to_csv(tmp)
            os.replace(tmp, log_path)
            out["log"] = log_path
        out["model"] = self.save(folder / "model")
        return out

    # ---------------------------------------------------------------------------------------- persistence
    def _extra_state(self) -> dict[str, Any]:
        modalities = self.macrogenes.modalities if self.macrogenes is not None else getattr(self, "_modalities", [])
        return {"species_genes": self.species_genes, "celltypes": self.celltypes,
                "macrogene_sizes": list(self.macrogene_sizes), "modalities": list(modalities)}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.species_genes = {s: list(g) for s, g in extra["species_genes"].items()}
        self.celltypes = list(extra["celltypes"])
        self.macrogene_sizes = list(extra["macrogene_sizes"])
        self._modalities = list(extra["modalities"])
