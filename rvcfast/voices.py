"""One input, many voices: :func:`convert_voices` analyses each input once for every voice.

Converting the same inputs to several voices with one :class:`~rvcfast.Converter` each
repeats the work that does not depend on the voice: the F0 track and the content
features. Here each voice runs the ordinary batch (:meth:`Converter.iter_batch`: decoding,
writing, naming, resume and failure isolation are the batch's), but every voice's engine
reads the F0 tracks and content features through a shared, bounded memo
(:class:`SharedAnalysis`), so they are computed for the first voice that needs them and
taken from memory by the others. Only the index blend, the synthesizer and the
post-processing run per voice.

What is shared, and what makes two requests the same:

* **F0**: the raw track of an input's 16 kHz signal, per F0 setting (backend, options, weights
  and ``filter_radius``): voices loaded alike share it, a voice with another backend gets its
  own; the key shift, autotune, formant and the other pitch settings are applied per voice
  afterwards.
* **Content features**: per segment, per encoder object, output layer (v1 or v2 voices),
  final projection and precision. Voices loaded with the same encoder file share the
  encoder object (the model cache), so their features are computed once.

The memo holds raw F0 tracks without limit (400 bytes per second of audio) and content
features up to ``shared_memory_mb``; features found after the memo is full are computed
again for each voice (the outputs are the same, only slower).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

# at run time, not only for type checkers: typing.get_type_hints() on this module's public
# callables must resolve (FastAPI, pydantic, sphinx call it). No cycle: none of these imports
# this module. api imports torch, which any use of a voice needs anyway.
from .api import Converter
from .engine import Engine
from .errors import ParameterError
from .params import ConversionParams
from .protocols import F0Extractor, FeatureEncoder
from .result import Result

__all__ = ["SharedAnalysis", "convert_voices", "iter_voices", "without_shared"]

#: Content features kept for the later voices by default (about an hour of audio for v2 voices in float32).
DEFAULT_SHARED_MB = 512.0


def _digest(data: np.ndarray) -> bytes:
    """A 16-byte fingerprint of an array's values (its bytes, shape and dtype)."""
    arr = np.ascontiguousarray(data)
    h = hashlib.blake2b(digest_size=16)
    h.update(str((arr.dtype.str, arr.shape)).encode())
    h.update(arr.view(np.uint8).reshape(-1).data)
    return h.digest()


