"""The drop-in against the reference (safetensors 0.8.0), call for call:
the same call on both, and the same results, exception types and messages
(README, "Parity with safetensors 0.8.0"). Cases come from the reference's
documented and observed behaviour; the differences we keep on purpose are
asserted as differences."""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

import safetensors
import safetensors.numpy as ref_np
import safetensors.torch as ref_pt

import torch_safetensors
import torch_safetensors.numpy as our_np
import torch_safetensors.torch as our_pt


def _outcome(fn):
    """("ok", value) or ("err", exception)."""
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001 - compared below
        return "err", e


def _builtin_bases(exc):
    """The builtin exception classes exc is an instance of (the reference's
    SafetensorError stands for ours)."""
    return {c for c in type(exc).__mro__ if c.__module__ == "builtins"}


def _same_failure(ref_e, our_e, message=True):
    if isinstance(ref_e, safetensors.SafetensorError):
        assert isinstance(our_e, torch_safetensors.SafetensorError), our_e
    else:
        missing = _builtin_bases(ref_e) - _builtin_bases(our_e)
        assert not missing, (type(ref_e), type(our_e), missing)
    if message:
        assert str(our_e) == str(ref_e), (str(our_e), str(ref_e))
    if isinstance(our_e, torch_safetensors.SafetensorError):
        # our fields stay attributes, never the message
        assert isinstance(our_e.status, int)
        assert our_e.status_name not in str(our_e)


def _equal(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            _equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.view(torch.uint8) if a.dtype.itemsize == 1
                           and a.dtype not in (torch.bool,) else a,
                           b.view(torch.uint8) if b.dtype.itemsize == 1
                           and b.dtype not in (torch.bool,) else b)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    else:
        assert a == b, (a, b)


def same(ref_call, our_call, message=True):
    r, o = _outcome(ref_call), _outcome(our_call)
    assert r[0] == o[0], (r, o)
    if r[0] == "ok":
        _equal(r[1], o[1])
    else:
        _same_failure(r[1], o[1], message)
    return o[1]


def _file(header, data=b""):
    h = header if isinstance(header, bytes) else \
        json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def _u8(b, e):
    return {"dtype": "U8", "shape": [e - b], "data_offsets": [b, e]}


# --------------------------------------------------------------------------
# The public surface
# --------------------------------------------------------------------------

def test_every_public_name_of_the_reference_exists():
    for name in ("SafetensorError", "TensorSpec", "deserialize", "safe_open",
                 "serialize", "serialize_file", "__version__",
                 "_safe_open_handle"):
        assert hasattr(safetensors, name)
        assert hasattr(torch_safetensors, name), name
    for name in ("save", "save_file", "load", "load_file", "save_model",
                 "load_model", "safe_open", "storage_ptr", "storage_size",
                 "_find_shared_tensors", "_remove_duplicate_names",
                 "_is_complete", "_end_ptr", "_SIZE", "_TYPES", "_getdtype",
                 "TensorSpec", "serialize", "serialize_file", "deserialize"):
        assert hasattr(ref_pt, name)
        assert hasattr(our_pt, name), name
    for name in ("save", "save_file", "load", "load_file"):
        assert hasattr(our_np, name), name


def test_handles_have_the_reference_methods(tmp_path):
    p = tmp_path / "m.safetensors"
    ref_pt.save_file({"a": torch.ones(2)}, str(p))
    for fw in ("pt", "np"):
        with safetensors.safe_open(str(p), fw) as r, \
                torch_safetensors.safe_open(str(p), fw) as o:
            for m in ("get_slice", "get_tensor", "get_tensors", "keys",
                      "metadata", "offset_keys"):
                assert callable(getattr(o, m)), m
            rs, os_ = r.get_slice("a"), o.get_slice("a")
            assert rs.get_shape() == os_.get_shape()
            assert rs.get_dtype() == os_.get_dtype()


# --------------------------------------------------------------------------
# serialize / serialize_file / deserialize / TensorSpec
# --------------------------------------------------------------------------

def _specs(mod, arrays):
    return {k: mod.TensorSpec(dtype=v.dtype.name, shape=v.shape,
                              data_ptr=v.ctypes.data, data_len=v.nbytes)
            for k, v in arrays.items()}


