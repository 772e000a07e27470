"""Cooperative loading: the ranks of one process group each read 1/W of the
replicated (whole) tensors and exchange them with torch.distributed
broadcasts (load_parallel(..., group=...)).

Measured slower than independent reads on one node with gloo on the CPU
(benchmarks/RESULTS.md, section "parallel"), so it is off by default; this
shows how to turn it on where the storage is slower than the interconnect.

Run:  .venv/bin/python examples/python/cooperative_load.py
"""

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_safetensors.torch import save_file

WORLD = 2


def worker(rank: int, rendezvous: str, path: str) -> None:
    from torch_safetensors.parallel import ShardPlan, load_parallel
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}",
                            rank=rank, world_size=WORLD)
    plan = ShardPlan(rank=rank, world_size=WORLD)  # every tensor whole
    coop = load_parallel(path, plan, group=dist.group.WORLD)
    alone = load_parallel(path, ShardPlan())
    for k in alone:
        assert torch.equal(coop[k], alone[k]), k
    print(f"rank {rank}: read {coop.bytes_read} of {alone.bytes_read} bytes "
          f"itself, the rest came by broadcast")
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
        path = os.path.join(d, "model.safetensors")
        g = torch.Generator().manual_seed(0)
        save_file({f"layer.{i}.weight": torch.randn(256, 256, generator=g)
                   for i in range(8)}, path)
        mp.spawn(worker, args=(rendezvous, path), nprocs=WORLD, join=True)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
