"""The declared lower bounds: what `nox -s lowest` installs matches pyproject.toml, and the
code paths that had to change for the lowest releases keep working on the current ones."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
#: extras of tools (tests, docs, development), not of rvcfast's features
TOOL_EXTRAS = ("test", "docs", "dev")


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _lowest_pins() -> dict[str, str]:
    """noxfile.LOWEST, read without importing nox."""
    tree = ast.parse((REPO / "noxfile.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LOWEST" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("noxfile.py has no LOWEST")


def _key(req: Requirement) -> str:
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return canonicalize_name(req.name) + extras


def _declared() -> list[Requirement]:
    project = _project()
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, items in project["optional-dependencies"].items():
        if extra not in TOOL_EXTRAS:
            reqs += [Requirement(r) for r in items if not r.startswith("rvcfast[")]
    return [r for r in reqs if r.name != "torch"]  # torch: the constraints file pins it


def _floor(req: Requirement) -> Version:
    bounds = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert len(bounds) == 1, f"{req}: expected one '>=' lower bound"
    return bounds[0]


def _test_floors() -> dict[str, Version]:
    """Higher floors the test extra sets for a feature's package (what the test client needs)."""
    reqs = [Requirement(r) for r in _project()["optional-dependencies"]["test"] if not r.startswith("rvcfast[")]
    return {canonicalize_name(r.name): _floor(r) for r in reqs if any(s.operator == ">=" for s in r.specifier)}


def test_every_declared_dependency_has_a_lowest_pin_in_its_bounds_series() -> None:
    pins = {_key(Requirement(f"{name}=={v}")): Version(v) for name, v in _lowest_pins().items()}
    tests_need = _test_floors()
    problems = []
    for req in _declared():
        pin = pins.get(_key(req))
        if pin is None:
            problems.append(f"{req}: no pin in noxfile.LOWEST")
            continue
        if pin not in req.specifier:
            problems.append(f"{req}: LOWEST pins {pin}, outside the declared range")
        floor = _floor(req)
        in_series = pin.release[: len(floor.release)] == floor.release  # 1.23 -> 1.23.2 (first cp311 wheel)
        if not in_series and tests_need.get(canonicalize_name(req.name)) != pin:
            problems.append(f"{req}: LOWEST pins {pin}, a later series than the bound {floor}")
    declared = {_key(r) for r in _declared()}
    problems += [f"LOWEST pins {k}, which pyproject.toml does not declare" for k in pins if k not in declared]
    assert not problems, "\n".join(problems)


def test_the_torch_bound_covers_the_safe_globals_tuples() -> None:
    # safe_load passes (stub, "module.name") tuples to torch.serialization.safe_globals: torch 2.6+
    (torch_req,) = [r for r in map(Requirement, _project()["dependencies"]) if r.name == "torch"]
    assert _floor(torch_req) >= Version("2.6")


def test_loudness_of_many_channels_without_a_meter_overlap_attribute() -> None:
    # pyloudnorm 0.1.1 (the declared bound) has no Meter.overlap: it always overlaps 75 %
    import pyloudnorm

    from rvcfast.loudness import _unit_weighted_loudness

    rng = np.random.default_rng(0)
    x = 0.1 * rng.standard_normal((16000 * 2, 6))
    meter = pyloudnorm.Meter(16000)
    expected = _unit_weighted_loudness(meter, x)
    if hasattr(meter, "overlap"):
        del meter.overlap  # as pyloudnorm 0.1.1 builds it
    assert _unit_weighted_loudness(meter, x) == expected
