"""The public entry point: :class:`Converter`.

A Converter holds one voice model (and its optional index) in an
:class:`~rvcfast.engine.Engine`; the base models (content encoder, F0 model) come from
the process-wide cache in :mod:`rvcfast.cache`, so any number of Converters and files
share one copy. ``convert`` is a batch of one through the engine; ``convert_batch`` /
``iter_batch`` hand many inputs to the file scheduler in :mod:`rvcfast.batch`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch

from .audio import AudioInput, Samples
from .batch import AudioProgressCallback, ProgressCallback
from .engine import Engine
from .errors import ParameterError
from .params import ConversionParams, check_setting_names
from .protocols import F0Extractor, FeatureEncoder, Vocoder
from .result import Result
from .segment import SegmentConfig

__all__ = ["Converter", "Result"]

#: Samples of one input: a NumPy array (float, or integer PCM scaled from its full scale), a
#: torch tensor (any precision or device) or a list of numbers; ``[samples]`` or
#: ``[samples, channels]`` (a list of rows), never ``[channels, samples]``.
SamplesInput = Samples
#: One input of :meth:`Converter.convert`: a path, or samples given with their sample rate.
ConvertInput = AudioInput
#: One input of :meth:`Converter.convert_batch` / :meth:`Converter.iter_batch`: a file or a
#: folder, or a ``(samples, sample_rate)`` pair (a whole number of Hz).
BatchItem = str | os.PathLike[str] | tuple[SamplesInput, int | np.integer[Any]]
#: Settings: a :class:`~rvcfast.ConversionParams`, a mapping of its field names, or ``None``.
ParamsInput = ConversionParams | Mapping[str, Any] | None


class Converter:
    """Converts audio to one voice. Build it with :meth:`from_pretrained`.

    Conversion settings are one :class:`~rvcfast.ConversionParams` (``params=``) and/or
    keyword overrides named as its fields (``pitch=2, index_rate=0.5, ...``; see
    ``docs/parameters.md``)::

        conv = rvcfast.Converter.from_pretrained("voice.pth", index="voice.index")
        result = conv.convert("input.wav", pitch=2)
        soundfile.write("out.wav", result.audio, result.sample_rate)

    One Converter may be used from several threads at once (see ``docs/api.md``).

    Attributes:
        engine: The :class:`~rvcfast.engine.Engine` that does the work; its parts are also
            the Converter's read-only properties below.
    """

    def __init__(
        self,
        vocoder: Vocoder,
        encoder: FeatureEncoder,
        f0_extractor: F0Extractor | None,
        index: Any | None = None,
        *,
        device: torch.device | str,
        dtype: torch.dtype | str = torch.float32,
        segment_config: SegmentConfig = SegmentConfig(),
        batch_seconds: float | None = None,
    ) -> None:
        self.engine = Engine(
            vocoder, encoder, f0_extractor, index,
            device=device, dtype=dtype, segment_config=segment_config, batch_seconds=batch_seconds,
        )

    @classmethod
    def from_engine(cls, engine: Engine) -> Converter:
        """A Converter around an existing :class:`~rvcfast.engine.Engine` (models shared, nothing loaded).

        Used where an engine already exists (a server's, one from :meth:`Engine.with_f0
        <rvcfast.engine.Engine.with_f0>`); the Converter and the engine then share everything.
        """
        conv = cls.__new__(cls)
        conv.engine = engine
        return conv

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        index: str | os.PathLike[str] | None = None,
        encoder: str | os.PathLike[str] | None = None,
        f0: str | F0Extractor = "rmvpe",
        f0_weights: str | os.PathLike[str] | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | str = torch.float32,
        *,
        f0_options: dict[str, Any] | None = None,
        allow_download: bool = False,
        batch_seconds: float | None = None,
    ) -> Converter:
        """Load a voice model with its optional faiss ``.index`` and the base models it needs.

        Args:
            model: RVC/Applio voice model file, ``.pth`` (v1 or v2, with or without F0,
                32/40/48 kHz), or one written by :func:`rvcfast.export_onnx` (``.onnx``,
                the ``onnx`` extra).
            index: faiss ``.index`` file for retrieval (read without faiss), or ``None``.
            encoder: ``hubert_base.pt`` (fairseq layout) or a Hugging Face ContentVec folder;
                ``None``: found in ``$RVCFAST_HOME`` or the user cache.
            f0: F0 backend name (``rmvpe``, ``crepe``, ``crepe-tiny``, ``fcpe``, ``harvest``,
                ``dio``, ``pm``, ``swift``, ``hybrid:a+b``, or a plugin's name; see
                :func:`rvcfast.available_f0_extractors`) or an F0Extractor object. Unused
                by a model without F0.
            f0_weights: Weights file for the F0 backend (``rmvpe.pt`` for RMVPE); ``None``:
                found as for ``encoder``.
            device: ``"auto"`` (CUDA if available, else the CPU), ``"cpu"``, ``"cuda"``,
                ``"cuda:1"``...
            dtype: ``torch.float32`` (default), ``torch.bfloat16``, ``torch.float16`` (CUDA,
                or a CPU with AVX512-FP16), their names (``"bf16"``, ``"fp16"``...), or
                ``"auto"``: the precision ``rvcfast tune`` chose on this machine, else
                bfloat16 where the hardware computes it natively, else float32 (an
                ``.onnx`` voice: always float32).
            f0_options: Extra keyword options for the F0 backend (an unknown one is a
                :class:`~rvcfast.errors.ParameterError` listing those it takes).
            allow_download: Download missing base weights into the cache on first use.
            batch_seconds: Seconds of 16 kHz audio packed into one model call; ``None``:
                what ``rvcfast tune`` measured on this machine, else 8 s on a CPU and 120 s
                on a GPU.

        Returns:
            The Converter, its models loaded on ``device``.

        Raises:
            ModelLoadError: the voice model or index is missing, unreadable or does not
                fit (an index of another dimension), or a base model file is unusable;
                :class:`~rvcfast.errors.UnsafeFileError` (a subclass) for a file that asks
                to run code.
            WeightsNotFoundError: a base weights file (content encoder, RMVPE) is not found,
                where it was given or where rvcfast looks.
            BackendUnavailableError: the F0 backend is unknown or needs a missing extra.
            ParameterError: a bad ``device``, ``dtype``, ``f0_options`` or ``batch_seconds``.
        """
        return cls.from_engine(
            Engine.load(
                model, index=index, encoder=encoder, f0=f0, f0_weights=f0_weights, f0_options=f0_options,
                device=device, dtype=dtype, allow_download=allow_download, batch_seconds=batch_seconds,
            )
        )

    # ------------------------------------------------------------------ the engine's parts

    @property
    def vocoder(self) -> Vocoder:
        """The voice model's synthesizer (an RVC :class:`~rvcfast.protocols.Vocoder`)."""
        return self.engine.vocoder

    @property
    def encoder(self) -> FeatureEncoder:
        """The content encoder (HuBERT / ContentVec) shared from :mod:`rvcfast.cache`."""
        return self.engine.encoder

    @property
    def f0_extractor(self) -> F0Extractor | None:
        """The F0 backend, or ``None`` for a voice model without F0."""
        return self.engine.f0_extractor

    @property
    def index(self) -> Any | None:
        """The :class:`~rvcfast.index.RetrievalIndex` loaded with ``index=``, or ``None``."""
        return self.engine.index

    @property
    def device(self) -> torch.device:
        """The torch device the models run on."""
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        """The precision the networks run in (``torch.float32``, ``torch.bfloat16``...)."""
        return self.engine.dtype

    @property
    def segment_config(self) -> SegmentConfig:
        """How long inputs are split into segments (RVC's ``x_pad``/``x_query``/``x_center``/``x_max``)."""
        return self.engine.segment_config

    @property
    def sample_rate(self) -> int:
        """The voice model's output sample rate."""
        return self.engine.sample_rate

    def make_params(self, params: ParamsInput = None, **overrides: Any) -> ConversionParams:
        """Build and validate :class:`~rvcfast.ConversionParams` against this model.

        ``params`` (an object, a mapping of field names, or ``None`` for the defaults) with
        keyword ``overrides`` applied, e.g. ``conv.make_params(pitch=2)``.

        Raises:
            ParameterError: an unknown name (the message suggests the nearest one), a value
                of the wrong type or out of its range, a ``speaker`` the model lacks.
        """
        return self.engine.params(cast(Any, params), **overrides)  # any Mapping, as ConversionParams.build

    # ------------------------------------------------------------------ conversion

    def convert(
        self,
        audio_or_path: ConvertInput,
        sample_rate: int | np.integer[Any] | ConversionParams | Mapping[str, Any] | None = None,
        params: ParamsInput = None,
        **overrides: Any,
    ) -> Result:
        """Convert one file or array and return the waveform (nothing is written).

        Settings are ``params`` and/or keyword overrides named as the fields of
        :class:`~rvcfast.ConversionParams` (``pitch``, ``index_rate``, ``protect``,
        ``rms_mix_rate``, ``filter_radius``, ``speaker``, ``noise``, ``seed``,
        ``output_sample_rate``, ``keep_length``, ``channels``, ``strict``, ...). A file's
        settings may also come second: ``convert(path, params)`` (an object or a mapping).

        Args:
            audio_or_path: A path (any format soundfile or, with the ``av`` extra, PyAV
                reads), or samples: a NumPy array (float, or integer PCM scaled from its full
                scale) ``[samples]`` or ``[samples, channels]``, a list of numbers, or a
                torch tensor (any precision or device; detached and copied to the CPU).
            sample_rate: The rate of array input, a whole number of Hz in 1000..768000 (a
                NumPy integer too); leave it out for a path.
            params: A :class:`~rvcfast.ConversionParams` or a mapping of its field names.
            **overrides: Single settings applied on top of ``params``.

        Returns:
            The input's Result, with ``audio`` float32 at ``sample_rate`` (the model's, or
                ``output_sample_rate``); ``warnings`` names anything odd about the input (e.g. a
                truncated file). Errors are raised, never returned in it.

        Raises:
            AudioError: the file is missing or cannot be decoded; the samples hold NaN or
                infinite values, are empty, shorter than 25 ms (10 ms with
                ``keep_length=True``) or channels-first; the sample rate is outside
                1000..768000 Hz; with ``strict=True``, any input warning.
            ParameterError: a setting is unknown, of the wrong type or out of range; the
                input is not audio (``None``, a dict); ``sample_rate`` is missing for
                samples, or is text or a bool.
            BackendUnavailableError: a setting needs an optional extra that is not
                installed (``formant``, ``clean``, ``effects``).
        """
        _refuse_many(audio_or_path)
        check_setting_names(overrides, ("sample_rate", "params"))
        rate: Any = sample_rate  # checked by the engine: a whole number of Hz, never text or a bool
        if isinstance(sample_rate, (ConversionParams, Mapping)) and params is None:  # convert(path, settings)
            params, rate = sample_rate, None
        source: Any = audio_or_path  # the engine names what it got when it is not audio
        return self.engine.convert(source, rate, self.make_params(params, **overrides))

    def iter_batch(
        self,
        inputs: Iterable[BatchItem] | BatchItem,
        out_dir: str | os.PathLike[str] | None = None,
        params: ParamsInput = None,
        *,
        format: str = "wav",
        subtype: str | None = None,
        bitrate: int | None = None,
        name_template: str = "{stem}",
        skip_existing: bool = False,
        on_error: str = "continue",
        recursive: bool = False,
        batch_seconds: float | None = None,
        decode_workers: int = 2,
        write_workers: int = 1,
        f0_workers: int = 2,
        compute_workers: int | None = None,
        keep_audio: bool | None = None,
        progress: ProgressCallback | None = None,
        audio_progress: AudioProgressCallback | None = None,
        **overrides: Any,
    ) -> Iterator[Result]:
        """Convert many inputs, yielding a :class:`Result` per input as files finish.

        ``inputs``: paths, folders (``recursive=True`` to descend), or
        ``(samples, sample_rate)`` tuples (a NumPy array, a torch tensor or a list of
        numbers), in any mix, or one of them alone; anything else is a
        :class:`~rvcfast.errors.ParameterError` naming the item's position. With ``out_dir``
        each output is written there atomically as ``name_template.format(stem=...,
        parent=..., index=..., ext=..., voice=..., pitch=...)`` (the input's stem, its folder's
        name, its position, the format's extension, the voice's name, the pitch shift) plus the format's extension (``wav``, ``flac``, ``ogg``,
        ``mp3``, ``m4a``: AAC through PyAV, the ``av`` extra; ``subtype`` e.g. ``"PCM_16"``,
        ``"OPUS"`` for ogg, ``"ALAC"`` for a lossless m4a); mp3 and m4a are written at the
        nearest rate their codec takes (40 kHz voices at 44.1 kHz). ``bitrate`` (kbit/s, the
        total of all channels) sets a lossy encoder's bitrate: mp3 8..320 (the MPEG bitrates
        of the output rate, constant bitrate), ogg with ``subtype="OPUS"`` 6..256, m4a (AAC)
        16..320; wav, flac, ogg/Vorbis and ALAC take none (a :class:`~rvcfast.errors.ParameterError`
        before any work, as for a value out of range). Without it each encoder keeps its default.
        Names are made unique and never equal an input. The template may name a subfolder
        (``"{index:03d}/{stem}"``); an unknown field, an absolute path or one that leaves ``out_dir`` is refused before any work.
        ``skip_existing`` skips inputs whose output exists and reads as audio (resume a
        killed batch; an empty or unreadable file in an output's place is converted again).
        ``on_error="continue"`` (default) reports a failing file in its Result and
        goes on; ``"stop"`` converts, writes and reports every file before the failing
        one, then raises its error (nothing after it is written). ``batch_seconds`` bounds the audio batched
        together per model call (default: the engine's, 8 s on CPU, 120 s on GPU).
        ``compute_workers`` groups of files go through the networks at once, each in its
        own thread with an equal share of torch's intra-op threads (default: what
        ``rvcfast tune`` measured on this machine, else 1; never more workers than files,
        and on a CPU as many as divide the thread count evenly; each worker sets its own
        thread's count, the caller's is left as it is). ``decode_workers`` (default 2) threads decode inputs,
        ``write_workers`` (default 1) write outputs and ``f0_workers`` (default 2) processes run
        the CPU F0 backends (harvest, dio, pm). ``keep_audio`` keeps each Result's ``audio``
        after writing it (default: only without ``out_dir``, where nothing is written).
        ``progress(result, done, total)`` is called per finished file.
        ``audio_progress(index, seconds)`` follows the work inside files: after each model batch, for
        each input it worked on, ``seconds`` of that input's audio are through the models (``index``
        is its Result's ``index``); a long input's F0 blocks (RMVPE, over about 80 s) count as the
        first fifth of its seconds, reported after each block; otherwise F0 comes first. It is called from the compute threads; :meth:`BatchProgress.advance
        <rvcfast.progress.BatchProgress.advance>` takes it. Conversion settings are ``params``
        and/or keyword overrides, as for :meth:`convert`.

        Returns:
            An iterator of Results, one per input in the order they finish
                (``Result.index`` is the input's position). A file that fails has ``error`` set
                (naming it) and the batch goes on, unless ``on_error="stop"``.

        Raises:
            ParameterError: at the call, before any work: a bad option (format, bitrate,
                template, worker count, ``on_error``), setting, or item of an input list.
            BackendUnavailableError: at the call: the format or a setting needs a missing
                extra (``m4a`` needs ``av``).
            RvcfastError: while iterating with ``on_error="stop"``: the first failing file's
                error (an :class:`~rvcfast.errors.AudioError` for an unreadable input).
        """
        from .batch import BatchOptions, run_batch

        check_setting_names(overrides, _BATCH_OPTIONS)  # a misspelled option: "did you mean the option 'out_dir'?"
        conv_params = self.make_params(params, **overrides)
        options = BatchOptions(
            out_dir=out_dir,
            format=format,
            subtype=subtype,
            bitrate=bitrate,
            name_template=name_template,
            skip_existing=skip_existing,
            on_error=on_error,
            recursive=recursive,
            batch_seconds=batch_seconds,
            decode_workers=decode_workers,
            write_workers=write_workers,
            f0_workers=f0_workers,
            compute_workers=compute_workers,
            keep_audio=(out_dir is None) if keep_audio is None else keep_audio,
        )
        options.validate()  # bad options fail here, not when the iterator is first advanced
        return run_batch(self.engine, inputs, conv_params, options, progress, audio_progress)

    def convert_batch(
        self,
        inputs: Iterable[BatchItem] | BatchItem,
        out_dir: str | os.PathLike[str] | None = None,
        params: ParamsInput = None,
        **kwargs: Any,
    ) -> list[Result]:
        """Convert many inputs and return every :class:`Result` in input order.

        Same arguments, and the same errors, as :meth:`iter_batch`. Without ``out_dir``
        nothing is written and each Result holds its audio; with ``out_dir`` the audio is
        dropped from the Results after writing unless ``keep_audio=True``. A failing file
        has ``error`` set in its Result (``on_error="continue"``, the default).
        """
        results = list(self.iter_batch(inputs, out_dir, params, **kwargs))
        return sorted(results, key=lambda r: -1 if r.index is None else r.index)


#: The keyword options of :meth:`Converter.iter_batch` / :meth:`Converter.convert_batch`.
_BATCH_OPTIONS = tuple(
    name for name, p in inspect.signature(Converter.iter_batch).parameters.items()
    if name not in ("self", "inputs") and p.kind is not p.VAR_KEYWORD
)


def _refuse_many(source: Any) -> None:
    """A list or tuple of paths given to :meth:`Converter.convert` is a :class:`ParameterError`
    pointing at ``convert_batch`` (not "sample_rate is required for array input")."""
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, (str, bytes, os.PathLike)) for s in source):
        raise ParameterError(
            f"input: convert() takes one file or one array, got a {type(source).__name__} of {len(source)} path(s); "
            "convert several files with convert_batch(paths, out_dir=...), or pass one path"
        )
