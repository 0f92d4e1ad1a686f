"""The benchmark's peers from npm: Bun and Node.js servers.

Their scripts and their pinned packages (``package.json`` and its lockfile)
are in ``benchmarks/peers``; :func:`install` runs ``npm ci`` there on first
use (and again when the lockfile changes), never into the wheel or the
project's ``.venv``. Bun comes as the npm package ``bun``, whose optional
dependency for this platform holds the binary; Node.js is the system's
``node``. ``python -m benchmarks.harness.servers NAME ...`` pins itself to
its core and then becomes the peer (:func:`command`, ``exec``), so that the
runner starts, measures and stops every server alike.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

#: The peers' scripts, package.json and package-lock.json.
PEERS_DIR = Path(__file__).resolve().parent.parent / "peers"

#: Server name -> (runtime, script, modes it serves).
PEERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "bun": ("bun", "bun_server.mjs", ("echo", "broadcast")),
    "bun-hub": ("bun", "bun_server.mjs", ("hub",)),
    "node-ws": ("node", "node_server.mjs", ("echo", "broadcast")),
    "node-socketio": ("node", "node_server.mjs", ("hub",)),
}

#: What ``npm ci`` leaves behind when it is done (npm writes it last).
_INSTALLED = PEERS_DIR / "node_modules" / ".package-lock.json"

#: The most the first install may take.
INSTALL_TIMEOUT = 600


def runtime(name: str) -> str | None:
    """The path of the ``bun`` or ``node`` binary (None: not there)."""
    if name == "bun":
        binary = PEERS_DIR / "node_modules" / ".bin" / "bun"
        return str(binary) if binary.exists() else None
    return shutil.which(name)


def installed() -> bool:
    """Whether ``npm ci`` ran with the current lockfile."""
    lock = PEERS_DIR / "package-lock.json"
    return _INSTALLED.exists() and _INSTALLED.stat().st_mtime >= lock.stat().st_mtime


def install(say: Callable[[str], None], *, setup: bool = True) -> str | None:
    """Install the pinned packages unless they are there; None when the
    peers can run, else why not (for the report)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return (
            "node and npm not installed (Node.js 18 or later: apt install nodejs npm)"
        )
    if not installed():
        if not setup:
            return f"npm packages not installed (npm ci in {PEERS_DIR})"
        say(f"installing the benchmark's npm peers: npm ci in {PEERS_DIR}")
        try:
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=PEERS_DIR,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"npm ci did not finish in {INSTALL_TIMEOUT} s"
        if done.returncode != 0:
            say(done.stderr[-2000:])
            return f"npm ci failed in {PEERS_DIR} (exit {done.returncode})"
    if runtime("bun") is None:
        return "npm installed no bun binary for this platform"
    return None


def command(
    server: str,
    mode: str,
    *,
    host: str,
    port: int,
    room: str,
    max_seconds: float,
    watch_stdin: bool,
    redis: str | None,
    deflate: bool = False,
) -> list[str]:
    """The command that runs peer ``server`` in ``mode``; with ``deflate``,
    a hub that agrees to permessage-deflate and compresses publications."""
    name, script, modes = PEERS[server]
    if mode not in modes:
        raise ValueError(f"{server} does not serve mode {mode}")
    binary = runtime(name)
    if binary is None:
        raise RuntimeError(f"{name} not installed (npm ci in {PEERS_DIR})")
    if redis is not None and server != "node-socketio":
        raise ValueError(f"{server} has no Redis mode")
    argv = [binary, str(PEERS_DIR / script), server, mode]
    argv += ["--host", host, "--port", str(port), "--room", room]
    argv += ["--max-seconds", str(max_seconds)]
    if watch_stdin:
        argv.append("--watch-stdin")
    if redis is not None:
        argv += ["--redis", redis]
    if deflate:
        if mode != "hub":
            raise ValueError(f"{server} has no deflate mode in mode {mode}")
        argv.append("--deflate")
    return argv
