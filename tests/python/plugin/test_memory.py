"""Zero-copy torch.load of a 1 GB safetensors file: RSS stays flat until touched, and the mapping
goes away with the last tensor. Each measurement runs in a fresh subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import torch_safetensors  # noqa: F401

GB = 1 << 30
N_TENSORS = 16

_CHILD = r"""
import gc, json, os, sys
import torch
import torch_safetensors  # noqa: F401

path, mode = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)

def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")

def mapped():
    real = os.path.realpath(path)
    with open("/proc/self/maps") as fh:
        return any(line.rstrip("\n").endswith(real) for line in fh)

gc.collect()
out = {"size": size}
r0 = rss()
obj = torch.load(path, mmap=(mode == "mmap"))
out["after_load"] = rss() - r0
out["mapped_after_load"] = mapped()
out["count"] = len(obj["layers"])
checksum = 0
for t in obj["layers"]:
    checksum += int(t.view(torch.uint8).sum())  # touches every byte
out["checksum"] = checksum
out["after_touch"] = rss() - r0
one = obj["layers"][3]
del obj, t
gc.collect()
out["mapped_with_one_tensor"] = mapped()
expect = float(one[0])
del one
gc.collect()
out["mapped_after_del"] = mapped()
out["expect"] = expect
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mem") / "big.safetensors"
    per = GB // N_TENSORS // 4
    layers = [torch.full((per,), float(i), dtype=torch.float32) for i in range(N_TENSORS)]
    torch.save({"layers": layers, "note": "1 GiB"}, path, format="safetensors")
    del layers
    # warm the page cache so that only mapping, not reading, is measured
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    yield str(path)
    os.unlink(path)


def _run(path: str, mode: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", _CHILD, path, mode], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_zero_copy_load_does_not_raise_rss_until_touched(big_file):
    r = _run(big_file, "mmap")
    size = r["size"]
    assert size >= GB
    assert r["count"] == N_TENSORS
    assert r["after_load"] < 0.05 * size, r
    assert r["mapped_after_load"] is True
    # touching the data really brings the pages in: the measurement can see it
    assert r["after_touch"] > 0.5 * size, r
    # one live tensor keeps the mapping; the last one releases it
    assert r["mapped_with_one_tensor"] is True
    assert r["expect"] == 3.0
    assert r["mapped_after_del"] is False, r


def test_mmap_false_owns_memory(big_file):
    r = _run(big_file, "owned")
    size = r["size"]
    assert r["after_load"] > 0.9 * size, r  # owned memory, all resident
    assert r["mapped_after_load"] is False  # nothing maps the file
    assert r["mapped_after_del"] is False
