"""Generic tensor I/O on the C library: tensors from a file (zero-copy
views, owned reads through the copy engine), tensors into a writer, and the
checks every save path shares. The drop-in facade (:mod:`.torch`), the
torch.save/torch.load hook (:mod:`._hook`) and :mod:`.sharded` are built on
it; nothing here is public API.

Views follow the C core's view policy (TensorInfo.torch_dtype, .torch_shape,
.flags; see :mod:`._dtypes`): a tensor whose bytes are not aligned to its
torch element size (VIEW_COPY) is read into an owned, aligned tensor even
where a zero-copy view was asked for.

Example::

    >>> tensors, metadata = read_tensors("m.safetensors")
    >>> write_tensors(tensors, "copy.safetensors", metadata)
"""

from __future__ import annotations

import io
import mmap
import os
import re
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from . import _C, _dtypes
from .errors import (
    SafetensorTypeError,
    SafetensorValueError,
    make_error,
)

__all__ = [
    "SafetensorUnsupportedTensorError", "parse_device", "is_cpu", "open_file",
    "view_tensor", "view_all", "read_owned", "metadata_of", "pin_available",
    "check_tensor_kind", "check_tensor_dict", "check_metadata", "host_tensors", "make_writer",
    "write_tensors", "read_tensors",
]

Info = Any  # _C.TensorInfo

class SafetensorUnsupportedTensorError(SafetensorTypeError, ValueError):
    """A sparse, quantized, nested or meta tensor (no dense bytes to store).

    Also a ValueError, which is what the reference raises for sparse ones."""


def parse_device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise make_error(SafetensorTypeError,
                         f"device must be a str, an int or a torch.device, "
                         f"not {type(device).__name__}")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise make_error(SafetensorValueError,
                         f"device {device} is invalid") from None


def is_cpu(device: torch.device) -> bool:
    return device.type == "cpu"


def open_file(source: Any, backend: str = "mmap",
          writable: bool = True) -> "_C.File":
    if isinstance(source, (str, os.PathLike)):
        return _C.File(source, backend=backend, writable=writable)
    raise make_error(SafetensorTypeError,
                     f"filename must be a str or os.PathLike, not "
                     f"{type(source).__name__}")


# --------------------------------------------------------------------------
# Tensors from a file
# --------------------------------------------------------------------------

def torch_dtype_of(info: Info) -> torch.dtype:
    """The torch dtype a file tensor loads as (the C core's torch name)."""
    dt = _dtypes.TORCH_BY_NAME.get(info.torch_dtype)
    if dt is None:
        raise make_error(SafetensorTypeError,
                         f"dtype {info.dtype} has no counterpart in torch "
                         f"{torch.__version__}", tensor_name=info.name)
    return dt


def view_tensor(f: "_C.File", i: int, info: Info) -> torch.Tensor:
    """A zero-copy tensor over the mapping (keeps the mapping alive); an
    owned, aligned copy when the bytes are not aligned (VIEW_COPY)."""
    n = info.end - info.begin
    if n == 0 or info.flags & _C.VIEW_COPY:
        return read_owned(f, [(i, info)])[0]
    return torch.frombuffer(f.buffer(i), dtype=torch_dtype_of(info)).view(
        info.torch_shape)


def view_all(f: "_C.File", infos: List[Info]) -> List[torch.Tensor]:
    """view_tensor for every tensor of f: the same tensors (each with its
    own storage over its bytes of the mapping), built with as few torch calls
    per tensor as possible, since with many small tensors those calls are
    the whole cost."""
    by_name = _dtypes.TORCH_BY_NAME
    frombuffer = torch.frombuffer
    buffer = f.buffer
    out = []
    append = out.append
    for i, info in enumerate(infos):
        tdtype = by_name.get(info.torch_dtype)
        if tdtype is None or info.flags or info.end == info.begin:
            append(view_tensor(f, i, info))
            continue
        t = frombuffer(buffer(i), dtype=tdtype)
        shape = info.shape
        append(t if len(shape) == 1 else t.view(shape))
    return out


