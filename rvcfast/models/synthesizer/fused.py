"""oneDNN convolutions that add into an existing buffer, for the HiFi-GAN decoder on a CPU.

The decoder's convolutions already run near the hardware's peak in oneDNN; on a CPU what
costs around them is everything else (docs/benchmarks.md, "Using the whole CPU"):

* a fresh multi-MB output for every convolution and elementwise op (~120 per window of
  the 40 kHz decoder), whose pages the kernel faults in and zeroes whenever glibc has
  handed the memory back in between (a bfloat16 window faulted in ~640 MB per call),
  and whose sizes fragment the heap (the first window's peak was +600 MB in float32);
* a separate pass over each activation for every residual ``add_``, and in bfloat16 a
  second rounding of each residual sum.

:func:`conv_sum_` computes ``out += conv(x) + bias`` in one oneDNN call (the sum as a
post-op, written in place), and :class:`Workspace` holds the four channels-last buffers one
decoder call reuses for all its layers. In float32 the result is bit-identical to
``conv(x).add_(out)``; in bfloat16 it is rounded once instead of twice.

Convolutions that have been through :func:`packed_weight` (the decoder's ``prepare()``
picks them) hand oneDNN their weight already in its blocked layout for this CPU, kept
beside the module's own weight, instead of a reorder per call. For the one-input-channel
noise convolutions this also gets a JIT kernel instead of a reference one (40 kHz window on
2 Zen 4 cores: 42 -> 6 ms in float32, 38 -> 3 ms in bfloat16; their 1-80 taps summed in
another order: float32 rounding, 5e-7 at most); those kernels keep ~20-50 MiB of scratch
memory between calls (peak of one bfloat16 window 486 -> 532 MiB). Prepacking the resblock
weights as well removes the other reorders (89 -> 9 per bfloat16 window; the issue counted
228 per call on an AMX CPU) with bit-identical results, but holds those weights twice
(another ~35 MiB of peak in bfloat16, ~45 MiB in float32 for the 40 kHz decoder) for
under 1 % on Zen 4, so it is off by default (``HiFiGAN.prepack_all``;
``benchmarks/decoder_compile.py`` measures it).

A leaky ReLU could be fused too (``torch.ops.mkldnn._convolution_pointwise``), but only
into a freshly allocated output: measured, that brought back the heap growth above for
no gain in speed on an AVX512-BF16 CPU, so the decoder applies it in place instead.
:func:`available` says whether this torch has the op for a tensor.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

__all__ = ["available", "conv_sum_", "packed_weight", "Workspace"]


@functools.lru_cache(maxsize=1)
def _ops_present() -> bool:
    """Whether this torch build has oneDNN and its in-place fused convolution op."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return hasattr(torch.ops.mkldnn, "_convolution_pointwise_")
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without the mkldnn namespace
        return False


@functools.lru_cache(maxsize=1)
def _bf16_supported() -> bool:
    """Whether oneDNN computes bfloat16 on this CPU: it needs AVX512BW/VL/DQ or AVX-NE-CONVERT
    (an AVX2-only CPU, e.g. AMD Zen 3, has neither; torch's own bfloat16 convolutions then
    take a slower path, while oneDNN's fused op and weight reorders raise)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without the check
        return False


def available(x: torch.Tensor) -> bool:
    """Whether the fused CPU path can run on ``x``: a CPU float32 tensor, or a bfloat16 one where
    oneDNN computes bfloat16 on this CPU (:func:`_bf16_supported`), and oneDNN's op."""
    if x.device.type != "cpu" or not _ops_present():
        return False
    return x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _bf16_supported())


