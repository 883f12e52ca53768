"""``cellgym design-benchmark``: which perturbations produce these cells? Worlds x planners on held-out targets.

Every task holds out its targets (Norman: every double whose singles were measured alone; Papalexi: 8
knockouts; SERGIO: 6 simulated doubles), fits each world (``--worlds``, registered predictors) once without
them, and lets each planner rank every set of up to ``--max-perturbations`` singles. Reports top-1 / top-5
recovery of the true set, its mean rank, the real energy distance between the top proposal's measured
cells and the target's (where measured), chance, and the oracle (the measured condition closest to the
target). Writes ``<out>.md``, ``<out>.csv`` (summary) and ``<out>_targets.csv`` (per target).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cellgym.predictors.base._atomic import atomic_write_text
from cellgym.predictors.base.errors import CellgymError

__all__ = ["add_parser", "markdown", "run"]

DEFAULT_WORLDS = ("baseline.nochange", "baseline.mean", "baseline.additive", "baseline.linear")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``design-benchmark`` subcommand."""
    p = sub.add_parser("design-benchmark", help="rank perturbations that produce held-out cells: worlds x planners",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", nargs="+", default=["CellEnv-Design-SERGIO-v0"], metavar="TASK[=PATH]",
                   help="design tasks, with the data file after '=' where the task reads one "
                        "(e.g. CellEnv-Design-Norman-v0=norman19_mcfaline23_devel.h5ad)")
    p.add_argument("--worlds", nargs="+", default=list(DEFAULT_WORLDS), metavar="PREDICTOR")
    p.add_argument("--planners", nargs="+", default=["random", "greedy", "exhaustive", "maskable_ppo"])
    p.add_argument("--max-perturbations", type=int, default=None,
                   help="largest set proposed (default per task: 2 for doubles, 1 for Papalexi's single knockouts)")
    p.add_argument("--ppo-timesteps", type=int, default=6000, help="MaskablePPO training steps per target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/design/benchmark", help="output prefix")
    p.set_defaults(run=run)


def parse_tasks(items: list[str]) -> dict[str, str | None]:
    """``["T=path", "U"]`` -> ``{"T": "path", "U": None}``; unknown tasks raise with the known ones."""
    from cellgym.envs.design import DESIGN_TASKS

    out: dict[str, str | None] = {}
    for item in items:
        task, _, path = item.partition("=")
        if task not in DESIGN_TASKS:
            raise CellgymError(f"--task {task!r}: expected one of {list(DESIGN_TASKS)}.")
        out[task] = path or None
    return out


def run(args: argparse.Namespace) -> int:
    """Score, print the Markdown table, write the files."""
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from cellgym.agents.design import design_benchmark
    from cellgym.agents.design._score import summarise

    torch.set_num_threads(1)
    if args.max_perturbations is not None and args.max_perturbations < 1:
        raise CellgymError(f"--max-perturbations must be >= 1, got {args.max_perturbations}.")
    tasks = parse_tasks(args.task)
    from cellgym.envs.design import problems_for

    problems = {t: problems_for(t, p) for t, p in tasks.items()}
    total = sum(len(v) for v in problems.values()) * len(args.worlds) * len(args.planners)
    bar = tqdm(total=total, desc="design-benchmark", unit="run")

    def progress(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update()

    scores, oracles = design_benchmark(problems, args.worlds, args.planners, max_perturbations=args.max_perturbations,
                                       ppo_timesteps=args.ppo_timesteps, seed=args.seed, progress=progress)
    bar.close()
    summary = pd.DataFrame(summarise(scores, oracles))
    table = markdown(summary.to_dict("records"))
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from dataclasses import asdict

    atomic_write_text(out.with_suffix(".md"), table + "\n")
    atomic_write_text(out.with_suffix(".csv"), summary.to_csv(index=False))
    atomic_write_text(out.with_name(out.name + "_targets.csv"), pd.DataFrame([asdict(s) for s in scores]).to_csv(index=False))
    print(f"\nwritten: {out.with_suffix('.md')}, {out.with_suffix('.csv')}, {out.with_name(out.name + '_targets.csv')}")
    return 0


def markdown(rows: list[dict]) -> str:
    """Summary rows as a Markdown table (recovery in %, '-' where a column does not apply)."""
    def pct(v: float) -> str:
        return "-" if v != v else f"{v:.0%}"

    def num(v: float) -> str:
        return "-" if v != v else f"{v:.3g}"

    lines = ["| task | world | planner | targets | top-1 | top-5 | mean rank (of N) | real E-dist of top proposal | measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['world']} | {r['planner']} | {r['n_targets']} | {pct(r['top1'])} | {pct(r['top5'])} | "
                     f"{num(r['mean_rank'])} (of {r['n_candidates']}) | {num(r['real_energy_distance'])} | {pct(r['measured'])} |")
    return "\n".join(lines)


