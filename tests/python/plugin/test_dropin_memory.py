"""Zero-copy loads: tensors view a private mapping, are writable without
touching the file, and the mapping goes with the last tensor. Materialized
loads own their memory. Device loading."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

import torch_safetensors.torch as st
from torch_safetensors._io import read_tensors as _read_tensors

from _ahelpers import assert_same_dict, collect, inside_mapping, mappings_of


def _digest(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


@pytest.fixture
def model_file(tmp_path):
    tensors = {
        "emb": torch.randn(64, 32),
        "ids": torch.arange(100, dtype=torch.int64),
        "half": torch.randn(16, 16).half(),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(1.5),
    }
    path = str(tmp_path / "model.safetensors")
    st.save_file(tensors, path)
    return path, tensors


def test_load_file_is_zero_copy(model_file):
    path, tensors = model_file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # frombuffer would warn if read-only
        loaded = st.load_file(path)
    maps = mappings_of(path)
    assert maps, "the file should be mapped"
    assert all(perms.startswith("rw") and perms.endswith("p")
               for _, _, perms in maps)  # private copy-on-write
    for k, t in loaded.items():
        if t.numel():
            assert inside_mapping(t.data_ptr(), path), k
    assert_same_dict(tensors, loaded)
    with st.safe_open(path, framework="pt") as f:
        t = f.get_tensor("emb")
        part = f.get_slice("emb")[2:5]
        assert inside_mapping(t.data_ptr(), path)
        assert inside_mapping(part.data_ptr(), path)


def test_writes_never_reach_the_file(model_file):
    path, tensors = model_file
    before = _digest(path)
    loaded = st.load_file(path)
    for t in loaded.values():
        if t.numel():
            t.view(-1)[0] = 1  # writable, no warning
    loaded["emb"].mul_(3)
    with st.safe_open(path, framework="pt") as f:
        f.get_tensor("ids").fill_(7)
    assert _digest(path) == before
    del loaded
    collect()
    assert_same_dict(tensors, st.load_file(path))


def test_mapping_released_with_the_last_tensor(model_file):
    path, _ = model_file
    collect()
    assert mappings_of(path) == []
    loaded = st.load_file(path)
    keep = loaded["ids"]
    expected = keep.clone()
    del loaded
    collect()
    assert mappings_of(path), "one tensor still views the mapping"
    assert torch.equal(keep, expected)
    del keep
    collect()
    assert mappings_of(path) == []


def test_mapping_outlives_safe_open_but_not_its_tensors(model_file):
    path, tensors = model_file
    f = st.safe_open(path, framework="pt")
    t = f.get_tensor("emb")
    sl = f.get_slice("half")[:, 3]
    f.__exit__(None, None, None)
    assert torch.equal(t, tensors["emb"])
    assert torch.equal(sl, tensors["half"][:, 3])
    del t
    collect()
    assert mappings_of(path)  # the slice view still holds it
    del sl, f
    collect()
    assert mappings_of(path) == []


def test_pread_and_bytes_loads_own_their_memory(model_file):
    path, tensors = model_file
    collect()
    loaded = st.load_file(path, backend="pread")
    assert mappings_of(path) == []  # no mapping at all
    for k, t in loaded.items():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert_same_dict(tensors, loaded)
    data = open(path, "rb").read()
    lo = np.frombuffer(data, dtype=np.uint8).ctypes.data
    from_bytes = st.load(data)
    for k, t in from_bytes.items():
        if t.numel():
            assert not (lo <= t.data_ptr() < lo + len(data)), k
    assert_same_dict(tensors, from_bytes)


def test_read_tensors_helper_modes(model_file, tmp_path):
    path, tensors = model_file
    views, md = _read_tensors(path, mmap=True)
    assert inside_mapping(views["emb"].data_ptr(), path)
    owned, _ = _read_tensors(path, mmap=False)
    assert not inside_mapping(owned["emb"].data_ptr(), path)
    with open(path, "rb") as fh:
        by_file, _ = _read_tensors(fh)
    data = open(path, "rb").read()
    by_bytes, _ = _read_tensors(data)
    import io
    by_bytesio, _ = _read_tensors(io.BytesIO(data))
    for d in (views, owned, by_file, by_bytes, by_bytesio):
        assert_same_dict(tensors, d)
    assert md is None


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cpu:0"])
def test_cpu_device_spellings(model_file, device):
    path, tensors = model_file
    for backend in ("mmap", "pread"):
        loaded = st.load_file(path, device=device, backend=backend)
        assert all(t.device.type == "cpu" for t in loaded.values())
        assert_same_dict(tensors, loaded)


def test_other_devices_by_to_after_load(model_file):
    """Loads land on the CPU; moving them is torch's .to(device)."""
    path, tensors = model_file
    meta = {k: v.to("meta") for k, v in st.load_file(path).items()}
    assert all(t.device.type == "meta" for t in meta.values())
    assert {k: t.shape for k, t in meta.items()} == \
        {k: t.shape for k, t in tensors.items()}


cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="no CUDA device")


@cuda
def test_cuda_load_and_save(model_file, tmp_path):  # pragma: no cover
    path, tensors = model_file
    for backend in ("mmap", "pread"):
        loaded = st.load_file(path, device="cuda:0", backend=backend)
        assert all(t.device.type == "cuda" for t in loaded.values())
        assert_same_dict(tensors, {k: v.cpu() for k, v in loaded.items()})
        with st.safe_open(path, framework="pt", device=0,
                          backend=backend) as f:
            assert f.get_slice("emb")[1:3].device.type == "cuda"
    out = str(tmp_path / "from_cuda.safetensors")
    st.save_file({k: v.cuda() for k, v in tensors.items()}, out)
    assert_same_dict(tensors, st.load_file(out))


def _mapping_at(addr: int):
    """(start, end, path) of this process's mapping holding addr, or None."""
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return lo, hi, parts[5].strip() if len(parts) == 6 else ""
    return None


@pytest.mark.parametrize("loader", ["pread", "bytes", "torch.load"])
def test_owned_loads_of_many_small_tensors(tmp_path, loader):
    """Owned loads put the small tensors of a file in one allocation (the
    engine reads neighbours as one range) yet give each its own storage:
    every dtype, scalars, N-D shapes, empty tensors, and big tensors in
    between, which keep their own allocation."""
    from _ahelpers import DTYPES, assert_same, rand

    tensors = {}
    k = 0
    for rep in range(3):
        for name, dt in DTYPES:
            for shape in [(), (7,), (3, 5), (2, 3, 4), (0, 3)]:
                if name == "F4" and shape in [(), (7,)]:
                    continue
                tensors[f"t{k:03d}.{name}"] = rand(dt, shape, seed=k)
                k += 1
        tensors[f"big{rep}"] = torch.randn(300, 1000)  # 1.2 MB: its own
    path = str(tmp_path / "small.safetensors")
    st.save_file(tensors, path)
    collect()
    if loader == "pread":
        loaded = st.load_file(path, backend="pread")
    elif loader == "bytes":
        loaded = st.load(open(path, "rb").read())
    else:
        loaded = torch.load(path, mmap=False)
    assert mappings_of(path) == []
    assert_same_dict(tensors, loaded)
    ptrs = {}
    for name, t in loaded.items():
        nbytes = t.numel() * t.element_size()
        assert t.untyped_storage().nbytes() == nbytes, name
        assert t.is_contiguous() and t.storage_offset() == 0, name
        if nbytes:
            ptrs[name] = t.data_ptr()
    # Writable and independent: filling one leaves its neighbours alone.
    names = [n for n in tensors if n.startswith("t") and loaded[n].numel()]
    victim = names[len(names) // 2]
    loaded[victim].view(torch.uint8).fill_(0xA5) if loaded[victim].dtype not in (
        torch.bool,) else loaded[victim].fill_(True)
    for n in names:
        if n != victim:
            assert_same(tensors[n], loaded[n])
    # The small tensors share one anonymous mapping, freed with the last of
    # them; the big ones are elsewhere (and F4, whose torch shape differs).
    small = sorted(ptrs[n] for n in names if not n.endswith(".F4"))
    arena = _mapping_at(small[0])
    assert arena is not None and arena[2] == ""
    assert all(arena[0] <= p < arena[1] for p in small)
    assert not any(arena[0] <= ptrs[n] < arena[1] for n in ptrs if n.startswith("big"))
    keep = loaded[names[-1]]
    del loaded
    collect()
    assert _mapping_at(small[0]) == arena  # one tensor still holds it
    del keep
    collect()
    assert _mapping_at(small[0]) != arena
