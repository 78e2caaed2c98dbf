"""No answer tells a caller where the node keeps its files (issue 11): errors
from key files and storage name their paths for the operator's log, and the one
place every error leaves the node replaces them by names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node import grpc_errors
from node.errors import FailedPrecondition
from node.grpc_errors import hide_paths, public_message, to_status


@pytest.fixture(autouse=True)
def paths() -> Iterator[None]:
    hide_paths({"/var/lib/medkv/node-1": "DATA_DIR", "/etc/medkv/master.key": "KEY_FILE",
                "/etc/medkv": "the key file's directory"})
    yield
    hide_paths({})


def test_the_node_paths_become_names() -> None:
    msg = ("master key file /etc/medkv/master.key.next cannot be opened; "
           "/var/lib/medkv/node-1/keyring is damaged; /etc/medkv is not writable")
    out = public_message(msg)
    assert "/etc/medkv" not in out and "/var/lib" not in out
    assert out == ("master key file KEY_FILE.next cannot be opened; DATA_DIR/keyring is "
                   "damaged; the key file's directory is not writable")


def test_every_status_a_node_answers_goes_through_it() -> None:
    status = to_status(FailedPrecondition("master key file /etc/medkv/master.key is missing"))
    assert status.message == "master key file KEY_FILE is missing"
    assert grpc_errors.public_message("no path here") == "no path here"
