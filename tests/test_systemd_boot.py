"""The shipped unit under a real systemd: Debian 12 booted in systemd-nspawn
(tests/nspawn.py), gatewayd installed as an operator installs it, driven with
systemctl and read back from the journal.

- systemd 252 (Debian 12), the unit as shipped: every sandbox restriction is in
  force and the workload (numpy, cffi, GEOS, PROJ) runs inside it; READY comes
  once the workers and the serial port are up; MQTT and serial input come out
  processed; a SIGKILLed worker is replaced; a timed-out chunk is found by its
  reason in the journal; reload, STATUS, the watchdog restarting a wedged
  pipeline, and a clean stop.
- systemd 254 (bookworm-backports) with the notify-reload drop-in: reload goes
  through RELOADING=1 with MONOTONIC_USEC= and READY=1.

They boot containers and take minutes, so they run only when asked:
``make systemd-test`` (or GATEWAYD_SYSTEMD_BOOT=1), as root, with
systemd-container and debootstrap installed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynmea2
import pyproj
import pytest
import shapely
from nspawn import HOSTNAME, Machine, end, missing_tools

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
SAMPLES = ROOT / "gatewayd" / "samples"
PREFIX = f"gatewayd/{HOSTNAME}"
VENV = "/usr/lib/gatewayd"
INSTALLED_SAMPLES = f"{VENV}/lib/python3.11/site-packages/gatewayd/samples"
GPS_LINK = "/dev/serial/by-id/usb-gatewayd-test-gps-if00"

if os.environ.get("GATEWAYD_SYSTEMD_BOOT") != "1":
    pytestmark = pytest.mark.skip(reason="boots containers: run `make systemd-test` "
                                         "(or set GATEWAYD_SYSTEMD_BOOT=1)")
elif missing := missing_tools():
    pytestmark = pytest.mark.skip(reason=f"cannot boot containers: missing {', '.join(missing)}")
else:
    pytestmark = pytest.mark.timeout(600)


# ---- installing gatewayd as an operator does ----


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout and of everything it depends on."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    assert list(out.glob("gatewayd-*.whl"))
    return out


def _config(**changes: str) -> str:
    """The shipped example configuration, with some of its lines changed."""
    text = (SYSTEMD / "gatewayd.toml").read_text()
    for old, new in changes.items():
        assert text.count(old) == 1, f"the example configuration has no single {old!r}"
        text = text.replace(old, new)
    return text


# Each boot's configuration: results in UTM, tagged with zones, one GPS on a serial port.
FIRST_CONFIG = {
    'target = "EPSG:4326"': 'target = "EPSG:32632"',
    '# file = "/etc/gatewayd/zones.geojson"': 'file = "/etc/gatewayd/zones.geojson"',
    "ports = []": f'ports = ["gps0={GPS_LINK}@9600"]',
}
# Applied by reload: a chunk that hangs waits instead of timing out, and the
# watchdog gives up on it after 3 s.
WEDGE_CONFIG = {**FIRST_CONFIG, "chunk_timeout_s = 4.0": "chunk_timeout_s = 60.0",
                "# watchdog_stall_s = 30.0": "watchdog_stall_s = 3.0"}


def _install(machine: Machine, wheels: Path, *, drop_in: bool = False) -> None:
    root = machine.root
    shutil.copytree(wheels, root / "srv/wheels")
    shutil.copy(SYSTEMD / "gatewayd.service", root / "usr/lib/systemd/system/")
    shutil.copy(SYSTEMD / "gatewayd.sysusers", root / "usr/lib/sysusers.d/gatewayd.conf")
    shutil.copy(SYSTEMD / "gatewayd.tmpfiles", root / "usr/lib/tmpfiles.d/gatewayd.conf")
    if drop_in:
        (root / "etc/systemd/system/gatewayd.service.d").mkdir(parents=True)
        shutil.copy(SYSTEMD / "gatewayd-notify-reload.conf",
                    root / "etc/systemd/system/gatewayd.service.d/notify-reload.conf")
    machine.run("python3", "-m", "venv", VENV)
    machine.run(f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links",
                "/srv/wheels", "gatewayd", timeout=300)
    machine.run("ln", "-s", f"{VENV}/bin/gatewayd", "/usr/bin/gatewayd")
    machine.run("systemd-sysusers", "gatewayd.conf")
    machine.run("systemd-tmpfiles", "--create", "gatewayd.conf")
    machine.run("install", "-m", "0644", f"{INSTALLED_SAMPLES}/zones.geojson",
                "/etc/gatewayd/zones.geojson")
    write_config(machine, FIRST_CONFIG)
    machine.run("systemctl", "daemon-reload")
    # Every sd_notify message then shows in the journal as PID 1 receives it.
    machine.run("systemd-analyze", "log-level", "debug")


def write_config(machine: Machine, changes: dict[str, str]) -> None:
    path = machine.root / "etc/gatewayd/gatewayd.toml"
    path.write_text(_config(**changes))
    path.chmod(0o644)


# A GPS receiver on a pseudo-terminal, owned root:dialout 0660 as udev makes a
# ttyUSB, behind a by-id link. It writes the bundled capture, a line at a time,
# as many lines as it reads numbers on stdin.
FEEDER = r"""
import grp, os, pty, sys, time, tty
master, slave = pty.openpty()
tty.setraw(slave)
name = os.ttyname(slave)
os.chown(name, 0, grp.getgrnam("dialout").gr_gid)
os.chmod(name, 0o660)
link = sys.argv[1]
os.makedirs(os.path.dirname(link), exist_ok=True)
os.symlink(name, link)
lines = iter(open(sys.argv[2], "rb").read().splitlines(keepends=True))
print(name, flush=True)
for request in sys.stdin:
    for _ in range(int(request)):
        os.write(master, next(lines))
        time.sleep(0.005)
    print("sent", flush=True)
