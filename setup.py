"""Build configuration beyond pyproject.toml: the optional C extensions.

``tidings.protocol._speedups`` holds compiled twins of the protocol's hot
paths, ``tidings.engine._fanout`` that of the engine's fan-out loop
(docs/speedups.md). Both are optional: where no C compiler is found, or
the compile fails, setuptools prints a warning and the install goes on, and
tidings runs on the pure-Python twins.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tidings.protocol._speedups",
            sources=["src/tidings/protocol/_speedups.c"],
            optional=True,
        ),
        Extension(
            "tidings.engine._fanout",
            sources=["src/tidings/engine/_fanout.c"],
            optional=True,
        ),
    ]
)
