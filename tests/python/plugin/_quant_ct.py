"""Quantized checkpoints made by compressed-tensors itself (its calculate_qparams and
per-format compressors), and its own model-free decompression
(CompressedTensorsDequantizer), for the test_quant_* suites."""

import json
import os

import safetensors.torch
import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
    CompressedTensorsDequantizer)
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,
                                             QuantizationScheme)
from compressed_tensors.quantization.utils.helpers import (calculate_qparams,
                                                           generate_gparam)

#: Linear shapes [out, in] of the test checkpoints: a group-128 friendly pair and one
#: whose sizes are not multiples of 128 (block padding).
SHAPES = {"model.layers.0.self_attn.q_proj": (256, 384),
          "model.layers.0.mlp.down_proj": (192, 512)}


def _minmax(w, args):
    """Per-strategy min and max, shaped like the scale compressed-tensors expects."""
    out, inn = w.shape
    s = args.strategy.value if hasattr(args.strategy, "value") else args.strategy
    if s in ("group", "tensor_group"):
        v = w.reshape(out, inn // args.group_size, args.group_size)
        return v.amin(-1), v.amax(-1)
    if s == "channel":
        return w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    if s == "block":
        bh, bw = args.block_structure
        ph, pw = -(-out // bh) * bh, -(-inn // bw) * bw
        p = torch.nn.functional.pad(w, (0, pw - inn, 0, ph - out))
        v = p.reshape(ph // bh, bh, pw // bw, bw).transpose(1, 2)
        return v.amin((-1, -2)), v.amax((-1, -2))
    return w.amin().reshape(1), w.amax().reshape(1)


def compress(w, args, fmt):
    """The compressed per-module state dict of weight w (local names)."""
    gs = None
    if fmt == "nvfp4-pack-quantized":
        gs = generate_gparam(w.amin().float(), w.amax().float())
    lo, hi = _minmax(w, args)
    scale, zp = calculate_qparams(lo, hi, args, global_scale=gs)
    sd = {"weight": w, "weight_scale": scale, "weight_zero_point": zp}
    if gs is not None:
        sd["weight_global_scale"] = gs
    scheme = QuantizationScheme(targets=["Linear"], weights=args, format=fmt)
    return BaseCompressor.get_value_from_registry(fmt).compress(sd, scheme), scheme


def make_checkpoint(directory, args, fmt, dtype=torch.bfloat16, seed=0,
                    shapes=SHAPES, save=None):
    """A compressed-tensors checkpoint (model.safetensors + config.json) in directory;
    returns (path, {module: original weight})."""
    g = torch.Generator().manual_seed(seed)
    tensors, originals, scheme = {}, {}, None
    for mod, shape in shapes.items():
        w = (torch.randn(shape, generator=g) * 0.05).to(dtype)
        originals[mod] = w
        sd, scheme = compress(w, args, fmt)
        for k, v in sd.items():
            tensors[f"{mod}.{k}"] = v.contiguous()
    tensors["model.norm.weight"] = torch.randn(64, generator=g).to(dtype)
    path = os.path.join(directory, "model.safetensors")
    (save or safetensors.torch.save_file)(tensors, path)
    config = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt,
                                quantization_status="compressed")
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump({"quantization_config": config.to_dict()}, fh)
    return path, originals


def ct_dequantize(directory, dtype, fmt, scheme_args):
    """compressed-tensors' own decompression of the checkpoint in directory: each
    module's components through the format's compressor (its decompress), the other
    tensors as stored. (Its model-free CompressedTensorsDequantizer re-infers the format
    from the scheme and takes an int-quantized scheme without activations for
    pack-quantized, so it is used only where the format is the inferred one.)"""
    scheme = QuantizationScheme(targets=["Linear"], weights=scheme_args, format=fmt)
    return decompress_modules(os.path.join(directory, "model.safetensors"), fmt, scheme,
                              dtype)


def ct_dequantize_model_free(directory, dtype):
    """compressed-tensors' CompressedTensorsDequantizer over the whole checkpoint."""
    tensors = safetensors.torch.load_file(os.path.join(directory, "model.safetensors"))
    return CompressedTensorsDequantizer(directory, dtype=dtype).process(tensors)


def int_args(bits, strategy, group_size=None, symmetric=True):
    return QuantizationArgs(num_bits=bits, type="int", strategy=strategy,
                            group_size=group_size, symmetric=symmetric)


def float_args(strategy, block=None, group_size=None, bits=8, scale_dtype=None):
    return QuantizationArgs(num_bits=bits, type="float", strategy=strategy,
                            block_structure=block, group_size=group_size,
                            symmetric=True, scale_dtype=scale_dtype)


def decompress_modules(path, fmt, scheme, dtype=None):
    """Each module's components of the file at path through compressed-tensors'
    compressor for fmt (its decompress; the weight cast to dtype when given), the other
    tensors as stored."""
    tensors = safetensors.torch.load_file(path)
    comp = BaseCompressor.get_value_from_registry(fmt)
    names = comp.compression_param_names(scheme)
    out = {}
    for name in list(tensors):
        mod, _, local = name.rpartition(".")
        if local != names[0] or f"{mod}.{names[1]}" not in tensors:
            continue
        sd = {n: tensors.pop(f"{mod}.{n}") for n in names if f"{mod}.{n}" in tensors}
        w = comp.decompress(sd, scheme)["weight"]
        out[f"{mod}.weight"] = w if dtype is None else w.to(dtype)
    out.update(tensors)
    return out
