"""``tidings bench URL``, the load tool, against real echo servers (tidings'
own and the websockets library's) and a real hub. What it counts must agree
with what the server saw, its latency figures must be ordered and
plausible, Ctrl-C must print the figures so far, and a run that lost
connections or messages must say so and exit non-zero."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

import tidings
from tidings import WebSocket
from tidings.bench import BenchResult, Histogram, bench, fanout
from tidings.hub import Hub, HubConfig
from tidings.hub.brokers.base import Push
from tidings.hub.session import MAX_RATE_LIMITED

from .conftest import Peer, failing_command, free_port, lose

BOUND = 30

#: A channel of the development hub's demo namespaces, where anyone publishes.
CHANNEL = "chat:bench"

#: The counts of what went wrong, by kind, and of the messages ignored.
KINDS = ("failed", "refused", "lost", "missing", "foreign")


class Seen:
    """What an echo server received."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0

    def count(self, message: str | bytes) -> None:
        self.messages += 1
        self.bytes += len(message)


@asynccontextmanager
async def tidings_echo(seen: Seen) -> AsyncIterator[str]:
    def on_message(ws: WebSocket, message: str | bytes) -> None:
        seen.count(message)
        ws.send_nowait(message)

    async with tidings.serve(None, "127.0.0.1", 0, on_message=on_message) as server:
        yield f"ws://127.0.0.1:{server.port}/"


@asynccontextmanager
async def websockets_echo(seen: Seen) -> AsyncIterator[str]:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            seen.count(message)
            await ws.send(message)

    async with ws_serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


def check(result: BenchResult, seen: Seen, *, size: int, connections: int) -> None:
    # Every message sent reached the server, and every echo came back.
    assert result.sent == seen.messages == result.received
    assert seen.bytes == result.sent * size
    assert result.errors == 0 and result.connections == connections
    assert 0 < result.messages <= result.received
    assert (
        0
        < result.latency_p50_ms
        <= result.latency_p90_ms
        <= result.latency_p99_ms
        <= result.latency_max_ms
        < BOUND * 1000
    )
    assert result.rate == pytest.approx(result.messages / result.seconds)


@pytest.mark.parametrize("server", [tidings_echo, websockets_echo])
@pytest.mark.parametrize(("connections", "in_flight"), [(1, 1), (4, 8)])
async def test_counts_agree_with_the_server(
    server: object, connections: int, in_flight: int
) -> None:
    seen = Seen()
    async with server(seen) as url:  # type: ignore[operator]
        async with asyncio.timeout(BOUND):
            result = await bench(
                url,
                connections=connections,
                in_flight=in_flight,
                size=100,
                duration=0.5,
                warmup=0.1,
            )
    check(result, seen, size=100, connections=connections)
    assert result.in_flight == in_flight and not result.interrupted


async def test_text_compressed() -> None:
    seen = Seen()
    async with tidings_echo(seen) as url, asyncio.timeout(BOUND):
        result = await bench(
            url, size=2000, text=True, compression=True, duration=0.3, warmup=0
        )
    check(result, seen, size=2000, connections=1)


async def test_repeated_measurements_add_up_to_the_run() -> None:
    seen = Seen()
    reported: list[tuple[int, BenchResult]] = []
    async with tidings_echo(seen) as url, asyncio.timeout(BOUND):
        result = await bench(
            url,
            connections=2,
            duration=0.3,
            warmup=0.1,
            repeat=3,
            on_window=lambda i, r: reported.append((i, r)),
        )
    check(result, seen, size=32, connections=2)
    # Each measurement was reported as it ended, and is kept in the result.
    assert [i for i, _ in reported] == [0, 1, 2]
    assert tuple(r for _, r in reported) == result.windows
    assert sum(w.messages for w in result.windows) == result.messages
    assert sum(w.seconds for w in result.windows) == pytest.approx(
        result.seconds, abs=0.05
    )
    for window in result.windows:
        assert window.messages > 0 and window.seconds == pytest.approx(0.3, abs=0.1)
        assert window.latency_max_ms <= result.latency_max_ms
        # The share of a core this process used: something, at most all of it.
        assert 0 < window.client_cpu <= 1.05
    assert "3 measurements" in result.summary()


async def test_stop_ends_the_run_with_the_figures_so_far() -> None:
    seen = Seen()
    stop = asyncio.Event()
    rounds: list[float] = []

    def progress(elapsed: float, so_far: BenchResult) -> None:
        rounds.append(elapsed)
        stop.set()  # after the first progress report

    async with tidings_echo(seen) as url, asyncio.timeout(BOUND):
        result = await bench(url, duration=600, warmup=0, progress=progress, stop=stop)
    assert result.interrupted and len(rounds) == 1 and result.seconds < BOUND
    check(result, seen, size=32, connections=1)


Process = asyncio.subprocess.Process


