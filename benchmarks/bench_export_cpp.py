"""C++ loading of a GPT-2-small-sized exported program (docs/EXPORT.md):
the plain C++ load of its weights file, open_exported with the weights from
safetensors (user-managed constants, and with the package copying them),
and the same program compiled with its weights baked in; each in a fresh
process, with its resident memory.

Usage: bench_export_cpp.py [--build DIR] [--runs N]

DIR (default build-bench-export) holds the compiled packages, cached by the
torch version and the model's source (compiling takes about 2 min on 2 cores),
and benchmarks/cpp/bench_export.cpp built against an install of the C++ API
(DIR/install, from DIR/lib: configure + build + install of this checkout
with ST_WITH_TORCH=ON). Each mode runs --runs times (default 5) after one
warm-up run; the page cache is warm for all (the file was just written or
read), so the numbers measure the loaders, not the disk. Prints the medians.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable

# GPT-2 small: 12 layers, 12 heads, 768 wide, 50257 tokens, 1024 positions,
# the LM head tied to the token embedding: 124M parameters.
LAYERS, HEADS, WIDTH, VOCAB, POSITIONS, TOKENS = 12, 12, 768, 50257, 1024, 64


def model():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(WIDTH)
            self.c_attn = nn.Linear(WIDTH, 3 * WIDTH)
            self.c_proj = nn.Linear(WIDTH, WIDTH)
            self.ln_2 = nn.LayerNorm(WIDTH)
            self.c_fc = nn.Linear(WIDTH, 4 * WIDTH)
            self.mlp_proj = nn.Linear(4 * WIDTH, WIDTH)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=-1)
            q, k, v = (a.view(b, t, HEADS, d // HEADS).transpose(1, 2) for a in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(VOCAB, WIDTH)
            self.wpe = nn.Embedding(POSITIONS, WIDTH)
            self.h = nn.ModuleList(Block() for _ in range(LAYERS))
            self.ln_f = nn.LayerNorm(WIDTH)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.t()

    torch.manual_seed(0)
    return GPT().eval()


def compile_packages(cache: Path) -> None:
    """cache/gpt2/ (export directory) and cache/baked.pt2, unless cached."""
    import torch
    import inspect
    source = inspect.getsource(model) + inspect.getsource(compile_packages)
    key = f"{torch.__version__} {hashlib.sha256(source.encode()).hexdigest()[:16]}"
    if (cache / "key").exists() and (cache / "key").read_text() == key:
        return
    from torch_safetensors import export
    m = model()
    n = sum(p.numel() for p in m.parameters())
    idx = torch.zeros(1, TOKENS, dtype=torch.long)
    cache.mkdir(parents=True, exist_ok=True)
    t = time.time()
    ep = torch.export.export(m, (idx,))
    export.save(ep, (idx,), cache / "gpt2")
    print(f"compiled without weights ({n / 1e6:.1f}M parameters): {time.time() - t:.0f} s",
          flush=True)
    t = time.time()
    torch._inductor.aoti_compile_and_package(
        ep, package_path=str(cache / "baked.pt2"),
        inductor_configs={"always_keep_tensor_constants": True})
    print(f"compiled with weights baked in: {time.time() - t:.0f} s", flush=True)
    (cache / "key").write_text(key)


def build_program(build: Path) -> Path:
    """benchmarks/cpp/bench_export.cpp against build/install."""
    import torch
    torch_dir = Path(torch.__file__).parent
    prefix = build / "install"
    exe = build / "bench_export"
    src = HERE / "cpp" / "bench_export.cpp"
    if not (build / "lib" / "build.ninja").exists():
        tc = torch.utils.cmake_prefix_path
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build / "lib"), "-G", "Ninja",
                        "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DST_WITH_TORCH=ON", "-DST_BUILD_CLI=OFF",
                        "-DST_BUILD_TESTS=OFF", f"-DCMAKE_PREFIX_PATH={tc}",
                        f"-DCMAKE_INSTALL_PREFIX={prefix}"], check=True)
    # Always: an incremental build, so the numbers are this checkout's.
    subprocess.run(["cmake", "--build", str(build / "lib"), "-j", "2"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--install", str(build / "lib")], check=True,
                   stdout=subprocess.DEVNULL)
    newest = max(src.stat().st_mtime, *(p.stat().st_mtime for p in (prefix / "lib").glob("libsafetensors*")))
    if exe.exists() and exe.stat().st_mtime > newest:
        return exe
    subprocess.run(["c++", "-std=c++20", "-O2", "-D_GLIBCXX_USE_CXX11_ABI=1",
                    f"-I{prefix}/include", f"-I{torch_dir}/include",
                    f"-I{torch_dir}/include/torch/csrc/api/include", str(src), "-o", str(exe),
                    f"-L{prefix}/lib", "-lsafetensors_torch", "-lsafetensors",
                    f"-L{torch_dir}/lib", "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10",
                    f"-Wl,-rpath,{prefix}/lib:{torch_dir}/lib"], check=True)
    return exe


def measure(exe: Path, args, runs: int):
    subprocess.run([str(exe), *args], check=True, stdout=subprocess.DEVNULL)  # warm-up
    rows = []
    for _ in range(runs):
        out = subprocess.run([str(exe), *args], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(ROOT / "build-bench-export"))
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    build = Path(a.build).resolve()
    compile_packages(build / "packages")
    exe = build_program(build)
    gpt2 = str(build / "packages" / "gpt2")
    weights = Path(gpt2) / "model.safetensors"
    print(f"weights: {weights.stat().st_size / 2**20:.0f} MiB; package without weights "
          f"{(Path(gpt2) / 'model.pt2').stat().st_size / 2**20:.1f} MiB, with weights "
          f"{(build / 'packages' / 'baked.pt2').stat().st_size / 2**20:.0f} MiB; "
          f"median of {a.runs} fresh processes, warm page cache")
    cases = [("plain C++ load (mmap)", ["load", gpt2]),
             ("plain C++ load (mmap, populate)", ["load", gpt2, "populate"]),
             ("package without weights alone", ["package", gpt2]),
             ("open_exported (user-managed)", ["export", gpt2]),
             ("open_exported (package copies)", ["copy", gpt2]),
             ("package with weights baked in", ["baked", str(build / "packages" / "baked.pt2")])]
    results = {}
    print("load: the call; run: the first forward pass (1 x 64 tokens) after it; memory after "
          "both, as /proc/self/status says: anon = private memory (copies) added by the call "
          "and the run, file = mapped file pages (page cache, shared), peak = VmHWM")
    print(f"{'':32} {'load s':>8} {'run s':>7} {'RSS MB':>7} {'+anon MB':>9} "
          f"{'file MB':>8} {'peak MB':>8}")
    for label, args in cases:
        rows = measure(exe, args, a.runs)
        med = {k: statistics.median(r[k] for r in rows) for k in ("load_s", "first_run_s")}
        after, before = rows[-1]["after"], rows[-1]["before"]
        results[label] = (med, rows)
        print(f"{label:32} {med['load_s']:8.4f} {med['first_run_s']:7.3f} "
              f"{after['rss_mb']:7d} {after['anon_mb'] - before['anon_mb']:9d} "
              f"{after['file_mb']:8d} {rows[-1]['hwm_mb']:8d}", flush=True)
    sums = {rows[-1]["checksum"] for label, (_, rows) in results.items()
            if label.startswith("open") or label == "package with weights baked in"}
    print(f"output checksums (open_exported and baked must agree): {sorted(sums)}")
    med = {label: r[0]["load_s"] for label, r in results.items()}
    plain, package = med["plain C++ load (mmap)"], med["package without weights alone"]
    ours, baked = med["open_exported (user-managed)"], med["package with weights baked in"]
    print(f"open_exported: {ours / plain:.1f}x the plain load, of which the package alone "
          f"{package:.4f} s; the weights part (open_exported - package) "
          f"{ours - package:.4f} s = {(ours - package) / plain:.1f}x the plain load; "
          f"{baked / ours:.0f}x faster than the package with weights baked in")


if __name__ == "__main__":
    main()
