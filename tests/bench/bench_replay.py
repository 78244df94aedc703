"""Benchmark of `gatewayd replay` end to end, beside the peers of each job.

    .venv/bin/python tests/bench/bench_replay.py [--quick]

- NMEA: sentences/s through replay, beside pynmea2 parsing the same sentences
  (parse only, one process); the median of three runs of each.
- LiDAR: points/s through replay on 30 000-point frames (UTM → WGS84, 0.1 m
  voxel grid, footprint), beside raw single-core PROJ transforming the same
  points, and beside a plain single-process pyproj + numpy + shapely script
  doing the same work; then five times the frames beside raw PROJ, for the
  rate of a stream once start-up no longer weighs.
- Polygons: validity, repair and area through replay, beside shapely's
  vectorised calls in one process.
- Worker peak RSS, and what a timed-out chunk costs: from its deadline to a
  fresh worker taking chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from functools import reduce
from pathlib import Path

import numpy as np
import pynmea2
import pyproj
import shapely

sys.path.insert(0, str(Path(__file__).parent))
from _report import Table

from gatewayd import _proj, processing
from gatewayd.config import load_config
from gatewayd.loop import run
from gatewayd.replay import ReplayOptions, replay
from gatewayd.workers import ChunkTimeout, WorkerPool

RNG = np.random.default_rng(11)
SAMPLE = Path(__file__).resolve().parents[2] / "gatewayd" / "samples" / "capture-drive.nmea"


def _replay(inputs: list[Path], **options: object) -> tuple[float, dict]:
    config = load_config(None, [f"pipeline.workers={options.pop('workers', 2)}"], {})
    out = io.StringIO()
    start = time.perf_counter()
    summary = run(replay(config, ReplayOptions(inputs=tuple(inputs), output=out, **options)))
    return time.perf_counter() - start, summary.as_dict()


def _checksum(body: str) -> str:
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}\r\n"


def bench_nmea(table: Table, tmp: Path, repeats: int, runs: int = 3) -> None:
    lines = SAMPLE.read_text("latin-1").splitlines(keepends=True)
    # The sentences whose checksums hold (the sample has a corrupted one: made
    # valid again, it would be a second RMC in its cycle).
    valid = [ln for ln in lines if ln.startswith("$G")
             and _checksum(ln[1:ln.index("*")]).rstrip() == ln.rstrip()]
    # Shift each copy's clock so every repetition is a new reporting cycle.
    out = []
    for rep in range(repeats):
        for ln in valid:
            body = ln[1:ln.index("*")]
            fields = body.split(",")
            if fields[0][2:] in ("RMC", "GGA", "GST") and fields[1]:
                hh, mm, ss = int(fields[1][:2]), int(fields[1][2:4]), float(fields[1][4:])
                total = (hh * 3600 + mm * 60 + ss + rep * 120) % 86400
                fields[1] = f"{int(total // 3600):02d}{int(total % 3600 // 60):02d}" \
                            f"{total % 60:05.2f}"
            out.append(_checksum(",".join(fields)))
    path = tmp / "drive.nmea"
    path.write_text("".join(out), "latin-1")
    # A replay of this file takes a fraction of a second: one pause of a shared
    # machine would decide a single run, so both sides take the median of runs.
    ours, peers = [], []
    for _ in range(runs):
        seconds, summary = _replay([path])
        ours.append(seconds)
        start = time.perf_counter()
        for ln in out:
            pynmea2.parse(ln.strip())
        peers.append(time.perf_counter() - start)
    sentences = summary["sentences"]
    table.add(f"NMEA through replay ({sentences:,} sentences, median of {runs})",
              sentences / statistics.median(ours), len(out) / statistics.median(peers),
              "sentences/s", "pynmea2.parse, parse only", ">= 3x")


def _pcd(points: np.ndarray, intensity: np.ndarray) -> bytes:
    n = len(points)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z intensity\n"
        "SIZE 8 8 8 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA binary\n"
    )
    rec = np.empty(n, dtype=[("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("i", "<f4")])
    rec["x"], rec["y"], rec["z"], rec["i"] = points[:, 0], points[:, 1], points[:, 2], intensity
    return header.encode() + rec.tobytes()


def _frames(count: int, n: int) -> list[np.ndarray]:
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    x0, y0 = t.transform(9.18, 48.78)
    frames = []
    for _ in range(count):
        # An OS1-64 sweep: rings of returns around the sensor, ranges to 60 m.
        az = RNG.uniform(0, 2 * np.pi, n)
        r = RNG.uniform(1.0, 60.0, n)
        frames.append(np.column_stack([x0 + r * np.cos(az), y0 + r * np.sin(az),
                                       RNG.normal(245.0, 1.5, n)]))
    return frames


def _plain_script(frames: list[np.ndarray]) -> None:
    to_wgs = pyproj.Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    for pts in frames:
        keys = np.floor(pts / 0.1).astype(np.int64)
        _, first = np.unique(keys, axis=0, return_index=True)
        kept = pts[np.sort(first)]
        lon, lat, z = to_wgs.transform(kept[:, 0], kept[:, 1], kept[:, 2])
        hull = shapely.convex_hull(shapely.multipoints(np.column_stack([lon, lat])))
        _ = (hull.wkt, lon.min(), lat.max(), z.min())


def bench_lidar(table: Table, tmp: Path, count: int, long_count: int = 0) -> None:
    frames = _frames(count, 30_000)
    paths = []
    for i, pts in enumerate(frames):
        p = tmp / f"frame{i:04d}.pcd"
        p.write_bytes(_pcd(pts, RNG.uniform(0, 1, len(pts)).astype(np.float32)))
        paths.append(p)
    total = sum(len(f) for f in frames)
    seconds, summary = _replay(paths, source_crs="EPSG:32632", target_crs="EPSG:4326")
    assert summary["points_in"] == total, summary

    start = time.perf_counter()
    _plain_script(frames)
    plain = time.perf_counter() - start

    pj = _proj.transformation("EPSG:32632", "EPSG:4326").pj
    copies = [f.copy() for f in frames]
    start = time.perf_counter()
    for c in copies:
        _proj.raw_trans_generic(pj, c)
    raw = time.perf_counter() - start
    table.add(f"LiDAR through replay ({count} x 30k pts)", total / seconds, total / plain,
              "points/s", "pyproj+numpy+shapely script, one process", ">= 1.31M/s")
    table.add("  same, beside raw single-core PROJ transform", total / seconds, total / raw,
              "points/s", "proj_trans_generic only", "stretch >= 1.0x")
    table.rows.append({"case": "lidar summary", "ours": summary, "peer": None})
    if long_count:
        # A scanner streams: with five times the frames, the workers' start-up
        # and the last frame's wait weigh a fifth as much.
        frames = _frames(long_count, 30_000)
        for i, pts in enumerate(frames):
            (tmp / f"frame{i:04d}.pcd").write_bytes(
                _pcd(pts, RNG.uniform(0, 1, len(pts)).astype(np.float32)))
        paths = [tmp / f"frame{i:04d}.pcd" for i in range(long_count)]
        total = sum(len(f) for f in frames)
        seconds, summary = _replay(paths, source_crs="EPSG:32632", target_crs="EPSG:4326")
        assert summary["points_in"] == total, summary
        start = time.perf_counter()
        for c in frames:
            _proj.raw_trans_generic(pj, c)
        raw = time.perf_counter() - start
        table.add(f"LiDAR through replay ({long_count} x 30k pts), beside raw PROJ",
                  total / seconds, total / raw, "points/s", "proj_trans_generic only",
                  "stretch >= 1.0x")


def bench_polygons(table: Table, tmp: Path, n: int) -> None:
    centres = RNG.uniform(-170, 170, (n, 1, 2)) * [1, 0.45]
    angles = np.sort(RNG.uniform(0, 2 * np.pi, (n, 16)), axis=1)
    shuffle = RNG.random(n) < 0.2
    angles[shuffle] = RNG.permuted(angles[shuffle], axis=1)
    radii = RNG.uniform(0.001, 0.01, (n, 16))
    rings = centres + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=2)
    rings = np.concatenate([rings, rings[:, :1]], axis=1)
    features = [{"type": "Feature", "id": str(i),
                 "geometry": {"type": "Polygon", "coordinates": [r.tolist()]},
                 "properties": {}} for i, r in enumerate(rings)]
    path = tmp / "polygons.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    seconds, summary = _replay([path])
    assert summary["polygons"] == n, summary

    geod = pyproj.Geod(ellps="WGS84")
    start = time.perf_counter()
    geoms = shapely.polygons(rings)
    shapely.is_valid_reason(geoms)
    fixed = shapely.make_valid(geoms, method="structure", keep_collapsed=False)
    for g in fixed:
        geod.geometry_area_perimeter(g)
    shapely.to_geojson(fixed)
    peer = time.perf_counter() - start
    table.add(f"polygons through replay ({n:,})", n / seconds, n / peer, "polygons/s",
              "shapely vectorised + pyproj.Geod area, one process", ">= 0.5x")


async def _timeouts(count: int, timeout_s: float) -> list[float]:
    """Times out ``count`` chunks, one after the other, on the real processing
    workers; returns each time from the chunk's deadline to a fresh worker
    ready to take chunks."""
    points = _frames(1, 1_000_000)[0]
    costs: list[float] = []
    async with WorkerPool(size=2, handler="gatewayd.processing:handle",
                          init="gatewayd.processing:init",
                          init_args=(processing.WorkerSettings(),), memory_limit_mb=1024,
                          chunk_timeout_s=timeout_s) as pool:
        for i in range(count):
            shared = pool.share(points)  # a fresh copy: a killed worker leaves it half done
            try:
                restarts = pool.stats().restarts
                # A million points (UTM → WGS84, voxel grid, hull) in one block.
                task = processing.BlockTask(shared, 0, len(points), "EPSG:32632", "EPSG:4326",
                                            0.1, finish=True)
                try:
                    await pool.run(f"timeout-{i}", task)
                except ChunkTimeout:
                    pass
                else:
                    raise AssertionError("the chunk finished within its time")
                while True:
                    stats = pool.stats()
                    if stats.restarts > restarts and stats.alive == pool.size:
                        break
                    await asyncio.sleep(0.002)
                assert stats.last_replace_s is not None
                costs.append(stats.last_replace_s)
            finally:
                pool.release(shared)
    return costs


def bench_timeout(table: Table, count: int) -> None:
    costs = run(_timeouts(count, 0.05))
    table.add(f"timed-out chunk: deadline to fresh worker ({count} runs)",
              statistics.median(costs) * 1000, None,
              "ms, median, lower is better; the worker is killed and replaced")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    table = Table("replay, end to end (2 workers, worker start-up included)")
    with tempfile.TemporaryDirectory() as tmp:
        bench_nmea(table, Path(tmp), 20 if args.quick else 200)
        bench_lidar(table, Path(tmp), 10 if args.quick else 60, 0 if args.quick else 300)
        bench_polygons(table, Path(tmp), 2_000 if args.quick else 20_000)
        bench_timeout(table, 5 if args.quick else 9)
    table.print()
    for row in table.rows:
        if row["case"] == "lidar summary":
            workers = row["ours"].get("workers", {})
            print(f"\nworkers: {json.dumps(workers, default=str)}")
    table.save("replay")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
