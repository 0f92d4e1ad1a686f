"""What the application's hooks cost (``[proxy]``, docs/integrate.md): each
command measured through its hook and without it, side by side in one
run, against a back end that answers yes at once.

- **connect**: through the connect hook, against a connect with a token
  (each cycle opens a WebSocket, sends ``connect``, waits for the reply and
  resets the connection): connects/s;
- **subscribe**: to a namespace with ``subscribe_proxy``, against a plain
  namespace (each subscribe is followed by an unsubscribe, not hooked, so
  that the next can be made): subscribes/s;
- **publish**: to a namespace with ``publish_proxy``, against a plain
  namespace (32 B of data, to a channel of the client's own with no
  subscriber): publishes/s;
- **rpc**: through the rpc hook (32 B of data, echoed), against ``ping``,
  a command the hub answers alone: round trips/s.

Each command is a row at 1 client and one at 1,000 clients, every client
with one command in flight (send, wait for the reply, send the next). The
figures: calls answered per second, error replies per second, the latency
of each command answered (p50 and p99, from send to reply at the client;
"added" is the hooked quantile minus the plain one), and the CPU per call
answered of the hub, of the back end and of the load client. The two sides
of a row alternate, measurement by measurement, so that a noisy moment
falls on both. Each row runs on a hub and a back end of their own, started
for it; 1 s after its last measurement one more call goes through the
hook, to show whether the proxy answers again once the load is gone.

The hub (``tidings.hub.Hub`` as ``tidings serve`` runs it, the memory
broker, uvloop) runs in a process of its own on core 0; the back end
(benchmarks/proxy_app.py, Starlette under uvicorn with uvloop and
httptools) in another on core 1; the load client (raw sockets on uvloop,
the harness's ``Conn``) shares core 1 with the back end, there being two
cores. The hub's proxy settings are the defaults (``timeout`` 1 s,
``max_in_flight`` 256) unless ``--proxy-timeout`` and ``--max-in-flight``
say otherwise. A pair of measurements in which other processes took more
than MAX_FOREIGN of the cores is taken again, once per row. Loopback only;
every loop is bounded in count and in time; the children end with their
stdin (or after 15 minutes).

    .venv/bin/python -m benchmarks.proxy [--clients 1,1000] [--seconds 2.5]
        [--repeat 3] [--commands connect,subscribe,publish,rpc] [--json FILE]
    .venv/bin/python -m benchmarks.proxy --quick    # seconds: proves it works
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .harness._proc import busy_fraction, core_times, proc_cpu
from .harness.loadgen import (
    Bench,
    Conn,
    Handshake,
    build_frame,
    loop_runner,
    pin,
    raise_fd_limit,
    sources,
    text_payload,
)
from .harness.servers import ready, ready_port, stop_signal

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    name: value
    for name, value in os.environ.items()
    # Loopback only: no HTTP proxy between the hub and the back end.
    if name.lower() not in ("http_proxy", "https_proxy", "all_proxy")
}
ENV["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'src'}"

#: The hub's token secret (HS256 wants 32 bytes at least).
SECRET = "benchmarks.proxy: not a secret, loopback only"
#: The namespaces: one the hub decides alone, one through the hooks.
PLAIN, HOOKED = "plain", "hooked"
#: The data of each publish and rpc.
DATA = text_payload(32).decode()
#: Seconds a reply may take before the client counts an error and stops.
REPLY_TIMEOUT = 15.0
#: Caps on what one measurement counts and keeps.
MAX_CALLS = 10**7
MAX_SAMPLES = 10**6
#: Seconds the whole run may wait for quiet cores, and how quiet: other
#: processes below this share of each core over 0.3 s.
QUIET_BUDGET = 60.0
QUIET = 0.15
#: A pair of measurements in which other processes took more than this
#: share of the cores in use is taken again (once per row).
MAX_FOREIGN = 0.15
#: A child process's longest life, in seconds.
MAX_CHILD_SECONDS = 900.0


@dataclass(frozen=True)
class Pair:
    """A command measured without its hook and through it."""

    key: str
    unit: str
    plain: str
    hooked: str


PAIRS = (
    Pair("connect", "connects/s", "with a token", "connect hook"),
    Pair("subscribe", "subscribes/s", "plain namespace", "subscribe hook"),
    Pair("publish", "publishes/s", "plain namespace", "publish hook"),
    Pair("rpc", "round trips/s", "ping (no hook)", "rpc hook"),
)


# -- the hub and the back end, each in a process of its own ----------------------


async def serve_hub(
    backend_port: int, proxy_timeout: float, max_in_flight: int
) -> None:
    """The hub with the back end's hooks; prints its ``ready`` line, ends
    with its stdin."""
    import tidings
    from tidings.hub import Hub, load_config

    base = f"http://127.0.0.1:{backend_port}"
    config = load_config(
        None,
        {},
        {
            "host": "127.0.0.1",
            "port": 0,
            "demo": False,
            "secret": SECRET,
            "namespaces": {
                PLAIN: {"allow_anonymous": True, "allow_publish": True},
                HOOKED: {"subscribe_proxy": True, "publish_proxy": True},
            },
            "proxy": {
                "connect": f"{base}/connect",
                "subscribe": f"{base}/subscribe",
                "publish": f"{base}/publish",
                "rpc": f"{base}/rpc",
                "timeout": proxy_timeout,
                "max_in_flight": max_in_flight,
            },
            # One client alone sends thousands of commands a second.
            "rate_limit": 1e9,
            "rate_burst": 10**9,
            "max_connections": None,
            "ping_interval": MAX_CHILD_SECONDS,
            "ping_timeout": MAX_CHILD_SECONDS,
        },
    )
    stop = stop_signal(MAX_CHILD_SECONDS, watch_stdin=True)
    async with Hub(config) as hub:
        ready(hub.port, version=tidings.__version__)
        await stop


async def serve_backend(fd: int) -> None:
    """benchmarks/proxy_app.py under uvicorn on the listening socket ``fd``;
    ends with its stdin."""
    import uvicorn

    from .proxy_app import app

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http="httptools",
            ws="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
    )
    stop = stop_signal(MAX_CHILD_SECONDS, watch_stdin=True)
    stop.add_done_callback(lambda _: setattr(server, "should_exit", True))
    # Not uvicorn's --fd, which takes any socket for a Unix one
    # (socket.fromfd(fd, AF_UNIX, ...)), so that its connections go without
    # TCP_NODELAY: every answer then waits 40 ms for a delayed ACK.
    await server.serve(sockets=[socket.socket(fileno=fd)])


class Children:
    """The back end and the hub, started and stopped by the run."""

    def __init__(
        self,
        cores: tuple[int, int] | None,
        timeout: float,
        max_in_flight: int,
        log: IO[str],
    ) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        backend_port = self.listener.getsockname()[1]
        hub_core, backend_core = cores if cores is not None else (None, None)
        # uvicorn takes the listening socket: calls wait in the kernel
        # until it accepts them, so there is nothing to wait for.
        self.backend = self._start(
            ["--role", "backend", "--fd", str(self.listener.fileno())],
            backend_core,
            log,
            pass_fds=(self.listener.fileno(),),
        )
        self.hub = self._start(
            ["--role", "hub", "--backend-port", str(backend_port)],
            hub_core,
            log,
            extra=[
                *("--proxy-timeout", str(timeout)),
                *("--max-in-flight", str(max_in_flight)),
            ],
        )
        self.port = ready_port(self.hub, "the hub")

    @staticmethod
    def _start(
        role: list[str],
        core: int | None,
        log: IO[str],
        *,
        extra: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[bytes]:
        pinned = [] if core is None else ["--cpu", str(core)]
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.proxy", *role, *pinned, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=ENV,
            cwd=ROOT,
            pass_fds=pass_fds,
        )

    def stop(self) -> None:
        for proc in (self.hub, self.backend):
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in (self.hub, self.backend):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()  # this process's own child, by its handle
                proc.wait(10)
        self.listener.close()


# -- the load client ------------------------------------------------------------


class Notes(Bench):
    """The harness's Bench, its notes on stderr (stdout is the report)."""

    def error(self, text: str) -> None:
        self.errors += 1
        if self.errors <= 3:
            print(f"  note: {text}", file=sys.stderr)


