"""nox sessions: tests, slow tests, lint, benchmarks, docs, examples.

Every session installs torch first with the repository's constraint, so nox
never pulls a CUDA build of torch.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PY = "3.11"


def _install(session: nox.Session, extras: str = "test") -> None:
    session.install("-c", "constraints.txt", "-e", f".[{extras}]")


@nox.session(python=PY)
def tests(session: nox.Session) -> None:
    """The default suite (what CI runs)."""
    _install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PY)
def slow(session: nox.Session) -> None:
    """Long runs: the 1-hour file, the 500-file batch, the 10-minute RMVPE chunking check."""
    _install(session)
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session(python=PY)
def lint(session: nox.Session) -> None:
    """ruff over the package, tests, benchmarks and examples."""
    session.install("ruff")
    session.run("ruff", "check", "rvcfast", "tests", "benchmarks", "examples")


@nox.session(python=PY)
def typing(session: nox.Session) -> None:
    """mypy over the package (0 errors, models included)."""
    _install(session, "dev")
    session.run("mypy", "rvcfast")


@nox.session(python=PY)
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark runs (see docs/benchmarks.md for the figures and how to read them)."""
    _install(session)
    # librosa lets the F0 benchmark also run the raw torchcrepe/torchfcpe reference rows
    session.install("-c", "constraints.txt", "librosa")
    session.run("python", "-m", "pytest", "benchmarks", "-m", "", "--benchmark-only", *session.posargs)


@nox.session(python=PY)
def docs(session: nox.Session) -> None:
    """Build the documentation with MkDocs (strict) and run the examples the docs show."""
    _install(session, "test,docs")
    session.run("mkdocs", "build", "--strict")
    session.run("python", "-m", "pytest", "tests/test_examples.py", "-m", "")
