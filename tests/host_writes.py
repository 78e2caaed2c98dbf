"""Writes through a MultiRaftHost for host-level tests: a write must be in a
registered session, and its entry carries the leader's log-clock stamp, so
tests propose through these two helpers instead of encoding by hand."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from node import commands as cmd
from node.host import MultiRaftHost
from node.state_machine import ApplyResult


async def open_session(
    host: MultiRaftHost, partition: int, client_id: bytes, nonce: int = 1, timeout: float = 10.0
) -> int:
    """Register a session of client_id on the partition's leader; its id."""
    probe = cmd.RegisterSession(ts_ms=0, client_id=client_id, nonce=nonce)
    res = await host.propose(
        partition, probe.wait_key,
        lambda stamp: cmd.encode_command(replace(probe, ts_ms=stamp)), timeout,
    )
    assert res.ok, res
    return res.version


async def propose_write(
    host: MultiRaftHost, partition: int, command: Any, timeout: float = 10.0
) -> ApplyResult:
    """Propose one write (its ts_ms replaced by the leader's stamp); its result."""
    return await host.propose(
        partition, command.wait_key,
        lambda stamp: cmd.encode_command(replace(command, ts_ms=stamp)), timeout,
    )
