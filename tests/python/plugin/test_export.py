"""torch_safetensors.export: torch.export + AOTInductor programs whose
weights live in safetensors (docs/EXPORT.md).

The example MLP and transformer block (examples/cpp/model.py, exported by
examples/cpp/export_aoti.py, the same directories the C++ runner's tests
read), a model with tied weights and lifted constants, and the MLP compiled
with its weights inside are compiled once and cached (_export_cache.py).

Tolerance: float32 outputs equal eager within atol=1e-5, rtol=1e-4 (the
compiled kernels fuse and reorder sums; measured differences are below
4e-6); the bf16 layer of the tied model within atol=rtol=1e-2.
"""

import gc
import json
import os
import shutil
import zipfile

import pytest
import torch

import _export_cache
from _export_cache import exported
from torch_safetensors import export
from torch_safetensors.errors import (
    SafetensorError,
    SafetensorExportDtypeError,
    SafetensorExportError,
    SafetensorExportHashError,
    SafetensorExportManifestError,
    SafetensorExportMissingError,
    SafetensorExportPickleError,
    SafetensorExportShapeError,
    SafetensorExportTorchVersionError,
    SafetensorExportUnexpectedError,
    SafetensorExportWeightsBakedError,
)
from torch_safetensors.torch import load_file, safe_open, save_file

# torch 2.13's own: AOTICompiledModel.__call__ unpickles its tree spec
# through a deprecated LeafSpec check, and Inductor imports torch.jit.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated:FutureWarning"),
    pytest.mark.filterwarnings(
        "ignore:.*torch.jit.script_method.*is deprecated:DeprecationWarning"),
]

F32 = dict(atol=1e-5, rtol=1e-4)
MODELS = ["mlp", "block"]


def _eager(name, weights_path):
    model = _export_cache.export_aoti.MODELS[name]().eval()
    model.load_state_dict(load_file(weights_path))
    return model


def _clone(src, dst, weights=None):
    """dst: src's export directory with model.pt2 linked, the rest copied;
    weights: tensors to write as its model.safetensors instead (manifest
    hash updated, so that only the check under test can fail)."""
    os.makedirs(dst, exist_ok=True)
    os.symlink(os.path.join(src, "model.pt2"), os.path.join(dst, "model.pt2"))
    for f in ("export.json", "model.safetensors"):
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    if weights is not None:
        md = safe_open(os.path.join(src, "model.safetensors"), "pt").metadata()
        path = os.path.join(dst, "model.safetensors")
        save_file(weights, path, md)
        m = json.load(open(os.path.join(dst, "export.json")))
        m["weights_sha256"] = export._sha256(path)
        json.dump(m, open(os.path.join(dst, "export.json"), "w"))
    return str(dst)


def _io(d, which="io"):
    return load_file(os.path.join(d, f"{which}.safetensors"))


# -- Outputs ------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_output_equals_eager(name):
    d = exported(name)
    io = _io(d)
    m = export.load(d)
    torch.testing.assert_close(m(io["input"]), io["output"], **F32)
    # and eager with the weights file's own values, independently
    with torch.no_grad():
        ref = _eager(name, os.path.join(d, "model.safetensors"))(io["input"])
    torch.testing.assert_close(m(io["input"]), ref, **F32)


@pytest.mark.parametrize("name", MODELS)
def test_swap_weights_gives_eager_with_those_weights(name):
    d = exported(name)
    io, io2 = _io(d), _io(d, "io2")
    assert not torch.allclose(io["output"], io2["output"], **F32)
    m = export.load(d)
    m.swap_weights(os.path.join(d, "weights2.safetensors"))
    torch.testing.assert_close(m(io2["input"]), io2["output"], **F32)
    with torch.no_grad():
        ref = _eager(name, os.path.join(d, "weights2.safetensors"))(io["input"])
    torch.testing.assert_close(m(io["input"]), ref, **F32)
    m.swap_weights(os.path.join(d, "model.safetensors"))
    torch.testing.assert_close(m(io["input"]), io["output"], **F32)


