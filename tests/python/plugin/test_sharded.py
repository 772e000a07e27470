"""Sharded checkpoints: Hugging Face layout, max_shard_size, loading from an
index or a directory, round trips, and transformers' own shards."""

from __future__ import annotations

import json
import os

import pytest
import torch

import torch_safetensors.torch as st
from torch_safetensors.errors import (
    SafetensorError,
    SafetensorFileNotFoundError,
    SafetensorKeyError,
)
from torch_safetensors.sharded import (
    load_sharded,
    open_sharded,
    parse_size,
    save_sharded,
)

from _ahelpers import assert_same, assert_same_dict, rand


def _state(n=10, size=1000):
    return {f"layer.{k}.weight": rand(torch.float32, (size,), seed=k)
            for k in range(n)}  # 4000 bytes each


def test_parse_size():
    assert parse_size(123) == 123
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("200MB") == 200 * 10**6
    assert parse_size("1GiB") == 2**30
    assert parse_size("10kib") == 10240
    for bad in ("", "5XB", "-1", 0, -5, True, 1.5):
        with pytest.raises(SafetensorError):
            parse_size(bad)


def test_save_writes_hf_layout(tmp_path, ref):
    state = _state()
    names = save_sharded(state, tmp_path, max_shard_size=10_000)
    # 4000 bytes each, at most 10000 per shard: two per shard.
    shards = [f"model-{k:05d}-of-00005.safetensors" for k in range(1, 6)]
    assert names == shards + ["model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 10 * 4000
    assert set(index["weight_map"]) == set(state)
    assert set(index["weight_map"].values()) == set(shards)
    seen = {}
    for shard in shards:
        size = os.path.getsize(tmp_path / shard)
        with st.safe_open(tmp_path / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            data = sum(f.get_tensor(k).numel() * 4 for k in f.keys())
            assert data <= 10_000
            for k in f.keys():
                assert index["weight_map"][k] == shard
            seen.update(f.get_tensors())
        # The reference reads every shard.
        assert set(ref.load_file(str(tmp_path / shard))) == \
            {k for k, v in index["weight_map"].items() if v == shard}
        assert size > data
    assert_same_dict(state, seen)


def test_round_trip_from_index_and_directory(tmp_path):
    state = _state()
    state["big"] = rand(torch.bfloat16, (20_000,))  # larger than a shard
    state["scalar"] = torch.tensor(3, dtype=torch.int64)
    state["t"] = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous
    save_sharded(state, tmp_path, max_shard_size="12kB")
    index = tmp_path / "model.safetensors.index.json"
    want = {k: v.contiguous() for k, v in state.items()}
    assert_same_dict(want, load_sharded(index))
    assert_same_dict(want, load_sharded(tmp_path))
    assert_same_dict(want, load_sharded(str(tmp_path), backend="pread"))
    assert list(load_sharded(index)) == list(json.loads(
        index.read_text())["weight_map"])
    with open_sharded(tmp_path) as ckpt:
        assert len(ckpt) == len(state) and "big" in ckpt
        assert_same(ckpt["layer.3.weight"], state["layer.3.weight"])
        assert ckpt.get_slice("big")[5:9].shape == (4,)
        assert ckpt.metadata() == {"format": "pt"}
        with pytest.raises(SafetensorKeyError):
            ckpt["missing"]
    # The big tensor sits alone in its shard.
    with open_sharded(index) as ckpt:
        shard = ckpt.weight_map["big"]
        assert [k for k, v in ckpt.weight_map.items() if v == shard] == ["big"]


def test_one_shard_is_a_plain_file(tmp_path):
    state = _state(3)
    assert save_sharded(state, tmp_path) == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert_same_dict(state, load_sharded(tmp_path))
    assert_same_dict(state, load_sharded(tmp_path / "model.safetensors"))


def test_resave_removes_stale_shards(tmp_path):
    save_sharded(_state(), tmp_path, max_shard_size=4000)
    assert len(list(tmp_path.glob("model-*"))) == 10
    save_sharded(_state(), tmp_path, max_shard_size=20_000)
    assert len(list(tmp_path.glob("model-*"))) == 2
    assert_same_dict(_state(), load_sharded(tmp_path))


def test_directory_without_index_unions_files(tmp_path):
    st.save_file({"a": torch.ones(2)}, tmp_path / "part1.safetensors")
    st.save_file({"b": torch.zeros(3)}, tmp_path / "part2.safetensors")
    out = load_sharded(tmp_path)
    assert set(out) == {"a", "b"}
    st.save_file({"a": torch.ones(1)}, tmp_path / "part3.safetensors")
    with pytest.raises(SafetensorError, match="in both"):
        load_sharded(tmp_path)


def test_bad_indexes(tmp_path):
    save_sharded(_state(), tmp_path, max_shard_size=10_000)
    index = tmp_path / "model.safetensors.index.json"
    good = json.loads(index.read_text())
    # A shard the index names does not exist.
    os.remove(tmp_path / "model-00002-of-00005.safetensors")
    with pytest.raises(SafetensorFileNotFoundError):
        load_sharded(index)
    # Path traversal in a shard name.
    bad = dict(good, weight_map={"x": "../outside.safetensors"})
    index.write_text(json.dumps(bad))
    with pytest.raises(SafetensorError, match="plain file name"):
        load_sharded(index)
    # The index names a tensor its shard does not hold.
    bad = dict(good, weight_map={"ghost": "model-00001-of-00005.safetensors"})
    index.write_text(json.dumps(bad))
    with pytest.raises(SafetensorKeyError):
        load_sharded(index)
    index.write_text("{not json")
    with pytest.raises(SafetensorError):
        load_sharded(index)
    with pytest.raises(SafetensorError):
        load_sharded(tmp_path / "empty-dir-that-does-not-exist.json")


def test_transformers_shards_load_and_ours_load_in_transformers(tmp_path):
    import transformers

    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2,
                                     vocab_size=128, n_positions=32)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    theirs = tmp_path / "theirs"
    model.save_pretrained(theirs, max_shard_size="20KB")
    assert (theirs / "model.safetensors.index.json").exists()
    loaded = load_sharded(theirs)
    sd = model.state_dict()
    assert loaded.keys() <= sd.keys()
    for k, v in loaded.items():
        assert torch.equal(v, sd[k]), k
    # Our shards, in place of theirs, load with from_pretrained.
    ours = tmp_path / "ours"
    model.save_pretrained(ours)  # config.json
    for f in ours.glob("*.safetensors*"):
        f.unlink()
    save_sharded(loaded, ours, max_shard_size="20KB")
    again = transformers.GPT2LMHeadModel.from_pretrained(ours).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_progress_bars_reach_the_total(tmp_path, capsys):
    """save_sharded and load_sharded show one tqdm bar each when asked (over
    the bytes written, over the shards read), ending at exactly the total;
    never when told not to, nor by default off a terminal."""
    sd = {f"w{k}": torch.full((64,), float(k)) for k in range(6)}  # 256 B each
    save_sharded(sd, tmp_path / "a", max_shard_size=512, progress=True)
    err = capsys.readouterr().err
    assert "saving shards" in err and "100%" in err
    assert "1.50k/1.50k" in err  # 1,536 bytes, every one reported
    out = load_sharded(tmp_path / "a", progress=True)
    err = capsys.readouterr().err
    assert "loading shards" in err and "3/3" in err and "100%" in err
    assert all(torch.equal(out[k], v) for k, v in sd.items())
    save_sharded(sd, tmp_path / "b", max_shard_size=512, progress=False)
    load_sharded(tmp_path / "b", progress=False)
    save_sharded(sd, tmp_path / "c", max_shard_size=512)  # stderr: no tty
    load_sharded(tmp_path / "c")
    assert capsys.readouterr().err == ""
