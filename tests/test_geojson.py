"""GeoJSON decoding against shapely's reading of the same documents, and every
way a document or a feature is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely

from gatewayd.errors import DecodeError, InputTooLarge
from gatewayd.geojson import decode_geojson, pack_polygons

LIMITS = {"max_bytes": 1 << 20, "max_vertices": 10_000, "max_features": 1000}
SQUARE = [[10.0, 50.0], [10.1, 50.0], [10.1, 50.1], [10.0, 50.1], [10.0, 50.0]]
HOLE = [[10.02, 50.02], [10.02, 50.05], [10.05, 50.05], [10.05, 50.02], [10.02, 50.02]]


def _feature(geometry, fid="a", **props):
    return {"type": "Feature", "id": fid, "geometry": geometry, "properties": props}


def _decode(doc, **limits):
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return decode_geojson(data, **{**LIMITS, **limits})


def test_feature_collection_coordinates_match_shapely():
    doc = {"type": "FeatureCollection", "features": [
        _feature({"type": "Polygon", "coordinates": [SQUARE, HOLE]}, "p", name="yard"),
        _feature({"type": "MultiPolygon", "coordinates": [[SQUARE], [HOLE]]}, 7),
    ]}
    result = _decode(doc)
    assert not result.rejected
    first, second = result.features
    assert first.feature_id == "p" and first.properties == {"name": "yard"}
    assert second.feature_id == "7" and second.multi and not first.multi
    for ours, raw in zip(result.features, doc["features"]):
        theirs = shapely.geometry.shape(raw["geometry"])
        polys = list(theirs.geoms) if ours.multi else [theirs]
        for poly, rings in zip(polys, ours.parts):
            np.testing.assert_array_equal(rings[0], np.asarray(poly.exterior.coords))
            for hole, ring in zip(poly.interiors, rings[1:]):
                np.testing.assert_array_equal(ring, np.asarray(hole.coords))


def test_bare_geometry_and_newline_delimited_features():
    assert len(_decode({"type": "Polygon", "coordinates": [SQUARE]}).features) == 1
    lines = "\n".join(json.dumps(_feature({"type": "Polygon", "coordinates": [SQUARE]}, i))
                      for i in range(3)) + "\n{not json}\n"
    result = _decode(lines.encode())
    assert [f.feature_id for f in result.features] == ["0", "1", "2"]
    assert [r.index for r in result.rejected] == [3]


def test_invalid_shapes_pass_through_exactly_as_given():
    bow = [[0, 0], [1, 1], [1, 0], [0, 1]]  # unclosed bow-tie
    result = _decode(_feature({"type": "Polygon", "coordinates": [bow]}))
    np.testing.assert_array_equal(result.features[0].parts[0][0], bow)


@pytest.mark.parametrize(("geometry", "reason"), [
    ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "bad_input"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "bad_input"),
    ({"type": "Polygon", "coordinates": [[[0, 0], ["a", 1], [1, 0], [0, 0]]]}, "bad_input"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [200, 1], [1, 0], [0, 0]]]}, "bad_input"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [1, 95], [1, 0], [0, 0]]]}, "bad_input"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [True, 1], [1, 0], [0, 0]]]}, "bad_input"),
    ({"type": "Polygon", "coordinates": []}, "bad_input"),
    ({"type": "Polygon", "coordinates": [[[0, 0]] * 20_000]}, "too_large"),
    (None, "bad_input"),
])
def test_a_bad_feature_is_refused_alone(geometry, reason):
    doc = {"type": "FeatureCollection", "features": [
        _feature(geometry, "bad"), _feature({"type": "Polygon", "coordinates": [SQUARE]}, "ok"),
    ]}
    result = _decode(doc)
    assert [f.feature_id for f in result.features] == ["ok"]
    assert result.rejected[0].reason == reason and result.rejected[0].feature_id == "bad"


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_tokens_are_refused(token):
    doc = b'{"type":"Polygon","coordinates":[[[0,0],[1,' + token + b'],[1,0],[0,0]]]}'
    with pytest.raises(DecodeError):
        _decode(doc)


def test_documents_over_the_byte_limit_are_refused_before_parsing():
    with pytest.raises(InputTooLarge):
        _decode(b"{" + b" " * 2000 + b"}", max_bytes=1000)


def test_too_many_features_is_too_large():
    doc = {"type": "FeatureCollection",
           "features": [_feature({"type": "Polygon", "coordinates": [SQUARE]}, i)
                        for i in range(20)]}
    with pytest.raises(InputTooLarge):
        _decode(doc, max_features=10)


@pytest.mark.parametrize("data", [b"", b"[1,2]", b"\xff\xfe", b"[" * 100_000, b"{\"type\": 5}"])
def test_garbage_documents_are_clear_errors(data):
    with pytest.raises(DecodeError):
        result = _decode(data)
        if not result.features and result.rejected:
            raise DecodeError("refused")


def test_pack_polygons_matches_shapely_ragged_layout():
    doc = {"type": "FeatureCollection", "features": [
        _feature({"type": "Polygon", "coordinates": [SQUARE, HOLE]}),
        _feature({"type": "Polygon", "coordinates": [HOLE]}),
    ]}
    packed = pack_polygons(_decode(doc).features)
    geoms = [shapely.geometry.shape(f["geometry"]) for f in doc["features"]]
    _, coords, offsets = shapely.to_ragged_array(geoms)
    np.testing.assert_array_equal(packed.coords, coords)
    np.testing.assert_array_equal(packed.ring_offsets, offsets[0])
    np.testing.assert_array_equal(packed.polygon_offsets, offsets[1])
