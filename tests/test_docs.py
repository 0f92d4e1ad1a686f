"""The docs: the site builds with no warning, documents every public name,
and every code block of the guides (README.md and docs/) is checked against
the code it describes, or is marked as a fragment with ``<!-- fragment -->``
on the line before it.

What "checked" means depends on the block's language:

- ``python``: run, each block its own way (``PYTHON`` below), with the
  ports it names replaced by free ones; ``pycon``: doctest.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import tidings
import tidings.asgi
import tidings.hub
import tidings.protocol
import tidings.sync
from tidings.cli import build_parser
from tidings.hub import load_config

from .conftest import free_port, skip_unless_ci

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


def quotes_setup_py(block: Block) -> None:
    """A quotation of setup.py."""
    setup = re.sub(r"\s+", " ", (ROOT / "setup.py").read_text())
    assert re.sub(r"\s+", " ", block.code.strip()) in setup


PYTHON: dict[tuple[str, str, int], Callable[[Block], None]] = {
    ("README.md", "An echo server and a client", 0): serves_and_prints_the_echo,
    ("README.md", "An echo server and a client", 1): prints_the_echo,
    ("docs/asyncio.md", "A server", 0): serves_an_echo,
    ("docs/asyncio.md", "A client", 0): prints_the_echo,
    ("docs/hub.md", "Inside a Python program", 0): runs_a_hub,
    ("docs/hub.md", "From Python", 0): subscribes_to_a_hub,
    ("docs/speedups.md", "Building", 0): quotes_setup_py,
}


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
THEIRS = {"curl", "redis-server", ".bench/venv/bin/py-spy"}


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