ARRAYS = {"b": np.arange(3, dtype=np.uint8),
          "a": np.arange(6, dtype=np.float32).reshape(2, 3),
          "e": np.zeros((0, 4), dtype=np.int64)}


# One metadata key: the reference orders several in a hash map's order,
# which changes from process to process.
@pytest.mark.parametrize("metadata", [None, {}, {"k": "v"}])
def test_serialize_bytes_and_files_are_the_reference_bytes(tmp_path,
                                                          metadata):
    data = same(lambda: safetensors.serialize(_specs(safetensors, ARRAYS),
                                              metadata=metadata),
                lambda: torch_safetensors.serialize(
                    _specs(torch_safetensors, ARRAYS), metadata=metadata))
    assert isinstance(data, bytes)
    rp, op = tmp_path / "r.safetensors", tmp_path / "o.safetensors"
    safetensors.serialize_file(_specs(safetensors, ARRAYS), rp, metadata)
    torch_safetensors.serialize_file(_specs(torch_safetensors, ARRAYS), op,
                                     metadata)
    assert rp.read_bytes() == op.read_bytes() == data
    # a list of (name, {dtype, shape, data}); the reference's order is its
    # hash map's (it changes from run to run), ours the file's
    same(lambda: dict(safetensors.deserialize(data)),
         lambda: dict(torch_safetensors.deserialize(data)))
    assert [n for n, _ in torch_safetensors.deserialize(data)] == \
        ["e", "a", "b"]


def test_tensor_spec_fields_and_refusals():
    a = np.ones(4, np.float32)
    for mod in (safetensors, torch_safetensors):
        s = mod.TensorSpec(dtype="float32", shape=(4,), data_ptr=a.ctypes.data,
                           data_len=16)
        assert (s.dtype, s.shape, s.data_ptr, s.data_len) == \
            ("F32", [4], a.ctypes.data, 16)
        f4 = mod.TensorSpec(dtype="float4_e2m1fn_x2", shape=[2, 3],
                            data_ptr=1, data_len=6)
        assert f4.shape == [2, 6]
    for kwargs in ({"dtype": "float128", "shape": [1], "data_ptr": 1,
                    "data_len": 4},
                   {"dtype": "F32", "shape": [1], "data_ptr": 1,
                    "data_len": 4},
                   {"dtype": "float32", "shape": [-1], "data_ptr": 1,
                    "data_len": 4}):
        same(lambda: safetensors.TensorSpec(**kwargs),
             lambda: torch_safetensors.TensorSpec(**kwargs))
    same(lambda: safetensors.TensorSpec("float32", [1], 1, 4),
         lambda: torch_safetensors.TensorSpec("float32", [1], 1, 4),
         message=False)


@pytest.mark.parametrize("label,args", [
    ("not a dict", ([1],)),
    ("metadata not str", ({}, {"x": 1})),
    ("metadata not a dict", ({}, [1])),
])
def test_serialize_refusals(label, args):
    same(lambda: safetensors.serialize(*args),
         lambda: torch_safetensors.serialize(*args))


def test_serialize_length_mismatch_and_bad_paths(tmp_path):
    a = np.ones(4, np.float32)

    def specs(mod):
        return {"a": mod.TensorSpec(dtype="float32", shape=[4],
                                    data_ptr=a.ctypes.data, data_len=12)}
    same(lambda: safetensors.serialize(specs(safetensors)),
         lambda: torch_safetensors.serialize(specs(torch_safetensors)))
    same(lambda: safetensors.serialize_file(_specs(safetensors, ARRAYS), 3),
         lambda: torch_safetensors.serialize_file(
             _specs(torch_safetensors, ARRAYS), 3))
    # Missing directory: both a SafetensorError saying "Error while
    # serializing: I/O error: ..." (the reference also names its temp file).
    _, r = _outcome(lambda: safetensors.serialize_file(
        _specs(safetensors, ARRAYS), tmp_path / "no" / "x.safetensors"))
    _, o = _outcome(lambda: torch_safetensors.serialize_file(
        _specs(torch_safetensors, ARRAYS), tmp_path / "no" / "x.safetensors"))
    assert isinstance(o, torch_safetensors.SafetensorError)
    assert str(o).startswith("Error while serializing: I/O error: ")
    assert str(r).startswith("Error while serializing: I/O error: ")


