"""MQTT load for bench_daemon.py, from a process of its own (as a field
device is its own machine): it never shares a GIL with the daemon or with the
benchmark's timing threads.

    python _load.py burst --host H --port P --topic T --count N --source-index K
    python _load.py load --host H --port P --prefix gatewayd/ID --seconds S \
        [--gps-rate R] [--lidar-rate R | --lidar-window W] [--polygon-rate R]

``burst`` publishes N GPS messages, one NMEA reporting cycle (RMC + GGA) each,
QoS 1, as fast as the broker takes them (MQTT 5 written on a bare socket). It
prints ``ready`` once connected, waits for a line on stdin, and prints the
monotonic times of its first publish and of the last PUBACK as JSON.
(Single-line payloads go through ``mosquitto_pub -l`` instead; this exists
for the multi-line NMEA messages.)

``load`` publishes gpsd TPV messages, binary PCD LiDAR frames and GeoJSON
polygon documents under ``<prefix>/in/…`` for S seconds, subscribes to the
records under ``<prefix>/out/…`` and ``<prefix>/dead/…``, and prints a JSON
ledger per kind: inputs sent, records expected and received, distinct record
ids, dead letters, and the LiDAR frames' end-to-end latency (publish to
record, matched by the input digest the record names). LiDAR goes either at a
fixed rate or as fast as the daemon takes it: at most W frames without a
record yet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from receiver import cycle_sentences

# A sensor mast near Stuttgart, in UTM zone 32N (EPSG:32632).
_X0, _Y0 = 513_223.5, 5_403_015.5
_LON0, _LAT0 = 9.18, 48.78


def _client(host: str, port: int, client_id: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=60)
    return client


def nmea_payload(index: int) -> bytes:
    """One 10 Hz reporting cycle, RMC and GGA, as one message."""
    return b"".join(cycle_sentences(index))


def tpv_payload(index: int) -> bytes:
    seconds = index * 0.1
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_714_564_800 + int(seconds)))
    doc = {"class": "TPV", "mode": 3, "time": f"{when}.{int(seconds * 10) % 10}00Z",
           "lat": round(_LAT0 + index * 1e-7, 9), "lon": _LON0, "altHAE": 290.0,
           "speed": 12.0, "track": 90.0}
    return json.dumps(doc, separators=(",", ":")).encode()


def pcd_frame(n: int, seed: int) -> bytearray:
    """An OS1-64-like sweep of ``n`` points around the mast, binary PCD."""
    rng = np.random.default_rng(seed)
    az = rng.uniform(0, 2 * np.pi, n)
    r = rng.uniform(1.0, 60.0, n)
    rec = np.empty(n, dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("i", "<f4")])
    rec["x"], rec["y"] = _X0 + r * np.cos(az), _Y0 + r * np.sin(az)
    rec["z"], rec["i"] = rng.normal(245.0, 1.5, n), rng.uniform(0, 1, n)
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
              "FIELDS x y z intensity\nSIZE 8 8 8 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
              f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary\n")
    return bytearray(header.encode() + rec.tobytes())


def polygon_doc(index: int, features: int) -> bytes:
    """``features`` small valid squares (field plots), ids unique to the document."""
    feats = []
    for k in range(features):
        x = _LON0 + (k % 10) * 1e-3 + index * 1e-7
        y = _LAT0 + (k // 10) * 1e-3
        d = 4e-4 + (k % 3) * 1e-4
        ring = [[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]
        feats.append({"type": "Feature", "id": f"{index}-{k}",
                      "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"plot": k}})
    return json.dumps({"type": "FeatureCollection", "features": feats}).encode()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(header: int, body: bytes) -> bytes:
    return bytes((header,)) + _varint(len(body)) + body


def _read_packet(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """The next whole packet in ``buf`` (read more from ``sock`` as needed)."""
    while True:
        if len(buf) >= 2:
            length, shift, at = 0, 0, 1
            while at < len(buf) and at <= 4:
                byte = buf[at]
                length |= (byte & 0x7F) << shift
                at += 1
                if not byte & 0x80:
                    if len(buf) >= at + length:
                        header, body = buf[0], bytes(buf[at:at + length])
                        del buf[:at + length]
                        return header, body
                    break
                shift += 7
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the broker closed the connection")
        buf += data


def burst(args: argparse.Namespace) -> None:
    """MQTT 5 over a bare socket: every PUBLISH encoded before the clock
    starts, sent as fast as the broker's Receive Maximum lets them out, and
    the PUBACKs read in a tight loop. paho's client, at some 8 000 publishes
    a second here, would bound the daemon and mosquitto_sub alike."""
    topic = args.topic.encode()
    packets = []
    for i in range(args.count):
        mid = i % 65535 + 1
        body = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + b"\0" + \
            nmea_payload(args.first + i)
        packets.append(_packet(0x32, body))
    client_id = f"bench-burst-{args.first}".encode()
    sock = socket.create_connection((args.host, args.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # CONNECT: MQTT 5, clean start, keepalive 60 s, no properties.
    sock.sendall(_packet(0x10, b"\0\4MQTT\5\2\0\x3c\0" + len(client_id).to_bytes(2, "big")
                         + client_id))
    buf = bytearray()
    header, body = _read_packet(sock, buf)
    if header != 0x20 or len(body) < 2 or body[1] >= 0x80:
        raise ConnectionError(f"the broker refused the connection: {body!r}")
    window = 65535
    at = 2
    length, shift = 0, 0
    while True:  # the properties' length, then the properties
        byte = body[at]
        at += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    end = at + length
    while at < end:
        ident = body[at]
        at += 1
        if ident == 0x21:  # Receive Maximum
            window = int.from_bytes(body[at:at + 2], "big")
            at += 2
        elif ident in (0x24, 0x25, 0x28, 0x29, 0x2A):  # one-byte properties
            at += 1
        elif ident in (0x13, 0x22):  # two-byte
            at += 2
        elif ident in (0x11, 0x27):  # four-byte
            at += 4
        elif ident == 0x26:  # user property: two strings
            for _ in range(2):
                at += 2 + int.from_bytes(body[at:at + 2], "big")
        else:  # strings and binary data
            at += 2 + int.from_bytes(body[at:at + 2], "big")
    print("ready", flush=True)
    sys.stdin.readline()
    first = time.monotonic()
    sent = acked = 0
    total = len(packets)
    while acked < total:
        room = min(window - (sent - acked), total - sent)
        if room > 0:
            sock.sendall(b"".join(packets[sent:sent + room]))
            sent += room
        header, body = _read_packet(sock, buf)
        if header >> 4 != 4:  # not a PUBACK
            continue
        if len(body) >= 3 and body[2] >= 0x80:
            raise ConnectionError(f"the broker refused a publish: reason {body[2]:#x}")
        acked += 1
    done = time.monotonic()
    sock.sendall(b"\xe0\0")  # DISCONNECT
    sock.close()
    print(json.dumps({"first": first, "acked": done}), flush=True)


class _Ledger:
    """What was sent and what came back, per kind; filled from paho's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = {"gps": 0, "lidar": 0, "polygon": 0}
        self.expected = {"gps": 0, "lidar": 0, "polygon": 0}
        self.got = {"gps": 0, "lidar": 0, "polygon": 0}
        self.ids: dict[str, set[str]] = {"gps": set(), "lidar": set(), "polygon": set()}
        self.dead: dict[str, int] = {}
        self.frame_sent: dict[str, float] = {}  # input digest -> publish time
        self.frame_latency: list[float] = []
        self.points: int = 0

    def on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.monotonic()
        doc = json.loads(message.payload)
        kind = message.topic.split("/")[-2]
        with self.lock:
            if "/dead/" in message.topic:
                reason = f"{message.topic.rsplit('/', 1)[1]}:{doc.get('reason')}"
                self.dead[reason] = self.dead.get(reason, 0) + 1
                return
            self.got[kind] += 1
            self.ids[kind].add(doc["id"])
            if kind == "lidar":
                self.points += int(doc.get("points_in", 0))
                sent = self.frame_sent.pop(doc["lineage"]["input_sha256"], None)
                if sent is not None:
                    self.frame_latency.append(now - sent)

    def outstanding_frames(self) -> int:
        with self.lock:
            return self.sent["lidar"] - self.got["lidar"]

    def complete(self) -> bool:
        with self.lock:
            dead = sum(self.dead.values())
            return sum(self.got.values()) + dead >= sum(self.expected.values())

    def report(self, seconds: float) -> dict[str, Any]:
        with self.lock:
            lat = sorted(self.frame_latency)

            def pick(q: float) -> float | None:
                return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) \
                    if lat else None

            return {
                "seconds": round(seconds, 3),
                "sent": dict(self.sent), "expected": dict(self.expected),
                "got": dict(self.got), "distinct_ids": {k: len(v) for k, v in self.ids.items()},
                "dead": dict(self.dead), "points": self.points,
                "frame_latency_ms": {"p50": pick(0.5), "p99": pick(0.99),
                                     "max": round(lat[-1] * 1000, 1) if lat else None},
            }


