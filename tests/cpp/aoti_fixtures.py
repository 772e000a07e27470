"""Fixtures for examples/cpp/deploy_export (scripts/check-cpp.sh), next to
the export directories that examples/cpp/export_aoti.py wrote.

Usage: aoti_fixtures.py OUT_DIR MODEL_DIR...

* OUT_DIR/baked.pt2: the example MLP compiled with its weights in the
  package (AOTInductor's default), which the C++ loader must refuse;
* MODEL_DIR/runner.safetensors: "output", what Python's AOTInductor runner
  (torch._inductor.aoti_load_package, the weights as user-managed constants,
  one thread as deploy_export) gives for io.safetensors' "input": C++ must
  equal it bit for bit.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "examples", "cpp"))
from model import D_IN, D_MODEL, D_OUT, MLP  # noqa: E402

from torch_safetensors.torch import load_file, save_file  # noqa: E402


def baked(path):
    model = MLP(D_IN, D_MODEL, D_OUT).eval()
    x = torch.randn(2, 5, D_IN)
    torch._inductor.aoti_compile_and_package(
        torch.export.export(model, (x,)), package_path=path)


def runner_output(d):
    with open(os.path.join(d, "export.json")) as f:
        manifest = json.load(f)
    weights = load_file(os.path.join(d, manifest["weights"]))
    constants = {fqn: weights[c["tensor"]]
                 for fqn, c in manifest["constants"].items()}
    runner = torch._inductor.aoti_load_package(
        os.path.join(d, manifest["package"]))
    runner.load_constants(constants, check_full_update=True, user_managed=True)
    x = load_file(os.path.join(d, "io.safetensors"))["input"]
    with torch.no_grad():
        y = runner(x)
    if isinstance(y, (tuple, list)):
        y = y[0]
    save_file({"output": y.contiguous()}, os.path.join(d, "runner.safetensors"))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("\n\n")[1])
    torch.set_num_threads(1)
    baked(os.path.join(sys.argv[1], "baked.pt2"))
    for d in sys.argv[2:]:
        runner_output(d)


if __name__ == "__main__":
    main()
