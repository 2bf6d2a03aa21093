"""The RVC synthesizer: content features (+ pitch) to a waveform.

This is an independent PyTorch implementation of RVC's ``SynthesizerTrnMs{256,768}NSFsid``
(and the ``_nono`` variants without pitch), as RVC WebUI and Applio run it at inference:

* ``enc_p``: the text (content) encoder -- a post-LayerNorm transformer with relative
  position attention that gives the prior mean ``m_p`` and log-scale ``logs_p``
  (:mod:`.text_encoder`);
* ``flow``: four mean-only residual coupling layers (WaveNet), run in reverse (:mod:`.flow`);
* ``dec``: the waveform decoder, built from the config by :func:`.decoders.build_decoder`
  for the file's ``vocoder``: HiFi-GAN, with a neural source-filter excitation
  (``GeneratorNSF``) for pitch-guided models (:mod:`.hifigan`), or Applio's MRF HiFi-GAN
  (:mod:`.hifigan_mrf`) or RefineGAN (:mod:`.refinegan`, with its Kaiser sinc resampler in
  :mod:`.kaiser_resample`), which share Applio's sine source (:mod:`.applio_source`);
  long inputs are decoded in bounded windows (:mod:`.windows`);
* ``emb_g``: the speaker embedding.

Module and parameter names follow RVC's state-dict keys, so a voice ``.pth`` loads with
strict key checking once weight norm is folded (:func:`load_vocoder`, :mod:`.loading`).
The config list is parsed in :mod:`.config`; :class:`Synthesizer` is in :mod:`.model`.
Random-weight voice files for tests are written by :func:`rvcfast.testing.save_random_voice_model`.
"""

from __future__ import annotations

from .config import RVC_SAMPLE_RATE_CONFIGS, rvc_config
from .loading import load_vocoder
from .model import Synthesizer

__all__ = ["Synthesizer", "load_vocoder", "rvc_config", "RVC_SAMPLE_RATE_CONFIGS"]
