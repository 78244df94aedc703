"""The geometry facade: what workers call to transform, check, repair and locate.

Everything here works on numpy float64 arrays in batches; the loops run in C
(gatewayd._native) and each call crosses the FFI boundary once per batch.
Contexts are per process and created on first use, so this module is safe to
import before a fork; nothing native is created at import time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from gatewayd import _geos, _points, _proj
from gatewayd.errors import GeometryError

__all__ = [
    "Polygons",
    "RaggedArrays",
    "TransformResult",
    "ZoneIndex",
    "bbox_select",
    "check_crs",
    "convex_hull",
    "is_geographic",
    "library_versions",
    "transform",
    "valid_zones",
    "voxel_select",
]

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563


class TransformResult(NamedTuple):
    points: np.ndarray
    failed: int


class RaggedPolygons(Protocol):
    """Polygons as flat arrays, the layout of shapely's to_ragged_array."""

    @property
    def coords(self) -> np.ndarray: ...
    @property
    def ring_offsets(self) -> np.ndarray: ...
    @property
    def polygon_offsets(self) -> np.ndarray: ...
    @property
    def part_offsets(self) -> np.ndarray: ...
    @property
    def multi(self) -> np.ndarray: ...


def _points_array(coords: np.ndarray, *, copy: bool) -> np.ndarray:
    arr = np.array(coords, dtype=np.float64, order="C", copy=copy)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"expected an (N, 2) or (N, 3) array of coordinates, got {arr.shape}")
    return arr


def transform(
    coords: np.ndarray, source: str, target: str, *, inplace: bool = False
) -> TransformResult:
    """Transforms (N, 2) or (N, 3) coordinates from ``source`` to ``target``.

    Axis order is x/easting/longitude first for every CRS. A point PROJ cannot
    transform comes back as NaN in every ordinate and is counted in ``failed``.
    With ``inplace`` the array (C-contiguous float64, writable) is overwritten.
    """
    if inplace:
        # Checked cheaply: at 128 points a chunk, each check is a percent.
        flags = coords.flags if type(coords) is np.ndarray else None
        if (
            flags is None
            or coords.dtype.char != "d"
            or not flags.c_contiguous
            or not flags.writeable
            or coords.ndim != 2
        ):
            raise ValueError(
                "inplace transform needs a writable C-contiguous (N, 2|3) float64 array"
            )
        points = coords
    else:
        points = _points_array(coords, copy=True)
    failed = _proj.transformation(source, target).transform_inplace(points)
    return TransformResult(points, failed)


def check_crs(definition: str) -> None:
    """Raises CRSError, naming the string and PROJ's message, if PROJ does not know it."""
    _proj.transformation(definition, definition)


def is_geographic(definition: str) -> bool:
    """Whether a CRS's horizontal coordinates are angles (lon/lat), not metres."""
    return _proj.context().is_angular(definition)


class Polygons:
    """A batch of Polygon/MultiPolygon geometries held natively by GEOS.

    Rings are closed where their last position differs from the first. A
    geometry GEOS refuses to build (a ring of three positions, say) stays in
    the batch as invalid, with GEOS's message as its reason.
    """

    __slots__ = ("_geoms",)

    def __init__(self, geoms: _geos.GeometryArray) -> None:
        self._geoms = geoms

    @classmethod
    def from_ragged(cls, arrays: RaggedPolygons) -> Polygons:
        coords = _points_array(arrays.coords, copy=False)
        if coords.shape[1] != 2:
            coords = np.ascontiguousarray(coords[:, :2])
        ring = np.ascontiguousarray(arrays.ring_offsets, dtype=np.int64)
        polygon = np.ascontiguousarray(arrays.polygon_offsets, dtype=np.int64)
        part = np.ascontiguousarray(arrays.part_offsets, dtype=np.int64)
        multi = np.ascontiguousarray(arrays.multi, dtype=np.uint8)
        _check_offsets(ring, len(coords), "ring_offsets")
        _check_offsets(polygon, len(ring) - 1, "polygon_offsets")
        _check_offsets(part, len(polygon) - 1, "part_offsets")
        if len(multi) != len(part) - 1:
            raise ValueError("multi needs one flag per geometry")
        return cls(_geos.build_polygons(coords, ring, polygon, part, multi))

    @classmethod
    def from_rings(
        cls, geometries: Sequence[Sequence[Sequence[np.ndarray]]], multi: Sequence[bool] = ()
    ) -> Polygons:
        """From nested lists: geometry → polygons → rings ((K, 2) arrays)."""
        return cls.from_ragged(pack(geometries, multi))

    def __len__(self) -> int:
        return self._geoms.n

    def validity(self) -> tuple[np.ndarray, list[str]]:
        """Per geometry: is it valid, and GEOS's reason text when it is not."""
        valid, reasons = _geos.validity(self._geoms)
        texts = ["" if ok else r.decode("utf-8", "replace") for ok, r in zip(valid, reasons)]
        return valid, texts

    def make_valid(self, only: np.ndarray | None = None) -> Polygons:
        """Repaired copies (GEOS make-valid, structure method, polygonal output);
        with ``only`` (a mask), of those alone, the others left empty."""
        mask = None if only is None else np.asarray(only, dtype=bool)
        if mask is not None and mask.shape != (len(self),):
            raise ValueError("make_valid: the mask needs one flag per geometry")
        return Polygons(_geos.make_valid(self._geoms, mask))

    def where(self, take: np.ndarray, other: Polygons) -> Polygons:
        """Geometry i of this batch where ``take[i]``, else of ``other``."""
        mask = np.asarray(take, dtype=bool)
        if mask.shape != (len(self),) or len(other) != len(self):
            raise ValueError("where: both batches and the mask need the same length")
        return Polygons(_geos.where(mask, self._geoms, other._geoms))

    def area(self) -> np.ndarray:
        """Planar area in the units of the coordinates squared."""
        return _geos.area(self._geoms)

    def geodesic_area(self) -> np.ndarray:
        """Area in m² on the WGS84 ellipsoid, for lon/lat coordinates."""
        return _geos.geodesic_area(self._geoms, WGS84_A, WGS84_F)

    def geojson(self, i: int) -> str | None:
        """Geometry ``i`` as GeoJSON text (None if it could not be built)."""
        return _geos.to_geojson(self._geoms, i)

    def geojson_all(self) -> list[str | None]:
        """Every geometry as GeoJSON text (None where one could not be built)."""
        return _geos.to_geojson_all(self._geoms)


