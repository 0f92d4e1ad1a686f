"""tidings' side-by-side benchmark: ``python -m benchmarks`` from the
repository root (see ``benchmarks/README.md``).

A development tool, never shipped in the wheel: the code is in
:mod:`benchmarks.harness`; the last results (``results.json``, ``report.md``,
the PNGs) sit beside it in ``benchmarks/``. Nothing is imported here, so that
the server and load-client processes the runner starts stay light.
"""
