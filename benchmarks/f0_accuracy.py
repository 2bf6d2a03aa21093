"""Accuracy and speed of every F0 backend on the WORLD ground-truth set, and of the raw libraries.

Run (from the repository root)::

    python benchmarks/f0_accuracy.py --markdown docs/f0.md

``--markdown FILE`` replaces the text between ``<!-- f0-accuracy:begin -->`` and
``<!-- f0-accuracy:end -->`` in FILE (or writes the tables alone to a new file);
without it the tables go to stdout. ``--json FILE`` keeps every figure.
``--quick`` uses the first 2 s of each recording; ``--backends a,b`` picks rows
(``name(option)`` switches a boolean option on, e.g. ``crepe(refine)``).

The set is :mod:`f0_truth` (WORLD resynthesis of CMU ARCTIC speech on prescribed
contours). Metrics are frame-level, pooled over all clips (10 ms frames, frame ``i``
centred on sample ``160 * i``; truth and estimate have the same ``len // 160 + 1``
frames):

* **RPA** (raw pitch accuracy): of the truly voiced frames, the fraction whose
  estimate is voiced and within 50 cents of the truth.
* **RCA** (raw chroma accuracy): the same with octave errors forgiven (the error is
  folded to the nearest octave first).
* **voicing precision** = |voiced in both| / |voiced in the estimate|,
  **voicing recall** = |voiced in both| / |voiced in the truth|, **F1** their harmonic mean.
* **octave-error rate**: of the frames voiced in both, the fraction whose error
  ``c = 1200 log2(est / truth)`` cents is within 100 cents of a non-zero multiple of an
  octave: ``|c - 1200 k| < 100`` for some integer ``k != 0``.
* **fine error**: median ``|c|`` over the frames counted as correct by RPA.
* **RTF** (real-time factor): wall time of ``extract`` over every clip, one call per clip,
  divided by the audio duration, after one warm-up call (model loading and first-call
  allocations excluded). Below 1 is faster than real time.

Raw libraries, run as their own documentation says, for "wrapper >= raw library":

* ``pyworld.harvest`` / ``pyworld.dio`` + ``stonemask`` (RVC's recipe without the median filter);
* ``parselmouth ... to_pitch_ac`` (RVC's settings), unpadded, each 10 ms frame taking
  Praat's value at that frame's time (linear between two voiced Praat frames, else the
  nearest Praat frame);
* ``torchcrepe.predict``'s steps (Viterbi, batch 512) with the same periodicity threshold
  (0.1) but without RVC's median/mean filters; also "+ RVC filters", which is the whole
  reference pipeline (the wrapper differs only by not adding torchcrepe's random dither).
  torchcrepe's dither makes its accuracy a random variable (about +-0.15 pp RPA from seed
  to seed here), so its rows pool :data:`DITHER_SEEDS` seeds (the network runs once, the
  decoding once per seed): each figure is the mean over the seeds;
* ``torchfcpe`` ``infer(local_argmax, threshold 0.006)`` as Applio calls it.

torchcrepe and torchfcpe import torchaudio (no wheel of it loads with a CPU-only torch)
and a few packages that rvcfast does not need; here only, stand-in modules that fail
loudly if used are put in ``sys.modules`` for the import and removed afterwards.
torchcrepe's Viterbi decoder needs librosa (``pip install librosa``); a raw library that
cannot be imported is reported and skipped.

RMVPE: the real ``rmvpe.pt`` is not available here; with random full-size weights (the
benchmark fixture's file, built if missing) only its speed means anything, so its accuracy
cells read "n/a". Pass ``--rmvpe-weights PATH`` with the real file to measure it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import os
import platform
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import f0_truth  # noqa: E402

__all__ = [
    "COUNT_FIELDS",
    "frame_counts",
    "metrics",
    "Result",
    "evaluate",
    "wrapper_fn",
    "raw_fn",
    "RAW_FOR",
    "WRAPPERS",
    "run",
    "markdown_tables",
    "main",
]

REPO = Path(__file__).resolve().parent.parent
SR = f0_truth.SR
HOP = f0_truth.HOP
MARK_BEGIN = "<!-- f0-accuracy:begin -->"
MARK_END = "<!-- f0-accuracy:end -->"

# ----------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------

#: per-clip counts; metrics are computed from their sums so clips pool frame by frame.
COUNT_FIELDS = (
    "ref_voiced",  # truly voiced frames
    "est_voiced",  # frames voiced in the estimate
    "both_voiced",  # voiced in both
    "pitch_ok",  # both voiced and |error| < 50 cents
    "chroma_ok",  # both voiced and octave-folded |error| < 50 cents
    "octave",  # both voiced and |error - 1200 k| < 100 cents for some k != 0
)


def cents_error(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``1200 log2(est / ref)`` (both positive)."""
    return 1200.0 * np.log2(np.asarray(est, dtype=np.float64) / np.asarray(ref, dtype=np.float64))


