"""Child process of test_robust_python.py: feeds hostile bytes to every Python entry point with
pickle disabled, and prints one JSON line of results. A crash here is the parent's failure.

    _robust_child.py files DIR PROGRESS [--expect-pickle]
    _robust_child.py hypothesis TMPDIR PROGRESS SECONDS
    _robust_child.py crash PROGRESS
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import sys
import time
import traceback
from pathlib import Path

import torch

import torch_safetensors  # noqa: F401  (installs the torch.load hook)
from torch_safetensors import load_file, safe_open
from torch_safetensors import torch as st_torch
from torch_safetensors.errors import SafetensorError

from torch_safetensors._hook import _sniff


class PickleTrip(BaseException):
    """Raised by the disabled pickle machinery; a BaseException so nothing swallows it."""


def _disable_pickle():
    import torch._weights_only_unpickler as wou

    def boom(*a, **k):
        raise PickleTrip("pickle was used")

    class NoUnpickler:
        def __init__(self, *a, **k):
            raise PickleTrip("pickle was used")

    pickle.Unpickler = NoUnpickler
    pickle.loads = boom
    pickle.load = boom
    wou.Unpickler = NoUnpickler
    wou.load = boom
    torch.serialization._load = boom
    torch.serialization._legacy_load = boom


class Runner:
    def __init__(self, workdir: Path, progress: Path):
        self.workdir = workdir
        self.progress = open(progress, "a", buffering=1)
        self.failures = []
        self.accepted = self.rejected = self.pickle_trips = 0
        self.named = workdir / "case.safetensors"
        self.unnamed = workdir / "case.pt"

    def note(self, label: str):
        self.progress.write(label + "\n")

    def _call(self, what, fn):
        """'ok', 'err' (SafetensorError) or 'pickle'; anything else is recorded as a failure."""
        try:
            fn()
            return "ok"
        except SafetensorError:
            return "err"
        except PickleTrip:
            return "pickle"
        except Exception as e:  # noqa: BLE001  (the point: no other exception type)
            self.failures.append({"case": self.label, "entry": what,
                                  "exc": f"{type(e).__name__}: {e}"[:300],
                                  "tb": traceback.format_exc()[-800:]})
            return "bad"

    def check(self, label: str, blob: bytes) -> None:
        self.label = label
        self.blob = blob
        nfail = len(self.failures)
        self.note(label)
        self.named.write_bytes(blob)
        self.unnamed.write_bytes(blob)

        def use_safe_open():
            with safe_open(str(self.named), framework="pt") as f:
                f.metadata()
                for k in f.keys():
                    f.get_tensor(k)

        def use_slices():
            # A slice may be refused (a sub-byte cut inside a byte): only its type matters.
            with safe_open(str(self.named), framework="pt") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    if len(sl.get_shape()) > 0 and sl.get_shape()[0] > 1:
                        sl[1:]
                        sl[::2]

        verdicts = {
            "load_file": self._call("load_file", lambda: load_file(str(self.named))),
            "safe_open": self._call("safe_open", use_safe_open),
            "load": self._call("load(bytes)", lambda: st_torch.load(blob)),
        }
        if verdicts["safe_open"] == "ok":
            self._call("get_slice", use_slices)
        if "pickle" in verdicts.values():
            self.failures.append({"case": label, "entry": "reader", "exc": "pickle was used"})
        core = set(verdicts.values()) - {"bad"}
        if len(core) > 1:
            self.failures.append({"case": label, "entry": "agreement", "exc": str(verdicts)})
        if verdicts["load_file"] == "ok":
            self.accepted += 1
        else:
            self.rejected += 1

        # torch.load: a path named .safetensors is always ours.
        v = self._call("torch.load(named)", lambda: torch.load(self.named))
        if v == "pickle":
            self.failures.append({"case": label, "entry": "torch.load(named)",
                                  "exc": "pickle fallback"})
        if verdicts["load_file"] == "err" and v == "ok":
            self.failures.append({"case": label, "entry": "torch.load(named)",
                                  "exc": "accepted a file the reader refuses"})
        # Unnamed path and file object: ours when the bytes say so, else torch's.
        ours = _sniff(str(self.unnamed))
        for what, fn in [("torch.load(.pt)", lambda: torch.load(self.unnamed)),
                         ("torch.load(BytesIO)", lambda: torch.load(io.BytesIO(blob)))]:
            try:
                fn()
                r = "ok"
            except SafetensorError:
                r = "err"
            except PickleTrip:
                r = "pickle"
            except Exception as e:  # noqa: BLE001
                r = "other:" + type(e).__name__
            if r == "pickle":
                self.pickle_trips += 1
            if ours and r not in ("ok", "err"):
                self.failures.append({"case": label, "entry": what,
                                      "exc": f"safetensors bytes but {r}"})
        for f in self.failures[nfail:]:
            f["blob"] = repr(blob[:700])

    def result(self, **extra):
        out = {"accepted": self.accepted, "rejected": self.rejected,
               "pickle_trips": self.pickle_trips, "failures": self.failures}
        out.update(extra)
        return out


def mode_files(d: Path, progress: Path, expect_pickle: bool) -> dict:
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"robust-child-{os.getpid()}"
    work.mkdir(exist_ok=True)
    r = Runner(work, progress)
    n = 0
    for p in sorted(d.iterdir()):
        r.check(p.name, p.read_bytes())
        n += 1
    if expect_pickle:
        # the only file is a genuine pickle checkpoint: the guard must have fired once
        r.failures = [f for f in r.failures if f["entry"] not in ("agreement",)]
    return r.result(files=n)


# --- hypothesis ----------------------------------------------------------------------------------


def _strategies():
    from hypothesis import strategies as st

    keys = st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "w", "b", "",
                            "torch_safetensors.structure", "t", "items", "name", "v", "\u00e9"])
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64 + 1),
                        st.sampled_from(["F32", "U8", "BOOL", "F4", "I64", "bf16", "list",
                                         "dict", "tensor", "tuple", "float", "nan"]),
                        st.text(max_size=8))
    json_val = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                        st.dictionaries(keys, c, max_size=4)),
                            max_leaves=25)
    entry = st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "U8", "I16", "BF16", "F4", "BOOL", "f32", "X"]),
        "shape": st.lists(st.integers(0, 4), max_size=3),
        "data_offsets": st.lists(st.integers(0, 40), min_size=2, max_size=2).map(sorted),
    })
    header = st.dictionaries(st.text(max_size=6), st.one_of(entry, json_val), max_size=4)

    @st.composite
    def framed(draw):
        h = json.dumps(draw(header)).encode()
        h += b" " * draw(st.integers(0, 9))
        data = draw(st.binary(max_size=48))
        n = len(h) + draw(st.sampled_from([0, 0, 0, 1, -1, 8]))
        return struct.pack("<Q", max(n, 0)) + h + data

    record_node = st.recursive(
        scalars,
        lambda c: st.one_of(
            st.lists(c, max_size=3),
            st.fixed_dictionaries({"t": st.sampled_from(
                ["list", "tuple", "dict", "odict", "tensor", "float", "dtype", "device", "int",
                 "bogus", "set", "slice", "size"])},
                optional={"items": st.lists(st.one_of(c, st.lists(c, max_size=2)), max_size=3),
                          "name": st.sampled_from(["w", "b", "missing", ""]),
                          "v": st.one_of(scalars, st.sampled_from(["inf", "-inf", "nan"])),
                          "meta": c})),
        max_leaves=20)

    @st.composite
    def record_file(draw):
        from safetensors.torch import save

        rec = {"version": draw(st.sampled_from([1, 1, 1, 2, None])), "root": draw(record_node)}
        return save({"w": torch.ones(2), "b": torch.zeros(1, dtype=torch.int8)},
                    metadata={"torch_safetensors.structure": json.dumps(rec)})

    return st.one_of(st.binary(max_size=200), framed(), record_file())


def _mutation_strategy(base: bytes):
    from hypothesis import strategies as st

    @st.composite
    def mutated(draw):
        b = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(b) - 1))
            op = draw(st.integers(0, 2))
            if op == 0:
                b[pos] = draw(st.integers(0, 255))
            elif op == 1:
                del b[pos:pos + draw(st.integers(1, 8))]
            else:
                b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        return bytes(b)

    return mutated()


def mode_hypothesis(tmp: Path, progress: Path, seconds: float) -> dict:
    from hypothesis import HealthCheck, given, seed, settings

    work = tmp / "hyp"
    work.mkdir(exist_ok=True)
    r = Runner(work, progress)
    good = work / "good.safetensors"
    torch.save({"m": {"w": torch.arange(6.0)}, "k": [1, "a"]}, good, format="safetensors")
    strategies = [_strategies(), _mutation_strategy(good.read_bytes())]
    count = [0]
    start = time.monotonic()
    batch = 0
    while time.monotonic() - start < seconds:
        strat = strategies[batch % 2]

        @seed(batch)
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(strat)
        def one(blob):
            count[0] += 1
            r.check(f"hypothesis-{batch}-{count[0]}", blob)

        one()
        batch += 1
    return r.result(examples=count[0], seconds=time.monotonic() - start)


def main(argv) -> None:
    mode = argv[1]
    if mode == "crash":
        with open(argv[2], "a") as fh:
            fh.write("crash-me\n")
        os.kill(os.getpid(), signal.SIGSEGV)
    _disable_pickle()
    if mode == "files":
        out = mode_files(Path(argv[2]), Path(argv[3]), "--expect-pickle" in argv)
    elif mode == "hypothesis":
        out = mode_hypothesis(Path(argv[2]), Path(argv[3]), float(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    # failures that only say "other exception" carry the traceback for the report
    sys.stdout.write(json.dumps(out, default=str) + "\n")


if __name__ == "__main__":
    main(sys.argv)
