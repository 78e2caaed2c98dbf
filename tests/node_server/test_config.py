"""Node configuration: a precise error for every mistake, defaults otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_config, parse_config

BASE = {
    "node_id": 2,
    "listen": "127.0.0.1:7102",
    "data_dir": "node-2",
    "partitions": 8,
    "replication": 3,
    "peers": [
        {"id": 1, "address": "127.0.0.1:7101"},
        {"id": 2, "address": "127.0.0.1:7102", "client_address": "127.0.0.1:9102"},
        {"id": 3, "address": "127.0.0.1:7103"},
    ],
    "insecure": True,  # the secure tables are tested on their own below
}


def test_valid_config_resolves_paths_and_addresses(tmp_path: Path) -> None:
    cfg = parse_config(dict(BASE), tmp_path)
    assert cfg.data_dir == tmp_path / "node-2"
    assert cfg.address == "127.0.0.1:7102"
    assert cfg.client_address(2) == "127.0.0.1:9102"
    assert cfg.client_address(1) == "127.0.0.1:7101"
    assert cfg.raft.tick_ms == 100 and cfg.limits.request_timeout_s == 10.0
    assert cfg.raft.max_clock_offset_ms == 250
    assert len(cfg.placement.partitions_on(2)) == 8  # 3 nodes, 3 replicas: every partition


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"node_id": 9}, "node_id 9 is not among the [[peers]]"),
        ({"bogus": 1}, "unknown configuration key(s): bogus"),
        ({"raft": {"tick_ms": 50, "nope": 1}}, "unknown key(s) in [raft]: nope"),
        (
            {"raft": {"max_clock_offset_ms": -1}},
            "[raft] max_clock_offset_ms must be an integer from 0 to 60000",
        ),
        (
            {"raft": {"max_clock_offset_ms": "250"}},
            "[raft] max_clock_offset_ms must be an integer from 0 to 60000",
        ),
        ({"replication": 5}, "3 nodes cannot hold 5 distinct replicas"),
        ({"peers": [{"id": 2}]}, "each [[peers]] table needs id and address"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, change: dict[str, object], message: str) -> None:
    raw = dict(BASE)
    raw.update(change)
    with pytest.raises(ConfigError) as e:
        parse_config(raw, tmp_path)
    assert message in str(e.value)


def test_missing_key_and_file(tmp_path: Path) -> None:
    raw = dict(BASE)
    del raw["listen"]
    with pytest.raises(ConfigError, match="missing required key: listen"):
        parse_config(raw, tmp_path)
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("node_id = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


# ---- test-only switches: environment only, never a configuration file -------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"unsafe_skip_raft_fsync": True}, "unsafe_skip_raft_fsync"),
        ({"lossy_unsynced_writes": True}, "lossy_unsynced_writes"),
        ({"lossy_unsynced_writes": False}, "lossy_unsynced_writes"),  # even to turn it off
        ({"MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC": 1}, "MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC"),
        ({"raft": {"test_only_skip_fsync": True}}, "[raft] test_only_skip_fsync"),
    ],
)
def test_a_config_file_cannot_turn_on_a_test_only_switch(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    raw = dict(BASE)
    raw.update(change)
    with pytest.raises(ConfigError) as e:
        parse_config(raw, tmp_path)
    assert named in str(e.value)
    assert "test-only switch(es) cannot be set in a configuration file" in str(e.value)


def test_test_only_switches_come_from_the_environment_only(tmp_path: Path) -> None:
    from node.test_only import TestOnlyError, from_environ

    cfg = parse_config(dict(BASE), tmp_path)
    assert not cfg.test_only.any  # a file never turns them on
    assert not from_environ({}).any
    on = from_environ(
        {"MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC": "1", "MEDKV_TEST_ONLY_LOSSY_UNSYNCED_WRITES": "true"}
    )
    assert on.skip_raft_fsync and on.lossy_unsynced_writes
    with pytest.raises(TestOnlyError, match="MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC must be 1 or 0"):
        from_environ({"MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC": "maybe"})


def test_a_node_with_a_test_only_switch_says_so_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses
    import logging

    from node import test_only

    cfg = parse_config(dict(BASE), tmp_path)
    switches = test_only.from_environ({"MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC": "1"})
    cfg = dataclasses.replace(cfg, test_only=switches)
    with caplog.at_level(logging.WARNING):
        test_only.warn(cfg.test_only, logging.getLogger("medkv.node"))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1
    assert "TEST ONLY (MEDKV_TEST_ONLY_SKIP_RAFT_FSYNC is set)" in lines[0]
    assert "never hold real data" in lines[0]


def test_operator_help_offers_no_test_only_switch() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    commands = ["up", "status", "down", "kill-node", "restart-node", "pause-node", "resume-node"]
    for argv in (
        ["scripts/cluster.py", "--help"],
        *(["scripts/cluster.py", c, "--help"] for c in commands),
        ["-m", "node", "--help"],
    ):
        out = subprocess.run(
            [sys.executable, *argv], cwd=root, capture_output=True, text=True, timeout=60,
            check=True,
        ).stdout.lower()
        for word in ("fsync", "lossy", "test only", "test-only", "planted"):
            assert word not in out, (argv, word)


def test_the_new_limits_are_checked(tmp_path: Path) -> None:
    raw = dict(BASE)
    raw["limits"] = {"max_in_flight_per_stream": 0}
    with pytest.raises(ConfigError, match="max_in_flight_per_stream must be at least 1"):
        parse_config(raw, tmp_path)
    raw["limits"] = {}
    raw["raft"] = {"max_uncommitted_bytes": 0}
    with pytest.raises(ConfigError, match="max_uncommitted_bytes must be at least 1"):
        parse_config(raw, tmp_path)
    cfg = parse_config(dict(BASE), tmp_path)
    assert cfg.limits.max_in_flight_per_stream == 1024
    assert cfg.raft.max_uncommitted_bytes == 64 << 20


# ---- access control: [tls] and [auth], or an explicit `insecure = true` ------


@pytest.fixture
def secure_files(tmp_path: Path) -> dict[str, object]:
    from node.auth.certs import init_ca, issue_node
    from node.auth.tokens import keygen

    ca = init_ca(tmp_path / "certs")
    issue_node(ca, tmp_path / "certs", 2, hosts=["127.0.0.1"])
    keygen(tmp_path / "auth")
    return {
        "tls": {"ca_file": "certs/ca.pem", "cert_file": "certs/node-2.pem",
                "key_file": "certs/node-2.key"},
        "auth": {"jwks_file": "auth/jwks.json", "issuers": ["medkv-local"], "audience": "medkv"},
    }


def _secure(files: dict[str, object], **change: object) -> dict[str, object]:
    raw = {k: v for k, v in BASE.items() if k != "insecure"}
    raw.update(files)
    raw.update(change)
    return {k: v for k, v in raw.items() if v is not None}


def test_a_secure_config_has_tls_and_tokens(tmp_path: Path, secure_files: dict[str, object]) -> None:
    cfg = parse_config(_secure(secure_files), tmp_path)
    assert not cfg.insecure
    assert cfg.tls is not None and cfg.tls.cert_file == tmp_path / "certs" / "node-2.pem"
    assert cfg.auth is not None and cfg.auth.jwks_file == tmp_path / "auth" / "jwks.json"
    assert cfg.auth.tokens.audience == "medkv"


@pytest.mark.parametrize(
    ("drop", "missing"),
    [(("tls", "auth"), "no [tls] and [auth]"), (("auth",), "no [auth]"), (("tls",), "[auth] needs [tls]")],
)
def test_a_node_refuses_to_run_without_access_control(
    tmp_path: Path, secure_files: dict[str, object], drop: tuple[str, ...], missing: str
) -> None:
    raw = _secure(secure_files, **{k: None for k in drop})
    with pytest.raises(ConfigError) as e:
        parse_config(raw, tmp_path)
    assert missing in str(e.value)
    if drop != ("tls",):
        assert "insecure = true" in str(e.value)  # the message names the only way around it


def test_insecure_must_be_said_plainly(tmp_path: Path, secure_files: dict[str, object]) -> None:
    for value in ("true", 1, "yes"):
        with pytest.raises(ConfigError, match="insecure must be true or false"):
            parse_config({**BASE, "insecure": value}, tmp_path)
    # insecure with [tls] only: TLS without tokens, allowed and flagged
    cfg = parse_config(_secure(secure_files, auth=None, insecure=True), tmp_path)
    assert cfg.insecure and cfg.tls is not None and cfg.auth is None
    # tokens over plaintext never, not even when insecure
    with pytest.raises(ConfigError, match=r"\[auth\] needs \[tls\]"):
        parse_config(_secure(secure_files, tls=None, insecure=True), tmp_path)


def test_an_insecure_node_warns_at_every_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from node.server import Node

    cfg = parse_config({**BASE, "data_dir": str(tmp_path / "d")}, tmp_path)
    node = Node.__new__(Node)  # only the warning: no storage is opened
    node.cfg = cfg
    with caplog.at_level(logging.WARNING):
        node._warn_insecure()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert line.startswith("INSECURE: node 2 runs with `insecure = true`: plaintext gRPC")
    assert "nothing is audited" in line