def frame_counts(est: np.ndarray, ref: np.ndarray, tolerance: float = 50.0) -> tuple[dict[str, int], np.ndarray]:
    """Counts of :data:`COUNT_FIELDS` for one clip, and the |cents| errors of the RPA hits.

    ``est`` and ``ref`` are Hz per frame with 0 (or NaN/negative for ``est``) = unvoiced and
    must have the same length.
    """
    est = np.asarray(est, dtype=np.float64).reshape(-1)
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    if est.shape != ref.shape:
        raise ValueError(f"estimate has {est.shape[0]} frames, truth {ref.shape[0]}")
    rv = ref > 0
    ev = np.isfinite(est) & (est > 0)
    both = rv & ev
    c = cents_error(est[both], ref[both])
    folded = c - 1200.0 * np.round(c / 1200.0)
    k = np.round(c / 1200.0)
    ok = np.abs(c) < tolerance
    counts = {
        "ref_voiced": int(rv.sum()),
        "est_voiced": int(ev.sum()),
        "both_voiced": int(both.sum()),
        "pitch_ok": int(ok.sum()),
        "chroma_ok": int((np.abs(folded) < tolerance).sum()),
        "octave": int(((k != 0) & (np.abs(c - 1200.0 * k) < 100.0)).sum()),
    }
    return counts, np.abs(c[ok])


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def metrics(counts: dict[str, int], hit_errors: np.ndarray | None = None) -> dict[str, float]:
    """RPA, RCA, voicing precision/recall/F1, octave-error rate (fractions), fine error (cents)."""
    p = _ratio(counts["both_voiced"], counts["est_voiced"])
    r = _ratio(counts["both_voiced"], counts["ref_voiced"])
    f1 = 2 * p * r / (p + r) if (p + r) > 0 else 0.0
    out = {
        "rpa": _ratio(counts["pitch_ok"], counts["ref_voiced"]),
        "rca": _ratio(counts["chroma_ok"], counts["ref_voiced"]),
        "voicing_precision": p,
        "voicing_recall": r,
        "voicing_f1": f1,
        "octave_error_rate": _ratio(counts["octave"], counts["both_voiced"]),
    }
    if hit_errors is not None:
        out["fine_error_cents"] = float(np.median(hit_errors)) if hit_errors.size else float("nan")
    return out


def _sum_counts(items: Sequence[dict[str, int]]) -> dict[str, int]:
    return {f: int(sum(c[f] for c in items)) for f in COUNT_FIELDS}


# ----------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------

Track = np.ndarray
#: an F0 function: audio (float64, 16 kHz) -> track, or {variant label: track} (first is primary)
F0Fn = Callable[[np.ndarray], "Track | dict[str, Track]"]


@dataclass
class Result:
    """One row: a backend (or raw library) over the whole set."""

    label: str
    kind: str  # "wrapper" | "raw"
    per_clip: list[dict[str, int]] = field(default_factory=list)
    hit_errors: list[np.ndarray] = field(default_factory=list)
    clip_names: list[str] = field(default_factory=list)
    clip_contours: list[str] = field(default_factory=list)
    seconds_audio: float = 0.0
    seconds_wall: float | None = None  # None: derived row, not timed separately
    accuracy_valid: bool = True
    note: str = ""
    load_avg: tuple[float, float] | None = None  # 1-minute load average before and after the timed run
    tracks: list[np.ndarray] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return _sum_counts(self.per_clip)

    @property
    def scores(self) -> dict[str, float]:
        errs = np.concatenate(self.hit_errors) if self.hit_errors else np.zeros(0)
        return metrics(self.counts, errs)

    @property
    def rtf(self) -> float | None:
        if self.seconds_wall is None or not self.seconds_audio:
            return None
        return self.seconds_wall / self.seconds_audio

    def by_contour(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for c in dict.fromkeys(self.clip_contours):
            idx = [i for i, cc in enumerate(self.clip_contours) if cc == c]
            out[c] = metrics(_sum_counts([self.per_clip[i] for i in idx]))
        return out

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "kind": self.kind,
            "rtf": self.rtf,
            "accuracy_valid": self.accuracy_valid,
            "note": self.note,
            "load_avg": self.load_avg,
            "counts": self.counts,
            "scores": self.scores if self.accuracy_valid else None,
            "by_contour": self.by_contour() if self.accuracy_valid else None,
        }


