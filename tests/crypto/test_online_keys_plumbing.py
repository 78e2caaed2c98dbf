"""The pieces of online key management that need no cluster: which `medkv keys`
commands go to running nodes, `keys stage-master`, and the exclusive section
that keeps re-encryption steps away from the node's two writers."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from client.cli import is_online_keys, server_command
from node import keys_cli
from node.crypto.keyfile import create_key_file, load_master_key
from node.crypto.keyring import staged_key_path
from node.key_rotation import KeyRotationManager, WriterBusy


@pytest.mark.parametrize(
    ("argv", "online", "local"),
    [
        (["keys", "status"], True, False),
        (["--addr", "h:1", "keys", "status", "--json"], True, False),
        (["keys", "rotate-data", "--addr", "h:1", "--wait"], True, False),
        (["keys", "rotate-master", "--new-key-id", "00" * 8], True, False),
        (["keys", "status", "--key-file", "k", "--data-dir", "d"], False, True),
        (["keys", "rotate-data", "--data-dir=d", "--key-file=k"], False, True),
        (["keys", "init", "--key-file", "k"], False, True),
        (["keys", "stage-master", "--key-file", "k", "--new-key-file", "n"], False, True),
        (["get", "keys", "status"], False, False),
    ],
)
def test_which_keys_commands_talk_to_running_nodes(
    argv: list[str], online: bool, local: bool
) -> None:
    """Online: Admin RPCs through the client. Local: handed to `python -m node keys`."""
    assert is_online_keys(argv) is online
    assert (server_command(argv) is not None) is local


def test_stage_master_copies_the_new_key_privately_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = create_key_file(tmp_path / "master.key")
    new = create_key_file(tmp_path / "new.key")
    args = ["stage-master", "--key-file", str(tmp_path / "master.key"),
            "--new-key-file", str(tmp_path / "new.key")]
    assert keys_cli.main(args) == 0
    staged = staged_key_path(tmp_path / "master.key")
    assert load_master_key(staged) == new and staged.stat().st_mode & 0o777 == 0o600
    assert keys_cli.main(args) == 0  # the same key again: fine
    assert "already staged" in capsys.readouterr().out
    other = create_key_file(tmp_path / "other.key")
    assert keys_cli.main([*args[:3], "--new-key-file", str(tmp_path / "other.key")]) == 1
    err = capsys.readouterr().err
    assert f"already holds master key id {new.key_id}" in err and other.key_id not in err
    assert load_master_key(staged) == new
    assert keys_cli.main([*args[:3], "--new-key-file", str(tmp_path / "master.key")]) == 1
    assert f"the current master key id {current.key_id}" in capsys.readouterr().err


class _Host:
    """What KeyRotationManager._exclusive needs of the host: its writer executor."""

    def __init__(self) -> None:
        self.node_id = 1
        self.writer = ThreadPoolExecutor(max_workers=1)


def _manager(host: _Host) -> KeyRotationManager:
    manager = KeyRotationManager.__new__(KeyRotationManager)
    manager._host = host  # type: ignore[assignment]
    return manager


def test_exclusive_section_keeps_the_writer_thread_out() -> None:
    host = _Host()
    manager = _manager(host)
    events: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def writer_job() -> None:
            events.append("writer")

        def step() -> int:
            events.append("step-start")
            # The writer already has work queued: it must not run while we are here.
            pending = loop.run_in_executor(host.writer, writer_job)
            time.sleep(0.2)
            events.append("step-end")
            fut_holder.append(pending)
            return 7

        fut_holder: list[asyncio.Future[None]] = []
        assert await manager._exclusive(step) == 7
        await fut_holder[0]

    asyncio.run(main())
    host.writer.shutdown(wait=True)
    assert events == ["step-start", "step-end", "writer"]


def test_a_cancelled_exclusive_section_releases_the_writer() -> None:
    host = _Host()
    manager = _manager(host)
    gate = threading.Event()
    host.writer.submit(gate.wait, 5)  # the writer is busy: the park job waits in line

    async def main() -> None:
        task = asyncio.create_task(manager._exclusive(lambda: None))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        # The writer is free again right away, not parked forever.
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
            host.writer, lambda: None), 2)

    asyncio.run(main())
    host.writer.shutdown(wait=True)


def test_writer_busy_is_an_unavailable_error() -> None:
    from node.errors import Unavailable

    assert issubclass(WriterBusy, Unavailable)
