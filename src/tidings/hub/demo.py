"""The chat demo's login, built as an application on the hooks would build
it (docs/integrate.md): the page's name box posts the name to
``POST /demo/name``, which keeps it in a cookie, and a connect hook reads
that cookie and gives the connection the name in its ``info``. Presence,
joins, leaves and every publication carry that ``info``, so a name the page
shows comes from the hub, never from what a client writes into its
messages.

The login checks no password: anyone may take any name, as in any demo.
The cookie therefore holds the name itself, not a signed session id as a
real application's would: signing it would vouch for nothing more.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from ..engine.http import HTTPResponse
from ..protocol import Request
from .callables import CallableHooks
from .hooks import Connect, HookContext, Hooks
from .wire import dumps

__all__ = ["COOKIE", "LOGIN_PATH", "MAX_NAME", "connect", "handle_login", "hook_wanted"]

#: Where the chat page posts its name.
LOGIN_PATH = "/demo/name"
#: The cookie that holds it, percent-encoded.
COOKIE = "tidings_demo_name"
#: The longest name, in characters (the page's name box says the same).
MAX_NAME = 40


def hook_wanted(hooks: Hooks | None) -> bool:
    """Whether the demo's connect hook may answer for this hub: only where
    the application has not. The application's hooks win: a ``[proxy]``
    table (whose connect URL, if any, is the application's, and with which
    hooks in Python cannot mix) or its own ``@hub.on_connect``. The demo's
    clients stay the anonymous user, allowed what anonymous clients are."""
    return hooks is None or (
        isinstance(hooks, CallableHooks) and not hooks.enabled("connect")
    )


async def connect(context: HookContext) -> Connect:
    """The demo's connect hook: the anonymous user, named by the login
    cookie if it holds a name (any other value is ignored, as no cookie)."""
    name = _valid(_decode(context.cookies.get(COOKIE)))
    if name is None:
        return Connect("")
    return Connect("", info={"name": name})


def handle_login(request: Request, *, secure: bool) -> HTTPResponse:
    """``POST /demo/name`` with ``{"name": ...}`` as JSON or a form: keep the
    name in the login cookie (``Secure`` when the hub serves TLS), or
    answer 400 for a name that is not 1 to ``MAX_NAME`` printable
    characters."""
    if request.method != "POST":
        return HTTPResponse(405, "use POST", [("Allow", "POST")])
    content_type = request.headers.get("Content-Type") or ""
    kind = content_type.partition(";")[0].strip().lower()
    if kind == "application/json":
        name = _valid(_json_name(request.body))
    elif kind == "application/x-www-form-urlencoded":
        name = _valid(_form_name(request.body))
    else:
        return _error(415, "send the name as application/json or a form")
    if name is None:
        return _error(
            400,
            f"name must be 1 to {MAX_NAME} printable characters (no control "
            "characters)",
        )
    attributes = "; Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
    return HTTPResponse(
        200,
        dumps({"name": name}).encode(),
        [
            ("Content-Type", "application/json"),
            ("Set-Cookie", f"{COOKIE}={quote(name, safe='')}{attributes}"),
            # The answer names the visitor: no cache may keep it.
            ("Cache-Control", "no-store"),
        ],
    )


def _error(status: int, message: str) -> HTTPResponse:
    body = dumps({"error": {"code": status, "message": message}})
    return HTTPResponse(status, body.encode(), [("Content-Type", "application/json")])


def _json_name(body: bytes) -> Any:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return value.get("name") if isinstance(value, dict) else None


def _form_name(body: bytes) -> str | None:
    try:
        fields = parse_qs(body.decode(), errors="strict", max_num_fields=16)
    except ValueError:  # not UTF-8, a bad escape, too many fields
        return None
    values = fields.get("name")
    return values[0] if values else None


def _decode(cookie: str | None) -> str | None:
    if cookie is None:
        return None
    try:
        return unquote(cookie, errors="strict")
    except UnicodeDecodeError:  # not what the login sets: no name
        return None


def _valid(name: Any) -> str | None:
    """``name`` without surrounding spaces, if it is a valid name. Printable
    only: no control or format characters (a bidi override would turn the
    rest of a line around), no lone surrogates (not UTF-8), no line
    breaks."""
    if not isinstance(name, str):
        return None
    stripped = name.strip()
    if not 0 < len(stripped) <= MAX_NAME or not stripped.isprintable():
        return None
    return stripped
