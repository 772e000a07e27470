#!/usr/bin/env bash
# The public header compiles alone as C11 and as C++17 with strict warnings,
# under gcc and clang, with and without the experimental tier
# (ST_EXPERIMENTAL_API); without it, the tier's names are not declared.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include "safetensors.h"\nint main(void) { return st_version_number() == 0; }\n' > "$tmp/c.c"
printf '#include "safetensors.h"\nint main() { return st_version_number() == 0; }\n' > "$tmp/cc.cc"
printf '#include "safetensors.h"\nint main(void) { st_exec_options o; st_exec_options_init(&o); return (int)o.flags; }\n' > "$tmp/exp.c"
for mode in "" "-DST_EXPERIMENTAL_API"; do
  for cc in gcc clang; do
    $cc -std=c11 -Iinclude $mode -Wall -Wextra -Wpedantic -Wconversion -Wshadow -Wstrict-prototypes -Werror -fsyntax-only "$tmp/c.c"
  done
  for cxx in g++ clang++; do
    $cxx -std=c++17 -Iinclude $mode -Wall -Wextra -Wpedantic -Wconversion -Wshadow -Wold-style-cast -Werror -fsyntax-only "$tmp/cc.cc"
  done
done
gcc -std=c11 -Iinclude -DST_EXPERIMENTAL_API -Wall -Werror -fsyntax-only "$tmp/exp.c"
if gcc -std=c11 -Iinclude -Wall -Werror -fsyntax-only "$tmp/exp.c" 2>/dev/null; then
  echo "check-header: the experimental tier is declared without ST_EXPERIMENTAL_API" >&2
  exit 1
fi
echo "check-header: safetensors.h compiles as C11 and C++17 (gcc, clang), with and without ST_EXPERIMENTAL_API"
