"""The MQTT edge: paho-mqtt driven by the event loop, with manual, ordered acks.

MQTT input (GPS, LiDAR, polygon updates) enters the pipeline here, and results,
status and dead letters leave through here. ``MqttClient`` runs paho's client
inside the running event loop (uvloop or asyncio) through paho's socket
callbacks: the socket is watched with ``add_reader``/``add_writer`` and a tick
calls ``loop_misc()`` once a second for keepalive. There is no network thread.
Only the blocking TCP connect and TLS handshake of ``reconnect()`` run in the
default executor, while nothing else touches the paho client.

Draining. paho 2.x ``loop_read()`` reads one packet per call, whatever its
argument says, and reads until the socket is empty while publishes of ours
are queued: hundreds of packets, and their handling, in one turn of the
loop. The client here is ``gatewayd._paho.LeanClient``: reads are buffered,
and the plain packets of ingest (PUBLISH and PUBACK without properties) skip
paho's per-packet objects. A readable event drains packet by packet, up to
``_read_batch``; the rest waits for the next turn, so one busy socket cannot
starve the others. A run of such packets read at once is handed over
together: its messages to ``on_messages`` in one call, and the ends of our
publishes it acknowledges to ``send_many``'s ``done_many``. Bytes left in
the read buffer or inside the TLS layer (``SSLSocket.pending()``) announce
no readiness, so the drain, ``resume()`` and the batch cap schedule the next
drain themselves. ``on_drained`` tells the owner a drain is over, so that it
can handle the drain's messages together. Measured by
tests/bench/bench_mqtt_client.py.

Writing. What paho queues is written at the end of the turn that queued it
(queued packets joined into one send), and during a drain as soon as PUBACKs
let publishes out; the writer is watched only while the socket is full. The
socket has TCP_NODELAY: Nagle's algorithm would hold a small publish back
until the broker acknowledged the bytes before it. The broker's Receive
Maximum bounds our QoS 1 publishes awaiting a PUBACK (Mosquitto: its
``max_inflight_messages``, 20 by default), so the publish rate is at most
that window over the time a PUBACK waits to be read: publishes that find
the window full read the socket now and then, rather than waiting for the
loop to turn to it. ``send_many`` queues a batch (a chunk's results) with
one such check and read for the whole batch.

Acknowledgements. The client is made with ``manual_ack=True``: a QoS 1 message
is PUBACKed only after the owner calls ``ack(message)``, once the message's
results are safe. MQTT requires PUBACKs in the order the PUBLISHes arrived, so
acks go through an ordered queue: ``ack()`` marks a delivery done and PUBACKs
go out for the longest done prefix of the queue (``ack_many()`` marks many,
and their PUBACKs go out in one write). A message acked early waits
for the older ones; one never acked holds back every later PUBACK. When the
link drops, the queue is forgotten: the broker sends the unacknowledged
messages again (with DUP set) on the persistent session, so delivery is at
least once and the owner must tolerate duplicates. Acks of deliveries from a
link that is gone are ignored: their packet ids may already name other
messages.

Flow control. ``pause()`` stops handing messages over and ``resume()`` starts
it again; with manual acks the unread and unacknowledged messages wait at
the broker. While our publishes await their PUBACK, a paused client reads
on (else an owner that waits for its results to be published could never
resume), and keeps what arrives meanwhile, in order, for ``resume()``. How
many unacknowledged QoS 1 messages Mosquitto 2.0 sends a client at once
(mosquitto.conf(5)):

- to an MQTT 5 client: the Receive Maximum of its CONNECT (set from
  ``receive_maximum``);
- to an MQTT 3.1.1 client: the broker-wide ``max_inflight_messages``, 20 by
  default, which the client cannot change. With manual acks this window, not
  the network, bounds throughput: at most ``window / ack latency`` messages a
  second. Prefer MQTT 5, or raise ``max_inflight_messages`` on the broker.

Past the window the broker queues a client's QoS 1/2 messages up to
``max_queued_messages`` (1000 by default) and silently drops the rest, also
while the client is away: size it for the longest absence to be bridged.
Mosquitto advertises ``max_inflight_messages`` to MQTT 5 clients as its own
Receive Maximum; paho does not enforce it, so ``max_inflight`` is lowered to it
when the CONNACK carries it (also for what is sent again after a reconnect).
Mosquitto 2.0.11 (Debian 12) keeps our Receive Maximum only until its quota
for us has run out once: the next PUBACK of ours lets everything it queued
for us out at once. A paused client then keeps what arrives (above), up to
``max_parked_bytes`` (payloads and a little for each message; one message
at least), in order, for the owner to take at its own pace. What comes
past that is left with the broker: not handed over and not acknowledged,
nor anything after it on the link; once all before it are acknowledged,
the client ends the link cleanly and connects again at once, and the
broker sends those messages again. A backlog of LiDAR frames at the broker
thus costs this process ``max_parked_bytes``, not the backlog's size.

Sessions. The session is persistent (clean_session=False for 3.1.1,
clean_start=False with a Session Expiry Interval for 5) under a stable client
id, so QoS 1 input waits at the broker while the daemon is away, and our
unacknowledged publishes are sent again after a reconnect. Subscriptions are
made again on every connect. A background task connects and reconnects with
jittered, capped exponential backoff and never raises.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import operator
import os
import random
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gatewayd._paho import LeanClient
from gatewayd.errors import ConfigError, GatewayError

logger = logging.getLogger(__name__)

__all__ = [
    "Message",
    "MqttClient",
    "MqttError",
    "MqttSettings",
    "MqttStats",
    "Will",
    "valid_topic_level",
]

State = Literal["closed", "connecting", "connected", "waiting"]
_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_AGAIN = MQTTErrorCode.MQTT_ERR_AGAIN


class MqttError(GatewayError):
    """The broker or the link to it failed a request."""

    reason = "mqtt"


def valid_topic_level(text: str) -> bool:
    """Whether ``text`` may serve as one topic level naming a source: non-empty,
    printable, at most 64 characters, without ``/``, ``+``, ``#`` or NUL."""
    return (
        0 < len(text) <= 64
        and text.isprintable()
        and not any(c in text for c in "/+#\0")
    )


