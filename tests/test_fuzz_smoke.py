"""The coverage-guided fuzz targets run, briefly, each without a crash.

A short run of fuzz/run.py per target: it catches a target that no longer
starts (an import moved, a seed file refused) and any crash that libFuzzer
finds within seconds from the seed corpus. Longer runs: ``make fuzz``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "fuzz" / "run.py"
TARGETS = ("nmea", "pcd", "las", "geojson")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                       reason="atheris is not installed (pip install atheris; "
                              "wheels for Linux x86_64 only)"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS)
def test_a_short_fuzz_run_finds_no_crash(target, tmp_path):
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
