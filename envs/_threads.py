"""How many torch threads an environment's own tensor work may use (``num_threads=`` of every env).

The worlds step small tensors (a population of 32 cells x 11-20 genes; CellTRIP's few hundred cells), so
torch's intra-op thread pool buys nothing there, and on a busy machine it costs a great deal: OpenMP
threads that spin-wait for a sibling the OS has descheduled made one ``CellEnv-Reprogram-SERGIO-v0`` step
9.4 s with torch's default threads against 0.58 s with one (issue 13; ``benchmarks/env_threads.py``
measures it). Every env therefore runs its own work with ``num_threads`` threads, default 1, and
restores the process's setting afterwards, so the agent's threads (``--num-threads`` of the CLI) are
its own business; vector-env workers (one process each) never multiply threads either.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from cellgym.predictors.base.errors import CellgymError

__all__ = ["DEFAULT_NUM_THREADS", "check_num_threads", "torch_threads"]

DEFAULT_NUM_THREADS = 1
"""Threads an env's tensor work uses unless ``num_threads=`` says otherwise."""


class NumThreadsError(CellgymError, ValueError):
    """``num_threads`` is not a positive integer (or -1)."""


def check_num_threads(num_threads: int | None) -> int:
    """``num_threads`` validated: an int >= 1, or -1 (leave torch's process setting alone); None -> the default."""
    if num_threads is None:
        return DEFAULT_NUM_THREADS
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or not (num_threads >= 1 or num_threads == -1):
        raise NumThreadsError(f"num_threads: expected an integer >= 1 (or -1: torch's own setting), got {num_threads!r}.")
    return num_threads


@contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)``, then restore the previous count (-1: unchanged)."""
    before = torch.get_num_threads()
    if num_threads == -1 or num_threads == before:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
