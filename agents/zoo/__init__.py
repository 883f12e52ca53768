"""The agent zoo: stable-baselines3 and sb3-contrib algorithms behind cellgym's ``Agent`` interface."""

from ._hyperparams import HyperparamError, Hyperparams, load_hyperparams
from ._sb3 import SB3Agent
from ._vec_env import GymnasiumVecEnv, make_sb3_vec_env

__all__ = ["GymnasiumVecEnv", "HyperparamError", "Hyperparams", "SB3Agent", "load_hyperparams", "make_sb3_vec_env"]
