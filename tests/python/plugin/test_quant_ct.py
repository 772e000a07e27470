"""Dequantize-on-load of compressed-tensors checkpoints (docs/QUANT.md), against
compressed-tensors 0.20.0 itself: the checkpoints are made by its calculate_qparams and
per-format compressors, saved by the reference safetensors, described by a config.json
from its QuantizationConfig, and the expected weights are its own model-free
decompression (CompressedTensorsDequantizer).

Exactness: compressed-tensors computes (q - zero) * scale in the scale's dtype (BF16
here) and ours in float32 with one rounding at the end. With integers of at most 8 bits,
FP8 or FP4 values times a BF16 scale the float32 product is exact, so our BF16 result
must equal theirs bit for bit, and our float32 result must round to it exactly."""

import json
import os

import pytest
import safetensors.torch
import torch

import _quant_ct as C
from torch_safetensors import quant
from torch_safetensors.errors import SafetensorQuantUnsupportedError
from torch_safetensors.torch import load_file, safe_open

E4M3 = torch.float8_e4m3fn

CASES = {
    "w4-group128-sym": ("pack-quantized", C.int_args(4, "group", 128)),
    "w4-group128-asym": ("pack-quantized", C.int_args(4, "group", 128, False)),
    "w4-group64-asym": ("pack-quantized", C.int_args(4, "group", 64, False)),
    "w8-channel-sym": ("pack-quantized", C.int_args(8, "channel")),
    "w8-channel-asym": ("pack-quantized", C.int_args(8, "channel", symmetric=False)),
    "w2-group128-sym": ("pack-quantized", C.int_args(2, "group", 128)),
    "w3-group64-asym": ("pack-quantized", C.int_args(3, "group", 64, False)),
    "w5-channel-sym": ("pack-quantized", C.int_args(5, "channel")),
    "w4-tensor-sym": ("pack-quantized", C.int_args(4, "tensor")),
    "fp8-tensor": ("float-quantized", C.float_args("tensor")),
    "fp8-channel": ("float-quantized", C.float_args("channel")),
    "fp8-block128": ("float-quantized", C.float_args("block", [128, 128])),
    "fp8-group128": ("float-quantized", C.float_args("group", group_size=128)),
    "int8-channel-sym": ("int-quantized", C.int_args(8, "channel")),
    "int8-channel-asym": ("int-quantized", C.int_args(8, "channel", symmetric=False)),
    "nvfp4": ("nvfp4-pack-quantized",
              C.float_args("tensor_group", group_size=16, bits=4, scale_dtype=E4M3)),
    "mxfp4": ("mxfp4-pack-quantized",
              C.float_args("group", group_size=32, bits=4, scale_dtype=torch.uint8)),
    "mxfp6": ("mxfp6-pack-quantized",
              C.float_args("group", group_size=32, bits=6, scale_dtype=torch.uint8)),
    "mxfp8": ("mxfp8-quantized",
              C.float_args("group", group_size=32, bits=8, scale_dtype=torch.uint8)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def ckpt(request, tmp_path_factory):
    fmt, args = CASES[request.param]
    d = str(tmp_path_factory.mktemp(request.param))
    path, originals = C.make_checkpoint(d, args, fmt)
    return d, path, originals, C.ct_dequantize(d, torch.bfloat16, fmt, args)


def test_equals_compressed_tensors_decompression(ckpt):
    d, path, originals, ref = ckpt
    ours = load_file(path, dequantize=torch.bfloat16)
    assert set(ours) == set(ref)
    assert set(ours) == {m + ".weight" for m in originals} | {"model.norm.weight"}
    for k in ours:
        assert ours[k].dtype == torch.bfloat16
        assert torch.equal(ours[k], ref[k]), k


@pytest.mark.parametrize("name", ["w4-group128-asym", "fp8-block128", "nvfp4"])
def test_equals_the_model_free_dequantizer(name, tmp_path):
    """The same through compressed-tensors' CompressedTensorsDequantizer, which reads
    the config.json as a serving stack does."""
    fmt, args = CASES[name]
    path, _ = C.make_checkpoint(str(tmp_path), args, fmt)
    ref = C.ct_dequantize_model_free(str(tmp_path), torch.bfloat16)
    ours = load_file(path, dequantize=torch.bfloat16)
    assert set(ours) == set(ref)
    for k in ours:
        assert torch.equal(ours[k], ref[k]), k


def test_float32_rounds_to_theirs_and_float16_is_one_rounding(ckpt):
    d, path, originals, ref = ckpt
    f32 = load_file(path, dequantize=torch.float32)
    f16 = load_file(path, dequantize=torch.float16)
    for m in originals:
        k = m + ".weight"
        assert f32[k].dtype == torch.float32 and f16[k].dtype == torch.float16
        assert torch.equal(f32[k].to(torch.bfloat16), ref[k]), k
        assert torch.equal(f16[k], f32[k].to(torch.float16)), k
    # a tensor that is not quantized passes through as stored, in its dtype
    assert torch.equal(f32["model.norm.weight"], ref["model.norm.weight"])
    assert f32["model.norm.weight"].dtype == torch.bfloat16


def test_safe_open_lists_and_reads_the_unquantized_names(ckpt):
    d, path, originals, ref = ckpt
    with safe_open(path, "pt", dequantize=torch.bfloat16) as f:
        assert f.keys() == sorted({m + ".weight" for m in originals} | {"model.norm.weight"})
        assert set(f.offset_keys()) == set(f.keys())
        for m in originals:
            assert torch.equal(f.get_tensor(m + ".weight"), ref[m + ".weight"])
        assert torch.equal(f.get_tensor("model.norm.weight"), ref["model.norm.weight"])
        with pytest.raises(SafetensorQuantUnsupportedError):
            f.get_slice(next(iter(originals)) + ".weight")
    with safe_open(path, "pt", backend="pread", dequantize=torch.bfloat16) as f:
        for m in originals:
            assert torch.equal(f.get_tensor(m + ".weight"), ref[m + ".weight"])


def test_plain_load_is_unchanged(ckpt):
    d, path, originals, ref = ckpt
    ours = load_file(path)
    theirs = safetensors.torch.load_file(path)
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and torch.equal(
            ours[k].view(torch.uint8), theirs[k].view(torch.uint8)), k
    with safe_open(path, "pt") as f:
        assert f.keys() == sorted(theirs)


def test_no_config_infers_the_same_groups(ckpt, tmp_path):
    """Without config.json the layout is inferred from names, shapes and dtypes (the
    default group sizes of docs/QUANT.md hold for all but the 64-groups, which the scale
    shape gives); the result is the same."""
    d, path, originals, ref = ckpt
    lonely = tmp_path / "model.safetensors"
    with open(path, "rb") as src, open(lonely, "wb") as dst:
        dst.write(src.read())
    ours = load_file(lonely, dequantize=torch.bfloat16)
    for k in ours:
        assert torch.equal(ours[k], ref[k]), k


def test_describe_from_config(ckpt):
    d, path, originals, ref = ckpt
    with safe_open(path, "pt") as f:
        infos = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape()))
                 for k in f.keys()}
        groups = quant.describe(infos, f.metadata(),
                                quant.read_config(os.path.dirname(path)), f.get_tensor)
    assert set(groups) == {m + ".weight" for m in originals}
    for m, w in originals.items():
        g = groups[m + ".weight"]
        assert g.shape == tuple(w.shape)
        assert all(t.startswith(m + ".") for t in g.components.values())


