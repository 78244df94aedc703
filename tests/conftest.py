"""Shared fixtures: paths and small builders used across the suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from broker import mosquitto, mosquitto_module  # noqa: F401  (the real broker's fixtures)
from emulation import TIME_SCALE

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Timeouts that tests set for themselves scale under emulation
    # (emulation.TIME_SCALE), as the run's default timeout does.
    if TIME_SCALE == 1:
        return
    for item in items:
        marker = item.get_closest_marker("timeout")
        seconds = marker and (marker.args[0] if marker.args else marker.kwargs.get("timeout"))
        if seconds:
            item.add_marker(pytest.mark.timeout(seconds * TIME_SCALE), append=False)
