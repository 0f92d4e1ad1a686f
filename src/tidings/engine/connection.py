"""The asyncio WebSocket: one object per connection, both the transport's
protocol and the user's handle.

It owns everything that waits: the socket, the keepalive timer, the close
timeout and the write-buffer watermarks. The protocol itself is
:mod:`tidings.protocol`, fed from :meth:`WebSocket.buffer_updated`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Final, TypeAlias, cast

from ..exceptions import ConnectionClosed
from ..protocol import (
    BinaryMessage,
    ClientConnection,
    Closed,
    Connection,
    Event,
    Pong,
    Request,
    Response,
    ServerConnection,
    State,
    TextMessage,
)
from ..protocol.limits import (
    CLOSE_TIMEOUT,
    MAX_QUEUE,
    PING_INTERVAL,
    PING_TIMEOUT,
    WRITE_LIMIT,
)

__all__ = ["Message", "WebSocket"]

# Enum members cost an EnumType.__getattr__ call on Python 3.11 (see
# tidings.protocol.connection); the per-message paths use aliases.
_CLOSED: Final = State.CLOSED
_CONNECTING: Final = State.CONNECTING
_OPEN: Final = State.OPEN

Message: TypeAlias = str | bytes
Data: TypeAlias = str | bytes | bytearray | memoryview
OnMessage: TypeAlias = Callable[["WebSocket", Message], object]

# Tuples, as `A | B` would build a union object on every call.
_MESSAGES = (TextMessage, BinaryMessage)
_DATA = (str, bytes, bytearray, memoryview)

# While corked, a write goes out at least every this many frames.
_HOLD_MAX = 16

# Reads land here (see WebSocket.get_buffer); one per thread, as event loops
# are, and it is never held across reads.
_SCRATCH_SIZE = 256 * 1024
_scratch_local = threading.local()


def _scratch() -> memoryview:
    try:
        view: memoryview = _scratch_local.view
    except AttributeError:
        view = _scratch_local.view = memoryview(bytearray(_SCRATCH_SIZE))
    return view


_CLEAN_CODES = frozenset({1000, 1001, 1005})


class WebSocket(asyncio.BufferedProtocol):
    """An open WebSocket connection.

    Receive with ``async for message in ws`` or ``await ws.recv()``; send
    with ``await ws.send(message)``; end with ``await ws.close()``. Text
    arrives as ``str``, binary as ``bytes``.

    For code where a coroutine per message costs too much, set
    :attr:`on_message` (or pass ``on_message=`` to ``serve``/``connect``):
    each message is then handed to ``on_message(ws, message)`` straight from
    the socket callback, with no queue, task or future, and ``recv()`` is not
    used. Answer from the callback with :meth:`send_nowait`.
    """

    __slots__ = (
        "_close_timer",
        "_closed",
        "_conn",
        "_corked",
        "_drain_waiter",
        "_fd",
        "_fragmenting",
        "_held",
        "_into",
        "_keepalive_payload",
        "_keepalive_timer",
        "_loop",
        "_messages",
        "_opened",
        "_pings",
        "_reading_paused",
        "_recv_waiter",
        "_scratch",
        "_transport",
        "_unsent",
        "_write_paused",
        "close_timeout",
        "latency",
        "logger",
        "max_queue",
        "on_message",
        "ping_interval",
        "ping_timeout",
        "remote_address",
        "write_limit",
    )

    def __init__(
        self,
        conn: Connection,
        *,
        on_message: OnMessage | None = None,
        max_queue: int | None = MAX_QUEUE,
        write_limit: int = WRITE_LIMIT,
        ping_interval: float | None = PING_INTERVAL,
        ping_timeout: float | None = PING_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.logger = logger or logging.getLogger("tidings")
        #: Round trip of the last ping answered, in seconds.
        self.latency = 0.0
        self.remote_address: Any = None
        self._transport: asyncio.Transport | None = None
        # The socket's descriptor while connected over plain TCP (or a Unix
        # socket), else -1: the fan-out writes to it directly while the
        # transport holds nothing (engine/broadcast.py).
        self._fd = -1
        # The transport may hold bytes: set by every write through it, and
        # cleared by the fan-out once it finds it empty, which then need not
        # ask the transport for each publication.
        self._unsent = False
        # Made when a message is queued, dropped once read: the callback path
        # never needs it, and an empty deque costs 600 bytes per connection.
        self._messages: deque[Message] | None = None
        self._recv_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._fragmenting: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._write_paused = False
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] | None = None
        self._keepalive_payload: bytes | None = None
        # The group of _KeepaliveTimers this connection waits in, if any.
        self._keepalive_timer: dict[WebSocket, None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # True while buffer_updated runs: what the callbacks send in answer
        # goes out in one write at the end, not one system call each. Also
        # set until the end of the loop iteration by broadcast() and by
        # send() while more messages wait to be read (see send()).
        self._corked = False
        # Frames queued while corked since the last write.
        self._held = 0
        # True when the last get_buffer() gave the parser's own buffer.
        self._into = False
        self._scratch = _scratch()
        #: Resolved when the opening handshake ends, either way.
        self._opened: asyncio.Future[None] = self._loop.create_future()
        #: Resolved when the TCP connection is gone.
        self._closed: asyncio.Future[None] = self._loop.create_future()

    # -- what the user reads -------------------------------------------

    @property
    def state(self) -> State:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        return self._conn.state

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol agreed in the handshake, if any."""
        return self._conn.subprotocol

    @property
    def request(self) -> Request | None:
        """The client's opening request (path, query, headers), on a server."""
        conn = self._conn
        return conn.request if isinstance(conn, ServerConnection) else None

    @property
    def response(self) -> Response | None:
        """The server's 101 response, on a client."""
        conn = self._conn
        return conn.response if isinstance(conn, ClientConnection) else None

    @property
    def close_code(self) -> int | None:
        """The close code, once the connection is closed (1006: TCP lost)."""
        return self._conn.close_code if self._conn.state is _CLOSED else None

    @property
    def close_reason(self) -> str:
        """The close reason, once the connection is closed."""
        return self._conn.close_reason

    @property
    def protocol(self) -> Connection:
        """The sans-I/O protocol state machine underneath."""
        return self._conn

    # -- receiving -----------------------------------------------------

    async def recv(self) -> Message:
        """Return the next message; raise :class:`ConnectionClosed` once the
        connection is closed and every message before the close was read."""
        while not self._messages:
            if self._conn.state is _CLOSED:
                raise self._closed_exc()
            if self._recv_waiter is not None:
                raise RuntimeError("another coroutine is already waiting in recv()")
            waiter = self._recv_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._recv_waiter = None
        messages = self._messages
        message = messages.popleft()
        if not messages and self._conn.failure_pending:
            # The messages before a protocol error are read; the caller may
            # answer this one before the connection fails (Autobahn 3.2).
            self._loop.call_soon(self._fail_pending)
        if self._reading_paused and len(messages) <= (self.max_queue or 0) // 4:
            self.resume_reading()
        if not messages:
            self._messages = None  # an idle connection holds no deque
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        # A clean close (1000, 1001, or a close frame without a code) ends the
        # loop quietly; anything else raises ConnectionClosed.
        while True:
            try:
                message = await self.recv()
            except ConnectionClosed as exc:
                if exc.code in _CLEAN_CODES:
                    return
                raise
            yield message

    def pause_reading(self) -> None:
        """Stop reading from the socket: TCP flow control makes the peer
        wait. For an :attr:`on_message` callback whose own queue is full
        (``recv()`` does this by itself). Reading resumes with
        :meth:`resume_reading`, or once a close begins: the peer's close
        frame may be behind the messages it holds back."""
        if (
            not self._reading_paused
            # Once closing, keep reading: the peer's close frame is coming.
            and self._conn.state is _OPEN
            and self._transport is not None
        ):
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the socket again after :meth:`pause_reading`."""
        if self._reading_paused:
            self._reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def add_close_callback(self, callback: Callable[[object], object]) -> None:
        """Call ``callback`` once the TCP connection is closed, as
        ``Future.add_done_callback`` would: for code that keeps no task per
        connection to await :meth:`wait_closed`."""
        self._closed.add_done_callback(callback)

    def _closed_exc(self) -> ConnectionClosed:
        return ConnectionClosed(self._conn.close_code or 1006, self._conn.close_reason)

    # -- sending -------------------------------------------------------

    async def send(self, message: Data | Iterable[Data] | AsyncIterable[Data]) -> None:
        """Send a message and wait while the write buffer is over its limit.

        ``str`` is sent as text and ``bytes``-like as binary. An iterable or
        async iterable of them is sent as one fragmented message, one frame
        per item. Raises :class:`ConnectionClosed` once the connection closes.
        """
        while self._fragmenting is not None:
            await asyncio.shield(self._fragmenting)
        if isinstance(message, _DATA):
            if not self._corked and self._messages:
                # More messages wait to be read: the answers to them leave
                # together, in one write at the end of this loop iteration,
                # rather than in a system call each.
                self._corked = True
                self._loop.call_soon(self.flush)
            self.send_nowait(message)
        elif isinstance(message, AsyncIterable):
            await self._send_fragments(aiter(message))
        elif isinstance(message, Iterable):
            await self._send_fragments(_to_async(message))
        else:
            raise TypeError(f"cannot send {type(message).__name__}: use str or bytes")
        if self._write_paused:
            await self._drain()

    def send_nowait(self, message: Data) -> None:
        """Send a message without waiting: for callbacks and broadcasts.

        The write buffer may then grow past ``write_limit``; check
        :attr:`write_buffer_size` to apply a policy of your own.
        """
        self._conn.send_message(message)
        self._write_out()

    def send_frame(self, frame: bytes) -> bool:
        """Queue a whole frame built once for many connections (as
        :func:`~tidings.broadcast` does); it goes out with this connection's
        next write. Returns True when it starts a batch: the caller then
        calls :meth:`flush` once it has queued everything, so that a burst
        costs one write per connection. The frame must suit the connection:
        unmasked (a server's), and compressed only as it negotiated.
        """
        self._conn.send_prepared(frame)
        if self._corked:
            return False
        self._corked = True
        return True

    @property
    def write_buffer_size(self) -> int:
        """Bytes accepted by :meth:`send` but not yet handed to the kernel."""
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def _send_fragments(self, fragments: AsyncIterator[Data]) -> None:
        conn = self._conn
        try:
            current = await anext(fragments)
        except StopAsyncIteration:
            return  # nothing to send
        self._fragmenting = self._loop.create_future()
        try:
            text = isinstance(current, str)
            first = True
            while True:
                try:
                    upcoming = await anext(fragments)
                    last = False
                except StopAsyncIteration:
                    last = True
                if isinstance(current, str) != text:
                    raise TypeError(
                        "fragments of one message must all be str or all bytes"
                    )
                if not first:
                    conn.send_continuation(current, fin=last)
                elif isinstance(current, str):
                    conn.send_text(current, fin=last)
                else:
                    conn.send_binary(current, fin=last)
                first = False
                self._write_out()
                if last:
                    return
                if self._write_paused:
                    await self._drain()
                current = upcoming
        except BaseException:
            if not first and conn.state is _OPEN:
                # A half-sent message cannot be finished: the peer would read
                # the next message as its continuation.
                self._fail(1011, "fragmented message aborted")
            raise
        finally:
            self._fragmenting.set_result(None)
            self._fragmenting = None

    async def _drain(self) -> None:
        if self._conn.state is _CLOSED or self._transport is None:
            raise self._closed_exc()
        waiter = self._drain_waiter
        if waiter is None:
            waiter = self._drain_waiter = self._loop.create_future()
        await asyncio.shield(waiter)

    async def ping(self, data: bytes | None = None) -> float:
        """Send a ping and return the round trip in seconds when its pong
        arrives; the value is kept in :attr:`latency`."""
        payload = os.urandom(4) if data is None else data
        if self._pings is None:
            self._pings = {}
        if payload in self._pings:
            raise ValueError("a ping with this payload is already waiting")
        self._conn.send_ping(payload)
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._pings[payload] = (waiter, time.monotonic())
        self._write_out()
        return await asyncio.shield(waiter)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason`` and wait until TCP is closed,
        at most ``close_timeout`` for the peer's answer."""
        if self._conn.state is _OPEN:
            self._start_close(code, reason)
        elif self._conn.state is _CONNECTING and self._transport is not None:
            self._transport.abort()
        await self.wait_closed()

    def _start_close(self, code: int, reason: str) -> None:
        """Send our close frame; the peer's answer is read, within
        ``close_timeout``."""
        self._conn.send_close(code, reason)
        self._write_out()
        self._arm_close_timer()
        # The peer's close frame may be behind messages nobody reads.
        self.resume_reading()

    def drop(self, code: int = 1011, reason: str = "") -> None:
        """Fail the connection now: send a close frame with ``code`` if the
        socket takes it at once, then drop TCP without waiting. For a peer
        that is dead, too slow, or not wanted any more."""
        self._fail(code, reason, drop=True)

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        await asyncio.shield(self._closed)

    # -- asyncio.BufferedProtocol --------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        self.remote_address = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("ssl_object") is None:
            self._fd = sock.fileno()
        # No TCP_NODELAY here: asyncio and uvloop set it on every TCP
        # transport they make (tests/engine/test_connection.py checks).
        transport.set_write_buffer_limits(
            high=self.write_limit, low=self.write_limit // 4
        )
        self._write_out()  # a client's request

    def get_buffer(self, sizehint: int) -> memoryview:
        # A large frame still arriving is received straight into its own
        # buffer; everything else into this thread's scratch area, from
        # which whole frames are parsed without a copy.
        view = self._conn.get_buffer()
        self._into = view is not None
        return self._scratch if view is None else view

    def buffer_updated(self, nbytes: int) -> None:
        self._corked = True
        try:
            conn = self._conn
            # Unread messages keep a protocol error in this data from failing
            # the connection before the application could answer them.
            if self._into:
                self._handle_events(
                    conn.receive_into(nbytes, unread=bool(self._messages))
                )
                return
            data = self._scratch[:nbytes]
            messages = conn.receive_messages(data)
            if messages is None:
                self._handle_events(
                    conn.receive_data(data, unread=bool(self._messages))
                )
                return
            if self.on_message is None:
                for message in messages:
                    self._deliver(message)
                return
            # The callback path without a _deliver() call per message. The
            # callback is read again for each: one may hand the messages
            # that follow to another (a hub's first message starts the
            # session that takes them).
            for message in messages:
                callback = self.on_message
                if callback is None:
                    self._deliver(message)
                    continue
                try:
                    callback(self, message)
                except Exception:
                    self._callback_failed()
                    return
        finally:
            self._corked = False
            self._flush()

    def eof_received(self) -> bool:
        self._handle_events(self._conn.receive_eof())
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fd = -1
        if self._conn.state is not _CLOSED:  # as after a close handshake
            self._handle_events(self._conn.receive_eof())
        self._cancel_keepalive()
        if self._close_timer is not None:
            self._close_timer.cancel()
        for waiter, _ in (self._pings or {}).values():
            if not waiter.done():
                waiter.set_exception(self._closed_exc())
        self._pings = None
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(self._closed_exc())
            self._drain_waiter.exception()  # its waiters hold it through a shield
        if not self._opened.done():
            self._opened.set_exception(self._conn.error or self._closed_exc())
            self._opened.exception()  # a server has nobody waiting on it
        self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        # Pongs wait too, or a peer that sends pings and never reads would
        # have us queue a pong per ping without end. While they wait, only
        # the latest ping is kept, to be answered once the buffer drains
        # (RFC 6455 §5.5.3): memory stays bounded, at one payload.
        #
        # Why not stop reading until the buffer drains, as a full message
        # queue does? A peer may well send without reading until its send
        # is done (a client uploading while we push a feed to it, a script
        # that writes everything and then reads). If we stopped reading
        # whenever our buffer is full, each side would wait for the other.
        # Holding pongs keeps reading going, and a peer that reads gets the
        # pong to its latest ping as soon as our buffer drains.
        self._conn.hold_pongs(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._conn.hold_pongs(False)
        self._write_out()  # the pong to the latest ping, if one waited
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- internals -----------------------------------------------------

    def _write_out(self) -> None:
        if not self._corked:
            self._flush()
        else:
            # While corked, still write every _HOLD_MAX frames: the peer
            # starts on the first answers while we make the rest, and a
            # sender that never yields cannot grow our memory.
            self._held += 1
            if self._held >= _HOLD_MAX:
                self._flush()

    def flush(self) -> None:
        """Write what is queued now, ending a batch of :meth:`send_frame`."""
        self._corked = False
        self._flush()

    def _flush(self) -> None:
        self._held = 0
        data = self._conn.data_to_send()
        transport = self._transport
        if data and transport is not None:
            self._unsent = True
            if len(data) == 1:
                transport.write(data[0])
            else:
                transport.writelines(data)

    def _handle_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, _MESSAGES):
                self._deliver(event.data)
            elif isinstance(event, Pong):
                self._pong_received(event.data)
            elif isinstance(event, Closed):
                self._closed_event(event)
            elif isinstance(event, Request):
                self._request_received(event)
            elif isinstance(event, Response):
                self._opened_ok()
        if not self._corked:
            self._flush()
        conn = self._conn
        if conn.failure_pending and not self._messages:
            # A protocol error came after messages that on_message has seen
            # and may have answered; fail now. (With messages still queued,
            # recv() does this once it hands out the last one.)
            self._loop.call_soon(self._fail_pending)
        if conn.state is _CLOSED and self._transport is not None:
            self._flush()  # the close frame goes before the transport closes
            if conn.should_close_transport():
                self._close_transport(self._transport)
            # Bounded either way: a client waits for the server's FIN, and a
            # close() cannot finish while a peer that stopped reading leaves
            # our buffer unflushed.
            self._arm_close_timer()

    def _deliver(self, message: Message) -> None:
        callback = self.on_message
        if callback is not None:
            try:
                callback(self, message)
            except Exception:
                self._callback_failed()
            return
        messages = self._messages
        if messages is None:
            messages = self._messages = deque()
        messages.append(message)
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.max_queue is not None and len(messages) >= self.max_queue:
            # Stop reading: the kernel's buffers fill and TCP flow control
            # makes the peer wait, instead of our memory growing.
            self.pause_reading()

    def _callback_failed(self) -> None:
        self.logger.exception("error in on_message callback")
        self._fail(1011, "internal error")

    def _closed_event(self, event: Closed) -> None:
        # A handshake that failed is the caller's to report (connect()
        # raises; the server logs it).
        if event.error is not None and self._opened.done():
            self.logger.info(
                "connection %s failed with close code %d: %s",
                self.remote_address,
                event.code,
                event.error,
            )
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, code: int, reason: str, *, drop: bool = False) -> None:
        """End the connection from our side at once (keepalive, callbacks).

        With ``drop`` the socket is aborted right after the close frame is
        handed to the kernel, for a peer that is dead or will not read.
        """
        self._handle_events(self._conn.fail(code, reason))
        if drop:
            self._abort()

    def _fail_pending(self) -> None:
        if self._conn.failure_pending:
            self._handle_events(self._conn.receive_data(b""))

    def _close_transport(self, transport: asyncio.Transport) -> None:
        if self._conn.error is not None and transport.can_write_eof():
            # We failed the connection while the peer may still be sending.
            # Closing now would reset TCP over unread data, and the peer
            # could lose our close frame (a 1009 seen as 1006). Shut down
            # our side only, discard what still comes, and close on its EOF
            # or after close_timeout.
            try:
                transport.write_eof()
            except OSError:  # the peer is already gone
                transport.abort()
                return
            self.resume_reading()
        else:
            transport.close()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self._transport is not None:
            self._close_timer = self._loop.call_later(self.close_timeout, self._abort)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _request_received(self, request: Request) -> None:
        raise NotImplementedError  # servers override

    def _opened_ok(self) -> None:
        if not self._opened.done():
            self._opened.set_result(None)
        self._schedule_keepalive()

    # -- keepalive -----------------------------------------------------

    def _schedule_keepalive(self) -> None:
        if self.ping_interval is not None:
            self._keepalive_in(self.ping_interval)

    def _keepalive_in(self, delay: float) -> None:
        """Call :meth:`_keepalive_due` in ``delay`` seconds, or a little
        later (see _KeepaliveTimers)."""
        self._keepalive_timer = _keepalive_timers(self._loop).add(self, delay)

    def _cancel_keepalive(self) -> None:
        timer = self._keepalive_timer
        if timer is not None:
            timer.pop(self, None)
            self._keepalive_timer = None

    def _keepalive_due(self) -> None:
        """Time to ping, or to see whether the pong to our ping came."""
        self._keepalive_timer = None
        payload = self._keepalive_payload
        if payload is None:
            self._keepalive_ping()
        else:
            self._keepalive_deadline(payload)

    def _keepalive_ping(self) -> None:
        if self._conn.state is not _OPEN:
            return
        payload = os.urandom(4)
        self._keepalive_payload = payload
        self._conn.send_ping(payload)
        self._write_out()
        if self.ping_timeout is not None:
            self._keepalive_in(self.ping_timeout)

    def _keepalive_deadline(self, payload: bytes) -> None:
        # A blocked or busy loop may fire this timer late, with the pong
        # already unread in the socket; libuv (uvloop) even runs due timers
        # before it polls for I/O. Decide only after one more poll: the first
        # hop runs before that poll's callbacks, the second after them.
        self._loop.call_soon(self._loop.call_soon, self._keepalive_check, payload)

    def _keepalive_check(self, payload: bytes) -> None:
        if self._keepalive_payload != payload or self._conn.state is not _OPEN:
            return
        if self._reading_paused:
            # We stopped reading (the application is behind), so the pong
            # may be waiting unread: that is our slowness, not the peer's.
            self._keepalive_in(self.ping_timeout or 0)
            return
        self.logger.info(
            "connection %s: no pong within %s s, closing",
            self.remote_address,
            self.ping_timeout,
        )
        self._fail(1011, "keepalive ping timeout", drop=True)

    def _pong_received(self, payload: bytes) -> None:
        if payload == self._keepalive_payload:
            self._keepalive_payload = None
            self._cancel_keepalive()
            self._schedule_keepalive()
        pings = self._pings
        if pings and payload in pings:
            # RFC 6455 §5.5.3: a pong may answer only the latest ping; the
            # earlier ones are answered too.
            now = time.monotonic()
            while pings:
                key, (waiter, sent) = next(iter(pings.items()))
                del pings[key]
                if not waiter.done():
                    waiter.set_result(now - sent)
                if key == payload:
                    self.latency = now - sent
                    break


