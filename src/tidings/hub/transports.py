"""The hub's fallbacks for networks where WebSocket is blocked: Server-Sent
Events (``GET /sse``), long-polling (``GET /poll``) and commands over plain
POST (``POST /command``).

Each is a :class:`~tidings.hub.session.Session` like a WebSocket client's,
fed commands the request implies and answering through an outlet of its own,
so channels, permissions, recovery and errors are the WebSocket's. Every
request carries the positions and the token it needs: any node of a hub
serves any of them, with no sticky sessions (docs/protocol.md, "Fallback
transports").
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ..engine.http import HTTPResponse, HTTPStream, ResponseStream
from ..exceptions import ConnectionClosed
from ..protocol import Request
from .auth import AuthError, can_subscribe, hook_decides, seconds_left
from .brokers.base import BrokerUnavailable, HistoryResult
from .keys import KeysUnavailable
from .session import CLOSE_TRY_AGAIN, Session
from .wire import (
    Command,
    CommandError,
    announced_position,
    channel_problem,
    dumps,
    encode_error,
    encode_position,
    parse_command,
    pub_position,
    reply_position,
    valid_channel,
)

if TYPE_CHECKING:
    from .app import Hub

__all__ = ["COMMAND_PATH", "POLL_PATH", "SSE_PATH", "EventStream", "handle_fallback"]

SSE_PATH = "/sse"
POLL_PATH = "/poll"
COMMAND_PATH = "/command"

#: The browser waits this long before it reopens a stream that ended.
SSE_RETRY_MS = 2000

#: Seconds a browser may keep a preflight's answer (Chromium keeps none
#: longer than 7200).
CORS_MAX_AGE = 7200

_JSON = [("Content-Type", "application/json")]
_EVENT_STREAM = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    # nginx would otherwise buffer the stream (docs/scaling.md).
    ("X-Accel-Buffering", "no"),
]
_POSITION = re.compile(r"(\d{1,16}):([A-Za-z0-9_\-]{1,64})")
#: An origin as a browser serializes it (RFC 6454 §6.1): no other Origin
#: is echoed back.
_ORIGIN = re.compile(
    r"https?://(?:[A-Za-z0-9\-.]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?"
)
#: The method of each path, which a preflight grants.
_METHODS = {SSE_PATH: "GET", POLL_PATH: "GET", COMMAND_PATH: "POST"}
#: What a page may send beside the safelisted headers: the token, a POST's
#: JSON, and the position a browser's EventSource sends back.
_REQUEST_HEADERS = "Authorization, Content-Type, Last-Event-ID"
_SESSION = re.compile(r"[A-Za-z0-9_\-]{16,64}")
_UNSUBSCRIBED = re.compile(r'\{"channel":"([^"\\]*)","unsubscribe":')
_CONNECT_ID = 1  # the commands a fallback request implies: connect first,


def _subscribe_id(index: int) -> int:  # then one subscribe per channel
    return index + 2


class _Refusal(Exception):
    """A request refused before any session: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def handle_fallback(hub: Hub, request: Request) -> HTTPResponse | HTTPStream:
    """Answer a request to one of the fallback paths.

    The caller (hub/api.py) has refused pages of origins that may not use
    the hub, as for its WebSocket: a page that gets here may read the
    answer from another origin (CORS), and send its cookies, as with the
    WebSocket.
    """
    if request.method == "OPTIONS":
        return _preflight(request)
    answer = await _answer(hub, request)
    return dataclasses.replace(answer, headers=[*answer.headers, *_cors(request)])


async def _answer(hub: Hub, request: Request) -> HTTPResponse | HTTPStream:
    try:
        if request.path == SSE_PATH:
            return await _open_stream(hub, request)
        if request.path == POLL_PATH:
            return await _poll(hub, request)
        return await _command(hub, request)
    except _Refusal as exc:
        hub.metrics.errors[f"fallback_{exc.status}"] += 1
        return _error(exc.status, exc.message)
    except BrokerUnavailable as exc:
        hub.metrics.errors["broker_unavailable"] += 1
        return _error(503, str(exc))
    except KeysUnavailable as exc:  # the token's, before any session
        hub.metrics.errors["keys_unavailable"] += 1
        return _error(503, str(exc))


