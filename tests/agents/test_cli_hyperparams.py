"""The shipped hyperparameter files: every entry names a registered task and is valid for its algorithm; every
task with a fixed world has tuned (or measured) values; CellTRIP reads ``celltrip.yml`` like SB3 reads its own."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
import yaml

from cellgym.agents.cli import main
from cellgym.agents.cli._train import make_config
from cellgym.agents.zoo._hyperparams import read_file
from cellgym.registry import specs

FILES = sorted(p.name.removesuffix(".yml") for p in importlib.resources.files("cellgym.agents.hyperparams").iterdir()
               if p.name.endswith(".yml"))
#: the tasks whose world is fixed (the bring-your-own-data ones, CellEnv-Reprogram-v0 / Design-v0 / Trip-v0, are not)
FIXED = {"CellEnv-Reprogram-HSC-v0": "maskable_ppo", "CellEnv-Reprogram-SERGIO-v0": "maskable_ppo",
         "CellEnv-Reprogram-Screen-v0": "maskable_ppo", "CellEnv-Reprogram-HSC-Dose-v0": "sac",
         "CellEnv-Design-SERGIO-v0": "maskable_ppo", "CellEnv-Design-Norman-v0": "maskable_ppo",
         "CellEnv-Design-Papalexi-v0": "maskable_ppo", "CellEnv-Trip-Integration-v0": "celltrip",
         "CellEnv-Trip-Imputation-v0": "celltrip"}


@pytest.mark.parametrize("algo", FILES)
def test_every_entry_is_a_registered_task_and_valid(algo: str) -> None:
    data = read_file(algo)  # checks every entry against the algorithm's arguments
    unknown = set(data) - {"default"} - set(specs("tasks"))
    assert not unknown, f"{algo}.yml names unregistered tasks {unknown}"


def test_every_fixed_task_has_its_own_entry() -> None:
    assert set(FIXED) | {"CellEnv-Reprogram-v0", "CellEnv-Design-v0", "CellEnv-Trip-v0"} == set(specs("tasks"))
    for task, algo in FIXED.items():
        assert task in read_file(algo), f"{algo}.yml has no entry for {task}"
    assert "CellEnv-Reprogram-HSC-Dose-v0" in read_file("td3")


def test_celltrip_reads_its_file_conf_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = "CellEnv-Trip-Integration-v0"
    config = make_config(task, "celltrip")
    assert config["n_timesteps"] == read_file("celltrip")[task]["n_timesteps"]
    assert config["hyperparams"]["source"] == task
    conf = tmp_path / "conf.yml"
    conf.write_text(yaml.safe_dump({task: {"n_timesteps": 50, "learning_rate": 3.0e-4, "env_kwargs": {"n_cells": 90}}}))
    config = make_config(task, "celltrip", conf=str(conf), hyperparams={"n_epochs": 2}, env_kwargs={"max_cells": 60})
    hp = config["hyperparams"]
    assert config["n_timesteps"] == 50 and hp["source"] == f"{conf}[{task}]"
    assert hp["agent_kwargs"] == {"device": "cpu", "learning_rate": 3.0e-4, "n_epochs": 2}
    assert hp["env_kwargs"] == {"n_cells": 90, "max_cells": 60}
    assert main(["train", "--env", task, "--algo", "celltrip", "-f", str(tmp_path), "--hyperparams", "n_step:20"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'n_steps'" in err and "Traceback" not in err
    assert not (tmp_path / "celltrip").exists()


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_dose_entries_train_under_their_price_of_a_dose(algo: str) -> None:
    # the tuned SAC/TD3 entries raise the price of a unit of dose (the task's own is 0.1): the env they train
    # in charges that price, so the agent pays for every unit it gives
    import gymnasium as gym
    import numpy as np

    task = "CellEnv-Reprogram-HSC-Dose-v0"
    kwargs = make_config(task, algo)["hyperparams"]["env_kwargs"]
    assert kwargs["cost"] > 0.1
    env = gym.make(task, **kwargs)
    env.reset(seed=0)
    dose = np.zeros(env.action_space.shape, np.float32)
    dose[:3] = 0.25
    _, _, _, _, info = env.step(dose)
    assert info["total_dose"] == pytest.approx(0.75) and info["cost"] == pytest.approx(0.75 * kwargs["cost"])
