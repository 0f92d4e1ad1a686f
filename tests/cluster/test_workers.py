"""``tidings serve --workers 2`` as a real process on a real ``redis-server``:
two workers on one port, both serving, publications crossing between them,
a worker SIGKILLed and replaced while its clients come back and recover, and
the parent stopping them all on SIGTERM.

Which worker a client reached is read from each worker's own ``/metrics``
port (``--metrics-port 0``), as a Prometheus scraper would. Every wait is
bounded, and waits on what the processes say, not on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import tidings

from ..conftest import Peer, RedisServer, failing_command, http_request
from .conftest import BOUND, CONFIG

CHANNEL = "chat:workers"
#: ``python -m tidings``, as on a platform without SO_REUSEPORT.
SHARED_SOCKET = """\
import sys
import tidings.hub.workers
from tidings.cli import main
tidings.hub.workers.REUSE_PORT = False
sys.exit(main(sys.argv[1:]))
"""
SERVING = re.compile(
    r"tidings: worker (\d+) \(pid (\d+)\) serving; /metrics on port (\d+)"
)


class Workers:
    """One ``tidings serve --workers N`` process: its port, and its workers
    as it reports them on stderr (index -> pid and metrics port)."""

    def __init__(self, proc: asyncio.subprocess.Process, shared: bool) -> None:
        self.proc = proc
        #: One listening socket for all: whichever worker wakes first
        #: accepts (SO_REUSEPORT spreads connections by their addresses).
        self.shared = shared
        self.port = 0
        self.url = ""
        self.workers: dict[int, tuple[int, int]] = {}
        self.log: list[str] = []
        self.said = asyncio.Condition()
        self.peers: list[Peer] = []
        self.reading = asyncio.create_task(self.read_stderr())

    async def ended(self) -> None:
        """Until the parent and every worker are gone: all of them hold its
        stdout and stderr."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(BOUND):
            await asyncio.gather(self.reading, self.proc.stdout.read())

    async def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode():
            async with self.said:
                self.log.append(line)
                if match := SERVING.match(line):
                    index, pid, metrics = map(int, match.groups())
                    self.workers[index] = (pid, metrics)
                self.said.notify_all()

    async def until_said(self, pattern: str) -> re.Match[str]:
        """The first stderr line that matches ``pattern``, once it comes."""
        found: list[re.Match[str]] = []

        def said() -> bool:
            found[:] = [m for line in self.log if (m := re.search(pattern, line))]
            return bool(found)

        try:
            async with asyncio.timeout(BOUND), self.said:
                await self.said.wait_for(said)
        except TimeoutError:
            raise AssertionError(f"never said {pattern!r}: {self.log}") from None
        return found[0]

    async def connections(self, index: int) -> int:
        """Worker ``index``'s ``tidings_connections``, from its /metrics."""
        answer = await http_request(self.workers[index][1], "GET", "/metrics")
        assert answer.status == 200, answer
        match = re.search(rb"^tidings_connections (\d+)$", answer.body, re.M)
        assert match is not None, answer.body
        return int(match.group(1))

    async def connect(self) -> Peer:
        """A raw peer on the shared port that has sent connect."""
        async with asyncio.timeout(BOUND):
            ws = await tidings.connect(self.url)
        peer = Peer(ws, self)
        peer.bound = BOUND
        self.peers.append(peer)
        peer.client = (await peer.result("connect"))["client"]
        return peer

    async def connect_on(self, index: int) -> Peer:
        """A peer on worker ``index``. On one shared listening socket, the
        other workers are stopped meanwhile (SIGSTOP), so that it is the one
        to accept; with SO_REUSEPORT, connections the kernel gives to the
        others are closed again (at most 100 tries)."""
        if self.shared:
            others = [pid for i, (pid, _) in self.workers.items() if i != index]
            before = await self.connections(index)
            for pid in others:
                os.kill(pid, signal.SIGSTOP)
            try:
                peer = await self.connect()
            finally:
                for pid in others:
                    os.kill(pid, signal.SIGCONT)
            assert await self.connections(index) > before
            return peer
        for _ in range(100):
            before = await self.connections(index)
            peer = await self.connect()
            if await self.connections(index) > before:
                return peer
            await peer.ws.close()
            self.peers.remove(peer)
        raise AssertionError(f"100 connections, none on worker {index}")

    async def stop(self) -> int:
        """SIGTERM; the exit status (bounded)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(BOUND):
            return await self.proc.wait()


@contextlib.asynccontextmanager
async def serve_workers(
    tmp_path: Path, broker: str, *settings: str, shared_socket: bool = False
) -> Any:
    """``tidings serve --workers 2`` until the block ends, then SIGTERM
    (SIGKILL if it is still running: the test failed anyway). With
    ``shared_socket``, as where the platform has no ``SO_REUSEPORT``."""
    config = tmp_path / "hub.toml"
    config.write_text("\n".join(settings) + "\n" + CONFIG)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *(("-c", SHARED_SOCKET) if shared_socket else ("-m", "tidings")),
        *("serve", "--workers", "2", "--port", "0"),
        *("--metrics-port", "0", "--no-demo", "--broker", broker),
        *("--config", str(config)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    hub = Workers(proc, shared_socket)
    try:
        async with asyncio.timeout(BOUND):
            first = (await proc.stdout.readline()).decode()
            banner = [first]
            while not banner[-1].startswith("  /metrics of each worker"):
                banner.append((await proc.stdout.readline()).decode())
                assert banner[-1], (banner, hub.log)
        prefix = "tidings hub running at http://127.0.0.1:"
        assert first.startswith(prefix), banner
        hub.port = int(first[len(prefix) :].strip().rstrip("/"))
        hub.url = f"ws://127.0.0.1:{hub.port}/ws"
        how = "one listening socket" if shared_socket else "SO_REUSEPORT"
        assert f"2 workers sharing the port ({how})" in "".join(banner), banner
        await hub.until_said("worker 0 .* serving")
        await hub.until_said("worker 1 .* serving")
        try:
            yield hub
        finally:
            async with asyncio.timeout(BOUND):
                await asyncio.gather(
                    *(peer.ws.close() for peer in hub.peers), return_exceptions=True
                )
            await hub.stop()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        # Workers that outlived their parent (a failed test) hold its stderr.
        for pid, _ in hub.workers.values():
            if spawned(pid):
                os.kill(pid, signal.SIGKILL)
        await hub.ended()


def spawned(pid: int) -> bool:
    """Whether ``pid`` is (still) a worker process."""
    try:
        return b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def offsets(pubs: list[dict[str, Any]]) -> list[int]:
    return [pub["offset"] for pub in pubs]


@pytest.mark.parametrize("shared_socket", [False, True], ids=["reuseport", "shared"])
async def test_two_workers_serve_one_port_and_replace_a_killed_one(
    redis: RedisServer, tmp_path: Path, shared_socket: bool
) -> None:
    async with serve_workers(tmp_path, redis.url, shared_socket=shared_socket) as hub:
        # One publisher known to be on each worker, then 198 more clients.
        on_0, on_1 = await hub.connect_on(0), await hub.connect_on(1)
        clients = [on_0, on_1]
        clients += await asyncio.gather(*(hub.connect() for _ in range(198)))
        served = [await hub.connections(0), await hub.connections(1)]
        assert sum(served) == 200 and min(served) > 0, served

        epochs = set()
        for peer in clients:
            epochs.add((await peer.result("subscribe", channel=CHANNEL))["epoch"])
        assert len(epochs) == 1, epochs
        (epoch,) = epochs
        # Across workers, both ways: every client gets both, in order.
        await on_0.result("publish", channel=CHANNEL, data="from 0")
        await on_1.result("publish", channel=CHANNEL, data="from 1")
        for peer in clients:
            pubs = await peer.pubs(2, CHANNEL)
            assert [(p["offset"], p["data"]) for p in pubs] == [
                (1, "from 0"),
                (2, "from 1"),
            ], peer

        # Worker 1 dies without a word; its clients see 1006.
        old_pid = hub.workers[1][0]
        os.kill(old_pid, signal.SIGKILL)
        await hub.until_said(
            rf"worker 1 \(pid {old_pid}\) was killed by SIGKILL; starting another"
        )
        dropped = clients[1:]
        codes = await asyncio.gather(*(closed_or_open(peer) for peer in dropped))
        assert set(codes) <= {1006, 0}, codes
        movers = [peer for peer, code in zip(dropped, codes, strict=True) if code]
        stayers = [on_0, *(p for p, c in zip(dropped, codes, strict=True) if not c)]
        assert on_1 in movers and len(movers) == served[1], (len(movers), served)

        # Worker 0 publishes while they are away, and on while they come back.
        missed = await on_0.publish_many(CHANNEL, list(range(3, 53)))
        assert offsets(missed) == list(range(3, 53))
        publishing = asyncio.create_task(
            on_0.publish_many(CHANNEL, list(range(53, 103)))
        )
        since = {"offset": 2, "epoch": epoch}

        async def come_back() -> Peer:
            peer = await hub.connect()
            result = await peer.result("subscribe", channel=CHANNEL, since=since)
            assert result["recovered"] is True and result["epoch"] == epoch, result
            recovered = result["publications"]
            live = await peer.pubs(102 - result["offset"], CHANNEL)
            assert offsets(recovered + live) == list(range(3, 103)), peer
            assert [p["data"] for p in recovered + live] == list(range(3, 103))
            return peer

        returned = await asyncio.gather(*(come_back() for _ in movers))
        async with asyncio.timeout(BOUND):
            await publishing
        for peer in stayers:
            assert offsets(await peer.pubs(100, CHANNEL)) == list(range(3, 103))

        # The parent replaced worker 1, and the new one serves and delivers.
        await hub.until_said(rf"worker 1 \(pid (?!{old_pid}\))\d+\) serving")
        assert not alive(old_pid)
        newcomers = [await hub.connect_on(1) for _ in range(3)]
        for peer in newcomers:
            await peer.result("subscribe", channel=CHANNEL)
        await newcomers[0].result("publish", channel=CHANNEL, data="from the new 1")
        for peer in [*stayers, *returned, *newcomers]:
            (pub,) = await peer.pubs(1, CHANNEL)
            assert (pub["offset"], pub["data"]) == (103, "from the new 1"), peer

        # SIGTERM: every worker closes its clients with 1001, and the parent
        # exits with 0 once they all stopped cleanly.
        assert await hub.stop() == 0
        for peer in [*stayers, *returned, *newcomers]:
            assert await peer.closed() == 1001, peer
        await hub.until_said("stopping the workers")


async def closed_or_open(peer: Peer) -> int:
    """1006 if ``peer``'s worker died (its connection is gone), 0 if a ping
    still comes back."""
    try:
        await peer.result("ping")
    except tidings.ConnectionClosed:
        return peer.ws.close_code or 1006
    return 0


async def test_sigterm_stops_every_worker_and_kills_one_that_hangs(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with serve_workers(tmp_path, redis.url, "shutdown_timeout = 2.0") as hub:
        peers = [await hub.connect_on(0), await hub.connect_on(1)]
        (pid_0, _), (pid_1, _) = hub.workers[0], hub.workers[1]
        # Worker 1 cannot answer SIGTERM: the parent must kill it.
        os.kill(pid_1, signal.SIGSTOP)
        assert await hub.stop() == 1
        assert await peers[0].closed() == 1001  # worker 0 closed its clients
        await hub.until_said(f"worker pid {pid_1} still running 2 s after SIGTERM")
        assert not alive(pid_0) and not alive(pid_1)


async def test_workers_stop_when_their_parent_is_killed(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with serve_workers(tmp_path, redis.url) as hub:
        peers = [await hub.connect_on(0), await hub.connect_on(1)]
        hub.proc.kill()  # no SIGTERM to pass on: each worker sees it gone
        for peer in peers:
            assert await peer.closed() == 1001
        await hub.ended()


async def test_workers_refuse_the_memory_broker() -> None:
    message = await failing_command("serve", "--workers", "2", "--port", "0")
    assert message.startswith("tidings: invalid configuration: workers needs a")
    assert "memory broker" in message and "redis://" in message
