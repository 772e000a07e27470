"""Shared pytest setup for tests/python: makes the sibling helper modules
importable, and fails the run (never skips) when a dependency of the suites is
missing: the pinned reference package, numpy, torch, the shared library
(ST_LIBRARY) or the CLI (ST_CLI); both default to build/ as make test builds
them."""

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

_ROOT = os.path.dirname(os.path.dirname(_HERE))


def _missing():
    out = []
    for module in ("safetensors", "numpy", "torch"):
        try:
            __import__(module)
        except ImportError as e:
            out.append(f"{module} ({e})")
    lib = os.environ.get("ST_LIBRARY",
                         os.path.join(_ROOT, "build", "libsafetensors.so"))
    cli = os.environ.get("ST_CLI", os.path.join(_ROOT, "build", "safetensors"))
    if not os.path.isfile(lib):
        out.append(f"the shared library at {lib} (set ST_LIBRARY)")
    if not os.access(cli, os.X_OK):
        out.append(f"the CLI at {cli} (set ST_CLI)")
    return out


def pytest_configure(config):
    missing = _missing()
    if missing:
        raise pytest.UsageError(
            "tests/python needs, and does not skip without: " + "; ".join(missing))
