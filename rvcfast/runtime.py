"""Where and how the networks run: device, precision, batch size, memory hygiene.

* :func:`resolve_device` — ``"auto"`` picks CUDA when available, else the CPU.
* :func:`resolve_dtype` — ``"float32"``, ``"bfloat16"``, ``"float16"`` (CUDA, or a CPU with
  AVX512-FP16 / AMX-FP16) or ``"auto"``: bfloat16 where the hardware computes it natively
  (CPUs with AMX or AVX512-BF16, CUDA GPUs of compute capability 8.0 and later), else float32.
* :func:`default_batch_seconds` — audio batched per model call.
* :func:`release_memory` — give freed heap back to the OS between large batches.
"""

from __future__ import annotations

import ctypes
import functools
import math
import numbers
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import ParameterError, user_stacklevel

__all__ = [
    "resolve_device",
    "resolve_dtype",
    "cpu_features",
    "native_bf16",
    "native_fp16",
    "default_batch_seconds",
    "release_memory",
    "openmp_threads",
    "set_thread_count",
    "available_cores",
    "cgroup_cpu_limit",
    "env_thread_count",
    "env_thread_setting",
    "bad_thread_variables",
    "THREAD_VARIABLES",
    "cpuinfo_field",
    "DTYPE_NAMES",
]

#: Accepted spellings of each compute precision.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


#: Device types rvcfast runs on (``cuda`` is also AMD's ROCm build of torch).
DEVICE_TYPES = ("cpu", "cuda")

