"""Shared fixtures: paths and small builders used across the suite."""

from __future__ import annotations

from pathlib import Path

import pytest
from broker import mosquitto, mosquitto_module  # noqa: F401  (the real broker's fixtures)

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA
