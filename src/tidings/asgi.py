"""tidings inside uvicorn: an ASGI WebSocket protocol on tidings' engine.

    uvicorn app:app --ws tidings.asgi:WebSocketProtocol

uvicorn reads the HTTP request; when it asks for a WebSocket, uvicorn hands
the connection to this class, which serves the ASGI WebSocket spec (2.4) to
the application: connect, accept (with a subprotocol and headers), receive
and send text and bytes, close with a code and reason, disconnect with the
peer's code, and the denial response extension. uvicorn's ``--ws-max-size``,
``--ws-max-queue``, ``--ws-ping-interval``, ``--ws-ping-timeout``,
``--ws-per-message-deflate`` and ``--root-path`` apply (docs/asgi.md).

tidings does not import uvicorn: the ``config`` and ``server_state`` it
passes are used by their attributes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any
from urllib.parse import unquote

from .engine.connection import WebSocket
from .exceptions import ConnectionClosed, InvalidHandshake
from .protocol import DeflateConfig, Request, ServerConnection, State
from .protocol.handshake import (
    parse_extension_header,
    parse_subprotocols,
    validate_request,
)

__all__ = ["ClientDisconnected", "WebSocketProtocol"]

#: ASGI send and receive events.
Event = dict[str, Any]

#: Largest body of a denial response (``websocket.http.response.body``).
MAX_DENIAL_BODY = 1 << 20


class ClientDisconnected(OSError):
    """``send`` after the client went away (ASGI: an ``OSError``)."""


class _Denial:
    """A denial response the app is sending: its status and headers, the
    body so far, and the length the app declared for it, if it did."""

    __slots__ = ("body", "headers", "length", "status")

    def __init__(self, message: Event) -> None:
        status = message["status"]
        if not 100 <= status < 600:
            raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
        self.status: int = status
        self.body = bytearray()
        self.length: int | None = None
        # The body goes out whole, after a Content-Length that the protocol
        # adds: the app's own framing headers would repeat it (two
        # Content-Length headers make strict clients refuse the response)
        # or contradict it (RFC 9112 §6.1: no Transfer-Encoding beside it).
        self.headers: list[tuple[str, str]] = []
        for raw_name, raw_value in message.get("headers", ()):
            name = bytes(raw_name).decode("latin-1")
            value = bytes(raw_value).decode("latin-1")
            field = name.lower()
            if field == "content-length":
                self._declare(value.strip(" \t"))
            elif field == "transfer-encoding":
                # chunked only frames the body, as our Content-Length does;
                # another coding would be ours to apply, and is not.
                if value.strip(" \t").lower() != "chunked":
                    raise RuntimeError(
                        f"Transfer-Encoding {value!r} in a denial response: "
                        "the body is sent as it is, so only 'chunked' may be named"
                    )
            else:
                self.headers.append((name, value))

    def _declare(self, value: str) -> None:
        if not (value.isascii() and value.isdigit()) or (
            self.length is not None and int(value) != self.length
        ):
            raise RuntimeError(f"Invalid Content-Length {value!r} in a denial response")
        self.length = int(value)

    def add(self, body: bytes) -> None:
        """More of the body; raise where it breaks the declared length or
        our bound, as uvicorn does for an HTTP response."""
        self.body += body
        if self.length is not None and len(self.body) > self.length:
            raise RuntimeError("Response content longer than Content-Length")
        if len(self.body) > MAX_DENIAL_BODY:
            raise RuntimeError(f"a denial response body over {MAX_DENIAL_BODY} bytes")

    def end(self) -> None:
        """The body is complete: it must be as long as declared."""
        if self.length is not None and len(self.body) != self.length:
            raise RuntimeError("Response content shorter than Content-Length")


class WebSocketProtocol(WebSocket):
    """uvicorn's ``--ws`` protocol class (see the module's docstring)."""

    __slots__ = (
        "_accepted",
        "_app",
        "_app_closed",
        "_app_state",
        "_connect_sent",
        "_denial",
        "_root_path",
        "_server_state",
        "_uvicorn_config",
        "scope",
    )

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        compression = DeflateConfig() if config.ws_per_message_deflate else None
        conn = ServerConnection(
            compression=compression,
            max_message_size=config.ws_max_size,
            # uvicorn read the whole head, within its own bound, before it
            # hands it over: a second, lower bound here would refuse browsers
            # with large cookies and offer no setting to change it.
            max_head_size=sys.maxsize,
            max_headers=sys.maxsize,
        )
        super().__init__(
            conn,
            max_queue=config.ws_max_queue,
            ping_interval=config.ws_ping_interval,
            ping_timeout=config.ws_ping_timeout,
            logger=logging.getLogger("uvicorn.error"),
        )
        self._uvicorn_config = config
        self._app = config.loaded_app
        self._root_path: str = config.root_path
        self._server_state = server_state
        self._app_state = app_state
        self._connect_sent = False
        self._accepted = False
        #: The app sent websocket.close, so a later send is its mistake; after
        #: a close of ours (shutdown), sends find the client gone instead.
        self._app_closed = False
        #: A denial response being sent.
        self._denial: _Denial | None = None
        self.scope: Event = {}

    # -- uvicorn's side ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._server_state.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        """The request head uvicorn read (later reads arrive through
        ``get_buffer`` and ``buffer_updated``)."""
        self._handle_events(self._conn.receive_data(data))

    def shutdown(self) -> None:
        """uvicorn is stopping: end the connection now, as uvicorn's own
        protocols do. uvicorn waits for every connection to end (and
        ``--reload`` and rolling restarts wait for uvicorn), so none may wait
        for a client's answer to a close frame."""
        state = self._conn.state
        if state is State.CONNECTING:
            # The app has not answered websocket.connect, or not finished
            # its denial response: the client still gets an HTTP answer.
            self._reject(500, "Internal Server Error", [])
        elif state is not State.CLOSED:
            # 1012 (service restart) if open; if closing, the client's close
            # frame is no longer awaited. Either way the app's receive()
            # returns websocket.disconnect now.
            self._fail(1012, "server restarting")
        if self._transport is not None:
            # Closed once the bytes above are out, rather than half-closed
            # until the client's EOF as after a failure (_close_transport).
            # A client that reads nothing leaves them unsent; the close
            # timer, armed when the connection closed, bounds that.
            self._transport.close()

    # -- the ASGI application ---------------------------------------------

    def _request_received(self, request: Request) -> None:
        transport = self._transport
        assert transport is not None
        try:
            subprotocols = self._check_upgrade(request)
        except InvalidHandshake as exc:
            # websocket.accept could not make this a WebSocket, so whatever
            # the app answered would not matter to the client: a client
            # error is answered as RFC 6455 §4.2.1 and §4.2.2 ask (400, or
            # 426 with the version we speak), and the app never runs.
            self._log(str(exc.status))
            self._reject(exc.status, str(exc), list(exc.headers))
            return
        raw_path, _, query = request.target.partition("?")
        root = self._root_path
        self.scope = {
            "type": "websocket",
            "asgi": {
                "version": self._uvicorn_config.asgi_version,
                "spec_version": "2.4",
            },
            "http_version": "1.1",
            "scheme": "wss" if transport.get_extra_info("sslcontext") else "ws",
            "server": _address(transport.get_extra_info("sockname")),
            "client": _address(transport.get_extra_info("peername")),
            "root_path": root,
            "path": root + unquote(raw_path),
            "raw_path": (root + raw_path).encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in request.headers
            ],
            "subprotocols": subprotocols,
            "state": self._app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        task = self._loop.create_task(self._run_app())
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _check_upgrade(self, request: Request) -> list[str]:
        """The subprotocols the request offers; InvalidHandshake for what
        accept() would refuse."""
        validate_request(request)
        subprotocols = parse_subprotocols(request)
        # accept() reads the extensions offered only when it may agree to one.
        if self._conn.compression is not None:
            for value in request.headers.get_all("Sec-WebSocket-Extensions"):
                parse_extension_header(value)
        return subprotocols

    async def _run_app(self) -> None:
        try:
            result = await self._app(self.scope, self.receive, self.send_event)
        except ClientDisconnected:
            pass
        except Exception:
            self.logger.exception("Exception in ASGI application\n")
            self._end(1011, "internal error")
        else:
            if not self._accepted and self._denial is None:
                self.logger.error(
                    "ASGI callable returned without completing handshake."
                )
            elif result is not None:
                self.logger.error(
                    "ASGI callable should return None, but returned '%s'.", result
                )
            self._end(1000, "")

    def _end(self, code: int, reason: str) -> None:
        """The application is done: close what it left open."""
        state = self._conn.state
        if state is State.OPEN:
            self._send_close(code, reason)
        elif state is State.CONNECTING and self._transport is not None:
            self._reject(500, "Internal Server Error", [])

    async def receive(self) -> Event:
        """ASGI ``receive``."""
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        try:
            message = await self.recv()
        except ConnectionClosed as exc:
            return {
                "type": "websocket.disconnect",
                "code": exc.code,
                "reason": exc.reason,
            }
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send_event(self, message: Event) -> None:
        """ASGI ``send``."""
        kind = message["type"]
        if self._transport is None or self._conn.state is State.CLOSED:
            raise ClientDisconnected(f"the client is gone ({kind} not sent)")
        if self._denial is not None:
            self._denial_body(message)
        elif not self._accepted:
            self._handshake(message)
        elif self._app_closed:
            raise RuntimeError(
                f"Unexpected ASGI message '{kind}' after websocket.close"
            )
        elif kind == "websocket.send":
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
            if data is None:
                raise RuntimeError("websocket.send needs text or bytes")
            try:
                await self.send(data)
            except ConnectionClosed:
                raise ClientDisconnected("the client is gone") from None
        elif kind == "websocket.close":
            self._app_closed = True
            self._send_close(message.get("code", 1000), message.get("reason") or "")
        else:
            raise RuntimeError(
                "Expected ASGI message 'websocket.send' or 'websocket.close', "
                f"but got '{kind}'"
            )

    def _handshake(self, message: Event) -> None:
        kind = message["type"]
        conn = self._conn
        assert isinstance(conn, ServerConnection)
        if kind == "websocket.accept":
            headers = [
                *self._server_state.default_headers,
                *message.get("headers", ()),
            ]
            events = conn.accept(
                subprotocol=message.get("subprotocol"),
                extra_headers=[
                    (bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                    for n, v in headers
                ],
            )
            self._accepted = True
            self._handle_events(events)
            if conn.state is State.OPEN:
                self._log("[accepted]")
                self._opened_ok()
        elif kind == "websocket.close":
            self._accepted = True
            self._log("403")
            self._reject(403, "", [])
        elif kind == "websocket.http.response.start":
            self._denial = _Denial(message)
        else:
            raise RuntimeError(
                "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                f"'websocket.http.response.start' but got '{kind}'."
            )

    def _denial_body(self, message: Event) -> None:
        denial = self._denial
        assert denial is not None
        if message["type"] != "websocket.http.response.body":
            raise RuntimeError(
                "Expected ASGI message 'websocket.http.response.body' but got "
                f"'{message['type']}'."
            )
        denial.add(message.get("body", b""))
        if not message.get("more_body", False):
            denial.end()
            self._accepted = True
            self._log(str(denial.status))
            self._reject(denial.status, bytes(denial.body), denial.headers)

    def _reject(
        self, status: int, body: str | bytes, headers: list[tuple[str, str]]
    ) -> None:
        conn = self._conn
        assert isinstance(conn, ServerConnection)
        if conn.state is State.CONNECTING and conn.request is not None:
            self._handle_events(conn.reject(status, body, headers))

    def _send_close(self, code: int, reason: str) -> None:
        """Send our close frame without waiting for the answer."""
        if self._conn.state is State.OPEN:
            self._start_close(code, reason)

    def _log(self, outcome: str) -> None:
        # From the request, not the scope: a refused request has none.
        client = _address(self.remote_address)
        where = f"{client[0]}:{client[1]} - " if client else ""
        request = self.request
        assert request is not None
        target = self._root_path + request.target
        self.logger.info('%s"WebSocket %s" %s', where, target, outcome)


def _address(value: Any) -> tuple[str, int] | None:
    """A TCP address as ASGI gives it; None for a Unix socket."""
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
