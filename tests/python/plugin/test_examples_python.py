"""The README's Python examples (examples/python/*.py) run as written: each
is executed in a fresh interpreter and must exit 0 after printing OK (each
checks its own results against the reference package or a full load)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
EXAMPLES = os.path.join(ROOT, "examples", "python")
SCRIPTS = ["tp_load.py", "dcp_save_load.py", "cooperative_load.py",
           "export_program.py"]


def test_every_example_is_listed():
    found = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))
    assert found == sorted(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().splitlines()[-1] == "OK", r.stdout
