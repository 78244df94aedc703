"""Intake: raw input into pipeline items, the same for replay and the daemon.

A file's bytes, an MQTT payload or a serial port's bytes become typed items
(fixes, polygons, frames) or dead letters; nothing here does I/O or waits.
Every item carries the origin the records made from it will name: source,
input digest, index, reception time, and the tokens (MQTT messages awaiting
their acknowledgement) that its records release.

GPS streams keep gpsd's reporting cycle across inputs: an NMEA input whose
sentences only open a cycle yields no fix yet; its token rides on the fix
that closes the cycle, so that the input is acknowledged only once the data
it carried is out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from gatewayd import geometry, records
from gatewayd.config import Config
from gatewayd.errors import DecodeError, GatewayError, InputTooLarge
from gatewayd.nmea import NmeaDecoder
from gatewayd.pipeline import DeadItem, FixItem, FrameItem, Item, PolygonItem, origin

__all__ = ["GpsStream", "GpsStreams", "Limits", "dead", "frame_items", "polygon_items"]

Tokens = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int
    max_points_per_frame: int
    max_vertices_per_polygon: int
    max_features: int

    @classmethod
    def of(cls, config: Config) -> Limits:
        p = config.pipeline
        return cls(p.max_payload_bytes, p.max_points_per_frame, p.max_vertices_per_polygon,
                   p.max_features)


def dead(source: str, digest: str, received_at: str, reason: str, detail: str,
         items: tuple[int | str, ...] = (0,), tokens: Tokens = ()) -> DeadItem:
    return DeadItem(origin(source, digest, 0, received_at, tokens), reason, detail, items)


def polygon_items(data: bytes, source: str, digest: str, received_at: str, limits: Limits,
                  tokens: Tokens = ()) -> list[Item]:
    """A GeoJSON document's polygon features, and a dead letter per refused one."""
    from gatewayd.geojson import decode_geojson

    try:
        result = decode_geojson(data, max_bytes=limits.max_payload_bytes,
                                max_vertices=limits.max_vertices_per_polygon,
                                max_features=limits.max_features)
    except DecodeError as exc:
        return [dead(source, digest, received_at, exc.reason, str(exc), tokens=tokens)]
    items: list[Item] = [
        PolygonItem(origin(source, digest, f.index, received_at, tokens), f.feature_id,
                    f.parts, f.multi)
        for f in result.features
    ]
    items += [dead(source, digest, received_at, r.reason, r.detail, (r.index,), tokens)
              for r in result.rejected]
    return items


def frame_items(fmt: str, data: bytes, source: str, digest: str, received_at: str,
                limits: Limits, *, crs: str | None, default_crs: str,
                bbox: tuple[float, ...] | None, tokens: Tokens = ()) -> list[Item]:
    """A PCD or LAS frame, pre-filtered to the bounding box when one is set.

    ``crs`` overrides the file's own CRS; ``default_crs`` applies when neither
    says one."""
    from gatewayd.las import decode_las
    from gatewayd.pcd import decode_pcd

    if len(data) > limits.max_payload_bytes:
        return [dead(source, digest, received_at, "too_large",
                     f"{len(data)} bytes, over the limit of {limits.max_payload_bytes}",
                     tokens=tokens)]
    decode = decode_las if fmt == "las" else decode_pcd
    try:
        frame = decode(data, max_points=limits.max_points_per_frame)
    except DecodeError as exc:
        return [dead(source, digest, received_at, exc.reason, str(exc), tokens=tokens)]
    crs_from = crs or frame.crs or default_crs
    try:
        geometry.check_crs(crs_from)
    except GatewayError as exc:
        return [dead(source, digest, received_at, "crs", str(exc), tokens=tokens)]
    points_in = len(frame)
    outside = _outside_lonlat(frame.xyz) if geometry.is_geographic(crs_from) else None
    if outside is not None:
        return [dead(source, digest, received_at, "crs",
                     f"the points (x {outside[0]:.6g}, y {outside[1]:.6g}, ...) are not "
                     f"longitude and latitude, as {crs_from} has them: is the source CRS "
                     f"right?", tokens=tokens)]
    if bbox:
        frame = frame.take(geometry.bbox_select(frame.xyz, bbox))
    return [FrameItem(origin(source, digest, 0, received_at, tokens), frame, crs_from,
                      points_in)]


