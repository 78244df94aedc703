"""``gatewayd demo``: the live demo end to end, and its simulator's inputs."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pynmea2
import pyproj
import pytest
import shapely

from gatewayd.demo import LiveView
from gatewayd.simulator import Route, cycle_sentences, polygon_update

ROOT = Path(__file__).resolve().parents[1]
ZONES = ROOT / "gatewayd" / "samples" / "zones.geojson"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/usr/sbin/mosquitto", os.X_OK), reason="needs mosquitto")
def test_the_demo_runs_broker_daemon_and_simulator_and_stops_them_all_cleanly():
    proc = subprocess.run([sys.executable, "-m", "gatewayd", "demo", "--duration", "8"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "Traceback" not in output

    summary = next(line for line in proc.stdout.splitlines() if line.startswith("summary:"))
    numbers = {key: int(value) for key, value in re.findall(
        r"(fixes|LiDAR frames|polygon records|dead letters|daemon exit code) (\d+)", summary)}
    assert numbers["fixes"] > 50, summary  # 10 Hz for 8 s
    assert numbers["LiDAR frames"] >= 1, summary
    assert numbers["polygon records"] >= 1, summary
    assert numbers["daemon exit code"] == 0, summary

    # Not a terminal: one line a second, never the dashboard's escape sequences.
    assert len(re.findall(r"^\[\s*\d+s\] fixes", proc.stdout, re.M)) >= 6
    assert "\x1b[" not in proc.stdout

    broker = int(re.search(r"mosquitto \(pid (\d+)\)", proc.stdout)[1])
    daemon = int(re.search(r"gatewayd run \(pid (\d+)\)", proc.stdout)[1])
    assert not _alive(broker) and not _alive(daemon)
    workdir = re.search(r"files in (\S+)", proc.stdout)[1]
    assert not Path(workdir).exists()
    assert _processes_mentioning(workdir) == []  # the daemon's workers ran from there too


def test_the_demo_without_mosquitto_says_so_in_one_line_and_exits_2(monkeypatch, capsys):
    from gatewayd import cli, demo

    monkeypatch.setattr(demo, "MOSQUITTO", "/nonexistent/mosquitto")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli.main(["demo", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mosquitto is not installed" in err


def test_the_simulated_receiver_speaks_valid_nmea_at_the_vehicle_position():
    route = Route()
    v = route.at(12.3)
    when = dt.datetime(2026, 3, 1, 10, 0, 1, tzinfo=dt.UTC)
    lines = cycle_sentences(v, when, with_gsv=True)
    kinds = [line[3:6].decode() for line in lines]
    assert kinds == ["RMC", "VTG", "GGA", "GSA", "GSV", "GSV", "GSV"]
    parsed = [pynmea2.parse(line.decode().strip(), check=True) for line in lines]
    rmc, gga = parsed[0], parsed[2]
    assert rmc.latitude == pytest.approx(v.lat, abs=1e-8)
    assert rmc.longitude == pytest.approx(v.lon, abs=1e-8)
    assert float(rmc.spd_over_grnd) * 1852 / 3600 == pytest.approx(v.speed, abs=1e-3)
    assert gga.gps_qual == 1 and all(len(line) <= 82 for line in lines)
    assert len(cycle_sentences(v, when, with_gsv=False)) == 4


def test_the_route_drives_through_zones_and_out_of_them_at_road_speeds():
    route = Route()
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    zones = {f["id"]: shapely.geometry.shape(f["geometry"])
             for f in json.loads(ZONES.read_text())["features"]}
    seen = set()
    for t in range(0, int(route.period), 2):
        v = route.at(t)
        seen.add(frozenset(n for n, z in zones.items() if z.contains(shapely.Point(v.lon, v.lat))))
        x, y = to_utm.transform(v.lon, v.lat)
        assert (v.x, v.y) == (pytest.approx(x, abs=0.5), pytest.approx(y, abs=0.5))
        assert 3 < v.speed * 3.6 < 60
    assert {frozenset(), frozenset({"depot-yard"}), frozenset({"public-road"})} <= seen
    assert any("gate" in s for s in seen)


def test_polygon_updates_mix_valid_polygons_bow_ties_and_a_non_polygon():
    v = Route().at(0)
    shapes = {}
    for n in range(3):
        for f in json.loads(polygon_update(v, n))["features"]:
            shapes[f["id"]] = f["geometry"]
    valid = {k: shapely.is_valid(shapely.geometry.shape(g)) for k, g in shapes.items()
             if g["type"] == "Polygon"}
    assert valid["envelope-0"] and valid["work-area-0"]
    assert not valid["work-area-1"]  # a bow-tie
    assert shapes["trace-1"]["type"] == "LineString"


def test_the_live_view_counts_records_from_the_gateway_topics():
    view = LiveView(color=False, unicode=False)
    fix = {"kind": "gps_fix", "lat": 48.78, "lon": 9.18, "x": 513000.0, "y": 5403000.0,
           "speed": 5.0, "mode": 3, "zones": ["depot-yard"], "time": "2026-03-01T10:00:00Z"}
    view.on_message("gatewayd/demo/out/gps/gps0", json.dumps(fix).encode())
    view.on_message("gatewayd/demo/out/polygon/field", json.dumps(
        {"kind": "polygon", "feature_id": "w", "valid": False, "repaired": True,
         "reason": "Self-intersection[9.18 48.78]", "area_m2": 12.0}).encode())
    view.on_message("gatewayd/demo/dead/field", json.dumps(
        {"kind": "dead_letter", "reason": "bad_input", "detail": "not a polygon"}).encode())
    view.on_message("gatewayd/demo/out/lidar/mast/pcd", b"VERSION 0.7\n")
    view.on_message("gatewayd/demo/status", b"{not json")
    screen = view.screen(100, 40)
    assert "48.780000" in screen and "depot-yard" in screen
    assert "Self-intersection[9.18 48.78]" in screen and "bad_input 1" in screen
    assert all(len(line) <= 100 for line in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "",
                                                   screen).splitlines())
    summary = view.summary(0)
    assert "fixes 1," in summary and "polygon records 1 (1 invalid, 1 repaired)" in summary
    assert "dead letters 1 (bad_input 1)" in summary and view.unreadable == 1
