"""Run ``lckd segment --progress json`` in its own process; stream its events; cancel the whole tree."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence


class SegmenterProcess:
    """A running segmenter. ``poll()`` returns new events without blocking; ``wait()`` blocks."""

    def __init__(self, command: Sequence[str], env: Optional[Dict[str, str]] = None) -> None:
        options = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True  # its own process group: cancel reaches every child
        self.process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env, **options)
        self.events: queue.Queue[Dict] = queue.Queue()
        self.stderr: List[str] = []
        self.cancelled = False
        self.result: Optional[Dict] = None
        self.error: Optional[str] = None
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
            except json.JSONDecodeError:
                event = {"event": "log", "message": line}
            self.events.put(event)

    def _readStderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line.rstrip())

    def poll(self) -> List[Dict]:
        """Events received since the last call (stage, progress, done, error, log)."""
        received = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if event.get("event") == "done":
                self.result = event
            elif event.get("event") == "error":
                self.error = event.get("message")
            received.append(event)
        return received

    @property
    def finished(self) -> bool:
        return self.process.poll() is not None and all(not r.is_alive() for r in self._readers)

    def wait(self, onEvent: Optional[Callable[[Dict], None]] = None, interval: float = 0.05) -> Optional[Dict]:
        """Block until the process ends, passing events to ``onEvent``; returns the done event or None."""
        while True:
            for event in self.poll():
                if onEvent is not None:
                    onEvent(event)
            if self.finished:
                for event in self.poll():
                    if onEvent is not None:
                        onEvent(event)
                break
            time.sleep(interval)
        if self.process.returncode != 0 and not self.cancelled and self.error is None:
            self.error = (self.stderr[-1] if self.stderr else f"the segmenter exited with code "
                          f"{self.process.returncode}")
        return None if self.cancelled else self.result

    def cancel(self) -> None:
        """Kill the segmenter and everything it started."""
        self.cancelled = True
        if self.process.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
        else:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


def pythonExecutable() -> str:
    """Slicer's ``PythonSlicer`` when running inside Slicer, else this interpreter."""
    try:
        import slicer

        launcher = slicer.app.slicerHome if hasattr(slicer, "app") and slicer.app else None
    except (ImportError, AttributeError):
        launcher = None
    if launcher:
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        candidate = os.path.join(launcher, "bin", name)
        if os.path.isfile(candidate):
            return candidate
    return sys.executable
