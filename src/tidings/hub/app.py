"""The hub: channels, presence, history and recovery over WebSocket, with an
HTTP API beside it. ``tidings serve`` runs one."""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from types import TracebackType
from typing import Any

from ..connection import WebSocket
from ..fanout import broadcast
from ..http import HTTPResponse
from ..protocol import Request
from ..server import Server, serve
from .api import handle_http
from .brokers.base import Broker, ChannelOptions, ClientInfo, HistoryResult, Push
from .brokers.memory import MemoryBroker
from .config import HubConfig, NamespaceConfig
from .metrics import Metrics
from .session import CLOSE_DISCONNECTED, CLOSE_SLOW, Session
from .wire import encode_push

__all__ = ["Hub"]


class Hub:
    """A real-time hub. ``async with Hub(config) as hub:`` serves it;
    ``hub.url`` is where. The in-process API (:meth:`publish`,
    :meth:`history`, :meth:`disconnect`...) is what the HTTP API calls."""

    def __init__(
        self, config: HubConfig | None = None, broker: Broker | None = None
    ) -> None:
        self.config = config or HubConfig()
        self.broker: Broker = broker or MemoryBroker()
        self.metrics = Metrics()
        self._subscribers: dict[str, dict[Session, None]] = {}
        self._sessions: set[Session] = set()
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> Hub:
        """Start the broker and listen."""
        config = self.config
        await self.broker.start(self._deliver)
        context = None
        if config.tls_cert is not None:
            context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
            context.load_cert_chain(config.tls_cert, config.tls_key)
        self._server = await serve(
            self._serve_session,
            config.host,
            config.port,
            ssl=context,
            process_request=self._process_request,
            max_body_size=config.max_message_size,
            # Larger than a command may be, so that an oversized one gets a
            # 413 reply and the connection stays usable.
            max_message_size=max(4 * config.max_message_size, 1 << 20),
            write_limit=config.max_outbound,
            max_connections=config.max_connections,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
        )
        if config.demo:
            from .feeds import run_report, run_ticker

            self._tasks += [
                asyncio.create_task(run_ticker(self)),
                asyncio.create_task(run_report(self)),
            ]
        return self

    async def close(self) -> None:
        """Close every connection with 1001 and stop."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._server is not None:
            self._server.close(1001, "hub shutting down")
            await self._server.wait_closed()
        await self.broker.close()

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

    # -- the in-process API ---------------------------------------------------

    def options(self, namespace: NamespaceConfig) -> ChannelOptions:
        """What the broker needs to know of a namespace."""
        return ChannelOptions(namespace.history_size, namespace.history_ttl)

    async def publish(
        self, channel: str, data: Any, info: ClientInfo | None = None
    ) -> tuple[int, str]:
        """Publish ``data`` to ``channel``; return its offset and the epoch.
        Raises KeyError for a channel in an unknown namespace."""
        namespace = self.config.namespace(channel)
        if namespace is None:
            raise KeyError(channel)
        publication, epoch = await self.broker.publish(
            channel, data, self.options(namespace), info
        )
        self.metrics.publications += 1
        return publication.offset, epoch

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
        return {channel: len(subs) for channel, subs in self._subscribers.items()}

    def subscriber_count(self, channel: str) -> int:
        """Subscribers of ``channel`` on this node."""
        return len(self._subscribers.get(channel, ()))

    def connection_count(self) -> int:
        """Clients connected to this node."""
        return len(self._sessions)

    def disconnect(self, user: str) -> int:
        """Close every connection of ``user`` with 4003; return how many."""
        doomed = [
            s for s in self._sessions if s.info is not None and s.info.user == user
        ]
        for session in doomed:
            session.close(CLOSE_DISCONNECTED, "disconnected")
        return len(doomed)

    def metrics_text(self) -> str:
        """The metrics in Prometheus text format."""
        return self.metrics.render(
            connections=len(self._sessions),
            subscriptions=sum(len(s) for s in self._subscribers.values()),
            channels=len(self._subscribers),
        )

    # -- sessions ----------------------------------------------------------------

    async def _serve_session(self, ws: WebSocket) -> None:
        await Session(self, ws).run()

    def session_connected(self, session: Session) -> None:
        """A session sent connect."""
        self._sessions.add(session)

    async def session_ended(self, session: Session) -> None:
        """A session's connection closed: leave everything."""
        self._sessions.discard(session)
        for channel in list(session.subscriptions):
            await self.unsubscribe(session, channel)

    async def subscribe(
        self,
        session: Session,
        channel: str,
        namespace: NamespaceConfig,
        since: tuple[int, str] | None,
    ) -> HistoryResult:
        """Add ``session`` to ``channel``'s subscribers and read the channel's
        position (and what was missed after ``since``)."""
        subscribers = self._subscribers.setdefault(channel, {})
        first = not subscribers
        subscribers[session] = None
        session.subscriptions.add(channel)
        options = self.options(namespace)
        try:
            if first:
                await self.broker.subscribe(channel)
            if since is not None:
                result = await self.broker.history(channel, options, since=since[0])
            else:
                result = await self.broker.history(channel, options, limit=0)
            if namespace.presence:
                assert session.info is not None
                await self.broker.add_presence(channel, session.info, options)
        except BaseException:
            await self.unsubscribe(session, channel)
            raise
        return result

    async def unsubscribe(self, session: Session, channel: str) -> None:
        """Remove ``session`` from ``channel``."""
        session.subscriptions.discard(channel)
        session.recovering.pop(channel, None)
        subscribers = self._subscribers.get(channel)
        if subscribers is None or session not in subscribers:
            return
        del subscribers[session]
        namespace = self.config.namespace(channel)
        if namespace is not None and namespace.presence and session.info is not None:
            await self.broker.remove_presence(channel, session.info)
        if not subscribers:
            del self._subscribers[channel]
            await self.broker.unsubscribe(channel)

    def _deliver(self, push: Push) -> None:
        """Fan a push out to this node's subscribers, framed once."""
        subscribers = self._subscribers.get(push.channel)
        if not subscribers:
            return
        offset: int | None = None
        if push.publication is not None:
            offset = push.publication.offset
            text = encode_push(push.channel, "pub", push.publication.to_json())
        else:
            namespace = self.config.namespace(push.channel)
            if namespace is None or not namespace.join_leave:
                return
            kind, info = (
                ("join", push.join) if push.join is not None else ("leave", push.leave)
            )
            assert info is not None
            text = encode_push(push.channel, kind, info.to_json())
        ready = []
        for session in subscribers:
            held = session.recovering.get(push.channel) if session.recovering else None
            if held is not None:
                held.append((offset, text))
            else:
                ready.append(session.ws)
        self.metrics.deliveries += broadcast(ready, text, on_slow=self.drop_slow)

    def drop_slow(self, ws: WebSocket) -> None:
        """Drop a client whose outbound queue overflowed (close 4005)."""
        self.metrics.dropped_slow += 1
        ws.drop(CLOSE_SLOW, "too slow: reconnect and recover")

    # -- HTTP --------------------------------------------------------------------

    async def _process_request(self, request: Request) -> HTTPResponse | None:
        return await handle_http(self, request)
