"""Signal-level stages on numpy arrays: resampling, RVC's high-pass, peak guards, RMS mix.

Resampling is soxr at its very-high-quality setting, called the way the reference calls
it (``librosa.resample(..., res_type="soxr_vhq")``): the result is fitted to
``ceil(len * target / orig)`` samples, one zero sample appended where soxr's rounding
gives one fewer. Long signals are resampled through soxr's stream interface in blocks;
the result is bit-identical to the one-shot call, so memory stays bounded without any
change to the samples.

Everything that reproduces the reference works on float64, as the reference does
(the quiet-point search and the ill-conditioned 48 Hz filter need it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import numpy as np
from numpy.typing import DTypeLike

from .constants import INPUT_PEAK, OUTPUT_PEAK, SR_16K

__all__ = [
    "resampled_length",
    "resample",
    "Resampler",
    "HIGHPASS_A",
    "HIGHPASS_B",
    "highpass_48hz",
    "highpass_blocks",
    "input_peak_guard",
    "output_peak_guard",
    "change_rms",
]

#: soxr quality used for every resampling (the reference's "soxr_vhq").
SOXR_QUALITY = "VHQ"

#: Signals longer than this (samples) are resampled through the stream interface.
_STREAM_BLOCK = 1 << 20


def resampled_length(n: int, orig_sr: int, target_sr: int) -> int:
    """Samples after resampling ``n`` samples: librosa's ``ceil(n * (target / orig))`` in float64."""
    return int(np.ceil(n * (float(target_sr) / orig_sr)))


