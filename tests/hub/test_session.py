"""One client's session over a real socket: connect and tokens, error
replies that leave the connection usable, and the limits that close it
(docs/protocol.md, "Errors" and "Close codes")."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest

from tidings import ConnectionClosed
from tidings.hub import session as session_module
from tidings.hub.brokers.base import BrokerUnavailable

from ..conftest import wait_for
from .conftest import SECRET

BOUND = 10


async def test_connect_names_the_client_and_the_user(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    anonymous = await connect(hub, hello=False)
    result = await anonymous.result("connect")
    assert result["user"] == "" and len(result["client"]) >= 8
    alice = await connect(hub, hello=False)
    alice_result = await alice.result("connect", token=mint("alice"))
    assert alice_result["user"] == "alice"
    assert alice_result["client"] != result["client"]
    nodes = {anonymous.node, alice.node}
    assert sum(node.connection_count() for node in nodes) == 2


async def test_commands_before_connect_are_401_and_a_second_connect_is_400(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, hello=False)
    assert await peer.error("ping") == (401, "send connect first")
    assert (await peer.error("subscribe", channel="chat:x"))[0] == 401
    await peer.result("connect")
    assert await peer.error("connect") == (400, "already connected")
    assert await peer.result("ping") == {}


async def test_the_token_may_be_given_in_the_url(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    token = mint("alice", channels=["private:*"])
    peer = await connect(hub, query=f"token={token}", hello=False)
    assert (await peer.result("connect"))["user"] == "alice"
    await peer.result("subscribe", channel="private:room")
    # A token in connect wins over the URL's.
    other = await connect(hub, query=f"token={token}", hello=False)
    assert (await other.result("connect", token=mint("bob")))["user"] == "bob"


async def test_an_expired_token_is_401_then_close_4001(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, hello=False)
    assert await peer.error("connect", token=mint("alice", ttl=-5)) == (
        401,
        "token expired",
    )
    assert await peer.closed() == 4001
    assert peer.ws.close_reason == "token expired"
    # Expired in the URL too.
    token = mint("alice", ttl=-5)
    peer = await connect(hub, query=f"token={token}", hello=False)
    assert await peer.error("connect") == (401, "token expired")
    assert await peer.closed() == 4001
    assert hub.connection_count() == 0


async def test_a_token_whose_info_is_too_large_is_a_clear_401(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    token = jwt.encode(
        {"sub": "a", "exp": time.time() + 60, "info": "x" * 4095}, SECRET
    )
    peer = await connect(hub, hello=False)
    code, message = await peer.error("connect", token=token)
    assert (code, message) == (
        401,
        "invalid token: its info must be JSON of at most 4096 bytes",
    )
    assert await peer.closed() == 4001
    assert hub.connection_count() == 0


async def test_a_connection_is_closed_with_4002_when_its_token_expires(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, hello=False)
    result = await peer.result("connect", token=mint("alice", ttl=2))
    assert result["ttl"] in (0, 1, 2)  # exp is whole seconds
    anonymous = await connect(hub, hello=False)
    assert "ttl" not in await anonymous.result("connect")
    assert await peer.closed() == 4002
    assert peer.ws.close_reason == "token expired"
    assert await anonymous.result("ping") == {}


async def test_refresh_replaces_the_token_before_it_expires(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, hello=False)
    await peer.result("connect", token=mint("alice", ttl=1))
    old_expiry = time.time() + 1
    assert 3590 <= (await peer.result("refresh", token=mint("alice")))["ttl"] <= 3600
    # Past the first token's expiry, the connection is still open: had its
    # timer still been armed, it would have fired before the ping is read.
    await asyncio.sleep(max(0.0, old_expiry - time.time()) + 0.2)
    assert await peer.result("ping") == {}


async def test_a_refused_refresh_leaves_the_old_token_in_force(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, token=mint("alice"))
    assert await peer.error("refresh", token=mint("bob")) == (
        403,
        "a refresh must keep the user",
    )
    assert await peer.error("refresh", token=mint("alice", ttl=-5)) == (
        401,
        "token expired",
    )
    assert await peer.error("refresh", token="garbage") == (401, "invalid token")
    assert (await peer.error("refresh"))[0] == 400
    assert await peer.result("ping") == {}
    anonymous = await connect(hub)
    assert (await anonymous.error("refresh", token=mint("alice")))[0] == 403


async def test_a_refresh_that_narrows_the_channels_unsubscribes_the_others(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, token=mint("alice", channels=["private:*"]))
    await peer.result("subscribe", channel="private:a")
    await peer.result("subscribe", channel="private:b")
    await peer.result("refresh", token=mint("alice", channels=["private:a"]))
    assert await peer.push() == {"channel": "private:b", "unsubscribe": {}}
    assert (await peer.error("subscribe", channel="private:b"))[0] == 403
    node = peer.node
    await wait_for(lambda: node.subscriber_count("private:b") == 0, "the expulsion")
    assert node.subscriber_count("private:a") == 1


async def test_the_token_subs_claim_subscribes_the_client_at_connect(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub(max_subscriptions=2)
    subs = ["private:a", "nowhere:x", "chat:b", "private:c"]
    token = mint("a", subs=subs, info={"n": "A"})
    peer = await connect(hub, hello=False)
    await hub.publish("private:a", "before")
    since = {"offset": 0, "epoch": (await hub.history("private:a")).epoch}
    await peer.result("connect", token=token, subs={"private:a": since})
    # An unknown namespace is passed over, and so is what max_subscriptions
    # leaves no room for; no claim of channels is asked for.
    pushes = [await peer.push(), await peer.push()]
    assert [p["channel"] for p in pushes] == ["private:a", "chat:b"]
    recovered = pushes[0]["subscribe"]
    assert recovered["recovered"] is True
    assert [p["data"] for p in recovered["publications"]] == ["before"]
    assert pushes[1]["subscribe"]["offset"] == 0
    assert await peer.result("ping") == {}
    assert not [p for p in peer.pushes if "subscribe" in p]  # its own join, say
    await hub.publish("private:a", "live")
    assert [p["data"] for p in await peer.pubs(1)] == ["live"]
    [present] = await hub.broker.presence("chat:b")
    assert (present.user, present.info) == ("a", {"n": "A"})
    bad = jwt.encode({"sub": "a", "exp": time.time() + 60, "subs": "chat:b"}, SECRET)
    other = await connect(hub, hello=False)
    code, message = await other.error("connect", token=bad)
    assert code == 401 and "subs must be a list" in message


@pytest.mark.parametrize(
    "token",
    [
        "not a jwt",
        jwt.encode(
            {"sub": "a", "exp": 2**40}, "another secret, also 32+ bytes long", "HS256"
        ),
        jwt.encode({"sub": "a"}, "a test secret that is 32+ bytes long", "HS256"),
        jwt.encode({"exp": 2**40}, "a test secret that is 32+ bytes long", "HS256"),
        jwt.encode({"sub": "a", "exp": 2**40}, None, "none"),  # type: ignore[arg-type]
        "x" * 10_000,
    ],
    ids=["garbage", "wrong-secret", "no-exp", "no-sub", "alg-none", "huge"],
)
async def test_an_invalid_token_is_401_then_close_4001_saying_nothing_more(
    start_hub: Any, connect: Any, token: str
) -> None:
    hub = await start_hub()
    peer = await connect(hub, hello=False)
    assert await peer.error("connect", token=token) == (401, "invalid token")
    assert await peer.closed() == 4001
    assert peer.ws.close_reason == "invalid token"


async def test_without_a_secret_every_token_is_invalid(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub(secret=None)
    peer = await connect(hub, hello=False)
    assert await peer.error("connect", token=mint("alice")) == (401, "invalid token")
    assert await peer.closed() == 4001
    anonymous = await connect(hub)
    await anonymous.result("subscribe", channel="chat:x")


@pytest.mark.parametrize(
    ("message", "code", "reply_id"),
    [
        ("{not json", 400, None),
        ("[1, 2]", 400, None),
        ('{"op": "ping"}', 400, None),
        ('{"id": "7", "op": "ping"}', 400, None),
        ('{"id": -1, "op": "ping"}', 400, None),
        ('{"id": 7}', 400, 7),
        ('{"id": 7, "op": "dance"}', 400, 7),
        ('{"id": 7, "op": ["ping"]}', 400, 7),
        ('{"id": 7, "op": "subscribe"}', 400, 7),
        ('{"id": 7, "op": "subscribe", "channel": "no namespace"}', 400, 7),
        ('{"id": 7, "op": "subscribe", "channel": "chat:x", "since": 3}', 400, 7),
        ('{"id": 7, "op": "publish", "channel": "chat:x"}', 400, 7),
        ('{"id": 7, "op": "history", "channel": "chat:x", "limit": -1}', 400, 7),
        ('{"id": 7, "op": "connect", "token": 5}', 400, 7),
    ],
)
async def test_malformed_commands_get_an_error_and_the_connection_stays_usable(
    start_hub: Any, connect: Any, message: str, code: int, reply_id: int | None
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    await peer.send(message)
    reply = await peer.reply(reply_id)
    assert reply["error"]["code"] == code, reply
    assert await peer.result("ping") == {}


async def test_a_binary_frame_gets_400_and_the_connection_stays_usable(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    await peer.ws.send(b'{"id": 1, "op": "ping"}')
    assert await peer.reply(None) == {
        "error": {"code": 400, "message": "binary frames are not supported"}
    }
    assert await peer.result("ping") == {}


async def test_an_oversized_command_is_413_and_the_connection_stays_usable(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub(max_message_size=1024)
    peer = await connect(hub)
    await peer.result("subscribe", channel="chat:big")
    assert (await peer.error("publish", channel="chat:big", data="x" * 2000))[0] == 413
    # The limit is in bytes: 600 two-byte characters are over it too.
    id = next(peer.ids)
    command = {"id": id, "op": "publish", "channel": "chat:big", "data": "é" * 600}
    await peer.send(json.dumps(command, ensure_ascii=False))
    assert (await peer.reply(id))["error"]["code"] == 413
    assert (await peer.result("publish", channel="chat:big", data="x" * 900))[
        "offset"
    ] == 1
    assert [p["offset"] for p in await peer.pubs(1)] == [1]
    # Far larger than any command may be: the WebSocket layer closes (1009).
    await peer.ws.send("x" * (2 << 20))
    assert await peer.closed() == 1009


async def test_repeated_malformed_commands_close_with_4000(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    for _ in range(30):
        await peer.send("{not json")
    errors = 0
    async with asyncio.timeout(BOUND):
        with pytest.raises(ConnectionClosed) as info:
            while True:
                reply = await peer.recv()
                assert reply["error"]["code"] == 400
                errors += 1
    assert info.value.code == 4000
    assert errors == 20  # the tolerated ones were answered


class Clock:
    """Stands in for the session's time.monotonic: rate limits are about
    time, and tests must not depend on how fast the machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(session_module, "time", clock)
    return clock


