"""Settings tuned to the machine: measure once with ``rvcfast tune``, use on every later run.

A *profile* records, for one machine (CPU model and features, usable cores, torch version;
the GPU's name too for a CUDA device) and one device, the fastest precision, intra-op
thread count, batch size and number of compute workers measured by :func:`calibrate` on
real conversions. Profiles are stored as JSON in ``$RVCFAST_HOME`` (or the user cache), one
entry per machine and device in the same file (a home folder shared by several machines, or
a CPU and a GPU profile, keep each other's), and :func:`load_profile` reads back the entry
of the machine it runs on:

* ``dtype="auto"`` means the profile's precision (without a profile: bfloat16 where the
  hardware computes it natively, else float32 — :func:`rvcfast.runtime.resolve_dtype`);
* a run without ``batch_seconds`` uses the profile's, and a batch without
  ``compute_workers`` the profile's number of compute workers;
* front ends that own their process (the command line, the server) set torch's thread
  count from it with :func:`apply_threads`, unless ``MKL_NUM_THREADS`` or ``OMP_NUM_THREADS`` is set.

An explicit argument (``dtype=``, ``batch_seconds=``, ``compute_workers=``, ``--threads``) always
wins over the profile. ``RVCFAST_PROFILE`` names another profile file (``off``, ``0`` or ``none``:
ignore profiles; empty: unset). The environment is read each time a profile is looked for (each
model load), not at import.

A file that cannot be read as profiles, and an entry for this machine that cannot be used, are
ignored with a warning saying what to do. So is an entry for this CPU (and GPU) measured with
another torch version, other CPU features or another number of usable cores (after an upgrade of
torch, or in a container with ``--cpus``): its settings were not measured here. Another machine's
entry (a home folder shared by several) is passed over without a word.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .batch_workers import group_is_full, split_groups
from .constants import SR_16K
from .errors import ParameterError, RvcfastError
from .local_paths import expanded_path
from .runtime import (
    DTYPE_NAMES,
    available_cores,
    bad_thread_variables,
    cpu_features,
    cpuinfo_field,
    default_batch_seconds,
    env_thread_setting,
    native_bf16,
    native_fp16,
)
from .segment import SegmentConfig

__all__ = [
    "Profile",
    "Trial",
    "cpu_model",
    "machine_id",
    "profile_path",
    "load_profile",
    "save_profile",
    "is_profile_file",
    "check_profile_target",
    "apply_threads",
    "planned_threads",
    "profile_location",
    "calibrate",
    "tuned_dtype",
    "system_report",
]

PROFILE_VERSION = 1
#: Profiles kept in one file (one per machine and device); the oldest go first.
MAX_PROFILES = 16
#: CPU features that decide which precision is fast (reported by ``rvcfast info --system``).
KEY_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
)
#: The ARM counterparts (``Features`` in an ARM ``/proc/cpuinfo``): they tell ARM cores apart in a
#: profile's machine; none of them makes bfloat16 the automatic choice.
ARM_KEY_FLAGS = ("asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm")
#: The most intra-op threads or compute workers a profile may hold (a larger value is a damaged file).
MAX_THREADS = 1024


def key_flags() -> tuple[str, ...]:
    """The feature flags a profile's machine and ``rvcfast info --system`` name: x86's, and ARM's on an ARM CPU."""
    flags = cpu_features()
    return KEY_FLAGS + (ARM_KEY_FLAGS if "asimd" in flags else ())


def cpu_model() -> str:
    """The CPU's model name: ``/proc/cpuinfo``'s ``model name``; on ARM, whose kernels may not
    write one, its ``Hardware`` or implementer and part numbers; ``platform.processor()`` elsewhere."""
    name = cpuinfo_field("model name", "Hardware")
    if name:
        return name
    part = cpuinfo_field("CPU part")
    if part:
        return f"{platform.machine()} implementer {cpuinfo_field('CPU implementer') or '?'} part {part}"
    return platform.processor() or platform.machine() or "unknown"


