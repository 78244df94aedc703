"""The outbox: order and byte-exactness across restarts, deliveries remembered,
damage costing only the damaged entry, the bound, a full disk, a slow disk,
and SIGKILL at any moment losing nothing that was reported durable."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from gatewayd import outbox
from gatewayd.outbox import HEADER_SIZE, Entry, Outbox, OutboxError, OutboxSettings

ROOT = Path(__file__).resolve().parents[1]

# Hypothesis keeps its caches under the working directory unless told
# otherwise, and pytest's collection then stumbles over them.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "gatewayd-hypothesis")


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def entry(i: int, size: int = 200, prefix: str = "r") -> Entry:
    rng = random.Random(i)
    return Entry(f"gw/out/gps/src{i % 3}", rng.randbytes(size), f"{prefix}{i:06d}",
                 qos=i % 2, retain=i % 5 == 0)


def fast(directory: Path, **kw: Any) -> OutboxSettings:
    kw.setdefault("fsync_interval_s", 0.0)
    return OutboxSettings(directory, **kw)


async def put_all(box: Outbox, entries: list[Entry]) -> None:
    await asyncio.gather(*(box.put(e) for e in entries))


async def reopened(directory: Path, fn: Callable[[Outbox], Awaitable[Any]] | None = None,
                   **kw: Any) -> Any:
    """Opens the directory as after a restart, applies ``fn``, closes."""
    async with Outbox(fast(directory, **kw)) as box:
        return await fn(box) if fn else box.stats()


async def everything(box: Outbox) -> list[Entry]:
    return [e async for e in box.pending()]


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.seg") if p.is_file())


# ---- order, durability, deliveries ----

def test_entries_come_back_in_order_and_byte_exact_after_a_restart(tmp_path):
    entries = [entry(i, size=i * 7 % 500) for i in range(300)]  # some payloads empty

    async def main():
        async with Outbox(fast(tmp_path, segment_bytes=8192, max_bytes=1 << 20)) as box:
            await put_all(box, entries)
            assert len(box) == 300
        found = await reopened(tmp_path, everything, segment_bytes=8192, max_bytes=1 << 20)
        assert found == entries  # topic, record id, payload, QoS and retain
        assert len(segments(tmp_path)) > 1  # the order holds across segments too

    run(main())


def test_delivered_entries_are_not_replayed_after_a_restart_and_undelivered_ones_are(
        tmp_path):
    entries = [entry(i) for i in range(40)]

    async def main():
        async with Outbox(fast(tmp_path)) as box:
            await put_all(box, entries)
            for e in await box.take(40):
                if int(e.record_id[1:]) % 3:  # out of order, as PUBACKs may come
                    box.done(e)
            assert box.stats().delivered == 26 and len(box) == 14
        found = await reopened(tmp_path, everything)
        assert found == [e for i, e in enumerate(entries) if i % 3 == 0]

    run(main())


def test_a_segment_is_deleted_once_every_entry_in_it_is_delivered(tmp_path):
    async def main():
        async with Outbox(fast(tmp_path, segment_bytes=4096, max_bytes=1 << 20)) as box:
            for i in range(60):  # one batch each: segments of about 17 entries
                await box.put(entry(i))
            assert len(segments(tmp_path)) == 4
            async for e in box.pending():
                box.done(e)
            await box.flush()
            assert len(box) == 0 and len(segments(tmp_path)) == 1  # the one appended to
        assert segments(tmp_path) == [] and list(tmp_path.glob("*.ack")) == []

    run(main())


def test_put_resolves_only_once_the_entry_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(time.monotonic())

    monkeypatch.setattr(os, "fsync", fsync)

    async def main():
        async with Outbox(OutboxSettings(tmp_path, fsync_interval_s=0.05)) as box:
            futures = [box.put(entry(i)) for i in range(500)]
            assert not any(f.done() for f in futures)
            await asyncio.gather(*futures)
            assert synced and len(box) == 500
            # Batched: a few writes and fsyncs, not one per entry.
            assert box.stats().fsyncs <= 6

    run(main())


def test_a_record_id_already_pending_is_stored_once(tmp_path):
    async def main():
        async with Outbox(fast(tmp_path)) as box:
            first = box.put(entry(1))
            again = box.put(entry(1))  # still queued: resolves with the first
            await asyncio.gather(first, again)
            await box.put(entry(1))  # already on disk
            assert len(box) == 1 and box.stats().duplicates == 2
            (e,) = await box.take(10)
            box.done(e)
            await box.put(entry(1))  # delivered: a new result with that id is stored again
            assert len(box) == 1 and box.stats().duplicates == 2

    run(main())


def test_pending_skips_entries_marked_done_meanwhile_and_ends_when_caught_up(tmp_path):
    async def main():
        async with Outbox(fast(tmp_path)) as box:
            await put_all(box, [entry(i) for i in range(200)])
            seen = []
            async for e in box.pending(batch=16):
                seen.append(e.record_id)
                box.done(e)
                if len(seen) == 100:
                    await put_all(box, [entry(i) for i in range(200, 210)])
            assert seen == [f"r{i:06d}" for i in range(210)]
            assert [e async for e in box.pending()] == [] and len(box) == 0

    run(main())


def test_wait_pending_returns_once_an_entry_is_durable_and_waits_while_none_is(tmp_path):
    async def main():
        async with Outbox(fast(tmp_path)) as box:
            waiting = asyncio.create_task(box.wait_pending())
            await asyncio.sleep(0.05)
            assert not waiting.done()  # nothing on disk: it waits
            stored = box.put(entry(1))
            await asyncio.wait_for(waiting, 5)
            assert stored.done() and len(box) == 1
            await asyncio.wait_for(box.wait_pending(), 1)  # one is there: at once
            (e,) = await box.take(10)
            box.done(e)
            again = asyncio.create_task(box.wait_pending())
            await asyncio.sleep(0.05)
            assert not again.done()  # delivered: it waits again
            again.cancel()
            await asyncio.gather(again, return_exceptions=True)
        # After a restart, an entry from before it counts at once.
        async with Outbox(fast(tmp_path)) as box:
            await box.put(entry(2))
        async with Outbox(fast(tmp_path)) as box:
            await asyncio.wait_for(box.wait_pending(), 1)
            assert [e.record_id for e in await box.take(10)] == ["r000002"]

    run(main())


# ---- damage ----

def _frames(path: Path) -> list[int]:
    """Offsets of the frames of an undamaged segment."""
    data = path.read_bytes()
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        head = outbox._header(data, pos)
        assert head is not None
        pos += head.frame_size
    return offsets


def _one_segment(tmp_path: Path, n: int) -> tuple[list[Entry], Path]:
    entries = [entry(i) for i in range(n)]

    async def main():
        async with Outbox(fast(tmp_path)) as box:
            await put_all(box, entries)

    run(main())
    (seg,) = segments(tmp_path)
    return entries, seg


def test_a_torn_tail_costs_only_the_entry_it_cut(tmp_path):
    entries, seg = _one_segment(tmp_path, 10)
    offsets = _frames(seg)
    for cut in (offsets[-1] + 3, offsets[-1] + HEADER_SIZE + 5, seg.stat().st_size - 1):
        with seg.open("r+b") as f:
            f.truncate(cut)
        stats = run(reopened(tmp_path))
        assert stats.torn_tails == 1 and stats.corrupt_skipped == 0
        assert run(reopened(tmp_path, everything)) == entries[:9]


def test_a_flipped_byte_costs_only_the_entry_it_is_in(tmp_path):
    entries, seg = _one_segment(tmp_path, 9)
    offsets = _frames(seg)
    data = bytearray(seg.read_bytes())
    data[offsets[4] + HEADER_SIZE + 40] ^= 0x20  # in the body of the middle entry
    data[offsets[6] + 9] ^= 0x01  # in a header: found again by its magic
    seg.write_bytes(bytes(data))
    stats = run(reopened(tmp_path))
    assert stats.corrupt_skipped == 2 and stats.torn_tails == 0 and stats.pending == 7
    assert run(reopened(tmp_path, everything)) == [e for i, e in enumerate(entries)
                                                  if i not in (4, 6)]


def test_damage_found_only_when_replaying_costs_only_that_entry(tmp_path):
    async def main():
        async with Outbox(fast(tmp_path)) as box:
            await put_all(box, [entry(i) for i in range(5)])
            (seg,) = segments(tmp_path)
            data = bytearray(seg.read_bytes())
            data[_frames(seg)[2] + HEADER_SIZE + 30] ^= 0xFF  # rotted after it was written
            seg.write_bytes(bytes(data))
            found = await everything(box)
            assert [e.record_id for e in found] == ["r000000", "r000001", "r000003", "r000004"]
            assert box.stats().corrupt_skipped == 1 and len(box) == 4

    run(main())


def test_foreign_files_empty_and_random_segments_are_counted_never_fatal(tmp_path, caplog):
    entries, _ = _one_segment(tmp_path, 5)
    (tmp_path / "notes.txt").write_text("not an outbox file")
    (tmp_path / "000000000007.seg").write_bytes(b"")
    (tmp_path / "000000000008.seg").write_bytes(random.Random(1).randbytes(5000))
    (tmp_path / "000000000009.seg").write_bytes(outbox.MAGIC * 50)
    (tmp_path / "000000000009.ack").write_bytes(b"\x00" * 13)
    (tmp_path / "000000000042.ack").write_bytes(b"\x01" * 8)  # its segment is gone
    (tmp_path / "subdir.seg").mkdir()
    stats = run(reopened(tmp_path))
    assert stats.pending == 5 and stats.corrupt_skipped + stats.torn_tails >= 2
    assert "2 files not ours" in caplog.text
    assert run(reopened(tmp_path, everything)) == entries
    # Segments with nothing to deliver are gone; what is not ours stays.
    assert [p.name for p in segments(tmp_path)] == ["000000000001.seg"]
    assert (tmp_path / "notes.txt").exists() and not (tmp_path / "000000000042.ack").exists()


def test_a_torn_ack_record_is_dropped_and_later_acks_stay_aligned(tmp_path):
    async def main():
        async with Outbox(fast(tmp_path)) as box:
            await put_all(box, [entry(i) for i in range(6)])
            box.done((await box.take(1))[0])
        (ack,) = tmp_path.glob("*.ack")
        with ack.open("ab") as f:
            f.write(b"\x00\x00\x01")  # a record cut short
        async with Outbox(fast(tmp_path)) as box:
            assert len(box) == 5
            box.done((await box.take(1))[0])
        assert [e.record_id for e in await reopened(tmp_path, everything)] == [
            f"r{i:06d}" for i in range(2, 6)]

    run(main())


# ---- bounds and faults ----

def test_filling_past_max_bytes_evicts_the_oldest_segments_and_counts_them(tmp_path, caplog):
    limits = dict(segment_bytes=4096, max_bytes=16384)

    async def main():
        async with Outbox(fast(tmp_path, **limits)) as box:
            for i in range(200):
                await box.put(entry(i))
            stats = box.stats()
            assert stats.bytes <= 16384 + 4096 and stats.evicted > 0
            assert stats.evicted + stats.pending == 200
            assert stats.evicted_bytes >= stats.evicted * 200
            assert sum(p.stat().st_size for p in segments(tmp_path)) == stats.bytes
            return stats

    stats = run(main())
    assert "outbox full" in caplog.text and f"{stats.evicted} entries evicted" in caplog.text
    found = run(reopened(tmp_path, everything, **limits))
    assert found == [entry(i) for i in range(stats.evicted, 200)]  # the newest kept


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_batch_and_the_outbox_works_again_once_space_returns(
        tiny_disk):
    spool = tiny_disk / "outbox"

    async def main():
        async with Outbox(fast(spool, segment_bytes=4096, max_bytes=1 << 20)) as box:
            stored, errors = [], []
            for i in range(200):
                try:
                    await box.put(entry(i, size=1000))
                    stored.append(i)
                except OutboxError as exc:
                    errors.append(exc)
            assert errors and stored and len(stored) + len(errors) == 200
            assert {e.reason for e in errors} == {"disk_full"}
            assert box.stats().failed == len(errors) and len(box) == len(stored)
            # The consumer catches up: delivered segments are deleted, space returns.
            async for e in box.pending():
                if int(e.record_id[1:]) < 30:
                    box.done(e)
            await box.flush()
            await box.put(entry(1000, size=1000))
            return [i for i in stored if i >= 30] + [1000]

    kept = run(main())
    found = run(reopened(spool, everything, segment_bytes=4096, max_bytes=1 << 20))
    assert found == [entry(i, size=1000) for i in kept]


def test_a_failed_fsync_fails_its_batch_only(tmp_path, monkeypatch):
    real_fsync = os.fsync
    failures = iter([True])

    def fsync(fd: int) -> None:
        if next(failures, False):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    async def main():
        async with Outbox(fast(tmp_path)) as box:
            await box.put(entry(0))
            monkeypatch.setattr(os, "fsync", fsync)
            with pytest.raises(OutboxError) as caught:
                await box.put(entry(1))
            assert caught.value.reason == "outbox_io" and "Input/output" in str(caught.value)
            await box.put(entry(2))
            await box.put(entry(1))  # its input came again
            assert box.stats().failed == 1

    run(main())
    assert run(reopened(tmp_path, everything)) == [entry(0), entry(2), entry(1)]


def test_a_slow_fsync_does_not_block_the_event_loop(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.5)  # an SD card collecting its garbage
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)

    async def main():
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async with Outbox(fast(tmp_path)) as box:
            ticker = asyncio.create_task(tick())
            started = time.monotonic()
            future = box.put(entry(0))
            assert time.monotonic() - started < 0.1  # put itself returns at once
            await future
            ticker.cancel()
            # 0.5 s of fsync with the loop free ticks about 50 times; blocked, 0-1.
            assert ticks >= 10

    run(main())


def test_put_after_close_is_refused(tmp_path):
    async def main():
        box = Outbox(fast(tmp_path))
        await box.open()
        await box.close()
        with pytest.raises(OutboxError):
            box.put(entry(0))

    run(main())


def test_settings_are_validated():
    with pytest.raises(ValueError, match="four segments"):
        OutboxSettings(Path("x"), max_bytes=8192, segment_bytes=4096)
    with pytest.raises(ValueError, match="batch_bytes"):
        OutboxSettings(Path("x"), batch_bytes=0)


# ---- properties ----

_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(1, 12), st.integers(0, 600)),
    st.tuples(st.just("done"), st.lists(st.integers(0, 30), max_size=8), st.just(0)),
    st.tuples(st.just("reput"), st.integers(0, 30), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    st.tuples(st.just("corrupt"), st.integers(0, 30), st.integers(0, 10_000)),
), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, small=st.booleans())
def test_every_entry_neither_delivered_evicted_nor_damaged_comes_back_once_in_order(
        ops, small):
    limits = dict(segment_bytes=4096, max_bytes=16384) if small else {}

    async def main(directory: Path) -> None:
        expected: list[Entry] = []  # undelivered, in put order
        serial = 0
        box = Outbox(fast(directory, **limits))
        await box.open()
        evicted = 0

        async def check() -> None:
            nonlocal evicted, expected
            newly = box.stats().evicted - evicted
            evicted += newly
            expected = expected[newly:]  # whole oldest segments: a prefix
            assert await box.take(10_000) == expected
            assert len(box) == len(expected)

        try:
            for op, a, b in ops:
                if op == "put":
                    batch = [entry(serial + i, size=b) for i in range(a)]
                    serial += a
                    await put_all(box, batch)
                    expected += batch
                elif op == "done":
                    handed = await box.take(10_000)
                    for i in sorted(set(a)):
                        if i < len(handed):
                            box.done(handed[i])
                            expected.remove(handed[i])
                elif op == "reput" and expected:
                    await box.put(expected[a % len(expected)])  # a duplicate: no change
                elif op in ("reopen", "corrupt"):
                    victim = (await box.take(10_000))[a % len(expected)] \
                        if op == "corrupt" and expected else None
                    await box.close()
                    if victim is not None and victim.position is not None:
                        seg = directory / f"{victim.position.segment:012d}.seg"
                        data = bytearray(seg.read_bytes())
                        head = outbox._header(data, victim.position.offset)
                        assert head is not None
                        data[victim.position.offset + b % head.frame_size] ^= 0x10
                        seg.write_bytes(bytes(data))
                        expected.remove(victim)
                    box = Outbox(fast(directory, **limits))
                    await box.open()
                    evicted = 0
                await check()
        finally:
            await box.close()

    with tempfile.TemporaryDirectory() as d:
        run(main(Path(d)))


# ---- SIGKILL ----

_WRITER = textwrap.dedent("""
    import asyncio, os, sys
    from pathlib import Path
    from gatewayd.outbox import Entry, Outbox, OutboxSettings

    async def main():
        box = Outbox(OutboxSettings(Path(sys.argv[1]), segment_bytes=16384,
                                    max_bytes=1 << 30, fsync_interval_s=0.01))
        await box.open()
        first = int(sys.argv[2])
        for i in range(first, first + 1_000_000):
            e = Entry("gw/out/gps/k", os.urandom(100 + i % 300), f"k{i}")
            box.put(e).add_done_callback(
                lambda f, i=i: f.exception() or os.write(1, b"%d\\n" % i))
            if i % 20 == 0:
                await asyncio.sleep(0)

    asyncio.run(main())
""")


def test_every_entry_reported_durable_survives_sigkill_at_a_random_moment(tmp_path):
    rng = random.Random(1234)
    durable: list[int] = []
    first = 0
    for _ in range(4):
        with subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(first)],
                              cwd=ROOT, stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            want = rng.randint(1, 3000)
            try:
                for seen, line in enumerate(proc.stdout, 1):
                    durable.append(int(line))
                    if seen >= want:
                        break
                time.sleep(rng.random() * 0.05)  # mid-batch, mid-fsync, anywhere
            finally:
                proc.send_signal(signal.SIGKILL)
            durable.extend(int(line) for line in proc.stdout.read().split())
        assert proc.returncode == -signal.SIGKILL
        first += 1_000_000
        found = run(reopened(tmp_path, everything, segment_bytes=16384, max_bytes=1 << 30))
        ids = [int(e.record_id[1:]) for e in found]
        assert ids == sorted(ids) and len(ids) == len(set(ids))  # in order, each once
        assert set(durable) <= set(ids)
