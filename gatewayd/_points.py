"""Thin wrapper over the point-array loops of gatewayd._native.

Voxel downsampling and bounding-box selection return indices into the input,
so that a frame's other fields follow the kept points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gatewayd._native import ffi, lib


def _doubles(array: np.ndarray) -> Any:
    return ffi.from_buffer("double[]", array)


def _int64s(array: np.ndarray) -> Any:
    return ffi.from_buffer("int64_t[]", array)


def voxel_select(points: np.ndarray, size: float) -> np.ndarray:
    n, dims = points.shape
    out = np.empty(n, dtype=np.int64)
    kept = lib.gw_voxel_select(_doubles(points), n, dims, size, _int64s(out))
    if kept < 0:
        raise MemoryError("voxel grid ran out of memory")
    return out[:kept].copy()


def bbox_select(points: np.ndarray, bbox: np.ndarray) -> np.ndarray:
    n, dims = points.shape
    out = np.empty(n, dtype=np.int64)
    kept = lib.gw_bbox_select(_doubles(points), n, dims, _doubles(bbox), _int64s(out))
    return out[:kept].copy()


def count_nonfinite(points: np.ndarray) -> int:
    n, dims = points.shape
    return int(lib.gw_count_nonfinite(_doubles(points), n, dims))
