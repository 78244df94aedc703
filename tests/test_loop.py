"""The event loop's lag probe: how often it wakes, with work and without, and
what it measures."""

from __future__ import annotations

import asyncio
import time

import pytest

from gatewayd.loop import LagProbe


class _Done(Exception):
    pass


def test_the_probe_wakes_every_period_with_work_and_once_a_second_after_a_quiet_spell():
    # What busy() answers after each wake-up: work, a quiet spell longer than
    # quiet_after, one wake-up with work, then quiet again.
    answers = iter([True] * 5 + [False] * 25 + [True] + [False] * 3)
    periods: list[float] = []

    async def sleep(period: float) -> None:
        periods.append(period)
        if len(periods) == 35:
            raise _Done
        await asyncio.sleep(0)

    probe = LagProbe(lambda: next(answers), period=0.05, idle_period=1.0, quiet_after=20,
                     sleep=sleep)
    with pytest.raises(_Done):
        asyncio.run(probe.run())
    # 5 with work and 20 quiet at the period; then the idle period until work
    # comes back, and the period again at once.
    assert periods == [0.05] * 25 + [1.0] * 6 + [0.05] * 4
    assert len(probe.lags) == 34


def test_the_probe_measures_how_late_a_blocked_loop_wakes_it():
    async def main() -> dict[str, float]:
        probe = LagProbe(lambda: True, period=0.01)
        task = asyncio.create_task(probe.run())
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the loop is blocked: the probe's wake-up is late
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return probe.figures_ms()

    figures = asyncio.run(main())
    assert figures["max"] >= 250
    assert figures["p50"] <= figures["p99"] <= figures["max"]


def test_the_probe_has_no_figures_before_its_first_wake_up():
    assert LagProbe(lambda: True).figures_ms() == {}
