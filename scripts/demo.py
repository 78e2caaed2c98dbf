"""The demo: runs what exists of medkv today and says plainly what does not."""

from __future__ import annotations

import importlib.util
import subprocess
import sys


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def main() -> int:
    print("medkv demo")
    ran_something = False
    if _have("consensus.sim"):
        print("\n== Raft core: 20 random fault schedules in the deterministic simulator")
        rc = subprocess.call([sys.executable, "-m", "consensus.sim", "--seeds", "20", "--nodes", "3"])
        ran_something = True
        if rc != 0:
            return rc
    else:
        print("- the Raft core (consensus/) does not exist yet")
    if not _have("node.server"):
        print("- the database node (node/) does not exist yet: no cluster can be started")
        print("- so the clinic workload (client/ + scripts/cluster) cannot run yet")
    if not ran_something:
        print("\nNothing runnable yet beyond the wire contract in proto/ (see README).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
