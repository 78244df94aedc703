"""Benchmark of `gatewayd run` end to end: a real daemon process, a real
Mosquitto (tests/broker.py), a pty as the GPS receiver, and load from
processes of their own (tests/bench/_load.py, mosquitto_pub).

    .venv/bin/python tests/bench/bench_daemon.py [--quick] [--ingest] [--latency]
        [--lidar] [--backlog] [--startup] [--idle] [--memory] [--minutes N]
        [--broker-inflight N]

With no section named, all run. Every figure is printed beside its peer from
the same run, with the ratio and the target:

- ingest: N (60 000) small GPS messages (gpsd TPV JSON, and one NMEA RMC+GGA cycle per
  message), QoS 1, MQTT 5, published as fast as the broker takes them to
  ``<prefix>/in/gps/<src>``; messages/s from the first publish until a
  separate subscriber has N records from ``<prefix>/out/gps/<src>``. Every
  input must give exactly one record (NMEA: and one more, gpsd's report of
  the first cycle's RMC before the cycle's end is learned): ids distinct,
  count equal, no dead letters, and the daemon's own counts must agree; the
  main process's CPU time a message is printed too. Peer: mosquitto_sub
  receiving the same N-message stream from the same broker. Target >= 0.5x.
  Beside it, the bound of the set-up: tests/bench/relay.c, a relay in C that
  does no work, in the daemon's place (the same topics' round trip, QoS 1,
  each input acknowledged once its copy is), against the same peer; and
  after each daemon pass the relay again, its copies padded to the mean
  size of that pass's records (about four times a TPV input), since what
  the broker and the subscriber spend on a message grows with its size.
  And the broker's CPU a message in each kind of pass, with the share of
  the pass it was busy: an input the daemon answers is two messages through
  the broker where the peer's is one, so where the broker is the bound the
  ratio can be at most the peer's broker CPU over the daemon's.
- latency: a receiver at 10 Hz on a pty (one RMC+GGA cycle every 100 ms);
  per cycle, the time the gps_fix record arrives at a subscriber less the time
  the cycle's last byte was written (both time.monotonic in this process: a
  writer thread and paho's network thread). Warm-up first (gpsd-style
  assembly learns the sentence that ends a cycle). Peer: the broker round trip
  of a QoS 1 message published from this process at the same moments. Target
  p99 <= 20 ms.
- lidar: binary PCD frames of 30 000 points (EPSG:32632) as fast as the
  daemon takes them (a window of frames without a record yet) for 20 s. The
  daemon's own event-loop lag figure (status ``loop_lag_ms``: a task asking to
  sleep 50 ms, how late it wakes), and from outside the 10 Hz fix latency
  during the load. Target p99 <= 50 ms.
- backlog: ``--backlog-frames`` (default 300) PCD frames of 30 000 points
  wait at the broker in the daemon's persistent session when it starts; the
  main process's peak RSS (VmHWM) until every frame has its record, beside
  the backlog's payload, and the time from exec to the last record. Target:
  bounded (pipeline.max_open_mb and the client's max_parked_bytes).
- startup: exec of ``python -m gatewayd run`` to READY=1 on a NOTIFY_SOCKET
  listener, and to the first record of a message that waited at the broker in
  the daemon's persistent session. Peer: mosquitto_sub fetching one message
  waiting in its own persistent session, exec to exit. Target <= 1 s.
- idle: the daemon connected, with nothing coming in, for ``--idle-seconds``
  (default 30) after a settling pause: wake-ups a second (context switches
  of all its threads) and CPU, of the main process and of its other
  processes (forkserver, workers). Peer: the broker, Mosquitto, idle with
  its clients over the same window. On a small passively cooled board a
  wake-up costs power and heat. No target.
- memory: GPS (serial 10 Hz and MQTT), LiDAR and polygon load for
  ``--minutes`` (default 10); VmRSS of the main process and every descendant
  (forkserver, workers) every 10 s; first, last, peak and slope per process.

The daemon runs with the service unit's environment (MALLOC_ARENA_MAX=2, one
BLAS thread). Saves the figures to tests/bench/out/daemon.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import pty
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _load import nmea_payload, pcd_frame, tpv_payload  # noqa: E402
from _report import Table, machine, proc_status  # noqa: E402
from broker import Broker  # noqa: E402

LOAD = HERE / "_load.py"
RELAY = HERE / "relay.c"
# What systemd/gatewayd.service gives the daemon.
UNIT_ENV = {"MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class Rows:
    """The figures of the run, printed per section and once more at the end."""

    def __init__(self) -> None:
        self.table = Table("gatewayd run, end to end")
        self.notes: list[str] = []

    def add(self, case: str, ours: float | None, peer: float | None, unit: str,
            peer_name: str = "", target: str = "", *, lower_is_better: bool = False,
            met: bool | None = None) -> None:
        ratio = ours / peer if ours is not None and peer else None
        row = {"case": case, "ours": ours, "peer": peer, "peer_name": peer_name, "unit": unit,
               "ratio": ratio, "target": target,
               "better": "lower" if lower_is_better else "higher", "met": met}
        self.table.rows.append(row)
        print(_format_row(row), flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def print(self) -> None:
        print(f"\n## {self.table.title}  ({machine()})")
        print(f"{'case':52} {'gatewayd':>11} {'peer':>11} {'ratio':>8}  target")
        for row in self.table.rows:
            if "ratio" in row:
                print(_format_row(row))
        if self.notes:
            print("\nnotes:")
            for text in self.notes:
                print(f"- {text}")

    def save(self) -> None:
        self.table.rows.append({"case": "notes", "ours": self.notes, "peer": None})
        self.table.save("daemon")


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _format_row(row: dict[str, Any]) -> str:
    ratio = f"{row['ratio']:7.2f}x" if row["ratio"] else " " * 8
    met = {True: "met", False: "NOT MET", None: ""}[row["met"]]
    label = f"{row['unit']}; peer: {row['peer_name']}" if row["peer_name"] else row["unit"]
    return (f"{row['case']:52} {_number(row['ours']):>11} {_number(row['peer']):>11} {ratio}"
            f"  {row['target']} {met}  [{label}]")


# ---- the daemon, its notifications, its process tree ----

class DaemonProcess:
    """``python -m gatewayd run`` with its own state directories and a
    NOTIFY_SOCKET listener that time-stamps every notification."""

    def __init__(self, work: Path, broker: Broker, gateway: str, *settings: str) -> None:
        self.gateway = gateway
        self.prefix = f"gatewayd/{gateway}"
        self.dir = work / gateway
        self.dir.mkdir(parents=True, exist_ok=True)
        notify_path = self.dir / f"notify-{time.monotonic_ns()}"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notify.settimeout(0.1)
        self.notes: list[tuple[float, str]] = []
        self._closing = False
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()
        args = [sys.executable, "-m", "gatewayd", "run",
                "--set", f"mqtt.host={broker.host}", "--set", f"mqtt.port={broker.port}",
                "--set", f"gateway.id={gateway}",
                "--set", f"gateway.state_dir={self.dir / 'state'}",
                "--set", f"daemon.runtime_dir={self.dir / 'run'}",
                "--set", "daemon.status_interval_s=1"]
        for s in settings:
            args += ["--set", s]
        env = {**os.environ, **UNIT_ENV, "NOTIFY_SOCKET": str(notify_path)}
        self.log_path = self.dir / "daemon.log"
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.exec_at = time.monotonic()
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=self.dir)

    def _listen(self) -> None:
        while not self._closing:
            try:
                data = self._notify.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.notes.append((time.monotonic(), data.decode(errors="replace")))

    def wait_note(self, name: str, timeout: float = 60.0) -> float:
        """When the first notification holding ``name`` (e.g. READY=1) arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, note in list(self.notes):
                if name in note.split("\n"):
                    return when
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited {self.process.returncode}:\n"
                                   f"{self.output()[-3000:]}")
            time.sleep(0.002)
        raise RuntimeError(f"no {name} within {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        with self.log_path.open("rb") as f:
            f.seek(self._log_from)
            return f.read().decode(errors="replace")

    def complaints(self) -> list[str]:
        """Its log lines at warning or worse (syslog priority 0-4), and tracebacks."""
        lines = self.output().splitlines()
        return [ln for ln in lines if ln[:3] in ("<0>", "<1>", "<2>", "<3>", "<4>")
                or "Traceback" in ln or "WARNING" in ln or "ERROR" in ln]

    def tree(self) -> dict[int, str]:
        """The daemon and its descendants, pid to role (from /proc, no psutil)."""
        out = {self.process.pid: "main"}
        todo = [self.process.pid]
        while todo:
            pid = todo.pop()
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                with contextlib.suppress(OSError):
                    for child in children.read_text().split():
                        c = int(child)
                        if c in out:
                            continue
                        # A forked worker keeps the forkserver's command line.
                        out[c] = "worker" if out[pid] == "forkserver" else _role(c)
                        todo.append(c)
        return out

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self._closing = True
        self._listener.join(1)
        self._notify.close()
        return code


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "forkserver" in cmd:
        return "forkserver"
    if "resource_tracker" in cmd:
        return "resource tracker"
    return "worker" if "python" in cmd else cmd.split(" ")[0]


# ---- a subscriber in this process ----

class Watcher:
    """A paho subscriber on its own network thread; each message is
    time-stamped with time.monotonic on arrival and handed to a handler."""

    def __init__(self, broker: Broker, handlers: dict[str, Callable[[float, bytes], None]]
                 ) -> None:
        self.handlers = handlers
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"bench-watch-{time.monotonic_ns()}",
                                  protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=60)
        self.client.subscribe([(t, 1) for t in handlers])
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("the watcher did not subscribe")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        now = time.monotonic()
        handler = self.handlers.get(message.topic)
        if handler is not None:
            handler(now, message.payload)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Statuses:
    """The daemon's retained status documents as they arrive."""

    def __init__(self) -> None:
        self.items: list[tuple[float, dict[str, Any]]] = []

    def __call__(self, now: float, payload: bytes) -> None:
        self.items.append((now, json.loads(payload)))

    def after(self, when: float, timeout: float = 5.0) -> dict[str, Any]:
        """The first status to arrive after ``when``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, doc in list(self.items):
                if at > when and doc.get("state") == "running":
                    return doc
            time.sleep(0.05)
        return self.items[-1][1] if self.items else {}


# ---- a GPS receiver at 10 Hz on a pty ----

def _cycle_epoch(index: int) -> float:
    """The UTC time of cycle ``index``, read back from its own RMC sentence."""
    fields = nmea_payload(index).split(b"\r\n")[0].decode().split(",")
    hms, date = fields[1], fields[9]
    when = dt.datetime(2000 + int(date[4:6]), int(date[2:4]), int(date[:2]), int(hms[:2]),
                       int(hms[2:4]), tzinfo=dt.UTC)
    return when.timestamp() + float(hms[4:])


class Receiver10Hz:
    """Writes one RMC+GGA cycle every 100 ms to a pty (the daemon opens it
    through a symlink) and records when each cycle's last byte was written.
    Beside each cycle it publishes a QoS 1 probe that comes back through the
    broker: the round trip every record must make too."""

    def __init__(self, link: Path, watcher_topic: str) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.link = link
        os.symlink(os.ttyname(self.slave), link)
        self.probe_topic = watcher_topic
        self.written: dict[int, float] = {}
        self.received: dict[int, float] = {}
        self.probe_sent: dict[int, float] = {}
        self.probe_back: dict[int, float] = {}
        self.duplicates = 0
        self.watcher: Watcher | None = None
        self._epoch0 = _cycle_epoch(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._talk, name="receiver", daemon=True)

    def start(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self._thread.start()

    def _talk(self) -> None:
        start = time.monotonic()
        i = 0
        while not self._stop.is_set():
            delay = start + i * 0.1 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            os.write(self.master, nmea_payload(i))
            self.written[i] = time.monotonic()
            if self.watcher is not None:
                self.probe_sent[i] = time.monotonic()
                self.watcher.publish(self.probe_topic, str(i).encode())
            i += 1

    def on_fix(self, now: float, payload: bytes) -> None:
        doc = json.loads(payload)
        when = dt.datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).timestamp()
        index = round((when - self._epoch0) * 10)
        if index in self.received:
            self.duplicates += 1
        else:
            self.received[index] = now

    def on_probe(self, now: float, payload: bytes) -> None:
        self.probe_back.setdefault(int(payload), now)

    def window(self, since: float, until: float) -> tuple[list[float], list[float], int]:
        """Fix latencies and probe round trips (s) of the cycles written in
        [since, until], and how many of those cycles have no record."""
        cycles = [i for i, t in self.written.items() if since <= t <= until]
        fixes = [self.received[i] - self.written[i] for i in cycles if i in self.received]
        probes = [self.probe_back[i] - self.probe_sent[i] for i in cycles
                  if i in self.probe_back and i in self.probe_sent]
        return fixes, probes, sum(1 for i in cycles if i not in self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)
        self.link.unlink(missing_ok=True)


def _latency_rows(rows: Rows, label: str, fixes: list[float], probes: list[float],
                  missing: int, target_ms: float) -> None:
    if not fixes:
        rows.add(f"{label}: no fixes", None, None, "ms")
        return
    f = [x * 1000 for x in fixes]
    p = [x * 1000 for x in probes] or [0.0]
    rows.add(f"{label} p50 ({len(f)} fixes)", _pct(f, 0.5), _pct(p, 0.5), "ms",
             "broker round trip, same moments", lower_is_better=True)
    p99 = _pct(f, 0.99)
    rows.add(f"{label} p99", p99, _pct(p, 0.99), "ms", "broker round trip, same moments",
             f"<= {target_ms:g} ms", lower_is_better=True, met=p99 <= target_ms)
    rows.add(f"{label} max", max(f), max(p), "ms", "broker round trip, same moments",
             lower_is_better=True)
    if missing:
        rows.note(f"{label}: {missing} cycles written in the window have no gps_fix record")


# ---- 1. MQTT ingest ----

def _stream_pass(broker: Broker, fmt: str, count: int, first: int, publish_to: str,
                 subscribe_to: list[str], out: Path, *, records: bool) -> dict[str, float]:
    """Publishes ``count`` GPS messages and times a subscriber until it has
    ``count`` messages; both clients are processes of their own. Times are
    time.monotonic; ``done`` is when the last message reached the subscriber
    (nan if not all came)."""
    # Each message is stamped by mosquitto_sub itself (%U, the real-time clock):
    # its exit comes up to a second after the last message, and a pipe read
    # here would add this process's delays.
    sub_args = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                "-q", "1", "-F", "%U %t %p" if records else "%U"]
    if not records:
        sub_args += ["-C", str(count)]
    for t in subscribe_to:
        sub_args += ["-t", t]
    with out.open("wb") as sink:
        sub = subprocess.Popen(sub_args, stdout=sink)
    time.sleep(0.5)  # subscribed (mosquitto_sub gives no sign of it)
    if fmt == "tpv":
        lines = b"".join(tpv_payload(first + i) + b"\n" for i in range(count))
        pub = subprocess.Popen(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port),
                                "-V", "mqttv5", "-q", "1", "-t", publish_to, "-l",
                                "-M", "1000"], stdin=subprocess.PIPE)
        time.sleep(0.3)  # connected
        assert pub.stdin is not None
        start = time.monotonic()
        pub.stdin.write(lines)
        pub.stdin.close()
        pub.wait(300)
        published = time.monotonic()
    else:
        pub = subprocess.Popen([sys.executable, str(LOAD), "burst", "--host", broker.host,
                                "--port", str(broker.port), "--topic", publish_to,
                                "--count", str(count), "--first", str(first)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert pub.stdin is not None and pub.stdout is not None
        if pub.stdout.readline().strip() != b"ready":
            raise RuntimeError("the NMEA publisher did not start")
        pub.stdin.write(b"go\n")
        pub.stdin.flush()
        times = json.loads(pub.stdout.readline())
        start, published = times["first"], times["acked"]
    limit = max(60.0, count / 500)
    if records:
        # Records may come twice (at least once): done when ``count`` distinct
        # ids are in, and a moment later, to see what else comes.
        complete = _wait_distinct(out, count, limit)
        time.sleep(1.0)
        sub.terminate()
        sub.wait(5)
    else:
        try:
            sub.wait(limit)
            complete = True
        except subprocess.TimeoutExpired:
            sub.terminate()
            sub.wait(5)
            complete = False
    pub.wait(60)
    offset = time.time() - time.monotonic()
    if records:
        seen: set[str] = set()
        done = float("nan")
        for stamp, _, payload in (line.split(b" ", 2) for line in out.read_bytes().splitlines()):
            seen.add(json.loads(payload)["id"])
            if len(seen) == count:
                done = float(stamp) - offset
                break
    else:
        stamps = [float(line.split(b" ", 1)[0]) for line in out.read_bytes().splitlines()
                  if line[:1].isdigit()]
        done = max(stamps) - offset if complete and stamps else float("nan")
    return {"start": start, "published": published, "done": done}


def _wait_distinct(out: Path, count: int, limit: float) -> bool:
    """Waits until ``out`` (mosquitto_sub's -F '%U %t %p' lines) names
    ``count`` distinct record ids; reads only what was added."""
    seen: set[bytes] = set()
    pos = 0
    rest = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with out.open("rb") as f:
            f.seek(pos)
            data = f.read()
        pos += len(data)
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            at = line.find(b'"id":"')
            if at >= 0:
                seen.add(line[at + 6:at + 70])
        if len(seen) >= count:
            return True
        time.sleep(0.2)
    return False


def _mean_payload(out: Path) -> int:
    """The mean size of the payloads in ``out`` (mosquitto_sub's -F '%U %t %p' lines)."""
    sizes = [len(line.split(b" ", 2)[2]) for line in out.read_bytes().splitlines()]
    return round(statistics.mean(sizes)) if sizes else 0


def _records_of(out: Path) -> list[tuple[str, dict[str, Any]]]:
    got = []
    for line in out.read_bytes().splitlines():
        _, topic, payload = line.split(b" ", 2)
        got.append((topic.decode(), json.loads(payload)))
    return got


def _build_relay(work: Path) -> Path | None:
    """relay.c built with the system's C compiler; None (and why) if it cannot be."""
    exe = work / "relay"
    try:
        subprocess.run(["cc", "-O2", "-o", str(exe), str(RELAY)], check=True,
                       capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"  the C relay could not be built: {exc}", flush=True)
        return None
    return exe


def _relay_pass(relay: Path, broker: Broker, fmt: str, count: int, first: int, source: str,
                work: Path, out_bytes: int = 0) -> dict[str, float]:
    """``_stream_pass`` through the C relay: published to bench/relay/in/<source>,
    received from bench/relay/out/<source>; ``out_bytes``: the copies are
    padded to that size."""
    proc = subprocess.Popen([str(relay), broker.host, str(broker.port),
                             f"bench/relay/in/{source}", f"bench/relay/out/{source}",
                             str(out_bytes)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the C relay did not subscribe")
        return _stream_pass(broker, fmt, count, first, f"bench/relay/in/{source}",
                            [f"bench/relay/out/{source}"], work / f"relay-{source}.txt",
                            records=False)
    finally:
        proc.kill()
        proc.wait(10)


def bench_ingest(broker: Broker, work: Path, rows: Rows, count: int, repeat: int,
                 formats: list[str]) -> None:
    print(f"\n# MQTT ingest: {count:,} GPS messages a pass, QoS 1, MQTT 5, {repeat} passes",
          flush=True)
    relay = _build_relay(work)
    statuses = Statuses()
    daemon = DaemonProcess(work, broker, "bench-ingest")
    daemon.wait_note("READY=1")
    watcher = Watcher(broker, {f"{daemon.prefix}/status": statuses})
    expected_inputs = expected_records = 0
    try:
        for fmt in formats:
            ours: list[float] = []
            peers: list[float] = []
            pubs: list[float] = []
            cpu_us: list[float] = []
            bounds: list[float] = []  # the C relay's rate over the peer's, a pass each
            sized: list[float] = []  # the same, its copies the size of the daemon's records
            sizes: list[int] = []
            # The broker's CPU a message: in the peer's passes, the relay's and the daemon's.
            broker_us: dict[str, list[float]] = {"peer": [], "relay": [], "daemon": []}
            broker_busy: dict[str, list[float]] = {"peer": [], "relay": [], "daemon": []}

            def broker_cpu(role: str, before: float, t: dict[str, float],
                           us: dict[str, list[float]] = broker_us,
                           busy: dict[str, list[float]] = broker_busy) -> None:
                used = _cpu_seconds(broker.pid) - before
                us[role].append(used / count * 1e6)
                busy[role].append(used / (t["done"] - t["start"]))

            for r in range(repeat):
                source = f"{fmt}{r}"
                first = r * count
                before = _cpu_seconds(broker.pid)
                peer = _stream_pass(broker, fmt, count, first, f"bench/peer/{source}",
                                    [f"bench/peer/{source}"], work / f"peer-{source}.txt",
                                    records=False)
                broker_cpu("peer", before, peer)
                peers.append(count / (peer["done"] - peer["start"]))
                if relay is not None:
                    before = _cpu_seconds(broker.pid)
                    bound = _relay_pass(relay, broker, fmt, count, first, source, work)
                    broker_cpu("relay", before, bound)
                    bounds.append(count / (bound["done"] - bound["start"]) / peers[-1])
                out = work / f"ingest-{source}.txt"
                cpu_before = _cpu_seconds(daemon.process.pid)
                before = _cpu_seconds(broker.pid)
                t = _stream_pass(broker, fmt, count, first, f"{daemon.prefix}/in/gps/{source}",
                                 [f"{daemon.prefix}/out/gps/{source}",
                                  f"{daemon.prefix}/dead/{source}"], out, records=True)
                # Each pass is a new source: until its cycle's end is learned
                # (at the second cycle), gpsd reports the first cycle's RMC on
                # its own as well as with the GGA, and so does the daemon.
                if t["done"] == t["done"]:
                    broker_cpu("daemon", before, t)
                want = count + 1 if fmt == "nmea" else count
                expected_inputs += count
                expected_records += want
                # The pass includes a second of waiting for more at its end: idle.
                cpu_us.append((_cpu_seconds(daemon.process.pid) - cpu_before) / count * 1e6)
                pubs.append(count / (t["published"] - t["start"]))
                got = _records_of(out)
                fixes = [d for topic, d in got if "/out/gps/" in topic]
                dead = [d for topic, d in got if "/dead/" in topic]
                ids = {d["id"] for d in fixes}
                if t["done"] != t["done"]:
                    rows.note(f"ingest {fmt} pass {r}: only {len(got)} of {count} records "
                              f"within the time limit")
                    ours.append(len(fixes) / (time.monotonic() - t["start"]))
                else:
                    ours.append(count / (t["done"] - t["start"]))
                if relay is not None:
                    sizes.append(_mean_payload(out))
                    bound = _relay_pass(relay, broker, fmt, count, first, f"{source}-sized", work,
                                        sizes[-1])
                    sized.append(count / (bound["done"] - bound["start"]) / peers[-1])
                if len(fixes) != want or len(ids) != want or dead:
                    rows.note(f"ingest {fmt} pass {r}: {len(fixes)} records "
                              f"({len(fixes) - len(ids)} of them repeats), {len(ids)} "
                              f"distinct ids, {len(dead)} dead letters for {count} inputs, "
                              f"{want} records expected "
                              f"({sorted({d.get('reason') for d in dead})})")
            m_ours, m_peer = statistics.median(ours), statistics.median(peers)
            rows.add(f"ingest, {fmt} ({count:,} msgs), median of {repeat}", m_ours, m_peer,
                     "msgs/s", "mosquitto_sub, same stream", ">= 0.5x",
                     met=m_ours >= 0.5 * m_peer)
            if bounds:
                ratios = [o / p for o, p in zip(ours, peers)]
                rows.add(f"ingest, {fmt}: ratio to the peer, against the C relay's",
                         statistics.median(ratios), statistics.median(bounds), "x",
                         "relay.c (no work) in the daemon's place")
                rows.add(f"ingest, {fmt}: the same, the relay's copies record-sized",
                         statistics.median(ratios), statistics.median(sized), "x",
                         f"relay.c, copies padded to {statistics.median(sizes):.0f} bytes")
                rows.note(f"ingest {fmt}: the C relay, doing no work, reached "
                          f"{', '.join(f'{b:.2f}x' for b in bounds)} of the peer in the "
                          f"same passes, and {', '.join(f'{b:.2f}x' for b in sized)} with "
                          f"copies the size of the daemon's records "
                          f"({', '.join(map(str, sizes))} bytes); the daemon "
                          f"{', '.join(f'{r:.2f}x' for r in ratios)}")
            if broker_us["daemon"]:
                # Each input the daemon (or the relay) takes in and answers is two
                # messages through the broker where the peer's is one: twice its
                # packets, each read and written on its own (Mosquitto 2.0).
                rows.add(f"ingest, {fmt}: the broker's CPU a message",
                         statistics.median(broker_us["daemon"]),
                         statistics.median(broker_us["peer"]), "us",
                         "the broker in the peer's passes")
                rows.note(f"ingest {fmt}: the broker used "
                          + "; ".join(f"{role} passes {', '.join(f'{x:.1f}' for x in us)} us "
                                      f"a message, busy "
                                      f"{', '.join(f'{b:.0%}' for b in broker_busy[role])} "
                                      f"of the pass"
                                      for role, us in broker_us.items() if us)
                          + ": where it is the bound, a round trip through it reaches at "
                          "most the peer's figure over the daemon's")
            rows.note(f"ingest {fmt}: passes {', '.join(f'{x:,.0f}' for x in ours)} msgs/s; "
                      f"peer {', '.join(f'{x:,.0f}' for x in peers)}; publisher alone "
                      f"(first publish to last PUBACK, daemon pass) "
                      f"{', '.join(f'{x:,.0f}' for x in pubs)} msgs/s; the daemon's main "
                      f"process used {', '.join(f'{x:.1f}' for x in cpu_us)} us of CPU a "
                      f"message")
        time.sleep(1.5)
        status = statuses.after(time.monotonic())
        counts = status.get("counts", {})
        if counts.get("records") != expected_records or \
                counts.get("inputs") != expected_inputs:
            rows.note(f"ingest: the daemon counts {counts.get('inputs')} inputs and "
                      f"{counts.get('records')} records, {expected_inputs} and "
                      f"{expected_records} expected")
        q = status.get("queue") or {}
        rows.note(f"ingest: daemon queue peak {q.get('peak')}/{q.get('capacity')}, "
                  f"counts {counts}, loop lag {status.get('loop_lag_ms')}")
    finally:
        watcher.close()
        _stopped(rows, daemon, "ingest")


def _stopped(rows: Rows, daemon: DaemonProcess, section: str) -> None:
    code = daemon.stop()
    if code != 0:
        rows.note(f"{section}: the daemon exited {code}")
    complaints = daemon.complaints()
    if complaints:
        unique = list(dict.fromkeys(complaints))
        rows.note(f"{section}: {len(complaints)} warning lines in the daemon's log, e.g. "
                  + " | ".join(ln[:200] for ln in unique[:4]))


# ---- 2. fix latency, and 3. event-loop lag under LiDAR load ----

def _gps_daemon(work: Path, broker: Broker, gateway: str, *settings: str
                ) -> tuple[DaemonProcess, Receiver10Hz, Watcher, Statuses]:
    link = work / f"{gateway}-gps0"
    link.unlink(missing_ok=True)
    prefix = f"gatewayd/{gateway}"
    receiver = Receiver10Hz(link, f"bench/probe/{gateway}")
    statuses = Statuses()
    watcher = Watcher(broker, {f"{prefix}/out/gps/gps0": receiver.on_fix,
                               f"bench/probe/{gateway}": receiver.on_probe,
                               f"{prefix}/status": statuses})
    daemon = DaemonProcess(work, broker, gateway, f"serial.ports=gps0={link}@115200",
                           "crs.source=EPSG:32632", *settings)
    daemon.wait_note("READY=1")
    receiver.start(watcher)
    return daemon, receiver, watcher, statuses


def bench_latency(broker: Broker, work: Path, rows: Rows, seconds: float,
                  warmup: float) -> None:
    print(f"\n# fix latency at 10 Hz: {warmup:g} s warm-up, then {seconds:g} s", flush=True)
    daemon, receiver, watcher, statuses = _gps_daemon(work, broker, "bench-latency")
    try:
        start = time.monotonic()
        time.sleep(warmup + seconds + 1.0)
        fixes, probes, missing = receiver.window(start + warmup, start + warmup + seconds)
        _latency_rows(rows, "fix latency, 10 Hz pty, idle", fixes, probes, missing, 20)
        status = statuses.after(time.monotonic())
        rows.note(f"latency: the daemon's loop lag meanwhile {status.get('loop_lag_ms')} "
                  f"(ms, its last 60 s); {receiver.duplicates} duplicate fixes")
    finally:
        _stopped(rows, daemon, "latency")
        receiver.close()
        watcher.close()


def bench_lidar(broker: Broker, work: Path, rows: Rows, seconds: float, window: int,
                warmup: float) -> None:
    print(f"\n# LiDAR load: 30 000-point PCD frames, window {window}, {seconds:g} s, "
          "with the 10 Hz receiver", flush=True)
    daemon, receiver, watcher, statuses = _gps_daemon(work, broker, "bench-lidar")
    try:
        time.sleep(warmup)
        idle = statuses.after(time.monotonic())
        load = subprocess.Popen([sys.executable, str(LOAD), "load", "--host", broker.host,
                                 "--port", str(broker.port), "--prefix", daemon.prefix,
                                 "--seconds", str(seconds), "--lidar-window", str(window),
                                 "--drain", "60"], stdout=subprocess.PIPE)
        assert load.stdout is not None
        if load.stdout.readline().strip() != b"ready":
            raise RuntimeError("the load generator did not start")
        start = time.monotonic()
        report = json.loads(load.stdout.readline())
        load.wait(30)
        end = start + report["seconds"]
        loaded = statuses.after(end)
        fixes, probes, missing = receiver.window(start + 1.0, end)
        frames = report["got"]["lidar"]
        rows.add(f"LiDAR frames through the daemon ({frames} x 30k pts)",
                 frames / report["seconds"], None, "frames/s")
        rows.add("  same, points", report["points"] / report["seconds"], None, "points/s")
        lat = report["frame_latency_ms"]
        rows.add("  frame publish -> record p50", lat["p50"], None, "ms", lower_is_better=True)
        rows.add("  frame publish -> record p99", lat["p99"], None, "ms", lower_is_better=True)
        lag, lag_idle = loaded.get("loop_lag_ms", {}), idle.get("loop_lag_ms", {})
        if lag:
            rows.add("loop lag p50 under LiDAR load (daemon's probe)", lag["p50"],
                     lag_idle.get("p50"), "ms", "same daemon, idle before the load",
                     lower_is_better=True)
            rows.add("loop lag p99 under LiDAR load (daemon's probe)", lag["p99"],
                     lag_idle.get("p99"), "ms", "same daemon, idle before the load",
                     "<= 50 ms", lower_is_better=True, met=lag["p99"] <= 50)
            rows.add("loop lag max under LiDAR load (daemon's probe)", lag["max"],
                     lag_idle.get("max"), "ms", "same daemon, idle before the load",
                     lower_is_better=True)
            rows.note(f"lidar: the daemon's loop_lag_ms covers its last 1200 probes "
                      f"(60 s): here the {warmup:g} s before the load and start-up too, "
                      f"about {100 * (warmup + 2) / (warmup + 2 + seconds):.0f}% of samples")
        _latency_rows(rows, "fix latency under LiDAR load (outside proxy)", fixes, probes,
                      missing, 50)
        sent, got = report["sent"]["lidar"], report["got"]["lidar"]
        if sent != got or report["distinct_ids"]["lidar"] != got or report["dead"]:
            rows.note(f"lidar: {sent} frames sent, {got} records, "
                      f"{report['distinct_ids']['lidar']} distinct ids, dead {report['dead']}")
        q = loaded.get("queue") or {}
        rows.note(f"lidar: load ledger {json.dumps(report)}; daemon queue peak "
                  f"{q.get('peak')}/{q.get('capacity')}, workers {loaded.get('workers')}, "
                  f"{receiver.duplicates} duplicate fixes")
    finally:
        _stopped(rows, daemon, "lidar")
        receiver.close()
        watcher.close()


# ---- 4. start-up ----

def bench_backlog(broker: Broker, work: Path, rows: Rows, frames: int) -> None:
    print(f"\n# LiDAR backlog: {frames} frames of 30 000 points waiting at the broker "
          "when the daemon starts", flush=True)
    settings = ("crs.source=EPSG:32632",)
    first = DaemonProcess(work, broker, "bench-backlog", *settings)
    first.wait_note("READY=1")
    _stopped(rows, first, "backlog")  # its persistent session is at the broker now
    topic = f"{first.prefix}/in/lidar/backlog"
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.monotonic_ns()}",
                      protocol=paho.MQTTv5)
    pub.max_inflight_messages_set(100)
    pub.max_queued_messages_set(0)
    pub.connect(broker.host, broker.port, keepalive=60)
    pub.loop_start()
    size = 0
    try:
        for k in range(frames):
            frame = bytes(pcd_frame(30_000, k))
            size += len(frame)
            pub.publish(topic, frame, qos=1).wait_for_publish(30)
    finally:
        pub.loop_stop()
        pub.disconnect()
    got: list[str] = []
    watcher = Watcher(broker, {f"{first.prefix}/out/lidar/backlog": lambda now, payload:
                               got.append(json.loads(payload)["lineage"]["input_sha256"])})
    start = time.monotonic()
    daemon = DaemonProcess(work, broker, "bench-backlog", *settings)
    try:
        deadline = start + 300
        while len(set(got)) < frames and time.monotonic() < deadline:
            time.sleep(0.1)
        drained = time.monotonic() - start
        time.sleep(1.0)  # anything sent twice would come now
        status = proc_status(daemon.process.pid)
        peak, after = status["VmHWM"] / 1024, status["VmRSS"] / 1024
    finally:
        watcher.close()
        _stopped(rows, daemon, "backlog")
    rows.add(f"LiDAR backlog of {frames} frames at start: main process peak RSS", peak,
             size / 1e6, "MB", "the backlog's payload", "bounded", lower_is_better=True)
    rows.add("  same, exec to the last frame's record", drained, None, "s",
             lower_is_better=True)
    rows.add("  same, main process RSS a second after", after, None, "MB",
             lower_is_better=True)
    cycles = daemon.output().count("left with the MQTT broker")
    rows.note(f"backlog: {len(got)} records for {len(set(got))} distinct inputs of {frames}; "
              f"{cycles} reconnects to have the broker send what the client left with it")


def _mosquitto_pub(broker: Broker, topic: str, payload: bytes) -> None:
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                    "-q", "1", "-t", topic, "-s"], input=payload, check=True, timeout=10)


