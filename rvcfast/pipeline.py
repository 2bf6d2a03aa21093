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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .audio import AudioInput, decode
from .constants import F0_HOP, FEATURE_HOP, FEATURE_WINDOW, LONG_INPUT_SAMPLES, SR_16K
from .dsp import change_rms, highpass_48hz, highpass_blocks, input_peak_guard, output_peak_guard, resample
from .errors import AudioError, ParameterError
from .f0.post import postprocess
from .params import ConversionParams
from .protocols import FeatureEncoder
from .segment import Segment, SegmentConfig, find_split_points, plan_segments, reflect_pad

if TYPE_CHECKING:  # stage 1 (prepare_input) runs without torch: a cluster's decoding tasks never load it
    import torch

__all__ = [
    "PreparedAudio",
    "SegmentInput",
    "prepare",
    "prepare_input",
    "pitch_track",
    "segment_features",
    "segment_inputs",
    "segment_seed",
    "segment_frames",
    "segment_output_length",
    "apply_protect",
    "check_channels",
    "check_formant",
    "finish",
]


@dataclass
class PreparedAudio:
    """One input after the signal-level stages: ready for F0 and per-segment synthesis.

    Only the padded signal is stored; :attr:`audio` is a view of its unpadded middle.
    """

    padded: np.ndarray  # high-passed float64 16 kHz, reflect-padded by t_pad on each side
    segments: list[Segment]
    p_len: int  # frames of the padded signal (len // 160)
    config: SegmentConfig = field(default_factory=SegmentConfig)
    label: str | None = None  # the input's name (a path, or a name given for an array)
    warnings: list[str] = field(default_factory=list)  # recoverable oddities of the input
    formant: tuple[float, float] | None = None  # the formant shift applied when it was prepared
    source_channels: int = 1  # channels of the decoded source
    channel_mode: str = "mix"  # the ``channels`` setting it was prepared with (its source's channels mixed or kept)
    #: the further channels of an input converted channel by channel (``channels="each"``):
    #: this object is channel 0, each of these one more, all split at the same points
    more_channels: tuple[PreparedAudio, ...] = ()
    #: with a formant shift: the BS.1770 loudness of the input before it (after the 0.95 input
    #: peak guard), what ``loudness="match"`` gives the output; ``-inf`` silent, NaN under 0.4 s
    input_loudness: float | None = None

    @property
    def audio(self) -> np.ndarray:
        """The high-passed input without padding (the RMS-mix source)."""
        t = self.config.t_pad
        return self.padded[t : self.padded.shape[0] - t]

    @property
    def n_channels(self) -> int:
        """Channels the output will have: 1, or the input's with ``channels="each"``."""
        return 1 + len(self.more_channels)

    @property
    def seconds(self) -> float:
        """Duration of the input in seconds."""
        return (self.padded.shape[0] - 2 * self.config.t_pad) / SR_16K


def prepare(
    audio16k: np.ndarray,
    config: SegmentConfig = SegmentConfig(),
    *,
    label: str | None = None,
    warnings: Sequence[str] = (),
    split_points: Sequence[int] | None = None,
) -> PreparedAudio:
    """Peak guard, high-pass, split points and padding for one mono 16 kHz float input.

    Inputs longer than 10 minutes are high-passed block by block (bounded memory).
    An input that is not 1-D or has no samples raises :class:`~rvcfast.errors.AudioError`
    naming ``label``. ``split_points`` (from :func:`find_split_points`) replaces the input's
    own: the channels of one input are split where their mix is quiet.
    """
    audio = np.asarray(audio16k, dtype=np.float64)
    if audio.ndim != 1 or audio.shape[0] == 0:
        what = "has no samples" if audio.ndim == 1 else f"must be 1-D mono samples, got shape {audio.shape}"
        raise AudioError(label, f"audio {what}")
    audio = input_peak_guard(audio)
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
        opt_ts = find_split_points(mid, config) if split_points is None else list(split_points)
        del mid
    else:
        audio = highpass_48hz(audio)
        opt_ts = find_split_points(audio, config) if split_points is None else list(split_points)
        padded = reflect_pad(audio, pad)
        del audio
    segments = plan_segments(n, opt_ts, config)
    return PreparedAudio(
        padded=padded, segments=segments, p_len=padded.shape[0] // F0_HOP, config=config, label=label, warnings=list(warnings)
    )


