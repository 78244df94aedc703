"""Results out: published, or spooled to a real outbox, and the inputs of each
released or abandoned exactly once. The MQTT client is an in-process fake
that holds its PUBACKs until the test gives them."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

from gatewayd.mqtt import MqttError
from gatewayd.outbox import Outbox, OutboxSettings
from gatewayd.results import ResultSender


class FakeClient:
    """MqttClient's publishing side: ``send`` takes a publish, ``ack`` or
    ``fail`` ends the oldest one as the broker would."""

    def __init__(self, connected: bool = True, room: int | None = None) -> None:
        self.connected = connected
        self.room = room  # publishes taken before the queue is full (None: no limit)
        self.sent: collections.deque[tuple[str, bytes, Any, Any]] = collections.deque()
        self.published: list[tuple[str, bytes]] = []
        self.batches: list[int] = []  # entries of each send_many

    def send(self, topic: str, payload: bytes, done: Any, token: Any) -> None:
        if self.room is not None and len(self.sent) >= self.room:
            done(token, MqttError("the MQTT outgoing queue is full"))  # at once, as MqttClient
            return
        self.sent.append((topic, payload, done, token))

    def send_many(self, entries: list[tuple[str, bytes, Any]], done: Any,
                  done_many: Any = None) -> int:
        """As MqttClient.send_many: stops after a publish refused at once."""
        self.batches.append(len(entries))
        for taken, (topic, payload, token) in enumerate(entries, 1):
            before = len(self.sent)
            self.send(topic, payload, done, token)
            if len(self.sent) == before:
                return taken
            if done_many is not None:
                self.sent[-1] += (done_many,)
        return len(entries)

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.published.append((topic, payload))

    def ack(self) -> None:
        _, _, done, token, *_ = self.sent.popleft()
        done(token, None)

    def ack_together(self, n: int) -> None:
        """Ends the ``n`` oldest as one run of PUBACKs read at once would:
        through send_many's ``done_many``."""
        ended = [self.sent.popleft() for _ in range(n)]
        assert all(len(e) == 5 and e[4] == ended[0][4] for e in ended)
        ended[0][4]([e[3] for e in ended])

    def fail(self) -> None:
        _, _, done, token, *_ = self.sent.popleft()
        done(token, MqttError("the broker refused the publish"))


class Books:
    def __init__(self) -> None:
        self.released: list[object] = []
        self.abandoned: list[object] = []
        self.counts: collections.Counter[str] = collections.Counter()

    def sender(self, timeout_s: float = 5.0) -> ResultSender:
        return ResultSender(timeout_s=timeout_s, release=self.released.extend,
                            abandon=self.abandoned.extend, counts=self.counts)


async def _outbox(tmp_path: Path) -> Outbox:
    outbox = Outbox(OutboxSettings(tmp_path / "outbox", segment_bytes=4096, max_bytes=1 << 20,
                                   fsync_interval_s=0.01))
    await outbox.open()
    return outbox


async def _until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.01)


def test_inputs_are_released_by_their_results_pubacks_in_any_order():
    async def main():
        books = Books()
        sender = books.sender()
        client = FakeClient()
        sender.attach(client)
        for n in range(3):
            sender.send(f"t/{n}", b"r%d" % n, (f"in{n}",), f"id{n}")
        assert [t for t, *_ in client.sent] == ["t/0", "t/1", "t/2"] and sender.busy
        client.sent.rotate(-1)  # the broker acknowledges t/1 first
        client.ack()
        assert books.released == ["in1"]
        client.ack()
        client.ack()
        assert books.released == ["in1", "in2", "in0"] and not books.abandoned
        assert not sender.busy

    asyncio.run(main())


def test_a_result_past_its_deadline_is_spooled_once_and_its_late_puback_changes_nothing(
        tmp_path):
    async def main():
        books = Books()
        sender = books.sender(timeout_s=0.1)
        outbox = sender.outbox = await _outbox(tmp_path)
        client = FakeClient()
        sender.attach(client)
        sender.send("t/late", b"late", ("in0",), "id0")
        await _until(lambda: books.released)
        assert books.released == ["in0"] and books.counts["spooled"] == 1
        assert [(e.topic, e.payload, e.record_id) for e in await outbox.take(10)] == \
            [("t/late", b"late", "id0")]
        client.ack()  # the broker had it after all: the input is not released twice
        assert books.released == ["in0"] and not sender.busy
        await outbox.close()

    asyncio.run(main())


