"""The :class:`Synthesizer` module: text encoder, flow, decoder and speaker embedding.

Exactness notes
---------------
* ``noise=False`` removes every random draw (prior noise, NSF noise; the fundamental's
  initial phase is 0 in RVC and Applio anyway). This is the mode of the golden fixtures.
* Batches of different lengths: the text encoder and the flow are masked exactly as in
  the reference, and the decoder masks its convolution inputs beyond each item's valid
  length (:mod:`.hifigan`). Each item's output therefore equals its solo output for
  *every* valid sample, up to float rounding of batch-size dependent kernels; samples
  beyond ``lengths[b] * hop_length`` are returned as 0. When all items have the full
  length no mask is applied and the computation is the reference's.
* The NSF sine phase is the inclusive running sum of ``f0 / sr`` per output sample with
  ``f0`` held per frame. Frame-start phases are accumulated in float64 and wrapped to
  [0, 1), so the phase stays accurate for inputs of any length.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ParameterError
from . import windows
from .common import embedding
from .config import FEATURE_DIMS, parse_config
from .decoders import DEFAULT_VOCODER, build_decoder
from .flow import Flow
from .hifigan import SINE_AMP, sine_excitation
from .text_encoder import RelativeAttention, TextEncoder

__all__ = ["Synthesizer", "GeneratorArg"]

_PRIOR_NOISE_SCALE = 0.66666  # z_p = m_p + exp(logs_p) * randn * 0.66666
_NSF_NOISE_VOICED = 0.003
_NSF_NOISE_UNVOICED = SINE_AMP / 3

#: ``None`` (global RNG), one generator, or one generator per batch item.
GeneratorArg = None | torch.Generator | Sequence[torch.Generator]


def _item_generators(generator: GeneratorArg, batch: int) -> list[torch.Generator | None]:
    """One generator (or None = global RNG) per batch item.

    A single generator seeds one fresh generator per item (B seeds drawn from it), so
    item ``b``'s noise depends only on the generator's state and on ``b``; a sequence
    gives each item its own generator.
    """
    if generator is None:
        return [None] * batch
    if isinstance(generator, torch.Generator):
        seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device).tolist()
        out: list[torch.Generator | None] = []
        for s in seeds:
            g = torch.Generator(device=generator.device)
            g.manual_seed(int(s))
            out.append(g)
        return out
    if isinstance(generator, Sequence) and not isinstance(generator, (str, bytes)):
        gens: list[torch.Generator | None] = list(generator)
        if len(gens) != batch or not all(isinstance(g, torch.Generator) for g in gens):
            raise ParameterError(
                f"generator must be a torch.Generator or a sequence of {batch} torch.Generators (one per item), "
                f"got {len(gens)} items"
            )
        return gens
    raise ParameterError(f"generator must be None, a torch.Generator or a sequence of them, got {type(generator).__name__}")


def _randn(shape: tuple[int, ...], gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal float32 noise, drawn on the generator's device, moved to ``device``."""
    if gen is None:
        return torch.randn(shape, device=device, dtype=torch.float32)
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32).to(device)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:120]


