"""The geometry core against independent oracles: pyproj for transforms,
shapely for validity, repair, hulls and point-in-zones, pyproj.Geod for
geodesic area."""

from __future__ import annotations

import math

import numpy as np
import pyproj
import pytest
import shapely

from gatewayd import geometry
from gatewayd.errors import CRSError, GatewayError

RNG = np.random.default_rng(20261122)

# (source, target, lon range, lat range, 3D): random points where both CRSs are defined.
PAIRS = [
    ("EPSG:4326", "EPSG:32632", (6.0, 12.0), (0.0, 84.0), False),
    ("EPSG:4326", "EPSG:32755", (144.0, 150.0), (-80.0, 0.0), False),
    ("EPSG:4326", "EPSG:3857", (-179.0, 179.0), (-85.0, 85.0), False),
    # Inland Britain: offshore, PROJ releases pick different operations.
    ("EPSG:4326", "EPSG:27700", (-3.5, -0.5), (51.0, 54.5), False),
    ("EPSG:4326", "EPSG:2056", (6.5, 9.5), (46.3, 47.5), False),
    ("EPSG:4979", "EPSG:4978", (-180.0, 180.0), (-90.0, 90.0), True),
    ("EPSG:4326", "+proj=utm +zone=33 +datum=WGS84", (12.0, 18.0), (0.0, 80.0), False),
]


def _geographic(crs: str) -> bool:
    return pyproj.CRS(crs).is_geographic


def _random_lonlat(lon: tuple[float, float], lat: tuple[float, float], n: int, z: bool):
    cols = [RNG.uniform(*lon, n), RNG.uniform(*lat, n)]
    if z:
        cols.append(RNG.uniform(-100.0, 3000.0, n))
    return np.column_stack(cols)


def _oracle(src: str, dst: str, pts: np.ndarray) -> np.ndarray:
    t = pyproj.Transformer.from_crs(src, dst, always_xy=True)
    return np.column_stack(t.transform(*pts.T))


def _assert_close(actual: np.ndarray, expected: np.ndarray, crs: str) -> None:
    tol = 1e-8 if _geographic(crs) else 1e-3
    np.testing.assert_allclose(actual[:, :2], expected[:, :2], rtol=0, atol=tol)
    if actual.shape[1] == 3:
        np.testing.assert_allclose(actual[:, 2], expected[:, 2], rtol=0, atol=1e-3)


@pytest.mark.parametrize(("src", "dst", "lon", "lat", "z"), PAIRS)
def test_transform_agrees_with_pyproj_both_ways(src, dst, lon, lat, z):
    lonlat = _random_lonlat(lon, lat, 500, z)
    forward = geometry.transform(lonlat, src, dst)
    assert forward.failed == 0
    _assert_close(forward.points, _oracle(src, dst, lonlat), dst)

    back = geometry.transform(forward.points, dst, src)
    assert back.failed == 0
    _assert_close(back.points, _oracle(dst, src, forward.points), src)
    # A round trip through a Helmert datum shift is itself only good to a few
    # millimetres (its inverse is approximate, in every PROJ release).
    np.testing.assert_allclose(back.points[:, :2], lonlat[:, :2], rtol=0, atol=5e-8)
    if z:
        np.testing.assert_allclose(back.points[:, 2], lonlat[:, 2], rtol=0, atol=1e-6)


def test_transform_in_place_writes_into_the_callers_array():
    pts = _random_lonlat((6.0, 12.0), (40.0, 60.0), 64, False)
    expected = _oracle("EPSG:4326", "EPSG:32632", pts)
    result = geometry.transform(pts, "EPSG:4326", "EPSG:32632", inplace=True)
    assert result.points is pts
    _assert_close(pts, expected, "EPSG:32632")


def test_transform_copy_leaves_the_input_untouched():
    pts = _random_lonlat((6.0, 12.0), (40.0, 60.0), 16, False)
    before = pts.copy()
    geometry.transform(pts, "EPSG:4326", "EPSG:32632")
    np.testing.assert_array_equal(pts, before)