class HubClient(Conn):
    """A hub client on the harness's raw sockets, one command in flight:
    :meth:`call` sends a command and returns its reply."""

    def __init__(self, bench: Bench, hs: Handshake) -> None:
        super().__init__(bench, hs, None)
        self.buffer = b""
        self.next_id = 0
        self.waiting: tuple[int, asyncio.Future[dict[str, Any]]] | None = None

    def on_data(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                start = pos + 4
                length = int.from_bytes(buf[pos + 2 : start], "big")
            elif length == 127:
                start = pos + 10
                length = int.from_bytes(buf[pos + 2 : start], "big")
            end = start + length
            if end > size:
                break
            self.on_frame(buf[pos] & 0x0F, buf[start:end])
            pos = end
        self.buffer = buf[pos:]

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            message = json.loads(payload)
            waiting = self.waiting
            if "id" not in message:
                return  # a push
            if waiting is None or message["id"] != waiting[0]:
                self.bench.error(f"a reply to no command: {payload[:120]!r}")
            elif not waiting[1].done():
                self.waiting = None
                waiting[1].set_result(message)
        elif opcode == 0x9 and self.transport is not None:
            self.transport.write(build_frame(payload, 0xA, masked=True))
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self._fail(ConnectionError(f"the hub closed: {code} {payload[2:]!r}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._fail(ConnectionError(f"connection lost: {exc!r}"))

    def _fail(self, exc: Exception) -> None:
        if self.waiting is not None and not self.waiting[1].done():
            self.waiting[1].set_exception(exc)
        self.waiting = None

    async def call(self, command: bytes) -> dict[str, Any]:
        """Send ``command`` (JSON without its id: ``b',"op":...}'``) and
        return the reply."""
        if self.transport is None:
            raise ConnectionError("not connected")
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting = (self.next_id, future)
        text = b'{"id":%d' % self.next_id + command
        self.transport.write(build_frame(text, 0x1, masked=True))
        return await asyncio.wait_for(future, REPLY_TIMEOUT)

    def reset(self) -> None:
        """Close with a reset: no TIME_WAIT left on loopback's ports."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
        self.abort()


@dataclass
class Window:
    """What the workers of one measurement did while it was recording."""

    recording: bool = False
    stopping: bool = False
    count: int = 0
    latencies: list[int] = field(default_factory=list)  # ns
    errors: int = 0  # all of them, warm-up and drain included
    recorded_errors: int = 0  # while recording
    first_errors: list[str] = field(default_factory=list)

    def done(self, started: int) -> None:
        if self.recording:
            self.count += 1
            if len(self.latencies) < MAX_SAMPLES:
                self.latencies.append(time.perf_counter_ns() - started)
            if self.count >= MAX_CALLS:
                self.stopping = True

    def error(self, text: str) -> None:
        self.errors += 1
        self.recorded_errors += self.recording
        if len(self.first_errors) < 3:
            self.first_errors.append(text)


def _check(window: Window, reply: dict[str, Any], what: str) -> bool:
    if "result" in reply:
        return True
    window.error(f"{what}: {reply.get('error')}")
    return False


async def command_worker(
    conn: HubClient, command: bytes, then: bytes | None, window: Window
) -> None:
    """``command`` again and again, each timed, each followed by ``then``
    (untimed) if given."""
    try:
        while not window.stopping:
            started = time.perf_counter_ns()
            reply = await conn.call(command)
            if then is not None and reply.get("error", {}).get("code") == 409:
                # Subscribed already: by a subscribe whose reply came after
                # the measurement before had stopped waiting for it.
                _check(window, await conn.call(then), "follow-up")
                continue
            if not _check(window, reply, "command"):
                continue
            window.done(started)
            if then is not None:
                _check(window, await conn.call(then), "follow-up")
    except (ConnectionError, TimeoutError) as exc:
        window.error(repr(exc))


def _same(conn: HubClient) -> HubClient:
    return conn


async def connect_worker(
    port: int, source: str, command: bytes, window: Window, hs: Handshake
) -> None:
    """Open a WebSocket, connect (timed: the command, from send to reply),
    reset the connection; again."""
    loop = asyncio.get_running_loop()
    bench = Notes()
    while not window.stopping:
        conn = HubClient(bench, hs)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    functools.partial(_same, conn),
                    "127.0.0.1",
                    port,
                    local_addr=(source, 0),
                ),
                REPLY_TIMEOUT,
            )
            if not await asyncio.wait_for(conn.opened, REPLY_TIMEOUT):
                window.error("the handshake failed")
                return
            started = time.perf_counter_ns()
            if _check(window, await conn.call(command), "connect"):
                window.done(started)
        except (OSError, TimeoutError) as exc:
            window.error(repr(exc))
            return
        finally:
            conn.reset()


# -- the measurements -------------------------------------------------------------


@dataclass
class Measurement:
    rate: float
    p50_ms: float
    p99_ms: float
    hub_us: float  # CPU per call
    backend_us: float
    client_us: float
    foreign: float  # share of the cores in use that other processes took
    errors: int
    error_rate: float  # errors/s while recording


@dataclass
class Run:
    """The fixed parts of a run: the hub, where things run, how long."""

    port: int
    pids: tuple[int, int]  # hub, back end
    cores: tuple[int, int] | None
    token: str
    conns: list[HubClient]
    warmup: float
    #: Record until a call was counted (the quick form, on a slow machine).
    wait_for_one: bool = False
    #: Seconds the clients may take to finish their call in flight after a
    #: measurement (then it is cancelled, and counted as an error).
    drain: float = REPLY_TIMEOUT

    def busy_cores(self) -> tuple[int, ...]:
        return self.cores if self.cores is not None else tuple(core_times())


def quantile(sorted_ns: list[int], q: float) -> float:
    """The ``q`` quantile of sorted nanoseconds, in ms (nearest rank)."""
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


async def measure(
    run: Run,
    workers: Callable[[Window], list[Coroutine[Any, Any, None]]],
    seconds: float,
) -> Measurement:
    """One measurement: the workers run ``run.warmup`` seconds, then are
    counted for ``seconds`` (longer, until one call was counted, up to
    REPLY_TIMEOUT), then finish their call in flight."""
    window = Window()
    tasks = [asyncio.ensure_future(w) for w in workers(window)]
    await asyncio.sleep(run.warmup)
    hub_pid, backend_pid = run.pids
    cpu0 = (proc_cpu(hub_pid), proc_cpu(backend_pid), time.process_time())
    cores0, t0 = core_times(), time.perf_counter()
    window.recording = True
    await asyncio.sleep(seconds)
    # At least one call counted, on a machine however slow (within bounds).
    waited = 0.0
    while run.wait_for_one and not window.count and waited < REPLY_TIMEOUT:
        if all(task.done() for task in tasks):
            break
        await asyncio.sleep(0.01)
        waited += 0.01
    window.recording = False
    cpu1 = (proc_cpu(hub_pid), proc_cpu(backend_pid), time.process_time())
    cores1, t1 = core_times(), time.perf_counter()
    window.stopping = True
    _, pending = await asyncio.wait(tasks, timeout=run.drain)
    for task in pending:
        task.cancel()
    if pending:
        window.error(f"{len(pending)} clients did not finish")
    await asyncio.gather(*tasks, return_exceptions=True)
    for text in window.first_errors:
        print(f"  error: {text}", file=sys.stderr)
    wall = t1 - t0
    calls = window.count or math.nan
    used = [(b or 0.0) - (a or 0.0) for a, b in zip(cpu0, cpu1, strict=True)]
    busy = sum(busy_fraction(cores0, cores1, c) or 0.0 for c in run.busy_cores())
    latencies = sorted(window.latencies)
    return Measurement(
        rate=window.count / wall,
        p50_ms=quantile(latencies, 0.50),
        p99_ms=quantile(latencies, 0.99),
        hub_us=used[0] / calls * 1e6,
        backend_us=used[1] / calls * 1e6,
        client_us=used[2] / calls * 1e6,
        foreign=max(0.0, busy - sum(used) / wall),
        errors=window.errors,
        error_rate=window.recorded_errors / wall,
    )


def commands(pair: str, hooked: bool, i: int) -> tuple[bytes, bytes | None]:
    """Client ``i``'s command of a pair's side (without its id), and the
    command that follows it untimed, if any."""
    namespace = HOOKED if hooked else PLAIN
    if pair == "subscribe":
        channel = f'"{namespace}:s{i}"'.encode()
        return (
            b',"op":"subscribe","channel":%s}' % channel,
            b',"op":"unsubscribe","channel":%s}' % channel,
        )
    if pair == "publish":
        channel = f'"{namespace}:p{i}"'.encode()
        data = json.dumps(DATA).encode()
        return b',"op":"publish","channel":%s,"data":%s}' % (channel, data), None
    if hooked:
        data = json.dumps(DATA).encode()
        return b',"op":"rpc","method":"echo","data":%s}' % data, None
    return b',"op":"ping"}', None


def workers_for(
    run: Run, pair: str, hooked: bool, clients: int
) -> Callable[[Window], list[Coroutine[Any, Any, None]]]:
    """The workers of one side of a pair, at ``clients`` clients."""
    if pair == "connect":
        command = (
            b',"op":"connect"}'
            if hooked
            else b',"op":"connect","token":"%s"}' % run.token.encode()
        )
        src = sources(8)
        hs = Handshake("127.0.0.1", run.port, "/ws")
        return lambda window: [
            connect_worker(run.port, src[i % len(src)], command, window, hs)
            for i in range(clients)
        ]
    conns = run.conns[:clients]
    return lambda window: [
        command_worker(conn, *commands(pair, hooked, i), window)
        for i, conn in enumerate(conns)
    ]


async def open_clients(port: int, count: int, token: str) -> list[HubClient]:
    """``count`` clients connected with the token, 100 opening at a time."""
    loop = asyncio.get_running_loop()
    hs = Handshake("127.0.0.1", port, "/ws")
    bench = Notes()
    src = sources(8)
    turns = asyncio.Semaphore(100)
    command = b',"op":"connect","token":"%s"}' % token.encode()

    async def one(i: int) -> HubClient:
        async with turns:
            conn = HubClient(bench, hs)
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn, "127.0.0.1", port, local_addr=(src[i % len(src)], 0)
                ),
                REPLY_TIMEOUT,
            )
            if not await asyncio.wait_for(conn.opened, REPLY_TIMEOUT):
                raise SystemExit("a client's handshake failed")
            reply = await conn.call(command)
            if "result" not in reply:
                raise SystemExit(f"a client could not connect: {reply}")
            return conn

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def wait_quiet(run: Run, deadline: float) -> None:
    """Wait until other processes leave the cores in use below QUIET (over
    0.3 s), or until ``deadline`` (``time.monotonic()``)."""
    while time.monotonic() < deadline:
        hub0, backend0, cores0 = *map(proc_cpu, run.pids), core_times()
        time.sleep(0.3)
        hub1, backend1, cores1 = *map(proc_cpu, run.pids), core_times()
        ours = (hub1 or 0.0) - (hub0 or 0.0) + (backend1 or 0.0) - (backend0 or 0.0)
        busy = [busy_fraction(cores0, cores1, c) or 0.0 for c in run.busy_cores()]
        if max(busy) < QUIET or sum(busy) - ours / 0.3 < QUIET:
            return


async def probe(run: Run, pair: str) -> str:
    """One call through the hook of ``pair``, by one client, after the
    load: ``ok``, or what came back instead (an overloaded proxy may not
    answer again)."""
    try:
        if pair == "connect":
            loop = asyncio.get_running_loop()
            conn = HubClient(Notes(), Handshake("127.0.0.1", run.port, "/ws"))
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        functools.partial(_same, conn), "127.0.0.1", run.port
                    ),
                    REPLY_TIMEOUT,
                )
                if not await asyncio.wait_for(conn.opened, REPLY_TIMEOUT):
                    return "the handshake failed"
                reply = await conn.call(b',"op":"connect"}')
            finally:
                conn.reset()
        else:
            # A channel of its own: none of the load's calls touched it.
            reply = await run.conns[0].call(commands(pair, True, 10**6)[0])
    except (OSError, TimeoutError, ConnectionError) as exc:
        return repr(exc)
    if "result" in reply:
        return "ok"
    error = reply.get("error") or {}
    return f"error {error.get('code')}: {error.get('message')}"


async def measure_row(
    run: Run, pair: Pair, clients: int, seconds: float, args: Any
) -> dict[str, Any]:
    """The measurements of one row: ``args.repeat`` pairs, the sides
    alternating, a disturbed pair taken again once."""
    sides: dict[str, list[Measurement]] = {"plain": [], "hooked": []}
    retried = 0
    rep = 0
    while rep < args.repeat:
        # plain first, then hooked first, and so on: drift in the machine's
        # load falls on both.
        order = (False, True) if rep % 2 == 0 else (True, False)
        taken = {}
        for hooked in order:
            taken[hooked] = m = await measure(
                run, workers_for(run, pair.key, hooked, clients), seconds
            )
            print(
                f"{pair.key} x{clients} {'hooked' if hooked else 'plain'}:"
                f" {m.rate:,.0f}/s p50 {m.p50_ms:.2f} ms p99"
                f" {m.p99_ms:.2f} ms hub {m.hub_us:.0f} µs/call back end"
                f" {m.backend_us:.0f} µs/call, foreign {m.foreign:.0%},"
                f" errors {m.errors}",
                file=sys.stderr,
                flush=True,
            )
        foreign = max(m.foreign for m in taken.values())
        if foreign > MAX_FOREIGN and not retried and not args.quick:
            retried += 1
            print("  disturbed: taken again", file=sys.stderr)
            continue
        sides["plain"].append(taken[False])
        sides["hooked"].append(taken[True])
        rep += 1
    return {
        "pair": pair.key,
        "clients": clients,
        "seconds": seconds,
        "retried": retried,
        **{side: [m.__dict__ for m in ms] for side, ms in sides.items()},
    }


async def measure_all(
    cores: tuple[int, int] | None, args: Any, log: IO[str]
) -> dict[str, Any]:
    """Every row, each on a hub and a back end of its own (so that a row
    inherits nothing from the one before, an overloaded proxy included)."""
    from tidings.hub.auth import mint_token

    token = mint_token(SECRET, "bench", ttl=3600)
    quiet_until = time.monotonic() + args.quiet_budget
    rows: list[dict[str, Any]] = []
    for pair in PAIRS:
        if pair.key not in args.commands.split(","):
            continue
        for clients in args.clients:
            seconds = args.seconds if clients > 1 else args.single_seconds
            children = Children(cores, args.proxy_timeout, args.max_in_flight, log)
            conns: list[HubClient] = []
            try:
                # Clients that connect with the token and stay (the connect
                # rows open and reset their own connections).
                opened = 0 if pair.key == "connect" else clients
                conns = await open_clients(children.port, opened, token)
                pids = (children.hub.pid, children.backend.pid)
                run = Run(
                    children.port, pids, cores, token, conns, args.warmup, args.quick
                )
                # The hub answers every call within its proxy timeout, if
                # its loop keeps up.
                run.drain = min(REPLY_TIMEOUT, 2 * args.proxy_timeout + 1)
                wait_quiet(run, quiet_until)
                row = await measure_row(run, pair, clients, seconds, args)
                # The proxy's own answer to an overload: does it answer
                # again once the load is gone?
                await asyncio.sleep(0 if args.quick else 1.0)
                row["after"] = await probe(run, pair.key)
                row["hook_calls"] = await read_hook_calls(children.port)
                print(f"  after the load: {row['after']}", file=sys.stderr)
                rows.append(row)
            finally:
                for conn in conns:
                    conn.reset()
                # The loop sends the resets; else the hub, stopping, would
                # wait for the clients' close frames.
                await asyncio.sleep(0.1)
                children.stop()
    hook_calls: dict[str, int] = {}
    for row in rows:
        for name, count in row["hook_calls"].items():
            hook_calls[name] = hook_calls.get(name, 0) + count
    return {"rows": rows, "hook_calls": hook_calls}


async def read_hook_calls(port: int) -> dict[str, int]:
    """The hub's ``tidings_hook_calls_total``, by hook and outcome."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    raw = await asyncio.wait_for(reader.read(), REPLY_TIMEOUT)
    writer.close()
    calls = {}
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("tidings_hook_calls_total{"):
            labels, _, count = line.rpartition(" ")
            hook = labels.split('hook="', 1)[1].split('"', 1)[0]
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            calls[f"{hook} {outcome}"] = int(float(count))
    return calls


# -- the report -------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    """The median of the numbers that are not NaN (NaN: a measurement in
    which no call was answered), or NaN."""
    kept = [v for v in values if not math.isnan(v)]
    return float(statistics.median(kept)) if kept else math.nan


def spread(values: Sequence[float], fmt: str = ",.0f") -> str:
    """``median [min-max]``, NaNs left out; "—" when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return "—"
    med = statistics.median(kept)
    if len(kept) == 1:
        return format(med, fmt)
    return f"{med:{fmt}} [{min(kept):{fmt}}-{max(kept):{fmt}}]"


def _number(value: float, fmt: str) -> str:
    return "—" if math.isnan(value) else format(value, fmt)


def _after(answer: str) -> str:
    """The probe's answer, short: ``answers`` or ``no: 503``."""
    if answer == "ok":
        return "answers"
    code = answer.split(":", 1)[0].removeprefix("error ")
    return f"**no**: {code}"


def in_flight(clients: int) -> str:
    if clients == 1:
        return "1 client, 1 in flight"
    return f"{clients:,} clients, 1 in flight each ({clients:,} in all)"


def report(results: dict[str, Any], args: Any) -> str:
    pairs = {p.key: p for p in PAIRS}
    out = [
        f"Calls answered per second, median [min-max] of {args.repeat} "
        f"measurements of {args.seconds:g} s ({args.single_seconds:g} s at 1 "
        "client), the two sides alternating; errors/s: error replies (503: "
        "the hook did not answer within the hub's timeout), median:",
        "",
        "| command | in flight | without the hook | through the hook "
        "| through ÷ without | errors/s without / through "
        "| the hook 1 s after |",
        "|---|---|--:|--:|--:|--:|---|",
    ]
    for row in results["rows"]:
        pair = pairs[row["pair"]]
        plain = [m["rate"] for m in row["plain"]]
        hooked = [m["rate"] for m in row["hooked"]]
        ratios = [h / p for h, p in zip(hooked, plain, strict=True) if p > 0]
        errors = [
            _median([m["error_rate"] for m in row[side]])
            for side in ("plain", "hooked")
        ]
        out.append(
            f"| {pair.key} ({pair.unit}) | {in_flight(row['clients'])} "
            f"| {pair.plain}: {spread(plain)} | {pair.hooked}: {spread(hooked)} "
            f"| {spread(ratios, '.3f')}x "
            f"| {errors[0]:,.0f} / {errors[1]:,.0f} "
            f"| {_after(row['after'])} |"
        )
    out += [
        "",
        "Latency per command answered, at the client from send to reply (ms; "
        "each side's p50 and p99 are medians over the measurements; added: "
        "through minus without, per pair of measurements, median [min-max]):",
        "",
        "| command | in flight | p50 without | p50 through | added p50 "
        "| p99 without | p99 through | added p99 |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in results["rows"]:
        cells = []
        for q in ("p50_ms", "p99_ms"):
            plain = [m[q] for m in row["plain"]]
            hooked = [m[q] for m in row["hooked"]]
            added = [h - p for h, p in zip(hooked, plain, strict=True)]
            cells += [
                _number(_median(plain), ",.2f"),
                _number(_median(hooked), ",.2f"),
                spread(added, ",.2f"),
            ]
        out.append(
            f"| {row['pair']} | {in_flight(row['clients'])} | "
            + " | ".join(cells)
            + " |"
        )
    out += [
        "",
        "CPU per call answered (µs, medians): the hub without and through the "
        "hook, the back end per hooked call, the load client (which shares its "
        "core with the back end):",
        "",
        "| command | in flight | hub without | hub through | hub added "
        "| back end | load client without / through |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in results["rows"]:

        def med(side: str, key: str, row: dict[str, Any] = row) -> float:
            return _median([m[key] for m in row[side]])

        hub_plain, hub_hooked = med("plain", "hub_us"), med("hooked", "hub_us")
        out.append(
            f"| {row['pair']} | {in_flight(row['clients'])} "
            f"| {_number(hub_plain, ',.0f')} | {_number(hub_hooked, ',.0f')} "
            f"| {_number(hub_hooked - hub_plain, ',.0f')} "
            f"| {_number(med('hooked', 'backend_us'), ',.0f')} "
            f"| {_number(med('plain', 'client_us'), ',.0f')} "
            f"/ {_number(med('hooked', 'client_us'), ',.0f')} |"
        )
    measured = [
        (row, side, m)
        for row in results["rows"]
        for side in ("plain", "hooked")
        for m in row[side]
    ]
    foreign = [m["foreign"] for _, _, m in measured]
    disturbed = sorted(
        {
            f"{row['pair']} x{row['clients']:,} {side}"
            for row, side, m in measured
            if m["foreign"] > MAX_FOREIGN
        }
    )
    retried = [
        f"{r['pair']} x{r['clients']:,}" for r in results["rows"] if r["retried"]
    ]
    errors = sum(m["errors"] for _, _, m in measured)
    calls = ", ".join(f"{k} {v:,}" for k, v in sorted(results["hook_calls"].items()))
    stuck = [
        f"{r['pair']} x{r['clients']:,}: {r['after']}"
        for r in results["rows"]
        if r["after"] != "ok"
    ]
    out += [
        "",
        f"Other processes took {spread(foreign, '.0%')} of the cores in use "
        "per measurement (median [min-max]); pairs taken again for it: "
        f"{', '.join(retried) or 'none'}; measurements kept with more than "
        f"{MAX_FOREIGN:.0%}: {', '.join(disturbed) or 'none'}.",
        f"Error replies in all: {errors:,}. The hub's hook calls (/metrics): "
        f"{calls or 'none'}.",
        "Each row ran on a hub and a back end of its own; one call through "
        "the hook, 1 s after the row's last measurement, "
        + (
            "was answered in every row."
            if not stuck
            else f"was not answered in: {'; '.join(stuck)}."
        ),
    ]
    return "\n".join(out)


# -- the command ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.proxy", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--clients",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 1000],
        help="the loads, in clients with one command in flight each (1,1000)",
    )
    p.add_argument("--seconds", type=float, default=2.5, help="per measurement")
    p.add_argument(
        "--single-seconds", type=float, default=1.0, help="per measurement, 1 client"
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--commands",
        default=",".join(p.key for p in PAIRS),
        help="a subset of " + ",".join(p.key for p in PAIRS),
    )
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--quiet-budget", type=float, default=QUIET_BUDGET)
    p.add_argument(
        "--proxy-timeout", type=float, default=1.0, help="the hub's proxy.timeout"
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=256,
        help="the hub's proxy.max_in_flight",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--logs", type=Path, default=ROOT / ".bench" / "logs")
    p.add_argument(
        "--quick",
        action="store_true",
        help="20 clients, a moment per measurement: proves it works, measures nothing",
    )
    # The children: `--role hub` and `--role backend`.
    p.add_argument("--role", choices=["hub", "backend"], help=argparse.SUPPRESS)
    p.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    p.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--backend-port", type=int, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pin(args.cpu)
    raise_fd_limit()
    _, run = loop_runner("auto")
    if args.role == "hub":
        run(serve_hub(args.backend_port, args.proxy_timeout, args.max_in_flight))
        return 0
    if args.role == "backend":
        run(serve_backend(args.fd))
        return 0
    if args.quick:
        args.clients, args.seconds, args.single_seconds = [1, 20], 0.2, 0.1
        args.repeat, args.warmup, args.quiet_budget = 1, 0.05, 0.0
        # A slow machine must not make the quick form fail: 503s are errors.
        args.proxy_timeout = 10.0
    cores: tuple[int, int] | None = None
    allowed = (
        sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    )
    if len(allowed) >= 2:
        cores = (allowed[0], allowed[1])
    args.logs.mkdir(parents=True, exist_ok=True)
    # The load client shares the back end's core.
    pin(None if cores is None else cores[1])
    results: dict[str, Any] = {}
    with (args.logs / "proxy.log").open("w") as log:

        async def go() -> None:
            results.update(await measure_all(cores, args, log))

        run(go())
    results["meta"] = {
        "clients": args.clients,
        "seconds": args.seconds,
        "single_seconds": args.single_seconds,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "quick": args.quick,
        "cores": cores,
        "proxy_timeout": args.proxy_timeout,
        "max_in_flight": args.max_in_flight,
    }
    print(report(results, args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    failed = any(
        m["errors"]
        for row in results["rows"]
        for s in ("plain", "hooked")
        for m in row[s]
    ) or any(not key.endswith(" ok") for key in results["hook_calls"])
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
