"""A ctypes binding of the public C API (include/safetensors.h), for tests and benchmarks.

The library is loaded from the environment variable ST_LIBRARY (default: build/libsafetensors.so
of this checkout). The structs mirror the header exactly; keep them in step with it.

Example::

    import stcore
    f = stcore.open_memory(data)          # raises stcore.StError on a bad file
    for t in f.tensors():
        print(t.name, t.dtype, t.shape, f.read(t.index))
    blob = stcore.write_memory({"w": ("F32", [2], b"\\0" * 8)}, {"format": "pt"})
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (POINTER, Structure, byref, c_char, c_char_p, c_int, c_size_t, c_uint,
                    c_uint32, c_uint64, c_void_p)
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

_HERE = Path(__file__).resolve().parent
DEFAULT_LIBRARY = str(_HERE.parent.parent / "build" / "libsafetensors.so")

# --- Constants, as pinned in safetensors.h ---------------------------------------------------

STATUS_NAMES = [
    "ST_OK", "ST_ERR_INVALID_ARGUMENT", "ST_ERR_NOMEM", "ST_ERR_IO", "ST_ERR_HEADER_TOO_SMALL",
    "ST_ERR_HEADER_TOO_LARGE", "ST_ERR_INVALID_HEADER_LENGTH", "ST_ERR_INVALID_HEADER",
    "ST_ERR_HEADER_DESERIALIZATION", "ST_ERR_VALIDATION_OVERFLOW", "ST_ERR_MISALIGNED_SLICE",
    "ST_ERR_INVALID_TENSOR_INFO", "ST_ERR_INVALID_OFFSET", "ST_ERR_INCOMPLETE_BUFFER",
    "ST_ERR_DUPLICATE_KEY", "ST_ERR_NUL_IN_STRING", "ST_ERR_LIMIT", "ST_ERR_NOT_FOUND",
    "ST_ERR_INVALID_SLICE", "ST_ERR_BUFFER_TOO_SMALL", "ST_ERR_UNSUPPORTED",
    "ST_ERR_RESERVED_NAME", "ST_ERR_CALLBACK", "ST_ERR_FILE_CHANGED",
]
for _i, _n in enumerate(STATUS_NAMES):
    globals()[_n] = _i

# Name, bits; the list index is the st_dtype number (an oracle written from
# FORMAT.md, independent of the library's table on purpose).
DTYPES: List[Tuple[str, int]] = [
    ("BOOL", 8), ("F4", 4), ("F6_E2M3", 6), ("F6_E3M2", 6), ("U8", 8), ("I8", 8),
    ("F8_E5M2", 8), ("F8_E4M3", 8), ("F8_E8M0", 8), ("F8_E4M3FNUZ", 8), ("F8_E5M2FNUZ", 8),
    ("I16", 16), ("U16", 16), ("F16", 16), ("BF16", 16), ("I32", 32), ("U32", 32), ("F32", 32),
    ("C64", 64), ("F64", 64), ("I64", 64), ("U64", 64),
]
DTYPE_NUM: Dict[str, int] = {n: i for i, (n, _) in enumerate(DTYPES)}
DTYPE_BITS: Dict[str, int] = dict(DTYPES)

ST_NO_OFFSET = 2**64 - 1
ST_ERROR_NAME_CAP = 128
ST_MAX_HEADER_SIZE = 100_000_000
ST_DEFAULT_MAX_RANK = 64
ST_DEFAULT_MAX_TENSORS = 10_000_000
ST_DEFAULT_MAX_NAME_LEN = 65536
ST_DEFAULT_MAX_DEPTH = 64

ST_BACKEND_MMAP = 0
ST_BACKEND_PREAD = 1

ST_OPEN_ALLOW_TRAILING_BYTES = 0x1
ST_OPEN_MAP_PRIVATE_WRITABLE = 0x2
ST_OPEN_MAP_POPULATE = 0x4
ST_OPEN_ALLOW_HUGE_HEADER = 0x8

ST_WRITE_NO_FSYNC = 0x1


# --- Structs -----------------------------------------------------------------------------------

class st_error(Structure):
    _fields_ = [
        ("code", c_int),
        ("sys_errno", c_int),
        ("message", c_char_p),
        ("offset", c_uint64),
        ("name_len", c_size_t),
        ("name", c_char * ST_ERROR_NAME_CAP),
        ("reserved", c_uint64 * 8),
    ]


class st_tensor_info(Structure):
    _fields_ = [
        ("name", POINTER(c_char)),
        ("name_len", c_size_t),
        ("dtype", c_int),
        ("rank", c_uint32),
        ("shape", POINTER(c_uint64)),
        ("numel", c_uint64),
        ("data_begin", c_uint64),
        ("data_end", c_uint64),
        ("reserved", c_uint64 * 4),
    ]


class st_allocator(Structure):
    _fields_ = [
        ("malloc_fn", c_void_p),
        ("realloc_fn", c_void_p),
        ("free_fn", c_void_p),
        ("ctx", c_void_p),
    ]


class st_open_options(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("backend", c_int),
        ("flags", c_uint32),
        ("max_header_size", c_uint64),
        ("max_rank", c_uint32),
        ("max_depth", c_uint32),
        ("max_tensors", c_uint64),
        ("max_name_len", c_uint64),
        ("allocator", POINTER(st_allocator)),
        ("reserved", c_uint64 * 8),
    ]


class st_range(Structure):
    _fields_ = [("start", ctypes.c_int64), ("stop", ctypes.c_int64), ("step", ctypes.c_int64)]


# --- Loading -----------------------------------------------------------------------------------

def _sig(lib, name, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


def load_library(path: Optional[str] = None) -> ctypes.CDLL:
    """Loads the C library and declares every prototype of safetensors.h."""
    lib = ctypes.CDLL(path or os.environ.get("ST_LIBRARY", DEFAULT_LIBRARY))
    F = c_void_p  # st_file * / st_writer *: opaque
    _sig(lib, "st_version_number", c_uint)
    _sig(lib, "st_version_string", c_char_p)
    _sig(lib, "st_status_str", c_char_p, c_int)
    _sig(lib, "st_status_name", c_char_p, c_int)
    _sig(lib, "st_dtype_name", c_char_p, c_int)
    _sig(lib, "st_dtype_bits", c_uint, c_int)
    _sig(lib, "st_dtype_from_name", c_int, c_char_p, c_size_t, POINTER(c_int))
    _sig(lib, "st_open_options_init", None, POINTER(st_open_options))
    _sig(lib, "st_open", c_int, c_char_p, POINTER(st_open_options), POINTER(F), POINTER(st_error))
    _sig(lib, "st_open_fd", c_int, c_int, POINTER(st_open_options), POINTER(F), POINTER(st_error))
    _sig(lib, "st_open_memory", c_int, c_void_p, c_size_t, POINTER(st_open_options), POINTER(F),
         POINTER(st_error))
    _sig(lib, "st_close", None, F)
    _sig(lib, "st_file_backend", c_int, F)
    _sig(lib, "st_header_size", c_uint64, F)
    _sig(lib, "st_data_offset", c_uint64, F)
    _sig(lib, "st_data_size", c_uint64, F)
    _sig(lib, "st_header_bytes", c_void_p, F)
    _sig(lib, "st_tensor_count", c_size_t, F)
    _sig(lib, "st_tensor_get", c_int, F, c_size_t, POINTER(st_tensor_info))
    _sig(lib, "st_tensor_name_order", c_int, F, c_size_t, POINTER(c_size_t))
    _sig(lib, "st_tensor_find", c_int, F, c_char_p, c_size_t, POINTER(c_size_t))
    _sig(lib, "st_metadata_count", c_size_t, F)
    _sig(lib, "st_metadata_get", c_int, F, c_size_t, POINTER(c_void_p), POINTER(c_size_t),
         POINTER(c_void_p), POINTER(c_size_t))
    _sig(lib, "st_metadata_find", c_int, F, c_char_p, c_size_t, POINTER(c_void_p),
         POINTER(c_size_t))
    _sig(lib, "st_tensor_data", c_int, F, c_size_t, POINTER(c_void_p))
    _sig(lib, "st_tensor_read", c_int, F, c_size_t, c_void_p, c_size_t, POINTER(st_error))
    _sig(lib, "st_read_range", c_int, F, c_uint64, c_uint64, c_void_p, POINTER(st_error))
    _sig(lib, "st_slice_shape", c_int, F, c_size_t, POINTER(st_range), c_size_t,
         POINTER(c_uint64), POINTER(c_uint64))
    _sig(lib, "st_tensor_read_slice", c_int, F, c_size_t, POINTER(st_range), c_size_t, c_void_p,
         c_size_t, POINTER(st_error))
    _sig(lib, "st_writer_new", c_int, POINTER(st_allocator), POINTER(F), POINTER(st_error))
    _sig(lib, "st_writer_free", None, F)
    _sig(lib, "st_writer_add_metadata", c_int, F, c_char_p, c_size_t, c_char_p, c_size_t,
         POINTER(st_error))
    _sig(lib, "st_writer_add_tensor", c_int, F, c_char_p, c_size_t, c_int, POINTER(c_uint64),
         c_uint32, c_void_p, c_uint64, POINTER(st_error))
    _sig(lib, "st_writer_size", c_int, F, POINTER(c_uint64), POINTER(st_error))
    _sig(lib, "st_writer_write_path", c_int, F, c_char_p, c_uint32, POINTER(st_error))
    _sig(lib, "st_writer_write_fd", c_int, F, c_int, POINTER(st_error))
    _sig(lib, "st_writer_write_memory", c_int, F, c_void_p, c_size_t, POINTER(c_size_t),
         POINTER(st_error))
    return lib


_LIB: Optional[ctypes.CDLL] = None


def lib() -> ctypes.CDLL:
    """The loaded library (loaded once, on first use)."""
    global _LIB
    if _LIB is None:
        _LIB = load_library()
    return _LIB


# --- Errors ------------------------------------------------------------------------------------

class StError(Exception):
    """A failing status from the C library, with its error record."""

    def __init__(self, status: int, err: Optional[st_error] = None):
        self.status = status
        self.status_name = STATUS_NAMES[status] if 0 <= status < len(STATUS_NAMES) else str(status)
        self.offset: Optional[int] = None
        self.name = b""
        self.message = ""
        if err is not None:
            self.offset = None if err.offset == ST_NO_OFFSET else int(err.offset)
            self.name = bytes(err.name)
            self.message = (err.message or b"").decode("utf-8", "replace")
        super().__init__(f"{self.status_name}: {self.message} (offset {self.offset}, "
                         f"name {self.name!r})")


def _check(status: int, err: Optional[st_error] = None) -> None:
    if status != 0:
        raise StError(status, err)


# --- Reading -----------------------------------------------------------------------------------

class TensorInfo(NamedTuple):
    index: int
    name: str        # decoded UTF-8
    name_bytes: bytes
    dtype: str
    shape: Tuple[int, ...]
    numel: int
    data_begin: int
    data_end: int


def make_options(**fields) -> st_open_options:
    """st_open_options with the library's defaults, then the given fields."""
    opts = st_open_options()
    lib().st_open_options_init(byref(opts))
    for k, v in fields.items():
        setattr(opts, k, v)
    return opts


