"""The README's examples work when pasted."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_block_after(heading: str, index: int = 0) -> str:
    """The ``index``-th Python block after ``heading``."""
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_the_echo_example_prints_its_message() -> None:
    code = python_block_after("## An echo server and a client")
    with socket.socket() as sock:  # a free port, in case 8765 is taken here
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = code.replace("8765", str(port))
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, tidings!\n"


def test_the_sync_client_example_prints_the_echo() -> None:
    code = python_block_after("## An echo server and a client", 1)
    assert "tidings.sync" in code
    server = subprocess.Popen(
        [sys.executable, "-m", "tidings", "echo", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # "echo server listening on ws://..."
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert match is not None, line
        result = subprocess.run(
            [sys.executable, "-c", code.replace("8765", match.group(1))],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.terminate()
        server.wait(30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, tidings!\n"
