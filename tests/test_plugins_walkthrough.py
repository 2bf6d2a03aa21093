"""A plugin author's walkthrough of docs/plugins.md: third-party F0 backends registered through
(fake) entry points, used from the API, the command line and in hybrids, and broken in the
ways a plugin plausibly is. Each test names the defect it guards against."""

from __future__ import annotations

import importlib.metadata as md
import sys
import types
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from helpers import one_thread_fixture, tiny_models_fixture  # noqa: F401

from rvcfast.cli import main
from rvcfast.errors import BackendUnavailableError, ParameterError
from rvcfast.f0 import registry
from rvcfast.f0.registry import build_f0_extractor, check_f0_options, get_f0_extractor

MODULE = "_rvcfast_walkthrough_plugin"
SOURCE = "rvcfast-f0-walkthrough 0.3"


class ToneTracker:
    """A plugin tracker: a fixed pitch where the input is not silent; records its options."""

    name = "tone-like"
    sample_rate = 16000
    hop_length = 160
    built: list[dict[str, Any]] = []

    def __init__(self, device: Any = None, dtype: Any = None, *, threshold: float = 0.1) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be within (0, 1), got {threshold}")
        self.threshold = threshold
        ToneTracker.built.append({"device": device, "threshold": threshold})

    def extract(self, audio16k: Any) -> np.ndarray:
        x = np.asarray(audio16k, dtype=np.float64).reshape(-1)
        return np.full(len(x) // 160 + 1, 200.0 if np.abs(x).max(initial=0.0) > 0 else 0.0)

    def extract_batch(self, audios: Any) -> list[np.ndarray]:
        return [self.extract(a) for a in audios]


class NoDeviceTracker(ToneTracker):
    """A plugin whose constructor forgot the ``device``/``dtype`` every front end passes."""

    name = "no-device"

    def __init__(self) -> None:
        super().__init__()


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> list:
    """The plugin module in ``sys.modules`` and its entry points next to the real ones; the list
    takes more ``(name, "module:attr")`` registrations."""
    mod = types.ModuleType(MODULE)
    mod.ToneTracker = ToneTracker
    mod.NoDeviceTracker = NoDeviceTracker
    mod.READY = ToneTracker(threshold=0.4)
    monkeypatch.setitem(sys.modules, MODULE, mod)
    ToneTracker.built.clear()
    extra = [("tone-like", f"{MODULE}:ToneTracker"), ("no-device", f"{MODULE}:NoDeviceTracker")]
    real = registry._iter_entry_points

    def patched():
        yield from real()
        for name, value in extra:
            yield md.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP), SOURCE, False

    monkeypatch.setattr(registry, "_iter_entry_points", patched)
    return extra


# --- hybrid member options for a plugin whose name has a hyphen -------------------------


def test_member_options_reach_a_hyphenated_plugin(plugins):
    """docs/plugins.md: an option named after a hybrid member goes to that member. A command-line
    key must be a Python name, so ``tone_like`` has to reach ``tone-like`` (it was refused: "no
    member of 'hybrid:dio+tone-like' accepts option(s) tone_like")."""
    check_f0_options("hybrid:dio+tone-like", {"tone_like": {"threshold": 0.3}})
    h = get_f0_extractor("hybrid:dio+tone-like", tone_like={"threshold": 0.3})
    assert h.backends[1].threshold == 0.3
    assert h.backends[0].name == "dio"
    with pytest.raises(ParameterError, match="hybrid member 'tone-like' does not accept option.* treshold"):
        check_f0_options("hybrid:dio+tone-like", {"Tone_Like": {"treshold": 0.3}})


def test_member_options_for_a_plugin_on_the_command_line(plugins, tmp_path):
    wav = tmp_path / "in.wav"
    t = np.arange(4800) / 16000
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 200 * t), 16000)
    rc = main([
        "f0", str(wav), "-o", str(tmp_path / "f0"), "--method", "hybrid:dio+tone-like",
        "--f0-option", "tone_like={'threshold': 0.3}", "--device", "cpu", "-q",
    ])  # fmt: skip
    assert rc == 0
    assert [b["threshold"] for b in ToneTracker.built] == [0.3]
    rows = (tmp_path / "f0" / "in.csv").read_text().splitlines()
    assert rows[0] == "time,f0" and len(rows) == 1 + 4800 // 160 + 1


