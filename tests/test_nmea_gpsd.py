"""gatewayd's NMEA fixes against a real gpsd's, fix by fix.

Each capture from tests/nmea_captures.py (one per chipset family, and the
situations that test cycle assembly) goes through a running gpsd
(tests/gpsd_oracle.py) and through the decoder the daemon and replay use;
the TPV reports must agree one for one: as many fixes, and in each the same
time and mode, lat/lon to gpsd's 1e-9 degree, and altMSL, altHAE, speed,
track, climb, magvar, eph, epx, epy, epv, status and geoidSep to the last
digit gpsd prints, each present exactly where gpsd has it.

``GATEWAYD_GPSD_LOGS=DIR`` adds every ``*.log`` in DIR (gpsd's own test logs
from real receivers, say) to the comparison; they are not part of the
project.

Deliberate divergences from gpsd 3.22, applied to gatewayd's side before the
comparison (``_as_gpsd_sees``), and each checked below to be what it says:

- Talkers GI (NavIC) and GQ (QZSS, NMEA 4.11): gatewayd reads them, as the
  requirement names them; gpsd 3.22's packet lexer does not know them and
  drops their sentences unread.
- Standard sentences of 101 to 130 bytes: gatewayd reads them (receivers
  exceed NMEA's 82); gpsd 3.22 drops anything over its NMEA_MAX of 102 bytes
  with CR/LF.
- Talkers of instruments other than GNSS receivers (IN integrated
  navigation, EC ECDIS, II...): gpsd reads their GGA, RMC, GLL...; gatewayd
  reads the GNSS talkers the requirement names and skips the rest. A log
  whose fixes come from such talkers is left out of the comparison, saying so.

Framing differs too on damaged lines (gpsd drops sentences glued without a
line end, or ended by CR alone; gatewayd keeps those its checksum closes),
so the captures' line noise stays between whole lines.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from gpsd_oracle import GPSD, gpsd_tpvs
from nmea_captures import CAPTURES, capture

from gatewayd.nmea import SENTENCES, NmeaDecoder

pytestmark = pytest.mark.skipif(GPSD is None, reason="gpsd is not installed (Debian package "
                                                     "gpsd; make test installs it)")

# TPV field: what agreement is (None: equal; a number: the largest difference).
FIELDS: dict[str, float | None] = {
    "time": None, "mode": None, "status": None,
    "lat": 1.5e-9, "lon": 1.5e-9,
    "altMSL": 1.5e-4, "altHAE": 1.5e-4, "speed": 1.5e-3, "track": 1.5e-4, "climb": 1.5e-3,
    "magvar": 0.15, "eph": 1.5e-3, "epx": 1.5e-3, "epy": 1.5e-3, "epv": 1.5e-3,
    "geoidSep": 1.5e-3,
}

_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_GPSD_NMEA_MAX = 102  # bytes with CR/LF


def _as_gpsd_sees(data: bytes) -> bytes:
    """The capture without the sentences gpsd 3.22 drops unread that gatewayd
    reads: GI and GQ talkers, standard sentences over gpsd's NMEA_MAX."""
    kept = []
    for line in _LINE.findall(data):
        body = line.strip(b"\r\n")
        if body[:3] in (b"$GI", b"$GQ"):
            continue
        if body[:1] == b"$" and body[1:2] != b"P" and len(body) + 2 > _GPSD_NMEA_MAX:
            continue
        kept.append(line)
    return b"".join(kept)


def _ours(data: bytes) -> list[dict[str, Any]]:
    decoder = NmeaDecoder()
    return decoder.feed_block(data).tpvs() + decoder.flush_block().tpvs()


def compare(gpsd: list[dict[str, Any]], ours: list[dict[str, Any]]
            ) -> tuple[int, int, list[tuple[int, str, Any, Any]]]:
    """Fixes compared, fields compared, and each mismatch (fix, field, gpsd's
    value, ours); a fix one side has and the other has not is a mismatch."""
    mismatches = []
    fields = 0
    for k in range(max(len(gpsd), len(ours))):
        if k >= len(gpsd) or k >= len(ours):
            mismatches.append((k, "fix", gpsd[k] if k < len(gpsd) else None,
                               ours[k] if k < len(ours) else None))
            continue
        for name, tolerance in FIELDS.items():
            theirs, mine = gpsd[k].get(name), ours[k].get(name)
            fields += 1
            if theirs is None and mine is None:
                continue
            if theirs is None or mine is None or (
                    mine != theirs if tolerance is None else abs(mine - theirs) > tolerance):
                mismatches.append((k, name, theirs, mine))
    return min(len(gpsd), len(ours)), fields, mismatches


@functools.cache
def _gpsd(name: str) -> list[dict[str, Any]]:
    return gpsd_tpvs(capture(name))


def _ours_in_pieces(data: bytes, size: int) -> list[tuple[dict[str, Any], str]]:
    """Fields and members as the daemon reads them from C, fed ``size`` bytes
    at a time."""
    decoder = NmeaDecoder()
    got = []
    for k in range(0, len(data), size):
        got += decoder.feed_fields(data[k:k + size])
    return got + decoder.flush_fields()


