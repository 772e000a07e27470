"""The shared fixtures of tests/data (also loaded by the C++ adapter's tests):
the committed files are what tests/data/make_fixtures.py writes, every view
fixture loads as views/expected.json says through every Python load path,
and every record fixture is accepted or refused as records/expected.json
(docs/RECORD.md) says."""

import filecmp
import json
import os
import subprocess
import sys

import pytest
import torch

import torch_safetensors
from torch_safetensors import _C, errors
from torch_safetensors.torch import load, load_file, safe_open

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data")
VIEWS = os.path.join(DATA, "views")
RECORDS = os.path.join(DATA, "records")


def _json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


VIEW_EXPECTED = _json(os.path.join(VIEWS, "expected.json"))["files"]
RECORD_EXPECTED = _json(os.path.join(RECORDS, "expected.json"))


def _files(root):
    out = set()
    for d, _, names in os.walk(root):
        for n in names:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out


def test_committed_fixtures_are_what_the_generator_writes(tmp_path):
    subprocess.run([sys.executable, os.path.join(DATA, "make_fixtures.py"),
                    str(tmp_path)], check=True)
    made = _files(tmp_path)
    assert {p.split(os.sep)[0] for p in made} == {"views", "records"}
    committed = {os.path.join(sub, p) for sub in ("views", "records")
                 for p in _files(os.path.join(DATA, sub))}
    assert made == committed
    for rel in sorted(made):
        assert filecmp.cmp(tmp_path / rel, os.path.join(DATA, rel),
                           shallow=False), rel


# ---------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------

VIEW_CASES = [(f, n) for f, v in VIEW_EXPECTED.items() for n in v["tensors"]]
FLAG_NAMES = {"PACKED": _C.VIEW_PACKED, "FLAT": _C.VIEW_FLAT,
              "COPY": _C.VIEW_COPY}


def _raw(t):
    return bytes(t.reshape(-1).view(torch.uint8).tolist())


def _check(t, exp):
    assert str(t.dtype) == "torch." + exp["torch_dtype"]
    assert list(t.shape) == exp["torch_shape"]
    assert t.data_ptr() % t.element_size() == 0  # never a misaligned view
    assert _raw(t).hex() == exp["hex"]


@pytest.mark.parametrize("fname,name", VIEW_CASES)
def test_view_policy_from_the_c_core(fname, name):
    exp = VIEW_EXPECTED[fname]["tensors"][name]
    with _C.File(os.path.join(VIEWS, fname)) as f:
        info = f.info(name)
    assert info.dtype == exp["file_dtype"]
    assert list(info.shape) == exp["file_shape"]
    assert info.torch_dtype == exp["torch_dtype"]
    assert list(info.torch_shape) == exp["torch_shape"]
    want = 0
    for flag in exp["flags"]:
        want |= FLAG_NAMES[flag]
    assert info.flags == want


@pytest.mark.parametrize("fname,name", VIEW_CASES)
def test_views_load_as_expected_everywhere(fname, name):
    exp = VIEW_EXPECTED[fname]["tensors"][name]
    path = os.path.join(VIEWS, fname)
    _check(load_file(path)[name], exp)
    _check(load_file(path, backend="pread")[name], exp)
    with open(path, "rb") as fh:
        _check(load(fh.read())[name], exp)
    _check(torch.load(path)[name], exp)
    _check(torch.load(path, mmap=False)[name], exp)
    with safe_open(path, framework="pt") as f:
        a, b = f.get_tensor(name), f.get_tensor(name)
        _check(a, exp)
        # Zero-copy views of one mapping share their address; an aligned
        # copy is a new allocation each time.
        assert (a.data_ptr() == b.data_ptr()) == exp["zero_copy"]


def test_copies_are_owned_and_writable(tmp_path):
    path = os.path.join(VIEWS, "misaligned_offset.safetensors")
    t = load_file(path)["b"]
    t.add_(1)  # an owned copy: writing it touches neither file nor others
    assert _raw(load_file(path)["b"]).hex() == \
        VIEW_EXPECTED["misaligned_offset.safetensors"]["tensors"]["b"]["hex"]


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------

