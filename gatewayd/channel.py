"""Bounded channels between pipeline stages, with depth, peak and drops.

A channel's capacity is counted in units: a fix or a polygon weighs one, a
LiDAR frame weighs its number of point blocks, so that the bound is a bound on
memory too. Producers that can wait (replay, MQTT with manual acks) await
``send`` and so feel the backpressure; producers that cannot (a serial port)
use ``send_nowait`` and the configured overflow policy.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Overflow = Literal["block", "drop_oldest", "drop_newest"]

__all__ = ["Channel", "ChannelClosed", "ChannelStats"]


class ChannelClosed(Exception):
    """The channel is closed and empty: nothing more will come."""


@dataclass(frozen=True, slots=True)
class ChannelStats:
    capacity: int
    depth: int
    peak: int
    sent: int
    received: int
    dropped: int


class Channel(Generic[T]):
    # One event loop, one thread: state changes are atomic between awaits, so
    # two events are all the synchronisation needed.

    def __init__(self, capacity: int, *, overflow: Overflow = "block", name: str = "") -> None:
        if capacity < 1:
            raise ValueError("a channel needs a capacity of at least 1")
        self.capacity = capacity
        self.overflow = overflow
        self.name = name
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self._depth = 0
        self._peak = 0
        self._sent = 0
        self._received = 0
        self._dropped = 0
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def stats(self) -> ChannelStats:
        return ChannelStats(self.capacity, self._depth, self._peak, self._sent,
                            self._received, self._dropped)

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def _fits(self, weight: int) -> bool:
        # An item heavier than the whole channel still passes when it is empty.
        return self._depth + weight <= self.capacity or self._depth == 0

    def _append(self, item: T, weight: int) -> None:
        self._items.append((item, weight))
        self._added(1, weight)

    def _added(self, count: int, weight: int) -> None:
        """Accounts for ``count`` items of ``weight`` in all, just appended."""
        self._depth += weight
        self._sent += count
        self._peak = max(self._peak, self._depth)
        self._readable.set()

    def _pop(self) -> T:
        item, weight = self._items.popleft()
        self._removed(weight)
        return item

    def _removed(self, weight: int) -> None:
        """Accounts for items of ``weight`` in all, just taken off the front."""
        self._depth -= weight
        self._writable.set()
        if not self._items:
            self._readable.clear()

    async def send(self, item: T, weight: int = 1) -> None:
        """Waits while the channel is full."""
        await self.wait_room(weight)
        self._append(item, weight)

    async def wait_room(self, weight: int = 1) -> None:
        """Waits until an item of this weight fits: ``send`` but the sending,
        for a producer that makes the item only once it can go."""
        while not self._closed and not self._fits(weight):
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            raise ChannelClosed(f"channel {self.name!r} is closed")

    def has_room(self, weight: int = 1) -> bool:
        """Whether ``send`` of an item of this weight would not wait now."""
        return not self._closed and self._fits(weight)

    def room(self) -> int:
        """How many items of weight one ``send`` would take now without waiting."""
        if self._closed:
            return 0
        # An item heavier than the whole channel may have passed when it was empty.
        return max(0, self.capacity - self._depth) if self._depth else self.capacity

    def send_many_nowait(self, items: list[T]) -> None:
        """Appends items of weight one, in order, that ``room()`` said there
        is room for; no overflow policy applies."""
        if self._closed:
            raise ChannelClosed(f"channel {self.name!r} is closed")
        if not items:
            return
        self._items.extend([(item, 1) for item in items])
        self._added(len(items), len(items))

    def send_nowait(self, item: T, weight: int = 1) -> list[T]:
        """Never waits. Returns what the overflow policy dropped to make room:
        the oldest items under drop_oldest, else the new item itself when full."""
        if self._closed:
            raise ChannelClosed(f"channel {self.name!r} is closed")
        dropped: list[T] = []
        if self.overflow == "drop_oldest":
            while not self._fits(weight):
                dropped.append(self._pop())
        elif not self._fits(weight):
            dropped.append(item)
            self._dropped += 1
            return dropped
        self._dropped += len(dropped)
        self._append(item, weight)
        return dropped

    async def receive(self) -> T:
        """The oldest item; raises ChannelClosed once closed and drained."""
        while not self._items:
            if self._closed:
                raise ChannelClosed(f"channel {self.name!r} is closed")
            await self._readable.wait()
        self._received += 1
        return self._pop()

    def receive_nowait(self) -> T | None:
        if not self._items:
            return None
        self._received += 1
        return self._pop()

    def receive_many_nowait(self, limit: int) -> list[T]:
        """The oldest items, up to ``limit`` of them; none when it is empty."""
        items = self._items
        count = min(limit, len(items))
        if count <= 0:
            return []
        taken = [items.popleft() for _ in range(count)]
        self._received += count
        self._removed(sum([weight for _, weight in taken]))
        return [item for item, _ in taken]

    def close(self) -> None:
        """No more sends; receivers drain what is left, then see ChannelClosed."""
        self._closed = True
        self._readable.set()
        self._writable.set()
