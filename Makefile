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
NATIVE_SOURCES := setup.py native/build_native.py $(wildcard native/cdef/*.h native/src/*.c native/src/*.h)

.PHONY: demo test bench fuzz lint setup sysdeps clean

demo: setup
	$(PY) -m gatewayd demo

test: setup
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
	$(VENV)/bin/ruff check gatewayd tests native
	$(VENV)/bin/mypy gatewayd

setup: $(VENV)/.built

sysdeps: $(VENV)/.sysdeps

# System packages: only what is missing, and only once per checkout.
$(VENV)/.sysdeps: Makefile
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "error: need root or sudo to install:$$missing" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
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
