"""The hooks as Python functions, for a hub in the application's own
process: ``@hub.on_connect``, ``@hub.on_subscribe`` and the others register
``async def`` functions that answer as the HTTP proxy's endpoints would
(hub/hooks.py), within the same ``timeout``."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .config import HOOKS
from .hooks import (
    Connect,
    HookContext,
    Hooks,
    HookUnavailable,
    Publish,
    Refresh,
    Subscribe,
)

__all__ = ["CallableHooks", "HookFunction"]

#: A hook in Python: called with the question, it returns the answer or
#: raises Refuse or Disconnect (hub/hooks.py).
HookFunction = Callable[[HookContext], Awaitable[Any]]

_A = TypeVar("_A")


class CallableHooks(Hooks):
    """Hooks answered by ``async def`` functions; one that takes longer
    than ``timeout`` seconds is a 503, one that raises anything but Refuse
    or Disconnect a 500 for that command (and a log line)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._functions: dict[str, HookFunction] = {}

    def register(self, hook: str, function: HookFunction) -> None:
        """Answer ``hook`` with ``function``. A blocking function would
        stop every client of the hub while it runs: only ``async def``
        functions are taken (run blocking work in ``asyncio.to_thread``)."""
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r}; hooks: {', '.join(HOOKS)}")
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"the {hook} hook must be an async function (async def); run "
                "blocking work inside it with asyncio.to_thread"
            )
        self._functions[hook] = function

    def enabled(self, hook: str) -> bool:
        return hook in self._functions

    async def close(self) -> None:
        """Nothing to release."""

    async def connect(self, context: HookContext) -> Connect:
        return await self._ask("connect", context, Connect)

    async def refresh(self, context: HookContext) -> Refresh:
        return await self._ask("refresh", context, Refresh)

    async def subscribe(self, context: HookContext) -> Subscribe:
        return await self._ask("subscribe", context, Subscribe)

    async def publish(self, context: HookContext) -> Publish:
        return await self._ask("publish", context, Publish)

    async def rpc(self, context: HookContext) -> Any:
        return await self._ask("rpc", context, object)

    async def _ask(self, hook: str, context: HookContext, kind: type[_A]) -> _A:
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._functions[hook](context)
        except TimeoutError:
            raise HookUnavailable(
                f"the {hook} hook took longer than {self.timeout:g} s"
            ) from None
        if not isinstance(answer, kind):
            raise TypeError(
                f"the {hook} hook returned {type(answer).__name__}, not {kind.__name__}"
            )
        return answer
