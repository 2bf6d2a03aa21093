"""Audio in: decode a file or an array to mono float64 at 16 kHz, and say what was odd about it.

The steps follow the reference (Applio's ``load_audio_infer``): ``soundfile`` decodes to
float64, channels are averaged (``librosa.to_mono``), and anything not at 16 kHz is
resampled with soxr VHQ (:func:`rvcfast.dsp.resample`), fitted to
``ceil(frames * 16000 / rate)`` samples. Files are read block by block and resampled
through soxr's stream interface, so an hour-long file never sits in memory at its
original rate or channel count; the samples are identical to the one-shot call.

:func:`decode` also reports recoverable oddities as warnings (a header that promises
more audio than the file holds, clipping, a DC offset, channels mixed down);
:func:`load_audio_16k` is the plain public form that returns only the samples.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import soundfile as sf

from .constants import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SR_16K
from .dsp import Resampler, resampled_length
from .errors import AudioError, AudioTooLongError, ParameterError
from .local_paths import uri_refusal
from .protocols import _ImportedOnUse
from .sndfile import promised_seconds, sndfile_path

if TYPE_CHECKING:
    import torch
else:  # hints only: decoding audio never imports torch
    torch = _ImportedOnUse("torch")

__all__ = ["AudioInput", "Samples", "Decoded", "decode", "load_audio_16k", "to_mono", "audio_info", "measure_seconds", "samples_array"]

#: Samples: a NumPy array (float, or integer PCM scaled from its full scale), a torch tensor or
#: a list of numbers; ``[samples]`` or ``[samples, channels]`` (a list of rows).
Samples = Union[np.ndarray, "torch.Tensor", Sequence[float], Sequence[Sequence[float]]]
#: What :func:`decode` takes: a path or samples.
AudioInput = Union[str, "os.PathLike[str]", Samples]

#: Frames decoded per block.
_READ_BLOCK = 1 << 18
#: Frames per block after a decode error (keeps as much of a damaged file as possible).
_SALVAGE_BLOCK = 4096
#: Frames per block after a second decode error, read up to the damage.
_MIN_SALVAGE_BLOCK = 256
#: The most a header's frame count is trusted to size the decode buffer with (it grows beyond).
_MAX_PREALLOCATED_SECONDS = 3600
#: libsndfile's frame count for a stream whose length its header does not give (2**63 - 1).
UNKNOWN_FRAMES = 1 << 62
#: A sample this close to full scale counts as "at full scale" for the clipping check.
CLIP_LEVEL = 0.999
#: Consecutive full-scale samples (per channel) that count as a clipped run.
CLIP_RUN = 3
#: A mean above this magnitude is reported as a DC offset (removed by the 48 Hz high-pass).
DC_LEVEL = 0.01

@dataclass
class Decoded:
    """One decoded input: float64 samples at 16 kHz (before any peak guard) and notes on it.

    ``audio`` is mono (1-D), or ``[samples, channels]`` when :func:`decode` was asked to keep
    the channels of an input that has several.
    """

    audio: np.ndarray
    source_rate: int
    channels: int
    label: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.audio.shape[0] / SR_16K


def to_mono(audio: np.ndarray) -> np.ndarray:
    """The channel mean of ``[samples, channels]`` (``librosa.to_mono``); 1-D audio passes through."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise AudioError(None, f"audio must be 1-D or [samples, channels], got shape {audio.shape}")
    if audio.shape[1] == 1:
        return audio[:, 0]
    if audio.shape[1] == 0:
        return np.zeros(audio.shape[0], dtype=audio.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        mono = np.mean(audio.T, axis=0)  # exactly the reference's call on its [channels, samples] view
    if not np.isfinite(mono).all() and np.isfinite(audio).all():
        # channels near the float maximum overflow in the sum: divide first (same value otherwise)
        mono = (audio / audio.shape[1]).sum(axis=1)
    return mono


def load_audio_16k(path_or_array: AudioInput, sample_rate: int | None = None) -> np.ndarray:
    """Decode a file (or take an array with ``sample_rate``) as float64 mono at 16 kHz.

    This is the reference's input stage (soundfile, channel mean, soxr VHQ, length
    ``ceil(frames * 16000 / rate)``) before the input peak guard. Arrays are
    ``[samples]`` or ``[samples, channels]``; integer arrays are scaled to ±1.
    """
    return decode(path_or_array, sample_rate).audio


def decode(
    source: AudioInput,
    sample_rate: int | None = None,
    *,
    name: str | None = None,
    max_seconds: float | None = None,
    keep_channels: bool = False,
) -> Decoded:
    """Decode and validate one input; see :class:`Decoded`. Errors name the file (or ``name``).

    ``max_seconds`` bounds the input's length: decoding stops with
    :class:`~rvcfast.errors.AudioTooLongError` as soon as the audio passes it, whatever
    the file's header says (a server's guard against a small upload that decodes to hours).
    ``keep_channels`` keeps the channels of a multi-channel input (``[samples, channels]``,
    each resampled on its own) instead of mixing them down to mono.
    """
    if isinstance(source, (str, os.PathLike)):
        refusal = uri_refusal(source)
        if refusal is not None:  # pathlib would read s3://b/a.wav as s3:/b/a.wav, "file does not exist"
            raise AudioError(os.fspath(source), refusal)
        return _decode_file(Path(source), sample_rate, max_seconds, keep_channels)
    if not _is_array_like(source):
        raise ParameterError(
            f"{name or 'input'}: expected a file path, an array of samples (NumPy, a list of numbers) or a torch "
            f"tensor, got {type(source).__name__}"
        )
    if isinstance(source, tuple) and len(source) == 2 and _is_array_like(source[0]) and np.ndim(source[1]) == 0:
        raise ParameterError(
            f"{name or 'input'}: a (samples, sample_rate) tuple is a batch input; give one array and its rate "
            "as two arguments: convert(samples, sample_rate)"
        )
    try:
        samples = samples_array(source)
    except (ValueError, TypeError) as exc:  # a ragged list, items that are not numbers
        raise ParameterError(f"{name or 'input'}: the samples are not an array of numbers ({exc})") from None
    decoded = _decode_array(samples, sample_rate, name, keep_channels)
    if max_seconds is not None:
        _check_length(decoded.label, decoded.audio.shape[0] / SR_16K, max_seconds)
    return decoded


def _check_length(label: str | os.PathLike[str] | None, seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise AudioTooLongError(label, f"audio is longer than the {max_seconds:g} s allowed", max_seconds)


def audio_info(path: str | os.PathLike[str]) -> tuple[float, int, int]:
    """``(seconds, sample rate, channels)`` from a file's header (no decoding); 0 s when the
    header does not give the length (a stream)."""
    _check_path(Path(path))  # a pipe or device would be read for ever
    if _holds_text(Path(path)):  # libsndfile's MP3 reader would print its complaints to stderr
        raise AudioError(path, "cannot decode audio: this is a text file, not audio")
    info = sf.info(sndfile_path(path))  # bytes (text on Windows): see sndfile_path
    known = info.samplerate and 0 <= info.frames < UNKNOWN_FRAMES
    return (info.frames / info.samplerate if known else 0.0), int(info.samplerate), int(info.channels)


def measure_seconds(path: str | os.PathLike[str], limit: float) -> tuple[float, bool] | None:
    """Seconds of audio in ``path`` and whether that is its whole length; ``None`` if no
    decoder opens it.

    The length comes from the header (libsndfile's frame count, or the container's
    duration through PyAV) of the decoder :func:`decode` picks, so a file is measured before
    it is decoded. When the header does not give it (a FLAC or a container written as a
    stream), the file is decoded block by block without keeping the samples, and only until
    it passes ``limit`` seconds: the answer is then ``(seconds so far, False)``. Decoding
    errors are left to :func:`decode`, which reports them.
    """
    try:
        src = _source(Path(path))
    except AudioError:
        return None
    try:
        rate = int(src.rate)
        if rate <= 0:
            return None
        if src.frames > 0:  # 0: the header does not give it
            return src.frames / rate, True
        counted, bound = 0, float(limit) * rate
        for block in src.blocks([]):
            counted += block.shape[0]
            if counted > bound:
                return counted / rate, False
        return counted / rate, True
    except AudioError:
        return None
    finally:
        src.close()


def count_channels(path: str | os.PathLike[str]) -> int | None:
    """Channels of the audio in ``path``, from the header of the decoder :func:`decode` picks
    (nothing is decoded); ``None`` if no decoder opens it or the header does not say."""
    try:
        src = _source(Path(path))
    except AudioError:
        return None
    try:
        return int(src.channels) or None
    finally:
        src.close()


# ---------------------------------------------------------------------------------------- files


def _check_path(p: Path) -> None:
    try:
        exists = p.exists()
    except OSError as exc:  # a name too long, a folder on the way that cannot be searched
        raise AudioError(p, f"cannot open the file: {unreachable_reason(exc)}") from None
    if not exists:
        raise AudioError(p, "file does not exist")
    if p.is_dir():
        try:
            with os.scandir(p):
                pass
        except OSError as exc:  # a folder input of a batch whose files cannot be listed
            raise AudioError(p, f"is a folder whose files cannot be listed ({(exc.strerror or str(exc)).strip()})") from None
        raise AudioError(p, "is a directory, expected an audio file")
    if not p.is_file():
        raise AudioError(p, "is not a regular file (a device, pipe or socket)")
    if not os.access(p, os.R_OK):
        raise AudioError(p, "file is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise AudioError(p, "file is empty (0 bytes)")


def unreachable_reason(exc: OSError) -> str:
    """Why the operating system cannot even look at a path (``stat`` failed, not with "no such
    file"): its own words, with the likely cause of a permission error."""
    words = (exc.strerror or str(exc)).strip().rstrip(".")
    if exc.errno == errno.EACCES or isinstance(exc, PermissionError):
        return f"{words} (a folder on its path cannot be searched)"
    return words


def _libsndfile_detail(exc: Exception) -> str:
    # libsndfile's own text ("Format not recognised.") without its "Error opening '<path>': " prefix
    return (getattr(exc, "error_string", "") or str(exc)).strip().rstrip(".")


# MPEG audio frame headers: bitrates (kbit/s) by (MPEG-1?, layer) and sample rates by version bits
_MPEG_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame(head: bytes) -> tuple[int, int, tuple[int, int, int]] | None:
    """``(bytes, samples, (version, layer, rate))`` of the MPEG audio frame whose header is ``head``."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version, layer, rate_i = (head[1] >> 3) & 3, 4 - ((head[1] >> 1) & 3), (head[2] >> 2) & 3
    bitrate_i, padding = head[2] >> 4, (head[2] >> 1) & 1
    if version == 1 or layer == 4 or rate_i == 3 or bitrate_i in (0, 15):
        return None  # reserved values, or free format (no frame length)
    mpeg1 = version == 3
    rate = _MPEG_RATES[version][rate_i]
    bitrate = 1000 * _MPEG_BITRATES[(mpeg1, min(layer, 2) if not mpeg1 else layer)][bitrate_i]
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4, 384, (version, layer, rate)
    per_byte = 144 if (mpeg1 or layer == 2) else 72
    samples = 1152 if (mpeg1 or layer == 2) else 576
    return per_byte * bitrate // rate + padding, samples, (version, layer, rate)


def _mpeg_samples(p: Path) -> int | None:
    """Samples in an MPEG audio file, by walking its frame headers (``None`` when it cannot tell).

    libsndfile takes the length of an MP3 without a Xing/Info/VBRI header from the first
    frame's bitrate and stops reading there, so a variable-bitrate file without one was
    cut short (a 10 s file read as 3 s). Walking the headers gives the real length;
    ``None`` also for a file with such a header (libsndfile's length is then exact).
    """
    import mmap

    with open(p, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos, n = 0, len(data)
        if data[:3] == b"ID3" and n >= 10:  # ID3v2 tag: syncsafe size, plus a footer when flagged
            pos = 10 + sum((data[6 + i] & 0x7F) << (21 - 7 * i) for i in range(4)) + (10 if data[5] & 0x10 else 0)
        start = data.find(b"\xff", pos)
        while 0 <= start < n - 4:  # the first header that a second one follows
            first = _mpeg_frame(data[start : start + 4])
            if first is not None and _same_kind(_mpeg_frame(data[start + first[0] : start + first[0] + 4]), first):
                break
            start = data.find(b"\xff", start + 1)
        else:
            return None
        head = bytes(data[start : start + first[0]])
        if b"Xing" in head or b"Info" in head or b"VBRI" in head:
            return None  # a length header: libsndfile's length is exact
        total, pos = 0, start
        while (frame := _mpeg_frame(data[pos : pos + 4])) is not None and _same_kind(frame, first):
            if pos + frame[0] > n:
                break
            total += frame[1]
            pos += frame[0]
        return total


def _same_kind(frame: tuple[int, int, tuple[int, int, int]] | None, first: tuple[int, int, tuple[int, int, int]]) -> bool:
    return frame is not None and frame[2] == first[2]


class _Stats:
    """Running checks over decoded blocks: clipped runs per channel and the sum (DC) of the
    mono mix, or of each channel when the channels are kept (each is high-passed on its own)."""

    def __init__(self) -> None:
        self.clipped = 0
        self.total: float | np.ndarray = 0.0
        self.count = 0

    def add(self, block: np.ndarray, mono: np.ndarray) -> None:
        """Count one block: ``block`` is ``[frames, channels]``; ``mono`` is its mix (1-D), or
        ``[frames, channels]`` to check each channel's DC offset."""
        # a clipped run: CLIP_RUN equal samples in a row at full scale (a flat top)
        full = np.abs(block) >= CLIP_LEVEL
        if full.shape[0] >= CLIP_RUN and full.any():
            n = full.shape[0]
            run = full[CLIP_RUN - 1 :].copy()
            for k in range(1, CLIP_RUN):
                run &= full[CLIP_RUN - 1 - k : n - k]
                run &= block[CLIP_RUN - k : n - k + 1] == block[CLIP_RUN - 1 - k : n - k]
            self.clipped += int(run.sum())
        with np.errstate(over="ignore", invalid="ignore"):
            self.total = self.total + (mono.sum(axis=0) if mono.ndim == 2 else float(mono.sum()))
        self.count += mono.shape[0]

    def warnings(self, label: str, channels: int) -> list[str]:
        out = []
        if channels > 1:
            out.append(f"{label}: {channels} channels mixed down to mono")
        if self.clipped:
            out.append(
                f"{label}: input appears clipped ({self.clipped} samples in runs of {CLIP_RUN}+ at full scale)"
            )
        means = np.atleast_1d(np.asarray(self.total, dtype=np.float64) / self.count) if self.count else np.zeros(1)
        for c, mean in enumerate(means):
            if np.isfinite(mean) and abs(mean) > DC_LEVEL:
                where = f" in channel {c + 1}" if means.shape[0] > 1 else ""
                out.append(f"{label}: DC offset of {mean:+.3f}{where} removed (48 Hz high-pass)")
        return out


def _seek(f: sf.SoundFile, frame: int) -> bool:
    try:
        f.seek(frame)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return False
    return True


class _SfSource:
    """A file libsndfile decodes: ``rate``, ``channels``, ``frames``, ``blocks()``."""

    def __init__(self, path: Path, f: sf.SoundFile, frames: int | None = None) -> None:
        self.path, self.f = path, f
        self.rate, self.channels = int(f.samplerate), int(f.channels)
        self.frames = int(f.frames) if frames is None else int(frames)
        self.promised = promised_seconds(f)

    def blocks(self, notes: list[str]) -> Iterator[np.ndarray]:
        """float64 ``[frames, channels]`` blocks; damage becomes a note (see :func:`_blocks`)."""
        return _blocks(self, notes)

    def _reposition(self, frame: int) -> bool:
        """Put the reader at ``frame`` after a decode error: a seek, else the file opened again."""
        if _seek(self.f, frame):
            return True
        try:
            fresh = sf.SoundFile(sndfile_path(self.path))
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError):
            return False
        if not _seek(fresh, frame):
            fresh.close()
            return False
        self.f.close()
        self.f = fresh
        return True

    def close(self) -> None:
        self.f.close()


def _blocks(src: _SfSource, notes: list[str]) -> Iterator[np.ndarray]:
    """Decode ``src``'s file in blocks of float64 ``[frames, channels]``.

    A decode error makes the reader go back and continue in smaller blocks (reopening the
    file when libsndfile's decoder cannot seek back after the error, as FLAC's cannot once
    it lost sync), so everything before the damage is kept; the damage is then a note (an
    error if nothing was readable).
    """
    # blocks of about _READ_BLOCK samples over all channels: a block of 255 channels read
    # _READ_BLOCK frames at a time held 535 MB of float64 (and as much again for its checks)
    done, size = 0, max(_SALVAGE_BLOCK, _READ_BLOCK // max(1, src.channels))
    detail = ""  # the first error's words: later ones are often about seeking back
    while True:
        try:
            block = src.f.read(size, dtype="float64", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            detail = detail or _libsndfile_detail(exc)
            if size > _MIN_SALVAGE_BLOCK and src._reposition(done):
                size = _SALVAGE_BLOCK if size > _SALVAGE_BLOCK else _MIN_SALVAGE_BLOCK
                continue
            if done == 0:
                raise AudioError(src.path, f"cannot decode audio: {detail}") from None
            total = src.f.frames
            notes.append(
                f"{src.path}: file is damaged: decoding stopped after {done / src.rate:.2f} s"
                + (f" of {total / src.rate:.2f} s" if total > done else "")
                + f" ({detail}); the readable part was converted"
            )
            return
        if block.shape[0] == 0:
            return
        done += block.shape[0]
        yield block


def _source(p: Path) -> _SfSource | Any:
    """libsndfile for what it reads; PyAV (the ``av`` extra) for other containers, and for
    files libsndfile would read only part of."""
    if _holds_text(p):  # a note or a playlist named .mp3: say so (the decoders' own words mislead)
        raise AudioError(p, "cannot decode audio: this is a text file, not audio")
    try:
        f = sf.SoundFile(sndfile_path(p))  # bytes (text on Windows): see sndfile_path
    except sf.LibsndfileError as exc:
        return _other_decoder(p, _libsndfile_detail(exc))
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        raise AudioError(p, f"cannot decode audio ({type(exc).__name__}: {exc})") from None
    try:
        reason, frames = _libsndfile_shortfall(f, p)
    except BaseException:
        f.close()
        raise
    if reason is None:
        return _SfSource(p, f, frames)
    f.close()
    from .av_decode import AvSource, av_available

    if not av_available():
        raise AudioError(p, f'cannot decode audio: {reason}; FFmpeg reads such files, through PyAV: pip install "rvcfast[av]"')
    try:
        return AvSource(p)
    except AudioError as exc:  # say why FFmpeg was asked, not only what it said
        other = exc.problem.removeprefix("cannot decode audio: ")
        raise AudioError(p, f"cannot decode audio: {reason} (libsndfile); {other} (FFmpeg)") from None


def _holds_text(p: Path) -> bool:
    """Whether ``p`` starts with text (no NUL byte, valid UTF-8, printable) rather than audio:
    every audio format rvcfast reads starts with binary bytes (a header, an ID3 tag, an MPEG
    frame sync)."""
    try:
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False  # the decoders report it
    if len(head) < 16 or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the block
            return False
        text = head[: exc.start].decode("utf-8")
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    return printable >= 0.95 * len(text)


#: A file this much larger than its header holds audio even when the header says it holds none.
_HEADER_BYTES = 1024


def _libsndfile_shortfall(f: sf.SoundFile, p: Path) -> tuple[str | None, int | None]:
    """Why libsndfile would not decode the whole of ``f`` (``None``: it will), and the real frame
    count when its header's count is only a wrong estimate that costs nothing to read past."""
    if f.frames >= UNKNOWN_FRAMES:
        # a FLAC written as a stream (no length in its header): libsndfile's reader fails
        # after its reads (python-soundfile seeks past each one)
        return "its header does not give its length (a stream)", None
    size = p.stat().st_size
    if f.frames == 0 and size > _HEADER_BYTES:
        # a WAV whose recorder never wrote the sizes into its header: libsndfile sees no audio
        return f"its header says it holds no audio, but the file has {size} bytes (a recording that was not finished?)", None
    if f.format == "MP3":
        scanned = _mpeg_samples(p)
        slack = max(4 * 1152, f.samplerate // 10)  # encoder delay, padding and the first frame
        if scanned is not None and scanned > f.frames + slack:
            return (
                f"it is an MP3 without a length header (variable bitrate): libsndfile reads only "
                f"{f.frames / f.samplerate:.2f} s of its {scanned / f.samplerate:.2f} s"
            ), None
        if scanned is not None and scanned < f.frames - slack:
            return None, scanned  # libsndfile reads to the end of the file; its estimate was long
    return None, None


def _other_decoder(p: Path, detail: str) -> Any:
    """PyAV for a file libsndfile cannot open (``detail``: libsndfile's reason)."""
    from .av_decode import CONTAINER_EXTENSIONS, AvSource, av_available

    if av_available():
        try:
            return AvSource(p)
        except AudioError as exc:
            if p.suffix.lower() in CONTAINER_EXTENSIONS:
                raise
            # not a container either: say what both decoders said
            other = exc.problem.removeprefix("cannot decode audio: ")
            raise AudioError(p, f"cannot decode audio: {detail} (libsndfile); {other} (FFmpeg)") from None
    if p.suffix.lower() in CONTAINER_EXTENSIONS:
        raise AudioError(p, f'cannot decode audio: {p.suffix} files need PyAV: pip install "rvcfast[av]"')
    raise AudioError(p, f"cannot decode audio: {detail}")


def _decode_file(p: Path, sample_rate: int | None, max_seconds: float | None = None, keep_channels: bool = False) -> Decoded:
    _check_path(p)
    src = _source(p)
    try:
        sr, channels, frames = src.rate, src.channels, src.frames
        if sample_rate is not None and _rate_arg(sample_rate, p) != sr:
            raise ParameterError(f"{p}: sample_rate={sample_rate} given for a file whose rate is {sr}")
        _check_rate(p, sr)
        notes: list[str] = []
        stats = _Stats()
        blocks = src.blocks(notes)
        if max_seconds is not None:
            blocks = _bounded(blocks, p, sr, max_seconds)
        keep = keep_channels and channels > 1
        out, n_in = _consume(blocks, p, sr, frames, stats, keep)
    finally:
        src.close()
    warnings = notes + stats.warnings(str(p), 1 if keep else channels)
    promised = getattr(src, "promised", None)
    if promised is not None:
        warnings.insert(0, f"{p}: file is truncated: its header promises {promised:.2f} s of audio, it holds {n_in / sr:.2f} s")
    elif frames > 0 and n_in < frames - sr // 100 and not notes:
        warnings.insert(0, f"{p}: file is truncated: its header promises {frames / sr:.2f} s of audio, it holds {n_in / sr:.2f} s")
    return Decoded(out, sr, channels, str(p), warnings)


def _bounded(blocks: Iterator[np.ndarray], p: Path, sr: int, max_seconds: float) -> Iterator[np.ndarray]:
    """``blocks``, stopping with :class:`AudioTooLongError` once they pass ``max_seconds``."""
    seen = 0
    for block in blocks:
        seen += block.shape[0]
        _check_length(p, seen / sr, max_seconds)
        yield block


def _consume(
    blocks: Iterator[np.ndarray], p: Path, sr: int, frames: int, stats: _Stats, keep_channels: bool = False
) -> tuple[np.ndarray, int]:
    """Mix each block to mono, check it and resample it to 16 kHz into one buffer (with
    ``keep_channels``: each channel into its own, ``[samples, channels]``)."""
    if keep_channels:
        return _consume_channels(blocks, p, sr, frames, stats)
    resampler = Resampler(sr, SR_16K)
    # a header's frame count sizes the buffer, up to an hour's worth: beyond that (a length
    # libsndfile does not know is 2**63 - 1) the buffer grows with what is really decoded
    known = min(max(frames, 0), _MAX_PREALLOCATED_SECONDS * sr)
    out = np.empty(resampled_length(known, sr, SR_16K), dtype=np.float64)
    pos = n_in = 0
    for block in blocks:
        mono = to_mono(block)
        if not np.isfinite(mono).all():
            raise AudioError(p, f"audio contains {int((~np.isfinite(mono)).sum())} NaN or Inf samples")
        stats.add(block, mono)
        n_in += mono.shape[0]
        out, pos = _append(out, pos, resampler.push(mono))
    if n_in == 0:
        raise AudioError(p, "audio has no samples")
    return _finish(out, pos, resampler), n_in


def _consume_channels(blocks: Iterator[np.ndarray], p: Path, sr: int, frames: int, stats: _Stats) -> tuple[np.ndarray, int]:
    """:func:`_consume` keeping the channels: one resampler per channel, written into one
    ``[samples, channels]`` buffer sized from the header as :func:`_consume` sizes its own."""
    resamplers: list[Resampler] = []
    out = np.empty((0, 1), dtype=np.float64)
    pos = n_in = 0
    for block in blocks:
        data = block if block.ndim == 2 else block[:, None]
        if not np.isfinite(data).all():
            raise AudioError(p, f"audio contains {int((~np.isfinite(data)).sum())} NaN or Inf samples")
        if not resamplers:
            resamplers = [Resampler(sr, SR_16K) for _ in range(data.shape[1])]
            known = min(max(frames, 0), _MAX_PREALLOCATED_SECONDS * sr)
            out = np.empty((resampled_length(known, sr, SR_16K), data.shape[1]), dtype=np.float64)
        stats.add(data, data)  # each channel is high-passed on its own: its own DC offset
        n_in += data.shape[0]
        out, pos = _append(out, pos, np.stack([rs.push(data[:, c]) for c, rs in enumerate(resamplers)], axis=1))
    if n_in == 0:
        raise AudioError(p, "audio has no samples")
    tail = np.stack([rs.flush() for rs in resamplers], axis=1)
    total = pos + tail.shape[0]
    if total > out.shape[0]:
        return np.concatenate([out[:pos], tail]), n_in
    out[pos:total] = tail
    return out[:total], n_in


def _append(out: np.ndarray, pos: int, piece: np.ndarray) -> tuple[np.ndarray, int]:
    """Write ``piece`` at ``pos``; grows ``out`` when the header under-reported the length."""
    end = pos + piece.shape[0]
    if end > out.shape[0]:
        grown = np.empty((max(end, 2 * out.shape[0]), *out.shape[1:]), dtype=out.dtype)
        grown[:pos] = out[:pos]
        out = grown
    out[pos:end] = piece
    return out, end


def _finish(out: np.ndarray, pos: int, resampler: Resampler) -> np.ndarray:
    tail = resampler.flush()
    total = pos + tail.shape[0]
    if total > out.shape[0]:
        out = np.concatenate([out[:pos], tail])
    else:
        out[pos:total] = tail
        out = out[:total]
    return out


# ---------------------------------------------------------------------------------------- arrays


def _check_rate(label: str | os.PathLike[str] | None, sr: int) -> None:
    if not (MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE):
        raise AudioError(label, f"sample rate {sr} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")


def _is_array_like(source: Any) -> bool:
    """An array, a list or tuple of samples, a torch tensor or anything NumPy converts (``__array__``)."""
    return isinstance(source, (np.ndarray, list, tuple)) or hasattr(source, "detach") or hasattr(source, "__array__")


def samples_array(source: Any) -> np.ndarray:
    """``source`` as a NumPy array: a torch tensor on any device, in any precision (bfloat16 and
    float16 included) and with or without grad is detached, moved to the CPU and floating point
    ones widened to float64; anything else goes through ``np.asarray``."""
    if hasattr(source, "detach") and hasattr(source, "is_floating_point"):
        tensor = source.detach().cpu()
        return (tensor.double() if tensor.is_floating_point() else tensor).numpy()
    return np.asarray(source)


def _rate_arg(sample_rate: Any, label: str | os.PathLike[str]) -> int:
    """``sample_rate`` as an int; a fraction, NaN, text, a bool or a non-number is a :class:`ParameterError`."""
    if isinstance(sample_rate, (str, bytes, bool, np.bool_)):
        raise ParameterError(f"{label}: sample_rate must be a whole number of Hz, got {sample_rate!r}")
    try:
        value = float(sample_rate)
    except (TypeError, ValueError, OverflowError):
        value = float("nan")
    if not value.is_integer():
        raise ParameterError(f"{label}: sample_rate must be a whole number of Hz, got {sample_rate!r}")
    return int(value)


def pcm_to_float(data: np.ndarray, label: str | None) -> np.ndarray:
    """Integer PCM samples as float64 in -1..1, as a file of that PCM type reads: full scale is
    ``2**(bits-1)``, and unsigned PCM (8-bit WAV) is centred on it. 64-bit integers are refused
    with an :class:`AudioError`: no PCM is 64-bit, and what arrives so is a list of ints or
    16-bit samples widened to int64, which scaled from ``2**63`` were near-silence."""
    if data.dtype.itemsize > 4:
        raise AudioError(
            label,
            f"array dtype {data.dtype}: integer samples are PCM, scaled from their type's full scale, and no PCM "
            "is 64-bit (a list of ints becomes int64); pass floats in -1..1, or .astype(np.int16) for 16-bit PCM",
        )
    info = np.iinfo(data.dtype)
    half = float(2 ** (info.bits - 1))
    return (data.astype(np.float64) - (half if info.min == 0 else 0.0)) / half


def _array_samples(source: np.ndarray, label: str) -> np.ndarray:
    data = np.asarray(source)
    if data.ndim == 2 and 0 < data.shape[0] < data.shape[1]:
        # [samples, channels] with more channels than samples is a [channels, samples] array
        raise AudioError(label, f"array of shape {data.shape} looks channels-first; pass [samples, channels]")
    if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
        raise AudioError(label, f"array dtype {data.dtype} is not a number type")
    if np.issubdtype(data.dtype, np.integer):
        data = pcm_to_float(data, label)
    data = data.astype(np.float64, copy=False)
    if data.ndim not in (1, 2):
        raise AudioError(label, f"audio must be 1-D or [samples, channels], got shape {data.shape}")
    if data.ndim == 2 and data.shape[1] == 0:
        raise AudioError(label, f"array of shape {data.shape} has no channels")
    return data


def _decode_array(source: np.ndarray, sample_rate: int | None, name: str | None, keep_channels: bool = False) -> Decoded:
    label = name or "array input"
    if sample_rate is None:
        raise ParameterError(f"{label}: sample_rate is required for array input")
    sr = _rate_arg(sample_rate, label)
    _check_rate(label, sr)
    data = _array_samples(source, label)
    channels = 1 if data.ndim == 1 else int(data.shape[1])
    mono = to_mono(data)
    if mono.size == 0:
        raise AudioError(label, "audio has no samples")
    if not np.isfinite(mono).all():
        raise AudioError(label, f"audio contains {int((~np.isfinite(mono)).sum())} NaN or Inf samples")
    stats = _Stats()
    keep = keep_channels and channels > 1
    stats.add(data if data.ndim == 2 else data[:, None], data if keep else mono)
    from .dsp import resample

    if keep:
        kept = np.stack([resample(data[:, c], sr, SR_16K, dtype=np.float64) for c in range(channels)], axis=1)
        return Decoded(kept, sr, channels, label, stats.warnings(label, 1))
    return Decoded(resample(mono, sr, SR_16K, dtype=np.float64), sr, channels, label, stats.warnings(label, channels))
