"""The worker pool with real processes: results, hard timeouts, deaths, memory
caps and shared arrays, and that one failure costs only its own chunk."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from emulation import NOT_ENFORCED, TIME_SCALE, cap_enforced

from gatewayd.config import load_config
from gatewayd.pcd import encode_pcd
from gatewayd.pointcloud import from_columns
from gatewayd.replay import ReplayOptions, replay
from gatewayd.workers import (
    ChunkFailed,
    ChunkMemoryError,
    ChunkTimeout,
    SharedArray,
    WorkerDied,
    WorkerPool,
    stop_helper_processes,
)

HANDLER = "worker_tasks:handle"


# Where the kernel applies RLIMIT_AS (not under qemu-user).
needs_cap = pytest.mark.skipif(not cap_enforced(), reason=NOT_ENFORCED)


def pool(**kw):
    kw.setdefault("size", 2)
    kw.setdefault("memory_limit_mb", 300)
    kw.setdefault("chunk_timeout_s", 5.0)
    return WorkerPool(handler=HANDLER, init="worker_tasks:init", init_args=("t",), **kw)


def run(coro):
    return asyncio.run(coro)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_chunks_run_across_workers_with_their_initializer():
    async def main():
        async with pool() as p:
            results = await asyncio.gather(*(p.run(f"c{i}", ("echo", i)) for i in range(40)))
            assert [r[2] for r in results] == list(range(40))
            assert {r[0] for r in results} == {"t"}
            assert len({r[1] for r in results}) == 2
            assert p.stats().chunks_done == 40

    run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_large_results_and_payloads_cross_the_pipes_whole_on_either_loop(loop):
    # uvloop puts a watched pipe in non-blocking mode: a result of many
    # megabytes arrives over several wake-ups and must still come out whole.
    async def main():
        async with pool() as p:
            sizes = [1 << 10, 8 << 20, 3 << 20, 40 << 20]
            results = await asyncio.gather(*(p.run(f"b{i}", ("big", n))
                                             for i, n in enumerate(sizes)))
            assert [len(r) for r in results] == sizes
            assert all(r[:16] * (len(r) // 16) == r for r in results)
            assert await p.run("in", ("length", b"x" * (20 << 20))) == 20 << 20
            stats = p.stats()
            assert stats.deaths == 0 and stats.restarts == 0 and stats.chunks_done == 5

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        run(main())


def test_a_chunk_over_its_time_is_failed_its_worker_killed_and_replaced():
    async def main():
        async with pool(chunk_timeout_s=0.5) as p:
            busy = asyncio.create_task(p.run("slow-but-fine", ("sleep", 0.3)))
            pids = {w.pid for w in p.stats().workers}
            with pytest.raises(ChunkTimeout) as info:
                await p.run("stuck", ("hang", None))
            assert info.value.reason == "timeout"
            assert isinstance(await busy, int)  # the other chunk was not lost
            stuck_pid = (pids - {await busy}).pop() if len(pids) == 2 else None
            assert stuck_pid is None or not _alive(stuck_pid)
            # A fresh worker takes the next chunks.
            out = await asyncio.gather(*(p.run(f"n{i}", ("echo", i)) for i in range(4)))
            assert [o[2] for o in out] == [0, 1, 2, 3]
            for _ in range(500):
                if p.stats().alive == 2:
                    break
                await asyncio.sleep(0.02)
            stats = p.stats()
            assert stats.timeouts == 1 and stats.restarts == 1 and stats.alive == 2
            assert stats.last_replace_s is not None and stats.last_replace_s < 10

    run(main())


def test_a_worker_killed_from_outside_costs_one_retry_and_the_chunk_succeeds():
    async def main():
        async with pool(size=1) as p:
            pid = p.stats().workers[0].pid
            task = asyncio.create_task(p.run("victim", ("sleep", 1.0)))
            await asyncio.sleep(0.3)
            os.kill(pid, signal.SIGKILL)
            result = await task
            assert result != pid  # retried on the replacement
            assert p.stats().deaths == 1 and p.stats().chunks_done == 1

    run(main())


@pytest.mark.parametrize("op", ["segfault", "kill_self"])
def test_a_chunk_that_kills_its_worker_twice_is_failed_as_worker_died(op):
    async def main():
        async with pool() as p:
            with pytest.raises(WorkerDied) as info:
                await p.run("poison", (op, None))
            assert "SIG" in str(info.value)
            assert info.value.reason == "worker_died"
            assert (await p.run("after", ("echo", 1)))[2] == 1

    run(main())


@needs_cap
def test_memory_over_the_cap_is_a_memory_error_for_that_chunk_only():
    async def main():
        async with pool(memory_limit_mb=250) as p:
            ok = asyncio.create_task(p.run("fine", ("sleep", 0.2)))
            with pytest.raises(ChunkMemoryError) as info:
                await p.run("greedy", ("allocate_mb", 600))
            assert info.value.reason == "memory"
            assert isinstance(await ok, int)
            assert await p.run("modest", ("allocate_mb", 10)) == 10 * 1024 * 1024

    run(main())


@needs_cap
def test_a_mapping_over_the_cap_is_a_memory_error_and_the_worker_goes_on(caplog):
    async def main():
        async with pool(size=1, memory_limit_mb=250) as p:
            pid = p.stats().workers[0].pid
            with pytest.raises(ChunkMemoryError) as info:
                await p.run("huge frame", ("map_mb", 600))
            assert info.value.reason == "memory" and "address space" in str(info.value)
            assert await p.run("small frame", ("map_mb", 8)) == 8 * 1024 * 1024
            # Its heap is whole: the same worker serves on, nothing was restarted.
            assert p.stats().workers[0].pid == pid and p.stats().restarts == 0

    run(main())
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@needs_cap
def test_a_worker_leaving_after_a_memory_error_is_replaced_without_a_death_warning(caplog):
    async def main():
        async with pool(size=1, memory_limit_mb=250) as p:
            pid = p.stats().workers[0].pid
            with pytest.raises(ChunkMemoryError):
                await p.run("greedy", ("allocate_mb", 600))
            assert await p.run("next", ("echo", 1)) == ("t", p.stats().workers[0].pid, 1)
            assert p.stats().workers[0].pid != pid and p.stats().restarts == 1
            assert p.stats().deaths == 0

    run(main())
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


@needs_cap
def test_workers_run_with_the_address_space_cap_and_one_blas_thread():
    async def main():
        async with pool(memory_limit_mb=222) as p:
            return await p.run("limits", ("limits", None))

    limits, env = run(main())
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["MALLOC_ARENA_MAX"] == "2"
    line = next(ln for ln in limits.splitlines() if ln.startswith("Max address space"))
    assert str(222 * 1024 * 1024) in line


def test_handler_errors_come_back_with_their_reason_and_the_worker_stays():
    async def main():
        async with pool(size=1) as p:
            pid = p.stats().workers[0].pid
            with pytest.raises(ChunkFailed) as info:
                await p.run("bad", ("bad_input", None))
            assert info.value.reason == "bad_input" and "not NMEA" in str(info.value)
            with pytest.raises(ChunkFailed) as info:
                await p.run("bug", ("bug", "x"))
            assert info.value.reason == "error" and "KeyError" in str(info.value)
            assert p.stats().workers[0].pid == pid

    run(main())


def test_shared_arrays_are_changed_in_place_and_leave_nothing_behind():
    async def main():
        async with pool() as p:
            data = np.arange(30_000, dtype=np.float64).reshape(-1, 3)
            handle = p.share(data)
            total = await p.run("scale", ("scale_shared", (handle, 2.0)))
            np.testing.assert_array_equal(handle.array(), data * 2)
            assert total == pytest.approx(float((data * 2).sum()))
            p.release(handle)
            assert not Path(handle.path).exists()

            doomed = p.share(data)
            with pytest.raises(WorkerDied):
                await p.run("x", ("kill_self", None))
            p.release(doomed)
            assert not Path(doomed.path).exists()

    run(main())


def test_close_returns_promptly_with_a_hung_worker_and_leaves_no_process():
    async def main():
        p = pool(chunk_timeout_s=60)
        await p.__aenter__()
        pids = [w.pid for w in p.stats().workers]
        hung = asyncio.create_task(p.run("hang", ("hang", None)))
        await asyncio.sleep(0.2)
        start = time.monotonic()
        await p.close(grace_s=0.5)
        assert time.monotonic() - start < 5
        with pytest.raises(WorkerDied):
            await hung
        for pid in pids:
            assert not _alive(pid)

    run(main())


def test_shared_array_round_trip_in_this_process():
    data = np.random.default_rng(0).normal(size=(100, 3))
    handle = SharedArray.create(data)
    try:
        np.testing.assert_array_equal(handle.array(), data)
    finally:
        handle.release()


def test_an_initializer_that_fails_everywhere_is_a_clear_error():
    from gatewayd.errors import WorkerError

    async def main():
        p = WorkerPool(size=2, handler=HANDLER, init="worker_tasks:broken_init",
                       init_args=("x",), memory_limit_mb=300)
        with pytest.raises(WorkerError, match="failed to start"):
            await p.__aenter__()
        await p.close()

    run(main())


def test_workers_dying_as_they_start_fail_the_pool_soon_without_a_storm():
    from gatewayd.errors import WorkerError

    async def main():
        p = WorkerPool(size=2, handler=HANDLER, init="worker_tasks:init", init_args=("die",),
                       memory_limit_mb=300)
        started = time.monotonic()
        with pytest.raises(WorkerError, match=r"before they are ready.*status 3"):
            await p.__aenter__()
        elapsed = time.monotonic() - started
        restarts = p.stats().restarts
        await p.close()
        return elapsed, restarts

    elapsed, restarts = run(main())
    assert elapsed < 30 and restarts <= 4  # backed off, not hundreds of processes


@pytest.mark.parametrize("broken", ["die", "refuse"])
def test_settings_workers_cannot_start_with_are_retried_backing_off_and_undone(broken):
    async def main():
        async with pool(size=1) as p:
            p.reconfigure((broken,))
            # Retried: twice within a deadline (a start takes a second or more
            # under emulation) ...
            deadline = time.monotonic() + 30 * TIME_SCALE
            while p.stats().restarts < 2:
                assert time.monotonic() < deadline, p.stats()
                await asyncio.sleep(0.05)
            # ... and backing off: not a storm (50 ms, then twice as long each time).
            await asyncio.sleep(1.5)
            assert p.stats().restarts <= 8
            p.reconfigure(("t",))  # the settings made good again: the pool recovers
            assert (await asyncio.wait_for(p.run("e", ("echo", 1)), 40))[2] == 1

    run(main())


def test_a_worker_stuck_as_it_starts_is_killed_at_its_deadline_and_replaced(caplog):
    async def main():
        async with pool(size=1, start_timeout_s=4 * TIME_SCALE) as p:
            p.reconfigure(("hang",))  # the idle worker is replaced by one that never starts
            await asyncio.sleep(0.5 * TIME_SCALE)
            stuck = [w.pid for w in p.stats().workers]
            assert len(stuck) == 1 and _alive(stuck[0])
            p.reconfigure(("t",))  # its successor may start again
            result = await asyncio.wait_for(p.run("e", ("echo", 1)), 40 * TIME_SCALE)
            assert result[0] == "t" and result[1] != stuck[0]
            assert not _alive(stuck[0]) and p.stats().restarts >= 1
            return stuck[0]

    with caplog.at_level("WARNING", logger="gatewayd"):
        pid = run(main())
    assert f"worker {pid} not ready within" in caplog.text


def test_reconfigure_replaces_every_worker_and_loses_no_chunk():
    async def main():
        async with pool() as p:
            old = {w.pid for w in p.stats().workers}
            busy = asyncio.create_task(p.run("slow", ("sleep", 0.5)))
            await asyncio.sleep(0.1)
            p.reconfigure(("u",))
            results = await asyncio.gather(*(p.run(f"e{i}", ("echo", i)) for i in range(6)))
            assert await busy in old  # the chunk in flight finished on its old worker
            assert [r[2] for r in results] == list(range(6))
            for _ in range(200):
                pids = {w.pid for w in p.stats().workers}
                if len(pids) == 2 and not pids & old:
                    break
                await asyncio.sleep(0.02)
            assert not pids & old and len(pids) == 2
            after = await asyncio.gather(*(p.run(f"a{i}", ("echo", i)) for i in range(4)))
            assert {r[0] for r in after} == {"u"}
            assert p.stats().deaths == 0 and p.stats().timeouts == 0

    run(main())


def test_each_finished_chunk_reports_how_long_its_worker_took():
    durations: list[float] = []

    async def main():
        async with pool(size=1, chunk_timeout_s=0.5, on_chunk=durations.append) as p:
            await p.run("quick", ("echo", 1))
            await p.run("slow", ("sleep", 0.3))
            with pytest.raises(ChunkTimeout):
                await p.run("stuck", ("hang", None))
            with pytest.raises(ChunkFailed):
                await p.run("refused", ("bad_input", None))

    run(main())
    # Only the two that finished; a timed-out or failed chunk is counted apart.
    assert len(durations) == 2
    assert durations[0] < 0.3 <= durations[1] < 0.5


def _children() -> dict[int, str]:
    me = os.getpid()
    found = {}
    for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split():
        with contextlib.suppress(OSError):
            found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    return found


def test_once_helpers_are_stopped_no_process_of_the_pool_is_left_behind():
    async def use_a_pool():
        async with pool(size=1) as p:
            assert (await p.run("c1", ("echo", 1)))[2] == 1
            return _children()

    during = run(use_a_pool())
    helpers = {pid for pid, cmd in during.items()
               if "multiprocessing.forkserver" in cmd or "multiprocessing.resource_tracker" in cmd}
    assert len(helpers) == 2, during
    stop_helper_processes()
    assert not helpers & set(_children())
    for pid in helpers:  # exited and reaped, not merely signalled
        assert not _alive(pid)
    assert run(use_a_pool())  # a pool made afterwards starts them anew
    stop_helper_processes()


@needs_cap
def test_workers_under_the_default_cap_process_full_lidar_frames(tmp_path):
    # The default cap of this build (pipeline.worker_memory_mb) with the
    # daemon's own handler: 30 000-point frames, voxels, UTM to WGS84, hulls.
    rng = np.random.default_rng(3)
    inputs = []
    for i in range(3):
        az, r = rng.uniform(0, 2 * np.pi, 30_000), rng.uniform(1.0, 60.0, 30_000)
        frame = from_columns({"x": 513_000 + r * np.cos(az), "y": 5_402_000 + r * np.sin(az),
                              "z": rng.normal(245.0, 1.5, 30_000)}, {})
        inputs.append(tmp_path / f"frame{i}.pcd")
        inputs[-1].write_bytes(encode_pcd(frame))
    config = load_config(None, [], {})
    summary = asyncio.run(replay(config, ReplayOptions(
        inputs=tuple(inputs), source_crs="EPSG:32632", target_crs="EPSG:4326",
        output=io.StringIO())))
    assert summary.records == 3
    assert summary.dead_letters == 0, summary.pipeline
    assert summary.workers["memory_errors"] == 0
