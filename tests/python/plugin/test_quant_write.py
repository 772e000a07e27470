"""save_file(..., quantize=): round-to-nearest quantization into the compressed-tensors
layout (docs/QUANT.md, "Writing"), read back by compressed-tensors 0.20.0 itself: its
QuantizationConfig accepts the quantization_config we record, its per-format
decompressors and its CompressedTensorsDequantizer give exactly our dequantized weights,
and those are within the rounding bound of the originals."""

import json

import pytest
import safetensors.torch
import torch
from compressed_tensors.quantization import QuantizationConfig

import _quant_ct as C
from torch_safetensors import quant
from torch_safetensors.errors import SafetensorQuantError
from torch_safetensors.torch import load_file, safe_open, save_file


def model(dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(64, 256, generator=g),
          "model.layers.0.self_attn.q_proj.weight": torch.randn(256, 256, generator=g) * 0.02,
          "model.layers.0.mlp.down_proj.weight": torch.randn(200, 384, generator=g) * 0.05,
          "model.layers.0.input_layernorm.weight": torch.ones(256),
          "lm_head.weight": torch.randn(64, 256, generator=g),
          "model.layers.0.self_attn.q_proj.bias": torch.zeros(256)}
    sd = {k: v.to(dtype) for k, v in sd.items()}
    sd["model.layers.0.mlp.down_proj.weight"][0, :128] = 0     # an all-zero group
    return sd


QUANTIZED = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")


def ct_reference(path, config):
    """compressed-tensors' decompressors, driven by the config we wrote."""
    qc = QuantizationConfig.model_validate(config)
    (scheme,) = qc.config_groups.values()
    fmt = config["format"]
    return C.decompress_modules(path, fmt, scheme)


@pytest.mark.parametrize("scheme", sorted(quant.SCHEMES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_written_by_us_read_by_compressed_tensors(tmp_path, scheme, dtype):
    sd = model(dtype)
    path = str(tmp_path / "model.safetensors")
    save_file(sd, path, metadata={"format": "pt"}, quantize=scheme)
    with safe_open(path, "pt") as f:
        md = f.metadata()
        stored = set(f.keys())
        fp8 = {m: f.get_slice(m + ".weight").get_dtype() for m in QUANTIZED
               if m + ".weight" in stored}
    assert md["format"] == "pt" and quant.DESCRIPTOR_KEY in md
    config = quant.quantization_config(md)
    assert config["ignore"] == ["lm_head", "model.embed_tokens"]
    if scheme.startswith("FP8"):
        assert fp8 == {m: "F8_E4M3" for m in QUANTIZED}
    else:
        assert fp8 == {}
    ref = ct_reference(path, config)
    ours = load_file(path, dequantize=dtype)
    ours32 = load_file(path, dequantize=torch.float32)
    assert set(ours) == set(sd)
    for k in sd:
        if ref[k].dtype == dtype:
            assert torch.equal(ours[k], ref[k]), k
        else:  # its FP4 decompressors answer in BF16: our float32, rounded once, is that
            assert torch.equal(ours32[k].to(ref[k].dtype), ref[k]), k
    for k in set(sd) - {m + ".weight" for m in QUANTIZED}:
        assert torch.equal(ours[k], sd[k]), k                  # passed through
    # the model-free dequantizer, reading the config.json a user would write
    with open(tmp_path / "config.json", "w") as fh:
        json.dump({"quantization_config": config}, fh)
    mf = C.ct_dequantize_model_free(str(tmp_path), dtype)
    for m in QUANTIZED:
        k = m + ".weight"
        want = ours[k] if ref[k].dtype == dtype else ours32[k].to(ref[k].dtype).to(dtype)
        assert torch.equal(mf[k], want), m
    # the reference reads the file
    assert set(safetensors.torch.load_file(path)) == stored


@pytest.mark.parametrize("scheme", sorted(quant.SCHEMES))
def test_rounding_error_bound(tmp_path, scheme):
    """Each value is within half a step of the original: integers, s / 2 (s the
    element's scale); FP8 E4M3, 2^-4 of the value or half the subnormal step s * 2^-10;
    FP4 E2M1, a quarter of the value or of s (the grid's half steps, clamping included).
    Plus 2^-7 of the group's largest value, for the scale's own rounding to BF16."""
    sd = model(torch.bfloat16)
    path = str(tmp_path / "model.safetensors")
    save_file(sd, path, quantize=scheme)
    ours = load_file(path, dequantize=torch.float32)
    groups = json.loads(safe_open(path, "pt").metadata()[quant.DESCRIPTOR_KEY])["groups"]
    raw = safetensors.torch.load_file(path)
    for m in QUANTIZED:
        w = sd[m + ".weight"].float()
        g = groups[m + ".weight"]
        s = raw[g["components"]["scale"]].float()
        if g["method"].endswith("mxfp4-pack-quantized"):
            s = torch.exp2(raw[g["components"]["scale"]].float() - 127)
        elif g["method"].endswith("nvfp4-pack-quantized"):
            s = s / raw[g["components"]["global_scale"]].float()
        out, inn = w.shape
        if g["strategy"] == "group":
            se = s.repeat_interleave(g["group_size"], 1)
        elif g["strategy"] == "block":
            bh, bw = g["block"]
            se = s.repeat_interleave(bh, 0)[:out].repeat_interleave(bw, 1)[:, :inn]
        else:
            se = s.expand(out, inn) if s.numel() > 1 else s.reshape(()).expand(out, inn)
        if g["bits"] == 4 and "fp4" in g["method"]:
            step = torch.maximum(w.abs() / 4, se / 4)
        elif g["method"].endswith("/pack-quantized"):
            step = 0.5 * se
        else:
            step = torch.maximum(w.abs() * 2.0 ** -4, se * 2.0 ** -10)
        err = (ours[m + ".weight"] - w).abs()
        assert bool((err <= step + w.abs().max() * 2.0 ** -7).all()), m
        assert err.max() > 0


def test_group_size_option_and_ignore(tmp_path):
    sd = model(torch.float32)
    path = str(tmp_path / "m.safetensors")
    save_file(sd, path, quantize={"scheme": "W4A16", "group_size": 64,
                                  "ignore": ["lm_head", "q_proj", "re:.*embed.*"]})
    groups = json.loads(safe_open(path, "pt").metadata()[quant.DESCRIPTOR_KEY])["groups"]
    assert sorted(groups) == ["model.layers.0.mlp.down_proj.weight"]
    assert groups["model.layers.0.mlp.down_proj.weight"]["group_size"] == 64
    ours = load_file(path, dequantize=torch.float32)
    assert torch.equal(ours["model.layers.0.self_attn.q_proj.weight"],
                       sd["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize("spec,words", [
    ("W3A7", "unknown scheme"),
    ({"scheme": "FP8", "group_size": 64}, "group_size 64"),
    ({"scheme": "W4A16", "group_size": 96}, "not a multiple of the group size 96"),
    ({"scheme": "W4A16", "bits": 4}, "unknown options ['bits']"),
    ({"scheme": "W4A16", "ignore": "lm_head"}, "ignore must be a list"),
])
def test_bad_quantize_options(tmp_path, spec, words):
    path = tmp_path / "m.safetensors"
    with pytest.raises(SafetensorQuantError) as ei:
        save_file(model(), str(path), quantize=spec)
    assert words in str(ei.value)
    assert not path.exists()


def test_reserved_metadata_key_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(SafetensorQuantError):
        save_file(model(), str(path), metadata={quant.DESCRIPTOR_KEY: "{}"},
                  quantize="W4A16")
    assert not path.exists()
