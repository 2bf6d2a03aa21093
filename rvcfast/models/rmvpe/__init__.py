"""RMVPE pitch estimator: log-mel front end, E2E network, salience decoding.

A pure-PyTorch re-implementation of the RMVPE model that RVC and Applio use
for the ``rmvpe`` F0 method (``infer/lib/rmvpe.py`` / ``rvc/lib/predictors/RMVPE.py``).

* The network hyper-parameters (U-Net depth, ConvBlockRes per block,
  intermediate layers, first-level channels, GRU layers / hidden size) are read
  off the state dict, so the real ``rmvpe.pt`` (``E2E(4, 1, (2, 2))``, 741
  entries, 90.4 M parameters, stored fp16) and reduced test models both load.
  Keys are checked strictly (:mod:`.checkpoint`).
* Every eval-mode BatchNorm is folded into the convolution in front of it at
  load time; the input ``BatchNorm2d(1)`` becomes a per-channel affine on the
  mel (folding it into the first conv would be wrong at the zero-padded border)
  (:mod:`.network`).
* The mel front end (:mod:`.mel`), padding to a multiple of 32 frames
  (``"reflect"`` like Applio, ``"constant"`` zeros like the RVC WebUI), Applio's
  32000-frame chunking and the float64/float32 decoding numerics follow the
  references (:mod:`.predictor`).

Only :func:`load_rmvpe` reads files; it goes through
:func:`rvcfast.safe_load.load_torch_file` and never runs code from the file.
Random-weight files for tests are written by :func:`rvcfast.testing.save_random_rmvpe`.
"""

from __future__ import annotations

from .checkpoint import e2e_state_shapes, infer_e2e_config, load_rmvpe
from .mel import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, mel_filterbank
from .network import E2E, N_CLASS, E2EConfig
from .predictor import (
    APPLIO_CHUNK_FRAMES,
    CENTS_OFFSET,
    DEFAULT_OVERLAP_FRAMES,
    FRAME_MULTIPLE,
    RMVPE,
    decode_salience,
)

__all__ = [
    "RMVPE",
    "E2E",
    "E2EConfig",
    "load_rmvpe",
    "infer_e2e_config",
    "e2e_state_shapes",
    "mel_filterbank",
    "decode_salience",
    "SAMPLE_RATE",
    "HOP_LENGTH",
    "N_MELS",
    "N_CLASS",
    "APPLIO_CHUNK_FRAMES",
    "CENTS_OFFSET",
    "N_FFT",
    "FRAME_MULTIPLE",
    "DEFAULT_OVERLAP_FRAMES",
]