def bench_startup(broker: Broker, work: Path, rows: Rows, repeat: int) -> None:
    print(f"\n# start-up, {repeat} runs", flush=True)
    gateway = "bench-startup"
    prefix = f"gatewayd/{gateway}"
    first = DaemonProcess(work, broker, gateway)
    first.wait_note("READY=1")
    _stopped(rows, first, "startup (making the session)")
    arrivals: list[float] = []
    watcher = Watcher(broker, {f"{prefix}/out/gps/boot": lambda now, p: arrivals.append(now)})
    peer_id = f"bench-peer-boot-{os.getpid()}"
    peer_args = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                 "-q", "1", "-c", "-x", "3600", "-i", peer_id, "-t", "bench/boot"]
    subprocess.run([*peer_args, "-E"], check=True, timeout=10, stdout=subprocess.DEVNULL)
    ready_s: list[float] = []
    record_s: list[float] = []
    peer_s: list[float] = []
    try:
        for r in range(repeat):
            _mosquitto_pub(broker, f"{prefix}/in/gps/boot", tpv_payload(1000 + r))
            arrivals.clear()
            daemon = DaemonProcess(work, broker, gateway)
            try:
                ready_s.append(daemon.wait_note("READY=1") - daemon.exec_at)
                deadline = time.monotonic() + 30
                while not arrivals and time.monotonic() < deadline:
                    time.sleep(0.002)
                if arrivals:
                    record_s.append(arrivals[0] - daemon.exec_at)
                else:
                    rows.note(f"startup run {r}: no record for the waiting message in 30 s")
                time.sleep(0.5)
                if len(arrivals) > 1:
                    rows.note(f"startup run {r}: {len(arrivals)} records for one message")
            finally:
                _stopped(rows, daemon, f"startup run {r}")
            _mosquitto_pub(broker, "bench/boot", b"one waiting message")
            start = time.monotonic()
            subprocess.run([*peer_args, "-C", "1"], check=True, timeout=30,
                           stdout=subprocess.DEVNULL)
            peer_s.append(time.monotonic() - start)
    finally:
        watcher.close()
    peer_ms = statistics.median(peer_s) * 1000
    if ready_s:
        m = statistics.median(ready_s) * 1000
        rows.add(f"start-up: exec -> READY=1, median of {len(ready_s)}", m, peer_ms, "ms",
                 "mosquitto_sub exec -> waiting message -> exit", "<= 1000 ms",
                 lower_is_better=True, met=m <= 1000)
    if record_s:
        m = statistics.median(record_s) * 1000
        rows.add(f"start-up: exec -> first record, median of {len(record_s)}", m, peer_ms,
                 "ms", "mosquitto_sub exec -> waiting message -> exit", "<= 1000 ms",
                 lower_is_better=True, met=m <= 1000)
    rows.note("startup: READY after " + ", ".join(f"{x * 1000:.0f}" for x in ready_s)
              + " ms; first record after " + ", ".join(f"{x * 1000:.0f}" for x in record_s)
              + " ms; peer " + ", ".join(f"{x * 1000:.0f}" for x in peer_s) + " ms")


