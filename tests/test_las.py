"""LAS decoding against laspy reading the same files, every version and point
format, with CRSs from WKT and from GeoTIFF keys."""

from __future__ import annotations

import io

import laspy
import numpy as np
import pyproj
import pytest

from gatewayd.errors import DecodeError, FormatError, InputTooLarge
from gatewayd.las import decode_las

RNG = np.random.default_rng(3)
FIELDS = ("intensity", "classification", "return_number", "number_of_returns",
          "point_source_id", "user_data")


def _las(version: str, point_format: int, n: int = 500, crs: str | None = None) -> bytes:
    header = laspy.LasHeader(point_format=point_format, version=version)
    header.scales = np.array([0.001, 0.002, 0.01])
    header.offsets = np.array([500_000.0, 5_400_000.0, 100.0])
    if crs is not None:
        header.add_crs(pyproj.CRS(crs))
    las = laspy.LasData(header)
    las.x = RNG.uniform(500_000, 500_100, n)
    las.y = RNG.uniform(5_400_000, 5_400_100, n)
    las.z = RNG.uniform(100, 130, n)
    las.intensity = RNG.integers(0, 65535, n).astype(np.uint16)
    las.classification = RNG.integers(0, 18, n).astype(np.uint8)
    las.return_number = RNG.integers(1, 4, n).astype(np.uint8)
    las.number_of_returns = np.full(n, 4, dtype=np.uint8)
    las.point_source_id = RNG.integers(0, 1000, n).astype(np.uint16)
    if "gps_time" in las.point_format.dimension_names:
        las.gps_time = RNG.uniform(0, 1e6, n)
    if "red" in las.point_format.dimension_names:
        las.red = RNG.integers(0, 65535, n).astype(np.uint16)
    out = io.BytesIO()
    las.write(out)
    return out.getvalue()


CASES = [("1.2", f) for f in range(0, 4)] + [("1.3", f) for f in range(0, 6)] + \
        [("1.4", f) for f in range(0, 11)]


@pytest.mark.parametrize(("version", "point_format"), CASES)
def test_coordinates_and_fields_match_laspy(version, point_format):
    data = _las(version, point_format)
    frame = decode_las(data, max_points=10_000)
    oracle = laspy.read(io.BytesIO(data))
    np.testing.assert_allclose(frame.xyz[:, 0], oracle.x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(frame.xyz[:, 1], oracle.y, rtol=0, atol=1e-9)
    np.testing.assert_allclose(frame.xyz[:, 2], oracle.z, rtol=0, atol=1e-9)
    for name in FIELDS:
        np.testing.assert_array_equal(frame.fields[name], np.asarray(oracle[name]), name)
    for name in ("gps_time", "red", "green", "blue", "nir", "scan_angle",
                 "scanner_channel", "wavepacket_index"):
        if name in oracle.point_format.dimension_names:
            np.testing.assert_array_equal(frame.fields[name], np.asarray(oracle[name]), name)
    assert frame.meta["point_format"] == point_format


@pytest.mark.parametrize("version", ["1.2", "1.4"])
def test_the_crs_comes_from_the_files_records(version):
    frame = decode_las(_las(version, 3 if version == "1.2" else 6, crs="EPSG:32632"),
                       max_points=10_000)
    assert frame.crs is not None
    assert pyproj.CRS(frame.crs).to_epsg() == 32632


def test_a_file_without_crs_says_none():
    assert decode_las(_las("1.2", 1), max_points=10_000).crs is None


def test_truncated_files_and_wrong_headers_are_clear_errors():
    data = _las("1.4", 6)
    with pytest.raises(DecodeError, match="truncated"):
        decode_las(data[:-100], max_points=10_000)
    with pytest.raises(DecodeError):
        decode_las(b"LASF" + b"\0" * 100, max_points=10_000)
    with pytest.raises(DecodeError):
        decode_las(b"not a las file at all" * 20, max_points=10_000)
    bad = bytearray(data)
    bad[25] = 9  # version 1.9
    with pytest.raises(DecodeError, match="version"):
        decode_las(bytes(bad), max_points=10_000)


def test_laz_is_refused_as_an_unsupported_format():
    bad = bytearray(_las("1.2", 1))
    bad[104] |= 0x80
    with pytest.raises(FormatError, match="LAZ"):
        decode_las(bytes(bad), max_points=10_000)


def test_more_points_than_allowed_are_refused_before_reading():
    with pytest.raises(InputTooLarge):
        decode_las(_las("1.4", 6, n=500), max_points=100)
