"""``python -m torch_safetensors``: convert pickle checkpoints to safetensors, inspect, verify
and quantize files.

Usage::

    python -m torch_safetensors convert pytorch_model.bin model.safetensors
    python -m torch_safetensors convert ckpt_dir/pytorch_model.bin.index.json out_dir \\
        --max-shard-size 5GB
    python -m torch_safetensors inspect model.safetensors [--json]
    python -m torch_safetensors inspect model.safetensors.index.json
    python -m torch_safetensors verify model.safetensors other.safetensors index.json
    python -m torch_safetensors quantize model_dir model_w4 --scheme W4A16

``convert`` reads pickle checkpoints only with ``torch.load(..., weights_only=True)`` (torch's
restricted unpickler: tensors, containers and plain values, never arbitrary classes or code), so
converting an untrusted file never runs its code; a file that needs more is refused with torch's
whole explanation (the class it would have to import included). ``--trust-pickle`` is the
explicit opt-in for a file you trust: a full unpickle (``torch.load(weights_only=False)``, which
can run any code the file holds), announced by a warning line on stderr. Input: a
``.pt``/``.bin`` file, a ``pytorch_model.bin.index.json`` (sharded input, every shard loaded in
turn), or a directory holding either. Output: one file written with
``torch.save(obj, OUT, format="safetensors")`` (nested checkpoints keep their structure), or,
with ``--max-shard-size`` or an output directory, Hugging Face shards plus
``model.safetensors.index.json`` (needs a flat ``state_dict``). A progress bar (tqdm, when
installed and stderr is a terminal, or with ``--progress``) follows the bytes read and written;
without tqdm there is no bar and nothing else changes (tqdm is optional: ``pip install tqdm``).

``quantize`` rounds a safetensors checkpoint to nearest in one of the schemes of
``save_file(..., quantize=)`` (docs/QUANT.md, "Writing"), in the compressed-tensors layout that
vLLM-style loaders read: every 2-D floating ``*.weight`` but ``lm_head`` and embeddings (plus
``--ignore``). Input: a ``.safetensors`` file (output: a file), or a sharded checkpoint's index or
a directory holding one or ``model.safetensors`` (output: a new directory: each shard quantized
under its own name, one shard in memory at a time, the index written last, and the directory's
other files copied, ``config.json`` with the ``quantization_config`` added). Every output file is
written durably. A progress bar follows the bytes quantized.

``inspect`` and ``verify`` take a file or a sharded checkpoint's index (a name ending in
``.json``), as the C command ``safetensors`` does, with the same exit status: 0 valid, 1 invalid
(the file, or an index entry missing from its shard), 2 usage or I/O error. ``verify`` reads
every tensor's bytes, with a progress bar over the files. Output to a closed pipe
(``| head -1``) ends quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Sequence

from ._progress import Progress

PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
SAFE_INDEX = "model.safetensors.index.json"


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"100MiB"`` -> 104_857_600, ``123`` -> 123
    (sharded.parse_size's rule, with its refusals as CliError)."""
    from . import sharded
    from .errors import SafetensorTypeError, SafetensorValueError
    if isinstance(text, str) and text.strip().isdigit():
        text = int(text)
    try:
        return sharded.parse_size(text)
    except (SafetensorTypeError, SafetensorValueError):
        raise CliError(f"bad size {text!r}: use e.g. 500MB, 5GB, 2GiB or a positive "
                       f"byte count") from None


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except CliError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------

def _checkpoint_files(src: str, index_name: str = PICKLE_INDEX,
                      single_name: str = PICKLE_SINGLE) -> tuple[list[str], str | None]:
    """(the files making up the checkpoint at ``src``, in load order; its index or None).
    ``src``: one file, an index (``.json``), or a directory holding index_name or
    single_name."""
    if os.path.isdir(src):
        for name in (index_name, single_name):
            if os.path.exists(os.path.join(src, name)):
                return _checkpoint_files(os.path.join(src, name), index_name, single_name)
        raise CliError(f"{src}: no {index_name} or {single_name} in this directory")
    if not os.path.exists(src):
        raise CliError(f"{src}: no such file")
    if src.endswith(".json"):
        try:
            _, shards = _index_shards(src)
        except _Invalid as e:
            raise CliError(str(e)) from None
        return shards, src
    return [src], None


