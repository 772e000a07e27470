#!/usr/bin/env python3
"""Dequantize-on-load of quantized checkpoints (issue 12): ours against the reference load
followed by torch-operation dequantization, compressed-tensors' own decompression and torch's
QuantizedHuggingFaceStorageReader.

Workloads, each a file on a warm page cache, built once per run:

  int4-g128   compressed-tensors pack-quantized W4A16 (int4, symmetric, groups of 128, BF16
              scales) with Llama-7B linear shapes (q, k, v, o 4096x4096; gate, up 11008x4096;
              down 4096x11008), LAYERS decoder layers; output BF16.
  fp8-block   DeepSeek-V3 style FP8: F8_E4M3 weight + F32 weight_scale_inv per 128x128 block,
              the same shapes; output BF16.
  mxfp4       gpt-oss style MXFP4 experts (*_blocks U8 + *_scales E8M0): 8 experts of
              gate_up [5760, 2880] and down [2880, 2880]; output BF16.

Contenders, each run in a fresh subprocess (its peak RSS is its own: VmHWM minus the RSS
before the operation), alternating A B C ... over the rounds after one warm-up round:

  ours          torch_safetensors.torch.load_file(path, dequantize=torch.bfloat16)
                (C kernels, rows split across the cores)
  ours-torch    the same with quant.USE_KERNELS = False (our torch-operation path)
  ref+torch     safetensors.torch.load_file(path) (0.8.0), then vectorized torch operations
                written here from the format's definition
  ct            safetensors.torch.load_file(path), then compressed-tensors 0.20.0's own
                decompression of each module (the format's compressor .decompress for
                int4-g128, FP8BlockDequantizer for fp8-block)
  torch-reader  torch.distributed.checkpoint.load with QuantizedHuggingFaceStorageReader
                (fp8-block; for mxfp4 it is listed but not run: on a plain one-file
                checkpoint it fills only the first G values of each row, see
                tests/python/plugin/test_quant_formats.py)
  transformers  safetensors.torch.load_file(path), then transformers'
                convert_moe_packed_tensors (mxfp4)

Every contender's result is checked against ours (equal bits, or for the torch-operation
baselines that round differently, within 1 BF16 ulp) before any time counts.

Usage:
  .venv/bin/python benchmarks/bench_quant.py             # full run, writes RESULTS.md section
  .venv/bin/python benchmarks/bench_quant.py --quick     # tiny shapes, 1 round, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LLAMA7B = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 4096),
           "self_attn.v_proj": (4096, 4096), "self_attn.o_proj": (4096, 4096),
           "mlp.gate_proj": (11008, 4096), "mlp.up_proj": (11008, 4096),
           "mlp.down_proj": (4096, 11008)}
QUICK = {"self_attn.q_proj": (256, 256), "mlp.down_proj": (256, 512)}

CONTENDERS = {"int4-g128": ["ours", "ours-torch", "ref+torch", "ct"],
              "fp8-block": ["ours", "ours-torch", "ref+torch", "ct", "torch-reader"],
              "mxfp4": ["ours", "ours-torch", "transformers"]}
NOT_RUN = {("mxfp4", "torch-reader"):
           "fills only the first G values of each row of a plain one-file checkpoint "
           "(wrong result), so it is not timed"}


# --- building the files (parent) -------------------------------------------------------------

def shapes(quick: bool, layers: int):
    base = QUICK if quick else LLAMA7B
    return {f"model.layers.{i}.{k}": v for i in range(layers) for k, v in base.items()}


def build(workload: str, directory: Path, quick: bool, layers: int) -> Path:
    import safetensors.torch
    import torch
    from torch_safetensors import quant

    path = directory / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    sd = {}
    if workload == "mxfp4":
        e, inter, hidden = (2, 64, 64) if quick else (8, 2880, 2880)
        for name, out, inn in (("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden,
                                                                      inter)):
            m = f"model.layers.0.mlp.experts.{name}"
            sd[m + "_blocks"] = torch.randint(0, 256, (e, out, inn // 32, 16), generator=g,
                                              dtype=torch.uint8)
            sd[m + "_scales"] = torch.randint(118, 130, (e, out, inn // 32), generator=g,
                                              dtype=torch.uint8)
    else:
        for m, shp in shapes(quick, layers).items():
            w = (torch.randn(shp, generator=g) * 0.02).to(torch.bfloat16)
            if workload == "int4-g128":
                part, _ = quant.quantize_state_dict({m + ".weight": w}, "W4A16")
            else:
                part, _ = quant.quantize_state_dict({m + ".weight": w}, "FP8_BLOCK")
                part[m + ".weight_scale_inv"] = part.pop(m + ".weight_scale").float()
            sd.update(part)
        sd["model.norm.weight"] = torch.ones(4096 if not quick else 256, dtype=torch.bfloat16)
    safetensors.torch.save_file(sd, str(path), metadata={"format": "pt"})
    cfg = {"int4-g128": {"quant_method": "compressed-tensors", "format": "pack-quantized",
                         "quantization_status": "compressed",
                         "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                             "num_bits": 4, "type": "int", "symmetric": True,
                             "strategy": "group", "group_size": 128}}}},
           "fp8-block": {"quant_method": "fp8", "fmt": "e4m3",
                         "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
           "mxfp4": {"quant_method": "mxfp4"}}[workload]
    (directory / "config.json").write_text(json.dumps({"quantization_config": cfg}))
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "model.safetensors" for k in sd}}))
    return path


# --- the contenders (child) ------------------------------------------------------------------

def ref_torch_int4(sd):
    """The reference load's tensors -> BF16 with torch operations (pack-quantized int4)."""
    import torch
    out = {}
    for k in list(sd):
        if not k.endswith(".weight_packed"):
            continue
        m = k[:-len(".weight_packed")]
        packed, scale = sd.pop(k), sd.pop(m + ".weight_scale")
        rows, cols = (int(x) for x in sd.pop(m + ".weight_shape"))
        by = packed.view(torch.uint8)
        q = torch.stack((by & 15, by >> 4), -1).reshape(rows, -1)[:, :cols]
        q = q.to(torch.bfloat16) - 8
        gs = cols // scale.shape[1]
        out[m + ".weight"] = (q.reshape(rows, -1, gs) * scale.unsqueeze(-1)).reshape(rows,
                                                                                     cols)
    out.update(sd)
    return out


