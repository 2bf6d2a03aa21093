"""The decoder factory: which waveform decoder (``dec``) a synthesizer builds.

A voice file may name its decoder in a ``vocoder`` entry (Applio writes ``"HiFi-GAN"``;
files without it are HiFi-GAN). The text encoder, flow and speaker embedding are the
same for every decoder; only ``dec`` changes. A decoder is an ``nn.Module`` with

* ``forward(x, g, source, lengths)``: latent ``x`` ``[B, inter, T]``, speaker ``g``
  ``[B, gin, 1]``, the source signal ``[B, 1, T * hop]`` (pitch-guided models, else
  ``None``) and, for padded batches, the valid frames per item (``None`` otherwise);
  returns ``[B, 1, T * hop]`` audio;
* ``m_source`` (pitch-guided models only): maps the excitation ``[B, 1, T * hop]`` to
  the source signal;
* ``margin_frames``: context frames a decoding window needs on each side (at least the
  decoder's receptive half-width; see :mod:`.windows`);
* ``prepare()``: recompute derived weights after the parameters change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn

from .config import Arch
from .hifigan import HiFiGAN

__all__ = ["DEFAULT_VOCODER", "build_decoder", "vocoder_kind"]

#: The decoder of files without a ``vocoder`` entry.
DEFAULT_VOCODER = "HiFi-GAN"

#: Decoder builders by kind; each takes the architecture and whether the model is pitch-guided.
_BUILDERS: dict[str, Callable[[Arch, bool], nn.Module]] = {
    "hifigan": lambda arch, nsf: HiFiGAN(arch, nsf=nsf),
}

#: Spellings of the ``vocoder`` entry (lower case, letters and digits only) -> kind.
_ALIASES = {"hifigan": "hifigan", "hifigannsf": "hifigan", "nsfhifigan": "hifigan"}


def vocoder_kind(name: Any) -> str | None:
    """The decoder kind for a file's ``vocoder`` entry (``"HiFi-GAN"`` -> ``"hifigan"``),
    or None when rvcfast has no such decoder."""
    if not isinstance(name, str):
        return None
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def build_decoder(arch: Arch, *, nsf: bool, vocoder: str = DEFAULT_VOCODER) -> nn.Module:
    """The decoder ``vocoder`` names, built for ``arch`` (with the NSF source when ``nsf``).

    Raises:
        ValueError: ``vocoder`` names no decoder rvcfast has.
    """
    kind = vocoder_kind(vocoder)
    if kind is None:
        raise ValueError(f"vocoder {vocoder!r} is not supported; known: {DEFAULT_VOCODER!r}")
    return _BUILDERS[kind](arch, nsf)
