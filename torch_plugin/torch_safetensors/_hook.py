"""``torch.save(obj, f, format="safetensors")`` and a ``torch.load`` that reads safetensors.

Installing
    ``import torch_safetensors`` calls :func:`install`; torch also imports the package while it
    starts, through its ``torch.backends`` entry-point autoload (disable with
    ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``), so installing the distribution is enough.
    :func:`uninstall` puts back exactly the functions that were there before. Both are idempotent.
    The wrappers are placed on ``torch.save``/``torch.load`` and on ``torch.serialization.save``/
    ``torch.serialization.load``; each chains to whatever was installed there before (another
    wrapper, or torch's own function), never straight to torch's original. If something else
    wrapped ours after us, :func:`uninstall` cannot unlink us from the middle of that chain: our
    wrapper then stays in place but passes every call through untouched.

What torch 2.13 does natively, and how the two interact
    torch 2.13's ``torch.load`` has a branch of its own for safetensors: when ``f`` is a path
    whose name ends in ``.safetensors`` it calls the reference ``safetensors.torch.load_file``
    (``ImportError`` -> ``RuntimeError`` when that package is missing), returning a flat
    ``dict[str, Tensor]``; it accepts ``map_location`` only as a str or ``torch.device`` and
    raises ``RuntimeError`` for a dict or a callable. File objects and files with another name
    are never recognised, the ``mmap`` argument is ignored, nested objects cannot be rebuilt, and
    ``torch.save`` cannot write safetensors at all. ``torch.distributed.checkpoint``'s
    ``HuggingFaceStorageReader/Writer`` use the reference package directly and are unaffected.

    With the hook installed, our ``torch.load`` runs first and takes every file that *is*
    safetensors (recognised by its bytes, whatever its name, before torch's zip test) and every
    path ending in ``.safetensors`` (so a corrupt one raises :class:`SafetensorError` here
    instead of anything else). torch's native branch is therefore never reached for those. It
    does at least as much: paths and seekable binary file objects, all four ``map_location``
    forms, ``mmap``, the structure record below, devices restored, and no dependency on the
    reference package. Every other file goes to the previously installed ``torch.load`` with
    the arguments unchanged. ``weights_only`` and ``pickle_module`` are accepted and ignored for
    safetensors files: nothing is ever unpickled.

The structure record (what ``torch.save(format="safetensors")`` stores)
    Tensors are stored flat under dotted names that any safetensors reader can use:

    - a ``state_dict`` (a dict whose keys are all ``str`` and values all tensors) keeps its keys
      exactly; saved at the top level, the file's names are the ``state_dict``'s names;
    - nested containers join their keys with ``"."``; list and tuple elements use their index,
      ``int`` dict keys their decimal form: ``{"model": sd, "opt": {"state": {0: {...}}}}`` gives
      ``model.fc.weight`` and ``opt.state.0.exp_avg``;
    - a lone tensor is stored as ``tensor``.

    Other dict keys are escaped so that the names are unambiguous: ``%`` -> ``%25``, ``.`` ->
    ``%2E``, control characters -> ``%XX``, a ``str`` key that looks like a decimal integer gets
    its first character escaped (``"0"`` -> ``%30``, so it differs from the ``int`` key ``0``),
    and the empty key becomes ``%``. If the verbatim ``state_dict`` names would still collide
    (only possible through the renaming of a tensor named ``__metadata__``, which the format
    reserves, to ``%5F_metadata__``, or through an empty or NUL-containing key), every key of
    the file is escaped instead. Readers never parse
    names: the record lists them.

    ``__metadata__["torch_safetensors.structure"]`` (every key we add starts with the documented
    prefix ``torch_safetensors.``; a user's metadata may not use it) holds compact JSON::

        {"version": 1, "root": NODE}
        NODE: null | true | false | <int> | <float> | "<str>"           plain values
            | {"t": "float", "v": "inf" | "-inf" | "nan"}
            | {"t": "list" | "tuple", "items": [NODE, ...]}
            | {"t": "dict" | "odict", "items": [[KEY, NODE], ...], "meta": NODE?}
              KEY: "<str>" | <int>; "meta" is an OrderedDict state_dict's ``_metadata``
            | {"t": "size", "v": [<int>, ...]}  | {"t": "dtype", "v": "float32"}
            | {"t": "device", "v": "cuda:0"}
            | {"t": "tensor", "name": "<tensor name>", "device": "cuda:0"?, "obj": <int>?,
               "rg": true?, "param": true?, "shape": []?}

    ``obj`` numbers the Python tensor objects that occur more than once (the same object comes
    back as one object), ``device`` is recorded when it is not ``cpu``, ``rg`` is
    ``requires_grad``, ``param`` marks an ``nn.Parameter``, and ``"shape": []`` marks a 0-dim
    ``float4_e2m1fn_x2`` tensor (stored with shape ``[2]`` in F4 terms, since F4 halves the last
    dimension and a scalar has none). Plain ``__metadata__`` of the
    caller is stored beside it, plus ``{"format": "pt"}`` unless the caller set ``format``, so
    Hugging Face readers accept the file. Files without a record (any other safetensors file)
    load as a flat ``dict[str, Tensor]``.

Shared storage
    Exact aliases (tied weights: same storage, storage offset, shape, stride and dtype) are stored
    once, under the first name met in traversal order, and come back as tensors sharing one
    storage. Any other tensors whose bytes overlap (a slice or a transposed view of another
    tensor) are stored as separate contiguous copies and come back independent; with
    ``strict=True`` they are refused instead. Views with disjoint bytes of one storage are stored
    separately in both modes.

Refusals (never pickle)
    Anything that would need pickle raises :class:`SafetensorTypeError` (a ``TypeError``) naming
    the path of the value (``obj['model']['x']``), before any file is created: arbitrary objects,
    functions, ``nn.Module``, dict subclasses other than ``OrderedDict``, namedtuples, tensor
    subclasses other than ``nn.Parameter``, numpy scalars, bytes, dict keys that are neither
    ``str`` nor ``int``, sparse, quantized, nested and meta tensors, and dtypes with no
    safetensors counterpart (``complex128``, ``complex32``, ...).

Loading
    By default (``mmap=None`` or ``True``) CPU tensors are zero-copy, writable views of a private
    copy-on-write mapping; the file is never modified and the mapping is released when the last
    tensor that views it dies. ``mmap=False`` gives owned memory. ``map_location`` works as in
    torch: ``None`` restores the recorded device, a str or ``torch.device`` moves everything
    there, a dict maps recorded location strings (``{"cuda:1": "cuda:0"}``), and a callable is
    called as ``fn(storage, location)`` with a CPU ``UntypedStorage`` and may return a storage
    (used as is) or ``None`` (default placement). F6 tensors (``F6_E2M3``, ``F6_E3M2``) have no
    torch dtype and come back as raw ``uint8`` bytes, packed as in the file, never unpacked.
"""

