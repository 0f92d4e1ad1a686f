"""The RFC 6455 §4 opening handshake, without I/O.

``httptools`` (llhttp) parses HTTP/1.1 message syntax; this module adds the
WebSocket rules on top. Servers feed bytes to :class:`RequestReader`, check
the result with :func:`validate_request` and answer with
:func:`build_response` or :func:`build_rejection`. Clients send
:func:`build_request`, feed the answer to :class:`ResponseReader` and check
it with :func:`validate_response`.

Header names are decoded as ASCII (llhttp only accepts tokens) and values as
Latin-1, so obs-text bytes (RFC 9110 §5.5) survive as U+0080..U+00FF instead
of failing the handshake; the headers WebSocket needs are all ASCII.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from itertools import chain
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import httptools

from tidings.exceptions import InvalidHandshake, InvalidStatus
from tidings.protocol.limits import MAX_HEAD_SIZE, MAX_HEADERS

__all__ = [
    "GUID",
    "ExtensionOffer",
    "Headers",
    "Request",
    "RequestReader",
    "Response",
    "ResponseReader",
    "accept_key",
    "build_rejection",
    "build_request",
    "build_response",
    "build_stream_head",
    "format_extension_header",
    "generate_key",
    "keeps_alive",
    "parse_extension_header",
    "parse_subprotocols",
    "parse_token_list",
    "validate_request",
    "validate_response",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: ("permessage-deflate", [("client_max_window_bits", None)])
ExtensionOffer = tuple[str, list[tuple[str, str | None]]]

_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_OWS_RE = re.compile(r"[ \t]*")
# Control characters (bar HTAB) would end a header line early or be refused
# by the peer: a CR or LF in a value is header injection.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VCHARS_RE = re.compile(r"[\x21-\x7e]+")
# Between the names and values of packed headers (Headers.pack).
_SEPARATOR = "\x00"


class Headers:
    """Ordered, case-insensitive multi-map of HTTP headers.

    Names are kept as received; lookups ignore case.
    """

    __slots__ = ("_index", "_items", "_packed")
    __hash__ = None  # type: ignore[assignment]  # mutable contents

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        #: The (name, value) pairs; None once packed (see :meth:`pack`).
        self._items: list[tuple[str, str]] | None = list(items)
        self._index: dict[str, list[str]] | None = None
        self._packed = ""

    def pack(self) -> None:
        """Hold the headers in one string, a fraction of the memory, and
        read them from it each time: for a request kept as long as its
        connection and seldom read (``ws.request``)."""
        items = self._items
        if not items:
            return
        packed = _SEPARATOR.join(chain.from_iterable(items))
        # A separator inside a name or value would pair them wrongly: those
        # stay as they are (llhttp lets no control character through).
        if packed.count(_SEPARATOR) == 2 * len(items) - 1:
            self._packed = packed
            self._items = None
            self._index = None

    def _pairs(self) -> list[tuple[str, str]]:
        items = self._items
        if items is not None:
            return items
        fields = self._packed.split(_SEPARATOR)
        return list(zip(fields[::2], fields[1::2], strict=True))

    def _indexed(self) -> dict[str, list[str]]:
        """The values by lowercase name.

        An upgrade or an API call looks up about eight names: they are
        indexed once, on the first. Packed headers keep no index: one is
        made for each look-up, which is rare.
        """
        index = self._index
        if index is None:
            index = {}
            for key, value in self._pairs():
                index.setdefault(key.lower(), []).append(value)
            if self._items is not None:
                self._index = index
        return index

    def _values(self, name: str) -> list[str]:
        # This module's own look-ups use this rather than get_all(), without
        # the copy; they never change the list.
        return (self._index or self._indexed()).get(name.lower(), [])

    def get(self, name: str) -> str | None:
        """All values of ``name`` joined with ", " (RFC 9110 §5.3), or None."""
        values = (self._index or self._indexed()).get(name.lower())
        return None if values is None else ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order received."""
        return list(self._values(name))

    def items(self) -> list[tuple[str, str]]:
        """A copy of the (name, value) pairs, in order received."""
        return list(self._pairs())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in (
            self._index or self._indexed()
        )

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs())

    def __len__(self) -> int:
        return len(self._pairs())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._pairs() == other._pairs()

    def __repr__(self) -> str:
        return f"Headers({self._pairs()!r})"