class Resampler:
    """Resample one mono signal block by block; the concatenated output equals :func:`resample`.

    Feed blocks with :meth:`push` (each returns the samples ready so far) and finish with
    :meth:`flush`, which returns the tail fitted so that the total is
    :func:`resampled_length` of the input (soxr may produce one sample fewer; a zero is
    appended then, as librosa's ``fix_length`` does).
    """

    def __init__(self, orig_sr: int, target_sr: int, dtype: DTypeLike = np.float64) -> None:
        import soxr

        self.orig_sr, self.target_sr = int(orig_sr), int(target_sr)
        self.dtype = np.dtype(dtype)
        self._n_in = 0
        self._n_out = 0
        self._stream = None
        if self.orig_sr != self.target_sr:
            self._stream = soxr.ResampleStream(
                self.orig_sr, self.target_sr, 1, dtype=self.dtype.name, quality=SOXR_QUALITY
            )

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next block (1-D); ``last=True`` marks the end of the signal."""
        x = np.ascontiguousarray(block, dtype=self.dtype)
        self._n_in += x.shape[0]
        y = x.copy() if self._stream is None else self._stream.resample_chunk(x, last=bool(last))
        y = self._fit(y, last)
        self._n_out += y.shape[0]
        return y

    def flush(self) -> np.ndarray:
        """The remaining output once every block has been pushed."""
        return self.push(np.zeros(0, dtype=self.dtype), last=True)

    def _fit(self, y: np.ndarray, last: bool) -> np.ndarray:
        expected = resampled_length(self._n_in, self.orig_sr, self.target_sr)
        room = expected - self._n_out
        if y.shape[0] > room:  # never more than the length rule allows
            y = y[: max(room, 0)]
        if last and y.shape[0] < room:
            y = np.concatenate([y, np.zeros(room - y.shape[0], dtype=self.dtype)])
        return y


def resample(audio: np.ndarray, orig_sr: int, target_sr: int, dtype: DTypeLike | None = None) -> np.ndarray:
    """soxr VHQ resampling of a 1-D signal to ``ceil(len * target / orig)`` samples.

    ``dtype`` (default: float64 for float64 input, else float32) is the precision soxr
    computes in and the result's dtype. Signals over a million samples go through the
    stream interface in blocks (same samples, bounded memory). ``[samples, channels]``
    audio is resampled channel by channel.
    """
    x = np.asarray(audio)
    if x.ndim == 2:
        return np.stack([resample(x[:, c], orig_sr, target_sr, dtype) for c in range(x.shape[1])], axis=1)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal or [samples, channels], got shape {x.shape}")
    dt = np.dtype(dtype) if dtype is not None else (np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32))
    if int(orig_sr) == int(target_sr):
        return x.astype(dt, copy=False)
    n_out = resampled_length(x.shape[0], orig_sr, target_sr)
    out = np.empty(n_out, dtype=dt)
    pos = 0
    for piece in _stream_blocks(x, orig_sr, target_sr, dt):
        out[pos : pos + piece.shape[0]] = piece
        pos += piece.shape[0]
    assert pos == n_out
    return out


def _stream_blocks(x: np.ndarray, orig_sr: int, target_sr: int, dt: np.dtype) -> Iterator[np.ndarray]:
    if x.shape[0] <= _STREAM_BLOCK:
        import soxr

        y = soxr.resample(np.ascontiguousarray(x, dtype=dt), int(orig_sr), int(target_sr), quality=SOXR_QUALITY)
        n_out = resampled_length(x.shape[0], orig_sr, target_sr)
        yield y[:n_out] if y.shape[0] >= n_out else np.concatenate([y, np.zeros(n_out - y.shape[0], dtype=dt)])
        return
    rs = Resampler(orig_sr, target_sr, dt)
    n = x.shape[0]
    for s in range(0, n, _STREAM_BLOCK):
        yield rs.push(x[s : s + _STREAM_BLOCK], last=s + _STREAM_BLOCK >= n)


def resample_stream(
    blocks: Iterable[np.ndarray], orig_sr: int, target_sr: int, dtype: DTypeLike = np.float64
) -> Iterator[np.ndarray]:
    """Resample a signal given as consecutive blocks; yields output blocks (total as :func:`resample`)."""
    rs = Resampler(orig_sr, target_sr, dtype)
    for block in blocks:
        out = rs.push(block)
        if out.shape[0]:
            yield out
    tail = rs.flush()
    if tail.shape[0]:
        yield tail


# ---------------------------------------------------------------------- RVC's signal stages


#: ``scipy.signal.butter(N=5, Wn=48, btype="high", fs=16000)``: the reference's input
#: high-pass, as float64 literals (tests check them against scipy), so that filtering needs
#: no ``scipy.signal``: importing it takes ~0.65 s (it parses docstrings and pulls in
#: ``scipy.stats``), which every process that converts anything used to pay.
HIGHPASS_B = np.array(
    [0.9699606451838447, -4.849803225919223, 9.699606451838447, -9.699606451838447, 4.849803225919223, -0.9699606451838447]
)
HIGHPASS_A = np.array(
    [1.0, -4.939001819168364, 9.757863526739543, -9.639544849413458, 4.761506797356209, -0.9408236532054606]
)
#: scipy ``filtfilt``'s default edge extension for these coefficients: ``3 * max(len(a), len(b))``.
_PADLEN = 3 * len(HIGHPASS_A)
#: Samples after which the filter's responses are below 1e-21 of their start (slowest pole
#: |p| = 0.9942): the filter is applied as a convolution with responses this long.
_RESPONSE_LEN = 8192


@functools.lru_cache(maxsize=1)
def _highpass_responses() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 48 Hz filter as ``lfilter`` runs it (transposed direct form II), precomputed once.

    Returns the impulse response ``h`` (``[L]``), the responses to each unit initial state
    with zero input (``[L, 5]``), and ``lfilter_zi`` (the steady state for a unit step), so
    that ``lfilter(b, a, x, zi=z) == conv(h, x)[:n] + free @ z`` to float64 rounding. Both
    responses are the same recursion ``lfilter`` runs, started from different states.
    """
    b, a = HIGHPASS_B, HIGHPASS_A
    order = len(a) - 1
    states = np.zeros((order, order + 1))
    states[:, :order] = np.eye(order)
    states[:, order] = b[1:] - a[1:] * b[0]  # the state after an impulse's first sample
    out = np.empty((_RESPONSE_LEN, order + 1))
    for n in range(_RESPONSE_LEN):
        y = states[0].copy()
        out[n] = y
        states[:-1] = states[1:]
        states[-1] = 0.0
        states -= a[1:, None] * y
    h = np.concatenate([[b[0]], out[:-1, order]])
    companion = np.zeros((order, order))
    companion[0] = -a[1:]
    companion[1:, :-1] = np.eye(order - 1)
    zi = np.linalg.solve(np.eye(order) - companion.T, b[1:] - a[1:] * b[0])
    return h, out[:, :order], zi


#: FFT length of the overlap-save convolution (each block yields ``size - L + 1`` samples).
_FFT_SIZE = 1 << 15


@functools.lru_cache(maxsize=4)
def _response_spectrum(size: int) -> np.ndarray:
    return np.fft.rfft(_highpass_responses()[0], size)