"""


class Gps:
    def __init__(self, machine: Machine) -> None:
        self.process = machine.spawn("python3", "-c", FEEDER, GPS_LINK,
                                     f"{INSTALLED_SAMPLES}/capture-drive.nmea")
        assert self.process.stdout is not None
        self.device = self.process.stdout.readline().strip()
        assert self.device.startswith("/dev/pts/"), self.device
        self.sent = 0

    def send(self, lines: int) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{lines}\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "sent"
        self.sent += lines

    def close(self) -> None:
        _end(self.process)


def _end(process: subprocess.Popen[str], reader: threading.Thread | None = None) -> None:
    end(process)
    if reader is not None:
        reader.join(10)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class Subscriber:
    """mosquitto_sub in the container, on the result and dead-letter topics."""

    def __init__(self, machine: Machine) -> None:
        self.process = machine.spawn("mosquitto_sub", "-v", "-q", "1",
                                     "-t", f"{PREFIX}/out/+/+", "-t", f"{PREFIX}/dead/+")
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(0.5)  # subscribed before anything is published

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            topic, _, payload = line.partition(" ")
            with contextlib.suppress(ValueError):
                self.messages.append((topic, json.loads(payload)))

    def records(self, topic_part: str = "") -> list[dict[str, Any]]:
        return [r for t, r in list(self.messages) if topic_part in t]

    def wait_for(self, ready: Callable[[], object], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, f"not seen within {timeout} s: {self.messages}"
            time.sleep(0.2)

    def close(self) -> None:
        _end(self.process, self._reader)


def publish(machine: Machine, source: str, kind: str, payload: str | None = None,
            file: str | None = None) -> None:
    data = ["-f", file] if file else ["-m", payload or ""]
    machine.run("mosquitto_pub", "-q", "1", "-t", f"{PREFIX}/in/{kind}/{source}", *data)


# ---- reading the machine's state ----


def show(machine: Machine, unit: str, *props: str) -> dict[str, str]:
    out = machine.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.partition("=")[::2] for line in out.splitlines())


def journal(machine: Machine, *matches: str) -> list[dict[str, Any]]:
    out = machine.run("journalctl", "--no-pager", "-o", "json", *matches).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def notifications(machine: Machine, unit: str = "gatewayd.service") -> list[tuple[int, str]]:
    """(monotonic usec, message) of every sd_notify message PID 1 took from the unit."""
    found = []
    for entry in journal(machine, "_PID=1", f"UNIT={unit}"):
        message = entry.get("MESSAGE", "")
        if isinstance(message, str) and "Got notification message from PID" in message:
            found.append((int(entry["__MONOTONIC_TIMESTAMP"]), message))
    return found


def processes(machine: Machine) -> list[tuple[int, int, str, str]]:
    """(pid, ppid, user, command line) of every process of the service."""
    main = int(show(machine, "gatewayd", "MainPID")["MainPID"])
    procs = machine.run("cat", "/sys/fs/cgroup/system.slice/gatewayd.service/cgroup.procs")
    pids = set(map(int, procs.stdout.split()))
    out = machine.run("ps", "-e", "-o", "pid=,ppid=,user:20=,args=").stdout
    found = []
    for line in out.splitlines():
        pid, ppid, user, args = line.split(None, 3)
        if int(pid) in pids:
            found.append((int(pid), int(ppid), user, args))
    assert any(p[0] == main for p in found)
    return found


def workers(machine: Machine) -> list[int]:
    """The worker processes: children of the forkserver the main process started."""
    main = int(show(machine, "gatewayd", "MainPID")["MainPID"])
    procs = processes(machine)
    server = [p[0] for p in procs if p[1] == main and "multiprocessing.forkserver" in p[3]]
    assert len(server) == 1, procs
    return sorted(p[0] for p in procs if p[1] == server[0])


def proc_status(machine: Machine, pid: int) -> dict[str, str]:
    text = machine.run("cat", f"/proc/{pid}/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def wait_until(check: Callable[[], object], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.5)


# ---- systemd 252, the unit as shipped ----


@pytest.fixture(scope="module")
def bookworm(wheels: Path) -> Iterator[Machine]:
    with Machine("bookworm", "gw252").boot() as machine:
        assert machine.run("systemctl", "--version").stdout.startswith("systemd 252")
        _install(machine, wheels)
        yield machine


@pytest.fixture(scope="module")
def gps(bookworm: Machine) -> Iterator[Gps]:
    receiver = Gps(bookworm)
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def subscriber(bookworm: Machine) -> Iterator[Subscriber]:
    sub = Subscriber(bookworm)
    yield sub
    sub.close()


PROBE = r"""
import ctypes, errno, json, mmap, os, resource, socket, sys
out = {}

