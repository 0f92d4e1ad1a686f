"""Sending one message to many connections, framed once."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from ..protocol import State, speedups
from ..protocol.deflate import DeflateConfig, DeflateParams, PerMessageDeflate
from ..protocol.frames import Opcode, serialize_header
from .connection import Data, WebSocket

__all__ = ["broadcast", "broadcast_many"]

_OPEN: Final = State.OPEN


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
    return _fan_out(connections, (message,), on_slow, cork=True)


def broadcast_many(
    connections: Iterable[WebSocket],
    messages: Sequence[Data],
    *,
    on_slow: Callable[[WebSocket], object] | None = None,
) -> int:
    """:func:`broadcast` each of ``messages``, in order, to every connection:
    their frames are built and joined once, and written to each connection
    at once, in one write, where :func:`broadcast` waits for the end of the
    loop iteration (a connection in a batch of its own, such as answers to a
    read, gets them at the end of that batch, after what it queued). Made
    for a caller that gathers what an iteration sends, as the hub does.
    Returns how many connections they were written to."""
    return _fan_out(connections, messages, on_slow, cork=False)


def _fan_out(
    connections: Iterable[WebSocket],
    messages: Sequence[Data],
    on_slow: Callable[[WebSocket], object] | None,
    *,
    cork: bool,
) -> int:
    framed = [_payload(message) for message in messages]
    plain = b"".join(
        serialize_header(opcode, len(data)) + data for opcode, data in framed
    )
    compressed = _Compressed(framed)
    if cork:
        sent, rest = 0, connections
    else:
        # Most connections take the frames as they are (or compressed once),
        # at once; the loop over them runs once per subscriber of every
        # publication.
        sent, rest = write_plain(connections, plain, _OPEN, compressed)
    corked: list[WebSocket] = []
    for ws in rest:
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
        deflate = conn._deflate
        key = deflate.send_key if deflate is not None else None
        # With context takeover, uncompressed (RFC 7692 always allows it).
        frames = plain if key is None else compressed[key]
        # Queued behind what the connection holds, in order. broadcast()
        # writes at the end of the loop iteration, so that broadcasts made
        # together leave in one write per connection.
        if ws.send_frame(frames):
            if cork:
                corked.append(ws)
            else:
                ws.flush()
        sent += 1
    if corked:
        asyncio.get_running_loop().call_soon(_flush, corked)
    return sent


class _Compressed(dict[tuple[DeflateParams, DeflateConfig], bytes]):
    """The frames of a fan-out's messages, compressed once per set of
    deflate parameters (a connection's ``send_key``), on first use."""

    __slots__ = ("_framed",)

    def __init__(self, framed: Sequence[tuple[Opcode, bytes]]) -> None:
        super().__init__()
        self._framed = framed

    def __missing__(self, key: tuple[DeflateParams, DeflateConfig]) -> bytes:
        frames = self[key] = _compress_once(self._framed, *key)
        return frames


def _py_write_plain(
    connections: Iterable[WebSocket],
    frames: bytes,
    open_state: State,
    compressed: Mapping[tuple[DeflateParams, DeflateConfig], bytes],
) -> tuple[int, list[WebSocket]]:
    """Write ``frames`` at once (:func:`_write`) to each connection that can
    send and has nothing special about it (a server side, nothing corked,
    writing not paused); where its permessage-deflate compresses each
    message alone, ``compressed[send_key]`` instead. Return how many, and
    the others that can send, for the full loop. The reference of
    ``_fanout.write_plain``, its compiled twin: both read the same slots."""
    written = 0
    rest = []
    for ws in connections:
        conn = ws._conn
        if conn.state is not open_state or conn._out_opcode is not None:
            continue
        transport = ws._transport
        if ws._write_paused or ws._corked or conn.is_client or transport is None:
            rest.append(ws)
            continue
        deflate = conn._deflate
        key = None if deflate is None else deflate.send_key
        _write(ws, transport, ws._fd, frames if key is None else compressed[key])
        written += 1
    return written, rest


def _write(ws: WebSocket, transport: asyncio.Transport, fd: int, frames: bytes) -> None:
    """Write ``frames`` to ``ws``'s ``transport``: straight to its socket
    ``fd`` where there is one and the transport holds nothing, so that order
    is kept, which costs less than the transport's write path; what the
    socket does not take goes to the transport, which then waits for the
    socket, or learns of its error."""
    # A closing transport may have closed the descriptor already.
    if fd >= 0 and not transport.is_closing():
        if ws._unsent and not transport.get_write_buffer_size():
            ws._unsent = False
        if not ws._unsent:
            try:
                sent = os.write(fd, frames)
            except OSError:
                sent = 0
            if sent == len(frames):
                return
            frames = frames[sent:]
    ws._unsent = True
    transport.write(frames)


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


write_plain: Callable[
    [
        Iterable[WebSocket],
        bytes,
        State,
        Mapping[tuple[DeflateParams, DeflateConfig], bytes],
    ],
    tuple[int, list[WebSocket]],
] = _py_write_plain
if speedups.ACTIVE:
    # Built without it, the protocol's twins may still be there.
    with contextlib.suppress(ImportError):
        from ._fanout import write_plain
