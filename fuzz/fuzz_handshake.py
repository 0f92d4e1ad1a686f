"""Fuzz target: the opening handshake's HTTP readers (llhttp, through
httptools, underneath; our limits, callbacks and header rules on top). Any
input ends in a request or response, in nothing yet, or in InvalidHandshake;
never another exception (tidings.protocol.handshake)."""

from __future__ import annotations

import contextlib

from common import chunks, instrumented, main

with instrumented("tidings"):
    from tidings.exceptions import InvalidHandshake
    from tidings.protocol.handshake import (
        RequestReader,
        ResponseReader,
        parse_extension_header,
    )


def target(data: bytes) -> None:
    seed = data[0] if data else 0
    server = RequestReader(max_body_size=64 if seed & 1 else 0)
    client = ResponseReader()
    for reader in (server, client):
        try:
            for chunk in chunks(data[1:], seed >> 1):
                head = reader.feed(chunk)
                if head is not None:
                    break
        except InvalidHandshake:
            continue
    with contextlib.suppress(InvalidHandshake):
        parse_extension_header(data.decode("latin-1"))


if __name__ == "__main__":
    main(target)
