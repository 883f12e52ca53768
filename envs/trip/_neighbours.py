"""k-nearest-neighbour graphs of the cells in modality space (built once per episode; modalities do not move).

Up to ``EXACT_MAX_CELLS`` cells the graph is exact: chunked brute force in torch (one matmul per chunk and a
``topk``), deterministic and fast at that size. Above it, faiss's HNSW index (Malkov & Yashunin 2018,
arXiv:1603.09320) is used when ``faiss-cpu`` is installed (the ``cellgym[scale]`` extra), and above
``HNSW_MAX_CELLS`` its inverted-file index (IVF-Flat: k-means cells, a few probed per query; Jégou et al.
2011), about 3x cheaper to build at some loss of recall; else pynndescent (Dong et al. 2011, installed with
scanpy). Measured on this machine at 100,000 cells x 96 features, k = 32,
one thread (``benchmarks/trip.py knn``): see the table in ``docs/trip_scale.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

EXACT_MAX_CELLS = 20_000
"""Up to this many cells the neighbour graph is exact (brute force, O(N^2 F) once per episode)."""

HNSW_MAX_CELLS = 300_000
"""Above this many cells (and with faiss) the graph comes from an IVF-Flat index instead of HNSW."""

IVF_PROBES = 16
"""Inverted lists probed per query by the IVF index (of 4 sqrt(N)); recall@32 0.93 at 100,000 cells."""

_CHUNK_ELEMENTS = 1 << 23
"""Distance-matrix entries per chunk of the exact search (32 MB of float32)."""


def knn_graph(x: torch.Tensor, k: int, *, backend: str = "auto") -> torch.Tensor:
    """Indices (N, k) of each row's k nearest other rows (Euclidean), nearest first; never the row itself.

    Parameters
    ----------
    x : Tensor of shape (N, F)
        Points (on any device; the search runs on the CPU for the approximate backends).
    k : int
        Neighbours per row, 1 <= k <= N - 1.
    backend : {"auto", "exact", "faiss", "faiss-ivf", "pynndescent"}
        ``auto``: exact up to ``EXACT_MAX_CELLS`` rows, else faiss HNSW (IVF above ``HNSW_MAX_CELLS``) if
        importable, else pynndescent.
    """
    n = len(x)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}]; got {k}.")
    if backend == "auto":
        if n <= EXACT_MAX_CELLS:
            backend = "exact"
        else:
            try:
                import faiss  # noqa: F401

                backend = "faiss" if n <= HNSW_MAX_CELLS else "faiss-ivf"
            except ImportError:
                backend = "pynndescent"
    if backend == "exact":
        return _exact(x, k)
    points = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    if backend == "faiss":
        idx = _faiss_hnsw(points, k + 1)
    elif backend == "faiss-ivf":
        idx = _faiss_ivf(points, k + 1)
    elif backend == "pynndescent":
        from pynndescent import NNDescent

        idx, _ = NNDescent(points, n_neighbors=k + 1, random_state=0, n_jobs=1, compressed=True).neighbor_graph
    else:
        raise ValueError(f"backend must be 'auto', 'exact', 'faiss', 'faiss-ivf' or 'pynndescent'; got {backend!r}.")
    return _drop_self(torch.from_numpy(np.asarray(idx, dtype=np.int64)), k).to(x.device)


def _exact(x: torch.Tensor, k: int) -> torch.Tensor:
    n = len(x)
    sq = x.pow(2).sum(1)
    out = torch.empty(n, k, dtype=torch.long, device=x.device)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        d = x[start:stop] @ x.T
        d.mul_(-2.0).add_(sq[start:stop, None]).add_(sq[None, :])  # squared distances, same order as sqrt
        d[torch.arange(stop - start), torch.arange(start, stop)] = float("inf")
        out[start:stop] = d.topk(k, dim=1, largest=False, sorted=True).indices
    return out


def _faiss_hnsw(points: np.ndarray, k: int) -> np.ndarray:
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one thread: HNSW insertion order, hence the graph, is then reproducible
    try:
        index = faiss.IndexHNSWFlat(points.shape[1], 32)
        index.hnsw.efConstruction = 64
        index.add(points)
        index.hnsw.efSearch = max(64, k)
        _, idx = index.search(points, k)
    finally:
        faiss.omp_set_num_threads(threads)
    return idx


def _faiss_ivf(points: np.ndarray, k: int) -> np.ndarray:
    import faiss

    n, dim = points.shape
    lists = max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
        index.cp.seed = 0  # k-means initialisation: same graph for the same cells
        sample = np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)
        index.train(points[np.sort(sample)])
        index.add(points)
        index.nprobe = min(IVF_PROBES, lists)
        _, idx = index.search(points, k)
    finally:
        faiss.omp_set_num_threads(threads)
    return idx


def _drop_self(idx: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k + 1) results that usually hold the row itself -> (N, k) without it (and without -1 fillers)."""
    n = len(idx)
    rows = torch.arange(n)[:, None]
    bad = (idx == rows) | (idx < 0)
    # keep the first k valid entries of each row; rows short of k valid entries get their next cells
    order = torch.argsort(bad.to(torch.int8), dim=1, stable=True)[:, :k]
    out = idx.gather(1, order)
    still_bad = bad.gather(1, order)
    if still_bad.any():
        fill = (rows + 1 + torch.arange(k)[None, :]) % n
        out = torch.where(still_bad, fill, out)
    return out


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D ``index``: rows (len(index), F), differentiable in ``table``.

    Through ``F.embedding_bag`` with bags of one row: its CPU kernel (FBGEMM, which prefetches the rows it
    will read) measured 2x faster than ``index_select`` (and ``F.embedding``) on the neighbour view's
    gathers, 100,000 cells x 40 seen cells x 64 floats, one thread.
    """
    return torch.nn.functional.embedding_bag(index.view(-1, 1), table, mode="sum")


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()


def for_chunks(n: int, rows: int, fn: Callable[[int, int], None]) -> None:
    """Call ``fn(start, stop)`` for consecutive chunks of ``rows`` cells covering ``range(n)``.

    With T = ``torch.get_num_threads()`` > 1 the chunks are split into T contiguous runs, each run by its
    own Python thread with one torch thread (torch ops release the GIL), so the threads split whole chunks
    (a gather of about 1 MB, then a small attention or norm) instead of each small op. Measured at 100,000
    cells on the loaded 2-core machine: 2 threads cost 5% more CPU than 1 and took 1.31x less wall time
    (``benchmarks/trip.py threads``). ``fn`` must only write its own rows; grad mode is the caller's.
    """
    starts = list(range(0, n, rows))
    threads = torch.get_num_threads()
    if threads <= 1 or len(starts) < 2 * threads:
        for start in starts:
            fn(start, min(n, start + rows))
        return
    grad = torch.is_grad_enabled()
    per = -(-len(starts) // threads)
    parts = [starts[i:i + per] for i in range(0, len(starts), per)]

    def run(part: list[int]) -> None:
        torch.set_num_threads(1)  # this thread's OpenMP teams: 1 (the caller's count is restored below)
        with torch.set_grad_enabled(grad):
            for start in part:
                fn(start, min(n, start + rows))

    with _POOL_LOCK:
        pool = _POOLS.get(threads) or _POOLS.setdefault(threads, ThreadPoolExecutor(threads - 1, "cellgym-chunks"))
    try:
        futures = [pool.submit(run, part) for part in parts[1:]]
        run(parts[0])  # the calling thread takes the first run
        for future in futures:
            future.result()
    finally:
        torch.set_num_threads(threads)
