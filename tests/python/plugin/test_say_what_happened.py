"""Issue 14, "Say what happened": what a user sees when something is not right.

Every test does what the user does: real files of each kind (a zip written by torch.save, a
legacy pickle, a JSON index, text, an empty file), the real CLIs in subprocesses (the C command
``safetensors`` from ST_CLI and ``python -m torch_safetensors``), the real torch.save/torch.load
hook, and the reference safetensors 0.8.0 for the words it uses.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

import torch_safetensors
import torch_safetensors.torch as st
from torch_safetensors import _hook
from torch_safetensors.errors import SafetensorError

C_CLI = os.environ.get("ST_CLI") or os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "build", "safetensors")


def _py(*args, **kw):
    return subprocess.run([sys.executable, "-m", "torch_safetensors", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kw)


def _c(*args):
    assert os.path.exists(C_CLI), f"the C command is not built: {C_CLI}"
    return subprocess.run([C_CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------------------------
# files of every kind
# --------------------------------------------------------------------------------------------

KINDS = {
    "zip": "not a safetensors file: a zip archive (torch.save?)",
    "pickle": "not a safetensors file: a pickle",
    "index": "not a safetensors file: JSON text (an index?)",
    "text": "not a safetensors file: text",
    "empty": "not a safetensors file: an empty file",
}


def _make(kind: str, path) -> str:
    path = str(path)
    if kind == "zip":
        torch.save({"w": torch.ones(3)}, path)
    elif kind == "pickle":
        torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    elif kind == "index":
        with open(path, "w") as fh:
            json.dump({"metadata": {"total_size": 12},
                       "weight_map": {"w": "model-00001-of-00001.safetensors"}}, fh, indent=2)
    elif kind == "text":
        with open(path, "w") as fh:
            fh.write("This is a README, not a model.\n")
    elif kind == "empty":
        open(path, "wb").close()
    return path


@pytest.fixture(params=sorted(KINDS))
def not_st(request, tmp_path):
    kind = request.param
    return kind, _make(kind, tmp_path / f"{kind}.safetensors")


def test_plain_pickle_really_is_a_pickle(tmp_path):
    # the fixture's legacy pickle is what pickle itself reads (the first bytes are a pickle's)
    p = _make("pickle", tmp_path / "p.bin")
    with open(p, "rb") as fh:
        assert pickle.load(fh) == 119547037146038801333356  # torch's legacy magic number


# --------------------------------------------------------------------------------------------
# not a safetensors file: every entry point names what it is
# --------------------------------------------------------------------------------------------

def test_load_file_names_the_kind(not_st):
    kind, path = not_st
    with pytest.raises(SafetensorError) as ei:
        st.load_file(path)
    assert KINDS[kind] in str(ei.value)
    assert "over the limit" not in str(ei.value)


def test_safe_open_names_the_kind(not_st):
    kind, path = not_st
    with pytest.raises(SafetensorError) as ei:
        st.safe_open(path, "pt")
    assert KINDS[kind] in str(ei.value)


def test_torch_load_of_a_safetensors_path_names_the_kind(not_st):
    kind, path = not_st
    with pytest.raises(SafetensorError) as ei:
        torch.load(path)
    assert KINDS[kind] in str(ei.value)


def test_python_inspect_names_the_kind(not_st):
    kind, path = not_st
    res = _py("inspect", path)
    assert res.returncode == 1, res.stderr
    assert KINDS[kind] in res.stderr
    assert "Traceback" not in res.stderr


def test_c_cli_names_the_kind(not_st):
    kind, path = not_st
    for verb in ("inspect", "verify"):
        res = _c(verb, path)
        assert res.returncode == 1, (verb, res.stdout, res.stderr)
        assert KINDS[kind] in res.stdout + res.stderr, verb


def test_a_json_index_read_as_a_file_names_the_kind(tmp_path):
    p = _make("index", tmp_path / "model.safetensors.index.json")
    with pytest.raises(SafetensorError, match=re.escape(KINDS["index"])):
        st.load_file(p)


def test_hook_dispatch_and_c_sniffing_agree(tmp_path):
    """torch.load's dispatch (the hook's bytes rule) sends every kind the C library names as
    "not a safetensors file" to torch, and takes every real safetensors file, whatever its
    name: the two rules never disagree on these files."""
    for kind in KINDS:
        p = _make(kind, tmp_path / f"{kind}.bin")
        assert not _hook._sniff(p), kind
        with pytest.raises(SafetensorError, match="not a safetensors file"):
            st.load_file(p)
    p = tmp_path / "real.bin"
    torch.save({"w": torch.ones(2)}, p, format="safetensors")
    assert _hook._sniff(str(p))
    assert torch.equal(torch.load(p)["w"], torch.ones(2))
    # and torch's own pickle files keep loading through torch
    z = _make("zip", tmp_path / "z.pt")
    assert torch.equal(torch.load(z)["w"], torch.ones(3))


# --------------------------------------------------------------------------------------------
# a failed save names the file, not a tensor
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["missing_dir", "directory"])
def test_failed_save_names_the_path_not_a_tensor(tmp_path, where):
    target = tmp_path / "no" / "such" / "x.safetensors" if where == "missing_dir" else tmp_path
    for save in (lambda: st.save_file({"a": torch.ones(2)}, str(target)),
                 lambda: torch.save({"a": torch.ones(2)}, str(target), format="safetensors")):
        with pytest.raises(OSError) as ei:
            save()
        e = ei.value
        assert e.tensor_name is None, e.tensor_name
        assert e.filename == str(target)
        assert "tensor '" not in str(e) and "tensor_name" not in str(e)


# --------------------------------------------------------------------------------------------
# convert: the refusal keeps torch's explanation; --trust-pickle converts
# --------------------------------------------------------------------------------------------

def _unsafe_checkpoint(tmp_path):
    src = tmp_path / "needs_unpickle.pt"
    # pickled by a child so the class lives in a module the CLI process can import
    mod = tmp_path / "unsafe_mod.py"
    mod.write_text("import torch\nclass Unsafe:\n    def __init__(self):\n"
                   "        self.w = torch.arange(4.0)\n")
    code = ("import torch, unsafe_mod; "
            f"torch.save({{'w': torch.ones(2), 'obj': unsafe_mod.Unsafe()}}, {str(src)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=300)
    return src


def test_convert_refusal_keeps_torchs_whole_explanation(tmp_path):
    src = _unsafe_checkpoint(tmp_path)
    res = _py("convert", src, tmp_path / "out.safetensors", "--no-progress", cwd=tmp_path)
    assert res.returncode == 2
    assert "unsafe_mod.Unsafe" in res.stderr  # the unsupported global, named
    assert "Unsupported global" in res.stderr
    assert "--trust-pickle" in res.stderr
    assert "\x1b" not in res.stderr  # no terminal escape codes
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_trust_pickle_does_a_full_unpickle(tmp_path):
    src = _unsafe_checkpoint(tmp_path)
    dst = tmp_path / "out.safetensors"
    # the nested object is not a tensor tree torch.save(format="safetensors") stores, so a
    # trusted file whose objects are plain converts; this one shows the warning and torch's
    # full unpickle ran (the error is about the object, not about unpickling)
    res = _py("convert", src, dst, "--no-progress", "--trust-pickle", cwd=tmp_path)
    assert "warning:" in res.stderr and "weights_only=False" in res.stderr
    assert "Unsupported global" not in res.stderr
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "unsafe_mod.Unsafe" in res.stderr and "need pickle" in res.stderr
    assert not dst.exists()
    plain = tmp_path / "plain_with_global.pt"
    code = ("import torch, collections; torch.save({'w': torch.ones(2), "
            "'od': collections.OrderedDict(a=torch.zeros(3)), 'f': torch.float16}, "
            f"{str(plain)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    res = _py("convert", plain, dst, "--no-progress", "--trust-pickle")
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr
    back = st.load_file(dst)
    assert torch.equal(back["w"], torch.ones(2))


def test_trust_pickle_is_documented_in_help():
    res = _py("convert", "--help")
    assert res.returncode == 0
    assert "--trust-pickle" in res.stdout and "weights_only=False" in res.stdout


# --------------------------------------------------------------------------------------------
# CLIs: indexes, exit codes, closed pipes, help, progress
# --------------------------------------------------------------------------------------------

@pytest.fixture
def sharded(tmp_path):
    from torch_safetensors.sharded import save_sharded

    d = tmp_path / "ckpt"
    save_sharded({f"w{i}": torch.full((64,), float(i)) for i in range(6)}, str(d),
                 max_shard_size=600)
    index = d / "model.safetensors.index.json"
    assert index.exists() and len(list(d.glob("*.safetensors"))) > 1
    return index


def test_verify_and_inspect_accept_an_index_in_both_tools(sharded):
    for tool in (_c, _py):
        for verb in ("verify", "inspect"):
            res = tool(verb, sharded)
            assert res.returncode == 0, (tool, verb, res.stdout, res.stderr)
    res = _c("verify", sharded)
    assert f"OK {sharded}" in res.stdout
    res = _py("verify", "--no-progress", sharded)
    assert f"OK {sharded}" in res.stdout


def _exit_cases(tmp_path, sharded):
    good = tmp_path / "good.safetensors"
    st.save_file({"a": torch.ones(3)}, str(good))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:-2])
    bad_index = tmp_path / "ckpt" / "bad.index.json"
    wm = json.loads(sharded.read_text())
    wm["weight_map"]["not_there"] = next(iter(wm["weight_map"].values()))
    bad_index.write_text(json.dumps(wm))
    return {
        "valid file": ([good], 0),
        "valid index": ([sharded], 0),
        "truncated file": ([corrupt], 1),
        "zip from torch.save": ([_make("zip", tmp_path / "z.safetensors")], 1),
        "index entry missing from its shard": ([bad_index], 1),
        "missing file": ([tmp_path / "missing.safetensors"], 2),
        "missing index": ([tmp_path / "missing.index.json"], 2),
        "valid and missing": ([good, tmp_path / "missing.safetensors"], 2),
        "valid and invalid": ([good, corrupt], 1),
    }


def test_exit_codes_agree_between_the_c_and_python_tools(tmp_path, sharded):
    for name, (files, want) in _exit_cases(tmp_path, sharded).items():
        c = _c("verify", *files)
        py = _py("verify", "--no-progress", *files)
        assert (c.returncode, py.returncode) == (want, want), (name, c.stderr, py.stderr)
        assert "Traceback" not in py.stderr
        if len(files) == 1:
            c = _c("inspect", *files)
            py = _py("inspect", *files)
            assert (c.returncode, py.returncode) == (want, want), (name, c.stderr, py.stderr)
    # usage errors are 2 in both
    assert _c("verify").returncode == 2
    assert _py("verify").returncode == 2
    assert _c("inspect", "--bogus", "x").returncode == 2
    assert _py("inspect", "--bogus", "x").returncode == 2


def test_output_to_a_closed_pipe_ends_quietly(tmp_path, sharded):
    many = [tmp_path / f"f{i}.safetensors" for i in range(60)]
    for p in many:
        st.save_file({f"t{j}": torch.ones(2) for j in range(20)}, str(p))
    py = f"{sys.executable} -m torch_safetensors"
    cmds = [f"{py} verify --no-progress {' '.join(map(str, many))}",
            f"{py} inspect --all {many[0]}",
            f"{py} inspect {sharded}",
            f"{C_CLI} verify {' '.join(map(str, many))}",
            f"{C_CLI} inspect {many[0]}",
            f"{C_CLI} inspect --tensors {sharded}"]
    for cmd in cmds:
        res = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -1"],
                             capture_output=True, text=True, timeout=300)
        assert res.stdout.count("\n") == 1, (cmd, res.stdout)
        assert res.stderr == "", (cmd, res.stderr)
        # the same with SIGPIPE ignored, as under some shells and CI runners
        res = subprocess.run(["bash", "-c", f"trap '' PIPE; {cmd} | head -1"],
                             capture_output=True, text=True, timeout=300)
        assert res.stderr == "", (cmd, res.stderr)


def test_help_examples_render_as_separate_lines():
    for args in (["--help"], ["convert", "--help"], ["verify", "--help"]):
        res = _py(*args)
        assert res.returncode == 0
        lines = res.stdout.splitlines()
        ex = [ln.strip() for ln in lines if ln.strip().startswith("python -m torch_safetensors ")]
        assert len(ex) >= 5, (args, res.stdout)
        assert all(ln.count("python -m torch_safetensors") == 1 for ln in ex)


def _last_bar_state(stderr: str) -> tuple[int, int]:
    states = re.findall(r"(\d+)/(\d+) \[", stderr)
    assert states, stderr
    return tuple(map(int, states[-1]))


def test_verify_of_many_files_shows_progress_reaching_100_percent(tmp_path):
    files = [tmp_path / f"f{i}.safetensors" for i in range(7)]
    for p in files:
        st.save_file({"t": torch.ones(3)}, str(p))
    res = _py("verify", "--progress", *files)
    assert res.returncode == 0, res.stderr
    assert _last_bar_state(res.stderr) == (7, 7)
    assert "100%" in res.stderr


def test_convert_progress_reaches_100_percent(tmp_path):
    src = tmp_path / "pytorch_model.bin"
    torch.save({f"w{i}": torch.ones(1000) for i in range(5)}, src)
    res = _py("convert", "--progress", src, tmp_path / "m.safetensors")
    assert res.returncode == 0, res.stderr
    assert "100%" in res.stderr
    done, total = re.findall(r"100%\|[^|]*\| ([\d.]+)k?/([\d.]+)k? ", res.stderr)[-1]
    assert done == total


def test_no_tqdm_means_no_bar_and_the_same_result(tmp_path):
    files = [tmp_path / f"f{i}.safetensors" for i in range(3)]
    for p in files:
        st.save_file({"t": torch.ones(3)}, str(p))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "tqdm.py").write_text("raise ImportError('tqdm is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    res = _py("verify", "--progress", *files, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert res.stdout.count("OK ") == 3


# --------------------------------------------------------------------------------------------
# the hook shows torch's real signatures
# --------------------------------------------------------------------------------------------

def test_signatures_of_hooked_torch_load_and_save():
    assert _hook.is_installed()
    torch_safetensors.uninstall()
    try:
        real_load = inspect.signature(torch.load)
        real_save = inspect.signature(torch.save)
    finally:
        torch_safetensors.install()
    assert inspect.signature(torch.load) == real_load
    assert "weights_only" in inspect.signature(torch.load).parameters
    sig = inspect.signature(torch.save)
    for name, p in real_save.parameters.items():
        assert sig.parameters[name] == p
    for name in ("format", "metadata", "strict", "policy"):
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(torch.serialization.load) == inspect.signature(
        torch.load.__wrapped__)


# --------------------------------------------------------------------------------------------
# safe_open(device=...) with no such accelerator: the reference's words
# --------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_device_in_the_references_words(tmp_path, ref):
    import safetensors

    p = str(tmp_path / "a.safetensors")
    st.save_file({"a": torch.ones(2)}, p)

    def outcome(fn):
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - comparing what each raises
            return type(e), str(e)
        return None

    for dev in ("cuda:0", "cuda"):
        want = outcome(lambda: safetensors.safe_open(p, "pt", device=dev).get_tensor("a"))
        assert want is not None and want[0] is RuntimeError
        assert outcome(lambda: st.safe_open(p, "pt", device=dev).get_tensor("a")) == want
        assert outcome(lambda: ref.load_file(p, device=dev)) == want
        assert outcome(lambda: st.load_file(p, device=dev)) == want


# --------------------------------------------------------------------------------------------
# nested structure: flat without this package, and how another reader gets it back (README)
# --------------------------------------------------------------------------------------------

def test_nested_structure_is_flat_elsewhere_and_the_record_gives_it_back(tmp_path, ref):
    import safetensors

    model = torch.nn.Linear(2, 2)
    ckpt = {"model": model.state_dict(), "epoch": 3}
    p = str(tmp_path / "ckpt.safetensors")
    torch.save(ckpt, p, format="safetensors")
    # the reference sees flat tensors under dotted names
    assert sorted(ref.load_file(p)) == ["model.bias", "model.weight"]
    # so does torch's own loader (its .safetensors branch calls the reference)
    torch_safetensors.uninstall()
    try:
        flat_torch = torch.load(p)
    finally:
        torch_safetensors.install()
    assert sorted(flat_torch) == ["model.bias", "model.weight"]
    # the README's recipe: the record's key and format give the structure back
    with safetensors.safe_open(p, "pt") as f:
        record = json.loads(f.metadata()["torch_safetensors.structure"])
        flat = {k: f.get_tensor(k) for k in f.keys()}
    assert record["version"] == 1
    root = dict(record["root"]["items"])
    assert root["epoch"] == 3
    weight = dict(root["model"]["items"])["weight"]
    assert weight == {"t": "tensor", "name": "model.weight"}
    assert torch.equal(flat[weight["name"]], model.weight.detach())
