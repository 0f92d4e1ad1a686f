"""The benchmark harness: ``python -m benchmarks`` from the repository root.

It measures tidings against websockets, aiohttp and picows, and the tidings
hub against python-socketio, each server in its own process pinned to one
core, all driven by the same load client pinned to the other, and writes a
Markdown report with PNG charts. See ``benchmarks/README.md`` for how to run
it and ``docs/performance.md`` for the latest report.

- :mod:`.runner`: the command line, the steps, the processes, the results;
- :mod:`.scenarios`: what is measured, and against whom;
- :mod:`.servers`: every server, one per process
  (``python -m benchmarks.harness.servers NAME MODE``);
- :mod:`.loadgen`: the load client, the same for every server
  (``python -m benchmarks.harness.loadgen``);
- :mod:`.report`, :mod:`.charts`: the Markdown report and the PNGs.

It is a development tool beside the product: none of it is in the wheel, and
nothing under ``src/`` imports it. ``main(argv)`` parses and runs on its own;
``add_arguments`` and ``run`` serve another command line. The runner is
imported on first use, so that the server and load-client processes start
light.
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
    raise AttributeError(f"module 'benchmarks.harness' has no attribute {name!r}")
