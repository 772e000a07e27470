"""Loading straight to a CUDA device, side by side (run by scripts/gpu_check.sh).

Contenders, each loading every tensor of one file onto cuda:0 and synchronizing:
  ours       torch_safetensors.torch.load_file(path, device="cuda:0")
  ours-load  torch.load(path, map_location="cuda:0") through the hook
  reference  safetensors.torch.load_file(path, device="cuda:0")
  pickle     torch.load(pickle file, map_location="cuda:0", weights_only=True)
  limit      one pinned host buffer of the same size copied to the device

Without a GPU it prints one line and exits 0 (CI and CPU machines skip it).
Usage: bench_gpu.py [--gb 1.0] [--runs 3] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device, skipped")
        return 0
    import safetensors.torch as ref
    import torch_safetensors  # noqa: F401  (installs the torch.load hook)
    import torch_safetensors.torch as ours

    dev = torch.device("cuda:0")
    n_tensors = 64
    per = int(args.gb * 1e9) // n_tensors // 2  # fp16 elements per tensor
    gen = torch.Generator().manual_seed(0)
    sd = {f"layer.{i}.weight": torch.randn(per, generator=gen).to(torch.float16)
          for i in range(n_tensors)}
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    tmp = tempfile.mkdtemp(prefix="st-gpu-")
    st_path = os.path.join(tmp, "m.safetensors")
    pk_path = os.path.join(tmp, "m.pt")
    ours.save_file(sd, st_path)
    torch.serialization.save(sd, pk_path)  # torch's own zip + pickle format

    def run(name):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if name == "ours":
            out = ours.load_file(st_path, device="cuda:0")
        elif name == "ours-load":
            out = torch.load(st_path, map_location="cuda:0")
        elif name == "reference":
            out = ref.load_file(st_path, device="cuda:0")
        elif name == "pickle":
            out = torch.load(pk_path, map_location="cuda:0", weights_only=True)
        elif name == "limit":
            host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            host.fill_(1)
            t0 = time.perf_counter()  # the limit: the copy alone
            out = {"x": host.to(dev, non_blocking=True)}
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if name not in ("limit",):
            for k in ("layer.0.weight", f"layer.{n_tensors - 1}.weight"):
                assert torch.equal(out[k].cpu(), sd[k]), (name, k)
        del out
        torch.cuda.empty_cache()
        return dt

    names = ["limit", "ours", "ours-load", "reference", "pickle"]
    for name in names:  # warm-up: page cache, CUDA context, allocator
        run(name)
    times = {n: [] for n in names}
    for _ in range(args.runs):
        for name in names:  # alternating
            times[name].append(run(name))
    res = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "bytes": nbytes,
        "tensors": n_tensors,
        "runs": args.runs,
        "results": {n: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                        "gbps": nbytes / statistics.median(v) / 1e9} for n, v in times.items()},
    }
    base = res["results"]["ours"]["median_s"]
    for n in names:
        res["results"][n]["ours_speedup"] = res["results"][n]["median_s"] / base
    print(json.dumps(res, indent=1))
    print(f"\n{'contender':<10} {'median s':>9} {'GB/s':>7} {'vs ours':>8}   ({res['device']}, "
          f"{nbytes / 1e9:.2f} GB, {n_tensors} tensors, warm cache)")
    for n in names:
        r = res["results"][n]
        print(f"{n:<10} {r['median_s']:9.3f} {r['gbps']:7.2f} {r['ours_speedup']:7.2f}x")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
