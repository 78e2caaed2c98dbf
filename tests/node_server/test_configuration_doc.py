"""docs/configuration.md against the configuration parser.

The reference is only useful if it is complete and right, and a reference
nobody checks drifts with the first new key. So this reads the doc's tables
(one `## NAME` heading per configuration table, the first column a backticked
key, the third its default) and asserts, for every table, that the documented
keys are exactly the keys the parser accepts, that every documented default is
the parser's, and that the doc's complete example parses. Adding a key to the
parser without documenting it fails here.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

import node.config as config_module
from node.auth.setup import _AUDIT_KEYS, _AUTH_KEYS
from node.config import (
    _TOP_LEVEL,
    Limits,
    LogSettings,
    MetricsSettings,
    NodeConfig,
    RaftSettings,
    parse_config,
)
from node.test_only import _ENV, FORMER_CONFIG_KEYS

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"

# The `## ` headings of the reference, one per table of the configuration file.
SECTIONS = ("Top-level keys", "[[peers]]", "[raft]", "[limits]", "[tls]", "[auth]", "[audit]",
            "[log]", "[metrics]")


def _doc_tables(text: str) -> dict[str, dict[str, str]]:
    """Heading -> {key: default cell} for the first table under each `## ` heading."""
    tables: dict[str, dict[str, str]] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            continue
        if heading is None or not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = re.fullmatch(r"`([a-z_]+)`", cells[0])
        assert key, f"{heading}: first column is not one backticked key: {line!r}"
        rows = tables.setdefault(heading, {})
        assert key.group(1) not in rows, f"{heading}: {key.group(1)} documented twice"
        rows[key.group(1)] = cells[2]
    return tables


def _literal(cell: str) -> Any:
    """The TOML value of a default cell `VALUE`; None for *required* or words."""
    m = re.fullmatch(r"`([^`]+)`", cell)
    if m is None:
        return None
    return tomllib.loads(f"v = {m.group(1)}")["v"]


def _source_function(name: str) -> ast.FunctionDef:
    tree = ast.parse(Path(config_module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"node/config.py has no function {name}")


def _tls_keys() -> set[str]:
    """The `wanted` tuple of node.config._tls: the [tls] keys."""
    for node in ast.walk(_source_function("_tls")):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "wanted" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return set(value)
    raise AssertionError("node.config._tls has no `wanted` keys any more; update this test")


def _peer_keys() -> set[str]:
    """The set literal parse_config checks [[peers]] tables against."""
    found = [
        ast.literal_eval(node) for node in ast.walk(_source_function("parse_config"))
        if isinstance(node, ast.Set) and all(isinstance(e, ast.Constant) for e in node.elts)
        and any(getattr(e, "value", None) == "address" for e in node.elts)
    ]
    assert len(found) == 1, "cannot find the [[peers]] key set in parse_config; update this test"
    return set(found[0])


def parser_keys() -> dict[str, set[str]]:
    return {
        "Top-level keys": set(_TOP_LEVEL),
        "[[peers]]": _peer_keys(),
        "[raft]": {f.name for f in fields(RaftSettings)},
        "[limits]": {f.name for f in fields(Limits)},
        "[tls]": _tls_keys(),
        "[auth]": set(_AUTH_KEYS),
        "[audit]": set(_AUDIT_KEYS),
        "[log]": {f.name for f in fields(LogSettings)},
        "[metrics]": {f.name for f in fields(MetricsSettings)},
    }


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text()


@pytest.fixture(scope="module")
def tables(doc_text: str) -> dict[str, dict[str, str]]:
    return _doc_tables(doc_text)


@pytest.fixture
def secure_files(tmp_path: Path) -> Path:
    """The files the doc's example names under /etc/medkv, made in tmp_path/etc."""
    from node.auth.certs import init_ca, issue_node
    from node.auth.tokens import keygen

    etc = tmp_path / "etc"
    ca = init_ca(etc)
    issue_node(ca, etc, 1, hosts=["10.0.0.11"])
    keygen(etc)
    return etc


