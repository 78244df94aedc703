"""Regenerates the sample captures bundled in gatewayd/samples (used by `make demo`).

    .venv/bin/python tests/make_samples.py

A two-minute drive around a depot near Stuttgart as a u-blox-style receiver
reports it (with a burst of line noise and one corrupted sentence, as real
serial captures have), one LiDAR scan of the yard as LAS 1.4 in ETRS89 / UTM
zone 32N, sensor polygons (some invalid), and the depot's zones.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from functools import reduce
from pathlib import Path

import laspy
import numpy as np
import pyproj

OUT = Path(__file__).resolve().parent.parent / "gatewayd" / "samples"
RNG = np.random.default_rng(48)
LON0, LAT0 = 9.1800, 48.7800


def _sentence(body: str) -> str:
    checksum = reduce(lambda a, c: a ^ ord(c), body, 0)
    return f"${body}*{checksum:02X}\r\n"


def _dm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    deg = int(value)
    minutes = (value - deg) * 60
    return (f"{deg:02d}{minutes:08.5f}" if lat else f"{deg:03d}{minutes:08.5f}"), hemi


def nmea() -> bytes:
    start = dt.datetime(2026, 11, 3, 9, 30, 0, tzinfo=dt.UTC)
    lines: list[str] = []
    heading, speed = 45.0, 0.0
    lon, lat = LON0, LAT0
    for second in range(120):
        t = start + dt.timedelta(seconds=second)
        hhmmss = t.strftime("%H%M%S") + ".00"
        ddmmyy = t.strftime("%d%m%y")
        speed = min(8.0, speed + 0.5) if second < 100 else max(0.0, speed - 1.0)
        heading = (heading + 3.0 * math.sin(second / 10)) % 360
        lat += speed * math.cos(math.radians(heading)) / 111_320
        lon += speed * math.sin(math.radians(heading)) / (111_320 * math.cos(math.radians(lat)))
        la, ns = _dm(lat, True)
        lo, ew = _dm(lon, False)
        alt = 245.0 + 2 * math.sin(second / 20)
        knots = speed / 0.514444
        fix_ok = second >= 3
        quality = "1" if fix_ok else "0"
        lines.append(_sentence(
            f"GNRMC,{hhmmss},{'A' if fix_ok else 'V'},{la},{ns},{lo},{ew},{knots:.3f},"
            f"{heading:.2f},{ddmmyy},,,{'A' if fix_ok else 'N'},V"))
        lines.append(_sentence(f"GNVTG,{heading:.2f},T,,M,{knots:.3f},N,{speed * 3.6:.3f},K,A"))
        lines.append(_sentence(
            f"GNGGA,{hhmmss},{la},{ns},{lo},{ew},{quality},12,0.79,{alt:.1f},M,47.9,M,,"))
        lines.append(_sentence("GNGSA,A,3,02,05,12,15,18,24,25,29,,,,,1.35,0.79,1.09,1"))
        lines.append(_sentence("GPGSV,3,1,10,02,35,310,42,05,62,230,45,12,48,070,44,15,12,160,38,1"))
        lines.append(_sentence("GPGSV,3,2,10,18,25,290,40,24,70,120,47,25,33,050,43,29,15,020,39,1"))
        lines.append(_sentence("GPGSV,3,3,10,31,05,200,,32,08,330,,1"))
        lines.append(_sentence(f"GNGST,{hhmmss},17,1.4,1.1,37.4,1.2,1.3,2.6"))
        if second == 40:
            lines.append("\x00\xff\x13garbage on the line $GNGGA,broken\r\n")
        if second == 41:
            lines.append(lines[-8].replace("*", "9*", 1))  # a corrupted RMC: bad checksum
        if second % 30 == 0:
            lines.append(_sentence("PUBX,00,093000.00,4846.80000,N,00910.80000,E,245.0,G3"))
    return "".join(lines).encode("latin-1")


def las() -> bytes:
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True)
    x0, y0 = t.transform(LON0 + 0.0006, LAT0 + 0.0006)
    n = 8_000
    # A flat yard with two parked trailers on it, as a scanner on a mast sees it.
    x = RNG.uniform(-40, 40, n)
    y = RNG.uniform(-40, 40, n)
    z = RNG.normal(0.0, 0.02, n)
    for cx, cy in ((-10.0, 5.0), (12.0, -8.0)):
        inside = (np.abs(x - cx) < 6) & (np.abs(y - cy) < 1.3)
        z[inside] = 3.9 + RNG.normal(0, 0.02, inside.sum())
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.array([round(x0, -3), round(y0, -3), 0.0])
    header.add_crs(pyproj.CRS("EPSG:25832"))
    cloud = laspy.LasData(header)
    cloud.x, cloud.y, cloud.z = x + x0, y + y0, z + 244.0
    cloud.intensity = RNG.integers(0, 4096, n).astype(np.uint16)
    cloud.classification = np.where(z > 1, 6, 2).astype(np.uint8)
    cloud.gps_time = np.linspace(0, 0.1, n)
    path = OUT / "capture-scan.las"
    cloud.write(path)
    return path.read_bytes()


def _square(lon: float, lat: float, dlon: float, dlat: float) -> list[list[float]]:
    return [[lon, lat], [lon + dlon, lat], [lon + dlon, lat + dlat], [lon, lat + dlat], [lon, lat]]


def sensors() -> str:
    features = [
        {"type": "Feature", "id": "loading-bay-1",
         "geometry": {"type": "Polygon", "coordinates": [_square(LON0 + 0.0002, LAT0 + 0.0002,
                                                                  0.0003, 0.0002)]},
         "properties": {"sensor": "radar-3"}},
        {"type": "Feature", "id": "bow-tie-occupancy",
         "geometry": {"type": "Polygon", "coordinates": [[
             [LON0 + 0.001, LAT0 + 0.001], [LON0 + 0.0015, LAT0 + 0.0015],
             [LON0 + 0.0015, LAT0 + 0.001], [LON0 + 0.001, LAT0 + 0.0015],
             [LON0 + 0.001, LAT0 + 0.001]]]},
         "properties": {"sensor": "camera-7"}},
        {"type": "Feature", "id": "two-bays",
         "geometry": {"type": "MultiPolygon", "coordinates": [
             [_square(LON0 + 0.002, LAT0, 0.0002, 0.0002)],
             [_square(LON0 + 0.0021, LAT0 + 0.0001, 0.0002, 0.0002)]]},
         "properties": {"sensor": "radar-4"}},
        {"type": "Feature", "id": "line-not-a-polygon",
         "geometry": {"type": "LineString", "coordinates": [[LON0, LAT0], [LON0 + 0.001, LAT0]]},
         "properties": {}},
    ]
    return json.dumps({"type": "FeatureCollection", "features": features}, indent=1)


def zones() -> str:
    features = [
        {"type": "Feature", "id": "depot-yard",
         "geometry": {"type": "Polygon", "coordinates": [_square(LON0 - 0.001, LAT0 - 0.001,
                                                                  0.004, 0.003)]},
         "properties": {"name": "depot-yard"}},
        {"type": "Feature", "id": "gate",
         "geometry": {"type": "Polygon", "coordinates": [_square(LON0 + 0.0025, LAT0 + 0.0015,
                                                                  0.001, 0.001)]},
         "properties": {"name": "gate"}},
        {"type": "Feature", "id": "public-road",
         "geometry": {"type": "Polygon", "coordinates": [_square(LON0 + 0.003, LAT0 + 0.002,
                                                                  0.01, 0.006)]},
         "properties": {"name": "public-road"}},
    ]
    return json.dumps({"type": "FeatureCollection", "features": features}, indent=1)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "capture-drive.nmea").write_bytes(nmea())
    las()
    (OUT / "capture-sensors.geojson").write_text(sensors() + "\n")
    (OUT / "zones.geojson").write_text(zones() + "\n")


if __name__ == "__main__":
    main()
