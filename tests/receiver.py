"""A fake GPS receiver on a pseudo-terminal, for the serial port's tests.

It behaves as a receiver on a UART does, seen from the gateway:

- It talks without pause at its rate's pace (baud/10 bytes a second): RMC and
  GGA for each 10 Hz cycle of a receiver driving east, with valid checksums.
- It talks from its own process, as a receiver is its own device. A writer
  thread in the reader's process would share its GIL: preempted while holding
  it, the thread stalls the event loop too, and under load that alone made the
  reader look slow (stalls of 300 ms, against 10 ms with the writer apart).
- It never waits for the reader. The master side is non-blocking. A pty takes
  about 20 KiB, far less than a real port's driver holds in the kernel (flip
  buffers of up to 640 KiB on current Linux), so the receiver keeps up to
  ``buffer`` bytes (64 KiB by default) that the pty refused and sends them
  first when it has room again. Beyond that bytes are lost and counted in
  ``overrun``, as a UART overruns when its reader falls behind. A reader that
  loses nothing therefore keeps up; it is not merely waited for.
- A pty ignores line speed but keeps the speed the reader set: termios on the
  slave stores it, and ``tcgetattr`` on a slave descriptor reads it back.
  While that speed is not the receiver's rate, it writes random bytes in place
  of each sentence, as a UART framing at the wrong rate delivers garbage. The
  speed is read before and after each write; a write during which it changed
  is recorded as not ``sure``.
- ``unplug`` closes both ends: the reader sees end-of-file, the slave node goes
  with its master, and the symlink dangles. ``replug`` opens a new
  pty and re-points the same symlink atomically, as udev does for a by-id name.

Each write the pty accepted is logged to a file, which the test reads back as
``chunks``: the exact bytes, in order, that a lossless reader must deliver.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import math
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = ["Chunk", "FakeReceiver", "cycle_sentences", "sentence"]

_SPEEDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800,
                 921600)
}
_START = dt.datetime(2024, 5, 1, 11, 59, 58, tzinfo=dt.UTC)
_LAT, _LON = 48.1173, 11.5167  # degrees
_SPEED_MS = 12.0  # east
_RECORD = struct.Struct("<BI")  # kind, length; then the bytes (none for a count)
_VALID, _SURE, _OVERRUN, _PEAK = 1, 2, 4, 8


def sentence(body: str) -> bytes:
    """``$body*HH\\r\\n`` with the NMEA checksum (XOR of the body's bytes)."""
    check = 0
    for byte in body.encode("ascii"):
        check ^= byte
    return f"${body}*{check:02X}\r\n".encode("ascii")


def _angle(value: float, degree_digits: int, hemis: str) -> str:
    hemi = hemis[0] if value >= 0 else hemis[1]
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60.0
    return f"{degrees:0{degree_digits}d}{minutes:07.4f},{hemi}"


def cycle_sentences(index: int) -> list[bytes]:
    """The RMC and GGA of the receiver's ``index``-th 10 Hz cycle."""
    when = _START + dt.timedelta(milliseconds=100 * index)
    hms = when.strftime("%H%M%S") + f".{when.microsecond // 10000:02d}"
    east_m = _SPEED_MS * index / 10
    lat = _angle(_LAT, 2, "NS")
    lon = _angle(_LON + math.degrees(east_m / (6_371_000 * math.cos(math.radians(_LAT)))),
                 3, "EW")
    knots = _SPEED_MS * 3600 / 1852
    return [
        sentence(f"GPRMC,{hms},A,{lat},{lon},{knots:.2f},90.0,{when:%d%m%y},,,A"),
        sentence(f"GPGGA,{hms},{lat},{lon},1,12,0.8,545.4,M,46.9,M,,"),
    ]


def _speed(slave: int) -> int | None:
    return _SPEEDS.get(termios.tcgetattr(slave)[4])


@dataclass(frozen=True, slots=True)
class Chunk:
    """One write the pty accepted (all of it, or the part it had room for)."""

    data: bytes
    valid: bool  # the receiver's sentences, not wrong-rate garbage
    sure: bool  # the reader's speed did not change during the write


class FakeReceiver:
    """A receiver talking at ``rate`` on a pty reached through the symlink ``path``."""

    def __init__(self, path: Path, *, rate: int = 115200, seed: int = 1,
                 buffer: int = 65536) -> None:
        self.path = path
        self.rate = rate
        self.buffer = buffer
        self.tty = ""
        self._seed = seed
        self._starts = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._talker: subprocess.Popen[bytes] | None = None
        log_fd, log_name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".log",
                                            dir=path.parent)
        os.close(log_fd)
        self._log = Path(log_name)
        self._log_read = 0
        self._chunks: list[Chunk] = []
        self._overrun = 0
        self._peak_backlog = 0
        self._sentences = 0
        self._plug()

    def __enter__(self) -> FakeReceiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the wire ----

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.tty = os.ttyname(slave)
        self._point(self.tty)

    def _point(self, target: str) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(target)
        os.replace(temporary, self.path)

    def unplug(self) -> None:
        """Gone from the wire; it stops talking (the talker holds the pty too)."""
        self.stop()
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        if self._master is not None and self._owns_path():
            # The symlink dangles, but not to the old /dev/pts name: another
            # process's next pty may take that number and answer in its place.
            self._point(str(self.path.with_name(f".{self.path.name}.unplugged")))
        self._master = self._slave = None

    def _owns_path(self) -> bool:
        try:
            return os.readlink(self.path) == self.tty
        except OSError:
            return False

    def replug(self) -> None:
        if self._master is None:
            self._plug()

    def speed(self) -> int | None:
        """The receive speed the reader configured, as a rate; None when unplugged."""
        return None if self._slave is None else _speed(self._slave)

    # ---- talking ----

    def start(self, *, limit: int | None = None) -> None:
        """Talks until ``stop``, or until ``limit`` bytes are sent (accepted or not)."""
        self.stop()
        if self._master is None or self._slave is None:
            raise RuntimeError("the receiver is unplugged")
        self._starts += 1
        args = [sys.executable, __file__, "--rate", str(self.rate), "--log", str(self._log),
                "--master", str(self._master), "--slave", str(self._slave),
                "--seed", str(self._seed * 1000 + self._starts),
                "--cycle", str(self._starts * 100_000), "--buffer", str(self.buffer)]
        if limit is not None:
            args += ["--limit", str(limit)]
        self._talker = subprocess.Popen(args, pass_fds=(self._master, self._slave))

    def stop(self) -> None:
        if self._talker is not None:
            if self._talker.poll() is None:
                self._talker.send_signal(signal.SIGTERM)
            code = self._talker.wait(10)
            self._talker = None
            # -SIGTERM: stopped before it had set its handler, so before it talked.
            if code not in (0, -signal.SIGTERM):
                raise RuntimeError(f"the receiver's talker failed with status {code}")

    @property
    def done(self) -> bool:
        return self._talker is None or self._talker.poll() is not None

    def close(self) -> None:
        owned = self._owns_path()
        try:
            self.unplug()
        finally:
            if owned:
                self.path.unlink(missing_ok=True)
            self._log.unlink(missing_ok=True)

    # ---- what was written ----

    def _refresh(self) -> None:
        with self._log.open("rb") as log:
            log.seek(self._log_read)
            data = log.read()
        pos = 0
        while pos + _RECORD.size <= len(data):
            kind, length = _RECORD.unpack_from(data, pos)
            if kind & _OVERRUN:
                self._overrun += length
                pos += _RECORD.size
                continue
            if kind & _PEAK:
                self._peak_backlog = max(self._peak_backlog, length)
                pos += _RECORD.size
                continue
            end = pos + _RECORD.size + length
            if end > len(data):
                break  # the talker is writing this record now
            chunk = Chunk(data[pos + _RECORD.size:end], bool(kind & _VALID), bool(kind & _SURE))
            self._chunks.append(chunk)
            if chunk.valid:
                self._sentences += chunk.data.count(b"\n")
            pos = end
        self._log_read += pos

    @property
    def chunks(self) -> list[Chunk]:
        """Every write the pty accepted, in order."""
        self._refresh()
        return list(self._chunks)

    @property
    def overrun(self) -> int:
        """Bytes the pty had no room for: a reader that fell behind lost them."""
        self._refresh()
        return self._overrun

    @property
    def peak_backlog(self) -> int:
        """The most bytes the pty refused and the receiver held, over finished talks."""
        self._refresh()
        return self._peak_backlog

    @property
    def sentences(self) -> int:
        """Valid sentences the pty accepted (whole ones, unless there was an overrun)."""
        self._refresh()
        return self._sentences

    def mark(self) -> int:
        self._refresh()
        return len(self._chunks)

    def written(self, since: int = 0) -> bytes:
        """Every byte the pty accepted, from chunk ``since`` on."""
        self._refresh()
        return b"".join(chunk.data for chunk in self._chunks[since:])


