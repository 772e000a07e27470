"""Exports the example models as torch.export + AOTInductor programs whose
weights live in safetensors (docs/EXPORT.md), for the C++ runner and CI.

Usage: export_aoti.py OUT_DIR

For each model ("mlp": a small MLP; "block": model.py's Model, an MLP
embedding, a pre-LayerNorm transformer block and a head) it writes
OUT_DIR/<model>/:

* model.pt2, model.safetensors, export.json: the export directory
  (torch_safetensors.export.save);
* io.safetensors: "input" and "output", the eager output with those weights;
* weights2.safetensors: the same architecture with other values
  (torch_safetensors.export.save_weights);
* io2.safetensors: the same "input" and the eager output with weights2.

Each model compiles in about 10-40 s on 2 cores.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import D_IN, D_MODEL, D_OUT, MLP, Model  # noqa: E402

from torch_safetensors import export  # noqa: E402
from torch_safetensors.torch import save_file  # noqa: E402

MODELS = {
    "mlp": lambda: MLP(D_IN, D_MODEL, D_OUT),
    "block": Model,
}


def _randomize(model, seed):
    """Values that make every parameter matter (LayerNorm weights away from
    1, biases away from 0), from seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for name, b in model.named_buffers():
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def export_one(name, out_dir):
    """Writes out_dir (see the module docstring) for model name; returns the
    eager outputs for the two weight sets."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    _randomize(model, 1)
    x = torch.randn(2, 5, D_IN, generator=torch.Generator().manual_seed(2))
    export.save(model, (x,), out_dir)
    with torch.no_grad():
        y = model(x)
    save_file({"input": x, "output": y}, os.path.join(out_dir, "io.safetensors"))
    _randomize(model, 3)
    export.save_weights(model.state_dict(), out_dir,
                        os.path.join(out_dir, "weights2.safetensors"))
    with torch.no_grad():
        y2 = model(x)
    save_file({"input": x, "output": y2},
              os.path.join(out_dir, "io2.safetensors"))
    return y, y2


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    out = sys.argv[1]
    for name in MODELS:
        d = os.path.join(out, name)
        y, _ = export_one(name, d)
        n = len(export.read_manifest(d)["constants"])
        print(f"{d}: {n} constants, output {tuple(y.shape)}")


if __name__ == "__main__":
    main()
