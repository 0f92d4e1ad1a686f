"""What the fuzz targets share: running under atheris, or replaying inputs
without it (``python fuzz/NAME.py FILE...``, as the tests do)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

#: Not replaying crashes: running under atheris.
FUZZING = sys.argv[1:2] != ["--replay"]


@contextlib.contextmanager
def instrumented(*packages: str) -> Iterator[None]:
    """Instrument for coverage the modules of ``packages`` imported inside
    (when fuzzing): what the target tests, not the standard library, whose
    instrumentation would only slow every input down."""
    if not FUZZING:
        yield
        return
    import atheris

    with atheris.instrument_imports(include=list(packages)):
        yield


def chunks(data: bytes, seed: int) -> list[bytes]:
    """Cut ``data`` into pieces of 1 to 17 bytes (by ``seed``), or into 16
    equal pieces when those would be longer, so that every parser also meets
    its input cut at arbitrary places. Bounding the count keeps a long input
    from costing a parser call per byte: the cuts, not their number, are
    what reach the parsers' partial states."""
    step = max(seed % 17 + 1, -(-len(data) // 16))
    return [data[i : i + step] for i in range(0, len(data), step)]


def main(target: Callable[[bytes], None]) -> None:
    """Fuzz ``target`` with atheris (its arguments: libFuzzer's), or, with
    ``--replay FILE...``, run it once on each file."""
    if not FUZZING:
        for path in sys.argv[2:]:
            with open(path, "rb") as file:
                target(file.read())
        return
    import atheris

    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