def _input_files(src: str) -> list[str]:
    """The pickle files making up the checkpoint at ``src``, in load order."""
    return _checkpoint_files(src)[0]


def _is_safetensors(path: str) -> bool:
    from ._hook import _sniff

    return _sniff(path) and not path.endswith((".pt", ".bin", ".pth"))


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _load_pickle(path: str, trust_pickle: bool = False) -> Any:
    import torch
    import zipfile

    if _is_safetensors(path):
        raise CliError(f"{path}: already a safetensors file")
    kwargs = {"mmap": True} if zipfile.is_zipfile(path) else {}
    if trust_pickle:
        print(f"warning: {path}: --trust-pickle: full unpickle (torch.load(weights_only=False)); "
              "this runs any code the file holds", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False, **kwargs)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as e:  # torch's restricted unpickler refusing, or a bad file
        # torch's whole explanation (it names the global it refused), without its
        # terminal escape codes
        why = _ANSI.sub("", str(e)).strip() or type(e).__name__
        raise CliError(
            f"{path}: cannot be loaded with torch.load(weights_only=True), so it is not "
            f"converted (it would need a full unpickle; if you trust the file, "
            f"--trust-pickle does one). torch says:\n{why}") from None


def _flat_tensors(obj: Any, what: str) -> dict:
    import torch

    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CliError(f"{what}: sharded input and output need a flat state_dict "
                       "(str -> tensor); this checkpoint is nested")
    return obj


def convert(src: str, dst: str, max_shard_size: int | None = None,
            progress: bool | None = None, metadata: dict[str, str] | None = None,
            trust_pickle: bool = False) -> list[str]:
    """Convert the pickle checkpoint at ``src`` to safetensors at ``dst``; returns the files
    written. See the module docs."""
    import torch

    files = _input_files(src)
    sharded_in = len(files) > 1 or src.endswith(".json") or os.path.isdir(src)
    sharded_out = max_shard_size is not None or os.path.isdir(dst) or dst.endswith(os.sep)
    total = sum(os.path.getsize(f) for f in files)
    bar = Progress(2 * total, "reading", progress)
    try:
        merged: dict = {}
        obj: Any = None
        for f in files:
            part = _load_pickle(f, trust_pickle)
            if sharded_in:
                for k, v in _flat_tensors(part, f).items():
                    if k in merged:
                        raise CliError(f"{f}: tensor {k!r} also appears in an earlier shard")
                    merged[k] = v
            else:
                obj = part
            bar.update(os.path.getsize(f), f"read {os.path.basename(f)}")
        if sharded_in:
            obj = merged
        bar.update(0, "writing")
        if sharded_out:
            tensors = _flat_tensors(obj, src)
            from .sharded import save_sharded

            os.makedirs(dst, exist_ok=True)
            md = {"format": "pt"}
            md.update(metadata or {})
            save_sharded(tensors, dst, max_shard_size=max_shard_size or 5 * 10**9,
                         metadata=md)
            written = sorted(
                os.path.join(dst, n) for n in os.listdir(dst)
                if n.endswith(".safetensors") or n == SAFE_INDEX)
        else:
            torch.save(obj, dst, format="safetensors", metadata=metadata)
            written = [dst]
        bar.update(total, "done")
    finally:
        bar.close()
    return written


