"""torch.distributed.checkpoint with safetensors storage
(torch_safetensors.distributed).

Two processes (gloo, CPU) save DTensors sharded on dimension 0 with
SafetensorsStorageWriter: the result is a plain Hugging Face checkpoint
(model-0000k-of-0000n.safetensors + model.safetensors.index.json) that any
safetensors reader opens. Then the same two ranks load it resharded on
dimension 1 with SafetensorsStorageReader, each reading only its chunks, and
non-tensor state (a step counter) comes back from JSON, never pickle.

Run:  .venv/bin/python examples/python/dcp_save_load.py
"""

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

WORLD = 2


def full_state():
    g = torch.Generator().manual_seed(0)
    return {"embed.weight": torch.randn(64, 32, generator=g),
            "proj.weight": torch.randn(32, 48, generator=g).to(torch.bfloat16),
            "proj.bias": torch.arange(32, dtype=torch.int64)}


def worker(rank: int, rendezvous: str, path: str) -> None:
    from torch_safetensors.distributed import (SafetensorsStorageReader,
                                               SafetensorsStorageWriter)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}",
                            rank=rank, world_size=WORLD)
    mesh = init_device_mesh("cpu", (WORLD,))
    full = full_state()
    state = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in full.items()}
    state["step"] = 1000
    dcp.save(state, storage_writer=SafetensorsStorageWriter(path))

    target = {k: distribute_tensor(torch.zeros_like(v), mesh,
                                   [Shard(1 if v.dim() > 1 else 0)])
              for k, v in full.items()}
    target["step"] = 0
    reader = SafetensorsStorageReader(path)
    dcp.load(target, storage_reader=reader)
    for k, v in full.items():
        assert torch.equal(target[k].full_tensor(), v), k
    assert target["step"] == 1000
    print(f"rank {rank}: loaded resharded, read {reader.bytes_read} bytes")
    dist.destroy_process_group()
    # torch 2.13's gloo backend keeps its worker threads after
    # destroy_process_group(); one still dropping a finished collective's
    # tensors while Python shuts down aborts the process ("terminate called
    # without an active exception"). Everything is written and closed: leave
    # without interpreter teardown.
    sys.stdout.flush()
    os._exit(0)


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        rendezvous = os.path.join(d, "rendezvous")  # a FileStore: no ports
        path = os.path.join(d, "ckpt")
        mp.spawn(worker, args=(rendezvous, path), nprocs=WORLD, join=True)
        from safetensors import safe_open  # the reference reads it as is
        names = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        keys = []
        for n in names:
            with safe_open(os.path.join(path, n), "pt") as f:
                keys += list(f.keys())
        print("files:", sorted(os.listdir(path)))
        assert set(full_state()) <= set(keys), keys
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
