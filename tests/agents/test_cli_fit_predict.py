"""``cellgym fit`` and ``cellgym predict`` in-process: run folder, TensorBoard scalars, Parquet round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from cellgym.agents.cli import main
from cellgym.predictors import Predictor


def _load_simulate():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_gem1_tests", Path(__file__).parents[1] / "predictors" / "test_gem1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.simulate


simulate = _load_simulate()  # the tiny simulated screen of tests/predictors/test_gem1.py


@pytest.fixture(scope="module")
def fitted_dir(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("fit")
    data = simulate(n=400, g=30)
    h5 = tmp / "screen.h5ad"
    data.write_h5ad(h5)
    out, tb = tmp / "model", tmp / "tb"
    rc = main(["fit", "--predictor", "gem1.sc", "--data", str(h5), "--out", str(out), "--epochs", "3", "--batch-key", "batch",
               "--predictor-kwargs", "n_hidden:32", "--tensorboard-log", str(tb)])
    assert rc == 0
    return out, tb


def test_fit_writes_a_loadable_model_and_tensorboard_scalars(fitted_dir) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb = fitted_dir
    model = Predictor.load(out)
    assert model.name == "gem1.sc" and model.config["n_hidden"] == 32
    assert (out / "history.csv").read_text().count("\n") == 4  # header + 3 epochs
    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"fit/loss", "fit/kl_technical", "fit/kl_biological", "fit/kl_perturbation", "fit/accuracy_biological"} <= tags
    assert len(ea.Scalars("fit/loss")) == 3


def test_fit_errors_are_one_clean_line(tmp_path, capsys) -> None:
    assert main(["fit", "--predictor", "gem1.scc", "--data", "x.h5ad", "--out", str(tmp_path)]) == 2
    assert "Did you mean 'gem1.sc'" in capsys.readouterr().err
    logged = simulate(n=100, g=10)
    logged.X = np.log1p(logged.X.toarray())
    logged.write_h5ad(tmp_path / "log.h5ad")
    assert main(["fit", "--predictor", "gem1.nb", "--data", str(tmp_path / "log.h5ad"), "--out", str(tmp_path / "m")]) == 2
    assert "needs raw counts" in capsys.readouterr().err


def _write_dataset(root: Path, genes: list[str]) -> dict[str, int]:
    """Two studies, Hive-partitioned, with counts as a list column and the genes in the schema metadata."""
    import anndata as ad

    from cellgym.predictors.gem1._parquet import write_table

    rows = {}
    for k, study in enumerate(["s1", "s2"]):
        a = simulate(n=50 + 20 * k, g=len(genes), seed=k)
        a.var_names = genes
        obs = a.obs.reset_index(drop=True)
        obs.index = obs.index.astype(str)
        a = ad.AnnData(X=a.X.toarray(), obs=obs, var=a.var)
        write_table(a, root, study, "input", part=0, rows_per_file=40)
        rows[study] = a.n_obs
    return rows


@pytest.mark.parametrize("task", ["predict_expression", "ref_predict_perturbation", "predict_perturbation", "classify_samples"])
def test_parquet_round_trip_through_the_cli(fitted_dir, tmp_path, task, capsys) -> None:
    model = Predictor.load(fitted_dir[0])
    inp = tmp_path / "in"
    rows = _write_dataset(inp, model.genes)
    outs = []
    for rep in range(2):
        out = tmp_path / f"out{rep}"
        assert main(["predict", "--predictor", str(fitted_dir[0]), "--task", task, "--input", str(inp), "--output", str(out),
                     "--mode", "mean", "--batch-size", "16", "--output-batch-size", "25"]) == 0
        outs.append(out)
    assert sorted(p.name for p in outs[0].iterdir()) == ["_manifest.json", "study=s1", "study=s2"]
    ds = pds.dataset(outs[0], format="parquet", partitioning="hive")
    table = ds.to_table()
    meta = pq.read_schema(next(outs[0].rglob("*.parquet"))).metadata
    assert json.loads(meta[b"genes"]) == model.genes and meta[b"task"] == task.encode()
    for study, n in rows.items():
        got = int((table.column("study").to_numpy(zero_copy_only=False).astype(str) == study).sum())
        n_pert = n
        if task == "ref_predict_perturbation":
            sub = pds.dataset(inp, format="parquet", partitioning="hive").to_table().to_pandas()
            n_pert = int(((sub["study"] == study) & (sub["perturbation"] != "control")).sum())
        assert got == n_pert, (study, got, n_pert)
    assert all(f.stat().st_size > 0 for f in outs[0].rglob("part-*.parquet"))
    counts = np.stack(table.column("counts").to_numpy(zero_copy_only=False))
    assert counts.shape[1] == len(model.genes) and np.isfinite(counts).all()
    if task in ("ref_predict_perturbation", "predict_perturbation"):
        assert "de_pred" in table.column_names
    if task == "classify_samples":
        assert {"pred_cell_type", "prob_cell_type", "z_biological"} <= set(table.column_names)
    # mean mode is deterministic: a second run writes the same values
    a, b = pds.dataset(outs[0], partitioning="hive").to_table(), pds.dataset(outs[1], partitioning="hive").to_table()
    np.testing.assert_array_equal(np.stack(a.column("counts").to_numpy(zero_copy_only=False)),
                                  np.stack(b.column("counts").to_numpy(zero_copy_only=False)))
    # rerunning into a finished output is refused (never appended to); --overwrite writes it again, same rows
    capsys.readouterr()
    argv = ["predict", "--predictor", str(fitted_dir[0]), "--task", task, "--input", str(inp), "--output", str(outs[0])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a complete" in err and "--overwrite" in err and "Traceback" not in err
    assert pds.dataset(outs[0], partitioning="hive").count_rows() == table.num_rows
    assert main([*argv, "--overwrite"]) == 0
    assert pds.dataset(outs[0], partitioning="hive").count_rows() == table.num_rows
    manifest = json.loads((outs[0] / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == table.num_rows


def test_predict_rejects_other_genes(fitted_dir, tmp_path, capsys) -> None:
    model = Predictor.load(fitted_dir[0])
    _write_dataset(tmp_path / "in", [f"x{i}" for i in range(len(model.genes))])
    rc = main(["predict", "--predictor", str(fitted_dir[0]), "--task", "classify_samples", "--input", str(tmp_path / "in"),
               "--output", str(tmp_path / "o")])
    assert rc == 2 and "gene mismatch" in capsys.readouterr().err


def _predict(fitted_dir, inp: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--predictor", str(fitted_dir[0]), "--task", "predict_expression", "--input", str(inp),
                 "--output", str(out), "--batch-size", "16", "--output-batch-size", "25", *extra])


def test_a_torn_part_from_an_earlier_run_is_reported_and_overwrite_repairs_it(fitted_dir, tmp_path, capsys) -> None:
    """Defect 1: a part without its footer (a killed writer) made the whole output unreadable."""
    model = Predictor.load(fitted_dir[0])
    inp, out = tmp_path / "in", tmp_path / "out"
    rows = _write_dataset(inp, model.genes)
    torn = out / "study=s1" / "part-00000.parquet"
    torn.parent.mkdir(parents=True)
    good = next((inp / "study=s1").glob("part-*.parquet")).read_bytes()
    torn.write_bytes(good[: len(good) // 2])  # what a kill mid-write left before writes were atomic
    with pytest.raises(Exception, match=r"magic bytes|footer"):
        pds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert _predict(fitted_dir, inp, out) == 2
    err = capsys.readouterr().err
    assert "1 torn part file(s)" in err and "--overwrite" in err and "Traceback" not in err
    assert _predict(fitted_dir, inp, out, "--resume") == 2  # no manifest: which studies are complete is unknown
    assert "cannot resume" in capsys.readouterr().err
    assert _predict(fitted_dir, inp, out, "--overwrite") == 0
    assert pds.dataset(out, format="parquet", partitioning="hive").count_rows() == sum(rows.values())


def test_an_interrupted_output_is_recognisable_and_resume_completes_it(fitted_dir, tmp_path, capsys) -> None:
    """Defect 2: rerunning into a partly written folder appended duplicate rows silently."""
    model = Predictor.load(fitted_dir[0])
    inp, out = tmp_path / "in", tmp_path / "out"
    rows = _write_dataset(inp, model.genes)
    assert _predict(fitted_dir, inp, out) == 0
    reference = pds.dataset(out, partitioning="hive").to_table().sort_by([("study", "ascending")])
    # the state a kill while writing study s2 leaves: s1 renamed into place and recorded, s2 half-staged
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["complete"] = False
    del manifest["studies"]["s2"]
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / "study=s2").rename(out / ".study=s2.tmp")
    part = next((out / ".study=s2.tmp").glob("part-*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    s1_part = next((out / "study=s1").glob("part-*.parquet"))
    s1_mtime = s1_part.stat().st_mtime_ns
    # what is visible is whole studies only, and the output says it is incomplete
    assert pds.dataset(out, format="parquet", partitioning="hive").count_rows() == rows["s1"]
    assert _predict(fitted_dir, inp, out) == 2
    err = capsys.readouterr().err
    assert "INCOMPLETE" in err and "--resume" in err
    # other options cannot resume it
    assert _predict(fitted_dir, inp, out, "--resume", "--seed", "5") == 2
    assert "other options" in capsys.readouterr().err
    assert _predict(fitted_dir, inp, out, "--resume") == 0
    printed = capsys.readouterr().out
    assert f"holds {sum(rows.values())} rows" in printed
    table = pds.dataset(out, format="parquet", partitioning="hive").to_table().sort_by([("study", "ascending")])
    assert table.num_rows == sum(rows.values())  # exactly once each, no duplicates
    assert s1_part.stat().st_mtime_ns == s1_mtime  # the complete study was kept, not rewritten
    np.testing.assert_array_equal(np.stack(table.column("counts").to_numpy(zero_copy_only=False)),
                                  np.stack(reference.column("counts").to_numpy(zero_copy_only=False)))
    assert json.loads((out / "_manifest.json").read_text())["complete"]
    assert not list(out.glob(".*"))  # no staging folders or temporary files left
