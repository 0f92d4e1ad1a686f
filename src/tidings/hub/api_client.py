"""A client of the hub's HTTP API for back ends, on httpx: :class:`HubAPI`
(blocking) and :class:`AsyncHubAPI` (asyncio), with the methods and answers
of the in-process API (hub/operations.py).

::

    with HubAPI("http://127.0.0.1:8000", key=KEY) as api:
        offset, epoch = api.publish("chat:lobby", {"text": "hi"})

Each method is a :class:`_Call`: the request to send and how to read its
answer, made once for both classes; each class only sends it, and retries
it where that cannot do a thing twice (:class:`_Attempts`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

try:
    import httpx
except ImportError:  # pragma: no cover - the [api] extra installs it
    raise ImportError(
        "tidings.HubAPI needs httpx: pip install 'tidings[api]'"
    ) from None

from .brokers.base import ClientInfo, PresenceStats
from .client import History, _info, _publication
from .operations import APIError, Published

__all__ = ["AsyncHubAPI", "HubAPI"]

_T = TypeVar("_T")

#: Answers of a hub that may answer otherwise a moment later: its broker is
#: unreachable, or it is shutting down (503); a proxy before it found no
#: node (502) or waited too long for one (504).
_RETRY_STATUSES = frozenset({502, 503, 504})
#: Failures before the request was sent: trying again cannot repeat it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class _Call(Generic[_T]):
    """One API request, and how to read its answer."""

    method: str
    path: str
    read: Callable[[Any], _T]
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    #: Sending it twice does no more than sending it once: a read, or a
    #: publish with an idempotency key.
    repeatable: bool = False


def _publish(channel: str, data: Any, key: str | None) -> _Call[Published]:
    body = {"channel": channel, "data": data, **_key(key)}
    return _Call("POST", "/api/publish", _published, body, repeatable=key is not None)


def _broadcast(
    channels: Sequence[str], data: Any, key: str | None
) -> _Call[list[Published]]:
    body = {"channels": list(channels), "data": data, **_key(key)}

    def read(answer: Any) -> list[Published]:
        return [_published(result) for result in answer["results"]]

    return _Call("POST", "/api/broadcast", read, body, repeatable=key is not None)


def _presence(channel: str) -> _Call[list[ClientInfo]]:
    def read(answer: Any) -> list[ClientInfo]:
        return [_info(client) for client in answer["clients"]]

    return _read("/api/presence", read, channel=channel)


def _presence_stats(channel: str) -> _Call[PresenceStats]:
    def read(answer: Any) -> PresenceStats:
        return PresenceStats(answer["clients"], answer["users"])

    return _read("/api/presence_stats", read, channel=channel)


def _history(
    channel: str, limit: int | None, since: tuple[int, str] | None
) -> _Call[History]:
    params = {"channel": channel}
    if limit is not None:
        params["limit"] = str(limit)
    if since is not None:
        params["since"] = f"{since[0]}:{since[1]}"

    def read(answer: Any) -> History:
        publications = [_publication(p) for p in answer["publications"]]
        complete = answer.get("complete", True)
        return History(answer["epoch"], answer["offset"], publications, complete)

    return _read("/api/history", read, **params)


def _channels() -> _Call[dict[str, int]]:
    def read(answer: Any) -> dict[str, int]:
        return {c["channel"]: c["subscribers"] for c in answer["channels"]}

    return _read("/api/channels", read)


def _disconnect(user: str) -> _Call[int]:
    return _Call("POST", "/api/disconnect", _count("disconnected"), {"user": user})


def _unsubscribe(user: str, channel: str) -> _Call[int]:
    body = {"user": user, "channel": channel}
    return _Call("POST", "/api/unsubscribe", _count("unsubscribed"), body)


def _subscribe(user: str, channel: str, since: tuple[int, str] | None) -> _Call[int]:
    body: dict[str, Any] = {"user": user, "channel": channel}
    if since is not None:
        body["since"] = {"offset": since[0], "epoch": since[1]}
    return _Call("POST", "/api/subscribe", _count("subscribed"), body)


def _read(path: str, read: Callable[[Any], _T], **params: str) -> _Call[_T]:
    return _Call("GET", path, read, params=params, repeatable=True)


def _key(key: str | None) -> dict[str, str]:
    # The hub checks it (at most 64 characters): one place for its limit.
    return {} if key is None else {"idempotency_key": key}


def _published(answer: Any) -> Published:
    return Published(answer["offset"], answer["epoch"])


def _count(name: str) -> Callable[[Any], int]:
    def read(answer: Any) -> int:
        return int(answer[name])

    return read


class _Attempts:
    """Whether, and after how long, a call is sent again: at most
    ``retries`` times, after ``backoff_initial`` seconds doubling up to
    ``backoff_max`` (each randomly shortened by up to half, so that back
    ends refused together do not come back together)."""

    def __init__(self, call: _Call[Any], client: _Base) -> None:
        self._call = call
        self._delays = client._delays()

    def after_failure(self, error: httpx.TransportError) -> float | None:
        """The wait before the next try after ``error``, or None: give up."""
        if isinstance(error, _NOT_SENT) or self._call.repeatable:
            return next(self._delays, None)
        return None  # it may have been made: only the caller can tell

    def after(self, response: httpx.Response) -> float | None:
        """The wait before the next try after ``response``, or None: it is
        the answer."""
        if response.status_code in _RETRY_STATUSES and self._call.repeatable:
            return next(self._delays, None)
        return None


def _answer(call: _Call[_T], response: httpx.Response) -> _T:
    """The call's result, or the :class:`APIError` the hub answered."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.is_success:
        try:
            return call.read(answer)
        except (KeyError, TypeError, ValueError):
            pass
        raise APIError(
            response.status_code,
            f"not an answer of the hub's HTTP API: {response.text[:200]!r} "
            f"(from {response.url})",
        )
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        raise APIError(response.status_code, error["message"])
    # Not the hub's own answer: a proxy's, or a path that is not the API.
    text = response.text[:200].strip()
    raise APIError(response.status_code, text or response.reason_phrase)


