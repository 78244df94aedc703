#!/usr/bin/env bash
# Builds gatewayd for an ARM architecture on an x86-64 Debian 12 machine, packages
# it, and runs the test suite on the built package under qemu-user in a Debian 12
# root filesystem of that architecture.
#
#   cross-build/arm-test.sh ARCH [STEP...]      ARCH: arm64 | armhf
#
# Steps, in order (all by default):
#   hostdeps  cross toolchain, qemu-user-static, mmdebstrap, lintian; binfmt_misc
#   sysroot   the target's GEOS, PROJ and Python headers and libraries, unpacked
#   wheel     the wheel, cross-compiled; no target binary runs
#   deb       a .deb holding a private environment in /usr/lib/gatewayd
#   lint      lintian on the .deb
#   rootfs    a Debian 12 root filesystem of ARCH, made by mmdebstrap (cached)
#   install   the .deb into the root filesystem with apt, and the test tools
#   test      the test suite under emulation (ARM_TESTS selects test files)
#   measure   VmSize / RSS of real workers under emulation
#
# Environment:
#   ARM_TESTS        test files or node ids for the test step (default: the whole suite;
#                    "smoke": the native core, the decoders, pipeline and replay, and
#                    worker supervision, as CI runs it: `make arm-smoke`)
#   ARM_PYTEST_ARGS  more pytest arguments (e.g. "-x -k workers")
#   ARM_TEST_TIMEOUT per-test timeout in seconds under emulation (default 600)
#   ARM_TIME_SCALE   how much the tests' own timeouts and waits stretch (default 10)
#   ARM_CACHE        the cache folder, outside the source tree (default: /var/cache/gatewayd-cross)
#   ARM_OUT          where artifacts and reports go (default: cross-build/out), as ARM_OUT/ARCH
#   MIRROR           Debian mirror for the root filesystem (default: the host's apt source)
#   DEB_MAINTAINER   Maintainer field of the .deb (default: the last commit's author)
#
# Artifacts go to cross-build/out/ARCH/, caches and staging to ARM_CACHE. Needs root
# (apt, mmdebstrap, chroot, mounts).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
ARCH=${1:-}
[ $# -gt 0 ] && shift
ALL_STEPS="hostdeps sysroot wheel deb lint rootfs install test measure"
STEPS=${*:-$ALL_STEPS}

case "$ARCH" in
  arm64) TRIPLET=aarch64-linux-gnu;   MACHINE=aarch64; QEMU=aarch64; CROSS_LIBC=libc6-dev-arm64-cross
         # Wheels from PyPI cover numpy and cffi here: the package bundles them.
         DEBIAN_PROVIDED="" ;;
  armhf) TRIPLET=arm-linux-gnueabihf; MACHINE=armv7l;  QEMU=arm;     CROSS_LIBC=libc6-dev-armhf-cross
         # PyPI has no armv7l wheels of numpy or cffi; Debian's are used instead.
         DEBIAN_PROVIDED="numpy cffi" ;;
  *) echo "usage: $0 arm64|armhf [STEP...]   (steps: $ALL_STEPS)" >&2; exit 2 ;;
esac

PYVER=3.11
# Artifacts and reports (small) in the checkout, ignored by git; everything
# large (root filesystems, sysroots, the staged package tree, the source
# snapshot) outside it: setuptools' file walk (egg_info) and pytest's
# collection would otherwise wander into a whole Debian root filesystem.
OUT=${ARM_OUT:-$HERE/out}/$ARCH
CACHE=${ARM_CACHE:-/var/cache/gatewayd-cross}
WORK=$CACHE/work-$ARCH
SYSROOT=$CACHE/sysroot-$ARCH
ROOTFS=$CACHE/rootfs-$ARCH
BUILD_VENV=$CACHE/build-venv
BUILD_PY=$BUILD_VENV/bin/python
TIMINGS=$OUT/timings.txt
SITE=usr/lib/gatewayd/lib/python$PYVER/site-packages

