"""nox sessions: tests, slow tests, lint, benchmarks, docs, examples, lowest dependencies.

Every session installs torch first with the repository's constraint, so nox
never pulls a CUDA build of torch.
"""

from __future__ import annotations

from pathlib import Path

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


#: The lowest release of each dependency that pyproject.toml allows and that installs on
#: Python 3.11: its lower bound, or the first release of that series with a cp311 wheel.
#: tests/test_dependency_bounds.py checks these against pyproject.toml's bounds.
LOWEST = {
    "numpy": "1.23.2",  # 1.23.0 and 1.23.1 have no cp311 wheel
    "scipy": "1.10.0",
    "soundfile": "0.13.0",
    "soxr": "0.3.3",  # 0.3.0-0.3.2 have no cp311 wheel
    "pyloudnorm": "0.1.1",
    "torchcrepe": "0.0.20",
    "pyworld-prebuilt": "0.3.6.post1",  # no plain 0.3.6 on PyPI
    "typing-extensions": "4.10.0",
    # extras
    "torchfcpe": "0.0.4",
    "praat-parselmouth": "0.4.2",
    "swift-f0": "0.3.0",
    "onnxruntime": "1.19.0",
    "faiss-cpu": "1.7.4",  # 1.7.0-1.7.3 have no cp311 wheel
    "tqdm": "4.60.0",
    "stftpitchshift": "2.0",
    "noisereduce": "3.0.3",
    "pedalboard": "0.9.0",
    "av": "13.0.0",
    "fastapi": "0.110.0",
    "uvicorn": "0.29.0",
    "python-multipart": "0.0.9",
    "websockets": "14.1",  # the serve extra takes 12; the tests' client needs 14.1 (test extra)
    "ray[data]": "2.22.0",  # 2.10-2.21: ray.data does not import with pyarrow >= 21 (pyproject.toml)
    "onnx": "1.16.0",
}

#: What `nox -s lowest` runs without arguments: the core (audio, DSP, resampling, F0, index,
#: weights, engine, batch, CLI, golden parity) and the extras' own tests.
LOWEST_TESTS = (
    "tests/test_resample.py", "tests/test_loudness.py", "tests/test_audio_robust.py", "tests/test_rmvpe.py",
    "tests/test_f0_blocks.py", "tests/test_f0_classic_robust.py", "tests/test_f0_converter.py",
    "tests/test_f0_crepe_fcpe.py", "tests/test_f0_post_robust.py", "tests/test_f0_registry.py",
    "tests/test_f0_truth.py", "tests/test_f0_world_pm.py", "tests/test_f0_swift.py", "tests/test_index.py",
    "tests/test_index_robust.py", "tests/test_index_second.py", "tests/test_weights.py",
    "tests/test_pipeline.py", "tests/test_e2e_golden.py", "tests/test_engine.py", "tests/test_cli.py",
    "tests/test_batch.py", "tests/test_outputs.py", "tests/test_output_formats.py", "tests/test_effects.py",
    "tests/test_onnx_export.py", "tests/test_serve.py", "tests/test_serve_live.py", "tests/test_ray.py",
)


@nox.session(python=PY)
def lowest(session: nox.Session) -> None:
    """The core and extras' tests with every dependency at its lowest allowed release (LOWEST).

    torch keeps the repository's pin: only the torch lines of constraints.txt apply here (its
    pedalboard pin would refuse pedalboard's lowest release). rvcfast goes in without its
    dependencies so pip cannot lift any of them. `nox -s lowest -- tests/test_x.py` runs other files.
    """
    torch_pin = Path(session.create_tmp()) / "torch-constraint.txt"
    lines = Path("constraints.txt").read_text(encoding="utf-8").splitlines()
    torch_pin.write_text("".join(f"{line}\n" for line in lines if line.startswith("torch")), encoding="utf-8")
    pins = [f"{name}=={version}" for name, version in LOWEST.items()]
    session.install("-c", str(torch_pin), *pins, "pytest", "pytest-xdist>=3.8", "hypothesis>=6", "httpx>=0.25")
    session.install("--no-deps", "-e", ".")
    session.run("python", "-m", "pytest", *(session.posargs or LOWEST_TESTS))
