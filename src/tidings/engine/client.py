"""The asyncio WebSocket client: ``async with tidings.connect(uri) as ws``."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as ssl_module
import urllib.parse
from collections.abc import AsyncIterator, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any

from ..exceptions import InvalidHandshake, InvalidStatus
from ..protocol import ClientConnection, DeflateConfig, WebSocketURI, parse_uri
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

__all__ = ["connect"]

_DEFAULT_COMPRESSION = DeflateConfig()
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class connect:
    """Open a WebSocket connection to ``uri`` (``ws://`` or ``wss://``).

    - ``ws = await connect(uri)`` returns an open :class:`WebSocket`;
    - ``async with connect(uri) as ws:`` also closes it at the end;
    - ``async for ws in connect(uri):`` reconnects after every drop, with
      exponential backoff and jitter between failed attempts; use
      ``continue`` on :class:`ConnectionClosed` to reconnect, ``break`` to
      stop.

    ``open_timeout`` bounds TCP connect, TLS and the HTTP handshake together.
    Redirects (3xx with ``Location``) are followed up to ``max_redirects``,
    never from ``wss://`` to ``ws://``. For ``wss://`` without ``ssl``, the
    system's default trust store is used.
    """

    def __init__(
        self,
        uri: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        unix_path: str | None = None,
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        headers: Iterable[tuple[str, str]] = (),
        compression: DeflateConfig | None = _DEFAULT_COMPRESSION,
        on_message: OnMessage | None = None,
        max_message_size: int | None = MAX_MESSAGE_SIZE,
        max_queue: int | None = MAX_QUEUE,
        write_limit: int = WRITE_LIMIT,
        max_head_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
        ping_interval: float | None = PING_INTERVAL,
        ping_timeout: float | None = PING_TIMEOUT,
        open_timeout: float | None = OPEN_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        max_redirects: int = 10,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.uri = parse_uri(uri)
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.unix_path = unix_path
        self.origin = origin
        self.subprotocols = list(subprotocols)
        self.headers = list(headers)
        self.compression = compression
        self.on_message = on_message
        self.max_message_size = max_message_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_redirects = max_redirects
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.logger = logger or logging.getLogger("tidings.client")
        self._ws: WebSocket | None = None

    # -- the three ways to use it -------------------------------------

    def __await__(self) -> Generator[Any, None, WebSocket]:
        return self._open().__await__()

    async def __aenter__(self) -> WebSocket:
        self._ws = await self._open()
        return self._ws

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            await self._ws.close()

    def __aiter__(self) -> AsyncIterator[WebSocket]:
        return self._reconnecting()

    async def _reconnecting(self) -> AsyncIterator[WebSocket]:
        delay = self.backoff_initial
        while True:
            try:
                ws = await self._open()
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                if isinstance(exc, InvalidStatus) and exc.status < 500:
                    raise  # the server refused us; retrying will not help
                wait = delay * random.uniform(0.5, 1.5)
                self.logger.info(
                    "connecting to %s failed (%s); retrying in %.1f s",
                    self.uri,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            try:
                yield ws
            finally:
                await ws.close()

    # -- opening -------------------------------------------------------

    async def _open(self) -> WebSocket:
        try:
            async with asyncio.timeout(self.open_timeout):
                return await self._follow_redirects()
        except TimeoutError:
            limit = self.open_timeout
            raise TimeoutError(
                f"opening a WebSocket to {self.uri} took longer than {limit} s"
            ) from None

    async def _follow_redirects(self) -> WebSocket:
        uri = self.uri
        for _ in range(self.max_redirects + 1):
            try:
                return await self._open_once(uri)
            except InvalidStatus as exc:
                location = {k.lower(): v for k, v in exc.headers}.get("location")
                if exc.status not in _REDIRECTS or location is None:
                    raise
                target = parse_uri(urllib.parse.urljoin(str(uri), location))
                if uri.secure and not target.secure:
                    raise InvalidHandshake(
                        f"refusing the redirect from {uri} to insecure {target}"
                    ) from None
                uri = target
        raise InvalidHandshake(
            f"more than {self.max_redirects} redirects from {self.uri}"
        )

    async def _open_once(self, uri: WebSocketURI) -> WebSocket:
        conn = ClientConnection(
            uri,
            origin=self.origin,
            subprotocols=self.subprotocols,
            extra_headers=self.headers,
            compression=self.compression,
            max_message_size=self.max_message_size,
            max_head_size=self.max_head_size,
            max_headers=self.max_headers,
        )
        ws = WebSocket(
            conn,
            on_message=self.on_message,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            logger=self.logger,
        )
        context: ssl_module.SSLContext | None = None
        if uri.secure:
            context = self.ssl or ssl_module.create_default_context()
        elif self.ssl is not None:
            raise ValueError(f"ssl= was given for {uri}; use a wss:// URI for TLS")
        hostname = (self.server_hostname or uri.host) if context else None
        loop = asyncio.get_running_loop()
        if self.unix_path is not None:
            await loop.create_unix_connection(
                lambda: ws, self.unix_path, ssl=context, server_hostname=hostname
            )
        else:
            await loop.create_connection(
                lambda: ws, uri.host, uri.port, ssl=context, server_hostname=hostname
            )
        try:
            await asyncio.shield(ws._opened)
        except BaseException:
            ws._abort()
            raise
        return ws
