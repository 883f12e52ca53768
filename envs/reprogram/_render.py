"""Pictures of reprogramming episodes: source cells, goal cells and the population's path in 2-D.

The embedding is the env's own fixed PCA (its first two components), so pictures of the same task are
comparable across agents and runs. Cells with identical states (Boolean worlds) are jittered slightly
(a fixed draw, so the same state gives the same picture).

Two users: :func:`plot_episodes` (``cellgym enjoy --plot``: one panel per finished episode) and the
envs' ``render_mode="rgb_array"`` (:class:`FrameRenderer`: the current population, one frame per step,
drawn on one reused matplotlib Agg canvas by blitting: the static picture is rendered once, each frame
restores it and draws only the moving artists).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cellgym.envs._canvas import BlitCanvas, figure, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ._core import ReprogramDynamics
    from ._env import ReprogramEnv

__all__ = ["FrameRenderer", "PathRecorder", "ansi_line", "episode_cells", "plot_episodes"]

_JITTER = 0.04
_DOSE_EPS = 1e-3


def episode_cells(env: ReprogramEnv, seed: int | None, actions: list[Any]) -> list[np.ndarray]:
    """Replay ``actions`` from ``reset(seed=seed)`` and return the cells (N, G) before and after each step."""
    env.reset(seed=seed)
    cells = [env.state.cells[0].numpy().copy()]
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        cells.append(env.state.cells[0].numpy().copy())
        if terminated or truncated:
            break
    return cells


def _embed(dyn: ReprogramDynamics, cells: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cells (..., G) -> (..., 2) in the first two components of the env's PCA."""
    x = torch.as_tensor(np.asarray(cells), dtype=torch.float32)
    return ((x - dyn.mean) @ dyn.components[:, :2]).numpy()


def step_labels(perturbations: list[str], before: torch.Tensor, after: torch.Tensor) -> list[str]:
    """For each of B rows, what a step did: ``"A + B"`` (perturbations newly applied), doses given as ``"A 0.40"``.

    ``before`` / ``after`` are the (B, P) perturbations in force (bool) or doses in force (float).
    """
    dose = after.dtype.is_floating_point
    grew = after > _DOSE_EPS if dose else after & ~before  # doses: those given this step
    out = []
    for row, a in zip(grew.numpy(), after.float().numpy(), strict=True):
        names = [f"{perturbations[j]} {a[j]:.2f}" if dose else perturbations[j] for j in np.flatnonzero(row)]
        out.append(" + ".join(names) if names else "-")
    return out


class PathRecorder:
    """The population-mean path (in the 2-D embedding) and step labels of B populations, for rendering."""

    def __init__(self, dynamics: ReprogramDynamics, n: int) -> None:
        self.dynamics = dynamics
        self.paths: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.labels: list[list[str]] = [[] for _ in range(n)]

    def start(self, rows: np.ndarray | list[int], cells: torch.Tensor) -> None:
        """Rows ``rows`` begin an episode at ``cells`` (len(rows), N, G)."""
        means = _embed(self.dynamics, cells.float().mean(1))
        for i, m in zip(rows, means, strict=True):
            self.paths[i] = [m]
            self.labels[i] = []

    def step(self, rows: np.ndarray | list[int], cells: torch.Tensor, labels: list[str]) -> None:
        """Rows ``rows`` moved to ``cells`` (len(rows), N, G) by the steps named ``labels``."""
        means = _embed(self.dynamics, cells.float().mean(1))
        for i, m, label in zip(rows, means, labels, strict=True):
            self.paths[i].append(m)
            self.labels[i].append(label)


def ansi_line(*, steps: int, applied: list[str], distance: float, threshold: float, status: str) -> str:
    """One text line for ``render_mode="ansi"``: step, perturbations in force, distance to the goal, status."""
    return (f"step {steps}: {', '.join(applied) if applied else 'no perturbation'} | distance {distance:.3f} "
            f"(goal <= {threshold:.3f}) | {status}")