def attempt(name, action):
    try:
        action()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))

def write(path):
    with open(path, "w") as f:
        f.write("x")
    os.remove(path)

def unshare_user():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")

attempt("wx_memory", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE
                                       | mmap.PROT_EXEC))
attempt("set_affinity", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))
attempt("cap_address_space", lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 40, -1)))
attempt("af_netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
attempt("af_packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close())
attempt("af_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("af_unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close())
attempt("user_namespace", unshare_user)
attempt("write_open_var", lambda: write("/var/probe-open/probe"))
attempt("write_config", lambda: write("/etc/gatewayd/probe"))
attempt("write_state", lambda: write("/var/lib/gatewayd/probe"))
attempt("write_runtime", lambda: write("/run/gatewayd-probe/probe"))
attempt("write_shm", lambda: write("/dev/shm/gatewayd-probe"))
attempt("write_tmp", lambda: write("/tmp/probe"))
out["read_only"] = {path: bool(os.statvfs(path).f_flag & os.ST_RDONLY) for path in (
    "/usr", "/etc", "/etc/gatewayd", "/var", "/proc/sys", "/var/lib/gatewayd",
    "/run/gatewayd-probe", "/dev/shm", "/tmp", "/var/tmp")}
attempt("list_root_home", lambda: os.listdir("/root"))
attempt("serial_pty", lambda: os.close(os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)))
attempt("serial_ttyS", lambda: os.close(os.open("/dev/ttyS1", os.O_RDWR | os.O_NOCTTY
                                                | os.O_NONBLOCK)))
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\t" in line)
out.update({k: status[k].strip() for k in ("NoNewPrivs", "Seccomp", "CapEff", "CapBnd")})
out["host_tmp_seen"] = os.path.exists("/tmp/host-marker")
out["pid1_visible"] = os.path.exists("/proc/1/status")
out["dialout"] = __import__("grp").getgrnam("dialout").gr_gid in os.getgroups()
out["umask"] = oct(os.umask(0o027))
out["env"] = {k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "OPENBLAS_NUM_THREADS")}

