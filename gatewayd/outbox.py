"""The outbox: results the broker has not taken, spooled on disk until it does.

It sits after the worker pool, beside MQTT results out. A result whose
publish fails or times out is put here; once the entry is on disk (written and
fsynced) the input it came from may be acknowledged. On reconnect the daemon
replays the pending entries in order and marks each one done after its PUBACK.
Delivery is at least once: after a crash, entries not marked done come again,
and consumers de-duplicate by record id.

On disk, in one directory::

    000000000042.seg   entries, append-only, never rewritten in place
    000000000042.ack   offsets of the entries of segment 42 that were delivered

An entry is one frame::

    magic     4  b"\\x8aOBX"
    version   1  1
    flags     1  bit 0 retain, bits 1-2 QoS
    topic     2  length of the UTF-8 topic            (big-endian lengths)
    id        2  length of the UTF-8 record id
    payload   4  length of the payload
    body_crc  4  CRC-32 of topic + id + payload
    head_crc  4  CRC-32 of the 18 bytes above
    topic, id, payload

The header carries its own CRC, so that after damage the next frame is found
again by scanning for the magic: a false match must also pass a CRC. A frame
cut short at the end of a segment (power lost during a write) is a torn tail;
a bad frame between good ones is skipped and costs only itself.

An ack record is 8 bytes: the offset, and a CRC-32 of the segment number and
the offset. A segment whose entries are all delivered is deleted with its ack
file; an ack file is only ever rewritten whole (a fresh file renamed over it)
when it was found damaged at start. Writes are batched: one write and one
fsync per batch, at most every ``fsync_interval_s``, sooner once
``batch_bytes`` wait. All file I/O runs in one thread of its own, so the event
loop never waits for the SD card.

The outbox is bounded by ``max_bytes``: when full, whole segments go, oldest
first, and every entry lost so is counted and logged.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import logging
import os
import re
import struct
import zlib
from array import array
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from gatewayd.errors import GatewayError

logger = logging.getLogger(__name__)

__all__ = ["Entry", "Outbox", "OutboxError", "OutboxSettings", "OutboxStats", "Position"]

MAGIC = b"\x8aOBX"
VERSION = 1
_HEAD = struct.Struct(">4sBBHHII")  # magic, version, flags, lengths, body CRC
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _CRC.size
_ACK = struct.Struct(">II")  # offset, CRC-32 of (segment, offset)
_ACK_KEY = struct.Struct(">QI")
MAX_PAYLOAD = 256 << 20  # MQTT's own limit on a payload
_MAX_LEVEL = 0xFFFF
_SEGMENT = re.compile(r"(\d{12})\.seg")
_ACKS = re.compile(r"(\d{12})\.ack")


class OutboxError(GatewayError):
    """An entry could not be made durable; the input it came from must stay
    unacknowledged. ``reason`` is ``disk_full`` (ENOSPC), ``outbox_io`` or
    ``outbox_closed``."""

    reason = "outbox_io"


class Position(NamedTuple):
    """Where an entry is on disk: its segment's number and its offset there."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One result to publish. ``position`` is set on entries the outbox hands
    back (from ``pending`` or ``take``) and is what ``done`` needs."""

    topic: str
    payload: bytes
    record_id: str = ""
    qos: int = 1
    retain: bool = False
    position: Position | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    directory: Path
    max_bytes: int = 64 << 20
    segment_bytes: int = 1 << 20  # eviction drops whole segments: keep them small
    batch_bytes: int = 256 << 10  # write at once when this much (or a segment's worth) waits
    fsync_interval_s: float = 0.2  # else at most one write and fsync per interval

    def __post_init__(self) -> None:
        if self.segment_bytes < 4096:
            raise ValueError("outbox segment_bytes must be at least 4096")
        if self.max_bytes < 4 * self.segment_bytes:
            raise ValueError("outbox max_bytes must hold at least four segments")
        if self.batch_bytes < 1:
            raise ValueError("outbox batch_bytes must be at least 1")
        if not 0 <= self.fsync_interval_s <= 60:
            raise ValueError("outbox fsync_interval_s must be between 0 and 60")


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int  # entries on disk not yet delivered
    queued: int  # entries put, waiting for their write and fsync
    bytes: int  # size of the segment files
    segments: int
    stored: int  # entries made durable
    delivered: int
    duplicates: int  # puts refused because the record id was already pending
    evicted: int  # undelivered entries dropped to stay under max_bytes
    evicted_bytes: int
    corrupt_skipped: int  # damaged frames or regions skipped
    torn_tails: int  # segments that ended in a partial frame
    failed: int  # entries whose put failed (disk full, I/O error)
    fsyncs: int
    bytes_written: int  # entries, acks and rewritten ack files


def encode(entry: Entry) -> bytes:
    """The frame of one entry."""
    topic = entry.topic.encode()
    rid = entry.record_id.encode()
    if len(topic) > _MAX_LEVEL or len(rid) > _MAX_LEVEL:
        raise ValueError("an outbox topic or record id is at most 65535 bytes")
    if len(entry.payload) > MAX_PAYLOAD:
        raise ValueError(f"an outbox payload is at most {MAX_PAYLOAD} bytes")
    if entry.qos not in (0, 1, 2):
        raise ValueError(f"QoS must be 0, 1 or 2, not {entry.qos!r}")
    body = b"".join((topic, rid, entry.payload))
    head = _HEAD.pack(MAGIC, VERSION, entry.qos << 1 | entry.retain, len(topic), len(rid),
                      len(entry.payload), zlib.crc32(body))
    return b"".join((head, _CRC.pack(zlib.crc32(head)), body))


class _Header(NamedTuple):
    flags: int
    topic: int
    rid: int
    payload: int
    crc: int

    @property
    def frame_size(self) -> int:
        return HEADER_SIZE + self.topic + self.rid + self.payload


def _header(data: bytes | memoryview, offset: int = 0) -> _Header | None:
    """The header at ``offset``, if a valid one starts there."""
    if len(data) - offset < HEADER_SIZE or data[offset:offset + 4] != MAGIC:
        return None
    (crc,) = _CRC.unpack_from(data, offset + _HEAD.size)
    if zlib.crc32(data[offset:offset + _HEAD.size]) != crc:
        return None
    _, version, flags, topic, rid, payload, body_crc = _HEAD.unpack_from(data, offset)
    if version != VERSION or flags >> 3 or flags >> 1 == 3 or payload > MAX_PAYLOAD:
        return None
    return _Header(flags, topic, rid, payload, body_crc)


def _decode(head: _Header, body: bytes | memoryview, position: Position) -> Entry | None:
    if zlib.crc32(body) != head.crc:
        return None
    ends = head.topic, head.topic + head.rid
    try:
        topic = bytes(body[:ends[0]]).decode()
        rid = bytes(body[ends[0]:ends[1]]).decode()
    except UnicodeDecodeError:
        return None  # not written by us, whatever its CRC says
    return Entry(topic=topic, record_id=rid, payload=bytes(body[ends[1]:]),
                 qos=head.flags >> 1, retain=bool(head.flags & 1), position=position)


def _key(record_id: str) -> int:
    # Pending record ids are remembered by hash only: a few bytes per entry
    # rather than a string. A false match, 2**-64 per pair, would be counted
    # as a duplicate.
    return hash(record_id) if record_id else 0


def _ack_record(segment: int, offset: int) -> bytes:
    return _ACK.pack(offset, zlib.crc32(_ACK_KEY.pack(segment, offset)))


# ---- what a scan of the directory finds ----

@dataclass(slots=True)
class _Scanned:
    number: int
    size: int
    frames: list[tuple[int, int]]  # offset, key of the record id
    acked: set[int]
    corrupt: int = 0
    torn: bool = False


@dataclass(slots=True)
class _Found:
    segments: list[_Scanned] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    bytes_written: int = 0
    fsyncs: int = 0


def scan_segment(number: int, data: bytes) -> _Scanned:
    """Every valid frame of a segment, and what was skipped around them."""
    found = _Scanned(number, len(data), [], set())
    view = memoryview(data)
    size = len(data)
    pos = 0
    bad_from = -1  # start of the damaged region being skipped
    while pos < size:
        head = _header(view, pos)
        if head is not None:
            end = pos + head.frame_size
            if end <= size:
                body = view[pos + HEADER_SIZE:end]
                if zlib.crc32(body) == head.crc:
                    if bad_from >= 0:
                        found.corrupt += 1
                        bad_from = -1
                    rid = bytes(body[head.topic:head.topic + head.rid]).decode(
                        errors="surrogateescape")
                    found.frames.append((pos, _key(rid)))
                    pos = end
                    continue
                if end == size or _header(view, end) is not None:
                    # The header is sound, the body is not: skip exactly this frame.
                    if bad_from >= 0:
                        found.corrupt += 1
                    found.corrupt += 1
                    bad_from = -1
                    pos = end
                    continue
        if bad_from < 0:
            bad_from = pos
        nxt = data.find(MAGIC, pos + 1)
        pos = nxt if nxt >= 0 else size
    found.torn = bad_from >= 0
    return found


def _read_acks(number: int, data: bytes) -> tuple[set[int], bool]:
    """The delivered offsets of a segment, and whether the ack file is damaged."""
    acked = set()
    damaged = len(data) % _ACK.size != 0
    for i in range(0, len(data) - _ACK.size + 1, _ACK.size):
        offset, crc = _ACK.unpack_from(data, i)
        if crc == zlib.crc32(_ACK_KEY.pack(number, offset)):
            acked.add(offset)
        else:
            damaged = True
    return acked, damaged


# ---- the disk: used only from the outbox's own thread ----

@dataclass(slots=True)
class _Plan:
    segment: int  # where the frames go
    new: bool  # a fresh segment file
    frames: list[bytes]
    acks: dict[int, list[int]]
    delete: list[int]
    sync: bool = False  # fsync the ack files too (at close)


@dataclass(slots=True)
class _Result:
    start: int = 0  # offset of the first frame written
    size: int = 0  # the segment's size afterwards
    error: BaseException | None = None
    ack_error: OSError | None = None
    fsyncs: int = 0
    bytes_written: int = 0


class _Disk:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1  # the segment being appended to
        self._fd_number = -1
        self._fd_size = 0

    def _path(self, number: int, suffix: str) -> str:
        return os.path.join(self.directory, f"{number:012d}{suffix}")

    def scan(self) -> _Found:
        found = _Found()
        self.directory.mkdir(parents=True, exist_ok=True)
        segments: dict[int, bytes] = {}
        acks: dict[int, bytes] = {}
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            match = _SEGMENT.fullmatch(name) or _ACKS.fullmatch(name)
            if name.endswith(".ack.tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # an ack file rewrite that did not finish
                continue
            if match is None or not os.path.isfile(path):
                found.foreign.append(name)
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                logger.warning("outbox: cannot read %s: %s", path, exc.strerror)
                found.foreign.append(name)
                continue
            (segments if name.endswith(".seg") else acks)[int(match.group(1))] = data
        for number in sorted(segments):
            scanned = scan_segment(number, segments.pop(number))
            if number in acks:
                scanned.acked, damaged = _read_acks(number, acks.pop(number))
                if damaged:
                    self._rewrite_acks(number, scanned.acked, found)
            found.segments.append(scanned)
        for number in acks:  # acks of a segment already deleted
            with contextlib.suppress(OSError):
                os.unlink(self._path(number, ".ack"))
        return found

    def _rewrite_acks(self, number: int, acked: Iterable[int], found: _Found) -> None:
        # Appending after a torn ack record would misalign every later one.
        data = b"".join(_ack_record(number, off) for off in sorted(acked))
        tmp = self._path(number, ".ack.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                self._write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._path(number, ".ack"))
            found.bytes_written += len(data)
            found.fsyncs += 1
        except OSError as exc:
            logger.warning("outbox: cannot rewrite the ack file of segment %d: %s", number,
                           exc.strerror)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> int:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
        return written

    def _close_segment(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._fd_number, self._fd_size = -1, -1, 0

    def commit(self, plan: _Plan) -> _Result:
        result = _Result()
        for number in plan.delete:
            if number == self._fd_number:
                self._close_segment()
            for suffix in (".seg", ".ack"):
                try:
                    os.unlink(self._path(number, suffix))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.warning("outbox: cannot delete segment %d: %s", number,
                                   exc.strerror)
        for number, offsets in plan.acks.items():
            data = b"".join(_ack_record(number, off) for off in offsets)
            try:
                fd = os.open(self._path(number, ".ack"),
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
                try:
                    result.bytes_written += self._write_all(fd, data)
                    if plan.sync:
                        os.fsync(fd)
                        result.fsyncs += 1
                finally:
                    os.close(fd)
            except OSError as exc:
                result.ack_error = exc  # those entries may come again: at least once
        if plan.frames:
            self._append(plan, result)
        if plan.sync:
            self._close_segment()
        return result

    def _append(self, plan: _Plan, result: _Result) -> None:
        created = False
        start = 0
        try:
            if plan.new or self._fd_number != plan.segment:
                self._close_segment()
                self._fd = os.open(self._path(plan.segment, ".seg"),
                                   os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND |
                                   os.O_CLOEXEC, 0o644)
                self._fd_number = plan.segment
                created = True
            start = result.start = self._fd_size
            data = b"".join(plan.frames)
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                result.bytes_written += n
                view = view[n:]
            os.fsync(self._fd)
            result.fsyncs += 1
            if created:  # the new file's name must survive a power cut too
                dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                    result.fsyncs += 1
                finally:
                    os.close(dir_fd)
            self._fd_size = result.size = start + len(data)
        except OSError as exc:
            result.error = exc
            # After a failed write or fsync the file's tail is unknown (a failed
            # fsync may even leave pages marked clean): cut the batch off, best
            # effort, and never append to this segment again.
            result.size = start
            if self._fd >= 0:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    with contextlib.suppress(OSError):
                        result.size = os.fstat(self._fd).st_size
            self._close_segment()

    def read(self, positions: list[Position]) -> list[Entry | None]:
        """The entries at ``positions`` (sorted); None where one is gone or damaged."""
        out: list[Entry | None] = []
        fd, number = -1, -1
        try:
            for pos in positions:
                if pos.segment != number:
                    if fd >= 0:
                        os.close(fd)
                    number = pos.segment
                    try:
                        fd = os.open(self._path(number, ".seg"), os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        fd = -1
                if fd < 0:
                    out.append(None)
                    continue
                try:
                    head = _header(os.pread(fd, HEADER_SIZE, pos.offset))
                    body = os.pread(fd, head.frame_size - HEADER_SIZE,
                                    pos.offset + HEADER_SIZE) if head else b""
                except OSError:
                    head = None
                out.append(_decode(head, body, pos) if head else None)
        finally:
            if fd >= 0:
                os.close(fd)
        return out


# ---- the index: what is on disk, kept in the event loop ----

class _Segment:
    """The undelivered entries of one segment file, by offset."""

    __slots__ = ("head", "keys", "number", "offsets", "remaining", "sealed", "settled",
                 "size")

    def __init__(self, number: int, size: int = 0) -> None:
        self.number = number
        self.size = size
        self.offsets = array("I")
        self.keys = array("q")
        self.settled = bytearray()  # 1 once delivered, or lost to damage
        self.remaining = 0
        self.head = 0  # index of the first unsettled entry
        self.sealed = False  # nothing more is appended

    def add(self, offset: int, key: int) -> None:
        self.offsets.append(offset)
        self.keys.append(key)
        self.settled.append(0)
        self.remaining += 1

    def find(self, offset: int) -> int:
        i = bisect.bisect_left(self.offsets, offset)
        return i if i < len(self.offsets) and self.offsets[i] == offset else -1

    def settle(self, i: int) -> None:
        self.settled[i] = 1
        self.remaining -= 1
        while self.head < len(self.settled) and self.settled[self.head]:
            self.head += 1


# An entry waiting for its batch: its frame, and the futures of every put of it.
_Queued = tuple[Entry, bytes, list["asyncio.Future[None]"]]


class Outbox:
    """A crash-safe, bounded spool of results; an async context manager.

    One event loop owns it. ``put`` never blocks the loop: the write and fsync
    happen in the outbox's own thread, and the future it returns resolves once
    the entry is durable.
    """

    def __init__(self, settings: OutboxSettings) -> None:
        self.settings = settings
        self._disk = _Disk(Path(settings.directory))
        self._io: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._segments: dict[int, _Segment] = {}  # oldest first
        self._active: _Segment | None = None
        self._next_number = 1
        self._bytes = 0
        self._pending = 0
        self._keys: set[int] = set()  # record ids pending or queued
        self._queue: list[_Queued] = []
        self._queued_bytes = 0
        self._queued_ids: dict[str, list[asyncio.Future[None]]] = {}
        self._acks: dict[int, list[int]] = {}
        self._doomed: list[int] = []
        self._flush_waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._stored = asyncio.Event()  # set while an undelivered entry is on disk
        self._last_commit = float("-inf")
        self._counts = dict.fromkeys(
            ("stored", "delivered", "duplicates", "evicted", "evicted_bytes",
             "corrupt_skipped", "torn_tails", "failed", "fsyncs", "bytes_written"), 0)

    # ---- lifecycle ----

    async def open(self) -> OutboxStats:
        """Scans the directory: what was left before a restart is pending again."""
        if self._loop is not None:
            raise RuntimeError("an Outbox is opened once")
        self._loop = asyncio.get_running_loop()
        self._io = ThreadPoolExecutor(1, thread_name_prefix="outbox")
        try:
            found = await self._loop.run_in_executor(self._io, self._disk.scan)
        except OSError as exc:
            self._io.shutdown(wait=False)
            self._closed = True
            raise OutboxError(f"outbox {self.settings.directory} cannot be opened",
                              native=exc.strerror, reason="outbox_io") from None
        self._load(found)
        self._writer = asyncio.create_task(self._write_loop(), name="outbox-writer")
        stats = self.stats()
        logger.info("outbox %s: %d entries pending, %d bytes in %d segments",
                    self.settings.directory, stats.pending, stats.bytes, stats.segments)
        return stats

    def _load(self, found: _Found) -> None:
        c = self._counts
        c["bytes_written"] += found.bytes_written
        c["fsyncs"] += found.fsyncs
        if found.foreign:
            logger.warning("outbox %s: %d files not ours, left alone: %s",
                           self.settings.directory, len(found.foreign),
                           ", ".join(found.foreign[:5]))
        duplicates = 0
        for scanned in found.segments:
            seg = _Segment(scanned.number, scanned.size)
            seg.sealed = True  # appends go to a fresh segment
            self._segments[seg.number] = seg
            self._bytes += seg.size
            self._next_number = max(self._next_number, seg.number + 1)
            for offset, key in scanned.frames:
                if offset in scanned.acked:
                    continue
                seg.add(offset, key)
                if key and key in self._keys:
                    # A record already pending: one copy is enough.
                    seg.settle(len(seg.offsets) - 1)
                    self._acks.setdefault(seg.number, []).append(offset)
                    duplicates += 1
                    continue
                self._keys.add(key)
                self._pending += 1
            c["corrupt_skipped"] += scanned.corrupt
            c["torn_tails"] += scanned.torn
            if scanned.corrupt or scanned.torn:
                logger.warning("outbox segment %d: %d damaged frames skipped%s; %d entries kept",
                               seg.number, scanned.corrupt,
                               ", a torn tail" if scanned.torn else "", len(scanned.frames),
                               extra={"gatewayd_reason": "outbox_corrupt"})
            if not seg.remaining:
                self._drop(seg)  # delivered, empty or all damaged
        c["duplicates"] += duplicates
        self._keys.discard(0)
        if self._pending:
            self._stored.set()
        if self._doomed or self._acks:
            self._wake.set()

    async def close(self) -> None:
        """Writes what is queued, records the deliveries, then stops the thread."""
        if self._closed or self._loop is None or self._io is None:
            self._closed = True
            return
        self._closed = True
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        active = self._active
        if active is not None and not active.remaining:
            self._drop(active)
        plan = _Plan(-1, False, [], self._take_acks(), self._take_doomed(), sync=True)
        try:
            result = await self._loop.run_in_executor(self._io, self._disk.commit, plan)
            self._account(result)
        finally:
            self._io.shutdown(wait=True)

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- putting ----

    def put(self, entry: Entry) -> asyncio.Future[None]:
        """Queues ``entry`` for the next batch. The future resolves once it is
        durable, or fails with OutboxError (its input must then stay
        unacknowledged). Cancelling the future does not withdraw the entry.
        An entry whose record id is already pending is not stored twice."""
        if self._loop is None or self._closed:
            raise OutboxError("the outbox is not open", reason="outbox_closed")
        frame = encode(entry)
        future: asyncio.Future[None] = self._loop.create_future()
        key = _key(entry.record_id)
        if key and key in self._keys:
            self._counts["duplicates"] += 1
            waiting = self._queued_ids.get(entry.record_id)
            if waiting is None:
                future.set_result(None)  # already on disk
            else:
                waiting.append(future)  # on disk with the earlier put's batch
            return future
        futures = [future]
        if key:
            self._keys.add(key)
            self._queued_ids[entry.record_id] = futures
        self._queue.append((entry, frame, futures))
        self._queued_bytes += len(frame)
        self._wake.set()
        if self._queued_bytes >= min(self.settings.batch_bytes, self.settings.segment_bytes):
            self._urgent.set()
        return future

    async def flush(self) -> None:
        """Waits until everything put and marked done so far is on disk."""
        if self._loop is None or self._writer is None or self._writer.done():
            return
        waiter = self._loop.create_future()
        self._flush_waiters.append(waiter)
        self._wake.set()
        self._urgent.set()
        await waiter

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            delay = self._last_commit + self.settings.fsync_interval_s - loop.time()
            if delay > 0 and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._urgent.wait()
            self._wake.clear()
            self._urgent.clear()
            self._last_commit = loop.time()
            await self._commit()

    async def _commit(self) -> None:
        assert self._loop is not None and self._io is not None
        batch = self._next_batch()
        waiters = []
        if not self._queue:  # a flush waits for everything queued before it
            waiters, self._flush_waiters = self._flush_waiters, []
        try:
            plan = self._plan(batch)
            result = await self._loop.run_in_executor(self._io, self._disk.commit, plan)
            self._account(result)
            if batch:
                self._settle_batch(plan, batch, result)
        except Exception as exc:  # not a disk error (those come in the result): a bug
            logger.exception("outbox: a batch of %d entries failed", len(batch))
            error = OutboxError("outbox: entries not stored", native=repr(exc))
            for entry, _, futures in batch:
                if self._queued_ids.get(entry.record_id) is futures:
                    del self._queued_ids[entry.record_id]
                    self._keys.discard(_key(entry.record_id))
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _next_batch(self) -> list[_Queued]:
        """The queued entries that fill the segment being appended to, or the
        next one; at least one entry. The rest wait for the next round."""
        limit = self.settings.segment_bytes
        active = self._active
        room = limit - active.size if active is not None and not active.sealed and \
            active.remaining else limit
        taken = size = 0
        for _, frame, _ in self._queue:
            if size + len(frame) > room:
                if taken or room == limit:
                    break
                room = limit  # none fits: they go to a fresh segment
            size += len(frame)
            taken += 1
        taken = max(taken, min(1, len(self._queue)))
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        self._queued_bytes -= sum(len(frame) for _, frame, _ in batch)
        if self._queue:
            self._wake.set()
            if self._flush_waiters or self._queued_bytes >= min(self.settings.batch_bytes,
                                                                limit):
                self._urgent.set()
        return batch

    def _plan(self, batch: list[_Queued]) -> _Plan:
        frames = [frame for _, frame, _ in batch]
        size = sum(map(len, frames))
        active = self._active
        new = False
        if frames:
            if active is not None and (
                    active.sealed or not active.remaining or
                    active.size + size > self.settings.segment_bytes):
                active.sealed = True
                if not active.remaining:
                    self._drop(active)
                active = None
            if active is None:
                active = self._active = _Segment(self._next_number)
                self._next_number += 1
                self._segments[active.number] = active
                new = True
            self._make_room(size, keep=active)
        return _Plan(active.number if active else -1, new, frames, self._take_acks(),
                     self._take_doomed())

    def _make_room(self, size: int, keep: _Segment) -> None:
        while self._bytes + size > self.settings.max_bytes:
            oldest = next((s for s in self._segments.values() if s is not keep), None)
            if oldest is None:
                return
            c = self._counts
            c["evicted"] += oldest.remaining
            c["evicted_bytes"] += oldest.size
            logger.warning("outbox full (%d bytes): segment %d dropped with %d undelivered "
                           "entries (%d bytes); %d entries evicted so far",
                           self.settings.max_bytes, oldest.number, oldest.remaining,
                           oldest.size, c["evicted"],
                           extra={"gatewayd_reason": "outbox_evicted"})
            self._drop(oldest)

    def _drop(self, seg: _Segment) -> None:
        """Forgets a segment and has its files deleted with the next commit."""
        if self._segments.pop(seg.number, None) is None:
            return
        if seg is self._active:
            self._active = None
        for i in range(seg.head, len(seg.offsets)):
            if not seg.settled[i]:
                self._keys.discard(seg.keys[i])
        self._pending -= seg.remaining
        self._bytes -= seg.size
        self._acks.pop(seg.number, None)
        self._doomed.append(seg.number)
        if not self._closed:
            self._wake.set()

    def _take_acks(self) -> dict[int, list[int]]:
        acks, self._acks = self._acks, {}
        return acks

    def _take_doomed(self) -> list[int]:
        doomed, self._doomed = self._doomed, []
        return doomed

    def _account(self, result: _Result) -> None:
        self._counts["fsyncs"] += result.fsyncs
        self._counts["bytes_written"] += result.bytes_written
        if result.ack_error is not None:
            logger.warning("outbox: deliveries not recorded (%s); those entries may be "
                           "sent again", result.ack_error.strerror)

    def _settle_batch(self, plan: _Plan, batch: list[_Queued], result: _Result) -> None:
        seg = self._segments.get(plan.segment)
        if seg is not None:
            self._bytes += result.size - seg.size
            seg.size = result.size
        if result.error is None and seg is not None:
            offset = result.start
            for entry, frame, futures in batch:
                seg.add(offset, _key(entry.record_id))
                offset += len(frame)
                if self._queued_ids.get(entry.record_id) is futures:
                    del self._queued_ids[entry.record_id]
                for future in futures:
                    if not future.done():
                        future.set_result(None)
            self._pending += len(batch)
            self._counts["stored"] += len(batch)
            self._stored.set()
            return
        exc = result.error
        disk_full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
        error = OutboxError(
            f"outbox: {len(batch)} entries not stored in {self.settings.directory}",
            reason="disk_full" if disk_full else "outbox_io",
            native=(exc.strerror if isinstance(exc, OSError) else None) or str(exc))
        self._counts["failed"] += len(batch)
        failed = self._counts["failed"]
        if failed == len(batch) or failed // 1000 != (failed - len(batch)) // 1000:
            logger.warning("%s; %d entries failed so far", error, failed,
                           extra={"gatewayd_reason": error.reason})
        for entry, _, futures in batch:
            if self._queued_ids.get(entry.record_id) is futures:
                del self._queued_ids[entry.record_id]
                self._keys.discard(_key(entry.record_id))
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        if seg is not None:
            seg.sealed = True
            if not seg.remaining:
                self._drop(seg)

    # ---- replaying ----

    def _next(self, after: Position | None, n: int) -> list[Position]:
        """Up to ``n`` positions of undelivered entries after ``after``, in order."""
        out: list[Position] = []
        for seg in self._segments.values():
            if after is not None and seg.number < after.segment:
                continue
            start = seg.head
            if after is not None and seg.number == after.segment:
                start = max(start, bisect.bisect_right(seg.offsets, after.offset))
            for i in range(start, len(seg.offsets)):
                if not seg.settled[i]:
                    out.append(Position(seg.number, seg.offsets[i]))
                    if len(out) >= n:
                        return out
        return out

    async def _read(self, positions: list[Position]) -> list[Entry]:
        assert self._loop is not None and self._io is not None
        entries = await self._loop.run_in_executor(self._io, self._disk.read, positions)
        out = []
        for pos, entry in zip(positions, entries):
            seg = self._segments.get(pos.segment)
            i = seg.find(pos.offset) if seg is not None else -1
            if seg is None or i < 0 or seg.settled[i]:
                continue  # delivered or evicted meanwhile
            if entry is None:
                self._counts["corrupt_skipped"] += 1
                logger.warning("outbox segment %d: the entry at %d is damaged and skipped",
                               pos.segment, pos.offset,
                               extra={"gatewayd_reason": "outbox_corrupt"})
                self._settle(seg, i, pos.offset)
                continue
            out.append(entry)
        return out

    async def pending(self, batch: int = 64) -> AsyncIterator[Entry]:
        """The undelivered entries, oldest first, read ``batch`` at a time.
        Every call starts again from the oldest undelivered entry, so an entry
        handed out but not marked done comes again; the iteration ends once it
        has caught up with what is on disk."""
        if self._loop is None or self._closed:
            raise OutboxError("the outbox is not open", reason="outbox_closed")
        after: Position | None = None
        while positions := self._next(after, batch):
            after = positions[-1]
            for entry in await self._read(positions):
                yield entry

    async def wait_pending(self) -> None:
        """Returns once an undelivered entry is on disk: at once if one is,
        else when a batch is stored. Whoever sends the outbox on waits here
        instead of looking every so often."""
        while not self._pending:
            self._stored.clear()
            await self._stored.wait()

    async def take(self, n: int) -> list[Entry]:
        """The ``n`` oldest undelivered entries (fewer if there are not as many)."""
        if self._loop is None or self._closed:
            raise OutboxError("the outbox is not open", reason="outbox_closed")
        out: list[Entry] = []
        after: Position | None = None
        while len(out) < n and (positions := self._next(after, n - len(out))):
            after = positions[-1]
            out.extend(await self._read(positions))
        return out

    def done(self, entry: Entry | Position) -> None:
        """Marks an entry delivered (after the broker's PUBACK). Marking one
        twice, or one evicted meanwhile, does nothing."""
        pos = entry.position if isinstance(entry, Entry) else entry
        if pos is None:
            raise ValueError("only an entry from pending() or take() can be marked done")
        seg = self._segments.get(pos.segment)
        i = seg.find(pos.offset) if seg is not None else -1
        if seg is None or i < 0 or seg.settled[i]:
            return
        self._counts["delivered"] += 1
        self._settle(seg, i, pos.offset)

    def _settle(self, seg: _Segment, i: int, offset: int) -> None:
        seg.settle(i)
        self._pending -= 1
        self._keys.discard(seg.keys[i])
        if not seg.remaining and seg.sealed:
            self._drop(seg)
        else:
            self._acks.setdefault(seg.number, []).append(offset)
        if not self._closed:
            self._wake.set()

    # ---- figures ----

    def stats(self) -> OutboxStats:
        c = self._counts
        return OutboxStats(
            pending=self._pending, queued=len(self._queue), bytes=self._bytes,
            segments=len(self._segments), stored=c["stored"], delivered=c["delivered"],
            duplicates=c["duplicates"], evicted=c["evicted"], evicted_bytes=c["evicted_bytes"],
            corrupt_skipped=c["corrupt_skipped"], torn_tails=c["torn_tails"],
            failed=c["failed"], fsyncs=c["fsyncs"], bytes_written=c["bytes_written"])

    def __len__(self) -> int:
        return self._pending
