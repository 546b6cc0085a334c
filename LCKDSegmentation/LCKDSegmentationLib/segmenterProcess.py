"""Run ``lckd segment --progress json`` in its own process, stream its events, cancel the whole tree.

The segmenter prints one JSON object per line on stdout (``stage``, ``progress``, ``done``,
``error``); any other line becomes a ``log`` event. The process is started in a new session
(POSIX) or a new process group (Windows), so that cancelling kills it and every process it started.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

EventCallback = Callable[[Dict], None]
#: Share of the whole run reached when each stage starts; ``infer`` spans up to the next one.
STAGE_START = {"load": 0.05, "prepare": 0.1, "infer": 0.15, "finish": 0.95, "write": 0.97}


class SegmenterProcess:
    """A running segmenter. ``poll()`` returns new events without blocking; ``wait()`` blocks."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                 onEvent: Optional[EventCallback] = None) -> None:
        options: Dict[str, object] = {}
        if os.name == "nt":
            options["creationflags"] = (subprocess.CREATE_NEW_PROCESS_GROUP
                                        | getattr(subprocess, "CREATE_NO_WINDOW", 0))
        else:
            options["start_new_session"] = True  # its own process group: cancel reaches every child
        environment = dict(os.environ if env is None else env)
        environment.setdefault("PYTHONUNBUFFERED", "1")
        environment.setdefault("PYTHONIOENCODING", "utf-8")
        self.command = list(command)
        self.onEvent = onEvent
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=environment, cwd=cwd, text=True,
                                        encoding="utf-8", errors="replace", **options)
        self.events: queue.Queue[Dict] = queue.Queue()
        self.stderr: List[str] = []
        self.cancelled = False
        self.result: Optional[Dict] = None
        self.error: Optional[str] = None
        self.fraction = 0.0
        self.stage = ""
        self._readers = [threading.Thread(target=self._readStdout, daemon=True),
                         threading.Thread(target=self._readStderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _readStdout(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict) or "event" not in event:
                event = {"event": "log", "message": line}
            self.events.put(event)

    def _readStderr(self) -> None:
        for line in self.process.stderr:
            line = line.rstrip()
            if line:
                self.stderr.append(line)

    def poll(self) -> List[Dict]:
        """Events received since the last call (stage, progress, done, error, log), in order."""
        received = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            kind = event.get("event")
            if kind == "done":
                self.result = event
                self.fraction = 1.0
            elif kind == "error":
                self.error = str(event.get("message", "the segmenter failed"))
            elif kind == "progress":
                self.fraction = float(event.get("fraction", self.fraction))
            elif kind == "stage":
                self.stage = str(event.get("stage", ""))
            received.append(event)
            if self.onEvent is not None:
                self.onEvent(event)
        return received

    @property
    def overallFraction(self) -> float:
        """Progress of the whole run (0 to 1): process start-up, stages, and tiles within ``infer``."""
        if self.result is not None:
            return 1.0
        start = STAGE_START.get(self.stage, 0.0)
        if self.stage == "infer":
            return start + (STAGE_START["finish"] - start) * min(max(self.fraction, 0.0), 1.0)
        return start

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def finished(self) -> bool:
        """The process has exited and all of its output has been read."""
        return self.process.poll() is not None and all(not reader.is_alive() for reader in self._readers)

    def _concludeExit(self) -> None:
        self.poll()
        code = self.process.returncode
        if code != 0 and not self.cancelled and self.error is None:
            self.error = self.stderr[-1] if self.stderr else f"the segmenter exited with code {code}"
        if code != 0 and not self.cancelled:
            self.result = None

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> Optional[Dict]:
        """Block until the process ends (events go to ``onEvent``); returns the done event or None.

        Raises TimeoutError (after cancelling the process) when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            self.poll()
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the segmenter did not finish within {timeout} s")
            time.sleep(interval)
        for reader in self._readers:
            reader.join()
        self._concludeExit()
        return None if self.cancelled else self.result

    def cancel(self) -> None:
        """Kill the segmenter and every process it started; returns when they are gone."""
        self.cancelled = True
        if self.process.poll() is None:
            if os.name == "nt":
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True,
                               creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
            else:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        elif os.name != "nt":
            try:  # the leader is gone; children it left in its group are not
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5)


def pythonExecutable() -> str:
    """The interpreter that runs the segmenter: Slicer's ``PythonSlicer`` inside Slicer, else this one."""
    try:
        import slicer

        app = getattr(slicer, "app", None)
    except ImportError:
        app = None
    if app is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        candidate = os.path.join(app.slicerHome, "bin", name)
        if os.path.isfile(candidate):
            return candidate
    return sys.executable