# --- an entry point naming a module that is not there -----------------------------------


def test_entry_point_naming_a_missing_module(plugins):
    """A misspelt entry point (or a package installed without its module) was reported as "needs
    module 'x' ... Install that package's dependencies": x is the plugin's own module."""
    plugins.append(("typo", "_rvcfast_walkthrough_plugn:ToneTracker"))
    plugins.append(("typo-sub", f"{MODULE}.sub:ToneTracker"))
    for name in ("typo", "typo-sub"):
        with pytest.raises(BackendUnavailableError) as info:
            get_f0_extractor(name, device="cpu")
        msg = str(info.value)
        assert f"'{name}' from {SOURCE}" in msg
        assert "entry point" in msg and "reinstall" in msg
        assert "dependencies" not in msg
    assert get_f0_extractor("tone-like").name == "tone-like"  # the others still work


def test_missing_dependency_of_a_plugin_is_still_named(plugins, monkeypatch):
    def needs_dep(**options):
        import _rvcfast_walkthrough_missing_dep  # noqa: F401

    monkeypatch.setattr(sys.modules[MODULE], "needs_dep", needs_dep, raising=False)
    plugins.append(("needs-dep", f"{MODULE}:needs_dep"))
    with pytest.raises(BackendUnavailableError, match="needs module '_rvcfast_walkthrough_missing_dep'"):
        get_f0_extractor("needs-dep")


# --- what every front end passes --------------------------------------------------------


def test_ready_made_object_works_from_the_front_ends(plugins):
    """A registered ready-made object could not be used alone from the converter, the command
    line or the server (they always pass device=: "takes no options, got ['device']"), only
    inside a hybrid."""
    plugins.append(("ready", f"{MODULE}:READY"))
    ready = sys.modules[MODULE].READY
    assert build_f0_extractor("ready", device="cpu", dtype="float32") is ready
    assert get_f0_extractor("hybrid:dio+ready").backends[1] is ready
    with pytest.raises(ParameterError, match=f"'ready' from {SOURCE}.*takes no options, got threshold"):
        get_f0_extractor("ready", device="cpu", threshold=0.2)


def test_factory_without_device_says_what_to_add(plugins):
    with pytest.raises(ParameterError) as info:
        build_f0_extractor("no-device", device="cpu")
    msg = str(info.value)
    assert f"'no-device' from {SOURCE}" in msg
    assert "always pass device=" in msg and "device=None, dtype=None" in msg


# --- f0 weights given to a backend that takes none --------------------------------------


def test_f0_weights_for_a_backend_without_weights(plugins, tmp_path):
    """``--f0-weights`` with a plugin that takes no weights said "does not accept option(s)
    weights", an option the user never typed."""
    weights = tmp_path / "rmvpe.pt"
    with pytest.raises(ParameterError) as info:
        build_f0_extractor("tone-like", weights=weights, device="cpu")
    msg = str(info.value)
    assert "--f0-weights" in msg and "'tone-like'" in msg and SOURCE in msg
    assert str(tmp_path) not in msg  # the server answers this to clients: no server paths
    assert ToneTracker.built == []  # refused before the tracker is built


def test_option_values_refused_by_a_plugin_name_it(plugins):
    with pytest.raises(ParameterError, match=f"'tone-like' from {SOURCE} refused its options threshold=2"):
        build_f0_extractor("tone-like", options={"threshold": 2}, device="cpu")
    assert build_f0_extractor("tone-like", options={"threshold": 0.2}, device="cpu").threshold == 0.2



# --- names that are not used ------------------------------------------------------------


def test_ignored_registrations_say_why(plugins):
    """A plugin registered under a built-in's name (or 'hybrid...') was dropped without a word:
    ``rvcfast backends`` listed the built-in and the author could not tell why theirs never ran."""
    plugins.extend([("Harvest", f"{MODULE}:ToneTracker"), ("hybrid:x", f"{MODULE}:ToneTracker")])
    plugins.append(("tone-like", f"{MODULE}:NoDeviceTracker"))  # a second registration of a plugin's name
    ignored = registry.ignored_f0_registrations()
    assert ("harvest", SOURCE, "the built-in backend of that name wins") in ignored
    assert ("hybrid:x", SOURCE, "names starting with 'hybrid' are reserved for combinations") in ignored
    assert ("tone-like", SOURCE, f"{SOURCE} registers it too and wins") in ignored
    assert registry.available_f0_extractors()["harvest"] == "rvcfast (built-in)"
    assert get_f0_extractor("tone-like").name == "tone-like"  # the first registration is the one used


