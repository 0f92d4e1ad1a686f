"""What the hub's features cost, each beside the plain call it adds to, side
by side in one run, on the memory broker and on a real ``redis-server``:

- **presence_stats** against **presence** on a channel of 10,000 present
  clients (5,000 users with two connections each): the count an app polls,
  against the full list it would otherwise fetch;
- **publish with info** (the client's ``info``, 100 B of JSON, as a token's
  ``info`` claim gives it) against a publish without;
- **publish with an idempotency key**, a new one each time (looked up,
  published, remembered), against a publish without;
- **a repeated idempotency key** (answered from the key, nothing
  published) against a publish without;
- **subscribe with a channel token** (a JWT checked per subscribe) against
  a subscribe that the connection token's ``channels`` claim allows, each
  followed by an unsubscribe, over a WebSocket;
- **a server-side subscribe** (``hub.api().subscribe(user, channel)``,
  through every node, until the client has its ``subscribe`` push) against
  the client's own subscribe, each followed by an unsubscribe;
- **a publish through the HTTP API** (``AsyncHubAPI``) on one connection
  kept alive, against a new connection for each (``Connection: close``).

Each call is awaited before the next (one in flight). The publishes and
presence go through the hub's in-process API (``Hub.publish``, its
broker); the subscribes through a WebSocket client in this same process,
so that both sides of those pairs include a round trip on loopback. The two
sides of a pair alternate, batch by batch, so that a noisy moment falls on
both; each figure is the median of the per-call times, with the p99
beside it. Every loop is bounded in count.

    .venv/bin/python -m benchmarks.features [--calls 2000] [--rounds 5]
        [--presence 10000] [--brokers memory,redis]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

import tidings
from tidings import AsyncHubAPI
from tidings.hub import Hub, HubConfig, NamespaceConfig, mint_channel_token, mint_token
from tidings.hub.brokers.base import ClientInfo

from .harness.runner import RedisProcess, find_redis

SECRET = "benchmarks.features: not a secret, loopback only"
#: A client's info, as presence and publications carry it (100 B of JSON).
INFO = {"name": "Alice Example", "avatar": "/avatars/alice-example.png", "x": "y" * 26}
DATA = {"text": "x" * 64}
#: Seconds a reply may take before the run stops with an error.
REPLY_TIMEOUT = 30.0

Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Result:
    """One pair measured on one broker: each call's time, in ns."""

    feature: str
    plain: str
    featured: str
    broker: str
    plain_ns: list[int]
    featured_ns: list[int]


async def timed(call: Call, count: int, into: list[int]) -> None:
    """``count`` calls one after another, each one's time appended."""
    for _ in range(count):
        start = time.perf_counter_ns()
        await call()
        into.append(time.perf_counter_ns() - start)


