"""Fail-stop on storage failure: a node whose disk fails exits at once.

A failed synced write (ENOSPC, EIO, a read-only remount) leaves LevelDB in a
background-error state: every later write fails too, so groups would wedge
while the node went on answering RPCs and holding leaderships it can no
longer serve. Carrying on would also be unsafe: a write that failed after
part of it reached the disk must not be followed by acknowledgements built on
top of it. So the node stops hard (os._exit, no graceful drain: draining
writes more), exits non-zero naming the cause, and its peers elect new leaders
for its partitions. Nothing acknowledged is lost: every acknowledgement left
this node only after its synced write returned, and the state machines replay
from the durable log at the next start.

Integrity failures (a value that fails to decrypt, plyvel.CorruptionError)
are NOT storage failures: they are per partition (DATA_LOSS for that
partition only) and handled by the host's mark_broken.

Tests install another handler with `set_handler` to observe the decision
without losing the test process.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

import plyvel

log = logging.getLogger("medkv.failstop")

# sysexits.h EX_IOERR: "an error occurred while doing I/O on some file".
EXIT_STORAGE_FAILURE = 74


class StorageFailure(Exception):
    """Raised by a test handler in place of exiting; never by production code."""


def is_storage_failure(exc: BaseException) -> bool:
    """True for an error of the disk or filesystem, False for corrupt data."""
    if isinstance(exc, plyvel.CorruptionError):
        return False
    if isinstance(exc, plyvel.IOError):
        return True
    return isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS


_DISK_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def describe(exc: BaseException) -> str:
    """The cause in words: the OS's message, never data."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {os.strerror(exc.errno)}"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _exit_now(exc: BaseException) -> NoReturn:
    log.critical(
        "storage failed (%s); this node stops now (fail-stop) so that it never serves "
        "from a disk it cannot write; fix the disk and restart it: nothing acknowledged "
        "is lost", describe(exc),
    )
    for h in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # exiting anyway
            h.flush()
    sys.stderr.flush()
    os._exit(EXIT_STORAGE_FAILURE)


_handler: Callable[[BaseException], NoReturn] = _exit_now


def set_handler(handler: Callable[[BaseException], NoReturn] | None) -> None:
    """Replace what fail_stop does (tests); None restores the exit."""
    global _handler
    _handler = handler if handler is not None else _exit_now


def fail_stop(exc: BaseException) -> NoReturn:
    _handler(exc)


def check(exc: BaseException) -> None:
    """Stop the node if exc is a storage failure; return otherwise."""
    if is_storage_failure(exc):
        fail_stop(exc)
