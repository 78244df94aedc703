"""Configuration: one frozen object, built once and validated when built.

Precedence, lowest first: built-in defaults < TOML file < environment
(``GATEWAYD_SECTION__KEY``) < ``--set section.key=value``. Nothing reads the
environment or the file after ``load_config`` returns; ``provenance`` says
where each value came from, for ``gatewayd check-config``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import struct
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gatewayd.errors import ConfigError

__all__ = ["Config", "PortSpec", "default_worker_memory_mb", "load_config", "parse_port",
           "render_config"]

_MiB = 1 << 20

# The default address-space cap (RLIMIT_AS) of a worker, in MiB, by the width
# of the interpreter's pointers. What a worker maps is set by the build, not by
# the board's RAM: at its peak on 30 000-point LiDAR frames a worker mapped
# 139 MiB on x86-64 and 143 MiB on aarch64, but 65 MiB on 32-bit armhf, where
# glibc's malloc arenas and numpy reserve far less (cross-build/README.md,
# measured per architecture). The 32-bit cap leaves more room above its peak,
# since that figure comes from emulation and numpy's BLAS there is whichever
# the board has installed.
_WORKER_MEMORY_MB = {64: 180, 32: 120}


def default_worker_memory_mb(pointer_bits: int | None = None) -> int:
    """``pipeline.worker_memory_mb`` when unset: by this build's pointer width."""
    bits = pointer_bits or struct.calcsize("P") * 8
    return _WORKER_MEMORY_MB.get(bits, _WORKER_MEMORY_MB[64])


