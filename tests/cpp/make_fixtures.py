"""Writes the files the C++ adapter's tests read: made by the reference
writer (safetensors.torch.save_file), by torch.save(format="safetensors")
and by hand. Usage: make_fixtures.py OUT_DIR

Tensor bytes follow one pattern the C++ side recomputes:
byte i = (i * 37 + seed) % 256 (BOOL: that value % 2).
"""
import json
import os
import struct
import sys

import torch
from safetensors.torch import save_file

# (format name, torch dtype, torch shape); the seed is the row number.
DTYPES = [
    ("BOOL", torch.bool, (3, 4)),
    ("F4", torch.float4_e2m1fn_x2, (3, 2)),
    ("U8", torch.uint8, (3, 4)),
    ("I8", torch.int8, (3, 4)),
    ("F8_E5M2", torch.float8_e5m2, (3, 4)),
    ("F8_E4M3", torch.float8_e4m3fn, (3, 4)),
    ("F8_E8M0", torch.float8_e8m0fnu, (3, 4)),
    ("F8_E4M3FNUZ", torch.float8_e4m3fnuz, (3, 4)),
    ("F8_E5M2FNUZ", torch.float8_e5m2fnuz, (3, 4)),
    ("I16", torch.int16, (3, 4)),
    ("U16", torch.uint16, (3, 4)),
    ("F16", torch.float16, (3, 4)),
    ("BF16", torch.bfloat16, (3, 4)),
    ("I32", torch.int32, (3, 4)),
    ("U32", torch.uint32, (3, 4)),
    ("F32", torch.float32, (3, 4)),
    ("C64", torch.complex64, (3, 4)),
    ("F64", torch.float64, (3, 4)),
    ("I64", torch.int64, (3, 4)),
    ("U64", torch.uint64, (3, 4)),
]


def pattern(n, seed, boolean=False):
    b = bytearray((i * 37 + seed) % 256 for i in range(n))
    if boolean:
        b = bytearray(x % 2 for x in b)
    return b


def make(dtype, shape, seed):
    elem = torch.empty((), dtype=dtype).element_size()
    n = elem
    for d in shape:
        n *= d
    raw = torch.frombuffer(pattern(n, seed, dtype == torch.bool), dtype=torch.uint8) \
        if n else torch.empty(0, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape).clone()


def write_raw(path, header, data):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)

    tensors = {f"t_{name}": make(dt, shape, seed)
               for seed, (name, dt, shape) in enumerate(DTYPES)}
    tensors["scalar_f32"] = make(torch.float32, (), 99)
    tensors["empty_f16"] = make(torch.float16, (0, 3), 0)
    save_file(tensors, os.path.join(out, "ref_dtypes.safetensors"), metadata={"format": "pt"})

    # F6 has no torch dtype: written by hand, 4 values in 3 bytes.
    write_raw(os.path.join(out, "f6.safetensors"),
              {"x": {"dtype": "F6_E2M3", "shape": [2, 4], "data_offsets": [0, 6]}},
              bytes(pattern(6, 5)))

    # torch.save with tied weights: the structure record stores b.weight once.
    # torch_safetensors is required (make test-cpp installs it first).
    import torch_safetensors  # noqa: F401  (installs torch.save support)
    w = make(torch.float32, (4, 3), 1)
    sd = {"a.weight": w, "a.bias": make(torch.float32, (4,), 2), "b.weight": w}
    torch.save(sd, os.path.join(out, "tied.safetensors"), format="safetensors")
    # save_file / save_sharded with policy="tie": the dropped name is recorded
    # as __metadata__["torch_safetensors.alias.b.weight"] = "a.weight".
    from torch_safetensors.torch import save_file as save_file_ours
    save_file_ours(sd, os.path.join(out, "tied_alias_metadata.safetensors"), policy="tie")
    return 0


if __name__ == "__main__":
    sys.exit(main())
