"""Trains nothing, exports everything: builds the example model, saves its
state_dict with torch.save(..., format="safetensors"), and writes an input
and Python's output for deploy.cpp to compare against.

Usage: export.py OUT_DIR   (writes OUT_DIR/model.safetensors, OUT_DIR/io.safetensors)
"""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import D_IN, Model  # noqa: E402


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the C++ side runs the same kernels on one thread
    model = Model().eval()
    with torch.no_grad():
        # Random, non-trivial LayerNorm parameters so that they matter.
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight")):
                p.uniform_(0.5, 1.5)
    path = os.path.join(out, "model.safetensors")
    try:
        import torch_safetensors  # noqa: F401  (adds format="safetensors" to torch.save)
        torch.save(model.state_dict(), path, format="safetensors")
        how = 'torch.save(format="safetensors")'
    except ImportError:
        save_file(model.state_dict(), path)
        how = "safetensors.torch.save_file (torch_safetensors not installed)"

    x = torch.randn(2, 5, D_IN)
    with torch.no_grad():
        y = model(x)
    save_file({"input": x, "output": y}, os.path.join(out, "io.safetensors"))
    print(f"exported {len(model.state_dict())} tensors with {how}; output {tuple(y.shape)}")


if __name__ == "__main__":
    main()
