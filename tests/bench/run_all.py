"""Every benchmark, one after another, each in a process of its own.

    .venv/bin/python tests/bench/run_all.py [--quick] [NAME...]

NAME is a benchmark without its ``bench_`` prefix (core, replay, serial,
outbox, mqtt_client, daemon, disk); all of them by default. ``--quick`` is
passed on to those that have it. Each prints its own figures, and writes them
to tests/bench/out/ where it keeps a record. The exit status is the number of
benchmarks that failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["core", "replay", "serial", "outbox", "mqtt_client", "daemon", "disk"]
NO_QUICK = {"disk"}  # already short
NEEDS_ROOT = {"disk"}  # mounts a filesystem of its own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short run of each")
    ap.add_argument("names", nargs="*", metavar="NAME", help=", ".join(ORDER))
    args = ap.parse_args()
    unknown = set(args.names) - set(ORDER)
    if unknown:
        ap.error(f"no such benchmark: {', '.join(sorted(unknown))} (known: {', '.join(ORDER)})")
    failed = []
    for name in args.names or ORDER:
        if name in NEEDS_ROOT and os.geteuid() != 0:
            print(f"\n=== bench_{name}: skipped, it needs root", flush=True)
            continue
        cmd = [sys.executable, str(HERE / f"bench_{name}.py")]
        if args.quick and name not in NO_QUICK:
            cmd.append("--quick")
        print(f"\n=== bench_{name}", flush=True)
        started = time.monotonic()
        code = subprocess.call(cmd)
        print(f"=== bench_{name}: exit {code} after {time.monotonic() - started:.0f} s",
              flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    sys.exit(len(failed))


if __name__ == "__main__":
    main()
