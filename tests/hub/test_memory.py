"""What a subscribed client costs the hub in Python objects, counted by
tracemalloc (deterministic, unlike the RSS the benchmark measures: see
docs/performance.md)."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from pathlib import Path
from typing import Any

import tidings
from tidings.hub import Hub, MemoryBroker
from tidings.hub.brokers.memory import MemoryBackend

from ..conftest import RawClient
from .conftest import hub_config

BOUND = 10

#: Bytes of Python objects per subscribed client that tidings' code
#: allocates: about 2,900 measured (Python 3.11, asyncio's loop), where each
#: client held a task, its request's headers as a list, empty dicts and a
#: timer of its own: 6,800. Generous: it catches a task per client again.
MOST_PER_CLIENT = 4_000

CLIENTS = 200


def masked_text(payload: str) -> bytes:
    """A client's text frame, masked with a zero key (RFC 6455 §5.3)."""
    data = payload.encode()
    assert len(data) < 126
    return bytes([0x81, 0x80 | len(data)]) + b"\0\0\0\0" + data


async def read_text(client: RawClient) -> Any:
    """The next frame from the hub (a small text frame), decoded."""
    head = await client.reader.readexactly(2)
    assert head[0] == 0x81, head
    size = head[1]
    if size == 126:
        size = int.from_bytes(await client.reader.readexactly(2), "big")
    return json.loads(await client.reader.readexactly(size))


async def subscribed(port: int, channel: str) -> RawClient:
    """A client that connected and subscribed to ``channel``."""
    client = await RawClient.open(port)
    await client.handshake("/ws")
    client.writer.write(
        masked_text('{"id":1,"op":"connect"}')
        + masked_text(json.dumps({"id": 2, "op": "subscribe", "channel": channel}))
    )
    while (await read_text(client)).get("id") != 2:
        pass
    return client


async def test_a_subscribed_client_costs_the_hub_few_python_objects() -> None:
    hub = Hub(hub_config(), MemoryBroker(MemoryBackend()))
    clients: list[RawClient] = []
    async with hub, asyncio.timeout(BOUND):
        # The first client warms up what every later one shares (imports,
        # caches, the channel's state).
        clients.append(await subscribed(hub.port, "news:m"))
        await hub.publish("news:m", "warm")
        await read_text(clients[0])
        gc.collect()
        tracemalloc.start(10)
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(CLIENTS):
                clients.append(await subscribed(hub.port, "news:m"))
            await hub.publish("news:m", "to all")
            for client in clients:
                assert (await read_text(client))["pub"]["data"] == "to all"
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        for client in clients:
            client.close()
    # The hub's side only: the clients here allocate in asyncio, not in
    # tidings.
    package = str(Path(tidings.__file__).parent / "*")
    ours = [tracemalloc.Filter(True, package, all_frames=True)]
    grown = sum(
        stat.size_diff
        for stat in after.filter_traces(ours).compare_to(
            before.filter_traces(ours), "filename"
        )
    )
    assert grown / CLIENTS < MOST_PER_CLIENT, grown / CLIENTS
