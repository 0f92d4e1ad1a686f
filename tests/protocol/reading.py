"""Reading a byte stream the way the asyncio engine does: fed, or received
straight into the parser's buffer, in chunks of given sizes."""

from __future__ import annotations

import itertools

from tidings.protocol.frames import FrameParser


def receive_steps(
    wire: bytes, chunks: list[int], into: list[bool], expect_mask: bool
) -> list[object]:
    """Every frame the parser gives for ``wire`` read in ``chunks``, fed or
    received into its buffer, and the room it offers after each read."""
    parser = FrameParser(expect_mask=expect_mask)
    steps: list[object] = []
    pos = 0
    for size, receive_into in zip(
        itertools.cycle(chunks), itertools.cycle(into), strict=False
    ):
        if pos == len(wire):
            return steps
        view = parser.get_buffer()
        if receive_into and view is not None:
            n = min(size, len(view), len(wire) - pos)
            view[:n] = wire[pos : pos + n]
            parser.buffer_updated(n)
        else:
            n = min(size, len(wire) - pos)
            parser.feed(wire[pos : pos + n])
        pos += n
        while (frame := parser.next_raw()) is not None:
            steps.append(frame)
        room = parser.get_buffer()
        steps.append(None if room is None else len(room))
    raise AssertionError("unreachable")