def test_while_results_are_spooled_new_ones_go_behind_them(tmp_path):
    async def main():
        books = Books()
        sender = books.sender(timeout_s=60.0)
        outbox = sender.outbox = await _outbox(tmp_path)
        client = FakeClient(connected=False)
        sender.attach(client)
        sender.send("t/0", b"0", ("in0",), "id0")  # the link is down: spooled
        client.connected = True
        # The first is not on disk yet: the second goes behind it all the same.
        sender.send("t/1", b"1", ("in1",), "id1")
        await _until(lambda: len(books.released) == 2)
        assert not client.sent and books.released == ["in0", "in1"]
        assert [e.topic for e in await outbox.take(10)] == ["t/0", "t/1"]
        await outbox.close()

    asyncio.run(main())


def test_a_refused_publish_is_spooled_or_without_an_outbox_abandoned(tmp_path):
    async def main():
        books = Books()
        sender = books.sender()
        client = FakeClient()
        sender.attach(client)
        sender.send("t/0", b"0", ("in0",), "id0")
        client.fail()
        assert books.abandoned == ["in0"] and books.counts["publish_failed"] == 1
        outbox = sender.outbox = await _outbox(tmp_path)
        sender.send("t/1", b"1", ("in1",), "id1")
        client.fail()
        await _until(lambda: books.released)
        assert books.released == ["in1"] and books.abandoned == ["in0"]
        assert len(outbox) == 1
        await outbox.close()

    asyncio.run(main())


def test_once_intake_has_stopped_a_late_result_is_abandoned_not_spooled(tmp_path):
    async def main():
        books = Books()
        sender = books.sender(timeout_s=0.05)
        outbox = sender.outbox = await _outbox(tmp_path)
        sender.attach(FakeClient())
        sender.spooling = False
        sender.send("t/0", b"0", ("in0",), "id0")
        await _until(lambda: books.abandoned)
        assert books.abandoned == ["in0"] and not books.released and len(outbox) == 0
        await outbox.close()

    asyncio.run(main())


def test_once_intake_has_stopped_a_result_with_no_input_at_the_broker_is_still_spooled(
        tmp_path):
    # A serial port's fix has no input a broker would send again: giving its
    # result up would lose it, so late or refused, it goes to the outbox.
    async def main():
        books = Books()
        sender = books.sender(timeout_s=0.05)
        outbox = sender.outbox = await _outbox(tmp_path)
        client = FakeClient()
        sender.attach(client)
        sender.spooling = False
        sender.send("t/late", b"late", (), "id-late")
        sender.send("t/refused", b"refused", (), "id-refused")
        client.sent.rotate(-1)
        client.fail()  # t/refused
        await _until(lambda: books.counts["spooled"] == 2)
        assert not books.abandoned and books.counts["publish_failed"] == 0
        assert sorted(e.record_id for e in await outbox.take(10)) == ["id-late", "id-refused"]
        await outbox.close()

    asyncio.run(main())


def test_a_stop_whose_grace_is_over_spools_the_results_on_their_way_that_have_no_input(
        tmp_path):
    async def main():
        books = Books()
        sender = books.sender(timeout_s=60.0)
        outbox = sender.outbox = await _outbox(tmp_path)
        client = FakeClient()
        sender.attach(client)
        sender.send("t/mqtt", b"m", ("in0",), "id-mqtt")
        sender.send("t/serial", b"s", (), "id-serial")
        sender.spooling = False
        await sender.settle(time.monotonic() + 0.05)
        await outbox.close()  # writes what the settle put in it
        # The MQTT input stays unacknowledged at the broker for the next start;
        # the serial fix's result waits in the outbox.
        assert not books.released and not books.abandoned
        again = await _outbox(tmp_path)
        assert [(e.topic, e.record_id) for e in await again.take(10)] == \
            [("t/serial", "id-serial")]
        await again.close()
        client.ack()
        client.ack()  # the broker had them after all: nothing is released twice
        assert books.released == ["in0"]

    asyncio.run(main())


def test_a_result_sent_while_the_client_is_replaced_goes_out_through_the_next():
    async def main():
        books = Books()
        sender = books.sender()
        old, new = FakeClient(), FakeClient()
        sender.attach(old)
        sender.detach()
        sender.send("t/0", b"0", ("in0",), "id0")
        await asyncio.sleep(0.05)
        assert not old.sent and not old.published and sender.busy
        sender.attach(new)
        await _until(lambda: books.released)
        assert new.published == [("t/0", b"0")] and books.released == ["in0"]
        await sender.settle(time.monotonic() + 1)
        assert not sender.busy

    asyncio.run(main())


