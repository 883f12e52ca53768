"""cellgym.envs — gymnasium reprogramming worlds, the PettingZoo CellTRIP world, vector envs.

Importing this package registers every ``CellEnv-*`` task with gymnasium.
"""

from cellgym.registry import _tasks  # noqa: F401  (registers the tasks)

__all__: list[str] = []
