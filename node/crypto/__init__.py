"""Encryption at rest and key management for the medkv node.

Key hierarchy (each layer wraps the one below, so rotating a layer never
rewrites the data under it):

    master key (keyfile.py)         one per cluster, a 0600 file on every host
      |- wraps the node's data keys (keyring.py, DATA_DIR/keyring)
      |     |- seal every LevelDB value (envelope.py, EnvelopeCodec)
      |- wraps the node's index key (keyed hashing of storage keys; never rotated)

Modules:
    keyfile       the master key file: create (0600, atomic), load (refuses unsafe modes)
    keyring       envelope keyring: wrapped data keys, data and master rotation
    envelope      EnvelopeCodec, the consensus.storage.ValueCodec the node plugs in
    reencrypt     background re-encryption after a data key rotation

This package module holds only the exception hierarchy, so the submodules can
import it without import cycles. Every message names what failed (a path, a
key id, a length) and never carries key material, plaintext or a storage key.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error raised by node.crypto."""


class KeyFileError(CryptoError):
    """The master key file is missing, unsafe (mode), malformed or of the wrong size."""


class KeyringError(CryptoError):
    """The keyring file is missing, corrupt, or was wrapped by a master key we do not hold."""


class IntegrityError(CryptoError):
    """A sealed value failed to open: altered, truncated, moved to another key, or
    under a key we do not hold. The node answers gRPC DATA_LOSS naming the partition."""


class UnknownKeyError(IntegrityError):
    """A sealed value names a key id that the keyring (or key set) does not hold."""


__all__ = [
    "CryptoError",
    "IntegrityError",
    "KeyFileError",
    "KeyringError",
    "UnknownKeyError",
]
