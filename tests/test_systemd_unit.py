"""The shipped systemd unit: it verifies cleanly, its sandbox scores at most
1.5 with ``systemd-analyze security``, it carries the directives the daemon
relies on, and the daemon's workload still runs under the parts of its
sandbox that can be reproduced without systemd as PID 1."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "gatewayd.service"
DROP_IN = ROOT / "systemd" / "gatewayd-notify-reload.conf"
ANALYZE = shutil.which("systemd-analyze")
MAX_EXPOSURE = 1.5  # systemd-hostnamed, as shipped

needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")


def _directives(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` to every value it is given, in order, comments left out."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
    return subprocess.run([ANALYZE, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def _systemd_version() -> int:
    out = _analyze("--version", cwd=ROOT).stdout
    match = re.match(r"systemd (\d+)", out)
    return int(match.group(1)) if match else 0


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at an executable that exists here."""
    gatewayd = Path(sys.executable).parent / "gatewayd"
    executable = gatewayd if gatewayd.exists() else Path("/bin/true")
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/gatewayd " in text
    (tmp_path / "gatewayd.service").write_text(
        text.replace("ExecStart=/usr/bin/gatewayd ", f"ExecStart={executable} "))
    return tmp_path


# ---- systemd-analyze ----


@needs_analyze
def test_the_unit_verifies_without_a_single_warning(unit_dir):
    result = _analyze("verify", "--man=no", "gatewayd.service", cwd=unit_dir)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == "", output


@needs_analyze
def test_verify_would_notice_a_broken_directive(unit_dir):
    unit = unit_dir / "gatewayd.service"
    unit.write_text(unit.read_text().replace(
        "DeviceAllow=char-ttyACM rw", "DeviceAllow=ttyACM rw\nNoSuchSetting=1"))
    result = _analyze("verify", "--man=no", "gatewayd.service", cwd=unit_dir)
    output = result.stdout + result.stderr
    assert "NoSuchSetting" in output and "ttyACM" in output


@needs_analyze
def test_the_sandbox_scores_at_most_1_5():
    result = _analyze("security", "--offline=true", "--no-pager", str(UNIT), cwd=ROOT)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@needs_analyze
def test_the_decisive_sandbox_settings_are_in_force():
    result = _analyze("security", "--offline=true", "--json=short", str(UNIT), cwd=ROOT)
    checks = {item["name"]: item for item in json.loads(result.stdout)}
    for name in ("NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateTmp=",
                 "MemoryDenyWriteExecute=", "RestrictNamespaces=~user",
                 "SystemCallFilter=~@privileged", "SystemCallFilter=~@resources",
                 "SystemCallArchitectures=", "CapabilityBoundingSet=~CAP_SYS_ADMIN",
                 "RestrictAddressFamilies=~AF_NETLINK", "RestrictAddressFamilies=~AF_PACKET",
                 "ProtectKernelTunables=", "ProtectProc=", "PrivateMounts=", "RemoveIPC=",
                 "NotifyAccess=", "ProtectClock="):
        assert not checks[name]["exposure"], f"{name} is not in force: {checks[name]}"


@needs_analyze
def test_the_notify_reload_drop_in_is_read_with_the_unit(unit_dir):
    drop_ins = unit_dir / "gatewayd.service.d"
    drop_ins.mkdir()
    shutil.copy(DROP_IN, drop_ins / "notify-reload.conf")
    result = _analyze("verify", "--man=no", "gatewayd.service", cwd=unit_dir)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line]
    if _systemd_version() >= 253:
        assert complaints == []
    else:
        # Older systemd reads the drop-in and rejects exactly what is new in 253.
        assert len(complaints) == 2, complaints
        assert "notify-reload" in complaints[0] and "ReloadSignal" in complaints[1]


# ---- what the daemon relies on ----


