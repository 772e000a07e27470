"""The C dequantization kernels (st_dequantize, through _C.dequantize) against the
torch-operations path of quant.py, bit for bit: every layout they cover, every output
dtype, the row split across threads, the float -> BF16 / F16 rounding over a wide range
of magnitudes (subnormals, overflow, NaN), and st_dequantize's refusals."""

import json

import numpy as np
import pytest
import torch

import safetensors.torch

import _quant_ct as C
from test_quant_ct import CASES
from test_quant_formats import fp8_block_case, gpt_oss_case, modelopt_case
from torch_safetensors import _C, quant
from torch_safetensors.torch import load_file

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def both_paths(path, dtype, monkeypatch):
    fast = load_file(path, dequantize=dtype)
    with monkeypatch.context() as mp:
        mp.setattr(quant, "USE_KERNELS", False)
        slow = load_file(path, dequantize=dtype)
    return fast, slow


def assert_same_bits(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        ia = a[k].view(torch.int16 if a[k].element_size() == 2 else torch.int32)
        ib = b[k].view(torch.int16 if b[k].element_size() == 2 else torch.int32)
        assert torch.equal(ia, ib), k


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_compressed_tensors_layouts(tmp_path, case, dtype, monkeypatch):
    fmt, args = CASES[case]
    path, _ = C.make_checkpoint(str(tmp_path), args, fmt, seed=11)
    assert_same_bits(*both_paths(path, dtype, monkeypatch))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_block_modelopt_and_gpt_oss(tmp_path, dtype, monkeypatch):
    w, s = fp8_block_case(200, 330, seed=3)
    we, se = fp8_block_case(256, 128, seed=4, e8m0=True)
    sd = {"a.weight": w, "a.weight_scale_inv": s, "b.weight": we, "b.weight_scale_inv": se}
    sd.update({f"c.{k}": v for k, v in modelopt_case(5, scale_2=0.0123).items()})
    sd["d.gate_up_proj_blocks"], sd["d.gate_up_proj_scales"] = gpt_oss_case(6)
    path = str(tmp_path / "model.safetensors")
    safetensors.torch.save_file(sd, path)
    assert_same_bits(*both_paths(path, dtype, monkeypatch))


def test_rows_split_across_threads(tmp_path, monkeypatch):
    """A group of 2M values (over the split threshold) in each kernel layout."""
    monkeypatch.setattr(quant, "_SPLIT_MIN", 1 << 16)
    big = {"m": (1024, 2048)}
    fmt, args = CASES["w4-group128-asym"]
    path, _ = C.make_checkpoint(str(tmp_path), args, fmt, shapes=big)
    assert_same_bits(*both_paths(path, torch.bfloat16, monkeypatch))


def raw(scale, q, dtype_code, rows, cols, zero=None, bits=8, element=None,
        row_range=None, dst=None, scale_rows=1, scale_cols=None):
    r0, r1 = row_range or (0, rows)
    if dst is None:
        dst = np.empty((r1 - r0, cols), dtype=np.float32 if dtype_code == 17 else np.int16)
    _C.dequantize(element or _C.QUANT_INT_PACKED, bits, dtype_code, rows, cols,
                  scale_rows, cols if scale_cols is None else scale_cols, q, scale, zero,
                  r0, r1, dst)
    return dst


@pytest.mark.parametrize("dtype,code", [(torch.bfloat16, 14), (torch.float16, 13)])
def test_rounding_to_16_bits_matches_torch(dtype, code):
    """(q - 128) * s for every byte q and 400 scales from 2^-40 to 2^30 (F16
    subnormals, underflow to zero, overflow to infinity, ties), a NaN and an infinite
    scale: the same bits as torch's float32 -> dtype conversion."""
    rng = np.random.default_rng(0)
    s = np.exp2(rng.uniform(-40, 30, 400)).astype(np.float32)
    s[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0 ** -24, 2.0 ** -25, 65504 / 127]
    q = np.tile(np.arange(256, dtype=np.uint8), (400, 1))
    got = raw(s, q, code, 400, 256)
    want = ((torch.arange(256, dtype=torch.float32) - 128)[None, :]
            * torch.from_numpy(s)[:, None]).to(dtype).view(torch.int16).numpy()
    nan = np.isnan(torch.from_numpy(want).view(dtype).float().numpy())
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(torch.from_numpy(got).view(dtype).float().numpy()[nan]).all()


def test_st_dequantize_refusals():
    q = np.zeros((4, 8), dtype=np.uint8)
    s = np.ones(4, dtype=np.float32)
    raw(s, q, 17, 4, 8)                                              # the baseline
    bad = [dict(rows=5), dict(dtype_code=3), dict(bits=9), dict(bits=0),
           dict(scale=np.ones(3, dtype=np.float32)), dict(zero=np.ones(2, np.float32)),
           dict(row_range=(3, 5)),
           dict(row_range=(3, 2), dst=np.empty((1, 8), np.float32)), dict(element=99),
           dict(element=_C.QUANT_FP4_E2M1, bits=0, cols=7),
           dict(dst=np.empty((4, 7), dtype=np.float32)), dict(scale_cols=0)]
    for over in bad:
        kw = dict(scale=s, q=q, dtype_code=17, rows=4, cols=8)
        kw.update(over)
        with pytest.raises(ValueError, match="st_dequantize"):
            raw(**kw)


@pytest.mark.parametrize("shape", [(0, 128), (16, 0)])
def test_empty_groups(tmp_path, shape, monkeypatch):
    out, inn = shape
    sd = {"m.weight_packed": torch.zeros(out, -(-inn * 4 // 32), dtype=torch.int32),
          "m.weight_scale": torch.ones(out, 1, dtype=torch.bfloat16),
          "m.weight_shape": torch.tensor([out, inn]),
          "f.weight": torch.zeros(out, inn, dtype=torch.float8_e4m3fn),
          "f.weight_scale": torch.ones(out, 1)}
    path = str(tmp_path / "model.safetensors")
    safetensors.torch.save_file(sd, path)
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "compressed-tensors", "config_groups": {"g": {
            "targets": ["Linear"], "weights": {"num_bits": 4, "strategy": "channel"}}}}}))
    fast, slow = both_paths(path, torch.bfloat16, monkeypatch)
    assert fast["m.weight"].shape == slow["m.weight"].shape == shape
    assert fast["f.weight"].shape == slow["f.weight"].shape == shape
