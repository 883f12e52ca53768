"""cellgym.registry — names to things: tasks (``CellEnv-*``), predictors, reward models and agents.

Entries are dotted strings resolved only when made, so importing this package loads no model code.
Third parties add theirs through the entry-point groups ``cellgym.predictors``, ``cellgym.rewards``,
``cellgym.agents`` and ``cellgym.tasks``.
"""

from cellgym import __version__

from . import _builtin  # noqa: F401  (registers the built-in names)
from ._registry import (
    Spec,
    UnknownNameError,
    UnknownOptionError,
    check_options,
    describe_task,
    get,
    is_parallel_task,
    make,
    make_agent,
    make_predictor,
    make_reward,
    predictor_class,
    register,
    register_parallel_task,
    specs,
)

__all__ = [
    "Spec",
    "UnknownNameError",
    "UnknownOptionError",
    "__version__",
    "check_options",
    "describe_task",
    "get",
    "is_parallel_task",
    "make",
    "make_agent",
    "make_predictor",
    "make_reward",
    "predictor_class",
    "register",
    "register_parallel_task",
    "specs",
]
