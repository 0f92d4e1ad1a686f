"""The hub inside an ASGI app (hub/mount.py): a FastAPI app with the hub
mounted at /realtime, under a real uvicorn (its default WebSocket protocol
and tidings.asgi's), under Hypercorn, and as two uvicorn processes on one
Redis; driven by tidings.hub.Client, plain websockets and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus as WsInvalidStatus

from tidings.asgi import WebSocketProtocol
from tidings.hub import Client, Hub, HubConfig, NamespaceConfig, Publication
from tidings.hub.hooks import Connect, HookContext, Refuse
from tidings.hub.mount import route_path

from ..conftest import RedisServer, http_request, skip_unless_ci, wait_for

BOUND = 10
FAST = {"backoff_initial": 0.05, "backoff_max": 0.2, "timeout": BOUND}

NAMESPACES = {
    "chat": NamespaceConfig(
        allow_anonymous=True,
        allow_publish=True,
        history_size=1000,
        presence=True,
        join_leave=True,
    ),
}


def make_hub(**options: Any) -> Hub:
    return Hub(HubConfig(demo=False, namespaces=NAMESPACES, **options))


def make_app(hub: Hub) -> FastAPI:
    """The application of docs/asgi.md: the hub mounted at /realtime, and
    a view that publishes through the in-process API."""
    app = FastAPI(lifespan=hub.lifespan)
    app.mount("/realtime", hub.asgi())

    @app.post("/announce/{channel}")
    async def announce(channel: str, text: str) -> dict[str, Any]:
        offset, epoch = await hub.publish(channel, {"text": text})
        return {"offset": offset, "epoch": epoch}

    return app


class Served:
    """An app under a server in this process: its port, and a stop."""

    def __init__(self, port: int, stop: Callable[[], Awaitable[None]]) -> None:
        self.port = port
        self.stop = stop
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/realtime/ws"


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def _uvicorn(app: Any, ws: Any) -> Served:
    # The socket listens before uvicorn starts: clients wait in the kernel
    # until the lifespan has started the hub and uvicorn accepts.
    sock = _listening()
    config = uvicorn.Config(app, ws=ws, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve([sock]))

    async def stop() -> None:
        if not task.done():
            server.should_exit = True
            async with asyncio.timeout(BOUND):
                await task
        sock.close()

    return Served(sock.getsockname()[1], stop)


async def _hypercorn(app: Any, ws: Any) -> Served:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = _listening()
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.loglevel = "WARNING"
    stopping = asyncio.Event()
    task = asyncio.ensure_future(
        serve(app, config, shutdown_trigger=stopping.wait)  # type: ignore[arg-type]
    )

    async def stop() -> None:
        stopping.set()
        async with asyncio.timeout(BOUND):
            await task
        # Hypercorn closes the socket it was given itself.
        with contextlib.suppress(OSError):
            sock.close()

    return Served(sock.getsockname()[1], stop)


SERVERS = {
    # uvicorn's default WebSocket protocol ("auto": websockets), and tidings'.
    "uvicorn-auto": (_uvicorn, "auto"),
    "uvicorn-tidings": (_uvicorn, WebSocketProtocol),
    "hypercorn": (_hypercorn, None),
}


@pytest.fixture(params=list(SERVERS))
async def serve_app(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[Any], Awaitable[Served]]]:
    """``served = await serve_app(app)``: the app under each server in turn
    (uvicorn with both WebSocket protocols, Hypercorn), stopped after the
    test."""
    start, ws = SERVERS[request.param]
    if request.param == "hypercorn":
        pytest.importorskip("hypercorn")
    served: list[Served] = []

    async def serve(app: Any) -> Served:
        one = await start(app, ws)
        served.append(one)
        return one

    yield serve
    for one in served:
        await one.stop()


async def take(sub: Any, n: int) -> list[Publication]:
    out = []
    async with asyncio.timeout(BOUND):
        async for pub in sub:
            out.append(pub)
            if len(out) == n:
                break
    return out


# -- route_path: what the mount sees of a path ---------------------------------


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/realtime/ws", "/realtime", "/ws"),  # Starlette >= 0.33
        ("/ws", "/realtime", "/ws"),  # older Starlette stripped the path
        ("/realtime", "/realtime", "/"),
        ("/realtimes/ws", "/realtime", "/realtimes/ws"),  # not below it
        ("/ws", "", "/ws"),
        ("", "", "/"),
    ],
)
def test_route_path_is_the_path_below_the_mount_point(
    path: str, root: str, expected: str
) -> None:
    assert route_path({"path": path, "root_path": root}) == expected


# -- one process ---------------------------------------------------------------


async def test_client_subscribes_publishes_sees_presence_and_recovers(
    serve_app: Any,
) -> None:
    hub = make_hub()
    served = await serve_app(make_app(hub))
    async with (
        Client(served.ws, **FAST) as alice,
        Client(served.ws, **FAST) as bob,
    ):
        sub = await alice.subscribe("chat:a")
        await bob.subscribe("chat:a")
        assert await bob.publish("chat:a", {"text": "hi"}) == (1, sub.epoch)
        [pub] = await take(sub, 1)
        assert pub.data == {"text": "hi"} and pub.info is not None
        assert pub.info.client == bob.client_id
        present = {info.client for info in await alice.presence("chat:a")}
        assert present == {alice.client_id, bob.client_id}
        # Dropped as too slow, alice reconnects and recovers what she missed.
        [session] = [
            s for s in hub._sessions if s.info and s.info.client == alice.client_id
        ]
        hub.drop_slow(session.ws)
        for i in range(20):
            await hub.publish("chat:a", i)
        recovered = await take(sub, 20)
        assert [p.offset for p in recovered] == list(range(2, 22))
        assert [p.data for p in recovered] == list(range(20))


async def test_plain_websockets_speak_the_protocol_and_a_view_publishes(
    serve_app: Any,
) -> None:
    hub = make_hub()
    served = await serve_app(make_app(hub))
    async with asyncio.timeout(BOUND), websockets.connect(served.ws) as ws:
        await ws.send(json.dumps({"id": 1, "op": "connect"}))
        connected = json.loads(await ws.recv())
        assert connected["id"] == 1 and connected["result"]["client"]
        await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": "chat:v"}))
        assert json.loads(await ws.recv())["result"]["offset"] == 0
        # A FastAPI view publishes with `await hub.publish(...)`.
        answer = await http_request(served.port, "POST", "/announce/chat:v?text=hey")
        assert answer.status == 200, answer
        push = json.loads(await ws.recv())
        while "pub" not in push:  # its own join comes first
            assert push.get("join") is not None, push
            push = json.loads(await ws.recv())
        assert push["channel"] == "chat:v"
        assert push["pub"]["data"] == {"text": "hey"}
        assert push["pub"]["offset"] == answer.json()["offset"] == 1
        await ws.send("not json")
        assert json.loads(await ws.recv())["error"]["code"] == 400


async def test_the_http_endpoints_are_served_under_the_mount_point(
    serve_app: Any,
) -> None:
    hub = make_hub(max_message_size=1000)
    served = await serve_app(make_app(hub))
    port = served.port
    health = await http_request(port, "GET", "/realtime/healthz")
    assert health.status == 200 and health.json()["status"] == "ok"
    metrics = await http_request(port, "GET", "/realtime/metrics")
    assert metrics.status == 200 and b"tidings_" in metrics.body
    script = await http_request(port, "GET", "/realtime/tidings.js")
    assert script.status == 200 and b"class Hub" in script.body
    published = await http_request(
        port, "POST", "/realtime/api/publish", {"channel": "chat:h", "data": 1}
    )
    assert published.status == 200, published
    assert published.json()["offset"] == 1
    history = await http_request(port, "GET", "/realtime/api/history?channel=chat:h")
    assert [p["data"] for p in history.json()["publications"]] == [1]
    assert (await http_request(port, "GET", "/realtime/nothing")).status == 404
    # /ws without an upgrade: what to do instead.
    plain = await http_request(port, "GET", "/realtime/ws")
    assert plain.status == 426
    # A body over max_message_size is refused, declared or not.
    large = await http_request(
        port, "POST", "/realtime/api/publish", {"channel": "chat:h", "data": "x" * 2000}
    )
    assert large.status == 413
    # The app's own routes are the app's.
    assert (await http_request(port, "GET", "/elsewhere")).status == 404


async def test_a_chunked_body_over_the_limit_is_refused_before_the_end(
    serve_app: Any,
) -> None:
    hub = make_hub(max_message_size=1000)
    served = await serve_app(make_app(hub))
    async with asyncio.timeout(BOUND):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(
            b"POST /realtime/api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        # More than the limit, and no last chunk: the answer cannot wait
        # for the end of the body.
        writer.write(b"800\r\n" + b"x" * 0x800 + b"\r\n")
        head = await reader.readuntil(b"\r\n")
        writer.close()
    assert b" 413 " in head


async def test_sse_poll_and_command_through_the_mount(serve_app: Any) -> None:
    hub = make_hub()
    served = await serve_app(make_app(hub))
    port = served.port
    # Server-Sent Events: the stream carries the subscribe reply, then pubs.
    async with asyncio.timeout(BOUND):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /realtime/sse?channel=chat:s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        seen = await reader.readuntil(b'"id":2,')  # the subscribe reply
        assert b" 200 " in seen and b"text/event-stream" in seen
        command = await http_request(
            port,
            "POST",
            "/realtime/command",
            {"id": 7, "op": "publish", "channel": "chat:s", "data": "via POST"},
        )
        assert command.status == 200, command
        assert command.json()["result"]["offset"] == 1
        event = await reader.readuntil(b"\n\n")
        while b"via POST" not in event:
            event = await reader.readuntil(b"\n\n")
        epoch = json.loads(event.split(b"data: ", 1)[1])["pub"]["epoch"]
        assert b"id: 1:" in event
        # The stream's session goes when the client does.
        writer.close()
        await wait_for(lambda: hub.subscriber_count("chat:s") == 0, "stream ends")
    # A poll held until a publication.
    path = f"/realtime/poll?channel=chat:s&since=1&epoch={epoch}"
    poll = asyncio.ensure_future(http_request(port, "GET", path))
    await wait_for(lambda: hub.subscriber_count("chat:s") == 1, "the poll waits")
    await hub.publish("chat:s", "news")
    answer = await poll
    assert answer.status == 200, answer
    assert [p["data"] for p in answer.json()["publications"]] == ["news"]


async def test_a_held_poll_ends_when_its_client_goes_away(serve_app: Any) -> None:
    hub = make_hub(poll_timeout=10 * BOUND)
    served = await serve_app(make_app(hub))
    offset, epoch = await hub.publish("chat:p", 0)
    async with asyncio.timeout(BOUND):
        _, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(
            f"GET /realtime/poll?channel=chat:p&since={offset}&epoch={epoch}"
            " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        await wait_for(lambda: hub.subscriber_count("chat:p") == 1, "the poll waits")
        writer.close()
    # Not at poll_timeout: as soon as the server tells the app.
    await wait_for(
        lambda: hub.subscriber_count("chat:p") == 0, "the poll ends", timeout=BOUND
    )


async def test_a_connect_hook_reads_the_cookie_and_refuses_without_it(
    serve_app: Any,
) -> None:
    hub = make_hub()

    @hub.on_connect
    async def authenticate(context: HookContext) -> Connect:
        name = context.cookies.get("session")
        if name is None:
            raise Refuse(401, "log in first")
        return Connect(user=name, info={"name": name.title()})

    served = await serve_app(make_app(hub))
    async with Client(served.ws, headers=[("Cookie", "session=ada")]) as ada:
        assert ada.user == "ada" and ada.info == {"name": "Ada"}
        sub = await ada.subscribe("chat:k")
        await ada.publish("chat:k", "hello")
        [pub] = await take(sub, 1)
        assert pub.info is not None and pub.info.info == {"name": "Ada"}
    async with asyncio.timeout(BOUND), websockets.connect(served.ws) as ws:
        await ws.send(json.dumps({"id": 1, "op": "connect"}))
        reply = json.loads(await ws.recv())
        assert reply["error"] == {"code": 401, "message": "log in first"}


async def test_the_lifespan_starts_and_stops_the_hub(serve_app: Any) -> None:
    hub = make_hub()
    started: list[bool] = []
    original = hub.broker.start

    async def start(*args: Any) -> None:
        started.append(True)
        await original(*args)

    hub.broker.start = start  # type: ignore[method-assign]
    served = await serve_app(make_app(hub))
    # The first request waits for the lifespan: the hub is up by then.
    assert (await http_request(served.port, "GET", "/realtime/healthz")).status == 200
    assert started == [True]
    with pytest.raises(AssertionError):
        hub.port  # noqa: B018  (no socket of its own)
    async with Client(served.ws, **FAST) as client:
        await client.subscribe("chat:l")
        assert hub.connection_count() == 1
        await served.stop()
    # Stopped: its connections closed, its tasks ended, its broker closed.
    assert hub.connection_count() == 0
    assert hub._tasks == []
    assert not hub.asgi()._serving


async def test_a_slow_client_is_dropped_with_4005(serve_app: Any) -> None:
    hub = make_hub(max_outbound=64 * 1024)
    served = await serve_app(make_app(hub))
    # A client that reads nothing for now: its messages pile up in the
    # kernel, then in the server, then in the mount's queue.
    async with asyncio.timeout(BOUND):
        ws = await websockets.connect(served.ws, max_queue=1)
    try:
        await ws.send(json.dumps({"id": 1, "op": "connect"}))
        await ws.send(json.dumps({"id": 2, "op": "subscribe", "channel": "chat:z"}))
        await wait_for(lambda: hub.subscriber_count("chat:z") == 1, "subscribed")
        data = "x" * 16384
        for _ in range(2000):  # far more than the kernel and the server hold
            await hub.publish("chat:z", data)
            if hub.metrics.dropped_slow:
                break
        assert hub.metrics.dropped_slow == 1
        with pytest.raises(WsClosed) as closed:
            async with asyncio.timeout(BOUND):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4005
    finally:
        await ws.close()


async def test_another_origin_is_refused_at_the_upgrade(serve_app: Any) -> None:
    hub = make_hub()
    served = await serve_app(make_app(hub))
    with pytest.raises((WsInvalidStatus, WsClosed)):
        async with asyncio.timeout(BOUND):
            async with websockets.connect(
                served.ws, origin="https://evil.example"
            ) as ws:
                await ws.recv()
    assert hub.metrics.errors["origin"] == 1


async def test_the_hub_app_alone_runs_its_own_lifespan() -> None:
    hub = make_hub()
    served = await _uvicorn(hub.asgi(), "auto")
    try:
        answer = await http_request(served.port, "GET", "/healthz")
        assert answer.status == 200
        async with Client(f"ws://127.0.0.1:{served.port}/ws", **FAST) as client:
            offset, epoch = await client.publish("chat:o", 1)
            assert (offset, epoch) == (1, (await hub.history("chat:o")).epoch)
    finally:
        await served.stop()
    assert hub._tasks == []


# -- two uvicorn processes on one Redis ------------------------------------------

APP = textwrap.dedent(
    """
    import os
    from fastapi import FastAPI
    from tidings.hub import Hub, HubConfig, NamespaceConfig

    hub = Hub(HubConfig(
        demo=False,
        broker=os.environ["TIDINGS_TEST_REDIS"],
        namespaces={"chat": NamespaceConfig(
            allow_anonymous=True, allow_publish=True, history_size=100,
            presence=True,
        )},
    ))
    app = FastAPI(lifespan=hub.lifespan)
    app.mount("/realtime", hub.asgi())
    """
)


@pytest.mark.parametrize("ws", ["auto", "tidings.asgi:WebSocketProtocol"])
async def test_two_uvicorn_processes_on_redis_are_one_hub(
    redis_server: RedisServer, tmp_path: Path, ws: str
) -> None:
    (tmp_path / "realtime_app.py").write_text(APP)
    env = {**os.environ, "TIDINGS_TEST_REDIS": redis_server.url}
    socks, procs = [], []
    try:
        for _ in range(2):
            sock = _listening()
            socks.append(sock)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "--app-dir",
                        str(tmp_path),
                        "--fd",
                        str(sock.fileno()),
                        "--ws",
                        ws,
                        "--log-level",
                        "warning",
                        "realtime_app:app",
                    ],
                    pass_fds=[sock.fileno()],
                    env=env,
                )
            )
        urls = [f"ws://127.0.0.1:{s.getsockname()[1]}/realtime/ws" for s in socks]
        async with (
            Client(urls[0], **FAST) as first,
            Client(urls[1], **FAST) as second,
        ):
            channel = f"chat:{os.urandom(4).hex()}"
            sub = await first.subscribe(channel)
            await second.subscribe(channel)
            offset, _ = await second.publish(channel, "across")
            [pub] = await take(sub, 1)
            assert (pub.offset, pub.data) == (offset, "across")
            clients = {info.client for info in await first.presence(channel)}
            assert clients == {first.client_id, second.client_id}
            # The HTTP API of either process publishes to both.
            port = socks[1].getsockname()[1]
            answer = await http_request(
                port, "POST", "/realtime/api/publish", {"channel": channel, "data": 2}
            )
            assert answer.status == 200, answer
            [pub] = await take(sub, 1)
            assert pub.data == 2
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(BOUND)
        for sock in socks:
            sock.close()


def test_hypercorn_is_installed_where_ci_runs() -> None:
    try:
        import hypercorn  # noqa: F401
    except ImportError:
        skip_unless_ci("hypercorn is not installed")


# -- the docs' example -------------------------------------------------------------


def doc_block(page: str, starts: str) -> str:
    """The ```python block of ``page`` whose code starts with ``starts``."""
    text = (Path(__file__).parents[2] / page).read_text()
    for block in text.split("```python\n")[1:]:
        code = block.split("```", 1)[0]
        if code.startswith(starts):
            return code
    raise AssertionError(f"no block of {page} starts with {starts!r}")


