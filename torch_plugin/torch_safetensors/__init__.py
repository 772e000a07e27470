"""torch_safetensors: a strict, fast safetensors implementation for PyTorch.

The pure C library (``torch_safetensors._C``, no torch headers) validates
every file completely before exposing anything and writes byte-for-byte what
the reference writer writes. On top of it:

* :mod:`torch_safetensors.torch` -- a drop-in for ``safetensors.torch``
  (``safe_open``, ``save_file``, ``load_file``, ``save``, ``load``,
  ``save_model``, ``load_model``);
* the rest of ``safetensors``' own surface (``TensorSpec``, ``serialize``,
  ``serialize_file``, ``deserialize``) and :mod:`torch_safetensors.numpy`,
  a drop-in for ``safetensors.numpy``;
* :mod:`torch_safetensors.sharded` -- Hugging Face sharded checkpoints;
* ``torch.save(obj, f, format="safetensors")`` / ``torch.load(f)``, installed
  on import and by torch's ``torch.backends`` entry-point autoload;
* :func:`patch_safetensors` / :func:`unpatch_safetensors` -- route the
  reference package's ``safe_open``, ``load_file`` and ``load`` (also where
  libraries such as transformers imported them) here; or set
  ``TORCH_SAFETENSORS_PATCH=1`` before torch_safetensors (or torch) is
  imported.

Example::

    >>> import torch, torch_safetensors
    >>> torch.save({"w": torch.ones(2)}, "m.safetensors", format="safetensors")
    >>> torch.load("m.safetensors")["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import sys as _sys


def _autoload() -> None:
    """Entry point of torch's ``torch.backends`` autoload: install the hook.

    torch calls this with no arguments while ``import torch`` runs (disable
    with ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``). It is defined before anything
    else because ``import torch_safetensors`` imports torch, whose autoload
    then finds this package half-imported: in that case the package installs
    the hook itself when its import completes, so there is nothing to do.
    """
    install_fn = getattr(_sys.modules.get(__name__), "install", None)
    if install_fn is not None:
        install_fn()


from . import _C
from .errors import (
    SafetensorError,
    SafetensorFileNotFoundError,
    SafetensorIndexError,
    SafetensorKeyError,
    SafetensorOSError,
    SafetensorOverlapError,
    SafetensorRecordError,
    SafetensorRecordVersionError,
    SafetensorSharedTensorError,
    SafetensorTypeError,
    SafetensorValueError,
)
from .torch import load_file, load_model, safe_open, save_file, save_model
from ._serialize import TensorSpec, deserialize, serialize, serialize_file
from .torch import _safe_open_handle
from .sharded import load_sharded, save_sharded
from ._hook import install, uninstall
from ._patch import patch_safetensors, unpatch_safetensors

#: The one version (include/safetensors.h's ST_VERSION_*, which CMake and the
#: wheel's metadata also read), as the bundled C library reports it.
__version__ = _C.VERSION
#: Version of the bundled C library (the same number).
c_version = _C.VERSION


install()
# TORCH_SAFETENSORS_PATCH=1: route the reference package's loaders here.
_patch.patch_from_environment()

__all__ = [
    "SafetensorError",
    "SafetensorFileNotFoundError",
    "SafetensorIndexError",
    "SafetensorKeyError",
    "SafetensorOSError",
    "SafetensorOverlapError",
    "SafetensorRecordError",
    "SafetensorRecordVersionError",
    "SafetensorSharedTensorError",
    "SafetensorTypeError",
    "SafetensorValueError",
    "TensorSpec",
    "deserialize",
    "install",
    "load_file",
    "load_model",
    "load_sharded",
    "patch_safetensors",
    "safe_open",
    "save_file",
    "save_model",
    "save_sharded",
    "serialize",
    "serialize_file",
    "uninstall",
    "unpatch_safetensors",
    "__version__",
]