# ---- settings and messages ----

@dataclass(frozen=True, slots=True)
class Will:
    """The Last Will the broker publishes when the link drops without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int = 1883
    client_id: str = "gatewayd"
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = 30
    tls: bool = False
    ca_file: str | os.PathLike[str] | None = None
    cert_file: str | os.PathLike[str] | None = None
    key_file: str | os.PathLike[str] | None = None
    username: str | None = None
    password_file: str | os.PathLike[str] | None = None  # never the password itself
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 1000  # MQTT 5: unacked messages the broker may send us
    # Messages read while paused, kept up to this size; past it, left with the broker.
    max_parked_bytes: int = 16 << 20
    max_inflight: int = 20  # our QoS 1 publishes awaiting PUBACK at once
    max_queued: int = 10_000  # our QoS 1 publishes held in all, sent or not
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    will: Will | None = None
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"mqtt.{key}: {why}", key=f"mqtt.{key}")

        if self.protocol not in ("5", "3.1.1"):
            raise bad("protocol", f"must be '5' or '3.1.1', not {self.protocol!r}")
        if not self.host:
            raise bad("host", "is empty")
        if not 0 < self.port < 65536:
            raise bad("port", f"{self.port} is out of range")
        if not self.client_id:
            raise bad("client_id", "a persistent session needs a stable client id")
        if not 1 <= self.receive_maximum <= 65535:
            raise bad("receive_maximum", "must be within 1..65535")
        if self.max_parked_bytes < 0:
            raise bad("max_parked_bytes", "cannot be negative")
        if self.max_inflight < 0:
            raise bad("max_inflight", "cannot be negative")
        if not 1 <= self.max_queued <= 65535:  # each needs a packet id of its own
            raise bad("max_queued", "must be within 1..65535")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise bad("reconnect_min_s", "needs 0 < reconnect_min_s <= reconnect_max_s")
        if self.password_file is not None and self.username is None:
            raise bad("password_file", "a password needs a username")


class Message(NamedTuple):
    """One received PUBLISH. ``delivery`` is the client's number for it, which
    ``MqttClient.ack`` uses; it is 0 for QoS 0, which needs no ack."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    dup: bool = False
    delivery: int = 0


# Message(...) without the Python frame of a named tuple's __new__.
_new_message = functools.partial(tuple.__new__, Message)


@dataclass(frozen=True, slots=True)
class MqttStats:
    state: State
    last_error: str | None
    received: int
    published: int  # our publishes the broker acknowledged (QoS 0: written)
    acked: int  # PUBACKs we sent
    unacked: int  # received QoS 1/2 messages awaiting their PUBACK now
    pending_publishes: int
    reconnects: int
    paused: bool
    parked: int  # messages read while paused, waiting to be handed over
    parked_bytes: int  # what they weigh against max_parked_bytes
    left_at_broker: int  # messages past max_parked_bytes, for the broker to send again
    dropped_qos0: int  # QoS 0 messages past max_parked_bytes: gone


class _Delivery:
    __slots__ = ("done", "mid", "qos", "shed")

    def __init__(self, mid: int, qos: int) -> None:
        self.mid = mid
        self.qos = qos
        self.done = False
        self.shed = False  # left with the broker: never acked on this link


# What becomes of a publish: ``done(token, None)`` once the broker has it
# (QoS 1: its PUBACK; QoS 0: written), ``done(token, error)`` if it cannot be.
PublishDone = Callable[[Any, "MqttError | None"], None]
# A lean publish's token in the LeanClient: the caller's done and token, and
# send_many's done_many (None: ended alone).
_LeanEnd = tuple[PublishDone, Any, "Callable[[list[Any]], None] | None"]
_Held = tuple[str, bytes, int, bool, PublishDone, Any]
_PARK_COST = 200  # bytes a parked message costs beside its payload (about)
_PAYLOAD = operator.attrgetter("payload")


def _end(done: PublishDone, token: Any, error: MqttError | None) -> None:
    try:
        done(token, error)
    except Exception:
        logger.exception("handling the end of an MQTT publish failed")


def _parked_bytes(messages: list[Message]) -> int:
    """What ``messages`` count for in ``MqttClient._parked_bytes``."""
    return sum(map(len, map(_PAYLOAD, messages))) + _PARK_COST * len(messages)


