#!/usr/bin/env bash
# Builds and checks the C++ API for LibTorch (ST_WITH_TORCH=ON) against the
# torch in .venv, found the standard LibTorch way (CMAKE_PREFIX_PATH =
# torch.utils.cmake_prefix_path): the adapter's GoogleTest suites, an install
# that records no path of the build machine's LibTorch (RPATH, CMake files),
# a consumer configured as the PyTorch C++ docs say (find_package(Torch) with
# CMAKE_PREFIX_PATH, then find_package(safetensors)), the deployment example
# found through -DTorch_DIR and its bitwise check against Python, the export
# path (AOTInductor packages whose weights live in safetensors, compiled by
# examples/cpp/export_aoti.py once per torch version and cached in the build
# tree, run by deploy_export), and the one-line error when LibTorch is not
# given at all. Prints the compile time of every C++ translation unit it
# built.
#
# Usage: scripts/check-cpp.sh [BUILD_DIR]   (default: build-torch)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${1:-build-torch}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
PY=${ST_TORCH_PYTHON:-$ROOT/.venv/bin/python}
JOBS=${JOBS:-$(nproc)}
PREFIX=$BUILD/install
EXAMPLE=$BUILD/example
CONSUMER=$BUILD/consumer
# What a user passes: python -c 'import torch; print(torch.utils.cmake_prefix_path)'.
TORCH_CMAKE=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')

step() { printf '\n== %s\n' "$*"; }

step "configure + build the adapter and its tests ($BUILD)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DST_WITH_TORCH=ON -DST_BUILD_CLI=OFF -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" \
  -DST_TORCH_PYTHON="$PY" -DCMAKE_INSTALL_PREFIX="$PREFIX" >/dev/null
# Everything the install step installs, plus the C++ tests.
cmake --build "$BUILD" -j "$JOBS" --target safetensors safetensors_static safetensors_torch \
  cpp_test_load cpp_test_module cpp_test_fixtures cpp_test_export

step "C++ tests"
ctest --test-dir "$BUILD" -R '^cpp_' --output-on-failure

step "install to $PREFIX"
rm -rf "$PREFIX"
cmake --install "$BUILD" >/dev/null
test -f "$PREFIX/include/safetensors/torch.hpp"
test -f "$PREFIX/include/safetensors/export.hpp"
if ! grep -q safetensorsTorch.cmake "$PREFIX/lib/cmake/safetensors/safetensorsConfig.cmake"; then
  echo "check-cpp: the installed safetensorsConfig.cmake does not include safetensorsTorch.cmake;" >&2
  echo "  cmake/safetensorsConfig.cmake.in needs, before check_required_components():" >&2
  echo '    if(EXISTS "${CMAKE_CURRENT_LIST_DIR}/safetensorsTorch.cmake")' >&2
  echo '      include("${CMAKE_CURRENT_LIST_DIR}/safetensorsTorch.cmake")' >&2
  echo '    endif()' >&2
  exit 1
fi

step "the install records no path of the build machine's LibTorch"
for lib in "$PREFIX"/lib/libsafetensors*.so; do
  rpath=$(readelf -d "$lib" | sed -n 's/.*(\(RPATH\|RUNPATH\)).*\[\(.*\)\]/\2/p')
  case $rpath in
    ''|'$ORIGIN') ;;
    *) echo "check-cpp: $lib has RPATH/RUNPATH '$rpath' (want none or \$ORIGIN)" >&2; exit 1 ;;
  esac
done
if grep -rIl -e "$TORCH_LIB" -e "$TORCH_CMAKE" -e "$ROOT/.venv" "$PREFIX"; then
  echo "check-cpp: the files above name the build machine's LibTorch or .venv" >&2
  exit 1
fi

step "without LibTorch on CMAKE_PREFIX_PATH or Torch_DIR, one line says what to pass"
rm -rf "$BUILD/no-torch"
if cmake -S examples/cpp -B "$BUILD/no-torch" -G Ninja -DCMAKE_PREFIX_PATH="$PREFIX" \
     >"$BUILD/no-torch.log" 2>&1; then
  echo "check-cpp: find_package(safetensors COMPONENTS torch) succeeded without LibTorch given" >&2
  exit 1
