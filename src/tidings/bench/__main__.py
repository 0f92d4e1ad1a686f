"""``python -m tidings.bench``."""

import sys

from .runner import main

sys.exit(main())
