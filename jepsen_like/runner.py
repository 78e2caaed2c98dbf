"""One fault-injection run: cluster up, workload under nemeses, heal, final
reads, teardown, checks, report.

    run(RunConfig(workload="registers", nemesis="partition-random-halves",
                  time_s=20, seed=1, out=Path("out/run1")))  -> RunResult

Phases, in order, each bounded in time:

1. start a `ProxiedCluster` (proxies on every link, nodes through
   scripts/cluster) and let the workload set up its initial state;
2. `concurrency` workers run ops flat out while the nemesis schedule injects
   one fault window after another (quiet gap, fault, heal, ...);
3. at the deadline the workers finish their op, the current fault is
   healed, every node is resumed / restarted, every link cleared, and the
   run waits for every partition to have a leader;
4. every key the run touched is read once more (linearizably), so a lost
   acknowledged write shows in the history;
5. the cluster is torn down (always, on every exit path, Ctrl-C included);
6. the checkers run on the history; history.jsonl, summary.json and
   report.html are written; the verdict is "valid" only if every checker
   proved it ("unknown" is not valid).

Timing is real, so histories are not reproducible; everything random (the
schedule, the nemeses' choices, keys, values, the clients' replica choices)
derives from the seed, and the summary records both the seed and the
schedule that actually ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client import AsyncClient, RetryPolicy
from jepsen_like.cluster import ClusterSpec, ProxiedCluster
from jepsen_like.history import HistoryRecorder, Op, dump_history
from jepsen_like.nemesis import Nemesis, NemesisContext, make_nemeses
from jepsen_like.report import FaultWindow, overall_verdict, write_report
from jepsen_like.workloads import make_workload
from jepsen_like.workloads.common import RunContext, Workload, derive_rng

Echo = Callable[[str], None]


@dataclass
class RunConfig:
    workload: str
    out: Path
    nemesis: str = "none"
    time_s: float = 30.0
    nodes: int = 5
    concurrency: int = 5
    seed: int = 0
    partitions: int = 8
    replicas: int = 3
    keep: bool = False
    planted_bug: str | None = None
    quiet_s: tuple[float, float] = (2.0, 4.0)  # gap before each fault
    fault_s: tuple[float, float] = (3.0, 6.0)  # how long each fault holds
    op_timeout: float = 4.0  # one op, all its retries included
    attempt_timeout: float = 1.0  # one RPC attempt
    recovery_timeout: float = 60.0
    final_timeout: float = 60.0
    progress_every: float = 2.0


@dataclass
class RunResult:
    verdict: str
    exit_code: int
    out: Path
    summary: dict[str, Any] = field(default_factory=dict)


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e9, 3)


async def _wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if the stop event fired meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    except TimeoutError:
        return False
    return True


class Run:
    """The state of one run; `execute()` drives it."""

    def __init__(self, cfg: RunConfig, echo: Echo = print) -> None:
        self.cfg = cfg
        self.echo = echo
        self.out = cfg.out.resolve()
        self.recorder = HistoryRecorder()
        self.workload: Workload = make_workload(
            cfg.workload, cfg.seed, cfg.concurrency, planted_bug=cfg.planted_bug
        )
        self.nemeses: list[Nemesis] = make_nemeses(cfg.nemesis)
        self.spec = ClusterSpec(
            nodes=cfg.nodes,
            partitions=cfg.partitions,
            replicas=cfg.replicas,
            lossy_unsynced_writes=any(n.lossy_disk for n in self.nemeses),
            unsafe_skip_raft_fsync=any(n.skip_fsync for n in self.nemeses),
            spare_nodes=sum(n.spare_nodes for n in self.nemeses),
        )
        self.cluster = ProxiedCluster(self.out / "cluster", self.spec, seed=cfg.seed, log=self.say)
        self.ctx = RunContext(
            self.recorder, cfg.concurrency, cfg.seed, asyncio.Event(), op_timeout=cfg.op_timeout
        )
        self.policy = RetryPolicy(
            timeout=cfg.op_timeout, attempt_timeout=cfg.attempt_timeout, max_backoff=0.5
        )
        self.windows: list[FaultWindow] = []
        self.current_fault = "none"
        self.notes: list[str] = []
        self.partition_of: Callable[[str], int] | None = None
        self.recovery: dict[str, Any] = {"recovered": False, "status": "not reached"}
        self.final: dict[str, Any] = {"keys": 0, "read": 0, "missing": 0, "reached": False}
        self.interrupted = False
        self.tasks: list[asyncio.Task[Any]] = []
        self.started_at = time.monotonic()

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: stop the workers and end as interrupted."""
        self.interrupted = True
        self.ctx.stop.set()

    def say(self, message: str) -> None:
        self.echo(f"[{self.recorder.now_ns() / 1e9:7.1f}s] {message}")

    # -- phases ----------------------------------------------------------------

    async def execute(self) -> RunResult:
        self.out.mkdir(parents=True, exist_ok=True)
        admin: AsyncClient | None = None
        try:
            self.say(
                f"starting {self.cfg.nodes} nodes ({self.cfg.partitions} partitions, "
                f"{self.cfg.replicas} replicas) behind proxies"
                + (", lossy unsynced writes" if self.spec.lossy_unsynced_writes else "")
            )
            await self.cluster.start()
            self.ctx.credentials = self.cluster.credentials()
            admin = self.cluster.client(
                retry=RetryPolicy(timeout=10.0, attempt_timeout=2.0, max_backoff=0.5),
                rng=derive_rng(self.cfg.seed, "admin-client"),
            )
            self.partition_of = (await admin.routing_table()).partition_of
            self.say(f"cluster up; setting up the {self.workload.name} workload")
            await self.workload.setup(admin, self.ctx)
            await self._main_phase()
            await self._heal_and_recover()
            await self._final_reads(admin)
        except asyncio.CancelledError:
            self.interrupted = True
            self.notes.append("interrupted")
            self.say("interrupted: tearing down")
        except Exception as exc:
            self.notes.append(f"run aborted: {type(exc).__name__}: {exc}")
            self.say(f"run aborted: {exc}")
        finally:
            self.ctx.stop.set()
            for t in self.tasks:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*self.tasks, return_exceptions=True)
            if admin is not None:
                with contextlib.suppress(Exception):
                    await admin.close()
            await self._teardown()
        if self.interrupted and "interrupted" not in self.notes:
            self.notes.append("interrupted")
        result = self._finish()
        if self.interrupted:
            raise KeyboardInterrupt
        return result

    async def _main_phase(self) -> None:
        cfg = self.cfg
        self.say(
            f"running {cfg.concurrency} workers for {cfg.time_s:g}s; nemesis: "
            + (", ".join(n.name for n in self.nemeses) or "none")
        )
        workers = [asyncio.create_task(self._worker(slot)) for slot in range(cfg.concurrency)]
        nemesis = asyncio.create_task(self._nemesis_loop())
        progress = asyncio.create_task(self._progress_loop())
        self.tasks = [*workers, nemesis, progress]
        await _wait_or_stop(self.ctx.stop, cfg.time_s)
        self.ctx.stop.set()
        self.say("time is up: workers finish their current op, the nemesis heals")
        _, pending = await asyncio.wait(workers, timeout=cfg.op_timeout * 2 + 10.0)
        for t in pending:
            t.cancel()  # its op stays pending: it becomes info
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(nemesis), 240.0)
        if not nemesis.done():
            self.notes.append("the nemesis did not finish healing within 240s")
        progress.cancel()

    async def _worker(self, slot: int) -> None:
        client = self.cluster.client(
            retry=self.policy,
            rng=derive_rng(self.cfg.seed, f"client-{slot}"),
        )
        rng = derive_rng(self.cfg.seed, f"worker-{slot}")
        process = slot
        crashes = 0
        try:
            while not self.ctx.stop.is_set():
                try:
                    outcome = await self.workload.step(slot, process, client, rng, self.ctx)
                except Exception as exc:  # a workload bug: keep it visible, bounded
                    crashes += 1
                    self.notes.append(f"worker {slot}: {type(exc).__name__}: {exc}")
                    if crashes >= 5:
                        return
                    outcome = "info"
                    await asyncio.sleep(0.1)
                if outcome == "info":
                    # Its op may still apply: this process id is done (Jepsen's rule).
                    process += self.cfg.concurrency
        finally:
            await client.close()

    async def _nemesis_loop(self) -> None:
        if not self.nemeses:
            return
        assert self.partition_of is not None
        schedule_rng = derive_rng(self.cfg.seed, "schedule")
        nctx = NemesisContext(
            cluster=self.cluster,
            rng=derive_rng(self.cfg.seed, "nemesis"),
            log=self.say,
            records=lambda: [
                (k, r) for k in self.workload.used_keys() for r in self.workload.record_ids
            ],
            partition_of=self.partition_of,
            work_dir=self.out / "work",
            now_ns=self.recorder.now_ns,
            notes=self.notes,
        )
        stop = self.ctx.stop
        i = 0
        while True:
            if await _wait_or_stop(stop, schedule_rng.uniform(*self.cfg.quiet_s)):
                return
            nemesis = self.nemeses[i % len(self.nemeses)]
            hold = schedule_rng.uniform(*self.cfg.fault_s)
            i += 1
            start = self.recorder.now_ns()
            self.current_fault = nemesis.name
            try:
                detail = await nemesis.begin(nctx)
            except Exception as exc:
                detail = f"begin failed: {type(exc).__name__}: {exc}"
                self.notes.append(f"{nemesis.name}: {detail}")
            self.current_fault = f"{nemesis.name}: {detail}"
            self.say(f"fault begins: {self.current_fault}")
            await _wait_or_stop(stop, hold)
            try:
                detail += await nemesis.end(nctx)
            except Exception as exc:
                detail += f"; end failed: {type(exc).__name__}: {exc}"
                self.notes.append(f"{nemesis.name}: end failed: {exc}")
            self.windows.append(FaultWindow(nemesis.name, start, self.recorder.now_ns(), detail))
            self.current_fault = "none"
            self.say(f"fault healed: {nemesis.name}")

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.progress_every)
            c = self.ctx.counts
            self.say(
                f"ops ok={c['ok']} fail={c['fail']} info={c['info']} | fault: {self.current_fault}"
            )

    async def _heal_and_recover(self) -> None:
        self.say("healing: every link cleared, every node resumed or restarted")
        self.cluster.network.heal()
        states = self.cluster.process_states()
        for node, state in states.items():
            if state == "paused":
                await self.cluster.resume(node)
        stopped = [n for n, s in states.items() if s == "stopped"]
        if stopped:
            results = await asyncio.gather(
                *(self.cluster.restart(n) for n in stopped), return_exceptions=True
            )
            for node, res in zip(stopped, results, strict=True):
                if isinstance(res, BaseException):
                    self.notes.append(f"final restart of node {node} failed: {res}")
        ok, status = await self.cluster.wait_recovered(self.cfg.recovery_timeout)
        self.recovery = {"recovered": ok, "status": status}
        self.say(("recovered: " if ok else "NOT recovered: ") + status)

    async def _final_reads(self, client: AsyncClient) -> None:
        keys = self.workload.used_keys()
        self.say(f"final reads of {len(keys)} keys")
        deadline = time.monotonic() + self.cfg.final_timeout
        gate = asyncio.Semaphore(8)

        async def one(key: str) -> bool:
            async with gate:
                while True:
                    if await self.workload.final_read(key, client, self.ctx):
                        return True
                    if time.monotonic() >= deadline:
                        return False
                    await asyncio.sleep(0.3)

        results = await asyncio.gather(*(one(k) for k in keys))
        read = sum(results)
        missing = [k for k, ok in zip(keys, results, strict=True) if not ok]
        # Why the missing ones failed: status names of their failed final reads.
        errors = Counter(
            op.error or "none"
            for op in self.recorder.ops()
            if op.process == "final" and op.outcome == "fail" and op.key in set(missing)
        )
        self.final = {
            "keys": len(keys),
            "read": read,
            "missing": len(missing),
            "missing_keys": missing[:20],
            "errors_of_missing": dict(errors),
            "reached": True,
        }
        self.say(f"final reads: {read}/{len(keys)} keys read")

    async def _teardown(self) -> None:
        self.say("tearing the cluster down")
        try:
            killed = await asyncio.shield(self.cluster.stop())
        except Exception as exc:
            self.notes.append(f"teardown: {exc}")
            killed = []
        if killed:
            self.notes.append(f"teardown had to SIGKILL node processes {killed}")
        with contextlib.suppress(OSError):
            self.cluster.copy_logs(self.out / "logs")
        if not self.cfg.keep:
            shutil.rmtree(self.cluster.data_dir, ignore_errors=True)
            shutil.rmtree(self.out / "work", ignore_errors=True)

    # -- checking and reporting ---------------------------------------------------

    def _checkers(self, history: list[Op]) -> dict[str, dict[str, Any]]:
        checkers: dict[str, dict[str, Any]] = {}
        if self.interrupted:
            return {"run": {"checker": "run", "valid": False, "verdict": "unknown", "why": "interrupted"}}
        aborted = [n for n in self.notes if n.startswith("run aborted")]
        if aborted:
            checkers["run"] = {"checker": "run", "valid": False, "verdict": "unknown", "why": aborted}
        if self.partition_of is not None:
            self.workload.fault_windows = len(self.windows)
            try:
                checkers.update(self.workload.check(history, self.partition_of))
            except ValueError as exc:
                checkers["workload"] = {
                    "checker": self.workload.name,
                    "valid": False,
                    "verdict": "unknown",
                    "why": f"the checker could not read the history: {exc}",
                }
        if self.partition_of is not None:
            for nemesis in self.nemeses:
                res = nemesis.result(history, self.partition_of)
                if res is not None:
                    checkers[nemesis.name] = res
        reached = self.recovery["status"] != "not reached"
        checkers["recovery"] = {
            "checker": "recovery",
            "valid": bool(self.recovery["recovered"]),
            # Healed and given time, yet some partition has no leader: a
            # liveness bug. Never reached (the run aborted earlier): unknown.
            "verdict": "valid" if self.recovery["recovered"] else "invalid" if reached else "unknown",
            **self.recovery,
            "timeout_s": self.cfg.recovery_timeout,
        }
        complete = self.final["reached"] and self.final["missing"] == 0
        checkers["final_reads"] = {
            "checker": "final_reads",
            "valid": complete,
            # Without every final read, lost writes may have gone unseen.
            "verdict": "valid" if complete else "unknown",
            **self.final,
        }
        return checkers

    def _finish(self) -> RunResult:
        history = self.recorder.history()
        dump_history(self.out / "history.jsonl", history)
        checkers = self._checkers(history)
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for op in history:
            counts[op.kind][op.outcome or "pending"] += 1
        summary: dict[str, Any] = {
            "workload": self.workload.name,
            "workload_parameters": self.workload.parameters(),
            "nemeses": [n.name for n in self.nemeses],
            "seed": self.cfg.seed,
            "config": {
                k: v for k, v in asdict(self.cfg).items() if k not in ("out", "workload", "nemesis")
            },
            "cluster": {
                "nodes": self.cfg.nodes,
                "partitions": self.cfg.partitions,
                "replicas": self.cfg.replicas,
                "lossy_unsynced_writes": self.spec.lossy_unsynced_writes,
                "unsafe_skip_raft_fsync": self.spec.unsafe_skip_raft_fsync,
                "base_port": self.cluster.base_port,
            },
            "schedule": [
                {
                    "nemesis": w.nemesis,
                    "start_s": _seconds(w.start_ns),
                    "end_s": _seconds(w.end_ns),
                    "detail": w.detail,
                }
                for w in self.windows
            ],
            "counts": {kind: dict(c) for kind, c in sorted(counts.items())},
            "errors": dict(self.ctx.errors),
            "checkers": checkers,
            "notes": self.notes,
            "wall_time_s": round(time.monotonic() - self.started_at, 1),
        }
        verdict = overall_verdict(summary)
        if verdict != "valid":
            summary["node_logs_tail"] = {
                str(n): self._log_tail(n) for n in self.cluster.node_ids
            }
        write_report(self.out, history, summary, self.windows)
        summary["verdict"] = verdict
        self._print_verdict(verdict, checkers, len(history))
        return RunResult(verdict, 0 if verdict == "valid" else 1, self.out, summary)

    def _log_tail(self, node: int) -> list[str]:
        path = self.out / "logs" / f"node-{node}.log"
        try:
            return path.read_text(errors="replace").splitlines()[-25:]
        except OSError:
            return self.cluster.log_tail(node, 25)

    def _print_verdict(self, verdict: str, checkers: dict[str, dict[str, Any]], ops: int) -> None:
        parts = []
        for name, res in checkers.items():
            v = res.get("verdict") or ("valid" if res.get("valid") else "invalid")
            if v != "valid":
                parts.append(f"{name}: {v}")
        what = (
            f"{self.workload.name} / {','.join(n.name for n in self.nemeses) or 'none'} / "
            f"seed {self.cfg.seed} / {ops} ops"
        )
        if verdict == "valid":
            line = f"verdict: VALID ({what})"
        elif verdict == "unknown":
            line = f"verdict: UNKNOWN, not proven valid ({what}): " + "; ".join(parts)
        else:
            line = f"verdict: INVALID ({what}): " + "; ".join(parts)
        self.echo(line)
        self.echo(f"report: {self.out / 'report.html'}")


async def run(cfg: RunConfig, echo: Echo = print) -> RunResult:
    """Run once; raises KeyboardInterrupt after a clean teardown if interrupted."""
    return await Run(cfg, echo).execute()


__all__ = ["Run", "RunConfig", "RunResult", "run"]
