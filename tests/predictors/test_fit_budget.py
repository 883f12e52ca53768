"""Training budget: early stopping on a validation split, epochs and wall time in evaluate, progress lines."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from cellgym.predictors import split
from cellgym.predictors.base import LossOutput, train_module, validation_rows
from cellgym.predictors.evaluation import discrimination_note, evaluate


class _Regression(nn.Module):
    """Over-parameterised linear regression: with few rows it fits the noise and validation loss rises."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, 1)

    def loss(self, batch):
        return LossOutput(((self.lin(batch["x"]).squeeze(1) - batch["y"]) ** 2).mean())


def test_validation_rows_are_stratified_by_group():
    groups = np.repeat([0, 1, 2], [50, 20, 5])
    mask = validation_rows(groups, 0.2, seed=0)
    assert [int(mask[groups == g].sum()) for g in (0, 1, 2)] == [10, 4, 1]
    assert (validation_rows(groups, 0.2, seed=0) == mask).all()
    assert not (validation_rows(groups, 0.2, seed=1) == mask).all()


def test_early_stopping_stops_and_restores_the_best_epoch(caplog):
    rng = np.random.default_rng(0)
    n, d = 60, 50
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=1.0, size=n)).astype(np.float32)
    torch.manual_seed(0)
    module = _Regression(d)
    groups = np.zeros(n, dtype=int)
    with caplog.at_level(logging.INFO, logger="cellgym.fit"):
        report = train_module(module, {"x": x, "y": y}, epochs=2000, batch_size=16, learning_rate=1e-2,
                              validation=validation_rows(groups, 0.3, seed=0), patience=5)
    val = report.history["val_loss"]
    assert report.stopped_early and report.epochs < 2000 and len(val) == report.epochs
    assert report.best_epoch == int(np.argmin(val)) + 1 and report.epochs - report.best_epoch == 5
    assert report.history["loss"][-1] < report.history["loss"][report.best_epoch - 1]  # training kept improving
    mask = validation_rows(groups, 0.3, seed=0)
    with torch.no_grad():
        restored = float(module.loss({"x": torch.from_numpy(x[mask]), "y": torch.from_numpy(y[mask])}).loss)
    assert restored == min(val) or abs(restored - min(val)) < 1e-5
    assert any("early stop" in r.getMessage() and "left" in r.getMessage() for r in caplog.records)


def test_evaluate_reports_epochs_and_wall_time_and_caps_epochs(screen, spec):
    s = split(screen, spec, "perturbations", seed=0)
    result = evaluate(screen, spec, s, ["baseline.mean", "gem1.bulk"], max_epochs=2)
    m = result.metrics
    assert m.loc["baseline.mean", "fit_epochs"] == 0
    assert 1 <= m.loc["gem1.bulk", "fit_epochs"] <= 2
    assert m.loc["gem1.bulk", "fit_seconds"] > m.loc["baseline.mean", "fit_seconds"] >= 0
    assert "r2_scgen_top100" in m.columns and m["r2_scgen_top100"].between(0, 1).all()
    assert discrimination_note(result) is None  # every context has many perturbations


def test_discrimination_note_names_single_perturbation_contexts(screen, spec):
    keep = screen.obs["perturbation"].isin(["control", "G0", "G1"]).to_numpy()
    one = screen[keep & ~((screen.obs["cell_type"] == "B") & (screen.obs["perturbation"] == "G1")).to_numpy()].copy()
    s = split(one, spec, "perturbations", holdout=["G0"])
    result = evaluate(one, spec, s, ["baseline.mean"])
    assert result.per_perturbation.query("context == 'B'")["discrimination"].isna().all()
    note = discrimination_note(result)
    assert note is not None and "'B'" in note and "single perturbation" in note
