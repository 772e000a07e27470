"""Quantized checkpoints: describe, check and dequantize groups of tensors.

The safetensors format has no quantized dtypes, so a quantized weight is
stored as a *group* of ordinary tensors (packed integers, scales, zero
points) and the method is described elsewhere. This module turns such a
group back into one dense tensor under its unquantized name and orientation
(``<module>.weight``, ``[out, in]``). The layouts, the descriptor that our
writers record (``__metadata__["torch_safetensors.quant"]``) and the
inference rules used when it is absent are specified in docs/QUANT.md.

Example::

    from torch_safetensors.torch import load_file
    sd = load_file("model.safetensors", dequantize=torch.bfloat16)

Every refusal is a :class:`~torch_safetensors.errors.SafetensorQuantError`
naming the group (``tensor_name``) and what is wrong; nothing is read out of
bounds, because every component's dtype and shape is checked against the
group's parameters before any arithmetic.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Tuple)

import torch

from . import _C, _dtypes
from .errors import (ST_ERR_HEADER_DESERIALIZATION, ST_ERR_INVALID_ARGUMENT,
                     ST_ERR_UNSUPPORTED, SafetensorQuantAmbiguousError,
                     SafetensorQuantDescriptorError, SafetensorQuantError,
                     SafetensorQuantLayoutError, SafetensorQuantUnsupportedError,
                     SafetensorValueError, make_error)

__all__ = ["DESCRIPTOR_KEY", "CONFIG_KEY", "Group", "describe",
           "dequantize_group", "dequantize_tensors", "read_config",
           "descriptor_json", "check_output_dtype", "METHODS",
           "logical_names", "infos_of"]

#: The one __metadata__ key of the descriptor (docs/QUANT.md).
DESCRIPTOR_KEY = "torch_safetensors.quant"
#: Where our writer also records the compressed-tensors quantization_config.
CONFIG_KEY = "torch_safetensors.quantization_config"
DESCRIPTOR_VERSION = 1

#: The dtypes a group dequantizes to.
OUTPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)

_ST_ERR_INVALID_TENSOR_INFO = 11

Info = Tuple[str, Tuple[int, ...]]  # (file dtype name, file shape)

# --------------------------------------------------------------------------
# Methods: their fixed conventions (recorded in the descriptor, checked)
# --------------------------------------------------------------------------

_SIGNED_DENSE = "int32-lsb-dense-rows"     # compressed-tensors pack_to_int32
_FP4_LOW_FIRST = "u8-low-nibble-even"      # element 2k in bits 0-3 of byte k
_GPTQ_PACK = "int32-lsb-dense-columns"     # along the input dim (dim 0)
_AWQ_PACK = "int32-awq-02461357"           # nibble k holds column ORDER[k]
_BNB_PACK = "u8-high-nibble-even"          # element 2k in bits 4-7 of byte k
_FP6_PACK = "u8-6bit-lsb-dense"            # 4 codes per 3 bytes, LSB first

#: method -> (roles that must be present, optional roles, packing, scale
#: encoding).
METHODS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...], str]] = {
    "compressed-tensors/pack-quantized":
        (("packed", "scale", "shape"), ("zero_point",), _SIGNED_DENSE),
    "compressed-tensors/naive-quantized":
        (("weight", "scale"), ("zero_point",), "none"),
    "compressed-tensors/nvfp4-pack-quantized":
        (("packed", "scale", "global_scale"), (), _FP4_LOW_FIRST),
    "compressed-tensors/mxfp4-pack-quantized":
        (("packed", "scale"), (), _FP4_LOW_FIRST),
    "compressed-tensors/mxfp6-pack-quantized":
        (("packed", "scale"), (), _FP6_PACK),
    "modelopt/nvfp4":
        (("weight", "scale", "scale_2"), (), _FP4_LOW_FIRST),
    "fp8-block-scale-inv":
        (("weight", "scale_inv"), (), "none"),
    "gpt-oss/mxfp4":
        (("blocks", "scales"), (), _FP4_LOW_FIRST),
    "gptq":
        (("qweight", "qzeros", "scales"), ("g_idx",), _GPTQ_PACK),
    "awq-gemm":
        (("qweight", "qzeros", "scales"), (), _AWQ_PACK),
    "bitsandbytes/4bit":
        (("weight", "absmax", "quant_map", "quant_state"),
         ("nested_absmax", "nested_quant_map"), _BNB_PACK),
}

#: zero-point conventions, per method (docs/QUANT.md).
_ZERO_POINTS = {
    "compressed-tensors/pack-quantized": ("none", "signed-packed-dim0"),
    "compressed-tensors/naive-quantized": ("none", "signed"),
    "gptq": ("stored-minus-one", "true"),
    "awq-gemm": ("true",),
}

_AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
         -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_FLOATS = ("F16", "BF16", "F32")
_E8M0 = ("U8", "F8_E8M0")
_FP8 = ("F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ")


@dataclass
class Group:
    """One quantized weight: its result name and the tensors it is made of.

    ``components`` maps a role of the method (``packed``, ``scale``, ...)
    to a tensor name of the file. ``shape`` is the result's shape.
    """
    name: str
    method: str
    components: Dict[str, str]
    shape: Tuple[int, ...]
    bits: int = 0
    strategy: str = "tensor"        # tensor, channel, group, block
    group_size: Optional[int] = None
    block: Optional[Tuple[int, int]] = None
    zero_point: str = "none"
    scale_encoding: str = "float"   # float, e8m0
    dtype: Optional[str] = None     # the unquantized dtype, when known
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def packing(self) -> str:
        return METHODS[self.method][2]

    def to_json(self) -> Dict[str, Any]:
        return {"method": self.method, "components": dict(self.components),
                "shape": list(self.shape), "bits": self.bits,
                "strategy": self.strategy, "group_size": self.group_size,
                "block": list(self.block) if self.block else None,
                "zero_point": self.zero_point, "packing": self.packing,
                "scale_encoding": self.scale_encoding, "dtype": self.dtype}


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

def _err(cls, message: str, name: Optional[str],
         status: int = _ST_ERR_INVALID_TENSOR_INFO, **attrs: Any
         ) -> SafetensorQuantError:
    exc = make_error(cls, message, status, tensor_name=name)
    exc.detail = str(exc)  # the drop-in keeps our message (as_reference)
    for k, v in attrs.items():
        setattr(exc, k, v)
    return exc


def _layout(name: str, message: str) -> SafetensorQuantError:
    return _err(SafetensorQuantLayoutError,
                f"quantized group {name}: {message}", name)


def _descriptor(message: str, name: Optional[str] = None
                ) -> SafetensorQuantError:
    return _err(SafetensorQuantDescriptorError,
                f"quantization descriptor {DESCRIPTOR_KEY}: {message}", name,
                ST_ERR_HEADER_DESERIALIZATION)


def _ambiguous(name: str, what: str, candidates: List[str]
               ) -> SafetensorQuantError:
    return _err(SafetensorQuantAmbiguousError,
                f"quantized group {name}: {what} is ambiguous; candidates: "
                f"{', '.join(candidates)} (add a config.json with a "
                f"quantization_config beside the file, or a {DESCRIPTOR_KEY} "
                f"descriptor)", name, ST_ERR_INVALID_ARGUMENT,
                candidates=list(candidates))


def _unsupported(name: str, message: str) -> SafetensorQuantError:
    return _err(SafetensorQuantUnsupportedError,
                f"quantized group {name}: {message}", name, ST_ERR_UNSUPPORTED)


def slice_refused(name: str) -> SafetensorQuantError:
    """get_slice of a dequantized group (not supported yet)."""
    return _unsupported(name, "slicing a dequantized group is not "
                              "supported; get_tensor() it, then slice")


def check_output_dtype(dtype: Any) -> torch.dtype:
    """dequantize= must be one of torch.bfloat16, float16, float32."""
    if dtype not in OUTPUT_DTYPES:
        raise make_error(SafetensorValueError,
                         f"dequantize must be torch.bfloat16, torch.float16 "
                         f"or torch.float32, not {dtype!r}")
    return dtype


# --------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------

def read_config(directory: Optional[str],
                metadata: Optional[Mapping[str, str]] = None
                ) -> Optional[Dict[str, Any]]:
    """The quantization_config for a checkpoint in ``directory``: the
    ``config.json`` beside it (``quantization_config``), else
    ``hf_quant_config.json`` (ModelOpt's ``quantization``), else the copy
    our writer keeps in ``__metadata__``; None when there is none."""
    for fname, key in (("config.json", "quantization_config"),
                       ("hf_quant_config.json", "quantization")):
        if directory is None:
            break
        path = os.path.join(directory, fname)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    cfg = json.load(fh)
            except (OSError, ValueError) as e:
                raise _descriptor(f"{path} is not readable JSON: {e}") from e
            q = cfg.get(key) if isinstance(cfg, dict) else None
            if isinstance(q, dict):
                if key == "quantization" and "quant_method" not in q:
                    q = dict(q, quant_method="modelopt")
                return q
    if metadata and CONFIG_KEY in metadata:
        try:
            q = json.loads(metadata[CONFIG_KEY])
        except ValueError as e:
            raise _descriptor(f"{CONFIG_KEY} is not JSON: {e}") from e
        if isinstance(q, dict):
            return q
    return None


# --------------------------------------------------------------------------
# Describing: the descriptor, or inference from names, shapes and dtypes
# --------------------------------------------------------------------------

def describe(infos: Mapping[str, Info],
             metadata: Any = None,
             config: Optional[Mapping[str, Any]] = None,
             fetch: Optional[Callable[[str], torch.Tensor]] = None
             ) -> Dict[str, Group]:
    """The quantized groups of a checkpoint, checked against its tensors.

    infos: tensor name -> (file dtype name, file shape). metadata: the
    ``__metadata__``, or a list of them (one per shard); descriptors win
    when present. config: a quantization_config (:func:`read_config`).
    fetch: reads a (small) tensor by name; inference needs it for
    ``weight_shape``.
    """
    mds = metadata if isinstance(metadata, list) else [metadata]
    texts = [m[DESCRIPTOR_KEY] for m in mds if m and DESCRIPTOR_KEY in m]
    if texts:
        groups: Dict[str, Group] = {}
        for text in texts:
            for name, g in _parse_descriptor(text).items():
                if name in groups and groups[name] != g:
                    raise _descriptor(f"group {name} is described twice, "
                                      f"differently", name)
                groups[name] = g
    else:
        groups = _infer(infos, config, fetch)
    seen: Dict[str, str] = {}
    for g in groups.values():
        _validate(g, infos)
        for t in g.components.values():
            if t in seen:
                raise _layout(g.name, f"component {t} also belongs to "
                                      f"group {seen[t]}")
            seen[t] = g.name
        if g.name in infos and g.name not in g.components.values():
            raise _layout(g.name, "a tensor of the file already has the "
                                  "group's name")
    return groups


def _parse_descriptor(text: str) -> Dict[str, Group]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise _descriptor(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), dict):
        raise _descriptor('not an object with a "groups" object')
    if doc.get("version") != DESCRIPTOR_VERSION:
        raise _descriptor(f"version {doc.get('version')!r} is not "
                          f"{DESCRIPTOR_VERSION}")
    out = {}
    for name, d in doc["groups"].items():
        out[name] = _group_from_json(name, d)
    return out


def _group_from_json(name: str, d: Any) -> Group:
    def want(key: str, types, optional: bool = False):
        v = d.get(key)
        if v is None and optional:
            return None
        if not isinstance(v, types) or isinstance(v, bool):
            raise _descriptor(f"group {name}: {key!r} is missing or of the "
                              f"wrong type", name)
        return v

    if not isinstance(d, dict):
        raise _descriptor(f"group {name} is not an object", name)
    method = want("method", str)
    if method not in METHODS:
        raise _err(SafetensorQuantUnsupportedError,
                   f"quantized group {name}: method {method!r} is not one of "
                   f"{', '.join(METHODS)}", name, ST_ERR_UNSUPPORTED)
    comps = want("components", dict)
    if not all(isinstance(k, str) and isinstance(v, str)
               for k, v in comps.items()):
        raise _descriptor(f"group {name}: components must map str to str",
                          name)
    shape = want("shape", list)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
               for x in shape):
        raise _descriptor(f"group {name}: shape must be a list of "
                          f"non-negative integers", name)
    block = want("block", list, optional=True)
    if block is not None and (len(block) != 2 or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0
            for x in block)):
        raise _descriptor(f"group {name}: block must be two positive "
                          f"integers", name)
    g = Group(name=name, method=method, components=dict(comps),
              shape=tuple(shape), bits=want("bits", int),
              strategy=want("strategy", str),
              group_size=want("group_size", int, optional=True),
              block=tuple(block) if block else None,
              zero_point=want("zero_point", str),
              scale_encoding=want("scale_encoding", str),
              dtype=want("dtype", str, optional=True))
    if d.get("packing") != g.packing:
        raise _descriptor(f"group {name}: packing {d.get('packing')!r} is "
                          f"not {g.packing!r}, the packing of {method}", name)
    return g


def descriptor_json(groups: Iterable[Group]) -> str:
    """The descriptor text (compact JSON, keys sorted) for groups."""
    return json.dumps({"version": DESCRIPTOR_VERSION,
                       "groups": {g.name: g.to_json() for g in groups}},
                      sort_keys=True, separators=(",", ":"))


def _modules(infos: Mapping[str, Info], suffix: str) -> List[str]:
    return sorted(n[:-len(suffix)] for n in infos if n.endswith(suffix))


def _infer(infos: Mapping[str, Info], config: Optional[Mapping[str, Any]],
           fetch: Optional[Callable[[str], torch.Tensor]]
           ) -> Dict[str, Group]:
    cfg = dict(config or {})
    qm = str(cfg.get("quant_method", "")).lower()
    groups: Dict[str, Group] = {}

    def add(g: Group) -> None:
        groups[g.name] = g

    for m in _modules(infos, ".weight_packed"):
        add(_infer_packed(m, infos, cfg, fetch))
    for m in _modules(infos, ".weight_scale_inv"):
        add(_infer_scale_inv(m, infos, cfg))
    for m in _modules(infos, ".weight_scale"):
        if m + ".weight_packed" in infos or m + ".weight" not in infos:
            continue
        dt = infos[m + ".weight"][0]
        if m + ".weight_scale_2" in infos:
            add(_infer_modelopt(m, infos))
        elif dt in _FP8 or dt == "I8":
            add(_infer_naive(m, infos, cfg))
    for m in _modules(infos, "_blocks"):
        if m + "_scales" in infos:
            add(_infer_gpt_oss(m, infos))
    for m in _modules(infos, ".qweight"):
        add(_infer_gptq_awq(m, infos, cfg, qm))
    for kind in ("nf4", "fp4"):
        for w in _modules(infos, ".quant_state.bitsandbytes__" + kind):
            add(_infer_bnb(w, kind, infos, fetch))
    return groups


def _bnb_state(name: str, t: torch.Tensor) -> Dict[str, Any]:
    """The JSON quant state bitsandbytes stores as a U8 tensor."""
    try:
        st = json.loads(bytes(t.to(torch.uint8).reshape(-1).tolist()))
    except (ValueError, UnicodeDecodeError) as e:
        raise _layout(name, f"quant_state is not JSON: {e}") from None
    ok = isinstance(st, dict) and isinstance(st.get("blocksize"), int) and \
        isinstance(st.get("shape"), list) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0
            for x in st["shape"]) and st["blocksize"] > 0
    if ok and "nested_absmax" in st:
        ok = False
    if ok and st.get("nested_blocksize") is not None:
        ok = isinstance(st["nested_blocksize"], int) and \
            st["nested_blocksize"] > 0 and \
            isinstance(st.get("nested_offset"), (int, float))
    if not ok:
        raise _layout(name, f"quant_state {str(st)[:200]} lacks a positive "
                            f"blocksize, a shape or the nested fields")
    return st


def _infer_bnb(w: str, kind: str, infos: Mapping[str, Info],
               fetch: Optional[Callable[[str], torch.Tensor]]) -> Group:
    comps = {"weight": w, "absmax": w + ".absmax",
             "quant_map": w + ".quant_map",
             "quant_state": w + ".quant_state.bitsandbytes__" + kind}
    if w + ".nested_absmax" in infos or w + ".nested_quant_map" in infos:
        comps["nested_absmax"] = w + ".nested_absmax"
        comps["nested_quant_map"] = w + ".nested_quant_map"
    _need(infos, w, comps.values())
    if fetch is None:
        raise _unsupported(w, "inferring a bitsandbytes group needs its "
                              "quant_state tensor's values")
    dt, sh = infos[comps["quant_state"]]
    if dt != "U8" or len(sh) != 1 or sh[0] > 1 << 16:
        raise _layout(w, f"quant_state must be a small 1-D U8 tensor, not "
                         f"{dt} {list(sh)}")
    st = _bnb_state(w, fetch(comps["quant_state"]))
    return Group(w, "bitsandbytes/4bit", comps, tuple(st["shape"]), bits=4,
                 strategy="group", group_size=st["blocksize"],
                 dtype={"bfloat16": "BF16", "float16": "F16",
                        "float32": "F32"}.get(str(st.get("dtype"))))


def _ct_args(cfg: Mapping[str, Any], module: str) -> Optional[Dict[str, Any]]:
    """The compressed-tensors weights args that apply to module, when the
    config is a compressed-tensors one; None otherwise."""
    if str(cfg.get("quant_method", "")).lower() != "compressed-tensors":
        return None
    groups = cfg.get("config_groups") or {}
    if not isinstance(groups, dict):
        return None
    hits = []
    for gname, scheme in groups.items():
        if not isinstance(scheme, dict):
            continue
        targets = scheme.get("targets") or []
        for t in targets if isinstance(targets, list) else []:
            if not isinstance(t, str):
                continue
            if t.startswith("re:"):
                ok = re.match(t[3:], module) is not None
            else:
                ok = t == module or module.endswith("." + t) or \
                    (t[:1].isupper() and "." not in t)  # a class name
            if ok:
                hits.append((gname, scheme))
                break
    if len(hits) > 1:
        raise _ambiguous(module, "the compressed-tensors config group",
                         [h[0] for h in hits])
    if not hits:
        return None
    w = hits[0][1].get("weights")
    return dict(w) if isinstance(w, dict) else None


def _shape(infos: Mapping[str, Info], name: str) -> Tuple[int, ...]:
    return tuple(infos[name][1])


def _need(infos: Mapping[str, Info], module: str, names: Iterable[str]
          ) -> None:
    for n in names:
        if n not in infos:
            raise _layout(module, f"component {n} is missing")


def _infer_packed(m: str, infos: Mapping[str, Info], cfg: Mapping[str, Any],
                  fetch: Optional[Callable[[str], torch.Tensor]]) -> Group:
    name = m + ".weight"
    dt = infos[m + ".weight_packed"][0]
    args = _ct_args(cfg, m) or {}
    if dt == "U8":
        pshape = _shape(infos, m + ".weight_packed")
        if len(pshape) != 2:
            raise _unsupported(name, f"weight_packed of rank {len(pshape)}")
        shape = (pshape[0], pshape[1] * 2)
        comps = {"packed": m + ".weight_packed", "scale": m + ".weight_scale"}
        if m + ".weight_global_scale" in infos:
            comps["global_scale"] = m + ".weight_global_scale"
            return Group(name, "compressed-tensors/nvfp4-pack-quantized",
                         comps, shape, bits=4, strategy="group",
                         group_size=int(args.get("group_size") or 16))
        sshape = _shape(infos, m + ".weight_scale") \
            if m + ".weight_scale" in infos else ()
        six = args.get("num_bits") == 6 or (
            not args.get("num_bits") and len(sshape) == 2 and
            pshape[1] == 24 * sshape[1] and sshape[1] > 0)
        if six:  # 4 codes in 3 bytes
            return Group(name, "compressed-tensors/mxfp6-pack-quantized",
                         comps, (pshape[0], pshape[1] * 4 // 3), bits=6,
                         strategy="group",
                         group_size=int(args.get("group_size") or 32),
                         scale_encoding="e8m0")
        return Group(name, "compressed-tensors/mxfp4-pack-quantized", comps,
                     shape, bits=4, strategy="group",
                     group_size=int(args.get("group_size") or 32),
                     scale_encoding="e8m0")
    _need(infos, name, (m + ".weight_shape", m + ".weight_scale"))
    if fetch is None:
        raise _unsupported(name, "inferring a pack-quantized group needs the "
                                 "weight_shape tensor's values")
    shape = _read_shape(name, m + ".weight_shape", infos, fetch)
    comps = {"packed": m + ".weight_packed", "scale": m + ".weight_scale",
             "shape": m + ".weight_shape"}
    zp = "none"
    if m + ".weight_zero_point" in infos:
        comps["zero_point"] = m + ".weight_zero_point"
        zp = "signed-packed-dim0"
    pshape = _shape(infos, m + ".weight_packed")
    if len(pshape) != 2:
        raise _layout(name, f"weight_packed must be 2-D, not {list(pshape)}")
    pcols = pshape[-1]
    if args.get("num_bits"):
        bits = int(args["num_bits"])
    else:
        cands = [b for b in range(1, 9)
                 if len(shape) == 2 and -(-shape[1] * b // 32) == pcols]
        if len(cands) != 1:
            if not cands:
                raise _layout(name, f"weight_packed width {pcols} fits no "
                                    f"bit width for {shape[-1]} columns")
            raise _ambiguous(name, "the bit width",
                             [f"{b} bits" for b in cands])
        bits = cands[0]
    strategy, gsize, block = _scale_strategy(
        name, shape, _shape(infos, m + ".weight_scale"), args)
    return Group(name, "compressed-tensors/pack-quantized", comps, shape,
                 bits=bits, strategy=strategy, group_size=gsize, block=block,
                 zero_point=zp)


def _read_shape(name: str, tensor: str, infos: Mapping[str, Info],
                fetch: Callable[[str], torch.Tensor]) -> Tuple[int, ...]:
    dt, sh = infos[tensor]
    if dt not in ("I64", "I32") or len(sh) != 1 or not 1 <= sh[0] <= 8:
        raise _layout(name, f"{tensor} must be a small 1-D I64 tensor, not "
                            f"{dt} {list(sh)}")
    vals = [int(x) for x in fetch(tensor).tolist()]
    if any(v < 0 for v in vals):
        raise _layout(name, f"{tensor} holds a negative dimension {vals}")
    return tuple(vals)


def _scale_strategy(name: str, shape: Tuple[int, ...],
                    sshape: Tuple[int, ...], args: Mapping[str, Any]
                    ) -> Tuple[str, Optional[int], Optional[Tuple[int, int]]]:
    """(strategy, group size, block) from the scale's shape, the config's
    args winning where they say."""
    strat = args.get("strategy")
    if strat in ("group", "tensor_group") and args.get("group_size"):
        return "group", int(args["group_size"]), None
    if strat == "block" and args.get("block_structure"):
        b = args["block_structure"]
        return "block", None, (int(b[0]), int(b[1]))
    if strat in ("tensor", "channel"):
        return strat, None, None
    n = math.prod(sshape) if sshape else 1
    if len(shape) != 2:
        raise _unsupported(name, f"a weight of rank {len(shape)}")
    out, inn = shape
    if n == 1:
        return "tensor", None, None
    if sshape == (out, 1):
        return "channel", None, None
    if len(sshape) == 2 and sshape[0] == out and sshape[1] > 1:
        if inn % sshape[1]:
            raise _layout(name, f"scale {list(sshape)} has {sshape[1]} "
                                f"groups, which do not divide {inn} columns")
        return "group", inn // sshape[1], None
    if len(sshape) == 2 and sshape[0] < out:
        if sshape == (-(-out // 128), -(-inn // 128)):
            return "block", None, (128, 128)
        raise _ambiguous(name, f"the block size of scale {list(sshape)}",
                         [f"[{bh}, {bw}]" for bh, bw in _block_fits(
                             out, inn, sshape)] or ["none fits"])
    raise _layout(name, f"scale {list(sshape)} fits no strategy for a "
                        f"weight of shape {list(shape)}")


def _block_fits(out: int, inn: int, sshape: Tuple[int, ...]
                ) -> List[Tuple[int, int]]:
    sizes = [1 << k for k in range(0, 12)]
    return [(bh, bw) for bh in sizes for bw in sizes
            if -(-out // bh) == sshape[0] and -(-inn // bw) == sshape[1]][:8]


def _infer_naive(m: str, infos: Mapping[str, Info], cfg: Mapping[str, Any]
                 ) -> Group:
    name = m + ".weight"
    wdt, shape = infos[name]
    sdt, sshape = infos[m + ".weight_scale"]
    comps = {"weight": name, "scale": m + ".weight_scale"}
    args = _ct_args(cfg, m) or {}
    zp = "none"
    if m + ".weight_zero_point" in infos:
        comps["zero_point"] = m + ".weight_zero_point"
        zp = "signed"
    if sdt in _E8M0:
        gsize = int(args.get("group_size") or 32)
        return Group(name, "compressed-tensors/naive-quantized", comps,
                     tuple(shape), bits=8, strategy="group",
                     group_size=gsize, zero_point=zp, scale_encoding="e8m0")
    strategy, gsize, block = _scale_strategy(name, tuple(shape),
                                             tuple(sshape), args)
    return Group(name, "compressed-tensors/naive-quantized", comps,
                 tuple(shape), bits=8, strategy=strategy, group_size=gsize,
                 block=block, zero_point=zp)


def _infer_scale_inv(m: str, infos: Mapping[str, Info],
                     cfg: Mapping[str, Any]) -> Group:
    name = m + ".weight"
    _need(infos, name, (name,))
    shape = _shape(infos, name)
    sdt, sshape = infos[m + ".weight_scale_inv"]
    if len(shape) != 2 or len(sshape) != 2:
        raise _unsupported(name, f"weight {list(shape)} with scale "
                                 f"{list(sshape)}: only 2-D blocks")
    wbs = cfg.get("weight_block_size")
    if wbs is not None:
        if not (isinstance(wbs, list) and len(wbs) == 2):
            raise _descriptor(f"config weight_block_size {wbs!r} is not "
                              f"two integers", name)
        block = (int(wbs[0]), int(wbs[1]))
    elif tuple(sshape) == (-(-shape[0] // 128), -(-shape[1] // 128)):
        block = (128, 128)
    else:
        raise _ambiguous(name, f"the block size of scale {list(sshape)}",
                         [f"[{bh}, {bw}]" for bh, bw in _block_fits(
                             shape[0], shape[1], tuple(sshape))]
                         or ["none fits"])
    return Group(name, "fp8-block-scale-inv",
                 {"weight": name, "scale_inv": m + ".weight_scale_inv"},
                 shape, bits=8, strategy="block", block=block,
                 scale_encoding="e8m0" if sdt in _E8M0 else "float")


def _infer_modelopt(m: str, infos: Mapping[str, Info]) -> Group:
    name = m + ".weight"
    shape = _shape(infos, name)
    if len(shape) != 2:
        raise _unsupported(name, f"a packed weight of rank {len(shape)}")
    return Group(name, "modelopt/nvfp4",
                 {"weight": name, "scale": m + ".weight_scale",
                  "scale_2": m + ".weight_scale_2"},
                 (shape[0], shape[1] * 2), bits=4, strategy="group",
                 group_size=16)


def _infer_gpt_oss(m: str, infos: Mapping[str, Info]) -> Group:
    bshape = _shape(infos, m + "_blocks")
    if len(bshape) < 3:
        raise _layout(m, f"{m}_blocks must have rank 3 or more, not "
                         f"{list(bshape)}")
    *lead, out, g, b = bshape
    shape = tuple(lead) + (g * b * 2, out)
    return Group(m, "gpt-oss/mxfp4",
                 {"blocks": m + "_blocks", "scales": m + "_scales"}, shape,
                 bits=4, strategy="group", group_size=b * 2,
                 scale_encoding="e8m0")


def _infer_gptq_awq(m: str, infos: Mapping[str, Info], cfg: Mapping[str, Any],
                    qm: str) -> Group:
    name = m + ".weight"
    _need(infos, name, (m + ".qzeros", m + ".scales"))
    qshape = _shape(infos, m + ".qweight")
    sshape = _shape(infos, m + ".scales")
    if len(qshape) != 2 or len(sshape) != 2:
        raise _layout(name, f"qweight {list(qshape)} and scales "
                            f"{list(sshape)} must be 2-D")
    comps = {"qweight": m + ".qweight", "qzeros": m + ".qzeros",
             "scales": m + ".scales"}
    ngroups, out = sshape
    if qm not in ("gptq", "awq"):
        cands = []
        if qshape[1] == out:
            cands.append("gptq (zeros stored minus one)")
            cands.append("gptq_v2")
        if qshape[1] * 8 == out and m + ".g_idx" not in infos:
            cands.append("awq-gemm")
        if len(cands) == 1:
            qm = "awq"
        else:
            raise _ambiguous(name, "the layout", cands or ["none fits"])
    if qm == "awq":
        if str(cfg.get("version", "gemm")).lower() != "gemm":
            raise _unsupported(name, f"AWQ version {cfg.get('version')!r} "
                                     f"(only gemm)")
        bits = int(cfg.get("bits", cfg.get("w_bit", 4)))
        inn = qshape[0]
        return Group(name, "awq-gemm", comps, (out, inn), bits=bits,
                     strategy="group",
                     group_size=inn // ngroups if ngroups else None,
                     zero_point="true")
    bits = int(cfg.get("bits", 0) or 0)
    if m + ".g_idx" in infos:
        comps["g_idx"] = m + ".g_idx"
        gshape = _shape(infos, m + ".g_idx")
        if len(gshape) != 1:
            raise _layout(name, f"g_idx must be 1-D, not {list(gshape)}")
        inn = gshape[0]
    elif bits:
        inn = qshape[0] * 32 // bits
    else:
        raise _ambiguous(name, "the bit width", ["2", "3", "4", "8"])
    if not bits:
        bits = qshape[0] * 32 // inn if inn else 0
    fmt = str(cfg.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise _unsupported(name, f"GPTQ checkpoint_format {fmt!r}")
    gs = cfg.get("group_size", -1)
    gsize = inn // ngroups if ngroups else None
    if isinstance(gs, int) and gs > 0:
        gsize = gs
    return Group(name, "gptq", comps, (out, inn), bits=bits,
                 strategy="group", group_size=gsize,
                 zero_point="true" if fmt == "gptq_v2" else
                 "stored-minus-one")


# --------------------------------------------------------------------------
# Validation: every component's dtype and shape, before any arithmetic
# --------------------------------------------------------------------------

def _validate(g: Group, infos: Mapping[str, Info]) -> None:
    need, optional, _ = METHODS[g.method]
    roles = set(g.components)
    missing_roles = set(need) - roles
    if missing_roles:
        raise _descriptor(f"group {g.name}: method {g.method} needs "
                          f"components {sorted(missing_roles)}", g.name)
    unknown = roles - set(need) - set(optional)
    if unknown:
        raise _descriptor(f"group {g.name}: unknown components "
                          f"{sorted(unknown)} for {g.method}", g.name)
    for role, t in g.components.items():
        if t not in infos:
            raise _layout(g.name, f"component {role} names {t}, which the "
                                  f"checkpoint does not contain")
    if g.zero_point not in _ZERO_POINTS.get(g.method, ("none",)):
        raise _descriptor(f"group {g.name}: zero_point {g.zero_point!r} is "
                          f"not a convention of {g.method}", g.name)
    if ("zero_point" in g.components) != (g.zero_point not in ("none",)) \
            and g.method.startswith("compressed-tensors/"):
        raise _layout(g.name, f"zero_point {g.zero_point!r} disagrees with "
                              f"the components")
    if g.scale_encoding not in ("float", "e8m0"):
        raise _descriptor(f"group {g.name}: scale_encoding "
                          f"{g.scale_encoding!r}", g.name)
    if g.strategy not in ("tensor", "channel", "group", "block"):
        raise _descriptor(f"group {g.name}: strategy {g.strategy!r}", g.name)
    if g.dtype is not None and g.dtype not in _FLOATS:
        raise _descriptor(f"group {g.name}: dtype {g.dtype!r}", g.name)
    _VALIDATORS[g.method](g, infos)


def _expect(g: Group, infos: Mapping[str, Info], role: str,
            dtypes: Iterable[str], shape: Optional[Tuple[int, ...]]) -> None:
    t = g.components[role]
    dt, sh = infos[t]
    dtypes = tuple(dtypes)
    if dt not in dtypes:
        raise _layout(g.name, f"{role} {t} is {dt}, not "
                              f"{' or '.join(dtypes)}")
    if shape is not None and tuple(sh) != tuple(shape):
        raise _layout(g.name, f"{role} {t} has shape {list(sh)}, not "
                              f"{list(shape)}")


def _two_d(g: Group) -> Tuple[int, int]:
    if len(g.shape) != 2:
        raise _unsupported(g.name, f"{g.method} of rank {len(g.shape)} "
                                   f"(only 2-D weights)")
    return g.shape[0], g.shape[1]


def _scale_shape(g: Group) -> Tuple[int, ...]:
    out, inn = _two_d(g)
    if g.strategy == "tensor":
        return ()
    if g.strategy == "channel":
        return (out, 1)
    if g.strategy == "group":
        gs = g.group_size
        if not gs or gs <= 0 or inn % gs:
            raise _layout(g.name, f"group size {gs} does not divide "
                                  f"{inn} columns")
        return (out, inn // gs)
    if not g.block:
        raise _descriptor(f"group {g.name}: strategy block without a block",
                          g.name)
    bh, bw = g.block
    return (-(-out // bh), -(-inn // bw))


def _expect_scale(g: Group, infos: Mapping[str, Info], role: str,
                  dtypes: Iterable[str]) -> None:
    want = _scale_shape(g)
    dt, sh = infos[g.components[role]]
    if want == () and math.prod(sh) == 1 and len(sh) <= 2:
        want = tuple(sh)  # a per-tensor scale: [], [1] or [1, 1]
    _expect(g, infos, role, dtypes, want)


def _check_bits(g: Group, allowed: Iterable[int]) -> None:
    if g.bits not in tuple(allowed):
        raise _unsupported(g.name, f"{g.bits}-bit {g.method}")


def _v_pack(g: Group, infos: Mapping[str, Info]) -> None:
    _check_bits(g, range(1, 9))
    out, inn = _two_d(g)
    _expect(g, infos, "packed", ("I32",), (out, -(-inn * g.bits // 32)))
    _expect(g, infos, "shape", ("I64", "I32"), (2,))
    _expect_scale(g, infos, "scale", _FLOATS)
    if "zero_point" in g.components:
        if g.strategy not in ("group", "channel"):
            raise _unsupported(g.name, f"a packed zero point with strategy "
                                       f"{g.strategy}")
        ng = _scale_shape(g)[1]
        _expect(g, infos, "zero_point", ("I32",),
                (-(-out * g.bits // 32), ng))


def _v_naive(g: Group, infos: Mapping[str, Info]) -> None:
    _check_bits(g, (8,))
    _expect(g, infos, "weight", _FP8 + ("I8",), g.shape)
    _expect_scale(g, infos, "scale",
                  _E8M0 if g.scale_encoding == "e8m0" else _FLOATS)
    if "zero_point" in g.components:
        _expect(g, infos, "zero_point", ("I8", "I32") + _FLOATS,
                infos[g.components["scale"]][1])


def _v_fp4(g: Group, infos: Mapping[str, Info], packed: str) -> None:
    _check_bits(g, (4,))
    out, inn = _two_d(g)
    if inn % 2:
        raise _layout(g.name, f"{inn} columns: FP4 pairs need an even count")
    _expect(g, infos, packed, ("U8",), (out, inn // 2))


def _v_nvfp4(g: Group, infos: Mapping[str, Info]) -> None:
    _v_fp4(g, infos, "packed")
    _expect_scale(g, infos, "scale", ("F8_E4M3",) + _FLOATS)
    _expect_numel1(g, infos, "global_scale")


def _expect_numel1(g: Group, infos: Mapping[str, Info], role: str) -> None:
    dt, sh = infos[g.components[role]]
    if dt not in _FLOATS or math.prod(sh) != 1 or len(sh) > 2:
        raise _layout(g.name, f"{role} {g.components[role]} must be one "
                              f"float value, not {dt} {list(sh)}")


def _v_mxfp4(g: Group, infos: Mapping[str, Info]) -> None:
    _v_fp4(g, infos, "packed")
    _expect_scale(g, infos, "scale", _E8M0)


def _v_mxfp6(g: Group, infos: Mapping[str, Info]) -> None:
    _check_bits(g, (6,))
    out, inn = _two_d(g)
    if inn % 4:
        raise _layout(g.name, f"{inn} columns: FP6 packs 4 values in 3 bytes")
    _expect(g, infos, "packed", ("U8",), (out, inn * 3 // 4))
    _expect_scale(g, infos, "scale", _E8M0)


def _v_modelopt(g: Group, infos: Mapping[str, Info]) -> None:
    _v_fp4(g, infos, "weight")
    _expect_scale(g, infos, "scale", ("F8_E4M3",))
    _expect_numel1(g, infos, "scale_2")


def _v_scale_inv(g: Group, infos: Mapping[str, Info]) -> None:
    _check_bits(g, (8,))
    _expect(g, infos, "weight", _FP8, g.shape)
    _expect_scale(g, infos, "scale_inv",
                  _E8M0 if g.scale_encoding == "e8m0" else _FLOATS)


def _v_gpt_oss(g: Group, infos: Mapping[str, Info]) -> None:
    _check_bits(g, (4,))
    if len(g.shape) < 2 or g.group_size != 32:
        raise _layout(g.name, f"shape {list(g.shape)} with group size "
                              f"{g.group_size}: MXFP4 blocks are 32 values")
    *lead, inn, out = g.shape
    if inn % 32:
        raise _layout(g.name, f"{inn} inputs are not whole blocks of 32")
    _expect(g, infos, "blocks", ("U8",), tuple(lead) + (out, inn // 32, 16))
    _expect(g, infos, "scales", _E8M0, tuple(lead) + (out, inn // 32))


def _v_gptq(g: Group, infos: Mapping[str, Info]) -> None:
    _check_bits(g, (2, 3, 4, 8))
    out, inn = _two_d(g)
    gs = g.group_size
    if not gs or gs <= 0 or (inn % gs and "g_idx" not in g.components):
        raise _layout(g.name, f"group size {gs} does not divide {inn} inputs")
    ng = -(-inn // gs)
    if inn * g.bits % 32 or out * g.bits % 32:
        raise _layout(g.name, f"{g.bits}-bit values do not fill whole int32 "
                              f"words for shape {list(g.shape)}")
    _expect(g, infos, "qweight", ("I32",), (inn * g.bits // 32, out))
    _expect(g, infos, "qzeros", ("I32",), (ng, out * g.bits // 32))
    _expect(g, infos, "scales", _FLOATS, (ng, out))
    if "g_idx" in g.components:
        _expect(g, infos, "g_idx", ("I32", "I64"), (inn,))


def _v_awq(g: Group, infos: Mapping[str, Info]) -> None:
    _check_bits(g, (4,))
    out, inn = _two_d(g)
    gs = g.group_size
    if not gs or gs <= 0 or inn % gs:
        raise _layout(g.name, f"group size {gs} does not divide {inn} inputs")
    if out % 8:
        raise _layout(g.name, f"{out} outputs are not whole int32 words")
    _expect(g, infos, "qweight", ("I32",), (inn, out // 8))
    _expect(g, infos, "qzeros", ("I32",), (inn // gs, out // 8))
    _expect(g, infos, "scales", _FLOATS, (inn // gs, out))


def _v_bnb(g: Group, infos: Mapping[str, Info]) -> None:
    _check_bits(g, (4,))
    n = math.prod(g.shape)
    bs = g.group_size
    if not bs or bs <= 0:
        raise _layout(g.name, f"block size {bs}")
    dt, sh = infos[g.components["weight"]]
    if dt != "U8" or math.prod(sh) != -(-n // 2) or len(sh) > 2 or \
            (len(sh) == 2 and sh[1] != 1):
        raise _layout(g.name, f"weight {g.components['weight']} is {dt} "
                              f"{list(sh)}, not U8 [{-(-n // 2)}, 1]")
    nb = -(-n // bs)
    nested = "nested_absmax" in g.components
    _expect(g, infos, "absmax", ("U8",) if nested else ("F32",), (nb,))
    _expect(g, infos, "quant_map", ("F32",), (16,))
    dt, sh = infos[g.components["quant_state"]]
    if dt != "U8" or len(sh) != 1:
        raise _layout(g.name, f"quant_state is {dt} {list(sh)}, not 1-D U8")
    if nested:
        _expect(g, infos, "nested_quant_map", ("F32",), (256,))
        dt, sh = infos[g.components["nested_absmax"]]
        if dt != "F32" or len(sh) != 1:
            raise _layout(g.name, f"nested_absmax is {dt} {list(sh)}, not "
                                  f"1-D F32")


_VALIDATORS: Dict[str, Callable[[Group, Mapping[str, Info]], None]] = {
    "compressed-tensors/pack-quantized": _v_pack,
    "compressed-tensors/naive-quantized": _v_naive,
    "compressed-tensors/nvfp4-pack-quantized": _v_nvfp4,
    "compressed-tensors/mxfp4-pack-quantized": _v_mxfp4,
    "compressed-tensors/mxfp6-pack-quantized": _v_mxfp6,
    "modelopt/nvfp4": _v_modelopt,
    "fp8-block-scale-inv": _v_scale_inv,
    "gpt-oss/mxfp4": _v_gpt_oss,
    "gptq": _v_gptq,
    "awq-gemm": _v_awq,
    "bitsandbytes/4bit": _v_bnb,
}


# --------------------------------------------------------------------------
# Dequantization (vectorized torch ops, float32 arithmetic, one rounding to
# the requested dtype at the end)
# --------------------------------------------------------------------------

def _bitstream(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Row-wise unpacking of a dense LSB-first bit stream: words [rows, n]
    (int32, little-endian) -> [rows, count] unsigned values (int32)."""
    rows = words.shape[0]
    by = words.contiguous().view(torch.uint8).reshape(rows, -1)
    if bits == 8:
        return by[:, :count].to(torch.int32)
    if bits == 4:
        v = torch.stack((by & 0xF, by >> 4), dim=-1).reshape(rows, -1)
        return v[:, :count].to(torch.int32)
    if bits == 2:
        v = torch.stack((by & 3, (by >> 2) & 3, (by >> 4) & 3, by >> 6),
                        dim=-1).reshape(rows, -1)
        return v[:, :count].to(torch.int32)
    pos = torch.arange(count, dtype=torch.int64) * bits
    lo = (pos // 8)
    shift = (pos % 8).to(torch.int32)
    b16 = torch.nn.functional.pad(by, (0, 1)).to(torch.int32)
    pair = b16[:, lo] | (b16[:, lo + 1] << 8)
    return (pair >> shift) & ((1 << bits) - 1)


def _float_scale(t: torch.Tensor, encoding: str) -> torch.Tensor:
    if encoding == "e8m0":
        if t.dtype == torch.uint8:
            t = t.view(torch.float8_e8m0fnu)
        return t.to(torch.float32)
    return t.to(torch.float32)


def _expand(s: torch.Tensor, g: Group) -> torch.Tensor:
    """A scale-shaped tensor broadcastable to the [out, in] weight (block:
    expanded; group: [out, ng, 1] for a [out, ng, gs] view)."""
    out, inn = g.shape
    if g.strategy == "tensor":
        return s.reshape(())
    if g.strategy == "channel":
        return s.reshape(out, 1)
    if g.strategy == "group":
        return s.reshape(out, inn // g.group_size, 1)
    bh, bw = g.block
    return s.repeat_interleave(bh, 0)[:out].repeat_interleave(bw, 1)[:, :inn]


def _apply(q: torch.Tensor, scale: torch.Tensor, g: Group,
           zero: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(q - zero) * scale with q [out, in] float32."""
    out, inn = g.shape
    grouped = g.strategy == "group"
    if grouped:
        q = q.reshape(out, inn // g.group_size, g.group_size)
    if zero is not None:
        q = q - _expand(zero, g)
    q = q * _expand(scale, g)
    return q.reshape(out, inn) if grouped else q


def _fp4(packed: torch.Tensor, out: int, inn: int) -> torch.Tensor:
    lut = torch.tensor(_E2M1, dtype=torch.float32)
    by = packed.reshape(out, inn // 2).to(torch.int64)
    return torch.stack((lut[by & 0xF], lut[by >> 4]), -1).reshape(out, inn)


def dequantize_group(g: Group, fetch: Callable[[str], torch.Tensor],
                     dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The dense tensor of group g (already validated by :func:`describe`)
    in dtype. fetch reads one component by tensor name."""
    check_output_dtype(dtype)
    if math.prod(g.shape) == 0:
        return torch.empty(g.shape, dtype=dtype)
    c = {role: fetch(t) for role, t in g.components.items()}
    out = _kernel(g, c, dtype)
    if out is None:
        out = _DEQUANT[g.method](g, c).to(dtype)
    return out


# -- the C kernels (st_dequantize), for the layouts they cover -------------

#: False: every group through the torch operations above (tests compare).
USE_KERNELS = True
#: Below this many values one call; above, the rows split across threads.
_SPLIT_MIN = 1 << 20
_POOL: List[Any] = []

_FP8_ELEMENTS = {torch.float8_e4m3fn: "QUANT_FP8_E4M3",
                 torch.float8_e5m2: "QUANT_FP8_E5M2"}
_OUT = {torch.bfloat16: (14, torch.int16), torch.float16: (13, torch.int16),
        torch.float32: (17, torch.float32)}  # st_dtype ST_BF16, ST_F16, ST_F32


def _kernel_args(g: Group, c: Dict[str, torch.Tensor]) -> Optional[
        Tuple[str, int, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
    """(element, bits, q, float32 scale, float32 zero or None) for
    st_dequantize, or None when the group is not one it covers."""
    m = g.method
    if m == "compressed-tensors/pack-quantized":
        _check_shape_values(g, c)
        zero = None
        if "zero_point" in c:
            out = g.shape[0]
            off = 1 << (g.bits - 1)
            zt = _bitstream(c["zero_point"].t(), g.bits, out)
            zero = (zt.t() - off).to(torch.float32)
        return ("QUANT_INT_PACKED", g.bits, c["packed"],
                c["scale"].to(torch.float32), zero)
    if m == "compressed-tensors/naive-quantized":
        el = _FP8_ELEMENTS.get(c["weight"].dtype)
        if el is None:
            return None
        zero = c["zero_point"].to(torch.float32) if "zero_point" in c \
            else None
        return (el, 0, c["weight"], _float_scale(c["scale"], g.scale_encoding),
                zero)
    if m == "fp8-block-scale-inv":
        el = _FP8_ELEMENTS.get(c["weight"].dtype)
        if el is None:
            return None
        return (el, 0, c["weight"],
                _float_scale(c["scale_inv"], g.scale_encoding), None)
    if m == "compressed-tensors/nvfp4-pack-quantized":
        s = c["scale"].to(torch.float32) / c["global_scale"].to(
            torch.float32).reshape(())
        return ("QUANT_FP4_E2M1", 0, c["packed"], s, None)
    if m == "compressed-tensors/mxfp4-pack-quantized":
        return ("QUANT_FP4_E2M1", 0, c["packed"],
                _float_scale(c["scale"], "e8m0"), None)
    if m == "modelopt/nvfp4":
        s = c["scale"].to(torch.float32) * c["scale_2"].to(
            torch.float32).reshape(())
        return ("QUANT_FP4_E2M1", 0, c["weight"], s, None)
    if m == "gpt-oss/mxfp4":
        return ("QUANT_FP4_E2M1", 0, c["blocks"],
                _float_scale(c["scales"], "e8m0"), None)
    return None


def _kernel(g: Group, c: Dict[str, torch.Tensor], dtype: torch.dtype
            ) -> Optional[torch.Tensor]:
    """The group through the C kernel (rows split across threads, the GIL
    released), or None where the torch path must do it."""
    if not USE_KERNELS or not hasattr(_C, "dequantize") or \
            any(t.device.type != "cpu" for t in c.values()):
        return None
    args = _kernel_args(g, c)
    if args is None:
        return None
    element, bits, q, scale, zero = args
    matrix_rows = 0
    if g.method == "gpt-oss/mxfp4":  # rows of [..., out, in], written [in, out]
        *lead, cols, matrix_rows = g.shape
        out_rows = math.prod(lead) * matrix_rows
    else:
        out_rows, cols = g.shape
    srows, scols = {"tensor": (out_rows, cols), "channel": (1, cols),
                    "group": (1, g.group_size or cols),
                    "block": g.block or (1, cols)}[g.strategy]
    code, store = _OUT[dtype]
    dst = torch.empty((out_rows, cols), dtype=store)
    qb = q.contiguous().view(torch.uint8).numpy()
    sb = scale.contiguous().numpy()
    zb = zero.contiguous().numpy() if zero is not None else None
    db = dst.numpy()
    el = getattr(_C, element)

    def run(r0: int, r1: int) -> None:
        _C.dequantize(el, bits, code, out_rows, cols, srows, scols, qb, sb,
                      zb, r0, r1, db if matrix_rows else db[r0:r1],
                      matrix_rows)

    nthreads = os.cpu_count() or 1
    if out_rows * cols < _SPLIT_MIN or nthreads < 2 or out_rows < 2:
        run(0, out_rows)
    else:
        if not _POOL:
            from concurrent.futures import ThreadPoolExecutor
            _POOL.append(ThreadPoolExecutor(nthreads,
                                            thread_name_prefix="st-dequant"))
        step = -(-out_rows // nthreads)
        futs = [_POOL[0].submit(run, r, min(r + step, out_rows))
                for r in range(0, out_rows, step)]
        for f in futs:
            f.result()
    dst = dst if store == dtype else dst.view(dtype)
    return dst.reshape(g.shape)


def _check_shape_values(g: Group, c: Dict[str, torch.Tensor]) -> None:
    stored = tuple(int(x) for x in c["shape"].tolist())
    if stored != g.shape:
        raise _layout(g.name, f"weight_shape holds {list(stored)}, not "
                              f"{list(g.shape)}")


def _dq_pack(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    out, inn = g.shape
    _check_shape_values(g, c)
    off = 1 << (g.bits - 1)
    q = (_bitstream(c["packed"], g.bits, inn) - off).to(torch.float32)
    zero = None
    if "zero_point" in c:
        ng = _scale_shape(g)[1]
        zt = _bitstream(c["zero_point"].t(), g.bits, out)  # [ng, out]
        zero = (zt.t() - off).to(torch.float32).reshape(out, ng)
    return _apply(q, c["scale"].to(torch.float32), g, zero)


def _dq_naive(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    q = c["weight"].to(torch.float32)
    zero = c["zero_point"].to(torch.float32) if "zero_point" in c else None
    return _apply(q, _float_scale(c["scale"], g.scale_encoding), g, zero)


def _dq_nvfp4(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    out, inn = g.shape
    s = c["scale"].to(torch.float32) / c["global_scale"].to(
        torch.float32).reshape(())
    return _apply(_fp4(c["packed"], out, inn), s, g)


def _dq_mxfp4(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    out, inn = g.shape
    return _apply(_fp4(c["packed"], out, inn),
                  _float_scale(c["scale"], "e8m0"), g)


def _fp6_e2m3(codes: torch.Tensor) -> torch.Tensor:
    """E2M3 values of 6-bit codes (sign in bit 5; exponent bias 1)."""
    mag = codes & 31
    e, m = (mag >> 3).to(torch.float32), (mag & 7).to(torch.float32)
    v = torch.where(e == 0, m / 8, (1 + m / 8) * torch.exp2(e - 1))
    return torch.where((codes & 32) != 0, -v, v)


def _dq_mxfp6(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    out, inn = g.shape
    v = _fp6_e2m3(_bitstream(c["packed"], 6, inn))
    return _apply(v, _float_scale(c["scale"], "e8m0"), g)


def _dq_modelopt(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    out, inn = g.shape
    s = c["scale"].to(torch.float32) * c["scale_2"].to(
        torch.float32).reshape(())
    return _apply(_fp4(c["weight"], out, inn), s, g)


def _dq_scale_inv(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    return _apply(c["weight"].to(torch.float32),
                  _float_scale(c["scale_inv"], g.scale_encoding), g)


def _dq_gpt_oss(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    *lead, inn, out = g.shape
    rows = math.prod(lead) * out
    v = _fp4(c["blocks"], rows, inn)
    s = _float_scale(c["scales"], "e8m0").reshape(rows, inn // 32, 1)
    w = (v.reshape(rows, inn // 32, 32) * s).reshape(*lead, out, inn)
    return w.transpose(-1, -2)


def _dq_gptq(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    out, inn = g.shape
    q = _bitstream(c["qweight"].t(), g.bits, inn)          # [out, in]
    z = _bitstream(c["qzeros"], g.bits, out)               # [ng, out]
    if g.zero_point == "stored-minus-one":
        z = z + 1
    s = c["scales"].to(torch.float32)                      # [ng, out]
    if "g_idx" in c:
        gi = c["g_idx"].to(torch.int64)
        ng = s.shape[0]
        if bool(((gi < 0) | (gi >= ng)).any()):
            raise _layout(g.name, f"g_idx holds a group outside 0..{ng - 1}")
        zf = z.t().to(torch.float32)[:, gi]
        return (q.to(torch.float32) - zf) * s.t()[:, gi]
    gg = Group(g.name, g.method, g.components, g.shape,
               strategy="group", group_size=g.group_size)
    return _apply(q.to(torch.float32), s.t().contiguous(), gg,
                  z.t().to(torch.float32))


def _dq_awq(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    out, inn = g.shape
    order = torch.tensor(_AWQ_ORDER)
    inv = torch.argsort(order)  # column m of a word is nibble inv[m]

    def unpack(words: torch.Tensor) -> torch.Tensor:
        n = words.shape[0]
        nib = _bitstream(words, 4, words.shape[1] * 8).reshape(n, -1, 8)
        return nib[:, :, inv].reshape(n, -1)

    q = unpack(c["qweight"]).t().to(torch.float32)        # [out, in]
    z = unpack(c["qzeros"]).t().to(torch.float32)          # [out, ng]
    s = c["scales"].to(torch.float32).t()                  # [out, ng]
    gg = Group(g.name, g.method, g.components, g.shape,
               strategy="group", group_size=g.group_size)
    return _apply(q, s.contiguous(), gg, z.contiguous())


def _dq_bnb(g: Group, c: Dict[str, torch.Tensor]) -> torch.Tensor:
    st = _bnb_state(g.name, c["quant_state"])
    if tuple(st["shape"]) != g.shape or st["blocksize"] != g.group_size:
        raise _layout(g.name, f"quant_state says shape {st['shape']} and "
                              f"blocksize {st['blocksize']}, not "
                              f"{list(g.shape)} and {g.group_size}")
    n = math.prod(g.shape)
    bs = g.group_size
    nb = -(-n // bs)
    by = c["weight"].reshape(-1)
    codes = torch.stack((by >> 4, by & 15), -1).reshape(-1)[:n].to(torch.int64)
    vals = c["quant_map"].to(torch.float32)[codes]
    absmax = c["absmax"]
    if "nested_absmax" in c:
        nbs = st.get("nested_blocksize")
        na = c["nested_absmax"].to(torch.float32)
        if not nbs or na.numel() != -(-nb // nbs):
            raise _layout(g.name, f"nested_absmax has {na.numel()} blocks, "
                                  f"not ceil({nb} / {nbs})")
        a = c["nested_quant_map"].to(torch.float32)[absmax.to(torch.int64)]
        absmax = a * na.repeat_interleave(nbs)[:nb] + float(st["nested_offset"])
    absmax = absmax.to(torch.float32)
    return (vals * absmax.repeat_interleave(bs)[:n]).reshape(g.shape)


_DEQUANT: Dict[str, Callable[[Group, Dict[str, torch.Tensor]],
                             torch.Tensor]] = {
    "compressed-tensors/pack-quantized": _dq_pack,
    "compressed-tensors/naive-quantized": _dq_naive,
    "compressed-tensors/nvfp4-pack-quantized": _dq_nvfp4,
    "compressed-tensors/mxfp4-pack-quantized": _dq_mxfp4,
    "compressed-tensors/mxfp6-pack-quantized": _dq_mxfp6,
    "modelopt/nvfp4": _dq_modelopt,
    "fp8-block-scale-inv": _dq_scale_inv,
    "gpt-oss/mxfp4": _dq_gpt_oss,
    "gptq": _dq_gptq,
    "awq-gemm": _dq_awq,
    "bitsandbytes/4bit": _dq_bnb,
}


# --------------------------------------------------------------------------
# Whole checkpoints
# --------------------------------------------------------------------------

def infos_of(tensors: Mapping[str, torch.Tensor]) -> Dict[str, Info]:
    """(file dtype name, file shape) of each torch tensor."""
    out = {}
    for n, t in tensors.items():
        name = _dtypes.st_name(t.dtype)
        if name is None:
            raise _unsupported(n, f"torch dtype {t.dtype}")
        out[n] = (name, _dtypes.file_shape(t.dtype, t.shape))
    return out


def dequantize_tensors(tensors: Dict[str, torch.Tensor],
                       groups: Mapping[str, Group],
                       dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """tensors with every group replaced by its dense tensor (at the place
    of its first component); other tensors pass through unchanged. One
    group's working set at a time: each group's components are dropped
    from the result as it is built."""
    check_output_dtype(dtype)
    owner = {t: g for g in groups.values() for t in g.components.values()}
    out: Dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        g = owner.get(name)
        if g is None:
            out[name] = t
        elif g.name not in out:
            out[g.name] = dequantize_group(g, tensors.__getitem__, dtype)
    return out


def logical_names(names: Iterable[str], groups: Mapping[str, Group]
                  ) -> List[str]:
    """names with each group's components replaced by the group's name."""
    owner = {t: g.name for g in groups.values()
             for t in g.components.values()}
    seen = set()
    out = []
    for n in names:
        n = owner.get(n, n)
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def dequantize_checkpoint(ckpt: Any, progress: Optional[bool],
                          dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """Every tensor of a sharded.ShardedCheckpoint with its groups
    dequantized: the shards' descriptors (merged), else inference with the
    config.json of the checkpoint's directory."""
    check_output_dtype(dtype)
    tensors = ckpt.to_dict(progress)
    shards = sorted(set(ckpt.weight_map.values()))
    mds = [ckpt.metadata(s) for s in shards]
    config = read_config(ckpt._dir, mds[0] if mds else None)
    groups = describe(infos_of(tensors), mds, config, tensors.__getitem__)
    return dequantize_tensors(tensors, groups, dtype)


# --------------------------------------------------------------------------
# Writing: round-to-nearest quantization into the compressed-tensors layout
# --------------------------------------------------------------------------

#: scheme -> (format, weights args of its quantization_config). The names
#: are compressed-tensors' preset names (weight-only).
SCHEMES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "W4A16": ("pack-quantized", {"num_bits": 4, "type": "int",
                                 "strategy": "group", "group_size": 128}),
    "W8A16": ("pack-quantized", {"num_bits": 8, "type": "int",
                                 "strategy": "group", "group_size": 128}),
    "W8A16_CHANNEL": ("pack-quantized", {"num_bits": 8, "type": "int",
                                         "strategy": "channel"}),
    "FP8": ("float-quantized", {"num_bits": 8, "type": "float",
                                "strategy": "tensor"}),
    "FP8_CHANNEL": ("float-quantized", {"num_bits": 8, "type": "float",
                                        "strategy": "channel"}),
    "FP8_BLOCK": ("float-quantized", {"num_bits": 8, "type": "float",
                                      "strategy": "block",
                                      "block_structure": [128, 128]}),
    "NVFP4A16": ("nvfp4-pack-quantized", {
        "num_bits": 4, "type": "float", "strategy": "tensor_group",
        "group_size": 16, "scale_dtype": "torch.float8_e4m3fn"}),
    "MXFP4A16": ("mxfp4-pack-quantized", {
        "num_bits": 4, "type": "float", "strategy": "group", "group_size": 32,
        "scale_dtype": "torch.uint8"}),
}

_DEFAULT_IGNORE = ("lm_head", "re:.*embed.*")
_FP8_MAX = 448.0


def _refuse(message: str, name: Optional[str] = None) -> SafetensorQuantError:
    return _err(SafetensorQuantUnsupportedError, message, name,
                ST_ERR_INVALID_ARGUMENT)


def _parse_spec(spec: Any) -> Tuple[str, Dict[str, Any], Tuple[str, ...]]:
    """(format, weights args, ignore patterns) of a quantize= value: a
    scheme name, or {"scheme": name, "group_size": g, "ignore": [...]}."""
    opts: Dict[str, Any] = {}
    if isinstance(spec, dict):
        opts = dict(spec)
        spec = opts.pop("scheme", None)
    if not isinstance(spec, str) or spec.upper() not in SCHEMES:
        raise _refuse(f"quantize: unknown scheme {spec!r}; one of "
                      f"{', '.join(SCHEMES)}")
    fmt, args = SCHEMES[spec.upper()]
    args = dict(args)
    if "group_size" in opts:
        gs = opts.pop("group_size")
        if args["strategy"] != "group" or args["type"] != "int" or not isinstance(gs, int) or \
                isinstance(gs, bool) or gs <= 0:
            raise _refuse(f"quantize: group_size {gs!r} for scheme {spec}")
        args["group_size"] = gs
    ignore = opts.pop("ignore", _DEFAULT_IGNORE)
    if isinstance(ignore, str) or not all(isinstance(x, str) for x in ignore):
        raise _refuse("quantize: ignore must be a list of names or "
                      "re: patterns")
    if opts:
        raise _refuse(f"quantize: unknown options {sorted(opts)}")
    return fmt, args, tuple(ignore)


def _ignored(module: str, ignore: Iterable[str]) -> bool:
    for p in ignore:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], module):
                return True
        elif module == p or module.endswith("." + p):
            return True
    return False


def _rtn_scale(amax: torch.Tensor, qmax: float, dtype: torch.dtype
               ) -> torch.Tensor:
    """amax / qmax in the scale's dtype; 1 where a group is all zeros."""
    s = (amax.to(torch.float32) / qmax).to(dtype)
    return torch.where(s == 0, torch.ones_like(s), s)


def _pack_rows(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned values [rows, n] (< 2^bits, bits in 2, 4, 8) -> the dense
    LSB-first int32 rows of pack-quantized."""
    rows, n = u.shape
    per = 8 // bits
    u = torch.nn.functional.pad(u.to(torch.uint8), (0, -n % per))
    u = u.reshape(rows, -1, per).to(torch.int32)
    by = torch.zeros(u.shape[:2], dtype=torch.int32)
    for k in range(per):
        by |= u[:, :, k] << (k * bits)
    by = torch.nn.functional.pad(by.to(torch.uint8), (0, -by.shape[1] % 4))
    return by.contiguous().view(torch.int32)


def _quantize_int(w: torch.Tensor, args: Dict[str, Any]
                  ) -> Dict[str, torch.Tensor]:
    bits = args["num_bits"]
    out, inn = w.shape
    qmax = (1 << (bits - 1)) - 1
    wf = w.to(torch.float32)
    if args["strategy"] == "group":
        gs = args["group_size"]
        v = wf.reshape(out, inn // gs, gs)
        s = _rtn_scale(v.abs().amax(-1), qmax, w.dtype)
        q = torch.round(v / s.to(torch.float32).unsqueeze(-1)).reshape(out, inn)
    else:
        s = _rtn_scale(wf.abs().amax(1, keepdim=True), qmax, w.dtype)
        q = torch.round(wf / s.to(torch.float32))
    q = q.clamp(-qmax - 1, qmax).to(torch.int32) + (1 << (bits - 1))
    return {"weight_packed": _pack_rows(q, bits), "weight_scale": s,
            "weight_shape": torch.tensor([out, inn], dtype=torch.int64)}


def _quantize_fp8(w: torch.Tensor, args: Dict[str, Any]
                  ) -> Dict[str, torch.Tensor]:
    out, inn = w.shape
    wf = w.to(torch.float32)
    strat = args["strategy"]
    if strat == "tensor":
        s = _rtn_scale(wf.abs().amax().reshape(1), _FP8_MAX, w.dtype)
        sf = s.to(torch.float32).reshape(())
    elif strat == "channel":
        s = _rtn_scale(wf.abs().amax(1, keepdim=True), _FP8_MAX, w.dtype)
        sf = s.to(torch.float32)
    else:
        bh, bw = args["block_structure"]
        ph, pw = -(-out // bh) * bh, -(-inn // bw) * bw
        p = torch.nn.functional.pad(wf.abs(), (0, pw - inn, 0, ph - out))
        amax = p.reshape(ph // bh, bh, pw // bw, bw).amax((1, 3))
        s = _rtn_scale(amax, _FP8_MAX, w.dtype)
        sf = s.to(torch.float32).repeat_interleave(bh, 0)[:out] \
            .repeat_interleave(bw, 1)[:, :inn]
    q = (wf / sf).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
    return {"weight": q, "weight_scale": s}


def _fp4_codes(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest E2M1 value (ties to the even code), clamping to
    +-6; the 4-bit codes as uint8."""
    a = x.abs()
    mag = ((a > 0.25).to(torch.uint8) + (a >= 0.75) + (a > 1.25) +
           (a >= 1.75) + (a > 2.5) + (a >= 3.5) + (a > 5.0))
    return mag | ((x < 0).to(torch.uint8) << 3)


def _pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """[out, in] codes -> U8 [out, in / 2], the even element low."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _quantize_fp4(w: torch.Tensor, args: Dict[str, Any]
                  ) -> Dict[str, torch.Tensor]:
    out, inn = w.shape
    gs = args["group_size"]
    v = w.to(torch.float32).reshape(out, inn // gs, gs)
    amax = v.abs().amax(-1)
    if args["strategy"] == "group":  # MXFP4: 2^(floor(log2 amax) - 2)
        e = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2,
                        torch.full_like(amax, -127.0)).clamp(-127, 127)
        codes = _fp4_codes(v / torch.exp2(e).unsqueeze(-1))
        return {"weight_packed": _pack_fp4(codes.reshape(out, inn)),
                "weight_scale": (e + 127).to(torch.uint8)}
    tmax = amax.max() if amax.numel() else torch.zeros(())
    g = torch.where(tmax > 0, _FP8_MAX * 6.0 / tmax, torch.ones_like(tmax))
    s = (amax / 6.0 * g).clamp(max=_FP8_MAX).to(torch.float8_e4m3fn)
    eff = (s.to(torch.float32) / g).unsqueeze(-1)
    x = torch.where(eff > 0, v / torch.where(eff > 0, eff, 1.0), 0.0)
    return {"weight_packed": _pack_fp4(_fp4_codes(x).reshape(out, inn)),
            "weight_scale": s,
            "weight_global_scale": g.reshape(1).to(torch.float32)}


def quantize_state_dict(tensors: Mapping[str, torch.Tensor], spec: Any,
                        metadata: Optional[Mapping[str, str]] = None
                        ) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) with every 2-D floating ``*.weight`` not matched
    by the ignore list replaced by its compressed-tensors group (round to
    nearest), and the descriptor and quantization_config added to the
    metadata (docs/QUANT.md, "Writing")."""
    fmt, args, ignore = _parse_spec(spec)
    md = dict(metadata or {})
    for k in (DESCRIPTOR_KEY, CONFIG_KEY):
        if k in md:
            raise _refuse(f"quantize: metadata key {k!r} is written by the "
                          f"quantizer")
    out: Dict[str, torch.Tensor] = {}
    groups: List[Group] = []
    skipped: List[str] = []
    for name, t in tensors.items():
        module = name[:-len(".weight")] if name.endswith(".weight") else None
        if module is None or not isinstance(t, torch.Tensor) or \
                t.dim() != 2 or t.dtype not in OUTPUT_DTYPES:
            out[name] = t
            continue
        if _ignored(module, ignore):
            skipped.append(module)
            out[name] = t
            continue
        w = t.detach().to("cpu")
        if args.get("group_size") and w.shape[1] % args["group_size"]:
            raise _refuse(f"quantize: {name} has {w.shape[1]} columns, not a "
                          f"multiple of the group size {args['group_size']}; "
                          f"add it to ignore", name)
        parts = (_quantize_int if args["type"] == "int" else _quantize_fp4
                 if args["num_bits"] == 4 else _quantize_fp8)(w, args)
        comps = {}
        for local, v in parts.items():
            full = f"{module}.{local}"
            if full in tensors and full != name:
                raise _refuse(f"quantize: {full} already exists", full)
            out[full] = v
            role = {"weight_packed": "packed", "weight_scale": "scale",
                    "weight_shape": "shape", "weight": "weight",
                    "weight_global_scale": "global_scale"}[local]
            comps[role] = full
        groups.append(Group(
            name, "compressed-tensors/" + (
                fmt if fmt.endswith("pack-quantized") else "naive-quantized"),
            comps, tuple(w.shape), bits=args["num_bits"],
            strategy="group" if args["strategy"] == "tensor_group"
            else args["strategy"], group_size=args.get("group_size"),
            scale_encoding="e8m0" if fmt.startswith("mxfp4") else "float",
            block=tuple(args["block_structure"])
            if "block_structure" in args else None,
            dtype=_dtypes.st_name(w.dtype)))
    weights = dict(args, symmetric=True, dynamic=False)
    config = {"quant_method": "compressed-tensors", "format": fmt,
              "quantization_status": "compressed",
              "config_groups": {"group_0": {"targets": ["Linear"],
                                            "weights": weights,
                                            "format": fmt}},
              "ignore": sorted(set(skipped))}
    md[DESCRIPTOR_KEY] = descriptor_json(groups)
    md[CONFIG_KEY] = json.dumps(config, sort_keys=True,
                                separators=(",", ":"))
    return out, md


def quantization_config(metadata: Optional[Mapping[str, str]]
                        ) -> Optional[Dict[str, Any]]:
    """The quantization_config a file written with ``quantize=`` carries
    (put it in the model's config.json for other loaders), or None."""
    if not metadata or CONFIG_KEY not in metadata:
        return None
    return json.loads(metadata[CONFIG_KEY])
