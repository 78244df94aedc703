"""``gatewayd status``: the local daemon's state, for a person at a terminal.

The daemon writes its status JSON to ``<daemon.runtime_dir>/status.json`` at
every status interval (the same document as the retained status topic), so
this works over SSH on a gateway whose broker is out of reach. A file older
than three intervals means the daemon is not updating it: it is reported as
not responding.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from gatewayd.config import Config
from gatewayd.errors import GatewayError

__all__ = ["NotRunning", "read_status", "render_status"]


class NotRunning(GatewayError):
    """No status to read, or one too old: the daemon is not running here."""

    exit_code = 3
    reason = "not_running"


def read_status(config: Config, now: float | None = None) -> tuple[dict[str, Any], float]:
    """The status document and its age in seconds."""
    path = Path(config.daemon.runtime_dir) / "status.json"
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise NotRunning(f"gatewayd is not running here (no {path})") from None
    except (OSError, ValueError) as exc:
        raise NotRunning(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict):
        raise NotRunning(f"{path} holds no status")
    return document, age


def _fmt_counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _fmt_intake(status: dict[str, Any]) -> str:
    """What the MQTT intake holds back now, and has left with the broker or
    lost since its client was made, where any of it is not zero: nothing to
    say of a gateway that has kept up."""
    intake = status.get("mqtt_intake")
    if not isinstance(intake, dict):
        return ""
    parts = ["paused"] if intake.get("paused") else []
    if intake.get("parked"):
        parts.append(f"{intake['parked']} parked ({intake.get('parked_bytes', 0)} bytes)")
    if intake.get("left_at_broker"):
        parts.append(f"{intake['left_at_broker']} left at the broker to send again")
    if intake.get("dropped_qos0"):
        parts.append(f"{intake['dropped_qos0']} QoS 0 dropped")
    if intake.get("reconnects"):
        parts.append(f"{intake['reconnects']} reconnects")
    return f" ({', '.join(parts)})" if parts else ""


def render_status(status: dict[str, Any], age_s: float, interval_s: float) -> str:
    state = status.get("state", "unknown")
    if age_s > 3 * interval_s and state != "offline":
        state = f"not responding (last update {age_s:.0f} s ago, was {state})"
    lines = [f"gatewayd {status.get('version', '?')} on {status.get('gateway', '?')}: {state}"]
    uptime = status.get("uptime_s")
    if isinstance(uptime, int | float):
        h, rest = divmod(int(uptime), 3600)
        lines.append(f"  uptime      {h}h {rest // 60:02d}m {rest % 60:02d}s")
    lines.append(f"  mqtt        {status.get('mqtt', '?')}{_fmt_intake(status)}")
    for name, src in sorted((status.get("sources") or {}).items()):
        detail = f" ({src['reason']})" if src.get("reason") else ""
        baud = f" at {src['baud']} baud" if src.get("baud") else ""
        lost = ""
        if src.get("dropped") or src.get("spilled"):
            lost = f", {src.get('dropped', 0)} dropped, {src.get('spilled', 0)} spilled"
        lines.append(f"  serial {name:<5}{src.get('state', '?')}{baud}{detail}{lost}")
    queue = status.get("queue") or {}
    if queue:
        lines.append(f"  queue       {queue.get('depth')}/{queue.get('capacity')} "
                     f"(peak {queue.get('peak')})")
    chunk = status.get("chunk_size")
    temp = status.get("temperature_c")
    thermal = f", {temp:.1f} °C ({status.get('thermal')})" if isinstance(temp, int | float) \
        else ""
    lines.append(f"  chunk size  {chunk}{thermal}")
    workers = status.get("workers") or {}
    if workers:
        lines.append(f"  workers     {workers.get('alive')} alive, {workers.get('restarts')} "
                     f"restarts, {workers.get('timeouts')} timeouts")
    rates = status.get("rates") or {}
    if rates:
        lines.append(f"  rates       in {rates.get('in_per_s')}/s, out {rates.get('out_per_s')}/s")
    lag = status.get("loop_lag_ms") or {}
    if lag:
        lines.append(f"  loop lag    p50 {lag.get('p50')} ms, p99 {lag.get('p99')} ms, "
                     f"max {lag.get('max')} ms")
    lines.append(f"  dead letters {_fmt_counts(status.get('dead_letters') or {})}")
    return "\n".join(lines)
