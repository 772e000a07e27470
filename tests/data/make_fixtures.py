"""Rebuilds every fixture file under tests/data that both bindings' tests load.

Usage: make_fixtures.py [OUT_DIR]   (default: the directory of this script)

Writes, with deterministic bytes and no dependency beyond the standard library:

views/*.safetensors, views/expected.json
    The view policy (include/safetensors.h, "The torch mapping and the view
    policy"): F4 with an even and an odd last dimension, both F6 dtypes, data
    not aligned to its torch element size (after a 1-byte tensor, and after a
    header whose length puts the data section off 8-byte alignment), and
    ordinary tensors. For each tensor, expected.json gives the file dtype and
    shape, the torch dtype name (torch's Python name) and c10 name, the torch
    shape, the ST_VIEW_* flags, whether a load through the mmap backend is a
    zero-copy view of the mapping, and the tensor's bytes (hex and sha256).

records/valid/*.safetensors, records/invalid/*.safetensors, records/expected.json
    The structure record (docs/RECORD.md). Valid: the aliases a loader must
    honour (a name the record uses -> the stored tensor it shares storage
    with), the pairs of object paths that come back sharing storage, and a
    summary of the rebuilt Python object. Invalid: the error class, its status
    name and a substring of its message.

tests/python/test_fixtures.py checks that the committed files equal what this
script writes, and loads every one of them.
"""

import hashlib
import json
import os
import struct
import sys

BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
        "I16": 16, "F16": 16, "BF16": 16, "F32": 32, "F64": 64, "I64": 64,
        "C64": 64}

STRUCTURE_KEY = "torch_safetensors.structure"


def pattern(n, seed, boolean=False):
    """byte i = (i * 37 + seed) % 256 (BOOL: that value % 2)."""
    b = bytes((i * 37 + seed) % 256 for i in range(n))
    return bytes(x % 2 for x in b) if boolean else b


def nbytes(dtype, shape):
    n = BITS[dtype]
    for d in shape:
        n *= d
    assert n % 8 == 0, (dtype, shape)
    return n // 8


