"""Progress output for long reconcile and backfill runs, on stderr so stdout stays
machine-readable (``--json``, ``--csv``). On a terminal a bar redraws in place; otherwise
one line per update, at most one every ``min_interval`` seconds (plus the last)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, stream: TextIO | None = None, *, enabled: bool = True, min_interval: float = 1.0, width: int = 30
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = 0.0 if self.tty else min_interval
        self.width = width
        self._last = 0.0

    def message(self, text: str) -> None:
        if self.enabled:
            self._write(text, newline=True)

    def bar(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        fraction = min(1.0, done / total) if total else 1.0
        filled = int(fraction * self.width)
        text = f"{label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} ({fraction:.0%})"
        self._write(text, newline=not self.tty or final)

    def _write(self, text: str, *, newline: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
