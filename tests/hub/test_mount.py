"""The hub inside an ASGI app (hub/mount.py): a FastAPI app with the hub
mounted at /realtime, under a real uvicorn (its default WebSocket protocol
and tidings.asgi's), under Hypercorn, and on one Redis as two uvicorn
processes and as one `uvicorn --workers 2`; driven by tidings.hub.Client,
plain websockets and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus as WsInvalidStatus

from tidings.asgi import WebSocketProtocol
from tidings.hub import Client, Hub, HubConfig, NamespaceConfig, Publication
from tidings.hub.hooks import Connect, HookContext, Refuse
from tidings.hub.mount import route_path

from ..conftest import (
    RedisServer,
    Served,
    http_request,
    listening,
    serve_uvicorn,
    skip_unless_ci,
    wait_for,
)

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


async def _hypercorn(app: Any, ws: Any) -> Served:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = listening()
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
    "uvicorn-auto": (serve_uvicorn, "auto"),
    "uvicorn-tidings": (serve_uvicorn, WebSocketProtocol),
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
    served = await serve_uvicorn(hub.asgi())
    try:
        answer = await http_request(served.port, "GET", "/healthz")
        assert answer.status == 200
        async with Client(f"ws://127.0.0.1:{served.port}/ws", **FAST) as client:
            offset, epoch = await client.publish("chat:o", 1)
            assert (offset, epoch) == (1, (await hub.history("chat:o")).epoch)
    finally:
        await served.stop()
    assert hub._tasks == []


# -- uvicorn processes on one Redis ----------------------------------------------

APP = textwrap.dedent(
    """
    import os
    from fastapi import FastAPI
    from tidings.hub import Hub, HubConfig, NamespaceConfig
    from tidings.hub.hooks import Connect, HookContext

    hub = Hub(HubConfig(
        demo=False,
        broker=os.environ["TIDINGS_TEST_REDIS"],
        namespaces={"chat": NamespaceConfig(
            allow_anonymous=True, allow_publish=True, history_size=100,
            presence=True,
        )},
    ))

    @hub.on_connect
    async def connect(context: HookContext) -> Connect:
        # Which process the client landed on, for the test to see.
        return Connect(user="", info={"pid": os.getpid(), "node": hub.node})

    app = FastAPI(lifespan=hub.lifespan)
    app.mount("/realtime", hub.asgi())
    """
)


def uvicorn_command(app_dir: Path, sock: socket.socket, ws: str) -> list[str]:
    """uvicorn serving APP (written to ``app_dir``) on the listening
    ``sock``."""
    return [
        *(sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir)),
        *("--fd", str(sock.fileno()), "--ws", ws, "realtime_app:app"),
    ]


def pid_of(client: Client) -> int:
    """The process that served ``client``'s connect (APP's connect hook)."""
    pid: int = client.info["pid"]
    return pid


WS = ["auto", "tidings.asgi:WebSocketProtocol"]


@pytest.mark.parametrize("ws", WS)
async def test_two_uvicorn_processes_on_redis_are_one_hub(
    redis_server: RedisServer, tmp_path: Path, ws: str
) -> None:
    (tmp_path / "realtime_app.py").write_text(APP)
    env = {**os.environ, "TIDINGS_TEST_REDIS": redis_server.url}
    socks, procs = [], []
    try:
        for _ in range(2):
            sock = listening()
            socks.append(sock)
            procs.append(
                subprocess.Popen(
                    [*uvicorn_command(tmp_path, sock, ws), "--log-level", "warning"],
                    pass_fds=[sock.fileno()],
                    env=env,
                )
            )
        urls = [f"ws://127.0.0.1:{s.getsockname()[1]}/realtime/ws" for s in socks]
        async with (
            Client(urls[0], **FAST) as first,
            Client(urls[1], **FAST) as second,
        ):
            assert pid_of(first) == procs[0].pid and pid_of(second) == procs[1].pid
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


#: Most clients opened to find both workers of ``uvicorn --workers 2``.
MOST_CLIENTS = 64


@pytest.mark.parametrize("ws", WS)
async def test_uvicorn_workers_on_redis_are_one_hub(
    redis_server: RedisServer, tmp_path: Path, ws: str
) -> None:
    """One ``uvicorn --workers 2`` command: clients spread over both
    workers are one hub, and the clients of a worker that dies reconnect to
    another and miss nothing."""
    (tmp_path / "realtime_app.py").write_text(APP)
    env = {**os.environ, "TIDINGS_TEST_REDIS": redis_server.url}
    sock = listening()
    # Its own process group: the workers are stopped with it, by its id.
    proc = await asyncio.create_subprocess_exec(
        *uvicorn_command(tmp_path, sock, ws),
        *("--workers", "2", "--log-level", "info", "--no-access-log"),
        pass_fds=[sock.fileno()],
        env=env,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    log: list[str] = []
    draining: asyncio.Future[None] | None = None
    try:
        assert proc.stderr is not None
        # Each worker says so once its lifespan has started its hub.
        async with asyncio.timeout(2 * BOUND):
            while sum("startup complete" in line for line in log) < 2:
                line = await proc.stderr.readline()
                assert line, f"uvicorn ended: {log}"
                log.append(line.decode())
        draining = asyncio.ensure_future(_drain(proc.stderr, log))
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/realtime/ws"
        async with contextlib.AsyncExitStack() as stack:
            # The kernel hands each connection to whichever worker accepts
            # it first: open clients until both have some.
            by_pid: dict[int, list[Client]] = {}
            for _ in range(MOST_CLIENTS):
                client = await stack.enter_async_context(
                    Client(url, **{**FAST, "backoff_initial": 0.5})
                )
                by_pid.setdefault(pid_of(client), []).append(client)
                if len(by_pid) == 2:
                    break
            assert len(by_pid) == 2, f"{MOST_CLIENTS} clients, one worker: {by_pid}"
            (dying, [doomed, *_]), (_, [survivor, *_]) = by_pid.items()
            channel = f"chat:{os.urandom(4).hex()}"
            sub = await doomed.subscribe(channel)
            other = await survivor.subscribe(channel)
            # Across workers, both ways, and presence hub-wide.
            await survivor.publish(channel, "to the other worker")
            await doomed.publish(channel, "and back")
            assert [p.data for p in await take(sub, 2)] == [
                "to the other worker",
                "and back",
            ]
            assert [p.data for p in await take(other, 2)] == [
                "to the other worker",
                "and back",
            ]
            present = {info.info["pid"] for info in await survivor.presence(channel)}
            assert present == set(by_pid)
            # A worker dies: its client reconnects to another and recovers
            # what was published meanwhile, from Redis.
            os.kill(dying, signal.SIGKILL)
            await wait_for(lambda: not doomed.connected, "the connection is lost")
            for i in range(20):
                await survivor.publish(channel, i)
            recovered = await take(sub, 20)
            assert [p.offset for p in recovered] == list(range(3, 23))
            assert [p.data for p in recovered] == list(range(20))
            assert pid_of(doomed) != dying
    finally:
        if draining is not None:
            draining.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(BOUND):
                await proc.wait()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            sock.close()


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    """Read ``stream`` to its end into ``log``, so that it never fills."""
    while line := await stream.readline():
        log.append(line.decode())


def test_hypercorn_is_installed_where_ci_runs() -> None:
    try:
        import hypercorn  # noqa: F401
    except ImportError:
        skip_unless_ci("hypercorn is not installed")


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