def test_settle_waits_only_until_its_deadline_and_leaves_the_rest_unreleased():
    async def main():
        books = Books()
        sender = books.sender(timeout_s=0.05)
        sender.attach(FakeClient())
        sender.send("t/0", b"0", ("in0",), "id0")
        start = time.monotonic()
        await sender.settle(start + 0.02)
        assert time.monotonic() - start < 1.0 and sender.busy
        await asyncio.sleep(0.1)  # its deadline timer was stopped with the settle
        assert not books.released and not books.abandoned

    asyncio.run(main())


def test_a_chunk_of_results_goes_out_in_one_batch_and_each_is_released_by_its_puback():
    async def main():
        books = Books()
        sender = books.sender()
        client = FakeClient()
        sender.attach(client)
        sender.send_many([(f"t/{n}", b"r%d" % n, (f"in{n}",), f"id{n}") for n in range(4)])
        assert client.batches == [4]
        assert [t for t, *_ in client.sent] == [f"t/{n}" for n in range(4)]
        client.sent.rotate(-2)  # the broker acknowledges the last two first
        for _ in range(4):
            client.ack()
        assert books.released == ["in2", "in3", "in0", "in1"] and not sender.busy

    asyncio.run(main())


def test_results_acknowledged_together_release_their_inputs_once_in_order():
    async def main():
        books = Books()
        sender = books.sender(timeout_s=0.1)
        client = FakeClient()
        sender.attach(client)
        sender.send_many([("t/0", b"0", ("in0", "in0b"), "id0")])
        await _until(lambda: books.abandoned)  # past its deadline, and no outbox
        assert books.abandoned == ["in0", "in0b"] and not books.released
        sender.send_many([(f"t/{n}", b"%d" % n, (f"in{n}",), f"id{n}") for n in (1, 2, 3)])
        # One run of PUBACKs: the late one (dealt with already) and the next two.
        client.ack_together(3)
        assert books.released == ["in1", "in2"] and sender.busy
        client.ack_together(1)
        assert books.released == ["in1", "in2", "in3"] and not sender.busy
        assert books.abandoned == ["in0", "in0b"]

    asyncio.run(main())


def test_a_publish_refused_in_a_batch_is_spooled_and_the_rest_go_behind_it(tmp_path):
    async def main():
        books = Books()
        sender = books.sender(timeout_s=60.0)
        outbox = sender.outbox = await _outbox(tmp_path)
        client = FakeClient(room=2)
        sender.attach(client)
        sender.send_many([(f"t/{n}", b"%d" % n, (f"in{n}",), f"id{n}") for n in range(5)])
        # Two were taken; the third was refused at once and went to the outbox,
        # and the two after it went behind it, not to the broker ahead of it.
        assert [t for t, *_ in client.sent] == ["t/0", "t/1"]
        await _until(lambda: len(books.released) == 3)
        assert sorted(books.released) == ["in2", "in3", "in4"]
        assert [e.topic for e in await outbox.take(10)] == ["t/2", "t/3", "t/4"]
        client.ack()
        client.ack()
        assert sorted(books.released) == [f"in{n}" for n in range(5)] and not books.abandoned
        assert not sender.busy
        await outbox.close()

    asyncio.run(main())


def test_without_an_outbox_a_publish_refused_in_a_batch_is_abandoned_alone():
    async def main():
        books = Books()
        sender = books.sender()
        client = FakeClient(room=1)
        sender.attach(client)
        sender.send_many([(f"t/{n}", b"%d" % n, (f"in{n}",), f"id{n}") for n in range(2)])
        assert books.abandoned == ["in1"] and [t for t, *_ in client.sent] == ["t/0"]
        client.room = None
        sender.send_many([("t/2", b"2", ("in2",), "id2")])
        client.ack()
        client.ack()
        assert books.released == ["in0", "in2"] and not sender.busy

    asyncio.run(main())


def test_a_batch_while_the_link_is_down_is_spooled_in_order(tmp_path):
    async def main():
        books = Books()
        sender = books.sender()
        outbox = sender.outbox = await _outbox(tmp_path)
        client = FakeClient(connected=False)
        sender.attach(client)
        sender.send_many([(f"t/{n}", b"%d" % n, (f"in{n}",), f"id{n}") for n in range(3)])
        await _until(lambda: len(books.released) == 3)
        assert not client.sent and not client.batches
        assert [e.topic for e in await outbox.take(10)] == ["t/0", "t/1", "t/2"]
        await outbox.close()

    asyncio.run(main())
