"""Tests of the `safetensors` command (inspect, verify, help, version).

Files come from the reference package (safetensors==0.8.0) or are built byte
by byte here. Expected values are taken from the file's own header (parsed
with Python's json) and, for error reports, from the library itself through
ctypes, so the CLI is checked against independent oracles.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
CLI = os.environ.get("ST_CLI", str(ROOT / "build" / "safetensors"))
LIB = os.environ.get("ST_LIBRARY", str(ROOT / "build" / "libsafetensors.so"))

STATUS_RE = r"ST_ERR_[A-Z_]+"


def run(*args, check_rc=None):
    proc = subprocess.run([CLI, *map(str, args)], capture_output=True,
                          timeout=120)
    out = proc.stdout.decode("utf-8")
    err = proc.stderr.decode("utf-8")
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, out, err)
    return proc.returncode, out, err


@pytest.fixture(scope="module", autouse=True)
def _cli_exists():
    assert os.access(CLI, os.X_OK), f"CLI not built at {CLI} (set ST_CLI)"


# --- building files ---------------------------------------------------------

def raw_file(header: bytes | str, data: bytes = b"", n: int | None = None,
             pad: bool = True) -> bytes:
    """A file from raw header text; N defaults to the padded header length."""
    if isinstance(header, str):
        header = header.encode("utf-8")
    if pad:
        header = header + b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header) if n is None else n) + header + data


def st_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """A valid file from {name: (dtype, shape, bytes)}, in the given order."""
    hdr, data, off = {}, b"", 0
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for name, (dtype, shape, blob) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape,
                     "data_offsets": [off, off + len(blob)]}
        data += blob
        off += len(blob)
    return raw_file(json.dumps(hdr, separators=(",", ":")), data)


def header_of(path: Path) -> dict:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), n, len(blob) - 8 - n


def file_order(hdr: dict) -> list[str]:
    names = [k for k in hdr if k != "__metadata__"]
    return sorted(names, key=lambda k: (hdr[k]["data_offsets"], k.encode()))


def numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


@pytest.fixture
def ref_file(tmp_path: Path) -> Path:
    """A reference-written file with metadata, mixed dtypes, a scalar and a
    zero-size tensor."""
    tensors = {
        "model.embed.weight": torch.arange(24, dtype=torch.float32).reshape(4, 6),
        "model.layers.0.bias": torch.ones(6, dtype=torch.bfloat16),
        "model.layers.0.mask": torch.tensor([True, False, True]),
        "step": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros((0, 3), dtype=torch.float16),
        "ids": torch.arange(5, dtype=torch.int32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "hello"})
    return path


# --- the library as an oracle for error reports ------------------------------

class StError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("sys_errno", ctypes.c_int),
                ("message", ctypes.c_char_p), ("offset", ctypes.c_uint64),
                ("name_len", ctypes.c_size_t), ("name", ctypes.c_char * 128),
                ("reserved", ctypes.c_uint64 * 8)]


@pytest.fixture(scope="module")
def lib():
    if not os.path.exists(LIB):
        pytest.fail(f"no shared library at {LIB} (set ST_LIBRARY)")
    so = ctypes.CDLL(LIB)
    so.st_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p,
                           ctypes.POINTER(ctypes.c_void_p),
                           ctypes.POINTER(StError)]
    so.st_open.restype = ctypes.c_int
    so.st_close.argtypes = [ctypes.c_void_p]
    so.st_status_name.argtypes = [ctypes.c_int]
    so.st_status_name.restype = ctypes.c_char_p
    so.st_version_string.restype = ctypes.c_char_p
    return so


def library_verdict(lib, path: Path):
    handle, err = ctypes.c_void_p(), StError()
    status = lib.st_open(str(path).encode(), None, ctypes.byref(handle),
                         ctypes.byref(err))
    lib.st_close(handle)
    if status == 0:
        return None
    # err.name as a field stops at a NUL; read the raw bytes instead.
    name = ctypes.string_at(ctypes.addressof(err) + StError.name.offset,
                            min(err.name_len, 127))
    return (lib.st_status_name(status).decode(), err.offset,
            name.decode("utf-8", "replace"))


# --- help, version, usage errors -------------------------------------------

def test_version_matches_library(lib):
    _, out, _ = run("--version", check_rc=0)
    assert re.fullmatch(r"safetensors \d+\.\d+\.\d+\n", out)
    assert out.split()[1] == lib.st_version_string().decode()


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["help"]])
def test_top_level_help(args):
    _, out, err = run(*args, check_rc=0)
    assert "usage: safetensors" in out and "inspect" in out and "verify" in out
    assert err == ""


@pytest.mark.parametrize("args", [["inspect", "--help"], ["inspect", "-h"],
                                  ["help", "inspect"]])
def test_inspect_help(args):
    _, out, _ = run(*args, check_rc=0)
    assert out.startswith("usage: safetensors inspect")
    assert "--json" in out


@pytest.mark.parametrize("args", [["verify", "--help"], ["verify", "-h"],
                                  ["help", "verify"]])
def test_verify_help(args):
    _, out, _ = run(*args, check_rc=0)
    assert out.startswith("usage: safetensors verify")
    assert "Exit status" in out


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["--bogus"], ["help", "nope"],
    ["inspect"], ["inspect", "--bogus", "x.safetensors"],
    ["inspect", "a.safetensors", "b.safetensors"],
    ["verify"], ["verify", "--bogus", "x.safetensors"],
])
def test_usage_errors_exit_2(args):
    rc, out, err = run(*args)
    assert rc == 2
    assert out == ""
    assert "usage: safetensors" in err


# --- inspect -----------------------------------------------------------------

def test_inspect_text(ref_file: Path):
    hdr, n, data_size = header_of(ref_file)
    _, out, err = run("inspect", ref_file, check_rc=0)
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"file: {ref_file}"
    assert "metadata (2):" in lines
    assert "  format: pt" in lines and "  note: hello" in lines

    # The table lists every tensor in file order with dtype, shape and bytes.
    start = lines.index("tensors (6):") + 2
    rows = [ln.split() for ln in lines[start:start + 6]]
    order = file_order(hdr)
    assert [r[0] for r in rows] == order
    for row, name in zip(rows, order):
        e = hdr[name]
        shape = "[" + ", ".join(map(str, e["shape"])) + "]"
        assert row[1] == e["dtype"]
        assert " ".join(row[2:-1]) == shape
        assert int(row[-1]) == e["data_offsets"][1] - e["data_offsets"][0]

    params = sum(numel(hdr[k]["shape"]) for k in order)
    assert params == 24 + 6 + 3 + 1 + 0 + 5
    total = [ln for ln in lines if ln.startswith("totals:")]
    assert len(total) == 1
    assert (f"totals: 6 tensors, {params} parameters, {data_size} data bytes"
            in total[0])
    assert total[0].endswith(f", {n} header bytes")


def test_inspect_json(ref_file: Path):
    hdr, n, data_size = header_of(ref_file)
    _, out, _ = run("inspect", "--json", ref_file, check_rc=0)
    doc = json.loads(out)
    assert doc["file"] == str(ref_file)
    assert doc["header_bytes"] == n
    assert doc["data_bytes"] == data_size
    assert doc["file_bytes"] == ref_file.stat().st_size
    assert doc["metadata"] == {"format": "pt", "note": "hello"}
    order = file_order(hdr)
    assert [t["name"] for t in doc["tensors"]] == order
    for t in doc["tensors"]:
        e = hdr[t["name"]]
        assert t["dtype"] == e["dtype"]
        assert t["shape"] == e["shape"]
        assert t["data_offsets"] == e["data_offsets"]
        assert t["bytes"] == e["data_offsets"][1] - e["data_offsets"][0]
        assert t["numel"] == numel(e["shape"])
    assert doc["totals"] == {
        "tensors": 6, "parameters": sum(numel(hdr[k]["shape"]) for k in order),
        "data_bytes": data_size, "header_bytes": n}


def test_inspect_json_option_after_file(ref_file: Path):
    _, out, _ = run("inspect", ref_file, "--json", check_rc=0)
    assert json.loads(out)["totals"]["tensors"] == 6


def test_inspect_all_22_dtypes(tmp_path: Path):
    bits = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
            "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
            "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
            "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
            "U64": 64}
    tensors = {f"t_{d}": (d, [2, 4], bytes(8 * b // 8)) for d, b in bits.items()}
    path = tmp_path / "dtypes.safetensors"
    path.write_bytes(st_bytes(tensors))
    _, out, _ = run("inspect", "--json", path, check_rc=0)
    doc = json.loads(out)
    got = {t["name"]: (t["dtype"], t["bytes"]) for t in doc["tensors"]}
    assert got == {f"t_{d}": (d, 8 * b // 8) for d, b in bits.items()}
    assert doc["totals"]["parameters"] == 8 * 22


def test_inspect_empty_file(tmp_path: Path):
    path = tmp_path / "empty.safetensors"
    save_file({}, str(path))
    _, out, _ = run("inspect", path, check_rc=0)
    assert "tensors (0):" in out and "metadata: none" in out
    assert "totals: 0 tensors, 0 parameters, 0 data bytes" in out
    doc = json.loads(run("inspect", "--json", path, check_rc=0)[1])
    assert doc["tensors"] == [] and doc["metadata"] == {}


def test_inspect_invalid_file_exit_1(tmp_path: Path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw_file('{"a":{"dtype":"F32","shape":[2],'
                              '"data_offsets":[0,4]}}', b"\0" * 4))
    rc, out, err = run("inspect", path)
    assert rc == 1 and out == ""
    assert "ST_ERR_INVALID_TENSOR_INFO" in err


def test_inspect_missing_file_exit_2(tmp_path: Path):
    rc, out, err = run("inspect", tmp_path / "nope.safetensors")
    assert rc == 2 and out == ""
    assert "ST_ERR_IO" in err


def test_long_metadata_value_truncated_in_text_only(tmp_path: Path):
    path = tmp_path / "meta.safetensors"
    value = "é" * 5000
    save_file({"x": torch.zeros(1)}, str(path), metadata={"big": value})
    _, out, _ = run("inspect", path, check_rc=0)
    line = next(ln for ln in out.splitlines() if ln.startswith("  big: "))
    assert len(line) < 400 and line.endswith(f"... ({len(value.encode())} bytes)")
    doc = json.loads(run("inspect", "--json", path, check_rc=0)[1])
    assert doc["metadata"]["big"] == value


# --- hostile and Unicode names ---------------------------------------------

HOSTILE = {
    "a\nb": "a\\nb",
    "tab\there": "tab\\there",
    "\x1b[31mred": "\\x1b[31mred",
    "bell\x07": "bell\\x07",
    "back\\slash": "back\\\\slash",
    "bidi\u202etxt.exe": "bidi\\u{202e}txt.exe",
    "c1\u009bx": "c1\\u{009b}x",
    "ünïcödé/コード/😀": "ünïcödé/コード/😀",
    "": "",
}


@pytest.fixture
def hostile_file(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.safetensors"
    tensors = {name: torch.full((2,), float(i)) for i, name in enumerate(HOSTILE)}
    save_file(tensors, str(path), metadata={"k\x1bey": "v\nal\u202e"})
    return path


def test_text_output_escapes_names(hostile_file: Path):
    _, out, _ = run("inspect", hostile_file, check_rc=0)
    # No raw control character, C1 control or bidi override reaches the tty.
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f\u0080-\u009f\u202a-\u202e]",
                         out)
    lines = out.splitlines()
    start = lines.index(f"tensors ({len(HOSTILE)}):") + 2
    shown = [ln[2:].split("  ")[0].rstrip() for ln in lines[start:start + len(HOSTILE)]]
    for escaped in HOSTILE.values():
        if escaped:
            assert escaped in shown, escaped
    assert "  k\\x1bey: v\\nal\\u{202e}" in lines


def test_json_output_round_trips_names(hostile_file: Path):
    _, out, _ = run("inspect", "--json", hostile_file, check_rc=0)
    doc = json.loads(out)
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(HOSTILE)
    assert doc["metadata"] == {"k\x1bey": "v\nal\u202e"}
    # Every control character is escaped in the JSON text itself.
    assert not re.search(r"[\x00-\x09\x0b-\x1f]", out)


def test_verify_escapes_path(tmp_path: Path):
    path = tmp_path / "evil\x1b[2Jname\n.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    _, out, _ = run("verify", path, check_rc=0)
    assert "\x1b" not in out and out.count("\n") == 1
    assert "evil\\x1b[2Jname\\n.safetensors: 1 tensors" in out


# --- verify --------------------------------------------------------------------

def test_verify_valid(ref_file: Path):
    _, out, err = run("verify", ref_file, check_rc=0)
    assert out == f"OK {ref_file}: 6 tensors, {ref_file.stat().st_size} bytes\n"
    assert err == ""


def test_verify_quiet(ref_file: Path):
    assert run("verify", "-q", ref_file, check_rc=0)[1] == ""


def test_verify_many_valid(tmp_path: Path, ref_file: Path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(other))
    _, out, _ = run("verify", ref_file, other, check_rc=0)
    assert out.splitlines() == [
        f"OK {ref_file}: 6 tensors, {ref_file.stat().st_size} bytes",
        f"OK {other}: 1 tensors, {other.stat().st_size} bytes"]


def test_verify_large_tensor_read_in_chunks(tmp_path: Path):
    # Bigger than the CLI's 16 MiB read chunk: exercises the ranged path.
    path = tmp_path / "big.safetensors"
    save_file({"big": torch.zeros(5 * 1024 * 1024 + 3), "s": torch.ones(3)},
              str(path))
    _, out, _ = run("verify", path, check_rc=0)
    assert out.startswith(f"OK {path}: 2 tensors")


GOOD_HDR = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'

CORRUPT = {
    "too_small": (b"\x08\0\0\0", "ST_ERR_HEADER_TOO_SMALL"),
    "header_too_large": (struct.pack("<Q", 100_000_001) + b"{}      ",
                         "ST_ERR_HEADER_TOO_LARGE"),
    "header_past_end": (raw_file("{}", n=64), "ST_ERR_INVALID_HEADER_LENGTH"),
    "not_utf8": (raw_file(b'{"\xff":{"dtype":"F32","shape":[],'
                          b'"data_offsets":[0,4]}}', b"\0" * 4),
                 "ST_ERR_INVALID_HEADER"),
    "trailing_comma": (raw_file('{"a":{"dtype":"F32","shape":[2],'
                                '"data_offsets":[0,8]},}', b"\0" * 8),
                       "ST_ERR_HEADER_DESERIALIZATION"),
    "unknown_dtype": (raw_file('{"a":{"dtype":"F31","shape":[2],'
                               '"data_offsets":[0,8]}}', b"\0" * 8),
                      "ST_ERR_HEADER_DESERIALIZATION"),
    "wrong_length": (raw_file('{"a":{"dtype":"F32","shape":[3],'
                              '"data_offsets":[0,8]}}', b"\0" * 8),
                     "ST_ERR_INVALID_TENSOR_INFO"),
    "hole": (raw_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
                      b"\0" * 12), "ST_ERR_INVALID_OFFSET"),
    "truncated_data": (raw_file(GOOD_HDR, b"\0" * 5), "ST_ERR_INCOMPLETE_BUFFER"),
    "trailing_bytes": (raw_file(GOOD_HDR, b"\0" * 9), "ST_ERR_INCOMPLETE_BUFFER"),
    "overflow": (raw_file('{"a":{"dtype":"F32","shape":[4294967296,4294967296],'
                          '"data_offsets":[0,8]}}', b"\0" * 8),
                 "ST_ERR_VALIDATION_OVERFLOW"),
    "misaligned_f4": (raw_file('{"a":{"dtype":"F4","shape":[3],'
                               '"data_offsets":[0,2]}}', b"\0" * 2),
                      "ST_ERR_MISALIGNED_SLICE"),
    "duplicate": (raw_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                           '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
                           b"\0" * 8), "ST_ERR_DUPLICATE_KEY"),
    "nul_in_name": (raw_file('{"a\\u0000b":{"dtype":"F32","shape":[1],'
                             '"data_offsets":[0,4]}}', b"\0" * 4),
                    "ST_ERR_NUL_IN_STRING"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_verify_invalid(tmp_path: Path, lib, case: str):
    blob, status = CORRUPT[case]
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(blob)
    rc, out, err = run("verify", path)
    assert rc == 1, (out, err)
    assert err == ""
    m = re.fullmatch(rf"INVALID {re.escape(str(path))}: ({STATUS_RE}): (.+)\n",
                     out)
    assert m, out
    assert m.group(1) == status
    # The report carries exactly the library's offset and tensor name.
    lib_status, offset, name = library_verdict(lib, path)
    assert lib_status == status
    if offset != 2**64 - 1:
        assert f" at offset {offset}" in m.group(2)
    else:
        assert " at offset " not in m.group(2)
    if name:
        shown = name.replace("\0", "\\x00")
        assert m.group(2).endswith(f" (tensor '{shown}')")


def test_verify_reports_tensor_name(tmp_path: Path):
    path = tmp_path / "named.safetensors"
    path.write_bytes(CORRUPT["wrong_length"][0])
    out = run("verify", path)[1]
    assert re.search(r"at offset \d+ \(tensor 'a'\)\n$", out), out


def test_verify_missing_file_exit_2(tmp_path: Path):
    missing = tmp_path / "missing.safetensors"
    rc, out, err = run("verify", missing)
    assert rc == 2 and out == ""
    assert err.startswith(f"ERROR {missing}: ST_ERR_IO: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_verify_unreadable_file_exit_2(tmp_path: Path, ref_file: Path):
    ref_file.chmod(0)
    rc, _, err = run("verify", ref_file)
    assert rc == 2 and "ST_ERR_IO" in err


def test_verify_mixed_exit_codes(tmp_path: Path, ref_file: Path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(CORRUPT["hole"][0])
    missing = tmp_path / "missing.safetensors"
    rc, out, _ = run("verify", ref_file, bad)
    assert rc == 1
    assert out.splitlines()[0].startswith(f"OK {ref_file}")
    assert out.splitlines()[1].startswith(f"INVALID {bad}: ST_ERR_INVALID_OFFSET")
    # An I/O error outranks an invalid file; every file is still reported.
    rc, out, err = run("verify", bad, missing, ref_file)
    assert rc == 2
    assert len(out.splitlines()) == 2 and "ERROR" in err


def test_verify_dash_dash(tmp_path: Path, monkeypatch):
    path = tmp_path / "-dash.safetensors"
    save_file({"x": torch.zeros(1)}, str(path))
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run("verify", "--", "-dash.safetensors")
    assert rc == 0 and out.startswith("OK -dash.safetensors:")


# --- sharded checkpoints ---------------------------------------------------------

def write_shards(folder: Path, n_shards: int = 3):
    """Three reference-written shards plus an HF index; returns the index
    path and {shard: {name: tensor}}."""
    shards, weight_map, total = {}, {}, 0
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        tensors = {f"layers.{s}.weight": torch.randn(8, 4),
                   f"layers.{s}.bias": torch.zeros(8, dtype=torch.float16),
                   f"layers.{s}.scale": torch.tensor(1.5, dtype=torch.float64)}
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        shards[fname] = tensors
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total},
                                 "weight_map": weight_map}, indent=2))
    return index, shards


def test_sharded_text(tmp_path: Path):
    index, shards = write_shards(tmp_path)
    _, out, err = run("inspect", index, check_rc=0)
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"index: {index}"
    assert "  total_size: 456" in lines
    assert "weight_map: 9 tensors in 3 shards" in lines
    for fname in shards:
        assert f"file: {tmp_path / fname}" in lines
    per_shard = [ln for ln in lines if ln.startswith("totals: 3 tensors")]
    assert len(per_shard) == 3
    assert any(ln.startswith("totals: 3 shards, 9 tensors, 123 parameters, "
                             "456 data bytes") for ln in lines)
    assert "check: every weight_map entry is in its shard" in lines
    assert "note:" not in out


def test_sharded_json(tmp_path: Path):
    index, shards = write_shards(tmp_path)
    doc = json.loads(run("inspect", "--json", index, check_rc=0)[1])
    assert doc["index"] == str(index)
    assert doc["metadata"] == {"total_size": 456}
    assert doc["weight_map_entries"] == 9
    assert [s["file"] for s in doc["shards"]] == [str(tmp_path / f)
                                                   for f in sorted(shards)]
    assert all("tensors" not in s for s in doc["shards"])
    assert all(s["metadata"] == {"format": "pt"} for s in doc["shards"])
    header_total = sum(s["header_bytes"] for s in doc["shards"])
    assert doc["totals"] == {"shards": 3, "tensors": 9, "parameters": 123,
                             "data_bytes": 456, "header_bytes": header_total}
    assert doc["missing"] == [] and doc["unlisted_tensors"] == 0
    assert doc["valid"] is True
    # --tensors adds each shard's table.
    doc = json.loads(run("inspect", "--json", "--tensors", index, check_rc=0)[1])
    names = [t["name"] for s in doc["shards"] for t in s["tensors"]]
    assert sorted(names) == sorted(n for t in shards.values() for n in t)


def test_sharded_mismatch_exit_1(tmp_path: Path):
    index, _ = write_shards(tmp_path)
    doc = json.loads(index.read_text())
    doc["weight_map"]["layers.0.bias"] = "model-00002-of-00003.safetensors"
    doc["weight_map"]["ghost"] = "model-00003-of-00003.safetensors"
    index.write_text(json.dumps(doc))
    rc, out, err = run("inspect", index)
    assert rc == 1
    assert "error: weight_map entry 'layers.0.bias' is not in shard " \
           "model-00002-of-00003.safetensors" in out
    assert "error: weight_map entry 'ghost' is not in shard" in out
    assert "note: 1 tensors in the shards are not in weight_map" in out
    assert "2 weight_map entries not found" in err
    rc, out, _ = run("inspect", "--json", index)
    doc = json.loads(out)
    assert rc == 1 and doc["valid"] is False
    assert {(m["tensor"], m["shard"]) for m in doc["missing"]} == {
        ("layers.0.bias", "model-00002-of-00003.safetensors"),
        ("ghost", "model-00003-of-00003.safetensors")}
    assert doc["unlisted_tensors"] == 1


def test_sharded_missing_shard_exit_2(tmp_path: Path):
    index, _ = write_shards(tmp_path)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    rc, out, err = run("inspect", index)
    assert rc == 2
    assert "model-00002-of-00003.safetensors: ST_ERR_IO" in err
    assert "totals: 2 shards, 6 tensors" in out


def test_sharded_invalid_shard_exit_1(tmp_path: Path):
    index, _ = write_shards(tmp_path)
    shard = tmp_path / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1])
    rc, _, err = run("inspect", index)
    assert rc == 1
    assert "model-00003-of-00003.safetensors: ST_ERR_INCOMPLETE_BUFFER" in err


def test_sharded_relative_to_index_folder(tmp_path: Path, monkeypatch):
    index, _ = write_shards(tmp_path)
    monkeypatch.chdir(tmp_path.parent)
    rel = Path(tmp_path.name) / index.name
    rc, out, _ = run("inspect", rel)
    assert rc == 0, out
    monkeypatch.chdir(tmp_path)
    assert run("inspect", index.name)[0] == 0


def test_sharded_transformers_save_pretrained(tmp_path: Path):
    import transformers

    config = transformers.BertConfig(vocab_size=99, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37,
                                     max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = tmp_path / "model.safetensors.index.json"
    assert index.exists()
    shard_files = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shard_files) >= 3
    doc = json.loads(run("inspect", "--json", index, check_rc=0)[1])
    assert doc["valid"] is True and doc["missing"] == []
    expected = {}
    for f in shard_files:
        hdr, _, _ = header_of(f)
        expected.update({k: v for k, v in hdr.items() if k != "__metadata__"})
    assert doc["totals"]["shards"] == len(shard_files)
    assert doc["totals"]["tensors"] == len(expected)
    assert doc["totals"]["parameters"] == sum(numel(v["shape"])
                                              for v in expected.values())
    assert run("verify", *shard_files, check_rc=0)[1].count("OK ") == len(shard_files)


BAD_INDEXES = {
    "empty": "",
    "not_object": "[]",
    "no_weight_map": '{"metadata": {}}',
    "weight_map_array": '{"weight_map": []}',
    "value_not_string": '{"weight_map": {"a": 1}}',
    "trailing_comma": '{"weight_map": {"a": "s.safetensors",}}',
    "missing_comma": '{"weight_map": {"a": "s.safetensors" "b": "s.safetensors"}}',
    "stray_colon": '{"weight_map": {"a": : "s.safetensors"}}',
    "missing_colon": '{"weight_map": {"a" "s.safetensors"}}',
    "unterminated": '{"weight_map": {"a": "s.safetensors}}',
    "garbage_after": '{"weight_map": {}} x',
    "second_value": '{"weight_map": {}} {}',
    "bad_escape": '{"weight_map": {"a\\q": "s.safetensors"}}',
    "bad_hex": '{"weight_map": {"a\\u12g4": "s.safetensors"}}',
    "lone_surrogate": '{"weight_map": {"a\\ud800": "s.safetensors"}}',
    "raw_control": '{"weight_map": {"a\tb": "s.safetensors"}}',
    "leading_zero": '{"metadata": {"total_size": 012}, "weight_map": {}}',
    "bare_word": '{"metadata": {"total_size": nan}, "weight_map": {}}',
    "plus_number": '{"metadata": {"total_size": +1}, "weight_map": {}}',
    "dup_tensor": '{"weight_map": {"a": "s.safetensors", "\\u0061": "t.safetensors"}}',
    "dup_weight_map": '{"weight_map": {}, "weight_map": {}}',
    "dup_metadata_key": '{"metadata": {"k": 1, "k": 2}, "weight_map": {}}',
    "parent_dir": '{"weight_map": {"a": "../s.safetensors"}}',
    "absolute": '{"weight_map": {"a": "/etc/passwd"}}',
    "nul_in_shard": '{"weight_map": {"a": "s\\u0000.safetensors"}}',
    "mismatched_bracket": '{"weight_map": {"a": ["s"}]}',
    "unclosed": '{"weight_map": {"a": "s.safetensors"}',
}


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_bad_index_exit_1(tmp_path: Path, case: str):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(BAD_INDEXES[case])
    rc, out, err = run("inspect", index)
    assert rc == 1, (out, err)
    assert out == ""
    assert re.search(r": invalid index: .+", err), err


def test_bad_index_reports_offset(tmp_path: Path):
    index = tmp_path / "x.index.json"
    text = '{"weight_map": {"a": "s.safetensors",}}'
    index.write_text(text)
    err = run("inspect", index)[2]
    assert f"at offset {text.index('}')}" in err


def test_index_utf8_and_deep_nesting(tmp_path: Path):
    # Escaped names decode before lookup; deep nesting in unknown fields is
    # walked without recursion.
    save_file({"é": torch.zeros(1)}, str(tmp_path / "s.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    deep = "[" * 100000 + "]" * 100000
    index.write_text('{"extra": %s, "weight_map": {"\\u00e9": "s.safetensors"}}'
                     % deep)
    rc, out, _ = run("inspect", index)
    assert rc == 0 and "check: every weight_map entry is in its shard" in out
    index.write_bytes(b'{"weight_map": {"\xff": "s.safetensors"}}')
    assert run("inspect", index)[0] == 1


def test_index_null_metadata_and_extra_keys(tmp_path: Path):
    save_file({"a": torch.zeros(1)}, str(tmp_path / "s.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"metadata": null, "weight_map": {"a": "s.safetensors"},'
                     ' "other": {"x": [1, 2.5e-3, -0, true, false, null]}}')
    rc, out, _ = run("inspect", index)
    assert rc == 0 and "metadata: none" in out
