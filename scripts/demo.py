"""The medkv demo: a local 3-node cluster running a clinic workload.

1. start a 3-node cluster (scripts/cluster up) in ./demo-data: mutual TLS
   and bearer tokens, as every cluster; the clinic works as the `clinician`
   of clinic north, the status table is the `admin`'s and the scan the
   `analyst`'s (tokens in ./demo-data/tokens)
2. register synthetic patients (FHIR-like Patient resources) and their
   Observations, through the Python client
3. read the same records linearizably (leader) and as follower reads (any
   replica), side by side, with the staleness each replica states
4. kill -9 the node that leads the most partitions while the clinic keeps
   writing; show the status table with that node down
5. restart it, let it catch up, and check that every acknowledged write is
   there, read linearizably
6. an analytics scan over every partition from the replicas
7. stop the cluster, leaving no process behind

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

from client import Client, MedkvError  # noqa: E402
from client.status_table import render_status  # noqa: E402
from client.tls import TlsConfig  # noqa: E402

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


def client_as(data_dir: Path, addresses: list[str], name: str) -> Client:
    """A client with the cluster's client certificate and DIR/tokens/NAME.token."""
    return Client(addresses, tls=TlsConfig.from_dir(data_dir / "certs"),
                  token=f"@{data_dir / 'tokens' / f'{name}.token'}")


class ClinicWriter(threading.Thread):
    """Keeps writing observations while a node is killed; counts what was acknowledged."""

    def __init__(self, kv: Client, patients: list[str], seed: int) -> None:
        super().__init__(daemon=True)
        self.kv = kv
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
    data_dir = Path(args.data_dir).resolve()
    rng = random.Random(7)

    step("1. starting a 3-node cluster (16 partitions, 3 replicas each)")
    cluster("down", "--data-dir", str(data_dir), check=False)
    shutil.rmtree(data_dir, ignore_errors=True)
    up = cluster(
        "up", "--nodes", "3", "--data-dir", str(data_dir), "--base-port", str(args.base_port),
        "--partitions", "16", "--replicas", "3",
    )
    addresses = up.stdout.strip().split(",")
    print(f"   nodes: {', '.join(addresses)}   (data, logs and pids in {data_dir})")
    print(f"   mutual TLS ({data_dir / 'certs'}) and a bearer token on every call "
          f"({data_dir / 'tokens'}: clinician, admin, analyst, ...)")
    try:
        return run_workload(args, data_dir, addresses, rng)
    finally:
        if not args.keep:
            step("7. stopping the cluster")
            cluster("down", "--data-dir", str(data_dir), check=False)
            print("   all nodes stopped")


def run_workload(
    args: argparse.Namespace, data_dir: Path, addresses: list[str], rng: random.Random
) -> int:
    with client_as(data_dir, addresses, "clinician") as kv, \
            client_as(data_dir, addresses, "admin") as admin, \
            client_as(data_dir, addresses, "analyst") as analyst:
        step(f"2. registering {args.patients} patients with {args.observations} observations each")
        pids = [f"demo-{i:04d}" for i in range(args.patients)]
        total = args.patients * (1 + args.observations)
        done = 0
        started = time.monotonic()
        acked: dict[tuple[str, str], int] = {}
        for i, pid in enumerate(pids):
            acked[(pid, "Patient")] = kv.put_json(pid, "Patient", patient(rng, i))
            done += 1
            for n in range(args.observations):
                acked[(pid, f"obs-{n}")] = kv.put_json(pid, f"obs-{n}", observation(rng, pid, n))
                done += 1
            if done % 20 == 0 or done == total:
                progress(done, total, started)

        step("3. the same records read linearizably (leader) and from followers")
        print(f"   {'record':<22} {'mode':<13} {'node':>4} {'version':>7} {'applied':>7} "
              f"{'lag':>3} {'staleness':>9}")
        for pid in pids[:3]:
            for mode in ("linearizable", "follower", "follower"):
                rec = kv.get(pid, "Patient", consistency=mode)
                stale = f"{rec.staleness * 1000:.0f}ms" if rec.staleness >= 0 else "unknown"
                print(f"   {pid + '/Patient':<22} {mode:<13} {rec.served_by:>4} {rec.version:>7} "
                      f"{rec.applied_index:>7} {rec.lag:>3} {stale:>9}")
        print("   (follower reads are served by any replica and state how stale they may be)")

        status = admin.cluster_status()
        leaders = {n.node.node_id: n.leaders for n in status.nodes}
        victim = max(leaders, key=lambda n: leaders[n])
        step(f"4. kill -9 node {victim} (it leads {leaders[victim]} partitions) while the clinic writes")
        writer = ClinicWriter(client_as(data_dir, addresses, "clinician"), pids, seed=11)
        writer.start()
        time.sleep(1.5)
        cluster("kill-node", str(victim), "--data-dir", str(data_dir))
        killed_at = time.monotonic()
        time.sleep(4.0)
        print(f"   writes acknowledged so far: {len(writer.acked)}; "
              f"failed after the client's retries: {writer.failed}")
        print(render_status(admin.cluster_status()))

        step(f"5. restarting node {victim}; it catches up from its peers")
        cluster("restart-node", str(victim), "--data-dir", str(data_dir))
        time.sleep(2.0)
        writer.stop.set()
        writer.join(timeout=30)
        acked.update(writer.acked)
        print(f"   clinic kept writing through the failure: {len(writer.acked)} writes acknowledged "
              f"in {time.monotonic() - killed_at + 1.5:.1f}s")
        lost = 0
        for (pid, rid), version in acked.items():
            rec = kv.get(pid, rid)
            if rec.version < version:
                lost += 1
        print(f"   every acknowledged write read back linearizably: {len(acked) - lost}/{len(acked)}")
        if lost:
            print(f"   LOST {lost} acknowledged writes", file=sys.stderr)
            return 1
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

        step("6. analytics: a follower scan of every partition, as the analyst")
        count = 0
        worst = 0.0
        for page in analyst.scan_pages(consistency="follower"):
            count += len(page.records)
            worst = max(worst, page.staleness)
        print(f"   scanned {count} records from replicas; worst staleness stated: {worst * 1000:.0f}ms")
        if count != len(acked):
            print(f"   expected {len(acked)} records", file=sys.stderr)
            return 1
    print("\ndemo finished: no acknowledged write lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
