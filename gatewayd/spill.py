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
"""

from __future__ import annotations

import asyncio
import collections
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
                 on_stored: Callable[[], None] | None = None) -> None:
        self.name = name
        self._on_stored = on_stored  # a spilled fix is on disk: refill may take it
        self.items: collections.deque[Item] = collections.deque()
        self.limit = limit
        self.policy = policy
        self.dropped = 0  # fixes dropped from memory, or lost on their way to disk
        self.spilled = 0  # fixes put on disk
        self._spool: Outbox | None = None
        self._writing = 0  # fixes put to the spool and not yet durable
        if policy == "spill" and spill_dir is not None:
            # Eviction drops whole segments: keep them a small part of the whole.
            segment = max(4096, min(1 << 20, spill_max_bytes // 16))
            self._settings: OutboxSettings | None = OutboxSettings(
                spill_dir / name, max_bytes=max(spill_max_bytes, 4 * segment),
                segment_bytes=segment, batch_bytes=64 << 10,
                fsync_interval_s=fsync_interval_s)
        else:
            self._settings = None

    async def open(self) -> None:
        """Opens the spill; fixes spilled before a restart go first."""
        if self._settings is None or self._spool is not None:
            return
        spool = Outbox(self._settings)
        try:
            self._settings.directory.mkdir(parents=True, exist_ok=True)
            found = await spool.open()
        except (OSError, OutboxError) as exc:
            logger.warning("%s: no spill in %s (%s): overflow drops the oldest fix",
                           self.name, self._settings.directory,
                           getattr(exc, "strerror", None) or exc,
                           extra={"gatewayd_source": self.name})
            return
        self._spool = spool
        if found.pending:
            logger.info("%s: %d spilled fixes from before the restart", self.name,
                        found.pending, extra={"gatewayd_source": self.name})

    async def close(self) -> None:
        """Makes what was spilled durable, and records what was taken back."""
        spool, self._spool = self._spool, None
        if spool is not None:
            await spool.close()

    def add(self, item: Item) -> None:
        spool = self._spool
        # Behind fixes already spilled, new ones spill too: order holds.
        if spool is not None and isinstance(item, FixItem | FixBatch) and \
                (self._writing or len(spool) or len(self.items) >= self.limit):
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
        """Moves spilled fixes back, oldest first, while there is room."""
        spool = self._spool
        room = self.limit - len(self.items)
        if spool is None or not len(spool) or room <= self.limit // 2:
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
            out.update(spill_pending=s.pending + self._writing, spill_bytes=s.bytes,
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
