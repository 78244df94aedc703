"""Serial backlogs: bounded in memory, spilled to a crash-safe spool past that."""

from __future__ import annotations

import asyncio
import json

import pytest

from gatewayd import records
from gatewayd.nmea import Fixes, NmeaDecoder
from gatewayd.outbox import MAGIC
from gatewayd.pipeline import FixBatch, FixItem, origin
from gatewayd.spill import SerialBacklog


def _fix_item(i: int) -> FixItem:
    return FixItem(origin("gps0", f"{i:064x}", 0, "t"),
                   {"class": "TPV", "mode": 2, "lat": 50.0 + i, "lon": 8.0})


async def _drain(backlog: SerialBacklog) -> list[FixItem]:
    """What the intake would take, in order, until nothing is left."""
    got = []
    while True:
        await backlog.refill()
        if not backlog.items:
            if backlog.stats().get("spill_pending"):
                await asyncio.sleep(0.01)  # still being written
                continue
            return got
        while backlog.items:
            got.append(backlog.items.popleft())


def _lats(items: list[FixItem]) -> list[float]:
    return [round(it.tpv["lat"] - 50.0) for it in items]


def _segments(directory):
    return sorted(directory.glob("*.seg"))


def test_fixes_kept_at_a_stop_go_first_after_it_then_the_spill_then_new_ones(tmp_path):
    # A stop whose grace ran out: fixes 0-2 were in the pipeline (older than
    # anything here), 3-6 waited in memory, 7-12 were spilled.
    def backlog() -> SerialBacklog:
        return SerialBacklog("gps0", 4, "spill", tmp_path / "spill", 1 << 20, 0.01,
                             held_dir=tmp_path / "held")

    async def spilled(b: SerialBacklog, n: int) -> None:
        while b.stats()["spilled"] < n:
            await asyncio.sleep(0.01)

    async def main() -> list[int]:
        first = backlog()
        await first.open()
        for i in range(3, 13):
            first.add(_fix_item(i))
        await spilled(first, 6)
        assert await first.keep([_fix_item(i) for i in range(3)]) == (7, 0)
        assert not first.items
        await first.close()
        # The next start takes back fixes 0-3, and stops again at once: what it
        # took back goes ahead of the rest it kept.
        second = backlog()
        await second.open()
        await second.refill()
        assert _lats(list(second.items)) == [0, 1, 2, 3]
        assert await second.keep([]) == (4, 0)  # the four it took back; 4-6 stay kept
        await second.close()
        third = backlog()
        await third.open()
        third.add(_fix_item(13))  # new: behind everything kept and spilled
        got = await _drain(third)
        assert third.stats()["dropped"] == 0
        await third.close()
        return _lats(got)

    assert asyncio.run(main()) == list(range(14))


def test_opening_with_fixes_owed_from_before_a_restart_wakes_the_intake(tmp_path):
    # Nothing else would: the receiver may stay silent after the restart.
    woken: list[str] = []

    async def main() -> None:
        for owed in ("none", "spilled", "kept"):
            b = SerialBacklog("gps0", 2, "spill", tmp_path / owed, 1 << 20, 0.01,
                              on_stored=lambda: woken.append("stored"),
                              held_dir=tmp_path / owed / "held")
            await b.open()
            if owed == "spilled":
                for i in range(4):
                    b.add(_fix_item(i))
                while b.stats()["spilled"] < 2:
                    await asyncio.sleep(0.01)
            elif owed == "kept":
                await b.keep([_fix_item(0)])
            await b.close()
            woken.clear()
            again = SerialBacklog("gps0", 2, "spill", tmp_path / owed, 1 << 20, 0.01,
                                  on_stored=lambda o=owed: woken.append(o),
                                  held_dir=tmp_path / owed / "held")
            await again.open()
            assert woken == ([] if owed == "none" else [owed])
            await again.close()

    asyncio.run(main())


