"""The memory broker: one process, nothing else to run. The default."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .base import Broker, ChannelOptions, ClientInfo, HistoryResult, Publication, Push

__all__ = ["MemoryBroker"]

#: Seconds between sweeps that forget idle channels.
SWEEP_INTERVAL = 60.0


class _Channel:
    __slots__ = ("epoch", "history", "history_ttl", "offset", "presence")

    def __init__(self) -> None:
        # A new epoch for every new channel: state lost with a restart, or
        # forgotten by a sweep, can never be mistaken for the old one.
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.history: deque[tuple[float, Publication]] = deque()
        self.presence: dict[str, ClientInfo] = {}
        self.history_ttl = 0.0


class MemoryBroker(Broker):
    """Keeps every channel in this process.

    Methods never await, so a publication and a history read can never
    interleave. Channels with no subscribers, no presence and no live
    history are forgotten, so publishing to ever new names does not grow
    memory without bound.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._channels: dict[str, _Channel] = {}
        self._subscribed: set[str] = set()
        self._deliver: Callable[[Push], None] | None = None
        self._next_sweep = clock() + SWEEP_INTERVAL

    async def start(self, deliver: Callable[[Push], None]) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
        return channel

    def _push(self, push: Push) -> None:
        if self._deliver is not None and push.channel in self._subscribed:
            self._deliver(push)

    async def publish(
        self,
        channel: str,
        data: Any,
        options: ChannelOptions,
        info: ClientInfo | None = None,
    ) -> tuple[Publication, str]:
        state = self._channel(channel)
        state.offset += 1
        publication = Publication(state.offset, data, info)
        if options.history_size > 0:
            state.history_ttl = options.history_ttl
            now = self._clock()
            state.history.append((now, publication))
            self._trim(state, options, now)
        self._push(Push(channel, publication=publication))
        self._maybe_sweep()
        return publication, state.epoch

    async def history(
        self,
        channel: str,
        options: ChannelOptions,
        *,
        since: int | None = None,
        limit: int | None = None,
    ) -> HistoryResult:
        state = self._channel(channel)
        self._trim(state, options, self._clock())
        kept = [publication for _, publication in state.history]
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
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def add_presence(
        self, channel: str, info: ClientInfo, options: ChannelOptions
    ) -> None:
        self._channel(channel).presence[info.client] = info
        self._push(Push(channel, join=info))

    async def remove_presence(self, channel: str, info: ClientInfo) -> None:
        state = self._channels.get(channel)
        if state is not None and state.presence.pop(info.client, None) is not None:
            self._push(Push(channel, leave=info))

    async def presence(self, channel: str) -> list[ClientInfo]:
        state = self._channels.get(channel)
        return list(state.presence.values()) if state is not None else []

    @staticmethod
    def _trim(state: _Channel, options: ChannelOptions, now: float) -> None:
        history = state.history
        while len(history) > options.history_size:
            history.popleft()
        _expire(state, now)

    def _maybe_sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        idle = []
        for name, state in self._channels.items():
            _expire(state, now)
            if (
                name not in self._subscribed
                and not state.presence
                and not state.history
            ):
                idle.append(name)
        for name in idle:
            del self._channels[name]


def _expire(state: _Channel, now: float) -> None:
    """Drop publications older than the channel's history TTL."""
    if state.history_ttl > 0:
        deadline = now - state.history_ttl
        history = state.history
        while history and history[0][0] < deadline:
            history.popleft()
