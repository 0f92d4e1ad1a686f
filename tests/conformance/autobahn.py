"""Run the Autobahn|Testsuite against tidings, as a server and as a client.

Usage::

    python tests/conformance/autobahn.py --quick|--full [--side server|client|both]
                                         [--cases ID ...] [--out DIR]

* ``--side server``: ``wstest -m fuzzingclient`` tests ``python -m tidings
  echo`` (permessage-deflate on, the message limit raised to the suite's
  largest message, 16 MiB).
* ``--side client``: ``wstest -m fuzzingserver`` tests a tidings client that
  runs every case, echoing each message back until the close.
* ``--quick`` leaves out the slow cases (most of 9.*, and 12.*/13.* beyond
  each group's four smallest message sizes): 301 cases a side, about a
  minute. ``--full`` runs all 517 cases a side.

``autobahntestsuite`` is Python 2 code. Its environment is built on first
use with pyenv's Python 2.7.18 (or ``$TIDINGS_PYTHON27``) and cached in
``$TIDINGS_AUTOBAHN_ENV`` (default: ``~/.cache/tidings/autobahn``).

The summary table (Markdown) is printed and written to ``DIR/summary.md``
(default ``DIR``: ``.autobahn/<quick|full>`` in the repository). The exit
status is 0 when every case's behavior and close behavior is OK or
INFORMATIONAL, 1 when some is not, 2 when the run itself failed (no Python
2.7, the environment could not be built, a time limit was hit, cases are
missing from the reports). wstest's exit status says nothing: it is 0 even
when no case ran, so the reports are what is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[2]
AGENT = "tidings"
PY27_VERSION = "2.7.18"

#: autobahntestsuite's sdist pins these but doesn't declare them; Twisted and
#: friends moved on without Python 2 long ago.
PINS = (
    "setuptools==44.0.0",
    "txaio==2.1.0",
    "incremental==16.10.1",
    "pyOpenSSL==19.1.0",
    "cryptography==3.3.2",
    "Twisted==19.10.0",
    "zope.interface==4.6.0",
    "jinja2==2.11.3",
    "markupsafe==1.1.1",
    "Werkzeug==1.0.1",
    "klein==17.10.0",
    "service_identity==18.1.0",
    "unittest2==1.1.0",
    "six==1.16.0",
    "autobahn[accelerate,twisted]==0.10.9",
    "autobahntestsuite==25.10.1",
)
#: The last virtualenv series that still creates Python 2.7 environments.
VIRTUALENV = "virtualenv<20.22"

#: The suite's largest message is 16 MiB (9.1.6, 9.2.6); both sides accept
#: exactly that much, so the limit is checked but never in the way.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024

# Case patterns: with "*" a regex anchored at the start only, else an id.
FULL_CASES = ["*"]
QUICK_CASES = [
    *(f"{group}.*" for group in (1, 2, 3, 4, 5, 6, 7, 10)),
    *(f"9.{sub}.{n}" for sub in (1, 2) for n in (1, 2, 3)),
    "12.*.[1-4]$",  # every payload, the four smallest message sizes
    "13.*.[1-4]$",  # every parameter combination, the same sizes
]
EXPECTED_CASES = {"full": 517, "quick": 301}

#: Wall-clock bounds, in seconds.
ENV_BUILD_TIMEOUT = 900.0
SIDE_TIMEOUT = {"quick": 300.0, "full": 3600.0}
#: A case of 12.*/13.* may take up to 480 s by the suite's own timeouts.
CASE_TIMEOUT = 600.0
START_TIMEOUT = 60.0

GROUPS = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved Bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 Handling",
    "7": "Close Handling",
    "9": "Limits/Performance",
    "10": "Misc",
    "12": "Compression (payloads)",
    "13": "Compression (parameters)",
}
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
ACCEPTED = frozenset({"OK", "INFORMATIONAL"})

# wstest listens on every interface; this runs it with its listening sockets
# on 127.0.0.1 instead. Python 2 code, run with `python2.7 -c`.
WSTEST_LOCAL = """\
import sys
from autobahn.twisted import websocket
from autobahntestsuite import fuzzing, wstest
_listen = websocket.listenWS
def _listen_local(factory, contextFactory=None, backlog=50, interface=''):
    return _listen(factory, contextFactory, backlog, '127.0.0.1')
