"""Tests for the RFC 6455 §4 opening handshake."""

from __future__ import annotations

import base64
import gc
import re
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.exceptions import InvalidHandshake, InvalidStatus
from tidings.protocol.handshake import (
    GUID,
    ExtensionOffer,
    Headers,
    Request,
    RequestReader,
    Response,
    ResponseReader,
    accept_key,
    build_rejection,
    build_request,
    build_response,
    format_extension_header,
    generate_key,
    parse_extension_header,
    parse_subprotocols,
    parse_token_list,
    validate_request,
    validate_response,
)

SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# RFC 6455 §1.2, with CRLF line endings.
SAMPLE_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

UPGRADE_HEADERS = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", SAMPLE_KEY),
    ("Sec-WebSocket-Version", "13"),
]


def head(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [start_line] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upgrade_request(
    *,
    drop: tuple[str, ...] = (),
    add: tuple[tuple[str, str], ...] = (),
    method: str = "GET",
    version: str = "1.1",
) -> bytes:
    """The minimal valid upgrade request, minus ``drop`` plus ``add``."""
    headers = [(n, v) for n, v in UPGRADE_HEADERS if n not in drop]
    return head(f"{method} /chat HTTP/{version}", headers + list(add))


def read_request(data: bytes, **limits: int) -> Request:
    request = RequestReader(**limits).feed(data)
    assert request is not None
    return request


def read_response(data: bytes) -> Response:
    response = ResponseReader().feed(data)
    assert response is not None
    return response


def reject(data: bytes, **limits: int) -> InvalidHandshake:
    """The error of reading and validating the request ``data``."""
    with pytest.raises(InvalidHandshake) as info:
        validate_request(read_request(data, **limits))
    return info.value


# -- keys (§1.3, §4.1, §4.2.2) ------------------------------------------------


def test_accept_key_rfc6455_1_3_sample() -> None:
    assert accept_key(SAMPLE_KEY) == SAMPLE_ACCEPT
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def test_generate_key_is_base64_of_16_random_bytes_4_1() -> None:
    keys = {generate_key() for _ in range(8)}
    assert len(keys) == 8
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 16


def test_sample_request_rfc6455_1_2_parses_and_validates() -> None:
    request = read_request(SAMPLE_REQUEST)
    assert request.method == "GET"
    assert request.target == request.path == "/chat"
    assert request.query == ""
    assert request.headers.get("origin") == "http://example.com"
    assert validate_request(request) == SAMPLE_KEY
    assert parse_subprotocols(request) == ["chat", "superchat"]


def test_build_response_rfc6455_1_3_sample() -> None:
    assert build_response(SAMPLE_KEY) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"\r\n"
    )


# -- server-side rules, one test each ------------------------------------------


def test_method_must_be_get_4_1() -> None:
    exc = reject(upgrade_request(method="POST"))
    assert exc.status == 405
    assert exc.headers == [("Allow", "GET")]
    assert "GET" in str(exc)
    assert "POST" in str(exc)


def test_http_1_0_is_refused_4_1() -> None:
    exc = reject(upgrade_request(version="1.0"))
    assert exc.status == 400
    assert "HTTP/1.1" in str(exc)
    assert "HTTP/1.0" in str(exc)


def test_missing_host_is_refused_by_reader_4_1() -> None:
    exc = reject(upgrade_request(drop=("Host",)))
    assert exc.status == 400
    assert "Host" in str(exc)


def test_missing_host_is_refused_by_validate_request_4_1() -> None:
    headers = Headers((n, v) for n, v in UPGRADE_HEADERS if n != "Host")
    with pytest.raises(InvalidHandshake, match="Host") as info:
        validate_request(Request("GET", "/", headers))
    assert info.value.status == 400


