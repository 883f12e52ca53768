"""cellgym: Gymnasium and PettingZoo worlds for virtual cells, with an agent zoo.

The code lives in four subpackages: :mod:`cellgym.registry` (names -> things), :mod:`cellgym.predictors`,
:mod:`cellgym.envs` and :mod:`cellgym.agents`. Importing this package imports none of them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellgym")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
