#!/usr/bin/env python3
"""Parallel loading (issue 11, parts 1 and 3): tensor-parallel and pipeline-stage loads through
torch_safetensors.parallel, and cooperative loading through a gloo process group.

Workloads (shared/BENCHMARKS.md's method: one warm-up round, then alternating rounds
A B C ... A B C ..., median and min-max spread, every measurement in a fresh process, every
result touched after loading):

  tp      GPT-2-small-shaped fp32 state dict (bench_cpu.py's shapes and file writer: the
          reference writes it), world 8 simulated by rank (round k measures rank k mod 8):
          full = load_parallel with an all-"whole" plan (owned tensors, the baseline);
          row = every tensor's dimension 0 split in 8 (Shard(0, uneven="split"));
          col = every tensor's last dimension split in 8 (Shard(-1): one run per row, rows of
          3-12 KiB, so every page of the file holds bytes of every rank), mmap and pread
          backends; stage = the whole tensors of pipeline stage 1 of 8 (layers 2-3 of 12: the
          embeddings go to stage 0, ln_f to stage 7); reference-col = safetensors'
          safe_open(...).get_slice(n)[..., a:b] (a lazy view of its mapping) + touch;
          reference-col-owned = the same made contiguous (an owned result, like ours) + touch;
          col-into = col into tensors allocated and zero-filled before the clock starts (a
          model's tensor-parallel parameters: load_parallel(..., into=params)).
          Page cache warm. Bytes: ParallelLoad.bytes_read (the engine's count) of every rank.
  coop    Cooperative loading: W ranks (W = 2 and 4, real processes, gloo on the CPU) each load
          every tensor of the same file whole: independently (each rank reads every byte) and
          cooperatively (load_parallel(..., group=WORLD): each reads 1/W and the ranks
          broadcast), with the page cache warm ("warm", mmap backend), with the file's pages
          dropped before each round ("cold": posix_fadvise(POSIX_FADV_DONTNEED) on the file,
          after a barrier; mmap backend), and with O_DIRECT reads that bypass the page cache
          ("direct": pread backend, load_parallel(direct=True); each independent rank then
          reads the whole file from the device). Time = barrier to barrier, rank 0's clock.

Usage:
  .venv/bin/python benchmarks/bench_parallel.py [--rounds N] [--workloads tp,coop] [--no-write]
  .venv/bin/python benchmarks/bench_parallel.py --quick     # smoke run: tiny sizes, writes nothing
Writes the "parallel" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_cpu as B  # noqa: E402  (the GPT-2 shapes, touch, warm_cache)

SECTION = "parallel"
PACKAGES = ["torch", "safetensors", "torch_safetensors"]
WORLD = 8
TP_CONTENDERS = ["full", "row", "col", "col-pread", "col-into", "stage", "reference-col",
                 "reference-col-owned"]
STAGE = 1


# =============================================================================================
# Children
# =============================================================================================

def make_file(path: str, quick: bool) -> dict:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {n: torch.randn(s, generator=g) for n, s in B.gpt2_shapes(quick)}
    save_file(sd, path)
    return {"bytes": sum(t.numel() * 4 for t in sd.values()), "tensors": len(sd)}


def _plan(kind: str, rank: int):
    from torch_safetensors.parallel import PipelineStage, Shard, ShardPlan

    if kind == "full":
        return ShardPlan()
    if kind == "row":
        return ShardPlan([("*", Shard(0, uneven="split"))], rank=rank, world_size=WORLD)
    if kind in ("col", "col-pread", "col-into"):
        return ShardPlan([("*", Shard(-1))], rank=rank, world_size=WORLD)
    if kind == "stage":
        return ShardPlan(select=[PipelineStage(
            STAGE, WORLD, first=["transformer.wte.*", "transformer.wpe.*"],
            last=["transformer.ln_f.*"])])
    raise ValueError(kind)


def col_params(path: str) -> dict:
    """Zero-filled (touched) fp32 tensors of one rank's column shard: a model's allocated
    tensor-parallel parameters, for col-into."""
    import torch
    from torch_safetensors.torch import safe_open

    with safe_open(path, framework="pt") as f:
        shapes = {n: f.get_slice(n).get_shape() for n in f.keys()}
    return {n: torch.zeros(s[:-1] + [s[-1] // WORLD]) for n, s in shapes.items()}


def tp_run(c: str, path: str, rank: int, into=None):
    if c.startswith("reference"):
        from safetensors import safe_open

        out = {}
        with safe_open(path, framework="pt") as f:
            for n in f.keys():
                sl = f.get_slice(n)
                shape = sl.get_shape()
                per = shape[-1] // WORLD
                t = sl[(slice(None),) * (len(shape) - 1) + (slice(rank * per, (rank + 1) * per),)]
                out[n] = t.contiguous() if c.endswith("-owned") else t
        return out, None
    from torch_safetensors.parallel import load_parallel

    r = load_parallel(path, _plan(c, rank), backend="pread" if c.endswith("-pread") else "mmap",
                      into=into)
    return r.tensors, r


def child_tp(job: dict) -> dict:
    c, path, rank = job["c"], job["path"], job["rank"]
    into = col_params(path) if c == "col-into" else None
    d, _ = tp_run(c, path, (rank + 1) % WORLD, into)  # imports and first calls, untimed
    B.touch(d)
    del d
    gc.collect()
    rss0 = C.reset_peak()
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    d, r = tp_run(c, path, rank, into)
    t1 = time.perf_counter()
    check = B.touch(d)
    t2 = time.perf_counter()
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    peak = C.status_bytes("VmHWM") - rss0
    return {"load": t1 - t0, "touch": t2 - t1, "total": t2 - t0, "peak": peak,
            "cpu": (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime),
            "sys": u1.ru_stime - u0.ru_stime, "minflt": u1.ru_minflt - u0.ru_minflt,
            "bytes": sum(t.numel() * t.element_size() for t in d.values()),
            "read": r.bytes_read if r is not None else None, "check": check, "rank": rank}


def child_bytes(job: dict) -> dict:
    """The engine's byte count of every rank, per plan."""
    from torch_safetensors.parallel import load_parallel

    out = {}
    for kind in ("row", "col", "stage"):
        ranks = range(WORLD) if kind != "stage" else [STAGE]
        out[kind] = [load_parallel(job["path"], _plan(kind, r)).bytes_read for r in ranks]
    return out


