"""Exceptions a user of tidings can meet, each named for its cause.

This module imports nothing from the rest of the package, so every layer,
including the I/O-free ``tidings.protocol``, may raise these.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConnectionClosed",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidURI",
    "PayloadTooBig",
    "ProtocolError",
    "TidingsError",
]


class TidingsError(Exception):
    """Base class of every exception tidings raises on purpose."""


class ProtocolError(TidingsError):
    """The peer broke RFC 6455 or RFC 7692.

    ``code`` is the close code the RFC names for the violation (1002 for a
    framing error, 1007 for invalid UTF-8, 1009 for a message too big, ...).
    """

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


class PayloadTooBig(ProtocolError):
    """A message or frame is larger than the configured limit (close 1009)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=1009)


class InvalidHandshake(TidingsError):
    """The opening handshake was refused.

    On the server, ``status`` is the HTTP status to answer with (400 for a
    malformed request, 426 for a wrong version, 431 for an oversized head) and
    ``headers`` are extra response headers such as ``Sec-WebSocket-Version``.
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = list(headers)


class InvalidStatus(InvalidHandshake):
    """The server answered the upgrade request with a status other than 101.

    ``headers`` holds the response headers (a ``Location`` for a redirect)
    and ``body`` whatever part of the response body had arrived.
    """

    def __init__(
        self,
        status: int,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(
            f"server rejected the WebSocket upgrade with HTTP {status}",
            status=status,
            headers=headers,
        )
        self.body = body


class InvalidURI(TidingsError):
    """A string is not a valid ``ws://`` or ``wss://`` URI."""


class ConnectionClosed(TidingsError):
    """The connection is closed; ``code`` and ``reason`` say how.

    1000 and 1001 mean a clean close; 1006 means the TCP connection was lost
    without a close frame.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"connection closed with code {code}{detail}")
        self.code = code
        self.reason = reason
