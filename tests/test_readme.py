"""The README's examples work when pasted."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def python_block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


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
