"""The server's CPU per delivery of the engine's fan-out loop, one publication
per loop turn (issue 24: where every publication is its own write to each
subscriber).

A server in this process on uvloop holds ``--subscribers`` WebSockets whose
clients, in a child process, only read and discard what comes; the server
calls ``broadcast_many`` with one 100-byte message, then lets its loop turn,
``--publications`` times, and the process's user and system time is read
around them: microseconds per delivery, the least of ``--runs`` runs, since
other processes only ever add to it. ``--twin Python`` runs the loop's
Python twin instead of its compiled one; ``--deflate`` has the clients offer
permessage-deflate and the server compress each message alone.

    .venv/bin/python -m benchmarks.fanout_cpu [--subscribers 1000]
        [--publications 3000] [--runs 3] [--twin C|Python] [--deflate]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
from dataclasses import dataclass

import uvloop

import tidings
from tidings.engine import broadcast as broadcast_module
from tidings.protocol import DeflateConfig

#: Publications before the measurement: buffers and caches settle.
WARMUP = 200
#: Bounds the set-up, should a client or the server stop answering.
TIMEOUT = 60.0

#: The clients: connect, upgrade, print "ready", then read and discard
#: until the server goes away or the parent ends them.
_READER = r"""
import base64, os, selectors, socket, sys
count, port, deflate = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
offer = ("Sec-WebSocket-Extensions: permessage-deflate; "
         "client_max_window_bits\r\n") if deflate else ""
selector = selectors.DefaultSelector()
for _ in range(count):
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{offer}\r\n").encode())
    if not sock.recv(4096).startswith(b"HTTP/1.1 101"):
        sys.exit("not upgraded")
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        try:
            if not key.fileobj.recv(1 << 16):
                sys.exit(0)
        except BlockingIOError:
            pass
"""


@dataclass
class Figures:
    """One run: server µs per delivery, and how many were written."""

    user: float
    system: float
    delivered: int


async def measure(subscribers: int, publications: int, deflate: bool) -> Figures:
    """Fan ``publications`` out to ``subscribers`` clients, one per loop turn."""
    opened = asyncio.Event()
    conns: list[tidings.WebSocket] = []

    async def hold(ws: tidings.WebSocket) -> None:
        conns.append(ws)
        if len(conns) == subscribers:
            opened.set()
        await ws.wait_closed()

    compression = (
        DeflateConfig(server_no_context_takeover=True, min_size=0) if deflate else None
    )
    async with tidings.serve(hold, "127.0.0.1", 0, compression=compression) as server:
        reader = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _READER,
            str(subscribers),
            str(server.port),
            "1" if deflate else "0",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert reader.stdout is not None
            async with asyncio.timeout(TIMEOUT):
                if await reader.stdout.readline() != b"ready\n":
                    raise RuntimeError("the clients did not connect")
                await opened.wait()
            message = [b"x" * 100]
            for _ in range(WARMUP):
                broadcast_module.broadcast_many(conns, message)
                await asyncio.sleep(0)
            before = resource.getrusage(resource.RUSAGE_SELF)
            delivered = 0
            for _ in range(publications):
                delivered += broadcast_module.broadcast_many(conns, message)
                await asyncio.sleep(0)
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            reader.kill()
            await reader.wait()
    per = 1e6 / max(delivered, 1)
    return Figures(
        (after.ru_utime - before.ru_utime) * per,
        (after.ru_stime - before.ru_stime) * per,
        delivered,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publications", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--twin", choices=["C", "Python"], default="C")
    parser.add_argument("--deflate", action="store_true")
    args = parser.parse_args()
    if args.twin == "Python":
        broadcast_module.write_plain = broadcast_module._py_write_plain
    elif broadcast_module.write_plain is broadcast_module._py_write_plain:
        raise SystemExit("tidings.engine._fanout was not built, or speedups are off")
    runs = [
        uvloop.run(measure(args.subscribers, args.publications, args.deflate))
        for _ in range(args.runs)
    ]
    best = min(runs, key=lambda run: run.user + run.system)
    print(
        f"{args.twin} twin, {args.subscribers} subscribers"
        f"{', deflate' if args.deflate else ''}: user {best.user:.3f} + system "
        f"{best.system:.3f} µs per delivery (least of {args.runs} runs; "
        f"{best.delivered} deliveries in it)"
    )


if __name__ == "__main__":
    main()
