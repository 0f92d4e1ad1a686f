"""The memory broker: one process, nothing else to run. The default.

Several nodes in one process can share a :class:`MemoryBackend` (one
:class:`MemoryBroker` each), which behaves as one Redis would for them: the
hub's test suite runs "three nodes in one process" that way.
"""

from __future__ import annotations

import asyncio
import heapq
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from .base import (
    Broker,
    ChannelOptions,
    ClientInfo,
    HistoryResult,
    NodeEvents,
    PresenceStats,
    Publication,
    Push,
)

__all__ = ["MemoryBackend", "MemoryBroker"]

#: Seconds between sweeps that forget idle channels.
SWEEP_INTERVAL = 60.0

#: Bytes a kept publication costs beyond its data (its objects): counted
#: against ``max_history_bytes``, so that tiny publications are not free.
PUBLICATION_OVERHEAD = 200

#: Idempotency keys remembered at once, on all channels together: beyond,
#: the oldest are forgotten first, and a repeat of one publishes again.
#: (About 400 bytes each: at most some 40 MB.)
MAX_IDEMPOTENCY_KEYS = 100_000

#: Channels looked at, least recently published first, for one to forget
#: when there are ``max_channels``; all of them in use lets the count grow
#: (subscriptions have their own budgets).
_EVICTION_SCAN = 64


class _Channel:
    __slots__ = (
        "bytes",
        "deadlines",
        "epoch",
        "history",
        "history_ttl",
        "keyed",
        "offset",
        "presence",
        "users",
    )

    def __init__(self) -> None:
        # A new epoch for every new channel: state lost with a restart, or
        # forgotten by a sweep, can never be mistaken for the old one.
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        #: (when, publication, what it costs)
        self.history: deque[tuple[float, Publication, int]] = deque()
        #: client id -> (who, when the entry expires)
        self.presence: dict[str, tuple[ClientInfo, float]] = {}
        #: A heap of (deadline, client id), one per entry made or extended,
        #: so that expiry looks only at what is due; those superseded by a
        #: later deadline, or removed, are skipped when they come up.
        self.deadlines: list[tuple[float, str]] = []
        #: user -> how many of the entries are that user's: counted as they
        #: come and go, so that presence_stats lists nothing.
        self.users: dict[str, int] = {}
        self.history_ttl = 0.0
        #: What the history costs, as counted against max_history_bytes.
        self.bytes = 0
        #: Idempotency keys remembered for publications of this channel.
        self.keyed = 0