def _error(status: int, message: str) -> HTTPResponse:
    return HTTPResponse(status, encode_error(None, status, message).encode(), _JSON)


def _page_origin(request: Request) -> str | None:
    """The origin of the page that sent ``request``, if a browser's."""
    origin = request.headers.get("Origin")
    return origin if origin is not None and _ORIGIN.fullmatch(origin) else None


def _cors(request: Request) -> list[tuple[str, str]]:
    """The CORS headers that let the page that sent ``request`` read the
    answer, its cookies sent along; caches keep answers apart by Origin.

    With credentials: the page's origin may open the WebSocket, which the
    browser opens with the user's cookies anyway, and a connect hook knows
    the user by them on every transport alike."""
    origin = _page_origin(request)
    if origin is None:
        return [("Vary", "Origin")]
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    ]


def _preflight(request: Request) -> HTTPResponse:
    """The answer to ``OPTIONS``: the path's method, and what a page may
    send with it (a CORS preflight)."""
    method = _METHODS[request.path]
    headers = [("Allow", f"{method}, OPTIONS"), *_cors(request)]
    if _page_origin(request) is not None:
        headers += [
            ("Access-Control-Allow-Methods", method),
            ("Access-Control-Allow-Headers", _REQUEST_HEADERS),
            ("Access-Control-Max-Age", str(CORS_MAX_AGE)),
        ]
    # Not 204: every answer here carries a Content-Length, which a 204 must
    # not (RFC 9110 §8.6).
    return HTTPResponse(200, b"", headers)


# -- what every fallback request carries ------------------------------------


def _params(hub: Hub, request: Request) -> dict[str, list[str]]:
    if request.method != "GET" and request.path != COMMAND_PATH:
        raise _Refusal(405, f"use GET for {request.path}")
    try:
        return parse_qs(
            request.query,
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=3 * hub.config.max_subscriptions + 8,
        )
    except ValueError:
        raise _Refusal(400, "too many query parameters") from None


def _token(request: Request, params: dict[str, list[str]]) -> str | None:
    """The token of ``Authorization: Bearer``, else of ``token=``."""
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    tokens = params.get("token")
    return tokens[0] if tokens else None


async def _channels(
    hub: Hub,
    params: dict[str, list[str]],
    token: str | None,
    channel_tokens: Sequence[str | None],
) -> list[str]:
    """The channels asked for (perhaps none), once each, checked as a
    subscribe would be, so that a refusal is an HTTP status rather than a
    stream that fails. A channel with a channel token is left to its
    subscribe: on a stream, a token that expired while the browser was
    away then fails that channel alone."""
    if hub.full():
        raise _Refusal(503, "server is full, try again later")
    channels = params.get("channel", [])
    most = hub.config.max_subscriptions
    if len(channels) > most:
        raise _Refusal(429, f"too many channels on one connection ({most})")
    if len(set(channels)) != len(channels):
        raise _Refusal(400, "a channel is named twice")
    identity = None
    if token is not None:
        try:
            identity = await hub.tokens.identity(token)
        except AuthError as exc:
            raise _Refusal(401, str(exc)) from None
    for channel, channel_token in zip(channels, channel_tokens, strict=True):
        problem = channel_problem(channel)
        if problem is not None:
            raise _Refusal(400, problem)
        namespace = hub.config.namespace(channel)
        if namespace is None:
            raise _Refusal(404, f"unknown namespace in {channel}")
        # Where the application decides, its answer comes in the stream.
        if (
            channel_token is None
            and not hook_decides(namespace, channel)
            and not can_subscribe(identity, namespace, channel)
        ):
            raise _Refusal(403, f"not allowed to subscribe to {channel}")
    return channels


def _channel_tokens(params: dict[str, list[str]]) -> list[str | None]:
    """Each channel's channel token: ``channel_token=JWT`` once per channel,
    in the channels' order (empty for a channel without one), or none."""
    tokens = params.get("channel_token", [])
    if tokens and len(tokens) != len(params.get("channel", [])):
        raise _Refusal(400, "give one channel_token per channel, in order")
    return [token or None for token in tokens] or [None] * len(
        params.get("channel", [])
    )


