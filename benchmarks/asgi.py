"""Starlette endpoints under uvicorn, with uvicorn's WebSocket
implementations (``--ws websockets``, ``--ws wsproto``) and tidings'
(``--ws tidings.asgi:WebSocketProtocol``), side by side: an echo, in round
trips per second at 1 and 8 messages in flight, driven by ``tidings
bench``; and a broadcast to 1,000 clients, in deliveries per second at 1
and 8 broadcasts in flight, driven by the harness's load client
(``benchmarks/harness/loadgen.py``).

Each uvicorn runs on core 0 (uvloop, httptools, one worker, compression
off), the load client on core 1; loopback only, every run bounded. Before
each row the run waits for other processes to leave both cores alone (120 s
at most in all); a broadcast window in which they took more than a tenth of
a core is measured again (the load client's ``--max-foreign``: once for
three measurements), and any row they disturbed that much is named under
the tables. The
uvicorns' stderr goes to ``.bench/logs/asgi-NAME.log``.

    .bench/venv/bin/python -m benchmarks.asgi [--seconds 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from .harness._proc import busy_fraction, core_times, proc_cpu

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}")
LOGS = ROOT / ".bench" / "logs"
IMPLEMENTATIONS = {
    "websockets": "websockets",
    "wsproto": "wsproto",
    "tidings": "tidings.asgi:WebSocketProtocol",
}
#: Echo rows: (connections, size, in flight).
ROWS = ((100, 32, 1), (100, 32, 8), (1, 32, 1))
#: Broadcast rows: (clients, size, broadcasts in flight).
BROADCASTS = ((1000, 100, 1), (1000, 100, 8))
#: Seconds of warm-up before a broadcast row's measurements.
WARMUP = 0.5
#: uvicorn's core and the load client's.
SERVER_CORE, CLIENT_CORE = 0, 1
#: Seconds the whole run may wait for quiet cores.
QUIET_BUDGET = 120.0
#: Share of a core other processes may take during a measurement.
MAX_FOREIGN = 0.1

HEADER = (
    "| --ws websockets | --ws wsproto | tidings.asgi "
    "| tidings ÷ websockets | tidings ÷ wsproto |\n|---|--:|--:|--:|--:|--:|"
)


def start(
    ws: str,
    log: IO[str],
    app: str = "benchmarks.asgi_app:app",
    options: tuple[str, ...] = ("--lifespan", "off"),
) -> tuple[subprocess.Popen[str], int]:
    """uvicorn serving ``app`` with ``--ws ws`` on core 0, and its port."""
    proc = subprocess.Popen(
        [
            *("taskset", "-c", str(SERVER_CORE), sys.executable, "-m", "uvicorn"),
            app,
            *("--ws", ws, "--port", "0", "--host", "127.0.0.1"),
            *("--loop", "uvloop", "--http", "httptools", *options),
            *("--ws-per-message-deflate", "false", "--log-level", "warning"),
            *("--ws-ping-interval", "900", "--no-access-log"),
        ],
        stderr=log,
        env=ENV,
        cwd=ROOT,
        text=True,
    )
    # At --log-level warning uvicorn says nothing: ask the kernel instead.
    port = _listening_port(proc)
    return proc, port


def _listening_port(proc: subprocess.Popen[str]) -> int:
    """The port uvicorn ``proc`` listens on, once it does: at most 60 s
    (a busy machine slows its imports and its lifespan)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        out = subprocess.run(
            ["ss", "-ltnpH"], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            if f"pid={proc.pid}," in line:
                match = re.search(r"127\.0\.0\.1:(\d+)", line)
                if match:
                    return int(match[1])
        time.sleep(0.05)
    raise SystemExit(f"uvicorn did not start listening (exit code {proc.poll()})")


def wait_quiet(deadline: float) -> None:
    """Wait until other processes leave both cores below 15 % busy (over
    0.3 s), or until ``deadline`` (``time.monotonic()``)."""
    while True:
        before = core_times()
        time.sleep(0.3)  # the sampling interval
        after = core_times()
        busy = [busy_fraction(before, after, c) for c in (SERVER_CORE, CLIENT_CORE)]
        if max(b or 0.0 for b in busy) < 0.15 or time.monotonic() >= deadline:
            return


class Foreign:
    """How much of either core other processes took from now until
    :meth:`share` (uvicorn is ``pid``; the load client, a child process that
    has been waited for)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self._now()

    def _now(self) -> tuple[float, dict[int, tuple[int, int]], float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        server = proc_cpu(self.pid) or 0.0
        return (
            time.monotonic(),
            core_times(),
            server,
            children.ru_utime + children.ru_stime,
        )

    def share(self) -> float:
        (t0, k0, s0, c0), (t1, k1, s1, c1) = self.start, self._now()
        wall = t1 - t0
        busy_server = busy_fraction(k0, k1, SERVER_CORE) or 0.0
        busy_client = busy_fraction(k0, k1, CLIENT_CORE) or 0.0
        return max(0.0, busy_server - (s1 - s0) / wall, busy_client - (c1 - c0) / wall)


def bench(port: int, conns: int, size: int, depth: int, args: Any) -> list[float]:
    """Round trips per second through /echo, one figure a measurement."""
    out = subprocess.run(
        [
            *("taskset", "-c", "1", sys.executable, "-m", "tidings", "bench"),
            f"ws://127.0.0.1:{port}/echo",
            *("-c", str(conns), "-s", str(size), "-k", str(depth)),
            *("-d", str(args.seconds), "-r", str(args.repeat), "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=60 + args.seconds * args.repeat * 2,
        check=True,
    ).stdout
    windows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [w["messages_per_second"] for w in windows[:-1] or windows]


def broadcast(
    port: int, pid: int, row: tuple[int, int, int], args: Any
) -> tuple[list[float], int, float]:
    """Deliveries per second through /broadcast, one figure a measurement.
    ``row`` is (clients, size, depth): the clients connect, one of them
    publishes ``size``-byte text messages, keeping ``depth`` in flight (the
    next goes once an earlier one reached every client), and every client
    counts what it receives. Also returns the stalls and the largest share
    of a core that other processes took (:func:`fan_out`)."""
    windows, stalled = fan_out(
        ("broadcast", "--path", "/broadcast", "--text"),
        port,
        pid,
        row,
        seconds=args.seconds,
        repeat=args.repeat,
    )
    foreign = max((w["foreign"] or 0.0 for w in windows), default=0.0)
    return [w["count"] / w["seconds"] for w in windows], stalled, foreign


def fan_out(
    mode: tuple[str, ...],
    port: int,
    pid: int,
    row: tuple[int, int, int],
    *,
    seconds: float,
    repeat: int,
) -> tuple[list[dict[str, Any]], int]:
    """The load client's ``mode`` (``broadcast ...`` or ``hub ...``, with
    their options) against the server ``pid`` on ``port``: ``row`` is
    (clients, size, depth). Returns the windows kept, each with its count,
    seconds, server CPU and the largest share of a core that other
    processes took meanwhile; and the stalls (how often 0.2 s went by
    without a delivery, and the load client sent the next one anyway)."""
    clients, size, depth = row
    out = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.harness.loadgen", *mode),
            *("--port", str(port)),
            *("--conns", str(clients), "--size", str(size), "--depth", str(depth)),
            *("--warmup", str(WARMUP), "--duration", str(seconds)),
            *("--repeat", str(repeat), "--timeout", "30"),
            *("--cpu", str(CLIENT_CORE), "--server-core", str(SERVER_CORE)),
            *("--server-pid", str(pid), "--max-foreign", str(MAX_FOREIGN)),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=90 + (WARMUP + seconds) * repeat * 2,
        check=False,
    )
    events = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    problems = [e for e in events if e["event"] in ("error", "note")]
    opened = [e for e in events if e["event"] == "opened"]
    done = [e for e in events if e["event"] == "done"]
    if out.returncode != 0 or problems or not opened or not done:
        raise SystemExit(f"{mode[0]} failed: {problems or out.stderr[-2000:]}")
    if opened[0]["failed"] or done[0]["errors"]:
        raise SystemExit(f"{mode[0]} lost clients or frames: {opened + done}")
    windows = [e for e in events if e["event"] == "window"]
    return windows, done[0]["stalls"]


def table(title: str, rows: list[tuple[str, dict[str, list[float]]]]) -> None:
    print(f"| {title} {HEADER}")
    for label, row in rows:
        med = {n: statistics.median(v) for n, v in row.items()}
        cells = [
            f"{med[n]:,.0f} [{min(row[n]):,.0f}-{max(row[n]):,.0f}]"
            for n in IMPLEMENTATIONS
        ]
        print(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {med['tidings'] / med['websockets']:.2f}x"
            + f" | {med['tidings'] / med['wsproto']:.2f}x |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {}
    stalls: list[str] = []
    disturbed: list[str] = []
    quiet_until = time.monotonic() + QUIET_BUDGET
    for name, ws in IMPLEMENTATIONS.items():
        with (LOGS / f"asgi-{name}.log").open("w") as log:
            proc, port = start(ws, log)
            try:
                for conns, size, depth in ROWS:
                    key = f"{conns}x{size}-k{depth}"
                    wait_quiet(quiet_until)
                    foreign = Foreign(proc.pid)
                    rates = bench(port, conns, size, depth, args)
                    share = foreign.share()
                    results.setdefault(key, {})[name] = rates
                    if share > MAX_FOREIGN:
                        disturbed.append(f"{name} {key} ({share:.0%})")
                    print(name, key, rates, f"{share:.0%}", file=sys.stderr, flush=True)
                for row in BROADCASTS:
                    key = "broadcast-{}x{}-k{}".format(*row)
                    wait_quiet(quiet_until)
                    rates, stalled, share = broadcast(port, proc.pid, row, args)
                    results.setdefault(key, {})[name] = rates
                    if stalled:
                        stalls.append(f"{name} {key}: {stalled}")
                    if share > MAX_FOREIGN:
                        disturbed.append(f"{name} {key} ({share:.0%})")
                    print(name, key, rates, f"{share:.0%}", file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
    table(
        "echo, Starlette under uvicorn (round trips/s)",
        [(f"{c} x {s} B, {d} in flight", results[f"{c}x{s}-k{d}"]) for c, s, d in ROWS],
    )
    print()
    table(
        "broadcast, Starlette under uvicorn (deliveries/s)",
        [
            (f"{s} B to {c:,}, {d} in flight", results[f"broadcast-{c}x{s}-k{d}"])
            for c, s, d in BROADCASTS
        ],
    )
    for clients, size, depth in BROADCASTS:
        if depth != 1:
            continue
        measured = results[f"broadcast-{clients}x{size}-k{depth}"]
        times = ", ".join(
            f"{clients / statistics.median(measured[n]) * 1000:.1f} ms ({n})"
            for n in IMPLEMENTATIONS
        )
        print(
            f"\nOne {size} B message to all {clients:,} clients, 1 in flight "
            f"(from the medians): {times}."
        )
    if stalls:
        print(f"\nStalls (0.2 s without a delivery): {', '.join(stalls)}.")
    if disturbed:
        print(
            "\nOther processes took more than a tenth of a core during: "
            + ", ".join(disturbed)
            + "."
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