def machine_id(device: torch.device | str = "cpu") -> str:
    """What a profile is valid for: CPU model, key features, usable cores (this process's CPU
    affinity and cgroup CPU quota), torch version and device (for a CUDA device, its GPU's name too: a profile's
    thread count is the CPU's)."""
    dev = torch.device(device)
    flags = "+".join(f for f in key_flags() if f in cpu_features())
    hw = f"{cpu_model()} [{flags}] x{available_cores()}"
    if dev.type == "cuda":
        hw = f"{torch.cuda.get_device_name(dev) if torch.cuda.is_available() else 'cuda'} + {hw}"
    return f"{hw} | torch {torch.__version__} | {dev.type}"


#: ``RVCFAST_PROFILE`` values that switch profiles off (in any case).
OFF_VALUES = ("off", "0", "none")


def profile_location() -> tuple[Path | None, str]:
    """Where the profile lives and what chose that place: ``RVCFAST_PROFILE`` (a file, or ``off``:
    ``None``), else ``$RVCFAST_HOME/profile.json``, else ``profile.json`` in the user cache. An empty
    variable counts as unset (as for ``RVCFAST_HOME``); a relative path is taken from the current
    folder, and returned absolute. The environment is read at each call."""
    env = os.environ.get("RVCFAST_PROFILE", "")
    if env.strip():
        if env.strip().lower() in OFF_VALUES:
            return None, f"RVCFAST_PROFILE={env}"
        return expanded_path("RVCFAST_PROFILE", env), "RVCFAST_PROFILE"
    home = os.environ.get("RVCFAST_HOME")
    if home:
        return expanded_path("RVCFAST_HOME", home) / "profile.json", "RVCFAST_HOME"
    from .weights import cache_dir

    return cache_dir() / "profile.json", "the user cache"


def profile_path() -> Path | None:
    """Where the profile lives (``None`` when ``RVCFAST_PROFILE=off``): see :func:`profile_location`."""
    return profile_location()[0]


def profiles_off() -> str:
    """Why profiles are off, for a message: ``profiles are switched off (RVCFAST_PROFILE=...)``."""
    return f"profiles are switched off ({profile_location()[1]})"


@dataclass(frozen=True)
class Trial:
    """One measured setting: seconds of wall time to convert the calibration clips."""

    dtype: str
    threads: int
    batch_seconds: float
    seconds: float
    snr_db: float | None = None  # output against float32 (precision trials only)
    compute_workers: int = 1  # groups converted side by side, threads shared among them
    error: str | None = None  # why the trial's conversions failed: never chosen


