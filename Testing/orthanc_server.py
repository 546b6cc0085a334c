"""A real Orthanc PACS with its DICOMweb plugin on localhost, for the tests and the round-trip benchmark.

:func:`running_orthanc` starts Debian's ``Orthanc`` (packages ``orthanc`` and ``orthanc-dicomweb``,
which ``.ci/run`` installs) on free localhost ports with a temporary configuration and storage,
waits until its REST API answers, and stops it afterwards. Instances are uploaded through the REST
API (``POST /instances``), as a user would with Orthanc Explorer, so the upload is not part of what
``lckd`` does.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 60.0


def missing() -> str:
    """Why Orthanc with DICOMweb cannot run here ('' when it can)."""
    if shutil.which(ORTHANC) is None:
        return "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb; .ci/run does it)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; Debian package orthanc-dicomweb)"
    return ""


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class OrthancServer:
    """A started Orthanc: its REST root and its DICOMweb root."""

    rest: str
    dicomweb: str
    log: Path

    def upload(self, files: Iterable[Path]) -> int:
        """POST every file to ``/instances``; returns how many Orthanc stored."""
        count = 0
        for path in files:
            request = urllib.request.Request(f"{self.rest}/instances", data=Path(path).read_bytes(), method="POST",
                                             headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(request, timeout=30) as response:
                count += json.loads(response.read()).get("Status") in ("Success", "AlreadyStored")
        return count

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.rest}{path}", timeout=30) as response:
            return json.loads(response.read())


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_orthanc(folder: Path, lua: Optional[str] = None) -> Iterator[OrthancServer]:
    """Start Orthanc with its storage and configuration in ``folder``; ``lua``: a Lua script to load
    (e.g. a ``ReceivedInstanceFilter`` that refuses instances). Stopped (and waited for) on exit."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    configuration = {
        "Name": "lckd-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "HttpServerEnabled": True, "DicomServerEnabled": False, "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1, "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
    }
    if lua is not None:
        (folder / "filter.lua").write_text(lua)
        configuration["LuaScripts"] = [str(folder / "filter.lua")]
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(configuration, indent=2))
    log = folder / "orthanc.log"
    rest = f"http://127.0.0.1:{http_port}"
    with open(log, "wb") as log_file:
        process = subprocess.Popen([ORTHANC, str(config_path)], stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"{rest}/system"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start (exit code {process.poll()}); its log: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield OrthancServer(rest=rest, dicomweb=f"{rest}/dicom-web", log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
