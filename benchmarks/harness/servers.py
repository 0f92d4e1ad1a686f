"""The benchmark's servers: one echo and one broadcast server per library.

Each runs as its own process (``python -m benchmarks.harness.servers NAME MODE``),
pinned to one core, on uvloop where the library runs on it (all of them
do), with compression and keepalive pings off and a 16 MiB message limit.
When it listens it prints one JSON line on stdout (``"event": "ready"``,
with the port, the loop and the versions); it stops on SIGTERM, at the end
of its stdin, or after ``--max-seconds``.

Broadcast: the first message any client sends is sent on to every connected
client, the sender included; so is every later one.

Hub (mode ``hub``, servers ``tidings-hub`` and ``socketio``): clients
subscribe to a channel (join a room) and publish to it; every subscriber,
the publisher included, receives each publication. A ``burst`` (tidings:
the ``rpc`` method ``burst``; socket.io: the event) makes the server
publish ``count`` publications itself, one at a time, each awaited; the
tidings hub also answers ``POST /api/publish``.

With ``--deflate`` (the tidings hub, Bun and Node's Socket.IO) the hub
agrees to permessage-deflate when a client offers it and compresses its
publications; the tidings hub always does, as ``tidings serve``.

Keepalive pings are pushed out past any run (the hub cannot turn them
off). With ``--redis URL`` the process is one node of a hub on that Redis:
the tidings hub with its Redis broker, python-socketio with its
``AsyncRedisManager``; the runner starts several such processes on one
Redis.

The npm peers (``bun``, ``bun-hub``, ``node-ws``, ``node-socketio``:
:mod:`.peers`) are the same command: this process pins itself, then execs
Bun or Node.js, which speak the same protocols and print the same line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import peers
from .peers import PEERS
from .scenarios import DEFLATE_SERVERS, HUB_CHANNEL, HUB_ROOM

MAX_SIZE = 16 * 1024 * 1024
BACKLOG = 1024

#: Names of the servers, in the order they appear in reports.
SERVERS = (
    "tidings-cb",
    "tidings-async",
    "websockets",
    "aiohttp",
    "picows",
    "tidings-hub",
    "socketio",
    *PEERS,
)

#: Hub servers: mode ``hub`` only, which the others don't serve.
HUB_SERVERS = ("tidings-hub", "socketio", "bun-hub", "node-socketio")

#: The module each server needs, beyond tidings.
REQUIRES = {
    "tidings-cb": "tidings",
    "tidings-async": "tidings",
    "websockets": "websockets",
    "aiohttp": "aiohttp",
    "picows": "picows",
    "tidings-hub": "tidings",
    "socketio": "socketio",
}

#: Most publications one ``burst`` asks for.
MAX_BURST = 1_000_000

#: Seconds between keepalive pings of the hub servers: longer than any run.
HUB_PING_INTERVAL = 900.0

Info = dict[str, Any]
ServerMain = Callable[[str, str, int, "asyncio.Future[None]"], Awaitable[None]]


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def ready_port(server: subprocess.Popen[bytes], name: str) -> int:
    """The port that a server started with ``stdout=PIPE`` names in its
    ``ready`` line; SystemExit if it ends without one."""
    assert server.stdout is not None
    for line in server.stdout:
        event = json.loads(line)
        if event.get("event") == "ready":
            return int(event["port"])
    raise SystemExit(f"{name} did not start")


def version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "?"


def ready(port: int, **info: Any) -> None:
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    emit(event="ready", port=port, pid=os.getpid(), fds=fds, **info)


# -- tidings -------------------------------------------------------------


def _tidings_broadcaster() -> tuple[str, Callable[[Any, Any], None]]:
    """``tidings.broadcast`` if this tidings has it, else a loop."""
    import tidings
    from tidings.protocol import State

    bcast = getattr(tidings, "broadcast", None)
    if bcast is not None:
        return "tidings.broadcast", bcast

    def loop(connections: Any, message: Any) -> None:
        for ws in connections:
            if ws.state is State.OPEN:
                ws.send_nowait(message)

    return "ws.send_nowait() loop (tidings.broadcast not present)", loop


def _tidings_core() -> str:
    """Which protocol core runs: compiled speedups or pure Python."""
    try:
        speedups = importlib.import_module("tidings.protocol.speedups")
    except ImportError:
        return "pure Python"
    return "C speedups" if speedups.implementation() == "C" else "pure Python"


async def tidings_server(
    name: str, mode: str, host: str, port: int, stop: asyncio.Future[None]
) -> None:
    import tidings

    options: dict[str, Any] = {
        "compression": None,
        "ping_interval": None,
        "max_message_size": MAX_SIZE,
        "backlog": BACKLOG,
    }
    info: Info = {
        "version": tidings.__version__,
        "loop": _loop_name(),
        "core": _tidings_core(),
    }
    server: Any = None
    if mode == "echo" and name == "tidings-cb":
        server = tidings.serve(
            None, host, port, on_message=lambda ws, m: ws.send_nowait(m), **options
        )
        info["api"] = "on_message callback, send_nowait"
    elif mode == "echo":

        async def echo(ws: Any) -> None:
            async for message in ws:
                await ws.send(message)

        server = tidings.serve(echo, host, port, **options)
        info["api"] = "async handler, async for / await send"
    else:
        how, bcast = _tidings_broadcaster()
        info["broadcast"] = how
        if name == "tidings-cb":

            def on_message(ws: Any, message: Any) -> None:
                bcast(server.connections, message)

            server = tidings.serve(None, host, port, on_message=on_message, **options)
        else:

            async def relay(ws: Any) -> None:
                async for message in ws:
                    bcast(server.connections, message)

            server = tidings.serve(relay, host, port, **options)
    async with server:
        ready(server.port, **info)
        await stop


# -- websockets ----------------------------------------------------------


async def websockets_server(
    name: str, mode: str, host: str, port: int, stop: asyncio.Future[None]
) -> None:
    server_mod = importlib.import_module("websockets.asyncio.server")
    connections: set[Any] = set()
    broadcast = server_mod.broadcast

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def relay(ws: Any) -> None:
        connections.add(ws)
        try:
            async for message in ws:
                broadcast(connections, message)
        finally:
            connections.discard(ws)

    async with server_mod.serve(
        echo if mode == "echo" else relay,
        host,
        port,
        compression=None,
        ping_interval=None,
        max_size=MAX_SIZE,
        backlog=BACKLOG,
    ) as server:
        info: Info = {"version": version("websockets"), "loop": _loop_name()}
        if mode == "broadcast":
            info["broadcast"] = "websockets.broadcast"
        ready(server.sockets[0].getsockname()[1], **info)
        await stop


# -- aiohttp -------------------------------------------------------------


async def aiohttp_server(
    name: str, mode: str, host: str, port: int, stop: asyncio.Future[None]
) -> None:
    web = importlib.import_module("aiohttp.web")
    aiohttp = importlib.import_module("aiohttp")
    text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
    connections: set[Any] = set()

    async def handle(request: Any) -> Any:
        ws = web.WebSocketResponse(
            compress=False, heartbeat=None, max_msg_size=MAX_SIZE
        )
        await ws.prepare(request)
        if mode == "echo":
            async for msg in ws:
                if msg.type is binary:
                    await ws.send_bytes(msg.data)
                elif msg.type is text:
                    await ws.send_str(msg.data)
            return ws
        connections.add(ws)
        try:
            async for msg in ws:
                if msg.type is binary:
                    for peer in list(connections):
                        if not peer.closed:
                            await peer.send_bytes(msg.data)
        finally:
            connections.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG)
    await site.start()
    try:
        sock = site._server.sockets[0]
        info: Info = {"version": version("aiohttp"), "loop": _loop_name()}
        if mode == "broadcast":
            info["broadcast"] = "await ws.send_bytes() loop (aiohttp has no broadcast)"
        ready(sock.getsockname()[1], **info)
        await stop
    finally:
        await runner.cleanup()


# -- picows --------------------------------------------------------------


async def picows_server(
    name: str, mode: str, host: str, port: int, stop: asyncio.Future[None]
) -> None:
    picows = importlib.import_module("picows")
    close, binary = picows.WSMsgType.CLOSE, picows.WSMsgType.BINARY
    transports: set[Any] = set()
    base: Any = picows.WSListener

    class Echo(base):  # type: ignore[misc]
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type is close:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            else:
                transport.send(frame.msg_type, frame.get_payload_as_memoryview())

    class Relay(base):  # type: ignore[misc]
        def on_ws_connected(self, transport: Any) -> None:
            transports.add(transport)

        def on_ws_disconnected(self, transport: Any) -> None:
            transports.discard(transport)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type is close:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif frame.msg_type is binary:
                payload = frame.get_payload_as_bytes()
                for peer in transports:
                    peer.send(binary, payload)

    listener = Echo if mode == "echo" else Relay
    server = await picows.ws_create_server(
        lambda request: listener(),
        host,
        port,
        max_frame_size=MAX_SIZE,
        backlog=BACKLOG,
    )
    info: Info = {"version": version("picows"), "loop": _loop_name()}
    if mode == "broadcast":
        info["broadcast"] = "transport.send() loop (picows has no broadcast)"
    try:
        ready(server.sockets[0].getsockname()[1], **info)
        await stop
    finally:
        server.close()


# -- hubs ----------------------------------------------------------------


def hub_config(host: str = "127.0.0.1", port: int = 0, redis: str | None = None) -> Any:
    """The hub's configuration in the hub rows, as ``tidings serve`` would
    load it, with one namespace for the benchmark; with ``redis``, one node
    of a hub on that Redis (``--broker redis://...``)."""
    from tidings.hub import load_config

    namespace = HUB_CHANNEL.partition(":")[0]
    options = {
        "allow_anonymous": True,
        "allow_publish": True,
        # As the demo's chat namespace: publications are kept for recovery.
        "history_size": 100,
        "history_ttl": 3600,
    }
    return load_config(
        None,
        {},
        {
            "host": host,
            "port": port,
            "demo": False,
            "namespaces": {namespace: options},
            # One client publishes for all: far more than 100 commands/s.
            "rate_limit": 1e9,
            "rate_burst": 10**9,
            # 10,000 subscribers and the publisher: past the default cap.
            "max_connections": None,
            "ping_interval": HUB_PING_INTERVAL,
            "ping_timeout": HUB_PING_INTERVAL,
            "broker": redis or "memory",
            # The rpc hook below may publish for as long as a burst lasts.
            "proxy": {"timeout": HUB_PING_INTERVAL},
        },
    )


def hub_text(config: Any, broker: str) -> str:
    """What the hub rows' hub is, for the report."""
    namespace = next(iter(config.namespaces))
    return (
        f"tidings.hub.Hub as `tidings serve` runs it, {broker}; namespace "
        f"`{namespace}`: anonymous clients, client publish, history 100 for "
        "1 h, presence off; rate limit lifted for the publisher; max outbound "
        f"{config.max_outbound // 1024} KiB per client"
    )


async def tidings_hub_server(
    name: str,
    mode: str,
    host: str,
    port: int,
    stop: asyncio.Future[None],
    *,
    redis: str | None = None,
) -> None:
    """The hub as ``tidings serve`` runs it (``Hub(load_config(...))``),
    with one namespace for the benchmark; with ``redis``, one node of a hub
    on that Redis (``--broker redis://...``)."""
    import tidings
    from tidings.hub import Hub

    config = hub_config(host, port, redis)
    broker = (
        "memory broker"
        if redis is None
        else "Redis broker (`tidings serve --broker redis://...`: one node of "
        "several on one Redis; redis-py "
        f"{version('redis')}, hiredis {version('hiredis')})"
    )
    info: Info = {
        "version": tidings.__version__,
        "loop": _loop_name(),
        "core": _tidings_core(),
        "hub": hub_text(config, broker)
        + "; a burst is the rpc hook `await hub.publish(channel, data)` in a "
        "loop; POST /api/publish on the same port, no API key (loopback)",
    }
    hub = Hub(config)

    @hub.on_rpc
    async def burst(context: Any) -> int:
        """``rpc`` ``burst`` ``{"count": n, "data": d}``: publish ``d`` to
        the benchmark's channel ``n`` times, one at a time, each awaited."""
        if context.method != "burst" or not isinstance(context.data, dict):
            raise ValueError(f"unknown rpc {context.method!r}")
        count = context.data.get("count")
        if not isinstance(count, int) or not 0 < count <= MAX_BURST:
            raise ValueError(f"burst: count must be 1 to {MAX_BURST}")
        for _ in range(count):
            await hub.publish(HUB_CHANNEL, context.data.get("data"))
        return count

    async with hub:
        if redis is not None and not hub.broker.status().get("ok"):
            raise RuntimeError(f"the hub cannot reach redis: {hub.broker.status()}")
        ready(hub.port, **info)
        await stop


def socketio_hub(redis: str | None = None) -> tuple[Any, Any]:
    """python-socketio's ``AsyncServer`` of the hub rows, and its Redis
    manager (None without ``redis``): ``join`` enters the room and acks,
    ``publish`` emits to the room, the sender included, and ``burst``
    emits ``count`` times, one emit awaited after another."""
    socketio = importlib.import_module("socketio")
    options: dict[str, Any] = {}
    manager: Any = None
    if redis is not None:
        manager = socketio.AsyncRedisManager(redis)
        options["client_manager"] = manager
    sio = socketio.AsyncServer(
        async_mode="asgi",
        transports=["websocket"],
        ping_interval=HUB_PING_INTERVAL,
        ping_timeout=HUB_PING_INTERVAL,
        max_http_buffer_size=MAX_SIZE,
        **options,
    )

    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True  # the ack tells the client it is in

    async def publish(sid: str, room: str, data: Any) -> None:
        await sio.emit("msg", data, room=room)

    async def burst(sid: str, room: str, count: int, data: Any) -> None:
        if not isinstance(count, int) or not 0 < count <= MAX_BURST:
            await sio.disconnect(sid)
            return
        for _ in range(count):
            await sio.emit("msg", data, room=room)

    sio.on("join", join)
    sio.on("publish", publish)
    sio.on("burst", burst)
    return sio, manager


async def socketio_server(
    name: str,
    mode: str,
    host: str,
    port: int,
    stop: asyncio.Future[None],
    *,
    redis: str | None = None,
) -> None:
    """python-socketio's AsyncServer (ASGI) under uvicorn, on this loop;
    with ``redis``, one node of several sharing rooms through that Redis
    (``socketio.AsyncRedisManager``)."""
    socketio = importlib.import_module("socketio")
    uvicorn = importlib.import_module("uvicorn")
    sio, manager = socketio_hub(redis)
    if manager is not None:
        await _socketio_listening(sio, manager)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        socketio.ASGIApp(sio),
        loop="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        ws_max_size=MAX_SIZE,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_per_message_deflate=False,
        backlog=BACKLOG,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        if loop.time() > deadline:
            raise RuntimeError("uvicorn did not start within 30 s")
        await asyncio.sleep(0.01)
    info: Info = {
        "version": version("python-socketio"),
        "loop": _loop_name(),
        "hub": (
            f"python-socketio {version('python-socketio')} (python-engineio "
            f"{version('python-engineio')}) AsyncServer(async_mode='asgi', "
            f"transports=['websocket']) under uvicorn {version('uvicorn')} "
            f"({config.ws_protocol_class.__name__}, "
            f"{config.http_protocol_class.__name__}); `join` enters the room "
            "and acks, `publish` does `await sio.emit('msg', data, room=room)`, "
            "the sender included; `burst` does as much `count` times, each awaited"
            + (
                ""
                if redis is None
                else "; client_manager=socketio.AsyncRedisManager(url): one node "
                f"of several on one Redis (redis-py {version('redis')}, hiredis "
                f"{version('hiredis')}), its listener subscribed before the node "
                "says it is ready"
            )
        ),
    }
    try:
        ready(sock.getsockname()[1], **info)
        await stop
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def _socketio_listening(sio: Any, manager: Any) -> None:
    """Start the Redis listener now, not at the first client (as
    python-socketio does), and wait until it is subscribed: a publication
    from another node never finds this one deaf."""
    sio.manager_initialized = True
    manager.initialize()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (manager.pubsub is not None and manager.pubsub.subscribed):
        if loop.time() > deadline:
            raise RuntimeError("AsyncRedisManager did not subscribe within 30 s")
        await asyncio.sleep(0.01)


# -- process -------------------------------------------------------------

MAINS: dict[str, Callable[..., Awaitable[None]]] = {
    "tidings-cb": tidings_server,
    "tidings-async": tidings_server,
    "websockets": websockets_server,
    "aiohttp": aiohttp_server,
    "picows": picows_server,
    "tidings-hub": tidings_hub_server,
    "socketio": socketio_server,
}


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def stop_signal(max_seconds: float, *, watch_stdin: bool) -> asyncio.Future[None]:
    """A future done after ``max_seconds``, or when stdin closes (the
    runner that started this process is gone) if ``watch_stdin``."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def stop_now() -> None:
        if not stop.done():
            stop.set_result(None)

    def stdin_readable() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop_now()

    if watch_stdin:
        loop.add_reader(0, stdin_readable)
    loop.call_later(max_seconds, stop_now)
    return stop


async def _serve(args: argparse.Namespace) -> None:
    if (args.server in HUB_SERVERS) != (args.mode == "hub"):
        raise ValueError(f"{args.server} does not serve mode {args.mode}")
    stop = stop_signal(args.max_seconds, watch_stdin=args.watch_stdin)
    main = MAINS[args.server]
    if args.redis is not None:
        if args.server not in HUB_SERVERS:
            raise ValueError(f"{args.server} has no Redis mode")
        main = functools.partial(main, redis=args.redis)
    await main(args.server, args.mode, args.host, args.port, stop)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness.servers")
    p.add_argument("server", choices=SERVERS)
    p.add_argument("mode", choices=["echo", "broadcast", "hub"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cpu", type=int)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    p.add_argument("--watch-stdin", action="store_true")
    p.add_argument(
        "--redis",
        metavar="URL",
        help="hub servers: be one node of a hub on this Redis (redis://...)",
    )
    p.add_argument(
        "--deflate",
        action="store_true",
        help=f"{', '.join(DEFLATE_SERVERS)}: agree to permessage-deflate when "
        "a client offers it, and compress publications (the tidings hub "
        "always does)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .loadgen import loop_runner, pin, raise_fd_limit

    args = build_parser().parse_args(argv)
    if args.deflate and args.server not in DEFLATE_SERVERS:
        raise SystemExit(f"{args.server} has no deflate mode")
    pin(args.cpu, args.nice)
    raise_fd_limit()
    if args.server in PEERS:
        # Pinned, with the raised limit: both outlive exec, as does the pid.
        peer = peers.command(
            args.server,
            args.mode,
            host=args.host,
            port=args.port,
            room=HUB_ROOM,
            max_seconds=args.max_seconds,
            watch_stdin=args.watch_stdin,
            redis=args.redis,
            deflate=args.deflate,
        )
        sys.stdout.flush()
        os.execv(peer[0], peer)
    _, run = loop_runner(args.loop)
    try:
        run(_serve(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        emit(event="error", text=f"{type(exc).__name__}: {exc}")
        raise
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
