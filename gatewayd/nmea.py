"""NMEA 0183 decoding: serial bytes in, gpsd's fixes out.

Framing, checksums, fields and fix assembly run in C (``gw_nmea_decode``)
over whole blocks; Python sees only the fixes, in columns (``Fixes``), as
``Fix`` objects, or, for input that comes a cycle or so at a time, as TPV
fields with their JSON members, read straight from C's output
(``feed_fields``). Fixes are assembled as the reference GPS daemon, gpsd (3.22),
assembles them, sentence by sentence: a reporting cycle starts when the
sentence time changes by more than 10 ms, the timed sentence seen last before
such a change is learned as the cycle's end, and a fix is reported when that
sentence arrives. Until a cycle's end is known, every sentence that gives a
position or a mode is reported, as gpsd does. Fields the receiver did not
give but gpsd derives (altHAE from its geoid model, magvar from its
declination model, speed and climb from successive fixes, eph/epx/epy/epv
from DOPs) are derived the same way; anything else the receiver did not give
is absent, never 0. Fix fields carry gpsd's TPV names and units, rounded to
gpsd's JSON precision.

Fields are read as gpsd reads them: a number is the digits a field starts
with. A sentence with fewer fields than gpsd needs for its type, or with
bytes that are not printable ASCII, counts as malformed and changes nothing.
"""

from __future__ import annotations

import itertools
import logging
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from gatewayd._native import ffi, lib

logger = logging.getLogger(__name__)

__all__ = ["MAX_SENTENCE", "Fix", "Fixes", "NmeaDecoder", "NmeaStats"]

MAX_SENTENCE = 130  # the standard says 82; receivers exceed it
TALKERS = frozenset({"GP", "GN", "GL", "GA", "GB", "BD", "QZ", "GI", "GQ"})
# The C decoder's order: bit k of a learned cycle ender is SENTENCE_TYPES[k].
# The proprietary ones are those gpsd reads into a fix (Garmin's error
# estimates, altitude and fix data, SiRF's error estimates, Magellan's status,
# SkyTraq's position and velocity); other $P... sentences are skipped.
SENTENCE_TYPES = ("GGA", "RMC", "GNS", "GLL", "VTG", "GSA", "GSV", "ZDA", "GST", "GBS",
                  "PGRME", "PGRMZ", "PSRFEPE", "PMGNST", "PSTI", "PGRMF")
SENTENCES = frozenset(SENTENCE_TYPES[:10])
# gw_fix.values, in TPV order after time and mode.
_VALUES = ("status", "lat", "lon", "altMSL", "altHAE", "geoidSep", "speed", "track", "climb",
           "magvar", "eph", "epx", "epy", "epv")
_LAT, _LON = _VALUES.index("lat"), _VALUES.index("lon")
_FIX_DTYPE = np.dtype([("offset", "<i8"), ("mode", "<i4"), ("present", "<u4"),
                       ("values", "<f8", (len(_VALUES),)), ("time", "S24")])
_FIX_CAPACITY = 1024  # fixes per call into C; a 64 KiB block makes about 150
_FIX = struct.Struct(f"<qiI{len(_VALUES)}d24s")  # one gw_fix, as _FIX_DTYPE has it
if not _FIX.size == _FIX_DTYPE.itemsize == ffi.sizeof("gw_fix"):  # pragma: no cover
    raise ImportError("gw_fix's layout is not the one nmea reads")  # a build error
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Fix:
    """One reporting cycle's fix, in gpsd TPV names and units."""

    offset: int  # byte offset of the cycle's first sentence in the stream
    mode: int  # 0 when no sentence of the cycle has said one yet
    time: str | None = None
    status: int | None = None
    lat: float | None = None
    lon: float | None = None
    altMSL: float | None = None
    altHAE: float | None = None
    geoidSep: float | None = None
    speed: float | None = None
    track: float | None = None
    climb: float | None = None
    magvar: float | None = None
    eph: float | None = None
    epx: float | None = None
    epy: float | None = None
    epv: float | None = None

    def to_tpv(self) -> dict[str, Any]:
        """gpsd's TPV fields that this fix has."""
        out: dict[str, Any] = {"class": "TPV"}
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


