"""The conversion engine: loaded networks plus a one-way run over prepared audio.

Every front end — :class:`~rvcfast.Converter`, the batch scheduler
(:mod:`rvcfast.batch`), the HTTP server and the cluster runner — converts through one
:class:`Engine`. Data flows one way through it::

    decode ─► segment ─► F0 ─► features ─► index ─► synthesize ─► assemble
    prepare()           extract_f0()   run(): segments of all inputs, packed by length

* :meth:`Engine.prepare` decodes one input (file or array) to 16 kHz, applies the input
  peak guard and RVC's 48 Hz high-pass, finds the split points and pads: a
  :class:`~rvcfast.pipeline.PreparedAudio`. It is thread-safe and touches no network,
  so schedulers run it in decode threads.
* :meth:`Engine.extract_f0` runs the F0 tracker over several prepared inputs at once.
* :meth:`Engine.run` takes prepared inputs (and optionally their F0 tracks), sends
  every segment of every input through the content encoder, the index and the
  synthesizer in length-packed batches, and assembles each input's output. A failing
  input is reported in its :class:`~rvcfast.result.Result` (or raised with
  ``raise_errors=True``); the others are unaffected.
* :meth:`Engine.convert` is ``prepare`` + ``run`` for one input.

Results do not depend on what an input is batched with: every stage that mixes time
steps is masked, and the model noise is seeded per segment.
"""

from __future__ import annotations

import copy
import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .audio import AudioInput
from .constants import F0_HOP, SR_16K
from .engine_items import (
    COMPUTE,
    Failure,
    Item,
    channel_tracks,
    check_cancel,
    checked_piece,
    contained,
    describe,
    given_params,
    join_channels,
    share_keys,
    too_short,
)
from .engine_progress import RunProgress, stream_f0
from .errors import ModelLoadError, ParameterError, RvcfastError
from .packing import pack
from .params import ConversionParams, check_one_model_call
from .pipeline import (
    PreparedAudio,
    SegmentInput,
    apply_protect,
    check_channels,
    check_formant,
    finish,
    pitch_track,
    prepare_input,
    segment_features,
    segment_frames,
    segment_inputs,
    segment_output_length,
)
from .protocols import CancelFlag, F0Extractor, FeatureEncoder, Vocoder
from .result import Result
from .runtime import check_batch_seconds, default_batch_seconds, f0_dtype, release_memory, resolve_device
from .segment import SegmentConfig
from .timing import Timer, spread

if TYPE_CHECKING:
    from .tuning import Profile

__all__ = ["Engine", "prepare_input", "load_encoder_cached"]

#: F0 track of one input as handed to :meth:`Engine.run`: an array, or the exception that
#: computing it raised (the input then fails with that reason).
F0Track = np.ndarray | BaseException | None


def load_encoder_cached(
    encoder: str | os.PathLike[str] | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    allow_download: bool = False,
) -> FeatureEncoder:
    """The process-wide content encoder for this file/folder, device and dtype."""
    from . import cache
    from .models.encoder import load_encoder
    from .weights import resolve_weights

    path = resolve_weights("hubert", encoder, allow_download=allow_download)
    return cache.get_or_load("encoder", path, device, dtype, lambda: load_encoder(path, device=device, dtype=dtype))


#: Who a plugin's ``sys.exit()`` during a model call is blamed on.
_MODELS = "a model (content encoder, index or vocoder)"


