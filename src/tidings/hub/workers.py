"""``tidings serve --workers N``: N processes serving one port, each a node of
the same hub on the configured broker, and the parent that starts them,
restarts one that dies and stops them all (docs/scaling.md, Workers).

On Linux each worker binds the port itself with ``SO_REUSEPORT``, and the
kernel spreads new connections evenly over them. Elsewhere (macOS has
``SO_REUSEPORT`` but hands every connection to one socket) the parent binds
and listens, and the workers accept from the socket they inherit.

Workers are started with ``multiprocessing``'s spawn method: a fresh
interpreter each, which inherits no event loop, thread or lock of the
parent's; they are given the configuration, not the command line, so a
restarted worker runs with what its siblings run with.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from .config import HubConfig

__all__ = ["REUSE_PORT", "Worker", "restart_delay", "supervise", "worker_count"]

#: Whether workers bind the port themselves (``SO_REUSEPORT`` balancing the
#: connections), rather than share the parent's listening socket.
REUSE_PORT = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")

#: Seconds a worker must live for its death to count as a crash at start.
#: Restarts after such crashes back off from RESTART_DELAY, doubling, and
#: after MAX_QUICK_FAILURES in a row the parent stops everything: a worker
#: that can never start must not spin.
STEADY_AFTER = 10.0
RESTART_DELAY = 0.5
MAX_QUICK_FAILURES = 5


def restart_delay(quick_failures: int) -> float | None:
    """Seconds before a dead worker is started again, after this many
    deaths in a row within STEADY_AFTER of its start (0: it had run
    steadily); None: give up."""
    if quick_failures >= MAX_QUICK_FAILURES:
        return None
    return quick_failures and RESTART_DELAY * 2 ** (quick_failures - 1)


def worker_count(requested: int) -> int:
    """``requested`` workers; for 0, one per core this process may run on."""
    if requested:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Worker:
    """What a worker process is told by its parent."""

    index: int
    #: The parent's listening socket; None where each worker binds the port
    #: with ``SO_REUSEPORT``.
    sock: socket.socket | None
    #: Where the worker tells the parent that it serves.
    ready: Connection

    def metrics_port(self, base: int | None) -> int | None:
        """This worker's ``metrics_port``: ``base + index`` (0 stays 0)."""
        return base and base + self.index

    def serving(self, metrics_port: int | None, banner: list[str]) -> None:
        """Tell the parent that this worker serves: its metrics port, and
        the lines ``tidings serve`` prints then (the parent prints the first
        worker's)."""
        self.ready.send((metrics_port, banner))
        self.ready.close()

    def on_parent_gone(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once, in the running loop, if the parent dies
        (a SIGKILL it could not pass on): no worker outlives it."""
        parent = multiprocessing.parent_process()
        if parent is None:
            return
        loop = asyncio.get_running_loop()

        def gone() -> None:
            loop.remove_reader(parent.sentinel)
            callback()

        loop.add_reader(parent.sentinel, gone)


#: What runs one worker: given the configuration (its port resolved) and the
#: :class:`Worker`, serve until told to stop; return the exit status. A
#: module-level function, so that the spawned process can import it.
RunWorker = Callable[[HubConfig, Worker], int]


def supervise(config: HubConfig, run: RunWorker) -> int:
    """Run ``config.workers`` workers until SIGTERM or SIGINT; return the
    exit status: 0 when every worker stopped cleanly."""
    count = worker_count(config.workers)
    if config.metrics_port and config.metrics_port + count - 1 > 65535:
        return _fail(f"metrics_port + {count - 1} workers is past port 65535")
    try:
        holder = _bind(config)
    except OSError as exc:
        return _fail(f"cannot listen on {config.host} port {config.port}: {exc}")
    with holder:
        config = replace(config, port=holder.getsockname()[1])
        return _Supervisor(config, run, count, None if REUSE_PORT else holder).run()


def _bind(config: HubConfig) -> socket.socket:
    """The parent's socket on the port: listening, for the workers to
    inherit; or, with ``SO_REUSEPORT``, bound only, which holds the port
    (port 0 resolved) while workers come and go without ever being handed
    a connection, since only listening sockets are."""
    family, kind, proto, _, address = socket.getaddrinfo(
        config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if REUSE_PORT:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if not REUSE_PORT:
            sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Slot:
    """One worker's place: the process in it now and its record."""

    index: int
    process: BaseProcess | None = None
    #: The parent's end of the ready pipe, until the worker says it serves.
    ready: Connection | None = None
    started: float = 0.0
    #: Crashes at start in a row (STEADY_AFTER).
    failures: int = 0
    restart_at: float | None = None


class _Supervisor:
    def __init__(
        self,
        config: HubConfig,
        run: RunWorker,
        count: int,
        sock: socket.socket | None,
    ) -> None:
        self.config = config
        self.run_worker = run
        self.sock = sock
        self.context = multiprocessing.get_context("spawn")
        self.slots = [_Slot(index) for index in range(count)]
        #: Set once every first worker has served: until then, a worker
        #: that dies is a configuration that cannot serve, and stops all.
        self.announced = False
        #: By worker: its metrics port and banner, as it last said.
        self.served: dict[int, tuple[int | None, list[str]]] = {}

    def run(self) -> int:
        wakeup, signalled = socket.socketpair()
        signalled.setblocking(False)
        previous = {
            signum: signal.signal(signum, lambda *_: None)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        old_fd = signal.set_wakeup_fd(signalled.fileno())
        try:
            for slot in self.slots:
                self._start(slot)
            status = self._watch(wakeup)
            return self._stop_all() or status
        finally:
            signal.set_wakeup_fd(old_fd)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            wakeup.close()
            signalled.close()

    def _start(self, slot: _Slot) -> None:
        parent_end, child_end = self.context.Pipe(duplex=False)
        worker = Worker(slot.index, self.sock, child_end)
        process = self.context.Process(
            target=_worker_main,
            args=(self.run_worker, self.config, worker),
            name=f"tidings-worker-{slot.index}",
        )
        process.start()
        child_end.close()  # the worker holds it now: its death reads as EOF
        slot.process, slot.ready = process, parent_end
        slot.started, slot.restart_at = time.monotonic(), None

    def _watch(self, wakeup: socket.socket) -> int:
        """Watch the workers until a signal comes (0) or they cannot be
        kept running (1)."""
        while True:
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._start(slot)
            events: dict[Any, tuple[str, _Slot | None]] = {wakeup: ("signal", None)}
            for slot in self.slots:
                if slot.process is not None:
                    events[slot.process.sentinel] = ("exit", slot)
                if slot.ready is not None:
                    events[slot.ready] = ("ready", slot)
            due = [slot.restart_at for slot in self.slots if slot.restart_at]
            timeout = max(0.0, min(due) - now) if due else None
            # Sorted so that a worker's ready message is read before its
            # exit is handled, when both come at once.
            for handle in sorted(wait(list(events), timeout), key=_ready_first):
                kind, which = events[handle]
                if which is None:
                    wakeup.recv(64)
                    _log("stopping the workers")
                    return 0
                if kind == "ready":
                    self._ready(which)
                elif not self._exited(which):
                    return 1

    def _ready(self, slot: _Slot) -> None:
        assert slot.ready is not None and slot.process is not None
        try:
            metrics, banner = slot.ready.recv()
        except EOFError:  # it died first: its exit is handled next
            pass
        else:
            where = f"; /metrics on port {metrics}" if metrics is not None else ""
            _log(f"worker {slot.index} (pid {slot.process.pid}) serving{where}")
            self.served[slot.index] = (metrics, banner)
        slot.ready.close()
        slot.ready = None
        if not self.announced and len(self.served) == len(self.slots):
            self.announced = True
            self._announce()

    def _exited(self, slot: _Slot) -> bool:
        """Handle a worker's death; return False to stop everything."""
        assert slot.process is not None
        process, slot.process = slot.process, None
        process.join()
        if slot.ready is not None:
            slot.ready.close()
            slot.ready = None
        how = _status(process.exitcode)
        if not self.announced:
            _log(f"worker {slot.index} {how} before it served; stopping")
            return False
        quick = time.monotonic() - slot.started < STEADY_AFTER
        slot.failures = slot.failures + 1 if quick else 0
        delay = restart_delay(slot.failures)
        if delay is None:
            _log(
                f"worker {slot.index} {how}, the {slot.failures}th time in a row "
                f"within {STEADY_AFTER:g} s of its start; giving up"
            )
            return False
        _log(
            f"worker {slot.index} (pid {process.pid}) {how}; "
            f"starting another in {delay:g} s"
        )
        slot.restart_at = time.monotonic() + delay
        return True

    def _stop_all(self) -> int:
        """SIGTERM every worker, SIGKILL those still running after
        ``shutdown_timeout``; 1 if any did not stop cleanly."""
        running = [slot.process for slot in self.slots if slot.process is not None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + self.config.shutdown_timeout
        status = 0
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                _log(
                    f"worker pid {process.pid} still running "
                    f"{self.config.shutdown_timeout:g} s after SIGTERM; killing it"
                )
                process.kill()
                process.join()
            if process.exitcode != 0:
                status = 1
        return status

    def _announce(self) -> None:
        how = "SO_REUSEPORT" if REUSE_PORT else "one listening socket"
        pids = ", ".join(
            str(slot.process.pid) for slot in self.slots if slot.process is not None
        )
        lines = [
            *self.served[0][1],
            f"  {len(self.slots)} workers sharing the port ({how}), pids {pids}",
        ]
        ports = [self.served[index][0] for index in sorted(self.served)]
        if None not in ports:
            listed = ", ".join(str(port) for port in ports)
            lines.append(f"  /metrics of each worker on ports {listed}")
        print("\n".join(lines), flush=True)


def _worker_main(run: RunWorker, config: HubConfig, worker: Worker) -> None:
    """A worker process's body (spawned: a fresh interpreter)."""
    sys.exit(run(config, worker))


def _ready_first(handle: object) -> bool:
    return not isinstance(handle, Connection)


def _status(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


def _log(message: str) -> None:
    print(f"tidings: {message}", file=sys.stderr, flush=True)


def _fail(message: str) -> int:
    _log(message)
    return 1
