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

Figures are only as good as the run behind them, so a run also counts what
went wrong, by kind: connections that failed to open, publications the hub
refused, connections lost before the run ended them (in fan-out, also a
subscription the hub ended), and messages never answered (echoes, or
deliveries of accepted publications to the subscribers opened). Messages
that are not the run's own (another client's publications on the channel,
a message with nothing in flight) are counted apart and ignored. A run
with any error is not :attr:`BenchResult.complete`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl as ssl_module
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from .engine.client import connect
from .engine.connection import Message, WebSocket
from .exceptions import ConnectionClosed
from .protocol import DeflateConfig, State

__all__ = ["BenchResult", "Histogram", "bench", "fanout"]

#: Sub-buckets per power of two of the latency histogram: about 3% wide.
_SUB_BITS = 5

#: Seconds the messages still in flight get once the run ends.
_DRAIN = 5.0

#: Seconds before a measurement's end at which it ends (see _measure).
_SLACK = 0.005

#: A share of one core at which the load tool is the bottleneck.
CLIENT_BOUND = 0.9

OnMessage = Callable[[WebSocket, Message], None]
Progress = Callable[[float, "BenchResult"], None]
Window = Callable[[int, "BenchResult"], None]


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

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s values to these."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.max = max(self.max, other.max)

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
    #: publications sent and deliveries of them received (fan-out).
    sent: int
    received: int
    #: Errors by kind: connections that failed to open; publications the
    #: hub refused (fan-out); connections lost before the run ended them
    #: (fan-out: subscribers and the publisher, and subscriptions the hub
    #: ended); messages never answered, counted once the run is over (0 in
    #: progress reports and measurements): echoes, or deliveries of the
    #: accepted publications to every subscriber opened.
    failed: int
    refused: int
    lost: int
    missing: int
    #: Messages that were not this run's, ignored: another client's
    #: publications on the channel, a message with nothing in flight.
    foreign: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    interrupted: bool = False
    #: The share of one core this process used while measuring: near 1.0,
    #: the load tool, not the server, set the pace.
    client_cpu: float = 0.0
    #: With ``repeat``: each measurement on its own, in order.
    windows: tuple[BenchResult, ...] = ()

    @property
    def rate(self) -> float:
        """Round trips or deliveries per second."""
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        """Errors of every kind."""
        return self.failed + self.refused + self.lost + self.missing

    @property
    def complete(self) -> bool:
        """Whether the run was what its figures claim: every connection
        opened and lasted, every message was answered."""
        return self.errors == 0

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "errors": self.errors,
            "complete": self.complete,
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
        if self.windows:
            rates = sorted(w.rate for w in self.windows)
            lines.append(
                f"  {len(rates)} measurements: {rates[0]:,.0f} to {rates[-1]:,.0f}/s, "
                f"median {statistics.median(rates):,.0f}/s"
            )
        if self.client_cpu >= CLIENT_BOUND:
            lines.append(
                f"  this tool used {self.client_cpu:.0%} of a core: it set the "
                "pace, and the server may be faster than these figures"
            )
        errors = self._errors()
        if errors:
            lines.append(f"  errors: {', '.join(errors)}")
        if self.foreign:
            lines.append(
                f"  ignored: {_counted(self.foreign, 'message')} that "
                f"{'was' if self.foreign == 1 else 'were'} not this run's"
            )
        return "\n".join(lines)

    def _errors(self) -> list[str]:
        """Each kind of error there was, in words."""
        if self.mode == "echo":
            lost = f"{_counted(self.lost, 'connection')} lost before the end"
            answers = "echoes"
        else:
            # Subscribers and the publisher: which one matters less than
            # that the deliveries below are short.
            lost = (
                f"{self.lost} of {self.connections + 1} connections (subscribers "
                "and the publisher) lost before the end"
            )
            answers = "deliveries"
        expected = self.received + self.missing
        kinds = [
            (self.failed, f"{_counted(self.failed, 'connection')} failed to open"),
            (self.refused, f"{_counted(self.refused, 'publication')} refused"),
            (self.lost, lost),
            (self.missing, f"{self.missing:,} of {expected:,} {answers} missing"),
        ]
        return [words for count, words in kinds if count]

    def line(self, index: int) -> str:
        """One measurement of several, on one line."""
        return (
            f"  {index + 1}: {self.rate:,.0f}/s, p50 {self.latency_p50_ms:.3f} ms, "
            f"p99 {self.latency_p99_ms:.3f} ms, client CPU {self.client_cpu:.0%}"
        )


