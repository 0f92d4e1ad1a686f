"""The chat example's web app (Starlette): the pages, the login, and the
endpoints through which the tidings hub asks the app before it acts
(``[proxy]`` in tidings.toml; docs/integrate.md).

Browsers load their pages from here and open their WebSocket to the hub.
The hub passes each client's ``Cookie`` header to the connect hook, which
finds the user from the session cookie this app set at login: the page
never names its user, and never holds a token.

Run it with ``run.py`` (which also starts the hub), or alone::

    CHAT_HOOK_SECRET=... uvicorn --app-dir examples/chat --factory \\
        app:create_app --port 9000

Settings, from the environment:

- ``CHAT_HOOK_SECRET`` (required): the hub's ``proxy.secret``, sent with
  each of its calls as ``X-Tidings-Secret``; calls without it are refused.
- ``CHAT_DB``: the SQLite file (default ``chat.db`` beside this file).
- ``CHAT_HUB_URL``: the hub's WebSocket URL as browsers reach it; by
  default ``ws://<the page's host>:<CHAT_HUB_PORT>/ws``, so that the page's
  cookies, set for that host, go with the WebSocket.
- ``CHAT_HUB_PORT``: default 8000.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import re
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from store import Message, Store, User

HERE = Path(__file__).parent

#: The session cookie: ``<session id>.<HMAC-SHA256 of it>``.
COOKIE = "chat_session"
COOKIE_MAX_AGE = 7 * 24 * 3600

#: A connection is checked again (the refresh hook) this often: a user who
#: logged out elsewhere is disconnected within this many seconds.
SESSION_CHECK = 300

AVATARS = ("🦊", "🐼", "🐙", "🦉", "🐢", "🐝", "🦄", "🐧")
MAX_NAME = 40
MAX_TEXT = 2000
#: Messages per page of history, when the page loads and per "load older".
PAGE = 50
MAX_PAGE = 200

#: The word filter: a message with one of these words is refused (422), with
#: a message the page shows; it is neither stored nor published.
BLOCKED_WORDS = ("darn", "heck", "frak")
_BLOCKED = re.compile(r"\b(" + "|".join(BLOCKED_WORDS) + r")\b", re.IGNORECASE)

#: Channels are ``rooms:<room id>``: the namespace of tidings.toml.
NAMESPACE = "rooms"


@dataclass(frozen=True, slots=True)
class Settings:
    db: Path
    hook_secret: str
    hub_url: str
    hub_port: int

    @classmethod
    def from_env(cls) -> Settings:
        secret = os.environ.get("CHAT_HOOK_SECRET", "")
        if not secret:
            raise RuntimeError(
                "set CHAT_HOOK_SECRET to the hub's proxy.secret (run.py does both)"
            )
        return cls(
            db=Path(os.environ.get("CHAT_DB") or HERE / "chat.db"),
            hook_secret=secret,
            hub_url=os.environ.get("CHAT_HUB_URL", ""),
            hub_port=int(os.environ.get("CHAT_HUB_PORT", "8000")),
        )


class HookError(Exception):
    """Refuse a hook call: the client's command gets this error (400-499)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HookDisconnect(Exception):
    """End the client's connection with this close code (4000-4999)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def create_app(settings: Settings | None = None) -> Starlette:
    """The app; its settings from the environment unless given."""
    settings = settings or Settings.from_env()
    store = Store(settings.db)
    key = b""  # the cookie key, read from the database at startup

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal key
        await run_in_threadpool(store.open)
        key = await run_in_threadpool(store.secret_key)
        yield

    # -- the session cookie ----------------------------------------------------------

    def sign(session: str) -> str:
        mac = hmac.new(key, session.encode(), hashlib.sha256).digest()
        return f"{session}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"

    def session_of(cookie_header: str | None) -> str | None:
        """The session id in a ``Cookie`` header, if its signature holds."""
        for part in (cookie_header or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                session, _, _ = value.partition(".")
                if session and hmac.compare_digest(sign(session), value):
                    return session
        return None

    async def user_of(cookie_header: str | None) -> User | None:
        session = session_of(cookie_header)
        if session is None:
            return None
        return await run_in_threadpool(store.session_user, session)

    # -- pages -----------------------------------------------------------------------

    async def index(request: Request) -> Response:
        return RedirectResponse("/rooms/lobby", 303)

    async def login_page(request: Request) -> Response:
        return login_form(request.query_params.get("next", "/"))

    async def login(request: Request) -> Response:
        # A urlencoded form, read without python-multipart.
        form = parse_qs((await request.body()).decode(errors="replace"))
        name = " ".join(form.get("name", [""])[0].split())
        avatar = form.get("avatar", [""])[0]
        target = safe_next(form.get("next", ["/"])[0])
        if not 1 <= len(name) <= MAX_NAME or not name.isprintable():
            return login_form(target, f"A name is 1 to {MAX_NAME} characters.", 400)
        if avatar not in AVATARS:
            return login_form(target, "Pick an avatar.", 400)
        _, session = await run_in_threadpool(store.log_in, name, avatar)
        response = RedirectResponse(target, 303)
        response.set_cookie(
            COOKIE,
            sign(session),
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(request: Request) -> Response:
        session = session_of(request.headers.get("cookie"))
        if session is not None:
            await run_in_threadpool(store.log_out, session)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE)
        return response

    async def room_page(request: Request) -> Response:
        room = request.path_params["room"]
        user = await user_of(request.headers.get("cookie"))
        if user is None:
            return RedirectResponse(f"/login?next={quote(request.url.path)}", 303)
        title = await run_in_threadpool(store.room, room)
        if title is None:
            return HTMLResponse("<h1>No such room</h1><a href='/'>Back</a>", 404)
        return HTMLResponse(
            render(
                "chat.html",
                room=room,
                title=title,
                user=user.user_id,
                name=user.name,
                avatar=user.avatar,
                hub_url=settings.hub_url,
                hub_port=str(settings.hub_port),
            )
        )

    client_js = (resources.files("tidings.hub") / "static" / "tidings.js").read_bytes()

    async def tidings_js(request: Request) -> Response:
        # The browser client, from the installed tidings package: served
        # from this app's origin, so that the page imports it as its own.
        return Response(client_js, media_type="text/javascript")

    # -- the hooks: the hub asks, the app answers -------------------------------------

    def hook(
        answer: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint for the hub: checks the shared secret, reads the JSON
        body, and answers with ``answer``'s result, or the error or
        disconnect it raised."""

        async def endpoint(request: Request) -> Response:
            secret = request.headers.get("x-tidings-secret", "")
            if not hmac.compare_digest(secret.encode(), settings.hook_secret.encode()):
                return JSONResponse({"detail": "not the hub"}, 403)
            try:
                body = json.loads(await request.body())
            except ValueError:
                return JSONResponse({"detail": "not JSON"}, 400)
            if not isinstance(body, dict):
                return JSONResponse({"detail": "not an object"}, 400)
            try:
                result = await answer(body)
            except HookError as exc:
                return JSONResponse(
                    {"error": {"code": exc.code, "message": exc.message}}
                )
            except HookDisconnect as exc:
                return JSONResponse(
                    {"disconnect": {"code": exc.code, "reason": exc.reason}}
                )
            return JSONResponse({"result": result})

        return endpoint

    async def on_connect(body: dict[str, Any]) -> dict[str, Any]:
        """Who the client is: the session cookie's user, or nobody."""
        user = await user_of(cookie_of(body))
        if user is None:
            # 4001: the page sends its user to the login form.
            raise HookDisconnect(4001, "log in first")
        return {
            "user": user.user_id,
            # Shown with the user in presence, join and leave, and in the
            # info of their publications.
            "info": {"name": user.name, "avatar": user.avatar},
            "expire_at": time.time() + SESSION_CHECK,
        }

    async def on_refresh(body: dict[str, Any]) -> dict[str, Any]:
        """Keep the connection while its session lasts."""
        user = await user_of(cookie_of(body))
        if user is None or user.user_id != body.get("user"):
            return {"expired": True}  # logged out: the hub closes with 4002
        return {"expire_at": time.time() + SESSION_CHECK}

    async def on_subscribe(body: dict[str, Any]) -> dict[str, Any]:
        """Members only."""
        await member_of(body, room_of(body.get("channel")))
        return {}

    async def on_publish(body: dict[str, Any]) -> dict[str, Any]:
        """Members only; the word filter; stored, then published as stored."""
        room = room_of(body.get("channel"))
        user = await member_of(body, room)
        data = body.get("data")
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise HookError(400, "a message is {text: a string}")
        text = text.strip()
        if len(text) > MAX_TEXT:
            raise HookError(413, f"a message is at most {MAX_TEXT} characters")
        blocked = _BLOCKED.search(text)
        if blocked:
            raise HookError(
                422,
                f'"{blocked.group(0)}" is not allowed here: the message was not sent',
            )
        message = await run_in_threadpool(store.add_message, room, user, text)
        # Published in place of what the client sent: every client shows
        # the stored message, its id and its time.
        return {"data": message.to_json()}

    async def on_rpc(body: dict[str, Any]) -> dict[str, Any]:
        method = body.get("method")
        data = body.get("data")
        if not isinstance(data, dict):
            data = {}
        call = RPC.get(method) if isinstance(method, str) else None
        if call is None:
            raise HookError(404, f"no method {method!r}")
        return {"data": await call(body, data)}

    # -- the page's requests (rpc) -----------------------------------------------------

    async def rooms_list(body: dict[str, Any], data: dict[str, Any]) -> Any:
        user = user_id_of(body)
        rooms = await run_in_threadpool(store.rooms, user)
        return {"rooms": [room.to_json() for room in rooms]}

    async def rooms_join(body: dict[str, Any], data: dict[str, Any]) -> Any:
        room = data.get("room")
        if not isinstance(room, str) or not await run_in_threadpool(
            store.join, user_id_of(body), room
        ):
            raise HookError(404, f"no room {room!r}")
        return {"room": room}

    async def history_older(body: dict[str, Any], data: dict[str, Any]) -> Any:
        room = await readable_room(body, data)
        before = data.get("before")
        if before is not None and not is_int(before):
            raise HookError(400, "before is a message id, or null for the newest")
        limit = page_size(data)
        messages, more = await run_in_threadpool(store.older, room, before, limit)
        return page_of(messages, more)

    async def history_newer(body: dict[str, Any], data: dict[str, Any]) -> Any:
        room = await readable_room(body, data)
        after = data.get("after")
        if not is_int(after):
            raise HookError(400, "after is a message id")
        limit = page_size(data)
        messages, more = await run_in_threadpool(store.newer, room, after, limit)
        return page_of(messages, more)

    RPC: dict[str, Callable[[dict[str, Any], dict[str, Any]], Awaitable[Any]]] = {
        "rooms.list": rooms_list,
        "rooms.join": rooms_join,
        "history.older": history_older,
        "history.newer": history_newer,
    }

    async def member_of(body: dict[str, Any], room: str) -> User:
        """The calling user, if a member of ``room``; else a refusal."""
        user_id = user_id_of(body)
        if await run_in_threadpool(store.room, room) is None:
            raise HookError(404, f"no room {room!r}")
        if not await run_in_threadpool(store.is_member, user_id, room):
            raise HookError(403, f"you are not a member of #{room}: join it first")
        info = body.get("info")
        if not isinstance(info, dict):
            raise HookError(400, "no user info")  # not given by our connect hook
        return User(user_id, str(info.get("name")), str(info.get("avatar")))

    async def readable_room(body: dict[str, Any], data: dict[str, Any]) -> str:
        room = data.get("room")
        if not isinstance(room, str):
            raise HookError(400, "room is a room id")
        await member_of(body, room)
        return room

    return Starlette(
        routes=[
            Route("/", index),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/rooms/{room}", room_page),
            Route("/tidings.js", tidings_js),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            Route("/tidings/connect", hook(on_connect), methods=["POST"]),
            Route("/tidings/refresh", hook(on_refresh), methods=["POST"]),
            Route("/tidings/subscribe", hook(on_subscribe), methods=["POST"]),
            Route("/tidings/publish", hook(on_publish), methods=["POST"]),
            Route("/tidings/rpc", hook(on_rpc), methods=["POST"]),
        ],
        lifespan=lifespan,
    )


