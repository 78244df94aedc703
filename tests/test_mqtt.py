"""The MQTT edge against a real Mosquitto: ordered delivery, draining, manual
acks in arrival order, redelivery on a persistent session, flow control,
publishing through a broker restart, the Last Will, TLS and the password file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from broker import Broker, free_port, have_openssl, make_certificates

from gatewayd.errors import ConfigError
from gatewayd.loop import run
from gatewayd.mqtt import (
    Message,
    MqttClient,
    MqttError,
    MqttSettings,
    Will,
    valid_topic_level,
)

T = TypeVar("T")
PROTOCOLS = ["5", "3.1.1"]


def arun(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    return run(asyncio.wait_for(coro, timeout))


def settings(broker: Broker, **kw: Any) -> MqttSettings:
    kw.setdefault("client_id", f"test-{uuid.uuid4().hex[:12]}")
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.3)
    kw.setdefault("connect_timeout_s", 3.0)
    kw.setdefault("keepalive", 10)
    return MqttSettings(host=broker.host, port=broker.port, **kw)


class Inbox:
    """An on_message that keeps what arrives and can ack it at once."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.messages: list[Message] = []
        self.client: MqttClient | None = None
        self._arrived = asyncio.Event()

    def __call__(self, message: Message) -> None:
        self.messages.append(message)
        if self.auto_ack and self.client is not None:
            self.client.ack(message)
        self._arrived.set()

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]

    async def until(self, count: int) -> None:
        while len(self.messages) < count:
            self._arrived.clear()
            await self._arrived.wait()


def client_with_inbox(s: MqttSettings, subscriptions: list[tuple[str, int]], *,
                      auto_ack: bool = True) -> tuple[MqttClient, Inbox]:
    inbox = Inbox(auto_ack=auto_ack)
    client = MqttClient(s, inbox, subscriptions=subscriptions)
    inbox.client = client
    return client, inbox


async def mosquitto_pub(broker: Broker, topic: str, lines: list[bytes], qos: int = 1,
                        *extra: str) -> None:
    """Publishes one message per line from a separate client, in order."""
    process = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-t", topic,
        "-q", str(qos), "-l", *extra, stdin=asyncio.subprocess.PIPE)
    await process.communicate(b"".join(line + b"\n" for line in lines))
    assert process.returncode == 0


def numbered(count: int, prefix: bytes = b"m") -> list[bytes]:
    return [prefix + str(i).encode() for i in range(count)]


def drop_link(client: MqttClient) -> None:
    """Ends the TCP connection without DISCONNECT, as a dead link would."""
    assert client._paho is not None
    sock = client._paho.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


# ---- delivery ----

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_messages_from_another_client_arrive_in_order_with_exact_payloads(
        mosquitto_module: Broker, protocol: str, tmp_path: Path) -> None:
    broker = mosquitto_module
    lines = numbered(200)
    binary = bytes(range(256)) * 4
    (tmp_path / "frame.bin").write_bytes(binary)

    async def main() -> None:
        client, inbox = client_with_inbox(settings(broker, protocol=protocol),
                                          [(f"in-{protocol}/#", 1)])
        async with client:
            await client.wait_ready()
            assert client.connected
            await mosquitto_pub(broker, f"in-{protocol}/gps", lines)
            process = await asyncio.create_subprocess_exec(
                "mosquitto_pub", "-p", str(broker.port), "-t", f"in-{protocol}/lidar",
                "-q", "1", "-f", str(tmp_path / "frame.bin"))
            assert await process.wait() == 0
            await inbox.until(201)
            assert inbox.payloads[:200] == lines
            last = inbox.messages[200]
            assert (last.topic, last.payload, last.qos, last.retain) == (
                f"in-{protocol}/lidar", binary, 1, False)
            assert client.stats().received == 201
            assert client.stats().acked == 201

    arun(main())


@pytest.mark.parametrize("qos", [0, 1])
def test_a_burst_of_small_messages_is_drained_without_loss(
        mosquitto_module: Broker, qos: int) -> None:
    broker = mosquitto_module
    count = 20_000
    lines = numbered(count)

    async def main() -> None:
        client, inbox = client_with_inbox(settings(broker), [(f"burst{qos}/#", qos)])
        async with client:
            await client.wait_ready()
            await mosquitto_pub(broker, f"burst{qos}/x", lines, qos)
            await inbox.until(count)
            assert inbox.payloads == lines
            assert {m.qos for m in inbox.messages} == {qos}
            assert client.stats().unacked == 0

    arun(main(), timeout=60)


# ---- acks and redelivery ----

@pytest.mark.parametrize(("protocol", "how"), [("5", "drop"), ("3.1.1", "exit"),
                                               ("3.1.1", "drop")])
