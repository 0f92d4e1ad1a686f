"""The compiled twin of the engine's fan-out loop (see docs/speedups.md)."""

from collections.abc import Iterable, Mapping

from ..protocol import State
from ..protocol.deflate import DeflateConfig, DeflateParams
from .connection import WebSocket

def write_plain(
    connections: Iterable[WebSocket],
    frames: bytes,
    open: State,
    compressed: Mapping[tuple[DeflateParams, DeflateConfig], bytes],
    /,
) -> tuple[int, list[WebSocket]]: ...
