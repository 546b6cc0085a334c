"""The model catalogue (``Resources/Models.json``): bundled and downloadable models, a per-user cache,
checksum-verified downloads (started only after the user agreed), and weights from a local file.

Bundled models ship inside the extension and are used in place. A downloaded model is written to
a temporary file in the cache folder and renamed into place only when its SHA-256 matches the
catalogue; nothing else in the cache folder is ever touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .i18n import translator

_ = translator(__file__)
RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
CATALOG_FILE = RESOURCES / "Models.json"
CACHE_ENVIRONMENT_VARIABLE = "LCKD_MODEL_CACHE"
_REQUIRED = ("name", "version", "title", "sha256", "licence", "training_data", "inputs")


class DownloadCancelledError(Exception):
    """The user stopped a download; nothing was kept."""


@dataclass
class ModelEntry:
    name: str
    version: str
    title: str
    sha256: str
    licence: str
    trainingData: str
    inputs: str
    times: Dict[str, object] = field(default_factory=dict)
    bundled: Optional[str] = None
    url: Optional[str] = None
    sizeBytes: Optional[int] = None
    description: str = ""
    default: bool = False

    @property
    def fileName(self) -> str:
        return f"{self.name}-{self.version}.safetensors"

    def describe(self) -> str:
        """Licence, training data, inputs and measured times, for a tooltip or an info box."""
        lines = [self.title, _("Version {version}; licence {licence}.").format(version=self.version,
                                                                               licence=self.licence),
                 _("Training data: {data}.").format(data=self.trainingData),
                 _("Inputs: {inputs}.").format(inputs=self.inputs)]
        measured = [f"{device} {self.times[key]} s" for key, device in (("cpu_s", "CPU"), ("gpu_s", "GPU"))
                    if self.times.get(key) is not None]
        if measured:
            where = self.times.get("measured_on")
            lines.append(_("Measured time per case: {times}").format(times=", ".join(measured))
                         + (f" ({where})." if where else "."))
        lines.append(_("Shipped with the extension.") if self.bundled
                     else _("Downloaded from {url}.").format(url=self.url))
        return "\n".join(lines)


def loadCatalog(path: Path = CATALOG_FILE) -> List[ModelEntry]:
    """The catalogue's models, in order; ValueError when it is malformed.

    The default model is the one marked ``"default": true`` (at most one), else the first.
    """
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = []
    for index, values in enumerate(document.get("models", [])):
        missing = [key for key in _REQUIRED if not values.get(key)]
        if missing or not (values.get("bundled") or values.get("url")):
            raise ValueError(f"{path}: model {index} lacks {', '.join(missing) or 'a bundled path or a URL'}")
        if len(values["sha256"]) != 64:
            raise ValueError(f"{path}: model {values['name']!r} has no valid SHA-256")
        entries.append(ModelEntry(
            name=values["name"], version=values["version"], title=values["title"], sha256=values["sha256"].lower(),
            licence=values["licence"], trainingData=values["training_data"], inputs=values["inputs"],
            times=dict(values.get("times") or {}), bundled=values.get("bundled"), url=values.get("url"),
            sizeBytes=values.get("size_bytes"), description=values.get("description", ""),
            default=bool(values.get("default", False))))
    if not entries:
        raise ValueError(f"{path}: the catalogue lists no model")
    if sum(entry.default for entry in entries) > 1:
        raise ValueError(f"{path}: more than one model is marked as the default")
    return entries


def defaultEntry(entries: List[ModelEntry]) -> Optional[ModelEntry]:
    """The model marked as the default, else the first; None for an empty list."""
    return next((entry for entry in entries if entry.default), entries[0] if entries else None)


def entryByName(entries: List[ModelEntry], name: str) -> Optional[ModelEntry]:
    return next((entry for entry in entries if entry.name == name), None)


def defaultCacheFolder() -> Path:
    """The per-user model cache: ``$LCKD_MODEL_CACHE``, else the platform's user cache folder."""
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured)
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "LCKDSegmentation" / "models"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def localPath(entry: ModelEntry, cacheFolder: Optional[Path] = None, resources: Path = RESOURCES) -> Optional[Path]:
    """The model's file if it is bundled or already downloaded, else None (download needed)."""
    if entry.bundled:
        path = resources / entry.bundled
        return path if path.is_file() else None
    path = Path(cacheFolder or defaultCacheFolder()) / entry.fileName
    return path if path.is_file() else None


def download(entry: ModelEntry, cacheFolder: Optional[Path] = None,
             onProgress: Optional[Callable[[int, int], None]] = None,
             isCancelled: Optional[Callable[[], bool]] = None, timeout: float = 60.0) -> Path:
    """Download a catalogue model into the cache and keep it only when its SHA-256 matches.

    ``onProgress(done, total)`` (total is 0 when the server does not say); ``isCancelled()`` is
    checked between blocks and raises DownloadCancelledError. Call this only after the user agreed.
    """
    if not entry.url:
        raise ValueError(f"Model '{entry.name}' has no download address.")
    folder = Path(cacheFolder or defaultCacheFolder())
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    os.close(handle)
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(temporary, "wb") as out:
            total = int(response.headers.get("Content-Length") or entry.sizeBytes or 0)
            done = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                if isCancelled is not None and isCancelled():
                    raise DownloadCancelledError(f"Download of '{entry.name}' cancelled.")
                out.write(block)
                done += len(block)
                if onProgress is not None:
                    onProgress(done, total)
        actual = sha256(Path(temporary))
        if actual != entry.sha256:
            raise ValueError(f"The download of '{entry.name}' is damaged or not the catalogued file "
                             f"(SHA-256 {actual}, expected {entry.sha256}); it was not kept.")
        target = folder / entry.fileName
        os.replace(temporary, target)
        return target
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def downloadedFiles(cacheFolder: Optional[Path] = None) -> List[Path]:
    """Model files (and leftovers of interrupted downloads) in the cache folder."""
    folder = Path(cacheFolder or defaultCacheFolder())
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and (
        path.suffix == ".safetensors" or (path.name.startswith(".download-") and path.suffix == ".part")))


def deleteDownloaded(cacheFolder: Optional[Path] = None) -> int:
    """Remove the downloaded models (not bundled ones, not other files); returns how many models."""
    files = downloadedFiles(cacheFolder)
    for path in files:
        path.unlink()
    return sum(1 for path in files if path.suffix == ".safetensors")