fuzzing.listenWS = _listen_local
sys.argv[0] = 'wstest'
sys.exit(wstest.run())
"""


class HarnessError(Exception):
    """The run itself failed: no result can be trusted."""


# -- Python 2.7 and the wstest environment ------------------------------


def find_python27() -> tuple[Path | None, str]:
    """Return (python2.7, how it was found) or (None, why it is missing)."""
    override = os.environ.get("TIDINGS_PYTHON27")
    if override:
        path = Path(override)
        if _is_python27(path):
            return path, f"$TIDINGS_PYTHON27={override}"
        return None, f"$TIDINGS_PYTHON27={override} is not a working Python 2.7"
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates: list[Path] = []
    pyenv = shutil.which("pyenv") or str(pyenv_root / "bin" / "pyenv")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            [pyenv, "prefix", PY27_VERSION],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()) / "bin" / "python2.7")
    candidates.append(pyenv_root / "versions" / PY27_VERSION / "bin" / "python2.7")
    for path in candidates:
        if _is_python27(path):
            return path, f"pyenv's {PY27_VERSION} at {path}"
    return None, (
        f"autobahntestsuite needs Python 2.7, and pyenv's {PY27_VERSION} was not "
        f"found (looked for `pyenv prefix {PY27_VERSION}` and {candidates[-1]}); "
        f"install it with `pyenv install {PY27_VERSION}` or set $TIDINGS_PYTHON27"
    )


def _is_python27(path: Path) -> bool:
    try:
        result = subprocess.run(
            [str(path), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and result.stdout.strip() == "2.7"


def env_dir() -> Path:
    override = os.environ.get("TIDINGS_AUTOBAHN_ENV")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tidings" / "autobahn"


def ensure_wstest(python27: Path, log: TextIO) -> Path:
    """Build the Python 2.7 environment with wstest once; return its python."""
    base = env_dir()
    base.mkdir(parents=True, exist_ok=True)
    stamp_text = "\n".join([str(python27), VIRTUALENV, *PINS]) + "\n"
    stamp_hash = hashlib.sha256(stamp_text.encode()).hexdigest()[:12]
    env = base / f"py27-{stamp_hash}"
    python = env / "bin" / "python"
    stamp = env / ".complete"
    with _locked(base / ".lock"):
        if stamp.exists() and python.exists():
            return python
        print(f"building the wstest environment in {env} (about a minute)", flush=True)
        deadline = time.monotonic() + ENV_BUILD_TIMEOUT
        tools = base / "tools"
        shutil.rmtree(env, ignore_errors=True)
        if not (tools / "bin" / "virtualenv").exists():
            shutil.rmtree(tools, ignore_errors=True)
            _step([sys.executable, "-m", "venv", str(tools)], log, deadline)
            pip = [str(tools / "bin" / "python"), "-m", "pip", "install", "-q"]
            _step([*pip, VIRTUALENV], log, deadline)
        virtualenv = str(tools / "bin" / "virtualenv")
        _step([virtualenv, "-q", "-p", str(python27), str(env)], log, deadline)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        _step([*pip, *PINS], log, deadline)
        _step([str(python), "-c", "import autobahntestsuite.wstest"], log, deadline)
        stamp.write_text(stamp_text)
    return python


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: one build at a time."""
    import fcntl

    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _step(cmd: Sequence[str], log: TextIO, deadline: float) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    timeout = max(deadline - time.monotonic(), 1.0)
    try:
        result = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"timed out building the wstest env: {cmd}") from None
    if result.returncode != 0:
        raise HarnessError(
            f"building the wstest environment failed ({cmd[0]} exited "
            f"{result.returncode}); see {log.name}"
        )


# -- processes ---------------------------------------------------------


