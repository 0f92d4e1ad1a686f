"""Interop with a real browser: Debian's Chromium, driven by playwright-core.

Each test starts a tidings server whose ``process_request`` serves a page
over plain HTTP (Chromium won't let about:blank or data: pages reach
127.0.0.1), and that page opens ``new WebSocket(...)`` back to the same
server, or to a FastAPI or Starlette app under uvicorn with tidings'
protocol (``--ws tidings.asgi:WebSocketProtocol``). The page runs a scenario
and resolves ``window.__scenario`` with what it saw;
``tests/interop/node/browser.mjs`` returns that to the test, which checks it
against what the server saw.

For wss://, the fixture issues a certificate from the session's trustme CA
and starts Chromium with ``--ignore-certificate-errors-spki-list`` naming
that certificate's key: Chromium accepts that one certificate, and still
refuses any other that it can't verify.

Needs ``chromium`` and ``npm ci`` in tests/interop/node (``scripts/test``
installs both); without them the tests skip, unless CI is set.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import select
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import tidings
from tidings import ConnectionClosed, HTTPResponse, WebSocket
from tidings.protocol import Request

from ..asgi_apps import Watched, fastapi_app, starlette_app
from ..conftest import ServeASGI

NODE_DIR = Path(__file__).parent / "node"
HELPERS = (NODE_DIR / "page_helpers.js").read_text()
# What echoSamples() of page_helpers.js returns from an echo server.
SAMPLE_ECHOES = [
    {"type": "text", "text": "hello"},
    {"type": "text", "text": "ü€𝄞 unicode"},
    {"type": "text", "text": ""},
    {"type": "binary", "hex": "000102ff"},
    {"type": "binary", "hex": ""},
]

#: Seconds for anything one step waits on (a page's scenario, a handler).
BOUND = 20
MiB = 1 << 20


def _missing(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI must have it (scripts/test installs it)")
    pytest.skip(reason)


# -- the browser ---------------------------------------------------------------


class Browser:
    """One Chromium for the module, behind ``node browser.mjs``."""

    def __init__(self, proc: subprocess.Popen[bytes], tls: ssl.SSLContext) -> None:
        self.proc = proc
        #: A server context whose certificate this browser accepts.
        self.tls = tls
        self.version = ""
        self._buffer = b""
        self._lock = threading.Lock()

    def read_reply(self, timeout: float) -> Any:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"browser.mjs said nothing for {timeout} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"browser.mjs exited ({self.proc.poll()})")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _run(self, url: str) -> Any:
        assert self.proc.stdin is not None
        with self._lock:
            command = {"url": url, "timeout_ms": BOUND * 1000}
            self.proc.stdin.write(json.dumps(command).encode() + b"\n")
            self.proc.stdin.flush()
            reply = self.read_reply(BOUND + 10)
        if not reply["ok"]:
            console = "\n".join(reply["console"])
            pytest.fail(f"the page failed: {reply['error']}\nconsole:\n{console}")
        return reply["result"]

    async def run(self, url: str) -> Any:
        """Open ``url`` and return what its scenario resolved to."""
        # The harness's pipe is read on a thread, so that this loop keeps
        # serving the page and its WebSockets meanwhile.
        return await asyncio.to_thread(self._run, url)


def _spki_sha256(cert: trustme.LeafCert) -> str:
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def browser(tls_ca: trustme.CA) -> Iterator[Browser]:
    chromium = os.environ.get("TIDINGS_CHROMIUM") or shutil.which("chromium")
    if chromium is None or not os.path.exists(chromium):
        _missing("Chromium is not installed (apt-get install chromium)")
    node = shutil.which("node")
    if node is None:
        _missing("Node.js is not installed")
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        _missing("playwright-core is not installed (npm ci in tests/interop/node)")
    # Chromium accepts this one certificate's key, and no other untrusted
    # one: the wss:// test still has a real TLS handshake to get right.
    cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(tls)
    flag = f"--ignore-certificate-errors-spki-list={_spki_sha256(cert)}"
    proc = subprocess.Popen(
        [node, "browser.mjs", flag],
        cwd=NODE_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "TIDINGS_CHROMIUM": chromium},
    )
    browser = Browser(proc, tls)
    try:
        ready = browser.read_reply(60)
        if not ready["ready"]:
            pytest.fail(f"Chromium did not start: {ready['error']}")
        browser.version = ready["version"]
        yield browser
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # browser.mjs closes Chromium and exits
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- pages ---------------------------------------------------------------------


def page_html(scenario: str, args: dict[str, Any]) -> bytes:
    """A page that runs ``scenario``, the body of an async JS function."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tidings interop</title>