mkdir -p "$OUT" "$CACHE" "$WORK"
case "$(realpath "$CACHE")/" in
  "$(realpath "$ROOT")"/*) echo "ARM_CACHE must lie outside the source tree: $CACHE" >&2; exit 2 ;;
esac

log() { printf '\033[1m[arm-test %s] %s\033[0m\n' "$ARCH" "$*" >&2; }
die() { printf '[arm-test %s] error: %s\n' "$ARCH" "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (apt-get, mmdebstrap, chroot, mount)"

# ---- host ----------------------------------------------------------------

HOST_PACKAGES="gcc-$TRIPLET binutils-$TRIPLET $CROSS_LIBC qemu-user-static binfmt-support
               mmdebstrap arch-test lintian dpkg-dev python3-venv file unzip"

# A mirror that drops a connection or times out gets tried again, by apt on
# the host and in the root filesystem (rootfs_apt_conf) alike.
APT_RETRY=(-o Acquire::Retries=5 -o Acquire::http::Timeout=60)

apt_updated=""
apt_update() {
  [ -n "$apt_updated" ] && return 0
  # A mirror in the middle of a sync can fail one index (seen for
  # bookworm-security/armhf); what this script needs is checked afterwards.
  apt-get "${APT_RETRY[@]}" update -qq || log "apt-get update reported errors; continuing"
  apt_updated=1
}

step_hostdeps() {
  if ! dpkg --print-foreign-architectures | grep -qx "$ARCH"; then
    # Only so that apt can download ARCH packages for the sysroot; nothing of
    # ARCH is installed on the host.
    dpkg --add-architecture "$ARCH"
    apt_updated=""
  fi
  local missing="" p
  for p in $HOST_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    log "installing host packages:$missing"
    apt_update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get "${APT_RETRY[@]}" install -y -qq --no-install-recommends \
      $missing >/dev/null
  fi

  # binfmt_misc lets the kernel hand ARCH executables to qemu, also inside the
  # chroot and for every process the tests start (workers, the broker). The F
  # flag (fix_binary) opens the interpreter once, so it need not be in the chroot.
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
      || die "binfmt_misc cannot be mounted here: emulated tests need it (see README)"
  fi
  if ! grep -q enabled "/proc/sys/fs/binfmt_misc/qemu-$QEMU" 2>/dev/null; then
    update-binfmts --enable "qemu-$QEMU" || die "cannot register qemu-$QEMU with binfmt_misc"
  fi
  grep -q 'flags: .*F' "/proc/sys/fs/binfmt_misc/qemu-$QEMU" \
    || die "qemu-$QEMU is registered without the F flag; the chroot would not find it"

  # The build interpreter is Debian's python3.11, the same build as the
  # target's, so that the target's sysconfig data fits it.
  if [ ! -x "$BUILD_PY" ]; then
    log "creating the build environment $BUILD_VENV"
    "/usr/bin/python$PYVER" -m venv "$BUILD_VENV"
    "$BUILD_PY" -m pip install -q --disable-pip-version-check --upgrade pip
  fi
  # What pyproject.toml's [build-system] asks for, plus packaging for markers.
  "$BUILD_PY" - "$ROOT/pyproject.toml" <<'EOF' > "$CACHE/build-requires.txt"
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"] + ["packaging"]))
EOF
  "$BUILD_PY" -m pip install -q --disable-pip-version-check -r "$CACHE/build-requires.txt"
}

# ---- sysroot: the target's headers and libraries, unpacked, not installed ---

# libgeos-dev is not Multi-Arch: same, so libgeos-dev:ARCH cannot be installed
# beside the host's libgeos-dev (which `make test` needs). Unpacking the target's
# packages into a folder avoids touching the host's own packages at all.
SYSROOT_PACKAGES="libgeos-dev libgeos-c1v5 libgeos3.11.1 libproj-dev libproj25
                  libpython$PYVER-dev libpython$PYVER-minimal libpython$PYVER-stdlib"

step_sysroot() {
  local stamp=$SYSROOT/.packages want
  want=$(echo $SYSROOT_PACKAGES)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "sysroot cached: $SYSROOT"; return 0
  fi
  log "unpacking the $ARCH sysroot"
  rm -rf "$SYSROOT" "$CACHE/debs-$ARCH"
  mkdir -p "$CACHE/debs-$ARCH" "$SYSROOT"
  apt_update
  local p
  # apt drops privileges to _apt for downloads; let it write there.
  chown _apt "$CACHE/debs-$ARCH" 2>/dev/null || true
  for p in $SYSROOT_PACKAGES; do
    (cd "$CACHE/debs-$ARCH" && apt-get "${APT_RETRY[@]}" download -qq "$p:$ARCH")

  done
  for p in "$CACHE/debs-$ARCH"/*.deb; do dpkg-deb -x "$p" "$SYSROOT"; done
  echo "$want" > "$stamp"
}

deb_version_of() {  # the version of an unpacked sysroot package
  dpkg-deb -f "$(ls "$CACHE/debs-$ARCH/$1"_*.deb | head -1)" Version
}

# ---- wheel ----------------------------------------------------------------

# What a Debian package build of ARCH would use (fortify, stack protector,
# format checks, relro, bind-now), run in the source folder so that its
# -ffile-prefix-map fits.
build_flags() {
  (cd "$WORK/src" && DEB_HOST_ARCH=$ARCH DEB_BUILD_MAINT_OPTIONS=hardening=+bindnow \
     dpkg-buildflags --get "$1")
}

cross_env() {

  # Python's build machinery reads the *target's* configuration: compiler
  # (aarch64-linux-gnu-gcc...), flags, EXT_SUFFIX and SOABI come from Debian's
  # sysconfig data for ARCH; the platform tag from _PYTHON_HOST_PLATFORM.
  mkdir -p "$WORK/sysconfig"
  cp "$SYSROOT/usr/lib/python$PYVER/_sysconfigdata__$TRIPLET.py" "$WORK/sysconfig/"
  export _PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__$TRIPLET
  export _PYTHON_HOST_PLATFORM=linux-$MACHINE
  export PYTHONPATH=$WORK/sysconfig
  # The target's Python headers come first; Debian's pyconfig.h picks the
  # multiarch one (aarch64-linux-gnu/python3.11/pyconfig.h) by the compiler's
  # own macros. Then Debian's hardening flags for ARCH.
  CFLAGS="-I$SYSROOT/usr/include/python$PYVER -I$SYSROOT/usr/include"
  CFLAGS="$CFLAGS $(build_flags CPPFLAGS) $(build_flags CFLAGS)"
  LDFLAGS="$(build_flags LDFLAGS) -Wl,-rpath-link,$SYSROOT/usr/lib/$TRIPLET"
  export CFLAGS LDFLAGS
  export GATEWAYD_GEOS_INCLUDE_DIR=$SYSROOT/usr/include
  export GATEWAYD_GEOS_LIBRARY_DIR=$SYSROOT/usr/lib/$TRIPLET
  export GATEWAYD_PROJ_INCLUDE_DIR=$SYSROOT/usr/include
  export GATEWAYD_PROJ_LIBRARY_DIR=$SYSROOT/usr/lib/$TRIPLET
  # Every directory is given above; no pkg-config (host or target) is asked.
  export PKG_CONFIG=/nonexistent/pkg-config
  SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)
  export SOURCE_DATE_EPOCH
}

elf_machine() { readelf -h "$1" | sed -n 's/^ *Machine: *//p'; }
expected_machine() { case $ARCH in arm64) echo AArch64 ;; armhf) echo ARM ;; esac; }

