"""Bytes written to storage per accepted message, by the live daemon.

An SD card wears by the block, not by the byte: what matters is how much the
daemon makes the card write for each message it accepts. Each case runs a
real ``gatewayd run`` (real Mosquitto, real workers, a pty receiver) whose
state directory is the only thing on a small ext4 filesystem of its own (a
loop-mounted image, so nothing else on the machine writes there), and reads
the filesystem's own ``lifetime_write_kbytes`` before and after: data,
metadata and journal, after a ``syncfs``. The daemon's log goes to a pipe and
its runtime directory to /dev/shm, as under systemd (journald, /run).

Cases:

- ``mqtt``: GPS messages over MQTT, broker up: results go straight out.
- ``mqtt+audit``: the same with the lineage audit trail on.
- ``outbox``: a serial receiver while the broker is down: every result is
  spooled, then replayed once the broker is back.
- ``spill``: a serial receiver while the workers are stopped: fixes past the
  port's backlog spill to disk, then come back.

Peer: the same number of records, each appended and fsynced on its own to a
file on the same kind of filesystem (what a naive spool does), in the same
run. Lower is better, so the ratio printed is peer / gatewayd.

    sudo .venv/bin/python tests/bench/bench_disk.py [--count N]

Needs root (losetup and mount); without it, it says so and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import tpv_payload
from _report import machine
from broker import Broker
from receiver import cycle_sentences

UNIT_ENV = {"MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


# ---- a filesystem of its own ----

class Volume:
    """A loop-mounted ext4 image; ``written()`` is what it has written so far."""

    def __init__(self, work: Path, size_mb: int = 256) -> None:
        self.image = work / "state.img"
        self.mount = work / "state"
        self.mount.mkdir()
        with self.image.open("wb") as f:
            f.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)], check=True)
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.mount)],
                                check=True, capture_output=True, text=True).stdout.strip()
        self._stat = Path("/sys/fs/ext4") / Path(source).name / "lifetime_write_kbytes"

    def written(self) -> int:
        """Bytes written to the device so far, after flushing what is dirty."""
        subprocess.run(["sync", "-f", str(self.mount)], check=True)
        return int(self._stat.read_text()) * 1024

    def close(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=False)


# ---- the daemon and a subscriber ----

class Daemon:
    def __init__(self, broker: Broker, state: Path, run_dir: Path, gateway: str,
                 *settings: str) -> None:
        self.prefix = f"gatewayd/{gateway}"
        notify_path = run_dir / "notify"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notify.settimeout(0.2)
        args = [sys.executable, "-m", "gatewayd", "run",
                "--set", f"mqtt.host={broker.host}", "--set", f"mqtt.port={broker.port}",
                "--set", f"gateway.id={gateway}", "--set", f"gateway.state_dir={state}",
                "--set", f"daemon.runtime_dir={run_dir}",
                "--set", "mqtt.reconnect_min_s=0.2", "--set", "mqtt.reconnect_max_s=1"]
        for s in settings:
            args += ["--set", s]
        env = {**os.environ, **UNIT_ENV, "NOTIFY_SOCKET": str(notify_path)}
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=env, cwd=run_dir)
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.decode(errors="replace").rstrip())

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                if "READY=1" in self._notify.recv(4096).decode().split("\n"):
                    return
            if self.process.poll() is not None:
                break
        raise RuntimeError("the daemon did not get ready:\n" + "\n".join(self.log[-30:]))

    def workers(self) -> list[int]:
        """The worker processes: children of the forkserver."""
        out = []
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            for child in children.read_text().split():
                for grand in Path(f"/proc/{child}/task").glob("*/children"):
                    out += [int(p) for p in grand.read_text().split()]
        return out

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(10)
        self._reader.join(5)
        self._notify.close()
        return code


class Subscriber:
    """Counts distinct record ids under a topic filter, on a persistent session
    (so that what is published while it reconnects after a broker restart
    waits for it)."""

    def __init__(self, broker: Broker, topic: str, name: str) -> None:
        self.ids: set[str] = set()
        self.payload_bytes = 0
        self._lock = threading.Lock()
        c = self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name,
                                       protocol=paho.MQTTv311, clean_session=False)
        c.on_message = self._on_message
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
        c.reconnect_delay_set(0.1, 0.5)
        c.connect(broker.host, broker.port)
        c.loop_start()
        deadline = time.monotonic() + 10
        while not c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            record = json.loads(message.payload)
            if record["id"] not in self.ids:
                self.ids.add(record["id"])
                self.payload_bytes += len(message.payload)

    def wait(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.ids) >= count:
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Receiver:
    """A GPS receiver on a pseudo-terminal, one RMC+GGA cycle per write."""

    def __init__(self, link: Path) -> None:
        import pty
        import tty

        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.link = link
        os.symlink(os.ttyname(self.slave), link)

    def talk(self, count: int, hz: float) -> None:
        # One more cycle than counted: the last one counted ends when it begins.
        for i in range(count + 1):
            os.write(self.master, b"".join(cycle_sentences(i)))
            time.sleep(1 / hz)

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)
        self.link.unlink(missing_ok=True)


# ---- the cases ----

@contextlib.contextmanager
def _case(work: Path, volume: Volume, broker: Broker, name: str, *settings: str
          ) -> Iterator[tuple[Daemon, Subscriber, dict[str, Any]]]:
    state = volume.mount / name
    result: dict[str, Any] = {"case": name}
    sub = Subscriber(broker, f"gatewayd/{name}/out/#", f"bench-disk-{name}")
    before = volume.written()
    daemon = Daemon(broker, state, Path("/dev/shm") / f"gatewayd-bench-{os.getpid()}-{name}",
                    name, *settings)
    try:
        daemon.wait_ready()
        yield daemon, sub, result
    finally:
        code = daemon.stop()
        sub.close()
        result["bytes_written"] = volume.written() - before
        result["exit"] = code
        result["warnings"] = [ln for ln in daemon.log if "WARNING" in ln or "ERROR" in ln
                              or "Traceback" in ln][:5]


def case_mqtt(work: Path, volume: Volume, broker: Broker, count: int, audit: bool
              ) -> dict[str, Any]:
    name = "mqtt-audit" if audit else "mqtt"
    settings = ["audit.enabled=true"] if audit else []
    with _case(work, volume, broker, name, *settings) as (daemon, sub, result):
        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{name}",
                          protocol=paho.MQTTv311)
        pub.max_inflight_messages_set(100)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        for i in range(count):
            pub.publish(f"{daemon.prefix}/in/gps/van", tpv_payload(i), qos=1).wait_for_publish()
        pub.loop_stop()
        pub.disconnect()
        result["delivered"] = sub.wait(count, 120)
        result["records"] = len(sub.ids)
        result["record_bytes"] = sub.payload_bytes
    result["accepted"] = count
    return result


def case_outbox(work: Path, volume: Volume, broker: Broker, count: int) -> dict[str, Any]:
    link = work / "gps-outbox"
    receiver = Receiver(link)
    try:
        with _case(work, volume, broker, "outbox", f"serial.ports=gps0={link}@115200",
                   "outbox.publish_timeout_s=1") as (_daemon, sub, result):
            broker.stop()
            receiver.talk(count, 50.0)
            time.sleep(2)  # the last cycle ends, its record is spooled
            broker.start()
            result["delivered"] = sub.wait(count, 180)
            result["records"] = len(sub.ids)
            result["record_bytes"] = sub.payload_bytes
    finally:
        receiver.close()
    result["accepted"] = count
    return result


def case_spill(work: Path, volume: Volume, broker: Broker, count: int) -> dict[str, Any]:
    link = work / "gps-spill"
    receiver = Receiver(link)
    stopped: list[int] = []
    try:
        # Fixes in UTM need the workers; stopping them fills the queue.
        with _case(work, volume, broker, "spill", f"serial.ports=gps0={link}@115200",
                   "crs.target=EPSG:32632", "pipeline.queue_size=8", "serial.backlog=8",
                   "pipeline.chunk_timeout_s=600") as (daemon, sub, result):
            stopped = daemon.workers()
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            receiver.talk(count, 50.0)
            time.sleep(2)
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            stopped = []
            result["delivered"] = sub.wait(count, 180)
            result["records"] = len(sub.ids)
            result["record_bytes"] = sub.payload_bytes
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        receiver.close()
    result["accepted"] = count
    return result


def naive_peer(volume: Volume, count: int, record_bytes: int) -> int:
    """Bytes written for ``count`` records of ``record_bytes`` each, appended
    and fsynced one at a time."""
    path = volume.mount / "naive.jsonl"
    record = b"x" * max(1, record_bytes - 1) + b"\n"
    before = volume.written()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            os.write(fd, record)
            os.fsync(fd)
    finally:
        os.close(fd)
    written = volume.written() - before
    path.unlink()
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="messages a case")
    ap.add_argument("--cases", default="mqtt,mqtt-audit,outbox,spill")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_disk needs root: it mounts a filesystem of its own (losetup, mount)")
        sys.exit(2)
    cases = args.cases.split(",")
    print(f"machine: {machine()}; {args.count} messages a case", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-disk-") as tmp:
        work = Path(tmp)
        volume = Volume(work)
        try:
            with Broker(directory=work / "mosquitto", persistence=True) as broker:
                for name in cases:
                    print(f"# {name}", flush=True)
                    if name in ("mqtt", "mqtt-audit"):
                        r = case_mqtt(work, volume, broker, args.count, name == "mqtt-audit")
                    elif name == "outbox":
                        r = case_outbox(work, volume, broker, args.count)
                    elif name == "spill":
                        r = case_spill(work, volume, broker, args.count)
                    else:
                        raise SystemExit(f"unknown case {name}")
                    size = r["record_bytes"] // max(1, r["records"])
                    r["naive_bytes_written"] = naive_peer(volume, r["accepted"], size)
                    results.append(r)
        finally:
            volume.close()
    print(f"\n## bytes written to storage per accepted message  ({machine()})")
    print(f"{'case':12} {'accepted':>8} {'records':>8} {'B/record':>9} {'gatewayd B/msg':>15} "
          f"{'naive B/msg':>12} {'naive/ours':>10}")
    for r in results:
        ours = r["bytes_written"] / r["accepted"]
        peer = r["naive_bytes_written"] / r["accepted"]
        ratio = f"{peer / ours:9.1f}x" if ours else "       inf"
        print(f"{r['case']:12} {r['accepted']:>8} {r['records']:>8} "
              f"{r['record_bytes'] // max(1, r['records']):>9} {ours:>15,.1f} {peer:>12,.1f} "
              f"{ratio}")
        if not r["delivered"] or r["exit"] != 0 or r["warnings"]:
            print(f"  note: delivered all: {r['delivered']}, exit {r['exit']}, "
                  f"warnings: {r['warnings']}")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_disk.json").write_text(json.dumps({"machine": machine(),
                                                     "results": results}, indent=2))


if __name__ == "__main__":
    main()