def prepare_input(
    source: AudioInput,
    sample_rate: int | None = None,
    *,
    name: str | None = None,
    params: ConversionParams | None = None,
    config: SegmentConfig = SegmentConfig(),
    max_seconds: float | None = None,
) -> PreparedAudio:
    """Stage 1 without any model: decode one input and run the signal stages.

    Decoding (any file or array to float64 mono 16 kHz), the formant shift when
    ``params.formant`` is set, the input peak guard, the 48 Hz high-pass, split points and
    padding. With ``params.strict`` an input with warnings raises
    :class:`~rvcfast.errors.AudioError`. Thread-safe; a cluster runs it in CPU tasks that
    hold no network. ``max_seconds`` bounds the input's length while it is decoded
    (:class:`~rvcfast.errors.AudioTooLongError`, see :func:`rvcfast.audio.decode`).
    """
    each = params is not None and params.channels == "each"
    decoded = decode(source, sample_rate, name=name, max_seconds=max_seconds, keep_channels=each)
    if params is not None and params.strict and decoded.warnings:
        label = decoded.label
        said = [w[len(f"{label}: "):] if label and w.startswith(f"{label}: ") else w for w in decoded.warnings]
        raise AudioError(label, "; ".join(said) + " (strict mode: a warning fails the input)")
    audio = decoded.audio
    loudness: float | None = None
    if params is not None and params.formant is not None:
        from .effects import formant_shift
        from .loudness import integrated_loudness

        # the shift changes the timbre, and so the loudness: "match" is the input's, measured before it
        measured = integrated_loudness(input_peak_guard(np.asarray(audio, dtype=np.float64)), SR_16K)
        loudness = float("nan") if measured is None else measured
        # as the reference: on the 16 kHz input, before the peak guard
        audio = formant_shift(audio, *params.formant) if audio.ndim == 1 else np.stack(
            [formant_shift(audio[:, c], *params.formant) for c in range(audio.shape[1])], axis=1
        )
    if audio.ndim == 2:
        prepared = _prepare_channels(audio, config, decoded.label, decoded.warnings)
    else:
        prepared = prepare(audio, config, label=decoded.label, warnings=decoded.warnings)
    prepared.formant = formant_of(params)
    prepared.input_loudness = loudness
    prepared.source_channels = decoded.channels
    prepared.channel_mode = "each" if each else "mix"
    for channel in prepared.more_channels:
        channel.formant = prepared.formant
        channel.source_channels, channel.channel_mode = prepared.source_channels, prepared.channel_mode
    return prepared


def _prepare_channels(audio: np.ndarray, config: SegmentConfig, label: str | None, warnings: Sequence[str]) -> PreparedAudio:
    """One :class:`PreparedAudio` per channel of ``[samples, channels]`` audio, the first holding
    the others: one input peak guard for all (the balance is kept), split where the mix is quiet."""
    audio = input_peak_guard(np.asarray(audio, dtype=np.float64))  # the peak over every channel
    mix = audio.mean(axis=1)
    if mix.shape[0] > LONG_INPUT_SAMPLES:
        # block by block, as prepare() filters long inputs (not in place: each block's run-in
        # reads the samples before it, which an in-place filter has already overwritten)
        mix = highpass_blocks(mix)
    else:
        mix = highpass_48hz(mix)
    split = find_split_points(mix, config)
    del mix
    channels = [prepare(audio[:, c], config, label=label, warnings=warnings, split_points=split) for c in range(audio.shape[1])]
    channels[0].more_channels = tuple(channels[1:])
    return channels[0]


