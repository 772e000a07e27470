"""Routes the reference package's loaders to torch_safetensors in this process.

:func:`patch_safetensors` replaces ``safetensors.safe_open``,
``safetensors.torch.load_file`` and ``safetensors.torch.load`` with
stand-ins that keep the reference's API and results (handle methods, slice
objects, error types) and serve ``framework="pt"`` with torch_safetensors'
C reader. It also rebinds every already-imported module attribute that *is*
one of those reference objects (``transformers.modeling_utils`` binds
``safe_open`` and ``load`` at import), so code that imported them by name
is served too; modules imported later get the stand-ins from the patched
``safetensors`` modules. If ``safetensors`` (or ``safetensors.torch``) is
not imported yet, nothing is imported: the patch applies when it is.

``framework="numpy"`` (or ``"np"``) on the CPU is served too, as the
drop-in serves it (numpy arrays). Calls the stand-ins do not serve go to
the original reference objects, unchanged: other frameworks (``"flax"``,
``"tf"``, ``"mlx"``, ...),
devices other than ``"cpu"``/``"cuda[:N]"``/an int (or CUDA devices on a
machine without CUDA), unknown keyword arguments, arguments of types the
reference might treat differently.

Errors: where the reference raises ``safetensors.SafetensorError``, the
stand-ins raise a torch_safetensors error that is also an instance of
``safetensors.SafetensorError``; where the reference raises a builtin
(``FileNotFoundError``, ``IndexError``, ``TypeError``), ours are that
builtin already.

:func:`unpatch_safetensors` puts the original objects back everywhere the
stand-ins were bound (also where modules imported them after the patch).
Both are idempotent and serialized by one lock. Setting
``TORCH_SAFETENSORS_PATCH=1`` patches when torch_safetensors is imported
(which ``import torch`` does through torch's backend autoload).

Example::

    >>> import torch_safetensors
    >>> torch_safetensors.patch_safetensors()
    True
    >>> from transformers import AutoModel
    >>> model = AutoModel.from_pretrained("path/to/model")  # read by us
    >>> torch_safetensors.unpatch_safetensors()
    True
"""

from __future__ import annotations

import importlib.abc
import os
import re
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

from . import _C, _io
from .errors import SafetensorError

__all__ = ["patch_safetensors", "unpatch_safetensors", "is_patched", "ENV_VAR"]

#: The environment variable read when torch_safetensors is imported.
ENV_VAR = "TORCH_SAFETENSORS_PATCH"
_TRUE = ("1", "true", "yes", "on")

_FRAMEWORKS = ("pt", "torch", "pytorch")
_NUMPY = ("numpy", "np")
_numpy_served: Optional[bool] = None
_BACKENDS = ("mmap", "pread")
_CUDA = re.compile(r"cuda(:[0-9]+)?\Z")

# (module, attribute) -> which stand-in goes there.
_TARGETS = {
    "safetensors": (("safe_open", "safe_open"),),
    "safetensors.torch": (("load_file", "load_file"), ("load", "load")),
}
# The reference's extension module keeps the originals reachable.
_NEVER_REBIND = ("safetensors._safetensors_rust",)

_lock = threading.RLock()
_active = False
#: stand-in name -> the reference's original object (while patched).
_originals: Dict[str, Any] = {}
#: (module, attribute, original) of every rebinding done, for unpatch.
_rebound: List[Tuple[Any, str, Any]] = []


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

_mixed_classes: Dict[type, type] = {}
# The reference raises these builtins itself (missing file, bad index, bad
# argument type); our errors already derive from the same builtins.
_REFERENCE_BUILTINS = (OSError, IndexError, TypeError)