def quantize(src: str, dst: str, scheme: str, group_size: int | None = None,
             ignore: Sequence[str] = (), progress: bool | None = None) -> list[str]:
    """Quantize the safetensors checkpoint at ``src`` into ``dst``; returns the files written.
    See the module docs."""
    import shutil

    from . import quant
    from .sharded import _fsync_dir, _write_json
    from .torch import safe_open, save_file

    spec: dict[str, Any] = {"scheme": scheme,
                            "ignore": list(quant._DEFAULT_IGNORE) + list(ignore)}
    if group_size is not None:
        spec["group_size"] = group_size
    quant._parse_spec(spec)  # a bad scheme or option: refused before anything is read
    files, index = _checkpoint_files(src, SAFE_INDEX, "model.safetensors")
    directory_out = index is not None or os.path.isdir(src)
    if directory_out:
        if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
            raise CliError(f"{dst}: exists and is not an empty directory")
        os.makedirs(dst, exist_ok=True)
    elif os.path.isdir(dst):
        raise CliError(f"{dst}: is a directory; the input is one file")
    total = sum(os.path.getsize(f) for f in files)
    written: list[str] = []
    weight_map: dict[str, str] = {}
    total_size = 0
    config = None
    with Progress(total, "quantizing", progress) as bar:
        for f in files:
            out = os.path.join(dst, os.path.basename(f)) if directory_out else dst
            with safe_open(f, "pt") as h:  # one open: metadata and tensors
                tensors, md = quant.quantize_state_dict(
                    {k: h.get_tensor(k) for k in h.keys()}, spec, h.metadata())
                save_file(tensors, out, md)
            written.append(out)
            config = quant.quantization_config(md)
            for k, t in tensors.items():
                weight_map[k] = os.path.basename(f)
                total_size += t.numel() * t.element_size()
            del tensors
            bar.update(os.path.getsize(f), f"quantized {os.path.basename(f)}")
    if not directory_out:
        return written
    src_dir = os.path.dirname(os.path.abspath(files[0]))
    for name in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if not os.path.isfile(path) or name.endswith(".safetensors") or name == SAFE_INDEX:
            continue
        out = os.path.join(dst, name)
        if name == "config.json" and config is not None:
            with open(path, encoding="utf-8") as fh:
                cfg = json.load(fh)
            cfg["quantization_config"] = config
            _write_json(out, cfg)
        else:
            shutil.copyfile(path, out)
            fd = os.open(out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        written.append(out)
    _fsync_dir(dst)
    if index is not None:  # published last: until then the directory is no checkpoint
        out = os.path.join(dst, SAFE_INDEX)
        _write_json(out, {"metadata": {"total_size": total_size},
                          "weight_map": dict(sorted(weight_map.items()))})
        written.append(out)
    return written


# --------------------------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------------------------

def _describe_structure(node: Any, depth: int = 0, limit: int = 3) -> str:
    if isinstance(node, dict) and "t" in node:
        t = node["t"]
        if t == "tensor":
            return f"tensor {node.get('name')!r}" + (
                f" on {node['device']}" if "device" in node else "")
        if t in ("list", "tuple"):
            items = node.get("items", [])
            if depth >= limit:
                return f"{t}[{len(items)}]"
            inner = ", ".join(_describe_structure(x, depth + 1, limit) for x in items[:4])
            more = ", ..." if len(items) > 4 else ""
            return f"{t}[{len(items)}]({inner}{more})"
        if t in ("dict", "odict"):
            items = node.get("items", [])
            if depth >= limit:
                return f"dict[{len(items)}]"
            inner = ", ".join(f"{k!r}: {_describe_structure(v, depth + 1, limit)}"
                              for k, v in items[:4])
            more = ", ..." if len(items) > 4 else ""
            return "{" + inner + more + "}"
        return f"{t} {node.get('v')!r}"
    return repr(node)


def inspect_file(path: str) -> dict:
    """Header facts of a safetensors file as a JSON-able dict (the file is fully validated)."""
    from . import _C
    from ._hook import STRUCTURE_KEY

    with _C.File(path) as f:
        tensors = [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape),
                    "data_offsets": [i.begin, i.end]} for i in f.tensors()]
        metadata = f.metadata() or {}
    info: dict[str, Any] = {
        "file": path,
        "file_size": os.path.getsize(path),
        "tensor_count": len(tensors),
        "data_bytes": sum(t["data_offsets"][1] - t["data_offsets"][0] for t in tensors),
        "metadata": {k: v for k, v in metadata.items() if k != STRUCTURE_KEY},
        "tensors": tensors,
    }
    dtypes: dict[str, int] = {}
    for t in tensors:
        dtypes[t["dtype"]] = dtypes.get(t["dtype"], 0) + 1
    info["dtypes"] = dtypes
    rec = metadata.get(STRUCTURE_KEY)
    if rec is not None:
        from . import _record
        from .errors import SafetensorRecordError
        try:
            # The loaders' own check (docs/RECORD.md): what torch.load
            # refuses is never described as if it were a structure.
            info["structure"] = _describe_structure(_record.parse(rec)["root"])
        except SafetensorRecordError as e:
            info["structure"] = f"(invalid structure record: {e})"
    return info


