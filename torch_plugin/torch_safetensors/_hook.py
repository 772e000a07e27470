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

The structure record and shared storage
    ``torch.save`` stores the tensors flat under dotted names and one ``__metadata__`` entry,
    ``torch_safetensors.structure``, that lets ``torch.load`` rebuild the object: docs/RECORD.md
    specifies it (names, the versioned grammar, which records are accepted and which refused)
    and :mod:`torch_safetensors._record` implements it. Tensors that share memory follow the
    aliasing policy (``policy=``, default ``"tie"``: exact aliases such as tied weights are stored
    once and come back sharing storage, other overlapping views are stored as copies, refused
    with ``strict=True``; see :mod:`torch_safetensors._alias`). Files without a record load as a
    flat ``dict[str, Tensor]`` (with the tied names that ``save_file(..., policy="tie")``
    recorded).

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
    (used as is) or ``None`` (default placement). Dtypes and shapes follow the C core's view
    policy (:mod:`torch_safetensors._dtypes`): F6 tensors (``F6_E2M3``, ``F6_E3M2``) have no
    torch dtype and come back as raw ``uint8`` bytes, packed as in the file, never unpacked, and
    a tensor whose bytes are not aligned to its element size is an owned copy, never a view.
"""

from __future__ import annotations

import inspect
import os
import threading
from typing import Any, Callable

from ._record import KEY_PREFIX, STRUCTURE_KEY

__all__ = ["install", "uninstall", "is_installed", "STRUCTURE_KEY", "KEY_PREFIX"]

_lock = threading.Lock()
# (module, attribute) -> (previous function, our wrapper)
_installed: dict[tuple[Any, str], tuple[Callable[..., Any], Callable[..., Any]]] = {}
# wrappers that uninstall() could not unlink because something wrapped them later
_disabled: set[int] = set()


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

def _type_error(msg: str) -> Exception:
    from .errors import ST_ERR_UNSUPPORTED, SafetensorTypeError, make_error

    return make_error(SafetensorTypeError, msg, ST_ERR_UNSUPPORTED)


def _value_error(msg: str) -> Exception:
    from .errors import SafetensorValueError, make_error

    return make_error(SafetensorValueError, msg)


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------

def save_safetensors(obj: Any, f: Any, metadata: dict[str, str] | None = None,
                     strict: bool = False, policy: str = "tie") -> None:
    """Write ``obj`` to ``f`` as safetensors with a structure record (see the module docs)."""
    from . import _record

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
    tensors, record = _record.flatten(obj, policy, strict)
    md = {"format": "pt"}
    if metadata:
        md.update(metadata)
    md[STRUCTURE_KEY] = record
    from ._io import write_tensors

    write_tensors(tensors, f, md)  # device tensors come over pinned memory


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def _looks_like_safetensors(head: bytes, size: int) -> bool:
    # The C library's rule (st_sniff), the one its open errors use to name what a file is:
    # N within the limit and a header that starts with "{". The file size is deliberately
    # not part of the answer: a truncated safetensors file is still ours to report.
    from . import _C

    return _C.sniff(head, size)[0]


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
                size = os.fstat(fh.fileno()).st_size
        except OSError:
            return False  # the previous torch.load reports it
        return _looks_like_safetensors(head, size)
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
        return _looks_like_safetensors(bytes(head), pos + len(head))
    finally:
        seek(pos)


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


def load_safetensors(f: Any, map_location=None, mmap: bool | None = None) -> Any:
    """Read safetensors from ``f`` and rebuild the saved object (see the module docs)."""
    from . import _record
    from ._io import read_tensors

    tensors, metadata = read_tensors(f, device="cpu", mmap=mmap is None or bool(mmap))

    def place(t, location):
        return _place(t, location, map_location)

    text = (metadata or {}).get(STRUCTURE_KEY)
    if text is None:
        from . import _alias

        return _record.flat(_alias.restore(tensors, metadata), place)
    return _record.rebuild(_record.parse(text), tensors, place)


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

    ``torch.save(obj, f, format="safetensors", metadata=None, strict=False, policy="tie")`` writes
    ``obj`` (a tensor, or nested dicts/lists/tuples of tensors and plain values) as safetensors
    with a structure record, never pickling; anything else raises a TypeError naming its path.
    ``policy`` ("tie", "copy" or "error") says what happens to tensors that share memory
    (docs/RECORD.md, "Shared memory"). Without ``format`` (or with ``format="pickle"``) the
    previously installed torch.save runs unchanged.

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
    # inspect.signature (and IDEs, and libraries that inspect torch.load's
    # parameters) see the signature of what we wrap: we accept the same.
    load.__wrapped__ = prev
    return load


def _save_signature(prev):
    """The wrapped save's signature plus our keyword-only parameters (None
    when it has none to show)."""
    try:
        sig = inspect.signature(prev)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    names = {p.name for p in params}
    var_kw = [p for p in params if p.kind is p.VAR_KEYWORD]
    params = [p for p in params if p.kind is not p.VAR_KEYWORD]
    ours = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for n, d, a in (("format", None, "str | None"),
                            ("metadata", None, "dict[str, str] | None"),
                            ("strict", False, "bool"), ("policy", "tie", "str"))
            if n not in names]
    return sig.replace(parameters=params + ours + var_kw)


def _make_save(prev):
    def save(obj, f, *args, format: str | None = None, metadata: dict[str, str] | None = None,
             strict: bool = False, policy: str = "tie", **kwargs):
        if id(save) in _disabled:
            if format is not None:
                kwargs["format"] = format
            return prev(obj, f, *args, **kwargs)
        if format is None or format == "pickle":
            if metadata is not None or strict or policy != "tie":
                raise TypeError("metadata= and strict= need format='safetensors' (so does policy=)")
            return prev(obj, f, *args, **kwargs)
        if format != "safetensors":
            raise _value_error(f"unknown format {format!r}: use 'safetensors' or 'pickle'")
        if args or kwargs:
            raise TypeError(
                "torch.save(format='safetensors') takes no pickle arguments; got "
                f"{len(args)} positional and {sorted(kwargs)}")
        save_safetensors(obj, f, metadata=metadata, strict=strict, policy=policy)

    save.__doc__ = _SAVE_DOC
    save.__qualname__ = save.__name__ = "save"
    save.__wrapped__ = prev
    save.__signature__ = _save_signature(prev)
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