class MemoryBackend:
    """The state that the nodes sharing it see as one hub: channels, and
    which node is subscribed to what.

    Two budgets bound its memory, whatever clients do. Beyond
    ``max_channels`` channels, the least recently published one that no node
    is subscribed to and nobody is present in is forgotten. Beyond
    ``max_history_bytes`` of kept publications, the least recently published
    channels lose their history. Either way a client that asks to recover
    from there is told that recovery failed. Beyond ``max_idempotency_keys``
    idempotency keys, the oldest are forgotten.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_channels: int = 100_000,
        max_history_bytes: int = 256 << 20,
        max_idempotency_keys: int = MAX_IDEMPOTENCY_KEYS,
    ) -> None:
        self.clock = clock
        self.max_channels = max_channels
        self.max_history_bytes = max_history_bytes
        self.max_idempotency_keys = max_idempotency_keys
        #: (channel, idempotency key) -> when it is forgotten, the offset of
        #: the publication made with it, and the channel's state then (its
        #: epoch: a channel forgotten and made again is another), oldest
        #: first. (An OrderedDict: a dict emptied from the front finds its
        #: first item in time that grows with what was removed before it.)
        self.keys: OrderedDict[tuple[str, str], tuple[float, int, _Channel]] = (
            OrderedDict()
        )
        #: Least recently published first.
        self.channels: dict[str, _Channel] = {}
        #: The channels with a history, least recently published first,
        #: and what their histories cost together.
        self.histories: dict[str, _Channel] = {}
        self.history_bytes = 0
        #: node -> its events, while started
        self.events: dict[str, NodeEvents] = {}
        #: channel -> nodes subscribed to it
        self.subscribed: dict[str, set[str]] = {}
        #: node -> when its heartbeat expires
        self.heartbeats: dict[str, float] = {}
        self._next_sweep = clock() + SWEEP_INTERVAL

    def channel(self, name: str) -> _Channel:
        channel = self.channels.get(name)
        if channel is None:
            if len(self.channels) >= self.max_channels:
                self._forget_a_channel()
            channel = self.channels[name] = _Channel()
        return channel

    def keep(self, name: str, state: _Channel, publication: Publication) -> None:
        """Add ``publication`` to ``name``'s history, within the budget."""
        now = self.clock()
        size = len(publication.data) + PUBLICATION_OVERHEAD
        state.history.append((now, publication, size))
        state.bytes += size
        self.history_bytes += size
        # Both orders: least recently published first.
        self.channels[name] = self.channels.pop(name)
        self.histories.pop(name, None)
        self.histories[name] = state
        while self.history_bytes > self.max_history_bytes:
            oldest_name, oldest = next(iter(self.histories.items()))
            if oldest is state:  # the only history left: shorten it
                self.drop_oldest(name, state)
            else:
                self.forget_history(oldest_name, oldest)

    def drop_oldest(self, name: str, state: _Channel) -> None:
        """Drop the oldest publication of ``name``'s (non-empty) history."""
        size = state.history.popleft()[2]
        state.bytes -= size
        self.history_bytes -= size
        if not state.history:
            del self.histories[name]

    def forget_history(self, name: str, state: _Channel) -> None:
        state.history.clear()
        self.history_bytes -= state.bytes
        state.bytes = 0
        self.histories.pop(name, None)

    def trim(self, name: str, state: _Channel, options: ChannelOptions) -> None:
        """Drop what ``name``'s history no longer keeps: beyond its size, or
        older than its TTL."""
        while len(state.history) > options.history_size:
            self.drop_oldest(name, state)
        self._expire(name, state, self.clock())

    def _expire(self, name: str, state: _Channel, now: float) -> None:
        """Drop publications older than the channel's history TTL."""
        if state.history_ttl > 0:
            deadline = now - state.history_ttl
            while state.history and state.history[0][0] < deadline:
                self.drop_oldest(name, state)

    def _forget_a_channel(self) -> None:
        """Forget the least recently published channel not in use."""
        for _ in range(min(_EVICTION_SCAN, len(self.channels))):
            name = next(iter(self.channels))
            state = self.channels.pop(name)
            if name in self.subscribed or _live_presence(state, self.clock()):
                self.channels[name] = state  # in use: to the back
                continue
            self.forget_history(name, state)
            return

    def published(self, name: str, key: str) -> tuple[int, str] | None:
        """The offset and epoch of the publication made on ``name`` with
        idempotency key ``key``, while it is remembered."""
        now = self.clock()
        self._expire_keys(now)
        entry = self.keys.get((name, key))
        if entry is None or entry[0] <= now or entry[2] is not self.channels.get(name):
            return None
        return entry[1], entry[2].epoch

    def remember(self, name: str, key: str, state: _Channel, window: float) -> None:
        """Remember for ``window`` seconds that ``key`` made ``name``'s
        latest publication."""
        self._forget_key((name, key))  # one of another epoch, or expired
        self.keys[name, key] = (self.clock() + window, state.offset, state)
        state.keyed += 1
        if len(self.keys) > self.max_idempotency_keys:
            self._forget_key(next(iter(self.keys)))

    def _expire_keys(self, now: float) -> None:
        # Oldest first: with one window, the first to expire.
        keys = self.keys
        while keys and next(iter(keys.values()))[0] <= now:
            self._forget_key(next(iter(keys)))

    def _forget_key(self, name_key: tuple[str, str]) -> None:
        entry = self.keys.pop(name_key, None)
        if entry is not None:
            entry[2].keyed -= 1

    def push(self, push: Push) -> None:
        """Deliver ``push`` to every node subscribed to its channel, now:
        publications reach every node in offset order."""
        for node in tuple(self.subscribed.get(push.channel, ())):
            events = self.events.get(node)
            if events is not None:
                events.on_push(push)

    def maybe_sweep(self) -> None:
        now = self.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        self._expire_keys(now)
        idle = []
        for name, state in self.channels.items():
            self._expire(name, state, now)
            if (
                name not in self.subscribed
                and not _live_presence(state, now)
                and not state.history
                and not state.keyed  # a repeat must find its epoch
            ):
                idle.append(name)
        for name in idle:
            del self.channels[name]