def _index_shards(path: str) -> tuple[dict, list[str]]:
    """A sharded checkpoint's index, read by the loaders' own rule
    (sharded._read_index): (weight_map, shard paths in first-use order)."""
    from . import sharded
    from .errors import SafetensorValueError
    try:
        directory, wm, _ = sharded._read_index(path)
    except SafetensorValueError as e:
        raise _Invalid(f"{path}: invalid index: {e}") from None
    shards: list[str] = []
    for shard in wm.values():
        p = os.path.join(directory, shard)
        if p not in shards:
            shards.append(p)
    return wm, shards


class _Invalid(Exception):
    """A file or index that is not valid: printed as one line, exit status 1."""


def _describe(e: BaseException) -> str:
    from .errors import SafetensorError, c_message

    if isinstance(e, SafetensorError) and getattr(e, "status_name", None):
        text = f"{e.status_name}: {c_message(e)}"
        if getattr(e, "offset", None) is not None:
            text += f" at offset {e.offset}"
        if getattr(e, "tensor_name", None) is not None:
            text += f" (tensor {e.tensor_name!r})"
        return text
    return str(e)


def _exit_for(e: BaseException) -> int:
    """0 valid, 1 invalid, 2 usage or I/O: the C command's rule."""
    return 2 if isinstance(e, (OSError, MemoryError, CliError)) else 1


def inspect_index(path: str) -> tuple[dict, int]:
    """Each shard's facts and the weight_map check of a sharded checkpoint's index."""
    wm, shards = _index_shards(path)
    worst = 0
    out: dict[str, Any] = {"index": path, "weight_map_entries": len(wm), "shards": [],
                           "missing": []}
    names: dict[str, set] = {}
    for shard in shards:
        try:
            info = inspect_file(shard)
        except Exception as e:  # one shard's failure does not hide the others
            worst = max(worst, _exit_for(e))
            out["shards"].append({"file": shard, "error": _describe(e)})
            continue
        out["shards"].append(info)
        names[shard] = {t["name"] for t in info["tensors"]}
    base = os.path.dirname(path)
    for name, shard in wm.items():
        have = names.get(os.path.join(base, shard))
        if have is not None and name not in have:
            out["missing"].append({"tensor": name, "shard": shard})
    if out["missing"]:
        worst = max(worst, 1)
    out["valid"] = worst == 0
    return out, worst


def _print_index(info: dict, limit: int | None, out) -> None:
    print(f"index: {info['index']}", file=out)
    print(f"weight_map: {info['weight_map_entries']} tensors in {len(info['shards'])} shards",
          file=out)
    for shard in info["shards"]:
        print(file=out)
        if "error" in shard:
            print(f"file:     {shard['file']}\n  error: {shard['error']}", file=out)
        else:
            _print_inspect(shard, limit, out)
    for m in info["missing"]:
        print(f"error: weight_map entry {m['tensor']!r} is not in shard {m['shard']}", file=out)
    if info["valid"]:
        print("check: every weight_map entry is in its shard", file=out)


def verify_file(path: str) -> str:
    """Validates path completely and reads every tensor's bytes; the OK line's text."""
    from . import _C, _io

    with _C.File(path) as f:
        count = f.count()
        size = f.data_offset + f.data_size
    with _C.File(path, backend="pread") as g:
        for k, info in enumerate(g.tensors()):
            _io.read_owned(g, [(k, info)])
    return f"{count} tensors, {size} bytes"


