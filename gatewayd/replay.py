"""``gatewayd replay``: captured files through the real pipeline, records out.

Field engineers replay a capture to see what the daemon made of it; tests and
benchmarks replay files to drive the real decoders, queue, chunker and
workers without a broker. Each input's format is detected from its content
unless given; its records go out as JSON lines, in input order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gatewayd import geometry, ingest, processing, records
from gatewayd.config import Config
from gatewayd.errors import FormatError, GatewayError
from gatewayd.pipeline import (
    DeadItem,
    FixBatch,
    Pipeline,
    PipelineSettings,
    origin,
)
from gatewayd.workers import PoolStats, WorkerPool

logger = logging.getLogger(__name__)

FORMATS = ("auto", "nmea", "pcd", "las", "geojson")
_READ_BLOCK = 1 << 16
_HEAD = 4096
# A sentence's start: talker and type (or a proprietary tag), then a comma.
_NMEA_START = re.compile(rb"\$(?:[A-Z]{5}|P[A-Z]{3,}),")

__all__ = ["FORMATS", "ReplayOptions", "ReplaySummary", "detect_format", "replay", "zones_dir"]


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    inputs: tuple[Path, ...]
    format: str = "auto"
    source: str | None = None
    source_crs: str | None = None
    target_crs: str | None = None
    points_dir: Path | None = None
    output: IO[str] | None = None
    progress: bool = False


@dataclass(slots=True)
class ReplaySummary:
    inputs: int = 0
    sentences: int = 0
    bad_checksums: int = 0
    nmea: dict[str, int] = field(default_factory=dict)
    records: int = 0
    pipeline: dict[str, Any] = field(default_factory=dict)
    queue: dict[str, int] = field(default_factory=dict)
    workers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    decode_errors: Counter[str] = field(default_factory=Counter)

    @property
    def dead_letters(self) -> int:
        return sum(self.pipeline.get("dead_letters", {}).values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "sentences": self.sentences,
            "bad_checksums": self.bad_checksums,
            "nmea": self.nmea,
            **{k: v for k, v in self.pipeline.items()},
            "records": self.records,
            "queue": self.queue,
            "workers": self.workers,
            "seconds": round(self.seconds, 3),
        }


def detect_format(head: bytes) -> str:
    """Guesses an input's format from its first bytes; FormatError if nothing fits."""
    from gatewayd.las import looks_like_las
    from gatewayd.pcd import looks_like_pcd

    if looks_like_las(head):
        return "las"
    if looks_like_pcd(head):
        return "pcd"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n\x1e")
    if stripped[:1] in (b"{", b"["):
        return "geojson"
    if _NMEA_START.search(head):
        return "nmea"
    raise FormatError("unrecognisable input format (not NMEA, PCD, LAS or GeoJSON)")