def empty_for(info: Info, pin: bool = False) -> torch.Tensor:
    return torch.empty(info.torch_shape, dtype=torch_dtype_of(info),
                       pin_memory=pin)


#: Owned loads put tensors smaller than this in one shared allocation.
_ARENA_MAX_TENSOR = 1 << 20
#: ... when there are at least this many of them.
_ARENA_MIN_COUNT = 16


def read_owned(f: "_C.File", items: List[Tuple[int, Info]],
               pin: bool = False) -> List[torch.Tensor]:
    """Owned tensors, all read by one parallel plan of the copy engine."""
    if not pin and len(items) >= _ARENA_MIN_COUNT:
        return read_owned_arena(f, items)
    out = [empty_for(info, pin) for _, info in items]
    plan = [(i, t.data_ptr(), info.end - info.begin)
            for (i, info), t in zip(items, out) if info.end > info.begin]
    if len(plan) == 1 and plan[0][2] < (8 << 20):
        f._read_into(*plan[0])  # not worth a thread pool
    elif plan:
        # No EXEC_HUGEPAGES on the fresh destinations: with the common
        # transparent_hugepage/defrag=madvise, faulting advised memory in
        # stalls in direct compaction once memory is fragmented (a 503 MB
        # load: 1.7-3.3 s advised against 0.25-0.49 s plain, alternating
        # fresh processes; benchmarks/RESULTS.md, cpu-notes).
        f._read_many(plan)
    return out


def read_owned_arena(f: "_C.File",
                     items: List[Tuple[int, Info]]) -> List[torch.Tensor]:
    """read_owned for many tensors: the small ones (under _ARENA_MAX_TENSOR)
    are laid out in one private anonymous mapping in file order, so that
    neighbours in the file are neighbours in memory and the engine reads
    each run of them as one range. Each tensor still has its own storage of
    exactly its bytes (torch.frombuffer), aligned to its element size; the
    mapping is freed with the last of them. A torch.empty per tensor costs
    ~2.3 us, a frombuffer ~0.9 us: with 10,000 small tensors that is most of
    a load."""
    by_name = _dtypes.TORCH_BY_NAME
    out: List[Optional[torch.Tensor]] = [None] * len(items)
    plan = []
    small = []
    for slot, (i, info) in enumerate(items):
        n = info.end - info.begin
        if (0 < n < _ARENA_MAX_TENSOR and info.dtype not in _dtypes.RESHAPED
                and by_name.get(info.torch_dtype) is not None):
            small.append((slot, i, info))
            continue
        t = empty_for(info)
        out[slot] = t
        if n:
            plan.append((i, t.data_ptr(), n))
    if small:
        offsets = []
        cursor = 0
        prev_end = -1
        for _, _, info in small:
            itemsize = by_name[info.torch_dtype].itemsize
            # A new run of neighbours, or a tensor that would land misaligned
            # in this one, starts at an aligned place.
            if info.begin != prev_end or cursor % itemsize:
                cursor = (cursor + 63) & ~63
            offsets.append(cursor)
            cursor += info.end - info.begin
            prev_end = info.end
        arena = mmap.mmap(-1, cursor, flags=mmap.MAP_PRIVATE)
        frombuffer = torch.frombuffer
        base = frombuffer(arena, dtype=torch.uint8, count=1).data_ptr()
        for (slot, i, info), off in zip(small, offsets):
            tdtype = by_name[info.torch_dtype]
            n = info.end - info.begin
            t = frombuffer(arena, dtype=tdtype, count=n // tdtype.itemsize,
                           offset=off)
            out[slot] = t if len(info.shape) == 1 else t.view(info.shape)
            plan.append((i, base + off, n))
        del arena  # the tensors hold it
    if plan:
        f._read_many(plan)  # no huge pages: see read_owned
    return out  # type: ignore[return-value]


def pin_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - broken CUDA setups
        return False


def to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """t moved to dev. A CUDA device on a machine without one fails in the
    reference's words: it pins the host copy first, and torch refuses that
    with "pin_memory=True requires a CUDA or other accelerator backend..."
    (RuntimeError), so we ask torch for the same pinning."""
    if dev.type == "cuda" and not pin_available():
        torch.empty(0, pin_memory=True)
    return t.to(dev)


