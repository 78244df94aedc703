"""The audit trail: the lineage of every result, in a hash-chained log on disk.

It sits beside the results out: for each record the daemon publishes, one
line naming what was made from what (record id, kind, source, input hash,
operation, CRSs, version, host, received and processed times) is appended to
a JSON-lines log in which every line is bound to the one before it. Changing,
removing, inserting or reordering a line breaks the chain at that line, and
``verify`` names the first broken link.

The format
----------
Each line is one JSON object, UTF-8, ended by ``\\n``: the event's fields plus

``seq``
    1 for the very first line of the chain, then one more per line.
``prev``
    The ``hash`` of the line before; for the chain's first line the genesis
    value ``GENESIS``, the hex SHA-256 of ``b"gatewayd audit genesis"``.
``hash``
    Hex SHA-256 of the line's canonical form without ``hash`` (``prev``
    included).

The canonical form of an object is exactly::

    json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

and every line *is* the canonical form of its own object (with ``hash``), so
any change to a line's bytes, even to insignificant whitespace, is found.
Since ``hash`` covers ``prev``, linking to the previous ``hash`` binds every
byte of the previous line. Lines are split on the byte ``\\n`` only (a
newline inside a string is escaped; U+2028 is not a line end here).

Two kinds of line are written by the log itself:

``kind = "audit.torn"``, ``torn = [[size, sha256], ...]``
    Written at start after lines cut short by a power loss. The torn lines
    stay in the file, each ended by a newline, and the marker commits to their
    size and SHA-256 (of the bytes without the newline), so a torn line is
    told from a forged one. The chain continues from the last intact line.
``kind = "audit.dropped"``, ``dropped = N``, ``resume = HASH``
    Stands in for N lines that were never written (the disk failed for long
    and the queue overflowed). Its ``seq`` is the first lost line's; the line
    after it has ``seq + N`` and ``prev == resume``, the hash of the last lost
    line.

Files are rotated by size: ``audit.jsonl`` becomes ``audit.000001.jsonl``,
``audit.000002.jsonl`` and so on, and the chain runs on through them: the
first line of each file has the last hash of the file before as its ``prev``,
so a missing file breaks the chain like a missing line. With ``keep``, the
oldest rotated files are deleted; the chain then starts at a line whose
``prev`` cannot be checked, and ``verify`` says so rather than failing.

A hash chain without a secret proves order and integrity, not authorship:
whoever can write the files can write a whole new chain. Tamper evidence
therefore rests on the lines also kept elsewhere: each line is handed to
``on_line`` once it is on disk (the daemon publishes it on
``<prefix>/lineage``), and a chain that verifies must still end in, or pass
through, the hashes the fleet received.

To verify by hand (marker lines aside, see above)::

    import hashlib, json
    def canon(o): return json.dumps(o, sort_keys=True, separators=(",", ":"),
                                    ensure_ascii=False).encode()
    prev, seq = hashlib.sha256(b"gatewayd audit genesis").hexdigest(), 1
    for path in files:  # audit.000001.jsonl, audit.000002.jsonl, ..., audit.jsonl
        for n, raw in enumerate(open(path, "rb").read().split(b"\\n")[:-1], 1):
            o = json.loads(raw)
            h = o.pop("hash")
            assert canon({**o, "hash": h}) == raw, (path, n, "bytes not canonical")
            assert hashlib.sha256(canon(o)).hexdigest() == h, (path, n, "line altered")
            assert (o["prev"], o["seq"]) == (prev, seq), (path, n, "line removed or inserted")
            prev, seq = (o["resume"], seq + o["dropped"]) if o.get("kind") == "audit.dropped" \\
                else (h, seq + 1)

Writing. ``append`` is synchronous and cheap: it seals the line in memory and
queues it. A background task writes and fsyncs the queue in a worker thread,
at most once per ``flush_interval_s``; ``flush`` and ``close`` write at once.
Files are only appended to. The one exception is a write that failed part
way: the file is cut back to the end of its last confirmed line, so that the
retry neither duplicates nor tears a line. On a disk error the lines stay
queued and are retried; past ``max_pending`` the oldest are dropped, counted,
logged as errors and recorded in the chain by an ``audit.dropped`` line.

At start the log reopens the chain: it reads the end of the newest file and
continues ``seq`` and ``prev`` from its last intact line. A last line without
its newline is a write cut short by a power loss: if it is whole only the
newline is added; else it is left in place, ended, and committed to by an
``audit.torn`` line. Lines damaged otherwise are left as they are, as
evidence, and logged; ``verify`` reports them. (A second power loss just
after the newline that ends a torn line, before its marker, leaves a torn
line that no marker vouches for: ``verify`` reports it as unparseable, a
false alarm rather than a miss.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gatewayd.errors import GatewayError

logger = logging.getLogger(__name__)

__all__ = [
    "DROPPED_KIND",
    "GENESIS",
    "TORN_KIND",
    "AuditError",
    "AuditLog",
    "AuditSettings",
    "AuditStats",
    "BreakInfo",
    "TornLine",
    "VerifyResult",
    "canonical",
    "lineage_event",
    "verify",
]

GENESIS = hashlib.sha256(b"gatewayd audit genesis").hexdigest()
TORN_KIND = "audit.torn"
DROPPED_KIND = "audit.dropped"
_RESERVED = frozenset({"seq", "prev", "hash"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ROTATED_ANY = re.compile(r".+\.\d{6,}\.[^.]+")
_TAIL_BLOCK = 64 << 10
_BACKOFF_MAX_S = 30.0
_DECODER = json.JSONDecoder()


class AuditError(GatewayError):
    """The audit log cannot be opened, read or written."""

    reason = "audit"


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The bytes hashed and written for ``obj`` (see the module's docstring)."""
    return json.dumps(dict(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _seal(fields: Mapping[str, Any], seq: int, prev: str) -> tuple[str, bytes]:
    """The hash and the line (with its newline) of an event at ``seq`` after ``prev``."""
    body = {**fields, "seq": seq, "prev": prev}
    digest = hashlib.sha256(canonical(body)).hexdigest()
    body["hash"] = digest
    return digest, canonical(body) + b"\n"


def lineage_event(record: Mapping[str, Any]) -> dict[str, Any]:
    """The audit event of a result record: its identity and its lineage."""
    lineage = record["lineage"]
    event = {
        "id": record["id"],
        "kind": record["kind"],
        "source": record["source"],
        "received_at": record.get("received_at"),
        "processed_at": record.get("processed_at"),
        "input_sha256": lineage["input_sha256"],
        "operation": lineage["operation"],
        "crs_from": lineage["crs_from"],
        "crs_to": lineage["crs_to"],
        "version": lineage["version"],
        "host": lineage["host"],
    }
    if "reason" in record:  # a dead letter's
        event["reason"] = record["reason"]
    return event


# ---- reading lines ----

class _Checked(NamedTuple):
    obj: dict[str, Any] | None
    problem: str | None  # None: intact; else a BreakInfo kind
    detail: str


def _check(body: bytes) -> _Checked:
    """One line (without its newline) checked on its own: form and own hash."""
    try:
        obj = json.loads(body.decode())
    except ValueError:  # UnicodeDecodeError is one
        return _Checked(None, "unparseable", "not a JSON line")
    if not isinstance(obj, dict):
        return _Checked(None, "format", "not a JSON object")
    seq, prev, digest = obj.get("seq"), obj.get("prev"), obj.get("hash")
    if (type(seq) is not int or seq < 1 or not isinstance(prev, str)
            or not _HEX64.fullmatch(prev) or not isinstance(digest, str)):
        return _Checked(obj, "format", "seq, prev or hash missing or malformed")
    rest = {k: v for k, v in obj.items() if k != "hash"}
    try:
        if hashlib.sha256(canonical(rest)).hexdigest() != digest:
            return _Checked(obj, "hash", "hash mismatch: the line was altered")
        if canonical(obj) != body:
            return _Checked(obj, "format", "the bytes are not the line's canonical form: "
                            "the line was altered")
    except ValueError:  # NaN or Infinity, which json.loads accepts
        return _Checked(obj, "format", "a number that is not JSON")
    return _Checked(obj, None, "")


def _tail_state(tail: bytes) -> tuple[str, dict[str, Any] | None]:
    """What the bytes after a file's last newline are: ``torn`` (a line cut
    short while written), ``line`` (an intact line that only lacks its
    newline) or ``damaged`` (anything else, which no cut write leaves)."""
    text = tail.decode(errors="replace")
    try:
        _, end = _DECODER.raw_decode(text)
    except ValueError:
        return "torn", None  # incomplete: a prefix of a line
    if end != len(text):
        return "damaged", None
    checked = _check(tail)
    return ("line", checked.obj) if checked.problem is None else ("damaged", None)


def _torn_entry(body: bytes) -> list[Any]:
    return [len(body), hashlib.sha256(body).hexdigest()]


def _dropped(obj: Mapping[str, Any]) -> tuple[int, str] | None:
    """How many lines an ``audit.dropped`` line stands for, and the hash to resume from."""
    if obj.get("kind") != DROPPED_KIND:
        return None
    dropped, resume = obj.get("dropped"), obj.get("resume")
    if type(dropped) is int and dropped > 0 and isinstance(resume, str) \
            and _HEX64.fullmatch(resume):
        return dropped, resume
    return None


def _next_link(obj: Mapping[str, Any]) -> tuple[int, str]:
    """The seq and prev of the line that follows the intact line ``obj``."""
    lost = _dropped(obj)
    if lost is not None:
        return obj["seq"] + lost[0], lost[1]
    return obj["seq"] + 1, obj["hash"]


def _chain_files(directory: Path, name: str) -> list[tuple[int | None, Path]]:
    """The chain's files, oldest first: rotated ones by number, then ``name``."""
    stem, suffix = _split_name(name)
    pattern = re.compile(re.escape(stem) + r"\.(\d{6,})" + re.escape(suffix))
    rotated: dict[int, Path] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            m = pattern.fullmatch(entry.name)
            if m and entry.is_file():
                rotated[int(m.group(1))] = Path(entry.path)
    files: list[tuple[int | None, Path]] = [(n, rotated[n]) for n in sorted(rotated)]
    current = directory / name
    if current.is_file():
        files.append((None, current))
    return files


def _split_name(name: str) -> tuple[str, str]:
    suffix = Path(name).suffix
    return name[:-len(suffix)], suffix


def _rotated_name(name: str, number: int) -> str:
    stem, suffix = _split_name(name)
    return f"{stem}.{number:06d}{suffix}"


# ---- verification ----

@dataclass(frozen=True, slots=True)
class BreakInfo:
    """The first broken link: where, and what is wrong.

    ``kind``: ``hash`` (the line was altered), ``prev`` (a line removed,
    inserted or reordered before it, or a file missing), ``seq`` (a gap or
    repeat in the numbering), ``unparseable`` (not a JSON line) or ``format``
    (not the canonical form, or fields missing)."""

    file: str
    line: int
    seq: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        at = f" (seq {self.seq})" if self.seq is not None else ""
        return f"{self.file} line {self.line}{at}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class TornLine:
    """A line cut short by a power loss: not tampering. ``recovered``: an
    ``audit.torn`` line commits to it; else it ends the newest file and the
    log has not been reopened since."""

    file: str
    line: int
    size: int
    recovered: bool


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    lines: int  # intact lines checked, marker lines included
    files: int
    first_break: BreakInfo | None
    # "genesis": the first line follows the genesis value; "continued": it
    # continues from an earlier file that is not there (deleted by rotation, or
    # not given), so its prev cannot be checked; "empty": no lines.
    start: str = "empty"
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None  # compare with the last line published
    torn: tuple[TornLine, ...] = ()
    dropped: tuple[tuple[int, int], ...] = ()  # (first seq, count) never written

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "lines": self.lines, "files": self.files, "start": self.start,
            "first_seq": self.first_seq, "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "first_break": None if self.first_break is None else {
                "file": self.first_break.file, "line": self.first_break.line,
                "seq": self.first_break.seq, "kind": self.first_break.kind,
                "detail": self.first_break.detail},
            "torn": [{"file": t.file, "line": t.line, "size": t.size,
                      "recovered": t.recovered} for t in self.torn],
            "dropped": [{"first_seq": s, "count": n} for s, n in self.dropped],
        }

    def describe(self) -> str:
        """A few lines for a person: the verdict first."""
        if self.first_break is not None:
            out = [f"BROKEN: {self.first_break}",
                   f"{self.lines} lines in {self.files} files intact before it"]
        else:
            span = (f", seq {self.first_seq}-{self.last_seq}"
                    if self.first_seq is not None else "")
            out = [f"intact: {self.lines} lines in {self.files} files{span}"]
        if self.start == "genesis":
            out.append("the chain starts at the genesis value")
        elif self.start == "continued":
            out.append(f"the chain continues from an earlier, deleted file (lines before seq "
                       f"{self.first_seq} are not here): its first prev cannot be checked")
        for t in self.torn:
            state = "recovered at the next start" if t.recovered else "not yet recovered"
            out.append(f"torn line (cut short by a power loss, not tampering): {t.file} line "
                       f"{t.line}, {t.size} bytes, {state}")
        for first, count in self.dropped:
            out.append(f"{count} lines never written (seq {first}-{first + count - 1}): the "
                       "queue overflowed while the disk failed")
        if self.last_hash:
            out.append(f"last hash {self.last_hash} (seq {self.last_seq}): compare it with the "
                       "last line published on <prefix>/lineage")
        return "\n".join(out)