def _counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


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
        self.failed = 0
        self.refused = 0
        self.lost = 0
        self.foreign = 0
        #: The connections that count as lost if they close, until the run
        #: ends them; each with the task that waits for its close (held
        #: here: the loop keeps only a weak reference to a task).
        self.watched: dict[WebSocket, asyncio.Future[None]] = {}
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
        self.settle()

    def settled(self) -> bool:
        """Whether nothing more is to come."""
        raise NotImplementedError

    def settle(self) -> None:
        """Once stopping, note when nothing more is to come."""
        if self.stopping and self.settled():
            self.drained.set()

    def missing(self) -> int:
        """Messages never answered, once the run is over."""
        raise NotImplementedError

    def watch(self, ws: WebSocket) -> None:
        """Count ``ws`` as lost if it closes before the run ends it."""
        closed = asyncio.ensure_future(ws.wait_closed())
        closed.add_done_callback(lambda _: self.lose(ws))
        self.watched[ws] = closed

    def lose(self, ws: WebSocket) -> None:
        """``ws`` is gone before the end: count it (once), and expect
        nothing more of it."""
        if self.watched.pop(ws, None) is None:
            return
        self.lost += 1
        self.forget(ws)
        self.settle()

    def forget(self, ws: WebSocket) -> None:
        """Stop expecting what ``ws`` would still have received."""
        raise NotImplementedError

    def end(self) -> None:
        """The run closes its connections from here on: one that is closed
        or closing already was lost (its close may not have been seen)."""
        for ws in [ws for ws in self.watched if ws.state is not State.OPEN]:
            self.lose(ws)
        self.watched.clear()

    def end_window(self) -> tuple[Histogram, int]:
        """This measurement's histogram and count; the next starts empty."""
        window = self.histogram, self.messages
        self.histogram = Histogram()
        self.messages = 0
        return window

    def result(
        self,
        seconds: float,
        window: tuple[Histogram, int] | None = None,
        *,
        final: bool = False,
        interrupted: bool = False,
        client_cpu: float = 0.0,
        windows: tuple[BenchResult, ...] = (),
    ) -> BenchResult:
        """The figures of ``window`` (default: the measurement under way);
        ``final`` once the run is over."""
        h, messages = window or (self.histogram, self.messages)
        ms = 1e-6
        return BenchResult(
            mode=self.mode,
            url=self.url,
            connections=self.connections,
            in_flight=self.in_flight,
            size=self.size,
            seconds=seconds,
            messages=messages,
            sent=self.sent,
            received=self.received,
            failed=self.failed,
            refused=self.refused,
            lost=self.lost,
            missing=self.missing() if final else 0,
            foreign=self.foreign,
            latency_p50_ms=h.quantile(0.5) * ms,
            latency_p90_ms=h.quantile(0.9) * ms,
            latency_p99_ms=h.quantile(0.99) * ms,
            latency_max_ms=h.max * ms,
            interrupted=interrupted,
            client_cpu=client_cpu,
            windows=windows,
        )


class _Echo(_Load):
    mode = "echo"

    def __init__(self, url: str, payload: bytes | str, in_flight: int) -> None:
        super().__init__(url, len(payload), in_flight)
        self.payload = payload
        #: Each connection's messages in flight: when each was sent.
        self.flights: dict[WebSocket, deque[int]] = {}
        #: Messages in flight on connections lost.
        self.written_off = 0

    def settled(self) -> bool:
        return self.received + self.written_off >= self.sent

    def missing(self) -> int:
        return self.sent - self.received

    def forget(self, ws: WebSocket) -> None:
        sent_at = self.flights.get(ws)
        if sent_at:
            self.written_off += len(sent_at)
            sent_at.clear()

    def start(self, ws: WebSocket) -> OnMessage:
        """Fill ``ws``'s window; return its on_message callback."""
        sent_at: deque[int] = deque()
        self.flights[ws] = sent_at
        payload = self.payload
        clock = time.perf_counter_ns

        def send() -> None:
            try:
                ws.send_nowait(payload)
            except ConnectionClosed:
                self.lose(ws)  # the server closed it: its load ends
                return
            sent_at.append(clock())
            self.sent += 1

        def on_message(_: WebSocket, message: Message) -> None:
            if not sent_at:
                self.foreign += 1  # nothing in flight: not an echo
                return
            self.timed(clock() - sent_at.popleft())
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
    repeat: int = 1
    on_window: Window | None = None


