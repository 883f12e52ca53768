"""``python -m cellgym``: the ``cellgym`` command line."""

import sys

from cellgym.agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
