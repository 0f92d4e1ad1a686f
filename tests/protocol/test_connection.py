"""Tests of tidings.protocol.connection: the RFC 6455 state machine."""

from __future__ import annotations

import itertools
import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from tidings.protocol import (
    BinaryMessage,
    ClientConnection,
    Closed,
    Connection,
    DeflateConfig,
    Event,
    Fragment,
    Ping,
    Pong,
    Request,
    Response,
    ServerConnection,
    State,
    TextMessage,
)
from tidings.protocol.frames import (
    Opcode,
    serialize_close,
    serialize_frame,
    serialize_header,
)

from .reading import message_wire


def wire(conn: Connection) -> bytes:
    return b"".join(conn.data_to_send())


def open_pair(
    compression: DeflateConfig | None = None, **kwargs: object
) -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(
        "ws://example.com/chat", compression=compression, **kwargs
    )  # type: ignore[arg-type]
    server = ServerConnection(compression=compression, **kwargs)  # type: ignore[arg-type]
    events = server.receive_data(wire(client))
    assert [type(e) for e in events] == [Request]
    assert server.accept() == []
    events = client.receive_data(wire(server))
    assert [type(e) for e in events] == [Response]
    assert client.state is State.OPEN and server.state is State.OPEN
    return client, server


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False
) -> bytes:
    """A frame as a client sends it (masked), to feed a server."""
    return serialize_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=True)


def last_close(events: list[Event]) -> Closed:
    assert events, "no events"
    assert isinstance(events[-1], Closed), events
    return events[-1]


def sent_close_code(conn: Connection) -> int:
    data = wire(conn)
    # An unmasked server frame: 0x88, length, code.
    assert data[0] == 0x88, data
    return int.from_bytes(data[2:4], "big")


# -- opening handshake (RFC 6455 §4) ----------------------------------------


def test_handshake_opens_both_sides_and_negotiates_deflate() -> None:
    client, server = open_pair(compression=DeflateConfig())
    assert client.deflate_params is not None
    assert client.deflate_params == server.deflate_params


def test_an_accepted_request_is_kept_with_its_headers_packed() -> None:
    client = ClientConnection("ws://h/path?q=1")
    server = ServerConnection()
    server.receive_data(wire(client))
    server.accept()
    request = server.request
    assert request is not None and request.headers._items is None
    assert request.headers.get("host") == "h"
    assert request.path == "/path" and request.query == "q=1"


def test_handshake_chooses_the_servers_preferred_subprotocol() -> None:
    client = ClientConnection("ws://h/", subprotocols=["chat.v1", "chat.v2"])
    server = ServerConnection(subprotocols=["chat.v2", "chat.v1"])
    server.receive_data(wire(client))
    server.accept()
    assert client.receive_data(wire(server))
    assert client.subprotocol == server.subprotocol == "chat.v2"


def test_a_server_without_subprotocols_ignores_the_offer() -> None:
    client = ClientConnection("ws://h/", subprotocols=["a"])
    server = ServerConnection()
    server.receive_data(wire(client))
    server.accept()
    client.receive_data(wire(server))
    assert client.subprotocol is None and client.state is State.OPEN


def test_accept_refuses_a_subprotocol_the_client_did_not_offer() -> None:
    client = ClientConnection("ws://h/", subprotocols=["a"])
    server = ServerConnection()
    server.receive_data(wire(client))
    with pytest.raises(ValueError, match="did not offer"):
        server.accept(subprotocol="b")


def test_rfc6455_4_2_1_plain_http_request_gets_426_from_accept() -> None:
    server = ServerConnection()
    [request] = server.receive_data(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(request, Request) and request.path == "/healthz"
    closed = last_close(server.accept())
    assert isinstance(closed.error, InvalidHandshake)
    assert wire(server).startswith(b"HTTP/1.1 426 ")
    assert server.should_close_transport()


def test_rfc6455_4_4_wrong_version_gets_426_with_supported_version() -> None:
    client = ClientConnection("ws://h/")
    request = wire(client).replace(
        b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"
    )
    server = ServerConnection()
    server.receive_data(request)
    last_close(server.accept())
    response = wire(server)
    assert response.startswith(b"HTTP/1.1 426 ")
    assert b"Sec-WebSocket-Version: 13" in response


def test_malformed_http_is_answered_400_without_a_request_event() -> None:
    server = ServerConnection()
    closed = last_close(server.receive_data(b"NOT HTTP AT ALL\r\n\r\n"))
    assert isinstance(closed.error, InvalidHandshake)
    assert wire(server).startswith(b"HTTP/1.1 400 ")
    assert server.state is State.CLOSED


def test_reject_answers_with_plain_http() -> None:
    client = ClientConnection("ws://h/")
    server = ServerConnection()
    server.receive_data(wire(client))
    closed = last_close(server.reject(403, "origin not allowed"))
    assert isinstance(closed.error, InvalidHandshake)
    response = wire(server)
    assert response.startswith(b"HTTP/1.1 403 ")
    assert response.endswith(b"origin not allowed\n")
    closed = last_close(client.receive_data(response))
    assert isinstance(closed.error, InvalidStatus) and closed.error.status == 403
    assert closed.error.body == b"origin not allowed\n"
    assert client.state is State.CLOSED and client.should_close_transport()


def test_respond_keeps_the_connection_for_the_next_request() -> None:
    server = ServerConnection(max_body_size=10)
    [first] = server.receive_data(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert first.path == "/a"
    assert server.respond(200, "one") == []
    answer = wire(server)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"one\n")
    assert b"Connection" not in answer and server.state is State.CONNECTING
    # The next ones, pipelined, split anywhere, a body between them.
    stream = (
        b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"
        b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    events = [
        e
        for byte in range(len(stream))
        for e in server.receive_data(stream[byte : byte + 1])
    ]
    [second] = events
    assert (second.path, second.body) == ("/b", b"body")
    [third] = server.respond(200, "two")
    assert third.path == "/c"
    # And then a WebSocket on the same connection.
    client = ClientConnection("ws://h/")
    assert server.respond(204, b"") == []
    [upgrade] = server.receive_data(wire(client))
    assert upgrade.headers.get("Upgrade") == "websocket"
    wire(server)
    server.accept()
    client.receive_data(wire(server))
    assert client.state is State.OPEN and server.state is State.OPEN


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n",
        # A refused upgrade: its client may send frames next.
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
        # What follows a chunked body is not kept.
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nx\r\n0\r\n\r\n",
    ],
)
def test_respond_closes_when_the_request_cannot_be_followed(head: bytes) -> None:
    server = ServerConnection(max_body_size=10)
    assert len(server.receive_data(head)) == 1
    closed = last_close(server.respond(200, "bye"))
    assert closed.code == 1006 and server.state is State.CLOSED
    assert b"Connection: close" in wire(server)
    assert server.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n") == []


