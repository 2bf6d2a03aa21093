"""The entry-point registry of F0 extractors, hybrid specs, and a real third-party plugin."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from rvcfast.errors import BackendUnavailableError, ParameterError
from rvcfast.f0 import registry
from rvcfast.f0.hybrid import HybridExtractor
from rvcfast.f0.registry import available_f0_extractors, get_f0_extractor, parse_hybrid
from rvcfast.protocols import F0Extractor

BUILTINS = ("rmvpe", "crepe", "crepe-tiny", "fcpe", "harvest", "dio", "pm", "swift")
PLUGIN_DIR = Path(__file__).resolve().parent / "plugins" / "rvcfast-f0-example"
PLUGIN_DIST = "rvcfast-f0-example"
SR = 16000


def _plugin_source_version() -> str:
    text = (PLUGIN_DIR / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE).group(1)


def ensure_example_plugin() -> str:
    """Install tests/plugins/rvcfast-f0-example into this interpreter unless it is there.

    Returns the installed version. Reinstalls when the installed version differs from
    the source's. Usable from other test modules (e.g. an end-to-end Converter test).
    """
    wanted = _plugin_source_version()
    try:
        if md.version(PLUGIN_DIST) == wanted:
            return wanted
    except md.PackageNotFoundError:
        pass
    cmd = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "--no-input", "-q", str(PLUGIN_DIR),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"could not install the example F0 plugin:\n{proc.stdout}\n{proc.stderr}")
    importlib.invalidate_caches()
    return md.version(PLUGIN_DIST)


@pytest.fixture(scope="session")
def example_plugin() -> str:
    """The example plugin distribution, installed (session-wide) if needed; its version."""
    return ensure_example_plugin()


def sine(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- listing ----------------------------------------------------------------------------


def test_lists_builtins_without_importing_them(monkeypatch):
    for mod in [m for m in sys.modules if m.startswith("rvcfast.f0.") and m != "rvcfast.f0.registry"]:
        if mod not in ("rvcfast.f0.base",):
            monkeypatch.delitem(sys.modules, mod)
    names = available_f0_extractors()
    missing = [n for n in BUILTINS if n not in names]
    assert not missing, (
        f"built-in F0 backends {missing} are not registered; is the installed rvcfast metadata stale? "
        "(re-run `pip install -e .`, and delete a stale rvcfast.egg-info in the repo root)"
    )
    for n in BUILTINS:
        assert names[n] == "rvcfast (built-in)"
        assert "built-in" in names[n]
    imported = [m for m in ("rvcfast.f0.rmvpe", "rvcfast.f0.crepe", "rvcfast.f0.fcpe", "rvcfast.f0.world",
                            "rvcfast.f0.pm", "rvcfast.f0.swift") if m in sys.modules]  # fmt: skip
    assert imported == []
    assert list(names) == sorted(names)


def test_unknown_name_lists_available():
    with pytest.raises(BackendUnavailableError) as info:
        get_f0_extractor("no-such-tracker")
    msg = str(info.value)
    assert "no-such-tracker" in msg
    for n in ("harvest", "dio", "pm", "rmvpe"):
        assert n in msg
    assert isinstance(info.value, ImportError)  # BackendUnavailableError is an ImportError too


def test_names_are_case_insensitive_and_options_are_passed():
    e = get_f0_extractor("  HarVest ", filter_radius=0)
    assert isinstance(e, F0Extractor)
    assert e.name == "harvest" and e.filter_radius == 0
    assert get_f0_extractor("DIO").name == "dio"


def test_unknown_option_is_a_parameter_error():
    with pytest.raises(ParameterError, match="filter_radius"):
        get_f0_extractor("dio", filter_radius=3)


def test_non_string_name():
    with pytest.raises(ParameterError):
        get_f0_extractor(3)  # type: ignore[arg-type]


def test_missing_extra_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "parselmouth", None)  # `import parselmouth` now fails
    with pytest.raises(BackendUnavailableError, match=r'pm needs `pip install "rvcfast\[pm\]"`'):
        get_f0_extractor("pm")
    assert "pm" in available_f0_extractors()  # still listed


# --- fake entry points ------------------------------------------------------------------


def _fake(name: str, value: str, source: str = "fake-plugin 1.0", builtin: bool = False):
    return md.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP), source, builtin


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Add fake registrations (list of _fake(...)) next to the real ones."""
    extra: list = []
    real = registry._iter_entry_points

    def patched():
        yield from real()
        yield from extra

    monkeypatch.setattr(registry, "_iter_entry_points", patched)
    return extra


def test_raw_import_error_of_builtin_maps_to_extra(monkeypatch):
    class NeedsTorchfcpe:
        def __init__(self, **options):
            import torchfcpe  # noqa: F401

    mod = types.ModuleType("_rvcfast_fake_fcpe")
    mod.Extractor = NeedsTorchfcpe
    monkeypatch.setitem(sys.modules, "_rvcfast_fake_fcpe", mod)
    monkeypatch.setitem(sys.modules, "torchfcpe", None)
    monkeypatch.setattr(
        registry,
        "_iter_entry_points",
        lambda: iter([_fake("fcpe", "_rvcfast_fake_fcpe:Extractor", "rvcfast (built-in)", True)]),
    )
    with pytest.raises(BackendUnavailableError, match=r'fcpe needs `pip install "rvcfast\[fcpe\]"`'):
        get_f0_extractor("fcpe")