class _Base:
    """What both clients hold: where the hub is, the key, the limits."""

    def __init__(
        self,
        url: str,
        *,
        key: str | None,
        timeout: float,
        retries: int,
        backoff_initial: float,
        backoff_max: float,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(
                f"url must be the hub's http:// or https:// address, not {url!r}"
            )
        #: The hub's address, which each API path is appended to.
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"apikey {key}"} if key is not None else {}
        self._timeout = timeout
        self._retries = retries
        self._backoff = (backoff_initial, backoff_max)

    def _request(
        self, http: httpx.Client | httpx.AsyncClient, call: _Call[Any]
    ) -> httpx.Request:
        return http.build_request(
            call.method,
            self.url + call.path,
            json=call.body,
            params=call.params,
            headers=self._headers,
            timeout=self._timeout,
        )

    def _delays(self) -> Iterator[float]:
        delay, most = self._backoff
        for _ in range(self._retries):
            yield delay * random.uniform(0.5, 1.0)
            delay = min(delay * 2, most)


class AsyncHubAPI(_Base):
    """A client of the hub's HTTP API for asyncio back ends: ``async with
    AsyncHubAPI(url, key=KEY) as api:``, then ``await api.publish(channel,
    data)``. The same methods and answers as the hub's in-process API
    (:meth:`Hub.api() <tidings.hub.Hub.api>`).

    ``url`` is where the hub serves its API, ``http://HOST:PORT`` (or the
    mount point of a hub inside an app: ``https://app.example/realtime``);
    ``key`` the hub's ``api_key``. Each request may take ``timeout``
    seconds. Connections are kept open and reused.

    A request is sent again, at most ``retries`` times, with a backoff from
    ``backoff_initial`` doubling up to ``backoff_max`` seconds: when no
    connection could be made (nothing was sent); and, for the reads
    (``presence``, ``presence_stats``, ``history``, ``channels``) and for
    ``publish`` and ``broadcast`` with an ``idempotency_key``, also after a
    502, 503 or 504 answer, a connection lost before the answer, or a
    timeout. Anything else is never sent twice: a publish that may have
    been made is not made again.

    The hub's refusals raise :class:`~tidings.hub.APIError` with the HTTP
    status and the hub's message; a hub that cannot be reached in the end,
    an ``httpx.TransportError`` (``httpx.TimeoutException`` for a
    timeout). ``http_client`` is an httpx client of your own (proxies, TLS
    settings, event hooks), which this one uses and does not close.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_initial: float = 0.2,
        backoff_max: float = 2.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            url,
            key=key,
            timeout=timeout,
            retries=retries,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
        )
        self._owned = http_client is None
        self._http = http_client or httpx.AsyncClient()

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> Published:
        """Publish ``data`` (any JSON value) to ``channel``. With an
        ``idempotency_key`` (at most 64 characters), the hub publishes it
        once however often it is sent within its ``idempotency_window``,
        answering every try with the first one's position: so it may be,
        and is, retried."""
        return await self._send(_publish(channel, data, idempotency_key))

    async def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        idempotency_key: str | None = None,
    ) -> list[Published]:
        """Publish ``data`` to each of ``channels``, one answer each, in
        order; ``idempotency_key`` as for :meth:`publish`, per channel."""
        return await self._send(_broadcast(channels, data, idempotency_key))

    async def presence(self, channel: str) -> list[ClientInfo]:
        """Who is subscribed to ``channel``."""
        return await self._send(_presence(channel))

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients, and distinct users, are subscribed to
        ``channel``, listing nobody."""
        return await self._send(_presence_stats(channel))

    async def history(
        self,
        channel: str,
        limit: int | None = None,
        since: tuple[int, str] | None = None,
    ) -> History:
        """Kept publications of ``channel``: the newest ``limit``, or those
        after ``since`` = (offset, epoch); ``complete`` is False when the
        history no longer reaches back that far."""
        return await self._send(_history(channel, limit, since))

    async def channels(self) -> dict[str, int]:
        """Channels with subscribers, and how many, by name."""
        return await self._send(_channels())

    async def disconnect(self, user: str) -> int:
        """Close every connection of ``user`` with 4003; return how many."""
        return await self._send(_disconnect(user))

    async def unsubscribe(self, user: str, channel: str) -> int:
        """Unsubscribe every connection of ``user`` from ``channel``;
        return how many."""
        return await self._send(_unsubscribe(user, channel))

    async def subscribe(
        self, user: str, channel: str, since: tuple[int, str] | None = None
    ) -> int:
        """Subscribe every connection of ``user`` to ``channel`` (a
        server-side subscription: docs/protocol.md), recovering from
        ``since`` = (offset, epoch) if given; return how many."""
        return await self._send(_subscribe(user, channel, since))

    async def aclose(self) -> None:
        """Close the connections kept open (not those of an
        ``http_client`` given)."""
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncHubAPI:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: _Call[_T]) -> _T:
        attempts = _Attempts(call, self)
        while True:
            try:
                response = await self._http.send(self._request(self._http, call))
            except httpx.TransportError as exc:
                if (delay := attempts.after_failure(exc)) is None:
                    raise
            else:
                if (delay := attempts.after(response)) is None:
                    return _answer(call, response)
            await asyncio.sleep(delay)