def formant_of(params: ConversionParams | None) -> tuple[float, float] | None:
    """``params.formant`` as a pair of floats (``None``: no formant shift)."""
    if params is None or params.formant is None:
        return None
    quefrency, timbre = params.formant
    return float(quefrency), float(timbre)


def check_formant(prep: PreparedAudio, params: ConversionParams) -> None:
    """The formant shift belongs to stage 1 (decoding): refuse settings whose shift ``prep`` did not get."""
    wanted = formant_of(params)
    if wanted != prep.formant:
        raise ParameterError(
            f"{prep.label or 'input'}: formant={wanted} asked for, but the input was prepared with formant={prep.formant}: "
            "the shift is applied when decoding, so pass the same params to prepare()"
        )


def check_channels(prep: PreparedAudio, params: ConversionParams) -> None:
    """``channels`` belongs to stage 1 too: refuse settings whose channel layout ``prep`` was not prepared in
    (a source of several channels mixed into one, or kept channel by channel)."""
    if params.channels == "mix" and prep.more_channels:
        raise ParameterError(
            f"{prep.label or 'input'}: channels='mix' asked for, but the input was prepared channel by channel "
            "(channels='each'): the channels are kept or mixed when decoding, so pass the same params to prepare()"
        )
    if params.channels == "each" and prep.channel_mode == "mix" and prep.source_channels > 1:
        raise ParameterError(
            f"{prep.label or 'input'}: channels='each' asked for, but the input's {prep.source_channels} channels were "
            "mixed into one when it was prepared (channels='mix'): pass the same params to prepare()"
        )


