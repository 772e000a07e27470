"""The reference's framework-free core API on the C library:
:class:`TensorSpec`, :func:`serialize`, :func:`serialize_file`,
:func:`deserialize` (``safetensors.TensorSpec`` ... in safetensors 0.8.0).

Same names, parameters, results and refusals, with the reference's messages
(errors keep our status, offset and tensor name as attributes). Files are
written as :func:`torch_safetensors.torch.save_file` writes them (durably,
atomically) and with the same bytes as the reference's.

Example::

    >>> import numpy as np
    >>> from torch_safetensors import TensorSpec, serialize, deserialize
    >>> a = np.arange(4, dtype=np.float32)
    >>> data = serialize({"a": TensorSpec(dtype="float32", shape=a.shape,
    ...                                   data_ptr=a.ctypes.data,
    ...                                   data_len=a.nbytes)})
    >>> deserialize(data)[0][1]["dtype"]
    'F32'
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _C
from .errors import (
    SafetensorError,
    SafetensorTypeError,
    as_reference,
    make_error,
)

__all__ = ["TensorSpec", "serialize", "serialize_file", "deserialize"]

#: Constructor-style dtype names (torch's) -> format codes, from the C
#: core's one table: the dtypes whose torch name maps back to them (F6 has
#: no name of its own, as in the reference).
_CODES: Dict[str, str] = {
    r.torch_name: r.name for r in _C.dtypes()
    if _C.dtype_from_torch_name(r.torch_name) == r.name}

#: The names in the order the reference lists them in its refusal.
_LISTED = ("bool, int8, uint8, int16, uint16, int32, uint32, int64, uint64, "
           "float16, float32, float64, bfloat16, float8_e4m3fn, "
           "float8_e4m3fnuz, float8_e5m2, float8_e5m2fnuz, float8_e8m0fnu, "
           "float4_e2m1fn_x2, complex64")

#: File values per element of the name (F4: two per float4_e2m1fn_x2).
_VALUES: Dict[str, int] = {r.name: r.torch_values for r in _C.dtypes()}


def _unsigned(what: str, x: Any) -> int:
    if isinstance(x, bool) or not hasattr(x, "__index__"):
        raise make_error(SafetensorTypeError,
                         f"argument '{what}': '{type(x).__name__}' object "
                         f"cannot be interpreted as an integer",
                         reference=True)
    v = x.__index__()
    if v < 0:
        raise OverflowError("can't convert negative int to unsigned")
    return v


class TensorSpec:
    """One tensor for :func:`serialize` / :func:`serialize_file`: its dtype
    (a constructor-style name such as ``"float32"``, validated here), shape
    (F4: the storage shape may be given; the last dimension is doubled),
    and the address and byte length of its contiguous data.

    UNSAFE as in the reference: the memory at ``data_ptr`` must stay alive
    and unchanged until every serialize call that uses this spec returns.
    """

    __slots__ = ("_dtype", "_shape", "_data_ptr", "_data_len")

    def __init__(self, *, dtype: str, shape: Sequence[int], data_ptr: int,
                 data_len: int) -> None:
        code = _CODES.get(dtype) if isinstance(dtype, str) else None
        if code is None:
            raise make_error(SafetensorError,
                             f'Unknown dtype "{dtype}". Supported dtypes: '
                             f'{_LISTED}', reference=True)
        dims = [_unsigned("shape", d) for d in shape]
        if dims and _VALUES.get(code, 1) > 1:
            dims[-1] *= _VALUES[code]
        self._dtype = code
        self._shape = dims
        self._data_ptr = _unsigned("data_ptr", data_ptr)
        self._data_len = _unsigned("data_len", data_len)

    @property
    def dtype(self) -> str:
        """The format code written into the header (e.g. ``"F32"``)."""
        return self._dtype

    @property
    def shape(self) -> List[int]:
        """The logical shape recorded in the header."""
        return list(self._shape)

    @property
    def data_ptr(self) -> int:
        """The address of the tensor's contiguous bytes."""
        return self._data_ptr

    @property
    def data_len(self) -> int:
        """The number of bytes at data_ptr."""
        return self._data_len

    def __repr__(self) -> str:
        return (f"TensorSpec(dtype={self._dtype!r}, shape={self._shape}, "
                f"data_ptr={self._data_ptr}, data_len={self._data_len})")


