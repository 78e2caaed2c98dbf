"""The runner's parts without a cluster: nemesis topologies on a real ProxyNet
(not started: its controls are plain state), outcome classification, key
rotation, bit flips in a real LevelDB, the links file of scripts/cluster, and
the soak index."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import plyvel
import pytest

from client import (
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    SessionExpired,
    Unavailable,
    VersionConflict,
)
from jepsen_like.__main__ import _row, _write_index
from jepsen_like.bitflip import (
    CIPHERTEXT_OFFSET,
    flip_record_values,
    partitions_with_records,
)
from jepsen_like.nemesis import (
    STANDARD_NEMESES,
    Bridge,
    NemesisContext,
    PartitionRandomHalves,
    PartitionRing,
    make_nemeses,
    minority,
)
from jepsen_like.proxy import CLIENT, ProxyNet
from jepsen_like.workloads.common import (
    KeyRotation,
    classify_write_error,
    derive_rng,
    error_name,
)

ROOT = Path(__file__).resolve().parents[2]


class _FakeCluster:
    """Just what the network nemeses use: node ids and the proxies."""

    def __init__(self, nodes: int) -> None:
        self.node_ids = list(range(1, nodes + 1))
        self.network = ProxyNet({n: ("127.0.0.1", 1000 + n) for n in self.node_ids})


def _ctx(nodes: int, seed: int) -> NemesisContext:
    return NemesisContext(
        cluster=_FakeCluster(nodes),  # type: ignore[arg-type]
        rng=random.Random(seed),
        log=lambda _m: None,
        records=list,
        partition_of=lambda _p: 0,
        work_dir=Path("/nonexistent"),
    )


def _reach(net: ProxyNet, nodes: list[int]) -> dict[int, frozenset[int]]:
    """Who each node can talk to (both directions open), itself included."""
    out = {}
    for a in nodes:
        peers = {
            b
            for b in nodes
            if b != a and not net.proxies[(a, b)].blocked and not net.proxies[(b, a)].blocked
        }
        out[a] = frozenset(peers | {a})
    return out


@pytest.mark.parametrize("nodes", [5, 7])
@pytest.mark.parametrize("seed", range(4))
def test_ring_gives_every_node_a_different_majority(nodes: int, seed: int) -> None:
    ctx = _ctx(nodes, seed)
    asyncio.run(PartitionRing().begin(ctx))
    reach = _reach(ctx.cluster.network, ctx.nodes)
    majority = nodes // 2 + 1
    assert all(len(r) >= majority for r in reach.values())
    assert len(set(reach.values())) == nodes, "two nodes see the same majority"
    assert any(len(r) < nodes for r in reach.values()), "nothing was cut"
    assert all(not p.blocked for (s, _), p in ctx.cluster.network.proxies.items() if s == CLIENT)


@pytest.mark.parametrize("seed", range(4))
def test_bridge_connects_two_halves_through_one_node(seed: int) -> None:
    ctx = _ctx(5, seed)
    asyncio.run(Bridge().begin(ctx))
    reach = _reach(ctx.cluster.network, ctx.nodes)
    bridges = [n for n, r in reach.items() if len(r) == 5]
    assert len(bridges) == 1
    others = [n for n in ctx.nodes if n not in bridges]
    halves = {reach[n] - set(bridges) for n in others}
    assert len(halves) == 2 and all(len(h) == 2 for h in halves)


@pytest.mark.parametrize("seed", range(4))
def test_random_halves_cut_a_minority_from_a_majority(seed: int) -> None:
    ctx = _ctx(5, seed)
    asyncio.run(PartitionRandomHalves().begin(ctx))
    reach = _reach(ctx.cluster.network, ctx.nodes)
    assert sorted(len(r) for r in set(reach.values())) == [2, 3]
    asyncio.run(PartitionRandomHalves().end(ctx))
    assert all(p.blocked is None for p in ctx.cluster.network.proxies.values())


def test_minority_is_never_empty_nor_a_majority() -> None:
    rng = random.Random(0)
    for n in (3, 4, 5, 7):
        for _ in range(50):
            m = minority(rng, list(range(1, n + 1)))
            assert 1 <= len(m) < n / 2
            assert len(set(m)) == len(m)


def test_nemesis_names_parse_and_reject_unknown_ones() -> None:
    assert make_nemeses("none") == []
    assert [n.name for n in make_nemeses("kill,pause")] == ["kill", "pause"]
    assert "planted-disk-rollback" not in STANDARD_NEMESES
    with pytest.raises(ValueError, match="unknown nemesis"):
        make_nemeses("kill,bogus")


def test_write_errors_are_info_unless_they_prove_nothing_applied() -> None:
    def sent(exc: Any, attempts: int) -> Any:
        exc.attempts = attempts
        return exc

    assert classify_write_error(VersionConflict("x")) == ("fail", {"precondition_failed": True})
    assert classify_write_error(NotFound("x"))[0] == "fail"
    assert classify_write_error(InvalidArgument("x"))[0] == "fail"
    assert classify_write_error(sent(Unavailable("x"), 0))[0] == "fail"
    assert classify_write_error(sent(Unavailable("x"), 2))[0] == "info"
    assert classify_write_error(sent(DeadlineExceeded("x"), 1))[0] == "info"
    assert classify_write_error(DataLoss("x"))[0] == "info"
    assert classify_write_error(SessionExpired("x"))[0] == "info"
    assert classify_write_error(RuntimeError("x"))[0] == "info"


def test_key_rotation_bounds_ops_per_key_and_remembers_every_key() -> None:
    rot = KeyRotation("k", live=3, ops_per_key=10)
    rng = random.Random(1)
    picks = [rot.pick(rng) for _ in range(200)]
    counts = {k: picks.count(k) for k in set(picks)}
    assert max(counts.values()) <= 10
    assert len(rot.live()) == 3
    assert set(rot.all) >= set(picks) and len(rot.all) >= 200 // 10


def test_derived_random_streams_are_reproducible_and_independent() -> None:
    a = [derive_rng(7, "x").random() for _ in range(3)]
    assert a == [derive_rng(7, "x").random() for _ in range(3)]
    assert derive_rng(7, "x").random() != derive_rng(7, "y").random()
    assert derive_rng(7, "x").random() != derive_rng(8, "x").random()


# -- bit flips in a real LevelDB ----------------------------------------------------


def _sealed(rng: random.Random, n: int = 40) -> bytes:
    return bytes([0xE1]) + rng.randbytes(4 + 12 + n)


def _make_db(path: Path) -> dict[bytes, bytes]:
    rng = random.Random(3)
    db = plyvel.DB(str(path), create_if_missing=True)
    stored: dict[bytes, bytes] = {}
    for partition, n in ((2, 5), (5, 3)):
        for _ in range(n):
            key = b"s" + partition.to_bytes(4, "big") + b"c" + rng.randbytes(32)
            stored[key] = _sealed(rng)
        hist = b"s" + partition.to_bytes(4, "big") + b"h" + rng.randbytes(40)
        stored[hist] = _sealed(rng)
    stored[b"r" + rng.randbytes(20)] = _sealed(rng)
    for k, v in stored.items():
        db.put(k, v)
    db.close()
    return stored


def test_bitflip_damages_one_bit_of_ciphertext_in_the_chosen_partition_only(tmp_path: Path) -> None:
    before = _make_db(tmp_path / "db")
    assert partitions_with_records(tmp_path / "db") == {2: 5, 5: 3}
    flips = flip_record_values(tmp_path / "db", node=4, partition=5, rng=random.Random(9), count=2)
    assert len(flips) == 2 and all(f.partition == 5 and f.node == 4 for f in flips)
    db = plyvel.DB(str(tmp_path / "db"))
    after = dict(db.iterator())
    db.close()
    changed = [k for k in before if before[k] != after[k]]
    assert len(changed) == 2
    for k in changed:
        assert k[1:5] == (5).to_bytes(4, "big") and k[5:6] == b"c"
        diff = [i for i, (x, y) in enumerate(zip(before[k], after[k], strict=True)) if x != y]
        assert len(diff) == 1 and diff[0] >= CIPHERTEXT_OFFSET
        assert bin(before[k][diff[0]] ^ after[k][diff[0]]).count("1") == 1


# -- scripts/cluster --links-file ----------------------------------------------------


def _cluster_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medkv_cluster_script", ROOT / "scripts" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_links_file_routes_each_peer_and_client_address(tmp_path: Path) -> None:
    cl = _cluster_module()
    links = {
        "peers": {"1": {"2": "127.0.0.1:40012", "3": "127.0.0.1:40013"}},
        "clients": {"2": "127.0.0.1:40102"},
    }
    (tmp_path / "links.json").write_text(json.dumps(links))
    loaded = cl.load_links(str(tmp_path / "links.json"), 3)
    layout = cl.Layout(3, "127.0.0.1", 7100, 4, 3, None, links=loaded)
    config = cl.Cluster(tmp_path).write_config(layout, 1).read_text()
    assert 'address = "127.0.0.1:40012"' in config and 'address = "127.0.0.1:40013"' in config
    assert 'address = "127.0.0.1:7101"' in config  # its own entry stays direct
    assert config.count("client_address") == 1 and '"127.0.0.1:40102"' in config
    other = cl.Cluster(tmp_path).write_config(layout, 2).read_text()
    assert 'address = "127.0.0.1:7101"' in other  # node 2 has no proxies of its own
    # The layout survives cluster.json, so later commands keep the links.
    cl.Cluster(tmp_path).save(layout)
    assert cl.Cluster(tmp_path).load().links == loaded


@pytest.mark.parametrize(
    "doc",
    [
        {"peers": {"0": {"1": "127.0.0.1:1"}}},
        {"peers": {"x": {"1": "127.0.0.1:1"}}},
        {"clients": {"-1": "127.0.0.1:1"}},
        {"peers": {"1": {"2": "nowhere"}}},
        {"clients": {"1": "127.0.0.1:99999"}},
        {"other": {}},
        [],
    ],
)
def test_links_file_rejects_what_it_cannot_use(tmp_path: Path, doc: Any) -> None:
    cl = _cluster_module()
    (tmp_path / "links.json").write_text(json.dumps(doc))
    with pytest.raises(cl.ClusterError):
        cl.load_links(str(tmp_path / "links.json"), 3)


def test_links_file_may_name_nodes_added_later(tmp_path: Path) -> None:
    """Ids past --nodes are links for nodes `add-node` starts later (nemesis
    membership makes their proxies up front); the first nodes' configurations
    do not name them."""
    cl = _cluster_module()
    doc = {"peers": {"4": {"1": "127.0.0.1:40041"}, "1": {"4": "127.0.0.1:40014"}},
           "clients": {"4": "127.0.0.1:40104"}}
    (tmp_path / "links.json").write_text(json.dumps(doc))
    loaded = cl.load_links(str(tmp_path / "links.json"), 3)
    layout = cl.Layout(3, "127.0.0.1", 7100, 4, 3, None, links=loaded)
    assert "40014" not in cl.Cluster(tmp_path).write_config(layout, 1).read_text()
    grown = cl.Layout(4, "127.0.0.1", 7100, 4, 3, None, links=loaded, removed=[2])
    four = cl.Cluster(tmp_path).write_config(grown, 4).read_text()
    assert 'address = "127.0.0.1:40041"' in four and "id = 2" not in four
    assert grown.addresses() == ["127.0.0.1:7101", "127.0.0.1:7103", "127.0.0.1:7104"]


# -- command line and soak index -------------------------------------------------------


def test_soak_index_has_one_row_per_run(tmp_path: Path) -> None:
    run = tmp_path / "01-registers-kill"
    run.mkdir()
    (run / "summary.json").write_text(
        json.dumps(
            {
                "verdict": "invalid",
                "counts": {"read": {"ok": 5, "fail": 1}, "write": {"ok": 3, "info": 2}},
                "schedule": [{}, {}],
                "checkers": {"linearizable": {"verdict": "invalid"}, "recovery": {"verdict": "valid"}},
            }
        )
    )
    rows = [_row("registers", "kill", run, 1, 12.0), _row("bank", "pause", tmp_path / "missing", None, 1.0)]
    assert rows[0]["ops"] == 11 and rows[0]["info"] == 2 and rows[0]["fault_windows"] == 2
    assert rows[0]["failing"] == "linearizable: invalid"
    assert rows[1]["verdict"] == "timeout"
    table = _write_index(tmp_path, rows)
    assert table.count("\n") == 3 and "| registers | kill | 11 |" in table
    assert json.loads((tmp_path / "index.json").read_text())[0]["verdict"] == "invalid"


def test_cli_lists_and_rejects_unknown_nemeses(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jepsen_like", "list"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0 and "partition-random-halves" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "jepsen_like", "run", "--workload", "registers",
         "--nemesis", "bogus", "--out", str(tmp_path / "x")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2 and "unknown nemesis" in bad.stderr
    assert not (tmp_path / "x" / "cluster").exists(), "nothing may start for a bad command line"


def test_history_errors_are_status_names_never_messages() -> None:
    assert error_name(DataLoss("partition 3 failed an integrity check on node 2")) == "DATA_LOSS"
    assert error_name(VersionConflict("expected 4, found 7")) == "FAILED_PRECONDITION"
    assert error_name(TimeoutError()) == "TimeoutError"


def test_cluster_up_files_are_made_once_and_configs_are_secure_unless_insecure(
    tmp_path: Path,
) -> None:
    cl = _cluster_module()
    cluster = cl.Cluster(tmp_path)
    certs = cl._ensure_certs(cluster, 3, "127.0.0.1")
    auth = cl._ensure_auth(cluster)
    made = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert {p.name for p in (tmp_path / "tokens").iterdir()} == {
        f"{n}.token" for n in cl.LOCAL_TOKENS
    }
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "tokens").iterdir())
    # A second `up` reuses everything (a new CA would orphan every certificate).
    cl._ensure_certs(cluster, 3, "127.0.0.1")
    cl._ensure_auth(cluster)
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == made
    # A node added later gets a certificate of the same CA.
    cl._ensure_certs(cluster, 4, "127.0.0.1")
    assert (tmp_path / "certs" / "node-4.pem").exists()
    assert (tmp_path / "certs" / "ca.pem").read_bytes() == made[tmp_path / "certs" / "ca.pem"]

    secure = cl.Layout(3, "127.0.0.1", 7100, 4, 3, None, tls_dir=certs, secure=True, auth_dir=auth)
    config = cluster.write_config(secure, 2).read_text()
    assert "[tls]" in config and "node-2.pem" in config and "[auth]" in config
    assert "jwks.json" in config and "insecure" not in config
    plain = cl.Layout(3, "127.0.0.1", 7100, 4, 3, None)
    config = cluster.write_config(plain, 2).read_text()
    assert "insecure = true" in config and "[tls]" not in config and "[auth]" not in config
