"""Malformed quantized groups, bad descriptors and ambiguous layouts (docs/QUANT.md,
shared/ROBUSTNESS.md "Quantized groups"): each is a named SafetensorQuantError subclass
naming the group, raised before any arithmetic, never a crash or an out-of-bounds read.
The files are written by the reference safetensors; the descriptor by hand."""

import json
import math
import os

import numpy as np
import pytest
import safetensors.torch
import torch

from torch_safetensors import quant
from torch_safetensors.errors import (SafetensorQuantAmbiguousError,
                                      SafetensorQuantDescriptorError,
                                      SafetensorQuantError, SafetensorQuantLayoutError,
                                      SafetensorQuantUnsupportedError, SafetensorValueError)
from torch_safetensors.torch import load_file, safe_open


def w4_group(out=16, inn=256, group=128):
    """A valid compressed-tensors pack-quantized int4 group-128 module 'm'."""
    g = torch.Generator().manual_seed(0)
    return {"m.weight_packed": torch.randint(-2**31, 2**31 - 1, (out, inn // 8),
                                             generator=g, dtype=torch.int32),
            "m.weight_scale": torch.rand(out, inn // group, generator=g).to(torch.bfloat16),
            "m.weight_shape": torch.tensor([out, inn])}


def descriptor(**over):
    d = {"method": "compressed-tensors/pack-quantized",
         "components": {"packed": "m.weight_packed", "scale": "m.weight_scale",
                        "shape": "m.weight_shape"},
         "shape": [16, 256], "bits": 4, "strategy": "group", "group_size": 128,
         "block": None, "zero_point": "none", "packing": "int32-lsb-dense-rows",
         "scale_encoding": "float", "dtype": "BF16"}
    d.update(over)
    return d


def write(tmp_path, tensors, groups=None, raw=None, config=None):
    md = None
    if groups is not None:
        md = {quant.DESCRIPTOR_KEY: json.dumps({"version": 1, "groups": groups})}
    if raw is not None:
        md = {quant.DESCRIPTOR_KEY: raw}
    path = os.path.join(tmp_path, "model.safetensors")
    safetensors.torch.save_file(tensors, path, metadata=md)
    if config is not None:
        with open(os.path.join(tmp_path, "config.json"), "w") as fh:
            json.dump({"quantization_config": config}, fh)
    return path


def refused(path, cls, *words):
    with pytest.raises(cls) as ei:
        load_file(path, dequantize=torch.bfloat16)
    text = str(ei.value)
    for w in words:
        assert w in text, text
    assert isinstance(ei.value, ValueError)
    return ei.value


def test_valid_descriptor_loads(tmp_path):
    """The baseline every case below breaks: the same group, described, loads."""
    path = write(tmp_path, w4_group(), {"m.weight": descriptor()})
    out = load_file(path, dequantize=torch.bfloat16)
    assert list(out) == ["m.weight"] and out["m.weight"].shape == (16, 256)


LAYOUT_CASES = {
    # a scale of the wrong shape
    "scale-shape": (lambda t: t.update({"m.weight_scale": torch.ones(16, 3)}), {},
                    "scale m.weight_scale has shape [16, 3], not [16, 2]"),
    # a scale of a dtype the method does not have
    "scale-dtype": (lambda t: t.update({"m.weight_scale": torch.ones(16, 2,
                                                                     dtype=torch.int32)}),
                    {}, "scale m.weight_scale is I32"),
    # a packed tensor whose width does not match its bits and logical shape
    "packed-width": (None, {"bits": 8}, "packed m.weight_packed has shape [16, 32], "
                                        "not [16, 64]"),
    # a packed tensor of the wrong dtype
    "packed-dtype": (lambda t: t.update({"m.weight_packed": torch.zeros(
        16, 32, dtype=torch.int64)}), {}, "packed m.weight_packed is I64"),
    # a descriptor naming a tensor the file lacks
    "missing-tensor": (None, {"components": {"packed": "m.weight_packed",
                                             "scale": "m.scale", "shape": "m.weight_shape"}},
                       "component scale names m.scale, which the checkpoint does not"),
    # a group size that does not divide
    "group-divides": (None, {"group_size": 100}, "group size 100 does not divide 256"),
    # a zero point of the wrong shape
    "zero-point-shape": (lambda t: t.update({"m.weight_zero_point": torch.zeros(
        2, 3, dtype=torch.int32)}),
        {"zero_point": "signed-packed-dim0",
         "components": {"packed": "m.weight_packed", "scale": "m.weight_scale",
                        "shape": "m.weight_shape", "zero_point": "m.weight_zero_point"}},
        "zero_point m.weight_zero_point has shape [2, 3], not [2, 2]"),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_malformed_group_is_a_layout_error(tmp_path, case):
    mutate, over, words = LAYOUT_CASES[case]
    t = w4_group()
    if mutate:
        mutate(t)
    path = write(tmp_path, t, {"m.weight": descriptor(**over)})
    e = refused(path, SafetensorQuantLayoutError, "quantized group m.weight", words)
    assert e.tensor_name == "m.weight"
    with pytest.raises(SafetensorQuantLayoutError):
        safe_open(path, "pt", dequantize=torch.float32)
    # the plain load does not look at groups
    assert sorted(load_file(path)) == sorted(t)


def test_weight_shape_values_disagree(tmp_path):
    t = w4_group()
    t["m.weight_shape"] = torch.tensor([16, 255])
    path = write(tmp_path, t, {"m.weight": descriptor()})
    refused(path, SafetensorQuantLayoutError, "weight_shape holds [16, 255]")


DESCRIPTOR_CASES = {
    "not-json": ("{", SafetensorQuantDescriptorError, "not JSON"),
    "no-groups": (json.dumps({"version": 1}), SafetensorQuantDescriptorError,
                  '"groups"'),
    "version": (json.dumps({"version": 2, "groups": {}}), SafetensorQuantDescriptorError,
                "version 2"),
    "method": (json.dumps({"version": 1, "groups": {"m.weight": descriptor(
        method="bnb-nf4")}}), SafetensorQuantUnsupportedError, "method 'bnb-nf4'"),
    "packing": (json.dumps({"version": 1, "groups": {"m.weight": descriptor(
        packing="int32-msb")}}), SafetensorQuantDescriptorError, "packing 'int32-msb'"),
    "bits-type": (json.dumps({"version": 1, "groups": {"m.weight": descriptor(
        bits="4")}}), SafetensorQuantDescriptorError, "'bits'"),
    "zero-point": (json.dumps({"version": 1, "groups": {"m.weight": descriptor(
        zero_point="unsigned")}}), SafetensorQuantDescriptorError, "zero_point"),
    "bits-range": (json.dumps({"version": 1, "groups": {"m.weight": descriptor(
        bits=9)}}), SafetensorQuantUnsupportedError, "9-bit"),
    "role": (json.dumps({"version": 1, "groups": {"m.weight": descriptor(
        components={"packed": "m.weight_packed", "scale": "m.weight_scale"})}}),
        SafetensorQuantDescriptorError, "needs components ['shape']"),
    "shared-component": (json.dumps({"version": 1, "groups": {
        "m.weight": descriptor(), "n.weight": descriptor()}}),
        SafetensorQuantLayoutError, "also belongs to group"),
}


@pytest.mark.parametrize("case", sorted(DESCRIPTOR_CASES))
def test_bad_descriptor(tmp_path, case):
    raw, cls, words = DESCRIPTOR_CASES[case]
    path = write(tmp_path, w4_group(), raw=raw)
    refused(path, cls, words)


def test_gptq_without_config_is_ambiguous(tmp_path):
    t = {"m.qweight": torch.zeros(32, 64, dtype=torch.int32),
         "m.qzeros": torch.zeros(2, 8, dtype=torch.int32),
         "m.scales": torch.ones(2, 64, dtype=torch.float16),
         "m.g_idx": torch.zeros(256, dtype=torch.int32)}
    e = refused(write(tmp_path, t), SafetensorQuantAmbiguousError, "the layout",
                "candidates:")
    assert e.candidates == ["gptq (zeros stored minus one)", "gptq_v2"]
    # with the config the same file loads
    write(tmp_path, t, config={"quant_method": "gptq", "bits": 4, "group_size": 128,
                               "checkpoint_format": "gptq"})
    assert load_file(os.path.join(tmp_path, "model.safetensors"),
                     dequantize=torch.float32)["m.weight"].shape == (64, 256)


def test_bit_width_ambiguous_for_narrow_rows(tmp_path):
    """8 columns: one int32 word holds them at 1, 2, 3 or 4 bits."""
    t = {"m.weight_packed": torch.zeros(4, 1, dtype=torch.int32),
         "m.weight_scale": torch.ones(4, 1, dtype=torch.bfloat16),
         "m.weight_shape": torch.tensor([4, 8])}
    e = refused(write(tmp_path, t), SafetensorQuantAmbiguousError, "the bit width")
    assert e.candidates == ["1 bits", "2 bits", "3 bits", "4 bits"]


def test_fp8_block_size_ambiguous_without_config(tmp_path):
    t = {"m.weight": torch.zeros(256, 256, dtype=torch.float8_e4m3fn),
         "m.weight_scale_inv": torch.ones(4, 4)}
    e = refused(write(tmp_path, t), SafetensorQuantAmbiguousError, "block size")
    assert "[64, 64]" in e.candidates
    write(tmp_path, t, config={"quant_method": "fp8", "weight_block_size": [64, 64]})
    assert load_file(os.path.join(tmp_path, "model.safetensors"),
                     dequantize=torch.float32)["m.weight"].shape == (256, 256)


def test_gptq_g_idx_out_of_range(tmp_path):
    t = {"m.qweight": torch.zeros(32, 64, dtype=torch.int32),
         "m.qzeros": torch.zeros(2, 8, dtype=torch.int32),
         "m.scales": torch.ones(2, 64, dtype=torch.float16),
         "m.g_idx": torch.full((256,), 2, dtype=torch.int32)}
    path = write(tmp_path, t, config={"quant_method": "gptq", "bits": 4,
                                      "group_size": 128})
    refused(path, SafetensorQuantLayoutError, "g_idx holds a group outside 0..1")


def test_missing_component_by_inference(tmp_path):
    t = {"m.qweight": torch.zeros(32, 64, dtype=torch.int32),
         "m.scales": torch.ones(2, 64, dtype=torch.float16)}
    refused(write(tmp_path, t, config={"quant_method": "gptq", "bits": 4}),
            SafetensorQuantLayoutError, "component m.qzeros is missing")


def test_mxfp4_scale_of_wrong_shape_by_inference(tmp_path):
    t = {"m.weight_packed": torch.zeros(8, 32, dtype=torch.uint8),
         "m.weight_scale": torch.zeros(8, 3, dtype=torch.uint8)}
    refused(write(tmp_path, t), SafetensorQuantLayoutError,
            "scale m.weight_scale has shape [8, 3], not [8, 2]")


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64, "bf16"])
def test_output_dtype_refused(tmp_path, dtype):
    path = write(tmp_path, w4_group(), {"m.weight": descriptor()})
    with pytest.raises(SafetensorValueError):
        load_file(path, dequantize=dtype)


def test_numpy_framework_refused(tmp_path):
    path = write(tmp_path, w4_group(), {"m.weight": descriptor()})
    with pytest.raises(SafetensorValueError):
        safe_open(path, "numpy", dequantize=torch.float32)


def test_every_quant_error_is_one_family():
    for cls in (SafetensorQuantLayoutError, SafetensorQuantDescriptorError,
                SafetensorQuantAmbiguousError, SafetensorQuantUnsupportedError):
        assert issubclass(cls, SafetensorQuantError)
        assert issubclass(cls, ValueError)


def test_random_component_bytes_never_crash(tmp_path):
    """Whatever the packed bytes and scales hold, a well-shaped group dequantizes
    (values are not checked, as for every dtype): no error, no crash."""
    r = np.random.default_rng(0)
    t = w4_group()
    t["m.weight_scale"] = torch.from_numpy(
        r.integers(0, 2**16, (16, 2), dtype=np.uint16).astype(np.int16)).view(
            torch.bfloat16)
    path = write(tmp_path, t, {"m.weight": descriptor()})
    assert load_file(path, dequantize=torch.float32)["m.weight"].shape == (16, 256)


# -- mutated groups (shared/ROBUSTNESS.md "Quantized groups"): any shape, dtype or missing
# component of a valid group of each kind is either dequantized or refused with a
# SafetensorQuantError; nothing else escapes, nothing crashes.

_DTYPES = [torch.int32, torch.int64, torch.uint8, torch.int8, torch.float16,
           torch.bfloat16, torch.float32, torch.float8_e4m3fn]


def _groups():
    gptq = {"m.qweight": torch.zeros(32, 64, dtype=torch.int32),
            "m.qzeros": torch.zeros(2, 8, dtype=torch.int32),
            "m.scales": torch.ones(2, 64, dtype=torch.float16),
            "m.g_idx": torch.zeros(256, dtype=torch.int32)}
    awq = {"m.qweight": torch.zeros(256, 8, dtype=torch.int32),
           "m.qzeros": torch.zeros(2, 8, dtype=torch.int32),
           "m.scales": torch.ones(2, 64, dtype=torch.float16)}
    fp8 = {"m.weight": torch.zeros(256, 256, dtype=torch.float8_e4m3fn),
           "m.weight_scale_inv": torch.ones(2, 2)}
    nvfp4 = {"m.weight_packed": torch.zeros(16, 32, dtype=torch.uint8),
             "m.weight_scale": torch.ones(16, 4).to(torch.float8_e4m3fn),
             "m.weight_global_scale": torch.ones(1)}
    gpt_oss = {"e.w_blocks": torch.zeros(2, 8, 2, 16, dtype=torch.uint8),
               "e.w_scales": torch.full((2, 8, 2), 127, dtype=torch.uint8)}
    st = json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16",
                     "shape": [16, 16], "nested_blocksize": 256, "nested_offset": 0.5})
    bnb = {"b.weight": torch.zeros(128, 1, dtype=torch.uint8),
           "b.weight.absmax": torch.zeros(4, dtype=torch.uint8),
           "b.weight.quant_map": torch.linspace(-1, 1, 16),
           "b.weight.nested_absmax": torch.ones(1),
           "b.weight.nested_quant_map": torch.linspace(-1, 1, 256),
           "b.weight.quant_state.bitsandbytes__nf4": torch.tensor(list(st.encode()),
                                                                  dtype=torch.uint8)}
    return {"bnb": (bnb, None), "w4": (w4_group(), None), "gptq": (gptq, {"quant_method": "gptq", "bits": 4,
                                                      "group_size": 128}),
            "awq": (awq, {"quant_method": "awq", "bits": 4, "group_size": 128}),
            "fp8": (fp8, None), "nvfp4": (nvfp4, None), "gpt-oss": (gpt_oss, None)}


