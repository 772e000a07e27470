"""Safety of torch.save(format="safetensors") / torch.load: refusals, no pickle, corrupt files."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import warnings

import pytest
import torch

import torch_safetensors  # noqa: F401  (installs the hook)
from torch_safetensors.errors import SafetensorError, SafetensorTypeError


class _Thing:
    pass


def _fn():
    return 1


_Point = collections.namedtuple("_Point", "x y")


class _MyTensor(torch.Tensor):
    pass


def _refusal_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # beta/prototype/deprecation notices of sparse etc.
        return _make_refusal_cases()


def _make_refusal_cases():
    cases = [
        ({"a": {"b": _Thing()}}, r"a value of type .*_Thing at obj\['a'\]\['b'\]"),
        ({"f": _fn}, r"a callable \(function _fn\) at obj\['f'\]"),
        ([1, lambda: 2], r"a callable \(function .*<lambda>\) at obj\[1\]"),
        ({"m": torch.nn.Linear(2, 2)}, r"an nn.Module \(Linear\).*at obj\['m'\]"),
        ({"d": collections.defaultdict(list)}, r"a value of type collections.defaultdict "
                                               r"at obj\['d'\]"),
        ({"p": _Point(1, 2)}, r"a value of type .*_Point at obj\['p'\]"),
        ({"t": torch.ones(2).as_subclass(_MyTensor)}, r"a tensor subclass .*_MyTensor.* "
                                                      r"at obj\['t'\]"),
        ({"b": b"bytes"}, r"a value of type builtins.bytes at obj\['b'\]"),
        ({"s": {1, 2}}, r"a value of type builtins.set at obj\['s'\]"),
        ({"k": {1.5: torch.ones(1)}}, r"dict key of type float \(1.5\) at obj\['k'\]: only str "
                                      r"and int keys"),
        ({"k": {(1, 2): 3}}, r"dict key of type tuple .* at obj\['k'\]"),
        ({"k": {True: 3}}, r"dict key of type bool .* at obj\['k'\]"),
        ({"sp": torch.eye(3).to_sparse()}, r"sparse_coo tensor at obj\['sp'\].*to_dense"),
        ({"csr": torch.eye(3).to_sparse_csr()}, r"sparse_csr tensor at obj\['csr'\]"),
        ({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8)},
         r"quantized tensor \(torch.quint8\) at obj\['q'\]"),
        ({"n": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])},
         r"nested tensor at obj\['n'\]: safetensors stores dense"),
        ({"nj": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged)},
         r"nested tensor at obj\['nj'\]: safetensors stores dense"),
        ({"meta": torch.empty(2, device="meta")}, r"meta tensor at obj\['meta'\]: it has no data"),
        ({"c": torch.ones(2, dtype=torch.complex128)},
         r"dtype torch.complex128 at obj\['c'\]: it has no safetensors counterpart"),
        ({"s": "\ud800"}, r"string .* at obj\['s'\]: it is not valid Unicode"),
    ]
    try:
        import numpy as np

        cases.append(({"np": np.float64(1.0)}, r"a value of type numpy.float64 at obj\['np'\]"))
    except ImportError:
        pass
    loop: list = [torch.ones(1)]
    loop.append(loop)
    cases.append((loop, r"a container that contains itself at obj\[1\]"))
    return cases


@pytest.mark.parametrize("obj,msg", _refusal_cases())
def test_refusals_name_the_path_and_create_no_file(tmp_path, obj, msg):
    p = tmp_path / "r.safetensors"
    with pytest.raises(TypeError, match=msg) as ei:
        torch.save(obj, p, format="safetensors")
    assert isinstance(ei.value, SafetensorTypeError)
    assert isinstance(ei.value, SafetensorError)
    assert not p.exists()
    assert os.listdir(tmp_path) == []  # no temporary file either
    # an existing file is left untouched
    p.write_bytes(b"old")
    with pytest.raises(TypeError):
        torch.save(obj, p, format="safetensors")
    assert p.read_bytes() == b"old"
    # a file object receives nothing
    buf = io.BytesIO()
    with pytest.raises(TypeError):
        torch.save(obj, buf, format="safetensors")
    assert buf.getvalue() == b""


def test_other_argument_refusals(tmp_path):
    p = tmp_path / "a.safetensors"
    with pytest.raises(ValueError, match="unknown format 'zip': use 'safetensors' or 'pickle'"):
        torch.save({}, p, format="zip")
    with pytest.raises(TypeError, match="metadata= and strict= need format='safetensors'"):
        torch.save({}, p, metadata={"a": "b"})
    with pytest.raises(TypeError, match="takes no pickle arguments"):
        torch.save({}, p, format="safetensors", pickle_protocol=2)
    with pytest.raises(TypeError, match="metadata must be a dict of str to str"):
        torch.save({}, p, format="safetensors", metadata=[("a", "b")])
    with pytest.raises(TypeError, match="metadata must map str to str"):
        torch.save({}, p, format="safetensors", metadata={1: "b"})
    with pytest.raises(ValueError, match="reserved prefix"):
        torch.save({}, p, format="safetensors",
                   metadata={"torch_safetensors.structure": "{}"})
    base = torch.arange(4.0)
    with pytest.raises(TypeError, match=r"obj\['b'\] overlaps obj\['a'\] in memory"):
        torch.save({"a": base, "b": base[1:]}, p, format="safetensors", strict=True)
    assert not p.exists()
    torch.save({}, p, format="safetensors")
    with pytest.raises(TypeError, match="unexpected arguments \\['foo'\\]"):
        torch.load(p, foo=1)


@pytest.fixture
def no_pickle(monkeypatch):
    """Every way into pickle raises while the fixture is active."""

    def boom(*a, **k):
        raise AssertionError("pickle was used")

    class NoUnpickler:
        def __init__(self, *a, **k):
            boom()

    import torch._weights_only_unpickler as wou

    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(wou, "Unpickler", NoUnpickler)
    monkeypatch.setattr(wou, "load", boom)
    monkeypatch.setattr(torch.serialization, "_load", boom)
    monkeypatch.setattr(torch.serialization, "_legacy_load", boom)
    return boom


def test_loading_never_unpickles(tmp_path, no_pickle):
    import safetensors.torch as ref

    obj = {"model": {"w": torch.ones(2, 3)}, "step": 5, "opt": [(0.9, 0.99), None]}
    p = tmp_path / "ckpt.bin"
    torch.save(obj, p, format="safetensors")
    for kw in [{}, {"weights_only": False}, {"weights_only": True}, {"mmap": False},
               {"map_location": "cpu"}]:
        back = torch.load(p, **kw)
        assert back["step"] == 5 and back["opt"][0] == (0.9, 0.99)
        assert torch.equal(back["model"]["w"], torch.ones(2, 3))
    with open(p, "rb") as fh:
        assert torch.load(fh, weights_only=False)["step"] == 5
    ref.save_file({"x": torch.zeros(3)}, tmp_path / "ref.safetensors")
    assert torch.load(tmp_path / "ref.safetensors", weights_only=False)["x"].shape == (3,)


def test_no_pickle_fixture_is_effective(tmp_path, no_pickle):
    import zipfile

    buf = io.BytesIO()
    # write a pickle checkpoint with the real torch.save (pickling is not patched)
    torch.save({"a": torch.ones(1)}, buf)
    buf.seek(0)
    assert zipfile.is_zipfile(buf)
    buf.seek(0)
    with pytest.raises(AssertionError, match="pickle was used"):
        torch.load(buf, weights_only=False)


def _corrupt_files(good: bytes):
    (n,) = struct.unpack("<Q", good[:8])
    header = good[8:8 + n]
    bad_json = header.replace(b'"dtype"', b'"dtyp"', 1)
    wrong_offsets = header.replace(b'"data_offsets":[0,', b'"data_offsets":[4,', 1)
    assert wrong_offsets != header
    return {
        "truncated data": good[:-3],
        "trailing bytes": good + b"xx",
        "header length past end": struct.pack("<Q", len(good)) + good[8:],
        "bad json": good[:8] + bad_json + good[8 + n:],
        "overlapping offsets": good[:8] + wrong_offsets + good[8 + n:],
        "not utf8": good[:8] + header.replace(b"format", b"f\xffrmat", 1) + good[8 + n:],
        "json garbage": struct.pack("<Q", 8) + b"{,,,,,,}",
    }


@pytest.mark.parametrize("where", ["named", "unnamed", "fileobj"])
def test_corrupt_safetensors_raise_our_error_never_pickle(tmp_path, no_pickle, where):
    good_path = tmp_path / "good.safetensors"
    torch.save({"a": torch.arange(6.0), "b": [torch.ones(2)]}, good_path, format="safetensors")
    good = good_path.read_bytes()
    for why, data in _corrupt_files(good).items():
        p = tmp_path / ("c.safetensors" if where == "named" else "c.pt")
        p.write_bytes(data)
        with pytest.raises(SafetensorError) as ei:
            if where == "fileobj":
                torch.load(io.BytesIO(data))
            else:
                torch.load(p)
        assert not isinstance(ei.value, AssertionError), why


def test_garbage_named_safetensors_is_ours(tmp_path, no_pickle):
    p = tmp_path / "x.safetensors"
    for data in [b"", b"short", b"PK\x03\x04" + b"\0" * 100]:
        p.write_bytes(data)
        with pytest.raises(SafetensorError):
            torch.load(p)


def test_bad_structure_record_is_our_error(tmp_path):
    import safetensors.torch as ref

    p = tmp_path / "s.safetensors"
    for rec, msg in [
        ("{not json", "structure record is not valid JSON"),
        (json.dumps({"version": 99, "root": None}), "unsupported version"),
        (json.dumps({"version": 1, "root": {"t": "tensor", "name": "missing"}}),
         "names tensor 'missing', which is not in the file"),
        (json.dumps({"version": 1, "root": {"t": "bogus"}}), "unknown node type 'bogus'"),
        (json.dumps({"version": 1, "root": {"t": "float", "v": "1e9"}}), "bad float"),
        (json.dumps({"version": 1, "root": {"t": "dict", "items": [[[1], 2]]}}),
         "bad dict item"),
        (json.dumps({"version": 1, "root": [1, 2]}), "unexpected JSON array"),
        (json.dumps({"version": 1, "root": {"t": "dtype", "v": "__class__"}}),
         "unknown dtype"),
    ]:
        ref.save_file({"w": torch.ones(1)}, p,
                      metadata={"torch_safetensors.structure": rec})
        with pytest.raises(SafetensorError, match=msg):
            torch.load(p)


def test_deep_structure_record_is_refused_not_crashing(tmp_path):
    import safetensors.torch as ref

    p = tmp_path / "deep.safetensors"
    rec = '{"version":1,"root":' + '{"t":"list","items":[' * 20000 + "]}" * 20000 + "}"
    ref.save_file({"w": torch.ones(1)}, p, metadata={"torch_safetensors.structure": rec})
    with pytest.raises(SafetensorError):
        torch.load(p)
