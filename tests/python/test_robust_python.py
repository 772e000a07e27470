"""The Python layer on hostile files: malformed files given to ``torch.load``, ``safe_open``,
``load_file`` and ``load`` raise the library's exception (``SafetensorError``) -- never a
segfault, never another exception type, never a fall back to pickle -- and a bounded
hypothesis fuzz of the same entry points, the structure record parser included.

Everything that touches a hostile file runs in a child process (``_robust_child.py``), so a
crash is a test failure that names the file instead of killing pytest.

    ST_ROBUST_FUZZ_SECONDS   time budget of the hypothesis fuzz (default 40)
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import hypothesis  # noqa: E402,F401  (a missing package fails, never skips)
import torch  # noqa: E402
import torch_safetensors  # noqa: E402,F401

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_robust_child.py"
CORPUS = HERE.parent / "fuzz" / "corpus" / "open"
FUZZ_SECONDS = float(os.environ.get("ST_ROBUST_FUZZ_SECONDS", "40"))


def _run_child(args, timeout):
    env = dict(os.environ)
    env.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "1")
    proc = subprocess.run([sys.executable, str(CHILD)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc


def _check_child(proc, progress: Path):
    last = progress.read_text().strip().splitlines()[-1:] if progress.exists() else []
    assert proc.returncode == 0, (
        f"child died with {proc.returncode} (negative: a signal) while on {last}\n"
        f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --- malformed files ------------------------------------------------------------------------------


def _good_checkpoint(tmp: Path) -> bytes:
    p = tmp / "good.safetensors"
    obj = {"model": {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(4, dtype=torch.int8)},
           "step": 7, "opt": [(0.9, 0.99), None, {"lr": 1e-3}], "name": "x"}
    torch.save(obj, p, format="safetensors")
    return p.read_bytes()


def _mutations(good: bytes, rng: random.Random):
    (n,) = struct.unpack("<Q", good[:8])
    header = good[8:8 + n]
    out = {}
    for cut in sorted({0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, len(good) - 1}):
        out[f"truncated-{cut}"] = good[:cut]
    out["trailing"] = good + b"\0\0"
    out["n-past-end"] = struct.pack("<Q", len(good)) + good[8:]
    out["n-max"] = struct.pack("<Q", 2**64 - 1) + good[8:]
    out["n-over-cap"] = struct.pack("<Q", 100_000_001) + good[8:]
    for i in range(60):
        b = bytearray(header)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(b))
            b[pos] = rng.choice(b'{}[]:,"\\0-9e.\x00\xff ') if rng.random() < 0.7 else rng.randrange(256)
        out[f"flip-{i}"] = good[:8] + bytes(b) + good[8 + n:]
    rec_key = b'"torch_safetensors.structure"'
    if rec_key in header:
        for i, junk in enumerate([b'"{\\"version\\":1,\\"root\\":{\\"t\\":\\"list\\"}}"',
                                  b'"[]"', b'"null"', b'"{\\"version\\":1}"',
                                  b'"' + b'[' * 3000 + b'"']):
            start = header.index(rec_key) + len(rec_key) + 1
            end = header.index(b'"', start + 1)
            while header[end - 1:end] == b"\\":
                end = header.index(b'"', end + 1)
            new = header[:start] + junk + header[end + 1:]
            new += b" " * ((8 - (len(new) % 8)) % 8)
            out[f"record-{i}"] = struct.pack("<Q", len(new)) + new + good[8 + n:]
    return out


def test_malformed_files_raise_our_error_in_every_entry_point(tmp_path):
    rng = random.Random(0x5AFE)
    files = {}
    if CORPUS.is_dir():
        for p in sorted(CORPUS.iterdir()):
            files["corpus-" + p.name] = p.read_bytes()
    files.update(_mutations(_good_checkpoint(tmp_path), rng))
    d = tmp_path / "cases"
    d.mkdir()
    for name, blob in files.items():
        (d / name).write_bytes(blob)
    progress = tmp_path / "progress.txt"
    proc = _run_child(["files", d, progress], timeout=600)
    out = _check_child(proc, progress)
    assert out["files"] == len(files)
    assert not out["failures"], out["failures"][:10]
    # The set must contain both: files every entry point refuses, and files accepted.
    assert out["rejected"] > 50 and out["accepted"] > 5, out


def test_child_detects_a_pickle_fallback(tmp_path):
    """The guard in the child is effective: a real pickle checkpoint trips it."""
    p = tmp_path / "cases"
    p.mkdir()
    torch.save({"a": torch.ones(1)}, p / "pickled.pt")  # torch's own zip+pickle format
    progress = tmp_path / "progress.txt"
    proc = _run_child(["files", p, progress, "--expect-pickle"], timeout=300)
    out = _check_child(proc, progress)
    assert out["pickle_trips"] >= 1, out


def test_child_crash_is_reported(tmp_path):
    """A segfault in the child fails the test with the file's name (the isolation works)."""
    progress = tmp_path / "progress.txt"
    proc = _run_child(["crash", progress], timeout=120)
    assert proc.returncode < 0
    with pytest.raises(AssertionError, match="crash-me"):
        _check_child(proc, progress)


# --- hypothesis fuzz of the Python entry points --------------------------------------------------


def test_hypothesis_fuzz_python_entry_points(tmp_path):
    progress = tmp_path / "progress.txt"
    proc = _run_child(["hypothesis", tmp_path, progress, FUZZ_SECONDS],
                      timeout=int(FUZZ_SECONDS) + 300)
    out = _check_child(proc, progress)
    assert not out["failures"], out["failures"][:5]
    assert out["examples"] > 100, out
    print(f"hypothesis: {out['examples']} examples in {out['seconds']:.1f} s, "
          f"{out['accepted']} accepted, {out['rejected']} rejected")


# --- regression cases of findings (each a row; see docs/ROBUSTNESS_MAP.md, "Findings") -----------

RECORD_REGRESSIONS = [
    # hypothesis finding F-P1: a device node with a bad or missing value raised RuntimeError
    ("device-node-bad-string", {"version": 1, "root": {"t": "device", "v": "553904"}}),
    ("device-node-missing-v", {"version": 1, "root": {"t": "device"}}),
    ("device-node-not-str", {"version": 1, "root": {"t": "device", "v": [1]}}),
    # F-P2: a tensor node whose device string torch cannot parse raised RuntimeError
    ("tensor-node-bogus-device", {"version": 1, "root": {"t": "tensor", "name": "w",
                                                          "device": "bogus"}}),
]


@pytest.mark.parametrize("rec", [r for _, r in RECORD_REGRESSIONS],
                         ids=[n for n, _ in RECORD_REGRESSIONS])
def test_structure_record_regressions(tmp_path, rec):
    from safetensors.torch import save_file
    from torch_safetensors.errors import SafetensorError

    p = tmp_path / "r.safetensors"
    save_file({"w": torch.ones(2)}, p,
              metadata={"torch_safetensors.structure": json.dumps(rec)})
    with pytest.raises(SafetensorError):
        torch.load(p)
    with open(p, "rb") as fh:
        with pytest.raises(SafetensorError):
            torch.load(fh)
