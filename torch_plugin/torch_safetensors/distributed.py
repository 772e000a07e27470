"""A torch.distributed.checkpoint (DCP) backend that reads and writes
Hugging Face safetensors checkpoints.

:class:`SafetensorsStorageWriter` and :class:`SafetensorsStorageReader`
implement DCP's ``StorageWriter`` / ``StorageReader``, so
``torch.distributed.checkpoint.save``, ``load`` and ``async_save`` work with
them unchanged::

    >>> import torch.distributed.checkpoint as dcp
    >>> from torch_safetensors.distributed import (
    ...     SafetensorsStorageWriter, SafetensorsStorageReader)
    >>> dcp.save(model.state_dict(), storage_writer=SafetensorsStorageWriter("ckpt"))
    >>> state_dict = model.state_dict()          # DTensors, any placement
    >>> dcp.load(state_dict, storage_reader=SafetensorsStorageReader("ckpt"))

What a save writes (docs/DCP.md is the specification): the consolidated
Hugging Face layout, full tensors in ``model-0000k-of-0000n.safetensors``
plus ``model.safetensors.index.json``, so ``from_pretrained``, the reference
``safe_open`` and torch's ``HuggingFaceStorageReader`` read it as is. There
is no second consolidation pass: in ``prepare_global_plan`` the coordinator
sees every rank's chunks with the full shapes and dtypes, asks the C writer
for each shard's exact header bytes (``_C.layout``: the same bytes
``save_file`` writes for those tensors), creates the shard files under
temporary names, and every rank then writes its chunks straight to their
final byte positions (positioned writes in C with the GIL released,
``_C.pwrite_runs``; a chunk that is not contiguous in the row-major full
tensor is one write per contiguous run) and fsyncs them. ``finish`` publishes the checkpoint crash-consistently
(ARCHITECTURE decision 11): fsync, rename the shards into place, write the
index last, fsync the directory, then remove the old checkpoint's files.

Non-tensor values (step counters, scheduler state, ...) must survive a JSON
round trip; they are stored as JSON text in the ``__metadata__`` of a small
tensor-free file the index names. Anything that would need pickle is refused
(:class:`SafetensorNotSerializableError`); nothing is ever unpickled from
disk.

Reading takes any Hugging Face checkpoint (one file, shards plus index, a
directory, or the per-rank files of torch's ``HuggingFaceStorageWriter``):
each rank reads only the chunks its state dict asks for, through the C copy
engine, straight into the destination tensor when its memory is contiguous.
:attr:`SafetensorsStorageReader.bytes_read` counts the bytes a rank read.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import os
import re
import secrets
import socket
import threading
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import (
    StorageReader,
    StorageWriter,
    WriteResult,
)
from torch.futures import Future

from . import _C, _dtypes
from ._io import check_tensor_kind
from .errors import (
    ST_ERR_NOT_FOUND,
    ST_ERR_UNSUPPORTED,
    SafetensorError,
    SafetensorFileNotFoundError,
    SafetensorTypeError,
    SafetensorValueError,
    make_error,
)
from .sharded import (
    WEIGHTS_NAME,
    _check_shard_name,
    _find_index,
    _fsync_dir,
    _in_use,
    _directory_files,
    _fresh_shard_names,
    _group,
    _state_name,
    _state_pattern,
    _write_json,
    STATE_KEY as _STATE_KEY,
    _Phases,
    _read_index,
    _shard_pattern,
    parse_size,
)

__all__ = [
    "SafetensorsStorageWriter", "SafetensorsStorageReader",
    "SafetensorNotSerializableError", "SafetensorUnsupportedDtypeError",
    "SafetensorCheckpointError", "KEY_PREFIX", "VERSION_KEY", "STATE_KEY",
    "STATE_PREFIX", "FORMAT_VERSION",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Every __metadata__ key this module adds starts with this (docs/DCP.md).
KEY_PREFIX = "torch_safetensors.dcp."
#: In every shard and the state file: the version of this layout, "1".
VERSION_KEY = KEY_PREFIX + "version"
#: In the index's "metadata" object: the name of the state file.
STATE_KEY = _STATE_KEY  # "torch_safetensors.dcp.state", named in sharded.py
#: In the state file's __metadata__: one key per non-tensor value, + its name.
STATE_PREFIX = KEY_PREFIX + "state."
FORMAT_VERSION = "1"

#: torch's HuggingFaceStorageWriter records a rank file's chunk offsets here.
_HF_SHARDING_KEY = "DCP_SHARDING_INFO"
_HF_OFFSETS_KEY = "saved_offsets"

#: Reads of slices whose destination is not contiguous go through scratch
#: tensors; at most this many scratch bytes are alive at once.
_SCRATCH_BUDGET = 256 << 20


class SafetensorNotSerializableError(SafetensorTypeError):
    """A non-tensor value of a state dict that does not survive a JSON round
    trip (it would need pickle, which this backend never writes)."""


class SafetensorUnsupportedDtypeError(SafetensorTypeError):
    """A dtype with no counterpart: a torch dtype safetensors cannot store,
    or a file dtype this torch cannot load (F6, an odd F4 shape, a dtype
    newer than this torch)."""


class SafetensorCheckpointError(SafetensorValueError):
    """A checkpoint or a save plan this backend cannot use: chunks that do
    not tile their tensor, a tensor in two files, a missing state file."""


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------

def _st_dtype(fqn: str, dtype: torch.dtype) -> str:
    name = _dtypes.st_name(dtype)
    if name is None:
        raise make_error(SafetensorUnsupportedDtypeError,
                         f"cannot save `{fqn}`: dtype {dtype} has no "
                         f"safetensors counterpart", ST_ERR_UNSUPPORTED,
                         tensor_name=fqn)
    return name


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _strides(shape: Sequence[int]) -> List[int]:
    out = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        out[d] = out[d + 1] * int(shape[d + 1])
    return out


def _runs(size: Sequence[int], offsets: Sequence[int],
          lengths: Sequence[int]) -> Tuple[int, torch.Tensor]:
    """The contiguous runs of a box (offsets, lengths) of a row-major tensor
    of size: (elements per run, int64 tensor of the element offset of each
    run in the tensor), in the box's own row-major order (ascending), which
    is the order of the runs in the box's contiguous copy. Trailing
    dimensions the box covers whole merge into one run."""
    rank = len(size)
    if rank == 0:
        return 1, torch.zeros(1, dtype=torch.int64)
    if _numel(lengths) == 0:
        return 0, torch.empty(0, dtype=torch.int64)
    j = rank - 1
    while j > 0 and int(lengths[j]) == int(size[j]) and int(offsets[j]) == 0:
        j -= 1
    strides = _strides(size)
    run = int(lengths[j]) * strides[j]
    starts = torch.tensor([sum(int(offsets[d]) * strides[d]
                               for d in range(rank))], dtype=torch.int64)
    for d in range(j - 1, -1, -1):
        step = torch.arange(int(lengths[d]), dtype=torch.int64) * strides[d]
        starts = (step.unsqueeze(1) + starts.unsqueeze(0)).reshape(-1)
    return run, starts


def _json_value(fqn: str, value: Any) -> str:
    """value as compact JSON text, when it comes back equal and of the same
    types; else SafetensorNotSerializableError."""
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":"))
        back = json.loads(text)
    except (TypeError, ValueError) as e:
        raise make_error(SafetensorNotSerializableError,
                         f"cannot save `{fqn}`: a {type(value).__name__} is "
                         f"not JSON ({e}); this backend never pickles, so "
                         f"non-tensor state must be JSON values (dict with "
                         f"str keys, list, str, int, float, bool, None)",
                         ST_ERR_UNSUPPORTED, tensor_name=fqn) from None
    if not _same_json(back, value):
        raise make_error(SafetensorNotSerializableError,
                         f"cannot save `{fqn}`: a {type(value).__name__} does "
                         f"not come back from JSON as it was (tuples, non-str "
                         f"dict keys and subclasses change); this backend "
                         f"never pickles", ST_ERR_UNSUPPORTED, tensor_name=fqn)
    return text


def _same_json(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return (list(a) == list(b)
                and all(_same_json(a[k], b[k]) for k in a))
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y)
                                        for x, y in zip(a, b))
    return a == b


def _host_tag() -> str:
    """This host (and boot), so that temporary files of a save running on
    another host sharing the filesystem are never taken for ours."""
    ident = socket.gethostname()
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            ident += fh.read().strip()
    except OSError:
        pass
    return f"{zlib.crc32(ident.encode('utf-8', 'replace')):08x}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_pattern() -> "re.Pattern[str]":
    return re.compile(r"\.(.+)\.dcp-([0-9a-f]{8})-(\d+)-([0-9a-f]{8})\.tmp")


def _remove_stale_tmps(directory: str) -> None:
    """Temporary shards of killed saves from this host (dead pid)."""
    tag = _host_tag()
    pattern = _tmp_pattern()
    for entry in os.listdir(directory):
        m = pattern.fullmatch(entry)
        if m is None or m.group(2) != tag or _pid_alive(int(m.group(3))):
            continue
        try:
            os.remove(os.path.join(directory, entry))
        except FileNotFoundError:
            pass


#: Temporary shards this process created as a coordinator, not yet renamed
#: into place: path -> a weak reference to the writer whose save made them.
#: A save that failed after they were created (on any rank) leaves them;
#: they are removed when that writer starts its next save (reset) or, once
#: the writer is gone, by the next save of this process. A writer still
#: alive may be in the middle of its own save (async_save), so its files are
#: never touched by another writer.
_PENDING: Dict[str, "weakref.ReferenceType[Any]"] = {}
_PENDING_LOCK = threading.Lock()


def _drop_pending(owner: Any = None) -> None:
    """Removes the pending temporaries of owner, and of writers that are
    gone."""
    with _PENDING_LOCK:
        for path, ref in list(_PENDING.items()):
            writer = ref()
            if writer is None or writer is owner:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                del _PENDING[path]


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where one write item's chunk goes: the (temporary) shard path, the
    byte offset of its full tensor's data in that file, the full torch
    shape and the element size."""
    path: str
    file: str
    base: int
    size: Tuple[int, ...]
    itemsize: int


