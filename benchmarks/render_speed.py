"""Frames per second of ``render_mode="rgb_array"``: blitted frames (what the envs do) vs a full redraw.

    python benchmarks/render_speed.py [--frames 30]

Same figure, same states, same invocation: the full redraw calls ``canvas.draw()`` for every frame (the
plain matplotlib way), the blitted one restores the static background and draws the moving artists.
Also times CellTRIP's frames (300 cells of CellEnv-Trip-Integration-v0).
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np
import torch

import cellgym.envs  # noqa: F401
from cellgym.registry import make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = gym.make("CellEnv-Reprogram-HSC-v0", render_mode="rgb_array")
    u = env.unwrapped
    env.reset(seed=0)
    env.step(3)
    env.render()  # builds the canvas
    renderer = u._renderer
    state = (u.state.source[0].numpy(), u.state.cells[0].numpy(), u._track.paths[0], u._track.labels[0], "step 1")

    t = time.perf_counter()
    for _ in range(args.frames):
        renderer.frame(*state)
    blit = args.frames / (time.perf_counter() - t)

    t = time.perf_counter()
    for _ in range(args.frames):
        renderer.panel.update(*state)
        for artist in renderer.panel.moving():
            artist.set_animated(False)
        renderer.canvas.fig.canvas.draw()
        np.asarray(renderer.canvas.fig.canvas.buffer_rgba())[..., :3].copy()
    full = args.frames / (time.perf_counter() - t)

    trip = make("CellEnv-Trip-Integration-v0", render_mode="rgb_array")
    trip.reset(seed=0)
    trip.render()
    t = time.perf_counter()
    for _ in range(args.frames):
        trip.render()
    trip_fps = args.frames / (time.perf_counter() - t)

    print(f"{args.frames} frames each, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  HSC frame {renderer.frame(*state).shape}: blitted {blit:6.1f} frames/s, full redraw {full:6.1f} "
          f"frames/s ({blit / full:.1f}x)")
    print(f"  CellTRIP frame, {len(trip.agents)} cells: blitted {trip_fps:6.1f} frames/s")


if __name__ == "__main__":
    main()