import numpy as np
from gatewayd import geometry
out["blas"] = float(np.ones((64, 64)) @ np.ones(64) @ np.ones(64))
out["utm"] = list(map(float, geometry.transform(np.array([[9.18, 48.78]]), "EPSG:4326",
                                                "EPSG:32632").points[0]))
out["hull"] = len(geometry.convex_hull(np.array([[0, 0], [1, 0], [0, 1], [1, 1], [.5, .5]])))
print(json.dumps(out))
"""


def _probe_unit(extra: str = "") -> str:
    """The shipped unit's sandbox around a probe instead of the daemon."""
    keep = []
    for line in (SYSTEMD / "gatewayd.service").read_text().splitlines():
        key = line.partition("=")[0]
        if key in ("Type", "ExecStart", "ExecReload", "NotifyAccess", "WatchdogSec",
                   "Restart", "RestartSec"):
            continue
        if key == "RuntimeDirectory":
            line = "RuntimeDirectory=gatewayd-probe"
        keep.append(line)
        if line == "[Service]":
            keep += ["Type=oneshot", f"ExecStart={VENV}/bin/python3 /srv/probe.py {GPS_LINK}",
                     extra]
    return "\n".join(keep) + "\n"


def _probe(machine: Machine, extra: str = "") -> dict[str, Any]:
    (machine.root / "srv/probe.py").write_text(PROBE)
    (machine.root / "etc/systemd/system/gatewayd-probe.service").write_text(_probe_unit(extra))
    machine.run("systemctl", "daemon-reload")
    machine.run("systemctl", "start", "gatewayd-probe", check=False)
    lines = machine.run("journalctl", "--no-pager", "-o", "cat",
                        "_SYSTEMD_UNIT=gatewayd-probe.service").stdout.splitlines()
    results = [line for line in lines if line.startswith("{")]
    assert results, "\n".join(lines)
    machine.run("journalctl", "--rotate")
    machine.run("journalctl", "--vacuum-files=1", check=False)
    return dict(json.loads(results[-1]))


def test_every_restriction_of_the_sandbox_is_in_force_and_the_workload_runs_inside_it(
        bookworm, gps):
    bookworm.run("mknod", "-m", "0660", "/dev/ttyS1", "c", "4", "65")
    bookworm.run("chgrp", "dialout", "/dev/ttyS1")
    bookworm.run("touch", "/tmp/host-marker")
    bookworm.run("install", "-d", "-m", "1777", "/var/probe-open")
    out = _probe(bookworm)
    denied = {
        "wx_memory": "EPERM",  # MemoryDenyWriteExecute=yes
        "set_affinity": "EPERM",  # SystemCallFilter=~@resources
        "af_netlink": "EAFNOSUPPORT", "af_packet": "EAFNOSUPPORT",  # RestrictAddressFamilies
        "user_namespace": "EPERM",  # RestrictNamespaces=yes
        "write_open_var": "EROFS",  # ProtectSystem=strict, even where anyone may write
        # ConfigurationDirectory= exempts /etc/gatewayd from ProtectSystem= (it is
        # bound read-write), but it stays root's, 0755.
        "write_config": "EACCES",
        "list_root_home": "EACCES",  # ProtectHome=yes
        "serial_ttyS": "EPERM",  # DevicePolicy=closed: dialout may, the device cgroup not
    }
    allowed = ("cap_address_space", "af_inet", "af_unix", "write_state", "write_runtime",
               "write_shm", "write_tmp", "serial_pty")
    assert {k: out[k] for k in denied} == denied, out
    assert {k: out[k] for k in allowed} == dict.fromkeys(allowed, "ok"), out
    # ProtectSystem=strict, ProtectKernelTunables=yes; the unit's own directories
    # and the shared memory stay writable.
    assert out["read_only"] == {
        "/usr": True, "/etc": True, "/etc/gatewayd": False, "/var": True, "/proc/sys": True,
        "/var/lib/gatewayd": False, "/run/gatewayd-probe": False, "/dev/shm": False,
        "/tmp": False, "/var/tmp": False}
    assert (out["NoNewPrivs"], out["Seccomp"]) == ("1", "2")
    assert int(out["CapEff"], 16) == 0 and int(out["CapBnd"], 16) == 0
    assert not out["host_tmp_seen"]  # PrivateTmp=yes
    assert not out["pid1_visible"]  # ProtectProc=invisible
    assert out["dialout"] and out["umask"] == "0o27"
    assert out["env"] == {"MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1"}
    assert out["blas"] == 64 * 64 and out["hull"] == 5
    want = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    assert out["utm"] == pytest.approx(list(want.transform(9.18, 48.78)), abs=1e-6)


