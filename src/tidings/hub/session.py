"""One client's session on the hub: commands in, replies and pushes out
(docs/protocol.md), over a WebSocket or a fallback transport's outlet
(hub/transports.py)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol
from urllib.parse import parse_qs

from ..engine.connection import Message, WebSocket
from ..exceptions import ConnectionClosed
from ..protocol import Request
from .auth import (
    AuthError,
    ChannelGrant,
    Identity,
    TokenMismatch,
    can_publish,
    can_subscribe,
    channel_grant,
    hook_decides,
    not_named,
    seconds_left,
)
from .brokers.base import BrokerUnavailable, ClientInfo, OutcomeUnknown, Publication
from .config import NamespaceConfig
from .hooks import (
    UNCHANGED,
    Disconnect,
    HookContext,
    Hooks,
    HookUnavailable,
    Refuse,
    Subscribe,
)
from .keys import KeysUnavailable
from .wire import (
    Command,
    CommandError,
    Raw,
    encode_error,
    encode_position,
    encode_push,
    encode_reply,
    parse_command,
)

if TYPE_CHECKING:
    from .app import Hub

__all__ = [
    "CLOSE_BAD_COMMANDS",
    "CLOSE_DISCONNECTED",
    "CLOSE_RATE_LIMIT",
    "CLOSE_SLOW",
    "CLOSE_TOKEN",
    "CLOSE_TOKEN_EXPIRED",
    "CLOSE_TRY_AGAIN",
    "Outlet",
    "Session",
]

logger = logging.getLogger("tidings.hub")

#: Close codes of docs/protocol.md.
CLOSE_BAD_COMMANDS = 4000
CLOSE_TOKEN = 4001
CLOSE_TOKEN_EXPIRED = 4002
CLOSE_DISCONNECTED = 4003
CLOSE_SLOW = 4005
CLOSE_RATE_LIMIT = 4008
#: The IANA registry's "Try Again Later": the application could not answer.
CLOSE_TRY_AGAIN = 1013

#: Seconds before the refresh hook is asked again when it could not answer.
REFRESH_RETRY = 5.0

#: Malformed commands, and rate-limited ones, tolerated per connection.
MAX_BAD_COMMANDS = 20
MAX_RATE_LIMITED = 50

#: Seconds of commands one connection may run back to back before every
#: other connection gets its turn. Not one command each: publications made
#: in one turn go out in one write per subscriber, not one write each.
TURN = 0.001

#: Publishes of one connection at the broker at once. Consecutive publishes
#: go out without waiting for each other (one Redis round trip can carry
#: many), their replies in order; any other command waits for them first.
MAX_PIPELINED = 64

#: What a publication costs in a reply beyond its data (offset, info).
_REPLY_OVERHEAD = 100


class _Empty(dict[Any, Any]):
    """A dict that stays empty: a write to it raises TypeError, where it
    would reach every session that shares it."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("_EMPTY is shared: give the session a dict of its own")

    __setitem__ = __delitem__ = __ior__ = _refuse
    setdefault = update = popitem = clear = _refuse


#: The empty dict of every session without entries in a dict it may need
#: (a channel token's, a subscribe in flight): one of its own costs 64 bytes
#: per connection, and as much again once it held an entry.
_EMPTY: dict[Any, Any] = _Empty()


async def _take_turns(loop: asyncio.AbstractEventLoop, turn: float) -> float:
    """Commands read together would otherwise run back to back, however
    many: once the turn that began at ``turn`` has lasted TURN seconds, let
    every other connection have its own. Return when the current turn
    began."""
    if loop.time() - turn > TURN:
        await asyncio.sleep(0)
        return loop.time()
    return turn


class Outlet(Protocol):
    """Where a session's replies and pushes go: its WebSocket, or what a
    fallback transport (hub/transports.py) makes of them."""

    remote_address: Any

    @property
    def request(self) -> Request | None:
        """The client's HTTP request."""

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued to the client and not yet sent."""

    def send_nowait(self, message: str) -> None:
        """Queue ``message``; raise ConnectionClosed once closed."""

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """End the session's connection with ``code``."""

    def drop(self, code: int = 1011, reason: str = "") -> None:
        """End it now, for a client too slow to keep up."""


