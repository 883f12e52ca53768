"""Pictures of the CellTRIP world: cells' positions coloured by a label (cell type, tissue layer).

- :func:`plot_positions`: ``cellgym enjoy --plot`` (a trajectory, panels at a few times, projected on the
  final positions' principal axes);
- :class:`TripFrameRenderer`: ``render_mode="rgb_array"`` (the current positions in the first two
  dimensions of the environment space, drawn by blitting on one reused canvas).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellgym.envs._canvas import BlitCanvas, figure, label_colours, save_figure

__all__ = ["TripFrameRenderer", "plot_positions", "positions_figure"]


def _legend(ax: Any, names: list[str], colours: np.ndarray, title: str) -> None:
    """A legend of the label categories (proxy markers, so it does not depend on which cells are drawn)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", ms=5, color=c, label=n) for n, c in zip(names, colours, strict=True)]
    ax.legend(handles=handles, title=title, fontsize=7, title_fontsize=7, loc="upper right", framealpha=0.8)


def plot_positions(trajectory: np.ndarray, path: str | Path, *, labels: np.ndarray | None = None,
                   n_panels: int = 4, title: str = "CellTRIP", label_name: str = "label") -> Path:
    """Draw cells' positions at ``n_panels`` times of a trajectory and write a PNG (atomically).

    Parameters
    ----------
    trajectory : array of shape (T, N, d)
        Positions of N cells at T recorded times; projected on the final positions' first two
        principal axes so all panels share one frame.
    path
        Where to write the figure.
    labels : array of shape (N,), optional
        Colours the cells (e.g. cell type); the legend names the categories.
    label_name
        What the labels are (legend title), e.g. ``"cell type"``.
    """
    fig = positions_figure(trajectory, labels=labels, n_panels=n_panels, title=title, label_name=label_name)
    return save_figure(fig, path, 100)


def positions_figure(trajectory: np.ndarray, *, labels: np.ndarray | None = None, n_panels: int = 4,
                     title: str = "CellTRIP", label_name: str = "label") -> Any:
    """The matplotlib Figure of :func:`plot_positions`."""
    traj = np.asarray(trajectory, dtype=np.float64)
    final = traj[-1] - traj[-1].mean(0)
    _, _, vt = np.linalg.svd(final, full_matrices=False)
    proj = (traj - traj[-1].mean(0)) @ vt[:2].T
    times = np.unique(np.linspace(0, len(traj) - 1, min(n_panels, len(traj))).astype(int))
    fig = figure(3.4 * len(times), 3.6, 100)
    axes = fig.subplots(1, len(times), squeeze=False)[0]
    colours = None
    if labels is not None:
        names, index, palette = label_colours(labels)
        colours = palette[index]
    for k, (ax, t) in enumerate(zip(axes, times, strict=True)):
        ax.scatter(proj[t, :, 0], proj[t, :, 1], c=colours, s=4)
        ax.set_title(f"{title}: record {t}", fontsize=9)
        ax.set_xlabel("PC 1 of the positions")
        if k == 0:
            ax.set_ylabel("PC 2 of the positions")
        ax.tick_params(labelsize=7)
    if labels is not None:
        _legend(axes[-1], names, palette, label_name)
    fig.tight_layout()
    return fig


class TripFrameRenderer:
    """RGB frames of the cells in the first two environment dimensions, coloured by their label.

    The axis limits are fixed and grow (one full redraw) when a cell leaves them, so consecutive frames of a
    video share their axes.
    """

    def __init__(self, all_labels: np.ndarray | None, label_name: str, *, size: tuple[float, float] = (5.0, 4.6),
                 dpi: int = 80) -> None:
        self.canvas = BlitCanvas(*size, dpi)
        self.ax = self.canvas.fig.add_subplot(1, 1, 1)
        self.palette = None
        if all_labels is not None:
            names, self.index, self.palette = label_colours(all_labels)
            _legend(self.ax, names, self.palette, label_name)
        self.points = self.ax.scatter(np.zeros(0), np.zeros(0), s=8, animated=True)
        self.ax.set_title("step 0", fontsize=10)
        self.ax.title.set_animated(True)
        self.ax.set_xlabel("environment dimension 1")
        self.ax.set_ylabel("environment dimension 2")
        self.limit = 0.0

    def frame(self, positions: np.ndarray, cell_index: np.ndarray, title: str) -> np.ndarray:
        """Cells at ``positions`` (N, >= 2) (data rows ``cell_index``) as an RGB array."""
        xy = positions[:, :2] if positions.shape[1] >= 2 else np.c_[positions[:, :1], np.zeros(len(positions))]
        reach = float(np.abs(xy).max()) if len(xy) else 1.0
        if reach > self.limit:  # grow the fixed limits, then re-render the background once
            self.limit = max(1.5, 1.5 * reach)
            self.ax.set_xlim(-self.limit, self.limit)
            self.ax.set_ylim(-self.limit, self.limit)
            self.canvas.fig.tight_layout()
            self.canvas.capture()
        self.points.set_offsets(xy)
        if self.palette is not None:
            self.points.set_facecolor(self.palette[self.index[cell_index]])
        self.ax.set_title(title, fontsize=10)
        return self.canvas.frame([self.points, self.ax.title])
