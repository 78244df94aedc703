"""Talking to systemd: sd_notify(3) messages and the watchdog.

The lifecycle owner builds one :class:`Notifier` at start-up from the
environment, sends ``READY=1`` once startup is done, a ``STATUS=`` line from
its tick, ``RELOADING=1`` / ``READY=1`` around a reload and ``STOPPING=1`` when
shutdown begins. ``WATCHDOG=1`` goes out from the same tick, and only when
:class:`WatchdogGate` says the pipeline is healthy: live and progressing, or
idle. A pipeline stuck on work it cannot finish stops pinging, and systemd
restarts the service.

Only the main process speaks to systemd (the unit has ``NotifyAccess=main``):
the notifier remembers the pid that built it and stays silent in any other, and
:func:`child_environ` strips the notification variables from the environment
given to workers.

Datagrams go through ``sdnotify.SystemdNotifier.notify``. That class reads
``$NOTIFY_SOCKET`` from ``os.environ`` itself, swallows every error unless
``debug=True``, connects once and encodes text as Latin-1. So the address is
resolved here, from the environment mapping handed in (a path, or ``@name``
for the abstract namespace); the socket is created, connected and made
non-blocking here, so that a stalled manager cannot block the event loop; the
notifier runs with ``debug=True`` and its errors are caught and logged here;
and text is passed as UTF-8 bytes spelled in Latin-1, so that ``°C`` reaches
systemd as UTF-8.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence

import sdnotify

logger = logging.getLogger(__name__)

__all__ = [
    "NOTIFY_VARIABLES",
    "Notifier",
    "WatchdogGate",
    "child_environ",
    "status_line",
    "watchdog_interval",
]

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_STATUS_MAX = 199
# Errors after which the manager's socket may have been re-created: connect anew once.
_RECONNECT = (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN)


def child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` without the notification variables, for processes
    that must not talk to systemd (the environment analogue of sd_notify's
    ``unset_environment``)."""
    return {key: value for key, value in environ.items() if key not in NOTIFY_VARIABLES}


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as
    sd_watchdog_enabled(3) recommends. None when the watchdog is off, the value is
    invalid, or ``$WATCHDOG_PID`` names another process than ``pid`` (default:
    this one)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    if "WATCHDOG_PID" in environ:
        try:
            watched = int(environ["WATCHDOG_PID"])
        except ValueError:
            return None
        if watched != (os.getpid() if pid is None else pid):
            return None
    return usec / 2_000_000


