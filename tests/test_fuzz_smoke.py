"""The coverage-guided fuzz targets run, briefly, each without a crash.

A short run of fuzz/run.py per target: it catches a target that no longer
starts (an import moved, a seed file refused) and any crash that libFuzzer
finds within seconds from the seed corpus. Longer runs: ``make fuzz``.

The same for the C code's targets through fuzz/run_native.py, which first
builds them with clang's address and undefined-behaviour sanitizers: it
catches a harness that no longer builds against native/src, and runs every
input in fuzz/native/corpus/ (each once crashed a target) among the first.
Longer runs: ``make fuzz-native``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = ("nmea", "pcd", "las", "geojson")
NATIVE_TARGETS = ("nmea", "lzf", "mqtt", "points", "tpv", "zones")

pytestmark = pytest.mark.slow
needs_atheris = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install atheris; wheels for Linux x86_64 only)")
needs_clang = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("clang-14", "clang")),
    reason="clang is not installed (apt-get install clang-14 libclang-rt-14-dev "
           "libfuzzer-14-dev, or make fuzz-native)")


def short_run(runner: str, target: str, artifacts: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(FUZZ / runner), "--seconds", "5", "--target", target,
         "--artifacts", str(artifacts)],
        capture_output=True, text=True, timeout=110, check=False)
    log = artifacts / f"{target}.log"
    detail = log.read_text()[-3000:] if log.exists() else proc.stderr
    assert proc.returncode == 0, f"{proc.stdout}\n{detail}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(target))
    runs, cov = int(line.split()[1]), int(line.split()[3])
    assert runs > 0 and cov > 0, line


@needs_atheris
@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_a_short_fuzz_run_finds_no_crash(target, tmp_path):
    short_run("run.py", target, tmp_path)


@pytest.fixture(scope="module")
def native_targets_built() -> None:
    proc = subprocess.run([sys.executable, str(FUZZ / "run_native.py"), "--build-only"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr


@needs_clang
@pytest.mark.timeout(700)  # the first one builds them all
@pytest.mark.parametrize("target", NATIVE_TARGETS)
def test_a_short_native_fuzz_run_finds_no_crash(native_targets_built, target, tmp_path):
    short_run("run_native.py", target, tmp_path)
