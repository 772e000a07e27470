#!/usr/bin/env python3
"""The CPU benchmark suite of issue 5: every contender side by side in one run.

Workloads (shared/BENCHMARKS.md's method: warm page cache, one warm-up round, then alternating
rounds A B C ... A B C ..., median and min-max spread, every measurement in a fresh process whose
peak RSS growth is its own, every byte touched after loading):

  load    GPT-2-small-shaped fp32 state dict (~500 MB, 148 tensors) into memory: ours (engine,
          pread and mmap backends; zero-copy + touch), safetensors.torch.load_file + touch,
          torch.load with and without mmap=True, fastsafetensors, runai-model-streamer,
          tensorizer; the C engine (st_bench load) and the memcpy limit (st_bench memcpy).
  save    the same state dict: ours durable (fsync; buffered and O_DIRECT) and not,
          safetensors.torch.save_file (and
          + fsync), torch.save, tensorizer, raw sequential write of the same bytes (Python
          os.write with and without fsync; st_bench write, which fsyncs).
  subset  one of 8 pipeline stages (whole tensors of 1/8 of the layers) and one of 8
          tensor-parallel column shards (every tensor cut on its last dimension): the C engine
          through ctypes, pread and mmap backends (bytes counted by st_exec_stats.bytes_read),
          the Python plugin, the reference.
  small   ~10,000 small tensors (~100 MB): ours against the reference and the others.

Open + list (workload 5) is bench_open.py's section and the torch.save/torch.load round trip
(workload 6) is bench_python.py's; `make bench` runs both after this script.

Usage:
  .venv/bin/python benchmarks/bench_cpu.py [--rounds N] [--workloads load,save,subset,small]
                                           [--workdir DIR] [--no-write]
  .venv/bin/python benchmarks/bench_cpu.py --quick      # smoke run: tiny sizes, writes nothing
  .venv/bin/python benchmarks/bench_cpu.py --render build/bench-cpu.json   # re-render only
The hand-written analysis of the misses lives in RESULTS.md's cpu-notes block (never rewritten).
Environment: ST_LIBRARY (default build/libsafetensors.so), ST_BENCH (default
build/benchmarks/st_bench).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = C.ROOT
SECTION = "cpu-suite"
PACKAGES = ["torch", "safetensors", "torch_safetensors", "fastsafetensors",
            "runai-model-streamer", "tensorizer", "numpy"]

LOAD_CONTENDERS = ["ours-pread", "ours-copy", "ours-zerocopy", "reference", "pickle",
                   "pickle-mmap", "fastsafetensors", "runai", "tensorizer",
                   "c-engine-pread", "c-engine-mmap", "memcpy-limit"]
SAVE_CONTENDERS = ["ours-durable", "ours-direct", "ours-nofsync", "reference", "reference-fsync",
                   "pickle",
                   "tensorizer", "raw-nofsync", "raw-fsync", "c-raw-fsync"]
SUBSET_CONTENDERS = ["engine-full", "engine-stage", "engine-tp", "engine-full-mmap",
                     "engine-stage-mmap", "engine-tp-mmap", "ours-stage", "ours-tp",
                     "reference-stage", "reference-tp"]
SMALL_CONTENDERS = ["ours-zerocopy", "ours-pread", "ours-copy", "reference", "pickle",
                    "fastsafetensors", "runai"]
STAGES = 8

DESCRIBE = {
    "ours-pread": "`torch_safetensors.torch.load_file(p, backend='pread')`: owned tensors, one "
                  "engine plan, pread straight into them",
    "ours-copy": "our mmap backend + the engine's parallel memcpy into owned tensors "
                 "(`_C.File` + `_io.read_owned`, what `torch.load(mmap=False)` runs for a mapping)",
    "ours-zerocopy": "`torch_safetensors.torch.load_file(p)`: zero-copy views of a private "
                     "mapping (like the reference); the touch faults the pages in",
    "reference": "`safetensors.torch.load_file(p)` (0.8.0, zero-copy mmap)",
    "pickle": "`torch.load(p, weights_only=True)` of a `torch.save` file",
    "pickle-mmap": "`torch.load(p, weights_only=True, mmap=True)`",
    "fastsafetensors": "`SafeTensorsFileLoader(SingleGroup(), 'cpu', nogds=True)` + "
                       "`copy_files_to_device()` + `get_tensor` each",
    "runai": "`SafetensorsStreamer().stream_file(p)` + `get_tensors()` (owned tensors)",
    "tensorizer": "`TensorDeserializer(p, device='cpu')` of a tensorizer-format file of the same "
                  "state dict (its own format)",
    "c-engine-pread": "`st_bench load p pread` (C: open, plan, execute into fresh "
                      "memory, touch one byte a page; no Python)",
    "c-engine-mmap": "`st_bench load p mmap`",
    "memcpy-limit": "`st_bench memcpy SIZE THREADS 1 FILE`: the physical limit, the same bytes "
                    "copied from the file's pages in the page cache by every core (the table "
                    "shows the fresh 4 KiB-page destination; the huge-page one is below)",
}


# =============================================================================================
# Shapes and files
# =============================================================================================

def gpt2_shapes(quick: bool) -> List[Tuple[str, Tuple[int, ...]]]:
    return C.gpt2_shapes(*((8, 64, 1000, 128) if quick else (12, 768, 50257, 1024)))


def small_shapes(quick: bool) -> List[Tuple[str, Tuple[int, ...]]]:
    n, numel = (500, 256) if quick else (10_000, 2_560)  # 10,000 x 10 KiB = ~100 MB
    return [(f"blocks.{i // 10}.p{i % 10}", (numel,)) for i in range(n)]


def stage_layers(n_layer: int, stage: int) -> List[int]:
    """The layers of one of STAGES pipeline stages (the layer list split in STAGES)."""
    per, extra = divmod(n_layer, STAGES)
    start = stage * per + min(stage, extra)
    return list(range(start, start + per + (1 if stage < extra else 0)))


def n_layers(names: List[str]) -> int:
    return 1 + max(int(n.split(".")[2]) for n in names if n.startswith("transformer.h."))


def make_files(work: Path, quick: bool, workloads: List[str]) -> Dict[str, str]:
    import torch

    files: Dict[str, str] = {}
    g = torch.Generator().manual_seed(0)
    tiny = {"a": torch.randn(8, 8, generator=g), "b": torch.randn(16, generator=g)}
    _write_all(tiny, work, "tiny", files)
    if {"load", "save", "subset"} & set(workloads):
        sd = {n: torch.randn(s, generator=g) for n, s in gpt2_shapes(quick)}
        _write_all(sd, work, "gpt2", files, tensorizer="load" in workloads)
        del sd
    if "small" in workloads:
        sd = {n: torch.randn(s, generator=g) for n, s in small_shapes(quick)}
        _write_all(sd, work, "small", files, tensorizer=False)
        del sd
    gc.collect()
    return files


def _write_all(sd, work: Path, stem: str, files: Dict[str, str], tensorizer: bool = True):
    """The reference writes every .safetensors file (ours writes the same bytes)."""
    import torch
    from safetensors.torch import save_file

    p = work / f"{stem}.safetensors"
    save_file(sd, str(p))
    files[stem] = str(p)
    pp = work / f"{stem}.pt"
    torch.save(sd, str(pp))
    files[stem + "-pickle"] = str(pp)
    if tensorizer or stem == "tiny":
        try:
            from tensorizer import TensorSerializer

            tp = work / f"{stem}.tensors"
            s = TensorSerializer(str(tp))
            s.write_state_dict(sd)
            s.close()
            files[stem + "-tensorizer"] = str(tp)
        except Exception as e:  # noqa: BLE001 - reported as the contender's error
            files[stem + "-tensorizer-error"] = repr(e)


def warm_cache(paths) -> None:
    for p in paths:
        if os.path.exists(p):
            with open(p, "rb") as fh:
                while fh.read(16 << 20):
                    pass


# =============================================================================================
# Child side: one measurement in a fresh process
# =============================================================================================

def touch(obj) -> int:
    """Reads every byte of every tensor (forces lazy mappings in; the same for every contender)."""
    import torch

    # One thread: with 2 cores shared, an OpenMP reduction waits for its slowest thread and
    # the touch time then swings 10x between runs; one thread is the same for every contender.
    nt = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        acc = 0
        for t in obj.values():
            if t.numel():
                acc += int(t.reshape(-1).view(torch.uint8).max())
        return acc
    finally:
        torch.set_num_threads(nt)


_PHASES: Dict[str, float] = {}


def _patch_read_owned() -> None:
    """Times the plugin's owned-load step (`_io.read_owned`: allocation, views and the engine)
    by wrapping the shipped function, never replacing it."""
    import torch_safetensors._io as tio

    if getattr(tio.read_owned, "_bench_wrapped", False):
        return
    orig = tio.read_owned

    def read_owned(f, items, pin=False):
        t0 = time.perf_counter()
        out = orig(f, items, pin)
        _PHASES["owned"] = _PHASES.get("owned", 0.0) + time.perf_counter() - t0
        return out

    read_owned._bench_wrapped = True  # type: ignore[attr-defined]
    tio.read_owned = read_owned


def loader(contender: str):
    """Returns load(path_set) -> (dict of tensors, cleanup callable)."""
    import torch

    nothing = lambda: None  # noqa: E731
    if contender in ("ours-pread", "ours-zerocopy", "ours-copy"):
        import torch_safetensors.torch as tst

        _patch_read_owned()
        if contender == "ours-copy":
            def f(p):
                fh = tst._C.File(p["st"], backend="mmap", writable=True)
                try:
                    infos = fh.tensors()
                    ts = tst._io.read_owned(fh, list(enumerate(infos)))
                    return {i[0]: t for i, t in zip(infos, ts)}, nothing
                finally:
                    fh.close()
            return f
        backend = "pread" if contender == "ours-pread" else "mmap"
        return lambda p: (tst.load_file(p["st"], backend=backend), nothing)
    if contender == "reference":
        from safetensors.torch import load_file

        return lambda p: (load_file(p["st"]), nothing)
    if contender == "pickle":
        return lambda p: (torch.load(p["pickle"], weights_only=True), nothing)
    if contender == "pickle-mmap":
        return lambda p: (torch.load(p["pickle"], weights_only=True, mmap=True), nothing)
    if contender == "fastsafetensors":
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup

        def f(p):
            ld = SafeTensorsFileLoader(SingleGroup(), device="cpu", nogds=True)
            ld.add_filenames({0: [p["st"]]})
            names = ld.get_keys()
            fb = ld.copy_files_to_device()
            d = {k: fb.get_tensor(k) for k in names}

            def close():
                fb.close()
                ld.close()
            return d, close
        return f
    if contender == "runai":
        from runai_model_streamer import SafetensorsStreamer

        def f(p):
            with SafetensorsStreamer() as s:
                s.stream_file(p["st"])
                return dict(s.get_tensors()), nothing
        return f
    if contender == "tensorizer":
        from tensorizer import TensorDeserializer

        def f(p):
            if "tensorizer" not in p:
                raise RuntimeError(p.get("tensorizer-error", "no tensorizer file"))
            d = TensorDeserializer(p["tensorizer"], device="cpu")
            return dict(d), d.close
        return f
    raise ValueError(contender)


def child_load(job: dict) -> dict:
    load = loader(job["c"])
    d, close = load(job["warm"])  # lazy imports and first-call setup, untimed
    touch(d)
    close()
    del d
    gc.collect()
    _PHASES.clear()
    rss0 = C.reset_peak()
    t0 = time.perf_counter()
    d, close = load(job["files"])
    t1 = time.perf_counter()
    check = touch(d)
    t2 = time.perf_counter()
    peak = C.status_bytes("VmHWM") - rss0
    nbytes = sum(t.numel() * t.element_size() for t in d.values())
    close()
    out = {"load": t1 - t0, "touch": t2 - t1, "total": t2 - t0, "peak": peak,
           "bytes": nbytes, "tensors": len(d), "check": check}
    if _PHASES:
        out.update({"owned": _PHASES.get("owned"),
                    "other": (t1 - t0) - _PHASES.get("owned", 0)})
    return out


def _raw_write(sd, path: str, fsync: bool) -> None:
    import torch

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for t in sd.values():
            mv = memoryview(t.reshape(-1).view(torch.uint8).numpy())
            while len(mv):
                n = os.write(fd, mv)
                mv = mv[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def saver(contender: str):
    import torch

    if contender in ("ours-durable", "ours-direct", "ours-nofsync"):
        import torch_safetensors.torch as tst

        if contender == "ours-durable":
            return lambda sd, p: tst.save_file(sd, p)
        if contender == "ours-direct":
            return lambda sd, p: tst.save_file(sd, p, direct=True)
        return lambda sd, p: tst._io.write_tensors(sd, p, fsync=False)
    if contender in ("reference", "reference-fsync"):
        from safetensors.torch import save_file

        def f(sd, p):
            save_file(sd, p)
            if contender == "reference-fsync":
                fd = os.open(p, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        return f
    if contender == "pickle":
        return lambda sd, p: torch.save(sd, p)
    if contender == "tensorizer":
        from tensorizer import TensorSerializer

        def f(sd, p):
            s = TensorSerializer(p)
            s.write_state_dict(sd)
            s.close()
        return f
    if contender in ("raw-nofsync", "raw-fsync"):
        return lambda sd, p: _raw_write(sd, p, contender == "raw-fsync")
    raise ValueError(contender)


def child_save(job: dict) -> dict:
    import torch_safetensors.torch as tst

    save = saver(job["c"])
    out_path = job["out"]
    warm_sd = tst.load_file(job["warm"]["st"], backend="pread")
    save(warm_sd, out_path + ".warm")
    os.unlink(out_path + ".warm")
    sd = tst.load_file(job["files"]["st"], backend="pread")  # owned, resident, untimed
    if os.path.exists(out_path):
        os.unlink(out_path)
    gc.collect()
    rss0 = C.reset_peak()
    t0 = time.perf_counter()
    save(sd, out_path)
    t1 = time.perf_counter()
    peak = C.status_bytes("VmHWM") - rss0
    size = os.path.getsize(out_path)
    os.unlink(out_path)
    return {"save": t1 - t0, "peak": peak, "size": size,
            "bytes": sum(t.numel() * t.element_size() for t in sd.values())}


# --- the engine through ctypes (st_plan_*, with st_exec_stats) --------------------------------

def _engine():
    import ctypes
    from ctypes import POINTER, Structure, c_int, c_size_t, c_uint32, c_uint64, c_void_p

    sys.path.insert(0, str(ROOT / "tests" / "python"))
    import stcore

    lib = stcore.lib()
    if getattr(lib, "_bench_plan", False):
        return lib, stcore

    class ExecOptions(Structure):
        _fields_ = [("struct_size", c_size_t), ("threads", c_uint32), ("flags", c_uint32),
                    ("chunk_size", c_uint64), ("reserved", c_uint64 * 8)]

    class ExecStats(Structure):
        _fields_ = [("bytes_copied", c_uint64), ("bytes_read", c_uint64), ("chunks", c_uint64),
                    ("threads_used", c_uint32), ("reserved32", c_uint32),
                    ("reserved", c_uint64 * 6)]

    E = POINTER(stcore.st_error)
    sig = stcore._sig
    sig(lib, "st_plan_new", c_int, c_void_p, c_void_p, POINTER(c_void_p), E)
    sig(lib, "st_plan_free", None, c_void_p)
    sig(lib, "st_plan_add_range", c_int, c_void_p, c_uint64, c_uint64, c_void_p, E)
    sig(lib, "st_plan_add_tensor", c_int, c_void_p, c_size_t, c_void_p, c_size_t, E)
    sig(lib, "st_plan_add_slice", c_int, c_void_p, c_size_t, POINTER(stcore.st_range), c_size_t,
        c_void_p, c_size_t, E)
    sig(lib, "st_plan_bytes", c_uint64, c_void_p)
    sig(lib, "st_exec_options_init", None, POINTER(ExecOptions))
    sig(lib, "st_plan_execute", c_int, c_void_p, POINTER(ExecOptions), POINTER(ExecStats), E)
    lib.ExecOptions, lib.ExecStats, lib._bench_plan = ExecOptions, ExecStats, True
    lib.ctypes = ctypes
    return lib, stcore


def _tp_range(shape, rank: int):
    """Column shard `rank` of STAGES: the last dimension cut in STAGES equal parts."""
    n = shape[-1]
    per = n // STAGES
    return [(0, s, 1) for s in shape[:-1]] + [(rank * per, (rank + 1) * per, 1)]


def engine_subset(path: str, which: str, stage: int, backend: str = "pread") -> dict:
    """One plan through the C engine; returns the bytes requested and those it read."""
    import torch

    lib, stcore = _engine()
    ctypes = lib.ctypes
    f = stcore.open_path(path, backend=1 if backend == "pread" else 0)
    infos = f.tensors()
    names = [i.name for i in infos]
    keep = None
    if which == "stage":
        layers = set(stage_layers(n_layers(names), stage))
        keep = {i.index for i in infos if i.name.startswith("transformer.h.")
                and int(i.name.split(".")[2]) in layers}
    plan, err = ctypes.c_void_p(), stcore.st_error()
    stcore._check(lib.st_plan_new(f.handle, None, ctypes.byref(plan), ctypes.byref(err)), err)
    out = {}
    try:
        for i in infos:
            if keep is not None and i.index not in keep:
                continue
            if which == "tp":
                rr = _tp_range(i.shape, stage)
                ranges = (stcore.st_range * len(rr))(*[stcore.st_range(*x) for x in rr])
                shp = [x[1] - x[0] for x in rr]
                t = torch.empty(shp, dtype=torch.float32)
                nb = t.numel() * t.element_size()
                stcore._check(lib.st_plan_add_slice(plan, i.index, ranges, len(rr),
                                                    t.data_ptr(), nb, ctypes.byref(err)), err)
            else:
                t = torch.empty(i.shape, dtype=torch.float32)
                nb = t.numel() * t.element_size()
                stcore._check(lib.st_plan_add_tensor(plan, i.index, t.data_ptr(), nb,
                                                     ctypes.byref(err)), err)
            out[i.name] = t
        requested = lib.st_plan_bytes(plan)
        opts, stats = lib.ExecOptions(), lib.ExecStats()
        lib.st_exec_options_init(ctypes.byref(opts))
        t0 = time.perf_counter()
        stcore._check(lib.st_plan_execute(plan, ctypes.byref(opts), ctypes.byref(stats),
                                          ctypes.byref(err)), err)
        t_exec = time.perf_counter() - t0
    finally:
        lib.st_plan_free(plan)
        f.close()
    return {"tensors": out, "requested": int(requested), "read": int(stats.bytes_read),
            "chunks": int(stats.chunks), "execute": t_exec,
            "file_data": sum(i.data_end - i.data_begin for i in infos)}


def subset_run(contender: str, path: str, stage: int) -> dict:
    """Returns {"tensors": ..., "requested": bytes asked for, "read": engine count or None}."""
    parts = contender.split("-")
    kind = parts[1]
    if contender.startswith("engine"):
        return engine_subset(path, kind, stage, parts[2] if len(parts) > 2 else "pread")
    if contender.startswith("ours"):
        import torch_safetensors.torch as tst

        if kind == "stage":
            f = tst._C.File(path, backend="pread", writable=True)
            try:
                infos = f.tensors()
                layers = set(stage_layers(n_layers([i[0] for i in infos]), stage))
                items = [(k, i) for k, i in enumerate(infos) if i[0].startswith("transformer.h.")
                         and int(i[0].split(".")[2]) in layers]
                ts = tst._io.read_owned(f, items)
                out = {i[0]: t for (_, i), t in zip(items, ts)}
            finally:
                f.close()
        else:
            out = {}
            with tst.safe_open(path, framework="pt", backend="pread") as f:
                for n in f.keys():
                    sl = f.get_slice(n)
                    shape = sl.get_shape()
                    per = shape[-1] // STAGES
                    idx = (slice(None),) * (len(shape) - 1) + \
                        (slice(stage * per, (stage + 1) * per),)
                    out[n] = sl[idx]
    else:
        from safetensors import safe_open

        out = {}
        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
            if kind == "stage":
                layers = set(stage_layers(n_layers(names), stage))
                for n in names:
                    if n.startswith("transformer.h.") and int(n.split(".")[2]) in layers:
                        out[n] = f.get_tensor(n)
            else:
                for n in names:
                    sl = f.get_slice(n)
                    shape = sl.get_shape()
                    per = shape[-1] // STAGES
                    idx = (slice(None),) * (len(shape) - 1) + \
                        (slice(stage * per, (stage + 1) * per),)
                    out[n] = sl[idx]
    req = sum(t.numel() * t.element_size() for t in out.values())
    return {"tensors": out, "requested": req, "read": None}


def child_subset(job: dict) -> dict:
    c = job["c"]
    warm = job["warm"]["st"]
    if "-full" not in c:
        warm = job["files"]["st"]  # the tiny file has no layers; a subset of the real one is small
    r = subset_run(c, warm, (job["stage"] + 1) % STAGES)
    touch(r["tensors"])
    del r
    gc.collect()
    rss0 = C.reset_peak()
    t0 = time.perf_counter()
    r = subset_run(c, job["files"]["st"], job["stage"])
    t1 = time.perf_counter()
    check = touch(r["tensors"])
    t2 = time.perf_counter()
    peak = C.status_bytes("VmHWM") - rss0
    return {"load": t1 - t0, "touch": t2 - t1, "total": t2 - t0, "peak": peak,
            "requested": r["requested"], "read": r["read"], "file_data": r.get("file_data"),
            "execute": r.get("execute"), "chunks": r.get("chunks"),
            "tensors": len(r["tensors"]), "check": check}


def child_make_files(job: dict) -> dict:
    return make_files(Path(job["work"]), job["quick"], job["workloads"])


def child_main(job):
    """One job (a fresh process per measurement), or a list of them (--quick: one process)."""
    if isinstance(job, list):
        out = {}
        for j in job:
            try:
                out[j["c"]] = child_main(j)
            except Exception as e:  # noqa: BLE001 - a contender failing is a result
                out[j["c"]] = {"error": f"{type(e).__name__}: {e}"}
            gc.collect()
        return out
    return {"load": child_load, "save": child_save, "subset": child_subset,
            "files": child_make_files}[job["op"]](job)


# =============================================================================================
# Parent side
# =============================================================================================

class Runner:
    def __init__(self, args, files: Dict[str, str], work: Path):
        self.args = args
        self.files = files
        self.work = work
        self.st_bench = os.environ.get("ST_BENCH", str(ROOT / "build" / "benchmarks" /
                                                       "st_bench"))
        self.threads = os.cpu_count() or 1
        self.batches: Dict[tuple, dict] = {}
        py = lambda cs: [c for c in cs if not c.startswith(("c-", "memcpy"))]  # noqa: E731
        self.batch_contenders = {"load": py(LOAD_CONTENDERS + SMALL_CONTENDERS),
                                 "save": py(SAVE_CONTENDERS), "subset": SUBSET_CONTENDERS}

    def fileset(self, stem: str) -> dict:
        d = {"st": self.files[stem], "pickle": self.files[stem + "-pickle"]}
        if stem + "-tensorizer" in self.files:
            d["tensorizer"] = self.files[stem + "-tensorizer"]
        if stem + "-tensorizer-error" in self.files:
            d["tensorizer-error"] = self.files[stem + "-tensorizer-error"]
        return d

    def child(self, job: dict) -> dict:
        job = dict(job, warm=self.fileset("tiny"))
        if not self.args.quick:
            return C.run_child([sys.executable, __file__, "--child", json.dumps(job)])
        # smoke run: every contender of a workload in one process (the harness, not the numbers)
        key = (job["op"], job["files"]["st"])
        if key not in self.batches:
            jobs = [dict(job, c=c) for c in self.batch_contenders[job["op"]]]
            self.batches[key] = C.run_child([sys.executable, __file__, "--child",
                                             json.dumps(jobs)])
        res = self.batches[key][job["c"]]
        if "error" in res:
            raise RuntimeError(res["error"])
        return res

    def c_tool(self, argv: List[str]) -> dict:
        """st_bench in a fresh process; its own JSON plus its peak RSS (wait4's ru_maxrss)."""
        if not os.path.exists(self.st_bench):
            raise RuntimeError(f"{self.st_bench} not built (cmake --build build)")
        # wait4 rather than communicate(): it gives this child's own rusage
        p = subprocess.Popen([self.st_bench] + argv, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        assert p.stdout is not None
        out = p.stdout.read()
        p.stdout.close()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"st_bench {' '.join(argv)} failed ({p.returncode})")
        res = json.loads(out.strip().splitlines()[-1])
        res["maxrss"] = ru.ru_maxrss * 1024
        return res

    def progress(self, what: str) -> None:
        if not self.args.quiet:
            print(f"  {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)

    # --- workloads -------------------------------------------------------------------------

    def run_load(self, stem: str, contenders: List[str]) -> Dict[str, List[dict]]:
        files = self.fileset(stem)
        size = os.path.getsize(files["st"])

        def measure(c: str) -> dict:
            if c == "memcpy-limit":
                # the source is the file in the page cache, as a load's is
                r = self.c_tool(["memcpy", str(size), str(self.threads), "1", files["st"]])
                return {"load": r["fresh_s"], "total": r["fresh_s"], "touched": r["touched_s"],
                        "thp": r["fresh_thp_s"], "bytes": r["bytes"]}
            if c.startswith("c-engine"):
                # without ST_EXEC_HUGEPAGES, as the plugin's owned loads run the engine
                r = self.c_tool(["load", files["st"], c.split("-")[-1], str(self.threads), "1"])
                return {"load": r["s"], "total": r["s"], "bytes": r["bytes"],
                        "peak": r["maxrss"]}
            return self.child({"op": "load", "c": c, "files": files})

        return C.alternate(contenders, self.args.rounds, not self.args.quick, measure,
                           lambda s: self.progress(f"load[{stem}] {s}"))

    def run_save(self) -> Dict[str, List[dict]]:
        files = self.fileset("gpt2")
        out = str(self.work / "saved.out")
        size = os.path.getsize(files["st"])

        def measure(c: str) -> dict:
            os.sync()  # the last contender's dirty pages must not throttle this one
            if c == "c-raw-fsync":
                r = self.c_tool(["write", out, str(size), "1"])
                return {"save": r["s"], "size": r["bytes"], "peak": r["maxrss"]}
            return self.child({"op": "save", "c": c, "files": files, "out": out})

        return C.alternate(SAVE_CONTENDERS, self.args.rounds, not self.args.quick, measure,
                           lambda s: self.progress(f"save {s}"))

    def run_subset(self) -> Dict[str, List[dict]]:
        files = self.fileset("gpt2")
        stage = 0  # the largest stage when the layers do not split evenly

        def measure(c: str) -> dict:
            return self.child({"op": "subset", "c": c, "files": files, "stage": stage})

        return C.alternate(SUBSET_CONTENDERS, self.args.rounds, not self.args.quick, measure,
                           lambda s: self.progress(f"subset {s}"))


# =============================================================================================
# Report
# =============================================================================================

def _errors(res: Dict[str, List[dict]]) -> List[str]:
    return [f"- **{c}** could not run here: `{C.error_of(r)}`" for c, r in res.items()
            if C.error_of(r)]


def load_table(res: Dict[str, List[dict]], ours: str) -> List[str]:
    L = ["| contender | load s | touch s | load+touch s [min-max] | vs ours (load+touch) | "
         "GB/s (load) | peak MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    base = C.med(res[ours], "total")
    for c, runs in res.items():
        if C.error_of(runs) or not runs:
            continue
        tot = C.med(runs, "total")
        nb = C.med(runs, "bytes")
        ld = C.med(runs, "load")
        gbps = f"{nb / ld / 1e9:.2f}" if nb and ld else "-"
        L.append(f"| {c} | {C.fmt_s(ld)} | {C.fmt_s(C.med(runs, 'touch'))} | "
                 f"{C.fmt_s(tot)} [{C.spread(runs, 'total')}] | "
                 f"{C.fmt_ratio(C.ratio(tot, base))} | {gbps} | {C.fmt_mib(C.med(runs, 'peak'))} |")
    return L


def phases(res: Dict[str, List[dict]]) -> List[str]:
    ph = [(c, res[c]) for c in ("ours-pread", "ours-copy") if c in res
          and not C.error_of(res[c]) and C.med(res[c], "owned") is not None]
    if not ph:
        return []
    return ["Phase breakdown of our owned loads (median s, timed around the plugin's own "
            "`_io.read_owned`): " + "; ".join(
                f"{c}: open + header + dict {C.fmt_s(C.med(r, 'other'))}, allocation + "
                f"engine (`_io.read_owned`) {C.fmt_s(C.med(r, 'owned'))}"
                for c, r in ph) + ".", ""]


def verdict(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def render(info: dict, args, results: dict, targets: list) -> str:
    L = ["## CPU suite (issue 5): load, save, subset, many small tensors", "",
         C.machine_line(info), "", f"Command: `{C.command_line()}` (what `make bench` runs first)",
         "", f"Method: warm page cache (every file is read once before the first round); "
         f"{'no' if args.quick else 'one'} warm-up round, then {args.rounds} rounds alternating "
         "the contenders; every Python measurement is a fresh process that first loads a tiny "
         "file untimed (imports, lazy setup), so its time and its peak are its own. Times are "
         "medians in seconds, [min-max] the spread. Peak = the process's VmHWM growth during "
         "the operation (reset through /proc/self/clear_refs; the C tools: whole-process "
         "ru_maxrss). Touch = reading every byte of every tensor (a uint8 max), the same work "
         "for every contender; lazy contenders (zero-copy mmap) pay their page faults there, "
         "so load+touch is the like-for-like column. Ratios above 1 mean ours is faster.", ""]

    L += ["### Targets", "", "| target | measured | ratio | goal | verdict |",
          "|---|---|---:|---:|---|"]
    for t in targets:
        L.append(f"| {t['what']} | {t['how']} | {t['val']} | {t['goal']} | "
                 f"{verdict(t['ok'])} |")
    L.append("")

    if "load" in results:
        res = results["load"]
        L += ["### 1. Load everything into memory, GPT-2-small fp32", ""]
        L += load_table(res, "ours-pread")
        L += [""]
        mc = res.get("memcpy-limit") or []
        if mc and not C.error_of(mc):
            nb = C.med(mc, "bytes")
            L.append(f"memcpy limit for {nb / 1e6:,.0f} MB on {os.cpu_count()} threads: fresh "
                     f"destination {C.fmt_s(C.med(mc, 'load'))} s "
                     f"({nb / C.med(mc, 'load') / 1e9:.2f} GB/s; what our owned loads use), fresh "
                     f"destination with transparent huge pages advised "
                     f"{C.fmt_s(C.med(mc, 'thp'))} s "
                     f"({nb / C.med(mc, 'thp') / 1e9:.2f} GB/s), "
                     f"touched destination "
                     f"{C.fmt_s(C.med(mc, 'touched'))} s "
                     f"({nb / C.med(mc, 'touched') / 1e9:.2f} GB/s).")
            L.append("")
        L += phases(res)
        L += [f"- **{c}**: {DESCRIBE[c]}" for c in res if c in DESCRIBE]
        L += _errors(res)
        L += ["", "![load](plots/cpu_load.png)", ""]

    if "save" in results:
        res = results["save"]
        L += ["### 2. Save the same state dict", "",
              "| contender | save s [min-max] | MB/s | vs ours-durable | vs ours-nofsync | "
              "peak MiB | file MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
        bd = C.med(res.get("ours-durable", []), "save")
        bn = C.med(res.get("ours-nofsync", []), "save")
        for c, runs in res.items():
            if C.error_of(runs) or not runs:
                continue
            s = C.med(runs, "save")
            sz = C.med(runs, "size")
            L.append(f"| {c} | {C.fmt_s(s)} [{C.spread(runs, 'save')}] | "
                     f"{sz / s / 1e6:,.0f} | {C.fmt_ratio(C.ratio(s, bd))} | "
                     f"{C.fmt_ratio(C.ratio(s, bn))} | {C.fmt_mib(C.med(runs, 'peak'))} | "
                     f"{C.fmt_mib(sz)} |")
        L += ["", "ours-durable = `torch_safetensors.torch.save_file` (temporary file, fsync, "
              "rename, directory fsync); ours-direct = the same with `direct=True` (O_DIRECT "
              "writes through an aligned bounce buffer, page cache bypassed); ours-nofsync = the "
              "same writer without the fsyncs "
              "(`_io.write_tensors(..., fsync=False)`, what `torch.save(format='safetensors')` to a "
              "path can do); reference-fsync = `safetensors.torch.save_file` + an fsync of the "
              "file; raw-* = the tensors' bytes written by one `os.write` loop (no header), "
              "c-raw-fsync = `st_bench write` (8 MiB writes + fsync, C). All files go to the "
              "same directory (same filesystem)."]
        L += _errors(res)
        L += ["", "![save](plots/cpu_save.png)", ""]

    if "subset" in results:
        res = results["subset"]
        L += ["### 3. Subset loads: one of 8 pipeline stages, one of 8 tensor-parallel shards",
              "", "| contender | load+touch s [min-max] | / full load (same backend) | "
              "engine execute s | work items | bytes requested | bytes read (engine) | "
              "read / file | peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        fdata = C.med(res.get("engine-full", []), "file_data")
        for c, runs in res.items():
            if C.error_of(runs) or not runs:
                continue
            full = C.med(res.get(_full_of(c), []), "total")
            tot = C.med(runs, "total")
            rd = C.med(runs, "read")
            rq = C.med(runs, "requested")
            frac = f"{(rd if rd is not None else rq) / fdata:.4f}" if fdata else "-"
            ch = C.med(runs, "chunks")
            L.append(f"| {c} | {C.fmt_s(tot)} [{C.spread(runs, 'total')}] | "
                     f"{(tot / full) if full else 0:.3f} | {C.fmt_s(C.med(runs, 'execute'))} | "
                     f"{'-' if ch is None else f'{ch:,.0f}'} | {rq:,.0f} | "
                     f"{'-' if rd is None else f'{rd:,.0f}'} | {frac} | "
                     f"{C.fmt_mib(C.med(runs, 'peak'))} |")
        nl = 8 if args.quick else 12
        L += ["", f"stage = the whole tensors of layers {stage_layers(nl, 0)} (stage 0 of the "
              f"{nl} layers split in 8, the largest; the embeddings and the final norm belong "
              "to no stage); tp = every tensor cut on its last dimension into 8 equal column "
              "blocks, block 0 (strided: one run per row). engine-* = `st_plan_add_tensor` / "
              "`st_plan_add_slice` + `st_plan_execute` through ctypes into fresh torch tensors, "
              "pread backend (`-mmap`: mmap backend), bytes read = the engine's own count "
              "(`st_exec_stats.bytes_read`); the ratio is against engine-full of the same "
              "backend; engine execute = `st_plan_execute` alone, work items = "
              "`st_exec_stats.chunks`. ours-stage = the plugin's `_io.read_owned` (one engine plan, pread "
              "backend) over the stage's tensors; ours-tp = `safe_open(p, backend='pread')"
              ".get_slice(n)[:, a:b]` (one call per tensor: the parallel engine for slices of "
              "1 MiB and more, `st_tensor_read_slice` below); "
              "reference-* = `safe_open` + `get_tensor` / `get_slice` (its tensors are lazy "
              "views of its mapping: the touch pays its page faults). The plugin does not "
              "expose the engine's counter (`st_exec_stats`) to Python, so the Python rows "
              "show the bytes they asked for. With the mmap backend the engine reads only the "
              "bytes asked for too, but the kernel maps whole pages: a column shard of a "
              "matrix whose rows are shorter than 8 pages touches every page of it.", ""]
        L += _errors(res)
        L += ["![subset](plots/cpu_subset.png)", ""]

    if "small" in results:
        res = results["small"]
        nt = C.med(res.get("reference", [{}]), "tensors") or 0
        L += [f"### 4. Many small tensors ({nt:,.0f} tensors)", ""]
        L += load_table(res, "ours-zerocopy")
        L += [""] + phases(res)
        L += _errors(res) + ["", "![small](plots/cpu_small.png)", ""]

    L += ["The analysis of each missed target (profiles, what would close it) is the next "
          "section, *CPU suite: why the misses* (hand-written, not rewritten by a run).", ""]
    L += ["### 5. Open + list and 6. the torch.save/torch.load round trip", "",
          "See the sections *Open + list (header only)* (`bench_open.py`) and *Python: save and "
          "load, GPT-2-small shapes* (`bench_python.py`) of this file; `make bench` reruns "
          "both after this suite."]
    return "\n".join(L)


def _full_of(c: str) -> str:
    return "engine-full-mmap" if c.endswith("-mmap") else "engine-full"


def compute_targets(results: dict) -> list:
    T = []

    def add(what, how, val, goal, ok):
        T.append({"what": what, "how": how, "val": val, "goal": goal, "ok": ok})

    if "load" in results:
        r = results["load"]
        m = lambda c, k="total": C.med(r.get(c, []), k)  # noqa: E731
        mc_f, mc_t = m("memcpy-limit", "load"), m("memcpy-limit", "touched")
        mc_h = m("memcpy-limit", "thp")
        for c in ("ours-pread", "ours-copy", "c-engine-pread", "c-engine-mmap"):
            ld = m(c, "load")
            if ld and mc_f:
                q = mc_f / ld
                add("load >= 85% of memcpy (fresh destination, 4 KiB pages like ours)",
                    f"{c} load vs memcpy-fresh", f"{q:.0%}", "85%", q >= 0.85)
            if ld and mc_h:
                q = mc_h / ld
                add("(context) vs memcpy into fresh memory with huge pages advised",
                    f"{c} load vs memcpy-fresh-thp", f"{q:.0%}", "-", None)
            if ld and mc_t and c == "ours-pread":
                q = mc_t / ld
                add("(context) vs memcpy into touched memory", f"{c} load vs memcpy-touched",
                    f"{q:.0%}", "-", None)
        best = min((c for c in ("ours-pread", "ours-copy", "ours-zerocopy") if m(c)),
                   key=lambda c: m(c), default=None)
        for c in [x for x in ("ours-pread", "ours-zerocopy") if m(x)]:
            q = C.ratio(m("reference"), m(c))
            if q is not None:
                add(">= 2x safetensors load_file + touch", f"reference / {c} (load+touch)",
                    f"{q:.2f}x", "2x", q >= 2)
            q = C.ratio(m("pickle"), m(c))
            if q is not None:
                add(">= 5x torch.load (pickle)", f"pickle / {c} (load+touch)", f"{q:.2f}x",
                    "5x", q >= 5)
        if best:
            q = C.ratio(m("pickle-mmap"), m(best))
            if q is not None:
                add("(context) vs torch.load(mmap=True) + touch",
                    f"pickle-mmap / {best} (load+touch)", f"{q:.2f}x", "-", None)
    if "save" in results:
        r = results["save"]
        s = lambda c: C.med(r.get(c, []), "save")  # noqa: E731
        for ours, raw in (("ours-durable", "raw-fsync"), ("ours-direct", "raw-fsync"),
                          ("ours-nofsync", "raw-nofsync")):
            if not s(ours):
                continue
            for other, goal in (("reference", 2), ("pickle", 3)):
                q = C.ratio(s(other), s(ours))
                if q is not None:
                    add(f">= {goal}x {'save_file' if other == 'reference' else 'torch.save'}",
                        f"{other} / {ours}", f"{q:.2f}x", f"{goal}x", q >= goal)
            q = C.ratio(s(raw), s(ours))
            if q is not None:
                add(">= 85% of raw sequential write", f"{raw} / {ours}", f"{q:.0%}", "85%",
                    q >= 0.85)
        for ours in ("ours-durable", "ours-direct"):
            if s(ours) and s("reference-fsync"):
                q = C.ratio(s("reference-fsync"), s(ours))
                add("(context) both durable", f"reference-fsync / {ours}", f"{q:.2f}x", "-",
                    None)
    if "subset" in results:
        r = results["subset"]
        fdata = C.med(r.get("engine-full", []), "file_data")
        for c in ("engine-stage", "engine-tp", "engine-stage-mmap", "engine-tp-mmap",
                  "ours-stage", "ours-tp"):
            t = C.med(r.get(c, []), "total")
            full = C.med(r.get(_full_of(c), []), "total")
            if t and full:
                add("subset time <= 1/6 of a full load", f"{c} / {_full_of(c)}",
                    f"{t / full:.3f}", f"{1 / 6:.3f}", t / full <= 1 / 6)
            rd = C.med(r.get(c, []), "read")
            how = "engine count"
            if rd is None:
                rd, how = C.med(r.get(c, []), "requested"), "requested (no counter in Python)"
            if rd is not None and fdata:
                add("bytes read <= 1/8 of the file + 1%", f"{c}: {how}", f"{rd / fdata:.4f}",
                    f"{1 / 8 + 0.01:.4f}", rd / fdata <= 1 / 8 + 0.01)
    if "small" in results:
        r = results["small"]
        m = lambda c, k="total": C.med(r.get(c, []), k)  # noqa: E731
        for c in ("ours-zerocopy", "ours-pread", "ours-copy"):
            q = C.ratio(m("reference"), m(c))
            if q is not None:
                add("many small tensors: load >= 2x reference", f"reference / {c} (load+touch)",
                    f"{q:.2f}x", "2x", q >= 2)
            q = C.ratio(m("reference", "load"), m(c, "load"))
            if q is not None and c == "ours-zerocopy":
                add("many small tensors: load >= 2x reference", f"reference / {c} (load call "
                    "only, touch excluded)", f"{q:.2f}x", "2x", q >= 2)
    return T


#: workload -> (plot file, title, stacked load + touch bars, or the save time alone)
PLOT_SPECS = {
    "load": ("cpu_load.png", "GPT-2 small fp32: load + touch (warm cache)", True),
    "save": ("cpu_save.png", "GPT-2 small fp32: save", False),
    "subset": ("cpu_subset.png", "Subset loads (1 of 8): load + touch", True),
    "small": ("cpu_small.png", "Many small tensors: load + touch", True),
}


def plots(results: dict) -> None:
    for workload, (png, title, stacked) in PLOT_SPECS.items():
        if workload not in results:
            continue
        r = {c: v for c, v in results[workload].items() if v and not C.error_of(v)}
        names = list(r)
        keys = ("load", "touch") if stacked else ("save",)
        C.bar_plot(C.PLOTS / png, title, names,
                   {k: [C.med(r[c], k) for c in names] for k in keys}, stacked=stacked)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny sizes, 1 round, no warm-up, writes nothing")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--workloads", default="load,save,subset,small")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    ap.add_argument("--json", type=Path, help="also dump the raw results here")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="rewrite the section and plots from a --json dump (no measuring)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_main(json.loads(args.child))))
        return 0
    if args.render:
        dump = json.loads(args.render.read_text())
        for k, v in dump["args"].items():
            setattr(args, k, v)
        sys.argv = dump["argv"]
        body = render(dump["info"], args, dump["results"], compute_targets(dump["results"]))
        body += f"\n\nThe whole suite took {dump['seconds']:.0f} s."
        C.write_section(SECTION, body)
        plots(dump["results"])
        print(body)
        return 0

    args.rounds = args.rounds or (1 if args.quick else 5)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    os.environ.setdefault("ST_LIBRARY", str(ROOT / "build" / "libsafetensors.so"))
    info = C.machine_info(PACKAGES)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="st-bench-cpu-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict = {}
    try:
        # in a child, so that this process stays small: a child forked from it inherits its
        # peak RSS in ru_maxrss (the C tools' peak)
        files = C.run_child([sys.executable, __file__, "--child", json.dumps(
            {"op": "files", "work": str(work), "quick": args.quick, "workloads": workloads})])
        warm_cache([p for k, p in files.items() if not k.endswith("-error")])
        r = Runner(args, files, work)
        if "load" in workloads:
            results["load"] = r.run_load("gpt2", LOAD_CONTENDERS)
        if "save" in workloads:
            results["save"] = r.run_save()
        if "subset" in workloads:
            results["subset"] = r.run_subset()
        if "small" in workloads:
            results["small"] = r.run_load("small", SMALL_CONTENDERS)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    targets = compute_targets(results)
    body = render(info, args, results, targets)
    seconds = time.perf_counter() - t_start
    body += f"\n\nThe whole suite took {seconds:.0f} s."
    print(body)
    if args.json:
        args.json.write_text(json.dumps(
            {"info": info, "results": results, "seconds": seconds, "argv": sys.argv,
             "args": {"quick": args.quick, "rounds": args.rounds}}, indent=1))
    if args.quick:
        # the harness must have produced a number for every contender that can run here
        bad = [f"{w}/{c}" for w, res in results.items() for c, runs in res.items()
               if not runs or (not C.error_of(runs) and C.med(runs, "total" if w != "save"
                                                              else "save") is None)]
        if bad:
            print(f"bench-quick: no measurement for {bad}", file=sys.stderr)
            return 1
        return 0
    if not args.no_write:
        C.write_section(SECTION, body)
        plots(results)
        print(f"\nwrote {C.RESULTS} and {C.PLOTS}/cpu_*.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
