"""``tidings bench URL``: a load tool for WebSocket servers.

Two modes:

- **echo** (:func:`bench`), against any server that sends every message
  back: each of ``connections`` connections keeps ``in_flight`` messages of
  ``size`` bytes in flight, sending one more for every echo. A round trip is
  timed from the send to its echo (echoes come back in order on a
  connection, so the oldest message sent is the one answered).
- **fan-out** (:func:`fanout`), against a tidings hub: ``subscribers``
  connections subscribe to one channel, and one more connection publishes to
  it ``rate`` times a second (open loop: on a schedule, not waiting for
  deliveries). Each publication carries its send time; a delivery is timed
  from there to its arrival at each subscriber.

Both measure for ``duration`` seconds after ``warmup`` and report messages
(round trips, deliveries) and bytes per second, and the latency's p50, p90,
p99 and maximum. One message in flight per connection (the echo default) is
how interactive clients talk and how the peers publish their figures; more
measures batching, and every figure says which it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from .client import connect
from .connection import Message, WebSocket
from .exceptions import ConnectionClosed
from .protocol import DeflateConfig

__all__ = ["BenchResult", "Histogram", "bench", "fanout"]

#: Sub-buckets per power of two of the latency histogram: about 3% wide.
_SUB_BITS = 5

#: Seconds the messages still in flight get once the run ends.
_DRAIN = 5.0

OnMessage = Callable[[WebSocket, Message], None]
Progress = Callable[[float, "BenchResult"], None]


class Histogram:
    """Latencies in nanoseconds, in buckets ~3% wide: bounded memory for
    any number of round trips (after HdrHistogram's layout)."""

    __slots__ = ("count", "counts", "max")

    def __init__(self) -> None:
        self.counts = [0] * (64 << _SUB_BITS)
        self.count = 0
        self.max = 0

    def add(self, value: int) -> None:
        # Once per round trip, so the bucket is found inline: the top
        # _SUB_BITS + 1 bits of the value pick it.
        bits = value.bit_length()
        if bits <= _SUB_BITS:
            index = value
        else:
            shift = bits - _SUB_BITS - 1
            index = ((shift + 1) << _SUB_BITS) + ((value >> shift) - (1 << _SUB_BITS))
        self.counts[index] += 1
        self.count += 1
        self.max = max(self.max, value)

    def quantile(self, q: float) -> int:
        """The upper bound of the bucket holding the ``q`` quantile (0 when
        empty); never more than the largest value seen."""
        rank = max(1, round(q * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(_upper(index), self.max)
        return self.max


def _upper(index: int) -> int:
    group, sub = divmod(index, 1 << _SUB_BITS)
    if group == 0:
        return sub
    shift = group - 1
    return (((1 << _SUB_BITS) + sub + 1) << shift) - 1


@dataclass(frozen=True, slots=True)
class BenchResult:
    """What a run measured (after the warm-up)."""

    mode: str  # "echo" or "fanout"
    url: str
    #: Echo: connections; fan-out: subscribers.
    connections: int
    #: Echo: messages in flight per connection; fan-out: publications per
    #: second asked for.
    in_flight: int
    size: int
    seconds: float
    #: Measured: round trips (echo) or deliveries (fan-out).
    messages: int
    #: Warm-up included: messages sent and echoes received (echo), or
    #: publications sent and deliveries received (fan-out).
    sent: int
    received: int
    #: Connections that failed to open, and commands refused (fan-out).
    errors: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    interrupted: bool = False

    @property
    def rate(self) -> float:
        """Round trips or deliveries per second."""
        return self.messages / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "messages_per_second": self.rate,
            "bytes_per_second": self.rate * self.size,
        }

    def summary(self) -> str:
        """The human-readable report."""
        cut = " (interrupted)" if self.interrupted else ""
        if self.mode == "echo":
            depth = "message" if self.in_flight == 1 else "messages"
            head = (
                f"{self.url}: {self.connections} connections, {self.in_flight} "
                f"{depth} of {self.size} bytes in flight each, "
                f"{self.seconds:.1f} s{cut}"
            )
            counts = (
                f"  {self.messages:,} round trips: {self.rate:,.0f} msg/s, "
                f"{_bytes(self.rate * self.size)}/s each way"
            )
        else:
            head = (
                f"{self.url}: {self.in_flight} publications/s of {self.size} bytes "
                f"to {self.connections} subscribers, {self.seconds:.1f} s{cut}"
            )
            counts = (
                f"  {self.messages:,} deliveries: {self.rate:,.0f}/s, "
                f"{_bytes(self.rate * self.size)}/s"
            )
        lines = [
            head,
            counts,
            f"  latency: p50 {self.latency_p50_ms:.3f} ms, p90 "
            f"{self.latency_p90_ms:.3f} ms, p99 {self.latency_p99_ms:.3f} ms, "
            f"max {self.latency_max_ms:.3f} ms",
        ]
        if self.errors:
            lines.append(f"  {self.errors} errors (connections or commands refused)")
        return "\n".join(lines)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


class _Load:
    """What every mode counts, and when."""

    mode = ""

    def __init__(self, url: str, size: int, in_flight: int) -> None:
        self.url = url
        self.size = size
        self.in_flight = in_flight
        self.connections = 0
        self.histogram = Histogram()
        self.messages = 0
        self.sent = 0
        self.received = 0
        self.errors = 0
        #: Counting from the end of the warm-up; sending until stopping.
        self.measuring = False
        self.stopping = False
        #: Set once nothing is in flight after stopping.
        self.drained = asyncio.Event()

    def timed(self, latency: int) -> None:
        self.received += 1
        if self.measuring:
            self.histogram.add(latency)
            self.messages += 1
        if self.stopping and self.received >= self.expected():
            self.drained.set()

    def expected(self) -> int:
        """What ``received`` comes to once nothing is in flight."""
        return self.sent

    def result(self, seconds: float, *, interrupted: bool = False) -> BenchResult:
        h = self.histogram
        ms = 1e-6
        return BenchResult(
            mode=self.mode,
            url=self.url,
            connections=self.connections,
            in_flight=self.in_flight,
            size=self.size,
            seconds=seconds,
            messages=self.messages,
            sent=self.sent,
            received=self.received,
            errors=self.errors,
            latency_p50_ms=h.quantile(0.5) * ms,
            latency_p90_ms=h.quantile(0.9) * ms,
            latency_p99_ms=h.quantile(0.99) * ms,
            latency_max_ms=h.max * ms,
            interrupted=interrupted,
        )


class _Echo(_Load):
    mode = "echo"

    def __init__(self, url: str, payload: bytes | str, in_flight: int) -> None:
        super().__init__(url, len(payload), in_flight)
        self.payload = payload

    def start(self, ws: WebSocket) -> OnMessage:
        """Fill ``ws``'s window; return its on_message callback."""
        sent_at: deque[int] = deque()
        payload = self.payload
        clock = time.perf_counter_ns

        def send() -> None:
            try:
                ws.send_nowait(payload)
            except ConnectionClosed:
                self.errors += 1  # the server closed it: its load ends
                return
            sent_at.append(clock())
            self.sent += 1

        def on_message(_: WebSocket, message: Message) -> None:
            self.timed(clock() - sent_at.popleft() if sent_at else 0)
            if not self.stopping:
                send()

        for _ in range(self.in_flight):
            send()
        return on_message


def _unexpected(ws: WebSocket, message: Message) -> None:
    ws.drop(1008, "a message before any was sent")


async def _open(
    url: str,
    count: int,
    on_message: OnMessage,
    compression: bool,
    ssl: ssl_module.SSLContext | None,
) -> list[WebSocket | BaseException]:
    """Open ``count`` connections at once; those that failed, as errors."""
    deflate = DeflateConfig() if compression else None
    return await asyncio.gather(
        *(
            connect(url, on_message=on_message, compression=deflate, ssl=ssl)
            for _ in range(count)
        ),
        return_exceptions=True,
    )


@dataclass(frozen=True, slots=True)
class _Timing:
    duration: float
    warmup: float
    progress: Progress | None
    stop: asyncio.Event | None


async def _run(
    load: _Load,
    opened: list[WebSocket | BaseException],
    begin: Callable[[list[WebSocket]], Awaitable[None]],
    timing: _Timing,
) -> BenchResult:
    """Start the load on the connections that opened, measure, drain."""
    duration, warmup, progress = timing.duration, timing.warmup, timing.progress
    sockets = [ws for ws in opened if isinstance(ws, WebSocket)]
    load.errors += len(opened) - len(sockets)
    load.connections = len(sockets)
    if not sockets:
        raise next(e for e in opened if isinstance(e, BaseException))
    stop = timing.stop or asyncio.Event()
    try:
        await begin(sockets)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), warmup)
        load.measuring = True
        began = time.monotonic()
        deadline = began + duration
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), min(1.0, deadline - time.monotonic())
                )
            if progress is not None:
                elapsed = time.monotonic() - began
                progress(elapsed, load.result(elapsed))
        seconds = time.monotonic() - began
        load.measuring = False
        load.stopping = True
        if load.received >= load.expected():
            load.drained.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.drained.wait(), _DRAIN)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return load.result(seconds, interrupted=stop.is_set())


