"""RMVPE inference: mel windows, chunking, batching, and salience-to-F0 decoding.

The mel front end, padding to a multiple of 32 frames (``"reflect"`` like Applio,
``"constant"`` zeros like the RVC WebUI), Applio's 32000-frame chunking and the
float64/float32 decoding numerics follow the references.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ...errors import AudioError, ParameterError
from ...packing import pack
from .mel import HOP_LENGTH, MEL_CLAMP, N_FFT, N_MELS, mel_filterbank, reflect_index, reflect_pad_last
from .network import E2E, E2EConfig

__all__ = [
    "RMVPE",
    "decode_salience",
    "CENTS_OFFSET",
    "APPLIO_CHUNK_FRAMES",
    "FRAME_MULTIPLE",
    "DEFAULT_OVERLAP_FRAMES",
    "AudioLike",
]

CENTS_OFFSET = 1997.3794084376191
"""Cents of bin 0 (31.7 Hz relative to 10 Hz)."""
APPLIO_CHUNK_FRAMES = 32000
"""Applio runs the network on the padded mel in non-overlapping chunks of this many frames."""
FRAME_MULTIPLE = 32
"""The U-Net pools time by 2 five times: the network input length must be a multiple of 32."""
DEFAULT_OVERLAP_FRAMES = 512
"""Context frames on each side of a chunk in bounded-memory chunked inference."""
_MEL_BLOCK_FRAMES = 8192  # STFT frames computed at once (bounds the complex STFT buffer)

AudioLike = np.ndarray | torch.Tensor | Sequence[float]


def decode_salience(salience: np.ndarray, threshold: float = 0.03) -> np.ndarray:
    """Salience ``[T, 360]`` to F0 in Hz (float64, 0 = unvoiced), with the reference's numerics.

    Per frame: arg-max bin ``c``; the 9 bins ``c-4..c+4`` of the salience and
    of the cents table ``20·k + 1997.379...`` (both zero-padded by 4);
    numerator ``Σ s·m`` in float64 (float32 salience × float64 cents),
    denominator ``Σ s`` in float32; ``max(s) <= threshold`` gives 0 cents;
    ``f0 = 10·2^(cents/1200)`` and exactly 10 Hz becomes 0.
    """
    sal = np.asarray(salience, dtype=np.float32)
    if sal.ndim != 2:
        raise ValueError(f"salience must be [T, bins], got shape {sal.shape}")
    n_bins = sal.shape[1]
    cents_table = np.pad(20 * np.arange(n_bins) + CENTS_OFFSET, (4, 4))
    if sal.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    centre = np.argmax(sal, axis=1)
    padded = np.pad(sal, ((0, 0), (4, 4)))
    cols = centre[:, None] + np.arange(9)[None, :]
    rows = np.arange(sal.shape[0])[:, None]
    window = padded[rows, cols]
    cents_win = cents_table[cols]
    numerator = np.sum(window * cents_win, 1)
    denominator = np.sum(window, 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero frames: 0/0, then set to 0 below
        cents = numerator / denominator
    cents[np.max(padded, axis=1) <= threshold] = 0
    f0 = 10 * (2 ** (cents / 1200))
    f0[f0 == 10] = 0
    return f0


# --------------------------------------------------------------------------- the predictor


def _decoded(salience_step: Callable[[], np.ndarray], threshold: float) -> np.ndarray:
    return decode_salience(salience_step(), threshold)


def _as_audio(audio: AudioLike) -> torch.Tensor:
    """Validate one 16 kHz mono input and return it as a 1-D float32 CPU tensor.

    Integer arrays are PCM and are scaled to ±1 as :func:`rvcfast.audio.load_audio_16k`
    does (full scale ``2**(bits-1)``; unsigned PCM centred on it): the log-mel depends on
    the level, so unscaled int16 samples gave a wrong track."""
    if isinstance(audio, torch.Tensor) and audio.is_floating_point():
        t = audio.detach()
    else:
        arr = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise AudioError(None, f"RMVPE expects numeric audio, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.integer):
            from ...audio import pcm_to_float

            arr = pcm_to_float(arr, None)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 1:
        raise AudioError(None, f"RMVPE expects 1-D mono audio at 16 kHz, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise AudioError(None, "RMVPE got empty audio")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise AudioError(None, "audio contains NaN or Inf samples")
    return t


def _padded_len(n_frames: int) -> int:
    return FRAME_MULTIPLE * ((n_frames - 1) // FRAME_MULTIPLE + 1)


class RMVPE(nn.Module):
    """The RMVPE pitch estimator: 16 kHz audio to salience and F0 at 100 frames/s.

    Build it with :func:`load_rmvpe`. ``infer`` returns ``len(audio)//160 + 1``
    frames of F0 in Hz (float64, 0 = unvoiced), matching Applio
    (``pad_mode="reflect"``, the default) or the RVC WebUI
    (``pad_mode="constant"``).

    **Long inputs.** ``chunk_frames`` controls how the network sees the padded
    mel:

    * ``None`` (default): the reference's behaviour. With ``"reflect"`` this is
      Applio's: one pass up to 32000 frames (320 s), beyond that independent
      non-overlapping 32000-frame chunks. With ``"constant"`` it is the WebUI's
      single pass over the whole input.
    * ``0``: one pass over the whole input, however long.
    * ``C > 0`` (a multiple of 32): bounded-memory chunked inference. Each
      chunk of ``C`` frames is run with ``overlap_frames`` extra frames of
      context on each side and only its centre is kept; the mel is computed per
      window too, so memory is bounded by the chunk size (plus the input audio
      and the F0 output). ``overlap_frames=0`` with ``C=32000`` reproduces
      Applio's chunking exactly.

    Measured against a single pass (``chunk_frames=0``) on a 10-minute input
    (the shared 60 s speech clip tiled ×10, 60001 frames) with the reduced
    golden model, CPU float32: ``chunk_frames=4096`` with the default
    ``overlap_frames=512``: max salience difference 1.5e-07, voicing
    identical, max F0 difference 5.6e-05 Hz on voiced frames (2048/256:
    2.0e-07 and 5.2e-05 Hz; 2048/128: 2.1e-07 and 5.3e-05 Hz), i.e. float32
    rounding noise. Peak RSS of the whole process: 0.60 GB chunked vs 2.1 GB
    for the single pass; with chunking it grows only with the audio and F0
    arrays (about 0.5 GB per hour of input). For comparison, Applio's own
    split (32000 frames, no overlap) differs from the single pass by up to
    0.016 in salience and flips 4 voicing decisions near the chunk border.
    The full-size architecture has a larger theoretical receptive field
    (about ±1550 frames through the U-Net); with random full-size weights
    (:func:`rvcfast.testing.save_random_rmvpe`, 60 s input, ``chunk_frames=1024``) overlaps
    of 128 to 1024 frames all gave 2e-07 max salience difference, so 512 is
    a conservative default. Use ``chunk_frames`` of 4096 or more to keep the
    overlap overhead small.

    Attributes ``device`` and ``dtype`` give where and in which precision the
    convolutional network runs (float32, bfloat16 or float16); the mel front
    end and the BiGRU head always run in float32 and results are float32
    (salience) / float64 (F0).
    """

    mel_basis: torch.Tensor  # non-persistent buffers
    window: torch.Tensor

    def __init__(self, model: E2E) -> None:
        super().__init__()
        self.model = model.eval()
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank()), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)

    # -- properties --------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.mel_basis.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the convolutional network."""
        return self.model.compute_dtype

    @property
    def config(self) -> E2EConfig:
        """The network's hyper-parameters."""
        return self.model.config

    # -- mel -----------------------------------------------------------------------------

    def _log_mel(self, frames_src: torch.Tensor) -> torch.Tensor:
        """Log-mel of pre-padded signal rows ``[B, L]`` (STFT without centring) -> ``[B, 128, F]``."""
        spec = torch.stft(
            frames_src,
            n_fft=N_FFT,
            hop_length=HOP_LENGTH,
            win_length=N_FFT,
            window=self.window,
            center=False,
            return_complex=True,
        )
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2))
        mel = torch.matmul(self.mel_basis, magnitude)
        return torch.log(torch.clamp(mel, min=MEL_CLAMP))

    def mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrogram ``[B, 128, N//160 + 1]`` (float32) of audio ``[B, N]`` at 16 kHz.

        ``torch.stft(n_fft=1024, hop=160, periodic Hann, center=True)`` with
        reflect padding, magnitude, the HTK/Slaney mel basis, ``log(clamp(·, 1e-5))``.
        """
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2 or audio.shape[-1] == 0:
            raise AudioError(None, f"mel expects audio [B, N] with N > 0, got shape {tuple(audio.shape)}")
        audio = audio.to(device=self.device, dtype=torch.float32)
        return self._log_mel(reflect_pad_last(audio, N_FFT // 2))

    def _mel_frames(self, padded_audio: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Frames ``start..stop-1`` of the log-mel ``[128, stop-start]`` from the 512-sample reflect-padded audio."""
        parts = []
        for a in range(start, stop, _MEL_BLOCK_FRAMES):
            b = min(stop, a + _MEL_BLOCK_FRAMES)
            seg = padded_audio[a * HOP_LENGTH : (b - 1) * HOP_LENGTH + N_FFT]
            parts.append(self._log_mel(seg.unsqueeze(0))[0])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _pad_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return reflect_pad_last(audio.to(self.device), N_FFT // 2)

    def _mel_window(
        self, padded_audio: torch.Tensor, n_frames: int, start: int, stop: int, pad_mode: str
    ) -> torch.Tensor:
        """Frames ``start..stop-1`` of the mel padded on the right to a multiple of 32 frames."""
        real_stop = min(stop, n_frames)
        if stop <= n_frames:
            return self._mel_frames(padded_audio, start, stop)
        if pad_mode == "constant":
            body = self._mel_frames(padded_audio, start, real_stop) if real_stop > start else None
            tail = torch.zeros(N_MELS, stop - max(start, n_frames), device=self.device)
            return tail if body is None else torch.cat([body, tail], dim=-1)
        # reflect: frames >= n_frames mirror real frames (numpy/torch reflect, edge not repeated)
        src = reflect_index(n_frames, start, stop)
        lo, hi = int(src.min()), int(src.max()) + 1
        mel = self._mel_frames(padded_audio, lo, hi)
        return mel[:, torch.from_numpy(src - lo).to(self.device)]

    # -- network -------------------------------------------------------------------------

    @staticmethod
    def _check_pad_mode(pad_mode: str) -> str:
        if pad_mode not in ("reflect", "constant"):
            raise ParameterError(
                f"rmvpe F0 option pad_mode must be 'reflect' (Applio) or 'constant' (RVC WebUI), got {pad_mode!r}"
            )
        return pad_mode

    @staticmethod
    def _windows(
        n_padded: int, chunk_frames: int | None, overlap_frames: int | None, pad_mode: str
    ) -> list[tuple[int, int, int, int]]:
        """``(window_start, window_stop, keep_start, keep_stop)`` in padded-mel frames."""
        if chunk_frames is None:
            if pad_mode == "constant":
                return [(0, n_padded, 0, n_padded)]
            chunk, overlap = APPLIO_CHUNK_FRAMES, 0
        else:
            chunk = int(chunk_frames)
            overlap = DEFAULT_OVERLAP_FRAMES if overlap_frames is None else int(overlap_frames)
            if chunk < 0 or chunk % FRAME_MULTIPLE:
                raise ParameterError(
                    f"rmvpe F0 option chunk_frames must be 0 or a positive multiple of 32, got {chunk_frames}"
                )
            if overlap < 0 or overlap % FRAME_MULTIPLE:
                raise ParameterError(
                    f"overlap_frames must be a non-negative multiple of 32, got {overlap_frames}"
                )
            if chunk == 0:
                return [(0, n_padded, 0, n_padded)]
        out = []
        for s in range(0, n_padded, chunk):
            e = min(n_padded, s + chunk)
            out.append((max(0, s - overlap), min(n_padded, e + overlap), s, e))
        return out

    def _run(self, mel: torch.Tensor) -> torch.Tensor:
        """Network on a ``[B, 128, W]`` mel (W a multiple of 32): float32 salience ``[B, W, 360]``."""
        with torch.inference_mode():
            return self.model(mel)

    def _iter_salience(
        self,
        audio16k: AudioLike,
        pad_mode: str,
        chunk_frames: int | None,
        overlap_frames: int | None,
    ) -> Iterator[np.ndarray]:
        """Yield consecutive float32 salience blocks covering the ``N//160 + 1`` frames."""
        for step in self._salience_steps(audio16k, pad_mode, chunk_frames, overlap_frames):
            yield step()

    def _salience_steps(
        self,
        audio16k: AudioLike,
        pad_mode: str,
        chunk_frames: int | None,
        overlap_frames: int | None,
    ) -> list[Callable[[], np.ndarray]]:
        """One call per network pass, each returning the next float32 salience block."""
        pad_mode = self._check_pad_mode(pad_mode)
        audio = _as_audio(audio16k)
        n_frames = audio.shape[0] // HOP_LENGTH + 1
        n_padded = _padded_len(n_frames)
        windows = [w for w in self._windows(n_padded, chunk_frames, overlap_frames, pad_mode) if w[2] < n_frames]
        padded_audio = self._pad_audio(audio)

        def step(ws: int, we: int, ks: int, ke: int) -> np.ndarray:
            mel = self._mel_window(padded_audio, n_frames, ws, we, pad_mode)
            sal = self._run(mel.unsqueeze(0))[0]
            return sal[ks - ws : min(ke, n_frames) - ws].cpu().numpy()

        return [functools.partial(step, *w) for w in windows]

    def salience(
        self,
        audio16k: AudioLike,
        pad_mode: str = "reflect",
        *,
        chunk_frames: int | None = None,
        overlap_frames: int | None = None,
    ) -> np.ndarray:
        """Network output (after the sigmoid) ``[N//160 + 1, 360]`` float32 for one 16 kHz input.

        The mel's time axis is padded on the right to a multiple of 32 frames
        with ``pad_mode`` (``"reflect"``: Applio; ``"constant"``: zeros, RVC
        WebUI), the network is run, and the output is cropped. See the class
        docstring for ``chunk_frames`` / ``overlap_frames``.
        """
        blocks = list(self._iter_salience(audio16k, pad_mode, chunk_frames, overlap_frames))
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)

    def infer(
        self,
        audio16k: AudioLike,
        threshold: float = 0.03,
        pad_mode: str = "reflect",
        *,
        chunk_frames: int | None = None,
        overlap_frames: int | None = None,
    ) -> np.ndarray:
        """F0 in Hz (float64, 0 = unvoiced), ``N//160 + 1`` frames, for one 16 kHz input.

        Equivalent to the reference ``infer_from_audio(audio, thred=threshold)``
        (Applio with ``pad_mode="reflect"``, RVC WebUI with ``"constant"``);
        decoding is :func:`decode_salience`. Chunked inference decodes chunk by
        chunk, so the full salience is never held in memory.
        """
        steps = self.infer_blocks(audio16k, threshold, pad_mode, chunk_frames=chunk_frames, overlap_frames=overlap_frames)
        blocks = [step() for step in steps]
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def infer_blocks(
        self,
        audio16k: AudioLike,
        threshold: float = 0.03,
        pad_mode: str = "reflect",
        *,
        chunk_frames: int | None = None,
        overlap_frames: int | None = None,
    ) -> list[Callable[[], np.ndarray]]:
        """:meth:`infer` as one call per network pass (chunk): each returns the next F0
        block, and their concatenation, in order, is :meth:`infer`'s result."""
        return [
            functools.partial(_decoded, step, threshold)
            for step in self._salience_steps(audio16k, pad_mode, chunk_frames, overlap_frames)
        ]

    def infer_batch(
        self,
        audios: Sequence[AudioLike],
        threshold: float = 0.03,
        pad_mode: str = "reflect",
        *,
        max_batch: int | None = None,
        chunk_frames: int | None = None,
        overlap_frames: int | None = None,
    ) -> list[np.ndarray]:
        """F0 for several inputs; each result equals :meth:`infer` on that input alone.

        Inputs whose mel lengths pad to the same multiple of 32 frames (and that
        fit in one pass) run together, up to ``max_batch`` per forward; padding
        to any other length would change the results (the input BatchNorm maps
        padding to non-zero values and the BiGRU runs backwards from the end).
        Others run alone.

        ``max_batch=None`` means 1 on CPU and 8 elsewhere. On CPU, one item
        per forward is faster (measured 1.9 s vs 3.1 s for six 5 s clips with
        the full-size network on 2 cores) and bit-identical to :meth:`infer`.
        A larger batch computes the same function, but BLAS/oneDNN/cuDNN may
        pick other kernels for another batch size, so results can differ from
        solo runs by float32 rounding (about 1e-7 relative in the salience).
        """
        pad_mode = self._check_pad_mode(pad_mode)
        if max_batch is None:
            max_batch = 1 if self.device.type == "cpu" else 8
        if max_batch < 1:
            raise ParameterError(f"max_batch must be >= 1, got {max_batch}")
        results: list[np.ndarray | None] = [None] * len(audios)
        groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for i, item in enumerate(audios):
            audio = _as_audio(item)
            n_padded = _padded_len(audio.shape[0] // HOP_LENGTH + 1)
            if len(self._windows(n_padded, chunk_frames, overlap_frames, pad_mode)) > 1:
                results[i] = self.infer(
                    audio, threshold, pad_mode, chunk_frames=chunk_frames, overlap_frames=overlap_frames
                )
            else:
                groups.setdefault(n_padded, []).append((i, audio))
        for n_padded, members in groups.items():
            for chunk in pack([n_padded] * len(members), None, max_items=max_batch):
                part = [members[j] for j in chunk]
                f0s = self._infer_padded([audio for _, audio in part], n_padded, threshold, pad_mode)
                for (i, _), f0 in zip(part, f0s):
                    results[i] = f0
        out: list[np.ndarray] = []
        for r in results:
            assert r is not None
            out.append(r)
        return out

    def _infer_padded(
        self, audios: list[torch.Tensor], n_padded: int, threshold: float, pad_mode: str
    ) -> list[np.ndarray]:
        """F0 of inputs whose mels all pad to ``n_padded`` frames, in one network pass."""
        mels, lengths = [], []
        for audio in audios:
            n_frames = audio.shape[0] // HOP_LENGTH + 1
            mels.append(self._mel_window(self._pad_audio(audio), n_frames, 0, n_padded, pad_mode))
            lengths.append(n_frames)
        sal = self._run(torch.stack(mels)).cpu().numpy()
        return [decode_salience(s[:n_frames], threshold) for n_frames, s in zip(lengths, sal)]

    def forward(self, audio16k: AudioLike, threshold: float = 0.03) -> np.ndarray:
        """Same as :meth:`infer`."""
        return self.infer(audio16k, threshold)

