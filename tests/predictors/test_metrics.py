"""Each metric against an independent computation (scipy, sklearn, or by hand on a tiny case)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import r2_score

from cellgym.predictors import metrics as M

rng = np.random.default_rng(0)
CTRL = rng.normal(size=30)
TRUE = CTRL + rng.normal(size=30)
PRED = CTRL + 0.5 * (TRUE - CTRL) + rng.normal(scale=0.3, size=30)


def test_pearson_delta_matches_scipy_and_degenerate_is_zero():
    expected = stats.pearsonr(PRED - CTRL, TRUE - CTRL).statistic
    assert M.pearson_delta(PRED, TRUE, CTRL) == pytest.approx(expected, abs=1e-12)
    other_ctrl = CTRL + 0.1
    assert M.pearson_delta(PRED, TRUE, other_ctrl, CTRL) == pytest.approx(
        stats.pearsonr(PRED - other_ctrl, TRUE - CTRL).statistic, abs=1e-12
    )
    assert M.pearson_delta(CTRL, TRUE, CTRL) == 0.0  # no-change prediction: 0, not NaN
    assert M.pearson_delta(PRED, CTRL, CTRL) == 0.0  # no real change either


def test_mse_mae_absolute_and_delta_by_hand():
    pred, true = np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0])
    assert M.mse(pred, true) == pytest.approx((0 + 1 + 4) / 3)
    assert M.mae(pred, true) == pytest.approx((0 + 1 + 2) / 3)
    pc, tc = np.array([0.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0])
    # deltas: pred [1, 2, 3], true [0, 2, 1] -> errors [1, 0, 2]
    assert M.mse_delta(pred, true, pc, tc) == pytest.approx(5 / 3)
    assert M.mae_delta(pred, true, pc, tc) == pytest.approx(1.0)
    assert M.mse_delta(pred, true, tc, tc) == pytest.approx(M.mse(pred, true))  # same control: same number


def test_r2_matches_sklearn_all_and_subset():
    assert M.r2_mean(PRED, TRUE) == pytest.approx(r2_score(TRUE, PRED))
    genes = np.array([3, 7, 11, 20])
    assert M.r2_mean(PRED, TRUE, genes) == pytest.approx(r2_score(TRUE[genes], PRED[genes]))
    assert M.r2_mean([1.0, 1.0], [1.0, 1.0]) == 1.0 and M.r2_mean([1.0, 2.0], [1.0, 1.0]) == 0.0


def test_welch_t_matches_scipy_and_de_genes():
    a = rng.normal(size=(25, 12))
    a[:, 4] += 3.0
    a[:, 9] -= 2.0
    b = rng.normal(size=(40, 12))
    expected = stats.ttest_ind(a, b, equal_var=False).statistic
    np.testing.assert_allclose(M.welch_t(a, b), expected, rtol=1e-10)
    assert list(M.de_genes(a, b, 2)) == [4, 9]
    same = b[:25]
    assert M.de_genes(same, same, 5).size == 0  # no change at all: no DE genes


def test_de_overlap_and_direction_by_hand():
    assert M.de_overlap(np.array([1, 2, 3, 4]), np.array([3, 4, 5, 6]), k=4) == 0.5
    assert M.de_overlap(np.array([], dtype=int), np.array([3, 4]), k=2) == 0.0
    assert M.de_overlap(np.array([1, 2, 9]), np.array([1, 9]), k=4) == 0.5  # k_eff = 2 real DE genes: pred[:2]
    assert np.isnan(M.de_overlap(np.array([1]), np.array([], dtype=int), k=4))
    pred = np.array([1.0, -1.0, 0.0, 2.0])
    true = np.array([2.0, 1.0, -1.0, 0.5])
    assert M.direction_agreement(pred, true, np.array([0, 1, 2, 3])) == pytest.approx(2 / 4)
    assert M.direction_agreement(np.zeros(4), true, np.arange(4)) == 0.0
    assert np.isnan(M.direction_agreement(pred, true, np.array([], dtype=int)))


def test_discrimination_by_hand_and_random_is_half():
    true = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    pred = np.array([[0.9, 0.1], [4.0, 4.0]])  # prediction 0 is closest to row 1 (its truth) ...
    scores = M.discrimination_score(pred, true, [1, 2])
    np.testing.assert_allclose(scores, [1.0, 1.0])
    scores = M.discrimination_score(pred, true, [0, 1])  # ... wrong truths: 1 of 2 others closer, 1 of 2
    np.testing.assert_allclose(scores, [0.5, 0.5])
    assert M.discrimination_score(np.array([[5.0, 5.0]]), true, [0])[0] == 0.0  # truth is the farthest
    # random predictions score 0.5 on average
    t = rng.normal(size=(30, 8))
    s = M.discrimination_score(rng.normal(size=(2000, 8)), t, rng.integers(0, 30, 2000))
    assert s.mean() == pytest.approx(0.5, abs=0.02)
    assert np.isnan(M.discrimination_score(pred, true[:1], [0, 0])).all()


def _energy_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    def mean_dist(a, b):
        return np.mean([np.linalg.norm(p - q) for p, q in itertools.product(a, b)])

    return 2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)


def test_energy_distance_by_hand_and_properties():
    x, y = rng.normal(size=(7, 3)), rng.normal(loc=1.0, size=(9, 3))
    assert M.energy_distance(x, y) == pytest.approx(_energy_by_hand(x, y), rel=1e-9)
    # in one dimension it is the square of scipy's energy_distance (which is defined with a sqrt, 2^0.5 scaled)
    a, b = rng.normal(size=40), rng.normal(loc=0.5, size=50)
    ours = M.energy_distance(a[:, None], b[:, None])
    assert ours == pytest.approx(stats.energy_distance(a, b) ** 2, rel=1e-9)
    assert M.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    # subsampling: bounded, seeded, reproducible
    big_x, big_y = rng.normal(size=(900, 5)), rng.normal(size=(800, 5))
    one = M.energy_distance(big_x, big_y, max_cells=200, seed=1)
    assert one == M.energy_distance(big_x, big_y, max_cells=200, seed=1)
    assert one != M.energy_distance(big_x, big_y, max_cells=200, seed=2)


def test_de_genes_ranked_by_fold_change_among_significant_genes_by_hand():
    a = rng.normal(size=(30, 10))
    a[:, 2] += 0.8  # significant, small change
    a[:, 6] += 3.0  # significant, big change
    b = rng.normal(size=(30, 10))
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    q = stats.false_discovery_control(p)
    sig = np.flatnonzero(q < 0.05)
    expected = sig[np.argsort(-np.abs(a.mean(0) - b.mean(0))[sig])]
    assert list(M.de_genes(a, b, 5)) == list(expected[:5])
    assert list(M.de_genes(a, b, 5)[:2]) == [6, 2]


def test_de_overlap_ignores_zero_variance_genes_with_tiny_predicted_changes():
    """The issue-14 case: genes that are zero in every control cell get a tiny predicted change.

    Their Welch t is ±inf, so ranking by |t| called them the top DE genes and de_overlap read 0 even for a
    prediction with the right changes. Ranking significant genes by fold change finds the real ones.
    """
    n_genes = 300
    ctrl = rng.normal(2.0, 0.5, size=(80, n_genes))
    ctrl[:, :150] = 0.0  # zero in every control cell
    real = rng.normal(2.0, 0.5, size=(60, n_genes))
    real[:, :150] = 0.0
    real[:, 200:220] += 1.5  # the real DE genes
    true_de = M.de_genes(real, ctrl, 20)
    assert set(true_de.tolist()) == set(range(200, 220))
    pred = ctrl.copy()
    pred[:, 200:220] += 1.5
    pred[:, :150] += 1e-4  # tiny change of genes without variance: |t| = inf
    assert (np.abs(M.welch_t(pred, ctrl)[:150]) > 1e12).all()  # inf up to rounding
    old = np.argsort(-np.abs(M.welch_t(pred, ctrl)), kind="stable")[:20]
    assert M.de_overlap(old, true_de, 20) == 0.0  # the old ranking: the first 20 zero-variance genes
    assert M.de_overlap(M.de_genes(pred, ctrl, 20), true_de, 20) == 1.0
    assert np.isnan(M.welch_pvalues(pred, ctrl)[:150]).all()


def test_r2_pearson_is_squared_correlation_on_top_changed_genes():
    ctrl = np.zeros((5, 6))
    real = np.tile([0.0, 3.0, -2.0, 0.1, 1.0, 0.0], (5, 1))
    assert list(M.top_changed_genes(real, ctrl, 3)) == [1, 2, 4]
    pred_mean = np.array([9.0, 2.0, -1.0, 0.0, 1.0, 9.0])
    genes = M.top_changed_genes(real, ctrl, 3)
    r = stats.pearsonr(pred_mean[genes], real.mean(0)[genes]).statistic
    assert M.r2_pearson(pred_mean, real.mean(0), genes) == pytest.approx(r**2)
    assert M.r2_pearson(np.ones(6), real.mean(0)) == 0.0
