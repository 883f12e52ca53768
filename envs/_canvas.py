"""Fast ``render_mode="rgb_array"`` frames: one matplotlib Agg canvas per env, redrawn by blitting.

A full matplotlib draw spends most of its time on text (tick labels, legend, titles). An env's picture
is mostly static, so :class:`BlitCanvas` renders the static part once, and each frame restores that
background and draws only the artists that move (``benchmarks/render_speed.py`` compares the two).
No pyplot: the figure has its own Agg canvas, so rendering never touches the user's backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BlitCanvas", "figure", "label_colours", "save_figure"]


def figure(width: float, height: float, dpi: int) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas (no pyplot state, no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary name in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    tmp.replace(path)
    return path


def label_colours(labels: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Categories of ``labels`` (N,): their names (sorted), each cell's category index (N,), and RGBA colours (C, 4).

    tab10 up to 10 categories, tab20 up to 20, evenly spaced viridis beyond.
    """
    from matplotlib import colormaps

    names, index = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    n = len(names)
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    colours = cmap(np.arange(n) if n <= 20 else np.linspace(0, 1, n))
    return [str(x) for x in names], index, np.asarray(colours)


class BlitCanvas:
    """A figure whose static part is rendered once; :meth:`frame` draws the moving artists over it.

    Mark the moving artists ``set_animated(True)`` before :meth:`capture` (a full draw skips them).
    """

    def __init__(self, width: float, height: float, dpi: int) -> None:
        self.fig = figure(width, height, dpi)
        self.background: Any = None

    def capture(self) -> None:
        """Render the static picture (everything not animated) and keep it as the background."""
        self.fig.canvas.draw()
        self.background = self.fig.canvas.copy_from_bbox(self.fig.bbox)

    def frame(self, moving: list[Any]) -> np.ndarray:
        """The background with ``moving`` drawn over it, as an RGB array (H, W, 3) uint8."""
        if self.background is None:
            self.capture()
        canvas = self.fig.canvas
        canvas.restore_region(self.background)
        renderer = canvas.get_renderer()
        for artist in moving:
            artist.draw(renderer)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