class _Verifier:
    def __init__(self) -> None:
        self.expected: tuple[int, str] | None = None
        self.lines = 0
        self.start = "empty"
        self.first_seq: int | None = None
        self.last: tuple[int, str] | None = None
        self.torn: list[TornLine] = []
        self.dropped: list[tuple[int, int]] = []

    def link(self, name: str, lineno: int, obj: dict[str, Any],
             missing: str) -> BreakInfo | None:
        seq, prev = obj["seq"], obj["prev"]
        if self.expected is None:
            if prev == GENESIS:
                if seq != 1:
                    return BreakInfo(name, lineno, seq, "seq",
                                     f"the chain's first line has seq {seq}, not 1")
                self.start = "genesis"
            elif seq == 1:
                return BreakInfo(name, lineno, seq, "prev", "seq 1 must follow the genesis value")
            else:
                self.start = "continued"
            self.first_seq = seq
        else:
            want_seq, want_prev = self.expected
            if prev != want_prev:
                return BreakInfo(name, lineno, seq, "prev",
                                 "prev is not the hash of the line before: a line was removed, "
                                 "inserted or reordered" + missing)
            if seq != want_seq:
                return BreakInfo(name, lineno, seq, "seq", f"seq {seq} where {want_seq} was due")
        lost = _dropped(obj)
        if lost is not None:
            self.dropped.append((seq, lost[0]))
        self.expected = _next_link(obj)
        self.last = seq, obj["hash"]
        self.lines += 1
        return None

    def result(self, files: int, broken: BreakInfo | None) -> VerifyResult:
        return VerifyResult(
            ok=broken is None, lines=self.lines, files=files, first_break=broken,
            start=self.start, first_seq=self.first_seq,
            last_seq=self.last[0] if self.last else None,
            last_hash=self.last[1] if self.last else None,
            torn=tuple(self.torn), dropped=tuple(self.dropped))


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.endswith(b"\n"):
                yield lineno, raw[:-1], True
            else:
                yield lineno, raw, False