def test_unacked_messages_come_again_after_reconnect_and_pubacks_keep_arrival_order(
        mosquitto_module: Broker, protocol: str, how: str) -> None:
    broker = mosquitto_module
    topic = f"redeliver-{protocol}-{how}"
    s = settings(broker, protocol=protocol)

    async def main() -> None:
        client, inbox = client_with_inbox(s, [(f"{topic}/#", 1)], auto_ack=False)

        async def comes_again() -> None:
            await inbox.until(8)
            again = inbox.messages[:8]
            assert [m.payload for m in again] == numbered(10)[2:]
            assert all(m.dup for m in again)
            # Acks of deliveries from the dropped link are ignored.
            acked = client.stats().acked
            client.ack(first[2])
            assert client.stats().acked == acked
            for m in again:
                client.ack(m)
            await mosquitto_pub(broker, f"{topic}/x", [b"m10"])
            await inbox.until(9)
            assert inbox.payloads == numbered(11)[2:]

        async with client:
            await client.wait_ready()
            await mosquitto_pub(broker, f"{topic}/x", numbered(10))
            await inbox.until(10)
            first = list(inbox.messages)
            # Out of order, and m2 never: only m0 and m1 may be PUBACKed.
            for i in (4, 3, 1, 0):
                client.ack(first[i])
            client.ack(first[1])  # twice does nothing
            assert client.stats().acked == 2
            assert client.stats().unacked == 8
            # Our PUBACK comes back after the broker has read the PUBACKs before it.
            await client.publish(f"{topic}-probe", b"", qos=1)
            inbox.messages.clear()
            if how == "drop":
                drop_link(client)
                await comes_again()
                assert client.stats().reconnects == 1
        if how == "exit":
            async with client:
                await comes_again()

    arun(main())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_broker_sends_no_more_unacked_messages_than_the_window(
        tmp_path: Path, protocol: str) -> None:
    # MQTT 5: our Receive Maximum; MQTT 3.1.1: the broker's max_inflight_messages.
    window = 5
    inflight = 20 if protocol == "5" else window
    with Broker(directory=tmp_path, max_inflight_messages=inflight) as broker:
        s = settings(broker, protocol=protocol, receive_maximum=window)

        async def main() -> None:
            client, inbox = client_with_inbox(s, [("window/#", 1)], auto_ack=False)
            async with client:
                await client.wait_ready()
                await mosquitto_pub(broker, "window/x", numbered(12))
                await inbox.until(window)
                await asyncio.sleep(0.3)
                assert len(inbox.messages) == window
                while len(inbox.messages) < 12:
                    for m in list(inbox.messages):
                        client.ack(m)
                    await inbox.until(min(12, len(inbox.messages) + 1))
                for m in inbox.messages:
                    client.ack(m)
                assert inbox.payloads == numbered(12)

        arun(main())


