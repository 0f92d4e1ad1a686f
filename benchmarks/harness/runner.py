"""The benchmark runner: ``python -m benchmarks`` from the repository root.

For each scenario and each server it starts the server as its own process
(:mod:`benchmarks.harness.servers`), pinned to one core, and the load client
(:mod:`benchmarks.harness.loadgen`) as
another, pinned to the other core; it reads their JSON lines, shows
progress, and at the end writes ``results.json``, a Markdown report and, when
matplotlib is there, PNG charts. A hub of several nodes is several server
processes and a ``redis-server`` the runner starts for the step (on a free
port, nothing saved, in a temporary directory), all pinned to the server's
core.

The peers (websockets, aiohttp, picows; python-socketio and uvicorn for
the hub) and uvloop and matplotlib are installed into the benchmark's own
virtual environment, ``.bench/venv`` at the root of the checkout, on first
run; tidings itself never depends on them. The children import the harness
and this checkout's tidings (``src``) by ``PYTHONPATH``, whatever their
interpreter and working directory. ``--smoke`` runs every row for a
moment with tidings alone, in the current interpreter, to prove that the
benchmark works.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import peers
from . import report as report_mod
from ._proc import (
    busy_fraction,
    core_times,
    fd_limit,
    open_fds,
    rss_kib,
    servers_times,
)
from .scenarios import (
    BURST_KINDS,
    CLIENTS,
    FULL,
    HUB_TIDINGS,
    LABELS,
    LATENCY_KINDS,
    MEMORY_KINDS,
    NEEDS,
    NPM_SERVERS,
    PROCESSES,
    REDIS_SERVERS,
    REDIS_TIDINGS,
    SERVERS,
    TIDINGS,
    Scenario,
    smoke,
)

#: What is read at each window of `tidings bench`: the servers' (user,
#: system) CPU seconds, the cores' ticks and the time.
_Reading = tuple[tuple[float, float] | None, dict[int, tuple[int, int]], float]

PEER_PACKAGES = (
    "websockets",
    "aiohttp",
    "picows",
    "python-socketio>=5",
    "uvicorn>=0.30",
    # The apps of benchmarks/asgi.py and benchmarks/mount.py.
    "starlette",
    "redis>=5",
    "hiredis",
    "uvloop",
    "matplotlib",
)

#: Importable names probed in the benchmark's interpreter.
PROBE = (
    "tidings",
    "jwt",
    "uvloop",
    "websockets",
    "aiohttp",
    "picows",
    "socketio",
    "uvicorn",
    "redis",
    "hiredis",
    "matplotlib",
)

#: Distribution names, where they differ from the importable names.
DISTRIBUTIONS = {"jwt": "PyJWT", "socketio": "python-socketio"}

#: What a ready benchmark environment has: else it is filled (again).
COMPLETE = (
    "tidings",
    "jwt",
    "websockets",
    "aiohttp",
    "picows",
    "socketio",
    "uvicorn",
    "redis",
)


class BenchError(Exception):
    """A step failed: a process died, said ``error``, or timed out."""


# -- paths and environment -----------------------------------------------


#: The harness's own package, and the importable name of its modules.
HARNESS = Path(__file__).resolve().parent
PACKAGE = __package__ or "benchmarks.harness"


def checkout_root() -> Path:
    """The repository root: the harness lives in its ``benchmarks/``."""
    return HARNESS.parent.parent


def source_root() -> Path:
    """The directory that holds the ``tidings`` package (``src``)."""
    return checkout_root() / "src"


def default_base() -> Path:
    return checkout_root()


def bench_dir(base: Path) -> Path:
    """``.bench`` under ``base``: the environment and logs, never committed."""
    path = base / ".bench"
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return path


def child_env() -> dict[str, str]:
    """The children import the harness (from the repository root) and this
    very tidings (``src``), whatever their interpreter and working
    directory."""
    env = dict(os.environ)
    paths = (str(checkout_root()), str(source_root()), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def probe(python: str) -> dict[str, Any]:
    """Versions and importable modules in interpreter ``python``."""
    code = (
        "import importlib.util, importlib.metadata as m, json, platform\n"
        f"names = {list(PROBE)!r}\n"
        f"dists = {DISTRIBUTIONS!r}\n"
        "found = {n: importlib.util.find_spec(n) is not None for n in names}\n"
        "def v(n):\n"
        "    try: return m.version(dists.get(n, n))\n"
        "    except Exception: return None\n"
        "print(json.dumps({'python': platform.python_version(),"
        " 'implementation': platform.python_implementation(),"
        " 'found': found, 'versions': {n: v(n) for n in names if found[n]}}))\n"
    )
    out = subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def ensure_env(env_dir: Path, say: Callable[[str], None], *, setup: bool) -> str | None:
    """The benchmark's interpreter in ``env_dir``, created and filled with the
    peers on first use; None if that cannot be done."""
    python = env_dir / "bin" / "python"
    if python.exists():
        try:
            found = probe(str(python))["found"]
        except (subprocess.SubprocessError, OSError, ValueError):
            found = {}
        if all(found.get(n) for n in COMPLETE):
            return str(python)
    if not setup:
        return str(python) if python.exists() else None
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    log = env_dir.parent / "setup.log"
    say(f"setting up the benchmark's environment in {env_dir} (first run only)")
    steps: list[list[str]] = []
    if not python.exists():
        steps.append([sys.executable, "-m", "venv", str(env_dir)])
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    steps.append([*pip, "--upgrade", "pip"])
    steps.append([*pip, *PEER_PACKAGES])
    steps.append([*pip, "-e", str(checkout_root())])
    with log.open("a") as f:
        for cmd in steps:
            say("  $ " + shlex.join(cmd))
            f.write("$ " + shlex.join(cmd) + "\n")
            f.flush()
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
            if rc != 0:
                say(f"  failed (exit {rc}); see {log}")
                return str(python) if python.exists() else None
    return str(python)


# -- processes -----------------------------------------------------------


class Child:
    """A process this runner started; JSON lines are read from its stdout."""

    def __init__(self, name: str, argv: list[str], log: IO[bytes]) -> None:
        self.name = name
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout
        os.set_blocking(self.stdout.fileno(), False)
        self.buffer = b""
        self.events: list[dict[str, Any]] = []
        self.eof = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self) -> None:
        """Move whatever the child printed into :attr:`events`."""
        while True:
            try:
                data = os.read(self.stdout.fileno(), 65536)
            except BlockingIOError:
                break
            if not data:
                self.eof = True
                break
            self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self.events.append(event)

    def send(self, text: str) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(text.encode() + b"\n")
                self.proc.stdin.flush()

    def stop(self, grace: float = 5.0) -> None:
        """End the child: close its stdin, then SIGTERM, then SIGKILL."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stdout.close()