_FIELDS = ("time", "mode", *_VALUES)

# For a set of given values (gw_fix.present): their names, and how to pick
# them from a row of values.
_Plan = tuple[tuple[str, ...], Callable[[Sequence[float]], Sequence[float]], bool, str]
_plans: dict[int, _Plan] = {}


def _plan(present: int) -> _Plan:
    plan = _plans.get(present)
    if plan is None:
        index = [k for k in range(len(_VALUES)) if present >> k & 1]
        names = tuple(_VALUES[k] for k in index)
        # itemgetter of one index gives the value, not a tuple of it.
        pick = operator.itemgetter(*index) if len(index) > 1 else _Pick(tuple(index))
        # The values as JSON: str() of a float is its repr, as json writes it,
        # and a fix's values are finite numbers.
        json = "".join(f',"{name}":{{}}' for name in names)
        plan = _plans[present] = (names, pick, bool(present & 1), json)
    return plan


class _Pick:
    def __init__(self, index: tuple[int, ...]) -> None:
        self.index = index

    def __call__(self, row: Sequence[float]) -> Sequence[float]:
        return tuple(row[k] for k in self.index)


@dataclass(frozen=True, slots=True)
class Fixes:
    """Fixes in columns, as the decoder assembles them (a ``_FIX_DTYPE`` array):
    how a block's fixes travel through the pipeline, one item per block."""

    rows: np.ndarray

    @classmethod
    def empty(cls) -> Fixes:
        return cls(np.empty(0, _FIX_DTYPE))

    @classmethod
    def concat(cls, parts: Sequence[Fixes]) -> Fixes:
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.rows for p in parts]) if parts else np.empty(0, _FIX_DTYPE))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: slice) -> Fixes:
        return Fixes(self.rows[index])

    def lonlat(self) -> np.ndarray:
        """(N, 2) longitude, latitude; NaN where a fix has no position."""
        values = self.rows["values"]
        has = (self.rows["present"] & (1 << _LAT)) != 0
        out = np.full((len(self.rows), 2), np.nan)
        out[has, 0] = values[has, _LON]
        out[has, 1] = values[has, _LAT]
        return out

    def fields(self) -> list[dict[str, Any]]:
        """Each fix's TPV fields, without the class, in gpsd's order."""
        return [fields for fields, _ in self._fields(json=False)]

    def fields_json(self) -> list[tuple[dict[str, Any], str]]:
        """Each fix's TPV fields, and the same as JSON members, as
        ``json.dumps`` writes them with compact separators, without braces."""
        return self._fields(json=True)

    def _fields(self, *, json: bool) -> list[tuple[dict[str, Any], str]]:
        return _fields_of(self.rows, _members_json(self.rows) if json else None)

    def tpvs(self) -> list[dict[str, Any]]:
        """gpsd TPV objects."""
        return [{"class": "TPV", **fields} for fields in self.fields()]

    def to_list(self) -> list[Fix]:
        return [Fix(offset, **fields)
                for offset, fields in zip(self.rows["offset"].tolist(), self.fields())]


def _fields_of(rows: np.ndarray, written: list[str | None] | None
               ) -> list[tuple[dict[str, Any], str]]:
    """Each fix's TPV fields, and, where ``written`` gives the members C wrote
    (see ``_members_json``), the same as JSON members ("" without them)."""
    # Two conversions to Python values in all: numpy's per call costs more
    # than a fix's worth of work on the one-fix blocks of MQTT input.
    return _fields_from(rows[["mode", "present", "time"]].tolist(), rows["values"].tolist(),
                        written)