def test_broken_plugin_does_not_break_listing(fake_entry_points):
    fake_entry_points.append(_fake("broken", "_rvcfast_no_such_module_xyz:Tracker"))
    fake_entry_points.append(_fake("not-a-tracker", "builtins:dict"))
    names = available_f0_extractors()
    assert names["broken"] == "fake-plugin 1.0"
    assert all(n in names for n in BUILTINS)
    with pytest.raises(BackendUnavailableError, match="broken.*could not be imported"):
        get_f0_extractor("broken")
    with pytest.raises(BackendUnavailableError, match="not an F0Extractor"):
        get_f0_extractor("not-a-tracker")
    assert get_f0_extractor("dio").name == "dio"  # the others still work


def test_broken_distribution_metadata_is_skipped(monkeypatch):
    class BrokenDist:
        @property
        def metadata(self):
            raise ValueError("corrupt METADATA")

    real = md.distributions
    monkeypatch.setattr(registry.md, "distributions", lambda: [BrokenDist(), *real()])
    assert "harvest" in available_f0_extractors()


def test_builtin_name_wins_over_plugin(fake_entry_points):
    fake_entry_points.append(_fake("harvest", "builtins:dict"))
    assert available_f0_extractors()["harvest"] == "rvcfast (built-in)"
    assert get_f0_extractor("harvest").name == "harvest"


# --- hybrid specs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["hybrid:rmvpe+crepe", "hybrid[rmvpe+crepe]", "HYBRID[RMVPE + Crepe]", " hybrid: rmvpe+crepe "],
)
def test_parse_hybrid_spellings(spec):
    assert parse_hybrid(spec) == ["rmvpe", "crepe"]


def test_parse_hybrid_other_names():
    assert parse_hybrid("rmvpe") is None
    assert parse_hybrid("hybridish") is None
    assert parse_hybrid("hybrid:a+b+c") == ["a", "b", "c"]


@pytest.mark.parametrize("spec", ["hybrid:", "hybrid[]", "hybrid:rmvpe", "hybrid:rmvpe+", "hybrid:dio+dio"])
def test_parse_hybrid_malformed(spec):
    with pytest.raises(ParameterError):
        parse_hybrid(spec)


def test_hybrid_unknown_member():
    with pytest.raises(BackendUnavailableError, match="nosuch") as info:
        get_f0_extractor("hybrid:dio+nosuch")
    assert "harvest" in str(info.value)


@pytest.mark.parametrize("spec", ["hybrid:dio+pm+harvest", "hybrid[DIO+pm+Harvest]"])
def test_hybrid_builds_members(spec):
    h = get_f0_extractor(spec, filter_radius=0, min_voiced=1)
    assert isinstance(h, HybridExtractor) and isinstance(h, F0Extractor)
    assert h.name == "hybrid:dio+pm+harvest"
    assert [b.name for b in h.backends] == ["dio", "pm", "harvest"]
    assert h.backends[2].filter_radius == 0  # shared option, only to members that take it
    assert h.min_voiced == 1


def test_hybrid_per_member_options():
    h = get_f0_extractor("hybrid:harvest+dio", harvest={"filter_radius": 1}, dio={"f0_max": 800.0})
    assert h.backends[0].filter_radius == 1
    assert h.backends[1].f0_max == 800.0
    with pytest.raises(ParameterError, match="accepts"):
        get_f0_extractor("hybrid:harvest+dio", no_such_option=1)
    with pytest.raises(ParameterError):
        get_f0_extractor("hybrid:harvest+dio", dio={"filter_radius": 3})


def test_hybrid_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "parselmouth", None)
    with pytest.raises(BackendUnavailableError, match=r"rvcfast\[pm\]"):
        get_f0_extractor("hybrid:dio+pm")


# --- the example third-party plugin -----------------------------------------------------


def test_plugin_is_listed_with_its_distribution(example_plugin):
    names = available_f0_extractors()
    assert names["example-autocorr"] == f"{PLUGIN_DIST} {example_plugin}"
    assert all(names[n] == "rvcfast (built-in)" for n in BUILTINS)


def test_plugin_tracks_a_sine(example_plugin):
    e = get_f0_extractor("Example-Autocorr", device="cpu")
    assert isinstance(e, F0Extractor)
    assert type(e).__module__ == "rvcfast_f0_example"
    x = sine(200.0)
    f0 = e.extract(x)
    assert f0.shape == (len(x) // 160 + 1,)
    voiced = f0 > 0
    assert voiced.mean() > 0.9
    assert np.median(f0[voiced]) == pytest.approx(200.0, rel=0.01)
    assert [len(a) for a in e.extract_batch([x, x[:1000]])] == [len(f0), 1000 // 160 + 1]


def test_plugin_in_a_hybrid(example_plugin):
    h = get_f0_extractor("hybrid[example-autocorr+dio+pm]")
    f0 = h.extract(sine(200.0))
    assert np.median(f0[f0 > 0]) == pytest.approx(200.0, rel=0.01)


def test_integer_pcm_is_scaled_like_decoded_audio(golden) -> None:
    """``extract(int16)`` is the same audio as the floats ``rvcfast.audio`` decodes it to (it was fed
    to the networks as ±32768: RMVPE agreed with the float input on about half the frames)."""
    from rvcfast.errors import AudioError

    ext = get_f0_extractor("rmvpe", weights=golden / "models" / "rmvpe_reduced.pt")
    t = np.arange(16000) / 16000
    pcm = np.round(0.4 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    np.testing.assert_array_equal(ext.extract(pcm), ext.extract((pcm / 32768.0).astype(np.float32)))
    unsigned = (pcm.astype(np.int32) // 256 + 128).astype(np.uint8)  # 8-bit WAV PCM: centred on 128
    np.testing.assert_array_equal(ext.extract(unsigned), ext.extract(((unsigned - 128.0) / 128).astype(np.float32)))
    with pytest.raises(AudioError, match="numeric audio"):
        ext.extract(np.zeros(1600, dtype=bool))
