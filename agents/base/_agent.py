"""One interface to train, save, load and act, whatever the agent."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar


class Agent(abc.ABC):
    """A policy for a cellgym task.

    Learning agents (``learns = True``) implement :meth:`learn`, :meth:`save` and :meth:`load`.
    Planning baselines (random, greedy, bfs) learn nothing and may look through the environment's
    transition when they act, so :meth:`act` receives the (unwrapped) environment as well as the
    observation.
    """

    name: ClassVar[str] = ""
    learns: ClassVar[bool] = False

    @abc.abstractmethod
    def act(self, obs: Any, env: Any, *, deterministic: bool = True) -> Any:
        """The action for ``obs`` in ``env`` (the unwrapped env of the current episode)."""

    def reset(self, env: Any) -> None:  # noqa: B027  (optional hook)
        """Called at the start of every episode (planners may plan here)."""

    def learn(self, env: Any, total_timesteps: int, **kwargs: Any) -> Agent:
        """Train on ``env``; planners have nothing to learn."""
        raise NotImplementedError(f"{type(self).__name__} does not learn")

    def save(self, path: str | Path) -> Path:
        """Write the agent to ``path``."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to save")

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Agent:
        """Read an agent written by :meth:`save`."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")