def _tensor_digest(t: torch.Tensor) -> bytes:
    """:func:`_digest` of a tensor's values (any dtype, any device)."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype in (torch.bfloat16, torch.float16):
        flat = flat.view(torch.int16)
    return _digest(flat.cpu().numpy()) + str(t.dtype).encode()


class SharedAnalysis:
    """The memo that engines read F0 tracks and content features through; thread-safe.

    ``max_feature_mb`` bounds the content features it keeps (0: none are kept, only F0
    tracks are shared). By default the first ones stay and later ones are not kept (a batch
    of voices reads the inputs in the same order, voice after voice). ``evict=True`` keeps
    the most recently used ones instead, and bounds the F0 tracks too, by ``max_track_mb``
    (a server, where the same audio comes back in no particular order). ``on_reuse(kind,
    n)``, when given, is called with ``"f0"`` or ``"features"`` and the count each time
    tracks or segments' features are taken from the memo. Counters: ``f0_computed`` /
    ``f0_reused`` (tracks) and ``features_computed`` / ``features_reused`` (segments).
    """

    def __init__(
        self,
        max_feature_mb: float = DEFAULT_SHARED_MB,
        *,
        evict: bool = False,
        max_track_mb: float | None = None,
        on_reuse: Callable[[str, int], None] | None = None,
    ) -> None:
        if not max_feature_mb >= 0:
            raise ParameterError(f"shared_memory_mb must be 0 or more, got {max_feature_mb}")
        if max_track_mb is not None and not max_track_mb >= 0:
            raise ParameterError(f"max_track_mb must be 0 or more, got {max_track_mb}")
        self.max_feature_bytes = int(max_feature_mb * 2**20)
        self.max_track_bytes = None if max_track_mb is None else int(max_track_mb * 2**20)
        self.evict = bool(evict)
        self.on_reuse = on_reuse
        self.feature_bytes = self.track_bytes = 0
        self.f0_computed = self.f0_reused = 0
        self.features_computed = self.features_reused = 0
        self._lock = threading.Lock()
        self._tracks: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._features: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
        # the wrappers in use (an entry goes with the last engine that holds it), and a serial
        # number per model object in the keys: unlike id(), never the number of a later object
        self._encoders: weakref.WeakValueDictionary[int, _SharedEncoder] = weakref.WeakValueDictionary()
        self._extractors: weakref.WeakValueDictionary[tuple[Any, ...], _SharedF0] = weakref.WeakValueDictionary()
        self._serials: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._next_serial = itertools.count()

    def clear(self) -> None:
        """Drop every kept track and feature (the counters stay)."""
        with self._lock:
            self._tracks.clear()
            self._features.clear()
            self.track_bytes = self.feature_bytes = 0

    def _serial(self, obj: Any) -> Any:
        """A number naming ``obj`` in the keys for as long as it lives (an object that cannot be
        weakly referenced is named by itself)."""
        try:
            found = self._serials.get(obj)
            if found is None:
                found = self._serials[obj] = next(self._next_serial)
            return found
        except TypeError:
            return ("object", obj)

    def encoder(self, inner: FeatureEncoder) -> FeatureEncoder:
        """``inner`` reading its features through this memo (one wrapper per encoder object)."""
        inner = getattr(inner, "shared_inner", inner)
        with self._lock:
            found = self._encoders.get(id(inner))  # a live wrapper holds its encoder: the id is its own
            if found is None:
                found = _SharedEncoder(inner, self, self._serial(inner))
                self._encoders[id(inner)] = found
            return found

    def extractor(self, inner: F0Extractor) -> F0Extractor:
        """``inner`` reading its tracks through this memo. rvcfast's extractors that compute alike
        (the same class, settings and networks: :func:`_f0_setting`; two loads of one weights
        file share the cached network) share their tracks; another extractor (a plugin) shares
        only its own. Each call's ``filter_radius`` is part of the key."""
        inner = getattr(inner, "shared_inner", inner)
        if not isinstance(inner, F0Extractor):
            return inner  # not an extractor: left as it is, for the engine to refuse
        with self._lock:
            setting = _f0_setting(inner, self._serial)
            found = self._extractors.get(setting)
            if found is None:
                found = _SharedF0(inner, self, setting)
                self._extractors[setting] = found
            return found

    def engine(self, engine: Engine) -> Engine:
        """A copy of ``engine`` whose encoder and F0 extractor read through this memo; ``engine``
        is left as it was."""
        import copy

        if engine.vocoder.has_f0 and engine.f0_extractor is not None:
            other = engine.with_f0(self.extractor(engine.f0_extractor))
        else:
            other = copy.copy(engine)
        other.encoder = self.encoder(engine.encoder)
        return other

    # ---------------------------------------------------------------- the memo itself

    def _reused(self, kind: str, n: int) -> None:
        if self.on_reuse is not None and n:
            self.on_reuse(kind, n)

    def _has_track(self, key: tuple[Any, ...]) -> bool:
        with self._lock:
            return key in self._tracks

    def _get_track(self, key: tuple[Any, ...]) -> np.ndarray | None:
        with self._lock:
            found = self._tracks.get(key)
            if found is not None:
                self.f0_reused += 1
                self._tracks.move_to_end(key)
        if found is not None:
            self._reused("f0", 1)
        return found

    def _put_track(self, key: tuple[Any, ...], track: np.ndarray) -> None:
        with self._lock:
            self.f0_computed += 1
            if key in self._tracks:
                return
            self._tracks[key] = track
            self.track_bytes += track.nbytes
            while self.max_track_bytes is not None and self.track_bytes > self.max_track_bytes and self._tracks:
                self.track_bytes -= self._tracks.popitem(last=False)[1].nbytes

    def _get_features(self, keys: Sequence[tuple[Any, ...]]) -> list[torch.Tensor] | None:
        """Every key's features, or ``None`` when one is missing (the batch is then encoded whole)."""
        with self._lock:
            found = [self._features.get(k) for k in keys]
            if any(f is None for f in found):
                return None
            self.features_reused += len(keys)
            for k in keys:
                self._features.move_to_end(k)
        self._reused("features", len(keys))
        return found  # type: ignore[return-value]

    def _put_features(self, keys: Sequence[tuple[Any, ...]], rows: Sequence[torch.Tensor]) -> None:
        with self._lock:
            self.features_computed += len(keys)
            for key, row in zip(keys, rows):
                size = row.numel() * row.element_size()
                if key in self._features or size > self.max_feature_bytes:
                    continue
                if self.evict:  # the least recently used make room
                    while self.feature_bytes + size > self.max_feature_bytes:
                        old = self._features.popitem(last=False)[1]
                        self.feature_bytes -= old.numel() * old.element_size()
                elif self.feature_bytes + size > self.max_feature_bytes:
                    continue  # full: the first inputs stay shared, later ones are encoded per voice
                self._features[key] = row
                self.feature_bytes += size


