"""The panel's model list without Qt: the catalogue's models and a model file the user loaded, which
entry is chosen, where its file is, what the panel says about it, and the download after consent."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .i18n import translator
from .modelCard import ModelSummary, modelText, readModelSummary
from .modelCatalog import (
    DownloadCancelledError,
    ModelEntry,
    defaultCacheFolder,
    defaultEntry,
    deleteDownloaded,
    download,
    loadCatalog,
    localPath,
)

_ = translator(__file__)
#: Item data of the model loaded from a file (catalogue items carry the model's name).
CUSTOM_MODEL = "file"
SETTINGS = "LCKDSegmentation/"


@dataclass
class ModelItem:
    title: str
    data: str
    toolTip: str


class ModelChoices:
    """The catalogue and the user's own model file as list items, the chosen one kept in ``settings``
    (an object with ``value(key, default)`` and ``setValue(key, value)``, such as ``qt.QSettings()``)."""

    def __init__(self, settings, loader: Callable[[], List[ModelEntry]] = loadCatalog) -> None:
        self.settings = settings
        self.reload(loader)

    def reload(self, loader: Callable[[], List[ModelEntry]] = loadCatalog) -> None:
        """Read the catalogue again (an unusable one is logged and leaves only the user's file)."""
        try:
            self.entries = list(loader())
        except (OSError, ValueError) as error:
            logging.error(f"LCKDSegmentation: model catalogue unusable: {error}")
            self.entries = []
        custom = str(self.settings.value(SETTINGS + "customModel", "") or "")
        self.customPath = Path(custom) if custom and Path(custom).is_file() else None

    def items(self) -> List[ModelItem]:
        items = [ModelItem(entry.title, entry.name, entry.describe()) for entry in self.entries]
        if self.customPath is not None:
            items.append(ModelItem(_("From file: {name}").format(name=self.customPath.name), CUSTOM_MODEL,
                                   str(self.customPath)))
        return items

    def currentIndex(self) -> int:
        """The item to select: the saved choice when it is still listed, else the default model."""
        data = [item.data for item in self.items()]
        saved = str(self.settings.value(SETTINGS + "model", "") or "")
        if saved in data:
            return data.index(saved)
        default = defaultEntry(self.entries)
        return data.index(default.name) if default is not None else (0 if data else -1)

    def select(self, data: Optional[str]) -> None:
        if data is not None:
            self.settings.setValue(SETTINGS + "model", data)

    def entry(self, data: Optional[str]) -> Optional[ModelEntry]:
        return next((entry for entry in self.entries if entry.name == data), None)

    def localPath(self, data: Optional[str]) -> Optional[Path]:
        """The chosen model's file when it is on this computer (bundled, downloaded or the user's)."""
        if data == CUSTOM_MODEL:
            return self.customPath
        entry = self.entry(data)
        return localPath(entry) if entry is not None else None

    def describe(self, data: Optional[str],
                 readSummary: Callable[[Path], ModelSummary] = readModelSummary) -> Tuple[Optional[ModelSummary], str]:
        """The chosen model's card (None until it is on this computer) and the panel's text about it."""
        path = self.localPath(data)
        if path is not None:
            try:
                summary = readSummary(path)
            except Exception as error:  # a damaged or foreign file: say so, keep the panel usable
                return None, _("This model file cannot be used: {error}").format(error=error)
            return summary, modelText(summary)
        entry = self.entry(data)
        if entry is not None:
            return None, (_("Not downloaded yet; it will be downloaded (after you agree) when you click Segment.")
                          + "\n" + entry.describe())
        return None, _("No model is available.")

    def obtain(self, data: Optional[str], dialogs, processEvents=lambda: None,
               cacheFolder: Optional[Path] = None) -> Optional[Path]:
        """The chosen model's file, downloading a catalogue model once the user agreed; None when declined,
        cancelled or failed (the failure shown). ``dialogs``: ``slicer.util`` (its message boxes)."""
        path = self.localPath(data)
        entry = self.entry(data)
        if path is not None or entry is None:
            if path is None:
                dialogs.errorDisplay(_("The chosen model file is missing. Load weights from a file or choose "
                                       "another model."))
            return path
        size = f" ({entry.sizeBytes / 1e6:.0f} MB)" if entry.sizeBytes else ""
        text = _("The model '{title}'{size} must be downloaded from\n{url}\n\nLicence: {licence}. Download it now?")
        if not dialogs.confirmOkCancelDisplay(text.format(title=entry.title, size=size, url=entry.url,
                                                          licence=entry.licence), windowTitle=_("Download model")):
            return None
        dialog = dialogs.createProgressDialog(labelText=_("Downloading {title}...").format(title=entry.title),
                                              maximum=100)

        def progress(done: int, total: int) -> None:
            dialog.setValue(int(100 * done / total) if total else 0)
            processEvents()

        try:
            return download(entry, cacheFolder, onProgress=progress, isCancelled=lambda: dialog.wasCanceled)
        except DownloadCancelledError:
            return None
        except Exception as error:
            logging.error(f"LCKDSegmentation: download of {entry.name} failed: {error}")
            dialogs.errorDisplay(_("The download failed: {error}").format(error=error))
            return None
        finally:
            dialog.close()

    def useFile(self, path: str, dialogs, readSummary: Callable[[Path], ModelSummary] = readModelSummary) -> bool:
        """Make a model file the user chose the current model, after checking that it is one (no file: no)."""
        if not path:
            return False
        try:
            readSummary(Path(path))
        except Exception as error:
            dialogs.errorDisplay(_("This file cannot be used as an LCKD model: {error}").format(error=error))
            return False
        self.settings.setValue(SETTINGS + "customModel", str(path))
        self.settings.setValue(SETTINGS + "model", CUSTOM_MODEL)
        self.reload()
        return True

    @staticmethod
    def folder() -> Path:
        """The per-user folder of downloaded models (made if needed, for "open models folder")."""
        folder = defaultCacheFolder()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def deleteDownloaded(self, dialogs, cacheFolder: Optional[Path] = None) -> Optional[int]:
        """After the user agreed, delete the downloaded models (bundled ones stay); how many, or None."""
        folder = cacheFolder or defaultCacheFolder()
        if not dialogs.confirmOkCancelDisplay(
                _("Delete the downloaded LCKD models in {folder}? Bundled models stay.").format(folder=folder)):
            return None
        return deleteDownloaded(folder)