async def _run(
    load: _Load,
    opened: list[WebSocket | BaseException],
    begin: Callable[[list[WebSocket]], Awaitable[None]],
    timing: _Timing,
) -> BenchResult:
    """Start the load on the connections that opened, measure (``repeat``
    times), drain."""
    sockets = [ws for ws in opened if isinstance(ws, WebSocket)]
    load.failed += len(opened) - len(sockets)
    load.connections = len(sockets)
    if not sockets:
        raise next(e for e in opened if isinstance(e, BaseException))
    for ws in sockets:
        load.watch(ws)
    stop = timing.stop or asyncio.Event()
    whole = Histogram()
    windows: list[BenchResult] = []
    try:
        await begin(sockets)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timing.warmup)
        load.measuring = True
        began, cpu = time.monotonic(), time.process_time()
        for index in range(timing.repeat):
            if stop.is_set():
                break
            seconds, share = await _measure(load, timing, stop, began)
            window = load.end_window()
            whole.merge(window[0])
            result = load.result(seconds, window, client_cpu=share)
            windows.append(result)
            if timing.on_window is not None:
                timing.on_window(index, result)
        seconds = time.monotonic() - began
        share = (time.process_time() - cpu) / seconds if seconds else 0.0
        load.measuring = False
        load.stopping = True
        load.settle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.drained.wait(), _DRAIN)
    finally:
        load.end()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return load.result(
        seconds,
        (whole, sum(w.messages for w in windows)),
        final=True,
        interrupted=stop.is_set(),
        client_cpu=share,
        windows=tuple(windows) if timing.repeat > 1 else (),
    )


async def _measure(
    load: _Load, timing: _Timing, stop: asyncio.Event, began: float
) -> tuple[float, float]:
    """One measurement: its seconds, and the share of a core this process
    used meanwhile."""
    start, cpu = time.monotonic(), time.process_time()
    deadline = start + timing.duration
    # Within a few ms of the deadline counts as there: loops' timers may
    # fire that much early, and each early one would report progress again.
    while not stop.is_set() and (left := deadline - time.monotonic()) > _SLACK:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(1.0, left))
        if timing.progress is not None:
            elapsed = time.monotonic() - began
            timing.progress(elapsed, load.result(time.monotonic() - start))
    seconds = time.monotonic() - start
    return seconds, (time.process_time() - cpu) / seconds if seconds else 0.0


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
    repeat: int = 1,
    on_window: Window | None = None,
) -> BenchResult:
    """Run echo round trips against ``url`` (see the module docstring).

    ``progress`` is called about once a second with the figures so far;
    setting ``stop`` ends the run early, with the figures so far
    (``interrupted``). With ``repeat``, the measurement is taken that many
    times in a row (``duration`` each, after one warm-up), each reported to
    ``on_window(index, result)`` as it ends and kept in the result's
    ``windows``.
    """
    payload: bytes | str = "x" * size if text else os.urandom(size)
    load = _Echo(url, payload, in_flight)

    async def begin(sockets: list[WebSocket]) -> None:
        for ws in sockets:
            ws.on_message = load.start(ws)

    # Nothing arrives before begin() sends; then each connection has its own.
    opened = await _open(url, connections, _unexpected, compression, ssl)
    return await _run(
        load,
        opened,
        begin,
        _Timing(duration, warmup, progress, stop, repeat, on_window),
    )