def _check_offsets(offsets: np.ndarray, limit: int, name: str) -> None:
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != limit:
        raise ValueError(f"{name} must run from 0 to {limit}")
    if len(offsets) > 1 and np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name} must not decrease")


class RaggedArrays(NamedTuple):
    """Polygons as flat arrays (see RaggedPolygons)."""

    coords: np.ndarray
    ring_offsets: np.ndarray
    polygon_offsets: np.ndarray
    part_offsets: np.ndarray
    multi: np.ndarray


def pack(
    geometries: Sequence[Sequence[Sequence[np.ndarray]]], multi: Sequence[bool] = ()
) -> RaggedArrays:
    """Flattens geometry → polygons → rings into ragged arrays."""
    rings: list[np.ndarray] = []
    ring_offsets = [0]
    polygon_offsets = [0]
    part_offsets = [0]
    for polygons in geometries:
        for polygon in polygons:
            for ring in polygon:
                arr = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
                rings.append(arr)
                ring_offsets.append(ring_offsets[-1] + len(arr))
            polygon_offsets.append(len(ring_offsets) - 1)
        part_offsets.append(len(polygon_offsets) - 1)
    flags = np.array(
        list(multi) if multi else [len(p) != 1 for p in geometries], dtype=np.uint8
    )
    coords = np.concatenate(rings) if rings else np.empty((0, 2))
    return RaggedArrays(
        np.ascontiguousarray(coords),
        np.array(ring_offsets, dtype=np.int64),
        np.array(polygon_offsets, dtype=np.int64),
        np.array(part_offsets, dtype=np.int64),
        flags,
    )


def valid_zones(arrays: RaggedArrays) -> RaggedArrays:
    """Zone polygons ready for a ZoneIndex: the valid ones as they are, the
    invalid ones repaired (GEOS make-valid, structure method), and those that
    cannot be built or repaired left with no polygon (never matching)."""
    polygons = Polygons.from_ragged(arrays)
    valid, _ = polygons.validity()
    if valid.all():
        return arrays
    repaired = polygons.make_valid(~valid).geojson_all()
    geometries = []
    for i, ok in enumerate(valid.tolist()):
        geometries.append(_rings_of(arrays, i) if ok else _rings_of_geojson(repaired[i]))
    return pack(geometries, [len(g) != 1 for g in geometries])


def _rings_of(arrays: RaggedArrays, i: int) -> list[list[np.ndarray]]:
    """Geometry ``i`` of ragged arrays as polygons of ring arrays (views)."""
    out = []
    for p in range(int(arrays.part_offsets[i]), int(arrays.part_offsets[i + 1])):
        rings = range(int(arrays.polygon_offsets[p]), int(arrays.polygon_offsets[p + 1]))
        out.append([arrays.coords[arrays.ring_offsets[r]:arrays.ring_offsets[r + 1], :2]
                    for r in rings])
    return out