class _KeepaliveTimers:
    """The keepalive timers of one event loop's connections, grouped by
    when they are due: one asyncio timer per group rather than one per
    connection, which costs a server of many idle clients ~500 bytes each.

    A delay is rounded up to a multiple of a power of two at most 1/16 of
    it (and at least 1/64 s), so that connections due close together share
    a timer: a ping or a deadline may come up to 1/16 of its delay late.
    """

    __slots__ = ("_due", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: The connections due at each time (a dict: one leaves in O(1)).
        self._due: dict[float, dict[WebSocket, None]] = {}

    def add(self, ws: WebSocket, delay: float) -> dict[WebSocket, None]:
        """Call ``ws._keepalive_due()`` after ``delay`` seconds (or up to
        1/16 more); return the group, from which ``ws`` may delete itself
        to cancel."""
        step = _KEEPALIVE_STEP
        if delay > 16 * step:
            step = math.ldexp(1.0, math.frexp(delay / 16)[1] - 1)
        when = math.ceil((self.loop.time() + delay) / step) * step
        group = self._due.get(when)
        if group is None:
            group = self._due[when] = {}
            self.loop.call_at(when, self._fire, when)
        group[ws] = None
        return group

    def _fire(self, when: float) -> None:
        group = self._due.pop(when)
        while group:
            ws, _ = group.popitem()
            ws._keepalive_due()


#: The finest grouping of keepalive timers, in seconds.
_KEEPALIVE_STEP = 1 / 64
_timers_local = threading.local()


def _keepalive_timers(loop: asyncio.AbstractEventLoop) -> _KeepaliveTimers:
    """The keepalive timers of ``loop``: one per thread, as event loops
    are, made anew when the thread runs another loop."""
    timers: _KeepaliveTimers | None = getattr(_timers_local, "timers", None)
    if timers is None or timers.loop is not loop:
        timers = _timers_local.timers = _KeepaliveTimers(loop)
    return timers


async def _to_async(items: Iterable[Data]) -> AsyncIterator[Data]:
    for item in items:
        yield item
