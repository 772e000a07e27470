"""Every supported dtype through the drop-in API (save_file/load_file,
save/load, safe_open get_tensor/get_slice), bitwise, with edge cases."""

from __future__ import annotations

import pytest
import torch

import torch_safetensors.torch as st
from torch_safetensors import _C
from torch_safetensors.errors import SafetensorError, SafetensorValueError
from torch_safetensors._io import read_tensors as _read_tensors, write_tensors as _write_tensors

from _ahelpers import DTYPES, assert_same, assert_same_dict, rand

SHAPES = [(2, 4), (3,), (0, 3), (1, 2, 2), (0,)]


def _all_apis(tensors, path):
    """Yields (label, loaded dict) for every way of reading tensors back."""
    st.save_file(tensors, path)
    yield "load_file", st.load_file(path)
    yield "load_file/pread", st.load_file(path, backend="pread")
    yield "load(save)", st.load(st.save(tensors))
    for backend in ("mmap", "pread"):
        with st.safe_open(path, framework="pt", backend=backend) as f:
            yield f"get_tensor/{backend}", {k: f.get_tensor(k)
                                           for k in f.keys()}
            yield f"get_tensors/{backend}", f.get_tensors()
            yield f"get_slice[:]/{backend}", {
                k: f.get_slice(k)[...] for k in f.keys()}


@pytest.mark.parametrize("name,dtype", DTYPES, ids=[n for n, _ in DTYPES])
def test_every_dtype_every_api(tmp_path, name, dtype):
    tensors = {f"t{k}": rand(dtype, shape, seed=k)
               for k, shape in enumerate(SHAPES)}
    if dtype is not torch.float4_e2m1fn_x2:
        tensors["scalar"] = rand(dtype, (), seed=99)
    path = str(tmp_path / f"{name}.safetensors")
    for label, loaded in _all_apis(tensors, path):
        assert_same_dict(tensors, loaded)
    with st.safe_open(path, framework="pt") as f:
        for k, t in tensors.items():
            s = f.get_slice(k)
            assert s.get_dtype() == name
            shape = list(t.shape)
            if dtype is torch.float4_e2m1fn_x2:
                shape[-1] *= 2  # the file counts F4 elements, torch pairs
            assert s.get_shape() == shape


@pytest.mark.parametrize("name,dtype", DTYPES, ids=[n for n, _ in DTYPES])
def test_every_dtype_slices(tmp_path, name, dtype):
    t = rand(dtype, (4, 6), seed=3)
    path = str(tmp_path / "s.safetensors")
    st.save_file({"t": t}, path)
    for backend in ("mmap", "pread"):
        with st.safe_open(path, framework="pt", backend=backend) as f:
            s = f.get_slice("t")
            if dtype is torch.float4_e2m1fn_x2:
                # File columns are F4 elements: 2 per torch column.
                assert_same(s[1:3], t[1:3])
                assert_same(s[::2, 4:8], t[::2, 2:4])
                assert_same(s[-1], t[-1])
                continue
            assert_same(s[1:3], t[1:3])
            assert_same(s[:, ::2], t[:, ::2])
            assert_same(s[-1, -3:], t[-1, -3:])
            assert_same(s[2], t[2])
            assert_same(s[..., 5], t[..., 5])
            assert_same(s[3, 4], t[3, 4])


def test_f4_cuts_inside_a_byte_are_refused(tmp_path):
    t = rand(torch.float4_e2m1fn_x2, (2, 3))
    path = str(tmp_path / "f4.safetensors")
    st.save_file({"t": t}, path)
    with st.safe_open(path, framework="pt") as f:
        s = f.get_slice("t")
        for index in [(slice(None), slice(0, 1)), (slice(None), slice(None, None, 2)),
                      (0, 1)]:
            with pytest.raises(SafetensorError) as ei:
                s[index]
            assert ei.value.tensor_name == "t" or ei.value.tensor_name is None