def test_points_proj_cannot_transform_come_back_nan_and_are_counted():
    pts = np.array([[10.0, 50.0], [0.0, 95.0], [10.0, 51.0], [20.0, -91.0], [np.nan, 1.0]])
    result = geometry.transform(pts, "EPSG:4326", "EPSG:3857")
    bad = ~np.isfinite(result.points).all(axis=1)
    assert result.failed == int(bad.sum()) == 3
    assert np.isnan(result.points[bad]).all()
    assert not np.isinf(result.points).any()
    expected = _oracle("EPSG:4326", "EPSG:3857", pts[[0, 2]])
    _assert_close(result.points[[0, 2]], expected, "EPSG:3857")


def test_unknown_crs_is_a_clear_error_naming_the_string():
    with pytest.raises(CRSError) as info:
        geometry.transform(np.zeros((1, 2)), "EPSG:4326", "EPSG:999999")
    assert "EPSG:999999" in str(info.value)
    assert info.value.native  # PROJ's own message
    assert info.value.exit_code == 10
    assert isinstance(info.value, GatewayError)


@pytest.mark.parametrize("bad", ["", "not a crs", "+proj=nonsense", "EPSG:4326\0"])
def test_garbage_crs_strings_are_refused(bad):
    with pytest.raises(CRSError):
        geometry.check_crs(bad)


def test_wrong_array_shapes_are_refused():
    with pytest.raises(ValueError):
        geometry.transform(np.zeros((3, 4)), "EPSG:4326", "EPSG:3857")
    with pytest.raises(ValueError):
        geometry.transform(np.zeros((3, 2), dtype=np.float32), "EPSG:4326", "EPSG:3857",
                           inplace=True)


def test_empty_arrays_transform_to_empty_arrays():
    result = geometry.transform(np.empty((0, 3)), "EPSG:4326", "EPSG:4978")
    assert result.points.shape == (0, 3) and result.failed == 0


# ---- validity, repair, area: shapely as the oracle ----

NAN = float("nan")
CORPUS = {
    "square": [[(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]],
    "bow_tie": [[(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)]],
    "spike": [[(0, 0), (2, 0), (2, 2), (1, 2), (1, 3), (1, 2), (0, 2), (0, 0)]],
    "hole_outside_shell": [
        [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)],
        [(2, 2), (3, 2), (3, 3), (2, 3), (2, 2)],
    ],
    "nested_holes": [
        [(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)],
        [(1, 1), (9, 1), (9, 9), (1, 9), (1, 1)],
        [(2, 2), (8, 2), (8, 8), (2, 8), (2, 2)],
    ],
    "holes_touching_at_a_point": [
        [(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)],
        [(1, 1), (5, 1), (5, 5), (1, 5), (1, 1)],
        [(5, 5), (9, 5), (9, 9), (5, 9), (5, 5)],
    ],
    "holes_sharing_an_edge": [
        [(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)],
        [(1, 1), (5, 1), (5, 5), (1, 5), (1, 1)],
        [(5, 1), (9, 1), (9, 5), (5, 5), (5, 1)],
    ],
    "repeated_points": [[(0, 0), (0, 0), (1, 0), (1, 0), (1, 1), (0, 1), (0, 0)]],
    "unclosed_ring": [[(0, 0), (1, 0), (1, 1), (0, 1)]],
    "unclosed_bow_tie": [[(0, 0), (1, 1), (1, 0), (0, 1)]],
    "too_few_points": [[(0, 0), (1, 1), (0, 0)]],
    "nan_coordinate": [[(0, 0), (1, 0), (NAN, 1), (0, 1), (0, 0)]],
    "collapsed_to_a_line": [[(0, 0), (1, 0), (2, 0), (0, 0)]],
}
# GEOS releases word a few reasons differently; there the verdict and the
# kind of problem must agree, not the text to the letter.
REASON_KIND_ONLY = {"spike": "Self-intersection"}


def _shapely_polygon(rings):
    with np.errstate(invalid="ignore"):
        return shapely.Polygon(rings[0], rings[1:])