_EMPTY_METADATA = re.compile(rb'"__metadata__"\s*:\s*\{\s*\}')


def metadata_of(f: "_C.File") -> Optional[Dict[str, str]]:
    md = f.metadata()
    if md is None and _EMPTY_METADATA.search(f.header()):
        return {}  # the reference tells an empty object from none
    return md


def check_tensor_kind(name: str, t: torch.Tensor) -> None:
    """Refuses tensors with no dense bytes, naming the tensor."""
    what = None
    if t.is_nested:
        what = "a nested tensor"
    elif t.layout != torch.strided:
        what = f"a sparse tensor (layout {t.layout})"
    elif t.is_quantized:
        what = f"a quantized tensor ({t.dtype})"
    elif t.device.type == "meta":
        what = "a meta tensor (it has no data)"
    if what is not None:
        raise make_error(
            SafetensorUnsupportedTensorError,
            f"cannot save `{name}`: {what} has no dense bytes to store; "
            f"convert it first (e.g. .to_dense(), .dequantize())",
            tensor_name=name)
    if _dtypes.st_name(t.dtype) is None:
        raise make_error(SafetensorTypeError,
                         f"cannot save `{name}`: dtype {t.dtype} has no "
                         f"safetensors counterpart", tensor_name=name)


#: What check_tensor_dict raises, per flavour: (class, message) for a
#: non-dict, a non-str name, a non-tensor value. "reference" is what the
#: reference's save_file/save raise, for the drop-in.
_DICT_ERRORS = {
    "ours": (
        (SafetensorTypeError, lambda x: f"tensors must be a dict, not "
                                        f"{type(x).__name__}"),
        (SafetensorTypeError, lambda k: f"tensor names must be str, not "
                                        f"{type(k).__name__}"),
        (SafetensorTypeError, lambda k, v: f"`{k}` is a {type(v).__name__}, "
                                           f"not a tensor"),
    ),
    "reference": (
        (SafetensorValueError, lambda x: f"Expected a dict of [str, "
                                         f"torch.Tensor] but received "
                                         f"{type(x)}"),
        (SafetensorTypeError, lambda k: f"argument 'tensor_dict': "
                                        f"'{type(k).__name__}' object is not "
                                        f"an instance of 'str'"),
        (SafetensorValueError, lambda k, v: f"Key `{k}` is invalid, expected "
                                            f"torch.Tensor but received "
                                            f"{type(v)}"),
    ),
}


def check_tensor_dict(tensors: Any, flavour: str = "ours",
                      kinds: bool = True) -> None:
    """A dict of str -> tensors (with kinds: that have dense bytes), or an
    error naming what is not, with the messages of flavour (_DICT_ERRORS)."""
    not_dict, not_str, not_tensor = _DICT_ERRORS[flavour]
    if not isinstance(tensors, dict):
        raise make_error(not_dict[0], not_dict[1](tensors))
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise make_error(not_str[0], not_str[1](k))
        if not isinstance(v, torch.Tensor):
            raise make_error(not_tensor[0], not_tensor[1](k, v),
                             tensor_name=k)
    if kinds:
        for k, v in tensors.items():
            check_tensor_kind(k, v)


def check_metadata(metadata: Any) -> Optional[Dict[str, str]]:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise make_error(SafetensorTypeError,
                         f"argument 'metadata': '{type(metadata).__name__}' "
                         f"object is not a dict")
    for k, v in metadata.items():
        for x in (k, v):
            if not isinstance(x, str):
                raise make_error(SafetensorTypeError,
                                 f"argument 'metadata': "
                                 f"'{type(x).__name__}' object is not an "
                                 f"instance of 'str'")
    return metadata