from __future__ import annotations

import collections
import json
import math
import os
import struct
import threading
from typing import Any, Callable

__all__ = ["install", "uninstall", "is_installed", "STRUCTURE_KEY", "KEY_PREFIX"]

KEY_PREFIX = "torch_safetensors."
STRUCTURE_KEY = KEY_PREFIX + "structure"
_STRUCTURE_VERSION = 1
_LONE_TENSOR_NAME = "tensor"
# FORMAT.md's limit on the header length; anything larger cannot be safetensors.
_MAX_HEADER = 100_000_000
_JSON_WS = b" \t\r\n"

# torch dtypes that have a safetensors counterpart (FORMAT.md's table); attributes that this
# torch lacks are skipped.
_SUPPORTED_DTYPE_NAMES = (
    "bool", "float4_e2m1fn_x2", "uint8", "int8", "float8_e5m2", "float8_e4m3fn",
    "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz", "int16", "uint16", "float16",
    "bfloat16", "int32", "uint32", "float32", "complex64", "float64", "int64", "uint64",
)

_lock = threading.Lock()
# (module, attribute) -> (previous function, our wrapper)
_installed: dict[tuple[Any, str], tuple[Callable[..., Any], Callable[..., Any]]] = {}
# wrappers that uninstall() could not unlink because something wrapped them later
_disabled: set[int] = set()


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