def file_bytes(tensors, metadata=None, header_mod=0):
    """A safetensors file: tensors = [(name, dtype, shape, data)] in data
    order (offsets follow that order); the header is padded with spaces so
    that its length N is = header_mod (mod 8)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, data in tensors:
        assert len(data) == nbytes(dtype, shape), name
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
    text += b" " * ((header_mod - len(text)) % 8)
    return (struct.pack("<Q", len(text)) + text
            + b"".join(t[3] for t in tensors))


# ---------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------

# torch dtype (Python name, c10 name, element size in bytes) of each file
# dtype used below: the expected values, written out, not computed by a
# policy (the policy under test lives in the C core).
TORCH = {
    "BOOL": ("bool", "Bool", 1), "U8": ("uint8", "Byte", 1),
    "I8": ("int8", "Char", 1), "I16": ("int16", "Short", 2),
    "F16": ("float16", "Half", 2), "BF16": ("bfloat16", "BFloat16", 2),
    "F32": ("float32", "Float", 4), "F64": ("float64", "Double", 8),
    "I64": ("int64", "Long", 8), "C64": ("complex64", "ComplexFloat", 8),
    "F4": ("float4_e2m1fn_x2", "Float4_e2m1fn_x2", 1),
    "F6_E2M3": ("uint8", "Byte", 1), "F6_E3M2": ("uint8", "Byte", 1),
}

# file name -> (header_mod, [(name, dtype, file shape, torch shape, flags)])
# in data order. zero_copy is "COPY" not in flags.
VIEW_FILES = {
    "ordinary.safetensors": (0, [
        ("f64", "F64", [2], [2], []),
        ("i64", "I64", [3], [3], []),
        ("c64", "C64", [2], [2], []),
        ("f32", "F32", [2, 3], [2, 3], []),
        ("bf16", "BF16", [2, 2], [2, 2], []),
        ("f16", "F16", [2], [2], []),
        ("i16", "I16", [1, 3], [1, 3], []),
        ("bool", "BOOL", [3], [3], []),
        ("i8", "I8", [2], [2], []),
        ("u8_scalar", "U8", [], [], []),
    ]),
    "f4_even.safetensors": (0, [
        ("x", "F4", [2, 4], [2, 2], ["PACKED"]),
        ("pair", "F4", [2], [1], ["PACKED"]),
    ]),
    "f4_odd.safetensors": (0, [
        ("x", "F4", [2, 3], [3], ["FLAT"]),
        ("row", "F4", [6, 1], [3], ["FLAT"]),
    ]),
    "f6_e2m3.safetensors": (0, [
        ("x", "F6_E2M3", [2, 4], [6], ["FLAT"]),
    ]),
    "f6_e3m2.safetensors": (0, [
        ("x", "F6_E3M2", [4], [3], ["FLAT"]),
    ]),
    # After a 1-byte tensor: the F32 and I16 start at odd offsets.
    "misaligned_offset.safetensors": (0, [
        ("a", "U8", [1], [1], []),
        ("b", "F32", [2], [2], ["COPY"]),
        ("c", "I16", [1], [1], ["COPY"]),
        ("d", "U8", [1], [1], []),
    ]),
    # N = 2 (mod 8): the data section starts 2 bytes past 8-byte alignment.
    "misaligned_header.safetensors": (2, [
        ("w", "F32", [2], [2], ["COPY"]),
        ("h", "F16", [1], [1], []),
        ("d", "F64", [1], [1], ["COPY"]),
        ("u", "U8", [2], [2], []),
    ]),
}


def make_views(out):
    expected = {"files": {}}
    seed = 1
    for fname, (mod, rows) in VIEW_FILES.items():
        tensors = []
        entries = {}
        for name, dtype, fshape, tshape, flags in rows:
            data = pattern(nbytes(dtype, fshape), seed, dtype == "BOOL")
            seed += 1
            tensors.append((name, dtype, fshape, data))
            tname, c10, _ = TORCH[dtype]
            entries[name] = {
                "file_dtype": dtype, "file_shape": fshape,
                "torch_dtype": tname, "c10_dtype": c10, "torch_shape": tshape,
                "flags": flags, "zero_copy": "COPY" not in flags,
                "nbytes": len(data), "hex": data.hex(),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        raw = file_bytes(tensors, header_mod=mod)
        write(out, "views/" + fname, raw)
        expected["files"][fname] = {"tensors": entries}
    write_json(out, "views/expected.json", expected)


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------

def tnode(name, **extra):
    return {"t": "tensor", "name": name, **extra}


def dnode(*items, t="dict"):
    return {"t": t, "items": [list(it) for it in items]}


def record(root, version=1, **extra):
    doc = {"version": version, "root": root}
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":"))


def f32(name, shape, seed):
    return (name, "F32", shape, pattern(nbytes("F32", shape), seed))


def tsum(dtype, shape, **extra):
    return {"tensor": {"dtype": dtype, "shape": shape, **extra}}


def deep_node(levels):
    node = tnode("w")
    for _ in range(levels):
        node = {"t": "list", "items": [node]}
    return node


def deep_record(levels):
    return record(deep_node(levels))


def deep_summary(levels):
    out = tsum("float32", [2])
    for _ in range(levels):
        out = {"list": [out]}
    return out


TWO = [f32("a.weight", [2, 2], 11), f32("a.bias", [2], 12)]

# name -> (tensors, record text or None, aliases, shared paths, summary)
VALID = {
    "state_dict": (
        TWO, record(dnode(["a.weight", tnode("a.weight")],
                          ["a.bias", tnode("a.bias")])),
        {}, [],
        {"dict": [["a.weight", tsum("float32", [2, 2])],
                  ["a.bias", tsum("float32", [2])]]}),
    "no_record": (
        TWO, None, {}, [],
        {"dict": [["a.weight", tsum("float32", [2, 2])],
                  ["a.bias", tsum("float32", [2])]]}),
    "lone_tensor": (
        [f32("tensor", [3], 13)], record(tnode("tensor")), {}, [],
        tsum("float32", [3])),
    "tied": (
        [f32("embed.weight", [4, 2], 14)],
        record(dnode(["embed.weight", tnode("embed.weight")],
                     ["lm_head.weight", tnode("embed.weight")])),
        {"lm_head.weight": "embed.weight"},
        [[["embed.weight"], ["lm_head.weight"]]],
        {"dict": [["embed.weight", tsum("float32", [4, 2])],
                  ["lm_head.weight", tsum("float32", [4, 2])]]}),
    "tied_nested": (
        [f32("model.emb", [2, 2], 15), f32("model.bias", [2], 16)],
        record(dnode(["model", dnode(["emb", tnode("model.emb")],
                                     ["head", tnode("model.emb")],
                                     ["bias", tnode("model.bias")])],
                     ["step", 7])),
        {"model.head": "model.emb"},
        [[["model", "emb"], ["model", "head"]]],
        {"dict": [["model", {"dict": [
            ["emb", tsum("float32", [2, 2])],
            ["head", tsum("float32", [2, 2])],
            ["bias", tsum("float32", [2])]]}],
            ["step", 7]]}),
    "same_object": (
        [f32("a", [2], 17)],
        record(dnode(["a", tnode("a", obj=0)], ["b", tnode("a", obj=0)])),
        {"b": "a"}, [[["a"], ["b"]]],
        {"dict": [["a", tsum("float32", [2])], ["b", tsum("float32", [2])]]}),
    "nested_values": (
        [f32("model.fc.weight", [2, 2], 18),
         f32("opt.state.0.exp_avg", [2, 2], 19)],
        record(dnode(
            ["model", dnode(["fc.weight", tnode("model.fc.weight")],
                            t="odict")],
            ["opt", dnode(
                ["state", dnode([0, dnode(
                    ["exp_avg", tnode("opt.state.0.exp_avg")])])],
                ["param_groups", {"t": "list", "items": [dnode(
                    ["lr", 0.5], ["params", {"t": "list", "items": [0]}])]}])],
            ["epoch", 3], ["name", "run-1"], ["done", False],
            ["none", None],
            ["best", {"t": "float", "v": "inf"}],
            ["pair", {"t": "tuple", "items": [1, "x"]}],
            ["size", {"t": "size", "v": [2, 3]}],
            ["dtype", {"t": "dtype", "v": "float16"}],
            ["device", {"t": "device", "v": "cpu"}])),
        {}, [],
        {"dict": [
            ["model", {"odict": [["fc.weight", tsum("float32", [2, 2])]]}],
            ["opt", {"dict": [
                ["state", {"dict": [[0, {"dict": [
                    ["exp_avg", tsum("float32", [2, 2])]]}]]}],
                ["param_groups", {"list": [{"dict": [
                    ["lr", 0.5], ["params", {"list": [0]}]]}]}]]}],
            ["epoch", 3], ["name", "run-1"], ["done", False],
            ["none", None], ["best", {"float": "inf"}],
            ["pair", {"tuple": [1, "x"]}], ["size", {"size": [2, 3]}],
            ["dtype", {"dtype": "float16"}], ["device", {"device": "cpu"}]]}),
    "parameter": (
        [f32("w", [2], 20)],
        record(dnode(["w", tnode("w", param=True, rg=True)])),
        {}, [],
        {"dict": [["w", tsum("float32", [2], param=True,
                             requires_grad=True)]]}),
    "unknown_fields": (
        [f32("w", [2], 21)],
        record(dnode(["w", tnode("w", future=1)]), x=1),
        {}, [], {"dict": [["w", tsum("float32", [2])]]}),
    # 256 levels of JSON nesting, the most a record may have
    "deep_limit": (
        [f32("w", [2], 22)], deep_record(127),
        {".".join(["0"] * 127): "w"}, [],
        deep_summary(127)),
}

REC = "SafetensorRecordError"
VER = "SafetensorRecordVersionError"
DES = "ST_ERR_HEADER_DESERIALIZATION"
UNS = "ST_ERR_UNSUPPORTED"
W = [f32("w", [2], 30), f32("v", [2], 31)]
OK_ROOT = dnode(["w", tnode("w")])


# name -> (record text, error class, status name, message substring)
INVALID = {
    "not_json": ('{"version":1,"root":', REC, DES, "not valid JSON"),
    "not_object": ("[1]", REC, DES, "not a JSON object"),
    "no_version": (json.dumps({"root": OK_ROOT}), VER, UNS,
                   "unsupported version"),
    "version_2": (record(OK_ROOT, version=2), VER, UNS,
                  "unsupported version"),
    "version_string": (record(OK_ROOT, version="1"), VER, UNS,
                       "unsupported version"),
    "version_true": (record(OK_ROOT, version=True), VER, UNS,
                     "unsupported version"),
    "version_float": ('{"version":1.0,"root":{"t":"tensor","name":"w"}}',
                      VER, UNS, "unsupported version"),
    "no_root": ('{"version":1}', REC, DES, "no root"),
    "node_array": (record([1]), REC, DES, "unexpected JSON array"),
    "unknown_node": (record({"t": "frob"}), REC, DES, "unknown node type"),
    "node_without_type": (record({"name": "w"}), REC, DES,
                          "unknown node type"),
    "missing_tensor": (record(tnode("nope")), REC, DES,
                       "not in the file"),
    "tensor_name_not_string": (record(tnode(5)), REC, DES,
                               "not in the file"),
    "bad_device": (record(tnode("w", device="warp:9")), REC, DES,
                   "bad device"),
    "device_not_string": (record(tnode("w", device=0)), REC, DES,
                          "bad device"),
    "obj_not_int": (record(tnode("w", obj="0")), REC, DES, "bad obj"),
    "obj_negative": (record(tnode("w", obj=-1)), REC, DES, "bad obj"),
    "rg_not_bool": (record(tnode("w", rg=1)), REC, DES, "bad rg"),
    "param_not_bool": (record(tnode("w", param="yes")), REC, DES,
                       "bad param"),
    "bad_shape": (record(tnode("w", shape=[2])), REC, DES, "bad shape"),
    "list_without_items": (record({"t": "list"}), REC, DES,
                           "list without items"),
    "dict_without_items": (record({"t": "dict", "items": {}}), REC, DES,
                           "dict without items"),
    "bad_dict_item": (record({"t": "dict", "items": [["a"]]}), REC, DES,
                      "bad dict item"),
    "bad_dict_key": (record({"t": "dict", "items": [[1.5, 1]]}), REC, DES,
                     "bad dict item"),
    "bad_float": (record({"t": "float", "v": "1e999"}), REC, DES,
                  "bad float"),
    "bad_size": (record({"t": "size", "v": [1, "2"]}), REC, DES, "bad size"),
    "unknown_dtype": (record({"t": "dtype", "v": "float99"}), REC, DES,
                      "unknown dtype"),
    "too_deep": (deep_record(128), REC, DES, "nests too deeply"),
    "json_nan": ('{"version":1,"root":NaN}', REC, DES, "not valid JSON"),
    "json_duplicate_field": ('{"version":1,"root":null,"root":null}', REC,
                             DES, "not valid JSON"),
    "json_trailing_text": ('{"version":1,"root":null} x', REC, DES,
                           "not valid JSON"),
    "float_overflow": ('{"version":1,"root":1e999}', REC, DES, "bad float"),
    "dict_duplicate_key": (record(dnode(["a", 1], ["a", 2])), REC, DES,
                           "duplicate dict key"),
    "obj_two_names": (record(dnode(["a", tnode("w", obj=0)],
                                   ["b", tnode("v", obj=0)])),
                      REC, DES, "bad obj"),
    "shape_not_scalar": (record(tnode("w", shape=[])), REC, DES,
                         "bad shape"),
}


def make_records(out):
    expected = {"valid": {}, "invalid": {}}
    for name, (tensors, rec, aliases, shared, summary) in VALID.items():
        md = {"format": "pt"}
        if rec is not None:
            md[STRUCTURE_KEY] = rec
        write(out, f"records/valid/{name}.safetensors",
              file_bytes(tensors, md))
        expected["valid"][name + ".safetensors"] = {
            "aliases": aliases, "shared": shared, "summary": summary,
            "stored": [t[0] for t in tensors]}
    for name, (rec, cls, status, msg) in INVALID.items():
        md = {"format": "pt", STRUCTURE_KEY: rec}
        write(out, f"records/invalid/{name}.safetensors", file_bytes(W, md))
        expected["invalid"][name + ".safetensors"] = {
            "error": cls, "status": status, "message": msg}
    write_json(out, "records/expected.json", expected)


# ---------------------------------------------------------------------------

def write(out, rel, data):
    path = os.path.join(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def write_json(out, rel, doc):
    write(out, rel, (json.dumps(doc, indent=1, ensure_ascii=False)
                     + "\n").encode("utf-8"))


def main(argv):
    out = argv[1] if len(argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    make_views(out)
    make_records(out)


if __name__ == "__main__":
    main(sys.argv)