<script>{HELPERS}</script>
<script>
const ARGS = {json.dumps(args)};
window.__scenario = (async () => {{
{scenario}
}})();
</script></head><body></body></html>
""".encode()


def serve_page(
    scenario: str, args: dict[str, Any] | None = None
) -> Callable[[Request], HTTPResponse | None]:
    """A ``process_request`` that serves the page at / and upgrades the rest."""
    html = page_html(scenario, args or {})

    def process_request(request: Request) -> HTTPResponse | None:
        if request.headers.get("Upgrade") is not None:
            return None
        if request.path == "/":
            return HTTPResponse(
                200, html, [("Content-Type", "text/html; charset=utf-8")]
            )
        return HTTPResponse(404, "not found")

    return process_request


@asynccontextmanager
async def page_server(
    handler: Callable[[WebSocket], Awaitable[None]],
    scenario: str,
    args: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[tidings.Server]:
    async with tidings.serve(
        handler,
        "127.0.0.1",
        0,
        process_request=serve_page(scenario, args),
        **options,
    ) as server:
        yield server


@dataclass
class Seen:
    """What the server side saw of one connection."""

    messages: list[str | bytes]
    subprotocol: str | None = None
    deflate: bool = False
    close: tuple[int, str] | None = None


class Recorder:
    """Handlers that record what they see; ``await recorder.next()`` waits
    for the next connection's handler to finish."""

    def __init__(self) -> None:
        self.done: asyncio.Queue[Seen] = asyncio.Queue()

    async def next(self) -> Seen:
        async with asyncio.timeout(BOUND):
            return await self.done.get()

    def echo(self) -> Callable[[WebSocket], Awaitable[None]]:
        async def handler(ws: WebSocket) -> None:
            seen = Seen([], ws.subprotocol, ws.protocol.deflate_params is not None)
            try:
                async for message in ws:
                    seen.messages.append(message)
                    await ws.send(message)
                seen.close = (ws.close_code or 0, ws.close_reason)
            except ConnectionClosed as exc:
                seen.close = (exc.code, exc.reason)
                raise
            finally:
                self.done.put_nowait(seen)

        return handler


def http_url(server: tidings.Server, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.port}/"


# -- tests ---------------------------------------------------------------------


async def test_text_and_binary_echo(browser: Browser) -> None:
    scenario = """
    const peer = await Peer.open(WS_BASE + "/echo");
    const echoes = await echoSamples(peer);
    const close = await peer.close(1000, "done");
    return {echoes, close};
    """
    recorder = Recorder()
    async with page_server(recorder.echo(), scenario) as server:
        page = await browser.run(http_url(server))
        seen = await recorder.next()
    assert page["echoes"] == SAMPLE_ECHOES
    assert seen.messages == ["hello", "ü€𝄞 unicode", "", b"\x00\x01\x02\xff", b""]
    # tidings echoes the code of the page's close frame, not its reason.
    assert page["close"] == {"code": 1000, "reason": "", "wasClean": True}
    assert seen.close == (1000, "done")


async def test_one_mebibyte_messages_echo_intact(browser: Browser) -> None:
    # Exactly 1 MiB each, which is also tidings' default max_message_size.
    scenario = """
    const peer = await Peer.open(WS_BASE + "/echo");
    const text = "ü€𝄞abcdefg".repeat(65536);  // 16 bytes of UTF-8, 65536 times
    const binary = randomBytes(1 << 20);
    peer.send(text);
    const textEcho = await peer.recv();
    peer.send(binary);
    const binaryEcho = await peer.recv();
    await peer.close(1000);
    return {
        textBytes: toBytes(text).length,
        textSame: textEcho === text,
        textSha: await sha256(text),
        binarySame: sameBytes(binaryEcho, binary),
        binarySha: await sha256(binary),
    };
    """
    recorder = Recorder()
    async with page_server(recorder.echo(), scenario) as server:
        page = await browser.run(http_url(server))
        seen = await recorder.next()
    assert page["textBytes"] == MiB
    assert page["textSame"] is True
    assert page["binarySame"] is True
    text, binary = seen.messages
    assert isinstance(text, str) and isinstance(binary, bytes)
    assert hashlib.sha256(text.encode()).hexdigest() == page["textSha"]
    assert hashlib.sha256(binary).hexdigest() == page["binarySha"]
    assert len(binary) == MiB