def _address(value: str) -> str | None:
    """The AF_UNIX address of ``$NOTIFY_SOCKET``, or None for one we cannot use."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


class Notifier:
    """sd_notify for the main process. Every method returns whether a datagram
    went out; without ``$NOTIFY_SOCKET`` they all do nothing and return False."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._pid = os.getpid()
        self._raw = environ.get("NOTIFY_SOCKET", "")
        self._address = _address(self._raw) if self._raw else None
        self._interval = watchdog_interval(environ, self._pid)
        self._sd: sdnotify.SystemdNotifier | None = None
        self._warned = False
        if self._raw and self._address is None:
            # e.g. "vsock:2:1234", which systemd >= 254 may pass; sdnotify cannot send there.
            logger.warning("NOTIFY_SOCKET=%s is not an AF_UNIX address; "
                           "not notifying systemd", self._raw)

    @property
    def enabled(self) -> bool:
        """Whether systemd listens for notifications (from this process)."""
        return self._address is not None and os.getpid() == self._pid

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings, or None when systemd expects none."""
        return self._interval

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        return self.notify(*self._status(text))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with the ``MONOTONIC_USEC=`` that Type=notify-reload
        needs, in one datagram. Send :meth:`ready` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def notify(self, *assignments: str) -> bool:
        """Sends ``VAR=value`` assignments together in one datagram."""
        if self._address is None or not assignments:
            return False
        if os.getpid() != self._pid:
            logger.debug("not notifying systemd from pid %d (only the main process, %d, does)",
                         os.getpid(), self._pid)
            return False
        state = "\n".join(assignments) + "\n"
        # sdnotify encodes with Latin-1: hand it UTF-8 bytes spelled as Latin-1.
        wire = state.encode("utf-8", "replace").decode("latin-1")
        for attempt in (1, 2):
            try:
                self._notifier().notify(wire)
            except OSError as exc:
                if exc.errno in _RECONNECT:
                    self.close()
                    if attempt == 1:
                        continue
                self._warn(exc)
                return False
            self._warned = False
            return True
        return False  # pragma: no cover - the loop always returns

    def _notifier(self) -> sdnotify.SystemdNotifier:
        if self._sd is None:
            assert self._address is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.setblocking(False)
                sock.connect(self._address)
            except OSError:
                sock.close()
                raise
            # Built without __init__, which would read os.environ and drop errors.
            sd = sdnotify.SystemdNotifier.__new__(sdnotify.SystemdNotifier)
            sd.debug = True
            sd.socket = sock
            self._sd = sd
        return self._sd

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("cannot notify systemd at %s: %s", self._raw, exc)
        else:
            logger.debug("cannot notify systemd at %s: %s", self._raw, exc)

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        return () if text is None else (f"STATUS={_one_line(text)}",)

    def close(self) -> None:
        if self._sd is not None:
            self._sd.socket.close()
            self._sd = None


class WatchdogGate:
    """Decides, tick by tick, whether to send ``WATCHDOG=1``. Pure logic: the
    caller passes the time (any monotonic clock, in seconds) and two facts.

    ``progressed``: the pipeline completed something since the previous tick
    (a chunk done or dead-lettered, results published). ``idle``: it has nothing
    to do (queue empty, no chunk in flight). A ping is due every ``interval``
    while the pipeline is idle or last progressed at most ``stall_limit`` ago.
    Past that, with work pending, pings stop, and systemd acts once
    ``WATCHDOG_USEC`` (two intervals) has passed since the last ping. A stalled
    event loop stops the ticks and so the pings by itself.

    The stall limit must exceed the longest legitimate wait for progress, e.g.
    the chunk timeout plus a margin; by default it is three intervals. Call
    :meth:`tick` several times per interval (every second is fine).
    """

    def __init__(self, interval: float, *, stall_limit: float | None = None,
                 now: float = 0.0) -> None:
        if interval <= 0:
            raise ValueError("the watchdog interval must be positive")
        self.interval = interval
        self.stall_limit = 3 * interval if stall_limit is None else stall_limit
        if self.stall_limit <= 0:
            raise ValueError("the stall limit must be positive")
        self._last_ping: float | None = None
        self._last_progress = now
        self._withheld: str | None = None

    @property
    def withheld(self) -> str | None:
        """Why pings are being withheld, or None while they flow."""
        return self._withheld

    def stalled_for(self, now: float) -> float:
        """Seconds since the pipeline last progressed or was idle."""
        return max(0.0, now - self._last_progress)

    def tick(self, now: float, *, progressed: bool, idle: bool) -> bool:
        """Whether to send ``WATCHDOG=1`` now."""
        if progressed or idle:
            self._last_progress = now
        stalled = now - self._last_progress
        if stalled > self.stall_limit:
            if self._withheld is None:
                self._withheld = (f"work pending and no progress for {stalled:.1f} s "
                                  f"(stall limit {self.stall_limit:.1f} s)")
                logger.warning("withholding watchdog pings: %s; systemd will restart "
                               "the service unless work progresses", self._withheld)
            return False
        if self._withheld is not None:
            logger.info("watchdog pings resume: the pipeline progresses again")
            self._withheld = None
        if self._last_ping is not None and now - self._last_ping < self.interval:
            return False
        self._last_ping = now
        return True


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 9.95 else f"{value:.1f}"


def status_line(
    *,
    queue_depth: int,
    queue_capacity: int,
    chunk_size: int | None = None,
    temperature_c: float | None = None,
    in_rate: float | None = None,
    out_rate: float | None = None,
    down: Mapping[str, str] | Sequence[str] = (),
) -> str:
    """One short ``STATUS=`` text, e.g. ``queue 12/500, chunk 128, 61.2°C,
    in 42/s, out 40/s, down: gps1 (unplugged)``. ``down`` maps each source that
    is down to why (or lists names only). Stays under 200 characters: sources
    that do not fit are counted as ``+N more``."""
    parts = [f"queue {queue_depth}/{queue_capacity}"]
    if chunk_size is not None:
        parts.append(f"chunk {chunk_size}")
    if temperature_c is not None:
        parts.append(f"{temperature_c:.1f}°C")
    if in_rate is not None:
        parts.append(f"in {_rate(in_rate)}/s")
    if out_rate is not None:
        parts.append(f"out {_rate(out_rate)}/s")
    head = _one_line(", ".join(parts))
    if isinstance(down, Mapping):
        sources = [f"{name} ({why})" if why else name for name, why in down.items()]
    else:
        sources = list(down)
    sources = [_one_line(s) for s in sources]
    if not sources:
        return head[:_STATUS_MAX]
    for shown in range(len(sources), -1, -1):
        listed = ", ".join(sources[:shown])
        rest = len(sources) - shown
        if rest:
            listed = f"{listed}, +{rest} more" if listed else f"{rest} sources"
        line = f"{head}, down: {listed}"
        if len(line) <= _STATUS_MAX:
            return line
    return line[:_STATUS_MAX]