@pytest.mark.parametrize("data", [b"abc", "abc", bytearray(b"abc")])
def test_deserialize_refusals(data):
    same(lambda: safetensors.deserialize(data),
         lambda: torch_safetensors.deserialize(data))


# --------------------------------------------------------------------------
# Corrupt files: the reference's messages
# --------------------------------------------------------------------------

CORRUPT = [
    ("empty", b""),
    ("seven bytes", b"\x01" * 7),
    ("N over the cap", struct.pack("<Q", 100_000_001) + b"{}"),
    ("N past the end", struct.pack("<Q", 64) + b"{}"),
    ("wrong byte length",
     _file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
           b"\0" * 4)),
    ("hole", _file({"a": _u8(0, 2), "b": _u8(3, 5)}, b"\0" * 5)),
    ("trailing bytes", _file({"a": _u8(0, 2)}, b"\0" * 3)),
    ("truncated data", _file({"a": _u8(0, 4)}, b"\0" * 2)),
    ("shape overflow",
     _file({"a": {"dtype": "F32", "shape": [2**62, 8],
                  "data_offsets": [0, 4]}}, b"\0" * 4)),
    ("odd F4", _file({"a": {"dtype": "F4", "shape": [3],
                            "data_offsets": [0, 1]}}, b"\0")),
    ("reversed offsets", _file({"a": {"dtype": "U8", "shape": [0],
                                      "data_offsets": [1, 0]}}, b"\0")),
]


