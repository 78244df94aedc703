"""Coverage-guided fuzzing of the NMEA decoder.

``feed`` and ``flush`` must never raise, whatever the bytes; and the stream
cut into blocks (their size taken from the first byte) must give the same
fixes as the stream fed whole.
"""

from __future__ import annotations

import sys
import warnings

import atheris

with atheris.instrument_imports(include=["gatewayd"]):
    from gatewayd.nmea import NmeaDecoder


def _decode(blocks: list[bytes]) -> list[object]:
    decoder = NmeaDecoder()
    fixes = [fix for block in blocks for fix in decoder.feed(block)]
    return fixes + decoder.flush()


def TestOneInput(data: bytes) -> None:
    size = 1 + (data[0] if data else 0) % 97
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = _decode([data])
        pieces = _decode([data[i:i + size] for i in range(0, len(data), size)])
    if pieces != whole:
        raise AssertionError(f"blocks of {size} bytes give other fixes than the whole stream")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
