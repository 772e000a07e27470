"""The one exception hierarchy of torch_safetensors.

Every failure is a :class:`SafetensorError` carrying

* ``status``: the C library's pinned status number (``ST_ERR_*``),
* ``status_name``: its symbolic name, e.g. ``"ST_ERR_INVALID_OFFSET"``,
* ``offset``: the byte offset in the file where it went wrong, or None,
* ``tensor_name``: the offending tensor's name, or None,
* ``sys_errno``: the errno of a failed system call, else 0,
* ``filename``: the path involved, or None.

Subclasses also derive from the matching builtin, so code written for the
reference package (which raises ValueError, TypeError, RuntimeError,
FileNotFoundError, ...) keeps working::

    >>> from torch_safetensors.torch import load_file
    >>> try:
    ...     load_file("corrupt.safetensors")
    ... except SafetensorError as e:
    ...     print(e.status_name, e.offset, e.tensor_name)
"""

from __future__ import annotations

import errno as _errno
from typing import Optional, Type

from . import _C

SafetensorError = _C.SafetensorError
SafetensorError.__module__ = "torch_safetensors"

# Pinned status numbers (include/safetensors.h).
ST_OK = 0
ST_ERR_INVALID_ARGUMENT = 1
ST_ERR_NOMEM = 2
ST_ERR_IO = 3
ST_ERR_HEADER_DESERIALIZATION = 8
ST_ERR_NOT_FOUND = 17
ST_ERR_INVALID_SLICE = 18
ST_ERR_UNSUPPORTED = 20


class SafetensorTypeError(SafetensorError, TypeError):
    """A value of a type that cannot be stored (or a wrong argument type)."""


class SafetensorValueError(SafetensorError, ValueError):
    """A value the format or the drop-in API refuses."""


class SafetensorSharedTensorError(SafetensorError, RuntimeError):
    """save_file/save given tensors that share memory (as the reference)."""


class SafetensorOverlapError(SafetensorSharedTensorError, TypeError):
    """torch.save(..., strict=True) given tensors whose bytes overlap without
    being exact aliases (also a TypeError, what that refusal always was)."""


class SafetensorRecordError(SafetensorError, ValueError):
    """A structure record (docs/RECORD.md) that breaks a rule of its spec."""


class SafetensorRecordVersionError(SafetensorRecordError):
    """A structure record whose version this reader does not know."""


class SafetensorIndexError(SafetensorError, IndexError):
    """An index or slice that does not fit the tensor."""


class SafetensorKeyError(SafetensorError, KeyError):
    """No tensor of that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SafetensorMemoryError(SafetensorError, MemoryError):
    """The C library could not allocate."""


class SafetensorOSError(SafetensorError, OSError):
    """A system call failed (``sys_errno`` / ``errno`` say which)."""

    def __str__(self) -> str:  # OSError would print "[Errno n] ..." only
        return str(self.args[0]) if self.args else ""


class SafetensorFileNotFoundError(SafetensorOSError, FileNotFoundError):
    pass


class SafetensorPermissionError(SafetensorOSError, PermissionError):
    pass


class SafetensorIsADirectoryError(SafetensorOSError, IsADirectoryError):
    pass


_ERRNO_CLASSES = {
    _errno.ENOENT: SafetensorFileNotFoundError,
    _errno.EACCES: SafetensorPermissionError,
    _errno.EPERM: SafetensorPermissionError,
    _errno.EISDIR: SafetensorIsADirectoryError,
}


def _factory(status: int, sys_errno: int) -> Type[SafetensorError]:
    if status == ST_ERR_IO:
        return _ERRNO_CLASSES.get(sys_errno, SafetensorOSError)
    if status == ST_ERR_NOMEM:
        return SafetensorMemoryError
    if status in (ST_ERR_INVALID_SLICE,):
        return SafetensorIndexError
    return SafetensorError


_C._set_error_factory(_factory)


def make_error(cls: Type[SafetensorError], message: str,
               status: int = ST_ERR_INVALID_ARGUMENT,
               tensor_name: Optional[str] = None,
               offset: Optional[int] = None) -> SafetensorError:
    """Builds an exception of cls with the same fields as the C layer's."""
    name = _C.status_name(status)
    text = f"{message} [{name}, status {status}]"
    if offset is not None:
        text += f" at byte offset {offset}"
    if tensor_name is not None:
        text += f", tensor {tensor_name!r}"
    exc = cls(text)
    exc.status = status
    exc.status_name = name
    exc.offset = offset
    exc.tensor_name = tensor_name
    exc.sys_errno = 0
    exc.filename = None
    return exc


def wrap(exc: BaseException, cls: Type[SafetensorError],
         tensor_name: Optional[str] = None,
         status: int = ST_ERR_INVALID_ARGUMENT) -> SafetensorError:
    """Our exception for a refusal that came from torch (same message)."""
    return make_error(cls, str(exc).strip().strip("'\""), status, tensor_name)


__all__ = [
    "SafetensorError", "SafetensorTypeError", "SafetensorValueError",
    "SafetensorSharedTensorError", "SafetensorOverlapError",
    "SafetensorRecordError", "SafetensorRecordVersionError",
    "SafetensorIndexError",
    "SafetensorKeyError", "SafetensorMemoryError", "SafetensorOSError",
    "SafetensorFileNotFoundError", "SafetensorPermissionError",
    "SafetensorIsADirectoryError", "make_error",
]
