"""A drop-in for ``safetensors.torch`` (safetensors 0.8.0), on the C library.

Same names, parameters and semantics, and the helpers libraries import
from ``safetensors.torch`` (``storage_ptr``, ``storage_size``,
``_find_shared_tensors``, ``_remove_duplicate_names``, ...)::

    >>> from torch_safetensors.torch import save_file, load_file, safe_open
    >>> save_file({"w": torch.ones(2, 3)}, "m.safetensors", metadata={"a": "b"})
    >>> load_file("m.safetensors")["w"].shape
    torch.Size([2, 3])
    >>> with safe_open("m.safetensors", framework="pt") as f:
    ...     part = f.get_slice("w")[:, ::2]

Loading
    CPU tensors of the default ``mmap`` backend are zero-copy views of a
    private copy-on-write mapping, as in the reference: writable, and writing
    never modifies the file; a tensor whose bytes are not aligned to its
    element size is an owned, aligned copy instead (the view policy, see
    :mod:`torch_safetensors._dtypes`). The mapping is released when the last tensor
    that views it dies (even after ``safe_open`` is closed). The ``pread``
    backend and :func:`load` (bytes) return tensors that own their memory.
    Other devices: the tensors are loaded on the CPU and moved with
    ``.to(device)``.

Saving
    ``save_file``/``save`` check their input as the reference does and refuse
    the same things (non-dict input, non-tensors, sparse layouts, tensors that
    share memory, non-contiguous tensors) with a :class:`SafetensorError`
    subclass that is also the builtin exception the reference raises.
    ``policy="tie"`` or ``"copy"`` saves tensors that share memory instead
    (docs/RECORD.md, "Shared memory"). The
    bytes written equal the reference's; files are written durably
    (temporary file, fsync, rename, directory fsync).

Deliberate differences from the reference (all stricter or fixes):
    * a tensor named ``__metadata__`` and NUL characters in names or
      metadata are refused (the reference writes files nobody can read);
    * quantized and other dtypes without a format name, nested and meta
      tensors are refused before anything is written, with the reference's
      exception types (KeyError, RuntimeError, NotImplementedError) that
      are also ``SafetensorTypeError``; a nested tensor's message says what
      it is (the reference's is torch's internal error);
    * ``load`` (bytes) handles F8_E8M0 and F4 (the reference: KeyError);
    * ``get_slice`` works on F4 as long as the cut keeps whole bytes (the
      reference fails on every F4 slice), and on F6 (raw bytes, see
      :mod:`torch_safetensors._dtypes`);
    * ``device`` may also be a ``torch.device`` or ``"cpu:0"``;
    * ``framework="numpy"`` slices: an empty range gives an empty array
      (the reference: SystemError);
    * frameworks other than ``"pt"`` and ``"numpy"`` are refused at open.

Errors carry the reference's type and message (``str(e)``); our status,
offset, tensor name and own message stay as attributes (``status``,
``status_name``, ``offset``, ``tensor_name``, ``detail``).
"""

from __future__ import annotations

import collections
import functools
import os
from typing import (Any, Dict, Iterable, List, Optional, Set, Tuple, Union,
                    TYPE_CHECKING)

import torch

