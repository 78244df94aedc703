"""NMEA 0183 decoding: serial bytes in, one gpsd-style fix per reporting cycle out.

Framing and checksums run in C (``gw_nmea_scan``) over whole blocks; Python
splits the fields of good sentences only. Fixes are assembled as the reference
GPS daemon, gpsd, assembles them: a reporting cycle ends when the sentence
time changes by more than 10 ms, and the sentence type seen last before such a
change is learned as the cycle's last, so later cycles are reported as soon as
it arrives. Fix fields carry gpsd's TPV names and units; a field the receiver
did not give is absent, never 0.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from gatewayd._native import ffi, lib

logger = logging.getLogger(__name__)

__all__ = ["MAX_SENTENCE", "Fix", "NmeaDecoder", "NmeaStats"]

MAX_SENTENCE = 130  # the standard says 82; receivers exceed it
_KNOTS = 1852.0 / 3600.0
_KMH = 1000.0 / 3600.0
_CYCLE_GAP_S = 0.01
TALKERS = frozenset({"GP", "GN", "GL", "GA", "GB", "BD", "QZ", "GI", "GQ"})
SENTENCES = frozenset({"GGA", "RMC", "GNS", "GLL", "VTG", "GSA", "GSV", "ZDA", "GST", "GBS"})
_SCAN_RECORDS = 4096
# gpsd's JSON precision for each field.
_DIGITS = {"lat": 9, "lon": 9, "altMSL": 3, "altHAE": 3, "geoidSep": 3, "speed": 3,
           "track": 4, "magvar": 1, "epx": 3, "epy": 3, "epv": 3}

# GGA quality → gpsd TPV status (0 unknown/none, 2 DGPS, 3 RTK fixed, 4 RTK float, 6 DR).
_GGA_STATUS = {"2": 2, "3": 2, "4": 3, "5": 4, "6": 6}
_FIELDS = ("time", "mode", "status", "lat", "lon", "altMSL", "altHAE", "geoidSep", "speed",
           "track", "climb", "magvar", "eph", "epx", "epy", "epv")


@dataclass(frozen=True, slots=True)
class Fix:
    """One reporting cycle's fix, in gpsd TPV names and units."""

    offset: int  # byte offset of the cycle's first sentence in the stream
    mode: int
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


def _lat_lon(value: str, hemi: str, degree_digits: int) -> float | None:
    if not value or not hemi or len(value) < degree_digits + 1:
        return None
    degrees = float(value[:degree_digits]) + float(value[degree_digits:]) / 60.0
    if hemi in ("S", "W"):
        return -degrees
    if hemi in ("N", "E"):
        return degrees
    return None


def _time_of_day(value: str) -> float | None:
    if len(value) < 6:
        return None
    seconds = int(value[:2]) * 3600 + int(value[2:4]) * 60 + float(value[4:])
    return seconds if 0 <= seconds < 86401 else None


def _float(value: str) -> float | None:
    if not value:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(slots=True)
class _Cycle:
    offset: int
    tod: float | None = None
    values: dict[str, Any] = field(default_factory=dict)
    no_fix: bool = False
    fix_claimed: bool = False
    gsa_mode: int | None = None
    reported: bool = False


