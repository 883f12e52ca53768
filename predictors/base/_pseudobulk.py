"""Per-context pseudobulks (mean log1p expression per group) and their deltas against the controls of the
same context: what the baselines fit and what GEM-1's and State's priors are computed from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._types import FitData


@dataclass
class Pseudobulk:
    """Per-context pseudobulks of a training set.

    Attributes
    ----------
    control
        (C, G) float64 control mean of each context (zeros where a context has no controls).
    ctx
        (n,) int64 context of each perturbed group.
    labels
        (n,) perturbation label of each group (``"A"`` or ``"A+B"``).
    delta
        (n, G) float64 group mean minus its context's control mean.
    """

    control: np.ndarray
    ctx: np.ndarray
    labels: np.ndarray
    delta: np.ndarray

    def singles(self, split_label: Callable[[str], list[str]]) -> Pseudobulk:
        """The groups of single perturbations only (``split_label`` splits ``"A+B"`` into its singles)."""
        keep = np.array([len(split_label(str(lab))) == 1 for lab in self.labels], dtype=bool)
        return Pseudobulk(self.control, self.ctx[keep], self.labels[keep], self.delta[keep])

    def mean_effect(self, n_contexts: int) -> np.ndarray:
        """(C, G) mean delta over each context's groups; a context without groups gets the pooled mean."""
        g = self.control.shape[1]
        pooled = self.delta.mean(0) if len(self.labels) else np.zeros(g)
        out = np.tile(pooled, (n_contexts, 1))
        for c in np.unique(self.ctx):
            out[c] = self.delta[self.ctx == c].mean(0)
        return out


def pseudobulk(data: FitData, n_contexts: int) -> Pseudobulk:
    """Group means of ``data.x`` by (context, label), as deltas against each context's controls."""
    labels = np.asarray(data.labels, dtype=str)
    _, label_code = np.unique(labels, return_inverse=True)
    key = data.ctx.astype(np.int64) * (label_code.max() + 1) + label_code
    groups, inverse = np.unique(key, return_inverse=True)
    indicator = sp.csr_matrix((np.ones(key.size), (inverse, np.arange(key.size))), shape=(groups.size, key.size))
    sizes = np.asarray(indicator.sum(1)).ravel()
    means = np.asarray(indicator @ data.x.astype(np.float64)) / sizes[:, None]
    first = np.zeros(groups.size, dtype=np.int64)
    first[inverse[::-1]] = np.arange(key.size)[::-1]  # a representative cell of each group
    g_ctx, g_label, g_ctrl = data.ctx[first].astype(np.int64), labels[first], data.is_control[first]
    control = np.zeros((n_contexts, data.x.shape[1]))
    control[g_ctx[g_ctrl]] = means[g_ctrl]
    pert = ~g_ctrl
    return Pseudobulk(control, g_ctx[pert], g_label[pert], means[pert] - control[g_ctx[pert]])


def own_target_change(bulk: Pseudobulk, genes: Sequence[str], split_label: Callable[[str], list[str]]) -> tuple[float, int]:
    """A knockout's change at its own target beyond the mean change, from the training pseudobulks.

    Over the single perturbations of ``bulk`` whose name (the target gene, as GEM-1 and State name a single)
    is one of ``genes``: the mean of ``delta[single, target] - m[ctx, target]``, ``m`` the per-context mean
    delta of the singles (:meth:`Pseudobulk.mean_effect`). Returns ``(change, number of such singles)``;
    ``(0.0, 0)`` without one. Papalexi seed 0: -1.13 log1p over 8 seen knockouts. An unseen single whose
    target is a measured gene (:func:`own_target_columns`) gets this change there.
    """
    singles = bulk.singles(split_label)
    mean = singles.mean_effect(bulk.control.shape[0])
    index = {g: j for j, g in enumerate(genes)}
    own = [singles.delta[r, index[lab]] - mean[singles.ctx[r], index[lab]]
           for r, lab in enumerate(singles.labels) if lab in index]
    return (float(np.mean(own)) if own else 0.0), len(own)


def own_target_columns(names: Sequence[str], genes: Sequence[str]) -> dict[str, int]:
    """``{name: gene index}`` of the perturbations in ``names`` whose target (the name) is one of ``genes``:
    the ones that get :func:`own_target_change` at that gene."""
    index = {g: j for j, g in enumerate(genes)}
    return {n: index[n] for n in names if n in index}
