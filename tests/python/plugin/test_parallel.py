"""torch_safetensors.parallel: plans, layout helpers, sources, dtypes, byte
counters and errors, each shard checked bit for bit against slicing the
full tensor that the reference package (safetensors 0.8.0) loads; world 2
and 4 for real with gloo (cooperative loading)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from torch_safetensors import _C
from torch_safetensors.errors import (SafetensorError, SafetensorKeyError,
                                      SafetensorValueError)
from torch_safetensors.parallel import (
    Experts, Fused, ParallelDestinationError, ParallelDimError,
    ParallelGroupError,
    ParallelIndivisibleError, ParallelMissingTensorError, ParallelPlanError,
    ParallelRankError, ParallelSplitError, ParallelSubByteError,
    ParallelUnmatchedError, PipelineStage, Shard, ShardPlan, Take,
    column_parallel, expert_range, fused_qkv, gate_up, layer_range,
    load_parallel, moe_experts, row_parallel, vocab_parallel)
from torch_safetensors.sharded import save_sharded

from _ahelpers import DTYPES, rand

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "_parallel_child.py")

#: The engine's chunk (ENGINE_DEFAULT_CHUNK in csrc/io/engine.c): the slack
#: of the issue's bound "at most 1/W of the tensor bytes plus one chunk".
CHUNK = 8 << 20


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    want = want.contiguous()
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.numel():
        assert torch.equal(got.reshape(-1).view(torch.uint8),
                           want.reshape(-1).view(torch.uint8))


def _ref(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _save(tensors: dict, path) -> str:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return str(path)


def _chunks(t: torch.Tensor, world: int, dim: int):
    per = t.shape[dim] // world
    return [t.narrow(dim, r * per, per) for r in range(world)]


# --------------------------------------------------------------------------
# A small Llama-like checkpoint written by the reference
# --------------------------------------------------------------------------

H, NH, NKV, HD, INTER, VOCAB, LAYERS = 16, 4, 2, 4, 24, 50, 4


def _llama_like(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"model.embed_tokens.weight": r(VOCAB, H)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": r(H),
            p + "self_attn.qkv_proj.weight": r((NH + 2 * NKV) * HD, H),
            p + "self_attn.qkv_proj.bias": r((NH + 2 * NKV) * HD),
            p + "self_attn.o_proj.weight": r(H, NH * HD),
            p + "mlp.gate_up_proj.weight": r(2 * INTER, H),
            p + "mlp.down_proj.weight": r(H, INTER),
        })
    sd["model.norm.weight"] = r(H)
    sd["lm_head.weight"] = r(VOCAB, H)
    return sd


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    sd = _llama_like()
    return _save(sd, d / "model.safetensors"), sd


def _llama_plan(rank, world, **kw):
    return ShardPlan(
        fused_qkv("*.qkv_proj", num_heads=NH, num_kv_heads=NKV, head_dim=HD)
        + row_parallel("*.o_proj", "*.down_proj", bias=False)
        + gate_up("*.gate_up_proj", bias=False)
        + vocab_parallel("model.embed_tokens", "lm_head"),
        rank=rank, world_size=world, **kw)


def _want_llama(name: str, full: torch.Tensor, rank: int, world: int):
    if "qkv_proj" in name:
        q, k, v = full.split([NH * HD, NKV * HD, NKV * HD])
        if NKV % world == 0:
            kk, vv = _chunks(k, world, 0)[rank], _chunks(v, world, 0)[rank]
        else:  # fewer kv heads than ranks: each kv head on W / NKV ranks
            u = rank // (world // NKV)
            kk, vv = k[u * HD:(u + 1) * HD], v[u * HD:(u + 1) * HD]
        return torch.cat([_chunks(q, world, 0)[rank], kk, vv])
    if "o_proj" in name or "down_proj" in name:
        return _chunks(full, world, 1)[rank]
    if "gate_up" in name:
        gate, up = full.chunk(2)
        return torch.cat([_chunks(gate, world, 0)[rank],
                          _chunks(up, world, 0)[rank]])
    if "embed_tokens" in name or "lm_head" in name:
        return full.chunk(world)[rank] if rank < len(full.chunk(world)) \
            else full[:0]
    return full


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_llama_layout_every_rank(llama, world, backend):
    """Fused QKV with GQA (kv heads replicated at world 4), gate/up halves,
    row-parallel, vocab-parallel with a vocabulary that does not divide."""
    path, _ = llama
    ref = _ref(path)
    for rank in range(world):
        out = load_parallel(path, _llama_plan(rank, world), backend=backend)
        assert set(out) == set(ref)
        for name, full in ref.items():
            _same(out[name], _want_llama(name, full, rank, world))


def test_vocab_chunk_matches_torch_chunk(llama):
    path, sd = llama
    world = 8  # 50 rows: chunk gives 7 x 7 and one of 1
    got = [load_parallel(path, ShardPlan(vocab_parallel("lm_head"),
                                         rank=r, world_size=world,
                                         default="skip"))["lm_head.weight"]
           for r in range(world)]
    want = list(_ref(path)["lm_head.weight"].chunk(world))
    want += [want[0][:0]] * (world - len(want))
    for a, b in zip(got, want):
        _same(a, b)
    split = [load_parallel(path, ShardPlan(
        vocab_parallel("lm_head", uneven="split"), rank=r, world_size=world,
        default="skip"))["lm_head.weight"] for r in range(world)]
    for a, b in zip(split, _ref(path)["lm_head.weight"].tensor_split(world)):
        _same(a, b)


def test_column_parallel_both_layouts(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {"lin.weight": torch.randn(12, 5, generator=g),
          "lin.bias": torch.randn(12, generator=g),
          "conv.weight": torch.randn(5, 12, generator=g),  # GPT-2 Conv1D
          "conv.bias": torch.randn(12, generator=g),
          "rowc.weight": torch.randn(12, 5, generator=g),
          "rowc.bias": torch.randn(5, generator=g)}
    path = _save(sd, tmp_path / "m.safetensors")
    ref = _ref(path)
    for r in range(3):
        plan = ShardPlan(column_parallel("lin")
                         + column_parallel("conv", transposed=True)
                         + row_parallel("rowc", transposed=True),
                         rank=r, world_size=3)
        out = load_parallel(path, plan)
        _same(out["lin.weight"], _chunks(ref["lin.weight"], 3, 0)[r])
        _same(out["lin.bias"], _chunks(ref["lin.bias"], 3, 0)[r])
        _same(out["conv.weight"], _chunks(ref["conv.weight"], 3, 1)[r])
        _same(out["conv.bias"], _chunks(ref["conv.bias"], 3, 0)[r])
        _same(out["rowc.weight"], _chunks(ref["rowc.weight"], 3, 0)[r])
        _same(out["rowc.bias"], ref["rowc.bias"])


def test_fused_on_inner_dim_and_uneven_blocks(tmp_path):
    """GPT-2's c_attn ([in, 3 * out], fused on dim 1, through a regex), a
    3-D tensor fused on its last dim, and explicit uneven per-rank sizes
    inside a block."""
    g = torch.Generator().manual_seed(2)
    sd = {"h.0.attn.c_attn.weight": torch.randn(4, 18, generator=g),
          "h.0.attn.c_attn.bias": torch.randn(18, generator=g),
          "blk": torch.randn(3, 4, 18, generator=g),
          "x": torch.randn(10, 3, generator=g)}
    path = _save(sd, tmp_path / "m.safetensors")
    ref = _ref(path)
    for r in range(2):
        plan = ShardPlan(
            fused_qkv(re.compile(r"h\.\d+\.attn\.c_attn"), num_heads=2,
                      head_dim=3, transposed=True)
            + [("blk", Fused(-1, blocks=3)),
               ("x", Fused(0, blocks=[(1, 3), 6]))], rank=r, world_size=2)
        out = load_parallel(path, plan)
        for n, d in (("h.0.attn.c_attn.weight", 1), ("blk", 2),
                     ("h.0.attn.c_attn.bias", 0)):
            w = ref[n]
            _same(out[n], torch.cat([_chunks(b, 2, d)[r]
                                     for b in w.chunk(3, dim=d)], dim=d))
        x = ref["x"]
        first = x[:4]
        want = torch.cat([first[:1] if r == 0 else first[1:4],
                          _chunks(x[4:], 2, 0)[r]])
        _same(out["x"], want)


def test_explicit_split_sizes(tmp_path):
    path = _save({"w": torch.arange(70.0).reshape(7, 10)},
                 tmp_path / "m.safetensors")
    ref = _ref(path)["w"]
    sizes = [3, 0, 4]
    start = 0
    for r, n in enumerate(sizes):
        out = load_parallel(path, ShardPlan([("w", Shard(0, sizes=sizes))],
                                            rank=r, world_size=3))
        _same(out["w"], ref[start:start + n])
        assert out.bytes_read == n * 10 * 4
        start += n


def test_moe_experts_by_range(tmp_path):
    g = torch.Generator().manual_seed(3)
    sd = {}
    for i in range(8):
        sd[f"model.layers.0.mlp.experts.{i}.w1.weight"] = torch.randn(
            4, 3, generator=g)
    sd["model.layers.0.mlp.experts.w_stacked"] = torch.randn(8, 4, 3,
                                                             generator=g)
    sd["model.layers.0.mlp.gate.weight"] = torch.randn(8, 3, generator=g)
    path = _save(sd, tmp_path / "m.safetensors")
    ref = _ref(path)
    for ep in range(4):
        rng = expert_range(8, ep, 4)
        sel, rules = moe_experts(rng, stacked=["*.experts.w_stacked"])
        out = load_parallel(path, ShardPlan(rules, select=[sel]))
        names = {f"model.layers.0.mlp.experts.{i}.w1.weight" for i in rng}
        assert set(out) == names | {"model.layers.0.mlp.experts.w_stacked",
                                    "model.layers.0.mlp.gate.weight"}
        for n in names:
            _same(out[n], ref[n])
        _same(out["model.layers.0.mlp.experts.w_stacked"],
              ref["model.layers.0.mlp.experts.w_stacked"][rng.start:rng.stop])
        _same(out["model.layers.0.mlp.gate.weight"],
              ref["model.layers.0.mlp.gate.weight"])


def test_pipeline_stages(llama):
    path, sd = llama
    ref = _ref(path)
    seen = {}
    for stage in range(3):
        st = PipelineStage(stage, 3, first=["model.embed_tokens.weight"],
                           last=["model.norm.*", "lm_head.*"])
        out = load_parallel(path, ShardPlan(select=[st]))
        layers = set(layer_range(LAYERS, stage, 3))
        for n in out:
            _same(out[n], ref[n])
            seen.setdefault(n, []).append(stage)
            m = re.search(r"layers\.(\d+)\.", n)
            if m:
                assert int(m.group(1)) in layers
        assert ("model.embed_tokens.weight" in out) == (stage == 0)
        assert ("lm_head.weight" in out) == (stage == 2)
    assert sorted(seen) == sorted(ref)  # every tensor on some stage ...
    assert all(len(v) == 1 for v in seen.values())  # ... exactly one
    assert [list(layer_range(4, s, 3)) for s in range(3)] == \
        [[0, 1], [2], [3]]
    # A custom index pattern and an explicit layer list; others="none".
    st = PipelineStage(0, 2, layer_pattern=r"layers\.(\d+)\.mlp\.",
                       layers=[3], others="none")
    out = load_parallel(path, ShardPlan(select=st))
    assert sorted(out) == ["model.layers.3.mlp.down_proj.weight",
                           "model.layers.3.mlp.gate_up_proj.weight"]


def test_pipeline_and_tensor_parallel_together(llama):
    path, _ = llama
    ref = _ref(path)
    st = PipelineStage(1, 2, first=["model.embed_tokens.*"],
                       last=["lm_head.*", "model.norm.*"])
    out = load_parallel(path, _llama_plan(1, 2, select=[st]))
    assert "model.embed_tokens.weight" not in out
    assert "model.layers.1.mlp.down_proj.weight" not in out
    for n in out:
        _same(out[n], _want_llama(n, ref[n], 1, 2))


# --------------------------------------------------------------------------
# Byte counters
# --------------------------------------------------------------------------

def test_world_8_reads_an_eighth(tmp_path):
    """World 8 simulated by rank: each rank's engine count is its share of
    the sharded bytes plus the replicated whole tensors, never more."""
    g = torch.Generator().manual_seed(4)
    sd = {f"l{i}.w": torch.randn(64, 40, generator=g) for i in range(6)}
    sd.update({f"l{i}.c": torch.randn(24, 64, generator=g) for i in range(6)})
    sd["norm"] = torch.randn(40, generator=g)
    path = _save(sd, tmp_path / "m.safetensors")
    ref = _ref(path)
    total = sum(t.numel() * 4 for t in sd.values())
    reads = []
    for backend in ("mmap", "pread"):
        for rank in range(8):
            plan = ShardPlan([("*.w", Shard(0)), ("*.c", Shard(-1))],
                             rank=rank, world_size=8)
            out = load_parallel(path, plan, backend=backend)
            sharded = out.bytes_selected - out.bytes_whole
            assert out.bytes_selected == total
            assert out.bytes_whole == 40 * 4
            assert out.bytes_read == sharded // 8 + out.bytes_whole
            assert out.bytes_read <= total / 8 + out.bytes_whole + CHUNK
            assert out.bytes_by_file == {"m.safetensors": out.bytes_read}
            assert out.bytes_loaded == out.bytes_read
            for n in sd:
                if n.endswith(".w"):
                    _same(out[n], _chunks(ref[n], 8, 0)[rank])
                elif n.endswith(".c"):
                    _same(out[n], _chunks(ref[n], 8, 1)[rank])
            reads.append(out.bytes_read)
    assert sum(reads[:8]) == total - 40 * 4 + 8 * 40 * 4


def test_into_existing_tensors(llama):
    """into: the caller's tensors are filled (in place on the CPU, through
    a copy for a strided view) and returned; a wrong shape or dtype is a
    named error."""
    path, sd = llama
    ref = _ref(path)
    name = "model.layers.0.mlp.down_proj.weight"   # [H, INTER] -> [H, 12]
    qkv = "model.layers.1.self_attn.qkv_proj.weight"
    params = {name: torch.nn.Parameter(torch.zeros(H, INTER // 2)),
              qkv: torch.zeros(H, (NH + 2 * NKV) * HD // 2).t(),
              "model.norm.weight": torch.zeros(H)}
    before = params[name].data_ptr()
    out = load_parallel(path, _llama_plan(1, 2), into=params)
    for n, t in params.items():
        assert out[n] is t
        _same(t.detach(), _want_llama(n, ref[n], 1, 2))
    assert params[name].data_ptr() == before and params[name].requires_grad
    for bad in ({name: torch.zeros(H, INTER)},
                {name: torch.zeros(H, INTER // 2, dtype=torch.float16)},
                {name: [0.0]}):
        with pytest.raises(ParallelDestinationError):
            load_parallel(path, _llama_plan(1, 2), into=bad)
    with pytest.raises(ParallelDestinationError):
        load_parallel(path, _llama_plan(1, 2), into=[params[name]])


def test_direct_reads_give_the_same_tensors(llama):
    """O_DIRECT (pread backend): the same shards; the engine counts the
    whole 4 KiB blocks it read (a filesystem that refuses O_DIRECT reads
    buffered: then exactly the shard's bytes)."""
    path, _ = llama
    ref = _ref(path)
    plan = _llama_plan(1, 2)
    buffered = load_parallel(path, plan, backend="pread")
    direct = load_parallel(path, plan, backend="pread", direct=True)
    for n in ref:
        _same(direct[n], _want_llama(n, ref[n], 1, 2))
    assert direct.bytes_read >= buffered.bytes_read


def test_pipeline_stage_reads_its_layers_only(llama):
    path, sd = llama
    out = load_parallel(path, ShardPlan(select=[PipelineStage(
        3, 4, first=["model.embed_tokens.*"], last=["lm_head.*"],
        others="none")]))
    want = sum(t.numel() * 4 for n, t in sd.items()
               if ".layers.3." in n or n == "lm_head.weight")
    assert out.bytes_read == want == out.bytes_selected


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------

def test_sharded_index_and_directories(tmp_path, llama):
    path, sd = llama
    d = tmp_path / "ck"
    files = save_sharded(sd, d, max_shard_size=3000)
    assert files[-1] == "model.safetensors.index.json" and len(files) > 3
    ref = _ref(path)
    for src in (d, d / "model.safetensors.index.json"):
        out = load_parallel(src, _llama_plan(1, 2))
        for n in sd:
            _same(out[n], _want_llama(n, ref[n], 1, 2))
        assert len(out.bytes_by_file) > 2
        assert sum(out.bytes_by_file.values()) == out.bytes_read
        assert set(out.bytes_by_file) <= set(files)
    # A directory with one model.safetensors, and one of loose files.
    one = tmp_path / "one"
    one.mkdir()
    _save(sd, one / "model.safetensors")
    loose = tmp_path / "loose"
    loose.mkdir()
    names = sorted(sd)
    _save({n: sd[n] for n in names[:7]}, loose / "a.safetensors")
    _save({n: sd[n] for n in names[7:]}, loose / "b.safetensors")
    for src in (one, loose):
        out = load_parallel(src, _llama_plan(0, 2))
        for n in sd:
            _same(out[n], _want_llama(n, ref[n], 0, 2))
    assert set(load_parallel(loose, _llama_plan(0, 2)).bytes_by_file) == {
        "a.safetensors", "b.safetensors"}


def test_index_naming_a_tensor_its_shard_lacks(tmp_path):
    d = tmp_path / "ck"
    save_sharded({"a": torch.ones(300), "b": torch.ones(300)}, d,
                 max_shard_size=1500)
    idx = d / "model.safetensors.index.json"
    data = json.loads(idx.read_text())
    data["weight_map"]["a"], data["weight_map"]["b"] = \
        data["weight_map"]["b"], data["weight_map"]["a"]
    idx.write_text(json.dumps(data))
    with pytest.raises(ParallelMissingTensorError) as e:
        load_parallel(d, ShardPlan())
    assert isinstance(e.value, KeyError) and isinstance(e.value,
                                                        SafetensorError)


# --------------------------------------------------------------------------
# Dtypes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name,dtype", DTYPES, ids=[n for n, _ in DTYPES])
def test_every_dtype_row_and_column_shards(tmp_path, name, dtype):
    t = rand(dtype, (8, 12), seed=5)
    path = _save({"t": t, "v": rand(dtype, (16,), seed=6)},
                 tmp_path / "m.safetensors")
    ref = _ref(path)
    for rank in range(4):
        rows = load_parallel(path, ShardPlan([("t", Shard(0)),
                                              ("v", Shard(0))],
                                             rank=rank, world_size=4))
        _same(rows["t"], _chunks(ref["t"], 4, 0)[rank])
        _same(rows["v"], _chunks(ref["v"], 4, 0)[rank])
        cols = load_parallel(path, ShardPlan([("t", Shard(1))], rank=rank,
                                             world_size=4, default="skip"))
        _same(cols["t"], _chunks(ref["t"], 4, 1)[rank])
        assert cols.bytes_read == t.numel() * t.element_size() // 4


def test_f4_cut_inside_a_byte_is_refused(tmp_path):
    t = rand(torch.float4_e2m1fn_x2, (4, 3), seed=7)  # file shape [4, 6]
    path = _save({"t": t}, tmp_path / "m.safetensors")
    with pytest.raises(ParallelSubByteError) as e:  # 6 / 4: not even cuts
        load_parallel(path, ShardPlan([("t", Shard(1, uneven="split"))],
                                      rank=2, world_size=4))
    assert "F4" in str(e.value) and e.value.tensor_name == "t"
    out = load_parallel(path, ShardPlan([("t", Shard(1, sizes=[2, 4]))],
                                        rank=1, world_size=2))
    _same(out["t"], _ref(path)["t"][:, 1:3])


def test_f6_shards_are_raw_bytes(tmp_path):
    raw = bytes(range(48))  # F6_E2M3 [8, 8]: 6 bytes per row
    w = _C.Writer()
    w.add_tensor("f6", "F6_E2M3", [8, 8], raw)
    w.add_tensor("g6", "F6_E3M2", [4, 4, 4], raw)
    path = str(tmp_path / "f6.safetensors")
    w.write_path(path)
    rows = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(8, 6)
    for r in range(2):
        out = load_parallel(path, ShardPlan([("f6", Shard(0)),
                                             ("g6", Shard(1))],
                                            rank=r, world_size=2))
        _same(out["f6"], rows[r * 4:(r + 1) * 4].reshape(-1))
        g = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(4, 4, 3)
        _same(out["g6"], g[:, r * 2:(r + 1) * 2].reshape(-1))
    with pytest.raises(ParallelSubByteError):  # 4 F6 values = 3 bytes; 2 = 1.5
        load_parallel(path, ShardPlan([("g6", Shard(2))], rank=0,
                                      world_size=2, default="skip"))


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

def test_errors(llama, tmp_path):
    path, _ = llama
    cases = [
        (ParallelIndivisibleError,
         lambda: ShardPlan([("model.norm.weight", Shard(0))], rank=0,
                           world_size=3)),
        (ParallelUnmatchedError,
         lambda: ShardPlan([("*.q_proj.weight", Shard(0))])),
        (ParallelMissingTensorError,
         lambda: ShardPlan([("model.layers.9.mlp.down_proj.weight",
                             "whole")])),
        (ParallelMissingTensorError,
         lambda: ShardPlan(select=[PipelineStage(0, 2, first=["wte"])])),
        (ParallelUnmatchedError,
         lambda: ShardPlan(select=[PipelineStage(
             0, 2, layer_pattern=r"blk\.(\d+)\.")])),
        (ParallelUnmatchedError,
         lambda: ShardPlan(select=[Experts(range(2))])),
        (ParallelSplitError,
         lambda: ShardPlan([("lm_head.weight", Shard(0, sizes=[1, 2]))],
                           rank=0, world_size=3)),
        (ParallelSplitError,
         lambda: ShardPlan([("lm_head.weight", Shard(0, sizes=[60, -10]))],
                           rank=0, world_size=2)),
        (ParallelSplitError,
         lambda: ShardPlan([("lm_head.weight", Shard(0, sizes=[20, 20]))],
                           rank=0, world_size=2)),
        (ParallelSplitError,
         lambda: ShardPlan([("*.qkv_proj.weight",
                             Fused(0, blocks=[16, 8, 9]))], world_size=2)),
        (ParallelSplitError,
         lambda: ShardPlan([("lm_head.weight", Take(0, 10, 60))])),
        (ParallelIndivisibleError,
         lambda: ShardPlan([("*.gate_up_proj.weight", Fused(0, blocks=5))],
                           world_size=2)),
        (ParallelIndivisibleError,  # 2 kv heads on 3 ranks
         lambda: ShardPlan(fused_qkv("*.qkv_proj", num_heads=NH,
                                     num_kv_heads=NKV, head_dim=HD,
                                     bias=False), rank=0, world_size=3)),
        (ParallelIndivisibleError,  # kv heads < ranks without replicate
         lambda: ShardPlan([("*.qkv_proj.weight", Fused(
             0, blocks=[16, 8, 8], units=4))], rank=0, world_size=4)),
        (ParallelDimError,
         lambda: ShardPlan([("model.norm.weight", Shard(1))], world_size=2)),
        (ParallelDimError,
         lambda: ShardPlan([("model.norm.weight", Shard(-2))], world_size=2)),
    ]
    for cls, make in cases:
        with pytest.raises(cls) as e:
            load_parallel(path, make())
        assert isinstance(e.value, SafetensorError)
        assert e.value.status_name.startswith("ST_")
    with pytest.raises(ParallelIndivisibleError):
        expert_range(10, 0, 4)
    for bad in ((4, 4), (-1, 4), (0, 0), (True, 2), (0, 2.0)):
        with pytest.raises(ParallelRankError):
            ShardPlan(rank=bad[0], world_size=bad[1])
    with pytest.raises(ParallelRankError):
        PipelineStage(2, 2)
    for bad_rule in ([("x",)], [("x", "half")], [(3, "whole")]):
        with pytest.raises(ParallelPlanError):
            ShardPlan(bad_rule)
    for make in (lambda: Shard(0, uneven="pad"), lambda: Shard("0"),
                 lambda: Shard(0, sizes=[1.5]), lambda: Fused(0, blocks=0),
                 lambda: Fused(0, blocks=[]), lambda: Take(0, 3, 1),
                 lambda: ShardPlan(default="half"),
                 lambda: ShardPlan(select=["x"]),
                 lambda: PipelineStage(0, 1, others="some"),
                 lambda: PipelineStage(0, 1, layer_pattern=r"layers\.\d+"),
                 lambda: moe_experts([0, 2], stacked=["*.w"])):
        with pytest.raises(ParallelPlanError):
            make()
    with pytest.raises(ParallelPlanError):
        load_parallel(path, "not a plan")
    with pytest.raises(ParallelPlanError):
        load_parallel(b"bytes", ShardPlan())
    with pytest.raises(SafetensorValueError):
        load_parallel(path, ShardPlan(), backend="odirect")
    with pytest.raises(SafetensorError):
        load_parallel(tmp_path / "absent.safetensors", ShardPlan())
    with pytest.raises(ParallelGroupError):  # no process group
        load_parallel(path, ShardPlan(), group=True)
    out = load_parallel(path, ShardPlan(default="skip", strict=False))
    assert len(out) == 0 and out.bytes_read == 0
    with pytest.raises(ParallelMissingTensorError) as e:
        out["lm_head.weight"]
    assert isinstance(e.value, SafetensorKeyError)


def test_strict_off_allows_unmatched(llama):
    path, _ = llama
    plan = ShardPlan([("*.q_proj.weight", Shard(0)), ("nope", "whole")],
                     strict=False, default="skip")
    assert len(load_parallel(path, plan)) == 0
    # Optional rules (a third element False; the helpers' bias rules):
    # strict mode does not require them to match.
    plan = ShardPlan([("*.q_proj.weight", Shard(0), False),
                      ("*.down_proj.weight", Shard(1))]
                     + row_parallel("*.o_proj"), world_size=2,
                     default="skip")
    out = load_parallel(path, plan)
    assert sorted({n.split(".")[-2] for n in out}) == ["down_proj", "o_proj"]
    with pytest.raises(ParallelPlanError):
        ShardPlan([("x", "whole", "no")])
    with pytest.raises(ParallelUnmatchedError):  # the weight rule is required
        load_parallel(path, ShardPlan(column_parallel("*.q_proj")))
    # Not strict: a layer pattern that matches nothing leaves no layers,
    # and the other tensors go where others= says.
    st = PipelineStage(1, 2, layer_pattern=r"blk\.(\d+)\.", others="last")
    assert len(load_parallel(path, ShardPlan(select=st, strict=False))) == \
        len(_ref(path))


def test_first_match_wins(llama):
    path, sd = llama
    plan = ShardPlan([("lm_head.weight", "skip"), ("*head.weight", Shard(1)),
                      ("*_tokens.weight", Shard(1)),
                      ("lm_head.weight", "whole")], rank=1, world_size=2,
                     default="skip")
    out = load_parallel(path, plan)
    assert "lm_head.weight" not in out
    _same(out["model.embed_tokens.weight"],
          _chunks(sd["model.embed_tokens.weight"], 2, 1)[1])
    assert not any(n.endswith(".bias") for n in out)


# --------------------------------------------------------------------------
# A transformers checkpoint (save_pretrained, offline, tiny config)
# --------------------------------------------------------------------------

def test_transformers_llama_checkpoint(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    d = tmp_path / "llama"
    model.save_pretrained(d, safe_serialization=True, max_shard_size="100KB")
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    world, stages = 2, 2
    got = {}
    for stage in range(stages):
        st = PipelineStage(stage, stages, first=["model.embed_tokens.*"],
                           last=["lm_head.*", "model.norm.*"])
        for rank in range(world):
            plan = ShardPlan(
                column_parallel("*.q_proj", "*.k_proj", "*.v_proj",
                                "*.gate_proj", "*.up_proj")
                + row_parallel("*.o_proj", "*.down_proj")
                + vocab_parallel("model.embed_tokens", "lm_head"),
                rank=rank, world_size=world, select=[st])
            out = load_parallel(d, plan)
            for n, t in out.items():
                got.setdefault(n, {})[rank] = (out.actions[n], t)
    assert set(got) == set(sd)
    for n, parts in got.items():
        a = parts[0][0]
        if a == "whole":
            for r in range(world):
                _same(parts[r][1], sd[n])
            continue
        _same(torch.cat([parts[r][1] for r in range(world)], dim=a.dim),
              sd[n])


# --------------------------------------------------------------------------
# Real processes: world 2 and 4 with gloo, cooperative loading
# --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_world(path: str, world: int, mode: str = "ok"):
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, CHILD, path, str(world),
                               str(r), port, mode], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    res = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        res.append(json.loads(out.strip().splitlines()[-1]))
    return sorted(res, key=lambda x: x["rank"])


@pytest.mark.parametrize("world", [2, 4])
def test_cooperative_gloo(tmp_path, world):
    g = torch.Generator().manual_seed(8)
    sd = {f"l{i}.weight": torch.randn(32, 24, generator=g) for i in range(4)}
    sd.update({f"l{i}.bias": torch.randn(40 + i, generator=g)
               for i in range(4)})
    sd["norm.bias"] = torch.randn(3, generator=g)
    sd["scalar.bias"] = torch.randn((), generator=g)
    sd["bits.bias"] = torch.rand(33, generator=g) > 0.5
    path = _save(sd, tmp_path / "m.safetensors")
    res = _run_world(path, world)
    whole = res[0]["bytes_whole"]
    sharded = res[0]["bytes_selected"] - whole
    assert sum(r["bytes_read"] for r in res) == sharded + whole
    for r in res:
        # The rank's row shards, and about 1/W of the whole tensors (whole
        # rows; here no row is more than 172 bytes).
        assert r["bytes_read"] <= sharded // world + whole // world + 200
    if world == 2:
        bad = _run_world(path, world, "mismatch")
        assert all("group_error" in r for r in bad)
