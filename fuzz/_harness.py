"""What every fuzz target checks: only the project's own errors leave a decoder.

A decoder may refuse any input with a GatewayError (DecodeError, InputTooLarge,
FormatError). Anything else that escapes, a warning included, is a crash that
libFuzzer records, except the inputs still known to be mishandled: those are
counted and let through, so that a run goes on looking for new ones. The same
list is in tests/test_fuzz_properties.py, each entry with a strict xfail test
there; an entry goes once its test passes.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

from gatewayd.errors import GatewayError

KNOWN: list[tuple[str, type[BaseException], str]] = []

_seen: Counter[str] = Counter()


def known(label: str) -> None:
    """Counts an input that hit a known bug; the first one of each is logged
    (libFuzzer ends the process without running exit handlers)."""
    _seen[label] += 1
    if _seen[label] == 1:
        print(f"known bug hit: {label}", file=sys.stderr, flush=True)


def check(call: Callable[[], Any]) -> Any:
    """``call()``'s result or its GatewayError; any other exception goes on
    to libFuzzer as a crash, unless it is a known one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return call()
        except GatewayError as exc:
            return exc
        except Exception as exc:
            for label, kind, text in KNOWN:
                if isinstance(exc, kind) and text in str(exc):
                    known(label)
                    return exc
            raise
