"""The hub as an ASGI application, to mount into a FastAPI or Starlette app
(docs/asgi.md, "The hub inside your app").

An adapter, not a second hub: every request becomes the
:class:`~tidings.protocol.Request` that ``tidings serve`` would have read,
answered by the same :func:`~tidings.hub.api.handle_http` and the same
transports; every WebSocket becomes a :class:`~tidings.hub.session.Session`
whose outlet turns its replies and pushes into ASGI ``websocket.send``
events. What differs is only how bytes reach the client: through the ASGI
server's ``send`` rather than a transport of the hub's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from ..engine.http import HTTPResponse, HTTPStream, ResponseStream
from ..exceptions import ConnectionClosed
from ..protocol import Headers, Request
from .api import _is_loopback, handle_http
from .session import Session

if TYPE_CHECKING:
    from .app import Hub

__all__ = ["HubApp"]

logger = logging.getLogger("tidings.hub")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds :meth:`HubApp.close` waits for the connections it ends to finish.
CLOSE_WAIT = 5.0


def route_path(scope: Scope) -> str:
    """The request's path below the mount point: ``/ws`` for
    ``/realtime/ws`` mounted at ``/realtime``.

    Starlette's ``Mount`` (and uvicorn's ``--root-path``) put the mount
    point in ``root_path`` and leave the full path in ``path``; older
    Starlette stripped it from ``path``. Both give the same answer here.
    """
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest:
            return "/"
        if rest.startswith("/"):
            return rest
    return path


def _request(scope: Scope, body: bytes = b"") -> Request:
    """The :class:`Request` ``tidings serve`` would have read."""
    query: bytes = scope.get("query_string") or b""
    target = route_path(scope)
    if query:
        # ASGI gives the query as sent, still percent-encoded (latin-1).
        target += "?" + query.decode("latin-1")
    headers = Headers(
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in scope.get("headers") or ()
    )
    return Request(scope.get("method", "GET"), target, headers, body)


def _address(scope: Scope) -> Any:
    client = scope.get("client")
    return tuple(client) if client else None


def _head(status: int, headers: Any, body: bytes | None) -> Message:
    """``http.response.start`` for a response of the hub's."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if body is not None:
        raw.append((b"content-length", str(len(body)).encode()))
    return {"type": "http.response.start", "status": status, "headers": raw}


def _body_of(response: HTTPResponse) -> tuple[list[tuple[str, str]], bytes]:
    """A response's headers and body, as the engine would send them: a
    ``str`` body is plain UTF-8 text."""
    headers = list(response.headers)
    body = response.body
    if isinstance(body, str):
        body = body.encode()
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    return headers, body


class _Disconnect(Exception):
    """The client went away before the request was read."""


