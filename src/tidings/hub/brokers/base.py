"""The broker interface: what the nodes of a hub share.

A hub is one or more nodes (``tidings serve`` processes). Each node owns its
own clients: their sessions, which channels they subscribe to, and the
framing of pushes to them. The broker owns what the nodes share:

- per channel, the offset counter, the epoch and the history;
- the presence table, whose entries expire unless the node holding the
  client refreshes them;
- fan-out: a publication made on any node reaches every node with
  subscribers on its channel, in offset order;
- control: messages to every node (disconnect a user, surveys);
- the list of live nodes, kept by their heartbeats.

Each node has its own broker object. :class:`~.memory.MemoryBroker` keeps
everything in this process (several nodes in one process may share a
:class:`~.memory.MemoryBackend`); :class:`~.redis.RedisBroker` maps each
method onto Redis, as docs/scaling.md describes.

Publication data crosses the broker as JSON bytes, encoded once where the
publication entered the hub; no node decodes or re-encodes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from ...exceptions import TidingsError

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "ChannelOptions",
    "ClientInfo",
    "HistoryResult",
    "NodeEvents",
    "OutcomeUnknown",
    "PresenceStats",
    "Publication",
    "Push",
]


class BrokerUnavailable(TidingsError):
    """The broker cannot be reached, or too many calls are waiting for it.

    The hub answers 503 (error 503 on the wire protocol); the caller may
    retry later. Clients stay connected meanwhile.
    """


class OutcomeUnknown(BrokerUnavailable):
    """A publish reached the broker, or may have, and no answer came back:
    it may have been made, or may be made once the broker recovers.

    The hub answers 504 (error 504 on the wire protocol): a retry with the
    same idempotency key is safe; without one, look at the channel's history
    before publishing again, or a retry may publish twice.
    """


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a client is: its connection id, user id (empty if anonymous),
    and ``info``, any JSON the application gave it (a name, an avatar),
    which does not take part in comparisons."""

    client: str
    user: str
    info: Any = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The form used on the wire."""
        if self.info is None:
            return {"client": self.client, "user": self.user}
        return {"client": self.client, "user": self.user, "info": self.info}


class PresenceStats(NamedTuple):
    """How many are present on a channel: connections, and distinct users
    among them (the anonymous user ``""`` counts as one)."""

    clients: int
    users: int


@dataclass(frozen=True, slots=True)
class Publication:
    """One message of a channel's history; ``offset`` orders it within the
    channel, and ``data`` is its JSON encoding (UTF-8)."""

    offset: int
    data: bytes
    info: ClientInfo | None = None


@dataclass(frozen=True, slots=True)
class Push:
    """What the broker delivers to a node for one of its channels.

    - ``pub``: a publication, at ``offset`` in ``epoch``, with ``data``
      (JSON bytes) and ``info`` (who published it, if a client did).
    - ``join`` and ``leave``: ``info`` entered or left the channel's
      presence.
    - ``position``: the channel is at ``offset`` in ``epoch``. Sent after
      the broker was unreachable, when publications may have been missed:
      a subscriber that is behind, or in another epoch, must recover.
    """

    channel: str
    kind: Literal["pub", "join", "leave", "position"]
    epoch: str = ""
    offset: int = 0
    data: bytes = b"null"
    info: ClientInfo | None = None


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """A channel's position, and publications after the asked offset.

    ``complete`` is false when the history no longer reaches back to the
    asked offset (then ``publications`` is empty: never a partial list).
    """

    epoch: str
    offset: int
    publications: list[Publication] = field(default_factory=list)
    complete: bool = True


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """What the broker needs to know about a channel's namespace, and how
    long it remembers a publish's idempotency key (0: not at all)."""

    history_size: int = 0
    history_ttl: float = 0.0
    idempotency_window: float = 0.0


class NodeEvents(Protocol):
    """What a broker calls on the node it serves."""

    def on_push(self, push: Push) -> None:
        """A push for a channel this node subscribed to."""

    def on_control(self, message: dict[str, Any]) -> None:
        """A control message sent by any node (this one included)."""

    def on_reconnected(self) -> None:
        """The broker was unreachable and is back: what it keeps for this
        node (heartbeat, presence entries) may be gone; make it again."""


class Broker(ABC):
    """Channel state shared by the nodes of a hub, and fan-out between them.

    All methods are safe to call concurrently from one event loop. Those
    that need the broker's server raise :class:`BrokerUnavailable` while it
    is unreachable.
    """

    @abstractmethod
    async def start(self, node: str, events: NodeEvents) -> None:
        """Join the hub as node ``node``: deliver pushes and control
        messages to ``events`` from now on."""

    @abstractmethod
    async def close(self) -> None:
        """Leave the hub: stop delivering and release resources."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """The broker's state for ``/healthz``; ``"ok"`` is false while
        pushes cannot be delivered."""

    @abstractmethod
    async def publish(
        self,
        channel: str,
        data: bytes,
        options: ChannelOptions,
        info: ClientInfo | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[int, str]:
        """Give ``data`` (JSON bytes) the channel's next offset, keep it in
        the history and deliver it to every node subscribed; return the
        offset and the epoch.

        With ``idempotency_key``, and an ``idempotency_window`` in
        ``options``: when a publish with the same key on this channel was
        made within the window, in the channel's current epoch, by any node,
        publish nothing and return its offset and epoch. The check and the
        publish are one atomic step, so that of concurrent publishes with
        one key exactly one is made."""

    @abstractmethod
    async def history(
        self,
        channel: str,
        options: ChannelOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        """Publications after offset ``since`` (the newest ``limit`` when
        ``since`` is None), oldest first, with the channel's epoch and
        latest offset. Reading a channel gives it an epoch."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This node has subscribers on ``channel``: deliver its pushes.
        Returns once every later publication is sure to be delivered."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """This node has no more subscribers on ``channel``."""

    @abstractmethod
    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        """Record ``info`` as present on ``channel`` for ``ttl`` seconds and
        announce the join."""

    @abstractmethod
    async def refresh_presence(
        self, channel: str, infos: Sequence[ClientInfo], ttl: float
    ) -> None:
        """Keep the entries of ``infos`` on ``channel`` for ``ttl`` seconds
        from now, without announcing anything; entries the broker lost (a
        Redis restarted empty) are made again."""

    @abstractmethod
    async def remove_presence(self, channel: str, info: ClientInfo) -> None:
        """Remove ``info`` from ``channel`` and announce the leave."""

    @abstractmethod
    async def presence(self, channel: str) -> list[ClientInfo]:
        """Who is present on ``channel``; expired entries are left out."""

    @abstractmethod
    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients and users are present on ``channel``, without
        listing them: cheap however many there are."""

    @abstractmethod
    async def control(self, message: dict[str, Any]) -> None:
        """Send ``message`` (a JSON object) to every node, this one
        included."""

    @abstractmethod
    async def heartbeat(self, ttl: float) -> None:
        """Count this node as live for ``ttl`` seconds more."""

    @abstractmethod
    async def nodes(self) -> set[str]:
        """The nodes whose heartbeat has not expired."""
