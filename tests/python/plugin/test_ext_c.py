"""The CPython extension torch_safetensors._C on its own: File, View, Writer,
SafetensorError, and the lifetime rules the torch layer relies on."""

from __future__ import annotations

import errno
import json
import os
import struct
import threading

import numpy as np
import pytest

from torch_safetensors import _C
from torch_safetensors.errors import (
    SafetensorError,
    SafetensorFileNotFoundError,
)

from _ahelpers import collect, inside_mapping, mappings_of


def _file_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def _write(path, tensors: dict) -> str:
    """Writes {name: (dtype, array)} with our Writer (no fsync); the path."""
    w = _C.Writer()
    for name, (dtype, arr) in tensors.items():
        w.add_tensor(name, dtype, arr.shape, arr)
    w.write_path(str(path), fsync=False)
    return str(path)


@pytest.fixture
def sample(tmp_path):
    """Two tensors written by our Writer: a (F32 [2, 3]) and b (U8 [4])."""
    a = np.arange(6, dtype=np.float32)
    b = np.array([1, 2, 3, 4], dtype=np.uint8)
    w = _C.Writer()
    w.add_metadata("k", "v")
    w.add_tensor("a", "F32", (2, 3), a)
    w.add_tensor("b", "U8", [4], b)
    path = tmp_path / "s.safetensors"
    w.write_path(str(path))
    return path, a, b


def test_writer_bytes_match_reference_layout(sample, ref):
    import torch

    path, a, b = sample
    expected = ref.save({"a": torch.from_numpy(a).reshape(2, 3),
                         "b": torch.from_numpy(b)}, metadata={"k": "v"})
    assert path.read_bytes() == expected
    w = _C.Writer()
    w.add_metadata("k", "v")
    w.add_tensor("a", "F32", (2, 3), a)
    w.add_tensor("b", "U8", [4], b)
    assert w.size() == len(expected)
    assert w.to_bytes() == expected


def test_file_table_metadata_index(sample):
    path, a, b = sample
    with _C.File(str(path)) as f:
        assert f.tensors() == [("a", "F32", (2, 3), 0, 24),
                               ("b", "U8", (4,), 24, 28)]
        assert f.metadata() == {"k": "v"}
        assert f.index("b") == 1
        assert len(f) == 2 and f.count() == 2
        assert f.info("a") == f.tensors()[0]
        assert f.backend == "mmap"
        assert f.data_size == 28
        assert f.data_offset == 8 + f.header_size
        assert f.header()[:1] == b"{"
        with pytest.raises(KeyError):
            f.index("nope")
        with pytest.raises(IndexError):
            f.info(2)


def test_sources_path_fd_pathlike_buffer(sample):
    path, a, _ = sample
    data = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        by_fd = _C.File(fd)
    finally:
        os.close(fd)  # the handle keeps its own descriptor
    for f in (_C.File(path), by_fd, _C.File(data), _C.File(bytearray(data)),
              _C.File(str(path), backend="pread")):
        out = np.empty(6, dtype=np.float32)
        f._read_into(0, out)
        assert out.tobytes() == a.tobytes()
        f.close()
    with pytest.raises(TypeError):
        _C.File(3.5)
    with pytest.raises(ValueError):
        _C.File(str(path), backend="nope")


def test_buffer_is_zero_copy_and_keeps_mapping_alive(sample):
    path, a, _ = sample
    f = _C.File(str(path), writable=True)
    v = f.buffer("a")
    m = memoryview(v)
    assert not m.readonly and m.nbytes == 24
    assert inside_mapping(v.address, str(path))
    assert mappings_of(str(path))[0][2].startswith("rw")  # private, COW
    f.close()
    assert f.closed and not f.released  # a view is alive
    assert np.frombuffer(m, dtype=np.float32).tobytes() == a.tobytes()
    # Writing is copy-on-write: the file on disk keeps its bytes.
    before = path.read_bytes()
    m[0] = 0xFF
    assert path.read_bytes() == before
    del m, v
    collect()
    assert f.released
    assert mappings_of(str(path)) == []
    with pytest.raises(SafetensorError):
        f.tensors()


