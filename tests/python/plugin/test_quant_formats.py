"""Dequantize-on-load of the layouts that are not compressed-tensors' own (docs/QUANT.md):
GPTQ and AWQ GEMM against NumPy packing written in this file from the formats'
definitions (and AWQ also through compressed-tensors' AutoAWQConverter), FP8 block with
weight_scale_inv against compressed-tensors' FP8BlockDequantizer and torch's
QuantizedHuggingFaceStorageReader, gpt-oss MXFP4 against transformers'
convert_moe_packed_tensors (torch's reader is no reference for MXFP4 here: on a plain
one-file checkpoint it fills only the first G values of each row, its chunk metadata
keeping the quantized size), ModelOpt NVFP4 against compressed-tensors'
ModelOptNvfp4Converter, and the FP4 / FP8 / E8M0 element values against ml_dtypes.

Every expected value here is float32 arithmetic that is exact (small integers or FP4/FP8
values times a F16/F32 scale), so the comparisons are exact unless a test says
otherwise."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch

from torch_safetensors.torch import load_file

_rng = np.random.default_rng


# -- GPTQ ------------------------------------------------------------------------------

def pack_dense_dim0(vals, bits):
    """GPTQ's packing along dim 0: in each column, value i sits at bit i * bits of
    the column's stream of little-endian int32 words (LSB first; for 3 bits a value
    may straddle two words, as AutoGPTQ's 3-bit packer does)."""
    n, cols = vals.shape
    words = np.zeros((n * bits // 32, cols), dtype=np.uint64)
    for i in range(n):
        w, off = divmod(i * bits, 32)
        v = vals[i].astype(np.uint64)
        words[w] |= (v << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        if off + bits > 32:
            words[w + 1] |= v >> np.uint64(32 - off)
    return words.astype(np.uint32).view(np.int32)


def gptq_case(out, inn, bits, group, seed, desc_act=False, v2=False):
    r = _rng(seed)
    top = (1 << bits) - 1
    q = r.integers(0, top + 1, size=(inn, out))
    ng = inn // group
    z = r.integers(1, top + 1, size=(ng, out))        # true zero points (>= 1 for v1)
    s = (r.random((ng, out)) * 0.01 + 0.001).astype(np.float16)
    g_idx = np.arange(inn) // group
    if desc_act:
        g_idx = r.permutation(inn) // group
    stored = z if v2 else z - 1                       # v1 stores zero minus one
    tensors = {"qweight": pack_dense_dim0(q, bits),
               "qzeros": pack_dense_dim0(stored.T, bits).T.copy(),
               "scales": s, "g_idx": g_idx.astype(np.int32)}
    expect = (q.T - z[g_idx].T).astype(np.float32) * s[g_idx].T.astype(np.float32)
    return tensors, expect


def save_module(directory, mod, tensors, config, extra=None):
    sd = {f"{mod}.{k}": torch.from_numpy(np.ascontiguousarray(v))
          for k, v in tensors.items()}
    sd["lm_head.weight"] = torch.ones(4, 8, dtype=torch.float16)
    sd.update(extra or {})
    path = os.path.join(directory, "model.safetensors")
    safetensors.torch.save_file(sd, path)
    if config is not None:
        with open(os.path.join(directory, "config.json"), "w") as fh:
            json.dump({"quantization_config": config}, fh)
    return path


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("desc_act", [False, True])
def test_gptq(tmp_path, bits, fmt, desc_act):
    tensors, expect = gptq_case(64, 256, bits, 64, seed=bits, desc_act=desc_act,
                                v2=fmt == "gptq_v2")
    path = save_module(str(tmp_path), "model.layers.0.mlp.up_proj", tensors,
                       {"quant_method": "gptq", "bits": bits, "group_size": 64,
                        "desc_act": desc_act, "sym": False, "checkpoint_format": fmt})
    out = load_file(path, dequantize=torch.float32)
    assert sorted(out) == ["lm_head.weight", "model.layers.0.mlp.up_proj.weight"]
    w = out["model.layers.0.mlp.up_proj.weight"]
    assert w.shape == (64, 256)
    assert torch.equal(w, torch.from_numpy(expect))
    bf = load_file(path, dequantize=torch.bfloat16)["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(bf, torch.from_numpy(expect).to(torch.bfloat16))
    assert torch.equal(out["lm_head.weight"], torch.ones(4, 8, dtype=torch.float16))


def test_gptq_without_g_idx(tmp_path):
    tensors, expect = gptq_case(32, 128, 4, 32, seed=7)
    del tensors["g_idx"]
    path = save_module(str(tmp_path), "m", tensors,
                       {"quant_method": "gptq", "bits": 4, "group_size": 32})
    assert torch.equal(load_file(path, dequantize=torch.float32)["m.weight"],
                       torch.from_numpy(expect))


# -- AWQ GEMM ------------------------------------------------------------------------

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def pack_awq(vals):
    """AWQ GEMM: [rows, cols] 4-bit values -> int32 [rows, cols / 8]; nibble k (bits
    4k..4k+3) of word j holds column 8j + AWQ_ORDER[k]."""
    rows, cols = vals.shape
    words = np.zeros((rows, cols // 8), dtype=np.uint32)
    for k, col in enumerate(AWQ_ORDER):
        words |= vals[:, col::8].astype(np.uint32) << np.uint32(4 * k)
    return words.view(np.int32)


def awq_case(out, inn, group, seed):
    r = _rng(seed)
    q = r.integers(0, 16, size=(inn, out))
    z = r.integers(0, 16, size=(inn // group, out))
    s = (r.random((inn // group, out)) * 0.01 + 0.001).astype(np.float16)
    g = np.arange(inn) // group
    expect = (q.T - z[g].T).astype(np.float32) * s[g].T.astype(np.float32)
    return {"qweight": pack_awq(q), "qzeros": pack_awq(z), "scales": s}, expect


def test_awq_gemm_against_numpy(tmp_path):
    tensors, expect = awq_case(64, 256, 128, seed=3)
    path = save_module(str(tmp_path), "model.layers.0.self_attn.o_proj", tensors,
                       {"quant_method": "awq", "bits": 4, "group_size": 128,
                        "zero_point": True, "version": "gemm"})
    w = load_file(path, dequantize=torch.float32)["model.layers.0.self_attn.o_proj.weight"]
    assert w.shape == (64, 256)
    assert torch.equal(w, torch.from_numpy(expect))


def test_awq_gemm_against_compressed_tensors_converter(tmp_path):
    """compressed-tensors' AutoAWQConverter repacks AWQ into pack-quantized; its
    decompressor then gives the weight (in F16, the scales' dtype)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    tensors, _ = awq_case(128, 256, 64, seed=4)
    path = save_module(str(tmp_path), "m", tensors, None)  # no config: inferred
    sd = {f"m.{k}": torch.from_numpy(v) for k, v in tensors.items()}
    ct = AutoAWQConverter(bits=4, group_size=64, zero_point=True).process(sd)
    scheme = QuantizationScheme(
        targets=["Linear"], format="pack-quantized",
        weights=QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=64,
                                 symmetric=False))
    local = {k[2:]: v for k, v in ct.items() if k.startswith("m.")}
    ref = BaseCompressor.get_value_from_registry("pack-quantized").decompress(
        local, scheme)["weight"]
    ours = load_file(path, dequantize=torch.float16)["m.weight"]
    assert ref.dtype == torch.float16
    assert torch.equal(ours, ref)


# -- FP8 block (DeepSeek-V3, transformers quant_method fp8) ---------------------------

def fp8_block_case(out, inn, seed, e8m0=False):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(out, inn, generator=g) * 50).to(torch.float8_e4m3fn)
    shape = (-(-out // 128), -(-inn // 128))
    if e8m0:
        s = torch.randint(110, 135, shape, generator=g, dtype=torch.uint8).view(
            torch.float8_e8m0fnu)
    else:
        s = torch.rand(shape, generator=g) * 1e-3 + 1e-4
    return w, s


@pytest.mark.parametrize("shape", [(256, 384), (200, 330)])
def test_fp8_block_against_compressed_tensors(tmp_path, shape):
    from compressed_tensors.entrypoints.convert.converters.fp8block_dequantizer import (
        FP8BlockDequantizer)
    w, s = fp8_block_case(*shape, seed=1)
    sd = {"model.layers.0.mlp.gate_proj.weight": w,
          "model.layers.0.mlp.gate_proj.weight_scale_inv": s,
          "model.norm.weight": torch.ones(8, dtype=torch.bfloat16)}
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file(sd, path)
    with open(os.path.join(tmp_path, "config.json"), "w") as fh:
        json.dump({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                           "weight_block_size": [128, 128]}}, fh)
    ref = FP8BlockDequantizer(dtype=torch.bfloat16).process(dict(sd))
    ours = load_file(path, dequantize=torch.bfloat16)
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def _dcp_read(directory, names_shapes, dtype):
    """torch's QuantizedHuggingFaceStorageReader over a one-file checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.quantized_hf_storage import (
        QuantizedHuggingFaceStorageReader)
    with safetensors.safe_open(os.path.join(directory, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": {k: "model.safetensors" for k in keys}},
                  fh)
    sd = {n: torch.empty(s, dtype=dtype) for n, s in names_shapes.items()}
    dcp.load(sd, storage_reader=QuantizedHuggingFaceStorageReader(
        directory, target_dtype=dtype), no_dist=True)
    return sd


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_fp8_block_against_torch_reader(tmp_path):
    w, s = fp8_block_case(256, 384, seed=2)
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file({"l.weight": w, "l.weight_scale_inv": s}, path)
    ref = _dcp_read(str(tmp_path), {"l.weight": (256, 384)}, torch.float32)
    ours = load_file(path, dequantize=torch.float32)
    assert sorted(ours) == ["l.weight"]
    assert torch.equal(ours["l.weight"], ref["l.weight"])


def test_fp8_block_e8m0_scales_against_ml_dtypes(tmp_path):
    w, s = fp8_block_case(256, 256, seed=5, e8m0=True)
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file({"l.weight": w, "l.weight_scale_inv": s}, path)
    wv = w.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    sv = s.view(torch.uint8).numpy().view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    expect = wv * np.repeat(np.repeat(sv, 128, 0), 128, 1)
    assert torch.equal(load_file(path, dequantize=torch.float32)["l.weight"],
                       torch.from_numpy(expect))


# -- MXFP4 as in gpt-oss ---------------------------------------------------------------

def gpt_oss_case(seed, experts=2, out=64, groups=3):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (experts, out, groups, 16), generator=g,
                           dtype=torch.uint8)
    scales = torch.randint(115, 135, (experts, out, groups), generator=g,
                           dtype=torch.uint8)
    return blocks, scales


def test_gpt_oss_mxfp4_against_transformers(tmp_path):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    blocks, scales = gpt_oss_case(1)
    name = "model.layers.0.mlp.experts.gate_up_proj"
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file({name + "_blocks": blocks, name + "_scales": scales,
                                 name + "_bias": torch.zeros(2, 64)}, path)
    ref = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
    ours = load_file(path, dequantize=torch.bfloat16)
    assert sorted(ours) == [name, name + "_bias"]
    assert ours[name].shape == ref.shape == (2, 96, 64)
    assert torch.equal(ours[name], ref)


# -- NVFP4 as in ModelOpt ---------------------------------------------------------------

def modelopt_case(seed, out=64, inn=128, scale_2=2.0 ** -9):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(0, 256, (out, inn // 2), generator=g, dtype=torch.uint8)
    scale = (torch.rand(out, inn // 16, generator=g) * 400 + 1).to(torch.float8_e4m3fn)
    return {"weight": weight, "weight_scale": scale,
            "weight_scale_2": torch.tensor(scale_2, dtype=torch.float32),
            "input_scale": torch.tensor(0.5, dtype=torch.float32)}


def test_modelopt_nvfp4_against_compressed_tensors(tmp_path):
    """With a power-of-two weight_scale_2, compressed-tensors' route (divide by
    1 / weight_scale_2) and ModelOpt's (multiply) are the same exact arithmetic."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import (
        ModelOptNvfp4Converter)
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import NVFP4A16

    parts = modelopt_case(3)
    sd = {f"m.{k}": v for k, v in parts.items()}
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file(sd, path)
    with open(os.path.join(tmp_path, "hf_quant_config.json"), "w") as fh:
        json.dump({"quantization": {"quant_algo": "NVFP4", "group_size": 16}}, fh)
    ct = ModelOptNvfp4Converter(targets=["re:.*"]).process(dict(sd))
    scheme = QuantizationScheme(targets=["Linear"], format="nvfp4-pack-quantized",
                                **NVFP4A16)
    local = {k[2:]: v for k, v in ct.items()
             if k[2:] in ("weight_packed", "weight_scale", "weight_global_scale")}
    ref = BaseCompressor.get_value_from_registry("nvfp4-pack-quantized").decompress(
        local, scheme)["weight"]
    ours = load_file(path, dequantize=torch.bfloat16)
    assert sorted(ours) == ["m.input_scale", "m.weight"]
    assert torch.equal(ours["m.weight"], ref)


def test_modelopt_nvfp4_against_numpy(tmp_path):
    parts = modelopt_case(4, scale_2=0.0123)
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file({f"m.{k}": v for k, v in parts.items()}, path)
    by = parts["weight"].numpy()
    codes = np.stack([by & 0xF, by >> 4], -1).reshape(64, 128)   # low nibble first
    v = codes.astype(np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    s = parts["weight_scale"].view(torch.uint8).numpy().view(
        ml_dtypes.float8_e4m3fn).astype(np.float32)
    eff = s * np.float32(0.0123)                                  # scale * scale_2
    expect = v * np.repeat(eff, 16, 1)
    assert torch.equal(load_file(path, dequantize=torch.float32)["m.weight"],
                       torch.from_numpy(expect))


# -- element values ------------------------------------------------------------------

def test_fp4_e8m0_values_against_ml_dtypes(tmp_path):
    """Every FP4 code (both nibbles) and every E8M0 scale code through a
    compressed-tensors MXFP4 group: 256 rows, row r scaled by E8M0 code r."""
    codes = np.arange(256, dtype=np.uint8)
    packed = np.tile(codes, (256, 1))                              # [256, 256] bytes
    scales = np.repeat(codes[:, None], 512 // 32, 1)               # [256, 16]
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file({"m.weight_packed": torch.from_numpy(packed),
                                 "m.weight_scale": torch.from_numpy(scales)}, path)
    lo = (packed & 0xF).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    hi = (packed >> 4).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    v = np.stack([lo, hi], -1).reshape(256, 512)
    s = codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        expect = v * s
    ours = load_file(path, dequantize=torch.float32)["m.weight"].numpy()
    np.testing.assert_array_equal(ours, expect)                    # NaN where 0xFF
    assert np.isnan(ours[255]).all() and not np.isnan(ours[:255]).any()


@pytest.mark.parametrize("st,mld", [("float8_e4m3fn", ml_dtypes.float8_e4m3fn),
                                    ("float8_e5m2", ml_dtypes.float8_e5m2),
                                    ("float8_e4m3fnuz", ml_dtypes.float8_e4m3fnuz),
                                    ("float8_e5m2fnuz", ml_dtypes.float8_e5m2fnuz)])
def test_fp8_values_against_ml_dtypes(tmp_path, st, mld):
    """Every FP8 code through a per-tensor compressed-tensors float-quantized group."""
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    w = torch.from_numpy(codes.copy()).view(getattr(torch, st))
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file({"m.weight": w,
                                 "m.weight_scale": torch.ones(1, dtype=torch.float32)},
                                path)
    ours = load_file(path, dequantize=torch.float32)["m.weight"].numpy()
    np.testing.assert_array_equal(ours, codes.view(mld).astype(np.float32))


def test_fp6_values_against_ml_dtypes(tmp_path):
    """Every E2M3 code through a compressed-tensors MXFP6 group (4 codes in 3 bytes, LSB
    first), scale 2^0: the values ml_dtypes gives."""
    codes = np.tile(np.arange(64, dtype=np.uint32), 2).reshape(1, 128)
    c = codes.reshape(1, 32, 4)
    word = c[..., 0] | c[..., 1] << 6 | c[..., 2] << 12 | c[..., 3] << 18
    packed = np.stack([word & 255, word >> 8 & 255, word >> 16 & 255], -1).reshape(1, 96)
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file({"m.weight_packed": torch.from_numpy(packed.astype(np.uint8)),
                                 "m.weight_scale": torch.full((1, 4), 127, dtype=torch.uint8)},
                                path)
    want = codes.astype(np.uint8).view(ml_dtypes.float6_e2m3fn).astype(np.float32)
    ours = load_file(path, dequantize=torch.float32)["m.weight"].numpy()
    np.testing.assert_array_equal(ours, want)
