"""CellGen (Chen lab): a FiLM-conditioned gated-attention Wasserstein GAN that edits the input cell.

Registered as the predictor ``cellgen`` (perturbation responses without cell-type input; time-step
forecasts in trajectory mode) and the reward model ``cellgen.critic`` (the critic's realism score).
"""

from ._model import CellGen
from ._module import CellGenModule, ConditionEncoder, Critic, FiLM, GatedGeneAttention, Generator
from ._reward import CellGenCriticReward
from ._timecourse import TIME_SPEC, forecast_scores, simulate_time_course
from ._train import GANDivergedError, GANStep, GANWeights

__all__ = [
    "TIME_SPEC",
    "CellGen",
    "CellGenCriticReward",
    "CellGenModule",
    "ConditionEncoder",
    "Critic",
    "FiLM",
    "GANDivergedError",
    "GANStep",
    "GANWeights",
    "GatedGeneAttention",
    "Generator",
    "forecast_scores",
    "simulate_time_course",
]