def _verify_file(state: _Verifier, path: Path, *, newest: bool,
                 missing: str) -> BreakInfo | None:
    name = str(path)
    suspects: list[tuple[int, bytes]] = []  # unparseable lines: torn, if a marker says so
    first = True
    for lineno, body, ended in _lines(path):
        if not ended:
            if not newest:
                return BreakInfo(name, lineno, None, "unparseable",
                                 "the file ends in a partial line, which only the newest "
                                 "file can after a power loss")
            tail = _tail_state(body)[0]
            if tail == "torn":
                state.torn.extend(TornLine(name, n, len(b), False) for n, b in suspects)
                state.torn.append(TornLine(name, lineno, len(body), False))
                return None
            if tail == "line":  # whole; only its newline was lost
                state.torn.append(TornLine(name, lineno, len(body), False))
        checked = _check(body)
        if checked.problem == "unparseable":
            suspects.append((lineno, body))
            continue
        obj = checked.obj
        if checked.problem is not None or obj is None:
            if suspects:
                return _unclaimed(name, suspects)
            seq = obj.get("seq") if obj is not None else None
            return BreakInfo(name, lineno, seq if type(seq) is int else None,
                             checked.problem or "format", checked.detail)
        if obj.get("kind") == TORN_KIND or suspects:
            if obj.get("torn") != [_torn_entry(b) for _, b in suspects] or not suspects:
                if suspects:
                    return _unclaimed(name, suspects)
                return BreakInfo(name, lineno, obj["seq"], "format",
                                 "an audit.torn line without the torn lines it commits to "
                                 "before it: lines were removed")
            state.torn.extend(TornLine(name, n, len(b), True) for n, b in suspects)
            suspects = []
        broken = state.link(name, lineno, obj, missing if first else "")
        if broken is not None:
            return broken
        first = False
    return _unclaimed(name, suspects) if suspects else None