#: Why a device type torch knows is refused (others: not a device rvcfast runs on).
_REFUSED = {
    "mps": "rvcfast does not run on Apple's MPS yet: its pitch source, index search and CREPE decoding "
    "compute in float64, which MPS lacks; use device='cpu' (Apple silicon runs the CPU path natively)",
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else CPU; anything else as given, checked:
    a device type rvcfast does not run on (``mps``, ``meta``, ``xpu``...) or CUDA where this
    machine has none is a :class:`~rvcfast.errors.ParameterError`, before any model is loaded."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"device {device!r} is not a device name ('auto', 'cpu', 'cuda', 'cuda:1'...): {exc}") from None
    if dev.type not in DEVICE_TYPES:
        why = _REFUSED.get(dev.type, f"rvcfast runs on 'cpu' and 'cuda' (NVIDIA, or AMD with a ROCm build of torch), not {dev.type!r}")
        raise ParameterError(f"device {device!r}: {why}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} requested but CUDA is not available")
    return dev


#: Where Linux describes the CPU (one block per logical CPU; x86 and ARM spell it differently).
CPUINFO_PATH = "/proc/cpuinfo"


def cpuinfo_field(*keys: str) -> str | None:
    """The first ``/proc/cpuinfo`` value named by one of ``keys`` (in the order given), or ``None``.

    x86 kernels write ``model name`` and ``flags``; ARM kernels ``Features``, ``CPU implementer``
    and ``CPU part`` (and on some boards ``Hardware`` or ``model name``)."""
    found: dict[str, str] = {}
    try:
        with open(CPUINFO_PATH, encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                name = name.strip()
                if sep and name in keys and name not in found:
                    found[name] = value.strip()
    except OSError:
        return None
    return next((found[k] for k in keys if k in found), None)


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``'s ``flags`` on x86, ``Features`` on ARM; empty where unknown)."""
    value = cpuinfo_field("flags", "Features")
    return frozenset(value.split()) if value else frozenset()


#: rvcfast's changes of a thread's intra-op count, one at a time (each puts torch's shared count back).
_THREAD_COUNT_LOCK = threading.Lock()


def _in_new_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` called in a short-lived thread of its own; its value."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()), name="rvcfast-thread-count")
    thread.start()
    thread.join()
    return box[0] if box else None


def set_thread_count(n: int) -> None:
    """``torch.set_num_threads(n)`` for the calling thread only, made to last.

    A thread's count is set up, once, at its first parallel operation (or first
    ``torch.get_num_threads()``) from torch's shared count, overwriting what the thread set
    before then; another thread may change the shared count meanwhile. Asking for the count
    first does that setup now. ``torch.set_num_threads`` also sets that shared count; where
    torch's threads are OpenMP's it is put back (from a short-lived thread), so that a thread
    the application starts meanwhile (a pool's, ``asyncio.to_thread``'s) does not keep ``n``
    for good."""
    if not openmp_threads():  # one shared pool: its size is all there is
        torch.set_num_threads(n)
        return
    with _THREAD_COUNT_LOCK:
        try:
            shared = _in_new_thread(torch.get_num_threads)
        except RuntimeError:  # "can't start new thread": the shared count changes with this one's
            shared = None
        torch.get_num_threads()
        torch.set_num_threads(n)
        if shared is not None and shared != n:
            try:
                _in_new_thread(lambda: torch.set_num_threads(shared))
            except RuntimeError:
                pass


#: Where the cgroup file systems are mounted (Linux).
CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_quota(folder: Path, version: int) -> float | None:
    """The CPUs a cgroup folder's quota allows (quota / period), ``None`` without one."""
    try:
        if version == 2:
            quota, _, period = (folder / "cpu.max").read_text().partition(" ")
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text()
            period = (folder / "cpu.cfs_period_us").read_text()
        q, p = int(quota), int(period)
    except (OSError, ValueError):  # no such file, or "max" (no quota)
        return None
    return q / p if q > 0 and p > 0 else None


def _cgroup_folders(mount: Path, inside: str) -> list[Path]:
    """The process's cgroup folder under ``mount`` and the folders above it (a limit set on any
    of them applies); the mount itself where the folder is not visible (a container's own)."""
    here = mount / inside.strip("/")
    if not here.is_dir():
        return [mount]
    return [here, *[p for p in here.parents if p.is_relative_to(mount)]]


def cgroup_cpu_limit() -> float | None:
    """The CPUs this process's cgroup quota allows (``docker --cpus``, Kubernetes CPU limits,
    systemd ``CPUQuota``), the tightest along the hierarchy; ``None`` without a quota or off Linux."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    root = Path(CGROUP_ROOT)
    limits: list[float] = []
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        _, controllers, inside = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            mounts, version = [root], 2
        elif "cpu" in controllers.split(","):
            mounts, version = [root / controllers, root / "cpu", root / "cpu,cpuacct"], 1
        else:
            continue
        for mount in dict.fromkeys(m for m in mounts if m.is_dir()):
            limits += [q for f in _cgroup_folders(mount, inside) if (q := _cgroup_quota(f, version)) is not None]
    return min(limits) if limits else None


def available_cores() -> int:
    """CPUs this process may use: its CPU affinity (as a container's ``--cpuset-cpus`` or
    ``taskset`` sets it, else ``os.cpu_count()``), capped by its cgroup CPU quota rounded up
    (``docker --cpus=1.5``: 2), which the affinity does not show."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = max(1, os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return cores if limit is None else max(1, min(cores, math.ceil(limit - 1e-9)))


#: The environment variables torch takes its intra-op thread count from, the one it prefers first
#: (with both set, torch runs ``MKL_NUM_THREADS`` threads).
THREAD_VARIABLES = ("MKL_NUM_THREADS", "OMP_NUM_THREADS")

#: A value each variable counts as a thread count (a number of 1 or more; OpenMP also takes a nested
#: list, ``4,2``, whose first level is the count). Anything else torch and OpenMP ignore.
_THREAD_VALUE = {
    "MKL_NUM_THREADS": re.compile(r"\s*\+?(\d+)\s*"),
    "OMP_NUM_THREADS": re.compile(r"\s*\+?(\d+)\s*(?:,\s*\+?\d+\s*)*"),
}


def env_thread_setting() -> tuple[str, int] | None:
    """The variable and intra-op thread count the user set for torch in the environment:
    ``MKL_NUM_THREADS``, else ``OMP_NUM_THREADS`` (torch's order), each read as torch reads it
    (a whole number >= 1; an empty or malformed value, ``0``, ``abc``, ``2abc``, is ignored by
    torch, and here). ``None`` when neither holds a count. Read at each call."""
    for name in THREAD_VARIABLES:
        match = _THREAD_VALUE[name].fullmatch(os.environ.get(name, ""))
        if match and int(match.group(1)) >= 1:
            return name, int(match.group(1))
    return None


def env_thread_count() -> int | None:
    """The count of :func:`env_thread_setting`, ``None`` without one."""
    found = env_thread_setting()
    return found[1] if found is not None else None


def bad_thread_variables() -> list[str]:
    """``NAME='value'`` for each of :data:`THREAD_VARIABLES` that is set, not empty, and not a thread
    count torch takes (``0``, ``abc``, ``2.5``): torch ignores it, so the user's choice is not applied."""
    bad = []
    for name in THREAD_VARIABLES:
        value = os.environ.get(name, "")
        match = _THREAD_VALUE[name].fullmatch(value)
        if value.strip() and not (match and int(match.group(1)) >= 1):
            bad.append(f"{name}={value!r}")
    return bad


@functools.lru_cache(maxsize=1)
def openmp_threads() -> bool:
    """Whether torch's intra-op threads are OpenMP's: then ``torch.set_num_threads`` in a thread
    sets that thread's own count (OpenMP and MKL keep it per thread), not a shared pool's size."""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def _one_thread_in_forked_child() -> None:
    torch.set_num_threads(1)


# A child forked from a process whose torch has run a parallel operation hangs at its own first
# one (GNU OpenMP's thread pool does not survive fork); one intra-op thread in the child does not
# touch that pool. torch's DataLoader does the same in its workers. A fork-started pool's workers
# therefore run on one thread each (as they should: the pool is the parallelism).
if hasattr(os, "register_at_fork") and openmp_threads():
    os.register_at_fork(after_in_child=_one_thread_in_forked_child)


def native_bf16(device: torch.device) -> bool:
    """True where bfloat16 matrix work runs natively (faster than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        flags = cpu_features()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def native_fp16(device: torch.device) -> bool:
    """True where float16 is a supported compute precision: CUDA, or a CPU with AVX512-FP16 or
    AMX-FP16 (Intel Sapphire Rapids and later), whose oneDNN kernels compute it natively.
    Elsewhere a CPU runs float16 through conversions, slower than float32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        flags = cpu_features()
        return "avx512_fp16" in flags or "amx_fp16" in flags
    return False


def built_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """The precision of an engine made from modules already built (``Engine(...)``,
    ``Converter(...)``): a ``torch.dtype`` or its name (a name is checked for ``device`` as
    :func:`resolve_dtype` does). ``"auto"`` is refused: it chooses the precision models are
    loaded in, too late here."""
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        raise ParameterError(
            "dtype='auto' chooses the precision models are loaded in: use it with Converter.from_pretrained / "
            "Engine.load; an engine made from modules already built takes their torch.dtype (e.g. torch.float32)"
        )
    if isinstance(dtype, str):
        return resolve_dtype(dtype, device)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ParameterError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16 (or its name), got {dtype!r}")
    return dtype


def resolve_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    """Check a precision for ``device``; ``"auto"`` picks bfloat16 where :func:`native_bf16`, else float32.

    float16 on a CPU without native float16 is refused; bfloat16 on a CPU without native
    bfloat16 runs (torch converts) but warns (:class:`RuntimeWarning`): it is slower than float32.
    """
    if isinstance(dtype, str):
        key = dtype.lower()
        if key == "auto":
            return torch.bfloat16 if native_bf16(device) else torch.float32
        if key not in DTYPE_NAMES:
            raise ParameterError(f"dtype must be 'auto' or one of {sorted(DTYPE_NAMES)}, got {dtype!r}")
        dtype = DTYPE_NAMES[key]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ParameterError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if dtype == torch.float16 and device.type == "cpu" and not native_fp16(device):
        raise ParameterError(
            "float16 on a CPU needs AVX512-FP16 or AMX-FP16 (Intel Sapphire Rapids and later), which this "
            "CPU lacks; use 'auto' (bfloat16 where this CPU computes it natively, else float32)"
        )
    if dtype == torch.bfloat16 and device.type == "cpu" and not native_bf16(device):
        warnings.warn(
            "bfloat16 on this CPU runs without hardware support (no AVX512-BF16 or AMX): it is slower than "
            "float32 (on an AVX2-only AMD Zen 3: 7-13x per convolution, 12x for a whole conversion); dtype='auto' picks float32 here",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
    return dtype


def f0_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The precision an engine in ``dtype`` runs its F0 network in (unless told otherwise).

    On a CPU, always float32, as the reference does: a pitch tracker's answer is the
    argmax of a salience curve, and bfloat16's rounding (about 0.4 %) moves the argmax
    wherever two candidates are close. Measured on the full-size RMVPE (random weights,
    whose flat salience makes this worst-case), batch12 in bfloat16 moved 0.6-2.2 % of the
    voiced frames by up to five octaves, and the converted audio fell from 35-43 dB SNR
    against float32 (same F0) to 4-9 dB. The F0 stage is about a tenth of the work, so
    float32 there cost the bfloat16 batch12 run 8 % (27.9 -> 30.0 s). On CUDA the F0 network follows
    the engine, as RVC's half-precision GPU mode does.
    """
    return torch.float32 if device.type == "cpu" else dtype


def check_batch_seconds(value: Any, zero: bool = False) -> None:
    """``batch_seconds``: ``None`` or a positive number of seconds (``zero``: 0 allowed too, one
    input per model call); NaN, infinity, text and bools are a :class:`~rvcfast.errors.ParameterError`."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if value is not None and not (real and math.isfinite(value) and (value >= 0 if zero else value > 0)):
        bound = "0 or more seconds" if zero else "a positive number of seconds"
        raise ParameterError(f"batch_seconds must be {bound}, got {value!r}")


def default_batch_seconds(device: Any) -> float:
    """Audio batched per model call when ``batch_seconds`` is not given.

    On a CPU, batching segments makes the HiFi-GAN decoder's large activations spill
    out of the caches: measured on 2 cores, four 7 s segments took 28.8 s of synthesis
    batched against 19.1 s one at a time. So the CPU default (8 s) sends about one
    segment per call (files still overlap with decoding and writing); GPUs get 120 s.
    """
    return 8.0 if getattr(device, "type", str(device)) == "cpu" else 120.0


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Tensors of many sizes come and go during a long batch; glibc keeps freed blocks
    below its (adaptive) mmap threshold in the heap, so without this the resident size
    creeps up by hundreds of MB over an hour-long file.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