def _inputs(paths: tuple[Path, ...]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.is_file())
        else:
            yield path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_READ_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class _Progress:
    """A one-line progress bar on stderr (a terminal): bytes read of all
    inputs, records out, time so far; redrawn at most ten times a second."""

    _WIDTH = 24

    def __init__(self, total_bytes: int, stream: IO[str] | None) -> None:
        self.total = max(1, total_bytes)
        self.stream = stream
        self.done = 0
        self.records = 0
        self.name = ""
        self._started = time.monotonic()
        self._drawn = 0.0

    def read(self, name: str, n: int) -> None:
        self.name = name
        self.done += n
        self.draw()

    def draw(self, *, final: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self._drawn < 0.1:
            return
        self._drawn = now
        share = min(1.0, self.done / self.total)
        filled = int(share * self._WIDTH)
        bar = "#" * filled + "." * (self._WIDTH - filled)
        line = (f"\r{self.name[:24]:24} {share * 100:3.0f}% [{bar}] "
                f"{_size(self.done)}/{_size(self.total)}  {self.records:,} records  "
                f"{now - self._started:5.1f} s")
        self.stream.write(line + ("\n" if final else ""))
        self.stream.flush()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


class _Replay:
    def __init__(self, config: Config, options: ReplayOptions, pipeline: Pipeline,
                 summary: ReplaySummary, pool: _PoolOnDemand, progress: _Progress) -> None:
        self.config = config
        self.options = options
        self.pipeline = pipeline
        self.summary = summary
        self.pool = pool
        self.progress = progress

    async def feed(self, path: Path) -> None:
        source = self.options.source or path.stem
        received_at = records.utc_now()
        try:
            with path.open("rb") as f:
                head = f.read(_HEAD)
            fmt = self.options.format if self.options.format != "auto" else detect_format(head)
        except OSError as exc:
            raise GatewayError(f"cannot read {path}: {exc.strerror}") from None
        self.summary.inputs += 1
        settings = self.pipeline.settings
        if fmt != "nmea" or settings.zone_lookup or settings.crs_to != processing.LONLAT:
            self.pool.start()  # workers will be needed: they start while this input decodes
        digest = _file_digest(path)
        if fmt == "nmea":
            await self._nmea(path, source, digest, received_at)
            return
        limit = self.config.pipeline.max_payload_bytes
        size = path.stat().st_size
        if size > limit:
            self.progress.read(path.name, size)
            await self._dead(source, digest, received_at, "too_large",
                             f"{path.name}: {size} bytes, over the limit of {limit}")
            return
        data = path.read_bytes()
        self.progress.read(path.name, len(data))
        if fmt == "geojson":
            await self._geojson(data, source, digest, received_at)
        else:
            await self._points(fmt, data, source, digest, received_at)

    async def _dead(self, source: str, digest: str, received_at: str, reason: str,
                    detail: str, items: tuple[int | str, ...] = (0,)) -> None:
        await self.pipeline.put(
            DeadItem(origin(source, digest, 0, received_at), reason, detail, items)
        )

    async def _nmea(self, path: Path, source: str, digest: str, received_at: str) -> None:
        from gatewayd.nmea import Fixes, NmeaDecoder

        decoder = NmeaDecoder()
        index = 0
        held: list[Fixes] = []  # decoded, short of a chunk

        async def put(fixes: Fixes, *, last: bool = False) -> None:
            # Batches of the chunk size, so that each makes one chunk.
            nonlocal index, held
            if len(fixes):
                held.append(fixes)
            size = max(1, self.pipeline.chunk_size)
            pending = Fixes.concat(held)
            cut = len(pending) if last else len(pending) - len(pending) % size
            if cut:
                await self.pipeline.put(
                    FixBatch(origin(source, digest, index, received_at), pending[:cut]))
                index += cut
            held = [pending[cut:]] if cut < len(pending) else []

        with path.open("rb") as f:
            for block in iter(lambda: f.read(_READ_BLOCK), b""):
                self.progress.read(path.name, len(block))
                await put(decoder.feed_block(block))
        await put(decoder.flush_block(), last=True)
        counts = decoder.stats().as_dict()
        for key, value in counts.items():
            self.summary.nmea[key] = self.summary.nmea.get(key, 0) + int(value)
        self.summary.sentences += int(counts.get("sentences", 0))
        self.summary.bad_checksums += int(counts.get("bad_checksum", 0))

    async def _geojson(self, data: bytes, source: str, digest: str, received_at: str) -> None:
        limits = ingest.Limits.of(self.config)
        for item in ingest.polygon_items(data, source, digest, received_at, limits):
            await self.pipeline.put(item)

    async def _points(self, fmt: str, data: bytes, source: str, digest: str,
                      received_at: str) -> None:
        limits = ingest.Limits.of(self.config)
        for item in ingest.frame_items(fmt, data, source, digest, received_at, limits,
                                       crs=self.options.source_crs,
                                       default_crs=self.config.crs.source,
                                       bbox=self.config.lidar.bbox):
            await self.pipeline.put(item)


@contextlib.contextmanager
def zones_dir(config: Config) -> Iterator[str | None]:
    """The zone file, decoded once and laid out for workers to memory-map."""
    if not config.zones.file:
        yield None
        return
    from gatewayd.geojson import decode_geojson, pack_polygons

    data = Path(config.zones.file).read_bytes()
    result = decode_geojson(data, max_bytes=len(data) + 1,
                            max_vertices=config.pipeline.max_vertices_per_polygon,
                            max_features=1_000_000)
    if result.rejected:
        logger.warning("zones: %d features of %s refused", len(result.rejected),
                       config.zones.file)
    names = [f.feature_id or str(f.properties.get("name", f.index)) for f in result.features]
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="gatewayd-zones-", dir=base) as tmp:
        processing.save_zones(Path(tmp), pack_polygons(result.features), names)
        yield tmp


