"""The event loop: uvloop where it has a wheel, plain asyncio elsewhere
(armv7); and the probe that measures how late it runs what is due."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["LagProbe", "loop_name", "run"]


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def loop_name() -> str:
    return "uvloop" if _uvloop() is not None else "asyncio"


def run(coro: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    uvloop = _uvloop() if use_uvloop else None
    if uvloop is None:
        if use_uvloop:
            logger.info("uvloop is not available here; running on plain asyncio")
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class LagProbe:
    """How late the event loop wakes a task that asked to sleep ``period``
    seconds: the last ``keep`` figures, in seconds, in ``lags``.

    The probe wakes every ``period`` while ``busy()`` says there is work.
    Once it has said otherwise ``quiet_after`` times in a row, the probe
    sleeps ``idle_period`` at a time until it says so again: an idle gateway
    is not woken twenty times a second only to be measured, and a wake-up
    costs a small board power and heat. Lateness is measured just the same
    either way."""

    def __init__(self, busy: Callable[[], bool], *, period: float = 0.05,
                 idle_period: float = 1.0, quiet_after: int = 20, keep: int = 1200,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._busy = busy
        self.period = period
        self.idle_period = idle_period
        self.quiet_after = quiet_after
        self._sleep = sleep
        self.lags: collections.deque[float] = collections.deque(maxlen=keep)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        quiet = 0  # probes in a row that found no work
        while True:
            period = self.idle_period if quiet >= self.quiet_after else self.period
            due = loop.time() + period
            await self._sleep(period)
            self.lags.append(max(0.0, loop.time() - due))
            quiet = 0 if self._busy() else quiet + 1

    def figures_ms(self) -> dict[str, float]:
        """p50, p99 and max of the figures kept, in milliseconds ({} before the first)."""
        lags = sorted(self.lags)
        if not lags:
            return {}

        def pick(q: float) -> float:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 2)

        return {"p50": pick(0.5), "p99": pick(0.99), "max": round(lags[-1] * 1000, 2)}
