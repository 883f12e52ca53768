"""``cellgym evaluate`` in-process: the table, the CSVs, and one-line errors for bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "predictors"))
from simulated_screens import counts_variant, simulate_screen

from cellgym.agents.cli import main

BASELINES = ["baseline.nochange", "baseline.mean", "baseline.additive", "baseline.linear"]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory) -> Path:
    adata, _ = simulate_screen(0)
    adata.obs["dataset"] = "sim"
    path = tmp_path_factory.mktemp("data") / "screen.h5ad"
    adata.write_h5ad(path)
    return path


def test_evaluate_combos_prints_table_and_writes_csvs(h5ad, tmp_path, capsys):
    code = main(["evaluate", "--data", str(h5ad), "--split", "combos", "--predictors", *BASELINES, "--output", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "pearson_delta" in out and all(b in out for b in BASELINES)
    metrics = pd.read_csv(tmp_path / "metrics.csv", index_col="predictor")
    assert list(metrics.index) == BASELINES
    assert metrics.loc["baseline.additive", "pearson_delta"] > 0.9 > metrics.loc["baseline.mean", "pearson_delta"]
    assert metrics.loc["baseline.nochange", "pearson_delta"] == 0.0
    per = pd.read_csv(tmp_path / "per_perturbation.csv")
    assert set(per["context"]) == {"A", "B"} and per["perturbation"].str.contains("+", regex=False).all()
    assert len(per) == 4 * 3 * 2  # predictors x held-out combos x contexts


def test_evaluate_contexts_with_subset_and_counts(tmp_path, capsys):
    adata, _ = simulate_screen(0)
    counts = counts_variant(adata)
    counts.obs["dataset"] = ["x" if i % 2 else "y" for i in range(counts.n_obs)]
    path = tmp_path / "counts.h5ad"
    counts.write_h5ad(path)
    code = main([
        "evaluate", "--data", str(path), "--split", "contexts", "--holdout", "B", "--subset", "dataset=x",
        "--exclude", "perturbation=G7", "--predictors", "baseline.nochange", "baseline.additive", "--output", str(tmp_path / "o"),
    ])
    assert code == 0
    per = pd.read_csv(tmp_path / "o" / "per_perturbation.csv")
    assert set(per["context"]) == {"B"} and "G7" not in set(per["perturbation"])
    m = pd.read_csv(tmp_path / "o" / "metrics.csv", index_col="predictor")
    assert m.loc["baseline.additive", "pearson_delta"] > 0.8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.h5ad"], "no such file"),
        (["--subset", "dataset"], "expected COLUMN=VALUE"),
        (["--subset", "nocol=1"], "adata.obs has no column 'nocol'"),
        (["--subset", "dataset=zzz"], "no cell has dataset='zzz'"),
        (["--control", "ctrl"], "no control cells"),
        (["--perturbation-key", "pert"], "no column 'pert'"),
        (["--holdout", "G9+G10"], "held-out perturbation(s) ['G9+G10']"),
        (["--predictors", "baseline.addtive"], "Did you mean 'baseline.additive'"),
        (["--predictor-kwargs", "baseline.additive:foo:1"], "predictor 'baseline.additive' has no option 'foo'"),
        (["--predictor-kwargs", "baseline.mean:foo:1"], "predictor_kwargs names ['baseline.mean'], which are not among"),
        (["--fit-kwargs", "gem1.bulk:epochs:2"], "fit_kwargs names ['gem1.bulk'], which are not among"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(h5ad, tmp_path, capsys, args, message):
    base = {"--data": str(h5ad), "--predictors": "baseline.additive"}
    argv = ["evaluate", "--split", "combos", "--output", str(tmp_path)]
    for key, value in base.items():
        if key not in args:
            argv += [key, value]
    code = main(argv + args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "metrics.csv").exists()


def test_not_an_h5ad(tmp_path, capsys):
    bad = tmp_path / "x.h5ad"
    bad.write_text("not hdf5")
    assert main(["evaluate", "--data", str(bad), "--split", "combos", "--predictors", "baseline.mean"]) == 2
    assert "is not a readable .h5ad file" in capsys.readouterr().err


def test_evaluate_max_epochs_budget_columns_and_progress(h5ad, tmp_path, capsys):
    code = main(["evaluate", "--data", str(h5ad), "--split", "perturbations", "--predictors", "baseline.mean", "gem1.bulk",
                 "--max-epochs", "2", "--de-k", "10", "--output", str(tmp_path)])
    assert code == 0
    captured = capsys.readouterr()
    assert "fit_epochs" in captured.out and "r2_scgen_top100" in captured.out
    assert "epoch 2/2" in captured.err and "left" in captured.err  # the fit loop's progress lines
    metrics = pd.read_csv(tmp_path / "metrics.csv", index_col="predictor")
    assert metrics.loc["gem1.bulk", "fit_epochs"] == 2 and metrics.loc["baseline.mean", "fit_epochs"] == 0
    assert main(["evaluate", "--data", str(h5ad), "--split", "combos", "--predictors", "gem1.bulk", "--max-epochs", "0"]) == 2


def test_evaluate_predictor_kwargs_reach_the_constructor(h5ad, tmp_path, capsys):
    def linear_pearson(*extra: str) -> float:
        out = tmp_path / str(len(extra))
        assert main(["evaluate", "--data", str(h5ad), "--split", "combos", "--predictors", "baseline.linear",
                     "--output", str(out), *extra]) == 0
        return pd.read_csv(out / "metrics.csv", index_col="predictor").loc["baseline.linear", "pearson_delta"]

    default = linear_pearson()
    one_pc = linear_pearson("--predictor-kwargs", "baseline.linear:n_pcs:1", "baseline.linear:ridge:0.1")
    assert one_pc != pytest.approx(default, abs=1e-6)  # n_pcs=1 is a different model