# Fails unless every ELF file under $1 is built for ARCH.
check_elf_tree() {
  local f bad=0 want
  want=$(expected_machine)
  while IFS= read -r -d '' f; do
    if file -b "$f" | grep -q '^ELF'; then
      if [ "$(elf_machine "$f")" != "$want" ]; then
        echo "wrong machine: $f: $(elf_machine "$f")" >&2; bad=1
      fi
      if [ "$ARCH" = armhf ] && ! readelf -A "$f" | grep -q 'Tag_ABI_VFP_args: VFP registers'; then
        # The hard-float calling convention, or the file declares no float use.
        readelf -A "$f" | grep -q Tag_ABI_VFP_args && { echo "not hard-float: $f" >&2; bad=1; }
      fi
    fi
  done < <(find "$1" -type f \( -name '*.so' -o -name '*.so.*' \) -print0)
  return $bad
}

step_wheel() {
  log "snapshot of the source tree"
  rm -rf "$WORK/src" "$OUT/dist"
  mkdir -p "$WORK/src" "$OUT/dist"
  # The files git would commit (tracked and new, minus .gitignore), so build
  # products of the host (gatewayd/_native.abi3.so, build/) stay out.
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- \
      setup.py pyproject.toml README.md native gatewayd tests systemd \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"

  log "cross-compiling the wheel"
  (
    cross_env
    cd "$WORK/src"
    "$BUILD_PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
      -w "$OUT/dist" . > "$OUT/wheel-build.log" 2>&1 \
      || { tail -40 "$OUT/wheel-build.log" >&2; exit 1; }
  )
  local whl
  whl=$(ls "$OUT"/dist/gatewayd-*.whl)
  case "$whl" in
    *-linux_$MACHINE.whl) ;;
    *) die "wheel has the wrong platform tag: $(basename "$whl")" ;;
  esac
  rm -rf "$WORK/wheel-check" && mkdir -p "$WORK/wheel-check"
  unzip -q "$whl" -d "$WORK/wheel-check"
  check_elf_tree "$WORK/wheel-check" || die "the wheel holds objects of another machine"
  local so
  so=$(ls "$WORK"/wheel-check/gatewayd/_native*.so)

  {
    echo "wheel: $(basename "$whl") ($(du -k "$whl" | cut -f1) KiB)"
    echo "extension: ${so#"$WORK/wheel-check/"} ($(elf_machine "$so"))"
    readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  needs \1/p'
  } | tee "$OUT/wheel.txt" >&2
  rm -rf "$WORK/wheel-check"
}

# ---- deb ------------------------------------------------------------------

# Requirements of the wheel for the target, markers evaluated for ARCH, minus
# what Debian provides there.
target_requirements() {
  "$BUILD_PY" - "$1" "$MACHINE" "$DEBIAN_PROVIDED" <<'EOF'
import sys, zipfile
from email.parser import Parser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
wheel, machine, provided = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
env = {"platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux",
       "python_version": "3.11", "python_full_version": "3.11.2",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "os_name": "posix", "extra": ""}
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    msg = Parser().parsestr(z.read(meta).decode())
for line in msg.get_all("Requires-Dist") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate(env):
        continue
    if canonicalize_name(req.name) in provided:
        continue
    req.marker = None
    print(req)
EOF
}

pip_target_platforms() {  # glibc 2.36 is Debian 12's
  local i
  for i in $(seq 36 -1 17); do printf -- '--platform manylinux_2_%s_%s ' "$i" "$MACHINE"; done
  printf -- '--platform manylinux2014_%s --platform linux_%s' "$MACHINE" "$MACHINE"
}