def _rings_of_geojson(text: str | None) -> list[list[np.ndarray]]:
    if not text:
        return []
    geom = json.loads(text)
    polygons = {"Polygon": [geom.get("coordinates")],
                "MultiPolygon": geom.get("coordinates")}.get(geom.get("type"), [])
    return [[np.asarray(ring, dtype=np.float64)[:, :2] for ring in polygon]
            for polygon in polygons or [] if polygon]


class ZoneIndex:
    """Named zone polygons in an STRtree; one per worker process.

    The polygons stay where they are, in ``arrays`` (memory-mapped from a file
    every worker shares, say): the index reads them in place and copies none.
    They must be valid, as ``valid_zones`` makes them."""

    __slots__ = ("_tree", "names")

    def __init__(self, arrays: RaggedArrays, names: Sequence[str]) -> None:
        coords = arrays.coords
        if coords.ndim != 2 or coords.shape[1] != 2 or coords.dtype != np.float64 or \
                not coords.flags.c_contiguous:
            coords = np.ascontiguousarray(np.asarray(coords, dtype=np.float64)[:, :2])
        offsets = [np.ascontiguousarray(a, dtype=np.int64) for a in
                   (arrays.ring_offsets, arrays.polygon_offsets, arrays.part_offsets)]
        _check_offsets(offsets[0], len(coords), "ring_offsets")
        _check_offsets(offsets[1], len(offsets[0]) - 1, "polygon_offsets")
        _check_offsets(offsets[2], len(offsets[1]) - 1, "part_offsets")
        if len(names) != len(offsets[2]) - 1:
            raise ValueError("one name per zone polygon")
        self.names = tuple(names)
        self._tree = _geos.ZoneTree(coords, *offsets)

    @classmethod
    def of(cls, polygons: Sequence[Sequence[Sequence[np.ndarray]]], names: Sequence[str]
           ) -> ZoneIndex:
        """From nested lists (geometry → polygons → rings), repaired as needed."""
        return cls(valid_zones(pack(polygons)), names)

    def __len__(self) -> int:
        return len(self.names)

    def locate(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point index, zone index) pairs, sorted, for every point in a zone
        (its boundary included). Non-finite points fall in no zone."""
        return self._tree.locate(_points_array(points, copy=False))

    def zones_of(self, points: np.ndarray) -> list[tuple[str, ...]]:
        """For each point, the names of the zones it falls in."""
        pts = _points_array(points, copy=False)
        found: list[list[str]] = [[] for _ in range(len(pts))]
        for p, z in zip(*self._tree.locate(pts)):
            found[p].append(self.names[z])
        return [tuple(names) for names in found]

    def zones_of_polygons(self, polygons: Polygons) -> list[tuple[str, ...]]:
        """For each polygon, the names of the zones it intersects."""
        found: list[list[str]] = [[] for _ in range(len(polygons))]
        for g, z in zip(*self._tree.intersecting(polygons._geoms)):
            found[g].append(self.names[z])
        return [tuple(names) for names in found]

    def zones_touching(self, points: np.ndarray) -> tuple[str, ...]:
        """The names of every zone any of the points falls in."""
        _, zones = self._tree.locate(_points_array(points, copy=False))
        return tuple(self.names[z] for z in np.unique(zones))


def convex_hull(points: np.ndarray) -> np.ndarray:
    """The convex hull of a point set as (K, 2) vertices: a closed ring when the
    points span an area, fewer when they are collinear or one. NaN points are
    left out."""
    pts = _points_array(points, copy=False)
    return _geos.convex_hull(pts)


def voxel_select(points: np.ndarray, size: float) -> np.ndarray:
    """Indices of the first point in each occupied voxel of edge ``size``.

    The grid is anchored at the origin; non-finite points are dropped; a size
    of 0 keeps every finite point."""
    if not np.isfinite(size) or size < 0:
        raise ValueError(f"voxel size must be a finite number >= 0, got {size}")
    return _points.voxel_select(_points_array(points, copy=False), size)


def bbox_select(points: np.ndarray, bbox: Sequence[float]) -> np.ndarray:
    """Indices of the points inside (minx, miny, minz, maxx, maxy, maxz), bounds
    inclusive; z is ignored for (N, 2) input."""
    box = np.asarray(bbox, dtype=np.float64)
    if box.shape != (6,):
        raise ValueError("bbox needs six numbers: minx, miny, minz, maxx, maxy, maxz")
    if np.any(box[:3] > box[3:]):
        raise GeometryError(f"bbox minimum exceeds maximum: {list(box)}")
    return _points.bbox_select(_points_array(points, copy=False), box)


def library_versions() -> dict[str, object]:
    """The GEOS and PROJ the extension runs with, and what it was built against."""
    return {
        "geos": _geos.geos_version(),
        "geos_build": _geos.build_version(),
        "proj": _proj.proj_version(),
        "prepared_xy": _geos.CAP_PREPARED_XY,
    }
