"""Simulated field inputs for ``gatewayd demo``: a vehicle driving a loop.

A GNSS receiver on a pseudo-terminal reports the vehicle at 10 Hz (RMC, VTG,
GGA and GSA every cycle, a GSV group once a second), as a receiver on a UART
does: it never waits for the reader, and bytes the pty refuses are lost and
counted. A LiDAR scanner on the vehicle's mast publishes a binary PCD frame in
UTM 32N (EPSG:32632) every 2 s, and a field sensor publishes GeoJSON polygon
updates every 5 s over MQTT: some valid, some bow-ties for the repair to show,
and now and then a feature that is no polygon at all, which becomes a dead
letter.

The loop runs through the zones of the bundled ``samples/zones.geojson``
(depot yard, gate, public road near Stuttgart) and past them, so that zone tags
change as the vehicle moves.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gatewayd import geometry

__all__ = ["GpsReceiver", "InputPublisher", "Route", "Vehicle", "cycle_sentences",
           "lidar_frame", "polygon_update", "sentence"]

UTM = "EPSG:32632"
WGS84 = "EPSG:4326"
CYCLE_S = 0.1  # 10 Hz
_KNOTS = 3600.0 / 1852.0  # m/s to knots
_LATERAL_ACCEL = 1.5  # m/s², comfortable cornering
_ACCEL_WINDOW_M = 60  # speed changes spread over this much road

# The loop: (lon, lat, km/h on the leg that starts here). It starts in the
# depot yard, leaves through the gate onto the public road, comes back round
# outside every zone and re-enters the yard.
_WAYPOINTS = (
    (9.18050, 48.77990, 18.0),   # depot yard
    (9.18220, 48.78100, 15.0),   # depot yard, slowing for the gate
    (9.18300, 48.78200, 25.0),   # the gate, at the road's corner
    (9.18450, 48.78380, 45.0),   # public road
    (9.18700, 48.78450, 50.0),
    (9.18850, 48.78280, 45.0),
    (9.18800, 48.78080, 40.0),   # off the road, outside every zone
    (9.18550, 48.77950, 35.0),
    (9.18380, 48.77880, 25.0),
    (9.18150, 48.77820, 18.0),   # back in the depot yard
)

# A fixed sky: (PRN, elevation °, azimuth °, SNR dB-Hz).
_SATELLITES = ((2, 35, 310, 42), (5, 62, 230, 45), (12, 48, 70, 44), (15, 12, 160, 38),
               (18, 25, 290, 40), (24, 70, 120, 47), (25, 33, 50, 43), (29, 15, 20, 39),
               (31, 5, 200, 0), (32, 8, 330, 0))
_USED = (2, 5, 12, 15, 18, 24, 25, 29)


@dataclass(frozen=True, slots=True)
class Vehicle:
    """Where the vehicle is at one instant."""

    lon: float
    lat: float
    x: float  # UTM 32N easting, m
    y: float  # UTM 32N northing, m
    alt: float  # m above mean sea level
    speed: float  # m/s
    track: float  # degrees clockwise from true north


class Route:
    """A closed loop sampled every metre, with a speed for each sample."""

    def __init__(self, waypoints: tuple[tuple[float, float, float], ...] = _WAYPOINTS, *,
                 start_s: float = 0.0) -> None:
        self.start_s = start_s  # where on the loop the vehicle is at time 0
        corners = np.array([[lon, lat] for lon, lat, _ in waypoints], dtype=np.float64)
        utm = geometry.transform(corners, WGS84, UTM).points
        kmh = np.array([k for _, _, k in waypoints], dtype=np.float64)
        path, legs = _round_corners(utm, kmh / 3.6)
        self.xy, limit = _resample(path, legs)
        self.lonlat = geometry.transform(self.xy.copy(), UTM, WGS84).points
        step = np.diff(np.vstack([self.xy, self.xy[:1]]), axis=0)
        heading = np.arctan2(step[:, 0], step[:, 1])
        turn = np.abs(np.angle(np.exp(1j * (np.roll(heading, -1) - np.roll(heading, 1))))) / 2
        curve = np.sqrt(_LATERAL_ACCEL / np.maximum(turn / np.hypot(*step.T), 1e-9))
        self.speed = _smooth(np.minimum(limit, curve), _ACCEL_WINDOW_M)
        dt_s = np.hypot(*step.T) / self.speed
        self.times = np.concatenate([[0.0], np.cumsum(dt_s)])
        self.period = float(self.times[-1])
        # True north, not grid north: the track a receiver reports.
        dlonlat = np.diff(np.vstack([self.lonlat, self.lonlat[:1]]), axis=0)
        cos_lat = np.cos(np.radians(self.lonlat[:, 1]))
        self.track = np.degrees(np.arctan2(dlonlat[:, 0] * cos_lat, dlonlat[:, 1])) % 360

    @property
    def length_m(self) -> float:
        return float(len(self.xy))

    def at(self, t: float) -> Vehicle:
        """The vehicle ``t`` seconds after it set off (it keeps going round)."""
        t = (t + self.start_s) % self.period
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        i = min(max(i, 0), len(self.xy) - 1)
        j = (i + 1) % len(self.xy)
        f = (t - self.times[i]) / max(self.times[i + 1] - self.times[i], 1e-9)
        lon, lat = self.lonlat[i] + f * (self.lonlat[j] - self.lonlat[i])
        x, y = self.xy[i] + f * (self.xy[j] - self.xy[i])
        s = i + f
        return Vehicle(lon=float(lon), lat=float(lat), x=float(x), y=float(y),
                       alt=245.0 + 3.0 * math.sin(2 * math.pi * s / len(self.xy)),
                       speed=float(self.speed[i] + f * (self.speed[j] - self.speed[i])),
                       track=float(self.track[i]))


def _round_corners(points: np.ndarray, speeds: np.ndarray, rounds: int = 3
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Chaikin's corner cutting on a closed polygon; each point keeps its leg's speed."""
    for _ in range(rounds):
        nxt = np.roll(points, -1, axis=0)
        q = 0.75 * points + 0.25 * nxt
        r = 0.25 * points + 0.75 * nxt
        points = np.stack([q, r], axis=1).reshape(-1, 2)
        speeds = np.repeat(speeds, 2)
    return points, speeds