def test_rfc6455_4_1_client_fails_on_a_wrong_accept_value() -> None:
    client = ClientConnection("ws://h/")
    other = ClientConnection("ws://h/")
    server = ServerConnection()
    server.receive_data(wire(other))  # the response is for another key
    server.accept()
    closed = last_close(client.receive_data(wire(server)))
    assert isinstance(closed.error, InvalidHandshake)
    assert "Sec-WebSocket-Accept" in str(closed.error)


def test_rfc6455_4_1_client_fails_on_a_subprotocol_it_did_not_offer() -> None:
    client = ClientConnection("ws://h/", subprotocols=["a"])
    server = ServerConnection(subprotocols=["a"])
    server.receive_data(wire(client))
    server.accept()
    response = wire(server).replace(
        b"Sec-WebSocket-Protocol: a", b"Sec-WebSocket-Protocol: z"
    )
    closed = last_close(client.receive_data(response))
    assert "did not offer" in str(closed.error)


def test_rfc6455_4_1_client_fails_on_an_extension_it_did_not_offer() -> None:
    client = ClientConnection("ws://h/", compression=None)
    server = ServerConnection()
    server.receive_data(wire(client))
    server.accept()
    response = wire(server).replace(
        b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    closed = last_close(client.receive_data(response))
    assert "did not offer" in str(closed.error)


def test_frames_pipelined_after_the_101_are_delivered() -> None:
    client = ClientConnection("ws://h/", compression=None)
    server = ServerConnection(compression=None)
    server.receive_data(wire(client))
    server.accept()
    server.send_text("early")
    events = client.receive_data(wire(server))
    assert [type(e) for e in events] == [Response, TextMessage]


def test_eof_during_the_handshake_reports_1006() -> None:
    client = ClientConnection("ws://h/")
    assert last_close(client.receive_eof()).code == 1006
    assert client.receive_eof() == []


def test_sending_before_the_handshake_is_a_programming_error() -> None:
    client = ClientConnection("ws://h/")
    with pytest.raises(RuntimeError, match="handshake"):
        client.send_text("too soon")


# -- data messages (RFC 6455 §5.6) ------------------------------------------


def test_text_and_binary_both_ways() -> None:
    client, server = open_pair()
    client.send_text("héllo")
    client.send_binary(b"\x00\xff")
    assert server.receive_data(wire(client)) == [
        TextMessage("héllo"),
        BinaryMessage(b"\x00\xff"),
    ]
    server.send_text("back")
    server.send_binary(bytearray(b"bin"))
    assert client.receive_data(wire(server)) == [
        TextMessage("back"),
        BinaryMessage(b"bin"),
    ]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.one_of(st.text(max_size=1500), st.binary(max_size=1500)),
    compressed=st.booleans(),
)
def test_send_message_frames_as_send_text_and_send_binary_do(
    message: str | bytes, compressed: bool
) -> None:
    # send_message frames the usual server answer itself: the same bytes.
    compression = DeflateConfig(min_size=0) if compressed else None
    _, by_kind = open_pair(compression)
    _, whole = open_pair(compression)
    if isinstance(message, str):
        by_kind.send_text(message)
    else:
        by_kind.send_binary(message)
    whole.send_message(message)
    assert wire(whole) == wire(by_kind)


@given(message=st.one_of(st.text(max_size=1500), st.binary(max_size=1500)))
def test_send_message_from_a_client_arrives_as_sent(message: str | bytes) -> None:
    client, server = open_pair()
    client.send_message(message)
    expected = (
        TextMessage(message) if isinstance(message, str) else BinaryMessage(message)
    )
    assert server.receive_data(wire(client)) == [expected]


def test_send_message_inside_a_fragmented_message_is_a_programming_error() -> None:
    _, server = open_pair()
    server.send_binary(b"a", fin=False)
    with pytest.raises(RuntimeError, match="in progress"):
        server.send_message(b"b")


def test_client_frames_are_masked_and_server_frames_are_not() -> None:
    client, server = open_pair()
    client.send_text("x")
    assert wire(client)[1] & 0x80
    server.send_text("x")
    assert not wire(server)[1] & 0x80


def test_rfc6455_8_1_invalid_utf8_in_a_text_message_fails_with_1007() -> None:
    _, server = open_pair()
    closed = last_close(server.receive_data(client_frame(Opcode.TEXT, b"\xff")))
    assert closed.code == 1007
    assert sent_close_code(server) == 1007


# -- fragmentation (RFC 6455 §5.4) ------------------------------------------


