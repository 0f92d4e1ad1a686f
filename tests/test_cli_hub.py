"""Tests of ``tidings serve`` and ``tidings token`` as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

import jwt
import pytest

import tidings
from tidings.hub import mint_token

from .conftest import failing_command, free_port, http_request, key_pair

BOUND = 30
SECRET = "a development secret of 32+ bytes!"


async def start_serve(
    *args: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(BOUND):
        line = (await proc.stdout.readline()).decode()
    assert line.startswith("tidings hub running at http://127.0.0.1:"), line
    return proc, line.split()[-1]


async def stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(BOUND):
        return await proc.wait()


async def test_serve_runs_the_hub_with_demo_pages_and_stops_on_sigterm() -> None:
    proc, url = await start_serve()
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    try:
        async with tidings.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"id": 1, "op": "connect"}))
            assert "client" in json.loads(await ws.recv())["result"]
            await ws.send(
                json.dumps({"id": 2, "op": "subscribe", "channel": "ticker:all"})
            )
            assert json.loads(await ws.recv())["id"] == 2
            async with asyncio.timeout(BOUND):  # the simulated feed publishes
                push = json.loads(await ws.recv())
            assert push["channel"] == "ticker:all" and "price" in push["pub"]["data"]
            closing = asyncio.ensure_future(ws.recv())
            assert await stop(proc) == 0
            with contextlib.suppress(tidings.ConnectionClosed):
                await closing
            assert ws.close_code == 1001
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_reads_flags_env_and_toml(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text(
        'api_key = "from-toml"\n'
        "[namespaces.news]\n"
        "allow_anonymous = true\nhistory_size = 5\nhistory_ttl = 60\n"
    )
    proc, url = await start_serve(
        "--config", str(config), "--no-demo", env={"TIDINGS_SECRET": SECRET}
    )
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"channel": "news:today", "data": "hello"}).encode()
        writer.write(
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: apikey from-toml\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        async with asyncio.timeout(BOUND):
            response = await reader.read()
        writer.close()
        assert response.startswith(b"HTTP/1.1 200 ")
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["offset"] == 1
    finally:
        assert await stop(proc) == 0


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["--config", "{dir}/bad.toml"], b"namespaces.chat.history_size"),
        (["--idempotency-window", "-1"], b"idempotency_window"),
    ],
)
async def test_invalid_configuration_is_one_line_naming_the_key(
    tmp_path: Path, args: list[str], key: bytes
) -> None:
    (tmp_path / "bad.toml").write_text("[namespaces.chat]\nhistory_size = -1\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "serve",
        *(arg.format(dir=tmp_path) for arg in args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    assert b"Traceback" not in err
    assert key in err and len(err.splitlines()) == 1


async def test_serve_answers_metrics_on_its_metrics_port_too() -> None:
    proc, _ = await start_serve("--no-demo", "--metrics-port", "0")
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(BOUND):
            while not (line := (await proc.stdout.readline()).decode()).startswith(
                "  /metrics also on port "
            ):
                assert line, "no metrics port in the banner"
        answer = await http_request(int(line.split()[-1]), "GET", "/metrics")
        assert answer.status == 200 and b"tidings_connections 0" in answer.body
    finally:
        assert await stop(proc) == 0


async def test_serve_names_a_metrics_port_it_cannot_listen_on() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        err = await failing_command("serve", "--port", "0", "--metrics-port", str(port))
    assert err.startswith(f"tidings: cannot listen on 127.0.0.1 port {port}: ")


async def test_token_mints_a_token_the_hub_accepts() -> None:
    code, out, err = await mint("--channels", "chat:*")
    assert code == 0, err
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["channels"] == ["chat:*"]


async def mint(*args: str) -> tuple[int | None, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "token",
        "--user",
        "alice",
        "--secret",
        SECRET,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        out, err = await proc.communicate()
    return proc.returncode, out, err


async def test_token_mints_the_info_claim_and_refuses_bad_info() -> None:
    code, out, err = await mint("--info", '{"name": "Alice", "tags": ["ü"]}')
    assert code == 0, err
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert claims["info"] == {"name": "Alice", "tags": ["ü"]}
    for info, why in [
        ("{name: 1}", b"--info must be JSON"),
        (json.dumps("x" * 5000), b"at most 4096 bytes"),
        ("NaN", b"at most 4096 bytes"),
    ]:
        code, out, err = await mint("--info", info)
        assert code == 1 and why in err and not out, err
        assert b"Traceback" not in err


async def test_token_channel_mints_a_channel_token() -> None:
    code, out, err = await mint("--channel", "room:7", "--info", '{"role": "guest"}')
    assert code == 0, err
    claims = jwt.decode(out.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["channel"]) == ("alice", "room:7")
    assert claims["info"] == {"role": "guest"} and "channels" not in claims
    code, out, err = await mint("--channel", "room:7", "--channels", "chat:*")
    assert code == 1 and b"has no --channels" in err and not out


async def test_token_refuses_a_short_secret() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "token",
        "--user",
        "a",
        "--secret",
        "short",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        _, err = await proc.communicate()
    assert proc.returncode == 1 and b"at least 32 bytes" in err


async def test_serve_takes_the_tokens_token_signs_with_a_private_key(
    tmp_path: Path,
) -> None:
    key = key_pair("ed25519")
    (tmp_path / "private.pem").write_bytes(key.private)
    (tmp_path / "public.pem").write_bytes(key.public)
    code, out, err = await mint("--private-key", str(tmp_path / "private.pem"))
    assert code == 0, err
    assert jwt.get_unverified_header(out.strip())["alg"] == "EdDSA"
    proc, url = await start_serve(
        "--token-public-key", str(tmp_path / "public.pem"), "--no-demo"
    )
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    try:
        for token, answer in [
            (out.decode().strip(), {"result": "alice"}),
            (key_pair("ed25519", 1).mint("mallory"), {"error": 401}),
            (mint_token(SECRET, "alice"), {"error": 401}),  # the hub has no secret
        ]:
            async with tidings.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send(json.dumps({"id": 1, "op": "connect", "token": token}))
                reply = json.loads(await ws.recv())
                got = (
                    {"result": reply["result"]["user"]}
                    if "result" in reply
                    else {"error": reply["error"]["code"]}
                )
                assert got == answer
    finally:
        assert await stop(proc) == 0
    code, out, err = await mint("--private-key", str(tmp_path / "public.pem"))
    assert code == 1 and b"not an unencrypted PEM private key" in err, err


async def test_serve_refuses_a_public_key_it_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(key_pair("ec384").public)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "serve",
        "--token-public-key",
        str(tmp_path / "key.pem"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(BOUND):
        _, err = await proc.communicate()
    assert proc.returncode == 1 and len(err.splitlines()) == 1, err
    assert b"token_public_key" in err and b"not an RSA key (2048 bits or more)" in err


async def test_serve_asks_the_application_named_in_tidings_proxy_variables() -> None:
    # Nothing listens there: the hub must say so to the client, never let
    # it in.
    nowhere = f"http://127.0.0.1:{free_port()}/tidings/connect"
    proc, url = await start_serve(env={"TIDINGS_PROXY_CONNECT": nowhere})
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(BOUND):
            while b"the application decides" not in (
                line := await proc.stdout.readline()
            ):
                assert line, "no line about the hooks"
        assert b"connect" in line
        async with tidings.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"id": 1, "op": "connect"}))
            assert json.loads(await ws.recv())["error"]["code"] == 503
            with contextlib.suppress(tidings.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1013
    finally:
        assert await stop(proc) == 0
