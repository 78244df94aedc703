"""``gatewayd replay`` end to end, in a subprocess with real workers: each
kind of input against an independent oracle (pyproj, shapely, laspy, pynmea2),
record ids, lineage, the points written, dead letters and exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import laspy
import numpy as np
import pynmea2
import pyproj
import pytest
import shapely
import shapely.geometry
from emulation import NOT_ENFORCED, cap_enforced

SAMPLES = Path(__file__).resolve().parent.parent / "gatewayd" / "samples"
UTM32 = "EPSG:32632"
X0, Y0 = 513_223.5, 5_403_015.5  # near Stuttgart, in UTM zone 32N


def replay(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gatewayd", "replay", *args],
                          capture_output=True, text=True, timeout=timeout)


def run(tmp: Path, *args: str) -> tuple[int, list[dict], dict, str]:
    out, summary = tmp / "out.jsonl", tmp / "summary.json"
    result = replay("-o", str(out), "--summary", str(summary), *args)
    assert "Traceback" not in result.stderr, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    stats = json.loads(summary.read_text()) if summary.exists() else {}
    return result.returncode, records, stats, result.stderr


def write_pcd(path: Path, cloud: np.ndarray, intensity: np.ndarray) -> None:
    """Binary PCD with x y z among fields of other widths, in another order."""
    rec = np.empty(len(cloud), dtype=[("intensity", "<f4"), ("z", "<f8"), ("ring", "<u2"),
                                      ("x", "<f8"), ("y", "<f8")])
    rec["x"], rec["y"], rec["z"] = cloud[:, 0], cloud[:, 1], cloud[:, 2]
    rec["intensity"] = intensity
    rec["ring"] = np.arange(len(cloud)) % 64
    header = ("# .PCD v0.7\nVERSION 0.7\nFIELDS intensity z ring x y\nSIZE 4 8 2 8 8\n"
              "TYPE F F U F F\nCOUNT 1 1 1 1 1\n"
              f"WIDTH {len(cloud)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
              f"POINTS {len(cloud)}\nDATA binary\n")
    path.write_bytes(header.encode() + rec.tobytes())


def read_pcd(path: Path) -> np.ndarray:
    """A binary PCD, read with nothing but its header."""
    data = path.read_bytes()
    head, _, body = data.partition(b"DATA binary\n")
    fields: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, *values = line.split()
        fields[key] = values
    kinds = {"F": "f", "I": "i", "U": "u"}
    dtype = np.dtype([(name, f"<{kinds[t]}{s}", (int(c),) if int(c) > 1 else ())
                      for name, s, t, c in zip(fields["FIELDS"], fields["SIZE"],
                                               fields["TYPE"], fields["COUNT"])])
    return np.frombuffer(body, dtype=dtype, count=int(fields["POINTS"][0]))


def first_per_voxel(points: np.ndarray, size: float) -> np.ndarray:
    """Indices of the first point in each voxel of a grid anchored at the origin."""
    keys = np.floor(points / size).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first)


# ---- GPS ----

def test_nmea_fixes_match_pynmea2_and_carry_their_lineage(tmp_path):
    capture = SAMPLES / "capture-drive.nmea"
    code, records, stats, _ = run(tmp_path, "--target-crs", UTM32, str(capture))
    assert code == 0
    rmc = []
    for line in capture.read_bytes().splitlines():
        try:
            msg = pynmea2.parse(line.decode("ascii", "replace").strip(), check=True)
        except (pynmea2.ParseError, ValueError, UnicodeError):
            continue
        if isinstance(msg, pynmea2.types.talker.RMC) and msg.status == "A":
            rmc.append(msg)
    fixes = [r for r in records if r["kind"] == "gps_fix" and r.get("mode", 0) >= 2]
    by_time = {r["time"][11:19]: r for r in fixes if "time" in r}
    t = pyproj.Transformer.from_crs("EPSG:4326", UTM32, always_xy=True)
    matched = 0
    for msg in rmc:
        fix = by_time.get(msg.timestamp.strftime("%H:%M:%S"))
        if fix is None:
            continue
        matched += 1
        assert fix["lat"] == pytest.approx(msg.latitude, abs=1e-7)
        assert fix["lon"] == pytest.approx(msg.longitude, abs=1e-7)
        x, y = t.transform(fix["lon"], fix["lat"])
        assert fix["x"] == pytest.approx(x, abs=1e-3) and fix["y"] == pytest.approx(y, abs=1e-3)
        assert fix["crs"] == UTM32
    assert matched >= 0.9 * len(rmc) > 50
    digest = hashlib.sha256(capture.read_bytes()).hexdigest()
    for r in records:
        assert re.fullmatch(r"[0-9a-f]{64}", r["id"])
        assert r["source"] == "capture-drive"  # the file's stem
        assert r["received_at"] <= r["processed_at"]
        lineage = r["lineage"]
        assert set(lineage) >= {"input_sha256", "operation", "crs_from", "crs_to", "version",
                                "host"}
        assert lineage["input_sha256"] == digest and lineage["crs_to"] == UTM32
    assert stats["fixes"] == sum(r["kind"] == "gps_fix" for r in records)
    assert stats["bad_checksums"] >= 1


def test_replaying_the_same_input_again_gives_the_same_ids(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, first, _, _ = run(tmp_path / "a", str(SAMPLES / "capture-drive.nmea"))
    _, again, _, _ = run(tmp_path / "b", str(SAMPLES / "capture-drive.nmea"))
    assert [r["id"] for r in first] == [r["id"] for r in again]
    assert len({r["id"] for r in first}) == len(first)
    # Another source name is another stream: other ids.
    (tmp_path / "c").mkdir()
    _, other, _, _ = run(tmp_path / "c", "--source", "car7", str(SAMPLES / "capture-drive.nmea"))
    assert not {r["id"] for r in other} & {r["id"] for r in first}


# ---- LiDAR ----

@pytest.fixture(scope="module")
def cloud() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 30_000
    xyz = np.column_stack([X0 + rng.uniform(0, 40, n), Y0 + rng.uniform(0, 40, n),
                           rng.normal(245, 1.5, n)])
    return np.round(xyz, 2), rng.uniform(0, 1, n).astype(np.float32)


def test_a_pcd_frame_is_downsampled_transformed_and_outlined_as_pyproj_and_shapely_say(
        tmp_path, cloud):
    xyz, intensity = cloud
    pcd = tmp_path / "mast.pcd"
    write_pcd(pcd, xyz, intensity)
    points = tmp_path / "points"
    code, records, stats, _ = run(tmp_path, "--source-crs", UTM32, "--target-crs", "EPSG:4326",
                                  "--points-dir", str(points), str(pcd))
    assert code == 0
    (frame,) = records
    assert frame["kind"] == "lidar_frame" and frame["crs"] == "EPSG:4326"
    held = xyz
    keep = first_per_voxel(held, 0.1)
    assert frame["points_in"] == len(xyz) and frame["points_out"] == len(keep)
    t = pyproj.Transformer.from_crs(UTM32, "EPSG:4326", always_xy=True)
    lon, lat, z = t.transform(held[keep, 0], held[keep, 1], held[keep, 2])
    want = np.column_stack([lon, lat, z])
    assert frame["bbox"] == pytest.approx([*want.min(axis=0), *want.max(axis=0)], abs=1e-9)

    (written,) = points.glob("*.pcd")
    assert written.stem == frame["id"]
    out = read_pcd(written)
    assert out.dtype["x"] == np.float64 and out.dtype["z"] == np.float64
    got = np.column_stack([out["x"], out["y"], out["z"]])
    np.testing.assert_allclose(got, want, atol=1e-9)
    # The input's other fields are carried through, point for point.
    np.testing.assert_array_equal(out["intensity"], intensity[keep])
    np.testing.assert_array_equal(out["ring"], (np.arange(len(xyz)) % 64)[keep])

    hull = shapely.convex_hull(shapely.MultiPoint(want[:, :2]))
    footprint = shapely.geometry.shape(frame["footprint"])
    assert footprint.is_valid
    assert footprint.symmetric_difference(hull).area <= 1e-9 * hull.area
    assert stats["frames"] == 1 and stats["points_out"] == len(keep)


def test_a_frame_larger_than_a_block_keeps_one_point_per_voxel_overall(tmp_path):
    rng = np.random.default_rng(3)
    n = 120_000  # several blocks, points in no particular order
    xyz = np.round(np.column_stack([X0 + rng.uniform(0, 20, n), Y0 + rng.uniform(0, 20, n),
                                    rng.uniform(240, 241, n)]), 3)
    pcd = tmp_path / "dense.pcd"
    write_pcd(pcd, xyz, np.zeros(n, np.float32))
    code, records, _, _ = run(tmp_path, "--source-crs", UTM32, "--target-crs", UTM32,
                              "--set", "lidar.voxel_size_m=0.5", str(pcd))
    assert code == 0
    assert records[0]["points_out"] == len(first_per_voxel(xyz, 0.5))


def test_a_las_file_takes_its_crs_from_its_vlrs_and_applies_scale_and_offset(tmp_path):
    las_path = SAMPLES / "capture-scan.las"
    las = laspy.read(las_path)
    crs = las.header.parse_crs()
    assert crs is not None and crs.to_epsg() == 25832
    code, records, _, _ = run(tmp_path, "--target-crs", "EPSG:4326", "--set",
                              "lidar.voxel_size_m=0", str(las_path))
    assert code == 0
    (frame,) = records
    assert frame["lineage"]["crs_from"].upper().startswith(("EPSG:25832", "PROJCRS"))
    t = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat, z = t.transform(np.asarray(las.x), np.asarray(las.y), np.asarray(las.z))
    assert frame["points_in"] == frame["points_out"] == len(las.points)
    assert frame["bbox"] == pytest.approx([min(lon), min(lat), min(z), max(lon), max(lat),
                                           max(z)], abs=1e-8)


def test_a_frame_over_the_point_limit_is_a_dead_letter_and_the_run_partial(tmp_path, cloud):
    xyz, intensity = cloud
    pcd = tmp_path / "big.pcd"
    write_pcd(pcd, xyz, intensity)
    code, records, stats, stderr = run(tmp_path, "--source-crs", UTM32, "--set",
                                       "pipeline.max_points_per_frame=1000", str(pcd),
                                       str(SAMPLES / "capture-sensors.geojson"))
    assert code == 12
    digest = hashlib.sha256(pcd.read_bytes()).hexdigest()
    dead = [r for r in records if r["kind"] == "dead_letter" and r["input_sha256"] == digest]
    assert [d["reason"] for d in dead] == ["too_large"]
    assert any(r["kind"] == "polygon" for r in records)  # the next input went on
    assert stats["dead_letters"]["too_large"] == 1
    assert stderr.count("\n") <= 3


@pytest.mark.skipif(not cap_enforced(), reason=NOT_ENFORCED)
def test_a_frame_whose_points_do_not_fit_under_the_worker_cap_is_a_memory_dead_letter(
        tmp_path):
    rng = np.random.default_rng(1)
    n = 1_500_000  # 36 MB of shared points, more than the cap leaves
    xyz = np.column_stack([X0 + rng.uniform(0, 50, n), Y0 + rng.uniform(0, 50, n),
                           rng.normal(245, 1, n)])
    pcd = tmp_path / "huge.pcd"
    write_pcd(pcd, xyz, np.zeros(n, np.float32))
    code, records, stats, _ = run(tmp_path, "--source-crs", UTM32,
                                  "--set", "pipeline.max_payload_bytes=100000000",
                                  "--set", "pipeline.worker_memory_mb=150", str(pcd),
                                  str(SAMPLES / "capture-drive.nmea"))
    assert code == 12
    dead = [r for r in records if r["kind"] == "dead_letter"]
    assert [d["reason"] for d in dead] == ["memory"]
    assert sum(r["kind"] == "gps_fix" for r in records) > 100  # the next input went on
    assert stats["workers"]["alive"] == stats["workers"]["size"]


# ---- polygons ----

def test_polygons_are_validated_and_repaired_as_shapely_says(tmp_path):
    doc = SAMPLES / "capture-sensors.geojson"
    code, records, stats, _ = run(tmp_path, str(doc))
    assert code in (0, 12)
    features = {str(f.get("id")): f for f in json.loads(doc.read_text())["features"]}
    polygons = [r for r in records if r["kind"] == "polygon"]
    assert polygons
    geod = pyproj.Geod(ellps="WGS84")
    for rec in polygons:
        geom = shapely.geometry.shape(features[rec["feature_id"]]["geometry"])
        assert rec["valid"] == shapely.is_valid(geom), rec["feature_id"]
        out = shapely.geometry.shape(rec["geometry"])
        assert out.is_valid
        if rec["valid"]:
            assert rec["reason"] is None and not rec["repaired"]
            assert out.equals(geom)
        else:
            # GEOS's own words: shapely's reason names the same problem.
            assert rec["reason"].split("[")[0] == shapely.is_valid_reason(geom).split("[")[0]
            assert rec["repaired"]
            # GEOS make-valid, structure method: polygonal, holes as holes.
            fixed = shapely.make_valid(geom, method="structure", keep_collapsed=False)
            assert out.symmetric_difference(fixed).area <= 1e-12 * max(fixed.area, 1e-12)
        area, _ = geod.geometry_area_perimeter(out)
        assert rec["area_m2"] == pytest.approx(abs(area), rel=1e-6)
    assert stats["polygons"] == len(polygons)
    assert stats["invalid_polygons"] == sum(not r["valid"] for r in polygons) >= 1


def test_newline_delimited_features_are_read_one_a_line(tmp_path):
    square = [[9.18, 48.78], [9.181, 48.78], [9.181, 48.781], [9.18, 48.781], [9.18, 48.78]]
    lines = [json.dumps({"type": "Feature", "id": f"f{i}", "properties": {},
                         "geometry": {"type": "Polygon", "coordinates": [square]}})
             for i in range(3)]
    path = tmp_path / "features.geojsonl"
    path.write_text("\n".join(lines) + "\n")
    code, records, _, _ = run(tmp_path, "--format", "geojson", str(path))
    assert code == 0
    assert [r["feature_id"] for r in records] == ["f0", "f1", "f2"]


# ---- the command ----

def test_the_format_is_found_from_the_content_not_the_name(tmp_path):
    disguised = tmp_path / "scan.txt"
    disguised.write_bytes((SAMPLES / "capture-scan.las").read_bytes())
    code, records, _, _ = run(tmp_path, "--target-crs", "EPSG:4326", str(disguised))
    assert code == 0 and [r["kind"] for r in records] == ["lidar_frame"]
    code, _, _, stderr = run(tmp_path, "--format", "pcd", str(disguised))
    assert code != 0 and stderr.count("\n") == 1  # a clear line, not a traceback


def test_metres_under_a_lon_lat_crs_are_a_crs_dead_letter_not_a_frame(tmp_path, cloud):
    xyz, intensity = cloud
    pcd = tmp_path / "utm.pcd"
    write_pcd(pcd, xyz, intensity)
    # No --source-crs: the default, EPSG:4326, cannot hold these numbers.
    code, records, _, stderr = run(tmp_path, str(pcd))
    assert code == 12
    (dead,) = records
    assert dead["kind"] == "dead_letter" and dead["reason"] == "crs"
    assert "source CRS" in dead["detail"]
    assert "input refused (crs)" in stderr


def test_a_progress_bar_goes_to_a_terminal_and_not_to_a_pipe(tmp_path):
    capture = str(SAMPLES / "capture-drive.nmea")
    piped = replay("-o", os.devnull, capture)
    assert piped.returncode == 0 and "\r" not in piped.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gatewayd", "replay", "-o", os.devnull,
                             capture], stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(60) == 0
    os.close(leader)
    assert b"\r" in seen and b"%" in seen
