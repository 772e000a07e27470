#!/usr/bin/env python3
"""The DCP benchmark of issue 11: torch.distributed.checkpoint save and load, world size 2.

Two real processes (gloo on localhost, CPU, env:// rendezvous) hold a state dict of DTensors on
a 1-D mesh of the 2 ranks and run `torch.distributed.checkpoint.save` / `load` through each
contender's StorageWriter / StorageReader, side by side in one run:

  ours          `torch_safetensors.distributed.SafetensorsStorageWriter(path)` /
                `SafetensorsStorageReader(path)` (included when importable)
  hf            torch's `HuggingFaceStorageWriter(path, save_distributed=True)` (per-rank files,
                what DCP needs for DTensors without consolidation) / `HuggingFaceStorageReader`
  hf-consolidated  the same writer with `enable_consolidation=True` (rank 0 merges the per-rank
                files into full tensors in `path` during `finish`), followed by an fsync of every
                file it wrote (torch's consolidation does not fsync); read back with
                `HuggingFaceStorageReader(path)`
  fs            DCP's default `FileSystemWriter(path)` (sync_files=True) / `FileSystemReader`

Workloads: a GPT-2-small-shaped fp32 state dict (124 M params, ~500 MB) and a GPT-2-medium-shaped
one (355 M params, ~1.4 GB); placements "fsdp" (every tensor Shard(0)) and "tp" (2-D weights
Shard(1), 1-D Shard(0)).

Method (shared/BENCHMARKS.md): one pair of rank processes per workload; every contender first
saves once and loads that checkpoint back into a zeroed destination, which must equal what was
saved (untimed; a wrong contender is excluded from the ratios); then one warm-up round and N
rounds alternating the contenders (A B C ... A B C ...) for the saves, then 3N (--load-rounds;
loads are cheap and their spread is wider) for the loads. Every save goes
to a fresh directory, removed after the round; every load reads the contender's own checkpoint,
read once from the page cache before each round (warm cache), into the same pre-allocated (and
already faulted-in) destination DTensors. A barrier precedes each measurement; a round's time is
the slower rank's; peak = VmHWM growth of a rank during the operation (reset through
/proc/self/clear_refs), the larger of the two.

Usage:
  .venv/bin/python benchmarks/bench_dcp.py [--rounds N] [--load-rounds M]
                                           [--workloads gpt2-fsdp,big-fsdp,big-tp]
                                           [--contenders ours,hf,hf-consolidated,fs]
                                           [--workdir DIR] [--no-write]
  .venv/bin/python benchmarks/bench_dcp.py --quick   # smoke run (< 1 min): tiny, writes nothing
  .venv/bin/python benchmarks/bench_dcp.py --render benchmarks/out/bench-dcp.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = C.ROOT
SECTION = "dcp"
WORLD = 2
PACKAGES = ["torch", "safetensors", "torch_safetensors"]
CONTENDERS = ["ours", "hf", "hf-consolidated", "fs", "limit", "limit-pread"]
LOAD_ONLY = {"limit-pread"}
# (ours vs this contender, minimum speed-up) per operation: issue 11's targets
TARGETS = [("hf", 3.0), ("hf-consolidated", 3.0), ("fs", 1.5)]
SIZES = {  # gpt2_shapes(n_layer, n_embd, vocab, n_pos)
    "gpt2": ((12, 768, 50257, 1024), "GPT-2-small-shaped fp32 (124 M params)"),
    "big": ((24, 1024, 50257, 1024), "GPT-2-medium-shaped fp32 (355 M params)"),
}
QUICK_SIZES = {"gpt2": (4, 64, 1000, 128), "big": (4, 128, 2000, 256)}
PLACEMENTS = {"fsdp": "every tensor Shard(0) (FSDP2-style)",
              "tp": "2-D weights Shard(1), 1-D tensors Shard(0) (TP-style)"}
DEFAULT_WORKLOADS = "gpt2-fsdp,big-fsdp,big-tp"
QUICK_WORKLOADS = "gpt2-fsdp,big-tp"

DESCRIBE = {
    "ours": "`torch_safetensors.distributed.SafetensorsStorageWriter(path)` / "
            "`SafetensorsStorageReader(path)`",
    "hf": "`HuggingFaceStorageWriter(path, save_distributed=True)` (one safetensors file per "
          "rank, data fsynced through FileSystemWriter's sync_files=True, no index) / "
          "`HuggingFaceStorageReader(path)`; thread_count 1 (the default)",
    "hf-consolidated": "`HuggingFaceStorageWriter(path, save_distributed=True, "
                       "enable_consolidation=True, thread_count_consolidation=2)`: per-rank "
                       "files in path/sharded, then rank 0 writes full tensors + "
                       "`model.safetensors.index.json` into path; timed with an fsync of every "
                       "file under path afterwards (the consolidation does not fsync) / "
                       "`HuggingFaceStorageReader(path)` of the consolidated files",
    "fs": "`FileSystemWriter(path)` (sync_files=True, thread_count=1, the defaults: one file "
          "per rank + pickled .metadata) / `FileSystemReader(path)`",
    "limit": "the physical limits, measured in the same rounds (no DCP, no checkpoint): save = "
             "each rank writes its local shard bytes to one file with `os.write` and fsyncs it "
             "(and the directory); load = each rank `copy_`s its local shards from resident "
             "tensors into the destination (memory bandwidth, what any reader must at least "
             "pay)",
    "limit-pread": "load only: each rank reads its local shard bytes from one raw file of its "
                   "own (written once, warm in the page cache) with `os.preadv` straight into "
                   "the destination tensors, one thread: the page-cache read limit of a warm "
                   "load",
}


# =============================================================================================
# Rank side
# =============================================================================================

def _log(msg: str) -> None:
    print(f"[dcp {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def have_ours() -> Optional[str]:
    """None when ours is importable, else why not."""
    try:
        from torch_safetensors.distributed import (  # noqa: F401
            SafetensorsStorageReader, SafetensorsStorageWriter)
        return None
    except Exception as e:  # noqa: BLE001 - reported as the contender's absence
        return f"{type(e).__name__}: {e}"


def _instrument(obj, names, phases: Dict[str, float]):
    """Times the storage layer's own methods (wrapping the instance's bound methods; DCP calls
    them through the instance), so the rest of a save/load is DCP's planning and collectives."""
    for n in names:
        f = getattr(obj, n, None)
        if f is None:
            continue

        def w(*a, __f=f, __n=n, **k):
            t0 = time.perf_counter()
            try:
                return __f(*a, **k)
            finally:
                phases[__n] = phases.get(__n, 0.0) + time.perf_counter() - t0
        setattr(obj, n, w)
    return obj


