"""The hub: channels, presence, history and recovery over WebSocket, with an
HTTP API beside it. ``tidings serve`` runs one node of it; nodes on one
broker act as one hub (docs/scaling.md)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import socket
import ssl as ssl_module
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..engine.broadcast import broadcast_many
from ..engine.connection import Message, WebSocket
from ..engine.http import HTTPResponse, HTTPStream
from ..engine.server import Server, serve
from ..protocol import DeflateConfig, Request
from . import demo
from .api import handle_http
from .auth import Tokens
from .brokers.base import (
    Broker,
    BrokerUnavailable,
    ChannelOptions,
    ClientInfo,
    HistoryResult,
    Push,
)
from .brokers.cluster import CLUSTER_SCHEMES
from .callables import CallableHooks, HookFunction
from .config import ConfigError, HubConfig, NamespaceConfig
from .hooks import Hooks
from .metrics import Metrics
from .operations import InProcessAPI
from .proxy import ProxyHooks
from .session import CLOSE_DISCONNECTED, CLOSE_SLOW, Outlet, Session
from .transports import EventStream
from .wire import encode_data, encode_pub, encode_push, parse_idempotency_key

if TYPE_CHECKING:
    from .mount import HubApp

__all__ = ["Hub"]

logger = logging.getLogger("tidings.hub")

_F = TypeVar("_F", bound=HookFunction)

#: Seconds a survey of the nodes (``/api/channels``, ``/api/disconnect``...)
#: waits for nodes that do not answer.
SURVEY_TIMEOUT = 2.0
#: What :meth:`Hub.listen_metrics`'s port answers.
METRICS_PATHS = ("/metrics", "/healthz")
#: permessage-deflate as the hub agrees to it: without context takeover
#: either way (RFC 7692 §7.1.1), a connection holds no compressor or
#: decompressor between messages (some 40 KiB each otherwise), and a
#: publication is compressed once for all its subscribers.
COMPRESSION = DeflateConfig(
    server_no_context_takeover=True, client_no_context_takeover=True
)
#: Bytes of pushes held for the end of a loop iteration (Hub.drain) before
#: they are delivered at once.
MAX_PENDING = 256 * 1024


def make_broker(config: HubConfig) -> Broker:
    """The broker ``config.broker`` names: ``memory``, a Redis URL or a
    Redis Cluster's."""
    if config.broker == "memory":
        from .brokers.memory import MemoryBackend, MemoryBroker

        return MemoryBroker(
            MemoryBackend(
                max_channels=config.max_channels,
                max_history_bytes=config.max_history_bytes,
            )
        )
    if config.broker.startswith(CLUSTER_SCHEMES):
        from .brokers.cluster import ClusterBroker

        return ClusterBroker(config.broker, password=config.broker_password)
    from .brokers.redis import RedisBroker

    return RedisBroker(config.broker, password=config.broker_password)


class _Local:
    """This node's side of one channel: its subscribers here, and whether
    the broker delivers the channel to this node."""

    __slots__ = (
        "epoch",
        "floors",
        "live",
        "lock",
        "offset",
        "refreshing",
        "split",
        "subscribers",
        "waiting",
    )

    def __init__(self) -> None:
        #: Each subscriber here, with its WebSocket (None for a fallback
        #: transport's session, which frames each push its own way).
        self.subscribers: dict[Session, WebSocket | None] = {}
        #: The subscribers as _split() divides them, until they change.
        self.split: tuple[list[WebSocket], list[Session]] | None = None
        #: The position of the last publication delivered here.
        self.epoch = ""
        self.offset = 0
        #: Sessions whose subscribe reply is ahead of what was delivered
        #: here (the broker's pushes may trail its reads): the publications
        #: up to that position, in that epoch, are not sent to them again.
        self.floors: dict[Session, tuple[str, int]] = {}
        #: Held around the node's first subscribe and last unsubscribe, so
        #: that no session reads the channel's position before the broker
        #: delivers it here.
        self.lock = asyncio.Lock()
        self.live = False
        self.waiting = 0
        #: Set while this node refreshes the channel's presence entries: a
        #: leave waits for it, or the refresh, reaching the broker after the
        #: leave, would make the entry again.
        self.refreshing: asyncio.Future[None] | None = None