def _check_features(features: Any, feature_dim: int, version: str) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        raise ParameterError(f"features must be a [B, T, C] tensor, got {_describe(features)}")
    b, t, c = features.shape
    if c != feature_dim:
        raise ParameterError(f"features have {c} channels but this {version} model expects {feature_dim}")
    if b < 1 or t < 1:
        raise ParameterError(f"features must have at least one item and one frame, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ParameterError(f"features must be floating point, got {features.dtype}")


def _is_integer(t: torch.Tensor) -> bool:
    """Whether ``t`` holds integers (not floats, complex numbers or booleans)."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_lengths(lengths: Any, b: int, t: int, device: torch.device) -> torch.Tensor:
    try:
        lengths_t = torch.as_tensor(lengths, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise ParameterError(f"lengths must be an integer tensor of shape [{b}], got {_describe(lengths)}") from None
    if lengths_t.dim() == 0:
        lengths_t = lengths_t.reshape(1)
    if lengths_t.shape != (b,) or not _is_integer(lengths_t):
        raise ParameterError(f"lengths must be an integer tensor of shape [{b}], got {_describe(lengths)}")
    lengths_t = lengths_t.long()
    if bool(((lengths_t < 1) | (lengths_t > t)).any()):
        raise ParameterError(f"lengths must lie in 1..{t} (the padded frame count), got {lengths_t.tolist()}")
    return lengths_t


def _check_finite_features(features: torch.Tensor, lengths: torch.Tensor) -> None:
    """Refuse NaN/Inf in an item's valid frames: they would make its whole output NaN."""
    bad = ~torch.isfinite(features).all(dim=2)  # [B, T]
    bad &= torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]
    if bool(bad.any()):
        items = sorted({int(i) for i in bad.nonzero()[:, 0].tolist()})
        raise ParameterError(f"features contain NaN or infinite values (batch items {items[:10]})")


def _check_skip(skip: Any) -> None:
    """Refuse a ``skip_frames`` that is not a non-negative int or a pair of them."""
    parts = (skip,) if not isinstance(skip, tuple) else skip if len(skip) == 2 else (None,)
    if not all(isinstance(p, int) and p >= 0 for p in parts):
        raise ParameterError(
            f"skip_frames must be a non-negative int or a (head, tail) pair of them, got {skip!r}"
        )


