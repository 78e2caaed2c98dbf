"""The test-only lossy mode loses exactly the writes that were never synced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import plyvel

from node.lossy_db import JOURNAL_NAME, LossyDB

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import plyvel
    from node.lossy_db import LossyDB, JOURNAL_NAME
    d = Path(sys.argv[1])
    db = LossyDB(plyvel.DB(str(d / "db"), create_if_missing=True), d / JOURNAL_NAME)
    db.put(b"a", b"synced", sync=True)
    with db.write_batch(sync=False) as wb:
        wb.put(b"a", b"unsynced-overwrite")
        wb.put(b"b", b"unsynced-new")
    p = db.prefixed_db(b"s")
    p.put(b"x", b"unsynced-prefixed")
    assert db.get(b"a") == b"unsynced-overwrite"  # visible while running
    assert p.get(b"x") == b"unsynced-prefixed"
    if sys.argv[2] == "sync-then-kill":
        db.put(b"c", b"synced-later", sync=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _run_child(tmp_path: Path, mode: str) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), mode], check=False)
    assert proc.returncode == -signal.SIGKILL


def _reopen(tmp_path: Path) -> LossyDB:
    return LossyDB(plyvel.DB(str(tmp_path / "db")), tmp_path / JOURNAL_NAME)


def test_kill_loses_unsynced_writes(tmp_path: Path) -> None:
    _run_child(tmp_path, "kill")
    db = _reopen(tmp_path)
    try:
        assert db.rolled_back == 3
        assert db.get(b"a") == b"synced"
        assert db.get(b"b") is None
        assert db.prefixed_db(b"s").get(b"x") is None
    finally:
        db.close()


def test_a_later_sync_makes_earlier_writes_durable(tmp_path: Path) -> None:
    _run_child(tmp_path, "sync-then-kill")
    db = _reopen(tmp_path)
    try:
        assert db.rolled_back == 0
        assert db.get(b"a") == b"unsynced-overwrite"
        assert db.get(b"b") == b"unsynced-new"
        assert db.get(b"c") == b"synced-later"
    finally:
        db.close()


def test_clean_close_keeps_everything(tmp_path: Path) -> None:
    db = LossyDB(plyvel.DB(str(tmp_path / "db"), create_if_missing=True), tmp_path / JOURNAL_NAME)
    db.put(b"k", b"v", sync=False)
    db.close()
    db = _reopen(tmp_path)
    try:
        assert db.get(b"k") == b"v"
        assert db.rolled_back == 0
    finally:
        db.close()
    assert os.path.getsize(tmp_path / JOURNAL_NAME) == 0
