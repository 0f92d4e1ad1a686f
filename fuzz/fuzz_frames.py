"""Fuzz target: the frame parser. Its C twin and its pure-Python twin get
the same bytes, cut at the same places, and must agree on every frame and
every error (tidings.protocol.frames)."""

from __future__ import annotations

from collections.abc import Callable

from common import chunks, instrumented, main

with instrumented("tidings"):
    from tidings.exceptions import ProtocolError
    from tidings.protocol import _speedups, frames

# The C glue in frames.py reads the extension from its module.
frames._speedups = _speedups  # type: ignore[attr-defined]

NextRaw = Callable[[frames.FrameParser], frames.RawFrame | None]


def run(next_raw: NextRaw, data: bytes) -> list[object]:
    """Every frame the twin cuts out of ``data``, then its error if any."""
    flags = data[0] if data else 0
    parser = frames.FrameParser(expect_mask=bool(flags & 2))
    parser.rsv_allowed = frames.RSV1 if flags & 1 else 0
    # Always a limit, as a peer that is not trusted gets (docs/limits.md).
    parser.max_payload = 1 << 20 if flags & 4 else 300
    out: list[object] = []
    try:
        for chunk in chunks(data[1:], flags >> 3):
            parser.feed(chunk)
            while (raw := next_raw(parser)) is not None:
                opcode, payload, fin, rsv1 = raw
                out.append((opcode, bytes(payload), fin, rsv1))
    except ProtocolError as exc:
        out.append((type(exc).__name__, str(exc)))
    return out


def target(data: bytes) -> None:
    python = run(frames._py_next_raw, data)
    c = run(frames._c_next_raw, data)
    assert python == c, (python, c)


if __name__ == "__main__":
    main(target)
