#!/usr/bin/env python3
"""transformers' from_pretrained with and without torch_safetensors.patch_safetensors().

Contenders, each in its own long-lived worker process (so peak RSS is its own):
  reference  from_pretrained as installed (safetensors 0.8.0's safe_open)
  patched    the same call after torch_safetensors.patch_safetensors()

Workload: a GPT-2-small model (124 M parameters, random init, fp32), saved once by
save_pretrained as one file and as shards (max_shard_size 100MB), loaded mapped (the default)
and with disable_mmap=True (whole files read into bytes, then safetensors.torch.load). Warm page cache (the files
are read in the warm-up round first); inside the timed region: from_pretrained(dir), then every
byte of every parameter is touched (a mapped parameter costs its page faults there, not later).
Rounds alternate the contenders (warm-up round discarded); the median, the min-max spread, the
ratio reference / patched and peak RSS growth are reported. The patched worker counts the files
torch_safetensors opened and both report a checksum of the loaded weights: a run where our code
did not run, or loaded different weights, is an error, not a result.

Writes the "patch" section of benchmarks/RESULTS.md. --quick: a 2-layer model, 1 run, well
under 30 s, nothing written unless --write.

Usage: .venv/bin/python benchmarks/bench_patch.py [--quick] [--runs N] [--write] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CONTENDERS = ["reference", "patched"]
LAYOUTS = ["single", "sharded"]
# (layout, disable_mmap): transformers maps the files, or (disable_mmap=True, its choice on
# network mounts) reads each whole file into bytes and calls safetensors.torch.load.
WORKLOADS = [(layout, False) for layout in LAYOUTS] + [(layout, True) for layout in LAYOUTS]
# (n_layer, n_embd, vocab, n_positions, n_head)
GPT2_SMALL = (12, 768, 50257, 1024, 12)
GPT2_TINY = (2, 256, 5000, 256, 4)


# --------------------------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------------------------

def _touch(model) -> int:
    """Reads every byte of every parameter and buffer; a checksum of the weights."""
    import torch

    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.numel():
            b = t.detach().reshape(-1).view(torch.uint8)
            total += int(b.max()) + int(b[:: max(1, b.numel() // 4096)].sum())
    return total


def worker(contender: str) -> None:
    """Reads commands ("load DIR", "load-nommap DIR", "quit") on stdin, answers JSON lines."""
    import gc

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    import transformers

    import torch_safetensors
    from torch_safetensors import _patch

    from torch_safetensors import _io

    opens = []
    if contender == "patched":
        assert torch_safetensors.patch_safetensors()
        real_open, real_read = _patch._open, _io.read_owned

        def counting_open(*args, **kwargs):
            opens.append(args[0])
            return real_open(*args, **kwargs)

        def counting_read(f, *args, **kwargs):  # load(bytes) of a whole file
            if f.name is None:
                opens.append(f)
            return real_read(f, *args, **kwargs)

        _patch._open = counting_open
        _io.read_owned = counting_read
    elif contender != "reference":
        raise ValueError(contender)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, _, path = line.strip().partition(" ")
        if cmd == "quit":
            break
        if cmd in ("save", "save-quick"):  # the workload, saved once (no timing)
            print(json.dumps(save_models(Path(path), cmd == "save-quick")), flush=True)
            continue
        del opens[:]
        gc.collect()
        ok = _common.clear_peak()
        rss0 = _common.status_bytes("VmRSS")
        t0 = time.perf_counter()
        model = transformers.GPT2LMHeadModel.from_pretrained(
            path, disable_mmap=(cmd == "load-nommap"))
        checksum = _touch(model)
        secs = time.perf_counter() - t0
        peak = _common.status_bytes("VmHWM" if ok else "VmRSS")
        del model
        gc.collect()
        print(json.dumps({"seconds": secs, "peak": max(0, peak - rss0), "checksum": checksum,
                          "opens": len(opens)}), flush=True)


# --------------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------------

class Worker(_common.LineWorker):
    def __init__(self, contender: str):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env.pop("TORCH_SAFETENSORS_PATCH", None)
        super().__init__([sys.executable, __file__, "--worker", contender], env)

    def save(self, work: Path, quick: bool) -> dict:
        return self.ask(f"{'save-quick' if quick else 'save'} {work}")

    def run(self, path: str, nommap: bool) -> dict:
        return self.ask(f"{'load-nommap' if nommap else 'load'} {path}")


def save_models(work: Path, quick: bool) -> dict:
    """The model saved once per layout; returns layout -> (dir, files, MiB, tensors)."""
    import torch
    import transformers

    n_layer, n_embd, vocab, n_pos, n_head = GPT2_TINY if quick else GPT2_SMALL
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab,
                                  n_positions=n_pos, n_head=n_head)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    out = {}
    for layout in LAYOUTS:
        d = work / layout
        if layout == "sharded":
            model.save_pretrained(d, max_shard_size="2MB" if quick else "100MB")
        else:
            model.save_pretrained(d)
        files = sorted(d.glob("*.safetensors"))
        size = sum(f.stat().st_size for f in files)
        out[layout] = {"dir": str(d), "files": len(files), "bytes": size,
                       "params": sum(p.numel() for p in model.parameters())}
    return out


def bench(work: Path, quick: bool, runs: int, progress) -> tuple:
    workers = {c: Worker(c) for c in CONTENDERS}
    res: dict = {}
    try:
        for w in workers.values():  # started together, waited for together
            w.ask_line()
        models = workers["reference"].save(work, quick)
        for layout, nommap in WORKLOADS:
            m = models[layout]
            runs_of = _common.alternate(CONTENDERS, runs, True,
                                        lambda c: workers[c].run(m["dir"], nommap),
                                        lambda s: progress(f"{layout} {nommap} {s}"))
            for c in CONTENDERS:
                err = _common.error_of(runs_of[c])
                if err:
                    raise RuntimeError(f"{c} on {layout}: {err}")
            sums = {r["checksum"] for c in CONTENDERS for r in runs_of[c]}
            if len(sums) != 1:
                raise RuntimeError(f"{layout}: the contenders loaded different weights")
            if any(r["opens"] != m["files"] for r in runs_of["patched"]):
                raise RuntimeError(f"{layout}: the patched load did not read every file "
                                   f"through torch_safetensors")
            if any(r["opens"] for r in runs_of["reference"]):
                raise RuntimeError(f"{layout}: the reference worker used torch_safetensors")
            res[(layout, nommap)] = runs_of
    finally:
        for w in workers.values():
            w.close()
    return models, res


def render(res: dict, models: dict, runs: int, quick: bool, info: dict) -> str:
    what = "a 2-layer GPT-2 (--quick)" if quick else "GPT-2 small"
    m = models["single"]
    out = ["## transformers from_pretrained: reference vs patch_safetensors()", "",
           _common.machine_line(info), "",
           f"Command: `{_common.command_line()}`", "",
           f"Workload: {what}, {m['params'] / 1e6:,.1f} M parameters, random init, fp32 "
           f"({m['bytes'] / 2**20:,.0f} MiB), saved once by `save_pretrained` as one file and "
           f"as {models['sharded']['files']} shards. Timed: `GPT2LMHeadModel.from_pretrained"
           f"(dir, disable_mmap=...)` in a long-lived worker per contender, then every byte of every parameter "
           f"touched. Warm page cache; {runs} alternating rounds after one warm-up round; "
           "median (min-max) seconds; peak MiB = peak RSS growth in the contender's own "
           "process. Ratio = reference / patched (above 1: the patch is faster). The patched "
           "worker checked that torch_safetensors opened every file, and both loaded "
           "identical weights (checksum).", "",
           "| layout | files | disable_mmap | reference s | patched s | ratio "
           "| reference peak MiB | patched peak MiB |",
           "|---|---|---|---|---|---|---|---|"]
    for layout, nommap in WORKLOADS:
        r, p = res[(layout, nommap)]["reference"], res[(layout, nommap)]["patched"]
        out.append(
            f"| {layout} | {models[layout]['files']} | {nommap} | {_common.fmt_s(_common.med(r, 'seconds'))}"
            f" ({_common.spread(r, 'seconds')}) | {_common.fmt_s(_common.med(p, 'seconds'))}"
            f" ({_common.spread(p, 'seconds')}) | "
            f"{_common.fmt_ratio(_common.ratio(_common.med(r, 'seconds'), _common.med(p, 'seconds')))}"
            f" | {_common.fmt_mib(_common.med(r, 'peak'))} | "
            f"{_common.fmt_mib(_common.med(p, 'peak'))} |")
    out += ["", "from_pretrained also builds the model, runs transformers' key matching and "
            "conversion machinery and ties weights; only the file reading changes between the "
            "contenders, so the ratio is bounded by the share of reading in the whole call. "
            "Mapped, both contenders hand transformers zero-copy views and the time is model "
            "building plus the page faults of the touch; with disable_mmap=True the file's "
            "bytes are copied into tensors (the reference: one bytes object per tensor, then "
            "views of those; ours: one parallel copy into the new tensors)."]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 run, nothing written")
    ap.add_argument("--runs", type=int, default=None, help="timed rounds (default 7)")
    ap.add_argument("--write", action="store_true", help="write RESULTS.md even if --quick")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--worker", metavar="CONTENDER", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return 0

    runs = args.runs or (1 if args.quick else 7)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="st-bench-patch-"))
    work.mkdir(parents=True, exist_ok=True)
    info = _common.machine_info(["torch", "safetensors", "transformers", "torch_safetensors"])
    try:
        models, res = bench(work, args.quick, runs,
                            lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    body = render(res, models, runs, args.quick, info)
    print(body)
    if not args.quick or args.write:
        _common.write_section("patch", body)
        print(f"\nwrote the patch section of {_common.RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