class NmeaDecoder:
    """Incremental: ``feed`` bytes as they come, ``flush`` at the end."""

    def __init__(self) -> None:
        self._pending = b""
        self._offset = 0  # stream offset of self._pending[0]
        self._stats = NmeaStats()
        self._cycle: _Cycle | None = None
        self._last_tag: str | None = None
        self._enders: set[str] = set()
        self._date: dt.date | None = None
        self._last_tod: float | None = None
        self._previous: tuple[float, float] | None = None  # (epoch s, altHAE) for climb
        self._out: list[Fix] = []
        self._records = ffi.new("int64_t[]", 3 * _SCAN_RECORDS)
        self._consumed = ffi.new("int64_t *")
        self._garbage = ffi.new("int64_t *")

    def stats(self) -> NmeaStats:
        return self._stats

    @property
    def holding(self) -> bool:
        """Whether data fed so far waits for a fix not yet reported: an open
        cycle, or the start of a sentence."""
        return bool(self._pending) or (self._cycle is not None and not self._cycle.reported)

    @property
    def cycle_enders(self) -> frozenset[str]:
        return frozenset(self._enders)

    # ---- framing ----

    def feed(self, data: bytes) -> list[Fix]:
        self._scan(self._pending + data if self._pending else data, final=False)
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Fix]:
        """Ends the stream: the last partial sentence and the open cycle."""
        if self._pending:
            self._scan(self._pending, final=True)
        self._close_cycle()
        out, self._out = self._out, []
        return out

    def _scan(self, buf: bytes, *, final: bool) -> None:
        start = 0
        stats = self._stats
        while True:
            view = buf[start:] if start else buf
            self._garbage[0] = 0
            count = lib.gw_nmea_scan(view, len(view), MAX_SENTENCE, final, self._records,
                                     _SCAN_RECORDS, self._consumed, self._garbage)
            stats.garbage_bytes += self._garbage[0]
            rec = self._records
            for k in range(count):
                s, e, status = rec[3 * k], rec[3 * k + 1], rec[3 * k + 2]
                if status == 0 or status == 4:
                    if status == 4:
                        stats.no_checksum += 1
                        body = view[s + 1:e].rstrip(b" \t")
                    else:
                        body = view[s + 1:e].rstrip(b" \t")[:-3]
                    self._sentence(body, self._offset + start + s)
                elif status == 1:
                    stats.bad_checksum += 1
                elif status == 2:
                    stats.too_long += 1
                else:
                    stats.truncated += 1
            consumed = self._consumed[0]
            start += consumed
            if count < _SCAN_RECORDS or consumed == 0:
                break
        self._pending = buf[start:]
        # The pending bytes are at most one partial sentence, by construction.
        self._offset += start

    # ---- sentences ----

    def _sentence(self, body: bytes, offset: int) -> None:
        stats = self._stats
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            stats.malformed += 1
            return
        fields = text.split(",")
        tag = fields[0]
        if tag[:1] == "P":
            stats.skipped_proprietary += 1
            return
        talker, kind = tag[:2], tag[2:]
        if talker not in TALKERS or kind not in SENTENCES:
            stats.skipped_unknown += 1
            return
        stats.sentences += 1
        try:
            handler = getattr(self, "_" + kind.lower())
            handler(fields, offset)
        except (ValueError, IndexError):
            stats.malformed += 1
            return
        self._last_tag = kind
        if kind in self._enders and self._cycle is not None:
            self._report()

    def _timed(self, tod: float | None, offset: int) -> _Cycle:
        """The cycle a sentence with time-of-day ``tod`` belongs to."""
        cycle = self._cycle
        if tod is not None and cycle is not None and cycle.tod is not None:
            gap = abs(tod - cycle.tod)
            if min(gap, 86400 - gap) > _CYCLE_GAP_S:
                # The time moved on: the sentence seen last ends a cycle.
                if self._last_tag is not None and self._last_tag not in self._enders:
                    self._enders.add(self._last_tag)
                    logger.debug("NMEA cycle ender learned: %s", self._last_tag)
                self._close_cycle()
                cycle = None
        if cycle is None:
            cycle = self._cycle = _Cycle(offset)
        if tod is not None and cycle.tod is None:
            cycle.tod = tod
            self._roll_date(tod)
        return cycle

    def _roll_date(self, tod: float) -> None:
        # Past midnight before a dated sentence says so: the day moves on.
        if self._date is not None and self._last_tod is not None and tod < self._last_tod - 43200:
            self._date += dt.timedelta(days=1)
        self._last_tod = tod

    def _untimed(self, offset: int) -> _Cycle:
        if self._cycle is None:
            self._cycle = _Cycle(offset)
        return self._cycle

    def _set_date(self, day: int, month: int, year: int) -> None:
        self._date = dt.date(year, month, day)

    def _position(self, cycle: _Cycle, lat: float | None, lon: float | None) -> None:
        if lat is not None and lon is not None and -90 <= lat <= 90 and -180 <= lon <= 180:
            cycle.values["lat"] = lat
            cycle.values["lon"] = lon
            cycle.fix_claimed = True

    def _rmc(self, f: list[str], offset: int) -> float | None:
        tod = _time_of_day(f[1])
        if f[9] and len(f[9]) == 6:
            day, month, yy = int(f[9][:2]), int(f[9][2:4]), int(f[9][4:6])
            self._set_date(day, month, 2000 + yy if yy < 80 else 1900 + yy)
        cycle = self._timed(tod, offset)
        if f[2] != "A" or (len(f) > 12 and f[12] == "N"):
            cycle.no_fix = True
            return tod
        self._position(cycle, _lat_lon(f[3], f[4], 2), _lat_lon(f[5], f[6], 3))
        speed, track = _float(f[7]), _float(f[8])
        if speed is not None:
            cycle.values["speed"] = speed * _KNOTS
        if track is not None:
            cycle.values["track"] = track
        if len(f) > 11 and f[10]:
            magvar = float(f[10])
            cycle.values["magvar"] = -magvar if f[11] == "W" else magvar
        return tod

    def _gga(self, f: list[str], offset: int) -> float | None:
        tod = _time_of_day(f[1])
        cycle = self._timed(tod, offset)
        quality = f[6]
        if quality in ("", "0"):
            cycle.no_fix = True
            return tod
        self._position(cycle, _lat_lon(f[2], f[3], 2), _lat_lon(f[4], f[5], 3))
        if quality in _GGA_STATUS:
            cycle.values["status"] = _GGA_STATUS[quality]
        self._altitude(cycle, _float(f[9]), _float(f[11]) if len(f) > 11 else None)
        return tod

    def _altitude(self, cycle: _Cycle, alt: float | None, separation: float | None) -> None:
        if alt is None:
            return
        cycle.values["altMSL"] = alt
        if separation is not None:
            cycle.values["geoidSep"] = separation
            cycle.values["altHAE"] = alt + separation

    def _gns(self, f: list[str], offset: int) -> float | None:
        tod = _time_of_day(f[1])
        cycle = self._timed(tod, offset)
        modes = f[6]
        if not modes or all(m == "N" for m in modes):
            cycle.no_fix = True
            return tod
        self._position(cycle, _lat_lon(f[2], f[3], 2), _lat_lon(f[4], f[5], 3))
        self._altitude(cycle, _float(f[9]), _float(f[10]))
        return tod

    def _gll(self, f: list[str], offset: int) -> float | None:
        tod = _time_of_day(f[5]) if len(f) > 5 else None
        cycle = self._timed(tod, offset)
        if len(f) < 7 or f[6] != "A" or (len(f) > 7 and f[7] == "N"):
            cycle.no_fix = True
            return tod
        self._position(cycle, _lat_lon(f[1], f[2], 2), _lat_lon(f[3], f[4], 3))
        return tod

    def _vtg(self, f: list[str], offset: int) -> None:
        cycle = self._untimed(offset)
        if len(f) > 9 and f[9] == "N":
            return
        track = _float(f[1])
        if track is not None:
            cycle.values["track"] = track
        knots = _float(f[5]) if len(f) > 5 else None
        kmh = _float(f[7]) if len(f) > 7 else None
        if knots is not None:
            cycle.values["speed"] = knots * _KNOTS
        elif kmh is not None:
            cycle.values["speed"] = kmh * _KMH

    def _gsa(self, f: list[str], offset: int) -> None:
        cycle = self._untimed(offset)
        if f[2] in ("1", "2", "3"):
            # Several GSA per cycle (one per constellation): the best one wins.
            cycle.gsa_mode = max(cycle.gsa_mode or 0, int(f[2]))

    def _gsv(self, f: list[str], offset: int) -> None:
        self._untimed(offset)

    def _zda(self, f: list[str], offset: int) -> float | None:
        tod = _time_of_day(f[1])
        if f[2] and f[3] and f[4]:
            self._set_date(int(f[2]), int(f[3]), int(f[4]))
        self._timed(tod, offset)
        return tod

    def _gst(self, f: list[str], offset: int) -> float | None:
        # gpsd keeps GST in its own report, not in TPV: it only dates the cycle.
        tod = _time_of_day(f[1])
        self._timed(tod, offset)
        return tod

    def _gbs(self, f: list[str], offset: int) -> float | None:
        tod = _time_of_day(f[1])
        cycle = self._timed(tod, offset)
        for name, value in (("epy", f[2]), ("epx", f[3]), ("epv", f[4])):
            number = _float(value)
            if number is not None:
                cycle.values[name] = number
        return tod

    # ---- cycles ----

    def _report(self) -> None:
        cycle = self._cycle
        if cycle is None or cycle.reported:
            return
        cycle.reported = True
        values = dict(cycle.values)
        if cycle.no_fix and not cycle.fix_claimed:
            mode = 1
        elif cycle.gsa_mode is not None:
            mode = cycle.gsa_mode
        elif "altMSL" in values:
            mode = 3
        elif "lat" in values:
            mode = 2
        else:
            mode = 1
        if mode == 1:
            for name in ("lat", "lon", "altMSL", "altHAE", "speed", "track"):
                values.pop(name, None)
        elif mode == 2:
            for name in ("altMSL", "altHAE"):
                values.pop(name, None)
        epoch = None
        if cycle.tod is not None and self._date is not None:
            base = dt.datetime(self._date.year, self._date.month, self._date.day, tzinfo=dt.UTC)
            stamp = base + dt.timedelta(seconds=cycle.tod)
            values["time"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            epoch = stamp.timestamp()
        if mode == 3 and epoch is not None and "altHAE" in values:
            if self._previous is not None and 0 < epoch - self._previous[0] <= 10:
                values["climb"] = round((values["altHAE"] - self._previous[1]) /
                                        (epoch - self._previous[0]), 3)
            self._previous = (epoch, values["altHAE"])
        if not values and mode == 1:
            return  # a cycle of satellites in view only: nothing to report
        for name, digits in _DIGITS.items():
            if name in values:
                values[name] = round(values[name], digits)
        self._stats.fixes += 1
        self._out.append(Fix(offset=cycle.offset, mode=mode, **values))

    def _close_cycle(self) -> None:
        if self._cycle is not None:
            self._report()
        self._cycle = None