# ---- the talker process ----


def _talk(options: argparse.Namespace) -> None:
    halt = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal halt
        halt = True

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(options.seed)
    log = os.open(options.log, os.O_WRONLY | os.O_APPEND)
    master, slave = options.master, options.slave
    pace = options.rate / 10  # 8 data bits, a start and a stop bit
    cycle = options.cycle
    queue: list[bytes] = []
    # Bytes on their way to the reader: (payload, valid, the speed they were framed at).
    backlog: collections.deque[tuple[bytes, bool, int | None]] = collections.deque()
    held = peak = 0
    start = time.monotonic()
    sent = 0
    while not halt and (backlog or options.limit is None or sent < options.limit):
        behind = (time.monotonic() - start) - sent / pace
        if options.limit is not None and sent >= options.limit:
            time.sleep(0.001)  # all is said; the driver's buffer drains
        elif behind < 0:
            time.sleep(min(-behind, 0.02))  # short, so that SIGTERM is seen soon
        else:
            if behind > 0.05:
                # This process was not scheduled; a receiver keeps its pace
                # instead of bursting faster than its line.
                start += behind
            if not queue:
                queue = cycle_sentences(cycle)
                cycle += 1
            data = queue.pop(0)
            sent += len(data)
            speed = _speed(slave)
            valid = speed == options.rate
            payload = data if valid else rng.randbytes(len(data))
            if held + len(payload) > options.buffer:
                os.write(log, _RECORD.pack(_OVERRUN, len(payload)))
            else:
                backlog.append((payload, valid, speed))
                held += len(payload)
        records = []
        while backlog:
            payload, valid, speed = backlog[0]
            try:
                accepted = os.write(master, payload)
            except BlockingIOError:
                accepted = 0
            if not accepted:
                break
            kind = (_VALID if valid else 0) | (_SURE if _speed(slave) == speed else 0)
            records.append(_RECORD.pack(kind, accepted) + payload[:accepted])
            held -= accepted
            if accepted < len(payload):
                backlog[0] = (payload[accepted:], valid, speed)
                break
            backlog.popleft()
        if records:
            os.write(log, b"".join(records))
        peak = max(peak, held)
    # Stopped with bytes still in the driver's buffer: they never reach the reader.
    lost = _RECORD.pack(_OVERRUN, held) if held else b""
    os.write(log, lost + _RECORD.pack(_PEAK, peak))


def _main() -> None:
    parser = argparse.ArgumentParser(description="the fake receiver's talker")
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--master", type=int, required=True)
    parser.add_argument("--slave", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cycle", type=int, default=0)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--buffer", type=int, default=65536)
    _talk(parser.parse_args())


if __name__ == "__main__":
    _main()
