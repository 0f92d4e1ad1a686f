"""tidings.protocol does no I/O: importing it pulls in no I/O module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import tidings.protocol

FORBIDDEN = ("asyncio", "socket", "ssl", "selectors")


def test_importing_the_protocol_imports_no_io_module() -> None:
    code = (
        "import json, sys; import tidings.protocol; "
        f"print(json.dumps([m for m in {FORBIDDEN!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_the_check_can_fail() -> None:
    # The same probe sees asyncio when it is imported, so the test above
    # would notice a regression.
    code = "import json, sys, asyncio; print(json.dumps('asyncio' in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) is True


def test_the_protocol_sources_never_import_a_clock_or_io_module() -> None:
    banned = {*FORBIDDEN, "time", "datetime", "threading"}
    package = Path(tidings.protocol.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in banned]
    assert found == []