class HubApp:
    """The hub's endpoints as one ASGI application: ``/ws``, ``/sse``,
    ``/poll``, ``POST /command``, ``/api/...``, ``/healthz``,
    ``/metrics`` and ``/tidings.js``, under whatever path it is mounted at.

    Made by :meth:`Hub.asgi() <tidings.hub.Hub.asgi>`; the hub must be
    started (``Hub.lifespan``) for it to answer. Lifespan events sent to
    it, as when it is the server's top-level app, start and stop the hub.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        #: Requests and WebSockets being served, awaited by :meth:`close`.
        self._serving: set[asyncio.Task[Any]] = set()
        #: What the hub holds for a request (a poll, a stream's body),
        #: cancelled by :meth:`close`.
        self._held: set[asyncio.Future[Any]] = set()
        #: The sessions of the WebSockets served, closed by :meth:`close`.
        self._sessions: set[Session] = set()
        self._closing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind not in ("http", "websocket"):
            raise ValueError(f"the hub serves http and websocket, not {kind!r}")
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            if kind == "http":
                await self._http(scope, receive, send)
            else:
                await self._websocket(scope, receive, send)
        except asyncio.CancelledError:
            # Cancelled by close(), after its wait ran out: the server has
            # nothing more to be told, and nothing went wrong.
            if not self._closing:
                raise
        finally:
            self._serving.discard(task)

    async def close(self) -> None:
        """End every request and WebSocket served: held polls and streams
        are cancelled, WebSockets get 1001 (called by ``Hub.close``)."""
        self._closing = True
        for held in list(self._held):
            held.cancel()
        for session in list(self._sessions):
            session.close(1001, "hub shutting down")
        serving = list(self._serving)
        if serving:
            _, late = await asyncio.wait(serving, timeout=CLOSE_WAIT)
            # A client that never answers the close frame: stop waiting.
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=CLOSE_WAIT)
        self._closing = False

    # -- lifespan, for the hub app served on its own -----------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.hub.start(listen=False)
                except Exception as exc:
                    logger.exception("the hub did not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.hub.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- plain HTTP ------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._read_body(scope, receive)
        except _Disconnect:
            return
        except _TooLarge as exc:
            await self._respond(send, HTTPResponse(413, str(exc)))
            return
        if self._closing:
            await self._respond(send, _SHUTTING_DOWN)
            return
        request = _request(scope, body)
        if not self._api_reachable(scope, request):
            await self._respond(
                send,
                HTTPResponse(
                    403, "set an API key to use the HTTP API on a public address"
                ),
            )
            return
        # A held poll or command waits for the hub; the client may leave
        # meanwhile, and then what is held for it ends now, not at its
        # timeout (as the hub's own server does).
        answering = asyncio.ensure_future(handle_http(self.hub, request))
        gone = asyncio.ensure_future(_disconnected(receive))
        self._held.add(answering)
        try:
            await asyncio.wait([answering, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._held.discard(answering)
            if not answering.done():
                answering.cancel()
                with contextlib.suppress(BaseException):
                    await answering
        if gone.done():
            return  # nobody to answer
        try:
            answer = answering.result()
        except asyncio.CancelledError:  # by close()
            answer = _SHUTTING_DOWN
        except Exception:
            gone.cancel()
            logger.exception("error answering %s %.100s", request.method, request.path)
            answer = HTTPResponse(500, "internal server error")
        if answer is None:
            gone.cancel()
            # handle_http upgrades /ws; a plain request cannot be.
            answer = HTTPResponse(
                426,
                "connect to this path with a WebSocket",
                [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            )
        if isinstance(answer, HTTPStream):
            await self._stream(answer, send, gone, _address(scope))
            return
        gone.cancel()
        await self._respond(send, answer)

    def _api_reachable(self, scope: Scope, request: Request) -> bool:
        """Whether the keyless HTTP API may answer. ``tidings serve`` allows
        it on a loopback address only (hub/api.py): here the address is the
        ASGI server's, not ``config.host``, which the hub does not listen
        on."""
        if self.hub.config.api_key is not None:
            return True
        if not request.path.startswith("/api/"):
            return True
        server = scope.get("server")
        return server is not None and _is_loopback(str(server[0]))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request's body, refused past ``max_message_size`` before
        more of it is read."""
        limit = self.hub.config.max_message_size
        for name, value in scope.get("headers") or ():
            if name.lower() == b"content-length":
                declared = value.strip()
                if declared.isdigit() and int(declared) > limit:
                    raise _TooLarge(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnect
            chunk = message.get("body") or b""
            size += len(chunk)
            if size > limit:
                raise _TooLarge(limit)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _respond(self, send: Send, response: HTTPResponse) -> None:
        headers, body = _body_of(response)
        with contextlib.suppress(OSError):  # the client went away meanwhile
            await send(_head(response.status, headers, body))
            await send({"type": "http.response.body", "body": body})

    async def _stream(
        self,
        response: HTTPStream,
        send: Send,
        gone: asyncio.Future[None],
        address: Any,
    ) -> None:
        """Send ``response``'s head, run its body through an
        :class:`_ASGIStream`, and cancel it when the client goes away."""
        stream = _ASGIStream(send, address)
        try:
            await send(_head(response.status, response.headers, None))
        except OSError:
            gone.cancel()
            return
        writing = asyncio.ensure_future(response.body(stream))
        self._held.add(writing)
        try:
            await asyncio.wait([writing, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._held.discard(writing)
            if not writing.done():
                writing.cancel()  # the client went away, or the hub closes
                with contextlib.suppress(BaseException):
                    await writing
            gone.cancel()
        if not writing.cancelled() and writing.exception() is not None:
            logger.error("error in an HTTPStream body", exc_info=writing.exception())
        stream.close()
        await stream.flushed()

    # -- WebSocket ---------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # the client left before connecting
        request = _request(scope)
        try:
            answer = await handle_http(self.hub, request)
        except Exception:
            logger.exception("error answering the WebSocket %.100s", request.path)
            answer = HTTPResponse(500, "internal server error")
        if isinstance(answer, HTTPStream):  # no fallback path takes an upgrade
            answer = HTTPResponse(400, "this path does not take a WebSocket")
        if self._closing:
            answer = _SHUTTING_DOWN
        elif answer is None and self.hub.full():
            answer = _FULL
        if answer is not None:
            await self._deny(scope, send, answer)
            return
        await send({"type": "websocket.accept"})
        socket = _ASGISocket(request, _address(scope), receive, send)
        session = Session(self.hub, socket)
        self._sessions.add(session)
        try:
            await session.run(socket.messages())
        finally:
            self._sessions.discard(session)
            await socket.finish(1000)

    async def _deny(self, scope: Scope, send: Send, response: HTTPResponse) -> None:
        """Refuse the upgrade with ``response`` where the server can send
        one (the ASGI denial response extension), else with a 403."""
        extensions = scope.get("extensions") or {}
        try:
            if "websocket.http.response" in extensions:
                headers, body = _body_of(response)
                start = _head(response.status, headers, body)
                start["type"] = "websocket.http.response.start"
                await send(start)
                await send({"type": "websocket.http.response.body", "body": body})
            else:
                await send({"type": "websocket.close", "code": 1008})
        except OSError:
            pass


_SHUTTING_DOWN = HTTPResponse(503, "hub shutting down", [("Retry-After", "1")])
_FULL = HTTPResponse(503, "server is full, try again later", [("Retry-After", "1")])


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large (over {limit} bytes)")


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _Writer:
    """Text or bytes queued without waiting and sent, in order, by a task
    that awaits the ASGI server's ``send``: what the server has not yet
    taken is :attr:`write_buffer_size`, which the hub bounds
    (``max_outbound``) as it bounds its own sockets' buffers."""

    __slots__ = ("_done", "_queue", "_queued", "_ready", "_send", "_task", "closed")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: deque[Message] = deque()
        self._queued = 0
        self._ready = asyncio.Event()
        #: No more may be queued.
        self.closed = False
        #: The last message, sent once the queue is empty; then the task ends.
        self._done: Message | None = None
        self._task = asyncio.ensure_future(self._run())

    @property
    def write_buffer_size(self) -> int:
        """Bytes (of text: characters, near enough) queued and not yet
        taken by the server."""
        return self._queued

    def put(self, message: Message, size: int) -> None:
        self._queue.append(message)
        self._queued += size
        self._ready.set()

    def finish(self, last: Message | None, *, discard: bool = False) -> None:
        """Queue nothing more; send what is queued (unless ``discard``),
        then ``last``."""
        if self.closed:
            return
        self.closed = True
        if discard:
            self._queue.clear()
            self._queued = 0
        self._done = last
        self._ready.set()

    async def wait(self) -> None:
        """Until the task has sent everything (or the client is gone)."""
        await asyncio.wait([self._task])

    def cancel(self) -> None:
        self.closed = True
        self._task.cancel()

    async def _run(self) -> None:
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    message = self._queue.popleft()
                    await self._send(message)
                    self._queued -= _size(message)
                if self.closed:
                    if self._done is not None:
                        await self._send(self._done)
                    return
        except Exception as exc:
            # The client went away (OSError) or the server refused the
            # event: nothing more can reach it.
            logger.debug("sending to a client failed: %r", exc)
            self.closed = True
            self._queue.clear()
            self._queued = 0


def _size(message: Message) -> int:
    return len(message.get("text") or message.get("bytes") or message.get("body") or "")


class _ASGISocket:
    """A session's outlet on an accepted ASGI WebSocket (the
    :class:`~tidings.hub.session.Outlet` protocol)."""

    __slots__ = ("_receive", "_writer", "remote_address", "request")

    def __init__(
        self, request: Request, address: Any, receive: Receive, send: Send
    ) -> None:
        self.request = request
        self.remote_address = address
        self._receive = receive
        self._writer = _Writer(send)

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued to the client and not yet taken by the server."""
        return self._writer.write_buffer_size

    def send_nowait(self, message: str) -> None:
        """Queue ``message`` as a text message."""
        if self._writer.closed:
            raise ConnectionClosed(1006, "the WebSocket has closed")
        self._writer.put({"type": "websocket.send", "text": message}, len(message))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send what is queued, then a close frame with ``code``."""
        self._writer.finish(_close(code, reason))
        await self._writer.wait()

    def drop(self, code: int = 1011, reason: str = "") -> None:
        """Close now with ``code``, discarding what is queued."""
        self._writer.finish(_close(code, reason), discard=True)

    async def messages(self) -> AsyncIterator[str | bytes]:
        """The client's messages, until it closes."""
        while True:
            message = await self._receive()
            if message["type"] != "websocket.receive":
                # websocket.disconnect: the close handshake is over, or TCP
                # was lost.
                self._writer.cancel()
                return
            text = message.get("text")
            yield text if text is not None else message.get("bytes") or b""

    async def finish(self, code: int) -> None:
        """The session is over: close with ``code`` unless closed already."""
        self._writer.finish(_close(code, ""))
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await self._writer.wait()
        except TimeoutError:
            self._writer.cancel()


def _close(code: int, reason: str) -> Message:
    return {"type": "websocket.close", "code": code, "reason": reason}


class _ASGIStream(ResponseStream):
    """Where an :class:`HTTPStream`'s body is written: ASGI
    ``http.response.body`` events with ``more_body``, one per write."""

    __slots__ = ("_writer",)

    def __init__(self, send: Send, address: Any) -> None:
        # No transport of ours: the ASGI server has it.
        self.remote_address = address
        self._writer = _Writer(send)

    def write(self, data: bytes) -> None:
        """Queue ``data`` without waiting; nothing once closing."""
        if not self._writer.closed:
            self._writer.put(
                {"type": "http.response.body", "body": data, "more_body": True},
                len(data),
            )

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued and not yet taken by the server."""
        return self._writer.write_buffer_size

    def close(self) -> None:
        """End the body once what is queued is sent."""
        self._writer.finish({"type": "http.response.body", "body": b""})

    async def flushed(self) -> None:
        """Until the end of the body is sent, or the client is gone."""
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await self._writer.wait()
        except TimeoutError:
            self._writer.cancel()
