"""An exported program whose weights live in safetensors
(torch_safetensors.export, docs/EXPORT.md).

torch.export + AOTInductor compile a small MLP ahead of time into a package
WITHOUT its weights; the weights go to model.safetensors beside it and
export.json ties the two together. The package then runs from Python (and,
the same directory, from C++: examples/cpp/deploy_export.cpp) with these
weights, and with a fine-tuned set swapped in at run time: one compile
serves every checkpoint of the architecture.

Run:  .venv/bin/python examples/python/export_program.py   (compiles: ~30 s)
"""

import os
import sys
import tempfile

import torch

from torch_safetensors import export


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def main() -> int:
    torch.manual_seed(0)
    model = MLP().eval()
    x = torch.randn(8, 16)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "exported")
        manifest = export.save(model, (x,), out)
        print("files:", sorted(os.listdir(out)))
        print("constants:", sorted(manifest["constants"]))

        m = export.load(out)
        with torch.no_grad():
            torch.testing.assert_close(m(x), model(x), atol=1e-5, rtol=1e-4)

        # A "fine-tuned" model of the same architecture: new weights only.
        tuned = MLP().eval()
        tuned_path = os.path.join(d, "tuned.safetensors")
        export.save_weights(tuned.state_dict(), out, tuned_path)
        m.swap_weights(tuned_path)
        with torch.no_grad():
            torch.testing.assert_close(m(x), tuned(x), atol=1e-5, rtol=1e-4)
            assert not torch.allclose(m(x), model(x))
        print("swapped in", os.path.basename(tuned_path), "without recompiling")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
