"""journald's native protocol, stderr lines and the choice between them.

Datagrams are decoded by a parser written here from systemd's description of
the protocol (docs/JOURNAL_NATIVE_PROTOCOL.md), not by the module's encoder.
"""

from __future__ import annotations

import array
import io
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.errors import ConfigError
from gatewayd.journal import (
    JournalHandler,
    StderrFormatter,
    StderrHandler,
    choose_format,
    configure,
    stderr_is_journal,
)

MiB = 1024 * 1024


def parse_entry(data: bytes) -> list[tuple[str, bytes]]:
    """Fields in order. ``NAME=value\\n``, or ``NAME\\n`` + u64 LE size + value + ``\\n``."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        eol = data.index(b"\n", pos)
        line = data[pos:eol]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = eol + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, eol + 1)
            start = eol + 1 + 8
            value = data[start:start + size]
            assert data[start + size:start + size + 1] == b"\n", "binary field not closed by \\n"
            pos = start + size + 1
        fields.append((name.decode("ascii"), value))
    return fields


def binary_fields(data: bytes) -> set[str]:
    """Names of the fields that use the binary-safe form."""
    names = set()
    pos = 0
    while pos < len(data):
        eol = data.index(b"\n", pos)
        line = data[pos:eol]
        if b"=" in line:
            pos = eol + 1
        else:
            names.add(line.decode("ascii"))
            (size,) = struct.unpack_from("<Q", data, eol + 1)
            pos = eol + 1 + 8 + size + 1
    return names


class Journal:
    """A stand-in for journald: a datagram socket that also takes a memfd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(5)

    def receive_raw(self) -> tuple[bytes, list[int]]:
        fds = array.array("i")
        data, ancdata, _flags, _addr = self.sock.recvmsg(
            16 * MiB, socket.CMSG_SPACE(4 * fds.itemsize))
        for level, kind, cdata in ancdata:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
        return data, list(fds)

    def receive(self) -> bytes:
        data, fds = self.receive_raw()
        assert fds == [], "an entry that fits a datagram must not come as a memfd"
        return data

    def entry(self) -> dict[str, bytes]:
        return dict(parse_entry(self.receive()))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "j.sock")
    yield j
    j.close()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("gatewayd.test_journal")
    before = set(log.handlers)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.propagate = True
    for h in set(log.handlers) - before:
        log.removeHandler(h)
        h.close()


def attach(log: logging.Logger, handler: logging.Handler) -> logging.Handler:
    log.addHandler(handler)
    return handler


def test_entry_carries_message_priority_identifier_code_location_and_logger(journal, logger):
    attach(logger, JournalHandler(str(journal.path)))
    logger.warning("source %s went quiet", "gps0")
    line = sys._getframe().f_lineno - 1
    fields = journal.entry()
    assert fields["MESSAGE"] == b"source gps0 went quiet"
    assert fields["PRIORITY"] == b"4"
    assert fields["SYSLOG_IDENTIFIER"] == b"gatewayd"
    assert fields["LOGGER"] == b"gatewayd.test_journal"
    assert fields["CODE_FILE"] == __file__.encode()
    assert fields["CODE_LINE"] == str(line).encode()
    assert fields["CODE_FUNC"] == sys._getframe().f_code.co_name.encode()
    assert not any(name.startswith("_") for name in fields)


def test_project_extras_become_gatewayd_fields(journal, logger):
    attach(logger, JournalHandler(str(journal.path), identifier="gw-test"))
    logger.error("chunk %s timed out", "c12", extra={
        "gatewayd_source": "gps0", "gatewayd_chunk": "c12", "gatewayd_reason": "timeout",
        "gatewayd_worker_pid": 1234, "gatewayd_items": ["id1", "id2"],
        "gatewayd_unused": None, "other": "not ours"})
    fields = journal.entry()
    assert fields["SYSLOG_IDENTIFIER"] == b"gw-test"
    assert fields["GATEWAYD_SOURCE"] == b"gps0"
    assert fields["GATEWAYD_CHUNK"] == b"c12"
    assert fields["GATEWAYD_REASON"] == b"timeout"
    assert fields["GATEWAYD_WORKER_PID"] == b"1234"
    assert fields["GATEWAYD_ITEMS"] == b"id1,id2"
    assert "GATEWAYD_UNUSED" not in fields
    assert "OTHER" not in fields


