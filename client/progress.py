"""One progress line for long `medkv` commands (scan, keys rotate-data --wait).

Why: a line per partition (or per poll) buries what matters in a terminal and
floods a CI log. On a terminal the line is a tqdm bar on stderr, rewritten in
place; on anything else (a pipe, a file, a CI log, where carriage returns
make a mess) it is a plain line at most every `interval` seconds, and a last
one when the work ends, so a log still shows that the command was alive and
how far it got. stdout is never touched: it carries the command's data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO


class ProgressLine:
    def __init__(
        self,
        stream: TextIO,
        total: int,
        desc: str,
        unit: str,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream, self.total, self.desc, self.unit = stream, total, desc, unit
        self.interval, self.clock = interval, clock
        self.done = 0
        self.note = ""
        self._last_plain: float | None = None
        self._closed = False
        self._bar: Any = None
        isatty = getattr(stream, "isatty", None)
        if isatty is not None and isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=stream,
                             leave=True, dynamic_ncols=True)

    @property
    def tty(self) -> bool:
        return self._bar is not None

    def set(self, done: int, note: str = "") -> None:
        """Progress so far (absolute) and a short note (no patient data)."""
        self.done, self.note = min(done, self.total), note
        if self._bar is not None:
            self._bar.n = self.done
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
            return
        now = self.clock()
        if self._last_plain is None or now - self._last_plain >= self.interval:
            self._last_plain = now
            self._plain()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.set(self.done + n, note)

    def close(self) -> None:
        """The last state, once (plain: always a line, even if one was just written)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.n = self.done
            self._bar.set_postfix_str(self.note, refresh=False)
            self._bar.close()
        else:
            self._plain()

    def _plain(self) -> None:
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}"
        if self.note:
            text += f", {self.note}"
        self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
