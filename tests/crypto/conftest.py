"""Fixtures for node.crypto tests: real key files, keyrings and plyvel databases in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import plyvel
import pytest

from node.crypto.envelope import EnvelopeCodec
from node.crypto.keyfile import MasterKey, create_key_file
from node.crypto.keyring import Keyring, open_keyring


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    create_key_file(path)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def keyring(data_dir: Path, key_file: Path) -> Keyring:
    return open_keyring(data_dir, key_file, create=True)


@pytest.fixture
def codec(keyring: Keyring) -> EnvelopeCodec:
    return EnvelopeCodec(keyring)


@pytest.fixture
def db(data_dir: Path) -> Iterator[plyvel.DB]:
    handle = plyvel.DB(str(data_dir / "db"), create_if_missing=True)
    yield handle
    if not handle.closed:
        handle.close()


def fresh_keyring(tmp: Path, master: MasterKey) -> Keyring:
    """A keyring in its own new directory (for hypothesis tests' module fixtures)."""
    tmp.mkdir(parents=True, exist_ok=True)
    return Keyring.create(tmp, master)
