"""paho-mqtt's client, with lighter paths for the packets MQTT ingest is made of.

``gatewayd.mqtt`` drives this client from the event loop. paho 2.x spends
most of a small message's time in Python bookkeeping around it: three
``recv`` calls and a dict of state per packet read, an MQTT 5 ``Properties``
object and a ``ReasonCode`` built for every PUBLISH and every PUBACK whether
or not the packet carries any, an ``MQTTMessage`` with a
``threading.Condition`` and an ``MQTTMessageInfo`` per publish, and one
``send`` per queued packet. Here, and only for packets whose meaning is plain:

- reads are buffered: one ``recv`` of up to ``recv_size`` bytes serves many
  packets, and ``read_packets()`` takes the whole packets it holds straight
  from the buffer (``buffered()`` says whether parsed-later bytes are held,
  which no readiness event announces). A run of whole plain PUBLISH and
  PUBACK packets is found in C (gw_mqtt_scan), which says where each one's
  parts are; any other packet is parsed here one at a time. A packet that is
  not all there yet, or a large one, goes through paho's reader, whose
  ``recv`` calls the buffer serves first; large bodies are read straight
  from the socket.
- a PUBLISH of QoS 0 or 1 without properties goes straight to
  ``on_fast_messages`` as plain values, (topic, payload, qos, retain, mid,
  dup): those of a run together, in one list;
- ``publish_lean()`` makes a QoS 1 PUBLISH without properties as bytes, and
  keeps it, with its caller's ``done`` and token, until its PUBACK: no paho
  message object. Lean publishes share paho's in-flight count
  (``_inflight_messages``) and window (``_max_inflight_messages``, the
  broker's Receive Maximum), its packet ids and its queue limit; those the
  window holds back wait in order, and after a reconnect every unacknowledged
  one is sent again, in order, with DUP set if it had gone out;
  ``publish_lean_many()`` queues a batch of them in one call;
- a PUBACK of a lean publish completes it with its reason code; with
  ``on_lean_acked`` set, the lean publishes a run of PUBACKs completes with
  success are handed to it together, in order, and the rest one by one. A
  PUBACK of paho's own publishes that says success without properties
  completes it with a shared success reason code and empty properties;
- ``ack_lean()`` writes a QoS 1 PUBACK as bytes;
- consecutive queued packets that need no callback of their own are written
  with one ``send``, and lean packets queued one after another share one
  entry of paho's queue.

Everything else (properties, topic aliases, QoS 2, QoS 0 publishes, failure
reason codes of paho's own publishes, DISCONNECT on the way out, malformed
packets) takes paho's own path, so its semantics, and its errors, are
paho's. The lean state is the event loop's: it is touched only from the
thread that runs it, and from ``reconnect()`` while the loop keeps its hands
off the client (``gatewayd.mqtt`` holds publishes back meanwhile). The
overrides use paho's private names; pyproject pins the paho releases they
were checked against, and tests/test_mqtt.py runs every path against a real
broker.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion, _ConnectionState
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gatewayd._native import ffi, lib

__all__ = ["FastMessages", "LeanClient", "LeanDone"]

_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_AGAIN = MQTTErrorCode.MQTT_ERR_AGAIN
_LOST = MQTTErrorCode.MQTT_ERR_CONN_LOST
_NO_CONN = MQTTErrorCode.MQTT_ERR_NO_CONN
_QUEUE_SIZE = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
_PUBLISH = 0x30
_PUBACK = 0x40
_DISCONNECT = 0xE0
_V5 = MQTTProtocolVersion.MQTTv5
_CONNECTED = _ConnectionState.MQTT_CS_CONNECTED
_MAX_PACKET = 268_435_455  # the largest remaining length MQTT can say
_QUEUE_FULL = "the queue of publishes is full"  # a lean publish's refusal
_RUN = 128  # packets gw_mqtt_scan finds in one call, at most

# A successful PUBACK carries nothing else: one reason code and one empty set of
# properties serve them all (on_publish only reads them).
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

# Each (topic as raw bytes, payload, qos, retain, mid, dup), in order of arrival.
FastMessages = Callable[[list[tuple[bytes, bytes, int, bool, int, bool]]], None]
# A lean publish's end: its token, and the PUBACK's reason code when it is a
# failure (None: the broker has it). Called once, unless the client is reset.
LeanDone = Callable[[Any, "ReasonCode | None"], None]


def _fresh_in_packet() -> Any:  # paho's _InPacket
    return {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}


def _remaining_length(size: int) -> bytes:
    if size < 128:
        return bytes((size,))
    if size < 16384:
        return bytes(((size & 0x7F) | 0x80, size >> 7))
    out = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        if size:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# A lean publish's state: not written yet, written on this link (in flight),
# or written on a link that dropped before its PUBACK (to go again, with DUP).
_UNSENT, _IN_FLIGHT, _AGAIN_DUP = 0, 1, 2


class _Lean:
    """A lean publish awaiting its PUBACK."""

    __slots__ = ("done", "packet", "state", "token")

    def __init__(self, packet: bytes, done: LeanDone, token: Any) -> None:
        self.packet = packet
        self.done = done
        self.token = token
        self.state = _UNSENT


class LeanClient(paho.Client):
    """``paho.Client`` with buffered reads, direct delivery of plain PUBLISH
    packets, lean QoS 1 publishes and coalesced writes (see the module's
    docstring)."""

    recv_size = 64 * 1024  # bytes asked of the socket at once
    send_size = 64 * 1024  # bytes of queued packets joined into one send, at most

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_fast_messages: FastMessages | None = None
        # Lean publishes a run of PUBACKs completed with success, in order;
        # None: each one's ``done`` is called as its PUBACK is read.
        self.on_lean_acked: Callable[[list[_Lean]], None] | None = None
        self._rbuf = b""
        self._rpos = 0
        self._rsock: Any = None
        self._run = ffi.new("int64_t[]", _RUN * lib.GW_MQTT_ENTRY)  # gw_mqtt_scan's entries
        self._run_end = ffi.new("int64_t *")
        # lean publishes awaiting their PUBACK, oldest first, by packet id
        self._lean: dict[int, _Lean] = {}
        self._lean_unsent: collections.deque[int] = collections.deque()  # in order
        self._lean_tail: Any = None  # the entry of paho's queue that lean bytes join
        self._topic_heads: dict[bytes, bytes] = {}  # checked topics: length and bytes
        self.lean_published = 0  # lean publishes the broker acknowledged

    # ---- a round trip ----

    def ping(self) -> bool:
        """Sends a PINGREQ now (paho sends one only when the link is quiet);
        True if it is queued. ``pinging`` is True until its PINGRESP is read."""
        return self._send_pingreq() == _OK

    @property
    def pinging(self) -> bool:
        return bool(self._ping_t)

    # ---- publishes in flight ----

    def limit_inflight(self, limit: int) -> None:
        """Sets how many QoS 1/2 publishes may await their acknowledgement at
        once (0: no limit), also on an open link (paho's setter refuses one):
        the broker's Receive Maximum arrives with its CONNACK. Called from
        on_connect, it also corrects what paho is about to send again: paho
        marks every unacknowledged publish for sending on reconnect, however
        many there are, and only the first ``limit`` may go. Lean publishes
        are sent again after paho's, within what room is left."""
        with self._out_message_mutex:
            self._max_inflight_messages = limit
            if limit == 0 or self._inflight_messages:
                return
            room = limit
            for message in self._out_messages.values():
                if message.state in (paho.mqtt_ms_publish, paho.mqtt_ms_resend_pubrel):
                    if room > 0:
                        room -= 1
                    elif message.state == paho.mqtt_ms_publish:
                        message.state = paho.mqtt_ms_queued

    def window_full(self) -> bool:
        """Whether a QoS 1/2 publish made now would wait for a PUBACK to make room."""
        limit = self._max_inflight_messages
        return limit > 0 and (self._inflight_messages >= limit or bool(self._lean_unsent))

    @property
    def lean_pending(self) -> int:
        """Lean publishes not yet acknowledged by the broker, sent or not."""
        return len(self._lean)

    def _mid_generate(self) -> int:
        # paho's own counter, skipping ids still in use: a publish the broker
        # has not acknowledged may outlive a full turn of the 16-bit counter.
        lean, out = self._lean, self._out_messages
        with self._mid_generate_mutex:
            mid = self._last_mid
            while True:
                mid = mid + 1 if mid < 65535 else 1
                if mid not in lean and mid not in out:
                    self._last_mid = mid
                    return mid

    # ---- lean publishing ----

    def publish_lean(self, topic: bytes, payload: bytes, retain: bool, done: LeanDone,
                     token: Any) -> MQTTErrorCode:
        """Queues a QoS 1 PUBLISH without properties: MQTT_ERR_SUCCESS, or
        MQTT_ERR_QUEUE_SIZE when ``max_queued`` publishes are outstanding
        already (nothing is queued then). It is written with the next
        ``lean_send()`` if the window has room, else once PUBACKs make room;
        while the link is down it waits for the next. ``done(token, None)``
        follows its PUBACK, ``done(token, reason)`` a PUBACK of failure.
        Raises ValueError for a topic no PUBLISH may carry."""
        why = self._queue_lean(topic, payload, retain, done, token)
        if why is None:
            return _OK
        if why is _QUEUE_FULL:
            return _QUEUE_SIZE
        raise ValueError(why)

    def publish_lean_many(self, entries: list[tuple[bytes, bytes, Any]], done: LeanDone
                          ) -> int:
        """``publish_lean`` of many, in order and without retain: ``entries``
        are (topic, payload, token). Queues them until one would be refused
        (the queue is full, a topic or size no PUBLISH may carry) and
        returns how many it queued; the caller's ``publish_lean`` of the
        next one then says why."""
        # _queue_lean and _mid_generate inline, for what results are made of:
        # a topic checked before, a packet of 128 bytes to 16 KiB.
        heads, lean, unsent, out = self._topic_heads, self._lean, self._lean_unsent, \
            self._out_messages
        limit = self._max_queued_messages
        v5 = self._protocol == _V5
        extra = 3 if v5 else 2  # the packet id, (a property length of 0)
        queued = 0
        with self._mid_generate_mutex:
            mid = self._last_mid
            for topic, payload, token in entries:
                head = heads.get(topic)
                if head is None or (limit > 0 and len(lean) + len(out) >= limit):
                    break
                size = len(head) + len(payload) + extra
                if not 128 <= size < 16384:
                    break
                while True:
                    mid = mid + 1 if mid < 65535 else 1
                    if mid not in lean and mid not in out:
                        break
                lean[mid] = _Lean(b"".join((
                    bytes((0x32, (size & 0x7F) | 0x80, size >> 7)), head,
                    (mid << 8).to_bytes(3, "big") if v5 else mid.to_bytes(2, "big"), payload)),
                    done, token)
                unsent.append(mid)
                queued += 1
            self._last_mid = mid
        for topic, payload, token in entries[queued:]:
            if self._queue_lean(topic, payload, False, done, token) is not None:
                return queued
            queued += 1
        return queued

    def _queue_lean(self, topic: bytes, payload: bytes, retain: bool, done: LeanDone,
                    token: Any) -> str | None:
        """Queues a lean publish: None, or why it cannot be (``_QUEUE_FULL``:
        ``max_queued`` publishes are outstanding; nothing is queued then)."""
        limit = self._max_queued_messages
        lean = self._lean
        if limit > 0 and len(lean) + len(self._out_messages) >= limit:
            return _QUEUE_FULL
        # A topic's length and bytes, once it passed the checks: results go to
        # a few topics, again and again.
        head = self._topic_heads.get(topic)
        if head is None:
            if not topic or b"+" in topic or b"#" in topic or len(topic) > 65535:
                return f"invalid topic for a publish: {topic!r}"
            if len(self._topic_heads) >= 1024:  # sources come and go: bounded
                self._topic_heads.clear()
            head = self._topic_heads[topic] = len(topic).to_bytes(2, "big") + topic
        v5 = self._protocol == _V5
        size = len(head) + len(payload) + (3 if v5 else 2)  # id, (no properties)
        if size > _MAX_PACKET:
            return "payload too large for an MQTT packet"
        mid = self._mid_generate()
        command = 0x33 if retain else 0x32  # QoS 1
        packet = b"".join((
            bytes((command,)), _remaining_length(size), head,
            # the packet id, then (MQTT 5) a property length of 0
            (mid << 8).to_bytes(3, "big") if v5 else mid.to_bytes(2, "big"), payload))
        lean[mid] = _Lean(packet, done, token)
        self._lean_unsent.append(mid)
        return None

    def lean_send(self) -> None:
        """Queues for writing the lean publishes the window has room for, in order."""
        unsent = self._lean_unsent
        if not unsent or self._sock is None or self._state != _CONNECTED:
            return
        limit = self._max_inflight_messages
        room = limit - self._inflight_messages if limit > 0 else len(unsent)
        if room <= 0:
            return
        lean = self._lean
        parts = []
        while unsent and room > 0:
            entry = lean.get(unsent.popleft())
            if entry is None:
                continue
            packet = entry.packet
            if entry.state == _AGAIN_DUP:
                packet = bytes((packet[0] | 0x08,)) + packet[1:]
            entry.state = _IN_FLIGHT
            parts.append(packet)
            room -= 1
        self._inflight_messages += len(parts)
        if parts:
            self._queue_bytes(b"".join(parts))

    def ack_lean(self, mid: int) -> None:
        """Queues the PUBACK of the QoS 1 message ``mid`` (paho's ``ack``, as bytes)."""
        self._queue_bytes(b"\x40\x02" + mid.to_bytes(2, "big"))

    def ack_lean_many(self, mids: list[int]) -> None:
        """``ack_lean`` of each of ``mids``, in order, queued together."""
        # A PUBACK without a reason code: 0x40, 2, the packet id (big-endian).
        self._queue_bytes(struct.pack(f">{2 * len(mids)}H",
                                      *[v for mid in mids for v in (0x4002, mid)]))

    def lean_reset(self) -> list[_Lean]:
        """Forgets every lean publish (the client is closing); returns them."""
        entries = list(self._lean.values())
        self._inflight_messages = max(
            0, self._inflight_messages - sum(1 for e in entries if e.state == _IN_FLIGHT))
        self._lean.clear()
        self._lean_unsent.clear()
        return entries

    def _queue_bytes(self, data: bytes) -> None:
        out = self._out_packet
        tail: Any = self._lean_tail
        if out and out[-1] is tail and tail is not None:
            tail["packet"] += data
            tail["to_process"] += len(data)
        else:
            # QoS 1 and no info: paho's writer calls nothing when it is written.
            tail = {"command": 0x32, "mid": 0, "qos": 1, "pos": 0,
                    "to_process": len(data), "packet": bytearray(data), "info": None}
            out.append(tail)
            self._lean_tail = tail
        self._call_socket_register_write()

    def _lean_take(self, mid: int) -> _Lean | None:
        """Takes the lean publish ``mid`` out of flight; None if it is none in flight."""
        entry = self._lean.get(mid)
        if entry is None or entry.state != _IN_FLIGHT:
            return None
        del self._lean[mid]
        self._inflight_messages -= 1
        return entry

    def _lean_acked(self, mid: int, reason: int) -> bool:
        """Completes the lean publish ``mid``; False if it is none in flight."""
        entry = self._lean_take(mid)
        if entry is None:
            return False
        if reason >= 0x80:
            entry.done(entry.token, ReasonCode(PacketTypes.PUBACK, identifier=reason))
        else:
            self.lean_published += 1
            entry.done(entry.token, None)
        if self._out_messages:  # paho's own, held back by the window
            with self._out_message_mutex:
                self._update_inflight()
        return True

    def _messages_reconnect_reset(self) -> None:
        super()._messages_reconnect_reset()
        # Everything unacknowledged goes again on the new link, in order.
        for entry in self._lean.values():
            if entry.state == _IN_FLIGHT:
                entry.state = _AGAIN_DUP
        self._lean_unsent = collections.deque(self._lean)
        self._lean_tail = None

    def _handle_connack(self) -> MQTTErrorCode:
        rc = super()._handle_connack()
        if self._state == _CONNECTED:
            self.lean_send()
        return rc

    # ---- reading ----

    def buffered(self) -> bool:
        """Whether bytes read from the socket wait in the buffer to be parsed."""
        return self._rsock is self._sock and self._rpos < len(self._rbuf)

    def read_packet(self) -> MQTTErrorCode:
        """Reads and handles at most one packet: MQTT_ERR_SUCCESS when one was
        handled, MQTT_ERR_AGAIN when the rest has not arrived yet. A failed
        link is closed and reported to on_disconnect, as ``loop_read`` does."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        rc = self._packet_read()
        if rc > 0:
            return self._loop_rc_handle(rc)
        return rc

    def read_packets(self, budget: int, between: Callable[[], None] | None = None,
                     stop: Callable[[], bool] | None = None) -> tuple[MQTTErrorCode, int]:
        """Reads and handles up to ``budget`` packets: (MQTT_ERR_SUCCESS, n)
        when ``budget`` were handled or ``stop()`` said so after one,
        (MQTT_ERR_AGAIN, n) when the socket has no more now, or the error
        that closed the link (reported to on_disconnect, as ``loop_read``
        does). Whole packets in the buffer are parsed here; the rest go
        through paho's reader. Before each ``recv`` of the socket, lean
        publishes the PUBACKs read so far made room for are queued, and
        ``between()`` is called if anything is queued to write: what the
        broker sent in one go is answered in one go."""
        sock = self._sock
        if sock is None:
            return _NO_CONN, 0
        if self._rsock is not sock:  # a new link: nothing of the old one is kept
            self._rbuf, self._rpos, self._rsock = b"", 0, sock
        n = 0
        rc = _OK
        while n < budget:
            if self._sock is not sock:
                return _LOST, n
            buf, pos = self._rbuf, self._rpos
            if pos >= len(buf) and not self._in_packet["command"]:
                self.lean_send()
                if between is not None and self._out_packet:
                    between()
                    if self._sock is not sock:
                        return _LOST, n
                try:
                    buf = paho.Client._sock_recv(self, self.recv_size)
                except BlockingIOError:
                    return _AGAIN, n
                except OSError as err:
                    self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                    return self._loop_rc_handle(_LOST), n
                if not buf:
                    return self._loop_rc_handle(_LOST), n
                self._rbuf, self._rpos, pos = buf, 0, 0
                with self._msgtime_mutex:
                    self._last_bytes_received = paho.time_func()
            if not self._in_packet["command"]:
                done, rc, halt = self._read_run(sock, buf, pos, budget - n, stop)
                n += done
                if rc != _OK:
                    return self._loop_rc_handle(rc), n
                if halt:
                    break
                if done:
                    continue
            rc = self._read_one(buf, pos)
            if rc == _AGAIN:
                return _AGAIN, n
            if rc != _OK:
                return self._loop_rc_handle(rc), n
            n += 1
            if stop is not None and stop():
                break
        self.lean_send()
        return rc, n

    def _read_run(self, sock: Any, buf: bytes, pos: int, budget: int,
                  stop: Callable[[], bool] | None) -> tuple[int, MQTTErrorCode, bool]:
        """Handles the run of whole plain PUBLISH and PUBACK packets at
        ``pos``, up to ``budget`` of them, as ``_read_one`` would one by one:
        (how many, the error that ends the link or MQTT_ERR_SUCCESS, whether
        to stop reading: ``stop()`` said so, or the link is gone). The run's
        PUBLISHes go to ``on_fast_messages`` together, and the lean publishes
        its PUBACKs complete to ``on_lean_acked`` (first: what they make room
        for is there for the PUBLISHes), before any other packet is handled
        and at the run's end."""
        deliver = self.on_fast_messages
        count = lib.gw_mqtt_scan(buf, len(buf), pos, self._protocol == _V5,
                                 deliver is not None, self._run, min(budget, _RUN),
                                 self._run_end)
        if not count:
            return 0, _OK, False
        entries = iter(ffi.unpack(self._run, count * lib.GW_MQTT_ENTRY))
        arrived: list[tuple[bytes, bytes, int, bool, int, bool]] = []
        acked: list[_Lean] | None = [] if self.on_lean_acked is not None else None
        manual = self._manual_ack
        done = 0
        for header, a, b, c, d, e, end in zip(entries, entries, entries, entries, entries,
                                              entries, entries):
            self._rpos = end
            done += 1
            if header & 0xF0 == _PUBLISH:
                # topic [a:b], packet id c, payload [d:e]
                arrived.append((buf[a:b], buf[d:e], (header & 0x06) >> 1, bool(header & 0x01),
                                c, bool(header & 0x08)))
                if c and not manual:  # acked as paho acks: once it is handed over
                    self._hand_run(arrived, acked)
                    rc = self._send_puback(c)
                    if rc != _OK:
                        return done, rc, False
                    if self._sock is not sock or (stop is not None and stop()):
                        return done, _OK, True
                continue
            # packet id a, reason b, body [d:e]. A success, while paho has
            # none of its own held back (_lean_acked lets those out): ended
            # with the run.
            if acked is not None and b < 0x80 and not self._out_messages:
                entry = self._lean_take(a)
                if entry is not None:
                    acked.append(entry)
                    continue
            self._hand_run(arrived, acked)
            if not self._lean_acked(a, b):
                rc = self._handle_whole(header, e - d, buf, d, e)
                if rc != _OK:
                    return done, rc, False
            if self._sock is not sock or (stop is not None and stop()):
                return done, _OK, True
        self._hand_run(arrived, acked)
        return done, _OK, self._sock is not sock or (stop is not None and stop())

    def _hand_run(self, arrived: list[tuple[bytes, bytes, int, bool, int, bool]],
                  acked: list[_Lean] | None) -> None:
        """Hands over, and forgets, what a run has gathered so far: the lean
        publishes completed, then the PUBLISHes received."""
        if acked:
            self.lean_published += len(acked)
            ended = acked.copy()
            acked.clear()
            assert self.on_lean_acked is not None
            self.on_lean_acked(ended)
        if arrived:
            messages = arrived.copy()
            arrived.clear()
            assert self.on_fast_messages is not None
            self.on_fast_messages(messages)

    def _read_one(self, buf: bytes, pos: int) -> MQTTErrorCode:
        """Handles the packet at ``pos`` if it is whole in the buffer, else
        lets paho's reader take it (or go on with the one it has begun)."""
        size = len(buf)
        if self._in_packet["command"] or pos + 2 > size:
            return self._packet_read()
        command = buf[pos]
        length = buf[pos + 1]
        start = pos + 2
        if length & 0x80:
            length &= 0x7F
            shift = 7
            while True:
                if start >= size or shift > 21:  # not all here, or malformed: paho's
                    return self._packet_read()
                byte = buf[start]
                start += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
        end = start + length
        if end > size:
            return self._packet_read()
        self._rpos = end
        kind = command & 0xF0
        if kind == _PUBLISH:
            mid = self._deliver_plain(command, buf, start, end)
            if mid >= 0:
                return self._send_puback(mid) if mid and not self._manual_ack else _OK
        elif kind == _PUBACK and (length == 2 or (self._protocol == _V5 and length >= 3)) and \
                self._lean_acked((buf[start] << 8) | buf[start + 1],
                                 buf[start + 2] if length >= 3 else 0):
            return _OK
        return self._handle_whole(command, length, buf, start, end)

    def _handle_whole(self, command: int, length: int, buf: bytes, start: int, end: int
                      ) -> MQTTErrorCode:
        """Hands a whole packet (its body ``buf[start:end]``) to paho's handler."""
        # paho's handlers read the packet from _in_packet, as its reader leaves it.
        self._in_packet = packet = _fresh_in_packet()
        packet["command"] = command
        packet["have_remaining"] = 1
        packet["remaining_length"] = length
        packet["packet"] = bytearray(buf[start:end])
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = _fresh_in_packet()
        return rc

    def _deliver_plain(self, header: int, packet: bytes | bytearray, start: int,
                       end: int) -> int:
        """Hands a PUBLISH of QoS 0 or 1 without properties to
        on_fast_messages and returns its packet id (0 for QoS 0); -1, and
        nothing done, for any other."""
        deliver = self.on_fast_messages
        qos = (header & 0x06) >> 1
        if deliver is None or qos == 2 or end - start < 2:
            return -1
        at = start + 2 + ((packet[start] << 8) | packet[start + 1])
        if at == start + 2 or at > end:  # a topic alias, or malformed: paho decides
            return -1
        topic = bytes(packet[start + 2:at])
        mid = 0
        if qos:
            if at + 2 > end:
                return -1
            mid = (packet[at] << 8) | packet[at + 1]
            at += 2
        if self._protocol == _V5:
            if at >= end or packet[at] != 0:  # properties: paho's Properties
                return -1
            at += 1
        deliver([(topic, bytes(packet[at:end]), qos, bool(header & 0x01), mid,
                  bool(header & 0x08))])
        return mid

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is not self._rsock:  # a new link: nothing of the old one is kept
            self._rbuf, self._rpos, self._rsock = b"", 0, sock
        buf, pos = self._rbuf, self._rpos
        if pos < len(buf):
            end = pos + bufsize
            self._rpos = end
            return buf[pos:end]
        if bufsize >= self.recv_size:
            return super()._sock_recv(bufsize)  # a large body: no copy through the buffer
        data = super()._sock_recv(self.recv_size)
        if len(data) <= bufsize:
            return data
        self._rbuf, self._rpos = data, bufsize
        return data[:bufsize]

    def _handle_publish(self) -> MQTTErrorCode:
        # A PUBLISH paho's reader assembled (it did not arrive whole in the buffer).
        packet = self._in_packet["packet"]
        mid = self._deliver_plain(self._in_packet["command"], packet, 0, len(packet))
        if mid < 0:
            return super()._handle_publish()
        return self._send_puback(mid) if mid and not self._manual_ack else _OK

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        size = len(packet)
        if cmd == "PUBACK" and size >= 2:
            mid = (packet[0] << 8) | packet[1]
            if (size == 2 or (self._protocol == _V5 and size >= 3)) and \
                    self._lean_acked(mid, packet[2] if size >= 3 else 0):
                return _OK
            plain = size == 2 or (self._protocol == _V5 and 3 <= size <= 4 and packet[2] == 0
                                  and (size == 3 or packet[3] == 0))
            if plain:
                with self._out_message_mutex:
                    if mid in self._out_messages:
                        return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
                return _OK
        return super()._handle_pubackcomp(cmd)

    # ---- writing ----

    def _packet_write(self) -> MQTTErrorCode:
        out: collections.deque[Any] = self._out_packet
        while out:
            run: list[Any] = []
            size = 0
            for packet in out:
                command = packet["command"] & 0xF0
                if command == _DISCONNECT or (command == _PUBLISH and packet["qos"] == 0):
                    break  # these have callbacks of their own when written
                run.append(packet)
                size += packet["to_process"]
                if size >= self.send_size:
                    break
            if len(run) < 2:
                return super()._packet_write()
            data = b"".join(p["packet"][p["pos"]:] if p["pos"] else p["packet"] for p in run)
            try:
                written = self._sock_send(data)
            except (AttributeError, ValueError):
                return _OK
            except BlockingIOError:
                return _AGAIN
            except OSError as err:
                self._easy_log(paho.MQTT_LOG_ERR, "failed to send on socket: %s", err)
                return _LOST
            sent = written
            while sent > 0:  # the run is at the head of the queue, in order
                packet = out[0]
                if sent >= packet["to_process"]:
                    sent -= packet["to_process"]
                    out.popleft()
                else:
                    packet["pos"] += sent
                    packet["to_process"] -= sent
                    sent = 0
            if written < len(data):
                return _AGAIN  # the socket is full: the writer is watched again
        with self._msgtime_mutex:
            self._last_msg_out = paho.time_func()
        return _OK