@dataclasses.dataclass(frozen=True)
class _StoredChunk:
    """Where a stored chunk is read from: a file (relative to the
    checkpoint's directory), the tensor's name in it, its file dtype, and
    the chunk's offset in the full tensor."""
    file: str
    name: str
    dtype: str
    offsets: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _StoredValue:
    """A non-tensor value, as its JSON text."""
    text: str


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------

class SafetensorsStorageWriter(StorageWriter):
    """DCP StorageWriter that writes a consolidated Hugging Face checkpoint.

    Args:
        path: the checkpoint directory (created if needed); ``dcp.save``'s
            ``checkpoint_id`` replaces it when given.
        max_shard_size: bytes per shard file, an int or a string such as
            ``"5GB"`` (as ``save_pretrained``); a tensor larger than that
            gets a shard of its own.
        metadata: extra ``__metadata__`` (str -> str) for every shard; keys
            may not start with ``torch_safetensors.``. ``format`` is ``pt``
            unless given.
        fsync: make the checkpoint durable (every rank fsyncs what it wrote,
            the coordinator the files and the directory). False only for
            scratch checkpoints: the publish order stays the same.
        weights_name: ``model.safetensors``; shards and the index are named
            from it.
        threads: files a rank writes at once, one thread each (default 4;
            the writes to one file stay on one thread).

    Example::

        >>> writer = SafetensorsStorageWriter("ckpt", max_shard_size="2GB")
        >>> dcp.save({"model": model.state_dict(), "step": 100},
        ...          storage_writer=writer)

    The result loads with ``transformers.AutoModel.from_pretrained("ckpt")``
    (names are the flattened DCP names), ``safetensors.safe_open``,
    :func:`torch_safetensors.sharded.load_sharded` and
    :class:`SafetensorsStorageReader`. Non-tensor values must be JSON values
    (:class:`SafetensorNotSerializableError` otherwise). DCP's plan caching
    (``DefaultSavePlanner(enable_plan_caching=True)``) is not supported:
    every save lays out fresh files.
    """

    def __init__(self, path: PathLike, *,
                 max_shard_size: Union[int, str] = "5GB",
                 metadata: Optional[Dict[str, str]] = None,
                 fsync: bool = True,
                 weights_name: str = WEIGHTS_NAME,
                 threads: int = 4) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.max_shard_size = parse_size(max_shard_size)
        self.metadata = _check_user_metadata(metadata)
        self.fsync = bool(fsync)
        if not isinstance(weights_name, str) or not weights_name.endswith(
                ".safetensors") or os.path.basename(weights_name) != \
                weights_name or weights_name.startswith("."):
            raise make_error(SafetensorValueError,
                             f"weights_name must be a plain file name ending "
                             f"in .safetensors, not {weights_name!r}")
        self.weights_name = weights_name
        if isinstance(threads, bool) or not isinstance(threads, int) \
                or threads < 1:
            raise make_error(SafetensorValueError,
                             f"threads must be a positive int, not {threads!r}")
        self.threads = threads
        self.is_coordinator = False
        self.rank = 0
        self.save_id: Optional[str] = None
        self._layout: Optional[Dict[str, Any]] = None
        self._phases: Optional[_Phases] = None

    # -- the StorageWriter interface ---------------------------------------

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        """Starts a new save; checkpoint_id (a directory) replaces path."""
        if checkpoint_id is not None:
            self.path = os.fspath(checkpoint_id)
        self.save_id = secrets.token_hex(8)
        self._layout = None
        self._phases = None
        _drop_pending(self)  # what this writer's failed save left

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        """Takes this rank's role (newer torch also passes rank=,
        use_collectives=; older torch only is_coordinator)."""
        self.is_coordinator = bool(is_coordinator)
        self.rank = int(kwargs.get("rank", 0))

    def storage_meta(self) -> Optional[StorageMeta]:
        if self.save_id is None:
            self.save_id = secrets.token_hex(8)
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Refuses tensors whose dtype safetensors cannot store, before any
        file is created."""
        for item in plan.items:
            if item.type != WriteItemType.BYTE_IO and item.tensor_data:
                td = item.tensor_data
                name = _st_dtype(item.index.fqn, td.properties.dtype)
                if len(td.size) == 0 and name in _dtypes.RESHAPED:
                    raise make_error(
                        SafetensorUnsupportedDtypeError,
                        f"cannot save `{item.index.fqn}`: a 0-dim "
                        f"{td.properties.dtype} tensor has no {name} shape "
                        f"that loads back as 0-dim (give it a dimension)",
                        ST_ERR_UNSUPPORTED, tensor_name=item.index.fqn)
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        """Coordinator: lays out the shards from every rank's chunks, creates
        them under temporary names with their final header bytes, and tells
        each rank where its chunks go."""
        tensors: Dict[str, Tuple[torch.dtype, Tuple[int, ...]]] = {}
        chunks: Dict[str, int] = {}
        values: List[str] = []
        for plan in plans:
            for item in plan.items:
                fqn = item.index.fqn
                if item.type == WriteItemType.BYTE_IO:
                    if fqn not in values:
                        values.append(fqn)
                    continue
                td = item.tensor_data
                if td is None or td.chunk is None:
                    raise make_error(SafetensorCheckpointError,
                                     f"write item `{fqn}` has no tensor data",
                                     tensor_name=fqn)
                spec = (td.properties.dtype, tuple(int(d) for d in td.size))
                if tensors.setdefault(fqn, spec) != spec:
                    raise make_error(SafetensorCheckpointError,
                                     f"ranks disagree on `{fqn}`: "
                                     f"{tensors[fqn]} and {spec}",
                                     tensor_name=fqn)
                chunks[fqn] = chunks.get(fqn, 0) + _numel(td.chunk.sizes)
        for fqn, (dtype, size) in tensors.items():
            _st_dtype(fqn, dtype)
            if chunks[fqn] != _numel(size):
                raise make_error(SafetensorCheckpointError,
                                 f"the chunks of `{fqn}` hold {chunks[fqn]} "
                                 f"elements, its size {list(size)} needs "
                                 f"{_numel(size)}", tensor_name=fqn)
        clash = set(values).intersection(tensors)
        if clash:
            name = sorted(clash)[0]
            raise make_error(SafetensorCheckpointError,
                             f"`{name}` is both a tensor and a value",
                             tensor_name=name)
        directory = self.path
        os.makedirs(directory, exist_ok=True)
        _drop_pending()
        _remove_stale_tmps(directory)
        layout = self._lay_out(directory, tensors)
        layout["values"] = values
        self._layout = layout
        self._phase()
        placements = layout["placements"]
        out = []
        for plan in plans:
            mine = {}
            for item in plan.items:
                if item.type != WriteItemType.BYTE_IO:
                    mine[item.index.fqn] = placements[item.index.fqn]
            out.append(dataclasses.replace(plan, storage_data={
                "save_id": self.save_id, "placements": mine}))
        return out

    def write_data(self, plan: SavePlan,
                   planner: SavePlanner) -> "Future[List[WriteResult]]":
        """Writes this rank's chunks at their final positions (positioned,
        gathered writes, one thread per file), fsyncs them, and returns the
        non-tensor values as JSON text for the coordinator."""
        placements: Dict[str, _Placement] = (
            plan.storage_data or {}).get("placements", {})
        results: List[WriteResult] = []
        writes: Dict[str, List[_Runs]] = {}
        owners: List[torch.Tensor] = []
        for item in plan.items:
            fqn = item.index.fqn
            if item.type == WriteItemType.BYTE_IO:
                value = _lookup_value(planner, item)
                text = _json_value(fqn, value)
                results.append(WriteResult(index=item.index,
                                           size_in_bytes=len(text),
                                           storage_data=_StoredValue(text)))
                continue
            where = placements.get(fqn)
            if where is None:
                raise make_error(SafetensorCheckpointError,
                                 f"the global plan placed no `{fqn}`",
                                 tensor_name=fqn)
            t = planner.resolve_data(item)
            if not isinstance(t, torch.Tensor):
                raise make_error(SafetensorCheckpointError,
                                 f"`{fqn}` resolved to a "
                                 f"{type(t).__name__}, not a tensor",
                                 tensor_name=fqn)
            t = t.detach()
            check_tensor_kind(fqn, t)
            if t.device.type != "cpu":
                t = t.to("cpu")
            t = t.contiguous()
            chunk = item.tensor_data.chunk
            run, starts = _runs(where.size, chunk.offsets, chunk.sizes)
            nbytes = run * where.itemsize
            if nbytes:
                # owners keeps the tensor alive until the writes are done
                owners.append(t)
                at = starts * where.itemsize + where.base
                writes.setdefault(where.path, []).append(
                    (int(at[0]), t.data_ptr(), nbytes, at))
            results.append(WriteResult(
                index=item.index,
                size_in_bytes=len(starts) * nbytes,
                storage_data=(where.file, tuple(chunk.offsets))))
        self._pwrite_all(writes)
        del owners
        fut: Future = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata,
               results: List[List[WriteResult]]) -> None:
        """Coordinator: publishes the checkpoint (fsync, rename the shards
        into place, the state file, the index last, fsync the directory),
        then removes the old checkpoint's files."""
        layout = self._layout
        if layout is None:
            raise make_error(SafetensorCheckpointError,
                             "finish() without prepare_global_plan() on "
                             "this writer (the coordinator lays out the "
                             "files)")
        directory = self.path
        values: Dict[str, str] = {}
        for rank_results in results:
            for r in rank_results:
                if isinstance(r.storage_data, _StoredValue):
                    values[r.index.fqn] = r.storage_data.text
        phase = self._phase
        files: List[Tuple[str, str]] = layout["files"]  # (tmp, final)
        for tmp, _ in files:
            if self.fsync:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        phase()
        for tmp, final in files:
            os.replace(tmp, os.path.join(directory, final))
            with _PENDING_LOCK:
                _PENDING.pop(tmp, None)
            phase()
        if self.fsync:
            _fsync_dir(directory)
        written = [final for _, final in files]
        index_md: Dict[str, Any] = {"total_size": layout["total_size"]}
        if values:
            state_name = layout["state_name"]
            md = {"format": "pt", VERSION_KEY: FORMAT_VERSION}
            md.update({STATE_PREFIX + k: v for k, v in values.items()})
            w = _C.Writer()
            w.declare_metadata()
            for k in sorted(md):
                w.add_metadata(k, md[k])
            w.write_path(os.path.join(directory, state_name),
                         fsync=self.fsync)
            written.append(state_name)
            index_md[STATE_KEY] = state_name
            phase()
        index = {"metadata": index_md,
                 "weight_map": dict(sorted(layout["weight_map"].items()))}
        index_name = self.weights_name + ".index.json"
        index_path = os.path.join(directory, index_name)
        _write_json(index_path, index, fsync=self.fsync)
        written.append(index_name)
        phase()
        old: set = layout["old"]
        if self.weights_name in old:
            # transformers takes model.safetensors over an index: it goes
            # first, now that the index is published.
            os.remove(os.path.join(directory, self.weights_name))
            if self.fsync:
                _fsync_dir(directory)
            phase()
        keep = set(written)
        shards = _shard_pattern(self.weights_name)
        states = _state_pattern(self.weights_name)
        removed = False
        for entry in sorted(os.listdir(directory)):
            if entry in keep or entry in (self.weights_name, index_name):
                continue
            if entry in old or shards.fullmatch(entry) \
                    or states.fullmatch(entry):
                os.remove(os.path.join(directory, entry))
                removed = True
                phase()
        if removed and self.fsync:
            _fsync_dir(directory)
        self._layout = None
        self._phases = None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]
                               ) -> bool:
        """A local directory path (existing or not) is a checkpoint id."""
        if not isinstance(checkpoint_id, (str, os.PathLike)):
            return False
        path = os.fspath(checkpoint_id)
        return "://" not in str(path) and not os.path.isfile(path)

    # -- internals ---------------------------------------------------------

    def _phase(self) -> None:
        """A point where the crash tests stop the save (sharded._Phases:
        TORCH_SAFETENSORS_TEST_STOP_AT), counted over the whole save."""
        if self._phases is None:
            self._phases = _Phases()
        self._phases()

    def _lay_out(self, directory: str,
                 tensors: Dict[str, Tuple[torch.dtype, Tuple[int, ...]]]
                 ) -> Dict[str, Any]:
        sizes = [(fqn, _numel(shape) * dtype.itemsize)
                 for fqn, (dtype, shape) in tensors.items()]
        total = sum(n for _, n in sizes)
        groups = _group(sizes, self.max_shard_size)
        old = _in_use(directory, self.weights_name)
        names = _fresh_shard_names(self.weights_name, len(groups), old)
        state_name = _state_name(self.weights_name, secrets.token_hex(4))
        shard_md = {"format": "pt"}
        shard_md.update(self.metadata)
        shard_md[VERSION_KEY] = FORMAT_VERSION
        tag = _host_tag()
        files: List[Tuple[str, str]] = []
        placements: Dict[str, _Placement] = {}
        weight_map: Dict[str, str] = {}
        for fname, group in zip(names, groups):
            entries = []
            for fqn in group:
                dtype, shape = tensors[fqn]
                entries.append((fqn, _dtypes.st_name(dtype),
                                _dtypes.file_shape(dtype, shape)))
            header, file_size = _C.layout(entries, shard_md)
            table = json.loads(header[8:].decode("utf-8"))
            tmp = os.path.join(
                directory, f".{fname}.dcp-{tag}-{os.getpid()}-"
                           f"{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with _PENDING_LOCK:
                _PENDING[tmp] = weakref.ref(self)
            try:
                os.ftruncate(fd, file_size)
                _pwrite_full(fd, [memoryview(header)], 0)
            finally:
                os.close(fd)
            files.append((tmp, fname))
            for fqn in group:
                dtype, shape = tensors[fqn]
                placements[fqn] = _Placement(
                    tmp, fname, len(header) + int(table[fqn]["data_offsets"][0]),
                    shape, dtype.itemsize)
                weight_map[fqn] = fname
        return {"files": files, "placements": placements,
                "weight_map": weight_map, "total_size": total, "old": old,
                "state_name": state_name}

    def _pwrite_all(self, writes: Dict[str, List[_Runs]]) -> None:
        """Every chunk's runs written at their file offsets, in C with the
        GIL released (``_C.pwrite_runs``), one thread per file (up to
        ``threads`` files at once); then each file is fsynced."""
        fds: Dict[str, int] = {}
        try:
            for path in writes:
                fds[path] = os.open(path, os.O_WRONLY)
            # One thread per file: writes to one file serialize on its inode
            # lock, so more threads on one file only add contention
            # (benchmarks/RESULTS.md, dcp-notes: a Shard(1) save, one write
            # per row, took 5.6 s with four threads on its file against
            # 4.0 s with one).
            jobs = [(fds[path], sorted(chunks, key=lambda c: c[0]))
                    for path, chunks in writes.items()]
            if len(jobs) <= 1 or self.threads == 1:
                for job in jobs:
                    _write_runs(*job)
            else:
                with ThreadPoolExecutor(min(self.threads, len(jobs))) as ex:
                    for f in [ex.submit(_write_runs, *job) for job in jobs]:
                        f.result()
            self._phase()
            if self.fsync:
                for fd in fds.values():
                    os.fsync(fd)
        finally:
            for fd in fds.values():
                os.close(fd)


#: One chunk's writes: (first file offset, address of its contiguous bytes,
#: bytes per run, int64 tensor of each run's file offset).
_Runs = Tuple[int, int, int, torch.Tensor]


def _write_runs(fd: int, chunks: List[_Runs]) -> None:
    for _, address, run, at in chunks:
        offsets = (ctypes.c_char * (at.numel() * 8)).from_address(
            at.data_ptr())
        _C.pwrite_runs(fd, address, run, offsets)


def _pwrite_full(fd: int, views: List[memoryview], offset: int) -> None:
    """os.pwritev until every byte is written (short writes continue)."""
    views = [v for v in views if len(v)]
    while views:
        n = os.pwritev(fd, views, offset)
        if n <= 0:
            raise make_error(SafetensorError, "pwritev wrote nothing", 3)
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def _lookup_value(planner: SavePlanner, item: WriteItem) -> Any:
    """The original non-tensor object (never the planner's pickled BytesIO:
    resolve_data would torch.save it)."""
    lookup = getattr(planner, "lookup_object", None)
    if lookup is None:
        raise make_error(SafetensorNotSerializableError,
                         f"cannot save `{item.index.fqn}`: the planner "
                         f"{type(planner).__name__} has no lookup_object(), "
                         f"and its resolve_data() pickles non-tensor values",
                         ST_ERR_UNSUPPORTED, tensor_name=item.index.fqn)
    return lookup(item.index)


def _check_user_metadata(metadata: Optional[Dict[str, str]]
                         ) -> Dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in metadata.items()):
        raise make_error(SafetensorTypeError,
                         "metadata must be a dict of str -> str")
    for k in metadata:
        if k.startswith("torch_safetensors."):
            raise make_error(SafetensorValueError,
                             f"metadata key {k!r} uses the prefix "
                             f"torch_safetensors., which is this project's")
    return dict(metadata)


