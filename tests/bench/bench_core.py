"""Benchmark of the native geometry core beside raw PROJ and shapely.

    .venv/bin/python tests/bench/bench_core.py [--quick]

Prints rates (higher is better) for gatewayd and its peer, measured in the
same run, and their ratio; saves them to tests/bench/out/core.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import numpy as np
import shapely

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _report import Table, median_seconds

from gatewayd import _proj, geometry

RNG = np.random.default_rng(7)
SRC, DST = "EPSG:4326", "EPSG:32632"


def bench_transform(table: Table, total: int, repeat: int) -> None:
    base = np.column_stack([RNG.uniform(6, 12, total), RNG.uniform(40, 60, total)])
    pj = _proj.context().transformation(SRC, DST).pj
    for chunk in (128, 4096, 1_000_000):
        n = max(total, chunk)
        data = np.resize(base, (n, 2)) if n > total else base
        work = {"ours": data.copy(), "raw": data.copy()}
        chunks = {k: [v[i:i + chunk] for i in range(0, n, chunk)] for k, v in work.items()}

        def reset(work=work, data=data) -> None:  # type: ignore[no-untyped-def]
            work["ours"][:] = data
            work["raw"][:] = data

        def ours(chunks=chunks) -> None:  # type: ignore[no-untyped-def]
            for c in chunks["ours"]:
                geometry.transform(c, SRC, DST, inplace=True)

        def raw(chunks=chunks) -> None:  # type: ignore[no-untyped-def]
            for c in chunks["raw"]:
                _proj.raw_trans_generic(pj, c)

        t = median_seconds({"ours": ours, "raw": raw}, repeat=repeat, setup=reset)
        reset()
        ours()
        raw()
        np.testing.assert_allclose(work["ours"], work["raw"])
        table.add(f"transform WGS84->UTM, chunks of {chunk:,}", n / t["ours"], n / t["raw"],
                  "points/s", "proj_trans_generic", ">= 0.95x")


def _polygons(n: int, vertices: int) -> np.ndarray:
    centres = RNG.uniform(-170, 170, (n, 1, 2))
    angles = np.sort(RNG.uniform(0, 2 * np.pi, (n, vertices)), axis=1)
    shuffle = RNG.random(n) < 0.3
    angles[shuffle] = RNG.permuted(angles[shuffle], axis=1)
    radii = RNG.uniform(0.2, 1.0, (n, vertices))
    ring = centres + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=2)
    return np.concatenate([ring, ring[:, :1]], axis=1)


def bench_validity(table: Table, n: int, repeat: int) -> None:
    rings = _polygons(n, 64)
    k = rings.shape[1]
    arrays = geometry.pack([[[r]] for r in rings[:2]])  # shape template
    ragged = arrays._replace(
        coords=np.ascontiguousarray(rings.reshape(-1, 2)),
        ring_offsets=np.arange(0, n * k + 1, k, dtype=np.int64),
        polygon_offsets=np.arange(n + 1, dtype=np.int64),
        part_offsets=np.arange(n + 1, dtype=np.int64),
        multi=np.zeros(n, dtype=np.uint8),
    )

    def ours() -> None:
        geometry.Polygons.from_ragged(ragged).validity()

    def peer() -> None:
        shapely.is_valid_reason(shapely.polygons(rings))

    t = median_seconds({"ours": ours, "peer": peer}, repeat=repeat)
    valid, _ = geometry.Polygons.from_ragged(ragged).validity()
    assert (valid == shapely.is_valid(shapely.polygons(rings))).all()
    table.add(f"build + validity + reason, {n:,} x 64 vertices", n / t["ours"], n / t["peer"],
              "polygons/s", "shapely.polygons + is_valid_reason", ">= 1.0x")

    built = geometry.Polygons.from_ragged(ragged)
    geoms = shapely.polygons(rings)
    t = median_seconds({"ours": built.validity, "peer": lambda: shapely.is_valid_reason(geoms)},
                       repeat=repeat)
    table.add("validity + reason on built geometries", n / t["ours"], n / t["peer"],
              "polygons/s", "shapely.is_valid_reason", "")


def bench_zones(table: Table, n_points: int, n_zones: int, repeat: int) -> None:
    x, y = RNG.uniform(0, 1000, (2, n_zones))
    w, h = RNG.uniform(1, 10, (2, n_zones))
    rings = np.stack([np.column_stack(c) for c in [
        (x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)]], axis=1)
    index = geometry.ZoneIndex.of([[[r]] for r in rings], [str(i) for i in range(n_zones)])
    tree = shapely.STRtree(shapely.polygons(rings))
    pts = RNG.uniform(0, 1000, (n_points, 2))
    shapely_points = shapely.points(pts)

    t = median_seconds({
        "ours": lambda: index.locate(pts),
        "peer": lambda: tree.query(shapely_points, predicate="intersects"),
        "peer_with_points": lambda: tree.query(shapely.points(pts), predicate="intersects"),
    }, repeat=repeat)
    ours_pairs = index.locate(pts)
    theirs = tree.query(shapely_points, predicate="intersects")
    assert len(ours_pairs[0]) == theirs.shape[1]
    table.add(f"point-in-zones, {n_points:,} pts x {n_zones:,} zones", n_points / t["ours"],
              n_points / t["peer"], "points/s", "STRtree.query(intersects), points prebuilt",
              ">= 1.0x")
    table.add("  same, peer also building its points", n_points / t["ours"],
              n_points / t["peer_with_points"], "points/s", "shapely.points + STRtree.query", "")


_OURS_WORKER = """
import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np
from gatewayd import geometry
geometry.transform(np.array([[9.0, 48.0]]), "EPSG:4326", "EPSG:32632")
"""
_PEER_WORKER = """
import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np, pyproj, shapely
t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
t.transform(9.0, 48.0)
shapely.Point(0, 0).buffer(1)
"""
_STATUS = """
import json
fields = {}
for line in open("/proc/self/status"):
    k, _, v = line.partition(":")
    if k in ("VmSize", "VmRSS", "VmHWM"):
        fields[k] = int(v.split()[0])
print(json.dumps(fields))
"""


def _worker_memory(code: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + _STATUS],
        check=True, capture_output=True, text=True,
        env={"MALLOC_ARENA_MAX": "2", "PATH": "/usr/bin:/bin"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_memory(table: Table) -> None:
    ours = _worker_memory(_OURS_WORKER)
    peer = _worker_memory(_PEER_WORKER)
    print("\n## fresh worker memory (kB): core + one transformation, vs numpy+pyproj+shapely")
    for key in ("VmRSS", "VmHWM", "VmSize"):
        print(f"{key:8} gatewayd {ours[key]:>8,}   numpy+pyproj+shapely {peer[key]:>8,}"
              f"   ratio {peer[key] / ours[key]:.2f}x")
    table.rows.append({"case": "worker memory kB", "ours": ours, "peer": peer})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = ap.parse_args()
    repeat = 3 if args.quick else 7
    table = Table("native core")
    bench_transform(table, 100_000 if args.quick else 1_000_000, repeat)
    bench_validity(table, 2_000 if args.quick else 20_000, repeat)
    bench_zones(table, 100_000 if args.quick else 1_000_000, 2_000 if args.quick else 20_000,
                repeat)
    bench_memory(table)
    table.print()
    table.save("core")


if __name__ == "__main__":
    main()
