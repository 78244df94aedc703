"""Serial backlogs: fixes from a port waiting for room in the pipeline's queue.

A serial receiver cannot be told to wait, so each port has a bounded backlog
in memory in front of the intake. Past it, the configured policy applies:

- ``spill``: fixes go to a spool on disk in ``<state_dir>/spill/<port>/`` and
  come back, oldest first, once the queue has room again. The spool is an
  :class:`~gatewayd.outbox.Outbox`: append-only CRC-framed segments, written
  in batches with one fsync each from a thread of its own (the event loop
  never waits for the SD card), a torn tail or a rotted frame costing only
  its own fix, bounded by evicting the oldest segment. What is spilled before
  a restart is still owed, and goes first after it.
- ``drop_oldest``: the oldest fix in memory is dropped.

Either way every fix lost is counted and logged with its port.

With ``spill``, a stop whose grace runs out keeps the port's fixes still in
memory (waiting here, queued, or in chunks given up) in a second spool,
``held_dir/<port>/``: they are older than anything spilled, so they go first
after the next start, then the spill, then what comes new.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatewayd.outbox import Entry, Outbox, OutboxError, OutboxSettings
from gatewayd.pipeline import FixBatch, FixItem, Item, origin

logger = logging.getLogger(__name__)

__all__ = ["SerialBacklog"]


class SerialBacklog:
    """One port's fixes waiting for the queue: ``items`` in memory, at most
    ``limit`` of them, and past that the spill (when the policy is ``spill``
    and ``spill_dir`` is given) or a dropped oldest fix."""

    def __init__(self, name: str, limit: int, policy: str, spill_dir: Path | None,
                 spill_max_bytes: int, fsync_interval_s: float = 1.0,
                 on_stored: Callable[[], None] | None = None,
                 held_dir: Path | None = None) -> None:
        self.name = name
        self._on_stored = on_stored  # a spilled fix is on disk: refill may take it
        self.items: collections.deque[Item] = collections.deque()
        self.limit = limit
        self.policy = policy
        self.dropped = 0  # fixes dropped from memory, or lost on their way to disk
        self.spilled = 0  # fixes put on disk
        self._spool: Outbox | None = None
        self._held: Outbox | None = None  # fixes kept at a stop: they go first
        self._writing = 0  # fixes put to the spool and not yet durable
        self._settings: OutboxSettings | None = None
        self._held_settings: OutboxSettings | None = None
        if policy == "spill" and spill_dir is not None:
            # Eviction drops whole segments: keep them a small part of the whole.
            segment = max(4096, min(1 << 20, spill_max_bytes // 16))
            self._settings = OutboxSettings(
                spill_dir / name, max_bytes=max(spill_max_bytes, 4 * segment),
                segment_bytes=segment, batch_bytes=64 << 10,
                fsync_interval_s=fsync_interval_s)
            if held_dir is not None:
                self._held_settings = dataclasses.replace(self._settings,
                                                          directory=held_dir / name)

    async def open(self) -> None:
        """Opens the spill; fixes kept or spilled before a restart go first."""
        if self._settings is None or self._spool is not None:
            return
        self._spool = await self._open(self._settings, "spilled fixes",
                                       "overflow drops the oldest fix")
        if self._spool is not None and self._held_settings is not None:
            self._held = await self._open(self._held_settings, "fixes kept at the last stop",
                                          "a stop whose grace runs out loses the fixes in memory")
        if self._on_stored is not None and any(
                spool is not None and len(spool) for spool in (self._held, self._spool)):
            self._on_stored()  # owed from before the restart: refill may take them now

    async def _open(self, settings: OutboxSettings, what: str, without: str) -> Outbox | None:
        """A spool of ``what``, opened; None (and a warning that says what
        happens ``without`` it) if it cannot be."""
        spool = Outbox(settings)
        try:
            settings.directory.mkdir(parents=True, exist_ok=True)
            found = await spool.open()
        except (OSError, OutboxError) as exc:
            logger.warning("%s: no spool in %s (%s): %s", self.name, settings.directory,
                           getattr(exc, "strerror", None) or exc, without,
                           extra={"gatewayd_source": self.name})
            return None
        if found.pending:
            logger.info("%s: %d %s from before the restart", self.name, found.pending, what,
                        extra={"gatewayd_source": self.name})
        return spool

    async def close(self) -> None:
        """Makes what was spilled durable, and records what was taken back."""
        for spool in (self._held, self._spool):
            if spool is not None:
                await spool.close()
        self._held = self._spool = None

    async def keep(self, items: list[Item]) -> tuple[int, int]:
        """For a stop whose grace is over: keeps ``items`` (the port's, oldest
        first, whose records are not out) and then those waiting here, ahead
        of everything spilled, for the next start. Returns how many of these
        fixes it kept, and how many are lost: all of them with nowhere to
        keep them (no spill)."""
        entries = [e for item in [*items, *self.items] for e in _entries(item)]
        held = self._held
        if held is None:
            return 0, len(entries)
        self.items.clear()
        # Kept at an earlier stop and not taken back since: younger than these.
        earlier = await held.take(len(held)) if len(held) else []
        for entry in earlier:
            held.done(entry)
        futures = [held.put(e) for e in entries]
        futures += [held.put(Entry(e.topic, e.payload, e.record_id)) for e in earlier]
        await held.flush()
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = sum(1 for r in results if isinstance(r, BaseException))
        if failed:
            self._lost(failed, "not kept at the stop")
        kept = len(entries) - sum(1 for r in results[:len(entries)] if isinstance(r, BaseException))
        return kept, failed

    def add(self, item: Item) -> None:
        spool = self._spool
        # Behind fixes already spilled (or kept at a stop), new ones spill too:
        # order holds.
        if spool is not None and isinstance(item, FixItem | FixBatch) and \
                (self._writing or len(spool) or len(self.items) >= self.limit or
                 (self._held is not None and len(self._held))):
            self._spill(spool, item)
            return
        if len(self.items) >= self.limit:
            self.items.popleft()
            self._lost(1, "queue full")
        self.items.append(item)

    def _spill(self, spool: Outbox, item: Item) -> None:
        for entry in _entries(item):
            try:
                future = spool.put(entry)
            except OutboxError:  # closed while stopping
                self._lost(1, "spill closed")
                continue
            self._writing += 1
            future.add_done_callback(self._stored)

    def _stored(self, future: asyncio.Future[None]) -> None:
        self._writing -= 1
        if future.cancelled() or future.exception() is not None:
            self._lost(1, f"not spilled: {future.exception() if not future.cancelled() else ''}")
        else:
            self.spilled += 1
            if self._on_stored is not None:
                self._on_stored()

    def _lost(self, n: int, why: str) -> None:
        before = self.dropped
        self.dropped += n
        # Logged at the first, the tenth, the hundredth, then every thousandth.
        if any(before < mark <= self.dropped for mark in (1, 10, 100)) or \
                before // 1000 != self.dropped // 1000:
            logger.warning("%s: %s, %d fixes dropped so far", self.name, why, self.dropped,
                           extra={"gatewayd_source": self.name,
                                  "gatewayd_reason": "overflow"})

    async def refill(self) -> None:
        """Moves spilled fixes back, oldest first, while there is room: those
        kept at the last stop, then those spilled."""
        room = self.limit - len(self.items)
        if room <= self.limit // 2:
            return
        spool = self._held if self._held is not None and len(self._held) else self._spool
        if spool is None or not len(spool):
            return
        for entry in await spool.take(room):
            spool.done(entry)
            try:
                body = json.loads(entry.payload)
                item = FixItem(origin(self.name, body["sha"], body["index"],
                                      body["received_at"]), dict(body["tpv"]))
            except (ValueError, KeyError, TypeError):
                # The frame's CRC held, so this is not a torn write: a fix of
                # an older layout, say. Only that fix is lost, and counted.
                self._lost(1, "an unreadable spilled fix skipped")
                continue
            self.items.append(item)

    def stats(self) -> dict[str, int]:
        """Figures for the status: dropped, spilled, and on disk now."""
        out = {"dropped": self.dropped, "spilled": self.spilled}
        if self._spool is not None:
            s = self._spool.stats()
            kept = self._held.stats().pending if self._held is not None else 0
            out.update(spill_pending=s.pending + self._writing + kept, spill_bytes=s.bytes,
                       spill_evicted=s.evicted, spill_corrupt=s.corrupt_skipped + s.torn_tails,
                       spill_bytes_written=s.bytes_written, spill_fsyncs=s.fsyncs)
            out["dropped"] += s.evicted
        return out

    @property
    def corrupt(self) -> int:
        """Spilled fixes found damaged on disk and skipped."""
        if self._spool is None:
            return 0
        s = self._spool.stats()
        return s.corrupt_skipped + s.torn_tails

    def __len__(self) -> int:
        return len(self.items)


def _entries(item: Item) -> list[Entry]:
    if isinstance(item, FixItem):
        o = item.origin
        fixes: list[tuple[int, dict[str, Any]]] = [(o.index, item.tpv)]
    elif isinstance(item, FixBatch):
        o = item.origin
        fixes = [(o.index + k, {"class": "TPV", **fields})
                 for k, fields in enumerate(item.fixes.fields())]
    else:
        return []
    return [Entry(o.source, json.dumps({"tpv": tpv, "received_at": o.received_at,
                                        "sha": o.input_sha256, "index": index},
                                       separators=(",", ":")).encode(),
                  record_id=f"{o.input_sha256}/{index}")
            for index, tpv in fixes]
