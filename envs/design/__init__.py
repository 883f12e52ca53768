"""Inverse-design worlds (``CellEnv-Design-*``): which perturbations produce these cells?

The goal is the measured cells of a condition the world's predictor was fitted **without**; actions pick
perturbations from the screen's vocabulary. Scored by where the true perturbation ranks among the
agent's proposals (PDGrapher's framing, Gonzalez et al., Nature Biomedical Engineering 2025).
"""

from ._tasks import (
    DESIGN_TASKS,
    DesignProblem,
    design_env,
    design_problem,
    make_design_env,
    make_design_vector_env,
    make_norman_env,
    make_norman_vector_env,
    make_papalexi_env,
    make_papalexi_vector_env,
    make_sergio_env,
    make_sergio_vector_env,
    norman_problems,
    papalexi_problems,
    problems_for,
    sergio_problems,
)

__all__ = [
    "DESIGN_TASKS",
    "DesignProblem",
    "design_env",
    "design_problem",
    "make_design_env",
    "make_design_vector_env",
    "make_norman_env",
    "make_norman_vector_env",
    "make_papalexi_env",
    "make_papalexi_vector_env",
    "make_sergio_env",
    "make_sergio_vector_env",
    "norman_problems",
    "papalexi_problems",
    "problems_for",
    "sergio_problems",
]