def _topic_level(value: str) -> str | None:
    if not value or any(c in value for c in "/+#\0") or not value.isprintable():
        return "must be a non-empty MQTT topic level without / + # or control characters"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _in(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _bbox(value: tuple[float, ...] | None) -> str | None:
    if value is None:
        return None
    if len(value) != 6:
        return "needs six numbers: minx, miny, minz, maxx, maxy, maxz"
    if any(value[i] > value[i + 3] for i in range(3)):
        return "minimum exceeds maximum"
    return None


def _ports(value: tuple[str, ...]) -> str | None:
    names = set()
    for spec in value:
        try:
            port = parse_port(spec)
        except ValueError as exc:
            return str(exc)
        if port.name in names:
            return f"port name {port.name!r} is used twice"
        names.add(port.name)
    return None


@dataclass(frozen=True, slots=True)
class PortSpec:
    name: str
    device: str
    baud: int  # 0: find it (autobaud)


def parse_port(spec: str) -> PortSpec:
    """``name=device[@baud|@auto]``, e.g. ``gps0=/dev/ttyUSB0@9600``."""
    name, eq, rest = spec.partition("=")
    if not eq or not rest:
        raise ValueError(f"{spec!r}: expected name=device[@baud]")
    problem = _topic_level(name)
    if problem:
        raise ValueError(f"{spec!r}: the name {problem}")
    device, at, rate = rest.rpartition("@")
    if not at:
        device, rate = rest, "auto"
    if rate == "auto":
        baud = 0
    elif rate.isdigit() and 50 <= int(rate) <= 4_000_000:
        baud = int(rate)
    else:
        raise ValueError(f"{spec!r}: baud must be a number or auto")
    if not device.startswith("/"):
        raise ValueError(f"{spec!r}: the device must be an absolute path")
    return PortSpec(name, device, baud)


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _existing_file(value: str | None) -> str | None:
    return None if value is None or os.path.isfile(value) else "file does not exist"


def _opt(check: Callable[[Any], str | None] | None = None, **kw: Any) -> Any:
    return field(metadata={"check": check}, **kw)


@dataclass(frozen=True, slots=True)
class GatewaySection:
    id: str = _opt(_topic_level, default_factory=socket.gethostname)
    state_dir: str = _opt(_nonempty, default="/var/lib/gatewayd")


@dataclass(frozen=True, slots=True)
class PipelineSection:
    queue_size: int = _opt(_in(1, 1_000_000), default=500)
    chunk_size: int = _opt(_in(1, 65_536), default=128)
    min_chunk_size: int = _opt(_in(1, 65_536), default=16)
    chunk_timeout_s: float = _opt(_positive, default=4.0)
    workers: int = _opt(_in(0, 64), default=2)  # 0: one per CPU
    worker_memory_mb: int = _opt(_in(32, 65_536), default_factory=default_worker_memory_mb)
    retries: int = _opt(_in(0, 10), default=1)
    max_payload_bytes: int = _opt(_in(1, 1 << 34), default=16 * _MiB)
    max_open_mb: int = _opt(_in(1, 1 << 20), default=32)  # MQTT input in progress, payloads
    max_points_per_frame: int = _opt(_in(1, 1 << 31), default=2_000_000)
    max_vertices_per_polygon: int = _opt(_in(4, 1 << 31), default=100_000)
    max_features: int = _opt(_in(1, 1 << 31), default=100_000)
    overflow: str = _opt(_one_of("spill", "drop_oldest"), default="spill")


@dataclass(frozen=True, slots=True)
class CrsSection:
    source: str = _opt(_nonempty, default="EPSG:4326")
    target: str = _opt(_nonempty, default="EPSG:4326")


@dataclass(frozen=True, slots=True)
class LidarSection:
    voxel_size_m: float = _opt(_in(0.0, 1000.0), default=0.1)
    bbox: tuple[float, ...] | None = _opt(_bbox, default=None)


@dataclass(frozen=True, slots=True)
class ZonesSection:
    file: str | None = _opt(_existing_file, default=None)


@dataclass(frozen=True, slots=True)
class SerialSection:
    # name=device[@baud|@auto] for each receiver, e.g. "gps0=/dev/ttyUSB0@9600"
    ports: tuple[str, ...] = _opt(_ports, default=())
    backlog: int = _opt(_in(1, 1_000_000), default=1000)  # fixes held per port in memory
    spill_max_mb: int = _opt(_in(1, 1 << 20), default=64)  # per port, on disk
    spill_fsync_interval_s: float = _opt(_in(0.001, 60), default=1.0)


@dataclass(frozen=True, slots=True)
class DaemonSection:
    grace_s: float = _opt(_positive, default=10.0)  # to finish chunks in flight at stop
    status_interval_s: float = _opt(_in(0.5, 3600), default=10.0)
    gps_idle_flush_s: float = _opt(_in(0.05, 60), default=1.5)  # end an open fix cycle
    # Watchdog pings stop once work waits this long without progress; unset:
    # the chunk timeout plus 5 s, so that a slow but legal chunk never trips it.
    watchdog_stall_s: float | None = _opt(lambda v: None if v is None or v > 0
                                          else "must be greater than 0", default=None)
    runtime_dir: str = _opt(_nonempty, default="/run/gatewayd")


@dataclass(frozen=True, slots=True)
class ThermalSection:
    enabled: bool = True
    sysfs_root: str = _opt(_nonempty, default="/sys")
    interval_s: float = _opt(_in(0.1, 600), default=5.0)
    soft_c: float = _opt(_in(20, 150), default=75.0)  # chunks shrink above this
    hard_c: float = _opt(_in(20, 150), default=85.0)  # intake slows at this
    hysteresis_c: float = _opt(_in(0, 50), default=5.0)
    hold_s: float = _opt(_in(0, 3600), default=30.0)  # between two steps


@dataclass(frozen=True, slots=True)
class OutboxSection:
    # Results the broker has not acknowledged within publish_timeout_s go to a
    # spool in gateway.state_dir/outbox, and out again in order on reconnect.
    max_mb: int = _opt(_in(1, 1 << 20), default=64)
    publish_timeout_s: float = _opt(_in(0.1, 3600), default=10.0)
    fsync_interval_s: float = _opt(_in(0.001, 60), default=0.2)


@dataclass(frozen=True, slots=True)
class AuditSection:
    # A hash-chained log of every result's lineage; `gatewayd audit verify`.
    enabled: bool = False
    directory: str | None = None  # default: <gateway.state_dir>/audit
    max_bytes: int = _opt(_in(512, 1 << 34), default=8 * _MiB)  # then rotated
    keep: int = _opt(_in(0, 1_000_000), default=64)  # rotated files kept; 0: all
    flush_interval_s: float = _opt(_in(0, 60), default=1.0)
    max_pending: int = _opt(_in(1, 10_000_000), default=10_000)
    publish: bool = True  # each line also on <prefix>/lineage


def _prom_path(value: str | None) -> str | None:
    if value is None:
        return None
    return None if value.endswith(".prom") else "must name a file ending in .prom"


@dataclass(frozen=True, slots=True)
class MetricsSection:
    textfile: str | None = _opt(_prom_path, default=None)  # for node_exporter's collector
    textfile_interval_s: float = _opt(_in(1, 3600), default=15.0)
    http: bool = False  # serve /metrics
    host: str = _opt(_nonempty, default="127.0.0.1")  # loopback only, unless allow_remote
    port: int = _opt(_in(1, 65_535), default=9464)
    allow_remote: bool = False


@dataclass(frozen=True, slots=True)
class MqttSection:
    host: str = _opt(_nonempty, default="localhost")
    port: int = _opt(_in(1, 65_535), default=1883)
    client_id: str | None = None  # default: gatewayd-<gateway.id>
    topic_prefix: str | None = None  # default: gatewayd/<gateway.id>
    tls: bool = False
    ca_file: str | None = _opt(_existing_file, default=None)
    cert_file: str | None = _opt(_existing_file, default=None)
    key_file: str | None = _opt(_existing_file, default=None)
    username: str | None = None
    password_file: str | None = None
    keepalive: int = _opt(_in(5, 3600), default=30)
    qos: int = _opt(_in(0, 2), default=1)
    protocol: str = _opt(_one_of("3.1.1", "5"), default="5")
    session_expiry_s: int = _opt(_in(0, 0xFFFFFFFF), default=7 * 86400)
    receive_maximum: int = _opt(_in(1, 65_535), default=1000)
    reconnect_min_s: float = _opt(_positive, default=0.5)
    reconnect_max_s: float = _opt(_positive, default=30.0)
    # Plain MQTT to a broker off this machine sends credentials and data in the
    # clear: refused unless this is set on purpose.
    allow_plaintext: bool = False


@dataclass(frozen=True, slots=True)
class LogSection:
    level: str = _opt(_one_of("debug", "info", "warning", "error"), default="info")
    format: str = _opt(_one_of("auto", "plain", "json", "journal"), default="auto")


_SECTIONS: dict[str, type] = {
    "gateway": GatewaySection,
    "pipeline": PipelineSection,
    "crs": CrsSection,
    "lidar": LidarSection,
    "zones": ZonesSection,
    "mqtt": MqttSection,
    "serial": SerialSection,
    "daemon": DaemonSection,
    "thermal": ThermalSection,
    "metrics": MetricsSection,
    "outbox": OutboxSection,
    "audit": AuditSection,
    "log": LogSection,
}


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewaySection
    pipeline: PipelineSection
    crs: CrsSection
    lidar: LidarSection
    zones: ZonesSection
    mqtt: MqttSection
    serial: SerialSection
    daemon: DaemonSection
    thermal: ThermalSection
    metrics: MetricsSection
    outbox: OutboxSection
    audit: AuditSection
    log: LogSection
    provenance: Mapping[str, str]

    @property
    def workers(self) -> int:
        return self.pipeline.workers or os.cpu_count() or 1

    @property
    def topic_prefix(self) -> str:
        return self.mqtt.topic_prefix or f"gatewayd/{self.gateway.id}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"gatewayd-{self.gateway.id}"

    @property
    def audit_dir(self) -> str:
        return self.audit.directory or os.path.join(self.gateway.state_dir, "audit")

    @property
    def ports(self) -> tuple[PortSpec, ...]:
        return tuple(parse_port(spec) for spec in self.serial.ports)


def _convert(key: str, text: str, kind: Any) -> Any:
    """A string from the environment or --set, as the field's type."""
    kind_text = str(kind)
    try:
        if "bool" in kind_text:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if "tuple[str" in kind_text:
            return tuple(v.strip() for v in text.split(",") if v.strip())
        if "tuple" in kind_text:
            return tuple(float(v) for v in text.split(",")) if text.strip() else None
        if kind_text.startswith("int"):
            return int(text, 0)
        if kind_text.startswith("float"):
            return float(text)
        if "None" in kind_text and text.strip().lower() in ("", "none"):
            return None
        return text
    except ValueError:
        raise ConfigError(f"{key}: cannot read {text!r} as {kind_text}", key=key) from None


def _check_type(key: str, value: Any, kind: Any) -> Any:
    kind_text = str(kind)
    if value is None and "None" in kind_text:
        return None
    if "bool" in kind_text:
        ok = isinstance(value, bool)
    elif "tuple[str" in kind_text:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif "tuple" in kind_text:
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    elif kind_text.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind_text.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        try:
            value = float(value) if ok else value
        except OverflowError:
            ok = False
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key}: expected {kind_text}, got {value!r}", key=key)
    return value