@pytest.mark.parametrize("upgrade", [None, "h2c", "websocket2"])
def test_missing_upgrade_answers_426_4_2_1(upgrade: str | None) -> None:
    add = () if upgrade is None else (("Upgrade", upgrade),)
    exc = reject(upgrade_request(drop=("Upgrade",), add=add))
    assert exc.status == 426
    assert ("Upgrade", "websocket") in exc.headers
    assert ("Connection", "Upgrade") in exc.headers
    assert "Upgrade" in str(exc)


def test_plain_get_is_a_request_answered_426_4_2_1() -> None:
    request = read_request(b"GET /healthz HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert request.path == "/healthz"
    with pytest.raises(InvalidHandshake) as info:
        validate_request(request)
    assert info.value.status == 426


@pytest.mark.parametrize("connection", [None, "keep-alive", "close"])
def test_connection_must_contain_upgrade_4_2_1(connection: str | None) -> None:
    add = () if connection is None else (("Connection", connection),)
    exc = reject(upgrade_request(drop=("Connection",), add=add))
    assert exc.status == 400
    assert "Connection" in str(exc)


def test_missing_key_4_2_1() -> None:
    exc = reject(upgrade_request(drop=("Sec-WebSocket-Key",)))
    assert exc.status == 400
    assert "Sec-WebSocket-Key" in str(exc)


def test_repeated_key_4_2_1() -> None:
    exc = reject(upgrade_request(add=(("Sec-WebSocket-Key", SAMPLE_KEY),)))
    assert exc.status == 400
    assert "Sec-WebSocket-Key" in str(exc)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not base64!",
        "dGhlIHNhbXBsZSBub25jZQ",  # missing padding
        "dGhlIHNhbXBsZSBub25j",  # 15 bytes
        "dGhlIHNhbXBsZSBub25jZSE=",  # 17 bytes
        "dGhlIHNhbXBs ZSBub25jZQ==",  # whitespace inside
        f"{SAMPLE_KEY}, {SAMPLE_KEY}",
        "dGhlIHNhbXBsZSBub25jZQ==\xe9",
    ],
)
def test_key_must_be_base64_of_16_bytes_4_2_1(key: str) -> None:
    exc = reject(
        upgrade_request(drop=("Sec-WebSocket-Key",), add=(("Sec-WebSocket-Key", key),))
    )
    assert exc.status == 400
    assert "Sec-WebSocket-Key" in str(exc)


@pytest.mark.parametrize(
    "versions", [(), ("8",), ("13", "13"), ("13, 8",), ("",), ("013",)]
)
def test_version_must_be_13_answers_426_4_2_2(versions: tuple[str, ...]) -> None:
    add = tuple(("Sec-WebSocket-Version", v) for v in versions)
    exc = reject(upgrade_request(drop=("Sec-WebSocket-Version",), add=add))
    assert exc.status == 426
    assert ("Sec-WebSocket-Version", "13") in exc.headers
    assert "Sec-WebSocket-Version" in str(exc)


@pytest.mark.parametrize(
    "body_header",
    [("Content-Length", "3"), ("Transfer-Encoding", "chunked")],
)
def test_request_with_body_is_not_an_upgrade_4_1(body_header: tuple[str, str]) -> None:
    exc = reject(upgrade_request(add=(body_header,)) + b"abc")
    assert exc.status == 400
    assert body_header[0] in str(exc)


def test_empty_lines_before_the_request_are_ignored_rfc9112_2_2() -> None:
    reader = RequestReader()
    assert reader.feed(b"\r\n\r\n") is None
    assert reader.feed(SAMPLE_REQUEST + b"x") == read_request(SAMPLE_REQUEST)
    assert reader.trailing_data == b"x"
    # They count towards the head's size.
    with pytest.raises(InvalidHandshake) as info:
        RequestReader(max_head_size=len(SAMPLE_REQUEST)).feed(b"\r\n" + SAMPLE_REQUEST)
    assert info.value.status == 431


def test_content_length_zero_is_fine_4_1() -> None:
    request = read_request(upgrade_request(add=(("Content-Length", "0"),)))
    assert validate_request(request) == SAMPLE_KEY


