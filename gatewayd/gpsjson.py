"""gpsd TPV objects and OwnTracks locations (JSON) as TPV fields: the GPS
messages MQTT brings that are not NMEA.

A TPV of the plain shape gpsd and most publishers write is read in C
(``gw_tpv_parse``), which also writes its fields as JSON members, as json
writes them, for its record's line; anything else is read by Python's json,
which says why a document is refused. Both give the same fields:
``tests/test_fuzz_properties.py`` holds them to it.
"""

from __future__ import annotations

import json
import json.scanner
import math
import operator
import struct
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gatewayd._native import ffi, lib
from gatewayd.errors import DecodeError

__all__ = ["gps_json_fix", "gps_json_tpv"]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


_TPV_NUMBERS = ("lat", "lon", "altMSL", "altHAE", "alt", "speed", "track", "climb", "magvar",
                "eph", "epx", "epy", "epv")
# json's C scanner: one call for a document that json.loads would take as it
# is; anything else (whitespace around it, an error) goes to json.loads.
_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _json_object(data: bytes) -> Any:
    # json.loads reads bytes that open with "{" and a second non-NUL byte as
    # UTF-8 (no BOM, not UTF-16/32), and decodes them with surrogatepass.
    if data[:1] == b"{" and data[1:2] not in (b"", b"\0"):
        try:
            text = data.decode("utf-8", "surrogatepass")
            doc, end = _scan(text, 0)
        except (StopIteration, ValueError, UnicodeDecodeError):
            pass
        else:
            if end == len(text):
                return doc
    return json.loads(data)


def gps_json_tpv(data: bytes) -> dict[str, Any]:
    """A gpsd TPV object or an OwnTracks location, as TPV fields.

    Raises DecodeError for anything else, or a position out of range."""
    return gps_json_fix(data)[0]


def gps_json_fix(data: bytes) -> tuple[dict[str, Any], str | None]:
    """``gps_json_tpv(data)``, and the same fields but "class" as JSON members
    (as ``records.dumps`` writes them) where they come at no extra cost: a
    TPV of the plain shape is read in C (gw_tpv_parse) and its members are
    written from the values read; anything else is read by Python's json
    (None)."""
    if type(data) is not bytes:
        data = bytes(data)  # a bytearray or memoryview, say: what follows slices bytes
    try:
        fix, view = _mine.fix
    except AttributeError:
        fix = ffi.new("gw_tpv *")
        fix, view = _mine.fix = fix, ffi.buffer(fix)
    if lib.gw_tpv_parse(data, len(data), fix):
        return _plain_tpv(data, view)
    return _json_tpv(data), None


# Each thread's gw_tpv, which gw_tpv_parse fills in anew for every document,
# and a view of its bytes.
_mine = threading.local()
# gw_tpv up to its members' text, read in one call: mode, present,
# alt_msl_named, time_start, time_len, values, members_len (native layout).
_TPV_HEAD = struct.Struct("@iIiqq13dq")
if _TPV_HEAD.size != ffi.offsetof("gw_tpv", "members"):  # pragma: no cover - a build error
    raise ImportError("gw_tpv's layout is not the one gpsjson reads")
_MEMBERS = _TPV_HEAD.size

# gw_tpv's values, by bit of gw_tpv.present, with "alt" named altMSL where
# the document has no "altMSL" (bit 13 of a plan's key says it has one).
_TPV_ALT = _TPV_NUMBERS.index("alt")
_Plan = tuple[tuple[str, ...], Callable[[Sequence[float]], Sequence[float]], str]
_tpv_plans: dict[int, _Plan] = {}


