"""Plain HTTP beside the hub's WebSocket: the API, health, metrics and the
demo pages (docs/protocol.md, "The HTTP API")."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from ..engine.http import HTTPResponse, HTTPStream
from ..protocol import Request
from . import demo
from .auth import api_key_matches
from .operations import APIError, InProcessAPI
from .transports import COMMAND_PATH, POLL_PATH, SSE_PATH, handle_fallback
from .wire import CommandError, Raw, dumps, encode_position, parse_since

if TYPE_CHECKING:
    from .app import Hub

logger = logging.getLogger("tidings.hub")

__all__ = ["handle_http"]

WEBSOCKET_PATH = "/ws"
#: Where clients connect: the WebSocket, and its fallbacks.
_CLIENT_PATHS = frozenset({WEBSOCKET_PATH, SSE_PATH, POLL_PATH, COMMAND_PATH})

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ts": "text/plain; charset=utf-8",
}
#: The browser client and its types, served whether the demo is on or not.
_CLIENT = ("/tidings.js", "/tidings.d.ts")

_PAGES = {
    "/": "index.html",
    "/chat": "chat.html",
    "/ticker": "ticker.html",
    "/report": "report.html",
}


_JSON_HEADERS = (("Content-Type", "application/json"),)


def _json(status: int, body: Any) -> HTTPResponse:
    return HTTPResponse(status, dumps(body).encode(), _JSON_HEADERS)


async def handle_http(hub: Hub, request: Request) -> HTTPResponse | HTTPStream | None:
    """Answer a plain HTTP request, or return None to upgrade ``/ws``."""
    path = request.path
    if path in _CLIENT_PATHS:
        if not _origin_allowed(hub, request):
            # Cross-site WebSocket hijacking: another site's page would ride
            # on its visitor's network position and cookies (and a fallback
            # request on the same).
            hub.metrics.errors["origin"] += 1
            logger.info(
                "%s refused: origin %.100r not allowed",
                path,
                request.headers.get("Origin"),
            )
            return HTTPResponse(403, "origin not allowed")
        if path != WEBSOCKET_PATH:
            return await handle_fallback(hub, request)
        return None
    if request.headers.get("Upgrade") is not None:
        return HTTPResponse(404, f"the WebSocket endpoint is {WEBSOCKET_PATH}")
    if path == "/healthz":
        broker = hub.broker.status()
        if broker.get("ok"):
            return _json(200, {"status": "ok", "broker": broker})
        return _json(503, {"status": "broker unavailable", "broker": broker})
    if path == "/metrics":
        if hub.config.api_key is not None:
            try:
                _authorize(hub, request)
            except APIError as exc:
                return _error(hub, request, exc)
        return HTTPResponse(
            200,
            hub.metrics_text().encode(),
            [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
        )
    if path.startswith("/api/"):
        try:
            _authorize(hub, request)
            return _json(200, await _api(hub, request))
        except APIError as exc:
            return _error(hub, request, exc)
    if path in _CLIENT:
        # The browser client, demo or not; public code, which pages of any
        # origin may load as a module.
        return _static(request, path[1:], [("Access-Control-Allow-Origin", "*")])
    if hub.config.demo:
        if path == demo.LOGIN_PATH:
            if not _origin_allowed(hub, request):
                # Another site's page would pick its visitors' names.
                return HTTPResponse(403, "origin not allowed")
            return demo.handle_login(request, secure=hub.config.tls_cert is not None)
        name = _PAGES.get(path, path.lstrip("/"))
        if _static_file(name) is not None:
            return _static(request, name)
    return HTTPResponse(404, "not found")


def _static(
    request: Request, name: str, headers: list[tuple[str, str]] | None = None
) -> HTTPResponse:
    """A file of the static folder, to GET or HEAD."""
    if request.method not in ("GET", "HEAD"):
        return HTTPResponse(405, "use GET", [("Allow", "GET, HEAD")])
    static = _static_file(name)
    assert static is not None
    body, content_type = static
    if request.method == "HEAD":
        body = b""  # the connection closes after it: no length needed
    return HTTPResponse(200, body, [("Content-Type", content_type), *(headers or [])])


def _error(hub: Hub, request: Request, exc: APIError) -> HTTPResponse:
    hub.metrics.errors[f"api_{exc.status}"] += 1
    logger.info(
        "HTTP %d for %s %.100s: %s", exc.status, request.method, request.path, exc
    )
    return _json(exc.status, {"error": {"code": exc.status, "message": exc.message}})


def _authorize(hub: Hub, request: Request) -> None:
    key = hub.config.api_key
    if key is not None:
        if not api_key_matches(request.headers.get("Authorization"), key):
            raise APIError(401, "missing or wrong API key")
    elif not _is_loopback(hub.config.host):
        raise APIError(403, "set an API key to use the HTTP API on a public address")
    elif not _is_loopback(_host_name(request.headers.get("Host") or "")):
        # DNS rebinding: a page of evil.example, resolved to 127.0.0.1, would
        # reach the keyless API with its own name as Host.
        raise APIError(403, "without an API key, the Host must be a loopback name")
    elif not _loopback_origin(request.headers.get("Origin")):
        # Any web page may POST here from a visitor's browser.
        raise APIError(403, "without an API key, pages of other origins are refused")
    elif any(name in request.headers for name in _FORWARDED):
        # A reverse proxy on this machine makes every caller look local.
        raise APIError(403, "without an API key, proxied requests are refused")
    elif request.method == "POST" and not _is_json(request):
        # A page may POST text/plain to another site without asking first
        # (no CORS preflight), even where it sends no Origin; JSON it may not.
        raise APIError(415, "without an API key, a POST body must be application/json")


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("Content-Type") or ""
    return content_type.partition(";")[0].strip().lower() == "application/json"


#: Headers a reverse proxy adds to say whom it forwards for.
_FORWARDED = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP")


@functools.lru_cache(maxsize=64)  # the keyless API asks on every call
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(authority: str) -> str:
    """``host`` of ``host:port`` or ``[v6]:port``."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")]
    return authority.rpartition(":")[0] if ":" in authority else authority