def test_head_too_big_answers_431_rfc6585_5() -> None:
    data = upgrade_request(add=(("X-Padding", "a" * 9000),))
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = RequestReader()
        with pytest.raises(InvalidHandshake) as info:
            for chunk in chunks:
                reader.feed(chunk)
        assert info.value.status == 431
        assert "8192 bytes" in str(info.value)


@pytest.mark.parametrize("bytewise", [False, True])
def test_head_size_limit_is_exact_rfc6585_5(bytewise: bool) -> None:
    data = upgrade_request()
    for limit, fits in ((len(data), True), (len(data) - 1, False)):
        reader = RequestReader(max_head_size=limit)
        chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        if fits:
            assert [reader.feed(c) for c in chunks][-1] is not None
        else:
            with pytest.raises(InvalidHandshake) as info:
                for chunk in chunks:
                    reader.feed(chunk)
            assert info.value.status == 431


def test_too_many_headers_answers_431_rfc6585_5() -> None:
    extra = tuple((f"X-{i}", "1") for i in range(10))
    data = upgrade_request(add=extra)
    limit = len(UPGRADE_HEADERS) + len(extra)
    assert read_request(data, max_headers=limit) is not None
    exc = reject(data, max_headers=limit - 1)
    assert exc.status == 431
    assert "headers" in str(exc)


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET /chat HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET /chat HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /chat HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET /chat HTTP/1.1\r\n\r\n",  # no Host (RFC 9112 §3.2)
        b"GET /chat HTTP/1.1\nHost: x\n\n",  # bare LF
        b"GET /chat HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",  # obs-fold (§5.2)
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_malformed_http_answers_400_rfc9112(data: bytes) -> None:
    # A body is allowed, so that llhttp's own Transfer-Encoding check runs.
    with pytest.raises(InvalidHandshake) as info:
        RequestReader(max_body_size=64).feed(data)
    assert info.value.status == 400
    assert "HTTP request" in str(info.value)


def test_reader_error_is_sticky() -> None:
    reader = RequestReader()
    with pytest.raises(InvalidHandshake):
        reader.feed(b"\x00garbage\r\n\r\n")
    with pytest.raises(InvalidHandshake):
        reader.feed(SAMPLE_REQUEST)


