"""The event loop: uvloop where it has a wheel, plain asyncio elsewhere (armv7)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["loop_name", "run"]


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
