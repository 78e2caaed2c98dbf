"""python -m client.bench: the command line of scripts/bench."""

from __future__ import annotations

import sys

from client.bench.cli import main

if __name__ == "__main__":  # importing the module (a package scan) runs nothing
    sys.exit(main())
