"""``python -m actionqueues``: the same as the ``actionqueues`` command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