def _outside_lonlat(xyz: np.ndarray) -> tuple[float, float] | None:
    """A point of the frame, when every point of a sample of it lies outside
    longitude and latitude's range: a frame of metres under a lon/lat CRS. A
    stray point out of range is the workers' to drop and count."""
    sample = xyz[:: max(1, len(xyz) // 1024), :2]
    sample = sample[np.isfinite(sample).all(axis=1)]
    if not len(sample):
        return None
    inside = (np.abs(sample[:, 0]) <= 360.0) & (np.abs(sample[:, 1]) <= 90.0)
    return None if inside.any() else (float(sample[0, 0]), float(sample[0, 1]))


# ---- GPS ----

def _tpv_digest(tpv: dict[str, Any]) -> str:
    # A live stream has no file to hash: a fix is named by its own content.
    return records.content_digest(tpv)


def _members_digest(members: str) -> str:
    # An NMEA fix's content, named by its TPV fields as its record writes
    # them: the same fix, the same name, in any stream and any pieces.
    return hashlib.sha256(members.encode()).hexdigest()


class GpsStream:
    """One GPS source's reporting cycle, kept across inputs (serial blocks or
    MQTT messages), with the tokens of inputs whose data waits in it.

    Each call returns the items made, and the tokens of inputs that are done
    without a record of their own (their sentences made no fix: satellites in
    view only, or garbage), which the caller may acknowledge at once."""

    def __init__(self, source: str, capacity: int | None = None) -> None:
        """``capacity``: the decoder's fixes a call (``NmeaDecoder``)."""
        self.source = source
        self.decoder = NmeaDecoder() if capacity is None else NmeaDecoder(capacity)
        self._waiting: list[object] = []  # tokens of inputs in the open cycle

    @property
    def holding(self) -> bool:
        return self.decoder.holding

    @property
    def waiting_tokens(self) -> tuple[object, ...]:
        """Tokens of inputs whose data waits in the open cycle."""
        return tuple(self._waiting)

    def waits_for(self, token: object) -> bool:
        """Whether data of the input with this token waits in the open cycle."""
        for t in self._waiting:  # noqa: SIM110  # one or two: no generator for so few
            if t is token:
                return True
        return False

    def nmea(self, data: bytes, received_at: str, token: object | None = None
             ) -> tuple[list[Item], Tokens]:
        fixes = self.decoder.feed_fields(data)
        if token is not None:
            self._waiting.append(token)
        return self._settle(fixes, received_at)

    def flush(self, received_at: str) -> tuple[list[Item], Tokens]:
        """Ends the open cycle (the source went quiet, or intake stops)."""
        return self._settle(self.decoder.flush_fields(), received_at)

    def _settle(self, fixes: list[tuple[dict[str, Any], str]], received_at: str
                ) -> tuple[list[Item], Tokens]:
        if self.decoder.holding:
            # This input may have opened the next cycle too: its token waits for
            # that fix as well; the earlier ones ride on the fixes made now.
            *earlier, last = self._waiting or [None]
            if not fixes:
                return [], ()
            carried = tuple(earlier)
            self._waiting = [last] if last is not None else []
        else:
            carried, self._waiting = tuple(self._waiting), []
            if not fixes:
                return [], carried
        out: list[Item] = []
        last = len(fixes) - 1
        # Each fix's TPV fields, and their JSON members as written in C: the
        # fix is named by them, and its record's line takes them as they are.
        for n, (fields, members) in enumerate(fixes):
            tpv = {"class": "TPV"}
            tpv.update(fields)
            out.append(FixItem(origin(self.source, _members_digest(members), 0, received_at,
                                      carried if n == last else ()), tpv, members))
        return out, ()

    def tpv(self, tpv: dict[str, Any], received_at: str, token: object | None = None,
            input_sha256: str | None = None, members: str | None = None) -> list[Item]:
        """A fix of its own (gpsd TPV or OwnTracks JSON). ``input_sha256``: of
        the message it came in, where it came alone; else it is named by its
        content. ``members``: as ``gpsjson.gps_json_fix`` gives them."""
        tokens = () if token is None else (token,)
        digest = _tpv_digest(tpv) if input_sha256 is None else input_sha256
        return [FixItem(origin(self.source, digest, 0, received_at, tokens), tpv, members)]


class GpsStreams:
    """The GPS streams of a daemon's sources, by name.

    A serial port's stream lasts as long as the daemon. An MQTT source's name
    is chosen by whoever may publish to the input topics, so at most
    ``mqtt_limit`` such streams are kept, each with a decoder room for
    ``mqtt_capacity`` fixes a call (a cycle a message needs little): a new
    name past the bound makes the stream that has gone longest without NMEA
    give way (a TPV source's, which never holds any, first). The caller
    flushes what a forgotten stream's open cycle holds. Should the source
    come back, it starts afresh: its first cycle's RMC is reported on its own
    again, as for any new source."""

    def __init__(self, mqtt_limit: int, mqtt_capacity: int) -> None:
        self.mqtt_limit = mqtt_limit
        self._capacity = mqtt_capacity
        self._streams: dict[str, GpsStream] = {}
        self._serial: set[str] = set()  # never forgotten
        self._last: dict[str, float] = {}  # source: time.monotonic() of its last NMEA

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, source: object) -> bool:
        return source in self._streams

    def __iter__(self) -> Iterator[GpsStream]:
        return iter(list(self._streams.values()))

    def get(self, source: str) -> GpsStream | None:
        return self._streams.get(source)

    def serial(self, name: str) -> GpsStream:
        """The stream of serial port ``name``, made on first use."""
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = GpsStream(name)
        self._serial.add(name)
        return stream

    def mqtt(self, source: str) -> tuple[GpsStream, GpsStream | None]:
        """The stream of MQTT source ``source``, and the stream forgotten to
        make room for it, if one was."""
        stream = self._streams.get(source)
        if stream is not None:
            return stream, None
        gone = self._forget_quietest() if len(self._streams) - len(self._serial) >= \
            self.mqtt_limit else None
        stream = self._streams[source] = GpsStream(source, self._capacity)
        return stream, gone

    def fed(self, source: str, now: float) -> None:
        """Notes NMEA from ``source`` at ``now`` (time.monotonic)."""
        self._last[source] = now

    def quiet(self, now: float, after_s: float) -> list[GpsStream]:
        """Streams whose open cycle has had no NMEA for ``after_s`` seconds."""
        last = self._last
        return [s for source, s in self._streams.items()
                if s.holding and now - last.get(source, now) >= after_s]

    def _forget_quietest(self) -> GpsStream | None:
        last, serial = self._last, self._serial
        sources = [s for s in self._streams if s not in serial]
        if not sources:
            return None
        source = min(sources, key=lambda s: last.get(s, 0.0))
        last.pop(source, None)
        return self._streams.pop(source)


def too_large(source: str, size: int, limit: int, received_at: str,
              tokens: Tokens = ()) -> DeadItem:
    exc = InputTooLarge(f"{size} bytes, over the limit of {limit}")
    return dead(source, records.input_digest(b""), received_at, exc.reason, str(exc),
                tokens=tokens)