step_deb() {
  local whl version debver stage site pkg
  SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)
  export SOURCE_DATE_EPOCH
  whl=$(ls "$OUT"/dist/gatewayd-*.whl)
  version=$(basename "$whl" | cut -d- -f2)
  debver=$version-1
  stage=$WORK/deb-root
  site=$stage/$SITE
  log "staging gatewayd $debver for $ARCH"
  rm -rf "$stage" "$WORK/deps"
  mkdir -p "$site" "$WORK/deps"

  # The private environment's packages, installed for the target platform by
  # the host's pip: only wheels, no target binary runs.
  target_requirements "$whl" > "$OUT/requirements.txt"
  # Distributions published only as source (sdnotify) are pure Python: the
  # host makes wheels of them. Host wheels of compiled ones land here too but
  # do not match the target's platform, so pip passes them over.
  "$BUILD_PY" -m pip wheel -q --disable-pip-version-check -w "$CACHE/wheelhouse" \
    -r "$OUT/requirements.txt" > "$OUT/wheelhouse.log" 2>&1 \
    || { tail -20 "$OUT/wheelhouse.log" >&2; die "pip wheel failed"; }
  # shellcheck disable=SC2207
  local target_pip=(-q --disable-pip-version-check --no-compile --only-binary=:all:
                    --python-version $PYVER --implementation cp --abi cp311 --abi abi3 --abi none
                    $(pip_target_platforms) --find-links "$CACHE/wheelhouse")
  "$BUILD_PY" -m pip install "${target_pip[@]}" --target "$WORK/deps" -r "$OUT/requirements.txt"
  "$BUILD_PY" -m pip install "${target_pip[@]}" --no-deps --target "$site" "$whl"
  cp -a "$WORK/deps/." "$site/"
  # Scripts pip wrote carry the host's interpreter; the package has its own.
  rm -rf "$site/bin"
  check_elf_tree "$site" || die "the staged tree holds objects of another machine"
  # numpy's own test suite is not imported at run time (8 MB).
  # Neither are its static libraries, which serve builds against numpy.
  if [ -d "$site/numpy" ]; then
    find "$site/numpy" -depth -type d -name tests -exec rm -rf {} +
    find "$site/numpy" -name '*.a' -delete
    find "$site/numpy" -depth -type d -empty -delete
  fi

  # Extension modules lose their symbol tables (uvloop's is 14 MB with them).
  # Libraries grafted into *.libs by auditwheel keep theirs: they were edited
  # by patchelf, and strip is known to break such files.
  find "$site" -name '*.so' ! -path '*.libs/*' -exec "$TRIPLET-strip" --strip-unneeded \
    --remove-section=.comment --remove-section=.note {} +

  # A venv made by hand (no target interpreter runs to make it): python3.11
  # finds pyvenv.cfg beside its symlink and takes site-packages from here.
  local system_site=false
  [ -n "$DEBIAN_PROVIDED" ] && system_site=true
  mkdir -p "$stage/usr/lib/gatewayd/bin" "$stage/usr/bin"
  cat > "$stage/usr/lib/gatewayd/pyvenv.cfg" <<EOF
home = /usr/bin
include-system-site-packages = $system_site
version = $(deb_version_of libpython$PYVER-minimal | sed 's/-.*//')
EOF
  ln -s ../../../bin/python$PYVER "$stage/usr/lib/gatewayd/bin/python3"
  ln -s python3 "$stage/usr/lib/gatewayd/bin/python"
  # -P: the working directory is not put on sys.path.
  printf '#!/bin/sh\nexec /usr/lib/gatewayd/bin/python3 -P -m gatewayd "$@"\n' \
    > "$stage/usr/bin/gatewayd"
  chmod 0755 "$stage/usr/bin/gatewayd"

  # systemd and configuration (Debian 12 keeps units in /lib/systemd/system).
  install -D -m 0644 "$WORK/src/systemd/gatewayd.service" "$stage/lib/systemd/system/gatewayd.service"
  install -D -m 0644 "$WORK/src/systemd/gatewayd.sysusers" "$stage/usr/lib/sysusers.d/gatewayd.conf"
  install -D -m 0644 "$WORK/src/systemd/gatewayd.tmpfiles" "$stage/usr/lib/tmpfiles.d/gatewayd.conf"
  install -D -m 0644 "$WORK/src/systemd/gatewayd.toml" "$stage/etc/gatewayd/gatewayd.toml"

  # Documentation (the unit's Documentation= names README.md).
  local doc=$stage/usr/share/doc/gatewayd
  install -D -m 0644 "$WORK/src/README.md" "$doc/README.md"
  install -D -m 0644 "$WORK/src/systemd/gatewayd-notify-reload.conf" \
    "$doc/examples/gatewayd-notify-reload.conf"
  sed -e "s/@VERSION@/$debver/" -e "s/@MAINTAINER@/$(maintainer)/" \
      -e "s/@DATE@/$(date -R -u -d "@$SOURCE_DATE_EPOCH")/" \
      "$HERE/debian/changelog.in" | gzip -9n > "$doc/changelog.Debian.gz"
  bundled_copyright "$site" | sed "s/@YEAR@/$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)/" > "$doc/copyright"
  install -D -m 0644 "$HERE/debian/gatewayd.1" "$stage/usr/share/man/man1/gatewayd.1"
  gzip -9n "$stage/usr/share/man/man1/gatewayd.1"
  # The overrides for bundled compiled wheels only where there are any (arm64).
  mkdir -p "$stage/usr/share/lintian/overrides"
  { cat "$HERE/debian/lintian-overrides"
    if [ -d "$site/numpy" ]; then echo; cat "$HERE/debian/lintian-overrides.wheels"; fi
  } > "$stage/usr/share/lintian/overrides/gatewayd"

  # Control files.
  mkdir -p "$stage/DEBIAN"
  for f in postinst prerm postrm; do install -m 0755 "$HERE/debian/$f" "$stage/DEBIAN/$f"; done
  echo /etc/gatewayd/gatewayd.toml > "$stage/DEBIAN/conffiles"
  find "$stage" -type d -exec chmod 0755 {} +
  find "$stage" -type f ! -path '*/DEBIAN/*' ! -perm -u+x -exec chmod 0644 {} +
  find "$stage" -type f -name '*.so*' -exec chmod 0644 {} +
  (cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z \
     | xargs -0 md5sum > DEBIAN/md5sums)
  sed -e "s/@VERSION@/$debver/" -e "s/@ARCH@/$ARCH/" -e "s/@MAINTAINER@/$(maintainer)/" \
      -e "s/@DEPENDS@/$(depends)/" \
      -e "s/@INSTALLED_SIZE@/$(du -sk --exclude=DEBIAN "$stage" | cut -f1)/" \
      "$HERE/debian/control.in" > "$stage/DEBIAN/control"

  rm -f "$OUT"/gatewayd_*.deb
  pkg=$OUT/gatewayd_${debver}_$ARCH.deb
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$pkg" >/dev/null
  "$BUILD_PY" -m pip list --path "$site" --format=freeze 2>/dev/null > "$OUT/bundled.txt" || true
  {
    echo "deb: $(basename "$pkg") ($(du -k "$pkg" | cut -f1) KiB, installed $(du -sk --exclude=DEBIAN "$stage" | cut -f1) KiB)"
    grep '^Depends' "$stage/DEBIAN/control"
    echo "bundled: $(tr '\n' ' ' < "$OUT/bundled.txt")"
  } | tee "$OUT/deb.txt" >&2
}

