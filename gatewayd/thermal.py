"""Thermal protection: the SoC's temperature sets the chunk size and can slow intake.

A passively cooled gateway has no fan to spin up; the only lever it has is to
do less work at a time. ``ThermalSensor`` reads the hottest CPU/SoC thermal
zone and the CPU clock from sysfs, and ``ChunkController`` turns that reading
into a chunk size for the chunker, and, above the hard limit, a request that
the daemon slow its intake (its backpressure rules then apply as for any full
queue).

Zones are matched by their ``type``, never by number: ``thermal_zone0`` on one
boot can be ``thermal_zone2`` on the next. Some drivers fail a ``temp`` read
(EINVAL, ENODATA while the sensor warms up); such a zone is counted and
skipped, and the sensor never raises. A machine without thermal zones (a VM)
reads as "no temperature", which keeps the chunk size at its base.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ZONE_TYPES",
    "ChunkController",
    "ThermalDecision",
    "ThermalReading",
    "ThermalSensor",
    "ThermalState",
]

ThermalState = Literal["normal", "hot", "critical"]

# Zone types that measure the CPU or the SoC die, as drivers name them:
# Raspberry Pi 4/5 (cpu-thermal), Allwinner and Amlogic (cpu_thermal, cpu0-thermal),
# Rockchip (soc_thermal, soc-thermal), older Pi kernels (bcm2835_thermal) and
# x86 boxes used as gateways or test benches (x86_pkg_temp).
DEFAULT_ZONE_TYPES: tuple[str, ...] = (
    "cpu-thermal",
    "cpu_thermal",
    "cpu0-thermal",
    "cpu0_thermal",
    "soc_thermal",
    "soc-thermal",
    "bcm2835_thermal",
    "x86_pkg_temp",
)

# A sensor that reports outside this range is broken or not yet initialised
# (some report 0, -273150 or 255000), not hot or cold.
_PLAUSIBLE_C = (-55.0, 150.0)

# Raspberry Pi firmware throttles behind Linux's back; its driver publishes the
# state as a hex bit field. Bits 1-3: ARM clock capped, throttled now, soft
# temperature limit active.
_FIRMWARE_THROTTLED = ("devices/platform/soc/soc:firmware/get_throttled",
                       "devices/platform/scb/soc:firmware/get_throttled")
_FIRMWARE_THROTTLED_NOW = 0x2 | 0x4 | 0x8


@dataclass(frozen=True, slots=True)
class ThermalReading:
    celsius: float | None  # the hottest matching zone; None without any
    zone: str | None  # that zone's type
    cpufreq_khz: int | None  # the fastest core's current clock
    cpufreq_max_khz: int | None
    throttled: bool  # firmware or a cpufreq cooling device is holding the clock down


def _read_text(path: Path) -> str:
    with open(path, encoding="ascii") as f:
        return f.read(64).strip()


class ThermalSensor:
    """Reads thermal zones and cpufreq under ``sysfs_root``; never raises on a bad file."""

    def __init__(self, sysfs_root: str = "/sys",
                 zone_types: tuple[str, ...] = DEFAULT_ZONE_TYPES) -> None:
        self.root = Path(sysfs_root)
        self.zone_types = frozenset(zone_types)
        self.errors = 0  # unreadable or implausible files, since start

    def _read_int(self, path: Path, base: int = 10) -> int | None:
        """The integer in ``path``; None when absent, and counted when unreadable."""
        try:
            return int(_read_text(path), base)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # EINVAL, ENODATA, EIO, EACCES; garbage
            self.errors += 1
            logger.debug("cannot read %s: %s", path, exc)
            return None

    def _zones(self) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        for zone in sorted((self.root / "class" / "thermal").glob("thermal_zone*")):
            try:
                kind = _read_text(zone / "type")
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                self.errors += 1
                continue
            if kind not in self.zone_types:
                continue
            millidegrees = self._read_int(zone / "temp")
            if millidegrees is None:
                continue
            celsius = millidegrees / 1000.0
            if not _PLAUSIBLE_C[0] <= celsius <= _PLAUSIBLE_C[1]:
                self.errors += 1
                logger.debug("%s (%s) reads an implausible %.1f °C", zone.name, kind, celsius)
                continue
            found.append((kind, celsius))
        return found

    def _cpufreq(self) -> tuple[int | None, int | None]:
        current: list[int] = []
        maximum: list[int] = []
        for cpufreq in sorted((self.root / "devices" / "system" / "cpu").glob("cpu[0-9]*/cpufreq")):
            cur = self._read_int(cpufreq / "scaling_cur_freq")
            top = self._read_int(cpufreq / "cpuinfo_max_freq")
            if top is None:
                top = self._read_int(cpufreq / "scaling_max_freq")
            if cur is not None and cur > 0:
                current.append(cur)
            if top is not None and top > 0:
                maximum.append(top)
        return (max(current) if current else None, max(maximum) if maximum else None)

    def _throttled(self) -> bool:
        for relative in _FIRMWARE_THROTTLED:
            bits = self._read_int(self.root / relative, 16)
            if bits is not None and bits & _FIRMWARE_THROTTLED_NOW:
                return True
        # The kernel's own thermal governor caps the clock through cpufreq
        # cooling devices; a non-zero state means a cap is in force.
        for device in sorted((self.root / "class" / "thermal").glob("cooling_device*")):
            try:
                kind = _read_text(device / "type")
            except (OSError, ValueError):
                continue
            if "cpufreq" not in kind and kind.lower() != "processor":
                continue
            state = self._read_int(device / "cur_state")
            if state is not None and state > 0:
                return True
        return False

    def read(self) -> ThermalReading:
        zones = self._zones()
        cur, top = self._cpufreq()
        throttled = self._throttled()
        if not zones:
            return ThermalReading(None, None, cur, top, throttled)
        kind, celsius = max(zones, key=lambda z: z[1])
        return ThermalReading(celsius, kind, cur, top, throttled)


@dataclass(frozen=True, slots=True)
class ThermalDecision:
    chunk_size: int
    throttle_intake: bool
    changed: bool  # chunk_size or throttle_intake differ from the previous decision
    state: ThermalState
    reason: str


class ChunkController:
    """Chunk size from temperature: shrink when hot, grow back slowly when cool.

    Above ``soft_c`` the size shrinks by ``step`` (halves, by default) at once
    and then once per ``hold_s`` for as long as it stays above, down to
    ``minimum``. It grows back (doubles) only after the temperature has stayed
    below ``soft_c - hysteresis_c`` for ``hold_s``, again one step per
    ``hold_s``, so a temperature that hovers around the limit cannot make the
    size oscillate. At ``hard_c`` the size drops to the minimum and intake is
    throttled until the temperature falls below ``hard_c - hysteresis_c``.

    Pure logic: time comes from ``now`` or the injected ``clock``.
    """

    def __init__(self, base: int = 128, minimum: int = 16, soft_c: float = 75.0,
                 hard_c: float = 85.0, hysteresis_c: float = 5.0, step: float = 0.5,
                 hold_s: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= minimum <= base:
            raise ValueError("need 1 <= minimum <= base")
        if not soft_c < hard_c:
            raise ValueError("the soft limit must be below the hard limit")
        if hysteresis_c < 0 or hold_s < 0:
            raise ValueError("hysteresis and hold must not be negative")
        if not 0.0 < step < 1.0:
            raise ValueError("step is the shrink factor, between 0 and 1")
        self.base = base
        self.minimum = minimum
        self.soft_c = soft_c
        self.hard_c = hard_c
        self.hysteresis_c = hysteresis_c
        self.step = step
        self.hold_s = hold_s
        self._clock = clock
        self._size = base
        self._state: ThermalState = "normal"
        self._throttle = False
        self._last_change: float | None = None  # when the size last moved
        self._last_move = 0  # -1 shrink, +1 grow, 0 none yet
        self._cool_since: float | None = None  # below soft - hysteresis since

    @property
    def chunk_size(self) -> int:
        return self._size

    @property
    def state(self) -> ThermalState:
        return self._state

    def set_base(self, base: int, minimum: int | None = None) -> None:
        """New limits on configuration reload; an unreduced size follows the new base."""
        minimum = self.minimum if minimum is None else minimum
        if not 1 <= minimum <= base:
            raise ValueError("need 1 <= minimum <= base")
        unreduced = self._size == self.base
        self.base, self.minimum = base, minimum
        if self._state == "critical":
            self._size = minimum
        elif unreduced and self._state == "normal":
            self._size = base
        else:
            self._size = max(minimum, min(self._size, base))

    def _shrunk(self) -> int:
        return max(self.minimum, min(self._size - 1, int(self._size * self.step)))

    def _grown(self) -> int:
        return min(self.base, max(self._size + 1, math.ceil(self._size / self.step)))

    def _held(self, now: float) -> bool:
        return self._last_change is None or now - self._last_change >= self.hold_s

    def _move(self, size: int, now: float) -> None:
        self._last_move = -1 if size < self._size else 1
        self._size = size
        self._last_change = now

    def update(self, reading_celsius: float | None, now: float | None = None) -> ThermalDecision:
        now = self._clock() if now is None else now
        before = (self._size, self._throttle)
        t = reading_celsius
        if t is None or math.isnan(t):
            # No sensor (a VM) or no reading: nothing to protect, run at base.
            self._state, self._throttle, self._cool_since = "normal", False, None
            if self._size != self.base:
                self._move(self.base, now)
            return self._decision(before, "no temperature reading")

        if t >= self.hard_c:
            self._state, self._throttle, self._cool_since = "critical", True, None
            if self._size != self.minimum:
                self._move(self.minimum, now)
            return self._decision(before, f"{t:.1f} °C at or above the hard limit {self.hard_c:g}")
        if self._state == "critical":
            if t >= self.hard_c - self.hysteresis_c:
                return self._decision(before, f"{t:.1f} °C not yet below "
                                              f"{self.hard_c - self.hysteresis_c:g}")
            self._state, self._throttle = "hot", False

        if t >= self.soft_c:
            self._state, self._cool_since = "hot", None
            # The first step down is immediate; the next ones wait a hold period
            # each, so the SoC has time to show the effect of the last one.
            if self._size > self.minimum and (self._last_move != -1 or self._held(now)):
                self._move(self._shrunk(), now)
                return self._decision(before, f"{t:.1f} °C above the soft limit "
                                              f"{self.soft_c:g}: smaller chunks")
            return self._decision(before, f"{t:.1f} °C above the soft limit {self.soft_c:g}")

        cool_below = self.soft_c - self.hysteresis_c
        if t >= cool_below:
            self._cool_since = None
            return self._decision(before, f"{t:.1f} °C within the hysteresis band")

        self._state = "normal"
        if self._cool_since is None:
            self._cool_since = now
        if (self._size < self.base and now - self._cool_since >= self.hold_s
                and self._held(now)):
            self._move(self._grown(), now)
            return self._decision(before, f"{t:.1f} °C below {cool_below:g}: larger chunks")
        if self._size < self.base:
            return self._decision(before, f"{t:.1f} °C below {cool_below:g}: holding")
        return self._decision(before, f"{t:.1f} °C")

    def _decision(self, before: tuple[int, bool], reason: str) -> ThermalDecision:
        changed = (self._size, self._throttle) != before
        return ThermalDecision(self._size, self._throttle, changed, self._state, reason)
