"""Shared setup for the plugin tests: the helper modules next to the tests
are importable, and the reference package is the pinned one."""

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def ref():
    """The reference ``safetensors.torch`` (safetensors 0.8.0)."""
    import safetensors
    import safetensors.torch

    assert safetensors.__version__ == "0.8.0", safetensors.__version__
    return safetensors.torch
