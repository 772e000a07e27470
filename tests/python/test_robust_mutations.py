"""Differential accept/reject on mutations of REAL files, against the reference (safetensors 0.8.0).

The files: interop fixtures written by the reference writer (every dtype torch has, scalars,
zero-size tensors, Unicode names, metadata), a torch.save(format="safetensors") checkpoint with
its structure record, our own writer's output, and a transformers checkpoint written by
``save_pretrained`` from a tiny config. Each case applies one to three mutations -- bytes
(flip, insert, delete, duplicate a span, truncate, append, change N) or JSON structure
(numbers off by one, offsets swapped, dtypes changed, fields dropped or added, keys
duplicated, metadata values made non-strings, names escaped, whitespace and padding changed)
-- and our verdict (st_open_memory) must equal the reference's (``safetensors.deserialize``),
except for the documented stricter rules (duplicate keys, NUL in strings, limits). Framing
errors must also agree on the error class.

    ST_MUTATION_CASES   number of cases (default 6000; the fixed seed makes CI reproducible)
    ST_ROBUST_LONG=1    the long run: 100,000 cases
    ST_MUTATION_SEED    another seed
    ST_DIFF_DUMP        folder receiving every disagreeing file
"""

from __future__ import annotations

import collections
import json
import os
import random
import struct

import pytest

import stcore

import safetensors  # noqa: E402  (a missing package fails, never skips)
import torch  # noqa: E402
import transformers  # noqa: E402

from test_core_differential import FRAMING, STRICTER, ref_verdict  # noqa: E402

SEED = int(os.environ.get("ST_MUTATION_SEED", "0x0DDBA11"), 0)
N_CASES = 100_000 if os.environ.get("ST_ROBUST_LONG") == "1" else int(
    os.environ.get("ST_MUTATION_CASES", "6000"))


# --- the real files ------------------------------------------------------------------------------


def _interop_files(tmp):
    from safetensors.torch import save

    g = torch.Generator().manual_seed(3)
    files = {}
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8,
              torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
              torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64]
    d = {}
    for i, dt in enumerate(dtypes):
        t = torch.randint(0, 2, (3, i % 4 + 1), generator=g).to(dt)
        d[f"layer.{i}.{str(dt).split('.')[-1]}"] = t
    d["scalar"] = torch.tensor(1.5)
    d["empty"] = torch.zeros(0, 4)
    files["interop-dtypes"] = save(d, metadata={"format": "pt", "note": "fixture"})
    files["interop-unicode"] = save({"é": torch.ones(2), "模型.层": torch.zeros(2, 2, dtype=torch.int8),
                                     "😀": torch.ones(1, dtype=torch.float16)},
                                    metadata={"ключ": "значение"})
    files["interop-single"] = save({"w": torch.arange(16, dtype=torch.float32).reshape(4, 4)})
    p = tmp / "ckpt.safetensors"
    import torch_safetensors  # noqa: F401  (torch.save(format="safetensors"))

    torch.save({"model": {"w": torch.ones(3, 3)}, "step": 3, "opt": [0.9, None]}, p,
               format="safetensors")
    files["torch-save-record"] = p.read_bytes()
    files["ours"] = stcore.write_memory({"a": ("F32", [2, 2], b"\x00" * 16),
                                         "b": ("U8", [3], b"abc"),
                                         "z": ("I64", [0], b"")}, {"k": "v"})
    return files