WRITER_PHASES = ["set_up_storage_writer", "prepare_local_plan", "prepare_global_plan",
                 "write_data", "finish"]
READER_PHASES = ["read_metadata", "set_up_storage_reader", "prepare_local_plan",
                 "prepare_global_plan", "read_data"]


def _ours_options(c: str) -> Dict[str, str]:
    """Diagnostic variants of ours: "ours:backend=pread,rthreads=1,wthreads=1"."""
    return dict(kv.split("=", 1) for kv in c.split(":", 1)[1].split(",")) if ":" in c else {}


def make_writer(c: str, path: str):
    from torch.distributed.checkpoint import FileSystemWriter

    if c.startswith("ours"):
        from torch_safetensors.distributed import SafetensorsStorageWriter

        o = _ours_options(c)
        kw = {"threads": int(o["wthreads"])} if "wthreads" in o else {}
        return SafetensorsStorageWriter(path, **kw)
    if c == "hf":
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        return HuggingFaceStorageWriter(path, save_distributed=True)
    if c == "hf-consolidated":
        from torch.distributed.checkpoint import HuggingFaceStorageWriter

        return HuggingFaceStorageWriter(path, save_distributed=True, enable_consolidation=True,
                                        thread_count_consolidation=2)
    if c == "fs":
        return FileSystemWriter(path)
    raise ValueError(c)


def make_reader(c: str, path: str):
    from torch.distributed.checkpoint import FileSystemReader

    if c.startswith("ours"):
        from torch_safetensors.distributed import SafetensorsStorageReader

        o = _ours_options(c)
        kw = {"threads": int(o["rthreads"])} if "rthreads" in o else {}
        if "backend" in o:
            kw["backend"] = o["backend"]
        return SafetensorsStorageReader(path, **kw)
    if c in ("hf", "hf-consolidated"):
        from torch.distributed.checkpoint import HuggingFaceStorageReader

        return HuggingFaceStorageReader(path)
    if c == "fs":
        return FileSystemReader(path)
    raise ValueError(c)


def _fsync_tree(path: str) -> int:
    """fsync every regular file under path and every directory (what makes hf-consolidated's
    output durable like the others'); returns the file count."""
    n = 0
    for d, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            n += 1
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return n


