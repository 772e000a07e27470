"""The structure record: encode an object into flat tensors plus a record,
and rebuild it. docs/RECORD.md is the specification (names, the version 1
grammar, exactly which records are accepted and with which error each one
is refused); this module implements it and nothing else.

Example::

    >>> tensors, text = flatten({"w": w, "step": 3})
    >>> doc = parse(text)                      # checks JSON, depth, version
    >>> obj = rebuild(doc, tensors, place=lambda t, loc: t)
"""

from __future__ import annotations

import collections
import json
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import _alias
from .errors import (ST_ERR_HEADER_DESERIALIZATION, ST_ERR_UNSUPPORTED, SafetensorRecordError,
                     SafetensorRecordVersionError, SafetensorTypeError,
                     make_error)

__all__ = ["KEY_PREFIX", "STRUCTURE_KEY", "VERSION", "MAX_DEPTH", "flatten",
           "parse", "rebuild"]

KEY_PREFIX = "torch_safetensors."
STRUCTURE_KEY = KEY_PREFIX + "structure"
VERSION = 1
#: Levels of JSON nesting a record may have (the record object is level 1).
MAX_DEPTH = 256
_LONE_TENSOR_NAME = "tensor"


def _type_error(msg: str) -> Exception:
    return make_error(SafetensorTypeError, msg, ST_ERR_UNSUPPORTED)


def _record_error(msg: str) -> Exception:
    return make_error(SafetensorRecordError, "structure record " + msg,
                      ST_ERR_HEADER_DESERIALIZATION)


def path_str(path: tuple) -> str:
    """How messages name a value: ``obj['model']['x']``."""
    return "obj" + "".join(f"[{k!r}]" for k in path)


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------

