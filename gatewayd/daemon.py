"""``gatewayd run``: live sources and sinks around the pipeline, and its lifecycle.

The daemon owns one event loop. Serial ports and MQTT feed the intake; the
intake feeds the pipeline's bounded queue; records go out over MQTT. It starts
in order (workers, pipeline, MQTT, ports), says READY, then runs a one-second
tick (watchdog, status, thermal control) until a signal:

- SIGTERM/SIGINT: stop intake, end open GPS cycles, let chunks in flight
  finish and their records be acknowledged by the broker within the grace
  period, say offline, exit 0. A second signal exits at once.
- SIGHUP: read the configuration again; keep the old one if the new one is
  invalid. Nothing queued is lost.

Backpressure. An MQTT input (QoS 1) is acknowledged only once every record
made from it is acknowledged by the broker or spooled (``gatewayd.results``
sends them): its ticket counts the records still out. The messages of one
drain of the MQTT socket are decoded together. While half a queue's worth of
inputs is in progress, or the intake holds more than the queue's worth of
items, the MQTT client is paused and the broker keeps the rest (see
MqttClient.pause). Serial input cannot wait: each port has a bounded
backlog, and past it the configured policy spills to disk (bounded) or drops
the oldest fix, counted and logged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gatewayd import __version__, geometry, ingest, processing, records
from gatewayd.config import Config, load_config
from gatewayd.errors import DecodeError, GatewayError
from gatewayd.gpsjson import gps_json_fix
from gatewayd.loop import LagProbe
from gatewayd.pipeline import FixBatch, FixItem, Item, Output, Pipeline, PipelineSettings
from gatewayd.replay import zones_dir
from gatewayd.results import ResultSender
from gatewayd.spill import SerialBacklog
from gatewayd.workers import WorkerPool, stop_helper_processes

logger = logging.getLogger(__name__)

__all__ = ["Daemon"]

_INPUT_KINDS = ("gps", "lidar", "polygon")
_OUT_KIND = {"gps_fix": "gps", "lidar_frame": "lidar", "polygon": "polygon"}
# GPS sources named by MQTT topics: whoever may publish to the input topics
# names them, so the daemon keeps the streams of this many (the quietest goes
# first) and makes them small: a decoder's room for this many fixes a call
# (152 bytes each; serial ports keep the default, for 64 KiB blocks).
_MQTT_GPS_SOURCES = 256
_MQTT_FIXES_A_CALL = 16


def _heap_trimmer() -> Any:
    """glibc's malloc_trim(0), or None where the C library has none (musl).
    A burst of large inputs (a LiDAR backlog) leaves the freed buffers in
    the heap, and the process at its peak RSS for good: glibc raises its
    mmap threshold as large blocks are freed, so later ones come from the
    heap. A fixed threshold (MALLOC_MMAP_THRESHOLD_) would return them at
    every free instead, and cost a third of the LiDAR frame rate here."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class _Ticket:
    """One MQTT input awaiting its acknowledgement."""

    __slots__ = ("acked", "client", "holds", "message", "size", "stream", "waiting")

    def __init__(self, client: Any, message: Any, stream: ingest.GpsStream | None = None
                 ) -> None:
        # Acked through the client it came from: after a reconnect on reload,
        # the new client's delivery numbers name other messages.
        self.client = client
        self.message = message
        self.size = len(message.payload)  # what it weighs in the intake's byte budget
        self.holds = 0  # records made from it not yet acknowledged by the broker
        self.waiting = True  # still being decoded, or its data waits in a GPS cycle
        self.stream = stream  # the GPS stream whose open cycle may hold its data
        self.acked = False