def _reference_error(exc: SafetensorError) -> SafetensorError:
    """exc, made an instance of ``safetensors.SafetensorError`` as well."""
    ref = getattr(sys.modules.get("safetensors"), "SafetensorError", None)
    if ref is None or isinstance(exc, ref) or isinstance(
            exc, _REFERENCE_BUILTINS):
        return exc
    cls = type(exc)
    mixed = _mixed_classes.get(cls)
    if mixed is None:
        mixed = type(cls.__name__, (cls, ref),
                     {"__module__": cls.__module__, "__doc__": cls.__doc__})
        _mixed_classes[cls] = mixed
    try:
        exc.__class__ = mixed
        return exc
    except TypeError:  # a layout __class__ assignment refuses: a copy instead
        copy = mixed(*exc.args)
        copy.__dict__.update(getattr(exc, "__dict__", {}))
        return copy


class _translated:
    """Context manager: our errors leave as the reference's types."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        if exc is not None and isinstance(exc, SafetensorError):
            new = _reference_error(exc)
            if new is not exc:
                raise new.with_traceback(tb) from None
        return False  # re-raise (now also the reference's class)


_TRANSLATED = _translated()


# --------------------------------------------------------------------------
# Stand-ins
# --------------------------------------------------------------------------

def _servable_device(device: Any) -> bool:
    # The reference takes a str or an int (never a torch.device); anything
    # else than the CPU and CUDA stays with it.
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return device >= 0 and _cuda_available()
    if isinstance(device, str):
        if device == "cpu":
            return True
        return bool(_CUDA.match(device)) and _cuda_available()
    return False


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _servable_path(filename: Any) -> bool:
    return isinstance(filename, (str, os.PathLike))


def _bind_open(args: tuple, kwargs: dict) -> Optional[Tuple[Any, str, Any, str]]:
    """(filename, framework, device, backend) of a call we serve, else None."""
    if len(args) > 3:
        return None
    names = ("filename", "framework", "device")
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in ("filename", "framework", "device", "backend") \
                or key in bound:
            return None
        bound[key] = value
    if "filename" not in bound or "framework" not in bound:
        return None
    filename, framework = bound["filename"], bound["framework"]
    device = bound.get("device", "cpu")
    backend = bound.get("backend", "mmap")
    if (not isinstance(framework, str) or not isinstance(backend, str)
            or backend not in _BACKENDS or not _servable_path(filename)):
        return None
    if framework in _NUMPY:
        # Arrays live on the CPU; the reference's refusal of other devices
        # stays the reference's.
        if not (_drop_in_serves_numpy() and isinstance(device, str)
                and device == "cpu"):
            return None
    elif framework not in _FRAMEWORKS or not _servable_device(device):
        return None
    return filename, framework, device, backend


def _drop_in_serves_numpy() -> bool:
    """Whether torch_safetensors.torch.safe_open takes framework="numpy"."""
    global _numpy_served
    if _numpy_served is None:
        from . import torch as _torch

        try:
            _torch._check_framework("numpy")
            _numpy_served = True
        except (SafetensorError, ValueError):
            _numpy_served = False
    return _numpy_served


def _bind_load_file(args: tuple, kwargs: dict
                    ) -> Optional[Tuple[Any, str, Any, str]]:
    """load_file(filename, device="cpu", *, backend="mmap") as _bind_open."""
    if len(args) > 2:
        return None
    bound = dict(zip(("filename", "device"), args))
    for key, value in kwargs.items():
        if key not in ("filename", "device", "backend") or key in bound:
            return None
        bound[key] = value
    return _bind_open((), {"framework": "pt", **bound})


def _open(filename: Any, framework: str, device: Any, backend: str) -> Any:
    """Our handle (a torch_safetensors.torch.safe_open)."""
    from . import torch as _torch

    return _torch.safe_open(filename, framework=framework, device=device,
                            backend=backend)


class _Slice:
    """What the patched handle's ``get_slice`` returns (the reference's
    ``PySafeSlice``: ``get_shape``, ``get_dtype``, indexing)."""

    __slots__ = ("_s",)

    def __init__(self, s: Any) -> None:
        self._s = s

    def get_shape(self) -> List[int]:
        with _TRANSLATED:
            return self._s.get_shape()

    def get_dtype(self) -> str:
        with _TRANSLATED:
            return self._s.get_dtype()

    def __getitem__(self, index: Any) -> Any:
        with _TRANSLATED:
            return self._s[index]

    def __repr__(self) -> str:
        return repr(self._s)


class _Handle:
    """What the patched ``safe_open`` returns for calls we serve: the
    reference handle's methods, on a torch_safetensors reader."""

    __slots__ = ("_f", "__weakref__")

    def __init__(self, f: Any) -> None:
        self._f = f

    def __enter__(self) -> "_Handle":
        with _TRANSLATED:
            self._f.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def keys(self) -> List[str]:
        with _TRANSLATED:
            return self._f.keys()

    def offset_keys(self) -> List[str]:
        with _TRANSLATED:
            return self._f.offset_keys()

    def metadata(self) -> Optional[Dict[str, str]]:
        with _TRANSLATED:
            return self._f.metadata()

    def get_tensor(self, name: str) -> Any:
        with _TRANSLATED:
            return self._f.get_tensor(name)

    def get_tensors(self) -> Dict[str, Any]:
        with _TRANSLATED:
            return self._f.get_tensors()

    def get_slice(self, name: str) -> _Slice:
        with _TRANSLATED:
            return _Slice(self._f.get_slice(name))

    def __repr__(self) -> str:
        return repr(self._f)


