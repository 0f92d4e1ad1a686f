"""A smoke test of an installed tidings, run by scripts/package in a fresh
virtual environment holding only the wheel: the package imports from there
(not from the checkout), says which twins it runs on, echoes over a
WebSocket, and serves the hub with its static files.

Usage: python scripts/smoke.py C|Python
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request

import tidings
from tidings.hub import Hub, HubConfig
from tidings.protocol import speedups


async def main(expected: str) -> None:
    assert "site-packages" in tidings.__file__, f"not the wheel: {tidings.__file__}"
    found = speedups.implementation()
    assert found == expected, f"expected the {expected} twins, found {found}"

    async def echo(ws: tidings.WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    async with asyncio.timeout(30):
        async with (
            tidings.serve(echo, "127.0.0.1", 0) as server,
            tidings.connect(f"ws://127.0.0.1:{server.port}/") as ws,
        ):
            await ws.send("hello")
            assert await ws.recv() == "hello"

        async with Hub(HubConfig(port=0)) as hub:
            async with tidings.connect(hub.ws_url) as ws:
                await ws.send(json.dumps({"id": 1, "op": "connect"}))
                assert "result" in json.loads(await ws.recv())
                sub = {"id": 2, "op": "subscribe", "channel": "chat:smoke"}
                await ws.send(json.dumps(sub))
                assert "result" in json.loads(await ws.recv())
                await hub.publish("chat:smoke", "news")
                push = json.loads(await ws.recv())
                while "pub" not in push:  # its own join first
                    push = json.loads(await ws.recv())
                assert push["pub"]["data"] == "news"
            url = hub.url + "tidings.js"
            page = await asyncio.to_thread(
                lambda: urllib.request.urlopen(url, timeout=10).read()
            )
            assert b"export class Hub" in page
    print(f"smoke test passed: tidings {tidings.__version__}, {found} twins")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
