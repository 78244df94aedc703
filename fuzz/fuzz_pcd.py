"""Coverage-guided fuzzing of the PCD decoder (ascii, binary, binary_compressed)."""

from __future__ import annotations

import sys

import atheris
import numpy
from _harness import check, known

with atheris.instrument_imports(include=["gatewayd"]):
    from gatewayd.pcd import decode_pcd


def TestOneInput(data: bytes) -> None:
    frame = check(lambda: decode_pcd(data, max_points=100_000))
    if isinstance(frame, BaseException):
        return
    if frame.xyz.ndim == 2 and frame.xyz.shape[1] != 3:
        known("pcd: a COUNT above 1 on x, y or z widens xyz")
        return
    assert frame.xyz.shape == (len(frame), 3) and frame.xyz.dtype == numpy.float64
    assert all(len(v) == len(frame) for v in frame.fields.values())


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
