"""A one-hop Python gRPC echo server, and a context manager that runs it as
its own process (so its CPU is accounted like a node's).

    python -m client.bench.echo --port 7999 [--tls-port 7998 --tls-dir DIR]

It serves plaintext on --port (etcd's transport in the comparison) and, with
--tls-dir, mutual TLS on --tls-port: a client certificate from DIR/ca.pem's
CA required and DIR/node-1.pem served, as a medkv node does (medkv's
transport). Either measures what Python's gRPC alone can do on this
machine. It prints `ready` on stdout once it listens; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import grpc

from client.bench.local import ROOT, BenchError, free_base_port
from client.bench.targets import ECHO_SERVICE

READY = "ready"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(port: int, tls_port: int | None, tls_dir: Path | None) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    if tls_dir is not None and tls_port is not None:
        creds = grpc.ssl_server_credentials(
            [((tls_dir / "node-1.key").read_bytes(), (tls_dir / "node-1.pem").read_bytes())],
            root_certificates=(tls_dir / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        server.add_secure_port(f"127.0.0.1:{tls_port}", creds)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(READY, flush=True)
    await stop.wait()
    await server.stop(0.5)


def has_server_certs(tls_dir: Path | None) -> bool:
    return tls_dir is not None and all(
        (tls_dir / f).is_file() for f in ("ca.pem", "node-1.pem", "node-1.key")
    )


class LocalEcho:
    """The echo server in a child process on a free loopback port. The TLS
    files are copied into its own temporary directory, so it outlives the
    cluster they came from."""

    def __init__(self, tls_dir: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="medkv-bench-echo-"))
        self.tls_dir: Path | None = None
        if has_server_certs(tls_dir):
            assert tls_dir is not None
            self.tls_dir = self.dir / "certs"
            shutil.copytree(tls_dir, self.tls_dir)
        base = free_base_port(2)
        self.address = f"127.0.0.1:{base + 1}"  # plaintext
        self.tls_address = f"127.0.0.1:{base + 2}" if self.tls_dir else None
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> LocalEcho:
        args = [sys.executable, "-m", "client.bench.echo", "--port", self.address.rsplit(":")[1]]
        if self.tls_dir is not None and self.tls_address is not None:
            args += ["--tls-port", self.tls_address.rsplit(":")[1], "--tls-dir", str(self.tls_dir)]
        self.process = subprocess.Popen(args, cwd=str(ROOT), stdout=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()  # `ready`, or EOF if it died
        if line != READY:
            self.close()
            raise BenchError("the echo server did not start")
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls-port", type=int)
    ap.add_argument("--tls-dir", type=Path)
    args = ap.parse_args(argv)
    asyncio.run(serve(args.port, args.tls_port, args.tls_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
