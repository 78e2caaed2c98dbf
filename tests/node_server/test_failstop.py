"""Fail-stop: a node whose storage fails a write stops, naming the cause.

The host must not log a failed synced write and go on with its groups
wedged; it hands the error to node.failstop, which exits the process.
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import plyvel
import pytest

from node import failstop
from node.config import parse_config
from node.host import MultiRaftHost
from node.storage_layout import StorageLayout, plaintext_codec_for_tests

ROOT = Path(__file__).resolve().parents[2]


def _host(tmp_path: Path) -> tuple[MultiRaftHost, StorageLayout]:
    cfg = parse_config(
        {
            "node_id": 1, "listen": "127.0.0.1:1", "data_dir": "n1",
            "partitions": 2, "replication": 1,
            "peers": [{"id": 1, "address": "127.0.0.1:1"}],
            "insecure": True,  # the host alone: access control is tested elsewhere
        },
        tmp_path,
    )
    layout = StorageLayout.open(cfg, codec=plaintext_codec_for_tests())
    return MultiRaftHost(cfg, layout.log_store, layout.state_machine, lambda msgs: None), layout


@pytest.fixture
def stops() -> list[BaseException]:
    seen: list[BaseException] = []

    def handler(e: BaseException) -> NoReturn:
        seen.append(e)
        raise failstop.StorageFailure(failstop.describe(e))

    failstop.set_handler(handler)
    yield seen
    failstop.set_handler(None)


def test_a_failed_synced_write_stops_the_node(tmp_path: Path, stops: list[BaseException]) -> None:
    async def scenario() -> None:
        host, layout = _host(tmp_path)
        fatal = asyncio.Event()
        real_write = layout.log_store.write
        real_isolated = layout.log_store.write_isolated

        def failing_write(*args: object, **kwargs: object) -> None:
            raise plyvel.IOError("IO error: db/000003.log: No space left on device")

        host.start(on_fatal=fatal.set)
        try:
            # The single-replica groups elect themselves; then the disk fills.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not all(r.is_leader for r in host.replicas.values()):
                assert loop.time() < deadline, "no leaders"
                await asyncio.sleep(0.05)
            layout.log_store.write = failing_write  # type: ignore[method-assign]
            layout.log_store.write_isolated = failing_write  # type: ignore[method-assign,assignment]
            write = asyncio.ensure_future(host.propose(0, ("write", b"c" * 16, 1, 1), lambda _stamp: b"", timeout=5))
            await asyncio.wait_for(fatal.wait(), 5)
            assert stops and isinstance(stops[0], plyvel.IOError)
            write.cancel()
        finally:
            layout.log_store.write = real_write  # type: ignore[method-assign]
            layout.log_store.write_isolated = real_isolated  # type: ignore[method-assign]
            await host.stop()
            layout.close()

    asyncio.run(scenario())


def test_a_failed_apply_write_is_not_taken_for_corruption(
    tmp_path: Path, stops: list[BaseException]
) -> None:
    """An IO error while applying must not disable one partition as if its
    data were damaged (DATA_LOSS) and carry on: the disk is the node's."""
    host, layout = _host(tmp_path)
    try:
        r = host.replicas[0]
        with pytest.raises(failstop.StorageFailure):
            host.mark_broken(r, OSError(errno.ENOSPC, "No space left on device"))
        assert not r.broken
        host.mark_broken(r, plyvel.CorruptionError("bad block"))
        assert r.broken and len(stops) == 1
    finally:
        layout.close()


def test_fail_stop_exits_non_zero_naming_the_cause() -> None:
    done = subprocess.run(
        [sys.executable, "-c",
         "import errno, logging\n"
         "from node import failstop\n"
         "logging.basicConfig()\n"
         "failstop.fail_stop(OSError(errno.ENOSPC, 'No space left on device'))\n"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == failstop.EXIT_STORAGE_FAILURE
    assert "ENOSPC" in done.stderr and "fail-stop" in done.stderr


def test_only_disk_errors_count() -> None:
    assert failstop.is_storage_failure(plyvel.IOError("IO error"))
    assert failstop.is_storage_failure(OSError(errno.EIO, "I/O error"))
    assert not failstop.is_storage_failure(plyvel.CorruptionError("bad"))
    assert not failstop.is_storage_failure(OSError(errno.ECONNRESET, "reset"))
    assert not failstop.is_storage_failure(ValueError("x"))