@pytest.mark.parametrize("name", list(CAPTURES))
def test_fixes_agree_with_gpsd_fix_by_fix(name: str) -> None:
    data = capture(name)
    theirs = _gpsd(name)
    ours = _ours(_as_gpsd_sees(data))
    fixes, fields, mismatches = compare(theirs, ours)
    assert not mismatches, f"{name}: {len(mismatches)} of {fields} fields differ: " \
                           f"{mismatches[:5]}"
    assert len(theirs) == len(ours) == fixes and fixes >= 20
    # Each capture carries what it is there for: the fixes are not all alike.
    assert {t["mode"] for t in theirs} >= {3}
    assert any("time" in t for t in theirs) and any("lat" in t for t in theirs)


@pytest.mark.parametrize("name", list(CAPTURES))
@pytest.mark.parametrize("size", [97, 1 << 20])
def test_fixes_read_straight_from_c_agree_with_gpsd(name: str, size: int) -> None:
    # feed_fields skips the block of columns: what it reads from C's output
    # must still be gpsd's fixes, in pieces that cut sentences anywhere too.
    got = _ours_in_pieces(_as_gpsd_sees(capture(name)), size)
    fixes, fields, mismatches = compare(_gpsd(name), [{"class": "TPV", **f} for f, _ in got])
    assert not mismatches, f"{name}: {len(mismatches)} of {fields} fields differ: " \
                           f"{mismatches[:5]}"
    assert fixes == len(got) >= 20
    for fields_, members in got:  # the members are the fields as json writes them
        assert members == json.dumps(fields_, separators=(",", ":"))[1:-1]


def test_the_captures_cover_the_fields_and_the_situations() -> None:
    seen: dict[str, set[str]] = {}
    for name in CAPTURES:
        for tpv in _ours(capture(name)):
            for field in tpv:
                seen.setdefault(field, set()).add(name)
    assert set(FIELDS) <= set(seen)
    assert seen["epx"] >= {"ublox-gns", "garmin"}  # from GBS, from PGRME
    modes = {name: {t["mode"] for t in _ours(capture(name))} for name in CAPTURES}
    assert 1 in modes["sirf"] and 2 in modes["mediatek"]
    assert "mediatek" in seen["status"]  # DGPS
    times = [t["time"] for t in _ours(capture("midnight")) if "time" in t]
    assert times[0].startswith("2025-12-31T23:59") and times[-1].startswith("2026-01-01T00:00")
    enders = {}
    for name in ("ender-change", "garmin", "ublox-gns"):
        decoder = NmeaDecoder()
        decoder.feed(capture(name))
        enders[name] = decoder.cycle_enders
    assert enders["ender-change"] >= {"GGA", "GLL"}
    # Garmin's GLL, a second ahead, opens the next cycle: GGA stays the end
    assert enders["garmin"] == {"GGA"}
    assert enders["ublox-gns"] == {"GBS"}


def test_the_divergences_from_gpsd_are_what_the_module_says() -> None:
    data = capture("qzss-navic")
    seen = _as_gpsd_sees(data)
    assert b"$GI" not in seen and b"$GQ" not in seen and len(seen) < len(data)
    decoder = NmeaDecoder()
    decoder.feed(data)
    read = decoder.stats().sentences
    decoder = NmeaDecoder()
    decoder.feed(seen)
    assert read - decoder.stats().sentences == data.count(b"$GI") + data.count(b"$GQ")
    # GIGSA's satellites count towards the fix; without them its mode is
    # still 3D (gpsd's GGA), so only what gpsd does not see differs
    assert _ours(data) != _ours(seen)
    for name in CAPTURES:  # no other capture has anything gpsd drops unread
        if name != "qzss-navic":
            assert _as_gpsd_sees(capture(name)) == capture(name), name


def _gpsd_logs() -> list[Path]:
    where = os.environ.get("GATEWAYD_GPSD_LOGS")
    return sorted(Path(where).glob("*.log")) if where else []


# Talkers other than GNSS ones that gpsd 3.22's packet lexer lets through.
_GPSD_OTHER_TALKERS = {"II", "IN", "WI", "HC", "TI", "EC", "SD", "ST", "YX"}


def _foreign_talkers(data: bytes) -> set[str]:
    """Talkers gpsd reads sentences from that gatewayd reads from GNSS only."""
    found = re.findall(rb"^\$([A-Z]{2})([A-Z]{3}),", data, re.MULTILINE)
    return {talker.decode() for talker, kind in found
            if kind.decode() in SENTENCES and talker.decode() in _GPSD_OTHER_TALKERS}


@pytest.mark.skipif(not _gpsd_logs(), reason="GATEWAYD_GPSD_LOGS names no directory of logs")
@pytest.mark.parametrize("path", _gpsd_logs(), ids=lambda p: p.name)
def test_logs_from_real_receivers_agree_with_gpsd(path: Path) -> None:
    data = path.read_bytes()
    foreign = _foreign_talkers(data)
    if foreign:
        pytest.skip(f"fixes from talkers gatewayd does not read: {sorted(foreign)}")
    theirs = gpsd_tpvs(data)
    fixes, fields, mismatches = compare(theirs, _ours(_as_gpsd_sees(data)))
    print(f"{path.name}: {fixes} fixes, {fields} fields, {len(mismatches)} mismatches")
    assert not mismatches, mismatches[:5]