async def side_by_side(
    plain: Call, featured: Call, calls: int, rounds: int
) -> tuple[list[int], list[int]]:
    """Both calls, batch by batch in turn, after one warm-up batch each."""
    await timed(plain, calls // 10 + 1, [])
    await timed(featured, calls // 10 + 1, [])
    plain_ns: list[int] = []
    featured_ns: list[int] = []
    for _ in range(rounds):
        await timed(plain, calls // rounds, plain_ns)
        await timed(featured, calls // rounds, featured_ns)
    return plain_ns, featured_ns


class Peer:
    """A WebSocket client of the hub speaking its JSON protocol, one
    command in flight."""

    def __init__(self, ws: tidings.WebSocket) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def command(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a command; return its result (RuntimeError for an error)."""
        id = next(self._ids)
        await self.ws.send(json.dumps({"id": id, "op": op, **fields}))
        while True:
            message = await self.push()
            if message.get("id") == id:
                if "error" in message:
                    raise RuntimeError(f"{op}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def push(self) -> dict[str, Any]:
        """The next message the hub sends."""
        async with asyncio.timeout(REPLY_TIMEOUT):
            message: dict[str, Any] = json.loads(await self.ws.recv())
        return message


async def fill_presence(hub: Hub, channel: str, clients: int) -> None:
    """``clients`` present on ``channel``, two connections per user."""
    broker = hub.broker
    batch = []
    for i in range(clients):
        info = ClientInfo(f"c{i:08x}", f"user{i // 2}", INFO)
        batch.append(broker.add_presence(channel, info, 600.0))
        if len(batch) == 500:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)


async def measure_broker(name: str, url: str, args: argparse.Namespace) -> list[Result]:
    kept = NamespaceConfig(presence=True, history_size=100, history_ttl=600)
    config = HubConfig(
        port=0,
        demo=False,
        broker=url,
        secret=SECRET,
        namespaces={"bench": kept, "room": NamespaceConfig()},
        presence_ttl=600,
        rate_limit=1e9,
        rate_burst=10**9,
    )
    results = []

    async def pair(
        feature: str, plain: tuple[str, Call], featured: tuple[str, Call], calls: int
    ) -> None:
        measured = await side_by_side(plain[1], featured[1], calls, args.rounds)
        results.append(Result(feature, plain[0], featured[0], name, *measured))

    async with Hub(config) as hub:
        channel = "bench:presence"
        await fill_presence(hub, channel, args.presence)
        assert (await hub.broker.presence_stats(channel)).clients == args.presence
        # The full list is slow: fewer calls of it, as many of each.
        await pair(
            f"presence of {args.presence:,}",
            ("presence (the list)", lambda: hub.broker.presence(channel)),
            ("presence_stats (counts)", lambda: hub.broker.presence_stats(channel)),
            max(args.rounds, args.calls // 20),
        )

        who = ClientInfo("c0", "alice", INFO)
        keys = (f"key-{i}" for i in itertools.count())
        plain_publish = ("no info, no key", lambda: hub.publish("bench:p", DATA))
        await pair(
            "publish",
            plain_publish,
            ("100 B of info", lambda: hub.publish("bench:p", DATA, who)),
            args.calls,
        )
        await pair(
            "publish",
            plain_publish,
            (
                "a new idempotency key",
                lambda: hub.publish("bench:p", DATA, idempotency_key=next(keys)),
            ),
            args.calls,
        )
        await pair(
            "publish",
            plain_publish,
            (
                "a repeated idempotency key",
                lambda: hub.publish("bench:p", DATA, idempotency_key="again"),
            ),
            args.calls,
        )

        token = mint_token(SECRET, "alice", channels=["room:claimed"], ttl=86400)
        channel_token = mint_channel_token(SECRET, "alice", "room:token", ttl=86400)
        async with asyncio.timeout(REPLY_TIMEOUT):
            ws = await tidings.connect(hub.ws_url, compression=None)
        peer = Peer(ws)
        try:
            await peer.command("connect", token=token)

            async def subscribe(channel: str, **fields: Any) -> None:
                await peer.command("subscribe", channel=channel, **fields)
                await peer.command("unsubscribe", channel=channel)

            async def subscribed_by_the_hub() -> None:
                await hub.api().subscribe("alice", "room:server")
                push = await peer.push()
                assert push["channel"] == "room:server" and "subscribe" in push
                await peer.command("unsubscribe", channel="room:server")

            plain_subscribe = ("the token's claim", lambda: subscribe("room:claimed"))
            await pair(
                "subscribe + unsubscribe",
                plain_subscribe,
                (
                    "a channel token",
                    lambda: subscribe("room:token", token=channel_token),
                ),
                args.calls,
            )
            await pair(
                "subscribe + unsubscribe",
                plain_subscribe,
                ("server-side (hub.api().subscribe)", subscribed_by_the_hub),
                args.calls,
            )
        finally:
            await ws.close()

        closing = httpx.AsyncClient(headers={"Connection": "close"})
        async with (
            AsyncHubAPI(hub.url) as alive,
            AsyncHubAPI(hub.url, http_client=closing) as each,
        ):
            await pair(
                "POST /api/publish (AsyncHubAPI)",
                ("a connection each", lambda: each.publish("bench:p", DATA)),
                ("one kept alive", lambda: alive.publish("bench:p", DATA)),
                args.calls,
            )
        await closing.aclose()
    return results


def micros(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def report(results: Sequence[Result]) -> str:
    lines = [
        "| call | broker | plain | µs p50 / p99 | featured | µs p50 / p99 "
        "| featured ÷ plain (p50) |",
        "|---|---|---|--:|---|--:|--:|",
    ]
    for r in results:
        p50 = statistics.median(r.plain_ns) / 1000
        f50 = statistics.median(r.featured_ns) / 1000
        lines.append(
            f"| {r.feature} | {r.broker} | {r.plain} "
            f"| {p50:,.1f} / {micros(r.plain_ns, 0.99):,.1f} | {r.featured} "
            f"| {f50:,.1f} / {micros(r.featured_ns, 0.99):,.1f} | {f50 / p50:.3g}x |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    for name in args.brokers.split(","):
        if name == "memory":
            results += await measure_broker(name, "memory", args)
            continue
        binary = find_redis()
        if binary is None:
            print("no redis-server: the redis rows are left out", file=sys.stderr)
            continue
        with open(os.devnull, "wb") as log:
            redis = RedisProcess(binary, log, None)
            try:
                results += await measure_broker(name, redis.url, args)
            finally:
                redis.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per side")
    parser.add_argument("--rounds", type=int, default=5, help="batches per side")
    parser.add_argument("--presence", type=int, default=10_000, help="clients present")
    parser.add_argument("--brokers", default="memory,redis")
    args = parser.parse_args(argv)
    if not 0 < args.calls <= 10**6 or not 0 < args.rounds <= 100:
        parser.error("--calls must be 1-1,000,000 and --rounds 1-100")
    if not 0 < args.presence <= 10**6:
        parser.error("--presence must be 1-1,000,000")
    print(report(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
