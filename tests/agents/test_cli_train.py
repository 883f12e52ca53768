"""``cellgym train / enjoy / benchmark`` in-process on CellEnv-Reprogram-HSC-v0 (the Boolean myeloid world)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cellgym.agents.cli import main

TASK = "CellEnv-Reprogram-HSC-v0"
# a few thousand steps, short rollouts so several logger dumps happen
TRAIN = ["train", "--env", TASK, "--algo", "ppo", "-n", "2048", "--seed", "3", "--eval-freq", "1024",
         "--eval-episodes", "4", "--save-freq", "1024", "--no-progress", "--hyperparams", "n_steps:32",
         "n_epochs:4"]


def _events(run_dir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    return ea


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model" / "weights.pt", weights_only=True)["params"]["policy"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    assert main([*TRAIN, "-f", str(folder)]) == 0
    return folder / "ppo" / f"{TASK}_1"


def test_run_folder_holds_everything(trained: Path) -> None:
    for name in ("config.yml", "args.yml", "command.txt", "monitor.csv", "model/config.yaml", "model/weights.pt",
                 "eval/evaluations.npz", "checkpoints/step_1024/weights.pt"):
        assert (trained / name).is_file(), name
    config = yaml.safe_load((trained / "config.yml").read_text())
    assert config["n_timesteps"] == 2048 and config["seed"] == 3
    assert config["hyperparams"]["algo_kwargs"]["n_steps"] == 32  # the override, resolved into the config
    assert (trained / "command.txt").read_text().startswith(f"cellgym train --env {TASK} --algo ppo")
    monitor = pd.read_csv(trained / "monitor.csv", skiprows=1)
    assert {"r", "l", "success", "distance", "n_perturbations", "cost"} <= set(monitor.columns)
    assert len(monitor) > 100 and monitor["l"].max() <= 6  # the task's step budget
    evals = np.load(trained / "eval" / "evaluations.npz")
    assert list(evals["timesteps"]) == [1024, 2048] and evals["results"].shape == (2, 4)


def test_tensorboard_has_the_biology(trained: Path) -> None:
    ea = _events(trained)
    scalars = set(ea.Tags()["scalars"])
    assert {"cell/success_rate", "cell/distance_to_goal", "cell/n_perturbations", "cell/cost",
            "cell/steps_over_optimum", "rollout/ep_rew_mean", "train/loss", "eval/success_rate"} <= scalars
    assert "cell/perturbation" in ea.Tags()["histograms"]
    success = [e.value for e in ea.Scalars("cell/success_rate")]
    distance = [e.value for e in ea.Scalars("cell/distance_to_goal")]
    assert all(0.0 <= s <= 1.0 for s in success) and all(d >= 0 for d in distance)
    assert ea.Scalars("cell/success_rate")[-1].step == 2048
    # it learns within 2k steps: later windows succeed more often than the first one (random-ish policy)
    assert success[-1] > success[0]
    histogram = ea.Histograms("cell/perturbation")[-1].histogram_value
    assert histogram.min >= 0 and histogram.max <= 16 and histogram.num > 0


def test_config_reproduces_the_run(trained: Path, tmp_path: Path) -> None:
    assert main(["train", "--config", str(trained / "config.yml"), "-f", str(tmp_path), "--no-progress"]) == 0
    again = tmp_path / "ppo" / f"{TASK}_1"
    first, second = _weights(trained), _weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    a = pd.read_csv(trained / "monitor.csv", skiprows=1)
    b = pd.read_csv(again / "monitor.csv", skiprows=1)
    np.testing.assert_array_equal(a[["r", "l", "success"]].to_numpy(), b[["r", "l", "success"]].to_numpy())


def test_resume_from_checkpoint(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "ppo" / f"{TASK}_1"
    shutil.copytree(trained, run)
    assert main(["train", "-i", str(run / "model"), "-n", "2560", "--no-progress"]) == 0
    assert not (tmp_path / "ppo" / f"{TASK}_2").exists()  # the same run continues
    # starts from the trained weights: the windows after the resume succeed like the end of training
    success = _events(run).Scalars("cell/success_rate")
    resumed = [e.value for e in success if e.step > 2048]
    assert resumed and resumed[0] > success[0].value
    assert yaml.safe_load((run / "model" / "config.yaml").read_text())["num_timesteps"] == 2560


def test_resuming_a_finished_run_changes_nothing(trained: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # e.g. a run killed after its final save: `-i RUN` with its own -n is a no-op, not an error
    run = tmp_path / "ppo" / f"{TASK}_1"
    shutil.copytree(trained, run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "-i", str(run), "--no-progress"]) == 0
    assert "nothing to continue" in capsys.readouterr().out
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["train", "-i", str(run), "-n", "512", "--no-progress"]) == 2  # fewer steps than it has
    assert "pass a larger -n" in capsys.readouterr().err


def test_enjoy_prints_perturbations_and_truth(trained: Path, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    folder = str(trained.parents[1])
    plot = tmp_path / "enjoy.png"
    assert main(["enjoy", "--env", TASK, "--algo", "ppo", "-f", folder, "--episodes", "3",
                 "--truth", "grn.boolean", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert out.count("episode ") == 3 and ("_OE" in out or "_KO" in out)
    assert "in grn.boolean: success rate" in out
    assert plot.is_file() and plot.stat().st_size > 10_000


def test_enjoy_baseline_needs_no_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["enjoy", "--env", TASK, "--algo", "bfs", "-f", str(tmp_path), "--episodes", "2"]) == 0
    assert "success rate 100%" in capsys.readouterr().out  # the exact optimum always reaches the goal


@pytest.mark.parametrize(("argv", "message"), [
    (["--hyperparams", "n_step:64"], "Did you mean 'n_steps'"),
    (["--hyperparams", "learning_rate:3e-4"], "signed exponent"),
    (["--hyperparams", "oops"], "expected KEY:VALUE"),
    (["-i", "/nonexistent/model"], "no such run or checkpoint folder"),
    (["--partition", "labels"], "use it with --backend ray --algo celltrip"),
])
def test_bad_input_is_one_clean_line(argv: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--env", TASK, "--algo", "ppo", "-f", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "ppo").exists()  # validated before any run folder is made


def test_unknown_task_and_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--env", "CellEnv-Reprogram-HCS-v0", "--algo", "ppo", "-f", str(tmp_path)]) == 2
    assert "Did you mean 'CellEnv-Reprogram-HSC-v0'" in capsys.readouterr().err
    assert main(["enjoy", "--env", TASK, "--algo", "a2c", "-f", str(tmp_path)]) == 2
    assert "cellgym train --env" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "--env", TASK, "--algo", "maskable_ppo", "--episodes", "10", "-n", "4096",
                 "-f", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "benchmark.csv")
    assert list(table["agent"]) == ["maskable_ppo", "random", "greedy", "bfs"]
    bfs = table.set_index("agent").loc["bfs"]
    assert bfs["success_rate"] == 1.0 and bfs["steps_vs_optimum"] == pytest.approx(1.0)
    assert "| task | agent | success rate |" in out


@pytest.mark.slow
def test_parallel_task_trains_celltrip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cellgym.registry import specs

    if "celltrip" not in specs("agents"):
        pytest.skip("agent 'celltrip' is not registered yet (registry/_builtin.py)")
    task = "CellEnv-Trip-Integration-v0"
    assert main(["train", "--env", task, "--algo", "celltrip", "-n", "200", "-f", str(tmp_path),
                 "--no-progress"]) == 0
    run_dir = tmp_path / "celltrip" / f"{task}_1"
    assert (run_dir / "model" / "weights.pt").is_file() and (run_dir / "config.yml").is_file()
    assert _events(run_dir).Tags()["scalars"]
    assert main(["enjoy", "--env", task, "--algo", "celltrip", "-f", str(tmp_path), "--episodes", "1"]) == 0
    assert capsys.readouterr().out.strip()


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


@pytest.mark.skipif(_has_ray(), reason="ray is installed here; the missing-ray message cannot be shown")
def test_ray_backend_without_ray_says_how_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--env", TASK, "--algo", "ppo", "--backend", "ray", "-f", str(tmp_path)]) == 2
    assert 'pip install "cellgym[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "ppo").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _has_ray(), reason='ray[rllib] is not installed (pip install "cellgym[ray]" in its own venv)')
def test_ray_backend_trains_and_logs_the_biology(tmp_path: Path) -> None:
    assert main(["train", "--env", TASK, "--algo", "ppo", "--backend", "ray", "-n", "4000", "-f", str(tmp_path),
                 "--no-progress"]) == 0
    run_dir = tmp_path / "ppo" / f"{TASK}_1"
    assert (run_dir / "model" / "rllib_module.pt").is_file()
    ea = _events(run_dir)
    assert {"cell/success_rate", "cell/distance_to_goal", "rollout/ep_rew_mean"} <= set(ea.Tags()["scalars"])
    success = [e.value for e in ea.Scalars("cell/success_rate")]
    assert success[-1] > success[0]  # RLlib PPO learns the task too


TRIP = "CellEnv-Trip-Integration-v0"
TRIP_KW = {"n_cells": 80, "min_cells": 40, "max_cells": 80, "episode_length": (15, 25), "view": "neighbours",
           "n_neighbours": 8, "n_random": 2}
TRIP_FAST = {"n_steps": 20, "batch_steps": 5, "n_epochs": 2, "decoder_steps": 20, "steady_state_steps": 10}


@pytest.mark.slow
@pytest.mark.skipif(not _has_ray(), reason='ray[rllib] is not installed (pip install "cellgym[ray]" in its own venv)')
def test_ray_celltrip_one_runner_reproduces_local_training_and_two_runners_learn() -> None:
    import ray

    from cellgym.agents.celltrip import CellTripAgent
    from cellgym.agents.celltrip._ray import RayCollector
    from cellgym.registry import make

    ray.shutdown()  # an earlier test (the RLlib backend) may have left Ray running with its defaults
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        local = CellTripAgent(**TRIP_FAST).learn(make(TRIP, **TRIP_KW), 60, seed=4)
        histories = []
        for _ in range(2):
            collector = RayCollector(TRIP, TRIP_KW, TRIP_FAST, 1, seed=4)
            remote = CellTripAgent(**TRIP_FAST).learn(make(TRIP, **TRIP_KW), 60, seed=4, collector=collector)
            collector.close()
            histories.append(remote.result.history)
        assert histories[0]["rollout/reward_per_cell"] == histories[1]["rollout/reward_per_cell"]  # same seed
        # one runner is the single-process run: same episodes, same actions, same updates
        np.testing.assert_allclose(histories[0]["rollout/reward_per_cell"], local.result.history["rollout/reward_per_cell"],
                                   rtol=1e-5)
        np.testing.assert_allclose(histories[0]["train/value_loss"], local.result.history["train/value_loss"], rtol=1e-4)
        collector = RayCollector(TRIP, TRIP_KW, {**TRIP_FAST, "n_steps": 50}, 2, seed=0)
        two = CellTripAgent(**{**TRIP_FAST, "n_steps": 50}).learn(make(TRIP, **TRIP_KW), 300, seed=0, collector=collector)
        collector.close()
        assert two.result.env_steps == 300
        explained = two.result.history["train/explained_variance"]
        assert np.mean(explained[-3:]) > explained[0] + 0.05, explained  # the critic learns from both runners
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(not _has_ray(), reason='ray[rllib] is not installed (pip install "cellgym[ray]" in its own venv)')
def test_ray_backend_trains_celltrip_with_env_runners(tmp_path: Path) -> None:
    import ray

    ray.shutdown()  # an earlier test (the RLlib backend) may have left Ray running with its defaults
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["train", "--env", TRIP, "--algo", "celltrip", "--backend", "ray", "--num-env-runners", "2",
                     "--partition", "labels", "-n", "60", "-f", str(tmp_path), "--no-progress",
                     "--env-kwargs", "n_cells:80", "max_cells:60", "view:'neighbours'",
                     "--hyperparams", "n_steps:20", "batch_steps:5", "decoder_steps:20",
                     "steady_state_steps:10"]) == 0
    finally:
        ray.shutdown()
    run_dir = tmp_path / "celltrip" / f"{TRIP}_1"
    assert (run_dir / "model" / "weights.pt").is_file()
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    assert config["num_env_runners"] == 2 and config["partition"] == "labels"
    assert "rollout/reward_per_cell" in _events(run_dir).Tags()["scalars"]


def test_ray_backend_celltrip_needs_runners(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    assert main(["train", "--env", TRIP, "--algo", "celltrip", "--backend", "ray", "-f", str(tmp_path)]) == 2
    assert "--num-env-runners" in capsys.readouterr().err
