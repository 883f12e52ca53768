"""cellgym: Gymnasium and PettingZoo worlds for virtual cells, with an agent zoo.

The code lives in four subpackages: :mod:`cellgym.registry` (names -> things), :mod:`cellgym.predictors`,
:mod:`cellgym.envs` and :mod:`cellgym.agents`. Importing this package imports none of them.
"""

from importlib.metadata import PackageNotFoundError, version
from pkgutil import extend_path

# A checkout's cellgym/ folder (this file) found first on sys.path -- `python -c` in the repo root puts the
# current folder first -- would hide the installed subpackages; extend_path adds every other cellgym/
# folder on sys.path (an installed wheel's), so cellgym.agents etc. still resolve.
__path__ = extend_path(__path__, __name__)

try:
    __version__ = version("cellgym")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
