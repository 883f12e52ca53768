"""A run continued after an interruption vs the same run uninterrupted (PPO on CellEnv-Reprogram-HSC-v0).

Trains PPO straight to ``2 n`` steps (checkpoint at ``n``), then continues a copy of that run from its
step-``n`` checkpoint (what ``cellgym train -i`` does after a kill at ``n``) to ``2 n``. Prints the step
counts, whether the final weights are equal, and each agent's success rate and mean return over 100
episodes (seeds 1000...). They are not bit-identical: the environments' mid-episode populations and random
streams are not part of a checkpoint, so the continued half starts fresh episodes (seeded from the step).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/resume.py [--steps 8192] [--out /tmp/cellgym_resume]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
import time
from pathlib import Path

import torch
import yaml

from cellgym.agents.cli import main

TASK = "CellEnv-Reprogram-HSC-v0"


def _enjoy(folder: Path) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(["enjoy", "--env", TASK, "--algo", "ppo", "-f", str(folder), "--episodes", "100", "--seed", "1000"])
    return re.search(r"success rate .*", buffer.getvalue()).group(0)


def run(steps: int, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    quiet = contextlib.redirect_stdout(io.StringIO())
    t0 = time.perf_counter()
    with quiet:
        assert main(["train", "--env", TASK, "--algo", "ppo", "-n", str(2 * steps), "--seed", "0",
                     "-f", str(out / "straight"), "--save-freq", str(steps), "--eval-freq", "0", "--no-progress"]) == 0
    t1 = time.perf_counter()
    straight = out / "straight" / "ppo" / f"{TASK}_1"
    continued = out / "continued" / "ppo" / f"{TASK}_1"
    shutil.copytree(straight, continued)
    shutil.rmtree(continued / "model")
    shutil.rmtree(continued / "checkpoints" / f"step_{2 * steps}")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "-i", str(continued / "checkpoints" / f"step_{steps}"), "-n", str(2 * steps),
                     "--no-progress"]) == 0
    t2 = time.perf_counter()
    a = torch.load(straight / "model" / "weights.pt", weights_only=True)["params"]["policy"]
    b = torch.load(continued / "model" / "weights.pt", weights_only=True)["params"]["policy"]
    step = [yaml.safe_load((r / "model" / "config.yaml").read_text())["num_timesteps"] for r in (straight, continued)]
    print(f"steps: straight {step[0]:,}, continued {step[1]:,}")
    print(f"weights equal: {all(torch.equal(a[k], b[k]) for k in a)}, "
          f"max |difference| {max(float((a[k] - b[k]).abs().max()) for k in a):.3f}")
    print(f"wall time: straight {t1 - t0:.0f} s, continued half {t2 - t1:.0f} s")
    print(f"straight:  {_enjoy(out / 'straight')}")
    print(f"continued: {_enjoy(out / 'continued')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8192, help="steps before the interruption (half the run)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cellgym_resume"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.steps, args.out)
