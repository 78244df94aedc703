"""cffi build script for gatewayd._native (out-of-line API mode).

setup.py names ``ffibuilder`` in ``cffi_modules``. The cdef declarations are
data (``native/cdef/*.h``, one per C subsystem); the C helpers live in
``native/src``. Include and library directories come from pkg-config and can
each be overridden from the environment, so that a cross-build never runs a
target binary:

    GATEWAYD_GEOS_INCLUDE_DIR  GATEWAYD_GEOS_LIBRARY_DIR
    GATEWAYD_PROJ_INCLUDE_DIR  GATEWAYD_PROJ_LIBRARY_DIR
    PKG_CONFIG                 (e.g. aarch64-linux-gnu-pkg-config)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
_CDEF_ORDER = ("geos.h", "proj.h", "gateway.h")
_SOURCES = ("gw_geos.c", "gw_zones.c", "gw_points.c", "gw_proj.c", "gw_nmea.c", "gw_geoid.c",
            "gw_lzf.c", "gw_tpv.c", "gw_mqtt.c")


def _pkg_config(package: str, flag: str) -> list[str]:
    tool = os.environ.get("PKG_CONFIG", "pkg-config")
    if shutil.which(tool) is None:
        return []
    try:
        out = subprocess.run(
            [tool, flag, package], check=True, capture_output=True, text=True
        ).stdout
    except subprocess.CalledProcessError:
        return []
    return shlex.split(out)


def _dirs(package: str, kind: str) -> list[str]:
    override = os.environ.get(f"GATEWAYD_{package.upper()}_{kind.upper()}_DIR")
    if override:
        return override.split(os.pathsep)
    flag, prefix = ("--cflags-only-I", "-I") if kind == "include" else ("--libs-only-L", "-L")
    return [arg[len(prefix):] for arg in _pkg_config(package, flag) if arg.startswith(prefix)]


def _cdef() -> str:
    return "\n".join((_HERE / "cdef" / name).read_text() for name in _CDEF_ORDER)


def _relative(path: Path) -> str:
    # setuptools wants source paths relative to setup.py.
    return os.path.relpath(path, Path.cwd())


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "gatewayd._native",
    '#include "gateway.h"\n',
    sources=[_relative(_HERE / "src" / name) for name in _SOURCES],
    include_dirs=[str(_HERE / "src"), *_dirs("geos", "include"), *_dirs("proj", "include")],
    library_dirs=[*_dirs("geos", "library"), *_dirs("proj", "library")],
    libraries=["geos_c", "proj", "m"],
    define_macros=[("GEOS_USE_ONLY_R_API", None)],
    extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    os.chdir(_ROOT)
    ffibuilder.compile(tmpdir=str(_ROOT), verbose=True)
