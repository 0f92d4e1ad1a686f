"""The docs: the site builds with no warning, documents every public name,
and every code block of the guides (README.md and docs/) is checked against
the code it describes, or is marked as a fragment with ``<!-- fragment -->``
on the line before it.

What "checked" means depends on the block's language:

- ``python``: run, each block its own way (``PYTHON`` below), with the
  ports it names replaced by free ones; docs/integrate.md's FastAPI and
  Django views are served to a hub and driven through every hook
  (``AnswersTheHub``); ``pycon``: doctest.
- ``sh``: every command of ours parses. ``tidings ...`` with the CLI's own
  parser; ``python -m M``, ``python FILE`` and ``scripts/X`` must exist and
  know every ``--option`` given; ``uvicorn --ws M:C`` must import; ``pip
  install`` extras must exist. Other programs (curl, redis-server) are
  theirs to check.
- ``json`` parses (a sequence of values); ``toml`` loads as a hub config;
  ``nginx`` passes ``nginx -t``; ``js`` passes ``node --check``.
- ``text`` is output or a drawing, not code.

Inline code that starts with ``tidings `` parses with the CLI's parser too.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import traceback
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tidings
import tidings.asgi
import tidings.hub
import tidings.protocol
import tidings.sync
from tidings.cli import build_parser
from tidings.hub import load_config

from .conftest import (
    Peer,
    free_port,
    http_request,
    serve_uvicorn,
    skip_unless_ci,
    wait_for,
)

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FRAGMENT = "<!-- fragment -->"
PUBLIC = [tidings, tidings.sync, tidings.asgi, tidings.hub, tidings.protocol]
BOUND = 30


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int
    lang: str
    code: str
    heading: str
    index: int  # among the blocks under the same heading
    fragment: bool

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(path: Path) -> Iterator[Block]:
    """The fenced blocks of a Markdown page, with the heading above each."""
    lines = path.read_text().splitlines()
    heading, seen, i = "", 0, 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"#{1,6} ", line):
            heading, seen = line.lstrip("#").strip(), 0
        fence = re.match(r"(\s*)(`{3,})(.*)$", line)
        if fence:
            indent, ticks, info = fence.groups()
            end = i + 1
            while not re.fullmatch(rf"\s*{ticks}\s*", lines[end]):
                end += 1
            body = [text[len(indent) :] for text in lines[i + 1 : end]]
            yield Block(
                page=str(path.relative_to(ROOT)),
                line=i + 1,
                lang=info.strip(),
                code="\n".join(body) + "\n",
                heading=heading,
                index=seen,
                fragment=i > 0 and lines[i - 1].strip() == FRAGMENT,
            )
            seen += 1
            i = end
        i += 1


BLOCKS = [block for page in PAGES for block in read_blocks(page)]
CODE = [b for b in BLOCKS if not b.lang.startswith("{") and b.lang != "text"]


# -- the site ------------------------------------------------------------------


def test_the_site_builds_with_no_warning_and_documents_every_public_name(
    tmp_path: Path,
) -> None:
    out = tmp_path / "site"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q"]
    build = subprocess.run(
        [*command, "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    from sphinx.util.inventory import InventoryFile

    with (out / "objects.inv").open("rb") as inventory:
        documented = InventoryFile.load(inventory, "", os.path.join)
    names = {name for kind in documented.values() for name in kind}
    for module in PUBLIC:
        for name in module.__all__:
            assert f"{module.__name__}.{name}" in names, f"{module.__name__}.{name}"


def public_objects() -> Iterator[tuple[str, object]]:
    for module in PUBLIC:
        for name in module.__all__:
            obj = getattr(module, name)
            yield f"{module.__name__}.{name}", obj
            if isinstance(obj, type):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and (
                        callable(member) or isinstance(member, property)
                    ):
                        yield f"{module.__name__}.{name}.{attr}", getattr(obj, attr)


@pytest.mark.parametrize("name", dict(public_objects()))
def test_every_public_name_has_a_docstring(name: str) -> None:
    # inspect.getdoc finds a method's docstring where it overrides one.
    assert inspect.getdoc(dict(public_objects())[name]), f"{name} has no docstring"


# -- the code blocks -----------------------------------------------------------


def test_the_pages_have_code_blocks() -> None:
    assert len(CODE) > 30, [str(b) for b in CODE]  # the parser finds them


@pytest.mark.parametrize("block", [b for b in CODE if not b.fragment], ids=str)
def test_every_code_block_is_checked(block: Block) -> None:
    check = CHECKS.get(block.lang)
    assert check is not None, (
        f"{block}: a ```{block.lang} block; give it a check here or mark it {FRAGMENT}"
    )
    check(block)


def test_fragments_are_the_exception() -> None:
    # A fragment is a sketch that cannot run alone, not a way out of a check.
    fragments = [str(b) for b in CODE if b.fragment]
    assert len(fragments) <= len(CODE) // 10, fragments


# python ------------------------------------------------------------------------

# Runs a block as a script, or as a cell with top-level await (like a
# notebook's) where it awaits at the top; ``tidings`` is imported already.
RUNNER = """\
import ast, asyncio, tidings
code = compile({code!r}, "<doc>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
result = eval(code, {{"__name__": "__main__", "tidings": tidings}})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


def runner_for(code: str) -> list[str]:
    """The command that runs ``code`` as ``RUNNER`` says."""
    return [sys.executable, "-c", RUNNER.format(code=code)]


def run_python(code: str) -> str:
    result = subprocess.run(
        runner_for(code),
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextmanager
def background(command: list[str], ready: str) -> Iterator[str]:
    """Run ``command`` until the block ends; yield its first stdout line
    that contains ``ready``."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    # A process that neither prints nor ends is killed: its stdout ends then.
    deadline = threading.Timer(BOUND, proc.kill)
    deadline.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if ready in line:
                yield line
                break
        else:
            pytest.fail(f"{command} ended before printing {ready!r}")
    finally:
        deadline.cancel()
        proc.terminate()
        proc.wait(BOUND)


@contextmanager
def echo_server() -> Iterator[int]:
    command = [sys.executable, "-m", "tidings", "echo", "--port", "0"]
    with background(command, ready="listening on") as line:
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert match is not None, line
        yield int(match.group(1))


def prints_the_echo(block: Block) -> None:
    """A client of an echo server: it prints what it sent."""
    sent = re.search(r'send\("([^"]+)"\)', block.code)
    assert sent is not None, block.code
    with echo_server() as port:
        out = run_python(block.code.replace("8765", str(port)))
    assert out == sent.group(1) + "\n"


def serves_and_prints_the_echo(block: Block) -> None:
    """A server and its client in one program."""
    out = run_python(block.code.replace("8765", str(free_port())))
    assert out == "Hello, tidings!\n"


def serves_an_echo(block: Block) -> None:
    """A server that runs until stopped: a client's message comes back."""
    port = free_port()
    proc = subprocess.Popen(runner_for(block.code.replace("8765", str(port))))
    try:
        # Nothing announces the server: its port opening is the event.
        deadline = time.monotonic() + BOUND
        while True:
            try:
                ws = tidings.sync.connect(f"ws://127.0.0.1:{port}/")
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, "the server ended"
                assert time.monotonic() < deadline, f"nothing listens on {port}"
                time.sleep(0.02)
        with ws:
            ws.send("are you there?")
            assert ws.recv(timeout=BOUND) == "are you there?"
    finally:
        proc.terminate()
        proc.wait(BOUND)


def runs_a_hub(block: Block) -> None:
    """An in-process hub on port 0: it prints its address."""
    assert re.match(r"http://127\.0\.0\.1:\d+/ ws://", run_python(block.code))


def subscribes_to_a_hub(block: Block) -> None:
    """A hub client that prints its own publication, then waits for more."""
    serve = [sys.executable, "-m", "tidings", "serve", "--port", "0"]
    with background(serve, ready="WebSocket endpoint") as line:
        port = re.search(r":(\d+)/ws", line)
        assert port is not None, line
        code = block.code.replace("8000", port.group(1))
        with background(runner_for(code), ready="") as out:
            assert out == "1 {'name': 'py', 'text': 'hi'}\n"


def publishes_to_a_hub(block: Block) -> None:
    """A back end of the HTTP API: its publication is in the history."""
    serve = [sys.executable, "-m", "tidings", "serve", "--port", "0"]
    with background(serve, ready="WebSocket endpoint") as line:
        port = re.search(r":(\d+)/ws", line)
        assert port is not None, line
        out = run_python(block.code.replace("8000", port.group(1)))
        with tidings.HubAPI(f"http://127.0.0.1:{port.group(1)}") as api:
            history = api.history("chat:lobby")
    assert "PresenceStats(clients=0, users=0)" in out, out
    assert [p.offset for p in history.publications] == [1], history


def quotes_setup_py(block: Block) -> None:
    """A quotation of setup.py."""
    setup = re.sub(r"\s+", " ", (ROOT / "setup.py").read_text())
    assert re.sub(r"\s+", " ", block.code.strip()) in setup


@dataclass(frozen=True)
class AnswersTheHub:
    """A block of docs/integrate.md's example back end in ``framework``
    (``fastapi`` or ``django``): ``part`` is the hook its view answers, or
    ``app`` (the module the views add to) or ``urls`` (Django's routes).

    The blocks of one framework make one application, which a process of
    its own (``python -m tests.test_docs FRAMEWORK``, below) serves under
    uvicorn (FastAPI's app; Django's ASGI handler, with a project's usual
    middleware, sessions and users in SQLite) to a hub configured with the
    page's TOML block, and drives through every hook over WebSockets.
    """

    framework: str
    part: str

    def __call__(self, block: Block) -> None:
        outcomes = hook_outcomes(self.framework)
        parts = HOOKS if self.part in ("app", "urls") else (self.part,)
        failed = {p: outcomes[p] for p in parts if outcomes[p] != "ok"}
        assert not failed, "\n".join(f"{p}: {why}" for p, why in failed.items())


INTEGRATE = "docs/integrate.md"
HOOKS = ("connect", "refresh", "subscribe", "publish", "rpc")
_HOOK_HEADINGS = {
    "connect": "connect: who is this?",
    "refresh": "refresh: still the same user?",
    "subscribe": "subscribe: may they enter?",
    "publish": "publish: check, store, rewrite",
    "rpc": "rpc: ask the application",
}

MOUNT = "The hub inside your app"


@dataclass(frozen=True)
class ServesTheMountedHub:
    """A block of docs/asgi.md's "The hub inside your app" (``index``) or
    the README's version of its first: the app, served by an in-process
    uvicorn, and driven. The first block is the app with the hub at
    /realtime and a view that publishes; the later ones add to it, each run
    after the first: the Starlette lifespan around a ``database`` of ours,
    and the connect hook asking ``sessions`` of ours."""

    index: int

    def __call__(self, block: Block) -> None:
        namespace: dict[str, Any] = {}
        if self.index > 0:
            first = next(
                b for b in CODE if (b.page, b.heading) == ("docs/asgi.md", MOUNT)
            )
            exec(first.code, namespace)
        drive = {0: _ships, 2: _enters_the_database, 3: _asks_the_sessions}[self.index]
        asyncio.run(drive(block.code, namespace))


async def _ships(code: str, namespace: dict[str, Any]) -> None:
    """A view's publication reaches a client of the mounted hub."""
    from tidings.hub import Client

    exec(code, namespace)
    served = await serve_uvicorn(namespace["app"])
    try:
        async with asyncio.timeout(BOUND), Client(served.ws) as client:
            sub = await client.subscribe("orders:shipped")
            answer = await http_request(served.port, "POST", "/orders/7/ship")
            assert answer.status == 200, answer
            pub = await anext(aiter(sub))
            assert pub.data == {"id": 7}
    finally:
        await served.stop()


async def _enters_the_database(code: str, namespace: dict[str, Any]) -> None:
    """The app's own lifespan starts the hub, inside its database's."""
    from tidings.hub import Client

    entered: list[str] = []

    class Database:
        @asynccontextmanager
        async def connect(self) -> AsyncIterator[None]:
            entered.append("connect")
            yield
            entered.append("disconnect")

    namespace["database"] = Database()
    exec(code, namespace)
    served = await serve_uvicorn(namespace["app"])
    try:
        async with asyncio.timeout(BOUND), Client(served.ws) as client:
            assert entered == ["connect"]
            sub = await client.subscribe("orders:shipped")
            await namespace["hub"].publish("orders:shipped", {"id": 8})
            assert (await anext(aiter(sub))).data == {"id": 8}
    finally:
        await served.stop()
    assert entered == ["connect", "disconnect"]


async def _asks_the_sessions(code: str, namespace: dict[str, Any]) -> None:
    """The connect hook reads the session cookie, and refuses without it."""
    from tidings.hub import Client, HubError

    class Sessions:
        async def user_from_cookie(self, cookie: str | None) -> Any:
            if cookie != "s3cret":
                return None
            return types.SimpleNamespace(id="42", name="Ada")

    namespace["sessions"] = Sessions()
    exec(code, namespace)
    served = await serve_uvicorn(namespace["app"])
    try:
        async with (
            asyncio.timeout(BOUND),
            Client(served.ws, headers=[("Cookie", "session=s3cret")]) as client,
        ):
            assert (client.user, client.info) == ("42", {"name": "Ada"})
        with pytest.raises(HubError) as refused:
            async with asyncio.timeout(BOUND), Client(served.ws):
                pass
        assert refused.value.code == 401
    finally:
        await served.stop()


PYTHON: dict[tuple[str, str, int], Callable[[Block], None]] = {
    ("README.md", "An echo server and a client", 0): serves_and_prints_the_echo,
    ("README.md", "An echo server and a client", 1): prints_the_echo,
    ("docs/asyncio.md", "A server", 0): serves_an_echo,
    ("docs/asyncio.md", "A client", 0): prints_the_echo,
    ("docs/hub.md", "Inside a Python program", 0): runs_a_hub,
    ("docs/hub.md", "From Python", 0): subscribes_to_a_hub,
    ("docs/hub.md", "From a back end: the HTTP API", 0): publishes_to_a_hub,
    ("README.md", "Run the hub", 2): publishes_to_a_hub,
    ("docs/speedups.md", "Building", 0): quotes_setup_py,
    ("README.md", "Inside FastAPI and Starlette", 1): ServesTheMountedHub(0),
    **{("docs/asgi.md", MOUNT, i): ServesTheMountedHub(i) for i in (0, 2, 3)},
    (INTEGRATE, "With FastAPI", 0): AnswersTheHub("fastapi", "app"),
    (INTEGRATE, "With Django", 0): AnswersTheHub("django", "app"),
    (INTEGRATE, "With Django", 1): AnswersTheHub("django", "urls"),
    # Under each hook's heading: its JSON, its FastAPI view, its Django view.
    **{
        (INTEGRATE, heading, index): AnswersTheHub(framework, hook)
        for hook, heading in _HOOK_HEADINGS.items()
        for index, framework in ((1, "fastapi"), (2, "django"))
    },
}


@functools.cache
def hook_outcomes(framework: str) -> dict[str, str]:
    """Each hook's outcome (``ok``, or what failed) with ``framework``'s
    example back end of docs/integrate.md, from a process of its own."""
    parts = [
        (check.part, block.code)
        for block in CODE
        if isinstance(
            check := PYTHON.get((block.page, block.heading, block.index)), AnswersTheHub
        )
        and check.framework == framework
    ]
    [toml] = [
        b.code
        for b in CODE
        if b.page == INTEGRATE and b.lang == "toml" and "[proxy]" in b.code
    ]
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_docs", framework],
        input=json.dumps({"parts": parts, "toml": toml}),
        capture_output=True,
        text=True,
        timeout=4 * BOUND,
        cwd=ROOT,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        why = f"the example back end did not run: {result.stderr[-3000:]}"
        return dict.fromkeys(HOOKS, why)
    outcomes: dict[str, str] = json.loads(lines[-1])
    return outcomes


def check_python(block: Block) -> None:
    check = PYTHON.get((block.page, block.heading, block.index))
    assert check is not None, f"{block}: no check for this block in PYTHON"
    check(block)


def check_pycon(block: Block) -> None:
    """A doctest, in a process of its own: TIDINGS_NO_SPEEDUPS, which this
    one may run under, would change what the speedups block shows."""
    env = {k: v for k, v in os.environ.items() if k != "TIDINGS_NO_SPEEDUPS"}
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "session.txt"
        session.write_text(block.code)
        result = subprocess.run(
            [sys.executable, "-m", "doctest", "-v", str(session)],
            capture_output=True,
            text=True,
            timeout=BOUND,
            env=env,
            check=False,
        )
    assert result.returncode == 0, result.stdout
    assert "0 failed" in result.stdout, result.stdout


# sh --------------------------------------------------------------------------

PYTHONS = {"python", "python3", ".venv/bin/python", ".bench/venv/bin/python"}
OURS = {"tidings", ".venv/bin/tidings"}
PIPS = {"pip", ".venv/bin/pip", ".bench/venv/bin/pip"}
# Programs whose command lines are their makers' to check.
THEIRS = {"curl", "openssl", "redis-server", ".bench/venv/bin/py-spy"}


def commands(script: str) -> Iterator[list[str]]:
    """Each simple command of a shell snippet, as words."""
    script = script.replace("\\\n", " ")
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", "||", ";", "&", "|"):
                if command:
                    yield command
                command = []
            elif word.endswith(("&", ";")) and len(word) > 1:
                command.append(word.rstrip("&;"))
                yield command
                command = []
            elif not command and re.fullmatch(r"[A-Z_]+=\S*", word):
                continue  # an environment assignment
            else:
                command.append(word)


def options(words: list[str]) -> set[str]:
    return {w.split("=", 1)[0] for w in words if w.startswith("--")}


def knows_options(command: list[str], words: list[str]) -> None:
    """``command --help`` names every ``--option`` in ``words``."""
    wanted = options(words)
    if not wanted:
        return
    help_text = subprocess.run(
        [*command, "--help"],
        capture_output=True,
        text=True,
        timeout=BOUND,
        cwd=ROOT,
        check=False,
    ).stdout
    missing = {o for o in wanted if not re.search(rf"{re.escape(o)}\b", help_text)}
    assert not missing, f"{' '.join(command)} does not know {sorted(missing)}"


def check_ours(words: list[str]) -> None:
    parser = build_parser()
    try:
        parser.parse_args(words)
    except SystemExit as exc:
        if words[-1:] == ["--help"] and exc.code == 0:
            return
        pytest.fail(f"tidings {shlex.join(words)}: the CLI refuses it")


def check_python_command(words: list[str]) -> None:
    if words[:1] == ["-c"]:
        ast.parse(words[1])
    elif words[:1] == ["-m"]:
        module = words[1]
        assert importlib.util.find_spec(module) is not None, module
        if module not in ("pytest", "venv", "tidings"):
            knows_options([sys.executable, "-m", module], words[2:])
        elif module == "tidings":
            check_ours(words[2:])
    else:
        script = ROOT / words[0]
        assert script.is_file(), words[0]
        if script.parent.name == "fuzz":
            # libFuzzer's -flags, and ours: --replay FILE... (no file: no-op).
            assert options(words[1:]) <= {"--replay"}, words
            replay = [sys.executable, str(script), "--replay"]
            subprocess.run(replay, timeout=BOUND, check=True, capture_output=True)
        else:
            knows_options([sys.executable, str(script)], words[1:])


def check_pip(words: list[str]) -> None:
    assert words[0] == "install", words
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
    )
    for word in words[1:]:
        wanted = re.fullmatch(r"(?:\.|tidings)\[([a-z,]+)\]", word)
        if wanted:
            assert set(wanted.group(1).split(",")) <= extras, word


def check_uvicorn(words: list[str]) -> None:
    ws = words[words.index("--ws") + 1]
    module, _, name = ws.partition(":")
    assert getattr(importlib.import_module(module), name)


def check_shell(block: Block) -> None:
    for words in commands(block.code):
        program, args = words[0], words[1:]
        if program in OURS:
            check_ours(args)
        elif program in PYTHONS:
            check_python_command(args)
        elif program in PIPS:
            check_pip(args)
        elif program == "uvicorn":
            check_uvicorn(args)
        elif program.startswith(("scripts/", ".ci/")):
            script = ROOT / program
            assert script.is_file() and os.access(script, os.X_OK), program
            knows_options([str(script)], args)
        else:
            assert program in THEIRS, f"{block}: what checks {program!r}?"


@pytest.mark.parametrize(
    "span",
    sorted(
        {
            span
            for page in PAGES
            for span in re.findall(r"`(tidings [^`]+)`", page.read_text())
            if len(span.split()) > 2  # not just a name: `tidings bench`
        }
    ),
)
def test_inline_commands_parse(span: str) -> None:
    check_ours(shlex.split(span.replace("\n", " "))[1:])


# other languages -------------------------------------------------------------


def check_json(block: Block) -> None:
    decoder, text, at = json.JSONDecoder(), block.code, 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        _, at = decoder.raw_decode(text, at)


def check_toml(block: Block) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tidings.toml"
        path.write_text(block.code)
        load_config(path)


def check_nginx(block: Block) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        skip_unless_ci("nginx is not installed")
    with tempfile.TemporaryDirectory() as prefix:
        (Path(prefix) / "logs").mkdir()
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(f"pid {prefix}/nginx.pid;\n" + block.code)
        result = subprocess.run(
            [nginx, "-t", "-q", "-p", prefix, "-c", str(conf), "-e", "stderr"],
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
    assert result.returncode == 0, result.stderr


def check_js(block: Block) -> None:
    node_check(block.code)


def check_html(block: Block) -> None:
    scripts = re.findall(r'<script type="module">(.*?)</script>', block.code, re.S)
    assert scripts, f"{block}: no <script type=module> to check"
    for script in scripts:
        node_check(script)


def node_check(module: str) -> None:
    """Node parses ``module`` as an ES module."""
    node = shutil.which("node")
    if node is None:
        skip_unless_ci("node is not installed")
        return
    result = subprocess.run(
        [node, "--check", "--input-type=module"],
        input=module,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert result.returncode == 0, result.stderr


CHECKS: dict[str, Callable[[Block], None]] = {
    "python": check_python,
    "pycon": check_pycon,
    "sh": check_shell,
    "json": check_json,
    "toml": check_toml,
    "nginx": check_nginx,
    "js": check_js,
    "html": check_html,
}


# docs/integrate.md's back end, served to a hub -------------------------------
#
# ``python -m tests.test_docs FRAMEWORK`` reads the page's blocks of one
# framework and its TOML (JSON on stdin, from hook_outcomes above), serves
# the application and a hub in one event loop, and prints each hook's
# outcome as one JSON line.


@dataclass
class ExampleBackEnd:
    """The application of docs/integrate.md as its views see it: ``views``
    is the module of the page's blocks; ``login(user)`` gives the Cookie
    header of a new session of ``user``, which ``logout(cookie)`` ends."""

    app: Any
    views: types.ModuleType
    login: Callable[[str], Awaitable[str]]
    logout: Callable[[str], Awaitable[None]]


def _module(name: str, code: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(code, f"<{INTEGRATE}: {name}>", "exec"), module.__dict__)
    return module


def fastapi_back_end(parts: list[tuple[str, str]]) -> ExampleBackEnd:
    views = _module("chat_hooks", "\n".join(code for _, code in parts))
    sessions: dict[str, str] = views.SESSIONS

    async def login(user: str) -> str:
        [key] = [key for key, owner in sessions.items() if owner == user]
        return f"session={key}"

    async def logout(cookie: str) -> None:
        del sessions[cookie.removeprefix("session=")]

    return ExampleBackEnd(views.app, views, login, logout)


def django_back_end(parts: list[tuple[str, str]], folder: Path) -> ExampleBackEnd:
    """The blocks as the app ``chat`` of a Django project with the usual
    middleware (sessions, CSRF, APPEND_SLASH, authentication), users and
    sessions in SQLite."""
    import django
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from django.core.asgi import get_asgi_application
    from django.core.management import call_command

    settings.configure(
        SECRET_KEY="the docs' project",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF="chat.urls",
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(folder / "db.sqlite3"),
            }
        },
        USE_TZ=True,
    )
    django.setup()
    call_command("migrate", verbosity=0)
    chat = types.ModuleType("chat")
    chat.__path__ = []
    sys.modules["chat"] = chat
    views = _module(
        "chat.views", "\n".join(code for part, code in parts if part != "urls")
    )
    [urls] = [code for part, code in parts if part == "urls"]
    _module("chat.urls", urls)

    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import Client

    @sync_to_async
    def login(name: str) -> str:
        user, _ = get_user_model().objects.get_or_create(
            username=name, defaults={"first_name": name.title()}
        )
        client = Client()
        client.force_login(user)
        cookie = settings.SESSION_COOKIE_NAME
        return f"{cookie}={client.cookies[cookie].value}"

    @sync_to_async
    def logout(cookie: str) -> None:
        SessionStore(session_key=cookie.partition("=")[2]).delete()

    return ExampleBackEnd(get_asgi_application(), views, login, logout)


async def drive_the_hooks(back: ExampleBackEnd, toml: str) -> dict[str, str]:
    """Serve ``back`` under uvicorn and a hub configured by ``toml`` (its
    back end's address made this one's), and use every hook as a browser
    tab would; return each hook's outcome."""
    import uvicorn

    from tidings.hub import Hub

    server = uvicorn.Server(
        uvicorn.Config(
            back.app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"
        )
    )
    serving = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started or serving.done(), "uvicorn to start")
    if serving.done():
        await serving  # raises what stopped it
        raise AssertionError("uvicorn ended before it started")
    port = server.servers[0].sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tidings.toml"
        path.write_text(toml.replace("127.0.0.1:9000", f"127.0.0.1:{port}"))
        config = load_config(path)
    # The page's timeout is for production; this machine may be slow.
    proxy = dataclasses.replace(config.proxy, timeout=BOUND / 2)
    config = dataclasses.replace(config, port=0, proxy=proxy)
    outcomes: dict[str, str] = {}
    peers: list[Peer] = []
    try:
        async with Hub(config) as hub:

            async def peer(cookie: str | None = None) -> Peer:
                headers = [] if cookie is None else [("Cookie", cookie)]
                ws = await tidings.connect(hub.ws_url, headers=headers)
                peers.append(Peer(ws, hub))
                return peers[-1]

            for hook in HOOKS:
                try:
                    await SCENARIOS[hook](hub, back, peer)
                except Exception:
                    outcomes[hook] = traceback.format_exc(limit=-3)
                else:
                    outcomes[hook] = "ok"
                for each in peers:
                    await each.ws.close()
                peers.clear()
    finally:
        server.should_exit = True
        await serving
    return outcomes