class _SafeOpenType(type):
    """isinstance(handle, safetensors.safe_open) holds for both kinds of
    handle the stand-in returns, as it did for the reference's."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if isinstance(obj, _Handle):
            return True
        original = _originals.get("safe_open")
        return original is not None and isinstance(obj, original)


class safe_open(metaclass=_SafeOpenType):
    """Stand-in for ``safetensors.safe_open`` (same parameters:
    ``filename, framework, device="cpu", *, backend="mmap"``).

    Returns a torch_safetensors-backed handle for ``framework="pt"`` on the
    CPU or CUDA (and ``"numpy"`` on the CPU), else whatever the original
    reference ``safe_open`` returns.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        call = _bind_open(args, kwargs)
        original = _originals.get("safe_open") or _reference("safe_open")
        if call is None:
            return original(*args, **kwargs)
        with _TRANSLATED:
            return _Handle(_open(*call))


def load_file(*args: Any, **kwargs: Any) -> Dict[str, Any]:
    """Stand-in for ``safetensors.torch.load_file(filename, device="cpu", *,
    backend="mmap")``: the same dict (every tensor, in file order)."""
    call = _bind_load_file(args, kwargs)
    if call is None:
        original = _originals.get("load_file") or _reference("load_file")
        return original(*args, **kwargs)
    with _TRANSLATED:
        f = _open(*call)
        try:
            return f.get_tensors()
        finally:
            f.close()


def load(*args: Any, **kwargs: Any) -> Dict[str, Any]:
    """Stand-in for ``safetensors.torch.load(data)``: the tensors of a file
    held in ``bytes``, owning their memory (CPU)."""
    if len(args) == 1 and not kwargs:
        data = args[0]
    elif not args and list(kwargs) == ["data"]:
        data = kwargs["data"]
    else:
        data = None
    if type(data) is not bytes:
        original = _originals.get("load") or _reference("load")
        return original(*args, **kwargs)
    with _TRANSLATED:
        f = _C.File(data)
        try:
            infos = f.tensors()
            ts = _io.read_owned(f, list(enumerate(infos)))
            # The reference applies no aliasing record (docs/RECORD.md).
            return {info.name: t for info, t in zip(infos, ts)}
        finally:
            f.close()


_STAND_INS = {"safe_open": safe_open, "load_file": load_file, "load": load}


def _reference(name: str) -> Any:
    """The reference's own object (when called while unpatched)."""
    if name == "safe_open":
        from safetensors import _safetensors_rust

        return _safetensors_rust.safe_open
    import safetensors.torch as _ref_torch

    value = getattr(_ref_torch, name)
    if value is _STAND_INS[name]:
        raise RuntimeError(f"the original safetensors.torch.{name} is lost")
    return value