async def replay(config: Config, options: ReplayOptions) -> ReplaySummary:
    crs_to = options.target_crs or config.crs.target
    geometry.check_crs(crs_to)
    if options.source_crs:
        geometry.check_crs(options.source_crs)
    summary = ReplaySummary()
    out = options.output or sys.stdout
    started = time.perf_counter()
    total = 0
    if options.progress:
        for path in _inputs(options.inputs):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
    progress = _Progress(total, sys.stderr if options.progress else None)

    async def emit(record: dict[str, Any] | records.LineRecord, tokens: tuple[object, ...]) -> None:
        out.write(records.dumps(record) + "\n")
        summary.records += 1
        progress.records += 1

    write_points = None
    if options.points_dir is not None:
        from gatewayd.pcd import encode_pcd

        options.points_dir.mkdir(parents=True, exist_ok=True)
        points_dir = options.points_dir

        async def write_points(record: dict[str, Any], frame: Any) -> None:
            await asyncio.to_thread((points_dir / f"{record['id']}.pcd").write_bytes,
                                    encode_pcd(frame))

    settings = PipelineSettings(
        crs_to=crs_to,
        queue_size=config.pipeline.queue_size,
        chunk_size=config.pipeline.chunk_size,
        voxel_size=config.lidar.voxel_size_m,
        in_flight=2 * config.pipeline.workers,
        zone_lookup=bool(config.zones.file),
    )
    with zones_dir(config) as zones:
        pool = _PoolOnDemand(WorkerPool(
            size=config.pipeline.workers,
            handler="gatewayd.processing:handle",
            init="gatewayd.processing:init",
            init_args=(processing.WorkerSettings(zones_dir=zones),),
            memory_limit_mb=config.pipeline.worker_memory_mb,
            chunk_timeout_s=config.pipeline.chunk_timeout_s,
        ))
        try:
            pipeline = Pipeline(settings, pool, emit, write_points)
            runner = asyncio.create_task(pipeline.run(), name="pipeline")
            feeder = _Replay(config, options, pipeline, summary, pool, progress)
            try:
                for path in _inputs(options.inputs):
                    await feeder.feed(path)
            finally:
                pipeline.close()
                await runner
                progress.draw(final=True)
            summary.workers = _stats_dict(pool.stats())
        finally:
            await pool.close()
    summary.pipeline = pipeline.stats.as_dict()
    q = pipeline.queue.stats()
    summary.queue = {"capacity": q.capacity, "peak": q.peak, "dropped": q.dropped}
    summary.seconds = time.perf_counter() - started
    out.flush()
    return summary


def _stats_dict(stats: Any) -> dict[str, Any]:
    return dataclasses.asdict(stats) if stats is not None else {}


class _PoolOnDemand:
    """The worker pool, started when a chunk first needs a worker: a replay
    whose chunks all run in the pipeline (fixes in lon/lat, no zones) never
    pays for starting one. A pool that fails to start fails the replay."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._starting: asyncio.Future[WorkerPool] | None = None

    def start(self) -> None:
        """Starts the workers, without waiting for them."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._pool.__aenter__())

    async def _started(self) -> WorkerPool:
        self.start()
        assert self._starting is not None
        return await asyncio.shield(self._starting)

    async def run(self, chunk_id: str, payload: object) -> object:
        return await (await self._started()).run(chunk_id, payload)

    def share(self, array: Any) -> Any:
        return self._pool.share(array)

    def release(self, handle: Any) -> None:
        self._pool.release(handle)

    def stats(self) -> PoolStats | None:
        """The pool's figures; None while it has not (or not yet) started."""
        s = self._starting
        if s is None or not s.done() or s.cancelled() or s.exception() is not None:
            return None
        return self._pool.stats()

    async def close(self) -> None:
        if self._starting is None:
            return
        try:
            await self._starting  # raises what stopped the workers from starting
        finally:
            await self._pool.close()
