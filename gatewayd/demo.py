"""``gatewayd demo``: the daemon live, fed by a simulated vehicle, on one screen.

The demo starts a private Mosquitto on a free loopback port, then ``gatewayd
run`` as a real subprocess (its own state and runtime directories, the bundled
zones, UTM 32N results, one serial port on a pty), waits for its READY, and
starts the simulator (``gatewayd.simulator``): NMEA at 10 Hz on the pty, LiDAR
frames and polygon updates over MQTT. A live view subscribed to the gateway's
topics redraws a dashboard four times a second on a terminal, or prints one
line a second otherwise.

Stopping (Ctrl-C, SIGTERM or the end of ``--duration``) goes in order: the
simulator falls silent, the daemon gets SIGTERM and drains within its grace
period, then the broker stops and the temporary directory goes.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from gatewayd import __version__
from gatewayd.errors import ConfigError, GatewayError

__all__ = ["DemoError", "LiveView", "main"]

GATEWAY = "demo"
PREFIX = f"gatewayd/{GATEWAY}"
SAMPLES = Path(__file__).parent / "samples"
MOSQUITTO = "/usr/sbin/mosquitto"
TARGET_CRS = "EPSG:32632"
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0
_NON_TTY_DURATION_S = 20.0
_SET_OFF_S = 18.0  # on the loop, so that the gate comes up within the first minute
_LOG_TAIL = 12
_PR_SET_PDEATHSIG = 1


class DemoError(GatewayError):
    """The demo could not start or run: a component failed or is missing."""

    exit_code = 1
    reason = "demo"


class MissingBroker(DemoError):
    """Mosquitto is not installed: a setup problem, as a bad flag is."""

    exit_code = 2


# ---- the components ----

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = _LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return "  (no log)"
    return "\n".join(f"  | {line}" for line in text) or "  (the log is empty)"


def _find_mosquitto() -> str:
    if os.access(MOSQUITTO, os.X_OK):
        return MOSQUITTO
    found = shutil.which("mosquitto")
    if found:
        return found
    raise MissingBroker(f"mosquitto is not installed ({MOSQUITTO}); install the Debian package "
                        "'mosquitto' (make demo does) and try again")


def _with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send SIGTERM to the child when the demo
    dies, however it dies (Linux). Only safe while the demo has one thread."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the demo died before the call
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class _Broker:
    """A Mosquitto of the demo's own, on a free loopback port."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.dir = directory
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.log = directory / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, stop: threading.Event, timeout_s: float = 10.0) -> None:
        lines = [f"listener {self.port} {self.host}", "allow_anonymous true",
                 "persistence false", "log_dest stderr", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            # As root, mosquitto would drop to its own user and lose this directory.
            lines.append("user root")
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(conf)],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            process_group=0, preexec_fn=_with_parent())
        deadline = time.monotonic() + timeout_s
        while not self._accepts():
            if self.process.poll() is not None:
                raise DemoError(f"mosquitto exited with status {self.process.returncode} at "
                                f"start; its log ends:\n{_tail(self.log)}")
            if time.monotonic() > deadline or stop.is_set():
                self.stop()
                if stop.is_set():
                    raise _Interrupted
                raise DemoError(f"mosquitto did not listen on {self.host}:{self.port} within "
                                f"{timeout_s:g} s; its log ends:\n{_tail(self.log)}")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            return s.connect_ex((self.host, self.port)) == 0

    def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode


