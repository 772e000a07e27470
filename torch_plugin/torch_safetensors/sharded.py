"""Sharded checkpoints in the Hugging Face layout.

A sharded checkpoint is a directory with ``model-00001-of-00003.safetensors``
(1-based, five digits), ... and ``model.safetensors.index.json``::

    {"metadata": {"total_size": <bytes of tensor data>},
     "weight_map": {"<tensor name>": "model-00001-of-00003.safetensors", ...}}

Every shard carries ``{"format": "pt"}`` in its ``__metadata__`` (some
readers require it). A checkpoint that fits in one shard is written as a
plain ``model.safetensors`` with no index, as ``save_pretrained`` does.

Example::

    >>> save_sharded(model.state_dict(), "ckpt", max_shard_size="200MB")
    >>> state_dict = load_sharded("ckpt")              # a directory
    >>> state_dict = load_sharded("ckpt/model.safetensors.index.json")
    >>> with open_sharded("ckpt") as ckpt:             # lazy, one mapping
    ...     w = ckpt["lm_head.weight"]

Shard names in an index must be plain file names in the index's directory
(no separators, no ``..``): an index cannot make us open other files. A
directory without an index loads its ``model.safetensors`` alone when it has
one, else every ``*.safetensors`` file in it except shards of
``model.safetensors`` (without their index, those are what an interrupted
save left).

Saving is crash-consistent and stores tied weights once: see
:func:`save_sharded`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch

from .errors import (
    ST_ERR_NOT_FOUND,
    SafetensorFileNotFoundError,
    SafetensorKeyError,
    SafetensorTypeError,
    SafetensorValueError,
    make_error,
)
from . import _alias, quant
from ._progress import Progress
from ._io import check_tensor_dict, write_tensors
from .torch import safe_open

__all__ = ["save_sharded", "load_sharded", "open_sharded", "ShardedCheckpoint",
           "parse_size", "INDEX_NAME", "WEIGHTS_NAME"]

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

PathLike = Union[str, "os.PathLike[str]"]

_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}


def parse_size(size: Union[int, str]) -> int:
    """Bytes in ``size``: an int, or a string such as ``"5GB"`` (10**9) or
    ``"500MiB"`` (2**20), as Hugging Face writes them."""
    if isinstance(size, bool):
        raise make_error(SafetensorTypeError, "max_shard_size must be an int "
                         "or a size string such as \"5GB\"")
    if isinstance(size, int):
        if size <= 0:
            raise make_error(SafetensorValueError,
                             f"max_shard_size must be positive, not {size}")
        return size
    if not isinstance(size, str):
        raise make_error(SafetensorTypeError, "max_shard_size must be an int "
                         "or a size string such as \"5GB\"")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)
    if m is None or m.group(2).upper() not in _UNITS:
        raise make_error(SafetensorValueError,
                         f"max_shard_size {size!r} is not a size such as "
                         f"\"5GB\", \"500MB\" or \"1GiB\"")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise make_error(SafetensorValueError,
                         f"max_shard_size must be positive, not {size!r}")
    return n


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _split(tensors: Dict[str, torch.Tensor],
           limit: int) -> List[List[str]]:
    """The shards of a save: _group over the tensors' byte sizes."""
    return _group(((name, _nbytes(t)) for name, t in tensors.items()), limit)


def _group(sizes: Iterable[Tuple[str, int]], limit: int) -> List[List[str]]:
    """Greedy, in the given order: a shard closes when the next tensor
    would push it past the limit; a tensor larger than the limit gets a
    shard of its own. The one rule for save_sharded and the DCP writer."""
    shards: List[List[str]] = []
    current: List[str] = []
    size = 0
    for name, n in sizes:
        if current and size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    if current or not shards:
        shards.append(current)
    return shards


def _shard_name(weights_name: str, k: int, total: int, token: str = "") -> str:
    stem, ext = os.path.splitext(weights_name)
    return f"{stem}-{k:05d}-of-{total:05d}{token}{ext}"


def _fresh_shard_names(weights_name: str, total: int,
                       old: set) -> List[str]:
    """The names of a new checkpoint's total shards: the plain
    model-0000k-of-0000n names, or, when the old checkpoint uses any of
    them, every name with one fresh -<8 hex> token, so that no new shard
    overwrites a file of the old checkpoint before the index is published
    (ARCHITECTURE.md decision 11)."""
    names = [_shard_name(weights_name, k, total) for k in range(1, total + 1)]
    if old.intersection(names):
        token = "-" + secrets.token_hex(4)
        names = [_shard_name(weights_name, k, total, token)
                 for k in range(1, total + 1)]
    return names