# --- a plugin that exits ----------------------------------------------------------------


def test_a_plugin_calling_sys_exit_does_not_end_the_process(plugins, monkeypatch, tmp_path):
    """A plugin module (or constructor) calling ``sys.exit("needs CUDA")`` ended the command with
    its words only, naming no backend, and stopped the whole server on one request's ``f0``."""
    (tmp_path / "_rvcfast_walkthrough_exits.py").write_text('raise SystemExit("this tracker needs CUDA")\n')
    monkeypatch.syspath_prepend(str(tmp_path))

    def exits_on_start(**options):
        sys.exit("this tracker needs CUDA")

    monkeypatch.setattr(sys.modules[MODULE], "exits_on_start", exits_on_start, raising=False)
    plugins.append(("exits-on-import", "_rvcfast_walkthrough_exits:Tracker"))
    plugins.append(("exits-on-start", f"{MODULE}:exits_on_start"))
    for name, verb in (("exits-on-import", "load"), ("exits-on-start", "start")):
        with pytest.raises(BackendUnavailableError) as info:
            build_f0_extractor(name, device="cpu")
        msg = str(info.value)
        assert f"'{name}' from {SOURCE}" in msg and f"failed to {verb}: SystemExit: this tracker needs CUDA" in msg
    assert get_f0_extractor("dio").name == "dio"


# --- what a plugin returns or does during a conversion ------------------------------------


class GradTensorTracker(ToneTracker):
    """A torch tracker that forgot ``.detach().numpy()``: its track still requires grad."""

    name = "grad-tensor"

    def extract(self, audio16k: Any) -> Any:
        import torch

        return torch.tensor(super().extract(audio16k), requires_grad=True)


class ExitsInExtract(ToneTracker):
    name = "exits-in-extract"

    def extract(self, audio16k: Any) -> np.ndarray:
        sys.exit("no GPU here")


class NaNTracker(ToneTracker):
    name = "nan-track"

    def extract(self, audio16k: Any) -> np.ndarray:
        track = super().extract(audio16k)
        track[3] = np.nan
        return track


def _two_wavs(folder) -> list:
    from helpers import write_tone

    return [write_tone(folder, "a.wav"), write_tone(folder, "b.wav", freq=220.0)]


def test_a_grad_tensor_track_fails_each_input_and_the_batch_goes_on(tiny_models, tmp_path):
    """A track that requires grad raised torch's RuntimeError past the track check and ended the
    whole batch ('1 of 1 file(s) failed' for 2 inputs); now each input fails with a message saying
    to return a numpy array, and the batch reports both."""
    conv = tiny_models.converter(f0=GradTensorTracker())
    results = conv.convert_batch(_two_wavs(tmp_path / "in"), out_dir=tmp_path / "out")
    assert len(results) == 2 and all(not r.ok for r in results)
    assert all("'grad-tensor'" in str(r.error) and "numpy array" in str(r.error) for r in results)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_plugin_calling_sys_exit_in_extract_fails_that_input_only(tiny_models, tmp_path):
    """sys.exit() inside extract ended the command (and would stop a server) naming nothing."""
    conv = tiny_models.converter(f0=ExitsInExtract())
    results = conv.convert_batch(_two_wavs(tmp_path / "in"), out_dir=tmp_path / "out")
    assert all(not r.ok and "'exits-in-extract' called sys.exit('no GPU here')" in str(r.error) for r in results)
    good = tiny_models.converter().convert_batch(_two_wavs(tmp_path / "in2"), out_dir=tmp_path / "out2")
    assert all(r.ok for r in good)  # the process and other backends go on


def test_the_f0_command_checks_a_plugins_track(plugins, tmp_path, capsys):
    """``rvcfast f0 --method <plugin>`` wrote a track holding NaN without a word."""
    sys.modules[MODULE].NaNTracker = NaNTracker
    plugins.append(("nan-track", f"{MODULE}:NaNTracker"))
    wav = _two_wavs(tmp_path / "in")[0]
    assert main(["f0", str(wav), "--method", "nan-track", "-o", str(tmp_path / "tracks")]) != 0
    err = capsys.readouterr().err
    assert "a.wav" in err and "'nan-track'" in err and "NaN" in err
    assert not (tmp_path / "tracks").exists() or not any((tmp_path / "tracks").iterdir())


