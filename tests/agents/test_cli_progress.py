"""Progress bars of ``train``, ``enjoy``, ``benchmark`` and CellTRIP training, read from the captured stderr;
and ``train --vec-env subproc`` end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from cellgym.agents.cli import main

TASK = "CellEnv-Reprogram-HSC-v0"


def _last_count(err: str, desc: str) -> tuple[int, int]:
    """(n, total) of the last state tqdm drew of the bar named ``desc``."""
    states = re.findall(rf"{re.escape(desc)}: +\d+%\|[^|\r\n]*\| *(\d+)/(\d+)", err)
    assert states, f"no {desc!r} bar in stderr: {err[-500:]!r}"
    n, total = states[-1]
    return int(n), int(total)


def test_enjoy_bar_counts_episodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enjoy", "--env", TASK, "--algo", "bfs", "-f", str(tmp_path), "--episodes", "3"]) == 0
    captured = capsys.readouterr()
    assert _last_count(captured.err, "enjoy bfs") == (3, 3)
    assert captured.out.count("episode ") == 3  # the bar is on stderr, the report on stdout
    assert main(["enjoy", "--env", TASK, "--algo", "bfs", "-f", str(tmp_path), "--episodes", "2",
                 "--no-progress"]) == 0
    assert "enjoy bfs" not in capsys.readouterr().err


def test_benchmark_bar_counts_every_train_and_play_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # random is both an algo and a baseline: played once; greedy and bfs follow -> 3 jobs
    assert main(["benchmark", "--env", TASK, "--algo", "random", "--episodes", "2", "-f", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert _last_count(captured.err, "benchmark") == (3, 3)
    assert list(pd.read_csv(tmp_path / "benchmark.csv")["agent"]) == ["random", "greedy", "bfs"]


def test_celltrip_progress_moves_with_every_environment_step() -> None:
    # the bar advances per environment step from the first one, not once per rollout (after its update)
    from cellgym.registry import make, make_agent

    env = make("CellEnv-Trip-Integration-v0", n_cells=60, min_cells=40, max_cells=60, episode_length=(10, 15))
    agent = make_agent("celltrip", n_steps=10, batch_steps=5, n_epochs=1, decoder_steps=10, steady_state_steps=5)
    from cellgym.agents.celltrip._ppo import train

    agent._check_env(env, seed=0)  # builds the network for this world, as learn() does first
    ticks: list[int] = []
    result = train(agent.config, env, agent.model, 25, seed=0, progress=ticks.append)
    assert ticks == [1] * 25 and result.env_steps == 25


def test_celltrip_cli_bar_reaches_its_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--env", "CellEnv-Trip-Integration-v0", "--algo", "celltrip", "-n", "12",
                 "-f", str(tmp_path), "--env-kwargs", "n_cells:60", "min_cells:40", "max_cells:60",
                 "--hyperparams", "n_steps:6", "batch_steps:3", "n_epochs:1", "decoder_steps:5",
                 "steady_state_steps:3"]) == 0
    assert _last_count(capsys.readouterr().err, "celltrip") == (12, 12)


def test_train_with_subprocess_vec_envs_matches_dummy_and_its_bar_ends_at_the_total(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --vec-env subproc steps the sub-envs in worker processes; same seed, same episodes and weights as dummy.
    # -n 250 with 2 envs x 32 steps per rollout trains 256 steps: the bar's total is 256 and it ends there
    runs = {}
    for kind in ("dummy", "subproc"):
        folder = tmp_path / kind
        assert main(["train", "--env", TASK, "--algo", "ppo", "-n", "250", "--seed", "5", "--vec-env", kind,
                     "--hyperparams", "n_envs:2", "n_steps:32", "batch_size:32", "n_epochs:2",
                     "--eval-freq", "0", "--save-freq", "0", "-f", str(folder)]
                    + (["--no-progress"] if kind == "dummy" else [])) == 0
        runs[kind] = folder / "ppo" / f"{TASK}_1"
    captured = capsys.readouterr()
    assert _last_count(captured.err, "ppo") == (256, 256) and captured.err.count("ppo: 100%") >= 1
    assert "to 256 steps" in captured.out
    monitors = {k: pd.read_csv(r / "monitor.csv", skiprows=1) for k, r in runs.items()}
    assert len(monitors["subproc"]) > 20 and monitors["subproc"]["l"].max() <= 6
    pd.testing.assert_frame_equal(monitors["subproc"][["r", "l", "success"]], monitors["dummy"][["r", "l", "success"]])
    weights = {k: torch.load(r / "model" / "weights.pt", weights_only=True)["params"]["policy"] for k, r in runs.items()}
    assert all(torch.equal(weights["dummy"][k], weights["subproc"][k]) for k in weights["dummy"])