def _check_pitch(
    pitch: Any, pitchf: Any, b: int, t: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if pitch is None or pitchf is None:
        raise ParameterError("this model is pitch-guided (f0): pitch and pitchf are required")
    if not isinstance(pitch, torch.Tensor) or pitch.shape != (b, t) or pitch.is_floating_point():
        raise ParameterError(f"pitch must be an integer tensor of shape [{b}, {t}], got {_describe(pitch)}")
    if not isinstance(pitchf, torch.Tensor) or pitchf.shape != (b, t) or not pitchf.is_floating_point():
        raise ParameterError(f"pitchf must be a float tensor of shape [{b}, {t}], got {_describe(pitchf)}")
    if bool(((pitch < 0) | (pitch > 255)).any()):
        raise ParameterError("coarse pitch values must lie in 0..255")
    if not bool(torch.isfinite(pitchf).all()):
        raise ParameterError("pitchf contains NaN or infinite values")
    return pitch.to(device=device, dtype=torch.long), pitchf.to(device=device, dtype=torch.float32)


def _check_speaker(speaker: Any, b: int, num_speakers: int, device: torch.device) -> torch.Tensor:
    if isinstance(speaker, torch.Tensor):
        sid = speaker.to(device)
        if sid.dim() == 0:
            sid = sid.reshape(1)
        if not _is_integer(sid) or sid.dim() != 1 or sid.shape[0] not in (1, b):
            raise ParameterError(f"speaker must be an int or an integer tensor of shape [{b}], got {_describe(speaker)}")
        sid = sid.long().expand(b)
    else:
        try:
            if isinstance(speaker, bool):
                raise TypeError
            index = operator.index(speaker)
        except TypeError:
            raise ParameterError(f"speaker must be an int or an integer tensor, got {type(speaker).__name__}") from None
        sid = torch.full((b,), index, dtype=torch.long, device=device)
    if bool(((sid < 0) | (sid >= num_speakers)).any()):
        raise ParameterError(
            f"speaker id {sid.tolist()} out of range: this model has {num_speakers} speaker(s) (0..{num_speakers - 1})"
        )
    return sid


class Synthesizer(nn.Module):
    """An RVC voice model (``SynthesizerTrnMs{256,768}NSFsid[_nono]``), inference only.

    Build it with :func:`~rvcfast.models.synthesizer.load_vocoder`. Attributes:
    ``sample_rate`` (Hz), ``version`` (``"v1"``/``"v2"``), ``has_f0``, ``num_speakers``,
    ``feature_dim`` (256 or 768), ``hop_length`` (output samples per input frame, =
    ``prod(upsample_rates)``), ``vocoder`` (the decoder's name), ``embedder_model`` (the
    embedder named by the file, e.g. ``"contentvec"``, or ``None``) and ``config`` (the
    18-value list, with ``config[15]`` = ``num_speakers`` and ``config[17]`` =
    ``sample_rate``).

    Sub-modules (named like RVC's state-dict keys): ``enc_p`` (text encoder), ``dec``
    (the decoder, built by :func:`.decoders.build_decoder`), ``flow`` and ``emb_g``
    (speaker embedding).
    """

    #: ``synthesize`` accepts ``skip_frames`` (decode only the frames the caller keeps).
    supports_skip_frames = True
    #: ``skip_frames`` may also be a ``(head, tail)`` pair (different counts at each end).
    supports_head_skip = True

    def __init__(
        self,
        config: Sequence[Any],
        *,
        version: str = "v2",
        has_f0: bool = True,
        vocoder: str = DEFAULT_VOCODER,
    ) -> None:
        super().__init__()
        if version not in FEATURE_DIMS:
            raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
        arch = parse_config(config)
        self.arch = arch
        self.version = version
        self.has_f0 = bool(has_f0)
        self.vocoder = vocoder
        #: the content encoder the model was trained with, when its file names it (set by the loader)
        self.embedder_model: str | None = None
        self.feature_dim = FEATURE_DIMS[version]
        self.sample_rate = arch.sr
        self.num_speakers = arch.spk_embed_dim
        self.hop_length = math.prod(arch.upsample_rates)
        cfg = list(config)
        cfg[15] = arch.spk_embed_dim
        cfg[17] = arch.sr
        self.config = cfg
        # registration order = state-dict order (RVC's): enc_p, dec, flow, emb_g
        self.enc_p = TextEncoder(arch, self.feature_dim, self.has_f0)
        self.dec = build_decoder(arch, nsf=self.has_f0, vocoder=vocoder)
        self.flow = Flow(arch.inter_channels, arch.hidden_channels, arch.gin_channels)
        self.emb_g = embedding(arch.spk_embed_dim, arch.gin_channels)
        self.eval()

    # -- derived tensors ---------------------------------------------------------------

    def prepare(self) -> None:
        """Recompute the derived (fused) weights from the parameters.

        Called automatically by :func:`load_vocoder` and :meth:`load_state_dict`; call it
        yourself after changing parameters in place.
        """
        for m in self.modules():
            if isinstance(m, RelativeAttention):
                m.prepare()
        self.dec.prepare()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        """:meth:`torch.nn.Module.load_state_dict` (folded weights), then :meth:`prepare`."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.prepare()
        return result

    # -- validation ----------------------------------------------------------------------

    def _check_inputs(
        self,
        features: torch.Tensor,
        lengths: Any,
        pitch: torch.Tensor | None,
        pitchf: torch.Tensor | None,
        speaker: int | torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        _check_features(features, self.feature_dim, self.version)
        b, t, _ = features.shape
        device = features.device
        lengths_t = _check_lengths(lengths, b, t, device)
        _check_finite_features(features, lengths_t)
        if self.has_f0:
            pitch, pitchf = _check_pitch(pitch, pitchf, b, t, device)
        else:
            pitch = pitchf = None
        sid = _check_speaker(speaker, b, self.num_speakers, device)
        return lengths_t, pitch, pitchf, sid

    # -- inference ---------------------------------------------------------------------------

    def _prior_sample(
        self,
        m_p: torch.Tensor,
        logs_p: torch.Tensor,
        lengths: torch.Tensor,
        gens: list[torch.Generator | None] | None,
    ) -> torch.Tensor:
        """``z_p``: the prior mean, plus scaled noise over each item's valid frames when ``gens``."""
        if gens is None:
            return m_p
        b, channels, t = m_p.shape
        eps = torch.zeros(b, channels, t, device=m_p.device, dtype=torch.float32)
        for i in range(b):
            n = int(lengths[i])
            eps[i, :, :n] = _randn((channels, n), gens[i], m_p.device)
        return m_p + torch.exp(logs_p) * eps.to(m_p.dtype) * _PRIOR_NOISE_SCALE

    def _source(
        self,
        pitchf: torch.Tensor,
        lengths: torch.Tensor,
        padded: bool,
        gens: list[torch.Generator | None] | None,
    ) -> torch.Tensor:
        """The NSF source ``[B, 1, T * hop]``: sine excitation (+ RVC's noise when ``gens``) through
        ``m_source``, or the decoder's own ``source_signal`` where it has one."""
        own_source = getattr(self.dec, "source_signal", None)
        if own_source is not None:  # Applio's MRF HiFi-GAN / RefineGAN: the decoder's own sine source
            return own_source(pitchf, lengths if padded else None, gens)
        b, t = pitchf.shape
        device = pitchf.device
        upp = self.hop_length
        excitation = sine_excitation(pitchf, self.sample_rate, upp)
        if gens is not None:
            voiced = (pitchf > 0).float().repeat_interleave(upp, dim=1)
            amp = voiced * _NSF_NOISE_VOICED + (1 - voiced) * _NSF_NOISE_UNVOICED
            eps_src = torch.zeros(b, t * upp, device=device, dtype=torch.float32)
            for i in range(b):
                n = int(lengths[i]) * upp
                eps_src[i, :n] = _randn((n,), gens[i], device)
            excitation = excitation + amp * eps_src
        source = self.dec.m_source(excitation[:, None, :])
        if padded:
            source = source * _valid_samples(lengths, t, upp, source.dtype)[:, None, :]
        return source

    def _run(
        self,
        features: torch.Tensor,
        lengths: Any,
        pitch: torch.Tensor | None,
        pitchf: torch.Tensor | None,
        speaker: int | torch.Tensor,
        noise: bool,
        generator: GeneratorArg,
        skip_frames: windows.Skip = 0,
    ) -> dict[str, torch.Tensor]:
        lengths_t, pitch, pitchf, sid = self._check_inputs(features, lengths, pitch, pitchf, speaker)
        _check_skip(skip_frames)
        param = self.emb_g.weight
        device, dtype = param.device, param.dtype
        features = features.to(device=device, dtype=dtype)
        lengths_t = lengths_t.to(device)
        sid = sid.to(device)
        b, t, _ = features.shape
        padded = bool((lengths_t < t).any())
        key_mask = torch.arange(t, device=device)[None, :] < lengths_t[:, None] if padded else None
        if key_mask is not None:  # padding frames may hold anything (NaN * 0 is NaN in every mask below)
            features = features.masked_fill(~key_mask[:, :, None], 0)
        x_mask = key_mask[:, None, :].to(dtype) if key_mask is not None else None
        gens = _item_generators(generator, b) if noise else None

        g = self.emb_g(sid)[:, :, None]
        m_p, logs_p = self.enc_p(features, None if pitch is None else pitch.to(device), key_mask)
        z_p = self._prior_sample(m_p, logs_p, lengths_t, gens)
        if x_mask is not None:
            z_p = z_p * x_mask
        z = self.flow.reverse(z_p, x_mask, g)
        if x_mask is not None:
            z = z * x_mask
        source = self._source(pitchf.to(device), lengths_t, padded, gens) if pitchf is not None else None

        # decoders that draw noise themselves (RefineGAN's AdaIN) get the per-item generators
        dec_gens = gens if getattr(self.dec, "draws_noise", False) else None
        if windows.needs_windows(t, skip_frames):
            audio = windows.decode_windows(
                self.dec, z, g, source, lengths_t, skip_frames, self.hop_length, gens=dec_gens
            )
        elif dec_gens is not None:
            audio = self.dec(z, g, source, lengths_t if padded else None, gens=dec_gens)[:, 0, :]
        else:
            audio = self.dec(z, g, source, lengths_t if padded else None)[:, 0, :]
        if padded:
            audio = audio * _valid_samples(lengths_t, t, self.hop_length, audio.dtype)
        return {"m_p": m_p, "logs_p": logs_p, "z_p": z_p, "z": z, "audio": audio.float()}

    @torch.inference_mode()
    def synthesize(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        pitch: torch.Tensor | None = None,
        pitchf: torch.Tensor | None = None,
        speaker: int | torch.Tensor = 0,
        noise: bool = True,
        generator: GeneratorArg = None,
        skip_frames: windows.Skip = 0,
    ) -> torch.Tensor:
        """Features ``[B, T, C]`` at 100 frames/s to float32 audio ``[B, T * hop_length]``.

        Args:
            features: content features, ``C == feature_dim``; frames beyond ``lengths[b]``
                are padding and do not influence item ``b``.
            lengths: ``[B]`` valid frame counts (1..T).
            pitch: ``[B, T]`` coarse pitch 0..255 (int); required for F0 models, ignored otherwise.
            pitchf: ``[B, T]`` pitch in Hz, 0 = unvoiced; required for F0 models, ignored otherwise.
            speaker: speaker id, an int or a ``[B]`` tensor.
            noise: ``False`` removes every random draw (deterministic; matches the golden
                fixtures); ``True`` samples the prior (``randn * exp(logs_p) * 0.66666``)
                and the NSF noise (std 0.003 voiced, 0.1/3 unvoiced) like RVC.
            generator: ``None`` (global RNG), one :class:`torch.Generator` (seeds one
                generator per item from it), or a sequence of ``B`` generators. Each item
                draws its own noise for exactly its valid length, so with a sequence of
                generators item ``b`` equals a solo run with generator ``b``.

            skip_frames: the caller will drop this many frames at each end of every item
                (RVC drops its 1 s of padding context): the decoder, the costly part, then
                runs only on the kept frames plus a safety margin wider than its receptive
                field, and the dropped samples come back as 0. The kept samples are those
                of a full run (to float rounding). 0 (default) decodes everything.
                A pair ``(head, tail)`` drops ``head`` frames at the start and ``tail``
                at the end (the realtime converter decodes only a buffer's newest
                frames: ``(head, 0)``).

        Samples beyond ``lengths[b] * hop_length`` are 0.
        """
        return self._run(features, lengths, pitch, pitchf, speaker, noise, generator, skip_frames)["audio"]

    @torch.inference_mode()
    def synthesize_debug(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        pitch: torch.Tensor | None = None,
        pitchf: torch.Tensor | None = None,
        speaker: int | torch.Tensor = 0,
        noise: bool = True,
        generator: GeneratorArg = None,
    ) -> dict[str, torch.Tensor]:
        """Like :meth:`synthesize`, returning the intermediates too.

        Keys: ``m_p``, ``logs_p`` (text-encoder prior, ``[B, inter, T]``), ``z_p`` (the
        prior sample), ``z`` (flow output) and ``audio`` (``[B, T * hop_length]``).
        """
        return self._run(features, lengths, pitch, pitchf, speaker, noise, generator)

    def extra_repr(self) -> str:
        return (
            f"version={self.version}, sample_rate={self.sample_rate}, has_f0={self.has_f0}, "
            f"num_speakers={self.num_speakers}, hop_length={self.hop_length}"
        )



def _valid_samples(lengths: torch.Tensor, frames: int, hop: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, frames * hop]`` mask: 1 on each item's valid samples, 0 on its padding."""
    pos = torch.arange(frames * hop, device=lengths.device)
    return (pos[None, :] < (lengths * hop)[:, None]).to(dtype)
