"""sd_notify messages to a datagram socket standing in for systemd, the
watchdog interval, the watchdog gate on a virtual clock and the STATUS line."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gatewayd.notify import (
    Notifier,
    WatchdogGate,
    child_environ,
    status_line,
    watchdog_interval,
)


class Manager:
    """The service manager's end of NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode("utf-8").splitlines()

    def nothing(self, wait: float = 0.2) -> bool:
        self.sock.settimeout(wait)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Manager, str]]:
    if request.param == "path":
        value = str(tmp_path / "notify.sock")
        m = Manager(value)
    else:
        name = f"gatewayd-test-{uuid.uuid4().hex}"
        value = "@" + name
        m = Manager("\0" + name)
    yield m, value
    m.close()


@pytest.fixture
def notifier(manager: tuple[Manager, str]) -> Iterator[Notifier]:
    n = Notifier({"NOTIFY_SOCKET": manager[1]})
    yield n
    n.close()


def test_ready_carries_the_status_in_the_same_datagram(manager, notifier):
    m, _ = manager
    assert notifier.enabled
    assert notifier.ready("queue 0/500")
    assert m.receive() == ["READY=1", "STATUS=queue 0/500"]
    assert notifier.ready()
    assert m.receive() == ["READY=1"]


def test_status_is_one_line_of_utf8(manager, notifier):
    m, _ = manager
    assert notifier.status("61.2°C\nin 42/s")
    assert m.receive() == ["STATUS=61.2°C in 42/s"]


def test_reloading_sends_the_monotonic_time_with_it(manager, notifier):
    m, _ = manager
    before = time.monotonic_ns() // 1000
    assert notifier.reloading("reloading zones")
    after = time.monotonic_ns() // 1000
    lines = m.receive()
    assert lines[0] == "RELOADING=1"
    assert "STATUS=reloading zones" in lines
    (usec,) = [int(line.split("=", 1)[1]) for line in lines if line.startswith("MONOTONIC_USEC=")]
    assert before - 2_000_000 <= usec <= after + 2_000_000


def test_stopping_and_watchdog(manager, notifier):
    m, _ = manager
    assert notifier.stopping("draining 3 chunks")
    assert m.receive() == ["STOPPING=1", "STATUS=draining 3 chunks"]
    assert notifier.watchdog()
    assert m.receive() == ["WATCHDOG=1"]


def test_a_forked_child_sends_nothing(manager, notifier):
    m, _ = manager
    assert notifier.status("parent")
    assert m.receive() == ["STATUS=parent"]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            sent = [notifier.watchdog(), notifier.status("child"), notifier.ready(),
                    notifier.enabled]
            code = 1 if any(sent) else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert m.nothing()
    assert notifier.watchdog()
    assert m.receive() == ["WATCHDOG=1"]


def test_without_notify_socket_everything_is_a_quiet_no_op(caplog):
    n = Notifier({})
    with caplog.at_level(logging.DEBUG, logger="gatewayd.notify"):
        assert not n.enabled
        assert not n.ready("x")
        assert not n.watchdog()
    assert caplog.records == []
    assert n.watchdog_interval is None


def test_unusable_address_disables_notifications_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="gatewayd.notify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert not n.ready()
    assert "vsock:2:1234" in caplog.text


def test_send_failure_is_logged_once_and_never_raises(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.DEBUG, logger="gatewayd.notify"):
        assert not n.watchdog()
        assert not n.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cannot notify systemd" in warnings[0].getMessage()


def test_manager_socket_recreated_is_reached_again(tmp_path):
    path = str(tmp_path / "notify.sock")
    m = Manager(path)
    n = Notifier({"NOTIFY_SOCKET": path})
    try:
        assert n.watchdog()
        assert m.receive() == ["WATCHDOG=1"]
        m.close()
        os.unlink(path)
        m = Manager(path)
        assert n.watchdog()
        assert m.receive() == ["WATCHDOG=1"]
    finally:
        n.close()
        m.close()


def test_child_environ_drops_the_notification_variables():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000",
           "WATCHDOG_PID": "1", "PATH": "/usr/bin", "MALLOC_ARENA_MAX": "2"}
    assert child_environ(env) == {"PATH": "/usr/bin", "MALLOC_ARENA_MAX": "2"}
    assert "NOTIFY_SOCKET" in env


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "77"}, pid=77) == 0.25
    assert Notifier({"WATCHDOG_USEC": "20000000"}).watchdog_interval == 10.0