def _read_tree(path: str, top_only: bool = False) -> int:
    """Reads every file under path (or only those directly in it) once (warm page cache)."""
    n = 0
    for d, _, files in os.walk(path):
        if top_only and d != path:
            continue
        for f in files:
            with open(os.path.join(d, f), "rb", buffering=0) as fh:
                while True:
                    b = fh.read(16 << 20)
                    if not b:
                        break
                    n += len(b)
    return n


_SYSCALLS = ("fsync", "fdatasync", "pwritev", "pwrite", "write", "preadv", "pread", "ftruncate")


class SyscallCounter:
    """Wraps os.fsync, os.pwritev, ... (the calls a Python storage layer makes through the os
    module) with counters of calls, bytes and seconds, summed over threads. Installed only for
    the profile pass, never during the timed rounds."""

    def __init__(self):
        import threading

        self.stats: Dict[str, list] = {}
        self.orig: Dict[str, object] = {}
        self.lock = threading.Lock()

    def __enter__(self):
        self.stats = {}
        for name in _SYSCALLS:
            f = getattr(os, name, None)
            if f is None:
                continue
            self.orig[name] = f

            def w(*a, __f=f, __n=name, **k):
                t0 = time.perf_counter()
                r = __f(*a, **k)
                dt = time.perf_counter() - t0
                nb = r if isinstance(r, int) and __n.startswith(("pw", "wr", "pr")) else 0
                with self.lock:  # the writers' threads call these concurrently
                    st = self.stats.setdefault(__n, [0, 0, 0.0])
                    st[0] += 1
                    st[1] += nb
                    st[2] += dt
                return r
            setattr(os, name, w)
        return self

    def __exit__(self, *exc):
        for name, f in self.orig.items():
            setattr(os, name, f)
        self.orig = {}
        return False


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


