"""Diagnostics out of the daemon: journald's native protocol, or stderr lines.

The pipeline logs through ``logging.getLogger(__name__)`` and never chooses an
output; the entry point calls :func:`configure` once, which installs a single
handler on the ``gatewayd`` logger:

- ``journal``: :class:`JournalHandler` sends each record as one datagram to
  ``/run/systemd/journal/socket`` (systemd's native journal protocol, spoken
  here without libsystemd), so that structured fields survive.
- ``plain``: one line per record on stderr, led by the ``<N>`` syslog priority
  of sd-daemon(3), which journald parses when stderr is a journal stream.
- ``json``: one JSON object per line on stderr.
- ``auto``: the journal when stderr is already connected to it
  (``$JOURNAL_STREAM``) and its socket exists, plain lines under systemd
  otherwise, and a human format on a terminal or anywhere else.

Structured fields
-----------------
Any ``extra=`` attribute whose name starts with ``gatewayd_`` is a project
field. In the journal it becomes ``GATEWAYD_<NAME>`` upper-cased; on stderr it
is appended as ``name=value`` (plain and human) or kept under its own name
(JSON). The names in use::

    gatewayd_source      source name (gps0, lidar1, ...)
    gatewayd_chunk       chunk id
    gatewayd_reason      stable reason code (GatewayError.reason: timeout, ...)
    gatewayd_worker_pid  pid of the worker concerned
    gatewayd_items       comma-separated item ids

so that, for instance, ``journalctl -u gatewayd GATEWAYD_REASON=timeout`` lists
every timed-out chunk with its source and item ids. Values are sent as text
(``str()``); lists, tuples and sets are joined with commas; ``None`` omits the
field; ``bytes`` go through as they are.

Exceptions
----------
``MESSAGE`` stays the message the code logged. A record with an exception adds
``EXCEPTION=<Type>: <text>`` (one line), ``ERRNO=`` for an ``OSError``, and
``TRACEBACK=`` with the formatted traceback; journalctl shows these fields only
with ``-o verbose`` or ``-o json``. On stderr a traceback is printed only with
``debug``; otherwise the line ends with the one-line exception.

Nothing here raises into the application: when the journal socket is missing
or a send fails, that record goes to stderr as a plain line instead.
"""

from __future__ import annotations

import array
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import struct
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TextIO

from gatewayd.errors import ConfigError

__all__ = [
    "JOURNAL_SOCKET",
    "JournalHandler",
    "StderrFormatter",
    "StderrHandler",
    "choose_format",
    "configure",
    "stderr_is_journal",
]

JOURNAL_SOCKET = "/run/systemd/journal/socket"

Style = Literal["plain", "human", "json"]

_FORMATS = ("auto", "plain", "json", "journal")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
_FIELD_PREFIX = "gatewayd_"
_FIELD_NAME_MAX = 64
_INVALID_NAME_CHARS = re.compile(r"[^A-Z0-9_]")
# libsystemd asks for the same; the kernel caps it at net.core.wmem_max.
_SEND_BUFFER = 8 * 1024 * 1024
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def _priority(levelno: int) -> int:
    """Syslog priority of a logging level (there is no logging level for notice)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _field_name(name: str) -> str | None:
    """A journal field name from any string: A-Z, 0-9 and _, not led by _ or a
    digit (a leading _ marks fields only journald may set), at most 64 chars."""
    name = _INVALID_NAME_CHARS.sub("_", name.upper()).lstrip("_0123456789")
    return name[:_FIELD_NAME_MAX] or None


def _project_fields(record: logging.LogRecord) -> Iterator[tuple[str, object]]:
    """(attribute name, value) of the record's gatewayd_* extras that have a value."""
    for key, value in record.__dict__.items():
        if key.startswith(_FIELD_PREFIX) and len(key) > len(_FIELD_PREFIX) and value is not None:
            yield key, value


def _text(value: object) -> str:
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value)
    return str(value)


def _value_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    text = _text(value)
    try:
        # Undecodable bytes smuggled in by os.fsdecode() go out as they came in.
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def _needs_binary_form(value: bytes) -> bool:
    if b"\n" in value or b"\0" in value:
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _encode_field(name: str, value: bytes) -> bytes:
    """One field in the native protocol: ``NAME=value\\n``, or for values holding a
    newline (or binary data) ``NAME\\n`` + 64-bit little-endian size + value + ``\\n``."""
    key = name.encode("ascii")
    if _needs_binary_form(value):
        return b"".join((key, b"\n", struct.pack("<Q", len(value)), value, b"\n"))
    return b"".join((key, b"=", value, b"\n"))


