"""The leaderboard: measured rows stamped with version, data hash and seed; versions compare row by row."""

from __future__ import annotations

import pandas as pd

from cellgym.agents.cli import main
from cellgym.agents.leaderboard import KEY, compare


def test_quick_predictor_and_design_sections(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CELLGYM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lb" / "board"
    assert main(["leaderboard", "--quick", "--sections", "predictors", "design", "--out", str(out)]) == 0
    df = pd.read_csv(out.with_suffix(".csv"))
    assert set(df["section"]) == {"predictors", "design"}
    assert {"cellgym_version", "data_hash", "seed", "seconds"} <= set(df.columns)
    pd_rows = df[(df.section == "predictors") & (df.metric == "pearson_delta")].set_index("model")["value"]
    assert pd_rows["baseline.additive"] > pd_rows["baseline.mean"] > pd_rows["baseline.nochange"] - 1e-9
    design = df[(df.section == "design") & (df.metric == "mean_rank")].set_index("model")["value"]
    assert design["exhaustive in baseline.additive"] < design["chance"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "### predictors" in out.with_suffix(".md").read_text()

    # the same seed again, compared with the first: every row identical, nothing new or gone
    again = tmp_path / "lb" / "again"
    assert main(["leaderboard", "--quick", "--sections", "predictors", "--out", str(again),
                 "--compare", str(out.with_suffix(".csv"))]) == 0
    diff = pd.read_csv(tmp_path / "lb" / "again_compare.csv")
    both = diff[diff["status"] == "both"]
    assert len(both) == (df.section == "predictors").sum()
    assert (both["change"].dropna().abs() < 1e-9).all() and (both["value_old"].isna() == both["value_new"].isna()).all()
    assert "0 changed, 0 new" in capsys.readouterr().out


def test_compare_flags_changed_values_and_data():
    row = dict(zip(KEY, ("predictors", "d", "combos", "m", "pearson_delta"), strict=True))
    old = pd.DataFrame([{**row, "value": 0.5, "data_hash": "aaa", "cellgym_version": "0.1.0"}])
    new = pd.DataFrame([{**row, "value": 0.7, "data_hash": "bbb", "cellgym_version": "0.2.0"},
                        {**row, "metric": "r2_de", "value": 0.1, "data_hash": "bbb", "cellgym_version": "0.2.0"}])
    diff = compare(new, old).set_index("metric")
    assert abs(diff.loc["pearson_delta", "change"] - 0.2) < 1e-12 and diff.loc["pearson_delta", "data_changed"]
    assert diff.loc["r2_de", "status"] == "new" and diff.loc["pearson_delta", "status"] == "both"


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["leaderboard", "--sections", "nope"]) == 2
    assert "sections ['nope'] are unknown" in capsys.readouterr().err
    assert main(["leaderboard", "--compare", str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert main(["leaderboard", "--compare", str(tmp_path / "x.csv")]) == 2
    assert "is not a leaderboard CSV" in capsys.readouterr().err
