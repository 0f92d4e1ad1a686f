"""The chat demo's login (hub/demo.py): ``POST /demo/name`` keeps a name in
a cookie, and the demo's connect hook gives it to the connection in its
``info``, unless the application answers connects itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from tidings.hub import Hub, HubConfig, NamespaceConfig, ProxyConfig
from tidings.hub.demo import COOKIE, handle_login
from tidings.hub.hooks import Connect, HookContext
from tidings.protocol import Headers, Request

from ..conftest import Backend, HTTPAnswer
from .conftest import HTTP
from .conftest import Connect as ConnectPeer

ATTRIBUTES = "; Path=/; HttpOnly; SameSite=Lax"
#: The namespaces of a hub with the demo on and none configured.
DEMO_NAMESPACES = HubConfig().namespaces


@pytest.fixture
async def demo_hub() -> AsyncIterator[Hub]:
    """A hub as ``tidings serve`` runs with nothing configured: the demo on."""
    async with Hub(HubConfig(port=0)) as hub:
        yield hub


async def login(
    http: HTTP, hub: Hub, body: Any, content_type: str = "application/json"
) -> HTTPAnswer:
    return await http(
        hub, "POST", "/demo/name", body, headers=(("Content-Type", content_type),)
    )


def cookie(name: str) -> tuple[str, str]:
    """The Cookie header of a browser that logged in as ``name``."""
    return ("Cookie", f"theme=dark; {COOKIE}={quote(name, safe='')}")


async def test_a_valid_name_sets_an_http_only_cookie(demo_hub: Hub, http: HTTP) -> None:
    answer = await login(http, demo_hub, {"name": "  Zoë 🦊 "})
    assert answer.status == 200, answer
    assert answer.json() == {"name": "Zoë 🦊"}  # without the spaces around it
    assert answer.headers["set-cookie"] == (
        f"{COOKIE}=Zo%C3%AB%20%F0%9F%A6%8A{ATTRIBUTES}"
    )
    assert answer.headers["cache-control"] == "no-store"

    answer = await login(
        http, demo_hub, b"name=Bob+%26+Co", "application/x-www-form-urlencoded"
    )
    assert answer.status == 200, answer
    assert answer.headers["set-cookie"] == f"{COOKIE}=Bob%20%26%20Co{ATTRIBUTES}"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ({"name": ""}, "application/json"),
        ({"name": "   "}, "application/json"),
        ({"name": "x" * 41}, "application/json"),
        ({"name": "a\x00b"}, "application/json"),
        ({"name": "a\nb"}, "application/json"),
        ({"name": "a\u202eb"}, "application/json"),  # a bidi override
        (b'{"name": "\\ud800"}', "application/json"),  # a lone surrogate
        ({"name": 42}, "application/json"),
        ({"name": None}, "application/json"),
        ({}, "application/json"),
        (["alice"], "application/json"),
        (b"not json", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b"[" * 50_000, "application/json"),  # too deep to parse
        (b"name=%ff", "application/x-www-form-urlencoded"),  # not UTF-8
        (b"\xff", "application/x-www-form-urlencoded"),
        (b"name=", "application/x-www-form-urlencoded"),
        (b"nom=alice", "application/x-www-form-urlencoded"),
        (b"&".join([b"a=1"] * 20), "application/x-www-form-urlencoded"),
    ],
)
async def test_bad_names_are_400_and_set_no_cookie(
    demo_hub: Hub, http: HTTP, body: Any, content_type: str
) -> None:
    answer = await login(http, demo_hub, body, content_type)
    assert answer.status == 400, answer
    assert "set-cookie" not in answer.headers
    assert answer.json()["error"] == {
        "code": 400,
        "message": "name must be 1 to 40 printable characters (no control characters)",
    }


def test_over_tls_the_cookie_is_sent_back_over_tls_only() -> None:
    request = Request(
        "POST",
        "/demo/name",
        Headers([("Content-Type", "application/json")]),
        b'{"name": "alice"}',
    )
    answer = handle_login(request, secure=True)
    assert (answer.status, dict(answer.headers)["Set-Cookie"]) == (
        200,
        f"{COOKIE}=alice{ATTRIBUTES}; Secure",
    )


async def test_the_login_takes_a_post_of_json_or_a_form_from_the_hubs_pages(
    demo_hub: Hub, http: HTTP
) -> None:
    answer = await http(demo_hub, "GET", "/demo/name")
    assert (answer.status, answer.headers["allow"]) == (405, "POST")
    answer = await login(http, demo_hub, b"alice", "text/plain")
    assert answer.status == 415, answer
    assert answer.json()["error"]["code"] == 415
    # Another site's page may not name its visitors.
    answer = await http(
        demo_hub,
        "POST",
        "/demo/name",
        {"name": "alice"},
        headers=(("Origin", "https://evil.example"),),
    )
    assert answer.status == 403, answer
    assert "set-cookie" not in answer.headers


async def test_without_the_demo_there_is_no_login_and_no_hook(
    http: HTTP, connect: ConnectPeer
) -> None:
    config = HubConfig(port=0, demo=False, namespaces=DEMO_NAMESPACES)
    async with Hub(config) as hub:
        answer = await login(http, hub, {"name": "alice"})
        assert answer.status == 404, answer
        assert hub.hooks is None
        peer = await connect(hub, hello=False, headers=[cookie("alice")])
        assert "info" not in await peer.result("connect")


async def test_the_demo_hook_names_a_connection_by_its_cookie(
    demo_hub: Hub, connect: ConnectPeer
) -> None:
    zoe = await connect(demo_hub, hello=False, headers=[cookie("Zoë 🦊")])
    result = await zoe.result("connect")
    assert (result["user"], result["info"]) == ("", {"name": "Zoë 🦊"})
    await zoe.result("subscribe", channel="chat:lobby")
    presence = await zoe.result("presence", channel="chat:lobby")
    assert presence["clients"] == [
        {"client": result["client"], "user": "", "info": {"name": "Zoë 🦊"}}
    ]
    # What the client writes into its data names nobody.
    await zoe.result(
        "publish", channel="chat:lobby", data={"name": "Mallory", "text": "hi"}
    )
    [pub] = await zoe.pubs(1, "chat:lobby")
    assert pub["info"] == {
        "client": result["client"],
        "user": "",
        "info": {"name": "Zoë 🦊"},
    }
    # Nor does what it sends with connect: the cookie alone does.
    again = await connect(demo_hub, hello=False, headers=[cookie("Zoë 🦊")])
    result = await again.result("connect", data={"name": "Mallory"})
    assert result["info"] == {"name": "Zoë 🦊"}


@pytest.mark.parametrize(
    "header",
    [
        None,
        ("Cookie", "theme=dark"),
        ("Cookie", f"{COOKIE}=%ff"),  # not UTF-8
        ("Cookie", f"{COOKIE}=a%00b"),
        ("Cookie", f"{COOKIE}={'x' * 41}"),
        ("Cookie", f"{COOKIE}=%20"),
        ("Cookie", f'{COOKIE}="unterminated'),
    ],
)
async def test_without_a_valid_cookie_a_connection_has_no_name(
    demo_hub: Hub, connect: ConnectPeer, header: tuple[str, str] | None
) -> None:
    peer = await connect(demo_hub, hello=False, headers=[header] if header else [])
    result = await peer.result("connect")
    assert result == {"client": result["client"], "user": ""}
    await peer.result("publish", channel="chat:lobby", data={"text": "still here"})


async def test_the_applications_connect_hook_in_python_wins(
    connect: ConnectPeer,
) -> None:
    hub = Hub(HubConfig(port=0))

    @hub.on_connect
    async def application(context: HookContext) -> Connect:
        return Connect("app-user", info={"from": "the app"})

    async with hub:
        peer = await connect(hub, hello=False, headers=[cookie("alice")])
        result = await peer.result("connect")
        assert (result["user"], result["info"]) == ("app-user", {"from": "the app"})


async def test_the_applications_connect_endpoint_wins(
    connect: ConnectPeer, backend: Backend
) -> None:
    proxy = ProxyConfig(connect=backend.url("connect"), timeout=5.0)
    async with Hub(HubConfig(port=0, proxy=proxy)) as hub:
        peer = await connect(hub, hello=False, headers=[cookie("alice")])
        # The back end answers what this data asks of it: the demo's hook,
        # which would have named the client alice, is not asked.
        asked = {"result": {"user": "app-user", "info": {"from": "the app"}}}
        result = await peer.result("connect", data=asked)
        assert (result["user"], result["info"]) == ("app-user", {"from": "the app"})
        calls = await backend.calls("connect")
        assert calls[-1]["body"]["headers"]["Cookie"] == cookie("alice")[1]


async def test_a_proxy_table_without_connect_leaves_connects_alone(
    connect: ConnectPeer,
) -> None:
    # Hooks over HTTP and in Python do not mix: the demo's stays out.
    proxy = ProxyConfig(rpc="http://127.0.0.1:9/rpc")
    async with Hub(HubConfig(port=0, proxy=proxy)) as hub:
        assert hub.hooks is not None and not hub.hooks.enabled("connect")
        peer = await connect(hub, hello=False, headers=[cookie("alice")])
        assert "info" not in await peer.result("connect")


async def test_a_named_demo_client_is_still_anonymous(
    connect: ConnectPeer,
) -> None:
    # Let in by a connect hook as the user "", a client may publish only
    # where anonymous clients may, not where a token is needed.
    namespaces = {
        **DEMO_NAMESPACES,
        "members": NamespaceConfig(allow_publish=True),
    }
    async with Hub(HubConfig(port=0, namespaces=namespaces)) as hub:
        peer = await connect(hub, hello=False, headers=[cookie("alice")])
        assert (await peer.result("connect"))["info"] == {"name": "alice"}
        assert await peer.error("publish", channel="members:x", data=1) == (
            403,
            "not allowed to publish to members:x",
        )


@pytest.mark.parametrize(
    "name", ['a; b="c"', "back\\slash, comma", "%41 stays %41", "Zoë 🦊 日本"]
)
async def test_the_cookie_the_login_sets_names_the_connection(
    demo_hub: Hub, http: HTTP, connect: ConnectPeer, name: str
) -> None:
    answer = await login(http, demo_hub, {"name": name})
    set_cookie = answer.headers["set-cookie"]
    assert set_cookie.endswith(ATTRIBUTES)
    peer = await connect(
        demo_hub, hello=False, headers=[("Cookie", set_cookie.split(";")[0])]
    )
    assert (await peer.result("connect"))["info"] == {"name": name}
