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
from torch.distributed.tensor import DTensor, Replicate, Shard

from torch_safetensors import _dtypes
from torch_safetensors.distributed import (
    SafetensorNotSerializableError,
    SafetensorsStorageReader,
    SafetensorsStorageWriter,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ahelpers import rand  # noqa: E402


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
    return full.narrow(dim, s, e - s).contiguous()


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


CHECKS: Dict[str, List[Tuple[str, Callable[[Ctx], None]]]] = {
    "w2": [
        ("roundtrip", check_roundtrip),
        ("every_dtype", check_every_dtype),
        ("non_tensor_state", check_non_tensor_state),
        ("pickle_refused", check_pickle_refused),
        ("bytes_read_share", check_bytes_read_share),
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
        try:
            fn(c)
            results[name] = "ok"
        except BaseException:  # noqa: B036 - CheckpointException too
            results[name] = traceback.format_exc()
        dist.barrier()
    with open(f"{out}.{rank}", "w", encoding="utf-8") as fh:
        json.dump(results, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