@pytest.mark.parametrize("label,data", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_files_fail_with_the_reference_message(tmp_path, label,
                                                       data):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(data)
    # what the file looks like may follow the reference's words
    for r_call, o_call in (
            (lambda: ref_pt.load_file(str(p)), lambda: our_pt.load_file(p)),
            (lambda: safetensors.safe_open(str(p), "pt"),
             lambda: torch_safetensors.safe_open(str(p), "pt")),
            (lambda: ref_np.load_file(str(p)), lambda: our_np.load_file(p)),
            (lambda: ref_pt.load(data), lambda: our_pt.load(data)),
            (lambda: ref_np.load(data), lambda: our_np.load(data)),
            (lambda: safetensors.deserialize(data),
             lambda: torch_safetensors.deserialize(data))):
        _, r = _outcome(r_call)
        _, o = _outcome(o_call)
        _same_failure(r, o, message=False)
        assert str(o).startswith(str(r)), (str(o), str(r))
        assert o.status_name in o.detail


def test_missing_file_is_the_reference_file_not_found(tmp_path):
    p = str(tmp_path / "nope.safetensors")
    for r_call, o_call in (
            (lambda: ref_pt.load_file(p), lambda: our_pt.load_file(p)),
            (lambda: safetensors.safe_open(p, "pt"),
             lambda: torch_safetensors.safe_open(p, "pt")),
            (lambda: ref_np.load_file(p), lambda: our_np.load_file(p))):
        o = same(r_call, o_call)
        assert isinstance(o, FileNotFoundError)
        assert o.status_name == "ST_ERR_IO" and o.filename == p


# --------------------------------------------------------------------------
# safe_open: frameworks, devices, keys, slices
# --------------------------------------------------------------------------

@pytest.fixture()
def mixed(tmp_path):
    p = tmp_path / "mixed.safetensors"
    ref_pt.save_file({"a": torch.arange(6.0).reshape(2, 3),
                      "i": torch.arange(4, dtype=torch.int16),
                      "b": torch.ones(2, dtype=torch.bool),
                      "h": torch.ones(3, dtype=torch.bfloat16),
                      "f8": torch.ones(2).to(torch.float8_e4m3fn)},
                     str(p), metadata={"k": "v"})
    return str(p)


@pytest.mark.parametrize("framework", ["pt", "torch", "pytorch", "np",
                                       "numpy", "bogus", "PT"])
def test_frameworks(mixed, framework):
    def run(mod):
        with mod.safe_open(mixed, framework) as f:
            out = {"keys": f.keys(), "offset_keys": f.offset_keys(),
                   "metadata": f.metadata()}
            for k in ("a", "i", "b"):
                out[k] = f.get_tensor(k)
                out[k + "[1:]"] = f.get_slice(k)[1:]
            return out
    same(lambda: run(safetensors), lambda: run(torch_safetensors))


_BF16_STATES = r"""
import sys
import numpy as np
import safetensors, torch
import torch_safetensors
from torch_safetensors.torch import save_file
assert "ml_dtypes" not in sys.modules
p = sys.argv[1]
save_file({"h": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}, p)

def outcome(mod):
    try:
        with mod.safe_open(p, "np") as f:
            return "ok", f.get_tensor("h").view(np.int16).tolist(), f.get_slice("h")[1:].dtype.name
    except Exception as e:
        return "err", type(e).__mro__[1:], str(e)

fresh = outcome(safetensors), outcome(torch_safetensors)
assert fresh[0][0] == "err" and fresh[1][0] == "err" and fresh[0][2] == fresh[1][2], fresh
import ml_dtypes  # registers "bfloat16" with numpy
after = outcome(safetensors), outcome(torch_safetensors)
assert after[0] == after[1] and after[0][0] == "ok" and after[0][2] == "bfloat16", after
print("OK")
"""


def test_numpy_bf16_follows_the_reference_before_and_after_ml_dtypes(tmp_path):
    """The reference asks numpy for "bfloat16" at every read: refused until
    something imports ml_dtypes, bfloat16 arrays after. A fresh interpreter
    sees both states (in this one, another module may have imported it)."""
    r = subprocess.run([sys.executable, "-c", _BF16_STATES, str(tmp_path / "h.safetensors")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stdout + r.stderr


@pytest.mark.parametrize("name", ["h", "f8"])
def test_numpy_refuses_the_dtypes_numpy_lacks(mixed, tmp_path, name):
    for call in (lambda f: f.get_tensor(name),
                 lambda f: f.get_slice(name)[:1]):
        same(lambda: call(safetensors.safe_open(mixed, "np")),
             lambda: call(torch_safetensors.safe_open(mixed, "np")))
    # one tensor per file: the reference meets them in a hash map's order
    with safetensors.safe_open(mixed, "pt") as f:
        alone = ref_pt.save({name: f.get_tensor(name), "a": torch.ones(1)})
    p = tmp_path / "one.safetensors"
    p.write_bytes(alone)
    same(lambda: ref_np.load(alone), lambda: our_np.load(alone))
    same(lambda: safetensors.safe_open(str(p), "np").get_tensors(),
         lambda: torch_safetensors.safe_open(str(p), "np").get_tensors())


def test_numpy_arrays_are_writable_views(mixed):
    with torch_safetensors.safe_open(mixed, "np") as f:
        a = f.get_tensor("a")
    r = safetensors.safe_open(mixed, "np").get_tensor("a")
    assert a.flags.writeable == r.flags.writeable
    a[0, 0] = 42.0  # a private mapping: the file is not changed
    assert safetensors.safe_open(mixed, "np").get_tensor("a")[0, 0] == 0.0


@pytest.mark.parametrize("index", [
    (slice(None), slice(1, None)), 0, -1, (Ellipsis, 1), (),
    (slice(None), slice(None, None, 2)), True, np.int64(1),
    5, -3, (0, 0, 0), None, (slice(None), slice(None, None, 0)),
    (slice(None), slice(None, None, -1)), (Ellipsis, Ellipsis), [0],
    slice(0, 10),
], ids=repr)
def test_numpy_slices(mixed, index):
    same(lambda: safetensors.safe_open(mixed, "np").get_slice("a")[index],
         lambda: torch_safetensors.safe_open(mixed, "np").get_slice("a")[
             index])


@pytest.mark.parametrize("index", [
    (slice(None), slice(1, None)), 0, -1, (Ellipsis, 1), (None, 1),
    (slice(None), slice(None, None, 2)), 5, (0, 0, 0),
    (slice(None), slice(None, None, 0)),
], ids=repr)
def test_torch_slices(mixed, index):
    same(lambda: safetensors.safe_open(mixed, "pt").get_slice("a")[index],
         lambda: torch_safetensors.safe_open(mixed, "pt").get_slice("a")[
             index])


@pytest.mark.parametrize("kwargs", [
    {"device": "bogus"}, {"device": -1}, {"device": 0}, {"backend": "bogus"},
    {"backend": "pread"}, {"device": "cpu"},
])
def test_open_arguments(mixed, kwargs):
    def run(mod):
        with mod.safe_open(mixed, "pt", **kwargs) as f:
            return f.get_tensor("a")
    same(lambda: run(safetensors), lambda: run(torch_safetensors))


def test_numpy_refuses_other_devices(mixed):
    same(lambda: safetensors.safe_open(mixed, "np", device="cuda"),
         lambda: torch_safetensors.safe_open(mixed, "np", device="cuda"))


@pytest.mark.parametrize("what", ["missing key", "closed", "int name"])
def test_handle_refusals(mixed, what):
    def run(mod):
        f = mod.safe_open(mixed, "pt")
        if what == "missing key":
            return f.get_tensor("zz")
        if what == "int name":
            return f.get_tensor(1)
        with f:
            pass
        return f.keys()
    same(lambda: run(safetensors), lambda: run(torch_safetensors))


# --------------------------------------------------------------------------
# safetensors.torch: saving refusals, helpers
# --------------------------------------------------------------------------

_SHARED = torch.ones(4)

SAVE_REFUSALS = [
    ("not a dict", lambda: [1]),
    ("not a tensor", lambda: {"a": 1}),
    ("name not str", lambda: {1: torch.ones(1)}),
    ("sparse", lambda: {"a": torch.eye(2).to_sparse()}),
    ("meta", lambda: {"a": torch.empty(2, device="meta")}),
    ("shared", lambda: {"a": _SHARED, "b": _SHARED}),
    ("non contiguous", lambda: {"a": torch.ones(3, 3).t()}),
    ("complex128", lambda: {"a": torch.ones(2, dtype=torch.complex128)}),
]


@pytest.mark.parametrize("label,make", SAVE_REFUSALS,
                         ids=[c[0] for c in SAVE_REFUSALS])
def test_save_refusals(tmp_path, label, make):
    same(lambda: ref_pt.save(make()), lambda: our_pt.save(make()),
         message=label != "shared")
    same(lambda: ref_pt.save_file(make(), str(tmp_path / "r.st")),
         lambda: our_pt.save_file(make(), str(tmp_path / "o.st")),
         message=label != "shared")
    if label == "meta":  # callers catch it as RuntimeError
        with pytest.raises(RuntimeError):
            our_pt.save(make())


def test_shared_refusal_names_the_same_sets():
    _, r = _outcome(lambda: ref_pt.save({"a": _SHARED, "b": _SHARED}))
    _, o = _outcome(lambda: our_pt.save({"a": _SHARED, "b": _SHARED}))
    norm = [s.replace("{'b', 'a'}", "{'a', 'b'}") for s in (str(r), str(o))]
    assert norm[0] == norm[1]


def test_nested_and_quantized_keep_the_reference_types():
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)],
                                        layout=torch.jagged)
    for t in (nested,):
        same(lambda: ref_pt.save({"a": t}), lambda: our_pt.save({"a": t}),
             message=False)