def _split_origin(origin: str) -> SplitResult | None:
    """The parts of an Origin, or None where it is not even a URL."""
    try:
        return urlsplit(origin)
    except ValueError:  # "http://[", say: a bracket left open
        return None


def _loopback_origin(origin: str | None) -> bool:
    """No Origin (not a browser), or a page served from this machine."""
    if origin is None:
        return True
    parts = _split_origin(origin)
    return (
        parts is not None
        and parts.scheme in ("http", "https")
        and _is_loopback(parts.hostname or "")
    )


def _origin_allowed(hub: Hub, request: Request) -> bool:
    """May a page of the request's Origin open the hub's WebSocket (and
    read its fallbacks' answers)? Yes without an Origin (not a browser), for
    the hub's own pages (same host), for pages served from this machine, and
    for ``allowed_origins``."""
    origin = request.headers.get("Origin")
    if origin is None or origin in hub.config.allowed_origins:
        return True
    parts = _split_origin(origin)
    host = request.headers.get("Host") or ""
    same_host = parts is not None and parts.netloc.lower() == host.lower()
    return same_host or _loopback_origin(origin)


async def _api(hub: Hub, request: Request) -> Any:
    # HTTP in, JSON out: what each endpoint does is hub.api()'s.
    api = hub.api()
    route = (request.method, request.path)
    if route == ("POST", "/api/publish"):
        body = _body(request)
        key = body.get("idempotency_key")
        offset, epoch = await api.publish(
            body.get("channel", ""), _data(body), idempotency_key=key
        )
        # The API's most frequent answer, without the generic encoder.
        return Raw(f'{{"offset":{offset},"epoch":{dumps(epoch)}}}')
    if route == ("POST", "/api/broadcast"):
        body = _body(request)
        channels = body.get("channels", [])
        key = body.get("idempotency_key")  # per channel
        results = await api.broadcast(channels, _data(body), idempotency_key=key)
        return {
            "results": [
                {"channel": channel, **p._asdict()}
                for channel, p in zip(channels, results, strict=True)
            ]
        }
    if route == ("GET", "/api/presence"):
        clients = await api.presence(_channel(request))
        return {"clients": [c.to_json() for c in clients]}
    if route == ("GET", "/api/presence_stats"):
        return (await api.presence_stats(_channel(request)))._asdict()
    if route == ("GET", "/api/history"):
        return await _history(api, request)
    if route == ("GET", "/api/channels"):
        return {
            "channels": [
                {"channel": channel, "subscribers": count}
                for channel, count in (await api.channels()).items()
            ]
        }
    if route == ("POST", "/api/disconnect"):
        body = _body(request)
        return {"disconnected": await api.disconnect(body.get("user", ""))}
    if route == ("POST", "/api/subscribe"):
        body = _body(request)
        since = body.get("since")
        try:
            since = None if since is None else parse_since(since)
        except CommandError as exc:
            raise APIError(exc.code, exc.message) from None
        user, channel = body.get("user", ""), body.get("channel", "")
        return {"subscribed": await api.subscribe(user, channel, since)}
    if route == ("POST", "/api/unsubscribe"):
        body = _body(request)
        user, channel = body.get("user", ""), body.get("channel", "")
        return {"unsubscribed": await api.unsubscribe(user, channel)}
    raise APIError(404, f"no API endpoint {request.method} {request.path}")


async def _history(api: InProcessAPI, request: Request) -> Any:
    channel = _channel(request)
    limit_text = _query(request, "limit")
    limit = None
    if limit_text is not None:
        if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) < 16):
            raise APIError(400, "limit must be a non-negative integer")
        limit = int(limit_text)
    since_text = _query(request, "since")
    since = None
    if since_text is not None:
        offset, _, epoch = since_text.partition(":")
        try:
            since = parse_since({"offset": int(offset), "epoch": epoch})
        except (ValueError, CommandError):
            raise APIError(400, "since must be OFFSET:EPOCH") from None
    result = await api.raw_history(channel, limit=limit, since=since)
    if not result.complete:
        return encode_position(result, (), complete=False)
    return encode_position(result, result.publications)


def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body)
    except (ValueError, RecursionError):
        raise APIError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


def _data(body: dict[str, Any]) -> Any:
    if "data" not in body:
        raise APIError(400, "data is missing")
    return body["data"]


def _query(request: Request, name: str) -> str | None:
    values = parse_qs(request.query).get(name)
    return values[0] if values else None


def _channel(request: Request) -> str:
    channel = _query(request, "channel")
    if channel is None:
        raise APIError(400, "query parameter channel is missing")
    return channel


def _static_file(name: str) -> tuple[bytes, str] | None:
    """A file of the hub's static folder, by plain name."""
    return _static_files().get(name)


@cache
def _static_files() -> dict[str, tuple[bytes, str]]:
    # Read once; a request can only name a file that is in this table.
    files = {}
    for entry in (resources.files("tidings.hub") / "static").iterdir():
        content_type = _CONTENT_TYPES.get("." + entry.name.rpartition(".")[2])
        if entry.is_file() and content_type is not None:
            files[entry.name] = (entry.read_bytes(), content_type)
    return files
