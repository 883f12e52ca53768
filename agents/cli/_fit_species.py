"""``cellgym fit`` for cross-species predictors (``galaxy``): one .h5ad and gene-embedding file per species.

Example::

    cellgym fit --predictor galaxy --data human.h5ad mouse.h5ad --species human mouse \\
        --celltype-key cell_type --protein-embeddings human_esm.pt mouse_esm.pt \\
        --text-embeddings human_text.pt mouse_text.pt --out runs/galaxy --epochs 50

``--out`` receives Galaxy's outputs: ``macrogene_merged_with_galaxy.h5ad`` (macrogene expression,
``obsm['X_galaxy']``), ``<species>_processed.h5ad``, ``macrogenes.npz`` (gene -> macrogene weights),
``training_log.csv``, the best checkpoint ``model/`` (reload with ``Predictor.load``), and with
``--celltype-key`` the cross-species cell-type tree ``celltype_tree.nwk`` / ``.png``.
"""

from __future__ import annotations

import argparse
from typing import Any

from cellgym.predictors.base.errors import DataSpecError


def add_options(p: argparse.ArgumentParser) -> None:
    """The cross-species option group of ``cellgym fit``."""
    g = p.add_argument_group("cross-species predictors (galaxy): one --data file per species")
    g.add_argument("--species", nargs="+", metavar="NAME", help="species names, in --data order")
    g.add_argument("--celltype-key", help="obs column of cell types (classifier and cell-type tree)")
    g.add_argument("--protein-embeddings", nargs="+", metavar="PT", help="{gene: tensor} .pt file per species")
    g.add_argument("--text-embeddings", nargs="+", metavar="PT", help="{gene: tensor} .pt file per species (cellgym embed-genes)")
    g.add_argument("--saturn-pickle", action="store_true", help="also export SATURN's *_to_macrogenes.pkl (never read by cellgym)")


def wants_species(args: argparse.Namespace) -> bool:
    """True when the command line describes a cross-species fit."""
    return len(args.data) > 1 or bool(args.species or args.protein_embeddings or args.text_embeddings)


def run(args: argparse.Namespace, kwargs: dict[str, Any], logger: Any) -> int:
    """Fit the cross-species predictor and write its output folder."""
    from pathlib import Path

    from cellgym.predictors.galaxy import GalaxyPredictor, celltype_tree
    from cellgym.registry import make_predictor

    from ._options import apply_filters, parse_filters, read_data, spec_from_args

    species = args.species or []
    if len(species) != len(args.data) or len(species) < 2:
        raise DataSpecError(f"--species: give one name per --data file (got {len(species)} names for {len(args.data)} files, need >= 2).")
    for option in ("protein_embeddings", "text_embeddings"):
        files = getattr(args, option)
        if files is not None and len(files) != len(species):
            raise DataSpecError(f"--{option.replace('_', '-')}: give one file per species (got {len(files)} for {len(species)}).")
    if not (args.protein_embeddings or args.text_embeddings):
        raise DataSpecError("a cross-species fit needs --protein-embeddings and/or --text-embeddings (one .pt per species).")
    predictor = make_predictor(args.predictor, celltype_key=args.celltype_key, species=species, **kwargs)
    if not isinstance(predictor, GalaxyPredictor):
        raise DataSpecError(f"several --data files / --species are for cross-species predictors (galaxy), not {args.predictor!r}.")
    subset, exclude = parse_filters(args.subset, "--subset"), parse_filters(args.exclude, "--exclude")
    adatas = {s: apply_filters(read_data(f), subset, exclude) for s, f in zip(species, args.data, strict=True)}
    spec = spec_from_args(args, [])
    per = lambda files: dict(zip(species, files, strict=True)) if files else None  # noqa: E731
    report = predictor.fit(adatas, spec, protein_embeddings=per(args.protein_embeddings), text_embeddings=per(args.text_embeddings),
                           epochs=args.epochs, batch_size=args.batch_size, device=args.device, seed=args.seed, logger=logger)
    logger.close()
    out = predictor.write_outputs(args.out, adatas, history=report, saturn_pickle=args.saturn_pickle)
    if args.celltype_key:
        import anndata as ad

        merged = ad.read_h5ad(out["merged"])
        if args.celltype_key in merged.obs:
            known = merged.obs[args.celltype_key].notna().to_numpy()
            tree = celltype_tree(merged.obsm["X_galaxy"][known], merged.obs["species"][known], merged.obs[args.celltype_key][known])
            tree.write(Path(args.out) / "celltype_tree", title=f"cell types of {', '.join(species)} in X_galaxy")
    n = sum(a.n_obs for a in adatas.values())
    print(f"fitted galaxy on {n} cells of {len(species)} species ({', '.join(species)}), {predictor.module.encoder[0].in_features} "
          f"macrogenes: {report.epochs} epochs in {report.seconds:.1f} s, best epoch {predictor.best_epoch + 1} "
          f"(held-out score {min(report.history['val_score']):.4g})")
    print(f"saved to {Path(args.out)}")
    return 0
