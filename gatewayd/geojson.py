"""GeoJSON (RFC 7946) decoding: sensor polygon updates and zone files.

Bytes in, polygon features out. A document may be a Feature, a
FeatureCollection, a bare Polygon or MultiPolygon, or newline-delimited
features. Coordinates are WGS84 longitude/latitude. A bad feature is refused
on its own (its neighbours go on); geometric validity is not judged here: a
bow-tie passes through, exactly as given, for the geometry core to check and
repair.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gatewayd.errors import DecodeError, InputTooLarge
from gatewayd.geometry import RaggedArrays, pack

__all__ = ["GeoJsonResult", "PolygonFeature", "RejectedFeature", "decode_geojson",
           "pack_polygons"]


@dataclass(frozen=True, slots=True)
class PolygonFeature:
    index: int
    feature_id: str | None
    multi: bool
    parts: tuple[tuple[np.ndarray, ...], ...]  # polygons → rings → (K, 2)
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RejectedFeature:
    index: int
    feature_id: str | None
    reason: str  # "bad_input" or "too_large"
    detail: str


@dataclass(frozen=True, slots=True)
class GeoJsonResult:
    features: list[PolygonFeature]
    rejected: list[RejectedFeature]


class _Refused(Exception):
    def __init__(self, detail: str, reason: str = "bad_input") -> None:
        super().__init__(detail)
        self.reason = reason


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number GeoJSON allows")


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise DecodeError("GeoJSON nested too deeply") from None
    except ValueError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None


_NUMBER = (int, float)


def _ring(raw: Any, budget: list[int]) -> np.ndarray:
    if not isinstance(raw, list) or len(raw) < 3:
        raise _Refused("a ring needs at least 3 positions")
    budget[0] -= len(raw)
    if budget[0] < 0:
        raise _Refused("too many vertices", "too_large")
    # Checked a ring at a time, not a position at a time: the common ring of
    # [lon, lat] pairs of floats costs a few C loops; anything else is found
    # exactly by _position below, which names what is wrong with it.
    if all(type(p) is list and len(p) == 2 for p in raw):
        pairs = raw
    elif all(type(p) is list and 2 <= len(p) <= 4 for p in raw):
        pairs = [p[:2] for p in raw]
    else:
        pairs = None
    if pairs is not None and {type(v) for p in pairs for v in p} <= {float, int}:
        try:
            out = np.array(pairs, dtype=np.float64)
        except OverflowError:  # an integer of hundreds of digits
            out = None
        if out is not None:
            lon, lat = out[:, 0], out[:, 1]
            ok = (np.abs(lon) <= 180.0) & (np.abs(lat) <= 90.0)  # NaN is never ok
            if ok.all():
                return out
    for k, position in enumerate(raw):
        _position(k, position)
    raise AssertionError("a refused ring names its position")  # pragma: no cover


def _position(k: int, position: Any) -> None:
    """Raises _Refused naming what is wrong with position ``k``, if anything."""
    if not isinstance(position, list) or not 2 <= len(position) <= 4:
        raise _Refused(f"position {k} is not [lon, lat]")
    lon, lat = position[0], position[1]
    if isinstance(lon, bool) or isinstance(lat, bool) or \
            not isinstance(lon, _NUMBER) or not isinstance(lat, _NUMBER):
        raise _Refused(f"position {k} has a non-numeric coordinate")
    try:
        finite = math.isfinite(lon) and math.isfinite(lat)
    except OverflowError:  # an integer of hundreds of digits
        finite = False
    if not finite:
        raise _Refused(f"position {k} is not finite")
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise _Refused(f"position {k} ({lon}, {lat}) is outside longitude/latitude range")


def _polygon(raw: Any, budget: list[int]) -> tuple[np.ndarray, ...]:
    if not isinstance(raw, list) or not raw:
        raise _Refused("a polygon needs at least an exterior ring")
    return tuple(_ring(r, budget) for r in raw)


def _geometry(geom: Any, max_vertices: int) -> tuple[bool, tuple[tuple[np.ndarray, ...], ...]]:
    if not isinstance(geom, dict):
        raise _Refused("the feature has no geometry")
    kind = geom.get("type")
    coords = geom.get("coordinates")
    budget = [max_vertices]
    if kind == "Polygon":
        return False, (_polygon(coords, budget),)
    if kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise _Refused("a MultiPolygon needs at least one polygon")
        return True, tuple(_polygon(p, budget) for p in coords)
    raise _Refused(f"geometry type {kind!r} is not Polygon or MultiPolygon")


def _candidates(data: bytes) -> Iterator[Any]:
    text = data.decode("utf-8-sig", errors="strict").strip()
    if not text:
        raise DecodeError("empty GeoJSON document")
    try:
        document = _loads(text)
    except DecodeError:
        lines = [ln.strip().lstrip("\x1e") for ln in text.splitlines()]
        if len([ln for ln in lines if ln]) < 2:
            raise
        # Newline-delimited features: a bad line is one refused feature.
        for line in lines:
            if line:
                try:
                    yield _loads(line)
                except DecodeError as exc:
                    yield exc
        return
    if isinstance(document, dict) and document.get("type") == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise DecodeError("FeatureCollection without a features list")
        yield from features
    elif isinstance(document, dict):
        yield document
    else:
        raise DecodeError("a GeoJSON document must be an object")


def decode_geojson(data: bytes, *, max_bytes: int, max_vertices: int,
                   max_features: int) -> GeoJsonResult:
    if len(data) > max_bytes:
        raise InputTooLarge(f"GeoJSON of {len(data)} bytes is over the limit of {max_bytes}")
    try:
        candidates = list(_candidates(data))
    except UnicodeDecodeError as exc:
        raise DecodeError(f"GeoJSON is not UTF-8: {exc.reason}") from None
    if len(candidates) > max_features:
        raise InputTooLarge(f"{len(candidates)} features, over the limit of {max_features}")
    features: list[PolygonFeature] = []
    rejected: list[RejectedFeature] = []
    for index, raw in enumerate(candidates):
        feature_id = None
        try:
            if isinstance(raw, DecodeError):
                raise _Refused(str(raw))
            if not isinstance(raw, dict):
                raise _Refused("a feature must be an object")
            if raw.get("type") == "Feature":
                fid = raw.get("id")
                feature_id = str(fid) if isinstance(fid, str | int | float) and \
                    not isinstance(fid, bool) else None
                geometry = raw.get("geometry")
                props = raw.get("properties")
                properties = props if isinstance(props, dict) else {}
            else:
                geometry, properties = raw, {}
            multi, parts = _geometry(geometry, max_vertices)
            features.append(PolygonFeature(index, feature_id, multi, parts, properties))
        except _Refused as exc:
            rejected.append(RejectedFeature(index, feature_id, exc.reason, str(exc)))
    return GeoJsonResult(features, rejected)


def pack_polygons(features: Sequence[PolygonFeature]) -> RaggedArrays:
    """The features as one set of ragged arrays, for one native batch call."""
    return pack([list(f.parts) for f in features], [f.multi for f in features])
