"""Convert whole corpora on a Ray cluster with Ray Data (``pip install "rvcfast[ray]"``).

* :func:`convert_dataset` -- a lazy :class:`ray.data.Dataset` with one row per input file
  (``path``, ``output_path``, ``status``, ``error``, ``seconds``, ``node``, stage timings);
* :func:`convert_files` -- the eager form for paths and folders: runs the job, writes a
  manifest of the rows (JSON Lines or Parquet) and returns the rows;
* both take several voices (``voices={name: model or (model, index)}``): every input is
  decoded and analysed once for all of them, one row per (input, voice) with a ``voice``
  column (:data:`VOICE_ROW_SCHEMA`);
* on the command line: ``rvcfast convert MODEL INPUTS -o OUT --ray [ADDRESS]``.

Decoding runs in CPU tasks, the models in a pool of actors that load them once, and every
output is written atomically under a name fixed before the job starts, so retried tasks
and restarted actors never leave a partial file or a duplicate. See ``docs/scale-out.md``.
"""

from __future__ import annotations

from ...errors import BackendUnavailableError


def _versions() -> str:
    """The installed releases of Ray and pyarrow, as an error names them (read without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("ray", "pyarrow"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"no {name}")
    return ", ".join(found)


try:
    import ray  # noqa: F401
    import ray.data  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendUnavailableError(
        f'rvcfast.integrations.ray needs Ray Data: pip install "rvcfast[ray]" (import failed: {exc})'
    ) from exc
except AttributeError as exc:  # a Ray Data older than its pyarrow: Ray < 2.22 calls pyarrow.PyExtensionType, gone in 21
    raise BackendUnavailableError(
        f"Ray Data does not import next to the installed pyarrow ({_versions()}: {exc}); rvcfast's Ray runner needs "
        'Ray 2.22 or newer (pip install "rvcfast[ray]"), or pyarrow < 21 next to an older Ray'
    ) from exc

from ._job import (  # noqa: E402
    CPU_WORKER_MEMORY,
    DECODE_CPUS,
    DEFAULT_BATCH_SIZE,
    MANIFEST_NAME,
    check_manifest,
    connected,
    convert_dataset,
    convert_files,
    write_manifest,
)
from ._schema import ROW_SCHEMA, STAGES, VOICE_ROW_SCHEMA  # noqa: E402
from ._weights import WEIGHT_MODES  # noqa: E402

__all__ = [
    "convert_dataset",
    "convert_files",
    "connected",
    "write_manifest",
    "check_manifest",
    "ROW_SCHEMA",
    "VOICE_ROW_SCHEMA",
    "STAGES",
    "WEIGHT_MODES",
    "CPU_WORKER_MEMORY",
    "DECODE_CPUS",
    "DEFAULT_BATCH_SIZE",
    "MANIFEST_NAME",
]