def test_swapped_out_weights_are_unmapped(tmp_path):
    """torch 2.13's AOTInductor never drops its reference to a user-managed
    constant: handed the file's own views, every file ever swapped in would
    stay mapped. At most the current and the one it replaced are."""
    d = exported("mlp")
    io = _io(d)
    copies = []
    for i in range(4):
        p = str(tmp_path / f"w{i}.safetensors")
        shutil.copy(os.path.join(d, "model.safetensors"), p)
        copies.append(p)

    def mapped():
        with open("/proc/self/maps", encoding="utf-8") as fh:
            return {p for line in fh for p in copies
                    if line.rstrip().endswith(p)}

    m = export.load(d)
    for i, p in enumerate(copies):
        m.swap_weights(p)
        torch.testing.assert_close(m(io["input"]), io["output"], **F32)
        gc.collect()
        assert mapped() == set(copies[max(0, i - 1):i + 1])
    del m
    gc.collect()
    assert mapped() == set()


def test_tied_and_lifted_constants():
    d = exported("tied")
    model, x = _export_cache.tied_example()
    man = export.read_manifest(d)
    # tied a.weight/b.weight: the package asks for one of the names; the
    # tensor made in forward under the compiler's name; the non-persistent
    # buffer too; a transposed view of a.weight as its own tensor.
    assert sorted(man["constants"]) == [
        "_tensor_constant0", "a.bias", "a_weight_t", "b.bias", "b.weight",
        "h.bias", "h.weight", "scale"]
    assert man["constants"]["h.weight"]["dtype"] == "BF16"
    m = export.load(d)
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), atol=1e-2, rtol=1e-2)
    wts = load_file(os.path.join(d, "model.safetensors"))
    torch.testing.assert_close(wts["_tensor_constant0"], model.offset)
    torch.testing.assert_close(wts["scale"], model.scale)


def test_manifest_describes_package_and_file():
    d = exported("block")
    man = export.read_manifest(d)
    m = export.load(d)
    assert set(man["constants"]) == set(m.runner.get_constant_fqns())
    assert m.constant_fqns == sorted(man["constants"])
    assert man["torch"] == torch.__version__
    assert man["weights_sha256"] == export._sha256(
        os.path.join(d, "model.safetensors"))
    sd = _export_cache.export_aoti.MODELS["block"]().state_dict()
    assert set(man["constants"]) == set(sd)
    for fqn, c in man["constants"].items():
        assert c == {"dtype": "F32", "shape": list(sd[fqn].shape),
                     "tensor": fqn}
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        embedded = json.loads(f.metadata()[export.METADATA_KEY])
    assert embedded == {k: v for k, v in man.items() if k != "weights_sha256"}


def test_tied_manifest_entry_is_read_through(tmp_path):
    # Two constants of one tensor: the manifest maps the second to the first
    # and the file holds it once. Eager with the same tie gives the output.
    d = exported("block")
    wts = load_file(os.path.join(d, "model.safetensors"))
    del wts["block.ln2.bias"]
    dst = _clone(d, tmp_path / "t")
    man = export.read_manifest(dst)
    man["constants"]["block.ln2.bias"]["tensor"] = "block.ln1.bias"
    save_file(wts, os.path.join(dst, "model.safetensors"),
              export._metadata_manifest(man))
    man["weights_sha256"] = export._sha256(os.path.join(dst, "model.safetensors"))
    json.dump(man, open(os.path.join(dst, "export.json"), "w"))
    m = export.load(dst)
    model = _eager("block", os.path.join(d, "model.safetensors"))
    with torch.no_grad():
        model.block.ln2.bias.copy_(model.block.ln1.bias)
        x = _io(d)["input"]
        torch.testing.assert_close(m(x), model(x), **F32)
        assert not torch.allclose(m(x), _io(d)["output"], **F32)


def test_layout_stores_same_view_once():
    from torch.export.pt2_archive._package_weights import TensorProperties
    w = torch.randn(4, 4)
    t = w.t()
    weights = {n: (v, TensorProperties(v)) for n, v in
               [("z.w", w), ("a.w", w), ("t", t), ("b", torch.ones(2))]}
    consts, store = export._layout(weights)
    assert consts["z.w"] == {"dtype": "F32", "shape": [4, 4], "tensor": "a.w"}
    assert consts["a.w"]["tensor"] == "a.w"
    assert consts["t"]["tensor"] == "t"  # another view: its own copy
    assert sorted(store) == ["a.w", "b", "t"]
    assert store["t"].is_contiguous() and torch.equal(store["t"], t)


# -- Refusals: the weights --------------------------------------------------

def _bad_weights(d, case):
    wts = load_file(os.path.join(d, "model.safetensors"))
    if case == "missing":
        del wts["fc2.bias"]
    elif case == "unexpected":
        wts["fc3.weight"] = torch.zeros(2)
    elif case == "shape":
        wts["fc1.weight"] = torch.zeros(16, 32)
    elif case == "dtype":
        wts["fc1.weight"] = wts["fc1.weight"].double()
    return wts


