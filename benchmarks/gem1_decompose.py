"""Where GEM-1's prediction of an unseen Papalexi knockout comes from: one fit, its parts, next to baseline.mean.

Fits ``gem1.nb`` (or ``--predictor``) once on the ``perturbations`` split of the Papalexi file and, for the
held-out knockouts, splits its predicted change (mean predicted cells - mean control cells) into

- the decoder's reconstruction bias: decoded control cells (no perturbation) - the real control cells;
- the unseen effect: the weighted mean of the seen singles' predicted changes (``unseen_effect="mean_of_seen"``),
  before and after the clamp at 0 that ``predict_batch`` applies;

and compares each with ``baseline.mean``'s change (the equal-weight mean of the training knockouts' measured
pseudobulk deltas) and with the truth (pearson over genes, averaged over held-out knockouts). It also scores
each seen single's predicted change against its measured one, and the whole predictions of
``unseen_effect="mean_of_seen"`` and ``"measured"`` (the default). Figures only; it never passes or fails.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gem1_decompose.py --max-epochs 30 [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "perturb"


def r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson over genes (0 for a constant vector, as cellgym's pearson_delta)."""
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 1e-12 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--predictor", default="gem1.nb")
    parser.add_argument("--delta-weight", type=float, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import anndata as ad

    from cellgym.predictors import DataSpec, split
    from cellgym.predictors.base import expression
    from cellgym.registry import make_predictor

    adata = ad.read_h5ad(DATA / "papalexi2021_thp1_lowmoi.h5ad")
    adata = adata[adata.obs["perturbation"].astype(str) != "unassigned"].copy()
    spec = DataSpec(context_key=None)
    sp = split(adata, spec, "perturbations", args.seed)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    x = expression(adata, spec).astype(np.float64)
    train = np.zeros(len(labels), bool)
    train[sp.train] = True
    held = sorted(set(labels[sp.test]))
    seen = sorted(set(labels[train]) - {"control"})
    ctrl = x[train & (labels == "control")]
    c0 = ctrl.mean(0)
    truth = {h: x[labels == h].mean(0) - c0 for h in held}
    measured = {s: x[train & (labels == s)].mean(0) - c0 for s in seen}
    mean_effect = np.mean([measured[s] for s in seen], 0)  # what baseline.mean adds (one weight per label)
    print(f"seed {args.seed}: held out {held}; {len(seen)} seen knockouts")

    kwargs = {"extra_perturbations": held}
    if args.delta_weight is not None:
        kwargs["delta_weight"] = args.delta_weight
    model = make_predictor(args.predictor, **kwargs)
    t0 = time.perf_counter()
    report = model.fit(adata[sp.train].copy(), spec, epochs=args.max_epochs, seed=args.seed)
    print(f"{args.predictor} fitted: {report.epochs} epochs, {time.perf_counter() - t0:.0f} s wall (loaded machine)")
    m = model.module
    m.eval()
    xc = torch.from_numpy(ctrl.astype(np.float32))
    with torch.no_grad():
        q = m.posterior(xc)
        tech, bio = q[0].mean, q[1].mean
        p = m.n_perturbations
        z_ref = m.prior(2, m.pert_features(xc.new_zeros(1, p))).mean
        f_ref = m.log1p_expression(m.decode(torch.cat([tech, bio, z_ref.expand(len(xc), -1)], -1))).double().numpy()
        recon_bias = f_ref.mean(0) - c0
        # each seen single's predicted change per control cell, averaged over cells (unclamped), and clamped as predicted
        pred_change, pred_clamped = {}, {}
        for j, s in enumerate(model.perturbations):
            one = xc.new_zeros(len(xc), p)
            one[:, j] = 1
            d = m.change(tech, bio, one).double().numpy()
            pred_change[s] = d.mean(0)
            pred_clamped[s] = np.clip(ctrl + d, 0, None).mean(0) - c0
        rows_by = {}
        for effect in ("mean_of_seen", "measured"):
            m.unseen_effect = effect
            rows_by[effect] = {h: model.predict_batch(xc, model.encode_perturbations([h]).expand(len(xc), -1), None)
                               .double().numpy() for h in held}
        unseen_rows = rows_by["mean_of_seen"]
    names = list(model.perturbations)
    unseen_raw = np.mean([pred_change[s] for s in names], 0)
    unseen_clamped = np.mean([pred_clamped[s] for s in names], 0)
    mean_clamped = np.clip(ctrl + mean_effect, 0, None).mean(0) - c0

    print("\n== seen singles: predicted change vs measured (pearson over genes) ==")
    norms = {s: float(np.linalg.norm(measured[s])) for s in seen}
    for s in sorted(seen, key=lambda s: -norms[s]):
        print(f"  {s:10s} |measured| {norms[s]:5.2f} |pred| {np.linalg.norm(pred_change[s]):5.2f} "
              f"r {r(pred_change[s], measured[s]):+.3f} clamped {r(pred_clamped[s], measured[s]):+.3f} "
              f"r(measured, mean) {r(measured[s], mean_effect):+.3f}")
    print(f"  median r {np.median([r(pred_change[s], measured[s]) for s in seen]):.3f}, "
          f"clamped {np.median([r(pred_clamped[s], measured[s]) for s in seen]):.3f}")

    print("\n== parts of the unseen prediction (pearson over genes) ==")
    print(f"  |mean_effect| {np.linalg.norm(mean_effect):.3f}  |unseen raw| {np.linalg.norm(unseen_raw):.3f}  "
          f"|recon bias| {np.linalg.norm(recon_bias):.3f}")
    print(f"  r(unseen raw, mean_effect) {r(unseen_raw, mean_effect):+.3f}   r(unseen clamped, mean clamped) "
          f"{r(unseen_clamped, mean_clamped):+.3f}   r(recon bias, mean_effect) {r(recon_bias, mean_effect):+.3f}")
    cols = ["truth~mean", "~mean clamped", "~unseen raw", "~unseen clamped", "~predicted", "~recon bias",
            "~pred - mean"]
    print("  (~predicted: unseen_effect='mean_of_seen', as predict_batch returns it)")
    print("  held out   " + "  ".join(f"{c:>14s}" for c in cols) + "   |truth|  |pred delta|")
    rows = []
    for h in held:
        pred_delta = unseen_rows[h].mean(0) - c0
        vals = [r(truth[h], mean_effect), r(truth[h], mean_clamped), r(truth[h], unseen_raw), r(truth[h], unseen_clamped),
                r(truth[h], pred_delta), r(truth[h], recon_bias), r(truth[h], pred_delta - mean_clamped)]
        rows.append(vals)
        print(f"  {h:10s} " + "  ".join(f"{v:+14.3f}" for v in vals)
              + f"   {np.linalg.norm(truth[h]):.3f}    {np.linalg.norm(pred_delta):.3f}")
    print("  mean       " + "  ".join(f"{v:+14.3f}" for v in np.mean(rows, 0)))
    from cellgym.predictors.metrics import energy_distance

    print("\n== whole predictions (pearson_delta / energy distance, as cellgym evaluate scores them) ==")
    variants = {
        "baseline.mean": lambda h: np.clip(ctrl + mean_effect, 0, None),
        "gem1 mean_of_seen (as predicted)": lambda h: unseen_rows[h],
        "  its cell-averaged change": lambda h: np.clip(ctrl + (unseen_rows[h].mean(0) - c0), 0, None),
        "  unclamped mean of seen, uniform": lambda h: np.clip(ctrl + unseen_raw, 0, None),
        "gem1 measured (as predicted)": lambda h: rows_by["measured"][h],
    }
    for name, fn in variants.items():
        scores = []
        for i, h in enumerate(held):
            pred = fn(h)
            real = x[labels == h]
            scores.append((r(pred.mean(0) - c0, truth[h]), energy_distance(pred, real, max_cells=500, seed=args.seed + i)))
        print(f"  {name:34s} {np.mean([a for a, _ in scores]):.3f} / {np.mean([b for _, b in scores]):.3f}")
    print(f"\nmapped from gene embeddings: {model.mapped}; from the measured mean: {model.from_measured}; own-target "
          f"change {float(m.target_effect):.3f} added for {model.own_target}")
    # how the predicted and measured means differ, gene by gene
    diff = unseen_clamped - mean_clamped
    top = np.argsort(-np.abs(diff))[:10]
    print("genes where the unseen effect differs most from the mean:",
          ", ".join(f"{model.genes[g]} {unseen_clamped[g]:+.2f}/{mean_clamped[g]:+.2f}" for g in top))


if __name__ == "__main__":
    main()
