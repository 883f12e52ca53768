"""A small simulated perturbation screen with known, additive, low-rank effects.

Two contexts (``A``, ``B``), 40 genes ``G0..G39``; singles ``G0..G7`` (named after measured genes, so
the linear baseline can embed them), five doubles; 60 control and 20 perturbed cells per group and
context (640 cells). The effect of perturbing gene g is ``A M A[g]`` (gene programs ``A``, a program
response ``M``), the structure the linear model of Ahlmann-Eltze et al. assumes; doubles are exactly
additive; context B has another baseline and 0.7x the effects.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

N_GENES = 40
SINGLES = [f"G{i}" for i in range(8)]
DOUBLES = ["G0+G1", "G2+G3", "G4+G5", "G6+G7", "G1+G2"]
CONTEXTS = {"A": 1.0, "B": 0.7}  # context -> effect scale
N_CONTROL, N_PERTURBED, NOISE = 60, 20, 0.25


def simulate_screen(seed: int = 0) -> tuple[ad.AnnData, dict[tuple[str, str], np.ndarray]]:
    """The screen (X = log1p-like expression, float32) and the true mean delta of each (context, label)."""
    rng = np.random.default_rng(seed)
    programs = rng.normal(size=(N_GENES, 3))  # gene loadings of 3 programs
    response = rng.normal(size=(3, 3)) * 0.35
    single_effect = {g: programs @ response @ programs[int(g[1:])] for g in SINGLES}
    xs, labels, ctxs, truth = [], [], [], {}
    for ctx, scale in CONTEXTS.items():
        base = 2.0 + rng.normal(scale=0.5, size=N_GENES)
        for label in ["control", *SINGLES, *DOUBLES]:
            delta = np.zeros(N_GENES) if label == "control" else scale * sum(single_effect[s] for s in label.split("+"))
            n = N_CONTROL if label == "control" else N_PERTURBED
            xs.append(base + delta + rng.normal(scale=NOISE, size=(n, N_GENES)))
            labels += [label] * n
            ctxs += [ctx] * n
            truth[(ctx, label)] = delta
    obs = pd.DataFrame({"perturbation": labels, "cell_type": ctxs, "batch": rng.choice(["b1", "b2"], size=len(labels))})
    obs.index = [f"cell{i}" for i in range(len(obs))]
    var = pd.DataFrame(index=[f"G{i}" for i in range(N_GENES)])
    return ad.AnnData(X=np.vstack(xs).astype(np.float32), obs=obs, var=var), truth


def counts_variant(adata: ad.AnnData, seed: int = 0) -> ad.AnnData:
    """The same screen as raw counts: Poisson draws around ``exp(X)`` with ~3,000 UMIs per cell, in ``X``."""
    rng = np.random.default_rng(seed)
    rate = np.exp(np.asarray(adata.X, dtype=np.float64))
    rate = rate / rate.sum(1, keepdims=True) * 3000
    out = adata.copy()
    out.X = rng.poisson(rate).astype(np.float32)
    return out


def design_screen(interaction: float = 0.0, seed: int = 0) -> ad.AnnData:
    """A one-context screen for inverse design: control, A, B, C, A+B, A+C (50 cells each, 6 genes).

    A raises gene 0 by 1.5, B gene 1 by 1.2, C gene 2 by 1.0; doubles are additive except for an extra
    ``interaction`` on gene 3 in A+B. Noise sd 0.1 around 1.0.
    """
    rng = np.random.default_rng(seed)
    effects = {"control": {}, "A": {0: 1.5}, "B": {1: 1.2}, "C": {2: 1.0}, "A+B": {0: 1.5, 1: 1.2, 3: interaction},
               "A+C": {0: 1.5, 2: 1.0}}
    labels = np.repeat(list(effects), 50)
    x = 1.0 + rng.normal(0, 0.1, size=(labels.size, 6))
    for lab, eff in effects.items():
        for g, e in eff.items():
            x[labels == lab, g] += e
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(labels.size)])
    return ad.AnnData(X=x.clip(0).astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))
