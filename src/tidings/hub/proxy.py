"""The hooks over HTTP (``[proxy]``): each call is a ``POST`` of JSON to the
application's endpoint, through httpx with keep-alive, bounded in time
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
from .wire import valid_channel

if TYPE_CHECKING:
    from .metrics import Metrics

__all__ = ["MAX_ANSWER_BYTES", "MAX_INFO_BYTES", "ProxyHooks"]

logger = logging.getLogger("tidings.hub.proxy")

_T = TypeVar("_T")

#: The largest answer read from the application; a longer one is refused.
MAX_ANSWER_BYTES = 1 << 20

#: The largest ``info`` a hook may give a client, as JSON: it travels with
#: every presence entry, join, leave and publication of the client.
MAX_INFO_BYTES = 4096

#: Channels a connect answer may subscribe the client to.
MAX_CHANNELS = 128


class ProxyHooks(Hooks):
    """The hooks of ``config`` over HTTP; ``metrics`` counts every call by
    hook and outcome."""

    def __init__(self, config: ProxyConfig, metrics: Metrics) -> None:
        try:
            import httpx
        except ImportError:
            raise HookUnavailable(
                "the [proxy] hooks need httpx: pip install 'tidings[proxy]'"
            ) from None
        self._config = config
        self._metrics = metrics
        self._turns = asyncio.Semaphore(config.max_in_flight)
        headers = {"Content-Type": "application/json"}
        if config.secret is not None:
            headers["X-Tidings-Secret"] = config.secret
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=config.timeout,
            limits=httpx.Limits(
                max_connections=config.max_in_flight,
                max_keepalive_connections=config.max_in_flight,
            ),
            follow_redirects=False,
        )
        self._logged: dict[str, float] = {}

    def enabled(self, hook: str) -> bool:
        return hook in HOOKS and getattr(self._config, hook) is not None

    async def close(self) -> None:
        await self._http.aclose()

    # -- the hooks ------------------------------------------------------------

    async def connect(self, context: HookContext, data: Any) -> Connect:
        return await self._call("connect", context, {"data": data}, _connect)

    async def refresh(self, context: HookContext) -> Refresh:
        return await self._call("refresh", context, {}, _refresh)

    async def subscribe(self, context: HookContext, channel: str) -> Subscribe:
        return await self._call(
            "subscribe",
            context,
            {"channel": channel},
            lambda result: Subscribe(_info(result)),
        )

    async def publish(self, context: HookContext, channel: str, data: Any) -> Publish:
        return await self._call(
            "publish",
            context,
            {"channel": channel, "data": data},
            lambda result: Publish(result.get("data", UNCHANGED)),
        )

    async def rpc(self, context: HookContext, method: str, data: Any) -> Any:
        return await self._call(
            "rpc",
            context,
            {"method": method, "data": data},
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
        except Exception as exc:  # httpx's errors, which are not OSErrors
            raise self._failed(hook, "unreachable", type(exc).__name__) from None
        if status != 200:
            raise self._failed(hook, f"http_{status // 100}xx", f"answered {status}")
        try:
            parsed = parse(self._answer(hook, answer))
        except _Malformed as exc:
            raise self._malformed(hook, str(exc)) from None
        self._count(hook, "ok")
        return parsed

    async def _post(self, url: str, content: str) -> tuple[int, bytes]:
        """The status and body of one POST, the body read up to
        ``MAX_ANSWER_BYTES`` (an answer longer is cut to one byte more)."""
        async with self._http.stream("POST", url, content=content) as response:
            chunks = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    break
            return response.status_code, b"".join(chunks)

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


class _Malformed(Exception):
    """An answer's result that is not as docs/integrate.md says."""


def _connect(result: dict[str, Any]) -> Connect:
    user = result.get("user")
    if not isinstance(user, str):
        raise _Malformed("result.user must be a string")
    channels = result.get("channels", [])
    if (
        not isinstance(channels, list)
        or len(channels) > MAX_CHANNELS
        or not all(isinstance(c, str) and valid_channel(c) for c in channels)
    ):
        raise _Malformed(f"result.channels must be at most {MAX_CHANNELS} channels")
    return Connect(
        user, _info(result), _expire_at(result), tuple(channels), result.get("data")
    )


def _refresh(result: dict[str, Any]) -> Refresh:
    expired = result.get("expired", False)
    if not isinstance(expired, bool):
        raise _Malformed("result.expired must be true or false")
    return Refresh(_expire_at(result), expired)


def _info(result: dict[str, Any]) -> Any:
    info = result.get("info")
    if info is not None:
        try:
            text = json.dumps(info, separators=(",", ":"), allow_nan=False)
            size = len(text.encode())
        except (ValueError, UnicodeEncodeError):
            size = MAX_INFO_BYTES + 1
        if size > MAX_INFO_BYTES:
            raise _Malformed(
                f"result.info must be JSON of at most {MAX_INFO_BYTES} bytes"
            )
    return info


def _expire_at(result: dict[str, Any]) -> float | None:
    expire_at = result.get("expire_at")
    if expire_at is None:
        return None
    if (
        isinstance(expire_at, bool)
        or not isinstance(expire_at, int | float)
        or not math.isfinite(expire_at)
    ):
        raise _Malformed("result.expire_at must be a number")
    return float(expire_at)


def _int_in(value: Any, low: int, high: int) -> TypeGuard[int]:
    return (
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    )


def _cut(text: str, size: int) -> str:
    """``text`` cut to at most ``size`` bytes of UTF-8, whole characters."""
    return text.encode()[:size].decode(errors="ignore")