def ref_torch_fp8(sd):
    import torch
    out = {}
    for k in list(sd):
        if not k.endswith(".weight_scale_inv"):
            continue
        m = k[:-len(".weight_scale_inv")]
        w, s = sd.pop(m + ".weight"), sd.pop(k)
        rows, cols = w.shape
        full = s.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
        out[m + ".weight"] = (w.to(torch.float32) * full).to(torch.bfloat16)
    out.update(sd)
    return out


def run_contender(contender: str, workload: str, path: str) -> dict:
    import torch
    directory = os.path.dirname(path)
    t0 = base = 0.0

    def start():
        nonlocal t0, base
        base = _common.reset_peak()
        t0 = time.perf_counter()

    start()
    if contender in ("ours", "ours-torch"):
        from torch_safetensors import quant
        from torch_safetensors.torch import load_file
        quant.USE_KERNELS = contender == "ours"
        start()
        out = load_file(path, dequantize=torch.bfloat16)
    elif contender == "ref+torch":
        import safetensors.torch
        start()
        sd = safetensors.torch.load_file(path)
        out = ref_torch_int4(sd) if workload == "int4-g128" else ref_torch_fp8(sd)
    elif contender == "ct" and workload == "int4-g128":
        import safetensors.torch
        from compressed_tensors.compressors import BaseCompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        scheme = QuantizationScheme(targets=["Linear"], format="pack-quantized",
                                    weights=QuantizationArgs(num_bits=4, type="int",
                                                             strategy="group",
                                                             group_size=128))
        comp = BaseCompressor.get_value_from_registry("pack-quantized")
        start()
        sd = safetensors.torch.load_file(path)
        out = {}
        for k in [k for k in sd if k.endswith(".weight_packed")]:
            m = k[:-len(".weight_packed")]
            local = {n: sd.pop(f"{m}.{n}") for n in ("weight_packed", "weight_scale",
                                                     "weight_shape")}
            out[m + ".weight"] = comp.decompress(local, scheme)["weight"].to(torch.bfloat16)
        out.update(sd)
    elif contender == "ct":
        import safetensors.torch
        from compressed_tensors.entrypoints.convert.converters.fp8block_dequantizer import (
            FP8BlockDequantizer)
        start()
        out = FP8BlockDequantizer(dtype=torch.bfloat16).process(
            safetensors.torch.load_file(path))
    elif contender == "torch-reader":
        import warnings
        import safetensors
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.quantized_hf_storage import (
            QuantizedHuggingFaceStorageReader)
        warnings.simplefilter("ignore")
        with safetensors.safe_open(path, "pt") as f:
            names = [k for k in f.keys() if not k.endswith("_scale_inv")]
            shp = {k: f.get_slice(k).get_shape() for k in names}
        start()
        out = {k: torch.empty(shp[k], dtype=torch.bfloat16) for k in names}
        dcp.load(out, storage_reader=QuantizedHuggingFaceStorageReader(
            directory, target_dtype=torch.bfloat16, thread_count=os.cpu_count() or 1),
            no_dist=True)
    elif contender == "transformers":
        import safetensors.torch
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors
        start()
        sd = safetensors.torch.load_file(path)
        out = {}
        for k in [k for k in sd if k.endswith("_blocks")]:
            m = k[:-len("_blocks")]
            out[m] = convert_moe_packed_tensors(sd.pop(k), sd.pop(m + "_scales"),
                                                dtype=torch.bfloat16)
        out.update(sd)
    else:
        raise SystemExit(f"unknown contender {contender}")
    t = time.perf_counter() - t0
    peak = _common.status_bytes("VmHWM") - base
    nbytes = sum(v.numel() * v.element_size() for v in out.values())
    check = None
    if contender != "ours":
        from torch_safetensors.torch import load_file
        ours = load_file(path, dequantize=torch.bfloat16)
        worst = 0
        for k, v in ours.items():
            a = v.view(torch.int16).to(torch.int32)
            b = out[k].contiguous().view(torch.int16).to(torch.int32)
            worst = max(worst, int((a - b).abs().max()))
        check = worst   # in units of the last place (same-sign values)
    return {"seconds": t, "peak": peak, "out_bytes": nbytes, "ulps_vs_ours": check}


