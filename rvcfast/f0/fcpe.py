"""FCPE pitch tracking (RVC / Applio ``fcpe``), without importing torchfcpe.

rvcfast re-implements torchfcpe's ``CFNaiveMelPE`` network, its mel front end and
its decoders in plain torch, and only reads the bundled checkpoint
``torchfcpe/assets/fcpe_c_v001.pt`` (a dict with ``config_dict`` and the
``model`` state dict) through :func:`rvcfast.safe_load.load_torch_file`.

The result equals::

    model = torchfcpe.spawn_bundled_infer_model(device)
    f0 = model.infer(x[None].float(), sr=16000, decoder_mode="local_argmax", threshold=0.006)

which is what Applio's ``FCPE.get_f0`` returns (squeezed): ``len // 160 + 1``
frames, 0 Hz where the network's peak activation is ``<= threshold``.

Front end (torchfcpe ``Wav2MelModule`` / ``MelModule``, 16 kHz): pad
``(win - hop) // 2 = 432`` samples on the left and ``max(432, win - len - 432)``
on the right (reflect when the right pad is shorter than the signal, zeros
otherwise); STFT with n_fft = win = 1024, hop 160, periodic Hann window, no
centring; magnitude ``sqrt(re^2 + im^2 + 1e-9)``; librosa's Slaney mel basis
(128 bands, 0-8000 Hz, Slaney area normalisation); ``log(clamp(., 1e-5))``.
That gives ``len // 160`` frames; the last frame is repeated once to reach
``len // 160 + 1``.

Network (``conv_only`` as in the bundled checkpoint): Conv1d(128->512, k3) ->
GroupNorm(4) -> LeakyReLU -> Conv1d(512->512, k3); six residual conformer
convolution modules (LayerNorm -> 1x1 conv to 2048 -> GLU -> depthwise conv k31 ->
SiLU -> 1x1 conv to 512); LayerNorm; weight-normalised Linear to 360 bins; sigmoid.

Batching: the GroupNorm normalises over the whole time axis and the k3 / k31
convolutions see neighbouring frames, so inputs of different lengths cannot
simply be zero-padded together. :class:`FCPENet` runs the first convolution and
the GroupNorm per input, then pads, and zeroes the padded frames in front of
every later time-mixing convolution -- exactly the zeros a solo run's
convolution padding supplies. Every pass (solo or batched) is at least 64 frames
long, because CPU kernels switch algorithm, and rounding, for shorter inputs;
the final sigmoid runs per input for the same reason. Each batched result
therefore equals the solo one bit for bit (checked on CPU).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import cache
from ..errors import BackendUnavailableError, ModelLoadError, ParameterError
from ..packing import pack
from ..safe_load import load_torch_file
from .base import HOP_LENGTH, SAMPLE_RATE, BaseF0Extractor, as_audio16k, package_dir
from .options import option_count, option_finite

__all__ = [
    "FCPEExtractor",
    "FCPEMel",
    "FCPENet",
    "FCPEModel",
    "fcpe_weights_path",
    "load_fcpe_model",
    "get_fcpe_model",
    "slaney_mel_basis",
]

_INSTALL_HINT = 'fcpe needs `pip install "rvcfast[fcpe]"` (torchfcpe ships its weights)'
_WEIGHTS_NAME = "fcpe_c_v001.pt"
_MIN_PASS_FRAMES = 64  # network passes are zero-padded (and masked) to at least this many frames
_MEL_BLOCK_FRAMES = 8192  # STFT frames at once in the mel of a long input
_MAX_N_FFT = 1 << 15  # a checkpoint's STFT size beyond this (2 s at 16 kHz) is refused, not allocated
# Frames on each side of a long input's window: more than the network's reach (91 frames:
# the second k3 convolution and six depthwise k31 convolutions).
_CONTEXT_FRAMES = 128
#: Inputs of at most this many frames are one :meth:`FCPEExtractor.extract_blocks` block
#: (about the CPU time of one RMVPE block, see ``docs/f0.md``); longer ones are one block
#: per encoder layer (and input stack) of each network pass.
BLOCK_FRAMES = 8192

_T = TypeVar("_T")


# ----------------------------------------------------------------------------
# Mel front end
# ----------------------------------------------------------------------------


def _hz_to_mel_slaney(freq: float) -> float:
    """librosa ``hz_to_mel(freq, htk=False)`` for a scalar (same operation order)."""
    f = np.asanyarray(freq, dtype=np.float64)
    f_min = 0.0
    f_sp = 200.0 / 3
    mels = (f - f_min) / f_sp
    min_log_hz = 1000.0
    min_log_mel = (min_log_hz - f_min) / f_sp
    logstep = np.log(6.4) / 27.0
    if f >= min_log_hz:
        mels = min_log_mel + np.log(f / min_log_hz) / logstep
    return float(mels)


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    """librosa ``mel_to_hz(mels, htk=False)`` for an array (same operation order)."""
    f_min = 0.0
    f_sp = 200.0 / 3
    freqs = f_min + f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = (min_log_hz - f_min) / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def slaney_mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` (float32).

    Slaney mel scale and Slaney area normalisation, computed in float64 and stored
    in float32 with librosa's rounding steps (weights rounded to float32, then
    scaled in place).
    """
    weights = np.zeros((int(n_mels), int(1 + n_fft // 2)), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mels = np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2)
    mel_f = _mel_to_hz_slaney(mels)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


class FCPEMel(nn.Module):
    """torchfcpe's log-mel front end for one 16 kHz signal: ``[N]`` -> ``[N // hop + 1, n_mels]``."""

    mel_basis: torch.Tensor  # buffers
    window: torch.Tensor

    def __init__(
        self,
        sr: int = SAMPLE_RATE,
        n_mels: int = 128,
        n_fft: int = 1024,
        win_size: int = 1024,
        hop_length: int = HOP_LENGTH,
        fmin: float = 0.0,
        fmax: float = 8000.0,
        clip_val: float = 1e-5,
    ) -> None:
        super().__init__()
        self.sr = int(sr)
        self.n_mels = int(n_mels)
        self.n_fft = int(n_fft)
        self.win_size = int(win_size)
        self.hop_length = int(hop_length)
        self.clip_val = float(clip_val)
        basis = slaney_mel_basis(self.sr, self.n_fft, self.n_mels, float(fmin), float(fmax))
        self.register_buffer("mel_basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win_size), persistent=False)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel frames ``[N // hop + 1, n_mels]`` (float32) of a 1-D float32 signal."""
        return self._fit(self._log_mel(self._padded(audio)), audio.shape[-1])

    @torch.no_grad()
    def forward_blocked(self, audio: torch.Tensor, block_frames: int = _MEL_BLOCK_FRAMES) -> torch.Tensor:
        """:meth:`forward` computed ``block_frames`` STFT frames at a time, so the complex
        spectrum (4 KiB per frame) is never held whole; for long inputs. Each frame's maths
        is the same, the kernels may round differently (float32 noise)."""
        y = self._padded(audio)
        n_stft = 1 + (y.shape[-1] - self.n_fft) // self.hop_length
        parts = []
        for a in range(0, n_stft, block_frames):
            b = min(n_stft, a + block_frames)
            parts.append(self._log_mel(y[:, a * self.hop_length : (b - 1) * self.hop_length + self.n_fft]))
        return self._fit(torch.cat(parts, 1), audio.shape[-1])

    def _padded(self, audio: torch.Tensor) -> torch.Tensor:
        """``[1, L]``: torchfcpe's padding (reflect when the right pad is shorter than the signal)."""
        n = audio.shape[-1]
        y = audio.reshape(1, n)
        pad_left = (self.win_size - self.hop_length) // 2
        pad_right = max((self.win_size - self.hop_length + 1) // 2, self.win_size - n - pad_left)
        mode = "reflect" if pad_right < n else "constant"
        return F.pad(y.unsqueeze(1), (pad_left, pad_right), mode=mode).squeeze(1)

    def _log_mel(self, y: torch.Tensor) -> torch.Tensor:
        """``[1, F, n_mels]`` log-mel of padded rows ``[1, L]`` (STFT without centring)."""
        spec = torch.stft(
            y,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_size,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
        spec = torch.matmul(self.mel_basis, spec)
        spec = torch.log(torch.clamp(spec, min=self.clip_val))
        return spec.transpose(-1, -2)

    def _fit(self, mel: torch.Tensor, n: int) -> torch.Tensor:
        """``[1, F, n_mels]`` to ``[n // hop + 1, n_mels]`` (the last frame repeated or dropped)."""
        n_frames = n // self.hop_length + 1
        if n_frames > mel.shape[1]:
            mel = torch.cat([mel] + [mel[:, -1:, :]] * (n_frames - mel.shape[1]), 1)
        elif n_frames < mel.shape[1]:
            mel = mel[:, :n_frames, :]
        return mel[0]


# ----------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------


class _Transpose(nn.Module):
    """Placeholder keeping torchfcpe's Sequential indices (transposes happen in forward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - not called
        return x.transpose(1, 2)


class _DepthWiseConv1d(nn.Module):
    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


class _ConvModule(nn.Module):
    """Conformer convolution module; ``net`` mirrors torchfcpe's Sequential for the key names."""

    def __init__(self, dim: int, expansion: int = 2, kernel_size: int = 31) -> None:
        super().__init__()
        inner = dim * expansion
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            _Transpose(),
            nn.Conv1d(dim, inner * 2, 1),
            nn.GLU(dim=1),
            _DepthWiseConv1d(inner, kernel_size),
            nn.SiLU(),
            nn.Conv1d(inner, dim, 1),
            _Transpose(),
            nn.Identity(),
        )

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``[B, T, C]``; ``keep`` ``[B, 1, T]`` marks real frames (None: all real)."""
        h = self.net[0](x).transpose(1, 2)
        h = self.net[3](self.net[2](h))
        if keep is not None:
            h = h.masked_fill(~keep, 0.0)
        h = self.net[5](cast(_DepthWiseConv1d, self.net[4]).conv(h))
        return self.net[6](h).transpose(1, 2)


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conformer = _ConvModule(dim)
        self.norm = nn.LayerNorm(dim)  # present in the checkpoint; used only with attention

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        return x + self.conformer(x, keep)


class _Encoder(nn.Module):
    def __init__(self, n_layers: int, dim: int) -> None:
        super().__init__()
        self.encoder_layers = nn.ModuleList([_EncoderLayer(dim) for _ in range(n_layers)])


class FCPENet(nn.Module):
    """torchfcpe's ``CFNaiveMelPE`` (convolution-only variant) with its state-dict names.

    ``forward`` takes a list of mel spectrograms ``[T_i, n_mels]`` and returns the
    sigmoid activations ``[T_i, out_dims]`` of each, computed in one padded batch.
    """

    cent_table: torch.Tensor  # buffers
    gaussian_blurred_cent_mask: torch.Tensor

    def __init__(
        self,
        input_channels: int = 128,
        out_dims: int = 360,
        hidden_dims: int = 512,
        n_layers: int = 6,
        use_harmonic_emb: bool = False,
    ) -> None:
        super().__init__()
        self.out_dims = int(out_dims)
        self.input_stack = nn.Sequential(
            nn.Conv1d(input_channels, hidden_dims, 3, 1, 1),
            nn.GroupNorm(4, hidden_dims),
            nn.LeakyReLU(),
            nn.Conv1d(hidden_dims, hidden_dims, 3, 1, 1),
        )
        self.harmonic_emb = nn.Embedding(9, hidden_dims) if use_harmonic_emb else None
        self.net = _Encoder(n_layers, hidden_dims)
        self.norm = nn.LayerNorm(hidden_dims)
        self.output_proj = nn.Linear(hidden_dims, out_dims)
        self.register_buffer("cent_table", torch.zeros(out_dims))
        self.register_buffer("gaussian_blurred_cent_mask", torch.zeros(()))

    def forward(self, mels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return _finish(self.forward_steps(mels))

    def forward_steps(self, mels: Sequence[torch.Tensor]) -> Generator[None, None, list[torch.Tensor]]:
        """:meth:`forward` as a generator that pauses (yields ``None``) after the input stack
        and after every encoder layer but the last, and returns the activations: the same
        operations in the same order, so the same values (``n_layers + 1`` steps)."""
        dtype = self.output_proj.weight.dtype
        lengths = [int(m.shape[0]) for m in mels]
        # CPU kernels switch algorithms (and rounding) for short sequences; a pass of at
        # least _MIN_PASS_FRAMES frames makes every input's result independent of the batch.
        t_max = max(max(lengths), _MIN_PASS_FRAMES)
        conv0, gn, act, conv1 = self.input_stack
        # Per input: the first conv and the GroupNorm (statistics over that input's frames).
        first = []
        for m in mels:
            h = conv0(m.to(dtype)[None].transpose(-1, -2))
            first.append(act(gn(h)))
        hidden = torch.zeros(len(mels), first[0].shape[1], t_max, dtype=dtype, device=first[0].device)
        for i, h in enumerate(first):
            hidden[i, :, : lengths[i]] = h[0]
        ragged = any(n != t_max for n in lengths)
        keep = None
        if ragged:
            keep = torch.arange(t_max, device=hidden.device)[None, None, :] < torch.tensor(
                lengths, device=hidden.device
            )[:, None, None]
        x = conv1(hidden).transpose(-1, -2)  # [B, T, C]
        if self.harmonic_emb is not None:
            x = x + self.harmonic_emb.weight[0]
        for layer in self.net.encoder_layers:
            yield
            x = layer(x, keep)
        logits = self.output_proj(self.norm(x))
        # The sigmoid per input: CPU kernels round the vectorised body and the scalar
        # tail differently, so the element positions must match a solo run's.
        return [torch.sigmoid(logits[i : i + 1, : lengths[i]])[0] for i in range(len(mels))]

    def forward_windows(self, mel: torch.Tensor, window_frames: int) -> torch.Tensor:
        """Sigmoid activations ``[T, out_dims]`` of one long mel ``[T, n_mels]``, in bounded memory.

        The first convolution and the GroupNorm run over the whole input (its statistics
        span every frame; 2 KiB per frame); the rest runs on windows of ``window_frames``
        frames plus :data:`_CONTEXT_FRAMES` on each side, of which only the centre is kept.
        The context exceeds the network's reach, so this is the whole-input function; the
        kernels on a window may round differently (float32 noise).
        """
        return _finish(self.forward_windows_steps(mel, window_frames))

    def forward_windows_steps(self, mel: torch.Tensor, window_frames: int) -> Generator[None, None, torch.Tensor]:
        """:meth:`forward_windows` as a generator that pauses (yields ``None``) before each
        window's input convolution but the first and before each encoder layer: the same
        operations in the same order (``n_windows * (n_layers + 1)`` steps)."""
        dtype = self.output_proj.weight.dtype
        conv0, gn, act, conv1 = self.input_stack
        hidden = gn(conv0(mel.to(dtype)[None].transpose(-1, -2)))
        hidden = act(hidden) if not isinstance(act, nn.LeakyReLU) else F.leaky_relu_(hidden, act.negative_slope)
        n = hidden.shape[-1]
        out = torch.empty(n, self.out_dims, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, window_frames):
            if start:
                yield
            stop = min(n, start + window_frames)
            lo, hi = max(0, start - _CONTEXT_FRAMES), min(n, stop + _CONTEXT_FRAMES)
            x = conv1(hidden[:, :, lo:hi]).transpose(-1, -2)
            if self.harmonic_emb is not None:
                x = x + self.harmonic_emb.weight[0]
            for layer in self.net.encoder_layers:
                yield
                x = layer(x, None)
            logits = self.output_proj(self.norm(x[:, start - lo : stop - lo]))
            out[start:stop] = torch.sigmoid(logits)[0].float()
        return out


def _finish(steps: Generator[None, None, _T]) -> _T:
    """Run a ``*_steps`` generator to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(_T, done.value)


class FCPEModel(nn.Module):
    """Mel front end + :class:`FCPENet` + decoders, configured from a torchfcpe checkpoint."""

    net: FCPENet

    def __init__(self, mel: FCPEMel, net: FCPENet, f0_min: float, f0_max: float) -> None:
        super().__init__()
        self.mel = mel
        self.net = net
        self.f0_min = float(f0_min)
        self.f0_max = float(f0_max)

    @torch.no_grad()
    def activations(self, audios: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Sigmoid activations ``[len // 160 + 1, 360]`` (float32) per 1-D float32 signal."""
        mels = [self.mel(a) for a in audios]
        return [a.float() for a in self.net(mels)]

    def activations_steps(self, audio: torch.Tensor, window_frames: int | None) -> Generator[None, None, torch.Tensor]:
        """:meth:`activations` (``window_frames`` None) or :meth:`activations_long` of one
        signal as a generator that pauses between network stages (see
        :meth:`FCPENet.forward_steps` / :meth:`FCPENet.forward_windows_steps`)."""
        if window_frames is None:
            acts = yield from self.net.forward_steps([self.mel(audio)])
            return acts[0].float()
        return (yield from self.net.forward_windows_steps(self.mel.forward_blocked(audio), window_frames))

    @torch.no_grad()
    def activations_long(self, audio: torch.Tensor, window_frames: int) -> torch.Tensor:
        """:meth:`activations` of one long signal in bounded memory (see
        :meth:`FCPENet.forward_windows`); equal to it up to float32 rounding."""
        return self.net.forward_windows(self.mel.forward_blocked(audio), window_frames)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, decoder: str = "local_argmax", threshold: float = 0.006) -> torch.Tensor:
        """``[T, 360]`` activations to f0 in Hz ``[T]`` (0 where the peak is ``<= threshold``).

        ``local_argmax``: activation-weighted mean of the cent table over the 9 bins
        around the arg-max (indices clamped to the table); ``argmax``: over all bins.
        """
        y = latent[None]  # [1, T, D] as torchfcpe decodes it
        b, n, d = y.shape
        ci = self.net.cent_table[None, None, :].expand(b, n, -1)
        confident, max_index = torch.max(y, dim=-1, keepdim=True)
        if decoder == "local_argmax":
            idx = torch.arange(0, 9, device=max_index.device) + (max_index - 4)
            idx[idx < 0] = 0
            idx[idx >= d] = d - 1
            ci_l = torch.gather(ci, -1, idx)
            y_l = torch.gather(y, -1, idx)
            cents = torch.sum(ci_l * y_l, dim=-1, keepdim=True) / torch.sum(y_l, dim=-1, keepdim=True)
        elif decoder == "argmax":
            cents = torch.sum(ci * y, dim=-1, keepdim=True) / torch.sum(y, dim=-1, keepdim=True)
        else:
            raise ParameterError(f"fcpe: decoder must be 'local_argmax' or 'argmax', got {decoder!r}")
        mask = torch.ones_like(confident)
        mask[confident <= threshold] = float("-INF")
        cents = cents * mask
        f0 = 10.0 * 2 ** (cents / 1200.0)
        return f0[0, :, 0]


def _torchfcpe_dir() -> Path | None:
    """Folder of the installed torchfcpe package, found without importing it."""
    return package_dir("torchfcpe")


def fcpe_weights_path() -> Path:
    """Path of ``torchfcpe/assets/fcpe_c_v001.pt``; :class:`BackendUnavailableError` if absent."""
    pkg = _torchfcpe_dir()
    if pkg is None:
        raise BackendUnavailableError(_INSTALL_HINT)
    path = pkg / "assets" / _WEIGHTS_NAME
    if not path.is_file():
        raise BackendUnavailableError(f"{_INSTALL_HINT}; the installed torchfcpe has no {path}")
    return path


def _cfg(section: Any, key: str, default: Any, path: Path) -> Any:
    value = section.get(key, default) if isinstance(section, dict) else default
    if value is None:
        if default is None:
            raise ModelLoadError(path, f"FCPE checkpoint config lacks {key!r}")
        return default
    return value


def _cfg_number(section: Any, key: str, default: Any, path: Path, kind: type = int, minimum: float = 1) -> Any:
    """A config entry as a finite ``kind`` (int or float) of at least ``minimum``; a
    :class:`ModelLoadError` naming the file and the entry otherwise."""
    value = _cfg(section, key, default, path)
    try:
        number = kind(value)
        ok = not isinstance(value, bool) and math.isfinite(number) and number >= minimum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ModelLoadError(path, f"FCPE checkpoint config {key!r} must be a number >= {minimum:g}, got {value!r}")
    return number


def _check_fcpe_state(path: Path, state: dict[str, Any], n_mels: int, hidden: int, out_dims: int, n_layers: int) -> None:
    """The state dict's tensors are finite and of the sizes the config names, checked before
    anything is built from the config (a config claiming 10**9 layers or a 10**9-wide network
    must not allocate it)."""
    not_tensor = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensor:
        raise ModelLoadError(path, f"FCPE state dict has entries that are not tensors: {sorted(not_tensor)[:5]}")
    sizes = {
        "input_stack.0.weight": (hidden, n_mels, 3),
        "output_proj.weight": (out_dims, hidden),
    }
    for key, shape in sizes.items():
        got = tuple(state[key].shape) if key in state else None
        if got != shape:
            raise ModelLoadError(
                path,
                f"FCPE state dict does not fit its config (num_mels {n_mels}, hidden_dims {hidden}, "
                f"out_dims {out_dims}): {key} is {got if got is not None else 'missing'}, expected {shape}",
            )
    layers = {int(m.group(1)) for k in state if (m := re.match(r"net\.encoder_layers\.(\d+)\.", k))}
    if len(layers) != n_layers or (layers and max(layers) != n_layers - 1):
        raise ModelLoadError(
            path, f"FCPE config says n_layers={n_layers}, the state dict has {len(layers)} encoder layer(s)"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelLoadError(path, f"FCPE weights contain NaN/Inf in {sorted(bad)[:5]}")


def load_fcpe_model(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    path: str | Path | None = None,
) -> FCPEModel:
    """Build the FCPE model from a torchfcpe checkpoint (default: the bundled one).

    The architecture comes from the checkpoint's ``config_dict``; the state dict is
    loaded with a strict key check (weight norm of ``output_proj`` folded first).
    The mel front end stays float32; the network runs in ``dtype``.
    """
    weights = Path(path) if path is not None else fcpe_weights_path()
    ckpt = load_torch_file(weights, what="FCPE checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ModelLoadError(weights, "not a torchfcpe checkpoint (expected a dict with 'model' and 'config_dict')")
    config = ckpt.get("config_dict")
    if not isinstance(config, dict):
        raise ModelLoadError(weights, "FCPE checkpoint has no 'config_dict'")
    mel_cfg = config.get("mel") or {}
    model_cfg = config.get("model") or {}
    mtype = model_cfg.get("type", "CFNaiveMelPE")
    if mtype != "CFNaiveMelPE":
        raise ModelLoadError(weights, f"FCPE model type {mtype!r} is not supported (only CFNaiveMelPE)")
    if not model_cfg.get("conv_only", False):
        raise ModelLoadError(weights, "FCPE checkpoints with attention layers (conv_only false) are not supported")
    sr = _cfg_number(mel_cfg, "sr", SAMPLE_RATE, weights)
    hop = _cfg_number(mel_cfg, "hop_size", HOP_LENGTH, weights)
    if sr != SAMPLE_RATE or hop != HOP_LENGTH:
        raise ModelLoadError(weights, f"FCPE checkpoint expects sr={sr}, hop={hop}; rvcfast needs {SAMPLE_RATE} / {HOP_LENGTH}")
    n_mels = _cfg_number(mel_cfg, "num_mels", 128, weights)
    n_fft = _cfg_number(mel_cfg, "n_fft", 1024, weights)
    win_size = _cfg_number(mel_cfg, "win_size", 1024, weights)
    if not win_size <= n_fft <= _MAX_N_FFT:
        raise ModelLoadError(
            weights, f"FCPE checkpoint config needs win_size <= n_fft <= {_MAX_N_FFT}, got win_size={win_size}, n_fft={n_fft}"
        )
    fmin = _cfg_number(mel_cfg, "fmin", 0, weights, float, 0)
    fmax = _cfg_number(mel_cfg, "fmax", 8000, weights, float, 0)
    out_dims = _cfg_number(model_cfg, "out_dims", None, weights)
    hidden = _cfg_number(model_cfg, "hidden_dims", None, weights)
    n_layers = _cfg_number(model_cfg, "n_layers", None, weights)
    state = dict(ckpt["model"])
    for g_key, v_key in (
        ("output_proj.weight_g", "output_proj.weight_v"),
        ("output_proj.parametrizations.weight.original0", "output_proj.parametrizations.weight.original1"),
    ):
        if g_key in state and v_key in state:
            g, v = state.pop(g_key), state.pop(v_key)
            # What torch's weight_norm computes on every forward in the reference.
            try:
                state["output_proj.weight"] = torch._weight_norm(v, g, 0)
            except (RuntimeError, TypeError) as exc:
                raise ModelLoadError(weights, f"FCPE output_proj weight norm does not fit: {str(exc)[:200]}") from None
    _check_fcpe_state(weights, state, n_mels, hidden, out_dims, n_layers)
    mel = FCPEMel(sr=sr, n_mels=n_mels, n_fft=n_fft, win_size=win_size, hop_length=hop, fmin=fmin, fmax=fmax)
    net = FCPENet(
        input_channels=n_mels,
        out_dims=out_dims,
        hidden_dims=hidden,
        n_layers=n_layers,
        use_harmonic_emb=bool(model_cfg.get("use_harmonic_emb") or False),
    )
    expected, got = set(net.state_dict()), set(state)
    if expected != got:
        raise ModelLoadError(
            weights,
            f"FCPE state dict does not fit the configured network "
            f"(missing {sorted(expected - got)[:5]}, unexpected {sorted(got - expected)[:5]})",
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(weights, f"FCPE weights do not fit: {str(exc)[:300]}") from None
    model = FCPEModel(
        mel,
        net.to(dtype=dtype),
        f0_min=_cfg_number(model_cfg, "f0_min", 32.7, weights, float, 0),
        f0_max=_cfg_number(model_cfg, "f0_max", 1975.5, weights, float, 0),
    )
    # Keep the decoding table in float32 whatever the network dtype.
    model.net.cent_table = model.net.cent_table.float()
    return model.to(torch.device(device)).eval()


def get_fcpe_model(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    path: str | Path | None = None,
) -> FCPEModel:
    """The process-wide FCPE model for (weights file, device, dtype), built once."""
    weights = Path(path) if path is not None else fcpe_weights_path()
    dev = torch.device(device)
    return cache.get_or_load("fcpe", weights, dev, dtype, lambda: load_fcpe_model(dev, dtype, path=weights))


# ----------------------------------------------------------------------------
# Extractor
# ----------------------------------------------------------------------------


class FCPEExtractor(BaseF0Extractor):
    """FCPE F0 (RVC/Applio ``fcpe``): 16 kHz audio to Hz per 10 ms frame, 0 = unvoiced.

    Args:
        device: torch device.
        dtype: network dtype (float32 reproduces the reference).
        threshold: frames whose peak activation is ``<= threshold`` are unvoiced (0.006).
        decoder: ``"local_argmax"`` (RVC/Applio) or ``"argmax"``.
        max_batch: at most this many inputs share one padded network pass.
        max_frames: at most this many (padded) frames per pass, which bounds memory
            (about 8 KiB of activations per frame in float32). A longer input runs alone,
            in windows of this many frames with 128 frames of context on each side (more
            than the network's reach, so the same function up to float32 rounding): its
            memory then grows by about 2.5 KiB per frame (0.9 GB per hour of audio)
            instead of tens of KiB. 0 or less: every input alone, in one pass.
        weights: optional path to a torchfcpe checkpoint (default: the bundled one).
        block_frames: inputs of at most this many frames are one :meth:`extract_blocks`
            block (progress and scheduling only; it does not change the result).
            Default :data:`BLOCK_FRAMES`.
    """

    name = "fcpe"

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        threshold: float = 0.006,
        decoder: str = "local_argmax",
        max_batch: int = 8,
        max_frames: int = 32768,
        weights: str | Path | None = None,
        block_frames: int | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.block_frames = BLOCK_FRAMES if block_frames in (None, 0) else option_count(self.name, "block_frames", block_frames)
        if decoder not in ("local_argmax", "argmax"):
            raise ParameterError(f"fcpe: decoder must be 'local_argmax' or 'argmax', got {decoder!r}")
        self.threshold = option_finite(self.name, "threshold", threshold)
        self.decoder = decoder
        self.max_batch = option_count(self.name, "max_batch", max_batch)
        self.max_frames = option_count(self.name, "max_frames", max_frames, minimum=None)
        self._weights = Path(weights) if weights is not None else fcpe_weights_path()
        self._model: FCPEModel | None = None

    @classmethod
    def load_model(cls, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> FCPEModel:
        """Build the FCPE model (``load_fcpe_model(device, dtype)``)."""
        return load_fcpe_model(device, dtype)

    @property
    def model(self) -> FCPEModel:
        """The model: the process-wide cached one (see :func:`get_fcpe_model`), fetched on first use."""
        if self._model is None:
            self._model = get_fcpe_model(self.device, self.dtype, path=self._weights)
        return self._model

    @model.setter
    def model(self, value: FCPEModel) -> None:
        self._model = value

    def _groups(self, frames: Sequence[int]) -> list[list[int]]:
        """Indices grouped for padded passes: longest first, at most ``max_batch`` inputs
        and ``max_frames`` padded frames per pass (a longer input runs alone)."""
        order = sorted(range(len(frames)), key=lambda i: -frames[i])
        budget = max(0, self.max_frames)  # a budget of 0 (or less) runs every input alone
        groups = pack([frames[i] for i in order], budget, max_items=self.max_batch, floor=_MIN_PASS_FRAMES)
        return [[order[j] for j in group] for group in groups]

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz (float32) for ``len // 160 + 1`` frames; 0 = unvoiced."""
        return self.extract_batch([audio16k])[0]

    @torch.no_grad()
    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """F0 for several arrays in padded batches (see ``max_batch`` / ``max_frames``);
        each result equals :meth:`extract` on that input alone."""
        signals = [
            torch.from_numpy(np.ascontiguousarray(as_audio16k(a), dtype=np.float32)).to(self.device) for a in audios
        ]
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(signals)
        model = self.model
        frames = [s.shape[0] // self.hop_length + 1 for s in signals]
        for group in self._groups(frames):
            if len(group) == 1 and frames[group[0]] > self.max_frames >= _MIN_PASS_FRAMES:
                acts = [model.activations_long(signals[group[0]], self.max_frames)]
            else:
                acts = model.activations([signals[i] for i in group])
            for i, act in zip(group, acts):
                f0 = model.decode(act, self.decoder, self.threshold)
                out[i] = f0.cpu().numpy().astype(np.float32, copy=False)
        return out

    def extract_blocks(self, audio16k: np.ndarray) -> list[Callable[[], np.ndarray]]:
        """:meth:`extract` as one call per network stage.

        An input of at most ``block_frames`` frames is one call (:meth:`extract`). A longer
        one is one call per encoder layer of each network pass (the first also runs the mel
        and the input stack): ``n_layers + 1`` calls per pass (:meth:`extract` makes one
        pass, or one per ``max_frames`` window). The decoder needs the whole track, so
        every call but the last returns an empty array and the last returns all the frames;
        the operations are :meth:`extract`'s, in its order, so the concatenation equals it
        bit for bit.
        """
        audio = as_audio16k(audio16k)
        n_frames = audio.shape[0] // self.hop_length + 1
        if n_frames <= self.block_frames:
            return [functools.partial(self.extract, audio)]
        window = self.max_frames if n_frames > self.max_frames >= _MIN_PASS_FRAMES else None
        passes = 1 if window is None else -(-n_frames // window)
        count = passes * (len(self.model.net.net.encoder_layers) + 1)
        state: dict[str, Any] = {"next": 0}

        def step(k: int) -> np.ndarray:
            if k != state["next"]:
                raise RuntimeError(f"{self.name}: F0 blocks must be called once each, in order")
            state["next"] = k + 1
            with torch.no_grad():
                if k == 0:
                    signal = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)
                    state["steps"] = self.model.activations_steps(signal, window)
                steps = state["steps"]
                if k < count - 1:
                    try:
                        next(steps)
                        return np.zeros(0, dtype=np.float32)
                    except StopIteration as done:  # not expected: the count is exact
                        state["acts"] = done.value
                        return np.zeros(0, dtype=np.float32)
                acts = state.pop("acts", None)
                if acts is None:
                    acts = _finish(steps)
                state.pop("steps", None)
                f0 = self.model.decode(acts, self.decoder, self.threshold)
                return f0.cpu().numpy().astype(np.float32, copy=False)

        return [functools.partial(step, k) for k in range(count)]
