#!/usr/bin/env python3
"""`make demo`: torch.save(format="safetensors") / torch.load on a GPT-2-small-shaped checkpoint.

1. Builds a GPT-2-small-shaped model state (124 M fp32 parameters, 149 tensors including the
   tied lm_head) and an Adam optimizer state (one real step) in memory.
2. Saves {"model", "optimizer", "epoch"} with torch.save(format="safetensors"), loads it back
   with torch.load and checks that everything is bitwise equal and that the tie survived.
3. Prints a side-by-side table of time, peak memory (RSS) and file size against pickle
   torch.save/torch.load (also with mmap=True) and against safetensors.torch save_file/
   load_file (model weights only: the reference stores flat dicts of unshared tensors).
   Every byte is touched after each load, so lazy mappings are not flattered.
4. Runs the C command-line tool (`$ST_CLI inspect` and `verify`; default build/safetensors)
   on the saved file when it has been built.

Usage: scripts/demo.py [--small] [--dir DIR] [--keep]; ST_DEMO_SMALL=1 is the same as --small
(a 2-layer, 256-wide model that runs in seconds). Peak RSS is the kernel's high-water mark
(VmHWM), reset before each step through /proc/self/clear_refs, minus the RSS before the step.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402  (the GPT-2 shapes, shared with the benchmarks)


class Measure:
    """Wall time and peak RSS growth (MiB) of the enclosed block."""

    def __enter__(self):
        gc.collect()
        self.peak_ok = _common.clear_peak()
        self.rss0 = _common.status_bytes("VmRSS") // 1024
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        peak = _common.status_bytes("VmHWM") // 1024 if self.peak_ok else _common.status_bytes("VmRSS") // 1024
        self.peak_mib = max(0, peak - self.rss0) / 1024
        return False


def build(small: bool, bar):
    import torch

    dims = (2, 256, 5000, 256) if small else (12, 768, 50257, 1024)
    g = torch.Generator().manual_seed(0)
    params = {}
    for name, shape in _common.gpt2_shapes(*dims):
        t = torch.empty(shape)
        if name.endswith("bias"):
            t.zero_()
        elif ".ln_" in name:
            t.fill_(1.0)
        else:
            t.normal_(0.0, 0.02, generator=g)
        params[name] = torch.nn.Parameter(t)
        bar.update(1)
    model_sd = {k: p.detach() for k, p in params.items()}
    model_sd["lm_head.weight"] = model_sd["transformer.wte.weight"]  # tied, as in GPT-2
    opt = torch.optim.Adam(params.values(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.0)
    for p in params.values():
        p.grad = torch.empty_like(p).normal_(0.0, 1e-3, generator=g)
    opt.step()
    for p in params.values():
        p.grad = None
    bar.update(1)
    return model_sd, opt.state_dict(), params


def touch(obj) -> int:
    """Reads every byte of every tensor in obj (nested containers)."""
    import torch

    total = 0
    if isinstance(obj, torch.Tensor):
        if obj.numel():
            total += int(obj.detach().reshape(-1).view(torch.uint8).max())  # reads every byte
        return total
    if isinstance(obj, dict):
        return sum(touch(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(touch(v) for v in obj)
    return 0


def check_equal(a, b, path="obj"):
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.bool else a, b), path
        return
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            check_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            check_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", default=os.environ.get("ST_DEMO_SMALL") == "1",
                    help="a small model that runs in seconds (also ST_DEMO_SMALL=1)")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    args = ap.parse_args()

    from tqdm import tqdm

    t_import = time.perf_counter()
    import torch

    import torch_safetensors  # noqa: F401  (installs the torch.save/torch.load hook)
    import safetensors
    import safetensors.torch as ref
    from torch_safetensors._hook import is_installed

    print(f"torch {torch.__version__}, torch_safetensors {torch_safetensors.__version__}, "
          f"safetensors (reference) {safetensors.__version__}, hook installed: {is_installed()}"
          f"  [imports {time.perf_counter() - t_import:.1f} s]")
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    n_layers = 2 if args.small else 12
    with tqdm(total=12 * n_layers + 5, desc="building model + Adam state", unit="tensor",
              leave=False) as bar:
        model_sd, optim_sd, _params = build(args.small, bar)
    n_params = sum(t.numel() for k, t in model_sd.items() if k != "lm_head.weight")
    n_opt = sum(t.numel() for s in optim_sd["state"].values() for t in s.values())
    print(f"model: {len(model_sd)} tensors ({len(model_sd) - 1} + tied lm_head), "
          f"{n_params / 1e6:.1f} M fp32 parameters ({mib(n_params * 4)} MiB); "
          f"Adam state: {len(optim_sd['state'])} entries, {mib(n_opt * 4)} MiB")
    ckpt = {"model": model_sd, "optimizer": optim_sd, "epoch": 3}

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="st-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    flat_sd = {k: v for k, v in model_sd.items() if k != "lm_head.weight"}  # reference: no ties
    rows = []

    # (what, contender, file, object, save(obj, path) or None to reuse the file, load(path))
    steps = [
        ("checkpoint", "torch.save (pickle) / torch.load", "ckpt.pt", ckpt,
         lambda o, p: torch.save(o, p), lambda p: torch.load(p, weights_only=True)),
        ("checkpoint", "torch.save / torch.load(mmap=True)", "ckpt.pt", ckpt,
         None, lambda p: torch.load(p, weights_only=True, mmap=True)),
        ("checkpoint", "ours: torch.save(format='safetensors') / torch.load", "ckpt.safetensors",
         ckpt, lambda o, p: torch.save(o, p, format="safetensors"), lambda p: torch.load(p)),
        ("weights", "torch.save (pickle) / torch.load", "model.pt", flat_sd,
         lambda o, p: torch.save(o, p), lambda p: torch.load(p, weights_only=True)),
        ("weights", "safetensors.torch save_file / load_file", "model-ref.safetensors", flat_sd,
         lambda o, p: ref.save_file(o, p), lambda p: ref.load_file(p)),
        ("weights", "ours: torch.save(format='safetensors') / torch.load", "model.safetensors",
         flat_sd, lambda o, p: torch.save(o, p, format="safetensors"), lambda p: torch.load(p)),
        ("weights", "ours: torch_safetensors.save_file / load_file", "model-ours.safetensors",
         flat_sd, lambda o, p: torch_safetensors.save_file(o, p),
         lambda p: torch_safetensors.load_file(p)),
    ]
    # warm every code path once (lazy imports, first-call setup) so that single runs compare
    tiny = {"w": torch.ones(4)}
    for _, _, fname, _, save, load in steps:
        if save is not None:
            p = str(work / ("warm-" + fname))
            save(tiny, p)
            load(p)
            os.unlink(p)
    loaded_ckpt = None
    with tqdm(steps, desc="save / load", unit="step", leave=False) as bar:
        for what, label, fname, obj, save, load in bar:
            path = str(work / fname)
            bar.set_description(f"{what}: {label.split(':')[0]}")
            save_m = None
            if save is not None:
                with Measure() as save_m:
                    save(obj, path)
            with Measure() as load_m:
                obj = load(path)
                touch(obj)
            if label.startswith("ours: torch.save") and what == "checkpoint":
                loaded_ckpt = obj
            del obj
            rows.append((what, label, save_m, load_m, os.path.getsize(path)))

    # equality of what our torch.load returned
    check_equal(ckpt, loaded_ckpt)
    lm = loaded_ckpt["model"]
    assert lm["lm_head.weight"].data_ptr() == lm["transformer.wte.weight"].data_ptr()
    print("check: torch.load(torch.save(ckpt, format='safetensors')) == ckpt, bitwise, with the "
          "lm_head/wte tie restored as one storage: OK")
    del loaded_ckpt, lm

    print()
    head = f"{'':10} {'contender':54} {'save s':>7} {'save MiB':>9} {'load+touch s':>13} " \
           f"{'load MiB':>9} {'file MiB':>9}"
    print(head)
    print("-" * len(head))
    for what, label, sm, lm_, size in rows:
        s_t = f"{sm.seconds:7.2f}" if sm else f"{'(same)':>7}"
        s_m = f"{sm.peak_mib:9,.0f}" if sm else f"{'':>9}"
        print(f"{what:10} {label:54} {s_t} {s_m} {lm_.seconds:13.2f} {lm_.peak_mib:9,.0f} "
              f"{mib(size):>9}")
    print("(MiB columns: peak RSS growth during the step; a mapped file's touched pages count "
          "as RSS. Single runs; see benchmarks/bench_python.py for medians.)")

    cli = os.environ.get("ST_CLI") or str(ROOT / "build" / "safetensors")
    target = work / "ckpt.safetensors"
    print()
    if os.access(cli, os.X_OK):
        for verb in ("inspect", "verify"):
            res = subprocess.run([cli, verb, str(target)], capture_output=True, text=True)
            lines = (res.stdout + res.stderr).strip().splitlines()
            print(f"$ {os.path.relpath(cli)} {verb} {target.name}   (exit {res.returncode})")
            for line in lines[:12]:
                print("  " + line[:150])
            if len(lines) > 12:
                print(f"  ... {len(lines) - 12} more lines")
    else:
        print(f"(C CLI not built at {cli}: skipping `safetensors inspect/verify`)")

    if args.keep:
        print(f"\nfiles kept in {work}")
    elif not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