def _writer(tensor_dict: Any, metadata: Any) -> "_C.Writer":
    if not isinstance(tensor_dict, dict):
        raise make_error(SafetensorTypeError,
                         f"argument 'tensor_dict': "
                         f"'{type(tensor_dict).__name__}' object is not an "
                         f"instance of 'dict'", reference=True)
    for k, v in tensor_dict.items():
        if not isinstance(k, str):
            raise make_error(SafetensorTypeError,
                             f"argument 'tensor_dict': '{type(k).__name__}'"
                             f" object is not an instance of 'str'",
                             reference=True)
        if not isinstance(v, TensorSpec):
            raise make_error(SafetensorTypeError,
                             f"argument 'tensor_dict': '{type(v).__name__}'"
                             f" object is not an instance of 'TensorSpec'",
                             reference=True)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise make_error(SafetensorTypeError,
                             f"argument 'metadata': "
                             f"'{type(metadata).__name__}' object is not an "
                             f"instance of 'dict'", reference=True)
        for x in (y for kv in metadata.items() for y in kv):
            if not isinstance(x, str):
                raise make_error(SafetensorTypeError,
                                 f"argument 'metadata': "
                                 f"'{type(x).__name__}' object is not an "
                                 f"instance of 'str'", reference=True)
    w = _C.Writer()
    with _serializing():
        if metadata is not None:
            w.declare_metadata()
            for k in sorted(metadata):
                w.add_metadata(k, metadata[k])
        for k, spec in tensor_dict.items():
            w.add_tensor(k, spec.dtype, tuple(spec.shape), spec.data_ptr,
                         spec.data_len)
    return w


class _serializing:
    """Our errors while writing, with the reference's "Error while
    serializing: ..." message (fields kept as attributes)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp, value, tb) -> bool:
        if isinstance(value, SafetensorError) and \
                getattr(value, "detail", None) is None:
            new = as_reference(value, "write")
            text = str(new)
            if value.status == 11:  # INVALID_TENSOR_INFO: the length
                text = ("Error while serializing: invalid shape, data "
                        "type, or offset for tensor")
            new.args = (text,)
            raise new.with_traceback(tb) from None
        return False


def serialize(tensor_dict: Dict[str, TensorSpec],
              metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The bytes of a safetensors file holding the tensors described by
    ``tensor_dict`` (name -> :class:`TensorSpec`) and ``metadata``."""
    w = _writer(tensor_dict, metadata)
    with _serializing():
        return w.to_bytes()


def serialize_file(tensor_dict: Dict[str, TensorSpec], filename: Any,
                   metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes the safetensors file that :func:`serialize` would return to
    ``filename`` (durably: temporary file, fsync, rename)."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        raise make_error(SafetensorTypeError,
                         f"argument 'filename': expected str, bytes or "
                         f"os.PathLike object, not "
                         f"{type(filename).__name__}", reference=True)
    path = os.fsdecode(filename)
    w = _writer(tensor_dict, metadata)
    with _serializing():
        w.write_path(path)


def deserialize(bytes: bytes) -> List[Tuple[str, Dict[str, Any]]]:
    """The tensors of the safetensors file in ``bytes``: a list of
    ``(name, {"dtype": "F32", "shape": [2, 3], "data": bytearray})`` in the
    order of their data."""
    data = bytes
    if not isinstance(data, type(b"")):
        raise make_error(SafetensorTypeError,
                         f"argument 'bytes': '{type(data).__name__}' object "
                         f"is not an instance of 'bytes'", reference=True)
    try:
        f = _C.File(data)
    except SafetensorError as e:
        raise as_reference(e, "bytes") from None
    try:
        out = []
        for i, info in enumerate(f.tensors()):
            raw = bytearray(info.end - info.begin)
            if raw:
                f._read_into(i, _address(raw), len(raw))
            out.append((info.name, {"dtype": info.dtype,
                                    "shape": list(info.shape), "data": raw}))
        return out
    finally:
        f.close()


def _address(buf: bytearray) -> int:
    import ctypes
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