@pytest.mark.parametrize(("level", "priority"), [
    (logging.DEBUG, b"7"), (logging.INFO, b"6"), (logging.WARNING, b"4"),
    (logging.ERROR, b"3"), (logging.CRITICAL, b"2"), (logging.INFO + 5, b"6"),
])
def test_logging_levels_map_to_syslog_priorities(journal, logger, level, priority):
    attach(logger, JournalHandler(str(journal.path)))
    logger.log(level, "x")
    assert journal.entry()["PRIORITY"] == priority


def test_value_with_a_newline_uses_the_binary_safe_form(journal, logger):
    attach(logger, JournalHandler(str(journal.path)))
    logger.info("first line\nsecond line", extra={"gatewayd_note": "a\nb"})
    data = journal.receive()
    fields = dict(parse_entry(data))
    assert fields["MESSAGE"] == b"first line\nsecond line"
    assert fields["GATEWAYD_NOTE"] == b"a\nb"
    assert {"MESSAGE", "GATEWAYD_NOTE"} <= binary_fields(data)
    assert "PRIORITY" not in binary_fields(data)


def test_binary_values_pass_unchanged_in_the_binary_safe_form(journal, logger):
    attach(logger, JournalHandler(str(journal.path)))
    blob = b"\x00\xff\x01raw=\xfe"
    logger.info("frame", extra={"gatewayd_frame": blob, "gatewayd_nul": "a\0b"})
    data = journal.receive()
    fields = dict(parse_entry(data))
    assert fields["GATEWAYD_FRAME"] == blob
    assert fields["GATEWAYD_NUL"] == b"a\0b"
    assert {"GATEWAYD_FRAME", "GATEWAYD_NUL"} <= binary_fields(data)


def test_non_ascii_text_is_sent_as_utf8(journal, logger):
    attach(logger, JournalHandler(str(journal.path)))
    logger.info("zone Zürich at 61.2°C")
    assert journal.entry()["MESSAGE"].decode("utf-8") == "zone Zürich at 61.2°C"


def test_field_names_are_sanitised(journal, logger):
    fields_in = {"_trusted": "a", "9lives": "b", "x" * 80: "c", "dash-and.dot": "d", "__": "e"}
    attach(logger, JournalHandler(str(journal.path), fields=fields_in))
    logger.info("names", extra={"gatewayd_odd-name.x": "v", "gatewayd_": "empty"})
    fields = parse_entry(journal.receive())
    names = [name for name, _ in fields]
    for name in names:
        assert name[0].isalpha(), name
        assert len(name) <= 64, name
        assert all(c.isupper() or c.isdigit() or c == "_" for c in name), name
    got = dict(fields)
    assert got["TRUSTED"] == b"a"
    assert got["LIVES"] == b"b"
    assert got["X" * 64] == b"c"
    assert got["DASH_AND_DOT"] == b"d"
    assert got["GATEWAYD_ODD_NAME_X"] == b"v"
    assert "GATEWAYD_" not in got
    assert b"e" not in got.values()


def test_exception_adds_one_line_summary_errno_and_traceback_fields(journal, logger):
    attach(logger, JournalHandler(str(journal.path)))
    try:
        raise FileNotFoundError(2, "No such file or directory", "/dev/ttyUSB0")
    except OSError:
        logger.exception("cannot open serial port")
    data = journal.receive()
    fields = dict(parse_entry(data))
    assert fields["MESSAGE"] == b"cannot open serial port"
    assert fields["PRIORITY"] == b"3"
    assert fields["EXCEPTION"].startswith(b"FileNotFoundError: ")
    assert b"\n" not in fields["EXCEPTION"]
    assert fields["ERRNO"] == b"2"
    assert fields["TRACEBACK"].startswith(b"Traceback (most recent call last):\n")
    assert b"raise FileNotFoundError" in fields["TRACEBACK"]
    assert "TRACEBACK" in binary_fields(data)