def test_pause_stops_delivery_and_resume_restarts_it_with_nothing_lost(
        mosquitto_module: Broker) -> None:
    broker = mosquitto_module
    count = 500

    async def main() -> None:
        client, inbox = client_with_inbox(settings(broker), [("pause/#", 1)])
        async with client:
            await client.wait_ready()
            client.pause()
            assert client.paused
            await mosquitto_pub(broker, "pause/x", numbered(count))
            await asyncio.sleep(0.2)
            assert inbox.messages == []
            client.resume()
            await inbox.until(count)
            assert inbox.payloads == numbered(count)

            # Pausing from inside on_message stops the drain at once.
            inbox.messages.clear()

            def pause_at_100(message: Message) -> None:
                inbox(message)
                if len(inbox.messages) == 100:
                    client.pause()

            client._on_message_cb = pause_at_100
            await mosquitto_pub(broker, "pause/x", numbered(count))
            await inbox.until(100)
            await asyncio.sleep(0.2)
            assert len(inbox.messages) == 100
            client.resume()
            await inbox.until(count)
            assert inbox.payloads == numbered(count)

        # Paused while away: the client still connects, and reads nothing more.
        inbox.messages.clear()
        client._on_message_cb = inbox
        await mosquitto_pub(broker, "pause/x", numbered(count))
        client.pause()
        async with client:
            await until(lambda: client.connected)
            await asyncio.sleep(0.2)
            assert inbox.messages == []
            client.resume()
            await client.wait_ready()
            await inbox.until(count)
            assert inbox.payloads == numbered(count)

    arun(main())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_on_messages_takes_runs_in_order_and_what_it_declines_waits_for_resume(
        mosquitto_module: Broker, protocol: str) -> None:
    broker = mosquitto_module
    topic = f"many-{protocol}"
    count = 2000

    async def main() -> None:
        got: list[Message] = []
        runs: list[int] = []
        window = 150  # messages the owner holds unacknowledged at most

        def take(messages: list[Message]) -> int:
            runs.append(len(messages))
            room = max(1, window - len(got))
            took = messages[:room]
            got.extend(took)
            if len(got) >= window:
                client.pause()
            return len(took)

        client = MqttClient(settings(broker, protocol=protocol), got.append,
                            subscriptions=[(f"{topic}/#", 1)], on_messages=take)
        async with client:
            await client.wait_ready()
            publisher = asyncio.ensure_future(
                mosquitto_pub(broker, f"{topic}/x", numbered(count)))
            seen: list[bytes] = []
            while len(seen) < count:
                await until(lambda: bool(got))
                batch, got[:] = got[:], []
                seen += [m.payload for m in batch]
                client.ack_many(batch)  # PUBACKs in one go, in arrival order
                client.resume()
            await publisher
            assert seen == numbered(count)
            assert max(runs) > 1  # runs of packets came together
            await until(lambda: client.stats().acked == count)
            assert client.stats().unacked == 0
            # The PUBACKs are written; a publish of ours acknowledged after
            # them says the broker has read them too (it reads in order).
            await client.publish(f"sync-{protocol}", b"", 1)
        # All acknowledged: nothing comes again on the persistent session.
        got.clear()
        async with client:
            await client.wait_ready()
            await asyncio.sleep(0.3)
            assert got == []

    arun(main())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_paused_client_keeps_no_more_than_max_parked_bytes_and_the_broker_the_rest(
        mosquitto_module: Broker, protocol: str) -> None:
    # The daemon's flow: each input gives a result publish, and is acked once
    # the result's PUBACK is in; a few inputs in progress pause the client,
    # which reads on for those PUBACKs. The broker sends a backlog of large
    # messages at once (150, within our Receive Maximum; Mosquitto 2.0.11 also
    # past it): the client keeps max_parked_bytes of them, leaves the rest
    # with the broker and reconnects to have them sent again. All arrive, in
    # order, once each.
    broker = mosquitto_module
    topic = f"big-{protocol}-{uuid.uuid4().hex}"
    size, bound = 20_000, 200_000
    payloads = [b"%04d" % k + b"." * (size - 4) for k in range(150)]

    async def main() -> None:
        open_: list[Message] = []
        seen: list[bytes] = []
        peak = 0

        def watch() -> None:
            nonlocal peak
            peak = max(peak, client.stats().parked_bytes)

        def done(message: Message, error: MqttError | None) -> None:
            assert error is None
            watch()
            open_.remove(message)
            seen.append(message.payload)
            client.ack(message)
            if len(open_) <= 1:
                client.resume()

        def take(messages: list[Message]) -> int:
            watch()
            took = messages[:max(1, 4 - len(open_))]
            for message in took:
                open_.append(message)
                client.send(f"{topic}/out", message.payload[:4], done, message)
            if len(open_) >= 4:
                client.pause()
            return len(took)

        client = MqttClient(settings(broker, protocol=protocol, max_parked_bytes=bound),
                            lambda m: take([m]), subscriptions=[(topic, 1)], on_messages=take)
        async with client:
            await client.wait_ready()
            await mosquitto_pub(broker, topic, payloads)
            await until(lambda: len(seen) >= len(payloads), 30)
            await asyncio.sleep(0.3)  # anything sent twice would come now
            stats = client.stats()
        assert seen == payloads
        assert stats.left_at_broker > 0 and stats.reconnects >= 1
        assert 0 < peak <= bound
        assert stats.unacked == 0 and stats.parked == 0

    arun(main(), timeout=60)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_send_many_ends_a_run_of_pubacks_through_done_many_once_each(
        mosquitto_module: Broker, protocol: str) -> None:
    broker = mosquitto_module

    async def main() -> None:
        one: list[int] = []
        runs: list[list[int]] = []
        async with MqttClient(settings(broker, protocol=protocol), lambda m: None) as client:
            await client.wait_ready()
            count = 400
            entries = [(f"many-out/{i % 2}", b"r%d" % i, i) for i in range(count)]
            assert client.send_many(entries, lambda token, error: one.append(token),
                                    runs.append) == count
            await until(lambda: len(one) + sum(map(len, runs)) == count)
            ended = one + [token for run in runs for token in run]
            assert sorted(ended) == list(range(count))  # each once
            assert all(run == sorted(run) and run for run in runs)
            assert max(map(len, runs)) > 1
            assert client.stats().published == count and client.pending_publishes == 0

    arun(main())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_paused_client_still_completes_its_publishes_and_keeps_what_arrives_in_order(
        mosquitto_module: Broker, protocol: str) -> None:
    # An owner that pauses until its results are published must not wait forever.
    broker = mosquitto_module
    topic = f"paused-pub-{protocol}"

    async def main() -> None:
        client, inbox = client_with_inbox(settings(broker, protocol=protocol),
                                          [(f"{topic}/in/#", 1)])
        async with client:
            await client.wait_ready()
            client.pause()
            await mosquitto_pub(broker, f"{topic}/in/x", numbered(50))
            for i in range(30):
                await client.publish(f"{topic}/out", b"r%d" % i, qos=1)
            await asyncio.sleep(0.2)
            assert inbox.messages == []
            client.resume()
            await inbox.until(50)
            assert inbox.payloads == numbered(50)
            assert client.stats().published == 30

    arun(main())


