"""Progress reporting: a tqdm bar on a terminal, JSON lines for programs (the Slicer module).

JSON protocol, one object per line on stdout, flushed:
``{"event": "stage", "stage": ..., "message": ...}``,
``{"event": "progress", "fraction": f, "done": k, "total": n}``,
``{"event": "done", ...result...}`` or ``{"event": "error", "message": ...}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Optional, TextIO


class Reporter:
    """Silent reporter; subclasses show progress."""

    def stage(self, stage: str, message: str) -> None:
        """A new step begins."""

    def start_tiles(self, total: int) -> None:
        """The sliding window will visit ``total`` tiles."""

    def advance(self, n: int = 1) -> None:
        """``n`` more tiles are done."""

    def done(self, result: Dict[str, Any]) -> None:
        """The case is finished."""

    def error(self, message: str) -> None:
        """The case failed with a user-facing message."""


class JsonReporter(Reporter):
    """Machine-readable progress, one JSON object per line."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stdout
        self.total = 0
        self.finished = 0

    def _emit(self, payload: Dict[str, Any]) -> None:
        self.stream.write(json.dumps(payload) + "\n")
        self.stream.flush()

    def stage(self, stage: str, message: str) -> None:
        self._emit({"event": "stage", "stage": stage, "message": message})

    def start_tiles(self, total: int) -> None:
        self.total, self.finished = total, 0
        self._emit({"event": "progress", "fraction": 0.0, "done": 0, "total": total})

    def advance(self, n: int = 1) -> None:
        self.finished = min(self.finished + n, self.total)
        fraction = self.finished / self.total if self.total else 1.0
        self._emit({"event": "progress", "fraction": round(fraction, 4), "done": self.finished, "total": self.total})

    def done(self, result: Dict[str, Any]) -> None:
        self._emit(dict({"event": "done"}, **result))

    def error(self, message: str) -> None:
        self._emit({"event": "error", "message": message})


class BarReporter(Reporter):
    """A tqdm progress bar over the tiles, with the stage as its description (on stderr)."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: Optional[Any] = None
        self.current = ""

    def stage(self, stage: str, message: str) -> None:
        self.current = message
        if self.bar is not None:
            self.bar.set_description(message)

    def start_tiles(self, total: int) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=total, desc=self.current or "segmenting", unit="tile", file=self.stream, leave=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def done(self, result: Dict[str, Any]) -> None:
        self.close()

    def error(self, message: str) -> None:
        self.close()


def make_reporter(kind: str) -> Reporter:
    """``bar``, ``json`` or ``none``."""
    if kind == "json":
        return JsonReporter()
    if kind == "bar":
        return BarReporter()
    return Reporter()