@pytest.fixture
def garbage() -> Iterator[list[object]]:
    """What the cyclic garbage collector finds after the test: objects that
    only it could free."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize(
    ("reader", "data"),
    [
        (RequestReader, SAMPLE_REQUEST + b"\x88\x80abcd"),  # early frame
        (RequestReader, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        (ResponseReader, b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    ],
)
def test_a_reader_done_leaves_nothing_for_the_garbage_collector(
    garbage: list[object], reader: type[RequestReader | ResponseReader], data: bytes
) -> None:
    # llhttp holds the reader's bound methods: a server would leave a cycle
    # of a dozen objects per connection for the collector to find. (A reader
    # that refused its head keeps the error it raised again, and with it a
    # traceback back to itself: a cycle on that path only.)
    assert reader().feed(data) is not None
    gc.collect()
    assert not [o for o in garbage if isinstance(o, RequestReader | ResponseReader)]


# -- tokens, headers, targets ----------------------------------------------------


def test_tokens_are_case_insensitive_in_comma_lists_rfc9110_5_6_1() -> None:
    data = upgrade_request(
        drop=("Upgrade", "Connection"),
        add=(("upgrade", "WebSocket"), ("CONNECTION", "keep-alive, Upgrade")),
    )
    assert validate_request(read_request(data)) == SAMPLE_KEY


def test_upgrade_list_may_name_other_protocols_rfc9110_7_8() -> None:
    data = upgrade_request(drop=("Upgrade",), add=(("Upgrade", "HTTP/2.0, websocket"),))
    assert validate_request(read_request(data)) == SAMPLE_KEY


def test_repeated_connection_headers_are_combined_rfc9110_5_3() -> None:
    data = upgrade_request(
        drop=("Connection",),
        add=(("Connection", "keep-alive"), ("Connection", "upgrade")),
    )
    assert validate_request(read_request(data)) == SAMPLE_KEY


def test_parse_token_list_ignores_empty_elements_rfc9110_5_6_1() -> None:
    assert parse_token_list(" , a,,b ,\tc, ") == ["a", "b", "c"]
    assert parse_token_list("") == []


def test_headers_multimap() -> None:
    headers = Headers([("X-A", "1"), ("x-a", "2"), ("B", "3")])
    assert headers.get("x-A") == "1, 2"
    assert headers.get_all("X-a") == ["1", "2"]
    assert headers.get("missing") is None
    assert "b" in headers
    assert "c" not in headers
    assert list(headers) == headers.items() == [("X-A", "1"), ("x-a", "2"), ("B", "3")]
    assert len(headers) == 3
    assert repr(headers) == "Headers([('X-A', '1'), ('x-a', '2'), ('B', '3')])"
    assert headers == Headers(headers.items())
    assert headers != Headers()


def test_packed_headers_read_as_before() -> None:
    pairs = [("X-A", "1"), ("x-a", "2"), ("B", "caf\xe9")]
    headers = Headers(pairs)
    headers.pack()
    assert headers._items is None  # held in one string
    assert headers.get("x-A") == "1, 2"
    assert headers.get_all("X-a") == ["1", "2"]
    assert headers.get("missing") is None
    assert "b" in headers and "c" not in headers
    assert list(headers) == headers.items() == pairs
    assert len(headers) == 3
    assert repr(headers) == repr(Headers(pairs))
    assert headers == Headers(pairs)
    assert headers._items is None  # reads parse it again, keeping nothing


def test_headers_holding_the_separator_stay_unpacked() -> None:
    headers = Headers([("X-A", "a\x00b"), ("B", "1")])
    headers.pack()
    assert headers.items() == [("X-A", "a\x00b"), ("B", "1")]
    empty = Headers()
    empty.pack()
    assert empty.items() == [] and len(empty) == 0


def test_header_names_keep_case_and_obs_text_decodes_as_latin1_rfc9110_5_5() -> None:
    request = read_request(upgrade_request()[:-2] + b"x-Name: caf\xe9\r\n\r\n")
    assert ("x-Name", "caf\xe9") in request.headers.items()


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/chat?room=1", "/chat", "room=1"),
        ("/", "/", ""),
        ("//double", "//double", ""),
        ("http://example.com/chat?a=b", "/chat", "a=b"),  # absolute-form, §4.2.1
        ("http://example.com", "/", ""),
    ],
)
def test_request_path_and_query(target: str, path: str, query: str) -> None:
    request = Request("GET", target, Headers())
    assert (request.path, request.query) == (path, query)


def test_parse_subprotocols_across_repeated_headers_4_1() -> None:
    request = read_request(
        upgrade_request(
            add=(("Sec-WebSocket-Protocol", "a, b"), ("Sec-WebSocket-Protocol", "c"))
        )
    )
    assert parse_subprotocols(request) == ["a", "b", "c"]
    assert parse_subprotocols(read_request(upgrade_request())) == []


def test_parse_subprotocols_rejects_non_tokens_4_1() -> None:
    request = read_request(upgrade_request(add=(("Sec-WebSocket-Protocol", "a/b"),)))
    with pytest.raises(InvalidHandshake, match="Sec-WebSocket-Protocol"):
        parse_subprotocols(request)


# -- extensions (§9.1, RFC 7692 §7.1) ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "offers"),
    [
        ("foo", [("foo", [])]),
        (
            "permessage-deflate; client_max_window_bits",
            [("permessage-deflate", [("client_max_window_bits", None)])],
        ),
        (
            'permessage-deflate; client_max_window_bits="10" ; server_no_context_'
            "takeover, permessage-deflate,x-foo;a=1;b",
            [
                (
                    "permessage-deflate",
                    [
                        ("client_max_window_bits", "10"),
                        ("server_no_context_takeover", None),
                    ],
                ),
                ("permessage-deflate", []),
                ("x-foo", [("a", "1"), ("b", None)]),
            ],
        ),
        ('x; a = "b\\c"', [("x", [("a", "bc")])]),
        (", foo ,, bar,", [("foo", []), ("bar", [])]),
        ("", []),
    ],
)
def test_parse_extension_header_9_1(value: str, offers: list[object]) -> None:
    assert parse_extension_header(value) == offers


@pytest.mark.parametrize(
    "value",
    [
        "foo bar",
        ";a",
        "foo;",
        "foo; =1",
        "foo; a=",
        'foo; a="1',
        'foo; a="1 2"',  # unquoted value must still be a token
        'foo; a="1,2"',
        "foo; a=1=2",
        "foo/1",
        "foo; a=b c",
    ],
)
def test_malformed_extension_header_raises_9_1(value: str) -> None:
    with pytest.raises(InvalidHandshake, match="Sec-WebSocket-Extensions") as info:
        parse_extension_header(value)
    assert info.value.status == 400


def test_format_extension_header_round_trip_9_1() -> None:
    offers: list[ExtensionOffer] = [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("permessage-deflate", [("server_max_window_bits", "10"), ("x", None)]),
        ("x-empty", []),
    ]
    value = format_extension_header(offers)
    assert value == (
        "permessage-deflate; client_max_window_bits, "
        "permessage-deflate; server_max_window_bits=10; x, x-empty"
    )
    assert parse_extension_header(value) == offers


@pytest.mark.parametrize(
    "offer",
    [("bad name", []), ("x", [("a b", None)]), ("x", [("a", "1\r\nX: y")])],
)
def test_format_extension_header_rejects_non_tokens(offer: ExtensionOffer) -> None:
    with pytest.raises(ValueError, match="token"):
        format_extension_header([offer])


# -- building requests and responses ---------------------------------------------


def test_build_request_4_1() -> None:
    data = build_request(
        "example.com:8080",
        "/chat?room=1",
        SAMPLE_KEY,
        origin="https://example.com",
        subprotocols=["chat", "superchat"],
        extensions="permessage-deflate",
        extra_headers=[("User-Agent", "tidings")],
    )
    assert data == (
        b"GET /chat?room=1 HTTP/1.1\r\n"
        b"Host: example.com:8080\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Origin: https://example.com\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"User-Agent: tidings\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"host": "example.com\r\nX-Evil: 1"}, "Host"),
        ({"host": "example.com\x00"}, "Host"),
        ({"resource": "/chat HTTP/1.1\r\nX-Evil: 1"}, "resource"),
        ({"resource": "/caf\xe9"}, "resource"),
        ({"resource": ""}, "resource"),
        ({"key": "k\nX-Evil: 1"}, "Sec-WebSocket-Key"),
        ({"origin": "http://a\rb"}, "Origin"),
        ({"subprotocols": ["chat\r\n"]}, "subprotocol"),
        ({"subprotocols": ["a, b"]}, "subprotocol"),
        ({"extensions": "x\n"}, "Sec-WebSocket-Extensions"),
        ({"extra_headers": [("X-A", "1\r\n\r\nGET /")]}, "X-A"),
        ({"extra_headers": [("X-A\r\nX-B", "1")]}, "header name"),
        ({"extra_headers": [("", "1")]}, "header name"),
        ({"extra_headers": [("X-A", "\u20ac")]}, "Latin-1"),
    ],
)
def test_build_request_rejects_header_injection(
    kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {
        "host": "example.com",
        "resource": "/",
        "key": SAMPLE_KEY,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_request(**args)  # type: ignore[arg-type]


def test_build_response_with_subprotocol_and_extensions_4_2_2() -> None:
    data = build_response(
        SAMPLE_KEY,
        subprotocol="chat",
        extensions="permessage-deflate",
        extra_headers=[("Server", "tidings")],
    )
    assert data.endswith(
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Server: tidings\r\n\r\n"
    )
    with pytest.raises(ValueError, match="subprotocol"):
        build_response(SAMPLE_KEY, subprotocol="a b")
    with pytest.raises(ValueError, match="Server"):
        build_response(SAMPLE_KEY, extra_headers=[("Server", "x\r\n")])


def test_build_rejection_rfc9110_15() -> None:
    assert build_rejection(400, "missing Sec-WebSocket-Key header") == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 33\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"missing Sec-WebSocket-Key header\n"
    )


def test_build_rejection_426_merges_connection_header_4_2_2() -> None:
    exc = reject(upgrade_request(drop=("Sec-WebSocket-Version",)))
    data = build_rejection(exc.status, str(exc), exc.headers)
    response = read_response(data)
    assert (response.status, response.reason) == (426, "Upgrade Required")
    assert response.headers.get_all("Connection") == ["close, Upgrade"]
    assert response.headers.get("Sec-WebSocket-Version") == "13"
    assert response.headers.get("Upgrade") == "websocket"
    reader = ResponseReader()
    reader.feed(data)
    assert reader.trailing_data == (str(exc) + "\n").encode()


def test_build_rejection_unknown_status_and_utf8_body() -> None:
    data = build_rejection(499, "caf\xe9")
    assert data.startswith(b"HTTP/1.1 499 \r\n")
    assert data.endswith(b"Content-Length: 6\r\nConnection: close\r\n\r\ncaf\xc3\xa9\n")
    assert read_response(data).status == 499


# -- client side -------------------------------------------------------------------


def test_response_bytewise_keeps_pipelined_frame_4_1() -> None:
    frame = b"\x81\x05hello"
    data = build_response(SAMPLE_KEY) + frame
    reader = ResponseReader()
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    response = results[-1]
    assert isinstance(response, Response)
    assert results.count(None) == len(data) - len(frame) - 1
    assert reader.trailing_data == frame
    assert response.status == 101
    validate_response(response, SAMPLE_KEY)


def test_request_bytewise_keeps_trailing_data_4_1() -> None:
    data = SAMPLE_REQUEST + b"\x81\x85early"
    reader = RequestReader()
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[len(SAMPLE_REQUEST) - 2] is None
    assert results[len(SAMPLE_REQUEST) - 1] == results[-1] == read_request(data)
    assert reader.trailing_data == b"\x81\x85early"


def test_feed_empty_bytes_is_not_eof() -> None:
    reader = RequestReader()
    assert reader.feed(b"") is None
    assert reader.trailing_data == b""
    assert reader.feed(SAMPLE_REQUEST) is not None


def test_response_reader_skips_interim_1xx_rfc9110_15_2() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + build_response(SAMPLE_KEY) + b"x"
    reader = ResponseReader()
    response = reader.feed(data)
    assert response is not None
    assert response.status == 101
    assert reader.trailing_data == b"x"


def test_non_101_raises_invalid_status_4_1() -> None:
    data = b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 2\r\n\r\nhi"
    reader = ResponseReader()
    response = reader.feed(data)
    assert response is not None
    assert reader.trailing_data == b"hi"
    with pytest.raises(InvalidStatus) as info:
        validate_response(response, SAMPLE_KEY)
    assert info.value.status == 302
    assert ("Location", "/elsewhere") in info.value.headers


@pytest.mark.parametrize(
    ("drop", "add", "match"),
    [
        ("Upgrade", ("Upgrade", "h2c"), "Upgrade"),
        ("Upgrade", None, "Upgrade"),
        ("Connection", ("Connection", "keep-alive"), "Connection"),
        ("Sec-WebSocket-Accept", None, "Sec-WebSocket-Accept header is missing"),
        (
            "Sec-WebSocket-Accept",
            ("Sec-WebSocket-Accept", "AAAA"),
            f"Sec-WebSocket-Accept header is AAAA, expected {SAMPLE_ACCEPT}",
        ),
    ],
)
def test_validate_response_headers_4_1(
    drop: str, add: tuple[str, str] | None, match: str
) -> None:
    fields = [
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Accept", SAMPLE_ACCEPT),
    ]
    validate_response(Response(101, "", Headers(fields)), SAMPLE_KEY)
    fields = [(n, v) for n, v in fields if n != drop] + ([add] if add else [])
    response = read_response(head("HTTP/1.1 101 Switching Protocols", fields))
    with pytest.raises(InvalidHandshake, match=re.escape(match)):
        validate_response(response, SAMPLE_KEY)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"\x15\x03\x03\x00\x02\x02\x28",  # a TLS alert
    ],
)
def test_malformed_response_raises(data: bytes) -> None:
    with pytest.raises(InvalidHandshake, match="malformed HTTP response"):
        ResponseReader().feed(data)


def test_response_head_too_big_431() -> None:
    reader = ResponseReader(max_head_size=64)
    with pytest.raises(InvalidHandshake, match="64 bytes") as info:
        reader.feed(build_response(SAMPLE_KEY))
    assert info.value.status == 431


def test_round_trip_client_server_client() -> None:
    key = generate_key()
    request_bytes = build_request(
        "example.com",
        "/chat?room=1",
        key,
        subprotocols=["v2", "v1"],
        extensions=format_extension_header(
            [("permessage-deflate", [("client_max_window_bits", None)])]
        ),
    )
    server = RequestReader()
    request = server.feed(request_bytes)
    assert request is not None
    assert (request.path, request.query) == ("/chat", "room=1")
    assert validate_request(request) == key
    offered = parse_subprotocols(request)
    offers = parse_extension_header(
        request.headers.get("Sec-WebSocket-Extensions") or ""
    )
    assert offers == [("permessage-deflate", [("client_max_window_bits", None)])]

    response_bytes = build_response(
        key, subprotocol=offered[0], extensions=format_extension_header(offers)
    )
    client = ResponseReader()
    response = client.feed(response_bytes + b"\x81\x00")
    assert response is not None
    validate_response(response, key)
    assert response.headers.get("Sec-WebSocket-Protocol") == "v2"
    assert client.trailing_data == b"\x81\x00"


# -- property-based ------------------------------------------------------------------


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """``valid`` with a few bytes replaced or inserted."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data)))
            byte = draw(st.integers(0, 255))
            if draw(st.booleans()) and pos < len(data):
                data[pos] = byte
            else:
                data.insert(pos, byte)
        return bytes(data)

    return mutate()