def test_read_only_views_by_default(sample):
    path, _, _ = sample
    with _C.File(str(path)) as f:
        v = f.buffer(0)
        assert v.readonly
        assert memoryview(v).readonly
        with pytest.raises(TypeError):
            memoryview(v)[0] = 1
        with pytest.raises(BufferError):  # asking for a writable export
            f._read_into(0, v)


def test_pread_has_no_zero_copy(sample):
    path, _, _ = sample
    with _C.File(str(path), backend="pread") as f:
        assert mappings_of(str(path)) == []
        with pytest.raises(SafetensorError) as ei:
            f.buffer(0)
        assert ei.value.status_name == "ST_ERR_UNSUPPORTED"


def test_read_into_pointer_and_too_small(sample):
    path, a, b = sample
    with _C.File(str(path)) as f:
        out = np.zeros(4, dtype=np.uint8)
        f._read_into("b", out.ctypes.data, out.nbytes)
        assert out.tobytes() == b.tobytes()
        small = np.zeros(2, dtype=np.float32)
        with pytest.raises(SafetensorError) as ei:
            f._read_into("a", small)
        assert ei.value.status_name == "ST_ERR_BUFFER_TOO_SMALL"
        with pytest.raises(TypeError):
            f._read_into("a", out.ctypes.data)  # nbytes required
        with pytest.raises(BufferError):
            f._read_into("a", b"immutable")


def test_slices(sample):
    path, a, _ = sample
    m = a.reshape(2, 3)
    for backend in ("mmap", "pread"):
        with _C.File(str(path), backend=backend) as f:
            for ranges, expect in [
                ([(0, None, 1), (0, None, 2)], m[:, ::2]),
                ([(-1, None, 1)], m[-1:]),
                ([(1, 2, 1), (1, 3, 1)], m[1:2, 1:3]),
                ([], m),
                ([(5, 9, 1)], m[5:9]),
            ]:
                shape, nbytes = f.slice_shape(0, ranges)
                assert shape == expect.shape and nbytes == expect.nbytes
                out = np.empty(expect.shape, dtype=np.float32)
                f._read_slice_into(0, ranges, out)
                assert np.array_equal(out, expect)
            with pytest.raises(SafetensorError) as ei:
                f.slice_shape(0, [(0, None, 0)])
            assert ei.value.status_name == "ST_ERR_INVALID_SLICE"
            with pytest.raises(SafetensorError):
                f.slice_shape(0, [(0, 1, 1)] * 3)


def test_read_many_parallel_copy(sample):
    path, a, b = sample
    with _C.File(str(path)) as f:
        oa = np.zeros(6, dtype=np.float32)
        ob = np.zeros(4, dtype=np.uint8)
        stats = f._read_many([(0, oa.ctypes.data, oa.nbytes),
                             ("b", ob.ctypes.data, ob.nbytes)], threads=2)
        assert oa.tobytes() == a.tobytes() and ob.tobytes() == b.tobytes()
        assert stats["bytes_copied"] == stats["bytes_read"] == oa.nbytes + ob.nbytes
        assert 1 <= stats["threads_used"] <= 2 and stats["chunks"] >= 1


def test_read_many_engine_flags(tmp_path):
    big = np.random.default_rng(3).integers(0, 255, 5 << 20, dtype=np.uint8)
    path = _write(tmp_path / "big.safetensors", {"big": ("U8", big)})
    for backend in ("mmap", "pread"):
        with _C.File(path, backend=backend) as f:
            for flags in (0, _C.EXEC_HUGEPAGES, _C.EXEC_NO_PREFAULT,
                          _C.EXEC_HUGEPAGES | _C.EXEC_DIRECT):
                out = np.zeros_like(big)
                f._read_many([(0, out.ctypes.data, out.nbytes)], flags=flags)
                assert np.array_equal(out, big), (backend, flags)
            with pytest.raises(ValueError, match="unknown engine flags"):
                f._read_many([(0, out.ctypes.data, out.nbytes)], flags=0x100)