def _layer(values: dict[str, dict[str, Any]], provenance: dict[str, str], section: str,
           key: str, value: Any, origin: str, *, from_text: bool) -> None:
    name = f"{section}.{key}"
    if section not in _SECTIONS:
        raise ConfigError(f"{name}: unknown section {section!r}", key=name)
    fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])}
    if key not in fields:
        raise ConfigError(f"{name}: unknown setting", key=name)
    kind = fields[key].type
    value = _convert(name, value, kind) if from_text else value
    values.setdefault(section, {})[key] = _check_type(name, value, kind)
    provenance[name] = origin


def load_config(path: str | None, overrides: Sequence[str],
                environ: Mapping[str, str]) -> Config:
    values: dict[str, dict[str, Any]] = {}
    provenance: dict[str, str] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}", key="--config") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", key="--config") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}", key="--config") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                              key="--config") from None
        for section, table in document.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{section}: expected a [{section}] table", key=section)
            for key, value in table.items():
                _layer(values, provenance, section, key, value, f"file:{path}", from_text=False)
    for name, value in sorted(environ.items()):
        if name.startswith("GATEWAYD_") and "__" in name:
            section, _, key = name[len("GATEWAYD_"):].lower().partition("__")
            _layer(values, provenance, section, key, value, f"env:{name}", from_text=True)
    for override in overrides:
        name, eq, value = override.partition("=")
        section, dot, key = name.strip().partition(".")
        if not eq or not dot or not section or not key:
            raise ConfigError(f"--set {override!r}: expected section.key=value", key=name)
        _layer(values, provenance, section, key, value, "--set", from_text=True)

    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        built = cls(**values.get(section, {}))
        for spec in dataclasses.fields(cls):
            name = f"{section}.{spec.name}"
            provenance.setdefault(name, "default")
            check = spec.metadata.get("check")
            value = getattr(built, spec.name)
            problem = check(value) if check else None
            if problem:
                raise ConfigError(f"{name} = {value!r}: {problem}", key=name)
        sections[section] = built
    if sections["pipeline"].min_chunk_size > sections["pipeline"].chunk_size:
        raise ConfigError("pipeline.min_chunk_size: exceeds pipeline.chunk_size",
                          key="pipeline.min_chunk_size")
    _check_mqtt_security(sections["mqtt"])
    if sections["thermal"].soft_c >= sections["thermal"].hard_c:
        raise ConfigError("thermal.soft_c: must be below thermal.hard_c", key="thermal.soft_c")
    return Config(**sections, provenance=dict(provenance))


