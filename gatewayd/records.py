"""Result records: the JSON documents replay writes and the daemon publishes.

Every record carries a deterministic id (SHA-256 of source, input bytes and
item index), so that re-processing the same input yields the same ids and
consumers can de-duplicate; and its lineage: which input, which operation,
which CRSs, which gatewayd on which host.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gatewayd import __version__

__all__ = [
    "DEAD_LETTER_REASONS",
    "JsonText",
    "LineRecord",
    "Lineage",
    "Record",
    "content_digest",
    "dead_letter",
    "dumps",
    "dumps_members",
    "dumps_value",
    "input_digest",
    "record_id",
    "record_ids",
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


def record_ids(source: str, input_sha256: str, indices: Iterable[int]) -> list[str]:
    """``record_id`` of many items of one input."""
    prefix = f"{source}\0{input_sha256}\0"
    sha256 = hashlib.sha256
    return [sha256(f"{prefix}{index}".encode()).hexdigest() for index in indices]


def utc_now() -> str:
    """The time now, as ``datetime.now(UTC)`` gives it in ISO 8601 to the
    millisecond (cut, not rounded), with a Z: "2026-12-01T18:58:24.123Z"."""
    global _second
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    last = _second  # one tuple, whatever another thread does meanwhile
    if seconds != last[0]:  # the date and time to the second, once a second
        last = _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return f"{last[1]}.{ns // 1_000_000:03d}Z"


_second: tuple[int, str] = (-1, "")  # utc_now's last second, and its text


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


class JsonText(Mapping[str, Any]):
    """A JSON object kept as the text it came as (a geometry GEOS wrote, say)
    and parsed only when read: a record's line takes the text as it is, so
    the object is neither parsed nor encoded again on its way out."""

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value: dict[str, Any] | None = None

    def value(self) -> dict[str, Any]:
        if self._value is None:
            parsed = json.loads(self.text)
            if not isinstance(parsed, dict):
                raise ValueError("JsonText holds a JSON object")
            self._value = parsed
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self.value()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.value())

    def __len__(self) -> int:
        return len(self.value())

    def __repr__(self) -> str:
        return f"JsonText({self.text!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return JsonText, (self.text,)


def _default(value: Any) -> Any:
    if isinstance(value, JsonText):
        return value.value()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_default)
# json.dumps builds an encoder per call, which costs as much as encoding a fix
# record: one is kept instead, json's own C encoder where there is one. It
# skips the check for circular references, which records, trees made here,
# cannot have.
def _c_encoder(key_separator: str = ":", item_separator: str = ",", *, sort_keys: bool = False,
               allow_nan: bool = False) -> Any:
    make = getattr(json.encoder, "c_make_encoder", None)
    try:
        return make(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None,
                    key_separator, item_separator, sort_keys, False,
                    allow_nan) if make is not None else None
    except TypeError:  # pragma: no cover - another Python's private signature
        return None


_encode = _c_encoder()
# json.dumps(value, sort_keys=True), for content digests.
_encode_sorted = _c_encoder(": ", ", ", sort_keys=True, allow_nan=True)


def content_digest(value: Mapping[str, Any]) -> str:
    """SHA-256 of ``json.dumps(value, sort_keys=True)``: names a live fix by
    its own content, where there is no file to hash."""
    if _encode_sorted is not None and type(value) is dict:
        text = "".join(_encode_sorted(value, 0))
    else:
        text = json.dumps(value, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class Record(dict[str, Any]):
    """A record made together with its JSON line (``line``), which ``dumps``
    gives back instead of encoding the record again. It cannot be changed,
    which would part it from its line; a copy (``dict(record)``) can."""

    __slots__ = ("line",)

    def __init__(self, fields: Mapping[str, Any], line: str) -> None:
        dict.__init__(self, fields)
        self.line = line

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a record made with its JSON line cannot be changed; copy it")

    __setitem__ = __delitem__ = __ior__ = _refuse
    update = pop = popitem = setdefault = clear = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (dict(self),)


class LineRecord:
    """A record that is only its JSON line, with the members it is routed by
    at hand: for a publisher that sends records and reads nothing else of
    them. ``fields()`` reads the rest from the line."""

    __slots__ = ("id", "kind", "line", "source")

    def __init__(self, kind: str, record_id: str, source: str, line: str) -> None:
        self.kind = kind
        self.id = record_id
        self.source = source
        self.line = line

    def fields(self) -> dict[str, Any]:
        """The record as a dict, as ``Record`` would hold it."""
        return json.loads(self.line)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"LineRecord({self.line})"


def dumps_value(value: Any) -> str:
    """Any JSON value, as ``dumps`` writes it inside a record."""
    return _ENCODER.encode(value)


def dumps_members(value: Mapping[str, Any]) -> str:
    """A dict's members as ``dumps`` writes them, without the braces: to
    splice into a record's line."""
    return dumps(value)[1:-1]


def dumps(record: Mapping[str, Any] | LineRecord) -> str:
    """One record as a compact JSON line, as ``json.dumps`` with compact
    separators writes it. NaN never reaches a record: it would not be JSON, so
    it is refused here (ValueError) rather than written."""
    if type(record) is Record or type(record) is LineRecord:
        return record.line
    if _encode is not None and type(record) is dict:
        return "".join(_encode(record, 0))
    return _ENCODER.encode(record)
