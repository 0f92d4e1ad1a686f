"""Fuzz target: a server connection, from the first byte, read as the
asyncio engine reads it (receive_messages, then receive_data): the opening
handshake, then frames, permessage-deflate (negotiated when the input asks
for it) and UTF-8, in chunks cut anywhere. Whatever arrives, receive_data
and accept never raise, and a peer that breaks the protocol gets one of the
close codes RFC 6455 names (tidings.protocol.connection)."""

from __future__ import annotations

from common import chunks, instrumented, main

with instrumented("tidings"):
    from tidings.protocol import (
        BinaryMessage,
        Closed,
        Event,
        Request,
        ServerConnection,
        TextMessage,
    )

#: A valid upgrade, offering permessage-deflate, that inputs may start with.
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)

#: Close codes a server answers a peer that broke the rules (§7.4.1), and
#: 1006 for a handshake that failed or a connection cut short.
FAILURES = {1002, 1006, 1007, 1009}


def target(data: bytes) -> None:
    seed = data[0] if data else 0
    conn = ServerConnection(max_message_size=4096, max_head_size=1024)
    events = []
    # The valid upgrade comes whole (fuzz_handshake cuts heads anywhere):
    # the inputs' time goes to what follows it.
    pieces = [UPGRADE] if seed & 1 else []
    for chunk in pieces + chunks(data[1:], seed >> 1):
        # As the asyncio engine reads: the fast path for whole messages
        # first, the frame-by-frame one when it declines.
        messages = conn.receive_messages(chunk)
        received: list[Event] = (
            conn.receive_data(chunk)
            if messages is None
            else [
                TextMessage(m) if isinstance(m, str) else BinaryMessage(m)
                for m in messages
            ]
        )
        if any(isinstance(event, Request) for event in received):
            received += conn.accept()
        conn.data_to_send()
        events += received
    events += conn.receive_eof()
    for event in events:
        if isinstance(event, Closed) and event.error is not None:
            assert event.code in FAILURES, event


if __name__ == "__main__":
    main(target)
