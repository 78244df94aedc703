"""A Debian 12 system booted under systemd-nspawn, for tests that need a real
systemd as PID 1 (tests/test_systemd_boot.py).

Root filesystems are made with debootstrap and cached outside the checkout, in
``$GATEWAYD_SYSTEMD_CACHE`` (default /var/cache/gatewayd-systemd), one
directory a flavour named by a hash of its recipe, so that a changed recipe
builds anew:

- ``bookworm``: minbase, systemd 252, D-Bus, Mosquitto, Python 3.11 and the
  GEOS and PROJ runtime libraries, as on a gateway running Debian 12.
- ``backports``: the same with systemd from bookworm-backports (254), kept as an
  overlay layer above ``bookworm``.

Each boot runs on an overlay of its own (the cached layers stay read-only), in
its own network namespace with only loopback, so the container's Mosquitto
meets nothing on the host. The host needs no systemd: nspawn runs with
``--register=no --keep-unit``. The container gets the unified cgroup hierarchy,
where systemd enforces DevicePolicy=/DeviceAllow= with BPF programs; nspawn's
own system call filter refuses bpf(2) unless told otherwise, and systemd then
only notes at debug level that "BPF device control is not supported" and
starts every unit without its device policy. Commands run in the container
through nsenter(1), with a clean environment.

``python tests/nspawn.py build [FLAVOUR...]`` builds (or finds) the root
filesystems; ``make systemd-test`` does that and runs the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["CACHE", "FLAVOURS", "Machine", "NspawnError", "build", "end", "missing_tools"]

CACHE = Path(os.environ.get("GATEWAYD_SYSTEMD_CACHE", "/var/cache/gatewayd-systemd"))
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "mosquitto", "mosquitto-clients", "python3",
            "python3-venv", "libgeos-c1v5", "libproj25", "proj-data", "procps")
HOSTNAME = "gw-nspawn"
# A change here or in PACKAGES makes a new root filesystem.
_RECIPE = 1
_BACKPORTS = ("systemd", "systemd-sysv")
FLAVOURS = ("bookworm", "backports")
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NspawnError(RuntimeError):
    """A root filesystem could not be built, or a container did not come up."""


def missing_tools() -> list[str]:
    """What this host lacks to build and boot the containers."""
    missing = [tool for tool in ("systemd-nspawn", "debootstrap", "nsenter", "mount")
               if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def _layer_names() -> dict[str, str]:
    base = f"bookworm-{_key(_RECIPE, MIRROR, PACKAGES)}"
    return {"bookworm": base, "backports": f"backports-{_key(base, _BACKPORTS)}"}


def _layers(flavour: str) -> list[Path]:
    """The flavour's directories, uppermost first (overlayfs lowerdir order)."""
    names = _layer_names()
    stack = [names["bookworm"]] if flavour == "bookworm" else [names["backports"],
                                                              names["bookworm"]]
    return [CACHE / name for name in stack]


def _run(cmd: Sequence[str | os.PathLike[str]], log: Path, timeout: float) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(map(str, cmd))}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise NspawnError(f"{cmd[0]} failed ({done.returncode}), see {log}:\n{tail}")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _nspawn_command(root: Path, *args: str) -> list[str]:
    """A plain command in a root filesystem (not booted), with the host's network."""
    return ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(root),
            "--setenv=DEBIAN_FRONTEND=noninteractive", *args]


