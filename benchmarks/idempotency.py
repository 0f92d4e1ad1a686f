"""What a publish's ``idempotency_key`` costs (docs/protocol.md, "Publishing
that can be retried"): publishes through a broker, side by side in one run,

- **plain**: no key;
- **keyed**: a new key each time (the broker looks it up, publishes and
  remembers it);
- **repeat**: one key again and again (the broker answers the first
  publication's position and publishes nothing),

on the memory broker and, with ``--redis URL``, on Redis (a channel of a
key prefix of its own, with a history of 100 like the demo's chat). Each
row has ``--depth`` publishes in flight (1: one at a time; more: the Redis
broker sends them together). The modes alternate, measurement by
measurement, so that a noisy moment falls on all three; the figures are
the medians of ``--repeat`` measurements of ``--count`` publishes each:
publishes per second and microseconds per publish of this process's wall
time, and on Redis the microseconds Redis spent per publish script (its
``INFO commandstats``, reset before each measurement: the Redis must be
one of its own). Every loop is bounded by its count.

    .venv/bin/python -m benchmarks.idempotency [--redis redis://127.0.0.1:6379/0]
        [--count 20000] [--repeat 5] [--depth 1,64]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import statistics
import time
from collections.abc import Awaitable
from typing import Any

from tidings.hub.brokers.base import Broker, ChannelOptions
from tidings.hub.brokers.memory import MemoryBroker

OPTIONS = ChannelOptions(history_size=100, history_ttl=600, idempotency_window=300)
MODES = ("plain", "keyed", "repeat")


class _Node:
    """A node that drops what the broker delivers."""

    def on_push(self, push: Any) -> None:
        pass

    def on_control(self, message: Any) -> None:
        pass

    def on_reconnected(self) -> None:
        pass


async def _measure(broker: Broker, mode: str, count: int, depth: int) -> float:
    """Seconds for ``count`` publishes of ``mode``, ``depth`` at a time."""
    keys = itertools.count()
    run = secrets.token_hex(4)

    def key() -> str | None:
        if mode == "plain":
            return None
        return f"{run}-repeat" if mode == "repeat" else f"{run}-{next(keys)}"

    def publish() -> Awaitable[tuple[int, str]]:
        data = b'"32 bytes of data, more or less"'
        return broker.publish("bench:x", data, OPTIONS, idempotency_key=key())

    start = time.perf_counter()
    for _ in range(count // depth):
        if depth == 1:  # no gather: its tasks would cost more than a publish
            await publish()
        else:
            await asyncio.gather(*(publish() for _ in range(depth)))
    return time.perf_counter() - start


async def _rows(
    name: str, broker: Broker, args: argparse.Namespace, server: Any = None
) -> None:
    """Print a row per depth and mode; with ``server`` (a redis-py client of
    the broker's Redis), also Redis' own time per publish script, read from
    ``INFO commandstats``: what the key costs Redis, whatever this process's
    core is busy with."""
    await broker.start("bench", _Node())
    try:
        for depth in args.depth:
            count = args.count // depth * depth
            await _measure(broker, "keyed", count // 10, depth)  # warm up
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            in_redis: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(args.repeat):
                for mode in MODES:
                    if server is not None:
                        await server.config_resetstat()
                    times[mode].append(await _measure(broker, mode, count, depth))
                    if server is not None:
                        stats = await server.info("commandstats")
                        in_redis[mode].append(stats["cmdstat_evalsha"]["usec_per_call"])
            plain = statistics.median(times["plain"]) / count * 1e6
            for mode in MODES:
                us = statistics.median(times[mode]) / count * 1e6
                row = (
                    f"{name:6} depth {depth:3}  {mode:6}  {1e6 / us:9,.0f} publishes/s"
                    f"  {us:7.2f} us/publish  ({us - plain:+.2f} us)"
                )
                if in_redis[mode]:
                    row += f"  redis: {statistics.median(in_redis[mode]):.2f} us/script"
                print(row)
    finally:
        await broker.close()


async def _main(args: argparse.Namespace) -> None:
    await _rows("memory", MemoryBroker(), args)
    if args.redis:
        from redis.asyncio import Redis

        from tidings.hub.brokers.redis import RedisBroker

        prefix = f"bench{secrets.token_hex(4)}:"
        async with Redis.from_url(args.redis) as server:
            broker = RedisBroker(args.redis, prefix=prefix)
            await _rows("redis", broker, args, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", metavar="URL", help="also measure this Redis")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--depth",
        type=lambda text: [int(d) for d in text.split(",")],
        default=[1, 64],
        help="publishes in flight, comma-separated",
    )
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
