"""Reward models: exact values, batching, a fitted classifier, errors, and no gymnasium import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cellgym.predictors.base import DataSpecError, GeneMismatchError
from cellgym.predictors.rewards import CentroidReward, ClassifierReward, EnergyDistanceReward
from cellgym.registry import make_reward


def _energy_reference(x: np.ndarray, y: np.ndarray) -> float:
    d = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1).mean()  # noqa: E731
    return 2 * d(x, y) - d(x, x) - d(y, y)


def test_energy_distance_matches_formula_and_is_zero_at_target() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=(40, 5)).astype(np.float32)
    pops = np.stack([target[:40], target[:40] + 1.0, rng.normal(size=(40, 5)).astype(np.float32) + 3.0])
    reward = EnergyDistanceReward(target)
    d = reward.distance(torch.from_numpy(pops)).numpy()
    assert d.shape == (3,)
    assert d[0] == pytest.approx(0.0, abs=1e-5)
    for b in range(3):
        assert d[b] == pytest.approx(max(_energy_reference(pops[b], target), 0.0), rel=1e-4, abs=1e-5)
    assert d[0] < d[1] < d[2]


def test_centroid_euclidean_and_cosine_values() -> None:
    target = np.array([[1.0, 0.0], [1.0, 2.0]], dtype=np.float32)  # centroid (1, 1)
    cells = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[4.0, 5.0], [4.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    euc = CentroidReward(target).distance(cells).numpy()
    np.testing.assert_allclose(euc, [0.0, 5.0, np.sqrt(2.0)], atol=1e-6)
    cos = make_reward("target.centroid", target=target, metric="cosine").distance(cells).numpy()
    np.testing.assert_allclose(cos, [0.0, 1 - 9 / (np.sqrt(2) * np.sqrt(41)), 0.0], atol=1e-6)


def test_classifier_reward_separates_labelled_clusters() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(100, 6))
    b = rng.normal(0.0, 1.0, size=(100, 6)) + np.array([3.0, -3.0, 0, 0, 0, 0])
    reward = ClassifierReward(np.concatenate([a, b]), ["a"] * 100 + ["b"] * 100, target="b")
    test_a = rng.normal(0.0, 1.0, size=(50, 6))
    test_b = rng.normal(0.0, 1.0, size=(50, 6)) + np.array([3.0, -3.0, 0, 0, 0, 0])
    d = reward.distance(torch.tensor(np.stack([test_a, test_b]), dtype=torch.float32)).numpy()
    assert d[1] < 0.1 < 0.9 < d[0]


def test_reward_errors_name_the_problem() -> None:
    reward = EnergyDistanceReward(np.zeros((3, 4), np.float32))
    with pytest.raises(GeneMismatchError, match=r"\(B, N, 4\)"):
        reward.distance(torch.zeros(2, 3, 5))
    with pytest.raises(DataSpecError, match="cosine"):
        CentroidReward(np.zeros((2, 2)), metric="manhattan")
    with pytest.raises(DataSpecError, match="non-finite"):
        CentroidReward(np.full((2, 2), np.nan))
    with pytest.raises(DataSpecError, match="'c'"):
        ClassifierReward(np.zeros((4, 2)), ["a", "a", "b", "b"], target="c")


def test_rewards_do_not_import_gymnasium() -> None:
    code = "import sys, cellgym.predictors.rewards; print('gymnasium' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
