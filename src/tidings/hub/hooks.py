"""The application in the loop: what the hub asks it before it acts, and
how it answers (docs/integrate.md).

One interface, :class:`Hooks`, with the HTTP proxy (``[proxy]``,
hub/proxy.py) as its implementation for ``tidings serve``. A hook answers
with its result (:class:`Connect`, :class:`Refresh`, :class:`Subscribe`,
:class:`Publish`, or any JSON value for an RPC), or raises :class:`Refuse`
(an error reply to the command), :class:`Disconnect` (the connection
closes) or :class:`HookUnavailable` (the application could not answer in
time: 503, and never a yes).
"""

from __future__ import annotations

import contextlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final

from ..exceptions import TidingsError
from ..protocol import Request
from .wire import valid_channel

__all__ = [
    "MAX_CHANNELS",
    "MAX_INFO_BYTES",
    "UNCHANGED",
    "Connect",
    "Disconnect",
    "HookContext",
    "HookUnavailable",
    "Hooks",
    "Publish",
    "Refresh",
    "Refuse",
    "Subscribe",
    "check_info",
]

#: :class:`Publish` data meaning "as the client sent it".
UNCHANGED: Final[Any] = object()

#: The largest ``info`` a hook may give a client, as JSON: it travels with
#: every presence entry, join, leave and publication of the client.
MAX_INFO_BYTES = 4096

#: Channels a connect answer may subscribe the client to.
MAX_CHANNELS = 128


@dataclass(frozen=True, slots=True)
class HookContext:
    """One question to the application: who asks, and about what.

    ``transport`` is ``websocket``, ``sse``, ``poll`` or ``command`` (a
    fallback client's ``POST /command``); ``headers`` are those of the
    client's request that the configuration passes on (``request`` is the
    whole request, for hooks in Python); ``user`` and ``info`` are None
    until the client is connected. Then, per hook: ``data`` (connect: what
    the client sent; publish: the publication; rpc: the call's data),
    ``channel`` (subscribe, publish) and ``method`` (rpc).
    """

    client: str
    transport: str
    headers: dict[str, str]
    request: Request | None = None
    user: str | None = None
    info: Any = None
    channel: str = ""
    data: Any = None
    method: str = ""

    @property
    def cookies(self) -> dict[str, str]:
        """The cookies of the client's request."""
        cookies: dict[str, str] = {}
        if self.request is not None:
            for header in self.request.headers.get_all("Cookie"):
                parsed = SimpleCookie()
                with contextlib.suppress(CookieError):
                    parsed.load(header)
                cookies.update((name, morsel.value) for name, morsel in parsed.items())
        return cookies


@dataclass(frozen=True, slots=True)
class Connect:
    """Accept a connection as ``user`` (``""``: anonymous).

    ``info`` (any JSON) goes with the client into presence, joins, leaves
    and its publications; ``expire_at`` (Unix time) is when the hub asks
    the refresh hook again (None: never); ``channels`` are subscribed by
    the hub at once; ``data`` goes back to the client in the connect reply.
    """

    user: str
    info: Any = None
    expire_at: float | None = None
    channels: tuple[str, ...] = ()
    data: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.user, str):
            raise ValueError("user must be a string")
        check_info(self.info)
        _check_expire_at(self.expire_at)
        if (
            not isinstance(self.channels, tuple)
            or len(self.channels) > MAX_CHANNELS
            or not all(isinstance(c, str) and valid_channel(c) for c in self.channels)
        ):
            raise ValueError(f"channels must be at most {MAX_CHANNELS} channel names")


@dataclass(frozen=True, slots=True)
class Refresh:
    """Keep a connection until ``expire_at``, or end it (``expired``)."""

    expire_at: float | None = None
    expired: bool = False

    def __post_init__(self) -> None:
        _check_expire_at(self.expire_at)
        if not isinstance(self.expired, bool):
            raise ValueError("expired must be true or false")


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Allow a subscribe; ``info`` replaces the client's on this channel."""

    info: Any = None

    def __post_init__(self) -> None:
        check_info(self.info)


@dataclass(frozen=True, slots=True)
class Publish:
    """Allow a publish, of ``data`` in place of the client's if given."""

    data: Any = field(default=UNCHANGED)


class Refuse(TidingsError):
    """Refuse the command: the client gets error ``code`` (400-499) with
    ``message``, and stays connected."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class Disconnect(TidingsError):
    """End the client's connection with close ``code`` (4000-4999)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class HookUnavailable(TidingsError):
    """The application did not answer, or not in time, or not as the hooks
    must: the command gets error 503 and nothing is let through."""


class Hooks(ABC):
    """What the hub asks the application. Each method is called only when
    :meth:`enabled` says so for its name."""

    @abstractmethod
    def enabled(self, hook: str) -> bool:
        """Whether the application answers ``hook`` (``connect``,
        ``refresh``, ``subscribe``, ``publish`` or ``rpc``)."""

    @abstractmethod
    async def connect(self, context: HookContext) -> Connect:
        """A client connects without a token; ``context.data`` is what its
        connect command carried."""

    @abstractmethod
    async def refresh(self, context: HookContext) -> Refresh:
        """A connection reached its ``expire_at``."""

    @abstractmethod
    async def subscribe(self, context: HookContext) -> Subscribe:
        """A client subscribes to ``context.channel`` (a ``subscribe_proxy``
        namespace)."""

    @abstractmethod
    async def publish(self, context: HookContext) -> Publish:
        """A client publishes ``context.data`` to ``context.channel`` (a
        ``publish_proxy`` namespace)."""

    @abstractmethod
    async def rpc(self, context: HookContext) -> Any:
        """A client's ``rpc`` command (``context.method``,
        ``context.data``); the result is the reply's ``data``."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the hooks hold (connections to the application)."""


def check_info(info: Any) -> None:
    """Raise ValueError unless ``info`` is None or JSON that every client
    can be sent (no ``NaN``, ``Infinity`` or lone surrogates) of at most
    :data:`MAX_INFO_BYTES` in UTF-8: a client's info, from a hook or a
    token's claim."""
    if info is None:
        return
    try:
        # As it goes out (wire.dumps): UTF-8, where a lone surrogate, which
        # JSON's parser lets through, fails here rather than at every send.
        text = json.dumps(
            info, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        size = len(text.encode())
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError too
        size = MAX_INFO_BYTES + 1
    if size > MAX_INFO_BYTES:
        raise ValueError(f"info must be JSON of at most {MAX_INFO_BYTES} bytes")


def _check_expire_at(expire_at: Any) -> None:
    if expire_at is not None and (
        isinstance(expire_at, bool)
        or not isinstance(expire_at, int | float)
        or not math.isfinite(expire_at)
    ):
        raise ValueError("expire_at must be a number of seconds since the epoch")