# --------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------

class SafetensorsStorageReader(StorageReader):
    """DCP StorageReader for any Hugging Face safetensors checkpoint.

    Args:
        path: a directory (its ``*.safetensors.index.json``, else its
            ``model.safetensors``, else every ``*.safetensors`` file in it,
            which covers torch's per-rank ``HuggingFaceStorageWriter``
            files), an index file, or one ``.safetensors`` file.
            ``dcp.load``'s ``checkpoint_id`` replaces it when given.
        backend: ``"mmap"`` (default) or ``"pread"`` (no mapping: network
            filesystems, files that may change underneath).
        threads: copy-engine threads (0: every CPU).

    Each rank reads only the chunks its state dict asks for: a DTensor or
    FSDP2 shard reads its slice of each full tensor, straight into the
    destination's memory when it is contiguous (else through a scratch
    tensor and ``copy_``). :attr:`bytes_read` is the bytes this reader read
    from the files since the last ``reset``.

    Example::

        >>> reader = SafetensorsStorageReader("ckpt")
        >>> dcp.load(model.state_dict(), storage_reader=reader)
        >>> reader.bytes_read
        >>> SafetensorsStorageReader("gpt2/model.safetensors")  # any HF file

    File dtypes this torch cannot hold (F6, an odd-length F4, ...) are
    refused by :meth:`read_metadata` with
    :class:`SafetensorUnsupportedDtypeError`.
    """

    def __init__(self, path: PathLike, *, backend: str = "mmap",
                 threads: int = 0) -> None:
        super().__init__()
        if backend not in ("mmap", "pread"):
            raise make_error(SafetensorValueError,
                             f"backend must be \"mmap\" or \"pread\", not "
                             f"{backend!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) \
                or threads < 0:
            raise make_error(SafetensorValueError,
                             f"threads must be an int >= 0, not {threads!r}")
        self.path = os.fspath(path)
        self.backend = backend
        self.threads = threads
        self.bytes_read = 0
        self.storage_data: Dict[MetadataIndex, Any] = {}
        self.load_id: Optional[str] = None
        self.is_coordinator = False
        self._directory = ""

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        """Starts a new load; checkpoint_id replaces path."""
        if checkpoint_id is not None:
            self.path = os.fspath(checkpoint_id)
        self.bytes_read = 0
        self.load_id = secrets.token_hex(8)

    def read_metadata(self) -> Metadata:
        """The checkpoint's tensors (full size, dtype, stored chunks) and
        non-tensor values, from the file headers only.

        Deliberately without ``**kwargs``: DCP retries a failed
        ``read_metadata(**kwargs)`` as rank-local metadata, which would hide
        the named error."""
        directory, files = _checkpoint_files(self.path)
        self._directory = directory
        sd_md: Dict[str, Any] = {}
        storage: Dict[MetadataIndex, Any] = {}
        state_name = files.pop(STATE_KEY, None)
        for fname, wanted in files.items():
            path = os.path.join(directory, fname)
            try:
                f = _C.File(path, backend=self.backend)
            except FileNotFoundError:
                raise make_error(SafetensorFileNotFoundError,
                                 f"file {fname} of the checkpoint {self.path} "
                                 f"does not exist", 3) from None
            except SafetensorError as e:
                if not str(e).startswith("unknown dtype"):
                    raise
                raise make_error(SafetensorUnsupportedDtypeError,
                                 f"{fname}: unknown dtype (not in the "
                                 f"safetensors dtype table)", e.status,
                                 tensor_name=e.tensor_name,
                                 offset=e.offset) from e
            try:
                md = f.metadata() or {}
                _check_version(md, fname)
                offsets = _hf_offsets(md, fname)
                names = set()
                for info in f.tensors():
                    if wanted is not None and info.name not in wanted:
                        continue
                    names.add(info.name)
                    _add_chunk(sd_md, storage, fname, info,
                               offsets.get(info.name))
                if wanted is not None and names != wanted:
                    name = sorted(wanted - names)[0]
                    raise make_error(SafetensorCheckpointError,
                                     f"the index puts tensor {name} in "
                                     f"{fname}, which does not contain it",
                                     ST_ERR_NOT_FOUND, tensor_name=name)
            finally:
                f.close()
        for fqn, tmd in sd_md.items():
            covered = sum(_numel(c.sizes) for c in tmd.chunks)
            if covered != _numel(tmd.size):
                raise make_error(SafetensorCheckpointError,
                                 f"the stored chunks of `{fqn}` hold {covered}"
                                 f" elements, its size {list(tmd.size)} needs"
                                 f" {_numel(tmd.size)}", tensor_name=fqn)
        if state_name is not None:
            for fqn, text in _read_state(directory, state_name).items():
                if fqn in sd_md:
                    raise make_error(SafetensorCheckpointError,
                                     f"`{fqn}` is both a tensor and a value",
                                     tensor_name=fqn)
                sd_md[fqn] = BytesStorageMetadata()
                storage[MetadataIndex(fqn)] = _StoredValue(text)
        metadata = Metadata(state_dict_metadata=sd_md, storage_data=storage)
        metadata.storage_meta = StorageMeta(checkpoint_id=self.path,
                                            load_id=self.load_id)
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool,
                              *args: Any, **kwargs: Any) -> None:
        """Takes the metadata's storage map (newer torch also passes rank=,
        use_collectives=)."""
        self.storage_data = metadata.storage_data
        self.is_coordinator = bool(is_coordinator)
        if not self._directory:
            self._directory = _checkpoint_files(self.path)[0]

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: List[LoadPlan]) -> List[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> "Future[None]":
        """Reads this rank's items: tensors through the copy engine (one
        plan per file), values from their JSON text."""
        per_file: Dict[str, List[ReadItem]] = {}
        for item in plan.items:
            stored = self.storage_data[item.storage_index]
            if item.type == LoadItemType.BYTE_IO:
                if not isinstance(stored, _StoredValue):
                    raise make_error(SafetensorCheckpointError,
                                     f"`{item.storage_index.fqn}` is not a "
                                     f"stored value")
                _load_value(planner, item, stored.text)
                continue
            per_file.setdefault(stored.file, []).append(item)
        for fname, items in per_file.items():
            f = _C.File(os.path.join(self._directory, fname),
                        backend=self.backend)
            try:
                self._read_file(f, items, planner)
            finally:
                f.close()
        fut: Future = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Union[str, os.PathLike]
                               ) -> bool:
        """A directory, an index or a .safetensors file that exists."""
        if not isinstance(checkpoint_id, (str, os.PathLike)):
            return False
        path = os.fspath(checkpoint_id)
        if os.path.isdir(path):
            return True
        return os.path.isfile(path) and (path.endswith(".safetensors")
                                         or path.endswith(".json"))

    # -- internals ---------------------------------------------------------

    def _read_file(self, f: "_C.File", items: List[ReadItem],
                   planner: LoadPlanner) -> None:
        index_of: Dict[str, int] = {}
        batch: List[Tuple[Any, ...]] = []
        after: List[Tuple[ReadItem, torch.Tensor, Optional[torch.Tensor]]] = []
        scratch_bytes = 0

        def flush() -> None:
            nonlocal batch, after, scratch_bytes
            if batch:
                stats = f._read_many(batch, threads=self.threads)
                self.bytes_read += int(stats["bytes_read"])
            for item, dest, scratch in after:
                if scratch is not None:
                    dest.copy_(scratch)
                planner.commit_tensor(item, dest)
            batch, after, scratch_bytes = [], [], 0

        for item in items:
            stored: _StoredChunk = self.storage_data[item.storage_index]
            i = index_of.get(stored.name)
            if i is None:
                i = f.index(stored.name)
                index_of[stored.name] = i
            info = f.info(i)
            tdtype = _dtypes.TO_TORCH[info.dtype]
            dest = planner.resolve_tensor(item).detach()
            lengths = [int(x) for x in item.lengths]
            if list(dest.shape) != lengths:
                raise make_error(SafetensorCheckpointError,
                                 f"read of `{item.dest_index.fqn}`: the "
                                 f"destination has shape {list(dest.shape)}, "
                                 f"the plan asks for {lengths}",
                                 tensor_name=item.dest_index.fqn)
            nbytes = _numel(lengths) * tdtype.itemsize
            direct = (dest.device.type == "cpu" and dest.dtype == tdtype
                      and dest.is_contiguous())
            scratch = None
            if nbytes:
                if direct:
                    target = dest
                else:
                    if scratch_bytes + nbytes > _SCRATCH_BUDGET:
                        flush()
                    scratch = torch.empty(lengths, dtype=tdtype)
                    scratch_bytes += nbytes
                    target = scratch
                stored_shape = info.torch_shape
                starts = [int(x) for x in item.storage_offsets]
                if starts == [0] * len(starts) and \
                        lengths == [int(d) for d in stored_shape]:
                    batch.append((i, target.data_ptr(), nbytes))
                else:
                    ranges = [(s, s + n, 1) for s, n in zip(starts, lengths)]
                    values = _dtypes.TORCH_VALUES[info.dtype]
                    if values > 1 and ranges:
                        s, e, _ = ranges[-1]
                        ranges[-1] = (s * values, e * values, 1)
                    batch.append((i, target.data_ptr(), nbytes, ranges))
            after.append((item, dest, scratch))
        flush()