def _fields_from(heads: list[tuple[int, int, bytes]], rows: list[Sequence[float]],
                 written: list[str | None] | None) -> list[tuple[dict[str, Any], str]]:
    """``_fields_of`` of fixes as Python values: each one's (mode, present,
    time) and values."""
    out = []
    text = ""
    for (mode, present, stamp), values, done in zip(
            heads, rows, itertools.repeat(None) if written is None else written):
        time = stamp.decode("ascii")  # gpsd's ISO 8601: ASCII, NUL-padded as S24
        fields: dict[str, Any] = {"time": time, "mode": mode} if time else {"mode": mode}
        names, pick, status, members = _plans.get(present) or _plan(present)
        picked = pick(values)
        fields.update(zip(names, picked))
        if status:
            fields["status"] = int(fields["status"])
            picked = (fields["status"], *picked[1:])
        if written is not None:
            # The time is digits and punctuation only: nothing to escape.
            text = (f'"time":"{time}","mode":{mode}' if time else f'"mode":{mode}') + \
                (done if done is not None else members.format(*picked))
        out.append((fields, text))
    return out


def _members_json(rows: np.ndarray | None, out: Any = None, text: Any = None,
                  ends: Any = None, count: int = -1) -> list[str | None]:
    """Each fix's values as JSON members, written in C as json.dumps would
    write them (None for a fix Python must write: see gw_fix_json). ``out``:
    the C array ``rows`` is a view of, if it is one; ``text`` and ``ends``:
    buffers to write into, if they are large enough for ``rows``; ``count``:
    how many fixes of ``out`` there are, in place of ``rows``."""
    n = len(rows) if rows is not None else count
    if not n:
        return []
    if out is None:
        assert rows is not None
        rows = np.ascontiguousarray(rows)
        out = ffi.from_buffer("gw_fix[]", rows)
    cap = n * _JSON_PER_FIX
    if text is None or len(text) < cap or len(ends) < n:
        text, ends = ffi.new("char[]", cap), ffi.new("int64_t[]", n)
    used = lib.gw_fix_json(out, n, text, cap, ends)
    if used < 0:  # pragma: no cover - _JSON_PER_FIX holds the longest fix
        return [None] * n
    written = ffi.unpack(text, used).decode("ascii")
    members: list[str | None] = []
    start = 0
    for end in ffi.unpack(ends, n):
        if end < 0:
            members.append(None)
            continue
        members.append(written[start:end])
        start = end
    return members


_JSON_PER_FIX = 512  # 14 members of at most 12 + 4 + 20 bytes each
_FEW_FIXES = 8  # fixes a decoder keeps room to write the members of