def _ours(rings) -> geometry.Polygons:
    return geometry.Polygons.from_rings([[[np.array(r, dtype=float) for r in rings]]])


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_validity_verdict_and_reason_match_shapely(name):
    rings = CORPUS[name]
    oracle = _shapely_polygon(rings)
    valid, reasons = _ours(rings).validity()
    assert bool(valid[0]) == bool(shapely.is_valid(oracle))
    expected = shapely.is_valid_reason(oracle)
    if valid[0]:
        assert reasons[0] == "" and expected == "Valid Geometry"
    elif name in REASON_KIND_ONLY:
        assert REASON_KIND_ONLY[name] in reasons[0]
        assert REASON_KIND_ONLY[name] in expected
    else:
        assert reasons[0] == expected


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_make_valid_area_matches_shapely(name):
    rings = CORPUS[name]
    repaired = _ours(rings).make_valid()
    assert repaired.validity()[0].all()
    oracle = shapely.make_valid(_shapely_polygon(rings), method="structure",
                                keep_collapsed=False)
    assert repaired.area()[0] == pytest.approx(oracle.area, abs=1e-9)
    geojson = repaired.geojson(0)
    assert geojson is not None
    assert shapely.from_geojson(geojson).area == pytest.approx(oracle.area, abs=1e-9)


def test_empty_polygon_is_valid_with_zero_area():
    polys = geometry.Polygons.from_rings([[]], multi=[False])
    valid, _ = polys.validity()
    assert valid[0]
    assert polys.area()[0] == 0.0
    assert shapely.is_valid(shapely.Polygon())


def test_a_geometry_geos_cannot_build_is_invalid_with_geos_message():
    # Two positions cannot form a ring even once closed: GEOS refuses to build it.
    polys = _ours([[(0, 0)]])
    valid, reasons = polys.validity()
    assert not valid[0]
    assert "point array must contain 0 or >1 elements" in reasons[0]
    with pytest.raises(shapely.errors.GEOSException, match="must contain 0 or >1 elements"):
        shapely.from_wkt("LINESTRING (0 0)")
    assert polys.make_valid().geojson(0) is None


def test_multipolygons_match_shapely():
    parts = [
        [[(0, 0), (2, 0), (2, 2), (0, 2), (0, 0)]],
        [[(1, 1), (3, 1), (3, 3), (1, 3), (1, 1)]],  # overlaps the first: invalid
    ]
    ours = geometry.Polygons.from_rings(
        [[[np.array(r, float) for r in p] for p in parts]], multi=[True]
    )
    oracle = shapely.MultiPolygon([shapely.Polygon(p[0]) for p in parts])
    valid, reasons = ours.validity()
    assert bool(valid[0]) == shapely.is_valid(oracle)
    # GEOS releases report a different one of the crossing points.
    assert reasons[0].split("[")[0] == shapely.is_valid_reason(oracle).split("[")[0]
    repaired = shapely.make_valid(oracle, method="structure", keep_collapsed=False)
    assert ours.make_valid().area()[0] == pytest.approx(repaired.area)


def _random_polygons(n: int, vertices: int) -> list[list[np.ndarray]]:
    out = []
    for _ in range(n):
        centre = RNG.uniform(-50, 50, 2)
        angles = np.sort(RNG.uniform(0, 2 * np.pi, vertices))
        if RNG.random() < 0.3:
            RNG.shuffle(angles)  # mostly self-intersecting
        radii = RNG.uniform(0.5, 2.0, vertices)
        ring = centre + np.column_stack([radii * np.cos(angles), radii * np.sin(angles)])
        out.append([np.vstack([ring, ring[:1]])])
    return out


