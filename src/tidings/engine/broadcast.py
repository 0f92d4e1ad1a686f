"""Sending one message to many connections, framed once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ..protocol.deflate import DeflateConfig, DeflateParams, PerMessageDeflate
from ..protocol.frames import Opcode, serialize_header
from .connection import Data, WebSocket

__all__ = ["broadcast"]


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
    if isinstance(message, str):
        opcode, payload = Opcode.TEXT, message.encode()
    else:
        opcode, payload = Opcode.BINARY, bytes(message)
    plain = serialize_header(opcode, len(payload)) + payload
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
            ws.send_nowait(message)  # clients mask every frame afresh
            sent += 1
            continue
        frame = plain
        params = conn.deflate_params
        config = conn.compression
        if (
            params is not None
            and config is not None
            and params.server_no_context_takeover
            and len(payload) >= config.min_size
        ):
            key = (params, config)
            frame = compressed.get(key)  # type: ignore[assignment]
            if frame is None:
                frame = compressed[key] = _compress_once(
                    opcode, payload, params, config
                )
        if ws.send_frame(frame):
            corked.append(ws)
        sent += 1
    if corked:
        asyncio.get_running_loop().call_soon(_flush, corked)
    return sent


def _flush(connections: list[WebSocket]) -> None:
    for ws in connections:
        ws.flush()


def _compress_once(
    opcode: Opcode, payload: bytes, params: DeflateParams, config: DeflateConfig
) -> bytes:
    data = PerMessageDeflate(params, is_client=False, config=config).compress(payload)
    return serialize_header(opcode, len(data), rsv1=True) + data
