"""Block-by-block conversion of audio that arrives as it is recorded, at a fixed latency.

:class:`RealtimeConverter` follows RVC's realtime algorithm (``gui_v1.py`` + ``rtrvc.py``):

* a rolling 16 kHz buffer holds ``context + crossfade + search + block`` of input; each new
  block is shifted in (resampled from the caller's rate over a short overlap, so that no
  resampler delay is added), and RVC's zero-phase 48 Hz high-pass runs over the whole
  buffer for every block (a causal filter's phase shift moved the content features far
  from the offline ones);
* the content encoder runs on the whole buffer, then the index blend, the ×2 frame
  repeat and ``protect``, exactly as :meth:`Engine.synthesize_segments` does;
* F0 is computed on the buffer's tail only (the new block plus the extractor's context;
  RMVPE on ``5120 * ((block16k + 800 - 1) // 5120 + 1) - 160`` samples, as RVC) and kept
  in a rolling cache of the buffer's raw track, post-processed (key shift, autotune...)
  as the engine does;
* the synthesizer's text encoder and flow see every frame, but the decoder (the costly
  part) decodes only the newest ``block + crossfade + search`` frames and its receptive
  field margin (``skip_frames=(head, 0)``);
* the new output is resampled to the caller's rate and joined to the previous block by
  SOLA (:mod:`rvcfast.sola`): exactly ``block`` samples per block.

Timing. Every :meth:`RealtimeConverter.push` returns exactly as many samples as it was
given, whatever their number: blocks are accumulated and the output is held back by one
block (its samples are zeros at the start), so the output is the converted input delayed
by :attr:`~RealtimeConverter.latency_samples` ``= block + crossfade + search`` (a block's
SOLA offset may move its content up to ``search`` samples earlier; the delay never
drifts). With ``whole_blocks=True`` every push must be a whole number of blocks (an
audio callback with ``blocksize=block_size``) and the block of hold-back is dropped:
``latency_samples = crossfade + search``; the device's own buffering then adds the block.
:meth:`~RealtimeConverter.flush` returns the last ``latency_samples`` of converted audio,
so that everything returned, less its first ``latency_samples``, has exactly the input's
length and lines up with it.

One instance converts one stream, from one thread at a time (several instances may share
one engine).
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .constants import F0_HOP, SR_16K
from .dsp import change_rms, highpass_48hz, resample
from .engine import Engine
from .errors import AudioError, ParameterError, RvcfastError
from .params import ConversionParams
from .pipeline import apply_protect, pitch_track, segment_features
from .sola import Sola

__all__ = ["RealtimeConverter", "SOLA_SEARCH_SECONDS", "MAX_SAMPLE_RATE", "WARMUP_BLOCKS", "unit_frames", "whole_file_settings"]

#: Default SOLA search range (RVC's realtime GUI: one 10 ms frame).
SOLA_SEARCH_SECONDS = 0.01
#: Blocks at the start of a stream left out of :attr:`RealtimeConverter.real_time_factor`.
WARMUP_BLOCKS = 2
#: Defaults of the block, the context and the crossfade (RVC's realtime GUI: 0.25 s, 1 s and 0.05 s);
#: at a rate that is no multiple of 100 Hz, rounded down to whole spans of :func:`unit_frames`
#: (22050 and 11025 Hz: block 0.24 s, crossfade 0.04 s).
DEFAULT_BLOCK_SECONDS = 0.25
DEFAULT_CONTEXT_SECONDS = 1.0
DEFAULT_CROSSFADE_SECONDS = 0.05
#: Highest stream rate (as ``output_sample_rate``): the buffers grow with the rate.
MAX_SAMPLE_RATE = 384000
#: Frames of the caller's-rate input resampled before the new block (the first is dropped:
#: it holds the resampler's edge), and frames re-resampled at the end of the previous block
#: (its last frame was resampled without the samples after it).
_IN_CONTEXT_FRAMES = 2
_IN_REDO_FRAMES = 1
#: F0 frames dropped at the start of each tail track (edge effects; RVC's ``pitch[3:-1]``).
_F0_EDGE_FRAMES = 3
#: F0 context after the new block, in samples (RVC: ``block_frame_16k + 800``).
_F0_CONTEXT = 800
#: RMVPE works on 32-frame chunks: ``5120 = 32 * 160``.
_RMVPE_CHUNK = 5120
#: A float block peaking above this is taken for integer PCM cast without scaling (warned once a stream).
_UNSCALED_PEAK = 4.0
#: Beyond any PCM format's full scale (int32's is 2**31): refused, the models' float32 sums overflow
#: from about 1e17 on (RMVPE's spectrogram), which would be blamed on the F0 backend.
MAX_INPUT_PEAK = 2.0**32


def unit_frames(sample_rate: int) -> int:
    """10 ms frames in the shortest span that is a whole number of samples at ``sample_rate``:
    1 for rates that are multiples of 100 Hz (48000, 44100, 16000), 2 for 22050 Hz (20 ms =
    441 samples), 4 for 11025 Hz (40 ms = 441 samples)."""
    return 100 // math.gcd(int(sample_rate), 100)


def _standard(seconds: float | None, default: float, unit: int) -> float:
    """``seconds``, or when it is ``None`` the ``default`` in whole spans of ``unit`` frames (rounded down, at least one)."""
    if seconds is not None:
        return seconds
    return max(unit, round(default * 100) // unit * unit) / 100


def _valid_near(exact: float, unit: int, minimum: int) -> str:
    """The valid durations next to ``exact`` frames (multiples of ``unit``, at least ``minimum``), as ``"a or b"``."""
    least = -(-minimum // unit) * unit
    near = sorted({math.floor(exact / unit) * unit, math.ceil(exact / unit) * unit})
    near = [f for f in near if f >= least] or [least]
    return " or ".join(f"{f / 100:g}" for f in near)


def _frames(name: str, seconds: Any, minimum: int, unit: int = 1, sample_rate: int = 0) -> int:
    """``seconds`` as a whole number of 10 ms frames, a multiple of ``unit`` (at least ``minimum``), or a ParameterError.

    A NumPy number (``np.float32(0.05)``) is as good as a Python one; the durations an error
    suggests are valid ones (never below ``minimum``)."""
    if isinstance(seconds, (bool, np.bool_)) or not isinstance(seconds, numbers.Real) or not math.isfinite(seconds):
        raise ParameterError(f"{name} must be a number of seconds, got {seconds!r}")
    exact = float(seconds) * 100
    frames = round(exact)
    if abs(exact - frames) > 1e-4:
        raise ParameterError(f"{name}={seconds} is not a multiple of 10 ms: use {_valid_near(exact, unit, minimum)}")
    if frames % unit:
        raise ParameterError(
            f"{name}={seconds} is not a whole number of samples at {sample_rate} Hz ({frames * sample_rate / 100:g}): "
            f"at this rate durations are multiples of {unit * 10} ms; use {_valid_near(frames, unit, minimum)}"
        )
    if frames < minimum:
        raise ParameterError(f"{name} must be at least {minimum * 10} ms, got {seconds}")
    return frames


def whole_file_settings(q: ConversionParams) -> list[str]:
    """The settings of ``q`` a realtime converter refuses because they need a whole file, in the
    order its error names them: ``loudness``, ``formant``, ``clean``, ``effects``,
    ``proposed_pitch``, then ``channels`` (``"each"``)."""
    whole = {
        "loudness": q.loudness is not None,
        "formant": q.formant is not None,
        "clean": q.clean > 0,
        "effects": bool(q.effects),
        "proposed_pitch": q.proposed_pitch is not None,
        "channels": q.channels != "mix",
    }
    return [k for k, on in whole.items() if on]


def _refuse_whole_input_params(q: ConversionParams, sample_rate: int) -> None:
    """Settings that need the whole input or output cannot be streamed: say which and why."""
    bad = [k for k in whole_file_settings(q) if k != "channels"]
    if bad:
        raise ParameterError(
            f"realtime conversion cannot apply {', '.join(bad)}: "
            + "these need the whole input or output (loudness and clean measure all of it, proposed_pitch takes the "
            "input's median pitch, formant and effects run on whole files); convert the file with Converter.convert instead"
        )
    if "channels" in whole_file_settings(q):
        raise ParameterError(
            "realtime conversion takes one mono stream: channels='each' is for whole files (mix the channels down; "
            "one converter per channel also works, but each channel's SOLA joins then move on their own, "
            "so the channels may drift apart by up to search_seconds)"
        )
    if q.output_sample_rate is not None and int(q.output_sample_rate) != sample_rate:
        raise ParameterError(
            f"output_sample_rate={q.output_sample_rate} differs from the stream's sample_rate={sample_rate}: "
            "a realtime converter puts out the rate it takes in"
        )


def _refuse_short_buffer(g: _Geometry, encoder: Any, context_seconds: float) -> None:
    """The buffer the content encoder sees each block (``context + crossfade + search + block``) must
    hold its window (HuBERT / ContentVec: 400 samples at 16 kHz): a shorter one failed at the first
    block, and every block after it, with the encoder's "audio of 320 samples is too short"."""
    need = int(getattr(encoder, "receptive_field", 0) or 0)
    if g.frames * F0_HOP >= need:
        return
    unit = unit_frames(g.rate)
    short = -(-(-(-need // F0_HOP) - g.frames) // unit) * unit  # frames missing, in whole spans of the rate
    raise ParameterError(
        f"block_seconds + context_seconds + crossfade_seconds + search_seconds = {g.frames / 100:g} s is shorter than "
        f"the content encoder's window ({need} samples at 16 kHz, {need / 16:g} ms), which each block is encoded with: "
        f"use context_seconds={(g.context + short) / 100:g} (context_seconds={context_seconds} now) or a longer block"
    )


@dataclass(frozen=True)
class _Geometry:
    """Sizes of one converter, in 10 ms frames unless named otherwise (each a whole number of the
    stream's samples: a multiple of :func:`unit_frames`)."""

    rate: int  # the stream's sample rate
    in_context: int  # frames of the stream's input resampled before the new block (the first holds the resampler's edge)
    block: int
    crossfade: int
    search: int
    context: int
    extra: int  # frames decoded before the SOLA span: the output resampler's run-in
    f0_window: int  # 16 kHz samples the F0 extractor sees per block

    def samples(self, frames: int) -> int:
        """``frames`` in samples at the stream's rate (exact: the geometry's sizes are whole units)."""
        return frames * self.rate // 100

    @property
    def frames(self) -> int:
        """Frames the content encoder, text encoder and flow see (the buffer)."""
        return self.context + self.crossfade + self.search + self.block

    @property
    def decoded(self) -> int:
        """Frames whose output is kept: the SOLA span and the resampler's run-in."""
        return self.block + self.crossfade + self.search + self.extra


class RealtimeConverter:
    """Converts a live mono stream block by block, with a fixed latency (RVC's realtime algorithm).

    ``converter_or_engine`` is a :class:`~rvcfast.Converter` or an :class:`~rvcfast.engine.Engine`.
    ``sample_rate`` is the stream's rate, in and out (a multiple of 25 Hz, 8000..384000: 48000,
    44100, 22050, 16000, 11025...). ``block_seconds`` (the unit of work: one model pass per
    block), ``context_seconds`` (earlier input the models see with each block),
    ``crossfade_seconds`` (≤ the block) and ``search_seconds`` (SOLA's search range; default one
    frame, :data:`SOLA_SEARCH_SECONDS`) are whole multiples of 10 ms that are whole numbers of
    samples at the rate: at 22050 Hz multiples of 20 ms, at 11025 Hz of 40 ms (:func:`unit_frames`).
    Left out (``None``) they are RVC's 0.25 s, 1 s and 0.05 s and one frame of search, rounded
    down to whole spans at such rates (block 0.24 s, crossfade 0.04 s, search one span). ``params`` / ``overrides`` are the
    conversion settings (:class:`~rvcfast.ConversionParams`); those that need the whole
    input (``loudness``, ``formant``, ``clean``, ``effects``, ``proposed_pitch``,
    ``channels='each'``) are refused. ``rms_mix_rate`` applies per block, and
    ``keep_length`` has no effect (the output always has the input's length).

    See the module's documentation for the timing; :attr:`latency_seconds` gives it. The
    output is float32, clipped to [-1, 1]; the offline input and output peak guards scale
    whole files and are not applied.
    """

    def __init__(
        self,
        converter_or_engine: Any,
        sample_rate: int = 48000,
        block_seconds: float | None = None,
        context_seconds: float | None = None,
        crossfade_seconds: float | None = None,
        params: ConversionParams | dict[str, Any] | None = None,
        *,
        search_seconds: float | None = None,
        whole_blocks: bool = False,
        **overrides: Any,
    ) -> None:
        engine = getattr(converter_or_engine, "engine", converter_or_engine)
        if not isinstance(engine, Engine):
            raise ParameterError(f"RealtimeConverter needs a Converter or an Engine, got {type(converter_or_engine).__name__}")
        if (isinstance(sample_rate, numbers.Real) and not isinstance(sample_rate, (bool, np.bool_))
                and math.isfinite(sample_rate) and float(sample_rate).is_integer()):
            # a NumPy integer (a rate read with NumPy) or a whole float (44100.0) is as good as an int,
            # as in the offline API
            sample_rate = int(sample_rate)
        if (isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 8000 <= sample_rate <= MAX_SAMPLE_RATE
                or sample_rate % 25):
            raise ParameterError(
                f"sample_rate must be a whole number of Hz, a multiple of 25 within 8000..{MAX_SAMPLE_RATE} "
                f"(e.g. 16000, 22050, 44100, 48000), got {sample_rate!r}"
            )
        unit = unit_frames(sample_rate)
        block_seconds = _standard(block_seconds, DEFAULT_BLOCK_SECONDS, unit)
        context_seconds = _standard(context_seconds, DEFAULT_CONTEXT_SECONDS, unit)
        crossfade_seconds = _standard(crossfade_seconds, DEFAULT_CROSSFADE_SECONDS, unit)
        block = _frames("block_seconds", block_seconds, 1, unit, sample_rate)
        crossfade = _frames("crossfade_seconds", crossfade_seconds, 1, unit, sample_rate)
        search_seconds = _standard(search_seconds, SOLA_SEARCH_SECONDS, unit)
        search = _frames("search_seconds", search_seconds, 0, unit, sample_rate)
        context = _frames("context_seconds", context_seconds, 0, unit, sample_rate)
        if crossfade > block:
            raise ParameterError(f"crossfade_seconds={crossfade_seconds} is longer than block_seconds={block_seconds}")
        self.engine = engine
        self.params = engine.params(params, **overrides)
        _refuse_whole_input_params(self.params, sample_rate)
        voc = engine.vocoder
        # the output resampler's run-in (one span of whole samples) and the input's (two frames, or one span)
        extra = min(context, 0 if voc.sample_rate == sample_rate else unit)
        in_context = -(-_IN_CONTEXT_FRAMES // unit) * unit
        self.geometry = _Geometry(sample_rate, in_context, block, crossfade, search, context, extra, self._f0_window(block))
        _refuse_short_buffer(self.geometry, engine.encoder, context_seconds)
        self.sample_rate = sample_rate
        if not isinstance(whole_blocks, (bool, np.bool_)):
            raise ParameterError(f"whole_blocks must be True or False, got {whole_blocks!r}")
        self.whole_blocks = bool(whole_blocks)
        self._extractor = engine.f0_extractor_for(self.params)
        self._head_skip = bool(getattr(voc, "supports_head_skip", False))
        g = self.geometry
        self._sola = Sola(g.samples(block), g.samples(crossfade), g.samples(search))
        self._warned_scale = False
        self.reset()

    def _f0_window(self, block: int) -> int:
        ext = self.engine.f0_extractor
        n = block * F0_HOP + _F0_CONTEXT
        if ext is not None and getattr(ext, "name", "") == "rmvpe":
            n = _RMVPE_CHUNK * ((n - 1) // _RMVPE_CHUNK + 1) - F0_HOP
        return n

    # ------------------------------------------------------------------ facts

    @property
    def block_size(self) -> int:
        """Samples per block at the stream's rate (the unit of work)."""
        return self.geometry.samples(self.geometry.block)

    @property
    def latency_samples(self) -> int:
        """Output delay in samples: ``block`` (unless ``whole_blocks``) ``+ crossfade + search``."""
        g = self.geometry
        return g.samples((0 if self.whole_blocks else g.block) + g.crossfade + g.search)

    @property
    def latency_seconds(self) -> float:
        """:attr:`latency_samples` in seconds (compute time and device buffers not included)."""
        return self.latency_samples / self.sample_rate

    @property
    def real_time_factor(self) -> float | None:
        """Seconds of conversion per second of audio over the blocks converted since the stream
        began (:meth:`reset`), leaving out its first :data:`WARMUP_BLOCKS` (oneDNN builds its
        kernels for the stream's shapes then): below 1 this machine keeps up with a live stream at
        these settings, above it the stream falls behind. ``None`` until a block after those has
        been converted."""
        if self._timed_blocks == 0:
            return None
        return self._compute_seconds / (self._timed_blocks * self.block_size / self.sample_rate)

    @property
    def last_sola_offset(self) -> int:
        """Samples the last block's content was moved earlier by SOLA (0..search)."""
        return self._sola.last_offset

    # ------------------------------------------------------------------ streaming

    def reset(self) -> None:
        """Forget the stream: silent buffers, a fresh noise generator, no pending output."""
        g = self.geometry
        self._pending = np.zeros(0, dtype=np.float32)  # input not yet a whole block
        self._raw = np.zeros(g.samples(g.block + g.in_context), dtype=np.float64)
        self._buf16 = np.zeros(max((g.frames + 1) * F0_HOP, g.f0_window), dtype=np.float64)
        self._blocks = 0  # blocks converted since the start
        self._timed_blocks, self._compute_seconds = 0, 0.0  # after the warm-up (real_time_factor)
        self._f0_cache = np.zeros(g.frames, dtype=np.float64)
        self._out = np.zeros(0 if self.whole_blocks else self.block_size, dtype=np.float32)
        self._sola.reset()
        self._generator: torch.Generator | None = None
        if self.params.noise:
            self._generator = torch.Generator(device=self.engine.device)
            if self.params.seed is not None:
                self._generator.manual_seed(int(self.params.seed) % 2**64)  # torch takes 64 bits; in range, the same stream
            else:
                self._generator.seed()

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add the stream's next samples (1-D float); returns exactly as many output samples.

        A push that fails (a model error, an interrupt) raises after :meth:`reset`: the stream
        then starts again from silence, with the same latency."""
        x = self._checked(samples)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if self.whole_blocks and x.shape[0] % self.block_size:
            raise ParameterError(
                f"whole_blocks=True: each push must hold a whole number of blocks of {self.block_size} samples, got {x.shape[0]}"
            )
        self._pending = np.concatenate([self._pending, x])
        pieces = [self._out]
        b = self.block_size
        try:
            while self._pending.shape[0] >= b:
                block, self._pending = self._pending[:b], self._pending[b:]
                started = time.perf_counter()
                pieces.append(self._process(block))
                if self._blocks > WARMUP_BLOCKS:
                    self._timed_blocks += 1
                    self._compute_seconds += time.perf_counter() - started
        except BaseException:
            self.reset()  # half a push converted: the stream restarts from silence
            raise
        out = np.concatenate(pieces)
        self._out = out[x.shape[0] :]
        return out[: x.shape[0]]

    def flush(self) -> np.ndarray:
        """End the stream: the last :attr:`latency_samples` of output (silence pushed through), then :meth:`reset`."""
        n = self.latency_samples
        if self.whole_blocks:
            out = self.push(np.zeros(-(-n // self.block_size) * self.block_size, dtype=np.float32))[:n]
        else:
            out = self.push(np.zeros(n, dtype=np.float32))
        self.reset()
        return out

    def convert_stream(self, blocks: Iterable[np.ndarray], *, trim_latency: bool = False) -> Iterator[np.ndarray]:
        """Convert an iterable of sample blocks, yielding one output block per input block and
        the :meth:`flush` tail at the end (from the converter's current state; it is reset after).

        ``trim_latency=True`` drops the first :attr:`latency_samples` of output: everything yielded
        then has the input's total length and lines up with it (an offline-like result).
        """
        skip = self.latency_samples if trim_latency else 0
        for block in blocks:
            out = self.push(block)
            if skip:
                cut = min(skip, out.shape[0])
                out, skip = out[cut:], skip - cut
            yield out
        tail = self.flush()
        yield tail[skip:]

    def _checked(self, samples: Any) -> np.ndarray:
        try:
            x = np.asarray(samples)
        except (TypeError, ValueError) as exc:  # a ragged list
            raise AudioError(None, f"realtime input is not an array of samples ({exc})") from None
        if x.ndim != 1:
            raise AudioError(None, f"realtime input must be 1-D mono samples, got shape {x.shape}: mix the channels down (x.mean(axis=1)) first")
        if not np.issubdtype(x.dtype, np.floating):
            raise AudioError(None, f"realtime input must be float samples in [-1, 1], got dtype {x.dtype} (scale integer PCM first)")
        if not np.isfinite(x).all():
            raise AudioError(None, "realtime input holds NaN or infinite samples")
        if x.dtype != np.float32:
            with np.errstate(over="ignore"):
                y = x.astype(np.float32)
            if not np.isfinite(y).all():  # finite float64 beyond float32's range (1e300)
                raise AudioError(
                    None, f"realtime input holds samples beyond float32's range (peak {float(np.abs(x).max()):g}): samples are in [-1, 1]"
                )
            x = y
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak > MAX_INPUT_PEAK:
            raise AudioError(None, f"realtime input peaks at {peak:g}, beyond any PCM format's full scale: samples are in [-1, 1]")
        if not self._warned_scale and peak > _UNSCALED_PEAK:
            self._warned_scale = True
            warnings.warn(
                f"realtime input peaks at {peak:g}, far outside [-1, 1]: integer PCM cast to float "
                "must be divided by its full scale first (32768 for int16); the realtime path has no input peak guard",
                RuntimeWarning,
                stacklevel=3,
            )
        return x

    # ------------------------------------------------------------------ one block

    def _process(self, block: np.ndarray) -> np.ndarray:
        """One block in (the stream's rate), ``block`` samples of output."""
        g = self.geometry
        self._shift_in(block)
        self._blocks += 1
        y = self._model_output()
        if self.params.rms_mix_rate != 1:
            source = self._buf16[self._buf16.shape[0] - g.decoded * F0_HOP :]
            y = change_rms(source, SR_16K, y, self.engine.sample_rate, self.params.rms_mix_rate)
        y = resample(np.asarray(y, dtype=np.float32), self.engine.sample_rate, self.sample_rate, dtype=np.float32)
        # resample's length rule, ceil(n * target / orig) in floating point, gives one sample too
        # many for some pairs of rates (40000 -> 22000): the exact count is that of the decoded frames
        span = y[g.samples(g.extra) : g.samples(g.decoded)]
        if not np.isfinite(span).all():  # np.clip keeps NaN: it would reach the caller (and the next join)
            bad = int(span.size - np.count_nonzero(np.isfinite(span)))
            raise RvcfastError(f"the voice model gave {bad} NaN or infinite output samples for block {self._blocks} of the stream")
        return np.clip(self._sola.step(span), -1.0, 1.0)

    def _shift_in(self, block: np.ndarray) -> None:
        """Shift a block into the 16 kHz buffer (and the caller's-rate run-in of the resampler)."""
        g = self.geometry
        n16 = g.block * F0_HOP
        self._raw = np.concatenate([self._raw[block.shape[0] :], block])
        buf = self._buf16
        buf[:-n16] = buf[n16:].copy()
        if self.sample_rate == SR_16K:
            buf[-n16:] = block
            return
        # exactly (block + context frames) * 160 samples: resample's floating-point length rule adds a
        # padding zero at the end for some rates (23200 Hz), which would shift the block by a sample
        y = resample(self._raw, self.sample_rate, SR_16K, dtype=np.float64)[: (g.block + g.in_context) * F0_HOP]
        redo = (g.block + _IN_REDO_FRAMES) * F0_HOP
        buf[-redo:] = y[y.shape[0] - redo :]

    def _model_output(self) -> np.ndarray:
        """The synthesizer's output at the model's rate for the buffer's last ``decoded`` frames."""
        eng, g, q = self.engine, self.geometry, self.params
        voc = eng.vocoder
        window = highpass_48hz(self._buf16)
        # the encoder's 20 ms grid stays on the stream's (as offline, where it is the file's): when
        # the buffer starts on an odd 10 ms frame of the stream, one more frame is encoded and dropped
        odd = (self._blocks * g.block - g.frames) % 2
        audio = window[window.shape[0] - (g.frames + odd) * F0_HOP :]
        with torch.inference_mode():
            f = segment_features(eng.encoder, [audio], voc.version, eng.device, eng.dtype, q.v1_output_layer)[0]
            protects = voc.has_f0 and q.protect < 0.5
            f0feats = f.clone() if protects else None
            if eng.index is not None and q.index_rate != 0:
                f = eng.index.blend(f.float(), q.index_rate).to(f.dtype)
            f = _to_frames(f, g.frames + odd)[odd:]
            pitch = pitchf = None
            if voc.has_f0:
                coarse, hz = self._pitch(window[window.shape[0] - g.f0_window :])
                pitch = torch.from_numpy(coarse).to(eng.device)[None]
                pitchf = torch.from_numpy(hz).to(eng.device)[None]
                if f0feats is not None:
                    f = apply_protect(f, _to_frames(f0feats, g.frames + odd)[odd:], pitchf[0], q.protect)
            head = g.frames - g.decoded
            # a (head, tail) pair only for a vocoder that says it takes one (supports_head_skip);
            # the Vocoder protocol's skip_frames is an int
            skip: Any = (head, 0) if self._head_skip else 0
            out = voc.synthesize(
                f[None].to(eng.dtype), torch.tensor([g.frames], device=eng.device), pitch, pitchf,
                speaker=q.speaker, noise=q.noise, generator=self._generator, skip_frames=skip,
            )
        return out[0, head * voc.hop_length :].float().cpu().numpy()

    def _pitch(self, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """F0 of the buffer's high-passed ``tail`` into the rolling raw cache; the whole buffer's
        pitch, post-processed as the engine does."""
        from .f0.base import checked_track
        from .f0.post import fit_length

        g, ext = self.geometry, self._extractor
        assert ext is not None
        n = g.f0_window // F0_HOP + 1
        who = f"realtime conversion: F0 backend {getattr(ext, 'name', type(ext).__name__)!r}"
        try:
            raw = ext.extract(tail)
        except RvcfastError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the backend
            raise RvcfastError(f"{who} failed: {type(exc).__name__}: {exc}") from exc
        track = fit_length(checked_track(raw, n, who), n)
        cache = self._f0_cache
        cache[: -g.block] = cache[g.block :].copy()
        # the track's frame i is centred on tail sample 160 * i; its frame n - 2 is the buffer's last
        fresh = track[_F0_EDGE_FRAMES:-1]
        m = min(fresh.shape[0], cache.shape[0])
        cache[cache.shape[0] - m :] = fresh[fresh.shape[0] - m :]
        return pitch_track(cache, g.frames, self.params)


def _to_frames(f: torch.Tensor, frames: int) -> torch.Tensor:
    """Content features (50/s) repeated to 100/s and fitted to ``frames`` (the last repeated, as RVC's realtime)."""
    f = f.repeat_interleave(2, dim=0)
    if f.shape[0] < frames:
        f = torch.cat([f, f[-1:].expand(frames - f.shape[0], -1)])
    return f[:frames]