@pytest.mark.parametrize("env", [
    {},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "soon"},
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},
    {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"},
])
def test_watchdog_is_off_when_unset_invalid_or_meant_for_another_pid(env):
    assert watchdog_interval(env) is None


def run_gate(gate: WatchdogGate, start: float, end: float, step: float,
             state: Callable[[float], tuple[bool, bool]]) -> list[float]:
    pings = []
    t = start
    while t <= end + 1e-9:
        progressed, idle = state(t)
        if gate.tick(t, progressed=progressed, idle=idle):
            pings.append(round(t, 6))
        t += step
    return pings


def test_gate_pings_at_the_cadence_while_work_progresses():
    gate = WatchdogGate(10.0)
    pings = run_gate(gate, 0, 60, 1.0, lambda t: (True, False))
    assert pings == [0, 10, 20, 30, 40, 50, 60]


def test_gate_pings_while_idle():
    gate = WatchdogGate(5.0)
    pings = run_gate(gate, 0, 100, 1.0, lambda t: (False, True))
    assert pings == [float(t) for t in range(0, 101, 5)]


def test_gate_keeps_pinging_through_a_slow_chunk_within_the_stall_limit():
    gate = WatchdogGate(10.0, stall_limit=45.0)
    # Work pending, progress only every 40 s (a slow chunk): never a stall.
    pings = run_gate(gate, 0, 200, 1.0, lambda t: (t % 40 == 0 and t > 0, False))
    assert pings == [float(t) for t in range(0, 201, 10)]
    assert gate.withheld is None


def test_gate_withholds_pings_when_work_stalls_and_resumes_after_progress(caplog):
    gate = WatchdogGate(10.0)  # stall limit: 30 s
    assert gate.stall_limit == 30.0
    with caplog.at_level(logging.INFO, logger="gatewayd.notify"):
        before = run_gate(gate, 0, 20, 1.0, lambda t: (True, False))
        stalled = run_gate(gate, 21, 120, 1.0, lambda t: (False, False))
        assert gate.withheld is not None
        assert "no progress" in gate.withheld
        after = run_gate(gate, 121, 140, 1.0, lambda t: (True, False))
    assert before == [0, 10, 20]
    # Last progress at 20 s: pings go on until 50 s, then stop.
    assert stalled == [30, 40, 50]
    assert after == [121, 131]
    assert gate.withheld is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "withholding watchdog pings" in warnings[0].getMessage()


def test_gate_grants_the_stall_limit_from_start_up():
    gate = WatchdogGate(2.0, stall_limit=5.0, now=100.0)
    assert run_gate(gate, 100, 110, 0.5, lambda t: (False, False)) == [100, 102, 104]
    assert gate.stalled_for(110) == 10.0


def test_gate_going_idle_ends_a_stall():
    gate = WatchdogGate(1.0, stall_limit=3.0)
    assert run_gate(gate, 0, 10, 0.5, lambda t: (False, False)) == [0, 1, 2, 3]
    assert gate.tick(10.5, progressed=False, idle=True)


def test_gate_rejects_nonsense():
    with pytest.raises(ValueError):
        WatchdogGate(0)
    with pytest.raises(ValueError):
        WatchdogGate(1.0, stall_limit=-1)


def test_status_line_reads_well_and_stays_short():
    line = status_line(queue_depth=12, queue_capacity=500, chunk_size=128, temperature_c=61.23,
                       in_rate=42.4, out_rate=39.6, down={"gps1": "unplugged"})
    assert line == "queue 12/500, chunk 128, 61.2°C, in 42/s, out 40/s, down: gps1 (unplugged)"
    assert status_line(queue_depth=0, queue_capacity=500) == "queue 0/500"
    assert status_line(queue_depth=0, queue_capacity=5, in_rate=0.3, down=["gps0"]) == \
        "queue 0/5, in 0.3/s, down: gps0"
    many = {f"serial-gps-receiver-{i}": "unplugged since boot" for i in range(20)}
    long = status_line(queue_depth=1, queue_capacity=2, down=many)
    assert len(long) < 200
    assert long.endswith(" more")
    assert "serial-gps-receiver-0 (unplugged since boot)" in long
