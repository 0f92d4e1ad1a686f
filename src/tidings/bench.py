"""``tidings bench URL``: a load tool for any WebSocket echo server.

Each of ``connections`` connections keeps ``in_flight`` messages of ``size``
bytes in flight: it sends them, and sends one more for every message the
server echoes, for ``duration`` seconds after ``warmup``. A round trip is
timed from the send to its echo (echoes come back in order on a connection,
so the oldest message sent is the one answered). The summary gives messages
and bytes per second and the latency's p50, p90, p99 and maximum.

One message in flight per connection (the default) is how interactive
clients talk and how the peers publish their figures; more measures
batching, and every figure says which it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .client import connect
from .connection import Message, WebSocket
from .protocol import DeflateConfig

__all__ = ["BenchResult", "Histogram", "bench"]

#: Sub-buckets per power of two of the latency histogram: about 3% wide.
_SUB_BITS = 5


class Histogram:
    """Latencies in nanoseconds, in buckets ~3% wide: bounded memory for
    any number of round trips (after HdrHistogram's layout)."""

    __slots__ = ("count", "counts", "max")

    def __init__(self) -> None:
        self.counts = [0] * (64 << _SUB_BITS)
        self.count = 0
        self.max = 0

    def add(self, value: int) -> None:
        self.counts[_bucket(value)] += 1
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


def _bucket(value: int) -> int:
    bits = value.bit_length()
    if bits <= _SUB_BITS:
        return value
    shift = bits - _SUB_BITS - 1
    return ((shift + 1) << _SUB_BITS) + ((value >> shift) - (1 << _SUB_BITS))


def _upper(index: int) -> int:
    group, sub = divmod(index, 1 << _SUB_BITS)
    if group == 0:
        return sub
    shift = group - 1
    return (((1 << _SUB_BITS) + sub + 1) << shift) - 1


@dataclass(frozen=True, slots=True)
class BenchResult:
    """What a run measured (after the warm-up)."""

    url: str
    connections: int
    in_flight: int
    size: int
    seconds: float
    #: Round trips completed: messages sent and echoed back.
    messages: int
    #: Messages the server was sent, warm-up included, and echoes received.
    sent: int
    received: int
    errors: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    interrupted: bool = False

    @property
    def rate(self) -> float:
        """Round trips per second."""
        return self.messages / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "messages_per_second": self.rate,
            "bytes_per_second": self.rate * self.size,
        }

    def summary(self) -> str:
        """The human-readable report."""
        depth = "message" if self.in_flight == 1 else "messages"
        lines = [
            f"{self.url}: {self.connections} connections, {self.in_flight} "
            f"{depth} of {self.size} bytes in flight each, "
            f"{self.seconds:.1f} s{' (interrupted)' if self.interrupted else ''}",
            f"  {self.messages:,} round trips: {self.rate:,.0f} msg/s, "
            f"{_bytes(self.rate * self.size)}/s each way",
            f"  latency: p50 {self.latency_p50_ms:.3f} ms, p90 "
            f"{self.latency_p90_ms:.3f} ms, p99 {self.latency_p99_ms:.3f} ms, "
            f"max {self.latency_max_ms:.3f} ms",
        ]
        if self.errors:
            lines.append(f"  {self.errors} connections failed")
        return "\n".join(lines)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


class _Load:
    """The round trips of every connection, and their clock."""

    def __init__(self, payload: bytes | str, in_flight: int) -> None:
        self.payload = payload
        self.in_flight = in_flight
        self.connections = 0
        self.histogram = Histogram()
        self.messages = 0
        self.sent = 0
        self.received = 0
        #: Counting from the end of the warm-up; sending until stopping.
        self.measuring = False
        self.stopping = False
        self.idle = asyncio.Event()  # set when nothing is in flight anywhere
        self.idle.set()

    def start(self, ws: WebSocket) -> Callable[[WebSocket, Message], None]:
        """Fill ``ws``'s window; return its on_message callback."""
        sent_at: deque[int] = deque()
        payload = self.payload
        clock = time.perf_counter_ns

        def send() -> None:
            sent_at.append(clock())
            self.sent += 1
            ws.send_nowait(payload)

        def on_message(_: WebSocket, message: Message) -> None:
            self.received += 1
            if sent_at:
                latency = clock() - sent_at.popleft()
                if self.measuring:
                    self.histogram.add(latency)
                    self.messages += 1
            if not self.stopping:
                send()
            elif self.sent == self.received:
                self.idle.set()

        self.idle.clear()
        for _ in range(self.in_flight):
            send()
        return on_message


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
    progress: Callable[[float, BenchResult], None] | None = None,
    stop: asyncio.Event | None = None,
) -> BenchResult:
    """Run echo round trips against ``url`` (see the module docstring).

    ``progress`` is called about once a second with the figures so far;
    setting ``stop`` ends the run early, with the figures so far
    (``interrupted``).
    """
    payload: bytes | str = "x" * size if text else os.urandom(size)
    load = _Load(payload, in_flight)
    callbacks: dict[WebSocket, Callable[[WebSocket, Message], None]] = {}

    def on_message(ws: WebSocket, message: Message) -> None:
        callbacks[ws](ws, message)

    deflate = DeflateConfig() if compression else None
    opened = await asyncio.gather(
        *(
            connect(url, on_message=on_message, compression=deflate, ssl=ssl)
            for _ in range(connections)
        ),
        return_exceptions=True,
    )
    sockets = [ws for ws in opened if isinstance(ws, WebSocket)]
    errors = len(opened) - len(sockets)
    load.connections = len(sockets)
    if not sockets:
        failure = next(e for e in opened if isinstance(e, BaseException))
        raise failure
    stop = stop or asyncio.Event()
    interrupted = False
    try:
        for ws in sockets:
            callbacks[ws] = load.start(ws)
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
                progress(time.monotonic() - began, _result(load, url, began, errors))
        interrupted = stop.is_set()
        elapsed = time.monotonic() - began
        load.measuring = False
        load.stopping = True
        if load.sent == load.received:
            load.idle.set()
        # The echoes still in flight, at most a few seconds.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.idle.wait(), 5.0)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return _result(load, url, began, errors, elapsed, interrupted=interrupted)


def _result(
    load: _Load,
    url: str,
    began: float,
    errors: int,
    elapsed: float | None = None,
    *,
    interrupted: bool = False,
) -> BenchResult:
    h = load.histogram
    ms = 1e-6
    return BenchResult(
        url=url,
        connections=load.connections,
        in_flight=load.in_flight,
        size=len(load.payload),
        seconds=elapsed if elapsed is not None else time.monotonic() - began,
        messages=load.messages,
        sent=load.sent,
        received=load.received,
        errors=errors,
        latency_p50_ms=h.quantile(0.5) * ms,
        latency_p90_ms=h.quantile(0.9) * ms,
        latency_p99_ms=h.quantile(0.99) * ms,
        latency_max_ms=h.max * ms,
        interrupted=interrupted,
    )
