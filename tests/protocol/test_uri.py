"""Tests of tidings.protocol.uri: RFC 6455 §3 URIs."""

from __future__ import annotations

import pytest

from tidings.exceptions import InvalidURI
from tidings.protocol.uri import WebSocketURI, parse_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("ws://example.com", WebSocketURI(False, "example.com", 80, "/")),
        ("wss://example.com", WebSocketURI(True, "example.com", 443, "/")),
        (
            "ws://example.com:8000/chat?room=1",
            WebSocketURI(False, "example.com", 8000, "/chat?room=1"),
        ),
        ("ws://[::1]:9000/", WebSocketURI(False, "::1", 9000, "/")),
        ("WS://Example.COM/", WebSocketURI(False, "example.com", 80, "/")),
    ],
)
def test_rfc6455_3_parses(uri: str, expected: WebSocketURI) -> None:
    assert parse_uri(uri) == expected


def test_host_header_leaves_out_the_default_port() -> None:
    assert parse_uri("wss://example.com:443/").host_header == "example.com"
    assert parse_uri("ws://example.com:8000/").host_header == "example.com:8000"
    assert parse_uri("ws://[::1]:8000/").host_header == "[::1]:8000"
    assert str(parse_uri("ws://[::1]:8000/x?y")) == "ws://[::1]:8000/x?y"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://example.com/", "scheme must be ws or wss"),
        ("ws:///path", "no host"),
        ("ws://example.com/#frag", "fragment"),
        ("ws://user:pw@example.com/", "user info"),
        ("ws://example.com:99999/", "not a valid URI"),
        ("ws://example.com/a b", "whitespace"),
    ],
)
def test_rfc6455_3_rejects(uri: str, message: str) -> None:
    with pytest.raises(InvalidURI, match=message):
        parse_uri(uri)