def test_random_batch_validity_and_repair_match_shapely():
    polys = _random_polygons(300, 12)
    ours = geometry.Polygons.from_rings([[p] for p in polys])
    oracle = shapely.polygons([p[0] for p in polys])
    valid, reasons = ours.validity()
    np.testing.assert_array_equal(valid, shapely.is_valid(oracle))
    assert 0 < valid.sum() < len(polys)
    expected_reasons = shapely.is_valid_reason(oracle)
    for ok, ours_reason, theirs in zip(valid, reasons, expected_reasons):
        if not ok:
            assert ours_reason.split("[")[0] in theirs or "intersection" in ours_reason
    np.testing.assert_allclose(ours.area(), shapely.area(oracle), rtol=1e-12)
    repaired = shapely.make_valid(oracle, method="structure", keep_collapsed=False)
    np.testing.assert_allclose(ours.make_valid().area(), shapely.area(repaired),
                               rtol=1e-9, atol=1e-9)


def test_geodesic_area_matches_pyproj_geod():
    geod = pyproj.Geod(ellps="WGS84")
    polygons = [
        [[(10.0, 50.0), (10.01, 50.0), (10.01, 50.01), (10.0, 50.01), (10.0, 50.0)]],
        [
            [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0), (-1.0, -1.0)],
            [(-0.5, -0.5), (-0.5, 0.5), (0.5, 0.5), (0.5, -0.5), (-0.5, -0.5)],
        ],
        [[(170.0, 60.0), (170.5, 60.0), (170.5, 60.2), (170.0, 60.0)]],
    ]
    ours = geometry.Polygons.from_rings([[[np.array(r) for r in p]] for p in polygons])
    areas = ours.geodesic_area()
    for area, rings in zip(areas, polygons):
        expected = abs(geod.geometry_area_perimeter(shapely.Polygon(rings[0], rings[1:]))[0])
        assert area == pytest.approx(expected, rel=1e-9)


# ---- hulls ----

@pytest.mark.parametrize("dims", [2, 3])
def test_convex_hull_matches_shapely(dims):
    pts = RNG.normal(size=(2000, dims)) * [30.0, 10.0, 2.0][:dims]
    hull = geometry.convex_hull(pts)
    oracle = shapely.convex_hull(shapely.multipoints(pts[:, :2]))
    assert shapely.Polygon(hull).area == pytest.approx(oracle.area, rel=1e-12)
    assert shapely.equals(shapely.Polygon(hull), oracle)


def _hull_cases():
    rng = np.random.default_rng(12)
    yield "disk", np.column_stack([np.cos(a := rng.uniform(0, 2 * np.pi, 30_000)),
                                   np.sin(a)]) * rng.uniform(0, 60, (30_000, 1)) + 5e5
    yield "grid", rng.integers(0, 6, (500, 2)).astype(float)  # collinear runs, repeats
    yield "square edge points", np.vstack([
        np.column_stack([rng.uniform(0, 1, 200), np.zeros(200)]),
        np.column_stack([np.ones(200), rng.uniform(0, 1, 200)]),
        np.column_stack([rng.uniform(0, 1, 200), np.ones(200)]),
        np.column_stack([np.zeros(200), rng.uniform(0, 1, 200)]),
        rng.uniform(0, 1, (500, 2))])
    yield "tiny", rng.normal(size=(300, 2)) * 1e-9 + 48.78
    yield "lon lat sweep", np.column_stack([9.18 + rng.normal(0, 3e-4, 5000),
                                            48.78 + rng.normal(0, 2e-4, 5000)])
    for k in range(40):
        yield f"random {k}", rng.normal(size=(int(rng.integers(3, 60)), 2)) * 10