async def test_fragmented_messages_from_server_arrive_whole(browser: Browser) -> None:
    big = [bytes([i]) * 16384 for i in range(64)]  # 1 MiB in 64 frames

    async def handler(ws: WebSocket) -> None:
        await ws.send(["frag", "mented ", "", "tëxt 𝄞"])
        await ws.send([b"\x00\x01", b"", b"\xff"])
        await ws.send(big)
        await ws.send("after")
        await ws.recv()  # the page says when it has everything

    scenario = """
    const peer = await Peer.open(WS_BASE + "/fragments");
    const text = describe(await peer.recv());
    const binary = describe(await peer.recv());
    const big = await peer.recv();
    const after = describe(await peer.recv());
    peer.send("thanks");
    const close = await peer.closed;
    return {text, binary, bigSha: await sha256(big), after, close};
    """
    async with page_server(handler, scenario) as server:
        page = await browser.run(http_url(server))
    assert page["text"] == {"type": "text", "text": "fragmented tëxt 𝄞"}
    assert page["binary"] == {"type": "binary", "hex": "0001ff"}
    assert page["bigSha"] == hashlib.sha256(b"".join(big)).hexdigest()
    assert page["after"] == {"type": "text", "text": "after"}
    assert page["close"] == {"code": 1000, "reason": "", "wasClean": True}


