#!/usr/bin/env python3
"""Python save/load side by side on GPT-2-small shapes (shared/BENCHMARKS.md's method).

Contenders, each in its own long-lived worker process (so peak RSS is its own):
  ours-hook      torch.save(sd, f, format="safetensors") / torch.load(f)   (zero-copy mmap)
  ours-owned     (same file)                             / torch.load(f, mmap=False)
  ours-dropin    torch_safetensors.save_file / load_file
  reference      safetensors.torch.save_file / load_file (safetensors 0.8.0)
  pickle         torch.save(sd, f) / torch.load(f, weights_only=True)
  pickle-mmap    (same file)       / torch.load(f, weights_only=True, mmap=True)
  raw-io         the physical limit: one sequential write of the same bytes / one readinto of
                 the whole file into preallocated memory

Workloads: a GPT-2-small-shaped state_dict (124 M parameters, 148 tensors; no tied copy, which
the reference refuses) in fp32 and in bf16. Warm cache (each file is read right after it is
written, and a warm-up round runs first); every byte is touched after each load, inside the
timed region. Runs alternate contenders (A B C ... A B C ...); the median and the min-max spread
are reported with peak RSS growth (VmHWM, reset through /proc/self/clear_refs) and ratios
against ours-hook. Writes its section of benchmarks/RESULTS.md and benchmarks/plots/
python_roundtrip.png; --quick runs a tiny model twice and writes nothing unless --write.

Usage: .venv/bin/python benchmarks/bench_python.py [--quick] [--runs N] [--write] [--dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PLOT = HERE / "plots" / "python_roundtrip.png"
BEGIN, END = "<!-- BEGIN python-roundtrip -->", "<!-- END python-roundtrip -->"

CONTENDERS = ["ours-hook", "ours-owned", "ours-dropin", "reference", "pickle", "pickle-mmap",
              "raw-io"]
# contenders that load a file written by another one
SHARES_FILE = {"ours-owned": "ours-hook", "pickle-mmap": "pickle"}


# --------------------------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------------------------

def gpt2_shapes(small: bool) -> list:
    return _common.gpt2_shapes(*((2, 256, 5000, 256) if small else (12, 768, 50257, 1024)))


def gpt2_state_dict(dtype_name: str, small: bool):
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=g).to(dtype) for n, s in gpt2_shapes(small)}


def _touch(obj) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return int(obj.reshape(-1).view(torch.uint8).max()) if obj.numel() else 0
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return int(torch.frombuffer(obj, dtype=torch.uint8).max()) if len(obj) else 0
    if isinstance(obj, dict):
        return sum(_touch(v) for v in obj.values())
    return 0


def worker(contender: str, dtype_name: str, small: bool) -> None:
    """Reads commands ("save PATH", "load PATH", "quit") on stdin, answers JSON lines."""
    import gc

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    import safetensors.torch as ref

    import torch_safetensors

    sd = None

    def saver():
        if contender in ("ours-hook", "ours-owned"):
            return lambda p: torch.save(sd, p, format="safetensors")
        if contender == "ours-dropin":
            return lambda p: torch_safetensors.save_file(sd, p)
        if contender == "reference":
            return lambda p: ref.save_file(sd, p)
        if contender in ("pickle", "pickle-mmap"):
            return lambda p: torch.save(sd, p)
        if contender == "raw-io":
            def raw(p):
                with open(p, "wb") as fh:
                    for t in sd.values():
                        fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            return raw
        raise ValueError(contender)

    def loader():
        if contender == "ours-hook":
            return torch.load
        if contender == "ours-owned":
            return lambda p: torch.load(p, mmap=False)
        if contender == "ours-dropin":
            return torch_safetensors.load_file
        if contender == "reference":
            return ref.load_file
        if contender == "pickle":
            return lambda p: torch.load(p, weights_only=True)
        if contender == "pickle-mmap":
            return lambda p: torch.load(p, weights_only=True, mmap=True)
        if contender == "raw-io":
            def raw(p):
                buf = bytearray(os.path.getsize(p))
                with open(p, "rb", buffering=0) as fh:
                    fh.readinto(buf)
                return buf
            return raw
        raise ValueError(contender)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, _, path = line.strip().partition(" ")
        if cmd == "quit":
            break
        if cmd == "save" and sd is None:
            sd = gpt2_state_dict(dtype_name, small)
        gc.collect()
        ok = _common.clear_peak()
        rss0 = _common.status_bytes("VmRSS") // 1024
        t0 = time.perf_counter()
        if cmd == "save":
            saver()(path)
            out = None
        else:
            out = loader()(path)
            _touch(out)
        secs = time.perf_counter() - t0
        peak = _common.status_bytes("VmHWM") // 1024 if ok else _common.status_bytes("VmRSS") // 1024
        del out
        gc.collect()
        print(json.dumps({"seconds": secs, "peak_mib": max(0, peak - rss0) / 1024,
                          "size": os.path.getsize(path)}), flush=True)


# --------------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------------

class Worker(_common.LineWorker):
    def __init__(self, contender: str, dtype: str, small: bool):
        super().__init__([sys.executable, __file__, "--worker", contender, dtype]
                         + (["--small"] if small else []))
        self.ask_line()

    def run(self, cmd: str, path: str) -> dict:
        return self.ask(f"{cmd} {path}")


def bench_workload(dtype: str, small: bool, runs: int, work: Path, progress) -> dict:
    paths = {c: str(work / f"{dtype}-{SHARES_FILE.get(c, c)}.bin") for c in CONTENDERS}
    workers = {c: Worker(c, dtype, small) for c in CONTENDERS}
    res = {c: {"save": [], "load": [], "save_peak": [], "load_peak": [], "size": 0,
               "tensors": len(gpt2_shapes(small))} for c in CONTENDERS}
    try:
        for r in range(runs + 1):  # round 0 is the warm-up
            for c in CONTENDERS:
                if c not in SHARES_FILE:
                    s = workers[c].run("save", paths[c])
                    if r:
                        res[c]["save"].append(s["seconds"])
                        res[c]["save_peak"].append(s["peak_mib"])
                    progress()
                ld = workers[c].run("load", paths[c])
                res[c]["size"] = ld["size"]
                if r:
                    res[c]["load"].append(ld["seconds"])
                    res[c]["load_peak"].append(ld["peak_mib"])
                progress()
    finally:
        for w in workers.values():
            w.close()
        for p in set(paths.values()):
            if os.path.exists(p):
                os.unlink(p)
    return res


def _machine() -> dict:
    info = _common.machine_info(["torch", "safetensors", "torch_safetensors"])
    info.update(info.pop("versions"))
    return info


def _fmt(xs: list) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def _ratio(a: list, b: list) -> str:
    if not a or not b or statistics.median(b) == 0:
        return "-"
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


def render(results: dict, machine: dict, command: str, runs: int, small: bool) -> str:
    out = [BEGIN, "## Python: save and load, GPT-2-small shapes", ""]
    out.append(f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: "
               f"{machine['cpu']}, {machine['cores']} cores, {machine['mem_gib']:.0f} GiB RAM, "
               f"Linux {machine['kernel']}")
    out.append(f"- Versions: Python {machine['python']}, torch {machine['torch']}, safetensors "
               f"(reference) {machine['safetensors']}, torch_safetensors "
               f"{machine['torch_safetensors']}")
    out.append(f"- Command: `{command}`")
    n_tensors = next(iter(next(iter(results.values())).values()))["tensors"]
    out.append(f"- Workload: {'a small 2-layer model (--quick)' if small else 'GPT-2 small'} "
               f"state_dict, {n_tensors} tensors, warm page cache, every byte touched after each "
               f"load; {runs} alternating runs after one warm-up round; median (min-max) seconds; "
               "peak MiB = peak RSS growth in the contender's own process (touched pages of a "
               "mapped file count as RSS). Ratio = contender / ours-hook (above 1: we are "
               "faster).")
    out.append("")
    for dtype, res in results.items():
        ours = res["ours-hook"]
        size = ours["size"]
        out.append(f"### {dtype} ({size / 2**20:,.0f} MiB file)")
        out.append("")
        out.append("| contender | save s | load+touch s | save ratio | load ratio | save peak MiB "
                   "| load peak MiB | file MiB |")
        out.append("|---|---|---|---|---|---|---|---|")
        for c, r in res.items():
            sp = f"{statistics.median(r['save_peak']):,.0f}" if r["save_peak"] else "-"
            lp = f"{statistics.median(r['load_peak']):,.0f}" if r["load_peak"] else "-"
            save_src = r["save"] if c not in SHARES_FILE else []
            out.append(f"| {c} | {_fmt(save_src)} | {_fmt(r['load'])} | "
                       f"{_ratio(save_src, ours['save'])} | {_ratio(r['load'], ours['load'])} | "
                       f"{sp} | {lp} | {r['size'] / 2**20:,.1f} |")
        out.append("")
    out.append(f"![save/load times]({PLOT.relative_to(HERE).as_posix()})")
    out.append("")
    out.append("ours-owned and pickle-mmap load the files written by ours-hook and pickle. "
               "raw-io is the physical limit of this machine for the same bytes (one "
               "sequential write; one read into preallocated memory), not a contender. "
               "ours-* saves are durable (temporary file, fsync, rename, directory fsync), which "
               "the reference, pickle and raw-io do not do; where the disk is slow the fsync "
               "is most of our save time.")
    out.append(END)
    return "\n".join(out)


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    if BEGIN in text and END in text:
        pre = text[:text.index(BEGIN)]
        post = text[text.index(END) + len(END):]
        text = pre + section + post
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (dtype, res) in zip(axes[0], results.items()):
        names = list(res)
        x = range(len(names))
        save = [statistics.median(res[c]["save"]) if res[c]["save"] and c not in SHARES_FILE
                else 0 for c in names]
        load = [statistics.median(res[c]["load"]) for c in names]
        ax.bar([i - 0.2 for i in x], save, 0.4, label="save")
        ax.bar([i + 0.2 for i in x], load, 0.4, label="load + touch")
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel("seconds (median)")
        ax.set_title(f"GPT-2 small, {dtype}")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 2 runs, no files written")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per contender (5)")
    ap.add_argument("--write", action="store_true", help="write RESULTS.md/plot even if --quick")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--dtypes", default=None,
                    help="comma-separated (default float32,bfloat16; --quick: float32)")
    ap.add_argument("--worker", nargs=2, metavar=("CONTENDER", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--small", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.small)
        return 0

    runs = args.runs or (2 if args.quick else 5)
    small = args.quick
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="st-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = args.dtypes or ("float32" if args.quick else "float32,bfloat16")
    dtypes = [d.strip() for d in spec.split(",") if d.strip()]
    steps_per_round = len(CONTENDERS) * 2 - len(SHARES_FILE)
    total = len(dtypes) * (runs + 1) * steps_per_round
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="benchmark", unit="op")
        progress = lambda: bar.update(1)  # noqa: E731
    except ImportError:
        bar = None
        progress = lambda: None  # noqa: E731
    results = {}
    try:
        for d in dtypes:
            if bar is not None:
                bar.set_description(f"benchmark {d}")
            results[d] = bench_workload(d, small, runs, work, progress)
    finally:
        if bar is not None:
            bar.close()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    command = "python " + " ".join([os.path.relpath(__file__, HERE.parent)] + sys.argv[1:])
    section = render(results, _machine(), command, runs, small)
    print(section)
    if not args.quick or args.write:
        write_results(section)
        plot(results, PLOT)
        print(f"\nwrote {RESULTS} and {PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
