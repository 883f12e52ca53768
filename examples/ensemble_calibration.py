"""Does ensemble disagreement flag where a learned world is wrong? Spearman of disagreement vs true error.

Simulates a ``grn.sergio`` screen on the shipped 20-gene "lineages" network (singles + doubles, three
cell types), holds out perturbations (``split(kind="perturbations")``), fits an ``ensemble`` on the rest
and, for every held-out (cell type, perturbation), compares the members' mean per-cell disagreement
with the true error |predicted - real| of the mean expression (mean over genes). Prints the Spearman
correlation over groups.

``--unseen prior`` (default) lets members differ on singles none of them measured (centred draws of the
screen's single effects, see :class:`~cellgym.predictors.ensemble.EnsemblePredictor`); ``--unseen family``
keeps each family's own prediction there, so the members agree exactly where nobody has data.

Run: ``.venv/bin/python examples/ensemble_calibration.py [--members baseline.linear baseline.additive] [--seed 0]
[--unseen family]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import stats

from cellgym.predictors import DataSpec, expression, split
from cellgym.predictors.ensemble import EnsemblePredictor
from cellgym.predictors.grn import simulate_screen
from cellgym.registry import make_predictor


def main() -> None:
    """Print the Spearman correlation of disagreement with true error over held-out groups."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", nargs="+", default=["baseline.linear", "baseline.additive"])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unseen", default="prior", choices=["prior", "family"],
                        help="how members differ on singles they never saw (EnsemblePredictor unseen=)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sim = make_predictor("grn.sergio", network="lineages", overexpression=1.0)
    adata = simulate_screen(sim, n_cells_per_condition=60, doubles=20, seed=args.seed)
    spec = DataSpec(context_key="cell_type")
    s = split(adata, spec, "perturbations", seed=args.seed)
    labels_all = adata.obs[spec.perturbation_key].astype(str).to_numpy()
    train_singles = {t for lab in set(labels_all[s.train]) for t in spec.split_label(lab)}
    extra = sorted({t for lab in set(labels_all[s.test]) for t in spec.split_label(lab)} - train_singles)
    ens = EnsemblePredictor(members=args.members, n_members=args.k, extra_perturbations=extra, unseen=args.unseen)
    ens.fit(adata[s.train], spec, seed=args.seed)
    x = expression(adata, spec)
    labels = adata.obs[spec.perturbation_key].astype(str).to_numpy()
    ctx = adata.obs[spec.context_key].astype(str).to_numpy()
    test = np.zeros(adata.n_obs, dtype=bool)
    test[s.test] = True
    rows = []
    for c in sorted(set(ctx[test])):
        ctrl = torch.from_numpy(x[(labels == spec.control) & (ctx == c)])
        ci = ens.encode_contexts([c]).expand(ctrl.shape[0])
        for lab in sorted(set(labels[test & (ctx == c)])):
            pert = ens.encode_perturbations([lab]).expand(ctrl.shape[0], -1)
            members = ens.predict_members(ctrl, pert, ci)
            err = float(np.abs(members.mean(0).mean(0).numpy() - x[test & (ctx == c) & (labels == lab)].mean(0)).mean())
            rows.append((c, lab, float(ens.disagreement(ctrl, pert, ci).mean()), err))
    dis, err = np.array([r[2] for r in rows]), np.array([r[3] for r in rows])
    rho = stats.spearmanr(dis, err)
    print(f"{len(rows)} held-out (cell type, perturbation) groups; members {args.members} x{args.k} (bootstrap), "
          f"unseen={args.unseen!r}")
    print(f"Spearman(disagreement, true error) = {rho.statistic:.3f} (p = {rho.pvalue:.2g})")
    unseen = np.array([r[1] in extra for r in rows])  # singles no training label contains
    for name, mask in (("unseen singles", unseen), ("other held-out groups", ~unseen)):
        if mask.sum() > 2:
            r = stats.spearmanr(dis[mask], err[mask]).statistic
            print(f"  {name} ({mask.sum()}): Spearman {r:.3f}, mean disagreement {dis[mask].mean():.3f}, "
                  f"mean error {err[mask].mean():.3f}")


if __name__ == "__main__":
    main()
