"""Decoding in bounded time windows: which windows, how they are batched, and the stitching.

The decoder is convolutional, so it can run on bounded time windows whose edges sit
further from the kept samples than its receptive field (the margin, the decoder's
``margin_frames``: 16-19 frames for RVC's HiFi-GAN configs); kept samples then equal one
whole pass. oneDNN caches a set of kernels *per input shape*, and on an AVX-512 CPU each
channels-last convolution kernel keeps a scratch buffer that grows with the shape: about
0.12 MB per window frame for the whole 40 kHz decoder, held until the cache (1024
kernels) evicts it. The window sizes below are therefore few and small
(docs/benchmarks.md, "Long files").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...packing import pack

if TYPE_CHECKING:
    from .decoders import Decoder

__all__ = [
    "DECODER_SINGLE_FRAMES",
    "DECODER_WINDOW_FRAMES",
    "DECODER_BATCH_FRAMES",
    "needs_windows",
    "skip_pair",
    "decode_windows",
]

#: An item whose needed frames plus margins fit in this many frames is decoded in one
#: window, widened to one of 16 sizes per octave (:func:`_bucket_frames`).
DECODER_SINGLE_FRAMES = 1088
#: Longer items are decoded in windows of exactly this many frames (margins included);
#: the last, partial piece uses a multiple of a quarter of it.
DECODER_WINDOW_FRAMES = 544
#: On accelerators, windows are batched up to (windows x longest window) frames per
#: decoder call; on a CPU every window is its own call (several windows' activations
#: spill out of the caches, and memory stays bounded by one window).
DECODER_BATCH_FRAMES = 8192


_Window = tuple[int, int, int, int]  # decode start, decode end, keep start, keep end (frames)
_ItemWindow = tuple[int, int, int, int, int]  # batch item, then a _Window

#: Frames dropped by the caller: the same number at each end, or ``(head, tail)``.
Skip = int | tuple[int, int]


def skip_pair(skip: Skip) -> tuple[int, int]:
    """``skip`` as ``(head, tail)``: an int drops that many frames at each end."""
    if isinstance(skip, tuple):
        return int(skip[0]), int(skip[1])
    return int(skip), int(skip)


def needs_windows(frames: int, skip: Skip) -> bool:
    """Whether items padded to ``frames`` frames, ``skip`` of them dropped at each end (or
    ``(head, tail)``), are decoded window by window (:func:`decode_windows`) rather than in one pass."""
    return max(skip_pair(skip)) > 0 or frames > DECODER_SINGLE_FRAMES


def _bucket_frames(n: int) -> int:
    """``n`` rounded up to the next size that keeps 5 significant bits (16 sizes per octave:
    ..., 512, 544, 576, ..., 992, 1024, 1088, ...); at most 1/16 above ``n``."""
    step = 1 << max(0, int(n).bit_length() - 5)
    return -(-int(n) // step) * step


def _widen_window(window: _Window, n: int, size: int) -> _Window:
    """Grow a decoder window to ``size`` frames with more of the item's own frames.

    oneDNN builds its convolution kernels for each new input shape (about 0.4 s of CPU for
    the full-size 40 kHz decoder, plus a scratch buffer it keeps), and every file length
    would otherwise be a new shape. The added frames are real context on the far side of
    the margin, so the kept samples do not change (the decoder is convolutional and the
    margin exceeds its receptive field) and no masking is needed. Right side first; a
    window that cannot grow enough inside the item (``[0, n)``) is left as it is.
    """
    s0, e0, k0, k1 = window
    extra = size - (e0 - s0)
    if extra <= 0:
        return window
    right = min(extra, n - e0)
    left = min(extra - right, s0)
    if right + left < extra:
        return window
    return (s0 - left, e0 + right, k0, k1)


def _plan_windows(n: int, skip: Skip, margin: int, size: int = DECODER_WINDOW_FRAMES) -> list[_Window]:
    """The decoder windows for one item of ``n`` frames whose ``skip`` frames at each end
    (or ``(head, tail)`` frames) are dropped.

    The needed frames ``[head, n - tail)`` (all of them when the item is too short to drop
    anything) get ``margin`` frames of context on each side, clipped at the item's ends
    where a whole pass sees zero padding too. If that fits in
    :data:`DECODER_SINGLE_FRAMES`, one window widened to :func:`_bucket_frames`; otherwise
    pieces decoded in windows of exactly ``size`` frames (:data:`DECODER_WINDOW_FRAMES`
    unless the decoder asks for another ``window_frames``), the last piece in the smallest
    multiple of a quarter of that size: a long file then uses at most four window shapes,
    whatever its segment lengths.
    """
    if size <= 2 * margin:
        raise ValueError(f"decoder windows of {size} frames leave nothing to keep with margins of {margin} frames")
    head, tail = skip_pair(skip)
    ks, ke = (head, n - tail) if n - head - tail >= 1 else (0, n)
    lo, hi = max(0, ks - margin), min(n, ke + margin)
    if hi - lo <= DECODER_SINGLE_FRAMES:
        return [_widen_window((lo, hi, ks, ke), n, _bucket_frames(hi - lo))]
    chunk = size - 2 * margin
    quarter = size // 4
    windows: list[_Window] = []
    c = ks
    while c < ke:
        k1 = min(c + chunk, ke)
        if k1 - c == chunk:
            s0 = max(0, min(c - margin, n - size))
            windows.append((s0, s0 + size, c, k1))
        else:
            s0, e0 = max(0, c - margin), min(n, k1 + margin)
            target = min(size, -(-(e0 - s0) // quarter) * quarter)
            windows.append(_widen_window((s0, e0, c, k1), n, target))
        c = k1
    return windows


def _group_windows(windows: list[_ItemWindow], limit: int) -> list[list[_ItemWindow]]:
    """Consecutive ``(item, start, end, keep start, keep end)`` windows packed into decoder
    calls of at most ``limit`` (windows x longest window) frames; a window longer than
    ``limit`` (or any window when ``limit`` is 0) is a call of its own."""
    groups = pack([w[2] - w[1] for w in windows], limit)
    return [[windows[i] for i in group] for group in groups]


def _window_generators(
    windows: list[_ItemWindow], gens: list[torch.Generator | None]
) -> list[torch.Generator | None]:
    """One fresh generator per window, seeded from its item's generator in window order
    (``None`` stays ``None``: the global RNG).

    A decoder that draws noise per batch row draws it layer by layer across the rows of one
    call; rows sharing one generator would then take their noise in an order that depends
    on how the windows were grouped into calls, i.e. on the other items of the batch and
    the device. With a generator of its own, each window's noise depends only on its
    item's generator and its place among that item's windows.
    """
    out: list[torch.Generator | None] = []
    for item, *_ in windows:
        gen = gens[item]
        if gen is None:
            out.append(None)
            continue
        seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
        child = torch.Generator(device=gen.device)
        child.manual_seed(seed)
        out.append(child)
    return out


def decode_windows(
    dec: Decoder,
    z: torch.Tensor,
    g: torch.Tensor,
    source: torch.Tensor | None,
    lengths: torch.Tensor,
    skip: Skip,
    hop_length: int,
    gens: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Run the decoder ``dec`` on bounded time windows and stitch the results.

    Each item's needed frames ``[skip, length - skip)`` (``[head, length - tail)`` for a
    ``(head, tail)`` pair) get windows from
    :func:`_plan_windows`: kept pieces with ``dec.margin_frames`` of real context on
    both sides (more than the decoder's receptive field, so every kept sample equals a
    whole-item decode up to float rounding), widened to a few repeating sizes. Memory
    stays bounded whatever the length, and the dropped padding context is not decoded
    at all. On accelerators windows of all items are batched, up to
    :data:`DECODER_BATCH_FRAMES` frames per call; on a CPU each window is one call.
    ``gens`` (one generator or ``None`` per item) is handed to decoders that draw their
    own noise (``dec.draws_noise``): each window gets a generator of its own, seeded from
    its item's (:func:`_window_generators`), so an item's noise does not depend on the
    other items of the batch or on how windows are grouped into calls. A decoder's ``window_frames``
    replaces :data:`DECODER_WINDOW_FRAMES` when it needs wider margins.
    Returns ``[B, T * hop_length]`` audio; samples outside the needed frames are 0.
    """
    b, _, t = z.shape
    upp = hop_length
    size = int(getattr(dec, "window_frames", DECODER_WINDOW_FRAMES))
    windows = [  # (item, decode start, decode end, keep start, keep end)
        (i, *w) for i in range(b) for w in _plan_windows(int(lengths[i]), skip, dec.margin_frames, size)
    ]
    win_gens = dict(zip(windows, _window_generators(windows, gens))) if gens is not None else None
    audio = z.new_zeros(b, t * upp)
    for group in _group_windows(windows, DECODER_BATCH_FRAMES if z.device.type != "cpu" else 0):
        spans = [e - s for _, s, e, _, _ in group]
        tc = max(spans)
        zc = z.new_zeros(len(group), z.shape[1], tc)
        sc = source.new_zeros(len(group), 1, tc * upp) if source is not None else None
        for j, (i, s0, e0, _, _) in enumerate(group):
            zc[j, :, : spans[j]] = z[i, :, s0:e0]
            if sc is not None:
                sc[j, :, : spans[j] * upp] = source[i, :, s0 * upp : e0 * upp]  # type: ignore[index]
        gc = g[[w[0] for w in group]]
        lens_c = torch.tensor(spans, device=z.device)
        lens_arg = lens_c if min(spans) < tc else None
        if win_gens is not None:
            part = dec(zc, gc, sc, lens_arg, gens=[win_gens[w] for w in group])[:, 0, :]
        else:
            part = dec(zc, gc, sc, lens_arg)[:, 0, :]
        for j, (i, s0, _, k0, k1) in enumerate(group):
            audio[i, k0 * upp : k1 * upp] = part[j, (k0 - s0) * upp : (k1 - s0) * upp]
    return audio
