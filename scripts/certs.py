"""Certificates for a whole local cluster in one command (a wrapper of `medkv certs`).

    scripts/certs --out DIR --nodes 3 [--host 127.0.0.1 ...] [--dns db1.example ...]
                  [--client NAME ...] [--days 365]

Writes DIR/ca.pem and DIR/ca.key, DIR/node-<i>.pem/.key (naming node id i:
SAN URI medkv://node/<i>, common name medkv-node-<i>; only these may speak the
Raft transport, each only for its own id) and DIR/<client>.pem/.key for each
client name (default: "client"). Private keys are created with mode 0600.
Every node certificate names every --host (IP) and --dns name, so one set
serves a local cluster or a few hosts; for real hosts issue each node its own
with `medkv certs issue node ID --host ...`. Keep ca.key offline once done.
The certificates are made by node/auth/certs.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from node.auth.certs import CertError, init_ca, issue_client, issue_node  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--host", action="append", default=[], help="IP address in node certs")
    ap.add_argument("--dns", action="append", default=[], help="DNS name in node certs")
    ap.add_argument("--client", action="append", default=[], help="client certificate names")
    ap.add_argument("--days", type=int, default=365)
    args = ap.parse_args(argv)
    hosts = args.host or ["127.0.0.1"]
    dns = args.dns or ["localhost"]
    clients = args.client or ["client"]
    try:
        ca = init_ca(args.out, max(args.days, 3650))
        for n in range(1, args.nodes + 1):
            issue_node(ca, args.out, n, hosts=hosts, dns=dns, days=args.days)
        for name in clients:
            issue_client(ca, args.out, name, days=args.days)
    except CertError as e:
        print(f"certs: {e}", file=sys.stderr)
        return 1
    print(f"certs: CA, {args.nodes} node and {len(clients)} client certificate(s) in {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