any_bytes = st.one_of(
    st.binary(max_size=300),
    mutated(SAMPLE_REQUEST),
    mutated(build_response(SAMPLE_KEY)),
)


@given(data=st.data(), raw=any_bytes)
def test_random_bytes_to_request_reader_only_raise_invalid_handshake(
    data: st.DataObject, raw: bytes
) -> None:
    reader = RequestReader(max_head_size=256, max_headers=8)
    try:
        for chunk in data.draw(chunked(raw)):
            if (request := reader.feed(chunk)) is not None:
                validate_request(request)
    except InvalidHandshake:
        pass


@given(data=st.data(), raw=any_bytes)
def test_random_bytes_to_response_reader_only_raise_invalid_handshake(
    data: st.DataObject, raw: bytes
) -> None:
    reader = ResponseReader(max_head_size=256, max_headers=8)
    try:
        for chunk in data.draw(chunked(raw)):
            if (response := reader.feed(chunk)) is not None:
                validate_response(response, SAMPLE_KEY)
    except InvalidHandshake:
        pass


tokens = st.from_regex(r"\A[-!#$%&'*+.^_`|~0-9A-Za-z]{1,12}\Z")
field_values = st.from_regex(
    r"\A[\x21-\x7e\x80-\xff]([ \t\x21-\x7e]{0,20}[\x21-\x7e])?\Z"
)