from . import _alias, _C, _dtypes, _io, quant
# read_owned is called as _io.read_owned: the benchmarks time it by wrapping
# the module's function.
from ._io import (
    SafetensorUnsupportedTensorError,
    check_metadata,
    check_tensor_dict,
    check_tensor_kind,
    host_tensors,
    is_cpu,
    make_writer,
    metadata_of,
    open_file,
    parse_device,
    pin_available,
    torch_dtype_of,
    view_all,
    view_tensor,
)
from ._serialize import TensorSpec, deserialize, serialize, serialize_file
from .errors import (
    ST_ERR_NOT_FOUND,
    SafetensorError,
    SafetensorUnsupportedDtypeError,
    as_reference,
    reference_errors,
    SafetensorIndexError,
    SafetensorKeyError,
    SafetensorSharedTensorError,
    SafetensorTypeError,
    SafetensorValueError,
    c_message,
    make_error,
    wrap,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn

__all__ = [
    "safe_open", "save_file", "load_file", "save", "load", "save_model",
    "load_model", "storage_ptr", "storage_size", "TensorSpec", "serialize",
    "serialize_file", "deserialize",
]

PathLike = Union[str, "os.PathLike[str]"]

_FRAMEWORKS = ("pt", "torch", "pytorch")
_NUMPY = ("np", "numpy")
#: Frameworks the reference knows and this package does not serve.
_OTHERS = ("tf", "tensorflow", "flax", "jax", "mlx", "paddle")


def _ref_error(cls, message, *args, **kwargs):
    """make_error in the drop-in's flavour: the message alone; status,
    offset and tensor name as attributes."""
    return make_error(cls, message, *args, reference=True, **kwargs)


class SafetensorMetaTensorError(SafetensorUnsupportedTensorError,
                                NotImplementedError):
    """save/save_file given a meta tensor (no data). Also the
    NotImplementedError (a RuntimeError) that the reference raises."""


class SafetensorNestedTensorError(SafetensorUnsupportedTensorError,
                                  RuntimeError):
    """save/save_file given a nested tensor. Also the RuntimeError that the
    reference raises."""


class SafetensorNumpyDtypeError(SafetensorError, AttributeError):
    """framework="numpy" and a dtype numpy has no attribute for (F8, F4,
    F6): the AttributeError that the reference raises."""


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------

def _check_framework(framework: str) -> str:
    """"pt" or "numpy" (what framework asks for), or the reference's
    refusal of an unknown one; one it knows that we do not serve (tf, flax,
    mlx, paddle) is refused saying so."""
    if framework in _FRAMEWORKS:
        return "pt"
    if framework in _NUMPY:
        return "numpy"
    if framework in _OTHERS:
        raise _ref_error(
            SafetensorValueError,
            f"framework {framework} is not served by torch_safetensors "
            f"(it serves \"pt\" and \"numpy\")")
    raise _ref_error(SafetensorError, f"framework {framework} is invalid")


def _check_backend(backend: str) -> None:
    if backend not in ("mmap", "pread"):
        raise _ref_error(
            SafetensorValueError,
            f'backend "{backend}" is invalid (expected one of: "mmap", '
            f'"pread")')


def _dropin(source: str):
    """Our errors leave the decorated drop-in function with the reference's
    message (errors.as_reference; status, offset, tensor name and our own
    message, ``detail``, stay as attributes). source: "file", "bytes" or
    "write"."""
    def deco(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with reference_errors(source):
                return fn(*args, **kwargs)
        return inner
    return deco


#: File dtypes numpy has no type for, and the attribute the reference looks
#: up for each (its AttributeError); BF16 is refused by name (TypeError).
_NUMPY_ABSENT = {
    r.name: r.torch_name for r in _C.dtypes()
    if r.name not in ("BF16",) and r.torch_name not in (
        "bool", "uint8", "int8", "int16", "uint16", "float16", "int32",
        "uint32", "float32", "complex64", "float64", "int64", "uint64")}
for _n in _dtypes.RAW_BYTES:  # the reference: "Dtype not understood"
    _NUMPY_ABSENT.pop(_n, None)


def _numpy_has_bfloat16() -> bool:
    """Whether np.dtype("bfloat16") works now, as the reference asks it at
    every read: only once something imported ml_dtypes, which registers the
    name with numpy (the reference then returns bfloat16 arrays)."""
    import numpy as np
    try:
        np.dtype("bfloat16")
    except TypeError:
        return False
    return True


# --------------------------------------------------------------------------
# safe_open
# --------------------------------------------------------------------------

class safe_open:
    """Opens a safetensors file lazily and returns tensors as asked.

    Args:
        filename: the file to open (``str`` or ``os.PathLike``).
        framework: ``"pt"`` (also ``"torch"``, ``"pytorch"``): torch
            tensors; ``"numpy"`` (or ``"np"``): numpy arrays, CPU only, of
            the dtypes numpy has (BF16, F8, F4 and F6 are refused as the
            reference refuses them).
        device: where the tensors go: ``"cpu"`` (default), ``"cuda:0"``, an
            int, or a ``torch.device``.
        backend: ``"mmap"`` (default; CPU tensors are zero-copy, writable
            views of a private mapping) or ``"pread"`` (no mapping; owned
            tensors).
        dequantize: an extension of this package: ``torch.bfloat16``,
            ``torch.float16`` or ``torch.float32`` to see every quantized
            group (docs/QUANT.md) as one dense tensor of that dtype under
            its unquantized name; keys() then lists those names in place
            of the groups' components. Default None: what is stored.

    Example::

        with safe_open("model.safetensors", framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
    """

    @_dropin("file")
    def __init__(self, filename: PathLike, framework: str = "pt",
                 device: Union[str, int, torch.device] = "cpu", *,
                 backend: str = "mmap",
                 dequantize: Optional[torch.dtype] = None) -> None:
        self._framework = _check_framework(framework)
        _check_backend(backend)
        if type(device) is int and device >= 0:
            # An accelerator index: where there is none, torch's own
            # RuntimeError ("Cannot access accelerator device when none is
            # available."), as the reference raises it.
            torch.device(device)
        self._device = parse_device(device)
        if self._framework == "numpy" and not is_cpu(self._device):
            shown = device if isinstance(device, int) else \
                f"{self._device.type}:{self._device.index or 0}"
            raise _ref_error(
                SafetensorError,
                f"Device {shown} is not supported for framework numpy")
        self._backend = backend
        self._file = self._open(filename, backend)
        # Built on first need: listing names or reading one tensor of a
        # file with a million tensors must not pay a Python object per
        # tensor (the C core has both orders and a binary search).
        self._infos_cache: Optional[List["_C.TensorInfo"]] = None
        self._index_cache: Optional[Dict[str, int]] = None
        self._closed = False
        self._quant: Optional[Tuple[torch.dtype, Dict[str, Any]]] = None
        if dequantize is not None:
            self._quant = _quant_plan(self, filename, dequantize)

    @staticmethod
    def _open(filename: Any, backend: str) -> "_C.File":
        return open_file(filename, backend=backend, writable=True)

    @property
    def _infos(self) -> List["_C.TensorInfo"]:
        """(name, dtype, shape, begin, end) of every tensor, in file order."""
        if self._infos_cache is None:
            self._infos_cache = self._file.tensors()
        return self._infos_cache

    def _info(self, k: int) -> "_C.TensorInfo":
        if self._infos_cache is not None:
            return self._infos_cache[k]
        return self._file.info(k)

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> "safe_open":
        self._check_open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the file; tensors already returned stay valid."""
        if not self._closed:
            self._closed = True
            self._file.close()

    def _check_open(self) -> None:
        if self._closed:
            raise _ref_error(SafetensorError, "File is closed")

    def _lookup(self, name: str) -> int:
        self._check_open()
        if not isinstance(name, str):
            raise _ref_error(SafetensorTypeError,
                             f"argument 'name': '{type(name).__name__}' "
                             f"object is not an instance of 'str'")
        if self._index_cache is not None:
            k = self._index_cache.get(name)
        else:
            try:
                k = self._file.index(name)
            except (KeyError, UnicodeError):
                k = None
        if k is None:
            raise _ref_error(SafetensorKeyError,
                             f"File does not contain tensor {name}",
                             ST_ERR_NOT_FOUND, tensor_name=name)
        return k

    # -- names and metadata ------------------------------------------------
    def keys(self) -> List[str]:
        """The tensor names, sorted."""
        self._check_open()
        if self._quant is not None:
            return sorted(quant.logical_names(self._file.names(),
                                              self._quant[1]))
        return self._file.names()

    def offset_keys(self) -> List[str]:
        """The tensor names in the order of their data in the file."""
        self._check_open()
        if self._quant is not None:
            return quant.logical_names(self._file.names(sorted=False),
                                       self._quant[1])
        return self._file.names(sorted=False)

    def metadata(self) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` dict, or None when the file has none."""
        self._check_open()
        return metadata_of(self._file)

    # -- tensors -----------------------------------------------------------
    def _cpu_tensor(self, k: int) -> torch.Tensor:
        info = self._info(k)
        if self._backend == "mmap":
            return view_tensor(self._file, k, info)
        return _io.read_owned(self._file, [(k, info)],
                           pin=not is_cpu(self._device) and pin_available())[0]

    def _place(self, t: torch.Tensor) -> torch.Tensor:
        if is_cpu(self._device):
            return t
        return _io.to_device(t, self._device)

    def _numpy(self, info: "_C.TensorInfo", t: torch.Tensor) -> Any:
        """t (a CPU tensor of info) as the numpy array the reference gives:
        sharing t's memory (writable), in numpy's dtype."""
        if info.dtype == "BF16":  # numpy knows it (_check_numpy): ml_dtypes
            import numpy as np
            return t.view(torch.int16).numpy().view(np.dtype("bfloat16"))
        return t.numpy()

    def _check_numpy(self, info: "_C.TensorInfo") -> None:
        if info.dtype in _dtypes.RAW_BYTES:
            raise _ref_error(SafetensorError,
                             f"Dtype not understood: {info.dtype}",
                             tensor_name=info.name)
        if info.dtype in _NUMPY_ABSENT:
            raise _ref_error(SafetensorNumpyDtypeError,
                             f"module 'numpy' has no attribute "
                             f"'{_NUMPY_ABSENT[info.dtype]}'",
                             tensor_name=info.name)
        if info.dtype == "BF16" and not _numpy_has_bfloat16():
            raise _ref_error(SafetensorTypeError,
                             "data type 'bfloat16' not understood",
                             tensor_name=info.name)

    @_dropin("file")
    def get_tensor(self, name: str) -> Any:
        """The whole tensor ``name`` (on the requested device; a numpy
        array with ``framework="numpy"``)."""
        if self._quant is not None and name in self._quant[1]:
            self._check_open()
            return self._place(quant.dequantize_group(
                self._quant[1][name], self._raw, self._quant[0]))
        k = self._lookup(name)
        if self._framework == "numpy":
            info = self._info(k)
            self._check_numpy(info)
            return self._numpy(info, self._cpu_tensor(k))
        return self._place(self._cpu_tensor(k))

    @_dropin("file")
    def get_tensors(self) -> Dict[str, Any]:
        """Every tensor, keyed by name, in file order."""
        self._check_open()
        if self._framework == "numpy":
            for info in self._infos:
                self._check_numpy(info)
            return {info.name: self._numpy(info, self._cpu_tensor(k))
                    for k, info in enumerate(self._infos)}
        cpu = is_cpu(self._device)
        if self._backend == "mmap":
            ts = view_all(self._file, self._infos)
        else:
            ts = _io.read_owned(self._file, list(enumerate(self._infos)),
                             pin=not cpu and pin_available())
        out = {info.name: t for info, t in zip(self._infos, ts)}
        if self._quant is not None:
            out = quant.dequantize_tensors(out, self._quant[1],
                                           self._quant[0])
        if not cpu:
            out = {n: self._place(t) for n, t in out.items()}
        return out

    def _raw(self, name: str) -> torch.Tensor:
        """The stored tensor name, on the CPU (a component of a group)."""
        return self._cpu_tensor(self._lookup(name))

    @_dropin("file")
    def get_slice(self, name: str) -> "_SafeSlice":
        """A lazy handle: index it (``[a:b, ::2, -1]``) to read a part."""
        if self._quant is not None and name in self._quant[1]:
            raise quant.slice_refused(name)
        k = self._lookup(name)
        if self._framework == "numpy":
            return _NumpySlice(self, k, self._info(k))
        return _SafeSlice(self, k, self._info(k))

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._file.count()} tensors"
        return f"<torch_safetensors.safe_open {self._file.name!r} {state}>"


class _safe_open_handle(safe_open):
    """safe_open on an open file object (the reference's private
    ``safetensors._safe_open_handle``): ``f`` needs ``fileno()`` and
    ``name``; the descriptor is duplicated, so ``f`` may be closed after.

    Example::

        with open("m.safetensors", "rb") as fh:
            with _safe_open_handle(fh, framework="pt") as f:
                w = f.get_tensor("w")
    """

    def __init__(self, f: Any, framework: str = "pt",
                 device: Union[str, int, torch.device] = "cpu", *,
                 backend: str = "mmap",
                 dequantize: Optional[torch.dtype] = None) -> None:
        fileno = f.fileno  # AttributeError, as the reference
        f.name
        super().__init__(fileno(), framework, device, backend=backend,
                         dequantize=dequantize)

    @staticmethod
    def _open(fd: Any, backend: str) -> "_C.File":
        return _C.File(fd, backend=backend, writable=True)


def _quant_plan(f: safe_open, filename: Any, dtype: Any
                ) -> Tuple[torch.dtype, Dict[str, Any]]:
    """(dtype, quantized groups) of an open file, for dequantize=dtype:
    its descriptor, else inference with the config.json beside it."""
    quant.check_output_dtype(dtype)
    if f._framework != "pt":
        raise _ref_error(SafetensorValueError,
                         'dequantize needs framework "pt"')
    md = f.metadata()
    directory = None
    if isinstance(filename, (str, bytes, os.PathLike)):
        directory = os.path.dirname(os.path.abspath(os.fsdecode(filename)))
    infos = {i.name: (i.dtype, tuple(i.shape)) for i in f._infos}
    return dtype, quant.describe(infos, md, quant.read_config(directory, md),
                                 f._raw)


# --------------------------------------------------------------------------
# Slices
# --------------------------------------------------------------------------

#: Sub-byte dtypes (F4 pairs, F6 raw bytes): the C table's torch_values != 1.
_SUB_BYTE = _dtypes.RESHAPED


def _basic_index(index: Any, shape: Tuple[int, ...]):
    """Turns a basic index (ints, slices, Ellipsis, None) into C ranges.

    Returns (ranges, squeeze_dims, newaxis_positions) or None when the index
    is not basic (then the caller uses torch's indexing). Raises IndexError /
    ValueError with torch's messages where torch would refuse."""
    items = index if isinstance(index, tuple) else (index,)
    expanded: List[Any] = []
    seen_ellipsis = False
    for it in items:
        if it is Ellipsis:
            if seen_ellipsis:
                return None  # torch's own rules decide
            seen_ellipsis = True
            expanded.append(it)
        elif it is None or isinstance(it, slice):
            expanded.append(it)
        elif isinstance(it, bool):
            return None
        elif isinstance(it, int):
            expanded.append(it)
        elif isinstance(it, torch.Tensor) and it.dim() == 0 and \
                not it.is_floating_point() and it.dtype != torch.bool:
            expanded.append(int(it))
        else:
            return None
    consuming = [it for it in expanded if it is not None and it is not Ellipsis]
    rank = len(shape)
    if len(consuming) > rank:
        if rank == 0 and any(isinstance(it, slice) for it in consuming):
            raise IndexError("slice() cannot be applied to a 0-dim tensor.")
        raise IndexError(f"too many indices for tensor of dimension {rank}")
    if seen_ellipsis:
        pos = expanded.index(Ellipsis)
        fill = [slice(None)] * (rank - len(consuming))
        expanded = expanded[:pos] + fill + expanded[pos + 1:]
    ranges: List[Tuple[int, int, int]] = []
    squeeze: List[int] = []
    out_pos: List[int] = []  # result positions of None (new axes)
    dim = 0
    out_dim = 0
    for it in expanded:
        if it is None:
            out_pos.append(out_dim)
            out_dim += 1
            continue
        size = shape[dim]
        if isinstance(it, slice):
            start, stop, step = it.indices(size)  # ValueError for step 0
            if step <= 0:
                raise ValueError("step must be greater than zero")
            ranges.append((start, max(start, stop), step))
            out_dim += 1
        else:
            i = it + size if it < 0 else it
            if i < 0 or i >= size:
                raise IndexError(f"index {it} is out of bounds for dimension "
                                 f"{dim} with size {size}")
            ranges.append((i, i + 1, 1))
            squeeze.append(dim)
        dim += 1
    return ranges, squeeze, out_pos


#: Slices of at least this many bytes are read by the parallel engine.
_PARALLEL_SLICE = 1 << 20


class _SliceInfo:
    """What every ``get_slice`` result knows: its tensor in an open file."""

    def __init__(self, owner: safe_open, k: int,
                 info: "_C.TensorInfo") -> None:
        self._owner = owner
        self._k = k
        self._info = info

    def get_shape(self) -> List[int]:
        """The shape in the file (F4: elements, not torch's packed pairs)."""
        return list(self._info.shape)

    def get_dtype(self) -> str:
        """The file dtype name, e.g. ``"F32"``."""
        return self._info.dtype


class _SafeSlice(_SliceInfo):
    """What ``safe_open.get_slice`` returns (the reference's PySafeSlice)."""

    def __len__(self) -> int:
        shape = self._info.shape
        if not shape:
            raise TypeError("len() of a 0-d tensor")
        return shape[0]

    def _read(self, ranges: List[Tuple[int, int, int]]) -> torch.Tensor:
        f = self._owner._file
        dtype = self._info.dtype
        shape, nbytes = f.slice_shape(self._k, ranges)
        tdtype = torch_dtype_of(self._info)
        tshape = _dtypes.torch_shape(dtype, shape)
        out = torch.empty(tshape, dtype=tdtype)
        if nbytes >= _PARALLEL_SLICE:
            # One engine plan: the rows of a big strided slice are copied by
            # every core instead of one.
            f._read_many([(self._k, out.data_ptr(), nbytes, ranges)])
        elif nbytes:
            f._read_slice_into(self._k, ranges, out.data_ptr(), nbytes)
        return out

    def _read_ranges(self, ranges: List[Tuple[int, int, int]],
                     shape) -> torch.Tensor:
        dtype = self._info.dtype
        if (_dtypes.TORCH_VALUES[dtype] != 2 or len(ranges) < len(shape)
                or not shape):
            return self._read(ranges)
        # The C library copies whole bytes only, so it refuses every cut of
        # a sub-byte dtype's last dimension; F4 cuts on even element
        # boundaries are whole bytes: read whole rows, then cut the pairs.
        start, stop, step = ranges[-1]
        if (start, stop, step) == (0, shape[-1], 1):
            return self._read(ranges)
        if step != 1 or start % 2 or stop % 2:
            raise _ref_error(
                SafetensorIndexError,
                f"slicing the last dimension of an F4 tensor must keep whole "
                f"bytes (even start and stop, step 1); got "
                f"{start}:{stop}:{step}", 20, tensor_name=self._info.name)
        rows = self._read(list(ranges[:-1]) + [(0, shape[-1], 1)])
        return rows[..., start // 2:stop // 2].contiguous()

    @_dropin("file")
    def __getitem__(self, index: Any) -> torch.Tensor:
        owner = self._owner
        owner._check_open()
        name, dtype, shape = self._info.name, self._info.dtype, self._info.shape
        direct = (dtype not in _SUB_BYTE and owner._backend == "mmap")
        try:
            if direct:
                # The reference indexes a view of the mapped tensor: the
                # result is that same view (strides included).
                full = view_tensor(owner._file, self._k, self._info)
                return owner._place(full[index])
            basic = _basic_index(index, tuple(shape))
            if basic is None:
                if dtype in _SUB_BYTE:
                    raise IndexError(
                        f"only ints, slices, None and ... index {dtype} "
                        f"tensors")
                full = owner._cpu_tensor(self._k)
                return owner._place(full[index])
            ranges, squeeze, new_axes = basic
            out = self._read_ranges(ranges, shape)
            # Raw F6 bytes and odd-width F4 come back flat: nothing to shape.
            if dtype not in _dtypes.RAW_BYTES and out.dim() == len(shape):
                for d in reversed(squeeze):
                    out = out.squeeze(d)
                for p in new_axes:
                    out = out.unsqueeze(p)
            return owner._place(out)
        except SafetensorError:
            raise
        except IndexError as e:
            raise wrap(e, SafetensorIndexError, name, reference=True) from None
        except (ValueError, TypeError, RuntimeError) as e:
            cls = SafetensorTypeError if isinstance(e, TypeError) \
                else SafetensorValueError
            raise wrap(e, cls, name, reference=True) from None

    def __repr__(self) -> str:
        return (f"<torch_safetensors slice {self._info.name!r} "
                f"{self._info.dtype} {list(self._info.shape)}>")


def _np_index_text(items: Tuple[Any, ...]) -> str:
    def one(it: Any) -> str:
        if isinstance(it, slice):
            text = ("" if it.start is None else str(it.start)) + ":" + \
                ("" if it.stop is None else str(it.stop))
            return text if it.step is None else f"{text}:{it.step}"
        if it is Ellipsis:
            return "..."
        return str(it)
    return "[" + ", ".join(one(it) for it in items) + "]"


class _NumpySlice(_SliceInfo):
    """What ``get_slice`` returns with ``framework="numpy"``: the
    reference's slicing rules for numpy (ints, slices with a positive step,
    one Ellipsis; bounds are checked, not clipped), and its messages."""

    def _index(self, index: Any) -> Tuple[Any, ...]:
        items = index if isinstance(index, tuple) else (index,)
        shape = list(self._info.shape)
        name = self._info.name
        out: List[Any] = []
        seen = False
        for pos, it in enumerate(items):
            if it is Ellipsis:
                if seen:
                    raise _ref_error(
                        SafetensorError,
                        "Only one ellipsis (...) is allowed in slice index",
                        tensor_name=name)
                seen = True
                out.append(it)
            elif isinstance(it, slice):
                if it.step is not None and it.step <= 0:
                    raise _ref_error(
                        SafetensorError, f"Slice step must be a positive "
                        f"integer, got {it.step}", tensor_name=name)
                out.append(it)
            elif isinstance(it, list):
                raise _ref_error(SafetensorError,
                                 "Non empty lists are not implemented",
                                 tensor_name=name)
            elif hasattr(it, "__index__") and it is not None:
                out.append(int(it.__index__()))
            else:
                raise _ref_error(
                    SafetensorError, f"Unsupported slice index at position "
                    f"{pos}: expected slice, int, or ellipsis",
                    tensor_name=name)
        consuming = [it for it in out if it is not Ellipsis]
        text = _np_index_text(tuple(out))
        if len(consuming) > len(shape):
            raise _ref_error(
                SafetensorError, f"Error during slicing {text} with shape "
                f"{shape}: more slicing indexes than dimensions in tensor",
                tensor_name=name)
        if seen:
            pos = out.index(Ellipsis)
            out = out[:pos] + [slice(None)] * (len(shape) - len(consuming)) \
                + out[pos + 1:]
        for dim, it in enumerate(out):
            size = shape[dim]
            if isinstance(it, slice):
                stop = it.stop
                if stop is not None and stop < 0:
                    stop += size
                if stop is not None and stop > size:
                    raise _ref_error(
                        SafetensorError, f"Error during slicing {text} with "
                        f"shape {shape}: index {stop - 1} out of bounds for "
                        f"tensor dimension #{dim} of size {size}",
                        tensor_name=name)
            elif it < -size:
                raise _ref_error(
                    SafetensorError, f"Invalid index {it} for dimension "
                    f"{dim} of size {size}", tensor_name=name)
            elif it >= size:
                raise _ref_error(
                    SafetensorError, f"Error during slicing {text} with "
                    f"shape {shape}: index {it} out of bounds for tensor "
                    f"dimension #{dim} of size {size}", tensor_name=name)
        return tuple(out)

    @_dropin("file")
    def __getitem__(self, index: Any) -> Any:
        owner = self._owner
        owner._check_open()
        owner._check_numpy(self._info)
        idx = self._index(index)
        full = owner._numpy(self._info, owner._cpu_tensor(self._k))
        return full[idx].copy()

    def __repr__(self) -> str:
        return (f"<torch_safetensors numpy slice {self._info.name!r} "
                f"{self._info.dtype} {list(self._info.shape)}>")


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------

def _check_kind(name: str, t: torch.Tensor) -> None:
    """check_tensor_kind with the reference's exception types (and, where
    they say what happened, its messages); ours stays in ``detail``."""
    try:
        check_tensor_kind(name, t)
    except SafetensorError as e:
        detail = str(e)
        if t.device.type == "meta":
            exc = _ref_error(SafetensorMetaTensorError,
                             "Cannot copy out of meta tensor; no data!",
                             tensor_name=name)
        elif t.is_nested:
            exc = _ref_error(SafetensorNestedTensorError, c_message(e),
                             tensor_name=name)
        elif t.is_quantized or _dtypes.st_name(t.dtype) is None:
            exc = _ref_error(SafetensorUnsupportedDtypeError, str(t.dtype),
                             tensor_name=name)
        else:
            raise
        exc.detail = detail
        raise exc from None


def _check_for_save(tensors: Any, policy: str) -> List[int]:
    """The reference's checks, in its order, with its messages; tensors that
    share memory follow the aliasing policy (its owner list, _alias)."""
    _alias.check_policy(policy)
    check_tensor_dict(tensors, "reference", kinds=False)
    sparse = [k for k, v in tensors.items() if v.layout != torch.strided]
    if sparse:
        raise _ref_error(
            SafetensorUnsupportedTensorError,
            f"You are trying to save a sparse tensors: `{sparse}` which this "
            f"library does not support. You can make it a dense tensor before "
            f"saving with `.to_dense()` but be aware this might make a much "
            f"larger file than needed.", tensor_name=sparse[0])
    for k, v in tensors.items():
        _check_kind(k, v)
    try:
        owner = _alias.resolve(list(tensors), list(tensors.values()), policy)
    except SafetensorSharedTensorError as e:
        if type(e) is not SafetensorSharedTensorError:
            raise
        failing = [s for s in _find_shared_tensors(tensors) if len(s) > 1]
        raise _ref_error(
            SafetensorSharedTensorError, f"""
            Some tensors share memory, this will lead to duplicate memory on disk and potential differences when loading them again: {failing}.
            A potential way to correctly save your model is to use `save_model`.
            More information at https://huggingface.co/docs/safetensors/torch_shared_tensors
            """, tensor_name=e.tensor_name) from None
    for k, v in tensors.items():
        if not v.is_contiguous():
            raise _ref_error(
                SafetensorValueError,
                f"You are trying to save a non contiguous tensor: `{k}` which "
                f"is not allowed. It either means you are trying to save "
                f"tensors which are reference of each other in which case "
                f"it's recommended to save only the full tensors, and reslice "
                f"at load time, or simply call `.contiguous()` on your tensor "
                f"to pack it before saving.", tensor_name=k)
    return owner


def _tied(tensors: Dict[str, torch.Tensor], owner: List[int],
          metadata: Optional[Dict[str, str]]
          ) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, str]]]:
    """The tensors to store and the metadata recording dropped tied names
    (policy "tie"; load_file gives them back sharing storage)."""
    kept, dropped = _alias.tie(tensors, owner)
    if dropped:
        metadata = {**(metadata or {}), **_alias.alias_metadata(dropped)}
    return kept, metadata


