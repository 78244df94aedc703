"""Bounded channels: backpressure, overflow policies, weights and statistics."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.channel import Channel, ChannelClosed


def run(coro):
    return asyncio.run(coro)


def test_send_waits_while_full_and_resumes_when_drained():
    async def main():
        ch: Channel[int] = Channel(2)
        await ch.send(1)
        await ch.send(2)
        blocked = asyncio.create_task(ch.send(3))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        assert await ch.receive() == 1
        await asyncio.wait_for(blocked, 1)
        assert [await ch.receive(), await ch.receive()] == [2, 3]
        assert ch.stats().peak == 2 and ch.stats().dropped == 0

    run(main())


def test_drop_oldest_makes_room_and_counts_every_drop():
    async def main():
        ch: Channel[int] = Channel(3, overflow="drop_oldest")
        dropped = [d for i in range(5) for d in ch.send_nowait(i)]
        assert dropped == [0, 1]
        assert ch.stats().dropped == 2
        assert [ch.receive_nowait() for _ in range(3)] == [2, 3, 4]

    run(main())


def test_block_policy_refuses_the_new_item_without_waiting_when_full():
    async def main():
        ch: Channel[str] = Channel(1)
        assert ch.send_nowait("a") == []
        assert ch.send_nowait("b") == ["b"]
        assert ch.stats().dropped == 1
        assert await ch.receive() == "a"

    run(main())


def test_weights_bound_the_channel_and_an_oversized_item_passes_alone():
    async def main():
        ch: Channel[str] = Channel(10)
        await ch.send("frame", weight=50)  # empty channel: it passes
        assert ch.stats().depth == 50
        waiting = asyncio.create_task(ch.send("fix", weight=1))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert await ch.receive() == "frame"
        await asyncio.wait_for(waiting, 1)
        assert ch.stats().peak == 50

    run(main())


def test_close_lets_receivers_drain_then_signals_the_end():
    async def main():
        ch: Channel[int] = Channel(5)
        await ch.send(1)
        ch.close()
        assert await ch.receive() == 1
        with pytest.raises(ChannelClosed):
            await ch.receive()
        with pytest.raises(ChannelClosed):
            await ch.send(2)

    run(main())


def test_close_wakes_a_sender_blocked_on_a_full_channel():
    async def main():
        ch: Channel[int] = Channel(1)
        await ch.send(1)
        blocked = asyncio.create_task(ch.send(2))
        await asyncio.sleep(0.01)
        ch.close()
        with pytest.raises(ChannelClosed):
            await asyncio.wait_for(blocked, 1)

    run(main())


def test_items_in_bulk_keep_the_bound_the_order_and_the_books():
    async def main():
        ch: Channel[int] = Channel(5)
        assert ch.room() == 5
        ch.send_many_nowait([1, 2, 3])
        assert ch.room() == 2 and ch.stats().depth == 3
        # A sender waiting for room is woken by a bulk receive.
        ch.send_many_nowait([4, 5])
        blocked = asyncio.create_task(ch.send(6))
        await asyncio.sleep(0.01)
        assert not blocked.done() and ch.room() == 0
        assert ch.receive_many_nowait(2) == [1, 2]
        await asyncio.wait_for(blocked, 1)
        assert ch.receive_many_nowait(10) == [3, 4, 5, 6]
        assert ch.receive_many_nowait(10) == [] and ch.receive_nowait() is None
        stats = ch.stats()
        assert (stats.sent, stats.received, stats.depth, stats.peak) == (6, 6, 0, 5)
        # A receiver waiting on an empty channel is woken by a bulk send.
        waiting = asyncio.create_task(ch.receive())
        await asyncio.sleep(0.01)
        ch.send_many_nowait([7, 8])
        assert await asyncio.wait_for(waiting, 1) == 7
        # Past an item heavier than the channel, there is no room for more.
        assert ch.receive_many_nowait(1) == [8]
        ch.send_nowait(9, weight=7)
        assert ch.room() == 0
        ch.close()
        assert ch.room() == 0
        with pytest.raises(ChannelClosed):
            ch.send_many_nowait([10])

    run(main())