def test_device_allow_by_device_group_opens_a_serial_family_to_the_daemon(bookworm, gps):
    """The kernel here has no USB serial driver, so /proc/devices lists no ttyUSB
    group; the same mechanism is shown with the ttyS group that it does list."""
    shown = bookworm.run("systemctl", "show", "-p", "DeviceAllow", "gatewayd").stdout
    # (ProtectClock=yes adds char-rtc r.)
    assert {"DeviceAllow=char-ttyUSB rw", "DeviceAllow=char-ttyACM rw",
            "DeviceAllow=char-ttyAMA rw"} <= set(shown.splitlines()), shown
    # The drivers behind ttyUSB and ttyACM are loaded before the unit starts (here
    # the container may load no modules, and modprobe@ skips itself).
    after = show(bookworm, "gatewayd", "After")["After"].split()
    assert {"modprobe@usbserial.service", "modprobe@cdc_acm.service"} <= set(after)
    out = _probe(bookworm, "DeviceAllow=char-ttyS rw")
    assert out["serial_ttyS"] != "EPERM", out  # EIO: allowed, but no UART behind it
    assert out["serial_pty"] == "ok"


def test_the_service_is_ready_once_its_workers_are_up_and_its_port_is_open(bookworm, gps):
    started = time.monotonic()
    bookworm.run("systemctl", "start", "gatewayd")  # returns once READY=1 has come
    took = time.monotonic() - started
    state = show(bookworm, "gatewayd", "ActiveState", "SubState", "StatusText", "MainPID",
                 "NRestarts", "Result")
    assert (state["ActiveState"], state["SubState"], state["NRestarts"]) == (
        "active", "running", "0"), state
    assert state["StatusText"].startswith("queue 0/500, chunk 128"), state
    running = json.loads(bookworm.run("cat", "/run/gatewayd/status.json").stdout)
    assert running["state"] == "running" and running["mqtt"] == "connected"
    assert running["sources"]["gps0"]["state"] == "open", running
    pool = workers(bookworm)
    assert len(pool) == 2
    notes = [m for _, m in notifications(bookworm)]
    assert any("READY=1" in m for m in notes), notes
    for pid in (int(state["MainPID"]), *pool):
        status = proc_status(bookworm, pid)
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert int(status["CapEff"], 16) == 0
        assert status["Uid"].split()[0] == bookworm.run("id", "-u", "gatewayd").stdout.strip()
    main = int(state["MainPID"])
    for ns in ("ipc", "mnt"):  # PrivateIPC=yes, and a mount namespace of its own
        assert bookworm.run("readlink", f"/proc/{main}/ns/{ns}").stdout != \
            bookworm.run("readlink", f"/proc/1/ns/{ns}").stdout
    assert took < 90


