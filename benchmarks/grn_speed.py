"""Cells per second of the ground-truth simulators' ``predict_batch`` / ``sample_batch`` (one thread).

Run: ``python benchmarks/grn_speed.py [--cells 10000] [--sergio ../shared/data/grn/sergio_ds1]``
"""

from __future__ import annotations

import argparse
import time

import torch

from cellgym.predictors.grn import BooleanPredictor, SergioPredictor


def _time(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    """Print one row per simulator and dynamics."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--sergio", help="SERGIO data-set folder (default: the random 20-gene network)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.cells
    rows = []
    for dyn in ("sync", "async", "ode", "sde"):
        p = BooleanPredictor(dynamics=dyn)
        x = p.initial_states(n, generator=torch.Generator().manual_seed(0))
        pert = torch.zeros(n, len(p.perturbations))
        pert[:, p.perturbations.index("Gata1_KO")] = 1.0
        g = torch.Generator().manual_seed(0)
        call = (lambda p=p, x=x, pert=pert, g=g: p.sample_batch(x, pert, generator=g)) if dyn in ("async", "sde") else (
            lambda p=p, x=x, pert=pert: p.predict_batch(x, pert))
        rows.append((f"grn.boolean krumsiek11 {dyn}", p.config["n_steps"], _time(call)))
    s = SergioPredictor(network=args.sergio)
    ctx = torch.arange(n) % len(s.contexts)
    x = s.initial_states(n, ctx, generator=torch.Generator().manual_seed(0))
    pert = torch.zeros(n, len(s.perturbations))
    g = torch.Generator().manual_seed(0)
    rows.append((f"grn.sergio {len(s.genes)} genes predict", s.config["n_steps"], _time(lambda: s.predict_batch(x, pert, ctx), 1)))
    rows.append((f"grn.sergio {len(s.genes)} genes sample", s.config["n_steps"], _time(lambda: s.sample_batch(x, pert, ctx, generator=g), 1)))
    print(f"| simulator | steps per call | seconds for {n} cells | cell-steps/s |")
    print("|---|---|---|---|")
    for name, steps, sec in rows:
        print(f"| {name} | {steps} | {sec:.3f} | {n * steps / sec:.3g} |")


if __name__ == "__main__":
    main()
