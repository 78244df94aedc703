"""The libFuzzer targets for the C code build and run, briefly, each
without a crash.

fuzz/run_native.py builds every target with clang's address and
undefined-behaviour sanitizers, then runs each for a few seconds: it
catches a harness that no longer builds against native/src, every input in
fuzz/native/corpus/ (each once crashed a target), and any crash found within
seconds from the seeds. Longer runs: ``make fuzz-native``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "fuzz" / "run_native.py"
TARGETS = ("nmea", "lzf", "points", "zones")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not any(shutil.which(c) for c in ("clang-14", "clang")),
                       reason="clang is not installed (apt-get install clang-14 "
                              "libclang-rt-14-dev libfuzzer-14-dev, or make fuzz-native)"),
]


@pytest.fixture(scope="module")
def built() -> None:
    proc = subprocess.run([sys.executable, str(RUN), "--build-only"], capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.timeout(700)
@pytest.mark.parametrize("target", TARGETS)
def test_a_short_native_fuzz_run_finds_no_crash(built, target, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(RUN), "--seconds", "5", "--target", target,
         "--artifacts", str(tmp_path)],
        capture_output=True, text=True, timeout=110, check=False)
    log = tmp_path / f"{target}.log"
    detail = log.read_text()[-3000:] if log.exists() else proc.stderr
    assert proc.returncode == 0, f"{proc.stdout}\n{detail}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(target))
    runs, cov = int(line.split()[1]), int(line.split()[3])
    assert runs > 0 and cov > 0, line
