"""The effect prior of ``state.transition``: what the training pseudobulks say about a (context, perturbation)
before the set transformer looks at the cells.

ST predicts ``relu(x + prior(c, p) + head(h))``; the prior is

``prior(c, p) = m_c + w * sum_{s in p} dbar_s^(-c)``

- ``m_c``: the mean effect of context c's perturbations (each training label's pseudobulk delta against
  c's controls weighs the same: what ``baseline.mean`` predicts); a context without perturbed training
  cells (a held-out cell line) gets ``u`` times the mean of the measured contexts' ``m_c``, with ``u`` in
  [0, 1] how far one context's mean effect is predicted by the others' (leave-one-context-out least
  squares, ``m_c ~ u * mean_{c' != c} m_c'``; 1 with fewer than two measured contexts): the same
  shrinkage as ``w`` below, one level up;
- ``dbar_s^(-c)``: the deviation of single s from its context's mean effect, averaged over the *other*
  contexts where s was measured alone (0 where it was not): what other cell lines say about s beyond
  the shared effect;
- ``w`` in [0, 1]: how much of that deviation carries over between contexts, estimated by
  leave-one-context-out least squares on the training contexts (``dev_{c,s} ~ w * dbar_s^(-c)``); 1 when
  no single was measured in two contexts (then ``dbar`` is 0 anyway).

An unseen single (in ``perturbations`` but never in training) whose target, its name, is a measured gene also
gets the seen knockouts' mean change at their own target beyond the mean change
(:func:`cellgym.predictors.base.own_target_change`, as GEM-1 gives it) at that gene: the mean change
spreads a knockout's drop at its own target over every other gene, and ``dbar`` is 0 for a single
measured nowhere.

The same rule gives the prior of a training group, with the group itself left out of its context's mean
(``m_c`` without it), so training sees the prior it will get at prediction time: the transformer learns
what the prior misses (from the perturbation's features and the context's basal cells), and its head
starts at zero, so an untrained ST *is* the prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..base import FitData, own_target_change, own_target_columns, pseudobulk


@dataclass
class EffectPrior:
    """Fitted prior: ``mean_effect`` (C, G), ``transfer`` (C, P, G) = ``w * dbar_s^(-c)``, the shrinkage ``w``,
    and ``context_transfer`` u (the shrinkage of the mean effect of a context without perturbed cells);
    ``own_target`` ``{unseen single: gene index}`` whose ``transfer`` holds ``own_target_change`` at that gene
    (the mean over ``n_own_targets`` seen singles)."""

    mean_effect: np.ndarray
    transfer: np.ndarray
    shrinkage: float
    context_transfer: float = 1.0
    own_target: dict[str, int] = field(default_factory=dict)
    own_target_change: float = 0.0
    n_own_targets: int = 0

    def of(self, ctx: np.ndarray, pert: np.ndarray) -> np.ndarray:
        """(n, G) prior of rows with contexts ``ctx`` (n,) and multi-hot ``pert`` (n, P); 0 for controls."""
        perturbed = (pert.sum(1) > 0).astype(np.float64)[:, None]
        return perturbed * self.mean_effect[ctx] + np.einsum("np,npg->ng", pert, self.transfer[ctx])


def fit_effect_prior(
    data: FitData, perturbations: list[str], n_contexts: int, split_label, genes: Sequence[str] = (),
    unseen: Sequence[str] = (),
) -> tuple[EffectPrior, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The prior of a training set, and the leave-group-out priors of its (context, label) groups.

    ``unseen`` (perturbations not in training) named after one of ``genes`` get the own-target change there.

    Returns ``(prior, group_ctx (n,), group_labels (n,), group_prior (n, G), novel_prior (n, G) | None)`` over
    perturbed groups; ``novel_prior`` is the prior each group would get were its context without perturbed
    cells (``u`` times the other measured contexts' mean effect, plus the transfer term): what a held-out
    context gets, for training on it; None with fewer than two measured contexts.
    """
    bulk = pseudobulk(data, n_contexts)
    g = data.x.shape[1]
    index = {p: i for i, p in enumerate(perturbations)}
    n = len(bulk.labels)
    pooled = bulk.delta.mean(0) if n else np.zeros(g)
    count = np.bincount(bulk.ctx, minlength=n_contexts).astype(np.float64)
    total = np.zeros((n_contexts, g))
    np.add.at(total, bulk.ctx, bulk.delta)
    measured_ctx = count > 0
    own_mean = total / np.maximum(count, 1)[:, None]
    # a context without perturbed training cells gets u * the mean over the measured contexts' mean effects,
    # u = how far the other contexts' mean effect carries over to a context (leave-one-context-out least squares)
    u, rest_of = 1.0, None
    if measured_ctx.sum() >= 2:
        idx = np.flatnonzero(measured_ctx)
        rest = (own_mean[idx].sum(0)[None] - own_mean[idx]) / (len(idx) - 1)
        rest_of = np.zeros((n_contexts, g))
        rest_of[idx] = rest
        u = float(np.clip((rest * own_mean[idx]).sum() / max(float((rest * rest).sum()), 1e-12), 0.0, 1.0))
    mean_effect = np.where(measured_ctx[:, None], own_mean, u * own_mean[measured_ctx].mean(0) if measured_ctx.any() else pooled)

    # deviations of singles measured alone: dev[c, s] (nan where not measured alone in c)
    dev = np.full((n_contexts, len(perturbations), g), np.nan)
    for k in range(n):
        singles = split_label(str(bulk.labels[k]))
        if len(singles) == 1 and singles[0] in index:
            dev[bulk.ctx[k], index[singles[0]]] = bulk.delta[k] - mean_effect[bulk.ctx[k]]
    measured = ~np.isnan(dev[..., 0])  # (C, P)
    filled = np.nan_to_num(dev)
    n_meas = measured.sum(0)  # (P,)
    # dbar^(-c): average over the other contexts where measured
    others = n_meas[None, :] - measured  # (C, P)
    dbar = (filled.sum(0)[None] - filled) / np.maximum(others, 1)[..., None]
    dbar[others == 0] = 0.0
    pairs = measured & (others > 0)
    if pairs.any():
        xs, ys = dbar[pairs], filled[pairs]
        w = float(np.clip((xs * ys).sum() / max((xs * xs).sum(), 1e-12), 0.0, 1.0))
    else:
        w = 1.0
    prior = EffectPrior(mean_effect.astype(np.float32), (w * dbar).astype(np.float32), w, u)

    # leave-group-out priors of the training groups: the group's own delta out of its context's mean
    own = np.where(count[bulk.ctx, None] > 1,
                   (total[bulk.ctx] - bulk.delta) / np.maximum(count[bulk.ctx] - 1, 1)[:, None],
                   np.where(n > 1, (pooled * n - bulk.delta) / max(n - 1, 1), 0.0))
    multi = np.zeros((n, len(perturbations)))
    for k in range(n):
        for s in split_label(str(bulk.labels[k])):
            if s in index:
                multi[k, index[s]] = 1.0
    transfer = np.einsum("np,npg->ng", multi, prior.transfer[bulk.ctx].astype(np.float64))
    group_prior = own + transfer
    novel = None if rest_of is None else (u * rest_of[bulk.ctx] + transfer).astype(np.float32)
    # unseen singles whose target is a measured gene: the knockouts' own-target change there (no training
    # group has them, so the group priors above are unchanged)
    prior.own_target = own_target_columns(unseen, genes)
    if prior.own_target:
        prior.own_target_change, prior.n_own_targets = own_target_change(bulk, genes, split_label)
        for name, j in prior.own_target.items():
            prior.transfer[:, index[name], j] += prior.own_target_change
    return prior, bulk.ctx, bulk.labels, group_prior.astype(np.float32), novel