def _shard_pattern(weights_name: str) -> "re.Pattern[str]":
    """Shard names of weights_name, with or without a generation token."""
    stem, ext = os.path.splitext(weights_name)
    return re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}(?:-[0-9a-f]{8})?"
                      + re.escape(ext))


#: The index's "metadata" key naming the checkpoint's state file: a
#: tensor-free file of non-tensor values that torch_safetensors.distributed
#: writes beside the shards (docs/DCP.md). It belongs to the checkpoint only
#: through the index.
STATE_KEY = "torch_safetensors.dcp.state"


def _state_name(weights_name: str, token: str) -> str:
    stem, ext = os.path.splitext(weights_name)
    return f"{stem}-dcp-state-{token}{ext}"


def _state_pattern(weights_name: str) -> "re.Pattern[str]":
    """State-file names of weights_name (_state_name's)."""
    stem, ext = os.path.splitext(weights_name)
    return re.compile(re.escape(stem) + r"-dcp-state-[0-9a-f]{8}"
                      + re.escape(ext))


def _directory_files(directory: str,
                     weights_name: str = WEIGHTS_NAME) -> List[str]:
    """The files of the checkpoint in a directory without an index:
    weights_name alone when it is there; else every .safetensors file except
    shards and state files of weights_name, which without their index are
    leftovers of an interrupted save_sharded or DCP save."""
    if os.path.isfile(os.path.join(directory, weights_name)):
        return [weights_name]
    shards = _shard_pattern(weights_name)
    states = _state_pattern(weights_name)
    files = sorted(e for e in os.listdir(directory)
                   if e.endswith(".safetensors")
                   and not shards.fullmatch(e) and not states.fullmatch(e)
                   and os.path.isfile(os.path.join(directory, e)))
    if not files:
        raise make_error(SafetensorFileNotFoundError,
                         f"{directory} holds no .safetensors file and no "
                         f"index", 3)
    return files


#: Test hook: with TORCH_SAFETENSORS_TEST_STOP_AT=N in the environment, a
#: save stops itself (SIGSTOP) at its N-th phase, so that a test can SIGKILL
#: it there. Unset, it costs one dictionary lookup per phase.
_STOP_ENV = "TORCH_SAFETENSORS_TEST_STOP_AT"