def test_read_many_slices_count_only_their_bytes(tmp_path):
    m = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    path = _write(tmp_path / "m.safetensors", {"m": ("F32", m)})
    for backend in ("mmap", "pread"):
        with _C.File(path, backend=backend) as f:
            col = np.zeros((64, 6), dtype=np.float32)   # one of 8 column shards
            rows = np.zeros((8, 48), dtype=np.float32)  # every 8th row, negative start
            stats = f._read_many([("m", col.ctypes.data, col.nbytes, [(0, None, 1), (6, 12, 1)]),
                                 ("m", rows.ctypes.data, rows.nbytes, [(-64, None, 8)])])
            assert np.array_equal(col, m[:, 6:12])
            assert np.array_equal(rows, m[-64::8])
            assert stats["bytes_read"] == col.nbytes + rows.nbytes
            with pytest.raises(SafetensorError) as ei:
                f._read_many([("m", col.ctypes.data, col.nbytes - 1, [(0, None, 1), (6, 12, 1)])])
            assert ei.value.status_name == "ST_ERR_BUFFER_TOO_SMALL"


def test_concurrent_reads_from_threads(tmp_path):
    """One handle read from several threads at once (the GIL is released
    inside the reads)."""
    arrays = {f"t{k}": np.random.default_rng(k).random(50_000)
              for k in range(8)}
    path = _write(tmp_path / "many.safetensors",
                  {k: ("F64", v) for k, v in arrays.items()})
    errors = []
    for backend in ("mmap", "pread"):
        f = _C.File(path, backend=backend)

        def work(name):
            try:
                for _ in range(20):
                    out = np.empty_like(arrays[name])
                    f._read_into(name, out)
                    assert np.array_equal(out, arrays[name])
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in arrays]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        f.close()
    assert errors == []


def test_writer_pointer_owner_fd_and_refusals(tmp_path):
    a = np.arange(4, dtype=np.int64)
    w = _C.Writer()
    w.add_tensor("a", "I64", [4], a.ctypes.data, a.nbytes, owner=a)
    w.add_tensor("empty", "F32", [0, 3], 0, 0)
    path = tmp_path / "fd.safetensors"
    with open(path, "wb") as fh:
        fh.flush()
        w.write_fd(fh.fileno())
    assert path.read_bytes() == w.to_bytes()
    with _C.File(str(path)) as f:
        assert [t[0] for t in f.tensors()] == ["empty", "a"] or \
            sorted(t[0] for t in f.tensors()) == ["a", "empty"]
    cases = [
        (("a", "I64", [4], a), "ST_ERR_DUPLICATE_KEY"),
        (("__metadata__", "U8", [1], b"x"), "ST_ERR_RESERVED_NAME"),
        (("n\x00", "U8", [1], b"x"), "ST_ERR_NUL_IN_STRING"),
        (("bad", "U8", [3], b"xx"), "ST_ERR_INVALID_TENSOR_INFO"),
        (("f4", "F4", [3], b"x"), "ST_ERR_MISALIGNED_SLICE"),
        (("dt", "X9", [1], b"x"), "ST_ERR_INVALID_ARGUMENT"),
    ]
    for args, status in cases:
        with pytest.raises(SafetensorError) as ei:
            w.add_tensor(*args)
        assert ei.value.status_name == status, args
    with pytest.raises(SafetensorError) as ei:
        w.add_metadata("k\x00", "v")
    assert ei.value.status_name == "ST_ERR_NUL_IN_STRING"