def test_after_a_reconnect_only_a_window_of_publishes_goes_out_at_once() -> None:
    # paho marks every unacknowledged publish for sending again; the broker's
    # Receive Maximum allows only so many at a time.
    from paho.mqtt.client import MQTTv5, mqtt_ms_publish, mqtt_ms_queued
    from paho.mqtt.enums import CallbackAPIVersion

    from gatewayd._paho import LeanClient

    client = LeanClient(CallbackAPIVersion.VERSION2, client_id="window", protocol=MQTTv5)
    client.max_inflight_messages_set(0)
    for i in range(50):
        client.publish("t", b"%d" % i, qos=1)  # not connected: all wait to be sent
    client._messages_reconnect_reset_out()
    client.limit_inflight(20)
    states = [m.state for m in client._out_messages.values()]
    assert states == [mqtt_ms_publish] * 20 + [mqtt_ms_queued] * 30
    assert not client.window_full()


def test_a_failing_message_handler_does_not_hold_back_later_acks(
        mosquitto_module: Broker, caplog: pytest.LogCaptureFixture) -> None:
    broker = mosquitto_module

    async def main() -> None:
        inbox = Inbox()

        def handler(message: Message) -> None:
            if message.payload == b"m1":
                raise ValueError("cannot handle this one")
            inbox(message)

        client = MqttClient(settings(broker), handler, subscriptions=[("fail/#", 1)])
        inbox.client = client
        async with client:
            await client.wait_ready()
            await mosquitto_pub(broker, "fail/x", numbered(3))
            await inbox.until(2)
            assert inbox.payloads == [b"m0", b"m2"]
            assert client.stats().acked == 3

    arun(main())
    assert "handling the MQTT message on 'fail/x' failed" in caplog.text


def test_a_failing_handler_of_many_has_them_acked_and_takes_later_ones(
        mosquitto_module: Broker, caplog: pytest.LogCaptureFixture) -> None:
    broker = mosquitto_module

    async def main() -> None:
        got: list[Message] = []
        failed: list[int] = []

        def take(messages: list[Message]) -> int:
            if not failed:
                failed.append(len(messages))
                raise ValueError("cannot handle these")
            got.extend(messages)
            client.ack_many(messages)
            return len(messages)

        client = MqttClient(settings(broker), lambda m: None,
                            subscriptions=[("failmany/#", 1)], on_messages=take)
        async with client:
            await client.wait_ready()
            await mosquitto_pub(broker, "failmany/x", numbered(5))
            await until(lambda: failed and len(got) + failed[0] == 5)
            # The first run's messages were acked as they failed; the rest came.
            assert [m.payload for m in got] == numbered(5)[failed[0]:]
            await until(lambda: client.stats().acked == 5)
        got.clear()
        async with client:  # nothing comes again on the persistent session
            await client.wait_ready()
            await asyncio.sleep(0.3)
            assert got == []

    arun(main())
    assert "handling " in caplog.text and "(the first on 'failmany/x') failed" in caplog.text


# ---- publishing ----

def test_publish_returns_once_the_broker_acknowledged_it(mosquitto_module: Broker) -> None:
    broker = mosquitto_module

    async def main() -> None:
        watcher, seen = client_with_inbox(settings(broker), [("results/#", 1)])
        async with watcher, MqttClient(settings(broker), lambda m: None) as client:
            await watcher.wait_ready()
            await client.wait_ready()
            for i in range(3):
                await client.publish("results/gps", b"r%d" % i, qos=1)
                assert client.pending_publishes == 0
                assert client.stats().published == i + 1
            await client.publish("results/gps", b"r3", qos=0)
            await seen.until(4)
            assert seen.payloads == [b"r0", b"r1", b"r2", b"r3"]

    arun(main())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_of_publishes_arrives_in_order_each_ended_once(
        mosquitto_module: Broker, protocol: str) -> None:
    broker = mosquitto_module

    async def main() -> None:
        watcher, seen = client_with_inbox(settings(broker), [("batch/#", 1)])
        ended: list[tuple[int, MqttError | None]] = []
        async with watcher, MqttClient(settings(broker, protocol=protocol),
                                       lambda m: None) as client:
            await watcher.wait_ready()
            await client.wait_ready()
            count = 300  # many times the broker's window of 20 in flight
            entries = [(f"batch/{i % 3}", b"r%d" % i, i) for i in range(count)]
            assert client.send_many(entries, lambda token, error: ended.append((token, error)))\
                == count
            await seen.until(count)
            await until(lambda: len(ended) == count)
            assert seen.payloads == [b"r%d" % i for i in range(count)]
            assert [m.topic for m in seen.messages] == [f"batch/{i % 3}" for i in range(count)]
            assert sorted(ended, key=lambda e: e[0]) == [(i, None) for i in range(count)]
            assert client.stats().published == count and client.pending_publishes == 0

    arun(main())


