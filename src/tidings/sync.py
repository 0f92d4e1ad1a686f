"""A blocking WebSocket client for scripts, notebooks and tests.

``with tidings.sync.connect(uri) as ws:`` then ``ws.send(...)``,
``ws.recv(timeout=...)`` or ``for message in ws``. It runs on the same
protocol core as the asyncio client, over a plain blocking socket, in the
caller's thread: no event loop and no thread of its own.

So the connection reads only while you call :meth:`WebSocket.recv` (or
iterate, or close). That is when pings are answered and a close from the
server is seen. A script that stops reading for longer than the server's
keepalive timeout (20 s for a tidings server) will find the connection
closed by the server. Read or close in time, or use the asyncio client,
which reads all along.

Writes have no timeout of their own, as in the websockets library's
blocking client: a timeout could stop one midway through a frame, after
which nothing more can be sent. ``send`` and the answers to pings wait
while the server does not read (TCP flow control), whatever timeout a
``recv`` had. Only opening and closing are bounded, by ``open_timeout``
and ``close_timeout``. A write that fails loses the connection (1006).
"""

from __future__ import annotations

import contextlib
import socket
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType

from .exceptions import ConnectionClosed
from .protocol import (
    BinaryMessage,
    ClientConnection,
    DeflateConfig,
    Response,
    State,
    TextMessage,
    parse_uri,
)
from .protocol.limits import (
    CLOSE_TIMEOUT,
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    MAX_MESSAGE_SIZE,
    OPEN_TIMEOUT,
)

__all__ = ["WebSocket", "connect"]

_DEFAULT_COMPRESSION = DeflateConfig()
_CLEAN_CODES = frozenset({1000, 1001, 1005})
_READ = 65536

Message = str | bytes


class WebSocket:
    """An open connection: :meth:`send`, :meth:`recv`, iteration,
    :meth:`close`; a context manager that closes it at the end. Use it from
    one thread at a time."""

    def __init__(
        self, sock: socket.socket, conn: ClientConnection, close_timeout: float
    ) -> None:
        self._sock = sock
        self._conn = conn
        self.close_timeout = close_timeout
        self._messages: deque[Message] = deque()

    @property
    def state(self) -> State:
        """OPEN, CLOSING or CLOSED."""
        return self._conn.state

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol agreed in the handshake, if any."""
        return self._conn.subprotocol

    @property
    def response(self) -> Response | None:
        """The server's 101 response."""
        return self._conn.response

    @property
    def close_code(self) -> int | None:
        """The close code, once closed (1006: TCP lost without a close)."""
        return self._conn.close_code if self._conn.state is State.CLOSED else None

    @property
    def close_reason(self) -> str:
        """The close reason, once closed."""
        return self._conn.close_reason

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send ``str`` as text, bytes-like as binary; blocks until the
        kernel took all of it, however long the server takes to read.
        Raises :class:`ConnectionClosed` once closed."""
        self._conn.send_message(message)
        try:
            self._flush()
        except OSError as exc:
            raise ConnectionClosed(1006, str(exc)) from exc

    def recv(self, timeout: float | None = None) -> Message:
        """Return the next message, waiting at most ``timeout`` seconds
        (None: as long as it takes) for one to arrive; raise
        :class:`TimeoutError` when none came in time,
        :class:`ConnectionClosed` once the connection is closed and every
        message before the close was read. Answering a ping may take longer
        than ``timeout`` while the server does not read."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._messages:
            if self._conn.state is State.CLOSED:
                raise ConnectionClosed(
                    self._conn.close_code or 1006, self._conn.close_reason
                )
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                raise TimeoutError(f"no message within {timeout} s")
            self._read(left)
        return self._messages.popleft()

    def __iter__(self) -> Iterator[Message]:
        """Messages until the connection closes: quietly after a clean close
        (1000, 1001, no code), else with :class:`ConnectionClosed`."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosed as exc:
                if exc.code in _CLEAN_CODES:
                    return
                raise

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason``, and wait at most
        ``close_timeout`` for the server's answer and its end of TCP.
        Messages that arrive meanwhile are kept for :meth:`recv`."""
        deadline = time.monotonic() + self.close_timeout
        if self._conn.state is State.OPEN:
            self._conn.send_close(code, reason)
            with contextlib.suppress(OSError):  # it closed the socket: done
                self._flush(self.close_timeout)
        with contextlib.suppress(OSError):
            # RFC 6455 §7.1.1: the server closes TCP first; wait for its EOF.
            while self._sock.fileno() != -1:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._read(left)
        self._sock.close()

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------

    def _flush(self, timeout: float | None = None) -> None:
        """Write what the protocol has to send, waiting at most ``timeout``
        seconds (None: as long as it takes). On failure the connection is
        lost (1006) and the OSError raised: part of a frame may be on the
        wire, and nothing sent after it would be read right."""
        data = self._conn.data_to_send()
        if not data:
            return
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(b"".join(data))
        except OSError:
            self._conn.receive_eof()  # CLOSED, 1006
            self._sock.close()
            raise

    def _read(self, timeout: float | None) -> None:
        """Read once, for at most ``timeout`` seconds: keep the messages,
        send what the protocol answers (pongs, the reply to a close), and
        close the socket once TCP is over."""
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(_READ)
        except TimeoutError:
            return
        except OSError:
            data = b""
        conn = self._conn
        events = conn.receive_data(data) if data else conn.receive_eof()
        self._messages.extend(
            e.data for e in events if isinstance(e, TextMessage | BinaryMessage)
        )
        try:
            self._flush()  # pongs, the answer to a close
        except OSError:
            return  # the connection is lost: recv says so
        if not data or (conn.state is State.CLOSED and conn.should_close_transport()):
            self._sock.close()