@dataclass(frozen=True, slots=True)
class Request:
    """The head of an HTTP request."""

    method: str
    target: str
    headers: Headers
    body: bytes = b""
    """The body of a plain HTTP request; an upgrade request has none."""

    def _split(self) -> tuple[str, str]:
        if not self.target.startswith("/"):
            # absolute-form, which RFC 6455 §4.2.1 and RFC 9112 §3.2.2 allow
            parts = urlsplit(self.target)
            return parts.path or "/", parts.query
        path, _, query = self.target.partition("?")
        return path, query

    @property
    def path(self) -> str:
        """The target's path, e.g. "/chat"."""
        return self._split()[0]

    @property
    def query(self) -> str:
        """The target's query, without "?"; "" when there is none."""
        return self._split()[1]


@dataclass(frozen=True, slots=True)
class Response:
    """The head of an HTTP response."""

    status: int
    reason: str
    headers: Headers


def generate_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64-encoded (§4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value answering ``key`` (§4.2.2)."""
    # SHA-1 is only a fixed transform here; usedforsecurity=False keeps it
    # available on FIPS-restricted builds.
    digest = hashlib.sha1((key + GUID).encode("ascii"), usedforsecurity=False)
    return binascii.b2a_base64(digest.digest(), newline=False).decode("ascii")


def parse_token_list(value: str) -> list[str]:
    """Split a comma-separated header value, dropping empty elements.

    Elements are stripped of whitespace but not checked to be tokens:
    ``Upgrade`` elements may carry a version such as "HTTP/2.0".
    """
    return [e for e in (p.strip(" \t") for p in value.split(",")) if e]


def parse_extension_header(value: str) -> list[ExtensionOffer]:
    """Parse a Sec-WebSocket-Extensions value (RFC 6455 §9.1).

    Parameter values may be quoted strings (RFC 7692 §7.1); once unquoted
    they must still be tokens. Empty list elements are ignored.
    """
    offers: list[ExtensionOffer] = []
    pos = _skip_ows(value, 0)
    while pos < len(value):
        if value[pos] == ",":
            pos = _skip_ows(value, pos + 1)
            continue
        name, pos = _expect_token(value, pos, "an extension name")
        params: list[tuple[str, str | None]] = []
        pos = _skip_ows(value, pos)
        while pos < len(value) and value[pos] == ";":
            pos = _skip_ows(value, pos + 1)
            param, pos = _expect_token(value, pos, "a parameter name")
            pos = _skip_ows(value, pos)
            arg: str | None = None
            if pos < len(value) and value[pos] == "=":
                arg, pos = _expect_value(value, _skip_ows(value, pos + 1))
                pos = _skip_ows(value, pos)
            params.append((param, arg))
        offers.append((name, params))
        if pos < len(value) and value[pos] != ",":
            raise _extension_error(value, pos, "expected ',' or ';'")
    return offers


def _skip_ows(value: str, pos: int) -> int:
    match = _OWS_RE.match(value, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _expect_token(value: str, pos: int, what: str) -> tuple[str, int]:
    match = _TOKEN_RE.match(value, pos)
    if match is None:
        raise _extension_error(value, pos, f"expected {what}")
    return match.group(), match.end()


def _expect_value(value: str, pos: int) -> tuple[str, int]:
    if match := _QUOTED_RE.match(value, pos):
        arg = re.sub(r"\\(.)", r"\1", match.group(1), flags=re.DOTALL)
        if not _TOKEN_RE.fullmatch(arg):
            # §9.1: the unescaped quoted-string must conform to token
            raise _extension_error(value, pos, "quoted value is not a token")
        return arg, match.end()
    return _expect_token(value, pos, "a parameter value")


def _extension_error(value: str, pos: int, why: str) -> InvalidHandshake:
    return InvalidHandshake(
        f"invalid Sec-WebSocket-Extensions header {value!r}: {why} at position {pos}"
    )


def format_extension_header(offers: Sequence[ExtensionOffer]) -> str:
    """Format offers or agreements for Sec-WebSocket-Extensions.

    Raises ValueError if a name or value is not a token.
    """
    elements = []
    for name, params in offers:
        parts = [_check_token(name, "extension name")]
        for param, arg in params:
            _check_token(param, "extension parameter name")
            if arg is None:
                parts.append(param)
            else:
                parts.append(f"{param}={_check_token(arg, 'extension value')}")
        elements.append("; ".join(parts))
    return ", ".join(elements)


def _check_token(value: str, what: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not an HTTP token")
    return value


def parse_subprotocols(request: Request) -> list[str]:
    """The subprotocols the client offers, in order (§4.1, §11.3.4)."""
    offered = []
    for value in request.headers._values("Sec-WebSocket-Protocol"):
        for name in parse_token_list(value):
            if not _TOKEN_RE.fullmatch(name):
                raise InvalidHandshake(
                    f"invalid Sec-WebSocket-Protocol header: {name!r} is not a token"
                )
            offered.append(name)
    return offered


class _Done(Exception):
    """Raised from a parser callback: the message wanted is complete."""


_Head = TypeVar("_Head", Request, Response)
_Parser = TypeVar("_Parser", httptools.HttpRequestParser, httptools.HttpResponseParser)


class _HeadReader(Generic[_Head, _Parser]):
    """Feeds bytes to llhttp (httptools) until one message head has arrived.

    llhttp calls back with the parts of the message. The callbacks stop it,
    by raising :class:`_Done`, as soon as the message wanted is complete
    (after the head of an upgrade request it stops by itself), so it never
    parses what follows: frames after an upgrade, a pipelined request, a
    response body. Where nothing follows in the bytes fed, a request's
    callbacks need not stop it (an exception costs more than the return).
    The bytes of the head are kept (the head size limit bounds them) to say
    where it ended.

    llhttp holds bound methods of the reader, and the reader holds llhttp:
    once the head is in or refused, the reader lets go of llhttp, so that
    both are freed without waiting for the garbage collector.
    """

    _http: _Parser | None

    __slots__ = (
        "_buffer",
        "_error",
        "_fields",
        "_head",
        "_http",
        "_kind",
        "_max_head_size",
        "_max_headers",
        "_refusal",
        "_start",
        "_trailing",
    )

    def __init__(self, kind: str, max_head_size: int, max_headers: int) -> None:
        self._kind = kind
        self._max_head_size = max_head_size
        self._max_headers = max_headers
        self._buffer = bytearray()
        #: Where the message being read began in _buffer (after 1xx heads).
        self._start = 0
        self._fields: list[tuple[str, str]] = []
        self._head: _Head | None = None
        self._error: InvalidHandshake | None = None
        #: What a callback refused the message with.
        self._refusal: InvalidHandshake | None = None
        self._trailing = b""

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the head (empty until the head is complete),
        or after a request's body: the next request's, on a connection kept
        alive. A chunked body's connection is closed once answered, so
        nothing after it is kept.
        """
        return self._trailing

    def feed(self, data: bytes) -> _Head | None:
        """Add received bytes; return the head once complete, else None.

        Raises InvalidHandshake for a malformed or oversized head, again on
        every later call. Bytes fed after the head go to ``trailing_data``.
        """
        if self._error is not None:
            raise self._error
        if self._head is not None:
            self._trailing += data
            return self._head
        if not data:
            return None
        if self._reading_head():
            self._buffer += data
        http = self._http
        assert http is not None  # until the head is in or refused
        try:
            http.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # llhttp stopped after the head of an upgrade request
        except httptools.HttpParserCallbackError as exc:
            # A callback raised: _Done once the head is in, or a refusal.
            if self._refusal is not None:
                self._error = self._refusal
            elif self._head is None:
                self._error = self._malformed(exc)
        except httptools.HttpParserError as exc:
            self._error = self._malformed(exc)
        else:
            if self._reading_head() and len(self._buffer) > self._max_head_size:
                self._error = self._too_big()
        if self._head is not None or self._error is not None:
            self._http = None
        if self._error is not None:
            raise self._error
        return self._head

    def _reading_head(self) -> bool:
        """Whether the bytes arriving still belong to the head."""
        return self._head is None

    def _malformed(self, exc: Exception) -> InvalidHandshake:
        return InvalidHandshake(f"malformed HTTP {self._kind}: {exc}")

    def _refuse(self, exc: InvalidHandshake) -> InvalidHandshake:
        """Keep ``exc``, which a callback raises, for feed() to raise.

        httptools raises its own error instead, with ours as its context;
        but where feed() runs inside an ``except`` block (uvicorn hands the
        request over from one), Python replaces that context.
        """
        self._refusal = exc
        return exc

    # -- llhttp's callbacks (httptools calls them by these names) --------

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header line of the head."""
        fields = self._fields
        if len(fields) >= self._max_headers:
            raise self._refuse(
                InvalidHandshake(
                    f"HTTP {self._kind} has more than {self._max_headers} headers",
                    status=431,
                )
            )
        # llhttp has checked that the name is a token and the value has no
        # control characters; it drops the value's leading whitespace only.
        fields.append((name.decode("ascii"), value.rstrip(b" \t").decode("latin-1")))

    def _head_end(self) -> int:
        """Where the head just completed ends in _buffer, within the limit."""
        buffer = self._buffer
        start = self._start
        # RFC 9112 §2.2: empty lines before a message are ignored (llhttp
        # skips them too), and every line of a head ends in CRLF.
        while buffer[start] in b"\r\n":
            start += 1
        end = buffer.index(b"\r\n\r\n", start) + 4
        if end > self._max_head_size:
            raise self._refuse(self._too_big())
        return end

    def _too_big(self) -> InvalidHandshake:
        return InvalidHandshake(
            f"HTTP {self._kind} head is larger than {self._max_head_size} bytes",
            status=431,
        )


class RequestReader(_HeadReader[Request, httptools.HttpRequestParser]):
    """Server side: feed bytes until one complete request arrives.

    A body is read only up to ``max_body_size`` bytes (413 beyond it); with
    the default of 0, a request with a body is refused with 400, since an
    upgrade request never has one. An upgrade request with a body is
    refused whatever ``max_body_size`` says.
    """

    __slots__ = ("_body", "_body_end", "_max_body_size", "_pending", "_seen", "_url")

    def __init__(
        self,
        *,
        max_head_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
        max_body_size: int = 0,
    ) -> None:
        super().__init__("request", max_head_size, max_headers)
        self._http = httptools.HttpRequestParser(self)
        self._max_body_size = max_body_size
        self._url = b""
        #: A request whose body is still arriving.
        self._pending: tuple[str, str, Headers] | None = None
        self._body = bytearray()
        #: Bytes fed so far, and where a Content-Length body ends among
        #: them: what comes after it is the next request's.
        self._seen = 0
        self._body_end: int | None = None

    def feed(self, data: bytes) -> Request | None:
        """As :meth:`_HeadReader.feed`, the head with its body."""
        self._seen += len(data)
        request = super().feed(data)
        body_end = self._body_end
        if request is not None and body_end is not None:
            self._body_end = None
            after = self._seen - body_end
            self._trailing = data[len(data) - after :] if after > 0 else b""
        return request

    def _reading_head(self) -> bool:
        return self._head is None and self._pending is None

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self._url += url

    def on_headers_complete(self) -> None:
        """The head is complete: a request, or the wait for its body."""
        head_end = self._head_end()
        http = self._http
        assert http is not None  # llhttp is calling
        version = http.get_http_version()
        if version < "1.1":
            # §4.1: "The method of the request MUST be GET, and the HTTP
            # version MUST be at least 1.1."
            raise self._refuse(
                InvalidHandshake(
                    f"WebSocket upgrade requires HTTP/1.1 or later, got HTTP/{version}"
                )
            )
        headers = Headers(self._fields)
        if len(headers._values("Host")) != 1:
            # RFC 9112 §3.2
            raise self._refuse(
                self._malformed(ValueError("exactly one Host header is required"))
            )
        try:
            target = self._url.decode("ascii")
        except UnicodeDecodeError:
            raise self._refuse(
                self._malformed(ValueError("the target is not ASCII"))
            ) from None
        method = http.get_method().decode("ascii")
        upgrade = http.should_upgrade()
        # llhttp has checked that Content-Length is digits (and checks
        # Transfer-Encoding once this returns).
        chunked = "Transfer-Encoding" in headers
        length = int(headers.get("Content-Length") or "0")
        if not self._has_body(chunked, length, upgrade):
            self._head = Request(method, target, headers)
            self._trailing = bytes(self._buffer[head_end:])
            if upgrade:
                # llhttp stops by itself after an upgrade request's head,
                # with one exception of its own: cheaper than raising ours.
                return
            if self._trailing:
                raise _Done
            return
        # The request is made once its body is in.
        self._pending = (method, target, headers)
        if not chunked:
            self._body_end = head_end + length

    def on_body(self, body: bytes) -> None:
        """A piece of the body, once decoded from chunks."""
        self._body += body
        if len(self._body) > self._max_body_size:
            raise self._refuse(self._body_too_big())

    def on_message_complete(self) -> None:
        """The body is complete."""
        pending = self._pending
        if pending is not None:
            self._head = Request(*pending, bytes(self._body))
            # What follows a chunked body is never read (see trailing_data).
            if self._body_end != self._seen:
                raise _Done

    def _has_body(self, chunked: bool, length: int, upgrade: bool) -> bool:
        if not chunked and length == 0:
            return False
        if self._max_body_size == 0 or upgrade:
            # After an upgrade request's head, llhttp hands what follows to
            # the new protocol: it would not read the body.
            raise self._refuse(
                InvalidHandshake(
                    "WebSocket upgrade request must not have a body "
                    "(Content-Length or Transfer-Encoding header)"
                )
            )
        if length > self._max_body_size:
            raise self._refuse(self._body_too_big())
        return True

    def _body_too_big(self) -> InvalidHandshake:
        return InvalidHandshake(
            f"request body is larger than {self._max_body_size} bytes", status=413
        )


class ResponseReader(_HeadReader[Response, httptools.HttpResponseParser]):
    """Client side: feed bytes until the response head arrives.

    Interim 1xx responses other than 101 are skipped (RFC 9110 §15.2);
    ``max_head_size`` bounds all heads read together.
    """

    __slots__ = ("_reason",)

    def __init__(
        self, *, max_head_size: int = MAX_HEAD_SIZE, max_headers: int = MAX_HEADERS
    ) -> None:
        super().__init__("response", max_head_size, max_headers)
        self._http = httptools.HttpResponseParser(self)
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        """A piece of the reason phrase."""
        self._reason += reason

    def on_headers_complete(self) -> None:
        """A head is complete: skip it if interim, else the response."""
        head_end = self._head_end()
        http = self._http
        assert http is not None  # llhttp is calling
        status = http.get_status_code()
        if status < 200 and status != 101:
            self._start = head_end
            self._fields = []
            self._reason = b""
            return
        headers = Headers(self._fields)
        self._head = Response(status, self._reason.decode("latin-1"), headers)
        self._trailing = bytes(self._buffer[head_end:])
        raise _Done


def _has_token(headers: Headers, name: str, token: str) -> bool:
    value = headers.get(name)
    # parse_token_list() inlined, and the value lowered once: this runs
    # twice for every connection a server accepts.
    return value is not None and token in [
        e.strip(" \t") for e in value.lower().split(",")
    ]


def keeps_alive(request: Request) -> bool:
    """Whether the connection may carry another request after the answer
    to ``request`` (RFC 9112 §9.3: HTTP/1.1 persists unless either side
    says ``Connection: close``): not after one that asked to upgrade,
    whose client may send frames next, nor after a chunked body."""
    headers = request.headers
    return (
        "Upgrade" not in headers
        # What follows a chunked body is not kept (RequestReader).
        and "Transfer-Encoding" not in headers
        and not _has_token(headers, "Connection", "close")
    )


def _require_token(
    headers: Headers,
    name: str,
    token: str,
    status: int = 400,
    extra: Sequence[tuple[str, str]] = (),
) -> None:
    """Raise unless the comma list in header ``name`` holds ``token``."""
    if not _has_token(headers, name, token):
        value = headers.get(name)
        why = "missing" if value is None else f"{value!r}"
        raise InvalidHandshake(
            f"{name} header is {why}; a WebSocket handshake needs {token!r} there",
            status=status,
            headers=extra,
        )


def validate_request(request: Request) -> str:
    """Check a client's opening handshake (§4.2.1); return its key.

    Raises InvalidHandshake whose ``status`` and ``headers`` make the
    rejection: 405 with Allow for a method other than GET, 426 with Upgrade
    for a request not asking for WebSocket, 426 with Sec-WebSocket-Version
    for a missing or unsupported version (§4.2.2), 400 otherwise.
    """
    headers = request.headers
    if request.body:
        raise InvalidHandshake("WebSocket upgrade request must not have a body")
    if request.method != "GET":
        raise InvalidHandshake(
            f"WebSocket upgrade requires the GET method, got {request.method}",
            status=405,
            headers=[("Allow", "GET")],
        )
    if len(headers._values("Host")) != 1:
        raise InvalidHandshake("request must have exactly one Host header")
    # RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    _require_token(headers, "Upgrade", "websocket", 426, upgrade)
    _require_token(headers, "Connection", "upgrade")
    keys = headers._values("Sec-WebSocket-Key")
    if len(keys) != 1:
        raise InvalidHandshake(
            f"request must have exactly one Sec-WebSocket-Key header, has {len(keys)}"
        )
    key = keys[0]
    try:
        raw = binascii.a2b_base64(key.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII str
        raw = b""
    if len(raw) != 16:
        raise InvalidHandshake(
            f"Sec-WebSocket-Key header {key!r} is not base64 of 16 bytes"
        )
    versions = headers._values("Sec-WebSocket-Version")
    if versions != ["13"]:
        raise InvalidHandshake(
            f"Sec-WebSocket-Version header is {', '.join(versions) or 'missing'}; "
            "only version 13 is supported",
            status=426,
            headers=[*upgrade, ("Sec-WebSocket-Version", "13")],
        )
    return key


def validate_response(response: Response, key: str, body: bytes = b"") -> None:
    """Check the server's answer to our handshake with ``key`` (§4.1).

    Raises InvalidStatus, carrying ``body`` (what arrived of the response's
    body), if the status is not 101; InvalidHandshake if a header is wrong.
    """
    headers = response.headers
    if response.status != 101:
        raise InvalidStatus(response.status, headers.items(), body)
    _require_token(headers, "Upgrade", "websocket")
    _require_token(headers, "Connection", "upgrade")
    accepts = headers._values("Sec-WebSocket-Accept")
    expected = accept_key(key)
    if accepts != [expected]:
        got = ", ".join(accepts) or "missing"
        raise InvalidHandshake(
            f"Sec-WebSocket-Accept header is {got}, expected {expected}"
        )


def _encode_head(start: str, fields: Iterable[tuple[str, str]]) -> bytes:
    """Serialize an HTTP head, refusing anything in ``fields`` that could
    inject headers; ``start`` is the start line (and lines of our own)."""
    lines = [start]
    for name, value in fields:
        _check_token(name, "header name")
        if _CONTROL_RE.search(value):
            raise ValueError(
                f"header {name} has a control character (CR, LF, NUL...) "
                f"in its value {value!r}"
            )
        lines.append(f"{name}: {value}")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"header value is not Latin-1: {exc}") from None


def build_request(
    host: str,
    resource: str,
    key: str,
    *,
    origin: str | None = None,
    subprotocols: Sequence[str] = (),
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The client's opening handshake (§4.1).

    ``host`` is the Host header value, port included when not the default.
    Raises ValueError for a value that is not a valid header part.
    """
    if not _VCHARS_RE.fullmatch(resource):
        raise ValueError(
            f"resource {resource!r} must be printable ASCII without spaces"
        )
    fields = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if origin is not None:
        fields.append(("Origin", origin))
    if subprotocols:
        for name in subprotocols:
            _check_token(name, "subprotocol")
        fields.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    if extensions is not None:
        fields.append(("Sec-WebSocket-Extensions", extensions))
    fields.extend(extra_headers)
    return _encode_head(f"GET {resource} HTTP/1.1", fields)


def build_response(
    key: str,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The server's 101 answer to a request with ``key`` (§4.2.2)."""
    # These lines are constants and base64: only the fields after them need
    # checking.
    start = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}"
    )
    fields = []
    if subprotocol is not None:
        fields.append(
            ("Sec-WebSocket-Protocol", _check_token(subprotocol, "subprotocol"))
        )
    if extensions is not None:
        fields.append(("Sec-WebSocket-Extensions", extensions))
    fields.extend(extra_headers)
    return _encode_head(start, fields)


