"""The serial source against a fake receiver on a pty, on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import serial
from receiver import Chunk, FakeReceiver

from gatewayd.errors import ConfigError
from gatewayd.nmea import NmeaDecoder
from gatewayd.serialport import (
    PortSettings,
    PortStatus,
    SerialPort,
    _backoff_s,
    _open_failure,
)

Run = Callable[[Coroutine[Any, Any, None]], None]
QUICK = {"reopen_min_s": 0.05, "reopen_max_s": 0.3, "watch_s": 0.05}

try:
    import uvloop
except ImportError:  # no armv7 wheels: the daemon runs on plain asyncio there
    uvloop = None

LOOPS = [
    pytest.param(None, id="asyncio"),
    pytest.param(getattr(uvloop, "new_event_loop", None), id="uvloop", marks=pytest.mark.skipif(
        uvloop is None, reason="uvloop is not installed (it has no wheel for armv7)")),
]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run:
    def run_on_loop(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=request.param) as runner:
            runner.run(coro)

    return run_on_loop


class Owner:
    """What a port's owner sees: the bytes, and each state change."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.states: list[PortStatus] = []
        self.names: set[str] = set()

    def on_data(self, name: str, data: bytes) -> None:
        self.names.add(name)
        self.data += data

    def on_state(self, status: PortStatus) -> None:
        self.states.append(status)

    def seen(self, state: str) -> list[str]:
        return [s.reason for s in self.states if s.state == state]


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout} s")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(port: SerialPort) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(port.run(), name="serial-port")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


def settings(receiver_or_path: FakeReceiver | Path, **overrides: Any) -> PortSettings:
    path = receiver_or_path.path if isinstance(receiver_or_path, FakeReceiver) else receiver_or_path
    return PortSettings(**{"name": "gps0", "device": str(path), **QUICK, **overrides})


async def talk(receiver: FakeReceiver, owner: Owner, limit: int, since: int = 0) -> bytes:
    """Has the receiver send ``limit`` bytes; returns all it wrote from chunk ``since``,
    once the owner has as many bytes."""
    base = len(owner.data)
    receiver.start(limit=limit)
    await wait_for(lambda: receiver.done, timeout=limit / (receiver.rate / 10) + 10)
    written = receiver.written(since)
    await wait_for(lambda: len(owner.data) - base >= len(written))
    return written


def descriptors_on(path: str) -> int:
    count = 0
    for entry in os.scandir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(entry.path) == path
    return count


# ---- reading ----


def test_every_sentence_arrives_in_order_byte_exact(tmp_path: Path, run: Run) -> None:
    async def scenario() -> None:
        with FakeReceiver(tmp_path / "gps0", rate=230400) as receiver:
            owner = Owner()
            port = SerialPort(settings(receiver, baud=230400), owner.on_data, owner.on_state)
            async with running(port):
                await wait_for(lambda: port.status.state == "open")
                written = await talk(receiver, owner, 30_000)
            assert receiver.overrun == 0
            assert bytes(owner.data) == written
            assert owner.names == {"gps0"}
            assert port.status.bytes_read == len(written)
            decoder = NmeaDecoder()
            decoder.feed(bytes(owner.data))
            stats = decoder.stats()
            assert stats.sentences == receiver.sentences > 300
            assert stats.bad_checksum == stats.garbage_bytes == 0

    run(scenario())


def test_a_921600_baud_stream_is_read_in_full_without_overrun(tmp_path: Path, run: Run) -> None:
    async def scenario() -> None:
        with FakeReceiver(tmp_path / "gps0", rate=921600) as receiver:
            owner = Owner()
            port = SerialPort(settings(receiver, baud=921600), owner.on_data)
            async with running(port):
                await wait_for(lambda: port.status.state == "open")
                written = await talk(receiver, owner, 300_000)
            # The receiver drops what neither the pty nor its 64 KiB driver buffer
            # can hold, as a UART overruns: a reader that falls behind loses data.
            assert receiver.overrun == 0, f"peak backlog {receiver.peak_backlog} B"
            assert len(written) >= 300_000
            assert bytes(owner.data) == written

    run(scenario())


