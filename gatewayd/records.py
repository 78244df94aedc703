"""Result records: the JSON documents replay writes and the daemon publishes.

Every record carries a deterministic id (SHA-256 of source, input bytes and
item index), so that re-processing the same input yields the same ids and
consumers can de-duplicate; and its lineage: which input, which operation,
which CRSs, which gatewayd on which host.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gatewayd import __version__

__all__ = [
    "DEAD_LETTER_REASONS",
    "Lineage",
    "dead_letter",
    "dumps",
    "input_digest",
    "json_value",
    "record_id",
    "utc_now",
]

# Stable reason codes a dead letter may carry.
DEAD_LETTER_REASONS = frozenset(
    {"bad_input", "too_large", "timeout", "worker_died", "memory", "crs", "geometry",
     "unsupported_format", "error"}
)

_HOST = socket.gethostname()


def input_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_id(source: str, input_sha256: str, index: int | str) -> str:
    """Deterministic in the source, the input bytes and the item's index."""
    return hashlib.sha256(f"{source}\0{input_sha256}\0{index}".encode()).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Lineage:
    input_sha256: str
    operation: str
    crs_from: str | None
    crs_to: str | None
    version: str = __version__
    host: str = _HOST

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_sha256": self.input_sha256,
            "operation": self.operation,
            "crs_from": self.crs_from,
            "crs_to": self.crs_to,
            "version": self.version,
            "host": self.host,
        }


def base_record(
    kind: str,
    *,
    source: str,
    input_sha256: str,
    index: int | str,
    received_at: str,
    lineage: Lineage,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": record_id(source, input_sha256, index),
        "source": source,
        "received_at": received_at,
        "processed_at": utc_now(),
        "lineage": lineage.as_dict(),
    }


def dead_letter(
    reason: str,
    detail: str,
    *,
    source: str,
    input_sha256: str,
    items: Iterable[int | str],
    received_at: str,
    operation: str = "decode",
) -> dict[str, Any]:
    """A record for input that could not be processed, naming what was lost."""
    if reason not in DEAD_LETTER_REASONS:
        reason = "error"
    item_list = list(items)
    rec = base_record(
        "dead_letter",
        source=source,
        input_sha256=input_sha256,
        index=f"dead:{reason}:{item_list[0] if item_list else ''}",
        received_at=received_at,
        lineage=Lineage(input_sha256, operation, None, None),
    )
    rec.update({"reason": reason, "detail": detail, "items": item_list,
                "input_sha256": input_sha256})
    return rec


def dumps(record: Mapping[str, Any]) -> str:
    """One record as a compact JSON line. NaN never reaches a record: it would
    not be JSON, so it is refused here rather than written."""
    return json.dumps(record, separators=(",", ":"), allow_nan=False)


def json_value(text: str | None) -> Any:
    """GeoJSON (or any JSON) text from GEOS as a value to embed in a record."""
    return json.loads(text) if text else None
