"""Gene-embedding files: loading never runs code, bad files fail in one line, missing genes are reported."""

import pickle

import pytest
import torch

from cellgym.predictors.genes import GeneEmbeddingError, GeneEmbeddings, load_embeddings, save_embeddings


def test_round_trip_and_align(tmp_path):
    emb = GeneEmbeddings(["A", "B", "C"], torch.arange(6.0).reshape(3, 2), "test")
    path = save_embeddings(emb, tmp_path / "emb.pt")
    back = load_embeddings(path, dim=2)
    assert back.genes == ["A", "B", "C"]
    assert torch.equal(back.matrix, emb.matrix)
    rows, present = back.align(["C", "X", "A"])
    assert present.tolist() == [True, False, True]
    assert torch.equal(rows[0], emb.matrix[2]) and torch.equal(rows[2], emb.matrix[0])
    assert back.missing(["C", "X", "A"]) == ["X"]


def test_genes_embeddings_dict_form(tmp_path):
    torch.save({"genes": ["A", "B"], "embeddings": torch.ones(2, 4)}, tmp_path / "e.pt")
    assert load_embeddings(tmp_path / "e.pt").dim == 4


def test_concat_keeps_only_genes_every_source_has():
    a = GeneEmbeddings(["A", "B", "C"], torch.zeros(3, 2), "a")
    b = GeneEmbeddings(["C", "A"], torch.ones(2, 3), "b")
    both = GeneEmbeddings.concat([a, b])
    assert both.genes == ["A", "C"] and both.dim == 5
    assert torch.equal(both.matrix[:, 2:], torch.ones(2, 3))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a file written by torch.save"),
        (b"not a torch file at all", "not a file written by torch.save"),
        (pickle.dumps({"A": _Evil()}), "loading it would run code"),
    ],
)
def test_bad_files_fail_in_one_line(tmp_path, content, message, capsys):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(GeneEmbeddingError, match=message) as info:
        load_embeddings(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert "pwned" not in capsys.readouterr().out


def test_wrong_structure_dim_and_overlap(tmp_path):
    torch.save({"A": torch.ones(3), "B": torch.ones(4)}, tmp_path / "ragged.pt")
    with pytest.raises(GeneEmbeddingError, match="different lengths"):
        load_embeddings(tmp_path / "ragged.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(GeneEmbeddingError, match="not a non-empty dict"):
        load_embeddings(tmp_path / "list.pt")
    torch.save({"A": torch.ones(3)}, tmp_path / "ok.pt")
    with pytest.raises(GeneEmbeddingError, match="dim 3, this model expects 8"):
        load_embeddings(tmp_path / "ok.pt", dim=8)
    with pytest.raises(GeneEmbeddingError, match="only 0 of 2 genes"):
        load_embeddings(tmp_path / "ok.pt").align(["ENSG1", "ENSG2"])
    with pytest.raises(GeneEmbeddingError, match="no gene-embedding file"):
        load_embeddings(tmp_path / "absent.pt")


def test_non_finite_rejected():
    with pytest.raises(GeneEmbeddingError, match="non-finite"):
        GeneEmbeddings(["A"], torch.tensor([[float("nan"), 1.0]]))
