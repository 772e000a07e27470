#!/usr/bin/env bash
# Installs BUILD_DIR into a scratch prefix and proves a consumer can use it:
# the CMake package (shared and static targets), the pkg-config file, the
# installed CLI, and the shared library's SONAME.
set -euo pipefail
build=${1:?usage: check-install.sh BUILD_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$build" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/st-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
cc=${CC:-cc}

fail() { echo "check-install: FAIL: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >/dev/null

so=$(find "$prefix" -name 'libsafetensors.so' -print -quit)
[ -n "$so" ] || fail "libsafetensors.so not installed"
libdir=$(dirname "$so")
[ -f "$prefix/include/safetensors.h" ] || fail "safetensors.h not installed"
[ -f "$libdir/libsafetensors.a" ] || fail "libsafetensors.a not installed"
[ -f "$libdir/pkgconfig/safetensors.pc" ] || fail "safetensors.pc not installed"
[ -f "$libdir/cmake/safetensors/safetensorsConfig.cmake" ] ||
  fail "CMake package not installed"
[ -x "$prefix/bin/safetensors" ] || fail "the safetensors command not installed"

soname=$(readelf -d "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
[ "$soname" = "libsafetensors.so.1" ] ||
  fail "SONAME is '$soname', expected libsafetensors.so.1"
[ -e "$libdir/$soname" ] || fail "$soname link not installed"

# 1. find_package(safetensors) from a separate project.
cmake -S "$root/tests/install" -B "$tmp/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$tmp/consumer" >/dev/null
readelf -d "$tmp/consumer/consumer" | grep -q "NEEDED.*\[libsafetensors.so.1\]" ||
  fail "the CMake consumer does not link libsafetensors.so.1"
LD_LIBRARY_PATH="$libdir" "$tmp/consumer/consumer" "$tmp/cmake.safetensors"
if readelf -d "$tmp/consumer/consumer_static" | grep -q "NEEDED.*libsafetensors"; then
  fail "the static consumer depends on the shared library"
fi
"$tmp/consumer/consumer_static" "$tmp/static.safetensors"

# 2. pkg-config, with nothing but the installed .pc file to go on.
flags=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags --libs safetensors)
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror "$root/tests/install/main.c" $flags \
  -o "$tmp/pc-consumer" || fail "pkg-config build failed (flags: $flags)"
LD_LIBRARY_PATH="$libdir" "$tmp/pc-consumer" "$tmp/pc.safetensors"

# 3. The installed command reads what the consumers wrote.
"$prefix/bin/safetensors" --version >/dev/null
"$prefix/bin/safetensors" verify "$tmp/cmake.safetensors" "$tmp/static.safetensors" \
  "$tmp/pc.safetensors"
cmp "$tmp/cmake.safetensors" "$tmp/pc.safetensors" ||
  fail "two builds of the same consumer wrote different bytes"

# 4. ST_WERROR: every compile of the project has -Werror by default (its CI),
#    none with -DST_WERROR=OFF (a consumer's newer compiler, a new warning).
for mode in ON OFF; do
  cmake -S "$root" -B "$tmp/werror-$mode" -G Ninja -DST_WERROR=$mode -DST_BUILD_TESTS=OFF \
    >/dev/null || fail "configure with ST_WERROR=$mode failed"
  n=$(cd "$tmp/werror-$mode" && ninja -t commands safetensors | grep -cE ' -c .*\.c$' || true)
  w=$(cd "$tmp/werror-$mode" && ninja -t commands safetensors | grep -E ' -c .*\.c$' |
      grep -c -- '-Werror' || true)
  [ "$n" -gt 0 ] || fail "ST_WERROR=$mode: no compile commands found"
  if [ $mode = ON ]; then [ "$w" = "$n" ] || fail "ST_WERROR=ON: $w of $n compiles have -Werror"
  else [ "$w" = 0 ] || fail "ST_WERROR=OFF: $w of $n compiles still have -Werror"; fi
done

echo "check-install: OK (prefix layout, SONAME $soname, CMake package, pkg-config, CLI, ST_WERROR)"
