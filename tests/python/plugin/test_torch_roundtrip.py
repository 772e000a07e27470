"""torch.save(format="safetensors") / torch.load round trips: dtypes, edge cases, structures."""

from __future__ import annotations

import collections
import io
import json
import math
import struct

import pytest
import torch

import torch_safetensors  # noqa: F401  (installs the hook)
from torch_safetensors import _hook
from _bhelpers import SUPPORTED, assert_same, assert_tree_equal, bits, random_tensor


def _save_load(obj, tmp_path, name="x.safetensors", **load_kw):
    p = tmp_path / name
    torch.save(obj, p, format="safetensors")
    return torch.load(p, **load_kw), p


def _header(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


@pytest.mark.parametrize("dtype", SUPPORTED, ids=str)
@pytest.mark.parametrize("mmap", [None, False])
def test_every_dtype_bitwise(tmp_path, dtype, mmap):
    shapes = {"a": (3, 4), "scalar": (), "empty": (0, 4), "vec": (6,)}
    obj = {k: random_tensor(dtype, s, seed=i) for i, (k, s) in enumerate(shapes.items())}
    back, _ = _save_load(obj, tmp_path, mmap=mmap)
    assert list(back) == list(obj)
    for k in obj:
        assert_same(obj[k], back[k])
    # no accidental aliasing between the loaded tensors
    ptrs = [t.data_ptr() for t in back.values() if t.numel()]
    assert len(set(ptrs)) == len(ptrs)


def test_float4_halves_last_dim_in_file(tmp_path):
    assert hasattr(torch, "float4_e2m1fn_x2"), "the pinned torch has float4"
    t = random_tensor(torch.float4_e2m1fn_x2, (2, 3))
    back, p = _save_load({"f4": t}, tmp_path)
    assert _header(p)["f4"]["dtype"] == "F4"
    assert _header(p)["f4"]["shape"] == [2, 6]
    assert_same(t, back["f4"])


def test_single_tensor_and_plain_values(tmp_path):
    t = torch.arange(5.0)
    back, p = _save_load(t, tmp_path)
    assert_same(t, back)
    assert "tensor" in _header(p)
    for v in [3, -2**70, 1.5, -0.0, float("inf"), float("-inf"), float("nan"), True, False,
              "héllo", "", None, [], (), {}, collections.OrderedDict()]:
        back, _ = _save_load(v, tmp_path)
        assert_tree_equal(v, back)


def test_state_dict_keeps_names_exactly(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = model.state_dict()
    back, p = _save_load(sd, tmp_path)
    names = [k for k in _header(p) if k != "__metadata__"]
    assert sorted(names) == sorted(sd)
    assert_tree_equal(sd, back)
    assert type(back) is collections.OrderedDict
    assert back._metadata == sd._metadata  # module versions survive
    m2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    m2.load_state_dict(back)
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert_same(a, b)


def test_nested_names_and_structure(tmp_path):
    obj = {
        "model": {"fc.weight": torch.ones(2, 2), "fc.bias": torch.zeros(2)},
        "layers": [torch.full((1,), 1.0), (torch.full((1,), 2.0), 7)],
        "by_int": {0: torch.tensor([1]), 1: {"x": torch.tensor([2])}},
        "mixed": {0: torch.tensor([3]), "0": torch.tensor([4]), "a.b": torch.tensor([5]),
                  "50%": 1, "": torch.tensor([6])},
        "epoch": 3, "lr": 1e-3, "name": "run", "best": None, "flag": False,
        "nan": float("nan"), "inf": float("inf"),
        "size": torch.Size([2, 3]), "dtype": torch.bfloat16, "dev": torch.device("cpu"),
    }
    back, p = _save_load(obj, tmp_path)
    assert_tree_equal(obj, back)
    names = set(_header(p)) - {"__metadata__"}
    assert {"model.fc.weight", "model.fc.bias", "layers.0", "layers.1.0", "by_int.0",
            "by_int.1.x", "mixed.0", "mixed.%30", "mixed.a%2Eb", "mixed.%"} == names
    assert type(back["layers"][1]) is tuple
    assert list(back["by_int"]) == [0, 1] and type(list(back["by_int"])[0]) is int
    md = _header(p)["__metadata__"]
    assert md["format"] == "pt"
    rec = json.loads(md["torch_safetensors.structure"])
    assert rec["version"] == 1


def test_colliding_verbatim_names_fall_back_to_escaping(tmp_path):
    obj = {"__metadata__": torch.tensor([1]), "%5F_metadata__": torch.tensor([2]),
           "": torch.tensor([3]), "a.b": torch.tensor([4])}
    back, p = _save_load(obj, tmp_path)
    assert_tree_equal(obj, back)
    names = set(_header(p)) - {"__metadata__"}
    assert names == {"%5F_metadata__", "%255F_metadata__", "%", "a%2Eb"}


def test_tensor_named_metadata_is_renamed(tmp_path):
    obj = {"__metadata__": torch.tensor([1.0]), "w": torch.tensor([2.0])}
    back, p = _save_load(obj, tmp_path)
    assert_tree_equal(obj, back)
    assert set(_header(p)) - {"__metadata__"} == {"%5F_metadata__", "w"}


def test_non_contiguous_and_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {"t": base.t(), "strided": base[::2, 1::3], "neg": torch.arange(5).flip(0),
           "expanded": torch.tensor([1.0, 2.0]).expand(3, 2)}
    back, _ = _save_load(obj, tmp_path)
    for k in obj:
        assert_same(obj[k], back[k])
        assert back[k].is_contiguous()


def test_tied_weights_share_storage(tmp_path):
    w = torch.randn(5, 3)
    obj = {"emb.weight": w, "head.weight": w, "other": w.clone()}
    back, p = _save_load(obj, tmp_path)
    names = set(_header(p)) - {"__metadata__"}
    assert names == {"emb.weight", "other"}  # stored once
    assert_same(w, back["head.weight"])
    assert back["emb.weight"] is back["head.weight"]  # same object came back as one object
    # distinct tensor objects that alias exactly come back as distinct objects on one storage
    obj = {"a": w, "b": w.view(5, 3), "c": w[:]}
    back, p = _save_load(obj, tmp_path)
    assert set(_header(p)) - {"__metadata__"} == {"a"}
    assert back["a"] is not back["b"]
    assert back["a"].untyped_storage().data_ptr() == back["b"].untyped_storage().data_ptr()
    assert back["b"].data_ptr() == back["a"].data_ptr()
    back["a"][0, 0] = 42.0
    assert back["b"][0, 0].item() == 42.0 and back["c"][0, 0].item() == 42.0


def test_tied_weights_in_a_module(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    m = Tied()
    back, _ = _save_load(m.state_dict(), tmp_path, mmap=False)
    assert back["emb.weight"].data_ptr() == back["head.weight"].data_ptr()
    m2 = Tied()
    m2.load_state_dict(back)
    assert torch.equal(m2.head.weight, m.emb.weight)


def test_partial_overlap_is_copied_or_refused(tmp_path):
    base = torch.arange(10.0)
    obj = {"base": base, "tail": base[5:], "t2d": base.view(2, 5).t()}
    back, p = _save_load(obj, tmp_path)
    assert set(_header(p)) - {"__metadata__"} == {"base", "tail", "t2d"}  # separate copies
    for k in obj:
        assert_same(obj[k], back[k])
    back["base"][5] = -1.0
    assert back["tail"][0].item() == 5.0  # independent copies
    with pytest.raises(TypeError, match=r"obj\['(tail|t2d)'\] overlaps obj\['base'\].*strict=True"):
        torch.save(obj, tmp_path / "s.safetensors", format="safetensors", strict=True)
    assert not (tmp_path / "s.safetensors").exists()
    # disjoint views of one storage are fine even when strict
    obj = {"lo": base[:5], "hi": base[5:]}
    torch.save(obj, tmp_path / "d.safetensors", format="safetensors", strict=True)
    assert_tree_equal(obj, torch.load(tmp_path / "d.safetensors"))


def test_optimizer_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
    back, p = _save_load(ckpt, tmp_path)
    assert_tree_equal(ckpt, back)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
    assert "optimizer.state.0.exp_avg" in _header(p)
    opt2 = torch.optim.Adam(model.parameters(), lr=1.0)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.param_groups[0]["lr"] == 1e-3
    for k, st in opt.state_dict()["state"].items():
        for n, v in st.items():
            assert_same(v, opt2.state_dict()["state"][k][n])


def test_parameters_and_requires_grad(tmp_path):
    p = torch.nn.Parameter(torch.randn(3))
    leaf = torch.randn(2, requires_grad=True)
    back, _ = _save_load({"p": p, "leaf": leaf, "list": [p]}, tmp_path)
    assert type(back["p"]) is torch.nn.Parameter and back["p"].requires_grad
    assert back["list"][0] is back["p"]
    assert back["leaf"].requires_grad and type(back["leaf"]) is torch.Tensor
    assert_same(p, back["p"])


def test_file_objects(tmp_path):
    obj = {"a": torch.arange(6).reshape(2, 3), "n": [1, 2]}
    buf = io.BytesIO()
    torch.save(obj, buf, format="safetensors")
    buf.seek(0)
    assert_tree_equal(obj, torch.load(buf))
    with open(tmp_path / "f.bin", "wb") as fh:
        torch.save(obj, fh, format="safetensors")
    with open(tmp_path / "f.bin", "rb") as fh:  # recognised by its bytes, not its name
        assert_tree_equal(obj, torch.load(fh))
    assert_tree_equal(obj, torch.load(str(tmp_path / "f.bin")))


def test_user_metadata(tmp_path):
    p = tmp_path / "m.safetensors"
    torch.save({"a": torch.ones(1)}, p, format="safetensors", metadata={"k": "v", "format": "x"})
    md = _header(p)["__metadata__"]
    assert md["k"] == "v" and md["format"] == "x"
    with pytest.raises(ValueError, match="reserved prefix 'torch_safetensors.'"):
        torch.save({}, p, format="safetensors", metadata={"torch_safetensors.x": "1"})
    with pytest.raises(TypeError, match="metadata must map str to str"):
        torch.save({}, p, format="safetensors", metadata={"k": 1})


def test_reference_reads_our_files_and_we_read_reference_files(tmp_path):
    import safetensors.torch as ref

    tensors = {f"t.{i}": random_tensor(d, (3, 2), seed=i) for i, d in enumerate(SUPPORTED)}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 3)
    ours = tmp_path / "ours.safetensors"
    torch.save(tensors, ours, format="safetensors")
    loaded = ref.load_file(ours)
    assert set(loaded) == set(tensors)
    for k in tensors:
        assert_same(tensors[k], loaded[k])
    theirs = tmp_path / "theirs.bin"  # a name torch's native branch would not recognise
    ref.save_file(tensors, theirs, metadata={"format": "pt"})
    back = torch.load(theirs)
    assert type(back) is dict and set(back) == set(tensors)
    for k in tensors:
        assert_same(tensors[k], back[k])


def test_pickle_files_still_go_to_torch(tmp_path):
    obj = {"a": torch.ones(2), "x": object.__class__}
    p = tmp_path / "p.pt"
    torch.save({"a": torch.ones(2)}, p)
    assert torch.load(p, weights_only=True)["a"].sum().item() == 2.0
    assert torch.load(p, mmap=True)["a"].sum().item() == 2.0
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.load(legacy)["a"].sum().item() == 2.0
    buf = io.BytesIO()
    torch.save([torch.zeros(1)], buf, format="pickle")
    buf.seek(0)
    assert torch.load(buf)[0].item() == 0.0
    del obj


def test_map_location(tmp_path):
    obj = {"a": torch.ones(2), "b": [torch.zeros(1)]}
    p = tmp_path / "m.safetensors"
    torch.save(obj, p, format="safetensors")
    for ml in ["cpu", torch.device("cpu"), {"cpu": "cpu"}, {"cuda:1": "cuda:0"},
               lambda storage, loc: storage, lambda storage, loc: None]:
        back = torch.load(p, map_location=ml)
        assert_tree_equal(obj, back)
    seen = []

    def fn(storage, loc):
        seen.append((type(storage), loc))
        return storage

    torch.load(p, map_location=fn)
    assert seen == [(torch.UntypedStorage, "cpu")] * 2
    assert torch.load(p, map_location="meta")["a"].device.type == "meta"


def test_recorded_device_and_map_location(tmp_path):
    """A recorded device comes back where map_location sends it (files made by hand here)."""
    obj = {"a": torch.arange(3.0)}
    p = tmp_path / "dev.safetensors"
    torch.save(obj, p, format="safetensors")
    data = bytearray(open(p, "rb").read())
    (n,) = struct.unpack("<Q", data[:8])
    hdr = json.loads(data[8:8 + n])
    rec = json.loads(hdr["__metadata__"]["torch_safetensors.structure"])
    rec["root"]["items"][0][1]["device"] = "cuda:1"
    hdr["__metadata__"]["torch_safetensors.structure"] = json.dumps(rec)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    q = tmp_path / "dev2.safetensors"
    q.write_bytes(struct.pack("<Q", len(h)) + h + bytes(data[8 + n:]))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch.cuda.is_available\\(\\) is False"):
            torch.load(q)
    assert_same(obj["a"], torch.load(q, map_location="cpu")["a"])
    assert_same(obj["a"], torch.load(q, map_location={"cuda:1": "cpu"})["a"])
    locs = []
    back = torch.load(q, map_location=lambda s, loc: locs.append(loc) or s)
    assert locs == ["cuda:1"] and back["a"].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_round_trip(tmp_path):
    w = torch.randn(4, 3, device="cuda")
    obj = {"g": torch.arange(4.0, device="cuda"), "c": torch.ones(2), "tied": [w, w.view(4, 3)],
           "bf": torch.randn(5, device="cuda").to(torch.bfloat16), "t": w.t()}
    p = tmp_path / "g.safetensors"
    torch.save(obj, p, format="safetensors")
    rec = json.loads(_header(p)["__metadata__"]["torch_safetensors.structure"])
    assert '"device":"cuda:0"' in json.dumps(rec, separators=(",", ":"))
    back = torch.load(p)
    assert back["g"].device.type == "cuda" and back["c"].device.type == "cpu"
    for k in ("g", "bf", "t"):
        assert_same(obj[k], back[k])
        assert back[k].device == obj[k].device
    a, b = back["tied"]
    assert a.device.type == "cuda" and a.data_ptr() == b.data_ptr()
    cpu = torch.load(p, map_location="cpu")
    assert all(t.device.type == "cpu" for t in (cpu["g"], cpu["tied"][0], cpu["bf"]))
    assert torch.load(p, map_location={"cuda:0": "cpu"})["g"].device.type == "cpu"
    moved = torch.load(p, map_location=torch.device("cuda:0"))
    assert moved["c"].device.type == "cuda"
    locs = []
    torch.load(p, map_location=lambda s, loc: locs.append(loc) or s.cuda())
    assert sorted(set(locs)) == ["cpu", "cuda:0"]
    for mm in (True, False):
        assert_same(obj["g"], torch.load(p, mmap=mm)["g"])


def test_mmap_false_owns_memory_and_default_is_writable(tmp_path):
    obj = {"a": torch.arange(1000.0)}
    p = tmp_path / "o.safetensors"
    torch.save(obj, p, format="safetensors")
    before = p.read_bytes()
    back = torch.load(p)  # zero-copy, copy-on-write
    back["a"][0] = 123.0
    assert p.read_bytes() == before
    owned = torch.load(p, mmap=False)
    owned["a"][1] = 7.0
    assert p.read_bytes() == before
    assert owned["a"][0].item() == 0.0


def test_hook_install_uninstall_chain(tmp_path):
    orig_load, orig_save = torch.load, torch.save
    assert _hook.is_installed()
    torch_safetensors.uninstall()
    try:
        assert not _hook.is_installed()
        assert torch.load.__module__ == "torch.serialization"
        assert torch.serialization.load is torch.load
        with pytest.raises(TypeError):
            torch.save({}, tmp_path / "x", format="safetensors")
        # a wrapper installed by someone else is chained to, not bypassed
        calls = []
        prev = torch.load

        def other_load(f, *a, **k):
            calls.append(f)
            return prev(f, *a, **k)

        torch.load = other_load
        torch_safetensors.install()
        torch_safetensors.install()  # idempotent
        p = tmp_path / "c.pt"
        orig_save({"a": torch.ones(1)}, p)
        assert torch.load(p)["a"].item() == 1.0
        assert calls == [p]  # pickle file went on to the previous torch.load
        q = tmp_path / "c.safetensors"
        torch.save({"a": torch.ones(1)}, q, format="safetensors")
        assert torch.load(q)["a"].item() == 1.0
        assert calls == [p]  # ours handled it
        torch_safetensors.uninstall()
        assert torch.load is other_load
        torch.load = prev
    finally:
        torch_safetensors.install()
    assert torch.load.__module__ == orig_load.__module__ == "torch_safetensors._hook"
    assert torch.save.__module__ == orig_save.__module__


def test_uninstall_when_wrapped_later_passes_through(tmp_path):
    ours = torch.load
    p = tmp_path / "w.safetensors"
    torch.save({"a": torch.ones(1)}, p, format="safetensors")

    def later(f, *a, **k):
        return ours(f, *a, **k)

    torch.load = later
    torch_safetensors.uninstall()
    try:
        assert torch.load is later
        # our wrapper now passes every call through, exactly like the function it wrapped
        # (torch 2.13's own load reads .safetensors paths with the reference; older ones fail)
        orig = torch.serialization.load
        assert orig.__module__ == "torch.serialization"

        def outcome(fn):
            try:
                return ("ok", sorted(fn(p)))
            except Exception as e:  # noqa: BLE001
                return ("error", type(e))

        assert outcome(later) == outcome(orig)
        q = tmp_path / "w.pt"
        orig_save = torch.serialization.save
        orig_save({"b": torch.zeros(1)}, q)
        assert later(q)["b"].item() == 0.0
    finally:
        torch.load = torch.serialization.load
        torch_safetensors.install()
    assert torch.load("%s" % p)["a"].item() == 1.0


def test_autoload_entry_point_installs_hook_in_fresh_process(tmp_path):
    import subprocess
    import sys

    code = ("import torch, sys; "
            "print(torch.load.__module__); "
            "import importlib.metadata as m; "
            "print([e.value for e in m.entry_points(group='torch.backends')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert "torch_safetensors_autoload:autoload" in out[1]
    assert out[0] == "torch_safetensors._hook"
    env = dict(__import__("os").environ, TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.splitlines()
    assert out[0] == "torch.serialization"


def test_float_edge_values_exact(tmp_path):
    vals = [0.1, 1e308, 5e-324, -0.0, math.pi, 2**53 + 1]
    back, _ = _save_load(vals, tmp_path)
    assert back == vals and [type(x) for x in back] == [type(x) for x in vals]
    assert str(back[3]) == "-0.0"
    assert bits(torch.tensor(vals[:5])) == bits(torch.tensor(back[:5]))