class _Daemon:
    """``python -m gatewayd run`` as a subprocess, with a notify socket for READY."""

    def __init__(self, directory: Path, broker: _Broker, gps_link: Path, *,
                 config: str | None, overrides: Sequence[str]) -> None:
        self.dir = directory
        self.log = directory / "gatewayd.log"
        self.notify_path = directory / "notify"
        settings = [
            "mqtt.host=127.0.0.1", f"mqtt.port={broker.port}", f"gateway.id={GATEWAY}",
            f"gateway.state_dir={directory / 'state'}",
            f"daemon.runtime_dir={directory / 'run'}",
            f"zones.file={SAMPLES / 'zones.geojson'}",
            f"crs.target={TARGET_CRS}", f"crs.source={TARGET_CRS}",
            f"serial.ports=gps0={gps_link}@115200",
            "daemon.status_interval_s=1",
            "mqtt.reconnect_min_s=0.2", "mqtt.reconnect_max_s=2",
            *overrides,
        ]
        self.args = [sys.executable, "-m", "gatewayd", "run"]
        if config:
            self.args += ["--config", config]
        for s in settings:
            self.args += ["--set", s]
        self.process: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None

    def start(self, stop: threading.Event) -> float:
        """Starts the daemon and waits for its READY; returns the seconds it took."""
        started = time.monotonic()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.notify_path))
        self._notify.settimeout(0.1)
        env = {k: v for k, v in os.environ.items()
               if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "WATCHDOG_USEC", "WATCHDOG_PID",
                            "LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET")}
        env.update(NOTIFY_SOCKET=str(self.notify_path), MALLOC_ARENA_MAX="2")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                                            process_group=0, preexec_fn=_with_parent())
        deadline = started + _READY_TIMEOUT_S
        while True:
            with contextlib.suppress(TimeoutError):
                note = self._notify.recv(4096).decode(errors="replace")
                if "READY=1" in note.splitlines():
                    self._notify.setblocking(False)
                    return time.monotonic() - started
            if self.process.poll() is not None:
                raise DemoError(f"gatewayd run exited with status {self.process.returncode} "
                                f"before it was ready; its log ends:\n{_tail(self.log)}")
            if stop.is_set():
                raise _Interrupted
            if time.monotonic() > deadline:
                raise DemoError(f"gatewayd run was not ready within {_READY_TIMEOUT_S:g} s; "
                                f"its log ends:\n{_tail(self.log)}")

    def notes(self) -> list[str]:
        """The notifications that came since the last call (the socket must not fill
        up, or the daemon's notifications fail)."""
        out: list[str] = []
        while self._notify is not None:
            try:
                out.append(self._notify.recv(4096).decode(errors="replace"))
            except (BlockingIOError, InterruptedError, TimeoutError):
                break
        return out

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then the exit status; past ``timeout_s`` its whole group is killed."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        return process.returncode


class _Interrupted(Exception):
    """Ctrl-C (or SIGTERM) before the demo was up: stop quietly."""


def _mqtt_client(name: str, broker: _Broker) -> Any:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"gatewayd-demo-{name}-"
                         f"{os.getpid()}")
    try:
        client.connect(broker.host, broker.port, keepalive=30)
    except OSError as exc:
        raise DemoError(f"cannot connect to the demo's broker {broker.host}:{broker.port}: "
                        f"{exc}") from None
    return client


