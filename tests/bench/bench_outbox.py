"""Benchmark of the outbox's batched appends beside a write and fsync per entry.

    .venv/bin/python tests/bench/bench_outbox.py [--quick] [--dir PATH]

200-byte results go into the outbox with its default batching (one write and
one fsync at most every 0.2 s, or per 256 KiB), beside the naive spool: the
same frames, each written and fsynced on its own. Two loads: a burst (every
entry put at once, as when the broker drops with results in flight) and a
steady 500 entries/s (a broker down for a while). For each: entries/s made
durable, entries per fsync, and bytes per entry, both as written by the
process and as counted by the kernel towards the device (``write_bytes`` in
/proc/self/io: what wears an SD card). Point ``--dir`` at the card itself for
the figures that matter; medians of interleaved runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import Table

from gatewayd.outbox import Entry, Outbox, OutboxSettings, encode

PAYLOAD = 200


def _entries(n: int) -> list[Entry]:
    return [Entry("gw/out/gps/gps0", os.urandom(PAYLOAD), f"{i:064x}") for i in range(n)]


def _device_bytes() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Run:
    def __init__(self, entries: int, seconds: float, fsyncs: int, written: int,
                 device: int) -> None:
        self.rate = entries / seconds
        self.per_fsync = entries / max(fsyncs, 1)
        self.written = written / entries
        self.device = device / entries


def _ours(directory: Path, entries: list[Entry], pace: float | None) -> Run:
    async def main() -> Run:
        async with Outbox(OutboxSettings(directory, max_bytes=1 << 30)) as box:
            before = _device_bytes()
            start = time.perf_counter()
            futures = []
            for i, e in enumerate(entries):
                futures.append(box.put(e))
                if pace:
                    await asyncio.sleep(max(0.0, start + (i + 1) / pace -
                                            time.perf_counter()))
            await asyncio.gather(*futures)
            seconds = time.perf_counter() - start
            stats = box.stats()
        return Run(len(entries), seconds, stats.fsyncs, stats.bytes_written,
                   _device_bytes() - before)

    return asyncio.run(main())


def _naive(directory: Path, entries: list[Entry], pace: float | None) -> Run:
    frames = [encode(e) for e in entries]
    before = _device_bytes()
    start = time.perf_counter()
    written = 0
    fd = os.open(directory / "spool", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for i, frame in enumerate(frames):
            written += os.write(fd, frame)
            os.fsync(fd)
            if pace:
                time.sleep(max(0.0, start + (i + 1) / pace - time.perf_counter()))
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    return Run(len(frames), seconds, len(frames), written, _device_bytes() - before)


def _median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def bench(table: Table, base: Path, name: str, n_ours: int, n_naive: int,
          pace: float | None, repeat: int) -> None:
    fns: dict[str, tuple[Callable[[Path, list[Entry], float | None], Run], int]] = {
        "ours": (_ours, n_ours), "naive": (_naive, n_naive)}
    runs: dict[str, list[Run]] = {"ours": [], "naive": []}
    for _ in range(repeat):
        for who, (fn, n) in fns.items():
            directory = Path(tempfile.mkdtemp(prefix=f"outbox-{who}-", dir=base))
            try:
                runs[who].append(fn(directory, _entries(n), pace))
            finally:
                shutil.rmtree(directory)
    ours, naive = runs["ours"], runs["naive"]
    peer = "write+fsync per entry"
    if pace is None:  # paced, both keep up: the rate says nothing
        table.add(f"{name}: entries durable", _median(ours, "rate"), _median(naive, "rate"),
                  "entries/s", peer, ">= 1x")
    table.add(f"{name}: entries per fsync", _median(ours, "per_fsync"),
              _median(naive, "per_fsync"), "entries", peer)
    device = _median(ours, "device"), _median(naive, "device")
    if all(device):  # 0 where the kernel does not count (tmpfs, some containers)
        table.add(f"{name}: entries per MiB to the device", (1 << 20) / device[0],
                  (1 << 20) / device[1], "entries/MiB", peer, ">= 1x")
    print(f"{name}: bytes per entry written {_median(ours, 'written'):.0f} (naive "
          f"{_median(naive, 'written'):.0f}); towards the device "
          f"{_median(ours, 'device'):.0f} (naive {_median(naive, 'device'):.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short run of each")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.gettempdir())
    repeat = 1 if args.quick else 3
    table = Table(f"outbox: {PAYLOAD}-byte entries, default batching, in {base}")
    bench(table, base, "burst", 5_000 if args.quick else 50_000,
          500 if args.quick else 2_000, None, repeat)
    bench(table, base, "500/s", 500 if args.quick else 1_500,
          500 if args.quick else 1_500, 500.0, repeat)
    table.print()
    table.save("outbox")


if __name__ == "__main__":
    main()