# ---- 5. an idle daemon ----

def _wakeups_and_cpu(pid: int) -> tuple[int, float]:
    """Context switches of all of a process's threads so far, and its CPU seconds."""
    switches = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
    return switches, _cpu_seconds(pid)


def bench_idle(broker: Broker, work: Path, rows: Rows, seconds: float, settle: float) -> None:
    print(f"\n# idle: {seconds:.0f} s with nothing coming in", flush=True)
    daemon = DaemonProcess(work, broker, "bench-idle", "daemon.status_interval_s=10")
    try:
        daemon.wait_note("READY=1")
        time.sleep(settle)
        broker_pid = broker.pid
        tree = daemon.tree()
        before = {pid: _wakeups_and_cpu(pid) for pid in [*tree, broker_pid]}
        start = time.monotonic()
        time.sleep(seconds)
        took = time.monotonic() - start
        after = {pid: _wakeups_and_cpu(pid) for pid in before}
    finally:
        _stopped(rows, daemon, "idle")

    def rates(pids: list[int]) -> tuple[float, float]:
        woke = sum(after[p][0] - before[p][0] for p in pids)
        cpu = sum(after[p][1] - before[p][1] for p in pids)
        return woke / took, 100 * cpu / took

    main_pid = daemon.process.pid
    others = [p for p in tree if p != main_pid]
    main_wake, main_cpu = rates([main_pid])
    rest_wake, rest_cpu = rates(others)
    peer_wake, peer_cpu = rates([broker_pid])
    rows.add("idle: main process, wake-ups a second", main_wake, peer_wake, "/s",
             "mosquitto, idle, same window", "", lower_is_better=True)
    rows.add("idle: main process, CPU", main_cpu, peer_cpu, "%",
             "mosquitto, idle, same window", "", lower_is_better=True)
    rows.note(f"idle: the {len(others)} other processes ("
              + ", ".join(sorted(tree[p] for p in others))
              + f") woke {rest_wake:.2f} times a second together, CPU {rest_cpu:.3f} %")


