"""JSON convenience for FHIR-like resources stored as record values.

The encoding is deterministic (sorted keys, no insignificant whitespace,
UTF-8, no NaN/Infinity), so the same resource always becomes the same bytes:
equal resources compare equal on disk and in history, and a compare-and-set
loop that re-encodes an unchanged resource writes identical bytes.

Every resource must name its `resourceType` (e.g. "Patient", "Observation"),
as FHIR requires; callers may also insist on a particular type. Error
messages describe the shape of the problem, never the resource's content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from client.errors import InvalidArgument

# FHIR resource type names: an upper-case letter, then letters (e.g. "MedicationRequest").
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")


def _check_keys(value: Any, depth: int = 0) -> None:
    """Reject what JSON would silently change (non-string keys) or cannot hold."""
    if depth > 100:
        raise InvalidArgument("resource is nested too deeply")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument("resource keys must be strings")
            _check_keys(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(item, depth + 1)


def resource_type_of(resource: Mapping[str, Any], expected: str | None = None) -> str:
    """The resource's type, validated (and equal to `expected` when given)."""
    if not isinstance(resource, Mapping):
        raise InvalidArgument("a resource must be a JSON object")
    kind = resource.get("resourceType")
    if not isinstance(kind, str) or not _RESOURCE_TYPE.fullmatch(kind):
        raise InvalidArgument("a resource needs a resourceType such as 'Patient' or 'Observation'")
    if expected is not None and kind != expected:
        raise InvalidArgument(f"expected a {expected} resource, got a {kind} resource")
    return kind


def encode_resource(resource: Mapping[str, Any], *, resource_type: str | None = None) -> bytes:
    """The canonical bytes of a resource."""
    resource_type_of(resource, resource_type)
    _check_keys(resource)
    try:
        text = json.dumps(
            resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        # The exception text may quote a value; keep only its kind.
        raise InvalidArgument(f"resource is not JSON-serialisable ({type(exc).__name__})") from None
    return text.encode("utf-8")


def decode_resource(data: bytes, *, resource_type: str | None = None) -> dict[str, Any]:
    """A stored value back as a resource dict; InvalidArgument if it is not one."""
    try:
        resource = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidArgument("stored value is not a JSON resource") from None
    if not isinstance(resource, dict):
        raise InvalidArgument("stored value is not a JSON object")
    resource_type_of(resource, resource_type)
    return resource


__all__ = ["decode_resource", "encode_resource", "resource_type_of"]