def test_f4_scalar_is_refused_like_the_reference(ref):
    t = torch.zeros((), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    with pytest.raises(SafetensorError) as ei:
        st.save({"a": t})
    assert ei.value.status_name == "ST_ERR_MISALIGNED_SLICE"
    with pytest.raises(Exception):
        ref.save({"a": t})


def test_f6_comes_back_as_raw_bytes(tmp_path):
    """No torch dtype: F6 loads as the flat packed bytes, never unpacked."""
    raw = bytes(range(1, 7))  # 8 F6 values = 48 bits
    w = _C.Writer()
    w.add_tensor("f6", "F6_E2M3", [2, 4], raw)
    w.add_tensor("g6", "F6_E3M2", [4], raw[:3])
    path = str(tmp_path / "f6.safetensors")
    w.write_path(path)
    for loaded in (st.load_file(path), st.load_file(path, backend="pread"),
                   st.load(w.to_bytes())):
        assert loaded["f6"].dtype == torch.uint8
        assert loaded["f6"].shape == (6,)
        assert bytes(loaded["f6"].tolist()) == raw
        assert bytes(loaded["g6"].tolist()) == raw[:3]
    with st.safe_open(path, framework="pt") as f:
        s = f.get_slice("f6")
        assert s.get_dtype() == "F6_E2M3" and s.get_shape() == [2, 4]
        assert bytes(s[1].tolist()) == raw[3:]  # one row = 3 whole bytes
        with pytest.raises(SafetensorError):
            s[:, 0:1]  # 6 bits: not a whole byte


def test_non_contiguous_refused_like_the_reference(tmp_path, ref):
    t = torch.arange(12.0).reshape(3, 4).t()
    assert not t.is_contiguous()
    with pytest.raises(SafetensorValueError) as ei:
        st.save_file({"t": t}, str(tmp_path / "x.safetensors"))
    assert isinstance(ei.value, ValueError) and ei.value.tensor_name == "t"
    with pytest.raises(ValueError) as er:
        ref.save_file({"t": t}, str(tmp_path / "y.safetensors"))
    assert str(er.value).split(":")[0] in str(ei.value)
    assert not (tmp_path / "x.safetensors").exists()
    # The supported way (as the reference says): .contiguous().
    path = str(tmp_path / "c.safetensors")
    st.save_file({"t": t.contiguous()}, path)
    assert_same(st.load_file(path)["t"], t.contiguous())


@pytest.mark.parametrize("name,dtype", DTYPES, ids=[n for n, _ in DTYPES])
def test_non_contiguous_through_write_tensors(tmp_path, name, dtype):
    """The helper behind torch.save writes non-contiguous tensors
    contiguously."""
    base = rand(dtype, (4, 6), seed=5)
    views = {"t": base.t(), "step": base[:, ::2], "slice": base[1:3, 2:]}
    path = str(tmp_path / "nc.safetensors")
    _write_tensors(views, path, {"m": "1"})
    loaded, md = _read_tensors(path)
    assert md == {"m": "1"}
    for k, v in views.items():
        assert_same(loaded[k], v.contiguous())


def test_views_of_a_larger_storage(tmp_path, ref):
    base = torch.arange(20, dtype=torch.float32)
    cases = {
        "offset_view": base[5:12],            # contiguous, offset into storage
        "reshaped": torch.arange(6.0).view(2, 3),
        "reinterpreted": torch.arange(4, dtype=torch.int64).view(torch.int32),
        "row": torch.arange(12).reshape(3, 4)[1],
        "expanded_scalar": torch.tensor(7.5),
    }
    path = str(tmp_path / "v.safetensors")
    for k, v in cases.items():
        st.save_file({k: v}, path)
        assert_same(st.load_file(path)[k], v)
        assert st.save({k: v}) == ref.save({k: v})


def test_loaded_tensors_are_independent_values(tmp_path):
    t = torch.arange(6.0).reshape(2, 3)
    path = str(tmp_path / "w.safetensors")
    st.save_file({"t": t}, path)
    a = st.load_file(path)["t"]
    b = st.load_file(path)["t"]
    a.add_(100)  # private mappings: one load's writes are invisible to others
    assert torch.equal(b, t)
    assert torch.equal(st.load_file(path)["t"], t)


def test_empty_and_metadata_round_trip(tmp_path, ref):
    path = str(tmp_path / "e.safetensors")
    st.save_file({}, path)
    assert st.load_file(path) == {}
    with st.safe_open(path, framework="pt") as f:
        assert f.keys() == [] and f.metadata() is None
    md = {"format": "pt", "ünïcode": "välue \"quoted\" \n newline"}
    st.save_file({"a": torch.ones(1)}, path, metadata=md)
    with st.safe_open(path, framework="pt") as f:
        assert f.metadata() == md
    one = {"ünïcode": md["ünïcode"]}  # the reference orders 2+ keys freely
    assert st.save({"a": torch.ones(1)}, metadata=one) == \
        ref.save({"a": torch.ones(1)}, metadata=one)


def test_direct_save_writes_the_same_bytes(tmp_path):
    """save_file(direct=True) goes through O_DIRECT (where the filesystem
    allows it): the same bytes as a buffered save and as the reference, for
    sizes around the 4 KiB block and the bounce buffer, and over an existing
    file."""
    import safetensors.torch as ref_torch

    g = torch.Generator().manual_seed(5)
    tensors = {
        "odd": torch.randint(0, 255, (4095,), dtype=torch.uint8, generator=g),
        "block": torch.randn(1024, generator=g),                 # 4096 B
        "big": torch.randn(3 * (1 << 21) + 5, generator=g),       # > 3 buffers
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "bf": torch.randn(17, 33, generator=g).bfloat16(),
    }
    direct = tmp_path / "direct.safetensors"
    direct.write_bytes(b"old contents")
    st.save_file(tensors, direct, metadata={"k": "v"}, direct=True)
    buffered = tmp_path / "buffered.safetensors"
    st.save_file(tensors, buffered, metadata={"k": "v"})
    reference = tmp_path / "ref.safetensors"
    ref_torch.save_file(tensors, str(reference), metadata={"k": "v"})
    assert direct.read_bytes() == buffered.read_bytes() == reference.read_bytes()
    back = st.load_file(direct)
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
    via_hook = tmp_path / "hook.safetensors"
    _write_tensors(tensors, via_hook, {"k": "v"}, direct=True)
    assert via_hook.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("threshold", [0, 1 << 62])
@pytest.mark.parametrize("backend", ["mmap", "pread"])
def test_slices_through_the_engine_or_one_call(tmp_path, monkeypatch, backend,
                                               threshold):
    """Big slices are read by the parallel engine (threshold 0: every
    slice), small ones by one call (threshold huge: every slice): both give
    what torch indexing gives."""
    monkeypatch.setattr(st, "_PARALLEL_SLICE", threshold)
    g = torch.Generator().manual_seed(9)
    m = torch.randn(3000, 512, generator=g)           # 6 MB
    path = tmp_path / "m.safetensors"
    st.save_file({"m": m}, path)
    cases = [(slice(None), slice(0, 128)), (slice(None), slice(384, 512)),
             (slice(None, None, 2), slice(1, 400, 3)), (slice(-1000, None), 5),
             (slice(10, 20), slice(None)), (slice(5, 5), slice(None))]
    with st.safe_open(path, "pt", backend=backend) as f:
        sl = f.get_slice("m")
        for idx in cases:
            got = sl[idx]
            want = m[idx]
            assert got.shape == want.shape, idx
            assert torch.equal(got.contiguous(), want.contiguous()), idx
