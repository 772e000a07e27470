"""Exported programs without TorchScript: ``torch.export`` + AOTInductor,
with the weights in safetensors.

:func:`save` compiles a module into a directory (docs/EXPORT.md):

* ``model.pt2``: the AOTInductor package, compiled without its weights
  (``aot_inductor.package_constants_in_so=False``);
* ``model.safetensors``: one tensor per constant the package needs, under the
  name it asks for (tied constants once);
* ``export.json``: the manifest that ties the two together (torch version,
  constant names, dtypes, shapes, the weights file's sha256).

:func:`load` runs such a directory from Python through torch's own
``aoti_load_package`` (C++ programs run the same directory with
``torch::inductor::AOTIModelPackageLoader``); :func:`save_weights` writes
other weights (a fine-tuned checkpoint) for an existing package.

Every check runs before the package sees a tensor: AOTInductor's
``load_constants`` takes a tensor of the wrong shape or dtype without a word,
and a package run without its constants crashes the process.

Example::

    >>> from torch_safetensors import export
    >>> export.save(model, (x,), "exported")        # compiles (seconds)
    >>> runner = export.load("exported")
    >>> y = runner(x)
    >>> runner.swap_weights("finetuned.safetensors")
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import struct
import tempfile
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from . import _dtypes, _io
from .errors import (
    ST_ERR_INVALID_ARGUMENT,
    ST_ERR_NOT_FOUND,
    ST_ERR_UNSUPPORTED,
    SafetensorExportDtypeError,
    SafetensorExportError,
    SafetensorExportHashError,
    SafetensorExportManifestError,
    SafetensorExportMissingError,
    SafetensorExportPickleError,
    SafetensorExportShapeError,
    SafetensorExportTorchVersionError,
    SafetensorExportUnexpectedError,
    SafetensorExportWeightsBakedError,
    make_error,
)
from .sharded import _write_json

__all__ = ["save", "save_weights", "load", "ExportedModel", "read_manifest",
           "check_package", "FORMAT", "VERSION", "PACKAGE", "WEIGHTS",
           "MANIFEST", "METADATA_KEY"]

PathLike = Union[str, "os.PathLike[str]"]

#: The manifest's "format" and "version" (docs/EXPORT.md).
FORMAT = "torch_safetensors.export"
VERSION = 1
#: The file names in an export directory.
PACKAGE = "model.pt2"
WEIGHTS = "model.safetensors"
MANIFEST = "export.json"
#: The weights file's ``__metadata__`` key holding the manifest (less the hash).
METADATA_KEY = "torch_safetensors.export"
#: The model name inside the package (AOTInductor's default).
MODEL_NAME = "model"

#: Inductor options that save() sets; a caller may not override them.
_FORCED_CONFIGS = {
    "aot_inductor.package": True,
    # the weights stay out of the shared library ...
    "aot_inductor.package_constants_in_so": False,
    # ... and come back from the compiler in memory (a torch Weights object,
    # keyed by the names the package asks for); save() leaves it out of the
    # package, so nothing is ever pickled.
    "aot_inductor.package_constants_on_disk_format": "pickle_weights",
    # small 1-D constants (<= 8 elements) would otherwise be inlined into the
    # kernels' code, where no weights file can reach them.
    "always_keep_tensor_constants": True,
    # constants folded at run time are computed by the package from others
    # and never reach the compiler's Weights: not a weights file's business.
    "aot_inductor.use_runtime_constant_folding": False,
}

_CHUNK = 1 << 20
#: ST_ERR_FILE_CHANGED (include/safetensors.h): the hash says another file.
_ST_ERR_FILE_CHANGED = 23


def _error(cls, message: str, status: int = ST_ERR_INVALID_ARGUMENT,
           name: Optional[str] = None, filename: Optional[str] = None):
    exc = make_error(cls, message, status, tensor_name=name)
    exc.filename = filename
    return exc


# --------------------------------------------------------------------------
# The package: what it holds
# --------------------------------------------------------------------------

_ELF_SHT_SYMTAB = 2
_ELF_SHT_DYNSYM = 11
_BLOB_START = b"_binary_constants_bin_start"
_BLOB_END = b"_binary_constants_bin_end"


def _elf_symbols(f, wanted: Sequence[bytes]) -> Dict[bytes, int]:
    """The values of the wanted symbols in a little-endian ELF64 file object
    (seekable), from its .symtab and .dynsym; {} for anything else."""
    f.seek(0)
    ident = f.read(64)
    if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 \
            or ident[5] != 1:
        return {}
    shoff, = struct.unpack_from("<Q", ident, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", ident, 0x3A)
    if shentsize < 64 or shnum == 0:
        return {}
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize)
                for i in range(len(table) // shentsize)]
    found: Dict[bytes, int] = {}
    for sec in sections:
        if sec[1] not in (_ELF_SHT_SYMTAB, _ELF_SHT_DYNSYM) or sec[6] >= \
                len(sections) or sec[9] < 24:
            continue
        strsec = sections[sec[6]]
        f.seek(strsec[4])
        strtab = f.read(strsec[5])
        f.seek(sec[4])
        syms = f.read(sec[5])
        for off in range(0, len(syms) - 23, sec[9]):
            st_name, = struct.unpack_from("<I", syms, off)
            end = strtab.find(b"\0", st_name)
            name = strtab[st_name:end if end >= 0 else len(strtab)]
            if name in wanted:
                found[name], = struct.unpack_from("<Q", syms, off + 8)
    return found


def check_package(path: PathLike) -> None:
    """Refuses an AOTInductor package that does not take its weights from
    outside: weights compiled into its shared library (or appended to it, or
    in a blob beside it), or constants that only pickle can hold (torchbind
    objects, pickled weights). Nothing is loaded or run.

    Raises SafetensorExportWeightsBakedError, SafetensorExportPickleError,
    SafetensorExportManifestError (not a package of model "model").

    Example::

        >>> check_package("exported/model.pt2")
    """
    path = os.fspath(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise _error(SafetensorExportManifestError,
                     f"{path} is not an AOTInductor package ({e})",
                     filename=path) from None
    with zf:
        names = zf.namelist()
        inner = {n: n.split("/", 1)[1] for n in names if "/" in n}
        model_dir = f"data/aotinductor/{MODEL_NAME}/"
        sos = [n for n, rel in inner.items()
               if rel.startswith(model_dir) and rel.endswith(".so")]
        pickled = [rel for rel in inner.values()
                   if rel.startswith(("data/weights/", "data/constants/"))
                   or rel.rsplit("/", 1)[-1].startswith("custom_obj")]
        if pickled:
            raise _error(SafetensorExportPickleError,
                         f"{path} holds constants that need pickle "
                         f"({pickled[0]}); torchbind objects and pickled "
                         f"weights cannot come from a safetensors file",
                         ST_ERR_UNSUPPORTED, filename=path)
        blobs = [rel for rel in inner.values()
                 if rel.startswith(model_dir) and rel.endswith(".blob")]
        if blobs:
            raise _error(SafetensorExportWeightsBakedError,
                         f"{path} holds its weights in {blobs[0]}; "
                         f"{_HOW_TO_EXPORT}", ST_ERR_UNSUPPORTED,
                         filename=path)
        if len(sos) != 1:
            raise _error(SafetensorExportManifestError,
                         f"{path} holds {len(sos)} shared libraries for "
                         f"model {MODEL_NAME!r} (want 1: a package compiled "
                         f"for C++ only or with several models is not "
                         f"supported)", filename=path)
        with zf.open(sos[0]) as so:
            syms = _elf_symbols(so, (_BLOB_START, _BLOB_END))
    if len(syms) != 2:
        raise _error(SafetensorExportWeightsBakedError,
                     f"{path}: cannot tell whether the package holds its "
                     f"weights (no {_BLOB_START.decode()} in {sos[0]}); "
                     f"only Linux x86-64/aarch64 packages are supported",
                     ST_ERR_UNSUPPORTED, filename=path)
    span = syms[_BLOB_END] - syms[_BLOB_START]
    if span > 1:  # a weight-free package's blob is one byte of padding
        raise _error(SafetensorExportWeightsBakedError,
                     f"{path} holds {span} bytes of weights in its shared "
                     f"library; {_HOW_TO_EXPORT}", ST_ERR_UNSUPPORTED,
                     filename=path)


_HOW_TO_EXPORT = (
    "compile it without them (torch_safetensors.export.save does; by hand: "
    "inductor_configs={'aot_inductor.package_constants_in_so': False, "
    "'always_keep_tensor_constants': True})")


# --------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------

def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _check_manifest(m: Any, where: str) -> Dict[str, Any]:
    def bad(why: str) -> SafetensorExportError:
        return _error(SafetensorExportManifestError, f"{where}: {why}",
                      filename=where)

    if not isinstance(m, dict):
        raise bad("not a JSON object")
    if m.get("format") != FORMAT:
        raise bad(f"format is {m.get('format')!r}, not {FORMAT!r}")
    if m.get("version") != VERSION:
        raise bad(f"version {m.get('version')!r} is not one this reader "
                  f"knows ({VERSION})")
    for key in ("torch", "package", "weights"):
        if not isinstance(m.get(key), str):
            raise bad(f"{key!r} is not a string")
    consts = m.get("constants")
    if not isinstance(consts, dict):
        raise bad("'constants' is not an object")
    for fqn, c in consts.items():
        if not (isinstance(c, dict) and isinstance(c.get("dtype"), str)
                and isinstance(c.get("tensor"), str)
                and isinstance(c.get("shape"), list)
                and all(type(d) is int and d >= 0 for d in c["shape"])):
            raise bad(f"constant {fqn!r} is not "
                      f"{{dtype, shape, tensor}}: {c!r}")
        owner = consts.get(c["tensor"])
        if owner is None or owner["tensor"] != c["tensor"] or \
                owner["dtype"] != c["dtype"] or owner["shape"] != c["shape"]:
            raise bad(f"constant {fqn!r} is stored as {c['tensor']!r}, "
                      f"which is not a constant of the same dtype and shape "
                      f"stored under its own name")
    return m


def read_manifest(directory: PathLike) -> Dict[str, Any]:
    """The manifest (export.json) of an export directory, checked against
    docs/EXPORT.md (format, version, field types).

    Raises SafetensorExportManifestError.

    Example::

        >>> read_manifest("exported")["constants"]["fc1.weight"]
        {'dtype': 'F32', 'shape': [32, 16], 'tensor': 'fc1.weight'}
    """
    path = os.path.join(os.fspath(directory), MANIFEST)
    try:
        with open(path, "rb") as fh:
            m = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise _error(SafetensorExportManifestError,
                     f"{path}: no manifest (not an export directory)",
                     ST_ERR_NOT_FOUND, filename=path) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise _error(SafetensorExportManifestError,
                     f"{path}: not UTF-8 JSON ({e})", filename=path) from None
    m = _check_manifest(m, path)
    if not isinstance(m.get("weights_sha256"), str):
        raise _error(SafetensorExportManifestError,
                     f"{path}: 'weights_sha256' is not a string",
                     filename=path)
    return m


def _write_manifest(directory: str, manifest: Dict[str, Any]) -> None:
    _write_json(os.path.join(directory, MANIFEST), manifest, indent=1)


def _metadata_manifest(manifest: Dict[str, Any]) -> Dict[str, str]:
    body = {k: v for k, v in manifest.items() if k != "weights_sha256"}
    return {METADATA_KEY: json.dumps(body, separators=(",", ":"))}


# --------------------------------------------------------------------------
# Weights: checking them against the package
# --------------------------------------------------------------------------

def _check_infos(infos: Mapping[str, Tuple[str, List[int]]],
                 manifest: Dict[str, Any], where: str) -> None:
    """infos: tensor name -> (safetensors dtype, shape) of a weights source.
    Raises the named error of the first mismatch, in the order missing,
    unexpected, dtype, shape (sorted by name within each)."""
    consts = manifest["constants"]
    stored = {c["tensor"] for c in consts.values()}
    for name in sorted(stored):
        if name not in infos:
            users = sorted(f for f, c in consts.items()
                           if c["tensor"] == name)
            raise _error(SafetensorExportMissingError,
                         f"{where} has no tensor {name!r}, which the "
                         f"package needs (constant"
                         f"{'s' if len(users) > 1 else ''} "
                         f"{', '.join(users)})", ST_ERR_NOT_FOUND, name,
                         filename=where)
    for name in sorted(infos):
        if name not in stored:
            raise _error(SafetensorExportUnexpectedError,
                         f"{where} holds tensor {name!r}, which the package "
                         f"does not take", name=name, filename=where)
    for name in sorted(stored):
        want = consts[name]
        dtype, shape = infos[name]
        if dtype != want["dtype"]:
            raise _error(SafetensorExportDtypeError,
                         f"{where}: tensor {name!r} is {dtype}; the package "
                         f"was compiled for {want['dtype']}", name=name,
                         filename=where)
        if list(shape) != want["shape"]:
            raise _error(SafetensorExportShapeError,
                         f"{where}: tensor {name!r} has shape "
                         f"{list(shape)}; the package was compiled for "
                         f"{want['shape']}", name=name, filename=where)


def _open_weights(path: str, manifest: Dict[str, Any]
                  ) -> Tuple[Dict[str, torch.Tensor], Any]:
    """Opens a weights file with the C core (its errors as they are),
    checks it against the manifest before a byte of data is touched, and
    returns zero-copy views (copy-on-write private mapping) keyed by tensor
    name, with the open file."""
    f = _io.open_file(path, backend="mmap", writable=True)
    infos = f.tensors()
    _check_infos({i.name: (i.dtype, list(i.shape)) for i in infos},
                 manifest, path)
    md = _io.metadata_of(f) or {}
    if METADATA_KEY in md:
        try:
            theirs = _check_manifest(json.loads(md[METADATA_KEY]), path)
        except ValueError as e:
            if isinstance(e, SafetensorExportError):
                raise
            raise _error(SafetensorExportManifestError,
                         f"{path}: its {METADATA_KEY!r} metadata is not "
                         f"JSON ({e})", filename=path) from None
        if theirs["constants"] != manifest["constants"]:
            raise _error(SafetensorExportManifestError,
                         f"{path} was written for another package (its "
                         f"{METADATA_KEY!r} metadata lists other constants)",
                         filename=path)
    tensors = _io.view_all(f, infos)
    return {i.name: t for i, t in zip(infos, tensors)}, f


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------

def _plain(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or type(t) not in (
            torch.Tensor, torch.nn.Parameter) or t.layout != torch.strided \
            or t.is_quantized or t.is_meta or _dtypes.st_name(t.dtype) is None:
        kind = type(t).__name__
        if isinstance(t, torch.Tensor):
            kind = f"{kind} ({t.dtype}, {t.layout}" \
                   f"{', quantized' if t.is_quantized else ''})"
        raise _error(SafetensorExportPickleError,
                     f"constant {name!r} is a {kind}, which only pickle can "
                     f"hold; safetensors holds dense tensors of its dtypes",
                     ST_ERR_UNSUPPORTED, name)
    return t.detach()


def _entry(t: torch.Tensor, name: str) -> Dict[str, Any]:
    return {"dtype": _dtypes.st_name(t.dtype), "shape": list(t.shape),
            "tensor": name}


def _layout(weights: Mapping[str, Tuple[torch.Tensor, Any]]
            ) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, torch.Tensor]]:
    """The manifest's constants and the tensors to store, from the
    compiler's Weights (name -> (value, properties of the original)):
    constants that are the same view of the same storage are stored once,
    under the first name in sorted order."""
    owner: Dict[Any, str] = {}
    consts: Dict[str, Dict[str, Any]] = {}
    store: Dict[str, torch.Tensor] = {}
    for fqn in sorted(weights):
        value, props = weights[fqn]
        t = _plain(fqn, value)
        key = None
        if getattr(props, "storage_ptr", None):
            key = (props.storage_ptr, props.offset, tuple(props.shape),
                   tuple(props.stride), t.dtype)
        first = owner.setdefault(key, fqn) if key is not None else fqn
        consts[fqn] = _entry(t, first)
        if first == fqn:
            store[fqn] = t.contiguous().cpu()
    return consts, store


def _options(inductor_configs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    options = dict(inductor_configs or {})
    if options.get("aot_inductor.package_constants_in_so"):
        raise _error(SafetensorExportWeightsBakedError,
                     "inductor_configs asks for the weights inside the "
                     "package (aot_inductor.package_constants_in_so=True); "
                     "an export directory keeps them in model.safetensors",
                     ST_ERR_UNSUPPORTED)
    for key, value in _FORCED_CONFIGS.items():
        if key in options and options[key] != value:
            raise _error(SafetensorExportError,
                         f"inductor_configs[{key!r}] must be {value!r} for "
                         f"an export directory, not {options[key]!r}")
        options[key] = value
    return options


def _compile(ep: "torch.export.ExportedProgram", package_path: str,
             options: Dict[str, Any]
             ) -> Mapping[str, Tuple[torch.Tensor, Any]]:
    from torch._inductor import aot_compile
    from torch._inductor.package import package_aoti
    from torch.export.pt2_archive._package_weights import Weights

    gm = ep.module(check_guards=False)
    args, kwargs = ep.example_inputs
    files = aot_compile(gm, args, kwargs, options=options)
    weights = [f for f in files if isinstance(f, Weights)]
    rest = [f for f in files if not isinstance(f, Weights)]
    package_aoti(package_path, rest)
    merged: Dict[str, Tuple[torch.Tensor, Any]] = {}
    for w in weights:
        merged.update(w)
    return merged


def save(module: Union[torch.nn.Module, "torch.export.ExportedProgram"],
         example_args: Tuple[Any, ...], directory: PathLike, *,
         example_kwargs: Optional[Dict[str, Any]] = None,
         dynamic_shapes: Any = None, strict: bool = False,
         inductor_configs: Optional[Dict[str, Any]] = None
         ) -> Dict[str, Any]:
    """Exports module with torch.export, compiles it with AOTInductor
    without its weights, and writes the directory of docs/EXPORT.md:
    model.pt2, model.safetensors, export.json. Returns the manifest.

    module: an nn.Module (exported with example_args / example_kwargs,
    dynamic_shapes and strict as torch.export.export takes them) or an
    ExportedProgram (exported already; example_args is then ignored and may
    be None). inductor_configs: more AOTInductor options; those that keep the
    weights out of the package are set here and may not be overridden. The
    directory is created; files of these three names in it are replaced, the
    manifest last.

    Raises SafetensorExportPickleError (a constant that is not a dense
    tensor of a safetensors dtype), SafetensorExportWeightsBakedError
    (inductor_configs asks for the weights inside), SafetensorExportError
    (another forced option overridden), and whatever torch.export and the
    compiler raise.

    Example::

        >>> manifest = save(model.eval(), (torch.randn(2, 16),), "exported")
        >>> sorted(manifest["constants"])
        ['fc1.bias', 'fc1.weight', 'fc2.bias', 'fc2.weight']
    """
    directory = os.fspath(directory)
    options = _options(inductor_configs)
    if isinstance(module, torch.export.ExportedProgram):
        ep = module
    else:
        ep = torch.export.export(module, tuple(example_args),
                                 example_kwargs, dynamic_shapes=dynamic_shapes,
                                 strict=strict)
    for name, c in ep.constants.items():
        if not isinstance(c, torch.Tensor):
            raise _error(SafetensorExportPickleError,
                         f"constant {name!r} is a {type(c).__name__}, which "
                         f"only pickle can hold", ST_ERR_UNSUPPORTED, name)
    os.makedirs(directory, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".export-", dir=directory)
    try:
        tmp_pkg = os.path.join(work, PACKAGE)
        weights = _compile(ep, tmp_pkg, options)
        consts, store = _layout(weights)
        check_package(tmp_pkg)
        # The package's own list of names is the contract; the compiler's
        # Weights must be exactly that.
        from torch._inductor import aoti_load_package
        fqns = set(aoti_load_package(tmp_pkg).get_constant_fqns())
        if fqns != set(consts):
            raise _error(SafetensorExportManifestError,
                         f"the compiler's constants {sorted(consts)} are not "
                         f"the package's {sorted(fqns)}")
        manifest: Dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "torch": torch.__version__,
            "package": PACKAGE, "weights": WEIGHTS,
            "weights_sha256": "",
            "constants": consts,
        }
        with open(tmp_pkg, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_pkg, os.path.join(directory, PACKAGE))
        wpath = os.path.join(directory, WEIGHTS)
        _io.write_tensors(store, wpath, _metadata_manifest(manifest))
        manifest["weights_sha256"] = _sha256(wpath)
        _write_manifest(directory, manifest)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def save_weights(tensors: Union[Mapping[str, torch.Tensor], torch.nn.Module],
                 directory: PathLike, filename: Optional[PathLike] = None, *,
                 strict: bool = True, missing: str = "error"
                 ) -> Dict[str, Any]:
    """Writes other weights (same architecture, other values: a fine-tuned
    checkpoint) for the package of an export directory, checked against its
    manifest. Returns the manifest.

    tensors: a state_dict (or a module: its state_dict) keyed by the names
    the module has; each constant the package needs is taken under its name
    (a tied constant under the name the package asks for). filename: where
    to write; None replaces the directory's model.safetensors and updates
    export.json's weights_sha256 (the weights file first, the manifest last:
    a crash in between leaves a hash that load() refuses, never a silent
    mix). Another path is written alone, for ``ExportedModel.swap_weights``.
    Written durably (temporary file, fsync, rename) by the C writer, with
    the manifest in its metadata.

    strict: tensors that the package does not take raise
    SafetensorExportUnexpectedError (a tied alias of a constant, same
    storage, is not counted). missing: "error" raises
    SafetensorExportMissingError for a constant that tensors lacks; "keep"
    copies it from the directory's current weights file (for constants that
    no state_dict holds: non-persistent buffers, ``_tensor_constant``
    tensors the compiler lifted out of forward). Wrong dtype or shape:
    SafetensorExportDtypeError / SafetensorExportShapeError. Nothing is
    written when a check fails.

    Example::

        >>> save_weights(finetuned.state_dict(), "exported",
        ...              "exported/finetuned.safetensors", missing="keep")
    """
    if missing not in ("error", "keep"):
        raise _error(SafetensorExportError,
                     f"missing must be 'error' or 'keep', not {missing!r}")
    directory = os.fspath(directory)
    manifest = read_manifest(directory)
    if isinstance(tensors, torch.nn.Module):
        tensors = tensors.state_dict()
    if not isinstance(tensors, Mapping):
        raise _error(SafetensorExportError,
                     f"tensors must be a state_dict or a module, not "
                     f"{type(tensors).__name__}")
    consts = manifest["constants"]
    stored = sorted({c["tensor"] for c in consts.values()})
    store: Dict[str, torch.Tensor] = {}
    kept: Dict[str, torch.Tensor] = {}
    current = os.path.join(directory, manifest["weights"])
    for name in stored:
        t = tensors.get(name)
        if t is None:
            # a tied constant may be given under another of its names
            t = next((tensors[f] for f, c in sorted(consts.items())
                      if c["tensor"] == name and f in tensors), None)
        if t is None and missing == "keep":
            if not kept:
                kept = _open_weights(current, manifest)[0]
            t = kept[name]
        if t is None:
            raise _error(SafetensorExportMissingError,
                         f"tensors has no {name!r}, which the package needs "
                         f"(pass missing='keep' to take it from {current})",
                         ST_ERR_NOT_FOUND, name)
        store[name] = _plain(name, t)
    if strict:
        ptrs = {(t.untyped_storage().data_ptr(), t.storage_offset(),
                 tuple(t.shape)) for t in store.values() if t.numel()}
        for name in sorted(tensors):
            t = tensors[name]
            if name in consts:
                continue
            if isinstance(t, torch.Tensor) and t.numel() and (
                    t.untyped_storage().data_ptr(), t.storage_offset(),
                    tuple(t.shape)) in ptrs:
                continue  # an alias of a stored constant (tied weights)
            raise _error(SafetensorExportUnexpectedError,
                         f"tensors holds {name!r}, which the package does "
                         f"not take (strict=False ignores it)", name=name)
    _check_infos({n: (_dtypes.st_name(t.dtype), list(t.shape))
                  for n, t in store.items()}, manifest, "tensors")
    out = os.fspath(filename) if filename is not None else current
    store = {n: t.contiguous().cpu() for n, t in store.items()}
    _io.write_tensors(store, out, _metadata_manifest(manifest))
    del kept
    if filename is None:
        manifest["weights_sha256"] = _sha256(out)
        _write_manifest(directory, manifest)
    return manifest


# --------------------------------------------------------------------------
# Loading and running
# --------------------------------------------------------------------------

def _unowned_view(t: torch.Tensor) -> torch.Tensor:
    """A tensor over t's bytes that does not keep them alive. AOTInductor
    (torch 2.13) takes a reference to every user-managed constant and never
    drops it, so a tensor handed over as it is would keep its weights file
    mapped until the process ends, one more file per swap. The package gets
    these views; the ExportedModel holds the owners."""
    nbytes = t.numel() * t.element_size()
    if nbytes == 0 or t.device.type != "cpu":
        return t
    raw = (ctypes.c_char * nbytes).from_address(t.data_ptr())
    return torch.frombuffer(raw, dtype=torch.uint8).view(t.dtype).view(t.shape)


class ExportedModel:
    """A loaded export directory: call it like the module it came from.

    Attributes: ``manifest`` (export.json as a dict), ``constant_fqns``
    (the names the package asks for, sorted), ``device``, ``runner`` (torch's
    AOTICompiledModel). The constants are zero-copy views of the weights
    file on the CPU (copy-on-write, so a buffer the program updates never
    reaches the file), copies on another device; the package uses them in
    place (AOTInductor's ``user_managed`` constants) and this object keeps
    them alive: ``runner`` is valid only as long as this object. A weights
    file swapped out is unmapped at the next swap, and the current one when
    this object goes (on the CPU; on another device torch 2.13 keeps every
    set of constants the package was given until the process ends).

    Example::

        >>> m = load("exported")
        >>> y = m(x)
        >>> m.swap_weights("exported/finetuned.safetensors")
    """

    def __init__(self, directory: str, manifest: Dict[str, Any],
                 runner: Any, device: torch.device) -> None:
        self.directory = directory
        self.manifest = manifest
        self.runner = runner
        self.device = device
        self.constant_fqns: List[str] = sorted(manifest["constants"])
        # (tensors, file) now in use, and the set it replaced: kept one
        # swap longer, in case a run in another thread still reads it.
        self._held: Tuple[Dict[str, torch.Tensor], Any] = ({}, None)
        self._replaced: Tuple[Dict[str, torch.Tensor], Any] = ({}, None)

    def _install(self, path: str,
                 opened: Optional[Tuple[Dict[str, torch.Tensor], Any]] = None
                 ) -> None:
        tensors, f = opened or _open_weights(path, self.manifest)
        if not _io.is_cpu(self.device):
            tensors = {n: t.to(self.device) for n, t in tensors.items()}
        cmap = {fqn: _unowned_view(tensors[c["tensor"]])
                for fqn, c in self.manifest["constants"].items()}
        self.runner.load_constants(cmap, check_full_update=True,
                                   user_managed=True)
        # the old constants go only now, and their file one swap later
        self._replaced, self._held = self._held, (tensors, f)

    def swap_weights(self, path: PathLike) -> None:
        """Runs the package with the weights of another file from now on
        (same names, dtypes and shapes; e.g. one that save_weights wrote).
        The file is opened and checked completely first: on any error the
        current weights stay.

        Raises the C core's errors for a file that does not open, and
        SafetensorExportMissingError, SafetensorExportUnexpectedError,
        SafetensorExportDtypeError, SafetensorExportShapeError,
        SafetensorExportManifestError (its metadata names another package).

        Example::

            >>> m.swap_weights("finetuned.safetensors")
        """
        self._install(os.fspath(path))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.runner(*args, **kwargs)

    def __repr__(self) -> str:
        return (f"ExportedModel({self.directory!r}, "
                f"{len(self.constant_fqns)} constants, {self.device})")


def load(directory: PathLike, device: Union[str, int, torch.device] = "cpu",
         *, verify: bool = True) -> ExportedModel:
    """Loads an export directory (docs/EXPORT.md) to run from Python, through
    torch's own ``aoti_load_package``, with the weights of model.safetensors
    read by this package's loader.

    Checked in this order, before any kernel runs: the manifest; the torch
    version (the package runs only with the torch that compiled it); the
    package (no weights inside, nothing pickled); the weights file (opened
    by the C core: a truncated or corrupt file raises the core's error),
    its tensors against the manifest (missing, unexpected, dtype, shape),
    and, with verify, its sha256 against the manifest; then the package's
    own constant names against the manifest.

    device: where the program runs: the device type the package was
    compiled for (its AOTI_DEVICE_KEY metadata), an index of it; the
    weights are copied there (zero-copy views on the CPU).

    Raises SafetensorExportManifestError, SafetensorExportTorchVersionError,
    SafetensorExportWeightsBakedError, SafetensorExportPickleError,
    SafetensorExportMissingError, SafetensorExportUnexpectedError,
    SafetensorExportDtypeError, SafetensorExportShapeError,
    SafetensorExportHashError, the C core's errors.

    Example::

        >>> m = load("exported")
        >>> m(torch.randn(2, 16)).shape
        torch.Size([2, 8])
    """
    directory = os.fspath(directory)
    manifest = read_manifest(directory)
    if manifest["torch"] != torch.__version__:
        raise _error(SafetensorExportTorchVersionError,
                     f"{directory} was compiled by torch {manifest['torch']}; "
                     f"this is torch {torch.__version__}, and an AOTInductor "
                     f"package runs only with the torch that compiled it "
                     f"(export it again with this one)", ST_ERR_UNSUPPORTED,
                     filename=directory)
    package = os.path.join(directory, manifest["package"])
    check_package(package)
    weights = os.path.join(directory, manifest["weights"])
    opened = _open_weights(weights, manifest)  # before the package loads
    if verify:
        digest = _sha256(weights)
        if digest != manifest["weights_sha256"]:
            raise _error(SafetensorExportHashError,
                         f"{weights} has sha256 {digest}, export.json says "
                         f"{manifest['weights_sha256']} (changed or replaced "
                         f"without save_weights)", _ST_ERR_FILE_CHANGED,
                         filename=weights)
    dev = _io.parse_device(device)
    from torch._inductor import aoti_load_package
    index = dev.index if dev.index is not None else -1
    runner = aoti_load_package(package, device_index=index)
    compiled_for = runner.get_metadata().get("AOTI_DEVICE_KEY")
    if compiled_for != dev.type:
        raise _error(SafetensorExportError,
                     f"{package} was compiled for {compiled_for}, not "
                     f"{dev.type}: export it again on that device",
                     ST_ERR_UNSUPPORTED, filename=package)
    fqns = set(runner.get_constant_fqns())
    if fqns != set(manifest["constants"]):
        raise _error(SafetensorExportManifestError,
                     f"{package} asks for constants {sorted(fqns)}, "
                     f"export.json lists {sorted(manifest['constants'])}",
                     filename=package)
    model = ExportedModel(directory, manifest, runner, dev)
    model._install(weights, opened)
    return model
