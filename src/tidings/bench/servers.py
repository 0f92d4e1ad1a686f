"""The benchmark's servers: one echo and one broadcast server per library.

Each runs as its own process (``python -m tidings.bench.servers NAME MODE``),
pinned to one core, on uvloop where the library runs on it (all of them
do), with compression and keepalive pings off and a 16 MiB message limit.
When it listens it prints one JSON line on stdout (``"event": "ready"``,
with the port, the loop and the versions); it stops on SIGTERM, at the end
of its stdin, or after ``--max-seconds``.

Broadcast: the first message any client sends is sent on to every connected
client, the sender included; so is every later one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

MAX_SIZE = 16 * 1024 * 1024
BACKLOG = 1024

#: Names of the servers, in the order they appear in reports.
SERVERS = ("tidings-cb", "tidings-async", "websockets", "aiohttp", "picows")

#: The module each server needs, beyond tidings.
REQUIRES = {
    "tidings-cb": "tidings",
    "tidings-async": "tidings",
    "websockets": "websockets",
    "aiohttp": "aiohttp",
    "picows": "picows",
}

Info = dict[str, Any]
ServerMain = Callable[[str, str, int, "asyncio.Future[None]"], Awaitable[None]]


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


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


# -- process -------------------------------------------------------------

MAINS: dict[str, Callable[..., Awaitable[None]]] = {
    "tidings-cb": tidings_server,
    "tidings-async": tidings_server,
    "websockets": websockets_server,
    "aiohttp": aiohttp_server,
    "picows": picows_server,
}


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def _serve(args: argparse.Namespace) -> None:
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

    if args.watch_stdin:
        loop.add_reader(0, stdin_readable)
    loop.call_later(args.max_seconds, stop_now)
    await MAINS[args.server](args.server, args.mode, args.host, args.port, stop)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tidings.bench.servers")
    p.add_argument("server", choices=SERVERS)
    p.add_argument("mode", choices=["echo", "broadcast"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cpu", type=int)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=900.0)
    p.add_argument("--loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    p.add_argument("--watch-stdin", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .loadgen import loop_runner, pin, raise_fd_limit

    args = build_parser().parse_args(argv)
    pin(args.cpu, args.nice)
    raise_fd_limit()
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
