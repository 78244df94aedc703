"""LAS 1.2 to 1.4 decoding, uncompressed, point formats 0 to 10.

Coordinates come out scaled and offset (x = X * scale + offset) as float64;
every other attribute of the format is carried as a field, bit fields split
out. The CRS comes from the file's VLRs or EVLRs: OGC WKT (LASF_Projection
2112) first, else the GeoTIFF keys (34735) as "EPSG:n".
"""

from __future__ import annotations

import struct

import numpy as np

from gatewayd.errors import DecodeError, FormatError, InputTooLarge
from gatewayd.pointcloud import PointFrame, from_columns

__all__ = ["decode_las", "looks_like_las"]

_XYZ = [("X", "<i4"), ("Y", "<i4"), ("Z", "<i4")]
_LEGACY = [*_XYZ, ("intensity", "<u2"), ("_returns", "u1"), ("classification", "u1"),
           ("scan_angle_rank", "i1"), ("user_data", "u1"), ("point_source_id", "<u2")]
_EXTENDED = [*_XYZ, ("intensity", "<u2"), ("_returns", "u1"), ("_flags", "u1"),
             ("classification", "u1"), ("user_data", "u1"), ("scan_angle", "<i2"),
             ("point_source_id", "<u2"), ("gps_time", "<f8")]
_GPS = [("gps_time", "<f8")]
_RGB = [("red", "<u2"), ("green", "<u2"), ("blue", "<u2")]
_NIR = [("nir", "<u2")]
_WAVE = [("wavepacket_index", "u1"), ("wavepacket_offset", "<u8"), ("wavepacket_size", "<u4"),
         ("return_point_wave_location", "<f4"), ("x_t", "<f4"), ("y_t", "<f4"), ("z_t", "<f4")]
FORMATS = {
    0: _LEGACY, 1: _LEGACY + _GPS, 2: _LEGACY + _RGB, 3: _LEGACY + _GPS + _RGB,
    4: _LEGACY + _GPS + _WAVE, 5: _LEGACY + _GPS + _RGB + _WAVE,
    6: _EXTENDED, 7: _EXTENDED + _RGB, 8: _EXTENDED + _RGB + _NIR,
    9: _EXTENDED + _WAVE, 10: _EXTENDED + _RGB + _NIR + _WAVE,
}
_PROJECTED_KEY, _GEOGRAPHIC_KEY = 3072, 2048


def looks_like_las(head: bytes) -> bool:
    return head[:4] == b"LASF"


def _vlrs(data: bytes, start: int, count: int, extended: bool) -> dict[int, bytes]:
    """Records of LASF_Projection by record id."""
    found: dict[int, bytes] = {}
    size = 60 if extended else 54
    pos = start
    for _ in range(count):
        if pos + size > len(data):
            raise DecodeError("LAS variable-length record header truncated")
        user = data[pos + 2:pos + 18].split(b"\0", 1)[0]
        record_id = struct.unpack_from("<H", data, pos + 18)[0]
        length = struct.unpack_from("<Q" if extended else "<H", data, pos + 20)[0]
        body_at = pos + size
        if body_at + length > len(data):
            raise DecodeError("LAS variable-length record truncated")
        if user == b"LASF_Projection":
            found[record_id] = data[body_at:body_at + length]
        pos = body_at + length
    return found