def test_sharded_load_with_a_group_across_shards(tmp_path):
    """Two shards and an index, one group's scale in the other shard than its packed
    weight: load_sharded(dequantize=) gives compressed-tensors' weights."""
    from torch_safetensors.sharded import load_sharded
    fmt, args = CASES["w4-group128-asym"]
    src = tmp_path / "src"
    src.mkdir()
    path, originals = C.make_checkpoint(str(src), args, fmt)
    ref = C.ct_dequantize(str(src), torch.bfloat16, fmt, args)
    everything = safetensors.torch.load_file(path)
    moved = {"model.layers.0.self_attn.q_proj.weight_scale", "model.norm.weight"}
    first = {n: t for n, t in everything.items() if n not in moved}
    second = {n: everything[n] for n in moved}
    out = tmp_path / "sharded"
    out.mkdir()
    weight_map = {}
    for k, part in enumerate((first, second), 1):
        fname = f"model-0000{k}-of-00002.safetensors"
        safetensors.torch.save_file(part, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text((src / "config.json").read_text())
    ours = load_sharded(str(out), dequantize=torch.bfloat16)
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_torch_load_returns_what_is_stored(ckpt):
    """torch.load of a quantized file (through this package's hook) keeps the
    components as stored: dequantizing is only ever asked for."""
    d, path, originals, ref = ckpt
    stored = safetensors.torch.load_file(path)
    got = torch.load(path)
    assert sorted(got) == sorted(stored)
    for k in stored:
        assert got[k].dtype == stored[k].dtype and torch.equal(
            got[k].view(torch.uint8), stored[k].view(torch.uint8)), k