def _convolve_response(x: np.ndarray) -> np.ndarray:
    """``np.convolve(x, h)[:len(x)]`` by overlap-save with short FFTs (cache-sized blocks)."""
    n, taps = x.shape[0], _RESPONSE_LEN
    size = min(_FFT_SIZE, 1 << int(n + taps - 1).bit_length())
    step = size - taps + 1
    blocks = -(-n // step)
    padded = np.zeros((blocks - 1) * step + size)
    padded[taps - 1 : taps - 1 + n] = x
    frames = np.lib.stride_tricks.as_strided(padded, (blocks, size), (step * padded.strides[0], padded.strides[0]))
    y = np.fft.irfft(np.fft.rfft(frames, axis=1) * _response_spectrum(size), size, axis=1)[:, taps - 1 :]
    return y.reshape(-1)[:n]


def _lfilter_from(x: np.ndarray, scale: float) -> np.ndarray:
    """``scipy.signal.lfilter(b, a, x, zi=lfilter_zi(b, a) * scale)`` for the 48 Hz filter."""
    _, free, zi = _highpass_responses()
    n = x.shape[0]
    y = _convolve_response(x)
    m = min(n, free.shape[0])
    y[:m] += free[:m] @ (zi * scale)
    return y


def _filtfilt_edges(x: np.ndarray, first: bool = True, last: bool = True) -> np.ndarray:
    """scipy's ``filtfilt`` (odd extension of ``_PADLEN`` samples) for the 48 Hz filter; a
    block edge that is not a true signal end (``first``/``last`` False) gets no extension
    (the caller's overlap is the run-in)."""
    left = 2 * x[0] - x[_PADLEN:0:-1] if first else x[:0]
    right = 2 * x[-1] - x[-2 : -_PADLEN - 2 : -1] if last else x[:0]
    ext = np.concatenate([left, x, right])
    y = _lfilter_from(ext, ext[0])[::-1]
    y = _lfilter_from(y, y[0])[::-1]
    return y[len(left) : len(left) + len(x)]


def highpass_48hz(audio: np.ndarray) -> np.ndarray:
    """Zero-phase order-5 Butterworth high-pass at 48 Hz (16 kHz), float64: ``scipy.signal.filtfilt``
    with its defaults, computed as FFT convolutions with the filter's responses (equal to
    scipy's result within this ill-conditioned filter's own float64 rounding, ~3e-8 of the peak)."""
    x = np.asarray(audio, dtype=np.float64)
    if x.shape[-1] <= _PADLEN:
        # filtfilt needs more samples than its edge extension; pad with zeros and cut back.
        n = x.shape[-1]
        return _filtfilt_edges(np.pad(x, (0, _PADLEN + 1 - n)))[:n]
    return _filtfilt_edges(x)


def highpass_blocks(
    audio: np.ndarray, block: int = SR_16K * 60, overlap: int = SR_16K, out: np.ndarray | None = None
) -> np.ndarray:
    """RVC's 48 Hz zero-phase high-pass on overlapping blocks (``filtfilt`` to float64 rounding).

    The filter's impulse response decays below 1e-21 within 8192 samples, so 1 s of
    overlap loses nothing; the result differs from one ``filtfilt`` call only by that
    ill-conditioned filter's own float64 rounding (about 5e-8 relative). The true ends
    of the signal get scipy's odd extension exactly as ``filtfilt`` does. ``out`` (same
    length) receives the result, so a caller can filter into a slice of a larger buffer.
    """
    n = audio.shape[0]
    if out is None:
        out = np.empty(n, dtype=np.float64)
    if n <= block + 2 * overlap:
        out[:] = highpass_48hz(audio)
        return out
    for s in range(0, n, block):
        lo = max(0, s - overlap)
        hi = min(n, s + block + overlap)
        # interior block edges get no odd extension: the overlap is a run-in that is dropped
        y = _filtfilt_edges(np.asarray(audio[lo:hi], dtype=np.float64), first=lo == 0, last=hi == n)
        out[s : min(n, s + block)] = y[s - lo : s - lo + min(block, n - s)]
    return out


def input_peak_guard(audio: np.ndarray) -> np.ndarray:
    """RVC's input limiter: divide by ``max|x| / 0.95`` if that exceeds 1; quieter audio is untouched."""
    if audio.size == 0:
        return audio
    audio_max = np.abs(audio).max() / INPUT_PEAK
    if audio_max > 1:
        audio = audio / audio_max
    return audio


def output_peak_guard(audio: np.ndarray) -> np.ndarray:
    """RVC's output limiter: divide by ``max|y| / 0.99`` if that exceeds 1 (in place for float32 arrays)."""
    if audio.size == 0:
        return audio
    audio_max = np.abs(audio).max() / OUTPUT_PEAK
    if audio_max > 1:
        audio /= audio_max
    return audio


def _rms_frames(y: np.ndarray, frame_length: int, hop_length: int, block: int = 1 << 21) -> np.ndarray:
    """librosa ``feature.rms`` (``center=True``, zero padding), in bounded memory.

    With ``frame_length == 2 * hop_length`` (every rate RVC uses) frame ``i`` covers
    hop-blocks ``i - 1`` and ``i`` of the signal, so only per-hop sums of squares are
    needed; otherwise a cumulative sum is used.
    """
    n = y.shape[0]
    if frame_length == 2 * hop_length:
        step = block - block % hop_length or hop_length
        n_blocks = -(-n // hop_length)
        sums = np.zeros(n_blocks + 1, dtype=np.float64)
        for s in range(0, n, step):
            chunk = np.asarray(y[s : s + step], dtype=np.float64)
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
