"""What the module panel does when it is used, without Qt: the widget forwards its signals here and
displays what comes back. ``dialogs`` is ``slicer.util`` in Slicer (its message boxes and progress
dialog), ``settings`` a ``qt.QSettings()``; tests pass stand-ins."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

from .i18n import translator
from .logic import LCKDSegmentationLogic, SegmentationOptions
from .modelChoices import SETTINGS, ModelChoices
from .panelState import PanelState, panelState
from .parameterGui import ParameterNodeGui
from .resultsView import ResultsView, resultsView, reviewText
from .segmentationRun import SegmentationRun
from .sequenceAssignment import SlotAssigner

_ = translator(__file__)
#: The device combo box's entries, in the order of the .ui file.
DEVICES = ("auto", "cuda", "cpu")


class PanelController:
    """``slots``: ``{sequence: parameter name}`` of the parameter node's volume slots."""

    def __init__(self, logic: LCKDSegmentationLogic, slots: Mapping[str, str], settings, dialogs,
                 log: Callable[[str], None], processEvents: Callable[[], None] = lambda: None, gui=None) -> None:
        self.logic, self.slots, self.settings, self.dialogs, self.log = logic, dict(slots), settings, dialogs, log
        self.processEvents = processEvents
        self.models = ModelChoices(settings)
        self.run = SegmentationRun(logic, log)
        self.assigner = SlotAssigner()
        self.gui = ParameterNodeGui(gui)  # the parameter node's connection to the widgets (``gui``: the ui)
        self.summary = None
        self.review = ""  # the latest run's review message

    # -- what the panel shows ----------------------------------------------------------------------

    def selected(self, parameters) -> Dict[str, object]:
        """``{sequence: volume node or None}`` from the parameter node (all None without one)."""
        return {sequence: getattr(parameters, name) if parameters else None for sequence, name in self.slots.items()}

    def state(self, parameters) -> PanelState:
        return panelState(self.selected(parameters), self.run.running, self.summary, self.review)

    def chooseModel(self, data: Optional[str]) -> str:
        """Remember the chosen model and read its card; returns the panel's text about it."""
        self.models.select(data)
        self.summary, text = self.models.describe(data, self.logic.modelSummary)
        return text

    def deviceIndex(self) -> int:
        device = str(self.settings.value(SETTINGS + "device", "auto"))
        return DEVICES.index(device) if device in DEVICES else 0

    def chooseDevice(self, index: int) -> None:
        self.settings.setValue(SETTINGS + "device", DEVICES[max(index, 0)])

    # -- what it does ------------------------------------------------------------------------------

    def assignSlots(self, parameters, loaded, onlyNew: bool = True) -> None:
        """Fill the parameter node's empty slots from ``loaded`` volumes by their names; filled slots stay as
        the user set them. Nothing changes while a job runs."""
        if parameters is None or self.run.running:
            return
        proposed = self.assigner.propose(self.selected(parameters), loaded, onlyNew=onlyNew)
        wasModified = parameters.StartModify()
        try:
            for sequence, node in proposed.items():
                setattr(parameters, self.slots[sequence], node)
        finally:
            parameters.EndModify(wasModified)

    def ensureDependencies(self, reinstall: bool = False, askConfirmation: bool = True) -> bool:
        """True when the packages are ready; a failure is shown and logged, never raised into the panel."""
        from .dependencies import ensureDependencies

        try:
            return ensureDependencies(askConfirmation=askConfirmation, reinstall=reinstall)
        except Exception as error:
            logging.error(f"LCKDSegmentation: installing Python packages failed: {error}")
            self.dialogs.errorDisplay(_("Installing Python packages failed: {error}").format(error=error))
            return False

    def startSegmentation(self, parameters, modelData: Optional[str], deviceIndex: int,
                          device: Optional[str] = None) -> bool:
        """Packages, model file (downloaded after consent), options, start; True when a job runs.

        ``parameters``: the parameter node (volume slots, brats2023Labels, postprocess, preprocess,
        skipMirroring, uncertaintyMap).
        """
        self.review = ""
        if not self.ensureDependencies():
            self.log(_("Python packages are missing; nothing was done."))
            return False
        modelPath = self.models.obtain(modelData, self.dialogs, self.processEvents)
        if modelPath is None:
            return False
        options = SegmentationOptions(
            modelPath=Path(modelPath), device=device or DEVICES[max(deviceIndex, 0)],
            labels="brats2023" if parameters.brats2023Labels else "brats2018",
            postprocess=bool(parameters.postprocess), preprocess=bool(parameters.preprocess),
            skipMirroring=bool(parameters.skipMirroring), uncertaintyMap=bool(parameters.uncertaintyMap))
        error = self.run.start(self.selected(parameters), options)
        if error:
            self.dialogs.errorDisplay(error)
        return error is None

    def finishSegmentation(self, scene):
        """Import the finished job and return its Outcome; a failure is shown, except a GPU out of memory
        (``outcome.offerCpu``: the panel asks with :meth:`askForCpu` and starts again on the CPU)."""
        outcome = self.run.finish(scene)
        if outcome.result is None and not outcome.offerCpu:
            self.dialogs.errorDisplay(outcome.error)
        self.review = "" if outcome.result is None else reviewText(outcome.result.review)
        if self.review:
            self.log(self.review)
        return outcome

    def keepResult(self, parameters, outcome) -> ResultsView:
        """Make a finished run's segmentation the panel's output; returns what the panel shows of it."""
        parameters.outputSegmentation = outcome.result.segmentationNode
        return resultsView(outcome.result, outcome.job.volumes[outcome.job.reference])

    def askForCpu(self) -> bool:
        """After a GPU ran out of memory: whether the user wants the run again on the CPU."""
        return bool(self.dialogs.confirmYesNoDisplay(
            _("The GPU ran out of memory. Run the segmentation on the CPU instead (slower)?")))

    def sceneClosed(self) -> None:
        """The scene's volumes and parameter nodes are gone: propose volumes afresh, connect afresh."""
        self.assigner.reset()
        self.gui.forget()

    def deleteModels(self) -> bool:
        count = self.models.deleteDownloaded(self.dialogs)
        if count is not None:
            self.log(_("{count} downloaded model file(s) deleted.").format(count=count))
        return count is not None

    def reinstall(self) -> None:
        if self.ensureDependencies(reinstall=True):
            self.log(_("Python packages reinstalled."))

    def showVersions(self) -> None:
        from .dependencies import versionsText

        self.dialogs.infoDisplay(versionsText(), windowTitle=_("LCKDSegmentation package versions"))

    def show3D(self, parameters, show: bool) -> None:
        """Show or hide the latest result's surfaces in 3-D views (built once)."""
        node = parameters.outputSegmentation if parameters else None
        if node is not None:
            self.logic.showIn3D(node, show)