def _loopback(host: str) -> bool:
    if host == "localhost" or host.startswith("127."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_mqtt_security(mqtt: MqttSection) -> None:
    if not mqtt.tls and not mqtt.allow_plaintext and not _loopback(mqtt.host):
        raise ConfigError(f"mqtt.tls: the broker {mqtt.host} is not on this machine; turn on "
                          "TLS, or set mqtt.allow_plaintext = true to send in the clear",
                          key="mqtt.tls")
    if mqtt.password_file is None:
        return
    if mqtt.username is None:
        raise ConfigError("mqtt.password_file: a password needs mqtt.username",
                          key="mqtt.password_file")
    try:
        mode = os.stat(mqtt.password_file).st_mode
    except OSError as exc:
        raise ConfigError(f"mqtt.password_file: cannot read {mqtt.password_file}: "
                          f"{exc.strerror}", key="mqtt.password_file") from None
    except ValueError:  # a NUL in the path
        raise ConfigError("mqtt.password_file: not a usable path",
                          key="mqtt.password_file") from None
    if mode & 0o007:
        raise ConfigError(f"mqtt.password_file: {mqtt.password_file} is readable by every "
                          "user; chmod o-rwx it", key="mqtt.password_file")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(config: Config) -> str:
    """The effective configuration as TOML, each value's origin beside it."""
    lines: list[str] = []
    for section in _SECTIONS:
        lines.append(f"[{section}]")
        obj = getattr(config, section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            origin = config.provenance.get(f"{section}.{f.name}", "default")
            if value is None:
                lines.append(f"# {f.name} is not set  # {origin}")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}  # {origin}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