def take(child: Child, kind: str) -> dict[str, Any] | None:
    for i, event in enumerate(child.events):
        if event.get("event") == kind:
            return child.events.pop(i)
    return None


def wait_events(
    children: Sequence[Child],
    kind: str,
    timeout: float,
    tick: Callable[[], None],
    on_event: Callable[[Child, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Wait until each child has printed an event of ``kind``; return them.

    Other events go to ``on_event``. Raises :class:`BenchError` if a child
    reports an error, exits first, or ``timeout`` passes.
    """
    deadline = time.monotonic() + timeout
    got: dict[int, dict[str, Any]] = {}
    with selectors.DefaultSelector() as sel:
        for c in children:
            if not c.eof:
                sel.register(c.stdout, selectors.EVENT_READ, c)
        while len(got) < len(children):
            for c in children:
                c.read()
                while c.events:
                    event = c.events.pop(0)
                    if event.get("event") == "error":
                        raise BenchError(f"{c.name}: {event.get('text')}")
                    if event.get("event") == kind and id(c) not in got:
                        got[id(c)] = event
                    elif on_event is not None:
                        on_event(c, event)
                if id(c) not in got and c.eof and c.proc.poll() is not None:
                    raise BenchError(
                        f"{c.name} exited with status {c.proc.returncode} "
                        f"before '{kind}'"
                    )
            if len(got) == len(children):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out waiting for '{kind}' from the {kind} step")
            for key, _ in sel.select(min(left, 0.5)):
                if isinstance(key.data, Child) and key.data.eof:
                    sel.unregister(key.fileobj)
            tick()
    return [got[id(c)] for c in children]


# -- Redis and hubs of several nodes ---------------------------------------


def find_redis(path: str | None = None) -> str | None:
    """The ``redis-server`` to run: ``path``, else the one on ``PATH``."""
    return shutil.which(path or "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pin_process(pid: int, cpu: int | None, nice: int = 0) -> None:
    """Pin every thread of ``pid`` to ``cpu`` (and renice it), as the
    servers pin themselves."""
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            tid = int(task)
            if cpu is not None and hasattr(os, "sched_setaffinity"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, {cpu})
            if nice:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, tid, nice)


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or "?"


class RedisProcess:
    """A ``redis-server`` for one step: a free loopback port, no snapshots,
    no append-only file, its directory a temporary one; pinned (all its
    threads) to ``cpu``. Stopped, and its directory removed, by :meth:`stop`."""

    def __init__(
        self, binary: str, log: IO[bytes], cpu: int | None, nice: int = 0
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="tidings-bench-redis-")
        self.argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        log.write(f"== {shlex.join(self.argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            self.wait_ready(10.0)
        except BaseException:
            self.stop()
            raise
        pin_process(self.proc.pid, cpu, nice)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def wait_ready(self, timeout: float) -> None:
        """Until it answers PING (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"redis-server exited with status {self.proc.returncode}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1.0) as sock,
            ):
                sock.settimeout(1.0)
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"redis-server did not answer within {timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class ServerGroup:
    """The processes serving one step: one server, or a hub's nodes and
    its Redis."""

    children: list[Child]
    readies: list[dict[str, Any]]
    redis: RedisProcess | None = None

    @property
    def ports(self) -> list[int]:
        return [int(r["port"]) for r in self.readies]

    @property
    def pids(self) -> list[int]:
        pids = [c.pid for c in self.children]
        return pids + ([self.redis.pid] if self.redis is not None else [])

    def stop(self) -> None:
        for child in self.children:
            with contextlib.suppress(OSError):
                child.stop()
        if self.redis is not None:
            self.redis.stop()


# -- machine -------------------------------------------------------------


def git_state() -> str | None:
    """The checkout's commit, and whether its code (tidings in ``src``, the
    harness) has changes, if it is one."""
    root = checkout_root()
    if not (root / ".git").exists():
        return None
    harness = HARNESS.relative_to(root).as_posix()
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src", harness],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not dirty:
        return head
    paths = [line.split()[-1] for line in dirty.splitlines() if line.split()]
    if all(path.startswith(harness + "/") for path in paths):
        return head + f" with uncommitted changes to the benchmark ({harness})"
    return head + " with uncommitted changes in src/"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    return "unknown"


def installed(name: str, found: dict[str, bool]) -> bool:
    """Whether server or client ``name`` can run, by a :func:`probe`."""
    return all(found.get(module, True) for module in NEEDS[name])


def rss(pid: int) -> int:
    value = rss_kib(pid)
    if value is None:
        raise BenchError(f"cannot read the memory of process {pid}")
    return value


# -- progress ------------------------------------------------------------


def duration_text(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Tells where the run is and how long is left; never silent for long.

    On a terminal one status line is redrawn every half second; elsewhere
    (CI, a pipe) a line is printed at each step and each measurement, and at
    least every ``quiet`` seconds while waiting.
    """

    def __init__(self, estimates: list[float], stream: IO[str], quiet: float = 5.0):
        self.estimates = estimates
        self.stream = stream
        self.tty = stream.isatty()
        self.quiet = quiet
        self.index = -1
        self.started = time.monotonic()
        self.step_started = self.started
        self.done_estimate = 0.0
        self.label = ""
        self.status = ""
        self.last_print = 0.0

    def left(self) -> float:
        now = time.monotonic()
        done = sum(self.estimates[: max(self.index, 0)])
        spent = self.step_started - self.started
        scale = min(3.0, max(0.5, spent / done)) if done > 5 and spent > 5 else 1.0
        current = 0.0
        if 0 <= self.index < len(self.estimates):
            current = max(0.0, self.estimates[self.index] - (now - self.step_started))
        rest = sum(self.estimates[self.index + 1 :])
        return (current + rest) * scale

    def step(self, label: str) -> None:
        self.index += 1
        self.step_started = time.monotonic()
        self.label = label
        self.status = "starting"
        self.line(f"{self.prefix()} {label}")

    def prefix(self) -> str:
        return f"[{self.index + 1:>2}/{len(self.estimates)}]"

    def set(self, status: str) -> None:
        self.status = status
        self.tick(force=not self.tty)

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        left = duration_text(self.left())
        text = f"{self.prefix()} {self.label} · {self.status} · ~{left} left"
        if self.tty:
            width = 118
            self.stream.write("\r" + text[:width].ljust(width))
            self.stream.flush()
        elif force or now - self.last_print >= self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_print = now

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 118 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_print = time.monotonic()


# -- steps ---------------------------------------------------------------


@dataclass
class Outcome:
    """The measurements of one scenario on one server (or client)."""

    values: list[float] = field(default_factory=list)
    #: Each value per CPU-second of the measured side (server; client row:
    #: client): steadier than ``values`` when other processes take CPU.
    per_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    #: The kernel's part of ``server_cpu``: system time per wall second.
    server_system: list[float] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    #: Other figures per measurement, by name (latency: ``p50``, ``p999``,
    #: ``max``, ``deliveries/s``...; ``values`` holds its p99).
    series: dict[str, list[float]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "values": self.values,
            "per_cpu": self.per_cpu,
            "client_cpu": self.client_cpu,
            "server_cpu": self.server_cpu,
            "server_system": self.server_system,
            "foreign": self.foreign,
            "info": self.info,
            "notes": self.notes,
            "error": self.error,
            "series": self.series,
        }


@dataclass
class Config:
    python: str
    duration: float
    repeat: int
    warmup: float
    server_cpu: int | None
    client_cpu: int | None
    quiet_wait: float
    quiet_budget: float
    max_foreign: float
    memory_repeat: int
    nice: int
    logs: Path
    smoke: bool
    #: The ``redis-server`` for the hubs of several nodes (None: not there).
    redis: str | None = None
    #: hub-latency: seconds to wait for deliveries after the last publication.
    drain: float = 3.0


def deflate_agreed(out: Outcome, event: dict[str, Any]) -> None:
    """What the server answered to the load client's permessage-deflate
    offer (its ``extensions`` event): in the row's info, and a note when it
    did not agree, for then nothing was compressed."""
    out.info["deflate_offered"] = event.get("offered")
    out.info["deflate_agreed"] = event.get("agreed")
    if event.get("agreed") is None:
        out.notes.append(
            "the server did not agree to permessage-deflate: nothing was compressed"
        )


class Runner:
    def __init__(self, cfg: Config, progress: Progress) -> None:
        self.cfg = cfg
        self.progress = progress
        cfg.logs.mkdir(parents=True, exist_ok=True)
        self.log = (cfg.logs / "children.log").open("ab")

    # processes

    def module(self, name: str, *args: object) -> list[str]:
        return [self.cfg.python, "-m", f"{PACKAGE}.{name}", *map(str, args)]

    def start_server(
        self, server: str, mode: str, *, deflate: bool = False
    ) -> tuple[Child, dict[str, Any]]:
        argv = self.module("servers", server, mode, "--watch-stdin")
        if deflate:
            argv.append("--deflate")
        if self.cfg.nice:
            argv += ["--nice", str(self.cfg.nice)]
        if self.cfg.server_cpu is not None:
            argv += ["--cpu", str(self.cfg.server_cpu)]
        self.log.write(f"\n== {shlex.join(argv)}\n".encode())
        self.log.flush()
        child = Child(server, argv, self.log)
        try:
            ready = wait_events([child], "ready", 60, self.progress.tick)[0]
        except BaseException:
            child.stop(1)
            raise
        return child, ready

    def start_group(
        self, server: str, mode: str, *, deflate: bool = False
    ) -> ServerGroup:
        """Start ``server``: one process, or (:data:`PROCESSES`) a hub's
        nodes on a Redis started for them, everything on the server core;
        with ``deflate``, agreeing to permessage-deflate."""
        name, count, on_redis = PROCESSES.get(server, (server, 1, False))
        if count == 1 and not on_redis:
            child, ready = self.start_server(server, mode, deflate=deflate)
            return ServerGroup([child], [ready])
        redis = None
        argv = self.module("servers", name, mode, "--watch-stdin")
        if deflate:
            argv.append("--deflate")
        if on_redis:
            if self.cfg.redis is None:
                raise BenchError("redis-server not installed")
            self.progress.set("starting redis-server")
            redis = RedisProcess(
                self.cfg.redis, self.log, self.cfg.server_cpu, self.cfg.nice
            )
            argv += ["--redis", redis.url]
        if self.cfg.nice:
            argv += ["--nice", str(self.cfg.nice)]
        if self.cfg.server_cpu is not None:
            argv += ["--cpu", str(self.cfg.server_cpu)]
        self.progress.set(f"starting {count} nodes")
        children: list[Child] = []
        group = ServerGroup(children, [], redis)
        try:
            for i in range(count):
                self.log.write(f"\n== node {i + 1}: {shlex.join(argv)}\n".encode())
                self.log.flush()
                children.append(Child(f"{server} node {i + 1}", argv, self.log))
            group.readies = wait_events(children, "ready", 60, self.progress.tick)
        except BaseException:
            group.stop()
            raise
        return group

    def start_loadgen(
        self, mode: str, port: int, server_pid: int | str, *args: object
    ) -> Child:
        argv = self.module(
            "loadgen",
            mode,
            "--port",
            port,
            "--server-pid",
            server_pid,
            *args,
        )
        if self.cfg.nice:
            argv += ["--nice", str(self.cfg.nice)]
        if self.cfg.client_cpu is not None:
            argv += ["--cpu", str(self.cfg.client_cpu)]
            if self.cfg.server_cpu is not None:
                argv += ["--server-core", str(self.cfg.server_cpu)]
                argv += ["--max-foreign", str(self.cfg.max_foreign)]
        self.log.write(f"== {shlex.join(argv)}\n".encode())
        self.log.flush()
        return Child(f"load client ({mode})", argv, self.log)

    def wait_quiet(self) -> float | None:
        """Wait (at most ``quiet_wait`` s) until other processes leave the two
        cores alone; returns their load if they did not."""
        wait = min(self.cfg.quiet_wait, self.cfg.quiet_budget)
        if wait <= 0:
            return None
        cores = [c for c in (self.cfg.server_cpu, self.cfg.client_cpu) if c is not None]
        started = time.monotonic()
        deadline = started + wait
        load = 0.0
        while True:
            before = core_times()
            time.sleep(0.3)
            after = core_times()
            fractions = [busy_fraction(before, after, c) for c in cores]
            load = max((f for f in fractions if f is not None), default=0.0)
            now = time.monotonic()
            if load < 0.15 or now >= deadline:
                self.cfg.quiet_budget -= now - started
                return None if load < 0.15 else load
            self.progress.set(f"waiting for other processes ({load:.0%} busy)")

    # scenarios

    def bench_step(self, scn: Scenario, server: str) -> Outcome:
        """An echo row, driven by ``tidings bench``, the users' load tool.

        It measures one window more than the row needs, first: as each
        window's line arrives, the server's CPU time and the cores' busy
        time are read, so the first window's end is where the measured ones
        begin. Windows are not taken again when other processes intrude
        (as the raw client's are): that is noted instead.
        """
        out = Outcome()
        busy = self.wait_quiet()
        if busy is not None:
            out.notes.append(f"other processes kept a core {busy:.0%} busy at start")
        group = self.start_group(server, "echo")
        ready = group.readies[0]
        out.info = {k: v for k, v in ready.items() if k not in ("event", "pid", "port")}
        cfg = self.cfg
        repeat = scn.repeat or cfg.repeat
        argv = [
            *(cfg.python, "-m", "tidings", "bench"),
            f"ws://127.0.0.1:{group.ports[0]}/",
            *("-c", str(scn.conns), "-k", str(scn.depth), "-s", str(scn.size)),
            *("-d", str(cfg.duration), "--warmup", str(cfg.warmup)),
            *("--repeat", str(repeat + 1), "--json"),
        ]
        self.log.write(f"== {shlex.join(argv)}\n".encode())
        self.log.flush()
        client = Child("tidings bench", argv, self.log)
        pin_process(client.pid, cfg.client_cpu, cfg.nice)
        out.info["client_loop"] = "tidings bench"
        self.progress.set("connecting, warming up")
        previous: _Reading | None = None
        deadline = time.monotonic() + cfg.warmup + 2 * (repeat + 1) * cfg.duration + 60
        try:
            while not client.eof:
                client.read()
                for event in client.events:
                    if "window" not in event:
                        continue
                    now = (servers_times(group.pids), core_times(), time.perf_counter())
                    if previous is not None:
                        self._bench_window(out, event, previous, now)
                        self.progress.set(
                            f"{event['window']}/{repeat}: "
                            f"{report_mod.number(event['messages_per_second'])} "
                            f"{scn.unit}, load client CPU {event['client_cpu']:.0%}"
                        )
                    previous = now
                client.events.clear()
                if time.monotonic() > deadline:
                    raise BenchError("tidings bench did not finish in time")
                with selectors.DefaultSelector() as sel:
                    sel.register(client.stdout, selectors.EVENT_READ)
                    sel.select(0.5)
                self.progress.tick()
            if client.proc.wait(10) != 0:
                raise BenchError(f"tidings bench exited with {client.proc.returncode}")
        finally:
            client.stop()
            group.stop()
        if out.values:
            self.progress.line(
                f"      {report_mod.cell(out.as_json())} {scn.unit}; CPU: load client "
                f"{report_mod.pct(report_mod.median_of(out.client_cpu))}, server "
                f"{report_mod.pct(report_mod.median_of(out.server_cpu))}"
            )
        return out

    def _bench_window(
        self,
        out: Outcome,
        event: dict[str, Any],
        before: _Reading,
        after: _Reading,
    ) -> None:
        """One measured window of :meth:`bench_step`."""
        value = event["messages_per_second"]
        wall = after[2] - before[2]
        client = event["client_cpu"]
        out.values.append(value)
        out.client_cpu.append(client)
        out.series.setdefault("p50", []).append(event["latency_p50_ms"])
        out.series.setdefault("p99", []).append(event["latency_p99_ms"])
        if event["errors"]:
            out.notes.append(f"{event['errors']} connections or messages failed")
        if before[0] is None or after[0] is None or wall <= 0:
            return
        # As in loadgen.measure: summed from the differences, so that the
        # system part never exceeds the whole in floating point.
        user = after[0][0] - before[0][0]
        system = after[0][1] - before[0][1]
        server = (user + system) / wall
        out.server_cpu.append(server)
        out.server_system.append(system / wall)
        if server > 0:
            out.per_cpu.append(value / server)
        busy_s = busy_fraction(before[1], after[1], self.cfg.server_cpu)
        busy_c = busy_fraction(before[1], after[1], self.cfg.client_cpu)
        if busy_s is not None and busy_c is not None:
            foreign = max(0.0, busy_s - server, busy_c - client)
            out.foreign.append(foreign)
            if foreign > self.cfg.max_foreign:
                out.notes.append(
                    f"other processes took {foreign:.0%} of a core in a window"
                )

    def load_step(
        self, scn: Scenario, server: str, client: str | None = None
    ) -> Outcome:
        out = Outcome()
        busy = self.wait_quiet()
        if busy is not None:
            out.notes.append(f"other processes kept a core {busy:.0%} busy at start")
        mode = "echo"
        if scn.kind in ("broadcast", "hub"):
            mode = scn.kind
        elif scn.kind in ("hub-nodes", *LATENCY_KINDS, *BURST_KINDS):
            mode = "hub"
        group = self.start_group(server, mode, deflate=scn.deflate)
        ready = group.readies[0]
        out.info = {k: v for k, v in ready.items() if k not in ("event", "pid", "port")}
        name, nodes, on_redis = PROCESSES.get(server, (server, 1, False))
        if nodes > 1 or on_redis:
            out.info["nodes"] = nodes
        if group.redis is not None:
            out.info["redis"] = redis_version(group.redis.binary)
        cfg = self.cfg
        latency = scn.kind in LATENCY_KINDS
        repeat = scn.repeat or cfg.repeat
        args: list[object] = [
            "--warmup",
            cfg.warmup,
            "--duration",
            cfg.duration,
            "--repeat",
            repeat,
            "--conns",
            scn.depth if scn.kind == "handshake" else scn.conns,
            "--size",
            scn.size,
            "--depth",
            scn.depth,
            "--sources",
            max(1, min(8, math.ceil(scn.conns / 2000)))
            if scn.kind != "handshake"
            else 8,
        ]
        if client is not None:
            args += ["--client", client]
        if scn.kind in ("hub", "hub-nodes", *LATENCY_KINDS, *BURST_KINDS):
            args += ["--protocol", name, "--publishers", scn.publishers]
        if scn.kind in BURST_KINDS:
            args += ["--burst", scn.burst]
        if scn.deflate:
            args.append("--deflate")
        if len(group.ports) > 1:
            args += ["--ports", ",".join(map(str, group.ports))]
        if latency:
            args += ["--rate", scn.rate, "--drain", cfg.drain]
        kind = "client" if scn.kind == "client" else scn.kind
        if scn.kind == "hub-nodes":
            kind = "hub"
        elif scn.kind == "hub-rate":
            kind = "hub-latency"
        pids = ",".join(map(str, group.pids))
        lg = self.start_loadgen(kind, group.ports[0], pids, *args)
        try:
            self.progress.set("connecting")
            discarded: list[float] = []

            def on_event(child: Child, event: dict[str, Any]) -> None:
                what = event.get("event")
                if what == "hello":
                    out.info["client_loop"] = event.get("loop")
                elif what == "opened":
                    if event.get("failed"):
                        out.notes.append(
                            f"{event['failed']} of {scn.conns} connections "
                            "failed to open"
                        )
                    self.progress.set("warming up")
                elif what == "window":
                    value = event["count"] / event["seconds"]
                    out.client_cpu.append(event["client_cpu"])
                    if event.get("server_cpu") is not None:
                        out.server_cpu.append(event["server_cpu"])
                        out.server_system.append(event["server_system"])
                    if event.get("foreign") is not None:
                        out.foreign.append(event["foreign"])
                    if latency:
                        # The figures come after the drain ("latency").
                        out.series.setdefault("deliveries/s", []).append(value)
                        self.progress.set(
                            f"{event['rep'] + 1}/{repeat}: "
                            f"{report_mod.number(value)} deliveries/s, load "
                            f"client CPU {event['client_cpu']:.0%}"
                        )
                        return
                    out.values.append(value)
                    measured = (
                        event["client_cpu"]
                        if scn.kind == "client"
                        else event.get("server_cpu")
                    )
                    if measured:
                        out.per_cpu.append(value / measured)
                    self.progress.set(
                        f"{event['rep'] + 1}/{repeat}: "
                        f"{report_mod.number(value)} {scn.unit}, "
                        f"load client CPU {event['client_cpu']:.0%}"
                    )
                elif what == "latency":
                    self.latency_event(out, event)
                elif what == "discarded":
                    discarded.append(event["count"] / event["seconds"])
                    self.progress.set(
                        f"measuring again: other processes took "
                        f"{event['foreign']:.0%} of a core"
                    )
                elif what == "note":
                    out.notes.append(str(event.get("text")))
                elif what == "extensions":
                    deflate_agreed(out, event)

            budget = cfg.warmup + 2 * repeat * cfg.duration + 60 + scn.conns / 200
            if latency:
                budget += cfg.drain + 60  # the drain, then the reckoning
            done = wait_events([lg], "done", budget, self.progress.tick, on_event)[0]
            if discarded:
                out.notes.append(
                    f"{len(discarded)} measurement(s) discarded and taken again: "
                    f"other processes took more than {cfg.max_foreign:.0%} of a core"
                )
            if done.get("failed"):
                out.notes.append(f"{done['failed']} connections failed")
            if done.get("delivered", 0) > done.get("most", math.inf):
                out.notes.append(
                    f"counted {done['delivered']:,} deliveries, more than the "
                    f"{done['most']:,} possible: the figures are wrong"
                )
            if done.get("errors"):
                out.notes.append(
                    f"{done['errors']} frames were not what the protocol expects"
                    if scn.kind.startswith("hub")
                    else f"{done['errors']} reads did not match the expected bytes"
                )
            if done.get("stalls"):
                out.notes.append(
                    f"{done['stalls']} stalls: no delivery for 0.2 s, then one more "
                    "broadcast let through (the client was descheduled, or the "
                    "server dropped deliveries)"
                )
            if latency:
                self.latency_done(scn, out, done)
        finally:
            lg.stop()
            group.stop()
        if out.values:
            result = report_mod.cell(out.as_json())
            if latency:
                result = report_mod.latency_cell(out.as_json())
            client_share = report_mod.median_of(out.client_cpu)
            server_share = report_mod.median_of(out.server_cpu)
            split = ""
            if scn.kind in BURST_KINDS:
                split = (
                    f"; server µs per delivery, user + system: "
                    f"{report_mod.split_cell(out.as_json())}"
                )
            self.progress.line(
                f"      {result} {scn.unit}; CPU: load client "
                f"{report_mod.pct(client_share)}, server "
                f"{report_mod.pct(server_share)}{split}"
            )
        return out

    def latency_event(self, out: Outcome, event: dict[str, Any]) -> None:
        """One measurement's latency figures (after the drain)."""
        if "p99" not in event:
            out.notes.append(f"measurement {event['rep'] + 1}: nothing delivered")
            return
        out.values.append(event["p99"])
        for key in ("p50", "p999", "max", "read_p50", "read_p99", "send_late_p99"):
            if key in event:
                out.series.setdefault(key, []).append(event[key])
        expected = max(1, event["expected"])
        out.series.setdefault("missing", []).append(event["missing"] / expected)
        out.series.setdefault("publications/s", []).append(
            event["publications"] / self.cfg.duration
        )
        if event.get("bound"):
            out.info["p99_lower_bound"] = True
        if event.get("bound50"):
            out.info["p50_lower_bound"] = True
        if event.get("duplicates"):
            out.notes.append(
                f"measurement {event['rep'] + 1}: {event['duplicates']:,} "
                "deliveries more than once"
            )

    def latency_done(self, scn: Scenario, out: Outcome, done: dict[str, Any]) -> None:
        """What the end of a latency step says about the load held."""
        sent, skipped = done.get("sent", 0), done.get("skipped", 0)
        out.info["publications_sent"] = sent
        out.info["in_flight_cap"] = done.get("cap")
        if skipped:
            out.notes.append(
                f"the offered rate was not held: {skipped:,} of {sent + skipped:,} "
                f"due publications skipped while {done.get('cap')} were in flight "
                "(deliveries fell behind)"
            )
        missing = out.series.get("missing", [])
        if missing and max(missing) > 0:
            out.notes.append(
                f"up to {max(missing):.1%} of a measurement's deliveries had not "
                f"arrived {self.cfg.drain:g} s after publishing stopped: counted as "
                "arriving then"
                + (
                    ", so the p50 and the p99 are lower bounds"
                    if out.info.get("p50_lower_bound")
                    else ", so the p99 is a lower bound"
                    if out.info.get("p99_lower_bound")
                    else ""
                )
            )
        if done.get("unrecorded"):
            out.notes.append(
                f"{done['unrecorded']:,} deliveries not timed: too many reads to keep"
            )
        if done.get("untimed"):
            out.notes.append(
                f"{done['untimed']:,} reads came without a kernel receive "
                "timestamp: their arrival is taken as their read time"
            )
        drift = done.get("clock_drift_ms")
        if drift is not None and abs(drift) > 0.1:
            out.notes.append(
                f"the wall clock moved {drift:+.2f} ms against the monotonic "
                "clock during the step (time adjusted): latencies may be off by "
                "as much"
            )
        out.info["latency_reckoning_cpu_s"] = done.get("reckoning_cpu")

    def idle_step(self, scns: list[Scenario], server: str, rep: int) -> list[Outcome]:
        """Open the connections of each scenario in turn, largest last, on one
        server; measure its RSS growth per connection. For ``hub-idle`` and
        ``hub-memory``, each client subscribes before it counts as open; for
        ``hub-memory``, one publication reaches them all before the RSS is
        read (with ``deflate``, offered by every client, agreed by the
        server)."""
        outs = [Outcome() for _ in scns]
        self.wait_quiet()
        hub = scns[0].kind in ("hub-idle", "hub-memory")
        deflate = scns[0].deflate
        srv, ready = self.start_server(
            server, "hub" if hub else "echo", deflate=deflate
        )
        info = {k: v for k, v in ready.items() if k not in ("event", "pid", "port")}
        extensions: list[dict[str, Any]] = []
        clients: list[Child] = []
        try:
            limit = fd_limit(srv.pid) or 1024
            used = open_fds(srv.pid) or 32
            # Each accepted connection is one descriptor; keep a margin.
            room = limit - used - 8
            per_client = 10000  # descriptors per load client: under any limit
            biggest = min(max(s.conns for s in scns), room)
            count = max(1, math.ceil(biggest / per_client))
            for i in range(count):
                argv_extra: list[object] = [
                    "--sources",
                    8,
                    "--depth",
                    scns[0].depth,
                    "--timeout",
                    60,
                ]
                if hub:
                    argv_extra += ["--protocol", server, "--size", scns[0].size]
                if deflate:
                    argv_extra.append("--deflate")
                lg = self.start_loadgen("idle", ready["port"], srv.pid, *argv_extra)
                lg.name = f"load client {i + 1} (idle)"
                clients.append(lg)
            self.progress.set("warming up")
            wait_events(
                clients,
                "warm",
                60,
                self.progress.tick,
                lambda _c, e: (
                    extensions.append(e) if e["event"] == "extensions" else None
                ),
            )
            time.sleep(0.3)
            base = rss(srv.pid)
            held = 0
            for scn, out in zip(scns, outs, strict=True):
                out.info = dict(info)
                want = min(scn.conns, room)
                if want < scn.conns:
                    out.notes.append(
                        f"held {want:,}, not {scn.conns:,}: the server may open "
                        f"{limit:,} files (hard limit) and uses {used} itself"
                    )
                more = want - held
                self.progress.set(f"opening {more:,} connections ({held + more:,})")
                shares = [
                    more // count + (1 if i < more % count else 0) for i in range(count)
                ]
                for lg, share in zip(clients, shares, strict=True):
                    lg.send(f"open {share}")
                t0 = time.monotonic()
                opened = wait_events(clients, "opened", 300, self.progress.tick)
                elapsed = time.monotonic() - t0
                alive = sum(int(e["alive"]) for e in opened)
                failed = sum(int(e["failed"]) for e in opened)
                held = sum(int(e["conns"]) for e in opened)
                if scn.kind == "hub-memory":
                    self.progress.set("one publication to every client")
                    clients[0].send("publish")
                    done = wait_events(
                        clients[:1], "published", 90, self.progress.tick
                    )[0]
                    if done["delivered"] < done["expected"]:
                        out.notes.append(
                            f"rep {rep + 1}: the publication reached "
                            f"{done['delivered']:,} of {done['expected']:,} clients"
                        )
                for event in extensions[:1]:
                    deflate_agreed(out, event)
                time.sleep(0.5)
                now = rss(srv.pid)
                server_conns = (open_fds(srv.pid) or used) - used
                per = (now - base) / max(alive, 1)
                out.values.append(per)
                out.info.update(
                    conns=alive,
                    server_fds=server_conns,
                    rss_base_kib=base,
                    rss_kib=now,
                    fd_limit=limit,
                    open_seconds=round(elapsed, 2),
                )
                if failed or alive != want or srv.proc.poll() is not None:
                    out.notes.append(
                        f"rep {rep + 1}: {failed} failed to open"
                        + (" or subscribe" if hub else "")
                        + f", {alive:,} of {want:,} open"
                    )
                self.progress.line(
                    f"      {alive:,} conns: {per:.2f} KiB/conn "
                    f"(RSS {base / 1024:.0f} -> {now / 1024:.0f} MiB)"
                )
        finally:
            for lg in clients:
                lg.send("quit")
            for lg in clients:
                lg.stop()
            srv.stop()
        return outs


# -- the run -------------------------------------------------------------


@dataclass
class Plan:
    label: str
    estimate: float
    run: Callable[[], None]


def estimate(scn: Scenario, cfg: Config) -> float:
    windows = (scn.repeat or cfg.repeat) + (scn.kind == "echo")  # see bench_step
    base = 1.5 + cfg.warmup + windows * cfg.duration
    if scn.kind == "broadcast":
        base += 1 + scn.conns / 2500
    if scn.kind in ("hub", "hub-nodes", *LATENCY_KINDS, *BURST_KINDS):
        base += 1 + scn.conns / 1000
    if scn.kind in ("hub-nodes", "hub-latency"):
        base += 2  # the nodes, and Redis
    if scn.kind in LATENCY_KINDS:
        base += cfg.drain / 2 + scn.rate * cfg.repeat * cfg.duration * scn.conns / 4e6
    return base


def select(names: str | None, known: Iterable[str], what: str) -> list[str] | None:
    if names is None:
        return None
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in wanted if n not in known]
    if bad:
        raise SystemExit(
            f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})"
        )
    return wanted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every row for a moment, tidings only, current interpreter: "
        "proves the benchmark works, measures nothing",
    )
    parser.add_argument(
        "--servers",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(SERVERS)}",
    )
    parser.add_argument(
        "--clients",
        metavar="LIST",
        help=f"client-side row: subset of {','.join(CLIENTS)}",
    )
    parser.add_argument(
        "--scenarios",
        metavar="LIST",
        help="comma-separated subset of " + ",".join(s.key for s in FULL),
    )
    parser.add_argument("--duration", type=float, help="seconds per measurement (3)")
    parser.add_argument("--repeat", type=int, help="measurements per figure (3)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (0.5)")
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for results.json, report.md and the charts "
        "(default: benchmarks/ in the checkout)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        metavar="FILE",
        help="also write the report to FILE (e.g. docs/performance.md), keeping "
        "its <!-- notes --> section",
    )
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="interpreter for servers and load client (default: .bench/venv, "
        "created on first run; --smoke: this one)",
    )
    parser.add_argument(
        "--env",
        type=Path,
        metavar="DIR",
        help="the benchmark's virtual environment (default: .bench/venv)",
    )
    parser.add_argument(
        "--no-setup",
        action="store_true",
        help="never create or fill the environment; use what is there",
    )
    parser.add_argument(
        "--logs",
        type=Path,
        metavar="DIR",
        help="the children's stderr goes to DIR/children.log (default: .bench/logs)",
    )
    parser.add_argument("--no-charts", action="store_true", help="skip the PNGs")
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="FILE",
        help="run nothing: write the report (and charts, --docs) again from a "
        "results.json of an earlier run",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="server core (0)")
    parser.add_argument(
        "--client-cpu", type=int, default=1, help="load client core (1)"
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        metavar="SHARE",
        help="measure a window again (once per step) when other processes "
        "took more than SHARE of a core (0.15; smoke: never)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="run servers and load client at this priority change (e.g. -10, "
        "as root): only on a machine nobody else needs meanwhile",
    )
    parser.add_argument(
        "--redis-server",
        metavar="PATH",
        help="the redis-server for the hubs of several nodes (default: the one "
        "on PATH; without one, those rows are skipped)",
    )
    parser.add_argument(
        "--publishers",
        type=int,
        metavar="N",
        help="hub rows: publish from N subscribers in turn, on different nodes "
        "(1, as every figure on the page unless its title says otherwise)",
    )
    parser.add_argument(
        "--rate",
        type=int,
        metavar="N",
        help="latency rows: publications per second (1,000; smoke: 500); the "
        "titles state it",
    )
    parser.add_argument(
        "--drain",
        type=float,
        metavar="SECONDS",
        help="latency rows: how long to wait for deliveries after the last "
        "publication (3; smoke: 1)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="before each step, wait up to this many seconds (60 in all) for "
        "other processes to leave the cores alone (8; smoke: 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark tidings against websockets, aiohttp and picows, "
        "and the tidings hub against python-socketio. Run from the repository "
        "root; see benchmarks/README.md.",
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks``: run the benchmark; 0 if every step ran."""
    args = build_parser().parse_args(argv)
    command = "python -m benchmarks " + shlex.join(
        list(sys.argv[1:] if argv is None else argv)
    )
    return run(args, command=command.rstrip())


def run(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the benchmark described by parsed ``args``."""
    err = sys.stderr
    say: Callable[[str], None] = lambda text: print(text, file=err, flush=True)  # noqa: E731
    base = default_base()
    if args.from_results is not None:
        data = json.loads(args.from_results.read_text())
        python = args.python or sys.executable
        if (
            args.python is None
            and (bench_dir(base) / "venv" / "bin" / "python").exists()
        ):
            python = str(bench_dir(base) / "venv" / "bin" / "python")
        return write_outputs(
            data, args.out or args.from_results.parent, args, python, say
        )
    smoke_run = bool(args.smoke)
    scenarios = smoke() if smoke_run else FULL
    wanted = select(args.scenarios, [s.key for s in FULL], "scenarios")
    if wanted is not None:
        scenarios = tuple(s for s in scenarios if s.key in wanted)
    if args.rate is not None:
        scenarios = tuple(
            dataclasses.replace(s, rate=max(1, args.rate))
            if s.kind == "hub-latency"
            else s
            for s in scenarios
        )
    if args.publishers is not None:
        scenarios = tuple(
            dataclasses.replace(s, publishers=max(1, args.publishers))
            if s.kind in ("hub", "hub-nodes", "hub-latency")
            else s
            for s in scenarios
        )
    servers = select(args.servers, SERVERS, "servers")
    clients = select(args.clients, CLIENTS, "clients")
    if smoke_run:
        servers = servers or [*TIDINGS, *HUB_TIDINGS, *REDIS_TIDINGS]
        clients = clients or ["raw", "tidings-cb", "tidings"]

    python = args.python
    if python is None and smoke_run:
        python = sys.executable
    if python is None:
        env_dir = args.env or bench_dir(base) / "venv"
        python = ensure_env(env_dir, say, setup=not args.no_setup)
        if python is None:
            say(
                "the benchmark's environment is not there: "
                "tidings only, this interpreter"
            )
            python = sys.executable
    found = probe(python)
    redis_bin = find_redis(args.redis_server)
    why: dict[str, str] = {}
    for s in servers or SERVERS:
        if not installed(s, found["found"]):
            why[s] = "not installed"
        elif s in REDIS_SERVERS and redis_bin is None:
            why[s] = "redis-server not installed"
    missing = [s for s in (servers or SERVERS) if s in why]
    servers = [s for s in (servers or SERVERS) if s not in why]
    if any(s in NPM_SERVERS for s in servers):
        # Bun and Node.js: npm ci into benchmarks/peers, once.
        npm = peers.install(say, setup=not args.no_setup)
        if npm is not None:
            say(f"the npm peers cannot run: {npm}")
            for s in [s for s in servers if s in NPM_SERVERS]:
                why[s] = npm
                missing.append(s)
                servers.remove(s)
    lacking = [s for s in missing if why[s] == "not installed"]
    if lacking:
        say(f"not installed in {python}: {', '.join(lacking)}; running without them")
    no_redis = [s for s in missing if why[s] == "redis-server not installed"]
    if no_redis:
        say(
            "redis-server not installed (--redis-server PATH, or on PATH): "
            "skipping " + ", ".join(no_redis)
        )
    clients = [c for c in (clients or CLIENTS) if installed(c, found["found"])]

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu: int | None = args.server_cpu
    client_cpu: int | None = args.client_cpu
    if server_cpu not in cpus or client_cpu not in cpus or server_cpu == client_cpu:
        say("fewer than two usable cores: server and load client are not pinned")
        server_cpu = client_cpu = None
    elif hasattr(os, "sched_setaffinity"):
        # The runner mostly sleeps; keep it off the server's core.
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {client_cpu})

    repeat = args.repeat or (2 if smoke_run else 3)
    cfg = Config(
        python=python,
        duration=args.duration or (0.25 if smoke_run else 3.0),
        repeat=repeat,
        warmup=args.warmup if args.warmup is not None else (0.1 if smoke_run else 0.5),
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        quiet_wait=args.quiet_wait
        if args.quiet_wait is not None
        else (0.0 if smoke_run else 8.0),
        quiet_budget=0.0 if smoke_run else 60.0,
        max_foreign=args.max_foreign
        if args.max_foreign is not None
        else (1.0 if smoke_run else 0.15),
        memory_repeat=1 if smoke_run else min(repeat, 2),
        nice=args.nice,
        logs=args.logs or bench_dir(base) / "logs",
        smoke=smoke_run,
        redis=redis_bin,
        drain=args.drain if args.drain is not None else (1.0 if smoke_run else 3.0),
    )
    out_dir: Path = args.out or base / "benchmarks"
    results: dict[str, dict[str, Outcome]] = {s.key: {} for s in scenarios}
    plans: list[Plan] = []
    progress = Progress([], err)
    runner = Runner(cfg, progress)
    if not servers:
        raise SystemExit(
            "no server to run: " + ", ".join(f"{s}: {why[s]}" for s in missing)
        )
    client_server = "picows" if "picows" in servers else servers[0]

    def guarded(key: str, name: str, fn: Callable[[], Outcome]) -> Callable[[], None]:
        def step() -> None:
            try:
                results[key][name] = fn()
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                results[key][name] = Outcome(error=str(exc))
                progress.line(f"      failed: {exc}")

        return step

    for scn in scenarios:
        if scn.kind in MEMORY_KINDS:
            continue
        if scn.kind == "client":
            for client in clients:
                label = f"{LABELS[client]} client against {LABELS[client_server]}"
                work = functools.partial(runner.load_step, scn, client_server, client)
                plans.append(
                    Plan(
                        f"{scn.title} · {label}",
                        estimate(scn, cfg),
                        guarded(scn.key, client, work),
                    )
                )
            continue
        step = runner.bench_step if scn.kind == "echo" else runner.load_step
        for server in servers:
            if server in scn.servers:
                work = functools.partial(step, scn, server)
                plans.append(
                    Plan(
                        f"{scn.title} · {LABELS[server]}",
                        estimate(scn, cfg),
                        guarded(scn.key, server, work),
                    )
                )
    # One server per kind (and per deflate: a server agrees to it or not),
    # the rows' connections opened on it in turn.
    groups = [
        sorted(
            (s for s in scenarios if s.kind == kind and s.deflate == deflate),
            key=lambda s: s.conns,
        )
        for kind in MEMORY_KINDS
        for deflate in (False, True)
    ]
    for group in groups:
        if not group:
            continue
        kind = group[0].kind
        for server in servers:
            idle = [s for s in group if server in s.servers]
            if not idle:
                continue
            for rep in range(cfg.memory_repeat):

                def idle_run(
                    v: str = server, r: int = rep, idle: list[Scenario] = idle
                ) -> None:
                    try:
                        outs = runner.idle_step(idle, v, r)
                    except (BenchError, OSError, subprocess.SubprocessError) as exc:
                        progress.line(f"      failed: {exc}")
                        outs = [Outcome(error=str(exc)) for _ in idle]
                    for scn, new in zip(idle, outs, strict=True):
                        old = results[scn.key].setdefault(v, Outcome())
                        old.values += new.values
                        old.notes += new.notes
                        old.info.update(new.info)
                        old.error = old.error or new.error

                biggest = max(s.conns for s in idle)
                hub = kind in ("hub-idle", "hub-memory")
                what = "subscribed clients" if hub else "conns"
                label = "idle memory" if kind != "hub-memory" else "memory"
                if group[0].deflate:
                    what += ", permessage-deflate"
                plans.append(
                    Plan(
                        f"{label}, {' / '.join(f'{s.conns:,}' for s in idle)} "
                        f"{what} · {LABELS[server]} · {rep + 1}/{cfg.memory_repeat}",
                        3 + biggest / (1000 if hub else 2500),
                        idle_run,
                    )
                )

    progress.estimates = [p.estimate for p in plans]
    say(
        f"benchmark: {len(plans)} steps, about "
        f"{duration_text(sum(progress.estimates))}; servers: "
        f"{', '.join(servers)}; interpreter: {python}"
    )
    if server_cpu is not None:
        say(f"servers on core {server_cpu}, load client on core {client_cpu}")
        if any(s in REDIS_SERVERS for s in servers):
            say(
                f"hubs of several nodes: every node and redis-server on core "
                f"{server_cpu}, the load client on core {client_cpu}"
            )
    started = time.time()
    progress.started = time.monotonic()
    for plan in plans:
        progress.step(plan.label)
        plan.run()
    progress.line(f"done in {duration_text(time.time() - started)}")

    meta = {
        "command": command or "python -m benchmarks " + shlex.join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "smoke": smoke_run,
        "duration": cfg.duration,
        "repeat": cfg.repeat,
        "memory_repeat": cfg.memory_repeat,
        "warmup": cfg.warmup,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "client_server": client_server,
        "nice": cfg.nice,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory": mem_total(),
            "kernel": f"{platform.system()} {platform.release()}",
            "python": f"{found['implementation']} {found['python']}",
            "fd_limit": fd_limit(os.getpid()),
        },
        "versions": found["versions"],
        "git": git_state(),
        "servers": servers,
        "missing": missing,
        "why_missing": why,
        "clients": clients,
        "redis_server": redis_bin,
        "drain": cfg.drain,
    }
    data = {
        "meta": meta,
        "scenarios": [
            {
                "key": s.key,
                "title": s.title,
                "kind": s.kind,
                "unit": s.unit,
                "detail": s.detail,
                "conns": s.conns,
                "size": s.size,
                "depth": s.depth,
                "rate": s.rate,
                "publishers": s.publishers,
                "repeat": s.repeat,
                "burst": s.burst,
                "deflate": s.deflate,
                "load": s.load,
                "lower_is_better": s.lower_is_better,
                "results": {k: v.as_json() for k, v in results[s.key].items()},
            }
            for s in scenarios
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    return write_outputs(data, out_dir, args, python, say)


def write_outputs(
    data: dict[str, Any],
    out_dir: Path,
    args: argparse.Namespace,
    python: str,
    say: Callable[[str], None],
) -> int:
    """Charts, ``report.md`` and ``--docs`` from the results; the tables on
    stdout. 1 if a step failed."""
    charts: list[Path] = []
    if not args.no_charts:
        results = args.from_results or out_dir / "results.json"
        # With --docs the charts live beside the page, where the docs site
        # (mkdocs.yml) can serve them; report.md links them from there.
        chart_dir = args.docs.parent / "images" if args.docs else out_dir
        charts = make_charts(python, results, chart_dir, say)
    text = report_mod.render(data, charts, out_dir)
    (out_dir / "report.md").write_text(text)
    if args.docs is not None:
        docs: Path = args.docs
        docs.parent.mkdir(parents=True, exist_ok=True)
        old = docs.read_text() if docs.exists() else ""
        docs.write_text(report_mod.render(data, charts, docs.parent, notes_from=old))
        say(f"report written to {docs}")
    print(report_mod.summary(data))
    say(f"results in {out_dir}")
    failures = [
        f"{s['key']}/{name}"
        for s in data["scenarios"]
        for name, r in s["results"].items()
        if r.get("error")
    ]
    if failures:
        say(f"failed steps: {', '.join(failures)}")
        return 1
    return 0


def make_charts(
    python: str, results: Path, out_dir: Path, say: Callable[[str], None]
) -> list[Path]:
    """Draw the PNGs with matplotlib in the benchmark's interpreter."""
    cmd = [python, "-m", f"{PACKAGE}.charts", str(results), str(out_dir)]
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        say(f"no charts: {exc}")
        return []
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        say(f"no charts: {last}")
        return []
    return [Path(line) for line in out.stdout.split() if line.endswith(".png")]
