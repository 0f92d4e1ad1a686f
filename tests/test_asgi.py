"""tidings.asgi: the ASGI WebSocket protocol under a real uvicorn, in
process (``uvicorn.Server``) and as ``uvicorn --ws
tidings.asgi:WebSocketProtocol``, serving FastAPI, Starlette and raw ASGI
apps to the websockets library's client and tidings' own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus as WsInvalidStatus

import tidings
from tidings.asgi import WebSocketProtocol

from .asgi_apps import (
    RAW_DISCONNECTS,
    Watched,
    fastapi_app,
    raw_app,
    starlette_app,
)
from .conftest import RawClient, RawConnect, ServeASGI

BOUND = 10

#: A close timeout no test waits out: a shutdown that ends within BOUND did
#: not wait for a client's answer to the close frame.
PATIENT_CLOSE_TIMEOUT = 100 * BOUND


class PatientProtocol(WebSocketProtocol):
    """tidings' protocol with :data:`PATIENT_CLOSE_TIMEOUT`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = PATIENT_CLOSE_TIMEOUT


@contextlib.asynccontextmanager
async def stopped_by_the_test(
    app: Any, ws: type[WebSocketProtocol] = WebSocketProtocol
) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """uvicorn with tidings' protocol (or ``ws``, a subclass) for a test
    that stops it (with ``server.should_exit``): yields the server and its
    port, then waits for it to end, within BOUND."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(app, ws=ws, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve([sock]))
    yield server, sock.getsockname()[1]
    async with asyncio.timeout(BOUND):
        await task


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def read_close_frame(client: RawClient) -> bytes:
    """The payload of the server's next frame, which must be a close frame
    (unmasked, under 126 bytes, as a server's close frame is)."""
    async with asyncio.timeout(BOUND):
        head = await client.reader.readexactly(2)
        payload = await client.reader.readexactly(head[1] & 0x7F)
    assert head[0] == 0x88, head
    return payload


def refusing_with(headers: list[tuple[bytes, bytes]], body: list[bytes]) -> Any:
    """A raw ASGI app that refuses every WebSocket with a 401 denial
    response: ``headers`` and the ``body`` in parts."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send(
            {"type": "websocket.http.response.start", "status": 401, "headers": headers}
        )
        for i, part in enumerate(body):
            await send(
                {
                    "type": "websocket.http.response.body",
                    "body": part,
                    "more_body": i < len(body) - 1,
                }
            )

    return app


@pytest.mark.parametrize("app", [fastapi_app, starlette_app, raw_app])
async def test_echo_text_and_bytes_for_every_framework(
    serve_asgi: ServeASGI, app: Any
) -> None:
    url = await serve_asgi(app)
    async with websockets.connect(url + "/echo") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"\x00\xff"
    async with tidings.connect(url + "/echo") as peer:
        await peer.send("from tidings")
        assert await peer.recv() == "from tidings"


async def test_the_benchmarks_broadcast_reaches_every_client(
    serve_asgi: ServeASGI,
) -> None:
    # benchmarks/asgi.py's broadcast to 1,000, here to three clients.
    url = await serve_asgi(starlette_app)
    async with (
        websockets.connect(url + "/broadcast") as first,
        websockets.connect(url + "/broadcast") as second,
        tidings.connect(url + "/broadcast") as third,
        asyncio.timeout(BOUND),
    ):
        await second.send("from the second")
        assert await first.recv() == "from the second"
        assert await second.recv() == "from the second"
        assert await third.recv() == "from the second"
        await third.send("from the third")
        assert [await first.recv(), await second.recv(), await third.recv()] == [
            "from the third"
        ] * 3


async def test_the_scope_as_uvicorn_gives_it(serve_asgi: ServeASGI) -> None:
    url = await serve_asgi(raw_app, root_path="/base")
    async with websockets.connect(
        url + "/scope?x=1%202", subprotocols=["one", "two"]
    ) as ws:
        scope = json.loads(await ws.recv())
        assert ws.subprotocol == "two"
        assert ws.response.headers["x-app"] == "raw"
        assert "server" in ws.response.headers  # uvicorn's default headers
    assert scope["path"] == "/base/scope"
    assert scope["raw_path"] == "/base/scope"
    assert scope["root_path"] == "/base"
    assert scope["query_string"] == "x=1%202"
    assert scope["scheme"] == "ws"
    assert scope["http_version"] == "1.1"
    assert scope["subprotocols"] == ["one", "two"]
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["server"][0] == "127.0.0.1" and scope["client"][0] == "127.0.0.1"
    assert scope["extensions"] == {"websocket.http.response": {}}
    names = [name for name, _ in scope["headers"]]
    assert "sec-websocket-key" in names and all(n == n.lower() for n in names)


async def test_the_app_closes_with_its_code_and_reason(serve_asgi: ServeASGI) -> None:
    url = await serve_asgi(raw_app)
    async with websockets.connect(url + "/close/4001") as ws:
        with pytest.raises(WsClosed) as info:
            await ws.recv()
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")


async def test_the_client_close_reaches_the_app_as_disconnect(
    serve_asgi: ServeASGI,
) -> None:
    url = await serve_asgi(raw_app)
    RAW_DISCONNECTS.clear()
    async with websockets.connect(url + "/disconnect") as ws:
        await ws.close(4000, "later")
    async with asyncio.timeout(BOUND):
        while not RAW_DISCONNECTS:
            await asyncio.sleep(0.01)  # the app's side is not announced
    assert RAW_DISCONNECTS == [{"code": 4000, "reason": "later"}]


async def test_denial_response_and_refusal(serve_asgi: ServeASGI) -> None:
    url = await serve_asgi(raw_app)
    with pytest.raises(WsInvalidStatus) as info:
        await websockets.connect(url + "/deny")
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["x-why"] == "token"
    assert response.body == b"who are you?"
    with pytest.raises(WsInvalidStatus) as info:
        await websockets.connect(url + "/refuse")
    assert info.value.response.status_code == 403


@pytest.mark.parametrize("client", ["websockets", "tidings"])
async def test_a_frameworks_denial_response_reaches_the_client(
    serve_asgi: ServeASGI, client: str
) -> None:
    # Starlette's Response names its own content-length; sent beside ours,
    # strict clients found no valid HTTP response and never saw the 401.
    url = await serve_asgi(fastapi_app) + "/deny"
    if client == "websockets":
        with pytest.raises(WsInvalidStatus) as info:
            await websockets.connect(url)
        assert info.value.response.status_code == 401
        assert info.value.response.body == b"log in first"
    else:
        # (tidings' client keeps the status and headers of a refusal, not
        # its body.)
        with pytest.raises(tidings.InvalidStatus) as refused:
            await tidings.connect(url)
        assert refused.value.status == 401
        assert ("content-type", "text/plain; charset=utf-8") in refused.value.headers


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param([(b"content-length", b"12")], id="content-length"),
        pytest.param([(b"transfer-encoding", b"chunked")], id="chunked"),
        pytest.param(
            [(b"Content-Length", b"12"), (b"Transfer-Encoding", b"Chunked")],
            id="both",
        ),
    ],
)
async def test_the_apps_framing_headers_are_not_sent_twice(
    serve_asgi: ServeASGI,
    raw_connect: RawConnect,
    framing: list[tuple[bytes, bytes]],
) -> None:
    # The body is sent whole, framed by its length: one Content-Length, and
    # no Transfer-Encoding beside it (RFC 9112 §6.1), chunked or not.
    app = refusing_with([*framing, (b"x-why", b"token")], [b"log in", b" first"])
    url = await serve_asgi(app)
    with pytest.raises(WsInvalidStatus) as info:
        await websockets.connect(url)
    assert info.value.response.status_code == 401
    assert info.value.response.body == b"log in first"
    client = await raw_connect(port_of(url))
    head = await client.handshake()
    assert await client.read_all() == b"log in first"
    fields = [line.lower() for line in head.split(b"\r\n")[1:] if line]
    assert [f for f in fields if f.startswith(b"content-length:")] == [
        b"content-length: 12"
    ]
    assert not [f for f in fields if f.startswith(b"transfer-encoding:")]
    assert b"x-why: token" in fields


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param([(b"content-length", b"20")], id="shorter-than-declared"),
        pytest.param([(b"content-length", b"5")], id="longer-than-declared"),
        pytest.param([(b"content-length", b"twelve")], id="length-not-a-number"),
        pytest.param([(b"transfer-encoding", b"gzip, chunked")], id="a-coding"),
    ],
)
async def test_a_denial_that_breaks_its_own_framing_is_a_500(
    serve_asgi: ServeASGI,
    raw_connect: RawConnect,
    caplog: pytest.LogCaptureFixture,
    framing: list[tuple[bytes, bytes]],
) -> None:
    # As uvicorn answers an HTTP response whose body does not match its
    # content-length; and a transfer coding is not the server's to apply.
    url = await serve_asgi(refusing_with(framing, [b"log in", b" first"]))
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(caplog.handler)
    try:
        client = await raw_connect(port_of(url))
        head = await client.handshake()
        await client.read_all()
    finally:
        logger.removeHandler(caplog.handler)
    assert head.startswith(b"HTTP/1.1 500 ")
    assert "Exception in ASGI application" in caplog.text


UPGRADE = {
    "Host": "127.0.0.1",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.mark.parametrize(
    ("change", "status"),
    [
        pytest.param({"Sec-WebSocket-Key": None}, 400, id="no-key"),
        pytest.param({"Sec-WebSocket-Key": "c2hvcnQ="}, 400, id="short-key"),
        pytest.param({"Sec-WebSocket-Version": "11"}, 426, id="version-11"),
        pytest.param({"Sec-WebSocket-Version": None}, 426, id="no-version"),
        pytest.param({"Sec-WebSocket-Protocol": "chat v1"}, 400, id="subprotocol"),
        pytest.param(
            {"Sec-WebSocket-Extensions": "permessage-deflate; ="}, 400, id="extension"
        ),
    ],
)
async def test_an_upgrade_that_can_never_succeed_never_reaches_the_app(
    serve_asgi: ServeASGI,
    raw_connect: RawConnect,
    change: dict[str, str | None],
    status: int,
) -> None:
    # RFC 6455 §4.2.1 and §4.2.2: whatever the app would say, such a request
    # cannot become a WebSocket; 426 names the version we speak.
    called: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await receive()
        await send({"type": "websocket.close"})  # 403

    port = port_of(await serve_asgi(app))
    fields = {**UPGRADE, **change}
    request = "GET /broken HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.items() if value is not None
    )
    client = await raw_connect(port)
    client.writer.write(request.encode() + b"\r\n")
    async with asyncio.timeout(BOUND):
        head = await client.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    if status == 426:
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in head
    # The app runs in a task: once the next request is answered, a task made
    # for this one would have run too.
    valid = await raw_connect(port)
    async with asyncio.timeout(BOUND):
        assert (await valid.handshake("/valid")).startswith(b"HTTP/1.1 403 ")
    assert called == ["/valid"]


async def test_an_app_that_fails_gets_500_or_1011(
    serve_asgi: ServeASGI, caplog: pytest.LogCaptureFixture
) -> None:
    url = await serve_asgi(raw_app)
    # uvicorn's loggers do not propagate to the root one that caplog watches.
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(caplog.handler)
    try:
        with pytest.raises(WsInvalidStatus) as info:
            await websockets.connect(url + "/crash")
        assert info.value.response.status_code == 500
        async with websockets.connect(url + "/crash-later") as ws:
            with pytest.raises(WsClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd.code == 1011
    finally:
        logger.removeHandler(caplog.handler)
    assert caplog.text.count("Exception in ASGI application") == 2


async def test_uvicorns_size_and_compression_settings_apply(
    serve_asgi: ServeASGI,
) -> None:
    url = await serve_asgi(raw_app, ws_max_size=1000, ws_per_message_deflate=False)
    async with websockets.connect(url + "/echo") as ws:
        assert ws.response.headers.get("sec-websocket-extensions") is None
        await ws.send("x" * 2000)
        with pytest.raises(WsClosed) as info:
            await ws.recv()
    assert info.value.rcvd.code == 1009
    url = await serve_asgi(raw_app)
    async with websockets.connect(url + "/echo") as ws:
        assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
        await ws.send("y" * 500)
        assert await ws.recv() == "y" * 500


async def test_shutdown_closes_open_connections_with_1012() -> None:
    async with (
        stopped_by_the_test(raw_app) as (server, port),
        websockets.connect(f"ws://127.0.0.1:{port}/echo") as ws,
    ):
        server.should_exit = True
        with pytest.raises(WsClosed) as info:
            async with asyncio.timeout(BOUND):
                await ws.recv()
    assert info.value.rcvd.code == 1012


@pytest.mark.parametrize("closing", [False, True], ids=["open", "closing"])
async def test_shutdown_does_not_wait_for_the_clients_close_frame(
    raw_connect: RawConnect, closing: bool
) -> None:
    # uvicorn's own protocols close TCP at once on shutdown (--reload and
    # rolling restarts wait for it), whether the connection was open or the
    # app had closed it and the client never answered.
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if closing:
            await send({"type": "websocket.close", "code": 4000})
        await receive()  # the disconnect, seen by Watched

    watched = Watched(app)
    async with stopped_by_the_test(watched, ws=PatientProtocol) as (server, port):
        client = await raw_connect(port)  # it never answers a close frame
        assert (await client.handshake()).startswith(b"HTTP/1.1 101")
        if closing:
            assert await read_close_frame(client) == (4000).to_bytes(2)
        server.should_exit = True
        if not closing:
            assert await read_close_frame(client) == (
                (1012).to_bytes(2) + b"server restarting"
            )
        assert await client.read_all() == b""  # the server closed TCP
    # uvicorn ended within BOUND, far under the close timeout, and waits for
    # the app's task: the app was told before.
    assert watched.disconnects.get_nowait()["code"] == 1012


async def test_shutdown_before_the_app_answers_connect_is_a_500(
    raw_connect: RawConnect,
) -> None:
    # As uvicorn's own protocols answer: the client gets an HTTP response.
    connected = asyncio.Event()
    then: list[dict[str, Any]] = []

    async def undecided(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        connected.set()
        then.append(await receive())

    async with stopped_by_the_test(undecided) as (server, port):
        client = await raw_connect(port)
        head = asyncio.ensure_future(client.handshake())
        async with asyncio.timeout(BOUND):
            await connected.wait()
        server.should_exit = True
        async with asyncio.timeout(BOUND):
            assert (await head).startswith(b"HTTP/1.1 500 ")
    assert [event["type"] for event in then] == ["websocket.disconnect"]


async def test_a_send_during_shutdown_finds_the_client_gone(
    raw_connect: RawConnect,
) -> None:
    # As with uvicorn's own protocols: the app never sent websocket.close,
    # so its send raises ClientDisconnected, which Starlette turns into
    # WebSocketDisconnect, rather than a RuntimeError about its own close.
    go = asyncio.Event()
    outcome: asyncio.Future[Exception | None] = asyncio.Future()

    async def send_when_told(websocket: StarletteWebSocket) -> None:
        await websocket.accept()
        await go.wait()
        try:
            await websocket.send_text("too late")
        except Exception as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    app = Starlette(routes=[WebSocketRoute("/", send_when_told)])
    async with stopped_by_the_test(app) as (server, port):
        client = await raw_connect(port)
        assert (await client.handshake()).startswith(b"HTTP/1.1 101")
        server.should_exit = True
        assert (await read_close_frame(client))[:2] == (1012).to_bytes(2)
        go.set()  # while the client has not answered the close
        async with asyncio.timeout(BOUND):
            raised = await outcome
        client.close()
    assert isinstance(raised, WebSocketDisconnect), repr(raised)


@pytest.mark.parametrize(
    "http",
    [
        pytest.param({"http": "httptools"}, id="httptools"),
        # h11 bounds a head that arrives in pieces: set its bound above this one.
        pytest.param(
            {"http": "h11", "h11_max_incomplete_event_size": 1 << 20}, id="h11"
        ),
    ],
)
async def test_a_large_cookie_is_uvicorns_to_bound(
    serve_asgi: ServeASGI, http: dict[str, Any]
) -> None:
    # Browsers send every cookie of the site with the upgrade request.
    cookie = "session=" + "x" * (20 << 10)
    url = await serve_asgi(raw_app, **http)
    async with websockets.connect(
        url + "/scope", additional_headers={"Cookie": cookie}
    ) as ws:
        scope = json.loads(await ws.recv())
    assert ["cookie", cookie] in scope["headers"]


def test_the_uvicorn_command_line_takes_the_class() -> None:
    tests = Path(__file__).parent
    env = dict(
        os.environ, PYTHONPATH=f"{tests.parent}{os.pathsep}{tests.parent / 'src'}"
    )
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "tests.asgi_apps:fastapi_app"),
            *("--ws", "tidings.asgi:WebSocketProtocol", "--port", "0"),
            *("--host", "127.0.0.1", "--lifespan", "off"),
        ],
        stderr=subprocess.PIPE,
        env=env,
        cwd=tests.parent,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            if match := re.search(r"running on http://127\.0\.0\.1:(\d+)", line):
                port = int(match[1])
                break
        assert port is not None, "uvicorn did not start"

        async def talk() -> str:
            async with tidings.connect(f"ws://127.0.0.1:{port}/echo") as ws:
                await ws.send("over the command line")
                reply = await ws.recv()
                assert isinstance(reply, str)
                return reply

        assert asyncio.run(asyncio.wait_for(talk(), BOUND)) == "over the command line"
    finally:
        proc.terminate()
        proc.wait(BOUND)
