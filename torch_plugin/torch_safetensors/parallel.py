"""Tensor-parallel, pipeline-parallel and expert-parallel loading by plan.

For code that shards by hand (Megatron-style, vLLM-style) without DTensor:
a :class:`ShardPlan` says, for the tensors of a checkpoint, which ones this
rank loads and which part of each; :func:`load_parallel` reads exactly those
bytes through the C copy engine (one parallel plan per file) into owned CPU
tensors, and reports how many bytes it read.

Example (Llama-style tensor parallelism, rank 1 of 4, stage 0 of 2)::

    >>> from torch_safetensors.parallel import (ShardPlan, PipelineStage,
    ...     column_parallel, row_parallel, vocab_parallel, load_parallel)
    >>> plan = ShardPlan(
    ...     column_parallel("*.q_proj", "*.k_proj", "*.v_proj",
    ...                     "*.gate_proj", "*.up_proj")
    ...     + row_parallel("*.o_proj", "*.down_proj")
    ...     + vocab_parallel("model.embed_tokens", "lm_head"),
    ...     rank=1, world_size=4,
    ...     select=[PipelineStage(0, 2, first=["model.embed_tokens.*"],
    ...                           last=["lm_head.*", "model.norm.*"])])
    >>> out = load_parallel("llama-checkpoint/", plan)
    >>> out["model.layers.0.self_attn.q_proj.weight"].shape  # 1/4 of dim 0
    >>> out.bytes_read, out.bytes_by_file

The plan
    ``rules`` is a list of ``(pattern, action)`` pairs; for each tensor name
    the **first rule whose pattern matches wins**; a name that no rule
    matches gets ``default`` (``"whole"`` unless told). Patterns:

    * a ``str`` is a glob matched against the whole name with
      :func:`fnmatch.fnmatchcase` rules (``*`` matches any characters,
      dots included; ``?`` one character; ``[...]`` a set). A ``str``
      without ``*``, ``?`` or ``[`` is an exact tensor name;
    * a compiled :class:`re.Pattern` must :meth:`~re.Pattern.fullmatch`
      the name;
    * a callable ``name -> bool``.

    Actions: ``"whole"``, ``"skip"``, :class:`Shard` (one dimension split
    across the ``world_size`` ranks of the plan, evenly or by explicit
    sizes), :class:`Fused` (a dimension made of sub-blocks, e.g. q/k/v or
    gate/up, each split across the ranks; the rank's pieces are concatenated
    in block order), :class:`Take` (a fixed index range of one dimension,
    the same on every rank: a stacked experts tensor).

    ``select`` holds selectors that decide which tensors this rank loads at
    all, before the rules say how: :class:`PipelineStage` (layers by index
    range; embeddings / head / final norm on the stages the caller names)
    and :class:`Experts` (mixture-of-experts tensors by expert range). A
    tensor is loaded when every selector keeps it and its rule is not
    ``"skip"``.

    ``strict=True`` (default): every rule pattern and every selector must
    match at least one tensor of the checkpoint (a typo in a plan is an
    error, not a silently unsharded load); an exact name that the checkpoint
    lacks raises :class:`ParallelMissingTensorError`. A rule written as
    ``(pattern, action, False)`` is optional: strict mode does not require
    it to match (the layout helpers' ``.bias`` rules are optional, so they
    serve layers with and without biases).

Sources
    A ``.safetensors`` file, a sharded checkpoint's ``*.index.json``, or a
    directory (its index, else its ``model.safetensors``, else every
    ``*.safetensors`` file in it), found exactly as
    :func:`torch_safetensors.sharded.load_sharded` finds them (the same
    code). Names that ``save_sharded`` stored once as tied aliases
    (``torch_safetensors.alias.*``) are not in the weight map and are not
    loaded by a plan; load the kept name.

Reads
    Each file's selected tensors and slices go to the C copy engine as one
    plan (``st_plan_add_tensor`` / ``st_plan_add_slice`` +
    ``st_plan_execute``): a row shard (dimension 0) is one contiguous range
    per tensor, a column shard one run per row. The engine reads nothing
    else: :attr:`ParallelLoad.bytes_read` (and per file,
    :attr:`ParallelLoad.bytes_by_file`) is the engine's own count
    (``st_exec_stats.bytes_read``), so a rank of world ``W`` reads ``1/W``
    of the bytes of every evenly sharded tensor, plus the whole tensors its
    plan replicates. Results are owned CPU tensors (the file is closed
    before :func:`load_parallel` returns). ``backend="mmap"`` (default)
    copies out of a mapping; ``"pread"`` reads with positioned reads, one
    per run: a column shard of row-major weights costs one system call per
    row (115,897 ``pread`` calls for one rank's column shard of GPT-2
    small), which is what bounds it, so prefer the mmap backend there. ``device`` other than the CPU:
    the tensors are read into CPU memory and moved with ``.to(device)``;
    the device engine (direct reads into device memory) has not landed.

    :class:`Fused` pieces along dimension 0 (or after only size-1
    dimensions) are read straight into their place in the result; along an
    inner dimension (a Conv1D-style ``[in, 3 * out]`` QKV) each piece is
    read into its own buffer and the pieces are concatenated, one extra copy
    of this rank's shard.

Dtypes
    Every dtype of the C core. Which torch tensor a slice becomes is the C
    core's view policy (docs/VIEWS.md), asked through ``_C``: F4
    (``float4_e2m1fn_x2``) with an even last dimension keeps its packed
    shape, F6 comes back as flat ``uint8`` raw bytes. A shard of a sub-byte
    dtype must cut on byte boundaries (an F4 shard of the last dimension:
    even start and stop); the C core decides, and a cut inside a byte raises
    :class:`ParallelSubByteError`.

Cooperative loading
    ``load_parallel(..., group=pg)`` reads the *whole* tensors of the plan
    (those every rank of the group loads in full) cooperatively: each rank
    of the torch.distributed process group reads about ``1/W`` of their
    bytes (whole rows of dimension 0) into one shared buffer, and the ranks
    exchange their parts with ``torch.distributed.broadcast`` (process-group
    collectives only, no protocol of our own). Every rank of the group must
    select the same whole tensors (checked with an ``all_reduce``; else
    :class:`ParallelGroupError` on every rank). The whole tensors then share
    one storage. Off by default, and not reliably faster anywhere measured
    here: one 2-core node, gloo on the CPU, W = 2 and 4 ranks each loading
    a 498 MB file, three runs (benchmarks/RESULTS.md, sections "parallel"
    and "parallel-notes"):

    * reads through the page cache (the default mmap backend), cache warm
      or the file's pages dropped (``posix_fadvise(DONTNEED)``) before each
      round: **slower** in every run, 1.6x to 2.5x the time of every rank
      reading every byte itself. The ranks of a node share the page cache,
      so the file comes off the device once either way, and a loopback
      broadcast costs more than a copy out of the page cache;
    * reads that bypass the page cache (``backend="pread", direct=True``,
      O_DIRECT), where every independent rank fetches every byte from the
      device: cooperative / independent was 0.29x and 0.44x (W = 2, 4) in a
      run while other jobs loaded the machine, 0.98x and 0.82x in a second
      run and 1.04x and 1.26x in the recorded one. A buffered independent
      load, warm or cold, was faster than either O_DIRECT variant in every
      run. Where ranks do not share a cache (network filesystems without
      client caching) and the interconnect beats the storage it may pay;
      that was not measured here.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple, Union)

import torch

from . import _C, _dtypes
from ._io import parse_device, torch_dtype_of
from .errors import (
    ST_ERR_INVALID_ARGUMENT,
    ST_ERR_NOT_FOUND,
    ST_ERR_UNSUPPORTED,
    SafetensorError,
    SafetensorKeyError,
    SafetensorValueError,
    make_error,
)
from .sharded import ShardedCheckpoint

__all__ = [
    "ShardPlan", "Shard", "Fused", "Take", "PipelineStage", "Experts",
    "column_parallel", "row_parallel", "vocab_parallel", "fused_qkv",
    "gate_up", "moe_experts", "expert_range", "layer_range",
    "load_parallel", "ParallelLoad",
    "ParallelPlanError", "ParallelIndivisibleError", "ParallelSplitError",
    "ParallelRankError", "ParallelUnmatchedError",
    "ParallelMissingTensorError", "ParallelSubByteError",
    "ParallelDimError", "ParallelGroupError", "ParallelDestinationError",
    "DEFAULT_LAYER_PATTERN", "DEFAULT_EXPERT_PATTERN",
]

PathLike = Union[str, "os.PathLike[str]"]
Pattern = Union[str, "re.Pattern[str]", Callable[[str], bool]]


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

class ParallelPlanError(SafetensorValueError):
    """A parallel load plan that cannot be applied (base class; also a
    ValueError)."""


class ParallelIndivisibleError(ParallelPlanError):
    """A sharded dimension (or a fused block, or its heads) that does not
    divide by the world size, with no explicit split and no ``uneven``
    rule."""


class ParallelSplitError(ParallelPlanError):
    """Explicit split sizes that do not fit: wrong count, negative, or a
    sum other than the dimension's size; or blocks that do not add up."""


