"""Events that a :class:`~tidings.protocol.connection.Connection` reports."""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import TidingsError
from .handshake import Request, Response

__all__ = [
    "BinaryMessage",
    "Closed",
    "Event",
    "Fragment",
    "Ping",
    "Pong",
    "Request",
    "Response",
    "TextMessage",
]


# The message events are made per message, and a frozen dataclass costs twice
# as much to make: these two are not frozen.
@dataclass(slots=True)
class TextMessage:
    """A complete text message."""

    data: str


@dataclass(slots=True)
class BinaryMessage:
    """A complete binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Fragment:
    """Part of a message, reported when ``stream_messages`` is on.

    ``data`` is ``str`` for a text message and ``bytes`` for a binary one;
    ``first`` and ``last`` mark the message's bounds. Compressed messages are
    delivered decompressed, and text is already validated as UTF-8.
    """

    data: str | bytes
    first: bool
    last: bool


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping; the connection answers it itself unless ``auto_pong`` is off."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over; always the last event.

    ``code`` and ``reason`` are what the user should see: the peer's close
    frame after a close handshake (1005 when it had no code), the code we
    sent when the peer broke the protocol, or 1006 when the TCP connection
    ended without a close frame or the handshake failed. ``error`` holds the
    exception that explains a failure, and is None after a clean close.
    """

    code: int
    reason: str = ""
    error: TidingsError | None = None


Event = (
    Request | Response | TextMessage | BinaryMessage | Fragment | Ping | Pong | Closed
)
