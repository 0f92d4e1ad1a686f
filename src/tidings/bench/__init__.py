"""The tidings benchmark: ``tidings bench`` / ``python -m tidings.bench``.

It measures tidings against websockets, aiohttp and picows, and the tidings
hub against python-socketio, each server in its own process pinned to one
core, all driven by the same load client pinned to the other, and writes a
Markdown report with PNG charts. See
``docs/performance.md`` for the latest report and how to run it.

For the ``tidings`` command line::

    sub = subparsers.add_parser("bench", help=...)
    tidings.bench.add_arguments(sub)
    ...
    return tidings.bench.run(args)

``main(argv)`` parses and runs on its own. Nothing here is imported by
``import tidings``, and tidings depends on no peer: they live in the
benchmark's own environment. The runner is imported on first use, so that
the server and load-client processes (``tidings.bench.servers``,
``tidings.bench.loadgen``) start light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["add_arguments", "build_parser", "main", "run"]

if TYPE_CHECKING:
    from .runner import add_arguments, build_parser, main, run


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'tidings.bench' has no attribute {name!r}")
