"""Speech with known ground-truth F0: WORLD analysis of real speech, resynthesised on prescribed contours.

Recipe (per source recording, 16 kHz mono):

1. WORLD analysis with pyworld at a 10 ms frame period, so analysis frame ``i`` is
   centred on sample ``160 * i`` exactly like rvcfast's F0 frames: ``harvest``
   (f0_floor 50, f0_ceil 1100) for the original F0 and voicing, ``cheaptrick`` for
   the spectral envelope, ``d4c`` for the aperiodicity.
2. Voicing truth: a frame is voiced when Harvest calls it voiced **and** D4C's own
   voicing test agrees (D4C sets every band of a frame it finds unvoiced to 1; Harvest
   alone over-extends voicing into fricatives and silence, which would then be
   resynthesised as "voiced" noise). Voiced runs shorter than ``MIN_RUN`` frames
   (30 ms) are dropped. Unvoiced frames stay 0: that is the voicing truth.
3. A prescribed F0 contour (:data:`CONTOURS`) is written on the voiced frames and
   ``pyworld.synthesize`` renders the clip with the original envelope and
   aperiodicity. The truth for frame ``i`` is exactly the F0 given to the synthesiser
   for frame ``i``; the clip is cut to ``(n_frames - 1) * 160`` samples so that
   ``len(audio) // 160 + 1 == n_frames``, the frame count every rvcfast backend returns.

Contours (``t`` = seconds from the start of the clip):

* ``low`` / ``mid`` / ``high``: the recording's own intonation (its Harvest track in
  semitones about its median, 7-frame median-smoothed, clipped to +-4 semitones),
  transposed so the median is 90 / 150 / 300 Hz;
* ``vibrato``: ``150 * 2 ** (sin(2 pi 5.5 t) / 12)`` (mid +- 1 semitone at 5.5 Hz);
* ``glide``: 80 Hz to 400 Hz, log-linear over the whole clip;
* ``steps``: a staircase of one-semitone steps every 300 ms, from 6 semitones below
  150 Hz up to 6 above and back (a triangle, so there is no octave jump).

The audio comes from the CMU ARCTIC recordings in ``shared/audio`` (licence in
``shared/audio/COPYING.cmu_arctic``); nothing is copied into the repository. The folder
is ``$RVCFAST_SHARED/audio`` or ``../shared/audio`` relative to the repository root;
:func:`audio_dir` returns ``None`` when it is absent so callers can skip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "SR",
    "HOP",
    "FRAME_PERIOD_MS",
    "CONTOURS",
    "SOURCES",
    "MIN_RUN",
    "PEAK",
    "TruthClip",
    "Analysis",
    "audio_dir",
    "load_source",
    "analyse",
    "contour",
    "synthesize",
    "build_truth_set",
]

SR = 16000
HOP = 160
FRAME_PERIOD_MS = 1000.0 * HOP / SR  # 10 ms: WORLD frame i at sample 160 * i
F0_FLOOR = 50.0
F0_CEIL = 1100.0
PEAK = 0.95  # clips louder than this are scaled down to it
MIN_RUN = 3  # frames: shorter voiced runs are made unvoiced
CONTOURS: tuple[str, ...] = ("low", "mid", "high", "vibrato", "glide", "steps")
SOURCES: tuple[str, ...] = ("arctic_a0007", "arctic_a0009")  # male, female

_REPO = Path(__file__).resolve().parent.parent


def audio_dir() -> Path | None:
    """``$RVCFAST_SHARED/audio`` or ``<repo>/../shared/audio`` if it holds the ARCTIC clips, else ``None``."""
    base = Path(os.environ.get("RVCFAST_SHARED", _REPO.parent / "shared"))
    d = base / "audio"
    if all((d / f"{s}.wav").is_file() for s in SOURCES):
        return d
    return None


def load_source(name: str, directory: Path | None = None, max_seconds: float | None = None) -> np.ndarray:
    """A source recording as float64 mono at 16 kHz, optionally cut to its first ``max_seconds``."""
    import soundfile as sf

    d = directory if directory is not None else audio_dir()
    if d is None:
        raise FileNotFoundError("shared audio not found (set RVCFAST_SHARED to the shared/ folder)")
    x, sr = sf.read(Path(d) / f"{name}.wav", dtype="float64", always_2d=True)
    if sr != SR:
        raise ValueError(f"{name}.wav is {sr} Hz; the ground-truth recipe needs {SR} Hz sources")
    x = x.mean(axis=1)
    if max_seconds is not None:
        x = x[: int(round(max_seconds * SR))]
    return np.ascontiguousarray(x)


@dataclass
class Analysis:
    """WORLD analysis of one recording at a 10 ms frame period."""

    f0: np.ndarray  # Harvest F0 (Hz, 0 = unvoiced), [n_frames]
    sp: np.ndarray  # CheapTrick envelope, [n_frames, fft/2+1]
    ap: np.ndarray  # D4C aperiodicity, [n_frames, fft/2+1]
    voiced: np.ndarray  # voicing truth (bool), [n_frames]

    @property
    def n_frames(self) -> int:
        return int(self.f0.shape[0])


def _drop_short_runs(voiced: np.ndarray, min_run: int) -> np.ndarray:
    out = voiced.copy()
    d = np.diff(np.r_[0, voiced.astype(np.int8), 0])
    for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        if e - s < min_run:
            out[s:e] = False
    return out


def analyse(x: np.ndarray) -> Analysis:
    """Harvest + CheapTrick + D4C of float64 16 kHz audio; voicing = Harvest and D4C agree (see module doc)."""
    import pyworld

    x = np.ascontiguousarray(x, dtype=np.float64)
    f0, t = pyworld.harvest(x, SR, f0_floor=F0_FLOOR, f0_ceil=F0_CEIL, frame_period=FRAME_PERIOD_MS)
    sp = pyworld.cheaptrick(x, f0, t, SR)
    ap = pyworld.d4c(x, f0, t, SR)
    d4c_unvoiced = ap.min(axis=1) > 0.99  # D4C sets every band of an unvoiced frame to ~1
    voiced = _drop_short_runs((f0 > 0) & ~d4c_unvoiced, MIN_RUN)
    return Analysis(f0=f0, sp=sp, ap=ap, voiced=voiced)


def _intonation(f0: np.ndarray, voiced: np.ndarray) -> np.ndarray:
    """The recording's intonation in semitones about its median (smoothed, clipped to +-4)."""
    from scipy.signal import medfilt

    st = np.zeros(len(f0))
    if not voiced.any():
        return st
    logf = np.log2(np.where(voiced, f0, 1.0))
    med = np.median(logf[voiced])
    st[voiced] = 12.0 * (logf[voiced] - med)
    # smooth within voiced runs only (unvoiced frames hold 0 and do not matter)
    st = np.where(voiced, medfilt(st, 7), 0.0)
    return np.clip(st, -4.0, 4.0)


