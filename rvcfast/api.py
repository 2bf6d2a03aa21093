"""The public entry point: :class:`Converter`.

A Converter holds one voice model (and its optional index); the base models
(content encoder, F0 model) come from the process-wide cache in
:mod:`rvcfast.cache`, so any number of Converters and files share one copy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import cache
from .audio import AudioInput, load_16k
from .errors import ModelLoadError, ParameterError
from .pipeline import (
    ConversionParams,
    PreparedAudio,
    SegmentInput,
    Timer,
    apply_protect,
    finish,
    pitch_track,
    prepare,
    segment_features,
    segment_frames,
    segment_inputs,
    segment_output_length,
)
from .protocols import F0Extractor, FeatureEncoder, Vocoder
from .segment import SegmentConfig

__all__ = ["Converter", "Result", "resolve_device", "load_encoder_cached", "SEGMENT_BATCH_SAMPLES"]

#: Most 16 kHz samples of one input's segments sent through the models together by
#: :meth:`Converter.convert` (60 s; the batch engine uses ``batch_seconds``).
SEGMENT_BATCH_SAMPLES = 60 * 16000


@dataclass
class Result:
    """The outcome of converting one input.

    ``audio`` is float32 mono at ``sample_rate`` (empty when ``error`` is set);
    ``timings`` maps stage names (``decode``, ``f0``, ``features``, ``index``,
    ``synth``, ``post``, ``write``) to seconds.
    """

    audio: np.ndarray
    sample_rate: int
    timings: dict[str, float] = field(default_factory=dict)
    source: str | None = None
    output_path: str | None = None
    error: str | None = None
    skipped: bool = False
    input_seconds: float = 0.0
    index: int | None = None

    @property
    def ok(self) -> bool:
        """True when the conversion succeeded."""
        return self.error is None

    @property
    def duration(self) -> float:
        """Output duration in seconds."""
        return self.audio.shape[0] / self.sample_rate if self.sample_rate else 0.0


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else CPU; anything else as given."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} requested but CUDA is not available")
    return dev


def _check_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
        if dtype.lower() not in names:
            raise ParameterError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ParameterError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if dtype == torch.float16 and device.type == "cpu":
        raise ParameterError("float16 is only supported on CUDA; use bfloat16 on CPU")
    return dtype


def load_encoder_cached(
    encoder: str | os.PathLike[str] | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    allow_download: bool = False,
) -> FeatureEncoder:
    """The process-wide content encoder for this file/folder, device and dtype."""
    from .models.encoder import load_encoder
    from .weights import resolve_weights

    path = resolve_weights("hubert", encoder, allow_download=allow_download)
    return cache.get_or_load("encoder", path, device, dtype, lambda: load_encoder(path, device=device, dtype=dtype))


class Converter:
    """Converts audio to one voice. Build it with :meth:`from_pretrained`.

    Example::

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
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        segment_config: SegmentConfig = SegmentConfig(),
    ) -> None:
        if vocoder.has_f0 and f0_extractor is None:
            raise ParameterError("this voice model uses pitch (F0): an F0 extractor is required")
        if index is not None and index.dim != vocoder.feature_dim:
            raise ModelLoadError(
                getattr(index, "path", None),
                f"index dimension {index.dim} does not match the voice model's feature dimension "
                f"{vocoder.feature_dim} ({vocoder.version}); use the index trained with this model",
            )
        self.vocoder = vocoder
        self.encoder = encoder
        self.f0_extractor = f0_extractor
        self.index = index
        self.device = device
        self.dtype = dtype
        self.segment_config = segment_config

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
            ``torch.float32`` (default), ``torch.bfloat16``, or ``torch.float16`` (CUDA only).
        f0_options:
            Extra keyword options for the F0 backend.
        allow_download:
            Download missing base weights into the cache on first use.
        """
        from .index import load_index
        from .models.synthesizer import load_vocoder

        dev = resolve_device(device)
        dt = _check_dtype(dtype, dev)
        vocoder = load_vocoder(model, device=dev, dtype=dt)
        idx = load_index(index, device=dev) if index is not None else None
        if idx is not None and idx.dim != vocoder.feature_dim:
            raise ModelLoadError(
                index,
                f"index dimension {idx.dim} does not match the voice model's feature dimension "
                f"{vocoder.feature_dim} ({vocoder.version} model {os.fspath(model)}); use the index trained with this model",
            )
        enc = load_encoder_cached(encoder, dev, dt, allow_download=allow_download)
        extractor: F0Extractor | None = None
        if vocoder.has_f0:
            if isinstance(f0, str):
                from .f0.registry import get_f0_extractor, parse_hybrid

                # the F0 network runs in the converter's dtype too (bf16 RMVPE is ~1.7x faster
                # on AVX512-BF16 CPUs); f0_options={"dtype": ...} overrides it
                options = {"dtype": dt, **(f0_options or {})}
                rmvpe_opts: dict[str, Any] = {}
                if f0_weights is not None:
                    rmvpe_opts["weights"] = f0_weights
                if allow_download:
                    rmvpe_opts["allow_download"] = True
                members = parse_hybrid(f0)
                if members is not None:
                    # weights belong to the RMVPE member only (e.g. fcpe takes a weights option too)
                    if "rmvpe" in members and rmvpe_opts:
                        options["rmvpe"] = {**rmvpe_opts, **options.get("rmvpe", {})}
                elif f0.strip().lower() == "rmvpe":
                    options = {**rmvpe_opts, **options}
                elif f0_weights is not None:
                    options["weights"] = f0_weights
                extractor = get_f0_extractor(f0, device=dev, **options)
            else:
                if not isinstance(f0, F0Extractor):
                    raise ParameterError(f"f0 must be a backend name or an F0Extractor, got {type(f0).__name__}")
                extractor = f0
        return cls(vocoder, enc, extractor, idx, device=dev, dtype=dt)

    # ------------------------------------------------------------------ single input

    @property
    def sample_rate(self) -> int:
        """The voice model's output sample rate."""
        return self.vocoder.sample_rate

    def make_params(self, **kwargs: Any) -> ConversionParams:
        """Build and validate :class:`ConversionParams` against this model."""
        params = ConversionParams(**kwargs)
        params.validate(self.vocoder)
        return params

    def convert(
        self,
        audio_or_path: AudioInput,
        sample_rate: int | None = None,
        *,
        pitch: float = 0,
        index_rate: float = 0.75,
        protect: float = 0.33,
        rms_mix_rate: float = 1.0,
        filter_radius: int = 3,
        speaker: int = 0,
        noise: bool = True,
        seed: int | None = None,
        output_sample_rate: int | None = None,
        keep_length: bool = False,
    ) -> Result:
        """Convert one file or array and return the waveform (nothing is written).

        ``audio_or_path`` is a path, or a float/int array ``[samples]`` or
        ``[samples, channels]`` with ``sample_rate``. See
        :class:`~rvcfast.pipeline.ConversionParams` for every parameter.
        """
        params = self.make_params(
            pitch=pitch,
            index_rate=index_rate,
            protect=protect,
            rms_mix_rate=rms_mix_rate,
            filter_radius=filter_radius,
            speaker=speaker,
            noise=noise,
            seed=seed,
            output_sample_rate=output_sample_rate,
            keep_length=keep_length,
        )
        timer = Timer(self.device)
        source = os.fspath(audio_or_path) if isinstance(audio_or_path, (str, os.PathLike)) else None
        with timer.stage("decode"):
            audio16k = load_16k(audio_or_path, sample_rate)
            prep = prepare(audio16k, self.segment_config)
        audio, rate = self.convert_prepared(prep, params, timer)
        return Result(
            audio=audio,
            sample_rate=rate,
            timings=dict(timer.times),
            source=source,
            input_seconds=prep.seconds,
        )

    # ------------------------------------------------------------------ many inputs

    def iter_batch(
        self,
        inputs: Any,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        format: str = "wav",
        subtype: str | None = None,
        name_template: str = "{stem}",
        skip_existing: bool = False,
        on_error: str = "continue",
        recursive: bool = False,
        batch_seconds: float | None = None,
        decode_workers: int = 2,
        write_workers: int = 1,
        f0_workers: int = 2,
        keep_audio: bool | None = None,
        progress: Any = None,
        pitch: float = 0,
        index_rate: float = 0.75,
        protect: float = 0.33,
        rms_mix_rate: float = 1.0,
        filter_radius: int = 3,
        speaker: int = 0,
        noise: bool = True,
        seed: int | None = None,
        output_sample_rate: int | None = None,
        keep_length: bool = False,
    ):
        """Convert many inputs, yielding a :class:`Result` per input as files finish.

        ``inputs``: paths, folders (``recursive=True`` to descend), or
        ``(array, sample_rate)`` pairs, in any mix. With ``out_dir`` each output is
        written there atomically as ``name_template.format(stem=..., index=...)``
        plus the format's extension (``wav``, ``flac``, ``ogg``; ``subtype`` e.g.
        ``"PCM_16"``); names are made unique and never equal an input.
        ``skip_existing`` skips inputs whose output exists (resume a killed batch).
        ``on_error="continue"`` (default) reports a failing file in its Result and
        goes on; ``"stop"`` raises. ``batch_seconds`` bounds the audio batched
        together per model call (default: 8 s on CPU, where batching does not pay, 120 s on GPU). ``progress(result, done, total)`` is called per finished file.
        The conversion parameters are those of :meth:`convert`.
        """
        from .batch import BatchOptions, run_batch

        params = self.make_params(
            pitch=pitch,
            index_rate=index_rate,
            protect=protect,
            rms_mix_rate=rms_mix_rate,
            filter_radius=filter_radius,
            speaker=speaker,
            noise=noise,
            seed=seed,
            output_sample_rate=output_sample_rate,
            keep_length=keep_length,
        )
        options = BatchOptions(
            out_dir=out_dir,
            format=format,
            subtype=subtype,
            name_template=name_template,
            skip_existing=skip_existing,
            on_error=on_error,
            recursive=recursive,
            batch_seconds=batch_seconds,
            decode_workers=decode_workers,
            write_workers=write_workers,
            f0_workers=f0_workers,
            keep_audio=(out_dir is None) if keep_audio is None else keep_audio,
        )
        options.validate()  # bad options fail here, not when the iterator is first advanced
        return run_batch(self, inputs, params, options, progress)

    def convert_batch(self, inputs: Any, out_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> list[Result]:
        """Convert many inputs and return every :class:`Result` in input order.

        Same arguments as :meth:`iter_batch`. Without ``out_dir`` nothing is written and
        each Result holds its audio; with ``out_dir`` the audio is dropped from the
        Results after writing unless ``keep_audio=True``.
        """
        results = list(self.iter_batch(inputs, out_dir, **kwargs))
        return sorted(results, key=lambda r: -1 if r.index is None else r.index)

    # ------------------------------------------------------------------ stages

    def _extractor_for(self, params: ConversionParams) -> F0Extractor | None:
        ext = self.f0_extractor
        if ext is not None and hasattr(ext, "filter_radius") and ext.filter_radius != params.filter_radius:
            import copy

            ext = copy.copy(ext)
            ext.filter_radius = params.filter_radius  # type: ignore[attr-defined]
        return ext

    def pitch_for(self, prep: PreparedAudio, params: ConversionParams, f0: np.ndarray | None = None):
        """``(coarse, pitchf)`` for a prepared input (``None, None`` for models without F0)."""
        if not self.vocoder.has_f0:
            return None, None
        if f0 is None:
            ext = self._extractor_for(params)
            assert ext is not None
            f0 = ext.extract(prep.padded)
        return pitch_track(np.asarray(f0), prep.p_len, params)

    def convert_prepared(
        self, prep: PreparedAudio, params: ConversionParams, timer: Timer, f0: np.ndarray | None = None
    ) -> tuple[np.ndarray, int]:
        """Run F0, features, index, synthesis and post-processing for one prepared input."""
        from .batch import release_memory

        with timer.stage("f0"):
            coarse, pitchf = self.pitch_for(prep, params, f0)
        segs = segment_inputs(prep, coarse, pitchf, params.seed)
        voc = self.vocoder
        trim = voc.sample_rate * self.segment_config.x_pad
        lengths = [
            segment_output_length(s.audio.shape[0], s.frames, voc.hop_length, trim, params.keep_length) for s in segs
        ]
        out = np.empty(sum(lengths), dtype=np.float32)
        # segments go through the models in groups of at most SEGMENT_BATCH_SAMPLES
        # (bounded memory however long the input is), written in place into the output
        pos, k = 0, 0
        while k < len(segs):
            j, total = k + 1, segs[k].audio.shape[0]
            while j < len(segs) and total + segs[j].audio.shape[0] <= SEGMENT_BATCH_SAMPLES:
                total += segs[j].audio.shape[0]
                j += 1
            for piece in self.synthesize_segments(segs[k:j], params, timer):
                out[pos : pos + piece.shape[0]] = piece
                pos += piece.shape[0]
            release_memory()
            k = j
        with timer.stage("post"):
            return finish(out[:pos], prep, voc.sample_rate, params)

    def synthesize_segments(
        self,
        segs: Sequence[SegmentInput],
        params: ConversionParams,
        timer: Timer,
    ) -> list[np.ndarray]:
        """Features → index → ×2 → protect → synthesis → trim, for segments batched together."""
        with torch.inference_mode():
            with timer.stage("features"):
                feats = segment_features(
                    self.encoder,
                    [s.audio for s in segs],
                    self.vocoder.version,
                    self.device,
                    self.dtype,
                    params.v1_output_layer,
                )
            use_protect = self.vocoder.has_f0 and params.protect < 0.5
            prepared: list[tuple[torch.Tensor, torch.Tensor | None]] = []
            with timer.stage("index"):
                for f in feats:
                    f0feats = f.clone() if use_protect else None
                    if self.index is not None and params.index_rate != 0:
                        f = self.index.blend(f.float(), params.index_rate).to(f.dtype)
                    f = f.repeat_interleave(2, dim=0)
                    if f0feats is not None:
                        f0feats = f0feats.repeat_interleave(2, dim=0)
                    prepared.append((f, f0feats))
            with timer.stage("synth"):
                return self._synth_batch(segs, prepared, params, use_protect)

    def _synth_batch(
        self,
        segs: Sequence[SegmentInput],
        prepared: list[tuple[torch.Tensor, torch.Tensor | None]],
        params: ConversionParams,
        use_protect: bool,
    ) -> list[np.ndarray]:
        voc = self.vocoder
        items = []
        for seg, (f, f0feats) in zip(segs, prepared):
            n = seg.audio.shape[0]
            if params.keep_length:
                p_len = segment_frames(n, seg.frames, True)
                if f.shape[0] < p_len:  # repeat the last content frame to cover the whole span
                    f = torch.cat([f, f[-1:].expand(p_len - f.shape[0], -1)])
                    if f0feats is not None:
                        f0feats = torch.cat([f0feats, f0feats[-1:].expand(p_len - f0feats.shape[0], -1)])
            else:
                p_len = min(n // 160, f.shape[0])
            f = f[:p_len]
            pitch = pitchf = None
            if voc.has_f0:
                assert seg.pitch is not None and seg.pitchf is not None
                pitch = torch.from_numpy(np.ascontiguousarray(seg.pitch[:p_len])).to(self.device)
                pitchf = torch.from_numpy(np.ascontiguousarray(seg.pitchf[:p_len])).to(self.device)
                if use_protect and f0feats is not None:
                    f = apply_protect(f, f0feats[:p_len], pitchf, params.protect)
            items.append((f, p_len, pitch, pitchf))
        T = max(it[1] for it in items)
        B = len(items)
        C = items[0][0].shape[1]
        feats = torch.zeros(B, T, C, device=self.device, dtype=self.dtype)
        lengths = torch.tensor([it[1] for it in items], device=self.device)
        pitch_b = pitchf_b = None
        if voc.has_f0:
            pitch_b = torch.ones(B, T, dtype=torch.long, device=self.device)
            pitchf_b = torch.zeros(B, T, dtype=torch.float32, device=self.device)
        for i, (f, p_len, pitch, pitchf) in enumerate(items):
            feats[i, :p_len] = f.to(self.dtype)
            if pitch_b is not None:
                pitch_b[i, :p_len] = pitch
                pitchf_b[i, :p_len] = pitchf
        generators = None
        if params.noise and any(seg.seed is not None for seg in segs):
            generators = []
            for seg in segs:
                g = torch.Generator(device=self.device)
                if seg.seed is not None:
                    g.manual_seed(seg.seed)
                else:
                    g.seed()
                generators.append(g)
        skip = 100 * self.segment_config.x_pad  # frames of padding context dropped at each end
        out = voc.synthesize(
            feats, lengths, pitch_b, pitchf_b, speaker=params.speaker, noise=params.noise, generator=generators,
            **({"skip_frames": skip} if getattr(voc, "supports_skip_frames", False) else {}),
        )
        out = out.float().cpu().numpy()
        trim = voc.sample_rate * self.segment_config.x_pad
        hop = voc.hop_length
        return [out[i, : items[i][1] * hop][trim : items[i][1] * hop - trim] for i in range(B)]
