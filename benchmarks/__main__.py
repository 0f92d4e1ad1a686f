"""``python -m benchmarks``: run the benchmark (``--help`` for the options)."""

import sys

from .harness.runner import main

sys.exit(main())
