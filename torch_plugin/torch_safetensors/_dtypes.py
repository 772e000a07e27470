"""The safetensors dtypes and their torch counterparts, as the C core says.

Nothing here is written by hand: names, bits and torch names come from the C
core's one table (``_C.dtypes()``: st_dtype_name, st_dtype_bits,
st_dtype_torch_name, st_dtype_torch_values), and each file tensor's torch
dtype and shape from its view policy (``_C.File.info(i).torch_dtype`` /
``.torch_shape`` / ``.flags``: st_tensor_torch_view). The policy, for Python
and C++ alike (include/safetensors.h):

* ``F4`` (``float4_e2m1fn_x2``): torch packs two F4 values in one element, so
  a file shape ``[..., 2k]`` is the torch shape ``[..., k]``. A file F4 tensor
  whose last dimension is odd (or that is a scalar) has no torch shape; it
  comes back as a flat ``float4_e2m1fn_x2`` tensor of its bytes.
* ``F6_E2M3`` / ``F6_E3M2``: torch has no 6-bit dtype. They come back as a
  flat 1-D ``uint8`` tensor of the raw packed bytes (``numel * 6 / 8`` of
  them), never unpacked: we do not guess a packing. The header's shape is in
  ``safe_open(...).get_slice(name).get_shape()``. They cannot be written from
  torch tensors.
* Data whose address (or, for the pread backend, file offset) is not a
  multiple of the torch element size is loaded as an owned, aligned copy,
  never as a misaligned zero-copy view.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from . import _C

_ROWS = _C.dtypes()

#: The format's dtype names, indexed by st_dtype number.
ST_DTYPES: Tuple[str, ...] = tuple(r.name for r in _ROWS)

#: Bits per element of each file dtype.
BITS: Dict[str, int] = {r.name: r.bits for r in _ROWS}

#: File values per torch element: 1; 2 for F4 (pairs); 0 for F6 (raw bytes).
TORCH_VALUES: Dict[str, int] = {r.name: r.torch_values for r in _ROWS}

#: Raw-byte dtypes: no torch dtype; loaded as flat uint8.
RAW_BYTES = frozenset(n for n, v in TORCH_VALUES.items() if v == 0)

#: Dtypes whose torch shape is not always the file shape.
RESHAPED = frozenset(n for n, v in TORCH_VALUES.items() if v != 1)

#: torch's name -> torch dtype, for the dtypes this torch has.
TORCH_BY_NAME: Dict[str, torch.dtype] = {
    r.torch_name: getattr(torch, r.torch_name) for r in _ROWS
    if isinstance(getattr(torch, r.torch_name, None), torch.dtype)}

#: safetensors name -> the torch dtype it loads as (F6 -> uint8, raw bytes).
TO_TORCH: Dict[str, torch.dtype] = {
    r.name: TORCH_BY_NAME[r.torch_name] for r in _ROWS
    if r.torch_name in TORCH_BY_NAME}

#: torch dtype -> safetensors name (the dtypes torch can write).
FROM_TORCH: Dict[torch.dtype, str] = {
    d: _C.dtype_from_torch_name(n) for n, d in TORCH_BY_NAME.items()
    if _C.dtype_from_torch_name(n) is not None}

F4_TORCH = TO_TORCH.get("F4")


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


def torch_shape(name: str, shape) -> Tuple[int, ...]:
    """The torch shape of a slice of file dtype name and file shape. (Whole
    tensors carry theirs in TensorInfo.torch_shape; a slice's comes from the
    same C function, st_torch_view_of.)"""
    return _C.torch_shape(name, shape)


def file_shape(dtype: torch.dtype, shape) -> Tuple[int, ...]:
    """The file shape of a torch tensor (F4 doubles the last dimension)."""
    shape = tuple(int(d) for d in shape)
    name = FROM_TORCH.get(dtype)
    values = TORCH_VALUES.get(name, 1) if name is not None else 1
    if values > 1 and shape:
        return shape[:-1] + (shape[-1] * values,)
    return shape