def test_a_batch_stops_after_a_publish_refused_at_once(mosquitto_module: Broker) -> None:
    broker = mosquitto_module

    async def main() -> None:
        ended: dict[Any, MqttError | None] = {}

        def done(token: Any, error: MqttError | None) -> None:
            ended[token] = error

        async with MqttClient(settings(broker, max_queued=4), lambda m: None) as client:
            await client.wait_ready()
            # The queue holds four: the fifth is refused before send_many
            # returns, and the rest are left to the caller.
            taken = client.send_many([("out/q", b"%d" % i, i) for i in range(7)], done)
            assert taken == 5 and list(ended) == [4]
            assert isinstance(ended[4], MqttError) and "queue is full" in str(ended[4])
            await until(lambda: len(ended) == 5)
            assert all(ended[i] is None for i in range(4))
            # A topic no PUBLISH may carry is refused in the same way.
            taken = client.send_many([("out/ok", b"a", "a"), ("out/#", b"b", "b"),
                                      ("out/ok", b"c", "c")], done)
            assert taken == 2 and "publish refused" in str(ended["b"])
            await until(lambda: "a" in ended)
            assert ended["a"] is None and "c" not in ended

    arun(main())


def test_publishes_while_the_broker_is_down_are_delivered_after_it_restarts(
        tmp_path: Path) -> None:
    with Broker(directory=tmp_path, persistence=True) as broker:

        async def main() -> None:
            watcher, seen = client_with_inbox(settings(broker, client_id="watcher"),
                                              [("outbox/#", 1)])
            client = MqttClient(settings(broker, client_id="gateway"), lambda m: None)
            async with watcher, client:
                await watcher.wait_ready()
                await client.wait_ready()
                broker.stop()
                await until(lambda: not client.connected)
                sends = [asyncio.create_task(client.publish("outbox/r", b"r%d" % i))
                         for i in range(5)]
                await asyncio.sleep(0.2)
                assert not any(t.done() for t in sends)
                assert client.pending_publishes == 5
                assert client.state in ("connecting", "waiting")
                assert client.last_error
                with pytest.raises(MqttError, match="QoS 0"):
                    await client.publish("outbox/r", b"lost", qos=0)
                broker.start()
                await asyncio.gather(*sends)
                assert client.pending_publishes == 0
                await seen.until(5)
                assert seen.payloads == [b"r%d" % i for i in range(5)]
                assert client.stats().reconnects >= 1

        arun(main())


def test_close_fails_publishes_the_broker_has_not_acknowledged(tmp_path: Path) -> None:
    with Broker(directory=tmp_path) as broker:

        async def main() -> None:
            client = MqttClient(settings(broker), lambda m: None)
            async with client:
                await client.wait_ready()
                broker.stop()
                await until(lambda: not client.connected)
                send = asyncio.create_task(client.publish("outbox/r", b"r"))
                ended: list[tuple[int, MqttError | None]] = []
                assert client.send_many([("outbox/m", b"m%d" % i, i) for i in range(3)],
                                        lambda token, error: ended.append((token, error)),
                                        lambda tokens: ended.extend((t, None) for t in tokens)
                                        ) == 3
                await asyncio.sleep(0.05)
            with pytest.raises(MqttError, match="closed before"):
                await send
            # A batch's publishes end through done, each once, as failures.
            assert [token for token, _ in ended] == [0, 1, 2]
            assert all(isinstance(error, MqttError) and "closed before" in str(error)
                       for _, error in ended)
            assert client.state == "closed"
            with pytest.raises(MqttError, match="not running"):
                await client.publish("outbox/r", b"r")

        arun(main())


# ---- the Last Will ----

def test_the_last_will_is_published_when_the_link_drops_but_not_on_clean_exit(
        mosquitto_module: Broker) -> None:
    broker = mosquitto_module
    status = f"status/{uuid.uuid4().hex[:8]}"
    will = Will(status, b"offline", qos=1, retain=True)

    async def main() -> None:
        watcher, seen = client_with_inbox(settings(broker), [(status, 1)])
        client = MqttClient(settings(broker, will=will), lambda m: None)
        async with watcher:
            await watcher.wait_ready()
            async with client:
                await client.wait_ready()
                await client.publish(status, b"online", retain=True)
                await seen.until(1)
            await asyncio.sleep(0.3)
            assert seen.payloads == [b"online"]

            async with client:
                await client.wait_ready()
                await client.publish(status, b"online", retain=True)
                await seen.until(2)
                drop_link(client)
                await seen.until(3)
                assert seen.payloads == [b"online", b"online", b"offline"]
                assert seen.messages[2].retain is False  # live, though stored retained
                await until(lambda: client.connected)

    arun(main())


