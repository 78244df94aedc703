"""The project's exception root and one subclass per boundary.

Foreign exceptions are translated where they cross into gatewayd; the CLI maps
each class to an exit code and a single line (a traceback only with --debug).
Every error carries a stable ``reason`` code, which is also what a dead letter
records.
"""

from __future__ import annotations

__all__ = [
    "CRSError",
    "ConfigError",
    "DecodeError",
    "FormatError",
    "GatewayError",
    "GeometryError",
    "InputTooLarge",
    "NativeError",
    "TransformError",
    "WorkerError",
]


class GatewayError(Exception):
    """Root of every error gatewayd raises on purpose."""

    exit_code: int = 1
    reason: str = "error"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        source: str | None = None,
        native: str | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.source = source
        self.native = native

    def __str__(self) -> str:
        text = super().__str__()
        if self.native and self.native not in text:
            text = f"{text}: {self.native}"
        return text


class ConfigError(GatewayError):
    """The configuration (file, environment or flags) is invalid."""

    exit_code = 2
    reason = "config"

    def __init__(self, message: str, *, key: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.key = key


class CRSError(GatewayError):
    """A CRS string PROJ does not know, or a transformation it cannot build."""

    exit_code = 10
    reason = "crs"

    def __init__(self, message: str, *, crs: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.crs = crs


class FormatError(GatewayError):
    """Input whose format is unsupported or cannot be recognised."""

    exit_code = 11
    reason = "unsupported_format"


class DecodeError(GatewayError):
    """One input item is malformed; it becomes a dead letter, never a crash."""

    reason = "bad_input"


class InputTooLarge(DecodeError):
    """An input exceeds a configured size limit; refused before parsing."""

    reason = "too_large"


class NativeError(GatewayError):
    """GEOS or PROJ reported an error; ``native`` holds the library's own message."""

    reason = "native"


class GeometryError(NativeError):
    """GEOS could not build or process a geometry."""

    reason = "geometry"


class TransformError(NativeError):
    """PROJ failed while transforming coordinates."""

    reason = "crs"


class WorkerError(GatewayError):
    """A worker process failed: timed out, died or ran out of memory."""

    reason = "worker_died"