class File:
    """An open st_file. Use as a context manager or call close()."""

    def __init__(self, handle: int, keepalive=None):
        self._h = c_void_p(handle)
        self._keep = keepalive  # st_open_memory borrows the caller's buffer

    def close(self) -> None:
        if self._h:
            lib().st_close(self._h)
            self._h = c_void_p()
            self._keep = None

    def __enter__(self) -> "File":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def handle(self) -> c_void_p:
        return self._h

    def __len__(self) -> int:
        return lib().st_tensor_count(self._h)

    def header_size(self) -> int:
        return lib().st_header_size(self._h)

    def data_offset(self) -> int:
        return lib().st_data_offset(self._h)

    def data_size(self) -> int:
        return lib().st_data_size(self._h)

    def backend(self) -> int:
        return lib().st_file_backend(self._h)

    def tensor(self, index: int) -> TensorInfo:
        info = st_tensor_info()
        _check(lib().st_tensor_get(self._h, index, byref(info)))
        nb = ctypes.string_at(info.name, info.name_len)
        return TensorInfo(index, nb.decode("utf-8"), nb, DTYPES[info.dtype][0],
                          tuple(info.shape[i] for i in range(info.rank)), int(info.numel),
                          int(info.data_begin), int(info.data_end))

    def tensors(self) -> List[TensorInfo]:
        """Every tensor, in file order."""
        return [self.tensor(i) for i in range(len(self))]

    def names(self) -> List[str]:
        """Names in file order (the fast path the benchmark times)."""
        get = lib().st_tensor_get
        h = self._h
        info = st_tensor_info()
        ref = byref(info)
        out = []
        for i in range(lib().st_tensor_count(h)):
            get(h, i, ref)
            out.append(ctypes.string_at(info.name, info.name_len).decode("utf-8"))
        return out

    def name_order(self) -> List[int]:
        out = []
        idx = c_size_t()
        for k in range(len(self)):
            _check(lib().st_tensor_name_order(self._h, k, byref(idx)))
            out.append(idx.value)
        return out

    def find(self, name) -> int:
        nb = name.encode("utf-8") if isinstance(name, str) else bytes(name)
        idx = c_size_t()
        _check(lib().st_tensor_find(self._h, nb, len(nb), byref(idx)))
        return idx.value

    def metadata(self) -> Dict[str, str]:
        """__metadata__ as a dict (empty when absent or null)."""
        out = {}
        for k, v in self.metadata_items():
            out[k.decode("utf-8")] = v.decode("utf-8")
        return out

    def metadata_items(self) -> List[Tuple[bytes, bytes]]:
        """(key, value) byte pairs in the library's key order."""
        items = []
        k, kl, v, vl = c_void_p(), c_size_t(), c_void_p(), c_size_t()
        for i in range(lib().st_metadata_count(self._h)):
            _check(lib().st_metadata_get(self._h, i, byref(k), byref(kl), byref(v), byref(vl)))
            items.append((ctypes.string_at(k, kl.value) if kl.value else b"",
                          ctypes.string_at(v, vl.value) if vl.value else b""))
        return items

    def metadata_find(self, key) -> bytes:
        kb = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        v, vl = c_void_p(), c_size_t()
        _check(lib().st_metadata_find(self._h, kb, len(kb), byref(v), byref(vl)))
        return ctypes.string_at(v, vl.value) if vl.value else b""

    def read(self, index: int) -> bytes:
        """The tensor's bytes through st_tensor_read (any backend)."""
        info = self.tensor(index)
        n = info.data_end - info.data_begin
        buf = ctypes.create_string_buffer(max(n, 1))
        err = st_error()
        _check(lib().st_tensor_read(self._h, index, buf, n, byref(err)), err)
        return buf.raw[:n]

    def view(self, index: int) -> bytes:
        """The tensor's bytes through the zero-copy pointer (mmap or memory)."""
        info = self.tensor(index)
        p = c_void_p()
        _check(lib().st_tensor_data(self._h, index, byref(p)))
        n = info.data_end - info.data_begin
        return ctypes.string_at(p, n) if n else b""


