"""One rank of a real multi-process DCP run (gloo, CPU) for
test_distributed.py: ``python dcp_world_child.py SCENARIO RANK WORLD STORE
WORKDIR OUT``. Every check of the scenario runs in order on every rank; the
rank writes {check: "ok" or the traceback} to OUT.RANK, and the test asserts
each check's result. Checks that save share WORKDIR (the same path on every
rank). No mocks: torch.distributed.checkpoint save/load/async_save with our
StorageWriter/StorageReader, DTensor, FSDP2 (fully_shard) and tensor
parallelism (parallelize_module)."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from datetime import timedelta
from fractions import Fraction
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

from torch_safetensors import _dtypes
from torch_safetensors.distributed import (
    SafetensorNotSerializableError,
    SafetensorsStorageReader,
    SafetensorsStorageWriter,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ahelpers import exit_rank, rand  # noqa: E402


class Ctx:
    def __init__(self, rank: int, world: int, work: str) -> None:
        self.rank = rank
        self.world = world
        self.work = work
        self.mesh = DeviceMesh("cpu", list(range(world)))

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def bounds(n: int, world: int, r: int) -> Tuple[int, int]:
    """DTensor's Shard split: ceil(n / world) per rank, the last ones short
    or empty."""
    size = -(-n // world)
    start = min(r * size, n)
    return start, min(start + size, n)


def local_of(full: torch.Tensor, dim: int, mesh: DeviceMesh) -> torch.Tensor:
    r = mesh.get_coordinate()[0]
    s, e = bounds(full.shape[dim], mesh.size(), r)
    return full.narrow(dim, s, e - s).clone(
        memory_format=torch.contiguous_format)


def sharded(full: torch.Tensor, dim: int, mesh: DeviceMesh) -> DTensor:
    """A DTensor of full sharded on dim, built locally (no collective, so
    every dtype works with gloo)."""
    return DTensor.from_local(local_of(full, dim, mesh), mesh, [Shard(dim)],
                              run_check=False, shape=full.shape,
                              stride=full.stride())


def empty_like_sharded(full: torch.Tensor, dim: int,
                       mesh: DeviceMesh) -> DTensor:
    loc = local_of(full, dim, mesh)
    return DTensor.from_local(torch.zeros_like(loc.view(torch.uint8)).view(
        loc.dtype) if loc.dtype.itemsize == 1 else torch.zeros_like(loc),
        mesh, [Shard(dim)], run_check=False, shape=full.shape,
        stride=full.stride())


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.contiguous(), b.contiguous()
    if a.numel() == 0:
        return True
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if \
        a.dim() else torch.equal(a.reshape(1).view(torch.uint8),
                                 b.reshape(1).view(torch.uint8))


def visible(directory: str) -> List[str]:
    """The files of a directory a reader can take (not hidden temporaries)."""
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def failures_of(exc: BaseException) -> List[BaseException]:
    assert isinstance(exc, CheckpointException), repr(exc)
    return [e for e, _ in exc.failures.values()]


def all_dtypes() -> List[torch.dtype]:
    """Every torch dtype the C table maps to a safetensors dtype."""
    return sorted(_dtypes.FROM_TORCH, key=str)


# --------------------------------------------------------------------------
# world 2 checks
# --------------------------------------------------------------------------

def model_state(seed: int) -> Dict[str, torch.Tensor]:
    return {
        "embed.weight": rand(torch.float32, (10, 6), seed),
        "layer.0.w": rand(torch.bfloat16, (7, 5), seed + 1),
        "layer.0.b": rand(torch.float16, (7,), seed + 2),
        "layer.1.w": rand(torch.float32, (4, 9), seed + 3),
        "ids": torch.arange(11, dtype=torch.int64) * (seed + 1),
    }


def check_roundtrip(c: Ctx) -> None:
    full = model_state(1)
    sd: Dict[str, Any] = {k: sharded(v, 0, c.mesh) for k, v in full.items()
                          if k != "layer.1.w"}
    sd["layer.1.w"] = sharded(full["layer.1.w"], 1, c.mesh)
    sd["replicated"] = full["ids"] + 1  # a plain tensor, on every rank
    dcp.save(sd, storage_writer=SafetensorsStorageWriter(
        c.path("rt"), max_shard_size=200))
    out: Dict[str, Any] = {k: empty_like_sharded(full[k], 0, c.mesh)
                           for k in full if k != "layer.1.w"}
    out["layer.1.w"] = empty_like_sharded(full["layer.1.w"], 1, c.mesh)
    out["replicated"] = torch.zeros(11, dtype=torch.int64)
    dcp.load(out, storage_reader=SafetensorsStorageReader(c.path("rt")))
    for k in full:
        dim = 1 if k == "layer.1.w" else 0
        assert same_bytes(out[k].to_local(), local_of(full[k], dim, c.mesh)), k
    assert torch.equal(out["replicated"], full["ids"] + 1)
    # the consolidated files hold the full tensors, in several shards
    from torch_safetensors.sharded import load_sharded
    got = load_sharded(c.path("rt"))
    assert set(got) == set(full) | {"replicated"}
    for k in full:
        assert same_bytes(got[k], full[k]), k
    with open(c.path("rt/model.safetensors.index.json")) as fh:
        assert len(set(json.load(fh)["weight_map"].values())) > 1


def check_every_dtype(c: Ctx) -> None:
    dtypes = all_dtypes()
    full = {}
    for k, dt in enumerate(dtypes):
        name = str(dt).replace("torch.", "")
        full[f"{name}.rows"] = rand(dt, (5, 4), 10 + k)
        full[f"{name}.cols"] = rand(dt, (3, 6), 40 + k)
        if _dtypes.st_name(dt) not in _dtypes.RESHAPED:  # F4: see below
            full[f"{name}.scalar"] = rand(dt, (), 70 + k)
    sd: Dict[str, Any] = {}
    for k, v in full.items():
        if k.endswith(".rows"):
            sd[k] = sharded(v, 0, c.mesh)
        elif k.endswith(".cols"):
            sd[k] = sharded(v, 1, c.mesh)
        else:
            sd[k] = v
    dcp.save(sd, storage_writer=SafetensorsStorageWriter(
        c.path("dtypes"), max_shard_size=64))
    out: Dict[str, Any] = {}
    for k, v in full.items():
        if k.endswith(".rows"):
            out[k] = empty_like_sharded(v, 0, c.mesh)
        elif k.endswith(".cols"):
            out[k] = empty_like_sharded(v, 1, c.mesh)
        else:
            out[k] = torch.zeros((), dtype=torch.uint8).view(v.dtype) if \
                v.dtype.itemsize == 1 else torch.zeros_like(v)
    dcp.load(out, storage_reader=SafetensorsStorageReader(c.path("dtypes")))
    for k, v in full.items():
        got = out[k]
        if isinstance(got, DTensor):
            assert same_bytes(got.to_local(), local_of(
                v, 0 if k.endswith(".rows") else 1, c.mesh)), k
        else:
            assert same_bytes(got, v), k
    if c.rank == 0:
        # every file is a plain safetensors file: the reference reads it
        from safetensors import safe_open
        with open(c.path("dtypes/model.safetensors.index.json")) as fh:
            wm = json.load(fh)["weight_map"]
        for k, fname in wm.items():
            with safe_open(c.path(f"dtypes/{fname}"), "pt") as f:
                assert same_bytes(f.get_tensor(k), full[k]), k


def check_non_tensor_state(c: Ctx) -> None:
    w = sharded(rand(torch.float32, (6, 2), 5), 0, c.mesh)
    state = {"step": 1234, "lr": 0.25, "name": "cosine", "done": False,
             "none": None, "sched": {"milestones": [1, 2, 3],
                                     "gamma": 0.5, "nested": {"a": [True]}},
             "big": 2 ** 70}
    sd = {"w": w, "trainer": state}
    dcp.save(sd, storage_writer=SafetensorsStorageWriter(c.path("state")))
    out = {"w": empty_like_sharded(rand(torch.float32, (6, 2), 5), 0, c.mesh),
           "trainer": {"step": 0, "lr": 0.0, "name": "", "done": True,
                       "none": 1, "sched": {"milestones": [], "gamma": 0.0,
                                            "nested": {"a": []}},
                       "big": 0}}
    dcp.load(out, storage_reader=SafetensorsStorageReader(c.path("state")))
    assert out["trainer"] == state, out["trainer"]
    assert same_bytes(out["w"].to_local(), w.to_local())
    # what the files say: JSON under the documented keys, no pickle
    if c.rank == 0:
        from safetensors import safe_open
        with open(c.path("state/model.safetensors.index.json")) as fh:
            idx = json.load(fh)
        with safe_open(c.path("state/" + idx["metadata"][
                "torch_safetensors.dcp.state"]), "pt") as f:
            md = f.metadata()
            assert list(f.keys()) == []
        assert md["torch_safetensors.dcp.state.trainer.step"] == "1234"
        assert json.loads(md["torch_safetensors.dcp.state.trainer.sched."
                             "milestones"]) == [1, 2, 3]
        # safetensors files and the index, nothing else (no pickle file)
        for name in os.listdir(c.path("state")):
            assert name.endswith(".safetensors") or \
                name == "model.safetensors.index.json", name


def check_pickle_refused(c: Ctx) -> None:
    # the checkpoint of check_non_tensor_state stays as it was
    before = visible(c.path("state"))
    w = sharded(rand(torch.float32, (6, 2), 6), 0, c.mesh)
    for bad in ({1, 2}, (1, 2), float("nan"), torch.device("cpu"),
                b"bytes", Fraction(1, 3), complex(1, 2)):
        try:
            dcp.save({"w": w, "bad": bad},
                     storage_writer=SafetensorsStorageWriter(c.path("state")))
        except CheckpointException as e:
            fails = failures_of(e)
            assert fails and all(isinstance(f, SafetensorNotSerializableError)
                                 for f in fails), fails
        else:
            raise AssertionError(f"saved {bad!r}")
        dist.barrier()
    assert visible(c.path("state")) == before
    # the next save removes what the failed ones left
    dcp.save({"w": sharded(rand(torch.float32, (6, 2), 5), 0, c.mesh),
              "trainer": {"step": 1234}},
             storage_writer=SafetensorsStorageWriter(c.path("state")))
    assert all(not n.endswith(".tmp") for n in os.listdir(c.path("state"))), \
        os.listdir(c.path("state"))
    out = {"w": empty_like_sharded(rand(torch.float32, (6, 2), 5), 0, c.mesh),
           "trainer": {"step": 0}}
    dcp.load(out, storage_reader=SafetensorsStorageReader(c.path("state")))
    assert out["trainer"]["step"] == 1234
    assert same_bytes(out["w"].to_local(),
                      local_of(rand(torch.float32, (6, 2), 5), 0, c.mesh))


def check_bytes_read_share(c: Ctx) -> None:
    """Each rank reads at most 1/W of the tensor bytes plus one chunk."""
    full = {f"t{k}": rand(torch.float32, (64 + k, 32), 200 + k)
            for k in range(6)}
    full["odd"] = rand(torch.float32, (7, 3), 300)
    full["cols"] = rand(torch.bfloat16, (16, 40), 301)
    dims = {k: 1 if k == "cols" else 0 for k in full}
    dcp.save({k: sharded(v, dims[k], c.mesh) for k, v in full.items()},
             storage_writer=SafetensorsStorageWriter(c.path("bytes")))
    out = {k: empty_like_sharded(v, dims[k], c.mesh) for k, v in full.items()}
    reader = SafetensorsStorageReader(c.path("bytes"))
    dcp.load(out, storage_reader=reader)
    for k, v in full.items():
        assert same_bytes(out[k].to_local(), local_of(v, dims[k], c.mesh)), k
    total = sum(v.numel() * v.element_size() for v in full.values())
    chunk = max(out[k].to_local().numel() * v.element_size()
                for k, v in full.items())
    mine = sum(out[k].to_local().numel() * v.element_size()
               for k, v in full.items())
    assert reader.bytes_read == mine, (reader.bytes_read, mine)
    assert reader.bytes_read <= total // c.world + chunk, (
        reader.bytes_read, total, c.world, chunk)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(),
                               torch.nn.Linear(24, 12), torch.nn.ReLU(),
                               torch.nn.Linear(12, 10))


def fsdp2(seed: int, mesh: DeviceMesh) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard
    m = make_model(seed)
    for layer in (m[0], m[2], m[4]):
        fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def tp(seed: int, mesh: DeviceMesh) -> torch.nn.Module:
    from torch.distributed.tensor.parallel import (
        ColwiseParallel, RowwiseParallel, parallelize_module)
    m = make_model(seed)
    parallelize_module(m, mesh, {"0": ColwiseParallel(),
                                 "2": RowwiseParallel(),
                                 "4": ColwiseParallel(use_local_output=False)})
    return m


def assert_model_equals(sd: Dict[str, Any], want: Dict[str, torch.Tensor],
                        placements: str) -> None:
    assert set(sd) == set(want), (sorted(sd), sorted(want))
    for k, v in sd.items():
        assert isinstance(v, DTensor), k
        if k.endswith("weight"):
            assert placements in str(v.placements), (k, v.placements)
        assert torch.equal(v.full_tensor(), want[k]), k


def check_fsdp2_to_tp(c: Ctx) -> None:
    want = make_model(7).state_dict()
    src = fsdp2(7, c.mesh)
    dcp.save(src.state_dict(), storage_writer=SafetensorsStorageWriter(
        c.path("fsdp2")))
    dst = tp(99, c.mesh)
    sd = dst.state_dict()
    dcp.load(sd, storage_reader=SafetensorsStorageReader(c.path("fsdp2")))
    assert_model_equals(dst.state_dict(), want, "Shard")
    # the loaded TP model computes what the original does
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    ref = make_model(7)(x)
    got = dst(x)
    got = got.full_tensor() if isinstance(got, DTensor) else got
    assert torch.allclose(got, ref, atol=1e-5), (got, ref)


def check_tp_to_fsdp2(c: Ctx) -> None:
    want = make_model(8).state_dict()
    src = tp(8, c.mesh)
    dcp.save(src.state_dict(), storage_writer=SafetensorsStorageWriter(
        c.path("tp")))
    dst = fsdp2(98, c.mesh)
    dcp.load(dst.state_dict(), storage_reader=SafetensorsStorageReader(
        c.path("tp")))
    assert_model_equals(dst.state_dict(), want, "Shard(dim=0)")


def check_async_save(c: Ctx) -> None:
    full = model_state(3)
    sd: Dict[str, Any] = {k: sharded(v, 0, c.mesh) for k, v in full.items()}
    sd["step"] = 77
    fut = dcp.async_save(sd, storage_writer=SafetensorsStorageWriter(
        c.path("async")))
    fut.result()
    out: Dict[str, Any] = {k: empty_like_sharded(v, 0, c.mesh)
                           for k, v in full.items()}
    out["step"] = 0
    dcp.load(out, storage_reader=SafetensorsStorageReader(c.path("async")))
    assert out["step"] == 77
    for k, v in full.items():
        assert same_bytes(out[k].to_local(), local_of(v, 0, c.mesh)), k


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(11)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=40,
                      num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=32,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def check_transformers_save_pretrained_into_dtensors(c: Ctx) -> None:
    model = tiny_llama()
    path = c.path("hf_pretrained")
    if c.rank == 0:
        model.save_pretrained(path, max_shard_size="20KB")
    dist.barrier()
    assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dims = {k: (1 if k.endswith("o_proj.weight") else 0) for k in full}
    out = {k: empty_like_sharded(v, dims[k], c.mesh) for k, v in full.items()}
    reader = SafetensorsStorageReader(path)
    dcp.load(out, storage_reader=reader)
    for k, v in full.items():
        assert torch.equal(out[k].to_local(), local_of(v, dims[k], c.mesh)), k
    total = sum(v.numel() * v.element_size() for v in full.values())
    chunk = max(v.numel() * v.element_size() for v in full.values())
    assert reader.bytes_read <= total // c.world + chunk
    # and one file, as a single-file checkpoint
    if c.rank == 0:
        model.save_pretrained(c.path("hf_single"))
    dist.barrier()
    out = {k: empty_like_sharded(v, 0, c.mesh) for k, v in full.items()}
    dcp.load(out, storage_reader=SafetensorsStorageReader(
        c.path("hf_single/model.safetensors")))
    for k, v in full.items():
        assert torch.equal(out[k].to_local(), local_of(v, 0, c.mesh)), k


def check_ours_loads_in_from_pretrained(c: Ctx) -> None:
    from transformers import AutoModelForCausalLM
    model = tiny_llama()
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = c.path("for_hf")
    if c.rank == 0:
        os.makedirs(path, exist_ok=True)
        model.config.save_pretrained(path)
    dist.barrier()
    sd: Dict[str, Any] = {k: sharded(v, 0, c.mesh) for k, v in full.items()}
    sd["trainer_step"] = 12  # a state file beside the shards
    dcp.save(sd, storage_writer=SafetensorsStorageWriter(
        path, max_shard_size="20KB"))
    if c.rank == 0:
        with open(os.path.join(path, "model.safetensors.index.json")) as fh:
            assert "torch_safetensors.dcp.state" in json.load(fh)["metadata"]
        loaded = AutoModelForCausalLM.from_pretrained(path)
        got = loaded.state_dict()
        assert set(got) == set(full)
        for k, v in full.items():
            assert torch.equal(got[k], v), k
        # every file: __metadata__ present, header 8-byte aligned
        for name in os.listdir(path):
            if name.endswith(".safetensors"):
                with open(os.path.join(path, name), "rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    head = json.loads(fh.read(n))
                assert n % 8 == 0, (name, n)
                assert head["__metadata__"]["format"] == "pt", name


def check_torch_hf_reader_reads_ours(c: Ctx) -> None:
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    full = {"a": rand(torch.float32, (8, 6), 400),
            "b": rand(torch.bfloat16, (5, 3), 401),
            "c": torch.arange(12, dtype=torch.int32).reshape(4, 3),
            "d": rand(torch.float16, (9,), 402)}
    path = c.path("for_torch_hf")
    sd: Dict[str, Any] = {k: sharded(v, 0, c.mesh) for k, v in full.items()}
    sd["epoch"] = 3  # torch's reader lists the state file too: no tensors
    dcp.save(sd, storage_writer=SafetensorsStorageWriter(path,
                                                         max_shard_size=200))
    out = {k: empty_like_sharded(v, 0, c.mesh) for k, v in full.items()}
    dcp.load(out, storage_reader=HuggingFaceStorageReader(path))
    for k, v in full.items():
        assert same_bytes(out[k].to_local(), local_of(v, 0, c.mesh)), k


def check_ours_reads_torch_hf_writer(c: Ctx) -> None:
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    full = {"a": rand(torch.float32, (8, 6), 500),
            "b": rand(torch.bfloat16, (5, 3), 501),
            "c": rand(torch.float16, (9, 4), 502)}
    dims = {"a": 0, "b": 0, "c": 1}
    for name, kwargs in (("consolidated", {"enable_consolidation": True}),
                         ("per_rank", {})):
        path = c.path(f"torch_hf_{name}")
        dcp.save({k: sharded(v, dims[k], c.mesh) for k, v in full.items()},
                 storage_writer=HuggingFaceStorageWriter(
                     path, save_distributed=True, **kwargs))
        # loaded with the other split: rows where it was saved by columns
        out = {k: empty_like_sharded(v, 1 - dims[k], c.mesh)
               for k, v in full.items()}
        reader = SafetensorsStorageReader(path)
        dcp.load(out, storage_reader=reader)
        for k, v in full.items():
            assert same_bytes(out[k].to_local(),
                              local_of(v, 1 - dims[k], c.mesh)), (name, k)


# --------------------------------------------------------------------------
# world 4 checks: saved by 4 ranks, loaded by 4, 2 and 3
# --------------------------------------------------------------------------

def w4_state() -> Dict[str, torch.Tensor]:
    return {
        "emb": rand(torch.float32, (10, 8), 600),     # 3,3,3,1 rows
        "short": rand(torch.bfloat16, (3, 5), 601),   # an empty rank
        "wide": rand(torch.float32, (6, 17), 602),
        "fp8": rand(torch.float8_e4m3fn, (12, 4), 603),
        "vec": rand(torch.int64, (13,), 604),
    }


W4_DIMS = {"emb": 0, "short": 0, "wide": 1, "fp8": 0, "vec": 0}


def check_w4_save_and_load(c: Ctx) -> None:
    full = w4_state()
    sd: Dict[str, Any] = {k: sharded(v, W4_DIMS[k], c.mesh)
                          for k, v in full.items()}
    sd["opt"] = {"step": 9, "betas": [0.9, 0.95]}
    dcp.save(sd, storage_writer=SafetensorsStorageWriter(
        c.path("w4"), max_shard_size=300))
    out: Dict[str, Any] = {k: empty_like_sharded(v, W4_DIMS[k], c.mesh)
                           for k, v in full.items()}
    out["opt"] = {"step": 0, "betas": []}
    reader = SafetensorsStorageReader(c.path("w4"))
    dcp.load(out, storage_reader=reader)
    assert out["opt"] == {"step": 9, "betas": [0.9, 0.95]}
    for k, v in full.items():
        assert same_bytes(out[k].to_local(),
                          local_of(v, W4_DIMS[k], c.mesh)), k
    total = sum(v.numel() * v.element_size() for v in full.values())
    chunk = max(out[k].to_local().numel() * v.element_size()
                for k, v in full.items())
    assert reader.bytes_read <= total // c.world + chunk, (
        reader.bytes_read, total)


def reshard_to(c: Ctx, ranks: List[int], dims: Dict[str, int]) -> None:
    mesh = DeviceMesh("cpu", ranks)  # every rank takes part in creating it
    if c.rank not in ranks:
        return
    full = w4_state()
    out: Dict[str, Any] = {k: empty_like_sharded(v, dims[k], mesh)
                           for k, v in full.items()}
    out["opt"] = {"step": 0, "betas": []}
    reader = SafetensorsStorageReader(c.path("w4"))
    dcp.load(out, storage_reader=reader, process_group=mesh.get_group())
    assert out["opt"] == {"step": 9, "betas": [0.9, 0.95]}
    for k, v in full.items():
        assert same_bytes(out[k].to_local(), local_of(v, dims[k], mesh)), k
    total = sum(v.numel() * v.element_size() for v in full.values())
    chunk = max(out[k].to_local().numel() * v.element_size()
                for k, v in full.items())
    assert reader.bytes_read <= total // len(ranks) + chunk


def check_w4_reshard_to_2(c: Ctx) -> None:
    reshard_to(c, [0, 1], W4_DIMS)


def check_w4_reshard_to_3_other_dims(c: Ctx) -> None:
    reshard_to(c, [0, 1, 2], {k: 1 - d if k != "vec" else 0
                              for k, d in W4_DIMS.items()})


CHECKS: Dict[str, List[Tuple[str, Callable[[Ctx], None]]]] = {
    "w2": [
        ("roundtrip", check_roundtrip),
        ("every_dtype", check_every_dtype),
        ("non_tensor_state", check_non_tensor_state),
        ("pickle_refused", check_pickle_refused),
        ("bytes_read_share", check_bytes_read_share),
        ("fsdp2_to_tp", check_fsdp2_to_tp),
        ("tp_to_fsdp2", check_tp_to_fsdp2),
        ("async_save", check_async_save),
        ("transformers_save_pretrained_into_dtensors",
         check_transformers_save_pretrained_into_dtensors),
        ("ours_loads_in_from_pretrained", check_ours_loads_in_from_pretrained),
        ("torch_hf_reader_reads_ours", check_torch_hf_reader_reads_ours),
        ("ours_reads_torch_hf_writer", check_ours_reads_torch_hf_writer),
    ],
    "w4": [
        ("save_and_load", check_w4_save_and_load),
        ("reshard_to_2", check_w4_reshard_to_2),
        ("reshard_to_3_other_dims", check_w4_reshard_to_3_other_dims),
    ],
}


def main() -> None:
    scenario, rank_s, world_s, store, work, out = sys.argv[1:]
    rank, world = int(rank_s), int(world_s)
    warnings.simplefilter("error")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    c = Ctx(rank, world, work)
    results: Dict[str, str] = {}
    for name, fn in CHECKS[scenario]:
        start = time.monotonic()
        try:
            fn(c)
            results[name] = "ok"
        except BaseException:  # noqa: B036 - CheckpointException too
            results[name] = traceback.format_exc()
        print(f"rank {rank}: {name}: {time.monotonic() - start:.2f} s",
              flush=True)
        # written after every check, so a later hang still reports it
        with open(f"{out}.{rank}", "w", encoding="utf-8") as fh:
            json.dump(results, fh)
        dist.barrier()
    dist.destroy_process_group()
    exit_rank(0)


if __name__ == "__main__":
    main()