# --------------------------------------------------------------------------
# Patching
# --------------------------------------------------------------------------

def _module_items(module: Any) -> List[Tuple[str, Any]]:
    d = getattr(module, "__dict__", None)
    if not isinstance(d, dict):
        return []
    for _ in range(3):
        try:
            return list(d.items())
        except RuntimeError:  # another thread imported into it meanwhile
            continue
    return []


def _rebind_everywhere(swap: Dict[int, Tuple[Any, Any]],
                       record: bool) -> None:
    """Every sys.modules attribute that is a key object becomes its value."""
    for modname, module in list(sys.modules.items()):
        if module is None or modname in _NEVER_REBIND:
            continue
        for attr, value in _module_items(module):
            pair = swap.get(id(value))
            if pair is None or pair[0] is not value:
                continue
            try:
                setattr(module, attr, pair[1])
            except (AttributeError, TypeError):
                continue
            if record:
                _rebound.append((module, attr, value))


def _apply(modname: str) -> None:
    """Patches modname's targets (the module is imported); lock held."""
    module = sys.modules.get(modname)
    if module is None:
        return
    swap: Dict[int, Tuple[Any, Any]] = {}
    for attr, name in _TARGETS[modname]:
        original = module.__dict__.get(attr)
        if original is None or original is _STAND_INS[name]:
            continue
        _originals.setdefault(name, original)
        swap[id(original)] = (original, _STAND_INS[name])
    if swap:
        _rebind_everywhere(swap, record=True)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then patches the module it made."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._inner.exec_module(module)
        with _lock:
            if _active:
                _apply(module.__name__)

    def __getattr__(self, name: str) -> Any:  # resources, get_source, ...
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Patches safetensors / safetensors.torch when they are imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _TARGETS or not _active:
            return None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, _Finder):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def patch_safetensors() -> bool:
    """Routes the reference's ``safe_open``, ``safetensors.torch.load_file``
    and ``load`` to torch_safetensors in this process.

    Rebinds the ``safetensors`` and ``safetensors.torch`` attributes and
    every already-imported module attribute that is one of those objects;
    modules not imported yet are patched when they are. Calls we do not
    serve go to the originals.

    Returns:
        True if this call patched, False if the patch was already active.

    Example::

        >>> torch_safetensors.patch_safetensors()
        True
        >>> import safetensors
        >>> with safetensors.safe_open("m.safetensors", "pt") as f:
        ...     w = f.get_tensor("w")  # read by torch_safetensors
    """
    global _active
    with _lock:
        if _active:
            return False
        _active = True
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
        for modname in _TARGETS:
            _apply(modname)
        return True


def unpatch_safetensors() -> bool:
    """Puts back the original reference objects everywhere the patch (or a
    module imported while it was active) bound a stand-in.

    Returns:
        True if the patch was active, False if there was nothing to undo.
    """
    global _active
    with _lock:
        if not _active:
            return False
        _active = False
        try:
            sys.meta_path.remove(_FINDER)
        except ValueError:
            pass
        stand_ins = {id(obj) for obj in _STAND_INS.values()}
        for module, attr, original in reversed(_rebound):
            if id(module.__dict__.get(attr)) in stand_ins:
                setattr(module, attr, original)
        _rebound.clear()
        # Names bound to stand-ins after the patch (`from safetensors import
        # safe_open` in a module imported meanwhile).
        swap = {id(obj): (obj, _originals[name])
                for name, obj in _STAND_INS.items() if name in _originals}
        _rebind_everywhere(swap, record=False)
        _originals.clear()
        return True


def is_patched() -> bool:
    """Whether :func:`patch_safetensors` is in effect."""
    return _active


def patch_from_environment() -> bool:
    """Patches if ``TORCH_SAFETENSORS_PATCH`` is 1/true/yes/on."""
    if os.environ.get(ENV_VAR, "").strip().lower() in _TRUE:
        return patch_safetensors()
    return False
