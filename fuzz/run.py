"""Runs the coverage-guided fuzz targets, each in its own process for a fixed
time, and prints what each reached: executions, executions per second, the
coverage libFuzzer counted (``cov``: edges, ``ft``: features), the corpus,
and the crashes it found. Exits non-zero if any target crashed or did not run.

    .venv/bin/python fuzz/run.py --seconds 60
    .venv/bin/python fuzz/run.py --seconds 600 --target pcd --keep-corpus /tmp/pcd

The seed corpus in fuzz/corpus/<target>/ is only read; new inputs go to a
scratch corpus (or --keep-corpus). Crashing inputs and each target's log are
written to --artifacts (a new temporary directory unless given); reproduce a
crash with ``.venv/bin/python fuzz/fuzz_<target>.py CRASH_FILE``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("nmea", "pcd", "las", "geojson")
_STATS = re.compile(r"^#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/(\S+))?.*?"
                    r"(?:exec/s: (\d+))?")
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second")


@dataclass
class Result:
    target: str
    returncode: int
    runs: int = 0
    seconds: float = 0.0
    cov: int = 0
    ft: int = 0
    corpus: str = "-"
    crashes: int = 0
    log: Path | None = None

    @property
    def execs_per_s(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.crashes == 0 and self.returncode == 0 and self.runs > 0


def parse(target: str, output: str, returncode: int, seconds: float,
          artifacts: Path) -> Result:
    result = Result(target, returncode, seconds=seconds)
    for line in output.splitlines():
        if m := _STATS.match(line):
            result.runs = int(m[1])
            result.cov, result.ft = int(m[2]), int(m[3])
            if m[4]:
                result.corpus = f"{m[4]}/{m[5]}"
        elif m := _DONE.match(line):
            result.runs = int(m[1])
            result.seconds = max(float(m[2]), 1.0)
    result.crashes = sum(1 for p in artifacts.glob(f"{target}-*")
                         if p.name.split("-", 2)[1] in ("crash", "timeout", "oom", "leak"))
    if returncode != 0 and result.crashes == 0 and "Uncaught Python exception" in output:
        result.crashes = 1
    return result


def execute(target: str, command: list[str], seconds: int, artifacts: Path,
            env: dict[str, str] | None = None) -> Result:
    """Runs one libFuzzer command (artifacts prefixed ``<target>-`` in
    ``artifacts``), keeps its log there, and reads what it reached."""
    started = time.monotonic()
    # libFuzzer's own -max_total_time ends the run; this is only the backstop.
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", timeout=seconds * 2 + 120,
                          check=False)
    elapsed = time.monotonic() - started
    log = artifacts / f"{target}.log"
    log.write_text(proc.stdout)
    result = parse(target, proc.stdout, proc.returncode, elapsed, artifacts)
    result.log = log
    return result


def run(target: str, seconds: int, rss_limit_mb: int, timeout_s: int, artifacts: Path,
        corpus: Path, extra: list[str]) -> Result:
    corpus.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, str(HERE / f"fuzz_{target}.py"),
        str(corpus), str(HERE / "corpus" / target),
        f"-max_total_time={seconds}", f"-rss_limit_mb={rss_limit_mb}",
        f"-timeout={timeout_s}", f"-artifact_prefix={artifacts}/{target}-",
        "-print_final_stats=1", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)}
    return execute(target, command, seconds, artifacts, env)


def report(results: list[Result], artifacts: Path) -> int:
    """Prints the table of results; 1 if any target crashed or did not run."""
    print(f"{'target':8} {'runs':>9} {'exec/s':>8} {'cov':>6} {'ft':>6} {'corpus':>12} "
          f"{'crashes':>7}")
    for r in results:
        print(f"{r.target:8} {r.runs:>9} {r.execs_per_s:>8.0f} {r.cov:>6} {r.ft:>6} "
              f"{r.corpus:>12} {r.crashes:>7}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"{r.target}: exit {r.returncode}, {r.crashes} crashes; log {r.log}",
              file=sys.stderr)
    print(f"artifacts and logs: {artifacts}", file=sys.stderr)
    return 1 if failed else 0


def options(description: str, targets: Sequence[str]) -> argparse.ArgumentParser:
    """The command line every runner takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--target", action="append", choices=targets,
                        help="a target to run (repeatable; default: all)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--timeout", type=int, default=10, help="seconds for one input")
    parser.add_argument("--artifacts", type=Path, help="crashes and logs go here")
    parser.add_argument("--keep-corpus", type=Path,
                        help="grow the corpus here (one folder per target) and keep it")
    parser.add_argument("libfuzzer", nargs="*", help="more libFuzzer flags, after --")
    return parser


def run_all(targets: Sequence[str], args: argparse.Namespace, prefix: str,
            one: Callable[[str, Path, Path, Path], Result]) -> int:
    """``one(target, artifacts, corpus, scratch)`` for each target in turn, then
    the table; scratch is a temporary directory, gone afterwards."""
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(prefix=f"{prefix}-corpus-")
    corpus_root = args.keep_corpus or Path(scratch.name)
    results = []
    with scratch:
        for target in targets:
            result = one(target, artifacts, corpus_root / target, Path(scratch.name))
            results.append(result)
            print(f"{target}: {result.runs} runs, cov {result.cov}, ft {result.ft}, "
                  f"{result.crashes} crashes", file=sys.stderr, flush=True)
    return report(results, artifacts)


def main(argv: list[str] | None = None) -> int:
    args = options(__doc__.split("\n\n")[0], TARGETS).parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install atheris (Linux x86_64 wheels)",
              file=sys.stderr)
        return 2
    return run_all(args.target or TARGETS, args, "gatewayd-fuzz",
                   lambda target, artifacts, corpus, _: run(
                       target, args.seconds, args.rss_limit_mb, args.timeout, artifacts,
                       corpus, args.libfuzzer))


if __name__ == "__main__":
    sys.exit(main())
