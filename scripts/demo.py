"""The medkv demo: a local 3-node cluster running a clinic workload, secured
as a real one is (mutual TLS, bearer tokens, an audit log of every access).

1. start a 3-node cluster (scripts/cluster up) in ./demo-data: its CA,
   certificates, token signing key and tokens land in the data directory
2. two clinics, north and south, register their synthetic patients (FHIR-like
   Patient resources) and Observations, each with its own clinician's token
3. a south clinician is refused a north patient; north's clinic admin shares
   one patient with south, and south can read that one (and only that one)
4. the same records read linearizably (leader) and as follower reads (any
   replica), side by side, with the staleness each replica states
5. kill -9 the node that leads the most partitions while the clinic keeps
   writing; show the status table with that node down
6. restart it, let it catch up, and check that every acknowledged write is
   there, read linearizably
7. an analyst scans every partition from the replicas (and may not write);
   an emergency doctor reads a patient by breaking the glass, with a reason
8. the auditor's report: who did what, refusals, the break-glass access, and
   every node's audit chain checked against the heads anchored in Raft
9. stop the cluster, leaving no process behind

Synthetic data only: every name and number here is generated.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client import Client, MedkvError, TlsConfig  # noqa: E402
from client.audit import render_audit_verify  # noqa: E402
from client.status_table import render_status  # noqa: E402
from node.auth.tokens import load_signing_key, mint  # noqa: E402

CLUSTER = ROOT / "scripts" / "cluster"
FIRST = ["Ada", "Bo", "Chen", "Dara", "Eli", "Femi", "Gul", "Hana", "Ivo", "Jun"]
LAST = ["Okafor", "Lindqvist", "Haddad", "Moreau", "Tanaka", "Silva", "Novak", "Reyes"]
VITALS = [
    ("8867-4", "Heart rate", "/min", 55, 110),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 95, 160),
    ("8310-5", "Body temperature", "Cel", 36, 39),
    ("59408-5", "Oxygen saturation", "%", 90, 100),
]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def cluster(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"scripts/cluster {args[0]} failed")
    return proc


def patient(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"demo-{i:04d}",
        "name": [{"given": [rng.choice(FIRST)], "family": rng.choice(LAST)}],
        "birthDate": f"{rng.randint(1940, 2015)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "gender": rng.choice(["female", "male", "other"]),
    }


def observation(rng: random.Random, pid: str, n: int) -> dict[str, Any]:
    code, name, unit, lo, hi = rng.choice(VITALS)
    return {
        "resourceType": "Observation",
        "id": f"{pid}-obs-{n}",
        "status": "final",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": name}]},
        "valueQuantity": {"value": round(rng.uniform(lo, hi), 1), "unit": unit},
    }


def progress(done: int, total: int, started: float) -> None:
    rate = done / max(1e-9, time.monotonic() - started)
    sys.stdout.write(f"\r   {done}/{total} writes ({rate:.0f}/s)")
    sys.stdout.flush()
    if done == total:
        sys.stdout.write("\n")


class Identities:
    """The cluster's certificates and the tokens `scripts/cluster up` left in its
    data directory: one client per person of the demo."""

    def __init__(self, data_dir: Path, addresses: list[str]) -> None:
        self.data_dir = data_dir
        self.addresses = addresses
        self.tls = TlsConfig.from_dir(data_dir / "certs")

    def client(self, name: str, **kw: Any) -> Client:
        return Client(self.addresses, tls=self.tls,
                      token=f"@{self.data_dir / 'tokens' / f'{name}.token'}", **kw)

    def emergency_doctor(self) -> Client:
        """A south clinician allowed to break the glass (minted for the demo with the
        cluster's signing key; a real cluster's identity provider issues it)."""
        key = load_signing_key(self.data_dir / "auth" / "token-signing.key")
        token = mint(key, subject="dr-er-south", roles=["clinician", "break-glass"],
                     clinics=["south"], ttl_seconds=3600)
        return Client(self.addresses, tls=self.tls, token=token,
                      break_glass_reason="unconscious patient in the emergency room")


class ClinicWriter(threading.Thread):
    """Keeps writing observations while a node is killed; counts what was acknowledged."""

    def __init__(self, who: Identities, patients: list[str], seed: int) -> None:
        super().__init__(daemon=True)
        self.kv = who.client("clinician")
        self.patients = patients
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.acked: dict[tuple[str, str], int] = {}
        self.failed = 0

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            pid = self.rng.choice(self.patients)
            rid = f"obs-live-{n}"
            n += 1
            try:
                self.acked[(pid, rid)] = self.kv.put_json(
                    pid, rid, observation(self.rng, pid, n), timeout=10
                )
            except MedkvError:
                self.failed += 1  # not acknowledged: the demo does not count it
        self.kv.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT / "demo-data"))
    ap.add_argument("--base-port", type=int, default=7300)
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--observations", type=int, default=4, help="per patient")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    args = ap.parse_args()
    data_dir = Path(args.data_dir)
    rng = random.Random(7)

    step("1. starting a secure 3-node cluster (16 partitions, 3 replicas each)")
    cluster("down", "--data-dir", str(data_dir), check=False)
    shutil.rmtree(data_dir, ignore_errors=True)
    up = cluster(
        "up", "--nodes", "3", "--data-dir", str(data_dir), "--base-port", str(args.base_port),
        "--partitions", "16", "--replicas", "3",
    )
    addresses = up.stdout.strip().split(",")
    print(f"   nodes: {', '.join(addresses)}   (data, logs and pids in {data_dir})")
    print(f"   mutual TLS with {data_dir / 'certs'}; tokens for admin, clinician (north), "
          "clinician-south, clinic-admin (north), analyst, auditor in "
          f"{data_dir / 'tokens'}")
    try:
        return run_workload(args, data_dir, addresses, rng)
    finally:
        if not args.keep:
            step("9. stopping the cluster")
            cluster("down", "--data-dir", str(data_dir), check=False)
            print("   all nodes stopped")


def refused(action: Any) -> str:
    """The refusal an action gets (it must be refused)."""
    try:
        action()
    except MedkvError as e:
        return str(e)
    raise SystemExit("demo: an access that must be refused was allowed")


def run_workload(
    args: argparse.Namespace, data_dir: Path, addresses: list[str], rng: random.Random
) -> int:
    who = Identities(data_dir, addresses)
    started_at = time.time()
    with who.client("clinician") as kv, who.client("clinician-south") as south:
        step(f"2. two clinics register {args.patients} patients with {args.observations} "
             "observations each")
        pids = [f"demo-{i:04d}" for i in range(args.patients)]
        south_pids = set(pids[1::4])  # every fourth patient is south's
        total = args.patients * (1 + args.observations)
        done = 0
        started = time.monotonic()
        acked: dict[tuple[str, str], int] = {}
        for i, pid in enumerate(pids):
            clinic = south if pid in south_pids else kv
            acked[(pid, "Patient")] = clinic.put_json(pid, "Patient", patient(rng, i))
            done += 1
            for n in range(args.observations):
                acked[(pid, f"obs-{n}")] = clinic.put_json(pid, f"obs-{n}",
                                                           observation(rng, pid, n))
                done += 1
            if done % 20 == 0 or done == total:
                progress(done, total, started)
        print(f"   north registered {len(pids) - len(south_pids)} patients, south "
              f"{len(south_pids)} (a clinician's first write registers a patient to their clinic)")

        step("3. each clinic sees only its own patients, unless one is shared")
        north_pid = pids[0]
        print(f"   south reads {north_pid} (north's): {refused(lambda: south.get(north_pid, 'Patient'))}")
        print(f"   north reads {pids[1]} (south's): {refused(lambda: kv.get(pids[1], 'Patient'))}")
        with who.client("clinic-admin") as registry:
            sharing = registry.share_patient(north_pid, "south")
        print(f"   north's clinic admin shares {north_pid} with south: clinics now "
              f"{', '.join(sharing.clinics)}")
        print(f"   south reads {north_pid} again: version {south.get(north_pid, 'Patient').version}")
        print(f"   south reads {pids[2]} (north's, not shared): "
              f"{refused(lambda: south.get(pids[2], 'Patient'))}")

        step("4. the same records read linearizably (leader) and from followers")
        print(f"   {'record':<22} {'mode':<13} {'node':>4} {'version':>7} {'applied':>7} "
              f"{'lag':>3} {'staleness':>9}")
        for pid in (pids[0], pids[2], pids[3]):
            for mode in ("linearizable", "follower", "follower"):
                rec = kv.get(pid, "Patient", consistency=mode)
                stale = f"{rec.staleness * 1000:.0f}ms" if rec.staleness >= 0 else "unknown"
                print(f"   {pid + '/Patient':<22} {mode:<13} {rec.served_by:>4} {rec.version:>7} "
                      f"{rec.applied_index:>7} {rec.lag:>3} {stale:>9}")
        print("   (follower reads are served by any replica and state how stale they may be)")

        with who.client("admin") as admin:
            status = admin.cluster_status()
        leaders = {n.node.node_id: n.leaders for n in status.nodes}
        victim = max(leaders, key=lambda n: leaders[n])
        north_pids = [p for p in pids if p not in south_pids]
        step(f"5. kill -9 node {victim} (it leads {leaders[victim]} partitions) while north writes")
        writer = ClinicWriter(who, north_pids, seed=11)
        writer.start()
        time.sleep(1.5)
        cluster("kill-node", str(victim), "--data-dir", str(data_dir))
        killed_at = time.monotonic()
        time.sleep(4.0)
        print(f"   writes acknowledged so far: {len(writer.acked)}; "
              f"failed after the client's retries: {writer.failed}")
        with who.client("admin") as admin:
            print(render_status(admin.cluster_status()))

        step(f"6. restarting node {victim}; it catches up from its peers")
        cluster("restart-node", str(victim), "--data-dir", str(data_dir))
        time.sleep(2.0)
        writer.stop.set()
        writer.join(timeout=30)
        acked.update(writer.acked)
        print(f"   the clinic kept writing through the failure: {len(writer.acked)} writes "
              f"acknowledged in {time.monotonic() - killed_at + 1.5:.1f}s")
        lost = 0
        for (pid, rid), version in acked.items():
            reader = south if pid in south_pids else kv
            rec = reader.get(pid, rid)
            if rec.version < version:
                lost += 1
        print(f"   every acknowledged write read back linearizably: {len(acked) - lost}/{len(acked)}")
        if lost:
            print(f"   LOST {lost} acknowledged writes", file=sys.stderr)
            return 1
        with who.client("admin") as admin:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                status = admin.cluster_status()
                lagging = [
                    p.partition for p in status.partition_info
                    for rs in p.replica_status if rs.node_id == victim and rs.lag_entries > 0
                ]
                if not lagging and all(n.up for n in status.nodes):
                    break
                time.sleep(0.5)
            print(render_status(admin.cluster_status()))

    step("7. analytics from the replicas; an emergency read by breaking the glass")
    with who.client("analyst") as analyst:
        count = 0
        worst = 0.0
        for page in analyst.scan_pages(consistency="follower"):
            count += len(page.records)
            worst = max(worst, page.staleness)
        print(f"   the analyst scanned {count} records from replicas; worst staleness stated: "
              f"{worst * 1000:.0f}ms")
        print(f"   the analyst tries to write: "
              f"{refused(lambda: analyst.put(pids[2], 'Patient', b'{}'))}")
        if count != len(acked):
            print(f"   expected {len(acked)} records", file=sys.stderr)
            return 1
    with who.emergency_doctor() as er:
        rec = er.get(pids[2], "Patient")
        print(f"   dr-er-south (south, break-glass) reads {pids[2]} (north's): version "
              f"{rec.version}, flagged in the audit log with the reason given")

    step("8. the auditor's report")
    with who.client("auditor") as auditor:
        time.sleep(0.5)  # the last calls' entries reach every node's log (group commit)
        result = auditor.audit_query(since=started_at, limit=10_000)
        by_subject: dict[str, dict[str, int]] = {}
        for e in result.entries:
            f = e.fields
            row = by_subject.setdefault(str(f.get("subject") or "(no token)"), {})
            row[str(f.get("outcome"))] = row.get(str(f.get("outcome")), 0) + 1
        print(f"   {len(result.entries)} accesses recorded by {3 - len(result.errors)} nodes "
              "since the demo started (patient ids appear only as keyed hashes):")
        print(f"   {'SUBJECT':<22} {'OK':>6} {'REFUSED':>8} {'OTHER':>6}")
        for subject, outcomes in sorted(by_subject.items()):
            ok = outcomes.get("OK", 0)
            refused_n = outcomes.get("PERMISSION_DENIED", 0) + outcomes.get("UNAUTHENTICATED", 0)
            print(f"   {subject:<22} {ok:>6} {refused_n:>8} {sum(outcomes.values()) - ok - refused_n:>6}")
        glass = auditor.audit_query(since=started_at, break_glass_only=True)
        for e in glass.entries[:3]:
            f = e.fields
            print(f"   BREAK-GLASS {f.get('subject')} {str(f.get('method')).rsplit('/', 1)[-1]} "
                  f"patient {str(f.get('patient'))[:12]}: \"{f.get('break_glass_reason')}\"")
        if not glass.entries:
            print("   the break-glass access is missing from the audit log", file=sys.stderr)
            return 1
        checks = auditor.audit_verify()
        print("   every node's hash chain, checked against the heads anchored in Raft:")
        print("   " + render_audit_verify(checks).replace("\n", "\n   "))
        if not all(c.ok for c in checks):
            return 1
        print(f"   the south clinician asks for the audit log: "
              f"{refused(lambda: south_audit(who))}")
    print("\ndemo finished: no acknowledged write lost, every access accounted for")
    return 0


def south_audit(who: Identities) -> None:
    with who.client("clinician-south") as c:
        c.audit_query(limit=1)


if __name__ == "__main__":
    sys.exit(main())
