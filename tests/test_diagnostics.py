"""What a technician finds in the journal: a timed-out chunk, end to end
through the real pipeline and worker pool, as fields that journalctl can
filter on (``journalctl -u gatewayd GATEWAYD_REASON=timeout``)."""

from __future__ import annotations

import asyncio
import logging

from test_journal import Journal, parse_entry

from gatewayd import records
from gatewayd.journal import JournalHandler
from gatewayd.pipeline import FixItem, Pipeline, PipelineSettings, origin
from gatewayd.workers import WorkerPool


def test_a_timed_out_chunk_is_in_the_journal_with_source_chunk_worker_and_item_ids(tmp_path):
    journal = Journal(tmp_path / "journal.sock")
    handler = JournalHandler(str(tmp_path / "journal.sock"))
    log = logging.getLogger("gatewayd")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    out: list[dict] = []

    async def emit(record: dict, tokens: tuple) -> None:
        out.append(record)

    async def main() -> None:
        async with WorkerPool(size=1, handler="worker_tasks:hang_on_fixes",
                              chunk_timeout_s=0.5, memory_limit_mb=400) as pool:
            pipeline = Pipeline(PipelineSettings(chunk_size=3), pool, emit)
            task = asyncio.create_task(pipeline.run())
            for i in range(3):
                await pipeline.put(FixItem(origin("gps7", "a" * 64, i, "t"),
                                           {"mode": 2, "lat": 50.0, "lon": 8.0 + i}))
            pipeline.close()
            await task

    try:
        asyncio.run(main())
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        handler.close()
    entries = []
    journal.sock.settimeout(0.5)
    while True:
        try:
            entries.append(dict(parse_entry(journal.receive())))
        except TimeoutError:
            break
    journal.close()
    timeouts = [e for e in entries if e.get("GATEWAYD_REASON") == b"timeout"]
    killed = next(e for e in timeouts if "GATEWAYD_WORKER_PID" in e)
    assert int(killed["GATEWAYD_WORKER_PID"]) > 0 and killed["GATEWAYD_CHUNK"]
    lost = next(e for e in timeouts if "GATEWAYD_ITEMS" in e)
    assert lost["GATEWAYD_SOURCE"] == b"gps7"
    ids = [records.record_id("gps7", "a" * 64, i) for i in range(3)]
    assert lost["GATEWAYD_ITEMS"].decode().split(",") == ids
    assert lost["PRIORITY"] == b"4"  # warning
    [dead] = out
    assert dead["kind"] == "dead_letter" and dead["reason"] == "timeout"
    assert dead["items"] == ids
