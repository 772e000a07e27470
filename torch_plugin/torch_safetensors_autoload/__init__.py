"""torch's ``torch.backends`` entry point for torch_safetensors.

torch imports every entry point of that group while ``import torch`` runs and
turns any exception into a RuntimeError that makes ``import torch`` itself
fail. This module stands between the two: if torch_safetensors cannot be
imported (a broken install, a missing shared library), torch still starts,
with a warning, and only torch.save/torch.load's safetensors support is
missing. Disable autoload altogether with TORCH_DEVICE_BACKEND_AUTOLOAD=0.
"""

from __future__ import annotations

import warnings


def autoload() -> None:
    """Installs the torch.save/torch.load hook; never raises."""
    try:
        import torch_safetensors
    except Exception as err:  # a broken install must not break `import torch`
        warnings.warn(
            f"torch_safetensors could not be loaded by torch's backend autoload "
            f"and is inactive: {err!r}",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    torch_safetensors._autoload()