class Rank:
    def __init__(self, job: dict):
        import torch
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        self.job = job
        self.rank = int(os.environ["RANK"])
        import datetime

        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=job["pg_timeout"]))
        self.dist = dist
        self.mesh = init_device_mesh("cpu", (WORLD,))
        self.work = Path(job["work"])
        self.sd = self.make_state(fill=True)
        self.dest = self.make_state(fill=False)
        self.local_bytes = sum(t.to_local().numel() * t.to_local().element_size()
                               for t in self.sd.values())
        self.total_bytes = sum(t.numel() * t.element_size() for t in self.sd.values())
        self.ckpt: Dict[str, str] = {}
        self.counter = 0
        torch.manual_seed(0)

    def make_state(self, fill: bool):
        import torch
        from torch.distributed.tensor import Shard, zeros

        shapes = C.gpt2_shapes(*self.job["dims"])
        out = {}
        for i, (name, shape) in enumerate(shapes):
            pl = [Shard(1)] if (self.job["placement"] == "tp" and len(shape) == 2) else [Shard(0)]
            dt = zeros(shape, dtype=torch.float32, device_mesh=self.mesh, placements=pl)
            if fill:
                g = torch.Generator().manual_seed(1000 * i + self.rank)
                dt.to_local().normal_(generator=g)
            out[name] = dt
        return out

    def barrier(self):
        self.dist.barrier()

    def gather(self, obj):
        out = [None] * WORLD
        self.dist.all_gather_object(out, obj)
        return out

    def fresh_dir(self, c: str) -> str:
        self.counter += 1
        p = self.work / f"{c}-{self.counter}"
        if self.rank == 0:
            if p.exists():
                shutil.rmtree(p)
            p.mkdir(parents=True)
        self.barrier()
        return str(p)

    def remove(self, path: str):
        self.barrier()
        if self.rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        self.barrier()

    # --- the operations ----------------------------------------------------------------------

    def save(self, c: str, path: str, phases: Dict[str, float]):
        import torch.distributed.checkpoint as dcp

        if c == "limit":
            self.raw_write(os.path.join(path, f"rank{self.rank}.bin"))
            return
        w = _instrument(make_writer(c, path), WRITER_PHASES, phases)
        dcp.save(self.sd, storage_writer=w)
        if c == "hf-consolidated":
            t0 = time.perf_counter()
            if self.rank == 0:
                _fsync_tree(path)
            phases["fsync-after"] = time.perf_counter() - t0
            self.barrier()

    def raw_write(self, path: str) -> None:
        import torch

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            for t in self.sd.values():
                mv = memoryview(t.to_local().reshape(-1).view(torch.uint8).numpy())
                while len(mv):
                    mv = mv[os.write(fd, mv):]
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def raw_read(self, path: str) -> None:
        import torch

        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            off = 0
            for t in self.dest.values():
                mv = memoryview(t.to_local().reshape(-1).view(torch.uint8).numpy())
                while len(mv):
                    n = os.preadv(fd, [mv], off)
                    if n <= 0:
                        raise RuntimeError(f"short read of {path}")
                    off += n
                    mv = mv[n:]
        finally:
            os.close(fd)

    def load(self, c: str, path: str, phases: Dict[str, float]):
        import torch.distributed.checkpoint as dcp

        if c == "limit":
            for k, t in self.sd.items():
                self.dest[k].to_local().copy_(t.to_local())
            return
        if c == "limit-pread":
            self.raw_read(os.path.join(path, f"rank{self.rank}.bin"))
            return
        r = _instrument(make_reader(c, path), READER_PHASES, phases)
        dcp.load(self.dest, storage_reader=r)

    def timed(self, op: str, c: str, path: str, syscalls: bool = False) -> dict:
        """One measurement: barrier, the operation, the slower rank's time and the larger peak.
        An error on either rank is raised on both (so that neither waits for the other)."""
        gc.collect()
        rss0 = C.reset_peak()
        phases: Dict[str, float] = {}
        self.barrier()
        err = None
        counter = SyscallCounter()
        t0 = time.perf_counter()
        try:
            if syscalls:
                with counter:
                    (self.save if op == "save" else self.load)(c, path, phases)
            else:
                (self.save if op == "save" else self.load)(c, path, phases)
        except Exception as e:  # noqa: BLE001 - a contender failing is a result
            err = f"rank {self.rank}: {type(e).__name__}: " + \
                  (str(e).strip().splitlines() or [""])[-1][:300]
        t = time.perf_counter() - t0
        peak = C.status_bytes("VmHWM") - rss0
        if syscalls:
            phases["_sys"] = counter.stats
        got = self.gather({"t": t, "peak": peak, "phases": phases, "err": err})
        errs = [g["err"] for g in got if g["err"]]
        if errs:
            raise RuntimeError("; ".join(errs))
        return {"time": max(g["t"] for g in got), "t_rank": [g["t"] for g in got],
                "peak": max(g["peak"] for g in got), "peak_rank": [g["peak"] for g in got],
                "phases": [g["phases"] for g in got]}

    # --- correctness ---------------------------------------------------------------------------

    def verify(self, c: str) -> dict:
        """Saves once into the contender's load checkpoint, loads it into a zeroed destination and
        compares every local shard with what was saved (both ranks)."""
        import torch

        path = self.fresh_dir(c + "-ckpt")
        err = None
        ok = False
        try:
            ph: Dict[str, float] = {}
            self.save(c, path, ph)
            for t in self.dest.values():
                t.to_local().zero_()
            self.load(c, path, ph)
            bad = [k for k, t in self.sd.items()
                   if not torch.equal(t.to_local(), self.dest[k].to_local())]
            ok = not bad
            if bad:
                err = f"rank {self.rank}: {len(bad)} tensors differ after the round trip, e.g. " \
                      f"{bad[0]}"
        except Exception as e:  # noqa: BLE001
            err = f"rank {self.rank}: {type(e).__name__}: " + \
                  (str(e).strip().splitlines() or [""])[-1][:300]
        got = self.gather({"ok": ok, "err": err})
        self.barrier()
        self.ckpt[c] = path
        res = {"ok": all(g["ok"] for g in got), "errors": [g["err"] for g in got if g["err"]]}
        if self.rank == 0:
            res["files"] = sorted(os.path.relpath(os.path.join(d, f), path)
                                  for d, _, fs in os.walk(path) for f in fs)[:12]
            res["ckpt_bytes"] = _tree_bytes(path)
        return res

    def run(self) -> dict:
        contenders = self.job["contenders"]
        out = {"local_bytes": self.gather(self.local_bytes), "total_bytes": self.total_bytes,
               "tensors": len(self.sd), "verify": {}, "save": {}, "load": {}}
        if "limit-pread" in contenders:
            path = self.fresh_dir("limit-pread-ckpt")
            self.raw_write(os.path.join(path, f"rank{self.rank}.bin"))
            self.barrier()
            self.ckpt["limit-pread"] = path
        for c in contenders:
            if c in ("limit", "limit-pread"):
                continue
            if self.rank == 0:
                _log(f"{self.job['workload']}: verify {c}")
            out["verify"][c] = self.verify(c)
        good = [c for c in contenders if c in ("limit", "limit-pread") or out["verify"][c]["ok"]]
        rounds, warmup = self.job["rounds"], self.job["warmup"]

        def progress(s):
            if self.rank == 0:
                _log(f"{self.job['workload']}: {s}")

        def measure_save(c: str) -> dict:
            path = self.fresh_dir(c)
            try:
                return self.timed("save", c, path)
            finally:
                self.remove(path)

        def measure_load(c: str) -> dict:
            if self.rank == 0 and c in self.ckpt:
                _read_tree(self.ckpt[c], top_only=True)
            return self.timed("load", c, self.ckpt.get(c, ""))

        ops = self.job.get("ops", ["save", "load"])
        out["save"] = C.alternate([c for c in good if c not in LOAD_ONLY] if "save" in ops
                                  else [], rounds, warmup, measure_save,
                                  lambda s: progress("save " + s))
        out["load"] = C.alternate(good if "load" in ops else [], self.job["load_rounds"], warmup,
                                  measure_load,
                                  lambda s: progress("load " + s))
        # The profile pass: one more save and load per contender with the os-module syscall
        # counters installed (their overhead stays out of the rounds above).
        out["profile"] = {}
        for c in good if self.job.get("profile", True) else []:
            if c.startswith("limit") or C.error_of(out["save"].get(c, [])):
                continue
            progress(f"profile {c}")
            prof = {}
            try:
                path = self.fresh_dir(c)
                try:
                    prof["save"] = self.timed("save", c, path, syscalls=True)
                finally:
                    self.remove(path)
                if self.rank == 0:
                    _read_tree(self.ckpt[c])
                prof["load"] = self.timed("load", c, self.ckpt[c], syscalls=True)
            except Exception as e:  # noqa: BLE001
                prof["error"] = str(e)[-300:]
            out["profile"][c] = prof
        for c in contenders:
            self.remove(self.ckpt[c]) if c in self.ckpt else None
        return out


