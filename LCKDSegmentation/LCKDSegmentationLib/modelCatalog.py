"""The model catalogue (Resources/Models.json): bundled and downloadable models, a per-user cache,
checksum-verified downloads (only after the user agreed), and local weight files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
CATALOG_FILE = RESOURCES / "Models.json"


@dataclass
class ModelEntry:
    name: str
    version: str
    title: str
    sha256: str
    licence: str
    trainingData: str
    inputs: str
    times: dict
    bundled: Optional[str] = None
    url: Optional[str] = None

    @property
    def fileName(self) -> str:
        return f"{self.name}-{self.version}.safetensors"


def loadCatalog(path: Path = CATALOG_FILE) -> List[ModelEntry]:
    document = json.loads(Path(path).read_text())
    return [ModelEntry(name=m["name"], version=m["version"], title=m["title"], sha256=m["sha256"],
                       licence=m["licence"], trainingData=m["training_data"], inputs=m["inputs"],
                       times=m.get("times", {}), bundled=m.get("bundled"), url=m.get("url"))
            for m in document["models"]]


def defaultCacheFolder() -> Path:
    """Per-user model cache (``$LCKD_MODEL_CACHE`` overrides)."""
    configured = os.environ.get("LCKD_MODEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "LCKDSegmentation" / "models"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def localPath(entry: ModelEntry, cacheFolder: Optional[Path] = None) -> Optional[Path]:
    """The model's file if it is bundled or already downloaded, else None."""
    if entry.bundled:
        path = RESOURCES / entry.bundled
        return path if path.is_file() else None
    path = (cacheFolder or defaultCacheFolder()) / entry.fileName
    return path if path.is_file() else None


def download(entry: ModelEntry, cacheFolder: Optional[Path] = None,
             onProgress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Download a catalogue model into the cache, verifying its SHA-256 before it is kept."""
    if not entry.url:
        raise ValueError(f"Model '{entry.name}' has no download address.")
    folder = cacheFolder or defaultCacheFolder()
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".download-", dir=folder)
    os.close(handle)
    try:
        with urllib.request.urlopen(entry.url) as response, open(temporary, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                if onProgress is not None:
                    onProgress(done, total)
        actual = sha256(Path(temporary))
        if actual != entry.sha256:
            raise ValueError(f"Download of '{entry.name}' is corrupt (SHA-256 {actual}, expected {entry.sha256}).")
        target = folder / entry.fileName
        os.replace(temporary, target)
        return target
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def deleteDownloaded(cacheFolder: Optional[Path] = None) -> int:
    """Remove every downloaded model; returns how many files were removed."""
    folder = cacheFolder or defaultCacheFolder()
    if not folder.is_dir():
        return 0
    count = len([p for p in folder.iterdir() if p.suffix == ".safetensors"])
    shutil.rmtree(folder)
    return count
