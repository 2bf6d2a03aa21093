"""A traceable view of a :class:`~.model.Synthesizer` for ONNX export (:mod:`rvcfast.onnx_export`).

:class:`OnnxGraph` computes exactly what ``Synthesizer.synthesize`` computes for one item
in float32, written so that ``torch.onnx.export`` (TorchScript tracing) records a graph
that is valid for *any* number of frames:

* no Python arithmetic on traced sizes (a ``min``/``max``/``range`` over ``x.shape`` would
  freeze the traced length into the graph, so that it runs at that length only): the text
  encoder's relative attention uses the pad-and-reshape "skew" of the reference instead of
  the bounded row blocks and ``scatter_add`` of :class:`.text_encoder.RelativeAttention`
  (same additions, in the same order);
* the HiFi-GAN decoder takes its plain path (the fused oneDNN path and windowed decoding
  are CPU-runtime optimisations of the same arithmetic), MRF HiFi-GAN and RefineGAN run
  their own ``forward``;
* Applio's sine source is one float64 scan over the whole item instead of
  :mod:`.applio_source`'s steps of 65536 samples (the same sums: the steps carry them).

``phone_lengths`` is honoured like a padded batch item: frames beyond it are cut off
before anything runs, and the output is padded with zeros back to ``T * hop`` samples,
so the valid samples equal a run on the trimmed input.

Random draws: the prior noise is the graph input ``rnd`` (RVC's interface, ``z_p = m_p +
exp(logs_p) * rnd``, no 0.66666 factor) or drawn in the graph (w-okada's interface, with the
factor). With ``noise=True`` the NSF source noise (std 0.003 voiced, 0.1/3 unvoiced), the
random overtone phases of Applio's source and RefineGAN's AdaIN noise are drawn in the graph
(``RandomNormalLike`` / ``RandomUniformLike``), as in RVC's export; ``noise=False`` leaves
them out and the graph is deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import LRELU_SLOPE
from .hifigan import SINE_AMP, HiFiGAN, sine_excitation
from .hifigan_mrf import MRFHiFiGAN
from .model import _NSF_NOISE_UNVOICED, _NSF_NOISE_VOICED, _PRIOR_NOISE_SCALE, Synthesizer
from .refinegan import RefineGAN
from .text_encoder import RelativeAttention, TextEncoder

__all__ = ["INTERFACES", "OnnxGraph", "graph_input_names"]

#: Graph interfaces: RVC's ``onnx_inference.py`` names (prior noise as the input ``rnd``),
#: and w-okada voice-changer's names (prior noise drawn in the graph).
INTERFACES = ("rvc", "w-okada")

_NAMES = {
    "rvc": ("phone", "phone_lengths", "pitch", "pitchf", "ds", "rnd"),
    "w-okada": ("feats", "p_len", "pitch", "pitchf", "sid"),
}


def graph_input_names(interface: str, has_f0: bool) -> tuple[str, ...]:
    """The graph's input names, in order, for ``interface`` (``"rvc"`` or ``"w-okada"``);
    models without pitch guidance have no ``pitch`` / ``pitchf``."""
    if interface not in _NAMES:
        raise ValueError(f"interface must be one of {', '.join(INTERFACES)}, got {interface!r}")
    names = _NAMES[interface]
    return names if has_f0 else tuple(n for n in names if n not in ("pitch", "pitchf"))


# ----------------------------------------------------------------------------- text encoder


def _rel_to_abs(rel: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, T, 2W+1]`` banded scores (offset ``r`` = key ``i + r - W``) -> ``[B, H, T, T]``,
    0 outside the band. Pad each row to ``T + 2W + 1``, read the rows back one element
    shorter (row ``i`` shifts right by ``i``) and keep the columns ``W .. W + T - 1``."""
    b, h, t, _ = rel.shape
    width = t + 2 * window + 1
    flat = F.pad(rel, (0, t)).reshape(b, h, t * width)
    return flat[:, :, : t * (width - 1)].reshape(b, h, t, width - 1)[:, :, :, window : window + t]


