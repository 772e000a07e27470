"""A drop-in for ``safetensors.numpy`` (safetensors 0.8.0), on the C library.

Same names, parameters, results and refusals as the reference::

    >>> import numpy as np
    >>> from torch_safetensors.numpy import save_file, load_file
    >>> save_file({"w": np.ones((2, 3), np.float32)}, "m.safetensors")
    >>> load_file("m.safetensors")["w"].shape
    (2, 3)

Loading gives writable arrays of numpy's dtypes; BF16, F8, F4 and F6 are
refused as the reference refuses them (numpy has no such dtype), except
BF16 once something has imported ml_dtypes (which registers "bfloat16"
with numpy): then, as the reference does, BF16 loads as that dtype. Saving
takes arrays of the dtypes the format has (refusals: the reference's
``Unknown dtype`` SafetensorError); big-endian arrays are stored
little-endian. Difference from the reference: a non-contiguous array is
saved with its values (the reference stores the bytes of its base in
memory order under the array's shape).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ._serialize import TensorSpec, deserialize, serialize, serialize_file
from .torch import safe_open

__all__ = ["save", "save_file", "load", "load_file"]

#: Format code -> numpy dtype (the reference's table: the others are
#: refused with a KeyError by load).
_TYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "U64": np.uint64, "I32": np.int32, "U32": np.uint32,
    "I16": np.int16, "U16": np.uint16, "I8": np.int8, "U8": np.uint8,
    "BOOL": bool, "C64": np.complex64,
}


def _getdtype(dtype_str: str) -> Any:
    return _TYPES[dtype_str]


def _is_little_endian(tensor: np.ndarray) -> bool:
    byteorder = tensor.dtype.byteorder
    if byteorder == "=":
        return sys.byteorder == "little"
    if byteorder in ("|", "<"):
        return True
    if byteorder == ">":
        return False
    raise ValueError(f"Unexpected byte order {byteorder}")


def _flatten(tensor_dict: Dict[str, np.ndarray],
             keep_alive: List[Any]) -> Dict[str, TensorSpec]:
    flattened = {}
    for k, v in tensor_dict.items():
        tensor = v
        if isinstance(tensor, np.ndarray) and not tensor.flags.c_contiguous:
            tensor = np.ascontiguousarray(tensor)
        if not _is_little_endian(tensor):
            tensor = tensor.byteswap(inplace=False)
        keep_alive.append(tensor)
        flattened[k] = TensorSpec(dtype=tensor.dtype.name,
                                  shape=tensor.shape,
                                  data_ptr=tensor.ctypes.data,
                                  data_len=tensor.nbytes)
    return flattened


def save(tensor_dict: Dict[str, np.ndarray],
         metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a safetensors file holding ``tensor_dict``.

    Example::

        data = save({"embedding": np.zeros((512, 1024))})
    """
    keep_alive: List[Any] = []
    return serialize(_flatten(tensor_dict, keep_alive), metadata=metadata)


def save_file(tensor_dict: Dict[str, np.ndarray],
              filename: Union[str, "os.PathLike[str]"],
              metadata: Optional[Dict[str, str]] = None) -> None:
    """Saves ``tensor_dict`` into ``filename`` (durably, atomically).

    Example::

        save_file({"embedding": np.zeros((512, 1024))}, "m.safetensors")
    """
    keep_alive: List[Any] = []
    serialize_file(_flatten(tensor_dict, keep_alive), filename,
                   metadata=metadata)


def load(data: bytes) -> Dict[str, np.ndarray]:
    """The arrays of the safetensors file held in ``data`` (bytes); they
    own their memory.

    Example::

        with open("model.safetensors", "rb") as fh:
            arrays = load(fh.read())
    """
    result = {}
    for k, v in deserialize(data):
        dtype = _getdtype(v["dtype"])
        result[k] = np.frombuffer(v["data"], dtype=dtype).reshape(v["shape"])
    return result


def load_file(filename: Union[str, "os.PathLike[str]"], *,
              backend: str = "mmap") -> Dict[str, np.ndarray]:
    """Every array of a safetensors file, keyed by name (``backend``:
    ``"mmap"``, zero-copy writable views of a private mapping, or
    ``"pread"``).

    Example::

        arrays = load_file("model.safetensors")
    """
    with safe_open(filename, framework="np", backend=backend) as f:
        return f.get_tensors()

