"""The asyncio WebSocket server: ``async with tidings.serve(handler, host, port)``."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeAlias

from ..exceptions import ConnectionClosed
from ..protocol import Closed, DeflateConfig, Request, ServerConnection, State
from ..protocol.handshake import build_stream_head, parse_subprotocols
from ..protocol.limits import (
    CLOSE_TIMEOUT,
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    MAX_QUEUE,
    OPEN_TIMEOUT,
    PING_INTERVAL,
    PING_TIMEOUT,
    WRITE_LIMIT,
)
from .connection import OnMessage, WebSocket
from .http import HTTPResponse, HTTPStream, ResponseStream

__all__ = ["Server", "serve"]

Handler: TypeAlias = Callable[[WebSocket], Awaitable[object]]
Answer: TypeAlias = HTTPResponse | HTTPStream
ProcessRequest: TypeAlias = Callable[
    [Request], Answer | Awaitable[Answer | None] | None
]
SelectSubprotocol: TypeAlias = Callable[[Request, Sequence[str]], str | None]

_DEFAULT_COMPRESSION = DeflateConfig()


class _ServerWebSocket(WebSocket):
    """A connection accepted by a :class:`Server`."""

    __slots__ = ("_answered", "_open_timer", "_server")

    def __init__(self, server: Server, conn: ServerConnection, **kwargs: Any) -> None:
        super().__init__(conn, **kwargs)
        self._server = server
        self._open_timer: asyncio.TimerHandle | None = None
        #: Answered with an HTTP response of the server's or the
        #: application's choosing, which logs it if it wants to.
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._connections.add(self)
        self._arm_open_timer()

    def _arm_open_timer(self) -> None:
        """Bound the wait for a whole request: the first, or the next one
        on a connection kept alive."""
        if self._server.open_timeout is not None:
            self._open_timer = self._loop.call_later(
                self._server.open_timeout, self._open_timed_out
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
        super().connection_lost(exc)
        self._server._connections.discard(self)

    def _open_timed_out(self) -> None:
        if self._conn.state is State.CONNECTING and self._transport is not None:
            self.logger.info(
                "connection %s: no complete request within %s s, dropped",
                self.remote_address,
                self._server.open_timeout,
            )
            self._transport.abort()

    def _request_received(self, request: Request) -> None:
        # open_timeout bounds the reading of the request; what the
        # application does with it (a held long-poll) is its own to bound.
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        self._server._handle_request(self, request)

    def _closed_event(self, event: Closed) -> None:
        if event.error is not None and not self._opened.done() and not self._answered:
            self.logger.info(
                "handshake from %s failed: %s", self.remote_address, event.error
            )
        super()._closed_event(event)


class Server:
    """A WebSocket server, also known as ``tidings.serve``.

    ``handler(ws)`` runs for each connection; when it returns, the
    connection is closed with 1000 (1011 if it raised). With ``on_message``
    instead, messages go straight to the callback and no task is created per
    connection.

    ``async with serve(...) as server`` listens until the block ends, then
    closes every connection with 1001 ("going away"). Inside,
    ``await server.serve_forever()`` runs until :meth:`close` is called.

    It listens on ``host`` and ``port``, on ``unix_path``, or on ``sock``, a
    socket already bound and listening (one inherited from a parent process,
    say); ``reuse_port`` lets several processes bind one port, where the
    platform has ``SO_REUSEPORT``.
    """

    def __init__(
        self,
        handler: Handler | None,
        host: str | None = None,
        port: int | None = None,
        *,
        unix_path: str | None = None,
        sock: socket.socket | None = None,
        ssl: ssl_module.SSLContext | None = None,
        on_message: OnMessage | None = None,
        process_request: ProcessRequest | None = None,
        subprotocols: Sequence[str] = (),
        select_subprotocol: SelectSubprotocol | None = None,
        origins: Sequence[str | None] | None = None,
        compression: DeflateConfig | None = _DEFAULT_COMPRESSION,
        max_message_size: int | None = MAX_MESSAGE_SIZE,
        max_queue: int | None = MAX_QUEUE,
        write_limit: int = WRITE_LIMIT,
        max_head_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
        max_body_size: int = 0,
        ping_interval: float | None = PING_INTERVAL,
        ping_timeout: float | None = PING_TIMEOUT,
        open_timeout: float | None = OPEN_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        max_connections: int | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
        logger: logging.Logger | None = None,
    ) -> None:
        if handler is None and on_message is None:
            raise TypeError("serve() needs a handler, an on_message callback or both")
        self.handler = handler
        self.host = host
        self.port = port
        self.unix_path = unix_path
        self.sock = sock
        self.ssl = ssl
        self.on_message = on_message
        self.process_request = process_request
        self.subprotocols = list(subprotocols)
        self.select_subprotocol = select_subprotocol
        self.origins = None if origins is None else list(origins)
        self.compression = compression
        self.max_message_size = max_message_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.max_body_size = max_body_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_connections = max_connections
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.logger = logger or logging.getLogger("tidings.server")
        self._connections: set[_ServerWebSocket] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._server: asyncio.Server | None = None
        self._shutdown: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------

    async def start(self) -> Server:
        """Start listening; returns the server."""
        loop = asyncio.get_running_loop()
        if self.unix_path is not None:
            self._server = await loop.create_unix_server(
                self._make_connection,
                self.unix_path,
                ssl=self.ssl,
                backlog=self.backlog,
                ssl_handshake_timeout=self.open_timeout if self.ssl else None,
            )
        elif self.sock is not None:
            self._server = await loop.create_server(
                self._make_connection,
                sock=self.sock,
                ssl=self.ssl,
                backlog=self.backlog,
                ssl_handshake_timeout=self.open_timeout if self.ssl else None,
            )
            self.port = self.sock.getsockname()[1]
        else:
            self._server = await loop.create_server(
                self._make_connection,
                self.host,
                self.port or 0,
                ssl=self.ssl,
                reuse_port=self.reuse_port,
                backlog=self.backlog,
                ssl_handshake_timeout=self.open_timeout if self.ssl else None,
            )
            if self.port in (None, 0) and self._server.sockets:
                self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __await__(self) -> Any:
        return self.start().__await__()

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        while self._shutdown is None:
            try:
                await self._server.serve_forever()
            except asyncio.CancelledError:
                if self._shutdown is None:
                    raise
        await self.wait_closed()

    def close(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop listening and close every connection with ``code``.

        Connections that don't answer within ``close_timeout`` are dropped.
        Use :meth:`wait_closed` to wait for the end.
        """
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_task(
                self._close(code, reason)
            )

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished."""
        if self._shutdown is not None:
            await asyncio.shield(self._shutdown)

    async def _close(self, code: int, reason: str) -> None:
        if self._server is not None:
            self._server.close()
        # WebSocket.close(): the close frame, reading resumed if it was
        # paused (the answer may wait behind unread messages), the close
        # timeout; a connection still opening is dropped.
        await asyncio.gather(
            *(ws.close(code, reason) for ws in list(self._connections)),
            return_exceptions=True,
        )
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.close_timeout)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    # -- introspection -------------------------------------------------

    @property
    def sockets(self) -> tuple[Any, ...]:
        """The listening sockets."""
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def connections(self) -> set[WebSocket]:
        """Connections currently open or opening."""
        return set(self._connections)

    # -- connections ---------------------------------------------------

    def _make_connection(self) -> _ServerWebSocket:
        conn = ServerConnection(
            subprotocols=self.subprotocols,
            compression=self.compression,
            max_message_size=self.max_message_size,
            max_head_size=self.max_head_size,
            max_headers=self.max_headers,
            max_body_size=self.max_body_size,
        )
        return _ServerWebSocket(
            self,
            conn,
            on_message=self.on_message,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            logger=self.logger,
        )

    def _handle_request(self, ws: _ServerWebSocket, request: Request) -> None:
        if (
            self.max_connections is not None
            and len(self._connections) > self.max_connections
            # A full server still answers plain HTTP (a health check, an
            # API call): process_request may refuse what would stay.
            and "websocket" in (request.headers.get("Upgrade") or "").lower()
        ):
            self.logger.info("connection %s refused: server full", ws.remote_address)
            self._respond(
                ws,
                HTTPResponse(
                    503, "server is full, try again later", [("Retry-After", "1")]
                ),
            )
            return
        if (
            self.origins is not None
            and request.headers.get("Origin") not in self.origins
        ):
            # Cross-site WebSocket hijacking: a page from another origin
            # would otherwise ride on the user's cookies.
            self.logger.info(
                "connection %s refused: origin %.100r not allowed",
                ws.remote_address,
                request.headers.get("Origin"),
            )
            self._respond(ws, HTTPResponse(403, "origin not allowed"))
            return
        if self.process_request is None:
            self._accept(ws, request)
            return
        try:
            result = self.process_request(request)
        except Exception:
            self.logger.exception("error in process_request")
            self._respond(ws, HTTPResponse(500, "internal server error"))
            return
        if inspect.isawaitable(result):
            self._decide(ws, request, result)
        elif result is None:
            self._accept(ws, request)
        else:
            self._respond(ws, result)

    def _decide(
        self,
        ws: _ServerWebSocket,
        request: Request,
        pending: Awaitable[Answer | None],
    ) -> None:
        """Answer ``request`` as ``pending`` decides; a client that goes
        away first cancels it: whatever the application holds for it (a
        long-poll, a session, a task) ends now, not at its timeout."""
        deciding = asyncio.ensure_future(self._answer(ws, request, pending))
        self._tasks.add(deciding)
        closed = ws._closed

        def gone(_: object) -> None:
            deciding.cancel()

        def decided(_: object) -> None:
            self._tasks.discard(deciding)
            closed.remove_done_callback(gone)

        closed.add_done_callback(gone)
        deciding.add_done_callback(decided)

    async def _answer(
        self,
        ws: _ServerWebSocket,
        request: Request,
        pending: Awaitable[Answer | None],
    ) -> None:
        # Answered in the step that decides, not a loop iteration later:
        # what the application queued for that iteration (the hub's
        # fan-out of a publication) then follows the answer, and the client
        # may send its next request meanwhile.
        try:
            answer = await pending
        except Exception:
            self.logger.exception("error in process_request")
            answer = HTTPResponse(500, "internal server error")
        if ws.state is not State.CONNECTING or ws._transport is None:
            return
        if answer is None:
            self._accept(ws, request)
        else:
            self._respond(ws, answer)

    def _respond(self, ws: _ServerWebSocket, response: Answer) -> None:
        ws._answered = True
        if isinstance(response, HTTPStream):
            self._stream(ws, response)
            return
        conn = ws._conn
        assert isinstance(conn, ServerConnection)
        # HTTP/1.1 keep-alive: a back end calling the API reuses its
        # connection; open_timeout then bounds the wait for its next request.
        events = conn.respond(response.status, response.body, response.headers)
        if conn.state is State.CONNECTING:
            ws._answered = False
            ws._arm_open_timer()
        ws._handle_events(events)

    def _stream(self, ws: _ServerWebSocket, response: HTTPStream) -> None:
        transport = ws._transport
        assert transport is not None
        try:
            head = build_stream_head(response.status, response.headers)
        except ValueError:
            self.logger.exception("invalid HTTPStream head")
            self._respond(ws, HTTPResponse(500, "internal server error"))
            return
        # The client has nothing more to send: what it might would wait in
        # the kernel, not in our memory. A client that goes away is seen
        # when a write to it fails.
        transport.pause_reading()
        transport.write(head)
        stream = ResponseStream(transport, ws.remote_address)
        self._spawn(self._run_stream(ws, response.body(stream), transport))

    async def _run_stream(
        self,
        ws: _ServerWebSocket,
        body: Awaitable[None],
        transport: asyncio.Transport,
    ) -> None:
        writing = asyncio.ensure_future(body)
        await asyncio.wait([writing, ws._closed], return_when=asyncio.FIRST_COMPLETED)
        if not writing.done():
            writing.cancel()  # the client went away
        elif not writing.cancelled() and writing.exception() is not None:
            self.logger.error(
                "error in an HTTPStream body", exc_info=writing.exception()
            )
        transport.close()
        # A client that stopped reading would keep what is queued, and the
        # connection, forever.
        ws._arm_close_timer()

    def _accept(self, ws: _ServerWebSocket, request: Request) -> None:
        conn = ws._conn
        assert isinstance(conn, ServerConnection)
        if self.select_subprotocol is not None:
            try:
                offered = parse_subprotocols(request)
                subprotocol = self.select_subprotocol(request, offered)
            except Exception:
                # An invalid header is answered by accept() with a 400 below.
                subprotocol = None
            events = conn.accept(subprotocol=subprotocol)
        else:
            events = conn.accept()
        ws._handle_events(events)
        if conn.state is State.OPEN:
            ws._opened_ok()
            if self.handler is not None:
                self._spawn(self._run_handler(ws, self.handler))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, ws: WebSocket, handler: Handler) -> None:
        code = 1000
        try:
            await handler(ws)
        except ConnectionClosed:
            pass
        except Exception:
            self.logger.exception("error in connection handler")
            code = 1011
        with contextlib.suppress(ConnectionClosed):
            await ws.close(code)


#: ``async with tidings.serve(handler, host, port, **options) as server:``
serve = Server