@given(
    data=st.data(),
    host=st.from_regex(r"\A[a-z0-9.-]{1,30}(:[0-9]{1,5})?\Z"),
    resource=st.from_regex(r"\A/[\x21-\x7e]{0,30}\Z"),
    subprotocols=st.lists(tokens, max_size=4),
    extra=st.lists(st.tuples(tokens.map(lambda t: "X-" + t), field_values), max_size=5),
)
def test_built_request_always_parses_and_validates(
    data: st.DataObject,
    host: str,
    resource: str,
    subprotocols: list[str],
    extra: list[tuple[str, str]],
) -> None:
    key = generate_key()
    raw = build_request(
        host, resource, key, subprotocols=subprotocols, extra_headers=extra
    )
    reader = RequestReader()
    request = None
    for chunk in data.draw(chunked(raw + b"tail")):
        request = reader.feed(chunk) or request
    assert request is not None
    assert reader.trailing_data == b"tail"
    assert request.target == resource
    assert request.headers.get("Host") == host
    assert validate_request(request) == key
    assert parse_subprotocols(request) == subprotocols
    for pair in extra:
        assert pair in request.headers.items()


# -- plain HTTP requests with a body, for an API beside the upgrade ---------


def test_request_body_is_read_up_to_max_body_size() -> None:
    reader = RequestReader(max_body_size=100)
    data = (
        b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n"
        b"hello world"
    )
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    request = results[-1]
    assert request is not None
    assert (request.method, request.path, request.body) == (
        "POST",
        "/api/publish",
        b"hello world",
    )