def _errors():
    from . import errors

    return errors


# Status numbers pinned in include/safetensors.h.
_ST_ERR_INVALID_ARGUMENT = 1
_ST_ERR_HEADER_DESERIALIZATION = 8
_ST_ERR_UNSUPPORTED = 20


def _type_error(msg: str) -> Exception:
    errs = _errors()
    return errs.make_error(errs.SafetensorTypeError, msg, _ST_ERR_UNSUPPORTED)


def _value_error(msg: str) -> Exception:
    errs = _errors()
    return errs.make_error(errs.SafetensorValueError, msg, _ST_ERR_INVALID_ARGUMENT)


def _format_error(msg: str) -> Exception:
    """A structure record that does not match its file: the header is not what it must be."""
    errs = _errors()
    return errs.make_error(errs.SafetensorError, msg, _ST_ERR_HEADER_DESERIALIZATION)


def _path_str(path: tuple) -> str:
    return "obj" + "".join(f"[{k!r}]" for k in path)


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------

def _is_int_like(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _escape_key(key: str | int) -> str:
    if isinstance(key, int):
        return str(key)
    if key == "":
        return "%"
    out = []
    for ch in key:
        if ch == "%" or ch == "." or ord(ch) < 0x20 or ch == "\x7f":
            out.append("%%%02X" % ord(ch))
        else:
            out.append(ch)
    s = "".join(out)
    if _is_int_like(key):
        s = "%%%02X" % ord(key[0]) + s[1:]
    return s


def _join(prefix: str, part: str) -> str:
    return part if not prefix else prefix + "." + part


# --------------------------------------------------------------------------------------------
# saving: flatten
# --------------------------------------------------------------------------------------------

class _Leaf:
    """One tensor occurrence met while flattening."""

    __slots__ = ("path", "tensor", "node", "natural", "escaped")

    def __init__(self, path, tensor, node, natural, escaped):
        self.path = path
        self.tensor = tensor
        self.node = node
        self.natural = natural
        self.escaped = escaped


def _is_state_dict(obj: dict) -> bool:
    import torch

    return len(obj) > 0 and all(
        type(k) is str and isinstance(v, torch.Tensor) for k, v in obj.items())


def _supported_dtypes():
    import torch

    return {getattr(torch, n) for n in _SUPPORTED_DTYPE_NAMES if hasattr(torch, n)}


class _Flattener:
    def __init__(self):
        import torch

        self.torch = torch
        self.leaves: list[_Leaf] = []
        self.supported = _supported_dtypes()
        self.seen_containers: set[int] = set()
        self.obj_count: dict[int, int] = {}

    def refuse(self, path, what):
        raise _type_error(
            f"torch.save(format='safetensors') cannot store {what} at {_path_str(path)}: "
            "it would need pickle; store tensors, dicts, lists, tuples, int, float, bool, str "
            "or None instead")

    def tensor(self, t, path, natural, escaped):
        torch = self.torch
        if getattr(t, "is_nested", False):
            raise _type_error(
                f"cannot store a nested tensor at {_path_str(path)}: safetensors stores dense "
                "tensors only; store t.unbind() instead")
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            self.refuse(path, f"a tensor subclass ({type(t).__module__}.{type(t).__qualname__})")
        if t.is_sparse or t.layout != torch.strided:
            raise _type_error(
                f"cannot store a {t.layout} tensor at {_path_str(path)}: safetensors stores "
                "dense (strided) tensors only; convert it with .to_dense()")
        if t.is_quantized:
            raise _type_error(
                f"cannot store a quantized tensor ({t.dtype}) at {_path_str(path)}: safetensors "
                "has no quantized dtypes; store t.int_repr() and the scales separately")
        if t.device.type == "meta":
            raise _type_error(
                f"cannot store a meta tensor at {_path_str(path)}: it has no data")
        if t.dtype not in self.supported:
            raise _type_error(
                f"cannot store dtype {t.dtype} at {_path_str(path)}: it has no safetensors "
                "counterpart")
        node: dict[str, Any] = {"t": "tensor", "name": None}
        if t.device.type != "cpu":
            node["device"] = str(t.device)
        if t.requires_grad:
            node["rg"] = True
        if type(t) is torch.nn.Parameter:
            node["param"] = True
        self.obj_count[id(t)] = self.obj_count.get(id(t), 0) + 1
        self.leaves.append(_Leaf(path, t, node, natural, escaped))
        return node

    def value(self, v, path, natural, escaped):
        torch = self.torch
        tv = type(v)
        if v is None or tv is bool or tv is str:
            if tv is str:
                _check_str(v, path)
            return v
        if tv is int:
            return v
        if tv is float:
            if math.isfinite(v):
                return v
            return {"t": "float", "v": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
        if isinstance(v, torch.Tensor):
            return self.tensor(v, path, natural, escaped)
        if tv in (dict, collections.OrderedDict):
            return self.mapping(v, path, natural, escaped)
        if tv is list or tv is tuple:
            self.enter(v, path)
            items = [self.value(x, path + (i,), _join(natural, str(i)), _join(escaped, str(i)))
                     for i, x in enumerate(v)]
            self.seen_containers.discard(id(v))
            return {"t": tv.__name__, "items": items}
        if tv is torch.Size:
            return {"t": "size", "v": [int(x) for x in v]}
        if tv is torch.dtype:
            return {"t": "dtype", "v": str(v).split(".", 1)[1]}
        if tv is torch.device:
            return {"t": "device", "v": str(v)}
        if isinstance(v, torch.nn.Module):
            self.refuse(path, f"an nn.Module ({tv.__qualname__}); save module.state_dict()")
        if callable(v):
            self.refuse(path, f"a callable ({tv.__qualname__} {getattr(v, '__qualname__', '')})")
        self.refuse(path, f"a value of type {tv.__module__}.{tv.__qualname__}")
        raise AssertionError  # unreachable

    def enter(self, c, path):
        if id(c) in self.seen_containers:
            self.refuse(path, "a container that contains itself")
        self.seen_containers.add(id(c))

    def mapping(self, d, path, natural, escaped):
        self.enter(d, path)
        verbatim = _is_state_dict(d)
        items = []
        for k, v in d.items():
            if type(k) is str:
                _check_str(k, path + (k,))
            elif type(k) is not int:
                raise _type_error(
                    f"cannot store a dict key of type {type(k).__qualname__} ({k!r}) at "
                    f"{_path_str(path)}: only str and int keys can be stored")
            nat = k if verbatim else _escape_key(k)
            items.append([k, self.value(v, path + (k,), _join(natural, nat),
                                        _join(escaped, _escape_key(k)))])
        self.seen_containers.discard(id(d))
        node: dict[str, Any] = {"t": "odict" if type(d) is collections.OrderedDict else "dict",
                                "items": items}
        meta = getattr(d, "_metadata", None)
        if meta is not None and type(d) is collections.OrderedDict:
            try:
                sub = _Flattener()
                enc = sub.value(meta, path + ("_metadata",), "", "")
                if not sub.leaves:
                    node["meta"] = enc
            except TypeError:
                pass  # a _metadata we cannot store is dropped, as state_dict consumers allow
        return node


def _check_str(s: str, path) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _type_error(
            f"cannot store the string {s!r} at {_path_str(path)}: it is not valid Unicode "
            "(lone surrogate)") from None


def _same_view(a, b) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
            and a.storage_offset() == b.storage_offset())


def _byte_range(t) -> tuple[int, int]:
    es = t.element_size()
    start = t.storage_offset() * es
    if t.numel() == 0:
        return start, start
    lo = hi = 0
    for size, stride in zip(t.shape, t.stride()):
        if stride >= 0:
            hi += (size - 1) * stride
        else:
            lo += (size - 1) * stride
    return start + lo * es, start + (hi + 1) * es


def _flatten(obj, strict: bool):
    """Returns (tensors: name -> tensor to write, structure JSON text, leaves)."""
    import torch

    fl = _Flattener()
    root = fl.value(obj, (), "", "")
    leaves = fl.leaves

    # Group leaves by storage: exact aliases share one name.
    owner: list[int] = list(range(len(leaves)))
    by_storage: dict[tuple, list[int]] = {}
    for i, lf in enumerate(leaves):
        t = lf.tensor
        if t.numel() == 0:
            continue
        key = (t.device.type, t.device.index, t.untyped_storage().data_ptr())
        by_storage.setdefault(key, []).append(i)
    for idxs in by_storage.values():
        if len(idxs) < 2:
            continue
        reps: list[int] = []
        for i in idxs:
            ti = leaves[i].tensor
            for r in reps:
                if _same_view(ti, leaves[r].tensor):
                    owner[i] = r
                    break
            else:
                reps.append(i)
        if strict and len(reps) > 1:
            ranges = sorted((_byte_range(leaves[r].tensor), r) for r in reps)
            for (a, ra), (b, rb) in zip(ranges, ranges[1:]):
                if b[0] < a[1]:
                    first, second = sorted((ra, rb))
                    raise _type_error(
                        f"{_path_str(leaves[second].path)} overlaps "
                        f"{_path_str(leaves[first].path)} in memory without being the same view "
                        "(strict=True refuses partial aliasing; pass strict=False to store "
                        "separate copies)")

    obj_ids: dict[int, int] = {}
    for lf in leaves:
        if fl.obj_count[id(lf.tensor)] > 1:
            lf.node["obj"] = obj_ids.setdefault(id(lf.tensor), len(obj_ids))

    def assign(attr: str) -> dict[str, Any] | None:
        names: dict[str, Any] = {}
        for i, lf in enumerate(leaves):
            if owner[i] != i:
                continue
            name = getattr(lf, attr)
            if not lf.path:
                name = _LONE_TENSOR_NAME
            elif not name:
                return None  # a verbatim empty key; escaping turns it into "%"
            if name == "__metadata__":
                name = "%5F_metadata__"
            if name in names or "\x00" in name:
                return None
            names[name] = i
        return names

    names = assign("natural")
    if names is None:
        names = assign("escaped")
        if names is None:  # escaping is injective, so only a bug gets here
            raise AssertionError("tensor names collide after escaping")
    name_of = {i: n for n, i in names.items()}
    tensors = {}
    for i, lf in enumerate(leaves):
        lf.node["name"] = name_of[owner[i]]
    for n, i in names.items():
        t = leaves[i].tensor.detach()
        if t.dim() == 0 and t.dtype == getattr(torch, "float4_e2m1fn_x2", None):
            # F4 halves the last dimension in the file; a 0-dim tensor has none to halve
            t = t.reshape(1)
            for lf in leaves:
                if lf.node["name"] == n:
                    lf.node["shape"] = []
        if type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        tensors[n] = t
    record = json.dumps({"version": _STRUCTURE_VERSION, "root": root},
                        separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return tensors, record


def _to_host(t):
    """Copy a device tensor to the host, through pinned memory where the device allows it."""
    import torch

    if t.device.type == "cpu":
        return t
    pin = t.device.type == "cuda" and torch.cuda.is_available()
    if pin:
        try:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        except RuntimeError:
            pin = False
    if not pin:
        return t.to("cpu")
    host.copy_(t, non_blocking=True)
    return host


def save_safetensors(obj: Any, f: Any, metadata: dict[str, str] | None = None,
                     strict: bool = False) -> None:
    """Write ``obj`` to ``f`` as safetensors with a structure record (see the module docs)."""
    import torch

    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _type_error(f"metadata must be a dict of str to str, not {type(metadata)}")
        for k, v in metadata.items():
            if type(k) is not str or type(v) is not str:
                raise _type_error(
                    f"metadata must map str to str; got {k!r}: {type(v).__qualname__}")
            if k.startswith(KEY_PREFIX):
                raise _value_error(
                    f"metadata key {k!r} uses the reserved prefix {KEY_PREFIX!r}")
    tensors, record = _flatten(obj, strict)
    md = {"format": "pt"}
    if metadata:
        md.update(metadata)
    md[STRUCTURE_KEY] = record
    host = {n: _to_host(t) for n, t in tensors.items()}
    if any(t.device.type == "cuda" for t in tensors.values()):
        torch.cuda.synchronize()
    from .torch import _write_tensors

    _write_tensors(host, f, md)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if n < 2 or n > _MAX_HEADER:
        return False
    # The file size is deliberately not checked: a truncated safetensors file is still ours to
    # report. Pickle and zip files start with bytes that make n far larger than the limit.
    body = head[8:8 + n].lstrip(_JSON_WS)
    if not body:
        # only whitespace seen in what we read: plausible only if the header is longer
        return len(head) - 8 < n
    return body[:1] == b"{"


def _sniff(f) -> bool:
    """True when ``f`` (path or file object) holds safetensors, by its bytes or its name."""
    if isinstance(f, (str, os.PathLike)):
        path = os.fspath(f)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path.endswith(".safetensors"):
            return True
        try:
            with open(path, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            return False  # the previous torch.load reports it
        return _looks_like_safetensors(head)
    if isinstance(f, (bytes, bytearray, memoryview)):
        return False
    read = getattr(f, "read", None)
    seek = getattr(f, "seek", None)
    tell = getattr(f, "tell", None)
    if read is None or seek is None or tell is None:
        return False
    try:
        if hasattr(f, "seekable") and not f.seekable():
            return False
        pos = tell()
    except (OSError, ValueError):
        return False
    try:
        head = read(4096)
        if not isinstance(head, (bytes, bytearray)):
            return False
        return _looks_like_safetensors(bytes(head))
    finally:
        seek(pos)


def _recorded_device(v):
    """The torch.device a structure record names; a bad one is a format error."""
    import torch

    if not isinstance(v, str):
        raise _format_error(f"structure record: bad device {v!r}")
    try:
        return torch.device(v)
    except (RuntimeError, ValueError):
        raise _format_error(f"structure record: bad device {v!r}") from None


def _device_for(location: str, map_location):
    import torch

    if map_location is None:
        return location
    if isinstance(map_location, (str, bytes)):
        return map_location.decode() if isinstance(map_location, bytes) else map_location
    if isinstance(map_location, torch.device):
        return str(map_location)
    if isinstance(map_location, dict):
        return map_location.get(location, location)
    raise AssertionError


def _place(t, location: str, map_location):
    """Move one loaded CPU tensor where torch would put it."""
    import torch

    if map_location is not None and callable(map_location) and not isinstance(
            map_location, (dict, str, bytes, torch.device)):
        res = map_location(t.untyped_storage(), location)
        if res is None:
            dev = location
        else:
            if isinstance(res, torch.storage.TypedStorage):
                res = res.untyped_storage
            if not isinstance(res, torch.UntypedStorage):
                raise TypeError(
                    f"map_location returned {type(res).__qualname__}, expected a storage or None")
            out = torch.empty((0,), dtype=t.dtype, device=res.device)
            return out.set_(res, t.storage_offset(), t.shape, t.stride())
    else:
        dev = _device_for(location, map_location)
    dev = torch.device(dev)
    if dev.type == "cpu":
        return t
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is "
            "False. If you are running on a CPU-only machine, please use torch.load with "
            "map_location=torch.device('cpu') to map your storages to the CPU.")
    return t.to(dev)


def _alias(base):
    import torch

    return torch.empty((0,), dtype=base.dtype, device=base.device).set_(
        base.untyped_storage(), base.storage_offset(), base.shape, base.stride())


class _Rebuilder:
    def __init__(self, tensors, map_location):
        self.tensors = tensors
        self.map_location = map_location
        self.placed: dict[str, Any] = {}
        self.used: set[str] = set()
        self.objs: dict[int, Any] = {}

    def node(self, n, depth=0):
        import torch

        if depth > 10_000:
            raise _format_error("structure record nests too deeply")
        if n is None or isinstance(n, (bool, int, float, str)):
            return n
        if isinstance(n, list):
            raise _format_error("structure record: unexpected JSON array")
        if not isinstance(n, dict):
            raise _format_error("structure record: unexpected value")
        t = n.get("t")
        if t == "float":
            v = n.get("v")
            if v not in ("inf", "-inf", "nan"):
                raise _format_error(f"structure record: bad float {v!r}")
            return float(v)
        if t in ("list", "tuple"):
            items = n.get("items")
            if not isinstance(items, list):
                raise _format_error("structure record: list without items")
            vals = [self.node(x, depth + 1) for x in items]
            return vals if t == "list" else tuple(vals)
        if t in ("dict", "odict"):
            items = n.get("items")
            if not isinstance(items, list):
                raise _format_error("structure record: dict without items")
            d = {} if t == "dict" else collections.OrderedDict()
            for it in items:
                if (not isinstance(it, list) or len(it) != 2
                        or type(it[0]) not in (str, int)):
                    raise _format_error("structure record: bad dict item")
                d[it[0]] = self.node(it[1], depth + 1)
            if t == "odict" and "meta" in n:
                d._metadata = self.node(n["meta"], depth + 1)
            return d
        if t == "size":
            v = n.get("v")
            if not isinstance(v, list) or not all(type(x) is int for x in v):
                raise _format_error("structure record: bad size")
            return torch.Size(v)
        if t == "dtype":
            v = getattr(torch, str(n.get("v")), None)
            if not isinstance(v, torch.dtype):
                raise _format_error(f"structure record: unknown dtype {n.get('v')!r}")
            return v
        if t == "device":
            return _recorded_device(n.get("v"))
        if t == "tensor":
            return self.tensor(n)
        raise _format_error(f"structure record: unknown node type {t!r}")

    def tensor(self, n):
        import torch

        name = n.get("name")
        obj = n.get("obj")
        if obj is not None and obj in self.objs:
            return self.objs[obj]
        if not isinstance(name, str) or name not in self.tensors:
            raise _format_error(
                f"structure record names tensor {name!r}, which is not in the file")
        location = n.get("device", "cpu")
        _recorded_device(location)  # a device string torch cannot parse is a bad file
        if name in self.placed:
            out = _alias(self.placed[name])
        else:
            out = _place(self.tensors[name], location, self.map_location)
            self.placed[name] = out
        if n.get("shape") == [] and out.dim() == 1 and out.numel() == 1:
            out = out.reshape(())
        if n.get("param"):
            out = torch.nn.Parameter(out, requires_grad=bool(n.get("rg")))
        elif n.get("rg"):
            if out.is_floating_point() or out.is_complex():
                out.requires_grad_(True)
        if obj is not None:
            self.objs[obj] = out
        return out


def load_safetensors(f: Any, map_location=None, mmap: bool | None = None) -> Any:
    """Read safetensors from ``f`` and rebuild the saved object (see the module docs)."""
    from .torch import _read_tensors

    tensors, metadata = _read_tensors(f, device="cpu",
                                      mmap=mmap is None or bool(mmap))
    record = (metadata or {}).get(STRUCTURE_KEY)
    if record is None:
        rb = _Rebuilder(tensors, map_location)
        return {name: rb.tensor({"name": name}) for name in tensors}
    try:
        doc = json.loads(record)
    except (ValueError, RecursionError) as e:
        raise _format_error(f"structure record is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != _STRUCTURE_VERSION or "root" not in doc:
        raise _format_error(
            f"structure record has an unsupported version (this reader knows version "
            f"{_STRUCTURE_VERSION})")
    try:
        return _Rebuilder(tensors, map_location).node(doc["root"])
    except RecursionError:
        raise _format_error("structure record nests too deeply") from None


# --------------------------------------------------------------------------------------------
# the wrappers
# --------------------------------------------------------------------------------------------

_LOAD_DOC = """torch.load, extended by torch_safetensors to read safetensors files.

    A file that is safetensors (recognised by its first bytes, whatever its name) or a path ending
    in ``.safetensors`` is read by torch_safetensors and never unpickled: ``map_location`` (str,
    torch.device, dict or callable) and ``mmap`` (default zero-copy; ``False`` for owned memory)
    are honoured, ``weights_only`` and ``pickle_module`` are ignored. Every other file goes to
    the previously installed torch.load with the arguments unchanged.

    Example::

        torch.save({"w": torch.ones(2)}, "ckpt.safetensors", format="safetensors")
        obj = torch.load("ckpt.safetensors", map_location="cpu")
    """

_SAVE_DOC = """torch.save, extended by torch_safetensors with ``format="safetensors"``.

    ``torch.save(obj, f, format="safetensors", metadata=None, strict=False)`` writes ``obj`` (a
    tensor, or nested dicts/lists/tuples of tensors and plain values) as safetensors with a
    structure record, never pickling; anything else raises a TypeError naming its path. Without
    ``format`` (or with ``format="pickle"``) the previously installed torch.save runs unchanged.

    Example::

        torch.save(model.state_dict(), "model.safetensors", format="safetensors")
    """

_LOAD_KWARGS = ("map_location", "pickle_module")


def _make_load(prev):
    def load(f, *args, **kwargs):
        if id(load) in _disabled or not _sniff(f):
            return prev(f, *args, **kwargs)
        if len(args) > len(_LOAD_KWARGS):
            raise TypeError(f"load() takes at most {len(_LOAD_KWARGS) + 1} positional arguments")
        bound = dict(zip(_LOAD_KWARGS, args))
        for k in bound:
            if k in kwargs:
                raise TypeError(f"load() got multiple values for argument {k!r}")
        bound.update(kwargs)
        bound.pop("pickle_module", None)
        bound.pop("weights_only", None)
        map_location = bound.pop("map_location", None)
        mmap = bound.pop("mmap", None)
        # the remaining pickle_load_args (encoding=...) mean nothing without pickle
        bound.pop("encoding", None)
        bound.pop("errors", None)
        if bound:
            raise TypeError(
                f"torch.load of a safetensors file got unexpected arguments {sorted(bound)}")
        return load_safetensors(f, map_location=map_location, mmap=mmap)

    load.__doc__ = _LOAD_DOC
    load.__qualname__ = load.__name__ = "load"
    return load


def _make_save(prev):
    def save(obj, f, *args, format: str | None = None, metadata: dict[str, str] | None = None,
             strict: bool = False, **kwargs):
        if id(save) in _disabled:
            if format is not None:
                kwargs["format"] = format
            return prev(obj, f, *args, **kwargs)
        if format is None or format == "pickle":
            if metadata is not None or strict:
                raise TypeError("metadata= and strict= need format='safetensors'")
            return prev(obj, f, *args, **kwargs)
        if format != "safetensors":
            raise _value_error(f"unknown format {format!r}: use 'safetensors' or 'pickle'")
        if args or kwargs:
            raise TypeError(
                "torch.save(format='safetensors') takes no pickle arguments; got "
                f"{len(args)} positional and {sorted(kwargs)}")
        save_safetensors(obj, f, metadata=metadata, strict=strict)

    save.__doc__ = _SAVE_DOC
    save.__qualname__ = save.__name__ = "save"
    return save


def _targets():
    import torch
    import torch.serialization

    return [(torch, "load", _make_load), (torch.serialization, "load", _make_load),
            (torch, "save", _make_save), (torch.serialization, "save", _make_save)]


def install() -> None:
    """Install the torch.save/torch.load hook (idempotent). ``import torch_safetensors`` calls it.

    Example::

        import torch_safetensors
        torch_safetensors.uninstall(); torch_safetensors.install()
    """
    with _lock:
        if _installed:
            return
        for mod, attr, make in _targets():
            prev = getattr(mod, attr)
            wrapper = make(prev)
            wrapper.__module__ = __name__
            _installed[(mod, attr)] = (prev, wrapper)
            setattr(mod, attr, wrapper)


def uninstall() -> None:
    """Reverse :func:`install`: put back the functions that were installed before it."""
    with _lock:
        for (mod, attr), (prev, wrapper) in list(_installed.items()):
            if getattr(mod, attr) is wrapper:
                setattr(mod, attr, prev)
            else:
                _disabled.add(id(wrapper))
                _keep_alive.append(wrapper)
        _installed.clear()


# disabled wrappers stay referenced so that their id() is never reused by a new wrapper
_keep_alive: list[Callable[..., Any]] = []


def is_installed() -> bool:
    """True while the hook installed by :func:`install` is active."""
    return bool(_installed)