def _crs(records: dict[int, bytes]) -> str | None:
    wkt = records.get(2112)
    if wkt:
        text = wkt.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        if text:
            return text
    keys = records.get(34735)
    if keys and len(keys) >= 8:
        values = np.frombuffer(keys[: len(keys) // 2 * 2], dtype="<u2")
        n = int(values[3])
        entries = values[4:4 + 4 * n]
        # A key directory cut short keeps its whole entries only.
        entries = entries[: len(entries) // 4 * 4].reshape(-1, 4)
        by_key = {int(k): (int(loc), int(v)) for k, loc, _, v in entries}
        for key in (_PROJECTED_KEY, _GEOGRAPHIC_KEY):
            location, value = by_key.get(key, (1, 0))
            if location == 0 and 0 < value < 32767:
                return f"EPSG:{value}"
    return None


def decode_las(data: bytes, *, max_points: int) -> PointFrame:
    if len(data) < 227 or not looks_like_las(data):
        raise DecodeError("not a LAS file (no LASF header)")
    major, minor = data[24], data[25]
    if major != 1 or minor not in (0, 1, 2, 3, 4):
        raise DecodeError(f"LAS version {major}.{minor} is not supported")
    header_size, point_offset, n_vlrs = struct.unpack_from("<HII", data, 94)
    point_format, record_length, legacy_count = struct.unpack_from("<BHI", data, 104)
    scales = np.array(struct.unpack_from("<3d", data, 131))
    offsets = np.array(struct.unpack_from("<3d", data, 155))
    if point_format & 0xC0:
        raise FormatError("LAZ (compressed LAS) is not supported; decompress it first")
    if point_format not in FORMATS:
        raise DecodeError(f"LAS point format {point_format} is not one of 0-10")
    count = legacy_count
    evlr_start = n_evlrs = 0
    if minor >= 4 and header_size >= 375 and len(data) >= 375:
        evlr_start, n_evlrs, count64 = struct.unpack_from("<QIQ", data, 235)
        count = count64 or legacy_count
    if count > max_points:
        raise InputTooLarge(f"LAS frame of {count} points is over the limit of {max_points}")
    base = np.dtype(FORMATS[point_format])
    if record_length < base.itemsize:
        raise DecodeError(f"LAS record length {record_length} is short for format "
                          f"{point_format} ({base.itemsize})")
    if header_size > point_offset or point_offset > len(data):
        raise DecodeError("LAS header sizes are inconsistent")
    records = _vlrs(data, header_size, n_vlrs, extended=False)
    if n_evlrs and evlr_start and evlr_start < len(data):
        records.update(_vlrs(data, evlr_start, n_evlrs, extended=True))
    need = point_offset + count * record_length
    if len(data) < need:
        raise DecodeError(f"LAS point data truncated: {len(data)} of {need} bytes")
    # Extra bytes past the format's record are kept whole, as one raw field.
    extra = record_length - base.itemsize
    layout = np.dtype(base.descr + ([("extra_bytes", f"V{extra}")] if extra else []))
    points = np.frombuffer(data, dtype=layout, count=count, offset=point_offset)
    xyz = np.empty((count, 3), dtype=np.float64)
    # A scale or offset that overflows makes inf or NaN: such points are
    # dropped and counted as non-finite, not warned about.
    with np.errstate(over="ignore", invalid="ignore"):
        for axis, name in enumerate("XYZ"):
            xyz[:, axis] = points[name] * scales[axis] + offsets[axis]
    columns = {name: np.array(points[name]) for name in layout.names or ()
               if name not in ("X", "Y", "Z") and not name.startswith("_")}
    returns = points["_returns"]
    if point_format < 6:
        # The legacy classification byte carries three flags above its class.
        legacy = columns["classification"]
        columns["classification"] = legacy & 0x1F
        columns["synthetic"] = (legacy >> 5) & 0x01
        columns["key_point"] = (legacy >> 6) & 0x01
        columns["withheld"] = (legacy >> 7) & 0x01
        columns["return_number"] = returns & 0x07
        columns["number_of_returns"] = (returns >> 3) & 0x07
        columns["scan_direction_flag"] = (returns >> 6) & 0x01
        columns["edge_of_flight_line"] = (returns >> 7) & 0x01
    else:
        flags = points["_flags"]
        columns["return_number"] = returns & 0x0F
        columns["number_of_returns"] = (returns >> 4) & 0x0F
        columns["classification_flags"] = flags & 0x0F
        columns["scanner_channel"] = (flags >> 4) & 0x03
        columns["scan_direction_flag"] = (flags >> 6) & 0x01
        columns["edge_of_flight_line"] = (flags >> 7) & 0x01
    if extra:
        columns["extra_bytes"] = np.frombuffer(points["extra_bytes"].tobytes(),
                                               dtype=np.uint8).reshape(count, extra)
    meta = {"version": f"{major}.{minor}", "point_format": point_format,
            "scale": scales.tolist(), "offset": offsets.tolist()}
    return from_columns(columns, meta, _crs(records), xyz)