def _summary(v):
    if isinstance(v, torch.Tensor):
        out = {"dtype": str(v.dtype).split(".", 1)[1], "shape": list(v.shape)}
        if isinstance(v, torch.nn.Parameter):
            out["param"] = True
        if v.requires_grad:
            out["requires_grad"] = True
        return {"tensor": out}
    if isinstance(v, dict):
        kind = "odict" if type(v) is not dict else "dict"
        return {kind: [[k, _summary(x)] for k, x in v.items()]}
    if type(v) in (list, tuple):
        return {type(v).__name__: [_summary(x) for x in v]}
    if isinstance(v, torch.Size):
        return {"size": list(v)}
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).split(".", 1)[1]}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return {"float": "inf" if v > 0 else "-inf"}
    return v


def _at(obj, path):
    for k in path:
        obj = obj[k]
    return obj


@pytest.mark.parametrize("fname", sorted(RECORD_EXPECTED["valid"]))
@pytest.mark.parametrize("mmap", [True, False])
def test_valid_records_rebuild(fname, mmap):
    exp = RECORD_EXPECTED["valid"][fname]
    path = os.path.join(RECORDS, "valid", fname)
    obj = torch.load(path, mmap=mmap)
    assert json.loads(json.dumps(_summary(obj))) == exp["summary"]
    for a, b in exp["shared"]:
        ta, tb = _at(obj, a), _at(obj, b)
        assert ta.untyped_storage().data_ptr() == \
            tb.untyped_storage().data_ptr()
        assert ta.data_ptr() == tb.data_ptr()
    assert sorted(load_file(path)) == sorted(exp["stored"])


def test_same_obj_comes_back_as_one_object():
    obj = torch.load(os.path.join(RECORDS, "valid", "same_object.safetensors"))
    assert obj["a"] is obj["b"]


def _record_aliases(node, stored, path=None):
    """docs/RECORD.md's alias rule, applied to a parsed record's root."""
    out = {}
    if not isinstance(node, dict):
        return out
    if node.get("t") == "tensor":
        natural = "tensor" if path is None else path
        if natural != node["name"] and natural not in stored:
            out[natural] = node["name"]
        return out
    join = (lambda k: str(k)) if path is None else \
        (lambda k: path + "." + str(k))
    if node.get("t") in ("list", "tuple"):
        for i, x in enumerate(node["items"]):
            out.update(_record_aliases(x, stored, join(i)))
    elif node.get("t") in ("dict", "odict"):
        for k, x in node["items"]:
            out.update(_record_aliases(x, stored, join(k)))
    return out


@pytest.mark.parametrize("fname", sorted(RECORD_EXPECTED["valid"]))
def test_aliases_follow_the_spec(fname):
    """expected.json's aliases (what C++ honours) are the spec's rule
    applied to the record, and each alias loads with its tensor's bytes."""
    exp = RECORD_EXPECTED["valid"][fname]
    path = os.path.join(RECORDS, "valid", fname)
    with safe_open(path, framework="pt") as f:
        text = (f.metadata() or {}).get("torch_safetensors.structure")
        stored = load_file(path)
    got = {}
    if text is not None:
        got = _record_aliases(json.loads(text)["root"], stored)
    assert got == exp["aliases"]
    assert set(exp["aliases"].values()) <= set(stored)


@pytest.mark.parametrize("fname", sorted(RECORD_EXPECTED["invalid"]))
def test_invalid_records_are_refused(fname):
    exp = RECORD_EXPECTED["invalid"][fname]
    cls = getattr(errors, exp["error"])
    path = os.path.join(RECORDS, "invalid", fname)
    with pytest.raises(cls) as info:
        torch.load(path)
    assert type(info.value) is cls
    assert info.value.status_name == exp["status"]
    assert exp["message"] in str(info.value)
    # The drop-in never parses the record: the tensors load.
    assert set(load_file(path)) == {"w", "v"}


def test_record_errors_are_value_errors():
    assert issubclass(torch_safetensors.SafetensorRecordVersionError,
                      torch_safetensors.SafetensorRecordError)
    assert issubclass(torch_safetensors.SafetensorRecordError, ValueError)