def child_main(job: dict) -> None:
    r = Rank(job)
    try:
        out = r.run()
    finally:
        r.dist.destroy_process_group()
    if r.rank == 0:
        print(json.dumps(out))
    C.exit_rank(0)


# =============================================================================================
# Parent side
# =============================================================================================

def ours_revision() -> str:
    """Which code 'ours' ran: the commit, and whether the installed distributed.py is that
    commit's (another session may have installed its working tree)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout
    rev = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    try:
        import importlib.util

        spec = importlib.util.find_spec("torch_safetensors.distributed")
        installed = Path(spec.origin).read_text() if spec and spec.origin else None
    except Exception:  # noqa: BLE001
        installed = None
    if installed is None:
        return f"{rev} (no torch_safetensors.distributed installed)"
    committed = git("show", "HEAD:torch_plugin/torch_safetensors/distributed.py")
    if installed == committed:
        return f"{rev} (installed distributed.py = the commit's)"
    return f"{rev} + uncommitted changes (installed distributed.py differs from the commit's)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workload(job: dict, timeout: float) -> dict:
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", json.dumps(job)],
            stdout=subprocess.PIPE, stderr=None, text=True, env=env))
    outs = []
    deadline = time.time() + timeout
    try:
        for p in procs:
            o, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
            outs.append(o)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise RuntimeError(f"workload {job['workload']} timed out after {timeout:.0f} s")
    codes = [p.returncode for p in procs]
    if any(codes):
        raise RuntimeError(f"workload {job['workload']}: rank exit codes {codes}")
    lines = [ln for ln in outs[0].strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"workload {job['workload']}: rank 0 printed no JSON")
    return json.loads(lines[-1])


# --- rendering -----------------------------------------------------------------------------

def _phase_summary(runs: List[dict], names: List[str]) -> List[str]:
    """Per rank: the median of each storage-layer phase and the rest (DCP's own work)."""
    out = []
    for rank in range(WORLD):
        cells = []
        tot = C.med([{"v": r["t_rank"][rank]} for r in runs], "v")
        known = 0.0
        keys = [n for n in names + ["fsync-after"]
                if any(n in r["phases"][rank] for r in runs)]
        for n in keys:
            v = C.med([{"v": r["phases"][rank].get(n, 0.0)} for r in runs], "v")
            known += v or 0.0
            if v and v >= 0.0005:
                cells.append(f"{n} {v:.3f}")
        cells.append(f"DCP planning/collectives/rest {max(0.0, (tot or 0) - known):.3f}")
        out.append(f"rank {rank}: total {C.fmt_s(tot)} = " + ", ".join(cells))
    return out


def compute_targets(results: dict) -> list:
    rows = []
    for wl, res in results["workloads"].items():
        if "error" in res:
            continue
        for op in ("save", "load"):
            runs = res[op]
            ours = runs.get("ours")
            for other, goal in TARGETS:
                theirs = runs.get(other)
                mo = C.med(ours, "time") if ours and not C.error_of(ours) else None
                mt = C.med(theirs, "time") if theirs and not C.error_of(theirs) else None
                r = C.ratio(mt, mo)
                lim = None
                for name in (("limit-pread", "limit") if op == "load" else ("limit",)):
                    rr = runs.get(name)
                    if rr and not C.error_of(rr):
                        lim = C.med(rr, "time")
                        break
                rows.append({"workload": wl, "op": op, "vs": other, "goal": goal, "ratio": r,
                             "bound": C.ratio(mt, lim),
                             "ok": None if r is None else r >= goal})
    return rows


def render(results: dict) -> str:
    info = results["info"]
    args = results["args"]
    L = ["## DCP save and load, world size 2 (issue 11)", "",
         C.machine_line(info), "", f"Command: `{results['command']}`", "",
         f"Method: two rank processes (gloo, CPU, env:// rendezvous on localhost) per workload, "
         f"each holding its local shards of DTensors on a 1-D CPU mesh of 2 ranks; "
         f"`torch.distributed.checkpoint.save(sd, storage_writer=...)` and "
         f"`load(dest, storage_reader=...)`. Every contender first saves once and loads that "
         f"checkpoint into zeroed DTensors, which must equal what was saved (untimed; a "
         f"contender that fails is excluded). Then {'no' if not args['warmup'] else 'one'} "
         f"warm-up round and {args['rounds']} rounds alternating the contenders for the saves, "
         f"then {args.get('load_rounds', args['rounds'])} for the loads. Each save writes a fresh directory (removed after the round); each load reads "
         f"the contender's own checkpoint from a warm page cache (read once before each round) "
         f"into the same pre-allocated, already faulted-in destination (DCP load materializes: "
         f"every byte lands in the destination tensors). A barrier precedes each measurement; "
         f"time = the slower rank's, median in seconds with the [min-max] spread; peak = the "
         f"larger rank's VmHWM growth during the operation (page-cache pages a rank maps count "
         f"too). Durable like for like: FileSystemWriter fsyncs its files (sync_files=True, the "
         f"default) and HuggingFaceStorageWriter inherits that (its data files are fsynced in "
         f"`_write_files_from_queue`); torch's consolidation step does not fsync, so "
         f"hf-consolidated is timed with an fsync of every file under the directory afterwards. "
         f"Ratio = contender's median / ours' (above 1: ours is faster).", ""]
    if results.get("ours_rev"):
        L += [f"ours: commit {results['ours_rev']}. Ranks run with OMP_NUM_THREADS=1 (torchrun's "
              f"default for several processes per node); ours' own threads are its defaults.",
              ""]
    if results.get("ours_missing"):
        L += [f"**ours was not measured**: `torch_safetensors.distributed` is not importable "
              f"({results['ours_missing']}).", ""]

    targets = compute_targets(results)
    L += ["### Targets (ours at least 3x torch's HF writer/reader, at least 1.5x "
          "FileSystemWriter/Reader)", "",
          "| workload | op | ours vs | ratio | goal | verdict | bound |",
          "|---|---|---|---:|---:|---|---:|"]
    for t in targets:
        v = "not measured" if t["ok"] is None else ("met" if t["ok"] else "**missed**")
        L.append(f"| {t['workload']} | {t['op']} | {t['vs']} | {C.fmt_ratio(t['ratio'])} | "
                 f"{t['goal']:.1f}x | {v} | {C.fmt_ratio(t.get('bound'))} |")
    L += ["", "Bound = the contender's median over the physical limit's (save: `limit`, raw "
          "write + fsync of the same bytes; load: `limit-pread`, a warm page-cache read of the "
          "same bytes into the destination): the ratio ours would reach if it ran at that "
          "limit, with no DCP overhead. A goal above the bound cannot be met on this machine.",
          ""]

    for wl, res in results["workloads"].items():
        size, placement = wl.split("-")
        if "error" in res:
            L += [f"### {wl}", "", f"Failed: {res['error']}", ""]
            continue
        dims = results["dims"][size]
        L += [f"### {wl}: {SIZES[size][1] if not args['quick'] else 'tiny ' + size} "
              f"{dims}, {res['tensors']} tensors, {res['total_bytes'] / 1e6:,.0f} MB; "
              f"{PLACEMENTS[placement]}", "",
              f"Local shard bytes per rank: "
              f"{', '.join(f'{b / 1e6:,.0f} MB' for b in res['local_bytes'])}.", ""]
        for op in ("save", "load"):
            runs = res[op]
            mo = C.med(runs.get("ours", []), "time") if not C.error_of(runs.get("ours", [])) \
                else None
            L += [f"| {op} | median s [min-max] | GB/s | ratio vs ours | peak MiB "
                  f"(rank 0 / rank 1) |", "|---|---:|---:|---:|---:|"]
            for c, rr in runs.items():
                if C.error_of(rr) or not rr:
                    continue
                m = C.med(rr, "time")
                pk = [C.med([{"v": r["peak_rank"][k]} for r in rr], "v") for k in range(WORLD)]
                L.append(f"| {c} | {C.fmt_s(m)} [{C.spread(rr, 'time')}] | "
                         f"{res['total_bytes'] / m / 1e9:.2f} | "
                         f"{C.fmt_ratio(C.ratio(m, mo)) if c != 'ours' else '1.00x'} | "
                         f"{' / '.join(C.fmt_mib(p) for p in pk)} |")
            L.append("")
            for c, rr in runs.items():
                if C.error_of(rr):
                    L.append(f"- {op} {c} failed: {C.error_of(rr)}")
            L.append("")
        ver = res["verify"]
        bad = [f"{c}: {'; '.join(v['errors']) or 'differs'}" for c, v in ver.items()
               if not v["ok"]]
        L.append("Round trip (saved, loaded into zeroed DTensors, compared): "
                 + ", ".join(f"{c} {'equal' if v['ok'] else 'WRONG'}" for c, v in ver.items())
                 + ". Checkpoint sizes: "
                 + ", ".join(f"{c} {v.get('ckpt_bytes', 0) / 1e6:,.0f} MB"
                             for c, v in ver.items()) + ".")
        L += [f"- {b}" for b in bad]
        L.append("")
        L += ["<details><summary>Per-rank phases (medians, seconds): the storage layer's "
              "methods, timed by wrapping them; the rest is DCP's planning, collectives and "
              "waiting for the other rank</summary>", ""]
        for op, names in (("save", WRITER_PHASES), ("load", READER_PHASES)):
            for c, rr in res[op].items():
                if C.error_of(rr) or not rr or c.startswith("limit"):
                    continue
                for line in _phase_summary(rr, names):
                    L.append(f"- {op} {c}, {line}")
        prof = res.get("profile", {})
        if prof:
            L += ["", "Profile pass (one more save and load per contender, untimed by the rounds, "
                  "with counters on the os module's fsync/pwritev/pwrite/write/pread calls: "
                  "calls, MB, seconds summed over a rank's threads; C code's own system calls "
                  "are not seen):", ""]
            for c, pr in prof.items():
                if "error" in pr:
                    L.append(f"- {c}: failed: {pr['error']}")
                    continue
                for op, names in (("save", WRITER_PHASES), ("load", READER_PHASES)):
                    if op not in pr:
                        continue
                    r = pr[op]
                    for rank in range(WORLD):
                        ph = r["phases"][rank]
                        cells = [f"{n} {ph[n]:.3f}" for n in names + ["fsync-after"]
                                 if ph.get(n, 0) >= 0.0005]
                        sysc = ", ".join(
                            f"{n} {v[0]}x {v[1] / 1e6:,.0f} MB {v[2]:.3f} s" if v[1] else
                            f"{n} {v[0]}x {v[2]:.3f} s"
                            for n, v in sorted(ph.get("_sys", {}).items()))
                        L.append(f"- {op} {c}, rank {rank}: total {r['t_rank'][rank]:.3f} = "
                                 f"{', '.join(cells)}; os calls: {sysc or 'none'}")
        L += ["", "Files: " + "; ".join(f"{c}: {', '.join(v.get('files', []))}"
                                         for c, v in ver.items()), "", "</details>", ""]

    L += ["Contenders:", ""] + [f"- **{c}**: {DESCRIBE.get(c, DESCRIBE['ours'] + ' with ' + c)}"
                                for c in results["contenders"]]
    if not args["quick"]:
        L += ["", "![dcp save](plots/dcp_save.png) ![dcp load](plots/dcp_load.png)"]
    return "\n".join(L)


def plots(results: dict) -> List[str]:
    """One bar plot per operation: median seconds per workload, one bar per contender."""
    wls = [wl for wl, r in results["workloads"].items() if "error" not in r]
    out = []
    for op in ("save", "load"):
        series = {}
        for c in results["contenders"]:
            vals = []
            for wl in wls:
                rr = results["workloads"][wl][op].get(c, [])
                vals.append(None if C.error_of(rr) else C.med(rr, "time"))
            series[c] = vals
        name = f"dcp_{op}.png"
        try:
            C.bar_plot(C.PLOTS / name, f"DCP {op}, world size 2 (lower is better)", wls, series)
            out.append(name)
        except Exception as e:  # noqa: BLE001 - a missing matplotlib costs the plot only
            _log(f"no plot {name}: {e}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny state dicts, one round, no warm-up, writes nothing")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--workloads")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--load-rounds", type=int,
                    help="rounds of the loads (cheaper than saves; default 3x --rounds)")
    ap.add_argument("--ops", default="save,load", help="diagnostics: save, load or both")
    ap.add_argument("--no-profile", action="store_true", help="skip the os-call profile pass")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: benchmarks/out)")
    ap.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    ap.add_argument("--write", action="store_true", help="--quick: write RESULTS.md anyway")
    ap.add_argument("--json", type=Path, default=C.HERE / "out" / "bench-dcp.json",
                    help="raw results (default: benchmarks/out/bench-dcp.json)")
    ap.add_argument("--render", type=Path, metavar="JSON", help="re-render a JSON result")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        child_main(json.loads(args.child))
        return 0
    if args.render:
        results = json.loads(args.render.read_text())
        text = render(results)
        print(text)
        if not args.no_write:
            plots(results)
            C.write_section(SECTION, text)
        return 0

    rounds = args.rounds or (1 if args.quick else 3)
    load_rounds = args.load_rounds or (1 if args.quick else 3 * rounds)
    warmup = not args.quick
    workloads = (args.workloads or (QUICK_WORKLOADS if args.quick else DEFAULT_WORKLOADS)
                 ).split(",")
    contenders = [c for c in args.contenders.split(";" if ";" in args.contenders else ",")
                  if c]
    missing = have_ours() if any(c.startswith("ours") for c in contenders) else None
    if missing:
        _log(f"ours is not importable, measured without it: {missing}")
        contenders = [c for c in contenders if not c.startswith("ours")]
    info = C.machine_info(PACKAGES)
    workroot = args.workdir or (C.HERE / "out")
    workroot.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dcp-", dir=workroot))
    dims = {s: (QUICK_SIZES[s] if args.quick else SIZES[s][0]) for s in SIZES}
    results = {"info": info, "command": C.command_line(), "contenders": contenders,
               "ours_rev": ours_revision() if not missing else None,
               "ours_missing": missing, "dims": dims,
               "args": {"quick": args.quick, "rounds": rounds, "warmup": warmup,
                        "load_rounds": load_rounds},
               "workloads": {}}
    t_start = time.time()
    try:
        for wl in workloads:
            size, placement = wl.split("-")
            job = {"workload": wl, "dims": dims[size], "placement": placement,
                   "contenders": contenders, "rounds": rounds, "warmup": warmup,
                   "load_rounds": load_rounds,
                   "work": str(work / wl), "pg_timeout": 600, "ops": args.ops.split(","),
                   "profile": not args.no_profile}
            _log(f"workload {wl} {dims[size]} ({time.time() - t_start:.0f} s so far)")
            try:
                results["workloads"][wl] = run_workload(job, timeout=3600)
            except Exception as e:  # noqa: BLE001
                results["workloads"][wl] = {"error": str(e)[-500:]}
                _log(f"workload {wl} failed: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = time.time() - t_start
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    text = render(results)
    print(text)
    _log(f"done in {results['elapsed_s']:.0f} s; raw results in {args.json}")
    if not args.no_write and (not args.quick or args.write):
        plots(results)
        C.write_section(SECTION, text)
    failed = [wl for wl, r in results["workloads"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
