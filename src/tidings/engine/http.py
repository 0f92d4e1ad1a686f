"""Plain HTTP answers given beside the WebSocket upgrade."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

__all__ = ["HTTPResponse", "HTTPStream", "ResponseStream"]


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """A response that ``process_request`` returns instead of upgrading.

    A ``str`` body is sent as ``text/plain; charset=utf-8``; for ``bytes``,
    put a ``Content-Type`` in ``headers``. The connection closes after it.
    """

    status: int
    body: str | bytes = ""
    headers: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class HTTPStream:
    """A response whose body is written as it is made (Server-Sent Events, a
    held answer), which ``process_request`` may return instead of upgrading.

    The head goes out at once, without a length: the body ends when the
    connection closes (RFC 9112 §6.3). Then ``body(stream)`` runs; the
    connection closes once it returns, and it is cancelled if the client
    goes away first.
    """

    status: int
    headers: Sequence[tuple[str, str]]
    body: Callable[[ResponseStream], Awaitable[None]]


class ResponseStream:
    """Where the body of an :class:`HTTPStream` is written."""

    __slots__ = ("_transport", "remote_address")

    def __init__(self, transport: asyncio.Transport, remote_address: object) -> None:
        self._transport = transport
        #: The client's address, as the transport gives it.
        self.remote_address = remote_address

    def write(self, data: bytes) -> None:
        """Queue ``data`` to the client without waiting; nothing once the
        connection is closing."""
        if not self._transport.is_closing():
            self._transport.write(data)

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued and not yet handed to the kernel."""
        return self._transport.get_write_buffer_size()

    def close(self) -> None:
        """End the body: the connection closes once what is queued is sent."""
        self._transport.close()