def _open_result(status, handle, err, keep) -> File:
    if status != 0:
        raise StError(status, err)
    return File(handle.value, keep)


def open_memory(data, opts: Optional[st_open_options] = None, **opt_fields) -> File:
    """st_open_memory over a bytes-like object (kept alive by the returned File)."""
    if opt_fields:
        opts = make_options(**opt_fields)
    buf = bytes(data)
    handle, err = c_void_p(), st_error()
    st = lib().st_open_memory(c_char_p(buf), len(buf), byref(opts) if opts else None,
                              byref(handle), byref(err))
    return _open_result(st, handle, err, buf)


def open_path(path, opts: Optional[st_open_options] = None, **opt_fields) -> File:
    """st_open on a path."""
    if opt_fields:
        opts = make_options(**opt_fields)
    handle, err = c_void_p(), st_error()
    st = lib().st_open(os.fsencode(path), byref(opts) if opts else None, byref(handle),
                       byref(err))
    return _open_result(st, handle, err, None)


def verdict(data: bytes, opts: Optional[st_open_options] = None) -> Tuple[int, Optional[int]]:
    """(status, offset) of st_open_memory on data; the handle is closed at once."""
    handle, err = c_void_p(), st_error()
    st = lib().st_open_memory(c_char_p(data), len(data), byref(opts) if opts else None,
                              byref(handle), byref(err))
    if st == 0:
        lib().st_close(handle)
        return 0, None
    return st, (None if err.offset == ST_NO_OFFSET else int(err.offset))