class CountingProxy:
    """A loopback TCP relay that counts the bytes each way, to see whether
    compression really shrinks what crosses the wire."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.upstream = 0  # browser to server
        self.downstream = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers.append(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, upstream=True),
            self._pipe(up_reader, writer, upstream=False),
            return_exceptions=True,
        )
        writer.close()
        up_writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool
    ) -> None:
        while chunk := await reader.read(65536):
            if upstream:
                self.upstream += len(chunk)
            else:
                self.downstream += len(chunk)
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


@pytest.mark.parametrize("compression", [True, False], ids=["deflate", "plain"])
async def test_permessage_deflate_negotiated_and_used(
    browser: Browser, compression: bool
) -> None:
    # 1 MiB of very compressible text each way, through a byte-counting relay.
    scenario = """
    const peer = await Peer.open(`ws://127.0.0.1:${ARGS.proxyPort}/deflate`);
    const text = "tidings ".repeat(131072);
    peer.send(text);
    const echo = await peer.recv();
    await peer.close(1000);
    return {extensions: peer.ws.extensions, same: echo === text};
    """
    recorder = Recorder()
    options: dict[str, Any] = {} if compression else {"compression": None}
    async with (
        tidings.serve(recorder.echo(), "127.0.0.1", 0, **options) as ws_server,
        CountingProxy(ws_server.port or 0) as proxy,
        # This one only serves the page.
        page_server(Recorder().echo(), scenario, {"proxyPort": proxy.port}) as server,
    ):
        page = await browser.run(http_url(server))
        seen = await recorder.next()
    assert page["same"] is True
    assert seen.deflate is compression
    if compression:
        # Chromium offers "permessage-deflate; client_max_window_bits"; tidings
        # limits both windows to 12 bits, and Chromium agrees.
        assert page["extensions"] == (
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        )
        assert proxy.upstream < 64 * 1024
        assert proxy.downstream < 64 * 1024
    else:
        assert page["extensions"] == ""
        assert proxy.upstream > MiB
        assert proxy.downstream > MiB


async def test_subprotocol_chosen_by_server_preference(browser: Browser) -> None:
    scenario = """
    const peer = await Peer.open(WS_BASE + "/chat", ["chat.v2", "chat.v1"]);
    peer.send("which?");
    const echo = await peer.recv();
    await peer.close(1000);
    return {protocol: peer.ws.protocol, echo};
    """
    recorder = Recorder()
    async with page_server(
        recorder.echo(), scenario, subprotocols=["chat.v1", "chat.v2"]
    ) as server:
        page = await browser.run(http_url(server))
        seen = await recorder.next()
    assert page == {"protocol": "chat.v1", "echo": "which?"}
    assert seen.subprotocol == "chat.v1"
    assert seen.messages == ["which?"]


async def test_no_common_subprotocol_fails_in_the_browser(browser: Browser) -> None:
    # The page offers subprotocols, the server speaks none of them. RFC 6455
    # would let the server accept without one, but Chromium must then fail
    # the connection and no handler should run for a dead socket: tidings
    # refuses with a 400 that names both lists (visible in the network
    # panel). The page sees an error and an unclean close 1006, never open.
    scenario = """
    const peer = new Peer(WS_BASE + "/chat", ["chat.v3"]);
    const close = await peer.closed;
    return {events: peer.events, close, protocol: peer.ws.protocol};
    """
    recorder = Recorder()
    async with page_server(
        recorder.echo(), scenario, subprotocols=["chat.v1"]
    ) as server:
        page = await browser.run(http_url(server))
    assert page["events"] == ["error", "close"]
    assert page["close"] == {"code": 1006, "reason": "", "wasClean": False}
    assert recorder.done.empty()  # no handler ran


async def test_server_close_code_and_reason_seen_by_page(browser: Browser) -> None:
    async def handler(ws: WebSocket) -> None:
        message = await ws.recv()
        await ws.close(4001, f"bye {message}")

    scenario = """
    const peer = await Peer.open(WS_BASE + "/close");
    peer.send("page");
    return await peer.closed;
    """
    async with page_server(handler, scenario) as server:
        page = await browser.run(http_url(server))
    assert page == {"code": 4001, "reason": "bye page", "wasClean": True}


@pytest.mark.parametrize(
    ("call", "code", "reason"),
    [('4002, "page says bye ✓"', 4002, "page says bye ✓"), ("", 1005, "")],
    ids=["code-and-reason", "no-code"],
)
async def test_page_close_code_and_reason_seen_by_server(
    browser: Browser, call: str, code: int, reason: str
) -> None:
    scenario = f"""
    const peer = await Peer.open(WS_BASE + "/close");
    peer.send("hi");
    await peer.recv();
    peer.ws.close({call});
    return await peer.closed;
    """
    recorder = Recorder()
    async with page_server(recorder.echo(), scenario) as server:
        page = await browser.run(http_url(server))
        seen = await recorder.next()
    assert seen.messages == ["hi"]
    assert seen.close == (code, reason)
    # tidings answers with the same code (none for none), without the reason.
    assert page == {"code": code, "reason": "", "wasClean": True}


async def test_wss_page_and_socket(browser: Browser) -> None:
    # The page itself comes over https:// from the same TLS server.
    scenario = """
    const peer = await Peer.open(WS_BASE + "/secure");
    peer.send("over tls");
    const text = describe(await peer.recv());
    const binary = randomBytes(100000);
    peer.send(binary);
    const binarySame = sameBytes(await peer.recv(), binary);
    peer.send("close please");
    const close = await peer.closed;
    return {url: peer.ws.url, extensions: peer.ws.extensions, text, binarySame, close};
    """

    async def handler(ws: WebSocket) -> None:
        async for message in ws:
            if message == "close please":
                await ws.close(4003, "tls bye")
                return
            await ws.send(message)

    async with page_server(handler, scenario, ssl=browser.tls) as server:
        page = await browser.run(http_url(server, "https"))
    assert page["url"] == f"wss://127.0.0.1:{server.port}/secure"
    assert page["extensions"].startswith("permessage-deflate")
    assert page["text"] == {"type": "text", "text": "over tls"}
    assert page["binarySame"] is True
    assert page["close"] == {"code": 4003, "reason": "tls bye", "wasClean": True}


async def test_message_over_the_limit_closes_with_1009(browser: Browser) -> None:
    # One byte over the server's max_message_size, sent compressed by
    # Chromium: the limit applies to the decompressed size. The compressed
    # frame is small and read whole, so Chromium reads the 1009 close frame
    # before it answers. (Its wasClean is sometimes false: see the test below.)
    scenario = """
    const peer = await Peer.open(WS_BASE + "/big");
    peer.send("x".repeat(ARGS.size));
    const close = await peer.closed;
    return {close, queued: peer.queue.length};
    """
    recorder = Recorder()
    async with page_server(
        recorder.echo(), scenario, {"size": 64 * 1024 + 1}, max_message_size=64 * 1024
    ) as server:
        page = await browser.run(http_url(server))
        seen = await recorder.next()
    assert seen.deflate is True
    assert seen.messages == []
    assert seen.close is not None and seen.close[0] == 1009
    assert (page["close"]["code"], page["close"]["reason"]) == seen.close
    assert page["queued"] == 0


async def test_page_always_learns_why_a_big_message_was_refused(
    browser: Browser,
) -> None:
    # 4 MiB against the default 1 MiB limit, 8 times: the page is still
    # sending when the server refuses the message. Because the server keeps
    # reading (and discarding) until the page closes, instead of resetting
    # TCP over unread data, 1009 reaches the page every time.
    scenario = """
    const message = randomBytes(4 << 20);
    const closes = [];
    for (let i = 0; i < 8; i++) {
        const peer = await Peer.open(WS_BASE + "/big");
        peer.send(message);
        const close = await peer.closed;
        closes.push(close.code);
    }
    return closes;
    """
    recorder = Recorder()
    async with page_server(recorder.echo(), scenario) as server:
        page = await browser.run(http_url(server))
        seen = [await recorder.next() for _ in range(8)]
    assert [s.close[0] if s.close else None for s in seen] == [1009] * 8
    assert page == [1009] * 8


async def test_browser_answers_pings(browser: Browser) -> None:
    async def handler(ws: WebSocket) -> None:
        latency = await ws.ping(b"are you there")
        await ws.send(f"latency {latency >= 0}")
        await ws.recv()

    scenario = """
    const peer = await Peer.open(WS_BASE + "/ping");
    const message = await peer.recv();
    peer.send("ok");
    return {message, close: await peer.closed};
    """
    async with page_server(handler, scenario) as server:
        page = await browser.run(http_url(server))
    assert page["message"] == "latency True"
    assert page["close"] == {"code": 1000, "reason": "", "wasClean": True}


# -- an ASGI app under uvicorn with tidings' protocol ---------------------------


@pytest.mark.parametrize(
    "app", [fastapi_app, starlette_app], ids=["fastapi", "starlette"]
)
async def test_page_against_asgi_app_under_uvicorn(
    browser: Browser, serve_asgi: ServeASGI, app: Any
) -> None:
    # The page comes from a tidings server; its WebSocket goes to uvicorn.
    scenario = """
    const peer = await Peer.open(ARGS.url);
    const echoes = await echoSamples(peer);
    const big = randomBytes(1 << 20);
    peer.send(big);
    const bigSame = sameBytes(await peer.recv(), big);
    const close = await peer.close(4002, "page says bye ✓");
    return {echoes, bigSame, extensions: peer.ws.extensions, close};
    """
    watched = Watched(app)
    url = await serve_asgi(watched)
    async with page_server(
        Recorder().echo(), scenario, {"url": url + "/echo"}
    ) as server:
        page = await browser.run(http_url(server))
    disconnect = await watched.disconnect(BOUND)
    assert page["echoes"] == SAMPLE_ECHOES
    assert page["bigSame"] is True
    # uvicorn's --ws-per-message-deflate is on by default.
    assert page["extensions"] == (
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
    )
    # The app's disconnect event has the page's code and reason; tidings
    # answered the page with the same code, and no reason.
    assert disconnect == {
        "type": "websocket.disconnect",
        "code": 4002,
        "reason": "page says bye ✓",
    }
    assert page["close"] == {"code": 4002, "reason": "", "wasClean": True}


async def test_asgi_app_close_code_and_reason_seen_by_page(
    browser: Browser, serve_asgi: ServeASGI
) -> None:
    scenario = """
    const peer = await Peer.open(ARGS.url);
    peer.send("bye page ✓");
    return await peer.closed;
    """
    url = await serve_asgi(fastapi_app)  # /close/CODE: the message is the reason
    async with page_server(
        Recorder().echo(), scenario, {"url": url + "/close/4001"}
    ) as server:
        page = await browser.run(http_url(server))
    assert page == {"code": 4001, "reason": "bye page ✓", "wasClean": True}
