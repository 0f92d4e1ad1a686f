"""Sending one message to many connections, framed once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from ..protocol.deflate import DeflateConfig, DeflateParams, PerMessageDeflate
from ..protocol.frames import Opcode, serialize_header
from .connection import Data, WebSocket

__all__ = ["broadcast", "broadcast_many"]


def broadcast(
    connections: Iterable[WebSocket],
    message: Data,
    *,
    on_slow: Callable[[WebSocket], object] | None = None,
) -> int:
    """Send ``message`` to every connection without waiting; return how
    many it was written to.

    The frame is built once and the same bytes are queued on every server
    connection; each connection's queue is written at the end of the current
    event-loop iteration, so broadcasts made together (say, for several
    messages read at once) leave in one write per connection. Where
    permessage-deflate was negotiated without server context takeover, it is
    compressed once per set of parameters; other connections get it
    uncompressed, which RFC 7692 always allows.

    A connection whose write buffer is already above its ``write_limit`` is
    slow: it is skipped, and handed to ``on_slow`` if given, which may for
    example ``ws.drop(1013)`` it. Nobody is waited on. Connections that are
    not open, or are in the middle of a fragmented message, are skipped.
    """
    return broadcast_many(connections, (message,), on_slow=on_slow)


def broadcast_many(
    connections: Iterable[WebSocket],
    messages: Sequence[Data],
    *,
    on_slow: Callable[[WebSocket], object] | None = None,
) -> int:
    """:func:`broadcast` each of ``messages``, in order, to every connection:
    their frames are built and joined once, so that each connection costs
    one step however many messages there are. Returns how many connections
    they were written to."""
    framed = [_payload(message) for message in messages]
    plain = b"".join(
        serialize_header(opcode, len(data)) + data for opcode, data in framed
    )
    compressed: dict[tuple[DeflateParams, DeflateConfig], bytes] = {}
    # Frames queue on each connection until the end of this loop iteration,
    # so a burst of broadcasts costs one write per connection, not one each.
    corked: list[WebSocket] = []
    sent = 0
    for ws in connections:
        conn = ws.protocol
        if not conn.can_send_message:
            continue
        if ws.write_buffer_size > ws.write_limit:
            if on_slow is not None:
                on_slow(ws)
            continue
        if conn.is_client:
            for message in messages:
                ws.send_nowait(message)  # clients mask every frame afresh
            sent += 1
            continue
        frames = plain
        params = conn.deflate_params
        config = conn.compression
        if (
            params is not None
            and config is not None
            and params.server_no_context_takeover
        ):
            key = (params, config)
            frames = compressed.get(key)  # type: ignore[assignment]
            if frames is None:
                frames = compressed[key] = _compress_once(framed, params, config)
        if ws.send_frame(frames):
            corked.append(ws)
        sent += 1
    if corked:
        asyncio.get_running_loop().call_soon(_flush, corked)
    return sent


def _payload(message: Data) -> tuple[Opcode, bytes]:
    if isinstance(message, str):
        return Opcode.TEXT, message.encode()
    return Opcode.BINARY, bytes(message)


def _flush(connections: list[WebSocket]) -> None:
    for ws in connections:
        ws.flush()


def _compress_once(
    framed: Sequence[tuple[Opcode, bytes]], params: DeflateParams, config: DeflateConfig
) -> bytes:
    """The frames of ``framed``, each compressed where it is large enough
    (without context takeover each message stands alone)."""
    out = []
    for opcode, payload in framed:
        if len(payload) < config.min_size:
            out.append(serialize_header(opcode, len(payload)) + payload)
        else:
            deflater = PerMessageDeflate(params, is_client=False, config=config)
            data = deflater.compress(payload)
            out.append(serialize_header(opcode, len(data), rsv1=True) + data)
    return b"".join(out)
