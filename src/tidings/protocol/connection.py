"""The WebSocket connection state machine, sans I/O.

A connection is fed bytes with :meth:`Connection.receive_data` and returns
events; calls such as :meth:`Connection.send_text` queue bytes that
:meth:`Connection.data_to_send` hands to whoever owns the socket. Nothing here
waits, reads a clock or touches a socket, so asyncio, threads or trio can all
drive it, and a test drives it with byte strings alone.

States follow RFC 6455: ``CONNECTING`` (opening handshake) -> ``OPEN`` ->
``CLOSING`` (we sent a close frame and wait for the peer's) -> ``CLOSED``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import Final

from ..exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    PayloadTooBig,
    ProtocolError,
    TidingsError,
)
from . import deflate, handshake
from .events import (
    BinaryMessage,
    Closed,
    Event,
    Fragment,
    Ping,
    Pong,
    TextMessage,
)
from .frames import (
    MAX_CONTROL_PAYLOAD,
    RSV1,
    Buffer,
    FrameParser,
    Opcode,
    build_frame,
    mask_key,
    parse_close,
    parse_messages,
    serialize_close,
    serialize_header,
)
from .limits import MAX_HEAD_SIZE, MAX_HEADERS, MAX_MESSAGE_SIZE
from .uri import WebSocketURI, parse_uri
from .utf8 import Utf8Decoder, decode_utf8

__all__ = ["ClientConnection", "Connection", "ServerConnection", "State"]


class State(IntEnum):
    """Where a connection is in its life (RFC 6455 §4, §7)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


# Python 3.11 looks enum members up through EnumType.__getattr__, at about
# 100 ns a time; the per-message paths use these module-level aliases.
_CLOSED: Final = State.CLOSED
_CLOSING: Final = State.CLOSING
_CONNECTING: Final = State.CONNECTING
_OPEN: Final = State.OPEN
_BINARY: Final = Opcode.BINARY
_CLOSE: Final = Opcode.CLOSE
_CONTINUATION: Final = Opcode.CONTINUATION
_PING: Final = Opcode.PING
_PONG: Final = Opcode.PONG
_TEXT: Final = Opcode.TEXT

_DEFAULT_COMPRESSION: Final = deflate.DeflateConfig()

# Payloads up to this size are copied behind their frame header (see
# _write_frame).
_JOIN_MAX = 1024

# Automatic pongs queued between two data_to_send() calls, at most; beyond,
# only the latest ping is answered, when the bytes are next handed out
# (RFC 6455 §5.5.3 allows it). A read full of pings then costs the peer one
# pong per ping it sent in a burst, up to this many (Autobahn's case 2.10
# sends 10 and likes a pong for each), not a pong per 131 bytes of input.
_MAX_UNSENT_PONGS = 16