def _fspath(filename: Any) -> str:
    if isinstance(filename, (str, os.PathLike)):
        return os.fspath(filename)
    raise _ref_error(SafetensorTypeError,
                     f"filename must be a str or os.PathLike, not "
                     f"{type(filename).__name__}")


@_dropin("write")
def save(tensors: Dict[str, torch.Tensor],
         metadata: Optional[Dict[str, str]] = None, *,
         policy: str = "error") -> bytes:
    """Saves a dict of tensors into the bytes of a safetensors file.

    ``policy`` (an extension of this package) says what happens to tensors
    that share memory: ``"error"`` (default, the reference's refusal),
    ``"tie"`` or ``"copy"`` (docs/RECORD.md, "Shared memory").

    Example::

        data = save({"embedding": torch.zeros((512, 1024))})
    """
    owner = _check_for_save(tensors, policy)
    metadata = check_metadata(metadata)
    tensors, metadata = _tied(tensors, owner, metadata)
    return make_writer(host_tensors(tensors, False), metadata).to_bytes()


@_dropin("write")
def save_file(tensors: Dict[str, torch.Tensor], filename: PathLike,
              metadata: Optional[Dict[str, str]] = None, *,
              direct: bool = False, policy: str = "error",
              quantize: Any = None) -> None:
    """Saves a dict of tensors into ``filename``, durably and atomically.

    ``policy`` (an extension of this package) says what happens to tensors
    that share memory: ``"error"`` (default: refused, as the reference
    does), ``"tie"`` (exact aliases stored once; the dropped names are
    recorded in the metadata and :func:`load_file` gives them back sharing
    storage) or ``"copy"`` (each name stored as its own copy). See
    docs/RECORD.md, "Shared memory".

    ``direct=True`` (an extension of this package) writes with ``O_DIRECT``:
    the page cache is bypassed, so saving a checkpoint larger than the free
    memory does not evict everything else; filesystems that refuse
    ``O_DIRECT`` get ordinary writes. The bytes are the same either way.

    ``quantize`` (an extension of this package): a scheme (``"W4A16"``,
    ``"W8A16"``, ``"W8A16_CHANNEL"``, ``"FP8"``, ``"FP8_CHANNEL"``,
    ``"FP8_BLOCK"``, ``"NVFP4A16"``, ``"MXFP4A16"``) or ``{"scheme": ..., "group_size": g, "ignore":
    [...]}``: every 2-D floating ``*.weight`` (but ``lm_head`` and
    embeddings, by default) is quantized to nearest and stored in the
    compressed-tensors layout, with its quantization_config and our
    descriptor in the metadata (docs/QUANT.md, "Writing").

    Example::

        save_file({"embedding": torch.zeros((512, 1024))}, "m.safetensors")
        save_file(model.state_dict(), "w4.safetensors", quantize="W4A16")
    """
    path = _fspath(filename)
    if quantize is not None and isinstance(tensors, dict):
        tensors, metadata = quant.quantize_state_dict(
            tensors, quantize, check_metadata(metadata))
    owner = _check_for_save(tensors, policy)
    metadata = check_metadata(metadata)
    tensors, metadata = _tied(tensors, owner, metadata)
    make_writer(host_tensors(tensors, False), metadata).write_path(
        path, direct=bool(direct))


