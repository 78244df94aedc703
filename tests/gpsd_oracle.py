"""A real gpsd as the oracle for fix assembly: a capture goes in on a
pseudo-terminal, gpsd's TPV reports come out of its JSON watch.

gpsd (Debian package ``gpsd``) runs in the foreground (``-N``) on a free
loopback port, read-only (``-b``: it never writes to the "receiver", so no
driver switches it into a binary mode), with the device opened at once
(``-n``). The pty's slave side is in raw mode, as a serial port would be. The
capture is written to the master side while gpsd's reports are read, so that
neither side blocks the other; then a ``# EOF`` comment line, which gpsd's
packet lexer takes for the end of a test log, makes gpsd close the device and
say so, and that closes the run. The result depends only on the bytes: gpsd's
reports are made per sentence, however the bytes arrive.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import socket
import subprocess
import time
import tty
from typing import Any

__all__ = ["GPSD", "GpsdError", "gpsd_tpvs"]

GPSD = shutil.which("gpsd") or shutil.which("gpsd", path="/usr/sbin:/sbin")


class GpsdError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpsd_tpvs(data: bytes, timeout: float = 60.0) -> list[dict[str, Any]]:
    """gpsd's TPV reports for a capture, in order."""
    if GPSD is None:
        raise GpsdError("gpsd is not installed")
    master, slave = os.openpty()
    tty.setraw(slave)
    port = _free_port()
    proc = subprocess.Popen([GPSD, "-N", "-n", "-b", "-S", str(port), os.ttyname(slave)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        sock = _connect(port, proc, deadline)
        with sock:
            sock.sendall(b'?WATCH={"enable":true,"json":true}\n')
            reader = _Reader(sock)
            reader.until(lambda m: m.get("class") == "DEVICES", deadline)
            os.set_blocking(master, False)
            todo = memoryview(data + b"\n# EOF\n")
            while todo:
                _, writable, _ = select.select([], [master], [], 0.05)
                if writable:
                    with contextlib.suppress(BlockingIOError):
                        todo = todo[os.write(master, todo[:4096]):]
                reader.poll(0)
                if time.monotonic() > deadline:
                    raise GpsdError("gpsd did not take the capture in time")
            reader.until(lambda m: m.get("class") == "DEVICE" and m.get("activated") == 0,
                         deadline)
            return [m for m in reader.messages if m.get("class") == "TPV"]
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a wedged gpsd
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        os.close(master)
        os.close(slave)


def _connect(port: int, proc: subprocess.Popen[bytes], deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError as exc:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise GpsdError(f"gpsd exited with {proc.returncode}: {err.strip()}") from None
            if time.monotonic() > deadline or exc.errno not in (errno.ECONNREFUSED, None):
                raise GpsdError(f"gpsd does not answer on port {port}: {exc}") from None
            time.sleep(0.02)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[dict[str, Any]] = []
        self._buf = b""
        self._seen = 0

    def poll(self, wait: float) -> None:
        readable, _, _ = select.select([self.sock], [], [], wait)
        if not readable:
            return
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise GpsdError("gpsd closed the connection")
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        self.messages += [json.loads(line) for line in lines if line.strip()]

    def until(self, done: Any, deadline: float) -> None:
        while True:
            for message in self.messages[self._seen:]:
                self._seen += 1
                if done(message):
                    return
            if time.monotonic() > deadline:
                raise GpsdError("gpsd did not report in time")
            self.poll(0.05)
