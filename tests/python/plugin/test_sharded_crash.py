"""save_sharded killed at every phase: a child process saves a new
checkpoint over an old one and stops itself at phase N (the
TORCH_SAFETENSORS_TEST_STOP_AT hook), the parent SIGKILLs it there, and the
directory must then load as exactly the old or exactly the new checkpoint:
through our load_sharded, and the way transformers reads a checkpoint with
the reference package (model.safetensors if present, else the index)."""

from __future__ import annotations

import os

import pytest
import torch

from torch_safetensors.sharded import load_sharded, save_sharded

from _ahelpers import rand, stopped_at_phase, transformers_style



def _state(tag, n, size=256):
    return {f"{tag}.{k}.weight": rand(torch.float32, (size,), seed=k + 100 * len(tag))
            for k in range(n)}  # 1024 bytes each


def _same(a, b):
    """Same names, and the same bytes under each (the values hold NaNs)."""
    return set(a) == set(b) and all(
        torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)


def _ours(directory):
    try:
        return load_sharded(directory)
    except FileNotFoundError:
        return None


# (old state, its shard limit, new state, its shard limit); limit None: no
# old checkpoint. 1024-byte tensors, so a limit of 2048 puts two per shard.
CASES = {
    "sharded_to_sharded": (_state("a", 6), 2048, _state("b", 8), 2048),
    "single_to_sharded": (_state("a", 3), 10**9, _state("b", 6), 2048),
    "sharded_to_single": (_state("a", 6), 2048, _state("b", 3), 10**9),
    "nothing_to_sharded": (None, None, _state("b", 6), 2048),
    "same_names_resaved": (_state("a", 6), 2048, _state("a", 6, size=128), 1024),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_at_every_phase_loads_old_or_new(tmp_path, ref, case):
    old, old_limit, new, new_limit = CASES[case]
    stop = 1
    outcomes = []
    while True:
        directory = tmp_path / f"phase{stop}"
        if old is not None:
            save_sharded(old, directory, max_shard_size=old_limit)
        else:
            directory.mkdir()
        stopped = stopped_at_phase(
            lambda: save_sharded(new, directory, max_shard_size=new_limit), stop)
        for loaded in (_ours(directory), transformers_style(directory, ref)):
            if loaded is None:
                assert old is None, f"phase {stop}: nothing loads"
                outcomes.append("old")
            elif old is not None and _same(loaded, old):
                outcomes.append("old")
            else:
                assert _same(loaded, new), f"phase {stop}: a mix of old and new"
                outcomes.append("new")
        if not stopped:
            break
        stop += 1
        assert stop < 50, "save_sharded never finished"
    assert stop > 2  # the save has several phases, and each was killed
    assert outcomes[-2:] == ["new", "new"]  # the finished save is the new one
    # a finished save leaves only the new checkpoint's files
    names = sorted(os.listdir(tmp_path / f"phase{stop}"))
    assert all(n.startswith("model") for n in names), names
    assert not any(n.endswith(".tmp") for n in names), names


def test_orphaned_shards_without_index_are_not_a_checkpoint(tmp_path):
    """A directory with only the shards of an interrupted first save (no
    index) has no checkpoint: nothing is loaded from the orphans."""
    save_sharded(_state("b", 6), tmp_path, max_shard_size=2048)
    os.remove(tmp_path / "model.safetensors.index.json")
    with pytest.raises(FileNotFoundError):
        load_sharded(tmp_path)


def test_resave_uses_fresh_names_when_the_old_ones_are_in_use(tmp_path):
    save_sharded(_state("a", 6), tmp_path, max_shard_size=2048)
    first = sorted(os.listdir(tmp_path))
    save_sharded(_state("b", 6), tmp_path, max_shard_size=2048)
    second = sorted(os.listdir(tmp_path))
    assert not set(first) & set(second) - {"model.safetensors.index.json"}
    assert _same(load_sharded(tmp_path), _state("b", 6))
    # the next save can take the plain names again
    save_sharded(_state("a", 6), tmp_path, max_shard_size=2048)
    assert sorted(os.listdir(tmp_path)) == first
