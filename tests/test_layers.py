"""Imports point down the layers of DESIGN: the CLI (and its load tool,
``tidings.bench``) on top, then the hub, then the engine, then the protocol
core. (The protocol core's own rule, no I/O, is tests/protocol/test_no_io.py.)

The side-by-side benchmark harness is not a layer: it lives beside the
package, in ``benchmarks/`` at the repository root, and the package never
imports it, nor the peers it measures tidings against."""

from __future__ import annotations

import ast
from pathlib import Path

import tidings

PACKAGE = Path(tidings.__file__).parent

#: Modules (by path under src/tidings) and what they must never import.
RULES = {
    "hub": ("tidings.cli", "tidings.bench"),
    # A broker knows channels, offsets and presence entries; not who is
    # connected, nor how (the sessions, the transports, the engine).
    "hub/brokers": (
        "tidings.cli",
        "tidings.bench",
        "tidings.hub.app",
        "tidings.hub.session",
        "tidings.hub.transports",
        "tidings.engine",
    ),
    "engine": ("tidings.cli", "tidings.bench", "tidings.hub", "tidings.sync"),
    "protocol": ("tidings.cli", "tidings.bench", "tidings.hub", "tidings.engine"),
    # The blocking client stands on the protocol core alone: no event loop.
    "sync.py": (
        "tidings.cli",
        "tidings.bench",
        "tidings.hub",
        "tidings.engine",
        "asyncio",
    ),
}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports made absolute."""
    package = ["tidings", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def violations(where: str, banned: tuple[str, ...]) -> list[str]:
    root = PACKAGE / where
    paths = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    return [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in paths
        for module in sorted(imported(path))
        if any(module == b or module.startswith(b + ".") for b in banned)
    ]


#: What no module of the package imports: the harness, the peers it measures
#: tidings against and its charts' library, which only the harness's own
#: environment (.bench/venv) installs. (Not uvicorn: DESIGN's asgi.py serves
#: it. Not aiohttp, whose client the hooks' proxy uses: see below.)
OUTSIDE = ("benchmarks", "websockets", "picows", "socketio", "matplotlib")


def test_imports_point_down() -> None:
    found = [v for where, banned in RULES.items() for v in violations(where, banned)]
    assert found == []


def test_the_check_sees_relative_imports() -> None:
    # The CLI imports the hub with a relative import: the scan must see it,
    # or the rules above could never fail.
    assert "tidings.hub.config" in imported(PACKAGE / "cli.py")
    assert violations("cli.py", ("tidings.hub",)) != []


def test_the_package_leaves_the_harness_outside() -> None:
    assert violations(".", OUTSIDE) == []


def test_only_the_proxy_uses_aiohttp() -> None:
    # Its client, for the hooks over HTTP (the [proxy] extra); aiohttp's
    # server stays a peer the engine is measured against, never a part.
    assert violations(".", ("aiohttp",)) == ["hub/proxy.py imports aiohttp"]


def test_only_the_api_client_uses_httpx() -> None:
    # Its HTTP client (the [api] extra), for back ends: the hub itself
    # serves with nothing of it installed.
    assert violations(".", ("httpx",)) == ["hub/api_client.py imports httpx"]
