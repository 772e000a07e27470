"""Tensors that share memory: the one aliasing policy of every save path.

docs/RECORD.md ("Shared memory: the aliasing policy") is the specification;
the C++ adapter mirrors the same three names. Two tensors *alias exactly*
when they have the same device, storage, storage offset, shape, strides and
dtype; they *overlap* when their byte spans in one storage intersect.

* ``"error"``: any overlap is refused (:class:`SafetensorSharedTensorError`,
  with the reference's message);
* ``"tie"``: exact aliases are stored once, under the first name in order;
  other overlaps are stored as separate copies (``strict=True`` refuses them);
* ``"copy"``: every name is stored as its own copy.

Example::

    >>> owner = resolve(["a", "b"], [w, w], "tie")   # [0, 0]: "b" is "a"
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import (ST_ERR_UNSUPPORTED, SafetensorOverlapError,
                     SafetensorSharedTensorError, SafetensorValueError,
                     make_error)

__all__ = ["POLICIES", "check_policy", "resolve", "overlap_groups",
           "ALIAS_KEY_PREFIX"]

POLICIES = ("error", "tie", "copy")

#: Shards of save_sharded/convert record each dropped tied name as
#: ``__metadata__[ALIAS_KEY_PREFIX + dropped] = kept``.
ALIAS_KEY_PREFIX = "torch_safetensors.alias."


def check_policy(policy: Any) -> str:
    """``policy`` when it is one of POLICIES, else a SafetensorValueError."""
    if not isinstance(policy, str) or policy not in POLICIES:
        raise make_error(SafetensorValueError,
                         f"policy {policy!r} is invalid (expected one of: "
                         f"\"error\", \"tie\", \"copy\")")
    return policy


def _storage_key(t: torch.Tensor) -> Optional[Tuple[str, Any, int]]:
    """(device type, device index, storage address), or None for tensors
    that cannot share bytes with another (no data, meta, empty)."""
    if t.device.type == "meta" or t.numel() == 0:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    if ptr == 0:
        return None
    return (t.device.type, t.device.index, ptr)


def _span(t: torch.Tensor) -> Tuple[int, int]:
    """[first byte, one past the last byte] of t's elements in its storage."""
    es = t.element_size()
    start = t.storage_offset() * es
    lo = hi = 0
    for size, stride in zip(t.shape, t.stride()):
        if stride >= 0:
            hi += (size - 1) * stride
        else:
            lo += (size - 1) * stride
    return start + lo * es, start + (hi + 1) * es


def _by_storage(tensors: Sequence[torch.Tensor]) -> List[List[int]]:
    groups: Dict[Tuple[str, Any, int], List[int]] = {}
    for i, t in enumerate(tensors):
        key = _storage_key(t)
        if key is not None:
            groups.setdefault(key, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def overlap_groups(tensors: Sequence[torch.Tensor]) -> List[List[int]]:
    """The sets (of two or more indexes) of tensors whose bytes overlap,
    transitively, within one storage; in order of their first index."""
    out: List[List[int]] = []
    for idxs in _by_storage(tensors):
        spans = sorted((*_span(tensors[i]), i) for i in idxs)
        current: List[int] = []
        reach = -1
        for start, stop, i in spans:
            if current and start < reach:
                current.append(i)
                reach = max(reach, stop)
            else:
                if len(current) > 1:
                    out.append(sorted(current))
                current, reach = [i], stop
        if len(current) > 1:
            out.append(sorted(current))
    return sorted(out)


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride()
            and a.storage_offset() == b.storage_offset())


def _exact_owner(tensors: Sequence[torch.Tensor]) -> List[int]:
    owner = list(range(len(tensors)))
    for idxs in _by_storage(tensors):
        reps: List[int] = []
        for i in idxs:
            for r in reps:
                if _same_view(tensors[i], tensors[r]):
                    owner[i] = r
                    break
            else:
                reps.append(i)
    return owner


def resolve(labels: Sequence[str], tensors: Sequence[torch.Tensor],
            policy: str, strict: bool = False) -> List[int]:
    """For each tensor, the index of the tensor whose stored bytes it uses:
    itself, or (``"tie"``) the first exact alias in order. labels name the
    tensors in error messages. Raises SafetensorSharedTensorError (policy
    ``"error"``) or SafetensorOverlapError (``"tie"`` with ``strict``)."""
    policy = check_policy(policy)
    n = len(tensors)
    if policy == "copy":
        return list(range(n))
    if policy == "error":
        groups = overlap_groups(tensors)
        if groups:
            failing = [{labels[i] for i in g} for g in groups]
            raise make_error(
                SafetensorSharedTensorError,
                f"Some tensors share memory, this will lead to duplicate "
                f"memory on disk and potential differences when loading them "
                f"again: {failing}. A potential way to correctly save your "
                f"model is to use `save_model`. More information at "
                f"https://huggingface.co/docs/safetensors/"
                f"torch_shared_tensors",
                tensor_name=sorted(failing[0])[0])
        return list(range(n))
    owner = _exact_owner(tensors)
    if strict:
        for g in overlap_groups(tensors):
            reps = sorted({owner[i] for i in g})
            if len(reps) > 1:
                first, second = reps[0], reps[1]
                raise make_error(
                    SafetensorOverlapError,
                    f"{labels[second]} overlaps {labels[first]} in memory "
                    f"without being the same view (strict=True refuses "
                    f"partial aliasing; pass strict=False to store separate "
                    f"copies)", ST_ERR_UNSUPPORTED)
    return owner


def tie(tensors: Dict[str, torch.Tensor], owner: Sequence[int]
        ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(the tensors to store, {dropped name: kept name}) for an owner list
    from resolve over tensors' items, in order."""
    names = list(tensors)
    kept = {n: tensors[n] for i, n in enumerate(names) if owner[i] == i}
    dropped = {n: names[owner[i]] for i, n in enumerate(names)
               if owner[i] != i}
    return kept, dropped


def alias_metadata(dropped: Dict[str, str]) -> Dict[str, str]:
    """The ``__metadata__`` entries that record dropped tied names."""
    return {ALIAS_KEY_PREFIX + d: k for d, k in dropped.items()}


def share(base: torch.Tensor) -> torch.Tensor:
    """A new tensor object over base's storage, offset, shape and strides."""
    return torch.empty((0,), dtype=base.dtype, device=base.device).set_(
        base.untyped_storage(), base.storage_offset(), base.shape,
        base.stride())


def restore(tensors: Dict[str, torch.Tensor],
            metadata: Optional[Dict[str, str]]) -> Dict[str, torch.Tensor]:
    """tensors plus every dropped tied name that metadata records, each
    sharing its kept tensor's storage (names already present win)."""
    if not metadata:
        return tensors
    for key, kept in metadata.items():
        if key.startswith(ALIAS_KEY_PREFIX):
            name = key[len(ALIAS_KEY_PREFIX):]
            base = tensors.get(kept)
            if base is not None and name not in tensors:
                tensors[name] = share(base)
    return tensors
