# The two commands: `make test` and `make demo`. Both install what they need
# (Debian packages, .venv) idempotently. `make check` is the quick edit-test
# loop: build, the C tests and the Python tests, without the sanitizer, fuzz,
# 32-bit, C++ adapter and benchmark builds that `make test` adds.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
JOBS ?= $(shell nproc)
BUILD := build
ASAN_BUILD := build-asan
CMAKE_FLAGS ?=

.PHONY: all deps venv build build-asan test check test-c test-asan check-symbols \
        check-header check-install test-python python-install demo clean

all: build

deps:
	@scripts/install-deps.sh

$(VENV)/.stamp: requirements/test.txt requirements/test-nodeps.txt
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements/test.txt
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps -r requirements/test-nodeps.txt
	@touch $@

venv: $(VENV)/.stamp

$(BUILD)/build.ninja: CMakeLists.txt
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

$(ASAN_BUILD)/build.ninja: CMakeLists.txt
	CC=clang CXX=clang++ cmake -S . -B $(ASAN_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=Debug -DST_SANITIZE=address,undefined $(CMAKE_FLAGS)

build-asan: deps $(ASAN_BUILD)/build.ninja
	cmake --build $(ASAN_BUILD) -j $(JOBS)

test-c: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-asan: build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(JOBS)

check-symbols: build
	scripts/check-symbols.sh $(BUILD)/libsafetensors.so

check-install: build
	scripts/check-install.sh $(BUILD)

check-header: deps
	scripts/check-header.sh

# Installs torch_safetensors (the CMake project through scikit-build-core)
# into .venv; scikit-build-core keeps its build tree in build/python.
python-install: deps venv
	@if [ -f pyproject.toml ]; then $(VPY) -m pip install -q --no-build-isolation --no-deps . ; fi

test-python: build venv python-install
	ST_LIBRARY=$(CURDIR)/$(BUILD)/libsafetensors.so ST_CLI=$(CURDIR)/$(BUILD)/safetensors \
	  $(VPY) -m pytest -q -rs tests/python

# Each mk/*.mk adds its own targets and appends the ones `make test` runs to
# EXTRA_TESTS (robustness, C++ adapter, install checks, ...).
EXTRA_TESTS :=
-include $(sort $(wildcard mk/*.mk))

test: deps check-header test-c check-symbols check-install test-asan test-python $(EXTRA_TESTS)

check: deps test-c test-python

demo: build venv python-install
	ST_LIBRARY=$(CURDIR)/$(BUILD)/libsafetensors.so ST_CLI=$(CURDIR)/$(BUILD)/safetensors \
	  $(VPY) scripts/demo.py

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