def _example(doc_text: str, tmp_path: Path, etc: Path) -> dict[str, Any]:
    _, sep, tail = doc_text.partition("## Complete example")
    assert sep, "docs/configuration.md has no '## Complete example' section"
    block = re.search(r"```toml\n(.*?)```", tail, re.S)
    assert block, "the complete example is not a ```toml block"
    text = block.group(1).replace("/etc/medkv/", f"{etc}/")
    text = text.replace("/var/lib/medkv/", f"{tmp_path}/var/")
    return tomllib.loads(text)


def test_every_section_is_documented_with_exactly_the_parsers_keys(
    tables: dict[str, dict[str, str]],
) -> None:
    for section, keys in parser_keys().items():
        documented = set(tables.get(section, {}))
        assert documented - keys == set(), f"{section}: documented but not accepted"
        assert keys - documented == set(), f"{section}: accepted but not documented"
    assert set(tables) == set(SECTIONS), "a table under an unexpected heading"


def test_dataclass_defaults_are_the_documented_ones(tables: dict[str, dict[str, str]]) -> None:
    for section, cls in (("[raft]", RaftSettings), ("[limits]", Limits)):
        for f in fields(cls):
            assert f.default is not MISSING
            assert _literal(tables[section][f.name]) == f.default, f"{section} {f.name}"
    node_defaults = {f.name: f.default for f in fields(NodeConfig) if f.default is not MISSING}
    for key, cell in tables["Top-level keys"].items():
        documented = _literal(cell)
        if key in node_defaults and documented is not None:
            assert documented == node_defaults[key], f"top-level {key}"


def test_documented_defaults_change_nothing_when_written_out(
    tables: dict[str, dict[str, str]], doc_text: str, tmp_path: Path, secure_files: Path,
) -> None:
    """Every documented default, in every table, parses to the same NodeConfig as
    leaving the key out: the parser's default is the documented one."""
    base = _example(doc_text, tmp_path, secure_files)
    minimal: dict[str, Any] = {
        k: base[k] for k in ("node_id", "listen", "data_dir", "peers", "key_file")
    }
    minimal["peers"] = [{"id": p["id"], "address": p["address"]} for p in base["peers"]]
    minimal["tls"] = base["tls"]
    minimal["auth"] = {"jwks_file": base["auth"]["jwks_file"]}
    expected = parse_config(minimal, tmp_path)
    where = {
        "Top-level keys": None, "[raft]": "raft", "[limits]": "limits",
        "[auth]": "auth", "[audit]": "audit", "[log]": "log", "[metrics]": "metrics",
    }
    checked = 0
    for section, table in where.items():
        for key, cell in tables[section].items():
            value = _literal(cell)
            if value is None:
                continue
            raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in minimal.items()}
            target = raw if table is None else raw.setdefault(table, {})
            target[key] = value
            assert parse_config(raw, tmp_path) == expected, f"{section} {key} = {cell}"
            checked += 1
    assert checked >= 20  # the defaults are really being read from the doc


def test_the_complete_example_parses(doc_text: str, tmp_path: Path, secure_files: Path) -> None:
    raw = _example(doc_text, tmp_path, secure_files)
    cfg = parse_config(raw, tmp_path)
    assert not cfg.insecure and cfg.tls is not None and cfg.auth is not None
    assert cfg.node_id == 1 and set(cfg.peers) == {1, 2, 3}
    # The example shows every table the reference documents.
    assert {"raft", "limits", "tls", "auth", "audit", "log", "metrics"} <= set(raw)


def test_no_test_only_switch_is_documented(doc_text: str) -> None:
    names = set(FORMER_CONFIG_KEYS) | set(_ENV) | set(_ENV.values())
    for name in names:
        assert name not in doc_text, f"test-only switch {name} appears in the reference"
    assert "MEDKV_TEST_ONLY" not in doc_text


def test_links_stay_in_the_repository(doc_text: str) -> None:
    """The reference's links, and the README's and multi-host guide's links to it,
    are relative paths to files that exist."""
    root = DOC.parents[1]
    for source, text in ((DOC, doc_text), (root / "README.md", None), (root / "docs" / "multi-host.md", None)):
        body = text if text is not None else source.read_text()
        targets = re.findall(r"\]\(([^)]+)\)", body)
        if source != DOC:
            assert any(t.endswith("configuration.md") for t in targets), f"{source.name} lacks the link"
        for target in targets:
            if target.startswith(("http://", "https://", "#")):
                continue
            path = (source.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(root) and path.exists(), f"{source.name}: {target}"
