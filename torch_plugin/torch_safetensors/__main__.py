"""``python -m torch_safetensors convert|inspect`` (see :mod:`torch_safetensors._cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
