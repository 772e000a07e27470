#!/usr/bin/env bash
# Builds and checks the C++ API for LibTorch (ST_WITH_TORCH=ON) against the
# torch in .venv: the adapter's GoogleTest suites, an install, the
# deployment example built from the installed tree with
# find_package(safetensors COMPONENTS torch), and its bitwise check against
# Python. Prints the compile time of every C++ translation unit it built.
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

step() { printf '\n== %s\n' "$*"; }

step "configure + build the adapter and its tests ($BUILD)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DST_WITH_TORCH=ON -DST_BUILD_CLI=OFF -DST_TORCH_PYTHON="$PY" \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" >/dev/null
# Everything the install step installs, plus the C++ tests.
cmake --build "$BUILD" -j "$JOBS" --target safetensors safetensors_static safetensors_torch \
  cpp_test_load cpp_test_module cpp_test_fixtures

step "C++ tests"
ctest --test-dir "$BUILD" -R '^cpp_' --output-on-failure

step "install to $PREFIX"
rm -rf "$PREFIX"
cmake --install "$BUILD" >/dev/null
test -f "$PREFIX/include/safetensors/torch.hpp"
if ! grep -q safetensorsTorch.cmake "$PREFIX/lib/cmake/safetensors/safetensorsConfig.cmake"; then
  echo "check-cpp: the installed safetensorsConfig.cmake does not include safetensorsTorch.cmake;" >&2
  echo "  cmake/safetensorsConfig.cmake.in needs, before check_required_components():" >&2
  echo '    if(EXISTS "${CMAKE_CURRENT_LIST_DIR}/safetensorsTorch.cmake")' >&2
  echo '      include("${CMAKE_CURRENT_LIST_DIR}/safetensorsTorch.cmake")' >&2
  echo '    endif()' >&2
  exit 1
fi

step "deployment example: a consumer of the installed package"
cmake -S examples/cpp -B "$EXAMPLE" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" >/dev/null
cmake --build "$EXAMPLE" -j "$JOBS"
"$PY" examples/cpp/export.py "$EXAMPLE/out"
"$EXAMPLE/deploy" "$EXAMPLE/out/model.safetensors" "$EXAMPLE/out/io.safetensors"

step "compile time per translation unit (last build of each, from .ninja_log; -j$JOBS)"
for log in "$BUILD/.ninja_log" "$EXAMPLE/.ninja_log"; do
  # Columns: start ms, end ms, mtime, output. Keep the last entry per output.
  awk -F'\t' 'NR > 1 && $4 ~ /(csrc\/torch|tests\/cpp|deploy)[^ ]*\.o$/ { t[$4] = ($2 - $1) / 1000 }
              END { for (o in t) printf "  %6.1f s  %s\n", t[o], o }' "$log" | sort -k3
done

printf '\ncheck-cpp: OK\n'