def load(args: argparse.Namespace) -> None:
    ledger = _Ledger()
    prefix = args.prefix
    client = _client(args.host, args.port, f"bench-load-{time.monotonic_ns()}")
    client.on_message = ledger.on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.subscribe([(f"{prefix}/out/gps/load-gps", 1), (f"{prefix}/out/lidar/load-lidar", 1),
                      (f"{prefix}/out/polygon/load-poly", 1), (f"{prefix}/dead/+", 1)])
    client.loop_start()
    subscribed.wait(10)
    frames = [pcd_frame(args.points, seed) for seed in range(4)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    print("ready", flush=True)

    start = time.monotonic()
    end = start + args.seconds
    due = {"gps": start, "lidar": start, "polygon": start}
    rates = {"gps": args.gps_rate, "lidar": args.lidar_rate, "polygon": args.polygon_rate}
    n = {"gps": 0, "lidar": 0, "polygon": 0}
    windowed = args.lidar_window > 0 and not args.lidar_rate
    while not stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        sent_any = False
        if rates["gps"] and now >= due["gps"]:
            client.publish(f"{prefix}/in/gps/load-gps", tpv_payload(n["gps"]), qos=1)
            with ledger.lock:
                ledger.sent["gps"] += 1
                ledger.expected["gps"] += 1
            n["gps"] += 1
            due["gps"] += 1 / rates["gps"]
            sent_any = True
        if rates["polygon"] and now >= due["polygon"]:
            client.publish(f"{prefix}/in/polygon/load-poly",
                           polygon_doc(n["polygon"], args.polygons_per_doc), qos=1)
            with ledger.lock:
                ledger.sent["polygon"] += 1
                ledger.expected["polygon"] += args.polygons_per_doc
            n["polygon"] += 1
            due["polygon"] += 1 / rates["polygon"]
            sent_any = True
        lidar_due = ledger.outstanding_frames() < args.lidar_window if windowed else \
            bool(rates["lidar"]) and now >= due["lidar"]
        if lidar_due:
            frame = frames[n["lidar"] % len(frames)]
            # A distinct input each time: the last point's intensity carries the count.
            frame[-4:] = np.float32(n["lidar"]).tobytes()
            payload = bytes(frame)
            digest = hashlib.sha256(payload).hexdigest()
            with ledger.lock:
                ledger.frame_sent[digest] = time.monotonic()
                ledger.sent["lidar"] += 1
                ledger.expected["lidar"] += 1
            client.publish(f"{prefix}/in/lidar/load-lidar", payload, qos=1)
            n["lidar"] += 1
            if not windowed:
                due["lidar"] += 1 / rates["lidar"]
            sent_any = True
        if not sent_any:
            time.sleep(0.002)
    published = time.monotonic()
    deadline = published + args.drain
    while not ledger.complete() and time.monotonic() < deadline:
        time.sleep(0.05)
    report = ledger.report(published - start)
    report["drain_s"] = round(time.monotonic() - published, 3)
    client.loop_stop()
    client.disconnect()
    print(json.dumps(report), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("burst")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--topic", required=True)
    b.add_argument("--count", type=int, required=True)
    b.add_argument("--first", type=int, default=0, help="index of the first cycle")
    g = sub.add_parser("load")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--prefix", required=True)
    g.add_argument("--seconds", type=float, required=True)
    g.add_argument("--gps-rate", type=float, default=0.0)
    g.add_argument("--lidar-rate", type=float, default=0.0)
    g.add_argument("--lidar-window", type=int, default=0)
    g.add_argument("--points", type=int, default=30_000)
    g.add_argument("--polygon-rate", type=float, default=0.0)
    g.add_argument("--polygons-per-doc", type=int, default=50)
    g.add_argument("--drain", type=float, default=30.0, help="seconds to wait for the rest")
    args = ap.parse_args()
    burst(args) if args.mode == "burst" else load(args)


if __name__ == "__main__":
    main()
