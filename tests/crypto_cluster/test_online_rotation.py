"""Online key rotation on a real 3-node cluster.

* rotate-data during a write load: nothing acknowledged is lost, every
  node re-encrypts 100% and retires its old data key, and every value on
  disk is then under the new key (counted from the headers by each node).
* a node that crashed in the middle of a pass, or between recording the plan
  and adding the key, finishes the rotation by itself when it starts again.
* rotate-master online: keyrings re-wrapped, key file installed, data untouched
  and readable, nodes restart on the new key file alone.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from client import Client, MedkvError
from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import create_key_file
from node.crypto.keyring import open_keyring
from node.crypto.reencrypt import ReEncryptor
from node.keys_cli import open_db
from node.storage_layout import REENCRYPT_CURSOR_KEY, REENCRYPT_KEYSPACES
from proto.medkv.v1 import admin_pb2
from tests.cluster.harness import ROOT, LocalCluster
from tests.crypto_cluster.helpers import node_get, running_cluster, wait_until

pytestmark = pytest.mark.cluster

LOAD_SECONDS_MAX = 30.0


def medkv(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args], cwd=str(ROOT), capture_output=True,
        text=True, timeout=timeout, check=False,
    )


def _prefill(kv: Client, patients: int, per_patient: int) -> dict[tuple[str, str], bytes]:
    from client import ops

    acked: dict[tuple[str, str], bytes] = {}
    for i in range(patients):
        pid = f"pre-{i}"
        values = {f"rec-{j}": f"prefill {i}/{j}".encode() * 4 for j in range(per_patient)}
        kv.batch(pid, [ops.put(r, v) for r, v in values.items()])
        acked.update({(pid, r): v for r, v in values.items()})
    return acked


class WriteLoad:
    """Writer threads putting unique records until stopped; remembers every ack."""

    def __init__(self, kv: Client, threads: int = 2) -> None:
        self.kv = kv
        self.acked: dict[tuple[str, str], bytes] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]

    def _run(self, t: int) -> None:
        deadline = time.monotonic() + LOAD_SECONDS_MAX
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            key = (f"load-{t}-{n % 50}", f"w-{n}")
            value = f"load {t} {n}".encode()
            try:
                self.kv.put(*key, value, timeout=10)
            except MedkvError as e:  # a write that failed is not acknowledged: not owed
                self.errors.append(type(e).__name__)
            else:
                with self._lock:
                    self.acked[key] = value
            n += 1

    def __enter__(self) -> WriteLoad:
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=LOAD_SECONDS_MAX + 15)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)


def _assert_all_readable(kv: Client, cluster: LocalCluster, acked: dict[tuple[str, str], bytes],
                         version: int) -> None:
    for (pid, rid), value in acked.items():
        assert kv.get(pid, rid).value == value
    # Every replica, from its own (re-encrypted) state. A replica may still be
    # applying the newest writes (it just restarted), so each read is retried
    # for a bounded time; versions are per partition, so no single
    # read-your-writes token would fit every key.
    for address in cluster.addresses:
        for (pid, rid), value in acked.items():
            deadline = time.monotonic() + 15
            got = node_get(address, pid, rid)
            while got != (grpc.StatusCode.OK, "", value) and time.monotonic() < deadline:
                time.sleep(0.1)
                got = node_get(address, pid, rid)
            assert got == (grpc.StatusCode.OK, "", value), (address, got)
    assert version > 0


def _key_states(kv: Client, cluster: LocalCluster) -> list[admin_pb2.KeyStatusResponse]:
    return [kv.key_status(a, count_values=True) for a in cluster.addresses]


def _all_finished(kv: Client, cluster: LocalCluster) -> bool:
    return all(s.reencryption.state == "finished" for s in
               (kv.key_status(a) for a in cluster.addresses))


def test_rotate_data_during_a_write_load_loses_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster") as cluster, Client(
        cluster.addresses, timeout=20
    ) as kv:
        acked = _prefill(kv, patients=40, per_patient=20)
        before = _key_states(kv, cluster)
        assert all([k.key_id for k in s.data_keys] == [1] for s in before)
        with WriteLoad(kv) as load:
            wait_until(lambda: load.count() >= 20, 20, "the write load to start")
            done = medkv("--addr", cluster.addresses[0], "keys", "rotate-data", "--wait",
                         "--wait-timeout", "60")
            assert done.returncode == 0, done.stderr
            during = load.count()
            wait_until(lambda: load.count() >= during + 20, 20, "writes after the rotation")
        assert load.count() > 40
        acked.update(load.acked)
        assert "new data key 2" in done.stderr and "3/3 nodes finished" in done.stderr
        assert "re-encryption: 100/100 %" in done.stderr.splitlines()[-1], done.stderr
        version = kv.put("after", "rotation", b"late write")
        acked[("after", "rotation")] = b"late write"
        _assert_all_readable(kv, cluster, acked, version)
        for st in _key_states(kv, cluster):
            r = st.reencryption
            assert st.active_data_key_id == 2, st.node_id
            assert (r.state, r.percent, r.target_key_id) == ("finished", 100.0, 2)
            assert list(r.retired_key_ids) == [1] and r.resealed > 0 and r.done >= r.resealed
            # Old key destroyed, and every value on disk is under the new one.
            assert [(k.key_id, k.active) for k in st.data_keys] == [(2, True)]
            assert st.data_keys[0].values > 1000
        table = medkv("--addr", cluster.addresses[1], "keys", "status", "--count-values")
        assert table.returncode == 0, table.stderr
        assert table.stdout.count("finished 100%") == 3 and "retired 1" in table.stdout
        # The audit log was sealed again under key 2 before key 1 went: every
        # node's chain still reads and verifies, and names no other key.
        with Client(cluster.addresses, timeout=20, token=cluster.mint("rot-auditor", ["auditor"])
                    ) as auditor:
            checks = auditor.audit_verify()
            assert [c.ok for c in checks] == [True, True, True], checks
            assert checks[0].entries > 0


def _stage_offline_rotation(cluster: LocalCluster, node: int, steps: int | None) -> None:
    """Leave on `node`'s disk what a crash leaves: the plan recorded (steps=None:
    before the new key was even added) or the pass `steps` steps in."""
    node_dir = cluster.data_dir / f"node-{node}"
    keyring = open_keyring(node_dir, cluster.data_dir / "master.key")
    with open_db(node_dir) as db:
        assert db is not None
        reenc = ReEncryptor(db, EnvelopeCodec(keyring), REENCRYPT_KEYSPACES, REENCRYPT_CURSOR_KEY,
                            batch_size=25)
        reenc.begin(keyring.next_data_key_id)
        if steps is None:
            return
        keyring.rotate_data()
        prog = reenc.run(max_steps=steps)
        assert not prog.finished and 0 < prog.done < prog.total_estimate


def test_a_rotation_interrupted_by_a_crash_finishes_at_the_next_start(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster") as cluster, Client(
        cluster.addresses, timeout=20
    ) as kv:
        acked = _prefill(kv, patients=30, per_patient=10)
        for node in (2, 3):
            assert cluster.run("kill-node", str(node)).returncode == 0
        _stage_offline_rotation(cluster, 2, steps=None)  # plan recorded, key not yet added
        _stage_offline_rotation(cluster, 3, steps=3)  # 75 values into the pass
        for node in (2, 3):
            done = cluster.run("restart-node", str(node), timeout=60)
            assert done.returncode == 0, done.stderr
        wait_until(lambda: all(
            kv.key_status(a).reencryption.state == "finished" for a in cluster.addresses[1:]
        ), 30, "the interrupted passes to finish")
        states = _key_states(kv, cluster)
        assert [k.key_id for k in states[0].data_keys] == [1]  # node 1 was never asked
        for st in states[1:]:
            assert [(k.key_id, k.active) for k in st.data_keys] == [(2, True)], st.node_id
            assert list(st.reencryption.retired_key_ids) == [1]
        logs = {n: (cluster.data_dir / f"node-{n}" / "node.log").read_text() for n in (2, 3)}
        assert "finishing an interrupted data key rotation: key 2 is active" in logs[2]
        assert "resuming re-encryption to data key 2 (75/" in logs[3]
        version = kv.put("after", "restart", b"x")
        acked[("after", "restart")] = b"x"
        _assert_all_readable(kv, cluster, acked, version)


def test_rotate_master_online_rewraps_and_installs_without_touching_data(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster", extra=()) as cluster, Client(
        cluster.addresses, timeout=20
    ) as kv:
        acked = _prefill(kv, patients=10, per_patient=5)
        key_file = cluster.data_dir / "master.key"
        new = create_key_file(tmp_path / "new.key")
        refused = medkv("--addr", cluster.addresses[0], "keys", "rotate-master")
        assert refused.returncode == 1 and "no new master key is staged" in refused.stderr
        staged = medkv("keys", "stage-master", "--key-file", str(key_file),
                       "--new-key-file", str(tmp_path / "new.key"))
        assert staged.returncode == 0, staged.stderr
        assert (cluster.data_dir / "master.key.next").stat().st_mode & 0o777 == 0o600
        before = {a: kv.key_status(a, count_values=True) for a in cluster.addresses}
        assert all(s.staged_master_key_id == new.key_id for s in before.values())
        done = medkv("--addr", cluster.addresses[2], "keys", "rotate-master")
        assert done.returncode == 0, done.stderr
        assert f"master key id {new.key_id} is now in use" in done.stdout
        assert not (cluster.data_dir / "master.key.next").exists()
        assert key_file.read_bytes() == (tmp_path / "new.key").read_bytes()
        for address, old in before.items():
            st = kv.key_status(address, count_values=True)
            assert (st.keyring_master_key_id, st.key_file_master_key_id) == (new.key_id,) * 2
            # Re-wrapped, not re-encrypted: the same data keys, and none of the
            # values moved off them (the cluster keeps writing meanwhile, e.g.
            # a leader transfer appends an entry, so counts may only grow).
            assert [k.key_id for k in st.data_keys] == [k.key_id for k in old.data_keys]
            for now, then in zip(st.data_keys, old.data_keys, strict=True):
                assert now.values >= then.values, (address, now.key_id)
        again = medkv("--addr", cluster.addresses[0], "keys", "rotate-master",
                      "--new-key-id", new.key_id)
        assert again.returncode == 0, again.stderr  # idempotent
        for node in (1, 2, 3):  # every node restarts with the new key file alone
            done = cluster.run("restart-node", str(node), timeout=60)
            assert done.returncode == 0, done.stderr
        version = kv.put("after", "master", b"y")
        acked[("after", "master")] = b"y"
        _assert_all_readable(kv, cluster, acked, version)