class Engine:
    """Loaded networks, device, precision and segment plan; converts prepared audio one way.

    Build it with :meth:`load` (from files, base models from the process-wide cache) or
    from model objects. Attributes: ``vocoder``, ``encoder``, ``f0_extractor`` (``None``
    for models without pitch), ``index`` (or ``None``), ``device``, ``dtype``,
    ``segment_config``, ``batch_seconds`` (16 kHz audio per packed model call) and ``name``
    (the voice model file's stem when loaded from a file, else ``"voice"``; a batch's
    ``name_template`` field ``{voice}``).
    """

    name: str = "voice"

    def __init__(
        self,
        vocoder: Vocoder,
        encoder: FeatureEncoder,
        f0_extractor: F0Extractor | None = None,
        index: Any | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        segment_config: SegmentConfig = SegmentConfig(),
        batch_seconds: float | None = None,
    ) -> None:
        if vocoder.has_f0 and f0_extractor is None:
            raise ParameterError("this voice model uses pitch (F0): an F0 extractor is required")
        if index is not None and index.dim != vocoder.feature_dim:
            raise ModelLoadError(
                getattr(index, "path", None),
                f"index dimension {index.dim} does not match the voice model's feature dimension "
                f"{vocoder.feature_dim} ({vocoder.version}); use the index trained with this model",
            )
        if vocoder.version == "v1" and getattr(encoder, "has_final_proj", True) is False:
            raise ModelLoadError(
                getattr(encoder, "source_path", None),
                "this content encoder has no final_proj weights (a plain HubertModel folder), and a v1 voice "
                "model takes the 256-d features final_proj makes: use an encoder with final_proj "
                "(hubert_base.pt, ContentVec) for v1 voices, or a v2 voice with this one",
            )
        made = getattr(encoder, "final_proj_dim" if vocoder.version == "v1" else "hidden_size", None)
        if isinstance(made, int) and made != vocoder.feature_dim:
            raise ModelLoadError(
                getattr(encoder, "source_path", None),
                f"this content encoder gives {made}-d features for a {vocoder.version} voice model "
                f"({'its final_proj' if vocoder.version == 'v1' else 'its hidden size'}), but the model takes "
                f"{vocoder.feature_dim}-d ones: use a HuBERT-base / ContentVec encoder (768-d, final_proj 256-d)",
            )
        check_batch_seconds(batch_seconds)
        from .runtime import built_dtype

        self.vocoder = vocoder
        self.encoder = encoder
        self.f0_extractor = f0_extractor if vocoder.has_f0 else None
        self.index = index
        self.device = torch.device(device)
        self.dtype = built_dtype(dtype, self.device)
        self.segment_config = segment_config
        self.batch_seconds = float(batch_seconds) if batch_seconds is not None else default_batch_seconds(self.device)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str],
        *,
        index: str | os.PathLike[str] | None = None,
        encoder: str | os.PathLike[str] | None = None,
        f0: str | F0Extractor = "rmvpe",
        f0_weights: str | os.PathLike[str] | None = None,
        f0_options: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str = torch.float32,
        allow_download: bool = False,
        batch_seconds: float | None = None,
    ) -> Engine:
        """Load a voice model (and index) from files; see :meth:`rvcfast.Converter.from_pretrained`.

        ``dtype="auto"`` and ``batch_seconds=None`` take the values ``rvcfast tune`` measured on
        this machine when a profile exists (:mod:`rvcfast.tuning`).
        """
        from .index import load_index
        from .models.synthesizer import load_vocoder
        from .tuning import load_profile, tuned_settings
        from .weights import resolve_encoder_for

        dev = resolve_device(device)
        check_batch_seconds(batch_seconds)  # before anything is loaded
        profile = load_profile(dev)  # read once: a bad file is warned about once, not per setting it fills
        dt, batch_seconds = tuned_settings(dtype, batch_seconds, dev, model, profile)
        vocoder = load_vocoder(model, device=dev, dtype=dt)
        idx = (  # a wrong index is refused from its header, before its vectors are read
            load_index(index, device=dev, feature_dim=vocoder.feature_dim, model=f"{vocoder.version} model {os.fspath(model)}")
            if index is not None else None
        )
        enc = load_encoder_cached(resolve_encoder_for(vocoder, encoder), dev, dt, allow_download=allow_download)
        extractor: F0Extractor | None = None
        if vocoder.has_f0:
            if isinstance(f0, str):
                from .f0.base import refuse_filter_radius_option
                from .f0.registry import build_f0_extractor

                refuse_filter_radius_option(f0_options)
                # float32 on a CPU, the engine's dtype on CUDA (runtime.f0_dtype);
                # f0_options={"dtype": ...} overrides it
                extractor = build_f0_extractor(
                    f0, weights=f0_weights, allow_download=allow_download, options=f0_options, device=dev,
                    dtype=f0_dtype(dt, dev),
                )
            elif isinstance(f0, F0Extractor):
                extractor = f0
            else:
                raise ParameterError(f"f0 must be a backend name or an F0Extractor, got {type(f0).__name__}")
        engine = cls(vocoder, enc, extractor, idx, device=dev, dtype=dt, batch_seconds=batch_seconds)
        engine.name = Path(os.fspath(model)).stem or "voice"
        engine.profile = profile
        return engine

    @functools.cached_property
    def profile(self) -> Profile | None:
        """This machine's ``rvcfast tune`` profile for the engine's device (``None``: none), read once."""
        from .tuning import load_profile

        return load_profile(self.device)

    def with_f0(self, extractor: F0Extractor) -> Engine:
        """This engine with another F0 extractor; the networks and index are shared, nothing is loaded."""
        if not isinstance(extractor, F0Extractor):
            raise ParameterError(f"expected an F0Extractor, got {type(extractor).__name__}")
        other = copy.copy(self)
        other.f0_extractor = extractor if self.vocoder.has_f0 else None
        return other

    # ------------------------------------------------------------------ facts

    @property
    def sample_rate(self) -> int:
        """The voice model's output sample rate."""
        return self.vocoder.sample_rate

    def params(self, params: ConversionParams | Mapping[str, Any] | None = None, **overrides: Any) -> ConversionParams:
        """Conversion settings built from ``params`` and ``overrides``, checked against this model."""
        return ConversionParams.build(params, **overrides).validate(self.vocoder)

    # ------------------------------------------------------------------ stage 1: decode and segment

    def prepare(
        self,
        source: AudioInput,
        sample_rate: int | None = None,
        *,
        name: str | None = None,
        params: ConversionParams | None = None,
        max_seconds: float | None = None,
    ) -> PreparedAudio:
        """Decode one input and run the signal stages (no network); thread-safe.

        The same as :func:`prepare_input` with this engine's segment plan (``max_seconds``:
        inputs longer than that raise :class:`~rvcfast.errors.AudioTooLongError` while
        they are decoded).
        """
        return prepare_input(
            source, sample_rate, name=name, params=params, config=self.segment_config, max_seconds=max_seconds
        )

    def check_convertible(self, prep: PreparedAudio, params: ConversionParams | dict[str, Any] | None = None) -> None:
        """Raise :class:`~rvcfast.errors.AudioError` naming the input when ``prep`` is too short to
        give one output sample (under 25 ms; 10 ms with ``keep_length``): what a conversion
        would refuse, found before any network runs (a server answers it as the client's error)."""
        q = self.params(params)
        if not any(self._output_lengths(segment_inputs(prep, None, None), q)):
            raise too_short(prep, q)

    # ------------------------------------------------------------------ stage 2: F0

    def f0_extractor_for(self, params: ConversionParams) -> F0Extractor | None:
        """The F0 extractor with ``params``' per-call options applied (``filter_radius``, also to
        the members of a hybrid)."""
        from .f0.base import with_filter_radius

        ext = self.f0_extractor
        return None if ext is None else with_filter_radius(ext, int(params.filter_radius))

    def extract_f0(self, preps: Sequence[PreparedAudio], params: ConversionParams) -> list[F0Track]:
        """Raw F0 tracks of several prepared inputs (one batched call; a failing input gets its exception)."""
        ext = self.f0_extractor_for(params)
        if ext is None:
            return [None] * len(preps)
        try:
            tracks: list[F0Track] = list(ext.extract_batch([p.padded for p in preps]))
            if len(tracks) != len(preps):  # a broken backend: each input on its own below
                raise RvcfastError(f"F0 backend {ext.name!r} returned {len(tracks)} tracks for {len(preps)} inputs")
            return tracks
        except (Exception, SystemExit):  # noqa: BLE001 - isolate the bad input (a plugin's sys.exit() too)
            out: list[F0Track] = []
            for p in preps:
                try:
                    out.append(ext.extract(p.padded))
                except (Exception, SystemExit) as exc:  # noqa: BLE001
                    if isinstance(exc, SystemExit):  # must not end the command or the server
                        exc = RvcfastError(f"F0 backend {ext.name!r} called sys.exit({exc.code!r})")
                    out.append(exc)
            return out

    # ------------------------------------------------------------------ stages 3-6

    def run(
        self,
        preps: Sequence[PreparedAudio],
        params: ConversionParams | Mapping[str, Any] | Sequence[ConversionParams],
        *,
        f0: Sequence[F0Track] | None = None,
        raise_errors: bool = False,
        batch_seconds: float | None = None,
        cancel: CancelFlag | None = None,
        on_progress: Callable[[int, float], None] | None = None,
    ) -> list[Result]:
        """F0 (unless given) → features → index → synthesis → assembly for prepared inputs.

        ``params`` is one :class:`~rvcfast.ConversionParams` (or mapping; ``None``: the defaults) for
        all inputs or one per input (a server batching different requests): segments share a model call only
        when their speaker, noise switch and v1 layer agree. Every settings object is
        checked against this model first (out-of-range values raise
        :class:`~rvcfast.errors.ParameterError`, as in :meth:`params`); so is ``f0``, which
        must hold one track per input (for an input prepared with ``channels="each"``, a tuple
        of one track per channel, or one track: the first channel's, the others extracted; ``None``:
        the engine extracts that input's, an exception: the input fails with it). Returns one :class:`Result`
        per input, in order. A failing input gets ``error`` set (its name and the reason)
        unless ``raise_errors``, which re-raises the first failure's exception as it
        happens. ``batch_seconds`` overrides the engine's packing budget for this call.

        ``cancel`` (a :class:`threading.Event`, or anything with ``is_set()``), when given,
        is looked at between the stages, between the F0 blocks of a long input (as for
        ``on_progress`` below) and before each model batch (about one decoder window of work
        apart): once it is set, the run stops there and raises
        :class:`~rvcfast.errors.Cancelled` (nothing is returned).

        ``on_progress(k, fraction)``, when given, is called after each model batch for every
        input it worked on: ``k`` is the input's position in ``preps``, ``fraction`` (0..1) the
        share of its segments (all its channels) through the content encoder, the index and the
        synthesizer. An input whose F0 the engine tracks block by block (an extractor with
        ``extract_blocks``, such as RMVPE, and an input of several blocks: over 82 s) is also
        reported after each block: its F0 is the first
        :data:`~rvcfast.engine_progress.F0_PROGRESS_SHARE` (0.2) of its fraction, the model
        batches the rest. Otherwise F0 comes before the first call. The fraction never goes
        down and reaches 1.0 exactly once, after the input's last model batch; an input that
        fails gets no further calls.
        """
        asked = given_params(params, len(preps))
        f0 = None if f0 is None else list(f0)
        if f0 is not None and len(f0) != len(preps):
            raise ParameterError(f"run() got {len(preps)} inputs but {len(f0)} F0 tracks")
        check_batch_seconds(batch_seconds, zero=True)
        # checked against this model before any work, as convert() and stream() check them
        checked = {id(q): self.params(q) for q in asked}
        per_item = [checked[id(q)] for q in asked]
        for p, q in zip(preps, per_item):
            check_formant(p, q)
            check_channels(p, q)
        items = [Item(p, q, owner=k) for k, (p, q) in enumerate(zip(preps, per_item))]
        # channels="each": each further channel is converted as an input of its own, beside the first
        for item in items:
            item.channels = [Item(c, item.params, owner=item.owner) for c in item.prep.more_channels]
        every = items + [c for item in items for c in item.channels]
        if f0 is not None:
            f0 = channel_tracks(items, f0)
        check_cancel(cancel)
        # with on_progress or cancel, a long input's F0 goes block by block (reported, or cancelled, between blocks)
        progress = RunProgress(every, on_progress) if on_progress is not None or cancel is not None else None
        self._pitch(every, f0, raise_errors, progress, cancel)
        budget = int((batch_seconds if batch_seconds is not None else self.batch_seconds) * SR_16K)
        self._synthesize_all(every, raise_errors, budget, cancel, progress)
        results = []
        for item in items:  # assembly may take a while (noise reduction, effects): looked at between inputs too
            check_cancel(cancel)
            results.append(self._assemble(item, raise_errors))
        return results

    def convert(
        self,
        source: AudioInput,
        sample_rate: int | None = None,
        params: ConversionParams | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> Result:
        """Convert one input (a batch of one); errors are raised."""
        params = self.params(params)
        timer = Timer(self.device)
        with timer.stage("decode"):
            prep = self.prepare(source, sample_rate, name=name, params=params)
        result = self.run([prep], params, raise_errors=True)[0]
        result.timings = {**timer.times, **result.timings}
        return result

    def stream(
        self,
        prep: PreparedAudio,
        params: ConversionParams | None = None,
        *,
        f0: F0Track = None,
        raw: bool = False,
        timings: dict[str, float] | None = None,
        pauses: bool = False,
        on_progress: Callable[[int, float], None] | None = None,
        key: int | None = None,
    ) -> Iterator[np.ndarray | None]:
        """One input's output piece by piece, in order, each as soon as its segment is synthesised.

        Every segment goes through the models on its own; each ``next()`` does one
        segment's model calls (the F0 track of the whole input, or ``f0``, comes first),
        so a scheduler can interleave other work between pieces. An input of one segment
        (up to 41 s) is one piece, finished exactly as :meth:`run` finishes it. Longer
        inputs are finished piece by piece by :class:`~rvcfast.streaming.StreamFinisher`:
        the concatenation equals :meth:`run`'s output when ``rms_mix_rate == 1``, the
        peak stays below 0.99 and ``clean``/``effects`` are off (see that class for what
        differs otherwise). ``raw=True`` yields the trimmed segment outputs before any
        post-processing; :func:`rvcfast.pipeline.finish` of their concatenation is
        :meth:`run`'s output. Stage seconds are added to ``timings`` as each piece is
        yielded (a piece's stages are there when it arrives). Errors are raised.

        ``pauses=True`` (for schedulers) also yields ``None`` between the blocks of a long
        input's F0 track when the extractor computes it block by block (RMVPE: one per
        41 s chunk of an input over 82 s), so that no ``next()`` runs the F0 network over
        the whole input; the audio pieces are the same. ``on_progress(0, fraction)`` is
        :meth:`run`'s, called before each piece is yielded (and after each F0 block of a long input).

        ``loudness`` needs the whole output: it is refused (:class:`ParameterError`) unless ``raw``;
        so is an input prepared channel by channel (``channels="each"``), raw or not: a caller
        streaming its channels one by one gives each the key they share (``key``: the semitones of
        :func:`~rvcfast.f0.post.proposed_pitch_offset_of_channels`, in place of the channel's own
        proposed-pitch offset).
        """
        from .streaming import StreamFinisher

        item = Item(prep, self.params(params), key=key)
        check_formant(prep, item.params)
        check_channels(prep, item.params)
        if prep.more_channels:
            raise ParameterError(
                f"{prep.label or 'input'}: an input prepared channel by channel (channels='each') is converted whole, "
                "not streamed: use run() or convert()"
            )
        if item.params.loudness is not None and not raw:
            raise ParameterError(
                f"{prep.label or 'input'}: loudness={item.params.loudness!r} needs the whole output, "
                "so streamed output cannot have it: convert the whole input instead"
            )
        share = 0.0  # the F0 blocks' share of on_progress's fraction
        if f0 is None and (pauses or on_progress is not None):
            t0 = time.perf_counter()
            f0, share = yield from stream_f0(self.f0_extractor_for(item.params), prep.padded, pauses, on_progress)
            item.timings["f0"] = time.perf_counter() - t0
        self._pitch([item], None if f0 is None else [f0], True)
        q = item.params
        timer = Timer(self.device)
        segs = segment_inputs(prep, item.coarse, item.pitchf, q.seed)
        lengths = self._output_lengths(segs, q)
        if not any(lengths):
            raise too_short(prep, q)
        finisher = StreamFinisher(prep, self.sample_rate, q)
        given: dict[str, float] = {}  # the seconds already added to ``timings``: each piece adds what came since
        for k, seg in enumerate(segs):
            try:
                piece = checked_piece(self.synthesize_segments([seg], q, timer)[0], lengths[k], k, len(segs), prep.label)
            except SystemExit as exc:  # a plugin's: must not end the command or the server
                raise contained(exc, _MODELS) from None
            release_memory()
            t0 = time.perf_counter()
            if raw:
                out = piece
            elif len(segs) == 1:
                out = finish([piece], prep, self.sample_rate, q)[0]
            else:
                out = finisher.push(piece, last=k == len(segs) - 1)
            timer.add("post", time.perf_counter() - t0)
            for stage, seconds in {**item.timings, **timer.times}.items():
                if timings is not None:
                    timings[stage] = timings.get(stage, 0.0) + seconds - given.get(stage, 0.0)
                    given[stage] = seconds
            if on_progress is not None:
                last = k == len(segs) - 1
                on_progress(0, 1.0 if last else share + (1.0 - share) * sum(lengths[: k + 1]) / sum(lengths))
            yield out

    # ------------------------------------------------------------------ internals

    def _fail(self, item: Item, exc: BaseException, what: str, raise_errors: bool) -> None:
        if raise_errors:
            raise exc
        if item.error is None:
            item.error = Failure(describe(item.prep.label, what, exc))
            item.error.__cause__ = exc  # kept for the Result's ``exception`` (its traceback)

    def _pitch(
        self, items: list[Item], f0: Sequence[F0Track] | None, raise_errors: bool,
        progress: RunProgress | None = None, cancel: CancelFlag | None = None,
    ) -> None:
        """Each item's pitch track from ``f0``, or from the backend (items given ``None``, or all
        when ``f0`` is ``None``)."""
        if not self.vocoder.has_f0:
            return
        # None given for an input: the engine extracts its track, as stream() does
        tracks: list[Any] = [COMPUTE if t is None else t for t in f0] if f0 is not None else [COMPUTE] * len(items)
        todo = [i for i, track in enumerate(tracks) if track is COMPUTE]
        if todo:
            # one batched call per F0 setting (only harvest's filter_radius differs between requests)
            by_setting: dict[int, list[int]] = {}
            for i in todo:
                by_setting.setdefault(int(items[i].params.filter_radius), []).append(i)
            for members in by_setting.values():
                # with on_progress or cancel, an input of several F0 blocks is tracked block by block (below)
                if progress is not None:
                    members = progress.split(self.f0_extractor_for(items[members[0]].params), members)
                if not members:
                    continue
                t0 = time.perf_counter()
                found = self.extract_f0([items[i].prep for i in members], items[members[0]].params)
                weights = [items[i].prep.padded.shape[0] for i in members]
                spread({"f0": time.perf_counter() - t0}, weights, [items[i].timings for i in members])
                for i, track in zip(members, found):
                    tracks[i] = track
            if progress is not None:
                for i in progress.stepped():
                    tracks[i] = progress.track(i, getattr(self.f0_extractor, "name", "?"), lambda: check_cancel(cancel))
        backend = f" (backend {getattr(self.f0_extractor, 'name', type(self.f0_extractor).__name__)!r})"
        computed = set(todo)
        checked: dict[int, np.ndarray] = {}
        for i, (item, raw) in enumerate(zip(items, tracks)):
            if isinstance(raw, BaseException):
                self._fail(item, raw, "F0 extraction failed" + (backend if i in computed else ""), raise_errors)
                continue
            try:
                checked[id(item)] = self._checked_track(raw, item)
            except RvcfastError as exc:
                self._fail(item, exc, "F0 extraction failed", raise_errors)
        share_keys(items, checked)
        for item in items:
            if id(item) in checked:
                item.coarse, item.pitchf = pitch_track(checked[id(item)], item.prep.p_len, item.params, item.key)

    def _checked_track(self, raw: Any, item: Item) -> np.ndarray:
        """A raw F0 track (from the backend or the caller) as a 1-D float array, or an error naming
        the backend and the input: finite, non-negative, one value per 10 ms frame (give or take
        a few frames, or 1 %, for trackers that do not pad the ends)."""
        from .f0.base import checked_track

        ext = self.f0_extractor
        source = f"F0 backend {ext.name!r}" if ext is not None else "the F0 track"
        return checked_track(raw, item.prep.padded.shape[0] // F0_HOP + 1, f"{item.prep.label or 'the input'}: {source}")

    def _output_lengths(self, segs: Sequence[SegmentInput], params: ConversionParams) -> list[int]:
        """Output samples each segment contributes once its padding context is trimmed."""
        trim = self.vocoder.sample_rate * self.segment_config.x_pad
        hop = self.vocoder.hop_length
        return [segment_output_length(g.audio.shape[0], g.frames, hop, trim, params.keep_length) for g in segs]

    def _synthesize_all(
        self, items: list[Item], raise_errors: bool, budget: int, cancel: CancelFlag | None,
        progress: RunProgress | None,
    ) -> None:
        calls: dict[tuple[Any, ...], list[tuple[int, int, SegmentInput]]] = {}
        for i, item in enumerate(items):
            if item.error is not None:
                continue
            q = item.params
            pos = 0
            segs = segment_inputs(item.prep, item.coarse, item.pitchf, q.seed)
            lengths = self._output_lengths(segs, q)
            if sum(lengths) == 0:
                self._fail(item, too_short(item.prep, q), "", raise_errors)
                continue
            item.lengths = lengths
            for k, (seg, n) in enumerate(zip(segs, lengths)):
                item.offsets.append(pos)
                pos += n
                calls.setdefault((q.speaker, q.noise, q.v1_output_layer), []).append((i, k, seg))
            item.buffer = np.empty(pos, dtype=np.float32)
        for entries in calls.values():
            entries.sort(key=lambda e: e[2].audio.shape[0])
            for group in pack([e[2].audio.shape[0] for e in entries], budget):
                bucket = [entries[g] for g in group if items[entries[g][0]].error is None]
                if bucket:
                    check_cancel(cancel)
                    self._synthesize_bucket(items, bucket, raise_errors)
                    release_memory()
                    if progress is not None:
                        progress.report({items[e[0]].owner for e in bucket})

    def _synthesize_bucket(self, items: list[Item], bucket: list[tuple[int, int, SegmentInput]], raise_errors: bool) -> None:
        timer = Timer(self.device)
        params = [items[e[0]].params for e in bucket]
        try:
            pieces: list[np.ndarray | None] = list(self.synthesize_segments([e[2] for e in bucket], params, timer))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - retry one by one to isolate a bad input (a plugin's sys.exit() too)
            if raise_errors or len(bucket) == 1:
                self._fail(items[bucket[0][0]], contained(exc, _MODELS), "synthesis failed", raise_errors)
                pieces = [None] * len(bucket)
            else:
                pieces = []
                for e, q in zip(bucket, params):
                    if items[e[0]].error is not None:  # an earlier segment of its input failed: nothing to find
                        pieces.append(None)
                        continue
                    try:
                        pieces.extend(self.synthesize_segments([e[2]], q, timer))
                    except (Exception, SystemExit) as exc1:  # noqa: BLE001
                        self._fail(items[e[0]], contained(exc1, _MODELS), "synthesis failed", raise_errors)
                        pieces.append(None)
        spread(timer.times, [e[2].audio.shape[0] for e in bucket], [items[e[0]].timings for e in bucket])
        for (i, k, _), piece in zip(bucket, pieces):
            item = items[i]
            if piece is None or item.error is not None or item.buffer is None:
                continue
            try:
                piece = checked_piece(piece, item.lengths[k], k, len(item.lengths), item.prep.label)
            except RvcfastError as exc:
                self._fail(item, exc, "synthesis failed", raise_errors)
                continue
            off = item.offsets[k]
            item.buffer[off : off + piece.shape[0]] = piece
            item.synthesized += piece.shape[0]

    def _assemble(self, item: Item, raise_errors: bool) -> Result:
        prep, params = item.prep, item.params
        if item.channels:
            join_channels(item)
        if item.error is None and item.buffer is not None:
            t0 = time.perf_counter()
            notes = list(prep.warnings)
            try:
                audio, rate = finish(item.buffer, prep, self.vocoder.sample_rate, params, notes)
            except Exception as exc:  # noqa: BLE001
                self._fail(item, exc, "post-processing failed", raise_errors)
            else:
                item.timings["post"] = item.timings.get("post", 0.0) + time.perf_counter() - t0
                item.buffer = None
                return Result(audio, rate, item.timings, prep.label, input_seconds=prep.seconds, warnings=notes)
        return Result(
            np.zeros(0, np.float32),
            params.output_rate(self.vocoder.sample_rate),  # the rate the output would have had
            item.timings,
            prep.label,
            error=str(item.error),
            exception=None if item.error is None else item.error.__cause__ or item.error,
            input_seconds=prep.seconds,
            warnings=list(prep.warnings),
        )

    # ------------------------------------------------------------------ the model calls

    def synthesize_segments(
        self, segs: Sequence[SegmentInput], params: ConversionParams | Sequence[ConversionParams], timer: Timer
    ) -> list[np.ndarray]:
        """Features → index → ×2 → protect → synthesis → trim, for segments batched together.

        ``params`` is shared or per segment; ``speaker``, ``noise`` and ``v1_output_layer``
        must agree (one model call), the rest may differ.
        """
        per_seg = [params] * len(segs) if isinstance(params, ConversionParams) else list(params)
        check_one_model_call(per_seg, len(segs))
        first = per_seg[0]
        with torch.inference_mode():
            with timer.stage("features"):
                feats = segment_features(
                    self.encoder, [s.audio for s in segs], self.vocoder.version, self.device, self.dtype, first.v1_output_layer
                )
            prepared: list[tuple[torch.Tensor, torch.Tensor | None]] = []
            with timer.stage("index"):
                for f, q in zip(feats, per_seg):
                    f0feats = f.clone() if self._protects(q) else None
                    if self.index is not None and q.index_rate != 0:
                        f = self.index.blend(f.float(), q.index_rate).to(f.dtype)
                    f = f.repeat_interleave(2, dim=0)
                    if f0feats is not None:
                        f0feats = f0feats.repeat_interleave(2, dim=0)
                    prepared.append((f, f0feats))
            with timer.stage("synth"):
                return self._synth_batch(segs, prepared, per_seg)

    def _protects(self, params: ConversionParams) -> bool:
        return self.vocoder.has_f0 and params.protect < 0.5

    def _synth_item(
        self, seg: SegmentInput, f: torch.Tensor, f0feats: torch.Tensor | None, params: ConversionParams
    ) -> tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor | None]:
        n = seg.audio.shape[0]
        if params.keep_length:
            p_len = segment_frames(n, seg.frames, True)
            if f.shape[0] < p_len:  # repeat the last content frame to cover the whole span
                f = torch.cat([f, f[-1:].expand(p_len - f.shape[0], -1)])
                if f0feats is not None:
                    f0feats = torch.cat([f0feats, f0feats[-1:].expand(p_len - f0feats.shape[0], -1)])
        else:
            p_len = min(n // F0_HOP, f.shape[0])
        f = f[:p_len]
        pitch = pitchf = None
        if self.vocoder.has_f0:
            assert seg.pitch is not None and seg.pitchf is not None
            pitch = torch.from_numpy(np.ascontiguousarray(seg.pitch[:p_len])).to(self.device)
            pitchf = torch.from_numpy(np.ascontiguousarray(seg.pitchf[:p_len])).to(self.device)
            if f0feats is not None:
                f = apply_protect(f, f0feats[:p_len], pitchf, params.protect)
        return f, p_len, pitch, pitchf

    def _synth_batch(
        self,
        segs: Sequence[SegmentInput],
        prepared: list[tuple[torch.Tensor, torch.Tensor | None]],
        params: Sequence[ConversionParams],
    ) -> list[np.ndarray]:
        voc = self.vocoder
        items = [self._synth_item(seg, f, f0feats, q) for seg, (f, f0feats), q in zip(segs, prepared, params)]
        T, B, C = max(it[1] for it in items), len(items), items[0][0].shape[1]
        feats = torch.zeros(B, T, C, device=self.device, dtype=self.dtype)
        lengths = torch.tensor([it[1] for it in items], device=self.device)
        pitch_b = pitchf_b = None
        if voc.has_f0:
            pitch_b = torch.ones(B, T, dtype=torch.long, device=self.device)
            pitchf_b = torch.zeros(B, T, dtype=torch.float32, device=self.device)
        for i, (f, p_len, pitch, pitchf) in enumerate(items):
            feats[i, :p_len] = f.to(self.dtype)
            if pitch_b is not None and pitchf_b is not None:
                assert pitch is not None and pitchf is not None  # _synth_item gives both when has_f0
                pitch_b[i, :p_len] = pitch
                pitchf_b[i, :p_len] = pitchf
        skip = 100 * self.segment_config.x_pad  # frames of padding context dropped at each end
        out = voc.synthesize(
            feats, lengths, pitch_b, pitchf_b, speaker=params[0].speaker, noise=params[0].noise,
            generator=self._generators(segs, params[0]), skip_frames=skip,
        )
        audio = out.float().cpu().numpy()
        trim = voc.sample_rate * self.segment_config.x_pad
        hop = voc.hop_length
        return [audio[i, : items[i][1] * hop][trim : items[i][1] * hop - trim] for i in range(B)]

    def _generators(self, segs: Sequence[SegmentInput], params: ConversionParams) -> list[torch.Generator] | None:
        if not params.noise or all(seg.seed is None for seg in segs):
            return None
        generators = []
        for seg in segs:
            g = torch.Generator(device=self.device)
            if seg.seed is not None:
                g.manual_seed(seg.seed)
            else:
                g.seed()
            generators.append(g)
        return generators


