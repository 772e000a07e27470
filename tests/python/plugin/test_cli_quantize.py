"""`python -m torch_safetensors quantize`: a file and a sharded checkpoint
quantized in a real subprocess; the result is what save_file(quantize=)
writes for the same tensors, bit for bit (test_quant_write.py reads that
with compressed-tensors' own decompressors), and loads back with
dequantize=."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from torch_safetensors.sharded import load_sharded, save_sharded
from torch_safetensors.torch import load_file, safe_open, save_file


def _run(*args):
    return subprocess.run([sys.executable, "-m", "torch_safetensors", "quantize",
                           *map(str, args)], capture_output=True, text=True, timeout=300)


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(3):
        sd[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(256, 256, generator=g)
        sd[f"model.layers.{i}.mlp.up_proj.bias"] = torch.randn(256, generator=g)
    sd["model.embed_tokens.weight"] = torch.randn(64, 256, generator=g)
    sd["lm_head.weight"] = torch.randn(64, 256, generator=g)
    return sd


def _bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("scheme", ["W4A16", "FP8_BLOCK"])
def test_file_is_what_save_file_quantize_writes(tmp_path, scheme):
    sd = _model()
    src, dst, ref = (tmp_path / n for n in ("m.safetensors", "q.safetensors", "r.safetensors"))
    save_file(sd, src, {"format": "pt"})
    r = _run(src, dst, "--scheme", scheme.lower(), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(dst)]
    save_file(sd, ref, {"format": "pt"}, quantize=scheme)
    got, want = load_file(dst), load_file(ref)
    assert sorted(got) == sorted(want)
    assert all(torch.equal(_bytes(got[k]), _bytes(want[k])) for k in want)
    with safe_open(dst, "pt") as f, safe_open(ref, "pt") as g:
        assert f.metadata() == g.metadata()
    # the embeddings and lm_head stay as they were; the MLP weights do not
    assert torch.equal(got["lm_head.weight"], sd["lm_head.weight"])
    q = got.get("model.layers.0.mlp.up_proj.weight")   # FP8 keeps the name
    assert q is None if scheme == "W4A16" else q.dtype == torch.float8_e4m3fn
    back = load_file(dst, dequantize=torch.float32)
    w = sd["model.layers.1.mlp.up_proj.weight"]
    err = (back["model.layers.1.mlp.up_proj.weight"] - w).abs().max().item()
    assert 0 < err < 0.1 * w.abs().max().item()


def test_sharded_directory(tmp_path):
    sd = _model(1)
    src, dst = tmp_path / "src", tmp_path / "dst"
    save_sharded(sd, src, max_shard_size=300_000)
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (src / "tokenizer.json").write_text("{}")
    shards = sorted(n for n in os.listdir(src) if n.endswith(".safetensors"))
    assert len(shards) >= 3
    r = _run(src, dst, "--scheme", "W8A16", "--group-size", "64",
             "--ignore", "re:.*layers\\.2\\..*", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sorted(n for n in os.listdir(dst) if n.endswith(".safetensors")) == shards
    assert (dst / "tokenizer.json").read_text() == "{}"
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["config_groups"]["group_0"]["weights"]["group_size"] == 64
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    stored = {}
    for n in shards:
        stored.update(load_file(dst / n))
    assert index["weight_map"].keys() == stored.keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in stored.values())
    assert "model.layers.0.mlp.up_proj.weight_packed" in stored
    assert torch.equal(stored["model.layers.2.mlp.up_proj.weight"],
                       sd["model.layers.2.mlp.up_proj.weight"])  # ignored
    back = load_sharded(dst, dequantize=torch.float32)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert (back[k] - v).abs().max().item() <= 0.02 * v.abs().max().item(), k


@pytest.mark.parametrize("args,message", [
    (["--scheme", "W4A16", "--group-size", "0"], "group_size"),
    (["--scheme", "FP8", "--group-size", "64"], "group_size"),
])
def test_bad_options_are_refused_before_writing(tmp_path, args, message):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    save_file(_model(), src)
    r = _run(src, dst, *args)
    assert r.returncode != 0 and message in r.stderr
    assert not dst.exists()


def test_refusals(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file(_model(), src)
    r = _run(src, tmp_path / "q.safetensors", "--scheme", "W3A16")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    d = tmp_path / "src"
    save_sharded(_model(), d, max_shard_size=300_000)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    r = _run(d, busy, "--scheme", "W4A16")
    assert r.returncode == 2 and "not an empty directory" in r.stderr
    assert os.listdir(busy) == ["x"]
    r = _run(tmp_path / "missing.safetensors", tmp_path / "o.safetensors", "--scheme", "FP8")
    assert r.returncode == 2 and "no such file" in r.stderr
    q = tmp_path / "q.safetensors"
    assert _run(src, q, "--scheme", "FP8").returncode == 0
    r = _run(q, tmp_path / "qq.safetensors", "--scheme", "FP8")  # already quantized
    assert r.returncode == 1 and "quantize" in r.stderr