@pytest.mark.parametrize(("name", "pts"), list(_hull_cases()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_convex_hull_has_shapelys_corners_counter_clockwise(name, pts):
    hull = geometry.convex_hull(pts)
    oracle = shapely.convex_hull(shapely.multipoints(pts))
    ring = shapely.Polygon(hull)
    assert np.array_equal(hull[0], hull[-1])  # a closed ring
    assert ring.exterior.is_ccw  # GeoJSON's right-hand rule
    assert shapely.equals(ring, oracle)
    # The same corners: no collinear vertex, none missing.
    ours = {tuple(p) for p in hull[:-1]}
    theirs = {tuple(p) for p in np.asarray(oracle.exterior.coords)[:-1]}
    assert ours == theirs


def test_convex_hull_of_degenerate_sets():
    assert geometry.convex_hull(np.empty((0, 2))).shape == (0, 2)
    one = geometry.convex_hull(np.array([[3.0, 4.0]]))
    np.testing.assert_array_equal(one, [[3.0, 4.0]])
    line = geometry.convex_hull(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    assert len(line) == 2
    with_nan = np.array([[0.0, 0.0], [np.nan, 5.0], [1.0, 0.0], [0.0, 1.0]])
    hull = geometry.convex_hull(with_nan)
    assert np.isfinite(hull).all()
    assert shapely.Polygon(hull).area == pytest.approx(0.5)


# ---- zones ----

def _zone_squares(n: int) -> list[list[np.ndarray]]:
    out = []
    for _ in range(n):
        x, y = RNG.uniform(0, 100, 2)
        w, h = RNG.uniform(1, 8, 2)
        out.append([np.array([(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)])])
    return out


def test_point_in_zones_matches_shapely_strtree():
    zones = _zone_squares(400)
    index = geometry.ZoneIndex.of([[z] for z in zones],
                               [f"zone-{i}" for i in range(len(zones))])
    pts = RNG.uniform(-5, 110, (5000, 2))
    # Points exactly on a boundary must count as inside, as intersects says.
    pts[:10] = [z[0][0] for z in zones[:10]]
    point_idx, zone_idx = index.locate(pts)
    tree = shapely.STRtree(shapely.polygons([z[0] for z in zones]))
    expected = tree.query(shapely.points(pts), predicate="intersects")
    ours = set(zip(point_idx.tolist(), zone_idx.tolist()))
    theirs = set(zip(expected[0].tolist(), expected[1].tolist()))
    assert ours == theirs
    assert len(ours) > 100
    assert all(i in point_idx for i in range(10))


def test_zones_of_names_every_zone_a_point_falls_in():
    square = [np.array([(0, 0), (10, 0), (10, 10), (0, 10), (0, 0)], float)]
    inner = [np.array([(2, 2), (4, 2), (4, 4), (2, 4), (2, 2)], float)]
    index = geometry.ZoneIndex.of([[square], [inner]],
                               ["yard", "pad"])
    pts = np.array([[3.0, 3.0], [8.0, 8.0], [20.0, 20.0], [np.nan, 3.0]])
    assert index.zones_of(pts) == [("yard", "pad"), ("yard",), (), ()]
    assert index.zones_touching(pts) == ("yard", "pad")


def test_an_invalid_or_unbuildable_zone_never_matches_but_keeps_its_place():
    good = [np.array([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)], float)]
    broken = [np.array([(0.5, 0.5)], float)]
    index = geometry.ZoneIndex.of([[broken], [good]],
                               ["broken", "good"])
    assert index.zones_of(np.array([[0.5, 0.5]])) == [("good",)]


def _star(centre, rng, vertices=12, hole=False):
    """A concave star polygon, with a hole at its centre if asked."""
    angles = np.linspace(0, 2 * np.pi, 2 * vertices, endpoint=False)
    radii = np.where(np.arange(2 * vertices) % 2 == 0, rng.uniform(4, 6), rng.uniform(1.5, 3))
    shell = np.column_stack([centre[0] + radii * np.cos(angles),
                             centre[1] + radii * np.sin(angles)])
    rings = [np.vstack([shell, shell[:1]])]
    if hole:
        sq = np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5)]) + centre
        rings.append(sq[::-1])
    return rings


def _zone_shapes(rng):
    """Concave zones, zones with holes, multipolygons and one invalid bow tie."""
    zones, shapes = [], []
    for i in range(60):
        centre = rng.uniform(0, 100, 2)
        rings = _star(centre, rng, hole=i % 3 == 0)
        if i % 5 == 0:  # a MultiPolygon: the star and a square beside it
            sq = np.array([(0, 0), (2, 0), (2, 2), (0, 2), (0, 0)], float) + centre + 7
            zones.append([rings, [sq]])
            shapes.append(shapely.MultiPolygon([shapely.Polygon(rings[0], rings[1:]),
                                                shapely.Polygon(sq)]))
        else:
            zones.append([rings])
            shapes.append(shapely.Polygon(rings[0], rings[1:]))
    bow = np.array([(50, 50), (60, 60), (60, 50), (50, 60), (50, 50)], float)
    zones.append([[bow]])
    shapes.append(shapely.make_valid(shapely.Polygon(bow), method="structure",
                                     keep_collapsed=False))
    return zones, shapes


