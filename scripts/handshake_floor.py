#!/usr/bin/env python3
"""The floor under any WebSocket server on uvloop's transports, for
connections opened and closed: a server that does nothing but the handshake
(it finds the key with ``bytes.find``, writes a fixed 101 and answers the
close frame), measured beside servers of ``benchmarks.harness.servers``.

Each server in turn, ``--rounds`` times, runs alone on core 0 under the
harness's load client on core 1, as in the ``handshake-64`` row (64
connections at a time, 8 source addresses, one 3 s window). Printed per
measurement: connections per second and the server's user + system CPU per
connection, in µs.

Usage, from the repository root, with the harness's environment:

    .bench/venv/bin/python scripts/handshake_floor.py [SERVER ...] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness, from a script

from benchmarks.harness.servers import ready_port  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = b"Sec-WebSocket-Key: "
SERVER_CORE, CLIENT_CORE = 0, 1


class Floor(asyncio.Protocol):
    """Just enough of a server for a client that opens and closes."""

    transport: asyncio.Transport
    opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.opened:
            start = data.find(KEY) + len(KEY)
            key = data[start : data.index(b"\r\n", start)]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.opened = True
        elif data[:1] == b"\x88":
            self.transport.write(b"\x88\x02\x03\xe8")
            self.transport.close()


async def serve_floor(seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Floor, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "ready", "port": port}), flush=True)
    await asyncio.sleep(seconds)


def start(name: str) -> tuple[subprocess.Popen[bytes], int]:
    if name == "floor":
        argv = [sys.executable, __file__, "--serve-floor"]
    else:
        argv = [sys.executable, "-m", "benchmarks.harness.servers", name, "echo"]
        argv += ["--max-seconds", "60"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    os.sched_setaffinity(proc.pid, {SERVER_CORE})
    return proc, ready_port(proc, name)


def measure(name: str) -> tuple[float, float, float]:
    """Connections/s, user µs and system µs per connection."""
    server, port = start(name)
    try:
        out = subprocess.run(
            [
                *(sys.executable, "-m", "benchmarks.harness.loadgen", "handshake"),
                *("--port", str(port), "--conns", "64", "--sources", "8"),
                *("--duration", "3", "--repeat", "1", "--warmup", "0.5"),
                *("--server-pid", str(server.pid), "--server-core", str(SERVER_CORE)),
                *("--cpu", str(CLIENT_CORE)),
            ],
            capture_output=True,
            check=True,
            cwd=ROOT,
            timeout=60,
        ).stdout
    finally:
        server.terminate()
        server.wait(10)
    for line in out.splitlines():
        event = json.loads(line)
        if event.get("event") == "window":
            rate = event["count"] / event["seconds"]
            system = event["server_system"]
            user = event["server_cpu"] - system
            return rate, user / rate * 1e6, system / rate * 1e6
    raise SystemExit(f"no measurement against {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("servers", nargs="*", default=["tidings-cb", "picows"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        import uvloop

        uvloop.run(serve_floor(60))
        return
    results: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(args.rounds):
        for name in ["floor", *args.servers]:
            rate, user, system = measure(name)
            results.setdefault(name, []).append((rate, user, system))
            print(f"{name}: {rate:,.0f} conns/s, {user:.1f} + {system:.1f} µs")
    print("medians: conns/s, user + system µs per connection")
    for name, rows in results.items():
        rate, user, system = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"  {name}: {rate:,.0f}, {user:.1f} + {system:.1f}")


if __name__ == "__main__":
    main()
