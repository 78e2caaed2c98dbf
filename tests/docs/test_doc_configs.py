"""Every node configuration shown in README.md and docs/*.md (a ```toml block
with `node_id`) parses with the node's own parser, with the files it names
made in a temporary /etc/medkv and /var/lib/medkv: a guide's example that the
node would refuse at start fails here instead of on an operator's host."""

from __future__ import annotations

import tomllib
from pathlib import Path

from node.auth.certs import init_ca, issue_node
from node.auth.tokens import keygen
from node.config import parse_config
from tests.docs.examples import collect

ROOT = Path(__file__).resolve().parents[2]


def test_every_node_configuration_in_the_docs_parses(tmp_path: Path) -> None:
    configs = [b for b in collect(ROOT) if b.language == "toml" and "node_id" in b.code]
    assert {b.path.name for b in configs} >= {"multi-host.md", "configuration.md"}
    etc = tmp_path / "etc"
    for tls in (etc, etc / "tls"):  # both layouts the pages use
        ca = init_ca(tls)
        issue_node(ca, tls, 1, hosts=["10.0.0.11"])
    keygen(etc)
    for block in configs:
        text = block.code.replace("/etc/medkv/", f"{etc}/")
        text = text.replace("/var/lib/medkv/", f"{tmp_path}/var/")
        cfg = parse_config(tomllib.loads(text), tmp_path)
        assert cfg.node_id == 1 and cfg.tls is not None and cfg.auth is not None, block.where(ROOT)