class Connection:
    """The framing state machine shared by both roles.

    Use :class:`ServerConnection` or :class:`ClientConnection`, which add the
    opening handshake.

    ``max_message_size`` bounds a message after decompression (``None`` for
    no limit); a peer that exceeds it gets close code 1009 before the excess
    is buffered. With ``auto_pong`` the connection answers pings itself. With
    ``stream_messages`` data arrives as :class:`Fragment` events, frame by
    frame, instead of whole messages.
    """

    __slots__ = (
        "_clean_close",
        "_close_sent_code",
        "_compression",
        "_deflate",
        "_held_pong",
        "_in_binary",
        "_in_compressed",
        "_in_opcode",
        "_in_size",
        "_in_text",
        "_in_utf8",
        "_out",
        "_out_compressed",
        "_out_opcode",
        "_parser",
        "_partial_checked",
        "_partial_utf8",
        "_pending_error",
        "_pongs_held",
        "_unsent_pongs",
        "auto_pong",
        "close_code",
        "close_reason",
        "error",
        "failure_pending",
        "is_client",
        "max_message_size",
        "state",
        "stream_messages",
        "subprotocol",
    )

    def __init__(
        self,
        *,
        is_client: bool,
        compression: deflate.DeflateConfig | None,
        max_message_size: int | None,
        auto_pong: bool,
        stream_messages: bool,
    ) -> None:
        self.is_client = is_client
        self.state = _CONNECTING
        self.max_message_size = max_message_size
        self.auto_pong = auto_pong
        self.stream_messages = stream_messages
        self.subprotocol: str | None = None
        #: The final close code and reason, once known.
        self.close_code: int | None = None
        self.close_reason = ""
        #: Why the connection failed, if it did.
        self.error: TidingsError | None = None
        self._compression = compression
        self._deflate: deflate.PerMessageDeflate | None = None
        self._parser = FrameParser(expect_mask=not is_client)
        self._out: list[Buffer] = []
        self._in_opcode: Opcode | None = None
        self._in_compressed = False
        self._in_size = 0
        # The fragments of a message still arriving, if any.
        self._in_text: list[str] | None = None
        self._in_binary: list[bytes] | None = None
        self._in_utf8: Utf8Decoder | None = None
        self._out_opcode: Opcode | None = None
        self._out_compressed = False
        self._close_sent_code: int | None = None
        self._clean_close = False
        # UTF-8 checked so far in a text frame still arriving.
        self._partial_utf8: Utf8Decoder | None = None
        self._partial_checked = 0
        # A protocol error found after messages in the same batch of bytes.
        self._pending_error: ProtocolError | None = None
        #: True when the bytes received hold a protocol error that comes
        #: after messages returned in the same call or still unread.
        #:
        #: Those messages stay answerable, the connection ``OPEN``, so that
        #: answers to them go out before the close frame, as the peer expects
        #: (Autobahn cases 3.2, 4.1.3, 5.15); the connection fails at the next
        #: ``receive_data`` call without ``unread=True`` (``b""`` will do), or
        #: at ``receive_eof``. (An attribute, not a property: the I/O layer
        #: reads it after every read.)
        self.failure_pending = False
        # Automatic pongs: how many wait in _out, whether hold_pongs() holds
        # them back, and the payload of the latest ping not yet answered.
        self._unsent_pongs = 0
        self._pongs_held = False
        self._held_pong: bytes | None = None

    # -- properties ----------------------------------------------------

    @property
    def compression(self) -> deflate.DeflateConfig | None:
        """The permessage-deflate settings this side offers or accepts."""
        return self._compression

    @property
    def deflate_params(self) -> deflate.DeflateParams | None:
        """The negotiated permessage-deflate parameters, or None."""
        return self._deflate.params if self._deflate is not None else None

    def should_close_transport(self) -> bool:
        """True when this side should now close the TCP connection.

        RFC 6455 §7.1.1: after a clean close handshake the server closes TCP
        first, so a client waits for the server's EOF (the I/O layer bounds
        that wait with its close timeout). After a failure either side closes
        at once.
        """
        return self.state is _CLOSED and not (self.is_client and self._clean_close)

    def data_to_send(self) -> list[Buffer]:
        """Return the bytes queued for the peer, in order, and forget them."""
        if self._held_pong is not None and not self._pongs_held:
            self._release_pong()  # more pings came than _MAX_UNSENT_PONGS
        out = self._out
        self._out = []
        self._unsent_pongs = 0
        return out

    def hold_pongs(self, hold: bool = True) -> None:
        """Hold automatic pongs back (``hold=False``: let them go again).

        While they are held, pings are still reported, but only the latest
        one's payload is kept, and it is answered when they are let go: RFC
        6455 §5.5.3 lets a pong answer only the most recent ping. The asyncio
        layer holds them while its write buffer is over its limit, so that a
        peer that sends pings and never reads cannot make us queue pongs
        without end; the pong then queued waits in :meth:`data_to_send`.
        """
        self._pongs_held = hold
        if not hold and self._held_pong is not None:
            self._release_pong()

    def _release_pong(self) -> None:
        payload = self._held_pong
        assert payload is not None
        self._held_pong = None
        # Not after our close frame, as for pings that come after it, nor
        # once closed.
        if self.state is _OPEN and self._close_sent_code is None:
            self._unsent_pongs += 1
            self._write_frame(_PONG, payload)

    # -- receiving -----------------------------------------------------

    def receive_data(self, data: Buffer, *, unread: bool = False) -> list[Event]:
        """Feed bytes from the peer; return the events they complete.

        A peer that breaks the protocol does not make this raise: the
        connection queues a close frame with the RFC's code, moves to
        ``CLOSED`` and reports :class:`Closed` with the error; but see
        :attr:`failure_pending` for an error that follows messages returned
        in the same call, or still ``unread``: pass ``unread=True`` while
        the application has not yet read every message returned before.
        """
        if self.state is _CONNECTING:
            return self._receive_handshake(data)
        if self.state is _CLOSED:
            return []
        if self._pending_error is not None:
            if unread:
                return []  # still held; bytes after an error are never parsed
            return self._fail_pending()
        self._parser.feed(data)
        return self._receive_frames(unread)

    def receive_messages(self, data: Buffer) -> list[str | bytes] | None:
        """:meth:`receive_data` for the usual read, where ``data`` holds
        nothing but whole text and binary messages: return them (``str``
        and ``bytes``, not events), with everything else exactly as
        :meth:`receive_data` would leave it. In any other case (the
        connection not open, a message under way, part of a frame held,
        compression, a control frame, an error) return None having consumed
        nothing: then pass the same ``data`` to :meth:`receive_data`."""
        if (
            self.state is not _OPEN
            or self._parser.incomplete
            or self._in_opcode is not None
            or self._deflate is not None
            or self.stream_messages
            or self._pending_error is not None
        ):
            return None
        return parse_messages(data, not self.is_client, self.max_message_size)

    def get_buffer(self) -> memoryview | None:
        """Room for more of a large frame still arriving, to receive
        straight into (as an ``asyncio.BufferedProtocol`` does) and then
        report with :meth:`receive_into`; or None: read into a buffer of
        your own and pass the bytes to :meth:`receive_data`. The room grows
        with the bytes received, so it may be less than the rest of the
        frame; it never reaches past it."""
        parser = self._parser
        # Room is only ever offered for a frame still arriving: when no part
        # of one is held, as after most reads, this costs no call.
        if not parser.incomplete or self.state is _CONNECTING or self.state is _CLOSED:
            return None
        return parser.get_buffer()

    def receive_into(self, nbytes: int, *, unread: bool = False) -> list[Event]:
        """``nbytes`` were received at the start of :meth:`get_buffer`;
        return the events they complete, as :meth:`receive_data` does."""
        self._parser.buffer_updated(nbytes)
        return self._receive_frames(unread)

    def _fail_pending(self) -> list[Event]:
        assert self._pending_error is not None
        events: list[Event] = []
        self._fail(self._pending_error, events)
        self._pending_error = None
        self.failure_pending = False
        return events

    def receive_eof(self) -> list[Event]:
        """The peer closed its end of the TCP connection."""
        if self.state is _CLOSED:
            return []
        if self._pending_error is not None:
            return self._fail_pending()
        self.state = _CLOSED
        self.close_code = 1006
        return [Closed(1006, error=self.error)]

    def _receive_handshake(self, data: Buffer) -> list[Event]:
        raise NotImplementedError

    def _receive_frames(self, unread: bool = False) -> list[Event]:
        events: list[Event] = []
        parser = self._parser
        try:
            whole = self._frame_budget(0)
            while self.state is not _CLOSED:
                in_size = self._in_size
                parser.max_payload = self._frame_budget(in_size) if in_size else whole
                frame = parser.next_raw()
                if frame is None:
                    if parser.incomplete:
                        partial = parser.partial_header()
                        if partial is not None:
                            self._check_partial_text(*partial)
                    break
                if self._partial_utf8 is not None:
                    self._partial_utf8 = None
                    self._partial_checked = 0
                opcode, payload, fin, rsv1 = frame
                if (
                    fin
                    and (opcode is _BINARY or opcode is _TEXT)
                    and not rsv1
                    and self._in_opcode is None
                    and self._deflate is None
                    and not self.stream_messages
                ):
                    # Most messages come whole in one uncompressed frame, and
                    # without deflate's slack the parser held it to
                    # max_message_size already.
                    events.append(
                        BinaryMessage(payload)
                        if opcode is _BINARY
                        else TextMessage(decode_utf8(payload))
                    )
                else:
                    self._receive_frame(opcode, payload, fin, rsv1, events)
        except ProtocolError as exc:
            if unread or any(isinstance(e, _MESSAGE_EVENTS) for e in events):
                self._pending_error = exc
                self.failure_pending = True
            else:
                self._fail(exc, events)
        return events

    def _check_partial_text(self, opcode: Opcode, rsv1: bool) -> None:
        """Check the UTF-8 of an uncompressed text frame that is still arriving,
        so that invalid text fails at once, not when the frame ends (RFC 6455
        §8.1; Autobahn cases 6.4.3, 6.4.4). Each byte is checked once."""
        decoder = self._partial_utf8
        if decoder is None:
            if opcode is _TEXT and not rsv1 and self._in_opcode is None:
                decoder = Utf8Decoder()
            elif (
                opcode is _CONTINUATION
                and self._in_opcode is _TEXT
                and not self._in_compressed
                and self._in_utf8 is not None
            ):
                decoder = self._in_utf8.copy()
            else:
                return
            self._partial_utf8 = decoder
        # Only text is unmasked ahead of time: binary frames cost nothing here.
        data = self._parser.partial_payload(self._partial_checked)
        decoder.decode(data, False)
        self._partial_checked += len(data)

    def _frame_budget(self, in_size: int) -> int | None:
        """The longest data frame acceptable after ``in_size`` bytes of the
        message."""
        if self.max_message_size is None:
            return None
        budget = self.max_message_size - in_size
        if self._deflate is not None:
            # A compressed frame may be larger than the data it holds: allow
            # deflate's worst case before buffering it, and check the exact
            # limit while inflating (_receive_data_frame).
            budget = deflate.max_compressed_size(budget)
        return budget

    def _receive_frame(
        self,
        opcode: Opcode,
        payload: bytes,
        fin: bool,
        rsv1: bool,
        events: list[Event],
    ) -> None:
        if opcode is _TEXT or opcode is _BINARY:
            if self._in_opcode is not None:
                raise ProtocolError(
                    "new data frame before the previous fragmented message "
                    "ended (RFC 6455 §5.4)"
                )
            self._in_opcode = opcode
            self._in_compressed = rsv1
            self._in_size = 0
            self._receive_data_frame(payload, True, fin, events)
        elif opcode is _CONTINUATION:
            if self._in_opcode is None:
                raise ProtocolError(
                    "continuation frame without a message to continue (RFC 6455 §5.4)"
                )
            if rsv1:
                raise ProtocolError(
                    "RSV1 set on a continuation frame; only the first frame of a "
                    "compressed message has it (RFC 7692 §6.1)"
                )
            self._receive_data_frame(payload, False, fin, events)
        elif opcode is _PING:
            events.append(Ping(payload))
            if self.auto_pong and self._close_sent_code is None:
                if self._pongs_held or self._unsent_pongs >= _MAX_UNSENT_PONGS:
                    self._held_pong = payload  # see hold_pongs()
                else:
                    self._unsent_pongs += 1
                    self._write_frame(_PONG, payload)
        elif opcode is _PONG:
            events.append(Pong(payload))
        else:
            self._receive_close(payload, events)

    def _receive_data_frame(
        self, payload: bytes, first: bool, fin: bool, events: list[Event]
    ) -> None:
        limit = self.max_message_size
        if self._in_compressed:
            assert self._deflate is not None  # RSV1 is only allowed when negotiated
            budget = None if limit is None else limit - self._in_size
            payload = self._deflate.decompress(payload, fin, budget)
        self._in_size += len(payload)
        if limit is not None and self._in_size > limit:
            raise PayloadTooBig(
                f"message exceeds the limit of {limit} bytes; raise "
                "max_message_size to accept larger messages"
            )
        data: str | bytes
        if self._in_opcode is _TEXT:
            if first and fin:
                data = decode_utf8(payload)
            else:
                if first:
                    self._in_utf8 = Utf8Decoder()
                assert self._in_utf8 is not None
                data = self._in_utf8.decode(payload, fin)
        else:
            data = payload
        if self.stream_messages:
            events.append(Fragment(data, first, fin))
        elif first and fin:
            events.append(
                TextMessage(data) if isinstance(data, str) else BinaryMessage(data)
            )
        elif isinstance(data, str):
            if self._in_text is None:
                self._in_text = []
            self._in_text.append(data)
            if fin:
                events.append(TextMessage("".join(self._in_text)))
                self._in_text = None
        else:
            if self._in_binary is None:
                self._in_binary = []
            self._in_binary.append(data)
            if fin:
                events.append(BinaryMessage(b"".join(self._in_binary)))
                self._in_binary = None
        if fin:
            self._in_opcode = None
            self._in_utf8 = None
            self._in_size = 0

    def _receive_close(self, payload: bytes, events: list[Event]) -> None:
        code, reason = parse_close(payload)
        if self._close_sent_code is None:
            # RFC 6455 §5.5.1: answer with a close frame echoing the code.
            self._write_frame(_CLOSE, serialize_close(code))
            self._close_sent_code = code
        self.state = _CLOSED
        self._clean_close = True
        self.close_code = code
        self.close_reason = reason
        events.append(Closed(code, reason))

    def _fail(self, exc: ProtocolError, events: list[Event]) -> None:
        """Fail the WebSocket connection (RFC 6455 §7.1.7)."""
        events += self.fail(exc.code, str(exc), exc)

    def fail(
        self, code: int, reason: str = "", error: TidingsError | None = None
    ) -> list[Event]:
        """Fail the connection from this side: send ``code`` and end at once.

        For reasons the owner finds, such as a keepalive timeout (1011). No
        close frame from the peer is awaited; both sides should close TCP.
        """
        if self.state is _CLOSED:
            return []
        reason = _truncate_reason(reason)
        if self.state is not _CONNECTING and self._close_sent_code is None:
            self._write_frame(_CLOSE, serialize_close(code, reason))
            self._close_sent_code = code
        self.state = _CLOSED
        self.error = error
        self.close_code = code
        self.close_reason = reason
        return [Closed(code, reason, error)]

    # -- sending -------------------------------------------------------

    def send_text(self, data: str, *, fin: bool = True) -> None:
        """Send a text message, or its first fragment when ``fin`` is false."""
        self._send_data(_TEXT, data.encode(), fin)

    def send_binary(self, data: Buffer, *, fin: bool = True) -> None:
        """Send a binary message, or its first fragment when ``fin`` is false."""
        self._send_data(_BINARY, data, fin)

    def send_message(self, data: str | Buffer) -> None:
        """Send a whole message: ``str`` as text, bytes-like as binary."""
        payload: Buffer
        if isinstance(data, str):
            opcode, payload = _TEXT, data.encode()
        else:
            opcode, payload = _BINARY, data
        if (
            self.state is _OPEN
            and self._out_opcode is None
            and self._deflate is None
            and not self.is_client
            and len(payload) <= _JOIN_MAX
        ):
            # The usual answer of a server, framed here rather than through
            # _send_data: one Python call fewer per message.
            self._out.append(build_frame(opcode, payload, True, False, None))
        else:
            self._send_data(opcode, payload, True)

    def send_continuation(self, data: str | Buffer, *, fin: bool) -> None:
        """Send the next fragment of the message begun with ``fin=False``."""
        self._send_data(
            _CONTINUATION, data.encode() if isinstance(data, str) else data, fin
        )

    @property
    def can_send_message(self) -> bool:
        """True when a new data message may be sent now: the connection is
        open and no fragmented message is unfinished.

        A server that serialized one frame for many connections checks this
        before :meth:`send_prepared`.
        """
        return self.state is _OPEN and self._out_opcode is None

    def send_prepared(self, frame: bytes) -> None:
        """Queue a whole data frame serialized once for many server
        connections (see ``tidings.broadcast``).

        Only a server may share frames (a client masks each one afresh), and
        only while :attr:`can_send_message`.
        """
        if self.is_client:
            raise RuntimeError("a client masks every frame: use send_text/binary")
        if not self.can_send_message:
            self._check_can_send()
            raise RuntimeError("a fragmented message is in progress")
        self._out.append(frame)

    def send_ping(self, data: Buffer = b"") -> None:
        """Send a ping with at most 125 bytes of payload."""
        self._send_control(_PING, data)

    def send_pong(self, data: Buffer = b"") -> None:
        """Send an unsolicited pong (a heartbeat) or answer a ping by hand."""
        self._send_control(_PONG, data)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; does nothing once a close was sent.

        Code 1005 sends a close frame without a code.
        """
        if self.state is _CONNECTING:
            raise RuntimeError("the opening handshake is not complete")
        if self._close_sent_code is not None or self.state is _CLOSED:
            return
        self._write_frame(_CLOSE, serialize_close(code, reason))
        self._close_sent_code = code
        self.state = _CLOSING

    def _check_can_send(self) -> None:
        if self.state is _CONNECTING:
            raise RuntimeError("the opening handshake is not complete")
        if self._close_sent_code is not None or self.state is _CLOSED:
            code = self.close_code or self._close_sent_code or 1006
            raise ConnectionClosed(code, self.close_reason)

    def _send_control(self, opcode: Opcode, data: Buffer) -> None:
        self._check_can_send()
        if len(data) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"{opcode.name.lower()} payload is longer than 125 bytes")
        self._write_frame(opcode, data)

    def _send_data(self, opcode: Opcode, payload: Buffer, fin: bool) -> None:
        if (
            fin
            and self.state is _OPEN
            and self._out_opcode is None
            and self._deflate is None
            and opcode is not _CONTINUATION
        ):
            # The common case, a whole uncompressed message, checked at once.
            if self.is_client or len(payload) > _JOIN_MAX:
                self._write_frame(opcode, payload)
            else:
                self._out.append(build_frame(opcode, payload, True, False, None))
            return
        self._check_can_send()
        rsv1 = False
        if opcode is _CONTINUATION:
            if self._out_opcode is None:
                raise RuntimeError(
                    "no fragmented message in progress: start one with fin=False"
                )
        else:
            if self._out_opcode is not None:
                raise RuntimeError(
                    "a fragmented message is in progress: finish it with "
                    "send_continuation(..., fin=True)"
                )
            self._out_opcode = opcode
            compression = self._compression
            self._out_compressed = rsv1 = self._deflate is not None and (
                not fin
                or (compression is not None and len(payload) >= compression.min_size)
            )
        if self._out_compressed:
            assert self._deflate is not None
            payload = self._deflate.compress(bytes(payload), fin)
        if fin:
            self._out_opcode = None
        self._write_frame(opcode, payload, fin, rsv1)

    def _write_frame(
        self, opcode: Opcode, payload: Buffer, fin: bool = True, rsv1: bool = False
    ) -> None:
        if self.is_client:
            self._out.append(build_frame(opcode, payload, fin, rsv1, mask_key()))
        elif len(payload) > _JOIN_MAX:
            # A large payload is never copied to prepend its header.
            self._out += (
                serialize_header(opcode, len(payload), fin=fin, rsv1=rsv1),
                payload,
            )
        else:
            # A small one is: one buffer is written faster than two.
            self._out.append(build_frame(opcode, payload, fin, rsv1, None))

    def _enable_deflate(self, params: deflate.DeflateParams) -> None:
        assert self._compression is not None
        self._deflate = deflate.PerMessageDeflate(
            params, is_client=self.is_client, config=self._compression
        )
        self._parser.rsv_allowed = RSV1

    def _open(self) -> list[Event]:
        """Enter OPEN and parse any frames that arrived with the handshake."""
        self.state = _OPEN
        return self._receive_frames()

    def _handshake_failed(self, exc: InvalidHandshake) -> list[Event]:
        self.state = _CLOSED
        self.error = exc
        self.close_code = 1006
        return [Closed(1006, str(exc), exc)]


_MESSAGE_EVENTS = (TextMessage, BinaryMessage, Fragment)


def _truncate_reason(reason: str) -> str:
    """Cut a reason to the 123 bytes of UTF-8 a close frame can hold."""
    data = reason.encode()
    if len(data) <= MAX_CONTROL_PAYLOAD - 2:
        return reason
    return data[: MAX_CONTROL_PAYLOAD - 2].decode(errors="ignore")


class _Unset:
    pass


_UNSET: Final = _Unset()


class ServerConnection(Connection):
    """The server side: reads the upgrade request, then frames.

    ``receive_data`` reports a :class:`~tidings.protocol.handshake.Request`
    once a complete HTTP request has arrived, whether or not it asks for a
    WebSocket. Then the owner calls :meth:`accept` to validate it and answer
    101, or :meth:`reject` to answer it with plain HTTP (for example a
    ``/healthz`` probe or a 403 for a foreign origin).

    ``subprotocols`` lists the subprotocols this server speaks, most preferred
    first. ``max_body_size`` lets plain HTTP requests beside the upgrade (an
    HTTP API) carry a body of up to that many bytes.
    """

    __slots__ = ("_early", "_limits", "_reader", "request", "subprotocols")

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = (),
        compression: deflate.DeflateConfig | None = _DEFAULT_COMPRESSION,
        max_message_size: int | None = MAX_MESSAGE_SIZE,
        max_head_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
        max_body_size: int = 0,
        auto_pong: bool = True,
        stream_messages: bool = False,
    ) -> None:
        super().__init__(
            is_client=False,
            compression=compression,
            max_message_size=max_message_size,
            auto_pong=auto_pong,
            stream_messages=stream_messages,
        )
        self.subprotocols = list(subprotocols)
        self.request: handshake.Request | None = None
        self._limits = (max_head_size, max_headers, max_body_size)
        # Dropped once the request is read: its parser state is ~1 KiB that an
        # open connection never needs again.
        self._reader: handshake.RequestReader | None = self._new_reader()
        #: What arrived after the request, before it was answered: frames
        #: sent early, once accepted; the next request, once answered and
        #: kept (:meth:`respond`).
        self._early = bytearray()

    def _new_reader(self) -> handshake.RequestReader:
        max_head_size, max_headers, max_body_size = self._limits
        return handshake.RequestReader(
            max_head_size=max_head_size,
            max_headers=max_headers,
            max_body_size=max_body_size,
        )

    def _receive_handshake(self, data: Buffer) -> list[Event]:
        if self._reader is None:
            # Waiting for an answer; a well-behaved client sends nothing
            # before it, so keep it for after.
            self._early += data
            return []
        try:
            request = self._reader.feed(bytes(data))
        except InvalidHandshake as exc:
            return self.reject(exc.status, str(exc), exc.headers, error=exc)
        if request is None:
            return []
        self.request = request
        self._early += self._reader.trailing_data
        self._reader = None
        return [request]

    def select_subprotocol(self, offered: Sequence[str]) -> str | None:
        """Default choice: our most preferred subprotocol the client offered."""
        for subprotocol in self.subprotocols:
            if subprotocol in offered:
                return subprotocol
        return None

    def accept(
        self,
        subprotocol: str | _Unset | None = _UNSET,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> list[Event]:
        """Validate the request as a WebSocket upgrade and answer 101.

        ``subprotocol`` overrides :meth:`select_subprotocol`; it must be one
        the client offered. Returns the events of frames that arrived early.
        If the request is not a valid upgrade, a 400 or 426 response is
        queued instead and the returned :class:`Closed` carries the
        :class:`InvalidHandshake`.
        """
        request = self.request
        if request is None or self.state is not _CONNECTING:
            raise RuntimeError("accept() needs a request that is not yet answered")
        try:
            key = handshake.validate_request(request)
            offered = handshake.parse_subprotocols(request)
            extensions = self._negotiate_extensions(request)
        except InvalidHandshake as exc:
            return self.reject(exc.status, str(exc), exc.headers, error=exc)
        if isinstance(subprotocol, _Unset):
            subprotocol = self.select_subprotocol(offered)
            if subprotocol is None and offered and self.subprotocols:
                # RFC 6455 §4.2.2 would let us answer without one, but the
                # client must then fail the connection (§4.1) and browsers
                # report only "1006". A 400 that says why is kinder.
                refusal = InvalidHandshake(
                    f"no common subprotocol: the client offered {', '.join(offered)}; "
                    f"this server speaks {', '.join(self.subprotocols)}"
                )
                return self.reject(400, str(refusal), error=refusal)
        elif subprotocol is not None and subprotocol not in offered:
            raise ValueError(f"the client did not offer subprotocol {subprotocol!r}")
        self.subprotocol = subprotocol
        self._out.append(
            handshake.build_response(
                key,
                subprotocol=subprotocol,
                extensions=extensions,
                extra_headers=extra_headers,
            )
        )
        self._parser.feed(bytes(self._early))
        self._early = bytearray()
        # The look-ups of the upgrade are done: the request is kept for the
        # connection's life (ws.request), in the least memory; a hub of
        # many clients holds one per client.
        request.headers.pack()
        return self._open()

    def _negotiate_extensions(self, request: handshake.Request) -> str | None:
        if self._compression is None:
            return None
        offers = [
            params
            for value in request.headers.get_all("Sec-WebSocket-Extensions")
            for name, params in handshake.parse_extension_header(value)
            if name == deflate.EXTENSION_NAME
        ]
        if not offers:
            return None
        agreed = deflate.server_accept(self._compression, offers)
        if agreed is None:
            return None
        params, response_params = agreed
        self._enable_deflate(params)
        return handshake.format_extension_header(
            [(deflate.EXTENSION_NAME, response_params)]
        )

    def reject(
        self,
        status: int,
        message: str | bytes,
        headers: Iterable[tuple[str, str]] = (),
        *,
        error: InvalidHandshake | None = None,
    ) -> list[Event]:
        """Answer with a plain HTTP response and end the connection.

        A ``str`` message is sent as ``text/plain``; with ``bytes``, pass a
        ``Content-Type`` among ``headers``.
        """
        if self.state is not _CONNECTING:
            raise RuntimeError("reject() is only possible during the opening handshake")
        self._early = bytearray()
        self._out.append(handshake.build_rejection(status, message, headers))
        return self._handshake_failed(
            error
            if error is not None
            else InvalidHandshake(f"rejected with HTTP {status}", status, list(headers))
        )

    def respond(
        self,
        status: int,
        message: str | bytes,
        headers: Iterable[tuple[str, str]] = (),
    ) -> list[Event]:
        """Answer a plain HTTP request (an API call, a health check) and
        keep the connection for the client's next request, as HTTP/1.1
        does by default; returns the events of what already arrived of it
        (its :class:`~tidings.protocol.handshake.Request`, if whole). A
        request that asked to close (``Connection: close``) or to upgrade
        is answered as :meth:`reject` answers, and the connection ends.
        """
        request = self.request
        if request is None or self.state is not _CONNECTING:
            raise RuntimeError("respond() needs a request that is not yet answered")
        if not handshake.keeps_alive(request):
            return self.reject(status, message, headers)
        self._out.append(
            handshake.build_rejection(status, message, headers, close=False)
        )
        self.request = None
        self._reader = self._new_reader()
        early, self._early = bytes(self._early), bytearray()
        return self._receive_handshake(early) if early else []


class ClientConnection(Connection):
    """The client side: queues the upgrade request at once, then reads the
    response and frames.

    ``receive_data`` reports a :class:`~tidings.protocol.handshake.Response`
    when the server accepted; a refusal ends in :class:`Closed` whose error is
    an :class:`~tidings.exceptions.InvalidStatus` (non-101) or
    :class:`~tidings.exceptions.InvalidHandshake`.
    """

    __slots__ = ("_key", "_offered_subprotocols", "_reader", "response", "uri")

    def __init__(
        self,
        uri: WebSocketURI | str,
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        extra_headers: Iterable[tuple[str, str]] = (),
        compression: deflate.DeflateConfig | None = _DEFAULT_COMPRESSION,
        max_message_size: int | None = MAX_MESSAGE_SIZE,
        max_head_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
        auto_pong: bool = True,
        stream_messages: bool = False,
    ) -> None:
        super().__init__(
            is_client=True,
            compression=compression,
            max_message_size=max_message_size,
            auto_pong=auto_pong,
            stream_messages=stream_messages,
        )
        self.uri = parse_uri(uri) if isinstance(uri, str) else uri
        self.response: handshake.Response | None = None
        self._offered_subprotocols = list(subprotocols)
        self._key = handshake.generate_key()
        self._reader: handshake.ResponseReader | None = handshake.ResponseReader(
            max_head_size=max_head_size, max_headers=max_headers
        )
        extensions = None
        if compression is not None:
            extensions = handshake.format_extension_header(
                [(deflate.EXTENSION_NAME, deflate.client_offer(compression))]
            )
        self._out.append(
            handshake.build_request(
                self.uri.host_header,
                self.uri.resource,
                self._key,
                origin=origin,
                subprotocols=subprotocols,
                extensions=extensions,
                extra_headers=extra_headers,
            )
        )

    def _receive_handshake(self, data: Buffer) -> list[Event]:
        assert self._reader is not None  # CONNECTING until the response is read
        try:
            response = self._reader.feed(bytes(data))
            if response is None:
                return []
            # A refusal's body, as far as it came with the head: often all
            # of it, and often the only explanation the server gives.
            body = self._reader.trailing_data
            handshake.validate_response(response, self._key, body)
            self.subprotocol = self._check_subprotocol(response)
            self._check_extensions(response)
        except InvalidHandshake as exc:
            return self._handshake_failed(exc)
        self.response = response
        self._parser.feed(self._reader.trailing_data)
        self._reader = None
        return [response, *self._open()]

    def _check_subprotocol(self, response: handshake.Response) -> str | None:
        values = [
            token
            for value in response.headers.get_all("Sec-WebSocket-Protocol")
            for token in handshake.parse_token_list(value)
        ]
        if not values:
            return None
        if len(values) > 1:
            raise InvalidHandshake(
                f"Sec-WebSocket-Protocol names {len(values)} subprotocols; "
                "the server must choose one (RFC 6455 §4.1)"
            )
        if values[0] not in self._offered_subprotocols:
            raise InvalidHandshake(
                f"Sec-WebSocket-Protocol: the server chose {values[0]!r}, "
                "which the client did not offer (RFC 6455 §4.1)"
            )
        return values[0]

    def _check_extensions(self, response: handshake.Response) -> None:
        accepted = [
            offer
            for value in response.headers.get_all("Sec-WebSocket-Extensions")
            for offer in handshake.parse_extension_header(value)
        ]
        for name, params in accepted:
            if name != deflate.EXTENSION_NAME or self._compression is None:
                raise InvalidHandshake(
                    f"Sec-WebSocket-Extensions: the server accepted {name!r}, "
                    "which the client did not offer (RFC 6455 §4.1)"
                )
            if self._deflate is not None:
                raise InvalidHandshake(
                    "Sec-WebSocket-Extensions: the server accepted "
                    "permessage-deflate twice (RFC 7692 §5)"
                )
            self._enable_deflate(deflate.client_accept(self._compression, params))
