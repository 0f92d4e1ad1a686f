"""Three hub nodes on a Redis Cluster of three masters against the same
three nodes on one ``redis-server``: publications spread over 1,000
channels, and the CPU each Redis process used for them.

Each backend in turn: three ``tidings serve`` processes on it (the cluster
through ``--broker redis+cluster://...``, its sharded pub/sub), ``--subscribers``
WebSocket connections spread over the nodes, together subscribed to every
channel on every node (each connection to ``channels * 3 / subscribers``
channels), and ``--publishers`` connections spread over the nodes, each
keeping ``--in-flight`` publishes in flight (the next one sent as each is
acknowledged), on the channels in turn. After ``--warmup`` seconds, for
``--seconds`` seconds: publications acknowledged per second, deliveries
per second, and the CPU seconds per second of wall time of each Redis
process (user + system, from /proc) and of the hub nodes together. Every
loop is bounded in time.

The load client, the nodes and Redis share this machine's cores: the
figures compare the two backends in one run, and show how the cluster
spreads Redis's work over its shards; they are not Redis's ceiling.

    .venv/bin/python -m benchmarks.cluster [--channels 1000] [--seconds 10]
        [--subscribers 30] [--publishers 6] [--in-flight 16]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import tidings
from tidings.engine.connection import WebSocket

from .harness.runner import free_port

#: The nodes' configuration: anyone may subscribe and publish, as fast as
#: it likes, and each channel keeps a short history (a publish is the whole
#: script: offset, stream entry, pub/sub).
CONFIG = """
demo = false
max_subscriptions = 1000
rate_limit = 1000000.0
rate_burst = 1000000
[namespaces.b]
allow_anonymous = true
allow_publish = true
history_size = 10
history_ttl = 60
"""
NODES = 3
MASTERS = 3
BOUND = 60  # seconds: any one wait


@dataclass
class Backend:
    """Redis processes and the broker URL the nodes are given."""

    name: str
    url: str
    procs: list[subprocess.Popen[bytes]]
    dirs: list[str] = field(default_factory=list)

    def cpu(self) -> list[float]:
        """CPU seconds used so far by each Redis process."""
        return [cpu_seconds(p.pid) for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(BOUND)
        for folder in self.dirs:
            shutil.rmtree(folder, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while (port := free_port()) > 55535:
        pass
    return port


def start_redis(cluster: bool) -> tuple[int, str, subprocess.Popen[bytes]]:
    port = redis_port()
    folder = tempfile.mkdtemp(prefix="tidings-bench-cluster-")
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", folder]
    if cluster:
        argv += ["--cluster-enabled", "yes", "--cluster-require-full-coverage", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + BOUND
    while redis_cli(port, "PING") != "PONG":
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start on {port}")
        time.sleep(0.05)
    return port, folder, proc


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    return done.stdout.strip()


def one_redis() -> Backend:
    port, folder, proc = start_redis(cluster=False)
    return Backend("one Redis", f"redis://127.0.0.1:{port}/0", [proc], [folder])


def redis_cluster() -> Backend:
    started = [start_redis(cluster=True) for _ in range(MASTERS)]
    backend = Backend(
        f"Redis Cluster, {MASTERS} masters",
        "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p, _, _ in started),
        [proc for _, _, proc in started],
        [folder for _, folder, _ in started],
    )
    try:
        nodes = [f"127.0.0.1:{port}" for port, _, _ in started]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=BOUND,
        )
        deadline = time.monotonic() + BOUND
        for port, _, _ in started:
            while "cluster_state:ok" not in redis_cli(port, "CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster never said cluster_state:ok")
                time.sleep(0.05)
    except BaseException:
        backend.stop()
        raise
    return backend


@contextlib.contextmanager
def hub_nodes(
    url: str, config: Path
) -> Iterator[list[tuple[int, subprocess.Popen[bytes]]]]:
    """``NODES`` ``tidings serve`` processes on broker ``url``, serving."""
    nodes = []
    for _ in range(NODES):
        port = free_port()
        argv = [sys.executable, "-m", "tidings", "serve", "--config", str(config)]
        argv += ["--port", str(port), "--broker", url]
        nodes.append((port, subprocess.Popen(argv, stdout=subprocess.DEVNULL)))
    try:
        deadline = time.monotonic() + BOUND
        for port, proc in nodes:
            while not healthy(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the node on {port} did not start")
                time.sleep(0.1)
        yield nodes
    finally:
        for _, proc in nodes:
            proc.terminate()
        for _, proc in nodes:
            proc.wait(BOUND)


def healthy(port: int) -> bool:
    with contextlib.suppress(OSError):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    return False


@dataclass
class Counts:
    published: int = 0
    delivered: int = 0
    refused: int = 0


async def open_client(port: int) -> WebSocket:
    ws = await tidings.connect(f"ws://127.0.0.1:{port}/ws", compression=None)
    await ws.send(json.dumps({"id": 0, "op": "connect"}))
    reply = json.loads(await ws.recv())
    if "result" not in reply:
        raise RuntimeError(f"connect refused: {reply}")
    return ws


async def subscriber(ws: WebSocket, channels: list[str], counts: Counts) -> None:
    for i, channel in enumerate(channels, 1):
        await ws.send(json.dumps({"id": i, "op": "subscribe", "channel": channel}))
    confirmed = 0
    while confirmed < len(channels):
        reply = json.loads(await ws.recv())
        if "error" in reply:
            raise RuntimeError(f"subscribe refused: {reply}")
        confirmed += "result" in reply
    counts.delivered = 0
    async for message in ws:
        counts.delivered += '"pub"' in message[:64]


async def publisher(
    ws: WebSocket, channels: Iterator[str], in_flight: int, counts: Counts
) -> None:
    ids = itertools.count(1)
    data = {"text": "x" * 64}

    async def send() -> None:
        message = {"id": next(ids), "op": "publish", "channel": next(channels)}
        await ws.send(json.dumps({**message, "data": data}))

    for _ in range(in_flight):
        await send()
    async for message in ws:
        if '"result"' in message:
            counts.published += 1
        else:
            counts.refused += 1
        await send()


async def measure(
    backend: Backend, ports: list[int], hubs: list[int], args: argparse.Namespace
) -> dict[str, object]:
    names = [f"b:c{i}" for i in range(args.channels)]
    counts = Counts()
    tasks: list[asyncio.Task[None]] = []
    sockets: list[WebSocket] = []
    # Every channel on every node: the subscribers of node k together hold
    # all the channels.
    per_node = args.subscribers // NODES
    share = -(-len(names) // per_node)
    async with asyncio.timeout(BOUND):
        subscribed = []
        for j in range(per_node * NODES):
            ws = await open_client(ports[j % NODES])
            sockets.append(ws)
            mine = names[(j // NODES) * share : (j // NODES + 1) * share]
            subscribed.append(asyncio.create_task(subscriber(ws, mine, counts)))
        tasks += subscribed
        turn = itertools.cycle(names)
        for j in range(args.publishers):
            ws = await open_client(ports[j % NODES])
            sockets.append(ws)
            tasks.append(
                asyncio.create_task(publisher(ws, turn, args.in_flight, counts))
            )
    try:
        await asyncio.sleep(args.warmup)
        for task in tasks:
            if task.done():
                task.result()  # a connection that failed: say why
        before = (counts.published, counts.delivered, time.monotonic())
        redis_before = backend.cpu()
        hubs_before = sum(cpu_seconds(pid) for pid in hubs)
        await asyncio.sleep(args.seconds)
        wall = time.monotonic() - before[2]
        redis_cpu = [
            (a - b) / wall for a, b in zip(backend.cpu(), redis_before, strict=True)
        ]
        hubs_cpu = (sum(cpu_seconds(pid) for pid in hubs) - hubs_before) / wall
        return {
            "backend": backend.name,
            "publications/s": (counts.published - before[0]) / wall,
            "deliveries/s": (counts.delivered - before[1]) / wall,
            "refused": counts.refused,
            "redis CPU": redis_cpu,
            "hub nodes CPU": hubs_cpu,
        }
    finally:
        for task in tasks:
            task.cancel()
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()


def run(backend: Backend, args: argparse.Namespace, config: Path) -> dict[str, object]:
    try:
        with hub_nodes(backend.url, config) as nodes:
            ports = [port for port, _ in nodes]
            pids = [proc.pid for _, proc in nodes]
            return asyncio.run(measure(backend, ports, pids, args))
    finally:
        backend.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--subscribers", type=int, default=30)
    parser.add_argument("--publishers", type=int, default=6)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--json", metavar="FILE", help="also write the rows here")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("redis-server and redis-cli are needed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "hub.toml"
        config.write_text(CONFIG)
        rows = [run(one_redis(), args, config), run(redis_cluster(), args, config)]
    in_flight = args.publishers * args.in_flight
    print(
        f"{NODES} hub nodes, {args.channels:,} channels, each subscribed on every "
        f"node; {in_flight} publications in flight ({args.publishers} publishers "
        f"x {args.in_flight}); {args.seconds:g} s measured\n"
    )
    print(
        "| backend | publications/s | deliveries/s | CPU per Redis process "
        "(s/s) | hub nodes CPU (s/s) |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        shards = " / ".join(f"{c:.2f}" for c in row["redis CPU"])  # type: ignore[attr-defined]
        print(
            f"| {row['backend']} | {row['publications/s']:,.0f} | "
            f"{row['deliveries/s']:,.0f} | {shards} | {row['hub nodes CPU']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