def _transformers_file(tmp):
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    out = tmp / "tiny-gpt2"
    model.save_pretrained(out, safe_serialization=True)
    return (out / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    files = _interop_files(tmp)
    files["transformers-gpt2"] = _transformers_file(tmp)
    for name, blob in files.items():
        assert stcore.verdict(blob) == (0, None), name
        assert ref_verdict(blob) == (True, "OK"), name
    return files


# --- mutations -----------------------------------------------------------------------------------

TOKENS = [b"{", b"}", b"[", b"]", b":", b",", b'"', b"\\", b"\\u0000", b"\\ud800", b"null", b"-0",
          b"1e3", b"0.5", b"18446744073709551616", b" ", b"\x00", b"\xff", b"\xc0\xaf", b"\xef\xbb\xbf",
          b'"__metadata__"', b'"dtype"', b'"shape"', b'"data_offsets"', b'"F32"', b'"f32"']
DTYPES = ["F32", "F16", "BF16", "U8", "I8", "BOOL", "I64", "F64", "F4", "F6_E2M3", "F8_E4M3",
          "C64", "U64", "f32", "F128", ""]


def _split(blob):
    """(header, data); a blob too short for N is all header, so mutations still apply."""
    if len(blob) < 8:
        return blob, b""
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[8:8 + n], blob[8 + n:]


def _join(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _pairs(header: bytes):
    return json.loads(header, object_pairs_hook=lambda p: p)


def _dump(v, ensure_ascii, sep) -> str:
    if isinstance(v, list) and v and all(isinstance(x, tuple) and len(x) == 2 for x in v):
        return "{" + sep[0].join(json.dumps(k, ensure_ascii=ensure_ascii) + sep[1] +
                                 _dump(x, ensure_ascii, sep) for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + sep[0].join(_dump(x, ensure_ascii, sep) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ensure_ascii)


def _json_mutation(rng, header: bytes, data: bytes):
    obj = _pairs(header)
    entries = [i for i, (k, v) in enumerate(obj) if k != "__metadata__" and isinstance(v, list)]
    kind = rng.choice(["num", "swap", "dtype", "drop", "extra", "dupkey", "meta", "escape",
                       "reorder", "ws", "shape_dim", "dupfield", "offsets_len", "metadata_dup"])
    if not entries and kind not in ("meta", "ws", "metadata_dup"):
        kind = "ws"
    name = kind
    if kind in ("num", "shape_dim", "offsets_len", "dtype", "drop", "extra", "dupfield"):
        i = rng.choice(entries)
        k, fields = obj[i]
        fields = list(fields)
        fi = {f: j for j, (f, _) in enumerate(fields)}
        if kind == "num" and "data_offsets" in fi:
            j = fi["data_offsets"]
            offs = list(fields[j][1])
            w = rng.randrange(len(offs))
            offs[w] = max(0, offs[w] + rng.choice([-8, -2, -1, 1, 2, 8, 2**32, 2**64 - offs[w]]))
            fields[j] = ("data_offsets", offs)
        elif kind == "shape_dim" and "shape" in fi:
            j = fi["shape"]
            shape = list(fields[j][1])
            op = rng.randrange(4)
            if op == 0 and shape:
                shape[rng.randrange(len(shape))] += rng.choice([-1, 1])
            elif op == 1:
                shape.append(rng.choice([0, 1, 2]))
            elif op == 2 and shape:
                shape.pop()
            else:
                shape = [2**32, 2**32] + shape
            fields[j] = ("shape", [max(0, s) for s in shape])
        elif kind == "offsets_len" and "data_offsets" in fi:
            j = fi["data_offsets"]
            offs = list(fields[j][1])
            fields[j] = ("data_offsets", offs[:1] if rng.random() < 0.5 else offs + [offs[-1]])
        elif kind == "dtype" and "dtype" in fi:
            fields[fi["dtype"]] = ("dtype", rng.choice(DTYPES))
        elif kind == "drop":
            fields.pop(rng.randrange(len(fields)))
        elif kind == "extra":
            fields.insert(rng.randrange(len(fields) + 1),
                          (rng.choice(["x", "extra", "dtype2"]),
                           rng.choice([1, None, [1, [2]], "s", [("a", -0.5)]])))
        elif kind == "dupfield":
            f = rng.choice(fields)
            fields.insert(rng.randrange(len(fields) + 1), f)
        obj[i] = (k, fields)
    elif kind == "swap" and len(entries) >= 2:
        a, b = rng.sample(entries, 2)
        fa, fb = dict(obj[a][1]), dict(obj[b][1])
        if "data_offsets" in fa and "data_offsets" in fb:
            fa["data_offsets"], fb["data_offsets"] = fb["data_offsets"], fa["data_offsets"]
        obj[a] = (obj[a][0], list(fa.items()))
        obj[b] = (obj[b][0], list(fb.items()))
    elif kind == "dupkey":
        i = rng.choice(entries)
        obj.insert(rng.randrange(len(obj) + 1), obj[i])
    elif kind in ("meta", "metadata_dup"):
        mi = [i for i, (k, _) in enumerate(obj) if k == "__metadata__"]
        if not mi:
            obj.insert(0, ("__metadata__", [("k", "v")]))
            mi = [0]
        k, m = obj[mi[0]]
        m = list(m) if isinstance(m, list) else []
        if kind == "meta":
            m.append((rng.choice(["n", "k2"]), rng.choice([1, None, ["x"], [("a", "b")], "ok"])))
        elif m:
            m.append(m[0])
        obj[mi[0]] = (k, m)
    elif kind == "reorder":
        rng.shuffle(obj)
    text = _dump(obj, rng.random() < 0.5, rng.choice([(",", ":"), (", ", ": ")]))
    if kind == "escape":
        # \u-escape one character of a name: same key, other spelling
        i = text.find('"', rng.randrange(len(text)))
        if i >= 0 and i + 1 < len(text) and text[i + 1].isalnum():
            text = text[:i + 1] + "\\u%04x" % ord(text[i + 1]) + text[i + 2:]
    if kind == "ws":
        text = rng.choice(["", " ", "\n", "\t"]) + text + " " * rng.randrange(0, 9)
    return text.encode(), data, "json_" + name


def _byte_mutation(rng, blob: bytes):
    n = len(blob)
    kind = rng.choice(["flip", "token", "delete", "dup", "truncate", "append", "n", "header_byte"])
    if kind == "flip" and n:
        i = rng.randrange(n)
        blob = blob[:i] + bytes([blob[i] ^ (1 << rng.randrange(8))]) + blob[i + 1:]
    elif kind == "header_byte":
        h, d = _split(blob)
        if h:
            i = rng.randrange(len(h))
            h = h[:i] + bytes([rng.choice(b'{}[]:,"\\ -0123456789.eE\x00\x7f')]) + h[i + 1:]
        blob = _join(h, d)
    elif kind == "token":
        h, d = _split(blob)
        i = rng.randrange(len(h) + 1)
        h = h[:i] + rng.choice(TOKENS) + h[i + (rng.randrange(3) if rng.random() < 0.5 else 0):]
        blob = _join(h, d)
    elif kind == "delete" and n:
        i = rng.randrange(n)
        blob = blob[:i] + blob[i + rng.randrange(1, 16):]
    elif kind == "dup" and n:
        i = rng.randrange(n)
        j = min(n, i + rng.randrange(1, 32))
        blob = blob[:j] + blob[i:j] + blob[j:]
    elif kind == "truncate":
        blob = blob[:rng.randrange(n + 1)]
    elif kind == "append":
        blob = blob + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif kind == "n" and n >= 8:
        (v,) = struct.unpack("<Q", blob[:8])
        v = rng.choice([v + 1, v - 1, v + 8, 0, 2**64 - 1, 100_000_001, v * 2]) % 2**64
        blob = struct.pack("<Q", v) + blob[8:]
    return blob, "byte_" + kind


def make_case(rng, files):
    name = rng.choice(sorted(files))
    blob = files[name]
    muts = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if rng.random() < 0.55:
            try:
                h, d = _split(blob)
                h2, d2, m = _json_mutation(rng, h, d)
                blob = _join(h2, d2)
            except (ValueError, UnicodeDecodeError, struct.error, IndexError, TypeError):
                blob, m = _byte_mutation(rng, blob)
        else:
            blob, m = _byte_mutation(rng, blob)
        muts.append(m)
    return name, blob, muts


def test_mutations_of_real_files_agree_with_reference(real_files):
    rng = random.Random(SEED)
    dump = os.environ.get("ST_DIFF_DUMP")
    counts = collections.Counter()
    by_mut = collections.defaultdict(collections.Counter)
    mismatches = []
    for i in range(N_CASES):
        src, blob, muts = make_case(rng, real_files)
        ours, offset = stcore.verdict(blob)
        ref_ok, ref_kind = ref_verdict(blob)
        if ours == 0 and ref_ok:
            cat = "agree_accept"
        elif ours != 0 and not ref_ok:
            cat = "agree_reject"
            ref_st = stcore.STATUS_NAMES.index(ref_kind) if ref_kind in stcore.STATUS_NAMES else -1
            if (ref_st in FRAMING or ours in FRAMING) and ref_st != ours:
                cat = "MISMATCH_framing"
        elif ours in STRICTER and ref_ok:
            cat = "stricter_" + stcore.STATUS_NAMES[ours]
        else:
            cat = "MISMATCH"
        if cat.startswith("MISMATCH"):
            mismatches.append((i, src, muts, stcore.STATUS_NAMES[ours], offset, ref_kind))
            if dump:
                os.makedirs(dump, exist_ok=True)
                with open(os.path.join(dump, f"mut-{i:06d}.safetensors"), "wb") as fh:
                    fh.write(blob)
        counts[cat] += 1
        for m in muts:
            by_mut[m][cat] += 1
    lines = [f"mutations of real files: {N_CASES} cases, seed {SEED:#x}, "
             f"sources {sorted(real_files)}"]
    lines += [f"  {k:40s} {v:7d}" for k, v in sorted(counts.items())]
    for m in sorted(by_mut):
        c = by_mut[m]
        lines.append(f"    {m:22s} accept {c['agree_accept']:6d} reject {c['agree_reject']:6d} "
                     f"stricter {sum(v for k, v in c.items() if k.startswith('stricter')):5d} "
                     f"MISMATCH {sum(v for k, v in c.items() if k.startswith('MISMATCH')):4d}")
    report = "\n".join(lines)
    print(report)
    assert counts["agree_accept"] > N_CASES // 50, report
    assert counts["agree_reject"] > N_CASES // 4, report
    assert not mismatches, f"{len(mismatches)} mismatches, first {mismatches[:5]}\n{report}"