def conv_sum_(out: torch.Tensor, m: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``out += conv(x)`` (bias included) in one oneDNN call, in place; returns ``out``.

    ``x`` and ``out`` are channels-last ``[B, C, 1, T]`` tensors (``out`` shaped like the
    convolution's output, not overlapping ``x``); ``m`` is a ``Conv1d`` whose weight is
    laid out channels-last (:func:`.hifigan._to_channels_last_1d`).
    """
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        out,
        x,
        packed_weight(m) if PACKED_ATTR in m.__dict__ else m.weight.unsqueeze(2),
        m.bias,
        [0, int(m.padding[0])],
        [1, int(m.stride[0])],
        [1, int(m.dilation[0])],
        m.groups,
        "add",
        1.0,
        None,
        [],
        None,
    )


#: Input length the weights are laid out for; oneDNN's blocked weight layout depends on the
#: channels, kernel and CPU, not on the length (checked: other lengths use it as it is).
_PACK_LENGTH = 4096
#: Attribute of a convolution module that holds its prepacked weight (see :func:`packed_weight`).
PACKED_ATTR = "_rvcfast_packed"


class _Packed:
    """Holds one prepacked weight and what it was made from; copies and pickles as empty
    (oneDNN's opaque tensors cannot be copied or pickled), so a copied model repacks on use.

    ``source`` shares the packed weight's storage, so that storage cannot be freed and its
    address handed to a later weight while the key still names it.
    """

    __slots__ = ("key", "tensor", "source")

    def __init__(
        self, key: tuple | None = None, tensor: torch.Tensor | None = None, source: torch.Tensor | None = None
    ) -> None:
        self.key = key
        self.tensor = tensor
        self.source = source

    def __reduce__(self) -> tuple:
        return (_Packed, ())

    def __deepcopy__(self, memo: dict) -> _Packed:
        return _Packed()


def packed_weight(m: nn.Conv1d) -> torch.Tensor:
    """``m.weight`` as a oneDNN tensor in the layout oneDNN's convolution wants on this CPU.

    Made on first use and kept on ``m`` (not a parameter: ``state_dict`` is unchanged). It
    is made again whenever the weight is not the one it was made from (another tensor, an
    in-place change, another dtype), so it never goes stale, except for in-place changes
    torch does not count: through ``.data``, or of a weight made under
    ``torch.inference_mode`` (no version counter); :meth:`.hifigan.HiFiGAN.prepare` drops
    the copies after such edits.
    """
    w = m.weight
    # inference tensors (weights made under torch.inference_mode) keep no version counter
    version = None if w.is_inference() else w._version
    key = (w.data_ptr(), version, w.dtype, tuple(w.shape), w.device)
    held = m.__dict__.get(PACKED_ATTR)
    if isinstance(held, _Packed) and held.key == key and held.tensor is not None:
        return held.tensor
    dense = w.detach().unsqueeze(2).contiguous()  # [O, I, 1, K], plain layout for to_mkldnn
    # the op takes input_size (aten::mkldnn_reorder_conv2d_weight); torch/_C/_nn.pyi omits it
    tensor = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
        dense.to_mkldnn(),
        [0, int(m.padding[0])],
        [1, int(m.stride[0])],
        [1, int(m.dilation[0])],
        m.groups,
        [1, m.in_channels, 1, _PACK_LENGTH],
    )
    m.__dict__[PACKED_ATTR] = _Packed(key, tensor, w.detach())
    return tensor


class Workspace:
    """A few flat buffers, handed out as channels-last ``[B, C, 1, T]`` views for one decoder call.

    A decoder stage's activations all have the same ``C * T`` (channels halve as the rate
    doubles), so ``count`` buffers of the largest stage's size serve every stage.
    ``get(k, shape)`` is buffer ``k`` viewed as ``shape``; its contents are whatever was
    there before (callers overwrite them).
    """

    def __init__(self, count: int, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        # One allocation: at the decoder's sizes (tens of MB) glibc maps it on its own and
        # unmaps it when freed, so these buffers never fragment the heap.
        self._memory = torch.empty(count * numel, dtype=dtype, device=device)
        self._numel = numel

    def get(self, k: int, shape: tuple[int, int, int, int]) -> torch.Tensor:
        """Buffer ``k`` as a channels-last tensor of ``shape`` = ``[B, C, 1, T]``."""
        b, c, one, t = shape
        n = math.prod(shape)
        if n > self._numel:
            raise ValueError(f"workspace buffers hold {self._numel} elements, {list(shape)} needs {n}")
        start = k * self._numel
        return self._memory[start : start + n].view(b, one, t, c).permute(0, 3, 1, 2)
