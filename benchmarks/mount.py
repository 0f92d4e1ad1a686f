"""The hub mounted in an ASGI app under uvicorn, side by side with the hub
as ``tidings serve`` runs it and with python-socketio's ``ASGIApp`` under
the same uvicorn: 1,000 subscribers of one channel, one of them publishing
100-byte publications one at a time (each reaches all 1,000 before the
next goes: one publication in flight), in deliveries per second and
server CPU.

The servers (``SERVERS``):

- the hub of the hub rows (``benchmarks/harness/servers.py``) mounted at
  /realtime in a Starlette app (``benchmarks/mount_app.py``), under
  ``uvicorn --ws auto`` (uvicorn's default: ``websockets``) and under
  ``uvicorn --ws tidings.asgi:WebSocketProtocol``;
- the same hub on its own server, as ``tidings serve`` runs it;
- python-socketio's ``AsyncServer`` of the hub rows in its ``ASGIApp``,
  under the same uvicorn command, with each ``--ws``.

Every uvicorn is one process (uvloop, httptools, compression off) and every
server runs on core 0, the load client (``benchmarks/harness/loadgen.py
hub``) on core 1; loopback only. The servers are started together and
measured in turns: each round measures each server once (one window after
0.5 s of warm-up, 1,000 clients connected for it), so that what other
processes do to the machine falls on all of them alike; the figures are
medians over the rounds. Every step is bounded (the load client's
``--timeout``, each process's wait), and the servers are stopped by their
PIDs at the end. The uvicorns' stderr goes to ``.bench/logs/mount-N.log``.

    .venv/bin/python -m benchmarks.mount [--seconds 3] [--rounds 3] [--clients 1000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .asgi import ENV, LOGS, QUIET_BUDGET, ROOT, SERVER_CORE, fan_out, start, wait_quiet
from .harness.servers import ready_port

TIDINGS_WS = "tidings.asgi:WebSocketProtocol"
#: Where benchmarks/mount_app.py mounts the hub.
MOUNT = "/realtime"


@dataclass(frozen=True)
class Server:
    """One server of the comparison: ``app`` under uvicorn with ``--ws
    ws`` (no ``app``: the hub on its own server), and the load client's
    protocol and WebSocket path for it."""

    label: str
    app: str | None
    ws: str
    protocol: str
    path: str | None = None


SERVERS = (
    Server(
        "hub mounted, uvicorn --ws auto",
        "benchmarks.mount_app:hub_app",
        "auto",
        "tidings-hub",
        f"{MOUNT}/ws",
    ),
    Server(
        "hub mounted, uvicorn --ws tidings.asgi",
        "benchmarks.mount_app:hub_app",
        TIDINGS_WS,
        "tidings-hub",
        f"{MOUNT}/ws",
    ),
    Server("tidings serve", None, "", "tidings-hub"),
    Server(
        "python-socketio ASGIApp, uvicorn --ws auto",
        "benchmarks.mount_app:socketio_app",
        "auto",
        "socketio",
    ),
    Server(
        "python-socketio ASGIApp, uvicorn --ws tidings.asgi",
        "benchmarks.mount_app:socketio_app",
        TIDINGS_WS,
        "socketio",
    ),
)
#: The ratios' denominators.
SERVE, SOCKETIO = SERVERS[2].label, SERVERS[3].label

#: Publication size, publications in flight.
SIZE, DEPTH = 100, 1


def serve_alone(stack: ExitStack, seconds: float) -> tuple[int, int]:
    """The hub as ``tidings serve`` runs it, on core 0: its pid and port.
    It ends when its stdin closes (the stack closes it) or after
    ``seconds``."""
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "benchmarks.harness.servers"),
            *("tidings-hub", "hub", "--cpu", str(SERVER_CORE)),
            *("--watch-stdin", "--max-seconds", str(seconds)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=ENV,
        cwd=ROOT,
    )
    stack.callback(_stop, proc)
    return proc.pid, ready_port(proc, "tidings serve")


def _stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def auto_ws() -> str:
    """What uvicorn's ``--ws auto`` is here."""
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol as auto

    return "none" if auto is None else f"{auto.__module__}.{auto.__qualname__}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000, help="subscribers")
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=QUIET_BUDGET,
        help="seconds the run may wait in all for other processes to leave "
        "the cores alone",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("socketio") is None:
        raise SystemExit(
            "python-socketio is not installed: pip install it (benchmarks/harness/"
            "runner.py's PEER_PACKAGES lists what the benchmarks need)"
        )
    row = (args.clients, SIZE, DEPTH)
    LOGS.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {s.label: [] for s in SERVERS}
    cpus: dict[str, list[float]] = {s.label: [] for s in SERVERS}
    foreign: dict[str, float] = dict.fromkeys(rates, 0.0)
    stalls: dict[str, int] = dict.fromkeys(rates, 0)
    began = time.monotonic()
    # Long enough for every round, bounded all the same.
    lifetime = 600 + args.rounds * len(SERVERS) * (120 + 2 * args.seconds)
    with ExitStack() as stack:
        running: dict[str, tuple[int, int]] = {}
        for i, server in enumerate(SERVERS):
            if server.app is None:
                running[server.label] = serve_alone(stack, lifetime)
                continue
            log = stack.enter_context((LOGS / f"mount-{i}.log").open("w"))
            proc, port = start(
                server.ws, log, server.app, ("--factory", "--lifespan", "on")
            )
            stack.callback(_stop, proc)
            running[server.label] = (proc.pid, port)
        quiet_until = time.monotonic() + args.quiet_budget
        for round_ in range(args.rounds):
            for server in SERVERS:
                pid, port = running[server.label]
                mode: tuple[str, ...] = ("hub", "--protocol", server.protocol)
                if server.path is not None:
                    mode += ("--path", server.path)
                wait_quiet(quiet_until)
                windows, stalled = fan_out(
                    mode, port, pid, row, seconds=args.seconds, repeat=1
                )
                for w in windows:
                    rates[server.label].append(w["count"] / w["seconds"])
                    cpus[server.label].append(w["server_cpu"] or 0.0)
                    foreign[server.label] = max(
                        foreign[server.label], w["foreign"] or 0.0
                    )
                stalls[server.label] += stalled
                rate, cpu = rates[server.label][-1], cpus[server.label][-1]
                print(
                    f"round {round_ + 1}: {server.label}: {rate:,.0f} deliveries/s,"
                    f" {cpu:.2f} of a core",
                    file=sys.stderr,
                    flush=True,
                )
    took = time.monotonic() - began
    report(row, rates=rates, cpus=cpus, foreign=foreign, stalls=stalls, took=took)
    if args.json is not None:
        results = {"rates": rates, "server_cpu": cpus, "foreign": foreign}
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def report(
    row: tuple[int, int, int],
    *,
    rates: dict[str, list[float]],
    cpus: dict[str, list[float]],
    foreign: dict[str, float],
    stalls: dict[str, int],
    took: float,
) -> None:
    """Print the tables: each server's figures (medians over the rounds,
    [min-max]), then its ratios to ``tidings serve`` and to python-socketio
    under uvicorn's default, taken round by round (each server against the
    other measured in the same round), median [min-max]."""
    clients, size, depth = row
    per_cpu = {
        n: [r / c if c else 0.0 for r, c in zip(rates[n], cpus[n], strict=True)]
        for n in rates
    }
    title = f"{size} B to {clients:,} subscribers, {depth} publication in flight"
    print(
        f"| {title} | deliveries/s | server CPU (cores) "
        "| deliveries per server CPU-second |\n|---|--:|--:|--:|"
    )
    for name, measured in rates.items():
        print(
            f"| {name} | {_spread(measured)} | {_spread(cpus[name], '.2f')}"
            f" | {_spread(per_cpu[name])} |"
        )
    print(
        f"\n| {title}, ratios round by round "
        "| ÷ tidings serve, deliveries/s | ÷ tidings serve, per CPU-second "
        "| ÷ python-socketio, deliveries/s | ÷ python-socketio, per CPU-second |"
        "\n|---|--:|--:|--:|--:|"
    )
    for name in rates:
        cells = [
            _spread(
                [a / b for a, b in zip(figures[name], figures[peer], strict=True)],
                ".2f",
                "x",
            )
            for peer in (SERVE, SOCKETIO)
            for figures in (rates, per_cpu)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    times = ", ".join(
        f"{clients / statistics.median(v) * 1000:.1f} ms ({n})"
        for n, v in rates.items()
    )
    print(
        f"\nOne publication to all {clients:,} subscribers (from the medians): {times}."
    )
    print(
        f"\n`--ws auto` is {auto_ws()}; medians of {len(next(iter(rates.values())))}"
        f" rounds; {took:.0f} s in all."
    )
    disturbed = [f"{n} ({share:.0%})" for n, share in foreign.items() if share > 0.1]
    if disturbed:
        print(
            "Other processes took more than a tenth of a core during: "
            + ", ".join(disturbed)
            + "."
        )
    stalled = [f"{n}: {k}" for n, k in stalls.items() if k]
    if stalled:
        print(f"Stalls (0.2 s without a delivery): {', '.join(stalled)}.")


def _spread(values: list[float], spec: str = ",.0f", unit: str = "") -> str:
    """``median [min-max]``."""
    median, low, high = statistics.median(values), min(values), max(values)
    return f"{median:{spec}}{unit} [{low:{spec}}-{high:{spec}}]"


if __name__ == "__main__":
    main()