class _Phases:
    def __init__(self) -> None:
        stop = os.environ.get(_STOP_ENV)
        self.stop = int(stop) if stop else 0
        self.n = 0

    def __call__(self) -> None:
        self.n += 1
        if self.n == self.stop:
            os.kill(os.getpid(), signal.SIGSTOP)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: str, obj: Any, indent: int = 2, fsync: bool = True) -> None:
    """obj as JSON and a newline at path, atomically: written to path.tmp,
    flushed and fsynced, renamed over path, then the directory fsynced
    (fsync=False: no fsync). The indexes, manifests and configs this package
    writes all go through here."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent)
        fh.write("\n")
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _in_use(directory: str, weights_name: str) -> set:
    """The files the checkpoint now in directory consists of (its index's
    shards, its state file and the index, or its single file)."""
    used = set()
    index_path = os.path.join(directory, weights_name + ".index.json")
    if os.path.isfile(index_path):
        used.add(os.path.basename(index_path))
        try:
            with open(index_path, "rb") as fh:
                index = json.loads(fh.read().decode("utf-8"))
            wm, md = index.get("weight_map"), index.get("metadata")
            if isinstance(wm, dict):
                used.update(v for v in wm.values() if isinstance(v, str))
            if isinstance(md, dict) and isinstance(md.get(STATE_KEY), str):
                used.add(md[STATE_KEY])
        except (OSError, ValueError, AttributeError):
            pass  # a broken index names nothing we must keep
    if os.path.isfile(os.path.join(directory, weights_name)):
        used.add(weights_name)
    return used


def save_sharded(tensors: Dict[str, torch.Tensor], save_directory: PathLike,
                 max_shard_size: Union[int, str] = "5GB",
                 metadata: Optional[Dict[str, str]] = None, *,
                 weights_name: str = WEIGHTS_NAME,
                 fsync: bool = True, policy: str = "tie",
                 progress: Optional[bool] = None) -> List[str]:
    """Saves tensors as Hugging Face shards plus an index, crash-consistently.

    Args:
        tensors: name -> tensor (any dense tensor; non-contiguous and device
            tensors are copied).
        save_directory: created if needed.
        max_shard_size: bytes per shard (int or "5GB"-style string).
        metadata: extra ``__metadata__`` for every shard (``format`` is "pt"
            unless given).
        weights_name: ``model.safetensors``; shards are named from it.
        policy: tensors that share memory (docs/RECORD.md, "Shared memory"):
            ``"tie"`` (default) stores tied weights once, under the first
            name; the index maps only the kept names, as ``save_pretrained``
            does, and every shard records each dropped name as
            ``torch_safetensors.alias.<dropped>`` = ``<kept>`` so that
            :func:`load_sharded` gives it back sharing storage. ``"copy"``
            stores every name; ``"error"`` refuses shared memory.
        progress: a progress bar over the bytes written, shard by shard
            (tqdm, when installed): ``True`` always, ``False`` never,
            ``None`` (default) when standard error is a terminal and the
            save writes more than one shard.

    A save killed at any point leaves a directory that loads as exactly the
    old checkpoint or exactly the new one: new shards get names no file of
    the old checkpoint has (``model-00001-of-00003.safetensors``, or with a
    ``-<8 hex>`` generation token when those are in use), each written
    durably; then the index is published (temporary file, fsync, rename,
    directory fsync), or for a single-file checkpoint ``model.safetensors``
    is renamed into place and the old index removed; only then are the old
    files removed. A checkpoint that fits in one shard is written as a plain
    ``model.safetensors`` with no index, as ``save_pretrained`` does.

    Returns the file names written (shards, then the index if any).
    """
    check_tensor_dict(tensors)
    owner = _alias.resolve(list(tensors), list(tensors.values()), policy)
    kept, dropped = _alias.tie(tensors, owner)
    limit = parse_size(max_shard_size)
    directory = os.fspath(save_directory)
    os.makedirs(directory, exist_ok=True)
    shard_md: Dict[str, str] = {"format": "pt"}
    if metadata:
        shard_md.update(metadata)
    shard_md.update(_alias.alias_metadata(dropped))
    groups = _split(kept, limit)
    phase = _Phases()
    index_name = weights_name + ".index.json"
    index_path = os.path.join(directory, index_name)
    pattern = _shard_pattern(weights_name)
    old = _in_use(directory, weights_name)
    written: List[str] = []
    if len(groups) == 1:
        # The rename publishes it. An old index still present wins for our
        # loader (old checkpoint) until it is removed below; transformers
        # takes model.safetensors first (new checkpoint): each sees one.
        write_tensors({k: kept[k] for k in groups[0]},
                      os.path.join(directory, weights_name), shard_md,
                      fsync=fsync)
        written.append(weights_name)
        phase()
        if os.path.exists(index_path):
            os.remove(index_path)
            if fsync:
                _fsync_dir(directory)
            phase()
    else:
        names = _fresh_shard_names(weights_name, len(groups), old)
        weight_map: Dict[str, str] = {}
        bar = Progress(sum(_nbytes(t) for t in kept.values()),
                       "saving shards", progress)
        with bar:
            for fname, group in zip(names, groups):
                write_tensors({n: kept[n] for n in group},
                              os.path.join(directory, fname), shard_md,
                              fsync=fsync)
                written.append(fname)
                for n in group:
                    weight_map[n] = fname
                bar.update(sum(_nbytes(kept[n]) for n in group))
                phase()
        index = {
            "metadata": {"total_size": sum(_nbytes(t)
                                           for t in kept.values())},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(index_path, index, fsync=fsync)
        written.append(index_name)
        phase()
        # The index is published; a single model.safetensors of the old
        # checkpoint goes first (transformers would take it over the index).
        if weights_name in old:
            os.remove(os.path.join(directory, weights_name))
            if fsync:
                _fsync_dir(directory)
            phase()
    keep = set(written)
    removed = False
    for entry in sorted(os.listdir(directory)):
        if entry not in keep and (entry in old or pattern.fullmatch(entry)):
            if entry in (weights_name, index_name):
                continue  # handled above; never the new checkpoint's files
            os.remove(os.path.join(directory, entry))
            removed = True
            phase()
    if removed and fsync:
        _fsync_dir(directory)
    return written


def _find_index(directory: str) -> Optional[str]:
    preferred = os.path.join(directory, INDEX_NAME)
    if os.path.isfile(preferred):
        return preferred
    found = sorted(e for e in os.listdir(directory)
                   if e.endswith(".safetensors.index.json"))
    if len(found) > 1:
        raise make_error(SafetensorValueError,
                         f"{directory} holds several indexes ({found}); pass "
                         f"the one to load")
    return os.path.join(directory, found[0]) if found else None


def _check_shard_name(fname: Any, index_path: str) -> str:
    if (not isinstance(fname, str) or not fname or fname in (".", "..")
            or "/" in fname or "\\" in fname or "\x00" in fname):
        raise make_error(SafetensorValueError,
                         f"index {index_path} names a shard {fname!r} that "
                         f"is not a plain file name in its directory")
    return fname


def _read_index(index_path: str) -> Tuple[str, Dict[str, str], Dict[str, Any]]:
    try:
        with open(index_path, "rb") as fh:
            index = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        raise make_error(SafetensorFileNotFoundError,
                         f"no index file {index_path}", 3) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise make_error(SafetensorValueError,
                         f"index {index_path} is not valid JSON: {e}") from None
    if not isinstance(index, dict) or not isinstance(
            index.get("weight_map"), dict):
        raise make_error(SafetensorValueError,
                         f"index {index_path} has no \"weight_map\" object")
    weight_map = index["weight_map"]
    for name, fname in weight_map.items():
        _check_shard_name(fname, index_path)
    md = index.get("metadata")
    return (os.path.dirname(os.path.abspath(index_path)), weight_map,
            md if isinstance(md, dict) else {})


class ShardedCheckpoint(Mapping):
    """A sharded (or single-file) checkpoint as one lazy, read-only mapping
    of tensor name -> tensor. Shards are opened once, on first use.

    Use as a context manager, or call close(); tensors already returned stay
    valid after closing (their mappings live as long as they do).
    """

    def __init__(self, path: PathLike,
                 device: Union[str, int, torch.device] = "cpu", *,
                 backend: str = "mmap") -> None:
        path = os.fspath(path)
        self._device = device
        self._backend = backend
        self._handles: Dict[str, safe_open] = {}
        self._alias_cache: Optional[Dict[str, str]] = None
        self.index_metadata: Dict[str, Any] = {}
        if os.path.isdir(path):
            index_path = _find_index(path)
            if index_path is None:
                self._from_directory(path)
                return
            path = index_path
        if path.endswith(".json"):
            self._dir, self._map, self.index_metadata = _read_index(path)
            for fname in sorted(set(self._map.values())):
                if not os.path.isfile(os.path.join(self._dir, fname)):
                    raise make_error(
                        SafetensorFileNotFoundError,
                        f"shard {fname} named by {path} does not exist", 3)
        else:
            self._dir = os.path.dirname(os.path.abspath(path))
            fname = os.path.basename(path)
            f = self._handle(fname)
            self._map = {k: fname for k in f.offset_keys()}

    def _from_directory(self, directory: str) -> None:
        """No index: the files _directory_files names."""
        self._dir = os.path.abspath(directory)
        files = _directory_files(self._dir)
        if files == [WEIGHTS_NAME]:
            self._map = {k: WEIGHTS_NAME
                         for k in self._handle(WEIGHTS_NAME).offset_keys()}
            return
        self._map = {}
        for fname in files:
            for k in self._handle(fname).offset_keys():
                if k in self._map:
                    raise make_error(
                        SafetensorValueError,
                        f"tensor {k!r} is in both {self._map[k]} and {fname}",
                        tensor_name=k)
                self._map[k] = fname

    def _handle(self, fname: str) -> safe_open:
        h = self._handles.get(fname)
        if h is None:
            h = safe_open(os.path.join(self._dir, fname), framework="pt",
                          device=self._device, backend=self._backend)
            self._handles[fname] = h
        return h

    def _aliases(self) -> Dict[str, str]:
        """Dropped tied name -> kept name, as save_sharded records them."""
        if self._alias_cache is None:
            md = self.metadata() or {}
            self._alias_cache = {
                k[len(_alias.ALIAS_KEY_PREFIX):]: v for k, v in md.items()
                if k.startswith(_alias.ALIAS_KEY_PREFIX) and v in self._map}
        return self._alias_cache

    def __getitem__(self, name: str) -> torch.Tensor:
        fname = self._map.get(name)
        if fname is None and name in self._aliases():
            return _alias.share(self[self._aliases()[name]])
        if fname is None:
            raise make_error(SafetensorKeyError,
                             f"checkpoint does not contain tensor {name}",
                             ST_ERR_NOT_FOUND, tensor_name=name)
        f = self._handle(fname)
        try:
            return f.get_tensor(name)
        except SafetensorKeyError:
            raise make_error(SafetensorKeyError,
                             f"the index puts tensor {name} in {fname}, "
                             f"which does not contain it",
                             ST_ERR_NOT_FOUND, tensor_name=name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, name: object) -> bool:
        return name in self._map

    @property
    def weight_map(self) -> Dict[str, str]:
        """name -> shard file name."""
        return dict(self._map)

    def get_slice(self, name: str):
        """The lazy slice handle of one tensor (see safe_open.get_slice)."""
        if name not in self._map:
            raise make_error(SafetensorKeyError,
                             f"checkpoint does not contain tensor {name}",
                             ST_ERR_NOT_FOUND, tensor_name=name)
        return self._handle(self._map[name]).get_slice(name)

    def metadata(self, shard: Optional[str] = None) -> Optional[Dict[str, str]]:
        """The ``__metadata__`` of one shard (default: the first)."""
        if shard is None:
            shard = sorted(set(self._map.values()))[0] if self._map else None
            if shard is None:
                return None
        return self._handle(shard).metadata()

    def to_dict(self, progress: Optional[bool] = False
                ) -> Dict[str, torch.Tensor]:
        """Every tensor, shard by shard (file order inside a shard).
        ``progress``: a bar over the shards (see :func:`load_sharded`)."""
        out: Dict[str, torch.Tensor] = {}
        wanted: Dict[str, List[str]] = {}
        for name, fname in self._map.items():
            wanted.setdefault(fname, []).append(name)
        if progress is None and len(wanted) < 2:
            progress = False
        with Progress(len(wanted), "loading shards", progress,
                      unit="shard") as bar:
            for fname in sorted(wanted):
                self._load_shard(fname, wanted[fname], out)
                bar.update(1)
        out = {name: out[name] for name in self._map}
        return _alias.restore(out, self.metadata())

    def _load_shard(self, fname: str, wanted: List[str],
                    out: Dict[str, torch.Tensor]) -> None:
        """The wanted tensors of one shard into out."""
        f = self._handle(fname)
        names = set(wanted)
        missing = names.difference(f.offset_keys())
        if missing:
            name = sorted(missing)[0]
            raise make_error(SafetensorKeyError,
                             f"the index puts tensor {name} in {fname}, "
                             f"which does not contain it",
                             ST_ERR_NOT_FOUND, tensor_name=name)
        for name, t in f.get_tensors().items():
            if name in names:
                out[name] = t

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()

    def __enter__(self) -> "ShardedCheckpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_sharded(path: PathLike,
                 device: Union[str, int, torch.device] = "cpu", *,
                 backend: str = "mmap") -> ShardedCheckpoint:
    """Opens an index, a directory or a single file as one lazy mapping."""
    return ShardedCheckpoint(path, device, backend=backend)


def load_sharded(path: PathLike,
                 device: Union[str, int, torch.device] = "cpu", *,
                 backend: str = "mmap",
                 progress: Optional[bool] = None,
                 dequantize: Optional[torch.dtype] = None
                 ) -> Dict[str, torch.Tensor]:
    """Loads every tensor of a sharded checkpoint into one dict; tied names
    that save_sharded stored once come back sharing the kept tensor's
    storage.

    path: ``model.safetensors.index.json``, a directory (its index, or else
    every ``*.safetensors`` file in it), or a single file.
    progress: a progress bar over the shards (tqdm, when installed):
    ``True`` always, ``False`` never, ``None`` (default) when standard error
    is a terminal and there is more than one shard.
    dequantize: ``torch.bfloat16``, ``torch.float16`` or ``torch.float32``
    turns every quantized group into one dense tensor under its unquantized
    name, as :func:`torch_safetensors.torch.load_file` does (docs/QUANT.md);
    a group may span shards.

    Example::

        state_dict = load_sharded("gpt2-checkpoint/")
    """
    with ShardedCheckpoint(path, device, backend=backend) as ckpt:
        if dequantize is not None:
            return quant.dequantize_checkpoint(ckpt, progress, dequantize)
        return ckpt.to_dict(progress)