def contour(name: str, n_frames: int, intonation: np.ndarray | None = None) -> np.ndarray:
    """The prescribed F0 (Hz) for every frame of a clip (voicing is applied by the caller)."""
    t = np.arange(n_frames) * (HOP / SR)
    into = np.zeros(n_frames) if intonation is None else np.asarray(intonation, dtype=np.float64)
    if name in ("low", "mid", "high"):
        base = {"low": 90.0, "mid": 150.0, "high": 300.0}[name]
        return base * 2.0 ** (into / 12.0)
    if name == "vibrato":
        return 150.0 * 2.0 ** (np.sin(2 * np.pi * 5.5 * t) / 12.0)
    if name == "glide":
        frac = t / max(t[-1], 1e-9) if n_frames > 1 else np.zeros(n_frames)
        return 80.0 * (400.0 / 80.0) ** frac
    if name == "steps":
        k = np.floor(t / 0.3).astype(np.int64) % 24  # 0..23
        semis = np.where(k <= 12, k, 24 - k) - 6  # -6 .. +6 .. -5 (triangle staircase)
        return 150.0 * 2.0 ** (semis / 12.0)
    raise ValueError(f"unknown contour {name!r}; expected one of {CONTOURS}")


def synthesize(analysis: Analysis, f0_truth: np.ndarray) -> np.ndarray:
    """Render ``f0_truth`` (Hz per frame, 0 = unvoiced) with the analysis' envelope and aperiodicity.

    The output is cut to ``(n_frames - 1) * 160`` samples (``len // 160 + 1 == n_frames``)
    and scaled down to a peak of :data:`PEAK` when louder.
    """
    import pyworld

    f0 = np.ascontiguousarray(f0_truth, dtype=np.float64)
    y = pyworld.synthesize(f0, analysis.sp, analysis.ap, SR, FRAME_PERIOD_MS)
    n = (analysis.n_frames - 1) * HOP
    if len(y) < n:
        y = np.pad(y, (0, n - len(y)))
    y = y[:n]
    peak = float(np.max(np.abs(y))) if n else 0.0
    if peak > PEAK:  # keep the clip in [-1, 1] like a real recording (the truth is unaffected)
        y = y * (PEAK / peak)
    return np.ascontiguousarray(y)


@dataclass
class TruthClip:
    """One synthetic clip and its truth: ``f0[i]`` (Hz, 0 = unvoiced) belongs to sample ``160 * i``."""

    source: str
    contour: str
    audio: np.ndarray  # float64, 16 kHz
    f0: np.ndarray  # float64, len(audio) // 160 + 1 frames
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.source}/{self.contour}"

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR

    @property
    def voiced(self) -> np.ndarray:
        return self.f0 > 0


def build_truth_set(
    sources: Sequence[str] = SOURCES,
    contours: Sequence[str] = CONTOURS,
    *,
    max_seconds: float | None = None,
    directory: Path | None = None,
) -> list[TruthClip]:
    """Every (source, contour) clip with its truth. Deterministic (no random numbers).

    ``max_seconds`` cuts each source before analysis (a quick, smaller set).
    Raises ``FileNotFoundError`` when the shared audio is absent (see :func:`audio_dir`).
    """
    clips: list[TruthClip] = []
    for src in sources:
        x = load_source(src, directory, max_seconds)
        an = analyse(x)
        into = _intonation(an.f0, an.voiced)
        for c in contours:
            truth = np.where(an.voiced, contour(c, an.n_frames, into), 0.0)
            audio = synthesize(an, truth)
            assert len(audio) // HOP + 1 == len(truth)
            clips.append(
                TruthClip(
                    source=src,
                    contour=c,
                    audio=audio,
                    f0=truth,
                    meta={"voiced_frames": int(an.voiced.sum()), "frames": an.n_frames},
                )
            )
    return clips


if __name__ == "__main__":  # pragma: no cover - a quick look at the set
    for clip in build_truth_set():
        v = clip.voiced
        print(
            f"{clip.name:<22} {clip.seconds:5.2f} s  voiced {v.mean():5.1%}  "
            f"F0 {clip.f0[v].min():6.1f}..{clip.f0[v].max():6.1f} Hz  peak {np.abs(clip.audio).max():.2f}"
        )