def without_shared(engine: Engine) -> Engine:
    """``engine`` reading its encoder and F0 extractor directly, not through a
    :class:`SharedAnalysis` (itself when it does not): for audio that never comes back, such
    as a live stream's blocks, which would only push useful entries out of the memo."""
    import copy

    encoder = getattr(engine.encoder, "shared_inner", None)
    extractor = getattr(engine.f0_extractor, "shared_inner", None)
    if encoder is None and extractor is None:
        return engine
    other = engine.with_f0(extractor) if extractor is not None else copy.copy(engine)
    if encoder is not None:
        other.encoder = encoder
    return other


class _SharedEncoder:
    """A :class:`~rvcfast.protocols.FeatureEncoder` whose segments' features come from a :class:`SharedAnalysis`.

    A batch row's features depend only on its own samples (the encoder masks the padding),
    so each row is remembered by its samples, its length and the output asked for."""

    def __init__(self, inner: FeatureEncoder, memo: SharedAnalysis, serial: Any) -> None:
        self.inner = self.shared_inner = inner
        self.memo = memo
        self.serial = serial

    def __getattr__(self, name: str) -> Any:  # hidden_size, num_layers, has_final_proj, source_path...
        if name == "inner" or (name.startswith("__") and name.endswith("__")):
            # not set yet (copy and pickle build the object without __init__, then ask for
            # __setstate__): forwarding would ask for self.inner again, for ever
            raise AttributeError(name)
        return getattr(self.inner, name)

    def encode(
        self,
        audio16k: torch.Tensor,
        output_layer: int | None = None,
        final_proj: bool = False,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The inner encoder's ``encode``; rows seen before come from the memo."""
        from .pipeline import n_feature_frames

        n = audio16k.shape[-1]
        sizes = [int(v) for v in lengths.tolist()] if lengths is not None else [n] * audio16k.shape[0]
        setting = (self.serial, output_layer, bool(final_proj), str(audio16k.device))
        keys = [(*setting, _tensor_digest(row[:size])) for row, size in zip(audio16k, sizes)]
        found = self.memo._get_features(keys)
        if found is not None:
            frames = n_feature_frames(n)
            out = torch.zeros(len(found), frames, found[0].shape[-1], dtype=found[0].dtype, device=found[0].device)
            for i, row in enumerate(found):
                out[i, : row.shape[0]] = row
            return out
        feats = self.inner.encode(audio16k, output_layer=output_layer, final_proj=final_proj, lengths=lengths)
        self.memo._put_features(keys, [feats[i, : n_feature_frames(s)].clone() for i, s in enumerate(sizes)])
        return feats


class _SharedF0:
    """An :class:`~rvcfast.protocols.F0Extractor` whose tracks come from a :class:`SharedAnalysis`.

    It runs in the engine's thread (``cpu_bound`` is False), so that the tracks land in the
    memo. ``filter_radius`` is set per call by the engine (on a copy, as for any extractor)
    and applied to the inner one; it is part of the key, with the inner extractor's setting
    and the signal's samples."""

    cpu_bound = False

    def __init__(self, inner: F0Extractor, memo: SharedAnalysis, setting: tuple[Any, ...]) -> None:
        self.inner = self.shared_inner = inner
        self.memo = memo
        self.setting = setting
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self.hop_length = inner.hop_length
        self.filter_radius = 3  # ConversionParams' default; each call's own comes from the engine

    def _resolved(self) -> Any:
        from .f0.base import with_filter_radius

        return with_filter_radius(self.inner, int(self.filter_radius))

    def _key(self, audio: np.ndarray) -> tuple[Any, ...]:
        return (self.setting, int(self.filter_radius), _digest(np.asarray(audio)))

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """The inner extractor's track, computed once per signal."""
        return self.extract_batch([audio16k])[0]

    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The inner extractor's tracks; only the signals not seen before are tracked (in one batch)."""
        keys = [self._key(a) for a in audios]
        out: list[np.ndarray | None] = [self.memo._get_track(k) for k in keys]
        todo = [i for i, t in enumerate(out) if t is None]
        if todo:
            found = list(self._resolved().extract_batch([audios[i] for i in todo]))
            if len(found) != len(todo):
                return found  # a broken backend: the engine says so and retries each input alone
            for i, track in zip(todo, found):
                track = np.asarray(track)
                self.memo._put_track(keys[i], track)
                out[i] = track
        return [np.array(t, copy=True) for t in out]

    def extract_blocks(self, audio16k: np.ndarray) -> list[Callable[[], np.ndarray]]:
        """The inner extractor's blocks (one block when it has none, or when the track is in the
        memo); the track is kept once its last block has run."""
        key = self._key(audio16k)
        if self.memo._has_track(key):  # counted as reused when the block runs, not when it is planned
            return [lambda: self.extract(audio16k)]
        inner = self._resolved()
        blocks = getattr(inner, "extract_blocks", None)
        steps = list(blocks(audio16k)) if blocks is not None else [lambda: inner.extract(audio16k)]
        parts: list[np.ndarray] = []

        def run(k: int, step: Callable[[], Any]) -> np.ndarray:
            part = np.asarray(step())
            parts.append(part)
            if k == len(steps) - 1:
                self.memo._put_track(key, parts[0] if len(parts) == 1 else np.concatenate(parts))
            return part

        return [functools.partial(run, k, step) for k, step in enumerate(steps)]


def check_voice_names(labels: Sequence[str], hint: str = "pass a mapping {name: converter} to name the voices") -> None:
    """Refuse voice names that cannot name outputs: empty, ``.`` or ``..``, or two voices whose
    outputs would take the same names (``/`` and ``\\`` become ``_`` in names; case and Unicode
    normalisation aside: ``café`` composed and decomposed is one name on macOS).
    ``hint`` ends the message (how to name the voices in the caller's API)."""
    from .batch_inputs import _fold, _safe_stem

    spelled: dict[str, str] = {}  # a name as the output names spell it -> the voice's name
    for position, label in enumerate(labels):
        key = _fold(_safe_stem(label))
        if not label or label in (".", "..") or key in spelled:
            other = spelled.get(key, label)
            what = (
                f"the name {label!r}" if not label or label in (".", "..")
                else f"the name {label!r} twice" if other == label
                else f"the name {label!r}, which names its outputs as voice {other!r} does"
            )
            raise ParameterError(f"voice {position}: {what} (two model files with the same stem?); {hint}")
        spelled[key] = label


def _named_voices(voices: Sequence[Converter | Engine] | Mapping[str, Converter | Engine]) -> list[tuple[str, Engine]]:
    """``(name, engine)`` per voice: a mapping's keys, else each engine's ``name`` (its model file's stem)."""
    items = list(voices.items()) if isinstance(voices, Mapping) else [(None, v) for v in voices]
    if not items:
        raise ParameterError("convert_voices needs at least one voice")
    named: list[tuple[str, Engine]] = []
    for position, (name, voice) in enumerate(items):
        engine = voice.engine if isinstance(voice, Converter) else voice
        if not isinstance(engine, Engine):
            raise ParameterError(f"voice {position}: expected a Converter or an Engine, got {type(voice).__name__}")
        named.append((engine.name if name is None else str(name), engine))
    check_voice_names([label for label, _ in named])
    return named


def _check_template(name_template: str, n_voices: int, out_dir: Any) -> None:
    if out_dir is not None and n_voices > 1 and "{voice" not in name_template:
        raise ParameterError(
            f"name_template {name_template!r} has no {{voice}} field: the voices' outputs would take the "
            "same names (e.g. '{voice}/{stem}' or '{stem}-{voice}')"
        )


def _expanded(inputs: Any, out_dir: Any, recursive: bool, name_template: str, kwargs: Mapping[str, Any]) -> list[Any]:
    """The batch's inputs listed once, as the batch lists them, so every voice converts the same
    files (folders are expanded here, before any voice writes into them)."""
    from .batch import BatchOptions
    from .batch_inputs import expand_inputs

    options = BatchOptions(
        out_dir=out_dir, recursive=recursive, name_template=name_template, format=kwargs.get("format", "wav"),
        skip_existing=bool(kwargs.get("skip_existing", False)),
    )
    jobs = expand_inputs(inputs, options)
    return [j.path if j.path is not None else (j.array, j.rate) for j in jobs]


def iter_voices(
    voices: Sequence[Converter | Engine] | Mapping[str, Converter | Engine],
    inputs: Any,
    out_dir: str | os.PathLike[str] | None = None,
    params: ConversionParams | dict[str, Any] | None = None,
    *,
    voice_params: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None,
    name_template: str = "{voice}/{stem}",
    shared_memory_mb: float = DEFAULT_SHARED_MB,
    shared: SharedAnalysis | None = None,
    progress: Any = None,
    recursive: bool = False,
    **kwargs: Any,
) -> Iterator[Result]:
    """Convert every input to every voice, yielding a :class:`~rvcfast.Result` per (input, voice).

    ``voices``: :class:`~rvcfast.Converter` (or :class:`~rvcfast.Engine`) objects, named by
    their model file's stem, or a mapping ``{name: converter}``; the name is the
    Result's ``voice`` and ``name_template``'s ``{voice}`` (default ``"{voice}/{stem}"``: a
    folder per voice; with several voices and ``out_dir`` the template must use ``{voice}``).
    The voices run one after another, each through the ordinary batch
    (:meth:`Converter.iter_batch`: ``kwargs`` are its options, e.g. ``format``,
    ``skip_existing``, ``on_error``, ``batch_seconds``, and conversion settings such as
    ``pitch``); a voice's results come as its files finish, voice after voice.

    ``params`` and the conversion keywords apply to every voice; ``voice_params`` adds
    settings per voice (a list in the voices' order, or a mapping by name), e.g.
    ``[{"pitch": 0}, {"pitch": 12}]``. F0 is tracked once per input and F0 setting (voices
    loaded with the same backend, options and weights share it; a voice with another backend
    gets its own), and the content features once per input and encoder setting
    (:class:`SharedAnalysis`; ``shared_memory_mb`` bounds the features kept, ``shared``
    passes a memo of your own, e.g. to read its counters). Every output equals the one
    its voice's own batch would give.

    ``progress(result, done, total)`` is called per finished (input, voice), ``total``
    being inputs × voices.
    """
    named = _named_voices(voices)
    _check_template(name_template, len(named), out_dir)
    per_voice = _per_voice(voice_params, [n for n, _ in named])
    memo = shared if shared is not None else SharedAnalysis(shared_memory_mb)
    if progress is not None and not callable(progress):
        raise ParameterError(f"progress must be a function progress(result, done, total), got {type(progress).__name__}")
    listed = _expanded(inputs, out_dir, recursive, name_template, kwargs)
    # every voice's settings are checked before any work
    shared_settings = _conversion_kwargs(kwargs)
    settings = []
    for (name, engine), extra in zip(named, per_voice):
        try:
            settings.append(Converter.from_engine(engine).make_params(params, **{**shared_settings, **extra}))
        except ParameterError as exc:
            if len(named) == 1 or not (extra or _fits_no_model(params, shared_settings)):
                raise  # the settings every voice shares, wrong for any model: not one voice's
            raise ParameterError(f"voice {name!r}: {exc}") from None  # e.g. a speaker this voice does not have
    if out_dir is not None:  # the format at each voice's output rate: before any voice writes
        for (name, engine), q in zip(named, settings):
            try:
                q.check_output(kwargs.get("format", "wav"), kwargs.get("subtype"), engine.sample_rate, kwargs.get("bitrate"))
            except ParameterError as exc:
                raise ParameterError(f"voice {name!r}: {exc}") from None
    batch_kwargs = {k: v for k, v in kwargs.items() if k not in shared_settings}
    runs = []
    for (name, engine), q in zip(named, settings):
        voice_engine = memo.engine(engine)  # its own F0 backend: alike ones share their tracks
        voice_engine.name = name
        runs.append((name, Converter.from_engine(voice_engine), q))
    # the first voice's batch is made now: its options are checked when iter_voices is called
    first = runs[0][1].iter_batch(listed, out_dir, runs[0][2], name_template=name_template, **batch_kwargs)
    return _voice_after_voice(runs, first, listed, out_dir, name_template, batch_kwargs, progress)


def _fits_no_model(params: Any, settings: dict[str, Any]) -> bool:
    """Whether the shared settings pass every check that needs no model: one that fails for a
    voice then fails for that voice's model (its speakers), and the error names the voice."""
    try:
        ConversionParams.build(params, **settings).validate()
    except (ParameterError, TypeError, ValueError):
        return False
    return True


def _voice_after_voice(
    runs: list[tuple[str, Converter, ConversionParams]],
    first: Iterator[Result],
    listed: list[Any],
    out_dir: str | os.PathLike[str] | None,
    name_template: str,
    batch_kwargs: dict[str, Any],
    progress: Any,
) -> Iterator[Result]:
    """Each voice's batch in turn (the first one already made), its Results named by the voice."""
    total, done = len(listed) * len(runs), 0
    for k, (name, conv, q) in enumerate(runs):
        batch = first if k == 0 else conv.iter_batch(listed, out_dir, q, name_template=name_template, **batch_kwargs)
        for res in batch:
            res.voice = name
            done += 1
            if progress is not None:
                progress(res, done, total)
            yield res


def convert_voices(
    voices: Sequence[Converter | Engine] | Mapping[str, Converter | Engine],
    inputs: Any,
    out_dir: str | os.PathLike[str] | None = None,
    params: ConversionParams | dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[Result]:
    """Convert every input to every voice; the Results ordered by input, then by voice.

    Same arguments as :func:`iter_voices`, which this runs to the end::

        a = rvcfast.Converter.from_pretrained("alice.pth", index="alice.index")
        b = rvcfast.Converter.from_pretrained("bob.pth")
        results = rvcfast.convert_voices([a, b], ["song.wav", "take2.flac"], "out/")
        # out/alice/song.wav, out/alice/take2.wav, out/bob/song.wav, out/bob/take2.wav
    """
    named = _named_voices(voices)
    order = {name: k for k, (name, _) in enumerate(named)}
    results = list(iter_voices(voices, inputs, out_dir, params, **kwargs))
    return sorted(results, key=lambda r: (-1 if r.index is None else r.index, order.get(r.voice or "", 0)))


def _per_voice(
    voice_params: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None, names: list[str]
) -> list[dict[str, Any]]:
    """One dict of extra settings per voice, in the voices' order."""
    if voice_params is None:
        return [{} for _ in names]
    if isinstance(voice_params, Mapping):
        unknown = [k for k in voice_params if k not in names]
        if unknown:
            raise ParameterError(f"voice_params names voice {unknown[0]!r}, which is not among {names}")
        return [dict(voice_params.get(n, {})) for n in names]
    listed = [dict(v) for v in voice_params]
    if len(listed) != len(names):
        raise ParameterError(f"voice_params has {len(listed)} entries for {len(names)} voices")
    return listed


def _conversion_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords that are conversion settings (:class:`~rvcfast.ConversionParams` fields)."""
    from dataclasses import fields

    names = {f.name for f in fields(ConversionParams)}
    return {k: v for k, v in kwargs.items() if k in names}


def _f0_setting(ext: Any, ident: Callable[[Any], Any]) -> tuple[Any, ...]:
    """What an F0 extractor computes with: for rvcfast's own, its class and name, its settings
    (numbers, words, paths, device and precision), the networks it holds (``ident`` of each:
    the model cache gives every extractor of one weights file the same network) and its
    members' (a hybrid); its ``filter_radius`` is left out (a conversion setting, keyed
    separately). Any other extractor (a plugin, whose settings rvcfast cannot read) is itself."""
    if not type(ext).__module__.startswith("rvcfast.") or not hasattr(ext, "__dict__"):
        return ("object", ident(ext))
    simple = (int, float, str, bool, type(None), torch.dtype, torch.device, os.PathLike)
    values: list[tuple[str, Any]] = []
    for key, value in sorted(vars(ext).items()):
        if key == "filter_radius":
            continue
        if key.startswith("_") and (value is None or isinstance(value, torch.nn.Module)):
            continue  # a network loaded on first use: its weights file's path (kept) says which
        if isinstance(value, simple):
            values.append((key, str(value) if isinstance(value, os.PathLike) else value))
        elif isinstance(value, torch.nn.Module) and not key.startswith("_"):
            values.append((key, ident(value)))  # a public network; private ones load lazily (their path is kept)
        elif key == "backends" and isinstance(value, list):
            values.append((key, tuple(_f0_setting(member, ident) for member in value)))
    return (type(ext).__qualname__, getattr(ext, "name", None), tuple(values))
