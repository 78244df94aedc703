"""Thermal protection: the sensor against a fake sysfs tree, the chunk
controller on a virtual clock."""

from __future__ import annotations

import errno
import itertools
from pathlib import Path

import pytest

import gatewayd.thermal as thermal
from gatewayd.thermal import ChunkController, ThermalSensor

# ---- a fake sysfs ----


def _zone(root: Path, number: int, kind: str | bytes, temp: str | bytes | None) -> Path:
    zone = root / "class" / "thermal" / f"thermal_zone{number}"
    zone.mkdir(parents=True)
    (zone / "type").write_bytes(kind if isinstance(kind, bytes) else f"{kind}\n".encode())
    if temp is not None:
        (zone / "temp").write_bytes(temp if isinstance(temp, bytes) else f"{temp}\n".encode())
    return zone


def _cpu(root: Path, number: int, files: dict[str, str]) -> None:
    cpufreq = root / "devices" / "system" / "cpu" / f"cpu{number}" / "cpufreq"
    cpufreq.mkdir(parents=True)
    for name, text in files.items():
        (cpufreq / name).write_text(f"{text}\n")


def _cooling(root: Path, number: int, kind: str, state: str) -> None:
    device = root / "class" / "thermal" / f"cooling_device{number}"
    device.mkdir(parents=True)
    (device / "type").write_text(f"{kind}\n")
    (device / "cur_state").write_text(f"{state}\n")


@pytest.fixture
def gateway(tmp_path: Path) -> Path:
    """A Pi-like board: zone numbers out of order, a hotter zone of another type,
    a CPU zone that fails to read, four cores."""
    root = tmp_path / "sys"
    _zone(root, 4, "cpu-thermal", "61250")
    _zone(root, 0, "pmic-thermal", "93000")  # hotter, but not the SoC
    broken = _zone(root, 2, "cpu_thermal", None)
    (broken / "temp").mkdir()  # reading it fails (EISDIR), as some drivers fail with EINVAL
    _zone(root, 7, "soc_thermal", "58000")
    for n in range(4):
        _cpu(root, n, {"scaling_cur_freq": str(600_000 + n * 100_000),
                       "cpuinfo_max_freq": "1800000"})
    _cooling(root, 0, "cpufreq-cpu0", "0")
    return root


def test_the_hottest_zone_of_a_known_type_is_read_in_degrees(gateway):
    reading = ThermalSensor(str(gateway)).read()
    assert reading.celsius == pytest.approx(61.25)
    assert reading.zone == "cpu-thermal"


def test_a_hotter_zone_of_another_type_is_ignored(gateway):
    reading = ThermalSensor(str(gateway)).read()
    assert reading.celsius is not None and reading.celsius < 93.0
    only_pmic = ThermalSensor(str(gateway), zone_types=("pmic-thermal",)).read()
    assert only_pmic.celsius == pytest.approx(93.0)


def test_zones_are_matched_by_type_whatever_their_numbers(tmp_path):
    readings = []
    for boot, numbers in enumerate([(0, 1, 2), (2, 0, 1), (9, 3, 5)]):
        root = tmp_path / f"boot{boot}"
        for number, (kind, temp) in zip(numbers, [("gpu-thermal", "99000"),
                                                  ("cpu-thermal", "55000"),
                                                  ("ddr-thermal", "80000")]):
            _zone(root, number, kind, temp)
        readings.append(ThermalSensor(str(root)).read())
    assert {(r.zone, r.celsius) for r in readings} == {("cpu-thermal", 55.0)}


def test_an_unreadable_zone_is_counted_and_skipped(gateway):
    sensor = ThermalSensor(str(gateway))
    assert sensor.read().celsius == pytest.approx(61.25)
    assert sensor.errors == 1
    sensor.read()
    assert sensor.errors == 2


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENODATA, errno.EAGAIN, errno.EIO])
def test_zones_whose_driver_fails_the_read_are_skipped(gateway, monkeypatch, code):
    real = thermal._read_text

    def failing(path: Path) -> str:
        if path.name == "temp" and path.parent.name == "thermal_zone4":
            raise OSError(code, "driver says no")
        return real(path)

    monkeypatch.setattr(thermal, "_read_text", failing)
    sensor = ThermalSensor(str(gateway))
    reading = sensor.read()
    assert (reading.zone, reading.celsius) == ("soc_thermal", 58.0)
    assert sensor.errors == 2  # zone4 and the broken zone2


@pytest.mark.parametrize("garbage", [b"", b"hot\n", b"\xff\xfe\x00", b"61.5\n", b"1e3\n",
                                     b"-273150\n", b"255000\n", b"9" * 200])