def _end_many(many: Any, tokens: list[Any]) -> None:
    try:
        many(tokens)
    except Exception:
        logger.exception("handling the end of MQTT publishes failed")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _read_password(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise MqttError(f"cannot read the MQTT password file {os.fspath(path)!r}",
                        native=exc.strerror) from None
    except UnicodeDecodeError:
        raise MqttError(f"the MQTT password file {os.fspath(path)!r} is not UTF-8") from None
    return text.removesuffix("\n").removesuffix("\r")


# ---- the client ----

class MqttClient:
    """An MQTT connection owned by the event loop; an async context manager,
    reusable but not re-entrant.

    ``on_message`` is called in the loop for every PUBLISH received; QoS 1/2
    messages stay unacknowledged until ``ack()``. If it raises, the error is
    logged and the message acked, so that one bad message cannot hold back
    every later PUBACK. ``on_messages``, if given, takes the place of
    ``on_message`` for messages that arrive together (a run of packets read
    at once, or parked ones handed over): it gets them in order and returns
    how many it took; the client keeps the rest, as it keeps what arrives
    while paused, and an owner that takes fewer than all pauses the client.
    If it raises, the error is logged and all of them acked. ``on_drained``,
    if given, is called once after each drain of the socket that delivered
    messages: an owner that gathers the messages of a drain in
    ``on_message`` handles them there, together.
    """

    # Packets read per readable event at most: each costs the owner its
    # on_message too, and 100 of them keep a turn of the loop near 20 ms.
    _read_batch = 100
    _poll_batch = 32  # packets read at most while a publish waits for the window
    _poll_every = 8  # publishes queued behind a full window between two such reads
    _tick_s = 1.0
    _paho_class: type[paho.Client] = LeanClient

    def __init__(
        self,
        settings: MqttSettings,
        on_message: Callable[[Message], None],
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_drained: Callable[[], None] | None = None,
        on_messages: Callable[[list[Message]], int] | None = None,
    ) -> None:
        self.settings = settings
        self._on_message_cb = on_message
        self._on_messages_cb = on_messages
        self._on_drained_cb = on_drained
        self._delivered = False  # messages handed over since on_drained was last called
        self._flush_due = False  # a write of what paho queued is scheduled
        self._draining = False  # reading packets now (a drain or a poll)
        self._drain_due = False  # a drain is scheduled after a poll
        self._queued_since_poll = 0
        self._subscriptions = list(subscriptions)
        self._paho: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._entered = False
        self._tasks: list[asyncio.Task[None]] = []
        self._state: State = "closed"
        self._last_error: str | None = None
        self._logged_error: str | None = None
        # the socket paho opened, and whether the loop watches it
        self._opened: socket.socket | None = None
        self._sock: socket.socket | None = None
        self._fd = -1
        self._tls_pending: Callable[[], int] | None = None
        self._reading = False
        self._writing = False
        self._paused = False
        self._connect_busy = False
        # link events
        self._connack: asyncio.Future[str | None] | None = None
        self._link_down = asyncio.Event()
        self._down_reason = ""
        self._ready = asyncio.Event()
        self._sub_mid: int | None = None
        # deliveries awaiting their PUBACK, oldest first
        self._unacked: collections.deque[_Delivery] = collections.deque()
        self._parked: collections.deque[Message] = collections.deque()  # read while paused
        self._parked_bytes = 0  # their payloads, and _PARK_COST each
        # Messages past max_parked_bytes are left with the broker: from the
        # first of them on, none is handed over until a new link (see _shed).
        self._shedding = False
        self._shed_now = 0  # how many on this link
        self._resyncing = False  # the link is being ended to have them sent again
        self._resync_task: asyncio.Task[None] | None = None
        self._settling = False  # a PINGREQ's round trip before a DISCONNECT is under way
        self._acked_settled = 0  # the PUBACKs sent when the last one ended
        self._by_delivery: dict[int, _Delivery] = {}
        self._delivery_ids = itertools.count(1)
        # our publishes through paho's own path (QoS 0 and 2), awaiting the
        # broker, and publishes held while a connect is under way; QoS 1 ones
        # wait in the LeanClient (lean_pending)
        self._pending: dict[int, tuple[PublishDone, Any, int]] = {}
        self._topics: dict[bytes, str] = {}  # topics received, decoded
        self._held: collections.deque[_Held] = collections.deque()
        self._counts = dict(received=0, published=0, acked=0, reconnects=0, connects=0,
                            left_at_broker=0, dropped_qos0=0)

    def __repr__(self) -> str:
        s = self.settings
        return (f"MqttClient({s.client_id!r}, {s.host}:{s.port}, MQTT {s.protocol}, "
                f"{self._state})")

    # ---- what the owner sees ----

    @property
    def state(self) -> State:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state == "connected"

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def pending_publishes(self) -> int:
        """Our publishes not yet acknowledged by the broker (QoS 0: not yet written)."""
        return len(self._pending) + len(self._held) + self._lean_pending()

    def _lean_pending(self) -> int:
        client = self._paho
        return client.lean_pending if isinstance(client, LeanClient) else 0

    def stats(self) -> MqttStats:
        c = self._counts
        return MqttStats(self._state, self._last_error, c["received"], c["published"],
                         c["acked"], len(self._unacked), self.pending_publishes,
                         c["reconnects"], self._paused, len(self._parked), self._parked_bytes,
                         c["left_at_broker"], c["dropped_qos0"])

    async def wait_ready(self) -> None:
        """Waits until connected and the subscriptions are acknowledged."""
        await self._ready.wait()

    # ---- lifecycle ----

    async def __aenter__(self) -> MqttClient:
        if self._entered:
            raise RuntimeError("an MqttClient is not re-entrant")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._paho = self._build()
        self._entered = True
        self._link_down = asyncio.Event()
        self._ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._connect_forever(), name="gatewayd-mqtt-connect"),
            asyncio.create_task(self._tick(), name="gatewayd-mqtt-tick"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnects cleanly (so no Last Will) and stops the background tasks.
        Publishes still unacknowledged fail with MqttError. A TCP connect under
        way is waited for, at most ``connect_timeout_s``."""
        if not self._entered:
            return
        tasks = [*self._tasks, self._resync_task] if self._resync_task else self._tasks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self._resync_task = None
        await self._drop_link()
        error = MqttError("the MQTT client closed before the broker acknowledged the publish")
        ends = [(done, token) for done, token, _ in self._pending.values()]
        ends += [(done, token) for *_, done, token in self._held]
        if isinstance(self._paho, LeanClient):
            ends += [(done, token) for done, token, _ in
                     (entry.token for entry in self._paho.lean_reset())]
        self._pending.clear()
        self._held.clear()
        for done, token in ends:
            _end(done, token, error)
        self._forget_deliveries()
        self._ready.clear()
        self._paho = None
        self._set_state("closed")
        self._entered = False

    def _build(self) -> paho.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = self._paho_class(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=None if v5 else False,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            manual_ack=True,
        )
        if s.tls:
            try:
                client.tls_set(
                    ca_certs=None if s.ca_file is None else os.fspath(s.ca_file),
                    certfile=None if s.cert_file is None else os.fspath(s.cert_file),
                    keyfile=None if s.key_file is None else os.fspath(s.key_file),
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise MqttError("cannot set up TLS for MQTT", native=_describe(exc)) from None
        if s.username is not None:
            password = None if s.password_file is None else _read_password(s.password_file)
            client.username_pw_set(s.username, password)
        if s.will is not None:
            client.will_set(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(s.max_queued)
        client.connect_timeout = s.connect_timeout_s
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry_s
            properties.ReceiveMaximum = s.receive_maximum
            client.connect_async(s.host, s.port, s.keepalive, clean_start=False,
                                 properties=properties)
        else:
            client.connect_async(s.host, s.port, s.keepalive)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_paho_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        if isinstance(client, LeanClient):
            client.on_fast_messages = self._on_publishes
            client.on_lean_acked = self._on_lean_acked
        return client

    # ---- connecting, forever ----

    async def _connect_forever(self) -> None:
        s = self.settings
        delay = s.reconnect_min_s
        while True:
            self._set_state("connecting")
            try:
                error = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the reconnecting
                logger.exception("unexpected error connecting to the MQTT broker")
                error = _describe(exc)
            if error is None:
                delay = s.reconnect_min_s
                await self._link_down.wait()
                error = self._down_reason
                self._logged_error = None
                if self._resyncing:  # ended on purpose (_shed): again at once
                    self._resyncing = False
                    continue
            self._set_state("waiting", error)
            self._log_failure(error)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, s.reconnect_max_s)

    async def _connect_once(self) -> str | None:
        """Connects once; None when the broker accepted us, else why not."""
        assert self._loop is not None and self._paho is not None
        self._link_down.clear()
        self._connack = self._loop.create_future()
        self._connect_busy = True
        try:
            # The TCP connect and TLS handshake block: they run in a thread while
            # the loop keeps its hands off the paho client (see _connect_busy).
            blocking = self._loop.run_in_executor(None, self._paho.reconnect)
            try:
                await asyncio.shield(blocking)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await blocking
                raise
        except (OSError, ssl.SSLError, ValueError) as exc:
            return _describe(exc)
        finally:
            self._connect_busy = False
            self._attach()
            self._flush_held()
        if self._sock is None:
            return "the connection closed at once"
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                error = await self._connack
        except TimeoutError:
            error = f"no CONNACK within {self.settings.connect_timeout_s:g} s"
        if error is not None:
            await self._drop_link()
            return error
        self._counts["connects"] += 1
        if self._counts["connects"] > 1:
            self._counts["reconnects"] += 1
        self._set_state("connected", None)
        if self._logged_error is not None:
            logger.info("connected to the MQTT broker %s:%d again", self.settings.host,
                        self.settings.port)
        else:
            logger.info("connected to the MQTT broker %s:%d", self.settings.host,
                        self.settings.port)
        return None

    async def _drop_link(self) -> None:
        """Ends the link with DISCONNECT (so no Last Will), or plainly if it cannot."""
        client = self._paho
        if client is None or self._sock is None:
            return
        sock = self._sock
        await self._settle_acks(client, sock)
        client.disconnect()
        client.loop_write()  # writes the DISCONNECT and closes, or fails and closes
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while self._sock is sock:
                    await asyncio.sleep(0.01)
        if self._sock is sock:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            client.loop_read()  # reads EOF: paho closes the socket
            self._end_delivery()

    async def _settle_acks(self, client: paho.Client, sock: socket.socket) -> None:
        """Before a DISCONNECT: waits (a second at most) until the broker has
        read the PUBACKs written since the last such wait, by a PINGREQ's
        round trip (it reads in order). Mosquitto 2.0.11 has been seen to
        send messages again on the next link when their PUBACKs came just
        before a DISCONNECT and a close, so that a clean stop or reconnect
        would bring back inputs whose results are out already."""
        if not isinstance(client, LeanClient) or self._state != "connected" or \
                self._counts["acked"] == self._acked_settled:
            return
        self._acked_settled = self._counts["acked"]
        if not client.ping():
            return
        self._settling = True  # read on, paused or not, for the PINGRESP
        try:
            self._start_reading()
            self._flush()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    while client.pinging and self._sock is sock:
                        await asyncio.sleep(0.002)
        finally:
            self._settling = False

    def _set_state(self, state: State, error: str | None = "") -> None:
        self._state = state
        if error != "":
            self._last_error = error
        if state != "connected":
            self._ready.clear()

    def _log_failure(self, error: str) -> None:
        s = self.settings
        if error == self._logged_error:
            logger.debug("MQTT broker %s:%d still unavailable: %s", s.host, s.port, error)
            return
        if self._logged_error is None and self._counts["connects"] > 0:
            logger.warning("lost the MQTT broker %s:%d: %s; reconnecting", s.host, s.port, error)
        else:
            logger.warning("cannot connect to the MQTT broker %s:%d: %s; retrying", s.host,
                           s.port, error)
        self._logged_error = error

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            if self._paho is not None and self._sock is not None and not self._connect_busy:
                try:
                    self._paho.loop_misc()  # keepalive: PINGREQ, or drop a silent link
                except Exception:
                    logger.exception("MQTT keepalive failed")

    # ---- the socket in the event loop ----

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Called in the connect thread: the loop attaches the socket afterwards.
        self._opened = sock

    def _attach(self) -> None:
        sock, self._opened = self._opened, None
        if sock is None or self._paho is None:
            return
        fd = sock.fileno()
        if self._paho.socket() is not sock:
            return
        assert self._loop is not None
        self._sock = sock
        self._fd = fd
        self._tls_pending = getattr(sock, "pending", None)
        # Small packets go at once: Nagle's algorithm would hold a publish back
        # until the broker acknowledged the bytes before it.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
        # Even when paused: the CONNACK must be read (see _may_read).
        self._loop.add_reader(self._fd, self._on_readable)
        self._reading = True
        if self._paho.want_write():
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != self._loop_thread:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._detach, sock)
        else:
            self._detach(sock)

    def _detach(self, sock: Any) -> None:
        if sock is not self._sock or self._loop is None:
            return
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._reading = self._writing = False
        self._sock = None
        self._tls_pending = None
        self._fd = -1

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho queued a packet. It is written once the callbacks of this turn
        # are done, together with whatever else they queue; the writer is
        # watched only while the socket is full.
        if self._sock is not None and not self._writing and not self._flush_due and \
                self._loop is not None and threading.get_ident() == self._loop_thread:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._sock is not None and self._writing and self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _on_writable(self) -> None:
        if self._paho is None or self._sock is None:
            return
        try:
            self._paho.loop_write()
        except Exception:
            logger.exception("writing to the MQTT broker failed")

    def _flush(self) -> None:
        """Writes what paho has queued now; watches the writer for the rest."""
        self._flush_due = False
        client = self._paho
        if client is None or self._sock is None or self._connect_busy or \
                not client.want_write():
            return
        try:
            client.loop_write()
        except Exception:
            logger.exception("writing to the MQTT broker failed")
            return
        if client.want_write() and self._sock is not None and not self._writing:
            assert self._loop is not None
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True

    def _may_read(self) -> bool:
        # Paused, a link still reads its CONNACK, or it could never connect; and
        # the PUBACKs of our publishes, or nothing would ever make room again.
        return not self._paused or self._connack is None or not self._connack.done() or \
            bool(self._pending) or bool(self._lean_pending()) or self._settling

    def _must_stop_reading(self) -> bool:
        return self._paused and not self._may_read()

    def _start_reading(self) -> None:
        if self._sock is not None and not self._reading and self._loop is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        client, sock = self._paho, self._sock
        if client is None or sock is None or self._draining:
            return
        self._draining = True
        more = False
        try:
            budget = self._read_batch - self._hand_over_parked()
            more = self._drain(client, sock, budget) if budget > 0 else True
        except Exception:
            logger.exception("reading from the MQTT broker failed")
        finally:
            self._draining = False
        # PUBACKs owed and publishes the acks let out go now, not a turn later.
        self._flush()
        self._end_delivery()
        if more and self._sock is sock:
            # More is waiting: let the rest of the loop run first.
            assert self._loop is not None
            self._loop.call_soon(self._on_readable)

    def _hand_over_parked(self) -> int:
        """Hands over messages read while paused, up to a drain's worth: how
        many the owner took."""
        parked = self._parked
        if not parked or self._paused:
            return 0
        batch = [parked.popleft() for _ in range(min(len(parked), self._read_batch))]
        self._parked_bytes -= _parked_bytes(batch)
        taken = self._deliver_many(batch)
        rest = batch[taken:]
        if rest:  # back to the front, in order
            parked.extendleft(reversed(rest))
            self._parked_bytes += _parked_bytes(rest)
        elif not parked:
            self._maybe_resync()
        return taken

    def _drain(self, client: paho.Client, sock: socket.socket, budget: int) -> bool:
        """Reads up to ``budget`` packets; True if more may be waiting where
        no readiness event will announce it."""
        if not self._may_read():
            self._stop_reading()
            return False
        tls_pending = self._tls_pending
        if not isinstance(client, LeanClient):
            for _ in range(budget):
                rc = client.loop_read()
                if self._sock is not sock or rc not in (_OK, _AGAIN):
                    return False
                if not self._may_read():
                    self._stop_reading()
                    return False
                if not (tls_pending is not None and tls_pending()):
                    return False  # read to the end: readiness brings the reader back
            return True
        # What the PUBACKs read make room for is written before each recv: the
        # window turns now, not once the drain is over.
        rc, _ = client.read_packets(budget, self._flush, self._must_stop_reading)
        if self._sock is not sock or rc not in (_OK, _AGAIN):
            return False
        if not self._may_read():
            self._stop_reading()
            return False
        return rc == _OK or client.buffered() or (tls_pending is not None and tls_pending() > 0)

    def poll(self) -> None:
        """For an owner in the middle of a long piece of work: reads what the
        broker has sent if a publish of ours waits for room in the in-flight
        window (see ``_poll``); costs next to nothing otherwise."""
        client = self._paho
        if isinstance(client, LeanClient) and client.window_full():
            self._poll()

    def _poll(self) -> None:
        """Reads what the broker has sent while a publish of ours waits for
        room in the in-flight window. The window is the broker's Receive
        Maximum (Mosquitto: max_inflight_messages, 20 by default), so our
        publish rate is at most the window over the time a PUBACK waits to be
        read: read only on the loop's turns to the socket, a turn that also
        decodes and publishes a drain's worth of input would bound it."""
        client, sock = self._paho, self._sock
        if not isinstance(client, LeanClient) or sock is None or self._draining or \
                not self._reading or self._connect_busy:
            return
        self._draining = True
        more = False
        try:
            more = self._drain(client, sock, self._poll_batch)
        except Exception:
            logger.exception("reading from the MQTT broker failed")
        finally:
            self._draining = False
        self._flush()
        if (more or self._delivered) and not self._drain_due and self._sock is sock:
            # Messages read now are handed over with the next drain's, from the loop.
            assert self._loop is not None
            self._drain_due = True
            self._loop.call_soon(self._scheduled_drain)

    def _scheduled_drain(self) -> None:
        self._drain_due = False
        self._on_readable()

    def _end_delivery(self) -> None:
        if self._delivered:
            self._delivered = False
            if self._on_drained_cb is not None:
                try:
                    self._on_drained_cb()
                except Exception:
                    logger.exception("handling a drain of MQTT messages failed")

    def pause(self) -> None:
        """Stops handing over messages after the one being handed over; with
        manual acks the broker holds what we have not read or not acked.

        The socket is read on while publishes of ours await their PUBACK (the
        owner may wait for them to make room): messages read meanwhile wait
        here, in order, and are handed over on ``resume()``, up to
        ``max_parked_bytes``; past that they are left with the broker (see
        ``_shed``). Once nothing of ours is pending, reading stops. A link
        being set up still reads its CONNACK, so a paused client connects."""
        self._paused = True
        if self._connack is not None and self._connack.done() and not self._pending and \
                not self._lean_pending():
            self._stop_reading()

    def resume(self) -> None:
        self._paused = False
        if self._parked and self._loop is not None:
            self._loop.call_soon(self._on_readable)  # hands the parked ones over first
        if self._sock is not None and not self._reading and self._loop is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
            # TLS may hold decrypted bytes no readable event will announce.
            self._loop.call_soon(self._on_readable)

    # ---- paho's callbacks ----

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._resolve_connack(f"the broker refused the connection: {reason}")
            return
        receive_max = getattr(properties, "ReceiveMaximum", None)
        limit = self.settings.max_inflight
        if receive_max is not None and (limit == 0 or limit > receive_max):
            limit = receive_max
        if isinstance(client, LeanClient):
            # Before paho sends again what was in flight when the link dropped.
            client.limit_inflight(limit)
        elif limit != client.max_inflight_messages:
            with contextlib.suppress(RuntimeError):  # paho refuses once connected
                client.max_inflight_messages_set(limit)
        if not flags.session_present and self._counts["connects"] > 0:
            logger.warning("the MQTT broker kept no session for %r: messages it had queued "
                           "for us are lost", self.settings.client_id)
        self._sub_mid = None
        if self._subscriptions:
            rc, mid = client.subscribe(self._subscriptions)
            if rc == _OK:
                self._sub_mid = mid
        self._resolve_connack(None)
        if self._sub_mid is None:
            self._ready.set()

    def _resolve_connack(self, error: str | None) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(error)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                      reason_codes: list[Any], properties: Any) -> None:
        refused = [f for f, rc in zip(self._subscriptions, reason_codes) if rc.is_failure]
        for topic_filter, _ in refused:
            logger.warning("the MQTT broker refused the subscription to %r", topic_filter)
        if mid == self._sub_mid and self._state in ("connected", "connecting"):
            self._ready.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if flags.is_disconnect_packet_from_server:
            why = f"the broker disconnected us: {reason}"
        else:
            why = f"connection lost: {reason}"
        self._down_reason = why
        self._resolve_connack(why)
        self._forget_deliveries()
        self._ready.clear()
        if self._state == "connected":
            self._set_state("waiting", why)
        # A QoS 0 publish not yet written is gone; QoS 1 ones are sent again.
        lost = [mid for mid, (*_, qos) in self._pending.items() if qos == 0]
        for mid in lost:
            done, token, _ = self._pending.pop(mid)
            _end(done, token, MqttError("the link dropped before a QoS 0 publish was written"))
        self._link_down.set()

    def _on_paho_message(self, client: paho.Client, userdata: Any,
                         msg: paho.MQTTMessage) -> None:
        # PUBLISH packets paho decoded itself: with properties, or QoS 2. Its
        # topic as received (bytes; the ``topic`` property decodes it).
        self._on_publishes([(msg._topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid,
                             bool(msg.dup))])

    def _on_publishes(self, arrived: list[tuple[bytes, bytes, int, bool, int, bool]]) -> None:
        """PUBLISHes received, in order of arrival: each (topic as bytes,
        payload, qos, retain, mid, dup). Counts them, puts those of QoS 1/2
        in the PUBACK queue and hands them over."""
        messages = []
        topics = self._topics
        self._counts["received"] += len(arrived)
        unacked, by_delivery, ids = self._unacked, self._by_delivery, self._delivery_ids
        for topic, payload, qos, retain, mid, dup in arrived:
            delivery = 0
            if qos:
                delivery = next(ids)
                entry = _Delivery(mid, qos)
                unacked.append(entry)
                by_delivery[delivery] = entry
            text = topics.get(topic)
            if text is None:
                try:
                    text = topic.decode()
                except UnicodeDecodeError:
                    logger.warning("dropped an MQTT message whose topic is not UTF-8")
                    self._ack(delivery)
                    continue
                if len(topics) >= 1024:  # sources come and go: the memo stays bounded
                    topics.clear()
                topics[topic] = text
            messages.append(_new_message((text, payload, qos, retain, mid, dup, delivery)))
        self._hand_over(messages)

    def _hand_over(self, messages: list[Message]) -> None:
        """Hands ``messages`` over, in order; while paused, or behind others
        that wait already, they wait (parked), up to ``max_parked_bytes``;
        past it, and from then on until a new link, they are left with the
        broker (``_shed``)."""
        if self._shedding:
            self._shed(messages)
            return
        if not (self._paused or self._parked):
            taken = self._deliver_many(messages)
            if taken == len(messages):
                return
            messages = messages[taken:]
            if not self._paused:  # the owner took fewer, yet did not pause: one by one
                for message in messages:
                    self._deliver(message)
                return
        parked = self._parked
        weight = _parked_bytes(messages)
        if self._parked_bytes + weight <= self.settings.max_parked_bytes:
            parked.extend(messages)
            self._parked_bytes += weight
            return
        for n, message in enumerate(messages):  # one at least, however large
            weight = len(message.payload) + _PARK_COST
            if parked and self._parked_bytes + weight > self.settings.max_parked_bytes:
                self._shed(messages[n:])
                return
            parked.append(message)
            self._parked_bytes += weight

    def _shed(self, messages: list[Message]) -> None:
        """Leaves ``messages`` with the broker: parked, they would take more
        than ``max_parked_bytes``. A broker floods a paused client past its
        Receive Maximum (Mosquitto 2.0.11 does, see the module's docstring),
        and reading cannot stop while PUBACKs of our publishes come on the
        same link, so a backlog of large messages (LiDAR frames) would
        otherwise all be held here. Nothing after the first of them is handed
        over on this link, nor acknowledged (PUBACKs go in order); once every
        message before it is acknowledged, the link is ended cleanly and made
        again, and the broker sends the unacknowledged ones again (at least
        once, persistent session). QoS 0 has no second sending: it is
        dropped, and counted."""
        if not self._shedding:
            self._shedding = True
            self._shed_now = 0
        for message in messages:
            entry = self._by_delivery.get(message.delivery) if message.delivery else None
            if entry is None:
                self._counts["dropped_qos0"] += 1
            else:
                entry.shed = True
                self._shed_now += 1
                self._counts["left_at_broker"] += 1
        self._maybe_resync()

    def _maybe_resync(self) -> None:
        """Ends the link once the messages before the first one left with
        the broker are all handed over and acknowledged (see ``_shed``)."""
        if not self._shedding or self._resyncing or self._parked or self._loop is None:
            return
        unacked = self._unacked
        if unacked and not unacked[0].shed:
            return
        self._resyncing = True
        logger.info("%d input messages over max_parked_bytes (%.1f MiB) were left with the "
                    "MQTT broker; reconnecting so that it sends them again", self._shed_now,
                    self.settings.max_parked_bytes / (1 << 20))
        self._resync_task = self._loop.create_task(self._drop_link(), name="mqtt-resync")

    def _deliver(self, message: Message) -> None:
        self._delivered = True
        try:
            self._on_message_cb(message)
        except Exception:
            logger.exception("handling the MQTT message on %r failed; acking it",
                             message.topic)
            self._ack(message.delivery)

    def _deliver_many(self, messages: list[Message]) -> int:
        """Hands ``messages`` over, in order, until the owner pauses the
        client: how many it took."""
        if not messages:
            return 0
        many = self._on_messages_cb
        if many is None:
            for n, message in enumerate(messages):
                if self._paused:
                    return n
                self._deliver(message)
            return len(messages)
        self._delivered = True
        try:
            return max(0, min(len(messages), many(messages)))
        except Exception:
            logger.exception("handling %d MQTT messages (the first on %r) failed; acking them",
                             len(messages), messages[0].topic)
            for message in messages:
                self._ack(message.delivery)
            return len(messages)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None:
            return
        done, token, _ = entry
        if reason.is_failure:
            _end(done, token, MqttError(f"the broker refused the publish: {reason}"))
            return
        self._counts["published"] += 1
        _end(done, token, None)

    def _on_lean_done(self, end: _LeanEnd, reason: Any) -> None:
        done, token, _ = end
        if reason is not None:
            _end(done, token, MqttError(f"the broker refused the publish: {reason}"))
            return
        self._counts["published"] += 1
        _end(done, token, None)

    def _on_lean_acked(self, entries: list[Any]) -> None:
        """Lean publishes the broker has, in order (a run of PUBACKs): those
        sent by one ``send_many`` with a ``done_many`` end through it together."""
        self._counts["published"] += len(entries)
        many: Callable[[list[Any]], None] | None = None
        tokens: list[Any] = []  # a run of ends through ``many``
        for entry in entries:
            done, token, done_many = entry.token
            if tokens and done_many != many:
                _end_many(many, tokens)
                tokens = []
            if done_many is None:
                _end(done, token, None)
            else:
                many = done_many
                tokens.append(token)
        if tokens:
            _end_many(many, tokens)

    # ---- acks ----

    def ack(self, message: Message) -> None:
        """Marks ``message`` as safely handled. PUBACKs go out in arrival order:
        this one waits until every older message is acked too. Acking twice,
        a QoS 0 message or one from a link that has since dropped does nothing."""
        self._ack(message.delivery)

    def ack_many(self, messages: Sequence[Message]) -> None:
        """``ack`` of each of ``messages``; their PUBACKs are written together."""
        by_delivery = self._by_delivery
        found = False
        for message in messages:
            entry = by_delivery.pop(message.delivery, None)
            if entry is not None:
                entry.done = True
                found = True
        if found:
            self._send_acks()

    def _ack(self, delivery: int) -> None:
        entry = self._by_delivery.pop(delivery, None)
        if entry is None:
            return
        entry.done = True
        self._send_acks()

    def _send_acks(self) -> None:
        """PUBACKs (and PUBRECs) for the longest done prefix of the queue."""
        client = self._paho
        if client is None or self._connect_busy:
            return
        unacked = self._unacked
        lean = client if isinstance(client, LeanClient) else None
        mids: list[int] = []
        sent = 0
        while unacked and unacked[0].done:
            head = unacked.popleft()
            sent += 1
            if lean is not None and head.qos == 1:
                mids.append(head.mid)
                continue
            if mids:  # in order: the lean ones before it first
                assert lean is not None
                lean.ack_lean_many(mids)
                mids = []
            client.ack(head.mid, head.qos)
        if mids:
            assert lean is not None
            lean.ack_lean_many(mids)
        self._counts["acked"] += sent
        if self._shedding:
            self._maybe_resync()

    def _forget_deliveries(self) -> None:
        self._unacked.clear()
        self._by_delivery.clear()
        self._parked.clear()  # the broker sends them again
        self._parked_bytes = 0
        self._shedding = False

    # ---- publishing ----

    async def publish(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> None:
        """Returns once the broker acknowledged the message (QoS 1) or it was
        written (QoS 0). While the link is down a QoS 1 message waits in the
        client's queue and is sent after the reconnect; a QoS 0 one fails with
        MqttError."""
        await self.publish_nowait(topic, payload, qos, retain)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1,
                       retain: bool = False) -> asyncio.Future[None]:
        """``publish`` without a coroutine: the future resolves as it would
        return. Cancelling the future only stops waiting: a message the client
        has taken is still sent. Raises MqttError when the client is not running."""
        if not self._entered or self._loop is None:
            raise MqttError("the MQTT client is not running")
        future: asyncio.Future[None] = self._loop.create_future()
        self.send(topic, payload, _settle_future, future, qos, retain)
        return future

    def send(self, topic: str, payload: bytes, done: PublishDone, token: Any, qos: int = 1,
             retain: bool = False) -> None:
        """``publish`` for callers that keep their own books: no future and no
        task. ``done(token, None)`` is called once the broker has the message
        (as ``publish`` returns), ``done(token, error)`` once it cannot have
        it (as ``publish`` raises), in the loop, exactly once; for a publish
        refused at once (the queue is full, QoS 0 without a link), before
        ``send`` returns. Publishes of QoS 1 without properties, the daemon's
        every result, take the LeanClient's lean path (no paho message
        objects). Raises MqttError when the client is not running."""
        if not self._entered or self._loop is None:
            raise MqttError("the MQTT client is not running")
        if self._connect_busy:
            self._held.append((topic, payload, qos, retain, done, token))
        else:
            self._submit(topic, payload, qos, retain, done, token)

    def send_many(self, entries: list[tuple[str, bytes, Any]], done: PublishDone,
                  done_many: Callable[[list[Any]], None] | None = None) -> int:
        """``send`` of QoS 1 publishes without retain, in order: ``entries``
        are (topic, payload, token), each ended through ``done`` as ``send``
        ends it; ``done_many``, if given, ends instead those the broker
        acknowledged together (a run of PUBACKs read at once), as
        ``done_many([token, ...])``, in order. Returns how many it took, in
        order; the rest are still the caller's. It takes fewer than all when
        the last one taken ended before this returned (refused: the queue is
        full, or a topic no PUBLISH may carry), so that a caller who keeps
        that one elsewhere can keep the rest behind it; and one at a time
        while a connect is under way, or through paho's own path. Raises
        MqttError when the client is not running."""
        if not self._entered or self._loop is None:
            raise MqttError("the MQTT client is not running")
        if not entries:
            return 0
        client = self._paho
        if self._connect_busy or not isinstance(client, LeanClient):
            topic, payload, token = entries[0]
            self.send(topic, payload, done, token)
            return 1
        try:
            lean = [(topic.encode(), payload, (done, token, done_many))
                    for topic, payload, token in entries]
        except UnicodeEncodeError:
            lean = []
        taken = client.publish_lean_many(lean, self._on_lean_done)
        if taken:
            client.lean_send()
            self._after_submit(client, taken)
        if taken < len(entries):  # refused, or not encoded: _submit says why
            topic, payload, token = entries[taken]
            self._submit(topic, payload, 1, False, done, token)
            taken += 1
        return taken

    def _submit(self, topic: str, payload: bytes, qos: int, retain: bool, done: PublishDone,
                token: Any) -> None:
        client = self._paho
        assert client is not None
        if qos == 1 and isinstance(client, LeanClient):
            try:
                rc = client.publish_lean(topic.encode(), payload, retain, self._on_lean_done,
                                         (done, token, None))
            except (ValueError, UnicodeEncodeError) as exc:
                _end(done, token, MqttError(f"publish refused: {exc}"))
                return
            if rc == _OK:
                client.lean_send()
        else:
            try:
                info = client.publish(topic, payload, qos, retain)
            except ValueError as exc:
                _end(done, token, MqttError(f"publish refused: {exc}"))
                return
            rc = info.rc
            if rc in (_OK, MQTTErrorCode.MQTT_ERR_NO_CONN) and \
                    not (rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0):
                self._pending[info.mid] = (done, token, qos)
        if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            _end(done, token, MqttError(
                f"the MQTT outgoing queue is full ({self.pending_publishes} publishes "
                f"outstanding, max_queued {self.settings.max_queued})"))
        elif rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            _end(done, token, MqttError("not connected: a QoS 0 message is not queued"))
        elif rc not in (_OK, MQTTErrorCode.MQTT_ERR_NO_CONN):
            _end(done, token, MqttError(f"publish failed: {paho.error_string(rc)}"))
        else:
            self._after_submit(client, 1 if qos else 0)

    def _after_submit(self, client: paho.Client, queued: int) -> None:
        """After publishes were queued (``queued`` of them QoS 1/2): their
        PUBACKs must be read, and a full window turned."""
        # Paused with nothing pending stopped reading: its PUBACK must be read.
        self._start_reading()
        if queued and isinstance(client, LeanClient) and client.window_full():
            self._queued_since_poll += queued
            if self._queued_since_poll >= self._poll_every:
                self._queued_since_poll = 0
                self._poll()

    def _flush_held(self) -> None:
        while self._held:
            self._submit(*self._held.popleft())


def _settle_future(future: asyncio.Future[None], error: MqttError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
