"""patch_safetensors / unpatch_safetensors: the reference package's loaders served by
torch_safetensors, with the reference's API, results and error types, in real transformers
loads (in this process and in fresh ones, patched before or after transformers is imported,
or by TORCH_SAFETENSORS_PATCH)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import torch

import safetensors
import safetensors.torch
import transformers  # noqa: F401  (a missing package fails, never skips)
import transformers.modeling_utils

import torch_safetensors
from torch_safetensors import _patch

_HERE = os.path.dirname(os.path.abspath(__file__))

# Kept in a dict: the patch rebinds module attributes that are the reference's objects
# (this module's globals included), never the contents of containers.
ORIG = {
    "safe_open": safetensors._safetensors_rust.safe_open,
    "load_file": safetensors.torch.load_file,
    "load": safetensors.torch.load,
    "mu_safe_open": transformers.modeling_utils.safe_open,
    "mu_load": transformers.modeling_utils._safe_load_bytes,
}


@pytest.fixture(autouse=True)
def _unpatched():
    torch_safetensors.unpatch_safetensors()
    yield
    torch_safetensors.unpatch_safetensors()


@pytest.fixture
def opens(monkeypatch):
    """Paths torch_safetensors opened through the stand-ins (proof that our code ran)."""
    seen = []
    real = _patch._open

    def counting(*args, **kwargs):
        seen.append(os.fspath(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(_patch, "_open", counting)
    return seen


def _assert_reference_objects():
    assert safetensors.safe_open is ORIG["safe_open"]
    assert safetensors.torch.safe_open is ORIG["safe_open"]
    assert safetensors.torch.load_file is ORIG["load_file"]
    assert safetensors.torch.load is ORIG["load"]
    assert transformers.modeling_utils.safe_open is ORIG["mu_safe_open"]
    assert transformers.modeling_utils._safe_load_bytes is ORIG["mu_load"]


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (a, b)
    assert a.device == b.device
    if a.dim():  # bitwise (NaN payloads, -0.0)
        a, b = a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    assert torch.equal(a, b)


def _same_dict(a: dict, b: dict, ordered: bool = True) -> None:
    if ordered:
        assert list(a) == list(b)
    else:
        assert sorted(a) == sorted(b)
    for k in a:
        _same(a[k], b[k])


@pytest.fixture
def sample(tmp_path):
    """A file written by the reference: several dtypes, a scalar, metadata."""
    torch.manual_seed(0)
    tensors = {
        "w": torch.randn(6, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "h": torch.randn(3, 4, 2).to(torch.bfloat16),
        "s": torch.tensor(3.5, dtype=torch.float16),
        "u": torch.randint(0, 255, (9,), dtype=torch.uint8),
        "e": torch.zeros(0, 3),
    }
    path = tmp_path / "sample.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"k": "v"})
    return path


# --------------------------------------------------------------------------------------------
# Patching and unpatching
# --------------------------------------------------------------------------------------------

def test_patch_rebinds_everywhere_and_unpatch_restores(monkeypatch):
    _assert_reference_objects()
    # A module that bound the reference's objects under other names before the patch.
    early = types.ModuleType("_patch_test_early")
    early.opener, early.lf, early.other = ORIG["safe_open"], ORIG["load_file"], 42
    monkeypatch.setitem(sys.modules, early.__name__, early)

    assert torch_safetensors.patch_safetensors() is True
    assert _patch.is_patched()
    assert torch_safetensors.patch_safetensors() is False  # idempotent
    assert safetensors.safe_open is _patch.safe_open
    assert safetensors.torch.safe_open is _patch.safe_open
    assert safetensors.torch.load_file is _patch.load_file
    assert safetensors.torch.load is _patch.load
    assert transformers.modeling_utils.safe_open is _patch.safe_open
    assert transformers.modeling_utils._safe_load_bytes is _patch.load
    assert early.opener is _patch.safe_open and early.lf is _patch.load_file
    assert early.other == 42
    # The reference's extension module keeps its own objects.
    assert safetensors._safetensors_rust.safe_open is ORIG["safe_open"]

    # A module imported while patched binds the stand-ins; unpatch restores it as well.
    late = types.ModuleType("_patch_test_late")
    late.safe_open, late.load = safetensors.safe_open, safetensors.torch.load
    monkeypatch.setitem(sys.modules, late.__name__, late)

    assert torch_safetensors.unpatch_safetensors() is True
    assert torch_safetensors.unpatch_safetensors() is False
    assert not _patch.is_patched()
    _assert_reference_objects()
    assert early.opener is ORIG["safe_open"] and early.lf is ORIG["load_file"]
    assert late.safe_open is ORIG["safe_open"] and late.load is ORIG["load"]

    # Patch / unpatch again: the same objects each time.
    assert torch_safetensors.patch_safetensors() is True
    assert safetensors.safe_open is _patch.safe_open
    assert torch_safetensors.unpatch_safetensors() is True
    _assert_reference_objects()


def test_patch_is_thread_safe():
    import threading

    barrier = threading.Barrier(8)
    results = []

    def worker():
        barrier.wait()
        results.append(torch_safetensors.patch_safetensors())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert safetensors.safe_open is _patch.safe_open
    torch_safetensors.unpatch_safetensors()
    _assert_reference_objects()


# --------------------------------------------------------------------------------------------
# The reference's API and results
# --------------------------------------------------------------------------------------------

def test_handle_matches_reference(sample, opens):
    ref = ORIG["safe_open"](str(sample), framework="pt")
    torch_safetensors.patch_safetensors()
    with safetensors.safe_open(sample, "pt", device="cpu", backend="mmap") as ours:
        assert type(ours) is _patch._Handle
        assert isinstance(ours, safetensors.safe_open)
        assert isinstance(ORIG["safe_open"](str(sample), "flax"), safetensors.safe_open)
        assert not isinstance(object(), safetensors.safe_open)
        assert opens == [str(sample)]
        assert ours.keys() == ref.keys()
        assert ours.offset_keys() == ref.offset_keys()
        assert ours.metadata() == ref.metadata() == {"k": "v"}
        for k in ref.keys():
            _same(ours.get_tensor(k), ref.get_tensor(k))
            rs, os_ = ref.get_slice(k), ours.get_slice(k)
            assert os_.get_shape() == rs.get_shape()
            assert os_.get_dtype() == rs.get_dtype()
            _same(os_[...], rs[...])
            if rs.get_shape():
                _same(os_[:], rs[:])
        _same_dict(ours.get_tensors(), ref.get_tensors())
        for index in [(slice(1, 4), slice(None, None, 2)), 2, (Ellipsis, -1),
                      (slice(None), None, 3), slice(-2, None)]:
            _same(ours.get_slice("w")[index], ref.get_slice("w")[index])
        _same(ours.get_slice("h")[1:, ::3], ref.get_slice("h")[1:, ::3])
    # Closed: the reference's error type, as the reference after __exit__.
    ref.__exit__(None, None, None)
    for handle in (ours, ref):
        with pytest.raises(safetensors.SafetensorError, match="closed"):
            handle.keys()
    # A handle used without `with` works as well (transformers keeps them open).
    plain = safetensors.safe_open(str(sample), framework="pytorch")
    _same(plain.get_slice("b")[2:5], torch.arange(2, 5))


@pytest.mark.parametrize("framework", ["numpy", "np"])
def test_numpy_handle_matches_reference(sample, opens, framework):
    import numpy as np

    ref = ORIG["safe_open"](str(sample), framework)
    torch_safetensors.patch_safetensors()
    with safetensors.safe_open(str(sample), framework=framework) as ours:
        assert type(ours) is _patch._Handle and opens == [str(sample)]
        names = [k for k in ref.keys() if ref.get_slice(k).get_dtype() != "BF16"]
        assert names and ours.keys() == ref.keys()
        for k in names:
            a, b = ours.get_tensor(k), ref.get_tensor(k)
            assert type(a) is type(b) is np.ndarray and a.dtype == b.dtype
            assert np.array_equal(a, b) and a.shape == b.shape
            if b.ndim and b.shape[0] > 1:
                assert np.array_equal(ours.get_slice(k)[1:], ref.get_slice(k)[1:])
        # BF16: both refuse (ours catchable as the reference's error) while numpy has
        # no bfloat16; both give bfloat16 arrays once ml_dtypes registered it (another
        # test module may have imported it; test_dropin_parity checks both states).
        try:
            want = ref.get_tensor("h")
        except Exception as e:  # noqa: BLE001 - the reference's own type
            with pytest.raises(type(e)):
                ours.get_tensor("h")
        else:
            got = ours.get_tensor("h")
            assert got.dtype == want.dtype and np.array_equal(got.view(np.int16),
                                                              want.view(np.int16))


def test_load_file_and_load_match_reference(sample, opens):
    want_file = ORIG["load_file"](sample)
    want_bytes = ORIG["load"](sample.read_bytes())
    torch_safetensors.patch_safetensors()
    _same_dict(safetensors.torch.load_file(sample), want_file)
    _same_dict(safetensors.torch.load_file(str(sample), "cpu", backend="pread"), want_file)
    _same_dict(safetensors.torch.load_file(filename=sample, device="cpu"), want_file)
    # The reference's load returns its names in hash order: compare as sets.
    _same_dict(safetensors.torch.load(sample.read_bytes()), want_bytes, ordered=False)
    _same_dict(safetensors.torch.load(data=sample.read_bytes()), want_bytes, ordered=False)
    assert opens == [str(sample)] * 3
    # The tensors are writable and independent of the file, as the reference's.
    got = safetensors.torch.load_file(sample)
    got["w"].add_(1)
    _same(ORIG["load_file"](sample)["w"], want_file["w"])


def test_reference_load_functions_follow(sample, opens):
    # The reference's own load_model calls safetensors.torch.load_file by name.
    model = torch.nn.Linear(4, 3)
    path = sample.parent / "lin.safetensors"
    safetensors.torch.save_model(model, str(path))
    torch_safetensors.patch_safetensors()
    fresh = torch.nn.Linear(4, 3)
    safetensors.torch.load_model(fresh, str(path))
    assert opens == [str(path)]
    _same(fresh.weight.data, model.weight.data)


# --------------------------------------------------------------------------------------------
# Fallbacks: what the stand-ins do not serve goes to the reference, unchanged
# --------------------------------------------------------------------------------------------

def _outcome(fn):
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - the outcome is compared
        return ("raised", type(e), str(e))
    if isinstance(value, dict):
        return ("dict", {k: v.tolist() if hasattr(v, "tolist") else v for k, v in value.items()})
    return ("value", type(value))


FALLBACK_OPEN = [
    ((), {"framework": "numpy", "device": "meta"}),
    ((), {"framework": "flax"}),
    ((), {"framework": "tf"}),
    ((), {"framework": "mlx"}),
    ((), {"framework": "nonsense"}),
    ((), {"framework": "pt", "device": "meta"}),
    ((), {"framework": "pt", "device": "mps"}),
    ((), {"framework": "pt", "device": "cpu:0"}),
    ((), {"framework": "pt", "device": "CPU"}),
    ((), {"framework": "pt", "device": torch.device("cpu")}),
    ((), {"framework": "pt", "device": True}),
    ((), {"framework": "pt", "backend": "odirect"}),
    ((), {"framework": "pt", "unknown": 1}),
    (("pt", "cpu", "mmap"), {}),
    (("pt",), {"framework": "pt"}),
    ((), {}),
]
if not torch.cuda.is_available():
    FALLBACK_OPEN += [((), {"framework": "pt", "device": "cuda:0"}),
                      ((), {"framework": "pt", "device": 0})]


@pytest.mark.parametrize("args,kwargs", FALLBACK_OPEN, ids=[repr(c) for c in FALLBACK_OPEN])
def test_safe_open_fallbacks_are_the_reference(sample, opens, args, kwargs):
    def call(fn):
        def go():
            h = fn(str(sample), *args, **kwargs)
            return {k: h.get_tensor(k) for k in h.keys()}
        return _outcome(go)

    want = call(ORIG["safe_open"])
    torch_safetensors.patch_safetensors()
    got = call(safetensors.safe_open)
    assert got == want
    assert opens == []


FALLBACK_LOAD_FILE = [
    ((), {"device": "meta"}),
    ((), {"device": torch.device("cpu")}),
    ((), {"framework": "pt"}),
    ((), {"backend": "nope"}),
    (("cpu", "mmap"), {}),
    ((), {"mmap": False}),
]


@pytest.mark.parametrize("args,kwargs", FALLBACK_LOAD_FILE,
                         ids=[repr(c) for c in FALLBACK_LOAD_FILE])
def test_load_file_fallbacks_are_the_reference(sample, opens, args, kwargs):
    want = _outcome(lambda: ORIG["load_file"](str(sample), *args, **kwargs))
    torch_safetensors.patch_safetensors()
    assert _outcome(lambda: safetensors.torch.load_file(str(sample), *args, **kwargs)) == want
    assert opens == []


@pytest.mark.parametrize("make", [bytearray, memoryview, str, lambda b: None],
                         ids=["bytearray", "memoryview", "str", "none"])
def test_load_fallbacks_are_the_reference(sample, make):
    data = sample.read_bytes()
    want = _outcome(lambda: ORIG["load"](make(data)))
    torch_safetensors.patch_safetensors()
    got = _outcome(lambda: safetensors.torch.load(make(data)))
    if want[0] == "dict":  # hash order in the reference
        assert got[0] == "dict" and sorted(got[1].items()) == sorted(want[1].items())
    else:
        assert got == want


# --------------------------------------------------------------------------------------------
# Errors: catchable as whatever the reference raises
# --------------------------------------------------------------------------------------------

def _bad_header(tmp):
    p = tmp / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        ")
    return str(p)


ERROR_CASES = {
    "missing-file": lambda so, lf, ld, s, tmp: so(str(tmp / "absent.safetensors"), "pt"),
    "bad-header": lambda so, lf, ld, s, tmp: so(_bad_header(tmp), "pt"),
    "missing-key": lambda so, lf, ld, s, tmp: so(s, "pt").get_tensor("nope"),
    "missing-key-slice": lambda so, lf, ld, s, tmp: so(s, "pt").get_slice("nope"),
    "key-not-str": lambda so, lf, ld, s, tmp: so(s, "pt").get_tensor(3),
    "slice-out-of-range": lambda so, lf, ld, s, tmp: so(s, "pt").get_slice("w")[9],
    "slice-too-many": lambda so, lf, ld, s, tmp: so(s, "pt").get_slice("w")[0, 0, 0],
    "load-file-missing": lambda so, lf, ld, s, tmp: lf(str(tmp / "absent.safetensors")),
    "load-file-bad": lambda so, lf, ld, s, tmp: lf(_bad_header(tmp)),
    "load-bytes-short": lambda so, lf, ld, s, tmp: ld(b"abc"),
    "load-bytes-bad": lambda so, lf, ld, s, tmp: ld(b"\x10" + b"\x00" * 7 + b"{}"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_have_the_reference_types(sample, tmp_path, opens, case):
    fn = ERROR_CASES[case]
    with pytest.raises(Exception) as ref_exc:
        fn(ORIG["safe_open"], ORIG["load_file"], ORIG["load"], str(sample), tmp_path)
    torch_safetensors.patch_safetensors()
    with pytest.raises(Exception) as our_exc:
        fn(safetensors.safe_open, safetensors.torch.load_file, safetensors.torch.load,
           str(sample), tmp_path)
    # Ours, and catchable as the reference's (SafetensorError, FileNotFoundError, ...).
    assert isinstance(our_exc.value, torch_safetensors.SafetensorError), our_exc.value
    assert isinstance(our_exc.value, type(ref_exc.value)), (our_exc.value, ref_exc.value)
    if not isinstance(ref_exc.value, safetensors.SafetensorError):
        assert not isinstance(our_exc.value, safetensors.SafetensorError)
    if not case.startswith("load-bytes"):
        assert opens  # served by torch_safetensors, not passed on


# --------------------------------------------------------------------------------------------
# transformers: from_pretrained through the patch
# --------------------------------------------------------------------------------------------

def _tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=3, n_embd=64, n_head=4, vocab_size=211,
                                  n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["single", "sharded"])
def saved_model(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"gpt2-{request.param}")
    model = _tiny_gpt2()
    if request.param == "sharded":
        model.save_pretrained(d, max_shard_size="60KB")
        assert (d / "model.safetensors.index.json").exists()
    else:
        model.save_pretrained(d)
        assert (d / "model.safetensors").exists()
    files = sorted(str(p) for p in d.glob("*.safetensors"))
    assert (len(files) > 1) == (request.param == "sharded")
    return d, files


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.arange(12).reshape(2, 6)).logits


def test_from_pretrained_through_the_patch(saved_model, opens, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d, files = saved_model
    plain = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    assert opens == []
    torch_safetensors.patch_safetensors()
    patched = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    assert sorted(set(opens)) == files  # every shard read by torch_safetensors
    sd_plain, sd_patched = plain.state_dict(), patched.state_dict()
    assert list(sd_plain) == list(sd_patched)
    for k in sd_plain:
        _same(sd_patched[k], sd_plain[k])
    assert patched.lm_head.weight.data_ptr() == patched.transformer.wte.weight.data_ptr()
    _same(_logits(patched), _logits(plain))
    torch_safetensors.unpatch_safetensors()
    del opens[:]
    again = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    assert opens == []
    _same(_logits(again), _logits(plain))


@pytest.mark.parametrize("mode,env,expect_patched", [
    ("before", {}, True),
    ("after", {}, True),
    ("env", {"TORCH_SAFETENSORS_PATCH": "1"}, True),
    ("env", {"TORCH_SAFETENSORS_PATCH": "true"}, True),
    ("none", {"TORCH_SAFETENSORS_PATCH": "0"}, False),
    ("none", {}, False),
], ids=["before-import", "after-import", "env-1", "env-true", "env-0", "no-env"])
def test_from_pretrained_in_a_fresh_process(saved_model, tmp_path, mode, env, expect_patched):
    d, files = saved_model
    want = _logits(transformers.GPT2LMHeadModel.from_pretrained(d).eval())
    out = tmp_path / "logits.pt"
    e = {k: v for k, v in os.environ.items() if k != "TORCH_SAFETENSORS_PATCH"}
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", **env)
    p = subprocess.run([sys.executable, os.path.join(_HERE, "_patch_child.py"), mode, str(d),
                        str(out)], capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["patched"] is expect_patched
    if expect_patched:
        assert res["opens"] == len(files)
        assert res["modeling_utils_safe_open"] == "torch_safetensors._patch.safe_open"
    else:
        assert res["opens"] == 0
        assert res["modeling_utils_safe_open"] == "builtins.safe_open"
    _same(torch.load(out), want)
