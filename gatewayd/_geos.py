"""Thin wrapper over the GEOS half of gatewayd._native: contexts and geometry arrays.

This module and ``_proj`` alone touch ``ffi`` and ``lib``. A GEOS context is
created lazily, once per process and thread, and is never used by a process
it was inherited into across a fork: the child notices the pid change and
makes its own. GEOS's messages reach Python logging, not stderr.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from gatewayd._native import ffi, lib
from gatewayd.errors import GeometryError, NativeError

logger = logging.getLogger(__name__)

_ABI_VERSION = 5  # 3: gpsd's fix assembly; 4: zones read in place; 5: gw_fix_json
if lib.gw_abi_version() != _ABI_VERSION:  # pragma: no cover - a stale build
    raise ImportError(
        f"gatewayd._native has ABI {lib.gw_abi_version()}, expected {_ABI_VERSION}: rebuild it"
    )

REASON_LEN = 256
CAP_PREPARED_XY = bool(lib.gw_capabilities() & lib.GW_CAP_PREPARED_XY)


class GeosContext:
    """One GEOS context handle with its message buffers, bound to one process."""

    __slots__ = ("__weakref__", "_notices_seen", "pid", "ptr")

    def __init__(self) -> None:
        ptr = lib.gw_geos_new()
        if ptr == ffi.NULL:
            raise NativeError("could not create a GEOS context")
        self.ptr: Any = ptr
        self.pid = os.getpid()
        self._notices_seen = 0

    def error(self) -> str:
        """The last error GEOS reported in this context."""
        return ffi.string(self.ptr.error).decode("utf-8", "replace")  # type: ignore[no-any-return]

    def log_notices(self) -> None:
        count = self.ptr.n_notices
        if count != self._notices_seen:
            logger.debug(
                "GEOS: %s (%d notices)",
                ffi.string(self.ptr.notice).decode("utf-8", "replace"),
                count - self._notices_seen,
            )
            self._notices_seen = count

    def close(self) -> None:
        # An inherited copy belongs to the parent; freeing it here is pointless.
        if self.ptr != ffi.NULL and self.pid == os.getpid():
            lib.gw_geos_free(self.ptr)
        self.ptr = ffi.NULL

    def __del__(self) -> None:
        self.close()


_local = threading.local()
_versions_logged = False


def _forget_after_fork() -> None:
    global _local, _versions_logged
    _local = threading.local()
    _versions_logged = False


os.register_at_fork(after_in_child=_forget_after_fork)


def context() -> GeosContext:
    """This process's and thread's GEOS context, created on first use."""
    global _versions_logged
    ctx: GeosContext | None = getattr(_local, "geos", None)
    if ctx is None or ctx.pid != os.getpid():
        ctx = GeosContext()
        _local.geos = ctx
        if not _versions_logged:
            _versions_logged = True
            logger.info(
                "GEOS %s (built against %s)", geos_version(), build_version()
            )
    return ctx


def geos_version() -> str:
    return ffi.string(lib.GEOSversion()).decode()  # type: ignore[no-any-return]


def build_version() -> str:
    return ffi.string(lib.gw_geos_build_version()).decode()  # type: ignore[no-any-return]


def _doubles(array: np.ndarray) -> Any:
    return ffi.from_buffer("double[]", array)


def _int64s(array: np.ndarray) -> Any:
    return ffi.from_buffer("int64_t[]", array)


class GeometryArray:
    """Native GEOS geometries owned together; slots may be NULL (not built)."""

    __slots__ = ("_ctx", "_ptrs", "build_errors", "n")

    def __init__(self, ctx: GeosContext, n: int) -> None:
        self._ctx = ctx
        self._ptrs: Any = ffi.new("GEOSGeometry *[]", max(n, 1))
        self.n = n
        self.build_errors: dict[int, str] = {}

    @property
    def ptrs(self) -> Any:
        if self._ctx.pid != os.getpid():
            raise NativeError("geometries cannot cross into another process")
        return self._ptrs

    def is_null(self, i: int) -> bool:
        return bool(self._ptrs[i] == ffi.NULL)

    def release(self) -> Any:
        """Hands the pointers over (to a zone index, which frees them)."""
        ptrs, self._ptrs, self.n = self._ptrs, ffi.new("GEOSGeometry *[]", 1), 0
        return ptrs

    def close(self) -> None:
        if self.n and self._ctx.pid == os.getpid() and self._ctx.ptr != ffi.NULL:
            lib.gw_geoms_free(self._ctx.ptr, self._ptrs, self.n)
        self.n = 0

    def __del__(self) -> None:
        self.close()


def build_polygons(
    coords: np.ndarray,
    ring_offsets: np.ndarray,
    polygon_offsets: np.ndarray,
    part_offsets: np.ndarray,
    multi: np.ndarray,
) -> GeometryArray:
    """Builds one Polygon or MultiPolygon per entry of part_offsets[:-1]."""
    ctx = context()
    n = len(part_offsets) - 1
    out = GeometryArray(ctx, n)
    errors = ffi.new("char[]", max(n, 1) * REASON_LEN)
    failed = lib.gw_build_polygons(
        ctx.ptr,
        _doubles(coords),
        len(coords),
        _int64s(ring_offsets),
        len(ring_offsets) - 1,
        _int64s(polygon_offsets),
        len(polygon_offsets) - 1,
        _int64s(part_offsets),
        ffi.from_buffer("uint8_t[]", multi),
        n,
        out.ptrs,
        errors,
        REASON_LEN,
    )
    if failed:
        for i in range(n):
            if out.is_null(i):
                out.build_errors[i] = ffi.string(errors + i * REASON_LEN).decode(
                    "utf-8", "replace"
                )
    ctx.log_notices()
    return out


def validity(geoms: GeometryArray) -> tuple[np.ndarray, np.ndarray]:
    """Per geometry: valid flag and GEOS's reason (bytes, empty when valid)."""
    ctx = geoms._ctx
    valid = np.zeros(geoms.n, dtype=np.uint8)
    reasons = ffi.new("char[]", max(geoms.n, 1) * REASON_LEN)
    lib.gw_validity(ctx.ptr, geoms.ptrs, geoms.n, ffi.from_buffer("uint8_t[]", valid),
                    reasons, REASON_LEN)
    texts = np.frombuffer(ffi.buffer(reasons), dtype=f"S{REASON_LEN}")[: geoms.n]
    for i, message in geoms.build_errors.items():
        texts[i] = message.encode()[: REASON_LEN - 1]
    ctx.log_notices()
    return valid.astype(bool), texts