def _is_int_like(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _escape_key(key: "str | int") -> str:
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


# ---------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------

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


def _check_str(s: str, path) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _type_error(
            f"cannot store the string {s!r} at {path_str(path)}: it is not "
            f"valid Unicode (lone surrogate)") from None


class _Flattener:
    def __init__(self):
        import torch

        from . import _dtypes

        self.torch = torch
        self.st_name = _dtypes.st_name
        self.leaves: List[_Leaf] = []
        self.seen_containers: set = set()
        self.obj_count: Dict[int, int] = {}

    def refuse(self, path, what):
        raise _type_error(
            f"torch.save(format='safetensors') cannot store {what} at "
            f"{path_str(path)}: it would need pickle; store tensors, dicts, "
            f"lists, tuples, int, float, bool, str or None instead")

    def tensor(self, t, path, natural, escaped):
        torch = self.torch
        if getattr(t, "is_nested", False):
            raise _type_error(
                f"cannot store a nested tensor at {path_str(path)}: "
                f"safetensors stores dense tensors only; store t.unbind() "
                f"instead")
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            self.refuse(path, f"a tensor subclass ({type(t).__module__}."
                              f"{type(t).__qualname__})")
        if t.is_sparse or t.layout != torch.strided:
            raise _type_error(
                f"cannot store a {t.layout} tensor at {path_str(path)}: "
                f"safetensors stores dense (strided) tensors only; convert it "
                f"with .to_dense()")
        if t.is_quantized:
            raise _type_error(
                f"cannot store a quantized tensor ({t.dtype}) at "
                f"{path_str(path)}: safetensors has no quantized dtypes; store "
                f"t.int_repr() and the scales separately")
        if t.device.type == "meta":
            raise _type_error(
                f"cannot store a meta tensor at {path_str(path)}: it has no "
                f"data")
        if self.st_name(t.dtype) is None:
            raise _type_error(
                f"cannot store dtype {t.dtype} at {path_str(path)}: it has no "
                f"safetensors counterpart")
        node: Dict[str, Any] = {"t": "tensor", "name": None}
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
            return {"t": "float",
                    "v": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
        if isinstance(v, torch.Tensor):
            return self.tensor(v, path, natural, escaped)
        if tv in (dict, collections.OrderedDict):
            return self.mapping(v, path, natural, escaped)
        if tv is list or tv is tuple:
            self.enter(v, path)
            items = [self.value(x, path + (i,), _join(natural, str(i)),
                                _join(escaped, str(i)))
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
            self.refuse(path, f"an nn.Module ({tv.__qualname__}); save "
                              f"module.state_dict()")
        if callable(v):
            self.refuse(path, f"a callable ({tv.__qualname__} "
                              f"{getattr(v, '__qualname__', '')})")
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
                    f"cannot store a dict key of type {type(k).__qualname__} "
                    f"({k!r}) at {path_str(path)}: only str and int keys can "
                    f"be stored")
            nat = k if verbatim else _escape_key(k)
            items.append([k, self.value(v, path + (k,), _join(natural, nat),
                                        _join(escaped, _escape_key(k)))])
        self.seen_containers.discard(id(d))
        node: Dict[str, Any] = {
            "t": "odict" if type(d) is collections.OrderedDict else "dict",
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


def flatten(obj: Any, policy: str = "tie", strict: bool = False
            ) -> Tuple[Dict[str, Any], str]:
    """(name -> tensor to store, record JSON text) for obj. Tensors sharing
    memory follow the aliasing policy (_alias.resolve; strict refuses
    overlaps that are not exact aliases)."""
    import torch

    from . import _dtypes

    fl = _Flattener()
    root = fl.value(obj, (), "", "")
    leaves = fl.leaves
    owner = _alias.resolve([path_str(lf.path) for lf in leaves],
                           [lf.tensor for lf in leaves], policy, strict)
    if policy != "copy":
        obj_ids: Dict[int, int] = {}
        for lf in leaves:
            if fl.obj_count[id(lf.tensor)] > 1:
                lf.node["obj"] = obj_ids.setdefault(id(lf.tensor), len(obj_ids))

    def assign(attr: str) -> Optional[Dict[str, int]]:
        names: Dict[str, int] = {}
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
    for i, lf in enumerate(leaves):
        lf.node["name"] = name_of[owner[i]]
    tensors = {}
    for n, i in names.items():
        t = leaves[i].tensor.detach()
        if t.dim() == 0 and _dtypes.TORCH_VALUES.get(_dtypes.st_name(t.dtype) or "", 1) > 1:
            # F4 pairs scale the last dimension in the file; a 0-dim tensor has none
            t = t.reshape(1)
            for lf in leaves:
                if lf.node["name"] == n:
                    lf.node["shape"] = []
        if type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        tensors[n] = t
    record = json.dumps({"version": VERSION, "root": root},
                        separators=(",", ":"), ensure_ascii=True,
                        allow_nan=False)
    return tensors, record


# ---------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------

class _JSONError(ValueError):
    pass


def _no_constant(name: str):
    raise _JSONError(f"{name} is not JSON")


def _pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _JSONError(f"field {k!r} appears twice")
        out[k] = v
    return out


def _check_depth_and_strings(doc: Any) -> None:
    """MAX_DEPTH levels of nesting at most; no lone surrogate in a string."""
    stack = [(doc, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise _record_error(
                    "is not valid JSON: a string holds a lone surrogate"
                ) from None
            continue
        if isinstance(v, dict):
            children = list(v.keys()) + list(v.values())
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > MAX_DEPTH:
            raise _record_error(f"nests too deeply (over {MAX_DEPTH} levels)")
        stack.extend((c, depth + 1) for c in children
                     if isinstance(c, (dict, list, str)))


def parse(text: str) -> Dict[str, Any]:
    """The record object of a record's JSON text, checked against every
    record-level rule of docs/RECORD.md (JSON syntax, depth, version, root).
    Raises SafetensorRecordError or SafetensorRecordVersionError."""
    try:
        doc = json.loads(text, parse_constant=_no_constant,
                         object_pairs_hook=_pairs)
    except RecursionError:
        raise _record_error(
            f"nests too deeply (over {MAX_DEPTH} levels)") from None
    except ValueError as e:
        raise _record_error(f"is not valid JSON: {e}") from None
    _check_depth_and_strings(doc)
    if not isinstance(doc, dict):
        raise _record_error("is not a JSON object")
    version = doc.get("version")
    if type(version) is not int or version != VERSION:
        raise make_error(
            SafetensorRecordVersionError,
            f"structure record has an unsupported version {version!r} (this "
            f"reader knows version {VERSION})", ST_ERR_UNSUPPORTED)
    if "root" not in doc:
        raise _record_error("has no root")
    return doc


def check_device(v: Any):
    """The torch.device a record names; a bad one is a record error."""
    import torch

    if not isinstance(v, str):
        raise _record_error(f"node: bad device {v!r}")
    try:
        return torch.device(v)
    except (RuntimeError, ValueError):
        raise _record_error(f"node: bad device {v!r}") from None


class _Rebuilder:
    def __init__(self, tensors: Dict[str, Any],
                 place: Callable[[Any, str], Any]):
        import torch

        self.torch = torch
        self.tensors = tensors
        self.place = place
        self.placed: Dict[str, Any] = {}
        self.objs: Dict[int, Tuple[str, Any]] = {}

    def node(self, n):
        if n is None or isinstance(n, (bool, int, str)):
            return n
        if isinstance(n, float):
            if not math.isfinite(n):
                raise _record_error(f"node: bad float {n!r}")
            return n
        if isinstance(n, list):
            raise _record_error("node: unexpected JSON array")
        t = n.get("t")
        if t == "float":
            v = n.get("v")
            if v not in ("inf", "-inf", "nan"):
                raise _record_error(f"node: bad float {v!r}")
            return float(v)
        if t in ("list", "tuple"):
            items = n.get("items")
            if not isinstance(items, list):
                raise _record_error(f"node: {t} without items")
            vals = [self.node(x) for x in items]
            return vals if t == "list" else tuple(vals)
        if t in ("dict", "odict"):
            return self.mapping(n, t)
        if t == "size":
            v = n.get("v")
            if not isinstance(v, list) or not all(type(x) is int for x in v):
                raise _record_error("node: bad size")
            return self.torch.Size(v)
        if t == "dtype":
            v = n.get("v")
            dt = getattr(self.torch, v, None) if isinstance(v, str) else None
            if not isinstance(dt, self.torch.dtype):
                raise _record_error(f"node: unknown dtype {v!r}")
            return dt
        if t == "device":
            return check_device(n.get("v"))
        if t == "tensor":
            return self.tensor(n)
        raise _record_error(f"node: unknown node type {t!r}")

    def mapping(self, n, t):
        items = n.get("items")
        if not isinstance(items, list):
            raise _record_error("node: dict without items")
        d = {} if t == "dict" else collections.OrderedDict()
        for it in items:
            if (not isinstance(it, list) or len(it) != 2
                    or type(it[0]) not in (str, int)):
                raise _record_error("node: bad dict item")
            if it[0] in d:
                raise _record_error(f"node: duplicate dict key {it[0]!r}")
            d[it[0]] = self.node(it[1])
        if t == "odict" and "meta" in n:
            d._metadata = self.node(n["meta"])
        return d

    def tensor(self, n):
        torch = self.torch
        name = n.get("name")
        if not isinstance(name, str) or name not in self.tensors:
            raise _record_error(
                f"names tensor {name!r}, which is not in the file")
        for flag in ("rg", "param"):
            if flag in n and type(n[flag]) is not bool:
                raise _record_error(f"node: bad {flag} {n[flag]!r}")
        location = n.get("device", "cpu")
        check_device(location)
        obj = n.get("obj")
        if obj is not None:
            if type(obj) is not int or obj < 0:
                raise _record_error(f"node: bad obj {obj!r}")
            seen = self.objs.get(obj)
            if seen is not None:
                if seen[0] != name:
                    raise _record_error(
                        f"node: bad obj {obj}: it names {seen[0]!r} and {name!r}")
                return seen[1]
        if name in self.placed:
            out = _alias.share(self.placed[name])
        else:
            out = self.place(self.tensors[name], location)
            self.placed[name] = out
        if "shape" in n:
            if n["shape"] != [] or out.dim() != 1 or out.numel() != 1:
                raise _record_error(f"node: bad shape {n['shape']!r} for {name!r}")
            out = out.reshape(())
        if n.get("param"):
            out = torch.nn.Parameter(out, requires_grad=bool(n.get("rg")))
        elif n.get("rg"):
            if out.is_floating_point() or out.is_complex():
                out.requires_grad_(True)
        if obj is not None:
            self.objs[obj] = (name, out)
        return out


def rebuild(doc: Dict[str, Any], tensors: Dict[str, Any],
            place: Callable[[Any, str], Any]) -> Any:
    """The object a parsed record describes. tensors: stored name -> CPU
    tensor; place(tensor, recorded location) puts one where it goes. Node
    rules that break raise SafetensorRecordError."""
    return _Rebuilder(tensors, place).node(doc["root"])


def flat(tensors: Dict[str, Any], place: Callable[[Any, str], Any]) -> Any:
    """What a file without a record loads as: name -> tensor."""
    return {name: place(t, "cpu") for name, t in tensors.items()}