class _Survey:
    """Answers from the nodes to one control question."""

    __slots__ = ("answers", "done", "expected")

    def __init__(self, expected: set[str]) -> None:
        self.expected = expected
        self.answers: dict[str, Any] = {}
        self.done = asyncio.Event()


class Hub:
    """A node of a real-time hub. ``async with Hub(config) as hub:`` serves
    it; ``hub.url`` is where. :meth:`api` is what the HTTP API calls;
    :meth:`publish`, :meth:`history` and :meth:`survey` are what it is made
    of.

    ``broker`` defaults to the one ``config.broker`` names; nodes given
    brokers on one backend (one Redis, or one
    :class:`~tidings.hub.brokers.memory.MemoryBackend`) act as one hub.
    """

    def __init__(
        self, config: HubConfig | None = None, broker: Broker | None = None
    ) -> None:
        self.config = config or HubConfig()
        self.broker: Broker = broker or make_broker(self.config)
        #: This node's name among the hub's nodes.
        self.node = secrets.token_hex(6)
        self.metrics = Metrics()
        #: Checks the tokens clients present.
        self.tokens = Tokens(self.config)
        #: What the hub asks the application (docs/integrate.md), if anything.
        self.hooks: Hooks | None = None
        self._api = InProcessAPI(self)
        if self.config.proxy.enabled:
            self.hooks = ProxyHooks(self.config.proxy, self.metrics)
        self._local: dict[str, _Local] = {}
        self._sessions: set[Session] = set()
        self._surveys: dict[str, _Survey] = {}
        #: Pushes of this loop iteration not yet delivered, by channel
        #: (:meth:`drain`): (epoch, offset or None, text).
        self._pending: dict[str, list[tuple[str, int | None, str]]] = {}
        self._pending_size = 0
        self._server: Server | None = None
        self._metrics_server: Server | None = None
        self._app: HubApp | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._working: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------

    async def start(
        self,
        *,
        listen: bool = True,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
    ) -> Hub:
        """Start the broker and listen. Raises ConfigError for a namespace
        whose subscribes or publishes the application decides, with no
        hook to ask.

        With ``listen=False`` the hub opens no socket of its own: it serves
        clients through :meth:`asgi`, inside an ASGI app's server. A worker
        of ``tidings serve --workers`` listens on ``sock``, inherited from
        its parent, or binds the configured port with ``reuse_port``."""
        config = self.config
        if config.demo and demo.hook_wanted(self.hooks):
            # The chat page's names, given as an application would give them.
            self.on_connect(demo.connect)
        for name, namespace in config.namespaces.items():
            for hook in ("subscribe", "publish"):
                asked = self.hooks is not None and self.hooks.enabled(hook)
                if getattr(namespace, f"{hook}_proxy") and not asked:
                    # Nobody to ask would refuse every one of them.
                    raise ConfigError(
                        f"namespaces.{name}.{hook}_proxy needs a {hook} hook: "
                        f"proxy.{hook} (a URL) or @hub.on_{hook}"
                    )
        await self.tokens.start()
        await self.broker.start(self.node, self)
        with contextlib.suppress(BrokerUnavailable):
            await self.broker.heartbeat(config.presence_ttl)
        context = None
        if listen and config.tls_cert is not None:  # mounted: the server's TLS
            context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
            context.load_cert_chain(config.tls_cert, config.tls_key)
        try:
            if listen:
                self._server = await serve(
                    None,
                    config.host,
                    config.port,
                    sock=sock,
                    reuse_port=reuse_port,
                    ssl=context,
                    process_request=self._process_request,
                    max_body_size=config.max_message_size,
                    # Larger than a command may be, so that an oversized one gets a
                    # 413 reply and the connection stays usable.
                    max_message_size=max(4 * config.max_message_size, 1 << 20),
                    write_limit=config.max_outbound,
                    max_connections=config.max_connections,
                    compression=COMPRESSION,
                    ping_interval=config.ping_interval,
                    ping_timeout=config.ping_timeout,
                    on_message=self._first_command,
                )
        except BaseException:
            await self.broker.close()
            raise
        self._tasks.append(asyncio.create_task(self._keep_alive()))
        if config.demo:
            from .feeds import run_report, run_ticker

            self._tasks += [
                asyncio.create_task(run_ticker(self)),
                asyncio.create_task(run_report(self)),
            ]
        return self

    async def close(self) -> None:
        """Close every connection with 1001 and stop, whatever a background
        task of the hub (a feed, the keepalive) may have raised."""
        self.drain()
        for task in self._tasks:
            task.cancel()
        ended = await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for outcome in ended:
            if isinstance(outcome, Exception):
                logger.error("a hub task had failed", exc_info=outcome)
        try:
            if self._app is not None:
                await self._app.close()
            if self._server is not None:
                self._server.close(1001, "hub shutting down")
                await self._server.wait_closed()
                await self._sessions_done(self._server.close_timeout)
            if self._metrics_server is not None:
                self._metrics_server.close()
                await self._metrics_server.wait_closed()
        finally:
            await self.tokens.close()
            await self.broker.close()
            if self.hooks is not None:
                await self.hooks.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """The hub started, without a socket of its own, for as long as an
        ASGI app runs: ``FastAPI(lifespan=hub.lifespan)`` or
        ``Starlette(lifespan=hub.lifespan)``; within an app's own lifespan
        function, ``async with hub.lifespan(app):``."""
        await self.start(listen=False)
        try:
            yield
        finally:
            await self.close()

    def asgi(self) -> HubApp:
        """The hub's endpoints (``/ws``, ``/sse``, ``/poll``, ``/command``,
        ``/api/...``, ``/healthz``, ``/metrics``, ``/tidings.js``) as an
        ASGI app, to mount: ``app.mount("/realtime", hub.asgi())``. The
        same app every call."""
        if self._app is None:
            from .mount import HubApp

            self._app = HubApp(self)
        return self._app

    async def listen_metrics(self, port: int) -> int:
        """Also answer ``/metrics`` and ``/healthz``, and nothing else, on
        ``port`` of the configured host (0 picks a free one); return the
        port. Each worker of ``tidings serve --workers`` does, so that a
        scraper can tell them apart (docs/scaling.md)."""

        async def answer(request: Request) -> HTTPResponse | HTTPStream | None:
            if request.path in METRICS_PATHS:
                return await handle_http(self, request)
            return HTTPResponse(404, "this port serves /metrics and /healthz only")

        self._metrics_server = await serve(
            None,
            self.config.host,
            port,
            process_request=answer,
            on_message=self._first_command,
        )
        assert self._metrics_server.port is not None
        return self._metrics_server.port

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> Hub:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port listened on."""
        assert self._server is not None and self._server.port is not None
        return self._server.port

    @property
    def url(self) -> str:
        """The demo page's address, e.g. ``http://127.0.0.1:8000/``."""
        scheme = "https" if self.config.tls_cert else "http"
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint, e.g. ``ws://127.0.0.1:8000/ws``."""
        scheme, _, rest = self.url.partition(":")
        return ("wss" if scheme == "https" else "ws") + ":" + rest + "ws"

    async def _keep_alive(self) -> None:
        """Refresh this node's heartbeat and its clients' presence entries,
        three times per ``presence_ttl``, so that they outlive a missed
        refresh but not this node."""
        while True:
            await asyncio.sleep(self.config.presence_ttl / 3)
            await self._refresh()

    async def _refresh(self) -> None:
        """Refresh this node's heartbeat and presence entries once."""
        ttl = self.config.presence_ttl
        try:
            await self.broker.heartbeat(ttl)
            for channel, local in list(self._local.items()):
                namespace = self.config.namespace(channel)
                if namespace is None or not namespace.presence:
                    continue
                infos = [
                    info
                    for s in local.subscribers
                    if (info := s.info_for(channel)) is not None and s.present
                ]
                if infos:
                    local.refreshing = asyncio.get_running_loop().create_future()
                    try:
                        await self.broker.refresh_presence(channel, infos, ttl)
                    finally:
                        local.refreshing.set_result(None)
                        local.refreshing = None
        except BrokerUnavailable as exc:
            logger.debug("presence refresh postponed: %s", exc)

    # -- hooks in Python ----------------------------------------------------

    def on_connect(self, function: _F) -> _F:
        """Decorate an ``async def`` that decides connects without a token:
        it gets a :class:`~tidings.hub.hooks.HookContext` and returns a
        :class:`~tidings.hub.hooks.Connect` (docs/integrate.md)."""
        return self._on("connect", function)

    def on_refresh(self, function: _F) -> _F:
        """Decorate an ``async def`` asked at a hooked connection's
        ``expire_at``; it returns a :class:`~tidings.hub.hooks.Refresh`."""
        return self._on("refresh", function)

    def on_subscribe(self, function: _F) -> _F:
        """Decorate an ``async def`` that decides subscribes in namespaces
        with ``subscribe_proxy``; it returns a
        :class:`~tidings.hub.hooks.Subscribe`."""
        return self._on("subscribe", function)

    def on_publish(self, function: _F) -> _F:
        """Decorate an ``async def`` that decides publishes in namespaces
        with ``publish_proxy``; it returns a
        :class:`~tidings.hub.hooks.Publish`."""
        return self._on("publish", function)

    def on_rpc(self, function: _F) -> _F:
        """Decorate an ``async def`` that answers the ``rpc`` command with
        any JSON value."""
        return self._on("rpc", function)

    def _on(self, hook: str, function: _F) -> _F:
        hooks = self.hooks
        if hooks is None:
            hooks = self.hooks = CallableHooks(self.config.proxy.timeout)
        if not isinstance(hooks, CallableHooks):
            raise ConfigError(
                "this hub asks its application over HTTP ([proxy]): give it "
                "hooks in Python or endpoints, not both"
            )
        hooks.register(hook, function)
        return function

    # -- the in-process API ---------------------------------------------------

    def api(self) -> InProcessAPI:
        """The HTTP API's operations in this process, with typed answers
        (the same methods as :class:`tidings.AsyncHubAPI`): ``await
        hub.api().publish(channel, data)``. In a FastAPI view,
        ``api: InProcessAPI = Depends(hub.api)``."""
        return self._api

    def options(self, namespace: NamespaceConfig) -> ChannelOptions:
        """What the broker needs to know of a namespace."""
        return ChannelOptions(
            namespace.history_size,
            namespace.history_ttl,
            self.config.idempotency_window,
        )

    async def publish(
        self,
        channel: str,
        data: Any,
        info: ClientInfo | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[int, str]:
        """Publish ``data`` (any JSON value) to ``channel``; return its
        offset and the epoch. With ``idempotency_key`` (1 to 64 printable
        characters), a publish that repeats the key of one made on the
        channel within ``idempotency_window``, on any node, publishes nothing
        and returns that one's offset and epoch. Raises KeyError for a
        channel in an unknown namespace, ``tidings.hub.wire.CommandError``
        (400) for data JSON cannot carry or an invalid key, and
        :class:`~tidings.hub.brokers.base.BrokerUnavailable`."""
        namespace = self.config.namespace(channel)
        if namespace is None:
            raise KeyError(channel)
        offset, epoch = await self.broker.publish(
            channel,
            encode_data(data),
            self.options(namespace),
            info,
            idempotency_key=parse_idempotency_key(idempotency_key),
        )
        self.metrics.publications += 1
        return offset, epoch

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryResult:
        """The channel's position and kept publications (see Broker.history)."""
        namespace = self.config.namespace(channel)
        if namespace is None:
            raise KeyError(channel)
        return await self.broker.history(
            channel, self.options(namespace), since=since, limit=limit
        )

    def channels(self) -> dict[str, int]:
        """Channels with subscribers on this node, and how many."""
        return {
            channel: len(local.subscribers)
            for channel, local in self._local.items()
            if local.subscribers
        }

    def subscriber_count(self, channel: str) -> int:
        """Subscribers of ``channel`` on this node."""
        local = self._local.get(channel)
        return 0 if local is None else len(local.subscribers)

    def connection_count(self) -> int:
        """Clients connected to this node."""
        return len(self._sessions)

    def full(self) -> bool:
        """Whether this node refuses new clients (WebSocket, event stream or
        poll) with 503: ``max_connections`` reached. The HTTP API, health
        and metrics are answered all the same."""
        most = self.config.max_connections
        return most is not None and len(self._sessions) >= most

    def disconnect(self, user: str) -> int:
        """Close every connection of ``user`` to this node with 4003; return
        how many. :meth:`survey` ``("disconnect", user=...)`` does it on
        every node."""
        doomed = [
            s for s in self._sessions if s.info is not None and s.info.user == user
        ]
        for session in doomed:
            session.close(CLOSE_DISCONNECTED, "disconnected")
        return len(doomed)

    def unsubscribe_user(self, user: str, channel: str) -> int:
        """Unsubscribe every connection of ``user`` to this node from
        ``channel``, telling each with an ``unsubscribe`` push; return how
        many."""
        local = self._local.get(channel)
        if local is None:
            return 0
        doomed = [
            s for s in local.subscribers if s.info is not None and s.info.user == user
        ]
        for session in doomed:
            self.expel(session, channel)
        return len(doomed)

    async def subscribe_user(
        self, user: str, channel: str, since: tuple[int, str] | None = None
    ) -> int:
        """Subscribe every connection of ``user`` to this node to
        ``channel``, telling each with a ``subscribe`` push that recovers
        from ``since`` when given; return how many. Connections subscribed
        already are left as they are and not counted, and so are long-polls
        and commands' POSTs, which hold no connection. :meth:`survey`
        ``("subscribe", user=..., channel=..., since=...)`` does it on
        every node."""
        sessions = [
            s
            for s in self._sessions
            if s.present and s.info is not None and s.info.user == user
        ]
        made = await asyncio.gather(
            *(s.subscribe_by_hub(channel, since) for s in sessions),
            return_exceptions=True,
        )
        for outcome in made:
            if isinstance(outcome, BaseException):
                logger.info(
                    "server-side subscription to %s failed: %s", channel, outcome
                )
        return sum(outcome is True for outcome in made)

    def unsubscribe_stream(self, client: str, channel: str) -> int:
        """Unsubscribe the event stream of fallback client ``client``
        (hub/transports.py) from ``channel`` if this node serves it, telling
        it with an ``unsubscribe`` push; return how many (0 or 1)."""
        session = self._stream(client, channel)
        if session is None:
            return 0
        self.expel(session, channel)
        return 1

    def refresh_stream(
        self, client: str, channel: str, user: str, expires: float
    ) -> int | None:
        """Extend to ``expires`` the subscription to ``channel`` that a
        channel token of ``user`` allowed the event stream of fallback
        client ``client`` (a ``sub_refresh`` over ``POST /command``), if
        this node serves it; return its ``ttl``, or None."""
        session = self._stream(client, channel)
        if (
            session is None
            or channel not in session.granted
            or session.info is None
            or session.info.user != user
        ):
            return None
        return session.grant(channel, expires)

    def _stream(self, client: str, channel: str) -> Session | None:
        """The event stream of fallback client ``client`` on ``channel``, if
        this node serves it."""
        local = self._local.get(channel)
        if local is None:
            return None
        for session in local.subscribers:
            info = session.info
            if (
                isinstance(session.ws, EventStream)
                and info is not None
                and info.client == client
            ):
                return session
        return None

    def expel(self, session: Session, channel: str) -> None:
        """Unsubscribe ``session`` from ``channel`` on the hub's initiative,
        telling it with an ``unsubscribe`` push."""
        was_subscriber = self._leave(session, channel)
        session.send(encode_push(channel, "unsubscribe", {}))
        self._spawn(self._left(session, channel, was_subscriber))

    async def survey(self, op: str, **args: Any) -> list[Any]:
        """Ask every node of the hub (this one included) to do ``op``
        (``channels``, ``disconnect``, ``subscribe``, ``unsubscribe``,
        ``unsubscribe_stream`` or ``refresh_stream``) and return their
        answers; a node that does not answer within ``SURVEY_TIMEOUT``
        seconds is left out."""
        expected = await self.broker.nodes() | {self.node}
        id = secrets.token_hex(8)
        survey = self._surveys[id] = _Survey(expected)
        try:
            await self.broker.control(
                {"survey": id, "from": self.node, "op": op, "args": args}
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SURVEY_TIMEOUT):
                    await survey.done.wait()
        finally:
            del self._surveys[id]
        return list(survey.answers.values())

    def metrics_text(self) -> str:
        """The metrics in Prometheus text format."""
        return self.metrics.render(
            connections=len(self._sessions),
            subscriptions=sum(len(local.subscribers) for local in self._local.values()),
            channels=sum(1 for local in self._local.values() if local.subscribers),
            broker_up=bool(self.broker.status().get("ok")),
        )

    # -- sessions ----------------------------------------------------------------

    def _first_command(self, ws: WebSocket, message: Message) -> None:
        """The first message of a WebSocket: its session begins, and takes
        the messages that follow (Session.take)."""
        session = Session(self, ws)
        session.take(ws)
        session.received(ws, message)

    def working(self, task: asyncio.Task[None]) -> None:
        """``task`` handles a session's commands, or its end: the hub's
        close waits for it."""
        self._working.add(task)
        task.add_done_callback(self._working.discard)

    async def _sessions_done(self, timeout: float) -> None:
        """Wait for the sessions' tasks, their cleanup after the close of
        every connection included; cancel those still running after
        ``timeout`` seconds."""
        if self._working:
            _, pending = await asyncio.wait(self._working, timeout=timeout)
            for task in pending:
                task.cancel()

    def session_connected(self, session: Session) -> None:
        """A session sent connect."""
        self._sessions.add(session)

    async def session_ended(self, session: Session) -> None:
        """A session's connection closed: leave everything."""
        self._sessions.discard(session)
        for channel in list(session.subscriptions):
            try:
                await self.unsubscribe(session, channel)
            except BrokerUnavailable as exc:
                # Its presence entries expire without the refresh.
                logger.debug("leaving %s: %s", channel, exc)

    async def subscribe(
        self,
        session: Session,
        channel: str,
        namespace: NamespaceConfig,
        since: tuple[int, str] | None,
    ) -> HistoryResult:
        """Add ``session`` to ``channel``'s subscribers and read the channel's
        position (and what was missed after ``since``)."""
        local = self._local.get(channel)
        if local is None:
            local = self._local[channel] = _Local()
        session.subscriptions.add(channel)
        options = self.options(namespace)
        try:
            local.waiting += 1
            try:
                async with local.lock:
                    if not local.live:
                        await self.broker.subscribe(channel)
                        local.live = True
                    # From here on every publication reaches the session
                    # (held until the reply): the position read next is
                    # never ahead of what it will receive. What came
                    # before goes to the others first.
                    self.drain()
                    ws = session.ws
                    local.subscribers[session] = (
                        ws if isinstance(ws, WebSocket) else None
                    )
                    local.split = None
            finally:
                local.waiting -= 1
            if since is not None:
                result = await self.broker.history(channel, options, since=since[0])
            else:
                result = await self.broker.history(channel, options, limit=0)
            if namespace.presence and session.present:
                info = session.info_for(channel)
                assert info is not None
                await self.broker.add_presence(channel, info, self.config.presence_ttl)
        except BaseException:
            await self.unsubscribe(session, channel)
            raise
        return result

    def subscribed(
        self, session: Session, channel: str, epoch: str, offset: int
    ) -> None:
        """``session``'s subscribe reply, at ``offset`` in ``epoch``, was
        sent: it must get what follows, and nothing it covered."""
        local = self._local.get(channel)
        if local is None or session not in local.subscribers:
            return
        local.split = None  # its pushes are no longer held
        if local.epoch != epoch or local.offset < offset:
            local.floors[session] = (epoch, offset)

    async def unsubscribe(self, session: Session, channel: str) -> None:
        """Remove ``session`` from ``channel``."""
        await self._left(session, channel, self._leave(session, channel))

    def _leave(self, session: Session, channel: str) -> bool:
        """Stop delivering ``channel`` to ``session`` (now, before any other
        push); return whether it was a subscriber."""
        self.drain()  # what came before it left reaches it
        session.subscriptions.discard(channel)
        session.stop_holding(channel)
        session.forget_info(channel)
        session.ungrant(channel)
        local = self._local.get(channel)
        if local is None or session not in local.subscribers:
            return False
        del local.subscribers[session]
        local.split = None
        local.floors.pop(session, None)
        return True

    async def _left(self, session: Session, channel: str, was_subscriber: bool) -> None:
        """What follows :meth:`_leave` through the broker: the presence
        entry, and the node's broker subscription after its last
        subscriber."""
        namespace = self.config.namespace(channel)
        local = self._local.get(channel)
        if (
            was_subscriber
            and namespace is not None
            and namespace.presence
            and session.present
        ):
            assert session.info is not None
            if local is not None and local.refreshing is not None:
                await asyncio.wait([local.refreshing])
            await self.broker.remove_presence(channel, session.info)
        local = self._local.get(channel)
        if local is None or local.subscribers or local.waiting:
            return
        async with local.lock:
            if local.live and not local.subscribers and not local.waiting:
                local.live = False
                await self.broker.unsubscribe(channel)
            if not local.live and not local.subscribers and not local.waiting:
                self._local.pop(channel, None)

    # -- what the broker delivers ------------------------------------------------

    def on_push(self, push: Push) -> None:
        """Fan a push out to this node's subscribers, framed once (called by
        the broker)."""
        local = self._local.get(push.channel)
        if local is None or not local.subscribers:
            return
        offset: int | None = None
        kind = push.kind
        if kind == "pub":
            offset = push.offset
            local.epoch, local.offset = push.epoch, offset
            text = encode_pub(push.channel, push.epoch, offset, push.data, push.info)
        elif kind == "position":
            text = encode_push(
                push.channel, kind, {"offset": push.offset, "epoch": push.epoch}
            )
        else:
            namespace = self.config.namespace(push.channel)
            if namespace is None or not namespace.join_leave or push.info is None:
                return
            text = encode_push(push.channel, kind, push.info.to_json())
        pending = self._pending
        if not pending:
            asyncio.get_running_loop().call_soon(self.drain)
        waiting = pending.get(push.channel)
        if waiting is None:
            waiting = pending[push.channel] = []
        waiting.append((push.epoch, offset, text))
        self._pending_size += len(text)
        if self._pending_size > MAX_PENDING:
            # A publisher that never yields: deliver as it goes, so that
            # memory stays bounded and slow clients are found in time.
            self.drain()

    def drain(self) -> None:
        """Deliver the pushes that came in this loop iteration, each
        channel's together: one step per subscriber however many there are,
        as the engine corks a burst into one write per connection. Done
        before anything that could tell the difference (a reply or push
        sent to a session, a subscriber added or gone, a close): each
        session sees what it would have seen had every push gone out as it
        came."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        self._pending_size = 0
        for channel, pushes in pending.items():
            local = self._local.get(channel)
            if local is not None and local.subscribers:
                self._deliver(channel, local, pushes)

    def _deliver(
        self, channel: str, local: _Local, pushes: list[tuple[str, int | None, str]]
    ) -> None:
        texts = [text for _, _, text in pushes]
        # The publications each session's subscribe reply covered (rare:
        # only around a subscribe), in the order the pushes came.
        covered: list[set[Session]] | None = None
        if local.floors:
            covered = [
                set() if offset is None else _covered(local.floors, epoch, offset)
                for epoch, offset, _ in pushes
            ]
            ready, special = _split(channel, local, set().union(*covered))
        else:
            # Kept while the subscribers stay as they are: walking them
            # costs a step per subscriber of every publication.
            if local.split is None:
                local.split = _split(channel, local, set())
            ready, special = local.split
        for session in special:
            held = session.recovering.get(channel)
            if held is not None:
                held.extend((offset, text) for _, offset, text in pushes)
                continue
            mine = texts
            if covered is not None:
                mine = [
                    text
                    for text, skip in zip(texts, covered, strict=True)
                    if session not in skip
                ]
            ws = session.ws
            if isinstance(ws, WebSocket):
                sent = broadcast_many([ws], mine, on_slow=self.drop_slow)
                self.metrics.deliveries += sent * len(mine)
            else:
                for text in mine:  # a fallback frames each push its own way
                    session.send(text)
        sent = broadcast_many(ready, texts, on_slow=self.drop_slow)
        self.metrics.deliveries += sent * len(texts)

    def on_control(self, message: dict[str, Any]) -> None:
        """A control message from a node (called by the broker)."""
        if "answer" in message:
            survey = self._surveys.get(message["answer"])
            if survey is not None and message.get("to") == self.node:
                survey.answers[message["node"]] = message["result"]
                if survey.expected <= survey.answers.keys():
                    survey.done.set()
            return
        op, args = message.get("op"), message.get("args", {})
        try:
            if op == "channels":
                result: Any = self.channels()
            elif op == "disconnect":
                result = self.disconnect(args["user"])
            elif op == "subscribe":
                since = args.get("since")
                if since is not None:  # as JSON carried it: [offset, epoch]
                    since = (int(since[0]), str(since[1]))
                result = self.subscribe_user(args["user"], args["channel"], since)
            elif op == "unsubscribe":
                result = self.unsubscribe_user(args["user"], args["channel"])
            elif op == "unsubscribe_stream":
                result = self.unsubscribe_stream(args["client"], args["channel"])
            elif op == "refresh_stream":
                result = self.refresh_stream(
                    args["client"], args["channel"], args["user"], args["expires"]
                )
            else:
                raise ValueError(op)
        except (KeyError, TypeError, ValueError):
            logger.warning("invalid control message %.200r", message)
            return
        self._spawn(self._answer(message, result))

    async def _answer(self, message: dict[str, Any], result: Any) -> None:
        """Answer a node's survey with ``result``, once it is done."""
        if inspect.isawaitable(result):
            result = await result
        answer = {
            "answer": message["survey"],
            "to": message["from"],
            "node": self.node,
            "result": result,
        }
        await self.broker.control(answer)

    def on_reconnected(self) -> None:
        """The broker is back after an outage (called by the broker)."""
        self._spawn(self._refresh())

    def _spawn(self, coroutine: Any) -> None:
        """Run ``coroutine`` in the background; log its failure."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("hub background task failed: %s", task.exception())

    def drop_slow(self, ws: Outlet) -> None:
        """Drop a client whose outbound queue overflowed (close 4005)."""
        self.metrics.dropped_slow += 1
        ws.drop(CLOSE_SLOW, "too slow: reconnect and recover")

    # -- HTTP --------------------------------------------------------------------

    async def _process_request(
        self, request: Request
    ) -> HTTPResponse | HTTPStream | None:
        return await handle_http(self, request)


def _split(
    channel: str, local: _Local, skipped: set[Session]
) -> tuple[list[WebSocket], list[Session]]:
    """The WebSockets of ``channel``'s subscribers here that take its pushes
    as they come, and the other subscribers: those whose subscribe reply is
    not sent yet (their pushes are held), those in ``skipped``, and those on
    a fallback transport."""
    ready = []
    special = []
    for session, ws in local.subscribers.items():
        if ws is None or channel in session.recovering or session in skipped:
            special.append(session)
        else:
            ready.append(ws)
    return ready, special


def _covered(
    floors: dict[Session, tuple[str, int]], epoch: str, offset: int
) -> set[Session]:
    """The sessions whose subscribe reply covered the publication at
    ``offset`` in ``epoch``; floors that later publications pass are
    dropped."""
    covered = set()
    for session, (floor_epoch, floor) in list(floors.items()):
        if floor_epoch == epoch and offset <= floor:
            covered.add(session)
        if floor_epoch != epoch or offset >= floor:
            del floors[session]
    return covered