def _client(params: dict[str, list[str]]) -> str | None:
    """The client id of ``session=SECRET``: a fallback client's requests,
    to any node, act as one client (its publications' ``info``, the stream
    an unsubscribe names). Derived from a secret that only the client
    knows, so that the id, public in presence and publications, cannot be
    used to act as it."""
    values = params.get("session")
    if not values:
        return None
    if _SESSION.fullmatch(values[0]) is None:
        raise _Refusal(400, "session must be 16 to 64 of A-Z a-z 0-9 _ -")
    return hashlib.sha256(values[0].encode()).hexdigest()[:12]


def _positions(
    request: Request, params: dict[str, list[str]], count: int
) -> list[tuple[int, str] | None]:
    """Where each channel's client stands: ``Last-Event-ID`` (a stream the
    browser reopens), else ``since=OFFSET&epoch=EPOCH`` per channel, in the
    channels' order (an empty ``since`` for a channel with none)."""
    last = request.headers.get("Last-Event-ID")
    if last is not None:
        head = last.partition(";")[0]  # then the server-side subscriptions'
        parts = head.split(",") if head or count else []
        if len(parts) != count:
            raise _Refusal(400, "Last-Event-ID does not match the channels")
        return [_position(part, "Last-Event-ID") for part in parts]
    offsets, epochs = params.get("since", []), params.get("epoch", [])
    if not offsets and not epochs:
        return [None] * count
    if len(offsets) != count or len(epochs) != count:
        raise _Refusal(400, "give one since and one epoch per channel, in order")
    return [
        _position(f"{offset}:{epoch}" if offset else "", "since and epoch")
        for offset, epoch in zip(offsets, epochs, strict=True)
    ]


def _server_side(
    hub: Hub, request: Request, params: dict[str, list[str]]
) -> dict[str, tuple[int, str]]:
    """Where the client's server-side subscriptions stand, which the
    stream's connect recovers: the ``CHANNEL=OFFSET:EPOCH`` entries of
    ``Last-Event-ID`` after its channels' positions (each after a ``;``),
    else those of ``sub=``, one per channel."""
    last = request.headers.get("Last-Event-ID")
    if last is not None:
        entries, where = last.split(";")[1:], "Last-Event-ID"
    else:
        entries, where = params.get("sub", []), "sub"
    most = hub.config.max_subscriptions
    if len(entries) > most:
        raise _Refusal(400, f"{where}: more than {most} server-side subscriptions")
    subs = {}
    for entry in entries:
        channel, _, text = entry.rpartition("=")
        position = _position(text, where) if valid_channel(channel) else None
        if position is None:
            raise _Refusal(400, f"{where}: a server-side one is CHANNEL=OFFSET:EPOCH")
        subs[channel] = position
    return subs


def _position(text: str, where: str) -> tuple[int, str] | None:
    if not text:
        return None
    match = _POSITION.fullmatch(text)
    if match is None:
        raise _Refusal(400, f"{where}: a position is OFFSET:EPOCH")
    return int(match[1]), match[2]


def _connect(token: str | None, subs: dict[str, tuple[int, str]] | None = None) -> str:
    command: dict[str, Any] = {"id": _CONNECT_ID, "op": "connect"}
    if token is not None:
        command["token"] = token
    if subs:
        command["subs"] = {
            channel: {"offset": offset, "epoch": epoch}
            for channel, (offset, epoch) in subs.items()
        }
    return dumps(command)


def _subscribe(
    index: int, channel: str, since: tuple[int, str] | None, token: str | None
) -> str:
    command: dict[str, Any] = {
        "id": _subscribe_id(index),
        "op": "subscribe",
        "channel": channel,
    }
    if since is not None:
        command["since"] = {"offset": since[0], "epoch": since[1]}
    if token is not None:
        command["token"] = token
    return dumps(command)


# -- Server-Sent Events -------------------------------------------------------


