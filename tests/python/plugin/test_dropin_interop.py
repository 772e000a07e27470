"""Interop with the reference (safetensors 0.8.0) in both directions, and
each drop-in function against the reference's on the same input."""

from __future__ import annotations

import random
import zlib

import pytest
import torch
from safetensors import SafetensorError as RefError
from safetensors import safe_open as ref_safe_open

import torch_safetensors.torch as st
from torch_safetensors.errors import SafetensorError

from _ahelpers import DTYPES, assert_same, assert_same_dict, rand

# The reference's load(bytes) has no entry for these two (KeyError there).
REF_LOAD_BYTES_MISSING = {"F8_E8M0", "F4"}


def _mixed(seed=0):
    out = {}
    for k, (name, dtype) in enumerate(DTYPES):
        out[f"{name.lower()}.w"] = rand(dtype, (3, 4), seed=seed + k)
        out[f"{name.lower()}.z"] = rand(dtype, (0, 2), seed=seed + k)
        if dtype is not torch.float4_e2m1fn_x2:
            out[f"{name.lower()}.s"] = rand(dtype, (), seed=seed + k)
    return out


def test_same_bytes_as_the_reference(tmp_path, ref):
    tensors = _mixed()
    md = {"format": "pt", "b": "2", "a": "1"}
    assert st.save(tensors) == ref.save(tensors)
    assert st.save(tensors, metadata={"x": "y"}) == \
        ref.save(tensors, metadata={"x": "y"})
    ours, theirs = tmp_path / "o.safetensors", tmp_path / "r.safetensors"
    st.save_file(tensors, ours, metadata=md)
    ref.save_file(tensors, theirs, metadata=md)
    # Several metadata keys: the reference's key order is unspecified, so
    # compare what a reader sees, then the bytes without metadata.
    assert st.load_file(ours).keys() == ref.load_file(theirs).keys()
    st.save_file(tensors, ours)
    ref.save_file(tensors, theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_empty_metadata_dict_same_bytes_as_the_reference(tmp_path, ref):
    tensors = {"a": torch.zeros(2), "b": torch.ones(3, dtype=torch.int64)}
    assert st.save(tensors, metadata={}) == ref.save(tensors, metadata={})
    assert st.save(tensors, metadata={}) != st.save(tensors)
    with st.safe_open(_write(tmp_path, st.save(tensors, metadata={})), "pt") as f:
        assert f.metadata() == {}
    with st.safe_open(_write(tmp_path, st.save(tensors)), "pt") as f:
        assert f.metadata() is None


def _write(tmp_path, data: bytes):
    p = tmp_path / f"f{zlib.crc32(data)}.safetensors"
    p.write_bytes(data)
    return p


def test_each_reads_the_others_files(tmp_path, ref):
    tensors = _mixed(seed=10)
    ours, theirs = str(tmp_path / "o.st"), str(tmp_path / "r.st")
    st.save_file(tensors, ours, metadata={"who": "ours"})
    ref.save_file(tensors, theirs, metadata={"who": "ref"})
    assert_same_dict(tensors, ref.load_file(ours))
    assert_same_dict(tensors, st.load_file(theirs))
    assert_same_dict(tensors, st.load_file(theirs, backend="pread"))
    assert_same_dict(tensors, st.load(open(theirs, "rb").read()))
    subset = {k: v for k, v in tensors.items()
              if k.split(".")[0].upper() not in REF_LOAD_BYTES_MISSING}
    assert_same_dict(subset, ref.load(st.save(subset)))
    with ref_safe_open(ours, framework="pt") as f:
        assert f.metadata() == {"who": "ours"}
    with st.safe_open(theirs, framework="pt") as f:
        assert f.metadata() == {"who": "ref"}


@pytest.mark.parametrize("name,dtype", DTYPES, ids=[n for n, _ in DTYPES])
def test_load_gives_the_references_result(tmp_path, ref, name, dtype):
    tensors = {"a": rand(dtype, (2, 6), seed=1), "b": rand(dtype, (0,)),
               "c": rand(dtype, (5,), seed=2)}
    path = str(tmp_path / "x.st")
    ref.save_file(tensors, path)
    for backend in ("mmap", "pread"):
        ours = st.load_file(path, backend=backend)
        if name == "F4" and backend == "pread":
            # The reference's pread path fails on F4 ("shape [2, 12] is
            # invalid for input of size 12"): compare with the input.
            with pytest.raises(RuntimeError):
                ref.load_file(path, backend=backend)
            assert_same_dict(tensors, ours)
            continue
        theirs = ref.load_file(path, backend=backend)
        assert list(ours) == list(theirs)  # file (offset) order
        assert_same_dict(theirs, ours)
    data = open(path, "rb").read()
    if name not in REF_LOAD_BYTES_MISSING:
        assert_same_dict(ref.load(data), st.load(data))
    else:
        assert_same_dict(tensors, st.load(data))


def test_safe_open_api_matches(tmp_path, ref):
    tensors = {"zz": torch.zeros(2, dtype=torch.float64),
               "aa": torch.zeros(2, dtype=torch.int8),
               "mm": torch.ones(1)}
    for md in (None, {}, {"k": "v"}):
        path = str(tmp_path / "k.st")
        ref.save_file(tensors, path, metadata=md)
        with st.safe_open(path, framework="pt") as o, \
                ref_safe_open(path, framework="pt") as r:
            assert o.keys() == r.keys()
            assert o.offset_keys() == r.offset_keys()
            assert o.metadata() == r.metadata()
            assert list(o.get_tensors()) == list(r.get_tensors())
            for k in r.keys():
                assert_same(r.get_tensor(k), o.get_tensor(k))
                so, sr = o.get_slice(k), r.get_slice(k)
                assert so.get_shape() == sr.get_shape()
                assert so.get_dtype() == sr.get_dtype()


def _random_index(rng: random.Random, shape):
    """A random basic index: ints (also negative and out of range), slices
    with steps and negative bounds, Ellipsis, None."""
    parts = []
    n = rng.randint(0, len(shape) + 1)
    for d in range(n):
        size = shape[d] if d < len(shape) else 3
        kind = rng.random()
        if kind < 0.25:
            parts.append(rng.randint(-size - 1, size))
        elif kind < 0.85:
            def bound():
                return rng.choice([None, rng.randint(-size - 2, size + 2)])
            step = rng.choice([None, 1, 1, 2, 3])
            parts.append(slice(bound(), bound(), step))
        elif kind < 0.93:
            parts.append(Ellipsis)
        else:
            parts.append(None)
    if parts.count(Ellipsis) > 1:
        parts = [p for p in parts if p is not Ellipsis]
    if len(parts) == 1 and rng.random() < 0.5:
        return parts[0]
    return tuple(parts)


def _outcome(fn):
    try:
        return fn(), None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - we compare the refusals
        # BaseException: the reference's pread slicing panics (pyo3
        # PanicException, "capacity overflow") on empty ranges like 2:1.
        return None, e


@pytest.mark.parametrize("name,dtype,shape", [
    ("F32", torch.float32, (4, 5, 6)),
    ("BF16", torch.bfloat16, (7, 3)),
    ("I64", torch.int64, (9,)),
    ("U8", torch.uint8, (2, 3, 2, 3)),
    ("F16", torch.float16, (0, 4)),
    ("BOOL", torch.bool, (5, 1)),
    ("F8_E4M3", torch.float8_e4m3fn, (6, 2)),
    ("C64", torch.complex64, ()),
])
def test_get_slice_matches_reference(tmp_path, ref, name, dtype, shape):
    t = rand(dtype, shape, seed=7)
    path = str(tmp_path / "slice.st")
    ref.save_file({"t": t}, path)
    rng = random.Random(zlib.crc32(name.encode()))
    indices = [_random_index(rng, shape) for _ in range(250)]
    indices += [(slice(None, None, -1),), (slice(0, None, 0),),
                tuple([slice(None)] * (len(shape) + 1)), 100, -100,
                (Ellipsis, Ellipsis)]
    fo = st.safe_open(path, framework="pt")
    fp = st.safe_open(path, framework="pt", backend="pread")
    fr = ref_safe_open(path, framework="pt")
    fr_p = ref_safe_open(path, framework="pt", backend="pread")
    compared = refused = 0
    for index in indices:
        r, rerr = _outcome(lambda: fr.get_slice("t")[index])
        for label, f, rf in (("mmap", fo, fr), ("pread", fp, fr_p)):
            o, oerr = _outcome(lambda: f.get_slice("t")[index])
            if rerr is not None:
                assert oerr is not None, (label, index, "reference refused")
                assert isinstance(oerr, SafetensorError), (index, oerr)
                if not isinstance(rerr, RefError):
                    # Same builtin class as the reference's refusal.
                    assert isinstance(oerr, type(rerr).__mro__[0]) or \
                        isinstance(oerr, type(rerr)), (index, oerr, rerr)
                refused += 1
                continue
            assert oerr is None, (label, index, oerr)
            assert_same(r, o)
            if label == "mmap":
                # The reference returns a view of the mapped tensor.
                assert o.stride() == r.stride(), index
                assert o.is_contiguous() == r.is_contiguous()
            else:
                # The reference's pread path has slicing rules of its own
                # (it refuses a stop past the end, which its mmap path and
                # torch accept); where it answers, it agrees with ours.
                rp, _ = _outcome(lambda: rf.get_slice("t")[index])
                if rp is not None:
                    assert_same(rp, o)
                    assert o.is_contiguous() == rp.is_contiguous()
            compared += 1
    assert compared > 100 and refused > 5
    for f in (fo, fp):
        f.close()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_save_refusals_match_the_reference(tmp_path, ref):
    base = torch.arange(6.0)
    nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    cases = {
        "not a dict": [torch.ones(1)],
        "non-tensor value": {"a": 1},
        "non-str key": {1: torch.ones(1)},
        "sparse": {"a": torch.eye(2).to_sparse()},
        "shared": {"a": base, "b": base[:3]},
        "same tensor twice": {"a": base, "b": base},
        "non-contiguous": {"a": torch.ones(2, 3).t()},
        "nested": {"a": nested},
    }
    for label, tensors in cases.items():
        with pytest.raises(Exception) as er:
            ref.save(tensors)
        with pytest.raises(SafetensorError) as eo:
            st.save(tensors)
        r, o = er.value, eo.value
        if not isinstance(r, RefError) and label != "nested":
            assert isinstance(o, type(r)), (label, o, r)
        path = tmp_path / f"{label}.st"
        with pytest.raises(SafetensorError):
            st.save_file(tensors, path)
        assert not path.exists()
    for md in ({"k": 1}, {1: "v"}, {"k": None}):
        with pytest.raises(TypeError):
            ref.save({"a": base}, metadata=md)
        with pytest.raises(SafetensorError) as eo:
            st.save({"a": base}, metadata=md)
        assert isinstance(eo.value, TypeError)
    with pytest.raises(TypeError):
        ref.load("not bytes")
    with pytest.raises(SafetensorError) as eo:
        st.load("not bytes")
    assert isinstance(eo.value, TypeError)


def test_stricter_than_the_reference_on_purpose(tmp_path, ref):
    """The reference writes files that no reader can use; we refuse."""
    for tensors, status in (({"__metadata__": torch.ones(1)},
                             "ST_ERR_RESERVED_NAME"),
                            ({"a\x00b": torch.ones(1)},
                             "ST_ERR_NUL_IN_STRING")):
        ref.save(tensors)  # accepted there
        with pytest.raises(SafetensorError) as ei:
            st.save(tensors)
        assert ei.value.status_name == status


def test_missing_key_and_closed_file(tmp_path, ref):
    path = str(tmp_path / "m.st")
    ref.save_file({"a": torch.ones(1)}, path)
    with ref_safe_open(path, framework="pt") as r:
        with pytest.raises(RefError):
            r.get_tensor("nope")
    f = st.safe_open(path, framework="pt")
    with pytest.raises(SafetensorError) as ei:
        f.get_tensor("nope")
    assert ei.value.tensor_name == "nope"
    assert ei.value.status_name == "ST_ERR_NOT_FOUND"
    assert isinstance(ei.value, KeyError)
    assert "File does not contain tensor nope" in str(ei.value)
    with pytest.raises(SafetensorError):
        f.get_slice("nope")
    with pytest.raises(TypeError):
        f.get_tensor(0)
    kept = f.get_tensor("a")
    f.__exit__(None, None, None)
    for call in (f.keys, f.metadata, lambda: f.get_tensor("a")):
        with pytest.raises(SafetensorError, match="File is closed"):
            call()
    assert torch.equal(kept, torch.ones(1))  # tensors outlive the handle
    with pytest.raises(SafetensorError):
        st.safe_open(path, framework="pt", backend="nope")
    with pytest.raises(SafetensorError):
        st.safe_open(path, framework="pt", device="bogus")


def test_save_model_load_model_match(tmp_path, ref):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight
            self.norm = torch.nn.LayerNorm(4)

    torch.manual_seed(0)
    m = Tied()
    ours, theirs = tmp_path / "o.st", tmp_path / "r.st"
    st.save_model(m, ours)
    ref.save_model(m, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    for path in (ours, theirs):
        m2, m3 = Tied(), Tied()
        res_o = st.load_model(m2, path)
        res_r = ref.load_model(m3, path)
        assert (set(res_o[0]), sorted(res_o[1])) == \
            (set(res_r[0]), sorted(res_r[1]))
        for (k, a), (_, b) in zip(m2.state_dict().items(),
                                  m.state_dict().items()):
            assert torch.equal(a, b), k
        assert m2.head.weight.data_ptr() == m2.emb.weight.data_ptr()
    # strict: a model with other names fails in both.
    other = torch.nn.Linear(4, 4)
    with pytest.raises(RuntimeError) as er:
        ref.load_model(other, theirs)
    with pytest.raises(RuntimeError) as eo:
        st.load_model(other, theirs)
    assert str(eo.value) == str(er.value)
