"""Package layout: light imports, the registry lists the baselines, unknown names suggest matches."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_predictors_import_no_rl_libraries():
    loaded = _modules_after("import cellgym.predictors, cellgym.predictors.metrics, cellgym.predictors.baselines")
    assert not {m for m in loaded if m.split(".")[0] in {"gymnasium", "pettingzoo", "stable_baselines3"}}


def test_predictors_import_loads_no_family():
    assert "torch" not in _modules_after("import cellgym.predictors")  # names load on first use (PEP 562)
    loaded = _modules_after("from cellgym.predictors import DataSpec, Predictor, evaluate, metrics")
    assert "cellgym.predictors.metrics" in loaded
    assert not {m for m in loaded if m.startswith(("cellgym.predictors.baselines", "cellgym.predictors.gem1", "scanpy"))}


def test_registry_import_loads_no_model_code():
    loaded = _modules_after("import cellgym.registry")
    heavy = {"cellgym.predictors.baselines", "cellgym.predictors.gem1", "cellgym.predictors.grn", "cellgym.envs", "cellgym.agents.planning"}
    assert not (loaded & heavy)


def test_cli_list_shows_the_four_baselines(capsys):
    from cellgym.agents.cli import main

    assert main(["list", "predictors"]) == 0
    out = capsys.readouterr().out
    for name in ("baseline.nochange", "baseline.mean", "baseline.additive", "baseline.linear"):
        assert name in out


def test_unknown_name_suggests_close_match():
    from cellgym.registry import UnknownNameError, make_predictor

    with pytest.raises(UnknownNameError, match=r"Did you mean 'baseline\.linear'"):
        make_predictor("baseline.lineer")
    assert type(make_predictor("baseline.linear", n_pcs=5)).__name__ == "LinearBaseline"


def test_unknown_option_is_one_line_naming_the_options():
    from cellgym.registry import UnknownOptionError, make_predictor

    with pytest.raises(UnknownOptionError, match=r"has no option 'n_pc'\. Did you mean 'n_pcs'\? Its options: n_pcs, ridge"):
        make_predictor("baseline.linear", n_pc=5)
    with pytest.raises(TypeError):  # callers that catch the constructor's TypeError still do
        make_predictor("baseline.mean", foo=1)


def test_every_registered_default_option_is_accepted():
    from cellgym.registry import check_options, get, specs

    for kind in ("predictors", "rewards", "agents"):
        for name in specs(kind):
            check_options(kind, name, get(kind, name).kwargs)
