"""Issue 9, defects 3-5 and 7: ``cellgym train`` loses nothing to an interruption, resumes the same run, names
TensorBoard runs uniquely, and reports every broken agent checkpoint in one line (HSC Boolean world)."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cellgym.agents.cli import main

TASK = "CellEnv-Reprogram-HSC-v0"
FAST = ["--eval-freq", "0", "--no-progress", "--hyperparams", "n_steps:32", "n_epochs:2"]


def _train(folder: Path, n: int, *extra: str) -> int:
    return main(["train", "--env", TASK, "--algo", "ppo", "-n", str(n), "--seed", "1", "-f", str(folder),
                 "--save-freq", "512", *FAST, *extra])


def _steps(run: Path) -> dict[str, list[int]]:
    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [e.step for e in ea.Scalars(tag)] for tag in ("time/fps", "cell/success_rate")}


def _config(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


@pytest.fixture(scope="module")
def run_1024(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    assert _train(folder, 1024) == 0
    return folder / "ppo" / f"{TASK}_1"


def test_checkpoints_are_saved_by_default(tmp_path: Path) -> None:
    """Defect 3: with the old default (--save-freq -1) a kill before the end left nothing usable."""
    assert main(["train", "--env", TASK, "--algo", "ppo", "-n", "2048", "-f", str(tmp_path), *FAST]) == 0
    run = tmp_path / "ppo" / f"{TASK}_1"
    assert yaml.safe_load((run / "config.yml").read_text())["save_freq"] == 1000  # a tenth of -n, >= 1000
    # at the first rollout boundary (8 envs x 32 steps) after each multiple of 1000
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1024", "step_2048"]
    assert not [p for p in run.rglob(".*")]  # no temporary names left behind


def test_resume_from_a_checkpoint_continues_the_same_run(run_1024: Path, tmp_path: Path) -> None:
    """Defect 4: resuming from checkpoints/step_N started a new run whose step counter restarted at 0."""
    run = tmp_path / "ppo" / f"{TASK}_1"
    shutil.copytree(run_1024, run)
    before = pd.read_csv(run / "monitor.csv", skiprows=1)
    shutil.rmtree(run / "model")  # what a SIGKILL between the two checkpoints leaves: no model/
    shutil.rmtree(run / "checkpoints" / "step_1024")
    # the README's `-i RUN/model` finds the newest complete checkpoint when model/ was never written
    assert main(["train", "-i", str(run / "model"), "-n", "2048", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "ppo").iterdir()) == [f"{TASK}_1"]  # no new run folder
    assert _config(run / "model")["num_timesteps"] == 2048
    assert yaml.safe_load((run / "config.yml").read_text())["n_timesteps"] == 2048
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1024", "step_1536", "step_2048", "step_512"]
    # the monitor CSV is appended to (one header), its clock continuing
    text = (run / "monitor.csv").read_text()
    assert text.count("r,l,t") == 1
    after = pd.read_csv(run / "monitor.csv", skiprows=1)
    assert len(after) > len(before) and after["t"].is_monotonic_increasing
    # TensorBoard continues: the steps of the resumed segment start after 512 (the checkpoint) and end at
    # 2048; events the first segment logged after step 512 are purged, so no step appears twice
    steps = _steps(run)["time/fps"]
    assert steps == sorted(set(steps)) and steps[-1] == 2048 and steps[0] < 512
    progress = pd.read_csv(run / "progress.csv")
    assert progress["time/total_timesteps"].iloc[-1] == 2048
    assert "# continued from" in (run / "command.txt").read_text()


def test_resume_is_reproducible(run_1024: Path, tmp_path: Path) -> None:
    """Same checkpoint, same seed: the same continued weights (the episodes after a resume are seeded)."""
    weights = []
    for k in range(2):
        run = tmp_path / str(k) / "ppo" / f"{TASK}_1"
        shutil.copytree(run_1024, run)
        assert main(["train", "-i", str(run / "checkpoints" / "step_512"), "-n", "1024", "--no-progress"]) == 0
        weights.append(torch.load(run / "model" / "weights.pt", weights_only=True)["params"]["policy"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_resume_keeps_the_replay_buffer(tmp_path: Path) -> None:
    from cellgym.agents.zoo import SB3Agent, make_sb3_vec_env

    hp = ["--hyperparams", "learning_starts:64", "buffer_size:2000"]
    assert main(["train", "--env", TASK, "--algo", "dqn", "-n", "600", "-f", str(tmp_path), "--save-freq", "300",
                 "--eval-freq", "0", "--no-progress", *hp]) == 0
    run = tmp_path / "dqn" / f"{TASK}_1"
    assert not (run / "checkpoints" / "step_300" / "replay_buffer.pt").exists()  # only the newest keeps one
    saved = torch.load(run / "checkpoints" / "step_600" / "replay_buffer.pt", weights_only=True)
    config = _config(run / "model")
    agent = SB3Agent("dqn", policy_kwargs=config["policy_kwargs"], algo_kwargs=config["algo_kwargs"])
    agent.build(make_sb3_vec_env(TASK, 1))
    assert agent.restore_training_state(run / "model") == 600
    buffer = agent.model.replay_buffer
    assert buffer.pos == saved["pos"] == 600 and buffer.size() == 600
    np.testing.assert_array_equal(buffer.observations[:600], saved["observations"].numpy())
    assert main(["train", "-i", str(run), "-n", "900", "--no-progress"]) == 0
    assert _config(run / "model")["num_timesteps"] == 900


@pytest.mark.slow  # a subprocess: ~15 s on a loaded machine
def test_sigint_saves_the_model_with_one_line(tmp_path: Path) -> None:
    """Defect 3: Ctrl-C printed a KeyboardInterrupt traceback and lost the model."""
    cmd = [sys.executable, "-c", "import sys; from cellgym.agents.cli import main; sys.exit(main())", "train",
           "--env", TASK, "--algo", "ppo", "-n", "1000000", "-f", str(tmp_path), "--save-freq", "256", *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    run = tmp_path / "ppo" / f"{TASK}_1"
    deadline = time.time() + 120
    while not list(run.glob("checkpoints/step_*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "stopped by SIGINT at step" in err and f"cellgym train -i {run}" in err
    steps = _config(run / "model")["num_timesteps"]
    assert steps >= 256 and f"step {steps:,}" in err
    # enjoy finds it, and so does a resume
    assert main(["enjoy", "--env", TASK, "--algo", "ppo", "-f", str(tmp_path), "--episodes", "1"]) == 0


def test_enjoy_uses_the_newest_complete_checkpoint(run_1024: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "ppo" / f"{TASK}_1"
    shutil.copytree(run_1024, run)
    shutil.rmtree(run / "model")  # killed after its last periodic checkpoint
    (run / "checkpoints" / ".step_1536.tmp").mkdir()  # a checkpoint being written when the kill came
    assert main(["enjoy", "--env", TASK, "--algo", "ppo", "-f", str(tmp_path), "--episodes", "1"]) == 0
    assert f"from {run / 'checkpoints' / 'step_1024'} (step 1,024)" in capsys.readouterr().out


def test_a_failed_run_leaves_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path, 512, "--env-kwargs", "fate:neuron") == 2  # fails when the env is built
    assert "fate 'neuron'" in capsys.readouterr().err
    assert not (tmp_path / "ppo").exists() or not list((tmp_path / "ppo").iterdir())


def test_benchmark_runs_stay_apart_from_train_runs(tmp_path: Path) -> None:
    from cellgym.agents.cli._benchmark import benchmark

    benchmark([TASK], ["ppo"], episodes=2, n_timesteps=64, hyperparams={"n_steps": 32}, folder=tmp_path)
    assert not (tmp_path / "ppo").exists() and (tmp_path / "benchmark" / "ppo" / f"{TASK}_1" / "model").is_dir()


def test_runs_sharing_a_tensorboard_root_get_their_own_tensorboard_runs(tmp_path: Path) -> None:
    """Defect 5: two runs with different -f and one -tb wrote into the same TensorBoard run."""
    tb = tmp_path / "tb"
    for folder in ("a", "b"):
        assert main(["train", "--env", TASK, "--algo", "ppo", "-n", "128", "-f", str(tmp_path / folder),
                     "-tb", str(tb), *FAST]) == 0
    runs = sorted((tb / "ppo").iterdir())
    assert [p.name for p in runs] == [f"{TASK}_1", f"{TASK}_2"]
    for run in runs:
        assert len(list(run.glob("events.out.tfevents.*"))) == 1
        lines = (run / "progress.csv").read_text().splitlines()
        assert len({line.count(",") for line in lines}) == 1  # one header, rows of its width
    pointers = {(tmp_path / f / "ppo" / f"{TASK}_1" / "tensorboard_dir.txt").read_text().strip() for f in "ab"}
    assert pointers == {str(r.resolve()) for r in runs}


class _Payload:
    """Unpickling this would create a file; loading a checkpoint must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _break(run: Path, how: str, tmp_path: Path) -> str:
    """Damage ``run`` in one way; returns the file the message must name."""
    model = run / "model"
    if how == "truncated":
        data = (model / "weights.pt").read_bytes()
        (model / "weights.pt").write_bytes(data[: len(data) // 3])
    elif how == "empty":
        (model / "weights.pt").write_bytes(b"")
    elif how == "pickle":
        with (model / "weights.pt").open("wb") as fh:
            pickle.dump({"params": _Payload(tmp_path / "pwned")}, fh)
    elif how == "python-tag":
        text = (model / "config.yaml").read_text()
        (model / "config.yaml").write_text(text + "hook: !!python/object/apply:os.system ['touch pwned']\n")
    elif how == "run-python-tag":
        text = (run / "config.yml").read_text()
        (run / "config.yml").write_text(text + "hook: !!python/object/apply:os.system ['touch pwned']\n")
        return "config.yml"
    elif how == "invalid-yaml":
        (model / "config.yaml").write_text("algo: ppo\npolicy: [unclosed\n")
    elif how == "net-arch":
        for file, keys in ((model / "config.yaml", ()), (run / "config.yml", ("hyperparams",))):
            config = yaml.safe_load(file.read_text())
            inner = config[keys[0]] if keys else config
            inner["policy_kwargs"]["net_arch"] = [8]
            file.write_text(yaml.safe_dump(config))
        return "weights.pt"
    return "weights.pt" if how in ("truncated", "empty", "pickle") else "config.yaml"


@pytest.mark.parametrize("how", ["truncated", "empty", "pickle", "python-tag", "run-python-tag", "invalid-yaml",
                                 "net-arch"])
def test_broken_agent_checkpoints_are_one_line(how: str, run_1024: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 7: through enjoy and train -i, every broken checkpoint is one line naming the file; no code runs."""
    run = tmp_path / "ppo" / f"{TASK}_1"
    shutil.copytree(run_1024, run)
    shutil.rmtree(run / "checkpoints")  # so that model/ is the newest (and only) checkpoint
    named = _break(run, how, tmp_path)
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for argv in (["enjoy", "--env", TASK, "--algo", "ppo", "-f", str(tmp_path), "--episodes", "1"],
                     ["train", "-i", str(run), "-n", "2048", "--no-progress"]):
            capsys.readouterr()
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1 and named in err, err
            assert "Traceback" not in err and "weights_only" not in err
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()  # nothing in the files was run
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # a failed resume changes nothing in the run