def _state_dicts():
    w = torch.ones(4, 4)
    yield {"a": w, "b": w, "c": torch.zeros(2)}
    yield {"a": w, "b": w[1:], "c": w[:2]}
    yield {"x": torch.ones(2), "y": torch.empty(0),
           "m": torch.empty(2, device="meta")}
    emb = torch.nn.Embedding(3, 4)
    yield {"emb.weight": emb.weight, "head.weight": emb.weight}
    v = torch.zeros(8)
    yield {"hi": v[4:], "lo": v[:4]}             # one storage, disjoint
    yield {"b": v[:4], "c": v[4:], "d": v[:2]}   # one overlap, one alone
    yield {"z": torch.ones(2), "y": torch.ones(3), "x": torch.ones(1)}
    lin = torch.nn.Linear(3, 3)
    yield {**{f"a.{k}": t for k, t in lin.state_dict().items()},
           **{f"b.{k}": t for k, t in lin.state_dict().items()}}


@pytest.mark.parametrize("sd", list(_state_dicts()), ids=str)
def test_shared_tensor_helpers(sd):
    for name in ("storage_ptr", "storage_size", "_is_complete", "_end_ptr"):
        for t in sd.values():
            same(lambda: getattr(ref_pt, name)(t),
                 lambda: getattr(our_pt, name)(t))
    # the same sets in the same order
    assert our_pt._find_shared_tensors(sd) == ref_pt._find_shared_tensors(sd)
    for kw in ({}, {"preferred_names": ["b"]}, {"discard_names": ["a"]}):
        same(lambda: dict(ref_pt._remove_duplicate_names(sd, **kw)),
             lambda: dict(our_pt._remove_duplicate_names(sd, **kw)),
             message=False)