class Daemon:
    def __init__(self, config: Config, *, config_path: str | None = None,
                 overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None
                 ) -> None:
        self.config = config
        self._config_path = config_path
        self._overrides = tuple(overrides)
        self._environ = dict(environ if environ is not None else os.environ)
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._signals = 0
        self._started = time.monotonic()
        self._streams = ingest.GpsStreams(_MQTT_GPS_SOURCES, _MQTT_FIXES_A_CALL)
        self._mqtt_inbox: collections.deque[Item] = collections.deque()
        self._arrived: list[Any] = []  # MQTT input of the drain under way
        self._open = 0  # MQTT inputs taken in and not yet acknowledged
        self._open_bytes = 0  # their payloads' bytes
        self._open_peak = 0  # the most _open_bytes since the heap was last trimmed
        self._trim = _heap_trimmer()
        self._arrived_bytes = 0  # those of _arrived
        self._routes: dict[str, tuple[str, str] | None] = {}  # input topic: (kind, source)
        self._backlogs: dict[str, SerialBacklog] = {}
        self._wakeup = asyncio.Event()
        self._ports: dict[str, Any] = {}
        self._port_tasks: dict[str, asyncio.Task[None]] = {}
        self._out_topics: dict[tuple[str, str], str] = {}  # (kind, source): topic
        self._counts: collections.Counter[str] = collections.Counter()
        self._results = ResultSender(timeout_s=config.outbox.publish_timeout_s,
                                     release=self._release, abandon=self._abandon,
                                     counts=self._counts)
        self._mqtt: Any = None
        self._pipeline: Pipeline | None = None
        self._pool: WorkerPool | None = None
        self._notifier: Any = None
        self._state = "starting"
        self._progress = 0
        self._thermal: Any = None  # the last (reading, decision)
        self._sensor: Any = None
        self._controller: Any = None
        self._next_thermal = 0.0
        self._intake_closed = False
        self._zones = contextlib.ExitStack()
        self._outbox: Any = None
        self._audit: Any = None
        self._lag = LagProbe(self._has_work)
        self._in_hand: Item | None = None  # the intake's, waiting for room in the pipeline
        self._metrics: Any = None
        self._rates = (time.monotonic(), 0, 0)  # when, inputs, records
        self._rate_in = self._rate_out = 0.0

    # ---- the lifecycle ----

    async def run(self) -> int:
        from gatewayd.notify import Notifier

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        self._notifier = Notifier(self._environ)
        config = self.config
        self._make_thermal(config)
        from gatewayd.metrics import GatewayMetrics

        self._metrics = GatewayMetrics()
        geometry.check_crs(config.crs.target)
        geometry.check_crs(config.crs.source)
        try:
            with contextlib.ExitStack() as stack:
                zones = stack.enter_context(zones_dir(config))
                self._zones = stack.pop_all()
                async with WorkerPool(
                    size=config.workers, handler="gatewayd.processing:handle",
                    init="gatewayd.processing:init",
                    init_args=(processing.WorkerSettings(zones_dir=zones),),
                    memory_limit_mb=config.pipeline.worker_memory_mb,
                    chunk_timeout_s=config.pipeline.chunk_timeout_s,
                    retries=config.pipeline.retries,
                    on_chunk=self._metrics.observe_chunk,
                ) as pool:
                    self._pool = pool
                    return await self._serve(pool)
        finally:
            self._zones.close()
            stop_helper_processes()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self._notifier is not None:
                self._notifier.close()

    async def _serve(self, pool: WorkerPool) -> int:
        config = self.config
        pipeline = Pipeline(self._pipeline_settings(config), pool, self._emit,
                            self._write_points, emit_many=self._emit_many)
        self._pipeline = pipeline
        runner = asyncio.create_task(pipeline.run(), name="pipeline")
        await self._open_outbox(config)
        await self._open_audit(config)
        await self._connect(config)
        drain = asyncio.create_task(self._drain_outbox(), name="outbox-replay")
        try:
            intake = asyncio.create_task(self._intake(), name="intake")
            self._start_ports(config)
            await self._ports_settled(5.0)
            try:
                await asyncio.wait_for(self._mqtt.wait_ready(), 5.0)
            except TimeoutError:
                logger.warning("MQTT broker %s:%d not reached yet; starting anyway",
                               config.mqtt.host, config.mqtt.port)
            self._state = "running"
            # What start-up made lives as long as the daemon: out of the
            # collector's sight, a full collection scans only what came since
            # (tens of ms less of a stalled loop, every few seconds under load).
            gc.freeze()
            # A flood of small messages keeps thousands of young objects alive
            # (parked messages, tickets, records in flight): at the default 700
            # net allocations a collection, most of each one's scan found them
            # alive, and they were promoted and scanned again.
            gc.set_threshold(10_000, 20, 20)
            self._notifier.ready(self._status_line())
            logger.info("gatewayd %s running: %d workers, %d serial ports, MQTT %s:%d, "
                        "topics under %s/", __version__, pool.size, len(config.ports),
                        config.mqtt.host, config.mqtt.port, config.topic_prefix)
            self._publish_status()
            ticker = asyncio.create_task(self._tick(), name="tick")
            probe = asyncio.create_task(self._lag.run(), name="loop-lag")
            exporter = asyncio.create_task(self._export(), name="metrics")
            while not self._stop.is_set():
                stop = asyncio.create_task(self._stop.wait())
                reload = asyncio.create_task(self._reload.wait())
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                reload.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    await self._do_reload()
            probe.cancel()
            exporter.cancel()
            await asyncio.gather(probe, exporter, return_exceptions=True)
            await self._shutdown(runner, intake, ticker)
        finally:
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
            await self._mqtt.close()
            for backlog in self._backlogs.values():
                await backlog.close()
            if self._outbox is not None:
                await self._outbox.close()
            if self._audit is not None:
                await self._audit.close()
        return 0

    async def _open_audit(self, config: Config) -> None:
        from gatewayd.audit import AuditLog, AuditSettings

        a = config.audit
        if not a.enabled:
            return
        try:
            Path(config.audit_dir).mkdir(parents=True, exist_ok=True)
            self._audit = await AuditLog.open(
                AuditSettings(Path(config.audit_dir), max_bytes=a.max_bytes,
                              keep=a.keep or None, flush_interval_s=a.flush_interval_s,
                              max_pending=a.max_pending),
                on_line=self._publish_lineage if a.publish else None)
        except (OSError, GatewayError, ValueError) as exc:
            logger.error("audit trail in %s not opened: %s", config.audit_dir, exc,
                         extra={"gatewayd_reason": "audit"})

    def _publish_lineage(self, line: bytes) -> None:
        task = asyncio.ensure_future(
            self._results.publish(f"{self.config.topic_prefix}/lineage", line, 1, False))
        self._results.track(task)

        def done(t: asyncio.Future[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                self._counts["lineage_failed"] += 1

        task.add_done_callback(done)

    async def _open_outbox(self, config: Config) -> None:
        from gatewayd.outbox import Outbox, OutboxSettings

        directory = Path(config.gateway.state_dir) / "outbox"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._outbox = Outbox(OutboxSettings(
                directory, max_bytes=config.outbox.max_mb << 20,
                fsync_interval_s=config.outbox.fsync_interval_s))
            found = await self._outbox.open()
        except (OSError, GatewayError) as exc:
            logger.error("no outbox in %s (%s): results the broker does not take stay "
                         "with their inputs at the broker", directory, exc)
            self._outbox = None
            return
        self._results.outbox = self._outbox
        if found.pending:
            logger.info("outbox: %d results from before the restart to send", found.pending)

    async def _drain_outbox(self) -> None:
        """Sends spooled results in order whenever the broker is there."""
        if self._outbox is None:
            return
        timeout = self.config.outbox.publish_timeout_s
        while True:
            await self._outbox.wait_pending()
            await self._results.wait_up()
            await self._mqtt.wait_ready()
            batch = await self._outbox.take(64)
            if not batch:  # skipped as damaged, or settled meanwhile: look again soon
                await asyncio.sleep(0.2)
                continue
            results = await asyncio.gather(
                *(asyncio.wait_for(self._results.publish(e.topic, e.payload, e.qos, e.retain),
                                   timeout)
                  for e in batch), return_exceptions=True)
            for entry, result in zip(batch, results):
                if isinstance(result, BaseException):
                    break  # the link went again: the rest stays spooled, in order
                self._outbox.done(entry)
                self._counts["unspooled"] += 1
            else:
                continue
            await asyncio.sleep(1.0)

    async def _connect(self, config: Config) -> None:
        from gatewayd.mqtt import MqttClient

        # Set before connecting: messages held at the broker may arrive at once.
        self._routes.clear()
        self._arrived.clear()  # read on the old link: the broker sends it again
        self._arrived_bytes = 0
        self._mqtt = MqttClient(self._mqtt_settings(config), self._on_message,
                                subscriptions=[(f"{config.topic_prefix}/in/#", config.mqtt.qos)],
                                on_drained=self._on_drained, on_messages=self._on_messages)
        await self._mqtt.__aenter__()
        self._results.attach(self._mqtt)

    def _on_stop_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals > 1:
            logger.warning("second %s: exiting at once", signal.Signals(sig).name)
            os._exit(1)
        logger.info("%s: stopping", signal.Signals(sig).name)
        self._stop.set()

    async def _shutdown(self, runner: asyncio.Task[None], intake: asyncio.Task[None],
                        ticker: asyncio.Task[None]) -> None:
        assert self._pipeline is not None and self._mqtt is not None
        self._state = "stopping"
        deadline = time.monotonic() + self.config.daemon.grace_s
        self._notifier.stopping(f"draining {len(self._pipeline.queue)} queued items")
        # Stop intake: ports closed, MQTT input no longer taken (what arrives
        # now stays unacknowledged at the broker for the next start). The socket
        # is still read, for the broker's acknowledgements of our results.
        self._intake_closed = True
        self._results.spooling = False
        if self._mqtt.paused:
            self._mqtt.resume()
        await self._stop_ports(list(self._port_tasks))
        now = records.utc_now()
        for stream in self._streams:
            self._accept(stream.source, *stream.flush(now), serial=stream.source in self._backlogs)
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(intake), max(0.1, deadline - time.monotonic()))
        intake.cancel()
        self._pipeline.close()
        try:
            await asyncio.wait_for(asyncio.shield(runner), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            # What is left: MQTT inputs stay at the broker, unacknowledged, for
            # the next start; serial fixes are kept in the spill where there is
            # one, and counted here.
            holding = self._pipeline.holding
            waiting = sum(len(b.items) for b in self._backlogs.values())
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            # The chunks in flight are given up, before the workers are stopped:
            # a chunk whose worker stops would otherwise be dead-lettered now,
            # and its inputs acknowledged. No grace of the pool's own either.
            await self._pipeline.abandon()
            if self._pool is not None:
                await self._pool.close(grace_s=0.0)
            kept, lost = await self._keep_serial()
            logger.warning("grace period over with %d items queued or in chunks and %d "
                           "serial fixes waiting for the queue: MQTT inputs among them stay "
                           "unacknowledged at the broker; %d serial fixes kept for the next "
                           "start, %d lost", holding, waiting, kept, lost)
        await self._results.settle(deadline)
        ticker.cancel()
        self._state = "offline"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._mqtt.publish(
                f"{self.config.topic_prefix}/status", self._status_payload(), 1, True), 2.0)
        self._results.cancel()
        logger.info("stopped: %d records out, %d dead letters", self._counts["records"],
                    self._counts["dead_letters"])

    async def _keep_serial(self) -> tuple[int, int]:
        """For a stop whose grace is over, once the pipeline has stopped: the
        serial fixes whose records are not out, kept for the next start by
        ports that spill. Returns how many were kept and how many lost."""
        assert self._pipeline is not None
        by_port: dict[str, list[Item]] = {name: [] for name in self._backlogs}
        unfinished = self._pipeline.unfinished()
        if self._in_hand is not None:  # newer than those, older than the backlogs'
            unfinished.append(self._in_hand)
        for item in unfinished:
            items = by_port.get(item.origin.source)
            # An MQTT input's item (a ticket among its tokens) is at the broker.
            if items is not None and isinstance(item, FixItem | FixBatch) and \
                    not any(isinstance(t, _Ticket) for t in item.origin.tokens):
                items.append(item)
        kept = lost = 0
        for name, items in by_port.items():
            k, n = await self._backlogs[name].keep(items)
            kept += k
            lost += n
        return kept, lost

    # ---- settings from the configuration ----

    @staticmethod
    def _pipeline_settings(config: Config) -> PipelineSettings:
        return PipelineSettings(
            crs_to=config.crs.target, queue_size=config.pipeline.queue_size,
            chunk_size=config.pipeline.chunk_size, voxel_size=config.lidar.voxel_size_m,
            in_flight=2 * config.workers, zone_lookup=bool(config.zones.file),
            lines=True,  # _emit_many reads a fix record's kind, source and id only
        )

    @staticmethod
    def _mqtt_settings(config: Config) -> Any:
        from gatewayd.mqtt import MqttSettings, Will

        m = config.mqtt
        offline = json.dumps({"state": "offline", "gateway": config.gateway.id}).encode()
        return MqttSettings(
            host=m.host, port=m.port, client_id=config.client_id,
            protocol="5" if m.protocol == "5" else "3.1.1", keepalive=m.keepalive,
            tls=m.tls, ca_file=m.ca_file, cert_file=m.cert_file, key_file=m.key_file,
            username=m.username, password_file=m.password_file,
            session_expiry_s=m.session_expiry_s, receive_maximum=m.receive_maximum,
            reconnect_min_s=m.reconnect_min_s, reconnect_max_s=m.reconnect_max_s,
            will=Will(f"{config.topic_prefix}/status", offline, 1, True),
        )

    # ---- MQTT input ----

    def _on_message(self, message: Any) -> None:
        """Called by the MQTT client in the loop for every input message; the
        messages of one drain of the socket are taken in together at its end."""
        if self._intake_closed:
            return  # stopping: left unacknowledged, the broker sends it again
        self._arrived.append(message)
        self._arrived_bytes += len(message.payload)
        if self._open + len(self._arrived) >= self._window() or \
                self._open_bytes + self._arrived_bytes >= self._byte_budget():
            self._mqtt.pause()  # the client keeps the rest, then the broker

    def _on_messages(self, messages: list[Any]) -> int:
        """``_on_message`` of messages that arrived together: takes them, in
        order, until the intake window is full; returns how many it took
        (the client keeps the rest)."""
        if self._intake_closed:
            return len(messages)  # stopping: left unacknowledged
        arrived = self._arrived
        window = self._window()
        room = window - self._open - len(arrived)
        taken = len(messages) if room >= len(messages) else max(1, room)
        # The byte budget: large payloads (LiDAR frames) stop the run early.
        budget = self._byte_budget() - self._open_bytes - self._arrived_bytes
        weight = 0
        full = False
        for n in range(taken):
            weight += len(messages[n].payload)
            if weight >= budget:
                taken, full = n + 1, True  # as _on_message: one, then the pause
                break
        arrived += messages if taken == len(messages) else messages[:taken]
        self._arrived_bytes += weight
        if full or self._open + len(arrived) >= window:
            self._mqtt.pause()  # the client keeps the rest, then the broker
        return taken

    def _on_drained(self) -> None:
        arrived, self._arrived = self._arrived, []
        self._arrived_bytes = 0
        if arrived and not self._intake_closed:
            self._take(arrived)
            if self._open >= self._window() or self._open_bytes >= self._byte_budget() or \
                    len(self._mqtt_inbox) >= self.config.pipeline.queue_size:
                self._mqtt.pause()

    def _window(self) -> int:
        """How many MQTT inputs may be in progress (taken in, not yet acked):
        the queue's size. Past it the client is paused, and the broker (or the
        client, see MqttClient.pause) holds the rest; it takes input again at
        half of it (``_maybe_resume``).

        Each input's acknowledgement waits for its results' PUBACKs, and the
        broker lets only its Receive Maximum of our publishes (Mosquitto:
        max_inflight_messages, 20 by default) await a PUBACK at once, so the
        window must hold the chunks being made, those in the workers and
        those being published. At half the queue's size (250 by default) it
        did not: the pipeline ran dry while the client was paused, and small
        GPS messages came through about 8 % slower, at about 7 % more CPU a
        message (tests/bench/bench_daemon.py, --ingest --count 60000)."""
        return max(1, self.config.pipeline.queue_size)

    def _byte_budget(self) -> int:
        """The payload bytes of the MQTT inputs in progress past which the
        client is paused (``pipeline.max_open_mb``). Large payloads are
        decoded in this process (a LiDAR frame's points weigh more than its
        bytes) and wait there for the workers: the window alone, in messages,
        would hold hundreds of frames. One input is always taken, whatever
        its size."""
        return self.config.pipeline.max_open_mb << 20

    def _maybe_resume(self) -> None:
        """Takes MQTT input again once the intake has room."""
        if self._mqtt.paused and not self._stop.is_set() and not self._throttled() and \
                len(self._mqtt_inbox) < self.config.pipeline.queue_size // 2 and \
                self._open <= self._window() // 2 and \
                self._open_bytes <= self._byte_budget() // 2:
            self._mqtt.resume()

    def _take(self, messages: list[Any]) -> None:
        """Decodes input messages, in order of arrival. They share one
        reception time: they were read within a millisecond or so."""
        received_at = records.utc_now()
        counted: dict[tuple[str, str], int] = {}
        added = False
        mqtt = self._mqtt
        routes, streams = self._routes, self._streams  # a memo of _route, and the streams
        for n, message in enumerate(messages, 1):
            if not n % 16:
                # The broker's window of our publishes turns only when its
                # PUBACKs are read: not once the whole drain is decoded.
                mqtt.poll()
            route = routes.get(message.topic, ()) or self._route(message.topic)
            if route is None:
                self._refuse(message)
                continue
            kind, source = route
            ticket = _Ticket(mqtt, message, None if kind != "gps" else
                             streams.get(source) or self._mqtt_stream(source))
            self._open += 1
            self._open_bytes += ticket.size
            if self._open_bytes > self._open_peak:
                self._open_peak = self._open_bytes
            counted[route] = counted.get(route, 0) + 1
            try:
                added |= self._take_one(ticket, kind, source, received_at)
            except Exception:
                logger.exception("handling the MQTT input on %r failed; acking it",
                                 message.topic)
                self._ack(ticket)
        self._counts["inputs"] += sum(counted.values())
        for (kind, source), count in counted.items():
            self._metrics.message_in(source, kind, count)
        if added:
            self._wakeup.set()
            if len(self._mqtt_inbox) >= self.config.pipeline.queue_size:
                self._mqtt.pause()  # the broker holds the rest

    def _refuse(self, message: Any) -> None:
        self._counts["refused_topics"] += 1
        logger.warning("refused input on topic %r: expected %s<gps|lidar|polygon>/<source>",
                       message.topic, self.config.topic_prefix + "/in/",
                       extra={"gatewayd_reason": "bad_topic"})
        self._mqtt.ack(message)

    def _route(self, topic: str) -> tuple[str, str] | None:
        """An input topic's (kind, source), or None for a topic we refuse."""
        route = self._routes.get(topic, ())
        if route == ():
            from gatewayd.mqtt import valid_topic_level

            prefix = self.config.topic_prefix + "/in/"
            levels = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
            route = (levels[0], levels[1]) if len(levels) == 2 and \
                levels[0] in _INPUT_KINDS and valid_topic_level(levels[1]) else None
            if len(self._routes) >= 4096:  # sources come and go: the memo stays bounded
                self._routes.clear()
            self._routes[topic] = route
        return route  # type: ignore[return-value]

    def _take_one(self, ticket: _Ticket, kind: str, source: str, received_at: str) -> bool:
        """Decodes one input message into the intake; True if it made items."""
        payload = ticket.message.payload
        limit = self.config.pipeline.max_payload_bytes
        if kind == "gps" and len(payload) <= limit:
            head = payload[:1]
            if head.isspace():
                head = payload.lstrip()[:1]
            if head == b"{":
                # GPS JSON: one item, a fix of its own, which no GPS cycle holds
                # (what _accept and the end of this method do, for one item).
                stream, ticket.stream = ticket.stream, None
                assert stream is not None
                ticket.holds += 1
                ticket.waiting = False
                self._mqtt_inbox.append(self._tpv_item(payload, source, received_at, ticket,
                                                       stream))
                return True
        tokens = (ticket,)
        released: tuple[object, ...] = ()
        if len(payload) > limit:
            items: list[Item] = [ingest.too_large(source, len(payload), limit, received_at,
                                                  tokens)]
        elif kind == "polygon":
            items = ingest.polygon_items(payload, source, records.input_digest(payload),
                                         received_at, ingest.Limits.of(self.config),
                                         tokens)
        elif kind == "lidar":
            items = self._lidar(payload, source, received_at, tokens)
        else:
            assert ticket.stream is not None
            items, released = self._nmea(payload, source, received_at, ticket, ticket.stream)
        self._accept(source, items, released, serial=False, notify=False)
        stream = ticket.stream  # its data may wait in the stream's open cycle
        ticket.waiting = stream is not None and stream.waits_for(ticket)
        self._settle(ticket)
        return bool(items)

    def _lidar(self, payload: bytes, source: str, received_at: str,
               tokens: tuple[object, ...]) -> list[Item]:
        from gatewayd.replay import detect_format

        digest = records.input_digest(payload)
        try:
            fmt = detect_format(payload[:4096])
        except GatewayError as exc:
            return [ingest.dead(source, digest, received_at, "unsupported_format", str(exc),
                                tokens=tokens)]
        if fmt not in ("pcd", "las"):
            return [ingest.dead(source, digest, received_at, "unsupported_format",
                                f"a LiDAR input must be PCD or LAS, not {fmt}", tokens=tokens)]
        return ingest.frame_items(fmt, payload, source, digest, received_at,
                                  ingest.Limits.of(self.config),
                                  crs=None, default_crs=self.config.crs.source,
                                  bbox=self.config.lidar.bbox, tokens=tokens)

    def _nmea(self, payload: bytes, source: str, received_at: str, ticket: _Ticket,
              stream: ingest.GpsStream) -> tuple[list[Item], tuple[object, ...]]:
        self._streams.fed(source, time.monotonic())
        before = stream.decoder.bad_checksums
        items, released = stream.nmea(payload, received_at, ticket)
        bad = stream.decoder.bad_checksums - before
        if bad > 0:
            self._counts["bad_checksums"] += bad
        return items, released

    def _tpv_item(self, payload: bytes, source: str, received_at: str, ticket: _Ticket,
                  stream: ingest.GpsStream) -> Item:
        """A gpsd TPV or OwnTracks message's item: its fix, named by the
        message's bytes (one message, one fix), or its dead letter."""
        digest = records.input_digest(payload)
        try:
            tpv, members = gps_json_fix(payload)
        except DecodeError as exc:
            return ingest.dead(source, digest, received_at, exc.reason, str(exc),
                               tokens=(ticket,))
        return stream.tpv(tpv, received_at, ticket, digest, members)[0]

    def _mqtt_stream(self, source: str) -> ingest.GpsStream:
        """The stream of an MQTT GPS source; where one was forgotten to make
        room for it, its open cycle goes into the intake first."""
        stream, gone = self._streams.mqtt(source)
        if gone is not None:
            self._counts["gps_sources_forgotten"] += 1
            logger.debug("GPS source %s forgotten: more than %d MQTT GPS sources", gone.source,
                         self._streams.mqtt_limit, extra={"gatewayd_source": gone.source})
            if gone.holding or gone.waiting_tokens:
                items, released = gone.flush(records.utc_now())
                self._accept(gone.source, items, released, serial=False)
        return stream

    # ---- tickets: acknowledging inputs once their records are out ----

    def _accept(self, source: str, items: list[Item], released: tuple[object, ...], *,
                serial: bool, notify: bool = True) -> None:
        """Takes decoded items into the intake, counting holds on their tickets."""
        into = self._backlogs[source].add if serial else self._mqtt_inbox.append
        for item in items:
            for token in item.origin.tokens:
                if isinstance(token, _Ticket):
                    token.holds += 1
            into(item)
        for token in released:
            if isinstance(token, _Ticket):
                token.waiting = False
                self._settle(token)
        if items and notify:
            self._wakeup.set()
            if not serial and len(self._mqtt_inbox) >= self.config.pipeline.queue_size:
                self._mqtt.pause()  # the broker holds the rest

    def _settle(self, ticket: _Ticket) -> None:
        if ticket.holds <= 0 and not ticket.waiting:
            self._ack(ticket)

    def _ack(self, ticket: _Ticket) -> None:
        if ticket.acked:
            return
        ticket.acked = True
        self._open -= 1
        self._open_bytes -= ticket.size
        ticket.client.ack(ticket.message)
        self._maybe_resume()

    def _abandon(self, tokens: tuple[object, ...]) -> None:
        """Inputs whose results cannot all be made safe: never acknowledged
        (the broker sends them again), and no longer in progress."""
        for token in tokens:
            if isinstance(token, _Ticket) and not token.acked:
                token.acked = True
                self._open -= 1
                self._open_bytes -= token.size
        self._maybe_resume()

    def _release(self, tokens: Sequence[object]) -> None:
        """Tokens of results now safe: the inputs with nothing else to wait
        for are acknowledged, together."""
        ready = []
        for token in tokens:
            if isinstance(token, _Ticket):
                token.holds -= 1
                if token.holds <= 0:
                    stream = token.stream  # its data may wait in the stream's open cycle
                    token.waiting = stream is not None and stream.waits_for(token)
                    if not token.waiting and not token.acked:
                        token.acked = True
                        ready.append(token)
        if not ready:
            return
        self._open -= len(ready)
        self._open_bytes -= sum(t.size for t in ready)
        # By the client each came through (a reload may have replaced it).
        by_client: dict[Any, list[Any]] = {}
        for t in ready:
            by_client.setdefault(t.client, []).append(t.message)
        for client, messages in by_client.items():
            client.ack_many(messages)
        self._maybe_resume()

    # ---- intake: into the pipeline's bounded queue ----

    async def _intake(self) -> None:
        assert self._pipeline is not None
        pipeline = self._pipeline
        inbox = self._mqtt_inbox
        while True:
            moved = False
            # What fits goes at once, then the intake waits for room; one item
            # a turn while the SoC is at its hard limit. Serial fixes first:
            # they cannot wait at a broker.
            throttled = self._throttled()
            for backlog in list(self._backlogs.values()):
                if backlog.items:
                    items = backlog.items
                    if not throttled:
                        pipeline.offer_many(items)
                    if items:
                        await self._put_first(items)
                    moved = True
                await backlog.refill()
                moved = moved or bool(backlog.items)
            if inbox:
                if not throttled:
                    pipeline.offer_many(inbox)
                if inbox:
                    await self._put_first(inbox)
                moved = True
                self._maybe_resume()
            if self._throttled():
                await asyncio.sleep(0.05)  # the SoC is at its hard limit: slow intake
            if not moved:
                if self._intake_closed and not inbox and not any(self._backlogs.values()):
                    return
                self._wakeup.clear()
                await self._wakeup.wait()

    async def _put_first(self, items: collections.deque[Item]) -> None:
        """Puts the first of ``items`` in the pipeline, waiting for room. While
        it waits the item is in hand (``_in_hand``), where a stop that cancels
        the intake meanwhile still finds it (``_keep_serial``)."""
        assert self._pipeline is not None
        item = self._in_hand = items.popleft()
        await self._pipeline.put(item)
        self._in_hand = None

    def _throttled(self) -> bool:
        return bool(self._thermal and self._thermal[1].throttle_intake)

    # ---- serial ports ----

    def _start_ports(self, config: Config) -> None:
        from gatewayd.serialport import PortSettings, SerialPort

        spill_dir = Path(config.gateway.state_dir) / "spill"
        for spec in config.ports:
            if spec.name in self._ports:
                continue
            port = SerialPort(PortSettings(spec.name, spec.device, spec.baud),
                              self._on_serial_data, self._on_port_state)
            self._ports[spec.name] = port
            # A port removed and added again by reloads keeps its backlog.
            backlog = self._backlogs.get(spec.name)
            if backlog is None:
                backlog = self._backlogs[spec.name] = SerialBacklog(
                    spec.name, config.serial.backlog, config.pipeline.overflow, spill_dir,
                    config.serial.spill_max_mb << 20, config.serial.spill_fsync_interval_s,
                    self._wakeup.set, held_dir=spill_dir.with_name("spill-held"))
            self._port_tasks[spec.name] = asyncio.create_task(
                self._run_port(port, backlog), name=f"serial-{spec.name}")

    @staticmethod
    async def _run_port(port: Any, backlog: SerialBacklog) -> None:
        await backlog.open()  # before the first byte: what was spilled goes first
        await port.run()

    async def _ports_settled(self, timeout: float) -> None:
        """Waits (bounded) until every port is open or waiting with a reason:
        READY must not come while a port is still being opened."""
        deadline = time.monotonic() + timeout
        while any(p.status.state in ("opening", "autobaud") for p in self._ports.values()):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)

    async def _stop_ports(self, names: list[str]) -> None:
        tasks = [self._port_tasks.pop(n) for n in names if n in self._port_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for name in names:
            self._ports.pop(name, None)

    def _on_serial_data(self, name: str, data: bytes) -> None:
        self._streams.fed(name, time.monotonic())
        items, _ = self._streams.serial(name).nmea(data, records.utc_now())
        if items:
            self._counts["serial_fixes"] += len(items)
            self._metrics.message_in(name, "gps", len(items))
        self._accept(name, items, (), serial=True)

    def _on_port_state(self, status: Any) -> None:
        logger.info("serial %s: %s%s", status.name, status.state,
                    f" ({status.reason})" if status.reason else "",
                    extra={"gatewayd_source": status.name})

    # ---- results out ----

    async def _emit(self, record: Any, tokens: tuple[object, ...]) -> None:
        await self._emit_many([(record, tokens)])

    async def _emit_many(self, outputs: list[Output]) -> None:
        """Publishes a chunk's records, in order."""
        topics = self._out_topics
        sends: list[tuple[str, bytes, tuple[object, ...], str]] = []
        out: dict[tuple[str, str], int] = {}
        for record, tokens in outputs:
            if isinstance(record, records.LineRecord):  # a fix: its line is all there is
                kind, source, record_id = record.kind, record.source, record.id
                line = record.line
            else:
                kind, source, record_id = record["kind"], record["source"], record["id"]
                line = None
            topic = topics.get((kind, source))
            if topic is None:
                if len(topics) >= 4096:  # sources come and go: the memo stays bounded
                    topics.clear()
                prefix = self.config.topic_prefix
                topic = topics[(kind, source)] = f"{prefix}/dead/{source}" \
                    if kind == "dead_letter" else \
                    f"{prefix}/out/{_OUT_KIND.get(kind, kind)}/{source}"
            if kind == "dead_letter":
                self._counts["dead_letters"] += 1
                assert not isinstance(record, records.LineRecord)
                self._metrics.dead_letter(record["reason"])
            else:
                key = (source, _OUT_KIND.get(kind, kind))
                out[key] = out.get(key, 0) + 1
            if self._audit is not None:
                from gatewayd.audit import lineage_event

                self._audit.append(lineage_event(
                    record.fields() if isinstance(record, records.LineRecord) else record))
            sends.append((topic, (line if line is not None else records.dumps(record)).encode(),
                          tokens, record_id))
        self._results.send_many(sends)
        self._counts["records"] += len(outputs)
        self._progress += len(outputs)
        for (source, kind), count in out.items():
            self._metrics.message_out(source, kind, count)

    async def _write_points(self, record: dict[str, Any], frame: Any) -> None:
        from gatewayd.pcd import encode_pcd

        topic = f"{self.config.topic_prefix}/out/lidar/{record['source']}/pcd"
        self._results.send(topic, encode_pcd(frame), (), f"{record['id']}/pcd")

    # ---- the tick: watchdog, status, thermal, idle GPS cycles ----

    async def _tick(self) -> None:
        from gatewayd.notify import WatchdogGate

        interval = self._notifier.watchdog_interval
        stall = self.config.daemon.watchdog_stall_s or \
            max(3 * (interval or 1), self.config.pipeline.chunk_timeout_s + 5)
        gate = WatchdogGate(interval, stall_limit=stall, now=time.monotonic()) \
            if interval else None
        last_status = 0.0
        seen = self._progress
        while True:
            await asyncio.sleep(min(1.0, interval or 1.0))
            now = time.monotonic()
            self._flush_idle_streams(now)
            self._control_thermal(now)
            await self._trim_heap()
            if gate is not None:
                progressed = self._progress != seen
                seen = self._progress
                if gate.tick(now, progressed=progressed, idle=self._idle()):
                    self._notifier.watchdog()
            if now - last_status >= self.config.daemon.status_interval_s:
                last_status = now
                self._measure_rates(now)
                self._observe()
                self._notifier.status(self._status_line())
                self._publish_status()

    async def _trim_heap(self) -> None:
        """Gives the heap back to the system after a burst of MQTT input
        that filled half the byte budget, once it is done (see
        ``_heap_trimmer``)."""
        if 2 * self._open_peak >= self._byte_budget() and not self._open and \
                not self._has_work():
            self._open_peak = 0
            if self._trim is not None:
                await asyncio.to_thread(self._trim, 0)  # a few ms: off the loop

    def _has_work(self) -> bool:
        """Whether the pipeline or the MQTT intake holds anything (the lag
        probe's view: cheaper than ``_idle``, which asks the workers)."""
        return bool(self._mqtt_inbox) or (self._pipeline is not None and
                                         not self._pipeline.idle)

    def loop_lag_ms(self) -> dict[str, float]:
        return self._lag.figures_ms()

    def _measure_rates(self, now: float) -> None:
        when, inputs, out = self._rates
        if now > when:
            self._rate_in = (self._counts["inputs"] + self._counts["serial_fixes"] - inputs) / \
                (now - when)
            self._rate_out = (self._counts["records"] - out) / (now - when)
        self._rates = (now, self._counts["inputs"] + self._counts["serial_fixes"],
                       self._counts["records"])

    def _observe(self) -> None:
        """The figures of the metrics exposition, brought up to date."""
        m = self._metrics
        if m is None or self._pipeline is None or self._pool is None:
            return
        m.uptime.set(time.monotonic() - self._started)
        m.observe_channel("pipeline", self._pipeline.queue.stats())
        m.observe_pool(self._pool.stats())
        m.chunk_size.set(self._pipeline.chunk_size)
        if self._thermal is not None:
            m.observe_thermal(*self._thermal)
        if self._lag.lags:
            m.loop_lag.set(max(self._lag.lags))
        for name, port in self._ports.items():
            m.set_source_state(name, port.status.state)
        if self._mqtt is not None:
            m.set_source_state("mqtt", self._mqtt.state)

    async def _export(self) -> None:
        """The textfile for node_exporter, and /metrics on loopback, if configured."""
        from gatewayd.metrics import MetricsServer, write_textfile

        cfg = self.config.metrics
        server = None
        if cfg.http:
            server = MetricsServer(self._metrics.registry, cfg.host, cfg.port,
                                   allow_remote=cfg.allow_remote)
            try:
                await server.start()
            except (OSError, GatewayError) as exc:
                logger.error("metrics endpoint %s:%d not started: %s", cfg.host, cfg.port, exc)
                server = None
        try:
            while True:
                if cfg.textfile:
                    self._observe()
                    try:
                        await asyncio.to_thread(write_textfile, self._metrics.registry,
                                                cfg.textfile)
                    except OSError as exc:
                        logger.warning("metrics textfile %s: %s", cfg.textfile, exc)
                await asyncio.sleep(cfg.textfile_interval_s)
        finally:
            if server is not None:
                await server.close()

    def _idle(self) -> bool:
        assert self._pipeline is not None and self._pool is not None
        return self._pipeline.idle and not self._pool.stats().busy and not self._mqtt_inbox

    def _flush_idle_streams(self, now: float) -> None:
        for stream in self._streams.quiet(now, self.config.daemon.gps_idle_flush_s):
            items, released = stream.flush(records.utc_now())
            self._accept(stream.source, items, released, serial=stream.source in self._backlogs)

    def _control_thermal(self, now: float) -> None:
        """Shrinks chunks while the SoC is hot, and slows intake at its limit."""
        if self._sensor is None or now < self._next_thermal:
            return
        self._next_thermal = now + self.config.thermal.interval_s
        reading = self._sensor.read()
        decision = self._controller.update(reading.celsius, now)
        self._thermal = (reading, decision)
        if decision.changed and self._pipeline is not None:
            self._pipeline.chunk_size = decision.chunk_size
            logger.warning("thermal: %s; chunk size %d%s", decision.reason, decision.chunk_size,
                           ", intake slowed" if decision.throttle_intake else "",
                           extra={"gatewayd_reason": f"thermal_{decision.state}"})
            self._notifier.status(self._status_line())

    def _make_thermal(self, config: Config) -> None:
        from gatewayd.thermal import ChunkController, ThermalSensor

        t = config.thermal
        self._sensor = ThermalSensor(t.sysfs_root) if t.enabled else None
        self._controller = ChunkController(
            base=config.pipeline.chunk_size, minimum=config.pipeline.min_chunk_size,
            soft_c=t.soft_c, hard_c=t.hard_c, hysteresis_c=t.hysteresis_c, hold_s=t.hold_s,
            clock=time.monotonic)
        self._next_thermal = 0.0

    # ---- reload ----

    async def _new_zones(self, config: Config) -> None:
        """Workers are replaced, as they finish their chunks, by ones with the
        new zone index; the old index files go once nothing maps them anew."""
        assert self._pool is not None
        stack = contextlib.ExitStack()
        try:
            # Decoding and repairing a large zone file takes a while: not in
            # the event loop, whose ticks feed the watchdog.
            zones = await asyncio.to_thread(stack.enter_context, zones_dir(config))
        except (OSError, GatewayError) as exc:
            stack.close()
            logger.error("reload: zones from %s not loaded (%s); the old zones stay",
                         config.zones.file, exc)
            return
        old, self._zones = self._zones, stack
        self._pool.set_memory_limit(config.pipeline.worker_memory_mb)
        self._pool.reconfigure((processing.WorkerSettings(zones_dir=zones),))
        old.close()  # workers map their zone files at start: unlinking is safe
        logger.info("reload: %s zones; workers being replaced", config.zones.file or "no")

    async def _do_reload(self) -> None:
        self._notifier.reloading()
        try:
            new = load_config(self._config_path, self._overrides, self._environ)
            geometry.check_crs(new.crs.target)
            geometry.check_crs(new.crs.source)
        except GatewayError as exc:
            logger.error("reload refused, the old configuration stays: %s", exc)
            self._notifier.ready(self._status_line())
            return
        old, self.config = self.config, new
        self._out_topics.clear()  # the topic prefix may have changed
        assert self._pipeline is not None and self._pool is not None
        self._pipeline.settings = self._pipeline_settings(new)
        self._pipeline.chunk_size = new.pipeline.chunk_size
        self._pipeline.queue.capacity = new.pipeline.queue_size
        self._pool.set_timeout(new.pipeline.chunk_timeout_s)
        self._results.timeout_s = new.outbox.publish_timeout_s
        self._make_thermal(new)
        gone = [p.name for p in old.ports if p not in new.ports]
        await self._stop_ports(gone)
        self._start_ports(new)
        if new.zones != old.zones or new.pipeline.worker_memory_mb != \
                old.pipeline.worker_memory_mb:
            await self._new_zones(new)
        if new.mqtt != old.mqtt or new.topic_prefix != old.topic_prefix or \
                new.client_id != old.client_id:
            # Inputs not yet acknowledged on the old link come again on the
            # new one (same session); their records keep their ids.
            self._results.detach()
            await self._mqtt.close()
            await self._connect(new)
            logger.info("MQTT reconnected to %s:%d under %s/", new.mqtt.host, new.mqtt.port,
                        new.topic_prefix)
        logger.info("configuration reloaded")
        self._notifier.ready(self._status_line())

    # ---- status ----

    def status(self) -> dict[str, Any]:
        pipeline, pool = self._pipeline, self._pool
        q = pipeline.queue.stats() if pipeline else None
        pool_stats = pool.stats() if pool else None
        return {
            "state": self._state,
            "gateway": self.config.gateway.id,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "sources": {name: {"kind": "serial", "state": p.status.state,
                               "reason": p.status.reason, "baud": p.status.baud,
                               **self._backlogs[name].stats()}
                        for name, p in self._ports.items()},
            "mqtt": self._mqtt.state if self._mqtt else "closed",
            "mqtt_intake": self._mqtt_intake(),
            "queue": {"depth": q.depth, "peak": q.peak, "capacity": q.capacity}
            if q else None,
            "chunk_size": pipeline.chunk_size if pipeline else None,
            "temperature_c": self._thermal[0].celsius if self._thermal else None,
            "thermal": self._thermal[1].state if self._thermal else None,
            "workers": {"alive": pool_stats.alive, "restarts": pool_stats.restarts,
                        "timeouts": pool_stats.timeouts} if pool_stats else None,
            "dead_letters": dict(pipeline.stats.dead_letters) if pipeline else {},
            "rates": {"in_per_s": round(self._rate_in, 1), "out_per_s": round(self._rate_out, 1)},
            "outbox": self._outbox_status(),
            "loop_lag_ms": self.loop_lag_ms(),
            "counts": dict(self._counts),
        }

    def _mqtt_intake(self) -> dict[str, Any] | None:
        """What the MQTT client holds of the input now, and its counts since it
        was made (at start, and at a reload that changes the MQTT settings):
        what it left with the broker, its reconnects. A gateway that keeps
        falling behind shows it here."""
        if self._mqtt is None:
            return None
        m = self._mqtt.stats()
        return {"received": m.received, "acked": m.acked, "unacked": m.unacked,
                "paused": m.paused, "parked": m.parked, "parked_bytes": m.parked_bytes,
                "left_at_broker": m.left_at_broker, "dropped_qos0": m.dropped_qos0,
                "reconnects": m.reconnects}

    def _outbox_status(self) -> dict[str, int] | None:
        if self._outbox is None:
            return None
        o = self._outbox.stats()
        return {"pending": o.pending, "evicted": o.evicted, "failed": o.failed,
                "corrupt_skipped": o.corrupt_skipped, "torn_tails": o.torn_tails,
                "bytes": o.bytes}

    def _status_payload(self) -> bytes:
        return json.dumps(self.status()).encode()

    def _status_line(self) -> str:
        from gatewayd.notify import status_line

        q = self._pipeline.queue.stats() if self._pipeline else None
        down = {n: p.status.reason or p.status.state for n, p in self._ports.items()
                if p.status.state != "open"}
        if self._mqtt is not None and not self._mqtt.connected:
            down["mqtt"] = self._mqtt.last_error or self._mqtt.state
        return status_line(temperature_c=self._thermal[0].celsius if self._thermal else None,
                           queue_depth=q.depth if q else 0,
                           queue_capacity=q.capacity if q else 0,
                           chunk_size=self._pipeline.chunk_size if self._pipeline else None,
                           in_rate=self._rate_in, out_rate=self._rate_out,
                           down=down)

    def _publish_status(self) -> None:
        payload = self._status_payload()
        task = asyncio.create_task(self._results.publish(f"{self.config.topic_prefix}/status",
                                                 payload, 1, True))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        path = Path(self.config.daemon.runtime_dir) / "status.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(payload)
            tmp.replace(path)
        except OSError:
            pass