@pytest.mark.parametrize(
    "first",
    [
        b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    ],
)
def test_keep_alive_request_split_anywhere_leaves_the_next_unread(first: bytes) -> None:
    # A request whose bytes end where the data fed ends lets llhttp run to
    # its end; one followed by more stops it: either way the next request
    # (or garbage) is handed over as it arrived, never parsed.
    expected = RequestReader(max_body_size=100).feed(first)
    assert expected is not None
    for after in (b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", b"\x00garbage"):
        data = first + after
        for cut in range(1, len(data) + 1):
            reader = RequestReader(max_body_size=100)
            request = reader.feed(data[:cut])
            request = reader.feed(data[cut:]) or request
            assert request == expected
            assert reader.trailing_data == after


def test_chunked_request_body_is_read() -> None:
    reader = RequestReader(max_body_size=100)
    request = reader.feed(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    assert request is not None and request.body == b"hello world"


def test_request_body_over_the_limit_is_413() -> None:
    reader = RequestReader(max_body_size=10)
    with pytest.raises(InvalidHandshake) as info:
        reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    assert info.value.status == 413
    chunked = RequestReader(max_body_size=10)
    with pytest.raises(InvalidHandshake) as info:
        chunked.feed(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"b\r\nhello world\r\n0\r\n\r\n"
        )
    assert info.value.status == 413


def test_rfc6455_4_1_an_upgrade_request_with_a_body_is_refused() -> None:
    # Even where plain requests may have a body: after an upgrade request's
    # head, what follows belongs to the new protocol.
    key = generate_key()
    head = build_request("h", "/", key).replace(
        b"\r\n\r\n", b"\r\nContent-Length: 2\r\n\r\n"
    )
    with pytest.raises(InvalidHandshake, match="body") as info:
        RequestReader(max_body_size=100).feed(head + b"hi")
    assert info.value.status == 400


def test_feed_inside_an_except_block_still_reads_and_refuses() -> None:
    # uvicorn hands the request over from an except clause, where Python
    # replaces the context httptools gives its error.
    try:
        raise KeyError("outer")
    except KeyError:
        assert RequestReader().feed(SAMPLE_REQUEST) == read_request(SAMPLE_REQUEST)
        with pytest.raises(InvalidHandshake) as info:
            RequestReader(max_headers=2).feed(SAMPLE_REQUEST)
        assert info.value.status == 431
