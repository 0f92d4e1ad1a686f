"""Count a benchmark server's user-space instructions per echo round trip,
or per connection opened and closed, under valgrind's callgrind: a figure
that a busy machine does not change, unlike a time.

Usage, from the repository root, with the harness's environment
(``.bench/venv``, made by ``python -m benchmarks``):

    .bench/venv/bin/python scripts/instructions.py echo SERVER [CONNS [N [SIZE]]]
    .bench/venv/bin/python scripts/instructions.py handshake SERVER [N]

SERVER is a name of ``benchmarks.harness.servers`` (tidings-cb,
tidings-async, websockets, aiohttp, picows). Counting starts after a warm-up
(``callgrind_control -z``) and ends with a dump; kernel work is not counted.
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness, from a script

from benchmarks.harness.servers import ready_port  # noqa: E402

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
CLOSE = b"\x88\x82\x00\x00\x00\x00\x03\xe8"


def start(name: str, out: str) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    server = subprocess.Popen(
        [
            *("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"),
            *(sys.executable, "-m", "benchmarks.harness.servers", name, "echo"),
            "--watch-stdin",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    return server, ready_port(server, name)


def opened(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock


def echo(socks: list[socket.socket], size: int, rounds: int) -> None:
    """``rounds`` times: one masked binary message of ``size`` bytes on each
    connection, then every echo read."""
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    if size < 126:
        header = bytes([0x82, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x82, 0xFE]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x82, 0xFF]) + size.to_bytes(8, "big")
    frame = header + b"\x00\x00\x00\x00" + payload  # a zero mask changes nothing
    want = len(header) + size
    for _ in range(rounds):
        for sock in socks:
            sock.sendall(frame)
        for sock in socks:
            got = 0
            while got < want:
                got += len(sock.recv(want - got))


def handshake(port: int) -> None:
    """Open, close with 1000, wait for the server's end of TCP."""
    sock = opened(port)
    sock.sendall(CLOSE)
    while sock.recv(4096):
        pass
    sock.close()


def count(server: subprocess.Popen[bytes], out: str) -> int:
    """Dump the counts since the last zeroing; stop the server."""
    subprocess.run(
        ["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True
    )
    assert server.stdin is not None
    server.stdin.close()
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    totals = []
    for path in glob.glob(out + ".*"):
        for line in Path(path).read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                totals.append(int(line.split()[1]))
    return max(totals)


def main(argv: list[str]) -> None:
    mode, name, *rest = argv
    out = f"/tmp/instructions.{name}.{os.getpid()}.out"
    server, port = start(name, out)
    if mode == "echo":
        defaults = ["1", "2000", "32"]
        conns, rounds, size = (int(a) for a in rest + defaults[len(rest) :])
        socks = [opened(port) for _ in range(conns)]
        echo(socks, size, max(20, rounds // 10))
        subprocess.run(
            ["callgrind_control", "-z", str(server.pid)],
            check=True,
            capture_output=True,
        )
        echo(socks, size, rounds)
        per = count(server, out) / (conns * rounds)
        print(f"{name}: {per:,.0f} instructions per round trip ({conns} x {size} B)")
    else:
        n = int(rest[0]) if rest else 200
        for _ in range(20):
            handshake(port)
        subprocess.run(
            ["callgrind_control", "-z", str(server.pid)],
            check=True,
            capture_output=True,
        )
        for _ in range(n):
            handshake(port)
        print(f"{name}: {count(server, out) / n:,.0f} instructions per connection")


if __name__ == "__main__":
    main(sys.argv[1:])
