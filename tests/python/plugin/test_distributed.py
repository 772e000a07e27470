"""torch.distributed.checkpoint with SafetensorsStorageWriter/Reader in real
multi-process worlds (gloo on the CPU, no mocks).

Each world is started once per module (spawning processes that import torch
costs seconds) and runs every check of its scenario in
dcp_world_child.py; each test here asserts one check's result on every
rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import dcp_world_child as child

_HERE = os.path.dirname(os.path.abspath(__file__))
_TIMEOUT = 240


def run_world(scenario: str, world: int, work) -> dict:
    """Runs scenario with world ranks; {check: [result per rank]}."""
    work = str(work)
    store = os.path.join(work, "store")
    out = os.path.join(work, "result")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(_HERE, "dcp_world_child.py"), scenario,
         str(r), str(world), store, work, out],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=_TIMEOUT)[0].decode(
                "utf-8", "replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{logs[r]}"
    results: dict = {}
    for r in range(world):
        with open(f"{out}.{r}", encoding="utf-8") as fh:
            for name, res in json.load(fh).items():
                results.setdefault(name, []).append(res)
    return results


def assert_check(results: dict, name: str) -> None:
    per_rank = results.get(name)
    assert per_rank is not None, f"check {name} did not run"
    bad = [f"rank {r}:\n{res}" for r, res in enumerate(per_rank) if res != "ok"]
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return run_world("w2", 2, tmp_path_factory.mktemp("w2"))


@pytest.mark.parametrize("check", [n for n, _ in child.CHECKS["w2"]])
def test_world2(world2, check):
    assert_check(world2, check)


@pytest.fixture(scope="module")
def world4(tmp_path_factory):
    return run_world("w4", 4, tmp_path_factory.mktemp("w4"))


@pytest.mark.parametrize("check", [n for n, _ in child.CHECKS["w4"]])
def test_world4(world4, check):
    assert_check(world4, check)