def build_rejection(
    status: int,
    message: str | bytes,
    headers: Iterable[tuple[str, str]] = (),
    *,
    close: bool = True,
) -> bytes:
    """A complete HTTP/1.1 response, after which the connection closes
    (or, with ``close`` false, may carry the client's next request).

    A ``str`` message becomes a ``text/plain`` body; ``bytes`` are sent as
    they are, with the Content-Type found among ``headers``. A Connection
    header among ``headers`` (as a 426 needs) is merged into the "close" one
    rather than repeated.
    """
    # The status line and the body's type and length are ours: only the
    # fields after them need checking.
    start = f"HTTP/1.1 {status} {_reason(status)}"
    if isinstance(message, str):
        body = (message + "\n").encode()
        start += "\r\nContent-Type: text/plain; charset=utf-8"
    else:
        body = message
    start += f"\r\nContent-Length: {len(body)}"
    connection = ["close"] if close else []
    fields = []
    for name, value in headers:
        if name.lower() == "connection":
            connection.append(value)
        else:
            fields.append((name, value))
    if connection:
        fields.insert(0, ("Connection", ", ".join(connection)))
    return _encode_head(start, fields) + body


def build_stream_head(status: int, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The head of a response whose body follows as it is made.

    Without Content-Length or a chunked coding, the body ends when the
    connection closes (RFC 9112 §6.3), which ``Connection: close`` says.
    """
    return _encode_head(
        f"HTTP/1.1 {status} {_reason(status)}", [*headers, ("Connection", "close")]
    )


#: Looked up here rather than through HTTPStatus(status), an enum call per
#: response.
_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _reason(status: int) -> str:
    # RFC 9112 §4: the reason phrase may be empty
    return _REASONS.get(status, "")
