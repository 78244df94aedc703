"""Writes the seed corpora in fuzz/corpus/<target>/ from the bundled samples
(cut down to a few KiB each) and small crafted files, the same every time.

    .venv/bin/python fuzz/make_corpus.py
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import struct
from functools import reduce
from pathlib import Path

import laspy
import numpy as np
import pyproj

from gatewayd.las import decode_las
from gatewayd.pcd import encode_pcd

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "gatewayd" / "samples"
CORPUS = HERE / "corpus"


def _sentence(body: str, bad: int = 0) -> bytes:
    checksum = reduce(lambda a, c: a ^ ord(c), body, 0) ^ bad
    return f"${body}*{checksum:02X}\r\n".encode()


def nmea() -> dict[str, bytes]:
    capture = (SAMPLES / "capture-drive.nmea").read_bytes()
    lines = capture.splitlines(keepends=True)
    out = {
        "drive-start.nmea": b"".join(lines[:40]),
        "drive-middle.nmea": b"".join(lines[len(lines) // 2:len(lines) // 2 + 30]),
    }
    tail = _sentence("GNZDA,235959.50,31,12,2026,00,00") + \
        _sentence("GNGNS,000000.00,4846.80000,N,00910.80000,E,AAN,12,0.8,250.5,47.9,,,V") + \
        _sentence("GNGLL,4846.80000,N,00910.80000,E,000000.00,A,A") + \
        _sentence("GNGBS,000000.00,1.5,2.5,3.5,,,,") + \
        _sentence("GNGST,000000.00,17,1.4,1.1,37.4,1.2,1.3,2.6")
    out["midnight-all-types.nmea"] = tail
    noisy = bytearray(b"".join(lines[:12]))
    noisy[40] ^= 0x04  # a bit flipped: a bad checksum
    out["noisy.nmea"] = b"\x00\xb5\x62\x01\x07junk" + bytes(noisy) + \
        _sentence("GPGGA,093005.00,,,,,0,00,99.9,,M,,M,," + ",0" * 50) + \
        lines[20].rstrip(b"\r\n").replace(b"*", b"") + b"\r\n" + b"$GPRMC,0930" + \
        b"".join(lines[12:16]).replace(b"\r\n", b"")
    return out


def _pcd_header(fields: str, size: str, type_: str, count: str, n: int, mode: str) -> bytes:
    return (f"# .PCD v0.7\nVERSION 0.7\nFIELDS {fields}\nSIZE {size}\nTYPE {type_}\n"
            f"COUNT {count}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
            f"DATA {mode}\n").encode()


def _lzf(data: bytes) -> bytes:
    """Literal runs, and one back reference where a run repeats."""
    out = bytearray()
    for i in range(0, len(data), 32):
        piece = data[i:i + 32]
        if i >= 32 and piece == data[i - 32:i] and len(piece) == 32:
            out += bytes([(7 << 5) | 0, 32 - 2 - 7, 31])  # copy 32 bytes from 32 back
        else:
            out.append(len(piece) - 1)
            out += piece
    return bytes(out)


def pcd() -> dict[str, bytes]:
    frame = decode_las((SAMPLES / "capture-scan.las").read_bytes(), max_points=10**6)
    scan = frame.take(np.arange(0, len(frame), max(len(frame) // 40, 1))[:40])
    out = {"scan.pcd": encode_pcd(scan)}
    xyz = scan.xyz.astype(np.float32)
    n = len(xyz)
    ring = (np.arange(n) % 16).astype(np.uint16)
    text = "\n".join(f"{x} {y} {z} {r}" for (x, y, z), r in zip(xyz.tolist(), ring.tolist()))
    out["scan-ascii.pcd"] = _pcd_header("x y z ring", "4 4 4 2", "F F F U", "1 1 1 1", n,
                                        "ascii") + text.encode() + b"\n"
    columns = xyz.T.tobytes() + ring.tobytes()
    packed = _lzf(columns)
    out["scan-compressed.pcd"] = _pcd_header("x y z ring", "4 4 4 2", "F F F U", "1 1 1 1", n,
                                             "binary_compressed") + \
        struct.pack("<II", len(packed), len(columns)) + packed
    same = np.zeros((64, 3), dtype=np.float32).T.tobytes()
    packed = _lzf(same)
    out["zeros-compressed.pcd"] = _pcd_header("x y z", "4 4 4", "F F F", "1 1 1", 64,
                                              "binary_compressed") + \
        struct.pack("<II", len(packed), len(same)) + packed
    out["multi-count.pcd"] = _pcd_header("x y z rgb normal", "8 8 8 1 4", "F F F U F",
                                         "1 1 1 3 3", 2, "ascii") + \
        b"1 2 3 10 20 30 0 0 1\nnan 0 0 0 0 0 0 1 0\n"
    out["organised-nan.pcd"] = _pcd_header("intensity x y z", "1 4 4 4", "I F F F",
                                           "1 1 1 1", 3, "binary") + \
        struct.pack("<bfff", -3, 1, 2, 3) + struct.pack("<bfff", 0, np.nan, 0, 0) + \
        struct.pack("<bfff", 7, 4, 5, 6)
    # A coordinate that is a signalling NaN (the quiet bit clear): widening
    # it raised a floating-point warning once.
    out["signalling-nan.pcd"] = _pcd_header("x y z", "4 4 4", "F F F", "1 1 1", 2,
                                            "binary") + \
        struct.pack("<fff", 1, 2, 3) + struct.pack("<I", 0x7FA00000) + struct.pack("<ff", 5, 6)
    return out


def _las(version: str, point_format: int, n: int, crs: str | None = None,
         extra: bool = False) -> bytes:
    header = laspy.LasHeader(point_format=point_format, version=version)
    header.creation_date = dt.date(2026, 11, 23)  # laspy's default is today's
    header.scales = np.array([0.01, 0.01, 0.001])
    header.offsets = np.array([500_000.0, 5_400_000.0, 0.0])
    if crs:
        header.add_crs(pyproj.CRS(crs))
    if extra:
        header.add_extra_dims([laspy.ExtraBytesParams("range", "u2")])
    las = laspy.LasData(header)
    rng = np.random.default_rng(point_format)
    las.x = rng.uniform(500_000, 500_010, n)
    las.y = rng.uniform(5_400_000, 5_400_010, n)
    las.z = rng.uniform(0, 5, n)
    las.classification = rng.integers(0, 10, n).astype(np.uint8)
    las.return_number = np.ones(n, dtype=np.uint8)
    las.number_of_returns = np.ones(n, dtype=np.uint8)
    out = io.BytesIO()
    las.write(out)
    return out.getvalue()


def las() -> dict[str, bytes]:
    sample = (SAMPLES / "capture-scan.las").read_bytes()
    header_size, point_offset, _ = struct.unpack_from("<HII", sample, 94)
    record_length = struct.unpack_from("<H", sample, 105)[0]
    keep = 20
    cut = bytearray(sample[:point_offset + keep * record_length])
    struct.pack_into("<I", cut, 107, keep if sample[104] < 6 else 0)
    if sample[25] >= 4 and header_size >= 375:
        struct.pack_into("<Q", cut, 247, keep)
        struct.pack_into("<Q", cut, 235, 0)  # the EVLRs are cut off with the points
        struct.pack_into("<I", cut, 243, 0)
    out = {"scan-cut.las": bytes(cut)}
    for version, point_format, crs, extra in [
        ("1.2", 0, None, False), ("1.2", 3, "EPSG:32632", False), ("1.3", 5, None, False),
        ("1.4", 6, "EPSG:32632", True), ("1.4", 8, None, False), ("1.4", 10, None, True),
    ]:
        out[f"v{version}-f{point_format}.las"] = _las(version, point_format, 8, crs, extra)
    return out


def geojson() -> dict[str, bytes]:
    out = {name: (SAMPLES / name).read_bytes()
           for name in ("capture-sensors.geojson", "zones.geojson")}
    square = [[9.0, 48.0], [9.1, 48.0], [9.1, 48.1], [9.0, 48.1], [9.0, 48.0]]
    hole = [[9.02, 48.02], [9.02, 48.05], [9.05, 48.05], [9.05, 48.02], [9.02, 48.02]]
    out["bare-polygon.geojson"] = json.dumps({"type": "Polygon",
                                              "coordinates": [square, hole]}).encode()
    features = [{"type": "Feature", "id": i, "properties": {"n": i}, "geometry": {
        "type": "MultiPolygon", "coordinates": [[square], [hole]]}} for i in range(2)]
    out["lines.geojson"] = b"\xef\xbb\xbf" + "\n".join(
        ["\x1e" + json.dumps(f) for f in features] + ["{not json}"]).encode()
    out["refused.geojson"] = json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}},
        {"type": "Feature", "id": True, "geometry": {"type": "Polygon",
                                                     "coordinates": [[[0, 0], [200, 0],
                                                                      [0, 1], [0, 0]]]}},
    ]}).encode()
    return out


def main() -> None:
    for target, make in (("nmea", nmea), ("pcd", pcd), ("las", las), ("geojson", geojson)):
        folder = CORPUS / target
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, data in make().items():
            (folder / name).write_bytes(data)
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"{CORPUS}: {total} bytes")


if __name__ == "__main__":
    main()
