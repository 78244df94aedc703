"""PCD decoding of files built byte by byte from the specification (ASCII,
binary, binary_compressed with LZF), and the binary writer read back."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from gatewayd.errors import DecodeError, InputTooLarge
from gatewayd.pcd import decode_pcd, encode_pcd, looks_like_pcd
from gatewayd.pointcloud import PointFrame

RNG = np.random.default_rng(9)


def _header(fields: str, size: str, type_: str, count: str, n: int, data: str) -> bytes:
    return (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {fields}\nSIZE {size}\nTYPE {type_}\nCOUNT {count}\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n"
    ).encode()


def _lzf_literals(data: bytes) -> bytes:
    """An LZF stream of literal runs only (control byte < 32: len - 1)."""
    out = bytearray()
    for i in range(0, len(data), 32):
        chunk = data[i:i + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


def test_binary_with_fields_in_any_order_and_width():
    n = 200
    intensity = RNG.uniform(0, 1, n).astype(np.float32)
    ring = RNG.integers(0, 64, n).astype(np.uint16)
    xyz = RNG.normal(size=(n, 3)).astype(np.float32)
    body = b"".join(struct.pack("<fHfff", intensity[i], ring[i], xyz[i, 2], xyz[i, 0], xyz[i, 1])
                    for i in range(n))
    data = _header("intensity ring z x y", "4 2 4 4 4", "F U F F F", "1 1 1 1 1", n,
                   "binary") + body
    frame = decode_pcd(data, max_points=1000)
    np.testing.assert_array_equal(frame.xyz, xyz.astype(np.float64))
    np.testing.assert_array_equal(frame.fields["intensity"], intensity)
    np.testing.assert_array_equal(frame.fields["ring"], ring)
    assert frame.xyz.dtype == np.float64 and frame.xyz.flags.c_contiguous


def test_ascii_with_a_multi_count_field():
    data = _header("x y z rgb", "4 4 4 1", "F F F U", "1 1 1 3", 2, "ascii") + \
        b"1.5 2.5 3.5 10 20 30\n-1 -2 -3 40 50 60\n"
    frame = decode_pcd(data, max_points=10)
    np.testing.assert_array_equal(frame.xyz, [[1.5, 2.5, 3.5], [-1, -2, -3]])
    np.testing.assert_array_equal(frame.fields["rgb"], [[10, 20, 30], [40, 50, 60]])


def test_binary_compressed_decompresses_literals_and_back_references():
    n = 64
    xyz = RNG.normal(size=(n, 3)).astype(np.float32)
    label = np.arange(n, dtype=np.uint32)
    plain = b"".join(xyz[:, k].tobytes() for k in range(3)) + label.tobytes()
    # The label column as a literal of its first 4 bytes then back references:
    # hand-built runs check the decompressor against known plaintext.
    stream = _lzf_literals(plain)
    data = _header("x y z label", "4 4 4 4", "F F F U", "1 1 1 1", n, "binary_compressed") + \
        struct.pack("<II", len(stream), len(plain)) + stream
    frame = decode_pcd(data, max_points=1000)
    np.testing.assert_array_equal(frame.xyz, xyz.astype(np.float64))
    np.testing.assert_array_equal(frame.fields["label"], label)

    # "abcabcabcabc" as literal "abc" and one back reference of 9 bytes at distance 3.
    run = bytes([2]) + b"abc" + bytes([(7 << 5) | 0, 9 - 2 - 7, 2])
    zeros = np.zeros((4, 3), dtype=np.float32).tobytes()  # 48 bytes of x, y, z
    plain2 = zeros + b"abcabcabcabc"
    stream2 = _lzf_literals(zeros) + run
    data2 = _header("x y z tag", "4 4 4 1", "F F F U", "1 1 1 3", 4, "binary_compressed") + \
        struct.pack("<II", len(stream2), len(plain2)) + stream2
    frame2 = decode_pcd(data2, max_points=10)
    assert frame2.fields["tag"].tobytes() == b"abcabcabcabc"


def test_nan_points_of_an_organised_cloud_are_dropped_and_counted():
    xyz = np.array([[1, 2, 3], [np.nan, np.nan, np.nan], [4, 5, 6]], dtype=np.float32)
    data = _header("x y z", "4 4 4", "F F F", "1 1 1", 3, "binary") + xyz.tobytes()
    frame = decode_pcd(data, max_points=10)
    assert len(frame) == 2 and frame.dropped_nonfinite == 1


def test_a_signalling_nan_coordinate_is_dropped_and_counted_without_a_warning():
    # 0x7fa00000: a float32 NaN with the quiet bit clear, as a sensor's
    # garbage may carry; widening it to float64 raises FE_INVALID.
    snan = struct.pack("<I", 0x7FA00000)
    body = struct.pack("<fff", 1, 2, 3) + snan + struct.pack("<ff", 5, 6)
    data = _header("x y z", "4 4 4", "F F F", "1 1 1", 2, "binary") + body
    frame = decode_pcd(data, max_points=10)  # warnings are errors in this suite
    assert frame.xyz.tolist() == [[1.0, 2.0, 3.0]] and frame.dropped_nonfinite == 1


def test_written_pcd_reads_back_with_every_field():
    n = 100
    frame = PointFrame(RNG.normal(size=(n, 3)) * 1e5,
                       {"intensity": RNG.uniform(size=n).astype(np.float32),
                        "label": RNG.integers(0, 9, n).astype(np.int16),
                        "rgb": RNG.integers(0, 255, (n, 3)).astype(np.uint8)})
    back = decode_pcd(encode_pcd(frame), max_points=1000)
    np.testing.assert_array_equal(back.xyz, frame.xyz)  # float64 kept exactly
    for name, values in frame.fields.items():
        np.testing.assert_array_equal(back.fields[name], values)
    assert looks_like_pcd(encode_pcd(frame))


@pytest.mark.parametrize("data", [
    b"VERSION 0.7\nFIELDS x y\nSIZE 4 4\nTYPE F F\nCOUNT 1 1\nWIDTH 1\nPOINTS 1\nDATA ascii\n1 2\n",
    b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\nDATA binary\n",
    b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 5\nPOINTS 1\nDATA binary\n",
    b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nPOINTS 2\nDATA binary\n\0\0",
    b"VERSION 0.7\nFIELDS x y z\nSIZE 3 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\nDATA binary\n"
    + b"\0" * 12,
    b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\nDATA ascii\na b c\n",
    b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\nDATA lzma\n",
    b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 1\nPOINTS 1\n"
    b"DATA binary_compressed\n\x05\0\0\0\x0c\0\0\0\xff\xff\xff\xff\xff",
    b"no header here at all",
])
def test_broken_files_are_clear_errors(data):
    with pytest.raises(DecodeError):
        decode_pcd(data, max_points=100)


def test_more_points_than_allowed_are_refused_before_reading():
    data = _header("x y z", "4 4 4", "F F F", "1 1 1", 5000, "binary")
    with pytest.raises(InputTooLarge):
        decode_pcd(data, max_points=100)