# --- Writing -----------------------------------------------------------------------------------

TensorSpec = Tuple[str, Sequence[int], bytes]  # (dtype name, shape, data)


class Writer:
    """An st_writer. tensors: {name: (dtype, shape, bytes)}; metadata: {str: str}."""

    def __init__(self, tensors: Mapping = (), metadata: Optional[Mapping] = None):
        self._h = c_void_p()
        err = st_error()
        _check(lib().st_writer_new(None, byref(self._h), byref(err)), err)
        self._keep = []
        for k, v in (metadata or {}).items():
            self.add_metadata(k, v)
        for name, (dtype, shape, data) in dict(tensors).items():
            self.add_tensor(name, dtype, shape, data)

    def close(self) -> None:
        if self._h:
            lib().st_writer_free(self._h)
            self._h = c_void_p()
        self._keep = []

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def add_metadata(self, key, value) -> None:
        kb = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        vb = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        err = st_error()
        _check(lib().st_writer_add_metadata(self._h, kb, len(kb), vb, len(vb), byref(err)), err)

    def add_tensor(self, name, dtype, shape, data: bytes) -> None:
        nb = name.encode("utf-8") if isinstance(name, str) else bytes(name)
        dnum = DTYPE_NUM[dtype] if isinstance(dtype, str) else int(dtype)
        shp = (c_uint64 * max(len(shape), 1))(*shape)
        data = bytes(data)
        self._keep.append(data)  # borrowed by the writer until the write ends
        err = st_error()
        _check(lib().st_writer_add_tensor(self._h, nb, len(nb), dnum, shp, len(shape),
                                          c_char_p(data), len(data), byref(err)), err)

    def size(self) -> int:
        n, err = c_uint64(), st_error()
        _check(lib().st_writer_size(self._h, byref(n), byref(err)), err)
        return n.value

    def to_bytes(self) -> bytes:
        n = self.size()
        buf = ctypes.create_string_buffer(max(n, 1))
        written, err = c_size_t(), st_error()
        _check(lib().st_writer_write_memory(self._h, buf, n, byref(written), byref(err)), err)
        return buf.raw[:written.value]

    def write_path(self, path, flags: int = ST_WRITE_NO_FSYNC) -> None:
        err = st_error()
        _check(lib().st_writer_write_path(self._h, os.fsencode(path), flags, byref(err)), err)


