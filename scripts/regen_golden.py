#!/usr/bin/env python3
"""Regenerates tests/c/golden.h: the writer test cases and the exact bytes the
reference package (safetensors==0.8.0, `safetensors.serialize`) writes for
them. The C writer tests (tests/c/test_writer.cc) build every case from this
header and compare their bytes with the reference's.

  scripts/regen_golden.py           rewrite tests/c/golden.h
  scripts/regen_golden.py --check   exit 1 when tests/c/golden.h differs from
                                    what the reference writes today (make test)

Tensor k of a case holds pattern(k, nbytes): byte i is (k * 31 + i * 7 + 1)
& 0xFF (test_writer.cc's pattern()). The reference takes neither F6 dtype,
so the one case that has them ("dtypes22") is laid out here by the
reference's own rule (dtype rank descending, then name; offsets in that
order; the header padded with spaces to a multiple of 8), after checking that
this rule gives exactly the reference's bytes for the same case without the
two F6 tensors, and that the reference reads the result back.
"""
import argparse
import ctypes
import json
import struct
import sys
from pathlib import Path

import safetensors
from safetensors import TensorSpec, deserialize, serialize

REFERENCE = "0.8.0"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "c" / "golden.h"

# The reference writer's rank of every file dtype (it sorts by rank,
# descending), and the dtype names its Python API takes (None: not taken).
DTYPES = [  # (file name, bits, reference API name)
    ("BOOL", 8, "bool"), ("F4", 4, "float4_e2m1fn_x2"), ("F6_E2M3", 6, None),
    ("F6_E3M2", 6, None), ("U8", 8, "uint8"), ("I8", 8, "int8"),
    ("F8_E5M2", 8, "float8_e5m2"), ("F8_E4M3", 8, "float8_e4m3fn"),
    ("F8_E8M0", 8, "float8_e8m0fnu"), ("F8_E4M3FNUZ", 8, "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", 8, "float8_e5m2fnuz"), ("I16", 16, "int16"), ("U16", 16, "uint16"),
    ("F16", 16, "float16"), ("BF16", 16, "bfloat16"), ("I32", 32, "int32"),
    ("U32", 32, "uint32"), ("F32", 32, "float32"), ("C64", 64, "complex64"),
    ("F64", 64, "float64"), ("I64", 64, "int64"), ("U64", 64, "uint64"),
]
RANK = {name: r for r, (name, _, _) in enumerate(DTYPES)}
BITS = {name: bits for name, bits, _ in DTYPES}
API = {name: api for name, _, api in DTYPES}


def cases():
    """(label, [(name bytes, dtype, shape)], metadata), in insertion order: the
    C tests add them in this order. metadata: None (no metadata argument), or
    [(key bytes, value bytes)], where [] is the reference's metadata={} (the C
    writer's st_writer_declare_metadata)."""
    esc = b'q"b\\s/' + bytes(range(1, 32)) + b"\x7f"
    d20 = [(b"t_" + n.encode(), n, [4]) for n, _, _ in reversed(DTYPES) if not n.startswith("F6")]
    d22 = [(b"t_" + n.encode(), n, [4]) for n, _, _ in DTYPES]
    return [
        ("empty", [], None),
        ("one_tensor", [(b"weight", "F32", [2, 3])], None),
        ("sorting", [(b"a", "U8", [3]), (b"b", "F64", []), (b"c", "F16", [2]),
                     (b"B", "F16", [1]), (b"z", "I64", [2]), (b"y", "BOOL", [1]),
                     (b"aa", "U8", [1]), (b"a\x7f", "F16", [1])], None),
        ("metadata", [(b"w", "BF16", [2])], [(b"format", b"pt")]),
        ("escapes", [(esc, "U8", [1]), (b"plain", "U8", [1])],
         [(b'k\n"\\\x01', b"v\t\x1f\x7f/\xc3\xa9")]),
        ("unicode", [(b"\xc3\xa9", "I8", [1]), (b"\xe6\x97\xa5\xe6\x9c\xac", "I8", [2]),
                     (b"\xf0\x9f\x99\x82", "I8", [1]), (b"z", "I8", [1]), (b"", "I8", [1])], None),
        ("zero_scalar", [(b"empty", "F32", [0]), (b"empty2", "F32", [2, 0, 3]),
                         (b"scalar", "F32", []), (b"s64", "I64", []), (b"after", "F32", [1])], None),
        ("dtypes20", d20, None),
        ("dtypes22", d22, None),
        ("declared_empty_metadata", [(b"a", "F32", [2])], []),
    ]


def nbytes(dtype, shape):
    n = 1
    for d in shape:
        n *= d
    return n * BITS[dtype] // 8


def pattern(k, n):
    return bytes((k * 31 + i * 7 + 1) & 0xFF for i in range(n))


def reference_bytes(tensors, meta):
    """What safetensors.serialize writes for the case."""
    keep = []  # the buffers must outlive serialize
    specs = {}
    for k, (name, dtype, shape) in enumerate(tensors):
        data = pattern(k, nbytes(dtype, shape))
        buf = ctypes.create_string_buffer(data, max(len(data), 1))
        keep.append(buf)
        api_shape = list(shape)
        if dtype == "F4":  # the API takes torch's storage shape: pairs
            api_shape[-1] //= 2
        specs[name.decode()] = TensorSpec(dtype=API[dtype], shape=api_shape,
                                          data_ptr=ctypes.addressof(buf), data_len=len(data))
    metadata = {k.decode(): v.decode() for k, v in meta} if meta is not None else None
    return bytes(serialize(specs, metadata=metadata))