# ---- 6. resident memory under mixed load ----

def _slope_kb_per_min(points: list[tuple[float, int]]) -> float | None:
    if len(points) < 3:
        return None
    ts = [t / 60 for t, _ in points]
    vs = [v for _, v in points]
    tm, vm = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - tm) ** 2 for t in ts)
    return sum((t - tm) * (v - vm) for t, v in zip(ts, vs)) / den if den else None


def bench_memory(broker: Broker, work: Path, rows: Rows, minutes: float,
                 interval: float) -> None:
    rates = {"gps_rate": 20.0, "lidar_rate": 2.0, "polygon_rate": 1.0}
    print(f"\n# resident memory: {minutes:g} min of mixed load (serial 10 Hz, MQTT TPV "
          f"{rates['gps_rate']:g}/s, LiDAR {rates['lidar_rate']:g} frames/s of 30k points, "
          f"{rates['polygon_rate']:g} polygon documents/s of 50), VmRSS every {interval:g} s",
          flush=True)
    daemon, receiver, watcher, statuses = _gps_daemon(work, broker, "bench-memory")
    samples: dict[int, list[tuple[float, int]]] = {}
    roles: dict[int, str] = {}
    try:
        load = subprocess.Popen([sys.executable, str(LOAD), "load", "--host", broker.host,
                                 "--port", str(broker.port), "--prefix", daemon.prefix,
                                 "--seconds", str(minutes * 60),
                                 "--gps-rate", str(rates["gps_rate"]),
                                 "--lidar-rate", str(rates["lidar_rate"]),
                                 "--polygon-rate", str(rates["polygon_rate"]),
                                 "--drain", "60"], stdout=subprocess.PIPE)
        assert load.stdout is not None
        if load.stdout.readline().strip() != b"ready":
            raise RuntimeError("the load generator did not start")
        start = time.monotonic()
        next_sample = start
        while load.poll() is None:
            if time.monotonic() >= next_sample:
                now = time.monotonic() - start
                for pid, role in daemon.tree().items():
                    with contextlib.suppress(OSError, KeyError):
                        rss = proc_status(pid)["VmRSS"]
                        samples.setdefault(pid, []).append((now, rss))
                        roles.setdefault(pid, role)
                next_sample += interval
            time.sleep(0.2)
        end = time.monotonic()
        report = json.loads(load.stdout.read() or b"{}")
        status = statuses.after(time.monotonic())
        fixes, probes, missing = receiver.window(start + 1, end - 1)
    finally:
        _stopped(rows, daemon, "memory")
        receiver.close()
        watcher.close()
    print(f"\n{'process':18} {'pid':>8} {'samples':>7} {'first kB':>10} {'last kB':>10} "
          f"{'peak kB':>10} {'kB/min':>9} {'kB/min, 2nd half':>17}")
    for pid, points in samples.items():
        if roles[pid] == "resource tracker" and len(points) < 2:
            continue
        vs = [v for _, v in points]
        slope = _slope_kb_per_min(points)
        late = _slope_kb_per_min(points[len(points) // 2:])
        print(f"{roles[pid]:18} {pid:>8} {len(points):>7} {vs[0]:>10,} {vs[-1]:>10,} "
              f"{max(vs):>10,} {_number(slope):>9} {_number(late):>17}")
        rows.table.rows.append({"case": f"rss {roles[pid]} {pid}", "ours": vs, "peer": None,
                                "unit": "kB", "slope_kb_per_min": slope,
                                "slope_second_half": late, "interval_s": interval})
    main_pid = next((p for p, r in roles.items() if r == "main"), None)
    if main_pid is not None:
        pts = samples[main_pid]
        late = _slope_kb_per_min(pts[len(pts) // 2:])
        rows.add(f"RSS main process after {minutes:g} min", pts[-1][1] / 1024, None, "MB")
        rows.add("  main process RSS slope, second half", late, None, "kB/min",
                 target="bounded (~0)", lower_is_better=True)
    workers = [p for p, r in roles.items() if r == "worker"]
    if workers:
        rows.add("RSS worker peak", max(max(v for _, v in samples[p]) for p in workers) / 1024,
                 None, "MB", lower_is_better=True)
        slopes = [s for p in workers if (s := _slope_kb_per_min(
            samples[p][len(samples[p]) // 2:])) is not None]
        if slopes:
            rows.add("  worker RSS slope, second half, largest", max(slopes), None, "kB/min",
                     target="bounded (~0)", lower_is_better=True)
    if fixes:
        rows.add("fix latency p99 during the mixed load", _pct(fixes, 0.99) * 1000,
                 _pct(probes, 0.99) * 1000 if probes else None, "ms",
                 "broker round trip, same moments", lower_is_better=True)
    if missing:
        rows.note(f"memory: {missing} serial cycles have no record")
    lost = {k: report["expected"][k] - report["got"][k] for k in report.get("expected", {})}
    if any(lost.values()) or report.get("dead"):
        rows.note(f"memory: records missing per kind {lost}, dead letters {report.get('dead')}")
    rows.note(f"memory: load ledger {json.dumps(report)}; daemon counts "
              f"{status.get('counts')}, workers {status.get('workers')}")


# ---- the run ----

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run of every section")
    for name in ("ingest", "latency", "lidar", "backlog", "startup", "idle", "memory"):
        ap.add_argument(f"--{name}", action="store_true", help=f"run the {name} section")
    # mosquitto_pub -l (2.0.11) delivers about a third of a 100 000-line stdin
    # to a plain mosquitto_sub, and exits 0: past 60 000 the TPV publisher,
    # not the daemon or the peer, is what is measured.
    ap.add_argument("--count", type=int, default=None,
                    help="messages per ingest pass (at most 60 000)")
    ap.add_argument("--formats", default="tpv,nmea", help="ingest payloads: tpv,nmea")
    ap.add_argument("--repeat", type=int, default=None,
                    help="ingest passes (default 3; 1 with --quick)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="mixed load for the memory section (default 10; 1 with --quick)")
    ap.add_argument("--lidar-seconds", type=float, default=None)
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="how long the idle section watches (default 30; 10 with --quick)")
    ap.add_argument("--backlog-frames", type=int, default=None,
                    help="LiDAR frames waiting at the broker (default 300; 60 with --quick)")
    ap.add_argument("--lidar-window", type=int, default=4,
                    help="LiDAR frames published without a record yet")
    ap.add_argument("--broker-inflight", type=int, default=20,
                    help="Mosquitto max_inflight_messages (also its Receive Maximum to MQTT 5)")
    ap.add_argument("--broker-queued", type=int, default=200_000,
                    help="Mosquitto max_queued_messages")
    args = ap.parse_args()
    names = ("ingest", "latency", "lidar", "backlog", "startup", "idle", "memory")
    sections = [n for n in names if getattr(args, n)] or list(names)
    quick = args.quick
    # A pass of 20 000 lasts under half a second for the peer: more the
    # burst's buffering between the publisher and the broker than a rate.
    count = args.count or (5_000 if quick else 60_000)
    if count > 60_000:
        ap.error("--count: at most 60 000 (see the comment above)")
    repeat = args.repeat or (1 if quick else 3)
    minutes = args.minutes if args.minutes is not None else (1.0 if quick else 10.0)
    lidar_s = args.lidar_seconds or (8.0 if quick else 20.0)

    rows = Rows()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} at start")
    # The unit runs with PYTHONDONTWRITEBYTECODE=1, as does the daemon here, so
    # it reads bytecode but never writes it: an installed package has it from
    # pip; a checkout that was just edited would compile every module at every
    # start, which is no part of the daemon's start-up.
    import compileall

    import gatewayd

    compileall.compile_dir(str(Path(gatewayd.__file__).parent), quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp, \
            Broker(directory=Path(tmp) / "mosquitto",
                   max_inflight_messages=args.broker_inflight,
                   max_queued_messages=args.broker_queued) as broker:
        rows.note(f"Mosquitto {broker.port}: max_inflight_messages {args.broker_inflight} "
                  f"(its Receive Maximum to MQTT 5 clients, so the daemon's own QoS 1 "
                  f"publishes in flight), max_queued_messages {args.broker_queued}; "
                  f"daemon: MQTT 5, receive_maximum 1000, 2 workers, uvloop")
        work = Path(tmp)
        if "ingest" in sections:
            bench_ingest(broker, work, rows, count, repeat,
                         [f for f in args.formats.split(",") if f])
        if "latency" in sections:
            bench_latency(broker, work, rows, 10.0 if quick else 30.0, 3.0)
        if "lidar" in sections:
            bench_lidar(broker, work, rows, lidar_s, args.lidar_window, 3.0)
        if "backlog" in sections:
            bench_backlog(broker, work, rows, args.backlog_frames or (60 if quick else 300))
        if "startup" in sections:
            bench_startup(broker, work, rows, 2 if quick else 5)
        if "idle" in sections:
            bench_idle(broker, work, rows, args.idle_seconds or (10.0 if quick else 30.0), 3.0)
        if "memory" in sections:
            bench_memory(broker, work, rows, minutes, 10.0)
    rows.note(f"load average {os.getloadavg()[0]:.2f} at the end; the machine is shared, "
              "so the figures are noisy")
    rows.print()
    rows.save()


if __name__ == "__main__":
    main()
