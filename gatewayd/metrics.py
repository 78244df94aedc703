"""Metrics: gatewayd's own counters and gauges in the Prometheus text format.

The daemon sets values from its tick (queue stats, pool stats, thermal state)
and as things happen (dead letters, messages, chunk latencies). They leave the
process in one or both of two ways:

- ``write_textfile``: an atomically replaced ``.prom`` file for node_exporter's
  textfile collector, which is how most fleets already collect from a gateway;
- ``MetricsServer``: a small HTTP endpoint on loopback answering ``GET /metrics``.

The format is text exposition 0.0.4, written here to keep a dependency off a
512 MB gateway: HELP and TYPE lines, label values escaped (``\\``, ``"``, newline),
histograms as cumulative ``_bucket{le=...}`` series with ``_sum`` and ``_count``.
Metric objects may be updated from one thread while another renders; each
holds a lock for the few instructions an update takes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ipaddress
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gatewayd import __version__
from gatewayd.errors import ConfigError

if TYPE_CHECKING:
    from gatewayd.channel import ChannelStats
    from gatewayd.thermal import ThermalDecision, ThermalReading
    from gatewayd.workers import PoolStats

logger = logging.getLogger(__name__)

__all__ = [
    "CHUNK_LATENCY_BUCKETS",
    "CONTENT_TYPE",
    "Counter",
    "GatewayMetrics",
    "Gauge",
    "Histogram",
    "MetricsServer",
    "Registry",
    "write_textfile",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# 1 ms to 10 s: a small chunk on an idle Pi takes milliseconds, a LiDAR frame
# on a hot one seconds, and the default chunk timeout is 4 s.
CHUNK_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                         1.0, 2.5, 5.0, 10.0)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Kind = Literal["counter", "gauge", "histogram"]
LabelValues = tuple[str, ...]
Labels = Mapping[str, object]  # label name -> value; values are str()-ed


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape_label_value(v)}"' for n, v in zip(names, values))
    return "{" + pairs + "}"


class _Metric:
    kind: Kind

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{name}: invalid label name {label!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"{name}: duplicate label names")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Labels | None) -> LabelValues:
        labels = labels or {}
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, "
                             f"got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self._samples()

    def _samples(self) -> Iterator[str]:
        raise NotImplementedError


class _Scalar(_Metric):
    """A counter or a gauge: one float per label set."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelValues, float] = {}
        if not self.labelnames:
            self._values[()] = 0.0

    def value(self, labels: Labels | None = None) -> float | None:
        return self._values.get(self._key(labels))

    def remove(self, labels: Labels | None = None) -> None:
        """Forgets one series (a worker that is gone, a source removed)."""
        with self._lock:
            self._values.pop(self._key(labels), None)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def _samples(self) -> Iterator[str]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_labels_text(self.labelnames, key)} {_format_value(value)}"


class Counter(_Scalar):
    """Only goes up. Name it ``..._total``."""

    kind = "counter"

    def inc(self, amount: float = 1.0, labels: Labels | None = None) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set_total(self, total: float, labels: Labels | None = None) -> None:
        """Mirrors a total kept elsewhere (the worker pool's counts); never lower."""
        key = self._key(labels)
        with self._lock:
            if total < self._values.get(key, 0.0):
                raise ValueError(f"{self.name}: a counter cannot decrease")
            self._values[key] = float(total)


class Gauge(_Scalar):
    kind = "gauge"

    def set(self, value: float, labels: Labels | None = None) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, labels: Labels | None = None) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, labels: Labels | None = None) -> None:
        self.inc(-amount, labels)