Peers = Callable[..., Awaitable[Peer]]


async def _connected(peer: Peers, back: ExampleBackEnd, user: str) -> Peer:
    client = await peer(await back.login(user))
    await client.result("connect")
    assert "subscribe" in await client.push()  # the inbox
    return client


async def connects(hub: Any, back: ExampleBackEnd, peer: Peers) -> None:
    nobody = await peer()
    assert await nobody.error("connect") == (401, "log in first")
    mallory = await peer(await back.login("mallory"))
    await mallory.send({"id": 1, "op": "connect"})
    assert await mallory.closed() == 4003
    alice = await peer(await back.login("alice"))
    result = await alice.result("connect")
    assert result["user"] == "alice", result
    assert result["info"]["name"] == "Alice", result
    assert result["data"] == {"rooms": ["chat:lobby"]}, result
    assert result["ttl"] > 0, result
    push = await alice.push()
    assert push["channel"] == "inbox:alice", push
    assert push["subscribe"]["offset"] == 0, push
    await hub.publish("inbox:alice", {"text": "welcome"})
    [pub] = await alice.pubs(1, "inbox:alice")
    assert pub["data"] == {"text": "welcome"}, pub


async def refreshes(hub: Any, back: ExampleBackEnd, peer: Peers) -> None:
    back.views.CHECK_EVERY = 0.3
    try:
        cookie = await back.login("bob")
        bob = await peer(cookie)
        await bob.result("connect")
        await wait_for(lambda: hub.metrics.hook_calls["refresh", "ok"], "a refresh")
        assert await bob.result("ping") == {}  # still connected
        await back.logout(cookie)
        assert await bob.closed() == 4002
    finally:
        back.views.CHECK_EVERY = 300