def write_memory(tensors: Mapping, metadata: Optional[Mapping] = None) -> bytes:
    """The file our writer produces for {name: (dtype, shape, bytes)} and metadata."""
    with Writer(tensors, metadata) as w:
        return w.to_bytes()


def write_path(path, tensors: Mapping, metadata: Optional[Mapping] = None,
               flags: int = ST_WRITE_NO_FSYNC) -> None:
    """Writes the file at path with st_writer_write_path."""
    with Writer(tensors, metadata) as w:
        w.write_path(path, flags)


def read_all(f: File) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...], bytes]], Dict[str, str]]:
    """{name: (dtype, shape, bytes)} and metadata of an open file."""
    out = {}
    for t in f.tensors():
        out[t.name] = (t.dtype, t.shape, f.read(t.index))
    return out, f.metadata()


# --- The reference package (safetensors==0.8.0), through its raw-bytes API --------------------

# Format dtype -> the reference's TensorSpec dtype string. F6_E2M3 and F6_E3M2 are missing:
# the reference reads them but its writer API has no way to declare them.
REF_SPEC_DTYPE = {
    "BOOL": "bool", "F4": "float4_e2m1fn_x2", "U8": "uint8", "I8": "int8",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "I16": "int16",
    "U16": "uint16", "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32",
    "F32": "float32", "C64": "complex64", "F64": "float64", "I64": "int64", "U64": "uint64",
}


def ref_can_write(dtype: str, shape: Sequence[int]) -> bool:
    """Whether the reference's serialize() can declare this tensor (F4 goes through the packed
    float4_e2m1fn_x2 shape, whose last dimension the reference doubles)."""
    if dtype not in REF_SPEC_DTYPE:
        return False
    if dtype == "F4":
        return len(shape) >= 1 and shape[-1] % 2 == 0
    return True


def ref_serialize(tensors: Mapping, metadata: Optional[Mapping] = None) -> bytes:
    """The reference writer's bytes for {name: (dtype, shape, bytes)}: safetensors.serialize
    with TensorSpecs pointing at ctypes copies of the data."""
    import safetensors
    keep = []
    specs = {}
    for name, (dtype, shape, data) in dict(tensors).items():
        if not ref_can_write(dtype, shape):
            raise ValueError(f"the reference cannot write {dtype} {list(shape)}")
        shape = list(shape)
        if dtype == "F4":
            shape[-1] //= 2
        buf = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
        keep.append(buf)
        specs[name] = safetensors.TensorSpec(dtype=REF_SPEC_DTYPE[dtype], shape=shape,
                                             data_ptr=ctypes.addressof(buf), data_len=len(data))
    out = safetensors.serialize(specs, dict(metadata) if metadata is not None else None)
    del keep
    return bytes(out)


def ref_deserialize(data: bytes) -> Dict[str, Tuple[str, Tuple[int, ...], bytes]]:
    """{name: (dtype, shape, bytes)} as safetensors.deserialize reads them."""
    import safetensors
    return {n: (d["dtype"], tuple(d["shape"]), bytes(d["data"]))
            for n, d in safetensors.deserialize(data)}
