"""Plotting helper for the CellTRIP world: cells' positions over time (first two dimensions or PCA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_positions(trajectory: np.ndarray, path: str | Path, *, labels: np.ndarray | None = None,
                   n_panels: int = 4, title: str = "CellTRIP") -> Path:
    """Draw cells' positions at ``n_panels`` times of a trajectory and write a PNG.

    Parameters
    ----------
    trajectory : array of shape (T, N, d)
        Positions of N cells at T recorded times; projected on the final positions' first two
        principal axes so all panels share one frame.
    path
        Where to write the figure.
    labels : array of shape (N,), optional
        Colours the cells (e.g. cell type).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traj = np.asarray(trajectory, dtype=np.float64)
    final = traj[-1] - traj[-1].mean(0)
    _, _, vt = np.linalg.svd(final, full_matrices=False)
    proj = (traj - traj[-1].mean(0)) @ vt[:2].T
    times = np.unique(np.linspace(0, len(traj) - 1, min(n_panels, len(traj))).astype(int))
    fig, axes = plt.subplots(1, len(times), figsize=(3.2 * len(times), 3.2), squeeze=False)
    colours = None
    if labels is not None:
        _, colours = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    for ax, t in zip(axes[0], times, strict=True):
        ax.scatter(proj[t, :, 0], proj[t, :, 1], c=colours, s=4, cmap="tab20")
        ax.set_title(f"{title}: record {t}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
