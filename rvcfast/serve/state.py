"""What a running server holds: settings, voices, the model worker, pools, jobs, metrics.

:class:`ServerState` is created by :func:`rvcfast.serve.create_app` (which checks the
settings and finds the voices at once) and started on the first request or by the
app's lifespan: the device is resolved, the model worker starts, and the first voices
(with the shared content encoder and F0 network) are loaded in the background;
``/health`` answers 200 from then on. :meth:`ServerState.close` stops it: ``/health`` and
every route that converts answer 503 from then on, and a voice still loading is not kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ModelLoadError, ParameterError, WeightsNotFoundError
from .answers import FieldError
from .config import ServeConfig
from .jobs import JobStore, SpoolLock, make_spool, remove_spool
from .metrics import Metrics
from .scheduler import CPU_GROUP_SECONDS, END, Admission, Scheduler, call_contained, contained
from .voices import Voice, VoiceRegistry, discover_voices

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["ServerState", "NotReady", "MAX_F0_EXTRACTORS", "f0_key"]

_log = logging.getLogger("rvcfast.serve")
T = TypeVar("T")

#: F0 backends named by requests (other than the server's own) kept built at once; the least
#: recently used is dropped beyond this (its networks stay in the process-wide model cache).
MAX_F0_EXTRACTORS = 8


def f0_key(name: str) -> str:
    """One spelling per F0 backend: lower case, stripped, a hybrid as ``hybrid:a+b`` (its
    members stripped, in their order), so ``HYBRID[ rmvpe + pm ]`` and ``hybrid:rmvpe+pm``
    are one backend, built once."""
    from ..f0.registry import parse_hybrid

    text = str(name).strip().lower()
    try:
        members = parse_hybrid(text)
    except ParameterError:
        return text
    return text if members is None else "hybrid:" + "+".join(members)


def _has_rmvpe(key: str) -> bool:
    """Whether the backend of :func:`f0_key` ``key`` is RMVPE or a hybrid with an RMVPE member
    (a plugin whose name merely contains "rmvpe" is not)."""
    from ..f0.registry import parse_hybrid

    try:
        members = parse_hybrid(key)
    except ParameterError:
        return False
    return "rmvpe" in (members or [key])


class NotReady(Exception):
    """The models are still loading (503), or loading failed."""


class ServerState:
    """The server's shared objects (one per app)."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        paths: list[str] = list(cfg.voices)
        if cfg.models_dir is not None:
            Path(cfg.models_dir).mkdir(parents=True, exist_ok=True)
            paths.append(cfg.models_dir)
        voices = discover_voices(paths)
        if not voices and cfg.models_dir is None:
            raise ParameterError(
                "no .pth voice models found in " + ", ".join(cfg.voices) + " (give .pth files or folders that hold them)"
            )
        self.registry = VoiceRegistry(voices, self._load_voice, cfg.max_loaded_voices)
        self.admission = Admission(cfg.max_queue)
        self.spool, self._temp_spool = make_spool(cfg.jobs_dir)
        # a kept folder is this server's alone: taken before the leftovers are removed
        self._spool_lock = None if self._temp_spool else SpoolLock(self.spool)
        self.uploads = self.spool / "uploads"
        self.uploads.mkdir(exist_ok=True)
        self.jobs = JobStore(self.spool / "jobs", cfg.jobs_ttl, int(cfg.jobs_max_mb * 2**20))
        _remove_leftovers(self.uploads, self.jobs.root)
        self.pool = cf.ThreadPoolExecutor(cfg.prepare_workers, thread_name_prefix="rvcfast-prepare")
        self.loader = cf.ThreadPoolExecutor(2, thread_name_prefix="rvcfast-load")
        #: live streams' blocks (WS /v1/live), beside the model worker; one stream's blocks run in order
        self.live_pool = cf.ThreadPoolExecutor(cfg.max_live, thread_name_prefix="rvcfast-live")
        self.live_streams = 0  # open live streams (changed in the event loop only)
        self.scheduler: Scheduler | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.load_failure: str | None = None  # load_error with the server's paths: the operator's message
        self.started = False
        self.closed = False
        self._start_lock = threading.Lock()
        self._f0_lock = threading.Lock()  # guards _f0_extractors (held briefly, never while building)
        self._f0_build_lock = threading.Lock()  # one F0 backend built at a time
        self._f0_extractors: OrderedDict[str, Any] = OrderedDict()  # f0_key -> extractor, LRU
        self._loads_lock = threading.RLock()  # a done callback may run at once, in the submitting thread
        self._loads: dict[str, cf.Future[Engine]] = {}  # voice id -> its load in the loader pool
        from ..runtime import resolve_device
        from ..tuning import load_profile, tuned_dtype

        self.device = resolve_device(cfg.device)  # a bad device or dtype is refused here, before anything starts
        self.profile = load_profile(self.device)  # read once (a bad file is warned about once)
        self.dtype = tuned_dtype(cfg.dtype, self.device, self.profile)  # "auto": the `rvcfast tune` profile's, if any
        #: Called (from the loading thread) when no voice could be loaded; the command line stops the server.
        self.on_fatal: Callable[[], None] | None = None
        #: F0 tracks and content features of recent inputs, shared by every voice (None: off)
        self.analysis = self._analysis_cache()
        self._register_gauges()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the model worker and load the first voices in the background (idempotent)."""
        with self._start_lock:
            if self.started or self.closed:  # a closed server is not started again (check_ready refuses it)
                return
            import torch

            from ..runtime import default_batch_seconds

            if self.cfg.threads is not None:
                torch.set_num_threads(int(self.cfg.threads))
            else:  # the server owns its process: the tuned thread count, unless OMP_NUM_THREADS says otherwise
                from ..tuning import apply_threads

                apply_threads(self.profile)
            group = self.cfg.batch_seconds
            if group is None:
                group = CPU_GROUP_SECONDS if self.device.type == "cpu" else default_batch_seconds(self.device)
            self.scheduler = Scheduler(group, self.metrics)
            self.scheduler.start()
            self.started = True
            threading.Thread(target=self._preload, name="rvcfast-preload", daemon=True).start()

    def _preload(self) -> None:
        """Load the first voices; a voice that fails is reported, the server fails only if none loads."""
        t0 = time.perf_counter()
        # error text -> the voices that failed with it: missing base weights (shared by every
        # voice) are said once, not once per voice
        errors: dict[str, list[str]] = {}
        full_text: dict[str, str] = {}  # the same errors with their paths, for the operator
        ids = self.registry.ids()[: self.registry.max_loaded]
        for voice_id in ids:
            if self.closed:  # closed while loading: load nothing more, never report ready
                return
            try:
                self.registry.engine(voice_id)
            except NotReady:  # closed during this load
                return
            except BaseException as exc:  # noqa: BLE001 - reported by /health and /v1/voices (a sys.exit() too)
                exc = contained(exc, f"loading voice {voice_id!r}")
                full = f"{type(exc).__name__}: {exc}"  # the operator's log: with the paths
                text = self._hide_paths(full)  # what clients may see
                self.registry.get(voice_id).info = {"error": text}
                if text in errors:
                    _log.error("loading voice %s failed: the same error as voice %s", voice_id, errors[text][0])
                else:
                    _log.error("loading voice %s failed: %s", voice_id, full)
                errors.setdefault(text, []).append(voice_id)
                full_text.setdefault(text, full)
        if self.closed:
            return
        if ids and sum(len(v) for v in errors.values()) == len(ids):
            def said(texts: Mapping[str, str]) -> str:
                return "; ".join(f"{'voice' if len(v) == 1 else 'voices'} {', '.join(v)}: {texts[t]}" for t, v in errors.items())

            self.load_error = said({t: t for t in errors})  # clients may see it (503s until the server stops)
            self.load_failure = said(full_text)
            if self.on_fatal is not None:
                self.on_fatal()
            return
        self.ready.set()
        _log.info("models loaded in %.1f s; ready", time.perf_counter() - t0)

    def check_ready(self) -> None:
        """Raise :class:`NotReady` unless the first voices are loaded (and the server is not closed)."""
        if self.closed:
            raise NotReady("the server is shut down")
        self.start()
        if self.load_error is not None:
            raise NotReady(f"the server could not load its models: {self.load_error}")
        if not self.ready.is_set():
            raise NotReady("the models are still loading; retry shortly")

    async def cancel_jobs(self) -> None:
        """Cancel the unfinished jobs and wait for them to end (in the event loop). A server
        that shuts down does this first: jobs do not outlive it, so their work would only slow
        down the requests in flight that it finishes."""
        handles = [j.handle for j in self.jobs.active() if j.handle is not None]
        for handle in handles:
            handle.cancel()
        if handles:
            await asyncio.gather(*handles, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel unfinished jobs (in the event loop), then :meth:`close`."""
        await self.cancel_jobs()
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Finish the queued model work, stop the threads, let go of the loaded voices and F0
        backends, and remove a temporary spool.

        The models are released here, not when this object is collected: the web framework
        may keep a closed app's route functions (and so this state) in its caches for long.
        """
        if self.closed:
            return
        self.closed = True
        self.ready.clear()  # /health answers 503 from now on
        if self.scheduler is not None:
            self.scheduler.close(timeout=60)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.live_pool.shutdown(wait=True, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)
        self.registry.unload_all()
        with self._f0_lock:
            self._f0_extractors.clear()
        if self.analysis is not None:
            self.analysis.clear()
        if self._temp_spool:
            remove_spool(self.spool)
        if self._spool_lock is not None:
            self._spool_lock.release()

    # ------------------------------------------------------------------ voices

    def _load_voice(self, voice: Voice) -> Engine:
        """The registry's loader; :class:`NotReady` once the server is closed (before the load, or
        after it: the engine of a load that ends after :meth:`close` is dropped, not kept)."""
        from ..engine import Engine

        if self.closed:
            raise NotReady(f"the server is shut down; voice {voice.id!r} is not loaded")
        cfg = self.cfg
        t0 = time.perf_counter()
        try:
            eng = Engine.load(
                voice.model, index=voice.index, encoder=cfg.encoder, f0=cfg.f0, f0_weights=cfg.f0_weights,
                f0_options=dict(cfg.f0_options) or None, device=self.device, dtype=self.dtype, allow_download=cfg.allow_download,
            )
        except Exception:
            raise
        except BaseException as exc:  # noqa: BLE001 - a plugin's sys.exit(): this voice's failure (kept, answered 500)
            raise ModelLoadError(voice.model, str(contained(exc, "loading the voice"))) from None
        if self.closed:
            raise NotReady(f"the server is shut down; voice {voice.id!r} is not kept")
        _log.info("voice %s loaded in %.1f s", voice.id, time.perf_counter() - t0)
        return self.analysis.engine(eng) if self.analysis is not None and isinstance(eng, Engine) else eng

    def _analysis_cache(self) -> Any:
        """The :class:`~rvcfast.voices.SharedAnalysis` the voices' engines read through, or ``None``."""
        mb = float(self.cfg.analysis_cache_mb)
        if mb <= 0:
            return None
        from ..voices import SharedAnalysis

        def reused(kind: str, n: int) -> None:
            self.metrics.inc("rvcfast_analysis_reused_total", float(n), kind=kind)

        # features take nearly all of it; F0 tracks (400 bytes a second of audio) get a sixteenth
        return SharedAnalysis(mb, evict=True, max_track_mb=mb / 16, on_reuse=reused)

    async def engine_for(self, voice_id: str, f0: str | None = None) -> Engine:
        """The loaded engine of a voice (loading it in the loader pool if needed); :class:`UnknownVoice` if none.

        A loaded voice is looked up at once, never behind loads in the loader pool; requests
        for a voice that is loading wait for that one load (one pool thread, however many
        requests). ``f0`` names another F0 backend for this request: the same engine (models
        shared) with that extractor, built once per server and name.
        """
        self.registry.get(voice_id)
        engine = self.registry.loaded_engine(voice_id)
        if engine is None:
            engine = await asyncio.shield(asyncio.wrap_future(self._load_in_pool(voice_id)))
        if f0 is None or not engine.vocoder.has_f0:
            return engine
        key = f0_key(f0)
        if key == f0_key(str(self.cfg.f0)):
            return engine
        extractor = self._kept_f0(key)
        if extractor is None:
            try:
                extractor = await asyncio.get_running_loop().run_in_executor(self.loader, call_contained, self._f0_extractor, key)
            except (ParameterError, WeightsNotFoundError) as exc:  # a backend refusing its options, or its weights missing: the f0 field
                raise FieldError("f0", self._hide_paths(str(exc))) from None
        return engine.with_f0(extractor if self.analysis is None else self.analysis.extractor(extractor))

    def _load_in_pool(self, voice_id: str) -> cf.Future[Engine]:
        """The loader pool's load of ``voice_id``: the one in progress, or a new one."""
        with self._loads_lock:
            fut = self._loads.get(voice_id)
            if fut is None:
                fut = self.loader.submit(call_contained, self.registry.engine, voice_id)
                self._loads[voice_id] = fut
                fut.add_done_callback(lambda done: self._load_done(voice_id, done))
            return fut

    def _load_done(self, voice_id: str, fut: cf.Future[Engine]) -> None:
        with self._loads_lock:
            if self._loads.get(voice_id) is fut:
                del self._loads[voice_id]

    def _kept_f0(self, key: str) -> Any:
        """The built extractor for an F0 backend key (marked as just used), or ``None``."""
        with self._f0_lock:
            extractor = self._f0_extractors.get(key)
            if extractor is not None:
                self._f0_extractors.move_to_end(key)
            return extractor

    def _f0_extractor(self, key: str) -> Any:
        """The server's extractor for an F0 backend key (:func:`f0_key`), built on first use and
        shared; at most :data:`MAX_F0_EXTRACTORS` are kept (least recently used dropped)."""
        with self._f0_build_lock:
            extractor = self._kept_f0(key)
            if extractor is not None:
                return extractor
            from ..f0.registry import build_f0_extractor
            from ..runtime import f0_dtype

            cfg = self.cfg
            uses_rmvpe = _has_rmvpe(key)
            # --f0-weights are the server's own backend's weights: RMVPE's only where that backend uses RMVPE
            weights = cfg.f0_weights if uses_rmvpe and _has_rmvpe(f0_key(cfg.f0)) else None
            extractor = build_f0_extractor(
                key, weights=weights, allow_download=cfg.allow_download and uses_rmvpe,
                device=self.device, dtype=f0_dtype(self.dtype, self.device),
            )
            with self._f0_lock:
                self._f0_extractors[key] = extractor
                while len(self._f0_extractors) > MAX_F0_EXTRACTORS:
                    self._f0_extractors.popitem(last=False)
            return extractor

    def _hide_paths(self, text: str) -> str:
        """Model paths in a message reduced to file names (clients never see server paths)."""
        for voice in self.registry_voices():
            for p in (voice.model, voice.index):
                if p is not None:
                    text = text.replace(str(p), p.name)
        for base in (self.cfg.encoder, self.cfg.f0_weights):
            if base:
                text = text.replace(os.fspath(base), Path(base).name)
        from ..weights import search_dirs

        for folder in search_dirs():  # where base weights were looked for ("hubert_base.pt not found...")
            text = text.replace(str(folder) + os.sep, "").replace(str(folder), "(the weights folder)")
        if self.cfg.models_dir is not None:  # uploaded voices' folder (an upload's error may name a file in it)
            models = Path(self.cfg.models_dir).resolve()
            text = text.replace(str(models) + os.sep, "").replace(str(models), "(the models folder)")
        return text.replace(str(self.spool), "")

    def registry_voices(self) -> list[Voice]:
        return [self.registry.get(v) for v in self.registry.ids()]

    # ------------------------------------------------------------------ work

    async def in_pool(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in the prepare pool (decoding, encoding, post-processing); what it raises that is
        not an :class:`Exception` (a plugin's ``sys.exit()``) comes as one (it would stop the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: call_contained(fn, *args, **kwargs))

    async def steps(self, iterator: Iterator[Any], credit: int = 2) -> AsyncGenerator[Any, None]:
        """Drive ``iterator`` on the model worker, one item per turn, and yield its items here."""
        assert self.scheduler is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = self.scheduler.submit_steps(iterator, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item), credit)
        try:
            while True:
                item = await queue.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                self.scheduler.grant(task)
                yield item
        finally:
            self.scheduler.cancel(task)

    # ------------------------------------------------------------------ metrics

    def _register_gauges(self) -> None:
        m = self.metrics

        def model_loads() -> dict[tuple[tuple[str, str], ...], float]:
            from .. import cache

            out: dict[tuple[tuple[str, str], ...], float] = {
                (("kind", k),): float(cache.load_count(k)) for k in ("encoder", "rmvpe", "fcpe", "crepe")
            }
            out[(("kind", "voice"),)] = float(self.registry.loads)
            return out

        m.gauge("rvcfast_queue_depth", "work items waiting for the model worker", lambda: self.scheduler.depth if self.scheduler else 0)
        m.gauge("rvcfast_requests_in_flight", "requests and unfinished jobs in the server", lambda: self.admission.count)
        m.gauge("rvcfast_loaded_voices", "voices loaded (LRU)", lambda: len(self.registry.loaded_ids()))
        m.gauge("rvcfast_voices", "voices offered", lambda: len(self.registry.ids()))
        m.gauge("rvcfast_jobs", "jobs by state", lambda: {(("state", s),): float(n) for s, n in self.jobs.counts().items()})
        m.gauge("rvcfast_model_loads_total", "models loaded since start, by kind", model_loads, kind="counter")
        m.gauge("rvcfast_model_loads", "deprecated: rvcfast_model_loads_total as a gauge", model_loads)
        m.gauge("rvcfast_ready", "1 once the models are loaded", lambda: 1.0 if self.ready.is_set() else 0.0)


def _remove_leftovers(uploads: Path, jobs: Path) -> None:
    """Files of an earlier server in a kept spool folder (jobs are not carried over a restart)."""
    for folder, pattern in ((uploads, "upload-*"), (jobs, "*.*")):
        for f in folder.glob(pattern):
            if f.is_file() and (folder is uploads or re.match(r"^[0-9a-f]{32}\.", f.name)):
                try:
                    f.unlink()
                except OSError:
                    pass
