"""Content encoder on unusual inputs: bad arguments, silence, edge lengths, threads, mixed-length batches.

Tolerances: ``BATCH_TOL`` is the float32 noise of the same network run on other shapes
(``tests/test_encoder.py``); golden-model checks use ``../shared/golden`` (README §3,
values up to ~5, reference float32 noise ~6e-6).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rvcfast.errors import AudioError, ModelLoadError, ParameterError
from rvcfast.models.encoder import HubertConfig, HubertEncoder, load_encoder, parse_conv_layers
from rvcfast.pipeline import n_feature_frames, segment_features
from rvcfast.testing import random_hubert_state_dict, save_random_hubert

BATCH_TOL = 1e-4
TINY_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2
# HuBERT-base's structure (GroupNorm on the first conv, post-LN, even positional kernel), narrow
TINY = dict(layers=2, hidden=64, heads=4, ffn=96, conv_layers=TINY_CONV, conv_pos=16, conv_pos_groups=4, final_dim=16)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_hubert(tmp_path_factory.mktemp("enc") / "tiny.pt", "fairseq", seed=7, **TINY)


@pytest.fixture(scope="module")
def model(tiny: Path) -> HubertEncoder:
    return load_encoder(tiny)


def _speechlike(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return 0.3 * torch.sin(2 * torch.pi * 140 * t) * torch.sin(2 * torch.pi * 3 * t) + 0.02 * torch.randn(n, generator=gen)


# ---------------------------------------------------------------- argument checks


def test_deeply_nested_conv_spec_is_a_value_error(tmp_path: Path) -> None:
    """A bracket bomb in cfg.model.conv_feature_layers was a raw RecursionError out of load_encoder."""
    bomb = "[" * 400 + "]" * 400
    with pytest.raises(ValueError, match="nested"):
        parse_conv_layers(bomb)
    # the spec fairseq writes still parses, and moderate nesting is fine
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")[-1] == (512, 2, 2)
    assert parse_conv_layers("[((((32)), 10, (5)))]") == ((32, 10, 5),)
    config = HubertConfig(
        conv_layers=tuple(TINY_CONV), hidden_size=64, num_layers=1, num_heads=4, ffn_dim=96, conv_pos=16, conv_pos_groups=4
    )
    path = tmp_path / "bomb.pt"
    cfg = {"conv_feature_layers": bomb, "encoder_layers": 1, "encoder_embed_dim": 64, "encoder_attention_heads": 4,
           "encoder_ffn_embed_dim": 96, "conv_pos": 16, "conv_pos_groups": 4}
    torch.save({"model": random_hubert_state_dict(config, "fairseq"), "cfg": {"model": cfg}}, path)
    with pytest.raises(ModelLoadError, match="conv_feature_layers"):
        load_encoder(path)


@pytest.mark.parametrize("bad", ["x", 1.5, [1], True, -1, float("nan")])
def test_output_layer_must_be_a_non_negative_int(model: HubertEncoder, bad: object) -> None:
    """A string was a raw ValueError, a list a raw TypeError, and 1.5 silently meant layer 1."""
    with pytest.raises(ParameterError, match="output_layer"):
        model.encode(torch.zeros(1, 1000), output_layer=bad)  # type: ignore[arg-type]


def test_output_layer_accepts_integer_types(model: HubertEncoder) -> None:
    x = _speechlike(2000)[None]
    expected = model.encode(x, output_layer=1)
    assert torch.equal(model.encode(x, output_layer=np.int64(1)), expected)  # type: ignore[arg-type]
    assert torch.equal(model.encode(x, output_layer=torch.tensor(1)), expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [[4000, 2500.7], [4000, float("nan")], ["4000", "2500"], [4000, None], [True, True]])
def test_lengths_must_be_whole_numbers(model: HubertEncoder, bad: object) -> None:
    """NaN, text or None were raw ValueError/RuntimeError; 2500.7 was silently cut to 2500."""
    with pytest.raises(ParameterError, match="lengths"):
        model.encode(torch.zeros(2, 4000), lengths=bad)  # type: ignore[arg-type]


def test_lengths_of_integral_type_or_value(model: HubertEncoder) -> None:
    x = torch.zeros(2, 4000)
    x[0] = _speechlike(4000)
    x[1, :2500] = _speechlike(2500, 1)
    expected = model.encode(x, lengths=[4000, 2500])
    assert torch.equal(model.encode(x, lengths=np.array([4000, 2500])), expected)
    assert torch.equal(model.encode(x, lengths=[4000.0, 2500.0]), expected)  # type: ignore[list-item]
    with pytest.raises(ParameterError, match="2 entries for a batch of 3"):
        model.encode(torch.zeros(3, 4000), lengths=[4000, 2500])


def test_samples_by_channels_audio_is_named(model: HubertEncoder) -> None:
    """Stereo [N, 2] audio said only 'audio of 2 samples is too short'."""
    with pytest.raises(AudioError, match=r"\[samples, channels\]"):
        model.encode(torch.zeros(48000, 2))
    with pytest.raises(AudioError, match=r"399 samples is too short.*\(1, 399\)"):
        model.encode(torch.zeros(1, 399))


# ---------------------------------------------------------------- numerics and lengths (invariants)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silence_and_edge_lengths(tiny: Path, dtype: torch.dtype) -> None:
    """All-zero input (GroupNorm of a constant) stays finite; 400 samples give one frame, 719 still one."""
    m = load_encoder(tiny, dtype=dtype)
    for n, frames in ((400, 1), (719, 1), (720, 2), (16079, 49), (16080, 50)):
        out = m.encode(torch.zeros(1, n))
        assert out.shape == (1, frames, 64) and torch.isfinite(out.float()).all()
    out = m.encode(torch.zeros(3, 16001), lengths=[16001, 400, 5555], output_layer=1, final_proj=True)
    assert torch.isfinite(out.float()).all() and not out[1, 1:].any()
    # silence batched next to speech equals silence alone
    batch = torch.zeros(2, 16001)
    batch[0] = _speechlike(16001)
    both = m.encode(batch, lengths=[16001, 8000])
    alone = m.encode(torch.zeros(1, 8000))[0]
    tol = BATCH_TOL if dtype == torch.float32 else 0.1  # bf16: a few roundings of values up to ~4
    assert float((both[1, : alone.shape[0]].float() - alone.float()).abs().max()) <= tol


def test_concurrent_encodes_match(model: HubertEncoder) -> None:
    """One encoder shared by threads (the process-wide cache) gives each caller its own result."""
    inputs = [_speechlike(6000 + 997 * k, k)[None] for k in range(4)]
    expected = [model.encode(x) for x in inputs]
    results: dict[int, list[torch.Tensor]] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = [model.encode(inputs[(k + j) % 4]) for j in range(4)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, outs in results.items():
        for j, out in enumerate(outs):
            assert torch.equal(out, expected[(k + j) % 4])


@pytest.mark.golden
def test_segment_features_mixed_lengths_equal_each_alone(golden: Path) -> None:
    """The engine's encoder step: one padded, masked batch gives every segment its solo features."""
    m = load_encoder(golden / "models" / "contentvec_hf")
    audio, sr = sf.read(golden / "audio" / "probe_16k.wav", dtype="float64")
    assert sr == 16000
    segs = [audio, audio[:30001], audio[7:12345], audio[:32000]]
    for version, layer, dim in (("v2", None, 768), ("v1", 9, 256)):
        feats = segment_features(m, segs, version, torch.device("cpu"), torch.float32)
        for seg, f in zip(segs, feats):
            assert f.shape == (n_feature_frames(seg.shape[0]), dim)
            solo = m.encode(torch.from_numpy(seg.astype(np.float32))[None], output_layer=layer, final_proj=version == "v1")[0]
            assert float((f - solo).abs().max()) <= BATCH_TOL