def test_rfc6455_5_4_fragmented_message_with_interleaved_control_frames() -> None:
    _, server = open_pair()
    data = (
        client_frame(Opcode.TEXT, b"Hel", fin=False)
        + client_frame(Opcode.PING, b"p")
        + client_frame(Opcode.CONTINUATION, b"l", fin=False)
        + client_frame(Opcode.PONG, b"q")
        + client_frame(Opcode.CONTINUATION, b"o")
    )
    assert server.receive_data(data) == [Ping(b"p"), Pong(b"q"), TextMessage("Hello")]


def test_rfc6455_5_4_continuation_without_a_message_fails_1002() -> None:
    _, server = open_pair()
    closed = last_close(server.receive_data(client_frame(Opcode.CONTINUATION, b"x")))
    assert closed.code == 1002
    assert sent_close_code(server) == 1002


def test_rfc6455_5_4_new_message_inside_a_fragmented_one_fails_1002() -> None:
    _, server = open_pair()
    data = client_frame(Opcode.BINARY, b"a", fin=False) + client_frame(
        Opcode.TEXT, b"b"
    )
    assert last_close(server.receive_data(data)).code == 1002


def test_rfc6455_8_1_invalid_utf8_fails_at_the_fragment_not_the_message_end() -> None:
    _, server = open_pair()
    events = server.receive_data(client_frame(Opcode.TEXT, "κόσμε".encode(), fin=False))
    assert events == []
    closed = last_close(
        server.receive_data(
            client_frame(Opcode.CONTINUATION, b"\xf4\x90\x80\x80", fin=False)
        )
    )
    assert closed.code == 1007


def test_sending_a_fragmented_message() -> None:
    client, server = open_pair()
    client.send_text("Hel", fin=False)
    client.send_ping(b"mid")
    client.send_continuation("l", fin=False)
    client.send_continuation(b"o", fin=True)
    assert server.receive_data(wire(client)) == [Ping(b"mid"), TextMessage("Hello")]


def test_fragmented_sending_misuse_is_a_programming_error() -> None:
    client, _ = open_pair()
    with pytest.raises(RuntimeError, match="no fragmented message"):
        client.send_continuation(b"x", fin=True)
    client.send_binary(b"a", fin=False)
    with pytest.raises(RuntimeError, match="in progress"):
        client.send_text("b")


def test_a_prepared_frame_is_queued_in_order_on_a_server_only() -> None:
    client, server = open_pair(compression=None)
    server.send_text("first")
    server.send_prepared(serialize_frame(Opcode.TEXT, b"shared"))
    server.send_binary(b"last")
    assert client.receive_data(wire(server)) == [
        TextMessage("first"),
        TextMessage("shared"),
        BinaryMessage(b"last"),
    ]
    with pytest.raises(RuntimeError, match="masks every frame"):
        client.send_prepared(b"\x81\x00")
    server.send_text("a", fin=False)
    with pytest.raises(RuntimeError, match="in progress"):
        server.send_prepared(b"\x81\x00")
    server.send_continuation("b", fin=True)
    server.send_close(1000)
    with pytest.raises(ConnectionClosed):
        server.send_prepared(b"\x81\x00")


def test_stream_messages_delivers_fragments_as_they_arrive() -> None:
    _, server = open_pair(stream_messages=True)
    first = server.receive_data(client_frame(Opcode.TEXT, "ü".encode()[:1], fin=False))
    assert first == [Fragment("", first=True, last=False)]
    rest = server.receive_data(
        client_frame(Opcode.CONTINUATION, "ü".encode()[1:] + b"x", fin=False)
        + client_frame(Opcode.CONTINUATION, b"!")
    )
    assert rest == [
        Fragment("üx", first=False, last=False),
        Fragment("!", first=False, last=True),
    ]
    assert server.receive_data(client_frame(Opcode.BINARY, b"b")) == [
        Fragment(b"b", first=True, last=True)
    ]


# -- size limits -------------------------------------------------------------


def test_max_message_size_is_checked_before_buffering_the_frame() -> None:
    _, server = open_pair(max_message_size=1000)
    header = bytes([0x82, 0xFF]) + (10**9).to_bytes(8, "big") + b"mask"
    closed = last_close(server.receive_data(header))  # no payload sent at all
    assert closed.code == 1009
    assert sent_close_code(server) == 1009


def test_max_message_size_counts_every_fragment() -> None:
    _, server = open_pair(max_message_size=10)
    assert server.receive_data(client_frame(Opcode.BINARY, b"x" * 6, fin=False)) == []
    closed = last_close(
        server.receive_data(client_frame(Opcode.CONTINUATION, b"x" * 6))
    )
    assert closed.code == 1009


def test_max_message_size_allows_exactly_the_limit_and_none_means_unlimited() -> None:
    _, server = open_pair(max_message_size=10)
    assert server.receive_data(client_frame(Opcode.BINARY, b"x" * 10)) == [
        BinaryMessage(b"x" * 10)
    ]
    _, unlimited = open_pair(max_message_size=None)
    big = b"y" * (2 << 20)
    assert unlimited.receive_data(client_frame(Opcode.BINARY, big)) == [
        BinaryMessage(big)
    ]


def test_max_message_size_applies_after_decompression() -> None:
    client, server = open_pair(compression=DeflateConfig(), max_message_size=100_000)
    client.max_message_size = None
    client.send_binary(b"\x00" * 200_000)  # compresses to a few hundred bytes
    data = wire(client)
    assert len(data) < 1000
    assert last_close(server.receive_data(data)).code == 1009


@pytest.mark.parametrize("compression", [None, DeflateConfig()])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_max_message_size_holds_exactly_for_an_uncompressed_whole_frame(
    compression: DeflateConfig | None, opcode: Opcode
) -> None:
    # With deflate negotiated the parser allows some slack for compressed
    # frames; an uncompressed frame must still be held to the exact limit.
    _, server = open_pair(compression=compression, max_message_size=100)
    assert len(server.receive_data(client_frame(opcode, b"x" * 100))) == 1
    closed = last_close(server.receive_data(client_frame(opcode, b"x" * 101)))
    assert closed.code == 1009


