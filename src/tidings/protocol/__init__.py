"""The WebSocket protocol without I/O: RFC 6455 and RFC 7692.

Feed a connection bytes, get events; call its ``send_*`` methods, get bytes
to write. This package imports no asyncio, socket or ssl and never reads the
clock, so any I/O framework can drive it.
"""

from .connection import ClientConnection, Connection, ServerConnection, State
from .deflate import DeflateConfig, DeflateParams
from .events import (
    BinaryMessage,
    Closed,
    Event,
    Fragment,
    Ping,
    Pong,
    Request,
    Response,
    TextMessage,
)
from .frames import Opcode
from .handshake import Headers
from .uri import WebSocketURI, parse_uri

__all__ = [
    "BinaryMessage",
    "ClientConnection",
    "Closed",
    "Connection",
    "DeflateConfig",
    "DeflateParams",
    "Event",
    "Fragment",
    "Headers",
    "Opcode",
    "Ping",
    "Pong",
    "Request",
    "Response",
    "ServerConnection",
    "State",
    "TextMessage",
    "WebSocketURI",
    "parse_uri",
]