def test_points_in_concave_holed_multi_and_repaired_zones_match_shapely():
    rng = np.random.default_rng(8)
    zones, shapes = _zone_shapes(rng)
    index = geometry.ZoneIndex.of(zones, [str(i) for i in range(len(zones))])
    pts = rng.uniform(-5, 105, (20_000, 2))
    # Points exactly on vertices, on edges' midpoints (collinear) and on holes'
    # boundaries: all inside, as intersects says.
    on_edges = []
    for shape in shapes:
        for poly in getattr(shape, "geoms", [shape]):
            for ring in [poly.exterior, *poly.interiors]:
                c = np.asarray(ring.coords)
                on_edges += [c[0], (c[1] + c[2]) / 2]
    pts = np.vstack([pts, on_edges])
    point_idx, zone_idx = index.locate(pts)
    tree = shapely.STRtree(shapes)
    expected = tree.query(shapely.points(pts), predicate="intersects")
    assert set(zip(point_idx.tolist(), zone_idx.tolist())) == \
        set(zip(expected[0].tolist(), expected[1].tolist()))
    assert len(point_idx) > 1000


def test_polygons_against_concave_holed_and_repaired_zones_match_shapely():
    rng = np.random.default_rng(9)
    zones, shapes = _zone_shapes(rng)
    index = geometry.ZoneIndex.of(zones, [str(i) for i in range(len(zones))])
    probes = []
    for _ in range(400):
        c = rng.uniform(0, 100, 2)
        r = rng.uniform(0.05, 3)
        a = np.sort(rng.uniform(0, 2 * np.pi, 7))
        ring = np.column_stack([c[0] + r * np.cos(a), c[1] + r * np.sin(a)])
        probes.append(np.vstack([ring, ring[:1]]))
    # Inside a hole without touching it; on a hole's boundary; sharing a vertex.
    star0 = zones[0][0]
    probes.append(star0[1][:4].mean(axis=0) + np.array(
        [(-0.1, -0.1), (0.1, -0.1), (0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1)]))
    probes.append(np.vstack([star0[1][:3], star0[1][:1]]) * 1.0)
    probes.append(np.array([star0[0][0], star0[0][0] + (3, 0), star0[0][0] + (3, 3),
                            star0[0][0]]))
    found = index.zones_of_polygons(geometry.Polygons.from_rings([[[p]] for p in probes]))
    tree = shapely.STRtree(shapes)
    expected = tree.query([shapely.Polygon(p) for p in probes], predicate="intersects")
    theirs: list[set[str]] = [set() for _ in probes]
    for g, z in zip(*expected):
        theirs[g].add(str(z))
    assert [set(f) for f in found] == theirs
    assert found[-3] == () and found[-2] == ("0",) and "0" in found[-1]


def test_workers_read_zones_from_the_shared_file_without_copying_them(tmp_path):
    from gatewayd import processing

    zones, _ = _zone_shapes(np.random.default_rng(10))
    arrays = geometry.pack(zones)
    processing.save_zones(tmp_path, arrays, [str(i) for i in range(len(zones))])
    index = processing._load_zones(str(tmp_path))
    mapped = np.load(tmp_path / "coords.npy", mmap_mode="r")
    held = index._tree._arrays[0]
    assert isinstance(held, np.memmap) or isinstance(held.base, np.memmap)
    assert np.array_equal(held, mapped) and not held.flags.writeable


# ---- voxels and boxes ----

def _voxel_oracle(pts: np.ndarray, size: float) -> np.ndarray:
    keys = np.floor(pts / size).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first)


