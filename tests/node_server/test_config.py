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