def segment_frames(n_samples: int, span_frames: int, keep_length: bool = False) -> int:
    """Frames synthesised for a segment of ``n_samples`` (padded, 16 kHz) spanning ``span_frames`` F0 frames.

    The reference synthesises ``min(n // 160, 2 * T50)`` frames (``T50`` content frames at
    50/s), which can be one or two short of the span; ``keep_length`` uses the span.
    """
    if keep_length:
        return span_frames
    return min(n_samples // F0_HOP, 2 * n_feature_frames(n_samples))


def segment_output_length(n_samples: int, span_frames: int, hop: int, trim: int, keep_length: bool = False) -> int:
    """Output samples a segment contributes after its padding context is trimmed."""
    return max(0, segment_frames(n_samples, span_frames, keep_length) * hop - 2 * trim)


def pitch_track(
    f0: np.ndarray, p_len: int, params: ConversionParams, key: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Key shift + coarse pitch of a raw F0 track, fitted to ``p_len`` frames. ``key``: the
    proposed pitch's semitones when they were worked out for several tracks together (the
    channels of one input), in place of this track's own."""
    return postprocess(
        f0,
        p_len,
        semitones=params.pitch + (key or 0),
        autotune=params.autotune,
        proposed_pitch=params.proposed_pitch if key is None else None,
        fill_unvoiced=params.fill_unvoiced,
    )


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
    return (n_samples - FEATURE_WINDOW) // FEATURE_HOP + 1


def segment_features(
    encoder: FeatureEncoder,
    audios: Sequence[np.ndarray],
    version: str,
    device: torch.device,
    dtype: torch.dtype,
    v1_output_layer: int = 9,
) -> list[torch.Tensor]:
    """Content features ``[T, C]`` for each segment (one padded, masked encoder batch)."""
    import torch

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


def finish(
    pieces: Sequence[np.ndarray] | np.ndarray,
    prep: PreparedAudio,
    model_rate: int,
    params: ConversionParams,
    warnings: list[str] | None = None,
) -> tuple[np.ndarray, int]:
    """Join segment outputs, RMS mix, resample, peak-guard, denoise, effects and loudness: the
    final float32 waveform and its rate. What the loudness step reports is appended to ``warnings``.

    ``pieces`` is the list of trimmed segment outputs, or one array they were already
    written into (the batch engine does that to avoid a second copy of long outputs).
    Such an array is used as the output buffer: when it is float32, the RMS mix is off
    and no resampling is asked for, the peak guard scales it in place (pass a copy to
    keep it).
    """
    if isinstance(pieces, np.ndarray):
        out = pieces
    else:
        out = np.concatenate([np.asarray(p, dtype=np.float32) for p in pieces]) if len(pieces) else np.zeros(0, np.float32)
    channels = (prep, *prep.more_channels)
    if out.ndim == 2 and out.shape[1] != len(channels):
        raise ValueError(f"finish: {out.shape[1]} output channels for an input prepared with {len(channels)}")
    if params.rms_mix_rate != 1:
        out = _per_channel(out, lambda y, c: change_rms(channels[c].audio, SR_16K, y, model_rate, params.rms_mix_rate))
    rate = model_rate
    if params.output_sample_rate is not None and int(params.output_sample_rate) != model_rate:
        rate = int(params.output_sample_rate)
        out = resample(np.asarray(out, dtype=np.float32), model_rate, rate, dtype=np.float32)  # 1-D or [samples, channels]
    out = np.asarray(out, dtype=np.float32)
    # float32, as in the reference (peak limited to 0.99; over every channel at once)
    out = output_peak_guard(out)
    # then, as Applio's convert_audio: noise reduction, then the effects chain
    if params.clean > 0:
        from .effects import denoise

        out = _per_channel(out, lambda y, c: denoise(y, rate, params.clean))
    if params.effects:
        from .effects import apply_effects

        out = _per_channel(out, lambda y, c: apply_effects(y, rate, params.effects))
    if params.loudness is not None:
        out, notes = _normalized(np.asarray(out, dtype=np.float32), rate, prep, params.loudness)
        if warnings is not None:
            warnings.extend(notes)
    out = np.asarray(out, dtype=np.float32)
    if warnings is not None and params.loudness is None and (params.effects or params.clean > 0):
        warnings.extend(_clipping_note(out, prep))
    return out, rate


def _clipping_note(out: np.ndarray, prep: PreparedAudio) -> list[str]:
    """A warning when noise reduction or the effects took the output past full scale (the 0.99
    peak limit comes before them, as in Applio): a PCM file clips there."""
    peak = float(np.abs(out).max()) if out.size else 0.0
    if not peak > 1.0:
        return []
    return [
        f"{prep.label or 'input'}: clean/effects took the output's peak to {20 * np.log10(peak):+.1f} dBFS: a PCM "
        "or lossy file clips there (lower the gain, set loudness, or write subtype FLOAT)"
    ]


def _per_channel(out: np.ndarray, step: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """``step(samples, channel)`` on mono ``out``, or on each column of ``[samples, channels]``."""
    if out.ndim == 1:
        return step(out, 0)
    return np.stack([np.asarray(step(np.ascontiguousarray(out[:, c]), c), dtype=np.float32) for c in range(out.shape[1])], axis=1)


def _normalized(out: np.ndarray, rate: int, prep: PreparedAudio, loudness: float | str) -> tuple[np.ndarray, list[str]]:
    """The output at the ``loudness`` asked for: a number of LUFS, or ``"match"`` (the input's)."""
    from .loudness import MATCH, integrated_loudness, normalize_loudness

    label = prep.label or "input"
    if loudness == MATCH:
        if prep.input_loudness is not None:  # measured before the formant shift
            target: float | None = prep.input_loudness
        else:
            heard = prep.audio if not prep.more_channels else np.stack([c.audio for c in (prep, *prep.more_channels)], axis=1)
            target = integrated_loudness(heard, SR_16K)
        if target is None or not np.isfinite(target):
            why = "shorter than 0.4 s" if target is None or np.isnan(target) else "silent"
            return out, [f"{label}: loudness not matched: the input is {why}, its loudness cannot be measured"]
        loudness = target
    return normalize_loudness(out, rate, float(loudness), label)
