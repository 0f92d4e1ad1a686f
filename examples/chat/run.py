"""Start the chat example: the app (uvicorn) and the hub (``tidings serve
--config examples/chat/tidings.toml``), side by side, until Ctrl-C or
SIGTERM stops both.

    .venv/bin/python examples/chat/run.py

The hub calls the app's hooks with a shared secret made here for this run
(``TIDINGS_PROXY_SECRET`` for the hub, ``CHAT_HOOK_SECRET`` for the app).
With ``--app-port`` other than tidings.toml's, the hub is told the app's
address through ``TIDINGS_PROXY_*``; ``0`` picks free ports. Both programs'
output comes out here, each line marked with the program's name.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).parent
HOOKS = ("connect", "refresh", "subscribe", "publish", "rpc")
#: Seconds for the hub to start, and for each program to stop when asked.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_RUNNING = re.compile(r"tidings hub running at (https?)://([^/\s]+)/")


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start the chat example's app and its tidings hub."
    )
    parser.add_argument(
        "--app-port",
        type=int,
        default=9000,
        help="the app's port (default: 9000; 0 picks a free one)",
    )
    parser.add_argument(
        "--hub-port",
        type=int,
        help="the hub's port (default: the config's, 8000; 0 picks a free one)",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("CHAT_DB") or str(HERE / "chat.db"),
        help="the SQLite file (default: CHAT_DB or examples/chat/chat.db)",
    )
    parser.add_argument(
        "--config",
        default=str(HERE / "tidings.toml"),
        help="the hub's config (default: examples/chat/tidings.toml)",
    )
    return parser.parse_args(argv)


def say(line: str) -> None:
    print(f"chat | {line}", flush=True)


def forward(
    name: str, stream: IO[str], seen: dict[str, str], wake: threading.Event
) -> None:
    """Copy a program's output to ours, line by line; note the hub's
    address when it says it is running."""
    for line in stream:
        print(f"{name:<4} | {line}", end="", flush=True)
        running = _RUNNING.search(line)
        if running and "hub" not in seen:
            seen["hub"] = f"{running.group(1)}://{running.group(2)}/"
            wake.set()


def watch(
    name: str,
    proc: subprocess.Popen[str],
    exited: dict[str, int],
    wake: threading.Event,
) -> None:
    exited[name] = proc.wait()
    wake.set()


def follow(
    name: str,
    proc: subprocess.Popen[str],
    seen: dict[str, str],
    exited: dict[str, int],
    wake: threading.Event,
) -> None:
    """Forward the program's output, and tell ``wake`` when it exits."""
    assert proc.stdout is not None
    for target, arg, found in ((forward, proc.stdout, seen), (watch, proc, exited)):
        thread = threading.Thread(target=target, args=(name, arg, found, wake))
        thread.daemon = True
        thread.start()


def hub_env(config: str, app_port: int, secret: str) -> dict[str, str]:
    """The hub's environment: the shared secret, and the app's address
    where it is not the config's."""
    env = {**os.environ, "TIDINGS_PROXY_SECRET": secret}
    with open(config, "rb") as file:
        proxy = tomllib.load(file).get("proxy", {})
    for hook in HOOKS:
        url = proxy.get(hook)
        if isinstance(url, str) and urlsplit(url).port != app_port:
            parts = urlsplit(url)
            netloc = f"{parts.hostname}:{app_port}"
            env[f"TIDINGS_PROXY_{hook.upper()}"] = urlunsplit(
                parts._replace(netloc=netloc)
            )
    return env


def start(
    name: str, command: list[str], env: dict[str, str], **options: Any
) -> subprocess.Popen[str]:
    # A session of its own: Ctrl-C reaches this script alone, which stops
    # each program in turn, and no program outlives it unasked.
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
        **options,
    )


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def on_signal(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    procs: list[subprocess.Popen[str]] = []
    try:
        return run(args, procs)
    except Stopped:
        say("stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(procs):
            stop(proc)
        if procs:
            say("stopped")


def run(args: argparse.Namespace, procs: list[subprocess.Popen[str]]) -> int:
    wake = threading.Event()  # a program said where it is, or exited
    seen: dict[str, str] = {}
    exited: dict[str, int] = {}
    secret = secrets.token_urlsafe(32)

    # The app's socket, bound here: its port is known before the hub starts,
    # and connections wait in the kernel until uvicorn accepts them.
    app_sock = socket.create_server(("127.0.0.1", args.app_port), backlog=1024)
    app_port = app_sock.getsockname()[1]

    hub_command = [sys.executable, "-m", "tidings", "serve", "--config", args.config]
    if args.hub_port is not None:
        hub_command += ["--port", str(args.hub_port)]
    hub = start("hub", hub_command, hub_env(args.config, app_port, secret))
    procs.append(hub)
    follow("hub", hub, seen, exited, wake)
    if not wake.wait(START_TIMEOUT) or "hub" not in seen:
        say(f"the hub did not start (exit code {exited.get('hub')})")
        return 1
    hub_url = seen["hub"]
    hub_port = urlsplit(hub_url).port or 80

    app_env = {
        **os.environ,
        "CHAT_DB": args.db,
        "CHAT_HOOK_SECRET": secret,
        "CHAT_HUB_PORT": str(hub_port),
    }
    app_command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(HERE),
        "--factory",
        "app:create_app",
        "--fd",
        str(app_sock.fileno()),
        "--no-access-log",
    ]
    app = start("app", app_command, app_env, pass_fds=[app_sock.fileno()])
    procs.append(app)
    app_sock.close()  # uvicorn has its own copy
    follow("app", app, seen, exited, wake)

    say(f"the hub is at {hub_url} (WebSocket ws://127.0.0.1:{hub_port}/ws)")
    db = os.path.relpath(args.db)
    say(f"the app's database is {args.db if db.startswith('..') else db}")
    say(f"open http://127.0.0.1:{app_port}/ in two browsers; Ctrl-C stops both")
    while not exited:
        wake.clear()
        if not exited:
            wake.wait()
    name, code = next(iter(exited.items()))
    say(f"the {name} exited (code {code}): stopping")
    return 1


if __name__ == "__main__":
    sys.exit(main())
