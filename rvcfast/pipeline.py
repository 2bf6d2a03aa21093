"""RVC's conversion pipeline, stage by stage (RVC WebUI / Applio semantics).

::

    16 kHz mono ─► input peak guard (0.95) ─► 48 Hz high-pass (filtfilt, float64)
      ─► quiet-point split points (inputs > 41 s) ─► reflect pad 1 s
      ─► F0 on the whole padded signal ─► key shift ─► coarse pitch 1..255
      ─► per segment: content features ─► index blend ─► ×2 frames ─► protect
                      ─► synthesize ─► drop 1 s of context on each side
      ─► join ─► RMS mix ─► resample (optional) ─► output peak guard (0.99)

Each stage is a plain function so the batch engine can run many files' segments
through the models together and reuse the same arithmetic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import highpass_48hz, input_peak_guard
from .errors import ParameterError
from .f0.post import postprocess
from .longaudio import LONG_INPUT_SAMPLES, highpass_blocks, resample_blocks
from .protocols import FeatureEncoder, Vocoder
from .segment import Segment, SegmentConfig, find_split_points, plan_segments, reflect_pad

__all__ = [
    "ConversionParams",
    "PreparedAudio",
    "SegmentInput",
    "prepare",
    "pitch_track",
    "segment_features",
    "segment_inputs",
    "segment_seed",
    "apply_protect",
    "change_rms",
    "finish",
    "Timer",
]

WINDOW = 160


@dataclass(frozen=True)
class ConversionParams:
    """Every conversion parameter, with the reference defaults.

    Attributes
    ----------
    pitch:
        Key shift in semitones (RVC ``f0_up_key``); +12 is an octave up. Range -48..48.
    index_rate:
        Share of retrieved index features blended into the content features, 0..1
        (0 = index unused, 1 = only retrieved features). Default 0.75.
    protect:
        Protection of unvoiced consonants and breaths, 0..0.5: on unvoiced frames only
        ``protect`` of the index-blended features is used, the rest is the original.
        0.5 switches protection off; lower values protect more. Default 0.33.
    rms_mix_rate:
        Loudness envelope: 1 keeps the converted voice's own envelope (default, and
        what Applio calls volume_envelope = 1), 0 copies the input's envelope.
    filter_radius:
        Harvest only: a value > 2 applies a 3-tap median filter to the F0 track (default 3).
    speaker:
        Speaker id for multi-speaker models (default 0).
    noise:
        Sample the model's noise (prior noise and NSF excitation noise), as the
        reference does. ``False`` makes the output deterministic.
    seed:
        Seed for that noise; the same seed gives the same output.
    output_sample_rate:
        Resample the output to this rate; ``None`` keeps the model's rate.
    v1_output_layer:
        Content-encoder layer for v1 models (RVC: 9; Applio uses the last, 12).
    fill_unvoiced:
        Interpolate F0 through unvoiced frames before the key shift (RVC 2026 ``main``);
        off by default, as in the classic pipeline.
    keep_length:
        Length-exact output: every segment is synthesised for its full span (the last
        content frame is repeated to fill the 10-20 ms the encoder's frame grid leaves
        out), so the output is ``len(input) * rate / 16000`` to within one hop and long
        inputs do not drift at segment joins. Off by default: the reference drops up to
        two frames per segment (RVC WebUI #2317), and the default reproduces it exactly.
    """

    pitch: float = 0.0
    index_rate: float = 0.75
    protect: float = 0.33
    rms_mix_rate: float = 1.0
    filter_radius: int = 3
    speaker: int = 0
    noise: bool = True
    seed: int | None = None
    output_sample_rate: int | None = None
    v1_output_layer: int = 9
    fill_unvoiced: bool = False
    keep_length: bool = False

    def validate(self, vocoder: Vocoder | None = None) -> None:
        """Raise :class:`ParameterError` for any value outside its range (checked before work starts)."""

        def finite(name: str, value: float) -> float:
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ParameterError(f"{name} must be a number, got {value!r}") from None
            if not math.isfinite(v):
                raise ParameterError(f"{name} must be finite, got {value!r}")
            return v

        if not -48 <= finite("pitch", self.pitch) <= 48:
            raise ParameterError(f"pitch must be within -48..48 semitones, got {self.pitch}")
        if not 0 <= finite("index_rate", self.index_rate) <= 1:
            raise ParameterError(f"index_rate must be within 0..1, got {self.index_rate}")
        if not 0 <= finite("protect", self.protect) <= 0.5:
            raise ParameterError(f"protect must be within 0..0.5 (0.5 = off), got {self.protect}")
        if not 0 <= finite("rms_mix_rate", self.rms_mix_rate) <= 1:
            raise ParameterError(f"rms_mix_rate must be within 0..1, got {self.rms_mix_rate}")
        if not isinstance(self.filter_radius, (int, np.integer)) or self.filter_radius < 0:
            raise ParameterError(f"filter_radius must be a non-negative integer, got {self.filter_radius!r}")
        if not isinstance(self.speaker, (int, np.integer)) or isinstance(self.speaker, bool) or self.speaker < 0:
            raise ParameterError(f"speaker must be a non-negative integer, got {self.speaker!r}")
        if self.seed is not None and (not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool)):
            raise ParameterError(f"seed must be an integer or None, got {self.seed!r}")
        if self.output_sample_rate is not None and not (8000 <= int(self.output_sample_rate) <= 384000):
            raise ParameterError(f"output_sample_rate must be within 8000..384000 Hz, got {self.output_sample_rate}")
        if vocoder is not None and self.speaker >= vocoder.num_speakers:
            raise ParameterError(
                f"speaker {self.speaker} is out of range: this model has {vocoder.num_speakers} speaker(s) (0..{vocoder.num_speakers - 1})"
            )


class Timer:
    """Accumulates wall-clock seconds per named stage (synchronising CUDA when used)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.times: dict[str, float] = {}
        self._cuda = device is not None and device.type == "cuda"

    def add(self, stage: str, seconds: float) -> None:
        self.times[stage] = self.times.get(stage, 0.0) + seconds

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> _Stage:
        if self.timer._cuda:
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.timer._cuda:
            torch.cuda.synchronize()
        self.timer.add(self.name, time.perf_counter() - self.t0)


@dataclass
class PreparedAudio:
    """One input after the signal-level stages: ready for F0 and per-segment synthesis.

    Only the padded signal is stored; :attr:`audio` is a view of its unpadded middle.
    """

    padded: np.ndarray  # high-passed float64 16 kHz, reflect-padded by t_pad on each side
    segments: list[Segment]
    p_len: int  # frames of the padded signal (len // 160)
    config: SegmentConfig = field(default_factory=SegmentConfig)

    @property
    def audio(self) -> np.ndarray:
        """The high-passed input without padding (the RMS-mix source)."""
        t = self.config.t_pad
        return self.padded[t : self.padded.shape[0] - t]

    @property
    def seconds(self) -> float:
        """Duration of the input in seconds."""
        return (self.padded.shape[0] - 2 * self.config.t_pad) / 16000


def prepare(audio16k: np.ndarray, config: SegmentConfig = SegmentConfig()) -> PreparedAudio:
    """Peak guard, high-pass, split points and padding for one mono 16 kHz float input.

    Inputs longer than 10 minutes are high-passed block by block (bounded memory).
    """
    audio = input_peak_guard(np.asarray(audio16k, dtype=np.float64))
    del audio16k
    n, pad = audio.shape[0], config.t_pad
    if n > LONG_INPUT_SAMPLES and n > pad + 1:
        # filter straight into the middle of the padded buffer, then reflect in place:
        # one copy of an hour-long signal instead of three
        padded = np.empty(n + 2 * pad, dtype=np.float64)
        highpass_blocks(audio, out=padded[pad : pad + n])
        del audio
        mid = padded[pad : pad + n]
        padded[:pad] = mid[pad:0:-1]
        padded[pad + n :] = mid[-2 : -pad - 2 : -1]
        opt_ts = find_split_points(mid, config)
        del mid
    else:
        audio = highpass_48hz(audio)
        opt_ts = find_split_points(audio, config)
        padded = reflect_pad(audio, pad)
        del audio
    segments = plan_segments(n, opt_ts, config)
    return PreparedAudio(padded=padded, segments=segments, p_len=padded.shape[0] // WINDOW, config=config)


def segment_frames(n_samples: int, span_frames: int, keep_length: bool = False) -> int:
    """Frames synthesised for a segment of ``n_samples`` (padded, 16 kHz) spanning ``span_frames`` F0 frames.

    The reference synthesises ``min(n // 160, 2 * T50)`` frames (``T50`` content frames at
    50/s), which can be one or two short of the span; ``keep_length`` uses the span.
    """
    if keep_length:
        return span_frames
    return min(n_samples // WINDOW, 2 * ((n_samples - 400) // 320 + 1))


def segment_output_length(n_samples: int, span_frames: int, hop: int, trim: int, keep_length: bool = False) -> int:
    """Output samples a segment contributes after its padding context is trimmed."""
    return max(0, segment_frames(n_samples, span_frames, keep_length) * hop - 2 * trim)


def pitch_track(
    f0: np.ndarray, p_len: int, params: ConversionParams
) -> tuple[np.ndarray, np.ndarray]:
    """Key shift + coarse pitch of a raw F0 track, fitted to ``p_len`` frames."""
    return postprocess(f0, p_len, semitones=params.pitch, fill_unvoiced=params.fill_unvoiced)


@dataclass
class SegmentInput:
    """What the synthesizer needs for one segment."""

    audio: np.ndarray  # padded 16 kHz samples of the segment (float64)
    pitch: np.ndarray | None  # coarse, int64
    pitchf: np.ndarray | None  # Hz, float32
    seed: int | None = None  # noise seed of this segment (derived from the file's seed and the segment number)
    frames: int = 0  # frames of the segment's F0 slice (its span at 100 frames/s)


def segment_seed(seed: int | None, number: int) -> int | None:
    """The noise seed of segment ``number`` of a file converted with ``seed``.

    It depends only on the file's seed and the segment's position in the file, so a
    seeded conversion gives the same output whatever else is in the batch.
    """
    if seed is None:
        return None
    return (int(seed) * 1_000_003 + number) % (2**63 - 1)


def segment_inputs(
    prep: PreparedAudio, coarse: np.ndarray | None, pitchf: np.ndarray | None, seed: int | None = None
) -> list[SegmentInput]:
    """Slice the padded signal and the pitch track per segment."""
    out = []
    for k, seg in enumerate(prep.segments):
        a = prep.padded[seg.start : seg.end]
        s = segment_seed(seed, k)
        frames = seg.f0_end - seg.f0_start
        if coarse is None or pitchf is None:
            out.append(SegmentInput(a, None, None, s, frames))
        else:
            out.append(SegmentInput(a, coarse[seg.f0_start : seg.f0_end], pitchf[seg.f0_start : seg.f0_end], s, frames))
    return out


def n_feature_frames(n_samples: int) -> int:
    """Content-encoder frames (50 per second) for ``n_samples`` at 16 kHz."""
    return (n_samples - 400) // 320 + 1


def segment_features(
    encoder: FeatureEncoder,
    audios: Sequence[np.ndarray],
    version: str,
    device: torch.device,
    dtype: torch.dtype,
    v1_output_layer: int = 9,
) -> list[torch.Tensor]:
    """Content features ``[T, C]`` for each segment (one padded, masked encoder batch)."""
    lengths = [a.shape[0] for a in audios]
    n = max(lengths)
    batch = torch.zeros(len(audios), n, dtype=torch.float32)
    for i, a in enumerate(audios):
        batch[i, : a.shape[0]] = torch.from_numpy(np.asarray(a, dtype=np.float32))
    batch = batch.to(device=device, dtype=dtype)
    if version == "v1":
        layer, proj = v1_output_layer, True
    else:
        layer, proj = None, False
    lens = torch.tensor(lengths, device=device) if len(set(lengths)) > 1 else None
    feats = encoder.encode(batch, output_layer=layer, final_proj=proj, lengths=lens)
    return [feats[i, : n_feature_frames(lengths[i])] for i in range(len(audios))]


def apply_protect(feats: torch.Tensor, feats0: torch.Tensor, pitchf: torch.Tensor, protect: float) -> torch.Tensor:
    """Keep index-blended features on voiced frames; on unvoiced ones mix ``protect`` of them with the originals."""
    mask = pitchf.clone().to(feats.dtype)
    mask[pitchf > 0] = 1
    mask[pitchf < 1] = protect
    mask = mask.unsqueeze(-1)
    return (feats * mask + feats0 * (1 - mask)).to(feats0.dtype)


def _rms_frames(y: np.ndarray, frame_length: int, hop_length: int, block: int = 1 << 21) -> np.ndarray:
    """librosa ``feature.rms`` (``center=True``, zero padding), in bounded memory.

    With ``frame_length == 2 * hop_length`` (every rate RVC uses) frame ``i`` covers
    hop-blocks ``i - 1`` and ``i`` of the signal, so only per-hop sums of squares are
    needed; otherwise a cumulative sum is used.
    """
    n = y.shape[0]
    if frame_length == 2 * hop_length:
        n_blocks = -(-n // hop_length)
        sums = np.zeros(n_blocks + 1, dtype=np.float64)
        for s in range(0, n, block - block % hop_length or hop_length):
            chunk = np.asarray(y[s : s + block - block % hop_length or hop_length], dtype=np.float64)
            k = chunk.shape[0] // hop_length
            j0 = s // hop_length
            if k:
                sums[j0 : j0 + k] = np.square(chunk[: k * hop_length]).reshape(k, hop_length).sum(axis=1)
            if chunk.shape[0] % hop_length:
                sums[j0 + k] = np.square(chunk[k * hop_length :]).sum()
        n_frames = 1 + n // hop_length
        prev = np.concatenate([[0.0], sums[: n_frames - 1]])
        power = (prev + sums[:n_frames]) / frame_length
        return np.sqrt(np.maximum(power, 0.0))
    pad = frame_length // 2
    sq = np.concatenate([np.zeros(pad), np.asarray(y, dtype=np.float64) ** 2, np.zeros(pad)])
    n_frames = 1 + (sq.shape[0] - frame_length) // hop_length
    csum = np.concatenate([[0.0], np.cumsum(sq)])
    starts = np.arange(n_frames) * hop_length
    power = (csum[starts + frame_length] - csum[starts]) / frame_length
    return np.sqrt(np.maximum(power, 0.0))


def _interp_linear(values: np.ndarray, size: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Points ``start..stop`` of ``F.interpolate(mode="linear", align_corners=False)`` of ``values`` to ``size``."""
    n = values.shape[0]
    stop = size if stop is None else stop
    scale = n / size
    src = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    return values[i0] * (1 - lam) + values[i1] * lam


def change_rms(
    source: np.ndarray, source_rate: int, target: np.ndarray, target_rate: int, rate: float, block: int = 1 << 20
) -> np.ndarray:
    """RVC's RMS mix: ``target * rms_src^(1-rate) * rms_tgt^(rate-1)`` on half-second frames.

    Works block by block on ``target`` (a new float32 array is returned).
    """
    rms1 = _rms_frames(source, source_rate // 2 * 2, source_rate // 2)
    rms2 = _rms_frames(target, target_rate // 2 * 2, target_rate // 2)
    size = target.shape[0]
    out = np.empty(size, dtype=np.float32)
    for s in range(0, size, block):
        e = min(size, s + block)
        r1 = _interp_linear(rms1, size, s, e)
        r2 = np.maximum(_interp_linear(rms2, size, s, e), 1e-6)
        out[s:e] = target[s:e] * (np.power(r1, 1 - rate) * np.power(r2, rate - 1))
    return out


def finish(
    pieces: Sequence[np.ndarray] | np.ndarray,
    prep: PreparedAudio,
    model_rate: int,
    params: ConversionParams,
) -> tuple[np.ndarray, int]:
    """Join segment outputs, RMS mix, resample and peak-guard: the final float32 waveform and its rate.

    ``pieces`` is the list of trimmed segment outputs, or one array they were already
    written into (the batch engine does that to avoid a second copy of long outputs).
    """
    if isinstance(pieces, np.ndarray):
        out = pieces
    else:
        out = np.concatenate([np.asarray(p, dtype=np.float32) for p in pieces]) if len(pieces) else np.zeros(0, np.float32)
    if params.rms_mix_rate != 1:
        out = change_rms(prep.audio, 16000, out, model_rate, params.rms_mix_rate)
    rate = model_rate
    if params.output_sample_rate is not None and int(params.output_sample_rate) != model_rate:
        rate = int(params.output_sample_rate)
        out = resample_blocks(out, model_rate, rate, dtype=np.float32)
    out = np.asarray(out, dtype=np.float32)
    if out.size:
        audio_max = np.abs(out).max() / 0.99  # float32, as in the reference (peak limited to 0.99)
        if audio_max > 1:
            out /= audio_max
    return out, rate