def _abs_to_rel(p: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, T, T]`` -> ``[B, H, T, 2W+1]`` with ``out[i, r] = p[i, i + r - W]`` (0 off the
    ends): the inverse skew (rows read back one element longer shift left by ``i``)."""
    b, h, t, _ = p.shape
    width = t + 2 * window + 1
    flat = F.pad(F.pad(p, (window, window + 1)).reshape(b, h, t * width), (0, t))
    return flat.reshape(b, h, t, width + 1)[:, :, :, : 2 * window + 1]


def _attention(attn: RelativeAttention, x: torch.Tensor) -> torch.Tensor:
    """:meth:`.RelativeAttention.forward` without padding, for ``x`` ``[B, T, C]``."""
    b, t, c = x.shape
    h, d, w = attn.n_heads, attn.k_channels, attn.window
    qkv = F.linear(x, attn.qkv_weight, attn.qkv_bias).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # q already divided by sqrt(d)
    scores = torch.matmul(q, k.transpose(-2, -1))
    rel_logits = torch.matmul(q, attn.emb_rel_k[0].transpose(0, 1))  # [B, H, T, 2W+1]
    p = torch.softmax(scores + _rel_to_abs(rel_logits, w), dim=-1)
    out = torch.matmul(p, v) + torch.matmul(_abs_to_rel(p, w), attn.emb_rel_v[0])
    out = out.transpose(1, 2).reshape(b, t, c)
    return F.linear(out, attn.conv_o.weight[:, :, 0], attn.conv_o.bias)


def _text_encoder(enc: TextEncoder, phone: torch.Tensor, pitch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`.TextEncoder.forward` for one unpadded item: ``(m_p, logs_p)``, each ``[1, inter, T]``."""
    x = enc.emb_phone(phone)
    if pitch is not None:
        x = x + enc.emb_pitch(pitch)
    x = F.leaky_relu(x * math.sqrt(enc.hidden), LRELU_SLOPE)
    shape = (enc.hidden,)  # a Python int: the traced x.shape[-1] would not stay a constant
    for attn, norm1, ffn, norm2 in enc.encoder.layer_modules():
        x = F.layer_norm(x + _attention(attn, x), shape, norm1.gamma, norm1.beta, 1e-5)
        x = F.layer_norm(x + ffn(x.transpose(1, 2), None).transpose(1, 2), shape, norm2.gamma, norm2.beta, 1e-5)
    stats = F.linear(x, enc.proj.weight[:, :, 0], enc.proj.bias).transpose(1, 2)
    return stats[:, : enc.inter], stats[:, enc.inter :]


# ----------------------------------------------------------------------------- sources


def _applio_sines(f0: torch.Tensor, sr: int, harmonics: int, noise: bool) -> torch.Tensor:
    """Applio's ``SineGenerator`` (:func:`.applio_source.harmonic_sines`) as one scan:
    sample-rate f0 ``[1, N]`` -> ``[1, N, harmonics + 1]``."""
    dim = harmonics + 1
    mult = torch.arange(1, dim + 1, dtype=torch.float32)
    rad = (f0[:, :, None] * mult / sr) % 1
    if noise:  # random initial phases of the overtones; the fundamental's is 0
        ini = torch.rand_like(rad[:, :1, :]) * (mult > 1).to(torch.float32)
        rad = torch.cat([rad[:, :1] + ini, rad[:, 1:]], dim=1)
    wrapped = torch.cumsum(rad.double(), dim=1).float() % 1
    shift = ((wrapped[:, 1:] - wrapped[:, :-1]) < 0).to(torch.float32) * -1.0
    adj = torch.cat([rad[:, :1], rad[:, 1:] + shift], dim=1)
    sines = torch.sin(torch.cumsum(adj.double(), dim=1).float() * 2 * math.pi) * SINE_AMP
    uv = (f0 > 0).to(torch.float32)[:, :, None]
    if not noise:
        return sines * uv
    amp = uv * _NSF_NOISE_VOICED + (1 - uv) * (SINE_AMP / 3)
    return sines * uv + amp * torch.randn_like(sines)


