"""The case for WebSocket, measured: 1,000 clients each receive one 100-byte
publication a second from one channel of the tidings hub, by short polling
(a request a second), long-polling, Server-Sent Events, and WebSocket (JSON,
and with permessage-deflate).

For each transport: bytes of TCP payload (HTTP heads and frame headers
included) per delivered message in each direction, requests a second at the
hub, hub CPU per delivered message, and publish-to-receive latency p50/p99.
The hub runs as ``tidings serve`` runs it (``benchmarks.harness.servers
tidings-hub``) on core 0; the clients, written here on raw sockets so that
every byte is counted, run on core 1. Loopback only; every run ends after
its ``--seconds``.

    .bench/venv/bin/python -m benchmarks.transports [--clients 1000]
        [--seconds 20] [--out docs/transports.md]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness._proc import servers_cpu
from .harness.loadgen import build_frame, pin, raise_fd_limit
from .harness.scenarios import HUB_CHANNEL
from .harness.servers import ready_port

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = 100  # bytes of each publication's data
TRANSPORTS = ("short-poll", "long-poll", "sse", "websocket", "websocket-deflate")
LABELS = {
    "short-poll": "short polling, 1 s",
    "long-poll": "long-polling",
    "sse": "Server-Sent Events",
    "websocket": "WebSocket, JSON",
    "websocket-deflate": "WebSocket, permessage-deflate",
}


@dataclass
class Tally:
    """What the clients of one transport sent, got and saw."""

    sent: int = 0  # bytes of TCP payload, client to hub
    received: int = 0  # and hub to client
    requests: int = 0  # HTTP requests (a WebSocket's upgrade counts one)
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)  # ms
    counting: bool = False

    def got(self, data: Any) -> None:
        if self.counting:
            self.delivered += 1
            self.latencies.append((time.time_ns() - data["t"]) / 1e6)


# -- plain HTTP, as the fallbacks use it ------------------------------------


async def http_get(port: int, target: str, tally: Tally) -> tuple[bytes, bytes]:
    """One GET on a new connection (the hub closes after each answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    writer.write(request)
    try:
        raw = await reader.read()
    finally:
        writer.close()
    if tally.counting:
        tally.sent += len(request)
        tally.received += len(raw)
        tally.requests += 1
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def poll_target(position: dict[str, Any] | None, timeout: float) -> str:
    target = f"/poll?channel={HUB_CHANNEL}&timeout={timeout}"
    if position is not None:
        target += f"&since={position['offset']}&epoch={position['epoch']}"
    return target


async def poller(port: int, tally: Tally, stop: asyncio.Event, hold: bool) -> None:
    """Long-polls (``hold``), or polls once a second without holding."""
    position = None
    loop = asyncio.get_running_loop()
    next_at = loop.time() + (hash(id(tally)) % 1000) / 1000
    while not stop.is_set():
        if not hold:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += 1.0
        _, body = await http_get(port, poll_target(position, 25 if hold else 0), tally)
        answer = json.loads(body)
        for publication in answer.get("publications", ()):
            tally.got(publication["data"])
        position = answer


async def sse_client(port: int, tally: Tally, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /sse?channel={HUB_CHANNEL} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    writer.write(request.encode())
    tally.requests += tally.counting
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                return
            if tally.counting:
                tally.received += len(line)
            if line.startswith(b"data: "):
                message = json.loads(line[6:])
                if "pub" in message:
                    tally.got(message["pub"]["data"])
    finally:
        writer.close()


# -- WebSocket -----------------------------------------------------------------


async def ws_client(
    port: int, tally: Tally, stop: asyncio.Event, deflate: bool
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    # Compressed once for every subscriber only without server context
    # takeover (RFC 7692 §7.1.1.1), so ask for that; a browser's plain
    # offer gets the pushes uncompressed.
    offer = (
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        if deflate
        else ""
    )
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{offer}\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    agreed = b"permessage-deflate" in head.lower()
    if deflate and not agreed:
        raise RuntimeError("the hub did not agree to permessage-deflate")
    takeover = b"server_no_context_takeover" not in head.lower()
    inflater = zlib.decompressobj(-15)
    for command in (
        {"id": 1, "op": "connect"},
        {"id": 2, "op": "subscribe", "channel": HUB_CHANNEL},
    ):
        writer.write(build_frame(json.dumps(command).encode(), 0x1, masked=True))
    try:
        while not stop.is_set():
            header = await reader.readexactly(2)
            length = header[1] & 0x7F
            extra = b""
            if length == 126:
                extra = await reader.readexactly(2)
                length = int.from_bytes(extra, "big")
            elif length == 127:
                extra = await reader.readexactly(8)
                length = int.from_bytes(extra, "big")
            payload = await reader.readexactly(length)
            if tally.counting:
                tally.received += 2 + len(extra) + length
            if header[0] & 0x40:  # RSV1: compressed (RFC 7692 §7.2.2)
                if not takeover:
                    inflater = zlib.decompressobj(-15)
                payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
            if header[0] & 0x0F == 0x1:
                message = json.loads(payload)
                if "pub" in message:
                    tally.got(message["pub"]["data"])
    finally:
        writer.close()


# -- the run ---------------------------------------------------------------------


async def publisher(port: int, stop: asyncio.Event) -> None:
    """One publication a second through the HTTP API; data of PAYLOAD bytes,
    as random as hex digits (a repeated letter would compress to nothing)."""
    pad = PAYLOAD - len('{"t":1234567890123456789,"p":""}')
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while not stop.is_set():
        body = json.dumps(
            {
                "channel": HUB_CHANNEL,
                "data": {"t": time.time_ns(), "p": secrets.token_hex(pad)[:pad]},
            }
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await reader.read()
        writer.close()
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def run_one(
    transport: str, port: int, pid: int, clients: int, seconds: float
) -> dict[str, Any]:
    tally = Tally()
    stop = asyncio.Event()
    factory: Callable[[], Awaitable[None]]
    if transport in ("short-poll", "long-poll"):
        hold = transport == "long-poll"
        factory = lambda: poller(port, tally, stop, hold)  # noqa: E731
    elif transport == "sse":
        factory = lambda: sse_client(port, tally, stop)  # noqa: E731
    else:
        deflate = transport == "websocket-deflate"
        factory = lambda: ws_client(port, tally, stop, deflate)  # noqa: E731
    tasks = []
    for _ in range(clients):
        tasks.append(asyncio.ensure_future(factory()))
        await asyncio.sleep(0.001)  # no SYN flood of our own making
    publishing = asyncio.ensure_future(publisher(port, stop))
    await asyncio.sleep(3)  # everyone connected, and a publication or two
    cpu0, t0 = servers_cpu([pid]), time.perf_counter()
    tally.counting = True
    await asyncio.sleep(seconds)
    tally.counting = False
    cpu1, t1 = servers_cpu([pid]), time.perf_counter()
    assert cpu0 is not None and cpu1 is not None, "the hub's CPU time is unreadable"
    stop.set()
    for task in tasks:
        task.cancel()
    publishing.cancel()
    await asyncio.gather(*tasks, publishing, return_exceptions=True)
    failed = [t for t in tasks if not t.cancelled() and t.exception() is not None]
    delivered = max(1, tally.delivered)
    latencies = sorted(tally.latencies) or [0.0]
    return {
        "transport": transport,
        "clients": clients,
        "seconds": round(t1 - t0, 2),
        "delivered": tally.delivered,
        "failed_clients": len(failed),
        "bytes_down_per_message": round(tally.received / delivered, 1),
        "bytes_up_per_message": round(tally.sent / delivered, 1),
        "requests_per_second": round(tally.requests / (t1 - t0), 1),
        "hub_cpu_us_per_message": round((cpu1 - cpu0) / delivered * 1e6, 1),
        "latency_p50_ms": round(statistics.median(latencies), 2),
        "latency_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
    }


def start_hub() -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    hub = subprocess.Popen(
        [
            *("taskset", "-c", "0", sys.executable),
            *("-m", "benchmarks.harness.servers", "tidings-hub", "hub"),
            "--watch-stdin",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    return hub, ready_port(hub, "the hub")


def table(results: list[dict[str, Any]]) -> str:
    ws = next(r for r in results if r["transport"] == "websocket")
    rows = [
        "| transport | bytes down / msg | bytes up / msg | requests/s at the hub "
        "| hub CPU / msg | vs WebSocket | latency p50 / p99 | delivered |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        ratio = r["hub_cpu_us_per_message"] / max(ws["hub_cpu_us_per_message"], 0.01)
        rows.append(
            f"| {LABELS[r['transport']]} | {r['bytes_down_per_message']:,.0f} "
            f"| {r['bytes_up_per_message']:,.0f} | {r['requests_per_second']:,.0f} "
            f"| {r['hub_cpu_us_per_message']:,.0f} µs | {ratio:.1f}x "
            f"| {r['latency_p50_ms']:,.1f} / {r['latency_p99_ms']:,.1f} ms "
            f"| {r['delivered']:,} |"
        )
    return "\n".join(rows)


def chart(results: list[dict[str, Any]], path: Path) -> None:
    # The benchmark's environment has matplotlib; the package does not.
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    labels = [LABELS[r["transport"]].replace(", ", ",\n") for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    down = [r["bytes_down_per_message"] for r in results]
    up = [r["bytes_up_per_message"] for r in results]
    axes[0].bar(labels, down, label="hub to client")
    axes[0].bar(labels, up, bottom=down, label="client to hub")
    axes[0].set_title("bytes on the wire per delivered 100 B message")
    axes[0].legend()
    axes[1].bar(labels, [r["hub_cpu_us_per_message"] for r in results])
    axes[1].set_title("hub CPU per delivered message (µs)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"{results[0]['clients']:,} clients, 1 publication/s of {PAYLOAD} B each "
        "(one channel), loopback"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--chart", type=Path, help="write the chart here (PNG)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    pin(1)
    results = []
    for transport in args.transports.split(","):
        hub, port = start_hub()
        try:
            result = asyncio.run(
                run_one(transport, port, hub.pid, args.clients, args.seconds)
            )
        finally:
            assert hub.stdin is not None
            hub.stdin.close()
            hub.wait(30)
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.chart is not None:
        chart(results, args.chart)


if __name__ == "__main__":
    main()