maintainer() {
  local m=${DEB_MAINTAINER:-$(git -C "$ROOT" log -1 --format='%an <%ae>' 2>/dev/null)}
  printf '%s' "${m:-gatewayd maintainers <root@localhost>}" | sed 's/[\/&]/\\&/g'
}

depends() {
  local geos proj
  geos=$(deb_version_of libgeos-c1v5 | sed 's/-[^-]*$//')
  proj=$(deb_version_of libproj25 | sed 's/-[^-]*$//')
  # The venv's interpreter is python3.11 itself: numpy's and uvloop's
  # extensions are built for CPython 3.11.
  local d="python3 (>= $PYVER), python$PYVER, libc6 (>= 2.36), libgeos-c1v5 (>= $geos), libproj25 (>= $proj)"
  # The postinst creates the service account with systemd-sysusers (what
  # debhelper's dh_installsysusers adds for a sysusers.d file).
  d="$d, systemd | systemd-standalone-sysusers | systemd-sysusers"
  case $ARCH in
    # cffi 1.15's backend (Debian 12) loads modules generated by later cffi:
    # its API range is what python3-cffi-backend declares.
    armhf) d="$d, python3-numpy (>= 1:1.24), python3-cffi-backend-api-min (<= 9729), python3-cffi-backend-api-max (>= 9729)" ;;
  esac
  printf '%s' "$d"
}

# debian/copyright: the project's licence, then every bundled distribution's.
bundled_copyright() {
  cat "$HERE/debian/copyright.in"
  "$BUILD_PY" - "$1" <<'EOF'
import sys
from importlib.metadata import distributions
for dist in sorted(distributions(path=[sys.argv[1]]), key=lambda d: d.metadata["Name"].lower()):
    name = dist.metadata["Name"]
    if name == "gatewayd":
        continue
    lic = dist.metadata.get("License-Expression") or dist.metadata.get("License") or ""
    lic = lic.strip().splitlines()[0] if lic.strip() else "see the distribution's licence file"
    if len(lic) > 60:
        lic = "see the distribution's licence file"
    print(f"\nFiles: usr/lib/gatewayd/lib/python3.11/site-packages/{name.lower().replace('-', '_')}*")
    print(f"Copyright: the {name} authors ({dist.metadata['Version']}, bundled from PyPI)")
    print(f"License: {lic}")
    print(" The licence texts are in the package's")
    print(f" usr/lib/gatewayd/lib/python3.11/site-packages/{dist._path.name}/ directory.")
EOF
}

# ---- lintian --------------------------------------------------------------

step_lint() {
  local pkg
  pkg=$(ls "$OUT"/gatewayd_*_"$ARCH".deb)
  log "lintian $(basename "$pkg")"
  lintian --info --display-info --pedantic --tag-display-limit 0 "$pkg" > "$OUT/lintian.txt" 2>&1 || true
  # Summary by tag: severity letter and tag name.
  grep -E '^[EWIPX]: ' "$OUT/lintian.txt" | awk '{print $1, $3}' | sort | uniq -c | sort -rn \
    | tee "$OUT/lintian-summary.txt" >&2 || true
  # Errors and warnings fail the step; information and pedantic tags are
  # listed in the summary (cross-build/README.md says why each one stays).
  if grep -qE '^[EW]: ' "$OUT/lintian.txt"; then
    grep -E '^[EW]: ' "$OUT/lintian.txt" >&2
    die "lintian reports errors or warnings: $OUT/lintian.txt"
  fi
}

# ---- root filesystem ------------------------------------------------------

mirror() {
  if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
  # The host's own Debian source, as apt is set up here.
  sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1 \
    || true
}

security_mirror() {
  sed -n 's/^URIs: *\([^ ]*\/debian-security\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
    | head -1 || true
}

# The root filesystem holds what the smoke needs besides the .deb's own
# dependencies (apt brings those when the .deb is installed): the interpreter
# and systemd-sysusers for the package's account. What only the whole suite
# needs comes with the install step: the broker, the unit checks
# (systemd-analyze), libfaketime, pgrep. On armhf, Debian's numpy and pyproj
# serve (PyPI has no armv7l wheels), and shapely 2.1, which the tests take as
# their oracle, is built there from source (Debian 12 has shapely 1.8).
ROOTFS_PACKAGES="python$PYVER"
# systemd-sysusers alone, for the smoke; the whole suite's systemd replaces it.
ROOTFS_SYSUSERS=systemd-standalone-sysusers
ROOTFS_PACKAGES_armhf="python3-numpy python3-pyproj python3-pip python3-wheel gcc libgeos-dev
                       python3-dev"