def _load_value(planner: LoadPlanner, item: ReadItem, text: str) -> None:
    """Gives the planner a stored JSON value. LoadPlanner.load_bytes takes a
    torch.save stream: it is made here, in memory, from the value parsed
    from JSON, so nothing read from disk is ever unpickled."""
    value = json.loads(text)
    buf = io.BytesIO()
    torch.save(value, buf)
    buf.seek(0)
    planner.load_bytes(item, buf)


def _checkpoint_files(path: str
                      ) -> Tuple[str, Dict[str, Optional[set]]]:
    """(directory, {file name: the names the index puts there, or None for
    every tensor of the file}); the state file, if any, under STATE_KEY."""
    if os.path.isdir(path):
        index_path = _find_index(path)
        if index_path is None:
            directory = os.path.abspath(path)
            return directory, {e: None for e in _directory_files(directory)}
        path = index_path
    if not os.path.exists(path):
        raise make_error(SafetensorFileNotFoundError,
                         f"no checkpoint at {path}", 3)
    if path.endswith(".json"):
        directory, weight_map, md = _read_index(path)
        files: Dict[str, Optional[set]] = {}
        for name, fname in weight_map.items():
            files.setdefault(fname, set()).add(name)
        state = md.get(STATE_KEY)
        if state is not None:
            files[STATE_KEY] = _check_shard_name(state, path)  # type: ignore
        return directory, files
    return (os.path.dirname(os.path.abspath(path)),
            {os.path.basename(path): None})