# -- helpers ---------------------------------------------------------------------------


def cookie_of(body: dict[str, Any]) -> str | None:
    """The client's ``Cookie`` header, as the hub passed it on
    (``proxy.headers`` in tidings.toml)."""
    headers = body.get("headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if name.lower() == "cookie" and isinstance(value, str):
                return value
    return None


def room_of(channel: Any) -> str:
    """The room of a channel ``rooms:<room>``."""
    if not isinstance(channel, str):
        raise HookError(400, "channel is a string")
    namespace, _, room = channel.partition(":")
    if namespace != NAMESPACE or not room:
        raise HookError(404, f"no room in {channel!r}")
    return room


def user_id_of(body: dict[str, Any]) -> int:
    """The user the hub says is calling: the id our connect hook gave."""
    user = body.get("user")
    if not isinstance(user, str) or not user.isdigit():
        raise HookError(401, "log in first")
    return int(user)


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def page_size(data: dict[str, Any]) -> int:
    limit = data.get("limit", PAGE)
    if not is_int(limit) or not 1 <= limit <= MAX_PAGE:
        raise HookError(400, f"limit is 1 to {MAX_PAGE}")
    return int(limit)


def page_of(messages: list[Message], more: bool) -> dict[str, Any]:
    return {"messages": [m.to_json() for m in messages], "more": more}


def safe_next(target: str) -> str:
    """Where to go after the login: a path of this site only."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def render(page: str, **values: str) -> str:
    """A page of templates/, its ``$names`` replaced by ``values``, escaped."""
    template = string.Template((HERE / "templates" / page).read_text())
    return template.substitute({k: html.escape(v) for k, v in values.items()})


def login_form(target: str, error: str = "", status: int = 200) -> HTMLResponse:
    avatars = "".join(
        f'<label class="avatar-choice"><input type="radio" name="avatar" '
        f'value="{a}"{" checked" if i == 0 else ""}><span>{a}</span></label>'
        for i, a in enumerate(AVATARS)
    )
    page = string.Template((HERE / "templates" / "login.html").read_text())
    return HTMLResponse(
        page.substitute(
            next=html.escape(safe_next(target)),
            error=html.escape(error),
            avatars=avatars,
            max_name=str(MAX_NAME),
        ),
        status,
    )
