"""What reads return: records, the read state of the replica that served them,
and the pages of an analytics scan.

Every read result states where it came from and how fresh that replica was
(applied index, lag, staleness), so a caller of a follower or bounded read,
or of a scan, knows exactly how stale its answer may be.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto.medkv.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class ReadInfo:
    """The serving replica's state when it answered (proto ReadState)."""

    partition: int
    served_by: int
    applied_index: int
    commit_index: int
    lag: int
    staleness: float
    from_leader: bool

    @classmethod
    def from_proto(cls, state: common_pb2.ReadState) -> ReadInfo:
        return cls(
            partition=state.partition,
            served_by=state.node_id,
            applied_index=state.applied_index,
            commit_index=state.commit_index,
            lag=state.lag_entries,
            staleness=state.staleness_seconds,
            from_leader=state.from_leader,
        )


@dataclass(frozen=True, slots=True)
class Record:
    """One version of one record, with the read state of the replica that served it.

    `version` is the Raft index of the write that produced it; `deleted` marks
    a tombstone (its value is empty). `lag` is in log entries, `staleness` in
    seconds since the serving replica last heard from a live leader (0 on the
    leader; negative when the replica has never heard from one).
    """

    patient_id: str
    record_id: str
    value: bytes
    version: int
    deleted: bool = False
    partition: int = 0
    applied_index: int = 0
    lag: int = 0
    staleness: float = 0.0
    served_by: int = 0
    from_leader: bool = False

    @classmethod
    def from_proto(cls, record: common_pb2.Record, read: ReadInfo | None) -> Record:
        return cls(
            patient_id=record.patient_id,
            record_id=record.record_id,
            value=record.value,
            version=record.version,
            deleted=record.deleted,
            partition=read.partition if read else 0,
            applied_index=read.applied_index if read else 0,
            lag=read.lag if read else 0,
            staleness=read.staleness if read else 0.0,
            served_by=read.served_by if read else 0,
            from_leader=read.from_leader if read else False,
        )

    def __repr__(self) -> str:
        # Patient data stays out of reprs, so a logged Record leaks nothing.
        return (
            f"Record(version={self.version}, deleted={self.deleted}, "
            f"partition={self.partition}, served_by={self.served_by}, "
            f"value=<{len(self.value)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class ScanPage:
    """One streamed page of one partition's scan.

    `read_state` describes the snapshot the partition is read from (it changes
    only if the scan fails over to another replica); `done` is set on the last
    page of the partition.
    """

    partition: int
    records: tuple[Record, ...]
    read_state: ReadInfo
    done: bool

    @property
    def staleness(self) -> float:
        return self.read_state.staleness

    @property
    def served_by(self) -> int:
        return self.read_state.served_by

    def __repr__(self) -> str:
        return (
            f"ScanPage(partition={self.partition}, records={len(self.records)}, "
            f"served_by={self.served_by}, staleness={self.staleness:.3f}, done={self.done})"
        )


@dataclass(frozen=True, slots=True)
class Sharing:
    """A patient's clinics after share_patient, and the Raft index the change
    applied at (usable as a read's min_version on the patient's partition)."""

    clinics: tuple[str, ...]
    index: int

    def __repr__(self) -> str:
        # The patient is not named; its clinics are what the caller just set.
        return f"Sharing(clinics={list(self.clinics)}, index={self.index})"


__all__ = ["ReadInfo", "Record", "ScanPage", "Sharing"]
