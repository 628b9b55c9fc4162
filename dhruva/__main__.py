"""``python -m dhruva`` and the ``dhruva`` console script (see dhruva.tools.cli)."""

from __future__ import annotations

import sys

from dhruva.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