@dataclass(frozen=True)
class Profile:
    """The chosen settings for one machine and device, with the measurements behind them."""

    machine: str
    dtype: str
    threads: int
    batch_seconds: float
    compute_workers: int = 1
    trials: list[Trial] = field(default_factory=list)
    audio_seconds: float = 0.0
    created: str = ""
    version: int = PROFILE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, raw: Any) -> Profile:
        """A profile from its JSON object; ``ValueError`` saying what is wrong with a bad one."""
        if not isinstance(raw, dict):
            raise ValueError(f"a profile is a JSON object, not {type(raw).__name__}")
        raw = dict(raw)
        trials_raw = raw.pop("trials", [])
        if not isinstance(trials_raw, list) or not all(isinstance(t, dict) for t in trials_raw):
            raise ValueError("'trials' is not a list of objects")
        trials = [Trial(**_known_fields(Trial, t, "a trial")) for t in trials_raw]
        settings = _known_fields(cls, raw, "it")
        unknown = sorted(set(raw) - set(settings) - {"trials"})
        if unknown:  # a setting this version cannot apply: the entry's others may depend on it
            raise ValueError(
                f"it has fields this rvcfast does not know ({', '.join(map(repr, unknown))}; written by a later rvcfast?)"
            )
        profile = cls(trials=trials, **settings)
        profile.check()
        return profile

    def check(self) -> None:
        """``ValueError`` unless every setting is one a run can use."""

        def whole(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_THREADS

        def positive(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

        problems = [
            f"{name} {value!r}"
            for name, value, ok in (
                ("machine", self.machine, isinstance(self.machine, str)),
                ("dtype", self.dtype, isinstance(self.dtype, str) and self.dtype in DTYPE_NAMES),
                ("threads", self.threads, whole(self.threads)),
                ("batch_seconds", self.batch_seconds, positive(self.batch_seconds)),
                ("compute_workers", self.compute_workers, whole(self.compute_workers)),
                ("version", self.version, isinstance(self.version, int)),
            )
            if not ok
        ]
        if problems:
            raise ValueError("bad " + ", ".join(problems))


def _known_fields(cls: type, raw: dict[str, Any], what: str) -> dict[str, Any]:
    """The fields of ``raw`` that ``cls`` (:class:`Profile`, :class:`Trial`) has; ``ValueError`` naming
    a required one that is missing. Others are left out: a trial is a record of a measurement, and a
    later rvcfast may record more about one (:meth:`Profile.from_dict` refuses unknown settings)."""
    known = {f.name: f for f in fields(cls)}
    missing = [
        name for name, f in known.items()
        if name not in raw and f.default is MISSING and f.default_factory is MISSING and name != "trials"
    ]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(repr(m) for m in missing)}")
    return {k: v for k, v in raw.items() if k in known}


#: What to do about a profile file that cannot be read as one.
_REWRITE = "delete it (or fix it) and run `rvcfast tune` again"


def _read_entries(source: Path) -> list[Any]:
    """The entries of a profile file: ``{"profiles": [...]}``, or (as first written) one
    profile object. ``ValueError`` (saying what is wrong) or ``OSError`` for a file that is neither."""
    text = source.read_text(encoding="utf-8-sig")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None
    except RecursionError:  # "[[[[..." nested deeper than Python's stack: damaged, not a profile
        raise ValueError("it is not a profile file (JSON nested too deeply)") from None
    if isinstance(raw, dict) and "profiles" in raw:
        if not isinstance(raw["profiles"], list):
            raise ValueError("'profiles' is not a list")
        return raw["profiles"]
    return [raw]


def _machine_of(entry: Any) -> str | None:
    """The machine an entry is for, or ``None`` for an entry that is not a profile at all."""
    machine = entry.get("machine") if isinstance(entry, dict) else None
    return machine if isinstance(machine, str) else None


def is_profile_file(path: Path) -> bool:
    """True when ``path`` is a readable profile file: ``{"profiles": [...]}`` or, as first
    written, one profile object (with a ``machine``)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return False
    if isinstance(raw, dict) and "profiles" in raw:
        return isinstance(raw["profiles"], list)
    return _machine_of(raw) is not None


def check_profile_target(path: Path, *, replace_invalid: bool = False) -> None:
    """``ValueError`` saying why a profile cannot be saved at ``path``, checked before a calibration
    that takes minutes: ``path`` is a folder, a folder above it is a file (or cannot be written),
    or it is an existing file that is not a profile file (unless ``replace_invalid``: the
    profile file rvcfast owns may be replaced when it is broken)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the profile")
    parent = path.parent
    if path.exists() or path.is_symlink():
        if not replace_invalid and not is_profile_file(path):
            raise ValueError(
                f"{path} exists and is not an rvcfast profile file (JSON with \"profiles\"); "
                "it is left as it is: choose another file, or delete it first"
            )
        if not os.access(parent, os.W_OK | os.X_OK):  # the file is replaced by a new one beside it
            raise ValueError(f"cannot write the profile {path}: its folder {parent} is not writable")
        if path.is_file() and _read_only(path):  # replacing it needs only its folder: a pinned profile stays
            raise ValueError(
                f"{path} is read-only, so it is left as it is: make it writable (chmod u+w) to replace its "
                "entry for this machine, or choose another file"
            )
        return
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot write the profile {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the profile {path}: {parent} is not writable")


def _read_only(path: Path) -> bool:
    """Whether ``path`` may not be written: no write permission for this user, or (as seen by root,
    who may write anything) no write bit at all, as ``chmod a-w`` leaves it."""
    try:
        return not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222
    except OSError:
        return False


def save_profile(profile: Profile, path: Path | None = None) -> Path:
    """Store ``profile`` in ``path`` or :func:`profile_path` (atomically), in place of the
    entry for the same machine and device. Other machines' entries are kept as they are (even
    ones this version cannot read), the oldest dropped beyond :data:`MAX_PROFILES`; a file
    that is not a profile file is replaced (:func:`check_profile_target` finds such a file
    first, as ``rvcfast tune --output`` does)."""
    target = path or profile_path()
    if target is None:
        raise ValueError(profiles_off())
    profile.check()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):  # two `rvcfast tune` (a CPU's and a GPU's) must not drop each other's entry
        try:
            entries = _read_entries(target) if target.is_file() else []
        except (OSError, ValueError):
            entries = []
        others = [e for e in entries if _machine_of(e) not in (None, profile.machine)]
        kept = sorted(others, key=lambda e: str(e.get("created", "")))[-(MAX_PROFILES - 1) :]
        text = json.dumps({"profiles": [*kept, asdict(profile)]}, indent=2)
        with atomic_write(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return target


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target``'s lock file (``.NAME.lock`` beside it) while its entries
    are read, changed and written back (POSIX ``flock``; without it, no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: last writer wins
        yield
        return
    fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lookup(device: torch.device | str, source: Path) -> tuple[Profile | None, str | None]:
    """This machine's profile in ``source`` and, when it has none that can be used, why not
    (``None``: simply no entry for this machine and device)."""
    try:
        entries = _read_entries(source)
    except UnicodeDecodeError:
        return None, f"it is not UTF-8 text: {_REWRITE}"
    except ValueError as exc:
        return None, f"{exc}: {_REWRITE}"
    except OSError as exc:
        return None, f"it cannot be read ({exc.strerror or exc})"
    here = machine_id(device)
    mine = [e for e in entries if _machine_of(e) == here]
    if not mine:
        if any(_machine_of(e) is None for e in entries):
            return None, f"an entry is not a profile (no 'machine'): {_REWRITE}"
        return None, _measured_elsewhere(entries, here)
    version = mine[-1].get("version", PROFILE_VERSION)
    if version != PROFILE_VERSION:  # before its fields are read: another version's may differ
        return None, (
            f"its entry for this machine is in another profile format (version {version!r}; this rvcfast "
            f"reads version {PROFILE_VERSION}): run `rvcfast tune` again"
        )
    try:
        return Profile.from_dict(mine[-1]), None
    except ValueError as exc:
        return None, f"its entry for this machine: {exc}: run `rvcfast tune` again"


#: A machine key (:func:`machine_id`): hardware, ``[features]``, usable cores, torch version, device type.
_MACHINE_KEY = re.compile(r"(?P<hw>.*) \[(?P<flags>[^\]]*)\] x(?P<cores>\d+) \| torch (?P<torch>\S+) \| (?P<device>\S+)")


def _measured_elsewhere(entries: list[Any], here: str) -> str | None:
    """Why the file's entry for this CPU (and GPU) and device, measured with another torch version,
    other CPU features or another number of usable cores (an upgrade of torch or rvcfast, a container's
    ``--cpus``), does not apply; ``None`` when no entry is for this hardware (another machine's)."""
    mine = _MACHINE_KEY.fullmatch(here)
    if mine is None:
        return None
    for entry in reversed(entries):  # the newest first
        other = _MACHINE_KEY.fullmatch(_machine_of(entry) or "")
        if other is None or (other["hw"], other["device"]) != (mine["hw"], mine["device"]):
            continue
        differs = []
        if other["torch"] != mine["torch"]:
            differs.append(f"torch {other['torch']} (this is torch {mine['torch']})")
        if other["flags"] != mine["flags"]:
            differs.append(f"CPU features [{other['flags']}] (here [{mine['flags']}])")
        if other["cores"] != mine["cores"]:
            differs.append(f"{other['cores']} usable cores (here {mine['cores']})")
        if not differs:  # the same key written another way: not this one's to judge
            continue
        what = "GPU and CPU" if mine["device"] == "cuda" else "CPU"
        return f"its entry for this {what} was measured with {', '.join(differs)}: run `rvcfast tune` again"
    return None


#: ``profile`` not given: read this machine's profile file (see :func:`tuned_settings`).
_READ = object()

#: Why a profile path that is a folder is ignored.
_FOLDER = "it is a folder, not a profile file"


def _ignore(source: object, reason: object) -> None:
    # one place in the code, so Python's default filter shows each such warning once per process
    warnings.warn(f"ignoring the rvcfast profile {source}: {reason}", RuntimeWarning, stacklevel=1)


def load_profile(device: torch.device | str = "cpu", path: Path | None = None) -> Profile | None:
    """The stored profile measured on this machine and device, else ``None``.

    A file that cannot be read as profiles, or whose entry for this machine holds a setting
    no run can use or was written in another profile format, is ignored with a warning
    (never fatal: every model load reads it); other machines' entries are not looked at."""
    try:
        source = path or profile_path()
    except ParameterError as exc:  # RVCFAST_PROFILE / RVCFAST_HOME cannot be expanded: never fatal here
        _ignore("file", exc)
        return None
    if source is None or not source.is_file():
        if source is not None and source.is_dir():  # e.g. RVCFAST_PROFILE naming a folder: not silently
            _ignore(source, _FOLDER)
        return None
    profile, problem = _lookup(device, source)
    if problem is not None:
        _ignore(source, problem)
    return profile


def tuned_settings(
    dtype: torch.dtype | str,
    batch_seconds: float | None,
    device: torch.device,
    model: Any = None,
    profile: Profile | None | object = _READ,
) -> tuple[torch.dtype, float | None]:
    """The precision and batch size an engine uses: the profile fills ``"auto"`` and a missing
    batch size. An ONNX voice ``model`` (``.onnx``) runs in float32 only, so for it ``"auto"``
    is float32. ``profile`` is this machine's profile when the caller has read it already
    (``None``: there is none), so a bad profile file is read, and warned about, once."""
    from .models.onnx_vocoder import is_onnx_path

    if profile is _READ and (batch_seconds is None or _is_auto(dtype)):
        profile = load_profile(device)
    if batch_seconds is None:
        batch_seconds = profile.batch_seconds if isinstance(profile, Profile) else None
    if _is_auto(dtype) and is_onnx_path(model):
        return torch.float32, batch_seconds
    return tuned_dtype(dtype, device, profile), batch_seconds


def _is_auto(dtype: torch.dtype | str) -> bool:
    return isinstance(dtype, str) and dtype.strip().lower() == "auto"


def tuned_dtype(dtype: torch.dtype | str, device: torch.device, profile: Profile | None | object = _READ) -> torch.dtype:
    """``dtype`` checked for ``device``, with ``"auto"`` meaning this machine's profile's
    precision (without a profile, or with one whose precision ``device`` cannot run:
    :func:`rvcfast.runtime.resolve_dtype`'s choice). ``profile``: as for :func:`tuned_settings`."""
    from .runtime import resolve_dtype

    if _is_auto(dtype):
        if profile is _READ:
            profile = load_profile(device)
        if isinstance(profile, Profile):
            try:
                return resolve_dtype(profile.dtype, device)
            except ParameterError as exc:  # a hand-edited file: "auto" must not fail
                _ignore(profile_path(), f"its dtype {profile.dtype!r}: {exc}")
        dtype = "auto"
    return resolve_dtype(dtype, device)


def planned_threads(profile: Profile | None) -> tuple[int, str]:
    """The intra-op thread count :func:`apply_threads` sets for ``profile``, and where it comes from:
    the environment (``MKL_NUM_THREADS`` or ``OMP_NUM_THREADS``: torch's own count, which they set),
    else the profile's, else torch's count capped at the usable cores. Changes nothing."""
    env = env_thread_setting()
    current = torch.get_num_threads()
    if env is not None:
        return current, f"{env[0]}={env[1]}" + (f" (torch runs {current})" if current != env[1] else "")
    if profile is not None and profile.threads > 0:
        return profile.threads, "profile"
    cores = available_cores()
    if current > cores:  # e.g. `docker --cpus=2` on a 64-core host
        return cores, f"the usable cores (a CPU quota caps torch's {current})"
    return current, "torch's default (the CPU affinity's cores)"


def apply_threads(profile: Profile | None) -> int:
    """Set torch's intra-op threads from ``profile`` unless the user chose a count in the
    environment (``MKL_NUM_THREADS`` or ``OMP_NUM_THREADS``, as torch reads them); without a
    profile, cap torch's own count (the CPU affinity's cores) at the usable cores, which a
    cgroup CPU quota lowers (:func:`planned_threads`). A thread variable set to something torch
    ignores (``OMP_NUM_THREADS=abc``) is warned about, naming it. Returns the count."""
    bad = bad_thread_variables()
    if bad:
        warnings.warn(
            f"ignoring {', '.join(bad)}: not a thread count (a whole number of 1 or more); torch ignores it too",
            RuntimeWarning, stacklevel=2,
        )
    count, source = planned_threads(profile)
    if source == "profile" or count != torch.get_num_threads():
        torch.set_num_threads(count)
    return torch.get_num_threads()


# ---------------------------------------------------------------------------------------- calibration


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """SNR of ``other`` against ``reference``; ``-inf`` for an output that is not usable
    (empty, a different length by more than 1 %, or not finite)."""
    if other.shape[0] == 0 or abs(other.shape[0] - reference.shape[0]) > 0.01 * reference.shape[0]:
        return float("-inf")
    n = min(reference.shape[0], other.shape[0])
    err = float(np.sum((reference[:n].astype(np.float64) - other[:n]) ** 2))
    sig = float(np.sum(reference[:n].astype(np.float64) ** 2))
    if not math.isfinite(err):
        return float("-inf")
    return float("inf") if err == 0 else 10 * np.log10(max(sig, 1e-30) / err)


def _failure(results: Sequence[Any]) -> str | None:
    """Why a trial's conversions cannot count (a failed file, an empty or non-finite output), or ``None``."""
    for r in results:
        if getattr(r, "error", None):
            return str(r.error)
        audio = np.asarray(r.audio)
        if audio.size == 0:
            return "an empty output"
        if not np.isfinite(audio).all():
            return "non-finite samples in the output"
    return None


#: Several compute workers hold several groups' activations at once (~200-290 MiB more peak
#: memory per extra worker with the full-size models): chosen only when this much faster.
MULTI_WORKER_MARGIN = 1.03


def _cost(trial: Trial) -> float:
    """What calibration minimises: seconds, a multi-worker setting's raised by :data:`MULTI_WORKER_MARGIN`."""
    return trial.seconds * (MULTI_WORKER_MARGIN if trial.compute_workers > 1 else 1.0)


def _workers_rounds(padded_lengths: Sequence[int], batch_samples: int, n_workers: int, max_rounds: int = 8) -> int:
    """How many times to send the clips so that every worker gets as many groups as the others.

    The batch groups the clips by their padded lengths (``batch_samples`` of 16 kHz audio per
    group; a group may take clips of the next round). Wanted: the fewest rounds that make a
    multiple of ``n_workers`` groups, the last one full like the others; else the fewest that
    make a multiple of ``n_workers``; else ``n_workers`` rounds.
    """
    if n_workers <= 1:
        return 1
    fallback = None
    for rounds in range(1, max_rounds + 1):
        groups = split_groups(list(padded_lengths) * rounds, batch_samples)
        if len(groups) % n_workers == 0:
            if group_is_full(len(groups[-1]), sum(groups[-1]), batch_samples):
                return rounds
            fallback = fallback or rounds
    return fallback or n_workers


def candidate_dtypes(device: torch.device) -> list[str]:
    """Precisions worth measuring on ``device``."""
    out = ["float32"]
    if native_bf16(device):
        out.append("bfloat16")
    if native_fp16(device):  # CUDA, or a CPU with AVX512-FP16 / AMX-FP16: worth one measurement
        out.append("float16")
    return out


def calibrate(
    make_converter: Callable[[str], Any],
    clips: Sequence[np.ndarray],
    *,
    device: torch.device,
    dtypes: Sequence[str] | None = None,
    threads: Sequence[int] | None = None,
    batch_seconds: Sequence[float] | None = None,
    compute_workers: Sequence[int] | None = None,
    min_snr_db: float = 20.0,
    log: Callable[[str], None] | None = None,
) -> Profile:
    """Measure the settings on ``clips`` (16 kHz arrays) and return the fastest as a :class:`Profile`.

    ``make_converter(dtype)`` returns a Converter in that precision. Each setting converts
    every clip once to warm up, then once timed (noise off). float32 is always measured,
    first: its output is the reference. A lower precision is chosen only when its output's
    SNR against float32's is at least ``min_snr_db``; a setting whose conversions fail (a
    file's error, an empty or non-finite output) is recorded with its error and never
    chosen, and calibration fails when no float32 setting works. A lower precision the voice
    does not run in (``make_converter`` raises :class:`~rvcfast.errors.ParameterError`: an ONNX
    voice is float32 only) is recorded as not measured, and the float32 trials stand. ``batch_seconds``
    defaults to 8 and 30 s on a CPU and the device's default batch (120 s) on a GPU: the
    short calibration clips cannot tell larger batches apart. ``compute_workers``
    (default: 1, and 2 on a CPU with two or more threads) are tried with the largest
    thread count, shared among the workers, and the smallest batch size; the clips are
    sent as many times as it takes to give every worker the same number of groups (the
    time is scaled back to one pass), and a multi-worker setting must be at least 3 % faster.
    """
    dtypes = ["float32", *[d for d in dict.fromkeys(dtypes or candidate_dtypes(device)) if d != "float32"]]
    threads = list(threads or sorted({1, available_cores()}))
    if batch_seconds is None:
        batch_seconds = (8.0, 30.0) if torch.device(device).type == "cpu" else (default_batch_seconds(device),)
    if compute_workers is None:
        several = torch.device(device).type == "cpu" and max(threads) >= 2
        compute_workers = [1, 2] if several else [1]
    workers = sorted({int(w) for w in compute_workers})
    if not workers or workers[0] < 1:
        raise ValueError(f"compute_workers must be positive, got {list(compute_workers)}")
    say = log or (lambda _m: None)
    inputs = [(c, SR_16K) for c in clips]
    padded = [len(c) + 2 * SegmentConfig().t_pad for c in clips]  # as the batch sees them
    original_threads = torch.get_num_threads()
    trials: list[Trial] = []
    reference: list[np.ndarray] | None = None
    try:
        settings = [(n, bs, 1) for n in threads for bs in batch_seconds]
        settings += [(max(threads), min(batch_seconds), w) for w in workers if w > 1]
        for dt in dtypes:
            try:
                conv = make_converter(dt)
            except ParameterError as exc:
                if dt == "float32":
                    raise
                # a voice that runs in float32 only (an ONNX voice): the float32 trials stand
                trials += [Trial(dt, n, float(bs), 0.0, None, w, f"not measured: {exc}") for n, bs, w in settings]
                say(f"{dt:>9}: not measured ({exc})")
                continue
            for n_threads, bs, n_workers in settings:
                torch.set_num_threads(n_threads)
                run = dict(batch_seconds=bs, compute_workers=n_workers, noise=False)
                # the clips again, in whole rounds, until every worker gets the same number of
                # groups: a last group left to one worker on its share of the threads (the other
                # cores idle) is not what a long batch sees; the time is scaled back to one pass
                rounds = _workers_rounds(padded, int(bs * SR_16K), n_workers)
                conv.convert_batch(inputs, **run)  # warm-up: kernels, caches
                t0 = time.perf_counter()
                results = conv.convert_batch(inputs * rounds, **run)
                seconds = (time.perf_counter() - t0) / rounds
                failed = _failure(results)
                outs = [np.asarray(r.audio) for r in results[: len(inputs)]]
                if dt == "float32" and reference is None and failed is None:
                    reference = outs
                snr = None
                if dt != "float32" and failed is None and reference is not None:
                    snr = min(_snr_db(ref, out) for ref, out in zip(reference, outs))
                trials.append(Trial(dt, n_threads, float(bs), seconds, snr, n_workers, failed))
                say(
                    f"{dt:>9} threads {n_threads} batch {bs:g} s workers {n_workers}: "
                    + (f"failed ({failed})" if failed else f"{seconds:.2f} s")
                    + (f", SNR {snr:.1f} dB" if snr is not None else "")
                )
            if reference is None:
                errors = "; ".join(sorted({t.error for t in trials if t.error}))
                raise RvcfastError(f"calibration failed: no float32 setting converted the clips ({errors})")
    finally:
        torch.set_num_threads(original_threads)
    usable = [t for t in trials if t.error is None and (t.dtype == "float32" or (t.snr_db or 0.0) >= min_snr_db)]
    best = min(usable, key=_cost)
    return Profile(
        machine=machine_id(device),
        dtype=best.dtype,
        threads=best.threads,
        batch_seconds=best.batch_seconds,
        compute_workers=best.compute_workers,
        trials=trials,
        audio_seconds=float(sum(c.shape[0] for c in clips) / 16000),
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


def _profile_status(dev: torch.device, profile: Profile | None, path: Path | None, chosen_by: str) -> str:
    """Why the settings come from the profile or the defaults (``settings.source`` of :func:`system_report`)."""
    if profile is not None:
        return "profile"
    if path is None:
        return f"defaults (profiles are off: {chosen_by})"
    problem = _FOLDER if path.is_dir() else _lookup(dev, path)[1] if path.is_file() else None
    if problem is not None:
        return f"defaults ({path} is ignored: {problem})"
    if path.is_file():
        return f"defaults ({path} holds no profile for this machine and device: run `rvcfast tune`)"
    return "defaults (run `rvcfast tune` to measure)"


def _auto_dtype_source(dev: torch.device, profile: Profile | None) -> str:
    """Where ``dtype="auto"``'s precision comes from: the profile, else the hardware."""
    from .runtime import resolve_dtype

    if profile is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                resolve_dtype(profile.dtype, dev)
                return "profile"
            except ParameterError:
                pass
    return "hardware (native bfloat16)" if native_bf16(dev) else "hardware (no native bfloat16)"


def system_report(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model and features, torch build facts and the settings runs will use (for ``rvcfast info --system``).

    ``settings`` holds what a front end that owns its process (``rvcfast convert``, ``bench``,
    ``serve`` without ``--threads``) uses when no argument says otherwise, ``settings.sources``
    where each value comes from (``profile``, an environment variable, a default) and
    ``settings.source`` why the profile applies or not. ``profile_file`` is the file looked at
    (``None``: profiles are off) and ``profile_file_from`` what chose it (``RVCFAST_PROFILE``,
    ``RVCFAST_HOME`` or the user cache)."""
    from .runtime import resolve_device

    dev = resolve_device(device)
    profile = load_profile(dev)
    flags = cpu_features()
    try:
        path, chosen_by = profile_location()
        status = _profile_status(dev, profile, path, chosen_by)
    except ParameterError as exc:  # RVCFAST_PROFILE or RVCFAST_HOME cannot be expanded
        path, chosen_by, status = None, str(exc), f"defaults ({exc})"
    threads, threads_from = planned_threads(profile)
    default = f"default ({dev.type})"
    return {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "machine": machine_id(dev),
        "features": {f: (f in flags) for f in key_flags()},
        "native_bf16": native_bf16(dev),
        "native_fp16": native_fp16(dev),
        "torch": torch.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "cuda": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "profile": str(path) if profile is not None else None,
        "profile_file": str(path) if path is not None else None,
        "profile_file_from": chosen_by,
        "settings": {
            "auto_dtype": str(tuned_dtype("auto", dev, profile)).replace("torch.", ""),  # what dtype="auto" runs in
            "threads": threads,
            "batch_seconds": profile.batch_seconds if profile else default_batch_seconds(dev),
            "compute_workers": profile.compute_workers if profile else 1,
            "source": status,
            "sources": {
                "auto_dtype": _auto_dtype_source(dev, profile),
                "threads": threads_from,
                "batch_seconds": "profile" if profile else default,
                "compute_workers": "profile" if profile else "default",
            },
        },
    }
