"""Timing and printing shared by the benchmarks: medians of interleaved runs,
ratios beside the peer measured in the same run."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).parent / "out"


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {model or 'unknown CPU'}"


def median_seconds(
    runs: dict[str, Callable[[], None]],
    *,
    repeat: int = 5,
    setup: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Runs each callable ``repeat`` times, interleaved, and returns medians."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


class Table:
    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[dict[str, object]] = []

    def add(self, case: str, ours: float, peer: float | None, unit: str,
            peer_name: str = "", target: str = "") -> None:
        """ours and peer are rates (higher is better) in ``unit``."""
        ratio = ours / peer if peer else None
        self.rows.append({"case": case, "ours": ours, "peer": peer, "peer_name": peer_name,
                          "unit": unit, "ratio": ratio, "target": target})

    def print(self) -> None:
        print(f"\n## {self.title}  ({machine()})")
        print(f"{'case':44} {'gatewayd':>14} {'peer':>14}  {'ratio':>6}  target")
        for r in self.rows:
            if not isinstance(r["ours"], (int, float)):
                continue
            peer = f"{r['peer']:>14,.0f}" if r["peer"] else f"{'':>14}"
            ratio = f"{r['ratio']:6.2f}x" if r["ratio"] else "       "
            label = f"{r['unit']}; peer: {r['peer_name']}" if r["peer_name"] else r["unit"]
            print(f"{r['case']:44} {r['ours']:>14,.0f} {peer} {ratio}  {r['target']}  [{label}]")

    def save(self, name: str) -> None:
        OUT.mkdir(exist_ok=True)
        (OUT / f"{name}.json").write_text(
            json.dumps({"title": self.title, "machine": machine(), "rows": self.rows}, indent=2)
        )


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmSize, VmRSS, VmHWM of a process in kB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmSize", "VmRSS", "VmHWM", "VmPeak"):
            fields[key] = int(value.split()[0])
    return fields
