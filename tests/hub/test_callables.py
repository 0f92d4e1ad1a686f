"""The hooks as Python functions (hub/callables.py): a hub in the
application's own process, steered by ``@hub.on_connect`` and the others,
answering as the HTTP proxy's back end would, with the same bounds."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import tidings
from tidings.hub import Hub, HubConfig, NamespaceConfig
from tidings.hub.config import ConfigError, ProxyConfig
from tidings.hub.hooks import (
    Connect,
    Disconnect,
    HookContext,
    Publish,
    Refuse,
    Subscribe,
)

from ..conftest import Peer

NAMESPACES = {
    "room": NamespaceConfig(
        subscribe_proxy=True,
        publish_proxy=True,
        presence=True,
        history_size=10,
        history_ttl=60,
    ),
}


def make_hub(namespaces: Any = NAMESPACES, **proxy: Any) -> Hub:
    config = HubConfig(
        port=0, demo=False, namespaces=namespaces, proxy=ProxyConfig(**proxy)
    )
    return Hub(config)


def steered() -> Hub:
    """A hub whose every hook is a Python function of a small chat app."""
    hub = make_hub()
    sessions = {"s3cret": "alice", "b0b": "bob"}

    @hub.on_connect
    async def connect(context: HookContext) -> Connect:
        user = sessions.get(context.cookies.get("session", ""))
        if user is None:
            raise Refuse(401, "log in first")
        if user == "bob":
            raise Disconnect(4403, "banned")
        return Connect(user, info={"name": user.title()}, data={"motd": "hi"})

    @hub.on_subscribe
    async def subscribe(context: HookContext) -> Subscribe:
        if context.channel != "room:lobby":
            raise Refuse(403, "members only")
        return Subscribe(info={"name": "Alice", "room": "lobby"})

    @hub.on_publish
    async def publish(context: HookContext) -> Publish:
        if "darn" in str(context.data):
            raise Refuse(422, "no swearing")
        return Publish({"text": context.data, "by": context.user})

    @hub.on_rpc
    async def rpc(context: HookContext) -> Any:
        if context.method == "fail":
            raise RuntimeError("a bug in the application")
        if context.method == "slow":
            await asyncio.sleep(10)
        return {"method": context.method, "echo": context.data}

    return hub


async def test_python_hooks_decide_connect_subscribe_publish_and_rpc(
    connect: Any,
) -> None:
    async with steered() as hub:
        alice = await connect(
            hub, hello=False, headers=[("Cookie", "theme=dark; session=s3cret")]
        )
        result = await alice.result("connect")
        assert (result["user"], result["info"], result["data"]) == (
            "alice",
            {"name": "Alice"},
            {"motd": "hi"},
        )
        await alice.result("subscribe", channel="room:lobby")
        assert await alice.error("subscribe", channel="room:vip") == (
            403,
            "members only",
        )
        presence = await alice.result("presence", channel="room:lobby")
        assert presence["clients"][0]["info"] == {"name": "Alice", "room": "lobby"}
        await alice.result("publish", channel="room:lobby", data="hello")
        [pub] = await alice.pubs(1, "room:lobby")
        assert pub["data"] == {"text": "hello", "by": "alice"}
        assert await alice.error("publish", channel="room:lobby", data="darn") == (
            422,
            "no swearing",
        )
        assert await alice.result("rpc", method="m", data=[1]) == {
            "data": {"method": "m", "echo": [1]}
        }
        stranger = await connect(hub, hello=False)
        assert await stranger.error("connect") == (401, "log in first")
        bob = await connect(hub, hello=False, headers=[("Cookie", "session=b0b")])
        await bob.send({"id": 1, "op": "connect"})
        assert await bob.closed() == 4403


async def test_a_private_user_channel_is_decided_by_its_name_not_the_hook(
    connect: Any,
) -> None:
    async with steered() as hub:
        alice = await connect(hub, hello=False, headers=[("Cookie", "session=s3cret")])
        await alice.result("connect")
        # The subscribe hook would refuse both ("members only").
        await alice.result("subscribe", channel="room:dm#alice,bob")
        for op in ("subscribe", "presence", "history"):
            assert await alice.error(op, channel="room:dm#bob") == (
                403,
                "not allowed to subscribe to room:dm#bob",
            )
        assert await alice.error("publish", channel="room:dm#bob", data="x") == (
            403,
            "not allowed to publish to room:dm#bob",
        )
        # A member's publish is still the publish hook's to decide.
        await alice.result("publish", channel="room:dm#alice,bob", data="hi")
        [pub] = await alice.pubs(1, "room:dm#alice,bob")
        assert pub["data"] == {"text": "hi", "by": "alice"}


async def test_a_hook_that_raises_is_500_and_one_too_slow_is_503(
    connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hub = steered()
    hub.hooks.timeout = 0.2  # type: ignore[union-attr]
    async with hub:
        alice = await connect(hub, hello=False, headers=[("Cookie", "session=s3cret")])
        await alice.result("connect")
        assert (await alice.error("rpc", method="fail"))[0] == 500
        assert "a bug in the application" in caplog.text
        assert (await alice.error("rpc", method="slow"))[0] == 503
        assert await alice.result("ping") == {}  # the connection goes on


async def test_a_slow_connect_hook_is_503_then_try_again_later() -> None:
    hub = make_hub({}, timeout=0.2)

    @hub.on_connect
    async def connect(context: HookContext) -> Connect:
        await asyncio.sleep(10)
        return Connect("late")

    async with hub, tidings.connect(f"ws://127.0.0.1:{hub.port}/ws") as ws:
        peer = Peer(ws, hub)
        assert (await peer.error("connect"))[0] == 503
        assert await peer.closed() == 1013


def test_hooks_must_be_async_and_not_beside_http_endpoints() -> None:
    hub = make_hub()

    def blocking(context: HookContext) -> Connect:
        return Connect("x")

    with pytest.raises(TypeError, match="async def"):
        hub.on_connect(blocking)  # type: ignore[arg-type]
    proxied = make_hub(connect="http://127.0.0.1:9/connect")

    async def connect(context: HookContext) -> Connect:
        return Connect("x")

    with pytest.raises(ConfigError, match="not both"):
        proxied.on_connect(connect)


async def test_a_namespace_the_application_decides_needs_its_hook() -> None:
    hub = make_hub()

    @hub.on_subscribe
    async def subscribe(context: HookContext) -> Subscribe:
        return Subscribe()

    with pytest.raises(ConfigError, match=r"room\.publish_proxy needs a publish hook"):
        await hub.start()


@pytest.mark.parametrize(
    "answer",
    [
        "not a Connect",
        lambda: Connect("x", info="i" * 5000),
        lambda: Connect("x", channels=("no channel",)),
    ],
    ids=["wrong-type", "info-too-big", "bad-channel"],
)
async def test_an_answer_that_breaks_the_rules_is_a_500_not_a_yes(
    connect: Any, answer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    hub = make_hub({})

    @hub.on_connect
    async def decide(context: HookContext) -> Any:
        return answer() if callable(answer) else answer

    async with hub:
        peer = await connect(hub, hello=False)
        assert (await peer.error("connect"))[0] == 500
        assert (await peer.error("ping"))[0] == 401  # not connected
