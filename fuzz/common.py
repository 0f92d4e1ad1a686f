"""What the fuzz targets share: running under atheris, or replaying inputs
without it (``python fuzz/NAME.py FILE...``, as the tests do)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def chunks(data: bytes, seed: int) -> list[bytes]:
    """Cut ``data`` into pieces of 1 to 17 bytes (by ``seed``), so that
    every parser also meets its input cut at arbitrary places."""
    step = seed % 17 + 1
    return [data[i : i + step] for i in range(0, len(data), step)]


def main(target: Callable[[bytes], None]) -> None:
    """Fuzz ``target`` with atheris (its arguments: libFuzzer's), or, with
    ``--replay FILE...``, run it once on each file."""
    if sys.argv[1:2] == ["--replay"]:
        for path in sys.argv[2:]:
            with open(path, "rb") as file:
                target(file.read())
        return
    import atheris

    # Coverage of the Python code loaded so far (tidings included) guides
    # the fuzzer; the C twin is compared, not instrumented.
    atheris.instrument_all()
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
