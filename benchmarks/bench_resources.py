"""Time and peak memory of hostile-but-bounded headers: ours against the reference.

Each (case, contender) runs in a fresh subprocess that opens the file, lists it and exits, and
reports its wall time and its peak RSS growth (the kernel's peak mark, reset just before the open, minus the
RSS at that moment, so interpreter and import costs cancel; a warm-up open of a tiny file runs
first). Cases: the huge legal header (1.7M zero-size tensors,
and half of it to show linearity), a million metadata keys, a 90 MB metadata string, rank 64
and a million dimensions, a 100,000-digit number, a million levels of nesting.

    ST_LIBRARY=build/libsafetensors.so .venv/bin/python benchmarks/bench_resources.py [--quick]
        [--out FILE]

Contenders: "ours" (st_open, mmap backend, through tests/python/stcore.py) and "reference"
(safetensors 0.8.0 safe_open(framework="numpy") + keys() + metadata()).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STCORE_DIR = HERE.parent / "tests" / "python"

CHILD = r"""
import json, os, struct, sys, time
path, who, warm = sys.argv[1], sys.argv[2], sys.argv[4]

def status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

if who == "ours":
    sys.path.insert(0, sys.argv[3])
    import stcore
    def run(p):
        try:
            with stcore.open_path(p) as f:
                return "ok", len(f), stcore.lib().st_metadata_count(f.handle)
        except stcore.StError as e:
            return stcore.STATUS_NAMES[e.status], 0, 0
else:
    import safetensors
    def run(p):
        try:
            with safetensors.safe_open(p, framework="numpy") as f:
                return "ok", len(f.keys()), len(f.metadata() or {})
        except Exception as e:
            return "error: " + str(e)[:40], 0, 0
run(warm)  # lazy imports and first-call costs are not the header's
# Reset the peak-RSS mark (Linux: clear_refs 5), so the peak below is this open's.
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
before = status_kb("VmRSS")
t0 = time.perf_counter()
status, n, m = run(path)
t1 = time.perf_counter()
peak = status_kb("VmHWM")
print(json.dumps({"status": status, "tensors": n, "meta": m, "seconds": t1 - t0,
                  "rss_mb": max(0, peak - before) / 1024}))
"""


def frame(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def name62(v: int, width: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    s = []
    for _ in range(width):
        s.append(digits[v % 62])
        v //= 62
    return "".join(reversed(s))


def zero_size(count: int) -> bytes:
    entry = '":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    h = "{" + ",".join('"' + name62(count - 1 - i, 4) + entry for i in range(count)) + "}"
    return frame(h.encode())


def cases(quick: bool):
    k = 8 if quick else 1
    yield "1.7M zero-size tensors (~97 MB header)", lambda: zero_size(1_700_000 // k)
    yield "850k zero-size tensors (half)", lambda: zero_size(850_000 // k)
    yield "1M metadata keys", lambda: frame(
        ('{"__metadata__":{' + ",".join(f'"k{name62(i, 5)}":"v"' for i in range(1_000_000 // k))
         + "}}").encode())
    yield "90 MB metadata string", lambda: frame(
        b'{"__metadata__":{"big":"' + b"x" * (90_000_000 // k) + b'"}}')
    yield "rank 64", lambda: frame(
        ('{"t":{"dtype":"U8","shape":[' + ",".join(["1"] * 64) +
         '],"data_offsets":[0,1]}}').encode(), b"x")
    yield "rank 1,000,000", lambda: frame(
        ('{"t":{"dtype":"U8","shape":[' + ",".join(["1"] * 1_000_000) +
         '],"data_offsets":[0,1]}}').encode(), b"x")
    yield "100,000-digit number (shape)", lambda: frame(
        b'{"t":{"dtype":"U8","shape":[' + b"7" * 100_000 + b'],"data_offsets":[0,1]}}', b"x")
    yield "100,000-digit number (unknown field)", lambda: frame(
        b'{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":0.' + b"7" * 100_000 + b"}}",
        b"x")
    yield "1,000,000 levels of nesting", lambda: frame(
        b'{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + b"[" * 1_000_000 +
        b"]" * 1_000_000 + b"}}", b"x")


def run_one(path: str, who: str, warm: str) -> dict:
    env = dict(os.environ)
    p = subprocess.run([sys.executable, "-c", CHILD, path, who, str(STCORE_DIR), warm],
                       capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        return {"status": f"crashed rc={p.returncode}", "seconds": float("nan"),
                "rss_mb": float("nan"), "stderr": p.stderr[-300:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="an eighth of the sizes")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    rows = ["| case | header MB | ours: status | ours s | ours MB | reference: status | "
            "ref s | ref MB | time ratio | memory ratio |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        warm = os.path.join(tmp, "warm.safetensors")
        with open(warm, "wb") as fh:
            fh.write(frame(b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x"))
        for title, make in cases(args.quick):
            blob = make()
            path = os.path.join(tmp, "case.safetensors")
            with open(path, "wb") as fh:
                fh.write(blob)
            del blob
            ours = run_one(path, "ours", warm)
            ref = run_one(path, "reference", warm)
            n_mb = (struct.unpack("<Q", open(path, "rb").read(8))[0]) / 1e6
            tr = ref["seconds"] / ours["seconds"] if ours["seconds"] > 0 else float("nan")
            mr = ref["rss_mb"] / max(ours["rss_mb"], 1.0)
            rows.append(f"| {title} | {n_mb:.1f} | {ours['status']} | {ours['seconds']:.3f} | "
                        f"{ours['rss_mb']:.0f} | {ref['status']} | {ref['seconds']:.3f} | "
                        f"{ref['rss_mb']:.0f} | {tr:.1f}x | {mr:.1f}x |")
            print(rows[-1], flush=True)
            os.remove(path)
    table = "\n".join(rows)
    print()
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
