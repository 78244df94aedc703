"""Serial sources: NMEA receivers wired to the gateway, read into the event loop.

The first stage for a serial GPS receiver. A ``SerialPort`` opens its device
(finding the receiver's baud rate first when told to), and hands every block of
bytes to its owner as it arrives; the owner decodes it at once, because serial
input cannot wait (a UART that is not read overruns). The port outlives its
device: a missing node, an unplug, a busy or forbidden device become a state
with a reason and a reopen after jittered, capped exponential backoff, never an
exception out of ``run``.

Reading goes through pyserial-asyncio's transport and an ``asyncio.Protocol``
(no stream buffer in between), on uvloop or plain asyncio alike. Unplug shows
as EIO or end-of-file on read (a USB adapter going away, a pty whose master
closed); a node that vanishes or is re-pointed under a stable by-id name is
caught by a periodic check of the device path against the open descriptor.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import serial_asyncio

from gatewayd.errors import ConfigError
from gatewayd.nmea import NmeaDecoder

logger = logging.getLogger(__name__)

__all__ = ["AUTOBAUD_RATES", "PortSettings", "PortState", "PortStatus", "SerialPort"]

PortState = Literal["opening", "autobaud", "open", "waiting", "error"]
AUTOBAUD_RATES = (4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

# pyserial-asyncio 0.6 reads 1 KiB per readable event and offers no setting for
# it. The tty layer hands over up to 4 KiB per read, so a larger read drains a
# backlog left by an event-loop stall in a quarter of the callbacks.
_READ_SIZE = 16384
_CLOSE_S = 1.0
_GONE = frozenset({errno.EIO, errno.ENODEV, errno.ENXIO, errno.ENOENT})
_NOT_FOUND = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.ENOTDIR})
_FORBIDDEN = frozenset({errno.EACCES, errno.EPERM})
_BUSY = frozenset({errno.EBUSY, errno.EAGAIN})


def _topic_level(value: str) -> bool:
    return bool(value) and not any(c in value for c in "/+#\0") and value.isprintable()


@dataclass(frozen=True, slots=True)
class PortSettings:
    """One serial source. ``baud=0`` finds the rate (autobaud)."""

    name: str
    device: str
    baud: int = 0
    autobaud_rates: tuple[int, ...] = AUTOBAUD_RATES
    autobaud_window_s: float = 1.5  # listening time at each rate
    autobaud_sentences: int = 2  # good sentences that lock a rate
    reopen_min_s: float = 0.5
    reopen_max_s: float = 30.0
    watch_s: float = 1.0  # how often the device path is checked against the open port

    def __post_init__(self) -> None:
        problems = []
        if not _topic_level(self.name):
            problems.append("name must be a non-empty MQTT topic level without / + # "
                            "or control characters")
        if not self.device:
            problems.append("device must not be empty")
        if self.baud < 0:
            problems.append("baud must be a rate, or 0 for autobaud")
        if self.baud == 0 and (not self.autobaud_rates or min(self.autobaud_rates) <= 0):
            problems.append("autobaud_rates must list positive rates")
        if self.autobaud_window_s <= 0 or self.watch_s <= 0:
            problems.append("autobaud_window_s and watch_s must be greater than 0")
        if self.autobaud_sentences < 1:
            problems.append("autobaud_sentences must be at least 1")
        if not 0 < self.reopen_min_s <= self.reopen_max_s:
            problems.append("reopen_min_s must be greater than 0 and at most reopen_max_s")
        if problems:
            raise ConfigError(f"serial port {self.name!r}: {'; '.join(problems)}",
                              source=self.name)

    @property
    def autobaud(self) -> bool:
        return self.baud == 0


@dataclass(frozen=True, slots=True)
class PortStatus:
    """A port at one moment. ``reason`` is empty while it works; ``baud`` is the
    rate in use (the one being tried during autobaud), None when closed;
    ``bytes_read`` counts what reached the owner; ``reopens`` counts opens after
    the first."""

    name: str
    device: str
    state: PortState
    reason: str
    baud: int | None
    since: float  # time.monotonic() of the last state change
    bytes_read: int
    reopens: int


def _backoff_s(failures: int, low: float, high: float, rng: random.Random) -> float:
    """Jittered, capped exponential: between half and all of min(high, low·2^failures),
    so ports that lost their devices together do not retry in step."""
    cap = min(high, low * 2.0 ** min(failures, 32))
    return cap * (0.5 + 0.5 * rng.random())


def _open_failure(exc: BaseException, device: str) -> tuple[PortState, str]:
    """A failed open as a state and a reason an operator can act on."""
    code = getattr(exc, "errno", None)
    if code in _NOT_FOUND:
        return "waiting", f"device not found: {device}"
    if code in _FORBIDDEN:
        return "error", f"permission denied: {device}"
    if code in _BUSY:
        return "error", f"device busy: {device} is in use by another process"
    if isinstance(exc, ValueError) or code is None:
        return "error", f"cannot configure {device}: {exc}"
    return "waiting", f"cannot open {device}: {os.strerror(code)}"


def _read_failure(exc: BaseException | None) -> str:
    """Why a transport closed. pyserial raises its own exception from the OSError,
    and raises one without an errno for end-of-file, which is how Linux reports a
    hung-up tty."""
    if exc is None:
        return "closed"
    cause = exc.__context__ if isinstance(exc.__context__, OSError) else exc
    code = getattr(cause, "errno", None)
    if code is None or code in _GONE:
        return "unplugged"
    return f"read failed: {os.strerror(code)}"


def _discard(data: bytes) -> None:
    pass


class _Link(asyncio.Protocol):
    """Routes the transport's bytes to whoever listens now (autobaud or owner)."""

    def __init__(self, lost: asyncio.Future[BaseException | None]) -> None:
        self.deliver: Callable[[bytes], None] = _discard
        self.lost = lost

    def data_received(self, data: bytes) -> None:
        self.deliver(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class _Probe:
    """Listens at one rate: keeps the bytes and counts good sentences."""

    def __init__(self, needed: int, locked: asyncio.Future[None]) -> None:
        self.chunks: list[bytes] = []
        self.locked = locked
        self._needed = needed
        self._decoder = NmeaDecoder()

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.locked.done():
            return
        self._decoder.feed(data)
        stats = self._decoder.stats()
        # A sentence without a checksum proves nothing about the rate.
        if stats.sentences - stats.no_checksum >= self._needed:
            self.locked.set_result(None)


class SerialPort:
    """Reads one serial device until cancelled, reopening it whenever it goes away.

    ``on_data(name, data)`` is called synchronously with each block as it
    arrives and must not block. ``on_state(status)`` is called on each change
    of state or reason.
    """

    def __init__(
        self,
        settings: PortSettings,
        on_data: Callable[[str, bytes], None],
        on_state: Callable[[PortStatus], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_data = on_data
        self._on_state = on_state
        self._state: PortState = "opening"
        self._reason = ""
        self._baud: int | None = None
        self._since = time.monotonic()
        self._bytes_read = 0
        self._opens = 0
        self._failures = 0
        self._warned: tuple[PortState, str] | None = None
        self._reported = False
        self._locked_rate: int | None = None
        self._data_failed = False
        self._running = False
        self._rng = random.Random()

    @property
    def status(self) -> PortStatus:
        return PortStatus(self.settings.name, self.settings.device, self._state, self._reason,
                          self._baud, self._since, self._bytes_read, max(0, self._opens - 1))

    async def run(self) -> None:
        """Runs until cancelled; the port is closed when this returns."""
        if self._running:
            raise RuntimeError(f"serial port {self.settings.name!r} is already running")
        self._running = True
        try:
            while True:
                try:
                    delay = await self._attempt()
                except Exception:
                    logger.exception("serial port %s: unexpected failure", self.settings.name)
                    self._set_state("error", "unexpected failure (see the log)", None)
                    delay = _backoff_s(32, self.settings.reopen_min_s,
                                       self.settings.reopen_max_s, self._rng)
                await asyncio.sleep(delay)
        finally:
            self._running = False

    # ---- one open, from opening to loss ----

    async def _attempt(self) -> float:
        """Opens, reads until the device goes away; returns the pause before the next try."""
        s = self.settings
        rates = self._rates()
        if self._state not in ("waiting", "error"):
            # A retry that fails again keeps its state, its reason and its ``since``.
            self._set_state("opening", "", rates[0])
        loop = asyncio.get_running_loop()
        link = _Link(loop.create_future())
        try:
            transport, _ = await serial_asyncio.create_serial_connection(
                loop, lambda: link, s.device, baudrate=rates[0], exclusive=True)
        except (OSError, ValueError) as exc:
            state, reason = _open_failure(exc, s.device)
            return self._fail(state, reason)
        transport._max_read_size = _READ_SIZE
        opened_at = time.monotonic()
        try:
            state, reason = await self._until_lost(transport, link, rates)
        finally:
            await self._close(transport, link)
        if state == "open" and time.monotonic() - opened_at >= s.reopen_max_s:
            self._failures = 0  # it was up for long: not a flapping device
        return self._fail("waiting", reason)

    async def _until_lost(self, transport: Any, link: _Link,
                       rates: tuple[int, ...]) -> tuple[PortState, str]:
        """From an opened transport to its loss: the state it reached and why it ended."""
        rate: int | None = rates[0]
        held: list[bytes] = []
        if self.settings.autobaud:
            self._set_state("autobaud", "", rates[0])
            rate, held = await self._autobaud(transport, link, rates)
            if rate is None:
                if link.lost.done():
                    return "autobaud", _read_failure(link.lost.result())
                return "autobaud", "no NMEA at any rate"
        self._opens += 1
        self._data_failed = False
        self._set_state("open", "", rate)
        link.deliver = self._deliver
        for chunk in held:
            self._deliver(chunk)
        return "open", await self._watch(transport, link)

    def _rates(self) -> tuple[int, ...]:
        s = self.settings
        if not s.autobaud:
            return (s.baud,)
        last = self._locked_rate
        if last is None or last not in s.autobaud_rates:
            return s.autobaud_rates
        # A replugged receiver most likely talks as it did before.
        return (last, *(r for r in s.autobaud_rates if r != last))

    async def _autobaud(self, transport: Any, link: _Link,
                        rates: Iterable[int]) -> tuple[int | None, list[bytes]]:
        s = self.settings
        port = transport.serial
        loop = asyncio.get_running_loop()
        for rate in rates:
            try:
                if port.baudrate != rate:
                    port.baudrate = rate
                # Bytes already received were framed at the previous rate.
                port.reset_input_buffer()
            except (OSError, ValueError) as exc:
                logger.debug("serial port %s: cannot set %d baud: %s", s.name, rate, exc)
                continue
            self._baud = rate
            probe = _Probe(s.autobaud_sentences, loop.create_future())
            link.deliver = probe.feed
            await asyncio.wait((probe.locked, link.lost), timeout=s.autobaud_window_s)
            if link.lost.done():
                break
            if probe.locked.done():
                self._locked_rate = rate
                return rate, probe.chunks
            logger.debug("serial port %s: no NMEA at %d baud", s.name, rate)
        link.deliver = _discard
        return None, []

    async def _watch(self, transport: Any, link: _Link) -> str:
        """Waits for the transport to close, or for its device node to go away:
        some drivers leave a silent descriptor when the adapter is pulled, and a
        by-id name can be re-pointed to another device."""
        s = self.settings
        fd = transport.serial.fileno()
        while True:
            await asyncio.wait((link.lost,), timeout=s.watch_s)
            if link.lost.done():
                return _read_failure(link.lost.result())
            try:
                same = os.stat(s.device).st_rdev == os.fstat(fd).st_rdev
            except OSError:
                same = False
            if not same:
                return "unplugged (device node gone or replaced)"

    async def _close(self, transport: Any, link: _Link) -> None:
        link.deliver = _discard
        port = transport.serial
        transport.close()
        # The transport closes the descriptor in a callback it schedules; wait
        # for it, so that a cancelled run() returns with the port closed. That
        # callback gives up half-way if pyserial raises anything but a termios
        # error while flushing: then the port is closed here.
        await asyncio.wait((link.lost,), timeout=_CLOSE_S)
        if not link.lost.done() and port is not None and port.is_open:
            logger.debug("serial port %s: closing it past the transport", self.settings.name)
            port.close()

    # ---- data and states ----

    def _deliver(self, data: bytes) -> None:
        self._bytes_read += len(data)
        try:
            self._on_data(self.settings.name, data)
        except Exception:
            if not self._data_failed:
                self._data_failed = True
                logger.exception("serial port %s: the data handler failed; later failures "
                                 "until the next open are not logged", self.settings.name)

    def _fail(self, state: PortState, reason: str) -> float:
        s = self.settings
        self._set_state(state, reason, None)
        if state == "error":
            return _backoff_s(32, s.reopen_min_s, s.reopen_max_s, self._rng)
        delay = _backoff_s(self._failures, s.reopen_min_s, s.reopen_max_s, self._rng)
        self._failures += 1
        return delay

    def _set_state(self, state: PortState, reason: str, baud: int | None) -> None:
        self._baud = baud
        if self._reported and (state, reason) == (self._state, self._reason):
            return
        self._reported = True
        self._state, self._reason = state, reason
        self._since = time.monotonic()
        name, device = self.settings.name, self.settings.device
        if state in ("waiting", "error"):
            if self._warned != (state, reason):
                self._warned = (state, reason)
                logger.warning("serial port %s: %s: %s", name, state, reason,
                               extra={"source": name, "device": device, "state": state})
        elif state == "open":
            self._warned = None
            logger.info("serial port %s: open at %d baud on %s", name, baud, device,
                        extra={"source": name, "device": device, "state": state})
        else:
            logger.debug("serial port %s: %s", name, state)
        if self._on_state is not None:
            try:
                self._on_state(self.status)
            except Exception:
                logger.exception("serial port %s: the state handler failed", name)
