"""A Starlette echo endpoint under uvicorn, with uvicorn's WebSocket
implementations (``--ws websockets``, ``--ws wsproto``) and tidings'
(``--ws tidings.asgi:WebSocketProtocol``), side by side: round trips per
second at 1 and 8 messages in flight, driven by ``tidings bench``.

Each uvicorn runs on core 0 (uvloop, httptools, one worker, compression
off), the load client on core 1; loopback only, every run bounded.

    .bench/venv/bin/python -m benchmarks.asgi [--seconds 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMPLEMENTATIONS = {
    "websockets": "websockets",
    "wsproto": "wsproto",
    "tidings": "tidings.asgi:WebSocketProtocol",
}
#: (connections, size, in flight)
ROWS = ((100, 32, 1), (100, 32, 8), (1, 32, 1))


def start(ws: str) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}")
    proc = subprocess.Popen(
        [
            *("taskset", "-c", "0", sys.executable, "-m", "uvicorn"),
            "benchmarks.asgi_app:app",
            *("--ws", ws, "--port", "0", "--host", "127.0.0.1"),
            *("--loop", "uvloop", "--http", "httptools", "--lifespan", "off"),
            *("--ws-per-message-deflate", "false", "--log-level", "warning"),
            *("--ws-ping-interval", "900", "--no-access-log"),
        ],
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        text=True,
    )
    assert proc.stderr is not None
    # At --log-level warning uvicorn says nothing: ask the kernel instead.
    port = _listening_port(proc.pid)
    return proc, port


def _listening_port(pid: int) -> int:
    for _ in range(200):
        out = subprocess.run(
            ["ss", "-ltnpH"], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            if f"pid={pid}," in line:
                match = re.search(r"127\.0\.0\.1:(\d+)", line)
                if match:
                    return int(match[1])
        subprocess.run(["sleep", "0.05"], check=True)
    raise SystemExit("uvicorn did not start listening")


def bench(port: int, conns: int, size: int, depth: int, args: Any) -> list[float]:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, list[float]]] = {}
    for name, ws in IMPLEMENTATIONS.items():
        proc, port = start(ws)
        try:
            for conns, size, depth in ROWS:
                key = f"{conns}x{size}-k{depth}"
                results.setdefault(key, {})[name] = bench(
                    port, conns, size, depth, args
                )
                print(name, key, results[key][name], file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        "| echo, Starlette under uvicorn | --ws websockets | --ws wsproto "
        "| tidings.asgi | tidings ÷ websockets | tidings ÷ wsproto |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for conns, size, depth in ROWS:
        key = f"{conns}x{size}-k{depth}"
        row = results[key]
        med = {n: statistics.median(v) for n, v in row.items()}
        cells = [
            f"{med[n]:,.0f} [{min(row[n]):,.0f}-{max(row[n]):,.0f}]"
            for n in IMPLEMENTATIONS
        ]
        print(
            f"| {conns} x {size} B, {depth} in flight | "
            + " | ".join(cells)
            + f" | {med['tidings'] / med['websockets']:.2f}x"
            + f" | {med['tidings'] / med['wsproto']:.2f}x |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