def test_dtype_tables_agree():
    for k, v in ref_pt._SIZE.items():
        if k is not None:
            assert our_pt._SIZE[k] == v, k
    assert our_pt._TYPES == {k: v for k, v in ref_pt._TYPES.items()}
    assert our_pt._getdtype("F32") is torch.float32


# --------------------------------------------------------------------------
# safetensors.numpy
# --------------------------------------------------------------------------

NP_ARRAYS = {
    "f64": np.arange(3.0), "f16": np.ones((2, 2), np.float16),
    "u64": np.arange(2, dtype=np.uint64), "b": np.array([True, False]),
    "c64": np.ones(2, np.complex64), "scalar": np.array(3.0),
    "empty": np.zeros((0, 3), np.int32),
    "big endian": np.arange(3, dtype=">i4"),
}


def test_numpy_round_trip(tmp_path):
    data = same(lambda: ref_np.save(NP_ARRAYS, metadata={"k": "v"}),
                lambda: our_np.save(NP_ARRAYS, metadata={"k": "v"}))
    same(lambda: ref_np.load(data), lambda: our_np.load(data))
    rp, op = tmp_path / "r.safetensors", tmp_path / "o.safetensors"
    ref_np.save_file(NP_ARRAYS, str(rp))
    our_np.save_file(NP_ARRAYS, op)
    assert rp.read_bytes() == op.read_bytes()
    for backend in ("mmap", "pread"):
        same(lambda: ref_np.load_file(str(op), backend=backend),
             lambda: our_np.load_file(op, backend=backend))
    same(lambda: ref_np.load_file(str(op), backend="bogus"),
         lambda: our_np.load_file(op, backend="bogus"))


@pytest.mark.parametrize("label,tensors", [
    ("float128", {"a": np.zeros(2, np.longdouble)}),
    ("object", {"a": np.array([1, None])}),
    ("complex128", {"a": np.ones(2, np.complex128)}),
    ("numpy scalar", {"a": np.float32(3)}),
    ("list", {"a": [1, 2]}),
    ("not a dict", [1]),
    ("name not str", {1: np.ones(1)}),
])
def test_numpy_save_refusals(label, tensors):
    same(lambda: ref_np.save(tensors), lambda: our_np.save(tensors))


def test_numpy_non_contiguous_is_saved_by_value():
    """A documented difference: the reference stores a transposed array's
    base bytes in memory order; we store its values."""
    a = np.arange(6.0).reshape(2, 3).T
    ours = our_np.load(our_np.save({"a": a}))["a"]
    assert np.array_equal(ours, a)
    theirs = ref_np.load(ref_np.save({"a": a}))["a"]
    assert not np.array_equal(theirs, a)


# --------------------------------------------------------------------------
# _safe_open_handle, SafetensorError pickling
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rb", "r"])
def test_safe_open_handle(mixed, mode):
    def run(mod, framework):
        with open(mixed, mode) as fh:
            with mod._safe_open_handle(fh, framework=framework,
                                       device="cpu") as g:
                return {k: g.get_tensor(k) for k in ("a", "i", "b")}, \
                    g.keys(), g.metadata()
    for framework in ("pt", "np"):
        same(lambda: run(safetensors, framework),
             lambda: run(torch_safetensors, framework))


@pytest.mark.parametrize("obj", [lambda p: io.BytesIO(b"x"),
                                 lambda p: p, lambda p: 3],
                         ids=["BytesIO", "path", "int"])
def test_safe_open_handle_refusals(mixed, obj):
    same(lambda: safetensors._safe_open_handle(obj(mixed), framework="pt"),
         lambda: torch_safetensors._safe_open_handle(obj(mixed),
                                                     framework="pt"))