class Session:
    """A connected client: its identity, subscriptions and limits."""

    __slots__ = (
        "_bad",
        "_client",
        "_closing",
        "_ended",
        "_expiry",
        "_gone",
        "_grant_timers",
        "_hooked",
        "_inbox",
        "_limited",
        "_pipeline",
        "_refilled",
        "_refreshing",
        "_server_channels",
        "_subscribed_at",
        "_tokens",
        "_worker",
        "channel_info",
        "granted",
        "hub",
        "identity",
        "info",
        "present",
        "recovering",
        "subscriptions",
        "transport",
        "ws",
    )

    def __init__(
        self,
        hub: Hub,
        ws: Outlet,
        *,
        present: bool = True,
        client: str | None = None,
        transport: str = "websocket",
    ) -> None:
        self.hub = hub
        self.ws = ws
        #: How the client is connected, as the hooks are told: websocket,
        #: sse, poll or command.
        self.transport = transport
        #: The client id connect gives, if not a new random one.
        self._client = client
        #: Whether it holds a connection, which shows in the presence of the
        #: channels it subscribes to and which pushes outlive: not a
        #: long-poll, nor a command's POST, which hold one request each.
        self.present = present
        self.info: ClientInfo | None = None
        # The dicts below are _EMPTY, shared, until they hold an entry, and
        # again once they hold none: most sessions never need them.
        #: The client as the subscribe hook, or a channel token, showed it
        #: on some channels.
        self.channel_info: dict[str, ClientInfo] = _EMPTY
        #: The subscriptions a channel token allowed, and when each token
        #: expires (Unix time).
        self.granted: dict[str, float] = _EMPTY
        #: End each of those when its token expires, unless refreshed.
        self._grant_timers: dict[str, asyncio.TimerHandle] = _EMPTY
        self.identity: Identity | None = None
        #: Connected through the connect hook, which the refresh hook
        #: answers for at expiry.
        self._hooked = False
        self._refreshing: asyncio.Task[None] | None = None
        #: Channels the connect hook or the token's ``subs`` subscribe the
        #: client to, not yet done, each with the position the client
        #: recovers it from.
        self._server_channels: Sequence[tuple[str, tuple[int, str] | None]] = ()
        self.subscriptions: set[str] = set()
        #: Pushes held back per channel while its subscribe is in flight.
        self.recovering: dict[str, list[tuple[int | None, str]]] = _EMPTY
        #: The offset of each subscribe reply about to be sent.
        self._subscribed_at: dict[str, tuple[str, int]] = _EMPTY
        self._tokens = float(hub.config.rate_burst)
        self._refilled = time.monotonic()
        self._bad = 0
        #: Our closing handshake, once we decided to end the connection.
        self._closing: asyncio.Task[None] | None = None
        #: Set once the connection ended, as its cleanup begins.
        self._ended = False
        #: Closes the connection when its token expires, unless refreshed.
        self._expiry: asyncio.TimerHandle | None = None
        self._limited = 0
        #: Replies of the publishes in flight (and of what came after them),
        #: in command order, while there are any.
        #: (A list: an empty deque would cost 600 bytes per connection.)
        self._pipeline: list[asyncio.Future[str | None]] | None = None
        #: A WebSocket's commands not yet handled (:meth:`take`), while
        #: there are any, and the task that handles them, while it runs.
        self._inbox: deque[Message] | None = None
        self._worker: asyncio.Task[None] | None = None
        #: The WebSocket is closed: clean up after its last command.
        self._gone = False

    # -- the loop --------------------------------------------------------

    async def run(self, commands: AsyncIterable[Message]) -> None:
        """Serve ``commands`` until they end, then clean up: a fallback
        transport's, or an ASGI server's WebSocket messages."""
        loop = asyncio.get_running_loop()
        turn = loop.time()
        try:
            async for message in commands:
                await self._handle(message)
                turn = await _take_turns(loop, turn)
        except ConnectionClosed:
            pass
        finally:
            await self._cleanup()

    def take(self, ws: WebSocket) -> None:
        """Serve the messages of ``ws``, a WebSocket of the hub's server,
        as they come (its ``on_message``), and clean up once it closes.

        Unlike :meth:`run`, no task waits for the next command: most
        clients subscribe and then only receive pushes, and a task per
        connection would cost them a quarter of their memory. A task runs
        only while commands wait, one at a time, in order.
        """
        ws.on_message = self.received
        ws.add_close_callback(self._lost)

    def received(self, ws: WebSocket, message: Message) -> None:
        """A command from the WebSocket: queue it for the worker."""
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(message)
        if self._worker is None:
            self._start_worker()
        elif ws.max_queue is not None and len(inbox) >= ws.max_queue:
            # As recv() does: TCP flow control makes the client wait,
            # instead of our memory growing.
            ws.pause_reading()

    def _lost(self, _: object) -> None:
        """The WebSocket closed: clean up, after any command still queued."""
        self._gone = True
        if self._worker is None:
            self._start_worker()

    def _start_worker(self) -> None:
        worker = self._worker = asyncio.get_running_loop().create_task(self._work())
        self.hub.working(worker)

    async def _work(self) -> None:
        """Handle the queued commands in order until none is left; clean up
        if the WebSocket closed meanwhile."""
        ws = self.ws
        assert isinstance(ws, WebSocket)
        loop = asyncio.get_running_loop()
        turn = loop.time()
        try:
            inbox = self._inbox
            while inbox:
                message = inbox.popleft()
                if ws.max_queue is not None and len(inbox) <= ws.max_queue // 4:
                    ws.resume_reading()
                await self._handle(message)
                turn = await _take_turns(loop, turn)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("error in a hub session")
            self.close(1011, "internal error")
        finally:
            self._inbox = None
            if not self._gone:
                self._worker = None
        if self._gone:
            await self._cleanup()

    async def _cleanup(self) -> None:
        """The connection ended: leave everything."""
        self._ended = True
        if self._expiry is not None:
            self._expiry.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self._pipeline:
            await self._settle()  # what was published stays published
        await self.hub.session_ended(self)
        if self._closing is not None:
            await self._closing

    async def _handle(self, message: str | bytes) -> None:
        if self._closing is not None:
            return  # closing: read on to the client's close frame, ignoring commands
        self.hub.metrics.commands += 1
        command = self._accept(message)
        if command is None:
            return
        if (
            command.op == "publish"
            and self.info is not None
            and not self._hooked_publish(command.channel)
        ):
            if self._pipeline is not None and len(self._pipeline) >= MAX_PIPELINED:
                await asyncio.wait([self._pipeline[0]])
                self._send_ready()  # which may leave no pipeline
            if self._pipeline is None:
                self._pipeline = []
            answer = asyncio.ensure_future(self._answer(command))
            self._pipeline.append(answer)
            answer.add_done_callback(self._send_ready)
            return
        if self._pipeline:
            await self._settle()
        reply = await self._answer(command)
        if reply is not None:
            self.send(reply)
        if command.op == "subscribe":
            self._subscribed(command.channel)
        elif self._server_channels:
            await self._subscribe_server_side()

    def _subscribed(self, channel: str) -> None:
        """The subscribe reply (or push) is sent: release what was held."""
        if channel in self._subscribed_at:
            epoch, offset = self._subscribed_at.pop(channel)
            if not self._subscribed_at:
                self._subscribed_at = _EMPTY
            self._flush(channel, offset)
            self.hub.subscribed(self, channel, epoch, offset)

    async def _subscribe_server_side(self) -> None:
        """Subscribe the client to the channels the connect hook or the
        token's ``subs`` named, each recovered from the position the
        connect command gave for it, if any."""
        channels, self._server_channels = self._server_channels, ()
        for channel, since in channels:
            try:
                await self.subscribe_by_hub(channel, since)
            except BrokerUnavailable:
                self.close(CLOSE_TRY_AGAIN, "try again later")
                return

    async def subscribe_by_hub(
        self, channel: str, since: tuple[int, str] | None = None
    ) -> bool:
        """Subscribe the client to ``channel`` on the hub's initiative (a
        server-side subscription), announced by a ``subscribe`` push that
        recovers from ``since`` when given. Return whether it was made: not
        where the client is subscribed already, nor once the connection
        ended, nor beyond a limit (logged). Raises BrokerUnavailable."""
        namespace = self.hub.config.namespace(channel)
        if namespace is None or channel in self.subscriptions or self._ended:
            return False
        try:
            position = await self._join(channel, namespace, since)
        except CommandError as exc:  # too many subscribers, say
            logger.info(
                "server-side subscription to %s refused: %s", channel, exc.message
            )
            return False
        if self._ended:
            # Asked from outside the session's loop (/api/subscribe): its
            # cleanup may have run while this one joined.
            await self.hub.unsubscribe(self, channel)
            return False
        self.send(encode_push(channel, "subscribe", position))
        self._subscribed(channel)
        return True

    def _hooked_publish(self, channel: str) -> bool:
        """Whether publishes to ``channel`` go through the publish hook (and
        so one at a time, in order)."""
        namespace = self.hub.config.namespace(channel)
        return namespace is not None and namespace.publish_proxy

    def _accept(self, message: str | bytes) -> Command | None:
        """The command in ``message``, or None when it is refused (binary,
        rate limited, malformed, too large): then the refusal is queued."""
        hub = self.hub
        if isinstance(message, bytes):
            self._refuse(None, 400, "binary frames are not supported")
            return None
        if not self._take_token():
            self._limited += 1
            hub.metrics.errors["rate_limited"] += 1
            if self._limited > MAX_RATE_LIMITED:
                self.close(CLOSE_RATE_LIMIT, "rate limit exceeded again and again")
            else:
                self._reply(encode_error(_peek_id(message), 429, "too many commands"))
            return None
        if _utf8_length(message) > hub.config.max_message_size:
            # Refused unparsed: parsing costs ~40 ms of CPU per MiB.
            self._refuse(_peek_id(message), 413, "command is too large")
            return None
        try:
            return parse_command(message)
        except CommandError as exc:
            self._refuse(exc.id, exc.code, exc.message)
            return None

    async def _answer(self, command: Command) -> str | None:
        """Carry out ``command``; return the reply (or error) to send, or
        None when the connection is being closed instead."""
        hub = self.hub
        id = command.id
        try:
            return encode_reply(id, await self._dispatch(command))
        except CommandError as exc:
            return self._error(id if exc.id is None else exc.id, exc.code, exc.message)
        except OutcomeUnknown as exc:
            hub.metrics.errors["outcome_unknown"] += 1
            return encode_error(id, 504, str(exc))
        except BrokerUnavailable as exc:
            hub.metrics.errors["broker_unavailable"] += 1
            return encode_error(id, 503, str(exc))
        except AuthError as exc:
            hub.metrics.errors["auth"] += 1
            self.close(CLOSE_TOKEN, str(exc))
            return encode_error(id, 401, str(exc))
        except Refuse as exc:  # the application's answer, as it gave it
            hub.metrics.errors[f"code_{exc.code}"] += 1
            return encode_error(id, exc.code, exc.message)
        except Disconnect as exc:
            self.close(exc.code, exc.reason)
            return None
        except (HookUnavailable, KeysUnavailable) as exc:
            kind = "keys" if isinstance(exc, KeysUnavailable) else "hook"
            hub.metrics.errors[f"{kind}_unavailable"] += 1
            if command.op == "connect":
                self.close(CLOSE_TRY_AGAIN, "try again later")
            return encode_error(id, 503, str(exc))
        except Exception:
            logger.exception("hub command failed")
            hub.metrics.errors["internal"] += 1
            return encode_error(id, 500, "internal error")

    def _reply(self, text: str | None) -> None:
        """Send a reply, after those of the publishes in flight."""
        if text is None:
            return
        if self._pipeline:
            ready = asyncio.get_running_loop().create_future()
            ready.set_result(text)
            self._pipeline.append(ready)
        else:
            self.send(text)

    def _send_ready(self, _: object = None) -> None:
        """Send the replies at the head of the pipeline that are ready."""
        pipeline = self._pipeline
        while pipeline and pipeline[0].done():
            reply = pipeline.pop(0).result()
            if reply is not None:
                self.send(reply)
        if pipeline is not None and not pipeline:
            self._pipeline = None

    async def _settle(self) -> None:
        """Wait for the publishes in flight and send their replies."""
        assert self._pipeline is not None
        await asyncio.wait(list(self._pipeline))
        self._send_ready()

    def _refuse(self, id: int | None, code: int, message: str) -> None:
        self._reply(self._error(id, code, message))

    def _error(self, id: int | None, code: int, message: str) -> str | None:
        """An error reply, counted; too many malformed commands close the
        connection instead (None)."""
        self.hub.metrics.errors[f"code_{code}"] += 1
        # Counted always; logged only when asked: a client can send many.
        logger.debug("%s: error %d: %s", self.ws.remote_address, code, message)
        if code in (400, 413):
            self._bad += 1
            if self._bad > MAX_BAD_COMMANDS:
                self.close(CLOSE_BAD_COMMANDS, "too many malformed commands")
                return None
        return encode_error(id, code, message)

    def close(self, code: int, reason: str) -> None:
        """End the connection with ``code``; ignore further commands.

        A closing handshake, not a drop: closing TCP while the client is
        still sending would reset the connection before the client could
        read why. :meth:`run` goes on reading (and ignoring) commands, so
        that the client's close frame behind them is read too.
        """
        if self._closing is None:
            logger.info("closing %s with %d: %s", self.ws.remote_address, code, reason)
            self.hub.drain()  # the pushes that came before go first
            self._closing = asyncio.create_task(self.ws.close(code, reason))

    def _take_token(self) -> bool:
        config = self.hub.config
        now = time.monotonic()
        self._tokens = min(
            float(config.rate_burst),
            self._tokens + (now - self._refilled) * config.rate_limit,
        )
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def send(self, text: str) -> None:
        """Queue ``text`` to the client; drop a client that lets its queue
        grow past ``max_outbound`` (it may reconnect and recover)."""
        self.hub.drain()  # the pushes that came before go first
        ws = self.ws
        try:
            ws.send_nowait(text)
        except ConnectionClosed:
            return
        if ws.write_buffer_size > self.hub.config.max_outbound:
            self.hub.drop_slow(ws)

    # -- commands --------------------------------------------------------

    async def _dispatch(self, command: Command) -> Any:
        op = command.op
        if op == "connect":
            return await self._connect(command)
        if self.info is None:
            raise CommandError(401, "send connect first", command.id)
        if op == "ping":
            return {}
        if op == "refresh":
            return await self._refresh(command)
        if op == "rpc":
            hooks = self._hooks("rpc")
            if hooks is None:
                raise CommandError(404, "rpc is not enabled on this hub", command.id)
            context = self._context(method=command.method, data=command.data)
            data = await hooks.rpc(context)
            return {"data": data}
        namespace = self.hub.config.namespace(command.channel)
        if namespace is None:
            raise CommandError(
                404, f"unknown namespace in {command.channel}", command.id
            )
        if op == "subscribe":
            return await self._subscribe(command, namespace)
        if op == "sub_refresh":
            grant = await self.check_grant(command)
            if command.channel not in self.granted:
                raise CommandError(
                    409,
                    f"not subscribed to {command.channel} by a channel token",
                    command.id,
                )
            return {"ttl": self.grant(command.channel, grant.expires)}
        if op == "unsubscribe":
            if command.channel not in self.subscriptions:
                raise CommandError(
                    409, f"not subscribed to {command.channel}", command.id
                )
            await self.hub.unsubscribe(self, command.channel)
            return {}
        if op == "publish":
            return await self._publish(command, namespace)
        if command.channel in self.granted:
            pass  # its channel token allows reading it
        elif not hook_decides(namespace, command.channel):
            self._check_subscribe(command, namespace)
        elif command.channel not in self.subscriptions:
            # Readers are those the application lets in: asked as for a
            # subscribe (a fallback's POST /command is never subscribed).
            await self._ask_subscribe(command.channel)
        if op == "history":
            return await self._history(command)
        if not namespace.presence:
            raise CommandError(
                403, f"presence is off for {command.channel}", command.id
            )
        if op == "presence_stats":
            return (await self.hub.broker.presence_stats(command.channel))._asdict()
        clients = await self.hub.broker.presence(command.channel)
        return {"clients": [c.to_json() for c in clients]}

    async def _connect(self, command: Command) -> dict[str, Any]:
        if self.info is not None:
            raise CommandError(400, "already connected", command.id)
        client = self._client or secrets.token_hex(6)
        token = command.token
        if token is None:
            token = _query_token(self.ws)
        hooks = self._hooks("connect")
        if token is None and hooks is not None:
            answer = await hooks.connect(self._context(client, data=command.data))
            self._hooked = True
            self.identity = Identity(answer.user, expires=answer.expire_at)
            self.info = ClientInfo(client, answer.user, answer.info)
            self._subscribe_later(answer.channels, command.subs)
            self.hub.session_connected(self)
            reply = {**self.info.to_json(), **self._watch_expiry()}
            if answer.data is not None:
                reply["data"] = answer.data
            return reply
        if token is not None:
            self.identity = await self.hub.tokens.identity(token)
        identity = self.identity
        if identity is None:
            self.info = ClientInfo(client, "")
        else:
            # The connect token's info stays for the connection: a refresh
            # changes permissions, not who the others see.
            self.info = ClientInfo(client, identity.user, identity.info)
            self._subscribe_later(identity.subs, command.subs)
        self.hub.session_connected(self)
        return {**self.info.to_json(), **self._watch_expiry()}

    def _subscribe_later(
        self, channels: Iterable[str], subs: dict[str, tuple[int, str]]
    ) -> None:
        """Subscribe the client to ``channels`` once connect is answered,
        each from its position in the connect command's ``subs``; not a
        session of one request, which no push outlives."""
        if self.present:
            self._server_channels = [(c, subs.get(c)) for c in channels]

    def _hooks(self, hook: str) -> Hooks | None:
        """The hooks, if the application answers ``hook``."""
        hooks = self.hub.hooks
        return hooks if hooks is not None and hooks.enabled(hook) else None

    def _context(self, client: str | None = None, **question: Any) -> HookContext:
        """The client, as a hook is told of it, and the ``question``'s
        fields (channel, data, method)."""
        request = self.ws.request
        headers = {}
        if request is not None:
            for name in self.hub.config.proxy.headers:
                value = request.headers.get(name)
                if value is not None:
                    headers[name] = value
        info = self.info
        if info is None:
            return HookContext(
                client or "", self.transport, headers, request, **question
            )
        return HookContext(
            info.client,
            self.transport,
            headers,
            request,
            info.user,
            info.info,
            **question,
        )

    def info_for(self, channel: str) -> ClientInfo | None:
        """Who the client is on ``channel``: as the subscribe hook showed
        it there, else as it connected."""
        return self.channel_info.get(channel, self.info)

    async def _publish(self, command: Command, namespace: NamespaceConfig) -> Any:
        channel = command.channel
        data = command.data
        if not_named(self.identity, channel):  # its name decides, before any hook
            raise CommandError(403, f"not allowed to publish to {channel}", command.id)
        if namespace.publish_proxy:
            hooks = self._hooks("publish")
            if hooks is None:
                raise HookUnavailable("the publish hook is not configured")
            answer = await hooks.publish(self._context(channel=channel, data=data))
            if answer.data is not UNCHANGED:
                data = answer.data
        elif not can_publish(self.identity, namespace, channel):
            raise CommandError(403, f"not allowed to publish to {channel}", command.id)
        offset, epoch = await self.hub.publish(
            channel,
            data,
            self.info_for(channel),
            idempotency_key=command.idempotency_key,
        )
        return {"offset": offset, "epoch": epoch}

    async def _refresh(self, command: Command) -> dict[str, Any]:
        """Replace the connection's token before it expires. A refused
        token leaves the old one in force (until it expires)."""
        try:
            identity = await self.hub.tokens.identity(command.token)
        except AuthError as exc:
            raise CommandError(401, str(exc), command.id) from None
        if self.identity is None or identity.user != self.identity.user:
            raise CommandError(403, "a refresh must keep the user", command.id)
        self.identity = identity
        # The new token may grant fewer channels than the old one (a
        # channel token answers for its own).
        for channel in self.subscriptions.difference(self.granted):
            namespace = self.hub.config.namespace(channel)
            if namespace is None or not can_subscribe(identity, namespace, channel):
                self.hub.expel(self, channel)
        return self._watch_expiry()

    def _watch_expiry(self) -> dict[str, Any]:
        """Close the connection with 4002 when its token expires; return
        the reply's ``ttl`` (seconds left), which tells the client when to
        refresh."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.identity is None or self.identity.expires is None:
            return {}
        ttl = seconds_left(self.identity.expires)
        self._expiry = asyncio.get_running_loop().call_later(ttl, self._expired)
        return {"ttl": int(ttl)}

    def _expired(self) -> None:
        """The token, or what the connect hook granted, expired: ask the
        refresh hook again if the connection came through the hooks, else
        close with 4002."""
        self._expiry = None
        hooks = self._hooks("refresh")
        if self._hooked and hooks is not None:
            self._refreshing = asyncio.create_task(self._refresh_by_hook(hooks))
        else:
            self.close(CLOSE_TOKEN_EXPIRED, "token expired")

    async def _refresh_by_hook(self, hooks: Hooks) -> None:
        try:
            answer = await hooks.refresh(self._context())
        except Disconnect as exc:
            self.close(exc.code, exc.reason)
            return
        except (HookUnavailable, Refuse):
            # A back end that cannot answer for a while does not end every
            # connection whose time came meanwhile: it is asked again.
            self._expiry = asyncio.get_running_loop().call_later(
                REFRESH_RETRY, self._expired
            )
            return
        if answer.expired or self.identity is None:
            self.close(CLOSE_TOKEN_EXPIRED, "expired")
            return
        self.identity = Identity(self.identity.user, expires=answer.expire_at)
        self._watch_expiry()

    def _check_subscribe(self, command: Command, namespace: NamespaceConfig) -> None:
        if not can_subscribe(self.identity, namespace, command.channel):
            raise CommandError(
                403, f"not allowed to subscribe to {command.channel}", command.id
            )

    async def _subscribe(self, command: Command, namespace: NamespaceConfig) -> Any:
        channel = command.channel
        if command.token is not None:
            # A channel token allows it, whatever the connection's token,
            # the namespace or the subscribe hook would say.
            grant = await self.check_grant(command)
            result = await self._join_as(grant.info, command, namespace)
            ttl = self.grant(channel, grant.expires)
            return Raw(f'{result[:-1]},"ttl":{ttl}}}')
        if not hook_decides(namespace, channel):
            self._check_subscribe(command, namespace)
            return await self._join(channel, namespace, command.since, command.id)
        answer = await self._ask_subscribe(channel)
        return await self._join_as(answer.info, command, namespace)

    async def _join_as(
        self, info: Any, command: Command, namespace: NamespaceConfig
    ) -> Raw:
        """:meth:`_join` the command's channel, shown there with ``info``
        (if not None) rather than the connection's."""
        channel = command.channel
        if channel in self.subscriptions:  # its info stays
            raise CommandError(409, f"already subscribed to {channel}", command.id)
        if info is not None and self.info is not None:
            if self.channel_info is _EMPTY:
                self.channel_info = {}
            self.channel_info[channel] = ClientInfo(
                self.info.client, self.info.user, info
            )
        try:
            return await self._join(channel, namespace, command.since, command.id)
        except CommandError:
            self.forget_info(channel)
            raise

    async def check_grant(self, command: Command) -> ChannelGrant:
        """What the channel token of ``command`` (a subscribe or a
        sub_refresh) allows this client; CommandError 401 for a token
        invalid or expired (the connection stays: it is not the
        connection's token), 403 for one of another channel or user."""
        assert self.info is not None
        try:
            claims = await self.hub.tokens.claims(command.token)
            return channel_grant(claims, self.info.user, command.channel)
        except AuthError as exc:
            raise CommandError(401, str(exc), command.id) from None
        except TokenMismatch as exc:
            raise CommandError(403, str(exc), command.id) from None

    def grant(self, channel: str, expires: float) -> int:
        """Hold the subscription to ``channel``, which a channel token
        allowed, until ``expires``, then end it with an ``unsubscribe``
        push; return the reply's ``ttl``. A poll, one request, is not
        ended: its hold stops at ``expires`` (hub/transports.py)."""
        if self.granted is _EMPTY:
            self.granted = {}
        self.granted[channel] = expires
        timer = self._grant_timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        ttl = seconds_left(expires)
        if self.transport != "poll":
            if self._grant_timers is _EMPTY:
                self._grant_timers = {}
            self._grant_timers[channel] = asyncio.get_running_loop().call_later(
                ttl, self.hub.expel, self, channel
            )
        return int(ttl)

    def ungrant(self, channel: str) -> None:
        """The subscription to ``channel`` ended: forget its channel token."""
        if self.granted.pop(channel, None) is not None and not self.granted:
            self.granted = _EMPTY
        timer = self._grant_timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
            if not self._grant_timers:
                self._grant_timers = _EMPTY

    def forget_info(self, channel: str) -> None:
        """The client is no longer on ``channel``: forget how it shows there."""
        if self.channel_info.pop(channel, None) is not None and not self.channel_info:
            self.channel_info = _EMPTY

    async def _ask_subscribe(self, channel: str) -> Subscribe:
        """The subscribe hook's answer for ``channel``; Refuse if it says no."""
        hooks = self._hooks("subscribe")
        if hooks is None:
            raise HookUnavailable("the subscribe hook is not configured")
        return await hooks.subscribe(self._context(channel=channel))

    async def _join(
        self,
        channel: str,
        namespace: NamespaceConfig,
        since: tuple[int, str] | None,
        id: int | None = None,
    ) -> Raw:
        """Subscribe to ``channel``, allowed; return the reply's result: the
        channel's position, and what was missed after ``since``."""
        if channel in self.subscriptions:
            raise CommandError(409, f"already subscribed to {channel}", id)
        most = self.hub.config.max_subscriptions
        if len(self.subscriptions) >= most:
            raise CommandError(
                429, f"too many subscriptions on one connection ({most})", id
            )
        limit = namespace.max_subscribers
        if limit is not None and self.hub.subscriber_count(channel) >= limit:
            raise CommandError(503, f"{channel} has too many subscribers", id)
        # Live pushes are held back from here until the reply is sent, then
        # released without those the reply already carries: no gap, no
        # duplicate, whatever publishes in between.
        if self.recovering is _EMPTY:
            self.recovering = {}
        self.recovering[channel] = []
        try:
            position = await self.hub.subscribe(self, channel, namespace, since)
        except BaseException:
            self.stop_holding(channel)
            raise
        if self._subscribed_at is _EMPTY:
            self._subscribed_at = {}
        self._subscribed_at[channel] = (position.epoch, position.offset)
        if since is None:
            return encode_position(position)
        if (
            position.complete
            and position.epoch == since[1]
            and self.fits(position.publications) == len(position.publications)
        ):
            return encode_position(position, position.publications, recovered=True)
        # Lost, or more than one reply may carry: the client may page
        # through the history itself.
        return encode_position(position, recovered=False)

    def _flush(self, channel: str, offset: int) -> None:
        """Release the pushes held back during a subscribe, skipping the
        publications up to ``offset`` that the reply covered."""
        held = self.stop_holding(channel)
        if not held:
            return
        for pub_offset, text in held:
            if pub_offset is None or pub_offset > offset:
                self.send(text)

    def stop_holding(self, channel: str) -> list[tuple[int | None, str]] | None:
        """Stop holding ``channel``'s pushes back; return those held."""
        held = self.recovering.pop(channel, None)
        if held is not None and not self.recovering:
            self.recovering = _EMPTY
        return held

    async def _history(self, command: Command) -> Raw:
        since = command.since
        result = await self.hub.history(
            command.channel, since=since[0] if since else None, limit=command.limit
        )
        if since is not None and (not result.complete or result.epoch != since[1]):
            return encode_position(result, (), complete=False)
        publications = result.publications
        if since is None:  # the newest that fit
            fit = self.fits(reversed(publications))
            return encode_position(result, publications[len(publications) - fit :])
        return encode_position(result, publications[: self.fits(publications)])

    def fits(self, publications: Iterable[Publication]) -> int:
        """How many of ``publications``, in order, one reply carries: at most
        half of ``max_outbound`` (a reply alone never gets its client dropped
        as too slow, and one command costs bounded CPU to encode and
        compress), and at least one."""
        budget = self.hub.config.max_outbound // 2
        count = 0
        for publication in publications:
            budget -= len(publication.data) + _REPLY_OVERHEAD
            if budget < 0 and count:
                break
            count += 1
        return count


def _query_token(ws: Outlet) -> str | None:
    request = ws.request
    if request is None:
        return None
    values = parse_qs(request.query).get("token")
    return values[0] if values else None


def _utf8_length(text: str) -> int:
    """``len(text.encode())``, without encoding when ASCII."""
    return len(text) if text.isascii() else len(text.encode())


_LEADING_ID = re.compile(r'\s*\{\s*"id"\s*:\s*(\d{1,16})\s*[,}]')


def _peek_id(message: str) -> int | None:
    """The id of a command we won't parse (rate limited, too large), when
    it comes first, as every client of docs/protocol.md sends it."""
    match = _LEADING_ID.match(message, 0, 64)
    return int(match.group(1)) if match else None
