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
FileNotFoundError, ...) keeps working.

Two flavours of message. Ours (the C layer, :mod:`torch_safetensors.sharded`,
the torch.load hook) appends the fields: ``"... [ST_ERR_INVALID_OFFSET,
status 12] at byte offset 96, tensor 'w'"``. The drop-in's
(:mod:`torch_safetensors.torch`, :mod:`torch_safetensors.numpy`,
``serialize``/``deserialize``) is the reference's message alone, e.g.
``"Error while deserializing header: invalid offset for tensor `w`"`` or
``"No such file or directory: m.safetensors"``; the fields are attributes
all the same, and ``detail`` holds our flavour's text (:func:`as_reference`)::

    >>> from torch_safetensors.torch import load_file
    >>> try:
    ...     load_file("corrupt.safetensors")
    ... except SafetensorError as e:
    ...     print(e.status_name, e.offset, e.tensor_name)
"""

from __future__ import annotations

import errno as _errno
import os as _os
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


class SafetensorUnsupportedDtypeError(SafetensorTypeError, KeyError):
    """A torch dtype the format has no name for (complex128, quint8, ...).

    Also a KeyError, which is what the reference raises for them."""

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


class SafetensorExportError(SafetensorValueError):
    """An exported-program directory (docs/EXPORT.md) that cannot be saved,
    loaded or given these weights; the subclasses name the reason."""


class SafetensorExportManifestError(SafetensorExportError):
    """export.json missing, malformed, of another format or version, or not
    what the package reports (its constant names)."""


class SafetensorExportTorchVersionError(SafetensorExportError):
    """The package was compiled by another torch version than this one."""


class SafetensorExportWeightsBakedError(SafetensorExportError):
    """The package holds its weights (compiled with
    ``aot_inductor.package_constants_in_so=True``, the default)."""


class SafetensorExportPickleError(SafetensorExportError):
    """A constant that only pickle can hold (a torchbind object, a tensor
    subclass, a quantized or sparse tensor)."""


class SafetensorExportMissingError(SafetensorExportError):
    """A constant the package needs is not in the weights."""


class SafetensorExportUnexpectedError(SafetensorExportError):
    """The weights hold a tensor the package does not need."""


class SafetensorExportShapeError(SafetensorExportError):
    """A weight's shape is not the one the package was compiled for."""


class SafetensorExportDtypeError(SafetensorExportError):
    """A weight's dtype is not the one the package was compiled for."""


class SafetensorExportHashError(SafetensorExportError):
    """The weights file is not the one export.json names (its sha256)."""


class SafetensorQuantError(SafetensorError, ValueError):
    """A quantized group (docs/QUANT.md) that cannot be described, checked
    or dequantized; ``tensor_name`` is the group's result name."""


class SafetensorQuantLayoutError(SafetensorQuantError):
    """A group's components disagree with its method: a missing component,
    a scale, zero point or packed tensor of the wrong dtype or shape, a
    group size that does not divide."""


class SafetensorQuantDescriptorError(SafetensorQuantError):
    """The ``torch_safetensors.quant`` descriptor (or a quantization
    config) breaks a rule of docs/QUANT.md."""


class SafetensorQuantAmbiguousError(SafetensorQuantError):
    """Without a descriptor or a config, more than one layout fits; the
    ``candidates`` attribute lists them. We never guess."""


class SafetensorQuantUnsupportedError(SafetensorQuantError):
    """A quantization method, bit width or rank this reader does not
    dequantize (yet)."""


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
               offset: Optional[int] = None, *,
               reference: bool = False) -> SafetensorError:
    """Builds an exception of cls with the same fields as the C layer's.

    Our flavour appends the status, offset and tensor name to the message;
    the drop-in's (``reference=True``) is the reference's message alone,
    with the same fields as attributes."""
    name = _C.status_name(status)
    text = message
    if not reference:
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


# -- The drop-in's flavour -------------------------------------------------

#: What the reference (safetensors 0.8.0) says after "Error while
#: deserializing header: " for each refusal of the format that it shares;
#: None: the reference's words followed by our own message. Statuses not
#: listed are our stricter rules (duplicate names, NUL characters, limits):
#: our message alone.
_REFERENCE_TEXT = {
    4: "header too small",                                # HEADER_TOO_SMALL
    5: "header too large",                                # HEADER_TOO_LARGE
    6: "invalid header length",                           # INVALID_HEADER_LENGTH
    7: "invalid UTF-8 in header: {}",                     # INVALID_HEADER
    8: "invalid JSON in header: {}",                      # HEADER_DESERIALIZATION
    9: "overflow computing buffer size from shape and/or element type",
    10: "The slice is slicing for subbytes dtypes, and the slice does not "
        "end up at a byte boundary, this is invalid.",    # MISALIGNED_SLICE
    11: "invalid shape, data type, or offset for tensor",  # INVALID_TENSOR_INFO
    12: "invalid offset for tensor `{name}`",              # INVALID_OFFSET
    13: "incomplete metadata, file not fully covered",    # INCOMPLETE_BUFFER
}

