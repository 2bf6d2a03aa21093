"""``rvcfast serve``: the HTTP server (:mod:`rvcfast.serve`) under uvicorn."""

from __future__ import annotations

import argparse
import copy
import errno
import logging
import os
import signal
import socket
import sys
from typing import Any

from ..errors import ModelLoadError, ParameterError
from ._common import HelpFormatter, UsageError, add_device_options, check_f0_name, parse_options, user_path


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=512)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).split(" (while attempting")[0]  # Python adds the address again
        hint = "; another server is listening there: stop it or give --port (0: any free port)" if exc.errno == errno.EADDRINUSE else ""
        raise UsageError(f"cannot listen on {host}:{port}: {reason}{hint}", usage=False) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the voices over HTTP until SIGTERM/SIGINT (in-flight requests are finished first,
    for at most ``--shutdown-timeout`` seconds)."""
    from ..serve import ServeConfig, require_serve_extra

    require_serve_extra()  # a clear `pip install "rvcfast[serve]"` before anything else
    import uvicorn

    from . import _raise_terminated

    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        # uvicorn finishes the requests in flight on SIGTERM, then raises it again: the default
        # action then, not the console script's Ctrl-C-like exit
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    from ..serve import create_app

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be within 0..65535, got {args.port}")
    if not args.shutdown_timeout > 0:  # also NaN
        raise UsageError(f"--shutdown-timeout must be a positive number of seconds, got {args.shutdown_timeout}")
    check_f0_name("--f0", args.f0, parse_options(args.f0_option), args.f0_weights is not None)  # as convert does: before anything is loaded
    if args.log_config is not None and not os.path.isfile(args.log_config):
        raise UsageError(f"--log-config: no such file: {args.log_config}")
    if args.log_config is not None and args.log_format != "text":
        raise UsageError("give --log-format or --log-config, not both (the file chooses the formats)")
    config = _config(ServeConfig, args)
    # the port first: a second server started by mistake stops here, before it touches the
    # first one's --jobs-dir
    sock = _bind(args.host, args.port)
    try:
        app = create_app(config)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    state = app.state.rvcfast
    dtype = str(state.dtype).replace("torch.", "") + (f" ({config.dtype})" if config.dtype == "auto" else "")
    said = (f"rvcfast serve: listening on http://{shown}:{port} ({len(state.registry.ids())} voices on {state.device}, "
            f"{dtype}; GET /health says when the models are loaded)")
    if args.log_format == "json":  # every line of the log a JSON object, this one too
        from ..serve.middleware import JsonFormatter

        said = JsonFormatter().format(logging.makeLogRecord({"name": "rvcfast.serve", "levelname": "INFO", "msg": said}))
    print(said, file=sys.stderr, flush=True)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            jobs = len(state.jobs.active())
            _log.log(
                logging.WARNING if jobs else logging.INFO,
                "shutting down: %d unfinished job(s) cancelled; the %d request(s) in flight get at most %g s (--shutdown-timeout)",
                jobs, max(0, state.admission.count - jobs), args.shutdown_timeout,
            )
            await state.cancel_jobs()  # first: the requests in flight get the model worker to themselves
            await super().shutdown(sockets=sockets)

    server = Server(
        uvicorn.Config(
            app, log_level=args.log_level, log_config=args.log_config or _log_config(args.log_level, args.log_format),
            # the app logs every request itself (rvcfast.serve.access: with its duration and request id)
            access_log=False, timeout_keep_alive=30, lifespan="on",
            # a client that stops reading a stream would otherwise hold the shutdown forever
            timeout_graceful_shutdown=args.shutdown_timeout,
            # WS /v1/live: raw audio hardly compresses, and a compressed burst (silence) would be
            # inflated into many queued messages of up to 16 MiB before the route reads the first
            ws_per_message_deflate=False,
        )
    )

    def stop() -> None:
        server.should_exit = True

    if args.no_access_log:  # the failed requests (5xx) are still logged, at WARNING and ERROR
        logging.getLogger("rvcfast.serve.access").setLevel(logging.WARNING)
    state.on_fatal = stop  # no voice could be loaded: stop instead of answering 503 forever
    server.run(sockets=[sock])
    if state.load_error is not None:
        raise ModelLoadError(None, f"the server stopped: {state.load_failure or state.load_error}")
    return 0


_log = logging.getLogger("rvcfast.serve")


def _log_config(level: str, fmt: str = "text") -> dict[str, Any]:
    """uvicorn's logging configuration, with rvcfast's loggers (``rvcfast.serve``: the server's
    messages; ``rvcfast.serve.access``: one line per request) on its stderr handler at ``level``;
    ``fmt="json"``: every line a JSON object (:class:`~rvcfast.serve.middleware.JsonFormatter`).
    Every record gets a ``request_id`` attribute (:class:`~rvcfast.serve.middleware.RequestIdFilter`)."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["request_id"] = {"()": "rvcfast.serve.middleware.RequestIdFilter"}
    config["handlers"]["default"]["filters"] = ["request_id"]
    if fmt == "json":
        config["formatters"]["json"] = {"()": "rvcfast.serve.middleware.JsonFormatter"}
        for handler in config["handlers"].values():
            handler["formatter"] = "json"
    config["loggers"]["rvcfast"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


#: ServeConfig fields whose option is not ``--`` + the field's name with dashes.
_FLAGS = {"f0_options": "--f0-option", "allow_download": "--download", "voices": "VOICE", "body_timeout_seconds": "--body-timeout"}


def _config(serve_config: Any, args: argparse.Namespace) -> Any:
    """The server's configuration from the options; a bad value names its option (``--max-queue: ...``)."""
    try:
        return _build(serve_config, args)
    except ParameterError as exc:
        text = str(exc)
        field = text.split(" ", 1)[0]
        flag = _FLAGS.get(field) or (f"--{field.replace('_', '-')}" if hasattr(args, field) else None)
        raise UsageError(f"{flag}: {text}" if flag else text) from None


def _build(serve_config: Any, args: argparse.Namespace) -> Any:
    return serve_config.build(
        voices=args.voices, encoder=args.encoder, f0=args.f0, f0_weights=args.f0_weights,
        f0_options=parse_options(args.f0_option), device=args.device, dtype=args.dtype, allow_download=args.download,
        max_loaded_voices=args.max_loaded_voices, max_upload_mb=args.max_upload_mb, max_queue=args.max_queue,
        max_input_seconds=args.max_input_seconds, max_job_seconds=args.max_job_seconds,
        body_timeout_seconds=args.body_timeout,
        api_key=args.api_key if args.api_key is not None else os.environ.get("RVCFAST_API_KEY"),
        models_dir=args.models_dir, jobs_dir=args.jobs_dir, jobs_ttl=args.jobs_ttl, jobs_max_mb=args.jobs_max_mb,
        batch_seconds=args.batch_seconds, threads=args.threads, max_live=args.max_live,
        live_idle_seconds=args.live_idle_seconds, live_max_ahead_seconds=args.live_max_ahead_seconds,
        analysis_cache_mb=args.analysis_cache_mb,
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve voices over HTTP (resident models, batching)",
        description=(
            "Serve RVC voices over HTTP. Every VOICE .pth (and every .pth in a FOLDER) is a voice named by its\n"
            "file stem; a .index beside it with the same stem is its index. The content encoder and F0 model\n"
            "are loaded once for all voices; voices stay loaded in an LRU. Concurrent requests share one model\n"
            "worker. Endpoints: /health, /metrics, /v1/voices (POST with --models-dir), /v1/convert, /v1/jobs,\n"
            "WS /v1/live; docs at /docs.\n"
            "SIGTERM finishes the requests in flight (for at most --shutdown-timeout seconds, then cancels them),\n"
            "then exits. Needs: pip install \"rvcfast[serve]\"."
        ),
        epilog=(
            "examples:\n"
            "  rvcfast serve voices/ --port 8000\n"
            "  rvcfast serve alice.pth bob.pth --host 0.0.0.0 --api-key $KEY --max-queue 32\n"
            "  curl -F file=@take.wav -F voice=alice -F pitch=2 http://127.0.0.1:8000/v1/convert -o out.wav\n"
            "\n"
            "See docs/serving.md for the API, a Python client and the throughput figures."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("voices", metavar="VOICE", nargs="+", type=user_path, help="voice model .pth files and/or folders of them")
    n = p.add_argument_group("network")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    n.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    n.add_argument("--api-key", metavar="KEY", default=None, help="require this key (Authorization: Bearer KEY or X-API-Key); default: $RVCFAST_API_KEY")
    n.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="log level of the server's messages and its request log (default: %(default)s)")
    n.add_argument("--no-access-log", action="store_true",
                   help="do not log every request (failed ones, 5xx, are still logged)")
    n.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text lines, or one JSON object per line (time, level, logger, message, and a request's "
                   "request_id, method, path, status, duration_s, client, input, voice, error) (default: %(default)s)")
    n.add_argument("--log-config", metavar="FILE", default=None,
                   help="logging configuration (.json or .yaml: logging.config.dictConfig; else .ini) for uvicorn's "
                   "and rvcfast's loggers (rvcfast.serve, rvcfast.serve.access), e.g. JSON lines for a log collector")
    n.add_argument("--shutdown-timeout", type=float, default=300.0, metavar="S",
                   help="on SIGTERM, wait this long for requests in flight, then cancel them (default: %(default)s)")
    g = p.add_argument_group("models")
    g.add_argument("--encoder", metavar="PATH", type=user_path, help="hubert_base.pt or a ContentVec folder (default: $RVCFAST_HOME or the cache)")
    g.add_argument("--f0", metavar="NAME", default="rmvpe", help="F0 backend for every voice (see `rvcfast backends`)")
    g.add_argument("--f0-weights", metavar="FILE", type=user_path, help="weights for the F0 backend (rmvpe.pt)")
    g.add_argument("--f0-option", metavar="KEY=VALUE", action="append", help="extra option for the F0 backend, repeatable")
    g.add_argument("--download", action="store_true", help="download missing base weights into $RVCFAST_HOME when set, else the cache")
    g.add_argument("--models-dir", metavar="FOLDER", type=user_path, help="let clients upload voices into FOLDER (POST /v1/voices); off by default")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-loaded-voices", type=int, default=4, metavar="N", help="voices kept loaded (least recently used unloaded)")
    lim.add_argument("--max-upload-mb", type=float, default=100.0, metavar="N", help="largest request body (413 above)")
    lim.add_argument("--max-input-seconds", type=float, default=600.0, metavar="S",
                     help="longest input of /v1/convert, read from its header before decoding (413 above)")
    lim.add_argument("--max-job-seconds", type=float, default=3600.0, metavar="S", help="longest input of /v1/jobs (413 above)")
    lim.add_argument("--max-queue", type=int, default=64, metavar="N", help="requests and jobs held at once (503 with Retry-After above)")
    lim.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                     help="answer 408 to a request whose body sends nothing for this long (default: %(default)s)")
    lim.add_argument("--max-live", type=int, default=2, metavar="N",
                     help="live streams (WS /v1/live) converted at once (closed with 1013 above)")
    lim.add_argument("--live-idle-seconds", type=float, default=60.0, metavar="S",
                     help="close a live stream that sends nothing for this long (default: %(default)s)")
    lim.add_argument("--live-max-ahead-seconds", type=float, default=10.0, metavar="S",
                     help="audio a live stream may send ahead of its answers; more closes it with 1008 (default: %(default)s)")
    lim.add_argument("--jobs-dir", metavar="FOLDER", type=user_path, help="spool for uploads and job results (default: a temporary folder)")
    lim.add_argument("--jobs-ttl", type=float, default=3600.0, metavar="S", help="seconds a finished job's result is kept")
    lim.add_argument("--jobs-max-mb", type=float, default=2048.0, metavar="N", help="disk for job results: above it the oldest fetched (or 10 min old) results are removed, else new jobs get 503")
    r = p.add_argument_group("runtime")
    add_device_options(r)
    r.add_argument("--batch-seconds", type=float, default=None, metavar="S",
                   help="16 kHz audio of concurrent requests gathered into one model call (0: one request per call; default: 0 on CPU, 120 on GPU)")
    r.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads of the model worker (default: the rvcfast tune profile's, else torch's, capped at the usable cores)")
    r.add_argument(
        "--analysis-cache-mb", type=float, default=64.0, metavar="N",
        help="memory for the F0 tracks and content features of recent inputs: the same audio sent again "
        "(another voice, key or index rate) skips those stages (0: off; default: %(default)s)",
    )
    p.set_defaults(func=cmd_serve)
