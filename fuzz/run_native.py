"""Builds the libFuzzer targets for the C code (fuzz/native/fuzz_*.c, compiled
straight from native/src with clang's fuzzer, address and undefined-behaviour
sanitizers, every finding fatal), runs each in turn for a fixed time, and
prints what each reached, as fuzz/run.py does for the Python-level targets.
Exits non-zero if a target crashed (a sanitizer report, a failed check, a
leak, a timeout), did not build or did not run.

    .venv/bin/python fuzz/run_native.py --seconds 60
    .venv/bin/python fuzz/run_native.py --seconds 1800 --target nmea --keep-corpus /tmp/c

Seeds: the inputs in fuzz/native/corpus/<target>/ (among them every input
that once crashed a target), and, made afresh each run, seeds in the
target's format from fuzz/corpus/ where one fits (NMEA captures; the LZF
data of the binary_compressed PCD files) and a few small crafted ones.
fuzz/native/<target>.dict, where there is one, is the target's dictionary.
Binaries go to build/fuzz-native/; crashing inputs and logs to --artifacts.
Reproduce a crash with ``build/fuzz-native/fuzz_<target> CRASH_FILE``.
``--install`` first installs clang and its sanitizer and libFuzzer runtimes
with apt where they are missing (``make fuzz-native`` passes it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from run import Result, execute, options, run_all

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "native" / "src"
BUILD = ROOT / "build" / "fuzz-native"
CORPUS = HERE / "native" / "corpus"
APT_PACKAGES = ("clang-14", "libclang-rt-14-dev", "libfuzzer-14-dev")
FLAGS = ("-g", "-O1", "-std=c99", "-fsanitize=fuzzer,address,undefined",
         "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-Wall", "-Wextra",
         "-Wno-unused-parameter")
# Per target: the C sources beside the harness, and the libraries to link.
TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "nmea": (("gw_nmea.c", "gw_geoid.c"), ("m",)),
    "lzf": (("gw_lzf.c",), ()),
    "tpv": (("gw_tpv.c",), ("m",)),
    "mqtt": (("gw_mqtt.c",), ()),
    # gw_points.c takes its orientation test from gw_zones.c.
    "points": (("gw_points.c", "gw_zones.c"), ("geos_c", "m")),
    # fuzz_zones.c includes gw_zones.c itself; gw_geos.c builds the query polygons
    # (and takes its hull from gw_points.c).
    "zones": (("gw_geos.c", "gw_points.c"), ("geos_c", "proj", "m")),
}


def find_clang() -> str | None:
    for name in (os.environ.get("CLANG"), "clang-14", "clang"):
        if name and shutil.which(name):
            return name
    return None


def install() -> None:
    """apt-get install of the toolchain packages that are missing."""
    missing = [p for p in APT_PACKAGES if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True,
        check=False).stdout.strip() != "install ok installed"]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing: {' '.join(missing)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    *missing], check=True, env=env, stdout=subprocess.DEVNULL)


def include_dirs() -> list[str]:
    """GEOS's and PROJ's headers (gateway.h includes both), as the extension's
    build finds them: GATEWAYD_<LIB>_INCLUDE_DIR, else pkg-config."""
    dirs = []
    for package in ("geos", "proj"):
        override = os.environ.get(f"GATEWAYD_{package.upper()}_INCLUDE_DIR")
        if override:
            dirs += override.split(os.pathsep)
            continue
        out = subprocess.run([os.environ.get("PKG_CONFIG", "pkg-config"), "--cflags-only-I",
                              package], capture_output=True, text=True, check=False).stdout
        dirs += [a[2:] for a in shlex.split(out) if a.startswith("-I")]
    return [f"-I{d}" for d in (str(SRC), *dirs)]


def build(clang: str, target: str) -> Path:
    """The target's binary, rebuilt when a C source or header is newer."""
    sources, libs = TARGETS[target]
    binary = BUILD / f"fuzz_{target}"
    harness = HERE / "native" / f"fuzz_{target}.c"
    inputs = [harness, Path(__file__), *SRC.glob("*.[ch]")]
    if binary.exists() and binary.stat().st_mtime > max(p.stat().st_mtime for p in inputs):
        return binary
    BUILD.mkdir(parents=True, exist_ok=True)
    command = [clang, *FLAGS, *include_dirs(), str(harness),
               *(str(SRC / s) for s in sources), "-o", str(binary),
               *(f"-l{lib}" for lib in libs)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building fuzz_{target} failed:\n{proc.stderr}")
    return binary


# ---- seeds in each target's format ----

def _nmea_seeds() -> dict[str, bytes]:
    # Set-up bytes: (capacity 1, blocks of 1 byte), (room for 1024, blocks of
    # up to 73), (capacity 2, blocks of up to 280).
    setups = {"c1-b1": b"\x00\x00", "c1024-b73": b"\x47\x01", "c2-b280": b"\xf9\x2a"}
    streams = {path.stem: path.read_bytes()
               for path in sorted((HERE / "corpus" / "nmea").iterdir())}
    streams["rare-sentences"] = _rare_sentences()
    return {f"{stem}-{name}": setup + data
            for stem, data in streams.items() for name, setup in setups.items()}


def _sentence(body: str) -> bytes:
    checksum = 0
    for c in body.encode():
        checksum ^= c
    return f"${body}*{checksum:02X}\r\n".encode()


def _rare_sentences() -> bytes:
    """What the captures lack: Garmin's, SiRF's and SkyTraq's fixes and
    errors, a date across a century, a sky of more than 140 satellites."""
    bodies = [
        "GPRMC,235959.00,A,4846.80,N,00910.80,E,1.0,45.0,311299,,,F",
        "PGRME,15.0,M,45.0,M,25.0,M",
        "PGRMZ,820,f,3",
        "PSRFEPE,000000.00,A,1.2,8.5,12.1,0.3,4.5",
        "GPRMC,000000.00,A,4846.80,N,00910.80,E,1.0,45.0,010100,,,R",
        "PSTI,030,000001.00,A,4846.80,N,00910.80,E,250.5,0.1,0.2,-0.3,010100,R,1.0,2.0",
        "PGRMF,1024,345600,010100,000002,18,4846.80,N,00910.80,E,A,2,15,90,2.5,1",
        "PMGNST,05.40,3,T,8,-1.2,+0.3,01",
    ]
    sky = [f"GPGSV,36,{k + 1},144," + ",".join(f"{4 * k + i + 1:02d},45,{(90 * i) % 360:03d},40"
                                               for i in range(4)) for k in range(36)]
    return b"".join(_sentence(b) for b in bodies + sky + bodies[:2])


def _lzf_seeds() -> dict[str, bytes]:
    seeds = {}
    for path in sorted((HERE / "corpus" / "pcd").iterdir()):
        data = path.read_bytes()
        m = re.search(rb"^DATA binary_compressed\r?\n", data, re.M)
        if not m or len(data) < m.end() + 8:
            continue
        body = data[m.end():]
        packed = int.from_bytes(body[:4], "little")
        unpacked = int.from_bytes(body[4:8], "little")
        if unpacked < 65536:
            seeds[path.stem] = b"\x00" + unpacked.to_bytes(2, "little") + body[8:8 + packed]
    seeds["constructed"] = b"\x01\x1f" + bytes(range(32)) + b"\xe1\x05\x1f"
    return seeds


def _tpv_seeds() -> dict[str, bytes]:
    return {
        "gpsd": b'{"class":"TPV","device":"/dev/ttyACM0","mode":3,'
                b'"time":"2024-05-01T12:00:00.000Z","lat":48.117300000,"lon":11.516666667,'
                b'"altHAE":592.300,"alt":545.400,"track":84.4000,"speed":11.524,'
                b'"climb":0.000,"eph":15.200,"epv":1.5}',
        "spaced": b' { "class" : "TPV" , "mode" : 2 , "lat" : -0.00012 , "lon" : 1e2 }\n',
        "odd": b'{"class":"TPV","mode":-0,"lat":0,"lon":-0.0,"altMSL":null,'
               b'"alt":12345678901234567}',
    }


def _mqtt_seeds() -> dict[str, bytes]:
    topic = b"gatewayd/gw/in/gps/a"
    publish = bytes((0x32, 2 + len(topic) + 2 + 1 + 5)) + len(topic).to_bytes(2, "big") + \
        topic + b"\x00\x07\x00" + b"hello"
    return {
        "v5": b"\x03" + publish + b"\x40\x03\x00\x07\x00" + b"\x40\x02\x00\x08" + publish,
        "v3": b"\x02" + b"\x30\x05\x00\x01tab" + b"\x40\x02\x00\x09" + b"\xd0\x00",
    }


def _crafted_seeds() -> dict[str, dict[str, bytes]]:
    # Table-mode inputs (bit 1 of byte 0): each number a byte picking a value.
    square = b"\x01\x01\x84" + bytes([0, 0, 4, 0, 4, 4, 0, 4])  # one polygon, one ring
    return {
        "points": {
            # voxels of 0.5, box (0, 0, 0)-(3, 3, 3), then 2-D points from the table
            "grid-2d": b"\x02\x04" + bytes([0, 0, 0, 6, 6, 6]) + bytes(range(0, 64, 3)),
            # voxels of 1, box (-1, -1, -1)-(2, 2, 2), then 3-D points
            "grid-3d": b"\x03\x02" + bytes([3, 3, 3, 5, 5, 5]) + bytes(range(0, 90, 5)),
        },
        "zones": {
            # zone 0: a closed square (0,0)-(4,4); zone 1: nothing; points in and out
            "square": b"\x02\x01" + square + b"\x00" + bytes([1, 1, 0, 0, 4, 2, 11, 11]),
            "raw": b"\x00\x00\x01\x01\x83" + bytes(48) + bytes(16),
        },
    }


def write_seeds(target: str, into: Path) -> None:
    seeds = {"nmea": _nmea_seeds, "lzf": _lzf_seeds, "tpv": _tpv_seeds,
             "mqtt": _mqtt_seeds}.get(target, dict)()
    seeds.update(_crafted_seeds().get(target, {}))
    into.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (into / f"seed-{name}").write_bytes(data)


def run(binary: Path, target: str, seconds: int, rss_limit_mb: int, timeout_s: int,
        artifacts: Path, corpus: Path, seeds: Path, extra: list[str]) -> Result:
    corpus.mkdir(parents=True, exist_ok=True)
    write_seeds(target, seeds)
    committed = CORPUS / target
    tokens = HERE / "native" / f"{target}.dict"
    command = [str(binary), str(corpus), str(seeds),
               *([str(committed)] if committed.is_dir() else []),
               *([f"-dict={tokens}"] if tokens.exists() else []),
               f"-max_total_time={seconds}", f"-rss_limit_mb={rss_limit_mb}",
               f"-timeout={timeout_s}", f"-artifact_prefix={artifacts}/{target}-",
               "-print_final_stats=1", *extra]
    return execute(target, command, seconds, artifacts)


def main(argv: list[str] | None = None) -> int:
    parser = options(__doc__.split("\n\n")[0], tuple(TARGETS))
    parser.add_argument("--install", action="store_true",
                        help=f"apt-get install what is missing of: {' '.join(APT_PACKAGES)}")
    parser.add_argument("--build-only", action="store_true", help="build, do not run")
    args = parser.parse_args(argv)
    if args.install:
        install()
    clang = find_clang()
    if clang is None:
        print(f"clang is not installed: apt-get install {' '.join(APT_PACKAGES)} "
              "(or make fuzz-native)", file=sys.stderr)
        return 2
    targets = args.target or list(TARGETS)
    try:
        binaries = {t: build(clang, t) for t in targets}
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.build_only:
        return 0
    return run_all(targets, args, "gatewayd-fuzz-native",
                   lambda target, artifacts, corpus, scratch: run(
                       binaries[target], target, args.seconds, args.rss_limit_mb,
                       args.timeout, artifacts, corpus, scratch / "seeds" / target,
                       args.libfuzzer))


if __name__ == "__main__":
    sys.exit(main())