def verify(paths: Sequence[str], progress: bool | None = None, quiet: bool = False) -> int:
    """``verify``: one line per file (OK/INVALID on stdout, ERROR on stderr), the worst
    exit status; an index is verified shard by shard, then its weight_map."""
    jobs: list[tuple[str, str | None]] = []  # (file, index it came from)
    worst = 0
    for p in paths:
        if p.endswith(".json"):
            try:
                _, shards = _index_shards(p)
            except (OSError, _Invalid) as e:
                code = _exit_for(e)
                worst = max(worst, code)
                print(f"{'ERROR' if code == 2 else 'INVALID'} {p}: {e}",
                      file=sys.stderr if code == 2 else sys.stdout)
                continue
            jobs += [(s, None) for s in shards] + [(p, p)]
        else:
            jobs.append((p, None))
    bar = Progress(len(jobs), "verify", progress, unit="file")
    try:
        for path, index in jobs:
            try:
                if index is not None:
                    info, code = inspect_index(index)
                    if code:
                        worst = max(worst, code)
                        for m in info["missing"]:
                            print(f"INVALID {index}: weight_map entry {m['tensor']!r} is not in "
                                  f"shard {m['shard']}")
                    elif not quiet:
                        print(f"OK {index}: {len(info['shards'])} shards, "
                              f"{info['weight_map_entries']} weight_map entries")
                else:
                    line = verify_file(path)
                    if not quiet:
                        print(f"OK {path}: {line}")
            except Exception as e:
                if isinstance(e, BrokenPipeError):
                    raise
                code = _exit_for(e)
                worst = max(worst, code)
                print(f"{'ERROR' if code == 2 else 'INVALID'} {path}: {_describe(e)}",
                      file=sys.stderr if code == 2 else sys.stdout)
            sys.stdout.flush()
            bar.update(1)
    finally:
        bar.close()
    return worst


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_inspect(info: dict, limit: int | None, out) -> None:
    print(f"file:     {info['file']} ({_human(info['file_size'])})", file=out)
    print(f"tensors:  {info['tensor_count']}, {_human(info['data_bytes'])} of data; "
          + ", ".join(f"{d} x{n}" for d, n in sorted(info["dtypes"].items())), file=out)
    for k, v in sorted(info["metadata"].items()):
        print(f"metadata: {k} = {v if len(v) < 200 else v[:200] + '...'}", file=out)
    if "structure" in info:
        print(f"torch.save structure: {info['structure']}", file=out)
    rows = info["tensors"] if limit is None else info["tensors"][:limit]
    if rows:
        w = max(len(t["name"]) for t in rows)
        for t in rows:
            b, e = t["data_offsets"]
            print(f"  {t['name']:<{w}}  {t['dtype']:<11} {str(t['shape']):<20} "
                  f"[{b}, {e})", file=out)
        if len(rows) < len(info["tensors"]):
            print(f"  ... {len(info['tensors']) - len(rows)} more (--all lists every tensor)",
                  file=out)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

_EXAMPLES = """examples:
  python -m torch_safetensors convert pytorch_model.bin model.safetensors
  python -m torch_safetensors convert ckpt_dir/pytorch_model.bin.index.json out_dir --max-shard-size 5GB
  python -m torch_safetensors convert trusted.pt model.safetensors --trust-pickle
  python -m torch_safetensors inspect model.safetensors --json
  python -m torch_safetensors inspect model.safetensors.index.json
  python -m torch_safetensors verify *.safetensors
  python -m torch_safetensors quantize model_dir model_w4 --scheme W4A16
  python -m torch_safetensors quantize model.safetensors model-fp8.safetensors --scheme FP8_BLOCK

exit status: 0 valid, 1 invalid, 2 usage or I/O error (as the C command `safetensors`)
"""


