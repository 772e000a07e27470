#!/usr/bin/env bash
# Fails when the shared library exports a symbol that is not st_*.
set -euo pipefail
lib=${1:?usage: check-symbols.sh libsafetensors.so}
bad=$(nm -D --defined-only "$lib" | awk '{print $NF}' | grep -v '^st_[a-z]' || true)
count=$(nm -D --defined-only "$lib" | awk '{print $NF}' | grep -c '^st_[a-z]' || true)
if [ -n "$bad" ]; then
  echo "check-symbols: $lib exports symbols outside st_:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "check-symbols: $count exported symbols, all st_*"
