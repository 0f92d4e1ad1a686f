"""The hub's CPU per ``POST /api/publish``, with no subscriber: what the HTTP
API costs in Python beside the fan-out (issue 24's API rows).

A hub with the harness's configuration runs in this process on uvloop; a
thread posts publications one at a time on one kept-alive connection, each
awaited, and the user and system time of the event loop's thread is read
around them (``RUSAGE_THREAD``): microseconds per request, the least of
``--runs`` runs, since other processes only ever add to it. ``--profile``
runs cProfile over one run instead and prints its top functions.

    .venv/bin/python -m benchmarks.api_cpu [--requests 3000] [--runs 5]
    .venv/bin/python -m benchmarks.api_cpu --profile ncalls
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import resource
import socket
import threading

import uvloop

from tidings.hub import Hub

from .harness.scenarios import HUB_CHANNEL
from .harness.servers import hub_config

#: Requests before the measurement: connections, caches and the history
#: settle.
WARMUP = 200
#: Bounds a run, should the hub stop answering.
TIMEOUT = 60.0


def _post(port: int, count: int, started: threading.Event) -> None:
    body = json.dumps({"channel": HUB_CHANNEL, "data": {"text": "x" * 80}}).encode()
    request = (
        f"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        for sent in range(WARMUP + count):
            if sent == WARMUP:
                started.set()
            sock.sendall(request)
            # One answer per recv: the answers are small and the next
            # request waits for this one.
            answer = sock.recv(65536)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer {answer[:200]!r}")


async def measure(count: int, profile: cProfile.Profile | None = None) -> float:
    """User and system µs of the loop's thread per request, over ``count``."""
    hub = Hub(hub_config())
    await hub.start()
    try:
        assert hub.port is not None
        started = threading.Event()
        client = asyncio.ensure_future(
            asyncio.to_thread(_post, hub.port, count, started)
        )
        # The loop's thread waits on the client thread without polling.
        await asyncio.wait_for(asyncio.to_thread(started.wait), TIMEOUT)
        before = resource.getrusage(resource.RUSAGE_THREAD)
        if profile is not None:
            profile.enable()
        await asyncio.wait_for(client, TIMEOUT)
        if profile is not None:
            profile.disable()
        after = resource.getrusage(resource.RUSAGE_THREAD)
    finally:
        await hub.close()
    user = (after.ru_utime - before.ru_utime) / count * 1e6
    system = (after.ru_stime - before.ru_stime) / count * 1e6
    print(f"loop thread per request: user {user:.1f} µs, system {system:.1f} µs")
    return user


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--profile", metavar="SORT", help="profile one run, sorted by SORT"
    )
    args = parser.parse_args()
    if args.profile is not None:
        profile = cProfile.Profile()
        uvloop.run(measure(args.requests, profile))
        stats = pstats.Stats(profile)
        calls = sum(row[1] for row in stats.stats.values())  # type: ignore[attr-defined]
        print(f"{calls / args.requests:.0f} function calls per request")
        stats.sort_stats(args.profile).print_stats(40)
        return
    least = min(uvloop.run(measure(args.requests)) for _ in range(args.runs))
    print(f"least user µs per request of {args.runs} runs: {least:.1f}")


if __name__ == "__main__":
    main()
