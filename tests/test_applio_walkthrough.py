"""What the docs tell a user coming from Applio, checked against the code.

docs/differences.md maps Applio's ``convert_audio`` keywords to rvcfast's names and says how
Applio's export and defaults differ; docs/getting-started.md shows how to use the weights of
an Applio install; docs/parameters.md lists the F0 backends and describes the limiter. Each
test here reads the statement from the page and checks it against what rvcfast does.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import MODEL_SR, one_thread_fixture, tiny_models_fixture  # noqa: F401

import rvcfast
from rvcfast.cli import build_parser, main
from rvcfast.errors import ParameterError
from rvcfast.f0.registry import parse_hybrid
from rvcfast.params import ConversionParams

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: Applio's ``VoiceConverter.convert_audio`` keywords (Applio b9c0ccb, rvc/infer/infer.py) that a
#: user sets: the paths, the conversion settings, and the flags of the optional stages.
APPLIO_KEYWORDS = (
    "pth_path", "index_path", "pitch", "f0_method", "index_rate", "volume_envelope", "protect",
    "hop_length", "split_audio", "f0_autotune", "f0_autotune_strength", "proposed_pitch",
    "proposed_pitch_threshold", "embedder_model", "embedder_model_custom", "clean_audio",
    "clean_strength", "export_format", "resample_sr", "sid", "formant_shifting", "formant_qfrency",
    "formant_timbre", "post_process",
)  # fmt: skip


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def applio_table() -> list[tuple[str, str]]:
    """The rows of differences.md's "Applio's options by name" table: (Applio cell, rvcfast cell)."""
    text = page("differences.md")
    body = text[text.index("## Applio's options by name") :]
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 2 and not re.fullmatch(r"[\s:-]*", cells[0]) and cells[0] != "Applio":
            rows.append((cells[0], cells[1]))
    return rows


def test_every_applio_keyword_is_in_the_names_table():
    named = {k for applio, _ in applio_table() for k in re.findall(r"`([a-z_0-9]+)`", applio)}
    missing = [k for k in APPLIO_KEYWORDS if k not in named]
    assert not missing, f"differences.md does not say where these Applio keywords went: {missing}"


def test_names_table_points_to_real_parameters_and_flags():
    fields = {f for f in ConversionParams.__dataclass_fields__}
    convert = build_parser()._rvcfast_subparsers.choices["convert"]  # type: ignore[attr-defined]
    flags = {s for a in convert._actions for s in a.option_strings}
    for applio, ours in applio_table():
        for name in re.findall(r"`([a-z_0-9]+)=", ours):  # `autotune=strength`
            assert name in fields or name in ("f0", "encoder", "index"), (applio, name)
        for flag in re.findall(r"`(--[a-z0-9-]+)", ours):
            assert flag in flags, f"{applio}: the table names {flag}, which rvcfast convert does not have"
    table = dict(applio_table())
    # the renamed ones, independently of the page's wording
    assert "`rms_mix_rate`" in table["`volume_envelope`"]
    assert "`speaker`" in table["`sid`"]
    assert "`output_sample_rate`" in table["`resample_sr`"]


@pytest.mark.parametrize("keyword", ["volume_envelope", "split_audio", "sid", "hop_length", "f0_autotune", "clean_strength"])
def test_applio_keywords_are_refused_by_name(keyword):
    """The page: an Applio keyword is an unknown parameter, never silently ignored."""
    with pytest.raises(ParameterError, match=f"unknown conversion parameter '{keyword}'"):
        ConversionParams.build(None, **{keyword: 1})


def test_parameters_page_lists_every_built_in_f0_backend():
    row = next(line for line in page("parameters.md").splitlines() if line.startswith("| `f0` |"))
    built_in = [n for n, source in rvcfast.available_f0_extractors().items() if source == "rvcfast (built-in)"]
    assert "swift" in built_in
    missing = [n for n in built_in if f"`{n}`" not in row]
    assert not missing, f"parameters.md's f0 row leaves out {missing}"
    assert "`hybrid[a+b]`" in row  # Applio's spelling, which the registry takes:
    assert parse_hybrid("hybrid[rmvpe+fcpe]") == ["rmvpe", "fcpe"]


def test_f0_workers_lists_every_cpu_bound_built_in():
    text = " ".join(page("parameters.md").split())
    listed = re.search(r"declare `cpu_bound`: ([a-z, -]+)\)", text)
    assert listed, "parameters.md no longer says which backends run in f0_workers"
    names = {n.strip() for n in listed.group(1).split(",")}
    cpu_bound = {
        ep.name
        for ep in md.entry_points(group="rvcfast.f0_extractors")
        if ep.dist is not None and ep.dist.name == "rvcfast" and getattr(ep.load(), "cpu_bound", False)
    }
    assert names == cpu_bound


