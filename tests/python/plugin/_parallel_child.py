"""One rank of test_parallel.py's multi-process runs (gloo, CPU).

argv: path world rank port mode. Every rank loads ``path`` with a plan that
row-shards the 2-D tensors and keeps the others whole, with cooperative
loading of the whole tensors through the process group, checks each tensor
against the reference package (safe_open + slicing), and prints one JSON
line: its bytes read and the plan's byte totals. mode "mismatch": rank 0
selects one tensor fewer, so every rank must raise ParallelGroupError.
"""

import json
import sys
from datetime import timedelta


def main() -> int:
    path, world, rank, port, mode = (sys.argv[1], int(sys.argv[2]),
                                     int(sys.argv[3]), sys.argv[4],
                                     sys.argv[5])
    import torch
    import torch.distributed as dist
    from safetensors import safe_open

    from torch_safetensors.parallel import (ParallelGroupError, Shard,
                                            ShardPlan, load_parallel)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        rules = [("*.weight", Shard(0))]
        if mode == "mismatch" and rank == 0:
            rules.insert(0, ("norm.bias", "skip"))
        plan = ShardPlan(rules, rank=rank, world_size=world, strict=False)
        # A caller's tensor for one whole tensor and one shard.
        into = {"norm.bias": torch.nn.Parameter(torch.empty(3)),
                "l0.weight": torch.empty(24, 32 // world).t()}
        try:
            out = load_parallel(path, plan, group=dist.group.WORLD,
                                backend="pread" if rank % 2 else "mmap",
                                into=into)
        except ParallelGroupError as e:
            print(json.dumps({"rank": rank, "group_error": str(e)}))
            return 0
        with safe_open(path, framework="pt") as ref:
            for name in ref.keys():
                full = ref.get_tensor(name)
                if name.endswith(".weight"):
                    per = full.shape[0] // world
                    want = full[rank * per:(rank + 1) * per]
                else:
                    want = full
                got = out[name]
                assert got.dtype == want.dtype and got.shape == want.shape, \
                    (name, got.shape, want.shape)
                assert torch.equal(
                    got.reshape(-1).view(torch.uint8),
                    want.contiguous().reshape(-1).view(torch.uint8)), name
        assert all(out[n] is into[n] for n in into)
        print(json.dumps({"rank": rank, "bytes_read": out.bytes_read,
                          "bytes_selected": out.bytes_selected,
                          "bytes_whole": out.bytes_whole}))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    from _ahelpers import exit_rank  # beside this file
    exit_rank(main())