class HubAPI(_Base):
    """A blocking client of the hub's HTTP API, for back ends without
    asyncio (Django, Flask, scripts): ``with HubAPI(url, key=KEY) as
    api:``, then ``api.publish(channel, data)``. The settings, methods,
    retries and errors of :class:`AsyncHubAPI`, without ``await``; one may
    be used from several threads.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_initial: float = 0.2,
        backoff_max: float = 2.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            url,
            key=key,
            timeout=timeout,
            retries=retries,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
        )
        self._owned = http_client is None
        self._http = http_client or httpx.Client()

    def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> Published:
        """Publish ``data`` to ``channel`` (:meth:`AsyncHubAPI.publish`)."""
        return self._send(_publish(channel, data, idempotency_key))

    def broadcast(
        self,
        channels: Sequence[str],
        data: Any,
        *,
        idempotency_key: str | None = None,
    ) -> list[Published]:
        """Publish ``data`` to each of ``channels``
        (:meth:`AsyncHubAPI.broadcast`)."""
        return self._send(_broadcast(channels, data, idempotency_key))

    def presence(self, channel: str) -> list[ClientInfo]:
        """Who is subscribed to ``channel``."""
        return self._send(_presence(channel))

    def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients, and distinct users, are subscribed to
        ``channel``."""
        return self._send(_presence_stats(channel))

    def history(
        self,
        channel: str,
        limit: int | None = None,
        since: tuple[int, str] | None = None,
    ) -> History:
        """Kept publications of ``channel`` (:meth:`AsyncHubAPI.history`)."""
        return self._send(_history(channel, limit, since))

    def channels(self) -> dict[str, int]:
        """Channels with subscribers, and how many, by name."""
        return self._send(_channels())

    def disconnect(self, user: str) -> int:
        """Close every connection of ``user`` with 4003; return how many."""
        return self._send(_disconnect(user))

    def unsubscribe(self, user: str, channel: str) -> int:
        """Unsubscribe every connection of ``user`` from ``channel``;
        return how many."""
        return self._send(_unsubscribe(user, channel))

    def subscribe(
        self, user: str, channel: str, since: tuple[int, str] | None = None
    ) -> int:
        """Subscribe every connection of ``user`` to ``channel``
        (:meth:`AsyncHubAPI.subscribe`)."""
        return self._send(_subscribe(user, channel, since))

    def close(self) -> None:
        """Close the connections kept open (not those of an
        ``http_client`` given)."""
        if self._owned:
            self._http.close()

    def __enter__(self) -> HubAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _Call[_T]) -> _T:
        attempts = _Attempts(call, self)
        while True:
            try:
                response = self._http.send(self._request(self._http, call))
            except httpx.TransportError as exc:
                if (delay := attempts.after_failure(exc)) is None:
                    raise
            else:
                if (delay := attempts.after(response)) is None:
                    return _answer(call, response)
            time.sleep(delay)
