"""paho-mqtt's client, with lighter paths for the packets MQTT ingest is made of.

``gatewayd.mqtt`` drives this client from the event loop. paho 2.x spends
most of a small message's time in Python bookkeeping around it: three
``recv`` calls per packet (command byte, length, body), an MQTT 5
``Properties`` object and a ``ReasonCode`` built for every PUBLISH and every
PUBACK whether or not the packet carries any, an ``MQTTMessage`` with a
``threading.Condition`` per delivery, and one ``send`` per queued packet.
Here, and only for packets whose meaning is plain:

- reads are buffered: one ``recv`` of up to ``recv_size`` bytes serves many
  packets (``buffered()`` says whether parsed-later bytes are held, which no
  readiness event announces). Large bodies are read straight from the socket.
- a PUBLISH of QoS 0 or 1 without properties goes straight to
  ``on_fast_message(topic, payload, qos, retain, mid, dup)`` as plain values;
- a PUBACK that says success without properties completes the publish with a
  shared success reason code and empty properties;
- consecutive queued packets that need no callback of their own are written
  with one ``send``.

Everything else (properties, topic aliases, QoS 2, failure reason codes,
QoS 0 publishes and DISCONNECT on the way out, malformed packets) takes
paho's own path, so its semantics, and its errors, are paho's. The overrides
use paho's private names; pyproject pins the paho releases they were checked
against, and tests/test_mqtt.py runs every path against a real broker.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["FastMessage", "LeanClient"]

_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_AGAIN = MQTTErrorCode.MQTT_ERR_AGAIN
_LOST = MQTTErrorCode.MQTT_ERR_CONN_LOST
_PUBLISH = 0x30
_DISCONNECT = 0xE0
_V5 = MQTTProtocolVersion.MQTTv5

# A successful PUBACK carries nothing else: one reason code and one empty set of
# properties serve them all (on_publish only reads them).
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

# topic (raw bytes), payload, qos, retain, mid, dup
FastMessage = Callable[[bytes, bytes, int, bool, int, bool], None]


class LeanClient(paho.Client):
    """``paho.Client`` with buffered reads, direct delivery of plain PUBLISH
    packets and coalesced writes (see the module's docstring)."""

    recv_size = 64 * 1024  # bytes asked of the socket at once
    send_size = 64 * 1024  # bytes of queued packets joined into one send, at most

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_fast_message: FastMessage | None = None
        self._rbuf = b""
        self._rpos = 0
        self._rsock: Any = None

    # ---- publishes in flight ----

    def limit_inflight(self, limit: int) -> None:
        """Sets how many QoS 1/2 publishes may await their acknowledgement at
        once (0: no limit), also on an open link (paho's setter refuses one):
        the broker's Receive Maximum arrives with its CONNACK. Called from
        on_connect, it also corrects what paho is about to send again: paho
        marks every unacknowledged publish for sending on reconnect, however
        many there are, and only the first ``limit`` may go."""
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
        return limit > 0 and self._inflight_messages >= limit

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
        deliver = self.on_fast_message
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        packet = self._in_packet["packet"]
        size = len(packet)
        if deliver is None or qos == 2 or size < 2:
            return super()._handle_publish()
        end = 2 + ((packet[0] << 8) | packet[1])
        if end == 2 or end > size:  # a topic alias, or malformed: paho decides
            return super()._handle_publish()
        topic = bytes(packet[2:end])
        mid = 0
        if qos:
            if end + 2 > size:
                return super()._handle_publish()
            mid = (packet[end] << 8) | packet[end + 1]
            end += 2
        if self._protocol == _V5:
            if end >= size or packet[end] != 0:  # properties: paho's Properties
                return super()._handle_publish()
            end += 1
        deliver(topic, bytes(packet[end:]), qos, bool(header & 0x01), mid, bool(header & 0x08))
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return _OK

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        size = len(packet)
        plain = size == 2 or (self._protocol == _V5 and 3 <= size <= 4 and packet[2] == 0
                              and (size == 3 or packet[3] == 0))
        if cmd != "PUBACK" or not plain:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
        return _OK

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