def host_tensors(tensors: Dict[str, torch.Tensor],
                  contiguous: bool) -> Dict[str, torch.Tensor]:
    """CPU, contiguous tensors; device tensors come over pinned memory."""
    out: Dict[str, torch.Tensor] = {}
    sync = False
    pin = None
    for k, v in tensors.items():
        if v.device.type != "cpu":
            if pin is None:
                pin = pin_available()
            host = None
            if pin:
                try:
                    host = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                except RuntimeError:  # no pinned memory for this device
                    host = None
            if host is None:
                v = v.to("cpu")
            else:
                host.copy_(v, non_blocking=True)
                sync = True
                v = host
        if contiguous and not v.is_contiguous():
            v = v.contiguous()
        out[k] = v
    if sync:
        torch.cuda.synchronize()
    return out


def make_writer(tensors: Dict[str, torch.Tensor],
                metadata: Optional[Dict[str, str]]) -> "_C.Writer":
    w = _C.Writer()
    if metadata is not None:
        w.declare_metadata()  # metadata={} writes an empty object, as the reference
        for k in sorted(metadata):
            w.add_metadata(k, metadata[k])
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        w.add_tensor(k, _dtypes.FROM_TORCH[v.dtype],
                     _dtypes.file_shape(v.dtype, v.shape),
                     v.data_ptr(), nbytes, owner=v)
    return w


# --------------------------------------------------------------------------
# Whole files
# --------------------------------------------------------------------------

def write_tensors(tensors: Dict[str, torch.Tensor], dest: Any,
                  metadata: Optional[Dict[str, str]] = None,
                  fsync: bool = True, direct: bool = False) -> None:
    """Writes tensors (any layout-compatible CPU or device tensors) to dest.

    Non-contiguous tensors are written contiguously, device tensors are
    copied to the host (through pinned memory when CUDA is there); sparse,
    quantized, nested and meta tensors raise SafetensorTypeError naming the
    tensor. Tensors sharing memory are written as separate copies (callers
    apply the aliasing policy, _alias, before). dest: a
    path (durable, atomic write), or a binary file object (written at its
    position). Nothing is created when a check fails. direct (paths only):
    write with O_DIRECT, as save_file(direct=True).
    """
    check_tensor_dict(tensors)
    metadata = check_metadata(metadata)
    w = make_writer(host_tensors(tensors, True), metadata)
    if isinstance(dest, (str, os.PathLike)):
        w.write_path(os.fspath(dest), fsync=fsync, direct=direct)
        return
    fd = None
    try:
        fd = dest.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None
    if fd is None:
        dest.write(w.to_bytes())
        return
    pos = dest.tell()
    dest.flush()
    os.lseek(fd, pos, os.SEEK_SET)
    w.write_fd(fd)
    end = os.lseek(fd, 0, os.SEEK_CUR)
    dest.seek(end)
    if fsync:
        os.fsync(fd)


def read_tensors(source: Any,
                 device: Union[str, int, torch.device] = "cpu",
                 mmap: bool = True
                 ) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, str]]]:
    """Reads every tensor and the metadata of a safetensors source.

    source: a path, a binary file object, or bytes-like. mmap=True (paths and
    real files): CPU tensors are zero-copy writable views of a private
    mapping, released with the last tensor; mmap=False (and bytes, and file
    objects without a descriptor): tensors own their memory. Tensors are
    moved to device afterwards when it is not the CPU.
    """
    dev = parse_device(device)
    f = None
    if isinstance(source, (str, os.PathLike)):
        f = _C.File(source, backend="mmap" if mmap else "pread",
                    writable=True)
        owned = not mmap
    elif isinstance(source, (bytes, bytearray, memoryview)):
        f = _C.File(source)
        owned = True
    else:
        fd = None
        try:
            if source.tell() == 0:
                fd = source.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            fd = None
        if fd is not None:
            f = _C.File(fd, backend="mmap" if mmap else "pread",
                        writable=True)
            owned = not mmap
        else:
            f = _C.File(source.read())
            owned = True
    try:
        infos = f.tensors()
        if owned:
            pin = not is_cpu(dev) and pin_available()
            ts = read_owned(f, list(enumerate(infos)), pin=pin)
        else:
            ts = view_all(f, infos)
        if not is_cpu(dev):
            ts = [to_device(t, dev) for t in ts]
        md = metadata_of(f)
        return {info.name: t for info, t in zip(infos, ts)}, md
    finally:
        f.close()

