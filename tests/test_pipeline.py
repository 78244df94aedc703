"""The pipeline's chunking, ordering and accounting, with processing run in
this process (the real worker pool has its own tests)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from typing import Any

import numpy as np
import pyproj
import pytest

from gatewayd import processing, records
from gatewayd.errors import WorkerError
from gatewayd.nmea import NmeaDecoder
from gatewayd.pipeline import (
    DeadItem,
    FixBatch,
    FixItem,
    FrameItem,
    Pipeline,
    PipelineSettings,
    PolygonItem,
    origin,
)


class _Held:
    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.released = False

    def array(self) -> np.ndarray:
        return self._array


class InProcessRunner:
    """Runs chunks here; can be told to fail chunks of a given task type."""

    def __init__(self, fail: type | None = None, error: WorkerError | None = None) -> None:
        self.fail = fail
        self.error = error
        self.chunks: list[Any] = []
        self.held: list[_Held] = []

    async def run(self, chunk_id: str, payload: object) -> object:
        self.chunks.append(payload)
        await asyncio.sleep(0.001 * (len(self.chunks) % 3))  # finish out of order
        if self.fail is not None and isinstance(payload, self.fail):
            assert self.error is not None
            raise self.error
        return processing.handle(payload)

    def share(self, array: np.ndarray) -> _Held:
        held = _Held(array.copy())
        self.held.append(held)
        return held

    def release(self, handle: _Held) -> None:
        handle.released = True


@dataclasses.dataclass(frozen=True)
class _Frame:
    """A minimal point frame with the interface the pipeline uses."""

    xyz: np.ndarray
    intensity: np.ndarray

    def __len__(self) -> int:
        return len(self.xyz)

    def take(self, idx: np.ndarray) -> _Frame:
        return _Frame(self.xyz[idx], self.intensity[idx])


def _fix(i: int) -> FixItem:
    return FixItem(origin("gps", "d" * 64, i, "2026-01-01T00:00:00.000Z"),
                   {"mode": 3, "time": f"2026-01-01T00:00:{i % 60:02d}.000Z",
                    "lat": 50.0 + i * 1e-4, "lon": 10.0 + i * 1e-4})


def _run(items: list[Any], runner: InProcessRunner, **settings: Any) -> list[dict]:
    out: list[dict] = []

    async def emit(record: dict, tokens: tuple = ()) -> None:
        out.append(record)
        _run.tokens.append(tokens)  # type: ignore[attr-defined]

    _run.tokens = []  # type: ignore[attr-defined]

    async def main() -> Pipeline:
        pipeline = Pipeline(PipelineSettings(**settings), runner, emit)
        task = asyncio.create_task(pipeline.run())
        for item in items:
            await pipeline.put(item)
        pipeline.close()
        await task
        return pipeline

    processing.init(processing.WorkerSettings())
    _run.pipeline = asyncio.run(main())  # type: ignore[attr-defined]
    return out


def test_fixes_are_chunked_and_come_out_in_input_order_with_their_ids():
    runner = InProcessRunner()
    out = _run([_fix(i) for i in range(300)], runner, chunk_size=64, crs_to="EPSG:32632")
    assert [r["lineage"]["input_sha256"] for r in out] == ["d" * 64] * 300
    assert [r["id"] for r in out] == [records.record_id("gps", "d" * 64, i) for i in range(300)]
    assert all(len(c.lonlat) <= 64 for c in runner.chunks)
    assert len(runner.chunks) >= 5
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    x, y = t.transform(out[7]["lon"], out[7]["lat"])
    assert out[7]["x"] == pytest.approx(x, abs=1e-3) and out[7]["y"] == pytest.approx(y, abs=1e-3)
    assert out[7]["kind"] == "gps_fix" and out[7]["crs"] == "EPSG:32632"


def test_the_chunk_size_can_change_while_running():
    runner = InProcessRunner()
    pipeline_holder: dict[str, Pipeline] = {}
    out: list[dict] = []

    async def emit(record: dict, tokens: tuple = ()) -> None:
        out.append(record)

    async def main() -> None:
        pipeline = Pipeline(PipelineSettings(chunk_size=100), runner, emit)
        pipeline_holder["p"] = pipeline
        task = asyncio.create_task(pipeline.run())
        for i in range(200):
            await pipeline.put(_fix(i))
        await asyncio.sleep(0.1)
        pipeline.chunk_size = 16
        for i in range(200, 264):
            await pipeline.put(_fix(i))
        pipeline.close()
        await task

    processing.init(processing.WorkerSettings())
    asyncio.run(main())
    assert len(out) == 264
    sizes = [len(c.lonlat) for c in runner.chunks]
    assert max(sizes[:2]) == 100
    assert max(sizes[-4:]) <= 16


def test_the_pipeline_is_idle_only_once_every_item_taken_has_its_records_out():
    # The daemon's watchdog pings while the pipeline is idle: items taken off
    # the queue, in a chunk or waiting for one, are work too.
    runner = InProcessRunner()
    out: list[dict] = []
    release = asyncio.Event()
    seen: dict[str, Any] = {}

    async def emit(record: dict, tokens: tuple = ()) -> None:
        await release.wait()  # records cannot go out: the pipeline is wedged
        out.append(record)

    async def main() -> None:
        pipeline = Pipeline(PipelineSettings(chunk_size=4, in_flight=1, crs_to="EPSG:32632"),
                            runner, emit)
        seen["before"] = pipeline.idle
        task = asyncio.create_task(pipeline.run())
        for i in range(7):  # a chunk that cannot emit, and one waiting for its slot
            await pipeline.put(_fix(i))
        for _ in range(100):
            await asyncio.sleep(0.01)
        seen["queued"] = len(pipeline.queue)
        seen["wedged"] = pipeline.idle
        release.set()
        for _ in range(200):
            if len(out) == 7:
                break
            await asyncio.sleep(0.01)
        seen["after"] = pipeline.idle
        pipeline.close()
        await task

    processing.init(processing.WorkerSettings())
    asyncio.run(main())
    assert seen["before"] is True
    assert seen["queued"] == 0  # all taken off the queue, and held
    assert seen["wedged"] is False
    assert len(out) == 7 and seen["after"] is True


@pytest.mark.parametrize("in_flight", [1, 2])
def test_unfinished_gives_every_item_without_its_records_out_in_order_once(in_flight):
    # A stop whose grace is over: the first chunk's records are out, the
    # second chunk hangs in its worker; those after it are done but wait for
    # it (a second slot), or wait for a slot (one), or are queued.
    class Runner(InProcessRunner):
        async def run(self, chunk_id: str, payload: object) -> object:
            self.chunks.append(payload)
            if len(self.chunks) == 2:
                await asyncio.Event().wait()  # hung
            return processing.handle(payload)

    runner = Runner()
    out: list[dict] = []
    got: dict[str, Any] = {}

    async def emit(record: dict, tokens: tuple = ()) -> None:
        out.append(record)

    async def main() -> None:
        pipeline = Pipeline(PipelineSettings(chunk_size=3, in_flight=in_flight, queue_size=50,
                                             crs_to="EPSG:32632"), runner, emit)
        task = asyncio.create_task(pipeline.run())
        for i in range(20):
            await pipeline.put(_fix(i))
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pipeline.abandon()
        got["chunks"] = len(runner.chunks)
        got["unfinished"] = pipeline.unfinished()
        got["queued"] = len(pipeline.queue)

    processing.init(processing.WorkerSettings())
    asyncio.run(main())
    assert got["chunks"] == 2 if in_flight == 1 else got["chunks"] >= 3
    n = len(out)  # the first chunk's
    assert n >= 1 and [r["id"] for r in out] == \
        [records.record_id("gps", "d" * 64, i) for i in range(n)]
    # Every other item once, in order: none lost, none twice.
    assert [item.origin.index for item in got["unfinished"]] == list(range(n, 20))
    assert got["queued"] == 0  # taken


def test_a_put_given_up_while_the_queue_is_full_holds_back_no_later_record():
    runner = InProcessRunner()
    out: list[dict] = []

    async def emit(record: dict, tokens: tuple = ()) -> None:
        out.append(record)

    async def main() -> None:
        pipeline = Pipeline(PipelineSettings(chunk_size=2, queue_size=2), runner, emit)
        await pipeline.put(_fix(0))
        await pipeline.put(_fix(1))  # full
        waiting = asyncio.create_task(pipeline.put(_fix(2)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        waiting.cancel()  # an intake stopped while it waited for room
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        task = asyncio.create_task(pipeline.run())
        for i in range(3, 6):
            await pipeline.put(_fix(i))
        pipeline.close()
        await asyncio.wait_for(task, 10)

    processing.init(processing.WorkerSettings())
    asyncio.run(main())
    want = [records.record_id("gps", "d" * 64, i) for i in (0, 1, 3, 4, 5)]
    assert [r["id"] for r in out] == want


def test_offer_many_queues_what_fits_in_order_and_leaves_the_rest():
    runner = InProcessRunner()
    out: list[dict] = []

    async def emit(record: dict, tokens: tuple = ()) -> None:
        out.append(record)

    async def main() -> None:
        pipeline = Pipeline(PipelineSettings(chunk_size=8, queue_size=10, crs_to="EPSG:32632"),
                            runner, emit)
        ring = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0))
        polygon = PolygonItem(origin("sensors", "e" * 64, 0, "t"), "f0", ((ring,),), False)
        items = collections.deque([_fix(i) for i in range(4)] + [polygon] +
                                  [_fix(i) for i in range(4, 30)])
        assert pipeline.offer_many(items) == 10  # the queue's bound, a polygon among them
        assert pipeline.queue.stats().depth == 10 and len(items) == 21
        assert pipeline.offer_many(items) == 0
        task = asyncio.create_task(pipeline.run())
        while items:
            await asyncio.sleep(0)
            pipeline.offer_many(items)
        pipeline.close()
        await task

    processing.init(processing.WorkerSettings())
    asyncio.run(main())
    fixes = [r for r in out if r["kind"] == "gps_fix"]
    assert [r["id"] for r in fixes] == [records.record_id("gps", "d" * 64, i) for i in range(30)]
    assert [r["kind"] for r in out[3:6]] == ["gps_fix", "polygon", "gps_fix"]
    assert all(len(c.lonlat) <= 8 for c in runner.chunks if hasattr(c, "lonlat"))


def test_a_failed_chunk_becomes_one_dead_letter_naming_every_item():
    from gatewayd.processing import FixTask

    error = WorkerError("chunk over its time", reason="timeout")
    out = _run([_fix(i) for i in range(10)], InProcessRunner(FixTask, error), chunk_size=128)
    assert len(out) == 1
    dead = out[0]
    assert dead["kind"] == "dead_letter" and dead["reason"] == "timeout"
    assert dead["items"] == [records.record_id("gps", "d" * 64, i) for i in range(10)]
    assert _run.pipeline.stats.dead_letters["timeout"] == 1  # type: ignore[attr-defined]


def test_decoder_dead_letters_keep_their_place_between_results():
    items = [_fix(0), DeadItem(origin("gps", "d" * 64, 1, "t"), "bad_input", "garbage", (1,)),
             _fix(2)]
    out = _run(items, InProcessRunner())
    assert [r["kind"] for r in out] == ["gps_fix", "dead_letter", "gps_fix"]


def test_polygons_flow_through_as_records():
    bow = np.array([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)], float) * 1e-3
    sq = np.array([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)], float) * 1e-3
    items = [PolygonItem(origin("sensors", "e" * 64, i, "t"), f"f{i}", ((ring,),), False)
             for i, ring in enumerate([bow, sq])]
    out = _run(items, InProcessRunner())
    assert [r["valid"] for r in out] == [False, True]
    assert out[0]["reason"].startswith("Self-intersection")
    assert out[0]["repaired"] and out[0]["geometry"]["type"] == "MultiPolygon"
    assert out[1]["area_m2"] == pytest.approx(12_300, rel=0.05)


def test_a_frame_is_split_into_blocks_and_its_kept_points_gathered_in_order():
    t = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    x0, y0 = t.transform(10.0, 50.0)
    rng = np.random.default_rng(1)
    xyz = np.column_stack([rng.uniform(0, 50, 3000) + x0, rng.uniform(0, 50, 3000) + y0,
                           rng.uniform(0, 5, 3000)])
    frame = _Frame(xyz, np.arange(3000))
    written: list[Any] = []
    out: list[dict] = []
    runner = InProcessRunner()

    async def emit(record: dict, tokens: tuple = ()) -> None:
        out.append(record)

    async def write(record_id: str, kept: Any) -> None:
        written.append(kept)

    async def main() -> None:
        pipeline = Pipeline(PipelineSettings(chunk_size=4, block_points=256, voxel_size=0.0),
                            runner, emit, write)
        task = asyncio.create_task(pipeline.run())
        await pipeline.put(FrameItem(origin("mast", "f" * 64, 0, "t"), frame, "EPSG:32632",
                                     3000))
        pipeline.close()
        await task

    processing.init(processing.WorkerSettings())
    asyncio.run(main())
    blocks = [c for c in runner.chunks if isinstance(c, processing.BlockTask)]
    assert len(blocks) == 3  # 3000 points in blocks of 4 x 256
    assert out[0]["points_in"] == out[0]["points_out"] == 3000
    assert all(h.released for h in runner.held)
    back = pyproj.Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    expected = np.column_stack(back.transform(*xyz.T))
    np.testing.assert_allclose(written[0].xyz, expected, atol=1e-9)
    np.testing.assert_array_equal(written[0].intensity, np.arange(3000))
    assert out[0]["footprint"]["type"] == "Polygon"


def _nmea(cycles: int) -> bytes:
    from functools import reduce

    def s(body: str) -> bytes:
        return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}\r\n".encode()

    return b"".join(
        s(f"GNRMC,12{i // 60:02d}{i % 60:02d}.00,A,4846.8{i:04d},N,00910.8,E,1.5,45.0,031126,,,A")
        + s(f"GNGGA,12{i // 60:02d}{i % 60:02d}.00,4846.8{i:04d},N,00910.8,E,"
            f"{1 + i % 3},12,0.8,250.5,M,47.9,M,,")
        + s("GNGSA,A,3,01,02,03,04,,,,,,,,,1.5,0.8,1.2,1")
        for i in range(cycles))


# gpsd's reporting: before it knows which sentence ends a cycle it reports the
# first cycle's RMC, GGA and GSA each; then one fix a cycle, at its GGA.
def _fixes(cycles: int) -> int:
    return cycles + 2


def _batch(data: bytes, tokens: tuple = (), source: str = "gps") -> FixBatch:
    d = NmeaDecoder()
    fixes = type(d.feed_block(b"")).concat([d.feed_block(data), d.flush_block()])
    return FixBatch(origin(source, "d" * 64, 0, "2026-01-01T00:00:00.000Z", tokens), fixes)


def test_a_block_of_fixes_makes_the_records_single_fixes_make():
    batch = _batch(_nmea(300), tokens=("ack",))
    tpvs = batch.fixes.tpvs()
    singles = [FixItem(origin("gps", "d" * 64, i, "2026-01-01T00:00:00.000Z"), tpv)
               for i, tpv in enumerate(tpvs)]
    for crs_to in ("EPSG:4326", "EPSG:32632"):
        runner = InProcessRunner()
        out = _run([batch], runner, chunk_size=64, crs_to=crs_to)
        assert all(len(c.lonlat) <= 64 for c in runner.chunks) and len(runner.chunks) == 5
        assert _run.tokens == [()] * (_fixes(300) - 1) + [("ack",)]  # type: ignore[attr-defined]
        expected = _run(singles, InProcessRunner(), chunk_size=64, crs_to=crs_to)
        out, expected = ([{k: v for k, v in r.items() if k != "processed_at"} for r in records_]
                         for records_ in (out, expected))
        assert out == expected and len(out) == _fixes(300)
        assert [r["id"] for r in out] == [records.record_id("gps", "d" * 64, i)
                                          for i in range(_fixes(300))]
        assert [list(r) for r in out] == [list(r) for r in expected]  # the same field order


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32632"])
def test_fix_records_as_lines_are_the_records_lines(crs):
    import json

    from gatewayd.gpsjson import gps_json_fix
    from gatewayd.ingest import GpsStream

    # What the daemon publishes (lines only, no dict made) is what replay
    # writes of the same fixes: NMEA's, TPVs read in C and by Python's json.
    stream = GpsStream("gps")
    items = stream.nmea(_nmea(12), "t")[0]
    for k, doc in enumerate([b'{"class":"TPV","mode":3,"lat":48.1,"lon":11.5,"speed":1.25}',
                             b'{"class":"TPV","lat":1e-7,"lon":-0.0,"track":"x"}',
                             b'{"_type":"location","lat":48,"lon":11,"tst":1700000000}']):
        tpv, members = gps_json_fix(doc)
        items += stream.tpv(tpv, "t", None, f"{k:064x}", members)
    items.append(GpsStream("gps").tpv({"class": "TPV", "mode": 1}, "t")[0])  # no position
    plain = _run(items, InProcessRunner(), crs_to=crs)
    lines = _run(items, InProcessRunner(), crs_to=crs, lines=True)
    assert len(plain) == len(lines) == len(items)
    for rec, line in zip(plain, lines):
        assert isinstance(line, records.LineRecord) and type(rec) is records.Record
        assert records.dumps(line) == line.line
        # The same but for the time each run processed its chunk at.
        when = {"processed_at": rec["processed_at"]}
        fields = {**line.fields(), **when}
        assert fields == json.loads(json.dumps(rec)) == rec and list(fields) == list(rec)
        assert json.dumps(fields, separators=(",", ":")) == records.dumps(rec)
        assert (line.kind, line.id, line.source) == (rec["kind"], rec["id"], rec["source"])


def test_a_live_streams_fixes_make_the_records_a_block_makes_and_are_named_by_content():
    import json

    from gatewayd.ingest import GpsStream

    data = _nmea(30)
    # A serial port's bytes come in pieces that cut sentences anywhere.
    stream = GpsStream("gps")
    items = [i for k in range(0, len(data), 97) for i in stream.nmea(data[k:k + 97], "t")[0]]
    items += stream.flush("t")[0]
    assert len(items) == _fixes(30) and all(i.members is not None for i in items)
    block = _batch(data).fixes
    assert [i.tpv for i in items] == block.tpvs()
    out = _run(items, InProcessRunner())
    for rec, tpv in zip(out, block.tpvs()):
        assert records.dumps(rec) == json.dumps(rec, separators=(",", ":"), allow_nan=False)
        assert {k: rec[k] for k in tpv if k != "class"} == {k: tpv[k] for k in tpv
                                                           if k != "class"}
        assert "class" not in rec
    # The same content names a fix the same way, from another stream in
    # other pieces; other content, another way.
    again = GpsStream("gps").nmea(data, "t")[0]
    assert [i.origin.input_sha256 for i in again] == \
        [i.origin.input_sha256 for i in items[:len(again)]]
    assert len({i.origin.input_sha256 for i in items}) == len(items)


def test_fixes_in_lon_lat_without_zones_need_no_worker():
    runner = InProcessRunner()
    out = _run([_batch(_nmea(50))], runner, zone_lookup=False)
    assert runner.chunks == [] and len(out) == _fixes(50)
    assert out[0]["x"] == out[0]["lon"] and out[0]["zones"] == []
    assert _run.pipeline.stats.fixes == _fixes(50)  # type: ignore[attr-defined]


def test_a_failed_chunk_of_a_block_names_every_fix_in_its_dead_letter():
    from gatewayd.processing import FixTask

    error = WorkerError("chunk over its time", reason="timeout")
    out = _run([_batch(_nmea(40))], InProcessRunner(FixTask, error), chunk_size=16)
    assert [r["kind"] for r in out] == ["dead_letter"] * 3
    assert [i for r in out for i in r["items"]] == [records.record_id("gps", "d" * 64, i)
                                                     for i in range(_fixes(40))]


def test_records_are_written_as_json_dumps_writes_them():
    import json

    # A source to escape, and a last fix without height (its GGA fails its checksum).
    batch = _batch(_nmea(40) + _nmea(1).replace(b"GNGGA", b"GNXXX"), source='gps "7" é')
    out = [r for crs in ("EPSG:4326", "EPSG:32632")
           for r in _run([batch], InProcessRunner(), crs_to=crs)]
    out += _run([_fix(i) for i in range(3)], InProcessRunner())
    # Single fixes (TPV messages) too: a source to escape, a fix without a
    # position, one with every TPV number, in lon/lat and projected.
    odd = [FixItem(origin('gps "7" é\t', "c" * 64, 0, "2026-01-01T00:00:00.000Z"),
                   {"mode": 1, "time": "2026-01-01T00:00:00.000Z"}),
           FixItem(origin("gps/ø", "b" * 64, 1, "2026-01-01T00:00:00.5Z"),
                   {"class": "TPV", "mode": 3, "lat": -33.5, "lon": 151.25, "altMSL": 12.0,
                    "altHAE": 40.125, "speed": 0.0, "track": 359.99, "climb": -0.1,
                    "magvar": 1e-7, "eph": 1e16, "epx": 3.0, "epy": 4.0, "epv": 5.0}),
           # "class" not first, and "class" alone: it is never a member of the record.
           FixItem(origin("gps", "a" * 64, 2, "t"),
                   {"mode": 2, "class": "TPV", "lat": 1.5, "lon": 2.5}),
           FixItem(origin("gps", "9" * 64, 3, "t"), {"class": "TPV"})]
    out += [r for crs in ("EPSG:4326", "EPSG:32756")
            for r in _run(odd, InProcessRunner(), crs_to=crs)]
    bow = np.array([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)], float) * 1e-3 + 0.1
    sq = np.array([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)], float) * 1e-3 + 0.1
    out += _run([PolygonItem(origin('sensors "4"', "e" * 64, i, "t"), f'f"{i}"', ((ring,),),
                             False) for i, ring in enumerate([bow, sq])], InProcessRunner())
    out += [{"kind": "x", "nested": {"a": [1, 2.5, None, True, "é\n"]}}]
    assert len({len(r) for r in out}) > 2  # records of several shapes
    assert not any("class" in r for r in out)

    def text(value):
        assert isinstance(value, records.JsonText)
        return value.value()

    for rec in out:
        if rec["kind"] == "polygon":
            # The geometry goes in as GEOS wrote it: the same JSON value,
            # though GEOS may write a number with other digits than Python.
            line = json.dumps(rec, separators=(",", ":"), allow_nan=False, default=text)
            assert json.loads(records.dumps(rec)) == json.loads(line)
            assert rec["geometry"]["type"] in ("Polygon", "MultiPolygon")
        else:
            assert records.dumps(rec) == json.dumps(rec, separators=(",", ":"), allow_nan=False)
    assert json.loads(records.dumps(dict(out[-3]))) == json.loads(records.dumps(out[-3]))
    with pytest.raises(ValueError):
        records.dumps({"x": float("nan")})


def test_a_record_made_with_its_json_line_cannot_be_changed_only_copied():
    rec = _run([_batch(_nmea(2))], InProcessRunner())[0]
    assert isinstance(rec, records.Record)
    with pytest.raises(TypeError):
        rec["x"] = 1.0
    with pytest.raises(TypeError):
        rec.pop("zones")
    copy = dict(rec)
    copy["x"] = 1.0
    assert '"x":1.0' in records.dumps(copy) and records.dumps(rec) == rec.line


def test_utc_now_is_datetimes_utc_time_to_the_millisecond():
    from datetime import UTC, datetime

    def oracle() -> str:  # ISO 8601, milliseconds cut, as datetime writes it
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    import time

    seconds = set()
    deadline = time.monotonic() + 1.1  # across many milliseconds, and a second
    while time.monotonic() < deadline:
        before, now, after = oracle(), records.utc_now(), oracle()
        seconds.add(now[:19])
        assert before <= now <= after, (before, now, after)
        assert len(now) == 24 and now.endswith("Z")
    assert len(seconds) >= 2