class GeometryView(GeometryArray):
    """Slots taken from other arrays, which keep owning them (and are kept
    alive by the view)."""

    __slots__ = ("_owners",)

    def __init__(self, ctx: GeosContext, n: int, owners: tuple[GeometryArray, ...]) -> None:
        super().__init__(ctx, n)
        self._owners = owners

    def close(self) -> None:
        self.n = 0  # the owners free the geometries


def where(take: np.ndarray, a: GeometryArray, b: GeometryArray) -> GeometryView:
    """Slot i of ``a`` where ``take[i]``, else of ``b``: a view, nothing copied."""
    view = GeometryView(a._ctx, a.n, (a, b))
    pa, pb, out = a.ptrs, b.ptrs, view.ptrs
    for i, from_a in enumerate(take.tolist()):
        out[i] = pa[i] if from_a else pb[i]
        errors = a.build_errors if from_a else b.build_errors
        if i in errors:
            view.build_errors[i] = errors[i]
    return view


def make_valid(geoms: GeometryArray, only: np.ndarray | None = None) -> GeometryArray:
    """Repaired copies; with ``only``, of those slots alone (the others empty)."""
    ctx = geoms._ctx
    out = GeometryArray(ctx, geoms.n)
    source = geoms.ptrs
    if only is not None:
        # Slots not asked for are handed over as NULL, which the loop skips.
        source = ffi.new("GEOSGeometry *[]", max(geoms.n, 1))
        for i in np.flatnonzero(only).tolist():
            source[i] = geoms.ptrs[i]
    if lib.gw_make_valid(ctx.ptr, source, geoms.n, out.ptrs) < 0:
        raise GeometryError("make-valid failed", native=ctx.error())
    wanted = range(geoms.n) if only is None else np.flatnonzero(only).tolist()
    for i in wanted:
        if out.is_null(i):
            out.build_errors[i] = geoms.build_errors.get(i) or ctx.error() or "repair failed"
    ctx.log_notices()
    return out


def area(geoms: GeometryArray) -> np.ndarray:
    out = np.empty(geoms.n, dtype=np.float64)
    lib.gw_area(geoms._ctx.ptr, geoms.ptrs, geoms.n, _doubles(out))
    return out


def geodesic_area(geoms: GeometryArray, a: float, f: float) -> np.ndarray:
    out = np.empty(geoms.n, dtype=np.float64)
    lib.gw_geodesic_area(geoms._ctx.ptr, geoms.ptrs, geoms.n, a, f, _doubles(out))
    return out


