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

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Final

from ..exceptions import TidingsError
from ..protocol import Request

__all__ = [
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
]

#: :class:`Publish` data meaning "as the client sent it".
UNCHANGED: Final[Any] = object()


@dataclass(frozen=True, slots=True)
class HookContext:
    """Who is asking: the client's connection as the hub knows it.

    ``transport`` is ``websocket``, ``sse``, ``poll`` or ``command`` (a
    fallback client's ``POST /command``); ``headers`` are those of the
    client's request that the configuration passes on; ``user`` and
    ``info`` are None until the client is connected.
    """

    client: str
    transport: str
    headers: dict[str, str]
    request: Request | None = None
    user: str | None = None
    info: Any = None


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


@dataclass(frozen=True, slots=True)
class Refresh:
    """Keep a connection until ``expire_at``, or end it (``expired``)."""

    expire_at: float | None = None
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Allow a subscribe; ``info`` replaces the client's on this channel."""

    info: Any = None


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
    async def connect(self, context: HookContext, data: Any) -> Connect:
        """A client connects without a token; ``data`` is what its connect
        command carried."""

    @abstractmethod
    async def refresh(self, context: HookContext) -> Refresh:
        """A connection reached its ``expire_at``."""

    @abstractmethod
    async def subscribe(self, context: HookContext, channel: str) -> Subscribe:
        """A client subscribes to ``channel`` (a ``subscribe_proxy``
        namespace)."""

    @abstractmethod
    async def publish(self, context: HookContext, channel: str, data: Any) -> Publish:
        """A client publishes ``data`` to ``channel`` (a ``publish_proxy``
        namespace)."""

    @abstractmethod
    async def rpc(self, context: HookContext, method: str, data: Any) -> Any:
        """A client's ``rpc`` command; the result is the reply's ``data``."""

    @abstractmethod
    async def close(self) -> None:
        """Release what the hooks hold (connections to the application)."""
