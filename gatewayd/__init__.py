"""gatewayd: a telemetry daemon for field gateways."""

__version__ = "0.1.0"

__all__ = ["__version__"]