def _empty_datagrams_carry_descriptors() -> bool:
    """journald takes a memfd in a datagram with no payload at all. qemu-user
    (the ARM test runs, cross-build/) reports such a sendmsg as sent and
    delivers nothing; a kernel delivers it."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        r, w = os.pipe()
        try:
            a.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
        finally:
            os.close(r)
            os.close(w)
        b.settimeout(2.0)
        try:
            _data, ancdata, _flags, _addr = b.recvmsg(16, socket.CMSG_SPACE(4))
        except TimeoutError:
            return False
        for _level, _kind, fds in ancdata:
            for fd in array.array("i", fds[: len(fds) - len(fds) % 4]):
                os.close(fd)
        return True


def test_large_entry_goes_through_a_sealed_memfd(journal, logger):
    if not _empty_datagrams_carry_descriptors():
        pytest.skip("an empty datagram with SCM_RIGHTS is lost here (qemu-user drops it)")
    # A small send buffer makes the datagram too large for the kernel (EMSGSIZE)
    # whatever net.core.wmem_max allows on this host.
    attach(logger, JournalHandler(str(journal.path), send_buffer=64 * 1024))
    message = "p" * 250_000
    logger.info(message, extra={"gatewayd_chunk": "c1"})
    data, fds = journal.receive_raw()
    assert data == b""
    assert len(fds) == 1
    fd = fds[0]
    try:
        import fcntl

        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW, fcntl.F_SEAL_WRITE,
                     fcntl.F_SEAL_SEAL):
            assert seals & seal
        size = os.fstat(fd).st_size
        payload = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    fields = dict(parse_entry(payload))
    assert fields["MESSAGE"] == message.encode()
    assert fields["GATEWAYD_CHUNK"] == b"c1"


def test_missing_socket_sends_the_record_to_stderr_without_raising(tmp_path, logger, capsys):
    attach(logger, JournalHandler(str(tmp_path / "absent.sock")))
    logger.error("disk full", extra={"gatewayd_reason": "spool"})
    logger.warning("still here")
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("<4>gatewayd: cannot log to the journal at ")
    assert "FileNotFoundError" in err[0]
    assert err[1] == "<3>gatewayd.test_journal: disk full reason=spool"
    assert err[2] == "<4>gatewayd.test_journal: still here"
    assert len(err) == 3
    assert "Traceback" not in "\n".join(err)


def test_journal_coming_back_is_used_again(tmp_path, logger, capsys):
    attach(logger, JournalHandler(str(tmp_path / "j.sock")))
    logger.error("before")
    j = Journal(tmp_path / "j.sock")
    try:
        logger.error("after")
        assert j.entry()["MESSAGE"] == b"after"
    finally:
        j.close()
    assert "before" in capsys.readouterr().err


def test_a_bad_log_call_costs_one_stderr_line_not_a_traceback(journal, capsys):
    handler = JournalHandler(str(journal.path))
    bad = logging.LogRecord("gatewayd.x", logging.INFO, "/src/x.py", 7, "%d items",
                            ("not a number",), None)
    try:
        handler.handle(bad)
    finally:
        handler.close()
    err = capsys.readouterr().err
    assert err.startswith("<3>gatewayd: cannot format a log record from ")
    assert "Traceback" not in err


def record(msg: str, level: int = logging.INFO, exc: BaseException | None = None,
           **extra: object) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    rec = logging.LogRecord("gatewayd.pipeline", level, "/src/pipeline.py", 42, msg, None,
                            exc_info, "run")
    rec.__dict__.update(extra)
    rec.created = 1_700_000_000.25
    return rec


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_plain_lines_lead_with_the_syslog_priority():
    fmt = StderrFormatter("plain")
    assert fmt.format(record("started")) == "<6>gatewayd.pipeline: started"
    assert fmt.format(record("hot", logging.WARNING, gatewayd_source="gps0",
                             gatewayd_items=("a", "b"))) == \
        "<4>gatewayd.pipeline: hot source=gps0 items=a,b"
    assert fmt.format(record("two\nlines", logging.ERROR)) == \
        "<3>gatewayd.pipeline: two\n<3>lines"


def test_plain_lines_show_a_traceback_only_when_debugging():
    exc = raised(ValueError("bad frame"))
    quiet = StderrFormatter("plain").format(record("failed", logging.ERROR, exc))
    assert quiet == "<3>gatewayd.pipeline: failed: ValueError: bad frame"
    loud = StderrFormatter("plain", debug=True).format(record("failed", logging.ERROR, exc))
    lines = loud.split("\n")
    assert lines[0] == "<3>gatewayd.pipeline: failed"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: bad frame"


def test_json_lines_are_one_object_each():
    exc = raised(ValueError("bad\nframe"))
    line = StderrFormatter("json").format(record(
        "chunk failed", logging.ERROR, exc, gatewayd_chunk="c12", gatewayd_worker_pid=99,
        gatewayd_items={"x"}, other="ignored"))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj == {
        "time": "2023-11-14T22:13:20.250+00:00", "level": "error",
        "logger": "gatewayd.pipeline", "message": "chunk failed",
        "exception": "ValueError: bad frame",
        "gatewayd_chunk": "c12", "gatewayd_worker_pid": 99, "gatewayd_items": ["x"],
    }
    debug = json.loads(StderrFormatter("json", debug=True).format(record("m", exc=exc)))
    assert debug["traceback"].startswith("Traceback")


def test_human_format_reads_like_the_cli():
    assert StderrFormatter("human").format(record("no fix", logging.WARNING)) == \
        "gatewayd: WARNING: no fix"
    assert " gatewayd.pipeline WARNING: no fix" in \
        StderrFormatter("human", debug=True).format(record("no fix", logging.WARNING))


def test_stderr_handler_writes_to_the_current_stderr(logger, monkeypatch):
    attach(logger, StderrHandler("plain"))
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    logger.info("hello", extra={"gatewayd_source": "gps0"})
    assert buf.getvalue() == "<6>gatewayd.test_journal: hello source=gps0\n"


def test_stderr_is_journal_compares_device_and_inode(tmp_path):
    path = tmp_path / "stream"
    path.write_text("")
    other = tmp_path / "other"
    other.write_text("")
    with path.open("w") as f, other.open("w") as g:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stderr_is_journal(env, f.fileno())
        assert not stderr_is_journal(env, g.fileno())
        assert not stderr_is_journal({}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:"}, f.fileno())
    assert not stderr_is_journal(env, 987654)


def test_auto_picks_the_journal_only_when_stderr_is_its_stream(tmp_path, journal):
    with (tmp_path / "stream").open("w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "abc"}
        sock = str(journal.path)
        assert choose_format("auto", env, socket_path=sock, stderr=stream) == "journal"
        missing = str(tmp_path / "none.sock")
        assert choose_format("auto", env, socket_path=missing, stderr=stream) == "plain"
    with (tmp_path / "redirected").open("w") as other:
        assert choose_format("auto", env, socket_path=sock, stderr=other) == "plain"
        assert choose_format("auto", {"INVOCATION_ID": "abc"}, socket_path=sock,
                             stderr=other) == "plain"
        assert choose_format("auto", {}, socket_path=sock, stderr=other) == "human"
        assert choose_format("json", env, socket_path=sock, stderr=other) == "json"
    with pytest.raises(ConfigError):
        choose_format("syslog", {})


@pytest.fixture
def gatewayd_logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("gatewayd")
    saved = (list(log.handlers), log.level, log.propagate)
    yield log
    for h in list(log.handlers):
        if h not in saved[0]:
            log.removeHandler(h)
            h.close()
    log.setLevel(saved[1])
    log.propagate = saved[2]


def test_configure_installs_exactly_one_handler(gatewayd_logger, journal):
    configure("json", "warning", environ={})
    configure("plain", "info", environ={})
    assert len(gatewayd_logger.handlers) == 1
    handler = gatewayd_logger.handlers[0]
    assert isinstance(handler, StderrHandler)
    assert gatewayd_logger.level == logging.INFO
    assert gatewayd_logger.propagate is False
    configure("journal", "error", environ={}, debug=True, socket_path=str(journal.path))
    (handler,) = gatewayd_logger.handlers
    assert isinstance(handler, JournalHandler)
    assert gatewayd_logger.level == logging.DEBUG
    logging.getLogger("gatewayd.pipeline").debug("through", extra={"gatewayd_reason": "x"})
    fields = journal.entry()
    assert fields["MESSAGE"] == b"through"
    assert fields["LOGGER"] == b"gatewayd.pipeline"
    assert fields["GATEWAYD_REASON"] == b"x"


def test_configure_rejects_unknown_levels_and_formats(gatewayd_logger):
    with pytest.raises(ConfigError):
        configure("plain", "loud", environ={})
    with pytest.raises(ConfigError):
        configure("xml", "info", environ={})
