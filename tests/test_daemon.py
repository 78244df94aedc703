"""``gatewayd run`` end to end: a real daemon process, a real Mosquitto, a pty
as the GPS receiver, and a separate subscriber checking what comes out
against independent oracles (pynmea2 for the sentences, pyproj for the
projected coordinates, shapely for polygon validity)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pynmea2
import pyproj
import pytest
import shapely
from paho.mqtt.enums import CallbackAPIVersion
from receiver import cycle_sentences

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "gatewayd" / "samples"
GW = "gw-test"


class Subscriber:
    """Collects every message under the gateway's prefix, in a thread of its own."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-sub")
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"gatewayd/{GW}/#", qos=1)
        self._client.loop_start()
        # Nothing published before the SUBACK would reach this subscriber.
        if not subscribed.wait(10):
            raise AssertionError("the broker did not acknowledge the subscription")

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, message.retain))

    def records(self, topic_part: str = "/out/") -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages
                    if topic_part in t and not t.endswith("/pcd")]

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _, _ in self.messages]

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out; got topics {sorted(set(self.topics()))}")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Daemon:
    """``python -m gatewayd run`` with its own state dirs and a notify socket."""

    def __init__(self, tmp: Path, port: int, *settings: str,
                 env: dict[str, str] | None = None, config: Path | None = None) -> None:
        self.tmp = tmp
        self.notify_path = tmp / f"notify-{time.monotonic_ns()}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.1)
        self.notes: list[str] = []
        args = [sys.executable, "-m", "gatewayd", "run",
                "--set", f"mqtt.port={port}", "--set", "mqtt.host=127.0.0.1",
                "--set", f"gateway.id={GW}", "--set", f"gateway.state_dir={tmp / 'state'}",
                "--set", f"daemon.runtime_dir={tmp / 'run'}",
                "--set", "daemon.gps_idle_flush_s=0.3", "--set", "daemon.grace_s=5",
                "--set", "daemon.status_interval_s=0.5",
                "--set", "mqtt.reconnect_min_s=0.2", "--set", "mqtt.reconnect_max_s=1"]
        for s in settings:
            args += ["--set", s]
        if config is not None:
            args += ["--config", str(config)]
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **(env or {})}
        self.log = (tmp / "daemon.log").open("ab")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env, cwd=tmp)

    def wait_note(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for note in self.notes:
                if note.startswith(prefix) or f"\n{prefix}" in note:
                    return note
            with contextlib.suppress(TimeoutError):
                self.notes.append(self.notify.recv(4096).decode())
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}:\n"
                                     f"{self.output()}")
        raise AssertionError(f"no {prefix} from the daemon; notes {self.notes}\n"
                             f"{self.output()}")

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        """Every notification that arrives within ``seconds``, with its time."""
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                note = self.notify.recv(4096).decode()
                self.notes.append(note)
                out.append((time.monotonic(), note))
        return out

    def output(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then its exit code; again (a test's cleanup after it
        stopped the daemon itself), just the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        if self.notify.fileno() < 0:
            return code
        self.notify.settimeout(0)
        with contextlib.suppress(BlockingIOError):
            while True:  # what it said on its way out
                self.notes.append(self.notify.recv(4096).decode())
        self.notify.close()
        self.log.close()
        return code


class Pty:
    """A GPS receiver on a pseudo-terminal, reached through a stable symlink."""

    def __init__(self, link: Path) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.link = link
        os.symlink(os.ttyname(self.slave), link)
        self.written: list[bytes] = []

    def talk(self, cycles: range, hz: float = 10.0) -> None:
        for i in cycles:
            for s in cycle_sentences(i):
                os.write(self.master, s)
                self.written.append(s)
            time.sleep(1 / hz)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def _per_cycle(records: list[dict]) -> list[dict]:
    """The last fix of each reporting cycle (of each time): gpsd reports the
    first cycle's RMC and GGA each, before it knows that GGA ends a cycle."""
    last: dict = {}
    for r in records:
        last[r.get("time")] = r
    return list(last.values())


def _publish(port: int, topic: str, payload: bytes, qos: int = 1) -> None:
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", str(qos),
                    "-t", topic, "-s"], input=payload, check=True, timeout=10)