fi
# CMake wraps the message; join its lines before matching.
tr -s ' \n' '  ' <"$BUILD/no-torch.log" |
  grep -q "LibTorch not found; add the output of python -c 'import torch; print(torch.utils.cmake_prefix_path)'" ||
  { cat "$BUILD/no-torch.log" >&2; exit 1; }

step "consumer configured as the PyTorch C++ docs say (find_package(Torch), CMAKE_PREFIX_PATH)"

cmake -S tests/cpp/consumer -B "$CONSUMER" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE;$PREFIX" >/dev/null
cmake --build "$CONSUMER" -j "$JOBS"
"$CONSUMER/consumer" "$CONSUMER/roundtrip.safetensors"

step "CMAKE_PREFIX_PATH alone finds LibTorch for find_package(safetensors COMPONENTS torch)"
rm -rf "$BUILD/prefix-path"
cmake -S examples/cpp -B "$BUILD/prefix-path" -G Ninja \
  -DCMAKE_PREFIX_PATH="$PREFIX;$TORCH_CMAKE" >/dev/null

step "deployment example: found through -DTorch_DIR (no find_package(Torch) of its own)"

cmake -S examples/cpp -B "$EXAMPLE" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DTorch_DIR="$TORCH_CMAKE/Torch" -DCMAKE_PREFIX_PATH="$PREFIX" >/dev/null
cmake --build "$EXAMPLE" -j "$JOBS"
"$PY" examples/cpp/export.py "$EXAMPLE/out"
"$EXAMPLE/deploy" "$EXAMPLE/out/model.safetensors" "$EXAMPLE/out/io.safetensors"

step "export path: AOTInductor packages with safetensors weights, run by <safetensors/export.hpp>"
# Compiling the packages takes about a minute on 2 cores: they are cached in
# the build tree, keyed by the torch version and the sources that make them.
AOTI=$BUILD/aoti
AOTI_KEY="$("$PY" -c 'import torch; print(torch.__version__)') $(cat examples/cpp/export_aoti.py \
  examples/cpp/model.py torch_plugin/torch_safetensors/export.py tests/cpp/aoti_fixtures.py |
  sha256sum | cut -c1-16)"
if [ "$(cat "$AOTI/key" 2>/dev/null)" != "$AOTI_KEY" ]; then
  rm -rf "$AOTI"
  mkdir -p "$AOTI"
  t0=$(date +%s%N)
  "$PY" examples/cpp/export_aoti.py "$AOTI/out"
  "$PY" tests/cpp/aoti_fixtures.py "$AOTI" "$AOTI/out/mlp" "$AOTI/out/block"
  echo "$AOTI_KEY" >"$AOTI/key"
  echo "export step: $(( ($(date +%s%N) - t0) / 1000000 )) ms (compiled; cached in $AOTI)"
else
  echo "export step: 0 ms (cached in $AOTI, key $AOTI_KEY)"
fi
for model in mlp block; do
  "$EXAMPLE/deploy_export" --runner "$AOTI/out/$model/runner.safetensors" \
    --baked "$AOTI/baked.pt2" "$AOTI/out/$model"
done

step "compile time per translation unit (last build of each, from .ninja_log; -j$JOBS)"
for log in "$BUILD/.ninja_log" "$CONSUMER/.ninja_log" "$EXAMPLE/.ninja_log"; do
  # Columns: start ms, end ms, mtime, output. Keep the last entry per output.
  awk -F'\t' 'NR > 1 && $4 ~ /(csrc\/torch|tests\/cpp|deploy|consumer)[^ ]*\.o$/ { t[$4] = ($2 - $1) / 1000 }
              END { for (o in t) printf "  %6.1f s  %s\n", t[o], o }' "$log" | sort -k3
done

printf '\ncheck-cpp: OK\n'