def evaluate(
    label: str,
    fn: F0Fn,
    clips: Sequence[f0_truth.TruthClip],
    *,
    kind: str = "wrapper",
    warmup: bool = True,
    keep_tracks: bool = False,
) -> list[Result]:
    """Run ``fn`` on every clip (timed, after a warm-up on the first second of the first clip).

    Returns one :class:`Result` per variant ``fn`` yields (the first is the timed one;
    further variants are derived from the same call and have no time of their own).
    """
    if warmup and clips:
        fn(clips[0].audio[: SR + 1])
    results: dict[str, Result] = {}
    wall = 0.0
    load0 = _load_avg()
    for clip in clips:
        t0 = time.perf_counter()
        out = fn(clip.audio)
        wall += time.perf_counter() - t0
        variants = out if isinstance(out, dict) else {label: out}
        for i, (vlabel, track) in enumerate(variants.items()):
            res = results.get(vlabel)
            if res is None:
                res = results[vlabel] = Result(vlabel, kind)
                if i > 0:
                    res.note = "same run as " + next(iter(variants))
            # a list of tracks (e.g. one per random seed) is pooled: counts summed, so every
            # ratio is the mean over the list (same truth, same denominators)
            tracks = [np.asarray(t, dtype=np.float64).reshape(-1) for t in (track if isinstance(track, list) else [track])]
            pooled = [frame_counts(t, clip.f0) for t in tracks]
            counts = _sum_counts([c for c, _ in pooled])
            hits = np.concatenate([h for _, h in pooled])
            track = tracks[0]
            res.per_clip.append(counts)
            res.hit_errors.append(hits)
            res.clip_names.append(clip.name)
            res.clip_contours.append(clip.contour)
            res.seconds_audio += clip.seconds
            if keep_tracks:
                res.tracks.append(track)
    rows = list(results.values())
    if rows:
        rows[0].seconds_wall = wall
        rows[0].load_avg = (load0, _load_avg())
    return rows


def _load_avg() -> float:
    """The 1-minute load average (NaN where the OS has none): other jobs on the machine slow the timings."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return float("nan")


# ----------------------------------------------------------------------------------------
# the wrappers (rvcfast) and the raw libraries
# ----------------------------------------------------------------------------------------

#: rows of the main table: rvcfast backend names (plus one hybrid)
WRAPPERS: tuple[str, ...] = (
    "rmvpe",
    "crepe",
    "crepe(refine)",
    "crepe-tiny",
    "crepe-tiny(refine)",
    "fcpe",
    "harvest",
    "dio",
    "pm",
    "swift",
    "hybrid:crepe-tiny+fcpe+pm",
)

#: wrapper name -> label of its raw-library row
RAW_FOR: dict[str, str] = {
    "harvest": "pyworld.harvest + stonemask",
    "dio": "pyworld.dio + stonemask",
    "pm": "parselmouth to_pitch_ac",
    "crepe": "torchcrepe full",
    "crepe(refine)": "torchcrepe full",
    "crepe-tiny": "torchcrepe tiny",
    "crepe-tiny(refine)": "torchcrepe tiny",
    "fcpe": "torchfcpe",
}

#: torchcrepe adds random dither to its decoded pitch; its rows pool this many seeds
DITHER_SEEDS = 5


def parse_backend(spec: str) -> tuple[str, dict[str, bool]]:
    """``"crepe(refine)"`` -> ``("crepe", {"refine": True})``; a plain name has no options."""
    if spec.endswith(")") and "(" in spec:
        name, flags = spec[:-1].split("(", 1)
        return name, {f.strip(): True for f in flags.split(",") if f.strip()}
    return spec, {}


def _rmvpe_weights(path: str | os.PathLike[str] | None) -> tuple[Path, bool]:
    """(weights, real?) - the given file, else the benchmarks' random full-size model (built if missing)."""
    if path is not None:
        return Path(path), True
    from rvcfast.testing import build_bench_models

    models = Path(os.environ.get("RVCFAST_BENCH_MODELS", Path.home() / ".cache" / "rvcfast" / "bench-models"))
    return build_bench_models(models)["f0_weights"], False  # the file benchmarks/conftest.py's fixture uses


