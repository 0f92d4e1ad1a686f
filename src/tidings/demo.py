"""``tidings demo``: a client and a server protocol engine talking in memory.

It shows the protocol core at work, with no socket and no event loop: the
opening handshake, a compressed message each way, a ping and the close
handshake, with the bytes that would cross the wire.
"""

from __future__ import annotations

from .protocol import ClientConnection, Connection, Event, ServerConnection, TextMessage
from .protocol.events import Request, Response


def _transfer(sender: Connection, receiver: Connection, label: str) -> list[Event]:
    data = b"".join(sender.data_to_send())
    if not data:
        return []
    head = data[:48].hex(" ")
    more = f" ... ({len(data)} bytes)" if len(data) > 48 else f" ({len(data)} bytes)"
    print(f"  {label}: {head}{more}")
    events = receiver.receive_data(data)
    for event in events:
        print(f"    -> {type(event).__name__}: {_describe(event)}")
    return events


def _describe(event: Event) -> str:
    if isinstance(event, Request):
        return f"GET {event.target}"
    if isinstance(event, Response):
        return f"{event.status} {event.reason}"
    return repr(event)[len(type(event).__name__) :]


def run_demo(message: str) -> None:
    """Print one conversation between a client and a server engine."""
    client = ClientConnection("ws://localhost/demo")
    server = ServerConnection()
    print("opening handshake")
    _transfer(client, server, "client -> server")
    server.accept()
    _transfer(server, client, "server -> client")
    print(f"permessage-deflate: {client.deflate_params}")
    print("a text message each way, and a ping")
    client.send_text(message)
    for event in _transfer(client, server, "client -> server"):
        if isinstance(event, TextMessage):
            server.send_text(event.data.upper())
    _transfer(server, client, "server -> client")
    client.send_ping(b"are you there?")
    _transfer(client, server, "client -> server")
    _transfer(server, client, "server -> client")
    print("closing handshake")
    client.send_close(1000, "bye")
    _transfer(client, server, "client -> server")
    _transfer(server, client, "server -> client")
    print(
        f"server closes TCP first: server={server.should_close_transport()} "
        f"client={client.should_close_transport()}"
    )
