"""Point frames: what the PCD and LAS decoders produce and the PCD writer takes.

A frame holds its coordinates as one C-contiguous (N, 3) float64 array, ready
for an in-place transform in C, and every other per-point field beside it, so
that the kept points after downsampling carry all of their fields through.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PointFrame", "from_columns"]


@dataclass(frozen=True, slots=True)
class PointFrame:
    xyz: np.ndarray  # (N, 3) float64, C-contiguous
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    crs: str | None = None
    dropped_nonfinite: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.xyz)

    def take(self, indices: np.ndarray) -> PointFrame:
        """The frame restricted to ``indices``, every field following."""
        return dataclasses.replace(
            self,
            xyz=np.ascontiguousarray(self.xyz[indices]),
            fields={k: v[indices] for k, v in self.fields.items()},
        )


def from_columns(columns: dict[str, np.ndarray], meta: dict[str, Any], crs: str | None = None,
           xyz: np.ndarray | None = None) -> PointFrame:
    """A frame from decoded columns (x, y, z among them, or given as ``xyz``);
    points with a non-finite coordinate are dropped and counted."""
    if xyz is None:
        # A signalling NaN in a float32 column (any bit pattern may come in)
        # raises FE_INVALID as it is widened: a NaN all the same, dropped below.
        with np.errstate(invalid="ignore"):
            xyz = np.column_stack([columns.pop(k).astype(np.float64) for k in ("x", "y", "z")])
    finite = np.isfinite(xyz[:, 0]) & np.isfinite(xyz[:, 1]) & np.isfinite(xyz[:, 2])
    dropped = int(len(xyz) - finite.sum())
    fields = {k: np.ascontiguousarray(v) for k, v in columns.items()}
    frame = PointFrame(np.ascontiguousarray(xyz, dtype=np.float64), fields, crs, 0, meta)
    if dropped:
        # Organised clouds mark missing returns with NaN: they are not points.
        frame = dataclasses.replace(frame.take(np.flatnonzero(finite)), dropped_nonfinite=dropped)
    return frame