def wrapper_fn(name: str, *, rmvpe_weights: str | os.PathLike[str] | None = None, **options) -> F0Fn:
    """``get_f0_extractor(name).extract`` (RMVPE: given weights or the random full-size file)."""
    import rvcfast

    name, flags = parse_backend(name)
    options = {**flags, **options}
    if name == "rmvpe":
        w, _ = _rmvpe_weights(rmvpe_weights)
        options.setdefault("weights", w)
    ext = rvcfast.get_f0_extractor(name, **options)
    return ext.extract


# -- stand-in modules for importing torchcrepe / torchfcpe (benchmark only) ---------------


def _stub_module(name: str, attrs: Sequence[str] = ()) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__["__rvcfast_benchmark_stub__"] = True

    def _fail(*_a, **_k):
        raise RuntimeError(f"{name} is a stand-in module of benchmarks/f0_accuracy.py and cannot be used")

    for attr in attrs:
        setattr(mod, attr, _fail)
    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _fail

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


# module -> attributes the importing code binds at import time; used only off the measured path
_STUBS: dict[str, tuple[str, ...]] = {
    "torchaudio": ("load",),
    "torchaudio.transforms": ("Resample",),  # torchfcpe: resampling (not used at 16 kHz)
    "resampy": ("resample",),  # torchcrepe: resampling (not used at 16 kHz)
    "tqdm": ("tqdm",),  # torchcrepe: progress bars of the file helpers
    "einops": ("rearrange", "repeat"),  # torchfcpe: attention variant only
    "local_attention": ("LocalAttention",),  # torchfcpe: attention variant only
}


def _importable(name: str) -> bool:
    top = name.split(".")[0]
    if top in sys.modules:
        return not getattr(sys.modules[top], "__rvcfast_benchmark_stub__", False)
    try:
        importlib.import_module(top)
        return True
    except Exception:  # noqa: BLE001 - torchaudio raises OSError/RuntimeError on a CPU torch
        return False


@contextlib.contextmanager
def _stand_ins() -> Iterator[list[str]]:
    """Put stand-ins for the non-importable modules of :data:`_STUBS` in ``sys.modules``, then remove them."""
    added: list[str] = []
    tops = {n.split(".")[0] for n in _STUBS}
    missing = {t for t in tops if not _importable(t)}
    for name, attrs in _STUBS.items():
        if name.split(".")[0] in missing and name not in sys.modules:
            sys.modules[name] = _stub_module(name, attrs)
            added.append(name)
    for name in added:
        parent, _, child = name.rpartition(".")
        if parent and parent in sys.modules:
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        yield added
    finally:
        for name in added:
            sys.modules.pop(name, None)


def import_raw_library(name: str) -> types.ModuleType:
    """Import ``torchcrepe`` or ``torchfcpe`` with the stand-ins (benchmark only)."""
    if name in sys.modules:
        return sys.modules[name]
    with _stand_ins():
        return importlib.import_module(name)


# -- raw functions --------------------------------------------------------------------------