def _rvc_source(dec: HiFiGAN, pitchf: torch.Tensor, sr: int, hop: int, noise: bool) -> torch.Tensor:
    """RVC's NSF source (:meth:`.Synthesizer._source`) ``[1, 1, T * hop]``."""
    excitation = sine_excitation(pitchf, sr, hop)
    if noise:
        voiced = (pitchf > 0).to(torch.float32).repeat_interleave(hop, dim=1)
        amp = voiced * _NSF_NOISE_VOICED + (1 - voiced) * _NSF_NOISE_UNVOICED
        excitation = excitation + amp * torch.randn_like(excitation)
    return dec.m_source(excitation[:, None, :])


def _applio_source(dec: MRFHiFiGAN | RefineGAN, pitchf: torch.Tensor, hop: int, noise: bool) -> torch.Tensor:
    """The MRF HiFi-GAN / RefineGAN source (``dec.source_signal``) ``[1, 1, T * hop]``."""
    x = pitchf[:, None, :]
    if isinstance(dec, RefineGAN):  # linear interpolation, no overtones
        f0 = F.interpolate(x, scale_factor=float(hop), mode="linear")[:, 0, :]
        return dec.m_source(_applio_sines(f0, dec.sr, 0, noise)).transpose(1, 2)
    f0 = F.interpolate(x, scale_factor=float(hop), mode="nearest")[:, 0, :]
    harmonics = dec.m_source.l_linear.in_features - 1
    return dec.m_source(_applio_sines(f0, dec.sr, harmonics, noise)).transpose(1, 2)


# ----------------------------------------------------------------------------- the graph


class OnnxGraph(nn.Module):
    """The export wrapper around a float32 CPU :class:`Synthesizer` (which it owns: the
    caller passes a private copy, see :func:`rvcfast.onnx_export.export_onnx`).

    ``forward`` takes the inputs named by :func:`graph_input_names` and returns ``audio``
    ``[1, 1, T * hop]``. Batch size 1.
    """

    def __init__(self, model: Synthesizer, *, interface: str = "rvc", noise: bool = True) -> None:
        super().__init__()
        graph_input_names(interface, model.has_f0)  # checks the interface
        if isinstance(model.dec, HiFiGAN):
            model.dec.fused_cpu = False  # the plain path: tracing sees ordinary convolutions
        self.model = model
        self.interface = interface
        self.noise = bool(noise)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        m = self.model
        if m.has_f0:
            phone, lengths, pitch, pitchf, sid, *rest = inputs
        else:
            (phone, lengths, sid, *rest), pitch, pitchf = inputs, None, None
        t = phone.shape[1]
        n = torch.clamp(lengths[0], min=1)
        n = torch.minimum(n, torch.full_like(n, t))  # frames beyond phone_lengths are padding
        phone = phone[:, :n].to(torch.float32)
        g = m.emb_g(sid[:1])[:, :, None]
        m_p, logs_p = _text_encoder(m.enc_p, phone, None if pitch is None else pitch[:, :n])
        if self.interface == "rvc":
            z_p = m_p + torch.exp(logs_p) * rest[0][:, :, :n]
        elif self.noise:
            z_p = m_p + torch.exp(logs_p) * torch.randn_like(m_p) * _PRIOR_NOISE_SCALE
        else:
            z_p = m_p
        z = m.flow.reverse(z_p, None, g)
        hop = m.hop_length
        source = None
        if pitchf is not None:
            pitchf = pitchf[:, :n].to(torch.float32)
            if isinstance(m.dec, HiFiGAN):
                source = _rvc_source(m.dec, pitchf, m.sample_rate, hop, self.noise)
            else:  # MRF HiFi-GAN / RefineGAN: the decoder's own source (``source_signal``)
                source = _applio_source(m.dec, pitchf, hop, self.noise)
        if isinstance(m.dec, RefineGAN):
            audio = m.dec(z, g, source, None, gens=[None] if self.noise else None)
        else:
            audio = m.dec(z, g, source, None)
        # a 0-dim tensor size keeps the traced length free; torch's hints take only ints
        pad = torch.zeros(1, 1, (t - n) * hop, dtype=audio.dtype)  # type: ignore[call-overload]
        return torch.cat([audio, pad], dim=2)
