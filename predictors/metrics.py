"""Metrics of perturbation-response prediction, following the field's definitions.

All functions take numpy arrays (or anything ``np.asarray`` accepts) and return floats or arrays.
Shapes: G genes, N cells, and "means" are pseudobulk vectors (mean log1p expression over cells, G).
A *delta* is a perturbation's mean minus its control mean. The harness
(:func:`cellgym.predictors.evaluation.evaluate`) computes the predicted delta against the
predictor's own prediction for the control cells, and the real delta against the real controls, as
cell-eval does; for the baselines the two controls coincide, so ``mse == mse_delta`` there.

References
----------
- cell-eval (Arc Institute, Virtual Cell Challenge 2025): pearson_delta, mse/mae on deltas,
  DE overlap, direction agreement, discrimination score (L1).
- scGen (Lotfollahi et al. 2019, Nat. Methods) and CPA (Lotfollahi et al. 2023, Mol. Syst. Biol.):
  R² of mean expression on all genes and on the top DE genes.
- GEARS (Roohani et al. 2024, Nat. Biotechnol.): MSE on the top-20 DE genes, Pearson of deltas.
- Ahlmann-Eltze, Huber & Anders 2025 (Nat. Methods): Pearson delta and L2 against simple baselines.
- PerturBench (Wu et al. 2024): rank metrics (the discrimination score below is 1 - their rank).
- Székely & Rizzo 2013 (J. Stat. Plan. Inference): energy distance.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from numpy.typing import ArrayLike

__all__ = [
    "de_genes",
    "de_overlap",
    "direction_agreement",
    "discrimination_score",
    "energy_distance",
    "energy_distance_torch",
    "mae",
    "mae_delta",
    "mse",
    "mse_delta",
    "pearson_delta",
    "r2_mean",
    "r2_pearson",
    "top_changed_genes",
    "welch_pvalues",
    "welch_t",
]


def _vec(a: ArrayLike) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


def pearson_delta(
    pred_mean: ArrayLike, true_mean: ArrayLike, pred_control: ArrayLike, true_control: ArrayLike | None = None
) -> float:
    """Pearson correlation over genes of the predicted and the real delta (cell-eval ``pearson_delta``).

    Parameters
    ----------
    pred_mean, true_mean
        (G,) predicted and real mean expression of the perturbed cells.
    pred_control, true_control
        (G,) control means the deltas are taken against (``true_control`` defaults to ``pred_control``).

    Returns
    -------
    float in [-1, 1]. **Degenerate case:** when either delta is constant over genes (a no-change
    prediction has delta 0 everywhere) the correlation is undefined; it is defined as 0.0, not NaN,
    so a no-change baseline scores 0.
    """
    true_control = pred_control if true_control is None else true_control
    dp = _vec(pred_mean) - _vec(pred_control)
    dt = _vec(true_mean) - _vec(true_control)
    dp, dt = dp - dp.mean(), dt - dt.mean()
    denom = np.sqrt((dp**2).sum() * (dt**2).sum())
    if denom <= 1e-12 * max(1.0, dp.size):
        return 0.0
    return float((dp * dt).sum() / denom)


def mse(pred_mean: ArrayLike, true_mean: ArrayLike) -> float:
    """Mean squared error over genes of the mean expression (G,) (GEARS, cell-eval ``mse``)."""
    return float(np.mean((_vec(pred_mean) - _vec(true_mean)) ** 2))


def mae(pred_mean: ArrayLike, true_mean: ArrayLike) -> float:
    """Mean absolute error over genes of the mean expression (G,)."""
    return float(np.mean(np.abs(_vec(pred_mean) - _vec(true_mean))))


def mse_delta(pred_mean: ArrayLike, true_mean: ArrayLike, pred_control: ArrayLike, true_control: ArrayLike) -> float:
    """MSE between the predicted delta (vs ``pred_control``) and the real delta (vs ``true_control``).

    Equals :func:`mse` when both controls are the same vector.
    """
    return mse(_vec(pred_mean) - _vec(pred_control), _vec(true_mean) - _vec(true_control))


def mae_delta(pred_mean: ArrayLike, true_mean: ArrayLike, pred_control: ArrayLike, true_control: ArrayLike) -> float:
    """MAE between the predicted and the real delta (see :func:`mse_delta`)."""
    return mae(_vec(pred_mean) - _vec(pred_control), _vec(true_mean) - _vec(true_control))


def r2_mean(pred_mean: ArrayLike, true_mean: ArrayLike, genes: np.ndarray | None = None) -> float:
    """Coefficient of determination of the real mean expression by the predicted one (CPA, scGen).

    ``1 - sum((true - pred)^2) / sum((true - mean(true))^2)`` over the genes (all, or the indices
    ``genes``, e.g. the top-k DE genes), as ``sklearn.metrics.r2_score(true, pred)``. Can be negative.
    **Degenerate case:** when the real values are constant over the genes the score is 1.0 for an
    exact prediction and 0.0 otherwise (sklearn's convention).
    """
    t, p = _vec(true_mean), _vec(pred_mean)
    if genes is not None:
        t, p = t[genes], p[genes]
    ss_res = float(((t - p) ** 2).sum())
    ss_tot = float(((t - t.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def welch_t(cells: ArrayLike, control: ArrayLike) -> np.ndarray:
    """Welch's t statistic per gene of ``cells`` (N, G) against ``control`` (M, G).

    The statistic of scanpy's ``rank_genes_groups(method="t-test")`` and of
    ``scipy.stats.ttest_ind(equal_var=False)``. A gene with zero variance in both groups gets
    t = 0 when the means are equal and ±inf otherwise (so never rank genes by |t| alone:
    :func:`de_genes` tests with it but ranks by fold change).
    """
    a = np.asarray(cells, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    diff = a.mean(0) - b.mean(0)
    va = a.var(0, ddof=1) / a.shape[0] if a.shape[0] > 1 else np.zeros(a.shape[1])
    vb = b.var(0, ddof=1) / b.shape[0] if b.shape[0] > 1 else np.zeros(b.shape[1])
    se = np.sqrt(va + vb)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / se
    t[(se == 0) & (diff == 0)] = 0.0
    return t


def welch_pvalues(cells: ArrayLike, control: ArrayLike) -> np.ndarray:
    """Two-sided Welch t-test p-value per gene (``scipy.stats.ttest_ind(equal_var=False)``).

    **Zero-variance guard:** a gene with no variance in either group (up to rounding) cannot be tested
    (its t is 0, ±inf or ~1e16 whatever the size of the change); its p-value is NaN, so it is never
    called DE.
    """
    from scipy import stats

    a = np.asarray(cells, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        return np.full(a.shape[1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision-loss note on near-constant genes
        p = stats.ttest_ind(a, b, axis=0, equal_var=False).pvalue
    p = np.asarray(p, dtype=np.float64)
    p[_no_variance(a) & _no_variance(b)] = np.nan
    return p


def _no_variance(x: np.ndarray) -> np.ndarray:
    """(G,) True where a gene is constant over cells up to rounding (a constant shifted by 1e-4 in float64
    has a variance of ~1e-40, not 0)."""
    return x.var(0) <= 1e-20 * (1.0 + x.mean(0) ** 2)


def de_genes(cells: ArrayLike, control: ArrayLike, k: int, *, fdr: float = 0.05) -> np.ndarray:
    """Indices of the top-``k`` differentially expressed genes of ``cells`` vs ``control``, as cell-eval ranks.

    cell-eval's ``overlap_at_k`` (``DEOverlapMetric``: ``fdr_threshold=0.05``,
    ``sort_by=ABS_FOLD_CHANGE``): genes significant at Benjamini-Hochberg FDR < ``fdr``, ordered by
    |log fold change| (the difference of mean log1p expression), the first ``k``. Differences from
    cell-eval: the test is Welch's t (cell-eval calls pdex's Wilcoxon test), and genes without
    variance in both groups are never DE (:func:`welch_pvalues`). Ties in |fold change| break by
    gene index. Fewer than ``k`` indices come back when fewer genes are significant (none for a
    no-change prediction).
    """
    from scipy import stats

    a = np.asarray(cells, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    p = welch_pvalues(a, b)
    testable = ~np.isnan(p)
    q = np.full(p.shape, np.nan)
    if testable.any():
        q[testable] = stats.false_discovery_control(p[testable], method="bh")
    significant = np.flatnonzero(testable & (q < fdr))
    lfc = np.abs(a.mean(0) - b.mean(0))[significant]
    return significant[np.argsort(-lfc, kind="stable")[:k]]


def top_changed_genes(cells: ArrayLike, control: ArrayLike, k: int = 100) -> np.ndarray:
    """Indices of the ``k`` genes with the largest |mean(cells) - mean(control)| (scGen's gene set)."""
    diff = np.abs(np.asarray(cells, dtype=np.float64).mean(0) - np.asarray(control, dtype=np.float64).mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def r2_pearson(pred_mean: ArrayLike, true_mean: ArrayLike, genes: np.ndarray | None = None) -> float:
    """Squared Pearson correlation of predicted and real mean expression over ``genes`` (scGen, CellGen).

    The held-out-cell-type literature (scGen, Lotfollahi et al. 2019; CPA) reports this "R²" over
    the top 100 genes by |mean perturbed - mean control| of the real cells
    (:func:`top_changed_genes`); it is *not* :func:`r2_mean` (1 - SS_res/SS_tot). 0.0 when either
    vector is constant.
    """
    t, p = _vec(true_mean), _vec(pred_mean)
    if genes is not None:
        t, p = t[genes], p[genes]
    t, p = t - t.mean(), p - p.mean()
    denom = np.sqrt((t**2).sum() * (p**2).sum())
    if denom <= 1e-12:
        return 0.0
    return float(((t * p).sum() / denom) ** 2)


def de_overlap(pred_de: np.ndarray, true_de: np.ndarray, k: int) -> float:
    """DE-gene overlap@k (cell-eval ``overlap_at_k``): ``|pred_de ∩ true_de| / |true_de|``.

    ``pred_de`` and ``true_de`` are ranked lists from :func:`de_genes`; with ``k_eff = min(k, |true_de|)``
    the score is ``|pred_de[:k_eff] ∩ true_de[:k_eff]| / k_eff``, as cell-eval computes it. NaN when the
    real cells have no DE gene (cell-eval reports 0.0 there); 0 for a no-change prediction.
    """
    true = np.asarray(true_de).tolist()[:k]
    if not true:
        return float("nan")
    return len(set(np.asarray(pred_de).tolist()[: len(true)]) & set(true)) / float(len(true))


def direction_agreement(pred_delta: ArrayLike, true_delta: ArrayLike, genes: np.ndarray) -> float:
    """Fraction of ``genes`` (the real top DE genes) whose predicted delta has the real delta's sign.

    cell-eval's ``de_direction_match``. A zero predicted change has no direction and never agrees, so
    a no-change prediction scores 0. NaN when ``genes`` is empty.
    """
    genes = np.asarray(genes, dtype=np.int64)
    if genes.size == 0:
        return float("nan")
    p, t = _vec(pred_delta)[genes], _vec(true_delta)[genes]
    return float(np.mean((np.sign(p) == np.sign(t)) & (p != 0)))


def discrimination_score(pred_deltas: ArrayLike, true_deltas: ArrayLike, true_index: ArrayLike) -> np.ndarray:
    """Discrimination score (L1) of each predicted delta among the real deltas (cell-eval, PerturBench).

    For prediction i, the L1 distance to every real delta j is computed and the score is
    ``1 - #{j != t_i : d(i, j) < d(i, t_i)} / (M - 1)`` with ``t_i = true_index[i]`` (ties count half).
    1 means the real delta of the same perturbation is the nearest, 0.5 is what a random ranking
    gets on average, 0 means it is the farthest.

    Parameters
    ----------
    pred_deltas
        (n, G) predicted deltas.
    true_deltas
        (M, G) real deltas of all candidate perturbations (M >= 2).
    true_index
        (n,) row of ``true_deltas`` that belongs to each prediction.

    Returns
    -------
    (n,) float64 scores; NaN when there are fewer than 2 candidates.
    """
    p = np.asarray(pred_deltas, dtype=np.float64)
    t = np.asarray(true_deltas, dtype=np.float64)
    idx = np.asarray(true_index, dtype=np.int64)
    m = t.shape[0]
    if m < 2:
        return np.full(p.shape[0], np.nan)
    d = np.abs(p[:, None, :] - t[None, :, :]).sum(-1)  # (n, M)
    own = d[np.arange(p.shape[0]), idx][:, None]
    closer = (d < own).sum(1)
    ties = (d == own).sum(1) - 1  # minus the true one itself
    return 1.0 - (closer + 0.5 * ties) / (m - 1)


def energy_distance(
    x: ArrayLike,
    y: ArrayLike,
    *,
    max_cells: int | None = 500,
    seed: int | None = 0,
) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between two sets of cells (Székely & Rizzo 2013).

    Euclidean distances in the given space (here log1p expression); expectations are means over all
    pairs, including i = j (the V-statistic, which is never negative). Sets larger than ``max_cells``
    are subsampled without replacement with ``numpy.random.default_rng(seed)``, so the cost is bounded
    by ``max_cells**2 * G``. pertpy's ``edistance`` uses squared distances instead; this one is the
    original statistic, 0 iff the two distributions are equal.

    Parameters
    ----------
    x, y
        (N, G) and (M, G) cells.
    """
    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(x), np.asarray(y)
    if max_cells is not None:
        if xs.shape[0] > max_cells:
            xs = xs[np.sort(rng.choice(xs.shape[0], max_cells, replace=False))]
        if ys.shape[0] > max_cells:
            ys = ys[np.sort(rng.choice(ys.shape[0], max_cells, replace=False))]
    tx = torch.as_tensor(np.asarray(xs, dtype=np.float64))
    ty = torch.as_tensor(np.asarray(ys, dtype=np.float64))
    return float(energy_distance_torch(tx, ty))


def energy_distance_torch(
    x: torch.Tensor, y: torch.Tensor, x_groups: torch.Tensor | None = None, y_groups: torch.Tensor | None = None,
    n_groups: int | None = None, *, unbiased: bool = False,
) -> torch.Tensor:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` in torch: batched, grouped and differentiable.

    The one implementation of the statistic (:func:`energy_distance` calls it), with Euclidean norms: the
    MMD with kernel ``-||x - y||`` that State (Adduri et al. 2025) trains its set model with.

    Without groups: ``x`` (..., N, G) and ``y`` (..., M, G), one pair of sets per leading index; returns
    (...) (a 0-d tensor for plain (N, G), (M, G) inputs). With ``x_groups`` (N,) and ``y_groups`` (M,)
    int64 in ``[0, n_groups)`` (2-D ``x``, ``y``): one distance per group (n_groups,) between the cells of
    that group in ``x`` and in ``y`` (NaN for a group absent from either side), from one ``cdist`` per pair
    of sets. ``unbiased`` leaves the i = j pairs out of the within-set means (the U-statistic; NaN for a
    group with fewer than two cells on a side): the V-statistic's zero diagonal rewards small sets for
    shrinking, so a training loss on a few cells per group (CellGen's distribution term) must use the
    U-statistic. NaN groups carry no gradient (use ``nanmean``).
    """
    dxy, dxx, dyy = torch.cdist(x, y), torch.cdist(x, x), torch.cdist(y, y)  # finite backward at zero distance
    off = 1 if unbiased else 0  # the diagonal of dxx, dyy is zero: leaving it out divides by n (n - 1)
    if x_groups is None or y_groups is None:
        n, m = x.shape[-2], y.shape[-2]
        return 2 * dxy.mean((-1, -2)) - dxx.sum((-1, -2)) / (n * (n - off)) - dyy.sum((-1, -2)) / (m * (m - off))
    n_groups = int(max(int(x_groups.max()), int(y_groups.max())) + 1) if n_groups is None else n_groups
    mx = torch.nn.functional.one_hot(x_groups, n_groups).to(x.dtype)  # (N, C)
    my = torch.nn.functional.one_hot(y_groups, n_groups).to(y.dtype)  # (M, C)
    nx, ny = mx.sum(0), my.sum(0)

    def group_mean(d: torch.Tensor, a: torch.Tensor, b: torch.Tensor, na: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
        return ((a.T @ d) * b.T).sum(1) / (na * nb).clamp_min(1)  # clamped: finite gradients for empty groups

    ed = 2 * group_mean(dxy, mx, my, nx, ny) - group_mean(dxx, mx, mx, nx, nx - off) - group_mean(dyy, my, my, ny, ny - off)
    valid = (nx > off) & (ny > off)  # U-statistic: at least two cells on each side
    return torch.where(valid, ed, torch.full_like(ed, float("nan")))
