"""Tensor- and pipeline-parallel loading by plan (torch_safetensors.parallel).

Saves a tiny Llama with transformers' save_pretrained, then loads rank r of a
4-way tensor-parallel group (and stage 0 of 2 pipeline stages) the way
Megatron- or vLLM-style code shards by hand: each rank reads only its bytes.

Run:  .venv/bin/python examples/python/tp_load.py
"""

import os
import sys
import tempfile

import torch
from safetensors import safe_open  # the reference, to check against
from transformers import LlamaConfig, LlamaForCausalLM

from torch_safetensors.parallel import (PipelineStage, ShardPlan,
                                        column_parallel, load_parallel,
                                        row_parallel, vocab_parallel)

WORLD = 4


def main() -> int:
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4, tie_word_embeddings=False)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        LlamaForCausalLM(cfg).save_pretrained(d)  # model.safetensors
        path = os.path.join(d, "model.safetensors")
        with safe_open(path, "pt") as f:
            full = {k: f.get_tensor(k) for k in f.keys()}
        total = sum(t.numel() * t.element_size() for t in full.values())

        rules = (column_parallel("*.q_proj", "*.k_proj", "*.v_proj",
                                 "*.gate_proj", "*.up_proj", bias=False)
                 + row_parallel("*.o_proj", "*.down_proj", bias=False)
                 + vocab_parallel("model.embed_tokens", "lm_head"))
        for rank in range(WORLD):
            plan = ShardPlan(rules, rank=rank, world_size=WORLD)
            part = load_parallel(d, plan)
            q = "model.layers.0.self_attn.q_proj.weight"
            o = "model.layers.0.self_attn.o_proj.weight"
            rows, cols = full[q].shape[0] // WORLD, full[o].shape[1] // WORLD
            assert torch.equal(part[q], full[q][rank * rows:(rank + 1) * rows])
            assert torch.equal(part[o], full[o][:, rank * cols:(rank + 1) * cols])
            print(f"tp rank {rank}/{WORLD}: {len(part)} tensors, read "
                  f"{part.bytes_read} of {total} bytes "
                  f"({part.bytes_read / total:.3f})")

        stage = ShardPlan(select=[PipelineStage(0, 2, first=["model.embed_tokens.*"],
                                                last=["lm_head.*", "model.norm.*"])])
        part = load_parallel(d, stage)
        assert all(not k.startswith(("model.layers.2.", "model.layers.3.",
                                     "lm_head")) for k in part)
        print(f"pipeline stage 0/2: {len(part)} tensors, read "
              f"{part.bytes_read} of {total} bytes")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