def test_garbage_in_a_temp_file_never_raises(tmp_path, garbage):
    _zone(tmp_path, 0, "cpu-thermal", garbage)
    sensor = ThermalSensor(str(tmp_path))
    reading = sensor.read()
    assert reading.celsius is None
    assert sensor.errors >= 1


def test_garbage_everywhere_never_raises(tmp_path):
    _zone(tmp_path, 0, b"\xff\xfe", "50000")
    _zone(tmp_path, 1, "cpu-thermal", "48000")
    (tmp_path / "class" / "thermal" / "thermal_zone5").write_text("not a directory")
    _cpu(tmp_path, 0, {"scaling_cur_freq": "fast", "cpuinfo_max_freq": ""})
    _cooling(tmp_path, 0, "cpufreq-cpu0", "lots")
    (tmp_path / "devices" / "platform" / "soc" / "soc:firmware").mkdir(parents=True)
    (tmp_path / "devices" / "platform" / "soc" / "soc:firmware" / "get_throttled").write_text(
        "0xzz\n")
    reading = ThermalSensor(str(tmp_path)).read()
    assert reading.celsius == 48.0
    assert (reading.cpufreq_khz, reading.cpufreq_max_khz, reading.throttled) == (None, None,
                                                                                 False)


def test_without_thermal_zones_there_is_no_temperature(tmp_path):
    assert ThermalSensor(str(tmp_path / "nothing-here")).read() == thermal.ThermalReading(
        None, None, None, None, False)
    (tmp_path / "class" / "thermal").mkdir(parents=True)
    assert ThermalSensor(str(tmp_path)).read().celsius is None


def test_cpufreq_is_the_fastest_core_and_the_highest_maximum(gateway):
    _cpu(gateway, 4, {"scaling_cur_freq": "400000", "scaling_max_freq": "2000000"})
    reading = ThermalSensor(str(gateway)).read()
    assert reading.cpufreq_khz == 900_000
    assert reading.cpufreq_max_khz == 2_000_000  # scaling_max_freq when cpuinfo is missing


def test_a_cpufreq_cooling_device_in_use_means_throttled(gateway):
    sensor = ThermalSensor(str(gateway))
    assert sensor.read().throttled is False
    (gateway / "class" / "thermal" / "cooling_device0" / "cur_state").write_text("2\n")
    assert sensor.read().throttled is True


@pytest.mark.parametrize(("bits", "throttled"), [("0", False), ("50000", False),
                                                 ("50005", True), ("0x80008", True),
                                                 ("2", True), ("1", False)])
def test_the_pi_firmware_throttle_bits_are_read(gateway, bits, throttled):
    firmware = gateway / "devices" / "platform" / "soc" / "soc:firmware"
    firmware.mkdir(parents=True)
    (firmware / "get_throttled").write_text(f"{bits}\n")
    assert ThermalSensor(str(gateway)).read().throttled is throttled


# ---- the controller ----


def _drive(controller: ChunkController, temps, *, start: float = 0.0, every: float = 5.0):
    """Feeds one temperature per ``every`` seconds; returns the decisions."""
    return [controller.update(t, start + i * every) for i, t in enumerate(temps)]


def _moves(sizes: list[int]) -> list[int]:
    """+1 for every increase, -1 for every decrease, in order."""
    return [(b > a) - (b < a) for a, b in itertools.pairwise(sizes) if a != b]


def test_heating_shrinks_stepwise_to_the_minimum_and_cooling_grows_back_to_base():
    c = ChunkController(base=128, minimum=16, soft_c=75, hard_c=85, hysteresis_c=5,
                        hold_s=30)
    heat = [60, 65, 70, 74, 76, 78] + [80] * 40
    cool = [72, 68, 64] + [60] * 60
    decisions = _drive(c, heat + cool)
    sizes = [d.chunk_size for d in decisions]
    changes = [(i * 5.0, d.chunk_size) for i, d in enumerate(decisions) if d.changed]
    assert [size for _, size in changes] == [64, 32, 16, 32, 64, 128]
    # Down one step per hold period while above the soft limit, the first at once.
    assert changes[0][0] == 4 * 5.0  # the first sample above 75 °C
    assert changes[1][0] - changes[0][0] >= 30 and changes[2][0] - changes[1][0] >= 30
    # Up only after a hold period below soft - hysteresis, one step per hold.
    first_cool = 5.0 * (len(heat) + 1)  # 68 °C is the first sample below 70
    assert changes[3][0] - first_cool >= 30
    assert changes[4][0] - changes[3][0] >= 30 and changes[5][0] - changes[4][0] >= 30
    assert _moves(sizes) == [-1, -1, -1, 1, 1, 1]
    assert sizes[-1] == 128 and decisions[-1].state == "normal"
    assert not any(d.throttle_intake for d in decisions)