class ParallelRankError(ParallelPlanError):
    """A rank outside ``[0, world_size)``, a world size below 1, or a
    pipeline stage outside ``[0, num_stages)``."""


class ParallelUnmatchedError(ParallelPlanError):
    """Strict mode: a rule pattern or selector that matches no tensor of
    the checkpoint."""


class ParallelMissingTensorError(SafetensorKeyError):
    """The plan names a tensor (an exact name) that the checkpoint lacks,
    or the index puts a tensor in a file that does not hold it (also a
    KeyError)."""


class ParallelSubByteError(ParallelPlanError):
    """A shard of a sub-byte dtype (F4, F6) that would cut inside a byte."""


class ParallelDimError(ParallelPlanError):
    """A shard dimension that the tensor does not have (e.g. dim 1 of a
    vector), or a selector pattern without the index group it needs."""


class ParallelDestinationError(ParallelPlanError):
    """An ``into`` tensor whose dtype or shape is not this rank's part of
    the tensor (or that is not a tensor)."""


class ParallelGroupError(ParallelPlanError):
    """Cooperative loading: the ranks of the group do not select the same
    whole tensors, or torch.distributed is not initialized."""


def _err(cls, message: str, name: Optional[str] = None,
         status: int = ST_ERR_INVALID_ARGUMENT):
    return make_error(cls, message, status, tensor_name=name)


# --------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------

_UNEVEN = ("error", "chunk", "split")