def test_write_path_failure_is_io_error(tmp_path):
    w = _C.Writer()
    w.add_tensor("a", "U8", [1], b"x")
    target = tmp_path / "missing-dir" / "x.safetensors"
    with pytest.raises(SafetensorError) as ei:
        w.write_path(str(target))
    e = ei.value
    assert e.status_name == "ST_ERR_IO" and e.sys_errno == errno.ENOENT
    assert isinstance(e, OSError)
    assert not target.parent.exists()


def test_error_attributes_and_text(tmp_path):
    bad = _file_bytes({"a": {"dtype": "U8", "shape": [2],
                             "data_offsets": [0, 2]},
                       "b": {"dtype": "U8", "shape": [2],
                             "data_offsets": [3, 5]}}, b"\0" * 5)
    p = tmp_path / "bad.safetensors"
    p.write_bytes(bad)
    with pytest.raises(SafetensorError) as ei:
        _C.File(str(p))
    e = ei.value
    assert e.status == _C.ST_ERR_INVALID_OFFSET == 12
    assert e.status_name == "ST_ERR_INVALID_OFFSET"
    assert e.tensor_name == "b"
    assert isinstance(e.offset, int) and 8 < e.offset < 8 + len(bad)
    assert e.sys_errno == 0 and e.filename == str(p)
    text = str(e)
    for part in ("ST_ERR_INVALID_OFFSET", "status 12", f"offset {e.offset}",
                 "'b'", str(p)):
        assert part in text, (part, text)


def test_missing_file_is_file_not_found():
    with pytest.raises(SafetensorFileNotFoundError) as ei:
        _C.File("/nonexistent/dir/x.safetensors")
    e = ei.value
    assert isinstance(e, FileNotFoundError) and isinstance(e, SafetensorError)
    assert e.errno == errno.ENOENT and e.status_name == "ST_ERR_IO"


def test_module_tables():
    names = _C.dtype_names()
    assert len(names) == 22 and names[0] == "BOOL" and names[-1] == "U64"
    assert _C.dtype_bits("F4") == 4 and _C.dtype_bits("F6_E3M2") == 6
    assert _C.status_name(23) == "ST_ERR_FILE_CHANGED"
    with pytest.raises(SafetensorError) as ei:
        _C._raise(18, "custom", "t")
    assert ei.value.tensor_name == "t"
    assert isinstance(ei.value, IndexError)  # ST_ERR_INVALID_SLICE


def test_names_in_both_orders(tmp_path):
    """names() lists in name order (what sorted() gives, non-ASCII names
    included) or in file order, from the C core in one call."""
    names = ["zeta", "alpha", "é", "\u4e2d", "a\U0001f600", "B", "a.b.0", "a.b.10"]
    path = _write(tmp_path / "names.safetensors",
                  {n: ("U8", np.arange(k + 1, dtype=np.uint8)) for k, n in enumerate(names)})
    with _C.File(path) as f:
        assert f.names() == sorted(names)
        assert f.names(sorted=True) == sorted(names)
        assert f.names(sorted=False) == [info[0] for info in f.tensors()]
        assert sorted(f.names(sorted=False)) == sorted(names)
    with pytest.raises(Exception):
        f.names()


def test_tensor_infos_stay_out_of_the_cyclic_gc(sample):
    """tensors(), info() and slice_shape() return tuples of str and int
    only: they are untracked, so listing a big file adds nothing to the
    collector's survivors."""
    import gc

    path, a, b = sample
    with _C.File(str(path)) as f:
        infos = f.tensors()
        assert infos and all(not gc.is_tracked(t) and not gc.is_tracked(t[2])
                             for t in infos)
        assert not gc.is_tracked(f.info(0))
        shape, _ = f.slice_shape(0, [(0, None, 1)])
        assert not gc.is_tracked(shape)
        assert infos[0][1] is f.tensors()[0][1]  # dtype names made once
