"""The safetensors dtype names and their torch counterparts (FORMAT.md's table).

Two dtypes need a note:

* ``F4`` (``float4_e2m1fn_x2``): torch packs two F4 values in one element, so
  a file shape ``[..., 2k]`` is the torch shape ``[..., k]``. A file F4 tensor
  whose last dimension is odd (or that is a scalar) has no torch shape; it
  comes back as a flat ``float4_e2m1fn_x2`` tensor of its bytes.
* ``F6_E2M3`` / ``F6_E3M2``: torch has no 6-bit dtype. They come back as a
  flat 1-D ``uint8`` tensor of the raw packed bytes (``numel * 6 / 8`` of
  them), never unpacked: we do not guess a packing. The header's shape is in
  ``safe_open(...).get_slice(name).get_shape()``. They cannot be written from
  torch tensors.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

# Writer rank order (FORMAT.md): the st_dtype number is the index.
ST_DTYPES: Tuple[str, ...] = (
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3",
    "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16",
    "I32", "U32", "F32", "C64", "F64", "I64", "U64",
)

BITS: Dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
    "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}

# Raw-byte dtypes: no torch dtype; loaded as flat uint8.
RAW_BYTES = frozenset({"F6_E2M3", "F6_E3M2"})


def _opt(name: str) -> Optional[torch.dtype]:
    return getattr(torch, name, None)


_PAIRS = (
    ("BOOL", torch.bool),
    ("F4", _opt("float4_e2m1fn_x2")),
    ("U8", torch.uint8),
    ("I8", torch.int8),
    ("F8_E5M2", _opt("float8_e5m2")),
    ("F8_E4M3", _opt("float8_e4m3fn")),
    ("F8_E8M0", _opt("float8_e8m0fnu")),
    ("F8_E4M3FNUZ", _opt("float8_e4m3fnuz")),
    ("F8_E5M2FNUZ", _opt("float8_e5m2fnuz")),
    ("I16", torch.int16),
    ("U16", _opt("uint16")),
    ("F16", torch.float16),
    ("BF16", torch.bfloat16),
    ("I32", torch.int32),
    ("U32", _opt("uint32")),
    ("F32", torch.float32),
    ("C64", torch.complex64),
    ("F64", torch.float64),
    ("I64", torch.int64),
    ("U64", _opt("uint64")),
)

#: safetensors name -> torch dtype (F6 -> uint8, raw bytes).
TO_TORCH: Dict[str, torch.dtype] = {n: d for n, d in _PAIRS if d is not None}
for _n in RAW_BYTES:
    TO_TORCH[_n] = torch.uint8

#: torch dtype -> safetensors name (the dtypes torch can write).
FROM_TORCH: Dict[torch.dtype, str] = {d: n for n, d in _PAIRS if d is not None}

F4_TORCH = _opt("float4_e2m1fn_x2")


def st_name(dtype: torch.dtype) -> Optional[str]:
    """The safetensors name of a torch dtype, or None when it has none."""
    return FROM_TORCH.get(dtype)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype that a file dtype loads as (KeyError when unknown)."""
    return TO_TORCH[name]


def nbytes(name: str, shape) -> int:
    """Bytes of a tensor of this file dtype and file shape."""
    n = 1
    for d in shape:
        n *= int(d)
    return n * BITS[name] // 8


#: Dtypes whose torch shape is not the file shape.
RESHAPED = RAW_BYTES | {"F4"}


def torch_shape(name: str, shape, nbytes_: int) -> Tuple[int, ...]:
    """The torch shape of a file tensor of dtype name and file shape."""
    shape = tuple(int(d) for d in shape)
    if name in RAW_BYTES:
        return (nbytes_,)
    if name == "F4":
        if len(shape) == 0 or shape[-1] % 2:
            return (nbytes_,)
        return shape[:-1] + (shape[-1] // 2,)
    return shape


def file_shape(dtype: torch.dtype, shape) -> Tuple[int, ...]:
    """The file shape of a torch tensor (F4 doubles the last dimension)."""
    shape = tuple(int(d) for d in shape)
    if dtype is F4_TORCH and F4_TORCH is not None and len(shape) > 0:
        return shape[:-1] + (shape[-1] * 2,)
    return shape