async def interrupt_bench(
    *args: str, when: Callable[[Process], Awaitable[object]]
) -> tuple[int, Any]:
    """Run ``tidings bench ARGS --json`` and Ctrl-C it once ``when(process)``
    is done; return its exit status and its report."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tidings", "bench", *args, "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(BOUND):
            await when(proc)
            proc.send_signal(signal.SIGINT)
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None and out, err.decode()
    return proc.returncode, json.loads(out)


async def first_progress(proc: Process) -> None:
    assert proc.stderr is not None
    line = await proc.stderr.readline()
    assert b"msg/s" in line, line


async def test_the_command_prints_the_summary_on_ctrl_c() -> None:
    seen = Seen()
    async with tidings_echo(seen) as url:
        status, result = await interrupt_bench(
            *(url, "-c", "2", "--duration", "600", "--warmup", "0"),
            when=first_progress,
        )
    assert status == 0
    assert result["interrupted"] is True and result["connections"] == 2
    assert result["sent"] == result["received"] == seen.messages
    assert result["messages_per_second"] > 0


async def test_the_command_prints_a_json_line_per_measurement() -> None:
    seen = Seen()
    async with tidings_echo(seen) as url:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tidings", "bench", url, "--json"),
            *("--duration", "0.2", "--warmup", "0", "--repeat", "2"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(BOUND):
            out, _ = await proc.communicate()
    assert proc.returncode == 0
    *windows, whole = [json.loads(line) for line in out.splitlines()]
    assert [w["window"] for w in windows] == [0, 1]
    assert sum(w["messages"] for w in windows) == whole["messages"] > 0
    assert whole["sent"] == whole["received"] == seen.messages


async def test_the_command_says_why_it_cannot_connect() -> None:
    err = await failing_command("bench", f"ws://127.0.0.1:{free_port()}/")
    assert err.startswith("tidings: ws://127.0.0.1:")
    assert "connection refused" in err


@given(st.lists(st.integers(1, 10**11), min_size=1, max_size=500))
def test_histogram_quantiles_are_within_its_bucket_width(values: list[int]) -> None:
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    assert histogram.max == ordered[-1] and histogram.count == len(values)
    for q in (0.5, 0.9, 0.99, 1.0):
        exact = ordered[max(1, round(q * len(values))) - 1]
        got = histogram.quantile(q)
        # Never below the exact value, and at most one bucket (~3%) above.
        assert exact <= got <= max(exact * 1.07, exact + 1), (q, exact, got)


def test_an_empty_histogram_says_zero() -> None:
    assert Histogram().quantile(0.99) == 0
    histogram = Histogram()
    for _ in range(100):
        histogram.add(random.randrange(1000))
    assert histogram.quantile(0.5) <= histogram.quantile(0.99) <= histogram.max


async def test_fanout_times_every_delivery_from_a_hub() -> None:
    async with Hub(HubConfig(port=0)) as hub, asyncio.timeout(BOUND):
        result = await fanout(
            hub.ws_url,
            CHANNEL,
            subscribers=5,
            rate=50,
            size=100,
            duration=0.5,
            warmup=0.1,
        )
        position = await hub.history(CHANNEL, limit=0)
    # Every publication the hub took reached every subscriber, once.
    assert result.mode == "fanout" and result.connections == 5
    assert position.offset == result.sent > 0
    assert result.received == result.sent * 5 and result.errors == 0
    assert 0 < result.messages <= result.received
    assert 0 < result.latency_p50_ms <= result.latency_p99_ms <= result.latency_max_ms
    assert "deliveries" in result.summary()


async def test_fanout_counts_what_the_hub_refuses() -> None:
    async with Hub(HubConfig(port=0, rate_limit=5, rate_burst=5)) as hub:
        async with asyncio.timeout(BOUND):
            result = await fanout(
                hub.ws_url, "chat:limited", subscribers=1, rate=100, duration=0.5
            )
    # The publisher's 429s, then its connection, which the hub closes (4008)
    # when they go on; a publication refused owes no deliveries.
    assert errors_of(result.to_json()) == no_errors(refused=MAX_RATE_LIMITED, lost=1)
    assert not result.complete


def errors_of(report: dict[str, Any]) -> dict[str, Any]:
    """What a run's report (``to_json()``, or ``--json``) counts by kind."""
    return {kind: report.get(kind) for kind in KINDS}


def no_errors(**counts: int) -> dict[str, int]:
    """``errors_of`` a report with nothing wrong but ``counts``."""
    return {**dict.fromkeys(KINDS, 0), **counts}


@asynccontextmanager
async def closing_echo(
    echoes: int, connections: int
) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """An echo server that closes every connection after ``echoes`` echoes;
    the event is set once ``connections`` closing handshakes are done, so
    that the client has seen every close."""
    closed = asyncio.Event()
    done = 0

    async def handler(ws: WebSocket) -> None:
        nonlocal done
        for _ in range(echoes):
            await ws.send(await ws.recv())
        await ws.close(1000, "enough")
        done += 1
        if done == connections:
            closed.set()

    async with tidings.serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.port}/", closed


