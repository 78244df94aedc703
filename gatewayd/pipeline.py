"""The pipeline: bounded queue → chunker → worker pool → records, in order.

Sources (replay's files, the daemon's serial ports and MQTT) decode their
input into items and ``put`` them; the pipeline cuts items into chunks of the
current chunk size (live-adjustable, the thermal controller drives it), runs
each chunk on a worker and turns the results into records, emitted in the
order the items were put. A chunk that fails (timeout, a dead worker, memory)
becomes a dead letter naming its items; nothing is dropped silently.

Fixes come one per item (``FixItem``) or a decoded block at a time
(``FixBatch``, weighing its number of fixes). A chunk of fixes that has no
work for a worker (lon/lat out, and no zone index in the workers) is made
into records here: a worker round trip would cost more than the work.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import itertools
import json.encoder
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from gatewayd import geometry, records
from gatewayd.channel import Channel, ChannelClosed
from gatewayd.errors import GatewayError
from gatewayd.nmea import Fixes
from gatewayd.processing import (
    LONLAT,
    BlockResult,
    BlockTask,
    FixResult,
    FixTask,
    MergeResult,
    MergeTask,
    PolygonOutcome,
    PolygonTask,
    voxel_grid,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DeadItem",
    "FixBatch",
    "FixItem",
    "FrameItem",
    "Pipeline",
    "PipelineSettings",
    "PolygonItem",
]

Record = dict[str, Any]


class _Origin(NamedTuple):
    """Where an item came from. A tuple: one is made for every fix, and a
    tuple is made in half the time of a frozen dataclass."""

    source: str
    input_sha256: str
    index: int  # type: ignore[assignment]  # the item's, not tuple.index
    received_at: str
    # Opaque to the pipeline: handed back with the item's records, so that an
    # MQTT input is acknowledged only once every record made from it is out.
    tokens: tuple[object, ...] = ()


class FixItem(NamedTuple):
    """One fix (a tuple, as ``_Origin``: one is made for every fix)."""

    origin: _Origin
    tpv: dict[str, Any]  # gpsd TPV fields as the decoder gave them
    # The same but "class" as JSON members, as ``records.dumps`` writes them,
    # where the decoder wrote them already (NMEA's, and a plain TPV's).
    members: str | None = None


@dataclass(frozen=True, slots=True)
class FixBatch:
    """A block's fixes, in columns. Fix k is item ``origin.index + k`` of its
    input; the origin's tokens ride on the last fix's record."""

    origin: _Origin
    fixes: Fixes

    def __len__(self) -> int:
        return len(self.fixes)

    def split(self, size: int) -> list[FixBatch]:
        """Pieces of at most ``size`` fixes; the tokens go with the last."""
        o, n = self.origin, len(self.fixes)
        return [
            FixBatch(_Origin(o.source, o.input_sha256, o.index + start, o.received_at,
                             o.tokens if start + size >= n else ()),
                     self.fixes[start:start + size])
            for start in range(0, n, size)
        ]

    def item_ids(self) -> list[str]:
        o = self.origin
        return records.record_ids(o.source, o.input_sha256,
                                  range(o.index, o.index + len(self.fixes)))


@dataclass(frozen=True, slots=True)
class PolygonItem:
    origin: _Origin
    feature_id: str | None
    parts: tuple[tuple[np.ndarray, ...], ...]
    multi: bool


@dataclass(frozen=True, slots=True)
class FrameItem:
    origin: _Origin
    frame: Any  # gatewayd.pointcloud.PointFrame
    crs_from: str
    points_in: int  # before the pre-filter


@dataclass(frozen=True, slots=True)
class DeadItem:
    """A dead letter found before the pipeline (a decoder's), kept in order."""

    origin: _Origin
    reason: str
    detail: str
    items: tuple[int | str, ...]


Item = FixItem | FixBatch | PolygonItem | FrameItem | DeadItem


def origin(source: str, input_sha256: str, index: int, received_at: str,
           tokens: tuple[object, ...] = ()) -> _Origin:
    return _new_origin((source, input_sha256, index, received_at, tokens))


# _Origin(...) without the Python frame of a named tuple's __new__.
_new_origin = functools.partial(tuple.__new__, _Origin)


class ChunkRunner(Protocol):
    """The worker pool, as the pipeline uses it."""

    async def run(self, chunk_id: str, payload: object) -> object: ...

    def share(self, array: np.ndarray) -> Any: ...

    def release(self, handle: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    crs_to: str = "EPSG:4326"
    queue_size: int = 500
    chunk_size: int = 128
    block_points: int = 256  # a LiDAR item: chunks of frames count blocks of points
    voxel_size: float = 0.1
    linger_s: float = 0.02  # how long a partial chunk waits for company
    in_flight: int = 4  # chunks dispatched at once (twice the workers)
    points_dir: str | None = None
    # Whether workers hold a zone index: then fixes need a worker even in lon/lat.
    zone_lookup: bool = True
    # Fix records as their lines only (records.LineRecord), for an emitter that
    # sends them and reads nothing else of them: no dict is made.
    lines: bool = False


@dataclass(slots=True)
class PipelineStats:
    fixes: int = 0
    frames: int = 0
    points_in: int = 0
    points_out: int = 0
    points_failed: int = 0
    polygons: int = 0
    invalid_polygons: int = 0
    repaired_polygons: int = 0
    chunks: int = 0
    dead_letters: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fixes": self.fixes, "frames": self.frames, "points_in": self.points_in,
            "points_out": self.points_out, "points_failed": self.points_failed,
            "polygons": self.polygons, "invalid_polygons": self.invalid_polygons,
            "repaired_polygons": self.repaired_polygons, "chunks": self.chunks,
            "dead_letters": dict(self.dead_letters),
        }


# Each record goes out with the tokens of the items it was made from.
Emit = Callable[[Record | records.LineRecord, tuple[object, ...]], Awaitable[None]]
Output = tuple[Record | records.LineRecord, tuple[object, ...]]
# A chunk's records at once, in order (the daemon publishes them together).
EmitMany = Callable[[list[Output]], Awaitable[None]]
WritePoints = Callable[[Record, Any], Awaitable[None]]


class Pipeline:
    def __init__(self, settings: PipelineSettings, runner: ChunkRunner, emit: Emit,
                 write_points: WritePoints | None = None, *,
                 emit_many: EmitMany | None = None) -> None:
        self.settings = settings
        self.chunk_size = settings.chunk_size
        self.stats = PipelineStats()
        self.queue: Channel[tuple[int, Item]] = Channel(settings.queue_size, name="pipeline")
        self._runner = runner
        self._emit = emit
        self._emit_many = emit_many  # if given, used instead of emit
        self._write_points = write_points
        self._seq = itertools.count()
        self._chunk_ids = itertools.count()
        self._slots = asyncio.Semaphore(settings.in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        # Chunks done, by their first item: the item after their last, and
        # their records (a chunk's items are consecutive in the queue).
        self._done: dict[int, tuple[int, list[Output]]] = {}
        self._next_emit = 0
        self._held = 0  # items taken off the queue whose records are not out yet
        # Those items, for unfinished(): by their chunk's first item, chunks
        # given out and not yet emitted; the chunk being filled, what was
        # taken off the queue for it, and the item in hand.
        self._chunks: dict[int, list[tuple[int, Item]]] = {}
        self._batch: list[tuple[int, Item]] = []
        self._taken: collections.deque[tuple[int, Item]] = collections.deque()
        self._entry: tuple[int, Item] | None = None
        self._refusals: dict[tuple[str, str], tuple[float, int]] = {}  # last line, held since

    # ---- intake ----

    def weight(self, item: Item) -> int:
        if isinstance(item, FrameItem):
            return max(1, -(-len(item.frame) // self.settings.block_points))
        if isinstance(item, FixBatch):
            return max(1, len(item))
        return 1

    async def put(self, item: Item) -> None:
        """Queues an item; waits while the queue is full (backpressure). A
        batch of fixes over the chunk size goes in as several."""
        if isinstance(item, FixBatch):
            if not len(item):
                return
            if len(item) > max(1, self.chunk_size):
                for piece in item.split(max(1, self.chunk_size)):
                    await self._send(piece)
                return
        await self._send(item)

    async def _send(self, item: Item) -> None:
        # An item takes its place in the records' order once it is in the
        # queue: a put given up while it waits (cancelled) leaves no place that
        # nothing fills, which would hold back every record after it.
        weight = self.weight(item)
        await self.queue.wait_room(weight)
        self.queue.send_nowait((next(self._seq), item), weight)

    def offer(self, item: Item) -> bool:
        """Queues an item if the queue has room for it now; False if not, and
        nothing is queued (a batch of fixes over the chunk size: ``put``)."""
        if isinstance(item, FixBatch):
            if not len(item):
                return True
            if len(item) > max(1, self.chunk_size):
                return False
        weight = self.weight(item)
        if not self.queue.has_room(weight):
            return False
        self.queue.send_nowait((next(self._seq), item), weight)
        return True

    def offer_many(self, items: collections.deque[Item]) -> int:
        """``offer`` of the items at the front of ``items``, in order, while
        the queue has room for them: those queued are taken off ``items``.
        Returns how many were queued."""
        queue, seq = self.queue, self._seq
        moved = 0
        while items:
            room = queue.room()
            run: list[tuple[int, Item]] = []
            while items and len(run) < room and type(items[0]) is FixItem:  # weight one
                run.append((next(seq), items.popleft()))
            if run:
                queue.send_many_nowait(run)
                moved += len(run)
                continue
            if not self.offer(items[0]):
                break
            items.popleft()
            moved += 1
        return moved

    @property
    def holding(self) -> int:
        """Items queued, or taken off the queue with their records not out yet."""
        return self._held + len(self.queue)

    @property
    def idle(self) -> bool:
        """Whether the pipeline holds no work."""
        return not self.holding

    def close(self) -> None:
        self.queue.close()

    def unfinished(self) -> list[Item]:
        """The items whose records are not out, in order: those of chunks given
        out (in flight, or done and waiting for an earlier one), those taken
        off the queue for the next chunk, and those still queued, which it
        takes. For a stop whose grace is over, once ``run`` is cancelled and
        the chunks abandoned: what is not at a broker can be kept."""
        held: dict[int, Item] = {}
        for chunk in self._chunks.values():
            held.update(chunk)
        held.update(self._batch)
        held.update(self._taken)
        if self._entry is not None:
            held[self._entry[0]] = self._entry[1]
        held.update(self.queue.receive_many_nowait(len(self.queue)))
        return [held[seq] for seq in sorted(held)]

    async def abandon(self) -> None:
        """Cancels the chunks in flight (for a stop whose grace is over): none
        of their records or dead letters goes out, so nothing acknowledges
        their inputs. ``run`` is the caller's to cancel."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- chunking and dispatch ----

    async def run(self) -> None:
        """Runs until the queue is closed and every chunk's records are out."""
        batch = self._batch
        filled = 0  # the batch's fixes or polygons
        taken = self._taken  # off the queue
        while True:
            try:
                # What is queued already is taken without a wait (and without
                # the task that wait_for makes each time), a chunk's worth at once.
                if not taken:
                    got = self.queue.receive_many_nowait(max(1, max(1, self.chunk_size) - filled))
                    self._held += len(got)
                    taken.extend(got)
                entry = self._entry = taken.popleft() if taken else None
                if entry is None and batch and not self._tasks:
                    # Nothing in flight: a partial chunk goes now, so that a lone
                    # fix is not held back; under load, chunks fill while others run.
                    raise TimeoutError
                if entry is None:
                    entry = await (asyncio.wait_for(self.queue.receive(), self.settings.linger_s)
                                   if batch else self.queue.receive())
                    self._entry = entry
                    self._held += 1
            except TimeoutError:
                await self._dispatch(batch)
                batch = self._batch = []
                filled = 0
                continue
            except ChannelClosed:
                break
            item = entry[1]
            size = len(item) if isinstance(item, FixBatch) else 1
            if batch and (type(batch[0][1]) is not type(item) or
                          filled + size > max(1, self.chunk_size)):
                await self._dispatch(batch)
                batch = self._batch = []
                filled = 0
            if isinstance(item, FrameItem | DeadItem):
                await self._dispatch([entry])
                self._entry = None
                continue
            batch.append(entry)
            self._entry = None
            filled += size
            if filled >= max(1, self.chunk_size):
                await self._dispatch(batch)
                batch = self._batch = []
                filled = 0
        if batch:
            await self._dispatch(batch)
            self._batch = []
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def _dispatch(self, batch: list[tuple[int, Item]]) -> None:
        self._chunks[batch[0][0]] = batch
        await self._slots.acquire()
        task = asyncio.create_task(self._run_chunk(batch), name=f"chunk-{batch[0][0]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_chunk(self, batch: list[tuple[int, Item]]) -> None:
        try:
            first = batch[0][1]
            try:
                if isinstance(first, FixBatch):
                    out = await self._fix_batches(batch)
                elif isinstance(first, FixItem):
                    out = await self._fixes(batch)
                elif isinstance(first, PolygonItem):
                    out = await self._polygons(batch)
                elif isinstance(first, FrameItem):
                    out = await self._frame(first)
                else:
                    assert isinstance(first, DeadItem)
                    o = first.origin
                    self._log_refused(o.source, first.reason, first.detail)
                    out = [(self._dead(o, first.reason, first.detail, first.items), o.tokens)]
            except GatewayError as exc:
                out = self._chunk_failed(batch, exc.reason, str(exc))
            except Exception as exc:  # a bug must cost its chunk, not the pipeline
                logger.exception("chunk failed unexpectedly")
                out = self._chunk_failed(batch, "error", f"{type(exc).__name__}: {exc}")
            self.stats.chunks += 1
            # Records of a chunk are released together, at its first item's place.
            head, tail = batch[0][0], batch[-1][0]
            if tail - head == len(batch) - 1:  # consecutive, as run() makes chunks
                self._done[head] = (tail + 1, out)
            else:
                self._done[head] = (head + 1, out)
                for seq, _ in batch[1:]:
                    self._done[seq] = (seq + 1, [])
            await self._flush()
        finally:
            self._slots.release()

    async def _flush(self) -> None:
        while self._next_emit in self._done:
            after, out = self._done.pop(self._next_emit)
            self._chunks.pop(self._next_emit, None)
            if self._emit_many is not None:
                if out:
                    await self._emit_many(out)
            else:
                for record, tokens in out:
                    await self._emit(record, tokens)
            self._held -= after - self._next_emit
            self._next_emit = after

    def _chunk_id(self) -> str:
        return f"c{next(self._chunk_ids)}"

    def _dead(self, o: _Origin, reason: str, detail: str,
              items: Sequence[int | str]) -> Record:
        self.stats.dead_letters[reason] += 1
        return records.dead_letter(reason, detail, source=o.source, input_sha256=o.input_sha256,
                                   items=items, received_at=o.received_at)

    def _log_refused(self, source: str, reason: str, detail: str) -> None:
        """One line for a refused input, findable in the journal by reason; a
        source refused again and again gets one line a minute, with a count."""
        now = time.monotonic()
        key = (source, reason)
        last, held = self._refusals.get(key, (float("-inf"), 0))
        if now - last < 60.0:
            self._refusals[key] = (last, held + 1)
            return
        self._refusals[key] = (now, 0)
        more = f" ({held} more since the last line)" if held else ""
        logger.warning("%s: input refused (%s): %s%s", source, reason, detail, more,
                       extra={"gatewayd_source": source, "gatewayd_reason": reason})

    def _chunk_failed(
        self, batch: list[tuple[int, Item]], reason: str, detail: str
    ) -> list[Output]:
        by_input: dict[tuple[str, str], list[Item]] = {}
        for _, item in batch:
            by_input.setdefault((item.origin.source, item.origin.input_sha256), []).append(item)
        out: list[Output] = []
        for group in by_input.values():
            ids = [record_id for i in group for record_id in (
                i.item_ids() if isinstance(i, FixBatch) else
                [records.record_id(i.origin.source, i.origin.input_sha256, i.origin.index)])]
            source = group[0].origin.source
            # One journal entry per failed chunk and input, findable by reason.
            logger.warning("%s: %d items dead-lettered (%s): %s", source, len(ids), reason,
                           detail, extra={"gatewayd_source": source,
                                          "gatewayd_reason": reason,
                                          "gatewayd_items": ",".join(ids)})
            tokens = tuple(t for i in group for t in i.origin.tokens)
            out.append((self._dead(group[0].origin, reason, detail, ids), tokens))
        return out

    # ---- fixes ----

    async def _fixes(self, batch: list[tuple[int, Item]]) -> list[Output]:
        items = [item for _, item in batch if isinstance(item, FixItem)]
        lonlat = np.array([[i.tpv.get("lon", np.nan), i.tpv.get("lat", np.nan)] for i in items],
                          dtype=np.float64).reshape(-1, 2)
        xy, zones = await self._place(lonlat)
        fix_records = _FixRecords(self.settings.crs_to, lines=self.settings.lines)
        record_id, make = records.record_id, fix_records.make
        out: list[Output] = []
        for item, (x, y), z in zip(items, xy, zones):
            o = item.origin
            out.append((make(o, record_id(o.source, o.input_sha256, o.index), item.tpv, x, y, z,
                             item.members), o.tokens))
        self.stats.fixes += len(out)
        return out

    async def _fix_batches(self, batch: list[tuple[int, Item]]) -> list[Output]:
        items = [item for _, item in batch if isinstance(item, FixBatch)]
        lonlat = np.concatenate([i.fixes.lonlat() for i in items])
        xy, zones = await self._place(lonlat)
        fix_records = _FixRecords(self.settings.crs_to)
        out: list[Output] = []
        start = 0
        for item in items:
            n = len(item)
            out += fix_records.batch(item, xy[start:start + n], zones[start:start + n])
            start += n
        self.stats.fixes += len(out)
        return out

    async def _place(self, lonlat: np.ndarray) -> tuple[list[list[float]], list[tuple[str, ...]]]:
        """Fix positions in the target CRS, and the zones they lie in."""
        if self.settings.crs_to == LONLAT and not self.settings.zone_lookup:
            return lonlat.tolist(), [()] * len(lonlat)
        result = await self._runner.run(self._chunk_id(), FixTask(lonlat, self.settings.crs_to))
        assert isinstance(result, FixResult)
        return np.asarray(result.xy, dtype=np.float64).tolist(), result.zones

    def _base(self, kind: str, o: _Origin, operation: str, crs_from: str = LONLAT) -> Record:
        lineage = records.Lineage(o.input_sha256, operation, crs_from, self.settings.crs_to)
        return records.base_record(kind, source=o.source, input_sha256=o.input_sha256,
                                   index=o.index, received_at=o.received_at, lineage=lineage)

    # ---- polygons ----

    async def _polygons(self, batch: list[tuple[int, Item]]) -> list[Output]:
        items = [item for _, item in batch if isinstance(item, PolygonItem)]
        arrays = geometry.pack([list(i.parts) for i in items], [i.multi for i in items])
        result = await self._runner.run(self._chunk_id(), PolygonTask(*arrays))
        assert isinstance(result, list)
        out: list[Output] = []
        for item, outcome in zip(items, result):
            assert isinstance(outcome, PolygonOutcome)
            head = self._base("polygon", item.origin, "validate_repair_area")
            head["lineage"]["crs_to"] = "EPSG:4326"
            head.update({
                "feature_id": item.feature_id,
                "valid": outcome.valid,
                "reason": outcome.reason or None,
            })
            tail = {
                "repaired": outcome.repaired,
                "area_m2": outcome.area_m2,
                "zones": list(outcome.zones),
            }
            # GEOS wrote the geometry's JSON: it goes into the line as it is,
            # neither parsed nor encoded again here.
            text = outcome.geometry
            line = (f'{records.dumps(head)[:-1]},"geometry":{text or "null"},'
                    f'{records.dumps(tail)[1:]}')
            rec = records.Record(
                {**head, "geometry": records.JsonText(text) if text else None, **tail}, line)
            self.stats.polygons += 1
            self.stats.invalid_polygons += not outcome.valid
            self.stats.repaired_polygons += outcome.repaired
            out.append((rec, item.origin.tokens))
        return out

    # ---- LiDAR frames ----

    async def _frame(self, item: FrameItem) -> list[Output]:
        frame = item.frame
        n = len(frame)
        block = max(1, self.settings.block_points * max(1, self.chunk_size))
        ranges = [(s, min(s + block, n)) for s in range(0, n, block)] or [(0, 0)]
        xyz_in = np.ascontiguousarray(frame.xyz, dtype=np.float64)
        voxel = voxel_grid(self.settings.voxel_size, item.crs_from, self.settings.crs_to, xyz_in)
        shared = self._runner.share(xyz_in)
        try:
            tasks = [
                BlockTask(shared, s, e, item.crs_from, self.settings.crs_to, voxel,
                          finish=len(ranges) == 1)
                for s, e in ranges
            ]
            # Every block is awaited before the shared points are released, even
            # when one fails: a worker may still be writing into them.
            results = await asyncio.gather(
                *(self._runner.run(self._chunk_id(), t) for t in tasks), return_exceptions=True
            )
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            blocks = [r for r in results if isinstance(r, BlockResult)]
            kept_parts = [b.kept for b in blocks]
            footprint, zones, bbox = blocks[0].footprint, blocks[0].zones, blocks[0].bbox
            keep = None
            if len(blocks) > 1:
                # A voxel two blocks kept is kept once; the box and footprint
                # are those of what is left.
                voxels = [b.voxels for b in blocks if b.voxels is not None]
                merged = await self._runner.run(self._chunk_id(), MergeTask(
                    shared, tuple((s, len(k)) for (s, _), k in zip(ranges, kept_parts)),
                    np.concatenate(voxels) if voxels else None, self.settings.crs_to))
                assert isinstance(merged, MergeResult)
                footprint, zones, bbox, keep = (merged.footprint, merged.zones,
                                                 merged.bbox, merged.keep)
            points = self._runner_array(shared)
            xyz = np.concatenate(
                [points[s:s + len(k)] for (s, _), k in zip(ranges, kept_parts)]
            ) if blocks else np.empty((0, 3))
        finally:
            self._runner.release(shared)
        kept = np.concatenate(kept_parts) if blocks else np.empty(0, np.int64)
        if keep is not None:
            kept, xyz = kept[keep], xyz[keep]
        failed = sum(b.failed for b in blocks)

        rec = self._base("lidar_frame", item.origin, "voxel_transform_footprint", item.crs_from)
        rec.update({
            "points_in": item.points_in,
            "points_out": len(kept),
            "points_failed": failed,
            "crs": self.settings.crs_to,
            "bbox": list(bbox) if bbox is not None else None,
            "footprint": footprint,
            "zones": list(zones or ()),
        })
        if self._write_points is not None:
            await self._write_points(rec, dataclasses.replace(frame.take(kept), xyz=xyz))
        self.stats.frames += 1
        self.stats.points_in += item.points_in
        self.stats.points_out += len(kept)
        self.stats.points_failed += failed
        return [(rec, item.origin.tokens)]

    def _runner_array(self, handle: Any) -> np.ndarray:
        return handle.array()  # type: ignore[no-any-return]


_json_str = json.encoder.encode_basestring_ascii
# The members of a gps_fix record that are not TPV fields.
_FIX_OWN = frozenset({"kind", "id", "source", "received_at", "processed_at", "lineage", "x", "y",
                      "crs", "zones"})
_TPV_HEAD = '{"class":"TPV",'  # a TPV's line, up to its first member after "class"
_TPV_ALONE = '{"class":"TPV"}'


def _tpv_members(tpv: dict[str, Any]) -> str:
    """A TPV's fields but "class", as JSON members."""
    # The decoders put "class" first: the members follow it in its line.
    text = records.dumps(tpv)
    if text.startswith(_TPV_HEAD):
        return text[len(_TPV_HEAD):-1]
    if text == _TPV_ALONE:
        return ""
    return records.dumps_members({k: v for k, v in tpv.items() if k != "class"})


class _FixRecords:
    """gps_fix records of one chunk: they share its time of processing."""

    def __init__(self, crs_to: str, *, lines: bool = False) -> None:
        self.crs_to = crs_to
        self.lines = lines  # make() gives records.LineRecord
        self.processed_at = records.utc_now()
        # What the records' lineages share, and the members of the line all of
        # the chunk's records share, encoded once.
        shared = records.Lineage("", "crs_from_lonlat", LONLAT, crs_to).as_dict()
        del shared["input_sha256"]
        self._lineage_rest = shared
        self._after_source = ',"processed_at":' + records.dumps_value(self.processed_at)
        self._lineage_tail = '",' + records.dumps_members(shared) + "}"
        self._crs_json = ',"crs":' + records.dumps_value(crs_to) + ',"zones":'
        self._zone_json: dict[tuple[str, ...], str] = {}
        # What comes between a fix's id and its input's digest in its line, by
        # source and time of reception: a chunk has few of each.
        self._source_json: dict[tuple[str, str], str] = {}

    def make(self, o: _Origin, record_id: str, tpv: dict[str, Any], x: float, y: float,
             zones: Sequence[str], members: str | None = None
             ) -> Record | records.LineRecord:
        """A record of a fix's TPV fields (all but "class"), made with its
        JSON line (see ``records.Record``), or as that line alone (``lines``);
        ``members``: those fields as JSON members, where they are written
        already."""
        if not _FIX_OWN.isdisjoint(tpv):  # no TPV field is one: never so far
            rec = self._head(o, record_id)
            rec.update(tpv)
            rec.pop("class", None)
            rec.update(self._tail(x, y, zones))
            return rec
        if members is None:
            members = _tpv_members(tpv)
        key = (o.source, o.received_at)
        after_id = self._source_json.get(key)
        if after_id is None:
            after_id = self._source_json[key] = \
                '","source":' + _json_str(o.source) + ',"received_at":' + \
                _json_str(o.received_at) + self._after_source + ',"lineage":{"input_sha256":"'
        # Ids and digests are hex: nothing in them to escape.
        line = self._line_tail(
            f'{{"kind":"gps_fix","id":"{record_id}{after_id}{o.input_sha256}'
            f'{self._lineage_tail}{"," if members else ""}{members}', x, y, zones)
        if self.lines:
            return records.LineRecord("gps_fix", record_id, o.source, line)
        rec = self._head(o, record_id)
        rec.update(tpv)
        rec.pop("class", None)
        return self._finish(rec, line, x, y, zones)

    def _head(self, o: _Origin, record_id: str) -> dict[str, Any]:
        lineage = {"input_sha256": o.input_sha256}
        lineage.update(self._lineage_rest)
        return {"kind": "gps_fix", "id": record_id, "source": o.source,
                "received_at": o.received_at, "processed_at": self.processed_at,
                "lineage": lineage}

    def _line_tail(self, line: str, x: float, y: float, zones: Sequence[str]) -> str:
        """A fix record's line: what ``line`` holds, then its position in the
        target CRS (where there is one), the CRS and the zones."""
        if math.isfinite(x) and math.isfinite(y):
            line += f',"x":{x!r},"y":{y!r}'
        key = tuple(zones)
        zones_text = self._zone_json.get(key)
        if zones_text is None:
            zones_text = self._zone_json[key] = records.dumps_value(list(key))
        return f"{line}{self._crs_json}{zones_text}}}"

    def _finish(self, rec: dict[str, Any], line: str, x: float, y: float,
                zones: Sequence[str]) -> Record:
        """The record, with what ``_line_tail`` wrote after ``rec``'s members,
        made with ``line``: all of it."""
        if math.isfinite(x) and math.isfinite(y):
            rec["x"] = x
            rec["y"] = y
        rec["crs"] = self.crs_to
        rec["zones"] = list(zones)
        return records.Record(rec, line)

    def _tail(self, x: float, y: float, zones: Sequence[str]) -> dict[str, Any]:
        tail: dict[str, Any] = {"x": x, "y": y} if math.isfinite(x) and math.isfinite(y) else {}
        tail["crs"] = self.crs_to
        tail["zones"] = list(zones)
        return tail

    def batch(self, item: FixBatch, xy: list[list[float]],
              zones: Sequence[Sequence[str]]) -> list[Output]:
        """A block's records, each made with its JSON line: the members all
        records of the block share are encoded once."""
        o = item.origin
        lineage = records.Lineage(o.input_sha256, "crs_from_lonlat", LONLAT,
                                  self.crs_to).as_dict()
        head: Record = {"kind": "gps_fix", "id": "", "source": o.source,
                        "received_at": o.received_at, "processed_at": self.processed_at,
                        "lineage": lineage}
        shared = records.dumps(head)
        # '{"kind":"gps_fix","id":"' + id + '",' + the members from "source" on.
        before_id = '{"kind":"gps_fix","id":"'
        after_id = '"' + shared[shared.index(',"source":'):-1] + ","
        out: list[Output] = []
        for record_id, (fields, members), (x, y), z in zip(item.item_ids(),
                                                          item.fixes.fields_json(), xy, zones):
            rec = head.copy()
            rec["id"] = record_id
            rec["lineage"] = lineage.copy()
            rec.update(fields)
            line = self._line_tail(f"{before_id}{record_id}{after_id}{members}", x, y, z)
            out.append((self._finish(rec, line, x, y, z), ()))
        if o.tokens and out:
            out[-1] = (out[-1][0], o.tokens)
        return out
