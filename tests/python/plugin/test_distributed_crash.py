"""A DCP save with SafetensorsStorageWriter killed (SIGKILL) at every phase:
a forked child runs torch.distributed.checkpoint.save over an old
checkpoint and stops itself at phase N (the TORCH_SAFETENSORS_TEST_STOP_AT
hook: after the coordinator created the files, after the ranks' writes and
fsyncs, after each rename, the state file, the index, each removal); the
parent SIGKILLs it there. The directory must then load as exactly the old
or exactly the new checkpoint, tensors and non-tensor state alike, through
our reader and the way transformers reads a checkpoint with the reference
package (model.safetensors if present, else the index). The child runs DCP
without a process group (no_dist) so that a fork is enough: the phases are
the coordinator's, and a rank's writes are the same code."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from torch_safetensors.distributed import (
    SafetensorsStorageReader,
    SafetensorsStorageWriter,
)
from torch_safetensors.torch import save_file

from _ahelpers import rand, stopped_at_phase, transformers_style

pytestmark = pytest.mark.filterwarnings(
    "ignore:torch.distributed is disabled:UserWarning")



def _state(tag, n, step=None, size=256):
    sd = {f"{tag}.{k}.weight": rand(torch.float32, (size,), seed=k + 100 * len(tag))
          for k in range(n)}  # 1024 bytes each
    if step is not None:
        sd["trainer"] = {"step": step, "tag": tag}
    return sd


def _flat(sd):
    out = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _same(a, b):
    """Same names; the same bytes (tensors, which hold NaNs) or values."""
    a, b = _flat(a), _flat(b)
    if set(a) != set(b):
        return False
    for k in a:
        if isinstance(a[k], torch.Tensor):
            if not isinstance(b[k], torch.Tensor) or not torch.equal(
                    a[k].view(torch.uint8), b[k].view(torch.uint8)):
                return False
        elif a[k] != b[k]:
            return False
    return True


def _ours(directory):
    """Everything the checkpoint holds, through dcp.load and our reader, or
    None when the directory holds no checkpoint."""
    reader = SafetensorsStorageReader(directory)
    try:
        reader.reset()
        md = reader.read_metadata()
    except FileNotFoundError:
        return None
    sd = {}
    for k, m in md.state_dict_metadata.items():
        if isinstance(m, TensorStorageMetadata):
            sd[k] = torch.empty(m.size, dtype=m.properties.dtype)
        else:
            sd[k] = None
    dcp.load(sd, storage_reader=SafetensorsStorageReader(directory),
             no_dist=True)
    return sd


def _tensors(sd):
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _save(state, directory, limit):
    dcp.save(state, storage_writer=SafetensorsStorageWriter(
        directory, max_shard_size=limit), no_dist=True)


# (old state, how it is saved: a shard limit for DCP, "single" for a plain
# model.safetensors as save_pretrained writes, None for no checkpoint; new
# state and its limit). 1024-byte tensors: a limit of 2048 puts two per shard.
CASES = {
    "dcp_to_dcp": (_state("a", 6, step=1), 2048, _state("b", 8, step=2), 2048),
    "single_to_dcp": (_state("a", 3), "single", _state("b", 6, step=3), 2048),
    "nothing_to_dcp": (None, None, _state("b", 6, step=4), 2048),
    "same_names_resaved": (_state("a", 6, step=5), 2048,
                           _state("a", 6, step=6, size=128), 1024),
    "state_to_no_state": (_state("a", 4, step=7), 2048, _state("b", 3), 10**9),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_at_every_phase_loads_old_or_new(tmp_path, ref, case):
    old, how, new, new_limit = CASES[case]
    stop = 1
    outcomes = []
    while True:
        directory = str(tmp_path / f"phase{stop}")
        os.makedirs(directory)
        if how == "single":
            save_file(old, os.path.join(directory, "model.safetensors"))
        elif how is not None:
            _save(old, directory, how)
        stopped = stopped_at_phase(
            lambda: _save(new, directory, new_limit), stop)
        ours = _ours(directory)
        theirs = transformers_style(directory, ref)
        for loaded, want_old, want_new in (
                (ours, old, new),
                (theirs, old and _tensors(old), _tensors(new))):
            if loaded is None:
                assert old is None, f"phase {stop}: nothing loads"
                outcomes.append("old")
            elif old is not None and _same(loaded, want_old):
                outcomes.append("old")
            else:
                assert _same(loaded, want_new), \
                    f"phase {stop}: a mix of old and new"
                outcomes.append("new")
        if not stopped:
            break
        stop += 1
        assert stop < 50, "the save never finished"
    assert stop > 5  # the save has many phases, and each was killed
    assert outcomes[-2:] == ["new", "new"]  # the finished save is the new one
    # a finished save leaves only the new checkpoint's files
    names = sorted(os.listdir(tmp_path / f"phase{stop}"))
    assert all(n.startswith("model") for n in names), names
    if new_limit == 10**9:
        assert len(names) == 2, names  # one shard and the index


def test_stale_temporaries_of_a_killed_save_are_removed(tmp_path):
    """A save killed after it created its temporary shards leaves hidden
    files; the next save from this host removes them (their pid is dead)."""
    directory = str(tmp_path)
    assert stopped_at_phase(lambda: _save(_state("a", 4), directory, 2048), 1)
    left = [n for n in os.listdir(directory) if n.endswith(".tmp")]
    assert len(left) == 2 and all(n.startswith(".") for n in left), left
    assert _ours(directory) is None
    _save(_state("b", 2, step=1), directory, 2048)
    assert not [n for n in os.listdir(directory) if n.endswith(".tmp")]
    assert _same(_ours(directory), _state("b", 2, step=1))
