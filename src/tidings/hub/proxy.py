"""The hooks over HTTP (``[proxy]``): each call is a ``POST`` of JSON to the
application's endpoint, through aiohttp's client with keep-alive, bounded in time
(``timeout``, waiting for a turn included) and in number
(``max_in_flight``). docs/integrate.md describes the bodies and answers.

Whatever goes wrong on the way (refused, timed out, 5xx, an answer that is
not as documented) is :class:`~tidings.hub.hooks.HookUnavailable`: the
client gets 503, never a yes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from .config import HOOKS, ProxyConfig
from .hooks import (
    UNCHANGED,
    Connect,
    Disconnect,
    HookContext,
    Hooks,
    HookUnavailable,
    Publish,
    Refresh,
    Refuse,
    Subscribe,
)

if TYPE_CHECKING:
    import aiohttp

    from .metrics import Metrics

__all__ = ["MAX_ANSWER_BYTES", "ProxyHooks"]

logger = logging.getLogger("tidings.hub.proxy")

_T = TypeVar("_T")

#: The largest answer read from the application; a longer one is refused.
MAX_ANSWER_BYTES = 1 << 20


class ProxyHooks(Hooks):
    """The hooks of ``config`` over HTTP; ``metrics`` counts every call by
    hook and outcome."""

    def __init__(self, config: ProxyConfig, metrics: Metrics) -> None:
        try:
            import aiohttp  # noqa: F401  # here, so that a missing one is said at once
        except ImportError:
            raise HookUnavailable(
                "the [proxy] hooks need aiohttp: pip install 'tidings[proxy]'"
            ) from None
        self._config = config
        self._metrics = metrics
        self._turns = asyncio.Semaphore(config.max_in_flight)
        self._http: aiohttp.ClientSession | None = None
        self._logged: dict[str, float] = {}

    def enabled(self, hook: str) -> bool:
        return hook in HOOKS and getattr(self._config, hook) is not None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _client(self) -> aiohttp.ClientSession:
        """The HTTP client, made in the event loop of the first call.

        aiohttp's rather than httpx's: under a thousand callers whose calls
        time out, httpx's pool spent most of the hub's time on its own
        bookkeeping and kept connections it had abandoned, after which every
        call failed (docs/performance.md, "The application's hooks")."""
        if self._http is None:
            import aiohttp

            headers = {"Content-Type": "application/json"}
            if self._config.secret is not None:
                headers["X-Tidings-Secret"] = self._config.secret
            self._http = aiohttp.ClientSession(
                headers=headers,
                # The deadline is the caller's (asyncio.timeout in _call).
                timeout=aiohttp.ClientTimeout(total=None),
                connector=aiohttp.TCPConnector(limit=self._config.max_in_flight),
            )
        return self._http

    # -- the hooks ------------------------------------------------------------

    async def connect(self, context: HookContext) -> Connect:
        return await self._call("connect", context, {"data": context.data}, _connect)

    async def refresh(self, context: HookContext) -> Refresh:
        return await self._call(
            "refresh",
            context,
            {},
            lambda result: Refresh(
                result.get("expire_at"), result.get("expired", False)
            ),
        )

    async def subscribe(self, context: HookContext) -> Subscribe:
        return await self._call(
            "subscribe",
            context,
            {"channel": context.channel},
            lambda result: Subscribe(result.get("info")),
        )

    async def publish(self, context: HookContext) -> Publish:
        return await self._call(
            "publish",
            context,
            {"channel": context.channel, "data": context.data},
            lambda result: Publish(result.get("data", UNCHANGED)),
        )

    async def rpc(self, context: HookContext) -> Any:
        return await self._call(
            "rpc",
            context,
            {"method": context.method, "data": context.data},
            lambda result: result.get("data"),
        )

    # -- one call -------------------------------------------------------------

    async def _call(
        self,
        hook: str,
        context: HookContext,
        fields: dict[str, Any],
        parse: Callable[[dict[str, Any]], _T],
    ) -> _T:
        """POST the call and return its answer's ``result`` as ``parse``
        makes it; raise Refuse, Disconnect or HookUnavailable."""
        body: dict[str, Any] = {
            "client": context.client,
            "transport": context.transport,
            "headers": context.headers,
        }
        if context.user is not None:
            body["user"] = context.user
            if context.info is not None:
                body["info"] = context.info
        body.update(fields)
        try:
            content = json.dumps(body, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise Refuse(400, "data must be JSON without NaN or Infinity") from None
        url = getattr(self._config, hook)
        try:
            async with asyncio.timeout(self._config.timeout):
                async with self._turns:
                    status, answer = await self._post(url, content)
        except TimeoutError:
            raise self._failed(hook, "timeout", "did not answer in time") from None
        except OSError as exc:
            raise self._failed(hook, "unreachable", str(exc)) from None
        except Exception as exc:  # aiohttp's errors, not all OSErrors
            raise self._failed(hook, "unreachable", type(exc).__name__) from None
        if status != 200:
            raise self._failed(hook, f"http_{status // 100}xx", f"answered {status}")
        try:
            parsed = parse(self._answer(hook, answer))
        except ValueError as exc:  # the answer's checks (hub/hooks.py)
            raise self._malformed(hook, f"result: {exc}") from None
        self._count(hook, "ok")
        return parsed

    async def _post(self, url: str, content: str) -> tuple[int, bytes]:
        """The status and body of one POST, the body read up to
        ``MAX_ANSWER_BYTES`` (an answer longer is cut to one byte more)."""
        post = self._client().post(url, data=content.encode(), allow_redirects=False)
        async with post as response:
            chunks = []
            size = 0
            async for chunk in response.content.iter_any():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    break
            return response.status, b"".join(chunks)

    def _answer(self, hook: str, raw: bytes) -> dict[str, Any]:
        if len(raw) > MAX_ANSWER_BYTES:
            raise self._malformed(hook, f"longer than {MAX_ANSWER_BYTES} bytes")
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            raise self._malformed(hook, "not JSON") from None
        if not isinstance(answer, dict):
            raise self._malformed(hook, "not a JSON object")
        if "error" in answer:
            error = answer["error"]
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message", "") if isinstance(error, dict) else None
            if not _int_in(code, 400, 499) or not isinstance(message, str):
                raise self._malformed(
                    hook, "error must be {code: 400-499, message: string}"
                )
            self._count(hook, "refused")
            raise Refuse(code, message[:1024])
        if "disconnect" in answer:
            disconnect = answer["disconnect"]
            code = disconnect.get("code") if isinstance(disconnect, dict) else None
            reason = (
                disconnect.get("reason", "") if isinstance(disconnect, dict) else None
            )
            if not _int_in(code, 4000, 4999) or not isinstance(reason, str):
                raise self._malformed(
                    hook, "disconnect must be {code: 4000-4999, reason: string}"
                )
            self._count(hook, "disconnect")
            # A close reason has room for 123 bytes (RFC 6455 §5.5).
            raise Disconnect(code, _cut(reason, 123))
        result = answer.get("result")
        if not isinstance(result, dict):
            raise self._malformed(hook, "needs result, error or disconnect")
        return result

    # -- failures -------------------------------------------------------------

    def _malformed(self, hook: str, what: str) -> HookUnavailable:
        return self._failed(hook, "malformed", f"answer malformed: {what}")

    def _failed(self, hook: str, outcome: str, why: str) -> HookUnavailable:
        self._count(hook, outcome)
        now = time.monotonic()
        # Logged at most once a second per hook: a back end that is down
        # would otherwise log once per client command.
        if now - self._logged.get(hook, -math.inf) >= 1.0:
            self._logged[hook] = now
            logger.warning(
                "the %s hook at %s failed: %s", hook, getattr(self._config, hook), why
            )
        return HookUnavailable(f"the application's {hook} hook failed: {why}")

    def _count(self, hook: str, outcome: str) -> None:
        self._metrics.hook_calls[hook, outcome] += 1


def _connect(result: dict[str, Any]) -> Connect:
    channels = result.get("channels", [])
    return Connect(
        result.get("user"),  # type: ignore[arg-type]  # checked by Connect
        result.get("info"),
        result.get("expire_at"),
        tuple(channels) if isinstance(channels, list) else channels,
        result.get("data"),
    )


def _int_in(value: Any, low: int, high: int) -> TypeGuard[int]:
    return (
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    )


def _cut(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` bytes of UTF-8, whole characters."""
    return text.encode()[:size].decode(errors="ignore")