async def test_the_rate_limit_answers_429_then_closes_4008(
    start_hub: Any, connect: Any, clock: Clock
) -> None:
    hub = await start_hub(rate_limit=1.0, rate_burst=5)
    peer = await connect(hub)  # connect took one token
    for i in range(100):
        await peer.send({"id": 100 + i, "op": "ping"})
    codes = []
    async with asyncio.timeout(BOUND):
        with pytest.raises(ConnectionClosed) as info:
            while True:
                reply = await peer.recv()
                codes.append(reply["error"]["code"] if "error" in reply else 200)
    assert info.value.code == 4008
    assert codes == [200] * 4 + [429] * 50  # the burst, then 50 refusals
    assert hub.metrics.errors["rate_limited"] == 51  # the rest were ignored


async def test_a_client_that_keeps_sending_still_reads_why_it_was_closed(
    start_hub: Any, connect: Any, clock: Clock
) -> None:
    # Hundreds of commands behind the one that ends the connection: the
    # hub must read through them to the client's close frame, not reset
    # the connection or wait for close_timeout.
    for code, message, burst in [
        (4008, '{"id": 1, "op": "ping"}', 5),
        (4000, "{not json", 1000),
    ]:
        hub = await start_hub(rate_limit=1.0, rate_burst=burst)
        peer = await connect(hub)
        start = time.monotonic()
        for _ in range(500):
            await peer.send(message)
        assert await peer.closed() == code
        assert time.monotonic() - start < BOUND / 2


