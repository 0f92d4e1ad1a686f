"""The broker interface: where a hub keeps channel state shared by its nodes.

A broker holds, per channel, the offset counter, the epoch, the history and
the presence table, and it carries publications between the nodes of a hub.
The memory broker keeps all of it in this process. A Redis broker maps each
method onto Redis so that many ``tidings serve`` processes act as one hub:

=====================  ===================================================
method                 Redis
=====================  ===================================================
``publish``            a Lua script: ``INCR`` the channel's offset, ``XADD``
                       the publication to the channel's stream (``MAXLEN``
                       history_size, ``EXPIRE`` history_ttl), ``PUBLISH``
                       it on the channel's pub/sub channel; one round trip,
                       atomic, so offsets are gap-free across nodes
``history``            ``XRANGE`` on the stream from ``since + 1``; the
                       epoch is a key set once with ``SET NX``
``subscribe``          ``SUBSCRIBE`` to the channel's pub/sub channel (once
                       per node, however many clients)
``unsubscribe``        ``UNSUBSCRIBE`` when the node's last client leaves
``add_presence``       ``HSET`` client -> info in the channel's presence
                       hash, with a per-entry expiry refreshed by the
                       keepalive (a sorted set of deadlines beside it)
``remove_presence``    ``HDEL``
``presence``           ``HGETALL``, skipping expired entries
=====================  ===================================================

Join and leave pushes travel as publications without an offset, so that
every node relays them to its own subscribers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Broker",
    "ChannelOptions",
    "ClientInfo",
    "HistoryResult",
    "Publication",
    "Push",
]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a client is: its connection id and user id (empty if anonymous)."""

    client: str
    user: str

    def to_json(self) -> dict[str, str]:
        """The form used on the wire."""
        return {"client": self.client, "user": self.user}


@dataclass(frozen=True, slots=True)
class Publication:
    """One message in a channel; ``offset`` orders it within the channel."""

    offset: int
    data: Any
    info: ClientInfo | None = None

    def to_json(self) -> dict[str, Any]:
        """The form used on the wire."""
        out: dict[str, Any] = {"offset": self.offset, "data": self.data}
        if self.info is not None:
            out["info"] = self.info.to_json()
        return out


@dataclass(frozen=True, slots=True)
class Push:
    """What a broker delivers to the nodes subscribed to a channel: a
    publication, or a join or leave."""

    channel: str
    publication: Publication | None = None
    join: ClientInfo | None = None
    leave: ClientInfo | None = None


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
    """What the broker needs to know about a channel's namespace."""

    history_size: int = 0
    history_ttl: float = 0.0


class Broker(ABC):
    """Channel state and fan-out between nodes; all methods are safe to call
    concurrently from one event loop."""

    @abstractmethod
    async def start(self, deliver: Callable[[Push], None]) -> None:
        """Begin delivering pushes for subscribed channels to ``deliver``."""

    @abstractmethod
    async def close(self) -> None:
        """Stop delivering and release resources."""

    @abstractmethod
    async def publish(
        self,
        channel: str,
        data: Any,
        options: ChannelOptions,
        info: ClientInfo | None = None,
    ) -> tuple[Publication, str]:
        """Give ``data`` the channel's next offset, keep it in the history
        and deliver it to every node subscribed; return it and the epoch."""

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
        latest offset."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This node has subscribers on ``channel``: deliver its pushes."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """This node has no more subscribers on ``channel``."""

    @abstractmethod
    async def add_presence(
        self, channel: str, info: ClientInfo, options: ChannelOptions
    ) -> None:
        """Record ``info`` as present on ``channel`` (refreshing its expiry)
        and announce the join."""

    @abstractmethod
    async def remove_presence(self, channel: str, info: ClientInfo) -> None:
        """Remove ``info`` from ``channel`` and announce the leave."""

    @abstractmethod
    async def presence(self, channel: str) -> list[ClientInfo]:
        """Who is present on ``channel``."""
