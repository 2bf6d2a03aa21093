"""How to test an rvcfast F0 plugin: the protocol, the frame layout, accuracy, and the registry.

Run with ``python -m pytest examples/f0_plugin/tests``. The plugin does not need to be
installed for the first tests (they import it from the source folder); the registry
test runs only when the package is installed.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the plugin's source folder

from rvcfast_f0_yin import YinExtractor  # noqa: E402

SR = 16000


def tone(hz: float, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return 0.4 * np.sin(2 * np.pi * hz * t) + 0.2 * np.sin(4 * np.pi * hz * t)


def test_satisfies_the_protocol():
    rvcfast = pytest.importorskip("rvcfast")
    ext = YinExtractor(device="cpu")
    assert isinstance(ext, rvcfast.F0Extractor)  # runtime check of the attribute/method names
    assert ext.sample_rate == 16000 and ext.hop_length == 160  # rvcfast requires exactly these


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 8000, 12345])
def test_frame_count(n):
    f0 = YinExtractor().extract(np.zeros(n))
    assert f0.shape == (n // 160 + 1,)  # one frame per 10 ms, frame i centred on sample 160*i
    assert not f0.any()  # silence is unvoiced: 0, never NaN


@pytest.mark.parametrize("hz", [82.0, 220.0, 440.0, 880.0])
def test_tracks_a_tone(hz):
    f0 = YinExtractor().extract(tone(hz))
    inner = f0[5:-5]  # edge frames see the zero padding
    assert (inner > 0).all()
    assert np.median(inner) == pytest.approx(hz, rel=0.005)


def test_batch_equals_single():
    ext = YinExtractor()
    items = [tone(150.0, 0.3), tone(300.0, 0.2)]
    for batched, item in zip(ext.extract_batch(items), items):
        np.testing.assert_array_equal(batched, ext.extract(item))


def test_options_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        YinExtractor(threshold=2.0)


def test_registered_with_rvcfast():
    rvcfast = pytest.importorskip("rvcfast")
    try:
        md.distribution("rvcfast-f0-yin")
    except md.PackageNotFoundError:
        pytest.skip("the plugin is not installed (pip install ./examples/f0_plugin)")
    assert rvcfast.available_f0_extractors()["yin-example"].startswith("rvcfast-f0-yin")
    ext = rvcfast.get_f0_extractor("yin-example", threshold=0.2)  # options reach the constructor
    assert ext.threshold == 0.2
