"""A `websockets` client's compressed messages at tidings' size limit.

``max_message_size`` bounds a message after decompression (RFC 7692), so a
message of exactly the limit must be accepted however much deflate made it
grow: incompressible data comes out larger than it went in.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import tidings
from tidings.protocol.limits import MAX_MESSAGE_SIZE

from ..conftest import echo

BOUND = 30  # seconds: every wait in these tests is bounded


# websockets compresses with memLevel 5 unless told otherwise; 1 makes the
# most stored blocks (a 5-byte header per 127 bytes), 9 the fewest.
@pytest.mark.parametrize("mem_level", [5, 1, 9])
async def test_incompressible_message_of_the_limit_from_websockets_is_echoed(
    mem_level: int,
) -> None:
    deflate = ClientPerMessageDeflateFactory(compress_settings={"memLevel": mem_level})
    async with (
        tidings.serve(echo, "127.0.0.1", 0) as server,  # the default 1 MiB limit
        ws_connect(
            f"ws://127.0.0.1:{server.port}/",
            compression=None,
            extensions=[deflate],
            max_size=None,
            proxy=None,
        ) as client,
    ):
        assert client.protocol.extensions, "permessage-deflate was not agreed"
        data = os.urandom(MAX_MESSAGE_SIZE)
        async with asyncio.timeout(BOUND):
            await client.send(data)
            assert await client.recv() == data
            # One byte more is still refused.
            await client.send(os.urandom(MAX_MESSAGE_SIZE + 1))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await client.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009
