"""Regenerates the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/seed-*).

Files named cov-* come from the long campaigns (`make fuzz`), minimized with libFuzzer -merge=1
against the seeds; this script leaves them alone.

Seeds for `open` and `read` are real files written by the reference package (safetensors 0.8.0,
the interop partner) for every dtype, scalars, zero-size tensors, metadata, Unicode and escaped
names, plus hand-built edge cases of shared/ROBUSTNESS.md (framing, JSON syntax, offsets). Seeds
for `write` are little programs in fuzz_write.c's input format. Files named regress-* are
regression cases of fuzz findings and are never overwritten.

    .venv/bin/python tests/fuzz/make_corpus.py
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent


def frame(header: bytes, data: bytes = b"", n=None) -> bytes:
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def hdr(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def reference_files():
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(7)
    out = {}
    np_types = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16,
                "U16": np.uint16, "F16": np.float16, "I32": np.int32, "U32": np.uint32,
                "F32": np.float32, "F64": np.float64, "I64": np.int64, "U64": np.uint64,
                "C64": np.complex64}
    for name, t in np_types.items():
        a = (rng.integers(0, 100, size=(3, 4)) % (2 if t is np.bool_ else 100)).astype(t)
        out[f"ref-{name}"] = save({"w": a, "scalar": np.array(1, dtype=t).reshape(()),
                                   "empty": np.zeros((0, 3), dtype=t)})
    out["ref-multi"] = save({f"layer.{i}.weight": rng.standard_normal((i + 1, 3)).astype(np.float32)
                             for i in range(6)}, metadata={"format": "pt", "k": "v"})
    out["ref-unicode"] = save({"é": np.ones(2, np.float32), "模型": np.ones(3, np.int8),
                               "😀": np.ones((2, 2), np.float16), "": np.ones(1, np.uint8)},
                              metadata={"ключ": "значение", "": ""})
    out["ref-highrank"] = save({"t": np.ones((1,) * 20 + (2,), np.int16)})
    out["ref-slice"] = save({"m": np.arange(5 * 6 * 7, dtype=np.int32).reshape(5, 6, 7),
                             "v": np.arange(17, dtype=np.uint8)})
    try:
        import torch
        from safetensors.torch import save as tsave
        out["ref-torch-bf16-f8"] = tsave({
            "bf": torch.arange(12, dtype=torch.float32).to(torch.bfloat16).reshape(3, 4),
            "e4m3": torch.zeros(8, dtype=torch.float8_e4m3fn),
            "e5m2": torch.zeros(2, 4, dtype=torch.float8_e5m2)})
    except Exception:  # torch missing: the numpy seeds suffice
        pass
    return out


def handmade():
    f = {}
    f["frame-empty"] = b""
    f["frame-7bytes"] = b"\x02\x00\x00\x00\x00\x00\x00"
    f["frame-n0"] = frame(b"")
    f["frame-n-max"] = struct.pack("<Q", 2**64 - 1) + b"{}"
    f["frame-n-over-cap"] = struct.pack("<Q", 100_000_001) + b"{}"
    f["frame-past-end"] = frame(b"{}", n=50)
    f["frame-lfs"] = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 +
                      b"\nsize 1234\n")
    f["frame-zip"] = b"PK\x03\x04" + b"\x00" * 60
    f["empty-object"] = frame(b"{}")
    f["space-padded"] = frame(b'{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}    ', b"ab")
    f["leading-ws"] = frame(b' \n{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x")
    f["escapes"] = frame(b'{"\\u00e9\\ud83d\\ude00\\n\\t\\/":{"dtype":"U8","shape":[1],'
                         b'"data_offsets":[0,1]},"__metadata__":{"k\\"":"v\\\\"}}', b"z")
    f["unknown-fields"] = frame(b'{"a":{"dtype":"I8","shape":[1],"data_offsets":[0,1],'
                                b'"extra":[1,{"x":null},true,false,-0.5e3]}}', b"q")
    f["zero-size-shared"] = frame(hdr({"z": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
                                       "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                       "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}),
                                  b"\x00" * 8)
    f["subbyte"] = frame(hdr({"f4": {"dtype": "F4", "shape": [2, 4], "data_offsets": [0, 4]},
                              "f6": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [4, 7]}}),
                         bytes(range(7)))
    f["subbyte-odd"] = frame(hdr({"f4": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}), b"ab")
    f["overflow-shape"] = frame(hdr({"a": {"dtype": "U8", "shape": [2**32, 2**32],
                                           "data_offsets": [0, 0]}}))
    f["overlap"] = frame(hdr({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                              "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}), b"abc")
    f["hole"] = frame(hdr({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}), b"ab")
    f["trailing"] = frame(hdr({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}), b"ab")
    f["dup-name"] = frame(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                          b'"\\u0061":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"ab")
    f["nul-name"] = frame(b'{"a\\u0000":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"a")
    f["deep"] = frame(b'{"__metadata__":{"k":"v"},"x":{"dtype":"U8","shape":[],'
                      b'"data_offsets":[0,1],"u":' + b"[" * 70 + b"]" * 70 + b"}}", b"a")
    f["bad-utf8"] = frame(b'{"\xc0\xaf":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"a")
    f["bom"] = frame(b'\xef\xbb\xbf{}')
    f["trailing-comma"] = frame(b'{"a":{"dtype":"U8","shape":[1,],"data_offsets":[0,1]}}', b"a")
    f["big-number"] = frame(b'{"a":{"dtype":"U8","shape":[' + b"1" * 400 + b'],"data_offsets":[0,1]}}',
                            b"a")
    f["rank-65"] = frame(hdr({"a": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}}), b"a")
    f["meta-nonstring"] = frame(b'{"__metadata__":{"k":1}}')
    f["meta-null"] = frame(b'{"__metadata__":null,"a":{"dtype":"BOOL","shape":[2],'
                           b'"data_offsets":[0,2]}}', b"\x00\x07")
    return f


def write_programs():
    """fuzz_write.c input: ntensors, nmeta, fill, then metadata (klen k vlen v), then per
    tensor: ctl, [nlen name], dtype, rank, dims."""
    progs = {}
    rng = random.Random(11)
    progs["w-empty"] = bytes([0, 0, 0])
    progs["w-one"] = bytes([1, 0, 9, 0, 1]) + b"w" + bytes([17, 2, 2, 3])
    progs["w-meta"] = bytes([1, 2, 3, 6]) + b"format" + bytes([2]) + b"pt" + bytes([1]) + b"k" + \
        bytes([0]) + bytes([0, 3]) + b"abc" + bytes([4, 1, 5])
    progs["w-reserved"] = bytes([2, 0, 1, 0x3F, 13, 1, 2, 0, 1]) + b"x" + bytes([0, 0])
    progs["w-dup"] = bytes([2, 0, 1, 0, 1]) + b"a" + bytes([4, 1, 3, 0, 1]) + b"a" + bytes([5, 0])
    progs["w-subbyte"] = bytes([2, 0, 1, 0, 2]) + b"f4" + bytes([1, 1, 3, 0, 2]) + b"f6" + \
        bytes([2, 1, 4])
    progs["w-cb-fail"] = bytes([1, 0, 1, 0x81, 1]) + b"c" + bytes([17, 1, 5])
    progs["w-huge-dim"] = bytes([1, 0, 1, 0, 1]) + b"h" + bytes([4, 2, 0xE5, 0])
    progs["w-overflow"] = bytes([1, 0, 1, 0, 1]) + b"o" + bytes([4, 2, 0xFF, 0xFF])
    progs["w-badutf8"] = bytes([1, 1, 1, 2]) + b"\xc3\x28" + bytes([1]) + b"v" + bytes([0, 2]) + \
        b"\xed\xa0" + bytes([4, 0])
    progs["w-nul"] = bytes([1, 0, 1, 0, 2]) + b"a\x00" + bytes([4, 0])
    progs["w-wronglen"] = bytes([1, 0, 1, 0x41, 1]) + b"l" + bytes([17, 1, 2])
    for i in range(8):
        n = rng.randrange(1, 8)
        b = bytearray([n, rng.randrange(3), rng.randrange(256)])
        for _ in range(b[1]):
            k = "".join(rng.choice("abcé") for _ in range(rng.randrange(1, 5))).encode()
            b += bytes([len(k)]) + k + bytes([1]) + b"v"
        for j in range(n):
            name = f"t{j}.{rng.randrange(100)}".encode()
            b += bytes([rng.choice([0, 0x80]), len(name)]) + name
            b += bytes([rng.randrange(22), rng.randrange(4)]) + bytes(rng.randrange(1, 6)
                                                                      for _ in range(5))
        progs[f"w-random-{i}"] = bytes(b)
    return progs


def main() -> None:
    files = dict(handmade())
    files.update(reference_files())
    for target in ("open", "read"):
        d = HERE / "corpus" / target
        d.mkdir(parents=True, exist_ok=True)
        for name, blob in files.items():
            (d / f"seed-{name}.safetensors").write_bytes(blob)
    d = HERE / "corpus" / "write"
    d.mkdir(parents=True, exist_ok=True)
    for name, blob in write_programs().items():
        (d / f"seed-{name}.bin").write_bytes(blob)
    print(f"{len(files)} file seeds, {len(write_programs())} writer seeds")


if __name__ == "__main__":
    main()
