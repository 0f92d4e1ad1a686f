"""Which implementation of the protocol's hot paths is in use: C or Python.

Masking, frame parsing and UTF-8 decoding have compiled twins in the
optional extension ``tidings.protocol._speedups`` (see docs/speedups.md).
They replace the pure-Python twins when the module is imported, unless

- the extension was not built (no C compiler at install time), or
- the environment variable ``TIDINGS_NO_SPEEDUPS`` is set to anything but
  ``""`` or ``"0"`` when ``tidings.protocol`` is first imported.

Both implementations behave identically; only the speed differs.
"""

from __future__ import annotations

import os
from typing import Final, Literal

__all__ = ["ACTIVE", "DISABLED", "implementation"]

#: True when ``TIDINGS_NO_SPEEDUPS`` asked for the pure-Python twins.
DISABLED: Final = os.environ.get("TIDINGS_NO_SPEEDUPS", "") not in ("", "0")


def _load() -> bool:
    if DISABLED:
        return False
    try:
        from . import _speedups  # noqa: F401
    except ImportError:
        return False
    return True


#: True when the compiled twins are in use.
ACTIVE: Final = _load()


def implementation() -> Literal["C", "Python"]:
    """``"C"`` when the compiled twins are in use, else ``"Python"``."""
    return "C" if ACTIVE else "Python"
