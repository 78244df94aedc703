"""Worker-side processing, run in this process: fixes, polygons and LiDAR
blocks against pyproj and shapely."""

from __future__ import annotations

import json

import numpy as np
import pyproj
import pytest
import shapely

from gatewayd import geometry, processing

RNG = np.random.default_rng(5)


@pytest.fixture
def zones(tmp_path):
    yard = [[(10.0, 50.0), (10.01, 50.0), (10.01, 50.01), (10.0, 50.01), (10.0, 50.0)]]
    # A bow-tie zone: loaded repaired, so it still works as a zone.
    gate = [[(10.02, 50.0), (10.03, 50.01), (10.03, 50.0), (10.02, 50.01), (10.02, 50.0)]]
    arrays = geometry.pack([[[np.array(r) for r in yard]], [[np.array(r) for r in gate]]])
    processing.save_zones(tmp_path / "zones", arrays, ["yard", "gate"])
    processing.init(processing.WorkerSettings(zones_dir=str(tmp_path / "zones")))
    yield
    processing.init(processing.WorkerSettings())


def test_fixes_are_transformed_and_tagged_with_their_zones(zones):
    lonlat = np.array([[10.005, 50.005], [10.5, 50.5], [10.0285, 50.005]])
    result = processing.handle(processing.FixTask(lonlat, "EPSG:32632"))
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    np.testing.assert_allclose(result.xy, np.column_stack(t.transform(*lonlat.T)), atol=1e-3)
    assert result.zones == [("yard",), (), ("gate",)]


def test_polygons_are_checked_repaired_measured_and_zoned(zones):
    bow = [(10.001, 50.001), (10.009, 50.009), (10.009, 50.001), (10.001, 50.009),
           (10.001, 50.001)]
    far = [(20.0, 0.0), (20.001, 0.0), (20.001, 0.001), (20.0, 0.001), (20.0, 0.0)]
    arrays = geometry.pack([[[np.array(bow)]], [[np.array(far)]]])
    out = processing.handle(processing.PolygonTask(*arrays))
    assert [o.valid for o in out] == [False, True]
    assert out[0].reason == shapely.is_valid_reason(shapely.Polygon(bow))
    assert out[0].repaired and not out[1].repaired
    repaired = shapely.make_valid(shapely.Polygon(bow), method="structure", keep_collapsed=False)
    assert shapely.from_geojson(out[0].geometry).symmetric_difference(repaired).area < 1e-14
    geod = pyproj.Geod(ellps="WGS84")
    assert out[0].area_m2 == pytest.approx(abs(geod.geometry_area_perimeter(repaired)[0]),
                                           rel=1e-9)
    assert out[1].area_m2 == pytest.approx(
        abs(geod.geometry_area_perimeter(shapely.Polygon(far))[0]), rel=1e-9)
    assert out[0].zones == ("yard",) and out[1].zones == ()


def _utm_frame(n: int) -> np.ndarray:
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    x0, y0 = t.transform(10.005, 50.005)
    pts = np.column_stack([RNG.uniform(-200, 200, n) + x0, RNG.uniform(-200, 200, n) + y0,
                           RNG.uniform(0, 30, n)])
    return np.ascontiguousarray(pts)


def test_a_block_is_voxel_downsampled_in_metres_then_transformed_in_place(zones):
    frame = _utm_frame(5000)
    frame[100:600] = frame[100:600].round(0)  # clustered points share voxels
    original = frame.copy()
    task = processing.BlockTask(None, 0, len(frame), "EPSG:32632", "EPSG:4326", 1.0, True)
    result = processing.handle_block(task, frame)

    keys = np.floor(original / 1.0).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    np.testing.assert_array_equal(result.kept, np.sort(first))
    t = pyproj.Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    expected = np.column_stack(t.transform(*original[result.kept].T))
    np.testing.assert_allclose(frame[: len(result.kept)], expected, atol=1e-9)
    hull = shapely.convex_hull(shapely.multipoints(expected[:, :2]))
    assert shapely.Polygon(result.footprint["coordinates"][0]).equals_exact(hull, 1e-9) or \
        shapely.Polygon(result.footprint["coordinates"][0]).equals(hull)
    assert result.zones == ("yard",)
    assert result.bbox == pytest.approx((*expected.min(axis=0), *expected.max(axis=0)))


def test_points_that_fail_to_transform_are_dropped_and_counted(zones):
    frame = np.array([[10.0, 50.0, 1.0], [10.0, 95.0, 1.0], [10.001, 50.001, 2.0]])
    task = processing.BlockTask(None, 0, 3, "EPSG:4326", "EPSG:32632", 0.0, True)
    result = processing.handle_block(task, frame)
    assert result.failed == 1
    assert result.kept.tolist() == [0, 2]
    assert np.isfinite(frame[:2]).all()


def test_points_outside_lon_lat_range_are_dropped_and_counted_with_no_transform(zones):
    frame = np.array([[10.0, 50.0, 1.0], [10.0, 95.0, 1.0], [400.0, 50.0, 1.0],
                      [10.001, 50.001, 2.0]])
    task = processing.BlockTask(None, 0, 4, "EPSG:4326", "EPSG:4326", 0.0, True)
    result = processing.handle_block(task, frame)
    assert result.failed == 2 and result.kept.tolist() == [0, 3]


def test_footprints_of_several_blocks_merge_into_the_frames_hull(zones):
    frame = _utm_frame(3000)
    original = frame.copy()
    spans = []
    for start in range(0, 3000, 1000):
        task = processing.BlockTask(None, start, start + 1000, "EPSG:32632", "EPSG:4326",
                                    0.0, False)
        result = processing.handle_block(task, frame)
        assert result.voxels is None and result.footprint is None  # left to the merge
        spans.append((start, len(result.kept)))
    merged = processing.merge_blocks(
        processing.MergeTask(None, tuple(spans), None, "EPSG:4326"), frame)
    assert merged.keep is None
    t = pyproj.Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    lonlat = np.column_stack(t.transform(*original[:, :2].T))
    expected = shapely.convex_hull(shapely.multipoints(lonlat))
    ours = shapely.Polygon(merged.footprint["coordinates"][0])
    assert ours.area == pytest.approx(expected.area, rel=1e-9)
    assert json.loads(json.dumps(merged.footprint))["type"] == "Polygon"


def test_a_voxel_kept_by_two_blocks_is_kept_once_by_the_first(zones):
    rng = np.random.default_rng(4)
    frame = np.column_stack([513_000 + rng.uniform(0, 3, 4000),
                             5_403_000 + rng.uniform(0, 3, 4000), rng.uniform(0, 1, 4000)])
    original = frame.copy()
    spans, voxels, kept_parts = [], [], []
    for start in range(0, 4000, 1000):
        task = processing.BlockTask(None, start, start + 1000, "EPSG:32632", "EPSG:32632",
                                    0.5, False)
        result = processing.handle_block(task, frame)
        spans.append((start, len(result.kept)))
        voxels.append(result.voxels)
        kept_parts.append(result.kept)
    kept = np.concatenate(kept_parts)
    merged = processing.merge_blocks(
        processing.MergeTask(None, tuple(spans), np.concatenate(voxels), "EPSG:32632"), frame)
    # The oracle: the first point of each voxel over the whole frame.
    cells = np.floor(original / 0.5).astype(np.int64)
    _, first = np.unique(cells, axis=0, return_index=True)
    assert kept[merged.keep].tolist() == sorted(first.tolist())
    want = original[np.sort(first)]
    assert merged.bbox == pytest.approx((*want.min(axis=0), *want.max(axis=0)))