def _int(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise _err(ParallelSplitError, f"{what} must be an int, not "
                   f"{type(x).__name__}")
    return x


def _even_bounds(n: int, world: int, uneven: str,
                 name: Optional[str], what: str) -> List[int]:
    """Boundaries (world + 1 of them) of n split across world parts."""
    if n % world == 0:
        per = n // world
        return [r * per for r in range(world + 1)]
    if uneven == "chunk":  # torch.chunk: ceil-sized parts, the tail short
        per = -(-n // world)
        return [min(n, r * per) for r in range(world + 1)]
    if uneven == "split":  # torch.tensor_split: the first n % world get +1
        q, m = divmod(n, world)
        return [r * q + min(r, m) for r in range(world + 1)]
    raise _err(ParallelIndivisibleError,
               f"{what} of size {n} does not divide by world size {world}; "
               f"give explicit sizes or uneven=\"chunk\"/\"split\"", name)


def _explicit_bounds(sizes: Sequence[int], n: int, world: int,
                     name: Optional[str], what: str) -> List[int]:
    if len(sizes) != world:
        raise _err(ParallelSplitError, f"{what}: {len(sizes)} split sizes "
                   f"for world size {world}", name)
    out = [0]
    for s in sizes:
        if s < 0:
            raise _err(ParallelSplitError, f"{what}: negative split size "
                       f"{s}", name)
        out.append(out[-1] + s)
    if out[-1] != n:
        raise _err(ParallelSplitError, f"{what}: split sizes {list(sizes)} "
                   f"add up to {out[-1]}, not the size {n}", name)
    return out


def _check_sizes(sizes: Any, what: str) -> Optional[Tuple[int, ...]]:
    if sizes is None:
        return None
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise _err(ParallelSplitError, f"{what} must be a sequence of ints")
    return tuple(_int(s, what) for s in sizes)


@dataclass(frozen=True)
class Shard:
    """Dimension ``dim`` split across the plan's ``world_size`` ranks; the
    plan's ``rank`` takes its part.

    ``sizes``: explicit per-rank sizes (``world_size`` non-negative ints
    adding up to the dimension). Without them the split is even, and a
    dimension that does not divide raises :class:`ParallelIndivisibleError`
    unless ``uneven`` says how: ``"chunk"`` (as ``torch.chunk``:
    ``ceil(n / W)`` per rank, the last ones short or empty; Megatron's and
    vLLM's vocabulary ranges) or ``"split"`` (as ``torch.tensor_split``:
    the first ``n % W`` ranks get one more). ``dim`` may be negative.

    Example: ``Shard(0)`` (row-parallel rows), ``Shard(-1)``,
    ``Shard(0, sizes=[3, 3, 2])``.
    """

    dim: int
    sizes: Optional[Tuple[int, ...]] = None
    uneven: str = "error"

    def __post_init__(self) -> None:
        _int(self.dim, "Shard.dim")
        object.__setattr__(self, "sizes", _check_sizes(self.sizes,
                                                       "Shard.sizes"))
        if self.uneven not in _UNEVEN:
            raise _err(ParallelPlanError, f"Shard.uneven must be one of "
                       f"{_UNEVEN}, not {self.uneven!r}")

    def pieces(self, n: int, rank: int, world: int,
               name: Optional[str] = None) -> List[Tuple[int, int]]:
        """The [start, stop) ranges of dim this rank takes."""
        if self.sizes is not None:
            b = _explicit_bounds(self.sizes, n, world, name, "Shard")
        else:
            b = _even_bounds(n, world, self.uneven, name,
                             f"dimension {self.dim}")
        return [(b[rank], b[rank + 1])]


@dataclass(frozen=True)
class Fused:
    """A fused parameter: dimension ``dim`` is made of sub-blocks (q, k, v;
    gate, up), each split across the ranks separately; the rank's pieces
    are concatenated in block order.

    ``blocks``: an int ``k`` (``k`` equal blocks), or a sequence with one
    entry per block: its size (split evenly) or a sequence of
    ``world_size`` per-rank sizes (split unevenly). The blocks must add up
    to the dimension.

    ``units``: split each block in whole units (heads: ``head_dim``
    elements), an int for every block or one per block. With
    ``replicate=True``, a block with fewer units than ranks (GQA key/value
    heads when ``num_kv_heads < world_size``) is replicated: ``W / units``
    consecutive ranks share each unit (vLLM's rule), which requires
    ``world_size`` to be a multiple of the block's units.

    Example: a Llama-3 ``qkv_proj`` with 32 query heads, 8 key/value heads
    of 128: ``Fused(0, blocks=[4096, 1024, 1024], units=128)``; a
    ``gate_up_proj``: ``Fused(0, blocks=2)``.
    """

    dim: int
    blocks: Union[int, Tuple[Any, ...]]
    units: Union[None, int, Tuple[int, ...]] = None
    replicate: bool = False

    def __post_init__(self) -> None:
        _int(self.dim, "Fused.dim")
        if isinstance(self.blocks, bool):
            raise _err(ParallelSplitError, "Fused.blocks must be an int or "
                       "a sequence")
        if isinstance(self.blocks, int):
            if self.blocks < 1:
                raise _err(ParallelSplitError, f"Fused.blocks must be at "
                           f"least 1, not {self.blocks}")
        else:
            if isinstance(self.blocks, (str, bytes)) or not hasattr(
                    self.blocks, "__iter__"):
                raise _err(ParallelSplitError, "Fused.blocks must be an int "
                           "or a sequence")
            bl = []
            for b in self.blocks:
                if isinstance(b, (list, tuple)):
                    bl.append(_check_sizes(b, "Fused.blocks per-rank sizes"))
                else:
                    v = _int(b, "Fused.blocks")
                    if v < 0:
                        raise _err(ParallelSplitError, f"Fused.blocks: "
                                   f"negative block size {v}")
                    bl.append(v)
            if not bl:
                raise _err(ParallelSplitError, "Fused.blocks is empty")
            object.__setattr__(self, "blocks", tuple(bl))
        if self.units is not None and not isinstance(self.units, int):
            object.__setattr__(self, "units", _check_sizes(self.units,
                                                           "Fused.units"))
        elif self.units is not None:
            _int(self.units, "Fused.units")

    def pieces(self, n: int, rank: int, world: int,
               name: Optional[str] = None) -> List[Tuple[int, int]]:
        if isinstance(self.blocks, int):
            if n % self.blocks:
                raise _err(ParallelIndivisibleError,
                           f"dimension {self.dim} of size {n} does not hold "
                           f"{self.blocks} equal blocks", name)
            blocks: Tuple[Any, ...] = (n // self.blocks,) * self.blocks
        else:
            blocks = self.blocks
        units = self.units
        if units is None or isinstance(units, int):
            units = (units or 1,) * len(blocks)
        if len(units) != len(blocks):
            raise _err(ParallelSplitError, f"Fused: {len(units)} units for "
                       f"{len(blocks)} blocks", name)
        sizes = [sum(b) if isinstance(b, tuple) else b for b in blocks]
        if sum(sizes) != n:
            raise _err(ParallelSplitError, f"Fused blocks {sizes} add up to "
                       f"{sum(sizes)}, not the size {n} of dimension "
                       f"{self.dim}", name)
        out = []
        base = 0
        for k, (b, size, unit) in enumerate(zip(blocks, sizes, units)):
            what = f"block {k} of dimension {self.dim}"
            if unit < 1:
                raise _err(ParallelSplitError, f"Fused: unit {unit} of "
                           f"{what} is not positive", name)
            if isinstance(b, tuple):
                bounds = _explicit_bounds(b, size, world, name, what)
                out.append((base + bounds[rank], base + bounds[rank + 1]))
            else:
                if size % unit:
                    raise _err(ParallelIndivisibleError,
                               f"{what} of size {size} is not a whole number "
                               f"of units of {unit}", name)
                nu = size // unit
                if nu % world == 0:
                    per = nu // world * unit
                    out.append((base + rank * per, base + (rank + 1) * per))
                elif self.replicate and nu > 0 and world % nu == 0:
                    u = rank // (world // nu)
                    out.append((base + u * unit, base + (u + 1) * unit))
                else:
                    raise _err(ParallelIndivisibleError,
                               f"{what}: {nu} units of {unit} do not divide "
                               f"by world size {world}"
                               + ("" if self.replicate else
                                  " (replicate=True shares units when there "
                                  "are fewer than ranks)"), name)
            base += size
        return out


@dataclass(frozen=True)
class Take:
    """The fixed range ``[start, stop)`` of dimension ``dim``, the same on
    every rank (e.g. this rank's experts of a stacked ``[E, ...]`` experts
    tensor). ``stop`` beyond the dimension is an error, not clamped."""

    dim: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        for f in ("dim", "start", "stop"):
            _int(getattr(self, f), f"Take.{f}")
        if not 0 <= self.start <= self.stop:
            raise _err(ParallelSplitError, f"Take range [{self.start}, "
                       f"{self.stop}) is not a range")

    def pieces(self, n: int, rank: int, world: int,
               name: Optional[str] = None) -> List[Tuple[int, int]]:
        if self.stop > n:
            raise _err(ParallelSplitError, f"Take range [{self.start}, "
                       f"{self.stop}) of dimension {self.dim} is beyond its "
                       f"size {n}", name)
        return [(self.start, self.stop)]


Action = Union[str, Shard, Fused, Take]
#: A rule: (pattern, action), or (pattern, action, required).
Rule = Union[Tuple[Pattern, Action], Tuple[Pattern, Action, bool]]


def _check_action(a: Any) -> Action:
    if isinstance(a, (Shard, Fused, Take)) or a in ("whole", "skip"):
        return a
    raise _err(ParallelPlanError, f"a rule's action must be \"whole\", "
               f"\"skip\", Shard, Fused or Take, not {a!r}")


# --------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------

class _Matcher:
    __slots__ = ("pattern", "match", "exact", "required")

    def __init__(self, pattern: Pattern) -> None:
        self.pattern = pattern
        self.required = True
        self.exact: Optional[str] = None
        if isinstance(pattern, str):
            if not any(c in pattern for c in "*?["):
                self.exact = pattern
                self.match = pattern.__eq__
            else:
                self.match = re.compile(fnmatch.translate(pattern)).match
        elif isinstance(pattern, re.Pattern):
            self.match = pattern.fullmatch
        elif callable(pattern):
            self.match = pattern
        else:
            raise _err(ParallelPlanError, f"a pattern must be a str (glob), "
                       f"a compiled re.Pattern or a callable, not "
                       f"{type(pattern).__name__}")

    def __call__(self, name: str) -> bool:
        return bool(self.match(name))


def _suffixed(pattern: Pattern, suffix: str) -> Pattern:
    """pattern (a module) + "." + suffix (a parameter)."""
    if isinstance(pattern, str):
        return pattern + "." + suffix
    if isinstance(pattern, re.Pattern):
        return re.compile(pattern.pattern + re.escape("." + suffix),
                          pattern.flags)
    raise _err(ParallelPlanError, "layout helpers take module patterns as "
               "str (glob) or re.Pattern")


# --------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------

#: The default layer index pattern: ``layers.{i}.``, ``h.{i}.`` or
#: ``blocks.{i}.`` anywhere in the name (``model.layers.3.mlp...``,
#: ``transformer.h.3.attn...``). Group 1 is the index.
DEFAULT_LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")

#: The default expert index pattern: ``experts.{i}.``. Group 1 is the index.
DEFAULT_EXPERT_PATTERN = re.compile(r"(?:^|\.)experts\.(\d+)\.")


def _index_pattern(p: Union[str, "re.Pattern[str]"], what: str):
    rx = re.compile(p) if isinstance(p, str) else p
    if not isinstance(rx, re.Pattern) or rx.groups < 1:
        raise _err(ParallelDimError, f"{what} must be a regex with one "
                   f"group that captures the index")
    return rx


def layer_range(num_layers: int, stage: int, num_stages: int) -> range:
    """The layers of pipeline stage ``stage`` of ``num_stages``: the layer
    list cut in ``num_stages`` consecutive parts, the first
    ``num_layers % num_stages`` stages one layer longer (Megatron's and
    vLLM's default split)."""
    num_layers = _int(num_layers, "num_layers")
    _check_rank(stage, num_stages, "stage", "num_stages")
    q, m = divmod(num_layers, num_stages)
    start = stage * q + min(stage, m)
    return range(start, start + q + (1 if stage < m else 0))


def expert_range(num_experts: int, rank: int, world_size: int) -> range:
    """Expert-parallel rank ``rank`` of ``world_size``'s experts:
    ``num_experts / world_size`` consecutive experts
    (:class:`ParallelIndivisibleError` when it does not divide)."""
    num_experts = _int(num_experts, "num_experts")
    _check_rank(rank, world_size)
    if num_experts % world_size:
        raise _err(ParallelIndivisibleError, f"{num_experts} experts do not "
                   f"divide by expert-parallel size {world_size}")
    per = num_experts // world_size
    return range(rank * per, (rank + 1) * per)


class PipelineStage:
    """Selector: the tensors of pipeline stage ``stage`` of ``num_stages``.

    A tensor whose name has a layer index (``layer_pattern``, a regex whose
    group 1 is the index; default :data:`DEFAULT_LAYER_PATTERN`, i.e.
    ``layers.{i}.``, ``h.{i}.``, ``blocks.{i}.``) is kept when the index is
    in ``layers`` (default: :func:`layer_range` of ``num_layers``, which
    defaults to the checkpoint's highest layer index + 1). Tensors without
    a layer index: those matching a pattern of ``first`` go to stage 0,
    those of ``last`` to the last stage (a name in both, e.g. tied
    embeddings, goes to both); any other goes where ``others`` says:
    ``"all"`` (default: every stage), ``"first"``, ``"last"`` or ``"none"``.
    In a strict plan, a ``layer_pattern`` that matches no name is an error
    (:class:`ParallelUnmatchedError`), as are ``first`` / ``last`` patterns
    that match nothing.

    Example: ``PipelineStage(1, 4, first=["model.embed_tokens.*"],
    last=["model.norm.*", "lm_head.*"])``.
    """

    def __init__(self, stage: int, num_stages: int, *,
                 num_layers: Optional[int] = None,
                 layers: Optional[Sequence[int]] = None,
                 layer_pattern: Union[str, "re.Pattern[str]"] =
                 DEFAULT_LAYER_PATTERN,
                 first: Sequence[Pattern] = (),
                 last: Sequence[Pattern] = (),
                 others: str = "all") -> None:
        _check_rank(stage, num_stages, "stage", "num_stages")
        if others not in ("all", "first", "last", "none"):
            raise _err(ParallelPlanError, f"others must be \"all\", "
                       f"\"first\", \"last\" or \"none\", not {others!r}")
        self.stage, self.num_stages = stage, num_stages
        self.num_layers = num_layers
        self.layers = None if layers is None else frozenset(
            _int(x, "layers") for x in layers)
        self.rx = _index_pattern(layer_pattern, "layer_pattern")
        self.first = [_Matcher(p) for p in _patterns(first)]
        self.last = [_Matcher(p) for p in _patterns(last)]
        self.others = others
        self._keep: Optional[frozenset] = self.layers

    def _layer(self, name: str) -> Optional[int]:
        m = self.rx.search(name)
        return int(m.group(1)) if m else None

    def bind(self, names: Sequence[str], strict: bool) -> None:
        """Resolves the layer range against the checkpoint's names."""
        idx = [i for i in (self._layer(n) for n in names) if i is not None]
        if not idx and strict:
            raise _err(ParallelUnmatchedError, f"layer_pattern "
                       f"{self.rx.pattern!r} matches no tensor name")
        if self.layers is None:
            n = self.num_layers if self.num_layers is not None else \
                max(idx, default=-1) + 1
            self._keep = frozenset(layer_range(n, self.stage,
                                               self.num_stages))
        if strict:
            nameset = frozenset(names)
            for group, what in ((self.first, "first"), (self.last, "last")):
                for m in group:
                    _require(m, nameset if m.exact is not None else names,
                             f"PipelineStage {what} pattern")

    def keeps(self, name: str) -> bool:
        i = self._layer(name)
        if i is not None:
            return i in self._keep  # type: ignore[operator]
        in_first = any(m(name) for m in self.first)
        in_last = any(m(name) for m in self.last)
        if in_first or in_last:
            return ((in_first and self.stage == 0)
                    or (in_last and self.stage == self.num_stages - 1))
        return {"all": True, "none": False,
                "first": self.stage == 0,
                "last": self.stage == self.num_stages - 1}[self.others]

    def __repr__(self) -> str:
        return (f"PipelineStage({self.stage}, {self.num_stages}, "
                f"layers={sorted(self._keep) if self._keep else None})")


class Experts:
    """Selector: of the per-expert tensors (names with an expert index,
    ``pattern``'s group 1; default :data:`DEFAULT_EXPERT_PATTERN`,
    ``experts.{i}.``), keep those whose index is in ``experts`` (a range or
    any collection of ints, e.g. :func:`expert_range`); every other tensor
    is kept. Names keep their global expert index."""

    def __init__(self, experts: Sequence[int], *,
                 pattern: Union[str, "re.Pattern[str]"] =
                 DEFAULT_EXPERT_PATTERN) -> None:
        self.experts = frozenset(_int(x, "experts") for x in experts)
        self.rx = _index_pattern(pattern, "expert pattern")

    def bind(self, names: Sequence[str], strict: bool) -> None:
        if strict and not any(self.rx.search(n) for n in names):
            raise _err(ParallelUnmatchedError, f"expert pattern "
                       f"{self.rx.pattern!r} matches no tensor name")

    def keeps(self, name: str) -> bool:
        m = self.rx.search(name)
        return m is None or int(m.group(1)) in self.experts


def _patterns(ps: Any) -> List[Pattern]:
    if isinstance(ps, (str, re.Pattern)) or callable(ps):
        return [ps]
    return list(ps)


def _require(m: _Matcher, names: Sequence[str], what: str) -> None:
    """Strict mode: m must match a name (an exact name must exist)."""
    if m.exact is not None:
        if m.exact not in names:  # names: a set where it is large
            raise _err(ParallelMissingTensorError, f"{what} names tensor "
                       f"{m.exact!r}, which the checkpoint does not hold",
                       m.exact, ST_ERR_NOT_FOUND)
        return
    if not any(m(n) for n in names):
        raise _err(ParallelUnmatchedError, f"{what} {m.pattern!r} matches "
                   f"no tensor of the checkpoint")


def _check_rank(rank: Any, world: Any, r: str = "rank",
                w: str = "world_size") -> None:
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise _err(ParallelRankError, f"{w} must be an int >= 1, not "
                   f"{world!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or \
            not 0 <= rank < world:
        raise _err(ParallelRankError, f"{r} {rank!r} is outside [0, "
                   f"{world})")


# --------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------

class ShardPlan:
    """Which tensors one rank loads, and which part of each.

    Args:
        rules: ``(pattern, action)`` pairs, first match wins (see the module
            docs for patterns and actions); the layout helpers
            (:func:`column_parallel`, ...) return lists of them to add up.
        rank, world_size: this rank in the tensor-parallel group that
            :class:`Shard` and :class:`Fused` split across.
        select: selectors (:class:`PipelineStage`, :class:`Experts`); a
            tensor is loaded only when each of them keeps it.
        default: the action for names no rule matches: ``"whole"`` or
            ``"skip"``.
        strict: every rule and selector must match a tensor of the
            checkpoint (:class:`ParallelUnmatchedError`), and exact names
            must exist (:class:`ParallelMissingTensorError`).

    Raises :class:`ParallelRankError` for a rank outside ``[0,
    world_size)``; the other checks happen against a checkpoint
    (:meth:`resolve`, :func:`load_parallel`).
    """

    def __init__(self, rules: Sequence[Rule] = (), *,
                 rank: int = 0, world_size: int = 1,
                 select: Sequence[Any] = (), default: Action = "whole",
                 strict: bool = True) -> None:
        _check_rank(rank, world_size)
        self.rank, self.world_size = rank, world_size
        self.rules: List[Tuple[_Matcher, Action]] = []
        for rule in rules:
            if not isinstance(rule, tuple) or len(rule) not in (2, 3) or (
                    len(rule) == 3 and not isinstance(rule[2], bool)):
                raise _err(ParallelPlanError, f"a rule is a (pattern, "
                           f"action) or (pattern, action, required) tuple, "
                           f"not {rule!r}")
            m = _Matcher(rule[0])
            m.required = rule[2] if len(rule) == 3 else True
            self.rules.append((m, _check_action(rule[1])))
        if isinstance(select, (PipelineStage, Experts)):
            select = [select]
        self.select = list(select)
        for s in self.select:
            if not (hasattr(s, "keeps") and hasattr(s, "bind")):
                raise _err(ParallelPlanError, f"select takes PipelineStage "
                           f"and Experts selectors, not {s!r}")
        if default not in ("whole", "skip"):
            raise _err(ParallelPlanError, f"default must be \"whole\" or "
                       f"\"skip\", not {default!r}")
        self.default = default
        self.strict = bool(strict)

    def resolve(self, names: Sequence[str]) -> Dict[str, Action]:
        """name -> action (``"whole"``, Shard, Fused or Take) for every
        tensor of ``names`` that this rank loads, in the order of names.
        Checks strict mode against names."""
        names = list(names)
        for s in self.select:
            s.bind(names, self.strict)
        if self.strict:
            nameset = frozenset(names)
            for m, _ in self.rules:
                if m.required:
                    _require(m, nameset if m.exact is not None else names,
                             "rule pattern")
        out: Dict[str, Action] = {}
        for n in names:
            if not all(s.keeps(n) for s in self.select):
                continue
            action = self.default
            for m, a in self.rules:
                if m(n):
                    action = a
                    break
            if action != "skip":
                out[n] = action
        return out

    def __repr__(self) -> str:
        return (f"ShardPlan({len(self.rules)} rules, rank={self.rank}, "
                f"world_size={self.world_size}, select={self.select})")


# --------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------

def column_parallel(*modules: Pattern, transposed: bool = False,
                    bias: bool = True) -> List[Rule]:
    """Rules for column-parallel linear layers (the output features split):
    ``<module>.weight`` on its output dimension (dim 0 of an
    ``nn.Linear`` ``[out, in]`` weight; dim 1 with ``transposed=True``, for
    GPT-2's Conv1D ``[in, out]``) and ``<module>.bias`` (with ``bias``) on
    dim 0. Module patterns: str globs or re.Pattern (``.weight`` /
    ``.bias`` is appended); the bias rules are optional in strict mode
    (``bias=False`` leaves biases to later rules and ``default``)."""
    rules: List[Rule] = []
    for m in modules:
        rules.append((_suffixed(m, "weight"), Shard(1 if transposed else 0)))
        if bias:
            rules.append((_suffixed(m, "bias"), Shard(0), False))
    return rules


def row_parallel(*modules: Pattern, transposed: bool = False,
                 bias: bool = True) -> List[Rule]:
    """Rules for row-parallel linear layers (the input features split):
    ``<module>.weight`` on its input dimension (dim 1 of ``[out, in]``; dim
    0 with ``transposed=True``); ``<module>.bias`` whole on every rank (it
    is added once, after the all-reduce)."""
    rules: List[Rule] = []
    for m in modules:
        rules.append((_suffixed(m, "weight"), Shard(0 if transposed else 1)))
        if bias:
            rules.append((_suffixed(m, "bias"), "whole", False))
    return rules


def vocab_parallel(*modules: Pattern, uneven: str = "chunk",
                   sizes: Optional[Sequence[int]] = None
                   ) -> List[Rule]:
    """Rules for vocabulary-parallel embeddings and output heads:
    ``<module>.weight`` (``[vocab, hidden]``) split on dim 0. A vocabulary
    that does not divide is split as ``torch.chunk`` does (``uneven=
    "chunk"``, Megatron's and vLLM's ranges of ``ceil(vocab / W)`` ids;
    they pad the tensor, we do not), or ``"split"``, ``"error"``; or by
    explicit ``sizes``."""
    return [(_suffixed(m, "weight"), Shard(0, sizes=sizes, uneven=uneven))
            for m in modules]


def fused_qkv(*modules: Pattern, num_heads: int, head_dim: int,
              num_kv_heads: Optional[int] = None, transposed: bool = False,
              bias: bool = True) -> List[Rule]:
    """Rules for a fused QKV projection whose output dimension is
    ``[q (num_heads * head_dim), k, v (num_kv_heads * head_dim each)]``
    (GQA when ``num_kv_heads < num_heads``; default: ``num_heads``). Each of
    q, k, v is split across the ranks in whole heads; with fewer key/value
    heads than ranks, each is replicated on ``W / num_kv_heads`` ranks.
    The weight's output dimension is dim 0 (dim 1 with ``transposed``:
    GPT-2's ``c_attn``); the bias is split the same way."""
    kv = num_heads if num_kv_heads is None else num_kv_heads
    spec = dict(blocks=(num_heads * head_dim, kv * head_dim, kv * head_dim),
                units=head_dim, replicate=True)
    rules: List[Rule] = []
    for m in modules:
        rules.append((_suffixed(m, "weight"),
                      Fused(1 if transposed else 0, **spec)))
        if bias:
            rules.append((_suffixed(m, "bias"), Fused(0, **spec), False))
    return rules


def gate_up(*modules: Pattern, transposed: bool = False,
            bias: bool = True) -> List[Rule]:
    """Rules for a fused gate/up projection (``[gate; up]`` on the output
    dimension): each half split across the ranks, the rank's gate part then
    its up part."""
    rules: List[Rule] = []
    for m in modules:
        rules.append((_suffixed(m, "weight"),
                      Fused(1 if transposed else 0, blocks=2)))
        if bias:
            rules.append((_suffixed(m, "bias"), Fused(0, blocks=2), False))
    return rules


def moe_experts(experts: Sequence[int], *, stacked: Sequence[Pattern] = (),
                pattern: Union[str, "re.Pattern[str]"] =
                DEFAULT_EXPERT_PATTERN, dim: int = 0
                ) -> Tuple[Experts, List[Rule]]:
    """Expert parallelism: a selector for per-expert tensors (names with
    ``experts.{i}.``) keeping the experts in ``experts`` (a range, e.g.
    :func:`expert_range`), and rules that slice stacked experts tensors
    (patterns of ``stacked``, ``[num_experts, ...]``) to the same range on
    ``dim``. Returns ``(selector, rules)``: pass the selector in ``select``
    and add the rules. ``experts`` must be a contiguous range for stacked
    tensors."""
    ex = list(experts)
    rules: List[Rule] = []
    if stacked:
        if not ex or ex != list(range(ex[0], ex[0] + len(ex))):
            raise _err(ParallelSplitError, "stacked experts tensors need a "
                       "contiguous expert range")
        for p in _patterns(stacked):
            rules.append((p, Take(dim, ex[0], ex[-1] + 1)))
    return Experts(ex, pattern=pattern), rules


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

class ParallelLoad(Mapping):
    """The result of :func:`load_parallel`: a read-only mapping of tensor
    name -> tensor (checkpoint order), plus what it cost.

    Attributes:
        tensors: the dict itself.
        bytes_read: bytes the copy engine read (``st_exec_stats.bytes_read``
            summed over files; for a cooperative load, this rank's reads).
        bytes_by_file: file name -> bytes read from it.
        bytes_loaded: bytes of the returned tensors.
        bytes_selected: bytes in the checkpoint of every tensor the plan
            loads (whole, before sharding): ``bytes_read`` of an evenly
            sharded plan is ``bytes_selected / W`` plus the whole tensors.
        bytes_whole: of bytes_selected, the tensors loaded whole
            (replicated on every rank).
        actions: name -> the action applied (``"whole"``, Shard, ...).
    """

    def __init__(self) -> None:
        self.tensors: Dict[str, torch.Tensor] = {}
        self.bytes_read = 0
        self.bytes_by_file: Dict[str, int] = {}
        self.bytes_loaded = 0
        self.bytes_selected = 0
        self.bytes_whole = 0
        self.actions: Dict[str, Action] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise _err(ParallelMissingTensorError, f"this rank's load does "
                       f"not hold tensor {name!r}", name,
                       ST_ERR_NOT_FOUND) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __repr__(self) -> str:
        return (f"<ParallelLoad {len(self.tensors)} tensors, "
                f"{self.bytes_read} bytes read>")


def _norm_dim(dim: int, rank: int, name: str) -> int:
    d = dim + rank if dim < 0 else dim
    if not 0 <= d < rank:
        raise _err(ParallelDimError, f"dimension {dim} does not exist in a "
                   f"tensor of rank {rank}", name)
    return d


class _Reader:
    """One file's share of a load: allocates the results and builds one
    engine plan of items (index, address, nbytes[, ranges])."""

    def __init__(self, f: "_C.File",
                 into: Optional[Mapping] = None) -> None:
        self.f = f
        self.into = into or {}
        self.items: List[tuple] = []
        self.after: List[Callable[[], None]] = []

    def dest(self, info: Any, tshape) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the tensor the engine writes, the result): a fresh tensor, or
        the caller's ``into`` tensor (written in place when it is a
        contiguous CPU tensor, else read on the CPU and copied into it)."""
        tdtype = torch_dtype_of(info)
        tshape = tuple(tshape)
        t = self.into.get(info.name)
        if t is None:
            fresh = torch.empty(tshape, dtype=tdtype)
            return fresh, fresh
        return _check_into(t, info.name, tshape, tdtype, self.after)

    def slice_of(self, k: int, info: Any, ranges: List[Tuple[int, int, int]]):
        try:
            shape, nbytes = self.f.slice_shape(k, ranges)
        except SafetensorError as e:
            if getattr(e, "status", None) == ST_ERR_UNSUPPORTED:
                raise _err(ParallelSubByteError,
                           f"a {info.dtype} shard "
                           f"{[(a, b) for a, b, _ in ranges]} of shape "
                           f"{list(info.shape)} cuts inside a byte (F4 "
                           f"holds two values per byte: cut the last "
                           f"dimension at even indices)", info.name,
                           ST_ERR_UNSUPPORTED) from None
            raise
        return tuple(shape), nbytes

    def whole(self, k: int, info: Any) -> torch.Tensor:
        t, result = self.dest(info, info.torch_shape)
        n = info.end - info.begin
        if n:
            self.items.append((k, t.data_ptr(), n))
        return result

    def pieces(self, k: int, info: Any, dim: int,
               pieces: List[Tuple[int, int]]) -> torch.Tensor:
        shape = tuple(info.shape)
        full = [(0, s, 1) for s in shape]
        rr = []
        for a, b in pieces:
            r = list(full)
            r[dim] = (a, b, 1)
            rr.append(r)
        if len(rr) == 1:
            oshape, nbytes = self.slice_of(k, info, rr[0])
            t, result = self.dest(info, _dtypes.torch_shape(info.dtype,
                                                            oshape))
            if nbytes:
                self.items.append((k, t.data_ptr(), nbytes, rr[0]))
            return result
        parts = [self.slice_of(k, info, r) for r in rr]
        oshape = list(shape)
        oshape[dim] = sum(b - a for a, b in pieces)
        # The C core's shape and byte count of the whole result: the same
        # view policy as any slice (the pieces laid end to end on dim).
        total = sum(n for _, n in parts)
        t, result = self.dest(info, _dtypes.torch_shape(info.dtype,
                                                        tuple(oshape)))
        outer = 1
        for s in shape[:dim]:
            outer *= s
        if outer == 1:
            off = 0
            base = t.data_ptr()
            for r, (_, n) in zip(rr, parts):
                if n:
                    self.items.append((k, base + off, n, r))
                off += n
            return result
        bufs = []
        for r, (_, n) in zip(rr, parts):
            buf = torch.empty(n, dtype=torch.uint8)
            if n:
                self.items.append((k, buf.data_ptr(), n, r))
            bufs.append(buf)

        def concat() -> None:
            if total == 0:
                return
            dst = t.reshape(-1).view(torch.uint8).view(outer, total // outer)
            torch.cat([b.view(outer, b.numel() // outer) for b in bufs],
                      dim=1, out=dst)
        # Before any copy into a caller's tensor that dest() registered.
        self.after.insert(0, concat)
        return result

    def run(self, threads: int, flags: int) -> int:
        read = 0
        if self.items:
            # Fresh destinations: huge pages where they are big enough.
            stats = self.f._read_many(self.items, threads=threads,
                                      flags=flags)
            read = int(stats["bytes_read"])
        for fn in self.after:
            fn()
        return read


def _check_into(t: Any, name: str, tshape: Tuple[int, ...],
                tdtype: torch.dtype, after: List[Callable[[], None]]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the CPU tensor to fill, the result) for the caller's tensor t: t
    itself when it is contiguous on the CPU, else a fresh tensor whose
    bytes a callable appended to after copies into t."""
    if not isinstance(t, torch.Tensor):
        raise _err(ParallelDestinationError, f"into[{name!r}] is a "
                   f"{type(t).__name__}, not a tensor", name)
    if t.dtype != tdtype or tuple(t.shape) != tshape:
        raise _err(ParallelDestinationError,
                   f"into[{name!r}] is {t.dtype} {list(t.shape)}; this "
                   f"rank's part is {tdtype} {list(tshape)}", name)
    if t.device.type == "cpu" and t.is_contiguous():
        return t, t  # the engine writes its bytes in place
    tmp = torch.empty(tshape, dtype=tdtype)

    def copy() -> None:
        with torch.no_grad():
            if tdtype == _dtypes.F4_TORCH:  # no copy kernel: move bytes
                t.view(torch.uint8).copy_(tmp.view(torch.uint8))
            else:
                t.copy_(tmp)
    after.append(copy)
    return tmp, t


def _open_checkpoint(source: PathLike, backend: str) -> ShardedCheckpoint:
    if backend not in ("mmap", "pread"):
        raise _err(SafetensorValueError, f'backend "{backend}" is invalid '
                   f'(expected one of: "mmap", "pread")')
    if not isinstance(source, (str, os.PathLike)):
        raise _err(ParallelPlanError, f"source must be a path (a file, an "
                   f"index or a directory), not {type(source).__name__}")
    return ShardedCheckpoint(source, backend=backend)


def load_parallel(source: PathLike, plan: ShardPlan, *,
                  device: Union[str, int, torch.device] = "cpu",
                  backend: str = "mmap", threads: int = 0,
                  group: Any = None, direct: bool = False,
                  into: Optional[Mapping] = None) -> ParallelLoad:
    """Loads this rank's part of a checkpoint, as ``plan`` says.

    Args:
        source: a ``.safetensors`` file, a ``*.index.json``, or a directory.
        plan: the :class:`ShardPlan` of this rank.
        device: where the tensors go; other than the CPU they are read into
            CPU memory first and moved with ``.to(device)`` (the device
            engine has not landed).
        backend: ``"mmap"`` (default) or ``"pread"`` (see the module docs).
        threads: copy-engine threads per file (0: one per CPU).
        group: a ``torch.distributed`` process group (or
            ``torch.distributed.group.WORLD``) to read the plan's whole
            tensors cooperatively (module docs, "Cooperative loading"); off
            (``None``) by default, and measured slower on one node.
        direct: with ``backend="pread"``, read with ``O_DIRECT``, past the
            page cache (a filesystem that refuses it, e.g. tmpfs, gets
            buffered reads). Whole 4 KiB blocks are read, so a column shard
            then reads (and counts in ``bytes_read``) the blocks its rows lie
            in. Ignored by the mmap backend.
        into: name -> an existing tensor to load that tensor's part into
            (e.g. a model's already allocated, tensor-parallel parameters):
            it must have the dtype and shape of this rank's part. A
            contiguous CPU tensor is written in place by the engine (raw
            bytes, as ``copy_`` under ``no_grad`` would write them, without
            bumping autograd's version counter); any other (a device tensor,
            a non-contiguous view) is read into CPU memory and ``copy_``-ed
            into. The result maps those names to the same tensor objects.
            Into memory that is already mapped the engine skips the page
            faults and clearing of fresh memory: see benchmarks/RESULTS.md,
            "parallel-notes". Names not in the plan's result are ignored.

    Returns a :class:`ParallelLoad` (a mapping name -> tensor, with byte
    counters). Raises the plan's errors (:class:`ParallelPlanError`
    subclasses, :class:`ParallelMissingTensorError`) before reading
    anything.

    Example::

        plan = ShardPlan(row_parallel("*.down_proj"), rank=r, world_size=8)
        part = load_parallel("model.safetensors", plan)
        assert part.bytes_read <= part.bytes_selected // 8 + part.bytes_whole
    """
    if not isinstance(plan, ShardPlan):
        raise _err(ParallelPlanError, f"plan must be a ShardPlan, not "
                   f"{type(plan).__name__}")
    if into is not None and not isinstance(into, Mapping):
        raise _err(ParallelDestinationError, f"into must be a mapping of "
                   f"name -> tensor, not {type(into).__name__}")
    dev = parse_device(device)
    threads = int(threads)
    # No EXEC_HUGEPAGES: on the benchmark machine (a VM) MADV_HUGEPAGE on
    # fresh destinations made a 498 MB load take 0.13-2.3 s (median 0.96 s,
    # mostly system time) against 0.24-0.41 s with 4 KiB pages.
    flags = _C.EXEC_DIRECT if direct else 0
    out = ParallelLoad()
    with _open_checkpoint(source, backend) as ckpt:
        weight_map = ckpt.weight_map
        actions = plan.resolve(list(weight_map))
        by_file: Dict[str, List[str]] = {}
        for n in actions:
            by_file.setdefault(weight_map[n], []).append(n)
        readers: List[Tuple[str, _Reader]] = []
        whole: List[Tuple[str, "_C.File", int, Any]] = []
        results: Dict[str, torch.Tensor] = {}
        for fname in sorted(by_file):
            f = ckpt._handle(fname)._file
            rd = _Reader(f, into)
            for n in by_file[fname]:
                try:
                    k = f.index(n)
                except KeyError:
                    raise _err(ParallelMissingTensorError,
                               f"the index puts tensor {n!r} in {fname}, "
                               f"which does not hold it", n,
                               ST_ERR_NOT_FOUND) from None
                info = f.info(k)
                a = actions[n]
                out.bytes_selected += info.end - info.begin
                if a == "whole":
                    out.bytes_whole += info.end - info.begin
                    if group is not None:
                        whole.append((n, f, k, info))
                        continue
                    results[n] = rd.whole(k, info)
                    continue
                if not info.shape:
                    raise _err(ParallelDimError, f"a scalar has no "
                               f"dimension {a.dim} to shard", n)
                d = _norm_dim(a.dim, len(info.shape), n)
                pieces = a.pieces(info.shape[d], plan.rank, plan.world_size,
                                  n)
                results[n] = rd.pieces(k, info, d, pieces)
            readers.append((fname, rd))
        for fname, rd in readers:
            got = rd.run(threads, flags)
            out.bytes_by_file[fname] = out.bytes_by_file.get(fname, 0) + got
            out.bytes_read += got
        if group is not None:
            got = _cooperative(whole, group, threads, flags, results)
            for fname, n in got.items():
                out.bytes_by_file[fname] = out.bytes_by_file.get(fname, 0) + n
                out.bytes_read += n
            for n, _, _, info in whole:
                if into is None or n not in into:
                    continue
                after: List[Callable[[], None]] = []
                dst, result = _check_into(into[n], n,
                                          tuple(info.torch_shape),
                                          torch_dtype_of(info), after)
                if dst.numel():
                    with torch.no_grad():
                        dst.reshape(-1).view(torch.uint8).copy_(
                            results[n].reshape(-1).view(torch.uint8))
                for fn in after:
                    fn()
                results[n] = result
    for n in actions:
        t = results[n]
        if dev.type != "cpu" and (into is None or n not in into):
            t = t.to(dev)
        out.tensors[n] = t
        out.actions[n] = actions[n]
        out.bytes_loaded += t.numel() * t.element_size()
    return out


# --------------------------------------------------------------------------
# Cooperative loading
# --------------------------------------------------------------------------

_ALIGN = 64


def _cooperative(whole: List[Tuple[str, "_C.File", int, Any]], group: Any,
                 threads: int, flags: int, results: Dict[str, torch.Tensor]
                 ) -> Dict[str, int]:
    """Reads the whole tensors, 1/W of their bytes on each rank of group,
    into one buffer that broadcasts complete; fills results; returns this
    rank's bytes read per file."""
    import hashlib
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise _err(ParallelGroupError, "cooperative loading needs an "
                   "initialized torch.distributed process group")
    if group is True:
        group = dist.group.WORLD
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    # The layout: each tensor at an aligned offset of one buffer.
    layout = []
    cursor = 0
    h = hashlib.sha256()
    for n, f, k, info in whole:
        cursor = (cursor + _ALIGN - 1) // _ALIGN * _ALIGN
        nb = info.end - info.begin
        layout.append((cursor, nb))
        cursor += nb
        h.update(f"{n}\0{info.dtype}\0{list(info.shape)}\0".encode())
    # Every rank must lay out the same tensors: compare digests (two
    # 62-bit halves, MIN and MAX of each) through the group.
    dg = h.digest()
    mine = torch.tensor([int.from_bytes(dg[:8], "little") >> 2,
                         int.from_bytes(dg[8:16], "little") >> 2, cursor],
                        dtype=torch.int64)
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    if not torch.equal(lo, hi):
        raise _err(ParallelGroupError, "cooperative loading: the ranks of "
                   "the group do not select the same whole tensors")
    buf = torch.empty(cursor, dtype=torch.uint8)
    base = buf.data_ptr() if cursor else 0
    # Rank r fills the bytes whose tensor rows start in [r * size / W,
    # (r + 1) * size / W): every rank computes every share the same way, so
    # each rank's share is one span of the buffer and the broadcasts line up.
    bounds = [cursor * r // world for r in range(world + 1)]
    spans: List[List[Optional[int]]] = [[None, None] for _ in range(world)]
    reads: Dict[int, Tuple["_C.File", List[tuple]]] = {}
    for (n, f, k, info), (off, nb) in zip(whole, layout):
        for r, a, b, item in _shares(info, off, nb, bounds, world, f, k):
            s = spans[r]
            s[0] = a if s[0] is None else min(s[0], a)
            s[1] = b if s[1] is None else max(s[1], b)
            if r == rank:
                reads.setdefault(id(f), (f, []))[1].append(
                    (item[0], base + a) + item[1:])
    got: Dict[str, int] = {}
    for f, items in reads.values():
        stats = f._read_many(items, threads=threads, flags=flags)
        name = os.path.basename(f.name) if f.name else "?"
        got[name] = got.get(name, 0) + int(stats["bytes_read"])
    for r in range(world):
        a, b = spans[r]
        if a is None or b <= a:
            continue
        dist.broadcast(buf[a:b], src=dist.get_global_rank(group, r),
                       group=group)
    for (n, f, k, info), (off, nb) in zip(whole, layout):
        dt = torch_dtype_of(info)
        if nb == 0:
            results[n] = torch.empty(info.torch_shape, dtype=dt)
            continue
        results[n] = buf[off:off + nb].view(dt).view(info.torch_shape)
    return got


def _shares(info: Any, off: int, nb: int, bounds: List[int], world: int,
            f: "_C.File", k: int) -> List[Tuple[int, int, int, tuple]]:
    """(rank, start, stop, item) for one tensor laid at off in the buffer:
    the byte span each rank fills and its engine item (index, nbytes[,
    ranges]; the address is added by the caller). Rows of dimension 0 go to
    the rank whose share they start in; a tensor whose rows cannot be cut
    (a scalar, a sub-byte row that ends inside a byte: the C core says)
    goes whole to the rank its first byte belongs to."""
    if nb == 0:
        return []
    owner = max(r for r in range(world) if bounds[r] <= off)
    whole = [(owner, off, off + nb, (k, nb))]
    shape = tuple(info.shape)
    if not shape or shape[0] == 0 or nb % shape[0]:
        return whole
    rows, row_bytes = shape[0], nb // shape[0]
    cuts = [0]
    for r in range(1, world):
        row = min(rows, max(0, -(-(bounds[r] - off) // row_bytes)))
        cuts.append(max(cuts[-1], row))
    cuts.append(rows)
    out = []
    for r in range(world):
        a, b = cuts[r], cuts[r + 1]
        if a == b:
            continue
        ranges = [(a, b, 1)] + [(0, s, 1) for s in shape[1:]]
        try:
            _, pn = f.slice_shape(k, ranges)
        except SafetensorError:
            return whole
        out.append((r, off + a * row_bytes, off + b * row_bytes,
                    (k, pn, ranges)))
    return out