def _unclaimed(name: str, suspects: list[tuple[int, bytes]]) -> BreakInfo:
    return BreakInfo(name, suspects[0][0], None, "unparseable",
                     "not a JSON line, and no audit.torn line after it commits to it")


def verify(path: str | os.PathLike[str], *, name: str = "audit.jsonl") -> VerifyResult:
    """Check the chain of a log directory (every file named after ``name``,
    rotated ones in order, then the current one) or of one file, and name its
    first broken link. Raises AuditError if there is nothing to read."""
    target = Path(path)
    try:
        if target.is_dir():
            files = _chain_files(target, name)
            if not files:
                raise AuditError(f"no audit log ({name}) in {target}")
        elif target.is_file():
            number = 0 if _ROTATED_ANY.fullmatch(target.name) else None
            files = [(number, target)]
        else:
            raise AuditError(f"{target}: no such file or directory")
        state = _Verifier()
        expected_number: int | None = None
        for i, (number, file) in enumerate(files):
            missing = ""
            if number is not None and expected_number is not None and number > expected_number:
                gone = _rotated_name(name, expected_number)
                if number > expected_number + 1:
                    gone += f" to {_rotated_name(name, number - 1)}"
                missing = f" ({gone} missing)"
            if number is not None:
                expected_number = number + 1
            broken = _verify_file(state, file, newest=i == len(files) - 1 and number is None,
                                  missing=missing)
            if broken is not None:
                return state.result(i + 1, broken)
        return state.result(len(files), None)
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {target}", native=exc.strerror) from None