#: Statuses of a file that does not parse (the reference's
#: "Error while deserializing header: ..." family).
_FORMAT_STATUSES = frozenset(range(4, 17)) | {21}


def c_message(exc: SafetensorError) -> str:
    """The C library's message of exc, without the fields that our flavour
    appends (status, offset, tensor, errno, file)."""
    text = str(exc.args[0]) if exc.args else ""
    tail = f" [{getattr(exc, 'status_name', '')}, status " \
           f"{getattr(exc, 'status', '')}]"
    head, sep, _ = text.partition(tail)
    return head if sep else text


def reference_message(exc: SafetensorError, source: str = "file") -> str:
    """The reference's message for the failure exc reports.

    source: ``"file"`` (safe_open, load_file: "Error while deserializing
    header: ..."), ``"bytes"`` (load, deserialize: "Error while
    deserializing: ...") or ``"write"`` (save_file, serialize_file: "Error
    while serializing: I/O error: ...")."""
    status = getattr(exc, "status", None)
    ours = c_message(exc)
    if status == ST_ERR_IO and source == "write":
        err = getattr(exc, "sys_errno", 0) or 0
        if not err:
            return f"Error while serializing: I/O error: {ours}"
        text = (f"Error while serializing: I/O error: {_os.strerror(err)} "
                f"(os error {err})")
        if err == _errno.ENOENT and exc.filename is not None:
            text += f' at path "{exc.filename}"'  # the reference's temp file
        return text
    if status == ST_ERR_IO:
        err = getattr(exc, "sys_errno", 0) or 0
        if err == _errno.ENOENT:
            return f"No such file or directory: {exc.filename}"
        if err:
            return f"{_os.strerror(err)} (os error {err})"
        return ours
    if status in _FORMAT_STATUSES:
        prefix = {"file": "Error while deserializing header: ",
                  "write": "Error while serializing: "}.get(
                      source, "Error while deserializing: ")
        text = _REFERENCE_TEXT.get(status)
        if text is None:
            return prefix + ours
        text = text.format(ours, name=getattr(exc, "tensor_name", None))
        if "not a safetensors file" in ours:
            text += f" ({ours})"  # says what the file looks like
        return prefix + text
    return ours


def as_reference(exc: SafetensorError, source: str = "file"
                 ) -> SafetensorError:
    """exc (of our flavour, e.g. from the C layer) as the drop-in raises it:
    the same class and fields (status, status_name, offset, tensor_name,
    sys_errno, filename, errno), the reference's message, and ours in
    ``detail``. Errors already of the drop-in's flavour come back as they
    are."""
    if getattr(exc, "detail", None) is not None or \
            getattr(exc, "status", None) is None:
        return exc
    new = type(exc)(reference_message(exc, source))
    for attr in ("status", "status_name", "offset", "tensor_name",
                 "sys_errno", "filename"):
        setattr(new, attr, getattr(exc, attr, None))
    if isinstance(exc, OSError):
        new.errno = exc.errno
    new.detail = str(exc)
    return new


class reference_errors:
    """Context manager: a SafetensorError raised inside leaves with the
    reference's message (:func:`as_reference`)::

        with reference_errors("file"):
            f = _C.File(path)
    """

    __slots__ = ("source",)

    def __init__(self, source: str = "file") -> None:
        self.source = source

    def __enter__(self) -> "reference_errors":
        return self

    def __exit__(self, tp, value, tb) -> bool:
        if value is not None and isinstance(value, SafetensorError):
            new = as_reference(value, self.source)
            if new is not value:
                raise new.with_traceback(tb) from None
        return False


def wrap(exc: BaseException, cls: Type[SafetensorError],
         tensor_name: Optional[str] = None,
         status: int = ST_ERR_INVALID_ARGUMENT, *,
         reference: bool = False) -> SafetensorError:
    """Our exception for a refusal that came from torch (same message)."""
    return make_error(cls, str(exc).strip().strip("'\""), status, tensor_name,
                      reference=reference)


__all__ = [
    "SafetensorError", "SafetensorTypeError", "SafetensorValueError",
    "SafetensorSharedTensorError", "SafetensorOverlapError",
    "SafetensorRecordError", "SafetensorRecordVersionError",
    "SafetensorIndexError",
    "SafetensorKeyError", "SafetensorUnsupportedDtypeError",
    "SafetensorMemoryError", "SafetensorOSError",
    "SafetensorFileNotFoundError", "SafetensorPermissionError",
    "SafetensorIsADirectoryError", "SafetensorQuantError",
    "SafetensorQuantLayoutError", "SafetensorQuantDescriptorError",
    "SafetensorQuantAmbiguousError", "SafetensorQuantUnsupportedError",
    "make_error", "as_reference",
    "SafetensorExportError", "SafetensorExportManifestError",
    "SafetensorExportTorchVersionError", "SafetensorExportWeightsBakedError",
    "SafetensorExportPickleError", "SafetensorExportMissingError",
    "SafetensorExportUnexpectedError", "SafetensorExportShapeError",
    "SafetensorExportDtypeError", "SafetensorExportHashError",
    "reference_message",
]