def test_mqtt_and_serial_input_come_out_processed(bookworm, gps, subscriber):
    publish(bookworm, "car", "gps", '{"class":"TPV","mode":2,"lat":48.7801,"lon":9.1801}')
    publish(bookworm, "field", "polygon", file=f"{INSTALLED_SAMPLES}/capture-sensors.geojson")
    publish(bookworm, "scanner", "lidar", file=f"{INSTALLED_SAMPLES}/capture-scan.las")
    gps.send(60)  # the receiver has its first position in the fourth cycle
    subscriber.wait_for(lambda: subscriber.records("/out/gps/car")
                        and subscriber.records("/out/polygon/field")
                        and subscriber.records("/out/lidar/scanner")
                        and any("lat" in r for r in subscriber.records("/out/gps/gps0")))
    utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    car = subscriber.records("/out/gps/car")[0]
    assert (car["x"], car["y"]) == pytest.approx(utm.transform(9.1801, 48.7801), abs=1e-3)
    assert car["crs"] == "EPSG:32632" and car["zones"] == ["depot-yard"]
    # The serial receiver's first position, and the capture's as pynmea2 reads it.
    fix = next(r for r in subscriber.records("/out/gps/gps0") if "lat" in r)
    rmc = next(m for m in (pynmea2.parse(line.decode()) for line in
                           (SAMPLES / "capture-drive.nmea").read_bytes().splitlines()
                           if line[3:6] == b"RMC") if m.status == "A")
    assert (fix["lat"], fix["lon"]) == pytest.approx((rmc.latitude, rmc.longitude), abs=1e-8)
    assert fix["crs"] == "EPSG:32632"
    assert (fix["x"], fix["y"]) == pytest.approx(utm.transform(fix["lon"], fix["lat"]), abs=1e-3)
    features = json.loads((SAMPLES / "capture-sensors.geojson").read_text())["features"]
    for polygon in subscriber.records("/out/polygon/field"):
        feature = next(f for f in features if str(f.get("id")) == polygon["feature_id"])
        assert polygon["valid"] == bool(shapely.is_valid(shapely.geometry.shape(
            feature["geometry"])))
    frame = subscriber.records("/out/lidar/scanner")[0]
    assert frame["points_in"] > 0 and 0 < frame["points_out"] <= frame["points_in"]


def test_a_worker_killed_with_sigkill_is_replaced_and_the_service_stays_up(
        bookworm, subscriber):
    before = workers(bookworm)
    main = show(bookworm, "gatewayd", "MainPID")["MainPID"]
    bookworm.run("kill", "-KILL", str(before[0]))
    after = wait_until(lambda: (w := workers(bookworm)) and len(w) == 2 and before[0] not in w
                       and w, 30, "a new worker")
    assert before[1] in after
    state = show(bookworm, "gatewayd", "ActiveState", "MainPID", "NRestarts")
    assert state == {"ActiveState": "active", "MainPID": main, "NRestarts": "0"}
    died = journal(bookworm, "-u", "gatewayd", "GATEWAYD_REASON=worker_died")
    assert [e["GATEWAYD_WORKER_PID"] for e in died] == [str(before[0])]
    assert "killed by SIGKILL" in died[0]["MESSAGE"]
    n = len(subscriber.records("/out/gps/car"))
    publish(bookworm, "car", "gps", '{"class":"TPV","mode":2,"lat":48.7802,"lon":9.1802}')
    subscriber.wait_for(lambda: len(subscriber.records("/out/gps/car")) > n)


def test_a_timed_out_chunk_is_found_in_the_journal_by_its_reason(bookworm, subscriber):
    pool = workers(bookworm)
    for pid in pool:
        bookworm.run("kill", "-STOP", str(pid))
    try:
        publish(bookworm, "stuck", "gps", '{"class":"TPV","mode":2,"lat":48.79,"lon":9.19}')
        subscriber.wait_for(lambda: subscriber.records("/dead/stuck"), timeout=60)
    finally:
        for pid in pool:
            bookworm.run("kill", "-CONT", str(pid), check=False)
    dead = subscriber.records("/dead/stuck")[0]
    assert dead["reason"] == "timeout"
    entries = journal(bookworm, "-u", "gatewayd", "GATEWAYD_REASON=timeout")
    chunk = [e for e in entries if "GATEWAYD_CHUNK" in e]
    items = [e for e in entries if e.get("GATEWAYD_SOURCE") == "stuck"]
    assert len(chunk) == 1 and int(chunk[0]["GATEWAYD_WORKER_PID"]) in pool
    assert chunk[0]["PRIORITY"] == "4" and chunk[0]["SYSLOG_IDENTIFIER"] == "gatewayd"
    assert chunk[0]["_TRANSPORT"] == "journal"  # the native protocol, not stderr lines
    assert len(items) == 1 and items[0]["GATEWAYD_ITEMS"].split(",") == dead["items"]
    wait_until(lambda: len(w := workers(bookworm)) == 2 and w, 30, "a replacement worker")


