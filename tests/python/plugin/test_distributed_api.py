"""SafetensorsStorageWriter/Reader in one process (DCP without a process
group): the bytes the writer lays out, the named refusals, the checkpoint
shapes the reader accepts. The multi-process runs are in
test_distributed.py."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from torch_safetensors import _C, _dtypes
from torch_safetensors.distributed import (
    FORMAT_VERSION,
    VERSION_KEY,
    SafetensorCheckpointError,
    SafetensorNotSerializableError,
    SafetensorsStorageReader,
    SafetensorsStorageWriter,
    SafetensorUnsupportedDtypeError,
)
from torch_safetensors.errors import SafetensorError, SafetensorValueError
from torch_safetensors.sharded import save_sharded
from torch_safetensors.torch import save_file

from _ahelpers import rand

pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled:UserWarning")


def _save(sd, path, **options):
    dcp.save(sd, storage_writer=SafetensorsStorageWriter(path, **options),
             no_dist=True)


def _load(sd, path, **options):
    reader = SafetensorsStorageReader(path, **options)
    dcp.load(sd, storage_reader=reader, no_dist=True)
    return reader


def _failure(excinfo):
    """The one exception a single-process DCP run wrapped."""
    assert isinstance(excinfo.value, CheckpointException)
    (exc, _), = excinfo.value.failures.values()
    return exc


def test_one_shard_is_byte_for_byte_what_save_file_writes(tmp_path):
    sd = {"b.weight": rand(torch.bfloat16, (5, 3), 1),
          "a.bias": rand(torch.float32, (7,), 2),
          "z": torch.arange(6, dtype=torch.int64).reshape(2, 3),
          "e": torch.zeros(0, 4), "f4": rand(torch.float4_e2m1fn_x2, (3, 2), 3)}
    _save(sd, tmp_path / "ckpt")
    with open(tmp_path / "ckpt/model.safetensors.index.json") as fh:
        index = json.load(fh)
    (fname,) = set(index["weight_map"].values())
    assert fname == "model-00001-of-00001.safetensors"
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in sd.values())
    save_file(sd, tmp_path / "ref.safetensors",
              metadata={"format": "pt", VERSION_KEY: FORMAT_VERSION})
    assert (tmp_path / "ckpt" / fname).read_bytes() == \
        (tmp_path / "ref.safetensors").read_bytes()


def test_layout_is_the_writers_header(tmp_path):
    """_C.layout gives the bytes write_path writes before the data, for no
    metadata, declared empty metadata and entries."""
    tensors = {"x": rand(torch.float16, (3, 5), 4), "a": torch.ones(2, 2)}
    for md in (None, {}, {"k": "v", "format": "pt"}):
        w = _C.Writer()
        if md is not None:
            w.declare_metadata()
            for k in sorted(md):
                w.add_metadata(k, md[k])
        for k, t in tensors.items():
            w.add_tensor(k, _dtypes.st_name(t.dtype), tuple(t.shape),
                         t.numpy().tobytes())
        data = w.to_bytes()
        header, size = _C.layout(
            [(k, _dtypes.st_name(t.dtype), tuple(t.shape))
             for k, t in tensors.items()], md)
        assert size == len(data)
        assert data[:len(header)] == header
        assert (len(header) - 8) % 8 == 0
    with pytest.raises(SafetensorError, match="unknown dtype"):
        _C.layout([("x", "F99", (1,))], None)


def test_save_load_without_process_group(tmp_path):
    sd = {"w": rand(torch.float32, (4, 6), 5), "step": 3,
          "sched": {"lr": [0.1, 0.01], "name": "cos"}}
    _save(sd, tmp_path / "c", max_shard_size=40)
    out = {"w": torch.zeros(4, 6), "step": 0,
           "sched": {"lr": [], "name": ""}}
    reader = _load(out, tmp_path / "c")
    assert torch.equal(out["w"].view(torch.uint8), sd["w"].view(torch.uint8))
    assert out["step"] == 3 and out["sched"] == sd["sched"]
    assert reader.bytes_read == 96


def test_load_converts_to_the_destination_dtype(tmp_path):
    sd = {"w": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)}
    _save(sd, tmp_path / "c")
    out = {"w": torch.zeros(3, 4, dtype=torch.float32)}
    _load(out, tmp_path / "c")
    assert torch.equal(out["w"], sd["w"].float())


def test_non_contiguous_destination_goes_through_scratch(tmp_path):
    sd = {"w": rand(torch.float32, (6, 5), 6)}
    _save(sd, tmp_path / "c")
    dest = torch.zeros(5, 6).t()  # a transposed view: not contiguous
    out = {"w": dest}
    _load(out, tmp_path / "c")
    assert torch.equal(dest.contiguous().view(torch.uint8),
                       sd["w"].view(torch.uint8))


def test_values_that_need_pickle_are_refused(tmp_path):
    _save({"w": torch.ones(2)}, tmp_path / "c")
    before = sorted(os.listdir(tmp_path / "c"))
    for bad in ((1, 2), {"s": {1, 2}}, float("inf"), object()):
        with pytest.raises(CheckpointException) as ei:
            _save({"w": torch.zeros(2), "bad": bad}, tmp_path / "c")
        assert isinstance(_failure(ei), SafetensorNotSerializableError)
        assert "never pickles" in str(_failure(ei))
    visible = sorted(n for n in os.listdir(tmp_path / "c")
                     if not n.startswith("."))
    assert visible == before
    out = {"w": torch.zeros(2)}
    _load(out, tmp_path / "c")
    assert torch.equal(out["w"], torch.ones(2))


def test_dtypes_without_counterpart_are_refused(tmp_path):
    with pytest.raises(CheckpointException) as ei:
        _save({"c": torch.zeros(2, dtype=torch.complex128)}, tmp_path / "c")
    assert isinstance(_failure(ei), SafetensorUnsupportedDtypeError)
    # a 0-dim F4 tensor has no F4 shape that loads back as 0-dim
    with pytest.raises(CheckpointException) as ei:
        _save({"s": torch.zeros((), dtype=torch.uint8).view(
            torch.float4_e2m1fn_x2)}, tmp_path / "c")
    assert isinstance(_failure(ei), SafetensorUnsupportedDtypeError)
    assert not os.path.exists(tmp_path / "c") or not os.listdir(tmp_path / "c")


def _raw_file(path, dtype, shape, nbytes):
    header = json.dumps({"x": {"dtype": dtype, "shape": shape,
                               "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header + b"\0" * nbytes)


@pytest.mark.parametrize("dtype,shape,nbytes,error", [
    ("F99", [2], 2, SafetensorUnsupportedDtypeError),  # not in the table
    ("F6_E2M3", [4], 3, SafetensorUnsupportedDtypeError),  # no torch dtype
    ("F4", [2, 3], 3, SafetensorUnsupportedDtypeError),  # odd F4 dimension
    ("F4", [3], 2, SafetensorError),  # 12 bits: the format refuses the file
])
def test_file_dtypes_torch_cannot_hold_are_refused(tmp_path, dtype, shape,
                                                   nbytes, error):
    path = tmp_path / "m.safetensors"
    _raw_file(path, dtype, shape, nbytes)
    reader = SafetensorsStorageReader(path)
    reader.reset()
    with pytest.raises(error) as ei:
        reader.read_metadata()
    assert ei.value.tensor_name == "x"
    if error is SafetensorError:
        assert ei.value.status_name == "ST_ERR_MISALIGNED_SLICE"
    text = str(ei.value)
    # and through dcp.load: DCP (2.13) catches read_metadata's exception and
    # raises an AssertionError carrying its message, wrapped as every rank's
    # failure is
    with pytest.raises(CheckpointException) as ei:
        _load({"x": torch.zeros(1)}, path)
    assert text in str(_failure(ei))


def test_reader_takes_files_directories_and_indexes(tmp_path):
    sd = {f"t{k}": rand(torch.float32, (8,), 10 + k) for k in range(5)}
    save_sharded(sd, tmp_path / "sharded", max_shard_size=64)
    save_file(sd, tmp_path / "one.safetensors")
    os.makedirs(tmp_path / "plain")
    save_file({k: sd[k] for k in ("t0", "t1")}, tmp_path / "plain/a.safetensors")
    save_file({k: sd[k] for k in ("t2", "t3", "t4")},
              tmp_path / "plain/b.safetensors")
    for path in (tmp_path / "sharded",
                 tmp_path / "sharded/model.safetensors.index.json",
                 tmp_path / "one.safetensors", tmp_path / "plain"):
        assert SafetensorsStorageReader.validate_checkpoint_id(path)
        out = {k: torch.zeros(8) for k in sd}
        _load(out, path)
        for k in sd:
            assert torch.equal(out[k].view(torch.uint8),
                               sd[k].view(torch.uint8)), (path, k)
    assert not SafetensorsStorageReader.validate_checkpoint_id(
        tmp_path / "missing")


def test_broken_indexes_are_named_errors(tmp_path):
    sd = {f"t{k}": torch.full((4,), float(k)) for k in range(4)}
    save_sharded(sd, tmp_path, max_shard_size=32)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"]["t0"]
    index["weight_map"]["t9"] = shard  # a tensor the shard lacks
    index_path.write_text(json.dumps(index))
    reader = SafetensorsStorageReader(tmp_path)
    with pytest.raises(SafetensorCheckpointError, match="t9"):
        reader.read_metadata()
    index["weight_map"] = {"t0": "gone.safetensors"}
    index_path.write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        reader.read_metadata()
    index["weight_map"] = {"t0": "../escape.safetensors"}
    index_path.write_text(json.dumps(index))
    with pytest.raises(SafetensorValueError, match="plain file name"):
        reader.read_metadata()


def test_writer_options_are_checked(tmp_path):
    with pytest.raises(SafetensorValueError, match="torch_safetensors"):
        SafetensorsStorageWriter(tmp_path, metadata={"torch_safetensors.x": "1"})
    with pytest.raises(SafetensorValueError):
        SafetensorsStorageWriter(tmp_path, max_shard_size="lots")
    with pytest.raises(SafetensorValueError):
        SafetensorsStorageWriter(tmp_path, threads=0)
    with pytest.raises(SafetensorValueError):
        SafetensorsStorageReader(tmp_path, backend="magic")
    with pytest.raises(SafetensorValueError):
        SafetensorsStorageReader(tmp_path, threads=-1)
    with pytest.raises(SafetensorValueError, match="weights_name"):
        SafetensorsStorageWriter(tmp_path, weights_name="../model.safetensors")
    _save({"w": torch.ones(3)}, tmp_path / "m", metadata={"team": "x"})
    from safetensors import safe_open
    with safe_open(str(tmp_path / "m/model-00001-of-00001.safetensors"),
                   "pt") as f:
        assert f.metadata() == {"format": "pt", "team": "x",
                                VERSION_KEY: FORMAT_VERSION}
    assert SafetensorsStorageWriter.validate_checkpoint_id(tmp_path / "new")
    assert not SafetensorsStorageWriter.validate_checkpoint_id(
        tmp_path / "m/model-00001-of-00001.safetensors")


def test_pread_backend_and_checkpoint_id(tmp_path):
    sd = {"w": rand(torch.float16, (9, 3), 7)}
    writer = SafetensorsStorageWriter(tmp_path / "unused")
    dcp.save(sd, storage_writer=writer, checkpoint_id=tmp_path / "c",
             no_dist=True)
    assert not os.path.exists(tmp_path / "unused")
    out = {"w": torch.zeros(9, 3, dtype=torch.float16)}
    dcp.load(out, storage_reader=SafetensorsStorageReader(
        tmp_path / "elsewhere", backend="pread"),
        checkpoint_id=tmp_path / "c", no_dist=True)
    assert torch.equal(out["w"].view(torch.uint8), sd["w"].view(torch.uint8))


def test_a_later_layout_version_is_refused(tmp_path):
    save_file({"w": torch.ones(2)}, tmp_path / "m.safetensors",
              metadata={"format": "pt", VERSION_KEY: "2"})
    with pytest.raises(SafetensorCheckpointError, match="version"):
        SafetensorsStorageReader(tmp_path / "m.safetensors").read_metadata()


def test_state_file_belongs_to_the_checkpoint_only_through_its_index(tmp_path):
    """One rule (sharded.py) for both modules: a DCP state file is part of
    the checkpoint its index names it in; without the index it is a
    leftover that no loader takes for a weights file; and a save_sharded
    over a DCP checkpoint removes it with the old shards."""
    from torch_safetensors.sharded import load_sharded

    ckpt = tmp_path / "ckpt"
    sd = {"w": rand(torch.float32, (4, 4), 1), "step": 7}
    _save(sd, ckpt)
    state = [e for e in os.listdir(ckpt) if "-dcp-state-" in e]
    assert len(state) == 1
    # Without the index, the directory is its shards' leftovers plus the
    # state file: neither is taken for a checkpoint file.
    index = ckpt / "model.safetensors.index.json"
    saved_index = index.read_bytes()
    index.unlink()
    save_file({"other": torch.ones(2)}, ckpt / "other.safetensors")
    assert sorted(load_sharded(ckpt)) == ["other"]
    os.remove(ckpt / "other.safetensors")
    index.write_bytes(saved_index)
    # save_sharded over it: the old state file goes with the old shards.
    save_sharded({"v": torch.zeros(3)}, ckpt)
    assert sorted(os.listdir(ckpt)) == ["model.safetensors"]
    assert sorted(load_sharded(ckpt)) == ["v"]


@pytest.mark.parametrize("size,offsets,lengths", [
    ((), (), ()),
    ((7,), (2,), (3,)),
    ((6, 10), (0, 5), (6, 5)),        # column shard: one run per row
    ((6, 10), (2, 0), (3, 10)),       # row shard: one run
    ((4, 6, 8), (1, 2, 0), (2, 3, 8)),
    ((4, 6, 8), (0, 1, 3), (4, 4, 2)),
    ((5, 4), (1, 0), (0, 4)),         # empty box
])
def test_runs_are_the_box_in_row_major_order(size, offsets, lengths):
    """_runs (vectorized) against the box enumerated element by element:
    run k of the box's contiguous copy starts at starts[k] of the tensor."""
    from torch_safetensors.distributed import _runs
    full = torch.arange(max(1, int(torch.tensor(size).prod())) if size
                        else 1).reshape(size)
    box = full[tuple(slice(o, o + n) for o, n in zip(offsets, lengths))]
    run, starts = _runs(size, offsets, lengths)
    assert starts.dtype == torch.int64
    flat = box.contiguous().reshape(-1)
    assert run * starts.numel() == flat.numel()
    got = [full.reshape(-1)[s:s + run] for s in starts.tolist()]
    want = [flat[k * run:(k + 1) * run] for k in range(starts.numel())]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_pwrite_runs_writes_each_run_at_its_offset(tmp_path):
    src = torch.arange(12, dtype=torch.uint8)       # 4 runs of 3 bytes
    at = torch.tensor([20, 23, 0, 40], dtype=torch.int64)  # 20, 23 merge
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _C.pwrite_runs(fd, src.data_ptr(), 3, at.numpy().tobytes())
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert len(data) == 43
    assert data[20:26] == bytes(range(6))
    assert data[0:3] == bytes([6, 7, 8]) and data[40:43] == bytes([9, 10, 11])
    with pytest.raises(OSError) as e:
        _C.pwrite_runs(-1, src.data_ptr(), 3, at.numpy().tobytes())
    assert e.value.errno == 9  # EBADF
    with pytest.raises(ValueError):
        _C.pwrite_runs(0, src.data_ptr(), 3, b"1234567")  # not whole int64s