def _pcd(points: np.ndarray) -> bytes:
    n = len(points)
    header = ("VERSION 0.7\nFIELDS x y z\nSIZE 8 8 8\nTYPE F F F\nCOUNT 1 1 1\n"
              f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary\n")
    return header.encode() + np.ascontiguousarray(points, dtype="<f8").tobytes()


@pytest.mark.slow
def test_serial_nmea_and_mqtt_inputs_become_correct_records_on_the_output_topics(
        mosquitto, tmp_path):
    gps = Pty(tmp_path / "gps0")
    sub = Subscriber(mosquitto.port)
    prom = tmp_path / "gatewayd.prom"
    daemon = Daemon(tmp_path, mosquitto.port, f"serial.ports=gps0={gps.link}@115200",
                    "crs.target=EPSG:32632", f"zones.file={SAMPLES / 'zones.geojson'}",
                    "crs.source=EPSG:32632", f"metrics.textfile={prom}",
                    "metrics.textfile_interval_s=1")
    try:
        ready = daemon.wait_note("READY=1")
        assert "STATUS=queue 0/500" in ready
        gps.talk(range(30))
        prefix = f"gatewayd/{GW}/in"
        _publish(mosquitto.port, f"{prefix}/polygon/field",
                 (SAMPLES / "capture-sensors.geojson").read_bytes())
        t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
        x0, y0 = t.transform(9.18, 48.78)
        rng = np.random.default_rng(5)
        cloud = np.column_stack([x0 + rng.uniform(0, 20, 5000), y0 + rng.uniform(0, 20, 5000),
                                 rng.normal(250, 1, 5000)])
        _publish(mosquitto.port, f"{prefix}/lidar/mast", _pcd(cloud))
        _publish(mosquitto.port, f"{prefix}/gps/phone",
                 b'{"_type":"location","lat":48.1,"lon":11.5,"tst":1700000000,"vel":36}')
        _publish(mosquitto.port, f"{prefix}/gps/a/b", b"$GPGGA")  # an injected level
        sub.wait_for(lambda: len(_per_cycle([r for r in sub.records()
                                             if r["source"] == "gps0"])) >= 30
                     and any(r["kind"] == "lidar_frame" for r in sub.records())
                     and any(r["source"] == "phone" for r in sub.records()))

        all_fixes = [r for r in sub.records() if r["source"] == "gps0"]
        fixes = _per_cycle(all_fixes)
        rmc = [pynmea2.parse(s.decode().strip()) for s in gps.written if b"RMC" in s]
        assert len(fixes) == len(rmc) == 30 and len(all_fixes) == 31
        for fix, want in zip(fixes, rmc):
            assert fix["kind"] == "gps_fix" and fix["mode"] == 3
            assert fix["lat"] == pytest.approx(want.latitude, abs=1e-8)
            assert fix["lon"] == pytest.approx(want.longitude, abs=1e-8)
            assert fix["speed"] == pytest.approx(float(want.spd_over_grnd) * 1852 / 3600,
                                                 abs=1e-3)
            x, y = t.transform(fix["lon"], fix["lat"])
            assert (fix["x"], fix["y"]) == (pytest.approx(x, abs=1e-3),
                                            pytest.approx(y, abs=1e-3))
            assert fix["crs"] == "EPSG:32632"
        assert len({f["id"] for f in all_fixes}) == 31

        features = json.loads((SAMPLES / "capture-sensors.geojson").read_text())["features"]
        polygons = {r["feature_id"]: r for r in sub.records("/out/polygon/field")}
        dead = sub.records("/dead/field")
        checked = 0
        for feature in features:
            fid = str(feature.get("id"))
            if fid not in polygons:
                continue
            geom = shapely.geometry.shape(feature["geometry"])
            assert polygons[fid]["valid"] == bool(shapely.is_valid(geom)), fid
            checked += 1
        assert checked == len(polygons) and checked + len(dead) >= len(features) - 1

        frame = next(r for r in sub.records() if r["kind"] == "lidar_frame")
        assert frame["points_in"] == 5000 and 0 < frame["points_out"] <= 5000
        lo = cloud.min(axis=0)
        assert frame["bbox"][0] == pytest.approx(lo[0], abs=0.01)
        assert any(t_.endswith("/out/lidar/mast/pcd") for t_ in sub.topics())

        phone = next(r for r in sub.records() if r["source"] == "phone")
        assert phone["lat"] == 48.1 and phone["speed"] == pytest.approx(10.0)

        # The workers' chunks are timed: the frame, the polygons, the fixes.
        def chunk_histogram() -> dict[str, float]:
            text = prom.read_text() if prom.exists() else ""
            return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                    if line.startswith("gatewayd_chunk_duration_seconds")}

        deadline = time.monotonic() + 10
        while chunk_histogram().get("gatewayd_chunk_duration_seconds_count", 0) < 3 and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        h = chunk_histogram()
        assert h["gatewayd_chunk_duration_seconds_count"] >= 3
        assert h['gatewayd_chunk_duration_seconds_bucket{le="+Inf"}'] == \
            h["gatewayd_chunk_duration_seconds_count"]
        assert 0 < h["gatewayd_chunk_duration_seconds_sum"] < \
            h["gatewayd_chunk_duration_seconds_count"] * 60

        sub.wait_for(lambda: any(json.loads(p).get("counts", {}).get("refused_topics")
                                 for t_, p, _ in sub.messages if t_.endswith("/status")))
    finally:
        code = daemon.stop()
        gps.close()
    assert code == 0, daemon.output()
    assert "Traceback" not in daemon.output()
    sub.wait_for(lambda: any(t_.endswith("/status") and json.loads(p)["state"] == "offline"
                             for t_, p, _ in sub.messages))
    sub.close()


