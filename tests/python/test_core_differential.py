"""Differential acceptance against the reference (safetensors==0.8.0).

Generates valid files (random dtypes, shapes, names, metadata, key order, whitespace, escapes,
unknown fields), mutates them (bytes, framing, JSON syntax, JSON values), and checks that our
accept/reject verdict (st_open_memory, default options) equals the reference's
(`safetensors.deserialize(bytes)`, which checks the whole file: size included, like safe_open).

The only allowed disagreements are the documented stricter rules of shared/FORMAT.md: we reject
and the reference accepts, with ST_ERR_DUPLICATE_KEY, ST_ERR_NUL_IN_STRING or ST_ERR_LIMIT (rank,
name length, nesting depth). They are counted by status and by mutation.

Run with `-s` to see the counts by category. ST_DIFF_FILES overrides the number of files and
ST_DIFF_DUMP names a folder that receives every disagreeing file for replay.
"""

from __future__ import annotations

import collections
import os
import random
import struct
from typing import List, Tuple

import pytest

import stcore

import safetensors  # noqa: E402  (a missing package fails, never skips)

SEED = 0x5AFE
N_FILES = int(os.environ.get("ST_DIFF_FILES", "20000"))
STRICTER = {stcore.ST_ERR_DUPLICATE_KEY, stcore.ST_ERR_NUL_IN_STRING, stcore.ST_ERR_LIMIT}
# A stricter verdict must come from a mutation that introduced that very feature.
STRICTER_CAUSES = {
    stcore.ST_ERR_DUPLICATE_KEY: ("dup_",),
    stcore.ST_ERR_NUL_IN_STRING: ("nul_",),
    stcore.ST_ERR_LIMIT: ("deep_nesting", "long_name", "shape_rank"),
}

# --- A JSON model that can express what json.dumps cannot: duplicate keys, raw number text -------


class Obj:
    """A JSON object: an ordered list of (key, value) pairs; keys may repeat."""

    def __init__(self, pairs=None):
        self.pairs: List[Tuple[object, object]] = list(pairs or [])

    def get(self, key):
        for k, v in self.pairs:
            if k == key:
                return v
        raise KeyError(key)

    def set(self, key, value):
        for i, (k, _) in enumerate(self.pairs):
            if k == key:
                self.pairs[i] = (k, value)
                return
        self.pairs.append((key, value))

    def delete(self, key):
        self.pairs = [(k, v) for k, v in self.pairs if k != key]


class Raw:
    """Text emitted verbatim (odd numbers, broken escapes, ...)."""

    def __init__(self, text: str):
        self.text = text


class Esc(str):
    """A string (key or value) that the serializer must fully \\u-escape."""


SHORT_ESC = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
             "\t": "\\t"}