class Processes:
    """Every process this run starts, ended by PID on the way out."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: Sequence[str], log: TextIO, **kwargs: Any) -> Any:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Safe: processes are started only while no other thread runs.
            preexec_fn=_die_with_parent,  # noqa: PLW1509
            **kwargs,
        )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this harness dies, even by SIGKILL."""
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_line(
    proc: subprocess.Popen[bytes], path: Path, prefix: str, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
        if proc.poll() is not None:
            raise HarnessError(f"{path.name}: exited {proc.returncode} before ready")
        time.sleep(0.05)
    raise HarnessError(f"{path.name}: not ready within {timeout} s")


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"wstest exited {proc.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise HarnessError(f"wstest did not listen on port {port} within {timeout} s")


def _write_spec(path: Path, spec: dict[str, Any]) -> None:
    path.write_text(json.dumps(spec, indent=2) + "\n")


def _wstest(python: Path, mode: str, spec: Path) -> list[str]:
    return [str(python), "-c", WSTEST_LOCAL, "-m", mode, "-s", str(spec)]


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


# -- the server side: wstest's fuzzing client against `tidings echo` --------


#: The servers the fuzzing client tests: the command, the start of the line
#: it logs once listening (the URL follows it), and the path of its echo.
ECHO_SERVERS = {
    "server": (
        [
            *("-m", "tidings", "echo", "--host", "127.0.0.1", "--port", "0"),
            *("--max-size", str(MAX_MESSAGE_SIZE)),
        ],
        "echo server listening on ",
        "",
    ),
    # A Starlette echo app under uvicorn, on tidings.asgi (docs/asgi.md).
    "asgi": (
        [
            *("-m", "uvicorn", "tests.asgi_apps:starlette_app"),
            *("--ws", "tidings.asgi:WebSocketProtocol", "--ws-max-size"),
            *(str(MAX_MESSAGE_SIZE), "--host", "127.0.0.1", "--port", "0"),
            *("--lifespan", "off", "--ws-ping-interval", "3600"),
        ],
        "INFO:     Uvicorn running on ",
        "/echo",
    ),
}


def run_server_side(
    python: Path,
    cases: list[str],
    out: Path,
    timeout: float,
    procs: Processes,
    *,
    name: str = "server",
) -> Path:
    """Return the reports directory."""
    reports = out / name
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    argv, ready, path = ECHO_SERVERS[name]
    echo_log_path = out / f"echo-{name}.log"
    env = _subprocess_env()
    env["PYTHONPATH"] += os.pathsep + str(ROOT)  # tests.asgi_apps
    with echo_log_path.open("wb") as echo_log:
        echo = procs.start([sys.executable, *argv], echo_log, env=env, cwd=ROOT)
    try:
        line = _wait_for_line(echo, echo_log_path, ready, START_TIMEOUT)
        url = line[len(ready) :].split()[0].rstrip("/").replace("http:", "ws:") + path
        spec = out / "fuzzingclient.json"
        _write_spec(
            spec,
            {
                "outdir": str(reports),
                "servers": [{"agent": AGENT, "url": url}],
                "cases": cases,
                "exclude-cases": [],
                "exclude-agent-cases": {},
            },
        )
        print(f"{name} side: wstest fuzzingclient -> {url}", flush=True)
        with (out / "wstest-fuzzingclient.log").open("wb") as log:
            wstest = procs.start(_wstest(python, "fuzzingclient", spec), log, cwd=out)
        try:
            wstest.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(
                f"server side: wstest did not finish within {timeout:.0f} s"
            ) from None
        finally:
            procs.stop(wstest)
        if echo.poll() is not None:
            raise HarnessError(f"the echo server died (exit {echo.returncode})")
    finally:
        procs.stop(echo)
    return reports


# -- the client side: a tidings client against wstest's fuzzing server -----


def run_client_side(
    python: Path, cases: list[str], out: Path, timeout: float, procs: Processes
) -> tuple[Path, dict[int, str]]:
    reports = out / "client"
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    port = _free_port()
    spec = out / "fuzzingserver.json"
    _write_spec(
        spec,
        {
            "url": f"ws://127.0.0.1:{port}",
            "outdir": str(reports),
            "cases": cases,
            "exclude-cases": [],
            "exclude-agent-cases": {},
        },
    )
    with (out / "wstest-fuzzingserver.log").open("wb") as log:
        wstest = procs.start(
            [*_wstest(python, "fuzzingserver", spec), "--webport", "0"], log, cwd=out
        )
    try:
        _wait_for_port(wstest, port, START_TIMEOUT)
        print(
            f"client side: tidings client -> wstest fuzzingserver :{port}", flush=True
        )
        notes = _run_async(_drive_client(f"ws://127.0.0.1:{port}", timeout))
    finally:
        procs.stop(wstest)
    return reports, notes


def _run_async(coro: Any) -> Any:
    sys.path.insert(0, str(ROOT / "src"))
    return asyncio.run(coro)


async def _drive_client(base: str, timeout: float) -> dict[int, str]:
    """Run every case with a tidings client; return notes on odd endings."""
    try:
        async with asyncio.timeout(timeout):
            count = await _case_count(base)
            notes: dict[int, str] = {}
            for number in range(1, count + 1):
                note = await _client_case(f"{base}/runCase?case={number}&agent={AGENT}")
                if note:
                    notes[number] = note
            await _update_reports(base)
            return notes
    except TimeoutError:
        raise HarnessError(
            f"client side: the cases did not finish within {timeout:.0f} s"
        ) from None


async def _case_count(base: str) -> int:
    import tidings

    async with tidings.connect(f"{base}/getCaseCount", compression=None) as ws:
        message = await ws.recv()
    return int(message)


async def _update_reports(base: str) -> None:
    import tidings

    ws = await tidings.connect(f"{base}/updateReports?agent={AGENT}")
    async with asyncio.timeout(120):
        # The suite writes its reports, then closes.
        with contextlib.suppress(tidings.ConnectionClosed):
            async for _ in ws:
                pass


async def _client_case(uri: str) -> str | None:
    """Echo every message back until the close, as the suite expects."""
    import tidings
    from tidings.protocol import DeflateConfig

    ws = None
    try:
        async with asyncio.timeout(CASE_TIMEOUT):
            ws = await tidings.connect(
                uri,
                # The default offer: the suite's fuzzing server accepts it in
                # every 12.* and 13.* variant.
                compression=DeflateConfig(),
                max_message_size=MAX_MESSAGE_SIZE,
                ping_interval=None,
                close_timeout=5.0,
            )
            with contextlib.suppress(tidings.ConnectionClosed):
                async for message in ws:
                    await ws.send(message)
            await ws.wait_closed()
    except TimeoutError:
        return f"no close within {CASE_TIMEOUT:.0f} s"
    except (OSError, tidings.TidingsError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if ws is not None:
            await ws.close()
    return None


# -- reports -----------------------------------------------------------


@dataclass
class Side:
    name: str
    results: dict[str, dict[str, Any]]
    reports: Path
    notes: dict[str, str] = field(default_factory=dict)


def load_results(reports: Path, expected: int | None) -> dict[str, dict[str, Any]]:
    index = reports / "index.json"
    if not index.exists():
        raise HarnessError(f"{index} is missing: wstest wrote no report")
    results: dict[str, dict[str, Any]] = json.loads(index.read_text()).get(AGENT, {})
    if not results:
        raise HarnessError(f"{index} has no case for agent {AGENT!r}: nothing ran")
    if expected is not None and len(results) != expected:
        raise HarnessError(
            f"{index} has {len(results)} cases for {AGENT!r}, expected {expected}"
        )
    return results


def _case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def is_clean(result: dict[str, Any]) -> bool:
    return (
        result.get("behavior") in ACCEPTED and result.get("behaviorClose") in ACCEPTED
    )


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """Cases per group by behavior, then the close behavior."""
    head = ["group", "cases", *BEHAVIORS, "close OK", "close INFO", "close other"]
    rows: dict[str, list[int]] = {}
    for case_id, result in results.items():
        group = case_id.split(".")[0]
        row = rows.setdefault(group, [0] * (len(head) - 1))
        row[0] += 1
        behavior = result.get("behavior")
        # Anything unknown counts as a failure.
        column = BEHAVIORS.index(behavior) if behavior in BEHAVIORS else 4
        row[1 + column] += 1
        close = result.get("behaviorClose")
        row[6 + (0 if close == "OK" else 1 if close == "INFORMATIONAL" else 2)] += 1
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|",
    ]
    total = [0] * (len(head) - 1)
    for group in sorted(rows, key=int):
        label = f"{group} {GROUPS.get(group, '')}".strip()
        lines.append("| " + " | ".join([label, *(str(n) for n in rows[group])]) + " |")
        total = [a + b for a, b in zip(total, rows[group], strict=True)]
    lines.append("| **total** | " + " | ".join(f"**{n}**" for n in total) + " |")
    return "\n".join(lines)


def unclean_details(side: Side) -> str:
    lines = []
    for case_id in sorted(side.results, key=_case_key):
        result = side.results[case_id]
        if is_clean(result):
            continue
        detail: dict[str, Any] = {}
        report = side.reports / str(result.get("reportfile", ""))
        if report.is_file():
            with contextlib.suppress(ValueError):
                detail = json.loads(report.read_text())
        lines.append(
            f"- **{case_id}**: behavior {result.get('behavior')}, close "
            f"{result.get('behaviorClose')} (remote close code "
            f"{result.get('remoteCloseCode')})"
        )
        for key in ("description", "expectation", "result", "resultClose"):
            text = " ".join(str(detail.get(key, "")).split())
            if text:
                lines.append(f"  - {key}: {text[:400]}")
        note = side.notes.get(case_id)
        if note:
            lines.append(f"  - tidings: {note}")
    return "\n".join(lines)


def tidings_version() -> str:
    """The version, and which protocol hot paths (C or Python) were used."""
    sys.path.insert(0, str(ROOT / "src"))
    import tidings

    version = str(tidings.__version__)
    try:
        from tidings.protocol.speedups import implementation
    except ImportError:
        return version
    return f"{version} ({implementation()} protocol speedups)"


def render(mode: str, sides: list[Side], started: datetime.datetime) -> str:
    parts = [
        f"Autobahn|Testsuite {PINS[-1].split('==')[1]}, `--{mode}` run, "
        f"tidings {tidings_version()}, Python {platform.python_version()}, "
        f"{started:%Y-%m-%d %H:%M} UTC.",
    ]
    for side in sides:
        what = {
            "server": "`python -m tidings echo` tested by `wstest -m fuzzingclient`",
            "asgi": "a Starlette echo app under `uvicorn --ws "
            "tidings.asgi:WebSocketProtocol` tested by `wstest -m fuzzingclient`",
        }.get(side.name, "a tidings client tested by `wstest -m fuzzingserver`")
        parts += ["", f"### {side.name.capitalize()}: {what}", ""]
        parts.append(summary_table(side.results))
        details = unclean_details(side)
        parts += ["", details if details else "Every case OK or INFORMATIONAL."]
    return "\n".join(parts) + "\n"


# -- main --------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn|Testsuite against tidings."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_const", const="full", dest="mode")
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode")
    parser.add_argument(
        "--side", choices=("server", "client", "both", "asgi"), default="both"
    )
    parser.add_argument(
        "--cases", nargs="+", metavar="ID", help="run only these cases or patterns"
    )
    parser.add_argument("--out", type=Path, help="reports directory")
    args = parser.parse_args(argv)

    out: Path = (args.out or ROOT / ".autobahn" / args.mode).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cases = args.cases or (FULL_CASES if args.mode == "full" else QUICK_CASES)
    expected = None if args.cases else EXPECTED_CASES[args.mode]
    timeout = SIDE_TIMEOUT[args.mode]
    started = datetime.datetime.now(datetime.UTC)

    python27, how = find_python27()
    if python27 is None:
        print(f"autobahn: {how}", file=sys.stderr)
        return 2
    procs = Processes()
    # SIGTERM (a CI timeout, pytest killing us) still ends our processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with (out / "env-build.log").open("a") as log:
            python = ensure_wstest(python27, log)
        sides: list[Side] = []
        for name in ("server", "client") if args.side == "both" else (args.side,):
            begin = time.monotonic()
            if name in ECHO_SERVERS:
                reports = run_server_side(python, cases, out, timeout, procs, name=name)
                notes: dict[int, str] = {}
            else:
                reports, notes = run_client_side(python, cases, out, timeout, procs)
            results = load_results(reports, expected)
            side = Side(name, results, reports)
            if notes:
                # The fuzzing server runs the selected cases in id order.
                ids = sorted(results, key=_case_key)
                side.notes = {ids[n - 1]: note for n, note in notes.items()}
            sides.append(side)
            took = time.monotonic() - begin
            print(f"{name} side: {len(results)} cases in {took:.0f} s", flush=True)
    except HarnessError as exc:
        print(f"autobahn: {exc}", file=sys.stderr)
        return 2
    finally:
        procs.stop_all()
    text = render(args.mode, sides, started)
    (out / "summary.md").write_text(text)
    print()
    print(text)
    print(f"(written to {out / 'summary.md'}; HTML reports in {out}/*/index.html)")
    bad = sum(not is_clean(r) for side in sides for r in side.results.values())
    if bad:
        print(f"autobahn: {bad} case(s) not OK or INFORMATIONAL", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
