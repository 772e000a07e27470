"""Inside make test a missing dependency is a failure, never a skip: no test
under tests/python may skip for a missing package, library or CLI. Skips are
allowed only for absent hardware (a GPU) or root-only conditions, and each
says why."""

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = re.compile(r"importorskip|pytest\.skip\(|skipif\(|pytest\.mark\.skip\b|"
                  r"unittest\.skip|raise\s+SkipTest")
# what an allowed skip's line (or the line after it) must mention
ALLOWED = re.compile(r"cuda|gpu|geteuid|root", re.IGNORECASE)


def test_no_skip_hides_a_missing_dependency():
    offenders = []
    for path in sorted(HERE.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if SKIP.search(line) is None:
                continue
            context = line + " " + (lines[i + 1] if i + 1 < len(lines) else "")
            if "importorskip" in line or not ALLOWED.search(context):
                offenders.append(f"{path.relative_to(HERE)}:{i + 1}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_allowed_skips_give_a_reason():
    for path in sorted(HERE.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"skipif\((?:[^()]|\([^()]*\))*\)", text):
            assert "reason=" in m.group(0), f"{path.name}: {m.group(0)}"
