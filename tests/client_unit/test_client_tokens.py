"""Bearer tokens from the clients and the CLI, over real mutual TLS on 127.0.0.1.

The servers are the in-test cluster of kvserver.py with TLS ports (a PKI made
by node.auth.certs); every request records the metadata it arrived with, so
what is asserted is what went over the wire. Tokens are real JWTs (mint).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from client import AsyncClient, Client, InvalidArgument, RetryPolicy, TlsConfig, ops
from client.auth import TokenError
from client.cli import build_parser, main
from node.auth import certs
from node.auth.tokens import mint
from node.tls import TlsSettings
from proto.medkv.v1 import kv_pb2, kv_pb2_grpc
from tests.client_unit.kvserver import Call, TestCluster

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(timeout=3.0, attempt_timeout=1.0, initial_backoff=0.01, max_backoff=0.05)
REASON = "cardiac arrest, patient unconscious"
# Every kind of call the clients make, and BatchCommands on a client's channel.
EVERY_KIND = {
    "RoutingTable", "OpenSession", "Put", "CompareAndSet", "Delete", "Batch", "Get",
    "History", "Scan", "ClusterStatus", "KeyStatus", "BatchCommands",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = certs.init_ca(d)
    certs.issue_node(ca, d, 1, hosts=["127.0.0.1"], dns=["localhost"])
    certs.issue_client(ca, d, "client")
    return d


@pytest.fixture(scope="module")
def signing_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def token(key: ed25519.Ed25519PrivateKey, sub: str = "dr-lee") -> str:
    return mint(key, subject=sub, roles=["clinician"], clinics=["north"])


@pytest.fixture
def cluster(pki: Path) -> Iterator[TestCluster]:
    creds = TlsSettings(pki / "ca.pem", pki / "node-1.pem", pki / "node-1.key")
    with TestCluster(nodes=3, partitions=4, server_credentials=creds.server_credentials()) as c:
        yield c


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEDKV_TOKEN", "MEDKV_TLS_DIR", "MEDKV_ADDR"):
        monkeypatch.delenv(name, raising=False)


def tls(pki: Path) -> TlsConfig:
    return TlsConfig.from_dir(pki)


def bearers(calls: list[Call]) -> set[str]:
    """The authorization values the servers saw (a call without one shows as "")."""
    return {dict(c.metadata).get("authorization", "") for c in calls}


def kinds(calls: list[Call]) -> set[str]:
    return {c.method for c in calls}


async def batch_commands(kv: Any, address: str) -> None:
    """A BatchCommands stream on the client's own channel, with the client's metadata
    (the clients do not use BatchCommands themselves yet)."""
    stub: Any = kv_pb2_grpc.KVStub(kv._channel(address))
    call = stub.BatchCommands(iter([kv_pb2.BatchCommandsRequest()]), timeout=5,
                              metadata=kv._metadata)
    async for _ in call:
        pass


def test_sync_client_sends_the_token_and_metadata_on_every_call(
    cluster: TestCluster, pki: Path, signing_key: ed25519.Ed25519PrivateKey
) -> None:
    jwt = token(signing_key)
    with Client(cluster.seeds(), retry=FAST, tls=tls(pki), token=jwt, clinic="north",
                break_glass_reason=REASON) as kv:
        v = kv.put("p1", "r1", b"v")
        v = kv.cas("p1", "r1", b"w", v)
        kv.batch("p1", [ops.put("r2", b"x")])
        kv.delete("p1", "r2")
        assert kv.get("p1", "r1").value == b"w"
        assert [r.version for r in kv.history("p1", "r1")] == [v, v - 1]
        assert [r.patient_id for r in kv.scan()] == ["p1"]
        kv.cluster_status()
        kv.key_status(cluster.seeds()[0])
        kv._run(batch_commands(kv._async, cluster.seeds()[1]))
    calls = cluster.calls()
    assert kinds(calls) == EVERY_KIND
    assert bearers(calls) == {f"Bearer {jwt}"}
    for c in calls:
        md = dict(c.metadata)
        if c.method == "BatchCommands":
            continue  # a stream opened by hand: the token (a channel credential) only
        assert md["medkv-clinic"] == "north" and md["medkv-break-glass-reason"] == REASON, c


def test_async_client_sends_the_token_on_every_call(
    cluster: TestCluster, pki: Path, signing_key: ed25519.Ed25519PrivateKey
) -> None:
    jwt = token(signing_key, "async-caller")

    async def scenario() -> None:
        async with AsyncClient(cluster.seeds(), retry=FAST, tls=tls(pki), token=jwt,
                               clinic="north") as kv:
            v = await kv.put("p1", "r1", b"v")
            v = await kv.cas("p1", "r1", b"w", v)
            await kv.batch("p1", [ops.put("r2", b"x")])
            await kv.delete("p1", "r2")
            assert (await kv.get("p1", "r1", consistency="follower")).value == b"w"
            assert len(await kv.history("p1", "r1")) == 2
            assert [r.patient_id async for r in kv.scan()] == ["p1"]
            await kv.cluster_status()
            await kv.key_status(cluster.seeds()[2])
            await batch_commands(kv, cluster.seeds()[0])

    asyncio.run(scenario())
    calls = cluster.calls()
    assert kinds(calls) == EVERY_KIND
    assert bearers(calls) == {f"Bearer {jwt}"}
    assert all(
        dict(c.metadata).get("medkv-clinic") == "north"
        and "medkv-break-glass-reason" not in dict(c.metadata)
        for c in calls if c.method != "BatchCommands"
    )


def test_without_a_token_nothing_is_added(cluster: TestCluster, pki: Path) -> None:
    with Client(cluster.seeds(), retry=FAST, tls=tls(pki)) as kv:
        kv.put("p1", "r1", b"v")
    assert bearers(cluster.calls()) == {""}
    assert not any(k.startswith("medkv-") for c in cluster.calls() for k, _ in c.metadata)


def test_a_token_file_is_re_read_after_it_changes(
    cluster: TestCluster, pki: Path, signing_key: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    first, second = token(signing_key, "first"), token(signing_key, "second")
    path.write_text(first + "\n")
    with Client(cluster.seeds(), retry=FAST, tls=tls(pki), token=f"@{path}") as kv:
        kv.put("p1", "r1", b"v")
        assert bearers(cluster.calls()) == {f"Bearer {first}"}
        # Renewed as an agent does: a new file renamed over the old one.
        (tmp_path / "token.new").write_text(second)
        os.replace(tmp_path / "token.new", path)
        cluster.clear_calls()
        kv.get("p1", "r1")
        kv.cluster_status()
        assert bearers(cluster.calls()) == {f"Bearer {second}"}
        assert str(path) in repr(kv) and first not in repr(kv) and second not in repr(kv)


def test_medkv_token_is_the_default_and_an_argument_wins(
    cluster: TestCluster, pki: Path, signing_key: ed25519.Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from_env, given = token(signing_key, "env"), token(signing_key, "arg")
    monkeypatch.setenv("MEDKV_TOKEN", from_env)
    monkeypatch.setenv("MEDKV_TLS_DIR", str(pki))  # TLS from the environment too
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.put("p1", "r1", b"v")
    assert bearers(cluster.calls()) == {f"Bearer {from_env}"}
    cluster.clear_calls()
    with Client(cluster.seeds(), retry=FAST, token=given) as kv:
        kv.get("p1", "r1")
    assert bearers(cluster.calls()) == {f"Bearer {given}"}
    # $MEDKV_TOKEN=@FILE works as well.
    (tmp_path / "t").write_text(given)
    monkeypatch.setenv("MEDKV_TOKEN", f"@{tmp_path / 't'}")
    cluster.clear_calls()
    with Client(cluster.seeds(), retry=FAST) as kv:
        kv.get("p1", "r1")
    assert bearers(cluster.calls()) == {f"Bearer {given}"}


def test_a_token_over_plaintext_is_refused_at_construction(
    signing_key: ed25519.Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    jwt = token(signing_key)
    for make in (lambda: Client("127.0.0.1:1", token=jwt),
                 lambda: AsyncClient("127.0.0.1:1", token=jwt)):
        with pytest.raises(InvalidArgument) as e:
            make()
        assert "needs TLS" in str(e.value) and "token=" in str(e.value)
        assert jwt not in str(e.value) and jwt not in repr(e.value)
    monkeypatch.setenv("MEDKV_TOKEN", jwt)
    with pytest.raises(InvalidArgument, match=r"\$MEDKV_TOKEN\) needs TLS") as e:
        Client("127.0.0.1:1")
    assert jwt not in str(e.value)
    # No token at all: plaintext stays possible (insecure = true clusters).
    monkeypatch.delenv("MEDKV_TOKEN")
    Client("127.0.0.1:1").close()


def test_no_token_text_in_repr_or_errors(
    cluster: TestCluster, pki: Path, signing_key: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    jwt = token(signing_key)
    with Client(cluster.seeds(), retry=FAST, tls=tls(pki), token=jwt) as kv:
        for text in (repr(kv), str(kv), repr(kv._async), str(kv._async)):
            assert jwt not in text and "<redacted>" in text
    # A malformed token (pasted with its scheme) is refused without echoing it.
    for bad in (f"Bearer {jwt}", f"{jwt}\""):
        with pytest.raises(TokenError) as e:
            Client(cluster.seeds(), tls=tls(pki), token=bad)
        assert jwt not in str(e.value) and "bearer token" in str(e.value)
    # A token file that turns bad under a running client: calls fail at once
    # (not retried until the deadline), naming the file, not its contents.
    path = tmp_path / "token"
    path.write_text(jwt)
    with Client(cluster.seeds(), retry=FAST, tls=tls(pki), token=f"@{path}") as kv:
        kv.put("p1", "r1", b"v")
        (tmp_path / "new").write_text(f"Bearer {jwt}")
        os.replace(tmp_path / "new", path)
        cluster.clear_calls()
        for call in (lambda: kv.get("p1", "r1"), kv.cluster_status, lambda: list(kv.scan()),
                     lambda: kv.key_status(cluster.seeds()[0])):
            started = time.monotonic()
            with pytest.raises(TokenError) as err:
                call()
            assert time.monotonic() - started < FAST.timeout / 2
            assert jwt not in str(err.value) and str(path) in str(err.value)
            assert "UNAUTHENTICATED" in str(err.value) and "not a bearer token" in str(err.value)
        assert cluster.calls() == []  # nothing was sent without a token
        # Fixed: calls go through again with the new token.
        fixed = token(signing_key, "fixed")
        path.write_text(fixed)
        kv.get("p1", "r1")
        assert bearers(cluster.calls()) == {f"Bearer {fixed}"}
    # Metadata grpc cannot carry is refused up front.
    with pytest.raises(InvalidArgument, match="printable ASCII"):
        Client(cluster.seeds(), tls=tls(pki), token=jwt, break_glass_reason="Notfall\nzwei")


def test_cli_token_clinic_and_break_glass(
    cluster: TestCluster, pki: Path, signing_key: ed25519.Ed25519PrivateKey,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    jwt = token(signing_key, "cli")
    addr = ",".join(cluster.seeds())
    base = ["--addr", addr, "--tls-dir", str(pki), "--timeout", "3"]
    assert main([*base, "--token", jwt, "--clinic", "north", "put", "p", "r", "--value", "x"]) == 0
    assert main([*base, "--token", jwt, "--break-glass-reason", REASON, "get", "p", "r"]) == 0
    calls = cluster.calls()
    assert bearers(calls) == {f"Bearer {jwt}"}
    assert {dict(c.metadata).get("medkv-clinic") for c in calls if c.method == "Put"} == {"north"}
    assert {dict(c.metadata).get("medkv-break-glass-reason")
            for c in calls if c.method == "Get"} == {REASON}
    # @FILE, and the online keys commands (global options before `keys`).
    (tmp_path / "tok").write_text(jwt)
    cluster.clear_calls()
    assert main([*base, "--token", f"@{tmp_path / 'tok'}", "keys", "status"]) == 0
    assert "KeyStatus" in kinds(cluster.calls())
    assert bearers(cluster.calls()) == {f"Bearer {jwt}"}
    # A token without TLS: refused with the reason, exit 1, the token not printed.
    capsys.readouterr()
    assert main(["--addr", addr, "--token", jwt, "get", "p", "r"]) == 1
    err = capsys.readouterr().err
    assert "needs TLS" in err and jwt not in err


def test_cli_token_comes_from_medkv_token_and_help_names_it(
    cluster: TestCluster, pki: Path, signing_key: ed25519.Ed25519PrivateKey
) -> None:
    jwt = token(signing_key, "env-cli")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEDKV_ADDR": cluster.seeds()[0],
           "MEDKV_TLS_DIR": str(pki), "MEDKV_TOKEN": jwt}
    done = subprocess.run([sys.executable, "-m", "client.cli", "put", "p", "r", "--value", "v"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert bearers(cluster.calls()) == {f"Bearer {jwt}"}
    text = build_parser().format_help()
    assert "MEDKV_TOKEN" in text and "--clinic" in text and "--break-glass-reason" in text
    assert jwt not in text


def _fake_cluster_dir(d: Path, port: int, tls_dir: Path | None, token: str | None) -> None:
    """What `scripts/cluster up` leaves behind, as far as `env` reads it: cluster.json
    (node 1 at `port`), and DIR/tokens/clinician.token. No node is started."""
    import json

    d.mkdir(parents=True)
    layout = {"nodes": 1, "host": "127.0.0.1", "base_port": port - 1, "partitions": 4,
              "replicas": 1, "key_file": None, "tls_dir": str(tls_dir) if tls_dir else None}
    (d / "cluster.json").write_text(json.dumps(layout))
    if token is not None:
        (d / "tokens").mkdir()
        (d / "tokens" / "clinician.token").write_text(token + "\n")


def _script_env(**extra: str) -> dict[str, str]:
    # MEDKV_VENV: scripts/_venv.sh uses this interpreter's venv instead of making one.
    venv = os.environ.get("MEDKV_VENV") or str(Path(sys.executable).parents[1])
    return {**os.environ, "PYTHONPATH": str(ROOT), "MEDKV_VENV": venv, **extra}


def _eval_env(data_dir: Path, then: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = f'eval "$("$CLUSTER" env --data-dir "$DATA_DIR")" && {then}'
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False,
        env={**env, "CLUSTER": str(ROOT / "scripts" / "cluster"), "DATA_DIR": str(data_dir)},
    )


def test_cluster_env_exports_make_the_cli_work(
    cluster: TestCluster, pki: Path, signing_key: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    jwt = token(signing_key, "from-env-file")
    port = int(cluster.seeds()[0].rsplit(":", 1)[1])
    data_dir = tmp_path / "a cluster dir"  # a space: the exports must be quoted
    _fake_cluster_dir(data_dir, port, pki, jwt)
    # Stale values from another cluster are replaced.
    base = _script_env(MEDKV_ADDR="10.9.9.9:1", MEDKV_TOKEN="stale")
    shown = _eval_env(data_dir, 'printf "%s\\n" "$MEDKV_ADDR" "$MEDKV_TLS_DIR" "$MEDKV_TOKEN"',
                      base)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        cluster.seeds()[0], str(pki.resolve()), f"@{data_dir.resolve()}/tokens/clinician.token"]
    printed = subprocess.run([str(ROOT / "scripts" / "cluster"), "env", "--data-dir",
                              str(data_dir)], capture_output=True, text=True, env=base,
                             timeout=60, check=True).stdout
    assert jwt not in printed  # a file reference, never the token
    # The README's commands, unchanged, after one eval: the token goes over TLS.
    ran = _eval_env(data_dir, f"{sys.executable} -m client.cli put p r --value v", base)
    assert ran.returncode == 0, ran.stderr
    assert bearers(cluster.calls()) == {f"Bearer {jwt}"}


def test_cluster_env_without_tls_exports_no_token(tmp_path: Path) -> None:
    data_dir = tmp_path / "plain"
    _fake_cluster_dir(data_dir, 7101, None, "eyJhbGciOiJFZERTQSJ9.e30.c2ln")
    base = _script_env(MEDKV_TLS_DIR="/stale", MEDKV_TOKEN="stale")
    done = _eval_env(data_dir, 'printf "[%s]" "$MEDKV_ADDR" "${MEDKV_TLS_DIR-unset}" '
                     '"${MEDKV_TOKEN-unset}"', base)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[127.0.0.1:7101][unset][unset]"
    assert "not exported: the cluster runs without TLS" in done.stderr
    # No cluster there: a clear error and exit 1, nothing on stdout to eval.
    none = subprocess.run([str(ROOT / "scripts" / "cluster"), "env", "--data-dir",
                           str(tmp_path / "nothing")], capture_output=True, text=True,
                          env=base, timeout=60, check=False)
    assert none.returncode == 1 and none.stdout == "" and "no cluster in" in none.stderr
