# Two commands for a fresh machine: `make demo` and `make test`.
# Both install what is missing: system packages with apt (as root, or through
# sudo), Python packages into .venv in this checkout.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

# Debian 12 / Ubuntu / Raspberry Pi OS package names.
APT_PACKAGES := gcc pkg-config libgeos-dev libproj-dev proj-data mosquitto mosquitto-clients openssl faketime \
                python3-dev python3-venv systemd gpsd
# What only the test suite needs: clang with its sanitizer and libFuzzer
# runtimes, for the short runs of the C fuzz targets (tests/test_fuzz_smoke.py).
TEST_APT_PACKAGES := clang-14 libclang-rt-14-dev libfuzzer-14-dev
NATIVE_SOURCES := setup.py native/build_native.py $(wildcard native/cdef/*.h native/src/*.c native/src/*.h)

.PHONY: demo test bench fuzz lint setup sysdeps clean

demo: setup
	$(PY) -m gatewayd demo

test: setup $(VENV)/.testsysdeps
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PY) tests/bench/run_all.py

# Coverage-guided fuzzing of every decoder, FUZZ_SECONDS each.
FUZZ_SECONDS ?= 60

fuzz: setup
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)

# The same for the C code: libFuzzer targets built with ASan and UBSan
# (fuzz/native/); installs clang and its fuzzer runtimes where missing.
.PHONY: fuzz-native
fuzz-native: sysdeps
	$(PY) fuzz/run_native.py --install --seconds $(FUZZ_SECONDS)

lint: setup
	$(PIP) install --no-build-isolation -e '.[dev]' >/dev/null
	$(VENV)/bin/ruff check gatewayd tests native fuzz cross-build
	$(VENV)/bin/mypy gatewayd

setup: $(VENV)/.built

sysdeps: $(VENV)/.sysdeps

# System packages: only what is missing, and only once per checkout.
define apt_install
	@missing=""; \
	for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "error: need root or sudo to install:$$missing" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

$(VENV)/.sysdeps: Makefile
	$(call apt_install,$(APT_PACKAGES))
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@touch $@

$(VENV)/.testsysdeps: Makefile $(VENV)/.sysdeps
	$(call apt_install,$(TEST_APT_PACKAGES))
	@touch $@

# Python packages, reinstalled when the project's metadata changes.
$(VENV)/.deps: pyproject.toml $(VENV)/.sysdeps
	$(PIP) install --upgrade pip setuptools wheel cffi
	$(PIP) install -e '.[test]'
	@touch $@

# The cffi extension, rebuilt in place when a native source changes.
$(VENV)/.built: $(VENV)/.deps $(NATIVE_SOURCES)
	$(PIP) install --no-deps --no-build-isolation -e .
	@touch $@

clean:
	rm -rf build *.egg-info gatewayd/_native*.so gatewayd/_native.c

# The shipped unit under a real systemd: Debian 12 (systemd 252) and
# bookworm-backports (systemd 254) booted in systemd-nspawn, gatewayd installed
# from a wheel (tests/test_systemd_boot.py). As root; the root filesystems are
# built once and cached in $(SYSTEMD_TEST_CACHE), outside the checkout.
SYSTEMD_TEST_CACHE ?= /var/cache/gatewayd-systemd
SYSTEMD_TEST_APT   := systemd-container debootstrap

.PHONY: systemd-test
systemd-test: setup
	@for p in $(SYSTEMD_TEST_APT); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $(SYSTEMD_TEST_APT) >/dev/null; break; }; \
	done
	GATEWAYD_SYSTEMD_CACHE=$(SYSTEMD_TEST_CACHE) $(PY) tests/nspawn.py build
	GATEWAYD_SYSTEMD_CACHE=$(SYSTEMD_TEST_CACHE) GATEWAYD_SYSTEMD_BOOT=1 \
	  $(PY) -m pytest -p no:cacheprovider tests/test_systemd_boot.py $(PYTEST_ARGS)

# ---- ARM builds: cross-build/README.md -------------------------------------
# make arm-test ARCH=arm64|armhf   cross-build, package, lintian, the whole test
#   suite under qemu-user in a Debian 12 root filesystem of ARCH, and worker
#   memory (as root; the root filesystem is cached in /var/cache/gatewayd-cross).
#   ARM_TESTS picks tests ("smoke", or files); ARM_STEPS picks steps ("wheel deb lint").
# make arm-smoke ARCH=arm64        what CI runs: every step but measure, smoke tests.
ARCH      ?= arm64
ARM_TESTS ?=
ARM_STEPS ?=
ARM_SMOKE_STEPS := hostdeps sysroot wheel deb lint rootfs install test
ARM_ENV   := ARM_TESTS,ARM_PYTEST_ARGS,ARM_TEST_TIMEOUT,ARM_TIME_SCALE,ARM_CACHE,ARM_OUT,MIRROR

.PHONY: arm-test arm-smoke
arm-test:
	@if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo --preserve-env=$(ARM_ENV)"; fi; \
	ARM_TESTS='$(ARM_TESTS)' $$SUDO cross-build/arm-test.sh $(ARCH) $(ARM_STEPS)

arm-smoke:
	@$(MAKE) --no-print-directory arm-test ARCH=$(ARCH) ARM_TESTS=smoke ARM_STEPS='$(ARM_SMOKE_STEPS)'
