"""Benchmark of MQTT ingest: gatewayd's client beside mosquitto_sub.

    .venv/bin/python tests/bench/bench_mqtt_client.py [--quick] [--count N] [--protocol 5]

A broker from tests/broker.py holds a backlog of N small messages for a
persistent session; the receiver connects and the clock runs until it has all
N. Receivers, interleaved and repeated (medians):

- gatewayd's MqttClient, draining the socket on each readable event;
- the same client reading one packet per readable event (paho's loop_read as
  documented), the design the drain replaces;
- mosquitto_sub -C N, the C client, on the same broker in the same run.

The "busy loop" cases run a task beside the client that works 0.2 ms on every
turn of the event loop, as the daemon's other stages do; there one read per
event is bound to the turns of the loop, and draining is not.

QoS 1 messages are acked as they arrive (manual acks, in order). Saves the
figures to tests/bench/out/mqtt_client.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _report import Table  # noqa: E402
from broker import Broker  # noqa: E402

from gatewayd.loop import loop_name, run  # noqa: E402
from gatewayd.mqtt import Message, MqttClient, MqttSettings  # noqa: E402

TOPIC = "bench/ingest"
BUSY_S = 0.0002  # other work per turn of the loop in the "busy loop" cases


class _OneReadPerEvent(MqttClient):
    """The naive wiring: paho's own client, one loop_read() per readable event."""

    _paho_class = paho.Client

    def _on_readable(self) -> None:
        if self._paho is not None and self._sock is not None and not self._paused:
            self._paho.loop_read()


def _settings(broker: Broker, client_id: str, protocol: str) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, client_id=client_id,
                        protocol=protocol, receive_maximum=65535, keepalive=60)  # type: ignore[arg-type]


async def _busy(cost_s: float) -> None:
    """Stands in for the rest of the daemon: other work on every turn of the loop."""
    while True:
        until = time.perf_counter() + cost_s
        while time.perf_counter() < until:
            pass
        await asyncio.sleep(0)


async def _receive(client_type: type[MqttClient], s: MqttSettings, qos: int,
                   count: int, busy_s: float = 0.0) -> float:
    """Seconds from connecting until ``count`` messages arrived (0: only subscribe)."""
    other = asyncio.create_task(_busy(busy_s)) if busy_s else None
    done = asyncio.Event()
    received = 0
    client: MqttClient

    def on_message(message: Message) -> None:
        nonlocal received
        received += 1
        client.ack(message)
        if received >= count:
            done.set()

    client = client_type(s, on_message, subscriptions=[(f"{TOPIC}/#", qos)])
    start = time.perf_counter()
    async with client:
        await client.wait_ready()
        if count:
            await done.wait()
        seconds = time.perf_counter() - start
    if other is not None:
        other.cancel()
    return seconds


async def _publish_all(s: MqttSettings, qos: int, count: int) -> None:
    async with MqttClient(s, lambda m: None) as client:
        await client.wait_ready()
        for start in range(0, count, 10_000):  # MQTT has 65535 packet ids
            await asyncio.gather(*(client.publish(f"{TOPIC}/x", b"telemetry-%08d" % i, qos)
                                   for i in range(start, min(count, start + 10_000))))


def _preload(broker: Broker, client_id: str, protocol: str, qos: int, count: int) -> None:
    """Makes the session, then leaves ``count`` messages waiting in it."""
    run(_receive(MqttClient, _settings(broker, client_id, protocol), qos, 0))
    # Our own publisher, as it waits for every PUBACK (mosquitto_pub -l may
    # leave before its queue is out).
    publisher = dataclasses.replace(_settings(broker, f"{client_id}-pub", protocol),
                                    max_inflight=1000, max_queued=20_000)
    run(_publish_all(publisher, qos, count))
    time.sleep(0.2)


def _ours(broker: Broker, protocol: str, qos: int, count: int,
          client_type: type[MqttClient], busy_s: float = 0.0) -> float:
    client_id = f"bench-{uuid.uuid4().hex[:10]}"
    _preload(broker, client_id, protocol, qos, count)
    seconds = run(_receive(client_type, _settings(broker, client_id, protocol), qos, count,
                           busy_s))
    return count / seconds


def _mosquitto_sub(broker: Broker, protocol: str, qos: int, count: int) -> float:
    client_id = f"bench-{uuid.uuid4().hex[:10]}"
    _preload(broker, client_id, protocol, qos, count)
    version = ["-V", "mqttv5", "-x", "3600"] if protocol == "5" else []
    start = time.perf_counter()
    subprocess.run(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-c", "-i",
                    client_id, "-q", str(qos), "-t", f"{TOPIC}/#", "-C", str(count), *version],
                   stdout=subprocess.DEVNULL, check=True)
    return count / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    args = ap.parse_args()
    count = 20_000 if args.quick else args.count
    repeat = 1 if args.quick else args.repeat

    table = Table(f"MQTT ingest of a {count:,}-message backlog, MQTT {args.protocol}, "
                  f"{loop_name()}")
    busy_count = min(count, 20_000)  # one read per turn is slow on a busy loop
    with Broker(max_inflight_messages=0, max_queued_messages=count * 2,
                queue_qos0_messages=True) as broker:
        for qos in (0, 1):
            rates: dict[str, list[float]] = {k: [] for k in
                                             ("drain", "one", "peer", "busy_drain", "busy_one")}
            for _ in range(repeat):
                p, q = args.protocol, qos
                rates["drain"].append(_ours(broker, p, q, count, MqttClient))
                rates["one"].append(_ours(broker, p, q, count, _OneReadPerEvent))
                rates["peer"].append(_mosquitto_sub(broker, p, q, count))
                rates["busy_drain"].append(_ours(broker, p, q, busy_count, MqttClient, BUSY_S))
                rates["busy_one"].append(_ours(broker, p, q, busy_count, _OneReadPerEvent,
                                               BUSY_S))
            m = {k: statistics.median(v) for k, v in rates.items()}
            table.add(f"QoS {qos}: MqttClient, draining", m["drain"], m["peer"], "msgs/s",
                      "mosquitto_sub", ">45k")
            table.add(f"QoS {qos}: MqttClient, one read per event", m["one"], m["peer"],
                      "msgs/s", "mosquitto_sub")
            table.add(f"QoS {qos}: busy loop, draining", m["busy_drain"], m["busy_one"],
                      "msgs/s", "busy loop, one read per event", ">45k")
            table.add(f"QoS {qos}: busy loop, one read per event", m["busy_one"], m["peer"],
                      "msgs/s", "mosquitto_sub")
    table.print()
    table.save("mqtt_client")


if __name__ == "__main__":
    main()
