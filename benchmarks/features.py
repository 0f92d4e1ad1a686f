"""What the hub's features cost, each beside the plain call it adds to, side
by side in one run, on the memory broker and on a real ``redis-server``:

- **presence_stats** against **presence** on a channel of 10,000 present
  clients (5,000 users with two connections each): the count an app polls
  against the full list it would otherwise fetch;
- **publish with info** (the client's ``info``, 100 B of JSON, as a token's
  ``info`` claim gives it) against a publish without.

Each call is awaited before the next (one in flight), through the hub's
in-process API (``Hub.publish``) or its broker (presence), in this one
process: the figures are the hub's and the broker's cost per call, without a
client's network round trip. The two sides of a pair alternate, batch by
batch, so that a noisy moment falls on both; each figure is the median of
the per-call times with the p99 beside it. Every loop is bounded in count.

    .venv/bin/python -m benchmarks.features [--calls 2000] [--rounds 5]
        [--presence 10000] [--brokers memory,redis]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from tidings.hub import Hub, HubConfig, NamespaceConfig
from tidings.hub.brokers.base import ClientInfo

from .harness.runner import RedisProcess, find_redis

#: A client's info, as presence and publications carry it (100 B of JSON).
INFO = {"name": "Alice Example", "avatar": "/avatars/alice-example.png", "x": "y" * 26}
DATA = {"text": "x" * 64}

Call = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Pair:
    """A feature's call beside the plain call it adds to."""

    name: str
    plain: str
    featured: str


@dataclass(frozen=True)
class Result:
    pair: Pair
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
    namespace = NamespaceConfig(presence=True, history_size=100, history_ttl=600)
    config = HubConfig(
        demo=False, broker=url, namespaces={"bench": namespace}, presence_ttl=600
    )
    hub = Hub(config)
    await hub.start(listen=False)
    results = []
    try:
        channel = "bench:presence"
        await fill_presence(hub, channel, args.presence)
        stats = await hub.broker.presence_stats(channel)
        assert stats.clients == args.presence, stats

        async def presence() -> object:
            return await hub.broker.presence(channel)

        async def presence_stats() -> object:
            return await hub.broker.presence_stats(channel)

        pair = Pair(
            f"presence of {args.presence:,}",
            "presence (the list)",
            "presence_stats (counts)",
        )
        # The full list of 10,000 is slow: fewer calls of it, as many of each.
        few = max(args.rounds, args.calls // 20)
        results.append(
            Result(
                pair,
                name,
                *await side_by_side(presence, presence_stats, few, args.rounds),
            )
        )

        who = ClientInfo("c0", "alice", INFO)

        async def publish() -> object:
            return await hub.publish("bench:pub", DATA)

        async def publish_info() -> object:
            return await hub.publish("bench:pub", DATA, who)

        pair = Pair("publish", "without info", "with 100 B of info")
        results.append(
            Result(
                pair,
                name,
                *await side_by_side(publish, publish_info, args.calls, args.rounds),
            )
        )
    finally:
        await hub.close()
    return results


def micros(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def report(results: Sequence[Result]) -> str:
    lines = [
        "| feature | broker | plain: µs p50 / p99 | featured: µs p50 / p99 | "
        "featured / plain (p50) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        p50, f50 = (
            statistics.median(r.plain_ns) / 1000,
            statistics.median(r.featured_ns) / 1000,
        )
        lines.append(
            f"| {r.pair.name}: {r.pair.plain} → {r.pair.featured} | {r.broker} "
            f"| {p50:,.1f} / {micros(r.plain_ns, 0.99):,.1f} "
            f"| {f50:,.1f} / {micros(r.featured_ns, 0.99):,.1f} "
            f"| {f50 / p50:.3g}x |"
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
