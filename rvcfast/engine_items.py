"""The inputs of one :meth:`Engine.run <rvcfast.Engine.run>` on their way through it, and how
their failures are told.

:class:`Item` is one input (or one further channel of an input converted with
``channels="each"``): its prepared audio, settings, pitch track, output buffer and error.
The helpers here join an input's channels, hand out F0 tracks per channel, check what the
models gave back for a segment, and word an input's failure so that it names the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import AudioError, Cancelled, ParameterError, RvcfastError
from .params import ConversionParams
from .pipeline import PreparedAudio
from .protocols import CancelFlag

__all__ = [
    "COMPUTE",
    "Failure",
    "Item",
    "channel_tracks",
    "check_cancel",
    "checked_piece",
    "contained",
    "describe",
    "given_params",
    "join_channels",
    "shared_key_target",
    "share_keys",
    "too_short",
]

#: In run()'s list of F0 tracks: the engine extracts this one (a further channel, or ``None`` given).
COMPUTE = object()


@dataclass
class Item:
    """One input on its way through :meth:`Engine.run <rvcfast.Engine.run>`."""

    prep: PreparedAudio
    params: ConversionParams
    timings: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    coarse: np.ndarray | None = None
    pitchf: np.ndarray | None = None
    buffer: np.ndarray | None = None
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # output samples each segment fills (from its offset)
    channels: list[Item] = field(default_factory=list)  # channels="each": the further channels' items
    owner: int = 0  # the input's position in run()'s list (a further channel: its input's)
    key: int | None = None  # proposed_pitch's semitones, shared by the input's channels (channels="each")
    synthesized: int = 0  # output samples of its segments synthesised so far


class Failure(RvcfastError):
    """An input's failure as reported in its Result (the message names the input)."""


def shared_key_target(params: ConversionParams) -> float | None:
    """The ``proposed_pitch`` target an input's channels share one key for, or ``None``: not set,
    or autotune on (which ignores it)."""
    return None if params.autotune > 0 else params.proposed_pitch


def share_keys(items: list[Item], tracks: Mapping[int, np.ndarray]) -> None:
    """One proposed-pitch key per multi-channel input (``channels="each"``), set on its channels'
    items: each channel worked out its own offset from its own median, so a stereo input could
    come out with its channels a semitone apart. ``tracks``: the checked raw F0 track of each
    item by ``id``; an input whose channels are not all there (one failed) is left alone."""
    from .f0.post import proposed_pitch_offset_of_channels

    for item in items:
        target = shared_key_target(item.params)
        if not item.channels or target is None:
            continue
        group = [item, *item.channels]
        if all(id(member) in tracks for member in group):
            key = proposed_pitch_offset_of_channels([tracks[id(member)] for member in group], target)
            for member in group:
                member.key = key


def join_channels(item: Item) -> None:
    """Give a multi-channel input's item the ``[samples, channels]`` output of all its channels
    (or the first channel's failure), and their seconds."""
    group = [item, *item.channels]
    for k, channel in enumerate(item.channels, start=1):
        for stage, seconds in channel.timings.items():
            item.timings[stage] = item.timings.get(stage, 0.0) + seconds
        if item.error is None and channel.error is not None:
            text, label = str(channel.error), item.prep.label
            if label and text.startswith(f"{label}: "):  # "song.wav: channel 2: F0 extraction failed ..."
                text = text[len(label) + 2 :]
            item.error = Failure(f"{label or 'input'}: channel {k + 1}: {text}")
            item.error.__cause__ = channel.error.__cause__
    if item.error is None and all(g.buffer is not None for g in group):
        item.buffer = np.stack([g.buffer for g in group], axis=1)  # type: ignore[misc]
    for channel in item.channels:
        channel.buffer = None


def channel_tracks(items: list[Item], f0: list[Any]) -> list[Any]:
    """One F0 track per input, then one per further channel (``channels="each"``), in the order
    of :meth:`Engine.run`'s items: an input's track may be a tuple of one track per channel;
    a single track is the first channel's, the others are extracted (an exception, the reason
    the input's F0 failed, is every channel's: nothing is extracted for an input that failed)."""
    firsts: list[Any] = []
    rest: list[Any] = []
    for item, track in zip(items, f0):
        if isinstance(track, tuple) and item.channels:
            if len(track) != 1 + len(item.channels):
                raise ParameterError(
                    f"{item.prep.label or 'input'}: {len(track)} F0 tracks given for an input of {1 + len(item.channels)} channels"
                )
            firsts.append(track[0])
            rest.extend(track[1:])
        else:
            firsts.append(track)
            rest.extend([track if isinstance(track, BaseException) else COMPUTE] * len(item.channels))
    return firsts + rest


def too_short(prep: PreparedAudio, params: ConversionParams) -> AudioError:
    """The error of an input too short to give one output frame."""
    need = "10 ms with keep_length" if params.keep_length else "25 ms (10 ms with keep_length=True)"
    return AudioError(prep.label, f"audio is too short to convert: {1000 * prep.seconds:.1f} ms gives no output; at least {need} is needed")


def check_cancel(cancel: CancelFlag | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("the conversion was cancelled")


def contained(exc: BaseException, who: str) -> BaseException:
    """``exc``, or for a plugin's ``sys.exit()`` an error saying so: it must not end the command or the server."""
    if isinstance(exc, SystemExit):
        return RvcfastError(f"{who} called sys.exit({exc.code!r})")
    return exc


def checked_piece(piece: np.ndarray, want: int, segment: int, segments: int, label: str | None) -> np.ndarray:
    """One segment's trimmed output, or an :class:`RvcfastError` naming the input (``label``) when
    the models gave one that cannot be used: not ``want`` samples (a vocoder or content encoder
    that does not keep RVC's frame geometry: a short piece would leave part of the output
    unwritten) or not finite (NaN or infinite samples are never returned as audio)."""
    where = f"{label or 'input'}" + (f": segment {segment + 1} of {segments}" if segments > 1 else "")
    got = np.asarray(piece)
    if got.ndim != 1 or got.shape[0] != want:
        raise RvcfastError(
            f"{where}: the voice model gave {got.shape[0] if got.ndim == 1 else f'an array of shape {got.shape} as'} output "
            f"samples, expected {want}: its vocoder or content encoder does not give hop_length samples per frame"
        )
    if got.size and not np.isfinite(got).all():
        bad = int(got.size - np.count_nonzero(np.isfinite(got)))
        raise RvcfastError(f"{where}: the voice model gave {bad} NaN or infinite output samples of {got.size}")
    return got


def describe(label: str | None, what: str, exc: BaseException) -> str:
    """The message of an input's failure: names the input (``label``) once, then the reason."""
    text = str(exc)
    if isinstance(exc, RvcfastError):
        # rvcfast's own errors already say what went wrong (and usually name the file first)
        return text if (label is None or text.startswith(f"{label}:")) else f"{label}: {text}"
    where = f"{label}: " if label else ""
    return f"{where}{what}: {type(exc).__name__}: {text}"


def given_params(params: Any, n: int) -> list[Any]:
    """``run()``'s ``params``: one settings object (a ConversionParams, a mapping or ``None``:
    the defaults) for all ``n`` inputs, or a sequence of one per input."""
    if params is None or isinstance(params, (ConversionParams, Mapping)):
        return [params] * n
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        raise ParameterError(
            f"run() takes params as one ConversionParams (or mapping) or one per input, got {type(params).__name__}"
        )
    asked = list(params)
    if len(asked) != n:
        raise ParameterError(f"run() got {n} inputs but {len(asked)} parameter sets")
    return asked