def to_geojson_all(geoms: GeometryArray) -> list[str | None]:
    """Every geometry as GeoJSON text (None where there is none), one writer."""
    ctx = geoms._ctx
    handle = ctx.ptr.handle
    ptrs = geoms.ptrs
    out: list[str | None] = []
    writer = lib.GEOSGeoJSONWriter_create_r(handle)
    try:
        for i in range(geoms.n):
            if ptrs[i] == ffi.NULL:
                out.append(None)
                continue
            text = lib.GEOSGeoJSONWriter_writeGeometry_r(handle, writer, ptrs[i], -1)
            if text == ffi.NULL:
                raise GeometryError("cannot write GeoJSON", native=ctx.error())
            try:
                out.append(ffi.string(text).decode())
            finally:
                lib.GEOSFree_r(handle, text)
    finally:
        lib.GEOSGeoJSONWriter_destroy_r(handle, writer)
    return out


def to_geojson(geoms: GeometryArray, i: int) -> str | None:
    """One geometry as GeoJSON text, or None where there is none."""
    if geoms.is_null(i):
        return None
    ctx = geoms._ctx
    handle = ctx.ptr.handle
    writer = lib.GEOSGeoJSONWriter_create_r(handle)
    try:
        text = lib.GEOSGeoJSONWriter_writeGeometry_r(handle, writer, geoms.ptrs[i], -1)
        if text == ffi.NULL:
            raise GeometryError("cannot write GeoJSON", native=ctx.error())
        try:
            return ffi.string(text).decode()  # type: ignore[no-any-return]
        finally:
            lib.GEOSFree_r(handle, text)
    finally:
        lib.GEOSGeoJSONWriter_destroy_r(handle, writer)


def convex_hull(points: np.ndarray) -> np.ndarray:
    ctx = context()
    n, dims = points.shape
    out = np.empty((n + 1, 2), dtype=np.float64)
    count = lib.gw_convex_hull(ctx.ptr, _doubles(points), n, dims, _doubles(out), n + 1)
    if count < 0:
        raise GeometryError("convex hull failed", native=ctx.error())
    return out[:count].copy()


def _take_pairs(out: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    if count < 0:
        raise MemoryError("zone lookup ran out of memory")
    if out[0] == ffi.NULL:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty.copy()
    try:
        pairs = np.frombuffer(ffi.buffer(out[0], count * 16), dtype=np.int64).reshape(-1, 2)
        return pairs[:, 0].copy(), pairs[:, 1].copy()
    finally:
        lib.gw_free(out[0])


class ZoneTree:
    """Zone polygons in an STRtree, owned by one process. The polygons are
    read where they lie, in ragged arrays (memory-mapped ones, say), which
    the tree keeps alive and never copies."""

    __slots__ = ("_arrays", "_ctx", "_ptr", "n")

    def __init__(self, coords: np.ndarray, ring_offsets: np.ndarray,
                 polygon_offsets: np.ndarray, part_offsets: np.ndarray) -> None:
        self._ctx = context()
        self.n = len(part_offsets) - 1
        self._arrays = (coords, ring_offsets, polygon_offsets, part_offsets)
        ptr = lib.gw_zones_new(self._ctx.ptr, _doubles(coords), _int64s(ring_offsets),
                               _int64s(polygon_offsets), _int64s(part_offsets), self.n)
        if ptr == ffi.NULL:
            raise GeometryError("could not build the zone index: out of memory")
        self._ptr: Any = ptr

    def locate(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._ctx.pid != os.getpid():
            raise NativeError("a zone index cannot cross into another process")
        n, dims = points.shape
        out = ffi.new("int64_t **")
        count = lib.gw_zones_locate(self._ptr, _doubles(points), n, dims, out)
        return _take_pairs(out, count)

    def intersecting(self, geoms: GeometryArray) -> tuple[np.ndarray, np.ndarray]:
        """(geometry index, zone index) pairs for every zone a geometry intersects."""
        if self._ctx.pid != os.getpid() or geoms._ctx is not self._ctx:
            raise NativeError("geometries and zones must belong to this process's context")
        out = ffi.new("int64_t **")
        count = lib.gw_zones_intersecting(self._ptr, geoms.ptrs, geoms.n, out)
        return _take_pairs(out, count)

    def close(self) -> None:
        if self._ptr != ffi.NULL and self._ctx.pid == os.getpid():
            lib.gw_zones_free(self._ptr)
        self._ptr = ffi.NULL

    def __del__(self) -> None:
        self.close()
