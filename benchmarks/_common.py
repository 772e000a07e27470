"""Shared helpers of the benchmark scripts: machine facts, fresh-process measurements, peak RSS,
alternating rounds, median/spread, RESULTS.md sections and plots.

Peak memory: a child resets the kernel's peak mark (/proc/self/clear_refs = 5) right before the
measured operation and reports VmHWM minus the RSS at that moment, so interpreter and import costs
cancel and only what the operation itself added is counted.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NoReturn, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
PLOTS = HERE / "plots"


# --- inside a child process -----------------------------------------------------------------

def status_bytes(field: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def clear_peak() -> bool:
    """Gives freed heap back to the OS, then resets VmHWM to the current RSS; False where the
    kernel does not allow the reset (then only VmRSS is meaningful)."""
    trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def reset_peak() -> int:
    """Resets VmHWM to the current RSS; returns that RSS (the baseline of the peak)."""
    clear_peak()
    return status_bytes("VmRSS")


# --- in the parent --------------------------------------------------------------------------

def run_child(argv: Sequence[str], env: Optional[dict] = None, timeout: float = 600) -> dict:
    """Runs argv (a fresh process) and returns the JSON object on its last stdout line."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(list(argv), capture_output=True, text=True, env=e, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(argv)} printed no JSON:\n{p.stdout[-2000:]}"
                           f"\n{p.stderr[-2000:]}")
    return json.loads(lines[-1])


def alternate(contenders: Sequence[str], rounds: int, warmup: bool,
              measure: Callable[[str], dict], progress: Callable[[str], None] = lambda s: None
              ) -> Dict[str, List[dict]]:
    """A B C ... A B C ...: one warm-up round (discarded) then `rounds` measured rounds.

    A contender whose measurement raises is recorded once with its error and skipped after."""
    out: Dict[str, List[dict]] = {c: [] for c in contenders}
    failed: Dict[str, str] = {}
    for r in range(rounds + (1 if warmup else 0)):
        for c in contenders:
            if c in failed:
                continue
            progress(f"{c} round {r}")
            try:
                res = measure(c)
            except Exception as e:  # noqa: BLE001 - a contender failing is a result
                failed[c] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else repr(e)
                out[c] = [{"error": failed[c]}]
                continue
            if warmup and r == 0:
                continue
            out[c].append(res)
    return out


def med(runs: Iterable[dict], key: str) -> Optional[float]:
    vals = [r[key] for r in runs if key in r and r[key] is not None]
    return statistics.median(vals) if vals else None


def spread(runs: Iterable[dict], key: str) -> str:
    vals = [r[key] for r in runs if key in r and r[key] is not None]
    if not vals:
        return "-"
    return f"{min(vals):.3f}-{max(vals):.3f}"


def error_of(runs: List[dict]) -> Optional[str]:
    return runs[0]["error"] if runs and "error" in runs[0] else None


def fmt_s(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3f}"


def fmt_mib(x: Optional[float]) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return "not installed"


def gpt2_shapes(n_layer: int, n_embd: int, vocab: int, n_pos: int) -> list:
    """(name, shape) of a GPT-2 LM head model's state_dict, in transformers' order
    (without the lm_head, which ties to wte). Shared by the benchmarks and scripts/demo.py."""
    shapes = [("transformer.wte.weight", (vocab, n_embd)),
              ("transformer.wpe.weight", (n_pos, n_embd))]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        shapes += [
            (p + "ln_1.weight", (n_embd,)), (p + "ln_1.bias", (n_embd,)),
            (p + "attn.c_attn.weight", (n_embd, 3 * n_embd)),
            (p + "attn.c_attn.bias", (3 * n_embd,)),
            (p + "attn.c_proj.weight", (n_embd, n_embd)), (p + "attn.c_proj.bias", (n_embd,)),
            (p + "ln_2.weight", (n_embd,)), (p + "ln_2.bias", (n_embd,)),
            (p + "mlp.c_fc.weight", (n_embd, 4 * n_embd)), (p + "mlp.c_fc.bias", (4 * n_embd,)),
            (p + "mlp.c_proj.weight", (4 * n_embd, n_embd)), (p + "mlp.c_proj.bias", (n_embd,)),
        ]
    shapes += [("transformer.ln_f.weight", (n_embd,)), ("transformer.ln_f.bias", (n_embd,))]
    return shapes


def machine_info(packages: Sequence[str] = ()) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    info = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu,
            "cores": os.cpu_count(), "mem_gib": mem / 2**30, "python": platform.python_version(),
            "kernel": platform.release(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    info["versions"] = {p: _version(p) for p in packages}
    return info


def machine_line(info: dict) -> str:
    v = ", ".join(f"{k} {x}" for k, x in info["versions"].items())
    return (f"Measured {info['date']} on {info['cpu']}, {info['cores']} cores, "
            f"{info['mem_gib']:.0f} GiB RAM, Linux {info['kernel']}, Python {info['python']}; "
            f"{v}. Load average at the start: {info['load']}.")


def command_line() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replaces (or appends) the block between <!-- BEGIN name --> and <!-- END name -->."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def has_section(name: str, path: Path = RESULTS) -> bool:
    return path.exists() and f"<!-- BEGIN {name} -->" in path.read_text()


def bar_plot(path: Path, title: str, names: Sequence[str], series: Dict[str, Sequence[float]],
             ylabel: str = "seconds (median)", stacked: bool = False,
             hlines: Optional[Dict[str, float]] = None) -> None:
    """One bar group per contender; series: label -> one value per name (None/0 = no bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.6))
    x = list(range(len(names)))
    labels = list(series)
    if stacked:
        bottom = [0.0] * len(names)
        for lab in labels:
            vals = [v or 0.0 for v in series[lab]]
            ax.bar(x, vals, 0.6, bottom=bottom, label=lab)
            bottom = [b + v for b, v in zip(bottom, vals)]
    else:
        w = 0.8 / max(1, len(labels))
        for k, lab in enumerate(labels):
            vals = [v or 0.0 for v in series[lab]]
            ax.bar([i - 0.4 + w * (k + 0.5) for i in x], vals, w, label=lab)
    for lab, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color="gray")
        ax.annotate(lab, (len(names) - 0.5, y), ha="right", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    if labels:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class LineWorker:
    """A long-lived benchmark worker process speaking one JSON line per
    command: argv is its command line; ask(command) writes one line and
    returns the JSON line it answers."""

    def __init__(self, argv: list, env: dict = None):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def ask_line(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark worker died")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.ask_line()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def exit_rank(code: int) -> NoReturn:
    """Ends a gloo rank without interpreter teardown, which can abort in
    torch 2.13 (why: tests/python/plugin/_ahelpers.py, exit_rank)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