MISMATCH = {
    "missing": (SafetensorExportMissingError, "fc2.bias"),
    "unexpected": (SafetensorExportUnexpectedError, "fc3.weight"),
    "shape": (SafetensorExportShapeError, "fc1.weight"),
    "dtype": (SafetensorExportDtypeError, "fc1.weight"),
}


@pytest.mark.parametrize("case", sorted(MISMATCH))
def test_swap_refuses_mismatch_and_keeps_weights(case, tmp_path):
    d = exported("mlp")
    path = str(tmp_path / "w.safetensors")
    save_file(_bad_weights(d, case), path)
    m = export.load(d)
    io = _io(d)
    m.swap_weights(os.path.join(d, "weights2.safetensors"))
    cls, name = MISMATCH[case]
    with pytest.raises(cls) as ei:
        m.swap_weights(path)
    assert ei.value.tensor_name == name
    # nothing reached the package: still the weights2 outputs
    torch.testing.assert_close(m(io["input"]), _io(d, "io2")["output"], **F32)


@pytest.mark.parametrize("case", sorted(MISMATCH))
def test_load_refuses_mismatch(case, tmp_path):
    d = exported("mlp")
    dst = _clone(d, tmp_path / "d", _bad_weights(d, case))
    cls, name = MISMATCH[case]
    with pytest.raises(cls) as ei:
        export.load(dst)
    assert ei.value.tensor_name == name and name in str(ei.value)


def test_weights_of_another_package_refused(tmp_path):
    d = exported("mlp")
    other = safe_open(os.path.join(exported("block"), "model.safetensors"),
                      "pt").metadata()
    path = str(tmp_path / "w.safetensors")
    save_file(load_file(os.path.join(d, "model.safetensors")), path, other)
    with pytest.raises(SafetensorExportManifestError, match="another package"):
        export.load(d).swap_weights(path)


