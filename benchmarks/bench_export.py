"""Python loading of a GPT-2-small-sized exported program (docs/EXPORT.md):
torch_safetensors.export.load (weights from safetensors through our loader,
zero-copy, with and without the sha256 check) against torch's
aoti_load_package of the same program compiled with its weights baked in.

Usage: bench_export.py [--build DIR] [--rounds N]

The programs are the ones benchmarks/bench_export_cpp.py compiles and caches
in DIR/packages (default build-bench-export; the same model, compiled once,
minutes on 2 cores). Each contender runs in a fresh process, alternating,
after one warm-up round; the page cache is warm for all, so the numbers
measure the loaders, not the disk. "load" is from the call to a callable
program with its weights in place, "1st run" the first forward pass after
it; memory is what the process holds after the first run (RSS, anonymous,
file-backed) and the peak that loading added. Prints the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402
import bench_export_cpp  # noqa: E402  (the model and its compiled packages)

CONTENDERS = {
    "export.load": "torch_safetensors.export.load (zero-copy, sha256 checked)",
    "export.load-noverify": "torch_safetensors.export.load(verify=False)",
    "baked": "torch aoti_load_package, weights baked in",
}


def child(mode: str, path: str) -> None:
    import torch

    idx = torch.zeros(1, bench_export_cpp.TOKENS, dtype=torch.long)
    base = _common.reset_peak()
    t0 = time.perf_counter()
    if mode == "baked":
        m = torch._inductor.aoti_load_package(path)
    else:
        from torch_safetensors import export
        m = export.load(path, verify=(mode == "export.load"))
    t1 = time.perf_counter()
    peak = _common.status_bytes("VmHWM") - base
    with torch.no_grad():
        y = m(idx)
    t2 = time.perf_counter()
    print(json.dumps({
        "load_s": t1 - t0, "first_run_s": t2 - t1, "load_peak": peak,
        "rss": _common.status_bytes("VmRSS"),
        "anon": _common.status_bytes("RssAnon"),
        "file": _common.status_bytes("RssFile"),
        "checksum": float(y.double().sum()),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(_common.ROOT / "build-bench-export"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "PATH"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    packages = Path(a.build).resolve() / "packages"
    bench_export_cpp.compile_packages(packages)
    gpt2 = packages / "gpt2"
    paths = {"export.load": gpt2, "export.load-noverify": gpt2,
             "baked": packages / "baked.pt2"}
    print(f"weights {os.path.getsize(gpt2 / 'model.safetensors') / 2**20:.0f} MiB; "
          f"package without weights {os.path.getsize(gpt2 / 'model.pt2') / 2**20:.1f} "
          f"MiB, with {os.path.getsize(paths['baked']) / 2**20:.0f} MiB; "
          f"{_common.machine_line(_common.machine_info(['torch']))}")
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    runs = _common.alternate(
        list(CONTENDERS), a.rounds, True,
        lambda c: _common.run_child(
            [sys.executable, __file__, "--child", c, str(paths[c])], env))
    mib = 2 ** 20
    print(f"median of {a.rounds} fresh processes, warm page cache")
    print(f"{'':58} {'load s':>8} {'1st run s':>9} {'RSS MiB':>8} {'anon':>6} "
          f"{'file':>6} {'load peak':>9}")
    for c, label in CONTENDERS.items():
        rs = runs[c]
        err = _common.error_of(rs)
        if err:
            print(f"{label:58} error: {err}")
            continue
        print(f"{label:58} {_common.med(rs, 'load_s'):8.3f} "
              f"{_common.med(rs, 'first_run_s'):9.3f} "
              f"{_common.med(rs, 'rss') / mib:8.0f} {_common.med(rs, 'anon') / mib:6.0f} "
              f"{_common.med(rs, 'file') / mib:6.0f} "
              f"{_common.med(rs, 'load_peak') / mib:9.0f}")
    sums = {round(r["checksum"], 1) for rs in runs.values() for r in rs if "checksum" in r}
    print(f"output checksums (equal when the programs agree): {sorted(sums)}")


if __name__ == "__main__":
    main()
