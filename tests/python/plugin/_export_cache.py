"""Export directories for tests/python/plugin/test_export.py, compiled once
and cached, since AOTInductor takes 10-40 s per model on 2 cores.

The cache lives in $ST_EXPORT_CACHE or <repo>/build/export-cache, one folder
per model, named by a key over the torch version and the sources that decide
its contents (examples/cpp/model.py, examples/cpp/export_aoti.py, this file,
torch_safetensors/export.py): a change to any of them compiles again.
Concurrent test processes take a lock per model; a folder appears complete
(renamed into place) or not at all, and a new one replaces the model's
folders of older keys.
"""

import fcntl
import hashlib
import os
import shutil
import sys
import tempfile

import torch
from torch import nn

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..",
                                    ".."))
EXAMPLES = os.path.join(REPO, "examples", "cpp")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

import export_aoti  # noqa: E402  (examples/cpp/export_aoti.py)
from torch_safetensors import export  # noqa: E402
from torch_safetensors.torch import save_file  # noqa: E402


class Tied(nn.Module):
    """What a state_dict does not tell: tied weights, a buffer that views a
    parameter, a non-persistent buffer, a tensor made in forward (lifted as
    a constant), a bf16 layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8),
                             persistent=False)
        self.h = nn.Linear(8, 8).to(torch.bfloat16)
        self.offset = torch.linspace(-1.0, 1.0, 16)  # a plain attribute
        self.register_buffer("a_weight_t", self.a.weight.detach().t())

    def forward(self, x):
        y = self.b(self.a(x)) * self.scale + self.offset[:8]
        y = y + x @ self.a_weight_t
        return self.h(y.to(torch.bfloat16)).float()


def tied_example():
    torch.manual_seed(5)
    return Tied().eval(), torch.randn(3, 8)


def _build_tied(out):
    model, x = tied_example()
    export.save(model, (x,), out)
    with torch.no_grad():
        y = model(x)
    save_file({"input": x, "output": y}, os.path.join(out, "io.safetensors"))


def _build_baked(out):
    """The example MLP compiled the usual way: weights inside model.pt2."""
    torch.manual_seed(0)
    model = export_aoti.MODELS["mlp"]().eval()
    x = torch.randn(2, 5, export_aoti.D_IN)
    ep = torch.export.export(model, (x,))
    os.makedirs(out, exist_ok=True)
    torch._inductor.aoti_compile_and_package(
        ep, package_path=os.path.join(out, "model.pt2"))


BUILDERS = {
    "mlp": lambda out: export_aoti.export_one("mlp", out),
    "block": lambda out: export_aoti.export_one("block", out),
    "tied": _build_tied,
    "baked": _build_baked,
}


def cache_root():
    return os.environ.get("ST_EXPORT_CACHE") or os.path.join(
        REPO, "build", "export-cache")


def _key():
    h = hashlib.sha256(torch.__version__.encode())
    for path in (os.path.join(EXAMPLES, "model.py"), export_aoti.__file__,
                 __file__, export.__file__):
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def exported(name):
    """The cached folder of model name (see BUILDERS), built if absent."""
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"{name}-{_key()}")
    if os.path.isdir(final):
        return final
    with open(os.path.join(root, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(final):
            return final
        work = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
        try:
            BUILDERS[name](work)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        for entry in os.listdir(root):  # older keys' folders of this model
            stale = os.path.join(root, entry)
            if entry.startswith(f"{name}-") and stale != final:
                shutil.rmtree(stale, ignore_errors=True)
    return final