def _fadvise_dontneed(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child_coop(job: dict) -> dict:
    """One rank of the cooperative benchmark (run by W processes)."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch_safetensors.parallel import ShardPlan, load_parallel

    rank, world = job["rank"], job["world"]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{job['port']}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=300))
    res: Dict[str, List[float]] = {}
    try:
        plan = ShardPlan()
        modes = ["independent", "cooperative"]
        for rnd in range(job["rounds"] + 1):
            for cache in job["caches"]:
                for m in modes:
                    dist.barrier()
                    if cache == "cold" and rank == 0:
                        _fadvise_dontneed(job["path"])
                    dist.barrier()
                    t0 = time.perf_counter()
                    direct = cache == "direct"
                    out = load_parallel(job["path"], plan,
                                        group=dist.group.WORLD if m == "cooperative" else None,
                                        backend="pread" if direct else "mmap", direct=direct)
                    B.touch(out.tensors)
                    dist.barrier()
                    dt = time.perf_counter() - t0
                    nread = out.bytes_read
                    del out
                    gc.collect()
                    if rnd > 0:
                        res.setdefault(f"{m}-{cache}", []).append(dt)
                        res.setdefault(f"{m}-{cache}-read", []).append(nread)
    finally:
        dist.destroy_process_group()
    return res


def child_main(job: dict) -> dict:
    op = job["op"]
    if op == "file":
        return make_file(job["path"], job["quick"])
    if op == "tp":
        return child_tp(job)
    if op == "bytes":
        return child_bytes(job)
    if op == "coop":
        return child_coop(job)
    raise ValueError(op)


# =============================================================================================
# Parent
# =============================================================================================

def child(job: dict) -> dict:
    return C.run_child([sys.executable, __file__, "--child", json.dumps(job)])


def run_tp(path: str, rounds: int, progress) -> Dict[str, List[dict]]:
    counter = {"n": 0}

    def measure(c: str) -> dict:
        rank = (counter["n"] // len(TP_CONTENDERS)) % WORLD
        counter["n"] += 1
        B.warm_cache([path])
        return child({"op": "tp", "c": c, "path": path, "rank": rank})

    return C.alternate(TP_CONTENDERS, rounds, True, measure, progress)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_coop(path: str, world: int, rounds: int, caches: List[str]) -> dict:
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", json.dumps(
        {"op": "coop", "rank": r, "world": world, "port": port, "path": path,
         "rounds": rounds, "caches": caches})], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for r in range(world)]
    outs = []
    for p in procs:
        o, e = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"coop rank failed:\n{e[-3000:]}")
        outs.append(json.loads([ln for ln in o.splitlines() if ln.startswith("{")][-1]))
    return {"rank0": outs[0], "reads": [o for o in outs]}


def compute_targets(tp: Dict[str, List[dict]], nbytes: dict, file_bytes: int) -> list:
    T = []
    m = lambda c, k="total": C.med(tp.get(c, []), k)  # noqa: E731
    full = m("full")
    for c in ("row", "stage"):
        if m(c) and full:
            q = m(c) / full
            T.append((f"{c}: time <= 1/6 of a full load", f"{c} / full (load + touch)",
                      f"{q:.3f}", f"{1 / 6:.3f}", q <= 1 / 6))
        if m(c, "cpu") and m("full", "cpu"):
            T.append((f"(context) {c}: CPU time vs a full load",
                      f"{c} / full (user + sys of the load + touch)",
                      f"{m(c, 'cpu') / m('full', 'cpu'):.3f}", "-", None))
    for c in ("col", "col-pread", "col-into"):
        if m(c) and full:
            T.append((f"(context) {c}: time vs a full load", f"{c} / full (load + touch)",
                      f"{m(c) / full:.3f}", "-", None))
        for ref in ("reference-col-owned", "reference-col"):
            if m(c) and m(ref):
                q = m(ref) / m(c)
                T.append((f"{c}: ahead of the reference's get_slice + touch"
                          + (" (both owned)" if ref.endswith("owned") else
                             " (context: the reference's lazy view)"),
                          f"{ref} / {c} (load + touch)", f"{q:.2f}x", "> 1x",
                          (q > 1) if ref.endswith("owned") and c != "col-into" else None))
    for kind in ("row", "col", "stage"):
        vals = nbytes.get(kind) or []
        if vals:
            q = max(vals) / file_bytes
            goal = 1 / 8 + 0.01 if kind != "stage" else 1 / 6
            T.append((f"{kind}: bytes read per rank <= {'1/8 + 1%' if kind != 'stage' else '1/6'}"
                      f" of the file's tensor bytes",
                      f"max over {'ranks 0-7' if kind != 'stage' else f'stage {STAGE}'}: "
                      f"engine count / {file_bytes:,}", f"{q:.4f}", f"{goal:.4f}", q <= goal))
    return T


def render(info: dict, args, tp, nbytes, file_bytes, coop, targets) -> str:
    L = ["## Parallel loading: tensor-parallel ranks, pipeline stages, cooperative reads", "",
         C.machine_line(info), "", f"Command: `{C.command_line()}`", ""]
    if tp:
        L += ["### Targets (issue 11, world 8 simulated by rank)", "",
              "| target | measured as | value | goal | verdict |", "|---|---|---|---|---|"]
        for what, how, val, goal, ok in targets:
            v = "-" if ok is None else ("**met**" if ok else "**missed**")
            L.append(f"| {what} | {how} | {val} | {goal} | {v} |")
        full = C.med(tp.get("full", []), "total")
        L += ["", f"### Tensor-parallel and pipeline loads, GPT-2-small fp32 "
                  f"({file_bytes / 1e6:.0f} MB of tensors), page cache warm", "",
              "| contender | load + touch, median [min-max] s | vs full | load s | touch s | "
              "CPU s (user + sys) | sys s | minor faults | bytes returned | engine bytes read | "
              "peak RSS MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in TP_CONTENDERS:
            runs = tp.get(c, [])
            err = C.error_of(runs)
            if err:
                L.append(f"| {c} | error: {err} | | | | | | | | | |")
                continue
            t = C.med(runs, "total")
            rd = C.med(runs, "read")
            rd_s = "-" if rd is None else f"{int(rd):,}"
            L.append(f"| {c} | {C.fmt_s(t)} [{C.spread(runs, 'total')}] | "
                     f"{C.fmt_s(C.ratio(t, full))} | {C.fmt_s(C.med(runs, 'load'))} | "
                     f"{C.fmt_s(C.med(runs, 'touch'))} | {C.fmt_s(C.med(runs, 'cpu'))} | "
                     f"{C.fmt_s(C.med(runs, 'sys'))} | {int(C.med(runs, 'minflt') or 0):,} | "
                     f"{int(C.med(runs, 'bytes') or 0):,} | "
                     f"{rd_s} | {C.fmt_mib(C.med(runs, 'peak'))} |")
        L += ["", "Engine bytes read by rank (ranks 0-7): " + "; ".join(
            f"{k}: {', '.join(f'{v:,}' for v in vals)}" for k, vals in nbytes.items()) + "."]
    if coop:
        L += ["", "### Cooperative loading (every rank loads every tensor whole), gloo on the "
                  "CPU", "",
              "| world | cache | independent, median [min-max] s | cooperative, median "
              "[min-max] s | cooperative / independent | rank 0 bytes read (ind. / coop.) |",
              "|---|---|---|---|---|---|"]
        for world, res in coop.items():
            r0 = res["rank0"]
            for cache in args.caches:
                ind, co = r0.get(f"independent-{cache}", []), r0.get(f"cooperative-{cache}", [])
                ri = r0.get(f"independent-{cache}-read", [0])[0]
                rc = r0.get(f"cooperative-{cache}-read", [0])[0]
                mi = C.med([{"t": x} for x in ind], "t")
                mc = C.med([{"t": x} for x in co], "t")
                L.append(f"| {world} | {cache} | {C.fmt_s(mi)} "
                         f"[{C.spread([{'t': x} for x in ind], 't')}] | {C.fmt_s(mc)} "
                         f"[{C.spread([{'t': x} for x in co], 't')}] | "
                         f"{C.fmt_s(C.ratio(mc, mi))} | {ri:,} / {rc:,} |")
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, writes nothing")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--workloads", default="tp,coop")
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--caches", default="warm,cold,direct")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))))
        C.exit_rank(0)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.caches = [c for c in args.caches.split(",") if c]
    workloads = [w for w in args.workloads.split(",") if w]
    info = C.machine_info(PACKAGES)
    work = Path(tempfile.mkdtemp(prefix="st-bench-par-", dir=os.environ.get("TMPDIR", "/tmp")))
    path = str(work / "gpt2.safetensors")
    t_start = time.perf_counter()
    tp: Dict[str, List[dict]] = {}
    nbytes: dict = {}
    coop: dict = {}
    progress = (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        meta = child({"op": "file", "path": path, "quick": args.quick})
        file_bytes = meta["bytes"]
        if "tp" in workloads:
            tp = run_tp(path, args.rounds, progress)
            nbytes = child({"op": "bytes", "path": path})
        if "coop" in workloads:
            for w in [int(x) for x in args.worlds.split(",") if x]:
                progress(f"coop world {w}")
                coop[w] = run_coop(path, w, args.rounds, args.caches)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    targets = compute_targets(tp, nbytes, file_bytes) if tp else []
    body = render(info, args, tp, nbytes, file_bytes, coop, targets)
    body += f"\n\nThe run took {time.perf_counter() - t_start:.0f} s."
    print(body)
    if args.json:
        args.json.write_text(json.dumps({"info": info, "tp": tp, "bytes": nbytes,
                                         "coop": coop}, indent=1))
    if not args.quick and not args.no_write:
        C.write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
