#!/usr/bin/env bash
# Builds the torch-safetensors wheel and checks that it is self-contained.
#
#   scripts/check-wheel.sh build   the sdist and, from it, the wheel into dist/,
#                                  as `python -m build` does (isolated build
#                                  environment, scikit-build-core; CMake tree
#                                  in build-wheel/cmake)
#   scripts/check-wheel.sh test    build, then install it into a fresh virtual
#                                  environment with the pinned torch, import
#                                  it, round-trip tensors, and check that
#                                  nothing installed names this machine's
#                                  source tree, build tree or .venv
#
# Self-contained means what auditwheel checks for a manylinux wheel: the
# extension needs only the C library's system libraries (the C core is linked
# statically into torch_safetensors/_C) and has no RPATH/RUNPATH. The glibc
# it needs is the build machine's (printed; the tag stays linux_x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-test}
PY=${PY:-python3}
# The interpreter .venv was made from (make venv: python3 -m venv .venv).
BUILD_PY=${BUILD_PY:-$ROOT/.venv/bin/python}
WORK=$ROOT/build-wheel
DIST=$ROOT/dist
TORCH_PIN=torch==2.13.0

step() { printf '\n== [%3ds] %s\n' "$SECONDS" "$*"; }
fail() { echo "check-wheel: $*" >&2; exit 1; }

build() {
  # As `python -m build` does: the sdist first, then the wheel from the sdist
  # alone, which proves the sdist carries everything the build needs.
  step "sdist (scikit-build-core's build_sdist), then pip wheel of the sdist (isolated build; CMake tree in build-wheel/cmake)"
  rm -rf "$WORK/cmake" "$WORK/wheelhouse" "$WORK/sdist"
  mkdir -p "$WORK/sdist" "$DIST"
  "$BUILD_PY" -c 'import sys; from scikit_build_core.build import build_sdist; build_sdist(sys.argv[1])' \
    "$WORK/sdist" >/dev/null
  local sdist built
  sdist=$(ls "$WORK"/sdist/torch_safetensors-*.tar.gz)
  "$BUILD_PY" -m pip wheel -q --no-deps --wheel-dir "$WORK/wheelhouse" \
    --config-settings=build-dir="$WORK/cmake" "$sdist"
  built=$(ls "$WORK"/wheelhouse/torch_safetensors-*.whl)
  rm -f "$DIST"/torch_safetensors-*.whl "$DIST"/torch_safetensors-*.tar.gz
  cp "$sdist" "$built" "$DIST/"
  WHEEL=$DIST/$(basename "$built")
  echo "$DIST/$(basename "$sdist")"
  echo "$WHEEL"
}

# The auditwheel-style checks on the wheel's shared objects.
check_elf() {
  local dir=$1 so needed bad glibc
  local found=0
  while IFS= read -r so; do
    found=1
    if readelf -d "$so" | grep -Eq '\((RPATH|RUNPATH)\)'; then
      fail "$so has an RPATH/RUNPATH: $(readelf -d "$so" | grep -E 'RPATH|RUNPATH')"
    fi
    needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    bad=$(grep -Evx 'lib(c|m|pthread|dl|rt)\.so\.[0-9]+|ld-linux-x86-64\.so\.2' <<<"$needed" || true)
    [ -z "$bad" ] || fail "$so needs libraries outside manylinux's system set: $bad"
    # Reported, not checked: it is the build machine's glibc (a manylinux
    # tag needs a build on an older one); the wheel is tagged linux_x86_64.
    glibc=$(objdump -T "$so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
    echo "  $(basename "$so"): NEEDED $(echo $needed), no RPATH, newest glibc symbol ${glibc:-none}"
  done < <(find "$dir" -name '*.so*' -type f)
  [ "$found" = 1 ] || fail "no shared object in $dir"
}

# Nothing under $1 may name the source tree (which holds build-wheel/ and .venv).
check_no_paths() {
  local dir=$1 hits
  hits=$(grep -rlaF -e "$ROOT" "$dir" || true)
  [ -z "$hits" ] || fail "these files name $ROOT (the build tree or .venv): $hits"
}

case $MODE in build|test) ;; *) fail "usage: scripts/check-wheel.sh [build|test]" ;; esac
build
[ "$MODE" = build ] && exit 0

step "the sdist's contents: the source, no virtual environment or build tree"
SDIST=$(ls "$DIST"/torch_safetensors-*.tar.gz)
listing=$(tar tzf "$SDIST" | cut -d/ -f2-)
stray=$(cut -d/ -f1 <<<"$listing" | sort -u | grep -E '^(\.venv|build.*|dist)$' || true)
[ -z "$stray" ] || fail "the sdist carries: $(echo $stray)"
for f in CMakeLists.txt pyproject.toml include/safetensors.h csrc/python/module.c torch_plugin/torch_safetensors/__init__.py; do
  grep -qxF "$f" <<<"$listing" || fail "the sdist lacks $f"
done
echo "  $(wc -l <<<"$listing") entries, $(du -k "$SDIST" | cut -f1) KiB"

