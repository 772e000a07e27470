"""Interop of the C core with the real reference package (safetensors==0.8.0), both directions.

(1) Files the reference writes open with our reader with identical tensors and metadata.
(2) Our writer's bytes equal the reference writer's for the same tensors (no metadata, one key);
    with several keys (whose order the reference leaves unspecified) both parse back equal.
(3) The reference reads every file we write (deserialize and safe_open) with identical content.

The reference writer has no way to declare F6_E2M3 / F6_E3M2 (TensorSpec refuses them), so for
those two dtypes direction (2) cannot be compared; their files are built by hand, checked to be
accepted by the reference reader, and go through (1) and (3).
"""

from __future__ import annotations

import json
import random
import struct

import pytest

import stcore

import safetensors  # noqa: E402  (a missing package fails, never skips)
import torch  # noqa: E402

SEED = 20240611
N_RANDOM = 300

# --- Test dicts ----------------------------------------------------------------------------------

UNICODE_NAMES = [
    "", "é", "naïve.weight", "模型.层.0", "слой/вес", "😀🚀", "a\u0301", "עברית",
    "tab\there", "new\nline", "quote\"back\\slash", "ctl\x01\x1f\x7f", "line\u2028sep", "/slash/",
    "\U0010ffff", "ﬀ", "sp ace", "__metadata", "__metadata__x", "0", "x" * 300,
]


def _nbytes(dtype: str, shape) -> int:
    n = 1
    for d in shape:
        n *= d
    bits = n * stcore.DTYPE_BITS[dtype]
    assert bits % 8 == 0
    return bits // 8


def _shapes_for(dtype: str):
    """Scalar, zero-size and ordinary shapes that are legal for the dtype."""
    bits = stcore.DTYPE_BITS[dtype]
    if bits == 4:
        return [[2], [3, 4], [0], [5, 0], [1, 2, 6]]
    if bits == 6:
        return [[4], [2, 8], [0], [0, 3], [3, 4]]
    return [[], [1], [7], [0], [2, 0, 3], [2, 3, 4], [1, 1, 1, 1, 1, 2]]


def _data(rng: random.Random, n: int) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(n))


def all_dtypes_dict(seed: int = 1, writable_by_ref: bool = False):
    """Every dtype in every shape class, with a mix of Unicode names."""
    rng = random.Random(seed)
    out = {}
    for dtype, _ in stcore.DTYPES:
        if writable_by_ref and dtype not in stcore.REF_SPEC_DTYPE:
            continue
        for j, shape in enumerate(_shapes_for(dtype)):
            name = f"{dtype.lower()}.{j}.{UNICODE_NAMES[(len(out)) % len(UNICODE_NAMES)]}"
            out[name] = (dtype, tuple(shape), _data(rng, _nbytes(dtype, shape)))
    return out


def _rand_name(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return ".".join(rng.choice(["model", "layers", str(rng.randrange(40)), "attn", "q_proj",
                                    "weight", "bias", "norm", "embed"])
                        for _ in range(rng.randrange(1, 5)))
    if r < 0.7:
        return rng.choice(UNICODE_NAMES) + str(rng.randrange(1000))
    n = rng.randrange(0, 12)
    # Any code point except NUL and the surrogates.
    cps = []
    for _ in range(n):
        c = rng.choice([rng.randrange(1, 0x80), rng.randrange(0x80, 0x800),
                        rng.randrange(0x800, 0xD800), rng.randrange(0xE000, 0x110000)])
        cps.append(chr(c))
    return "".join(cps)


def random_dict(rng: random.Random, writable_by_ref: bool):
    dtypes = [d for d, _ in stcore.DTYPES
              if not writable_by_ref or d in stcore.REF_SPEC_DTYPE]
    out = {}
    for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 20])):
        dtype = rng.choice(dtypes)
        while True:
            shape = [rng.choice([0, 1, 1, 2, 3, 4, 5, 8]) for _ in range(rng.randrange(0, 5))]
            n = 1
            for d in shape:
                n *= d
            if (n * stcore.DTYPE_BITS[dtype]) % 8:
                continue
            if writable_by_ref and not stcore.ref_can_write(dtype, shape):
                continue
            break
        name = _rand_name(rng)
        if name == "__metadata__" or name in out:
            continue
        out[name] = (dtype, tuple(shape), _data(rng, _nbytes(dtype, shape)))
    return out


def random_metadata(rng: random.Random, max_keys: int):
    n = rng.choice([0, 1, 1, 2, 4])
    n = min(n, max_keys)
    if n == 0:
        return None
    md = {}
    while len(md) < n:
        md[_rand_name(rng)] = _rand_name(rng) * rng.randrange(1, 3)
    return md


def random_cases(writable_by_ref: bool, max_meta_keys: int, n: int = N_RANDOM):
    rng = random.Random(SEED + writable_by_ref * 7 + max_meta_keys)
    return [(random_dict(rng, writable_by_ref), random_metadata(rng, max_meta_keys))
            for _ in range(n)]


