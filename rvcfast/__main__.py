"""``python -m rvcfast``: the same command line as the ``rvcfast`` console script."""

from .cli import run

if __name__ == "__main__":
    run()