@_dropin("file")
def load_file(filename: PathLike,
              device: Union[str, int, torch.device] = "cpu", *,
              backend: str = "mmap",
              dequantize: Optional[torch.dtype] = None
              ) -> Dict[str, torch.Tensor]:
    """Loads every tensor of a safetensors file, keyed by name. Names that
    ``save_file(..., policy="tie")`` stored once come back too, sharing the
    kept tensor's storage.

    ``dequantize`` (an extension of this package): ``torch.bfloat16``,
    ``torch.float16`` or ``torch.float32`` turns every quantized group
    (docs/QUANT.md: compressed-tensors, GPTQ, AWQ, bitsandbytes, FP8
    block, MXFP4, NVFP4) into one dense tensor under its unquantized name
    (``<module>.weight``, ``[out, in]``); other tensors come back as
    stored.

    Example::

        state_dict = load_file("model.safetensors")
        dense = load_file("w4a16.safetensors", dequantize=torch.bfloat16)
    """
    with safe_open(filename, framework="pt", device=device,
                   backend=backend, dequantize=dequantize) as f:
        return _alias.restore(f.get_tensors(), f.metadata())


@_dropin("bytes")
def load(data: bytes) -> Dict[str, torch.Tensor]:
    """Loads the tensors of a safetensors file held in ``data`` (bytes).

    The tensors own their memory (CPU).

    Example::

        with open("model.safetensors", "rb") as fh:
            state_dict = load(fh.read())
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _ref_error(SafetensorTypeError,
                         f"argument 'bytes': '{type(data).__name__}' object "
                         f"is not an instance of 'bytes'")
    f = _C.File(data)
    try:
        infos = f.tensors()
        ts = _io.read_owned(f, list(enumerate(infos)))
        return _alias.restore({info.name: t for info, t in zip(infos, ts)},
                              metadata_of(f))
    finally:
        f.close()


# --------------------------------------------------------------------------
# Models (shared tensors)
# --------------------------------------------------------------------------

# The helpers that libraries import from safetensors.torch (transformers:
# storage_ptr, storage_size; others: _find_shared_tensors,
# _remove_duplicate_names), with the reference's results.

#: Bytes per element of each torch dtype that the format stores (the
#: reference's ``_SIZE``), from the one dtype table.
_SIZE: Dict[torch.dtype, int] = {d: d.itemsize for d in _dtypes.FROM_TORCH}

#: Format code -> torch dtype that ``load`` (bytes) builds, as the
#: reference's ``_TYPES`` (it leaves out F8_E8M0, F4 and F6; ours loads
#: the first two, see the module's docstring).
_TYPES: Dict[str, torch.dtype] = {
    n: d for n, d in _dtypes.TO_TORCH.items()
    if n not in _dtypes.RESHAPED and n != "F8_E8M0"}


def _getdtype(dtype_str: str) -> torch.dtype:
    """The torch dtype of a format code (KeyError when there is none)."""
    return _TYPES[dtype_str]


def storage_ptr(tensor: torch.Tensor) -> int:
    """The address of the storage under ``tensor`` (0 for meta tensors and
    others without data).

    Example::

        storage_ptr(w) == storage_ptr(w[1:])   # True: one storage
    """
    try:
        return tensor.untyped_storage().data_ptr()
    except Exception:
        try:
            return tensor.storage().data_ptr()
        except NotImplementedError:
            return 0


def storage_size(tensor: torch.Tensor) -> int:
    """The byte size of the storage under ``tensor`` (for meta tensors:
    the tensor's own byte size).

    Example::

        storage_size(torch.ones(4)[:2])   # 16
    """
    try:
        return tensor.untyped_storage().nbytes()
    except AttributeError:
        try:
            return tensor.storage().size() * _SIZE[tensor.dtype]
        except NotImplementedError:
            return tensor.nelement() * _SIZE[tensor.dtype]


def _end_ptr(tensor: torch.Tensor) -> int:
    """One past the last byte of ``tensor``'s elements (a contiguous
    layout's end, as the reference computes it)."""
    if tensor.nelement():
        return tensor.view(-1)[-1].data_ptr() + tensor.element_size()
    return tensor.data_ptr()


def _find_shared_tensors(state_dict: Dict[str, torch.Tensor]
                         ) -> List[Set[str]]:
    """Every name of ``state_dict`` whose tensor has storage, in sets: the
    names whose bytes overlap (torch_safetensors._alias's rule) share a
    set, the others are alone in theirs. Meta tensors and tensors without
    storage are left out. The order is the reference's: storages in the
    order they first appear, and within one, by address.

    Example::

        w = torch.ones(4)
        _find_shared_tensors({"a": w, "b": w, "c": torch.ones(2)})
        # [{"a", "b"}, {"c"}]
    """
    storages: Dict[Tuple[Any, int, int], List[str]] = {}
    for k, v in state_dict.items():
        if v.device.type != "meta":
            ptr, size = storage_ptr(v), storage_size(v)
            if ptr != 0 and size != 0:
                storages.setdefault((v.device, ptr, size), []).append(k)
    out: List[Set[str]] = []
    for names in storages.values():
        tensors = [state_dict[n] for n in names]
        parts = [set(g) for g in _alias.overlap_groups(tensors)]
        grouped = set().union(*parts)
        parts += [{i} for i in range(len(names)) if i not in grouped]
        parts.sort(key=lambda p: min(tensors[i].data_ptr() for i in p))
        out.extend({names[i] for i in p} for p in parts)
    return out


def _is_complete(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers its whole storage."""
    return (tensor.data_ptr() == storage_ptr(tensor)
            and tensor.nelement() * tensor.element_size()
            == storage_size(tensor))


def _remove_duplicate_names(state_dict: Dict[str, torch.Tensor], *,
                            preferred_names: Optional[Iterable[str]] = None,
                            discard_names: Optional[Iterable[str]] = None
                            ) -> Dict[str, List[str]]:
    """For every set of names sharing memory: the name to keep (one that
    covers the whole storage: a preferred one, else one not discarded,
    else the first in sorted order) -> the names to drop, sorted. A
    RuntimeError (SafetensorSharedTensorError) when no name of a set covers
    its storage. What save_model and load_model use.

    Example::

        _remove_duplicate_names(model.state_dict())
        # {"embed.weight": ["lm_head.weight"]}
    """
    return collections.defaultdict(list, _names_to_drop(
        state_dict, preferred_names=preferred_names,
        discard_names=discard_names))


def _names_to_drop(state_dict: Dict[str, torch.Tensor], *,
                   preferred_names: Optional[Iterable[str]] = None,
                   discard_names: Optional[Iterable[str]] = None
                   ) -> Dict[str, List[str]]:
    """For every set of _find_shared_tensors: which name to keep (one that
    covers its whole storage), and which to drop. As in the reference, a set
    of one name that does not cover its storage (a slice saved alone) is
    refused too: saving it would store less than the model holds there."""
    preferred = set(preferred_names or ())
    discard = set(discard_names or ())
    result: Dict[str, List[str]] = {}
    for group in _find_shared_tensors(state_dict):
        complete = {n for n in group if _is_complete(state_dict[n])}
        if not complete:
            raise _ref_error(
                SafetensorSharedTensorError,
                f"Error while trying to find names to remove to save state "
                f"dict, but found no suitable name to keep for saving amongst:"
                f" {group}. None is covering the entire storage.Refusing to "
                f"save/load the model since you could be storing much more "
                f"memory than needed. Please refer to https://huggingface.co/"
                f"docs/safetensors/torch_shared_tensors for more information. "
                f"Or open an issue.", tensor_name=sorted(group)[0])
        keep = min(complete)
        if complete - discard:
            keep = min(complete - discard)
        if preferred & complete:
            keep = min(preferred & complete)
        dropped = sorted(n for n in group if n != keep)
        if dropped:
            result[keep] = dropped
    return result


@_dropin("write")
def save_model(model: "torch.nn.Module", filename: PathLike,
               metadata: Optional[Dict[str, str]] = None,
               force_contiguous: bool = True) -> None:
    """Saves a model's state_dict, storing shared (tied) tensors once.

    Each dropped name is recorded in the metadata as ``{dropped: kept}``
    (unless the caller already set that key).

    Example::

        save_model(model, "model.safetensors")
    """
    state_dict = model.state_dict()
    for kept, dropped in _names_to_drop(state_dict).items():
        for name in dropped:
            if metadata is None:
                metadata = {}
            metadata.setdefault(name, kept)
            del state_dict[name]
    if force_contiguous:
        state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    try:
        save_file(state_dict, filename, metadata=metadata)
    except ValueError as e:
        msg = (str(e) + " Or use save_model(..., force_contiguous=True), "
               "read the docs for potential caveats.")
        raise _ref_error(SafetensorValueError, msg,
                         tensor_name=getattr(e, "tensor_name", None)) from e


@_dropin("file")
def load_model(model: "torch.nn.Module", filename: PathLike,
               strict: bool = True,
               device: Union[str, int, torch.device] = "cpu", *,
               backend: str = "mmap") -> Tuple[Set[str], List[str]]:
    """Loads a file into a model, restoring names dropped by save_model.

    Returns ``(missing, unexpected)``; with ``strict`` a mismatch raises
    RuntimeError, as ``load_state_dict`` does.

    Example::

        missing, unexpected = load_model(model, "model.safetensors")
    """
    state_dict = load_file(filename, device=device, backend=backend)
    drops = _names_to_drop(model.state_dict(),
                           preferred_names=state_dict.keys())
    missing_l, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = set(missing_l)
    for dropped in drops.values():
        for name in dropped:
            if name in missing:
                missing.remove(name)
            else:
                unexpected.append(name)
    if strict and (missing or unexpected):
        error = f"Error(s) in loading state_dict for {type(model).__name__}:"
        if missing:
            keys = ", ".join(f'"{k}"' for k in sorted(missing))
            error += f"\n    Missing key(s) in state_dict: {keys}"
        if unexpected:
            keys = ", ".join(f'"{k}"' for k in sorted(unexpected))
            error += f"\n    Unexpected key(s) in state_dict: {keys}"
        raise RuntimeError(error)
    return missing, unexpected

