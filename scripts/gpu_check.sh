#!/usr/bin/env bash
# One prepared run for a lent GPU machine (see README): builds and installs
# torch_safetensors there with the machine's own torch, runs the Python tests
# (the CUDA ones included), and the GPU load benchmark. On a machine without
# a GPU the CUDA tests and the benchmark skip, so it can be tried here first.
#   scripts/gpu_check.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu-check}}
mkdir -p "$out"
py=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $py -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$out/machine.txt"
$py -m pip install -q --no-build-isolation --no-deps --target /tmp/st-site . 2>&1 | tail -5 || exit 1
export PYTHONPATH=/tmp/st-site${PYTHONPATH:+:$PYTHONPATH}
rc=0
$py -m pytest -q -p no:cacheprovider tests/python/plugin \
  -k "(cuda or device or gpu or roundtrip) and not autoload and not minilm" 2>&1 | tee "$out/pytest.txt" | tail -15 || rc=1
$py benchmarks/bench_gpu.py --gb "${GPU_BENCH_GB:-2}" --runs 3 --out "$out/bench_gpu.json" \
  2>&1 | tee "$out/bench_gpu.txt" | tail -12 || rc=1
exit $rc