async def subscribes(hub: Any, back: ExampleBackEnd, peer: Peers) -> None:
    alice = await _connected(peer, back, "alice")
    await alice.result("subscribe", channel="chat:lobby")
    [present] = (await alice.result("presence", channel="chat:lobby"))["clients"]
    assert present["user"] == "alice", present
    assert present["info"]["name"] == "Alice", present
    assert present["info"]["role"] == "host", present
    assert await alice.error("subscribe", channel="chat:staff") == (
        403,
        "members only",
    )
    assert await alice.error("subscribe", channel="chat:nowhere") == (
        404,
        "no such room",
    )
    assert (await alice.error("history", channel="chat:staff"))[0] == 403


async def publishes(hub: Any, back: ExampleBackEnd, peer: Peers) -> None:
    alice = await _connected(peer, back, "alice")
    await alice.result("subscribe", channel="chat:lobby")
    await alice.result("publish", channel="chat:lobby", data={"text": " hello "})
    [pub] = await alice.pubs(1, "chat:lobby")
    assert pub["data"]["text"] == "hello", pub
    assert pub["data"]["user"] == "alice", pub
    assert isinstance(pub["data"]["id"], int), pub
    assert pub["info"]["user"] == "alice", pub
    assert pub["info"]["info"]["role"] == "host", pub
    stored = back.views.MESSAGES[-1]
    assert stored["text"] == "hello" and stored["channel"] == "chat:lobby", stored
    assert await alice.error(
        "publish", channel="chat:lobby", data={"text": "oh darn"}
    ) == (422, "mind your language")
    assert (await alice.error("publish", channel="chat:lobby", data=7))[0] == 400
    assert back.views.MESSAGES[-1] == stored


