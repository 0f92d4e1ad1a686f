"""``tidings serve --workers 1`` against ``--workers 2`` on one Redis: hub
fan-out in deliveries/s from the harness's load client, and the CPU each
spends per delivery (docs/scaling.md, Workers).

    .venv/bin/python -m benchmarks.workers --rounds 3

Nothing is pinned: the workers, redis-server and the load client share the
machine's cores, as they would on a host running ``--workers``. Rounds
alternate 1 and 2 workers, so that what else runs on the machine falls on
both alike; each line is the median of every kept window, with its range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness._proc import core_times, proc_cpu
from .harness.runner import RedisProcess, find_redis, free_port
from .harness.scenarios import HUB_CHANNEL

#: As the hub rows' hub (harness/servers.py hub_config), as a TOML file.
CONFIG = f"""\
rate_limit = 1e9
rate_burst = 1000000000
max_connections = 100000
ping_interval = 600.0
ping_timeout = 600.0
[namespaces.{HUB_CHANNEL.partition(":")[0]}]
allow_anonymous = true
allow_publish = true
history_size = 100
history_ttl = 3600
"""


def run_once(
    workers: int, redis: RedisProcess, args: argparse.Namespace
) -> dict[str, Any]:
    """One ``tidings serve --workers N`` under the load client: its windows,
    and the CPU seconds of Redis and of the whole machine meanwhile."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "hub.toml"
        config.write_text(CONFIG)
        port = free_port()
        serve = subprocess.Popen(
            [
                *(sys.executable, "-m", "tidings", "serve", "--no-demo"),
                *("--workers", str(workers), "--port", str(port)),
                *("--broker", redis.url, "--config", str(config)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert serve.stdout is not None
            banner = [serve.stdout.readline() for _ in range(3 + (workers > 1))]
            pids = [serve.pid]
            if workers > 1:  # "  2 workers sharing the port (...), pids 1, 2"
                pids = [int(pid) for pid in banner[-1].split("pids")[1].split(",")]
            redis_cpu, cores = proc_cpu(redis.pid), core_times()
            start = time.monotonic()
            load = subprocess.run(
                [
                    *(sys.executable, "-m", "benchmarks.harness.loadgen", "hub"),
                    *("--port", str(port), "--conns", str(args.conns)),
                    *("--size", "100", "--depth", str(args.depth)),
                    *("--duration", str(args.duration), "--repeat", str(args.repeat)),
                    *("--warmup", str(args.warmup)),
                    *("--sources", "8", "--publishers", str(args.publishers)),
                    *("--server-pid", ",".join(map(str, pids))),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            redis_cpu = (proc_cpu(redis.pid) or 0.0) - (redis_cpu or 0.0)
            after = core_times()
            seconds = time.monotonic() - start
        finally:
            serve.terminate()
            serve.wait(60)
    events = [json.loads(line) for line in load.stdout.splitlines()]
    busy = sum(after[c][0] - cores[c][0] for c in after) / os.sysconf("SC_CLK_TCK")
    (done,) = (e for e in events if e["event"] == "done")
    return {
        "windows": [e for e in events if e["event"] == "window"],
        "publications": done["sent"],
        "redis_cpu": redis_cpu,
        "machine_cpu": busy,
        "seconds": seconds,
    }


def summary(workers: int, runs: list[dict[str, Any]]) -> str:
    """One table row: medians over every window, with the rate's range."""
    windows = [w for run in runs for w in run["windows"]]
    rates = [w["count"] / w["seconds"] for w in windows]
    server = statistics.median(w["server_cpu"] for w in windows)
    system = statistics.median(w["server_system"] / w["server_cpu"] for w in windows)
    client = statistics.median(w["client_cpu"] for w in windows)
    per = statistics.median(
        w["server_cpu"] * w["seconds"] / w["count"] * 1e6 for w in windows
    )
    redis = sum(run["redis_cpu"] for run in runs) / sum(
        run["publications"] for run in runs
    )
    machine = sum(run["machine_cpu"] for run in runs) / sum(
        run["seconds"] for run in runs
    )
    return (
        f"| {workers} | {statistics.median(rates):,.0f} "
        f"[{min(rates):,.0f}-{max(rates):,.0f}] | {server:.2f} | {system:.0%} "
        f"| {per:.2f} "
        f"| {client:.2f} | {redis * 1e6:.1f} | {machine:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=128, help="publications in flight")
    parser.add_argument(
        "--publishers", type=int, default=2, help="clients that publish, in turn"
    )
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    binary = find_redis()
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with open(os.devnull, "wb") as log:
        redis = RedisProcess(binary, log, None)
        try:
            for _ in range(args.rounds):
                for workers, done in runs.items():
                    done.append(run_once(workers, redis, args))
        finally:
            redis.stop()
    print(
        f"{args.conns} subscribers of one channel, 100 B publications, "
        f"{args.depth} in flight from {args.publishers} of them, "
        f"{os.cpu_count()} cores shared by all"
    )
    print(
        "| workers | deliveries/s | workers' CPU (cores) | of it in the kernel "
        "| workers' µs CPU per delivery | load client's CPU (cores) | Redis's "
        "µs CPU per publication | the machine's busy CPU, everyone's (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for workers, done in runs.items():
        print(summary(workers, done))


if __name__ == "__main__":
    main()
