"""The compiled twin of the engine's fan-out loop (see docs/speedups.md)."""

from collections.abc import Iterable

from ..protocol import State
from .connection import WebSocket

def write_plain(
    connections: Iterable[WebSocket], frames: bytes, open: State, /
) -> tuple[int, list[WebSocket]]: ...