def test_reload_applies_the_new_configuration_and_status_shows(bookworm):
    main = show(bookworm, "gatewayd", "MainPID")["MainPID"]
    since = len(notifications(bookworm))
    write_config(bookworm, WEDGE_CONFIG)
    bookworm.run("systemctl", "reload", "gatewayd")
    wait_until(lambda: journal(bookworm, "-u", "gatewayd", "MESSAGE=configuration reloaded"),
               30, "the reload")
    notes = [m for _, m in notifications(bookworm)[since:]]
    reloading = next(i for i, m in enumerate(notes) if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in notes[reloading]
    assert any("READY=1" in m for m in notes[reloading:])
    state = show(bookworm, "gatewayd", "ActiveState", "MainPID", "StatusText")
    assert state["ActiveState"] == "active" and state["MainPID"] == main
    assert re.match(r"queue \d+/500, chunk \d+", state["StatusText"]), state
    shown = bookworm.run("systemctl", "status", "--no-pager", "gatewayd", check=False).stdout
    assert f"Status: \"{state['StatusText']}" in shown or "Status: \"queue" in shown
    person = bookworm.run("runuser", "-u", "gatewayd", "--", "gatewayd", "status").stdout
    assert f"on {HOSTNAME}: running" in person


def test_the_watchdog_restarts_the_service_when_the_pipeline_is_wedged(bookworm, subscriber):
    main = int(show(bookworm, "gatewayd", "MainPID")["MainPID"])
    pings = wait_until(lambda: (p := [t for t, m in notifications(bookworm) if "WATCHDOG=1" in m])
                       and len(p) >= 3 and p, 60, "watchdog pings")
    # At half of WatchdogSec=30s; never near the limit.
    assert max(b - a for a, b in itertools.pairwise(pings)) < 25_000_000
    # The reload replaced the workers; wedge the new ones once both are there.
    pool = wait_until(lambda: len(w := workers(bookworm)) == 2 and w, 30, "two workers")
    for pid in pool:
        bookworm.run("kill", "-STOP", str(pid))  # work waits, nothing progresses
    wedged = time.monotonic()
    publish(bookworm, "wedged", "gps", '{"class":"TPV","mode":2,"lat":48.78,"lon":9.18}')
    restarted = wait_until(lambda: show(bookworm, "gatewayd", "NRestarts")["NRestarts"] == "1"
                           and show(bookworm, "gatewayd", "ActiveState")["ActiveState"]
                           == "active", 120, "a restart by the watchdog")
    assert restarted
    took = time.monotonic() - wedged
    timeouts = [int(e["__MONOTONIC_TIMESTAMP"]) for e in
                journal(bookworm, "_PID=1", "UNIT=gatewayd.service")
                if "atchdog timeout" in str(e.get("MESSAGE"))]
    assert len(timeouts) == 1, "no watchdog timeout logged by systemd"
    # systemd acted WatchdogSec=30s after the last ping it had.
    last_ping = max(t for t, m in notifications(bookworm) if "WATCHDOG=1" in m
                    and t < timeouts[0])
    assert 29_000_000 < timeouts[0] - last_ping < 35_000_000
    withheld = journal(bookworm, "-u", "gatewayd", "LOGGER=gatewayd.notify")
    assert any("withholding watchdog pings" in e["MESSAGE"] for e in withheld)
    new_main = int(show(bookworm, "gatewayd", "MainPID")["MainPID"])
    assert new_main != main
    for pid in pool:  # gone with the old instance
        assert bookworm.run("kill", "-0", str(pid), check=False).returncode != 0
    # The input waited at the broker (QoS 1, persistent session) and comes out now.
    subscriber.wait_for(lambda: subscriber.records("/out/gps/wedged"), timeout=60)
    assert took < 120


def test_stop_drains_and_exits_cleanly(bookworm):
    main = show(bookworm, "gatewayd", "MainPID")["MainPID"]
    since = len(notifications(bookworm))
    started = time.monotonic()
    bookworm.run("systemctl", "stop", "gatewayd")
    took = time.monotonic() - started
    state = show(bookworm, "gatewayd", "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    notes = [m for _, m in notifications(bookworm)[since:]]
    assert any(f"PID {main} (STOPPING=1" in m for m in notes), notes
    manager = [str(e.get("MESSAGE")) for e in journal(bookworm, "_PID=1",
                                                       "UNIT=gatewayd.service")]
    exited = [m for m in manager if "Main process exited" in m]
    assert "code=exited, status=0/SUCCESS" in exited[-1], exited
    # Nothing was left for systemd to kill: the workers stopped in order.
    assert not [m for m in manager[manager.index(exited[-1]):] if "SIGKILL" in m]
    assert took < 20  # inside TimeoutStopSec
    retained = bookworm.run("mosquitto_sub", "-C", "1", "-W", "5", "-t", f"{PREFIX}/status")
    assert json.loads(retained.stdout)["state"] == "offline"


# ---- systemd 254 with the notify-reload drop-in ----


@pytest.fixture(scope="module")
def backports(wheels: Path) -> Iterator[Machine]:
    with Machine("backports", "gw254").boot() as machine:
        version = machine.run("systemctl", "--version").stdout
        assert int(version.split()[1]) >= 253, version
        _install(machine, wheels, drop_in=True)
        receiver = Gps(machine)
        try:
            yield machine
        finally:
            receiver.close()


def test_with_the_drop_in_reload_goes_through_reloading_monotonic_usec_and_ready(backports):
    machine = backports
    machine.run("systemctl", "start", "gatewayd")
    state = show(machine, "gatewayd", "Type", "ReloadSignal", "ExecReload", "ActiveState",
                 "MainPID")
    assert (state["Type"], state["ReloadSignal"]) == ("notify-reload", "1")  # SIGHUP
    assert state.get("ExecReload", "") == ""  # emptied by the drop-in: one SIGHUP, not two
    assert state["ActiveState"] == "active"
    main = state["MainPID"]

    for config, logged in ((WEDGE_CONFIG, "configuration reloaded"),
                           ({"queue_size = 500": "queue_size = -1"}, "reload refused")):
        since = len(notifications(machine))
        write_config(machine, config)
        # systemd sends SIGHUP itself and returns once the daemon said READY=1 again.
        machine.run("systemctl", "reload", "gatewayd", timeout=60)
        assert [e for e in journal(machine, "-u", "gatewayd") if logged in str(e.get("MESSAGE"))]
        notes = [m for _, m in notifications(machine)[since:]]
        reloading = next(i for i, m in enumerate(notes) if "RELOADING=1" in m)
        usec = re.search(r"MONOTONIC_USEC=(\d+)", notes[reloading])
        assert usec, notes[reloading]
        assert any("READY=1" in m for m in notes[reloading:])
        assert show(machine, "gatewayd", "ActiveState", "MainPID") == {
            "ActiveState": "active", "MainPID": main}
    # systemd signalled the daemon itself, then waited for its notifications.
    manager = " | ".join(str(e.get("MESSAGE")) for e in
                         journal(machine, "_PID=1", "UNIT=gatewayd.service"))
    assert manager.count("Changed running -> reload-signal") == 2, manager[-3000:]
    assert manager.count("Changed reload-notify -> running") == 2, manager[-3000:]

    sub = Subscriber(machine)
    try:
        publish(machine, "car", "gps", '{"class":"TPV","mode":2,"lat":48.7801,"lon":9.1801}')
        sub.wait_for(lambda: sub.records("/out/gps/car"))
    finally:
        sub.close()
    machine.run("systemctl", "stop", "gatewayd")
    assert show(machine, "gatewayd", "Result")["Result"] == "success"