def test_limiter_fallback_makes_a_quiet_tone_louder():
    """parameters.md: +9.75 dB at the -6 dB fallback on tones below -10 dBFS, never past full scale."""
    pytest.importorskip("pedalboard")
    from rvcfast.effects import apply_effects

    rate = 40000
    t = np.arange(2 * rate) / rate
    for amplitude in (0.05, 0.1):
        tone = (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        out = apply_effects(tone, rate, {"limiter": {}})[rate:]  # after the attack
        gain_db = 20 * np.log10(np.abs(out).max() / amplitude)
        assert gain_db == pytest.approx(9.75, abs=0.1)
    loud = (0.9 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    assert np.abs(apply_effects(loud, rate, {"limiter": {"threshold": -20}})).max() <= 1.0


def _applio_install(tiny_models, tmp_path: Path) -> Path:
    """An Applio install's layout under ``tmp_path/Applio`` holding the tiny models, plus
    ``voice.pth`` and a 1 s ``input.wav`` in ``tmp_path``; the install's folder."""
    applio = tmp_path / "Applio"
    (applio / "rvc/models/predictors").mkdir(parents=True)
    (applio / "rvc/models/embedders").mkdir(parents=True)
    (applio / "rvc/models/embedders/contentvec").symlink_to(tiny_models.encoder)
    (applio / "rvc/models/predictors/rmvpe.pt").symlink_to(tiny_models.rmvpe)
    (tmp_path / "voice.pth").symlink_to(tiny_models.voice)
    sf.write(tmp_path / "input.wav", 0.1 * np.random.default_rng(0).standard_normal(16000), 16000)
    return applio


def test_applio_install_recipe_runs(tiny_models, tmp_path, monkeypatch):
    """getting-started.md: the command that uses an Applio install's contentvec folder and rmvpe.pt."""
    text = page("getting-started.md")
    block = re.search(r"```bash\n(rvcfast convert [^`]*--encoder ~/Applio[^`]*)```", text)
    assert block, "getting-started.md no longer shows the Applio command"
    applio = _applio_install(tiny_models, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RVCFAST_HOME", str(tmp_path / "empty-home"))  # nothing found by itself
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    argv = shlex.split(block.group(1).replace("\\\n", " ").replace("~/Applio", str(applio)))
    assert main(argv[1:] + ["-q", "--no-noise"]) == 0
    assert sf.info(str(tmp_path / "converted" / "input.wav")).samplerate == MODEL_SR


def test_export_rate_and_names_as_in_differences(tiny_models, tmp_path):
    """differences.md: a FLAC is written at the model's rate (Applio: the nearest standard rate,
    44.1 kHz for 40 kHz), ``output_sample_rate=44100`` gives Applio's rate, and
    ``name_template="{stem}_output"`` Applio's names."""
    conv = tiny_models.converter()
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(16000), 16000)
    (plain,) = conv.convert_batch(audio, tmp_path / "a", format="flac", noise=False)
    assert plain.ok and sf.info(str(plain.output_path)).samplerate == MODEL_SR
    (applio,) = conv.convert_batch(
        audio, tmp_path / "b", format="flac", name_template="{stem}_output", output_sample_rate=44100, noise=False
    )
    assert applio.ok and sf.info(str(applio.output_path)).samplerate == 44100
    assert Path(applio.output_path).name.endswith("_output.flac")


def test_v1_output_layer_above_the_layer_count_is_the_last_layer(tmp_path):
    """parameters.md: Applio's 12 on an encoder with fewer layers means its last one (fairseq's rule)."""
    from helpers import TINY_CONV, TINY_VOICE

    from rvcfast.testing import save_random_hubert, save_random_voice_model

    voice = save_random_voice_model(tmp_path / "v1.pth", "v1", 40000, True, seed=11, **TINY_VOICE)
    encoder = save_random_hubert(
        tmp_path / "enc", "hf", layers=2, hidden=768, heads=12, ffn=64, conv_layers=TINY_CONV,
        conv_pos=16, conv_pos_groups=16, final_dim=256, seed=12,
    )  # fmt: skip
    conv = rvcfast.Converter.from_pretrained(voice, encoder=encoder, f0="harvest", device="cpu")
    rng = np.random.default_rng(2)
    x = 0.1 * rng.standard_normal(16000)
    out = {k: conv.convert(x, 16000, v1_output_layer=k, noise=False).audio for k in (1, 2, 12)}
    assert np.array_equal(out[12], out[2])
    assert not np.array_equal(out[1], out[2])


def test_rvcfast_home_at_an_applio_install_runs(tiny_models, tmp_path, monkeypatch):
    """getting-started.md: ``export RVCFAST_HOME=~/Applio`` and the plain command find Applio's
    rmvpe.pt and its contentvec folder (before, only files directly in RVCFAST_HOME counted)."""
    text = page("getting-started.md")
    block = re.search(r"```bash\nexport RVCFAST_HOME=~/Applio[^\n]*\n(rvcfast convert [^\n]*)\n```", text)
    assert block, "getting-started.md no longer shows RVCFAST_HOME pointing at an Applio install"
    applio = _applio_install(tiny_models, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RVCFAST_HOME", str(applio))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    assert main(shlex.split(block.group(1))[1:] + ["-q", "--no-noise"]) == 0
    assert sf.info(str(tmp_path / "converted" / "input.wav")).samplerate == MODEL_SR