def test_a_temperature_hovering_around_the_soft_limit_does_not_make_the_size_oscillate():
    c = ChunkController(base=128, minimum=16, soft_c=75, hysteresis_c=5, hold_s=30)
    decisions = _drive(c, [74, 76] * 200)  # ±1 °C around the limit for half an hour
    sizes = [d.chunk_size for d in decisions]
    assert all(m == -1 for m in _moves(sizes))  # it may only go down, never back up
    assert sizes[-1] == 16


def test_hovering_around_the_recovery_threshold_does_not_grow_the_size():
    c = ChunkController(base=128, minimum=16, soft_c=75, hysteresis_c=5, hold_s=30)
    _drive(c, [80] * 3)
    reduced = c.chunk_size
    assert reduced < 128
    decisions = _drive(c, [69, 71] * 200, start=100.0)  # never 30 s below 70 °C
    assert {d.chunk_size for d in decisions} == {reduced}
    assert not any(d.changed for d in decisions)


def test_within_the_hysteresis_band_the_size_holds():
    c = ChunkController(base=128, minimum=16, soft_c=75, hysteresis_c=5, hold_s=30)
    c.update(76, 0.0)
    assert c.chunk_size == 64
    decisions = _drive(c, [72] * 100, start=5.0)
    assert {d.chunk_size for d in decisions} == {64}
    assert {d.state for d in decisions} == {"hot"}


def test_the_hard_limit_drops_to_the_minimum_and_throttles_intake_until_well_below():
    c = ChunkController(base=128, minimum=16, soft_c=75, hard_c=85, hysteresis_c=5,
                        hold_s=30)
    d = c.update(85.0, 0.0)
    assert (d.chunk_size, d.throttle_intake, d.state, d.changed) == (16, True, "critical", True)
    assert "hard" in d.reason
    for i, t in enumerate([84.0, 82.0, 80.1]):
        d = c.update(t, 5.0 * (i + 1))
        assert (d.throttle_intake, d.state, d.changed) == (True, "critical", False)
    d = c.update(79.9, 20.0)
    assert (d.throttle_intake, d.state, d.changed, d.chunk_size) == (False, "hot", True, 16)


def test_no_temperature_means_base_size_and_normal():
    c = ChunkController(base=128, minimum=16)
    d = c.update(None, 0.0)
    assert (d.chunk_size, d.throttle_intake, d.state, d.changed) == (128, False, "normal", False)
    c.update(90.0, 1.0)
    d = c.update(None, 2.0)
    assert (d.chunk_size, d.throttle_intake, d.state, d.changed) == (128, False, "normal", True)
    assert c.update(float("nan"), 3.0).chunk_size == 128


def test_changed_is_true_only_when_size_or_throttle_change():
    c = ChunkController(base=64, minimum=16, hold_s=10)
    flags = [d.changed for d in _drive(c, [50, 50, 76, 76, 76, 76], every=5)]
    assert flags == [False, False, True, False, True, False]


def test_the_injected_clock_is_used_when_no_time_is_given():
    now = [0.0]
    c = ChunkController(base=128, minimum=16, hold_s=30, clock=lambda: now[0])
    c.update(80.0)
    assert c.chunk_size == 64
    now[0] = 29.0
    assert c.update(80.0).chunk_size == 64
    now[0] = 30.0
    assert c.update(80.0).chunk_size == 32


def test_odd_sizes_and_steps_still_reach_the_minimum_and_the_base():
    c = ChunkController(base=100, minimum=7, step=0.7, hold_s=1)
    sizes = [d.chunk_size for d in _drive(c, [90.0] * 2 + [80.0] * 20, every=1)]
    assert sizes[-1] == 7
    sizes = [d.chunk_size for d in _drive(c, [50.0] * 40, start=100.0, every=1)]
    assert sizes[-1] == 100
    assert all(b >= a for a, b in itertools.pairwise(sizes))


def test_set_base_on_reload():
    c = ChunkController(base=128, minimum=16)
    c.set_base(256)
    assert c.chunk_size == 256  # an unreduced size follows the base
    c.update(80.0, 0.0)
    assert c.chunk_size == 128
    c.set_base(64, minimum=8)
    assert c.chunk_size == 64  # a reduced size is clamped to the new base
    c.update(90.0, 1.0)
    assert c.chunk_size == 8
    with pytest.raises(ValueError):
        c.set_base(4)  # below the minimum


@pytest.mark.parametrize("kwargs", [dict(base=8, minimum=16), dict(minimum=0),
                                    dict(soft_c=90, hard_c=85), dict(step=1.0),
                                    dict(step=0.0), dict(hysteresis_c=-1), dict(hold_s=-1)])
def test_inconsistent_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ChunkController(**kwargs)