def _build_bookworm(target: Path, log: Path) -> None:
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
          "bookworm", target, MIRROR], log, timeout=1800)
    # What an installed Debian has and debootstrap leaves out (or copies from the host).
    (target / "etc/hostname").write_text(HOSTNAME + "\n")
    (target / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
                                      "::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    (target / "etc/machine-id").write_text("")  # a new one each boot
    shutil.rmtree(target / "var/cache/apt/archives", ignore_errors=True)
    (target / "var/cache/apt/archives/partial").mkdir(parents=True)


def _build_backports(target: Path, log: Path) -> None:
    lower = _layers("bookworm")[0]
    work = target.with_name(target.name + ".work")
    merged = target.with_name(target.name + ".merged")
    for d in (target, work, merged):
        d.mkdir(parents=True)
    _run(["mount", "-t", "overlay", "overlay", "-o",
          f"lowerdir={lower},upperdir={target},workdir={work}", merged], log, timeout=60)
    try:
        (merged / "etc/apt/sources.list.d/backports.list").write_text(
            f"deb {MIRROR} bookworm-backports main\n")
        _run(_nspawn_command(merged, "sh", "-c",
                             "apt-get update -qq && apt-get install -y -qq "
                             f"-t bookworm-backports {' '.join(_BACKPORTS)} && apt-get clean"),
             log, timeout=1800)
        (merged / "etc/machine-id").write_text("")  # the package made one; a new one each boot
    finally:
        subprocess.run(["umount", merged], check=False)
        shutil.rmtree(work, ignore_errors=True)
        merged.rmdir()


def build(flavour: str, log: Path | None = None) -> list[Path]:
    """The flavour's layers, built first if the cache lacks them."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r} (expected one of {FLAVOURS})")
    needed = ["bookworm"] if flavour == "bookworm" else ["bookworm", "backports"]
    with _locked():
        for name in needed:
            final = _layers(name)[0]
            if (final / ".complete").exists():
                continue
            partial = final.with_name(final.name + ".partial")
            for stale in (partial, partial.with_name(partial.name + ".work")):
                shutil.rmtree(stale, ignore_errors=True)
            logfile = log or CACHE / f"{final.name}.log"
            logfile.write_text("")
            started = time.monotonic()
            (_build_bookworm if name == "bookworm" else _build_backports)(partial, logfile)
            (partial / ".complete").write_text(f"{time.monotonic() - started:.0f} s\n")
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
    return _layers(flavour)


def _die_with_parent() -> None:
    # nspawn powers the container off on SIGTERM: a killed test run leaves none behind.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_runs() -> None:
    """Overlays left by test runs that were killed before they could clean up."""
    runs = CACHE / "run"
    if not runs.is_dir():
        return
    for run in runs.iterdir():
        pid = run.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            subprocess.run(["umount", "-l", run / "merged"], capture_output=True, check=False)
            shutil.rmtree(run, ignore_errors=True)


class Machine:
    """One booted container. ``run`` executes a command in it and returns the
    completed process; ``root`` is its file system as the host sees it."""

    def __init__(self, flavour: str, name: str) -> None:
        self.flavour = flavour
        self.name = name
        self.run_dir = CACHE / "run" / f"{name}-{os.getpid()}"
        self.root = self.run_dir / "merged"
        self.log = self.run_dir / "console.log"
        self.leader = 0
        self._nspawn: subprocess.Popen[bytes] | None = None

    def boot(self, timeout_s: float = 120.0) -> Machine:
        layers = build(self.flavour)
        _sweep_runs()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        for d in ("upper", "work", "merged"):
            (self.run_dir / d).mkdir(parents=True)
        lower = ":".join(map(str, layers))
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={self.run_dir / 'upper'},"
                        f"workdir={self.run_dir / 'work'}", self.root], check=True)
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with self.log.open("wb") as out:
            self._nspawn = subprocess.Popen(
                ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(self.root),
                 "-M", self.name, "--private-network", "--link-journal=no",
                 "--system-call-filter=bpf", "--console=read-only", "-b"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        try:
            self.leader = self._find_leader(deadline)
            while True:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    break
                if time.monotonic() > deadline:
                    raise NspawnError(f"{self.name} did not boot (state {state!r}):\n"
                                      + self.log.read_text(errors="replace")[-3000:])
                time.sleep(0.5)
        except BaseException:
            self.close()
            raise
        return self

    def _find_leader(self, deadline: float) -> int:
        """The container's PID 1: nspawn is the subreaper of its payload."""
        assert self._nspawn is not None
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise NspawnError(f"systemd-nspawn exited with {self._nspawn.returncode}:\n"
                                  + self.log.read_text(errors="replace")[-3000:])
            children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children")
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            time.sleep(0.1)
        raise NspawnError(f"no init came up in {self.name}:\n"
                          + self.log.read_text(errors="replace")[-3000:])

    def command(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i", _PATH, "LC_ALL=C.UTF-8",
                "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 120.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.command(*args), capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise NspawnError(f"{' '.join(args)} exited with {done.returncode} in "
                              f"{self.name}:\n{done.stdout}{done.stderr}")
        return done

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """A command left running in the container (its stdin is a pipe); end it
        with :func:`end`."""
        return subprocess.Popen(self.command(*args), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=_die_with_parent)

    def close(self) -> None:
        if self._nspawn is not None:
            if self._nspawn.poll() is None:
                self._nspawn.terminate()  # SIGTERM: nspawn halts the container cleanly
                try:
                    self._nspawn.wait(60)
                except subprocess.TimeoutExpired:
                    self._nspawn.kill()
                    self._nspawn.wait(10)
            self._nspawn = None
        if self.root.is_mount():
            subprocess.run(["umount", self.root], check=False)
        if self.root.is_mount():
            subprocess.run(["umount", "-l", self.root], check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def end(process: subprocess.Popen[str]) -> None:
    """Ends a command :meth:`Machine.spawn` started. nsenter runs it as a child
    (entering a PID namespace takes a fork) that outlives nsenter itself, so the
    child goes first."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    with contextlib.suppress(OSError):
        for pid in children.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    process.kill()
    process.wait(10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the cached root filesystems")
    b.add_argument("flavours", nargs="*", metavar="FLAVOUR",
                   help=f"one of {', '.join(FLAVOURS)} (default: all)")
    args = parser.parse_args(argv)
    if missing := missing_tools():
        print(f"cannot build: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    for flavour in args.flavours or FLAVOURS:
        started = time.monotonic()
        layers = build(flavour)
        print(f"{flavour}: {' over '.join(map(str, layers))} "
              f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
