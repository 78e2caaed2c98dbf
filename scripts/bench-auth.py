"""What access control and audit cost: per-part timings and calls/s through a real
grpc.aio server with mutual TLS, with the auth interceptor + audit and without,
in the same run (alternating rounds, so noise on a shared machine hits both).

    python scripts/bench-auth.py [--seconds 3] [--rounds 3] [--concurrency 64]

The server's KV servicer answers Get from a dict, so what is measured is the
per-call overhead (token verification, policy, audit entry, group commit),
not the database. Reports figures; never fails on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402

from node.auth import certs  # noqa: E402
from node.auth.audit import AuditEvent, AuditKeys, AuditLog, AuditWriter  # noqa: E402
from node.auth.identity import Identity  # noqa: E402
from node.auth.interceptor import AccessControl, AuthInterceptor  # noqa: E402
from node.auth.policy import InMemoryRegistry, Registration, RequestFacts, authorize  # noqa: E402
from node.auth.tokens import StaticKeys, TokenSettings, TokenVerifier, mint, public_jwk  # noqa: E402
from node.crypto.envelope import EnvelopeCodec  # noqa: E402
from node.crypto.keyfile import create_key_file  # noqa: E402
from node.crypto.keyring import open_keyring  # noqa: E402
from node.tls import TlsSettings  # noqa: E402
from proto.medkv.v1 import common_pb2, kv_pb2, kv_pb2_grpc  # noqa: E402


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cpu ({model}), Python {platform.python_version()}"


def per_call(fn: Callable[[], Any], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


class KV(kv_pb2_grpc.KVServicer):
    async def Get(self, request: Any, context: Any) -> Any:
        return kv_pb2.GetResponse(record=common_pb2.Record(
            patient_id=request.patient_id, record_id=request.record_id, value=b"x" * 200))


async def throughput(port: int, tls: TlsSettings, token: str, seconds: float, conc: int) -> float:
    ch = grpc.aio.secure_channel(f"127.0.0.1:{port}", tls.channel_credentials())
    stub = kv_pb2_grpc.KVStub(ch)
    md = (("authorization", f"Bearer {token}"),)
    req = kv_pb2.GetRequest(patient_id="p-north", record_id="r")
    await stub.Get(req, metadata=md)
    done = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            await stub.Get(req, metadata=md)
            done += 1

    t = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conc)))
    rate = done / (time.monotonic() - t)
    await ch.close()
    return rate


async def serve(tls: TlsSettings, ac: AccessControl | None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=[AuthInterceptor(ac)] if ac else [])
    kv_pb2_grpc.add_KVServicer_to_server(KV(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
    await server.start()
    return server, port


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    ca = certs.init_ca(tmp / "tls")
    certs.issue_node(ca, tmp / "tls", 1, hosts=["127.0.0.1"])
    certs.issue_client(ca, tmp / "tls", "client")
    d = tmp / "tls"
    server_tls = TlsSettings(d / "ca.pem", d / "node-1.pem", d / "node-1.key")
    client_tls = TlsSettings(d / "ca.pem", d / "client.pem", d / "client.key")

    ed = ed25519.Ed25519PrivateKey.generate()
    es = ec.generate_private_key(ec.SECP256R1())
    verifier = TokenVerifier(TokenSettings(), StaticKeys(
        {"keys": [public_jwk(ed.public_key()), public_jwk(es.public_key())]}))
    tok_ed = mint(ed, subject="alice", roles=["clinician"], clinics=["north"])
    tok_es = mint(es, subject="alice", roles=["clinician"], clinics=["north"])

    key_file = tmp / "master.key"
    create_key_file(key_file)
    keyring = open_keyring(tmp / "data", key_file, create=True)
    codec = EnvelopeCodec(keyring)
    akeys = AuditKeys.from_keyring(keyring)
    log = AuditLog(tmp / "data" / "audit", codec, akeys, log_id="node-1", node_id=1)

    ident = Identity("alice", frozenset({"clinician"}), frozenset({"north"}))
    facts = RequestFacts(patient_id="p-north", registration=Registration(frozenset({"north"})))
    ev = AuditEvent(method="/medkv.v1.KV/Get", outcome="OK", subject="alice",
                    roles=["clinician"], clinics=["north"], patient_id="p-north",
                    record_ids=["r"], partition=3, peer="ipv4:127.0.0.1:1")
    print(f"machine: {machine()}")
    print("per part (microseconds per call):")
    fresh = TokenVerifier(TokenSettings(), verifier.keys, cache_size=0)
    print(f"  token verify EdDSA     {per_call(lambda: fresh.verify(tok_ed), 1000):8.1f}  (first use)")
    print(f"  token verify ES256     {per_call(lambda: fresh.verify(tok_es), 1000):8.1f}  (first use)")
    print(f"  token verify, again    {per_call(lambda: verifier.verify(tok_ed), 20000):8.1f}  (remembered)")
    print(f"  policy authorize       {per_call(lambda: authorize(ident, '/medkv.v1.KV/Get', facts), 20000):8.1f}")
    print(f"  audit append           {per_call(lambda: log.append(ev), 20000):8.1f}  (hash ids)")
    t = time.perf_counter()
    for _ in range(50):
        for _ in range(100):
            log.append(ev)
        log.flush()
    print(f"  audit flush of 100     {(time.perf_counter() - t) / 50 * 1e6:8.1f}  "
          "(encode, chain, seal; one write + fsync + HEAD)")

    writer = AuditWriter(log)
    writer.start()
    ac = AccessControl(verifier=verifier, registry=InMemoryRegistry({"p-north": {"north"}}),
                       audit=writer, partitions=16)
    off, port_off = await serve(server_tls, None)
    on, port_on = await serve(server_tls, ac)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for name, port in (("off", port_off), ("on", port_on)):
            rates[name].append(await throughput(port, client_tls, tok_ed, args.seconds,
                                                args.concurrency))
    await off.stop(None)
    await on.stop(None)
    await writer.close()
    med_off, med_on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"unary Get over mTLS, {args.concurrency} concurrent, client and server in one process, "
          f"{args.rounds} x {args.seconds}s each (median):")
    print(f"  without access control  {med_off:9.0f} calls/s  {[round(r) for r in rates['off']]}")
    print(f"  with token+policy+audit {med_on:9.0f} calls/s  {[round(r) for r in rates['on']]}")
    print(f"  cost: {100 * (1 - med_on / med_off):.1f}% of a no-op servicer's throughput "
          f"(audit entries written: {log.durable_head().seq})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main_async(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