def test_without_a_spill_nothing_is_kept_at_a_stop(tmp_path):
    async def main() -> tuple[int, int]:
        b = SerialBacklog("gps0", 4, "drop_oldest", tmp_path / "spill", 1 << 20, 0.01,
                          held_dir=tmp_path / "held")
        await b.open()
        b.add(_fix_item(0))
        kept = await b.keep([_fix_item(1)])
        await b.close()
        return kept

    assert asyncio.run(main()) == (0, 2)  # both lost
    assert not (tmp_path / "held").exists()


def test_fixes_past_the_backlog_spill_and_come_back_in_order(tmp_path):
    async def main():
        backlog = SerialBacklog("gps0", 4, "spill", tmp_path, 1 << 20, 0.01)
        await backlog.open()
        for i in range(20):
            backlog.add(_fix_item(i))
        # Room again in memory, but fixes behind spilled ones spill too.
        backlog.items.popleft()
        backlog.add(_fix_item(20))
        assert len(backlog) == 3
        got = [backlog.items.popleft() for _ in range(3)]
        got += await _drain(backlog)
        assert _lats(got) == list(range(1, 21))
        stats = backlog.stats()
        assert stats["spilled"] == 17 and stats["dropped"] == 0
        assert stats["spill_pending"] == 0
        await backlog.close()

    asyncio.run(main())


def test_spilled_fixes_survive_a_restart_and_go_before_new_ones(tmp_path):
    async def main():
        backlog = SerialBacklog("gps0", 2, "spill", tmp_path, 1 << 20)
        await backlog.open()
        for i in range(10):
            backlog.add(_fix_item(i))
        await backlog.close()  # the process ends; 0 and 1 were only in memory

        again = SerialBacklog("gps0", 20, "spill", tmp_path, 1 << 20)
        await again.open()
        again.add(_fix_item(10))
        got = await _drain(again)
        await again.close()
        return got

    got = asyncio.run(main())
    assert _lats(got) == list(range(2, 11))
    # The restored fixes keep their origin, so their records keep their ids.
    assert got[0].origin.input_sha256 == f"{2:064x}" and got[0].origin.index == 0


def test_a_rotted_frame_and_a_torn_tail_cost_only_their_own_fixes(tmp_path):
    async def fill():
        backlog = SerialBacklog("gps0", 1, "spill", tmp_path, 1 << 20)
        await backlog.open()
        for i in range(10):
            backlog.add(_fix_item(i))
        await backlog.close()

    asyncio.run(fill())
    (segment,) = _segments(tmp_path / "gps0")
    data = bytearray(segment.read_bytes())
    starts = [i for i in range(len(data)) if data.startswith(MAGIC, i)]
    assert len(starts) == 9  # fixes 1..9; fix 0 stayed in memory
    body = data.index(b'"lat":53.0', starts[2])  # fix 3's
    data[body + 7] ^= 0x01  # a rotted bit
    del data[starts[-1] + 30:]  # fix 9 torn by a power cut
    segment.write_bytes(bytes(data))

    async def reopen():
        again = SerialBacklog("gps0", 20, "spill", tmp_path, 1 << 20)
        await again.open()
        got = await _drain(again)
        stats = again.stats()
        await again.close()
        return got, stats

    got, stats = asyncio.run(reopen())
    assert _lats(got) == [1, 2, 4, 5, 6, 7, 8]
    assert stats["spill_corrupt"] == 2


def test_the_spill_is_bounded_and_every_fix_it_evicts_is_counted(tmp_path):
    async def main():
        backlog = SerialBacklog("gps0", 1, "spill", tmp_path, 16 << 10, 0.001)
        await backlog.open()
        for i in range(2000):
            backlog.add(_fix_item(i))
            if i % 50 == 0:
                await asyncio.sleep(0.005)  # let batches be written as they come
        await backlog._spool.flush()
        stats = backlog.stats()
        got = [backlog.items.popleft()] + await _drain(backlog)
        await backlog.close()
        return stats, got

    stats, got = asyncio.run(main())
    on_disk = sum(f.stat().st_size for f in _segments(tmp_path / "gps0"))
    assert on_disk <= 16 << 10 and stats["spill_bytes"] <= 16 << 10
    assert stats["spill_evicted"] > 0
    # Every fix either came back, or was counted as dropped: none vanished.
    assert len(got) + stats["dropped"] == 2000
    lats = _lats(got)
    assert lats == sorted(lats) and lats[-1] == 1999  # the oldest went first