async def test_the_fastapi_example_of_docs_asgi_md_runs(serve_app: Any) -> None:
    namespace: dict[str, Any] = {}
    exec(doc_block("docs/asgi.md", "from fastapi import FastAPI"), namespace)
    served = await serve_app(namespace["app"])
    async with Client(served.ws, **FAST) as client:
        sub = await client.subscribe("orders:shipped")
        answer = await http_request(served.port, "POST", "/orders/7/ship")
        assert answer.status == 200, answer
        [pub] = await take(sub, 1)
        assert pub.data == {"id": 7}


async def test_the_connect_hook_of_docs_asgi_md_runs(serve_app: Any) -> None:
    class Sessions:
        async def user_from_cookie(self, cookie: str | None) -> Any:
            if cookie != "s3cret":
                return None
            return type("User", (), {"id": "42", "name": "Ada"})()

    namespace: dict[str, Any] = {}
    exec(doc_block("docs/asgi.md", "from fastapi import FastAPI"), namespace)
    namespace["sessions"] = Sessions()
    exec(doc_block("docs/asgi.md", "from tidings.hub.hooks import"), namespace)
    served = await serve_app(namespace["app"])
    async with Client(served.ws, headers=[("Cookie", "session=s3cret")]) as client:
        assert (client.user, client.info) == ("42", {"name": "Ada"})
    async with asyncio.timeout(BOUND), websockets.connect(served.ws) as ws:
        await ws.send(json.dumps({"id": 1, "op": "connect"}))
        assert json.loads(await ws.recv())["error"]["code"] == 401


async def test_a_full_mounted_hub_refuses_new_clients_only(serve_app: Any) -> None:
    hub = make_hub(max_connections=1)
    served = await serve_app(make_app(hub))
    async with asyncio.timeout(BOUND):
        first = await websockets.connect(served.ws)
    try:
        await first.send(json.dumps({"id": 1, "op": "connect"}))
        assert "result" in json.loads(await first.recv())
        with pytest.raises((WsInvalidStatus, WsClosed)):
            async with websockets.connect(served.ws) as second:
                await second.recv()
        sse = await http_request(served.port, "GET", "/realtime/sse?channel=chat:a")
        assert sse.status == 503, sse
        body = {"channel": "chat:a", "data": 1}
        published = await http_request(
            served.port, "POST", "/realtime/api/publish", body
        )
        assert published.status == 200, published
    finally:
        await first.close()
