"""The one minibatch training loop every torch predictor shares (the role of scvi's ``TrainingPlan``)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ._types import FitReport, LossOutput

_progress = logging.getLogger("cellgym.fit")

StepFn = Callable[[nn.Module, dict[str, torch.Tensor], torch.optim.Optimizer], LossOutput]


def default_step(module: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> LossOutput:
    """One gradient step on ``module.loss(batch)``."""
    out: LossOutput = module.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out


def validation_rows(groups: np.ndarray, fraction: float, seed: int | None) -> np.ndarray:
    """Boolean mask of validation rows: ``fraction`` of the rows of every group (rounded down).

    Stratified by ``groups`` (e.g. one id per (context, perturbation)), so every training group keeps
    cells in both parts and a group of fewer than ``1 / fraction`` rows stays wholly in training.
    """
    rng = np.random.default_rng(0 if seed is None else seed)
    groups = np.asarray(groups)
    mask = np.zeros(groups.shape[0], dtype=bool)
    order = np.lexsort((rng.random(groups.shape[0]), groups))  # by group, random within a group
    _, first, inverse = np.unique(groups[order], return_index=True, return_inverse=True)
    rank = np.arange(order.size) - first[inverse]  # position of each row within its group (random order)
    counts = np.bincount(inverse)
    mask[order[rank < np.floor(fraction * counts[inverse])]] = True
    return mask


def train_module(
    module: nn.Module,
    tensors: dict[str, np.ndarray | torch.Tensor],
    *,
    epochs: int,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    device: str = "cpu",
    seed: int | None = 0,
    logger: Any = None,
    log_prefix: str = "fit",
    progress: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    step: StepFn = default_step,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    validation: np.ndarray | None = None,
    patience: int = 20,
    min_delta: float = 1e-4,
) -> FitReport:
    """Train ``module`` on aligned tensors (same first dimension) for at most ``epochs`` passes.

    Parameters
    ----------
    module
        A module whose ``loss(batch) -> LossOutput`` takes a dict of the tensors (one minibatch each).
    tensors
        Named arrays of N rows; batches are dicts with the same keys.
    step
        One optimisation step; override for models whose optimisation differs (e.g. a GAN's
        alternating updates) instead of copying this loop.
    logger
        Anything with ``add_scalar(tag, value, step)``; each loss component is logged per epoch as
        ``<log_prefix>/<name>`` (and ``<log_prefix>/val_loss`` with a validation part).
    progress
        Show a tqdm progress bar over epochs. Independently, one INFO line per epoch (at most one per
        10 s) goes to the ``cellgym.fit`` logger: epoch, loss, validation loss, elapsed and estimated
        time left.
    validation
        (N,) boolean mask of rows held out of training (see :func:`validation_rows`). **Early
        stopping:** the mean loss of these rows (eval mode, no grad) is computed after every epoch;
        training stops when it has not improved by more than ``min_delta`` (relative) for
        ``patience`` epochs, and the weights of the best epoch are restored. None: no validation,
        exactly ``epochs`` epochs.
    patience
        Epochs without improvement of the validation loss before stopping (default 20).
    """
    data = {k: torch.as_tensor(v).to(device) for k, v in tensors.items()}
    n_all = next(iter(data.values())).shape[0]
    val_data: dict[str, torch.Tensor] | None = None
    if validation is not None and np.asarray(validation).any() and not np.asarray(validation).all():
        val_mask = torch.as_tensor(np.asarray(validation, dtype=bool), device=device)
        val_data = {k: v[val_mask] for k, v in data.items()}
        data = {k: v[~val_mask] for k, v in data.items()}
    n = next(iter(data.values())).shape[0]
    module.to(device).train()
    optimizer = optimizer or torch.optim.AdamW(module.parameters(), lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    history: dict[str, list[float]] = defaultdict(list)
    start = time.perf_counter()
    last_log = start
    epoch_iter: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc=f"{log_prefix}", unit="epoch")
    best, best_epoch, best_state, since_best, ran = float("inf"), None, None, 0, 0
    for epoch in epoch_iter:
        order = torch.randperm(n, generator=generator).to(device)
        sums: dict[str, float] = defaultdict(float)
        seen = 0
        for begin in range(0, n, batch_size):
            rows = order[begin : begin + batch_size]
            if rows.numel() < 2 and n > 1:  # a batch of one breaks batch norm
                continue
            out = step(module, {k: v[rows] for k, v in data.items()}, optimizer)
            b = rows.numel()
            seen += b
            sums["loss"] += float(out.loss.detach()) * b
            for name, value in out.components.items():
                sums[name] += float(torch.as_tensor(value).detach().mean()) * b
        means = {k: v / max(seen, 1) for k, v in sums.items()}
        ran = epoch + 1
        if val_data is not None:
            means["val_loss"] = _mean_loss(module, val_data, batch_size)
        for k, v in means.items():
            history[k].append(v)
            if logger is not None:
                logger.add_scalar(f"{log_prefix}/{k}", v, epoch)
        if progress:
            epoch_iter.set_postfix(loss=f"{means.get('loss', float('nan')):.4g}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, means)
        stop = False
        if val_data is not None:
            v = means["val_loss"]
            if v < best - min_delta * abs(best) if np.isfinite(best) else v < best:
                best, best_epoch, since_best = v, epoch, 0
                best_state = {k: t.detach().clone() for k, t in module.state_dict().items()}
            else:
                since_best += 1
                stop = since_best >= patience
        now = time.perf_counter()
        if now - last_log >= 10.0 or stop or ran == epochs or epoch == 0:
            last_log = now
            per_epoch = (now - start) / ran
            val = f", val {means['val_loss']:.4g} (best {best:.4g} @ {best_epoch})" if val_data is not None else ""
            _progress.info(
                "%s: epoch %d/%d, loss %.4g%s, %.0f s elapsed, <= %.0f s left%s", log_prefix, ran, epochs,
                means.get("loss", float("nan")), val, now - start, per_epoch * (epochs - ran),
                " (early stop)" if stop else "",
            )
        if stop:
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return FitReport(
        epochs=ran, seconds=time.perf_counter() - start, n_obs=n_all, history=dict(history),
        best_epoch=None if best_epoch is None else best_epoch + 1, stopped_early=ran < epochs,
    )


@torch.no_grad()
def _mean_loss(module: nn.Module, data: dict[str, torch.Tensor], batch_size: int) -> float:
    """Mean ``module.loss`` over ``data`` in eval mode (cells weighted equally).

    Latent draws inside the loss use a fixed seed, so epochs are compared on the same noise.
    """
    module.eval()
    n = next(iter(data.values())).shape[0]
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for begin in range(0, n, batch_size * 4):
            batch = {k: v[begin : begin + batch_size * 4] for k, v in data.items()}
            b = next(iter(batch.values())).shape[0]
            total += float(module.loss(batch).loss) * b
    module.train()
    return total / max(n, 1)
