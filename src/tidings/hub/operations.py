"""The hub's HTTP API as Python calls in the hub's own process.

:class:`InProcessAPI` (``hub.api()``) does what each ``/api/...`` endpoint
does, with the answers as Python values and the errors as
:class:`APIError`: hub/api.py's endpoints parse HTTP and call it, an app
that mounts the hub calls it from its views, and the HTTP API's client
(:mod:`tidings.hub.api_client`) gives back ends the same methods and types
from another process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from .brokers.base import (
    BrokerUnavailable,
    ClientInfo,
    HistoryResult,
    OutcomeUnknown,
    PresenceStats,
)
from .client import History, HubError, Publication
from .wire import CommandError, channel_problem

if TYPE_CHECKING:
    from .app import Hub

__all__ = ["APIError", "InProcessAPI", "Published"]


class Published(NamedTuple):
    """Where a publication went: its offset in the channel, and the
    channel's epoch (``offset, epoch = await api.publish(...)``)."""

    offset: int
    epoch: str


class APIError(HubError):
    """The hub refused an API call: ``status`` (also ``code``) is the HTTP
    status the HTTP API answers with (400, 401, 403, 404, 503...) and
    ``message`` the hub's reason (docs/protocol.md, "The HTTP API")."""

    @property
    def status(self) -> int:
        """The HTTP status."""
        return self.code


class _Refusals:
    """What the hub raises, as the HTTP API answers it: ``with _refusals:``.

    A class rather than a ``contextlib.contextmanager``, which makes a
    generator and two wrappers on every API call."""

    def __enter__(self) -> None:
        pass

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, OutcomeUnknown):
            raise APIError(504, str(exc)) from None
        if isinstance(exc, BrokerUnavailable):
            raise APIError(503, str(exc)) from None
        if isinstance(exc, CommandError):
            raise APIError(exc.code, exc.message) from None


_refusals = _Refusals()


class InProcessAPI:
    """The HTTP API's operations, without HTTP: for an app that runs the
    hub in its own process (docs/asgi.md). Made by :meth:`Hub.api()
    <tidings.hub.Hub.api>`; the same methods and answers as
    :class:`tidings.AsyncHubAPI`, and :class:`APIError` for what the HTTP
    API would refuse. Like the HTTP API, it acts on the whole hub: every
    node on the broker."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> Published:
        """Publish ``data`` (any JSON value) to ``channel``. With an
        ``idempotency_key``, a repeat within the hub's
        ``idempotency_window`` answers the first one's position and
        publishes nothing."""
        channel = self._channel(channel)
        with _refusals:
            return Published(
                *await self._hub.publish(channel, data, idempotency_key=idempotency_key)
            )

    async def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        idempotency_key: str | None = None,
    ) -> list[Published]:
        """Publish ``data`` to each of ``channels``, in order; one answer
        each. One channel refused refuses them all, before any is made. An
        ``idempotency_key`` applies to each channel."""
        if (
            isinstance(channels, str)
            or not isinstance(channels, Sequence)
            or not channels
        ):
            raise APIError(400, "channels must be a non-empty list")
        checked = [self._channel(channel) for channel in channels]
        with _refusals:
            return [
                Published(
                    *await self._hub.publish(c, data, idempotency_key=idempotency_key)
                )
                for c in checked
            ]

    async def presence(self, channel: str) -> list[ClientInfo]:
        """Who is subscribed to ``channel`` (a namespace with presence)."""
        channel = self._channel(channel)
        with _refusals:
            return await self._hub.broker.presence(channel)

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients, and distinct users, are subscribed to
        ``channel``, listing nobody."""
        channel = self._channel(channel)
        with _refusals:
            return await self._hub.broker.presence_stats(channel)

    async def history(
        self,
        channel: str,
        limit: int | None = None,
        since: tuple[int, str] | None = None,
    ) -> History:
        """Kept publications of ``channel``: the newest ``limit``, or those
        after ``since`` = (offset, epoch); ``complete`` is False (and no
        publication given) when the history no longer reaches back that
        far, or ``since`` is of another epoch."""
        result = await self.raw_history(channel, limit=limit, since=since)
        publications = [
            Publication(p.offset, json.loads(p.data), p.info)
            for p in result.publications
        ]
        return History(result.epoch, result.offset, publications, result.complete)

    async def raw_history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: tuple[int, str] | None = None,
    ) -> HistoryResult:
        """:meth:`history` with each publication's data as the broker keeps
        it (JSON, UTF-8), which ``/api/history`` sends on undecoded."""
        channel = self._channel(channel)
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise APIError(400, "limit must be a non-negative integer")
        with _refusals:
            result = await self._hub.history(
                channel, since=since[0] if since else None, limit=limit
            )
        if since is not None and (not result.complete or result.epoch != since[1]):
            return HistoryResult(result.epoch, result.offset, [], complete=False)
        return result

    async def channels(self) -> dict[str, int]:
        """Channels with subscribers on any node, and how many, by name."""
        counts: dict[str, int] = {}
        with _refusals:
            answers = await self._hub.survey("channels")
        for answer in answers:
            for channel, count in answer.items():
                counts[channel] = counts.get(channel, 0) + count
        return dict(sorted(counts.items()))

    async def disconnect(self, user: str) -> int:
        """Close every connection of ``user``, on every node, with 4003;
        return how many."""
        user = _user(user)
        with _refusals:
            return sum(await self._hub.survey("disconnect", user=user))

    async def unsubscribe(self, user: str, channel: str) -> int:
        """Unsubscribe every connection of ``user``, on every node, from
        ``channel``, telling each with an ``unsubscribe`` push; return how
        many."""
        user, channel = _user(user), self._channel(channel)
        with _refusals:
            answers = await self._hub.survey("unsubscribe", user=user, channel=channel)
        return sum(answers)

    async def subscribe(
        self, user: str, channel: str, since: tuple[int, str] | None = None
    ) -> int:
        """Subscribe every connection of ``user``, on every node, to
        ``channel`` (a server-side subscription, recovered from ``since``,
        an ``(offset, epoch)`` pair); return how many."""
        user, channel = _user(user), self._channel(channel)
        with _refusals:
            answers = await self._hub.survey(
                "subscribe",
                user=user,
                channel=channel,
                since=None if since is None else list(since),
            )
        return sum(answers)

    def _channel(self, channel: object) -> str:
        problem = channel_problem(channel)
        if problem is not None:
            raise APIError(400, problem)
        assert isinstance(channel, str)  # as channel_problem found
        if self._hub.config.namespace(channel) is None:
            raise APIError(404, f"unknown namespace in {channel}")
        return channel


def _user(user: object) -> str:
    if not isinstance(user, str) or not user:
        raise APIError(400, "user must be a non-empty string")
    return user
