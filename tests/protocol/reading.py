"""Reading a byte stream the way the asyncio engine does: fed, or received
straight into the parser's buffer, in chunks of given sizes; and what such
reads hold."""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from tidings.protocol.frames import FrameParser, Opcode, serialize_frame

#: Payload lengths where the length encoding or a limit changes.
BOUNDARIES = [0, 1, 2, 125, 126, 127, 65535, 65536]


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


@st.composite
def message_wire(draw: st.DrawFn, masked: bool) -> bytes:
    """Mostly whole text and binary messages, sometimes with one thing that
    is not (a control frame, a fragment, RSV1, the other masking, bad
    UTF-8, a cut), as the fast path sees a read."""
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        text = draw(st.booleans())
        payload = (
            draw(st.text(max_size=60)).encode()
            if text
            else draw(st.binary(max_size=60) | st.sampled_from(BOUNDARIES).map(bytes))
        )
        opcode, fin, rsv1, mask = (
            (Opcode.TEXT if text else Opcode.BINARY),
            True,
            False,
            masked,
        )
        odd = draw(
            st.sampled_from(
                ["", "", "", "", "control", "fragment", "rsv1", "mask", "utf8"]
            )
        )
        if odd == "control":
            opcode = draw(st.sampled_from([Opcode.PING, Opcode.PONG, Opcode.CLOSE]))
            payload = payload[:20]
        elif odd == "fragment":
            fin = False
        elif odd == "rsv1":
            rsv1 = True
        elif odd == "mask":
            mask = not masked
        elif odd == "utf8":
            opcode, payload = Opcode.TEXT, payload + b"\xff"
        parts.append(serialize_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask))
    wire = b"".join(parts)
    if draw(st.booleans()) and wire:
        wire = wire[: draw(st.integers(0, len(wire)))]
    return wire