def test_backends_lists_the_ignored_registrations(plugins, capsys):
    plugins.append(("Harvest", f"{MODULE}:ToneTracker"))
    assert main(["backends"]) == 0
    assert f"ignored: 'harvest' from {SOURCE} (the built-in backend of that name wins)" in capsys.readouterr().out


def test_the_server_gives_its_rmvpe_weights_to_rmvpe_members_only() -> None:
    """The server handed --f0-weights to any per-request backend whose name contained 'rmvpe'."""
    from rvcfast.serve.state import _has_rmvpe

    assert _has_rmvpe("rmvpe") and _has_rmvpe("hybrid:rmvpe+pm") and _has_rmvpe("hybrid:pm+rmvpe")
    assert not _has_rmvpe("rmvpe-lite") and not _has_rmvpe("hybrid:rmvpe-lite+pm") and not _has_rmvpe("crepe")


class FailsInPool(ToneTracker):
    """A pure-CPU tracker run in the batch's F0 process pool, failing with a plain exception."""

    name = "fails-in-pool"
    cpu_bound = True

    def extract(self, audio16k: Any) -> np.ndarray:
        raise TypeError("boom")


def test_an_error_from_the_f0_process_pool_names_the_backend(tiny_models, tmp_path):
    """``F0 extraction failed: TypeError: ...`` named no backend for a cpu_bound plugin."""
    conv = tiny_models.converter(f0=FailsInPool())
    results = conv.convert_batch(_two_wavs(tmp_path / "in"), out_dir=tmp_path / "out", f0_workers=1)
    assert all(not r.ok and "backend 'fails-in-pool'" in str(r.error) and "TypeError: boom" in str(r.error) for r in results)


def test_a_plugin_refused_for_a_request_is_a_422_naming_the_f0_field(plugins, tiny_models, tmp_path):
    """A per-request ``f0`` whose plugin refuses to be built (here: a factory without the
    ``device=`` every front end passes) was a 422 without ``"parameter"``; now it names ``f0``."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from serve_helpers import run_in_process

    from rvcfast.serve import create_app

    wav = _two_wavs(tmp_path / "in")[0]
    app = create_app(voices=[tiny_models.voice], encoder=tiny_models.encoder, f0_weights=tiny_models.rmvpe, device="cpu",
                     threads=1, jobs_dir=tmp_path / "spool")
    state = app.state.rvcfast

    async def body(client: Any) -> Any:
        return await client.post("/v1/convert", params={"voice": tiny_models.voice.stem, "f0": "no-device"},
                                 content=wav.read_bytes(), headers={"content-type": "audio/wav"})

    try:
        r = run_in_process(app, body, 120)
    finally:
        state.close()
    assert r.status_code == 422 and r.json()["parameter"] == "f0", r.text
    assert "'no-device'" in r.json()["error"] and "device=" in r.json()["error"]


def test_f0_weights_for_a_backend_without_them_is_a_usage_error_before_loading(plugins, tiny_models, tmp_path, capsys, monkeypatch):
    """``--f0 <plugin> --f0-weights rmvpe.pt`` was found only when the backend was built: after
    the voice had loaded, and for ``rvcfast serve`` after it had started listening. Every
    command now refuses it with its arguments (status 2, before any model is loaded)."""
    from helpers import no_loading_fixture

    no_loading_fixture.__wrapped__(monkeypatch)  # loading a model fails the test
    wav = _two_wavs(tmp_path / "in")[0]
    weights = ["--f0-weights", str(tiny_models.rmvpe)]
    commands = [
        ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--f0", "tone-like", *weights],
        ["convert", str(tiny_models.voice), str(wav), "-o", str(tmp_path / "out"), "--f0", "hybrid:harvest+dio", *weights],
        ["f0", str(wav), "--method", "harvest", "-o", str(tmp_path / "f0"), *weights],
        ["serve", str(tiny_models.voice), "--port", "0", "--f0", "tone-like", *weights],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "--f0-weights:" in err and ("takes no weights file" in err or "has no rmvpe member" in err), err
        assert str(tiny_models.rmvpe) not in err