def test_a_failing_data_handler_is_logged_once_and_reading_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocks = []

    def on_data(name: str, data: bytes) -> None:
        blocks.append(data)
        raise RuntimeError("handler bug")

    async def scenario() -> None:
        with FakeReceiver(tmp_path / "gps0", rate=115200) as receiver:
            port = SerialPort(settings(receiver, baud=115200), on_data)
            async with running(port):
                await wait_for(lambda: port.status.state == "open")
                receiver.start(limit=5000)
                await wait_for(lambda: receiver.done)
                await wait_for(lambda: port.status.bytes_read == len(receiver.written()))
                assert port.status.state == "open"

    with caplog.at_level(logging.ERROR, logger="gatewayd.serialport"):
        asyncio.run(scenario())
    assert len(blocks) > 1
    assert [r.message for r in caplog.records].count(
        "serial port gps0: the data handler failed; later failures until the next open "
        "are not logged") == 1


# ---- unplug, replug, missing and busy devices ----


def test_unplug_then_replug_through_the_same_symlink_reopens_and_reads_on(
        tmp_path: Path, run: Run) -> None:
    async def scenario() -> None:
        with FakeReceiver(tmp_path / "gps0", rate=115200) as receiver:
            owner = Owner()
            port = SerialPort(settings(receiver, baud=115200), owner.on_data, owner.on_state)
            async with running(port):
                await wait_for(lambda: port.status.state == "open")
                await talk(receiver, owner, 3000)
                first_tty = receiver.tty
                receiver.unplug()
                await wait_for(lambda: port.status.state == "waiting")
                await wait_for(lambda: port.status.reason.startswith("device not found"))
                assert port.status.reopens == 0
                assert descriptors_on(first_tty) == 0

                receiver.replug()
                await wait_for(lambda: port.status.state == "open")
                assert port.status.reopens == 1
                before = len(owner.data)
                written = await talk(receiver, owner, 10_000, since=receiver.mark())
                assert bytes(owner.data[before:]) == written
            # The hang-up and the watch's look at the device node race each
            # other; either tells of the unplug.
            unplugged, gone = owner.seen("waiting")[:2]
            assert unplugged in ("unplugged", "unplugged (device node gone or replaced)")
            assert gone == f"device not found: {tmp_path / 'gps0'}"
            assert [s.state for s in owner.states].count("open") == 2

    run(scenario())