class EventStream:
    """A session's outlet on a Server-Sent Events stream.

    Every reply and push is one event whose ``data`` is its JSON, as a
    WebSocket message would carry it. Publications and subscribe replies
    also set the event ``id``: every channel's position, ``OFFSET:EPOCH``
    in the order the request named the channels, so that the browser's
    ``Last-Event-ID`` recovers exactly what a dropped stream missed. A
    channel's position is the request's until a reply or a publication
    supersedes it: one whose subscribe failed, or had no reply yet, keeps
    it, else the reopened stream would skip what it missed. Then, after a
    ``;`` each, ``CHANNEL=OFFSET:EPOCH`` of every server-side subscription
    announced on the stream (``subscribe`` pushes), until the hub ends it,
    so that the reopened stream's connect recovers those too. The hub's
    ``close`` becomes an event named ``close``.
    """

    __slots__ = (
        "_channels",
        "_closed",
        "_named",
        "_positions",
        "_stream",
        "remote_address",
        "request",
    )

    def __init__(
        self,
        stream: ResponseStream,
        request: Request,
        channels: Sequence[str],
        positions: Sequence[tuple[int, str] | None],
    ) -> None:
        self._stream = stream
        self.request = request
        self.remote_address = stream.remote_address
        self._channels = channels
        self._named = frozenset(channels)
        self._positions = {
            channel: f"{position[0]}:{position[1]}"
            for channel, position in zip(channels, positions, strict=True)
            if position is not None
        }
        self._closed = asyncio.Event()
        stream.write(f"retry: {SSE_RETRY_MS}\n\n".encode())

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued to the client and not yet sent."""
        return self._stream.write_buffer_size

    def send_nowait(self, message: str) -> None:
        """Write ``message`` as one event."""
        if self._closed.is_set():
            raise ConnectionClosed(1006, "the event stream has ended")
        channel = None
        if (pub := pub_position(message)) is not None:
            channel, offset, epoch = pub
        elif (reply := reply_position(message)) is not None:
            id, offset, epoch = reply
            index = id - _subscribe_id(0)
            if 0 <= index < len(self._channels):
                channel = self._channels[index]
        elif (announced := announced_position(message)) is not None:
            channel, offset, epoch = announced
        elif (ended := _UNSUBSCRIBED.match(message)) and ended[1] not in self._named:
            self._positions.pop(ended[1], None)  # the hub ended a server-side one
        head = ""
        if channel is not None:
            self._positions[channel] = f"{offset}:{epoch}"
            head = f"id: {self._id()}\n"
        # JSON as the hub encodes it has no line breaks: one data line.
        self._stream.write(f"{head}data: {message}\n\n".encode())

    def _id(self) -> str:
        """Every channel's position, as the event ``id`` carries them."""
        positions = self._positions
        ids = ",".join(positions.get(c, "") for c in self._channels)
        subs = "".join(
            f";{c}={p}" for c, p in positions.items() if c not in self._named
        )
        return ids + subs

    def heartbeat(self) -> None:
        """A comment line: proxies see traffic, and a write to a client
        that is gone fails, which ends the stream."""
        self._stream.write(b":\n\n")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """End the stream with the hub's close code and reason."""
        self.drop(code, reason)

    def drop(self, code: int = 1011, reason: str = "") -> None:
        """End the stream now."""
        if not self._closed.is_set():
            body = dumps({"code": code, "reason": reason})
            self._stream.write(f"event: close\ndata: {body}\n\n".encode())
            self._stream.close()
            self._closed.set()

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the end; return whether it came."""
        try:
            async with asyncio.timeout(timeout):
                await self._closed.wait()
        except TimeoutError:
            return False
        return True


async def _open_stream(hub: Hub, request: Request) -> HTTPStream:
    params = _params(hub, request)
    token = _token(request, params)
    channel_tokens = _channel_tokens(params)
    channels = await _channels(hub, params, token, channel_tokens)
    positions = _positions(request, params, len(channels))
    connect = _connect(token, _server_side(hub, request, params))
    client = _client(params)

    async def body(stream: ResponseStream) -> None:
        outlet = EventStream(stream, request, channels, positions)
        session = Session(hub, outlet, client=client, transport="sse")

        async def commands() -> AsyncIterator[str]:
            yield connect
            for index, channel in enumerate(channels):
                yield _subscribe(
                    index, channel, positions[index], channel_tokens[index]
                )
            if channels and not session.subscriptions:
                # Heartbeats would hold open, for good, a stream that carries
                # nothing. The browser reopens it after `retry:`, with the
                # positions it came with.
                session.close(CLOSE_TRY_AGAIN, "no channel could be subscribed")
                return
            while not await outlet.wait_closed(hub.config.sse_heartbeat):
                outlet.heartbeat()

        await session.run(commands())

    return HTTPStream(200, _EVENT_STREAM, body)


# -- long-polling and commands: one answer per request -------------------------


class _Answers:
    """A session's outlet for one request: keeps what the session sends."""

    __slots__ = ("closed", "news", "pushes", "remote_address", "replies", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.remote_address = None
        self.replies: dict[int, str] = {}
        #: Pushes other than publications (join, leave...), in order.
        self.pushes: list[str] = []
        #: Set by a publication's push.
        self.news = asyncio.Event()
        self.closed = False

    @property
    def write_buffer_size(self) -> int:
        """Nothing waits: what is kept is bounded by the request."""
        return 0

    def send_nowait(self, message: str) -> None:
        """Keep a reply by its id; note a publication; keep other pushes."""
        if self.closed:
            raise ConnectionClosed(1000)
        if (match := _REPLY_ID.match(message)) is not None:
            self.replies[int(match[1])] = message
        elif pub_position(message) is not None:
            self.news.set()
        elif len(self.pushes) < _MAX_HELD_PUSHES:
            self.pushes.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The session ends: keep nothing more."""
        self.closed = True

    def drop(self, code: int = 1011, reason: str = "") -> None:
        """The session ends: keep nothing more."""
        self.closed = True

    def refusal(self, id: int) -> HTTPResponse | None:
        """The error reply to command ``id`` as an HTTP response, if any."""
        reply = self.replies.get(id)
        if reply is None:
            return _error(500, "the command got no reply")
        match = _ERROR_CODE.match(reply)
        if match is None:
            return None
        code = int(match[1])
        return HTTPResponse(code if 400 <= code < 600 else 400, reply.encode(), _JSON)


#: Join and leave pushes one poll keeps while it is held.
_MAX_HELD_PUSHES = 100
_REPLY_ID = re.compile(r'\{"id":(\d+)')
_ERROR_CODE = re.compile(r'\{"id":\d+,"error":\{"code":(\d+)')


async def _poll(hub: Hub, request: Request) -> HTTPResponse:
    params = _params(hub, request)
    token = _token(request, params)
    channel_tokens = _channel_tokens(params)
    channels = await _channels(hub, params, token, channel_tokens)
    if len(channels) != 1:
        raise _Refusal(400, "a poll names one channel (channel=NAME)")
    channel = channels[0]
    since = _positions(request, params, 1)[0]
    timeout = hub.config.poll_timeout
    if asked := params.get("timeout"):
        try:
            timeout = min(timeout, max(0.0, float(asked[0])))
        except ValueError:
            raise _Refusal(400, "timeout must be a number of seconds") from None
    answers = _Answers(request)
    result: HistoryResult | None = None
    expires: float | None = None

    async def commands() -> AsyncIterator[str]:
        nonlocal result, expires, timeout
        yield _connect(token)
        # Subscribed before the history is read: a publication after the
        # read wakes the poll, and none falls between.
        yield _subscribe(0, channel, None, channel_tokens[0])
        if answers.refusal(_subscribe_id(0)) is not None:
            return
        expires = session.granted.get(channel)
        if expires is not None:  # held no longer than its channel token lasts
            timeout = min(timeout, seconds_left(expires))
        if since is None:
            return
        result = await hub.history(channel, since=since[0])
        if result.publications or not result.complete or result.epoch != since[1]:
            return
        try:
            async with asyncio.timeout(timeout):
                await answers.news.wait()
        except TimeoutError:
            return
        result = await hub.history(channel, since=since[0])

    session = Session(hub, answers, present=False, transport="poll")
    await session.run(commands())
    for id in (_CONNECT_ID, _subscribe_id(0)):
        if (refusal := answers.refusal(id)) is not None:
            return refusal
    if since is None or result is None:  # where the channel stands
        position = reply_position(answers.replies[_subscribe_id(0)])
        assert position is not None
        body = encode_position(HistoryResult(position[2], position[1]), [])
    elif not result.complete or result.epoch != since[1]:
        body = encode_position(result, [], recovered=False)
    else:
        kept = result.publications[: session.fits(result.publications)]
        if kept:  # the client polls again from the last one it got
            result = dataclasses.replace(result, offset=kept[-1].offset)
        body = encode_position(result, kept, recovered=True)
    ttl = "" if expires is None else f',"ttl":{int(seconds_left(expires))}'
    text = f'{body[:-1]}{ttl},"pushes":[{",".join(answers.pushes)}]}}'
    return HTTPResponse(200, text.encode(), [*_JSON, ("Cache-Control", "no-store")])


async def _command(hub: Hub, request: Request) -> HTTPResponse:
    if request.method != "POST":
        raise _Refusal(405, f"POST a command to {COMMAND_PATH}")
    content_type = request.headers.get("Content-Type") or ""
    if content_type.partition(";")[0].strip().lower() != "application/json":
        # A page of another site may POST text/plain without asking first
        # (no CORS preflight); JSON it may not.
        raise _Refusal(415, "the body must be application/json")
    params = _params(hub, request)
    try:
        text = request.body.decode()
        command = parse_command(text)
    except UnicodeDecodeError:
        raise _Refusal(400, "the body must be UTF-8 JSON") from None
    except CommandError as exc:
        raise _Refusal(exc.code, exc.message) from None
    if command.op == "subscribe":
        raise _Refusal(400, f"subscribe with {SSE_PATH} or {POLL_PATH}")
    answers = _Answers(request)
    client = _client(params)
    outcome: HTTPResponse | None = None

    token = _token(request, params)

    async def commands() -> AsyncIterator[str]:
        nonlocal outcome
        if command.op == "connect":  # with the request's token if not its own
            yield dumps(
                {"id": command.id, "op": "connect", "token": command.token or token}
            )
            return
        yield _connect(token)
        if (outcome := answers.refusal(_CONNECT_ID)) is not None:
            return
        if command.op == "unsubscribe":
            outcome = await _unsubscribe(hub, client, command.id, command.channel)
            return
        if command.op == "sub_refresh":
            outcome = await _sub_refresh(hub, session, client, command)
            return
        yield text

    session = Session(hub, answers, present=False, client=client, transport="command")
    await session.run(commands())
    if outcome is not None:
        return outcome
    return answers.refusal(command.id) or HTTPResponse(
        200, answers.replies[command.id].encode(), _JSON
    )


async def _sub_refresh(
    hub: Hub, session: Session, client: str | None, command: Command
) -> HTTPResponse:
    """Extend, with a new channel token, the subscription of the event
    stream of the client ``session=SECRET`` names, on whichever node
    serves it."""
    if client is None:
        raise _Refusal(400, "name the event stream's session: session=SECRET")
    try:
        grant = await session.check_grant(command)
    except CommandError as exc:
        raise _Refusal(exc.code, exc.message) from None
    answers = await hub.survey(
        "refresh_stream",
        client=client,
        channel=grant.channel,
        user=grant.user,
        expires=grant.expires,
    )
    ttl = next((ttl for ttl in answers if ttl is not None), None)
    if ttl is None:
        raise _Refusal(
            409,
            f"no event stream of this session is on {grant.channel} by a channel token",
        )
    return HTTPResponse(
        200, f'{{"id":{command.id},"result":{{"ttl":{ttl}}}}}'.encode(), _JSON
    )


async def _unsubscribe(
    hub: Hub, client: str | None, id: int, channel: str
) -> HTTPResponse:
    """Unsubscribe the event stream of the client ``session=SECRET`` names,
    on whichever node serves it."""
    if client is None:
        raise _Refusal(400, "name the event stream's session: session=SECRET")
    found = sum(await hub.survey("unsubscribe_stream", client=client, channel=channel))
    if not found:
        raise _Refusal(409, f"no event stream of this session is on {channel}")
    return HTTPResponse(200, f'{{"id":{id},"result":{{}}}}'.encode(), _JSON)
