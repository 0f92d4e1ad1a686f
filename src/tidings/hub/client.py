"""An asyncio client of the hub (docs/protocol.md), with automatic reconnect
and gap-free recovery.

::

    async with Client("ws://127.0.0.1:8000/ws", token=token) as client:
        sub = await client.subscribe("chat:lobby")
        await client.publish("chat:lobby", {"text": "hi"})
        async for pub in sub:
            print(pub.offset, pub.data)

The hub may subscribe the client to channels itself (server-side
subscriptions: its token's ``subs``, the application's connect hook, or
the application's ``/api/subscribe`` at any time): they are in
``client.subscriptions``, those of connect once the client is open, and
``on_subscription`` hears of each.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

from ..engine.client import connect
from ..engine.connection import WebSocket
from ..exceptions import ConnectionClosed, InvalidStatus, TidingsError
from ..protocol import State
from .brokers.base import ClientInfo, PresenceStats

__all__ = [
    "Client",
    "History",
    "HubError",
    "Publication",
    "RecoveryFailed",
    "Subscription",
]

logger = logging.getLogger("tidings.hub.client")

#: Close codes after which reconnecting would not help (docs/protocol.md).
_FINAL_CLOSE_CODES = frozenset({1009, 4000, 4001, 4003})
#: The connection's token expired: final unless a new one can be had.
_TOKEN_EXPIRED = 4002

#: How far into a token's lifetime ``get_token`` is asked for the next one.
_REFRESH_AT = 0.75

_Handler = Callable[[Any, BaseException | None], None]


@dataclass(frozen=True, slots=True)
class Publication:
    """A publication received: its offset in the channel, its data (any
    JSON value, decoded) and who published it (None through the HTTP API)."""

    offset: int
    data: Any
    info: ClientInfo | None = None


@dataclass(frozen=True, slots=True)
class History:
    """A history answer: the channel's position and kept publications;
    ``complete`` is False when history no longer reaches back to ``since``."""

    epoch: str
    offset: int
    publications: list[Publication]
    complete: bool = True


class HubError(TidingsError):
    """The hub answered a command with an error; ``code`` is as in
    docs/protocol.md (403, 404, 429...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class RecoveryFailed(TidingsError):
    """Publications were missed and cannot be recovered (the hub answered
    ``recovered: false``): reload the channel's state by other means.
    Publications continue from ``offset + 1`` in ``epoch``."""

    def __init__(self, channel: str, offset: int, epoch: str) -> None:
        super().__init__(f"publications missed on {channel} could not be recovered")
        self.channel = channel
        self.offset = offset
        self.epoch = epoch


class Subscription:
    """A subscription to one channel; iterate it for its publications.

    Publications arrive in offset order, each once, across reconnects.
    Every publication carries its position: when one skips an offset (or
    comes from another epoch), the subscription resubscribes with ``since``
    and recovers what was missed. When publications are lost, iterating
    raises
    :class:`RecoveryFailed` at the gap, after every publication before it;
    the subscription stays active, so iterate again to go on. With
    ``on_publication``, publications go to that callback instead, and a gap
    goes to :attr:`on_recovery_failed` (which is called in both cases).
    Iteration ends after :meth:`unsubscribe` or when the hub unsubscribes
    the client (``/api/unsubscribe``, or a channel token that expired), or
    raises the error that ended the subscription (a :class:`HubError`, an
    error of ``get_token``, or :class:`~tidings.ConnectionClosed`).

    With ``get_token`` (:meth:`Client.subscribe`), every subscribe, the
    resubscribes after a reconnect or a gap included, carries a channel
    token it returns, and three quarters into each one's ``ttl`` the next
    one goes out with ``sub_refresh``, so the subscription outlives its
    tokens. A refresh that fails is logged and left: the hub ends the
    subscription when the token expires.

    A **server-side** subscription (:attr:`server_side`) is one the hub
    made by itself: the token's ``subs`` claim or the connect hook's
    ``channels`` named its channel when the client connected, or the
    application called ``/api/subscribe`` since; the client never sent
    ``subscribe``. It behaves the same, except that the hub, not the
    client, renews it: on every reconnect the client sends its position
    with ``connect`` and the hub recovers it there; a gap seen live makes
    the client reconnect to recover it; and it ends (iteration stops) when
    a reconnect no longer includes it (neither the token nor the
    application names the channel: one of ``/api/subscribe`` lasts as long
    as the connection unless they do). Unsubscribing from one holds for
    the current connection: the hub subscribes the client again on
    reconnect while the token or the application names the channel.
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        on_publication: Callable[[Publication], object] | None = None,
        get_token: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.on_publication = on_publication
        #: Gives a channel token for each subscribe and sub_refresh.
        self.get_token = get_token
        #: Gets the channel token and subscribes, then refreshes it.
        self._refresher: asyncio.Task[None] | None = None
        #: Called with the :class:`RecoveryFailed` when a gap occurs.
        self.on_recovery_failed: Callable[[RecoveryFailed], object] | None = None
        #: Called with a :class:`ClientInfo` on join and leave pushes.
        self.on_join: Callable[[ClientInfo], object] | None = None
        self.on_leave: Callable[[ClientInfo], object] | None = None
        #: The channel's epoch and the last offset seen (None before the
        #: first subscribe reply).
        self.epoch: str | None = None
        self.offset = 0
        #: Made by the hub (the token or the application named the
        #: channel), not by :meth:`Client.subscribe`.
        self.server_side = False
        #: True from a subscribe command until its reply: pushes until then
        #: are covered by the reply.
        self._resyncing = False
        self._items: deque[Publication | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._subscribed: asyncio.Future[None] = (
            asyncio.get_running_loop().create_future()
        )
        self._ended = False

    def __aiter__(self) -> AsyncIterator[Publication]:
        return self

    async def __anext__(self) -> Publication:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    async def unsubscribe(self) -> None:
        """Stop receiving; iteration ends after what was already received."""
        if self._ended:
            return
        self._end(None)
        if self.client._subs.get(self.channel) is self:
            del self.client._subs[self.channel]
            if self.client.connected:
                try:
                    await self.client._call("unsubscribe", channel=self.channel)
                except HubError as exc:
                    if exc.code != 409:  # never subscribed: nothing to undo
                        raise

    # -- fed by the client ------------------------------------------------

    def _put(self, item: Publication | BaseException) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _live(self, raw: dict[str, Any]) -> None:
        """A publication pushed live: deliver it if it is the next one;
        recover if publications were missed."""
        if self._resyncing:
            return
        offset, epoch = raw["offset"], raw.get("epoch")
        if epoch == self.epoch and offset <= self.offset:
            return  # a duplicate: already delivered
        if epoch != self.epoch or offset != self.offset + 1:
            self.client._resync(self)
            return
        self._publication(_publication(raw))

    def _position(self, raw: dict[str, Any]) -> None:
        """The hub says where the channel is: recover if we are behind."""
        if not self._resyncing and (
            raw["epoch"] != self.epoch or raw["offset"] > self.offset
        ):
            self.client._resync(self)

    def _publication(self, pub: Publication) -> None:
        if pub.offset <= self.offset:
            return  # a duplicate: already delivered
        self.offset = pub.offset
        if self.on_publication is not None:
            _call_safely(self.on_publication, pub)
        else:
            self._put(pub)

    def _subscribed_ok(self, result: dict[str, Any], since: bool) -> None:
        self._resyncing = False
        epoch, offset = result["epoch"], result["offset"]
        if since and result.get("recovered"):
            for raw in result.get("publications", ()):
                self._publication(_publication(raw))
        elif since:
            failed = RecoveryFailed(self.channel, offset, epoch)
            if self.on_publication is None:
                self._put(failed)
            if self.on_recovery_failed is not None:
                _call_safely(self.on_recovery_failed, failed)
        self.epoch, self.offset = epoch, offset
        if not self._subscribed.done():
            self._subscribed.set_result(None)

    def _stop_refreshing(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._stop_refreshing()
        if error is not None:
            self._put(error)
            if not self._subscribed.done():
                self._subscribed.set_exception(error)
                self._subscribed.exception()  # nobody may be waiting
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Client:
    """A hub client: ``async with Client(url, token=None) as client:``.

    Opening connects (raising :class:`HubError` 401 for a refused token, or
    ``OSError``). After a drop it reconnects by itself, with exponential
    backoff and jitter between ``backoff_initial`` and ``backoff_max``
    seconds, and resubscribes every subscription with ``since`` = the last
    offset and epoch seen (see :class:`Subscription` for what happens when
    that fails). It stops after close codes that reconnecting cannot help
    (1009, 4000, 4001, 4003) or a refused token.

    ``get_token``, when given, is awaited for a fresh token before every
    connect and, three quarters into each token's lifetime, for the one that
    replaces it (sent with ``refresh``), so the connection outlives its
    tokens. Without it a connection ends with 4002 when its token expires.

    Without a token, a hub with a connect hook asks the application, which
    gets ``data`` (any JSON value, sent with every connect) and the
    connection's headers. Its answer gives :attr:`user`, :attr:`info` and
    :attr:`data`. When the application cannot answer, opening raises
    :class:`HubError` 503 (a reconnect tries again, with backoff).

    The connect hook's ``channels`` and the token's ``subs`` claim
    subscribe the client to channels at connect, and the application's
    ``/api/subscribe`` at any time: each becomes a :class:`Subscription`
    with ``server_side`` set, in :attr:`subscriptions` and passed to
    ``on_subscription`` before any of its publications (set its
    ``on_publication`` there, or iterate it); those of connect are all
    there when opening returns.

    Every command raises :class:`HubError` on an error reply and
    ``TimeoutError`` after ``timeout`` seconds (which includes waiting for
    a reconnect); a command in flight when the connection drops raises
    :class:`~tidings.ConnectionClosed` (it may or may not have been done).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        data: Any = None,
        get_token: Callable[[], Awaitable[str]] | None = None,
        on_subscription: Callable[[Subscription], object] | None = None,
        timeout: float = 10.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
        **connect_options: Any,
    ) -> None:
        self.url = url
        self.token = token
        #: Sent with every connect, for the application's connect hook.
        self.connect_data = data
        self.get_token = get_token
        #: Called with each server-side :class:`Subscription` the hub makes.
        self.on_subscription = on_subscription
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_options = connect_options
        #: The connection id and user the hub gave us (new on each connect).
        self.client_id = ""
        self.user = ""
        #: What the application's connect hook answered (None without one):
        #: ``info``, the JSON that presence, joins, leaves and our
        #: publications show for us, and ``data``, its reply to
        #: ``connect_data``.
        self.info: Any = None
        self.data: Any = None
        self._ws: WebSocket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Handler] = {}
        self._subs: dict[str, Subscription] = {}
        #: Channels the hub subscribed us to on the current connection.
        self._announced: set[str] = set()
        self._ready = asyncio.Event()
        self._failure: BaseException | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self._open()
        self._supervisor = asyncio.create_task(self._supervise())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; subscriptions end."""
        self._fail(ConnectionClosed(1000, "client closed"))
        if self._refresher is not None:
            self._refresher.cancel()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait([self._supervisor])
        if self._ws is not None:
            await self._ws.close()

    @property
    def connected(self) -> bool:
        """True while connected (False while reconnecting)."""
        return self._ready.is_set() and self._failure is None

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        """The active subscriptions by channel, the client's and the hub's
        (a read-only view)."""
        return MappingProxyType(self._subs)

    # -- commands ----------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        on_publication: Callable[[Publication], object] | None = None,
        *,
        get_token: Callable[[], Awaitable[str]] | None = None,
    ) -> Subscription:
        """Subscribe to ``channel``; see :class:`Subscription`.
        ``get_token`` is awaited for a channel token (a JWT allowing this
        user to subscribe to ``channel``, whatever the connection's token
        says) before every subscribe and sub_refresh of it."""
        if channel in self._subs:
            raise HubError(409, f"already subscribed to {channel}")
        async with asyncio.timeout(self.timeout):
            await self._connection()
            sub = Subscription(self, channel, on_publication, get_token)
            self._subs[channel] = sub
            self._send_subscribe(sub)
            try:
                await asyncio.shield(sub._subscribed)
            except BaseException:
                if self._subs.get(channel) is sub:  # timed out or cancelled
                    sub._stop_refreshing()
                    del self._subs[channel]
                    if self.connected and self._ws is not None:
                        self._send(
                            self._ws, "unsubscribe", {"channel": channel}, _ignore
                        )
                raise
        return sub

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> tuple[int, str]:
        """Publish ``data``; return its offset and the channel's epoch. With
        an ``idempotency_key`` (1-64 characters), a publish sent again with
        it, after a 503 or 504 say, is made once: the hub answers the
        first one's offset and epoch (docs/protocol.md)."""
        fields: dict[str, Any] = {"channel": channel, "data": data}
        if idempotency_key is not None:
            fields["idempotency_key"] = idempotency_key
        result = await self._call("publish", **fields)
        return result["offset"], result["epoch"]

    async def presence(self, channel: str) -> list[ClientInfo]:
        """Who is subscribed to ``channel``."""
        result = await self._call("presence", channel=channel)
        return [_info(c) for c in result["clients"]]

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients, and distinct users, are subscribed to
        ``channel`` on the whole hub; cheap on any channel, however many."""
        result = await self._call("presence_stats", channel=channel)
        return PresenceStats(result["clients"], result["users"])

    async def history(
        self,
        channel: str,
        limit: int | None = None,
        since: tuple[int, str] | None = None,
    ) -> History:
        """Kept publications of ``channel``: the newest ``limit``, or those
        after ``since`` = (offset, epoch); ``complete`` is False when the
        history no longer reaches back that far."""
        fields: dict[str, Any] = {"channel": channel}
        if limit is not None:
            fields["limit"] = limit
        if since is not None:
            fields["since"] = {"offset": since[0], "epoch": since[1]}
        result = await self._call("history", **fields)
        return History(
            result["epoch"],
            result["offset"],
            [_publication(p) for p in result["publications"]],
            result.get("complete", True),
        )

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Call ``method`` of the application (the hub's rpc hook) with
        ``data``; return the ``data`` of its answer. Raises
        :class:`HubError`: 404 when the hub has no rpc hook, 503 when the
        application could not answer, or the application's own error."""
        result = await self._call("rpc", method=method, data=data)
        return result.get("data")

    async def refresh(self, token: str) -> float:
        """Replace the connection's token with ``token`` (same user) before
        the old one expires; return the new one's seconds to live."""
        result = await self._call("refresh", token=token)
        self.token = token
        return float(result["ttl"])

    async def _call(self, op: str, **fields: Any) -> Any:
        async with asyncio.timeout(self.timeout):
            return await self._request(await self._connection(), op, fields)

    # -- the connection ----------------------------------------------------

    async def _connection(self) -> WebSocket:
        """The open connection, once there is one (after a reconnect)."""
        while True:
            await self._ready.wait()
            if self._failure is not None:
                raise self._failure
            ws, closed = self._ws, self._closed
            assert ws is not None and closed is not None
            if ws.state is State.OPEN:
                return ws
            await asyncio.shield(closed)  # then _ready is clear until reconnected

    async def _request(self, ws: WebSocket, op: str, fields: dict[str, Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        id = self._send(ws, op, fields, settle)
        try:
            return await future
        finally:
            self._pending.pop(id, None)

    def _send(
        self, ws: WebSocket, op: str, fields: dict[str, Any], handler: _Handler
    ) -> int:
        id = next(self._ids)
        self._pending[id] = handler
        try:
            ws.send_nowait(json.dumps({"id": id, "op": op, **fields}))
        except ConnectionClosed as exc:
            del self._pending[id]
            handler(None, exc)
        return id

    def _resync(self, sub: Subscription) -> None:
        """Publications were missed: subscribe again with ``since``, or
        reconnect for a server-side subscription."""
        if sub.server_side:
            # Only the hub may subscribe where the application subscribed
            # us (a subscribe of our own may be refused there), and it
            # recovers such a subscription from the connect command's subs.
            sub._resyncing = True  # what follows the gap waits for that
            asyncio.get_running_loop().call_soon(self._restart, self._ws)
            return
        if self._ws is None or not self.connected:
            return  # the reconnect resubscribes
        self._send(self._ws, "unsubscribe", {"channel": sub.channel}, _ignore)
        self._send_subscribe(sub)

    def _restart(self, ws: WebSocket | None) -> None:
        """End connection ``ws``: the supervisor reconnects."""
        if ws is not None and ws is self._ws and ws.state is State.OPEN:
            ws.drop(1000, "reconnecting to recover a server-side subscription")

    def _send_subscribe(self, sub: Subscription) -> None:
        sub._resyncing = True
        sub._stop_refreshing()
        ws = self._ws
        assert ws is not None
        if sub.get_token is None:
            self._subscribe_on(ws, sub, None)
        else:
            sub._refresher = asyncio.create_task(self._subscribe_with_token(ws, sub))

    async def _subscribe_with_token(self, ws: WebSocket, sub: Subscription) -> None:
        """Subscribe ``sub`` on connection ``ws`` with a channel token from
        its ``get_token``; a token that cannot be had ends it."""
        assert sub.get_token is not None
        try:
            async with asyncio.timeout(self.timeout):
                token = await sub.get_token()
        except Exception as exc:
            if self._subs.get(sub.channel) is sub:
                del self._subs[sub.channel]
                sub._end(exc)
            return
        if ws is self._ws and self._subs.get(sub.channel) is sub:
            self._subscribe_on(ws, sub, token)

    def _subscribe_on(
        self, ws: WebSocket, sub: Subscription, token: str | None
    ) -> None:
        fields: dict[str, Any] = {"channel": sub.channel}
        since = sub.epoch is not None
        if since:
            fields["since"] = {"offset": sub.offset, "epoch": sub.epoch}
        if token is not None:
            fields["token"] = token

        def on_reply(result: Any, error: BaseException | None) -> None:
            if self._subs.get(sub.channel) is not sub or sub.server_side:
                return  # unsubscribed meanwhile, or the hub subscribed it
            if isinstance(error, ConnectionClosed):
                return  # resent after the reconnect
            if error is not None:
                del self._subs[sub.channel]
                sub._end(error)
                return
            sub._subscribed_ok(result, since)
            if sub.get_token is not None and "ttl" in result:
                sub._refresher = asyncio.create_task(
                    self._keep_token(
                        ws,
                        result["ttl"],
                        sub.get_token,
                        "sub_refresh",
                        channel=sub.channel,
                    )
                )

        self._send(ws, "subscribe", fields, on_reply)

    async def _open(self) -> None:
        """Connect, send connect, and resubscribe everything."""
        ws = await connect(
            self.url,
            on_message=self._on_message,
            open_timeout=self.timeout,
            **self.connect_options,
        )
        self._ws = ws
        # Commands in flight fail as soon as the connection is gone.
        pending = self._pending = {}
        self._closed = asyncio.ensure_future(ws.wait_closed())
        self._closed.add_done_callback(lambda _: self._on_closed(ws, pending))
        self._announced = set()
        try:
            async with asyncio.timeout(self.timeout):
                if self.get_token is not None:
                    self.token = await self.get_token()
                result = await self._request(ws, "connect", self._connect_fields())
                self.client_id, self.user = result["client"], result["user"]
                self.info, self.data = result.get("info"), result.get("data")
                # The hub announces the subscriptions it makes at connect
                # before it answers the next command: after this, all are here.
                await self._request(ws, "ping", {})
        except BaseException:
            await ws.close()
            raise
        if "ttl" in result and self.get_token is not None:
            self._refresher = asyncio.create_task(
                self._keep_token(ws, result["ttl"], self._fresh_token, "refresh")
            )
        for sub in list(self._subs.values()):
            if not sub.server_side:
                self._send_subscribe(sub)
            elif sub.channel not in self._announced:
                # The application no longer subscribes us there.
                del self._subs[sub.channel]
                sub._end(None)
        self._ready.set()

    def _connect_fields(self) -> dict[str, Any]:
        """The connect command's fields: ``connect_data``, the token, and
        every subscription's position, from which the hub recovers those it
        subscribes us to (the token's ``subs``, the connect hook's
        channels)."""
        fields: dict[str, Any] = {}
        if self.connect_data is not None:
            fields["data"] = self.connect_data
        if self.token is not None:
            fields["token"] = self.token
        subs = {
            channel: {"offset": sub.offset, "epoch": sub.epoch}
            for channel, sub in self._subs.items()
            if sub.epoch is not None
        }
        if subs:
            fields["subs"] = subs
        return fields

    async def _supervise(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None and self._closed is not None
            await self._closed
            if ws.close_code in _FINAL_CLOSE_CODES or (
                ws.close_code == _TOKEN_EXPIRED and self.get_token is None
            ):
                self._fail(_close_error(ws))
                return
            delay = self.backoff_initial
            while True:
                await asyncio.sleep(random.uniform(0.5, 1.0) * delay)
                try:
                    await self._open()
                    break
                except Exception as exc:
                    if (isinstance(exc, HubError) and exc.code == 401) or (
                        isinstance(exc, InvalidStatus) and exc.status < 500
                    ):
                        self._fail(exc)  # refused: retrying will not help
                        return
                    logger.info("reconnecting to %s failed: %s", self.url, exc)
                delay = min(delay * 2, self.backoff_max)

    async def _fresh_token(self) -> str:
        """The connection's next token, from ``get_token``."""
        assert self.get_token is not None
        self.token = await self.get_token()
        return self.token

    async def _keep_token(
        self,
        ws: WebSocket,
        ttl: float,
        get_token: Callable[[], Awaitable[str]],
        op: str,
        **fields: Any,
    ) -> None:
        """Send ``op`` (``refresh``, or ``sub_refresh`` with the channel)
        with a new token from ``get_token`` three quarters into each token's
        ``ttl``, on connection ``ws`` until it closes. One that fails is
        logged and left: the hub ends the connection (4002) or the
        subscription (an ``unsubscribe`` push) when the token expires, and
        a reconnect or a new subscribe gets a new one."""
        try:
            while True:
                await asyncio.sleep(ttl * _REFRESH_AT)
                async with asyncio.timeout(self.timeout):
                    token = await get_token()
                    result = await self._request(ws, op, {**fields, "token": token})
                ttl = result["ttl"]
        except Exception as exc:
            logger.warning("%s failed: %r", op, exc)

    def _on_closed(self, ws: WebSocket, pending: dict[int, _Handler]) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for sub in self._subs.values():  # resubscribed with new tokens
            sub._stop_refreshing()
        if self._failure is None:
            self._ready.clear()
        self._lost(_close_error(ws), pending)

    def _lost(
        self, error: BaseException, pending: dict[int, _Handler] | None = None
    ) -> None:
        """Fail the commands in flight on a connection that is gone."""
        pending = self._pending if pending is None else pending
        handlers = list(pending.values())
        pending.clear()
        for handler in handlers:
            handler(None, error)

    def _fail(self, error: BaseException) -> None:
        """Stop for good: commands and subscriptions end with ``error``."""
        if self._failure is not None:
            return
        self._failure = error
        self._ready.set()  # wake the waiters, who find the failure
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            sub._end(None if _clean(error) else error)
        self._lost(error)

    def _on_message(self, ws: WebSocket, message: str | bytes) -> None:
        if ws is not self._ws:
            return
        try:
            msg = json.loads(message)
            if "id" in msg:
                handler = self._pending.pop(msg["id"], None)
                if handler is not None:
                    error = msg.get("error")
                    if error is not None:
                        handler(None, HubError(error["code"], error["message"]))
                    else:
                        handler(msg["result"], None)
            elif "channel" in msg:
                self._push(msg)
            elif "error" in msg:
                logger.warning("hub error: %s", msg["error"])
        except Exception:
            logger.exception("cannot handle a message from the hub: %.200r", message)

    def _push(self, msg: dict[str, Any]) -> None:
        if "subscribe" in msg:
            self._subscribed_by_hub(msg["channel"], msg["subscribe"])
            return
        sub = self._subs.get(msg["channel"])
        if sub is None:
            return
        if "pub" in msg:
            sub._live(msg["pub"])
        elif "position" in msg:
            sub._position(msg["position"])
        elif "unsubscribe" in msg:
            del self._subs[sub.channel]
            sub._end(None)
        elif "join" in msg and sub.on_join is not None:
            _call_safely(sub.on_join, _info(msg["join"]))
        elif "leave" in msg and sub.on_leave is not None:
            _call_safely(sub.on_leave, _info(msg["leave"]))

    def _subscribed_by_hub(self, channel: str, result: dict[str, Any]) -> None:
        """A ``subscribe`` push: the hub subscribed us to ``channel``, as
        the token or the application asked; ``result`` is as a subscribe
        reply's, with ``recovered`` when a position was given (connect's,
        or ``/api/subscribe``'s ``since``)."""
        self._announced.add(channel)
        sub = self._subs.get(channel)
        made = sub is None
        if sub is None:
            sub = self._subs[channel] = Subscription(self, channel)
        # One of ours the application subscribes us to as well is the hub's
        # from now on: the hub answers our own subscribe with 409.
        sub.server_side = True
        sub._subscribed_ok(result, "recovered" in result)
        if made and self.on_subscription is not None:
            _call_safely(self.on_subscription, sub)


def _info(raw: dict[str, Any]) -> ClientInfo:
    return ClientInfo(raw["client"], raw["user"], raw.get("info"))


def _publication(raw: dict[str, Any]) -> Publication:
    info = raw.get("info")
    return Publication(raw["offset"], raw.get("data"), _info(info) if info else None)


def _close_error(ws: WebSocket) -> ConnectionClosed:
    return ConnectionClosed(ws.close_code or 1006, ws.close_reason)


def _clean(error: BaseException) -> bool:
    return isinstance(error, ConnectionClosed) and error.code == 1000


def _ignore(result: Any, error: BaseException | None) -> None:
    pass


def _call_safely(callback: Callable[[Any], object], arg: Any) -> None:
    try:
        callback(arg)
    except Exception:
        logger.exception("error in a subscription callback")