# ---- the live view ----

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _visible(text: str) -> int:
    return len(_ANSI.sub("", text))


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` visible characters, escape sequences kept."""
    if _visible(text) <= width:
        return text
    out, shown, pos = [], 0, 0
    for m in _ANSI.finditer(text):
        chunk = text[pos:m.start()]
        take = chunk[:max(0, width - shown)]
        out.append(take)
        shown += len(take)
        out.append(m.group())
        pos = m.end()
    out.append(text[pos:][:max(0, width - shown)])
    return "".join(out) + "\x1b[0m"


def _thousands(n: float) -> str:
    return f"{n:,.0f}".replace(",", " ")


def _thousands_1(n: float) -> str:
    return f"{n:,.1f}".replace(",", " ")


def _ring_area_m2(ring: list[list[float]]) -> float:
    """The planar area of a small lon/lat ring, in a local tangent plane."""
    if len(ring) < 4:
        return 0.0
    lat0 = math.radians(sum(p[1] for p in ring) / len(ring))
    kx, ky = 111_320.0 * math.cos(lat0), 110_574.0
    pts = [(p[0] * kx, p[1] * ky) for p in ring]
    return abs(sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in itertools.pairwise(pts))) / 2


class LiveView:
    """What the gateway's topics have said, kept up to date from the MQTT thread,
    and rendered as a dashboard, a line, or the closing summary."""

    def __init__(self, *, color: bool = True, unicode: bool = True) -> None:
        self._lock = threading.RLock()
        self.started = time.monotonic()
        self.fixes = 0
        self.fix: dict[str, Any] | None = None
        self._fix_times: collections.deque[float] = collections.deque(maxlen=200)
        self.zones: tuple[str, ...] | None = None
        self._zones_since = 0.0
        self._zones_before: tuple[str, ...] | None = None
        self.frames = 0
        self.frame: dict[str, Any] | None = None
        self.points_in = self.points_out = 0
        self.pcd_bytes = 0
        self.polygons = self.invalid = self.repaired = 0
        self.last_valid: dict[str, Any] | None = None
        self.last_invalid: dict[str, Any] | None = None
        self.dead: collections.Counter[str] = collections.Counter()
        self.last_dead: dict[str, Any] | None = None
        self.status: dict[str, Any] | None = None
        self._status_at = 0.0
        self.inputs: collections.Counter[str] = collections.Counter()
        self.unreadable = 0
        self.color = color
        self.sym = {"to": "→", "deg": "°", "dot": "·", "x": "\u00d7", "bar": "─", "sq": "²"} \
            if unicode else {"to": "->", "deg": " deg", "dot": "|", "x": "x", "bar": "-",
                             "sq": "2"}
        # Filled in by the demo for the simulator's line.
        self.sim: dict[str, Any] = {}

    # ---- intake, from the MQTT thread ----

    def on_message(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(PREFIX + "/"):
            return
        levels = topic[len(PREFIX) + 1:].split("/")
        with self._lock:
            if levels[0] == "in":
                self.inputs[levels[1] if len(levels) > 1 else "?"] += 1
                return
            if levels[-1] == "pcd":
                self.pcd_bytes += len(payload)
                return
            try:
                doc = json.loads(payload)
            except ValueError:
                self.unreadable += 1
                return
            if not isinstance(doc, dict):
                self.unreadable += 1
            elif levels[0] == "status":
                self.status, self._status_at = doc, time.monotonic()
            elif levels[0] == "dead":
                self.dead[str(doc.get("reason", "?"))] += 1
                self.last_dead = doc
            elif doc.get("kind") == "gps_fix":
                self._on_fix(doc)
            elif doc.get("kind") == "lidar_frame":
                self.frames += 1
                self.frame = doc
                self.points_in += int(doc.get("points_in") or 0)
                self.points_out += int(doc.get("points_out") or 0)
            elif doc.get("kind") == "polygon":
                self.polygons += 1
                if doc.get("valid"):
                    self.last_valid = doc
                else:
                    self.invalid += 1
                    self.last_invalid = doc
                self.repaired += bool(doc.get("repaired"))

    def _on_fix(self, fix: dict[str, Any]) -> None:
        now = time.monotonic()
        self.fixes += 1
        self.fix = fix
        self._fix_times.append(now)
        zones = tuple(fix.get("zones") or ())
        if zones != self.zones:
            self._zones_before, self.zones, self._zones_since = self.zones, zones, now

    def fix_rate(self, window_s: float = 3.0) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._fix_times if now - t <= window_s]
        span = min(window_s, now - self.started)
        return len(recent) / span if span > 0.5 else 0.0

    # ---- rendering ----

    def _c(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _title(self, text: str) -> str:
        return " " + self._c(f"{text:<11}", "1;36")

    def _row(self, label: str, text: str) -> str:
        return "   " + self._c(f"{label:<9}", "2") + text

    def _state(self, text: str, good: bool | None) -> str:
        return self._c(text, "32" if good else "33" if good is None else "31")

    def _zones(self, zones: Sequence[str] | None) -> str:
        if zones is None:
            return self._c("-", "2")
        return self._c(f" {self.sym['dot']} ".join(zones), "1;35") if zones else \
            self._c("(no zone)", "2")

    def _waiting(self, what: str) -> str:
        return self._row("", self._c(f"waiting for {what}...", "2"))

    def _join(self, *parts: str) -> str:
        return f" {self.sym['dot']} ".join(p for p in parts if p)

    def screen(self, width: int, height: int) -> str:
        """The whole dashboard: home, lines each cleared to their end, the rest cleared."""
        with self._lock:
            sections = self._sections(width)
        rows = max(1, height - 1)
        spaced = sum(len(s) for s in sections) + len(sections) - 1 <= rows
        lines: list[str] = []
        for section in sections:
            lines += section
            if spaced and section is not sections[0]:
                lines.append("")
        lines = lines[:rows]
        return "\x1b[H" + "".join(_fit(line, width) + "\x1b[K\n" for line in lines) + "\x1b[J"

    def _sections(self, width: int) -> list[list[str]]:
        s, c = self.sym, self._c
        elapsed = time.monotonic() - self.started
        clock = f"{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}"
        head = (f" {c('gatewayd ' + __version__, '1')} live demo {s['dot']} gateway "
                f"{c(GATEWAY, '1')}")
        right = f"{c(clock, '1')}  {c('Ctrl-C stops', '2')} "
        broker = f" {s['dot']} {self.sim.get('broker', '')}"
        if _visible(head + broker + right) < width:
            head += broker
        top = [head + " " * max(1, width - _visible(head) - _visible(right)) + right,
               c(s["bar"] * width, "2")]
        return [top, self._gps_lines(), self._lidar_lines(), self._polygon_lines(),
                self._dead_lines(), self._daemon_lines(), self._simulator_lines()]

    def _gps_lines(self) -> list[str]:
        s, c, fix = self.sym, self._c, self.fix
        rate = self.fix_rate()
        out = [self._title("GPS") + self._join(
            f"gps0 on {self.sim.get('tty', '')}",
            c(f"{rate:.1f} fixes/s", "1"), f"{self.fixes} fixes")]
        if fix is None:
            return [*out, self._waiting("the first fix")]
        mode = {3: "3D fix", 2: "2D fix"}.get(fix.get("mode", 0), "no fix")
        lat, lon = fix.get("lat"), fix.get("lon")
        where = (f"{abs(lat):.6f}{s['deg']}{'N' if lat >= 0 else 'S'}  "
                 f"{abs(lon):.6f}{s['deg']}{'E' if lon >= 0 else 'W'}") \
            if lat is not None and lon is not None else "-"
        utm = (f"UTM 32N  x {_thousands_1(fix['x'])} m  y {_thousands_1(fix['y'])} m"
               if "x" in fix and "y" in fix else "")
        speed, track, alt = fix.get("speed"), fix.get("track"), fix.get("altMSL")
        out.append(self._row("time", self._join(
            str(fix.get("time", "-")), self._state(mode, mode == "3D fix"))))
        out.append(self._row("position", f"{c(where, '1')}   {utm}"))
        out.append(self._row("motion", self._join(
            c(f"{speed * 3.6:.1f} km/h", "1") if speed is not None else "",
            f"track {track:.0f}{s['deg']}" if track is not None else "",
            f"altitude {alt:.1f} m" if alt is not None else "")))
        since = time.monotonic() - self._zones_since
        was = f"   {c('was', '2')} {self._zones(self._zones_before)} " \
              f"{c(f'until {since:.0f} s ago', '2')}" if self._zones_before is not None else ""
        out.append(self._row("zones", self._zones(self.zones) + was))
        return out

    def _lidar_lines(self) -> list[str]:
        s, c, f = self.sym, self._c, self.frame
        out = [self._title("LiDAR") + self._join(
            "mast", c(f"{self.frames} frame{'' if self.frames == 1 else 's'}", "1"),
            f"{_thousands(self.points_in)} {s['to']} {_thousands(self.points_out)} points",
            f"{self.pcd_bytes / 1e6:.1f} MB of PCD out")]
        if f is None:
            return [*out, self._waiting("the first frame")]
        n_in, n_out = int(f.get("points_in") or 0), int(f.get("points_out") or 0)
        share = f" ({100 * n_out / n_in:.0f} % kept)" if n_in else ""
        bbox = f.get("bbox")
        box = (f"bbox {bbox[3] - bbox[0]:.0f} {s['x']} {bbox[4] - bbox[1]:.0f} {s['x']} "
               f"{bbox[5] - bbox[2]:.1f} m") if bbox and len(bbox) == 6 else ""
        foot = f.get("footprint")
        area = f"footprint {_thousands(_ring_area_m2(foot['coordinates'][0]))} m{s['sq']}" \
            if foot and foot.get("coordinates") else ""
        out.append(self._row("last", self._join(
            f"{c(_thousands(n_in), '1')} {s['to']} {c(_thousands(n_out), '1')} points{share}",
            box, area)))
        out.append(self._row("zones", self._zones(f.get("zones"))))
        return out

    def _polygon_lines(self) -> list[str]:
        c = self._c
        out = [self._title("Polygons") + self._join(
            "field", c(f"{self.polygons} records", "1"),
            f"valid {c(str(self.polygons - self.invalid), '32')}",
            f"invalid {c(str(self.invalid), '33')}",
            f"repaired {c(str(self.repaired), '36')}")]
        good, bad = self.last_valid, self.last_invalid
        if good is None and bad is None:
            return [*out, self._waiting("the first update")]
        out.append(self._row("valid", self._polygon(good) if good else c("none yet", "2")))
        out.append(self._row("invalid", self._polygon(bad) if bad else c("none yet", "2")))
        reason = bad.get("reason") if bad is not None else None
        out.append(self._row("reason", c(str(reason), "33") if reason else c("-", "2")))
        return out

    def _polygon(self, p: dict[str, Any]) -> str:
        s, c = self.sym, self._c
        area = p.get("area_m2")
        repaired = f" {s['to']} {self._state('repaired', True)}" if p.get("repaired") else ""
        return self._join(
            f"{c(str(p.get('feature_id', '?')), '1')}{repaired}",
            f"{_thousands(area)} m{s['sq']}" if isinstance(area, int | float) else "",
            f"in {self._zones(p.get('zones'))}" if p.get("zones") else "")

    def _dead_lines(self) -> list[str]:
        c = self._c
        total = sum(self.dead.values())
        out = [self._title("Dead") + self._join(
            c(f"{total} dead letter{'' if total == 1 else 's'}", "1;31" if total else "1"),
            *(f"{reason} {n}" for reason, n in sorted(self.dead.items())))]
        d = self.last_dead
        if d is not None:
            out.append(self._row("last", f"{d.get('source', '?')}: {d.get('detail', '')}"))
        return out

    def _daemon_lines(self) -> list[str]:
        s, c, st = self.sym, self._c, self.status
        if st is None:
            return [self._title("Daemon") + c("waiting for its status...", "2")]
        age = time.monotonic() - self._status_at
        state = str(st.get("state", "?"))
        rates = st.get("rates") or {}
        lag = (st.get("loop_lag_ms") or {}).get("p99")
        mqtt = str(st.get("mqtt"))
        out = [self._title("Daemon") + self._join(
            self._state(state, state == "running"),
            c(f"status {age:.0f} s old", "33") if age > 3 else "",
            f"up {st.get('uptime_s', 0):.0f} s",
            f"in {rates.get('in_per_s', 0):.1f}/s", f"out {rates.get('out_per_s', 0):.1f}/s",
            f"mqtt {self._state(mqtt, mqtt == 'connected')}",
            f"loop lag p99 {lag:.1f} ms" if lag is not None else "")]
        q = st.get("queue") or {}
        out.append(self._row("queue", self._join(
            f"{c(str(q.get('depth', '-')), '1')}/{q.get('capacity', '-')}",
            f"peak {q.get('peak', '-')}", f"chunk size {st.get('chunk_size', '-')}")))
        w = st.get("workers") or {}
        temp = st.get("temperature_c")
        thermal = (f"SoC {temp:.1f} {s['deg'].strip()}C, {st.get('thermal')}"
                   if isinstance(temp, int | float) else c("no thermal zone", "2"))
        out.append(self._row("workers", self._join(
            f"{c(str(w.get('alive', '-')), '1')} alive", f"{w.get('restarts', 0)} restarts",
            f"{w.get('timeouts', 0)} timeouts", thermal)))
        for name, port in sorted((st.get("sources") or {}).items()):
            pstate = str(port.get("state"))
            out.append(self._row("serial", self._join(
                f"{name} {self._state(pstate, pstate == 'open')}"
                + (f" at {port['baud']} baud" if port.get("baud") else "")
                + (f" ({port['reason']})" if port.get("reason") else ""),
                f"{port.get('dropped', 0)} dropped", f"{port.get('spilled', 0)} spilled")))
        if self.sim.get("notify"):
            out.append(self._row("systemd", c(f"STATUS={self.sim['notify']}", "2")))
        return out

    def _simulator_lines(self) -> list[str]:
        sim = self.sim
        return [self._title("Simulator") + self._join(
            f"{sim.get('cycles', 0)} NMEA cycles ({sim.get('sentences', 0)} sentences, "
            f"{sim.get('overruns', 0)} overruns)",
            f"{sim.get('frames', 0)} LiDAR frames",
            f"{sim.get('polygon_updates', 0)} polygon updates")]

    def line(self) -> str:
        """One line for a log or a pipe."""
        with self._lock:
            fix, st = self.fix, self.status or {}
            stamp = f"[{time.monotonic() - self.started:4.0f}s] "
            parts = [f"fixes {self.fixes}"]
        parts[-1] += f" ({self.fix_rate():.1f}/s)"
        with self._lock:
            if fix is not None and fix.get("lat") is not None:
                speed = fix.get("speed") or 0.0
                parts.append(f"{fix['lat']:.6f},{fix['lon']:.6f} {speed * 3.6:.1f} km/h "
                             f"zones {','.join(fix.get('zones') or ()) or '-'}")
            frame = ""
            if self.frame is not None:
                frame = (f" (last {self.frame.get('points_in')} -> "
                         f"{self.frame.get('points_out')} points)")
            parts.append(f"frames {self.frames}{frame}")
            parts.append(f"polygons {self.polygons} ({self.invalid} invalid, "
                         f"{self.repaired} repaired)")
            parts.append(f"dead letters {sum(self.dead.values())}")
            q = st.get("queue") or {}
            if st:
                parts.append(f"daemon {st.get('state')} queue {q.get('depth')}/"
                             f"{q.get('capacity')} peak {q.get('peak')}")
        return stamp + " | ".join(parts)

    def summary(self, exit_code: int | None) -> str:
        with self._lock:
            dead = ", ".join(f"{r} {n}" for r, n in sorted(self.dead.items()))
            code = "not started" if exit_code is None else str(exit_code)
            return (f"summary: fixes {self.fixes}, LiDAR frames {self.frames} "
                    f"({self.points_in} -> {self.points_out} points), "
                    f"polygon records {self.polygons} ({self.invalid} invalid, "
                    f"{self.repaired} repaired), dead letters {sum(self.dead.values())}"
                    f"{f' ({dead})' if dead else ''}, daemon exit code {code}")


# ---- the demo's lifecycle ----

class _Terminal:
    """The demo's output: on a terminal, the alternate screen with the cursor
    hidden while the view runs. A terminal that went away (its window closed)
    is not written to again."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.active = False
        self._broken = False

    def write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self._broken = True

    def enter(self) -> None:
        if self.tty:
            self.write("\x1b[?1049h\x1b[?25l\x1b[2J")
            self.active = True

    def leave(self) -> None:
        if self.active:
            self.write("\x1b[?25h\x1b[?1049l")
            self.active = False


@contextlib.contextmanager
def _stop_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP (the terminal went away) set ``stop``; the main
    loop notices and shuts down in order."""
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {sig: signal.signal(sig, handler)
           for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


class Demo:
    """One run of the demo: its components, its view and their ordered shutdown."""

    def __init__(self, *, duration: float | None, config: str | None = None,
                 overrides: Sequence[str] = (), out: TextIO | None = None) -> None:
        stream = out if out is not None else sys.stdout
        self.term = _Terminal(stream)
        self.tty = self.term.tty
        self.duration = duration if duration is not None else \
            (None if self.tty else _NON_TTY_DURATION_S)
        self.config = config
        self.overrides = tuple(overrides)
        self.stop = threading.Event()
        encoding = (getattr(stream, "encoding", None) or "ascii").lower().replace("-", "")
        self.view = LiveView(color=self.tty and "NO_COLOR" not in os.environ,
                             unicode=encoding in ("utf8", "utf16", "utf32"))
        self._daemon_tail = ""

    def say(self, text: str) -> None:
        self.term.write(f"demo: {text}\n")

    def run(self) -> int:
        from gatewayd.config import load_config

        if self.duration is not None and not 0 < self.duration < math.inf:
            raise ConfigError(f"--duration must be a number of seconds above 0, not "
                              f"{self.duration:g}")
        load_config(self.config, self.overrides, os.environ)  # the user's part, checked early
        binary = _find_mosquitto()
        with _stop_signals(self.stop):
            tmp = Path(tempfile.mkdtemp(prefix="gatewayd-demo-"))
            try:
                return self._run(binary, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def _run(self, binary: str, tmp: Path) -> int:
        from gatewayd.simulator import GpsReceiver, InputPublisher, Route

        broker = _Broker(binary, tmp)
        daemon: _Daemon | None = None
        receiver: GpsReceiver | None = None
        publisher: InputPublisher | None = None
        sensors = viewer = None
        code: int | None = None
        failure: BaseException | None = None
        try:
            broker.start(self.stop)
            assert broker.process is not None
            self.say(f"mosquitto (pid {broker.process.pid}) on {broker.host}:{broker.port}, "
                     f"files in {tmp}")
            route = Route(start_s=_SET_OFF_S)
            receiver = GpsReceiver(tmp / "gps0", route)
            daemon = _Daemon(tmp, broker, receiver.link, config=self.config,
                             overrides=self.overrides)
            took = daemon.start(self.stop)
            assert daemon.process is not None
            self.say(f"gatewayd run (pid {daemon.process.pid}) ready in {took:.1f} s: "
                     f"gateway {GATEWAY}, results in {TARGET_CRS}, gps0 on {receiver.tty}")

            # Threads only now: the children above were forked from a single thread.
            viewer = self._subscribe(broker)
            sensors = _mqtt_client("sensors", broker)
            sensors.loop_start()
            publisher = InputPublisher(
                route, lambda topic, payload: sensors.publish(topic, payload, qos=1),
                f"{PREFIX}/in")
            started = time.monotonic()
            self.view.started = started
            self.view.sim.update(broker=f"broker {broker.host}:{broker.port}",
                                 tty=f"{receiver.tty} @115200")
            receiver.start(started)
            publisher.start(started)
            self.say(f"simulator: a vehicle on a {route.length_m / 1000:.1f} km loop through "
                     "the zones; NMEA at 10 Hz, a LiDAR frame every 2 s, polygons every 5 s"
                     + (f"; stopping after {self.duration:g} s" if self.duration else
                        "; Ctrl-C stops"))
            self._watch(daemon, broker, receiver, publisher, started)
        except _Interrupted:
            pass
        except BaseException as exc:
            failure = exc
        finally:
            self.term.leave()
            code = self._shutdown(broker, daemon, receiver, publisher, sensors, viewer)
        if failure is not None:
            raise failure
        if daemon is not None and daemon.process is not None:
            self.term.write(self.view.summary(code) + "\n")
            if code != 0:
                raise DemoError(f"gatewayd run exited with status {code}; its log ended:\n"
                                f"{self._daemon_tail}")
        return 0

    def _subscribe(self, broker: _Broker) -> Any:
        """The live view's client, subscribed to everything under the gateway's prefix."""
        subscribed = threading.Event()
        viewer = _mqtt_client("view", broker)
        viewer.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/#", qos=1)
        viewer.on_subscribe = lambda *_: subscribed.set()
        viewer.on_message = lambda c, u, m: self.view.on_message(m.topic, m.payload)
        viewer.loop_start()
        if not subscribed.wait(10.0):
            viewer.loop_stop()
            raise DemoError(f"no subscription at the demo's broker {broker.host}:{broker.port} "
                            "within 10 s")
        return viewer

    def _watch(self, daemon: _Daemon, broker: _Broker, receiver: Any, publisher: Any,
               started: float) -> None:
        """Shows the view until the duration is over or a stop signal comes; a
        component that dies on its own ends the demo with an error."""
        self.term.enter()
        period = 0.25 if self.tty else 1.0
        next_draw = started
        while not self.stop.is_set():
            now = time.monotonic()
            if self.duration is not None and now - started >= self.duration:
                break
            if daemon.poll() is not None:
                self.term.leave()
                raise DemoError(f"gatewayd run exited early with status {daemon.poll()}; "
                                f"its log ends:\n{_tail(daemon.log)}")
            if broker.process is not None and broker.process.poll() is not None:
                self.term.leave()
                raise DemoError(f"mosquitto exited early with status "
                                f"{broker.process.returncode}; its log ends:\n"
                                f"{_tail(broker.log)}")
            for note in daemon.notes():
                for field in note.splitlines():
                    if field.startswith("STATUS="):
                        self.view.sim["notify"] = field[len("STATUS="):]
            self.view.sim.update(cycles=receiver.cycles, sentences=receiver.sentences,
                                 overruns=receiver.overruns, frames=publisher.frames,
                                 polygon_updates=publisher.polygon_updates)
            if now >= next_draw:
                next_draw += period
                if self.tty:
                    size = shutil.get_terminal_size()
                    self.term.write(self.view.screen(size.columns, size.lines))
                else:
                    self.term.write(self.view.line() + "\n")
            self.stop.wait(max(0.0, min(next_draw - time.monotonic(), 0.25)))

    def _shutdown(self, broker: _Broker, daemon: _Daemon | None, receiver: Any,
                  publisher: Any, sensors: Any, viewer: Any) -> int | None:
        """Simulator, daemon, broker, in that order; returns the daemon's exit status."""
        if publisher is not None:
            self.say("stopping: the simulator")
        if publisher is not None:
            publisher.stop()
        if receiver is not None:
            receiver.stop()
        if sensors is not None:
            sensors.disconnect()
            sensors.loop_stop()
        code = None
        if daemon is not None and daemon.process is not None:
            running = daemon.poll() is None
            if running:
                self.say(f"stopping: gatewayd run (SIGTERM to pid {daemon.process.pid})")
            began = time.monotonic()
            code = daemon.stop()
            if running:
                self.say(f"gatewayd run exited with status {code} after "
                         f"{time.monotonic() - began:.1f} s")
            self._daemon_tail = _tail(daemon.log)
            time.sleep(0.2)  # the last records and the offline status reach the view
        if viewer is not None:
            viewer.disconnect()
            viewer.loop_stop()
        if broker.process is not None:
            self.say(f"stopping: mosquitto (pid {broker.process.pid})")
            broker.stop()
        if receiver is not None:
            receiver.close()
        return code


def main(duration: float | None = None, *, config: str | None = None,
         overrides: Sequence[str] = (), out: TextIO | None = None) -> int:
    """``gatewayd demo``: returns the exit code; raises DemoError with one clear message."""
    return Demo(duration=duration, config=config, overrides=overrides, out=out).run()
