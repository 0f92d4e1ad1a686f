"""``ws://`` and ``wss://`` URIs (RFC 6455 §3)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from ..exceptions import InvalidURI

__all__ = ["WebSocketURI", "parse_uri"]


@dataclass(frozen=True, slots=True)
class WebSocketURI:
    """A parsed WebSocket URI."""

    secure: bool
    host: str
    port: int
    resource: str
    """The path and query sent in the request line, e.g. ``/chat?room=1``."""

    @property
    def host_header(self) -> str:
        """The ``Host`` header value: the port is left out when it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{'wss' if self.secure else 'ws'}://{self.host_header}{self.resource}"


def parse_uri(uri: str) -> WebSocketURI:
    """Parse a ``ws://`` or ``wss://`` URI; raise :class:`InvalidURI` if it is not one.

    A fragment is not allowed (RFC 6455 §3). IPv6 hosts are written in
    brackets, as in ``ws://[::1]:8000/``.
    """
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"{uri!r} is not a valid URI: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise InvalidURI(
            f"{uri!r} is not a WebSocket URI: the scheme must be ws or wss"
        )
    if not parts.hostname:
        raise InvalidURI(f"{uri!r} has no host")
    if parts.fragment or uri.endswith("#"):
        raise InvalidURI(f"{uri!r} has a fragment, which WebSocket URIs may not have")
    if parts.username is not None or parts.password is not None:
        raise InvalidURI(f"{uri!r} has user info, which tidings does not send")
    if any(ch in uri for ch in "\r\n\0 "):
        raise InvalidURI(f"{uri!r} contains whitespace or control characters")
    secure = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return WebSocketURI(
        secure=secure,
        host=parts.hostname,
        port=port if port is not None else (443 if secure else 80),
        resource=resource,
    )
