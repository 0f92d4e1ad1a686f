"""Tests of the ``tidings`` command line, run as real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import errno
import re
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import tidings
from tidings.cli import _describe_failure, main
from tidings.engine.connection import WebSocket
from tidings.engine.eventloop import loop_name
from tidings.protocol import Request

#: Bound on every wait for a process: generous, since CI machines can be slow.
TIMEOUT = 30.0

REFUSED = errno.ECONNREFUSED

READY = re.compile(rb"echo server listening on (wss?)://127\.0\.0\.1:(\d+)/\n")


async def run_cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run ``python -m tidings ARGS`` with ``stdin``; return status, stdout
    and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            out, err = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def echo_server(
    *args: str,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start ``tidings echo`` on a free port; yield the process and its URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "echo",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = await proc.stdout.readline()
        match = READY.fullmatch(line)
        assert match is not None, line
        scheme, port = match[1].decode(), match[2].decode()
        yield proc, f"{scheme}://127.0.0.1:{port}/"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("tidings: "), err
    for fragment in fragments:
        assert fragment in err


# -- in-process commands ---------------------------------------------------


def test_version_names_the_event_loop(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"tidings {tidings.__version__} (Python ")
    assert loop_name() in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "echo" in out and "connect" in out and "demo" in out


def test_demo_still_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "hello"]) == 0
    assert capsys.readouterr().out


def test_connect_help_documents_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["connect", "--help"])
    out = capsys.readouterr().out
    assert "exit status" in out and "1000, 1001 or 1005" in out


def test_echo_rejects_a_cert_without_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["echo", "--tls-cert", "cert.pem"])
    assert exit_info.value.code == 2
    assert "--tls-key" in capsys.readouterr().err


def test_connect_rejects_a_malformed_header(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["connect", "ws://127.0.0.1:1/", "--header", "no colon"])
    assert exit_info.value.code == 2
    assert "'Name: value'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "description"),
    [
        (TimeoutError("opening took longer than 10.0 s"), "timed out"),
        (ConnectionRefusedError(REFUSED, "Connect call failed"), "connection refused"),
        (
            OSError(f"Multiple exceptions: [Errno {REFUSED}] a, [Errno {REFUSED}] b"),
            "connection refused",
        ),
        (socket.gaierror(-2, "Name or service not known"), "name or service not known"),
        (tidings.InvalidStatus(404), "server answered HTTP 404"),
        (tidings.ConnectionClosed(1006), "the connection closed during the handshake"),
    ],
)
def test_connect_failures_are_described(error: Exception, description: str) -> None:
    assert _describe_failure(error) == description


# -- tidings echo ------------------------------------------------------------


async def test_echo_server_echoes_text_and_binary() -> None:
    async with echo_server() as (_, url), tidings.connect(url) as ws:
        await ws.send("hello")
        await ws.send(b"\x00\xffbinary")
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == "hello"
            assert await ws.recv() == b"\x00\xffbinary"


async def test_echo_server_max_size_zero_means_unlimited() -> None:
    big = "x" * (3 << 20)
    async with (
        echo_server("--max-size", "0", "--no-compression") as (_, url),
        tidings.connect(url, max_message_size=None) as ws,
    ):
        await ws.send(big)
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == big


async def test_echo_server_enforces_max_size() -> None:
    async with (
        echo_server("--max-size", "10") as (_, url),
        tidings.connect(url) as ws,
    ):
        await ws.send("x" * 11)
        async with asyncio.timeout(TIMEOUT):
            await ws.wait_closed()
    assert ws.close_code == 1009


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_echo_server_stops_on_signal_with_1001(signum: int) -> None:
    async with echo_server() as (proc, url), tidings.connect(url) as ws:
        await ws.send("ping")
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == "ping"
            proc.send_signal(signum)
            await ws.wait_closed()
            assert await proc.wait() == 0
        assert ws.close_code == 1001


async def test_echo_server_reports_a_busy_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        status, out, err = await run_cli("echo", "--port", str(port))
    assert status == 1 and out == ""
    assert_one_line_error(err, "cannot listen on 127.0.0.1 port")


# -- tidings connect ----------------------------------------------------------


async def test_connect_pipes_stdin_through_the_echo_server() -> None:
    async with echo_server() as (_, url):
        status, out, err = await run_cli("connect", url, stdin=b"hi\nthere\n")
    assert (status, out) == (0, "hi\nthere\n"), err
    assert "closed: 1000" in err
    assert "Traceback" not in err


async def test_connect_sends_a_last_line_without_newline_and_crlf() -> None:
    async with echo_server() as (_, url):
        status, out, _ = await run_cli(
            "connect", url, "--no-compression", stdin=b"one\r\n\nlast"
        )
    assert (status, out) == (0, "one\n\nlast\n")


async def test_connect_with_empty_stdin_closes_at_once() -> None:
    async with echo_server() as (_, url):
        status, out, err = await run_cli("connect", url)
    assert (status, out) == (0, "")
    assert "closed: 1000" in err


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port where nothing listens: bound, never listening, so that no other
    process can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_connect_to_a_closed_port(closed_port: int) -> None:
    url = f"ws://127.0.0.1:{closed_port}/"
    status, out, err = await run_cli("connect", url)
    assert (status, out) == (1, "")
    assert_one_line_error(err, f"cannot connect to {url}: connection refused")


async def test_connect_to_an_invalid_uri() -> None:
    status, out, err = await run_cli("connect", "http://127.0.0.1/")
    assert (status, out) == (1, "")
    assert_one_line_error(err, "not a WebSocket URI")


async def test_connect_refused_with_403() -> None:
    def refuse(request: Request) -> tidings.HTTPResponse:
        return tidings.HTTPResponse(403, "no")

    async with tidings.serve(_echo, "127.0.0.1", 0, process_request=refuse) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        status, out, err = await run_cli("connect", url)
    assert (status, out) == (1, "")
    assert_one_line_error(err, f"cannot connect to {url}: server answered HTTP 403")


async def test_connect_sends_headers_and_offers_subprotocols() -> None:
    seen: list[str | None] = []

    def look(request: Request) -> None:
        seen.append(request.headers.get("X-Token"))

    async with tidings.serve(
        _echo, "127.0.0.1", 0, process_request=look, subprotocols=["chat"]
    ) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        status, out, err = await run_cli(
            "connect",
            url,
            "--header",
            "X-Token: s3cret",
            "--subprotocol",
            "other",
            "--subprotocol",
            "chat",
            stdin=b"hi\n",
        )
    assert (status, out) == (0, "hi\n"), err
    assert seen == ["s3cret"]
    assert "subprotocol chat" in err


async def test_connect_exits_1_when_the_server_closes_with_an_error() -> None:
    async def fail(ws: WebSocket) -> None:
        await ws.recv()
        await ws.close(1011, "boom")

    async with tidings.serve(fail, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        status, _, err = await run_cli("connect", url, stdin=b"go\n")
    assert status == 1
    assert "closed: 1011 boom" in err
    assert "Traceback" not in err


async def test_connect_exits_0_when_the_server_closes_with_1001() -> None:
    async def leave(ws: WebSocket) -> None:
        await ws.recv()
        await ws.close(1001)

    async with tidings.serve(leave, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        status, _, err = await run_cli("connect", url, stdin=b"go\n")
    assert status == 0
    assert "closed: 1001" in err


async def test_connect_reads_on_while_closing() -> None:
    # More messages than the client queues before it stops reading: the close
    # frame behind them is read only if the client drains them while closing.
    async def chatter(ws: WebSocket) -> None:
        for i in range(500):
            await ws.send(f"news {i}")
        await ws.recv()

    async with tidings.serve(chatter, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        status, _, err = await run_cli("connect", url)
    assert status == 0
    assert "closed: 1000" in err


async def _to_binary(ws: WebSocket) -> None:
    async for message in ws:
        assert isinstance(message, str)
        await ws.send(message.encode())


async def test_connect_prints_binary_as_hex() -> None:
    async with tidings.serve(_to_binary, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        status, out, _ = await run_cli("connect", url, stdin=b"hello\n")
    assert (status, out) == (0, "<binary 5 bytes> 68656c6c6f\n")


async def test_connect_appends_binary_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "received.bin"
    target.write_bytes(b"old:")
    async with tidings.serve(_to_binary, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        status, out, _ = await run_cli(
            "connect", url, "--binary-out", str(target), stdin=b"abc\nxyz\n"
        )
    assert (status, out) == (0, "")
    assert target.read_bytes() == b"old:abcxyz"


async def test_connect_reports_an_unwritable_binary_out(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out.bin"
    status, _, err = await run_cli(
        "connect", "ws://127.0.0.1:1/", "--binary-out", str(target)
    )
    assert status == 1
    assert_one_line_error(err, "cannot open")


async def _echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


# -- TLS -------------------------------------------------------------------------


@pytest.fixture
def tls_ca() -> Any:
    """A throwaway certificate authority."""
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def tls_files(tls_ca: Any, tmp_path: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 from ``tls_ca``, and its key."""
    cert = tls_ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(cert_file), str(key_file)


