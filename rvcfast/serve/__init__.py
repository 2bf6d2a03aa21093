"""``rvcfast serve``: an HTTP server with resident models and cross-request batching.

Install with ``pip install "rvcfast[serve]"`` (FastAPI, uvicorn, python-multipart) and run
``rvcfast serve voices/`` or mount :func:`create_app` in another ASGI service. See
``docs/serving.md``. The package is split by job:

* :mod:`~rvcfast.serve.app` — :func:`create_app`, errors, health, metrics, voices;
* :mod:`~rvcfast.serve.routes` — ``/v1/convert`` (whole or streamed) and ``/v1/jobs``;
* :mod:`~rvcfast.serve.scheduler` — the one model worker and its queue;
* :mod:`~rvcfast.serve.voices` — voice discovery and the LRU of loaded engines;
* :mod:`~rvcfast.serve.jobs` — the job spool on disk;
* :mod:`~rvcfast.serve.forms`, :mod:`~rvcfast.serve.intake`, :mod:`~rvcfast.serve.encode` —
  request fields, uploads, output encoding;
* :mod:`~rvcfast.serve.metrics`, :mod:`~rvcfast.serve.middleware` — Prometheus text, API key,
  upload limit.

Importing :mod:`rvcfast` (or this package) does not import FastAPI; :func:`create_app`
raises :class:`~rvcfast.errors.BackendUnavailableError` naming the extra when it is missing.
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig, require_serve_extra

__all__ = ["create_app", "ServeConfig", "require_serve_extra"]


def create_app(config: ServeConfig | None = None, /, **options: Any) -> Any:
    """The ASGI app of ``rvcfast serve`` (see :func:`rvcfast.serve.app.create_app`)."""
    require_serve_extra()
    from .app import create_app as _create

    return _create(config, **options)