# --- the parent ------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 1 round, write nothing")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--workloads", default="int4-g128,fp8-block,mxfp4")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_contender(*a.child)))
        return 0
    rounds = 1 if a.quick else a.rounds
    info = _common.machine_info(["torch", "safetensors", "compressed_tensors", "transformers"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for wl in a.workloads.split(","):
            d = Path(tmp) / wl
            d.mkdir()
            path = build(wl, d, a.quick, a.layers)
            res = _common.alternate(
                CONTENDERS[wl], rounds, not a.quick,
                lambda c: _common.run_child([sys.executable, __file__, "--child", c, wl,
                                             str(path)], timeout=1200),
                progress=lambda s: print(f"  {wl}: {s}", file=sys.stderr))
            ours = _common.med(res["ours"], "seconds")
            for c in CONTENDERS[wl]:
                runs = res[c]
                err = _common.error_of(runs)
                t = _common.med(runs, "seconds")
                rows.append((wl, c, err, t, _common.spread(runs, "seconds"),
                             _common.med(runs, "peak"), _common.med(runs, "out_bytes"),
                             runs[0].get("ulps_vs_ours") if runs and not err else None,
                             _common.ratio(t, ours)))
            for (w, c), why in NOT_RUN.items():
                if w == wl:
                    rows.append((wl, c, why, None, "-", None, None, None, None))
    lines = ["| workload | contender | median s | spread s | peak RSS MiB | output MiB | "
             "max ulps vs ours | time / ours |", "|---|---|---|---|---|---|---|---|"]
    for wl, c, err, t, sp, peak, ob, ulps, r in rows:
        if err:
            lines.append(f"| {wl} | {c} | not run: {err} | | | | | |")
            continue
        lines.append(f"| {wl} | {c} | {_common.fmt_s(t)} | {sp} | {_common.fmt_mib(peak)} | "
                     f"{_common.fmt_mib(ob)} | {'-' if ulps is None else ulps} | "
                     f"{_common.fmt_ratio(r)} |")
    table = "\n".join(lines)
    print(table)
    if not a.quick:
        body = (f"## Dequantize on load (bench_quant.py)\n\n{_common.machine_line(info)}\n\n"
                f"Command: `{_common.command_line()}`; {rounds} rounds after a warm-up round, "
                f"each contender a fresh process, warm page cache. `time / ours` above 1 means "
                f"ours is that many times faster. Peak RSS is what the operation added.\n\n"
                f"{table}\n")
        _common.write_section("quant", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