def _tpv_plan(key: int) -> _Plan:
    index = [k for k in range(len(_TPV_NUMBERS)) if key >> k & 1]
    names = tuple("altMSL" if k == _TPV_ALT and not key >> len(_TPV_NUMBERS) & 1
                  else _TPV_NUMBERS[k] for k in index)
    pick: Callable[[Sequence[float]], Sequence[float]] = \
        operator.itemgetter(*index) if len(index) > 1 else \
        (lambda values: tuple(values[k] for k in index))  # one: itemgetter gives no tuple
    # repr of a float is what json writes; a plain TPV's values are finite.
    template = "".join(f',"{name}":{{!r}}' for name in names)
    plan = _tpv_plans[key] = (names, pick, template)
    return plan


def _plain_tpv(data: bytes, view: Any) -> tuple[dict[str, Any], str]:
    # view: the bytes of the gw_tpv that gw_tpv_parse wrote
    mode, present, alt_msl_named, start, time_len, *numbers, size = \
        _TPV_HEAD.unpack_from(view)
    tpv: dict[str, Any] = {"class": "TPV", "mode": mode}
    if start >= 0:
        # Printable ASCII without quotes or backslashes: json writes it as it is.
        tpv["time"] = time = data[start:start + time_len].decode("ascii")
    key = present | alt_msl_named << len(_TPV_NUMBERS)
    names, pick, template = _tpv_plans.get(key) or _tpv_plan(key)
    values = pick(numbers) if names else ()
    tpv.update(zip(names, values))
    if size >= 0:
        return tpv, view[_MEMBERS:_MEMBERS + size].decode("ascii")
    head = f'"mode":{mode},"time":"{time}"' if start >= 0 else f'"mode":{mode}'
    return tpv, head + template.format(*values)


def _json_tpv(data: bytes) -> dict[str, Any]:
    # gps_json_tpv, by Python's json: any document.
    try:
        doc = _json_object(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"GPS JSON does not parse: {exc}") from None
    except RecursionError:
        raise DecodeError("GPS JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise DecodeError("GPS JSON must be an object")
    tpv: dict[str, Any] = {"class": "TPV"}
    get = doc.get
    if get("class") == "TPV":
        mode = get("mode")
        tpv["mode"] = mode if type(mode) is int and mode in (1, 2, 3) else 1
        if isinstance(get("time"), str):
            tpv["time"] = doc["time"]
        isfinite = math.isfinite
        for name in _TPV_NUMBERS:
            value = get(name)
            # _number, inline: JSON numbers are exactly int or float (bool is not one).
            if type(value) is float:
                if not isfinite(value):
                    continue
            elif type(value) is int:
                value = _number(value)
                if value is None:
                    continue
            else:
                continue
            tpv["altMSL" if name == "alt" and "altMSL" not in doc else name] = value
    elif doc.get("_type") == "location":
        lat, lon = _number(doc.get("lat")), _number(doc.get("lon"))
        if lat is None or lon is None:
            raise DecodeError("OwnTracks location without lat and lon")
        tpv.update({"mode": 2, "lat": lat, "lon": lon})
        tst = _number(doc.get("tst"))
        if tst is not None:
            try:
                when = datetime.fromtimestamp(tst, UTC)
            except (OverflowError, ValueError, OSError):
                raise DecodeError(f"OwnTracks tst {tst:g} is not a time") from None
            tpv["time"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        alt = _number(doc.get("alt"))
        if alt is not None:
            tpv.update({"mode": 3, "altMSL": alt})
        for src, dst, scale in (("vel", "speed", 1 / 3.6), ("cog", "track", 1.0),
                                ("acc", "eph", 1.0), ("vac", "epv", 1.0)):
            value = _number(doc.get(src))
            if value is not None:
                tpv[dst] = value * scale
    else:
        raise DecodeError("GPS JSON is neither a gpsd TPV nor an OwnTracks location")
    lat, lon = tpv.get("lat"), tpv.get("lon")
    if (lat is None) != (lon is None):
        raise DecodeError("GPS JSON gives only one of lat and lon")
    if lat is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180):  # type: ignore[operator]
        raise DecodeError(f"position out of range: lat {lat}, lon {lon}")
    return tpv
