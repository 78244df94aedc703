"""What differs when the suite runs under qemu-user (cross-build/arm-test.sh).

- ``TIME_SCALE`` (``GATEWAYD_TEST_TIME_SCALE``, 1 unless set): emulated code
  runs 10 to 30 times slower, so the per-test timeouts and the waits of tests
  that drive real processes at a real pace scale by it. What they assert does
  not change.
- ``cap_enforced()``: qemu-user accepts setrlimit(RLIMIT_AS) and applies
  nothing, since the limit would fall on the emulator itself. A test of the
  cap can only pass or fail where the kernel enforces it; this asks a child
  process, once.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

TIME_SCALE = float(os.environ.get("GATEWAYD_TEST_TIME_SCALE") or 1)

_PROBE = """
import mmap, resource
resource.setrlimit(resource.RLIMIT_AS, (64 << 20, 64 << 20))
try:
    mmap.mmap(-1, 256 << 20)
except (OSError, MemoryError):
    raise SystemExit(0)
raise SystemExit(1)
"""

NOT_ENFORCED = ("setrlimit(RLIMIT_AS) is accepted but not applied here (qemu-user ignores "
                "it): there is no cap to test")


@functools.cache
def cap_enforced() -> bool:
    """True where a process capped at 64 MiB cannot map 256 MiB more."""
    return subprocess.run([sys.executable, "-c", _PROBE], timeout=300).returncode == 0