class _Buckets:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * n  # per bucket, not cumulative; the last one is +Inf
        self.sum = 0.0


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float],
                 labelnames: Sequence[str] = ()) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        super().__init__(name, help, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds) or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be distinct finite numbers")
        self.buckets = tuple(bounds)
        self._series: dict[LabelValues, _Buckets] = {}
        if not self.labelnames:
            self._series[()] = _Buckets(len(self.buckets) + 1)

    def sample_names(self) -> tuple[str, ...]:
        return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")

    def observe(self, value: float, labels: Labels | None = None) -> None:
        if math.isnan(value):
            return
        key = self._key(labels)
        # bisect_left: a value equal to a bound belongs to that bucket (le is <=).
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Buckets(len(self.buckets) + 1)
            series.counts[index] += 1
            series.sum += value

    def remove(self, labels: Labels | None = None) -> None:
        with self._lock:
            self._series.pop(self._key(labels), None)

    def _samples(self) -> Iterator[str]:
        with self._lock:
            items = sorted((k, list(s.counts), s.sum) for k, s in self._series.items())
        names = (*self.labelnames, "le")
        for key, counts, total in items:
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                running += count
                labels = _labels_text(names, (*key, _format_value(bound)))
                yield f"{self.name}_bucket{labels} {running}"
            plain = _labels_text(self.labelnames, key)
            yield f"{self.name}_sum{plain} {_format_value(total)}"
            yield f"{self.name}_count{plain} {running}"


class Registry:
    """The metric families one process exposes, in the order they were made."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._samples: set[str] = set()
        self._lock = threading.Lock()

    def register(self, metric: _Metric) -> None:
        with self._lock:
            names = {metric.name, *metric.sample_names()}
            if metric.name in self._metrics or names & self._samples:
                raise ValueError(f"metric {metric.name!r} clashes with one already registered")
            self._metrics[metric.name] = metric
            self._samples |= names

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self.register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self.register(metric)
        return metric

    def histogram(self, name: str, help: str, buckets: Iterable[float],
                  labelnames: Sequence[str] = ()) -> Histogram:
        metric = Histogram(name, help, buckets, labelnames)
        self.register(metric)
        return metric

    def get(self, name: str) -> _Metric | None:
        return self._metrics.get(name)

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n" if lines else ""


def write_textfile(registry: Registry, path: str | os.PathLike[str], *,
                   mode: int = 0o644) -> None:
    """Replaces ``path`` atomically, for node_exporter's textfile collector.

    The text goes to ``<path>.tmp.<pid>`` in the same directory (same file
    system, so the rename is atomic; the collector reads only ``*.prom``, so it
    never sees the temporary file), is fsynced, then renamed over ``path``. A
    reader sees the old file or the new one, never half of one. The mode is
    set explicitly because the collector runs as another user and the
    service's umask would hide the file from it.
    """
    target = Path(path)
    if target.suffix != ".prom":
        raise ValueError(f"{target}: the textfile collector only reads files ending in .prom")
    data = registry.render().encode("utf-8")
    temporary = target.with_name(f"{target.name}.tmp.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        # No fsync of the directory: after a power cut the previous file (or
        # none) is fine, the next interval rewrites it, and it spares the SD card.
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# ---- the HTTP endpoint ----

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost: refuse rather than resolve it


class MetricsServer:
    """``GET /metrics`` over HTTP/1.x on loopback; one request per connection.

    Requests are bounded in size, time and number, and nothing a client sends
    can take the server down: a bad request gets a 4xx or a closed socket. A
    non-loopback address is refused unless ``allow_remote`` says otherwise,
    since the endpoint has neither authentication nor TLS.
    """

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 9464, *,
                 allow_remote: bool = False, max_request_bytes: int = 8192,
                 timeout_s: float = 5.0, max_connections: int = 16) -> None:
        if not allow_remote and not _is_loopback(host):
            raise ConfigError(f"metrics endpoint: refusing to listen on {host!r}, which is "
                              "not a loopback address (allow_remote permits it)",
                              key="metrics.host")
        if not 0 <= port <= 65535:
            raise ConfigError(f"metrics endpoint: invalid port {port}", key="metrics.port")
        self.registry = registry
        self.host = host
        self._port = port
        self.max_request_bytes = max_request_bytes
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.bad_requests = 0

    @property
    def port(self) -> int:
        """The bound port (the kernel's choice when constructed with port 0)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the metrics server is already started")
        self._server = await asyncio.start_server(
            self._handle, self.host.strip("[]"), self._port,
            limit=self.max_request_bytes, reuse_address=True)
        logger.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if len(self._handlers) > self.max_connections:
                await self._respond(writer, 503, b"too many connections\n")
                return
            async with asyncio.timeout(self.timeout_s):
                status, body, head_only = await self._answer(reader)
                await self._respond(writer, status, body, head_only=head_only)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            self.bad_requests += 1
        except Exception:  # whatever a client does, the server keeps serving
            self.bad_requests += 1
            logger.debug("metrics request failed", exc_info=True)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self.bad_requests += 1
            return 431, b"request too large\n", False
        except asyncio.IncompleteReadError as exc:
            # A client that sends bare LF line ends and then half-closes.
            if b"\n\n" not in exc.partial:
                raise
            head = exc.partial
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1]:
            self.bad_requests += 1
            return 400, b"bad request\n", False
        method, target = parts[0], parts[1]
        self.requests += 1
        path = target.split(b"?", 1)[0]
        if path != b"/metrics":
            return 404, b"not found: try /metrics\n", method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return 405, b"method not allowed\n", False
        return 200, self.registry.render().encode("utf-8"), method == b"HEAD"

    async def _respond(self, writer: asyncio.StreamWriter, status: int, body: bytes, *,
                       head_only: bool = False) -> None:
        content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
        headers = [f"HTTP/1.1 {status} {_REASONS[status]}",
                   f"Content-Type: {content_type}",
                   f"Content-Length: {len(body)}",
                   "Connection: close"]
        if status == 405:
            headers.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("ascii"))
        if not head_only:
            writer.write(body)
        await writer.drain()


