"""Fault injection with real components: a real Mosquitto stopped and started,
the daemon killed with SIGKILL and started again, workers killed and hung,
the wall clock jumping. Each scenario sends uniquely marked inputs and
accounts for every one of them at an independent subscriber, as a result or
a dead letter; duplicates must carry identical ids; the watchdog pings must
go on."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sysconfig
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from broker import Broker
from emulation import TIME_SCALE
from paho.mqtt.enums import CallbackAPIVersion
from test_daemon import GW, Daemon

pytestmark = pytest.mark.slow
OUT = Path(__file__).parent / "bench" / "out"
# Debian installs it under the multiarch triplet (x86_64-linux-gnu, aarch64-linux-gnu...).
FAKETIME = Path("/usr/lib", sysconfig.get_config_var("MULTIARCH") or "",
                "faketime/libfaketime.so.1")


class Publisher:
    """A QoS 1 publisher on a persistent session that rides out broker restarts."""

    def __init__(self, port: int) -> None:
        self.acked: set[int] = set()
        self._mids: dict[int, int] = {}
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fault-pub",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    # paho calls on_publish holding its own lock: never hold ours around a paho
    # call, and settle a PUBACK that comes before its mid is known afterwards.
    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._lock:
            if mid in self._mids:
                self.acked.add(self._mids.pop(mid))
            else:
                self._early.add(mid)

    def send(self, n: int) -> None:
        doc = {"class": "TPV", "mode": 2, "lat": 50.0 + n * 1e-5, "lon": 8.0}
        info = self.client.publish(f"gatewayd/{GW}/in/gps/truck", json.dumps(doc), qos=1)
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.acked.add(n)
            else:
                self._mids[info.mid] = n

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Collector:
    """Results and dead letters on a persistent session of its own."""

    def __init__(self, port: int) -> None:
        self.results: list[dict] = []
        self.dead: list[dict] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fault-sub",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"gatewayd/{GW}/out/#", 1), (f"gatewayd/{GW}/dead/#", 1)])
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        # A result published before the broker holds the subscription is never
        # delivered, so nothing may be sent before the SUBACK.
        if not subscribed.wait(10 * TIME_SCALE):
            raise AssertionError("the broker did not acknowledge the subscription")

    def _on_message(self, client, userdata, message) -> None:
        record = json.loads(message.payload)
        with self._lock:
            (self.dead if record["kind"] == "dead_letter" else self.results).append(record)

    def marks(self) -> set[int]:
        with self._lock:
            return {round((r["lat"] - 50.0) / 1e-5) for r in self.results}

    def accounted(self) -> set[str]:
        with self._lock:
            return {r["id"] for r in self.results} | {i for d in self.dead for i in d["items"]}

    def wait(self, predicate, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout * TIME_SCALE
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        missing = sorted(set(range(max(self.marks() | {0}) + 1)) - self.marks())
        raise AssertionError(f"{len(self.results)} results, {len(self.dead)} dead letters; "
                             f"marks missing below the highest: {missing[:20]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _stream(pub: Publisher, count: int, rate_hz: float, faults) -> None:
    """Sends ``count`` inputs at ``rate_hz``, calling each fault at its index."""
    for n in range(count):
        if n in faults:
            faults[n]()
        pub.send(n)
        time.sleep(1 / rate_hz)


def _daemon(tmp: Path, port: int, *settings: str, env: dict | None = None) -> Daemon:
    tmp.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(tmp, port, "pipeline.chunk_timeout_s=2", *settings,
                    env={"WATCHDOG_USEC": "2000000", **(env or {})})
    daemon.wait_note("READY=1")
    return daemon


def _pings(daemon: Daemon) -> list[float]:
    return [t for t, n in daemon.collect(3.0) if "WATCHDOG=1" in n]


@pytest.fixture(scope="module")
def ledger(request):
    """Per scenario: inputs sent, faults injected, lost, duplicates; printed at
    the end of the module and saved for the README."""
    rows: dict[str, dict] = {}
    yield rows
    if not rows:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "faults.json").write_text(json.dumps(rows, indent=2) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(f"{'fault scenario':<28}{'sent':>6}{'faults':>8}{'lost':>6}"
                            f"{'dead':>6}{'duplicates':>12}  ids of duplicates")
        for name, r in rows.items():
            reporter.write_line(f"{name:<28}{r['sent']:>6}{r['faults']:>8}{r['lost']:>6}"
                                f"{r['dead_lettered']:>6}{r['duplicates']:>12}  "
                                f"{'identical' if r['identical_ids'] else 'DIFFER'}")


def _record(ledger: dict, name: str, sent: int, faults: int, sub: Collector) -> None:
    with sub._lock:
        results, dead = list(sub.results), list(sub.dead)
    dead_items = {i for d in dead for i in d["items"]}
    lost = sent - len({r["id"] for r in results} | dead_items)
    duplicates, identical = _duplicates(results)
    ledger[name] = {"sent": sent, "faults": faults, "lost": lost,
                    "dead_lettered": len(dead_items),
                    "duplicates": duplicates, "identical_ids": identical}
    assert lost == 0


def _duplicates(results: list[dict], key: Callable[[dict], Any] = lambda r: r["lat"]
                ) -> tuple[int, bool]:
    """Results that came more than once (the same ``key``: by default the
    latitude that marks each input), and whether each came with one id."""
    ids: dict[Any, set[str]] = {}
    for r in results:
        ids.setdefault(key(r), set()).add(r["id"])
    return len(results) - len(ids), all(len(v) == 1 for v in ids.values())


def _content(fix: dict) -> str:
    """A fix by its content. The receiver's time alone would not do: before
    gpsd-style assembly has learned which sentence ends a cycle, the first
    cycle is reported twice, after RMC and after GGA, as two records."""
    return json.dumps({k: v for k, v in fix.items()
                       if k not in ("id", "received_at", "processed_at", "lineage")},
                      sort_keys=True)


def _same_id_for_each_duplicate(results: list[dict]) -> None:
    assert _duplicates(results)[1]


def test_the_broker_stopped_and_restarted_mid_stream_loses_nothing(tmp_path, ledger):
    broker = Broker(directory=tmp_path / "mq", persistence=True).start()
    daemon = pub = sub = None
    try:
        sub = Collector(broker.port)
        daemon = _daemon(tmp_path, broker.port)
        pub = Publisher(broker.port)

        def bounce() -> None:
            broker.stop()
            time.sleep(1.0)
            broker.start()

        _stream(pub, 300, 100, {75: bounce, 150: bounce, 225: bounce})
        sub.wait(lambda: pub.acked <= sub.marks() and len(pub.acked) == 300)
        assert sub.marks() == set(range(300)) and not sub.dead
        _same_id_for_each_duplicate(sub.results)
        _record(ledger, "broker restarted x3", 300, 3, sub)
        assert len(_pings(daemon)) >= 2  # still alive, still progressing
        assert daemon.process.poll() is None
    finally:
        for part in (pub, sub):
            if part:
                part.close()
        if daemon:
            assert daemon.stop() == 0, daemon.output()
        broker.close()


def test_the_daemon_killed_with_sigkill_and_restarted_loses_no_input(tmp_path, ledger):
    broker = Broker(directory=tmp_path / "mq", persistence=True).start()
    rng = random.Random(7)
    runs: list[Daemon] = []
    pub = sub = None
    try:
        sub = Collector(broker.port)
        runs.append(_daemon(tmp_path / "0", broker.port))
        pub = Publisher(broker.port)

        def kill_and_restart() -> None:
            runs[-1].process.send_signal(signal.SIGKILL)
            runs[-1].process.wait(10)
            time.sleep(rng.uniform(0, 0.5))
            path = tmp_path / str(len(runs))
            runs.append(_daemon(path, broker.port))

        kills = sorted(rng.sample(range(20, 380), 3))
        _stream(pub, 400, 80, dict.fromkeys(kills, kill_and_restart))
        sub.wait(lambda: len(pub.acked) == 400 and sub.marks() >= set(range(400)))
        assert sub.marks() == set(range(400))
        _same_id_for_each_duplicate(sub.results)  # redelivered input, same record id
        _record(ledger, "daemon SIGKILLed x3", 400, 3, sub)
        assert len(_pings(runs[-1])) >= 2
    finally:
        for part in (pub, sub):
            if part:
                part.close()
        for daemon in runs[:-1]:
            daemon.notify.close()
            daemon.log.close()
        if runs:
            assert runs[-1].stop() == 0, runs[-1].output()
        broker.close()


def _workers(daemon: Daemon) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "multiprocessing"], capture_output=True, text=True)
    pids = []
    for pid in map(int, out.stdout.split()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().split()
        except OSError:
            continue
        parent = int(stat[3])
        grand = Path(f"/proc/{parent}/stat").read_text().split()[3] \
            if Path(f"/proc/{parent}/stat").exists() else "0"
        if int(grand) == daemon.process.pid:
            pids.append(pid)
    return pids


def test_workers_killed_and_hung_cost_only_their_own_chunks(mosquitto, tmp_path, ledger):
    # Fixes go to the workers to leave lon/lat (in lon/lat, with no zones, they need none).
    daemon = _daemon(tmp_path, mosquitto.port, "crs.target=EPSG:32632")
    pub = Publisher(mosquitto.port)
    sub = Collector(mosquitto.port)
    hung: list[int] = []
    try:
        def kill_one() -> None:
            victims = _workers(daemon)
            assert victims, "no worker found"
            os.kill(victims[0], signal.SIGKILL)

        def hang_one() -> None:
            victims = _workers(daemon)
            assert victims, "no worker found"
            os.kill(victims[-1], signal.SIGSTOP)
            hung.append(victims[-1])

        _stream(pub, 300, 100, {60: kill_one, 150: hang_one, 220: kill_one})
        sub.wait(lambda: len(sub.accounted()) >= 300)
        # Every input once: a result or a dead letter (at least once: a record
        # published twice, after a publish timeout say, carries the same id).
        assert len(sub.accounted()) == 300, sorted(set(range(300)) - sub.marks())[:20]
        assert sub.marks() <= set(range(300))
        reasons = {d["reason"] for d in sub.dead}
        assert "timeout" in reasons and reasons <= {"timeout", "worker_died"}, reasons
        dead_items = {i for d in sub.dead for i in d["items"]}
        assert len(sub.marks()) == 300 - len(dead_items), (len(sub.marks()), len(dead_items))
        _same_id_for_each_duplicate(sub.results)
        _record(ledger, "workers killed x2, hung x1", 300, 3, sub)
        assert len(_pings(daemon)) >= 2
    finally:
        for pid in hung:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pub.close()
        sub.close()
        assert daemon.stop() == 0, daemon.output()


def test_a_worker_over_its_memory_cap_costs_only_its_own_input(mosquitto, tmp_path, ledger):
    from emulation import NOT_ENFORCED, cap_enforced
    from test_daemon import _pcd, _publish

    if not cap_enforced():
        pytest.skip(NOT_ENFORCED)
    # A cap a little above what a worker maps at rest (about 136 MB here).
    daemon = _daemon(tmp_path, mosquitto.port, "pipeline.worker_memory_mb=160",
                     "pipeline.max_payload_bytes=100000000", "crs.source=EPSG:32632")
    pub = Publisher(mosquitto.port)
    sub = Collector(mosquitto.port)
    seeds = iter(range(2))
    try:
        def greedy_frame() -> None:
            rng = np.random.default_rng(next(seeds))
            n = 1_500_000  # 36 MB of points: more than the cap leaves a worker to map
            frame = np.column_stack([513_000 + rng.uniform(0, 50, n),
                                     5_403_000 + rng.uniform(0, 50, n), rng.normal(245, 1, n)])
            _publish(mosquitto.port, f"gatewayd/{GW}/in/lidar/mast", _pcd(frame))

        _stream(pub, 300, 100, {100: greedy_frame, 200: greedy_frame})
        try:
            sub.wait(lambda: sub.marks() >= set(range(300)) and len(sub.dead) >= 2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; published, not acknowledged by the broker: "
                                 f"{sorted(set(range(300)) - pub.acked)[:20]}\n"
                                 f"{daemon.output()[-4000:]}") from None
        assert sub.marks() == set(range(300))  # every fix, none dead-lettered
        assert [d["reason"] for d in sub.dead] == ["memory", "memory"]
        assert {d["source"] for d in sub.dead} == {"mast"}
        _same_id_for_each_duplicate(sub.results)
        _record(ledger, "frames over the memory cap x2", 302, 2, sub)
        assert len(_pings(daemon)) >= 2 and daemon.process.poll() is None
    finally:
        pub.close()
        sub.close()
        assert daemon.stop() == 0, daemon.output()


@pytest.mark.skipif(not FAKETIME.exists() or not shutil.which("faketime"),
                    reason="libfaketime is not installed (Debian package faketime)")
def test_the_wall_clock_jumping_back_and_forth_disturbs_nothing(mosquitto, tmp_path, ledger):
    offset = tmp_path / "clock"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": str(FAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset),
           "FAKETIME_NO_CACHE": "1", "DONT_FAKE_MONOTONIC": "1"}
    daemon = _daemon(tmp_path, mosquitto.port, env=env)
    pub = Publisher(mosquitto.port)
    sub = Collector(mosquitto.port)
    jumps = itertools.cycle(["-3600", "+86400", "-172800", "+0"])
    try:
        _stream(pub, 200, 50, {n: (lambda: offset.write_text(next(jumps) + "\n"))
                               for n in (40, 80, 120, 160)})
        sub.wait(lambda: sub.marks() >= set(range(200)))
        assert sub.marks() == set(range(200)) and not sub.dead
        _record(ledger, "wall clock jumped x4", 200, 4, sub)
        pings = _pings(daemon)
        assert len(pings) >= 2 and max(b - a for a, b in itertools.pairwise(pings)) < 2.0
    finally:
        pub.close()
        sub.close()
        assert daemon.stop() == 0, daemon.output()


def test_a_serial_receiver_unplugged_and_replugged_loses_no_fix_it_sent(
        mosquitto, tmp_path, ledger):
    from test_daemon import Pty, Subscriber

    link = tmp_path / "gps0"
    gps = Pty(link)
    sub = Subscriber(mosquitto.port)
    daemon = _daemon(tmp_path, mosquitto.port, f"serial.ports=gps0={link}@115200",
                     "daemon.status_interval_s=0.5")
    written = []
    try:
        for round_ in range(3):
            gps.talk(range(round_ * 1000, round_ * 1000 + 20))
            written += gps.written
            gps.written = []
            time.sleep(0.5)  # the last cycle ends by going quiet
            gps.close()  # unplugged: the device node goes away
            link.unlink()
            time.sleep(1.0)
            gps = Pty(link)  # plugged in again, under the same name
            # The daemon has it open once the line speed it sets shows on the pty
            # (what a receiver sends before that is lost on the wire, as in life).
            deadline = time.monotonic() + 20
            while termios.tcgetattr(gps.slave)[4] != termios.B115200:
                assert time.monotonic() < deadline, "the daemon did not reopen the port"
                time.sleep(0.05)
        fixes = lambda: [r for r in sub.records() if r["source"] == "gps0"]  # noqa: E731
        sent = [s for s in written if b"RMC" in s]
        sub.wait_for(lambda: len(fixes()) >= len(sent), timeout=30)
        states = {json.loads(p)["sources"]["gps0"]["state"]
                  for t, p, _ in sub.messages if t.endswith("/status")
                  and "gps0" in json.loads(p).get("sources", {})}
        assert {"open", "waiting"} <= states
        times = sorted({f["time"] for f in fixes()})
        assert len(times) == len(sent) == 60
        duplicates, identical = _duplicates(fixes(), _content)
        ledger["serial unplugged x3"] = {
            "sent": len(sent), "faults": 3, "lost": len(sent) - len(times),
            "dead_lettered": 0, "duplicates": duplicates, "identical_ids": identical}
        assert identical
        assert len(_pings(daemon)) >= 2
    finally:
        gps.close()
        sub.close()
        assert daemon.stop() == 0, daemon.output()


def _account_fixes(ledger: dict, scenario: str, sub: Collector, *, sent: int,
                   faults: int) -> None:
    """Checks that the results of ``sent`` receiver cycles came, each cycle's
    in order and with one id, and enters the scenario in the ledger."""
    times = [r["time"] for r in sub.results]
    assert len(set(times)) == sent and times == sorted(times)  # in order
    duplicates, identical = _duplicates(list(sub.results), _content)
    ledger[scenario] = {"sent": sent, "faults": faults, "lost": sent - len(set(times)),
                        "dead_lettered": 0, "duplicates": duplicates,
                        "identical_ids": identical}
    assert identical


def test_results_made_while_the_broker_is_away_are_spooled_and_sent_after(tmp_path, ledger):
    from test_daemon import Pty

    broker = Broker(directory=tmp_path / "mq").start()  # no persistence: nothing kept there
    link = tmp_path / "gps0"
    gps = Pty(link)
    outbox = tmp_path / "state" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "000000000007.seg").write_bytes(b"\x8aOBX" + bytes(range(256)) * 3)  # corrupt
    daemon = _daemon(tmp_path, broker.port, f"serial.ports=gps0={link}@115200",
                     "outbox.publish_timeout_s=0.5")
    sub = None
    try:
        broker.stop()
        gps.talk(range(40))
        time.sleep(1.5)  # the last cycle ends, its publish times out: all spooled
        status = json.loads((tmp_path / "run" / "status.json").read_text())
        assert daemon.process.poll() is None
        broker.start()
        sub = Collector(broker.port)
        sub.wait(lambda: len({r["time"] for r in sub.results}) >= 40)
        _account_fixes(ledger, "broker away, results spooled", sub, sent=40, faults=1)
        final = json.loads((tmp_path / "run" / "status.json").read_text())
        assert status["outbox"]["pending"] >= 1  # they waited on disk
        damaged = final["outbox"]["corrupt_skipped"] + final["outbox"]["torn_tails"]
        assert damaged >= 1  # the corrupt segment found at start was counted, not fatal
    finally:
        gps.close()
        if sub:
            sub.close()
        assert daemon.stop() == 0, daemon.output()
        broker.close()


def test_serial_results_the_broker_has_not_acknowledged_at_a_stop_go_out_after_the_next_start(
        tmp_path, ledger):
    # MQTT inputs whose results are not acknowledged by the end of a stop stay
    # at the broker; a serial port's fixes have nowhere else to be. Here the
    # broker hangs (SIGSTOP) while the fixes are published, the daemon stops,
    # and the broker then dies with what it had not read.
    from test_daemon import Pty

    broker = Broker(directory=tmp_path / "mq").start()  # no persistence: nothing kept there
    link = tmp_path / "gps0"
    gps = Pty(link)
    settings = (f"serial.ports=gps0={link}@115200", "daemon.grace_s=1")
    daemon = _daemon(tmp_path, broker.port, *settings)
    sub = None
    try:
        time.sleep(0.5)  # the port is open
        os.kill(broker.pid, signal.SIGSTOP)
        gps.talk(range(30))
        time.sleep(1.0)  # decoded and published, to a broker that reads nothing
        assert daemon.stop() == 0, daemon.output()
        os.kill(broker.pid, signal.SIGKILL)
        broker.stop()
        broker.start()
        sub = Collector(broker.port)
        daemon = _daemon(tmp_path, broker.port, *settings)
        sub.wait(lambda: len({r["time"] for r in sub.results}) >= 30, timeout=30)
        _account_fixes(ledger, "broker hung at a stop, serial results spooled", sub, sent=30,
                       faults=2)
    finally:
        gps.close()
        if sub:
            sub.close()
        assert daemon.stop() == 0, daemon.output()
        broker.close()


def test_a_full_spool_disk_loses_no_acknowledged_input(tmp_path, ledger):
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(state)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    broker = Broker(directory=tmp_path / "mq", persistence=True).start()
    daemon = pub = sub = None
    try:
        sub = Collector(broker.port)
        daemon = _daemon(tmp_path, broker.port, "outbox.publish_timeout_s=0.3")
        pub = Publisher(broker.port)

        def bounce() -> None:
            broker.stop()
            time.sleep(1.5)  # results in flight time out; the spool fills its disk
            broker.start()

        _stream(pub, 300, 100, {100: bounce, 200: bounce})
        sub.wait(lambda: sub.marks() >= set(range(300)) and len(pub.acked) == 300)
        assert sub.marks() == set(range(300)) and not sub.dead
        _same_id_for_each_duplicate(sub.results)
        _record(ledger, "spool disk full, broker away x2", 300, 2, sub)
        assert daemon.process.poll() is None and len(_pings(daemon)) >= 2
    finally:
        for part in (pub, sub):
            if part:
                part.close()
        if daemon:
            code = daemon.stop()
        broker.close()
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
    assert code == 0
