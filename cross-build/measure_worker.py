"""Virtual size and resident set of real gatewayd workers on this machine.

Runs inside the target root filesystem (under qemu-user when cross-built) with
the installed package's interpreter, and prints JSON with three workloads:

- ``idle``: a WorkerPool with the daemon's own initializer (zone index built,
  GEOS and PROJ contexts warm), its worker asked once it is ready;
- ``replay``: the bundled captures (NMEA drive, LiDAR scan, sensor polygons)
  through ``gatewayd replay``'s pipeline with zones and a projected target CRS;
- ``lidar``: LiDAR frames of 30 000 points (the benchmark's sweep), UTM to
  WGS84, through the same pipeline.

Each worker reports after every chunk, a sampler reads the workers every
0.1 s, and the peaks are kept. Every figure is read two ways:

- ``guest``: what the kernel of an ARM board would report. VmSize sums the
  worker's own /proc/self/maps, which qemu-user emulates for the guest. The
  resident set cannot come from inside (qemu-user emulates no
  /proc/self/smaps), so it is read from outside: /proc/PID/smaps of the
  emulator, counting only the mappings that back the guest's own (qemu maps
  guest memory at a fixed offset, found from a file both map). ``RssAnon`` is
  the anonymous part of it (heap, arenas, stacks).
- ``host``: /proc/PID/status read from outside, which under qemu-user is the
  emulator's own process (its translation cache and reservations included).

Run natively, both agree. qemu-user ignores setrlimit(RLIMIT_AS), so the
workers are never capped here.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import json
import os
import platform
import resource
import struct
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

import gatewayd
from gatewayd import processing
from gatewayd import replay as replay_module
from gatewayd.config import load_config
from gatewayd.pcd import encode_pcd
from gatewayd.pointcloud import from_columns
from gatewayd.replay import ReplayOptions, replay, zones_dir
from gatewayd.workers import WORKER_ENV, WorkerPool

SAMPLES = Path(gatewayd.__file__).parent / "samples"
STATUS_FIELDS = ("VmPeak", "VmSize", "VmHWM", "VmRSS")
UNCAPPED_MB = 4096
REPORTS = Path(tempfile.gettempdir())
REPORT_GLOB = "gatewayd-measure-*.maps"


# ---- in the worker ----

def _report() -> int:
    """Writes this worker's guest mappings for the sampler; returns VmSize in kB."""
    maps = Path("/proc/self/maps").read_text()
    path = REPORTS / f"gatewayd-measure-{os.getpid()}.maps"
    path.with_suffix(".tmp").write_text(maps)
    path.with_suffix(".tmp").replace(path)
    return sum(high - low for low, high, _, _ in _parse_maps(maps)) // 1024


def handle(payload: object) -> object:
    """The daemon's handler, then this worker's mappings reported."""
    result = processing.handle(payload)  # type: ignore[arg-type]
    _report()
    return result


def probe(payload: object) -> object:
    return _report()


# ---- in the measuring process ----

def _parse_maps(text: str) -> list[tuple[int, int, int, str]]:
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or "-" not in fields[0]:
            continue
        low, high = (int(x, 16) for x in fields[0].split("-"))
        out.append((low, high, int(fields[2], 16), fields[5] if len(fields) > 5 else ""))
    return out


def _smaps(pid: int) -> list[tuple[int, int, int, str, int, int]]:
    """(low, high, offset, path, Rss kB, Anonymous kB) of each mapping, as the host sees it."""
    out: list[tuple[int, int, int, str, int, int]] = []
    current: list = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            if current:
                out.append(tuple(current))  # type: ignore[arg-type]
            low, high = (int(x, 16) for x in head[0].split("-"))
            current = [low, high, int(head[2], 16), head[5] if len(head) > 5 else "", 0, 0]
        elif head and head[0] == "Rss:" and current:
            current[4] = int(head[1])
        elif head and head[0] == "Anonymous:" and current:
            current[5] = int(head[1])
    if current:
        out.append(tuple(current))  # type: ignore[arg-type]
    return out