# ---- writing ----

@dataclass(frozen=True, slots=True)
class AuditSettings:
    directory: Path
    name: str = "audit.jsonl"
    max_bytes: int = 8 << 20  # rotate before a line would take the file past this
    keep: int | None = None  # rotated files kept, the oldest deleted; None: all
    flush_interval_s: float = 1.0  # at most one write and fsync per interval
    max_pending: int = 10_000  # lines waiting for the disk; past it the oldest go

    def __post_init__(self) -> None:
        if "/" in self.name or not Path(self.name).suffix or self.name.startswith("."):
            raise ValueError("audit name must be a file name with a suffix, e.g. audit.jsonl")
        if self.max_bytes < 512:
            raise ValueError("audit max_bytes must be at least 512")
        if self.keep is not None and self.keep < 1:
            raise ValueError("audit keep must be at least 1, or None to keep every file")
        if not 0 <= self.flush_interval_s <= 60:
            raise ValueError("audit flush_interval_s must be between 0 and 60")
        if self.max_pending < 1:
            raise ValueError("audit max_pending must be at least 1")


@dataclass(frozen=True, slots=True)
class AuditStats:
    seq: int  # of the last line appended; 0 before the first
    last_hash: str
    appended: int
    written: int  # lines on disk (fsynced), markers included
    pending: int  # lines waiting for the disk
    dropped: int  # lines lost to an overflowing queue
    write_errors: int
    torn: int  # torn lines found and committed to at start
    rotations: int
    deleted_files: int  # rotated files deleted to honour keep
    fsyncs: int
    bytes_written: int


@dataclass(slots=True)
class _Queued:
    """A sealed line waiting for the disk, or a run of lost lines (``line``
    None) that an ``audit.dropped`` line will stand for."""

    seq: int
    prev: str
    digest: str  # of the line; for a lost run, of its last line
    line: bytes | None
    count: int = 1


def _merge(a: _Queued | None, b: _Queued) -> _Queued:
    """Lost run ``a`` followed by lost line or run ``b``."""
    if a is None:
        return _Queued(b.seq, b.prev, b.digest, None, b.count)
    return _Queued(a.seq, a.prev, b.digest, None, a.count + b.count)


def _marker(run: _Queued) -> bytes:
    return _seal({"kind": DROPPED_KIND, "dropped": run.count, "resume": run.digest},
                 run.seq, run.prev)[1]


@dataclass(slots=True)
class _Counts:
    appended: int = 0
    written: int = 0
    dropped: int = 0
    write_errors: int = 0
    torn: int = 0
    rotations: int = 0
    deleted_files: int = 0
    fsyncs: int = 0
    bytes_written: int = 0
    failures_in_a_row: int = 0
    drops_unreported: int = 0


