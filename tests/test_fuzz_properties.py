"""Hostile input for every decoder and for configuration loading, as properties.

Each decoder takes bytes from the field: only the project's own errors may
leave it (NMEA's ``feed`` raises nothing at all: bad input is counted), every
example finishes quickly, and a small header cannot make it allocate much.
The inputs are built from the formats' structure and then damaged, and where
an oracle exists its answer is checked too: the generator itself, the decoder
fed the same stream whole, laspy, shapely, and tomllib.

An input found mishandled is pinned by a strict xfail test at the end of this
file, and listed in ``KNOWN`` so that the broad properties go on checking
everything else. Once a fix lands its xfail test passes, strict xfail fails
the run, and both the test's marker and the ``KNOWN`` entry go; the test stays.

The default profile runs a fixed, modest set of examples so that the suite
stays quick and repeatable; ``HYPOTHESIS_PROFILE=long`` runs many more,
randomised, and keeps what it finds in ``$TMPDIR/gatewayd-hypothesis`` (or
``$HYPOTHESIS_STORAGE_DIRECTORY``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import math
import os
import struct
import tempfile
import tracemalloc
import warnings
from collections.abc import Callable
from functools import reduce
from pathlib import Path
from typing import Any

import laspy
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from gatewayd.config import load_config, render_config
from gatewayd.errors import ConfigError, DecodeError, GatewayError
from gatewayd.geojson import decode_geojson
from gatewayd.gpsjson import _json_tpv, gps_json_fix, gps_json_tpv
from gatewayd.las import decode_las
from gatewayd.nmea import MAX_SENTENCE, NmeaDecoder
from gatewayd.pcd import decode_pcd, encode_pcd

# ---- profiles -------------------------------------------------------------

_SCALE = 25 if os.environ.get("HYPOTHESIS_PROFILE") == "long" else 1

# Hypothesis keeps caches (and, in the long profile, what it found) in a
# .hypothesis directory under the working directory, which pytest's collection
# then stumbles over; keep it out of the checkout.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "gatewayd-hypothesis")


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Settings for one property: ``examples`` by default, 25 times that in
    the long profile. Time is bounded by the test's timeout, not a deadline,
    since a shared machine's pauses are not the decoder's."""
    return settings(
        max_examples=examples * _SCALE,
        deadline=None,
        derandomize=_SCALE == 1,
        **({"database": None} if _SCALE == 1 else {}),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


pytestmark = pytest.mark.timeout(60 * _SCALE)

# ---- outcomes -------------------------------------------------------------

# Mishandled inputs, each with a strict xfail test below: (label, exception
# type, a piece of its message). Warnings count as exceptions here.
KNOWN: list[tuple[str, type[BaseException], str]] = []


def _note(text: str) -> None:
    if currently_in_test_context():
        event(text)


def outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` returns, or the GatewayError it raises; anything else
    fails the property unless it is a known, pinned bug."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return call()
        except GatewayError as exc:
            _note(f"refused: {type(exc).__name__}")
            return exc
        except Exception as exc:
            for label, kind, text in KNOWN:
                if isinstance(exc, kind) and text in str(exc):
                    _note(f"known bug: {label}")
                    return exc
            raise


# ---- damage ---------------------------------------------------------------

_INTERESTING = [0, 1, 2, 3, 7, 8, 31, 32, 127, 128, 255, 256, 1024, 32767, 65535, 65536,
                2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**53 + 1, 2**63 - 1, 2**64 - 1]


@st.composite
def damaged(draw: st.DrawFn, data: bytes, max_ops: int = 6) -> bytes:
    """``data`` after a few random edits: bit flips, bytes overwritten,
    inserted or deleted, a span duplicated, a cut."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "cut", "int"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[at:at + draw(st.integers(1, 16))]
        elif op == "dup":
            out[at:at] = out[at:at + draw(st.integers(1, 64))]
        elif op == "cut":
            del out[at:]
        elif op == "int" and len(out) >= at + 8:
            value = draw(st.sampled_from(_INTERESTING))
            width = draw(st.sampled_from([1, 2, 4, 8]))
            out[at:at + width] = (value % (1 << 8 * width)).to_bytes(width, "little")
    return bytes(out)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# ---- NMEA -----------------------------------------------------------------

KNOTS = 1852 / 3600


def sentence(body: str, *, bad: int = 0) -> bytes:
    """``$body*hh\\r\\n``; ``bad`` != 0 spoils the checksum by that xor."""
    checksum = reduce(lambda a, c: a ^ ord(c), body, 0) ^ bad
    return f"${body}*{checksum:02X}\r\n".encode()


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.00"


@dataclasses.dataclass
class Drive:
    """A clean capture and what a correct decoder makes of it."""

    cycles: list[list[bytes]]  # sentences, cycle by cycle
    expected: list[dict[str, Any]]

    @property
    def data(self) -> bytes:
        return b"".join(b"".join(c) for c in self.cycles)


@st.composite
def drives(draw: st.DrawFn) -> Drive:
    """Cycles one second apart, RMC first, the same other sentences in the same
    order each cycle, as a receiver sends them, on a day from 2017 on (gpsd
    takes earlier dates for a receiver 1024 weeks behind: tests/test_nmea.py
    pins that). The day stays the same."""
    n = draw(st.integers(1, 5))
    start = draw(st.integers(0, 86399 - n))
    day = draw(st.dates(min_value=dt.date(2017, 1, 1), max_value=dt.date(2079, 12, 31)))
    talker = draw(st.sampled_from(["GP", "GN", "GL", "GA", "BD"]))
    others = draw(st.permutations(["GGA", "VTG", "GSA", "GSV", "GBS"]))
    others = others[:draw(st.integers(1, len(others)))]
    if "GGA" not in others:
        others = ["GGA", *others[1:]]
    cycles, expected = [], []
    for k in range(n):
        t = _hhmmss(start + k)
        lat_deg, lon_deg = draw(st.integers(0, 89)), draw(st.integers(0, 179))
        lat_min, lon_min = (draw(st.integers(0, 5_999_999)) for _ in range(2))
        lat = f"{lat_deg:02d}{lat_min // 100_000:02d}.{lat_min % 100_000:05d}"
        lon = f"{lon_deg:03d}{lon_min // 100_000:02d}.{lon_min % 100_000:05d}"
        ns, ew = draw(st.sampled_from("NS")), draw(st.sampled_from("EW"))
        alt = draw(st.integers(-400_0, 9000_0)) / 10
        knots = draw(st.integers(0, 999_9)) / 10
        track = draw(st.integers(0, 359_9)) / 10
        bodies = {
            "RMC": f"{talker}RMC,{t},A,{lat},{ns},{lon},{ew},{knots},{track},"
                   f"{day:%d%m%y},,,A",
            "GGA": f"{talker}GGA,{t},{lat},{ns},{lon},{ew},1,12,0.8,{alt},M,47.9,M,,",
            "VTG": f"{talker}VTG,{track},T,,M,{knots},N,{knots * 1.852:.1f},K,A",
            "GSA": f"{talker}GSA,A,3,01,02,03,04,,,,,,,,,1.5,0.8,1.2",
            "GSV": f"{talker}GSV,1,1,02,01,40,083,46,02,17,308,41",
            "GBS": f"{talker}GBS,{t},1.5,2.5,3.5,,,,",
        }
        cycles.append([sentence(bodies[kind]) for kind in ("RMC", *others)])
        sign_lat, sign_lon = (-1 if ns == "S" else 1), (-1 if ew == "W" else 1)
        when = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + \
            dt.timedelta(seconds=start + k)
        expected.append({
            "mode": 3,
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "lat": sign_lat * (int(lat[:2]) + float(lat[2:]) / 60),
            "lon": sign_lon * (int(lon[:3]) + float(lon[3:]) / 60),
            "altMSL": alt,
        })
    return Drive(cycles, expected)


def _decode_nmea(pieces: list[bytes]) -> tuple[list[Any], NmeaDecoder]:
    decoder = NmeaDecoder()
    fixes = [f for piece in pieces for f in decoder.feed(piece)]
    return fixes + decoder.flush(), decoder


def _garbage() -> st.SearchStrategy[bytes]:
    # Binary without '$', so that it cannot open a sentence of its own.
    return st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"$", b"\xa4"))


@st.composite
def noise(draw: st.DrawFn) -> tuple[str, bytes]:
    """One thing that must not change any fix: a sentence with a wrong
    checksum, a corrupted copy, a sentence over 130 bytes, binary garbage."""
    kind = draw(st.sampled_from(["bad_checksum", "bit_flip", "too_long", "garbage"]))
    liar = "GPGGA,000000.50,0101.00000,S,00101.00000,W,1,08,1.0,9999.9,M,,M,,"
    if kind == "bad_checksum":
        return kind, sentence(liar, bad=draw(st.integers(1, 255)))
    if kind == "bit_flip":
        raw = bytearray(sentence(liar))
        at = draw(st.integers(1, len(liar)))  # inside the body, not the checksum
        flipped = raw[at] ^ (1 << draw(st.integers(0, 7)))
        if flipped in b"$\r\n*":
            flipped = ord("~")
        raw[at] = flipped
        return "bad_checksum", bytes(raw)
    if kind == "too_long":
        body = liar + ",0" * ((MAX_SENTENCE - len(liar)) // 2 + draw(st.integers(1, 40)))
        return kind, sentence(body)
    return kind, draw(_garbage())


@fuzz(60)
@given(drive=drives())
def test_clean_nmea_cycles_decode_to_the_positions_they_carry(drive: Drive) -> None:
    fixes, decoder = _decode_nmea([drive.data])
    # Every fix of a cycle has the cycle's time; the last one, made by the
    # sentence that ends the cycle, what the cycle says.
    last: dict[str | None, Any] = {}
    for fix in fixes:
        last[fix.time] = fix
    assert list(last) == [want["time"] for want in drive.expected]
    for fix, want in zip(last.values(), drive.expected):
        assert fix.mode == want["mode"]
        assert fix.lat == pytest.approx(want["lat"], abs=1e-8)
        assert fix.lon == pytest.approx(want["lon"], abs=1e-8)
        assert fix.altMSL == pytest.approx(want["altMSL"])
    # Once a cycle's end is known (from the second cycle on), one fix a cycle.
    assert len(fixes) - sum(f.time == drive.expected[0]["time"] for f in fixes) == \
        len(drive.expected) - 1
    offsets = [0]
    for cycle in drive.cycles[:-1]:
        offsets.append(offsets[-1] + sum(map(len, cycle)))
    assert [f.offset for f in last.values()] == offsets
    stats = decoder.stats()
    assert stats.bad_checksum == stats.too_long == stats.truncated == stats.malformed == 0


@fuzz(80)
@given(drive=drives(), extra=st.lists(st.tuples(st.integers(0, 10**6), noise()), max_size=8),
       cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_bad_sentences_are_counted_and_never_used_in_any_chunking(drive, extra, cuts):
    sentences = [s for c in drive.cycles for s in c]
    for where, (_, item) in sorted(extra, reverse=True):
        sentences.insert(where % (len(sentences) + 1), item)
    data = b"".join(sentences)
    clean, _ = _decode_nmea([drive.data])
    fixes, decoder = _decode_nmea(chunks(data, cuts))
    strip = [dataclasses.replace(f, offset=0) for f in fixes]
    assert strip == [dataclasses.replace(f, offset=0) for f in clean]
    stats = decoder.stats()
    kinds = [kind for _, (kind, _) in extra]
    assert stats.bad_checksum == kinds.count("bad_checksum")
    assert stats.too_long == kinds.count("too_long")
    assert stats.truncated == stats.malformed == 0


@st.composite
def nmea_streams(draw: st.DrawFn) -> bytes:
    """Valid captures damaged every way a serial line damages them: bytes
    flipped or lost, sentences cut or glued, binary bursts, random bytes."""
    how = draw(st.sampled_from(["damaged", "glued", "random", "mixed"]))
    base = draw(drives()).data
    if how == "damaged":
        return draw(damaged(base, max_ops=12))
    if how == "glued":
        return base.replace(b"\r\n", draw(st.sampled_from([b"", b"\n", b"\r", b"\r\r\n"])))
    if how == "random":
        return draw(st.binary(max_size=600))
    parts = base.split(b"\r\n")
    out = []
    for part in parts:
        out.append(part[:draw(st.integers(0, len(part)))] if draw(st.booleans()) else part)
        out.append(draw(st.sampled_from([b"\r\n", b"", b"$", b"\x00\xb5\x62"])))
        if draw(st.integers(0, 4)) == 0:
            out.append(draw(st.binary(max_size=30)))
    return b"".join(out)


@fuzz(150)
@given(data=nmea_streams(), cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_nmea_feed_never_raises_and_chunking_never_changes_the_fixes(data, cuts):
    def both() -> tuple[Any, Any]:
        return _decode_nmea([data]), _decode_nmea(chunks(data, cuts))

    result = outcome(both)
    if isinstance(result, BaseException):
        assert not isinstance(result, GatewayError), "feed and flush count, never raise"
        return
    (whole, d1), (pieces, d2) = result
    assert pieces == whole
    assert d1.stats() == d2.stats()


def test_nmea_holds_at_most_one_partial_sentence_however_long_the_junk():
    decoder = NmeaDecoder()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for block in (b"$GPGGA," + b"7" * 10_000, b"\xff" * 10_000, b"$" * 1000) * 30:
            decoder.feed(block)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024
    assert decoder.stats().too_long > 0 and decoder.stats().garbage_bytes > 0


# ---- PCD ------------------------------------------------------------------

_PCD_KINDS = [("F", 4), ("F", 8), ("I", 1), ("I", 2), ("I", 4), ("I", 8), ("U", 1), ("U", 2),
              ("U", 4), ("U", 8)]


def _lzf_literals(data: bytes) -> bytes:
    out = bytearray()
    for i in range(0, len(data), 32):
        piece = data[i:i + 32]
        out.append(len(piece) - 1)
        out += piece
    return bytes(out)


@dataclasses.dataclass
class Cloud:
    names: list[str]
    kinds: list[tuple[str, int]]
    counts: list[int]
    records: np.ndarray  # one record per point, fields named as ``names``

    def header(self, mode: str) -> bytes:
        n = len(self.records)
        return (
            f"# .PCD v0.7\nVERSION 0.7\nFIELDS {' '.join(self.names)}\n"
            f"SIZE {' '.join(str(s) for _, s in self.kinds)}\n"
            f"TYPE {' '.join(t for t, _ in self.kinds)}\n"
            f"COUNT {' '.join(map(str, self.counts))}\n"
            f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {mode}\n"
        ).encode()

    def ascii(self) -> bytes:
        lines = []
        for record in self.records:
            values = []
            for name in self.names:
                for v in np.atleast_1d(record[name]):
                    values.append(repr(float(v)) if v.dtype.kind == "f" else str(int(v)))
            lines.append(" ".join(values))
        return self.header("ascii") + "\n".join(lines).encode() + b"\n"

    def binary(self) -> bytes:
        return self.header("binary") + self.records.tobytes()

    def compressed(self) -> bytes:
        raw = b"".join(np.ascontiguousarray(self.records[name]).tobytes() for name in self.names)
        packed = _lzf_literals(raw)
        return self.header("binary_compressed") + struct.pack("<II", len(packed), len(raw)) + \
            packed


def _values(draw: st.DrawFn, kind: tuple[str, int], shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(f"<{kind[0].lower()}{kind[1]}")
    size = int(np.prod(shape))
    if kind[0] == "F":
        elements = st.floats(width=8 * kind[1], allow_nan=True, allow_infinity=True)
    else:
        info = np.iinfo(dtype)
        # ascii goes through float64: 64-bit integers past 2**53 are pinned below.
        elements = st.integers(max(info.min, -(2**53)), min(info.max, 2**53))
    return np.array(draw(st.lists(elements, min_size=size, max_size=size)),
                    dtype=dtype).reshape(shape)


@st.composite
def clouds(draw: st.DrawFn, max_points: int = 20) -> Cloud:
    extras = draw(st.lists(st.sampled_from(["intensity", "ring", "t", "rgb", "normal"]),
                           unique=True, max_size=3))
    names = draw(st.permutations(["x", "y", "z", *extras]))
    kinds = [draw(st.sampled_from(_PCD_KINDS)) for _ in names]
    counts = [1 if name in "xyz" else draw(st.integers(1, 4)) for name in names]
    n = draw(st.integers(0, max_points))
    spec = [(name, f"<{t.lower()}{s}", (c,)) if c > 1 else (name, f"<{t.lower()}{s}")
            for name, (t, s), c in zip(names, kinds, counts)]
    records = np.empty(n, dtype=np.dtype(spec))
    for name, kind, c in zip(names, kinds, counts):
        records[name] = _values(draw, kind, (n, c) if c > 1 else (n,))
    return Cloud(names, kinds, counts, records)


@fuzz(80)
@given(cloud=clouds())
def test_pcd_ascii_binary_and_compressed_encodings_decode_to_the_same_points(cloud):
    frames = [decode_pcd(data, max_points=100)
              for data in (cloud.ascii(), cloud.binary(), cloud.compressed())]
    xyz = np.column_stack([cloud.records[a].astype(np.float64) for a in "xyz"])
    finite = np.isfinite(xyz).all(axis=1)
    for frame in frames:
        np.testing.assert_array_equal(frame.xyz, xyz[finite])
        assert frame.dropped_nonfinite == int((~finite).sum())
        assert set(frame.fields) == set(cloud.names) - {"x", "y", "z"}
        for name in frame.fields:
            want = cloud.records[name][finite]
            assert frame.fields[name].dtype == want.dtype, name
            np.testing.assert_array_equal(frame.fields[name], want, name)


@fuzz(40)
@given(cloud=clouds())
def test_pcd_written_by_gatewayd_reads_back_the_same(cloud):
    frame = decode_pcd(cloud.binary(), max_points=100)
    again = decode_pcd(encode_pcd(frame), max_points=100)
    np.testing.assert_array_equal(again.xyz, frame.xyz)
    assert again.fields.keys() == frame.fields.keys()
    for name, values in frame.fields.items():
        np.testing.assert_array_equal(again.fields[name], values)


_PCD_TOKENS = ["0", "1", "-1", "3", "1024", "1025", "4294967295", "18446744073709551616",
               "1e9", "nan", "F", "I", "U", "X", "ascii", "binary", "binary_compressed", "x",
               "y z", ""]


@st.composite
def pcd_files(draw: st.DrawFn) -> bytes:
    cloud = draw(clouds(max_points=8))
    data = draw(st.sampled_from([cloud.ascii, cloud.binary, cloud.compressed]))()
    header_end = data.index(b"DATA")
    lines = data[:header_end].split(b"\n")
    for _ in range(draw(st.integers(0, 3))):
        k = draw(st.integers(0, len(lines) - 1))
        key = lines[k].split(b" ", 1)[0]
        tokens = draw(st.lists(st.sampled_from(_PCD_TOKENS), min_size=1, max_size=4))
        lines[k] = key + b" " + " ".join(tokens).encode()
    return draw(damaged(b"\n".join(lines) + data[header_end:]))


@fuzz(200)
@given(data=pcd_files(), max_points=st.sampled_from([0, 5, 1000]))
def test_pcd_decoding_refuses_damaged_files_with_decode_errors_only(data, max_points):
    frame = outcome(lambda: decode_pcd(data, max_points=max_points))
    if isinstance(frame, BaseException):
        return
    assert frame.xyz.dtype == np.float64 and frame.xyz.ndim == 2
    if frame.xyz.shape[1] != 3:
        event("known bug: pcd: a COUNT above 1 on x, y or z widens xyz")
        return
    assert all(len(v) == len(frame) for v in frame.fields.values())


# ---- LAS ------------------------------------------------------------------

_LAS_VERSIONS = {f: [v for v, top in (("1.2", 3), ("1.3", 5), ("1.4", 10)) if f <= top]
                 for f in range(11)}
_FLAG_BITS = ("synthetic", "key_point", "withheld", "overlap")


@st.composite
def las_files(draw: st.DrawFn, max_points: int = 12) -> bytes:
    """A file laspy writes: any point format and version, random values in
    every dimension (bit fields included), sometimes extra bytes and a CRS."""
    point_format = draw(st.integers(0, 10))
    version = draw(st.sampled_from(_LAS_VERSIONS[point_format]))
    header = laspy.LasHeader(point_format=point_format, version=version)
    header.scales = np.array([draw(st.sampled_from([1e-3, 1e-2, 0.25, 1.0, 1e-7]))
                              for _ in range(3)])
    header.offsets = np.array([draw(st.integers(-10**7, 10**7)) for _ in range(3)],
                              dtype=np.float64)
    if draw(st.booleans()):
        header.add_extra_dims([laspy.ExtraBytesParams(
            "extra", draw(st.sampled_from(["u1", "i2", "f8", "3u2"])))])
    n = draw(st.integers(0, max_points))
    las = laspy.LasData(header)
    las.points = laspy.ScaleAwarePointRecord.zeros(n, header=header)
    for info in las.point_format.dimensions:
        if info.name in ("X", "Y", "Z") or not info.is_standard:
            if info.name in ("X", "Y", "Z"):
                las[info.name] = np.array(draw(st.lists(
                    st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n)), dtype=np.int32)
            continue
        if info.kind == laspy.DimensionKind.FloatingPoint:
            width = 32 if info.num_bits == 32 else 64
            values = draw(st.lists(st.floats(width=width, allow_nan=False),
                                   min_size=n, max_size=n))
        else:
            values = draw(st.lists(st.integers(int(info.min), int(info.max)),
                                   min_size=n, max_size=n))
        las[info.name] = np.array(values, dtype=las[info.name].dtype)
    out = io.BytesIO()
    las.write(out)
    return out.getvalue()


@fuzz(60)
@given(data=las_files())
def test_las_matches_laspy_reading_the_same_file_for_every_point_format(data):
    frame = decode_las(data, max_points=100)
    oracle = laspy.read(io.BytesIO(data))
    n = len(oracle.points)
    assert len(frame) == n and frame.dropped_nonfinite == 0
    np.testing.assert_array_equal(frame.xyz, np.column_stack(
        [np.asarray(oracle.x), np.asarray(oracle.y), np.asarray(oracle.z)]).reshape(n, 3))
    names = set(oracle.point_format.dimension_names)
    legacy = oracle.point_format.id < 6
    for name in names - {"X", "Y", "Z", "classification", *_FLAG_BITS}:
        if name in oracle.point_format.standard_dimension_names:
            np.testing.assert_array_equal(frame.fields[name], np.asarray(oracle[name]), name)
    np.testing.assert_array_equal(frame.fields["classification"],
                                  np.asarray(oracle.classification))
    if legacy:
        # The legacy classification byte's three flags come out on their own.
        for flag in ("synthetic", "key_point", "withheld"):
            np.testing.assert_array_equal(frame.fields[flag],
                                          np.asarray(oracle[flag]).astype(np.uint8), flag)
    else:
        flags = sum(np.asarray(oracle[b]).astype(np.uint8) << k for k, b in enumerate(_FLAG_BITS))
        np.testing.assert_array_equal(frame.fields["classification_flags"], flags)
    extra = oracle.point_format.num_extra_bytes
    if extra:
        raw = oracle.points.array.view(np.uint8).reshape(n, -1)[:, -extra:] if n else \
            np.empty((0, extra), np.uint8)
        np.testing.assert_array_equal(frame.fields["extra_bytes"], raw)
    else:
        assert "extra_bytes" not in frame.fields


# Header fields worth aiming at: (offset, struct format).
_LAS_HEADER_FIELDS = [(24, "<B"), (25, "<B"), (94, "<H"), (96, "<I"), (100, "<I"), (104, "<B"),
                      (105, "<H"), (107, "<I"), (131, "<d"), (155, "<d"), (235, "<Q"),
                      (243, "<I"), (247, "<Q")]
_DOUBLES = [0.0, -0.0, 1e-300, 1e300, math.inf, -math.inf, math.nan, 1e-3]


@st.composite
def damaged_las(draw: st.DrawFn) -> bytes:
    out = bytearray(draw(las_files(max_points=4)))
    for _ in range(draw(st.integers(0, 3))):
        offset, fmt = draw(st.sampled_from(_LAS_HEADER_FIELDS))
        if offset + struct.calcsize(fmt) > len(out):
            continue
        if fmt == "<d":
            struct.pack_into(fmt, out, offset, draw(st.sampled_from(_DOUBLES)))
        else:
            bits = 8 * struct.calcsize(fmt)
            struct.pack_into(fmt, out, offset, draw(st.sampled_from(_INTERESTING)) % (1 << bits))
    return draw(damaged(bytes(out)))


@fuzz(200)
@given(data=damaged_las(), max_points=st.sampled_from([0, 3, 1000, 2**41]))
def test_las_decoding_refuses_damaged_files_with_decode_errors_only(data, max_points):
    outcome(lambda: decode_las(data, max_points=max_points))


# ---- memory: small headers that claim a lot ------------------------------


def _pcd_claim(mode: str, points: int, tail: bytes = b"") -> bytes:
    return (f"FIELDS x y z\nSIZE 8 8 8\nTYPE F F F\nCOUNT 1 1 1\nWIDTH {points}\nHEIGHT 1\n"
            f"POINTS {points}\nDATA {mode}\n").encode() + tail


def _empty_las() -> bytes:
    out = io.BytesIO()
    laspy.LasData(laspy.LasHeader(point_format=6, version="1.4")).write(out)
    return out.getvalue()


_EMPTY_LAS = _empty_las()


def _las_claim(count: int, legacy: int = 0, n_vlrs: int = 0) -> bytes:
    header = bytearray(_EMPTY_LAS)
    struct.pack_into("<I", header, 100, n_vlrs)
    struct.pack_into("<I", header, 107, legacy)
    struct.pack_into("<Q", header, 247, count)
    return bytes(header)

CLAIMS = {
    "pcd ascii, 2**31 points": lambda: decode_pcd(_pcd_claim("ascii", 2**31 - 1, b"1 2 3\n"),
                                                  max_points=2**31),
    "pcd binary, 2**31 points": lambda: decode_pcd(_pcd_claim("binary", 2**31 - 1, b"\0" * 24),
                                                   max_points=2**31),
    "pcd compressed, 2**31 points": lambda: decode_pcd(
        _pcd_claim("binary_compressed", 2**31 - 1, struct.pack("<II", 1, 2**32 - 1) + b"\0"),
        max_points=2**31),
    "pcd, 2**40 points": lambda: decode_pcd(_pcd_claim("binary", 2**40), max_points=2_000_000),
    "las 1.4, 2**40 points": lambda: decode_las(_las_claim(2**40), max_points=2**41),
    "las, 2**32-1 legacy points": lambda: decode_las(_las_claim(0, 2**32 - 1),
                                                     max_points=2**41),
    "las, 2**32-1 records": lambda: decode_las(_las_claim(0, 0, 2**32 - 1), max_points=10),
}


def peak_bytes(call: Callable[[], Any]) -> tuple[int, Any]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = outcome(call)
        return tracemalloc.get_traced_memory()[1] - base, result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_a_small_header_claiming_many_points_is_refused_before_allocation(name):
    peak, result = peak_bytes(CLAIMS[name])
    assert isinstance(result, DecodeError)
    assert peak < 1 << 20, f"{peak} bytes traced for a {name} of a few hundred bytes"


# ---- GeoJSON --------------------------------------------------------------

_lon = st.floats(-180, 180)
_lat = st.floats(-90, 90)


@st.composite
def rings(draw: st.DrawFn) -> list[list[float]]:
    points = draw(st.lists(st.tuples(_lon, _lat), min_size=3, max_size=7))
    return [list(p) for p in points] + [list(points[0])]


_polygons = st.lists(rings(), min_size=1, max_size=3)
_BAD_GEOMETRIES = [
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]},
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [200, 0], [0, 0]]]},
    {"type": "Polygon", "coordinates": [[[0, 0], [1, "1"], [1, 0], [0, 0]]]},
    {"type": "Polygon", "coordinates": [[[0, 0], [True, 1], [1, 0], [0, 0]]]},
    {"type": "Polygon", "coordinates": [[[0, 0], [1], [1, 0], [0, 0]]]},
    {"type": "Polygon", "coordinates": []},
    {"type": "MultiPolygon", "coordinates": []},
    {"type": "Point", "coordinates": [0, 0]},
    None,
    "Polygon",
]


@st.composite
def feature_collections(draw: st.DrawFn) -> tuple[list[Any], list[bool]]:
    features, good = [], []
    for i in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 3)) == 0:
            geometry = draw(st.sampled_from(_BAD_GEOMETRIES))
            good.append(False)
        elif draw(st.booleans()):
            geometry = {"type": "Polygon", "coordinates": draw(_polygons)}
            good.append(True)
        else:
            geometry = {"type": "MultiPolygon",
                        "coordinates": draw(st.lists(_polygons, min_size=1, max_size=3))}
            good.append(True)
        features.append({"type": "Feature", "id": i, "geometry": geometry,
                         "properties": {"n": i}})
    return features, good


@fuzz(80)
@given(doc=feature_collections(), layout=st.sampled_from(["collection", "lines"]))
def test_geojson_parts_and_rings_agree_with_shapely(doc, layout):
    features, good = doc
    if layout == "lines" and len(features) >= 2:
        data = "\n".join(json.dumps(f) for f in features).encode()
    else:
        data = json.dumps({"type": "FeatureCollection", "features": features}).encode()
    result = decode_geojson(data, max_bytes=1 << 20, max_vertices=10_000, max_features=100)
    assert [f.index for f in result.features] == [i for i, ok in enumerate(good) if ok]
    assert [r.index for r in result.rejected] == [i for i, ok in enumerate(good) if not ok]
    for ours in result.features:
        theirs = shapely.geometry.shape(features[ours.index]["geometry"])
        polys = list(theirs.geoms) if ours.multi else [theirs]
        assert len(ours.parts) == shapely.get_num_geometries(theirs) == len(polys)
        for rings_, poly in zip(ours.parts, polys):
            assert len(rings_) == 1 + len(poly.interiors)
            np.testing.assert_array_equal(rings_[0], np.asarray(poly.exterior.coords))
            for ring, hole in zip(rings_[1:], poly.interiors):
                np.testing.assert_array_equal(ring, np.asarray(hole.coords))


@fuzz(40)
@given(polygon=_polygons, limit=st.integers(4, 30))
def test_geojson_refuses_a_feature_over_the_vertex_limit_as_too_large(polygon, limit):
    data = json.dumps({"type": "Polygon", "coordinates": polygon}).encode()
    result = decode_geojson(data, max_bytes=1 << 20, max_vertices=limit, max_features=10)
    total = sum(len(r) for r in polygon)
    if total > limit:
        assert not result.features and result.rejected[0].reason == "too_large"
    else:
        assert len(result.features) == 1


_json_scalars = st.none() | st.booleans() | st.floats() | st.text(max_size=8) | \
    st.integers(-(2**63), 2**63) | st.integers().map(lambda i: i * 10**400)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=5) |
                     st.dictionaries(st.sampled_from(["type", "coordinates", "features",
                                                      "geometry", "id", "properties"]),
                                     inner, max_size=4), max_leaves=30)


@st.composite
def geojson_documents(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["json", "damaged", "lines", "bytes"]))
    if how == "json":
        return json.dumps(draw(_json)).encode()
    if how == "lines":
        return b"\n".join(json.dumps(draw(_json)).encode() for _ in range(draw(
            st.integers(2, 4))))
    if how == "bytes":
        return draw(st.binary(max_size=300))
    features, _ = draw(feature_collections())
    return draw(damaged(json.dumps({"type": "FeatureCollection",
                                    "features": features}).encode()))


@fuzz(200)
@given(data=geojson_documents(), max_features=st.sampled_from([1, 100]))
def test_geojson_decoding_refuses_anything_else_with_decode_errors_only(data, max_features):
    result = outcome(lambda: decode_geojson(data, max_bytes=1 << 20, max_vertices=50,
                                            max_features=max_features))
    if not isinstance(result, BaseException):
        assert len(result.features) + len(result.rejected) <= max_features


# ---- GPS JSON -------------------------------------------------------------

_numbers = st.integers(-1000, 1000) | st.floats() | st.none() | st.booleans() | st.text(max_size=3)


@st.composite
def gps_documents(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        doc: dict[str, Any] = {"class": "TPV", "mode": draw(st.integers(-1, 4) | st.none())}
        names = ["lat", "lon", "alt", "altMSL", "altHAE", "speed", "track", "climb", "eph",
                 "time"]
    else:
        doc = {"_type": "location", "tst": draw(st.integers(0, 2**31) | st.floats(0, 4e9))}
        names = ["lat", "lon", "alt", "vel", "cog", "acc", "vac"]
    for name in draw(st.lists(st.sampled_from(names), unique=True)):
        doc[name] = draw(_numbers)
    return doc


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


@fuzz(100)
@given(doc=gps_documents())
def test_gps_json_keeps_a_position_in_range_and_refuses_one_out_of_it(doc):
    result = outcome(lambda: gps_json_tpv(json.dumps(doc).encode()))
    lat = doc.get("lat") if _finite(doc.get("lat")) else None
    lon = doc.get("lon") if _finite(doc.get("lon")) else None
    owntracks = "_type" in doc
    out_of_range = lat is not None and lon is not None and \
        not (-90 <= lat <= 90 and -180 <= lon <= 180)
    if (lat is None) != (lon is None) or (owntracks and lat is None) or out_of_range:
        assert isinstance(result, DecodeError)
    else:
        assert isinstance(result, dict), result
        assert result["class"] == "TPV" and result["mode"] in (1, 2, 3)
        assert (result.get("lat"), result.get("lon")) == (lat, lon)
        for value in result.values():
            assert not isinstance(value, float) or math.isfinite(value)


@st.composite
def gps_bytes(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["doc", "json", "damaged", "bytes", "deep"]))
    if how == "doc":
        return json.dumps(draw(gps_documents())).encode()
    if how == "json":
        return json.dumps(draw(_json)).encode()
    if how == "damaged":
        return draw(damaged(json.dumps(draw(gps_documents())).encode()))
    if how == "deep":
        return b"[" * draw(st.integers(1, 5000))
    return draw(st.binary(max_size=200))


@fuzz(150)
@given(data=gps_bytes())
def test_gps_json_refuses_anything_else_with_decode_errors_only(data):
    result = outcome(lambda: gps_json_tpv(data))
    assert isinstance(result, dict | BaseException)


# A plain TPV is read in C (gw_tpv_parse), anything else by Python's json:
# the two must agree on every document, and the members C writes must be
# what json.dumps writes of the fields.

_TPV_KEYS = ["class", "mode", "time", "lat", "lon", "alt", "altMSL", "altHAE", "speed", "track",
             "climb", "magvar", "eph", "epx", "epy", "epv", "device", "tag"]


@st.composite
def number_literals(draw: st.DrawFn, limit: float | None = None) -> str:
    """JSON number text (and some that is not JSON), spelled as publishers
    spell them; ``limit``: of a value's magnitude, mostly."""
    value = draw(st.floats(-limit, limit) if limit is not None else
                 st.floats(allow_nan=False, allow_infinity=False) |
                 st.floats(-200, 200) | st.integers(-10**20, 10**20).map(float))
    how = draw(st.sampled_from(["repr", "fixed", "exp", "g", "int", "odd"]))
    digits = draw(st.integers(0, 20))
    if how == "repr":
        return repr(value)
    if how == "fixed":
        return f"{value:.{digits}f}"
    if how == "exp":
        return f"{value:.{digits}e}"
    if how == "g":
        return f"{value:.{digits}g}"
    if how == "int":
        return str(draw(st.integers(-10**30, 10**30)))
    return draw(st.sampled_from(["-0", "-0.0", "0.0000", "0.0001", "0.00001", "1E5", "1e-7",
                                 "-0.00010", "007", "1.", ".5", "-", "1e", "NaN", "Infinity",
                                 "-Infinity", "1" * 16, "1" * 15 + ".5", "0." + "0" * 3 + "1" * 15,
                                 "123456789012345.0", "1234567890123456.0", "2", "3.0", "true"]))


@st.composite
def tpv_texts(draw: st.DrawFn) -> bytes:
    """A TPV as text, member by member: names repeated, values of any type,
    whitespace anywhere JSON allows it (and some where it does not)."""
    ws = st.sampled_from(["", "", "", "", "", "", " ", "\n", "\t ", "\r\n"])
    values = st.one_of(
        number_literals(),
        st.sampled_from(['"TPV"', '"SKY"', '"2024-05-01T12:20:34.500Z"', '""', '"a\\"b"',
                         '"\\u0054PV"', '"caf\u00e9"', '"\x7f"', "true", "false", "null",
                         "{}", "[1,2]", '{"a":1}']),
        st.sampled_from(["1", "2", "3", "0", "4"]))
    members = [("class", '"TPV"')] if draw(st.integers(0, 3)) else []
    members += draw(st.lists(st.tuples(st.sampled_from(_TPV_KEYS), values), max_size=12))
    if draw(st.integers(0, 3)):  # mostly a position in range, as receivers send
        members += [("lat", draw(number_literals(90))), ("lon", draw(number_literals(180)))]
    if draw(st.booleans()):
        draw(st.randoms()).shuffle(members)
    text = draw(ws) + "{" + draw(ws)
    text += ",".join(f'{draw(ws)}"{k}"{draw(ws)}:{draw(ws)}{v}{draw(ws)}' for k, v in members)
    text += "}" + draw(ws)
    if not draw(st.integers(0, 9)):  # whitespace JSON does not know
        at = draw(st.integers(0, len(text)))
        text = text[:at] + "\x0b" + text[at:]
    return text.encode("utf-8", "surrogatepass")


def _agree(data: bytes) -> str | None:
    """Checks the C reader against Python's json on ``data``; the members C
    wrote, if it read it."""
    ours = outcome(lambda: gps_json_fix(data))
    theirs = outcome(lambda: _json_tpv(data))
    if isinstance(theirs, BaseException):
        assert isinstance(ours, DecodeError) and type(ours) is type(theirs), (data, ours, theirs)
        return None
    assert not isinstance(ours, BaseException), (data, ours)
    tpv, members = ours
    assert list(tpv.items()) == list(theirs.items()), data
    assert [type(v) for v in tpv.values()] == [type(v) for v in theirs.values()], data
    if members is not None:
        _note("read in C")
        fields = {k: v for k, v in theirs.items() if k != "class"}
        assert members == json.dumps(fields, separators=(",", ":"))[1:-1], data
    return members


@fuzz(400)
@given(data=tpv_texts())
def test_gps_json_read_in_c_agrees_with_pythons_json(data):
    _agree(data)


@fuzz(200)
@given(data=tpv_texts().flatmap(damaged))
def test_gps_json_damaged_read_in_c_agrees_with_pythons_json(data):
    _agree(data)


@pytest.mark.parametrize("literal", [
    "48.7812345", "9.18", "290.0", "290", "-0", "-0.0", "0", "0.0", "0.0001", "0.00012",
    "0.00001", "1e-05", "1E5", "123456789012345", "1234567890123456", "0.100000000000000",
    "48.781234500", "-180.0", "1.0000000000000002", "12345678901234.5", "0.000123456789012345",
])
def test_gps_json_numbers_read_in_c_are_written_as_json_writes_them(literal):
    data = f'{{"class":"TPV","mode":3,"lat":10.5,"lon":-20.25,"altHAE":{literal},' \
        f'"eph":{literal}}}'.encode()
    _agree(data)
    assert gps_json_tpv(data)["altHAE"] == float(literal)


def test_gps_json_of_the_plain_shape_is_read_in_c():
    # gpsd's own TPV, and the shape most publishers write: members from C.
    gpsd = (b'{"class":"TPV","device":"/dev/ttyACM0","mode":3,"time":"2024-05-01T12:00:00.000Z",'
            b'"ept":0.005,"lat":48.117300000,"lon":11.516666667,"altHAE":592.300,'
            b'"altMSL":545.400,"alt":545.400,"track":84.4000,"magtrack":86.2000,"speed":11.524,'
            b'"climb":0.000,"eps":2.34,"epc":1.23,"geoidSep":46.900,"eph":15.200,"sep":21.400}')
    members = _agree(gpsd)
    assert members is not None and members.startswith('"mode":3,"time":"2024-05-01T12')
    tpv = gps_json_tpv(gpsd)
    assert tpv["altMSL"] == 545.4 and tpv["alt"] == 545.4 and "geoidSep" not in tpv
    assert gps_json_fix(memoryview(gpsd)) == gps_json_fix(bytearray(gpsd)) == (tpv, members)
    # Escapes, nesting, another class: Python's json reads them, as before.
    for other in (b'{"class":"TPV","time":"2024\\u002d05","lat":1,"lon":2}',
                  b'{"class":"TPV","lat":1,"lon":2,"sky":[1,2]}',
                  b'{"_type":"location","lat":1,"lon":2,"tst":0}'):
        assert _agree(other) is None and gps_json_tpv(other)["lat"] == 1.0


# ---- configuration --------------------------------------------------------

_SECTIONS = {
    "gateway": ["id", "state_dir"],
    "pipeline": ["queue_size", "chunk_size", "min_chunk_size", "chunk_timeout_s", "workers",
                 "max_payload_bytes", "max_points_per_frame", "overflow"],
    "lidar": ["voxel_size_m", "bbox"],
    "mqtt": ["host", "port", "tls", "qos", "protocol", "username", "password_file",
             "allow_plaintext", "keepalive"],
    "serial": ["ports", "backlog"],
    "daemon": ["grace_s", "watchdog_stall_s"],
    "thermal": ["soft_c", "hard_c", "enabled"],
    "log": ["level", "format"],
}
_toml_scalars = (st.integers(-(2**63), 2**63 - 1) | st.integers(0, 100) |
                 st.integers().map(lambda i: i * 10**400) |
                 st.floats() | st.booleans() | st.text(max_size=12) |
                 st.sampled_from(["127.0.0.1", "example.org", "spill", "5", "debug",
                                  "gps0=/dev/ttyUSB0@9600", "/nonexistent/x.pem"]) |
                 st.datetimes(timezones=st.just(dt.UTC)) | st.dates())
_toml_values = _toml_scalars | st.lists(_toml_scalars, max_size=7) | \
    st.lists(st.floats(-100, 100), min_size=6, max_size=6)


@st.composite
def toml_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from([*_SECTIONS, "mystery"]), unique=True,
                                 max_size=4)):
        keys = [*_SECTIONS.get(section, []), "nonsense"]
        doc[section] = {k: draw(_toml_values | st.dictionaries(st.just("inner"), _toml_scalars,
                                                                max_size=1))
                        for k in draw(st.lists(st.sampled_from(keys), unique=True, max_size=5))}
    if draw(st.integers(0, 9)) == 0:
        doc["loose"] = draw(_toml_scalars)
    return doc


def _toml_string(text: str) -> str:
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                      if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in text)
    return f'"{escaped}"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(doc: dict[str, Any]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tmp_path_factory.mktemp("config")


def _names_a_key(exc: ConfigError, doc: dict[str, Any], env: dict[str, str],
                 overrides: list[str]) -> bool:
    if not isinstance(exc.key, str):
        return False
    if not exc.key:  # only `--set =x` and the like have no name to give
        return any(not o.partition("=")[0].strip() for o in overrides)
    section = exc.key.split(".", 1)[0]
    mentioned = set(doc) | {n[len("GATEWAYD_"):].lower().partition("__")[0] for n in env} | \
        {o.partition(".")[0].strip() for o in overrides}
    return exc.key == "--config" or section in mentioned or section in _SECTIONS or \
        any(exc.key in o for o in overrides)


_env = st.dictionaries(
    st.sampled_from([f"GATEWAYD_{s.upper()}__{k.upper()}" for s, ks in _SECTIONS.items()
                     for k in ks] + ["GATEWAYD_NOPE__X", "GATEWAYD_PIPELINE__NOPE", "PATH"]),
    st.text(max_size=10) | st.sampled_from(["1", "0x10", "yes", "1e999", "nan", "1,2,3,4,5,6",
                                            "none", "-5"]),
    max_size=3)
_overrides = st.lists(st.text(max_size=20) | st.sampled_from(
    ["pipeline.workers=3", "mqtt.tls=maybe", "lidar.bbox=0,0,0,1,1,1", "log.level=loud",
     "mqtt.port=0x50", "thermal.hard_c=nan", ".=", "a.b=c"]), max_size=3)


@fuzz(200)
@given(doc=toml_documents(), env=_env, overrides=_overrides)
def test_any_toml_document_gives_a_config_or_a_config_error_naming_a_key(
        config_dir, doc, env, overrides):
    text = toml_text(doc)
    path = config_dir / "gatewayd.toml"
    path.write_text(text, encoding="utf-8")
    result = outcome(lambda: load_config(str(path), overrides, env))
    if isinstance(result, ConfigError):
        assert _names_a_key(result, doc, env, overrides), (result, result.key)
    elif not isinstance(result, BaseException):
        assert result.pipeline.min_chunk_size <= result.pipeline.chunk_size
        assert result.thermal.soft_c < result.thermal.hard_c


@fuzz(100)
@given(doc=toml_documents())
def test_a_loaded_config_renders_to_toml_that_loads_to_the_same_values(config_dir, doc):
    path = config_dir / "render-in.toml"
    path.write_text(toml_text(doc), encoding="utf-8")
    config = outcome(lambda: load_config(str(path), [], {}))
    if isinstance(config, BaseException):
        return
    again_path = config_dir / "render-out.toml"
    again_path.write_text(render_config(config), encoding="utf-8")
    again = load_config(str(again_path), [], {})
    for section in _SECTIONS:
        assert getattr(again, section) == getattr(config, section) or \
            "nan" in repr(getattr(config, section))


@fuzz(100)
@given(data=st.text(max_size=200).map(str.encode) | st.binary(max_size=200) |
       st.builds(lambda doc, junk: toml_text(doc).encode() + junk, toml_documents(),
                 st.binary(min_size=1, max_size=4)))
def test_a_file_that_is_not_toml_is_a_config_error_naming_the_file(config_dir, data):
    path = config_dir / "not.toml"
    path.write_bytes(data)
    result = outcome(lambda: load_config(str(path), [], {}))
    if isinstance(result, ConfigError):
        assert result.key


# ---- bugs once pinned here, and what should happen -------------------------


def _zda(date: str, time: str = "240000.00") -> bytes:
    day, month, year = date.split("/")
    return sentence(f"GPZDA,{time},{day},{month},{year},00,00")


def test_nmea_a_date_past_year_9999_is_counted_not_raised():
    decoder = NmeaDecoder()
    decoder.feed(_zda("31/12/9999"))
    assert isinstance(decoder.flush(), list)


def test_nmea_feed_survives_the_day_rolling_past_year_9999():
    decoder = NmeaDecoder()
    decoder.feed(_zda("31/12/9999", "235959.00") +
                 sentence("GPGGA,000001.00,4846.8,N,00910.8,E,1,08,1.0,100.0,M,47.0,M,,"))
    assert isinstance(decoder.flush(), list)


def test_nmea_the_first_cycle_before_midnight_keeps_its_own_date():
    def cycle(t: str, date: str) -> bytes:
        return sentence(f"GNRMC,{t},A,4846.80000,N,00910.80000,E,10.0,123.4,{date},,,A") + \
            sentence(f"GNGGA,{t},4846.80000,N,00910.80000,E,1,12,0.8,250.5,M,47.9,M,,")

    fixes, _ = _decode_nmea([cycle("235959.00", "311226") + cycle("000000.00", "010127")])
    # The first cycle's RMC and GGA are reported as they come, then GGA ends
    # the cycle after midnight.
    assert [f.time for f in fixes] == ["2026-12-31T23:59:59.000Z"] * 2 + \
        ["2027-01-01T00:00:00.000Z"]


def test_nmea_garbage_count_does_not_depend_on_where_blocks_end():
    data = sentence("GPGSV,1,1,01,01,40,083,46") * 2
    cut = data.index(b"\n")
    _, whole = _decode_nmea([data])
    _, split = _decode_nmea([data[:cut], data[cut:]])
    assert whole.stats().garbage_bytes == split.stats().garbage_bytes == 0
    # and a CR or LF after garbage is garbage, wherever the block ends
    junk = b"xx\r\n" + data
    _, whole = _decode_nmea([junk])
    _, split = _decode_nmea([junk[:3], junk[3:]])
    assert whole.stats().garbage_bytes == split.stats().garbage_bytes == 4


def _las_with_geotiff_keys(keys: bytes) -> bytes:
    header = laspy.LasHeader(point_format=0, version="1.2")
    header.vlrs.append(laspy.VLR(user_id="LASF_Projection", record_id=34735, record_data=keys))
    las = laspy.LasData(header)
    las.x, las.y, las.z = [1.0], [2.0], [3.0]
    out = io.BytesIO()
    las.write(out)
    return out.getvalue()


def test_las_geotiff_keys_cut_short_are_a_decode_error_or_no_crs():
    data = _las_with_geotiff_keys(b"\x01\x00\x01\x00\x00\x00\x01\x00\x00\x00")
    with contextlib.suppress(DecodeError):
        assert decode_las(data, max_points=10).crs is None


def test_las_a_scale_that_overflows_is_refused_or_dropped_quietly():
    out = io.BytesIO()
    las = laspy.LasData(laspy.LasHeader(point_format=0, version="1.2"))
    las.X, las.Y, las.Z = [2**31 - 1], [1], [1]
    las.write(out)
    data = bytearray(out.getvalue())
    struct.pack_into("<d", data, 131, 1e308)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            frame = decode_las(bytes(data), max_points=10)
            assert len(frame) + frame.dropped_nonfinite == 1
        except DecodeError:
            pass


def test_las_legacy_classification_flags_are_split_out_like_laspy():
    header = laspy.LasHeader(point_format=1, version="1.2")
    las = laspy.LasData(header)
    las.x, las.y, las.z = [1.0], [2.0], [3.0]
    las.classification = [2]
    las.withheld = [1]
    out = io.BytesIO()
    las.write(out)
    frame = decode_las(out.getvalue(), max_points=10)
    assert frame.fields["classification"].tolist() == [2]


def test_pcd_compressed_data_cannot_claim_far_more_than_lzf_can_expand_to():
    points, itemsize = 21845, 3 * 1024 * 8
    header = (f"FIELDS x y z\nSIZE 8 8 8\nTYPE F F F\nCOUNT 1024 1024 1024\n"
              f"WIDTH {points}\nHEIGHT 1\nPOINTS {points}\nDATA binary_compressed\n").encode()
    data = header + struct.pack("<II", 1, points * itemsize) + b"\0"
    peak, result = peak_bytes(lambda: decode_pcd(data, max_points=2_000_000))
    assert isinstance(result, DecodeError)
    assert peak < 64 << 20, f"{peak >> 20} MiB for {len(data)} bytes"


def test_pcd_a_coordinate_field_with_several_values_is_a_decode_error():
    data = (b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 2 1\nWIDTH 1\nPOINTS 1\n"
            b"DATA ascii\n1 2 3 4\n")
    with pytest.raises(DecodeError):
        frame = decode_pcd(data, max_points=10)
        assert frame.xyz.shape == (1, 3), frame.xyz.shape


def test_pcd_ascii_value_out_of_an_integer_fields_range_is_a_decode_error():
    data = (b"FIELDS x y z i\nSIZE 4 4 4 4\nTYPE F F F I\nCOUNT 1 1 1 1\nWIDTH 1\n"
            b"POINTS 1\nDATA ascii\n1 2 3 nan\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DecodeError):
            decode_pcd(data, max_points=10)


def test_pcd_ascii_64_bit_integers_keep_every_bit():
    stamp = 1_700_000_000_123_456_789
    data = (b"FIELDS x y z t\nSIZE 4 4 4 8\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH 1\n"
            b"POINTS 1\nDATA ascii\n1 2 3 " + str(stamp).encode() + b"\n")
    assert decode_pcd(data, max_points=10).fields["t"].tolist() == [stamp]


def test_geojson_a_huge_integer_coordinate_is_a_refused_feature():
    big = "1" + "0" * 400
    data = f'{{"type":"Polygon","coordinates":[[[{big},0],[1,0],[1,1],[0,0]]]}}'.encode()
    result = decode_geojson(data, max_bytes=1 << 20, max_vertices=100, max_features=10)
    assert result.rejected and not result.features


@pytest.mark.parametrize("data", [
    pytest.param(b"[" * 100_000, id="nested"),
    pytest.param(b'{"class":"TPV","lat":1' + b"0" * 400 + b',"lon":0}', id="huge-int"),
    pytest.param(b'{"_type":"location","lat":1,"lon":2,"tst":1e20}', id="tst-1e20"),
    pytest.param(b'{"_type":"location","lat":1,"lon":2,"tst":-1e15}', id="tst-negative"),
])
def test_gps_json_refuses_hostile_documents_with_a_decode_error(data):
    with pytest.raises(DecodeError):
        gps_json_tpv(data)


def test_gps_json_mode_is_always_an_integer():
    assert type(gps_json_tpv(b'{"class":"TPV","mode":true}')["mode"]) is int


def test_config_an_integer_too_large_for_a_float_setting_is_a_config_error(tmp_path):
    path = tmp_path / "gatewayd.toml"
    path.write_text("[pipeline]\nchunk_timeout_s = 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), [], {})
    assert caught.value.key == "pipeline.chunk_timeout_s"


def test_config_a_nul_in_the_password_file_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["mqtt.username=u", "mqtt.password_file=/etc/a\0b"], {})
    assert caught.value.key == "mqtt.password_file"


def test_config_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "gatewayd.toml"
    path.write_bytes(b"[pipeline]\nchunk_size = 64 # \x80\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), [], {})
    assert caught.value.key == "--config"
