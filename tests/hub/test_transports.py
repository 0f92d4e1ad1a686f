"""The fallback transports (hub/transports.py): Server-Sent Events,
long-polling and commands over POST, over real sockets, on every broker
kind. With several nodes, consecutive requests go to different nodes."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

import pytest

from tidings.hub import Hub, mint_token

from ..conftest import HTTPAnswer, http_request, wait_for
from .conftest import BOUND, CLUSTERS, SECRET


def node(hub: Hub, index: int) -> Hub:
    """The ``index``-th node of ``hub``'s cluster, round the cluster."""
    nodes = CLUSTERS.get(hub, [hub])
    return nodes[index % len(nodes)]


class Stream:
    """A Server-Sent Events stream read the way a browser reads one."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.last_id: str | None = None

    async def head(self) -> None:
        async with asyncio.timeout(BOUND):
            head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()

    async def event(self, *, comments: bool = False) -> dict[str, Any]:
        """The next event: its fields, and ``data`` parsed as JSON."""
        fields: dict[str, Any] = {}
        async with asyncio.timeout(BOUND):
            while True:
                line = (await self.reader.readline()).decode()
                if not line:
                    raise EOFError("the stream ended")
                line = line.rstrip("\n")
                if line == "":
                    if fields:
                        return fields
                    continue
                name, _, value = line.partition(":")
                if name == "":
                    if comments:
                        return {"comment": value}
                    continue
                value = value.removeprefix(" ")
                if name == "id":
                    self.last_id = value
                fields[name] = json.loads(value) if name == "data" else value

    async def data(self) -> dict[str, Any]:
        """The data of the next unnamed event (a reply or a push)."""
        while True:
            event = await self.event()
            if "event" not in event and "data" in event:
                return event["data"]  # type: ignore[no-any-return]

    def close(self) -> None:
        self.writer.close()


async def open_stream(
    hub: Hub,
    query: dict[str, Any] | list[tuple[str, str]],
    *,
    last_id: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Stream:
    """GET /sse on ``hub`` (a node); the head is read, not the events."""
    fields = [("Host", "127.0.0.1"), ("Accept", "text/event-stream"), *headers]
    if last_id is not None:
        fields.append(("Last-Event-ID", last_id))
    target = "/sse?" + urlencode(query, doseq=True)
    request = f"GET {target} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(request.encode() + b"\r\n")
    stream = Stream(reader, writer)
    await stream.head()
    return stream


async def subscribed(
    hub: Hub, streams: list[Stream], query: Any, **options: Any
) -> tuple[Stream, dict[str, Any]]:
    """A stream that got its connect reply; returns it and the connect
    result."""
    stream = await open_stream(hub, query, **options)
    streams.append(stream)
    assert stream.status == 200, await stream.reader.read()
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert await stream.event() == {"retry": "2000"}
    connected = await stream.data()
    assert connected["id"] == 1
    return stream, connected["result"]


async def get(hub: Hub, path: str, query: Any, **options: Any) -> HTTPAnswer:
    return await http_request(
        hub.port, "GET", f"{path}?{urlencode(query, doseq=True)}", **options
    )


async def command(
    hub: Hub, body: Any, *, token: str | None = None, query: str = ""
) -> HTTPAnswer:
    headers = () if token is None else (("Authorization", f"Bearer {token}"),)
    return await http_request(
        hub.port,
        "POST",
        "/command" + (f"?{query}" if query else ""),
        body,
        headers=headers,
        timeout=BOUND,
    )


# -- Server-Sent Events ---------------------------------------------------------


async def test_sse_delivers_replies_and_publications_in_order_with_positions(
    start_hub: Any, streams: list[Stream]
) -> None:
    hub = await start_hub()
    stream, _ = await subscribed(hub, streams, {"channel": ["news:a", "news:b"]})
    replies = [await stream.data(), await stream.data()]
    assert [r["id"] for r in replies] == [2, 3]
    epoch_a = replies[0]["result"]["epoch"]
    epoch_b = replies[1]["result"]["epoch"]
    assert stream.last_id == f"0:{epoch_a},0:{epoch_b}"
    for i in range(3):
        await hub.publish("news:a", {"n": i})
    await hub.publish("news:b", "headline")
    pubs = [await stream.data() for _ in range(4)]
    assert [(p["channel"], p["pub"]["offset"]) for p in pubs] == [
        ("news:a", 1),
        ("news:a", 2),
        ("news:a", 3),
        ("news:b", 1),
    ]
    assert pubs[0]["pub"]["data"] == {"n": 0}
    # The id is every channel's position, in the order the URL named them.
    assert stream.last_id == f"3:{epoch_a},1:{epoch_b}"


async def test_sse_resumes_with_last_event_id_on_another_node(
    start_hub: Any, streams: list[Stream]
) -> None:
    hub = await start_hub()
    stream, _ = await subscribed(hub, streams, {"channel": "news:r"})
    await stream.data()
    for i in (1, 2):
        await hub.publish("news:r", i)
    assert [(await stream.data())["pub"]["data"] for _ in (1, 2)] == [1, 2]
    last_id = stream.last_id
    stream.close()  # the network drops it; meanwhile:
    for i in (3, 4, 5):
        await hub.publish("news:r", i)
    again, _ = await subscribed(
        node(hub, 1), streams, {"channel": "news:r"}, last_id=last_id
    )
    reply = await again.data()
    assert reply["result"]["recovered"] is True
    assert [p["data"] for p in reply["result"]["publications"]] == [3, 4, 5]
    assert again.last_id == f"5:{reply['result']['epoch']}"
    await hub.publish("news:r", 6)
    assert (await again.data())["pub"]["offset"] == 6


async def test_sse_server_side_subscriptions_resume_with_last_event_id(
    start_hub: Any, streams: list[Stream], http: Any
) -> None:
    hub = await start_hub()
    token = mint_token(SECRET, "a", subs=["news:s"])
    query = {"channel": "news:r", "token": token}
    stream, _ = await subscribed(hub, streams, query)
    announced = await stream.data()  # after connect, before the subscribes
    assert announced["channel"] == "news:s" and announced["subscribe"]["offset"] == 0
    epoch_s = announced["subscribe"]["epoch"]
    assert stream.last_id == f";news:s=0:{epoch_s}"  # the URL's yet to come
    epoch_r = (await stream.data())["result"]["epoch"]
    await hub.publish("news:s", 1)
    assert (await stream.data())["pub"]["data"] == 1
    # /api/subscribe's are in the id too, until the hub ends them.
    body = {"user": "a", "channel": "news:t"}
    assert (await http(hub, "POST", "/api/subscribe", body)).json()["subscribed"] == 1
    epoch_t = (await stream.data())["subscribe"]["epoch"]
    assert stream.last_id == f"0:{epoch_r};news:s=1:{epoch_s};news:t=0:{epoch_t}"
    assert (await http(hub, "POST", "/api/unsubscribe", body)).json() == {
        "unsubscribed": 1
    }
    assert await stream.data() == {"channel": "news:t", "unsubscribe": {}}
    await hub.publish("news:s", 2)
    assert (await stream.data())["pub"]["data"] == 2
    last_id = stream.last_id
    assert last_id == f"0:{epoch_r};news:s=2:{epoch_s}"
    stream.close()  # the network drops it; meanwhile:
    for i in (3, 4):
        await hub.publish("news:s", i)
    again, _ = await subscribed(node(hub, 1), streams, query, last_id=last_id)
    recovered = (await again.data())["subscribe"]
    assert recovered["recovered"] is True
    assert [p["data"] for p in recovered["publications"]] == [3, 4]
    # Without Last-Event-ID, sub= gives the positions (no URL channel here).
    third, _ = await subscribed(
        node(hub, 2), streams, {"token": token, "sub": f"news:s=3:{epoch_s}"}
    )
    recovered = (await third.data())["subscribe"]
    assert [p["data"] for p in recovered["publications"]] == [4]
    for sub in ["news:s", "news:s=3", "=3:e", "news:s=x:e"]:
        refused = await open_stream(hub, {"token": token, "sub": sub})
        streams.append(refused)
        assert refused.status == 400, sub


async def test_sse_position_too_old_or_of_another_epoch_is_not_recovered(
    start_hub: Any, streams: list[Stream]
) -> None:
    hub = await start_hub()
    for i in range(15):  # "short" keeps 10
        await hub.publish("short:x", i)
    epoch = (await hub.history("short:x")).epoch
    stream, _ = await subscribed(
        hub, streams, {"channel": "short:x", "since": "2", "epoch": epoch}
    )
    reply = (await stream.data())["result"]
    assert (reply["recovered"], reply["offset"]) == (False, 15)
    assert "publications" not in reply  # never a partial list
    other, _ = await subscribed(hub, streams, {"channel": "short:x"}, last_id="14:x1")
    assert (await other.data())["result"]["recovered"] is False


async def fill(hub: Hub, connect: Any, channel: str) -> None:
    """Subscribe peers on ``hub`` (a node) to ``channel`` until its namespace's
    ``max_subscribers`` are there: the next subscribe there gets 503."""
    namespace = hub.config.namespace(channel)
    assert namespace is not None and namespace.max_subscribers is not None
    for _ in range(namespace.max_subscribers):
        peer = await connect(hub, node=hub)
        await peer.result("subscribe", channel=channel)


async def test_sse_id_keeps_the_position_of_a_channel_whose_subscribe_failed(
    start_hub: Any, connect: Any, streams: list[Stream]
) -> None:
    # The browser sends the last id back when it reopens the stream: a
    # channel missing from it would be subscribed again without a position,
    # and what was published meanwhile skipped without recovered: false.
    hub = await start_hub()
    await fill(hub, connect, "small:full")
    full = "{}:{}".format(*await hub.publish("small:full", "missed"))
    await hub.publish("news:ok", 1)
    _, epoch = await hub.publish("news:ok", 2)
    last_id = f"1:{epoch},{full}"
    stream, _ = await subscribed(
        hub, streams, {"channel": ["news:ok", "small:full"]}, last_id=last_id
    )
    recovered = await stream.data()  # written before small:full's subscribe
    assert [p["data"] for p in recovered["result"]["publications"]] == [2]
    assert stream.last_id == f"2:{epoch},{full}"
    refused = await stream.data()
    assert (refused["id"], refused["error"]["code"]) == (3, 503)
    await hub.publish("news:ok", 3)
    assert (await stream.data())["pub"]["offset"] == 3
    assert stream.last_id == f"3:{epoch},{full}"


async def test_sse_whose_every_subscribe_failed_ends_for_the_browser_to_retry(
    start_hub: Any, connect: Any, streams: list[Stream]
) -> None:
    # Heartbeats would keep a stream that carries nothing open for good.
    hub = await start_hub(sse_heartbeat=0.05)
    await fill(hub, connect, "small:full")
    stream, _ = await subscribed(
        hub, streams, {"channel": "small:full", "since": "4", "epoch": "e1"}
    )
    assert (await stream.data())["error"]["code"] == 503
    end = await stream.event(comments=True)  # not a heartbeat
    assert end.get("event") == "close", end
    assert end["data"]["code"] == 1013
    async with asyncio.timeout(BOUND):
        assert await stream.reader.read() == b""


async def test_sse_without_channels_is_a_connection_only(
    start_hub: Any, streams: list[Stream]
) -> None:
    hub = await start_hub(sse_heartbeat=0.05)
    stream, connected = await subscribed(hub, streams, {})
    assert connected["user"] == ""
    assert stream.last_id is None
    assert await stream.event(comments=True) == {"comment": ""}


async def test_sse_heartbeats_on_an_idle_stream(
    start_hub: Any, streams: list[Stream]
) -> None:
    hub = await start_hub(sse_heartbeat=0.05)
    stream, _ = await subscribed(hub, streams, {"channel": "news:idle"})
    await stream.data()
    assert await stream.event(comments=True) == {"comment": ""}


async def test_sse_presence_and_join_leave_as_on_a_websocket(
    start_hub: Any, connect: Any, streams: list[Stream]
) -> None:
    hub = await start_hub()
    stream, me = await subscribed(hub, streams, {"channel": "chat:room"})
    await stream.data()
    mine = await stream.data()  # as on a WebSocket, its own join first
    assert mine == {
        "channel": "chat:room",
        "join": {"client": me["client"], "user": ""},
    }
    peer = await connect(hub)
    await peer.result("subscribe", channel="chat:room")
    join = await stream.data()
    assert join == {"channel": "chat:room", "join": {"client": peer.client, "user": ""}}
    clients = await peer.result("presence", channel="chat:room")
    assert {c["client"] for c in clients["clients"]} == {me["client"], peer.client}


async def test_a_streams_token_info_shows_in_presence_and_stats_over_post(
    start_hub: Any, connect: Any, streams: list[Stream], mint: Any
) -> None:
    hub = await start_hub()
    token = mint("ann", info={"name": "Ann"})
    stream, me = await subscribed(hub, streams, {"channel": "chat:in", "token": token})
    assert me["info"] == {"name": "Ann"}
    await stream.data()  # the subscribe reply
    ann = {"client": me["client"], "user": "ann", "info": {"name": "Ann"}}
    assert await stream.data() == {"channel": "chat:in", "join": ann}
    peer = await connect(hub)
    await peer.result("subscribe", channel="chat:in")
    assert (await peer.push())["join"]["user"] == ""
    clients = (await peer.result("presence", channel="chat:in"))["clients"]
    assert ann in clients
    stats = await command(
        node(hub, 1), {"id": 7, "op": "presence_stats", "channel": "chat:in"}
    )
    assert stats.json() == {"id": 7, "result": {"clients": 2, "users": 2}}


async def test_a_stream_of_a_private_channel_of_other_users_is_403(
    start_hub: Any, streams: list[Stream], mint: Any
) -> None:
    hub = await start_hub()
    token = mint("ann")
    for channel in ("chat:dm#bob", "chat:dm#bob,carol"):
        refused = await get(hub, "/sse", {"channel": channel, "token": token})
        assert refused.status == 403, channel
    refused = await get(hub, "/sse", {"channel": "chat:dm#ann"})  # anonymous
    assert refused.status == 403
    stream, _ = await subscribed(
        hub, streams, {"channel": "chat:dm#ann,bob", "token": token}
    )
    assert (await stream.data())["result"]["offset"] == 0


async def test_sse_unsubscribe_over_post_on_any_node(
    start_hub: Any, streams: list[Stream]
) -> None:
    hub = await start_hub()
    secret = "the-secret-of-this-client"
    stream, connected = await subscribed(
        hub, streams, {"channel": ["bulk:u", "bulk:v"], "session": secret}
    )
    await stream.data()
    await stream.data()
    body = {"id": 7, "op": "unsubscribe", "channel": "bulk:u"}
    other = await command(node(hub, 1), body, query="session=another-client-secret")
    assert other.status == 409
    answer = await command(node(hub, 1), body, query=f"session={secret}")
    assert (answer.status, answer.json()) == (200, {"id": 7, "result": {}})
    assert await stream.data() == {"channel": "bulk:u", "unsubscribe": {}}
    await hub.publish("bulk:u", "not for the stream")
    # Its publications over POST carry the stream's client id.
    published = await command(
        node(hub, 2),
        {"id": 8, "op": "publish", "channel": "bulk:v", "data": "mine"},
        query=f"session={secret}",
    )
    assert published.status == 200
    pub = (await stream.data())["pub"]
    assert (pub["data"], pub["info"]["client"]) == ("mine", connected["client"])


async def test_sse_ends_with_4002_when_its_token_expires(
    start_hub: Any, streams: list[Stream], mint: Any
) -> None:
    hub = await start_hub()
    token = mint("ann", channels=["private:*"], ttl=1)
    stream, connected = await subscribed(
        hub, streams, {"channel": "private:p", "token": token}
    )
    assert connected["user"] == "ann"
    await stream.data()
    event = await stream.event()
    while event.get("event") != "close":
        event = await stream.event()
    assert event["data"] == {"code": 4002, "reason": "token expired"}
    async with asyncio.timeout(BOUND):
        assert await stream.reader.read() == b""


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ({"channel": "private:p"}, (), 403),  # no token
        ({"channel": "private:p", "token": "bad"}, (), 401),
        ({"channel": "nope:x"}, (), 404),
        ({"channel": "no channel"}, (), 400),
        ({"channel": ["chat:a", "chat:a"]}, (), 400),
        ({"channel": "chat:a", "since": "1"}, (), 400),  # since without epoch
        ({"channel": "chat:a"}, (("Last-Event-ID", "1:e,2:e"),), 400),
        ({"channel": "chat:a"}, (("Last-Event-ID", "x:\u00e9"),), 400),
        ({"channel": "chat:a"}, (("Origin", "http://evil.example"),), 403),
        ({"channel": "chat:a", "session": "short"}, (), 400),
    ],
)
async def test_sse_refusals_are_http_errors(
    start_hub: Any, query: Any, headers: Any, status: int
) -> None:
    hub = await start_hub()
    answer = await get(hub, "/sse", query, headers=headers)
    assert answer.status == status, answer
    if status != 403 or "Origin" not in dict(headers):
        assert answer.json()["error"]["code"] == status


async def test_sse_with_a_token_reaches_private_channels(
    start_hub: Any, streams: list[Stream], mint: Any
) -> None:
    hub = await start_hub()
    token = mint("bob", channels=["private:*"])
    stream, connected = await subscribed(
        hub,
        streams,
        {"channel": "private:p"},
        headers=(("Authorization", f"Bearer {token}"),),
    )
    assert connected["user"] == "bob"
    assert "epoch" in (await stream.data())["result"]


async def test_too_many_channels_on_one_stream_is_429(start_hub: Any) -> None:
    hub = await start_hub(max_subscriptions=2)
    answer = await get(hub, "/sse", {"channel": ["chat:1", "chat:2", "chat:3"]})
    assert answer.status == 429


async def test_a_stream_that_is_not_read_is_dropped_and_forgotten(
    start_hub: Any, streams: list[Stream]
) -> None:
    hub = await start_hub(max_outbound=64 * 1024)
    stream, _ = await subscribed(hub, streams, {"channel": "bulk:flood"})
    await stream.data()
    serving = hub if len(CLUSTERS.get(hub, [hub])) == 1 else CLUSTERS[hub][0]
    assert serving.subscriber_count("bulk:flood") == 1
    # Never read again: the kernel's buffers fill, then the hub's queue.
    data = "x" * 60_000
    for _ in range(400):
        await hub.publish("bulk:flood", data)
        if serving.subscriber_count("bulk:flood") == 0:
            break
    async with asyncio.timeout(BOUND):
        while serving.subscriber_count("bulk:flood"):
            await asyncio.sleep(0.02)  # the unsubscribe is not announced
    assert serving.metrics.dropped_slow == 1


# -- long-polling -----------------------------------------------------------------


async def poll(hub: Hub, **query: Any) -> dict[str, Any]:
    answer = await get(hub, "/poll", query, timeout=BOUND)
    assert answer.status == 200, answer
    return answer.json()  # type: ignore[no-any-return]


async def test_poll_without_a_position_answers_where_the_channel_stands(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    await hub.publish("chat:p", "before")
    answer = await poll(hub, channel="chat:p")
    assert answer["offset"] == 1
    assert answer["publications"] == answer["pushes"] == []


async def test_poll_answers_at_once_with_what_came_after_since(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    for i in range(3):
        await hub.publish("chat:p", i)
    epoch = (await hub.history("chat:p")).epoch
    answer = await poll(node(hub, 1), channel="chat:p", since=1, epoch=epoch)
    assert answer["recovered"] is True
    assert [p["data"] for p in answer["publications"]] == [1, 2]
    assert answer["offset"] == 3


async def test_poll_holds_until_a_publication_then_polls_on_other_nodes(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    await hub.publish("chat:h", "old")
    epoch = (await hub.history("chat:h")).epoch
    since = 1
    for turn in range(3):  # each poll to another node: no sticky sessions
        serving = node(hub, turn)
        held = asyncio.ensure_future(
            poll(serving, channel="chat:h", since=since, epoch=epoch, timeout=BOUND)
        )
        async with asyncio.timeout(BOUND):
            while not serving.subscriber_count("chat:h"):
                await asyncio.sleep(0.01)  # holding is not announced
        assert not held.done()
        await node(hub, turn + 1).publish("chat:h", f"new {turn}")
        answer = await held
        assert [p["data"] for p in answer["publications"]] == [f"new {turn}"]
        since = answer["offset"]
    assert since == 4


async def test_poll_times_out_empty_and_recovers_or_says_it_cannot(
    start_hub: Any,
) -> None:
    hub = await start_hub()
    await hub.publish("short:t", 0)
    epoch = (await hub.history("short:t")).epoch
    answer = await poll(hub, channel="short:t", since=1, epoch=epoch, timeout=0.1)
    assert (answer["recovered"], answer["publications"], answer["offset"]) == (
        True,
        [],
        1,
    )
    for i in range(12):
        await hub.publish("short:t", i)
    lost = await poll(hub, channel="short:t", since=1, epoch=epoch)
    assert (lost["recovered"], lost["publications"], lost["offset"]) == (False, [], 13)
    other = await poll(hub, channel="short:t", since=1, epoch="x1")
    assert other["recovered"] is False


async def test_poll_reports_join_and_leave_while_held(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    await hub.publish("chat:j", 0)
    epoch = (await hub.history("chat:j")).epoch
    held = asyncio.ensure_future(
        poll(hub, channel="chat:j", since=1, epoch=epoch, timeout=BOUND)
    )
    async with asyncio.timeout(BOUND):
        while not hub.subscriber_count("chat:j"):
            await asyncio.sleep(0.01)
    peer = await connect(hub, node=hub)
    await peer.result("subscribe", channel="chat:j")
    await peer.result("publish", channel="chat:j", data="hello")
    answer = await held
    assert [p["data"] for p in answer["publications"]] == ["hello"]
    assert {"channel": "chat:j", "join": {"client": peer.client, "user": ""}} in (
        answer["pushes"]
    )
    # A poller is not in presence: it holds no connection between polls.
    clients = await peer.result("presence", channel="chat:j")
    assert [c["client"] for c in clients["clients"]] == [peer.client]


async def test_an_abandoned_poll_ends_with_its_connection(start_hub: Any) -> None:
    # Polls held for 30 s and abandoned after a moment: each must leave no
    # session, subscriber or task behind, and must stop counting against
    # max_connections as soon as its connection is gone.
    hub = await start_hub(max_connections=5)
    await hub.publish("bulk:v", 0)
    epoch = (await hub.history("bulk:v")).epoch
    query = urlencode({"channel": "bulk:v", "since": 1, "epoch": epoch, "timeout": 30})
    for _ in range(40):
        _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(f"GET /poll?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await wait_for(lambda: hub.subscriber_count("bulk:v"), "the poll held")
        writer.close()
        await wait_for(
            lambda: (
                not hub.subscriber_count("bulk:v")
                and not hub.connection_count()
                and not hub._server.connections
            ),  # type: ignore[union-attr]
            "the abandoned poll forgotten",
            timeout=BOUND,
        )
    # Room for new requests: the 40 abandoned polls hold none of it.
    answer = await get(hub, "/poll", {"channel": "bulk:v", "timeout": 0})
    assert answer.status == 200, answer


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"channel": "private:p"}, 403),
        ({"channel": "private:p", "token": "bad"}, 401),
        ({"channel": ["chat:a", "chat:b"]}, 400),
        ({}, 400),
        ({"channel": "chat:a", "timeout": "soon"}, 400),
        ({"channel": "chat:a", "since": "1", "epoch": "e,e"}, 400),
    ],
)
async def test_poll_refusals_are_http_errors(
    start_hub: Any, query: Any, status: int
) -> None:
    hub = await start_hub()
    answer = await get(hub, "/poll", query)
    assert answer.status == status, answer
    assert answer.json()["error"]["code"] == status


async def test_poll_with_a_token_reaches_private_channels(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    token = mint("eve", channels=["private:*"])
    answer = await poll(hub, channel="private:q", token=token)
    assert answer["offset"] == 0


# -- commands over POST -------------------------------------------------------------


async def test_publish_presence_and_history_over_post(
    start_hub: Any, connect: Any
) -> None:
    hub = await start_hub()
    peer = await connect(hub)
    await peer.result("subscribe", channel="chat:c")
    answer = await command(
        node(hub, 1), {"id": 3, "op": "publish", "channel": "chat:c", "data": "hi"}
    )
    assert answer.status == 200
    reply = answer.json()
    assert reply["id"] == 3 and reply["result"]["offset"] == 1
    push = await peer.push()
    while "pub" not in push:  # its own join comes first
        push = await peer.push()
    pub = push["pub"]
    assert (pub["data"], pub["info"]["user"]) == ("hi", "")
    history = await command(hub, {"id": 4, "op": "history", "channel": "chat:c"})
    assert [p["data"] for p in history.json()["result"]["publications"]] == ["hi"]
    presence = await command(hub, {"id": 5, "op": "presence", "channel": "chat:c"})
    clients = presence.json()["result"]["clients"]
    assert [c["client"] for c in clients] == [peer.client]
    ping = await command(hub, {"id": 6, "op": "ping"})
    assert ping.json() == {"id": 6, "result": {}}


async def test_post_permissions_and_tokens_as_on_the_websocket(
    start_hub: Any, mint: Any
) -> None:
    hub = await start_hub()
    body = {"id": 1, "op": "publish", "channel": "news:n", "data": 1}
    refused = await command(hub, body)
    assert refused.status == 403
    assert refused.json()["error"]["code"] == 403
    token = mint("pam", publish=["news:*"])
    allowed = await command(hub, body, token=token)
    assert allowed.status == 200
    bad = await command(hub, body, token="not a token")
    assert bad.status == 401
    connected = await command(hub, {"id": 2, "op": "connect", "token": token})
    assert connected.json()["result"]["user"] == "pam"


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"id": 1, "op": "ping"}', "text/plain", 415),
        (b"not json", "application/json", 400),
        (b"\xff", "application/json", 400),
        (b'{"id": 1, "op": "subscribe", "channel": "chat:a"}', "application/json", 400),
        (
            b'{"id": 1, "op": "unsubscribe", "channel": "chat:a"}',
            "application/json",
            400,
        ),
        (b'{"id": 1, "op": "fly"}', "application/json", 400),
    ],
)
async def test_post_refusals(
    start_hub: Any, body: bytes, content_type: str, status: int
) -> None:
    hub = await start_hub()
    answer = await http_request(
        hub.port,
        "POST",
        "/command",
        body,
        headers=(("Content-Type", content_type),),
        timeout=BOUND,
    )
    assert answer.status == status, answer


async def test_get_on_command_and_post_on_sse_are_405(start_hub: Any) -> None:
    hub = await start_hub()
    assert (await http_request(hub.port, "GET", "/command")).status == 405
    answer = await http_request(hub.port, "POST", "/sse?channel=chat:a", {"x": 1})
    assert answer.status == 405


# -- pages of other origins (CORS) ----------------------------------------------------

#: A page's origin that the test hubs list in ``allowed_origins``.
APP = "http://app.example"


@pytest.mark.parametrize(
    ("path", "method"), [("/sse", "GET"), ("/poll", "GET"), ("/command", "POST")]
)
async def test_a_preflight_from_an_allowed_origin_is_granted(
    start_hub: Any, path: str, method: str
) -> None:
    hub = await start_hub(allowed_origins=(APP,))
    answer = await http_request(
        hub.port,
        "OPTIONS",
        f"{path}?channel=chat:a&session=a-session-secret-123",
        headers=(
            ("Origin", APP),
            ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", "authorization,content-type"),
        ),
        timeout=BOUND,
    )
    assert answer.status == 200, answer
    granted = answer.headers
    assert granted["access-control-allow-origin"] == APP
    assert granted["access-control-allow-methods"] == method
    allowed = granted["access-control-allow-headers"].lower().split(", ")
    assert {"authorization", "content-type"} <= set(allowed)
    assert int(granted["access-control-max-age"]) > 0
    assert granted["vary"] == "Origin"
    # Cookies go with the page's requests, as with its WebSocket.
    assert granted["access-control-allow-credentials"] == "true"


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", f"{APP}.evil.example", "null", "http://[", "x" * 2000],
)
async def test_a_preflight_from_an_origin_not_allowed_is_refused(
    start_hub: Any, origin: str
) -> None:
    hub = await start_hub(allowed_origins=(APP,))
    answer = await http_request(
        hub.port,
        "OPTIONS",
        "/command",
        headers=(("Origin", origin), ("Access-Control-Request-Method", "POST")),
        timeout=BOUND,
    )
    assert answer.status == 403, answer
    assert not [name for name in answer.headers if name.startswith("access-control")]


async def test_fallback_answers_carry_cors_headers_for_an_allowed_origin(
    start_hub: Any, streams: list[Stream]
) -> None:
    hub = await start_hub(allowed_origins=(APP,))
    origin = (("Origin", APP),)
    stream = await open_stream(hub, {"channel": "chat:c"}, headers=origin)
    streams.append(stream)
    polled = await get(hub, "/poll", {"channel": "chat:c"}, headers=origin)
    refused = await get(hub, "/poll", {"channel": "nope:c"}, headers=origin)
    posted = await http_request(
        hub.port, "POST", "/command", {"id": 1, "op": "ping"}, headers=origin
    )
    answers = [(stream.status, stream.headers)] + [
        (answer.status, answer.headers) for answer in (polled, refused, posted)
    ]
    assert [status for status, _ in answers] == [200, 200, 404, 200]
    for _, headers in answers:  # the page reads errors too
        assert headers["access-control-allow-origin"] == APP
        assert headers["vary"] == "Origin"
        assert headers["access-control-allow-credentials"] == "true"


@pytest.mark.parametrize(
    ("origin", "granted"),
    [
        (APP, APP),
        # A page of this machine may open /ws, and so use the fallbacks.
        ("http://localhost:5173", "http://localhost:5173"),
        # Admitted as before, but no browser sends it: never echoed.
        ("http://localhost:5173/a/path", None),
        ("http://localhost:5173 \u00e9", None),
        (None, None),  # not a browser
    ],
)
async def test_cors_grants_the_origins_allowed_and_nothing_else(
    start_hub: Any, origin: str | None, granted: str | None
) -> None:
    hub = await start_hub(allowed_origins=(APP,))
    headers = () if origin is None else (("Origin", origin),)
    answer = await get(hub, "/poll", {"channel": "chat:o"}, headers=headers)
    assert answer.status == 200, answer
    assert answer.headers.get("access-control-allow-origin") == granted