async def test_commands_after_the_one_that_ends_the_connection_are_ignored(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    for _ in range(21):
        await peer.send("{not json")
    await peer.send({"id": 1, "op": "publish", "channel": "chat:x", "data": 1})
    assert await peer.closed() == 4000
    assert (await hub.history("chat:x")).offset == 0


async def test_the_rate_limit_refills(
    start_hub: Any, connect: Any, clock: Clock
) -> None:
    hub = await start_hub(rate_limit=2.0, rate_burst=3)
    peer = await connect(hub)  # 2 tokens left

    async def pings(n: int) -> list[int]:
        replies = [await peer.call("ping") for _ in range(n)]
        return [r["error"]["code"] if "error" in r else 200 for r in replies]

    assert await pings(3) == [200, 200, 429]
    clock.now += 0.25  # half a token
    assert await pings(1) == [429]
    clock.now += 0.25
    assert await pings(2) == [200, 429]
    clock.now += 100  # never more than the burst
    assert await pings(4) == [200, 200, 200, 429]


async def test_an_internal_failure_is_500_and_the_connection_stays_usable(
    start_hub: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub()
    peer = await connect(hub)

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the broker is down")

    monkeypatch.setattr(hub.broker, "publish", fail)
    assert await peer.error("publish", channel="chat:x", data=1) == (
        500,
        "internal error",
    )
    monkeypatch.setattr(hub.broker, "history", fail)
    assert (await peer.error("subscribe", channel="chat:x"))[0] == 500
    assert hub.subscriber_count("chat:x") == 0  # the failed subscribe left nothing
    assert await peer.result("ping") == {}


async def test_an_unreachable_broker_is_503_and_the_connection_stays_usable(
    start_hub: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub()
    peer = await connect(hub)

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailable("redis is unreachable: connection refused")

    monkeypatch.setattr(hub.broker, "publish", down)
    assert await peer.error("publish", channel="chat:x", data=1) == (
        503,
        "redis is unreachable: connection refused",
    )
    monkeypatch.setattr(hub.broker, "history", down)
    assert (await peer.error("subscribe", channel="chat:x"))[0] == 503
    assert peer.node.subscriber_count("chat:x") == 0
    assert await peer.result("ping") == {}


@pytest.mark.parametrize(
    "data",
    ['{"x": NaN}', "[Infinity]", '"\\ud800"', '{"\\udfff": 1}'],
    ids=["nan", "infinity", "lone-high-surrogate", "surrogate-key"],
)
async def test_data_json_cannot_carry_to_every_client_is_400(
    start_hub: Any, connect: Any, data: str
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    await peer.result("subscribe", channel="chat:poison")
    await peer.send(
        f'{{"id": 7, "op": "publish", "channel": "chat:poison", "data": {data}}}'
    )
    reply = await peer.reply(7)
    assert reply["error"]["code"] == 400
    # Nothing was stored: the channel's history and subscribers are fine.
    assert (await peer.result("publish", channel="chat:poison", data="ok"))[
        "offset"
    ] == 1
    [pub] = await peer.pubs(1)
    assert pub["data"] == "ok"
    history = await peer.result("history", channel="chat:poison")
    assert [p["data"] for p in history["publications"]] == ["ok"]


async def test_publishes_in_a_row_go_to_the_broker_together_replies_in_order(
    start_hub: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub()
    peer = await connect(hub, node=hub)
    publish = hub.broker.publish
    gates: list[asyncio.Event] = []

    async def gated(*args: Any, **kwargs: Any) -> Any:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        return await publish(*args, **kwargs)

    monkeypatch.setattr(hub.broker, "publish", gated)
    n = session_module.MAX_PIPELINED + 6
    for i in range(n):
        await peer.send(
            {"id": 100 + i, "op": "publish", "channel": "chat:p", "data": i}
        )
    await peer.send({"id": 99, "op": "history", "channel": "chat:p"})
    # The first MAX_PIPELINED are at the broker together; no more.
    await wait_for(lambda: len(gates) == session_module.MAX_PIPELINED, "publishes")
    assert len(gates) == session_module.MAX_PIPELINED
    for gate in gates[1:]:  # all but the first may go: nothing is answered yet
        gate.set()
    await wait_for(lambda: all(g.is_set() for g in gates[1:]), "the gates")
    gates[0].set()
    await wait_for(lambda: len(gates) == n, "the rest of the publishes")
    for gate in gates:
        gate.set()
    # Replies in command order; the history waited for every publish.
    replies = [await peer.recv() for _ in range(n + 1)]
    assert [r["id"] for r in replies] == [*range(100, 100 + n), 99]
    assert sorted(r["result"]["offset"] for r in replies[:-1]) == list(range(1, n + 1))
    assert replies[-1]["result"]["offset"] == n


async def test_an_error_between_publishes_keeps_its_place(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    await peer.send({"id": 1, "op": "publish", "channel": "chat:e", "data": 1})
    await peer.send({"id": 2, "op": "publish", "channel": "news:e", "data": 2})  # 403
    await peer.send("{not json")  # 400, without an id
    await peer.send({"id": 4, "op": "publish", "channel": "chat:e", "data": 4})
    replies = [await peer.recv() for _ in range(4)]
    assert [r.get("id") for r in replies] == [1, 2, None, 4]
    assert [r.get("error", {}).get("code") for r in replies] == [None, 403, 400, None]


async def test_an_oversized_command_is_refused_unparsed_and_repeats_close_4000(
    start_hub: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub(max_message_size=1024)
    peer = await connect(hub)
    parsed: list[str] = []
    parse = session_module.parse_command

    def counting(text: str) -> Any:
        parsed.append(text)
        return parse(text)

    monkeypatch.setattr(session_module, "parse_command", counting)
    big = json.dumps(
        {"id": 5, "op": "publish", "channel": "chat:x", "data": [{}] * 900}
    )
    await peer.send(big)
    assert await peer.reply(5) == {
        "id": 5,
        "error": {"code": 413, "message": "command is too large"},
    }
    assert parsed == []  # refused before parsing
    # The id is read only where clients put it: first.
    await peer.send('{"op": "ping", "id": 6, "x": "' + "y" * 2000 + '"}')
    assert (await peer.reply(None))["error"]["code"] == 413
    # Over and over: like malformed commands, the connection is closed.
    for _ in range(session_module.MAX_BAD_COMMANDS):
        await peer.send(big)
    assert await peer.closed() == 4000


async def test_a_token_whose_user_is_a_lone_surrogate_is_401(
    start_hub: Any, connect: Any, mint: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, hello=False)
    # JSON lets "\ud800" through; no client could be sent that user id.
    assert await peer.error("connect", token=mint("\ud800")) == (401, "invalid token")
    assert await peer.closed() == 4001


async def test_a_token_holding_a_lone_surrogate_is_401(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub, hello=False)
    await peer.send('{"id": 1, "op": "connect", "token": "a.\\ud800.b"}')
    assert (await peer.reply(1))["error"] == {"code": 401, "message": "invalid token"}


async def test_subscriptions_per_connection_are_capped(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub(max_subscriptions=3)
    peer = await connect(hub)
    for i in range(3):
        await peer.result("subscribe", channel=f"chat:{i}")
    code, message = await peer.error("subscribe", channel="chat:3")
    assert (code, message) == (429, "too many subscriptions on one connection (3)")
    await peer.result("unsubscribe", channel="chat:0")
    await peer.result("subscribe", channel="chat:3")


async def test_commands_read_together_let_other_work_run_between_them(
    start_hub: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each command here takes longer than a turn.
    monkeypatch.setattr(session_module, "TURN", 0.0)
    hub = await start_hub()
    peer = await connect(hub, node=hub)
    before = hub.metrics.commands
    # Pings sent at once: the hub reads them together (fewer than the
    # engine's max_queue of 16, which would pause reading anyway).
    n = 12
    for i in range(n):
        peer.ws.send_nowait(json.dumps({"id": 10 + i, "op": "ping"}))
    assert (await peer.reply(10))["result"] == {}
    # This test's own code ran while the hub was still at it: the hub
    # yielded between the commands instead of running them all first.
    assert hub.metrics.commands - before < n
    for i in range(11, 10 + n):
        assert (await peer.reply(i))["result"] == {}


# -- a WebSocket's commands, without a task while it is idle ------------------


def session_of(hub: Any, peer: Any) -> Any:
    """The hub's session of ``peer`` (connected to ``hub`` itself)."""
    [session] = [s for s in hub._sessions if s.info.client == peer.client]
    return session


async def test_commands_that_come_while_one_awaits_a_hook_wait_their_turn(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    release = asyncio.Event()

    @hub.on_rpc
    async def rpc(context: Any) -> str:
        if context.method == "slow":
            await release.wait()
        return str(context.method)

    peer = await connect(hub, node=hub)
    session = session_of(hub, peer)
    await peer.send({"id": 10, "op": "rpc", "method": "slow"})
    await peer.send({"id": 11, "op": "rpc", "method": "fast"})
    await peer.send({"id": 12, "op": "ping"})
    # Both came while the first waits for its hook: they wait too.
    await wait_for(lambda: len(session._inbox or ()) == 2, "the commands queued")
    release.set()
    assert (await peer.reply(10))["result"] == {"data": "slow"}
    assert (await peer.reply(11))["result"] == {"data": "fast"}
    assert (await peer.reply(12))["result"] == {}
    # Done with them, the session holds no task.
    await wait_for(lambda: session._worker is None, "the session idle")


async def test_a_flood_of_commands_behind_a_slow_one_pauses_reading(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub(rate_limit=1e9, rate_burst=10**9)
    release = asyncio.Event()

    @hub.on_rpc
    async def rpc(context: Any) -> None:
        await release.wait()

    peer = await connect(hub, node=hub)
    session = session_of(hub, peer)
    await peer.send({"id": 10, "op": "rpc", "method": "slow"})
    # More than one read takes (256 KiB): reading must resume for the rest.
    n = 12_000
    for i in range(n):
        peer.ws.send_nowait(json.dumps({"id": 11 + i, "op": "ping"}))
    # As the engine's own queue would: TCP flow control holds the rest back.
    await wait_for(lambda: session.ws._reading_paused, "reading paused")
    assert len(session._inbox) < n
    release.set()
    assert "result" in await peer.reply(10)
    for i in range(n):
        assert (await peer.reply(11 + i))["result"] == {}
    assert not session.ws._reading_paused


async def test_an_idle_connection_that_closes_leaves_its_channels(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    watcher = await connect(hub, node=hub)
    await watcher.result("subscribe", channel="chat:idle")
    assert (await watcher.push())["join"]["client"] == watcher.client
    peer = await connect(hub, node=hub)
    await peer.result("subscribe", channel="chat:idle")
    joined = (await watcher.push())["join"]
    session = session_of(hub, peer)
    await wait_for(lambda: session._worker is None, "the session idle")
    await peer.ws.close()
    assert await watcher.push() == {"channel": "chat:idle", "leave": joined}
    assert await watcher.result("presence", channel="chat:idle") == {
        "clients": [{"client": watcher.client, "user": ""}]
    }
    assert session not in hub._sessions


async def test_an_unexpected_failure_of_a_session_closes_it_with_1011(
    start_hub: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub()
    peer = await connect(hub, node=hub)

    def fail(message: str) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(session_module, "parse_command", fail)
    await peer.send({"id": 2, "op": "ping"})
    with pytest.raises(ConnectionClosed) as raised:
        await peer.recv()
    assert raised.value.code == 1011
