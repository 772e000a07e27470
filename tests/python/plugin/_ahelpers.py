"""Helpers of the drop-in, extension and sharded tests (helper A)."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from typing import Any, Callable, List, NoReturn, Optional, Tuple

import torch

# (file dtype, torch dtype) for every dtype torch can hold.
DTYPES: List[Tuple[str, torch.dtype]] = [
    (n, getattr(torch, t)) for n, t in (
        ("BOOL", "bool"), ("F4", "float4_e2m1fn_x2"), ("U8", "uint8"),
        ("I8", "int8"), ("F8_E5M2", "float8_e5m2"),
        ("F8_E4M3", "float8_e4m3fn"), ("F8_E8M0", "float8_e8m0fnu"),
        ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
        ("F8_E5M2FNUZ", "float8_e5m2fnuz"), ("I16", "int16"),
        ("U16", "uint16"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I32", "int32"), ("U32", "uint32"), ("F32", "float32"),
        ("C64", "complex64"), ("F64", "float64"), ("I64", "int64"),
        ("U64", "uint64"))
]
TORCH_DTYPES = [d for _, d in DTYPES]


def rand(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    """A tensor of random bit patterns (NaN payloads, infinities, ...);
    bool holds 0/1 only."""
    shape = tuple(shape)
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    n = 1
    for s in shape:
        n *= s
    size = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * size,), generator=g, dtype=torch.uint8)
    if not shape:
        return raw.view(dtype).reshape(())
    return raw.view(dtype).reshape(shape)


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu()
    if t.numel() == 0:
        return b""
    dense = torch.empty(t.shape, dtype=t.dtype)  # standard strides
    dense.copy_(t) if t.dtype != torch.float4_e2m1fn_x2 else \
        dense.view(torch.uint8).copy_(t.view(torch.uint8))
    return dense.reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same dtype, shape and bits."""
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert raw_bytes(a) == raw_bytes(b)


def assert_same_dict(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(a), sorted(b))
    for k in a:
        assert_same(a[k], b[k])


def mappings_of(path: str) -> List[Tuple[int, int, str]]:
    """(start, end, perms) of this process's mappings of path."""
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip() == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi, parts[1]))
    return out


def inside_mapping(ptr: int, path: str) -> bool:
    return any(lo <= ptr < hi for lo, hi, _ in mappings_of(path))


def collect() -> None:
    for _ in range(3):
        gc.collect()


#: sharded.py's test hook: a save stops itself (SIGSTOP) at this phase.
STOP_ENV = "TORCH_SAFETENSORS_TEST_STOP_AT"


def stopped_at_phase(save: Callable[[], Any], stop_at: int) -> bool:
    """Forks a child that runs save() and stops itself at phase stop_at;
    True when it stopped there (it is then SIGKILLed), False when it
    finished. The crash tests of save_sharded and of the DCP writer."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.environ[STOP_ENV] = str(stop_at)
            save()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return True
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    return False


def transformers_style(directory: str, ref: Any) -> Optional[dict]:
    """What transformers loads: model.safetensors first, else the index's
    shards, each through the reference package; None when neither."""
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        return ref.load_file(single)
    index = os.path.join(directory, "model.safetensors.index.json")
    if not os.path.isfile(index):
        return None
    with open(index, encoding="utf-8") as fh:
        weight_map = json.load(fh)["weight_map"]
    out = {}
    for fname in sorted(set(weight_map.values())):
        part = ref.load_file(os.path.join(directory, fname))
        out.update({k: v for k, v in part.items() if weight_map.get(k) == fname})
    assert set(out) == set(weight_map)
    return out


def exit_rank(code: int) -> NoReturn:
    """Ends a gloo rank now, without interpreter teardown.

    torch 2.13's gloo backend keeps its worker threads after
    destroy_process_group(). A worker still releasing a finished
    collective's tensors when Python finalizes must take the GIL to drop
    them, is stopped mid-destructor, and the process aborts ("terminate
    called without an active exception"; seen in CI on
    examples/python/dcp_save_load.py). Files are closed by then; only
    stdout and stderr need flushing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
