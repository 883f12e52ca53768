"""The one minibatch training loop every torch predictor shares (the role of scvi's ``TrainingPlan``)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ._types import FitReport, LossOutput

StepFn = Callable[[nn.Module, dict[str, torch.Tensor], torch.optim.Optimizer], LossOutput]


def default_step(module: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> LossOutput:
    """One gradient step on ``module.loss(batch)``."""
    out: LossOutput = module.loss(batch)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out


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
) -> FitReport:
    """Train ``module`` on aligned tensors (same first dimension) for ``epochs`` passes.

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
        ``<log_prefix>/<name>``.
    progress
        Show a tqdm progress bar over epochs.
    """
    data = {k: torch.as_tensor(v).to(device) for k, v in tensors.items()}
    n = next(iter(data.values())).shape[0]
    module.to(device).train()
    optimizer = optimizer or torch.optim.AdamW(module.parameters(), lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    history: dict[str, list[float]] = defaultdict(list)
    start = time.perf_counter()
    epoch_iter: Any = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(epoch_iter, desc=f"{log_prefix}", unit="epoch")
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
        for k, v in means.items():
            history[k].append(v)
            if logger is not None:
                logger.add_scalar(f"{log_prefix}/{k}", v, epoch)
        if progress:
            epoch_iter.set_postfix(loss=f"{means.get('loss', float('nan')):.4g}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, means)
    module.eval()
    return FitReport(epochs=epochs, seconds=time.perf_counter() - start, n_obs=n, history=dict(history))