def hand_written(tensors, metadata=None) -> bytes:
    """A valid file built without any writer: entries in name order, data laid out in that order,
    metadata last, header padded with spaces. Used for the dtypes the reference cannot write."""
    header = {}
    data = bytearray()
    for name in sorted(tensors):
        dtype, shape, blob = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data)


# --- Comparison helpers --------------------------------------------------------------------------

def _norm(tensors):
    return {k: (d, tuple(s), bytes(b)) for k, (d, s, b) in tensors.items()}


def assert_ours_reads(blob: bytes, tensors, metadata, tmp_path=None):
    """Our reader, from memory and (when tmp_path is given) from a path with both backends."""
    expect = _norm(tensors)
    with stcore.open_memory(blob) as f:
        got, md = stcore.read_all(f)
        assert got == expect
        assert md == (metadata or {})
        views = {t.name: f.view(t.index) for t in f.tensors()}
        assert views == {k: v[2] for k, v in expect.items()}
        assert len(f) == len(expect)
        for name in expect:
            assert f.tensor(f.find(name)).name == name
        # File order is by begin offset; name order is byte-wise ascending.
        infos = f.tensors()
        assert [(t.data_begin, t.data_end) for t in infos] == sorted(
            (t.data_begin, t.data_end) for t in infos)
        assert [infos[i].name_bytes for i in f.name_order()] == sorted(t.name_bytes for t in infos)
        assert f.data_offset() == 8 + f.header_size()
        assert f.data_offset() + f.data_size() == len(blob)
    if tmp_path is not None:
        p = tmp_path / "ref.safetensors"
        p.write_bytes(blob)
        for backend in (stcore.ST_BACKEND_MMAP, stcore.ST_BACKEND_PREAD):
            with stcore.open_path(p, backend=backend) as f:
                assert f.backend() == backend
                got, md = stcore.read_all(f)
                assert got == expect
                assert md == (metadata or {})


def _torch_bytes(t) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def assert_ref_reads(blob: bytes, tensors, metadata, tmp_path):
    """The reference reads our file: deserialize, and safe_open (keys, metadata, dtype, shape,
    and the values of every dtype torch has)."""
    expect = _norm(tensors)
    assert stcore.ref_deserialize(blob) == expect
    p = tmp_path / "ours.safetensors"
    p.write_bytes(blob)
    with safetensors.safe_open(str(p), framework="pt") as f:
        assert sorted(f.keys()) == sorted(expect)
        assert (f.metadata() or {}) == (metadata or {})
        for name, (dtype, shape, data) in expect.items():
            sl = f.get_slice(name)
            assert sl.get_dtype() == dtype
            assert tuple(sl.get_shape()) == shape
            if dtype in ("F6_E2M3", "F6_E3M2"):
                continue  # torch has no such dtype
            if dtype == "F4" and (not shape or shape[-1] % 2):
                continue  # torch packs F4 in pairs along the last dimension
            assert _torch_bytes(f.get_tensor(name)) == data


# --- Fixed dicts ---------------------------------------------------------------------------------

ONE_KEY = {"format": "pt"}
MANY_KEYS = {"format": "pt", "é": "ü", "": "", "k\n\"\\": "v\x01\u2028😀", "z" * 50: "long " * 40}


def test_library_loads_and_dtype_table_matches_format():
    lib = stcore.lib()
    n = lib.st_version_number()
    assert lib.st_version_string().decode() == f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    for num, (name, bits) in enumerate(stcore.DTYPES):
        assert lib.st_dtype_name(num).decode() == name
        assert lib.st_dtype_bits(num) == bits


@pytest.mark.parametrize("metadata", [None, ONE_KEY, {"é\n": "😀\""}], ids=["nometa", "onekey",
                                                                           "unicodekey"])
def test_reference_file_opens_identically(metadata, tmp_path):
    tensors = all_dtypes_dict(writable_by_ref=True)
    blob = stcore.ref_serialize(tensors, metadata)
    assert_ours_reads(blob, tensors, metadata, tmp_path)


def test_reference_reader_and_ours_agree_on_f6_files(tmp_path):
    tensors = all_dtypes_dict()  # every dtype, F6 included
    blob = hand_written(tensors, ONE_KEY)
    assert stcore.ref_deserialize(blob) == _norm(tensors)  # the reference accepts it
    assert_ours_reads(blob, tensors, ONE_KEY, tmp_path)


@pytest.mark.parametrize("metadata", [None, ONE_KEY, {"é\n": "😀\""}], ids=["nometa", "onekey",
                                                                           "unicodekey"])
def test_writer_bytes_identical_to_reference(metadata, tmp_path):
    tensors = all_dtypes_dict(writable_by_ref=True)
    ours = stcore.write_memory(tensors, metadata)
    ref = stcore.ref_serialize(tensors, metadata)
    assert ours == ref
    p = tmp_path / "w.safetensors"
    stcore.write_path(p, tensors, metadata, flags=0)  # the durable path: fsync + rename
    assert p.read_bytes() == ref
    assert sorted(x.name for x in tmp_path.iterdir()) == ["w.safetensors"]  # no temp left