def _guest_rss(pid: int) -> dict[str, int] | None:
    """The resident set of the guest's mappings of worker ``pid``, in kB."""
    try:
        guest = _parse_maps((REPORTS / f"gatewayd-measure-{pid}.maps").read_text())
        host = _smaps(pid)
    except (OSError, ValueError):
        return None
    # The offset between guest and host addresses: the same file at the same
    # file offset, mapped in both views.
    files = {(off, path): low for low, _, off, path in guest if path.startswith("/")}
    shifts = Counter(low - files[(off, path)] for low, _, off, path, _, _ in host
                     if (off, path) in files)
    if not shifts:
        return None
    shift = shifts.most_common(1)[0][0]
    ranges = sorted((low + shift, high + shift) for low, high, _, _ in guest)
    starts = [low for low, _ in ranges]
    rss = anon = 0.0
    for low, high, _, _, r, a in host:
        i = bisect.bisect_right(starts, low) - 1
        overlap = 0
        for g_low, g_high in ranges[max(i, 0):]:
            if g_low >= high:
                break
            overlap += max(0, min(high, g_high) - max(low, g_low))
        if overlap:
            share = overlap / (high - low)
            rss += r * share
            anon += a * share
    return {"VmRSS": round(rss), "RssAnon": round(anon)}


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def _workers(root: int) -> list[int]:
    """The pool's workers: children of the forkserver, itself a child of root.

    Workers are forked from the forkserver without an exec, so their command
    line is the forkserver's; only their place in the process tree tells.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return [pid for child in children.get(root, []) for pid in children.get(child, [])]


class _Sampler(threading.Thread):
    """Peaks over every worker of this process's pool, guest and host view."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.guest: dict[str, int] = {}
        self.host: dict[str, int] = {}
        self.workers: set[int] = set()
        self._done = threading.Event()

    def sample(self) -> None:
        for pid in _workers(os.getpid()):
            self.workers.add(pid)
            for peaks, figures in ((self.host, _status(pid)), (self.guest, self._guest(pid))):
                for key, value in figures.items():
                    peaks[key] = max(peaks.get(key, 0), value)

    @staticmethod
    def _guest(pid: int) -> dict[str, int]:
        try:
            maps = (REPORTS / f"gatewayd-measure-{pid}.maps").read_text()
        except OSError:
            return {}
        figures = {"VmSize": sum(h - lo for lo, h, _, _ in _parse_maps(maps)) // 1024}
        figures.update(_guest_rss(pid) or {})
        return figures

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            time.sleep(0.1)

    def stop(self) -> dict[str, object]:
        self._done.set()
        self.join()
        self.sample()
        return {"guest": self.guest, "host": self.host, "workers_seen": len(self.workers)}


def _clear_reports() -> None:
    for stale in REPORTS.glob(REPORT_GLOB):
        stale.unlink()


def _config():  # type: ignore[no-untyped-def]
    return load_config(None, [
        f"zones.file={SAMPLES / 'zones.geojson'}",
        f"pipeline.worker_memory_mb={UNCAPPED_MB}",
        "pipeline.workers=2",
    ], {})


async def _idle() -> dict[str, object]:
    _clear_reports()
    config = _config()
    with zones_dir(config) as zones:
        async with WorkerPool(
            size=1, handler="measure_worker:probe", init="gatewayd.processing:init",
            init_args=(processing.WorkerSettings(zones_dir=zones),),
            memory_limit_mb=UNCAPPED_MB, chunk_timeout_s=600.0,
        ) as pool:
            size = await pool.run("probe", None)
            pid = pool.stats().workers[0].pid
            return {"guest": {"VmSize": size, **(_guest_rss(pid) or {})}, "host": _status(pid)}


class _MeasuredPool(WorkerPool):
    def __init__(self, **kw: object) -> None:
        kw["handler"] = "measure_worker:handle"
        super().__init__(**kw)  # type: ignore[arg-type]


async def _replay(inputs: tuple[Path, ...], **options: object) -> dict[str, object]:
    _clear_reports()
    replay_module.WorkerPool = _MeasuredPool  # type: ignore[misc]
    sampler = _Sampler()
    sampler.start()
    started = time.perf_counter()
    summary = await replay(_config(), ReplayOptions(inputs=inputs, output=io.StringIO(),
                                                   **options))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    return {"inputs": len(inputs), "records": summary.records,
            "seconds": round(elapsed, 2), **sampler.stop()}


def _lidar_frames(folder: Path, count: int, points: int) -> tuple[Path, ...]:
    """The benchmark's sweep: rings of returns to 60 m around a sensor in UTM 32N."""
    rng = np.random.default_rng(7)
    x0, y0 = 513_000.0, 5_402_000.0  # near 9.18 E, 48.78 N
    paths = []
    for i in range(count):
        az = rng.uniform(0, 2 * np.pi, points)
        r = rng.uniform(1.0, 60.0, points)
        frame = from_columns({"x": x0 + r * np.cos(az), "y": y0 + r * np.sin(az),
                              "z": rng.normal(245.0, 1.5, points),
                              "intensity": rng.uniform(0, 1, points).astype(np.float32)}, {})
        path = folder / f"frame{i:02d}.pcd"
        path.write_bytes(encode_pcd(frame))
        paths.append(path)
    return tuple(paths)


def main() -> None:
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    captures = tuple(sorted(p for p in SAMPLES.iterdir() if p.name.startswith("capture-")))
    with tempfile.TemporaryDirectory() as tmp:
        frames = _lidar_frames(Path(tmp), 4, 30_000)
        result = {
            "machine": platform.machine(),
            "pointer_bits": struct.calcsize("P") * 8,
            "gatewayd": gatewayd.__version__,
            "env": {k: os.environ.get(k) for k in WORKER_ENV},
            "idle_kb": asyncio.run(_idle()),
            "replay_kb": asyncio.run(_replay(captures, target_crs="EPSG:32632")),
            "lidar_kb": asyncio.run(_replay(frames, source_crs="EPSG:32632",
                                            target_crs="EPSG:4326")),
        }
    _clear_reports()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