SUITE_PACKAGES="mosquitto mosquitto-clients openssl faketime procps systemd"

MOUNTS=()
chroot_mount() {
  [ ${#MOUNTS[@]} -gt 0 ] && return 0
  mkdir -p "$ROOTFS/dev/pts" "$ROOTFS/dev/shm" "$ROOTFS/proc" "$ROOTFS/sys"
  mount -t proc proc "$ROOTFS/proc" && MOUNTS+=("$ROOTFS/proc")
  mount --bind /sys "$ROOTFS/sys" && mount -o remount,bind,ro "$ROOTFS/sys" && MOUNTS+=("$ROOTFS/sys")
  mount --bind /dev "$ROOTFS/dev" && MOUNTS+=("$ROOTFS/dev")
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$ROOTFS/dev/pts" && MOUNTS+=("$ROOTFS/dev/pts")
  mount -t tmpfs -o mode=1777 shm "$ROOTFS/dev/shm" && MOUNTS+=("$ROOTFS/dev/shm")
  trap chroot_umount EXIT
}

chroot_umount() {
  local i
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}"; done
  MOUNTS=()
}

# mmdebstrap mounts /proc, /sys and /dev in there while it works; a failed run can
# leave them mounted.
umount_under() {
  local m
  for m in $(awk -v root="$1" 'index($2, root "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m"
  done
}

rootfs_apt_conf() {
  printf 'Acquire::Retries "5";\nAcquire::http::Timeout "60";\n' \
    > "$ROOTFS/etc/apt/apt.conf.d/80gatewayd-retries"
}

in_rootfs() {

  chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}

step_rootfs() {
  if [ -f "$ROOTFS/.complete" ]; then log "root filesystem cached: $ROOTFS"; return 0; fi
  local m sec
  m=$(mirror); [ -n "$m" ] || die "no Debian mirror found in the host's apt sources; set MIRROR"
  sec=$(security_mirror)
  local sources=("deb $m bookworm main" "deb $m bookworm-updates main")
  [ -n "$sec" ] && sources+=("deb $sec bookworm-security main")
  log "mmdebstrap bookworm $ARCH (under emulation; the first time takes a while)"
  # A run that was killed may have left /dev, /proc... mounted in there.
  umount_under "$ROOTFS"
  rm -rf --one-file-system "$ROOTFS"
  local extra=ROOTFS_PACKAGES_$ARCH try
  # One pass over bookworm, -updates and -security, so the newest packages go
  # in once and nothing is upgraded after. Maintainer scripts run through
  # binfmt_misc and qemu-user, and cost most of the time: documentation, man
  # pages, translations and CA certificates are not unpacked (dpkg
  # path-exclude, which stays for later installs), so that ca-certificates'
  # postinst, a shell loop over every certificate, has nothing to do.
  # mmdebstrap keeps daemons from starting while it installs; apt retries;
  # a failed run is tried again from scratch, up to three times, the last
  # time from bookworm alone (an index of -updates or -security caught in a
  # mirror's sync fails the whole of apt-get update).
  for try in 1 2 3; do
    [ "$try" = 3 ] && sources=("deb $m bookworm main")
    if mmdebstrap --mode=root --arch="$ARCH" --variant=minbase \
         --include="$(echo $ROOTFS_PACKAGES $ROOTFS_SYSUSERS ${!extra:-} | tr ' ' ,)" \
         --dpkgopt='path-exclude=/usr/share/doc/*' \
         --dpkgopt='path-include=/usr/share/doc/*/copyright' \
         --dpkgopt='path-exclude=/usr/share/man/*' \
         --dpkgopt='path-exclude=/usr/share/locale/*' \
         --dpkgopt='path-exclude=/usr/share/ca-certificates/*' \
         --aptopt='Acquire::Retries "5"' --aptopt='Acquire::http::Timeout "60"' \
         bookworm "$ROOTFS" "${sources[@]}" > "$CACHE/rootfs-$ARCH.log" 2>&1; then
      break
    fi
    tail -30 "$CACHE/rootfs-$ARCH.log" >&2
    [ "$try" = 3 ] && die "mmdebstrap failed three times"
    log "mmdebstrap failed (try $try); again in $((try * 20)) s"
    umount_under "$ROOTFS"
    rm -rf --one-file-system "$ROOTFS"
    sleep $((try * 20))
  done
  rootfs_apt_conf
  # No daemon starts inside the chroot later either (mosquitto's postinst
  # would start one when the test step installs it again).
  printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
  chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
  in_rootfs apt-get clean
  touch "$ROOTFS/.complete"
}

# ---- install: the .deb, then the test tools -------------------------------

step_install() {
  local pkg
  pkg=$(ls "$OUT"/gatewayd_*_"$ARCH".deb)
  chroot_mount
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf" 2>/dev/null || true
  cp "$pkg" "$ROOTFS/tmp/"
  log "apt-get install $(basename "$pkg") in the $ARCH root filesystem"
  rootfs_apt_conf
  in_rootfs apt-get update -qq || true

  # The root filesystem's own packages (a no-op unless an older cached one
  # lacks some), and the whole suite's when it runs (its systemd replaces
  # systemd-standalone-sysusers).
  local extra=ROOTFS_PACKAGES_$ARCH packages="$ROOTFS_PACKAGES"
  packages="$packages ${!extra:-}"
  [ "${ARM_TESTS:-}" = smoke ] || packages="$packages $SUITE_PACKAGES"
  # shellcheck disable=SC2086
  in_rootfs apt-get install -y -qq --no-install-recommends $packages >/dev/null
  # A fresh root filesystem may have no /etc/hosts; the tests resolve "localhost".
  [ -s "$ROOTFS/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    > "$ROOTFS/etc/hosts"
  # --reinstall: the cached root filesystem may hold the same version already.
  in_rootfs apt-get install -y -q --reinstall "/tmp/$(basename "$pkg")" > "$OUT/install.log" 2>&1 \
    || { tail -30 "$OUT/install.log" >&2; die "the .deb did not install"; }
  rm -f "$ROOTFS/tmp/$(basename "$pkg")"
  in_rootfs /usr/bin/gatewayd version | tee "$OUT/version.txt" >&2
  in_rootfs id gatewayd >&2
  test_env
}

# The test tools' environment, /opt/gatewayd-test: a venv made by hand, as the
# package's own, and filled by the host's pip for the target platform (pip
# under emulation is slow, and the root filesystem needs no pip or network of
# its own for it). A .pth file puts the package's private site-packages behind
# the tools, so the tests import the installed gatewayd (and, on arm64, its
# bundled numpy), not a copy.
TEST_ENV=/opt/gatewayd-test

test_env() {
  local reqs env=$ROOTFS$TEST_ENV
  reqs=$("$BUILD_PY" - "$WORK/src/pyproject.toml" "$DEBIAN_PROVIDED" <<'EOF'
import sys, tomllib
from packaging.requirements import Requirement
provided = set(sys.argv[2].split())
if provided:  # and Debian's pyproj where PyPI has no wheels (armhf)
    provided |= {"pyproj"}
# atheris, the fuzzing engine, has x86-64 wheels only; its tests skip without it.
provided |= {"atheris"}
for r in tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["test"]:
    if Requirement(r).name not in provided:
        print(r)
EOF
)
  if [ "$(cat "$env/.requirements" 2>/dev/null)" = "$reqs" ]; then
    log "test tools cached in $TEST_ENV"
  else
    log "test tools in $TEST_ENV"
    local wheels=$CACHE/test-wheels-$ARCH site=$env/lib/python$PYVER/site-packages
    rm -rf "$env" "$wheels" && mkdir -p "$wheels" "$site" "$env/bin"
    echo "$reqs" > "$OUT/test-requirements.txt"
    # shellcheck disable=SC2207
    local target_pip=(-q --disable-pip-version-check --no-compile --only-binary=:all:
                      --python-version $PYVER --implementation cp --abi cp311 --abi abi3 --abi none
                      $(pip_target_platforms) --target "$site")
    local system_site=false
    if [ -z "$DEBIAN_PROVIDED" ]; then
      # Every tool and its dependencies have wheels for the target (arm64).
      "$BUILD_PY" -m pip install "${target_pip[@]}" -r "$OUT/test-requirements.txt" \
        > "$OUT/test-tools.log" 2>&1 || { tail -30 "$OUT/test-tools.log" >&2; die "pip failed"; }
    else
      # armhf: numpy has no wheel for the target, so its dependents cannot be
      # resolved for it. The host gathers every tool and dependency as wheels
      # (sdists become wheels), of which the pure ones serve; each tool's own
      # wheel for the target where it has a compiled part (hypothesis); numpy
      # and pyproj are Debian's, and shapely is built for the target.
      system_site=true
      build_shapely "$wheels"
      # shellcheck disable=SC2046
      { "$BUILD_PY" -m pip wheel -q --disable-pip-version-check -w "$wheels" \
          -r <(grep -v '^shapely' "$OUT/test-requirements.txt")
        "$BUILD_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
          --python-version $PYVER --implementation cp --abi cp311 --abi abi3 --abi none \
          $(pip_target_platforms) -d "$wheels" -r <(grep -v '^shapely' "$OUT/test-requirements.txt")
        "$BUILD_PY" -m pip install "${target_pip[@]}" --no-deps "$wheels"/*-none-any.whl \
          "$wheels"/*"$MACHINE".whl
      } > "$OUT/test-tools.log" 2>&1 || { tail -30 "$OUT/test-tools.log" >&2; die "pip failed"; }
    fi
    # The package's bundled numpy serves the tests too (arm64).
    if [ -d "$ROOTFS/$SITE/numpy" ]; then
      rm -rf "$site"/numpy "$site"/numpy-*.dist-info "$site"/numpy.libs
    fi
    rm -rf "$site/bin"
    printf 'home = /usr/bin\ninclude-system-site-packages = %s\nversion = %s\n' \
      "$system_site" "$PYVER" > "$env/pyvenv.cfg"
    ln -s "/usr/bin/python$PYVER" "$env/bin/python3"
    ln -s python3 "$env/bin/python"
    echo "/$SITE" > "$site/gatewayd-package.pth"
    echo "$reqs" > "$env/.requirements"
  fi
  in_rootfs "$TEST_ENV/bin/python" -c 'import gatewayd, numpy, shapely, hypothesis, pytest
print("gatewayd from", gatewayd.__file__)
print("numpy", numpy.__version__, "from", numpy.__file__)
print("shapely", shapely.__version__)' >&2
}

# shapely 2.1 (the oracle's make_valid(method=...) is 2.1's), built in the
# root filesystem from its source: PyPI has no armv7l wheel, and Debian 12's
# python3-shapely is 1.8. It builds against Debian's numpy, with Cython from
# its pure-Python wheel (Debian's cython3 is 0.29); the wheel is cached.
build_shapely() {
  local built=$CACHE/built-wheels-$ARCH src=/tmp/shapely-src
  if ! ls "$built"/shapely-2.1*.whl >/dev/null 2>&1; then
    log "building shapely 2.1 under emulation (once; cached in $built)"
    rm -rf "$ROOTFS$src" && mkdir -p "$ROOTFS$src/cython" "$built"
    { "$BUILD_PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary shapely \
        -d "$ROOTFS$src" "shapely>=2.1,<2.2"
      "$BUILD_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform any --implementation py --python-version $PYVER -d "$ROOTFS$src" "cython>=3.0.10"
      unzip -q "$ROOTFS$src"/cython-*.whl -d "$ROOTFS$src/cython"
      in_rootfs PYTHONPATH=$src/cython /usr/bin/python3 -m pip wheel --no-deps --no-build-isolation \
        --no-index -w $src/dist "$(cd "$ROOTFS$src" && ls shapely-*.tar.gz | sed "s|^|$src/|")"
    } > "$OUT/shapely-build.log" 2>&1 || { tail -30 "$OUT/shapely-build.log" >&2; die "shapely did not build"; }
    cp "$ROOTFS$src"/dist/shapely-*.whl "$built/"
    rm -rf "$ROOTFS$src"
  fi
  cp "$built"/shapely-2.1*.whl "$1/"
}

# ---- test -----------------------------------------------------------------

# The smoke CI runs: the native core (GEOS, PROJ, the C loops, per-process
# contexts), the decoders, the pipeline and replay, worker supervision, and the
# configuration (whose defaults follow the architecture). About 2 min of tests.
# (The tests of the address-space cap skip themselves under qemu-user, which
# ignores setrlimit(RLIMIT_AS): tests/address_space.py.)
SMOKE_TESTS="tests/test_geometry.py tests/test_native_processes.py
             tests/test_nmea.py tests/test_pcd.py tests/test_las.py tests/test_geojson.py
             tests/test_pipeline.py tests/test_processing.py tests/test_cli.py
             tests/test_workers.py tests/test_config.py"

step_test() {
  if [ "${ARM_TESTS:-}" = smoke ]; then
    ARM_TESTS=$(echo $SMOKE_TESTS)
  fi

  chroot_mount
  local dst=$ROOTFS/opt/gatewayd-src
  rm -rf "$dst" && mkdir -p "$dst"
  # The tests, the unit and pytest's configuration, not the package's source:
  # gatewayd/ is a symlink to the installed package, where the tests also
  # find the bundled captures (gatewayd/samples).
  cp -a "$WORK/src/tests" "$WORK/src/systemd" "$WORK/src/pyproject.toml" "$dst/"
  ln -s "/$SITE/gatewayd" "$dst/gatewayd"
  log "pytest under emulation: ${ARM_TESTS:-the whole suite}"
  local rc=0 started=$SECONDS
  # Debian's pyproj (armhf) looks for PROJ's data under the venv's prefix;
  # the wheel's (arm64) carries its own, which must not be overridden.
  # Emulated code runs 10-30x slower: the tests' own timeouts and waits scale
  # (tests/emulation.py), their assertions do not.
  local env="GATEWAYD_TEST_TIME_SCALE=${ARM_TIME_SCALE:-10}"
  [ -n "$DEBIAN_PROVIDED" ] && env="$env PROJ_DATA=/usr/share/proj"
  # shellcheck disable=SC2086
  in_rootfs $env /bin/sh -c "cd /opt/gatewayd-src && exec /opt/gatewayd-test/bin/python -m pytest \
      -p no:cacheprovider --continue-on-collection-errors \
      -o timeout=${ARM_TEST_TIMEOUT:-600} --junitxml=/opt/gatewayd-src/junit.xml \
      ${ARM_PYTEST_ARGS:-} ${ARM_TESTS:-}" 2>&1 | tee "$OUT/pytest.log" || rc=$?
  cp "$dst/junit.xml" "$OUT/junit.xml" 2>/dev/null || true
  echo "pytest exit $rc after $((SECONDS - started)) s" >> "$OUT/pytest.log"
  return "$rc"
}

# ---- measure ----------------------------------------------------------------

step_measure() {
  chroot_mount
  cp "$HERE/measure_worker.py" "$ROOTFS/tmp/measure_worker.py"
  log "worker memory under emulation"
  in_rootfs /usr/lib/gatewayd/bin/python3 /tmp/measure_worker.py | tee "$OUT/worker-memory.json" >&2
}

# ---- driver -----------------------------------------------------------------

: > "$TIMINGS.new"
status=0
for step in $STEPS; do
  case " $ALL_STEPS " in *" $step "*) ;; *) die "unknown step: $step" ;; esac
  t0=$SECONDS
  rc=0
  "step_$step" || rc=$?
  printf '%-9s %5d s%s\n' "$step" $((SECONDS - t0)) "$([ $rc = 0 ] || echo "  (exit $rc)")" | tee -a "$TIMINGS.new" >&2
  if [ $rc != 0 ]; then
    status=$rc
    [ "$step" = test ] || break   # a failing test run still gets measured
  fi
done
mv "$TIMINGS.new" "$TIMINGS"
exit $status
