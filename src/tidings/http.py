"""Plain HTTP answers given beside the WebSocket upgrade."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["HTTPResponse"]


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    """A response that ``process_request`` returns instead of upgrading.

    A ``str`` body is sent as ``text/plain; charset=utf-8``; for ``bytes``,
    put a ``Content-Type`` in ``headers``. The connection closes after it.
    """

    status: int
    body: str | bytes = ""
    headers: Sequence[tuple[str, str]] = ()