def _resample(points: np.ndarray, speeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point every metre along the closed polygon, and the speed limit there."""
    closed = np.vstack([points, points[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    at = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.arange(0.0, at[-1], 1.0)
    xy = np.column_stack([np.interp(s, at, closed[:, 0]), np.interp(s, at, closed[:, 1])])
    leg = np.minimum(np.searchsorted(at, s, side="right") - 1, len(speeds) - 1)
    return xy, speeds[leg]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """A circular moving average, so that speed changes take time and distance."""
    kernel = np.ones(window) / window
    padded = np.concatenate([values[-window:], values, values[:window]])
    return np.convolve(padded, kernel, mode="same")[window:-window]


# ---- NMEA ----

def sentence(body: str) -> bytes:
    """``$body*HH\\r\\n`` with the NMEA checksum (XOR of the body's bytes)."""
    check = 0
    for byte in body.encode("ascii"):
        check ^= byte
    return f"${body}*{check:02X}\r\n".encode("ascii")


def _angle(value: float, degree_digits: int, hemis: str) -> str:
    hemi = hemis[0] if value >= 0 else hemis[1]
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60.0
    if round(minutes, 6) >= 60.0:
        degrees, minutes = degrees + 1, 0.0
    return f"{degrees:0{degree_digits}d}{minutes:09.6f},{hemi}"


def cycle_sentences(v: Vehicle, when: dt.datetime, *, with_gsv: bool) -> list[bytes]:
    """One 10 Hz reporting cycle of a multi-constellation receiver."""
    hms = when.strftime("%H%M%S") + f".{when.microsecond // 10000:02d}"
    lat, lon = _angle(v.lat, 2, "NS"), _angle(v.lon, 3, "EW")
    knots = v.speed * _KNOTS
    used = ",".join(f"{p:02d}" for p in _USED) + "," * (12 - len(_USED))
    out = [
        sentence(f"GNRMC,{hms},A,{lat},{lon},{knots:.3f},{v.track:.2f},{when:%d%m%y},,,A,V"),
        sentence(f"GNVTG,{v.track:.2f},T,,M,{knots:.3f},N,{v.speed * 3.6:.3f},K,A"),
        sentence(f"GNGGA,{hms},{lat},{lon},1,{len(_USED)},0.79,{v.alt:.1f},M,47.9,M,,"),
        sentence(f"GNGSA,A,3,{used},1.35,0.79,1.09,1"),
    ]
    if with_gsv:
        out += _gsv(when)
    return out


def _gsv(when: dt.datetime) -> list[bytes]:
    groups = [_SATELLITES[i:i + 4] for i in range(0, len(_SATELLITES), 4)]
    wobble = when.second % 3
    out = []
    for n, group in enumerate(groups, 1):
        sats = ",".join(f"{prn:02d},{el:02d},{az:03d}," + (f"{snr + wobble:02d}" if snr else "")
                        for prn, el, az, snr in group)
        out.append(sentence(f"GPGSV,{len(groups)},{n},{len(_SATELLITES)},{sats},1"))
    return out


class GpsReceiver:
    """A receiver talking at 10 Hz on a pty reached through the symlink ``link``.

    The master side is non-blocking: what the pty refuses is lost and counted
    in ``overruns``, as a UART overruns when its reader falls behind.
    """

    def __init__(self, link: Path, route: Route) -> None:
        self.link = link
        self.route = route
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.tty = os.ttyname(self.slave)
        link.symlink_to(self.tty)
        self.cycles = 0
        self.sentences = 0
        self.bytes = 0
        self.overruns = 0
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, started: float) -> None:
        """Starts talking; ``started`` is the monotonic time the vehicle set off."""
        self._started = started
        self._thread = threading.Thread(target=self._talk, name="gps-receiver", daemon=True)
        self._thread.start()

    def _talk(self) -> None:
        epoch = dt.datetime.now(dt.UTC)
        epoch = epoch.replace(microsecond=epoch.microsecond // 100_000 * 100_000)
        i = 0
        while not self._stop.is_set():
            due = self._started + i * CYCLE_S
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            when = epoch + dt.timedelta(milliseconds=100 * i)
            lines = cycle_sentences(self.route.at(i * CYCLE_S), when,
                                    with_gsv=when.microsecond == 0)
            self._write(b"".join(lines))
            self.sentences += len(lines)
            self.cycles += 1
            i += 1

    def _write(self, data: bytes) -> None:
        try:
            sent = os.write(self.master, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return
        self.bytes += sent
        if sent < len(data):
            self.overruns += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def close(self) -> None:
        self.stop()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()


# ---- LiDAR ----

_PCD_POINT = np.dtype([("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("intensity", "<f4")])
_MAST_M = 3.0
_RINGS = 16
_RING_POINTS = 1450
_RANGE_M = 45.0


def _obstacles(route: Route, seed: int = 7) -> np.ndarray:
    """Parked cars and containers beside the road: (x, y, half-length,
    half-width, height, heading), fixed in the world."""
    rng = np.random.default_rng(seed)
    at = rng.choice(len(route.xy), size=min(60, len(route.xy)), replace=False)
    out = []
    for i in at:
        j = (i + 1) % len(route.xy)
        dx, dy = route.xy[j] - route.xy[i]
        norm = math.hypot(dx, dy) or 1.0
        side = rng.choice((-1.0, 1.0)) * rng.uniform(6.0, 14.0)
        cx, cy = route.xy[i] + side * np.array([dy, -dx]) / norm
        car = rng.random() < 0.6
        half_l, half_w, height = (2.25, 0.9, 1.5) if car else (3.0, 1.2, 2.6)
        out.append((cx, cy, half_l, half_w, height, math.atan2(dy, dx)))
    return np.array(out, dtype=np.float64)


def lidar_frame(v: Vehicle, obstacles: np.ndarray, rng: np.random.Generator) -> bytes:
    """A binary PCD frame of a spinning scanner on the vehicle's mast, in UTM 32N:
    ground rings around the vehicle and the walls of obstacles in range."""
    ground_z = v.alt
    ranges = 3.0 * (_RANGE_M / 3.0) ** (np.arange(_RINGS) / (_RINGS - 1))
    az = rng.uniform(0, 2 * np.pi, (_RINGS, _RING_POINTS))
    keep = rng.random((_RINGS, _RING_POINTS)) > 0.08  # dropouts: dark or absorbing spots
    r = (ranges[:, None] + rng.normal(0, 0.03, az.shape))[keep]
    az = az[keep]
    ground = np.column_stack([v.x + r * np.sin(az), v.y + r * np.cos(az),
                              ground_z + rng.normal(0, 0.02, len(r))])
    ground_i = np.clip(rng.normal(20, 6, len(r)), 0, 255)
    parts, intensity = [ground], [ground_i]
    for cx, cy, half_l, half_w, height, heading in obstacles:
        dist = math.hypot(cx - v.x, cy - v.y)
        if dist > _RANGE_M:
            continue
        n = int(np.clip(250_000 / max(dist, 3.0) ** 2, 40, 1500))
        # Points on the four walls: pick a wall by its length, then a spot on it.
        u = rng.uniform(-1, 1, n)
        wall = rng.integers(0, 4, n)
        local = np.where(wall[:, None] < 2,
                         np.column_stack([u * half_l, np.where(wall == 0, half_w, -half_w)]),
                         np.column_stack([np.where(wall == 2, half_l, -half_l), u * half_w]))
        c, s = math.cos(heading), math.sin(heading)
        wx = cx + local[:, 0] * c - local[:, 1] * s
        wy = cy + local[:, 0] * s + local[:, 1] * c
        wz = ground_z + rng.uniform(0.1, height, n)
        parts.append(np.column_stack([wx, wy, wz]))
        intensity.append(np.clip(rng.normal(90, 25, n), 0, 255))
    xyz = np.concatenate(parts)
    points = np.empty(len(xyz), dtype=_PCD_POINT)
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    points["intensity"] = np.concatenate(intensity)
    header = ("# .PCD v0.7 - gatewayd demo scanner\nVERSION 0.7\n"
              "FIELDS x y z intensity\nSIZE 8 8 8 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
              f"WIDTH {len(points)}\nHEIGHT 1\n"
              f"VIEWPOINT {v.x:.3f} {v.y:.3f} {ground_z + _MAST_M:.3f} 1 0 0 0\n"
              f"POINTS {len(points)}\nDATA binary\n")
    return header.encode("ascii") + points.tobytes()


# ---- polygons ----

def _offsets(v: Vehicle, pts: list[tuple[float, float]]) -> list[list[float]]:
    """Positions ``pts`` (metres right, metres ahead of the vehicle) as a closed
    lon/lat ring."""
    track = math.radians(v.track)
    m_lat = 111_132.0
    m_lon = m_lat * math.cos(math.radians(v.lat))
    ring = []
    for right, ahead in pts:
        east = ahead * math.sin(track) + right * math.cos(track)
        north = ahead * math.cos(track) - right * math.sin(track)
        ring.append([round(v.lon + east / m_lon, 8), round(v.lat + north / m_lat, 8)])
    return [*ring, ring[0]]


def polygon_update(v: Vehicle, n: int) -> bytes:
    """The field sensor's ``n``-th update, around the vehicle's position: its
    clearance envelope (valid), a work area ahead (a bow-tie every other update,
    as a sensor that mixes up its corner order sends), and every third update a
    track trace that is no polygon at all."""
    features: list[dict[str, Any]] = [{
        "type": "Feature", "id": f"envelope-{n}",
        "properties": {"sensor": "radar-1", "kind": "clearance"},
        "geometry": {"type": "Polygon", "coordinates": [
            _offsets(v, [(-2.5, -4.0), (2.5, -4.0), (2.5, 6.0), (-2.5, 6.0)])]},
    }]
    if n % 2:
        corners = [(-6.0, 10.0), (6.0, 40.0), (6.0, 10.0), (-6.0, 40.0)]  # crossed
    else:
        corners = [(-6.0, 10.0), (6.0, 10.0), (6.0, 40.0), (-6.0, 40.0)]
    features.append({
        "type": "Feature", "id": f"work-area-{n}",
        "properties": {"sensor": "camera-2", "kind": "work_area"},
        "geometry": {"type": "Polygon", "coordinates": [_offsets(v, corners)]},
    })
    if n % 3 == 1:
        trace = _offsets(v, [(0.0, -30.0), (0.0, -15.0), (0.0, 0.0)])[:-1]
        features.append({
            "type": "Feature", "id": f"trace-{n}",
            "properties": {"sensor": "radar-1", "kind": "trace"},
            "geometry": {"type": "LineString", "coordinates": trace},
        })
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


# ---- MQTT inputs ----

class InputPublisher:
    """Publishes a LiDAR frame every ``lidar_every_s`` and a polygon update every
    ``polygon_every_s`` through ``publish(topic, payload)``, from a thread."""

    def __init__(self, route: Route, publish: Callable[[str, bytes], None], prefix: str, *,
                 lidar_every_s: float = 2.0, polygon_every_s: float = 5.0) -> None:
        self.route = route
        self._publish = publish
        self._prefix = prefix
        self._lidar_every = lidar_every_s
        self._polygon_every = polygon_every_s
        self._obstacles = _obstacles(route)
        self._rng = np.random.default_rng(11)
        self.frames = 0
        self.polygon_updates = 0
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, started: float) -> None:
        self._started = started
        self._thread = threading.Thread(target=self._run, name="mqtt-inputs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_frame = self._started + 0.5
        next_polygons = self._started + 1.0
        while not self._stop.is_set():
            due = min(next_frame, next_polygons)
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            now = time.monotonic()
            v = self.route.at(now - self._started)
            if now >= next_frame:
                next_frame += self._lidar_every
                frame = lidar_frame(v, self._obstacles, self._rng)
                self._publish(f"{self._prefix}/lidar/mast", frame)
                self.frames += 1
            if now >= next_polygons:
                next_polygons += self._polygon_every
                self._publish(f"{self._prefix}/polygon/field",
                              polygon_update(v, self.polygon_updates))
                self.polygon_updates += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