class AuditLog:
    """The writer. Open with ``await AuditLog.open(settings, on_line=...)`` (or
    ``async with``), ``append`` events, ``await close()``.

    ``on_line`` is called in the event loop with each line's bytes, without
    the newline, in order, once the line is on disk."""

    def __init__(self, settings: AuditSettings, *,
                 on_line: Callable[[bytes], None] | None = None) -> None:
        self.settings = settings
        self._on_line = on_line
        self._path = settings.directory / settings.name
        self._pending: deque[_Queued] = deque()
        self._pending_lines = 0
        self._seq = 1  # of the next line
        self._prev = GENESIS
        self._counts = _Counts()
        self._start_lines: list[bytes] = []  # written while opening, for on_line
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._writing: asyncio.Future[tuple[int, Exception | None]] | None = None
        self._last_ok = True
        self._last_flush = -float("inf")  # loop time a write last began
        self._task: asyncio.Task[None] | None = None
        self._open = False
        self._closed = False
        # Owned by the writing thread (one write at a time):
        self._fd: int | None = None
        self._size = 0  # of the current file, up to its last confirmed line
        self._rotated: list[int] = []
        self._next_number = 1

    @classmethod
    async def open(cls, settings: AuditSettings, *,
                   on_line: Callable[[bytes], None] | None = None) -> AuditLog:
        log = cls(settings, on_line=on_line)
        await log.start()
        return log

    async def start(self) -> None:
        if self._open or self._closed:
            raise AuditError("the audit log is already open")
        try:
            await asyncio.to_thread(self._recover)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log in {self.settings.directory}",
                             native=exc.strerror) from None
        self._open = True
        markers, self._start_lines = self._start_lines, []
        self._publish(markers)
        self._task = asyncio.create_task(self._flusher(), name="audit-flush")
        logger.info("audit log %s: continuing at seq %d", self._path, self._seq)

    async def __aenter__(self) -> AuditLog:
        if not self._open:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- the event loop's side ----

    def append(self, event: Mapping[str, Any]) -> int:
        """Seals the event as the next line and queues it; returns its seq.
        ValueError if the event uses seq, prev or hash, or is not JSON."""
        if not self._open or self._closed:
            raise AuditError("the audit log is not open")
        clash = _RESERVED.intersection(event)
        if clash:
            raise ValueError(f"an audit event cannot carry {', '.join(sorted(clash))}")
        seq, prev = self._seq, self._prev
        try:
            digest, line = _seal(event, seq, prev)
        except TypeError as exc:
            raise ValueError(f"an audit event must be JSON: {exc}") from None
        self._pending.append(_Queued(seq, prev, digest, line))
        self._pending_lines += 1
        self._seq, self._prev = seq + 1, digest
        self._counts.appended += 1
        if self._pending_lines > self.settings.max_pending:
            self._drop_oldest()
        self._wake.set()
        return seq

    def _drop_oldest(self) -> None:
        run: _Queued | None = None
        while self._pending and self._pending[0].line is None:
            run = _merge(run, self._pending.popleft())
        run = _merge(run, self._pending.popleft())
        while self._pending and self._pending[0].line is None:
            run = _merge(run, self._pending.popleft())
        self._pending.appendleft(run)
        self._pending_lines -= 1
        self._counts.dropped += 1
        self._counts.drops_unreported += 1
        episode = self._counts.drops_unreported
        if episode in (1, 10, 100) or episode % 1000 == 0:
            logger.error("audit log: %d lines wait for the disk; the oldest dropped, %d so far "
                         "(the log will record the gap)", self._pending_lines,
                         self._counts.dropped, extra={"gatewayd_reason": "audit_dropped"})

    async def flush(self) -> bool:
        """Writes and fsyncs what is queued; True if all of it is on disk."""
        async with self._lock:
            if self._writing is not None:  # left running by a cancelled flush
                await asyncio.shield(self._writing)
            if not self._pending:
                return True
            self._last_flush = asyncio.get_running_loop().time()
            batch = list(self._pending)
            self._pending.clear()
            self._pending_lines = 0
            data = [item.line if item.line is not None else _marker(item) for item in batch]
            writing = asyncio.ensure_future(asyncio.to_thread(self._write, data))
            # Settled by a callback, so that a cancelled flush loses nothing:
            # the thread's write goes on regardless.
            writing.add_done_callback(functools.partial(self._settle, batch, data))
            self._writing = writing
            with contextlib.suppress(Exception):  # settled and logged by the callback
                await asyncio.shield(writing)
            return self._last_ok

    def _settle(self, batch: list[_Queued], data: list[bytes],
                writing: asyncio.Future[tuple[int, Exception | None]]) -> None:
        self._writing = None
        error: BaseException | None
        if writing.cancelled():
            done, error = 0, asyncio.CancelledError()
        elif writing.exception() is not None:
            done, error = 0, writing.exception()
        else:
            done, error = writing.result()
        rest = batch[done:]
        if rest:
            self._pending.extendleft(reversed(rest))
            self._pending_lines += sum(1 for item in rest if item.line is not None)
            while self._pending_lines > self.settings.max_pending:
                self._drop_oldest()
        counts = self._counts
        counts.written += done
        written_runs = [item for item in batch[:done] if item.line is None]
        for run in written_runs:
            counts.drops_unreported = 0
            logger.error("audit log: %d lines lost (seq %d-%d) recorded in the chain", run.count,
                         run.seq, run.seq + run.count - 1,
                         extra={"gatewayd_reason": "audit_dropped"})
        self._last_ok = error is None
        if error is None:
            if counts.failures_in_a_row:
                logger.warning("audit log: writing again after %d failed attempts",
                               counts.failures_in_a_row)
            counts.failures_in_a_row = 0
        else:
            counts.write_errors += 1
            counts.failures_in_a_row += 1
            n = counts.failures_in_a_row
            if n in (1, 10, 100) or n % 1000 == 0:
                reason = ("disk_full" if isinstance(error, OSError)
                          and error.errno == errno.ENOSPC else "audit")
                logger.error("audit log %s: write failed (%s); %d lines kept to retry, "
                             "%d failures in a row", self._path,
                             getattr(error, "strerror", None) or repr(error),
                             self._pending_lines, n, extra={"gatewayd_reason": reason})
        self._publish(data[:done])

    def _publish(self, data: list[bytes]) -> None:
        if self._on_line is None:
            return
        for line in data:
            try:
                self._on_line(line[:-1])
            except Exception:
                logger.exception("audit log: the line hook failed")

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.flush_interval_s
        while True:
            await self._wake.wait()
            failures = self._counts.failures_in_a_row
            delay = interval if not failures else min(
                _BACKOFF_MAX_S, max(interval, 0.5) * 2 ** min(failures, 16))
            await asyncio.sleep(max(0.0, self._last_flush + delay - loop.time()))
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                logger.exception("audit log: flush failed")
            if self._pending:
                self._wake.set()

    async def close(self) -> None:
        """Writes what is queued (one attempt) and closes the file."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._open and not await self.flush():
            logger.error("audit log %s closed with %d lines not written", self._path,
                         self._pending_lines, extra={"gatewayd_reason": "audit"})
        await asyncio.to_thread(self._close_file)

    def stats(self) -> AuditStats:
        c = self._counts
        return AuditStats(
            seq=self._seq - 1, last_hash=self._prev, appended=c.appended, written=c.written,
            pending=self._pending_lines, dropped=c.dropped, write_errors=c.write_errors,
            torn=c.torn, rotations=c.rotations, deleted_files=c.deleted_files, fsyncs=c.fsyncs,
            bytes_written=c.bytes_written)

    # ---- the writing thread's side ----

    def _write(self, data: list[bytes]) -> tuple[int, Exception | None]:
        """Writes and fsyncs the lines in order, rotating as they fill files.
        Returns how many are on disk, and the error that stopped the rest."""
        done = 0
        chunk: list[bytes] = []
        size = 0
        try:
            self._ensure_open()
            for line in data:
                if self._size + size > 0 and self._size + size + len(line) > \
                        self.settings.max_bytes:
                    if chunk:
                        self._append(chunk)
                        done += len(chunk)
                        chunk, size = [], 0
                    self._rotate()
                    self._ensure_open()
                chunk.append(line)
                size += len(line)
            if chunk:
                self._append(chunk)
                done += len(chunk)
        except Exception as exc:  # OSError, or a bug: either way the rest is retried
            self._cut_back()
            return done, exc
        return done, None

    def _write_bytes(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _append(self, chunk: list[bytes]) -> None:
        assert self._fd is not None
        data = b"".join(chunk)
        self._write_bytes(self._fd, data)
        os.fsync(self._fd)
        self._size += len(data)
        self._counts.fsyncs += 1
        self._counts.bytes_written += len(data)

    def _ensure_open(self) -> None:
        if self._fd is not None:
            return
        created = not self._path.exists()
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            size = os.fstat(fd).st_size
            if created:
                self._fsync_directory()
            if size > self._size:
                # What a failed write left past the last confirmed line.
                os.ftruncate(fd, self._size)
            elif size < self._size:
                logger.error("audit log %s: the file is shorter (%d bytes) than written (%d)",
                             self._path, size, self._size, extra={"gatewayd_reason": "audit"})
                self._size = size
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _cut_back(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            # The next write reopens the file and cuts it back then.
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _close_file(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _fsync_directory(self) -> None:
        fd = os.open(self.settings.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        self._close_file()
        directory, name = self.settings.directory, self.settings.name
        target = directory / _rotated_name(name, self._next_number)
        while target.exists():  # never overwrite a file of the chain
            self._next_number += 1
            target = directory / _rotated_name(name, self._next_number)
        os.rename(self._path, target)
        self._rotated.append(self._next_number)
        self._next_number += 1
        self._size = 0
        self._counts.rotations += 1
        self._fsync_directory()
        keep = self.settings.keep
        while keep is not None and len(self._rotated) > keep:
            oldest = directory / _rotated_name(name, self._rotated.pop(0))
            try:
                oldest.unlink(missing_ok=True)
                self._counts.deleted_files += 1
            except OSError as exc:
                logger.warning("audit log: cannot delete %s: %s", oldest, exc.strerror)

    def _recover(self) -> None:
        """Finds where the chain ends and continues it (see the docstring)."""
        directory = self.settings.directory
        directory.mkdir(parents=True, exist_ok=True)
        files = _chain_files(directory, self.settings.name)
        self._rotated = [n for n, _ in files if n is not None]
        self._next_number = max(self._rotated, default=0) + 1
        self._size = self._path.stat().st_size if self._path.exists() else 0
        last: dict[str, Any] | None = None
        ending = b""  # what the current file needs written before new lines
        torn: list[bytes] = []
        damaged_seen = False
        for i, (number, path) in enumerate(reversed(files)):
            found, run, tail, damaged = _scan_end(path)
            if i == 0 and tail:
                state, whole = _tail_state(tail)
                if state == "line" and whole is not None:
                    found, run, damaged = whole, [], 0
                elif state == "torn" and number is None:
                    torn, run = [*run, tail], []
                else:
                    damaged, run = damaged + len(run) + 1, []
                if number is None:
                    ending = b"\n"
            if run or damaged:
                damaged_seen = True
                logger.error("audit log %s: %d damaged lines after the last intact one, "
                             "left as they are (verify reports them)", path,
                             len(run) + damaged, extra={"gatewayd_reason": "audit_damaged"})
            if found is not None:
                last = found
                break
        if last is not None:
            self._seq, self._prev = _next_link(last)
        elif damaged_seen:
            logger.error("audit log in %s: no intact line found; a new chain starts",
                         directory, extra={"gatewayd_reason": "audit_damaged"})
        if torn:
            digest, marker = _seal({"kind": TORN_KIND,
                                    "torn": [_torn_entry(b) for b in torn]},
                                   self._seq, self._prev)
            self._seq, self._prev = self._seq + 1, digest
            self._counts.torn += len(torn)
            self._counts.written += 1
            self._start_lines.append(marker)
            logger.warning("audit log %s: %d lines cut short by a power loss, kept and "
                           "committed to by an audit.torn line", self._path, len(torn),
                           extra={"gatewayd_reason": "audit_torn"})
            ending += marker
        if ending:
            # One write: a power loss now leaves at worst a new torn tail, found
            # again at the next start. Only a cut just after the newline leaves
            # the torn line without its marker; verify then reports it.
            self._ensure_open()
            self._append([ending])


def _scan_end(path: Path) -> tuple[dict[str, Any] | None, list[bytes], bytes, int]:
    """The end of a file: its last intact line, the run of unparseable lines
    after it, the bytes after the last newline, and how many other damaged
    lines follow the intact one. Reads only the last block when that holds
    an intact line."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL_BLOCK)
        while True:
            f.seek(start)
            data = f.read()
            if start:
                data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
            *bodies, tail = data.split(b"\n")
            last: dict[str, Any] | None = None
            run: list[bytes] = []
            damaged = 0
            for body in bodies:
                checked = _check(body)
                if checked.problem is None:
                    last, run, damaged = checked.obj, [], 0
                elif checked.problem == "unparseable":
                    run.append(body)
                else:
                    damaged += len(run) + 1
                    run = []
            if last is not None or start == 0:
                return last, run, tail, damaged
            start = 0
