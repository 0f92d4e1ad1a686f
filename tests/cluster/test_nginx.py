"""The nginx configuration of docs/scaling.md, as it is on that page (only
its ports changed), in front of two ``tidings serve`` nodes on one Redis."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import tidings

from ..conftest import Peer, RedisServer, free_port, http_request, skip_unless_ci
from .conftest import BOUND, Cluster

SCALING = Path(__file__).parents[2] / "docs" / "scaling.md"
KEY = "an API key for the nodes behind nginx"
AUTH = (("Authorization", f"apikey {KEY}"),)


def documented_config() -> str:
    """The ```nginx block of docs/scaling.md."""
    match = re.search(r"```nginx\n(.*?)```", SCALING.read_text(), re.S)
    assert match is not None
    return match.group(1)


class Nginx:
    """nginx in the foreground, as a child of this test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, nodes: list[int]) -> None:
        binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if binary is None:
            skip_unless_ci("nginx is not installed")
        assert binary is not None
        folder = self.folder
        config = documented_config()
        config = config.replace("127.0.0.1:8001", f"127.0.0.1:{nodes[0]}")
        config = config.replace("127.0.0.1:8002", f"127.0.0.1:{nodes[1]}")
        config = config.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        # Files of this test's own, so that it runs without root too.
        config = config.replace(
            "http {\n",
            "http {\n"
            f"    access_log off;\n    client_body_temp_path {folder}/body;\n"
            f"    proxy_temp_path {folder}/proxy;\n",
            1,
        )
        (folder / "nginx.conf").write_text(config)
        conf = str(folder / "nginx.conf")
        directives = f"daemon off; pid {folder}/pid; error_log {folder}/error.log;"
        self.proc = subprocess.Popen(
            [binary, "-p", str(folder), "-c", conf, "-g", directives]
        )
        async with asyncio.timeout(BOUND):  # until it accepts connections
            while True:
                assert self.proc.poll() is None, (folder / "error.log").read_text()
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                return

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(BOUND)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path)
    yield server
    server.stop()


async def test_two_nodes_behind_nginx_act_as_one_hub(
    cluster: Cluster, redis: RedisServer, nginx: Nginx
) -> None:
    # Behind a proxy the API needs a key (docs/security.md).
    nodes = await cluster.start(2, redis, api_key=KEY)
    await nginx.start([node.port for node in nodes])
    port = nginx.port
    peers = []
    for _ in range(4):
        async with asyncio.timeout(BOUND):
            ws = await tidings.connect(f"ws://127.0.0.1:{port}/ws")
        peer = Peer(ws, "nginx")
        peer.bound = BOUND
        cluster.peers.append(peer)
        await peer.result("connect")
        await peer.result("subscribe", channel="chat:lb")
        peers.append(peer)
    # nginx spread them over both nodes...
    for node in nodes:
        metrics = (
            await http_request(node.port, "GET", "/metrics", headers=AUTH)
        ).body.decode()
        assert "tidings_connections 2" in metrics.splitlines(), metrics
    # ...and a publication through nginx (on one node) reaches them all.
    body = {"channel": "chat:lb", "data": "hello"}
    answer = await http_request(port, "POST", "/api/publish", body, headers=AUTH)
    assert answer.status == 200, answer
    for peer in peers:
        assert [p["data"] for p in await peer.pubs(1)] == ["hello"]
    # So does one from a client through nginx, and the API sees every node.
    await peers[0].result("publish", channel="chat:lb", data="from a client")
    for peer in peers:
        assert [p["data"] for p in await peer.pubs(1)] == ["from a client"]
    channels = (await http_request(port, "GET", "/api/channels", headers=AUTH)).json()
    assert channels == {"channels": [{"channel": "chat:lb", "subscribers": 4}]}
    assert (await http_request(port, "GET", "/healthz")).status == 200
    presence = await http_request(
        nodes[0].port, "GET", "/api/presence?channel=chat:lb", headers=AUTH
    )
    assert presence.json()["clients"]