# ---- gatewayd's own families ----

# Sources the message counters keep series of, each; the rest share one, under
# a name no source has (a source's name holds no "#").
MAX_SOURCE_SERIES = 1024
OTHER_SOURCES = "#other"


class GatewayMetrics:
    """Every metric family gatewayd exposes, and setters that speak its types."""

    def __init__(self, registry: Registry | None = None) -> None:
        r = self.registry = registry if registry is not None else Registry()
        self.build_info = r.gauge("gatewayd_build_info", "gatewayd's version; always 1.",
                                  ["version"])
        self.build_info.set(1, {"version": __version__})
        self.uptime = r.gauge("gatewayd_uptime_seconds", "Seconds since the daemon started.")
        self.loop_lag = r.gauge("gatewayd_event_loop_lag_seconds",
                                "How late the event loop ran its last periodic tick.")
        # Queues, labelled by the channel's name.
        self.queue_depth = r.gauge("gatewayd_queue_depth",
                                   "Units waiting in a queue now.", ["queue"])
        self.queue_peak = r.gauge("gatewayd_queue_peak",
                                  "Highest depth a queue has reached.", ["queue"])
        self.queue_capacity = r.gauge("gatewayd_queue_capacity",
                                      "Bound of a queue, in units.", ["queue"])
        self.queue_dropped = r.counter("gatewayd_queue_dropped_total",
                                       "Items a queue's overflow policy dropped.", ["queue"])
        # Thermal protection.
        self.chunk_size = r.gauge("gatewayd_chunk_size",
                                  "Items per chunk, as set by the thermal controller.")
        self.temperature = r.gauge("gatewayd_temperature_celsius",
                                   "Hottest CPU/SoC thermal zone; absent without one.")
        self.thermal_throttled = r.gauge("gatewayd_thermal_throttled",
                                         "1 while intake is slowed for the hard thermal limit.")
        self.thermal_state = r.gauge("gatewayd_thermal_state",
                                     "1 for the thermal controller's current state.", ["state"])
        self.cpu_throttled = r.gauge("gatewayd_cpu_throttled",
                                     "1 while firmware or the kernel holds the CPU clock down.")
        self.cpu_frequency = r.gauge("gatewayd_cpu_frequency_hertz",
                                     "Current clock of the fastest core.")
        # The worker pool.
        self.workers = r.gauge("gatewayd_workers", "Worker processes alive.")
        self.workers_busy = r.gauge("gatewayd_workers_busy", "Worker processes on a chunk.")
        self.worker_restarts = r.counter("gatewayd_worker_restarts_total",
                                         "Workers started to replace one that was lost.")
        self.worker_timeouts = r.counter("gatewayd_worker_timeouts_total",
                                         "Chunks over their time; their worker was killed.")
        self.worker_deaths = r.counter("gatewayd_worker_deaths_total",
                                       "Workers that died while on a chunk.")
        self.worker_memory_errors = r.counter("gatewayd_worker_memory_errors_total",
                                              "Chunks that ran out of memory under the cap.")
        self.worker_rss = r.gauge("gatewayd_worker_rss_bytes",
                                  "Resident memory of a worker process.", ["pid"])
        # What goes through.
        self.messages_in = r.counter("gatewayd_messages_in_total", "Messages taken in.",
                                     ["source", "kind"])
        self.messages_out = r.counter("gatewayd_messages_out_total", "Messages sent on.",
                                      ["source", "kind"])
        self.dead_letters = r.counter("gatewayd_dead_letters_total",
                                      "Inputs refused or failed, by reason code.", ["reason"])
        self.chunk_latency = r.histogram(
            "gatewayd_chunk_duration_seconds",
            "Time from handing a chunk to a worker to its result, for chunks that "
            "succeeded (timeouts and deaths are counted apart).", CHUNK_LATENCY_BUCKETS)
        self.source_state = r.gauge("gatewayd_source_state",
                                    "1 for an input source's current state, 0 for the others.",
                                    ["source", "state"])
        self._source_states: dict[str, set[str]] = {}
        self._counted_sources: set[str] = set()  # those with series of their own

    def observe_channel(self, name: str, stats: ChannelStats) -> None:
        labels = {"queue": name}
        self.queue_depth.set(stats.depth, labels)
        self.queue_peak.set(stats.peak, labels)
        self.queue_capacity.set(stats.capacity, labels)
        self.queue_dropped.set_total(stats.dropped, labels)

    def observe_pool(self, stats: PoolStats) -> None:
        self.workers.set(stats.alive)
        self.workers_busy.set(stats.busy)
        self.worker_restarts.set_total(stats.restarts)
        self.worker_timeouts.set_total(stats.timeouts)
        self.worker_deaths.set_total(stats.deaths)
        self.worker_memory_errors.set_total(stats.memory_errors)
        # A replaced worker's series goes with it, so dead pids do not pile up.
        self.worker_rss.clear()
        for worker in stats.workers:
            self.worker_rss.set(worker.rss_kb * 1024, {"pid": worker.pid})

    def observe_thermal(self, reading: ThermalReading, decision: ThermalDecision) -> None:
        if reading.celsius is None:
            self.temperature.remove()
        else:
            self.temperature.set(reading.celsius)
        if reading.cpufreq_khz is None:
            self.cpu_frequency.remove()
        else:
            self.cpu_frequency.set(reading.cpufreq_khz * 1000)
        self.cpu_throttled.set(reading.throttled)
        self.chunk_size.set(decision.chunk_size)
        self.thermal_throttled.set(decision.throttle_intake)
        for state in ("normal", "hot", "critical"):
            self.thermal_state.set(state == decision.state, {"state": state})

    def set_source_state(self, source: str, state: str) -> None:
        """Marks ``state`` 1 and every other state seen for ``source`` 0."""
        known = self._source_states.setdefault(source, set())
        known.add(state)
        for each in known:
            self.source_state.set(each == state, {"source": source, "state": each})

    def message_in(self, source: str, kind: str, count: int = 1) -> None:
        self.messages_in.inc(count, {"source": self._source_label(source), "kind": kind})

    def message_out(self, source: str, kind: str, count: int = 1) -> None:
        self.messages_out.inc(count, {"source": self._source_label(source), "kind": kind})

    def _source_label(self, source: str) -> str:
        """``source``, for the first ``MAX_SOURCE_SERIES`` sources; the rest are
        counted together as ``OTHER_SOURCES``. Whoever may publish to the input
        topics names sources: each name a series, for as long as the daemon
        runs, would grow the exposition and the scraper's store without bound."""
        counted = self._counted_sources
        if source in counted:
            return source
        if len(counted) < MAX_SOURCE_SERIES:
            counted.add(source)
            return source
        return OTHER_SOURCES

    def dead_letter(self, reason: str, count: int = 1) -> None:
        self.dead_letters.inc(count, {"reason": reason})

    def observe_chunk(self, seconds: float) -> None:
        self.chunk_latency.observe(seconds)
