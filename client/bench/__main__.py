"""python -m client.bench: the command line of scripts/bench."""

from __future__ import annotations

import sys

from client.bench.cli import main

sys.exit(main())
