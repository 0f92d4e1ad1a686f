"""The benchmark's smoke form, and the pieces it is built from.

The harness is ``benchmarks/harness`` at the repository root, beside the
package, never in it (``python -m pytest`` from the root imports it). The
smoke run proves that ``python -m benchmarks`` works end to end (servers,
load client, report) with tidings alone, in seconds. It asserts nothing
about speed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import add_arguments, build_parser, peers
from benchmarks.harness.loadgen import (
    ApiPublisher,
    Bench,
    BroadcastBench,
    Expected,
    Handshake,
    HubConn,
    SocketIOConn,
    Stream,
    TidingsHubConn,
    Trigger,
    agreed_deflate,
    build_frame,
    inflater,
    mask_bytes,
    text_payload,
)
from benchmarks.harness.report import (
    NOTES_END,
    NOTES_START,
    kept_notes,
    number,
    ratio,
    split_cell,
)
from benchmarks.harness.scenarios import (
    BURST_KINDS,
    FULL,
    HUB_SERVERS,
    HUB_TIDINGS,
    LABELS,
    NPM_SERVERS,
    REDIS_SERVERS,
    REDIS_TIDINGS,
    TIDINGS,
    smoke,
)

from .conftest import skip_unless_ci

#: The repository root: ``python -m benchmarks`` runs from there.
ROOT = Path(__file__).resolve().parent.parent

#: The smoke run takes about 30 s; a slow CI machine gets room to spare.
SMOKE_TIMEOUT = 240

#: Whether the hub of several nodes on Redis can run here (the runner
#: skips it, saying why, where redis-server or redis-py is missing).
REDIS_READY = (
    shutil.which("redis-server") is not None
    and importlib.util.find_spec("redis") is not None
)

#: What the smoke run measures by default: tidings, its hub included, and
#: its hub as several nodes on Redis where that can run.
SMOKE_SERVERS = (*TIDINGS, *HUB_TIDINGS, *(REDIS_TIDINGS if REDIS_READY else ()))


def run_benchmark(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` from the repository root, its output
    captured, bounded by SMOKE_TIMEOUT."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench")
    docs = out / "performance.md"
    docs.write_text(f"old\n{NOTES_START}\nkeep this analysis\n{NOTES_END}\nold\n")
    proc = run_benchmark(
        "benchmarks",
        "--smoke",
        "--out",
        str(out),
        "--logs",
        str(out / "logs"),
        "--docs",
        str(docs),
    )
    log = out / "logs" / "children.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (
        log.read_text()[-3000:] if log.exists() else ""
    )
    return {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "report": (out / "report.md").read_text(),
        "docs": docs.read_text(),
        "results": json.loads((out / "results.json").read_text()),
    }


def table_rows(report: str) -> dict[str, list[str]]:
    """First cell -> the other cells, for every table row in ``report``."""
    rows = {}
    for line in report.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_smoke_report_has_every_row(smoke_run: dict[str, object]) -> None:
    report = smoke_run["report"]
    assert isinstance(report, str)
    rows = table_rows(report)
    header = rows["scenario"]
    assert header[:3] == ["unit", LABELS["tidings-cb"], LABELS["tidings-async"]]
    for scenario in smoke():
        if scenario.kind == "client":
            continue
        cells = rows[scenario.title]
        assert cells[0] == scenario.unit
        ran = [s for s in scenario.servers if s in SMOKE_SERVERS]
        for cell in cells[1 : 1 + len(ran)]:
            # "median [min-max]", a number first: nothing failed or missing.
            assert cell[0].isdigit(), (scenario.title, cell)
    # The hub's own table: the tidings hub, then its peers, not run.
    hub = rows[next(s for s in smoke() if s.key == "hub-idle").title]
    not_run = ["not run"] * (len(HUB_SERVERS) - 1)
    assert hub[1 : 1 + len(HUB_SERVERS)] == [hub[1], *not_run]
    assert f"{LABELS['tidings-hub']} ≤ 16 KiB/conn" in report
    assert "## Hub" in report
    # Many nodes: one node, then the tidings hub on Redis (or why not), then
    # python-socketio on Redis, not run.
    assert "## Many nodes on Redis" in report
    for scenario in smoke():
        if scenario.kind in ("hub-nodes", "hub-latency"):
            one, many, peer = rows[scenario.title][1:4]
            assert one[0].isdigit() and peer == "not run", (one, peer)
            assert many[0].isdigit() if REDIS_READY else "not installed" in many
    assert "## Targets" in report
    assert "## Clients" in report
    assert "smoke run" in report
    assert "Load client and CPU" in report
    # User + system µs per round trip, for the rows at one in flight.
    section = report.split("## User space and kernel\n", 1)[1].split("\n## ", 1)[0]
    split_rows = table_rows(section)
    for scenario in smoke():
        if scenario.kind == "handshake" or (scenario.kind, scenario.depth) == (
            "echo",
            1,
        ):
            split = split_rows[scenario.title][0]
            user, system = (float(part) for part in split.split(" + "))
            assert user >= 0 and system >= 0 and user + system > 0, split
    # The same per delivery, for the hub rows of one publication in flight.
    section = report.split("Server CPU per delivery", 1)[1].split("\n## ", 1)[0]
    split_rows = table_rows(section)
    for scenario in smoke():
        if scenario.kind in BURST_KINDS:
            split = split_rows[scenario.title][0]
            user, system = (float(part) for part in split.split(" + "))
            assert user >= 0 and system >= 0 and user + system > 0, split


def test_smoke_results_json(smoke_run: dict[str, object]) -> None:
    results = smoke_run["results"]
    assert isinstance(results, dict)
    assert results["meta"]["smoke"] is True
    assert [s["key"] for s in results["scenarios"]] == [s.key for s in FULL]
    servers = {s.key: s.servers for s in FULL}
    for scenario in results["scenarios"]:
        names = (
            ["raw", "tidings-cb", "tidings"]
            if scenario["kind"] == "client"
            else [s for s in SMOKE_SERVERS if s in servers[scenario["key"]]]
        )
        assert names, scenario["key"]
        assert set(scenario["results"]) == set(names), scenario["key"]
        for name in names:
            result = scenario["results"][name]
            assert result["error"] is None, (scenario["key"], name, result)
            assert result["values"], (scenario["key"], name)
            assert max(result["values"]) > 0, (scenario["key"], name)
            assert not any("possible" in n for n in result["notes"]), result
            assert len(result["server_system"]) == len(result["server_cpu"])
            for system, cpu in zip(
                result["server_system"], result["server_cpu"], strict=True
            ):
                assert 0 <= system <= cpu, (scenario["key"], name, result)
    bcast = next(s for s in results["scenarios"] if s["kind"] == "broadcast")
    assert "tidings" in bcast["results"]["tidings-cb"]["info"]["broadcast"]
    hub = next(s for s in results["scenarios"] if s["kind"] == "hub")
    assert "tidings.hub.Hub" in hub["results"]["tidings-hub"]["info"]["hub"]
    # The deflate rows: offered as browsers do, agreed without context
    # takeover, and every client reached.
    for scenario in results["scenarios"]:
        result = scenario["results"]["tidings-hub"] if scenario["deflate"] else None
        if result is not None:
            info = result["info"]
            assert (
                info["deflate_offered"] == "permessage-deflate; client_max_window_bits"
            )
            assert "server_no_context_takeover" in info["deflate_agreed"], info
            assert not result["notes"], result["notes"]
    assert {s["key"] for s in results["scenarios"] if s["deflate"]} == {
        "hub-burst-1k-deflate-k1",
        "hub-mem-1k-deflate-k1",
    }


def test_smoke_progress_and_summary(smoke_run: dict[str, object]) -> None:
    stderr, stdout = smoke_run["stderr"], smoke_run["stdout"]
    assert isinstance(stderr, str) and isinstance(stdout, str)
    assert "[ 1/" in stderr and "left" in stderr
    # The run ends with the tables.
    assert "Targets" in stdout and "| scenario | unit |" in stdout


def test_smoke_docs_keep_notes(smoke_run: dict[str, object]) -> None:
    docs = smoke_run["docs"]
    assert isinstance(docs, str)
    assert docs.startswith("# Performance")
    assert kept_notes(docs) == "keep this analysis"


def test_parser_for_the_cli() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--smoke", "--servers", "tidings-cb", "--repeat", "2"])
    assert args.smoke and args.servers == "tidings-cb" and args.repeat == 2
    assert build_parser().parse_args([]).smoke is False


def test_frames_and_stream() -> None:
    assert build_frame(b"ab") == b"\x82\x02ab"
    assert len(build_frame(bytes(200))) == 4 + 200
    assert len(build_frame(bytes(70000))) == 10 + 70000
    masked = build_frame(b"hello", masked=True)
    assert masked[1] == 0x80 | 5
    assert mask_bytes(masked[6:], masked[2:6]) == b"hello"
    frame = build_frame(b"x" * 40)
    stream = Stream(Expected(frame))
    data = frame * 5
    assert stream.feed(data[:7]) == 0
    assert stream.feed(data[7:100]) == 2
    assert stream.feed(data[100:]) == 3
    assert stream.errors == 0
    assert stream.feed(b"\x81" + frame[1:]) == 1
    assert stream.errors == 1


def test_report_helpers() -> None:
    assert number(1_234_567) == "1.23M"
    assert number(123_456) == "123k"
    assert number(12_345) == "12.3k"
    assert number(4.0) == "4.00"
    r = ratio({"values": [2.0, 4.0, 6.0]}, {"values": [1.0, 2.0, 4.0]})
    assert r == (2.0, 0.5, 6.0)
    assert ratio({"values": [1.0]}, {"values": [], "error": "boom"}) is None


def test_split_cell() -> None:
    result = {
        "values": [100_000.0, 50_000.0, 200_000.0],
        "server_cpu": [0.9, 0.9, 1.0],
        "server_system": [0.6, 0.5, 0.8],
    }
    # User µs per message 3, 8 and 1; system 6, 10 and 4: the medians.
    assert split_cell(result) == "3.0 + 6.0"
    assert split_cell({**result, "server_system": [0.6]}) == "—"
    assert split_cell({**result, "error": "boom"}) == "—"
    assert split_cell(None) == "—"
    # Below 1 µs (a hub's delivery), to a hundredth.
    assert split_cell({**result, "values": [5e6] * 3}) == "0.06 + 0.12"


def test_hub_with_socketio(tmp_path: Path) -> None:
    """The hub rows beside python-socketio: measured where it is installed,
    else reported as not installed (as in the project's own environment)."""
    out = tmp_path / "bench"
    proc = run_benchmark(
        "benchmarks",
        "--smoke",
        "--scenarios",
        "hub-1k-k128,hub-idle",
        "--servers",
        "tidings-hub,socketio",
        "--no-charts",
        "--out",
        str(out),
        "--logs",
        str(out / "logs"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows((out / "report.md").read_text())
    installed = all(
        importlib.util.find_spec(m) is not None for m in ("socketio", "uvicorn")
    )
    for scenario in smoke():
        if scenario.key not in ("hub-1k-k128", "hub-idle"):
            continue
        ours, peer = rows[scenario.title][1:3]
        assert ours[0].isdigit(), (scenario.title, ours)
        if installed:
            assert peer[0].isdigit(), (scenario.title, peer)
        else:
            assert peer == "not installed"
    if not installed:
        assert "not installed in" in proc.stderr


#: The rows the npm peers' smoke run covers: every kind each peer serves.
PEER_SCENARIOS = (
    "echo-100x32-k1",
    "broadcast-1k-k128",
    "idle-5k",
    "hub-1k-k128",
    "hub-idle",
    "hub-burst-1k-k1",
    "hub-api-1k-k1",
    "hub-rate-1k-100",
    "nodes-1k-k128",
    "hub-burst-1k-deflate-k1",
    "hub-mem-1k-deflate-k1",
)


def test_npm_peers(tmp_path: Path) -> None:
    """Bun's and Node's servers (benchmarks/peers), each for a moment in
    every kind of row it serves: the harness installs them (npm ci, once),
    they start, speak the load client's protocols, publish in bursts and
    from /api/publish, and stop; so that they do not rot."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        skip_unless_ci("Node.js and npm are not installed")
    servers = [
        s
        for s in NPM_SERVERS
        if s not in REDIS_SERVERS or shutil.which("redis-server") is not None
    ]
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--scenarios",
            ",".join(PEER_SCENARIOS),
            "--servers",
            ",".join(servers),
            "--no-charts",
            "--out",
            str(out),
            "--logs",
            str(out / "logs"),
        ],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT + peers.INSTALL_TIMEOUT,
        check=False,
        cwd=ROOT,
    )
    log = out / "logs" / "children.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (
        log.read_text()[-3000:] if log.exists() else ""
    )
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["servers"] == servers
    rows = {s.key: s for s in FULL}
    measured = set()
    for entry in results["scenarios"]:
        for name in servers:
            if name not in rows[entry["key"]].servers:
                continue
            result = entry["results"][name]
            assert result["error"] is None, (entry["key"], name, result)
            assert result["values"] and min(result["values"]) > 0, result
            # Every frame as the protocol expects, every client kept.
            assert not result["notes"], (entry["key"], name, result["notes"])
            measured.add(name)
    assert measured == set(servers)
    hub = next(e for e in results["scenarios"] if e["kind"] in BURST_KINDS)
    assert "server.publish" in hub["results"]["bun-hub"]["info"]["hub"]
    assert "io.to(room).emit" in hub["results"]["node-socketio"]["info"]["hub"]
    # With deflate offered, each agreed (else a note fails the row above):
    # Bun's shared compressor without context takeover, ws's with it.
    for entry in results["scenarios"]:
        if entry["deflate"]:
            agreed = {
                n: r["info"]["deflate_agreed"] for n, r in entry["results"].items()
            }
            assert "server_no_context_takeover" in agreed["bun-hub"], agreed
            assert agreed["node-socketio"].startswith("permessage-deflate"), agreed


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


def sent_text(transport: FakeTransport) -> list[bytes]:
    """The payloads of the (masked, < 64 KiB) frames a client wrote."""
    out = []
    data = b"".join(transport.written)
    while data:
        n, head = data[1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(data[2:4], "big"), 4
        key = data[head : head + 4]
        out.append(mask_bytes(data[head + 4 : head + 4 + n], key))
        data = data[head + 4 + n :]
    return out


def hub_conn(cls: type[HubConn]) -> tuple[Bench, HubConn, FakeTransport]:
    bench = Bench()
    conn = cls(bench, Handshake("127.0.0.1", 1, cls.path), text_payload(100))
    transport = FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    conn.on_open()
    return bench, conn, transport


def feed_in_pieces(conn: HubConn, data: bytes) -> None:
    """Split ``data`` at awkward places: inside headers and payloads."""
    pos, step = 0, 1
    while pos < len(data):
        conn.on_data(data[pos : pos + step])
        pos += step
        step = step * 3 % 257 + 1


def text_frame(text: str | bytes) -> bytes:
    return build_frame(text.encode() if isinstance(text, str) else text, 0x1)


async def test_tidings_hub_client_joins_and_counts() -> None:
    bench, conn, transport = hub_conn(TidingsHubConn)
    assert json.loads(sent_text(transport)[0]) == {"id": 1, "op": "connect"}
    conn.on_data(text_frame('{"id":1,"result":{"client":"c1","user":""}}'))
    subscribe = json.loads(sent_text(transport)[1])
    assert subscribe == {"id": 2, "op": "subscribe", "channel": "bench:room"}
    assert not conn.opened.done()
    conn.on_data(text_frame('{"id":2,"result":{"epoch":"e","offset":0}}'))
    assert conn.opened.result() is True
    payload = text_payload(100).decode()
    pushes = b"".join(
        text_frame(
            f'{{"channel":"bench:room","pub":{{"offset":{i},"data":"{payload}",'
            '"info":{"client":"c1","user":""}}}'
        )
        for i in range(1, 301)
    )
    feed_in_pieces(conn, pushes + text_frame('{"id":3,"result":{"offset":1}}'))
    assert (bench.count, bench.errors) == (300, 0)
    # A ping is answered; an error reply counts as an error.
    conn.on_data(build_frame(b"hi", 0x9))
    assert transport.written[-1][0] == 0x8A
    assert sent_text(transport)[-1] == b"hi"
    conn.on_data(text_frame('{"id":9,"error":{"code":429,"message":"slow"}}'))
    assert bench.errors == 1
    # Each publication is a publish command of its own id.
    transport.written.clear()
    conn.publish(2)
    commands = [json.loads(t) for t in sent_text(transport)]
    assert [c["id"] for c in commands] == [3, 4]
    assert {c["data"] for c in commands} == {payload}


async def test_socketio_client_joins_and_counts() -> None:
    bench, conn, transport = hub_conn(SocketIOConn)
    assert transport.written == []
    conn.on_data(text_frame('0{"sid":"s","upgrades":[],"pingInterval":25000}'))
    conn.on_data(text_frame('40{"sid":"x"}'))
    assert sent_text(transport) == [b"40", b'421["join","bench"]']
    assert not conn.opened.done()
    conn.on_data(text_frame("431[true]"))
    assert conn.opened.result() is True
    payload = text_payload(100).decode()
    frames = text_frame(f'42["msg","{payload}"]') * 200 + text_frame("2")
    feed_in_pieces(conn, frames)
    assert (bench.count, bench.errors) == (200, 0)
    assert sent_text(transport)[-1] == b"3"  # the Engine.IO pong
    conn.on_data(text_frame('42["other","x"]'))
    assert bench.errors == 1
    transport.written.clear()
    conn.publish(3)
    assert sent_text(transport) == [f'42["publish","bench","{payload}"]'.encode()] * 3


async def test_burst_triggers() -> None:
    """A burst's trigger: the rpc ``burst`` of the tidings hub (its reply is
    no delivery), the ``burst`` event of socket.io."""
    payload = text_payload(100).decode()
    bench, conn, transport = hub_conn(TidingsHubConn)
    conn.on_data(text_frame('{"id":1,"result":{"client":"c1","user":""}}'))
    conn.on_data(text_frame('{"id":2,"result":{"epoch":"e","offset":0}}'))
    transport.written.clear()
    Trigger(conn, 200).publish(2)
    commands = [json.loads(t) for t in sent_text(transport)]
    assert commands == [
        {
            "id": i,
            "op": "rpc",
            "method": "burst",
            "data": {"count": 200, "data": payload},
        }
        for i in (3, 4)
    ]
    conn.on_data(text_frame('{"id":3,"result":{"data":200}}'))
    assert (bench.count, bench.errors) == (0, 0)
    bench, conn, transport = hub_conn(SocketIOConn)
    Trigger(conn, 7).publish(1)
    assert sent_text(transport) == [f'42["burst","bench",7,"{payload}"]'.encode()]


def http_response(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", *headers]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_api_publisher_one_request_at_a_time() -> None:
    bench = BroadcastBench(10, 1, 1)
    api = ApiPublisher(bench, "127.0.0.1", 8000, text_payload(100), 3)
    transport = FakeTransport()
    api.connection_made(transport)  # type: ignore[arg-type]
    api.publish(1)
    assert len(transport.written) == 1
    head, body = transport.written[0].split(b"\r\n\r\n")
    assert head.startswith(b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:8000")
    assert json.loads(body) == {
        "channel": "bench:room",
        "data": text_payload(100).decode(),
    }
    ok = http_response("200 OK", b'{"offset":1}', "Connection: keep-alive")
    # The next request waits for the whole response, however it is split.
    api.data_received(ok[:-3])
    assert len(transport.written) == 1
    api.data_received(ok[-3:] + ok)
    assert len(transport.written) == 3 and api.queued == 0
    api.data_received(ok)
    assert len(transport.written) == 3 and bench.errors == 0
    # A refusal and a response without a length are errors; the latter ends.
    api.publish(1)
    api.data_received(http_response("403 Forbidden", b'{"error":{}}'))
    assert bench.errors == 1 and len(transport.written) == 5
    api.data_received(http_response("200 OK", b"", "Transfer-Encoding: chunked"))
    assert bench.errors == 2 and transport.aborted


async def test_api_publisher_new_connection_after_close() -> None:
    """A server that closes after each response gets a new connection per
    request, and a note saying so; the publisher stays live meanwhile."""
    requests = 0
    fourth = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"Content-Length: (\d+)", head)
        assert length is not None
        await reader.readexactly(int(length[1]))
        requests += 1
        if requests == 4:
            fourth.set()
        writer.write(http_response("200 OK", b"{}", "Connection: close"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bench = BroadcastBench(10, 1, 1)
    loop = asyncio.get_running_loop()
    _, api = await loop.create_connection(
        lambda: ApiPublisher(bench, "127.0.0.1", port, text_payload(100), 4),
        "127.0.0.1",
        port,
    )
    api.publish(1)
    await asyncio.wait_for(fourth.wait(), 10)
    bench.sending = False
    api.abort()
    server.close()
    assert (requests, api.connections, bench.errors) == (4, 4, 0)


async def test_hub_client_lost() -> None:
    """A subscribed client the server drops is an error; one we close is not."""
    bench, conn, _ = hub_conn(SocketIOConn)
    for packet in ('0{"sid":"s"}', '40{"sid":"x"}', "431[true]"):
        conn.on_data(text_frame(packet))
    conn.connection_lost(None)
    assert bench.errors == 1
    bench, conn, _ = hub_conn(SocketIOConn)
    for packet in ('0{"sid":"s"}', '40{"sid":"x"}', "431[true]"):
        conn.on_data(text_frame(packet))
    conn.abort()
    conn.connection_lost(None)
    assert bench.errors == 0


async def test_hub_client_refused() -> None:
    bench, conn, transport = hub_conn(TidingsHubConn)
    conn.on_data(text_frame('{"id":1,"error":{"code":401,"message":"no"}}'))
    assert conn.opened.result() is False
    assert transport.aborted and bench.errors == 1


def test_hub_targets_in_report() -> None:
    from benchmarks.harness.report import targets_table

    def entry(key: str, kind: str, unit: str, results: dict[str, Any]) -> Any:
        scn = next(s for s in FULL if s.key == key)
        return {
            "key": key,
            "title": scn.title,
            "kind": kind,
            "unit": unit,
            "conns": scn.conns,
            "size": scn.size,
            "depth": scn.depth,
            "lower_is_better": scn.lower_is_better,
            "results": results,
        }

    data = {
        "meta": {"servers": list(HUB_SERVERS), "missing": []},
        "scenarios": [
            entry(
                "hub-1k-k128",
                "hub",
                "deliveries/s",
                {
                    "tidings-hub": {"values": [600.0], "per_cpu": [700.0]},
                    "socketio": {"values": [100.0], "per_cpu": [100.0]},
                },
            ),
            entry(
                "hub-idle",
                "hub-idle",
                "KiB/conn",
                {"tidings-hub": {"values": [17.0, 18.0]}},
            ),
        ],
    }
    rows = table_rows(targets_table(data))
    title = next(s.title for s in FULL if s.key == "hub-1k-k128")
    assert rows[f"{title}: tidings hub ≥ 5x python-socketio"][:2] == [
        "6.00x [6.00-6.00]",
        "met",
    ]
    title = next(s.title for s in FULL if s.key == "hub-idle")
    assert rows[f"{title}: tidings hub ≤ 16 KiB/conn"][:2] == [
        "17.5 [17.0-18.0] KiB/conn",
        "**not met**",
    ]


@pytest.mark.parametrize("pieces", [False, True])
async def test_hub_client_counts_runs_of_frames(pieces: bool) -> None:
    """Frames alike are counted at once, others one by one: a frame of the
    same length without the payload is caught, not counted."""
    bench, conn, transport = hub_conn(TidingsHubConn)
    conn.on_data(text_frame('{"id":1,"result":{"client":"c1","user":""}}'))
    conn.on_data(text_frame('{"id":2,"result":{"epoch":"e","offset":0}}'))
    payload = text_payload(100).decode()

    def push(offset: int, data: str = payload) -> bytes:
        return text_frame(
            f'{{"channel":"bench:room","pub":{{"offset":{offset},"data":"{data}"}}}}'
        )

    stream = b"".join(push(i) for i in range(1, 150))  # lengths change at 10, 100
    stream += text_frame('{"id":3,"result":{"offset":1,"epoch":"e"}}')
    stream += build_frame(b"", 0x9) + b"".join(push(i) for i in range(150, 180))
    forged = push(180, payload[::-1])  # same length, not the payload
    stream += forged + b"".join(push(i) for i in range(181, 400))
    if pieces:
        feed_in_pieces(conn, stream)
    else:
        conn.on_data(stream)
    assert bench.count == 399 - 1
    assert bench.errors == 1
    assert sent_text(transport)[-1] == b""  # the pong


def deflate_frame(text: bytes, compressor: Any) -> bytes:
    """A compressed text message (RSV1), as RFC 7692 frames it."""
    data = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    frame = bytearray(build_frame(data[:-4], 0x1))
    frame[0] |= 0x40
    return bytes(frame)


def test_deflate_agreed() -> None:
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Extensions: x-other, permessage-deflate; "
        b"server_no_context_takeover; server_max_window_bits=10\r\n"
    )
    agreed = agreed_deflate(head)
    assert (
        agreed
        == b"permessage-deflate;server_no_context_takeover;server_max_window_bits=10"
    )
    assert agreed_deflate(b"HTTP/1.1 101 Switching Protocols\r\n") is None
    # The server's window (it keeps its context here): two messages, the
    # second reaching 800 bytes back into the first, decompress with the
    # 10 bits it said; a window of 9 bits would not reach back so far.
    text = os.urandom(400).hex().encode()
    compressor = zlib.compressobj(wbits=-10)
    first, second = (
        compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
        for _ in range(2)
    )
    inflate = inflater(agreed)
    assert inflate.decompress(first) + inflate.decompress(second) == text * 2
    inflate = inflater(b"permessage-deflate; server_max_window_bits=9")
    inflate.decompress(first)
    with pytest.raises(zlib.error):
        inflate.decompress(second)
    # The offer is a browser's.
    offer = Handshake("127.0.0.1", 1, "/ws", deflate=True).request
    assert (
        b"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        in offer
    )
    assert b"Extensions" not in Handshake("127.0.0.1", 1, "/ws").request


class NoInflate:
    """A decompressor that must not be used."""

    def decompress(self, data: bytes) -> bytes:
        raise AssertionError("decompressed again")


def subscribed(cls: type[HubConn], hs: Handshake, bench: Bench) -> HubConn:
    conn = cls(bench, hs, text_payload(100))
    conn.transport = FakeTransport()  # type: ignore[assignment]
    conn.on_open()
    conn.on_data(text_frame('{"id":1,"result":{"client":"c1","user":""}}'))
    conn.on_data(text_frame('{"id":2,"result":{"epoch":"e","offset":0}}'))
    return conn


@pytest.mark.parametrize("takeover", [False, True])
async def test_hub_client_decompresses(takeover: bool) -> None:
    """With deflate agreed, every compressed message is decompressed and
    looked at alone, whether the server keeps its context (Node's ws) or
    not (the tidings hub, Bun's shared compressor); a compressed frame
    without the payload is not counted, and a compressed reply is read.
    Without context, bytes decompressed for one subscriber are looked up
    for the next."""
    bench = Bench()
    hs = Handshake("127.0.0.1", 1, "/ws", deflate=True)
    conn = subscribed(TidingsHubConn, hs, bench)
    conn.inflate = inflater(b"permessage-deflate")
    conn.alone = not takeover
    payload = text_payload(100).decode()
    shared = zlib.compressobj(wbits=-15)

    def compressed(text: str) -> bytes:
        compressor = shared if takeover else zlib.compressobj(wbits=-15)
        return deflate_frame(text.encode(), compressor)

    def push(offset: int, data: str = payload) -> str:
        return f'{{"channel":"bench:room","pub":{{"offset":{offset},"data":"{data}"}}}}'

    stream = b"".join(compressed(push(i)) for i in range(1, 200))
    stream += compressed(push(200, payload[::-1]))  # not the payload
    stream += compressed('{"id":9,"error":{"code":429,"message":"slow"}}')
    stream += text_frame(push(201))  # a message sent uncompressed counts too
    feed_in_pieces(conn, stream)
    assert (bench.count, bench.errors) == (200, 2)
    if takeover:
        assert hs.messages == {}
        return
    assert len(hs.messages) == 201
    other = subscribed(TidingsHubConn, hs, bench)
    other.inflate, other.alone = NoInflate(), True
    other.on_data(stream)
    assert (bench.count, bench.errors) == (400, 4)


def test_proxy_quick(tmp_path: Path) -> None:
    """benchmarks/proxy.py's quick form: the hub, the Starlette back end
    under uvicorn and the load client run, every command is measured
    without its hook and through it, and the tables carry numbers. Nothing
    about speed."""
    for module in ("starlette", "uvicorn", "aiohttp"):
        pytest.importorskip(module)
    from benchmarks.proxy import PAIRS

    out = tmp_path / "proxy.json"
    proc = run_benchmark(
        "benchmarks.proxy",
        "--quick",
        "--json",
        str(out),
        "--logs",
        str(tmp_path / "logs"),
    )
    log = tmp_path / "logs" / "proxy.log"
    assert proc.returncode == 0, proc.stderr[-3000:] + (
        log.read_text()[-3000:] if log.exists() else ""
    )
    results = json.loads(out.read_text())
    rows = {(row["pair"], row["clients"]): row for row in results["rows"]}
    assert set(rows) == {(p.key, n) for p in PAIRS for n in (1, 20)}
    for key, row in rows.items():
        for side in ("plain", "hooked"):
            for measured in row[side]:
                assert measured["errors"] == 0, (key, side, measured)
                assert measured["rate"] > 0, (key, side, measured)
                assert measured["p99_ms"] >= measured["p50_ms"] > 0, (key, side)
    # The hooked side went through the back end, and every call said yes.
    calls = results["hook_calls"]
    assert all(calls.get(f"{p.key} ok", 0) > 0 for p in PAIRS), calls
    assert all(name.endswith(" ok") for name in calls), calls
    # Three tables, a number in every row of the first.
    assert proc.stdout.count("| command | in flight |") == 3
    for pair in PAIRS:
        for line in proc.stdout.splitlines():
            if line.startswith(f"| {pair.key} ({pair.unit}) |"):
                assert f"{pair.hooked}: " in line and any(c.isdigit() for c in line)


def test_features_quick() -> None:
    """benchmarks/features.py in a few calls on both brokers: every pair
    has a row with numbers on each. Nothing about speed."""
    proc = run_benchmark(
        *("benchmarks.features", "--calls", "20", "--rounds", "2"),
        *("--presence", "50"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    brokers = {"memory", "redis"} if shutil.which("redis-server") else {"memory"}
    assert {row.split(" | ")[1] for row in rows} == brokers
    assert len(rows) == 7 * len(brokers)
    assert all(row.endswith("x |") for row in rows), rows


def test_mount_quick(tmp_path: Path) -> None:
    """benchmarks/mount.py in a few seconds: every server (the mounted hub
    under uvicorn with both WebSocket protocols, the hub on its own,
    python-socketio's ASGIApp) delivers to its 20 subscribers, and the table
    carries a row for each. Nothing about speed."""
    for module in ("starlette", "uvicorn", "socketio"):
        pytest.importorskip(module)
    from benchmarks.mount import SERVERS

    out = tmp_path / "mount.json"
    proc = run_benchmark(
        *("benchmarks.mount", "--clients", "20", "--seconds", "0.2"),
        *("--rounds", "1", "--quiet-budget", "0", "--json", str(out)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rates = json.loads(out.read_text())["rates"]
    assert set(rates) == {s.label for s in SERVERS}
    assert all(len(v) == 1 and v[0] > 0 for v in rates.values()), rates
    for server in SERVERS:
        assert f"| {server.label} | " in proc.stdout, proc.stdout


def test_cluster_quick(tmp_path: Path) -> None:
    """benchmarks/cluster.py in a few seconds: one Redis, then a cluster of
    3 masters, each under 3 nodes that deliver; a CPU figure per Redis
    process. Nothing about speed."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        skip_unless_ci("redis-server and redis-cli are not installed")
    out = tmp_path / "cluster.json"
    proc = run_benchmark(
        *("benchmarks.cluster", "--channels", "30", "--subscribers", "3"),
        *("--publishers", "1", "--in-flight", "2", "--warmup", "0.5"),
        *("--seconds", "0.5", "--json", str(out)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, cluster = json.loads(out.read_text())
    assert (one["backend"], len(one["redis CPU"])) == ("one Redis", 1)
    assert len(cluster["redis CPU"]) == 3
    for row in (one, cluster):
        assert row["publications/s"] > 0 and row["refused"] == 0, row
        assert row["deliveries/s"] > 0, row
    assert "| Redis Cluster, 3 masters | " in proc.stdout, proc.stdout


async def test_api_cpu_posts_and_measures() -> None:
    # benchmarks.api_cpu in a few requests: every answer a 200 (it raises
    # otherwise), and a figure.
    from benchmarks.api_cpu import measure

    assert await measure(20) >= 0


@pytest.mark.parametrize("deflate", [False, True])
async def test_fanout_cpu_reaches_every_subscriber(deflate: bool) -> None:
    # benchmarks.fanout_cpu in a few publications: every one reaches every
    # subscriber (none is slow at this size), and a figure.
    from benchmarks.fanout_cpu import measure

    figures = await measure(5, 20, deflate)
    assert figures.delivered == 5 * 20
    assert figures.user >= 0 and figures.system >= 0
