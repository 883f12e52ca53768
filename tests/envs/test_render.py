"""render_mode="rgb_array" / "ansi" of the reprogramming envs, CellTRIP's frames and global state,
and the RL tools that use them (gymnasium's RecordVideo, SB3's make_vec_env, VecMonitor)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import cellgym.envs  # noqa: F401
from cellgym.registry import make

HSC = "CellEnv-Reprogram-HSC-v0"


def _play(env: gym.Env, seed: int, names: list[str]) -> list[np.ndarray]:
    env.reset(seed=seed)
    frames = [env.render()]
    for name in names:
        env.step(env.unwrapped.perturbations.index(name))
        frames.append(env.render())
    return frames


def test_hsc_rgb_array_frames_follow_the_population_and_are_reproducible() -> None:
    env = gym.make(HSC, render_mode="rgb_array")
    frames = _play(env, 1, ["Gata1_OE", "Eklf_OE"])
    assert all(f.shape == (384, 416, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
    again = _play(gym.make(HSC, render_mode="rgb_array"), 1, ["Gata1_OE", "Eklf_OE"])
    assert all(np.array_equal(a, b) for a, b in zip(frames, again, strict=True))
    # the picture names the goal as the cell type it is, and the start cells
    texts = [t.get_text() for t in env.unwrapped._renderer.panel.ax.get_legend().get_texts()]
    assert "target: erythrocyte" in texts and "start: progenitor-like cells" in texts
    assert env.unwrapped._renderer.panel.ax.get_title().startswith("step 2: distance to erythrocyte")


def test_hsc_ansi_gives_one_line_per_step() -> None:
    env = gym.make(HSC, render_mode="ansi")
    lines = _play(env, 1, ["Gata1_OE", "Eklf_OE"])
    assert lines[0].startswith("step 0: no perturbation") and lines[0].endswith("| start")
    assert lines[1].startswith("step 1: Gata1_OE |") and lines[1].endswith("running")
    assert lines[2].startswith("step 2: Gata1_OE, Eklf_OE |") and lines[2].endswith("success")
    assert all("\n" not in line for line in lines)


@pytest.mark.parametrize("task", [HSC, "CellEnv-Reprogram-HSC-Dose-v0"])
def test_check_env_with_the_render_check(task: str) -> None:
    env = gym.make(task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=False)
    plain = gym.make(task, render_mode=None)
    plain.reset(seed=0)
    assert plain.render() is None


def test_unknown_render_mode_fails_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"render_mode: expected None or one of \['ansi', 'rgb_array'\]"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium warns first that the mode is not in the metadata
        gym.make(HSC, render_mode="video")


def test_native_vector_env_renders_every_sub_env() -> None:
    venv = gym.make_vec(HSC, num_envs=3, render_mode="rgb_array")
    assert type(venv).__name__ == "ReprogramVectorEnv"
    venv.reset(seed=0)
    venv.step(np.array([3, 7, 16]))  # Gata1_OE, Eklf_OE, stop
    frames = venv.render()
    assert len(frames) == 3 and all(f.shape == (384, 416, 3) for f in frames)
    assert not np.array_equal(frames[0], frames[1])
    text = gym.make_vec(HSC, num_envs=2, render_mode="ansi")
    text.reset(seed=0)
    text.step(np.array([3, 16]))
    lines = text.render()
    assert lines[0].startswith("step 1: Gata1_OE |") and lines[1].endswith("stopped")


def test_record_video_writes_an_mp4_of_each_episode(tmp_path) -> None:
    pytest.importorskip("moviepy")
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(gym.make(HSC, render_mode="rgb_array"), str(tmp_path), episode_trigger=lambda e: True,
                      disable_logger=True)
    for seed in (1, 2):
        env.reset(seed=seed)
        for a in (3, 7):  # Gata1_OE, Eklf_OE: reaches the goal in 2 steps
            *_, terminated, _truncated, _ = env.step(a)
        assert terminated
    env.close()
    videos = sorted(tmp_path.glob("*.mp4"))
    assert [v.name for v in videos] == ["rl-video-episode-0.mp4", "rl-video-episode-1.mp4"]
    n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(videos[0]))
    assert n_frames == 3  # reset + 2 steps


def test_sb3_make_vec_env_works_and_tiles_frames(tmp_path) -> None:
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(HSC, n_envs=2, seed=0, monitor_dir=str(tmp_path))  # passes render_mode="rgb_array"
    obs = venv.reset()
    assert obs.shape == (2, 49) and venv.render_mode == "rgb_array"
    obs, reward, _done, infos = venv.step(np.array([3, 3]))
    assert infos[0]["perturbations"] == ["Gata1_OE"] and reward.shape == (2,)
    assert venv.render().shape == (2 * 384, 416, 3)  # SB3 tiles the two frames
    venv.close()


def test_cellgym_vec_env_monitor_csv_names_the_task(tmp_path) -> None:
    from cellgym.agents.zoo._vec_env import make_sb3_vec_env

    venv = make_sb3_vec_env(HSC, 2, monitor_path=tmp_path / "train")
    venv.reset()
    venv.close()
    header = (tmp_path / "train.monitor.csv").read_text().splitlines()[0]
    assert '"env_id": "CellEnv-Reprogram-HSC-v0"' in header


def test_trip_rgb_array_colours_cells_by_label_and_state_holds_every_cell() -> None:
    env = make("CellEnv-Trip-Integration-v0", n_cells=60, dim=4, n_pcs=8, render_mode="rgb_array")
    assert "rgb_array" in env.metadata["render_modes"]
    _obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (368, 400, 3) and frame.dtype == np.uint8
    legend = env._renderer.ax.get_legend()
    assert legend.get_title().get_text() == "cell type" and [t.get_text() for t in legend.get_texts()] == list("01234")
    assert env._renderer.ax.get_xlabel() == "environment dimension 1"
    # the points carry their label's colour
    faces = env._renderer.points.get_facecolors()
    palette = env._renderer.palette
    assert np.allclose(faces, palette[env._renderer.index[env.cell_index]])
    env.step({a: np.ones(env.dim, np.float32) for a in env.agents})
    assert not np.array_equal(frame, env.render())
    state = env.state()
    assert env.state_space.contains(state) and state.shape == (60, 2 * 4 + env.n_inputs)
    agent_rows = np.stack([env._obs_dict(env._obs())[a]["self"] for a in env.agents])
    assert np.allclose(state[: len(env.agents)], agent_rows)


def test_trip_enjoy_plot_has_axis_labels_and_a_legend(tmp_path) -> None:
    from cellgym.envs.trip._render import plot_positions, positions_figure

    trajectory = np.random.default_rng(0).normal(size=(5, 20, 3))
    labels = np.repeat(["B cell", "T cell"], 10)
    fig = positions_figure(trajectory, labels=labels, label_name="cell type")
    axes = fig.get_axes()
    assert axes[0].get_xlabel() == "PC 1 of the positions" and axes[0].get_ylabel() == "PC 2 of the positions"
    legend = axes[-1].get_legend()
    assert legend.get_title().get_text() == "cell type"
    assert [t.get_text() for t in legend.get_texts()] == ["B cell", "T cell"]
    path = plot_positions(trajectory, tmp_path / "trip.png", labels=labels, label_name="cell type")
    assert path.read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob(".*tmp"))
