#!/usr/bin/env bash
# The public header compiles alone as C11 and as C++17 with strict warnings,
# under gcc and clang.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include "safetensors.h"\nint main(void) { return st_version_number() == 0; }\n' > "$tmp/c.c"
printf '#include "safetensors.h"\nint main() { return st_version_number() == 0; }\n' > "$tmp/cc.cc"
for cc in gcc clang; do
  $cc -std=c11 -Iinclude -Wall -Wextra -Wpedantic -Wconversion -Wshadow -Wstrict-prototypes -Werror -fsyntax-only "$tmp/c.c"
done
for cxx in g++ clang++; do
  $cxx -std=c++17 -Iinclude -Wall -Wextra -Wpedantic -Wconversion -Wshadow -Wold-style-cast -Werror -fsyntax-only "$tmp/cc.cc"
done
echo "check-header: safetensors.h compiles as C11 and C++17 (gcc, clang)"
