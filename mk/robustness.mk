# Robustness machinery (issue 6): fuzz targets, corpus replay, ThreadSanitizer.
#
#   make fuzz-replay   replay every corpus without libFuzzer: gcc ($(BUILD)) and
#                      clang ASan+UBSan ($(FUZZ_BUILD))
#   make fuzz-smoke    each libFuzzer target for FUZZ_SMOKE_SECONDS (make test)
#   make fuzz          long campaigns: FUZZ_SECONDS per target (default 1800),
#                      one after another; FUZZ_PARALLEL=1 runs them all at once
#   make test-tsan     test_concurrency, test_engine and test_writer_direct (the O_DIRECT
#                      save's writer thread) under ThreadSanitizer
#   make test-m32      a 32-bit (-m32) build: corpus replays and wide_values
#                      (fails, never skips, when gcc -m32 cannot link)
#   make check-layers  the dependency rule: csrc/core and csrc/common include no
#                      I/O or system header and their objects call no system call
#   make check-golden  tests/c/golden.h (the writer tests' expected bytes) is what the
#                      reference package writes today (scripts/regen_golden.py --check;
#                      scripts/regen_golden.py rewrites it)
#   make test-robust-python   only the Python robustness tests (test-python
#                      runs them too); ST_ROBUST_LONG=1 for the long runs
#
# Findings land in $(FUZZ_BUILD)/artifacts/<target>/; the corpus grown by the
# campaigns in $(FUZZ_BUILD)/corpus/<target>/ (tests/fuzz/corpus/ holds the
# seeds and the regression cases and is never written by a run).

FUZZ_BUILD ?= build-fuzz
TSAN_BUILD ?= build-tsan
FUZZ_TARGETS := open read write
FUZZ_SMOKE_SECONDS ?= 40
FUZZ_SECONDS ?= 1800
FUZZ_MAX_LEN ?= 16384
FUZZ_PARALLEL ?= 0
FUZZ_FLAGS = -dict=tests/fuzz/safetensors.dict -max_len=$(FUZZ_MAX_LEN) -timeout=20 \
             -rss_limit_mb=2560 -print_final_stats=1
FUZZ_SAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
               UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

M32_BUILD ?= build-m32

.PHONY: fuzz-build fuzz-replay fuzz-smoke fuzz tsan-build test-tsan test-robust-python test-m32 \
        check-layers check-golden

$(FUZZ_BUILD)/build.ninja: CMakeLists.txt tests/fuzz/CMakeLists.txt
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DST_BUILD_FUZZ=ON -DST_SANITIZE=address,undefined -DST_BUILD_CLI=OFF $(CMAKE_FLAGS)

fuzz-build: deps $(FUZZ_BUILD)/build.ninja
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target \
	  $(addprefix fuzz_,$(FUZZ_TARGETS)) $(addprefix replay_,$(FUZZ_TARGETS))

# The replays are ctest tests of every build (tests/fuzz is part of the test
# tree), so test-c (gcc) and test-asan (clang ASan+UBSan) already run them
# in `make test`; this target runs just them, on demand.
fuzz-replay: build build-asan
	ctest --test-dir $(BUILD) --output-on-failure -R '^(fuzz_replay_|robust_)'
	$(FUZZ_SAN_ENV) ctest --test-dir $(ASAN_BUILD) --output-on-failure -R '^(fuzz_replay_|robust_)'

fuzz-smoke: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/artifacts/$$t; \
	  echo "fuzz-smoke: $$t for $(FUZZ_SMOKE_SECONDS) s"; \
	  $(FUZZ_SAN_ENV) $(FUZZ_BUILD)/tests/fuzz/fuzz_$$t $(FUZZ_FLAGS) \
	    -max_total_time=$(FUZZ_SMOKE_SECONDS) \
	    -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t/ \
	    $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t > $(FUZZ_BUILD)/smoke-$$t.log 2>&1 \
	  || { tail -40 $(FUZZ_BUILD)/smoke-$$t.log; exit 1; }; \
	  grep -E '^(Done|stat::number_of_executed_units)' $(FUZZ_BUILD)/smoke-$$t.log || true; \
	done

fuzz: fuzz-build
	@run() { t=$$1; mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/artifacts/$$t; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s (log $(FUZZ_BUILD)/fuzz-$$t.log)"; \
	  $(FUZZ_SAN_ENV) $(FUZZ_BUILD)/tests/fuzz/fuzz_$$t $(FUZZ_FLAGS) \
	    -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t/ \
	    $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t > $(FUZZ_BUILD)/fuzz-$$t.log 2>&1; \
	  rc=$$?; grep -E '^(Done|stat::)' $(FUZZ_BUILD)/fuzz-$$t.log; \
	  ls $(FUZZ_BUILD)/artifacts/$$t; return $$rc; }; \
	rc=0; \
	if [ "$(FUZZ_PARALLEL)" = 1 ]; then \
	  for t in $(FUZZ_TARGETS); do run $$t & done; \
	  for t in $(FUZZ_TARGETS); do wait -n || rc=1; done; \
	else \
	  for t in $(FUZZ_TARGETS); do run $$t || rc=1; done; \
	fi; exit $$rc

$(TSAN_BUILD)/build.ninja: CMakeLists.txt
	CC=clang CXX=clang++ cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DST_SANITIZE=thread -DST_BUILD_CLI=OFF $(CMAKE_FLAGS)

tsan-build: deps $(TSAN_BUILD)/build.ninja
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target test_concurrency test_engine test_writer_direct

test-tsan: tsan-build
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  ST_TEST_TMPDIR=$(CURDIR)/$(TSAN_BUILD) $(TSAN_BUILD)/tests/c/test_concurrency
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  ST_TEST_TMPDIR=$(CURDIR)/$(TSAN_BUILD) $(TSAN_BUILD)/tests/c/test_engine
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  ST_TEST_TMPDIR=$(CURDIR)/$(TSAN_BUILD) $(TSAN_BUILD)/tests/c/test_writer_direct

test-robust-python: build venv python-install
	ST_LIBRARY=$(CURDIR)/$(BUILD)/libsafetensors.so ST_CLI=$(CURDIR)/$(BUILD)/safetensors \
	  $(VPY) -m pytest -q tests/python/test_robust_python.py tests/python/test_robust_mutations.py

# C only: the C++ standard library has no 32-bit build here, and none is needed.
test-m32: deps
	@if ! echo 'int main(void){return 0;}' | gcc -m32 -x c - -o /dev/null 2>/dev/null; then \
	  echo "test-m32: FAILED: gcc -m32 cannot link (gcc-multilib, which scripts/install-deps.sh installs, is missing)"; exit 1; fi; \
	set -e; \
	test -f $(M32_BUILD)/build.ninja || CFLAGS=-m32 cmake -S . -B $(M32_BUILD) -G Ninja \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DST_BUILD_TESTS=OFF -DST_BUILD_CLI=OFF -DST_BUILD_FUZZ=ON; \
	cmake --build $(M32_BUILD) -j $(JOBS) --target wide_values \
	  $(addprefix replay_,$(FUZZ_TARGETS)); \
	ctest --test-dir $(M32_BUILD)/tests/fuzz --output-on-failure

check-layers: build
	scripts/check-layers.sh $(BUILD)

check-golden: venv
	$(VPY) scripts/regen_golden.py --check

EXTRA_TESTS += fuzz-smoke test-tsan test-m32 check-layers check-golden