@pytest.mark.parametrize("tensors", [
    {},
    {"s": ("F64", (), b"\x00" * 8)},
    {"z": ("BF16", (0,), b""), "y": ("U8", (0, 3), b""),
     "x": ("I8", (), b"\x01")},
    {"a": ("F32", (2,), b"\x00" * 8), "b": ("F16", (3,), b"\x01" * 6), "c": ("BOOL", (1,), b"\x01")},
], ids=["empty", "scalar", "zero_size", "padding"])
def test_writer_small_cases_identical(tensors):
    for md in (None, ONE_KEY):
        assert stcore.write_memory(tensors, md) == stcore.ref_serialize(tensors, md)


def test_empty_file_is_16_bytes():
    assert stcore.write_memory({}) == struct.pack("<Q", 8) + b"{}" + b" " * 6
    assert stcore.ref_serialize({}) == stcore.write_memory({})


def _split(blob: bytes):
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def test_writer_several_metadata_keys(tmp_path):
    tensors = all_dtypes_dict(writable_by_ref=True)
    ours = stcore.write_memory(tensors, MANY_KEYS)
    ref = stcore.ref_serialize(tensors, MANY_KEYS)
    # The reference leaves key order unspecified: same length, same parsed header, same data.
    assert len(ours) == len(ref)
    assert _split(ours) == _split(ref)
    # Ours writes the keys sorted (byte-wise), so the output is reproducible.
    n = struct.unpack("<Q", ours[:8])[0]
    md_pairs = json.loads(ours[8:8 + n], object_pairs_hook=list)[0][1]
    keys = [k for k, _ in md_pairs]
    assert keys == sorted(keys, key=lambda k: k.encode())
    assert_ref_reads(ours, tensors, MANY_KEYS, tmp_path)
    assert_ours_reads(ref, tensors, MANY_KEYS)


def test_reference_reads_our_files_every_dtype(tmp_path):
    tensors = all_dtypes_dict()  # F6 included: the reference reads what it cannot write
    for md in (None, ONE_KEY, MANY_KEYS):
        blob = stcore.write_memory(tensors, md)
        assert_ref_reads(blob, tensors, md, tmp_path)
        assert_ours_reads(blob, tensors, md)


def test_writer_refuses_metadata_named_tensor():
    with pytest.raises(stcore.StError) as e:
        stcore.write_memory({"__metadata__": ("U8", (1,), b"\x00")})
    assert e.value.status == stcore.ST_ERR_RESERVED_NAME


# --- Randomized (fixed seed) -------------------------------------------------------------------

@pytest.mark.parametrize("chunk", range(3))
def test_random_dicts_writer_identical_and_readable(chunk, tmp_path):
    cases = random_cases(writable_by_ref=True, max_meta_keys=1)
    for tensors, md in cases[chunk::3]:
        ref = stcore.ref_serialize(tensors, md)
        ours = stcore.write_memory(tensors, md)
        assert ours == ref, (list(tensors), md)
        assert_ours_reads(ref, tensors, md)
        assert stcore.ref_deserialize(ours) == _norm(tensors)


def test_random_dicts_all_dtypes_both_readers(tmp_path):
    for tensors, md in random_cases(writable_by_ref=False, max_meta_keys=4, n=N_RANDOM):
        ours = stcore.write_memory(tensors, md)
        assert stcore.ref_deserialize(ours) == _norm(tensors)
        assert_ours_reads(ours, tensors, md)
        if md is not None and len(md) > 1:
            continue
        if all(stcore.ref_can_write(d, s) for d, s, _ in tensors.values()):
            assert ours == stcore.ref_serialize(tensors, md)


def test_random_dicts_safe_open(tmp_path):
    # safe_open is slower (a file each): a sample of the random set.
    for tensors, md in random_cases(writable_by_ref=False, max_meta_keys=4, n=60):
        assert_ref_reads(stcore.write_memory(tensors, md), tensors, md, tmp_path)


def test_ctypes_tensor_info_covers_what_the_library_writes():
    """stcore's st_tensor_info is as large as the header's: the library writes
    nothing past it (a struct that grew in the header, reserved words
    included, would otherwise corrupt memory here)."""
    import ctypes

    data = stcore.write_memory({"a": ("F32", [1], b"\0" * 4)})
    with stcore.open_memory(data) as f:
        size = ctypes.sizeof(stcore.st_tensor_info)
        buf = (ctypes.c_ubyte * (size + 64))(*([0xAB] * (size + 64)))
        rc = stcore.lib().st_tensor_get(
            f._h, 0, ctypes.cast(buf, ctypes.POINTER(stcore.st_tensor_info)))
        assert rc == 0
        assert bytes(buf[size:]) == b"\xab" * 64
