"""PCD v0.7 (and .6 headers) decoding and writing: ASCII, binary and
binary_compressed (LZF, decompressed in C) in; binary out, with float64
coordinates and every other field carried through."""

from __future__ import annotations

from typing import Any

import numpy as np

from gatewayd._native import ffi, lib
from gatewayd.errors import DecodeError, InputTooLarge
from gatewayd.pointcloud import PointFrame, from_columns

__all__ = ["decode_pcd", "encode_pcd", "looks_like_pcd"]

_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "<i1", ("I", 2): "<i2",
              ("I", 4): "<i4", ("I", 8): "<i8", ("U", 1): "<u1", ("U", 2): "<u2",
              ("U", 4): "<u4", ("U", 8): "<u8"}
_HEADER_LIMIT = 4096


def looks_like_pcd(head: bytes) -> bool:
    text = head[:_HEADER_LIMIT].lstrip()
    return text.startswith(b"# .PCD") or text.startswith(b"VERSION") or \
        (text.startswith(b"FIELDS") and b"DATA" in text)


def _header(data: bytes) -> tuple[dict[str, list[str]], int]:
    values: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0 or end > _HEADER_LIMIT * 4:
            raise DecodeError("PCD header has no DATA line")
        line = data[pos:end].decode("ascii", "replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split()
        values[key.upper()] = rest
        if key.upper() == "DATA":
            return values, pos


def decode_pcd(data: bytes, *, max_points: int) -> PointFrame:
    head, body_at = _header(data)
    try:
        names = head["FIELDS"]
        count = len(names)
        sizes = [int(v) for v in head.get("SIZE", [])]
        types = [v.upper() for v in head.get("TYPE", [])]
        counts = [int(v) for v in head.get("COUNT", ["1"] * count)]
        width = int(head.get("WIDTH", ["0"])[0])
        height = int(head.get("HEIGHT", ["1"])[0])
        points = int(head.get("POINTS", [str(width * height)])[0])
        mode = head["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as exc:
        raise DecodeError(f"PCD header is malformed: {exc}") from None
    if not (len(sizes) == len(types) == len(counts) == count) or count == 0:
        raise DecodeError("PCD header: FIELDS, SIZE, TYPE and COUNT disagree")
    lower = [n.lower() for n in names]
    if not {"x", "y", "z"} <= set(lower):
        raise DecodeError("PCD has no x, y and z fields")
    if points < 0 or width * height != points:
        raise DecodeError(f"PCD header: WIDTH x HEIGHT ({width} x {height}) is not POINTS "
                          f"({points})")
    if points > max_points:
        raise InputTooLarge(f"PCD frame of {points} points is over the limit of {max_points}")
    if any(c < 1 or c > 1024 for c in counts):
        raise DecodeError("PCD header: a COUNT is out of range")
    if any(counts[lower.index(axis)] != 1 for axis in ("x", "y", "z")):
        raise DecodeError("PCD header: x, y and z must each have COUNT 1")
    try:
        dtypes = [np.dtype(_PCD_TYPES[(t, s)]) for t, s in zip(types, sizes)]
    except KeyError:
        raise DecodeError("PCD header: unsupported TYPE/SIZE combination") from None
    layout = np.dtype([(f"f{i}", dt, (c,)) if c > 1 else (f"f{i}", dt)
                       for i, (dt, c) in enumerate(zip(dtypes, counts))])
    body = data[body_at:]
    if mode == "ascii":
        records = _ascii(body, layout, points, dtypes, counts)
    elif mode == "binary":
        need = points * layout.itemsize
        if len(body) < need:
            raise DecodeError(f"PCD binary data truncated: {len(body)} of {need} bytes")
        records = np.frombuffer(body, dtype=layout, count=points)
    elif mode == "binary_compressed":
        records = _compressed(body, layout, points, dtypes, counts)
    else:
        raise DecodeError(f"PCD DATA {mode!r} is not ascii, binary or binary_compressed")
    columns = {lower[i]: records[f"f{i}"] for i in range(count)}
    return from_columns(columns, {"viewpoint": head.get("VIEWPOINT"), "width": width,
                            "height": height})


def _ascii(body: bytes, layout: np.dtype, points: int, dtypes: list[np.dtype],
           counts: list[int]) -> np.ndarray:
    values_per_point = sum(counts)
    tokens = body.split()
    if len(tokens) < points * values_per_point:
        raise DecodeError("PCD ascii data truncated")
    table = np.array(tokens[: points * values_per_point] or [b"0"]
                     )[: points * values_per_point].reshape(points, values_per_point)
    out = np.empty(points, dtype=layout)
    col = 0
    for i, (dt, c) in enumerate(zip(dtypes, counts)):
        part = table[:, col:col + c]
        # Integers are read as integers: a 64-bit timestamp keeps every bit,
        # and a value outside its field's type is refused, not wrapped.
        wide = np.dtype(np.float64 if dt.kind == "f" else
                        np.int64 if dt.kind == "i" else np.uint64)
        try:
            values = part.astype(wide)
        except (ValueError, OverflowError):
            raise DecodeError(f"PCD ascii field {i} holds a value that is not a "
                              f"{dt.name}") from None
        if dt.kind in "iu":
            info = np.iinfo(dt)
            if values.size and (values.min() < info.min or values.max() > info.max):
                raise DecodeError(f"PCD ascii field {i} holds a value outside {dt.name}")
        with np.errstate(over="ignore"):  # float32 overflow is inf, then refused as such
            out[f"f{i}"] = values[:, 0] if c == 1 else values
        col += c
    return out


def _compressed(body: bytes, layout: np.dtype, points: int, dtypes: list[np.dtype],
                counts: list[int]) -> np.ndarray:
    if len(body) < 8:
        raise DecodeError("PCD binary_compressed data truncated")
    packed, unpacked = np.frombuffer(body[:8], dtype="<u4")
    need = points * layout.itemsize
    # LZF expands at most about 88-fold (a 3-byte reference repeats 264
    # bytes): a larger claim is refused before anything is allocated.
    if need > 88 * int(packed) + 64:
        raise DecodeError(f"PCD binary_compressed: {unpacked} bytes cannot come from "
                          f"{packed} compressed ones")
    if unpacked != need:
        raise DecodeError(f"PCD binary_compressed: {unpacked} bytes declared, {need} expected")
    if len(body) - 8 < packed:
        raise DecodeError("PCD binary_compressed data truncated")
    out = bytearray(max(need, 1))
    got = lib.gw_lzf_decompress(body[8:8 + packed], int(packed), ffi.from_buffer(out), need)
    if got != need:
        raise DecodeError("PCD binary_compressed data is corrupt")
    # Decompressed, the fields lie one after another, each for every point.
    records = np.empty(points, dtype=layout)
    at = 0
    for i, (dt, c) in enumerate(zip(dtypes, counts)):
        size = points * dt.itemsize * c
        column = np.frombuffer(bytes(out[at:at + size]), dtype=dt)
        records[f"f{i}"] = column.reshape(points, c) if c > 1 else column
        at += size
    return records


def encode_pcd(frame: PointFrame) -> bytes:
    """Binary PCD v0.7: float64 x y z, then the frame's other fields."""
    n = len(frame)
    names, sizes, types, counts, columns = ["x", "y", "z"], ["8"] * 3, ["F"] * 3, ["1"] * 3, []
    spec: list[tuple[Any, ...]] = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    for name, values in frame.fields.items():
        dt = values.dtype
        kind = {"f": "F", "i": "I", "u": "U", "b": "U"}.get(dt.kind)
        if kind is None or values.shape[:1] != (n,):
            continue  # raw byte blobs and the like have no PCD type
        count = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
        item = np.dtype(dt.str.replace(">", "<").replace("|b1", "|u1"))
        names.append(name)
        sizes.append(str(item.itemsize))
        types.append(kind)
        counts.append(str(count))
        spec.append((name, item, (count,)) if count > 1 else (name, item))
        columns.append((name, values))
    records = np.empty(n, dtype=np.dtype(spec))
    records["x"], records["y"], records["z"] = frame.xyz[:, 0], frame.xyz[:, 1], frame.xyz[:, 2]
    for name, values in columns:
        records[name] = values.reshape(records[name].shape)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(names)}\nSIZE {' '.join(sizes)}\nTYPE {' '.join(types)}\n"
        f"COUNT {' '.join(counts)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\nDATA binary\n"
    )
    return header.encode() + records.tobytes()
