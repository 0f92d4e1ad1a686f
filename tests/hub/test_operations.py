"""The HTTP API's operations in process (hub/operations.py, ``hub.api()``):
the same answers and refusals as the HTTP API, on every broker kind; and
a FastAPI app, the one of docs/asgi.md, whose views get them through
``Depends(hub.api)``, under a real uvicorn process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tidings import AsyncHubAPI
from tidings.hub import APIError, Client, InProcessAPI, Published

from ..test_docs import CODE

BOUND = 10
KEY = "the-api-key"


def base(hub: Any) -> str:
    return f"http://127.0.0.1:{hub.port}"


async def test_the_same_answers_in_process_and_over_http(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub(api_key=KEY)
    local = hub.api()
    assert isinstance(local, InProcessAPI) and hub.api() is local
    alice = await connect(hub, mint("alice", info={"name": "Alice"}))
    epoch = (await alice.result("subscribe", channel="chat:same"))["epoch"]
    async with AsyncHubAPI(base(hub), key=KEY) as remote:
        assert await local.publish("chat:same", 1) == Published(1, epoch)
        assert await remote.publish("chat:same", 2) == Published(2, epoch)
        [news, chat] = await local.broadcast(["news:same", "chat:same"], 3)
        assert chat == Published(3, epoch) and news.offset == 1
        assert [p["data"] for p in await alice.pubs(3)] == [1, 2, 3]
        for method, args in [
            ("presence", ("chat:same",)),
            ("presence_stats", ("chat:same",)),
            ("history", ("chat:same",)),
            ("history", ("chat:same", 2)),
            ("history", ("chat:same", None, (1, epoch))),
            ("history", ("chat:same", None, (1, "other"))),
            ("channels", ()),
        ]:
            here = await getattr(local, method)(*args)
            there = await getattr(remote, method)(*args)
            assert here == there, (method, args)
            assert type(here) is type(there)
        [info] = await local.presence("chat:same")
        assert info.info == {"name": "Alice"}
        # The same refusals: status and message.
        for method, args in [
            ("publish", ("nope:x", 1)),
            ("publish", ("bad name", 1)),
            ("broadcast", ([], 1)),
            ("broadcast", (["chat:a", "nope:b"], 1)),
            ("presence", ("nope:x",)),
            ("history", ("chat:same", -1)),
            ("disconnect", ("",)),
            ("unsubscribe", ("alice", "nope:x")),
        ]:
            refusals = []
            for api in (local, remote):
                with pytest.raises(APIError) as refused:
                    await getattr(api, method)(*args)
                refusals.append((refused.value.status, refused.value.message))
            assert refusals[0] == refusals[1], (method, args)
        assert (await local.history("chat:a")).offset == 0
        # Nodes are surveyed alike.
        assert await local.unsubscribe("alice", "chat:same") == 1
        assert await local.disconnect("alice") == 1
        assert await alice.closed() == 4003


async def test_a_broker_refusal_is_an_api_error_in_process(
    start_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings.hub.brokers.base import BrokerUnavailable, OutcomeUnknown

    hub = await start_hub()
    for error, status in [(BrokerUnavailable, 503), (OutcomeUnknown, 504)]:

        async def fail(*args: Any, error: type[Exception] = error, **kw: Any) -> Any:
            raise error("redis is away")

        monkeypatch.setattr(hub.broker, "publish", fail)
        with pytest.raises(APIError) as refused:
            await hub.api().publish("chat:x", 1)
        assert (refused.value.status, refused.value.message) == (
            status,
            "redis is away",
        )
    with pytest.raises(APIError) as refused:
        await hub.api().publish("chat:x", float("nan"))
    assert refused.value.status == 400


# -- a FastAPI app under uvicorn -------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[str]:
    """docs/asgi.md's app with in-process publishing, with an API key, under
    a uvicorn process: its base URL."""
    [code] = [
        b.code
        for b in CODE
        if b.page == "docs/asgi.md"
        and b.code.startswith("from typing import Annotated")
    ]
    code = code.replace("demo=False,", f"demo=False, api_key={KEY!r},")
    assert KEY in code
    (tmp_path / "shop.py").write_text(code)
    # Listening before uvicorn starts: requests wait in the kernel for it.
    sock = socket.create_server(("127.0.0.1", 0))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(tmp_path),
            "--fd",
            str(sock.fileno()),
            "--log-level",
            "warning",
            "shop:app",
        ],
        pass_fds=[sock.fileno()],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        proc.terminate()
        proc.wait(BOUND)
        sock.close()


async def test_views_publish_through_the_dependency_without_http(shop: str) -> None:
    ws = shop.replace("http", "ws") + "/realtime/ws"
    async with (
        Client(ws) as watcher,
        httpx.AsyncClient(base_url=shop, timeout=BOUND) as http,
    ):
        sub = await watcher.subscribe("orders:7")
        answer = await http.post("/orders/7/ship")
        assert answer.status_code == 200, answer.text
        async with asyncio.timeout(BOUND):
            pub = await anext(aiter(sub))
        assert pub.data == {"status": "shipped"}
        assert answer.json() == {"offset": pub.offset}
        watching = await http.get("/watchers/orders:7")
        assert watching.json() == {"watching": 1}
        # The HTTP API of the same hub wants the key the views never need.
        refused = await http.post(
            "/realtime/api/publish", json={"channel": "orders:7", "data": 1}
        )
        assert refused.status_code == 401
        # A refusal of the hub in a view: the app's handler makes it a 404.
        unknown = await http.get("/watchers/nope:7")
        assert unknown.status_code == 404, unknown.text
        assert unknown.json() == {"error": "unknown namespace in nope:7"}


async def test_the_client_reuses_its_connection_to_a_mounted_hub(shop: str) -> None:
    # uvicorn keeps connections open (the hub's own server closes each).
    peers: list[Any] = []

    async def record(response: httpx.Response) -> None:
        stream = response.extensions["network_stream"]
        peers.append(stream.get_extra_info("client_addr"))

    async with (
        httpx.AsyncClient(event_hooks={"response": [record]}) as http,
        AsyncHubAPI(shop + "/realtime", key=KEY, http_client=http) as api,
    ):
        first = await api.publish("orders:9", "a")
        assert (await api.publish("orders:9", "b")).offset == first.offset + 1
        history = await api.history("orders:9")
        assert [p.data for p in history.publications] == ["a", "b"]
        assert await api.channels() == {}
    assert len(peers) == 4 and len(set(peers)) == 1
