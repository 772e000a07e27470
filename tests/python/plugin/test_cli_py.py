"""`python -m torch_safetensors convert|inspect`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import torch_safetensors  # noqa: F401
from torch_safetensors import _cli
from torch_safetensors.torch import load_file, safe_open
from _bhelpers import assert_same, assert_tree_equal


def _run(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "torch_safetensors", *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def _state_dict(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return {f"layer.{i}.weight": torch.randn(16, 8, generator=g) for i in range(n)}


def test_convert_single_file_subprocess_with_progress(tmp_path):
    sd = _state_dict()
    sd["tied"] = sd["layer.0.weight"]
    src, dst = tmp_path / "pytorch_model.bin", tmp_path / "model.safetensors"
    torch.save(sd, src)
    res = _run("convert", src, dst, "--progress", "--metadata", "source=test")
    assert res.stdout.strip() == str(dst)
    assert "B/s" in res.stderr or "it/s" in res.stderr or "%" in res.stderr  # tqdm's bar
    back = torch.load(dst)
    assert_tree_equal(sd, back)
    assert back["tied"].data_ptr() == back["layer.0.weight"].data_ptr()
    ref = load_file(dst)
    for k in ref:
        assert_same(sd[k], ref[k])
    import safetensors

    with safetensors.safe_open(str(dst), "pt") as f:
        assert f.metadata()["source"] == "test"
        assert f.metadata()["format"] == "pt"


def test_convert_nested_checkpoint_keeps_structure(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}
    src, dst = tmp_path / "ckpt.pt", tmp_path / "ckpt.safetensors"
    torch.save(ckpt, src)
    assert _cli.main(["convert", str(src), str(dst), "--no-progress"]) == 0
    assert_tree_equal(ckpt, torch.load(dst))


def test_convert_legacy_non_zip_pickle(tmp_path):
    sd = _state_dict(1, 2)
    src, dst = tmp_path / "old.pt", tmp_path / "old.safetensors"
    torch.save(sd, src, _use_new_zipfile_serialization=False)
    assert _cli.main(["convert", str(src), str(dst), "--no-progress"]) == 0
    assert_tree_equal(sd, torch.load(dst))


def _sharded_pickle(tmp_path, n_shards=3):
    sd = _state_dict(2, 9)
    names = list(sd)
    weight_map = {}
    for s in range(n_shards):
        fname = f"pytorch_model-{s + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: sd[k] for k in names[s::n_shards]}
        torch.save(part, tmp_path / fname)
        weight_map.update({k: fname for k in part})
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return sd


def test_convert_sharded_input_to_one_file(tmp_path):
    sd = _sharded_pickle(tmp_path)
    dst = tmp_path / "out.safetensors"
    assert _cli.main(["convert", str(tmp_path / "pytorch_model.bin.index.json"), str(dst),
                      "--no-progress"]) == 0
    back = load_file(dst)
    assert set(back) == set(sd)
    for k in sd:
        assert_same(sd[k], back[k])
    # the directory form finds the index too
    dst2 = tmp_path / "out2.safetensors"
    assert _cli.main(["convert", str(tmp_path), str(dst2), "--no-progress"]) == 0
    assert set(load_file(dst2)) == set(sd)


def test_convert_sharded_output(tmp_path):
    sd = _sharded_pickle(tmp_path)
    sd_src = tmp_path / "one.bin"
    torch.save(sd, sd_src)
    out = tmp_path / "hf"
    assert _cli.main(["convert", str(tmp_path), str(out), "--max-shard-size", "600",
                      "--no-progress"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) == len(sd)  # 512-byte tensors, two never fit in 600 bytes
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in sd.values())
    from torch_safetensors.sharded import load_sharded

    back = dict(load_sharded(out))
    assert set(back) == set(sd)
    for k in sd:
        assert_same(sd[k], back[k])
    # a single pickle file into shards; tied names are stored once, as Hugging Face does,
    # and load_sharded gives them back sharing storage (docs/RECORD.md, "Shared memory")
    sd2 = dict(sd)
    sd2["alias"] = sd["layer.0.weight"]
    torch.save(sd2, sd_src)
    out2 = tmp_path / "hf2"
    assert _cli.main(["convert", str(sd_src), str(out2), "--max-shard-size", "5GB",
                      "--no-progress"]) == 0
    with safe_open(out2 / "model.safetensors", framework="pt") as f:
        assert set(f.keys()) == set(sd)
    back = dict(load_sharded(out2))
    assert set(back) == set(sd2)
    assert back["alias"].data_ptr() == back["layer.0.weight"].data_ptr()


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EVIL_MARKER', '/nonexistent/x')}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_convert_refuses_pickles_needing_full_unpickle(tmp_path, monkeypatch, capsys):
    import pickle

    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    src = tmp_path / "evil.pt"
    with open(src, "wb") as fh:
        pickle.dump({"w": torch.ones(1), "x": Evil()}, fh)
    torch.save({"w": torch.ones(1), "x": Evil()}, tmp_path / "evil_zip.pt")
    for s in (src, tmp_path / "evil_zip.pt"):
        dst = tmp_path / "evil.safetensors"
        assert _cli.main(["convert", str(s), str(dst), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "cannot be loaded with torch.load(weights_only=True)" in err
        assert "would need a full unpickle" in err
        assert not dst.exists()
    assert not marker.exists()


def test_convert_errors(tmp_path, capsys):
    assert _cli.main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert _cli.main(["convert", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "no pytorch_model.bin.index.json or pytorch_model.bin" in capsys.readouterr().err
    st = tmp_path / "a.safetensors"
    torch.save({"a": torch.ones(1)}, st, format="safetensors")
    assert _cli.main(["convert", str(st), str(tmp_path / "b.safetensors")]) == 2
    assert "already a safetensors file" in capsys.readouterr().err
    nested = tmp_path / "n.pt"
    torch.save({"m": {"a": torch.ones(1)}}, nested)
    assert _cli.main(["convert", str(nested), str(tmp_path / "d"), "--max-shard-size",
                      "1MB"]) == 2
    assert "need a flat state_dict" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli.main(["convert", str(nested), str(tmp_path / "d"), "--max-shard-size", "lots"])
    assert "bad size 'lots'" in capsys.readouterr().err
    cplx = tmp_path / "c.pt"
    torch.save({"c": torch.ones(2, dtype=torch.complex128)}, cplx)
    assert _cli.main(["convert", str(cplx), str(tmp_path / "c.safetensors")]) == 1
    assert "complex128" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()


def test_parse_size():
    assert _cli.parse_size("5GB") == 5 * 10**9
    assert _cli.parse_size("100MiB") == 100 * 2**20
    assert _cli.parse_size("123") == 123
    with pytest.raises(_cli.CliError):
        _cli.parse_size("0")


def test_inspect(tmp_path, capsys):
    p = tmp_path / "i.safetensors"
    obj = {"model": {"w": torch.ones(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)},
           "step": 4}
    torch.save(obj, p, format="safetensors", metadata={"note": "hi"})
    res = _run("inspect", p)
    assert "tensors:  2" in res.stdout
    assert "model.w" in res.stdout and "F32" in res.stdout and "[2, 3]" in res.stdout
    assert "metadata: note = hi" in res.stdout
    assert "torch.save structure: {'model': {'w': tensor 'model.w'" in res.stdout
    assert _cli.main(["inspect", str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tensor_count"] == 2 and info["file_size"] == os.path.getsize(p)
    assert info["dtypes"] == {"BF16": 1, "F32": 1}
    assert info["metadata"] == {"format": "pt", "note": "hi"}
    by_name = {t["name"]: t for t in info["tensors"]}
    assert by_name["model.b"]["shape"] == [3]
    assert info["data_bytes"] == 2 * 3 * 4 + 3 * 2


def test_inspect_corrupt_file(tmp_path):
    p = tmp_path / "bad.safetensors"
    torch.save({"a": torch.ones(4)}, p, format="safetensors")
    p.write_bytes(p.read_bytes()[:-1])
    res = _run("inspect", p, check=False)
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and "ST_ERR_INCOMPLETE_BUFFER" in res.stderr
