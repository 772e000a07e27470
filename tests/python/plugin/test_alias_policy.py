"""The one aliasing policy (docs/RECORD.md, "Shared memory") on every save
path: save_file / save, torch.save, save_sharded and convert."""

from __future__ import annotations

import json
import os

import pytest
import torch

import torch_safetensors
from torch_safetensors import _alias, _cli
from torch_safetensors.errors import (
    SafetensorOverlapError,
    SafetensorSharedTensorError,
    SafetensorValueError,
)
from torch_safetensors.sharded import load_sharded, save_sharded
from torch_safetensors.torch import load, load_file, safe_open, save, save_file


def _tied():
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return {"embed": w, "head": w, "bias": torch.ones(3)}


def _shares(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() \
        and a.data_ptr() == b.data_ptr()


def test_resolve_policies():
    w = torch.zeros(8)
    ts = [w, w, w[2:6], torch.ones(2), w.view(2, 4)]
    labels = ["a", "b", "c", "d", "e"]
    assert _alias.resolve(labels, ts, "copy") == [0, 1, 2, 3, 4]
    assert _alias.resolve(labels, ts, "tie") == [0, 0, 2, 3, 4]
    with pytest.raises(SafetensorSharedTensorError, match="share memory"):
        _alias.resolve(labels, ts, "error")
    with pytest.raises(SafetensorOverlapError, match="c overlaps a"):
        _alias.resolve(labels, ts, "tie", strict=True)
    # disjoint views of one storage never alias
    assert _alias.resolve(["x", "y"], [w[:4], w[4:]], "error") == [0, 1]
    for bad in ("ties", None, 1):
        with pytest.raises(SafetensorValueError, match="policy"):
            _alias.resolve(labels, ts, bad)


def test_overlap_errors_stay_type_errors():
    assert issubclass(SafetensorOverlapError, TypeError)
    assert issubclass(SafetensorOverlapError, SafetensorSharedTensorError)


def test_save_file_policies(tmp_path, ref):
    p = tmp_path / "m.safetensors"
    with pytest.raises(SafetensorSharedTensorError, match="share memory"):
        save_file(_tied(), p)  # the reference's default
    assert not p.exists()

    save_file(_tied(), p, policy="tie")
    with safe_open(p, framework="pt") as f:
        assert sorted(f.keys()) == ["bias", "embed"]
        assert f.metadata() == {"torch_safetensors.alias.head": "embed"}
    assert sorted(ref.load_file(p)) == ["bias", "embed"]
    back = load_file(p)
    assert sorted(back) == ["bias", "embed", "head"]
    assert _shares(back["embed"], back["head"])
    assert torch.equal(back["head"], _tied()["head"])

    save_file(_tied(), p, policy="copy")
    assert sorted(ref.load_file(p)) == ["bias", "embed", "head"]
    back = load_file(p)
    assert not _shares(back["embed"], back["head"])
    assert torch.equal(back["embed"], back["head"])


def test_save_bytes_policies():
    with pytest.raises(SafetensorSharedTensorError):
        save(_tied())
    back = load(save(_tied(), policy="tie"))
    assert sorted(back) == ["bias", "embed", "head"]
    assert _shares(back["embed"], back["head"])
    assert sorted(load(save(_tied(), policy="copy"))) == ["bias", "embed", "head"]


def test_partial_overlap_is_copied_by_tie(tmp_path):
    w = torch.arange(8, dtype=torch.float32)
    p = tmp_path / "m.safetensors"
    save_file({"w": w, "tail": w[4:]}, p, policy="tie")
    back = load_file(p)
    assert sorted(back) == ["tail", "w"]
    assert torch.equal(back["tail"], w[4:])
    assert not _shares(back["w"], back["tail"])


def test_torch_save_policies(tmp_path):
    p = tmp_path / "m.safetensors"
    torch.save(_tied(), p, format="safetensors")  # tie
    back = torch.load(p)
    assert _shares(back["embed"], back["head"])
    assert sorted(load_file(p)) == ["bias", "embed"]
    torch.save(_tied(), p, format="safetensors", policy="copy")
    back = torch.load(p)
    assert not _shares(back["embed"], back["head"])
    assert sorted(load_file(p)) == ["bias", "embed", "head"]
    with pytest.raises(SafetensorSharedTensorError):
        torch.save(_tied(), p, format="safetensors", policy="error")
    with pytest.raises(SafetensorValueError, match="policy"):
        torch.save(_tied(), p, format="safetensors", policy="bogus")
    with pytest.raises(TypeError, match="policy="):
        torch.save(_tied(), tmp_path / "x.pt", policy="copy")


def test_save_sharded_ties_once_and_loads_shared(tmp_path, ref):
    sd = {f"layer.{k}": torch.full((256,), float(k)) for k in range(4)}
    sd["lm_head"] = sd["layer.0"]
    save_sharded(sd, tmp_path, max_shard_size=2048)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == [f"layer.{k}" for k in range(4)]
    assert index["metadata"]["total_size"] == 4 * 1024
    for fname in set(index["weight_map"].values()):
        with safe_open(tmp_path / fname, framework="pt") as f:
            assert f.metadata()["torch_safetensors.alias.lm_head"] == "layer.0"
    back = load_sharded(tmp_path)
    assert sorted(back) == sorted(sd)
    assert _shares(back["layer.0"], back["lm_head"])

    save_sharded(sd, tmp_path, max_shard_size=2048, policy="copy")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert "lm_head" in index["weight_map"]
    with pytest.raises(SafetensorSharedTensorError):
        save_sharded(sd, tmp_path, max_shard_size=2048, policy="error")


def test_convert_ties_once(tmp_path):
    sd = {"a": torch.ones(4), "b": torch.zeros(4)}
    sd["c"] = sd["a"]
    src = tmp_path / "m.bin"
    torch.save(sd, src)
    out = tmp_path / "out"
    assert _cli.main(["convert", str(src), str(out), "--max-shard-size", "20",
                      "--no-progress"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == ["a", "b"]
    back = load_sharded(out)
    assert sorted(back) == ["a", "b", "c"]
    assert _shares(back["a"], back["c"])


def test_alias_key_is_documented():
    here = os.path.dirname(__file__)
    doc = open(os.path.join(here, "..", "..", "..", "docs", "RECORD.md"),
               encoding="utf-8").read()
    assert _alias.ALIAS_KEY_PREFIX in doc
    for policy in _alias.POLICIES:
        assert f'`"{policy}"`' in doc
    assert torch_safetensors.SafetensorOverlapError is SafetensorOverlapError


def test_torch_load_of_a_tied_save_file(tmp_path):
    p = tmp_path / "m.safetensors"
    save_file(_tied(), p, policy="tie")
    back = torch.load(p)
    assert sorted(back) == ["bias", "embed", "head"]
    assert _shares(back["embed"], back["head"])


def test_open_sharded_gives_tied_names_lazily(tmp_path):
    from torch_safetensors.sharded import open_sharded

    sd = {"a": torch.ones(256), "b": torch.zeros(256)}
    sd["tied"] = sd["a"]
    for limit in (2048, 10**9):  # shards with an index, and one plain file
        save_sharded(sd, tmp_path / str(limit), max_shard_size=limit)
        with open_sharded(tmp_path / str(limit)) as ckpt:
            assert "tied" not in ckpt.weight_map
            assert ckpt["tied"].data_ptr() == ckpt["a"].data_ptr()
        back = load_sharded(tmp_path / str(limit))
        assert sorted(back) == ["a", "b", "tied"]
        assert _shares(back["a"], back["tied"])