class Emitter:
    def __init__(self, rng: random.Random, ws: float, esc: float):
        self.rng = rng
        self.ws_p = ws
        self.esc_p = esc

    def ws(self) -> str:
        if self.ws_p and self.rng.random() < self.ws_p:
            return "".join(self.rng.choice(" \t\r\n") for _ in range(self.rng.randrange(1, 3)))
        return ""

    def _u(self, cp: int) -> str:
        h = f"{cp:04x}"
        return "\\u" + (h.upper() if self.rng.random() < 0.3 else h)

    def string(self, s: str, force: bool = False) -> str:
        out = ['"']
        for ch in s:
            cp = ord(ch)
            if force or (self.esc_p and self.rng.random() < self.esc_p):
                if ch == "/" and not force:
                    out.append("\\/")
                elif cp >= 0x10000:
                    v = cp - 0x10000
                    out.append(self._u(0xD800 + (v >> 10)) + self._u(0xDC00 + (v & 0x3FF)))
                else:
                    out.append(self._u(cp))
            elif ch in SHORT_ESC:
                out.append(SHORT_ESC[ch])
            elif cp < 0x20:
                out.append(self._u(cp))
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)

    def value(self, v) -> str:
        w = self.ws
        if isinstance(v, Raw):
            return v.text
        if isinstance(v, Obj):
            if not v.pairs:
                return "{" + w() + "}"
            return "{" + ",".join(w() + self.string(k, isinstance(k, Esc)) + w() + ":" + w()
                                  + self.value(x) + w() for k, x in v.pairs) + "}"
        if isinstance(v, list):
            if not v:
                return "[" + w() + "]"
            return "[" + ",".join(w() + self.value(x) + w() for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return self.string(v, isinstance(v, Esc))
        raise TypeError(type(v))


# --- Valid files ---------------------------------------------------------------------------------

NAME_POOL = ["", "w", "weight", "model.layers.0.attn.q_proj.weight", "é", "模型", "😀", "a/b",
             "quote\"", "back\\slash", "tab\t", "nl\n", "\x01ctl", "\u2028", "__metadata", "x" * 100,
             "ключ", "\U0001F600\U0001F601", "a\u0301"]


def rand_name(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return rng.choice(NAME_POOL) + (str(rng.randrange(100)) if rng.random() < 0.7 else "")
    n = rng.randrange(0, 8)
    return "".join(chr(rng.choice([rng.randrange(1, 0x80), rng.randrange(0x80, 0xD800),
                                   rng.randrange(0xE000, 0x110000)])) for _ in range(n))


def rand_extra_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice([1, 0, True, False, None, "s", Raw("1.5e-3"), Raw("-12"), Raw("0.0")])
    if r < 0.6:
        return [rand_extra_value(rng, depth + 1) for _ in range(rng.randrange(0, 3))]
    return Obj([(rand_name(rng), rand_extra_value(rng, depth + 1))
                for _ in range(rng.randrange(0, 3))])


class Case:
    """A file under construction: the header model, the data, and what was done to it."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.top = Obj()
        self.data = b""
        self.tensors: List[str] = []  # the header keys of tensor entries
        self.muts: List[str] = []
        self.emitter = Emitter(rng, ws=rng.choice([0, 0, 0.1, 0.4]),
                               esc=rng.choice([0, 0, 0.05, 0.3]))
        self.lead_ws = ""
        self.pad = ""
        self.text_muts = []
        self.file_muts = []

    def entries(self):
        return [(k, v) for k, v in self.top.pairs if k != "__metadata__" and isinstance(v, Obj)]

    def build(self) -> bytes:
        text = (self.lead_ws + self.emitter.value(self.top)).encode("utf-8")
        if self.pad is None:
            text += b" " * (-len(text) % 8)
        else:
            text += self.pad.encode()
        for m in self.text_muts:
            text = m(text)
        blob = struct.pack("<Q", len(text)) + text + self.data
        for m in self.file_muts:
            blob = m(blob)
        return blob


def valid_case(rng: random.Random) -> Case:
    c = Case(rng)
    specs = []
    used = set()
    for _ in range(rng.choice([0, 1, 1, 2, 3, 4, 6, 10])):
        name = rand_name(rng)
        if name in used or name == "__metadata__":
            continue
        used.add(name)
        dtype = rng.choice(stcore.DTYPES)[0]
        while True:
            shape = [rng.choice([0, 1, 1, 2, 3, 4, 6]) for _ in range(rng.randrange(0, 4))]
            n = 1
            for d in shape:
                n *= d
            if (n * stcore.DTYPE_BITS[dtype]) % 8 == 0:
                break
        specs.append([name, dtype, shape, n * stcore.DTYPE_BITS[dtype] // 8])
    # Data laid out in a random order, not necessarily the header's.
    order = list(range(len(specs)))
    rng.shuffle(order)
    pos = 0
    offsets = {}
    for i in order:
        offsets[i] = (pos, pos + specs[i][3])
        pos += specs[i][3]
    c.data = rng.randbytes(pos)
    for i, (name, dtype, shape, _) in enumerate(specs):
        fields = [("dtype", dtype), ("shape", list(shape)), ("data_offsets", list(offsets[i]))]
        if rng.random() < 0.3:
            rng.shuffle(fields)
        if rng.random() < 0.1:
            fields.insert(rng.randrange(len(fields) + 1), (rng.choice(["extra", "x", "é"]),
                                                           rand_extra_value(rng)))
        c.top.pairs.append((name, Obj(fields)))
        c.tensors.append(name)
    r = rng.random()
    if r < 0.5:
        md = None
    elif r < 0.6:
        md = Raw("null")
    else:
        md = Obj()
        keys = set()
        for _ in range(rng.choice([0, 1, 1, 2, 5])):
            k = rand_name(rng)
            if k not in keys:
                keys.add(k)
                md.pairs.append((k, rand_name(rng) * rng.randrange(1, 3)))
    if md is not None:
        c.top.pairs.insert(rng.randrange(len(c.top.pairs) + 1), ("__metadata__", md))
    if rng.random() < 0.1:
        c.lead_ws = rng.choice([" ", "\n", "\t ", "\r\n"])
    c.pad = None if rng.random() < 0.8 else "".join(
        rng.choice(" \t\r\n") for _ in range(rng.randrange(0, 9)))
    return c


# --- Mutations -----------------------------------------------------------------------------------

WEIRD_NUMBERS = ["01", "00", "-0", "-1", "1e0", "1E2", "1.0", "1.", ".5", "+1", "0x1", "1_0",
                 str(2**64), str(2**64 - 1), str(2**63), "99999999999999999999999", "NaN",
                 "Infinity", "true", "null", '"1"', "[]", "{}", "-", "1e", "0e0", "2e-1"]


def _pick_entry(c: Case):
    ents = c.entries()
    return c.rng.choice(ents) if ents else None


def m_dup_name(c):
    e = _pick_entry(c)
    if not e:
        return False
    name, obj = e
    kind = c.rng.choice(["same", "other", "escaped", "zero"])
    if kind == "same":
        c.top.pairs.append((name, obj))
    elif kind == "escaped":
        c.top.pairs.insert(c.rng.randrange(len(c.top.pairs) + 1), (Esc(name), obj))
    elif kind == "zero":
        c.top.pairs.append((name, Obj([("dtype", "U8"), ("shape", [0]),
                                       ("data_offsets", [0, 0])])))
    else:
        other = _pick_entry(c)[1]
        c.top.pairs.append((name, other))
    return "dup_name_" + kind


def m_dup_metadata(c):
    c.top.pairs.insert(c.rng.randrange(len(c.top.pairs) + 1),
                       (c.rng.choice(["__metadata__", Esc("__metadata__")],),
                        Obj([("k", "v")]) if c.rng.random() < 0.8 else Raw("null")))
    c.top.pairs.append(("__metadata__", Obj()))
    return "dup_metadata"


def m_dup_meta_key(c):
    md = None
    for k, v in c.top.pairs:
        if k == "__metadata__" and isinstance(v, Obj):
            md = v
    if md is None:
        md = Obj()
        c.top.delete("__metadata__")
        c.top.pairs.insert(0, ("__metadata__", md))
    if not md.pairs:
        md.pairs.append(("k", "v"))
    k = c.rng.choice(md.pairs)[0]
    md.pairs.insert(c.rng.randrange(len(md.pairs) + 1), (k, c.rng.choice(["v2", k])))
    return "dup_meta_key"


def m_dup_field(c):
    e = _pick_entry(c)
    if not e:
        return False
    f = c.rng.choice(["dtype", "shape", "data_offsets"])
    try:
        e[1].pairs.append((f, e[1].get(f)))
    except KeyError:
        return False
    return "dup_field"


def m_swap_offsets(c):
    ents = c.entries()
    if len(ents) < 2:
        return False
    a, b = c.rng.sample(ents, 2)
    try:
        oa, ob = a[1].get("data_offsets"), b[1].get("data_offsets")
    except KeyError:
        return False
    a[1].set("data_offsets", ob)
    b[1].set("data_offsets", oa)
    return "swap_offsets"


def m_dtype(c):
    e = _pick_entry(c)
    if not e:
        return False
    kind = c.rng.choice(["other", "other", "unknown", "case", "type"])
    if kind == "other":
        v = c.rng.choice(stcore.DTYPES)[0]
    elif kind == "unknown":
        v = c.rng.choice(["F128", "U4", "F8", "", "FLOAT", "F8_E4M3FN", "float32", "F32 "])
    elif kind == "case":
        v = c.rng.choice(stcore.DTYPES)[0].lower()
    else:
        v = c.rng.choice([17, None, ["F32"], Obj(), True])
    e[1].set("dtype", v)
    return "dtype_" + kind


def m_shape(c):
    e = _pick_entry(c)
    if not e:
        return False
    try:
        shape = list(e[1].get("shape"))
    except (KeyError, TypeError):
        return False
    kind = c.rng.choice(["dim", "add", "drop", "type", "number", "overflow", "rank"])
    if kind == "dim" and shape:
        i = c.rng.randrange(len(shape))
        shape[i] = max(0, shape[i] + c.rng.choice([-1, 1, 2]))
    elif kind == "add":
        shape.insert(c.rng.randrange(len(shape) + 1), c.rng.choice([0, 1, 2]))
    elif kind == "drop" and shape:
        shape.pop(c.rng.randrange(len(shape)))
    elif kind == "type":
        e[1].set("shape", c.rng.choice([None, 3, "3", Obj(), [[1]], ["1"]]))
        return "shape_type"
    elif kind == "number":
        shape.append(Raw(c.rng.choice(WEIRD_NUMBERS)))
    elif kind == "overflow":
        shape = c.rng.choice([[2**32, 2**32], [2**63, 2], [2**64 - 1, 2**64 - 1], [2**62],
                              [2**61], [2**60, 16], [3, 2**63], [0, 2**64 - 1],
                              [2**32, 2**32, 0], [2**64 - 1]])
    elif kind == "rank":
        shape = [1] * c.rng.choice([63, 64, 65, 66, 100, 300])
    else:
        return False
    e[1].set("shape", shape)
    return "shape_" + kind


def m_offsets(c):
    e = _pick_entry(c)
    if not e:
        return False
    try:
        off = list(e[1].get("data_offsets"))
    except (KeyError, TypeError):
        return False
    kind = c.rng.choice(["edit", "len", "reverse", "type", "number", "huge"])
    if kind == "edit" and len(off) == 2 and all(isinstance(x, int) for x in off):
        i = c.rng.randrange(2)
        off[i] = max(0, off[i] + c.rng.choice([-1, 1, 8]))
    elif kind == "len":
        off = c.rng.choice([off[:1], off + [off[-1]], [], off + off])
    elif kind == "reverse":
        off = off[::-1]
    elif kind == "type":
        off = c.rng.choice([None, 0, "0,1", Obj([("begin", 0)]), [str(x) for x in off]])
    elif kind == "number":
        off[c.rng.randrange(len(off))] = Raw(c.rng.choice(WEIRD_NUMBERS))
    elif kind == "huge":
        off = c.rng.choice([[2**64 - 1, 2**64 - 1], [0, 2**64 - 1], [2**63, 2**63 + 1]])
    else:
        return False
    e[1].set("data_offsets", off)
    return "offsets_" + kind


def m_missing_field(c):
    e = _pick_entry(c)
    if not e:
        return False
    e[1].delete(c.rng.choice(["dtype", "shape", "data_offsets"]))
    return "missing_field"


def m_metadata(c):
    kind = c.rng.choice(["value_type", "type", "null", "escaped_key", "unicode"])
    if kind == "value_type":
        md = Obj([("k", c.rng.choice([1, None, True, Obj(), ["a"], Raw("1.5")]))])
    elif kind == "type":
        md = c.rng.choice([[], "x", 1, [["k", "v"]], True])
    elif kind == "null":
        md = None
    elif kind == "unicode":
        md = Obj([(Esc(rand_name(c.rng)), Esc(rand_name(c.rng)))])
    else:
        md = Obj([("k", c.rng.choice(["v", 1]))])
        c.top.delete("__metadata__")
        c.top.pairs.insert(0, (Esc("__metadata__"), md))
        return "meta_escaped_key"
    c.top.delete("__metadata__")
    c.top.pairs.insert(c.rng.randrange(len(c.top.pairs) + 1), ("__metadata__", md))
    return "meta_" + kind


def m_nul(c):
    where = c.rng.choice(["name", "name", "meta_key", "meta_value"])
    if where == "name":
        e = _pick_entry(c)
        if not e:
            return False
        i = next(j for j, p in enumerate(c.top.pairs) if p[1] is e[1])
        name = e[0]
        cut = c.rng.randrange(len(name) + 1)
        c.top.pairs[i] = (name[:cut] + "\x00" + name[cut:], e[1])  # emitted as \u0000
    else:
        c.top.delete("__metadata__")
        md = Obj([("a\x00b", "v")]) if where == "meta_key" else Obj([("k", "v\x00")])
        c.top.pairs.append(("__metadata__", md))
    return "nul_" + where


def m_long_name(c):
    n = c.rng.choice([65535, 65536, 65537, 70000])
    c.top.pairs.append(("n" * n, Obj([("dtype", "U8"), ("shape", [0]), ("data_offsets", [0, 0])])))
    return "long_name"


def m_deep(c):
    e = _pick_entry(c)
    depth = c.rng.choice([1, 10, 30, 60, 61, 62, 63, 64, 65, 66, 70, 100, 125, 126, 127, 128, 129,
                          200, 100000])
    if c.rng.random() < 0.5:
        v = Raw("[" * depth + "]" * depth)
    else:
        v = Raw('{"a":' * depth + "1" + "}" * depth)
    if e:
        e[1].pairs.append(("deep", v))
    else:
        c.top.pairs.append(("deep", v))
    return "deep_nesting"


def m_surrogate(c):
    kind = c.rng.choice(["pair", "lone_high", "lone_low", "swapped", "bad_hex", "short_hex",
                         "bad_escape"])
    text = {"pair": '"\\ud83d\\ude00"', "lone_high": '"\\ud800"', "lone_low": '"\\udc00x"',
            "swapped": '"\\ude00\\ud83d"', "bad_hex": '"\\u12G4"', "short_hex": '"\\u12"',
            "bad_escape": '"\\q"'}[kind]
    if c.rng.random() < 0.5:
        c.top.delete("__metadata__")
        c.top.pairs.append(("__metadata__", Obj([("k", Raw(text))])))
    else:
        e = _pick_entry(c)
        if not e:
            return False
        e[1].set("dtype", Raw(text))
    return "escape_" + kind


def m_root(c):
    kind = c.rng.choice(["array", "string", "number", "null", "two_values"])
    inner = c.top
    c.top = {"array": lambda: [inner], "string": lambda: "x", "number": lambda: 1,
             "null": lambda: None, "two_values": lambda: inner}[kind]()
    if kind == "two_values":
        c.text_muts.append(lambda t: t.rstrip(b" ") + b"{}")
    return "root_" + kind


def m_toplevel_value(c):
    c.top.pairs.insert(c.rng.randrange(len(c.top.pairs) + 1),
                       (rand_name(c.rng) + "!", c.rng.choice([1, "x", [], None, Obj()])))
    return "toplevel_value"


MODEL_MUTATIONS = [m_dup_name, m_dup_metadata, m_dup_meta_key, m_dup_field, m_swap_offsets,
                   m_dtype, m_dtype, m_shape, m_shape, m_shape, m_offsets, m_offsets,
                   m_missing_field, m_metadata, m_nul, m_long_name, m_deep, m_surrogate, m_root,
                   m_toplevel_value]


def _positions(t: bytes, chars: bytes):
    return [i for i, b in enumerate(t) if b in chars]


def text_mutation(c: Case) -> str:
    rng = c.rng
    kind = rng.choice(["extra_comma", "missing_comma", "stray_colon", "drop_quote", "raw_control",
                       "flip", "insert", "delete", "trailing", "nul_padding", "bom", "bad_utf8",
                       "stray_comma"])

    def at(chars: bytes, fn):
        def mut(t: bytes) -> bytes:
            pos = _positions(t, chars)
            if not pos:
                return t + b","
            i = rng.choice(pos)
            return fn(t, i)
        return mut

    if kind == "extra_comma":  # trailing comma before a closer
        m = at(b"}]", lambda t, i: t[:i] + b"," + t[i:])
    elif kind == "stray_comma":
        m = at(b"{[", lambda t, i: t[:i + 1] + b"," + t[i + 1:])
    elif kind == "missing_comma":
        m = at(b",", lambda t, i: t[:i] + t[i + 1:])
    elif kind == "stray_colon":
        m = at(b",:", lambda t, i: t[:i] + b":" + t[i:])
    elif kind == "drop_quote":
        m = at(b'"', lambda t, i: t[:i] + t[i + 1:])
    elif kind == "raw_control":
        ch = bytes([rng.choice([0, 1, 9, 10, 13, 0x1F, 0x7F])])
        m = at(b'"', lambda t, i: t[:i + 1] + ch + t[i + 1:])
    elif kind == "flip":
        def m(t):
            if not t:
                return t
            i = rng.randrange(len(t))
            return t[:i] + bytes([t[i] ^ (1 << rng.randrange(8))]) + t[i + 1:]
    elif kind == "insert":
        def m(t):
            i = rng.randrange(len(t) + 1)
            return t[:i] + bytes([rng.choice(b'{}[]:,"\\ 0-e.tfn\x00\x80\xff')]) + t[i:]
    elif kind == "delete":
        def m(t):
            if not t:
                return t
            i = rng.randrange(len(t))
            return t[:i] + t[i + 1:]
    elif kind == "trailing":
        junk = rng.choice([b"x", b"{}", b"\x00", b"0", b"]", b" }", b"//", b"\x0b", b"\x0c"])
        m = lambda t: t.rstrip(b" ") + junk + b" " * rng.randrange(0, 4)  # noqa: E731
    elif kind == "nul_padding":
        m = lambda t: t.rstrip(b" ") + b"\x00" * rng.randrange(1, 8)  # noqa: E731
    elif kind == "bom":
        m = lambda t: b"\xef\xbb\xbf" + t  # noqa: E731
    else:  # bad_utf8 inside a string
        bad = rng.choice([b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80",
                          b"\xff", b"\xc3", b"\xf0\x9f\x98"])
        m = at(b'"', lambda t, i: t[:i + 1] + bad + t[i + 1:])
    c.text_muts.append(m)
    return "text_" + kind


def file_mutation(c: Case) -> str:
    rng = c.rng
    kind = rng.choice(["truncate", "append", "hlen", "hlen", "flip", "insert", "delete", "short"])
    if kind == "truncate":
        m = lambda b: b[:rng.randrange(len(b))] if b else b  # noqa: E731
    elif kind == "append":
        m = lambda b: b + rng.randbytes(rng.choice([1, 1, 7, 8, 100]))  # noqa: E731
    elif kind == "hlen":
        def m(b):
            if len(b) < 8:
                return b
            n = struct.unpack("<Q", b[:8])[0]
            v = rng.choice([n + 1, n - 1, n + 8, max(n - 8, 0), 0, 1, 100_000_000, 100_000_001,
                            2**64 - 1, 2**63, len(b) - 8, len(b) - 7, rng.getrandbits(64),
                            n + 2**32])
            return struct.pack("<Q", v % 2**64) + b[8:]
    elif kind == "flip":
        def m(b):
            if not b:
                return b
            i = rng.randrange(len(b))
            return b[:i] + bytes([b[i] ^ (1 << rng.randrange(8))]) + b[i + 1:]
    elif kind == "insert":
        def m(b):
            i = rng.randrange(len(b) + 1)
            return b[:i] + rng.randbytes(1) + b[i:]
    elif kind == "delete":
        def m(b):
            if not b:
                return b
            i = rng.randrange(len(b))
            return b[:i] + b[i + 1:]
    else:
        m = lambda b: b[:rng.randrange(8)]  # noqa: E731
    c.file_muts.append(m)
    return "file_" + kind


def make_case(rng: random.Random) -> Tuple[bytes, List[str]]:
    c = valid_case(rng)
    muts = []
    r = rng.random()
    n_muts = 0 if r < 0.06 else (1 if r < 0.9 else 2)
    for _ in range(n_muts):
        layer = rng.random()
        if layer < 0.5 and isinstance(c.top, Obj):
            for _ in range(4):
                got = rng.choice(MODEL_MUTATIONS)(c)
                if got:
                    muts.append(got)
                    break
        elif layer < 0.75:
            muts.append(text_mutation(c))
        else:
            muts.append(file_mutation(c))
    return c.build(), muts


# --- The comparison ------------------------------------------------------------------------------

REF_KINDS = [
    ("header too small", stcore.ST_ERR_HEADER_TOO_SMALL),
    ("header too large", stcore.ST_ERR_HEADER_TOO_LARGE),
    ("invalid header length", stcore.ST_ERR_INVALID_HEADER_LENGTH),
    ("invalid UTF-8", stcore.ST_ERR_INVALID_HEADER),
    ("invalid JSON", stcore.ST_ERR_HEADER_DESERIALIZATION),
    ("overflow computing", stcore.ST_ERR_VALIDATION_OVERFLOW),
    ("subbytes", stcore.ST_ERR_MISALIGNED_SLICE),
    ("invalid shape, data type, or offset", stcore.ST_ERR_INVALID_TENSOR_INFO),
    ("invalid offset", stcore.ST_ERR_INVALID_OFFSET),
    ("incomplete metadata", stcore.ST_ERR_INCOMPLETE_BUFFER),
]
# Checked before any JSON in both implementations, so the class must match exactly.
FRAMING = {stcore.ST_ERR_HEADER_TOO_SMALL, stcore.ST_ERR_HEADER_TOO_LARGE,
           stcore.ST_ERR_INVALID_HEADER_LENGTH}


def ref_verdict(blob: bytes) -> Tuple[bool, str]:
    try:
        safetensors.deserialize(blob)
        return True, "OK"
    except safetensors.SafetensorError as e:
        msg = str(e)
        for text, st in REF_KINDS:
            if text in msg:
                return False, stcore.STATUS_NAMES[st]
        return False, "other: " + msg[:60]
    except BaseException as e:  # a pyo3 panic is a BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
        return False, "exception " + type(e).__name__


def test_differential_acceptance():
    rng = random.Random(SEED)
    dump = os.environ.get("ST_DIFF_DUMP")
    counts = collections.Counter()
    by_mut = collections.defaultdict(collections.Counter)
    confusion = collections.Counter()
    mismatches = []
    framing_mismatches = []
    unexplained = []
    for i in range(N_FILES):
        blob, muts = make_case(rng)
        ours, offset = stcore.verdict(blob)
        ref_ok, ref_kind = ref_verdict(blob)
        if ours == 0 and ref_ok:
            cat = "agree_accept"
        elif ours != 0 and not ref_ok:
            cat = "agree_reject"
            confusion[(ref_kind, stcore.STATUS_NAMES[ours])] += 1
            ref_st = stcore.STATUS_NAMES.index(ref_kind) if ref_kind in stcore.STATUS_NAMES else -1
            if (ref_st in FRAMING or ours in FRAMING) and ref_st != ours:
                framing_mismatches.append((i, muts, stcore.STATUS_NAMES[ours], ref_kind))
        elif ours in STRICTER and ref_ok:
            cat = "stricter_" + stcore.STATUS_NAMES[ours]
            if not any(m.startswith(STRICTER_CAUSES[ours]) for m in muts):
                unexplained.append((i, muts, stcore.STATUS_NAMES[ours], offset))
        else:
            cat = "MISMATCH"
            mismatches.append((i, muts, stcore.STATUS_NAMES[ours], offset, ref_kind,
                               blob[:200]))
        counts[cat] += 1
        for m in muts or ["valid"]:
            by_mut[m][cat] += 1
        if dump and cat != "agree_accept" and cat != "agree_reject":
            os.makedirs(dump, exist_ok=True)
            with open(os.path.join(dump, f"{i:06d}_{cat}.safetensors"), "wb") as fh:
                fh.write(blob)

    lines = [f"differential: {N_FILES} files, seed {SEED:#x}"]
    lines += [f"  {k:40s} {v:6d}" for k, v in sorted(counts.items())]
    lines.append("  by mutation (agree_accept / agree_reject / stricter / MISMATCH):")
    for m in sorted(by_mut):
        cnt = by_mut[m]
        stricter = sum(v for k, v in cnt.items() if k.startswith("stricter"))
        lines.append(f"    {m:28s} {cnt['agree_accept']:5d} {cnt['agree_reject']:5d} "
                     f"{stricter:5d} {cnt['MISMATCH']:5d}")
    lines.append("  both reject: reference error class -> our status:")
    for (rk, ok), v in sorted(confusion.items()):
        lines.append(f"    {rk:34s} -> {ok:34s} {v:5d}")
    report = "\n".join(lines)
    print(report)
    out = os.environ.get("ST_DIFF_REPORT")
    if out:
        with open(out, "w") as fh:
            fh.write(report + "\n")

    assert N_FILES < 10_000 or counts["agree_accept"] > 500, "too few valid files to be meaningful"
    assert not mismatches, f"{len(mismatches)} verdicts differ; first: {mismatches[:5]}\n{report}"
    assert not framing_mismatches, framing_mismatches[:5]
    assert not unexplained, f"stricter verdicts without a matching mutation: {unexplained[:5]}"


def test_generated_valid_files_are_valid():
    """The generator's unmutated files are accepted by both (no stricter rule applies to them)."""
    rng = random.Random(SEED + 1)
    for _ in range(500):
        c = valid_case(rng)
        blob = c.build()
        assert ref_verdict(blob) == (True, "OK")
        assert stcore.verdict(blob) == (0, None)


def _sample(n: int, seed: int):
    rng = random.Random(seed)
    return [make_case(rng) for _ in range(n)]


def test_reference_entry_points_agree(tmp_path):
    """deserialize(bytes) and safe_open(path) give the same verdict, so deserialize (used above,
    no file needed) is a faithful stand-in for the reference reader, whole-file size included."""
    p = tmp_path / "f.safetensors"
    for blob, muts in _sample(400, SEED + 2):
        p.write_bytes(blob)
        try:
            with safetensors.safe_open(str(p), framework="numpy") as f:
                f.keys()
            so = True
        except safetensors.SafetensorError:
            so = False
        assert ref_verdict(blob)[0] == so, muts


def test_path_backends_match_memory_verdict(tmp_path):
    """st_open on a path, with the mmap and the pread backend, decides like st_open_memory."""
    p = tmp_path / "f.safetensors"
    for blob, muts in _sample(400, SEED + 3):
        p.write_bytes(blob)
        want = stcore.verdict(blob)
        for backend in (stcore.ST_BACKEND_MMAP, stcore.ST_BACKEND_PREAD):
            try:
                stcore.open_path(p, backend=backend).close()
                got = (0, None)
            except stcore.StError as e:
                got = (e.status, e.offset)
            assert got == want, (muts, backend)


@pytest.mark.parametrize("dtype", [d for d, _ in stcore.DTYPES])
def test_fully_escaped_header_is_accepted(dtype):
    """Every string \\u-escaped (names, field names, dtype values, metadata): JSON-equivalent to
    the plain header, so both readers must accept it with the same content."""
    bits = stcore.DTYPE_BITS[dtype]
    shape = [4] if bits < 8 else [2]
    size = 4 * bits // 8 if bits < 8 else 2 * bits // 8
    top = Obj([("__metadata__", Obj([(Esc("format"), Esc("pt"))])),
               (Esc("w.é😀"), Obj([(Esc("dtype"), Esc(dtype)), (Esc("shape"), shape),
                                   (Esc("data_offsets"), [0, size])]))])
    text = Emitter(random.Random(0), ws=0, esc=0).value(top).encode()
    blob = struct.pack("<Q", len(text)) + text + bytes(range(size))
    assert ref_verdict(blob) == (True, "OK")
    assert stcore.verdict(blob) == (0, None), dtype
    with stcore.open_memory(blob) as f:
        t = f.tensor(0)
        assert (t.name, t.dtype, t.shape) == ("w.é😀", dtype, tuple(shape))
        assert f.metadata() == {"format": "pt"}