def _mutated(tensors, name, kind, dims, dtype):
    t = dict(tensors)
    if kind == "drop":
        del t[name]
    elif kind == "shape":
        t[name] = torch.zeros(dims, dtype=t[name].dtype)
    else:
        t[name] = torch.zeros(t[name].shape, dtype=dtype)
    return t


def test_mutated_groups_are_dequantized_or_refused(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    groups = _groups()

    @settings(max_examples=1000, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(sorted(groups)), st.integers(0, 10), st.sampled_from(
        ["drop", "shape", "dtype"]), st.lists(st.sampled_from(
            [0, 1, 2, 3, 7, 8, 16, 31, 32, 64, 128, 256]), max_size=4).filter(
            lambda d: math.prod(d) <= 1 << 18),
        st.sampled_from(_DTYPES))
    def check(which, k, kind, dims, dtype):
        tensors, config = groups[which]
        name = sorted(tensors)[k % len(tensors)]
        path = write(tmp_path, _mutated(tensors, name, kind, dims, dtype), config=config)
        if config is None and os.path.exists(tmp_path / "config.json"):
            os.remove(tmp_path / "config.json")
        try:
            out = load_file(path, dequantize=torch.float32)
        except SafetensorQuantError:
            return
        for v in out.values():
            assert isinstance(v, torch.Tensor)

    check()