@pytest.mark.parametrize("size", [0.1, 0.5, 2.0])
def test_voxel_select_keeps_the_first_point_of_every_voxel(size):
    pts = RNG.uniform(-20, 20, (20000, 3))
    pts[100:200] = pts[:100]  # duplicates collapse into their voxel's first point
    np.testing.assert_array_equal(geometry.voxel_select(pts, size), _voxel_oracle(pts, size))


def test_voxel_select_drops_nonfinite_points_and_size_zero_keeps_all_finite():
    pts = RNG.uniform(0, 1, (100, 3))
    pts[5] = np.nan
    pts[7, 2] = np.inf
    kept = geometry.voxel_select(pts, 0.0)
    assert 5 not in kept and 7 not in kept and len(kept) == 98
    assert 5 not in geometry.voxel_select(pts, 0.3)
    with pytest.raises(ValueError):
        geometry.voxel_select(pts, -1.0)


def test_bbox_select_matches_numpy_and_ignores_z_for_2d():
    pts = RNG.uniform(-10, 10, (5000, 3))
    pts[0] = [0.0, 0.0, np.nan]
    box = [-2.0, -3.0, -1.0, 4.0, 5.0, 6.0]
    inside = np.all((pts >= box[:3]) & (pts <= box[3:]), axis=1)
    np.testing.assert_array_equal(geometry.bbox_select(pts, box), np.flatnonzero(inside))
    flat = np.ascontiguousarray(pts[:, :2])
    inside2 = np.all((flat >= box[:2]) & (flat <= box[3:5]), axis=1)
    np.testing.assert_array_equal(geometry.bbox_select(flat, box), np.flatnonzero(inside2))
    edge = np.array([[4.0, 5.0, 6.0]])
    assert geometry.bbox_select(edge, box).tolist() == [0]


def test_library_versions_are_reported():
    versions = geometry.library_versions()
    assert versions["geos"].startswith(versions["geos_build"].split("-")[0].rsplit(".", 1)[0])
    assert "Rel." in versions["proj"] or versions["proj"][0].isdigit()
    assert math.isfinite(1.0)


def test_validity_on_integer_grids_full_of_touching_and_collinear_cases_matches_shapely():
    # Small integer coordinates make touching vertices, collinear runs, spikes
    # and repeated points common: every doubtful ring must reach GEOS's verdict.
    rings = []
    for _ in range(3000):
        k = int(RNG.integers(3, 9))
        ring = RNG.integers(0, 4, (k, 2)).astype(float)
        rings.append(np.vstack([ring, ring[:1]]))
    ours = geometry.Polygons.from_rings([[[r]] for r in rings])
    valid, _ = ours.validity()
    with np.errstate(invalid="ignore"):
        oracle = shapely.is_valid(np.array([shapely.Polygon(r) for r in rings]))
    np.testing.assert_array_equal(valid, oracle)
    assert 0 < valid.sum() < len(rings)


def test_zones_of_polygons_matches_shapely_intersects():
    zones = _zone_squares(300)
    index = geometry.ZoneIndex.of([[z] for z in zones],
                               [str(i) for i in range(len(zones))])
    probes = _random_polygons(200, 8)
    for p in probes:
        p[0] += 50.0  # move the probes over the zones
    found = index.zones_of_polygons(geometry.Polygons.from_rings([[p] for p in probes]))
    tree = shapely.STRtree(shapely.polygons([z[0] for z in zones]))
    with np.errstate(invalid="ignore"):
        expected = tree.query(shapely.polygons([p[0] for p in probes]), predicate="intersects")
    theirs: list[set[str]] = [set() for _ in probes]
    for g, z in zip(*expected):
        theirs[g].add(str(z))
    assert [set(f) for f in found] == theirs
    assert sum(map(len, found)) > 50


@pytest.mark.parametrize(("crs", "angular"), [
    ("EPSG:4326", True), ("EPSG:4979", True), ("EPSG:32632", False), ("EPSG:3857", False),
    ("EPSG:4978", False), ("EPSG:5972", False), ("EPSG:9518", True),
])
def test_is_geographic_agrees_with_pyproj(crs, angular):
    assert geometry.is_geographic(crs) is angular
    assert pyproj.CRS(crs).is_geographic is angular