@pytest.mark.slow
def test_qos1_inputs_wait_at_the_broker_while_the_daemon_is_away(mosquitto, tmp_path):
    first = Daemon(tmp_path, mosquitto.port)
    first.wait_note("READY=1")
    assert first.stop() == 0  # the persistent session now exists at the broker
    prefix = f"gatewayd/{GW}/in/gps"
    sent = 40
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-pub")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    for i in range(sent):
        doc = {"class": "TPV", "mode": 2, "lat": 50.0 + i * 1e-4, "lon": 8.0,
               "time": f"2026-01-01T00:00:{i:02d}.000Z"}
        client.publish(f"{prefix}/away", json.dumps(doc), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()

    sub = Subscriber(mosquitto.port)
    second = Daemon(tmp_path, mosquitto.port)
    try:
        second.wait_note("READY=1")
        sub.wait_for(lambda: len(sub.records("/out/gps/away")) >= sent)
        lats = sorted(r["lat"] for r in sub.records("/out/gps/away"))
        assert lats == sorted(50.0 + i * 1e-4 for i in range(sent))
    finally:
        assert second.stop() == 0, second.output()
        sub.close()


def test_a_backlog_of_lidar_frames_at_the_broker_is_taken_a_part_at_a_time_and_all_arrive(
        mosquitto, tmp_path):
    # 30 frames of 720 kB wait at the broker, which sends them all at once
    # when the daemon connects (within its Receive Maximum of 1 000; Mosquitto
    # 2.0.11 would past it too). The daemon takes 1 MiB of them at a time
    # (pipeline.max_open_mb), the client keeps 16 MiB (max_parked_bytes) and
    # leaves the rest with the broker, which sends it again on a new link:
    # every frame gives its record once.
    settings = ("crs.source=EPSG:32632", "pipeline.max_open_mb=1")
    first = Daemon(tmp_path, mosquitto.port, *settings)
    first.wait_note("READY=1")
    assert first.stop() == 0  # the persistent session now exists at the broker
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    x0, y0 = t.transform(9.18, 48.78)
    rng = np.random.default_rng(11)
    frames = [_pcd(np.column_stack([x0 + rng.uniform(0, 50, 30_000),
                                    y0 + rng.uniform(0, 50, 30_000),
                                    rng.normal(250, 1, 30_000)])) for _ in range(30)]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-pub")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    for frame in frames:
        client.publish(f"gatewayd/{GW}/in/lidar/mast", frame, qos=1).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()

    sub = Subscriber(mosquitto.port)
    second = Daemon(tmp_path, mosquitto.port, *settings)
    try:
        second.wait_note("READY=1")
        sub.wait_for(lambda: len(sub.records("/out/lidar/mast")) >= len(frames), 60)
        time.sleep(0.5)  # anything sent twice would come now
        got = sub.records("/out/lidar/mast")
        digests = sorted(r["lineage"]["input_sha256"] for r in got)
        assert digests == sorted(hashlib.sha256(f).hexdigest() for f in frames)
        assert all(r["points_in"] == 30_000 for r in got)
        assert sub.records("/dead/") == []
        # The status says what was left with the broker, and the reconnects
        # that had it sent again; nothing is held back once all is in.
        status_args = [sys.executable, "-m", "gatewayd", "status", "--set",
                       f"daemon.runtime_dir={tmp_path / 'run'}"]
        deadline = time.monotonic() + 10
        while True:
            shown = subprocess.run([*status_args, "--json"], capture_output=True, text=True,
                                   timeout=30)
            assert shown.returncode == 0, shown.stderr
            intake = json.loads(shown.stdout)["mqtt_intake"]
            settled = intake["parked"] == 0 and not intake["paused"] and intake["unacked"] == 0
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert intake["parked"] == 0 and intake["parked_bytes"] == 0 and not intake["paused"]
        assert intake["left_at_broker"] > 0 and intake["reconnects"] >= 1
        assert intake["dropped_qos0"] == 0 and intake["unacked"] == 0
        assert intake["received"] >= len(frames)
        human = subprocess.run(status_args, capture_output=True, text=True, timeout=30).stdout
        assert f"{intake['left_at_broker']} left at the broker to send again" in human
    finally:
        assert second.stop() == 0, second.output()
        sub.close()
    assert "left with the MQTT broker; reconnecting so that it sends them again" in \
        second.output()


def test_the_intake_takes_mqtt_input_by_count_and_by_bytes():
    from gatewayd.config import load_config
    from gatewayd.daemon import Daemon as InProcess
    from gatewayd.mqtt import Message

    class Client:
        paused = False

        def pause(self) -> None:
            self.paused = True

    def message(size: int) -> Message:
        return Message("gatewayd/gw/in/lidar/mast", b"x" * size, 1, False, 1)

    daemon = InProcess(load_config(None, ["pipeline.max_open_mb=1"], {}))
    daemon._mqtt = client = Client()
    # Small messages: the window (the queue's size, 500) counts, not their bytes.
    assert daemon._on_messages([message(100) for _ in range(300)]) == 300
    assert not client.paused
    assert daemon._on_messages([message(100) for _ in range(300)]) == 200
    assert client.paused
    daemon._arrived, daemon._arrived_bytes, client.paused = [], 0, False
    # Large ones: the third of 400 kB reaches 1 MiB; it is taken, and the client paused.
    assert daemon._on_messages([message(400_000) for _ in range(5)]) == 3
    assert client.paused
    # One is always taken, however large.
    daemon._arrived, daemon._arrived_bytes, client.paused = [], 0, False
    assert daemon._on_messages([message(5 << 20)]) == 1
    assert client.paused


def _rmc_without_line_end() -> bytes:
    from functools import reduce

    body = "GPRMC,120000.00,A,4846.8000,N,00910.8000,E,0.0,0.0,011226,,,A"
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}".encode()