def rule_bytes(tensors, meta):
    """The reference's layout rule, for dtypes its API does not take."""
    order = sorted(range(len(tensors)), key=lambda k: (-RANK[tensors[k][1]], tensors[k][0]))
    header = {}
    if meta is not None:
        header["__metadata__"] = {k.decode(): v.decode() for k, v in sorted(meta)}
    off, data = 0, b""
    for k in order:
        name, dtype, shape = tensors[k]
        blob = pattern(k, nbytes(dtype, shape))
        header[name.decode()] = {"dtype": dtype, "shape": shape,
                                 "data_offsets": [off, off + len(blob)]}
        off += len(blob)
        data += blob
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def golden_bytes(label, tensors, meta):
    if all(API[d] is not None for _, d, _ in tensors):
        return reference_bytes(tensors, meta)
    taken = [t for t in tensors if API[t[1]] is not None]
    # The rule must agree with the reference where the reference can write:
    # pattern() depends on the insertion index, so compare with the indices
    # the reduced case gets.
    if rule_bytes(taken, meta) != reference_bytes(taken, meta):
        sys.exit(f"regen_golden: the layout rule disagrees with the reference ({label})")
    out = rule_bytes(tensors, meta)
    back = dict(deserialize(out))
    for k, (name, dtype, shape) in enumerate(tensors):
        t = back[name.decode()]
        if t["dtype"] != dtype or list(t["shape"]) != shape or bytes(t["data"]) != \
                pattern(k, nbytes(dtype, shape)):
            sys.exit(f"regen_golden: the reference reads {label}/{name!r} back differently")
    return out


def c_string(b):
    """A C++ std::string expression holding exactly the bytes b."""
    pieces, prev_hex = [], False
    for ch in b:
        c = chr(ch)
        printable = 0x20 <= ch < 0x7F and not (prev_hex and c in "0123456789abcdefABCDEF")
        if c in '"\\':
            piece = "\\" + c
        elif c == "?":
            piece = "\\?"  # no trigraphs
        elif printable:
            piece = c
        else:
            piece = "\\x%02x" % ch  # also a hex digit right after a hex escape
        prev_hex = piece.startswith("\\x")
        pieces.append(piece)
    lines, line = [], ""
    for piece in pieces:
        if len(line) + len(piece) > 72:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    body = '"\n      "'.join(lines)
    return 'std::string("%s", %d)' % (body, len(b))


def render():
    if safetensors.__version__ != REFERENCE:
        sys.exit(f"regen_golden: needs safetensors=={REFERENCE} (the reference), "
                 f"found {safetensors.__version__}")
    lines = [
        "// Generated by scripts/regen_golden.py from the reference package",
        f"// (safetensors=={REFERENCE}): do not edit; `make test` checks it is current.",
        "// Each case: its tensors in insertion order (tensor k holds pattern(k, n)),",
        "// its metadata, and the exact file the reference writes for them.",
        "#ifndef ST_TESTS_GOLDEN_H",
        "#define ST_TESTS_GOLDEN_H",
        "",
        "#include <cstdint>",
        "#include <string>",
        "#include <utility>",
        "#include <vector>",
        "",
        "namespace golden {",
        "",
        "struct Tensor {",
        "  std::string name;",
        "  const char *dtype;  // the format's name",
        "  std::vector<uint64_t> shape;",
        "};",
        "",
        "struct Case {",
        "  const char *label;",
        "  std::vector<Tensor> tensors;",
        "  std::vector<std::pair<std::string, std::string>> meta;",
        "  bool declare_metadata;  // metadata={}: a __metadata__ object even when empty",
        "  std::string bytes;",
        "};",
        "",
        "inline std::vector<Case> cases() {",
        "  std::vector<Case> v;",
    ]
    for label, tensors, meta in cases():
        data = golden_bytes(label, tensors, meta)
        lines.append(f"  // {label}")
        lines.append(f'  v.push_back({{"{label}",')
        ts = ", ".join("{%s, \"%s\", {%s}}" % (c_string(n), d, ", ".join(map(str, s)))
                       for n, d, s in tensors)
        lines.append("      {" + ts + "},")
        ms = ", ".join("{%s, %s}" % (c_string(k), c_string(v)) for k, v in meta or [])
        lines.append("      {" + ms + "},")
        lines.append("      %s," % ("true" if meta is not None else "false"))
        lines.append("      " + c_string(data) + "});")
    lines += ["  return v;", "}", "", "}  // namespace golden", "", "#endif", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="fail when tests/c/golden.h is not what the reference writes")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"regen_golden: {OUT.relative_to(ROOT)} differs from the reference's bytes; "
                  "run scripts/regen_golden.py", file=sys.stderr)
            return 1
        print(f"regen_golden: {OUT.relative_to(ROOT)} matches safetensors=={REFERENCE}")
        return 0
    OUT.write_text(text)
    print(f"regen_golden: wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