# -- how long a compressed frame may be (RFC 7692) ---------------------------

DEFLATE_LIMIT = 256 * 1024
# Lets the client compress with any window, 9 to 15 bits.
ANY_WINDOW = DeflateConfig(client_max_window_bits=15)


def deflate_bound(size: int) -> int:
    """zlib's deflateBound for unknown settings (zlib 1.2.12+, deflate.c):
    fixed blocks of 9-bit literals, or stored blocks of 127 bytes."""
    fixed = size + (size >> 3) + (size >> 8) + (size >> 9) + 4
    stored = size + (size >> 5) + (size >> 7) + (size >> 11) + 7
    return max(fixed, stored)


def incompressible(kind: str, size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    # Bytes 144..255 cost 9 bits each in a fixed Huffman block.
    return bytes(rng.choices(range(144, 256), k=size))


def zlib_frames(
    data: bytes,
    *,
    level: int,
    mem_level: int,
    wbits: int,
    cuts: tuple[int, ...] = (),
) -> bytes:
    """``data`` as one compressed message, compressed by zlib with these
    settings, its compressed bytes cut into frames at ``cuts`` (RFC 7692
    §6.1 lets an encoder split them anywhere)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -wbits, mem_level)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    out = out[:-4]  # §7.2.1
    bounds = [0, *sorted(min(c, len(out)) for c in cuts), len(out)]
    pieces = [out[a:b] for a, b in itertools.pairwise(bounds)]
    return b"".join(
        client_frame(
            Opcode.BINARY if i == 0 else Opcode.CONTINUATION,
            piece,
            fin=i == len(pieces) - 1,
            rsv1=i == 0,
        )
        for i, piece in enumerate(pieces)
    )


@pytest.mark.parametrize("wbits", range(9, 16))
@pytest.mark.parametrize(
    ("level", "mem_level"), [(6, 1), (1, 1), (0, 1), (1, 3), (9, 9)]
)
@pytest.mark.parametrize("kind", ["random", "high"])
def test_rfc7692_a_message_at_the_limit_is_accepted_from_zlib_at_any_setting(
    wbits: int, level: int, mem_level: int, kind: str
) -> None:
    # max_message_size counts bytes after decompression; incompressible data
    # grows when deflated (memLevel 1: a 5-byte stored block header per 127
    # bytes; memLevel 2+ with a small window: 9-bit literals), and a frame
    # that carries a message within the limit must not be refused for it.
    data = incompressible(kind, DEFLATE_LIMIT, wbits)
    wire = zlib_frames(data, level=level, mem_level=mem_level, wbits=wbits)
    _, server = open_pair(compression=ANY_WINDOW, max_message_size=DEFLATE_LIMIT)
    assert server.receive_data(wire) == [BinaryMessage(data)]
    # One byte more is still refused, once inflated.
    wire = zlib_frames(data + b"!", level=level, mem_level=mem_level, wbits=wbits)
    _, server = open_pair(compression=ANY_WINDOW, max_message_size=DEFLATE_LIMIT)
    closed = last_close(server.receive_data(wire))
    assert closed.code == 1009
    assert sent_close_code(server) == 1009


@pytest.mark.parametrize(
    "cuts", [(1,), (5, 6), (100_000,), (50_000, 150_000, 250_000), (269_000,)]
)
def test_rfc7692_a_message_at_the_limit_is_accepted_however_it_is_cut(
    cuts: tuple[int, ...],
) -> None:
    data = incompressible("random", DEFLATE_LIMIT, len(cuts))
    wire = zlib_frames(data, level=1, mem_level=1, wbits=12, cuts=cuts)
    _, server = open_pair(compression=ANY_WINDOW, max_message_size=DEFLATE_LIMIT)
    assert server.receive_data(wire) == [BinaryMessage(data)]


def test_rfc7692_a_compressed_frame_is_still_bounded_before_it_is_buffered() -> None:
    # Allowing for deflate's worst case still bounds what a peer makes us
    # buffer: a header announcing more than any zlib setting could make of
    # the limit is refused before its payload arrives.
    most = deflate_bound(DEFLATE_LIMIT) + 256
    assert most < DEFLATE_LIMIT * 1.14 + 300
    _, server = open_pair(compression=ANY_WINDOW, max_message_size=DEFLATE_LIMIT)
    header = serialize_header(Opcode.BINARY, most, rsv1=True, mask=b"mask")
    assert server.receive_data(header) == []  # waits for the payload
    _, server = open_pair(compression=ANY_WINDOW, max_message_size=DEFLATE_LIMIT)
    header = serialize_header(Opcode.BINARY, most + 1, rsv1=True, mask=b"mask")
    assert last_close(server.receive_data(header)).code == 1009
    assert server.get_buffer() is None


# -- ping and pong (RFC 6455 §5.5.2, §5.5.3) ---------------------------------


def test_rfc6455_5_5_2_ping_is_answered_with_a_pong_of_the_same_payload() -> None:
    client, server = open_pair()
    client.send_ping(b"payload")
    assert server.receive_data(wire(client)) == [Ping(b"payload")]
    assert client.receive_data(wire(server)) == [Pong(b"payload")]


def test_auto_pong_can_be_turned_off() -> None:
    client, server = open_pair(auto_pong=False)
    client.send_ping(b"p")
    assert server.receive_data(wire(client)) == [Ping(b"p")]
    assert wire(server) == b""


def pongs(*payloads: bytes) -> bytes:
    return b"".join(serialize_frame(Opcode.PONG, p) for p in payloads)


def test_a_burst_of_pings_gets_a_pong_each() -> None:
    _, server = open_pair()
    payloads = [b"%d" % i for i in range(10)]  # as Autobahn's case 2.10
    data = b"".join(client_frame(Opcode.PING, p) for p in payloads)
    assert server.receive_data(data) == [Ping(p) for p in payloads]
    assert wire(server) == pongs(*payloads)


def test_rfc6455_5_5_3_a_flood_of_pings_gets_a_pong_to_the_latest() -> None:
    # A pong may answer only the most recent ping: a read full of pings
    # costs a bounded number of pongs, not one per ping.
    _, server = open_pair()
    payloads = [b"%d" % i for i in range(1000)]
    data = b"".join(client_frame(Opcode.PING, p) for p in payloads)
    assert server.receive_data(data) == [Ping(p) for p in payloads]
    assert wire(server) == pongs(*payloads[:16], payloads[-1])
    assert wire(server) == b""
    # Then each read gets its pongs again.
    server.receive_data(b"".join(client_frame(Opcode.PING, p) for p in payloads[:10]))
    assert wire(server) == pongs(*payloads[:10])


def test_rfc6455_5_5_3_held_pongs_answer_the_latest_ping_when_let_go() -> None:
    client, server = open_pair()
    server.hold_pongs()
    for payload in (b"a", b"b", b"c"):
        client.send_ping(payload)
    assert server.receive_data(wire(client)) == [Ping(b"a"), Ping(b"b"), Ping(b"c")]
    assert wire(server) == b""  # however long they stay held
    client.send_ping(b"d")
    server.receive_data(wire(client))
    assert wire(server) == b""
    server.hold_pongs(False)
    assert client.receive_data(wire(server)) == [Pong(b"d")]
    server.hold_pongs(False)  # nothing more
    assert wire(server) == b""
    # And pings are answered at once again.
    client.send_ping(b"e")
    server.receive_data(wire(client))
    assert client.receive_data(wire(server)) == [Pong(b"e")]


def test_a_held_pong_is_not_sent_after_our_close_frame() -> None:
    _, server = open_pair()
    server.hold_pongs()
    server.receive_data(client_frame(Opcode.PING, b"p"))
    server.send_close(1001)
    server.hold_pongs(False)
    assert wire(server) == serialize_frame(Opcode.CLOSE, serialize_close(1001))


def test_control_payload_over_125_bytes_is_refused_when_sending() -> None:
    client, _ = open_pair()
    with pytest.raises(ValueError, match="125"):
        client.send_ping(b"x" * 126)


# -- the closing handshake (RFC 6455 §5.5.1, §7) -----------------------------


def test_rfc6455_7_client_initiated_close_and_server_closes_tcp_first() -> None:
    client, server = open_pair()
    client.send_close(1000, "bye")
    assert client.state is State.CLOSING
    assert server.receive_data(wire(client)) == [Closed(1000, "bye")]
    assert server.state is State.CLOSED
    assert server.should_close_transport()
    assert client.receive_data(wire(server)) == [Closed(1000, "")]
    assert client.state is State.CLOSED
    assert not client.should_close_transport()  # waits for the server's EOF
    assert client.receive_eof() == []


def test_rfc6455_5_5_1_close_code_is_echoed() -> None:
    client, server = open_pair()
    server.send_close(4001, "custom")
    assert client.receive_data(wire(server)) == [Closed(4001, "custom")]
    echo = wire(client)
    server_events = server.receive_data(echo)
    assert server_events == [Closed(4001, "")]
    assert server.should_close_transport()


def test_rfc6455_5_5_1_empty_close_is_echoed_empty() -> None:
    _, server = open_pair()
    assert server.receive_data(client_frame(Opcode.CLOSE, b"")) == [Closed(1005, "")]
    assert wire(server) == bytes([0x88, 0x00])


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),
        ((999).to_bytes(2, "big"), 1002),
        ((1004).to_bytes(2, "big"), 1002),
        ((1005).to_bytes(2, "big"), 1002),
        ((1006).to_bytes(2, "big"), 1002),
        ((1015).to_bytes(2, "big"), 1002),
        ((1016).to_bytes(2, "big"), 1002),
        ((2999).to_bytes(2, "big"), 1002),
        ((5000).to_bytes(2, "big"), 1002),
        ((1000).to_bytes(2, "big") + b"\xff", 1007),
    ],
)
def test_rfc6455_7_4_invalid_close_payloads(payload: bytes, code: int) -> None:
    _, server = open_pair()
    closed = last_close(server.receive_data(client_frame(Opcode.CLOSE, payload)))
    assert closed.code == code
    assert sent_close_code(server) == code


def test_rfc6455_5_5_1_nothing_is_sent_after_close() -> None:
    client, _server = open_pair()
    client.send_close()
    wire(client)
    with pytest.raises(ConnectionClosed):
        client.send_text("late")
    with pytest.raises(ConnectionClosed):
        client.send_ping()
    client.send_close()  # a second close is a no-op
    assert wire(client) == b""


def test_no_pong_after_our_close_frame() -> None:
    _client, server = open_pair()
    server.send_close()
    wire(server)
    server.receive_data(client_frame(Opcode.PING, b"p"))
    assert wire(server) == b""


def test_rfc6455_5_5_1_data_after_a_close_frame_is_ignored() -> None:
    _, server = open_pair()
    data = client_frame(Opcode.CLOSE, serialize_close(1000)) + client_frame(
        Opcode.TEXT, b"x"
    )
    assert server.receive_data(data) == [Closed(1000, "")]
    assert server.receive_data(client_frame(Opcode.TEXT, b"y")) == []


def test_messages_still_arrive_while_closing() -> None:
    client, server = open_pair()
    server.send_close()
    client.send_text("in flight")
    assert server.receive_data(wire(client)) == [TextMessage("in flight")]


def test_sending_after_the_peer_closed_raises_with_its_code() -> None:
    _, server = open_pair()
    server.receive_data(client_frame(Opcode.CLOSE, serialize_close(1001, "away")))
    with pytest.raises(ConnectionClosed) as info:
        server.send_text("x")
    assert (info.value.code, info.value.reason) == (1001, "away")


def test_abrupt_eof_reports_1006() -> None:
    _, server = open_pair()
    assert server.receive_eof() == [Closed(1006)]
    assert server.close_code == 1006


def test_protocol_failure_closes_tcp_on_both_sides() -> None:
    client, server = open_pair()
    last_close(server.receive_data(client_frame(0x3, b"")))
    assert server.should_close_transport()
    last_close(client.receive_data(serialize_frame(Opcode.TEXT, b"\xff")))
    assert client.should_close_transport()
    assert client.error is not None and client.close_code == 1007


# -- properties (hypothesis) ----------------------------------------------


DEFLATE_CONFIGS = [
    None,
    DeflateConfig(),
    DeflateConfig(min_size=0),
    DeflateConfig(
        server_no_context_takeover=True, client_no_context_takeover=True, min_size=0
    ),
    DeflateConfig(server_max_window_bits=9, client_max_window_bits=10, min_size=0),
    DeflateConfig(
        server_max_window_bits=8, client_no_context_takeover=True, min_size=0
    ),
]
VALID_FINAL_CODES = {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011}
VALID_FINAL_CODES |= {1012, 1013, 1014} | set(range(3000, 5000))

messages_strategy = st.lists(
    st.one_of(st.text(max_size=200), st.binary(max_size=200), st.text(max_size=3000)),
    max_size=6,
)


def split(data: str | bytes, cuts: list[int]) -> list[str] | list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [data[:0]]  # type: ignore[return-value]


def send_fragmented(sender: Connection, message: str | bytes, cuts: list[int]) -> None:
    pieces = split(message, cuts)
    if len(pieces) == 1:
        if isinstance(message, str):
            sender.send_text(message)
        else:
            sender.send_binary(message)
        return
    first, *rest = pieces
    if isinstance(first, str):
        sender.send_text(first, fin=False)
    else:
        sender.send_binary(first, fin=False)
    for i, piece in enumerate(rest):
        sender.send_continuation(piece, fin=i == len(rest) - 1)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    messages=messages_strategy,
    cuts=st.lists(st.lists(st.integers(0, 4000), max_size=4), min_size=6, max_size=6),
    config=st.sampled_from(DEFLATE_CONFIGS),
    client_sends=st.booleans(),
    chunk=st.integers(1, 300),
)
def test_any_messages_fragmented_any_way_arrive_exactly(
    messages: list[str | bytes],
    cuts: list[list[int]],
    config: DeflateConfig | None,
    client_sends: bool,
    chunk: int,
) -> None:
    client, server = open_pair(compression=config)
    sender, receiver = (client, server) if client_sends else (server, client)
    for message, message_cuts in zip(messages, cuts, strict=False):
        send_fragmented(sender, message, message_cuts)
    data = wire(sender)
    events: list[Event] = []
    for i in range(0, len(data), chunk):
        events += receiver.receive_data(data[i : i + chunk])
    received = [e.data for e in events if isinstance(e, TextMessage | BinaryMessage)]
    assert received == messages
    assert len(events) == len(messages)


@given(
    messages=st.lists(st.text(max_size=50), max_size=5),
    cuts=st.lists(st.lists(st.integers(0, 200), max_size=4), min_size=5, max_size=5),
)
def test_text_split_inside_code_points_on_the_wire_arrives_exactly(
    messages: list[str], cuts: list[list[int]]
) -> None:
    _, server = open_pair()
    data = b""
    for message, message_cuts in zip(messages, cuts, strict=False):
        pieces = split(message.encode(), message_cuts)
        for i, piece in enumerate(pieces):
            opcode = Opcode.TEXT if i == 0 else Opcode.CONTINUATION
            data += client_frame(opcode, piece, fin=i == len(pieces) - 1)
    events: list[Event] = []
    for byte in range(len(data)):
        events += server.receive_data(data[byte : byte + 1])
    assert events == [TextMessage(m) for m in messages]


def receive_like_asyncio(
    conn: Connection, data: bytes, chunks: list[int]
) -> list[Event]:
    """Feed ``data`` as an asyncio.BufferedProtocol does: into the buffer
    the connection offers, else into a scratch area that is scribbled over
    after each call, as the next read would."""
    scratch = memoryview(bytearray(256 * 1024))
    events: list[Event] = []
    pos = 0
    for size in itertools.cycle(chunks):
        if pos == len(data):
            return events
        view = conn.get_buffer()
        target = scratch if view is None else view
        n = min(size, len(target), len(data) - pos)
        target[:n] = data[pos : pos + n]
        pos += n
        if view is None:
            events += conn.receive_data(scratch[:n])
        else:
            events += conn.receive_into(n)
        scratch[:] = b"\xee" * len(scratch)
    raise AssertionError("unreachable")


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    sizes=st.lists(
        st.sampled_from([0, 5, 125, 126, 65_535, 65_536, 200_000]), max_size=6
    ),
    text=st.booleans(),
    chunks=st.lists(st.integers(1, 300_000), min_size=1, max_size=5),
    client_sends=st.booleans(),
)
def test_receiving_into_the_offered_buffer_gives_the_same_messages(
    sizes: list[int], text: bool, chunks: list[int], client_sends: bool
) -> None:
    client, server = open_pair(compression=None, max_message_size=None)
    sender, receiver = (client, server) if client_sends else (server, client)
    messages: list[str | bytes] = [
        ("é" * (n // 2) if text else bytes([n % 251]) * n) for n in sizes
    ]
    for message in messages:
        if isinstance(message, str):
            sender.send_text(message)
        else:
            sender.send_binary(message)
    events = receive_like_asyncio(receiver, wire(sender), chunks)
    assert [e.data for e in events if isinstance(e, TextMessage | BinaryMessage)] == (
        messages
    )
    assert receiver.get_buffer() is None  # nothing still arriving


def test_a_large_frame_is_received_into_a_buffer_that_grows_as_it_fills() -> None:
    _, server = open_pair(compression=None, max_message_size=None)
    frame = client_frame(Opcode.BINARY, b"x" * 100_000)
    assert server.get_buffer() is None
    assert server.receive_data(frame[:1000]) == []
    # A quarter of the 100,000 bytes announced to begin with, not all...
    view = server.get_buffer()
    assert view is not None and len(view) == 25_000 - (1000 - 14)
    view[: len(view)] = frame[1000 : 1000 + len(view)]
    assert server.receive_into(len(view)) == []
    # ...then the rest, once a quarter came.
    received = 1000 + len(view)
    view = server.get_buffer()
    assert view is not None and len(view) == len(frame) - received
    view[: len(view)] = frame[received:]
    assert server.receive_into(len(view)) == [BinaryMessage(b"x" * 100_000)]
    assert server.get_buffer() is None


def test_invalid_utf8_fails_a_large_text_frame_before_it_ends() -> None:
    _, server = open_pair(compression=None, max_message_size=None)
    frame = client_frame(Opcode.TEXT, b"a" * 1000 + b"\xff" + b"a" * 100_000)
    assert server.receive_data(frame[:500]) == []
    view = server.get_buffer()
    assert view is not None
    view[:1000] = frame[500:1500]
    assert last_close(server.receive_into(1000)).code == 1007


def test_a_large_frame_announced_over_the_limit_gets_no_buffer() -> None:
    _, server = open_pair(compression=None, max_message_size=1 << 20)
    header = bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big") + b"mask"
    assert last_close(server.receive_data(header)).code == 1009
    assert server.get_buffer() is None


def check_ends_cleanly(conn: Connection, events: list[Event]) -> None:
    events += conn.receive_eof()
    closes = [e for e in events if isinstance(e, Closed)]
    assert len(closes) == 1 and events[-1] is closes[0]
    assert closes[0].code in VALID_FINAL_CODES
    assert conn.state is State.CLOSED


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), chunk=st.integers(1, 64))
def test_random_bytes_after_the_handshake_end_in_an_rfc_close_code(
    data: bytes, chunk: int
) -> None:
    _, server = open_pair(compression=DeflateConfig())
    events: list[Event] = []
    for i in range(0, len(data), chunk):
        events += server.receive_data(data[i : i + chunk])
    check_ends_cleanly(server, events)


random_frames = st.lists(
    st.tuples(st.integers(0, 255), st.binary(max_size=140)),
    max_size=8,
)


@settings(max_examples=500, deadline=None)
@given(frames=random_frames, config=st.sampled_from(DEFLATE_CONFIGS))
def test_random_masked_frames_end_in_an_rfc_close_code(
    frames: list[tuple[int, bytes]], config: DeflateConfig | None
) -> None:
    _, server = open_pair(compression=config)
    # Any first byte (FIN, RSV bits, opcode) over a well-formed masked body.
    data = b"".join(
        bytes([b0]) + serialize_frame(Opcode.BINARY, payload, mask=True)[1:]
        for b0, payload in frames
    )
    events = server.receive_data(data)
    check_ends_cleanly(server, events)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), chunk=st.integers(1, 64))
def test_random_bytes_during_the_handshake_never_raise(data: bytes, chunk: int) -> None:
    server = ServerConnection()
    events: list[Event] = []
    for i in range(0, len(data), chunk):
        events += server.receive_data(data[i : i + chunk])
        if events and isinstance(events[-1], Request):
            events += server.accept()
    check_ends_cleanly(server, events)
    client = ClientConnection("ws://h/")
    events = []
    for i in range(0, len(data), chunk):
        events += client.receive_data(data[i : i + chunk])
    check_ends_cleanly(client, events)


# -- found by the Autobahn testsuite (docs/conformance.md) --------------------


@pytest.mark.parametrize(
    "bad_frame",
    [
        bytes([0xA1]) + client_frame(Opcode.TEXT, b"x")[1:],  # RSV2 (case 3.2)
        client_frame(0x5, b""),  # reserved opcode (case 4.1.3)
        client_frame(Opcode.CONTINUATION, b"x", fin=False),  # nothing to continue
        client_frame(Opcode.TEXT, b"\xff"),  # invalid UTF-8
    ],
    ids=["rsv2", "reserved-opcode", "continuation", "invalid-utf8"],
)
def test_messages_before_a_protocol_error_are_answered_before_the_close(
    bad_frame: bytes,
) -> None:
    _, server = open_pair()
    data = (
        client_frame(Opcode.TEXT, b"Hello")
        + bad_frame
        + client_frame(Opcode.PING, b"never answered")
    )
    assert server.receive_data(data) == [TextMessage("Hello")]
    assert server.state is State.OPEN and server.failure_pending
    server.send_text("Hello")  # the echo the peer waits for
    echo = wire(server)
    closed = last_close(server.receive_data(b""))
    assert closed.code in (1002, 1007) and closed.error is not None
    assert not server.failure_pending and server.state is State.CLOSED
    assert echo == serialize_frame(Opcode.TEXT, b"Hello")
    assert sent_close_code(server) == closed.code  # and no pong


def test_a_pending_failure_also_ends_at_eof_and_before_new_data() -> None:
    _, server = open_pair()
    data = client_frame(Opcode.BINARY, b"a") + client_frame(0x3, b"")
    assert server.receive_data(data) == [BinaryMessage(b"a")]
    assert last_close(server.receive_eof()).code == 1002
    assert server.close_code == 1002
    _, server = open_pair()
    assert server.receive_data(data) == [BinaryMessage(b"a")]
    assert last_close(server.receive_data(client_frame(Opcode.TEXT, b"b"))).code == 1002
    # An error with no message before it fails at once, as always.
    _, server = open_pair()
    assert last_close(server.receive_data(client_frame(0x3, b""))).code == 1002
    assert not server.failure_pending


@pytest.mark.parametrize("fragmented", [False, True])
def test_rfc6455_8_1_invalid_utf8_fails_before_its_frame_is_complete(
    fragmented: bool,
) -> None:
    # Autobahn 6.4.3, 6.4.4: a frame sent in chops fails at the bad chop.
    _, server = open_pair()
    good = "κόσμε".encode()
    bad = b"\xf4\x90\x80\x80edited"
    if fragmented:  # the first chop ends a code point begun in frame 1
        first = client_frame(Opcode.TEXT, good[:-1], fin=False)
        assert server.receive_data(first) == []
        payload = good[-1:] + bad
        opcode = Opcode.CONTINUATION
    else:
        payload = good + bad
        opcode = Opcode.TEXT
    frame = client_frame(opcode, payload)
    cut = len(frame) - len(bad)
    assert server.receive_data(frame[:cut]) == []
    closed = last_close(server.receive_data(frame[cut : cut + 2]))
    assert closed.code == 1007
    assert sent_close_code(server) == 1007


def test_text_still_arriving_is_checked_only_when_uncompressed() -> None:
    client, server = open_pair(compression=DeflateConfig(min_size=0))
    client.send_text("κόσμε" * 100)
    data = wire(client)
    events: list[Event] = []
    for i in range(0, len(data), 7):
        events += server.receive_data(data[i : i + 7])
    assert events == [TextMessage("κόσμε" * 100)]


def test_a_protocol_error_waits_for_messages_the_owner_holds_unread() -> None:
    # Autobahn 3.3 (client): "Hello" came in one read, the bad frame in the
    # next, before the application had read "Hello".
    _, server = open_pair()
    assert server.receive_data(client_frame(Opcode.TEXT, b"Hello")) == [
        TextMessage("Hello")
    ]
    assert server.receive_data(client_frame(0x3, b""), unread=True) == []
    assert server.failure_pending and server.state is State.OPEN
    # More bytes (Autobahn 3.3's ping) don't end the wait while "Hello" is
    # unread; they come after the error and are never parsed.
    ping = client_frame(Opcode.PING, b"p")
    assert server.receive_data(ping, unread=True) == []
    assert server.failure_pending and wire(server) == b""
    server.send_text("Hello")
    assert wire(server) == serialize_frame(Opcode.TEXT, b"Hello")
    assert last_close(server.receive_data(b"")).code == 1002


def test_no_common_subprotocol_is_refused_with_400() -> None:
    client = ClientConnection("ws://h/", subprotocols=["chat.v3"])
    server = ServerConnection(subprotocols=["chat.v1", "chat.v2"])
    server.receive_data(wire(client))
    closed = last_close(server.accept())
    assert isinstance(closed.error, InvalidHandshake)
    response = wire(server)
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"chat.v3" in response and b"chat.v1, chat.v2" in response


# -- the fast path for the usual read -----------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), max_size=st.none() | st.integers(0, 80))
def test_receive_messages_leaves_everything_as_receive_data_would(
    data: st.DataObject, max_size: int | None
) -> None:
    # Two servers fed the same reads, one through receive_messages wherever
    # it takes them: every message, event and byte sent must agree.
    fast = open_pair(max_message_size=max_size)[1]
    usual = open_pair(max_message_size=max_size)[1]
    for _ in range(data.draw(st.integers(1, 4))):
        read = data.draw(message_wire(True))
        messages = fast.receive_messages(read)
        events = usual.receive_data(read)
        if messages is None:
            assert comparable(fast.receive_data(read)) == comparable(events)
        else:
            assert events == [
                TextMessage(m) if isinstance(m, str) else BinaryMessage(m)
                for m in messages
            ]
        assert wire(fast) == wire(usual)
        assert (fast.state, fast.close_code) == (usual.state, usual.close_code)
    close = client_frame(Opcode.CLOSE, b"\x03\xe8")
    assert comparable(fast.receive_data(close)) == comparable(usual.receive_data(close))
    assert wire(fast) == wire(usual)


def comparable(events: list[Event]) -> list[object]:
    """Events, with a failure's exception as its type and text (exceptions
    compare by identity)."""
    return [
        (e.code, e.reason, type(e.error), str(e.error)) if isinstance(e, Closed) else e
        for e in events
    ]


def test_receive_messages_declines_what_it_does_not_handle() -> None:
    server = open_pair()[1]
    text = client_frame(Opcode.TEXT, "é".encode())
    assert server.receive_messages(text * 2) == ["é", "é"]
    # A control frame, a fragment, an incomplete frame: the usual path.
    assert server.receive_messages(text + client_frame(Opcode.PING, b"")) is None
    assert server.receive_messages(client_frame(Opcode.TEXT, b"a", fin=False)) is None
    assert server.receive_messages(text[:-1]) is None
    # Once part of a frame is held, the next read continues it the usual way.
    assert server.receive_data(text[:3]) == []
    assert server.receive_messages(text[3:]) is None
    assert server.receive_data(text[3:]) == [TextMessage("é")]
    # With compression negotiated, never.
    server = open_pair(compression=DeflateConfig())[1]
    assert server.receive_messages(text) is None