@pytest.mark.parametrize("how", ["truncated", "header"])
def test_corrupt_weights_give_core_error(how, tmp_path):
    d = exported("mlp")
    dst = _clone(d, tmp_path / "d")
    path = os.path.join(dst, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    if how == "truncated":
        data = data[:-100]
        status = "ST_ERR_INCOMPLETE_BUFFER"
    else:
        data[8] = ord("[")  # the header is no longer a JSON object
        status = "ST_ERR_HEADER_DESERIALIZATION"
    open(path, "wb").write(bytes(data))
    for call in (lambda: export.load(dst),
                 lambda: export.load(d).swap_weights(path)):
        with pytest.raises(SafetensorError) as ei:
            call()
        assert not isinstance(ei.value, SafetensorExportError)
        assert ei.value.status_name == status, ei.value


def test_changed_weights_refused_by_hash(tmp_path):
    d = exported("mlp")
    dst = _clone(d, tmp_path / "d")
    path = os.path.join(dst, "model.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0x40  # a data byte: the file still opens
    open(path, "wb").write(bytes(data))
    with pytest.raises(SafetensorExportHashError):
        export.load(dst)
    m = export.load(dst, verify=False)
    assert not torch.allclose(m(_io(d)["input"]), _io(d)["output"], **F32)


# -- Refusals: the package and the manifest ---------------------------------

def test_other_torch_version_refused(tmp_path):
    d = exported("mlp")
    dst = _clone(d, tmp_path / "d")
    man = json.load(open(os.path.join(dst, "export.json")))
    man["torch"] = "2.12.0+cpu"
    json.dump(man, open(os.path.join(dst, "export.json"), "w"))
    with pytest.raises(SafetensorExportTorchVersionError, match="2.12.0"):
        export.load(dst)


def test_package_with_weights_refused(tmp_path):
    baked = os.path.join(exported("baked"), "model.pt2")
    with pytest.raises(SafetensorExportWeightsBakedError,
                       match="package_constants_in_so"):
        export.check_package(baked)
    export.check_package(os.path.join(exported("mlp"), "model.pt2"))
    dst = _clone(exported("mlp"), tmp_path / "d")
    os.remove(os.path.join(dst, "model.pt2"))
    shutil.copy(baked, os.path.join(dst, "model.pt2"))
    with pytest.raises(SafetensorExportWeightsBakedError):
        export.load(dst)


def test_save_refuses_weights_inside(tmp_path):
    model, x = _export_cache.tied_example()
    out = str(tmp_path / "out")
    with pytest.raises(SafetensorExportWeightsBakedError):
        export.save(model, (x,), out, inductor_configs={
            "aot_inductor.package_constants_in_so": True})
    for key, value in [("always_keep_tensor_constants", False),
                       ("aot_inductor.use_runtime_constant_folding", True)]:
        with pytest.raises(SafetensorExportError, match=key):
            export.save(model, (x,), out, inductor_configs={key: value})
    assert not os.path.exists(out)


@pytest.mark.parametrize("entry", ["data/weights/weight_0",
                                   "data/aotinductor/model/custom_obj_0"])
def test_package_with_pickled_constants_refused(entry, tmp_path):
    pkg = str(tmp_path / "model.pt2")
    shutil.copy(os.path.join(exported("mlp"), "model.pt2"), pkg)
    with zipfile.ZipFile(pkg, "a") as z:
        root = z.namelist()[0].split("/")[0]
        z.writestr(f"{root}/{entry}", b"\x80\x02}q\x00.")  # a pickle
    with pytest.raises(SafetensorExportPickleError, match="pickle"):
        export.check_package(pkg)


def test_other_device_refused():
    with pytest.raises(SafetensorExportError, match="compiled for cpu"):
        export.load(exported("mlp"), device="meta")


def test_package_with_other_constants_refused(tmp_path):
    dst = _clone(exported("mlp"), tmp_path / "d")
    os.remove(os.path.join(dst, "model.pt2"))
    os.symlink(os.path.join(exported("block"), "model.pt2"),
               os.path.join(dst, "model.pt2"))
    with pytest.raises(SafetensorExportManifestError, match="asks for"):
        export.load(dst)


@pytest.mark.parametrize("edit", ["format", "version", "missing", "json",
                                  "dangling"])
def test_bad_manifest_refused(edit, tmp_path):
    dst = _clone(exported("mlp"), tmp_path / "d")
    path = os.path.join(dst, "export.json")
    man = json.load(open(path))
    if edit == "format":
        man["format"] = "something.else"
    elif edit == "version":
        man["version"] = 2
    elif edit == "dangling":
        man["constants"]["fc1.bias"]["tensor"] = "fc9.bias"
    json.dump(man, open(path, "w"))
    if edit == "missing":
        os.remove(path)
    elif edit == "json":
        open(path, "w").write("{")
    with pytest.raises(SafetensorExportManifestError):
        export.load(dst)


# -- save_weights ------------------------------------------------------------

def test_save_weights_replaces_directory_weights(tmp_path):
    d = exported("mlp")
    dst = _clone(d, tmp_path / "d")
    new = load_file(os.path.join(d, "weights2.safetensors"))
    man = export.save_weights(new, dst)
    assert man["weights_sha256"] == export._sha256(
        os.path.join(dst, "model.safetensors"))
    assert export.read_manifest(dst) == man
    m = export.load(dst)
    torch.testing.assert_close(m(_io(d)["input"]), _io(d, "io2")["output"],
                               **F32)


def test_save_weights_checks_against_manifest(tmp_path):
    d = exported("mlp")
    out = str(tmp_path / "w.safetensors")
    for case, (cls, name) in sorted(MISMATCH.items()):
        with pytest.raises(cls) as ei:
            export.save_weights(_bad_weights(d, case), d, out)
        assert ei.value.tensor_name == name
        assert not os.path.exists(out)
    bad = load_file(os.path.join(d, "model.safetensors"))
    bad["fc1.weight"] = bad["fc1.weight"].to_sparse()
    with pytest.raises(SafetensorExportPickleError):
        export.save_weights(bad, d, out)
    export.save_weights(_bad_weights(d, "unexpected"), d, out, strict=False)
    assert sorted(load_file(out)) == sorted(export.read_manifest(d)["constants"])


def test_save_weights_tied_and_kept_constants(tmp_path):
    d = exported("tied")
    model, x = _export_cache.tied_example()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-0.5)
    out = str(tmp_path / "w.safetensors")
    # a.weight (tied to b.weight) is no unexpected tensor; the constants no
    # state_dict holds must come from somewhere
    with pytest.raises(SafetensorExportMissingError) as ei:
        export.save_weights(model, d, out)
    assert ei.value.tensor_name in ("_tensor_constant0", "scale")
    export.save_weights(model, d, out, missing="keep")
    m = export.load(d)
    m.swap_weights(out)
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), atol=1e-2, rtol=1e-2)
        assert not torch.allclose(m(x), _io(d)["output"], atol=1e-2)
