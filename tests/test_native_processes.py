"""The native core in worker processes: forked and spawned children make their
own GEOS and PROJ contexts and never use one made in another process."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pyproj
import pytest

from gatewayd import _geos, _proj, geometry
from gatewayd.errors import NativeError

LONLAT = np.array([[9.0, 48.0], [10.5, 52.25], [6.1, 45.0]])


def _expected_utm() -> np.ndarray:
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    return np.column_stack(t.transform(*LONLAT.T))


def _work_in_child(queue: mp.Queue) -> None:
    result = geometry.transform(LONLAT, "EPSG:4326", "EPSG:32632")
    square = [[[np.array([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)], float)]]]
    _, reasons = geometry.Polygons.from_rings(square).validity()
    queue.put(
        {
            "pid": os.getpid(),
            "proj_pid": _proj.context().pid,
            "geos_pid": _geos.context().pid,
            "points": result.points,
            "reason": reasons[0],
        }
    )


def _use_inherited(transformation: _proj.Transformation, queue: mp.Queue) -> None:
    try:
        transformation.transform_inplace(LONLAT.copy())
    except NativeError as exc:
        queue.put(("refused", str(exc)))
    else:
        queue.put(("used", ""))


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_child_processes_create_their_own_contexts(method):
    # The parent has live contexts and a cached transformation before the child starts.
    geometry.transform(LONLAT, "EPSG:4326", "EPSG:32632")
    parent_proj = _proj.context()
    assert parent_proj.pid == os.getpid()
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    child = ctx.Process(target=_work_in_child, args=(queue,))
    child.start()
    out = queue.get(timeout=60)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert out["pid"] != os.getpid()
    assert out["proj_pid"] == out["pid"] and out["geos_pid"] == out["pid"]
    np.testing.assert_allclose(out["points"], _expected_utm(), atol=1e-3)
    assert out["reason"] == "Self-intersection[0.5 0.5]"
    # The parent's own context is untouched by the child's work.
    assert _proj.context() is parent_proj


def test_a_forked_child_refuses_a_transformation_made_by_its_parent():
    transformation = _proj.context().transformation("EPSG:4326", "EPSG:32632")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_use_inherited, args=(transformation, queue))
    child.start()
    verdict, message = queue.get(timeout=60)
    child.join(timeout=30)
    assert verdict == "refused"
    assert "another process" in message


def test_transformations_are_cached_per_crs_pair():
    ctx = _proj.context()
    first = ctx.transformation("EPSG:4326", "EPSG:3857")
    assert ctx.transformation("EPSG:4326", "EPSG:3857") is first
    assert ctx.transformation("EPSG:3857", "EPSG:4326") is not first
