"""HuBERT / ContentVec content encoder ("FeatureEncoder") in plain PyTorch.

The network (:mod:`.network`) is built from a :class:`HubertConfig` (:mod:`.config`) and
runs without fairseq or transformers. :func:`load_encoder` (:mod:`.loading`) reads a
fairseq ``hubert_base.pt`` or a Hugging Face ``HubertModel`` folder; :mod:`.layout`
maps the tensors of both layouts onto the network, and :mod:`.conv_spec` parses
fairseq's ``conv_feature_layers`` without ``eval``. Random-weight files for tests are
written by :func:`rvcfast.testing.save_random_hubert`.
"""

from __future__ import annotations

from .config import HUBERT_BASE_CONV_LAYERS, HubertConfig
from .conv_spec import parse_conv_layers
from .loading import load_encoder
from .network import HubertEncoder

__all__ = [
    "HUBERT_BASE_CONV_LAYERS",
    "HubertConfig",
    "HubertEncoder",
    "load_encoder",
    "parse_conv_layers",
]