def test_a_missing_device_waits_and_opens_as_soon_as_it_appears(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "gps0"
        owner = Owner()
        port = SerialPort(settings(path, baud=115200), owner.on_data, owner.on_state)
        async with running(port):
            await wait_for(lambda: port.status.state == "waiting")
            assert port.status.reason == f"device not found: {path}"
            assert port.status.baud is None
            await asyncio.sleep(0.3)  # several retries
            with FakeReceiver(path, rate=115200) as receiver:
                appeared = time.monotonic()
                await wait_for(lambda: port.status.state == "open")
                # Generous: the pause between retries is capped at reopen_max_s.
                assert time.monotonic() - appeared < 5
                assert port.status.reopens == 0
                written = await talk(receiver, owner, 5000)
                assert bytes(owner.data) == written
        assert [s.state for s in owner.states] == ["opening", "waiting", "open"]

    asyncio.run(scenario())


def test_repeated_failures_warn_once_per_state_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        port = SerialPort(settings(tmp_path / "gps0", reopen_min_s=0.01, reopen_max_s=0.02),
                          lambda name, data: None)
        async with running(port):
            await asyncio.sleep(0.4)  # tens of retries

    with caplog.at_level(logging.DEBUG, logger="gatewayd.serialport"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.message for r in warnings] == [
        f"serial port gps0: waiting: device not found: {tmp_path / 'gps0'}"]


def test_a_device_node_replaced_under_its_name_is_reopened(tmp_path: Path) -> None:
    async def scenario() -> None:
        owner = Owner()
        with FakeReceiver(tmp_path / "gps0", rate=115200) as first:
            port = SerialPort(settings(first, baud=115200), owner.on_data, owner.on_state)
            async with running(port):
                await wait_for(lambda: port.status.state == "open")
                # Another receiver takes over the by-id name; the first stays alive.
                with FakeReceiver(tmp_path / "gps0", rate=115200, seed=2) as second:
                    await wait_for(lambda: port.status.reopens == 1)
                    assert descriptors_on(first.tty) == 1  # the fake's own end only
                    before = len(owner.data)
                    written = await talk(second, owner, 5000)
                    assert bytes(owner.data[before:]) == written
        assert "unplugged (device node gone or replaced)" in owner.seen("waiting")

    asyncio.run(scenario())


def test_a_busy_device_is_an_error_retried_until_it_is_free(tmp_path: Path) -> None:
    async def scenario() -> None:
        with FakeReceiver(tmp_path / "gps0", rate=115200) as receiver:
            holder = os.open(receiver.tty, os.O_RDWR | os.O_NOCTTY)
            fcntl.flock(holder, fcntl.LOCK_EX)  # as another reader (gpsd) would
            try:
                port = SerialPort(settings(receiver, baud=115200), lambda name, data: None)
                async with running(port):
                    await wait_for(lambda: port.status.state == "error")
                    assert port.status.reason == (
                        f"device busy: {receiver.path} is in use by another process")
                    os.close(holder)
                    holder = -1
                    await wait_for(lambda: port.status.state == "open")
            finally:
                if holder >= 0:
                    os.close(holder)

    asyncio.run(scenario())


def test_permission_denied_is_an_error_state() -> None:
    # Root opens any node, so the suite cannot provoke this on a pty; this is
    # the exception pyserial raises when open(2) says EACCES.
    exc = serial.SerialException(errno.EACCES, "could not open port /dev/ttyUSB0: "
                                 "[Errno 13] Permission denied: '/dev/ttyUSB0'")
    assert _open_failure(exc, "/dev/ttyUSB0") == ("error", "permission denied: /dev/ttyUSB0")
    missing = serial.SerialException(errno.ENOENT, "could not open port")
    assert _open_failure(missing, "/dev/ttyUSB0") == (
        "waiting", "device not found: /dev/ttyUSB0")


# ---- autobaud ----


def _delivered_from(chunks: list[Chunk], data: bytes) -> int:
    """The index of the first chunk in ``data``, which must be the tail of the
    receiver's output, starting at a chunk boundary or inside the first chunk."""
    total = 0
    for index in range(len(chunks) - 1, -1, -1):
        total += len(chunks[index].data)
        if total >= len(data):
            tail = b"".join(c.data for c in chunks[index:])
            assert tail.endswith(data)
            return index
    raise AssertionError("more bytes were delivered than the receiver wrote")


def test_autobaud_locks_onto_the_receivers_rate_and_drops_wrong_rate_bytes(
        tmp_path: Path, run: Run) -> None:
    async def scenario() -> None:
        with FakeReceiver(tmp_path / "gps0", rate=38400) as receiver:
            owner = Owner()
            port = SerialPort(settings(receiver, autobaud_window_s=0.3), owner.on_data,
                              owner.on_state)
            receiver.start()  # a receiver talks whether anyone listens or not
            # Its talker is a process of its own, which takes seconds to start
            # under emulation: the autobaud cycle must meet it talking.
            await wait_for(lambda: bool(receiver.chunks), timeout=60)
            async with running(port):
                await wait_for(lambda: port.status.state == "open")
                assert port.status.baud == 38400 == receiver.speed()
                await asyncio.sleep(0.3)
                receiver.stop()
                chunks = list(receiver.chunks)
                await wait_for(lambda: bytes(owner.data).endswith(chunks[-1].data))
                await asyncio.sleep(0.05)
            assert [s.state for s in owner.states] == ["opening", "autobaud", "open"]
            # The cycle tried the slower rates first and found garbage there.
            assert any(not c.valid and c.sure for c in chunks)
            # What the owner got is the receiver's output from one write on, all of it
            # written at the locked rate; only the first write may straddle the rate
            # switch (a pty applies the speed and the flush as two calls).
            first = _delivered_from(chunks, bytes(owner.data))
            assert all(c.valid and c.sure for c in chunks[first + 1:])
            assert chunks[first].valid or not chunks[first].sure
            decoder = NmeaDecoder()
            decoder.feed(bytes(owner.data))
            assert decoder.stats().sentences >= 20
            assert decoder.stats().bad_checksum == 0

    run(scenario())


def test_autobaud_with_no_nmea_at_any_rate_waits_and_cycles_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        # 1200 baud is not among the rates tried: every rate sees garbage.
        with FakeReceiver(tmp_path / "gps0", rate=1200) as receiver:
            owner = Owner()
            port = SerialPort(settings(receiver, autobaud_rates=(4800, 9600, 19200),
                                       autobaud_window_s=0.1),
                              owner.on_data, owner.on_state)
            receiver.start()
            await wait_for(lambda: bool(receiver.chunks), timeout=60)  # as above
            async with running(port):
                await wait_for(lambda: owner.seen("waiting") == ["no NMEA at any rate"])
                assert port.status.baud is None
                await wait_for(lambda: [s.state for s in owner.states].count("autobaud") == 2)
            assert any(not c.valid for c in receiver.chunks)
            assert owner.data == b""
            assert port.status.bytes_read == 0

    asyncio.run(scenario())


# ---- shutdown ----


def test_cancelling_run_closes_the_port_and_returns_promptly(tmp_path: Path, run: Run) -> None:
    async def scenario() -> None:
        with FakeReceiver(tmp_path / "gps0", rate=115200) as receiver:
            port = SerialPort(settings(receiver, baud=115200), lambda name, data: None)
            task = asyncio.create_task(port.run())
            await wait_for(lambda: port.status.state == "open")
            receiver.start()
            await asyncio.sleep(0.05)
            assert descriptors_on(receiver.tty) == 2  # the receiver's end and the port
            cancelled = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - cancelled < 2  # generous; it takes milliseconds
            assert descriptors_on(receiver.tty) == 1

    run(scenario())


def test_cancelling_run_during_autobaud_closes_the_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        with FakeReceiver(tmp_path / "gps0", rate=1200) as receiver:
            port = SerialPort(settings(receiver, autobaud_window_s=5), lambda name, data: None)
            task = asyncio.create_task(port.run())
            await wait_for(lambda: port.status.state == "autobaud")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 2)
            assert descriptors_on(receiver.tty) == 1

    asyncio.run(scenario())


# ---- settings and backoff ----


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(3)
    for failures in range(12):
        cap = min(30.0, 0.5 * 2**failures)
        delays = [_backoff_s(failures, 0.5, 30.0, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) == 50
    assert _backoff_s(10_000, 0.5, 30.0, rng) <= 30.0


@pytest.mark.parametrize("bad", [
    {"name": "gps/0"}, {"name": ""}, {"device": ""}, {"baud": -9600},
    {"autobaud_rates": ()}, {"autobaud_window_s": 0}, {"autobaud_sentences": 0},
    {"reopen_min_s": 0}, {"reopen_min_s": 5, "reopen_max_s": 1},
])
def test_invalid_settings_are_refused_when_built(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PortSettings(**{"name": "gps0", "device": "/dev/ttyUSB0", **bad})


def test_baud_zero_means_autobaud() -> None:
    assert PortSettings("gps0", "/dev/ttyUSB0").autobaud
    assert not PortSettings("gps0", "/dev/ttyUSB0", baud=9600).autobaud
