"""Coverage-guided fuzzing of the LAS decoder (versions 1.0-1.4, formats 0-10)."""

from __future__ import annotations

import sys

import atheris
import numpy
from _harness import check

with atheris.instrument_imports(include=["gatewayd"]):
    from gatewayd.las import decode_las


def TestOneInput(data: bytes) -> None:
    frame = check(lambda: decode_las(data, max_points=100_000))
    if not isinstance(frame, BaseException):
        assert frame.xyz.shape == (len(frame), 3) and frame.xyz.dtype == numpy.float64
        assert all(len(v) == len(frame) for v in frame.fields.values())


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