async def test_tls_echo_with_insecure_client(tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    async with echo_server("--tls-cert", cert, "--tls-key", key) as (_, url):
        assert url.startswith("wss://")
        status, out, err = await run_cli("connect", url, "--insecure", stdin=b"hi\n")
    assert (status, out) == (0, "hi\n"), err
    assert "closed: 1000" in err


async def test_tls_echo_to_a_verifying_client(
    tls_ca: Any, tls_files: tuple[str, str]
) -> None:
    cert, key = tls_files
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    async with (
        echo_server("--tls-cert", cert, "--tls-key", key) as (_, url),
        tidings.connect(url, ssl=context) as ws,
    ):
        await ws.send("secure")
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == "secure"


async def test_tls_without_insecure_fails_verification(
    tls_files: tuple[str, str],
) -> None:
    cert, key = tls_files
    async with echo_server("--tls-cert", cert, "--tls-key", key) as (_, url):
        status, out, err = await run_cli("connect", url, stdin=b"hi\n")
    assert (status, out) == (1, "")
    assert_one_line_error(
        err, f"cannot connect to {url}: TLS error: certificate verify failed"
    )


async def test_tls_echo_reports_a_missing_certificate(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    status, out, err = await run_cli(
        "echo", "--port", "0", "--tls-cert", missing, "--tls-key", missing
    )
    assert (status, out) == (1, "")
    assert_one_line_error(err, "cannot load the TLS certificate")
