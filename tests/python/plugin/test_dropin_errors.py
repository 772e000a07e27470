"""SafetensorError: status, status_name, offset, tensor_name on every way in
(load_file, safe_open, load), for corrupt files built in code; the
reference refuses the same files."""

from __future__ import annotations

import errno
import io
import json
import struct

import pytest
import torch

import torch_safetensors
import torch_safetensors.torch as st
from torch_safetensors.errors import (
    SafetensorError,
    SafetensorFileNotFoundError,
    SafetensorOSError,
)


def _file(header, data=b""):
    h = header if isinstance(header, bytes) else \
        json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def _u8(begin, end):
    return {"dtype": "U8", "shape": [end - begin], "data_offsets": [begin, end]}


def _zip_checkpoint():
    buf = io.BytesIO()
    import zipfile
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buf.getvalue()


# (label, bytes, status_name, tensor_name, offset or None = any int)
CASES = [
    ("empty", b"", "ST_ERR_HEADER_TOO_SMALL", None, 0),
    ("seven bytes", b"\x01" * 7, "ST_ERR_HEADER_TOO_SMALL", None, 0),
    ("N over the cap", struct.pack("<Q", 100_000_001) + b"{}",
     "ST_ERR_HEADER_TOO_LARGE", None, 0),
    ("N past the end", struct.pack("<Q", 64) + b"{}",
     "ST_ERR_INVALID_HEADER_LENGTH", None, 0),
    ("bad UTF-8", _file(b'{"\xff":1}'), "ST_ERR_INVALID_HEADER", None, 10),
    ("cut JSON", _file(b'{"a":'), "ST_ERR_HEADER_DESERIALIZATION", None,
     None),
    ("wrong byte length",
     _file({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
           b"\0" * 4), "ST_ERR_INVALID_TENSOR_INFO", "w", None),
    ("hole", _file({"a": _u8(0, 2), "b": _u8(3, 5)}, b"\0" * 5),
     "ST_ERR_INVALID_OFFSET", "b", None),
    ("trailing bytes", _file({"a": _u8(0, 2)}, b"\0" * 3),
     "ST_ERR_INCOMPLETE_BUFFER", None, None),
    ("truncated data", _file({"a": _u8(0, 4)}, b"\0" * 2),
     "ST_ERR_INCOMPLETE_BUFFER", None, None),
    ("unknown dtype",
     _file({"a": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}},
           b"\0" * 4), "ST_ERR_HEADER_DESERIALIZATION", "a", None),
    ("shape overflow",
     _file({"a": {"dtype": "F32", "shape": [2**62, 8],
                  "data_offsets": [0, 4]}}, b"\0" * 4),
     "ST_ERR_VALIDATION_OVERFLOW", "a", None),
    ("odd F4", _file({"a": {"dtype": "F4", "shape": [3],
                            "data_offsets": [0, 1]}}, b"\0"),
     "ST_ERR_MISALIGNED_SLICE", "a", None),
    ("torch zip checkpoint", _zip_checkpoint(), "ST_ERR_HEADER_TOO_LARGE",
     None, 0),
]


@pytest.mark.parametrize("label,data,status,tname,offset", CASES,
                         ids=[c[0] for c in CASES])
def test_corrupt_files_raise_our_error(tmp_path, ref, label, data, status,
                                       tname, offset):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(Exception) as ref_file:
        ref.load_file(str(path))  # the reference refuses them too
    with pytest.raises(Exception) as ref_bytes:
        ref.load(data)
    calls = [
        (lambda: st.load_file(path), ref_file),
        (lambda: st.load_file(path, backend="pread"), ref_file),
        (lambda: st.safe_open(str(path), framework="pt"), ref_file),
        (lambda: st.load(data), ref_bytes),
        (lambda: torch_safetensors.load_file(str(path)), ref_file),
    ]
    for call, ref_e in calls:
        with pytest.raises(SafetensorError) as ei:
            call()
        e = ei.value
        assert e.status_name == status, (label, str(e))
        assert e.status == getattr(torch_safetensors._C, status)
        assert e.tensor_name == tname
        if offset is None:
            assert isinstance(e.offset, int)
        else:
            assert e.offset == offset
        # The reference's words; ours, with the fields, in detail.
        assert status in e.detail and status not in str(e)
        ref_text = str(ref_e.value)
        if status in ("ST_ERR_INVALID_HEADER", "ST_ERR_HEADER_DESERIALIZATION"):
            ref_text = ref_text.split(" in header: ")[0] + " in header: "
        assert str(e).startswith(ref_text), (str(e), ref_text)


@pytest.mark.parametrize("label,header,status", [
    ("duplicate name",
     b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
     b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
     "ST_ERR_DUPLICATE_KEY"),
    ("NUL in a name", {"a\u0000": _u8(0, 1)}, "ST_ERR_NUL_IN_STRING"),
])
def test_stricter_than_the_reference(tmp_path, ref, label, header, status):
    """Accepted by the reference, refused here on purpose (FORMAT.md)."""
    data = _file(header, b"\0")
    path = tmp_path / "strict.safetensors"
    path.write_bytes(data)
    ref.load_file(str(path))
    with pytest.raises(SafetensorError) as ei:
        st.load_file(path)
    assert ei.value.status_name == status
    assert ei.value.tensor_name == "a"


def test_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(SafetensorFileNotFoundError) as ei:
        st.load_file(tmp_path / "nope.safetensors")
    e = ei.value
    assert isinstance(e, FileNotFoundError)
    assert e.errno == errno.ENOENT == e.sys_errno
    assert e.status_name == "ST_ERR_IO"
    assert str(e) == f"No such file or directory: {tmp_path / 'nope.safetensors'}"
    with pytest.raises(SafetensorError) as ei:
        st.load_file(tmp_path)  # a directory
    assert isinstance(ei.value, (SafetensorOSError, SafetensorError))
    with pytest.raises(SafetensorError):
        st.safe_open(12345, framework="pt")
    with pytest.raises(SafetensorError):
        st.safe_open(str(tmp_path / "x"), framework="numpy")


def test_error_is_one_hierarchy():
    from torch_safetensors import errors

    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, SafetensorError), name
    assert torch_safetensors.SafetensorError is SafetensorError
    assert SafetensorError is torch_safetensors._C.SafetensorError


def test_save_errors_carry_the_tensor_name(tmp_path):
    with pytest.raises(SafetensorError) as ei:
        st.save_file({"x": torch.ones(2).to_sparse()}, tmp_path / "s.st")
    assert ei.value.tensor_name == "x"
    assert ei.value.status_name == "ST_ERR_INVALID_ARGUMENT"
    with pytest.raises(SafetensorError) as ei:
        st.save_file({"a": torch.ones(1)}, tmp_path / "no" / "dir.st")
    assert ei.value.status_name == "ST_ERR_IO"
    assert isinstance(ei.value, OSError)