def _check_version(md: Dict[str, str], fname: str) -> None:
    """A file written by a later version of this layout is refused rather
    than guessed at (docs/DCP.md, "Versions")."""
    version = md.get(VERSION_KEY)
    if version is not None and version != FORMAT_VERSION:
        raise make_error(SafetensorCheckpointError,
                         f"{fname}: {VERSION_KEY} is {version!r}; this "
                         f"reader knows version {FORMAT_VERSION}",
                         ST_ERR_UNSUPPORTED)


def _hf_offsets(md: Dict[str, str], fname: str) -> Dict[str, List[int]]:
    """Chunk offsets torch's HuggingFaceStorageWriter(save_distributed=True)
    records per tensor of a rank file; {} for a file of full tensors."""
    text = md.get(_HF_SHARDING_KEY)
    if text is None:
        return {}
    try:
        info = json.loads(text)
        return {k: [int(x) for x in v[_HF_OFFSETS_KEY]]
                for k, v in info.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise make_error(SafetensorCheckpointError,
                         f"{fname}: {_HF_SHARDING_KEY} is not a map of "
                         f"tensor -> {{\"{_HF_OFFSETS_KEY}\": [...]}}") from None


def _add_chunk(sd_md: Dict[str, Any], storage: Dict[MetadataIndex, Any],
               fname: str, info: Any, offsets: Optional[List[int]]) -> None:
    name = info.name
    tdtype = _dtypes.TO_TORCH.get(info.dtype)
    if tdtype is None or info.dtype in _dtypes.RAW_BYTES \
            or info.flags & _C.VIEW_FLAT:
        why = ("it has no torch dtype in torch " + torch.__version__
               if tdtype is None or info.dtype in _dtypes.RAW_BYTES
               else f"shape {list(info.shape)} has no {tdtype} shape")
        raise make_error(SafetensorUnsupportedDtypeError,
                         f"{fname}: cannot load `{name}` of dtype "
                         f"{info.dtype}: {why}", ST_ERR_UNSUPPORTED,
                         tensor_name=name)
    shape = tuple(int(d) for d in info.torch_shape)
    if offsets is None:
        offsets = [0] * len(shape)
    if len(offsets) != len(shape):
        raise make_error(SafetensorCheckpointError,
                         f"{fname}: `{name}` has {len(shape)} dimensions and "
                         f"{len(offsets)} chunk offsets", tensor_name=name)
    end = [o + s for o, s in zip(offsets, shape)]
    chunk = ChunkStorageMetadata(offsets=torch.Size(offsets),
                                 sizes=torch.Size(shape))
    tmd = sd_md.get(name)
    if tmd is None:
        sd_md[name] = TensorStorageMetadata(
            properties=TensorProperties(dtype=tdtype),
            size=torch.Size(end), chunks=[chunk])
    else:
        if tmd.properties.dtype != tdtype:
            raise make_error(SafetensorCheckpointError,
                             f"`{name}` is stored as {tmd.properties.dtype} "
                             f"and as {tdtype}", tensor_name=name)
        key = MetadataIndex(name, offsets)
        if key in storage:
            raise make_error(SafetensorCheckpointError,
                             f"`{name}` at offsets {offsets} is stored twice "
                             f"({storage[key].file} and {fname})",
                             tensor_name=name)
        tmd.chunks.append(chunk)
        tmd.size = torch.Size(max(a, b) for a, b in zip(tmd.size, end))
    storage[MetadataIndex(name, offsets)] = _StoredChunk(
        fname, name, info.dtype, tuple(offsets))


def _read_state(directory: str, fname: str) -> Dict[str, str]:
    path = os.path.join(directory, fname)
    if not os.path.isfile(path):
        raise make_error(SafetensorCheckpointError,
                         f"the index names the state file {fname}, which "
                         f"does not exist")
    f = _C.File(path)
    try:
        md = f.metadata() or {}
    finally:
        f.close()
    _check_version(md, fname)
    out = {}
    for k, v in md.items():
        if k.startswith(STATE_PREFIX):
            try:
                json.loads(v)
            except ValueError:
                raise make_error(SafetensorCheckpointError,
                                 f"{fname}: {k} is not JSON") from None
            out[k[len(STATE_PREFIX):]] = v
    return out
