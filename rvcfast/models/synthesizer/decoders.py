"""The decoder factory: which waveform decoder (``dec``) a synthesizer builds.

A voice file may name its decoder in a ``vocoder`` entry (Applio writes ``"HiFi-GAN"``,
``"MRF HiFi-GAN"`` or ``"RefineGAN"``; files without it are HiFi-GAN). The text encoder,
flow and speaker embedding are the same for every decoder; only ``dec`` changes:

* ``"HiFi-GAN"``: RVC's HiFi-GAN, with the NSF source for pitch-guided models (:mod:`.hifigan`);
* ``"MRF HiFi-GAN"``: Applio's HiFi-GAN with multi-receptive-field blocks and an
  8-overtone source (:mod:`.hifigan_mrf`), pitch-guided models only;
* ``"RefineGAN"``: Applio's RefineGAN (:mod:`.refinegan`), pitch-guided models only.

A decoder is an ``nn.Module`` with

* ``forward(x, g, source, lengths)``: latent ``x`` ``[B, inter, T]``, speaker ``g``
  ``[B, gin, 1]``, the source signal ``[B, 1, T * hop]`` (pitch-guided models, else
  ``None``) and, for padded batches, the valid frames per item (``None`` otherwise);
  returns ``[B, 1, T * hop]`` audio. Decoders with ``draws_noise = True`` also take
  ``gens`` (one generator or ``None`` per item; ``None`` as a whole = no noise);
* the source (pitch-guided models only): either ``m_source``, mapping RVC's sine
  excitation ``[B, 1, T * hop]`` to the source signal, or ``source_signal(pitchf,
  lengths, gens)``, computing the decoder's own source from frame f0;
* ``margin_frames``: context frames a decoding window needs on each side (at least the
  decoder's receptive half-width; see :mod:`.windows`), and optionally
  ``window_frames`` (the window length for long items);
* ``prepare()``: recompute derived weights after the parameters change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeAlias

from .config import Arch
from .hifigan import HiFiGAN
from .hifigan_mrf import MRFHiFiGAN
from .refinegan import RefineGAN

__all__ = ["DEFAULT_VOCODER", "VOCODER_NAMES", "F0_ONLY_KINDS", "Decoder", "build_decoder", "vocoder_kind"]

#: The decoders :func:`build_decoder` builds (each has the interface described above).
Decoder: TypeAlias = HiFiGAN | MRFHiFiGAN | RefineGAN

#: The decoder of files without a ``vocoder`` entry.
DEFAULT_VOCODER = "HiFi-GAN"

#: Decoder builders by kind; each takes the architecture and whether the model is pitch-guided.
def _mrf(arch: Arch, nsf: bool) -> MRFHiFiGAN:
    if not nsf:
        raise ValueError("the MRF HiFi-GAN decoder exists only for pitch-guided (f0) models")
    return MRFHiFiGAN(arch)


def _refinegan(arch: Arch, nsf: bool) -> RefineGAN:
    if not nsf:
        raise ValueError("the RefineGAN decoder exists only for pitch-guided (f0) models")
    return RefineGAN(arch)


_BUILDERS: dict[str, Callable[[Arch, bool], Decoder]] = {
    "hifigan": lambda arch, nsf: HiFiGAN(arch, nsf=nsf),
    "mrf": _mrf,
    "refinegan": _refinegan,
}

#: The ``vocoder`` entry Applio writes for each decoder kind.
VOCODER_NAMES = {"hifigan": "HiFi-GAN", "mrf": "MRF HiFi-GAN", "refinegan": "RefineGAN"}

#: Decoder kinds that exist only for pitch-guided models (Applio builds no decoder otherwise).
F0_ONLY_KINDS = frozenset({"mrf", "refinegan"})

#: Spellings of the ``vocoder`` entry (lower case, letters and digits only) -> kind.
_ALIASES = {
    "hifigan": "hifigan",
    "hifigannsf": "hifigan",
    "nsfhifigan": "hifigan",
    "mrfhifigan": "mrf",
    "hifiganmrf": "mrf",
    "refinegan": "refinegan",
}


def vocoder_kind(name: Any) -> str | None:
    """The decoder kind for a file's ``vocoder`` entry (``"HiFi-GAN"`` -> ``"hifigan"``),
    or None when rvcfast has no such decoder."""
    if not isinstance(name, str):
        return None
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def build_decoder(arch: Arch, *, nsf: bool, vocoder: str = DEFAULT_VOCODER) -> Decoder:
    """The decoder ``vocoder`` names, built for ``arch`` (with the NSF source when ``nsf``).

    Raises:
        ValueError: ``vocoder`` names no decoder rvcfast has, or one that needs pitch
            guidance while ``nsf`` is false, or ``arch`` does not fit the decoder.
    """
    kind = vocoder_kind(vocoder)
    if kind is None:
        known = ", ".join(repr(v) for v in VOCODER_NAMES.values())
        raise ValueError(f"vocoder {vocoder!r} is not supported; known: {known}")
    return _BUILDERS[kind](arch, nsf)
