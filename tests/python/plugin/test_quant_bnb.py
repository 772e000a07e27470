"""bitsandbytes 4-bit (NF4 and FP4, with and without nested absmax) against bitsandbytes
0.50.2 itself: weights quantized by its quantize_4bit, saved as its Linear4bit does
(`<m>.weight` plus `<m>.weight.<quant state item>`, the JSON quant state packed into a U8
tensor by QuantState.as_dict(packed=True)), and the expected values from its
dequantize_4bit. Both compute in float32 and round once, so they are equal bit for bit.

Blocks run over the flattened tensor (bitsandbytes' quantize_4bit, its generic and CUDA
dequantization). Its CPU dequantization kernel, which dequantize_4bit picks on this
machine, agrees only when the rows are whole blocks (for 160 columns and blocks of 64 it
scales from the third block on with other blocks' absmax), so the rows here are whole
blocks and the partial-block case is checked against its generic implementation."""

import os
import warnings

import pytest
import safetensors.torch
import torch

from torch_safetensors.errors import SafetensorQuantLayoutError
from torch_safetensors.torch import load_file, safe_open

# bitsandbytes 0.50.2's own warnings, not this project's: importing it applies the
# deprecated torch.jit.script_method 14 times (torch 2.13 warns at each).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", r".*torch\.jit\.script_method.*is deprecated",
                            DeprecationWarning)
    import bitsandbytes.functional as bnbf


def bnb_file(tmp_path, quant_type, nested, blocksize, dtype, shape=(96, 256), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g) * 0.05).to(dtype)
    packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type,
                                       compress_statistics=nested)
    sd = {"model.layers.0.mlp.up_proj.weight": packed,
          "model.layers.0.mlp.up_proj.bias": torch.zeros(shape[0], dtype=dtype)}
    for k, v in state.as_dict(packed=True).items():
        sd[f"model.layers.0.mlp.up_proj.weight.{k}"] = v
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file(sd, path)
    return path, bnbf.dequantize_4bit(packed, state), sd


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("blocksize", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_equals_bitsandbytes(tmp_path, quant_type, nested, blocksize, dtype):
    path, ref, sd = bnb_file(tmp_path, quant_type, nested, blocksize, dtype)
    assert ref.dtype == dtype
    out = load_file(path, dequantize=dtype)
    assert sorted(out) == ["model.layers.0.mlp.up_proj.bias",
                           "model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], ref)
    with safe_open(path, "pt", dequantize=dtype) as f:
        assert torch.equal(f.get_tensor("model.layers.0.mlp.up_proj.weight"), ref)
    assert sorted(load_file(path)) == sorted(sd)        # plain load: what is stored


@pytest.mark.parametrize("shape", [(7, 9), (96, 160)])
def test_partial_blocks_against_the_generic_implementation(tmp_path, shape):
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(shape, generator=g) * 0.05).to(torch.bfloat16)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4",
                                       compress_statistics=False)
    sd = {"m.weight": packed}
    sd.update({f"m.weight.{k}": v for k, v in state.as_dict(packed=True).items()})
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file(sd, path)
    ref = _dequantize_4bit_compute(packed.reshape(-1), state.absmax,
                                   _get_4bit_code("nf4", packed.device), 64, shape,
                                   torch.bfloat16)
    assert torch.equal(load_file(path, dequantize=torch.bfloat16)["m.weight"], ref)


def test_quant_state_that_is_not_json(tmp_path):
    _, _, sd = bnb_file(tmp_path, "nf4", False, 64, torch.bfloat16)
    key = "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"
    sd[key] = torch.tensor(list(b"{not json"), dtype=torch.uint8)
    path = os.path.join(tmp_path, "bad.safetensors")
    safetensors.torch.save_file(sd, path)
    with pytest.raises(SafetensorQuantLayoutError, match="quant_state is not JSON"):
        load_file(path, dequantize=torch.float32)


def test_absmax_of_the_wrong_length(tmp_path):
    _, _, sd = bnb_file(tmp_path, "fp4", False, 64, torch.bfloat16)
    sd["model.layers.0.mlp.up_proj.weight.absmax"] = torch.ones(3)
    path = os.path.join(tmp_path, "bad.safetensors")
    safetensors.torch.save_file(sd, path)
    with pytest.raises(SafetensorQuantLayoutError, match="absmax"):
        load_file(path, dequantize=torch.float32)
