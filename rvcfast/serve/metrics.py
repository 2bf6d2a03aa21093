"""Prometheus text exposition for the server, without a client library.

Counters and histograms are kept in a :class:`Metrics` object (thread-safe); gauges
are read from callables when ``/metrics`` is scraped. The names:

* ``rvcfast_requests_total{route, status}`` — HTTP requests answered;
* ``rvcfast_request_seconds{route}`` — their duration (histogram);
* ``rvcfast_conversion_failures_total{stage}`` — conversions that failed: ``decode`` (the input),
  ``load`` (the voice's model, or the F0 backend's weights, could not be loaded: a 500),
  ``convert`` (the model, before an answer was sent), ``encode`` (writing the answer's
  audio), ``stream`` (a streamed answer cut short after its headers), ``job`` (a
  background job) and ``live`` (a live stream's block);
* ``rvcfast_audio_seconds_total`` — input audio converted;
* ``rvcfast_live_seconds_total`` — audio of live streams converted (``WS /v1/live``); a failed
  block counts in ``rvcfast_conversion_failures_total{stage="live"}``;
* ``rvcfast_analysis_reused_total{kind}`` — F0 tracks (``f0``) and segments' content features
  (``features``) taken from the analysis cache instead of being computed (``--analysis-cache-mb``);
* ``rvcfast_batch_requests`` — requests per model call of the scheduler (histogram);
* ``rvcfast_stage_seconds_total{stage}`` — seconds per pipeline stage (decode, f0, features, index, synth, post, encode, queue);
* ``rvcfast_queue_depth``, ``rvcfast_requests_in_flight``, ``rvcfast_loaded_voices``,
  ``rvcfast_voices``, ``rvcfast_voices_failed`` (voices whose files failed to load),
  ``rvcfast_live_streams`` (open now), ``rvcfast_jobs{state}``, ``rvcfast_ready`` — gauges;
* ``rvcfast_model_loads_total{kind}`` — models loaded since start (a counter read at scrape
  time); ``rvcfast_model_loads{kind}``, the same values as a gauge, is kept for dashboards
  made before the counter (deprecated).

The counters of :data:`ZERO_SERIES` are shown at 0 from the start: an alert on
``increase(rvcfast_conversion_failures_total[5m]) > 0`` then fires on the first failure after a
restart (a series that first appears with the value 1 shows Prometheus no increase).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping

__all__ = ["Metrics", "FAILURE_STAGES", "ZERO_SERIES"]

#: The stages of ``rvcfast_conversion_failures_total``.
FAILURE_STAGES = ("decode", "load", "convert", "encode", "stream", "job", "live")
#: The stages of ``rvcfast_stage_seconds_total``.
TIMED_STAGES = ("decode", "f0", "features", "index", "synth", "post", "encode", "queue")

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)

Labels = tuple[tuple[str, str], ...]

_FAMILIES: dict[str, tuple[str, str]] = {
    "rvcfast_requests_total": ("counter", "HTTP requests answered, by route and status"),
    "rvcfast_request_seconds": ("histogram", "HTTP request duration in seconds, by route"),
    "rvcfast_conversion_failures_total": ("counter", "conversions that failed, by stage"),
    "rvcfast_audio_seconds_total": ("counter", "seconds of input audio converted"),
    "rvcfast_batch_requests": ("histogram", "requests per model call of the scheduler"),
    "rvcfast_stage_seconds_total": ("counter", "seconds spent per pipeline stage"),
    "rvcfast_live_seconds_total": ("counter", "seconds of live-stream audio converted (WS /v1/live)"),
    "rvcfast_analysis_reused_total": ("counter", "F0 tracks and segment features taken from the analysis cache, by kind"),
}


#: Counter series shown (at 0) before anything has happened.
ZERO_SERIES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    *(("rvcfast_conversion_failures_total", (("stage", s),)) for s in FAILURE_STAGES),
    *(("rvcfast_stage_seconds_total", (("stage", s),)) for s in TIMED_STAGES),
    ("rvcfast_audio_seconds_total", ()),
    ("rvcfast_live_seconds_total", ()),
    ("rvcfast_analysis_reused_total", (("kind", "f0"),)),
    ("rvcfast_analysis_reused_total", (("kind", "features"),)),
)


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1


class Metrics:
    """Counters, histograms and gauge callbacks, rendered as Prometheus text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], float] = {key: 0.0 for key in ZERO_SERIES}
        self._histograms: dict[tuple[str, Labels], _Histogram] = {}
        self._gauges: dict[str, tuple[str, str, Callable[[], float | Mapping[Labels, float]]]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to a counter."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + float(value)

    def add_stages(self, timings: Mapping[str, float]) -> None:
        """Add a conversion's stage seconds to ``rvcfast_stage_seconds_total``."""
        for stage, seconds in timings.items():
            self.inc("rvcfast_stage_seconds_total", seconds, stage=stage)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation of a histogram."""
        key = (name, tuple(sorted(labels.items())))
        buckets = _BATCH_BUCKETS if name == "rvcfast_batch_requests" else _LATENCY_BUCKETS
        with self._lock:
            hist = self._histograms.get(key)
            if hist is None:
                hist = self._histograms[key] = _Histogram(buckets)
            hist.observe(float(value))

    def gauge(
        self, name: str, help_text: str, read: Callable[[], float | Mapping[Labels, float]], kind: str = "gauge"
    ) -> None:
        """Register a value read at scrape time (a number, or ``{labels: value}``): a gauge, or
        with ``kind="counter"`` a count kept elsewhere that only grows (named ``*_total``)."""
        if kind not in ("gauge", "counter") or (kind == "counter") != name.endswith("_total"):
            raise ValueError(f"metric {name!r}: a {kind} read at scrape time (counters, and only they, end in _total)")
        self._gauges[name] = (kind, help_text, read)

    def counter_value(self, name: str, **labels: str) -> float:
        """The current value of one counter (0 if never incremented)."""
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        """Every metric in the Prometheus text format (version 0.0.4)."""
        lines: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            hists = {k: (h.buckets, list(h.counts), h.total, h.sum) for k, h in self._histograms.items()}
        for name, (kind, help_text) in _FAMILIES.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            if kind == "counter":
                lines += [f"{name}{_labels(lb)} {_fmt(v)}" for (n, lb), v in sorted(counters.items()) if n == name]
                continue
            for (n, lb), (buckets, counts, total, total_sum) in sorted(hists.items()):
                if n != name:
                    continue
                for b, c in zip(buckets, counts):
                    lines.append(f"{name}_bucket{_labels(lb + (('le', _fmt(b)),))} {c}")
                lines.append(f"{name}_bucket{_labels(lb + (('le', '+Inf'),))} {total}")
                lines.append(f"{name}_sum{_labels(lb)} {_fmt(total_sum)}")
                lines.append(f"{name}_count{_labels(lb)} {total}")
        for name, (kind, help_text, read) in sorted(self._gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            value = read()
            items: Iterable[tuple[Labels, float]] = value.items() if isinstance(value, Mapping) else [((), float(value))]
            lines += [f"{name}{_labels(lb)} {_fmt(v)}" for lb, v in items]
        return "\n".join(lines) + "\n"
