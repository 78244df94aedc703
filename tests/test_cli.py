"""The command line as a user meets it: exit codes, one-line errors, no
tracebacks without --debug. Runs the real console entry in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent / "gatewayd" / "samples"


def gatewayd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gatewayd", *args], capture_output=True,
                          text=True, timeout=timeout)


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


def test_version_names_the_libraries():
    result = gatewayd("version")
    assert result.returncode == 0
    assert "GEOS 3." in result.stdout and "PROJ" in result.stdout


def test_an_unknown_command_is_a_usage_error():
    result = gatewayd("launch")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "invalid choice" in result.stderr
    _no_traceback(result)


def test_a_missing_input_is_a_usage_error(tmp_path):
    result = gatewayd("replay", str(tmp_path / "nope.nmea"))
    assert result.returncode == 2
    assert "nope.nmea" in result.stderr
    _no_traceback(result)


def test_an_unknown_target_crs_exits_10_naming_it():
    result = gatewayd("replay", "--target-crs", "EPSG:999999",
                      str(SAMPLES / "capture-drive.nmea"))
    assert result.returncode == 10
    assert "EPSG:999999" in result.stderr
    _no_traceback(result)


def test_an_unrecognisable_input_exits_11(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    result = gatewayd("replay", str(junk))
    assert result.returncode == 11
    assert "format" in result.stderr
    _no_traceback(result)


def test_a_bad_setting_exits_2_naming_the_key(tmp_path):
    result = gatewayd("replay", "--set", "pipeline.chunk_size=-3",
                      str(SAMPLES / "capture-drive.nmea"))
    assert result.returncode == 2
    assert "pipeline.chunk_size" in result.stderr
    _no_traceback(result)


def test_replay_writes_records_and_a_summary(tmp_path):
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    result = gatewayd("replay", "-o", str(out), "--summary", str(summary),
                      "--target-crs", "EPSG:32632", "--set",
                      f"zones.file={SAMPLES / 'zones.geojson'}",
                      str(SAMPLES / "capture-drive.nmea"))
    _no_traceback(result)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    stats = json.loads(summary.read_text())
    assert stats["fixes"] == len(lines) > 100
    assert stats["bad_checksums"] >= 1
    assert {r["kind"] for r in lines} == {"gps_fix"}
    assert any("depot-yard" in r["zones"] for r in lines)


@pytest.mark.parametrize("command", [["check-config"], ["replay", "--help"]])
def test_informational_commands_succeed(command):
    result = gatewayd(*command)
    assert result.returncode == 0, result.stderr
