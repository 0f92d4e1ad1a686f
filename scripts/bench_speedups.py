#!/usr/bin/env python3
"""Time the hot paths with the C twins and with the pure-Python ones.

Usage: .venv/bin/python scripts/bench_speedups.py

Not a test: the numbers depend on the machine; docs/speedups.md quotes them.
Each figure is the best of several runs in one process, which switches
between the twins that tidings.protocol keeps side by side.
"""

from __future__ import annotations

import codecs
import timeit
from collections.abc import Callable
from functools import partial
from typing import Any

from tidings.protocol import ServerConnection, State, frames
from tidings.protocol.frames import FrameParser, Opcode, serialize_frame

try:
    from tidings.protocol import _speedups
except ImportError:
    raise SystemExit(
        "tidings.protocol._speedups is not built: pip install -e ."
    ) from None

MIB = 1 << 20


def best(function: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Seconds per call, best of `repeat` runs of `number` calls."""
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number


def row(what: str, c: float, py: float, size: int | None = None) -> None:
    if size is None:
        figures = f"C {c * 1e3:7.2f} ms    Python {py * 1e3:7.2f} ms  "
    else:
        figures = f"C {size / c / 1e9:6.2f} GB/s   Python {size / py / 1e9:6.2f} GB/s"
    print(f"{what:46} {figures}   x{py / c:.1f}")


def decode_all(make: Callable[[], Any], chunks: list[bytes]) -> str:
    decoder = make()
    return "".join(decoder.decode(chunk, False) for chunk in chunks)


def use(implementation: str) -> None:
    """Put one set of twins in place, as importing tidings.protocol does."""
    c = implementation == "C"
    frames.apply_mask = _speedups.apply_mask if c else frames._py_apply_mask
    FrameParser.next_frame = (  # type: ignore[method-assign]
        frames._c_next_frame if c else frames._py_next_frame
    )


def main() -> None:
    data = bytes(range(256)) * (MIB // 256)
    mask = b"\x37\xfa\x21\x3d"
    row(
        "apply_mask, 1 MiB",
        best(partial(_speedups.apply_mask, data, mask), 200),
        best(partial(frames._py_apply_mask, data, mask), 20),
        MIB,
    )

    texts = {"ASCII": "tidings " * (MIB // 8), "Greek": "κόσμε " * (MIB // 11)}
    for name, text in texts.items():
        encoded = text.encode()
        assert _speedups.utf8_check(encoded) == 0
        row(
            f"UTF-8 check, 1 MiB {name} (Python: decode)",
            best(partial(_speedups.utf8_check, encoded), 50),
            best(encoded.decode, 20),
            len(encoded),
        )
    for name, text in texts.items():
        encoded = text.encode()
        for size in (125, 16384):
            chunks = [encoded[i : i + size] for i in range(0, len(encoded), size)]
            reference = codecs.getincrementaldecoder("utf-8")
            row(
                f"UTF-8 incremental, 1 MiB {name} in {size} B",
                best(partial(decode_all, _speedups.Utf8IncrementalDecoder, chunks), 3),
                best(partial(decode_all, reference, chunks), 3),
                len(encoded),
            )

    wire = b"".join(
        serialize_frame(Opcode.TEXT, b"hello, tidings %05d" % i, mask=True)
        for i in range(10_000)
    )

    def parse() -> None:
        parser = FrameParser(expect_mask=True)
        parser.feed(wire)
        while parser.next_frame() is not None:
            pass

    def receive() -> None:
        server = ServerConnection(compression=None)
        server.state = State.OPEN
        assert len(server.receive_data(wire)) == 10_000

    timings = {}
    for implementation in ("C", "Python"):
        use(implementation)
        timings[implementation] = (best(parse, 5), best(receive, 5))
    use("C")
    row(
        "FrameParser: 10,000 masked 20-byte frames",
        timings["C"][0],
        timings["Python"][0],
    )
    row(
        "ServerConnection.receive_data: the same", timings["C"][1], timings["Python"][1]
    )


if __name__ == "__main__":
    main()
