"""Server settings (:class:`ServeConfig`) and the check that the ``serve`` extra is installed."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, ParameterError

__all__ = ["ServeConfig", "require_serve_extra", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "rvcfast[serve]"'


def require_serve_extra() -> None:
    """Raise :class:`~rvcfast.errors.BackendUnavailableError` unless FastAPI, uvicorn and python-multipart import."""
    missing = []
    # python-multipart's module is python_multipart since 0.0.13 (importing "multipart" warns)
    for modules, package in ((("fastapi",), "fastapi"), (("uvicorn",), "uvicorn"), (("python_multipart", "multipart"), "python-multipart")):
        if not any(_importable(m) for m in modules):
            missing.append(package)
    if missing:
        raise BackendUnavailableError(
            f"the HTTP server needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"{INSTALL_HINT}"
        )


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class ServeConfig:
    """Everything the server is started with (``rvcfast serve`` options, or keywords of ``create_app``).

    Attributes:
        voices: Voice model files (``.pth``) and/or folders of them. A voice is named by
            its file stem; a ``.index`` beside it with the same stem is its index.
        encoder: Content encoder (``hubert_base.pt`` or a ContentVec folder); default: the cache.
        f0: F0 backend name for every voice (``rmvpe``, ``fcpe``, ``harvest``...).
        f0_weights: Weights of the F0 backend (``rmvpe.pt``).
        f0_options: Extra keyword options of the F0 backend.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"``.
        allow_download: Fetch missing base weights into the cache.
        max_loaded_voices: Voices kept loaded (least recently used ones are unloaded).
        max_upload_mb: Largest request body accepted (413 above it).
        max_input_seconds: Longest input of ``POST /v1/convert`` (whole or streamed), read
            from the file's header before it is decoded (413 above it). A compressed
            upload can hold hours of audio in a few megabytes, and a whole-file answer
            keeps the input and the output in memory (about 0.5 MB per second of input).
        max_job_seconds: Longest input of ``POST /v1/jobs`` (413 above it); jobs keep
            their output on disk, so they may take longer inputs.
        max_queue: Requests (and unfinished jobs) held at once; more get 503 with ``Retry-After``.
        body_timeout_seconds: A request whose body sends no byte for this long while it is read
            is answered 408 and its connection closed: a client that stalls its upload cannot
            hold a ``max_queue`` slot for ever.
        api_key: Required as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` when set.
        models_dir: A folder the operator lets clients upload voice models into
            (``POST /v1/voices``); ``None`` disables uploads.
        jobs_dir: Where job inputs and results are spooled (default: a temporary folder
            removed at exit).
        jobs_ttl: Seconds a finished job's result is kept.
        jobs_max_mb: Disk space for finished results; the oldest are removed above it.
        batch_seconds: 16 kHz audio of concurrent requests gathered into one engine call
            (``0``: one request per call; default: the engine's own, 120 s, on a GPU, and
            0 on a CPU, where gathering was measured to gain nothing).
        prepare_workers: Threads decoding uploads and encoding outputs.
        threads: torch intra-op threads of the model worker (default: the `rvcfast tune` profile's, else torch's).
        max_live: Live streams (``WS /v1/live``) converted at once; more are closed with code 1013.
        live_idle_seconds: A live stream that sends nothing for this long is closed (code 1008),
            so that idle clients cannot hold the ``max_live`` slots.
        live_max_ahead_seconds: Audio a live stream may send ahead of its answers (messages in
            flight); beyond it the stream is closed (code 1008) with a message saying so.
        analysis_cache_mb: Memory for the F0 tracks and content features of recent inputs
            (:class:`rvcfast.SharedAnalysis`, least recently used dropped): a request whose audio
            came before (to another voice, with another key or index rate...) skips those
            stages; ``0`` turns it off. Live streams do not use it.
    """

    voices: tuple[str, ...] = ()
    encoder: str | None = None
    f0: str = "rmvpe"
    f0_weights: str | None = None
    f0_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "float32"
    allow_download: bool = False
    max_loaded_voices: int = 4
    max_upload_mb: float = 100.0
    max_input_seconds: float = 600.0
    max_job_seconds: float = 3600.0
    max_queue: int = 64
    body_timeout_seconds: float = 60.0
    api_key: str | None = None
    models_dir: str | None = None
    jobs_dir: str | None = None
    jobs_ttl: float = 3600.0
    jobs_max_mb: float = 2048.0
    batch_seconds: float | None = None
    prepare_workers: int = 2
    threads: int | None = None
    max_live: int = 2
    live_idle_seconds: float = 60.0
    live_max_ahead_seconds: float = 10.0
    analysis_cache_mb: float = 64.0

    @classmethod
    def build(cls, config: ServeConfig | None = None, **options: Any) -> ServeConfig:
        """``config`` (or the defaults) with ``options`` applied; unknown names are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ParameterError(f"unknown server option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        if "voices" in options:
            v = options["voices"]
            options["voices"] = (os.fspath(v),) if isinstance(v, (str, os.PathLike)) else tuple(os.fspath(x) for x in v)
        for key in ("encoder", "f0_weights", "models_dir", "jobs_dir"):
            if options.get(key) is not None:
                options[key] = os.fspath(options[key])
        if options.get("api_key") == "":
            options["api_key"] = None
        cfg = replace(config or cls(), **options)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse values that cannot work, naming the option."""
        if not self.voices and self.models_dir is None:
            raise ParameterError("no voices: give voice model files or folders (or a models folder to upload into)")
        for name in ("max_loaded_voices", "max_queue", "prepare_workers", "max_live"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_upload_mb", "max_input_seconds", "max_job_seconds", "jobs_ttl", "jobs_max_mb", "live_idle_seconds",
                     "body_timeout_seconds"):
            if not float(getattr(self, name)) > 0:
                raise ParameterError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < float(self.live_max_ahead_seconds) < math.inf:
            raise ParameterError(f"live_max_ahead_seconds must be a finite number of seconds above 0, got {self.live_max_ahead_seconds}")
        if not 0 <= float(self.analysis_cache_mb) < math.inf:
            raise ParameterError(f"analysis_cache_mb must be a finite number of megabytes, 0 or more, got {self.analysis_cache_mb}")
        for name in ("max_upload_mb", "jobs_max_mb"):  # sizes in bytes: an integer, so finite
            if not math.isfinite(float(getattr(self, name))):
                raise ParameterError(f"{name} must be a finite number of megabytes, got {getattr(self, name)}")
        from ..runtime import check_batch_seconds  # here: the configuration imports no torch

        check_batch_seconds(self.batch_seconds, zero=True)
        if self.threads is not None and int(self.threads) < 1:
            raise ParameterError(f"threads must be at least 1, got {self.threads}")
        if self.models_dir is not None and Path(self.models_dir).exists() and not Path(self.models_dir).is_dir():
            raise ParameterError(f"models_dir {self.models_dir} exists and is not a folder")

    @property
    def max_upload_bytes(self) -> int:
        """:attr:`max_upload_mb` in bytes."""
        return int(float(self.max_upload_mb) * 1024 * 1024)