def connect(
    uri: str,
    *,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    origin: str | None = None,
    subprotocols: Sequence[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    compression: DeflateConfig | None = _DEFAULT_COMPRESSION,
    max_message_size: int | None = MAX_MESSAGE_SIZE,
    max_head_size: int = MAX_HEAD_SIZE,
    max_headers: int = MAX_HEADERS,
    open_timeout: float | None = OPEN_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
) -> WebSocket:
    """Open a WebSocket to ``uri`` (``ws://`` or ``wss://``) and return it
    once the handshake succeeded; ``with connect(uri) as ws:`` also closes
    it at the end.

    ``open_timeout`` bounds TCP connect, TLS and the HTTP handshake
    together. For ``wss://`` without ``ssl``, the system's default trust
    store is used. A refused handshake raises
    :class:`~tidings.exceptions.InvalidStatus` or
    :class:`~tidings.exceptions.InvalidHandshake`, as the asyncio client's.
    """
    target = parse_uri(uri)
    context: ssl_module.SSLContext | None = None
    if target.secure:
        context = ssl or ssl_module.create_default_context()
    elif ssl is not None:
        raise ValueError(f"ssl= was given for {uri}; use a wss:// URI for TLS")
    conn = ClientConnection(
        target,
        origin=origin,
        subprotocols=subprotocols,
        extra_headers=headers,
        compression=compression,
        max_message_size=max_message_size,
        max_head_size=max_head_size,
        max_headers=max_headers,
    )
    deadline = None if open_timeout is None else time.monotonic() + open_timeout
    sock = socket.create_connection((target.host, target.port), timeout=open_timeout)
    try:
        if context is not None:
            sock = context.wrap_socket(
                sock, server_hostname=server_hostname or target.host
            )
        ws = WebSocket(sock, conn, close_timeout)
        while conn.state is State.CONNECTING:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(
                    f"opening a WebSocket to {target} took longer than {open_timeout} s"
                )
            ws._flush(left)  # the request, the first time round
            ws._read(left)
        if conn.state is not State.OPEN and conn.error is not None:
            raise conn.error
        if conn.state is State.CLOSED and conn.response is None:
            raise ConnectionClosed(conn.close_code or 1006, conn.close_reason)
    except BaseException:
        sock.close()
        raise
    return ws
