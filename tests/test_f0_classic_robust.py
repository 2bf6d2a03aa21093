"""Robustness of the classic F0 backends, the hybrid and the registry on unusual input and options."""

from __future__ import annotations

import importlib.metadata as md
import sys
import types

import numpy as np
import pytest

from rvcfast.errors import BackendUnavailableError, ParameterError, RvcfastError
from rvcfast.f0 import registry
from rvcfast.f0.hybrid import HybridExtractor
from rvcfast.f0.registry import get_f0_extractor, parse_hybrid
from rvcfast.f0.world import DioExtractor, HarvestExtractor

SR = 16000
HOP = 160


class Track:
    """A tracker returning whatever ``make(n_samples)`` gives (to imitate broken plugins)."""

    sample_rate = SR
    hop_length = HOP

    def __init__(self, name: str, make) -> None:
        self.name = name
        self.make = make

    def extract(self, audio16k):
        return self.make(len(audio16k))

    def extract_batch(self, audios):
        return [self.extract(a) for a in audios]


def good(name: str = "good", hz: float = 200.0) -> Track:
    return Track(name, lambda n: np.full(n // HOP + 1, hz))


# --- frame counts on silence, noise and odd lengths ---------------------------------------


@pytest.mark.parametrize("name", ["harvest", "dio", "pm", "hybrid:harvest+dio+pm"])
def test_frame_count_and_values_on_odd_lengths(name):
    pytest.importorskip("parselmouth")
    ext = get_f0_extractor(name)
    rng = np.random.default_rng(0)
    for n in (0, 1, 159, 161, 959, 961, 3201):
        for x in (np.zeros(n), 1e-30 * rng.standard_normal(n), 0.1 * rng.standard_normal(n)):
            f0 = ext.extract(x)
            assert f0.shape == (n // HOP + 1,)
            assert np.isfinite(f0).all() and (f0 >= 0).all()
        assert not ext.extract(np.zeros(n)).any()  # digital silence is unvoiced


# --- hybrid: min_voiced -------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["abc", 1.5, True, 0, 3, -1, "2.5"])
def test_hybrid_min_voiced_must_be_a_whole_number_in_range(bad):
    with pytest.raises(ParameterError, match="min_voiced"):
        HybridExtractor([good("a"), good("b")], min_voiced=bad)


def test_hybrid_min_voiced_from_the_command_line_is_a_parameter_error():
    # `--f0-option min_voiced=abc` reaches the registry as the word "abc"
    with pytest.raises(ParameterError, match="min_voiced.*'abc'"):
        get_f0_extractor("hybrid:harvest+dio", min_voiced="abc")
    assert get_f0_extractor("hybrid:harvest+dio", min_voiced="1").min_voiced == 1
    assert get_f0_extractor("hybrid:harvest+dio", min_voiced=np.int64(2)).min_voiced == 2


# --- hybrid: member tracks are checked like a single backend's -----------------------------


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda n: np.full(n // (2 * HOP) + 1, 200.0), "frames for"),  # twice the hop
        (lambda n: np.full((2, n // HOP + 1), 200.0), "shape"),  # not 1-D
        (lambda n: np.full(n // HOP + 1, np.nan), "NaN"),
        (lambda n: np.full(n // HOP + 1, -200.0), "negative"),
        (lambda n: None, "not an array|shape"),
    ],
)
def test_hybrid_refuses_a_malformed_member_track(make, problem):
    h = HybridExtractor([good("fine"), Track("broken-plugin", make)], min_voiced=1)
    audio = np.zeros(2 * SR)
    with pytest.raises(RvcfastError, match=rf"'broken-plugin'.*(?:{problem})"):
        h.extract(audio)
    with pytest.raises(RvcfastError, match="'broken-plugin'"):
        h.extract_batch([audio])


def test_hybrid_still_aligns_members_a_few_frames_off():
    short = Track("short", lambda n: np.full(n // HOP + 1 - 3, 100.0))  # an unpadded tracker
    h = HybridExtractor([short, good("exact", 100.0)])
    f0 = h.extract(np.zeros(SR))
    assert f0.shape == (SR // HOP + 1,)
    np.testing.assert_allclose(f0[:-3], 100.0)
    assert not f0[-3:].any()  # padded frames are unvoiced, and 2 of 2 must agree


# --- hybrid specs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["hybrid:pm+hybrid:dio+harvest", "hybrid[pm+hybrid[dio+harvest]]", "hybrid:hybrid+dio", "hybrid[dio+harvest"],
)
def test_nested_or_unclosed_hybrid_is_a_clear_parameter_error(spec):
    with pytest.raises(ParameterError, match="malformed hybrid F0 spec"):
        parse_hybrid(spec)
    with pytest.raises(ParameterError, match="malformed hybrid F0 spec"):
        get_f0_extractor(spec)


# --- plugins whose constructor refuses its options ----------------------------------------


class _Refuses:
    sample_rate = SR
    hop_length = HOP
    name = "refuses"

    def __init__(self, device="cpu", dtype=None, threshold=0.5, mode="value"):
        if mode == "value":
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if mode == "type":
            float(None)  # a plugin's own TypeError
        raise RuntimeError("the plugin's device is busy")


@pytest.fixture
def refusing_plugin(monkeypatch):
    mod = types.ModuleType("_rvcfast_refusing_plugin")
    mod.Refuses = _Refuses
    monkeypatch.setitem(sys.modules, "_rvcfast_refusing_plugin", mod)
    ep = md.EntryPoint(name="refuses", value="_rvcfast_refusing_plugin:Refuses", group=registry.ENTRY_POINT_GROUP)
    real = registry._iter_entry_points

    def patched():
        yield from real()
        yield ep, "refusing-plugin 2.0", False

    monkeypatch.setattr(registry, "_iter_entry_points", patched)


def test_a_plugins_value_error_is_a_parameter_error_naming_it(refusing_plugin):
    with pytest.raises(ParameterError, match=r"'refuses' from refusing-plugin 2\.0.*threshold=7.*must be in \(0, 1\)"):
        get_f0_extractor("refuses", device="cpu", threshold=7)
    with pytest.raises(ParameterError, match="'refuses' from refusing-plugin 2.0.*TypeError"):
        get_f0_extractor("refuses", mode="type")
    with pytest.raises(ParameterError, match="'refuses'"):  # also as a hybrid member
        get_f0_extractor("hybrid:dio+refuses", threshold=7)


def test_a_plugin_that_fails_to_start_is_backend_unavailable(refusing_plugin):
    with pytest.raises(BackendUnavailableError, match="'refuses' from refusing-plugin 2.0.*failed to start.*busy"):
        get_f0_extractor("refuses", mode="crash")


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["harvest", "dio", "pm"])
@pytest.mark.parametrize("device", ["bogus", None, 3.5])
def test_a_bad_device_option_is_a_parameter_error(name, device):
    if name == "pm":
        pytest.importorskip("parselmouth")
    with pytest.raises(ParameterError, match=rf"{name} F0 option device"):
        get_f0_extractor(name, device=device)


def test_stonemask_zeroes_f0_at_or_below_40_hz():
    """The fact behind the harvest/dio floor: WORLD's StoneMask returns 0 for any F0 <= 40 Hz."""
    import pyworld

    t = np.arange(2 * SR) / SR
    x = sum(0.3 / k * np.sin(2 * np.pi * 39.0 * k * t) for k in range(1, 20))
    frames = np.arange(0, 2.0, 0.01)
    for f in (20.0, 39.0, 40.0):
        assert not pyworld.stonemask(x, np.full(len(frames), f), frames, SR).any()
    assert pyworld.stonemask(x, np.full(len(frames), 45.0), frames, SR).all()


@pytest.mark.parametrize("cls", [HarvestExtractor, DioExtractor])
def test_world_f0_min_below_the_stonemask_floor_is_refused(cls):
    # below a few Hz harvest took minutes per second of audio and dio called everything unvoiced
    for f0_min in (0.001, 1, 39.9):
        with pytest.raises(ParameterError, match=rf"{cls.name} F0 option f0_min must be at least 40 Hz"):
            cls(f0_min=f0_min)
    assert cls(f0_min=40).f0_min == 40.0