@dataclass(slots=True)
class NmeaStats:
    sentences: int = 0
    bad_checksum: int = 0
    no_checksum: int = 0
    too_long: int = 0
    truncated: int = 0
    garbage_bytes: int = 0
    skipped_proprietary: int = 0
    skipped_unknown: int = 0
    malformed: int = 0
    fixes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class NmeaDecoder:
    """Incremental: ``feed`` bytes as they come, ``flush`` at the end.

    ``feed`` and ``flush`` give ``Fix`` objects; ``feed_block`` and
    ``flush_block`` the same fixes in columns."""

    def __init__(self, capacity: int = _FIX_CAPACITY) -> None:
        """``capacity``: fixes C writes a call, at most; a block with more takes
        more calls. Its room is the decoder's largest part (152 bytes a fix):
        a source of a cycle a message needs little of it."""
        self._capacity = max(1, capacity)
        self._pending = b""
        self._offset = 0  # stream offset of self._pending[0]
        self._state = ffi.new("gw_nmea *")
        lib.gw_nmea_init(self._state)
        self._stats = self._state.stats  # a view into the state: one step less to read
        self._out = ffi.new("gw_fix[]", self._capacity)
        self._view = ffi.buffer(self._out)
        self._rows = np.frombuffer(self._view, dtype=_FIX_DTYPE)
        self._consumed = ffi.new("int64_t *")
        # Where feed_fields has C write a few fixes' members (more take their own).
        self._text = ffi.new("char[]", _FEW_FIXES * _JSON_PER_FIX)
        self._ends = ffi.new("int64_t[]", _FEW_FIXES)

    @property
    def bad_checksums(self) -> int:
        """``stats().bad_checksum``, without the rest."""
        return int(self._stats.bad_checksum)

    def stats(self) -> NmeaStats:
        s = self._state.stats
        return NmeaStats(s.sentences, s.bad_checksum, s.no_checksum, s.too_long, s.truncated,
                         s.garbage_bytes, s.skipped_proprietary, s.skipped_unknown,
                         s.malformed, s.fixes)

    @property
    def holding(self) -> bool:
        """Whether data fed so far waits for more: the start of a sentence.
        (A fix is reported with the sentence that ends its cycle; what comes
        after that sentence in the same cycle is, as in gpsd, not reported.)"""
        return bool(self._pending)

    @property
    def cycle_enders(self) -> frozenset[str]:
        return _types(self._state.enders)

    def feed(self, data: bytes) -> list[Fix]:
        return self.feed_block(data).to_list()

    def flush(self) -> list[Fix]:
        """Ends the stream: the last partial sentence, if its checksum closes it."""
        return self.flush_block().to_list()

    def feed_block(self, data: bytes) -> Fixes:
        return Fixes.concat(self._decode(self._pending + data if self._pending else data,
                                         final=False, take=self._copy))

    def flush_block(self) -> Fixes:
        if not self._pending:
            return Fixes.empty()
        return Fixes.concat(self._decode(self._pending, final=True, take=self._copy))

    def feed_fields(self, data: bytes) -> list[tuple[dict[str, Any], str]]:
        """``feed_block(data).fields_json()``, read straight from C's output:
        no block is made. For input that comes a cycle or so at a time."""
        parts = self._decode(self._pending + data if self._pending else data, final=False,
                             take=self._fields_json)
        return parts[0] if len(parts) == 1 else list(itertools.chain.from_iterable(parts))

    def flush_fields(self) -> list[tuple[dict[str, Any], str]]:
        """``flush_block().fields_json()``, as ``feed_fields`` reads it."""
        if not self._pending:
            return []
        return list(itertools.chain.from_iterable(
            self._decode(self._pending, final=True, take=self._fields_json)))

    def _copy(self, count: int) -> Fixes:
        return Fixes(self._rows[:count].copy())

    def _fields_json(self, count: int) -> list[tuple[dict[str, Any], str]]:
        if count == 1:  # one cycle (an MQTT message): read without numpy, in one call
            _, mode, present, *values, stamp = _FIX.unpack_from(self._view)
            return _fields_from([(mode, present, stamp.rstrip(b"\0"))], [values],
                                _members_json(None, self._out, self._text, self._ends, 1))
        rows = self._rows[:count]
        return _fields_of(rows, _members_json(rows, self._out, self._text, self._ends))

    def _decode(self, buf: bytes, *, final: bool, take: Callable[[int], _T]) -> list[_T]:
        """Decodes ``buf``: what ``take(count)`` makes of each run of fixes C
        writes to ``self._out`` (which the next run overwrites)."""
        enders = self._state.enders
        # Bytes go to C as they are; other buffers, and bytes from an offset,
        # through a pointer.
        data: Any = buf if type(buf) is bytes else ffi.from_buffer("uint8_t[]", buf)
        parts = []
        start = 0
        while True:
            if start and type(data) is bytes:
                data = ffi.from_buffer("uint8_t[]", buf)
            count = lib.gw_nmea_decode(self._state, data + start if start else data,
                                       len(buf) - start, self._offset + start, MAX_SENTENCE,
                                       final, self._out, self._capacity, self._consumed)
            if count:
                parts.append(take(count))
            consumed = self._consumed[0]
            start += consumed
            # Short of room, C stops between sentences: go on from there.
            if consumed == 0 or count < self._capacity:
                break
        # The pending bytes are at most one partial sentence, by construction.
        self._pending = buf[start:]
        self._offset += start
        if self._state.enders != enders:
            for tag in _types(self._state.enders & ~enders):
                logger.debug("NMEA cycle ender learned: %s", tag)
        return parts


def _types(mask: int) -> frozenset[str]:
    return frozenset(t for k, t in enumerate(SENTENCE_TYPES) if mask >> k & 1)
