"""One progress bar for every long operation (the CLI's convert and verify,
sharded saves and loads): tqdm when it is installed, or nothing.

tqdm is optional (not a dependency of the package): without it, or when the
bar is not wanted, every call is a no-op. ``enabled=None`` shows the bar only
when standard error is a terminal.
"""

from __future__ import annotations

import sys
from typing import Any, Optional


class Progress:
    """A progress bar over ``total`` units (bytes by default, scaled as KiB,
    MiB, ...), reaching exactly ``total`` when every unit was reported."""

    def __init__(self, total: int, desc: str, enabled: Optional[bool],
                 unit: str = "B", file: Any = None) -> None:
        self.bar = None
        out = sys.stderr if file is None else file
        if enabled is None:
            isatty = getattr(out, "isatty", None)
            enabled = bool(isatty and isatty())
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, desc=desc, unit=unit,
                        unit_scale=unit == "B", unit_divisor=1024, file=out,
                        dynamic_ncols=True)

    def update(self, n: int, desc: Optional[str] = None) -> None:
        if self.bar is not None:
            if desc is not None:
                self.bar.set_description(desc)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