async def bench(
    url: str,
    *,
    connections: int = 1,
    in_flight: int = 1,
    size: int = 32,
    text: bool = False,
    duration: float = 10.0,
    warmup: float = 1.0,
    compression: bool = False,
    ssl: ssl_module.SSLContext | None = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
) -> BenchResult:
    """Run echo round trips against ``url`` (see the module docstring).

    ``progress`` is called about once a second with the figures so far;
    setting ``stop`` ends the run early, with the figures so far
    (``interrupted``).
    """
    payload: bytes | str = "x" * size if text else os.urandom(size)
    load = _Echo(url, payload, in_flight)

    async def begin(sockets: list[WebSocket]) -> None:
        for ws in sockets:
            ws.on_message = load.start(ws)

    # Nothing arrives before begin() sends; then each connection has its own.
    opened = await _open(url, connections, _unexpected, compression, ssl)
    return await _run(load, opened, begin, _Timing(duration, warmup, progress, stop))


class _Fanout(_Load):
    mode = "fanout"

    def __init__(self, url: str, channel: str, size: int, rate: int) -> None:
        super().__init__(url, size, rate)
        self.channel = channel
        self.ids = 0
        self.replies: dict[tuple[WebSocket, int], asyncio.Future[Any]] = {}

    def expected(self) -> int:
        return self.sent * self.connections

    def on_message(self, ws: WebSocket, message: Message) -> None:
        now = time.time_ns()
        decoded = json.loads(message)
        pub = decoded.get("pub")
        if pub is not None:
            self.timed(now - pub["data"]["t"])
            return
        waiter = self.replies.pop((ws, decoded.get("id")), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(decoded)
        elif "error" in decoded:
            self.errors += 1  # a publish refused (rate limit, permissions)

    def command(self, ws: WebSocket, op: str, **fields: Any) -> asyncio.Future[Any]:
        self.ids += 1
        waiter = asyncio.get_running_loop().create_future()
        self.replies[ws, self.ids] = waiter
        ws.send_nowait(json.dumps({"id": self.ids, "op": op, **fields}))
        return waiter

    async def call(self, ws: WebSocket, op: str, **fields: Any) -> None:
        reply = await self.command(ws, op, **fields)
        if "error" in reply:
            error = reply["error"]
            raise RuntimeError(f"{op} refused: {error['code']} {error['message']}")

    def publish(self, ws: WebSocket) -> None:
        self.ids += 1
        # Wall-clock time: the same clock where the subscribers read it.
        data = {"t": time.time_ns(), "p": "x" * self.size}
        command = {"id": self.ids, "op": "publish", "channel": self.channel}
        ws.send_nowait(json.dumps({**command, "data": data}))
        self.sent += 1

    async def publish_at_rate(self, ws: WebSocket) -> None:
        """Publish ``in_flight`` times a second on a fixed schedule, until
        stopping (a publication that fell behind goes out at once), or until
        the hub closes the publisher."""
        start = time.monotonic()
        n = 0
        while not self.stopping:
            n += 1
            due = start + n / self.in_flight
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.stopping:
                return
            try:
                self.publish(ws)
            except ConnectionClosed:
                self.errors += 1
                return


async def fanout(
    url: str,
    channel: str,
    *,
    subscribers: int = 100,
    rate: int = 100,
    size: int = 32,
    token: str | None = None,
    duration: float = 10.0,
    warmup: float = 1.0,
    compression: bool = False,
    ssl: ssl_module.SSLContext | None = None,
    progress: Progress | None = None,
    stop: asyncio.Event | None = None,
) -> BenchResult:
    """Publish to ``channel`` of the tidings hub at ``url`` (its ``/ws``)
    and time every delivery to ``subscribers`` (see the module docstring).
    The hub's own limits apply: its per-connection ``rate_limit`` (100/s by
    default) refuses a faster publisher, and refusals count as errors."""
    load = _Fanout(url, channel, size, rate)
    hello = {} if token is None else {"token": token}
    [publisher] = await _open(url, 1, load.on_message, compression, ssl)
    if not isinstance(publisher, WebSocket):
        raise publisher
    opened = await _open(url, subscribers, load.on_message, compression, ssl)
    publishing: asyncio.Task[None] | None = None

    async def begin(sockets: list[WebSocket]) -> None:
        nonlocal publishing
        await load.call(publisher, "connect", **hello)

        async def subscribe(ws: WebSocket) -> None:
            await load.call(ws, "connect", **hello)
            await load.call(ws, "subscribe", channel=channel)

        await asyncio.gather(*(subscribe(ws) for ws in sockets))
        publishing = asyncio.create_task(load.publish_at_rate(publisher))

    try:
        return await _run(
            load, opened, begin, _Timing(duration, warmup, progress, stop)
        )
    finally:
        load.stopping = True
        if publishing is not None:
            publishing.cancel()
        await publisher.close()