def test_the_unit_carries_the_directives_the_daemon_relies_on():
    d = _directives(UNIT)
    one = {key: values[-1] for key, values in d.items()}
    assert one["Service.Type"] == "notify"
    assert one["Service.ExecStart"] == "/usr/bin/gatewayd run --config /etc/gatewayd/gatewayd.toml"
    assert one["Service.ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Service.NotifyAccess"] == "main"
    assert one["Service.WatchdogSec"] == "30s"
    assert one["Service.Restart"] == "on-failure"
    assert one["Service.OOMPolicy"] == "continue"
    assert one["Service.KillMode"] == "mixed"
    assert one["Service.TimeoutStopSec"] == "20s"  # the 10 s drain, and room to stop workers
    assert {"Unit.StartLimitIntervalSec", "Unit.StartLimitBurst", "Service.RestartSec"} <= set(d)
    environment = " ".join(d["Service.Environment"]).split()
    assert {"MALLOC_ARENA_MAX=2", "OPENBLAS_NUM_THREADS=1", "OMP_NUM_THREADS=1"} <= set(
        environment)
    assert (one["Service.User"], one["Service.Group"]) == ("gatewayd", "gatewayd")
    assert one["Service.SupplementaryGroups"] == "dialout"
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert one[f"Service.{key}"] == "gatewayd"
    assert one["Service.UMask"] == "0027"
    assert one["Service.DevicePolicy"] == "closed"
    assert set(d["Service.DeviceAllow"]) == {"char-ttyUSB rw", "char-ttyACM rw",
                                             "char-ttyAMA rw"}
    # systemd resolves a device group when the unit starts and leaves out one whose
    # driver is not loaded yet: the modular drivers are loaded first.
    for driver in ("usbserial", "cdc_acm"):
        for key in ("Unit.Wants", "Unit.After"):
            assert f"modprobe@{driver}.service" in " ".join(d[key]).split(), (driver, key)
    assert one["Service.CapabilityBoundingSet"] == ""
    assert one["Service.RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one["Service.MemoryDenyWriteExecute"] == "yes"


def test_the_sandbox_leaves_the_daemon_what_it_needs():
    d = _directives(UNIT)
    one = {key: values[-1] for key, values in d.items()}
    # The serial ports live in the host's /dev: a private /dev would hide them.
    assert one.get("Service.PrivateDevices", "no") == "no"
    # MQTT needs the network.
    assert one.get("Service.PrivateNetwork", "no") == "no"
    # Workers cap their address space: prlimit64 must stay allowed, whatever
    # version of systemd files it under.
    filters = d["Service.SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert filters.index("prlimit64") > filters.index("~@privileged @resources")
    # Workers share arrays through files in /dev/shm; nothing may hide it.
    assert "/dev/shm" not in " ".join(d.get("Service.InaccessiblePaths", []))
    assert one["Service.ProtectSystem"] == "strict"  # /dev stays writable under strict
    # No setting that would break the forkserver's fork and AF_UNIX sockets.
    assert "AF_UNIX" in one["Service.RestrictAddressFamilies"]
    assert one.get("Service.RestrictNamespaces") == "yes"  # fork is not a namespace


def test_the_drop_in_switches_to_notify_reload():
    d = _directives(DROP_IN)
    assert d == {"Service.Type": ["notify-reload"], "Service.ReloadSignal": ["SIGHUP"],
                 "Service.ExecReload": [""]}


# ---- the workload under a reproduction of the sandbox ----

# System call numbers of @resources (systemd 252) for the architectures the
# gateway ships on, and their seccomp audit architecture.
_RESOURCES = {
    "x86_64": (0xC000003E, {"ioprio_set": 251, "mbind": 237, "migrate_pages": 256,
                            "move_pages": 279, "sched_setaffinity": 203,
                            "sched_setattr": 314, "sched_setparam": 142,
                            "sched_setscheduler": 144, "set_mempolicy": 238,
                            "setpriority": 141, "setrlimit": 160}),
    "aarch64": (0xC00000B7, {"ioprio_set": 30, "mbind": 235, "migrate_pages": 238,
                             "move_pages": 239, "sched_setaffinity": 122,
                             "sched_setattr": 274, "sched_setparam": 118,
                             "sched_setscheduler": 119, "set_mempolicy": 237,
                             "setpriority": 140, "setrlimit": 164}),
}

_SANDBOXED = textwrap.dedent("""
    import asyncio, ctypes, json, os, sys

    arch, denied, setrlimit_nr = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    # seccomp_data: nr at offset 0, arch at 4. Like SystemCallFilter= with
    # SystemCallErrorNumber=EPERM: the @resources calls fail with EPERM.
    LD, JEQ, RET = 0x20, 0x15, 0x06
    ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
    n = len(denied)
    program = [Insn(LD, 0, 0, 4), Insn(JEQ, 0, n + 1, arch), Insn(LD, 0, 0, 0)]
    for i, nr in enumerate(denied):
        program.append(Insn(JEQ, n - i, 0, nr))
    program += [Insn(RET, 0, 0, ALLOW), Insn(RET, 0, 0, EPERM)]
    insns = (Insn * len(program))(*program)
    prog = Prog(len(program), insns)

    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS: NoNewPrivileges=yes
    if libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) != 0:  # PR_SET_SECCOMP
        sys.exit(77)
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))
    except PermissionError:
        pass
    else:
        raise SystemExit("the filter is not in force")
    # The old setrlimit system call is refused; glibc's setrlimit() is prlimit64.
    limit = (ctypes.c_ulong * 2)(2**63, 2**63)
    assert libc.syscall(ctypes.c_long(setrlimit_nr), ctypes.c_long(9), limit) == -1
    assert ctypes.get_errno() == 1
    # PR_SET_MDWE / PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3): MemoryDenyWriteExecute=yes.
    mdwe = libc.prctl(65, 1, 0, 0, 0) == 0
    os.umask(0o027)

    import numpy as np
    from gatewayd import geometry
    from gatewayd.workers import ChunkMemoryError, SharedArray, WorkerPool

    hull = geometry.convex_hull(np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]]))
    moved = geometry.transform(np.array([[10.0, 50.0]]), "EPSG:4326", "EPSG:3857")
    blas = float(np.ones((64, 64)) @ np.ones(64) @ np.ones(64))

    async def main():
        async with WorkerPool(size=2, handler="worker_tasks:handle", init="worker_tasks:init",
                              init_args=("sandboxed",), memory_limit_mb=300,
                              chunk_timeout_s=30) as pool:
            echoed = await pool.run("c1", ("echo", 1))
            limits, env = await pool.run("c2", ("limits", None))
            shared = SharedArray.create(np.arange(10.0))
            try:
                total = await pool.run("c3", ("scale_shared", (shared, 2.0)))
            finally:
                shared.release()
            try:
                await pool.run("c4", ("allocate_mb", 600))
                memory = "allocated past the cap"
            except ChunkMemoryError:
                memory = "MemoryError"
            after = await pool.run("c5", ("echo", 2))
        cap = [l for l in limits.splitlines() if l.startswith("Max address space")][0]
        return dict(echo=echoed[2], after=after[2], cap=cap.split()[3], total=total,
                    memory=memory, arena=env.get("MALLOC_ARENA_MAX"))

    result = asyncio.run(main())
    result.update(mdwe=mdwe, hull=len(hull), moved=float(moved.points[0][0]), blas=blas)
    print(json.dumps(result))
""")


@pytest.mark.skipif(platform.machine() not in _RESOURCES,
                    reason=f"no system call table here for {platform.machine()}")
def test_the_worker_pool_runs_under_no_new_privs_mdwe_and_the_resources_filter(tmp_path):
    """systemd is not PID 1 in the test environment, so ``systemd-run -p ...``
    cannot apply the unit; this reproduces the parts that could break the
    workload: NoNewPrivileges, MemoryDenyWriteExecute, SystemCallFilter=
    ~@resources (workers still cap RLIMIT_AS), UMask and the Environment=."""
    arch, numbers = _RESOURCES[platform.machine()]
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-c", _SANDBOXED,
         json.dumps([arch, sorted(numbers.values()), numbers["setrlimit"]])],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode == 77:
        pytest.skip("seccomp filters are not available here")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert (out["echo"], out["after"]) == (1, 2)
    assert out["cap"] == str(300 * 1024 * 1024)  # setrlimit went through as prlimit64
    assert out["total"] == 90.0  # numpy and /dev/shm in a worker
    assert out["memory"] == "MemoryError"
    assert out["arena"] == "2"
    assert out["hull"] == 5 and out["moved"] == pytest.approx(1113194.9, abs=0.1)
    assert out["blas"] == 64 * 64
    if not out["mdwe"]:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3): ran without W^X")