def _exception_line(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _format_failure(record: logging.LogRecord, exc: BaseException | None) -> str:
    what = _exception_line(exc) if exc is not None else "unknown error"
    return f"<3>gatewayd: cannot format a log record from {record.pathname}:{record.lineno}: {what}"


def _write_stderr(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:
        pass  # stderr is gone too: there is nowhere left to say so


class JournalHandler(logging.Handler):
    """Sends each record to journald as one native-protocol datagram.

    ``MESSAGE`` is ``record.getMessage()``: journald keeps its own time, priority
    and origin, so no formatter applies. ``fields`` adds constant fields to every
    entry (names are sanitised like all others). Entries too large for one
    datagram go in a sealed memfd passed over the socket.
    """

    def __init__(
        self,
        path: str = JOURNAL_SOCKET,
        *,
        identifier: str = "gatewayd",
        fields: Mapping[str, object] | None = None,
        level: int = logging.NOTSET,
        send_buffer: int | None = _SEND_BUFFER,
    ) -> None:
        super().__init__(level)
        self.path = path
        self.identifier = identifier
        self._constant = b"".join(
            _encode_field(name, _value_bytes(value))
            for key, value in (fields or {}).items()
            if (name := _field_name(key)) is not None and value is not None
        )
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if send_buffer:
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self._failing = False
        self._fallback = StderrFormatter("plain")

    def encode(self, record: logging.LogRecord) -> bytes:
        """The datagram payload for one record."""
        fields: list[tuple[str, object]] = [
            ("MESSAGE", record.getMessage()),
            ("PRIORITY", _priority(record.levelno)),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("LOGGER", record.name),
            ("CODE_FILE", record.pathname),
            ("CODE_LINE", record.lineno),
            ("CODE_FUNC", record.funcName),
        ]
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            fields.append(("EXCEPTION", _exception_line(exc)))
            if isinstance(exc, OSError) and exc.errno is not None:
                fields.append(("ERRNO", exc.errno))
            fields.append(("TRACEBACK", "".join(traceback.format_exception(exc)).rstrip("\n")))
        for key, value in _project_fields(record):
            name = _field_name(key)
            if name is not None:
                fields.append((name, value))
        parts = [_encode_field(name, _value_bytes(value)) for name, value in fields]
        parts.append(self._constant)
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            payload = self.encode(record)
        except RecursionError:
            raise
        except Exception as exc:
            _write_stderr(_format_failure(record, exc))
            return
        try:
            self._send(payload)
        except Exception as exc:
            lines = []
            if not self._failing:
                self._failing = True
                lines.append(f"<4>gatewayd: cannot log to the journal at {self.path} "
                             f"({_exception_line(exc)}); writing to stderr")
            lines.append(self._fallback.format(record))
            _write_stderr("\n".join(lines))
        else:
            self._failing = False

    def _send(self, payload: bytes) -> None:
        try:
            self._socket.sendto(payload, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(payload)

    def _send_memfd(self, payload: bytes) -> None:
        fd = os.memfd_create("gatewayd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            # journald accepts only a fully sealed memfd: nobody can change it after.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = array.array("i", [fd])
            self._socket.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], 0,
                                 self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self._socket.close()
        super().close()


class StderrFormatter(logging.Formatter):
    """Lines for stderr.

    ``plain``: ``<N>logger: message key=value ...`` with the sd-daemon(3)
    priority prefix on every line of the record. ``human``: ``gatewayd: LEVEL:
    message key=value ...`` (with time and logger name when ``debug``).
    ``json``: one object with ``time``, ``level``, ``logger``, ``message`` and
    the gatewayd_* extras under their own names. A traceback is included only
    when ``debug``; otherwise the one-line exception ends the message.
    """

    def __init__(self, style: Style = "plain", *, debug: bool = False) -> None:
        super().__init__()
        if style not in ("plain", "human", "json"):
            raise ValueError(f"unknown stderr style {style!r}")
        self.style_name = style
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        trace = None
        if exc is not None:
            if self.debug:
                trace = "".join(traceback.format_exception(exc)).rstrip("\n")
            else:
                message = f"{message}: {_exception_line(exc)}"
        if self.style_name == "json":
            return self._json(record, message, exc, trace)
        extras = " ".join(f"{key[len(_FIELD_PREFIX):]}={_text(value)}"
                          for key, value in _project_fields(record))
        if extras:
            message = f"{message} {extras}"
        if trace:
            message = f"{message}\n{trace}"
        if self.style_name == "plain":
            prefix = f"<{_priority(record.levelno)}>"
            return "\n".join(f"{prefix}{record.name}: {line}" if i == 0 else prefix + line
                             for i, line in enumerate(message.split("\n")))
        if self.debug:
            return f"{self.formatTime(record)} {record.name} {record.levelname}: {message}"
        return f"gatewayd: {record.levelname}: {message}"

    def _json(self, record: logging.LogRecord, message: str, exc: BaseException | None,
              trace: str | None) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if exc is not None:
            entry["exception"] = _exception_line(exc)
        if trace:
            entry["traceback"] = trace
        for key, value in _project_fields(record):
            if isinstance(value, bytes | bytearray | memoryview):
                value = bytes(value).decode("utf-8", "backslashreplace")
            elif isinstance(value, tuple | set | frozenset):
                value = list(value)
            entry[key] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when each record arrives, so that a
    replaced stderr (tests, a redirected service) is honoured."""

    def __init__(self, style: Style = "plain", *, debug: bool = False,
                 level: int = logging.NOTSET) -> None:
        super().__init__(sys.stderr)
        self.setLevel(level)
        self.setFormatter(StderrFormatter(style, debug=debug))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # One line instead of logging's traceback dump: a bad log call must not
        # bury the output, and the user sees no traceback without --debug.
        _write_stderr(_format_failure(record, sys.exc_info()[1]))


def stderr_is_journal(environ: Mapping[str, str], stderr_fd: int = 2) -> bool:
    """Whether ``stderr_fd`` is the journal stream systemd connected, per
    systemd.exec(5): ``$JOURNAL_STREAM`` holds its ``device:inode``, and a
    redirection in between makes them differ."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        expected = (int(device), int(inode))
        st = os.fstat(stderr_fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == expected


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def choose_format(
    format: str,
    environ: Mapping[str, str],
    *,
    socket_path: str = JOURNAL_SOCKET,
    stderr: TextIO | None = None,
) -> str:
    """The output that ``format`` means here: ``journal``, ``plain``, ``json`` or
    ``human`` (which only ``auto`` chooses, on a terminal or outside systemd)."""
    if format not in _FORMATS:
        raise ConfigError(f"unknown log format {format!r} (expected one of "
                          f"{', '.join(_FORMATS)})", key="log.format")
    if format != "auto":
        return format
    stream = stderr if stderr is not None else sys.stderr
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        fd = -1
    if fd >= 0 and stderr_is_journal(environ, fd) and _is_socket(socket_path):
        return "journal"
    if "JOURNAL_STREAM" in environ or "INVOCATION_ID" in environ:
        return "plain"
    return "human"


def configure(
    format: str = "auto",
    level: str = "info",
    *,
    environ: Mapping[str, str],
    debug: bool = False,
    socket_path: str = JOURNAL_SOCKET,
    identifier: str = "gatewayd",
) -> None:
    """Installs one handler on the ``gatewayd`` logger, replacing the one an
    earlier call installed. ``debug`` forces the debug level and stderr tracebacks. The
    logger stops propagating, so a root handler cannot print records twice."""
    if level.lower() not in _LEVELS:
        raise ConfigError(f"unknown log level {level!r} (expected one of "
                          f"{', '.join(_LEVELS)})", key="log.level")
    chosen = choose_format(format, environ, socket_path=socket_path)
    handler: logging.Handler
    if chosen == "journal":
        handler = JournalHandler(socket_path, identifier=identifier)
    else:
        handler = StderrHandler("plain" if chosen == "plain" else
                                "json" if chosen == "json" else "human", debug=debug)
    root = logging.getLogger("gatewayd")
    for old in list(root.handlers):
        if isinstance(old, JournalHandler | StderrHandler):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else _LEVELS[level.lower()])
    root.propagate = False
