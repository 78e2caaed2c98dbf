"""FHIR-like JSON helpers: deterministic bytes, resourceType checks, no data in errors."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.errors import InvalidArgument
from client.fhir import decode_resource, encode_resource

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
resources = st.dictionaries(st.text(max_size=10), json_values, max_size=6).map(
    lambda d: {**d, "resourceType": "Observation"}
)


@given(resources)
def test_round_trip_and_determinism(resource: dict[str, object]) -> None:
    data = encode_resource(resource)
    assert decode_resource(data) == json.loads(json.dumps(resource))
    reordered = dict(reversed(list(resource.items())))
    assert encode_resource(reordered) == data
    assert encode_resource(decode_resource(data)) == data


def test_encoding_is_compact_sorted_utf8() -> None:
    data = encode_resource({"resourceType": "Patient", "name": "Zoë", "active": True})
    assert data == '{"active":true,"name":"Zoë","resourceType":"Patient"}'.encode()


@pytest.mark.parametrize(
    "resource",
    [
        {},
        {"resourceType": ""},
        {"resourceType": "patient"},
        {"resourceType": 3},
        {"resourceType": "Patient Record"},
        ["resourceType", "Patient"],
    ],
)
def test_resource_type_is_required(resource: object) -> None:
    with pytest.raises(InvalidArgument):
        encode_resource(resource)  # type: ignore[arg-type]


def test_expected_type_is_enforced_both_ways() -> None:
    data = encode_resource({"resourceType": "Patient"}, resource_type="Patient")
    with pytest.raises(InvalidArgument, match="expected a Observation"):
        decode_resource(data, resource_type="Observation")
    with pytest.raises(InvalidArgument):
        encode_resource({"resourceType": "Patient"}, resource_type="Observation")


def test_unrepresentable_values_are_refused_without_echoing_them() -> None:
    secret = "patient-secret-9931"
    cases: list[dict[Any, Any]] = [
        {"resourceType": "Patient", "x": math.nan, "name": secret},
        {"resourceType": "Patient", 3: secret},
        {"resourceType": "Patient", "x": {secret}},
    ]
    for resource in cases:
        with pytest.raises(InvalidArgument) as raised:
            encode_resource(resource)
        assert secret not in str(raised.value)


def test_decoding_refuses_non_resources() -> None:
    for data in (b"\xff\xfe", b"not json", b"[1,2]", b'{"name":"x"}'):
        with pytest.raises(InvalidArgument) as raised:
            decode_resource(data)
        assert "name" not in str(raised.value) and "not json" not in str(raised.value)
