"""Chunk handlers for the worker-pool tests, imported by dotted path in workers."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import time
from typing import Any

from gatewayd.errors import DecodeError

_state: dict[str, Any] = {}


def init(tag: str) -> None:
    if tag == "die":  # as a worker killed while it starts (a bad library, say)
        os._exit(3)
    if tag == "hang":  # as a worker stuck while it starts (an import from a failing disk)
        time.sleep(3600)
    if tag == "refuse":
        raise RuntimeError("cannot start with these settings")
    _state["tag"] = tag


def handle(task: tuple[str, Any]) -> Any:
    op, arg = task
    if op == "echo":
        return (_state["tag"], os.getpid(), arg)
    if op == "sleep":
        time.sleep(arg)
        return os.getpid()
    if op == "hang":
        while True:
            pass
    if op == "segfault":
        ctypes.string_at(0)
    if op == "kill_self":
        os.kill(os.getpid(), signal.SIGKILL)
    if op == "allocate_mb":
        return len(bytearray(arg * 1024 * 1024))
    if op == "map_mb":  # as a worker maps a shared frame
        with mmap.mmap(-1, arg * 1024 * 1024) as m:
            return len(m)
    if op == "limits":
        with open("/proc/self/limits") as f:
            return f.read(), dict(os.environ)
    if op == "big":
        return os.urandom(16) * (arg // 16)
    if op == "length":
        return len(arg)
    if op == "bad_input":
        raise DecodeError("that is not NMEA")
    if op == "bug":
        raise KeyError(arg)
    if op == "scale_shared":
        handle_, factor = arg
        view = handle_.array()
        view *= factor
        return float(view.sum())
    raise ValueError(op)


def broken_init(tag: str) -> None:
    raise RuntimeError(f"cannot start: {tag}")


def hang_on_fixes(task: Any) -> Any:
    """A handler for pipeline tasks that never finishes a chunk of fixes."""
    from gatewayd.processing import FixTask
    from gatewayd.processing import handle as real

    if isinstance(task, FixTask):
        while True:
            time.sleep(1)
    return real(task)