async def test_echo_counts_the_connections_the_server_closed() -> None:
    async with closing_echo(20, 2) as (url, closed), asyncio.timeout(BOUND):
        result = await bench(url, connections=2, duration=BOUND, warmup=0, stop=closed)
    assert result.received == 40 and result.connections == 2
    # Whatever each connection sent after its 20th echo was never answered.
    missing = result.sent - result.received
    assert errors_of(result.to_json()) == no_errors(lost=2, missing=missing)
    assert result.errors == 2 + missing and not result.complete
    assert "2 connections lost before the end" in result.summary()


async def test_the_command_exits_non_zero_when_connections_were_lost() -> None:
    async with closing_echo(20, 2) as (url, closed):
        status, report = await interrupt_bench(
            *(url, "-c", "2", "--duration", "600", "--warmup", "0"),
            when=lambda _: closed.wait(),
        )
    assert status == 1
    assert report["received"] == 40 and report["lost"] == 2
    assert report["complete"] is False and report["interrupted"] is True


def pushed_past(hub: Hub, offset: int) -> asyncio.Future[None]:
    """Done once ``hub`` has handed its subscribers a publication after
    ``offset`` (and so, in order, every one before it)."""
    done = asyncio.get_running_loop().create_future()
    deliver = hub.on_push

    def watch(push: Push) -> None:
        deliver(push)
        if push.kind == "pub" and push.offset > offset and not done.done():
            done.set_result(None)

    hub.on_push = watch  # type: ignore[method-assign]
    return done


async def test_fanout_ignores_publications_that_are_not_its_own() -> None:
    stop = asyncio.Event()
    async with (
        Hub(HubConfig(port=0)) as hub,
        tidings.connect(hub.ws_url) as ws,
        asyncio.timeout(BOUND),
    ):
        # Someone else on the channel: it also keeps the hub pushing to it
        # whatever becomes of the run's subscribers.
        other = Peer(ws, hub)
        await other.result("connect")
        await other.result("subscribe", channel=CHANNEL)
        run = asyncio.ensure_future(
            fanout(
                hub.ws_url,
                CHANNEL,
                subscribers=3,
                rate=50,
                duration=BOUND,
                warmup=0,
                stop=stop,
            )
        )
        await pushed_past(hub, 0)  # the run is publishing
        # One from the HTTP API's side with no "t", one from another client
        # that looks like the run's own.
        await hub.publish(CHANNEL, {"text": "not the bench's"})
        mimic = await other.result("publish", channel=CHANNEL, data={"t": 1})
        await pushed_past(hub, mimic["offset"])  # the run's subscribers got both
        stop.set()
        result = await run
        position = await hub.history(CHANNEL, limit=0)
    assert errors_of(result.to_json()) == no_errors(foreign=2 * 3)
    assert result.complete and result.connections == 3
    assert result.received == result.sent * 3 and position.offset == result.sent + 2
    assert "ignored: 6 messages that were not this run's" in result.summary()


async def test_fanout_counts_the_subscribers_the_hub_dropped() -> None:
    stop = asyncio.Event()

    def progress(elapsed: float, so_far: BenchResult) -> None:
        if so_far.to_json().get("lost") == 3:
            stop.set()

    async with Hub(HubConfig(port=0)) as hub, asyncio.timeout(BOUND):
        run = asyncio.ensure_future(
            fanout(
                hub.ws_url,
                CHANNEL,
                subscribers=3,
                rate=50,
                duration=BOUND / 3,
                warmup=0,
                progress=progress,
                stop=stop,
            )
        )
        await pushed_past(hub, 0)
        # The run's connections have no user: this ends all its subscriptions.
        assert hub.unsubscribe_user("", CHANNEL) == 3
        result = await run
    report = result.to_json()
    assert report.get("lost") == 3, report
    # The run went on publishing to no one: every delivery after is missing.
    expected = (result.sent - result.refused) * 3
    missing = expected - result.received
    assert missing > 0
    assert errors_of(report) == no_errors(lost=3, missing=missing)
    assert not result.complete
    summary = result.summary()
    assert "3 of 4 connections" in summary and f"{missing:,} of {expected:,}" in summary


async def test_the_command_exits_non_zero_when_deliveries_are_missing() -> None:
    async with Hub(HubConfig(port=0)) as hub:
        lose(hub, {1})  # every subscriber misses the run's first publication
        published = pushed_past(hub, 1)
        status, report = await interrupt_bench(
            *(hub.ws_url, "--hub", CHANNEL, "--subscribers", "3", "--rate", "50"),
            *("--duration", "600", "--warmup", "0"),
            when=lambda _: published,
        )
    assert status == 1
    assert errors_of(report) == no_errors(missing=3)
    assert report["received"] == (report["sent"] - 1) * 3
    assert report["complete"] is False