class _Fanout(_Load):
    mode = "fanout"

    def __init__(self, url: str, channel: str, size: int, rate: int) -> None:
        super().__init__(url, size, rate)
        self.channel = channel
        self.ids = 0
        self.replies: dict[tuple[WebSocket, int], asyncio.Future[Any]] = {}
        self.publisher: WebSocket | None = None
        #: The publisher's client id, which the hub puts in the ``info`` of
        #: its publications: what tells them from anyone else's.
        self.client: object = None
        self.accepted = 0
        #: The subscribers not lost, and the deliveries each received.
        self.subscribers: dict[WebSocket, int] = {}
        #: Deliveries of accepted publications that they have yet to receive
        #: (below 0 while deliveries overtake the publisher's replies).
        self.owed = 0

    def settled(self) -> bool:
        answered = self.accepted + self.refused >= self.sent
        return (answered or self.publisher is None) and self.owed <= 0

    def missing(self) -> int:
        # The publications of a publisher lost may have been made unanswered.
        return max(0, self.accepted * self.connections - self.received)

    def forget(self, ws: WebSocket) -> None:
        if ws is self.publisher:
            self.publisher = None
            return
        received = self.subscribers.pop(ws, None)
        if received is not None:
            self.owed -= self.accepted - received

    def subscribed(self, ws: WebSocket) -> None:
        """``ws`` receives this channel's publications from now on."""
        self.subscribers[ws] = 0

    def sent_at(self, pub: Any) -> int | None:
        """When this run's publisher sent ``pub``; None for anyone else's."""
        try:
            if pub["info"]["client"] == self.client:
                sent: int = pub["data"]["t"]
                return sent
        except (KeyError, TypeError):
            pass
        return None

    def on_message(self, ws: WebSocket, message: Message) -> None:
        now = time.time_ns()
        try:
            decoded = json.loads(message)
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            self.foreign += 1  # not the hub's JSON
            return
        pub = decoded.get("pub")
        if pub is not None:
            sent = self.sent_at(pub)
            if sent is None:
                self.foreign += 1
                return
            received = self.subscribers.get(ws)
            if received is not None:
                self.subscribers[ws] = received + 1
                self.owed -= 1
            self.timed(now - sent)
            return
        if "unsubscribe" in decoded and decoded.get("channel") == self.channel:
            self.lose(ws)  # the hub ended the subscription: nothing more comes
            return
        id = decoded.get("id")
        waiter = self.replies.pop((ws, id), None) if isinstance(id, int) else None
        if waiter is not None and not waiter.done():
            waiter.set_result(decoded)
            return
        # What is left: the publisher's replies, and pushes of no use here
        # (join, leave).
        if "error" in decoded:
            self.refused += 1  # rate limit, permissions
        elif "result" in decoded:
            self.accepted += 1
            self.owed += len(self.subscribers)
        self.settle()

    def command(self, ws: WebSocket, op: str, **fields: Any) -> asyncio.Future[Any]:
        self.ids += 1
        waiter = asyncio.get_running_loop().create_future()
        self.replies[ws, self.ids] = waiter
        ws.send_nowait(json.dumps({"id": self.ids, "op": op, **fields}))
        return waiter

    async def call(self, ws: WebSocket, op: str, **fields: Any) -> Any:
        """Send a command; return its result."""
        reply = await self.command(ws, op, **fields)
        if "error" in reply:
            error = reply["error"]
            raise RuntimeError(f"{op} refused: {error['code']} {error['message']}")
        return reply.get("result")

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
                self.lose(ws)
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
    repeat: int = 1,
    on_window: Window | None = None,
) -> BenchResult:
    """Publish to ``channel`` of the tidings hub at ``url`` (its ``/ws``)
    and time every delivery to ``subscribers`` (see the module docstring).
    The hub's own limits apply: its per-connection ``rate_limit`` (100/s by
    default) refuses a faster publisher, and refusals count as errors.
    Publications on ``channel`` from anyone else are counted as foreign and
    otherwise ignored.
    ``progress``, ``stop``, ``repeat`` and ``on_window`` work as in
    :func:`bench`."""
    load = _Fanout(url, channel, size, rate)
    hello = {} if token is None else {"token": token}
    [publisher] = await _open(url, 1, load.on_message, compression, ssl)
    if not isinstance(publisher, WebSocket):
        raise publisher
    load.publisher = publisher
    load.watch(publisher)
    opened = await _open(url, subscribers, load.on_message, compression, ssl)
    publishing: asyncio.Task[None] | None = None

    async def begin(sockets: list[WebSocket]) -> None:
        nonlocal publishing
        connected = await load.call(publisher, "connect", **hello)
        load.client = connected.get("client") if isinstance(connected, dict) else None

        async def subscribe(ws: WebSocket) -> None:
            await load.call(ws, "connect", **hello)
            await load.call(ws, "subscribe", channel=channel)
            load.subscribed(ws)

        await asyncio.gather(*(subscribe(ws) for ws in sockets))
        publishing = asyncio.create_task(load.publish_at_rate(publisher))

    try:
        return await _run(
            load,
            opened,
            begin,
            _Timing(duration, warmup, progress, stop, repeat, on_window),
        )
    finally:
        load.stopping = True
        if publishing is not None:
            publishing.cancel()
        await publisher.close()
