"""Cluster settings: the values that change what apply does, replicated in the log.

Session TTL, history retention, the session limits: if two replicas of one
partition held different values they would decide the same entry differently
(one expires a session the other keeps; one drops a version the other
retains). So they are never read from a node's configuration at apply time.
They are state of the partition's state machine, changed only by a SetSettings
entry in that partition's Raft log, persisted with the applied state and
carried in snapshots: replicas fed the same log hold the same settings.

Where a value comes from:
  * a partition that never applied a SetSettings uses DEFAULTS (built in, the
    same on every node and every version that reads this log);
  * the cluster state (node.cluster.state) holds the cluster's settings and a
    generation: `medkv cluster init` puts the initiating node's [limits]
    there (generation 1), an operator changes them with `medkv settings set`
    (Admin.SetSettings: ONE system proposal, a new generation), and the
    system group's leader brings every generation into every partition's log
    as a SetSettings entry carrying it (node.cluster.settings_sync), so the
    replicas of a partition still switch at the same index of their log;
  * a cluster created before settings were cluster state: once, when a
    partition has a leader and no settings yet, that leader proposes `seed`
    SetSettings from its configuration (node.settings_service); the entry
    applies only while the partition still has none, so when several leaders
    race, the first in the log wins and the others change nothing. The
    first `medkv settings set` there makes them cluster state.
After `cluster init` (or the first seed), a node's [limits] configuration no
longer matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import msgpack

from node.limits import ValidationError

_FORMAT = 0x01


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    session_ttl_ms: int = 3_600_000
    history_retention: int = 16
    max_sessions: int = 10_000
    max_results_per_session: int = 64


DEFAULTS = ClusterSettings()

# Inclusive bounds of every setting: a value outside them is refused before it
# is proposed and again at apply (a bad entry must change nothing anywhere).
BOUNDS: dict[str, tuple[int, int]] = {
    "session_ttl_ms": (1_000, 30 * 24 * 3_600_000),
    "history_retention": (1, 1_000),
    "max_sessions": (1, 1_000_000),
    "max_results_per_session": (1, 4_096),
}
NAMES: tuple[str, ...] = tuple(f.name for f in fields(ClusterSettings))
assert set(NAMES) == set(BOUNDS)


class SettingsFormatError(ValueError):
    """A stored or snapshotted settings blob that does not decode."""


def validate_changes(changes: Mapping[str, object]) -> None:
    """Names known, values integers within BOUNDS. Raises ValidationError."""
    for name, value in changes.items():
        if name not in BOUNDS:
            raise ValidationError("settings", f"{name!r} is not a setting")
        lo, hi = BOUNDS[name]
        if type(value) is not int or not lo <= value <= hi:
            raise ValidationError(f"settings.{name}", f"must be an integer in {lo}..{hi}")


def apply_changes(current: ClusterSettings, changes: Mapping[str, int]) -> ClusterSettings:
    validate_changes(changes)
    return replace(current, **dict(changes))


@dataclass(frozen=True, slots=True)
class SettingsState:
    """The settings in force, the index of the SetSettings entry that set them
    (0: never) and the cluster settings generation that entry carried (0: none,
    the settings were seeded here or set per partition)."""

    settings: ClusterSettings = DEFAULTS
    generation: int = 0
    cluster_generation: int = 0


def encode_state(state: SettingsState) -> bytes:
    s = state.settings
    obj: list[Any] = [state.generation, {n: getattr(s, n) for n in NAMES}]
    if state.cluster_generation:  # absent: the blob reads as before
        obj.append(state.cluster_generation)
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return bytes([_FORMAT]) + body


def decode_state(blob: bytes) -> SettingsState:
    if not blob or blob[0] != _FORMAT:
        raise SettingsFormatError("settings have an unknown format")
    try:
        obj: Any = msgpack.unpackb(blob[1:], raw=False, use_list=True, strict_map_key=True)
    except Exception:
        raise SettingsFormatError("settings are not well-formed") from None
    if not (type(obj) is list and len(obj) in (2, 3) and type(obj[0]) is int and obj[0] >= 0):
        raise SettingsFormatError("settings have the wrong shape")
    cluster_generation = obj[2] if len(obj) == 3 else 0
    if type(cluster_generation) is not int or cluster_generation < 0:
        raise SettingsFormatError("settings have the wrong shape")
    if type(obj[1]) is not dict or set(obj[1]) != set(NAMES):
        raise SettingsFormatError("settings have the wrong fields")
    try:
        settings = apply_changes(DEFAULTS, obj[1])
    except ValidationError:
        raise SettingsFormatError("a setting is out of range") from None
    return SettingsState(settings, obj[0], cluster_generation)


def check_state_blob(blob: bytes) -> None:
    """For RecordStore.restore: reject a snapshot whose settings do not decode."""
    decode_state(blob)


def seed_from_limits(limits: Any) -> dict[str, int]:
    """The initial settings a leader proposes from its node's [limits] configuration."""
    return {
        "session_ttl_ms": int(limits.session_ttl_s * 1000),
        "history_retention": int(limits.history_retention),
        "max_sessions": int(limits.max_sessions),
        "max_results_per_session": int(limits.max_results_per_session),
    }


__all__ = [
    "BOUNDS",
    "DEFAULTS",
    "NAMES",
    "ClusterSettings",
    "SettingsFormatError",
    "SettingsState",
    "apply_changes",
    "check_state_blob",
    "decode_state",
    "encode_state",
    "seed_from_limits",
    "validate_changes",
]
