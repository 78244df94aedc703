"""What a worker process does with a chunk: the geometry work of the pipeline.

This module runs inside the worker processes. ``init`` is the worker's
initializer: it builds the zone index once (from coordinates memory-mapped
read-only from a file every worker shares) and warms the native contexts.
``handle`` takes one task and returns its result; tasks and results are
small typed messages, except LiDAR points, which stay in shared memory and are
transformed in place.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gatewayd import geometry

logger = logging.getLogger(__name__)

LONLAT = "EPSG:4326"
_METRES_PER_DEGREE = 111_320.0

__all__ = [
    "BlockResult",
    "BlockTask",
    "FixResult",
    "FixTask",
    "MergeResult",
    "MergeTask",
    "PolygonOutcome",
    "PolygonTask",
    "WorkerSettings",
    "handle",
    "init",
    "save_zones",
]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    zones_dir: str | None = None


@dataclass(frozen=True, slots=True)
class FixTask:
    lonlat: np.ndarray  # (N, 2) WGS84 longitude, latitude
    crs_to: str


@dataclass(frozen=True, slots=True)
class FixResult:
    xy: np.ndarray  # (N, 2) in crs_to; NaN where PROJ failed
    zones: list[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class PolygonTask:
    coords: np.ndarray
    ring_offsets: np.ndarray
    polygon_offsets: np.ndarray
    part_offsets: np.ndarray
    multi: np.ndarray


@dataclass(frozen=True, slots=True)
class PolygonOutcome:
    valid: bool
    reason: str
    repaired: bool
    geometry: str | None  # GeoJSON text (GEOS's), repaired when invalid
    area_m2: float | None
    zones: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BlockTask:
    """Points [start, stop) of a frame held in shared memory (``points``)."""

    points: Any  # a shared-array handle the worker pool resolves to an (N, 3) view
    start: int
    stop: int
    crs_from: str
    crs_to: str
    voxel_size: float  # in the grid's units (see ``voxel_grid``): degrees for lon/lat
    finish: bool  # the frame is this one block: make its footprint here


@dataclass(frozen=True, slots=True)
class BlockResult:
    # The block's kept points as a bit mask over it (np.packbits): an eighth
    # of a byte a point through the pipe back, rather than an 8-byte index.
    kept_bits: bytes
    start: int  # the block's first point in the frame
    size: int  # points in the block
    failed: int  # points PROJ could not transform (dropped)
    bbox: tuple[float, ...] | None  # minx, miny, minz, maxx, maxy, maxz in crs_to
    footprint: dict[str, Any] | None = None
    zones: tuple[str, ...] | None = None
    # The voxels of the kept points, (K, 3): for merging the blocks of a frame.
    voxels: np.ndarray | None = None

    @property
    def kept(self) -> np.ndarray:
        """Frame indices of the kept points, in order."""
        mask = np.unpackbits(np.frombuffer(self.kept_bits, np.uint8), count=self.size)
        return np.flatnonzero(mask) + self.start


@dataclass(frozen=True, slots=True)
class MergeTask:
    """The blocks of one frame, done: a voxel kept by two blocks is kept once
    (by the first), and the frame's box and footprint are made from what is
    left. ``spans`` are (start, kept) of each block in the shared points,
    where its kept points lie transformed; ``voxels`` are theirs, in order."""

    points: Any
    spans: tuple[tuple[int, int], ...]
    voxels: np.ndarray | None  # None: no voxel grid, nothing to merge
    crs_to: str


@dataclass(frozen=True, slots=True)
class MergeResult:
    keep: np.ndarray | None  # over the blocks' kept points, in order; None: all
    bbox: tuple[float, ...] | None
    footprint: dict[str, Any] | None
    zones: tuple[str, ...]


class _State:
    zones: geometry.ZoneIndex | None = None


_state = _State()


def save_zones(zones_dir: Path, arrays: Any, names: list[str]) -> None:
    """Writes zone polygons (ragged arrays) where workers memory-map them,
    repaired once here rather than in every worker."""
    zones_dir.mkdir(parents=True, exist_ok=True)
    arrays = geometry.valid_zones(arrays)
    for field in ("coords", "ring_offsets", "polygon_offsets", "part_offsets", "multi"):
        np.save(zones_dir / f"{field}.npy", np.ascontiguousarray(getattr(arrays, field)))
    (zones_dir / "names.json").write_text(json.dumps(names))


def _load_zones(zones_dir: str) -> geometry.ZoneIndex:
    root = Path(zones_dir)
    arrays = geometry.RaggedArrays(
        *(np.load(root / f"{f}.npy", mmap_mode="r") for f in
          ("coords", "ring_offsets", "polygon_offsets", "part_offsets", "multi"))
    )
    names = json.loads((root / "names.json").read_text())
    return geometry.ZoneIndex(arrays, names)  # read in place: shared, not copied


def init(settings: WorkerSettings) -> None:
    """Worker initializer: native contexts and the zone index, once."""
    _state.zones = _load_zones(settings.zones_dir) if settings.zones_dir else None
    geometry.check_crs(LONLAT)
    logger.debug("worker ready: %d zones, %s", len(_state.zones or ()),
                 geometry.library_versions())


def handle(task: object) -> object:
    if isinstance(task, FixTask):
        return _fixes(task)
    if isinstance(task, PolygonTask):
        return _polygons(task)
    if isinstance(task, BlockTask):
        return handle_block(task, task.points.array())
    if isinstance(task, MergeTask):
        return merge_blocks(task, task.points.array())
    raise TypeError(f"unknown task {type(task).__name__}")


def _fixes(task: FixTask) -> FixResult:
    lonlat = np.ascontiguousarray(task.lonlat, dtype=np.float64)
    xy = lonlat if task.crs_to == LONLAT else geometry.transform(lonlat, LONLAT, task.crs_to).points
    zones: list[tuple[str, ...]] = (
        _state.zones.zones_of(lonlat) if _state.zones else [() for _ in range(len(lonlat))]
    )
    return FixResult(xy, zones)


def _polygons(task: PolygonTask) -> list[PolygonOutcome]:
    polygons = geometry.Polygons.from_ragged(task)
    valid, reasons = polygons.validity()
    # Only what is invalid is repaired; the rest is written as it came.
    final = polygons if valid.all() else polygons.where(valid, polygons.make_valid(~valid))
    areas = final.geodesic_area()
    zones: list[tuple[str, ...]] = [() for _ in range(len(polygons))]
    if _state.zones is not None:
        zones = _state.zones.zones_of_polygons(final)
    out = []
    for i, (ok, text) in enumerate(zip(valid.tolist(), final.geojson_all())):
        area = float(areas[i])
        out.append(
            PolygonOutcome(
                valid=ok,
                reason=reasons[i],
                repaired=not ok and text is not None,
                geometry=text,
                area_m2=area if text is not None and math.isfinite(area) else None,
                zones=zones[i],
            )
        )
    return out


def voxel_grid(size: float, crs_from: str, crs_to: str, lonlat: np.ndarray) -> float:
    """The voxel edge in the units of the CRS the grid is laid in: metres as
    given when either side is projected; for lon/lat on both sides, degrees at
    the frame's latitude (from a sample of ``lonlat``), one size for all of a
    frame's blocks so that they share one grid."""
    if size > 0 and geometry.is_geographic(crs_from) and geometry.is_geographic(crs_to):
        return _degrees(size, lonlat[:: max(1, len(lonlat) // 4096)])
    return size


def handle_block(task: BlockTask, points: np.ndarray) -> BlockResult:
    """Voxel-downsamples, transforms and outlines one block of a frame.

    ``points`` is the whole frame's (N, 3) shared array. The kept points of
    the block are written, transformed, to the front of the block's range.
    The voxel grid is laid in whichever CRS measures metres: the source if it
    is projected, else the target (for lon/lat on both sides the pipeline
    gives the edge in degrees). A block of a larger frame returns its kept
    voxels for ``merge_blocks``, and leaves the outline to it.
    """
    block = points[task.start:task.stop]
    src_geographic = geometry.is_geographic(task.crs_from)
    dst_geographic = geometry.is_geographic(task.crs_to)
    size = task.voxel_size
    failed = 0
    if src_geographic:
        # Out of longitude and latitude's range: no PROJ call may catch it
        # (lon/lat to lon/lat is none), so it is dropped and counted here.
        outside = (np.abs(block[:, 0]) > 360.0) | (np.abs(block[:, 1]) > 90.0)
        if outside.any():
            block[outside] = np.nan
            failed += int(outside.sum())
    if size > 0 and src_geographic and not dst_geographic:
        failed += geometry.transform(block, task.crs_from, task.crs_to, inplace=True).failed
        kept = geometry.voxel_select(block, size)
        compact = np.ascontiguousarray(block[kept])
        grid = compact
    else:
        kept = geometry.voxel_select(block, size)
        compact = np.ascontiguousarray(block[kept])
        grid = compact.copy() if size > 0 and not task.finish else compact
        failed += geometry.transform(compact, task.crs_from, task.crs_to, inplace=True).failed
    voxels = _voxels(grid, size) if size > 0 and not task.finish else None
    if failed:
        finite = _finite_rows(compact)
        kept, compact = kept[finite], np.ascontiguousarray(compact[finite])
        if voxels is not None:
            voxels = voxels[finite]
    block[: len(compact)] = compact
    mask = np.zeros(len(block), dtype=bool)
    mask[kept] = True
    bits = np.packbits(mask).tobytes()

    if not task.finish:
        return BlockResult(bits, task.start, len(block), failed, None, voxels=voxels)
    bbox, footprint, zones = _outline(compact, task.crs_to, dst_geographic)
    return BlockResult(bits, task.start, len(block), failed, bbox, footprint, zones)


def _voxels(points: np.ndarray, size: float) -> np.ndarray:
    """The voxel of each point, as ``geometry.voxel_select`` lays its grid."""
    cells = np.floor(points / size)
    np.clip(cells, -4.0e18, 4.0e18, out=cells)
    return cells.astype(np.int64)


def merge_blocks(task: MergeTask, points: np.ndarray) -> MergeResult:
    parts = [points[start:start + kept] for start, kept in task.spans]
    xyz = np.concatenate(parts) if parts else np.empty((0, 3))
    keep = None
    if task.voxels is not None and len(task.voxels):
        cells = np.ascontiguousarray(task.voxels, dtype=np.int64)
        _, first = np.unique(cells.view(np.dtype((np.void, 24))).ravel(), return_index=True)
        keep = np.zeros(len(cells), dtype=bool)
        keep[first] = True
        xyz = xyz[keep]
    bbox, footprint, zones = _outline(xyz, task.crs_to, geometry.is_geographic(task.crs_to))
    return MergeResult(keep, bbox, footprint, zones)


def _outline(xyz: np.ndarray, crs_to: str, dst_geographic: bool
             ) -> tuple[tuple[float, ...] | None, dict[str, Any] | None, tuple[str, ...]]:
    """A frame's box in its CRS, and its footprint (lon/lat) and zones."""
    if not len(xyz):
        return None, None, ()
    # Column by column: numpy's min(axis=0) over (N, 3) rows is ten times slower.
    columns = range(xyz.shape[1])
    bbox = tuple(float(xyz[:, k].min()) for k in columns) + \
        tuple(float(xyz[:, k].max()) for k in columns)
    hull = geometry.convex_hull(np.ascontiguousarray(xyz))
    hull_lonlat = hull if dst_geographic else geometry.transform(hull, crs_to, LONLAT).points
    footprint, zones = _footprint(hull_lonlat)
    return bbox, footprint, zones


def _degrees(metres: float, lonlat: np.ndarray) -> float:
    lat = float(np.nanmean(lonlat[:, 1])) if len(lonlat) else 0.0
    scale = max(math.cos(math.radians(lat)), 1e-6) if math.isfinite(lat) else 1.0
    return metres / (_METRES_PER_DEGREE * scale)


def _footprint(hull_points: np.ndarray) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """The convex hull of the points as a GeoJSON Polygon (None when the points
    span no area) and the zones it touches."""
    finite = hull_points[np.isfinite(hull_points).all(axis=1)]
    if len(finite) == 0:
        return None, ()
    hull = geometry.convex_hull(finite)
    zones: tuple[str, ...] = ()
    if _state.zones is not None:
        zones = _state.zones.zones_touching(hull) if len(hull) < 4 else \
            _state.zones.zones_of_polygons(geometry.Polygons.from_rings([[[hull]]]))[0]
    if len(hull) < 4:
        return None, zones
    return {"type": "Polygon", "coordinates": [hull.tolist()]}, zones


def _finite_rows(xyz: np.ndarray) -> np.ndarray:
    """Which rows are finite in every column (column by column: faster than
    isfinite(...).all(axis=1) on rows of three)."""
    finite: np.ndarray = np.isfinite(xyz[:, 0])
    for k in range(1, xyz.shape[1]):
        finite &= np.isfinite(xyz[:, k])
    return finite
