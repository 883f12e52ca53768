"""Crash test (issue 9): ``cellgym train`` and ``cellgym predict`` in subprocesses, each SIGKILLed at random
points three times, then resumed to completion: the run reaches its step count with readable logs, and the
Parquet output opens and holds exactly the expected rows.

Slow (eight subprocesses, ~1-2 minutes on a loaded machine): ``pytest -m slow tests/test_crash.py``.
The kill points are drawn from a seeded generator (``CRASH_SEED``, default 0) so a failure can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pds
import pytest
import yaml

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "import sys; from cellgym.agents.cli import main; sys.exit(main())"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RNG = random.Random(int(os.environ.get("CRASH_SEED", "0")))
TASK = "CellEnv-Reprogram-HSC-v0"


def _kill_when(argv: list[str], ready, delay: tuple[float, float], timeout: float = 180) -> bool:
    """Start ``cellgym argv``; once ``ready()`` holds, wait a random delay and SIGKILL it.

    Returns True when it was killed, False when it finished first (then it must have succeeded).
    """
    proc = subprocess.Popen([*CLI, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(RNG.uniform(*delay))
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def _run(argv: list[str]) -> str:
    done = subprocess.run([*CLI, *argv], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_train_killed_three_times_resumes_to_completion(tmp_path: Path) -> None:
    n = 8192
    run = tmp_path / "ppo" / f"{TASK}_1"
    first = ["train", "--env", TASK, "--algo", "ppo", "-n", str(n), "-f", str(tmp_path), "--save-freq", "256",
             "--eval-freq", "0", "--no-progress", "--hyperparams", "n_steps:32", "n_epochs:2"]
    resume = ["train", "-i", str(run), "-n", str(n), "--no-progress"]

    def saved_step() -> int:
        return max((int(p.name.split("_")[1]) for p in run.glob("checkpoints/step_*") if p.name.split("_")[1].isdigit()),
                   default=0)

    # kill points tied to training progress, not to wall time (an idle machine trains this run in seconds):
    # after a checkpoint at or past each drawn step (none before the first: there would be nothing to resume)
    targets = sorted(RNG.randrange(256, n // 2, 256) for _ in range(3))
    kills = 0
    for k, target in enumerate(targets):
        killed = _kill_when(first if k == 0 else resume, lambda t=target: saved_step() >= t, (0.0, 0.3))
        kills += killed
        if not killed:
            break
    assert kills >= 2  # the points fall inside training
    if kills == 3:
        _run(resume)
    model = yaml.safe_load((run / "model" / "config.yaml").read_text())
    assert model["num_timesteps"] == n
    assert not list(run.rglob(".*.tmp"))  # no torn temporary checkpoint survives a completed run
    monitor = pd.read_csv(run / "monitor.csv", skiprows=1)  # appended across 4 processes, still one table
    assert len(monitor) > 0 and monitor.notna()["r"].all() and monitor["l"].between(1, 6).all()
    progress = pd.read_csv(run / "progress.csv")
    assert progress["time/total_timesteps"].iloc[-1] == n
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run), size_guidance={"scalars": 0})
    ea.Reload()
    steps = [e.step for e in ea.Scalars("time/fps")]
    assert steps == sorted(set(steps)) and steps[-1] == n  # continues, never restarts or repeats a step
    assert "success rate" in _run(["enjoy", "--env", TASK, "--algo", "ppo", "-f", str(tmp_path), "--episodes", "2"])


@pytest.fixture(scope="module")
def gem1_and_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    import importlib.util

    import anndata as ad

    from cellgym.agents.cli import main
    from cellgym.predictors import Predictor
    from cellgym.predictors.gem1._parquet import write_table

    spec = importlib.util.spec_from_file_location("_gem1_tests", Path(__file__).parent / "predictors" / "test_gem1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tmp = tmp_path_factory.mktemp("crash_predict")
    data = mod.simulate(n=300, g=30)
    data.write_h5ad(tmp / "screen.h5ad")
    assert main(["fit", "--predictor", "gem1.sc", "--data", str(tmp / "screen.h5ad"), "--out", str(tmp / "model"),
                 "--epochs", "2", "--batch-key", "batch", "--predictor-kwargs", "n_hidden:32"]) == 0
    genes = Predictor.load(tmp / "model").genes
    rows = {}
    for k in range(8):  # eight studies, so kills fall between and inside them
        a = mod.simulate(n=400, g=len(genes), seed=k)
        a.var_names = genes
        obs = a.obs.reset_index(drop=True)
        obs["row_id"] = [f"s{k}-{i}" for i in range(len(obs))]
        obs.index = obs.index.astype(str)
        a = ad.AnnData(X=a.X.toarray(), obs=obs, var=a.var)
        write_table(a, tmp / "in", f"s{k}", "input", part=0, rows_per_file=100)
        rows[f"s{k}"] = a.n_obs
    return tmp / "model", tmp / "in", rows


def test_predict_killed_three_times_resumes_to_exact_rows(gem1_and_input, tmp_path: Path) -> None:
    model, inp, rows = gem1_and_input
    out = tmp_path / "out"
    argv = ["predict", "--predictor", str(model), "--task", "predict_expression", "--input", str(inp),
            "--output", str(out), "--batch-size", "8", "--output-batch-size", "40"]
    kills = 0
    for k in range(3):
        started = lambda: (out / "_manifest.json").is_file()  # noqa: E731
        killed = _kill_when(argv if k == 0 else [*argv, "--resume"], started, (0.0, 1.5))
        kills += killed
        if not killed:
            break
        # what a kill leaves is readable and says it is incomplete: whole studies only
        manifest = json.loads((out / "_manifest.json").read_text())
        assert not manifest["complete"]
        if any(out.glob("study=*/*.parquet")):  # none before the first study is complete
            visible = pds.dataset(out, format="parquet", partitioning="hive").to_table(columns=["study"])
            counts = pd.Series(visible.column("study").to_numpy(zero_copy_only=False).astype(str)).value_counts()
            assert all(counts[s] == rows[s] for s in counts.index)
    assert kills >= 2
    if kills == 3:
        assert f"holds {sum(rows.values())} rows" in _run([*argv, "--resume"])
    table = pds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == sum(rows.values())
    ids = np.asarray(table.column("row_id").to_numpy(zero_copy_only=False), dtype=str)
    assert len(set(ids)) == len(ids)  # every input row exactly once
    studies = pd.Series(table.column("study").to_numpy(zero_copy_only=False).astype(str)).value_counts().to_dict()
    assert studies == rows
    assert json.loads((out / "_manifest.json").read_text())["complete"]
