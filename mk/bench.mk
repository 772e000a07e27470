# The benchmark suite (issue 5; method in shared/BENCHMARKS.md, results in benchmarks/RESULTS.md).
#
#   make bench         the full CPU suite: load, save, subset and many-small-tensors workloads
#                      (bench_cpu.py), then open + list (bench_open.py) and the torch.save /
#                      torch.load round trip (bench_python.py); writes RESULTS.md and
#                      benchmarks/plots/*.png. Run it on a quiet machine (~12 min on 2 cores).
#   make bench-parallel  tensor-parallel, pipeline-stage and cooperative loads (bench_parallel.py,
#                      issue 11; ~4 min)
#   make bench-dcp     torch.distributed.checkpoint save/load, world 2, against torch's
#                      Hugging Face and FileSystem storage (bench_dcp.py, issue 11; ~10 min)
#   make bench-patch   transformers' from_pretrained with and without patch_safetensors()
#                      (bench_patch.py, issue 14)
#   make bench-export  a GPT-2-small-sized exported program (torch.export + AOTInductor, issue 15):
#                      weights from safetensors against weights baked in, from Python
#                      (bench_export.py) and C++ (bench_export_cpp.py); first run compiles
#                      the packages (~2 min, cached in build-bench-export)
#   make bench-quick   smoke run of the same harnesses at tiny sizes: no RESULTS.md rewrite, no
#                      speed assertions (make test runs it)
#   make bench-venv    only install the contenders into .venv (never touching torch)
#
# BENCH_ROUNDS sets the measured rounds of bench_cpu.py; BENCH_ARGS, BENCH_OPEN_ARGS and
# BENCH_PY_ARGS pass extra flags to the three scripts.

BENCH_ROUNDS ?= 4
BENCH_ARGS ?=
BENCH_OPEN_ARGS ?=
BENCH_PY_ARGS ?= --runs 3
BENCH_ENV = ST_LIBRARY=$(CURDIR)/$(BUILD)/libsafetensors.so \
            ST_BENCH=$(CURDIR)/$(BUILD)/benchmarks/st_bench

.PHONY: bench bench-quick bench-venv bench-parallel bench-dcp bench-patch bench-export

$(VENV)/.bench-stamp: $(VENV)/.stamp requirements/bench.txt requirements/bench-deps.txt
	@if $(VPY) -m pip install -q --disable-pip-version-check -r requirements/bench-deps.txt && \
	    $(VPY) -m pip install -q --disable-pip-version-check --no-deps -r requirements/bench.txt; \
	then touch $@; \
	else echo "bench-venv: contenders not installed; the suite lists them as unable to run"; fi

bench-venv: $(VENV)/.bench-stamp

bench: build venv python-install bench-venv
	$(BENCH_ENV) $(VPY) benchmarks/bench_cpu.py --rounds $(BENCH_ROUNDS) \
	  --json $(BUILD)/bench-cpu.json $(BENCH_ARGS)
	$(BENCH_ENV) $(VPY) benchmarks/bench_open.py $(BENCH_OPEN_ARGS)
	$(BENCH_ENV) $(VPY) benchmarks/bench_python.py $(BENCH_PY_ARGS)

bench-parallel: build venv python-install bench-venv
	$(BENCH_ENV) $(VPY) benchmarks/bench_parallel.py

bench-dcp: build venv python-install bench-venv
	$(BENCH_ENV) $(VPY) benchmarks/bench_dcp.py

bench-patch: build venv python-install bench-venv
	$(BENCH_ENV) $(VPY) benchmarks/bench_patch.py

bench-export: build venv python-install
	$(BENCH_ENV) $(VPY) benchmarks/bench_export.py
	$(BENCH_ENV) $(VPY) benchmarks/bench_export_cpp.py

bench-quick: build venv python-install bench-venv
	$(BENCH_ENV) $(VPY) benchmarks/bench_cpu.py --quick --quiet > $(BUILD)/bench-quick.log \
	  || { cat $(BUILD)/bench-quick.log; exit 1; }
	@echo "bench-quick: bench_cpu.py ok (log: $(BUILD)/bench-quick.log)"
	$(BENCH_ENV) $(VPY) benchmarks/bench_open.py --quick > $(BUILD)/bench-quick-open.log \
	  || { cat $(BUILD)/bench-quick-open.log; exit 1; }
	$(BENCH_ENV) $(VPY) benchmarks/bench_python.py --quick --runs 1 \
	  > $(BUILD)/bench-quick-python.log 2>&1 || { cat $(BUILD)/bench-quick-python.log; exit 1; }
	@echo "bench-quick: bench_open.py and bench_python.py ok"
	$(BENCH_ENV) $(VPY) benchmarks/bench_parallel.py --quick > $(BUILD)/bench-quick-parallel.log 2>&1 \
	  || { cat $(BUILD)/bench-quick-parallel.log; exit 1; }
	$(BENCH_ENV) $(VPY) benchmarks/bench_dcp.py --quick > $(BUILD)/bench-quick-dcp.log 2>&1 \
	  || { cat $(BUILD)/bench-quick-dcp.log; exit 1; }
	$(BENCH_ENV) $(VPY) benchmarks/bench_patch.py --quick > $(BUILD)/bench-quick-patch.log 2>&1 \
	  || { cat $(BUILD)/bench-quick-patch.log; exit 1; }
	@echo "bench-quick: bench_parallel.py, bench_dcp.py and bench_patch.py ok"

EXTRA_TESTS += bench-quick