step "the wheel's contents"
rm -rf "$WORK/unpacked"
mkdir -p "$WORK/unpacked"
"$BUILD_PY" -m zipfile -e "$WHEEL" "$WORK/unpacked"
test -f "$WORK"/unpacked/torch_safetensors/__init__.py || fail "no torch_safetensors package in the wheel"
ls "$WORK"/unpacked/torch_safetensors/_C.*.so >/dev/null || fail "no extension module in the wheel"
check_elf "$WORK/unpacked"
check_no_paths "$WORK/unpacked"

# The configure step of a source install (the options pyproject.toml gives).
configure_as_pip() {
  cmake -S . -B "$1" -G Ninja -DST_BUILD_PYTHON=ON -DST_BUILD_TESTS=OFF -DST_BUILD_CLI=OFF \
    -DPython3_EXECUTABLE="$BUILD_PY" "${@:2}"
}
# $1: a name; $2: the line the failure must print; the rest: the command.
expect_one_line() {
  local name=$1 want=$2 log="$WORK/prereq/$1.log"
  shift 2
  if "$@" >"$log" 2>&1; then fail "$name: configure succeeded"; fi
  # CMake wraps messages; join the lines before matching.
  tr -s ' \n' '  ' <"$log" | grep -qF "$want" || { cat "$log" >&2; fail "$name: no line saying \"$want\""; }
  echo "  $name: $want"
}

step "a source install needs a C compiler and Python's headers only; a missing one is named in one line"
rm -rf "$WORK/prereq"
mkdir -p "$WORK/prereq/bin"
ln -s "$(command -v cmake)" "$(command -v ninja)" "$WORK/prereq/bin/"
CXX=/nonexistent/c++ configure_as_pip "$WORK/prereq/c-only" >/dev/null
echo "  configures with no C++ compiler"
expect_one_line no-c-compiler "safetensors: no C compiler (cc, gcc or clang) on PATH; install one (Debian/Ubuntu: apt-get install gcc" \
  env -u CC PATH="$WORK/prereq/bin" cmake -S . -B "$WORK/prereq/no-cc" -G Ninja -DST_BUILD_PYTHON=ON
# Headers missing, as on a machine without python3-dev: FindPython is pointed
# at an include directory that does not exist.
expect_one_line no-python-headers "no Python headers (Python.h) for $BUILD_PY; install them (Debian/Ubuntu: apt-get install python3-dev" \
  configure_as_pip "$WORK/prereq/no-headers" -DPython3_INCLUDE_DIR="$WORK/prereq/none"

# A fresh environment outside the source tree, as a user's: the wheel is
# copied out so that pip's record of where it came from does not name it.
TMP=$(mktemp -d /tmp/st-wheel.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
VENV=$TMP/venv
step "fresh virtual environment ($VENV): $TORCH_PIN, then the wheel with its declared dependencies, no compiler or CMake on PATH"
"$PY" -m venv "$VENV"
cp "$WHEEL" "$TMP/"
# --no-compile: byte-compiling torch's thousands of files is most of the
# install's time and nothing this check needs.
"$VENV/bin/python" -m pip install -q --no-compile "$TORCH_PIN"
# The wheel installs and runs with no compiler or CMake: nothing on PATH.
mkdir "$TMP/empty-path"
PATH="$TMP/empty-path" "$VENV/bin/python" -m pip install -q "$TMP/$(basename "$WHEEL")"
"$VENV/bin/python" -m pip check

step "import, torch.save(format=\"safetensors\") / torch.load, load_file (nothing on PATH)"
(cd "$TMP" && PATH="$TMP/empty-path" "$VENV/bin/python" - "$VENV" <<'EOF'
import os, sys

import torch
import torch_safetensors
from torch_safetensors import load_file

venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(torch_safetensors.__file__)
assert where.startswith(venv + os.sep), f"imported from {where}, not the fresh venv"
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__

torch.manual_seed(0)
tensors = {
    "weight": torch.randn(4, 8),
    "bias": torch.arange(8, dtype=torch.int64),
    "half": torch.randn(3, dtype=torch.bfloat16),
}
path = os.path.join(os.getcwd(), "model.safetensors")
torch.save(tensors, path, format="safetensors")
with open(path, "rb") as f:
    header_len = int.from_bytes(f.read(8), "little")
    assert f.read(1) == b"{", "torch.save did not write a safetensors file"
for name, back in (("torch.load", torch.load(path)), ("load_file", load_file(path))):
    assert set(back) == set(tensors), f"{name}: {sorted(back)}"
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), f"{name}: {k} differs"
print(f"round trip OK: {len(tensors)} tensors, header {header_len} bytes, from {where}")
EOF
)

step "nothing installed names the source tree, the build tree or .venv"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
check_elf "$SITE/torch_safetensors"
check_no_paths "$SITE/torch_safetensors"
for d in "$SITE"/torch_safetensors_autoload "$SITE"/torch_safetensors-*.dist-info; do
  check_no_paths "$d"
done

printf '\ncheck-wheel: OK (%s)\n' "$(basename "$WHEEL")"
