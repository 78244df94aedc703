"""``python -m gatewayd``: the same as the ``gatewayd`` console script."""

import sys

from gatewayd.cli import main

# Worker processes import the main module again; they must not run the CLI.
if __name__ == "__main__":
    sys.exit(main())
