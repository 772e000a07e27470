"""Helpers shared by helper B's plugin tests (torch.save/torch.load round trips)."""

from __future__ import annotations

import torch

SUPPORTED = [
    getattr(torch, n) for n in (
        "bool", "float4_e2m1fn_x2", "uint8", "int8", "float8_e5m2", "float8_e4m3fn",
        "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz", "int16", "uint16", "float16",
        "bfloat16", "int32", "uint32", "float32", "complex64", "float64", "int64", "uint64")
    if hasattr(torch, n)
]


def random_tensor(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    """Random bits of ``dtype`` (bool limited to 0/1), covering NaN payloads and infinities."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    if dtype == torch.bool:
        return torch.randint(0, 2, tuple(shape), generator=g, dtype=torch.uint8).bool()
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * size,), generator=g, dtype=torch.uint8)
    return raw.view(dtype).reshape(tuple(shape))


def bits(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return bytes(t.reshape(-1).view(torch.uint8).numpy().tobytes()) if t.numel() else b""


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert isinstance(b, torch.Tensor)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert bits(a) == bits(b)


def assert_tree_equal(a, b) -> None:
    """Structural equality with bitwise tensors and exact container types."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert_same(a, b)
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        for k in a:
            assert type(k) is type(next(x for x in b if x == k))
            assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_tree_equal(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b
        if isinstance(a, float):
            assert str(a) == str(b)  # keeps the sign of zero