async def calls_rpc(hub: Any, back: ExampleBackEnd, peer: Peers) -> None:
    alice = await _connected(peer, back, "alice")
    await alice.result("subscribe", channel="chat:lobby")
    for text in ("first", "second"):
        await alice.result("publish", channel="chat:lobby", data={"text": text})
    [_, second] = await alice.pubs(2, "chat:lobby")
    result = await alice.result(
        "rpc",
        method="messages.before",
        data={"channel": "chat:lobby", "before": second["data"]["id"]},
    )
    assert result["data"][-1]["text"] == "first", result
    assert result["data"][-1]["user"] == "alice", result
    assert await alice.error("rpc", method="messages.after") == (
        404,
        "no method messages.after",
    )
    assert (
        await alice.error(
            "rpc", method="messages.before", data={"channel": "chat:staff", "before": 9}
        )
    )[0] == 400


SCENARIOS: dict[str, Callable[[Any, ExampleBackEnd, Peers], Awaitable[None]]] = {
    "connect": connects,
    "refresh": refreshes,
    "subscribe": subscribes,
    "publish": publishes,
    "rpc": calls_rpc,
}


def serve_the_examples(framework: str) -> None:
    given = json.load(sys.stdin)
    parts = [(part, code) for part, code in given["parts"]]
    with tempfile.TemporaryDirectory() as tmp:
        if framework == "django":
            back = django_back_end(parts, Path(tmp))
        else:
            back = fastapi_back_end(parts)
        outcomes = asyncio.run(drive_the_hooks(back, given["toml"]))
    print(json.dumps(outcomes), flush=True)


if __name__ == "__main__":
    serve_the_examples(sys.argv[1])
