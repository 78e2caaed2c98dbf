"""The `medkv` command line: parsing, server-command dispatch, and real runs
against the in-test gRPC cluster."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client, RetryPolicy
from client.cli import (
    EXIT_CONFLICT,
    EXIT_DEGRADED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    _Out,
    build_parser,
    main,
    run,
    server_command,
)
from tests.client_unit.kvserver import TestCluster

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(timeout=3.0, attempt_timeout=1.0, initial_backoff=0.01, max_backoff=0.05)


def test_global_options_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDKV_ADDR", raising=False)
    args = build_parser().parse_args(["get", "p1", "r1"])
    assert args.addr == "127.0.0.1:7101" and not args.json and args.consistency is None
    monkeypatch.setenv("MEDKV_ADDR", "10.0.0.1:7101,10.0.0.2:7101")
    args = build_parser().parse_args(
        ["--json", "--timeout", "2.5", "get", "p1", "r1", "--max-staleness", "1.5"]
    )
    assert args.addr == "10.0.0.1:7101,10.0.0.2:7101" and args.json and args.timeout == 2.5
    assert args.max_staleness == 1.5
    args = build_parser().parse_args(["scan", "--partition", "3", "--partition", "5"])
    assert args.partition == [3, 5] and args.page_size == 0
    args = build_parser().parse_args(["cas", "p", "r", "--expected-version", "0", "--value", "v"])
    assert args.expected_version == 0 and args.value == "v"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cas", "p", "r"])  # --expected-version is required
    with pytest.raises(SystemExit):
        build_parser().parse_args(["get", "p", "r", "--consistency", "eventual"])


def test_server_commands_are_handed_to_the_node_package() -> None:
    py = sys.executable
    assert server_command(["node", "--config", "n.toml"]) == [
        py,
        "-m",
        "node",
        "--config",
        "n.toml",
    ]
    assert server_command(["--addr", "h:1", "--json", "keys", "init", "--key-file", "k"]) == [
        py,
        "-m",
        "node",
        "keys",
        "init",
        "--key-file",
        "k",
    ]
    assert server_command(["get", "node", "r"]) is None  # a patient called "node"
    assert server_command(["--addr", "node", "status"]) is None  # an option's value
    assert server_command(["--json"]) is None


def test_cli_never_imports_the_node_package() -> None:
    code = "import sys, client.cli; sys.exit(1 if any(m == 'node' or m.startswith('node.') for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


@pytest.fixture
def cluster() -> Iterator[TestCluster]:
    with TestCluster(nodes=3, partitions=4) as c:
        yield c


@pytest.fixture
def kv(cluster: TestCluster) -> Iterator[Client]:
    with Client(cluster.seeds(), retry=FAST) as client:
        yield client


def invoke(kv: Client, argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, str, str]:
    args = build_parser().parse_args(argv)
    text_out, text_err, raw_out = io.StringIO(), io.StringIO(), io.BytesIO()
    code = run(args, kv, _Out(text_out, text_err, args.json), io.BytesIO(stdin), raw_out)
    return code, raw_out.getvalue(), text_out.getvalue(), text_err.getvalue()


def test_put_get_history_delete(kv: Client) -> None:
    code, _, out, _ = invoke(kv, ["put", "p1", "r1"], stdin=b"\x00binary\xff")
    assert code == 0
    v1 = int(out)
    code, raw, _, err = invoke(kv, ["get", "p1", "r1", "--raw"])
    assert raw == b"\x00binary\xff"
    assert f"version {v1}" in err and "leader" in err
    code, _, out, _ = invoke(kv, ["--json", "get", "p1", "r1", "--consistency", "follower"])
    doc = json.loads(out)
    assert doc["version"] == v1 and "value_base64" in doc and doc["read_state"]["served_by"] > 0
    _, _, out, _ = invoke(kv, ["put", "p1", "r1", "--value", "text value"])
    v2 = int(out)
    _, _, out, _ = invoke(kv, ["--json", "history", "p1", "r1"])
    assert [d["version"] for d in json.loads(out)] == [v2, v1]
    assert json.loads(out)[0]["value"] == "text value"
    _, _, out, _ = invoke(kv, ["history", "p1", "r1", "--limit", "1"])
    assert out.splitlines()[0].startswith("VERSION") and len(out.splitlines()) == 2
    _, _, out, _ = invoke(kv, ["--json", "delete", "p1", "r1", "--expected-version", str(v2)])
    assert json.loads(out)["version"] > v2


def test_cas_and_scan(kv: Client) -> None:
    _, _, out, _ = invoke(kv, ["cas", "p2", "r", "--expected-version", "0", "--value", "a"])
    assert int(out) > 0
    for i in range(5):
        kv.put(f"scan-{i}", "r", b"v")
    code, _, out, err = invoke(kv, ["--json", "scan", "--page-size", "2"])
    assert code == 0
    seen = sorted(json.loads(line)["patient_id"] for line in out.splitlines())
    assert seen == sorted(["p2"] + [f"scan-{i}" for i in range(5)])
    # Not a terminal: no line per partition, one progress line at the start
    # (rate-limited) and the last state, then the summary.
    assert "partition 0 done" not in err and err.count("scan: ") <= 2, err
    assert "scan: 4/4 partitions, 6 records" in err
    assert "scan complete: 6 records from 4 partitions (" in err and "max staleness" in err


def test_status_table_and_json(kv: Client) -> None:
    _, _, out, _ = invoke(kv, ["status"])
    assert out.startswith("medkv cluster: OK")
    _, _, out, _ = invoke(kv, ["--json", "status"])
    assert json.loads(out)["partitions"] == 4


def test_main_exit_codes_and_error_text(
    cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = ",".join(cluster.seeds())
    assert main(["--addr", addr, "--timeout", "3", "get", "nobody", "nothing"]) == EXIT_NOT_FOUND
    assert "medkv: error: NOT_FOUND" in capsys.readouterr().err
    assert main(["--addr", addr, "put", "p", "r", "--value", "x"]) == 0
    assert (
        main(["--addr", addr, "cas", "p", "r", "--expected-version", "0", "--value", "y"])
        == EXIT_CONFLICT
    )
    assert main(["--addr", "not-an-address", "status"]) == 1
    assert "not a host:port" in capsys.readouterr().err


def test_console_script_end_to_end(cluster: TestCluster) -> None:
    env = {**os.environ, "MEDKV_ADDR": cluster.seeds()[1], "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "client.cli"]
    put = subprocess.run(
        [*cmd, "put", "pe", "re"],
        input=b"from stdin",
        capture_output=True,
        env=env,
        timeout=30,
        check=True,
    )
    version = int(put.stdout)
    get = subprocess.run(
        [*cmd, "get", "pe", "re"], capture_output=True, env=env, timeout=30, check=True
    )
    assert get.stdout == b"from stdin\n"  # the output ends with a newline
    assert f"version {version}".encode() in get.stderr
    assert f"written: version {version}".encode() in put.stderr
    raw = subprocess.run(
        [*cmd, "get", "pe", "re", "--raw"], capture_output=True, env=env, timeout=30, check=True
    )
    assert raw.stdout == b"from stdin"


@pytest.mark.skipif(not (ROOT / "node" / "__main__.py").exists(), reason="node not built yet")
def test_node_and_keys_commands_run_the_node_package() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv, expected in ((["node", "--help"], "--config"), (["keys", "--help"], "init")):
        done = subprocess.run(
            [sys.executable, "-m", "client.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


def test_share_patient(kv: Client) -> None:
    code, _, out, err = invoke(kv, ["share-patient", "p9", "north"])
    assert code == 0 and out.split() == ["north"] and "index" in err
    code, _, out, _ = invoke(kv, ["--json", "share-patient", "p9", "east"])
    assert code == 0 and json.loads(out)["clinics"] == ["east", "north"]
    code, _, out, _ = invoke(kv, ["share-patient", "p9", "north", "--revoke"])
    assert code == 0 and out.split() == ["east"]


GLOBALS_AFTER = [
    "--json", "--addr", "h1:1,h2:2", "--timeout", "4", "--tls-dir", "/certs",
    "--token", "@tok", "--clinic", "north", "--break-glass-reason", "er",
]


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["put", "p", "r", "--value", "v"],
        ["get", "p", "r"],
        ["history", "p", "r"],
        ["delete", "p", "r"],
        ["cas", "p", "r", "--expected-version", "0"],
        ["scan"],
        ["erase-patient", "p"],
        ["settings", "get"],
        ["settings", "set", "--max-sessions", "3"],
    ],
)
def test_global_options_are_accepted_after_the_command(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDKV_ADDR", raising=False)
    monkeypatch.delenv("MEDKV_TLS_DIR", raising=False)
    args = build_parser().parse_args([*command, *GLOBALS_AFTER])
    assert args.json is True and args.addr == "h1:1,h2:2" and args.timeout == 4.0
    assert args.tls_dir == "/certs" and args.token == "@tok"
    assert args.clinic == "north" and args.break_glass_reason == "er"
    # Not given after the command: the top-level value (or default) stands.
    args = build_parser().parse_args(["--json", "--addr", "h:9", "--timeout", "2", *command])
    assert args.json is True and args.addr == "h:9" and args.timeout == 2.0
    args = build_parser().parse_args(command)
    assert args.json is False and args.addr == "127.0.0.1:7101" and args.timeout is None
    assert args.tls_dir is None and args.token is None


def test_the_later_of_two_global_options_wins() -> None:
    args = build_parser().parse_args(["--addr", "a:1", "--timeout", "1", "status",
                                      "--addr", "b:2", "--timeout", "9"])
    assert args.addr == "b:2" and args.timeout == 9.0


def test_share_patient_keeps_its_clinic_positional() -> None:
    args = build_parser().parse_args(["share-patient", "p", "east", "--json", "--addr", "h:1"])
    assert args.share_clinic == "east" and args.json and args.addr == "h:1"
    # the clinic shared is not the clinic the request names (medkv-clinic)
    args = build_parser().parse_args(["share-patient", "p", "east", "--clinic", "north"])
    assert args.share_clinic == "east" and args.clinic == "north"
    args = build_parser().parse_args(["share-patient", "p", "east"])
    assert args.clinic is None


def test_json_after_the_command_runs(kv: Client) -> None:
    code, _, out, _ = invoke(kv, ["status", "--json"])
    assert code == 0 and json.loads(out)["health"] == "OK"


def test_put_says_what_it_did(kv: Client, cluster: TestCluster) -> None:
    code, _, out, err = invoke(kv, ["put", "pw", "rw", "--value", "x"])
    version = int(out)
    assert code == 0
    partition = kv.router.partition_of("pw")  # type: ignore[union-attr]
    leader = cluster.state.leaders[partition]
    assert err == f"written: version {version}, partition {partition}, served by node {leader} (leader)\n"
    assert "pw" not in err and "rw" not in err  # no patient or record id in the note
    _, _, out, _ = invoke(kv, ["put", "pw", "rw", "--value", "y", "--json"])
    doc = json.loads(out)
    assert doc["version"] > version and doc["partition"] == partition
    assert doc["served_by"] == leader
    _, _, out, err = invoke(kv, ["delete", "pw", "rw"])
    assert err.startswith(f"deleted: version {int(out)}")


def test_get_ends_with_a_newline_unless_raw(kv: Client) -> None:
    kv.put("pn", "r", b"no newline")
    kv.put("pn", "r2", b"has one\n")
    assert invoke(kv, ["get", "pn", "r"])[1] == b"no newline\n"
    assert invoke(kv, ["get", "pn", "r2"])[1] == b"has one\n"  # never doubled
    assert invoke(kv, ["get", "pn", "r", "--raw"])[1] == b"no newline"


@pytest.mark.parametrize("command", [["keys", "status"], ["audit", "verify"]])
def test_online_keys_and_audit_take_credentials_after_the_command(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import client.cli as cli
    from client.errors import MedkvError

    seen: dict[str, object] = {}

    def fake_client(ns: object, addr: str, timeout: float | None) -> object:
        seen.update(tls_dir=ns.tls_dir, token=ns.token, addr=addr, timeout=timeout)  # type: ignore[attr-defined]
        raise MedkvError("stop here")

    monkeypatch.setattr(cli, "_client", fake_client)
    main(["--tls-dir", "/a", "--token", "@t1", *command,
          "--tls-dir", "/b", "--token", "@t2", "--addr", "h:1", "--timeout", "3"])
    assert seen == {"tls_dir": "/b", "token": "@t2", "addr": "h:1", "timeout": 3.0}
    main(["--tls-dir", "/a", "--token", "@t1", *command])
    assert seen["tls_dir"] == "/a" and seen["token"] == "@t1"


def _follower_of(cluster: TestCluster, partition: int) -> int:
    leader = cluster.state.leaders[partition]
    return next(n for n in cluster.placement.replicas(partition) if n != leader)


def test_partition_shows_one_partition_from_its_leader(kv: Client, cluster: TestCluster) -> None:
    leader = cluster.state.leaders[2]
    cluster.clear_calls()
    code, _, out, _ = invoke(kv, ["partition", "2"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"partition 2: leader {leader}, term 3")
    assert lines[1].split() == ["NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "MATCH", "LAG", "STATE"]
    rows = {int(line.split()[0]): line.split() for line in lines[2:]}
    assert set(rows) == set(cluster.placement.replicas(2))
    assert rows[leader][1] == "leader" and rows[leader][-1] == "ok"
    assert all(r[1] == "follower" for n, r in rows.items() if n != leader)
    assert {c.node for c in cluster.calls("PartitionStatus")} == {leader}
    # --json after the command too; a proto-shaped document with numbers
    code, _, out, _ = invoke(kv, ["partition", "2", "--json"])
    doc = json.loads(out)
    assert doc["answered_by"] == leader and doc["info"]["partition"] == 2
    assert doc["info"]["leader"] == leader and len(doc["info"]["replica_status"]) == 3


def test_partition_out_of_range_is_refused_before_any_call(
    cluster: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = ",".join(cluster.seeds())
    assert main(["--addr", addr, "--timeout", "3", "partition", "9"]) == 1
    assert "partition must be in 0..3" in capsys.readouterr().err
    assert cluster.calls("PartitionStatus") == []


def test_transfer_leader_prints_the_new_leader(kv: Client, cluster: TestCluster) -> None:
    target = _follower_of(cluster, 1)
    code, _, out, err = invoke(kv, ["transfer-leader", "1", str(target)])
    assert code == 0 and out == f"{target}\n"
    assert f"partition 1: node {target} is the leader" in err
    assert cluster.state.leaders[1] == target
    back = _follower_of(cluster, 1)
    code, _, out, _ = invoke(kv, ["transfer-leader", "1", str(back), "--json"])
    assert json.loads(out) == {"partition": 1, "leader": back}


def test_transfer_leader_follows_a_stale_leader_hint(kv: Client, cluster: TestCluster) -> None:
    kv.routing_table()  # the client caches the leaders now
    old = cluster.state.leaders[0]
    moved = _follower_of(cluster, 0)
    cluster.state.leaders[0] = moved  # leadership moved behind the client's back
    target = next(n for n in cluster.placement.replicas(0) if n not in (old, moved))
    cluster.clear_calls()
    code, _, out, _ = invoke(kv, ["transfer-leader", "0", str(target)])
    assert code == 0 and int(out) == target
    assert [c.node for c in cluster.calls("TransferLeader")][-1] == moved


def test_transfer_leader_to_a_node_without_a_replica_fails_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with TestCluster(nodes=4, partitions=4, replication=3) as four:
        outsider = next(n for n in range(1, 5) if n not in four.placement.replicas(0))
        code = main(["--addr", ",".join(four.seeds()), "--timeout", "3",
                     "transfer-leader", "0", str(outsider)])
        assert code == 1
        assert f"node {outsider} holds no replica of partition 0" in capsys.readouterr().err


class _StatusOnly:
    """A stand-in client whose cluster answers a fixed status."""

    def __init__(self, status: object) -> None:
        self.status = status

    def cluster_status(self, timeout: float | None = None) -> object:
        return self.status


def _status_for(health: str) -> object:
    from tests.client_unit.test_status_table import make_status

    if health == "UNAVAILABLE":
        return make_status(leaderless=1)
    status = make_status()
    if health == "DEGRADED":  # node 3, a follower of partition 0, unheard: under-replicated
        status.partition_info[0].replica_status[2].reachable = False
    return status


@pytest.mark.parametrize(
    ("health", "code"),
    [("OK", 0), ("DEGRADED", EXIT_DEGRADED), ("UNAVAILABLE", EXIT_UNAVAILABLE)],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_status_exit_code_follows_the_verdict(health: str, code: int, as_json: bool) -> None:
    argv = ["status", "--json"] if as_json else ["status"]
    args = build_parser().parse_args(argv)
    text_out = io.StringIO()
    got = run(args, _StatusOnly(_status_for(health)),  # type: ignore[arg-type]
              _Out(text_out, io.StringIO(), as_json), io.BytesIO(), io.BytesIO())
    assert got == code
    if as_json:
        assert json.loads(text_out.getvalue())["health"] == health
    else:
        assert text_out.getvalue().startswith(f"medkv cluster: {health}")
    assert len({0, EXIT_DEGRADED, EXIT_UNAVAILABLE, EXIT_CONFLICT, EXIT_NOT_FOUND, 1, 2}) == 7
