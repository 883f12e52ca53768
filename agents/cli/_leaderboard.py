"""``cellgym leaderboard``: predictors x splits x data sets and agents x tasks in one versioned table.

Runs every entry of :mod:`cellgym.agents.leaderboard` (embedded simulated data always; the real screens
when ``--data-dir`` holds them) and writes ``<out>.csv`` (long format, one measurement a row, stamped
with the cellgym version, data hash and seed), ``<out>.md`` (one table per section) and ``<out>.png``.
``--compare OLD.csv`` prints and writes ``<out>_compare.csv``: the two versions row by row.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cellgym.predictors.base.errors import CellgymError

__all__ = ["add_parser", "markdown", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``leaderboard`` subcommand."""
    p = sub.add_parser("leaderboard", help="one versioned table of predictors and agents (CSV + Markdown + figure)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with perturb/norman19_mcfaline23_devel.h5ad and "
                   "perturb/papalexi2021_thp1_lowmoi.h5ad (e.g. ../shared/data); without it only simulated data runs")
    p.add_argument("--quick", action="store_true", help="only the fast entries (a few minutes on 2 cores)")
    p.add_argument("--sections", nargs="+", default=None, metavar="SECTION",
                   help="only these sections: predictors agents sim_to_real design (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="leaderboard/leaderboard", help="output prefix")
    p.add_argument("--compare", default=None, metavar="OLD.csv", help="an earlier leaderboard CSV to compare with")
    p.set_defaults(run=run)


def _write(path: Path, data: bytes | str) -> None:
    """Atomic write: temporary name in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def markdown(df) -> str:
    """One Markdown table per section: rows (dataset, setting, model), columns the metrics."""
    parts = []
    for section, g in df.groupby("section", sort=False):
        wide = g.pivot_table(index=["dataset", "setting", "model"], columns="metric", values="value", sort=False)
        metrics = list(dict.fromkeys(g["metric"]))
        lines = [f"### {section}", "", "| data | setting | model | " + " | ".join(metrics) + " |",
                 "|---|---|---|" + "---|" * len(metrics)]
        for (dataset, setting, model), row in wide.iterrows():
            cells = ["-" if row.get(m) != row.get(m) else f"{row[m]:.3f}" for m in metrics]
            lines.append(f"| {dataset} | {setting} | {model} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def figure(df, path: Path) -> None:
    """Bar charts: predictors' pearson_delta per data set, and design top-5 recovery per world x planner."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("predictors", "pearson_delta", "held-out pearson_delta"), ("design", "top5", "design: true set in top 5")]
    groups = [df[(df["section"] == sec) & (df["metric"] == met)] for sec, met, _ in panels]
    rows = max([len(g) for g in groups] + [1])
    fig, axes = plt.subplots(1, 2, figsize=(15, max(4.5, 0.17 * rows + 1.0)))
    for ax, (_, metric, title), g in zip(axes, panels, groups, strict=True):
        if g.empty:
            ax.set_axis_off()
            continue
        labels = [f"{m}  |  {d.split(' (')[0]} {s.split(' (')[0]}" for d, s, m in zip(g["dataset"], g["setting"], g["model"], strict=True)]
        ax.barh(range(len(g)), g["value"], color="tab:blue")
        ax.set_yticks(range(len(g)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    _write(path, buffer.getvalue())


def run(args: argparse.Namespace) -> int:
    """Run, print the Markdown tables, write CSV / MD / PNG (and the comparison)."""
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from cellgym.agents.leaderboard import compare, run_leaderboard, selected

    torch.set_num_threads(1)
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise CellgymError(f"--data-dir {args.data_dir!r}: no such folder.")
    old = None
    if args.compare:
        if not Path(args.compare).is_file():
            raise CellgymError(f"--compare {args.compare!r}: no such file; pass a CSV an earlier leaderboard wrote.")
        old = pd.read_csv(args.compare)
        missing = {"section", "dataset", "setting", "model", "metric", "value"} - set(old.columns)
        if missing:
            raise CellgymError(f"--compare {args.compare!r} is not a leaderboard CSV (no columns {sorted(missing)}).")
    jobs = selected(data_dir, quick=args.quick, sections=args.sections)
    bar = tqdm(total=len(jobs), desc="leaderboard", unit="entry")

    def progress(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update()

    df = pd.DataFrame(run_leaderboard(data_dir, quick=args.quick, seed=args.seed, sections=args.sections, progress=progress))
    bar.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = markdown(df)
    print(table)
    _write(out.with_suffix(".csv"), df.to_csv(index=False))
    _write(out.with_suffix(".md"), table + "\n")
    figure(df, out.with_suffix(".png"))
    written = [out.with_suffix(s) for s in (".csv", ".md", ".png")]
    if old is not None:
        diff = compare(df, old)
        path = out.with_name(out.name + "_compare.csv")
        _write(path, diff.to_csv(index=False))
        changed = diff[diff["change"].abs() > 1e-9]
        print(f"\ncompared with {args.compare}: {len(diff)} rows, {len(changed)} changed, "
              f"{int((diff['status'] == 'new').sum())} new, {int((diff['status'] == 'gone').sum())} gone")
        written.append(path)
    print("\nwritten: " + ", ".join(map(str, written)))
    return 0