def _raw_world(method: str) -> F0Fn:
    import pyworld

    def fn(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        if method == "harvest":
            f0, t = pyworld.harvest(x, fs=SR, f0_floor=50.0, f0_ceil=1100.0, frame_period=10.0)
        else:
            f0, t = pyworld.dio(x, fs=SR, f0_floor=50.0, f0_ceil=1100.0, frame_period=10.0)
        f0 = pyworld.stonemask(x, f0, t, SR)
        n = len(x) // HOP + 1
        return f0[:n] if len(f0) >= n else np.pad(f0, (0, n - len(f0)))

    return fn


def praat_on_grid(freq: np.ndarray, times: np.ndarray, n_samples: int) -> np.ndarray:
    """Praat's track (``freq`` at ``times``, 0 = unvoiced) read at rvcfast's frame times.

    Frame ``i`` is sample ``160 i``, which parselmouth places at ``(160 i + 0.5) / 16000`` s.
    A frame takes the linear interpolation of the two Praat frames around it when both are
    voiced, else the value of the nearest Praat frame (0 outside Praat's frames).
    """
    n = n_samples // HOP + 1
    out = np.zeros(n)
    if len(freq) == 0:
        return out
    dt = times[1] - times[0] if len(times) > 1 else HOP / SR
    pos = ((np.arange(n) * HOP + 0.5) / SR - times[0]) / dt
    near = np.rint(pos).astype(np.int64)
    inside = (near >= 0) & (near < len(freq))
    out[inside] = freq[near[inside]]
    lo = np.floor(pos).astype(np.int64)
    hi = lo + 1
    both = (lo >= 0) & (hi < len(freq))
    both[both] &= (freq[lo[both]] > 0) & (freq[hi[both]] > 0)
    w = pos[both] - lo[both]
    out[both] = freq[lo[both]] * (1 - w) + freq[hi[both]] * w
    return out


def _raw_pm() -> F0Fn:
    import parselmouth

    def fn(x: np.ndarray) -> np.ndarray:
        pitch = parselmouth.Sound(np.asarray(x, dtype=np.float64), SR).to_pitch_ac(
            time_step=0.01, voicing_threshold=0.6, pitch_floor=50, pitch_ceiling=1100
        )
        return praat_on_grid(pitch.selected_array["frequency"], np.asarray(pitch.xs()), len(x))

    return fn


def _raw_torchcrepe(capacity: str) -> F0Fn:
    import torch

    torchcrepe = import_raw_library("torchcrepe")
    label = RAW_FOR["crepe" if capacity == "full" else "crepe-tiny"]

    def fn(x: np.ndarray) -> dict[str, list[np.ndarray]]:
        """torchcrepe.predict's steps (preprocess, infer, postprocess per 512-frame batch),
        the network run once and the decoding repeated for :data:`DITHER_SEEDS` dither seeds."""
        audio = torch.from_numpy(np.asarray(x, dtype=np.float32))[None]
        with torch.no_grad():
            probs = [
                torchcrepe.infer(frames, capacity).reshape(1, -1, 360).transpose(1, 2)
                for frames in torchcrepe.preprocess(audio, SR, HOP, 512, "cpu", True)
            ]
        raw, filtered = [], []
        for seed in range(DITHER_SEEDS):
            torch.manual_seed(seed)  # torchcrepe dithers the decoded bins with random noise
            # (postprocess masks its input in place, hence the clones)
            parts = [torchcrepe.postprocess(p.clone(), 50, 1100, torchcrepe.decode.viterbi, False, True) for p in probs]
            pitch = torch.cat([a for a, _ in parts], 1)
            pd = torch.cat([b for _, b in parts], 1)
            r = pitch.clone()
            r[pd < 0.1] = 0
            raw.append(r[0].numpy())
            # RVC / Applio's post-processing, with torchcrepe's own filters
            pdf = torchcrepe.filter.median(pd, 3)
            f0 = torchcrepe.filter.mean(pitch, 3)
            f0[pdf < 0.1] = 0
            filtered.append(f0[0].numpy())
        return {label: raw, f"{label} + RVC filters": filtered}

    return fn


def _raw_torchfcpe() -> F0Fn:
    import torch

    torchfcpe = import_raw_library("torchfcpe")
    model = torchfcpe.spawn_bundled_infer_model(device="cpu")

    def fn(x: np.ndarray) -> np.ndarray:
        audio = torch.from_numpy(np.asarray(x, dtype=np.float32))[None, :, None]
        f0 = model.infer(audio, sr=SR, decoder_mode="local_argmax", threshold=0.006)
        return f0[0, :, 0].numpy()

    return fn


def raw_fn(wrapper: str) -> F0Fn:
    """The raw-library counterpart of ``wrapper`` (see :data:`RAW_FOR`); ImportError if unavailable."""
    wrapper, _ = parse_backend(wrapper)
    if wrapper in ("harvest", "dio"):
        return _raw_world(wrapper)
    if wrapper == "pm":
        return _raw_pm()
    if wrapper == "crepe":
        return _raw_torchcrepe("full")
    if wrapper == "crepe-tiny":
        return _raw_torchcrepe("tiny")
    if wrapper == "fcpe":
        return _raw_torchfcpe()
    raise KeyError(f"no raw library for {wrapper!r}")


# ----------------------------------------------------------------------------------------
# driver and tables
# ----------------------------------------------------------------------------------------


def run(
    clips: Sequence[f0_truth.TruthClip],
    backends: Sequence[str] = WRAPPERS,
    *,
    raw: bool = True,
    rmvpe_weights: str | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> tuple[list[Result], dict[str, str]]:
    """Evaluate each backend and (``raw=True``) its raw library. Returns rows and skipped rows with reasons."""
    rows: list[Result] = []
    skipped: dict[str, str] = {}
    ran_raw: set[str] = set()  # a raw library shared by several wrapper variants runs once
    for name in backends:
        try:
            fn = wrapper_fn(name, rmvpe_weights=rmvpe_weights)
        except Exception as exc:  # noqa: BLE001 - report and go on
            skipped[name] = f"{type(exc).__name__}: {exc}"
            log(f"skip {name}: {skipped[name]}")
            continue
        log(f"running {name} ...")
        res = evaluate(name, fn, clips)
        if name == "rmvpe":
            _, real = _rmvpe_weights(rmvpe_weights)
            for r in res:
                r.accuracy_valid = real
                r.note = "" if real else "random full-size weights: speed only"
        rows += res
        log(f"  {name}: RTF {res[0].rtf:.3f}")
        if raw and name in RAW_FOR and RAW_FOR[name] not in ran_raw:
            label = RAW_FOR[name]
            ran_raw.add(label)
            try:
                rfn = raw_fn(name)
            except Exception as exc:  # noqa: BLE001
                skipped[label] = f"{type(exc).__name__}: {exc}"
                log(f"skip {label}: {skipped[label]}")
                continue
            log(f"running {label} ...")
            rr = evaluate(label, rfn, clips, kind="raw")
            rows += rr
            log(f"  {label}: RTF {rr[0].rtf:.3f}")
    return rows, skipped


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _rtf(x: float | None) -> str:
    if x is None:
        return "(same run)"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def comparisons(rows: Sequence[Result]) -> list[dict]:
    """wrapper vs raw library: RPA and voicing F1 (percentage points) for each pair run."""
    by = {r.label: r for r in rows}
    out = []
    for w, rl in RAW_FOR.items():
        if w in by and rl in by and by[w].accuracy_valid:
            sw, sr_ = by[w].scores, by[rl].scores
            out.append(
                {
                    "wrapper": w,
                    "raw": rl,
                    "rpa_wrapper": sw["rpa"],
                    "rpa_raw": sr_["rpa"],
                    "f1_wrapper": sw["voicing_f1"],
                    "f1_raw": sr_["voicing_f1"],
                    "d_rpa_pp": 100 * (sw["rpa"] - sr_["rpa"]),
                    "d_f1_pp": 100 * (sw["voicing_f1"] - sr_["voicing_f1"]),
                    "rtf_wrapper": by[w].rtf,
                    "rtf_raw": by[rl].rtf,
                }
            )
    return out


def markdown_tables(rows: Sequence[Result], skipped: dict[str, str], info: dict) -> str:
    lines: list[str] = []
    loads = [x for r in rows if r.load_avg for x in r.load_avg if np.isfinite(x)]
    load = f", 1-min load average {min(loads):.1f}–{max(loads):.1f} during the timed runs" if loads else ""
    lines.append(
        f"Measured {info['date']} on {info['cpu']} ({info['threads']} torch threads{load}), "
        f"torch {info['torch']}, {info['clips']} clips, {info['seconds']:.1f} s of audio, "
        f"{info['voiced_frames']} truly voiced frames of {info['frames']}. "
        f"Command: `{info['command']}`."
    )
    lines.append("")
    lines.append(
        "| backend | kind | RPA % | RCA % | voicing precision % | voicing recall % | voicing F1 % "
        "| octave errors % | fine error (cents) | RTF |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s = r.scores
        if r.accuracy_valid:
            cells = [
                _pct(s["rpa"]),
                _pct(s["rca"]),
                _pct(s["voicing_precision"]),
                _pct(s["voicing_recall"]),
                _pct(s["voicing_f1"]),
                _pct(s["octave_error_rate"]),
                f"{s['fine_error_cents']:.1f}",
            ]
        else:
            cells = ["n/a"] * 7
        name = f"`{r.label}`" if r.kind == "wrapper" else r.label
        kind = "rvcfast" if r.kind == "wrapper" else "raw library"
        if r.note:
            kind += f" ({r.note})"
        lines.append(f"| {name} | {kind} | " + " | ".join(cells) + f" | {_rtf(r.rtf)} |")
    for label, why in skipped.items():
        lines.append(f"| {label} | not run: {why.splitlines()[0][:120]} |" + " |" * 8)
    comps = comparisons(rows)
    if comps:
        lines.append("")
        lines.append("Wrapper vs the raw library it wraps (percentage points; ≥ 0 means the wrapper is at least as accurate):")
        lines.append("")
        lines.append("| wrapper | raw library | RPA wrapper | RPA raw | Δ RPA (pp) | F1 wrapper | F1 raw | Δ F1 (pp) | RTF wrapper | RTF raw |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in comps:
            lines.append(
                f"| `{c['wrapper']}` | {c['raw']} | {_pct(c['rpa_wrapper'])} | {_pct(c['rpa_raw'])} | "
                f"{c['d_rpa_pp']:+.1f} | {_pct(c['f1_wrapper'])} | {_pct(c['f1_raw'])} | {c['d_f1_pp']:+.1f} | "
                f"{_rtf(c['rtf_wrapper'])} | {_rtf(c['rtf_raw'])} |"
            )
    valid = [r for r in rows if r.accuracy_valid]
    if valid:
        contours = list(dict.fromkeys(c for r in valid for c in r.clip_contours))
        lines.append("")
        lines.append("RPA % by contour:")
        lines.append("")
        lines.append("| backend | " + " | ".join(contours) + " |")
        lines.append("|---|" + "---:|" * len(contours))
        for r in valid:
            bc = r.by_contour()
            name = f"`{r.label}`" if r.kind == "wrapper" else r.label
            lines.append(f"| {name} | " + " | ".join(_pct(bc[c]["rpa"]) for c in contours) + " |")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write_markdown(path: Path, tables: str) -> None:
    """Replace the marked block of ``path`` (or create ``path`` holding only the tables)."""
    block = f"{MARK_BEGIN}\n{tables}{MARK_END}"
    if path.exists():
        text = path.read_text()
        if MARK_BEGIN in text and MARK_END in text:
            head, rest = text.split(MARK_BEGIN, 1)
            _, tail = rest.split(MARK_END, 1)
            path.write_text(head + block + tail)
            return
        raise SystemExit(f"{path} exists but has no {MARK_BEGIN} ... {MARK_END} block to replace")
    path.write_text(block + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default=",".join(WRAPPERS), help="comma-separated rvcfast backend names")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw libraries")
    ap.add_argument("--quick", action="store_true", help="first 2 s of each recording only")
    ap.add_argument("--rmvpe-weights", default=None, help="the real rmvpe.pt (default: random full-size weights)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the tables into this file's marked block")
    ap.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if f0_truth.audio_dir() is None:
        print("shared audio not found (set RVCFAST_SHARED to the shared/ folder); nothing to measure", file=sys.stderr)
        return 0
    clips = f0_truth.build_truth_set(max_seconds=2.0 if args.quick else None)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows, skipped = run(clips, backends, raw=not args.no_raw, rmvpe_weights=args.rmvpe_weights)
    cmd_args = [a for a in (argv if argv is not None else sys.argv[1:])]
    info = {
        "date": _dt.date.today().isoformat(),
        "cpu": _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "clips": len(clips),
        "seconds": sum(c.seconds for c in clips),
        "voiced_frames": int(sum(c.voiced.sum() for c in clips)),
        "frames": int(sum(len(c.f0) for c in clips)),
        "command": "python benchmarks/f0_accuracy.py " + " ".join(cmd_args),
    }
    tables = markdown_tables(rows, skipped, info)
    if args.markdown is not None:
        write_markdown(args.markdown, tables)
    else:
        sys.stdout.write(tables)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"info": info, "rows": [r.to_json() for r in rows], "skipped": skipped, "comparisons": comparisons(rows)},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
