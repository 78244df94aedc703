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
import json
import json.scanner
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gatewayd import geometry, records
from gatewayd._native import ffi, lib
from gatewayd.config import Config
from gatewayd.errors import DecodeError, GatewayError, InputTooLarge
from gatewayd.nmea import NmeaDecoder
from gatewayd.pipeline import DeadItem, FixItem, FrameItem, Item, PolygonItem, origin

__all__ = ["GpsStream", "Limits", "dead", "frame_items", "gps_json_fix", "gps_json_tpv",
           "polygon_items"]

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

_MODES = {0: 1, 1: 1, 2: 2, 3: 3}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


_TPV_NUMBERS = ("lat", "lon", "altMSL", "altHAE", "alt", "speed", "track", "climb", "magvar",
                "eph", "epx", "epy", "epv")
# json's C scanner: one call for a document that json.loads would take as it
# is; anything else (whitespace around it, an error) goes to json.loads.
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _json_object(data: bytes) -> Any:
    # json.loads reads bytes that open with "{" and a second non-NUL byte as
    # UTF-8 (no BOM, not UTF-16/32), and decodes them with surrogatepass.
    if data[:1] == b"{" and data[1:2] not in (b"", b"\0"):
        try:
            text = data.decode("utf-8", "surrogatepass")
            doc, end = _scan(text, 0)
        except (StopIteration, ValueError, UnicodeDecodeError):
            pass
        else:
            if end == len(text):
                return doc
    return json.loads(data)


def gps_json_tpv(data: bytes) -> dict[str, Any]:
    """A gpsd TPV object or an OwnTracks location, as TPV fields.

    Raises DecodeError for anything else, or a position out of range."""
    return gps_json_fix(data)[0]


def gps_json_fix(data: bytes) -> tuple[dict[str, Any], str | None]:
    """``gps_json_tpv(data)``, and the same fields but "class" as JSON members
    (as ``records.dumps`` writes them) where they come at no extra cost: a
    TPV of the plain shape is read in C (gw_tpv_parse) and its members are
    written from the values read; anything else is read by Python's json
    (None)."""
    if type(data) is not bytes:
        data = bytes(data)  # a bytearray or memoryview, say: what follows slices bytes
    fix = ffi.new("gw_tpv *")
    if lib.gw_tpv_parse(data, len(data), fix):
        return _plain_tpv(data, fix)
    return _json_tpv(data), None


# gw_tpv's values, by bit of gw_tpv.present, with "alt" named altMSL where
# the document has no "altMSL" (bit 13 of a plan's key says it has one).
_TPV_ALT = _TPV_NUMBERS.index("alt")
_Plan = tuple[tuple[str, ...], Callable[[Sequence[float]], Sequence[float]], str]
_tpv_plans: dict[int, _Plan] = {}


def _tpv_plan(key: int) -> _Plan:
    index = [k for k in range(len(_TPV_NUMBERS)) if key >> k & 1]
    names = tuple("altMSL" if k == _TPV_ALT and not key >> len(_TPV_NUMBERS) & 1
                  else _TPV_NUMBERS[k] for k in index)
    pick: Callable[[Sequence[float]], Sequence[float]] = \
        operator.itemgetter(*index) if len(index) > 1 else \
        (lambda values: tuple(values[k] for k in index))  # one: itemgetter gives no tuple
    # repr of a float is what json writes; a plain TPV's values are finite.
    template = "".join(f',"{name}":{{!r}}' for name in names)
    plan = _tpv_plans[key] = (names, pick, template)
    return plan


def _plain_tpv(data: bytes, fix: Any) -> tuple[dict[str, Any], str]:
    mode = fix.mode
    tpv: dict[str, Any] = {"class": "TPV", "mode": mode}
    start = fix.time_start
    if start >= 0:
        # Printable ASCII without quotes or backslashes: json writes it as it is.
        tpv["time"] = time = data[start:start + fix.time_len].decode("ascii")
    key = fix.present | fix.alt_msl_named << len(_TPV_NUMBERS)
    names, pick, template = _tpv_plans.get(key) or _tpv_plan(key)
    values = pick(ffi.unpack(fix.values, len(_TPV_NUMBERS))) if names else ()
    tpv.update(zip(names, values))
    size = fix.members_len
    if size >= 0:
        return tpv, ffi.unpack(fix.members, size).decode("ascii")
    head = f'"mode":{mode},"time":"{time}"' if start >= 0 else f'"mode":{mode}'
    return tpv, head + template.format(*values)


def _json_tpv(data: bytes) -> dict[str, Any]:
    # gps_json_tpv, by Python's json: any document.
    try:
        doc = _json_object(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"GPS JSON does not parse: {exc}") from None
    except RecursionError:
        raise DecodeError("GPS JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise DecodeError("GPS JSON must be an object")
    tpv: dict[str, Any] = {"class": "TPV"}
    get = doc.get
    if get("class") == "TPV":
        mode = get("mode")
        tpv["mode"] = mode if type(mode) is int and mode in (1, 2, 3) else 1
        if isinstance(get("time"), str):
            tpv["time"] = doc["time"]
        isfinite = math.isfinite
        for name in _TPV_NUMBERS:
            value = get(name)
            # _number, inline: JSON numbers are exactly int or float (bool is not one).
            if type(value) is float:
                if not isfinite(value):
                    continue
            elif type(value) is int:
                value = _number(value)
                if value is None:
                    continue
            else:
                continue
            tpv["altMSL" if name == "alt" and "altMSL" not in doc else name] = value
    elif doc.get("_type") == "location":
        lat, lon = _number(doc.get("lat")), _number(doc.get("lon"))
        if lat is None or lon is None:
            raise DecodeError("OwnTracks location without lat and lon")
        tpv.update({"mode": 2, "lat": lat, "lon": lon})
        tst = _number(doc.get("tst"))
        if tst is not None:
            try:
                when = datetime.fromtimestamp(tst, UTC)
            except (OverflowError, ValueError, OSError):
                raise DecodeError(f"OwnTracks tst {tst:g} is not a time") from None
            tpv["time"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        alt = _number(doc.get("alt"))
        if alt is not None:
            tpv.update({"mode": 3, "altMSL": alt})
        for src, dst, scale in (("vel", "speed", 1 / 3.6), ("cog", "track", 1.0),
                                ("acc", "eph", 1.0), ("vac", "epv", 1.0)):
            value = _number(doc.get(src))
            if value is not None:
                tpv[dst] = value * scale
    else:
        raise DecodeError("GPS JSON is neither a gpsd TPV nor an OwnTracks location")
    lat, lon = tpv.get("lat"), tpv.get("lon")
    if (lat is None) != (lon is None):
        raise DecodeError("GPS JSON gives only one of lat and lon")
    if lat is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180):  # type: ignore[operator]
        raise DecodeError(f"position out of range: lat {lat}, lon {lon}")
    return tpv


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

    def __init__(self, source: str) -> None:
        self.source = source
        self.decoder = NmeaDecoder()
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
        return any(t is token for t in self._waiting)

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
        content. ``members``: as ``gps_json_fix`` gives them."""
        tokens = () if token is None else (token,)
        digest = _tpv_digest(tpv) if input_sha256 is None else input_sha256
        return [FixItem(origin(self.source, digest, 0, received_at, tokens), tpv, members)]


def too_large(source: str, size: int, limit: int, received_at: str,
              tokens: Tokens = ()) -> DeadItem:
    exc = InputTooLarge(f"{size} bytes, over the limit of {limit}")
    return dead(source, records.input_digest(b""), received_at, exc.reason, str(exc),
                tokens=tokens)
