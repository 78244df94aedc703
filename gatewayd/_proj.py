"""Thin wrapper over the PROJ half of gatewayd._native: contexts, CRSs, transformations.

One PROJ context per process and thread, created lazily with network access
off; its messages go to Python logging. Transformations are created once per
(source CRS, target CRS) and cached in the context that made them.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from gatewayd._native import ffi, lib
from gatewayd.errors import CRSError, NativeError

logger = logging.getLogger(__name__)


class ProjContext:
    """One PJ_CONTEXT with its cached transformations, bound to one process."""

    __slots__ = ("__weakref__", "_errors_seen", "epoch", "pid", "ptr", "transformations")

    def __init__(self) -> None:
        ptr = lib.gw_proj_new()
        if ptr == ffi.NULL:
            raise NativeError("could not create a PROJ context")
        self.ptr: Any = ptr
        self.pid = os.getpid()
        self.epoch = _fork_epoch
        self.transformations: dict[tuple[str, str], Transformation] = {}
        self._errors_seen = 0

    def error(self) -> str:
        return ffi.string(self.ptr.error).decode("utf-8", "replace")  # type: ignore[no-any-return]

    def log_errors(self) -> None:
        count = self.ptr.n_errors
        if count != self._errors_seen:
            logger.debug("PROJ: %s (%d messages)", self.error(), count - self._errors_seen)
            self._errors_seen = count

    def crs(self, definition: str) -> Any:
        """A PJ for the CRS named by ``definition``; the caller frees it."""
        if not definition or "\0" in definition:
            raise CRSError(f"invalid CRS {definition!r}", crs=definition)
        pj = lib.gw_proj_crs(self.ptr, definition.encode())
        if pj == ffi.NULL:
            native = self.error()
            self._errors_seen = self.ptr.n_errors
            raise CRSError(f"unknown CRS {definition!r}", crs=definition, native=native)
        return pj

    def is_angular(self, definition: str) -> bool:
        """Whether the CRS's horizontal axes are angles (degrees), not lengths."""
        pj = self.crs(definition)
        try:
            answer = lib.gw_proj_crs_is_angular(self.ptr, pj)
        finally:
            lib.gw_pj_free(pj)
        if answer < 0:
            raise CRSError(f"cannot tell the axes of CRS {definition!r}", crs=definition,
                           native=self.error())
        return bool(answer)

    def transformation(self, source: str, target: str) -> Transformation:
        key = (source, target)
        found = self.transformations.get(key)
        if found is None:
            found = self.transformations[key] = Transformation(self, source, target)
        return found

    def close(self) -> None:
        for transformation in self.transformations.values():
            transformation.close()
        self.transformations.clear()
        if self.ptr != ffi.NULL and self.pid == os.getpid():
            lib.gw_proj_free(self.ptr)
        self.ptr = ffi.NULL

    def __del__(self) -> None:
        self.close()


class Transformation:
    """A cached PROJ operation from one CRS to another, axis order lon/lat (x, y)."""

    __slots__ = ("_ctx", "pj", "source", "target")

    def __init__(self, ctx: ProjContext, source: str, target: str) -> None:
        self._ctx = ctx
        self.source = source
        self.target = target
        src = ctx.crs(source)
        try:
            dst = ctx.crs(target)
            try:
                pj = lib.gw_proj_transformation(ctx.ptr, src, dst)
            finally:
                lib.gw_pj_free(dst)
        finally:
            lib.gw_pj_free(src)
        if pj == ffi.NULL:
            raise CRSError(
                f"no transformation from {source!r} to {target!r}",
                crs=f"{source} -> {target}",
                native=ctx.error(),
            )
        self.pj: Any = pj

    def transform_inplace(self, xyz: np.ndarray, direction: int = 1) -> int:
        """Transforms a C-contiguous float64 (N, 2|3) array in place; returns the failures."""
        ctx = self._ctx
        # The fork epoch, not os.getpid(): a syscall per chunk is measurable.
        if ctx.epoch != _fork_epoch:
            raise NativeError("a transformation cannot cross into another process")
        n, dims = xyz.shape
        if dims != 2 and dims != 3:
            raise ValueError(f"expected an (N, 2) or (N, 3) array, got {xyz.shape}")
        failed: int = lib.gw_transform(
            ctx.ptr, self.pj, direction, ffi.from_buffer("double[]", xyz), n, dims
        )
        if failed:
            ctx.log_errors()
        return failed

    def close(self) -> None:
        if self.pj != ffi.NULL and self._ctx.pid == os.getpid():
            lib.gw_pj_free(self.pj)
        self.pj = ffi.NULL


_local = threading.local()
_versions_logged = False
_fork_epoch = 0


def _forget_after_fork() -> None:
    global _local, _versions_logged, _fork_epoch
    _local = threading.local()
    _versions_logged = False
    _fork_epoch += 1


os.register_at_fork(after_in_child=_forget_after_fork)


def context() -> ProjContext:
    """This process's and thread's PROJ context, created on first use."""
    global _versions_logged
    ctx: ProjContext | None = getattr(_local, "proj", None)
    if ctx is None or ctx.epoch != _fork_epoch:
        ctx = ProjContext()
        _local.proj = ctx
        if not _versions_logged:
            _versions_logged = True
            logger.info("PROJ %s", proj_version())
    return ctx


def transformation(source: str, target: str) -> Transformation:
    """The cached transformation in this process's context."""
    ctx: ProjContext | None = getattr(_local, "proj", None)
    if ctx is None or ctx.epoch != _fork_epoch:
        ctx = context()
    found = ctx.transformations.get((source, target))
    return found if found is not None else ctx.transformation(source, target)


def proj_version() -> str:
    return ffi.string(lib.proj_info().release).decode()  # type: ignore[no-any-return]


def raw_trans_generic(pj: Any, xyz: np.ndarray) -> int:
    """proj_trans_generic straight on the array: the baseline the benchmarks compare to."""
    n, dims = xyz.shape
    buf = ffi.from_buffer("double[]", xyz)
    stride = dims * 8
    z = buf + 2 if dims > 2 else ffi.NULL
    return int(
        lib.proj_trans_generic(
            pj, lib.PJ_FWD, buf, stride, n, buf + 1, stride, n,
            z, stride if dims > 2 else 0, n if dims > 2 else 0, ffi.NULL, 0, 0,
        )
    )