class PopulationPanel:
    """One axes showing a population on its way to the goal; the moving parts are updated in place.

    Static: reference cells (grey), goal cells and their mean (a red star named after the goal cell type).
    Updated: the episode's starting population (blue), the current population (green), the path of the
    population mean with each step's perturbations.
    """

    def __init__(self, ax: Axes, dynamics: ReprogramDynamics, *, source_name: str, target_name: str,
                 animated: bool = False, current_label: str = "population now") -> None:
        self.ax = ax
        self.dynamics = dynamics
        self.animated = animated
        world = dynamics.world
        rng = np.random.default_rng(0)
        reference = _embed(dynamics, world.reference)
        target = _embed(dynamics, world.target)
        ax.scatter(*(reference + rng.normal(0, _JITTER, reference.shape)).T, s=6, c="0.85", label="reference cells")
        if len(target) > 1:
            ax.scatter(*target.T, s=6, c="tab:red", alpha=0.25, label=f"{target_name} cells")
        ax.scatter(*target.mean(0), s=260, marker="*", c="tab:red", edgecolors="k", zorder=5,
                   label=f"target: {target_name}")
        empty = np.zeros((0, 2))
        self.source = ax.scatter(*empty.T, s=14, c="tab:blue", alpha=0.7, label=f"start: {source_name}")
        self.current = ax.scatter(*empty.T, s=14, c="tab:green", alpha=0.7, label=current_label)
        (self.path,) = ax.plot([], [], "-o", c="k", lw=1.5, ms=4, zorder=4, label="population mean")
        self.notes: list[Any] = []
        points = np.concatenate([reference, target])
        lo, hi = points.min(0), points.max(0)
        pad = 0.15 * np.maximum(hi - lo, 1e-3) + 2 * _JITTER
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])  # fixed limits: frames of a video do not jump
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_xlabel("PC 1 (task embedding)")
        ax.set_ylabel("PC 2 (task embedding)")
        ax.legend(fontsize=7, loc="best")
        for artist in (self.source, self.current, self.path, ax.title):
            artist.set_animated(animated)  # animated artists are left out of a full draw (blitting draws them)

    def update(self, source: np.ndarray, current: np.ndarray, path: list[np.ndarray], labels: list[str], title: str) -> None:
        """Show populations ``source`` and ``current`` (N, G), the mean ``path`` (list of (2,)) and step ``labels``."""
        rng = np.random.default_rng(1)
        for artist, cells in ((self.source, source), (self.current, current)):
            xy = _embed(self.dynamics, cells)
            artist.set_offsets(xy + rng.normal(0, _JITTER, xy.shape))
        centroids = np.stack(path)
        self.path.set_data(centroids[:, 0], centroids[:, 1])
        for note in self.notes:
            note.remove()
        self.notes = []
        for i, name in enumerate(labels[: len(centroids) - 1]):
            a, b = centroids[i], centroids[i + 1]
            self.notes.append(self.ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": "->", "color": "k", "lw": 1.5},
                                               zorder=4, animated=self.animated))
            self.notes.append(self.ax.annotate(f"{i + 1}. {name}", xy=(a + b) / 2, fontsize=8, xytext=(4, 4),
                                               textcoords="offset points", animated=self.animated))
        self.ax.set_title(title, fontsize=10)

    def moving(self) -> list[Any]:
        """The artists that change from frame to frame."""
        return [self.source, self.current, self.path, *self.notes, self.ax.title]


class FrameRenderer:
    """RGB frames (H, W, 3) uint8 of populations, drawn on one reused Agg canvas (``render_mode="rgb_array"``).

    Parameters
    ----------
    dynamics
        The env's dynamics (embedding, reference and goal cells).
    source_name, target_name
        Names of the start and goal cell types (legend).
    size, dpi
        Figure size in inches and resolution (default 5.2 x 4.8 in at 80 dpi: 416 x 384 pixels).
    """

    def __init__(self, dynamics: ReprogramDynamics, *, source_name: str, target_name: str,
                 size: tuple[float, float] = (5.2, 4.8), dpi: int = 80) -> None:
        self.canvas = BlitCanvas(*size, dpi)
        ax = self.canvas.fig.add_subplot(1, 1, 1)
        self.panel = PopulationPanel(ax, dynamics, source_name=source_name, target_name=target_name, animated=True)
        ax.set_title("step 0")  # room for the title in the layout
        self.canvas.fig.tight_layout()

    def frame(self, source: np.ndarray, current: np.ndarray, path: list[np.ndarray], labels: list[str], title: str) -> np.ndarray:
        """Draw one state and return it as an RGB array."""
        self.panel.update(source, current, path, labels, title)
        return self.canvas.frame(self.panel.moving())


def plot_episodes(env: Any, episodes: list[Any], path: str | Path, *, title: str = "", max_panels: int = 3) -> Path:
    """Write a PNG with one panel per episode (at most ``max_panels``).

    Parameters
    ----------
    env
        The (unwrapped) :class:`ReprogramEnv` the episodes were played in; it is reset and replayed.
    episodes
        Objects with ``seed``, ``actions``, ``names`` and ``success`` (``cellgym.agents.zoo._rollout.Episode``).
    path
        Output PNG (written atomically).
    """
    env = getattr(env, "unwrapped", env)
    shown = episodes[:max_panels]
    fig = figure(5.2 * len(shown), 4.8, 120)
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for k, (ax, ep) in enumerate(zip(axes, shown, strict=False)):
        cells = episode_cells(env, ep.seed, ep.actions)
        panel = PopulationPanel(ax, env.dynamics, source_name=env.source_name, target_name=env.target_name,
                                current_label="final population")
        if k:
            ax.get_legend().remove()
        outcome = "success" if ep.success else "failure"
        panel.update(cells[0], cells[-1], [_embed(env.dynamics, c.mean(0)) for c in cells], list(ep.names),
                     f"seed {ep.seed}: {outcome} in {len(cells) - 1} steps")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, 120)
