"""Packaging: the installed distribution, torch's backend autoload entry
point (in both import orders), and an extension with no torch inside."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

import torch_safetensors
from torch_safetensors import _C


def _run(code: str, **env) -> str:
    e = dict(os.environ)
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=e, check=True,
                         capture_output=True, text=True, timeout=300)
    return out.stdout.strip()


def test_distribution_metadata():
    dist = metadata.distribution("torch-safetensors")
    assert dist.version == torch_safetensors.__version__
    eps = [ep for ep in dist.entry_points if ep.group == "torch.backends"]
    assert [(ep.name, ep.value) for ep in eps] == \
        [("torch_safetensors", "torch_safetensors_autoload:autoload")]
    # torch is a run-time requirement only, unpinned.
    assert [r for r in dist.requires or [] if r.startswith("torch")] == \
        ["torch"]
    files = {str(f) for f in dist.files}
    assert any(f.startswith("torch_safetensors/_C.") for f in files)


def test_extension_has_no_torch_inside():
    so = _C.__file__
    with open(so, "rb") as fh:
        blob = fh.read()
    assert b"libtorch" not in blob and b"libc10" not in blob
    # Only the module init function is exported (the C library is static
    # and private).
    out = subprocess.run(["nm", "-D", "--defined-only", so],
                         capture_output=True, text=True)
    if out.returncode == 0:
        syms = [line.split()[-1] for line in out.stdout.splitlines()]
        assert syms == ["PyInit__C"], syms


def test_import_torch_alone_installs_the_hook():
    out = _run("import sys, torch\n"
               "print('torch_safetensors' in sys.modules, "
               "torch.load.__module__)")
    assert out == "True torch_safetensors._hook"


def test_import_package_first_then_torch():
    # torch_safetensors imports torch, whose autoload finds the package
    # half-imported: this must not fail, and the hook must be in place.
    out = _run("import torch_safetensors, torch\n"
               "print(torch.load.__module__, torch.save.__module__)")
    assert out == "torch_safetensors._hook torch_safetensors._hook"


def test_broken_package_does_not_break_import_torch(tmp_path):
    # A torch_safetensors that fails to import (shadowed here by a broken
    # copy) must leave `import torch` working, with a warning.
    broken = tmp_path / "torch_safetensors"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('simulated broken install')\n")
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c",
         "import torch; print(torch.load.__module__)"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch.serialization"
    assert "simulated broken install" in out.stderr


def test_autoload_can_be_disabled():
    out = _run("import sys, torch\nprint('torch_safetensors' in sys.modules)",
               TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    assert out == "False"


def test_autoload_entry_point_is_idempotent():
    import torch

    before = torch.load
    torch_safetensors._autoload()
    torch_safetensors._autoload()
    assert torch.load is before
