"""The public entry point: :class:`Converter`.

A Converter holds one voice model (and its optional index) in an
:class:`~rvcfast.engine.Engine`; the base models (content encoder, F0 model) come from
the process-wide cache in :mod:`rvcfast.cache`, so any number of Converters and files
share one copy. ``convert`` is a batch of one through the engine; ``convert_batch`` /
``iter_batch`` hand many inputs to the file scheduler in :mod:`rvcfast.batch`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .audio import AudioInput
from .engine import Engine
from .params import ConversionParams
from .protocols import F0Extractor, FeatureEncoder, Vocoder
from .result import Result
from .segment import SegmentConfig

__all__ = ["Converter", "Result"]


class Converter:
    """Converts audio to one voice. Build it with :meth:`from_pretrained`.

    Conversion settings are one :class:`~rvcfast.ConversionParams` (``params=``) and/or
    keyword overrides named as its fields (``pitch=2, index_rate=0.5, ...``; see
    ``docs/parameters.md``)::

        conv = rvcfast.Converter.from_pretrained("voice.pth", index="voice.index")
        result = conv.convert("input.wav", pitch=2)
        soundfile.write("out.wav", result.audio, result.sample_rate)
    """

    def __init__(
        self,
        vocoder: Vocoder,
        encoder: FeatureEncoder,
        f0_extractor: F0Extractor | None,
        index: Any | None = None,
        *,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        segment_config: SegmentConfig = SegmentConfig(),
        batch_seconds: float | None = None,
    ) -> None:
        self.engine = Engine(
            vocoder, encoder, f0_extractor, index,
            device=device, dtype=dtype, segment_config=segment_config, batch_seconds=batch_seconds,
        )

    @classmethod
    def from_engine(cls, engine: Engine) -> Converter:
        """A Converter around an existing :class:`~rvcfast.engine.Engine` (models shared, nothing loaded)."""
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
        """Load a voice model (``.pth``) with its optional faiss ``.index``.

        Parameters
        ----------
        model:
            RVC/Applio voice model file (v1 or v2, with or without F0, 32/40/48 kHz).
        index:
            faiss ``.index`` file for retrieval (read without faiss), or ``None``.
        encoder:
            ``hubert_base.pt`` (fairseq layout) or a Hugging Face ContentVec folder;
            default: found in ``$RVCFAST_HOME`` or the user cache.
        f0:
            F0 backend name (``rmvpe``, ``crepe``, ``crepe-tiny``, ``fcpe``, ``harvest``,
            ``dio``, ``pm``, ``hybrid:a+b``, or a plugin's name) or an F0Extractor object.
        f0_weights:
            Weights file for the F0 backend (``rmvpe.pt`` for RMVPE).
        device:
            ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype:
            ``torch.float32`` (default), ``torch.bfloat16``, ``torch.float16`` (CUDA, or a CPU with AVX512-FP16),
            or ``"auto"`` (bfloat16 where the hardware computes it natively, else float32).
        f0_options:
            Extra keyword options for the F0 backend.
        allow_download:
            Download missing base weights into the cache on first use.
        batch_seconds:
            16 kHz audio packed into one model call (default: 8 s on CPU, 120 s on GPU).
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
        return self.engine.vocoder

    @property
    def encoder(self) -> FeatureEncoder:
        return self.engine.encoder

    @property
    def f0_extractor(self) -> F0Extractor | None:
        return self.engine.f0_extractor

    @property
    def index(self) -> Any | None:
        return self.engine.index

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.dtype

    @property
    def segment_config(self) -> SegmentConfig:
        return self.engine.segment_config

    @property
    def sample_rate(self) -> int:
        """The voice model's output sample rate."""
        return self.engine.sample_rate

    def make_params(self, params: ConversionParams | dict[str, Any] | None = None, **overrides: Any) -> ConversionParams:
        """Build and validate :class:`~rvcfast.ConversionParams` against this model."""
        return self.engine.params(params, **overrides)

    # ------------------------------------------------------------------ conversion

    def convert(
        self,
        audio_or_path: AudioInput,
        sample_rate: int | None = None,
        params: ConversionParams | dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Result:
        """Convert one file or array and return the waveform (nothing is written).

        ``audio_or_path`` is a path, or a float/int array ``[samples]`` or
        ``[samples, channels]`` with ``sample_rate``. Settings: ``params`` and/or keyword
        overrides (``pitch``, ``index_rate``, ``protect``, ``rms_mix_rate``,
        ``filter_radius``, ``speaker``, ``noise``, ``seed``, ``output_sample_rate``,
        ``keep_length``, ``strict``, ...; see :class:`~rvcfast.ConversionParams`); a file's
        settings may also come second, ``convert(path, params)`` (an object or a mapping).
        ``Result.warnings`` names anything odd about the input (e.g. a truncated file).
        """
        if isinstance(sample_rate, (ConversionParams, Mapping)) and params is None:  # convert(path, settings)
            params, sample_rate = sample_rate, None
        return self.engine.convert(audio_or_path, sample_rate, self.make_params(params, **overrides))

    def iter_batch(
        self,
        inputs: Any,
        out_dir: str | os.PathLike[str] | None = None,
        params: ConversionParams | dict[str, Any] | None = None,
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
        progress: Any = None,
        audio_progress: Any = None,
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
        and on a CPU as many as divide the thread count evenly; the thread count is
        restored when the batch ends). ``progress(result, done, total)`` is called per finished file.
        ``audio_progress(index, seconds)`` follows the work inside files: after each model batch, for
        each input it worked on, ``seconds`` of that input's audio are through the models (``index``
        is its Result's ``index``; F0 comes first, so a long file's count starts once its pitch is
        tracked). It is called from the compute threads; :meth:`BatchProgress.advance
        <rvcfast.progress.BatchProgress.advance>` takes it. Conversion settings are ``params``
        and/or keyword overrides, as for :meth:`convert`.
        """
        from .batch import BatchOptions, run_batch

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
        inputs: Any,
        out_dir: str | os.PathLike[str] | None = None,
        params: ConversionParams | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Result]:
        """Convert many inputs and return every :class:`Result` in input order.

        Same arguments as :meth:`iter_batch`. Without ``out_dir`` nothing is written and
        each Result holds its audio; with ``out_dir`` the audio is dropped from the
        Results after writing unless ``keep_audio=True``.
        """
        results = list(self.iter_batch(inputs, out_dir, params, **kwargs))
        return sorted(results, key=lambda r: -1 if r.index is None else r.index)