def test_errors_pickle_with_their_fields(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x01" * 7)
    _, e = _outcome(lambda: our_pt.load_file(p))
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and str(back) == str(e)
    assert (back.status, back.offset, back.detail) == \
        (e.status, e.offset, e.detail)
    for mod in (safetensors, torch_safetensors):
        err = mod.SafetensorError("Error while deserializing header")
        assert str(pickle.loads(pickle.dumps(err))) == str(err)


# --------------------------------------------------------------------------
# safetensors.torch: results
# --------------------------------------------------------------------------

def _torch_tensors():
    return {"f32": torch.arange(6.0).reshape(2, 3),
            "bf16": torch.ones(3, dtype=torch.bfloat16),
            "i8": torch.arange(4, dtype=torch.int8),
            "u16": torch.arange(3, dtype=torch.int32).to(torch.uint16),
            "b": torch.tensor([True, False]),
            "c64": torch.ones(2, dtype=torch.complex64),
            "f8": torch.ones(2).to(torch.float8_e5m2),
            "scalar": torch.tensor(1.5),
            "empty": torch.zeros(0, 3)}


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt"}])
def test_torch_save_and_load_results(tmp_path, metadata):
    t = _torch_tensors()
    data = same(lambda: ref_pt.save(t, metadata=metadata),
                lambda: our_pt.save(t, metadata=metadata))
    rp, op = tmp_path / "r.safetensors", tmp_path / "o.safetensors"
    ref_pt.save_file(t, str(rp), metadata=metadata)
    our_pt.save_file(t, op, metadata=metadata)
    assert rp.read_bytes() == op.read_bytes() == data
    same(lambda: ref_pt.load(data), lambda: our_pt.load(data))
    for backend in ("mmap", "pread"):
        same(lambda: ref_pt.load_file(str(op), backend=backend),
             lambda: our_pt.load_file(op, backend=backend))
    same(lambda: safetensors.safe_open(str(op), "pt").metadata(),
         lambda: torch_safetensors.safe_open(str(op), "pt").metadata())


def test_save_model_and_load_model_results(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = self.a

    m = Tied()
    rp, op = tmp_path / "r.safetensors", tmp_path / "o.safetensors"
    ref_pt.save_model(m, str(rp))
    our_pt.save_model(m, str(op))
    same(lambda: ref_pt.load_file(str(rp)), lambda: our_pt.load_file(op))
    same(lambda: safetensors.safe_open(str(rp), "pt").metadata(),
         lambda: torch_safetensors.safe_open(str(op), "pt").metadata())
    m2, m3 = Tied(), Tied()
    r = ref_pt.load_model(m2, str(op))
    o = our_pt.load_model(m3, str(rp))
    assert r == o
    _equal(m2.state_dict(), m3.state_dict())
    # a model that does not match: the same RuntimeError text
    same(lambda: ref_pt.load_model(torch.nn.Linear(3, 2), str(op)),
         lambda: our_pt.load_model(torch.nn.Linear(3, 2), str(op)))


@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_save_file_io_errors(tmp_path, where):
    target = tmp_path / "no" / "x.safetensors" if where == "missing directory" \
        else tmp_path
    t = {"a": torch.ones(2)}
    arrays = {"a": np.ones(2)}
    for r_call, o_call in (
            (lambda: ref_pt.save_file(t, str(target)),
             lambda: our_pt.save_file(t, target)),
            (lambda: ref_np.save_file(arrays, str(target)),
             lambda: our_np.save_file(arrays, target)),
            (lambda: safetensors.serialize_file(
                _specs(safetensors, ARRAYS), str(target)),
             lambda: torch_safetensors.serialize_file(
                 _specs(torch_safetensors, ARRAYS), target))):
        _, r = _outcome(r_call)
        _, o = _outcome(o_call)
        _same_failure(r, o, message=False)
        assert isinstance(o, OSError) and o.filename == str(target)
        if where == "a directory":
            assert str(o) == str(r) == \
                "Error while serializing: I/O error: Is a directory (os error 21)"
        else:
            # the reference names its temporary file, we name the target
            head = ("Error while serializing: I/O error: No such file or "
                    "directory (os error 2) at path \"")
            assert str(r).startswith(head)
            assert str(o) == head + str(target) + "\""