def test_mqtt_gps_sources_are_kept_to_a_bound_and_the_quietest_gives_way():
    from gatewayd.ingest import GpsStreams

    streams = GpsStreams(mqtt_limit=4, mqtt_capacity=16)
    # A serial port's stream, quietest of all, is not one of them.
    port = streams.serial("port")
    streams.fed("port", 0.0)
    made = {}
    for n in range(4):
        made[n], gone = streams.mqtt(f"s{n}")
        assert gone is None
        streams.fed(f"s{n}", 100.0 + n)
    assert streams.mqtt("s0") == (made[0], None)  # a known source takes no room
    assert len(streams) == 5

    new, gone = streams.mqtt("new")
    assert gone is made[0] and gone.source == "s0"
    assert "s0" not in streams and {"new", "s1", "s2", "s3", "port"} <= set(
        s.source for s in streams)
    assert streams.get("port") is port
    # The then quietest is "new", which never had NMEA (as a TPV source), before "s1".
    _, gone = streams.mqtt("newer")
    assert gone is new and streams.get("s1") is made[1]
    # A source that comes back starts afresh ("newer", with no NMEA yet, gives way).
    again, gone = streams.mqtt("s0")
    assert again is not made[0] and gone is not None and gone.source == "newer"
    # MQTT sources' decoders are small; a serial port's keeps room for 64 KiB blocks.
    assert again.decoder._capacity == 16 and port.decoder._capacity > 16


def test_gps_streams_name_those_whose_open_cycle_has_been_quiet():
    from gatewayd.ingest import GpsStreams

    streams = GpsStreams(mqtt_limit=8, mqtt_capacity=16)
    holding = streams.serial("port")
    holding.nmea(_rmc_without_line_end(), "2026-12-01T12:00:00.000Z")
    streams.fed("port", 10.0)
    done, _ = streams.mqtt("done")
    done.nmea(_rmc_without_line_end() + b"\r\n", "2026-12-01T12:00:00.000Z")
    streams.fed("done", 10.0)
    assert holding.holding and not done.holding
    assert streams.quiet(10.5, 1.0) == []
    assert streams.quiet(11.0, 1.0) == [holding]


def test_a_forgotten_mqtt_gps_source_has_its_open_cycle_flushed_into_the_intake():
    from gatewayd.config import load_config
    from gatewayd.daemon import Daemon as InProcess

    daemon = InProcess(load_config(None, [], {}))
    bound = daemon._streams.mqtt_limit
    token = object()
    for n in range(bound):
        daemon._mqtt_stream(f"s{n}")
        daemon._streams.fed(f"s{n}", 100.0 + n)
    # The quietest holds a sentence without its line end: a cycle still open.
    items, _ = daemon._streams.get("s0").nmea(_rmc_without_line_end(),
                                              "2026-12-01T12:00:00.000Z", token)
    assert items == [] and daemon._streams.get("s0").holding
    assert not daemon._mqtt_inbox

    daemon._mqtt_stream("new")
    assert "s0" not in daemon._streams and len(daemon._streams) == bound
    # Its open cycle went into the intake, with the input's token.
    (fix,) = daemon._mqtt_inbox
    assert (fix.tpv["lat"], fix.tpv["lon"]) == (48.78, 9.18)
    assert fix.origin.source == "s0" and fix.origin.tokens == (token,)
    assert daemon._counts["gps_sources_forgotten"] == 1


def test_the_heap_is_trimmed_once_after_a_burst_of_mqtt_input_is_done():
    import asyncio

    from gatewayd.config import load_config
    from gatewayd.daemon import Daemon as InProcess

    daemon = InProcess(load_config(None, ["pipeline.max_open_mb=2"], {}))
    trims: list[int] = []
    daemon._trim = trims.append
    daemon._open_peak = 900_000  # under half the budget: nothing to give back
    asyncio.run(daemon._trim_heap())
    assert trims == []
    daemon._open_peak, daemon._open = 1 << 20, 1  # a burst, not done yet
    asyncio.run(daemon._trim_heap())
    assert trims == []
    daemon._open = 0
    asyncio.run(daemon._trim_heap())
    asyncio.run(daemon._trim_heap())
    assert trims == [0]  # once, with malloc_trim's pad of 0


