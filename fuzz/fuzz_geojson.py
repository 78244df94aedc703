"""Coverage-guided fuzzing of the GeoJSON decoder, limits small enough to be hit."""

from __future__ import annotations

import sys

import atheris
from _harness import check

with atheris.instrument_imports(include=["gatewayd"]):
    from gatewayd.geojson import decode_geojson


def TestOneInput(data: bytes) -> None:
    result = check(lambda: decode_geojson(data, max_bytes=1 << 16, max_vertices=64,
                                          max_features=16))
    if not isinstance(result, BaseException):
        assert len(result.features) + len(result.rejected) <= 16
        for feature in result.features:
            for polygon in feature.parts:
                for ring in polygon:
                    assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 3


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