def test_spilled_fixes_are_written_in_batches_not_one_write_each(tmp_path):
    async def main():
        backlog = SerialBacklog("gps0", 1, "spill", tmp_path, 8 << 20, 0.2)
        await backlog.open()
        for i in range(500):
            backlog.add(_fix_item(i))
            await asyncio.sleep(0)  # fixes arrive over loop turns, as from a port
        await backlog._spool.flush()
        stats = backlog.stats()
        await backlog.close()
        return stats

    stats = asyncio.run(main())
    assert stats["spilled"] == 499
    assert stats["spill_fsyncs"] <= 5  # one per batch, not per fix
    # Appended once, never rewritten: what was written is what is on disk.
    assert stats["spill_bytes_written"] == stats["spill_bytes"]


def test_a_spilled_block_of_fixes_keeps_each_fix_and_its_record_id(tmp_path):
    sentences = b"".join(
        b"$%s*%02X\r\n" % (body, _checksum(body)) for body in (
            b"GPRMC,120000.00,A,4807.038,N,01131.000,E,1.0,90.0,010125,,,A",
            b"GPRMC,120001.00,A,4807.039,N,01131.001,E,1.0,90.0,010125,,,A",
            b"GPRMC,120002.00,A,4807.040,N,01131.002,E,1.0,90.0,010125,,,A",
            b"GPRMC,120003.00,A,4807.041,N,01131.003,E,1.0,90.0,010125,,,A"))
    decoder = NmeaDecoder()
    fixes = Fixes.concat([decoder.feed_block(sentences), decoder.flush_block()])
    assert len(fixes) == 4
    batch = FixBatch(origin("gps0", "ab" * 32, 7, "t"), fixes)
    want_ids = batch.item_ids()
    want = batch.fixes.fields()

    async def main():
        backlog = SerialBacklog("gps0", 1, "spill", tmp_path, 1 << 20, 0.01)
        await backlog.open()
        backlog.add(_fix_item(0))
        backlog.add(batch)
        backlog.items.popleft()
        got = await _drain(backlog)
        await backlog.close()
        return got

    got = asyncio.run(main())
    assert [records.record_id(g.origin.source, g.origin.input_sha256, g.origin.index)
            for g in got] == want_ids
    for g, fields in zip(got, want):
        assert {k: v for k, v in g.tpv.items() if k != "class"} == pytest.approx(fields)
    assert all(g.tpv["class"] == "TPV" for g in got)


def _checksum(body: bytes) -> int:
    c = 0
    for b in body:
        c ^= b
    return c


def test_drop_oldest_drops_the_oldest_fix_and_counts_it(tmp_path):
    backlog = SerialBacklog("gps0", 3, "drop_oldest", tmp_path, 1 << 20)
    asyncio.run(backlog.open())
    for i in range(5):
        backlog.add(_fix_item(i))
    assert _lats(list(backlog.items)) == [2, 3, 4]
    assert backlog.stats()["dropped"] == 2
    assert not (tmp_path / "gps0").exists()  # nothing goes to disk


def test_a_spill_that_cannot_be_opened_falls_back_to_dropping_the_oldest(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the spill directory should be")

    async def main():
        backlog = SerialBacklog("gps0", 2, "spill", blocker, 1 << 20)
        await backlog.open()
        for i in range(5):
            backlog.add(_fix_item(i))
        return backlog

    backlog = asyncio.run(main())
    assert _lats(list(backlog.items)) == [3, 4] and backlog.stats()["dropped"] == 3
    json.dumps(backlog.stats())  # the status carries it as it is