# ---- connecting ----

def test_an_unreachable_broker_is_retried_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    s = MqttSettings(host="127.0.0.1", port=free_port(), client_id="nowhere",
                     reconnect_min_s=0.01, reconnect_max_s=0.02)
    caplog.set_level(logging.DEBUG, logger="gatewayd.mqtt")

    async def main() -> None:
        async with MqttClient(s, lambda m: None) as client:
            await asyncio.sleep(0.5)
            assert not client.connected
            assert client.state in ("connecting", "waiting")
            assert client.last_error == "Connection refused"

    arun(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    retries = [r for r in caplog.records if "still unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert "Connection refused" in warnings[0].getMessage()
    assert len(retries) >= 3


def test_a_client_is_reusable_but_not_reentrant(mosquitto_module: Broker) -> None:
    async def main() -> None:
        client = MqttClient(settings(mosquitto_module), lambda m: None)
        async with client:
            with pytest.raises(RuntimeError, match="re-entrant"):
                await client.__aenter__()
            await client.wait_ready()
        assert client.state == "closed"
        async with client:
            await client.wait_ready()
            assert client.connected

    arun(main())


@pytest.mark.skipif(not have_openssl(), reason="the openssl command line is not installed")
def test_tls_with_a_ca_and_a_client_certificate(tmp_path: Path) -> None:
    with Broker(directory=tmp_path, tls=True) as broker:
        assert broker.tls_port is not None and broker.tls_files is not None
        f = broker.tls_files
        s = settings(broker, tls=True, ca_file=f.ca_file, cert_file=f.client_cert,
                     key_file=f.client_key)
        s = dataclasses.replace(s, port=broker.tls_port)
        count = 3000

        async def main() -> None:
            client, inbox = client_with_inbox(s, [("tls/#", 1)])
            async with client:
                await client.wait_ready()
                await client.publish("tls/self", b"over TLS")
                await inbox.until(1)
                # Many packets per TLS record: the drain must see what the TLS
                # layer buffered, which no readable event announces.
                await mosquitto_pub(broker, "tls/x", numbered(count), 0)
                await inbox.until(count + 1)
                assert inbox.payloads == [b"over TLS", *numbered(count)]

        arun(main())


def _publish_packet(topic: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def _serve_one_tls_burst(tmp_path: Path, count: int) -> tuple[int, threading.Thread, Path]:
    """A minimal MQTT 3.1.1 server that answers CONNECT with a CONNACK and
    ``count`` PUBLISHes in one write, so that each TLS record holds many packets."""
    files = make_certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    burst = b"\x20\x02\x00\x00" + b"".join(
        _publish_packet(b"burst/x", line) for line in numbered(count))

    def serve() -> None:
        with contextlib.suppress(OSError), listener:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)  # the CONNECT
                tls.sendall(burst)
                while tls.recv(1024):
                    pass

    thread = threading.Thread(target=serve, name="tls-burst-server", daemon=True)
    thread.start()
    return port, thread, files.ca_file


@pytest.mark.skipif(not have_openssl(), reason="the openssl command line is not installed")
def test_the_drain_reads_what_the_tls_layer_has_buffered(tmp_path: Path) -> None:
    count = 5000
    port, server, ca_file = _serve_one_tls_burst(tmp_path, count)
    s = MqttSettings(host="127.0.0.1", port=port, protocol="3.1.1", client_id="tls-burst",
                     tls=True, ca_file=ca_file, connect_timeout_s=3)

    async def main() -> None:
        client, inbox = client_with_inbox(s, [])
        async with client:
            await inbox.until(count)
            assert inbox.payloads == numbered(count)

    arun(main(), timeout=10)
    server.join(5)


def test_tls_setup_errors_are_mqtt_errors(tmp_path: Path) -> None:
    s = MqttSettings(host="127.0.0.1", tls=True, ca_file=tmp_path / "missing.crt")

    async def main() -> None:
        with pytest.raises(MqttError, match="TLS"):
            async with MqttClient(s, lambda m: None):
                pass

    arun(main())


# ---- the password ----

PASSWORD = "Corr3ct-h0rse-battery"


@pytest.mark.skipif(not Broker.passwd_available(), reason="mosquitto_passwd is not installed")
def test_the_password_is_read_from_a_file_and_never_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = tmp_path / "good"
    good.write_text(PASSWORD + "\n")
    bad = tmp_path / "bad"
    bad.write_text(PASSWORD[::-1])
    with Broker(directory=tmp_path / "broker", users={"gw": PASSWORD}) as broker:
        s_good = settings(broker, username="gw", password_file=good)
        s_bad = settings(broker, username="gw", password_file=bad)
        texts: list[str] = [repr(s_good), repr(s_bad)]

        async def main() -> None:
            client, inbox = client_with_inbox(s_good, [("auth/#", 1)])
            async with client:
                await client.wait_ready()
                await client.publish("auth/x", b"in")
                await inbox.until(1)
                texts.append(repr(client))
            refused = MqttClient(s_bad, lambda m: None)
            async with refused:
                await until(lambda: refused.last_error is not None)
                await asyncio.sleep(0.2)
                assert not refused.connected
                assert "authori" in (refused.last_error or "").lower()
                texts.extend([repr(refused), str(refused.stats())])
            with pytest.raises(MqttError) as missing:
                async with MqttClient(settings(broker, username="gw",
                                               password_file=tmp_path / "nope"),
                                      lambda m: None):
                    pass
            texts.append(str(missing.value))

        arun(main())
    texts.append(caplog.text)
    assert "cannot connect" in caplog.text
    for text in texts:
        assert PASSWORD not in text
        assert PASSWORD[::-1] not in text


# ---- settings and names ----

def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="protocol"):
        MqttSettings(host="h", protocol="4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="receive_maximum"):
        MqttSettings(host="h", receive_maximum=0)
    with pytest.raises(ConfigError, match="reconnect"):
        MqttSettings(host="h", reconnect_min_s=5, reconnect_max_s=1)
    with pytest.raises(ConfigError, match="username"):
        MqttSettings(host="h", password_file="/run/secrets/mqtt")


@pytest.mark.parametrize("text", ["gps1", "lidar-front_2", "Zone 7", "ü", "a" * 64])
def test_valid_topic_level_accepts_plain_names(text: str) -> None:
    assert valid_topic_level(text)


@pytest.mark.parametrize("text", ["a/b", "+", "#", "", "a\0b", "tab\there", "new\nline",
                                  "\x7f", "a" * 65])
def test_valid_topic_level_refuses_separators_wildcards_and_control_chars(text: str) -> None:
    assert not valid_topic_level(text)


# ---- packets read in a run (gw_mqtt_scan) ----
# Packets are written here by hand from the MQTT 3.1.1 and 5.0 specifications
# (section 2 of each: fixed header, remaining length, variable header).

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish(topic: bytes, payload: bytes, qos: int = 1, mid: int = 7, *, v5: bool = True,
             properties: bytes = b"", retain: bool = False, dup: bool = False) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    if v5:
        body += _varint(len(properties)) + properties
    body += payload
    header = 0x30 | qos << 1 | (0x08 if dup else 0) | (0x01 if retain else 0)
    return bytes((header,)) + _varint(len(body)) + body


def _puback(mid: int, reason: int | None = None, properties: bytes | None = None) -> bytes:
    body = mid.to_bytes(2, "big")
    if reason is not None:
        body += bytes((reason,))
    if properties is not None:
        body += _varint(len(properties)) + properties
    return bytes((0x40,)) + _varint(len(body)) + body


def _scan(buf: bytes, pos: int = 0, *, v5: bool = True, capacity: int = 64
          ) -> tuple[list[tuple[Any, ...]], int]:
    """gw_mqtt_scan's run at ``pos``: PUBLISH entries as (topic, payload,
    header, mid), PUBACK ones as (mid, reason, body), and where it stopped."""
    from gatewayd._native import ffi, lib

    out = ffi.new("int64_t[]", capacity * lib.GW_MQTT_ENTRY)
    end = ffi.new("int64_t *")
    count = lib.gw_mqtt_scan(buf, len(buf), pos, v5, True, out, capacity, end)
    got = []
    for k in range(count):
        h, a, b, c, d, e, stop = out[k * 7:k * 7 + 7]
        if h & 0xF0 == 0x30:
            got.append((buf[a:b], buf[d:e], h, c))
        else:
            got.append((a, b, buf[d:e]))
        pos = stop
    assert end[0] == pos
    return got, pos


def test_a_run_of_plain_packets_is_read_whole_and_stops_before_anything_else() -> None:
    big = bytes(range(256)) * 80  # 20 480 bytes: a three-byte remaining length
    plain = [_publish(b"gw/in/gps/a", b"x" * 100), _puback(9), _puback(10, 0),
             _publish(b"t", big, qos=0, retain=True), _puback(11, 0x80, b""),
             _publish(b"t/2", b"", dup=True, mid=65535)]
    got, end = _scan(b"".join(plain))
    assert got == [(b"gw/in/gps/a", b"x" * 100, 0x32, 7), (9, 0, b"\x00\x09"),
                   (10, 0, b"\x00\x0a\x00"), (b"t", big, 0x31, 0),
                   (11, 0x80, b"\x00\x0b\x80\x00"), (b"t/2", b"", 0x3A, 65535)]
    assert end == len(b"".join(plain))
    # Each of these ends the run before it: Python reads it (paho, where it must).
    for other in (_publish(b"t", b"p", properties=b"\x01\x01"),  # properties
                  _publish(b"", b"p", properties=b"\x23\x00\x01"),  # a topic alias
                  _publish(b"t", b"p", qos=2),
                  b"\xd0\x00",  # PINGRESP
                  b"\x90\x04\x00\x01\x00\x01",  # SUBACK
                  b"\x36\x05\x00\x01t\x00",  # QoS 3: malformed
                  b"\x32\x02\x00\x09",  # a topic longer than the packet
                  b"\x32\xff\xff\xff\xff\x01"):  # a remaining length of five bytes
        buf = plain[0] + other + plain[1]
        assert _scan(buf) == ([got[0]], len(plain[0])), other
        assert _scan(buf, len(plain[0])) == ([], len(plain[0])), other
    for cut in range(1, len(plain[1]) + 1):  # not all here yet
        buf = plain[0] + plain[1][:-cut]
        assert _scan(buf) == ([got[0]], len(plain[0])), cut
    # MQTT 3.1.1: no properties; a PUBACK is two bytes.
    v3 = _publish(b"a", b"b", v5=False) + _puback(3)
    assert _scan(v3, v5=False)[0] == [(b"a", b"b", 0x32, 7), (3, 0, b"\x00\x03")]
    assert _scan(_puback(3, 0) + v3, v5=False) == ([], 0)
    # No more than asked for at once.
    assert _scan(b"".join(plain), capacity=2) == (got[:2], len(plain[0] + plain[1]))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_drain_reads_runs_and_single_packets_alike(
        mosquitto_module: Broker, protocol: str) -> None:
    # QoS 0 and 1 without properties go through the run; with properties, and
    # QoS 2, through paho: all arrive, whole, once each, and QoS 1's in order.
    import paho.mqtt.client as paho_client
    from paho.mqtt.properties import Properties

    s = settings(mosquitto_module, protocol=protocol)
    topic = f"run/{uuid.uuid4().hex}"
    sent: list[bytes] = []

    async def main() -> list[bytes]:
        client, inbox = client_with_inbox(s, [(topic, 2)])
        async with client:
            await client.wait_ready()
            version = paho_client.MQTTv5 if protocol == "5" else paho_client.MQTTv311
            pub = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2, protocol=version)
            pub.connect(mosquitto_module.host, mosquitto_module.port)
            pub.loop_start()
            try:
                for k in range(600):
                    payload = b"%d" % k + b"." * (k * 37 % 3000)
                    sent.append(payload)
                    props = None
                    if protocol == "5" and k % 50 == 0:
                        props = Properties(paho_client.PacketTypes.PUBLISH)
                        props.UserProperty = ("k", str(k))
                    pub.publish(topic, payload, qos=(0, 1, 1, 2)[k % 4], properties=props)
                await asyncio.wait_for(inbox.until(len(sent)), 20)
            finally:
                pub.loop_stop()
                pub.disconnect()
            return inbox.payloads

    got = arun(main(), timeout=30)
    assert sorted(got) == sorted(sent)
    qos1 = {p for k, p in enumerate(sent) if k % 4 in (1, 2)}
    assert [p for p in got if p in qos1] == [p for p in sent if p in qos1]


@pytest.mark.parametrize("v5", [True, False])
def test_a_lean_publish_is_the_packet_the_specification_describes(v5: bool) -> None:
    import paho.mqtt.client as paho_client

    from gatewayd._paho import LeanClient

    client = LeanClient(paho_client.CallbackAPIVersion.VERSION2,
                        protocol=paho_client.MQTTv5 if v5 else paho_client.MQTTv311)
    # Remaining lengths of one, two and three bytes, and each boundary.
    for topic in (b"gw/out/gps/a", b"t" * 300):
        around = 2 + len(topic) + (3 if v5 else 2)  # topic length, topic, id, (properties)
        for size in sorted({0, 1, 600, 70_000} | {max(0, r - around) for r in (127, 128,
                                                                             16383, 16384)}):
            for retain in (False, True):
                payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
                assert client._queue_lean(topic, payload, retain, lambda *a: None, None) is None
                mid = client._lean_unsent[-1]
                assert client._lean[mid].packet == _publish(topic, payload, mid=mid, v5=v5,
                                                            retain=retain), (topic, size)
            # A batch: a topic seen before, and one not (the first of each size).
            fresh = b"fresh/%d" % size + topic
            assert client.publish_lean_many([(t, payload, None) for t in (topic, fresh, topic)],
                                            lambda *a: None) == 3
            for mid, t in zip(list(client._lean_unsent)[-3:], (topic, fresh, topic)):
                assert client._lean[mid].packet == _publish(t, payload, mid=mid, v5=v5), \
                    (t, size)
    for bad in (b"", b"a/+", b"#", b"x" * 65536):
        assert "invalid topic" in str(client._queue_lean(bad, b"p", False, lambda *a: None, None))