def test_a_broken_configuration_exits_2_with_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline]\nqueue_size = -3\n")
    proc = subprocess.run([sys.executable, "-m", "gatewayd", "run", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pipeline.queue_size" in lines[0]
    assert "Traceback" not in proc.stderr


def _statuses(sub: Subscriber) -> list[dict]:
    with sub._lock:
        return [json.loads(p) for t, p, _ in sub.messages if t.endswith("/status")]


@pytest.mark.slow
def test_chunks_shrink_while_the_soc_is_hot_and_grow_back_when_it_cools(mosquitto, tmp_path):
    zone = tmp_path / "sys" / "class" / "thermal" / "thermal_zone3"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("50000\n")
    sub = Subscriber(mosquitto.port)
    daemon = Daemon(tmp_path, mosquitto.port, f"thermal.sysfs_root={tmp_path / 'sys'}",
                    "thermal.interval_s=0.2", "thermal.hold_s=0.3", "pipeline.chunk_size=128",
                    "pipeline.min_chunk_size=16")
    try:
        daemon.wait_note("READY=1")
        sub.wait_for(lambda: any(s.get("temperature_c") == 50.0 for s in _statuses(sub)))
        assert _statuses(sub)[-1]["chunk_size"] == 128
        (zone / "temp").write_text("80000\n")  # over the soft limit of 75 °C
        sub.wait_for(lambda: any(s["chunk_size"] == 16 for s in _statuses(sub)))
        sizes = [s["chunk_size"] for s in _statuses(sub)]
        shrinking = sizes[sizes.index(128):sizes.index(16) + 1]
        assert shrinking == sorted(shrinking, reverse=True)  # stepwise, never up
        assert any(s["thermal"] == "hot" for s in _statuses(sub))
        (zone / "temp").write_text("60000\n")  # below the limit less the hysteresis
        sub.wait_for(lambda: _statuses(sub)[-1]["chunk_size"] == 128)
    finally:
        assert daemon.stop() == 0, daemon.output()
        sub.close()
    assert "chunk size 16" in daemon.output()


def _worker_pids(textfile: Path) -> list[int]:
    pids = []
    for line in textfile.read_text().splitlines():
        if line.startswith("gatewayd_worker_rss_bytes{"):
            pids.append(int(line.split('pid="')[1].split('"')[0]))
    return pids


def _wait_worker_pids(textfile: Path, timeout: float = 10.0) -> list[int]:
    """The workers' pids, once the metrics textfile names them."""
    deadline = time.monotonic() + timeout
    while not (textfile.exists() and _worker_pids(textfile)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _worker_pids(textfile) if textfile.exists() else []


@pytest.mark.slow
def test_watchdog_pings_follow_progress_and_stop_while_the_pipeline_is_wedged(
        mosquitto, tmp_path):
    prom = tmp_path / "gatewayd.prom"
    daemon = Daemon(tmp_path, mosquitto.port, "daemon.watchdog_stall_s=2",
                    "pipeline.chunk_timeout_s=60", f"metrics.textfile={prom}",
                    "metrics.textfile_interval_s=1",
                    env={"WATCHDOG_USEC": "1000000"})
    wedged: list[int] = []
    try:
        daemon.wait_note("READY=1")
        pings = [t for t, n in daemon.collect(3.0) if "WATCHDOG=1" in n]
        assert len(pings) >= 4  # every half of WATCHDOG_USEC while idle
        assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0

        wedged = _wait_worker_pids(prom)
        assert len(wedged) == 2
        assert "gatewayd_queue_capacity" in prom.read_text()
        for pid in wedged:
            os.kill(pid, signal.SIGSTOP)  # work waits, nothing progresses
        # Polygons always need a worker (fixes do only with zones or another CRS).
        for i in range(20):
            x = 8.0 + i * 1e-3
            ring = [[x, 50.0], [x + 1e-3, 50.0], [x + 1e-3, 50.001], [x, 50.0]]
            doc = {"type": "Feature", "properties": {},
                   "geometry": {"type": "Polygon", "coordinates": [ring]}}
            _publish(mosquitto.port, f"gatewayd/{GW}/in/polygon/stuck",
                     json.dumps(doc).encode())
        daemon.collect(3.0)  # the stall limit (2 s) passes
        silent = [t for t, n in daemon.collect(2.5) if "WATCHDOG=1" in n]
        assert silent == []  # systemd would now restart the service

        for pid in wedged:
            os.kill(pid, signal.SIGCONT)
        wedged = []
        resumed = [t for t, n in daemon.collect(3.0) if "WATCHDOG=1" in n]
        assert len(resumed) >= 2

        daemon.process.send_signal(signal.SIGHUP)
        notes = [n for _, n in daemon.collect(2.0)]
        reloading = next(n for n in notes if "RELOADING=1" in n)
        usec = int(reloading.split("MONOTONIC_USEC=")[1].split()[0])
        assert abs(usec - time.monotonic_ns() // 1000) < 5_000_000
        assert any("READY=1" in n for n in notes[notes.index(reloading):])

        shown = subprocess.run([sys.executable, "-m", "gatewayd", "status", "--set",
                                f"daemon.runtime_dir={tmp_path / 'run'}"],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert f"on {GW}: running" in shown.stdout and "queue" in shown.stdout
    finally:
        for pid in wedged:
            os.kill(pid, signal.SIGCONT)
        code = daemon.stop()
    assert code == 0, daemon.output()
    assert any(n.startswith("STOPPING=1") for n in daemon.notes)
    assert "Traceback" not in daemon.output()


@contextlib.contextmanager
def _workers_stopped(tmp_path: Path, port: int, *settings: str) -> Iterator[Daemon]:
    """A daemon with a grace of 1 s, a chunk an item, and both its workers
    SIGSTOPped once it is ready: no chunk can finish. Afterwards the workers
    go on, and the daemon is stopped if the test did not stop it."""
    prom = tmp_path / "gatewayd.prom"
    daemon = Daemon(tmp_path, port, "daemon.grace_s=1", "pipeline.chunk_timeout_s=60",
                    "pipeline.chunk_size=1", "pipeline.min_chunk_size=1",
                    f"metrics.textfile={prom}", "metrics.textfile_interval_s=1", *settings)
    stopped: list[int] = []
    try:
        daemon.wait_note("READY=1")
        stopped = _wait_worker_pids(prom)
        assert len(stopped) == 2
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        yield daemon
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if daemon.process.poll() is None:
            daemon.stop()


@pytest.mark.slow
def test_a_stop_whose_grace_runs_out_exits_0_and_leaves_its_inputs_at_the_broker(
        mosquitto, tmp_path):
    sent = 6
    sub = Subscriber(mosquitto.port)
    try:
        # A chunk a polygon: more chunks than slots, some in flight and one
        # waiting for a slot when the grace runs out.
        with _workers_stopped(tmp_path, mosquitto.port) as first:
            for i in range(sent):
                x = 8.0 + i * 1e-3
                ring = [[x, 50.0], [x + 1e-3, 50.0], [x + 1e-3, 50.001], [x, 50.0]]
                doc = {"type": "Feature", "properties": {"n": i},
                       "geometry": {"type": "Polygon", "coordinates": [ring]}}
                _publish(mosquitto.port, f"gatewayd/{GW}/in/polygon/late",
                         json.dumps(doc).encode())
            time.sleep(1.0)  # taken in, and in chunks
            began = time.monotonic()
            assert first.stop(timeout=30) == 0, first.output()
            # The grace (1 s), and no more waiting for the stuck workers' chunks.
            assert time.monotonic() - began < 5.5
            out = first.output()
            line = next(x for x in out.splitlines() if "grace period over" in x)
            held = int(line.split("grace period over with ")[1].split(" items")[0])
            assert 1 <= held <= sent
            assert "Traceback" not in out
            assert "0 records out, 0 dead letters" in out
            assert sub.records("/out/polygon/late") == []
            assert sub.records("/dead/late") == []

        # The next start gets them all from the broker: nothing taken in was acked.
        second = Daemon(tmp_path, mosquitto.port)
        try:
            second.wait_note("READY=1")
            sub.wait_for(lambda: len(sub.records("/out/polygon/late")) >= sent)
            got = sub.records("/out/polygon/late")
            assert len({r["id"] for r in got}) == sent
        finally:
            assert second.stop() == 0, second.output()
    finally:
        sub.close()


@pytest.mark.slow
def test_a_stop_whose_grace_runs_out_keeps_the_serial_fixes_for_the_next_start(
        mosquitto, tmp_path):
    # No broker holds a serial port's fixes: those in chunks that cannot
    # finish, queued, or waiting in memory are kept on disk at the stop, and
    # their records come after the next start, in order.
    gps = Pty(tmp_path / "gps0")
    # A small queue: the intake also waits for room, with a fix in hand.
    settings = (f"serial.ports=gps0={gps.link}@115200", "crs.target=EPSG:32632",
                "pipeline.queue_size=4")
    sub = Subscriber(mosquitto.port)
    try:
        with _workers_stopped(tmp_path, mosquitto.port, *settings) as first:
            gps.talk(range(30))
            time.sleep(1.0)  # decoded, in chunks and queued
            assert first.stop(timeout=30) == 0, first.output()
            out = first.output()
            line = next(x for x in out.splitlines() if "grace period over" in x)
            # Every fix (the first cycle twice: before the cycle's end is learned,
            # its RMC alone too, as gpsd does), none lost.
            assert "31 serial fixes kept for the next start, 0 lost" in line, line
            assert "0 records out, 0 dead letters" in out and "Traceback" not in out
        assert sub.records("/out/gps/gps0") == []

        second = Daemon(tmp_path, mosquitto.port, *settings)
        try:
            second.wait_note("READY=1")
            sub.wait_for(lambda: len(sub.records("/out/gps/gps0")) >= 31)
            got = sub.records("/out/gps/gps0")
            times = [r["time"] for r in got]
            assert len(got) == 31 and len({r["id"] for r in got}) == 31
            assert times == sorted(times) and len(set(times)) == 30
            assert "Traceback" not in second.output()
        finally:
            assert second.stop() == 0, second.output()
    finally:
        gps.close()
        sub.close()


def test_gps_json_over_mqtt_gives_a_fix_each_and_a_dead_letter_for_each_refused_one(
        mosquitto, tmp_path):
    sub = Subscriber(mosquitto.port)
    daemon = Daemon(tmp_path, mosquitto.port)
    sent = {
        "truncated": b'{"class":"TPV","mode":2,"lat":48.78,',
        "out of range": b'{"class":"TPV","mode":2,"lat":95.0,"lon":9.18}',
        "not a TPV": b'{"class":"SKY","satellites":[]}',
        "spaced": b' \r\n{"class":"TPV","mode":2,"lat":48.78,"lon":9.18}',
        "alt": b'{"class":"TPV","mode":3,"lat":48.5,"lon":9.5,"alt":300.5,"speed":2}',
    }
    try:
        daemon.wait_note("READY=1")
        for payload in sent.values():
            _publish(mosquitto.port, f"gatewayd/{GW}/in/gps/json", payload)
        sub.wait_for(lambda: len(sub.records("/out/gps/json")) >= 2 and
                     len(sub.records("/dead/json")) >= 3)
        time.sleep(0.5)  # nothing more comes
        fixes, dead = sub.records("/out/gps/json"), sub.records("/dead/json")
    finally:
        assert daemon.stop() == 0, daemon.output()
        sub.close()
    assert len(fixes) == 2 and len(dead) == 3
    # Each named by the bytes of its message.
    digest = {hashlib.sha256(p).hexdigest(): name for name, p in sent.items()}
    assert sorted(digest[r["lineage"]["input_sha256"]] for r in dead) == \
        ["not a TPV", "out of range", "truncated"]
    assert all(r["reason"] == "bad_input" for r in dead)
    spaced, alt = sorted(fixes, key=lambda r: r["lat"], reverse=True)
    assert digest[spaced["lineage"]["input_sha256"]] == "spaced"
    assert (spaced["lat"], spaced["lon"], spaced["mode"]) == (48.78, 9.18, 2)
    # gpsd: "alt" is the old name of altMSL.
    assert (alt["altMSL"], alt["speed"], alt["mode"]) == (300.5, 2.0, 3) and "alt" not in alt


def test_status_for_a_person_says_what_the_mqtt_intake_holds_back_only_when_it_does():
    from gatewayd.status import render_status

    keeping_up = {"state": "running", "mqtt": "connected",
                  "mqtt_intake": {"received": 900, "acked": 900, "unacked": 0,
                                  "paused": False, "parked": 0, "parked_bytes": 0,
                                  "left_at_broker": 0, "dropped_qos0": 0, "reconnects": 0}}
    assert "  mqtt        connected\n" in render_status(keeping_up, 0.0, 5.0) + "\n"
    behind = {**keeping_up, "mqtt_intake": {**keeping_up["mqtt_intake"], "paused": True,
                                             "parked": 12, "parked_bytes": 4096,
                                             "left_at_broker": 30, "dropped_qos0": 2,
                                             "reconnects": 3}}
    line = next(x for x in render_status(behind, 0.0, 5.0).splitlines() if "mqtt" in x)
    assert line == ("  mqtt        connected (paused, 12 parked (4096 bytes), 30 left at the "
                    "broker to send again, 2 QoS 0 dropped, 3 reconnects)")
    # A status document of an older daemon, without the intake: as before.
    older = {"state": "running", "mqtt": "connected"}
    assert "  mqtt        connected\n" in render_status(older, 0.0, 5.0) + "\n"


def test_status_without_a_daemon_says_so_in_one_line_and_exits_3(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gatewayd", "status", "--set",
                           f"daemon.runtime_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert proc.stderr.strip().count("\n") == 0 and "not running" in proc.stderr


@pytest.mark.slow
def test_sighup_applies_new_topics_and_zones_and_keeps_the_old_config_when_invalid(
        mosquitto, tmp_path):
    conf = tmp_path / "gatewayd.toml"
    conf.write_text('[mqtt]\ntopic_prefix = "site/a"\n')
    sub = Subscriber(mosquitto.port)
    sub._client.subscribe("site/#", qos=1)
    daemon = Daemon(tmp_path, mosquitto.port, config=conf)
    fix = b'{"class":"TPV","mode":2,"lat":48.7801,"lon":9.1801}'
    try:
        daemon.wait_note("READY=1")
        _publish(mosquitto.port, "site/a/in/gps/car", fix)
        sub.wait_for(lambda: sub.records("site/a/out/gps/car"))
        assert sub.records("site/a/out/gps/car")[0]["zones"] == []

        zones = json.loads((SAMPLES / "zones.geojson").read_text())
        inside = [f for f in zones["features"]
                  if shapely.geometry.shape(f["geometry"]).contains(
                      shapely.geometry.Point(9.1801, 48.7801))]
        conf.write_text('[mqtt]\ntopic_prefix = "site/b"\n'
                        f'[zones]\nfile = "{SAMPLES / "zones.geojson"}"\n')
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_note("RELOADING=1")
        time.sleep(1.0)  # the new subscription and workers
        _publish(mosquitto.port, "site/b/in/gps/car", fix.replace(b"48.7801", b"48.78011"))
        sub.wait_for(lambda: sub.records("site/b/out/gps/car"), timeout=30)
        got = sub.records("site/b/out/gps/car")[0]
        want = {str(f.get("id") or f["properties"].get("name")) for f in inside}
        assert set(got["zones"]) == want and want  # the point lies in a zone

        conf.write_text("[pipeline]\nqueue_size = -1\n")  # invalid: refused
        daemon.process.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        _publish(mosquitto.port, "site/b/in/gps/car", fix.replace(b"48.7801", b"48.78012"))
        sub.wait_for(lambda: len(sub.records("site/b/out/gps/car")) >= 2)
    finally:
        assert daemon.stop() == 0, daemon.output()
        sub.close()
    assert "reload refused" in daemon.output() and "queue_size" in daemon.output()


@pytest.mark.slow
def test_serial_fixes_spill_to_disk_while_the_queue_is_full_and_all_arrive_later(
        mosquitto, tmp_path):
    gps = Pty(tmp_path / "gps0")
    prom = tmp_path / "m.prom"
    sub = Subscriber(mosquitto.port)
    daemon = Daemon(tmp_path, mosquitto.port, f"serial.ports=gps0={gps.link}@115200",
                    "pipeline.queue_size=4", "serial.backlog=4", "pipeline.chunk_size=2",
                    "pipeline.min_chunk_size=1",
                    "pipeline.chunk_timeout_s=60", "pipeline.overflow=spill",
                    # Fixes need the (stopped) workers only to leave lon/lat.
                    "crs.target=EPSG:32632",
                    f"metrics.textfile={prom}", "metrics.textfile_interval_s=1")
    stopped: list[int] = []
    try:
        daemon.wait_note("READY=1")
        stopped = _wait_worker_pids(prom)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        gps.talk(range(60))
        spill = tmp_path / "state" / "spill" / "gps0"
        deadline = time.monotonic() + 10
        while not any(f.stat().st_size for f in spill.glob("*.seg")) and \
                time.monotonic() < deadline:
            time.sleep(0.1)  # written in batches, a second apart at most
        assert any(f.stat().st_size for f in spill.glob("*.seg")), daemon.output()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        stopped = []
        sub.wait_for(lambda: len(_per_cycle([r for r in sub.records()
                                             if r["source"] == "gps0"])) >= 60, timeout=40)
        fixes = _per_cycle([r for r in sub.records() if r["source"] == "gps0"])
        rmc = [pynmea2.parse(s.decode().strip()) for s in gps.written if b"RMC" in s]
        assert [f["lat"] for f in fixes] == pytest.approx([m.latitude for m in rmc], abs=1e-8)
        assert [f["lon"] for f in fixes] == pytest.approx([m.longitude for m in rmc], abs=1e-8)
        sub.wait_for(lambda: any(
            json.loads(p).get("sources", {}).get("gps0", {}).get("spilled", 0) > 0
            for t_, p, _ in sub.messages if t_.endswith("/status")))
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        code = daemon.stop()
        gps.close()
        sub.close()
    assert code == 0, daemon.output()


@pytest.mark.slow
def test_every_result_is_in_the_audit_trail_and_tampering_is_named(mosquitto, tmp_path):
    sub = Subscriber(mosquitto.port)
    audit = tmp_path / "audit"
    daemon = Daemon(tmp_path, mosquitto.port, "audit.enabled=true",
                    f"audit.directory={audit}", "audit.flush_interval_s=0.1")
    try:
        daemon.wait_note("READY=1")
        for i in range(12):
            doc = {"class": "TPV", "mode": 2, "lat": 40.0 + i * 1e-3, "lon": 3.0}
            _publish(mosquitto.port, f"gatewayd/{GW}/in/gps/van", json.dumps(doc).encode())
        sub.wait_for(lambda: len(sub.records("/out/gps/van")) >= 12)
        sub.wait_for(lambda: len([t for t in sub.topics() if t.endswith("/lineage")]) >= 12)
    finally:
        assert daemon.stop() == 0, daemon.output()
        sub.close()
    ids = {r["id"] for r in sub.records("/out/gps/van")}

    def verify(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gatewayd", "audit", "verify",
                               "--set", f"audit.directory={audit}", *extra],
                              capture_output=True, text=True, timeout=60)

    good = verify("--json")
    assert good.returncode == 0, good.stdout + good.stderr
    lines = [json.loads(line) for f in sorted(audit.glob("*.jsonl"))
             for line in f.read_text().splitlines()]
    assert ids <= {line.get("id") for line in lines}
    assert json.loads(good.stdout)["lines"] == len(lines)

    log = sorted(audit.glob("*.jsonl"))[-1]
    text = log.read_text().splitlines(keepends=True)
    text[4] = text[4].replace("40.00", "41.00", 1) if "40.00" in text[4] else \
        text[4].replace('"gps_fix"', '"gps_fiz"', 1)
    log.write_text("".join(text))
    broken = verify()
    assert broken.returncode == 13
    assert "line 5" in broken.stdout or '"line": 5' in broken.stdout, broken.stdout