class MemoryBroker(Broker):
    """One node's view of a :class:`MemoryBackend` (its own by default).

    Methods never await, so a publication and a history read can never
    interleave. Channels with no subscribers, no presence and no live
    history are forgotten, so publishing to ever new names does not grow
    memory without bound.
    """

    def __init__(
        self,
        backend: MemoryBackend | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if backend is None:
            backend = MemoryBackend(clock=clock or time.monotonic)
        self.backend = backend
        self._node = ""
        self._channels: set[str] = set()

    async def start(self, node: str, events: NodeEvents) -> None:
        self._node = node
        self.backend.events[node] = events

    async def close(self) -> None:
        backend = self.backend
        backend.events.pop(self._node, None)
        backend.heartbeats.pop(self._node, None)
        for channel in self._channels:
            _discard(backend.subscribed, channel, self._node)
        self._channels.clear()

    def status(self) -> dict[str, Any]:
        return {"kind": "memory", "ok": True}

    async def publish(
        self,
        channel: str,
        data: bytes,
        options: ChannelOptions,
        info: ClientInfo | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[int, str]:
        backend = self.backend
        key = idempotency_key if options.idempotency_window > 0 else None
        if key is not None:
            published = backend.published(channel, key)
            if published is not None:
                return published
        state = backend.channel(channel)
        state.offset += 1
        if options.history_size > 0:
            state.history_ttl = options.history_ttl
            backend.keep(channel, state, Publication(state.offset, data, info))
            backend.trim(channel, state, options)
        if key is not None:
            backend.remember(channel, key, state, options.idempotency_window)
        backend.push(Push(channel, "pub", state.epoch, state.offset, data, info))
        backend.maybe_sweep()
        return state.offset, state.epoch

    async def history(
        self,
        channel: str,
        options: ChannelOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        state = self.backend.channel(channel)
        self.backend.trim(channel, state, options)
        kept = [publication for _, publication, _ in state.history]
        if since is None:
            selected = kept if limit is None else kept[-limit:] if limit > 0 else []
            return HistoryResult(state.epoch, state.offset, selected)
        oldest = kept[0].offset if kept else state.offset + 1
        if since > state.offset or oldest > since + 1:
            return HistoryResult(state.epoch, state.offset, [], complete=False)
        selected = [p for p in kept if p.offset > since]
        if limit is not None:
            selected = selected[:limit]
        return HistoryResult(state.epoch, state.offset, selected)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self.backend.subscribed.setdefault(channel, set()).add(self._node)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        _discard(self.backend.subscribed, channel, self._node)

    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        backend = self.backend
        state = backend.channel(channel)
        _set_presence(state, info, backend.clock() + ttl)
        backend.push(Push(channel, "join", info=info))

    async def refresh_presence(
        self, channel: str, infos: Sequence[ClientInfo], ttl: float
    ) -> None:
        state = self.backend.channel(channel)
        deadline = self.backend.clock() + ttl
        for info in infos:
            _set_presence(state, info, deadline)

    async def remove_presence(self, channel: str, info: ClientInfo) -> None:
        state = self.backend.channels.get(channel)
        if state is not None and _drop_presence(state, info.client):
            self.backend.push(Push(channel, "leave", info=info))

    async def presence(self, channel: str) -> list[ClientInfo]:
        state = self.backend.channels.get(channel)
        if state is None:
            return []
        return _live_presence(state, self.backend.clock())

    async def presence_stats(self, channel: str) -> PresenceStats:
        state = self.backend.channels.get(channel)
        if state is None:
            return PresenceStats(0, 0)
        deadlines, now = state.deadlines, self.backend.clock()
        while deadlines and deadlines[0][0] <= now:
            client = heapq.heappop(deadlines)[1]
            entry = state.presence.get(client)
            if entry is not None and entry[1] <= now:
                _drop_presence(state, client)
        return PresenceStats(len(state.presence), len(state.users))

    async def control(self, message: dict[str, Any]) -> None:
        # Later, as a message from Redis would come: a handler may call the
        # broker again without re-entering the caller.
        loop = asyncio.get_running_loop()
        for events in tuple(self.backend.events.values()):
            loop.call_soon(events.on_control, message)

    async def heartbeat(self, ttl: float) -> None:
        self.backend.heartbeats[self._node] = self.backend.clock() + ttl

    async def nodes(self) -> set[str]:
        now = self.backend.clock()
        return {node for node, until in self.backend.heartbeats.items() if until > now}


def _discard(index: dict[str, set[str]], channel: str, node: str) -> None:
    nodes = index.get(channel)
    if nodes is not None:
        nodes.discard(node)
        if not nodes:
            del index[channel]


def _set_presence(state: _Channel, info: ClientInfo, until: float) -> None:
    """Make or extend ``info``'s entry until ``until``."""
    presence, deadlines = state.presence, state.deadlines
    if info.client not in presence:
        state.users[info.user] = state.users.get(info.user, 0) + 1
    presence[info.client] = (info, until)
    heapq.heappush(deadlines, (until, info.client))
    if len(deadlines) > 4 * len(presence) + 64:
        # Superseded deadlines pile up between expiries (every refresh adds
        # one per entry): kept within a few per entry.
        state.deadlines = [(due, c) for c, (_, due) in presence.items()]
        heapq.heapify(state.deadlines)


def _drop_presence(state: _Channel, client: str) -> bool:
    """Remove ``client``'s entry; return whether there was one."""
    entry = state.presence.pop(client, None)
    if entry is None:
        return False
    user = entry[0].user
    if state.users[user] > 1:
        state.users[user] -= 1
    else:
        del state.users[user]
    return True


def _live_presence(state: _Channel, now: float) -> list[ClientInfo]:
    """The unexpired entries; expired ones (their node died) are dropped."""
    expired = [c for c, (_, until) in state.presence.items() if until <= now]
    for client in expired:
        _drop_presence(state, client)
    return [info for info, _ in state.presence.values()]
