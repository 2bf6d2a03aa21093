"""``python -m rvcfast``: the same command line as the ``rvcfast`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