def _progress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always show the progress bar")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="never show the progress bar")


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="python -m torch_safetensors", formatter_class=raw, epilog=_EXAMPLES,
        description="Convert pickle checkpoints to safetensors, inspect, verify and "
                    "quantize safetensors files.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="pickle .pt/.bin (or a sharded index) -> safetensors",
                       formatter_class=raw, epilog=_EXAMPLES,
                       description=__doc__.split("\n\n")[3] if __doc__ else None)
    c.add_argument("input", help=".pt/.bin file, pytorch_model.bin.index.json, or a directory")
    c.add_argument("output", help="output .safetensors file, or a directory for shards")
    c.add_argument("--max-shard-size", type=_size_arg, default=None,
                   help="write Hugging Face shards of at most this size (e.g. 5GB, 500MiB)")
    c.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="add a __metadata__ entry (repeatable)")
    c.add_argument("--trust-pickle", action="store_true",
                   help="for a file you trust: load it with a full unpickle "
                        "(torch.load(weights_only=False), which runs any code it holds)")
    _progress_flags(c)
    i = sub.add_parser("inspect", help="validate a safetensors file (or an index's shards) "
                                       "and list what it holds",
                       formatter_class=raw, epilog=_EXAMPLES)
    i.add_argument("file", help="a .safetensors file, or a sharded checkpoint's index (.json)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument("--all", action="store_true", help="list every tensor (default: first 50)")
    v = sub.add_parser("verify", help="validate files completely and read every tensor",
                       formatter_class=raw, epilog=_EXAMPLES)
    v.add_argument("files", nargs="+", help=".safetensors files or index (.json) files")
    v.add_argument("-q", "--quiet", action="store_true", help="print only the files that fail")
    _progress_flags(v)
    q = sub.add_parser("quantize", help="round a safetensors checkpoint to nearest in a "
                                        "compressed-tensors scheme",
                       formatter_class=raw, epilog=_EXAMPLES,
                       description=__doc__.split("\n\n")[4] if __doc__ else None)
    q.add_argument("input", help="a .safetensors file, a sharded index (.json) or a directory")
    q.add_argument("output", help="output file (file input) or new directory")
    from .quant import SCHEMES

    q.add_argument("--scheme", required=True, choices=sorted(SCHEMES), type=str.upper,
                   help="the quantization scheme (docs/QUANT.md)")
    q.add_argument("--group-size", type=int, default=None,
                   help="values per scale for the integer group schemes (default 128)")
    q.add_argument("--ignore", action="append", default=[], metavar="MODULE",
                   help="also keep this module unquantized: a name (matches a suffix) or "
                        "re:PATTERN (repeatable; lm_head and embeddings are always kept)")
    _progress_flags(q)
    return p


def _run(args) -> int:
    if args.cmd == "convert":
        md = {}
        for kv in args.metadata:
            if "=" not in kv:
                raise CliError(f"--metadata {kv!r}: expected KEY=VALUE")
            k, v = kv.split("=", 1)
            md[k] = v
        written = convert(args.input, args.output, args.max_shard_size, args.progress,
                          md or None, trust_pickle=args.trust_pickle)
        for w in written:
            print(w)
        return 0
    if args.cmd == "verify":
        return verify(args.files, args.progress, args.quiet)
    if args.cmd == "quantize":
        for w in quantize(args.input, args.output, args.scheme, args.group_size, args.ignore,
                          args.progress):
            print(w)
        return 0
    if args.file.endswith(".json"):
        info, rc = inspect_index(args.file)
        if args.json:
            json.dump(info, sys.stdout, indent=1)
            print()
        else:
            _print_index(info, None if args.all else 50, sys.stdout)
        if rc:
            print(f"error: {args.file}: not every weight_map entry is in a valid shard",
                  file=sys.stderr)
        return rc
    info = inspect_file(args.file)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
    else:
        _print_inspect(info, None if args.all else 50, sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        try:
            return _run(args)
        except (CliError, _Invalid) as e:
            print(f"error: {e}", file=sys.stderr)
            return _exit_for(e)
        except Exception as e:
            from .errors import SafetensorError

            if not isinstance(e, (SafetensorError, OSError)) or isinstance(e, BrokenPipeError):
                raise
            print(f"error: {e}", file=sys.stderr)
            return _exit_for(e)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # the reader closed the pipe (`| head -1`): end quietly, and keep the
        # interpreter's own flush at exit from failing again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
