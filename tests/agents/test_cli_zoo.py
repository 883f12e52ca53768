"""The CLI as RL-Zoo users use it: fast start, one-line refusals, -conf/normalize/best model, SB3 export,
-optimize, record-video, and ``cellgym train --config`` reproducing a run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from cellgym.agents.cli import main

HSC = "CellEnv-Reprogram-HSC-v0"
CLI = [sys.executable, "-m", "cellgym"]


def _timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """CPU seconds (user + system) the command used, and its result. CPU time, not wall time: on the shared
    2-core machine (load average above 20) wall time measures the neighbours."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done


def test_cli_starts_without_heavy_imports():
    # `import cellgym.agents.cli` and the registry must not load torch, SB3, scanpy or anndata
    code = ("import sys, cellgym.agents.cli, cellgym.registry; cellgym.agents.cli.build_parser(); "
            "print([m for m in ('torch', 'stable_baselines3', 'scanpy', 'anndata', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["list", "agents"], ["train", "--bogus"]])
def test_cli_start_time(args):
    # 0.22 CPU s here; importing torch + SB3 + scanpy up front costs 5.9 CPU s (5-22 s wall when busy)
    seconds, done = _timed([*CLI, *args])
    assert seconds < 1.5, f"cellgym {' '.join(args)} used {seconds:.2f} CPU s"
    if args == ["--version"]:
        import cellgym

        assert done.stdout.strip() == f"cellgym {cellgym.__version__}" and cellgym.__version__ != "0+unknown"
    if args == ["train", "--bogus"]:
        assert done.returncode == 2 and "unrecognized arguments: --bogus" in done.stderr


def test_version_where_users_look():
    from importlib.metadata import version

    import cellgym
    import cellgym.registry

    assert cellgym.__version__ == cellgym.registry.__version__ == version("cellgym")


@pytest.mark.parametrize(("task", "algo", "expected"), [
    ("CellEnv-Trip-Integration-v0", "ppo", "algorithms that fit it: celltrip"),
    (HSC, "sac", "algorithms that fit it: a2c, ppo, dqn, maskable_ppo"),
    (HSC, "celltrip", "single-agent gymnasium task"),
])
def test_algo_that_does_not_fit_is_one_line_and_leaves_no_folder(tmp_path, capsys, task, algo, expected):
    assert main(["train", "--env", task, "--algo", algo, "-f", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_env_kwarg_names_the_valid_ones(tmp_path, capsys):
    assert main(["train", "--env", HSC, "--algo", "ppo", "--env-kwargs", "budgte:3", "-f", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "takes no option 'budgte' (did you mean 'budget'?)" in err and "n_cells" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_predictor_folder_is_named(tmp_path):
    from cellgym.envs.reprogram import resolve_predictor
    from cellgym.predictors import DataSpec
    from cellgym.predictors.base.errors import DataSpecError

    with pytest.raises(DataSpecError, match="no such folder"):
        resolve_predictor(str(tmp_path / "fit" / "nonexistent"), None, DataSpec())


def test_budget_rounds_to_whole_rollouts():
    from cellgym.agents.zoo._hyperparams import whole_rollouts

    assert whole_rollouts("maskable_ppo", 12_000, 8, {"n_steps": 64}) == 12_288  # what SB3 trains and its bar shows
    assert whole_rollouts("dqn", 1001, 1, {}) == 1001


def test_bad_conf_file_is_one_line(tmp_path, capsys):
    conf = tmp_path / "hp.yml"
    conf.write_text(f"{HSC}:\n  learnig_rate: 1.0e-3\n")
    assert main(["train", "--env", HSC, "--algo", "ppo", "-conf", str(conf), "-f", str(tmp_path / "runs")]) == 2
    assert "Did you mean 'learning_rate'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory):
    """A short MaskablePPO run on HSC with -conf normalize: true, evaluation (best model) and checkpoints."""
    root = tmp_path_factory.mktemp("zoo")
    conf = root / "hp.yml"
    conf.write_text(f"{HSC}:\n  normalize: true\n  n_envs: 4\n")
    args = ["train", "--env", HSC, "--algo", "maskable_ppo", "-n", "1024", "-f", str(root / "runs"), "--no-progress",
            "--eval-freq", "512", "--eval-episodes", "3", "--save-freq", "512", "-conf", str(conf),
            "--vec-env", "dummy", "--n-eval-envs", "2"]
    assert main(args) == 0
    return root / "runs" / "maskable_ppo" / f"{HSC}_1"


def test_normalize_best_model_and_checkpoints(normalized_run, capsys):
    config = yaml.safe_load((normalized_run / "config.yml").read_text())
    assert config["hyperparams"]["normalize"] is True and config["vec_env"] == "dummy" and config["n_eval_envs"] == 2
    for folder in ("model", "best_model", "checkpoints/step_512"):
        assert sorted(p.name for p in (normalized_run / folder).iterdir()) == ["config.yaml", "normalize.pt", "weights.pt"]
    stats = torch.load(normalized_run / "model" / "normalize.pt", weights_only=True)
    assert stats["obs_count"] > 1000 and stats["obs_var"].min() >= 0 and bool(stats["obs_mean"].abs().sum() > 0)
    root = str(normalized_run.parents[1])
    assert main(["enjoy", "--env", HSC, "--algo", "maskable_ppo", "-f", root, "--load-best", "--episodes", "2"]) == 0
    assert "success rate" in capsys.readouterr().out
    assert main(["enjoy", "--env", HSC, "--algo", "maskable_ppo", "-f", root, "--load-checkpoint", "99"]) == 2
    assert "saved steps: [512, 1024]" in capsys.readouterr().err


def test_export_to_sb3_zip_and_import_back(normalized_run, tmp_path, capsys):
    import gymnasium
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import VecNormalize

    from cellgym.agents.zoo import SB3Agent

    assert main(["export", str(normalized_run), "--out", str(tmp_path / "sb3" / "model.zip")]) == 0
    sb3 = MaskablePPO.load(tmp_path / "sb3" / "model.zip")  # SB3's own loader on our file
    env = gymnasium.make(HSC)
    ours = SB3Agent.load(normalized_run / "model", env=env)
    vecnorm = VecNormalize.load(str(tmp_path / "sb3" / "vecnormalize.pkl"), ours.model.get_env())
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        mask = env.unwrapped.action_masks()
        theirs, _ = sb3.predict(vecnorm.normalize_obs(obs), action_masks=mask, deterministic=True)
        assert ours.act(obs, env.unwrapped) == int(theirs)
    assert main(["import", str(tmp_path / "sb3" / "model.zip"), "--algo", "maskable_ppo", "--out", str(tmp_path / "in")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not (tmp_path / "in").exists()
    assert main(["import", str(tmp_path / "sb3" / "model.zip"), "--algo", "maskable_ppo", "--out", str(tmp_path / "in"),
                 "--trust-pickle"]) == 0
    back = torch.load(tmp_path / "in" / "weights.pt", weights_only=True)["params"]["policy"]
    orig = torch.load(normalized_run / "model" / "weights.pt", weights_only=True)["params"]["policy"]
    assert all(torch.equal(back[k], orig[k]) for k in orig)


def test_config_reproduces_the_run(tmp_path):
    runs = tmp_path / "runs"
    common = ["--no-progress", "-f", str(runs)]
    assert main(["train", "--env", HSC, "--algo", "ppo", "-n", "512", "--eval-freq", "0", "--seed", "3", *common]) == 0
    first = runs / "ppo" / f"{HSC}_1"
    assert main(["train", "--config", str(first / "config.yml"), *common]) == 0
    a = torch.load(first / "model" / "weights.pt", weights_only=True)["params"]["policy"]
    b = torch.load(runs / "ppo" / f"{HSC}_2" / "model" / "weights.pt", weights_only=True)["params"]["policy"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in _fresh_policy_weights().items())  # it did train


def _fresh_policy_weights():
    import gymnasium

    from cellgym.agents.zoo import SB3Agent
    from cellgym.agents.zoo._hyperparams import load_hyperparams

    hp = load_hyperparams("ppo", HSC)
    agent = SB3Agent("ppo", policy=hp.policy, policy_kwargs=hp.policy_kwargs, algo_kwargs=hp.algo_kwargs, seed=3)
    agent.build(gymnasium.make(HSC))
    return agent.model.policy.state_dict()


def test_record_video_writes_frames(tmp_path):
    import gymnasium

    env_spec = gymnasium.make(HSC).unwrapped.metadata
    if "rgb_array" not in env_spec.get("render_modes", []):
        pytest.skip("the reprogramming env on this branch has no rgb_array render yet (issue 13, env half)")
    out = tmp_path / "greedy.gif"
    assert main(["record-video", "--env", HSC, "--algo", "greedy", "--episodes", "2", "-o", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as gif:
        assert gif.n_frames >= 3
        frame = np.asarray(gif.convert("RGB"))
    assert frame.ndim == 3 and frame.std() > 0  # a picture, not a blank


@pytest.mark.slow
def test_optimize_writes_usable_hyperparameters(tmp_path):
    runs = tmp_path / "runs"
    assert main(["train", "-optimize", "--env", HSC, "--algo", "maskable_ppo", "-n", "1024", "--n-trials", "2",
                 "--n-evaluations", "2", "--eval-episodes", "3", "--n-startup-trials", "1", "-f", str(runs)]) == 0
    out = runs / "optimize" / "maskable_ppo" / f"{HSC}_1"
    summary = yaml.safe_load((out / "summary.yml").read_text())
    assert summary["best"]["value"] >= summary["shipped"]["value"]  # never worse than the shipped values
    best = out / "best_hyperparams.yml"
    assert main(["train", "--env", HSC, "--algo", "maskable_ppo", "-conf", str(best), "-n", "512", "--eval-freq", "0",
                 "--no-progress", "-f", str(runs)]) == 0
    config = yaml.safe_load((runs / "maskable_ppo" / f"{HSC}_1" / "config.yml").read_text())
    assert config["hyperparams"]["source"] == f"{best}[{HSC}]"
