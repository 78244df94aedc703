"""Benchmark of the serial source at 921 600 baud, beside a bare descriptor reader.

    .venv/bin/python tests/bench/bench_serial.py [--quick]

A fake receiver (its own process, on a pty, paced at baud/10 bytes a second)
talks to a SerialPort whose owner decodes every block with NmeaDecoder, as the
daemon does, on plain asyncio and on uvloop. For each run: bytes/s and
sentences/s read, bytes lost (must be 0), the receiver's peak backlog (how far
the reader fell behind), and the reader's CPU time per megabyte, decoding
included. The peer is the least a reader can do: ``loop.add_reader`` and
``os.read`` straight off the descriptor, no pyserial and no decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from _report import Table
from receiver import FakeReceiver

from gatewayd.nmea import NmeaDecoder
from gatewayd.serialport import PortSettings, SerialPort

BAUD = 921600


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _serialport(receiver: FakeReceiver, limit: int) -> tuple[int, int, float, float]:
    decoder = NmeaDecoder()
    got = 0

    def on_data(name: str, data: bytes) -> None:
        nonlocal got
        got += len(data)
        decoder.feed(data)

    port = SerialPort(PortSettings("gps0", str(receiver.path), baud=BAUD), on_data)
    task = asyncio.create_task(port.run())
    while port.status.state != "open":
        await asyncio.sleep(0.005)
    seconds, cpu = await _drive(receiver, limit, lambda: got)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return got, decoder.stats().sentences, seconds, cpu


async def _bare(receiver: FakeReceiver, limit: int) -> tuple[int, int, float, float]:
    fd = os.open(receiver.tty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    got = 0

    def readable() -> None:
        nonlocal got
        got += len(os.read(fd, 16384))

    loop.add_reader(fd, readable)
    try:
        seconds, cpu = await _drive(receiver, limit, lambda: got)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return got, 0, seconds, cpu


async def _drive(receiver: FakeReceiver, limit: int,
                 got: Callable[[], int]) -> tuple[float, float]:
    """Has the receiver send ``limit`` bytes; returns the wall and CPU seconds until
    all it wrote was read."""
    mark = receiver.mark()
    start, cpu = time.perf_counter(), _cpu_s()
    receiver.start(limit=limit)
    while not receiver.done:
        await asyncio.sleep(0.01)
    total = len(receiver.written(mark))
    deadline = time.monotonic() + 10
    while got() < total and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    return time.perf_counter() - start, _cpu_s() - cpu


def _run(reader: str, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
         limit: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, \
            FakeReceiver(Path(tmp) / "gps0", rate=BAUD) as receiver, \
            asyncio.Runner(loop_factory=loop_factory) as runner:
        overrun_before = receiver.overrun
        if reader == "serialport":
            got, sentences, seconds, cpu = runner.run(_serialport(receiver, limit))
        else:
            got, sentences, seconds, cpu = runner.run(_bare(receiver, limit))
        written = len(receiver.written())
        return {"bytes_s": got / seconds, "sentences_s": sentences / seconds,
                "lost": written - got + receiver.overrun - overrun_before,
                "peak_backlog": receiver.peak_backlog, "cpu_s_per_mb": cpu / (got / 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of 300 kB each")
    args = parser.parse_args()
    limit, repeats = (300_000, 1) if args.quick else (1_000_000, 3)
    table = Table(f"serial source at {BAUD:,} baud ({limit:,} bytes a run)")
    for loop_name, factory in (("asyncio", None), ("uvloop", uvloop.new_event_loop)):
        ours = [_run("serialport", factory, limit) for _ in range(repeats)]
        peer = [_run("bare", factory, limit) for _ in range(repeats)]

        def median(runs: list[dict[str, float]], key: str) -> float:
            return statistics.median(run[key] for run in runs)

        table.add(f"{loop_name}: bytes/s read", median(ours, "bytes_s"),
                  median(peer, "bytes_s"), "B/s", "add_reader + os.read",
                  target=f"{BAUD / 10:,.0f} (line rate)")
        table.add(f"{loop_name}: sentences/s decoded", median(ours, "sentences_s"), None,
                  "sentences/s")
        table.add(f"{loop_name}: kB read per CPU second (decoding too)",
                  1000 / median(ours, "cpu_s_per_mb"), 1000 / median(peer, "cpu_s_per_mb"),
                  "kB/CPU s", "add_reader + os.read, no decoding")
        lost = max(run["lost"] for run in ours)
        backlog = max(run["peak_backlog"] for run in ours)
        print(f"{loop_name}: lost {lost:,.0f} B (must be 0), peak backlog {backlog:,.0f} B; "
              f"peer lost {max(run['lost'] for run in peer):,.0f} B")
    table.print()
    table.save("serial")


if __name__ == "__main__":
    main()
