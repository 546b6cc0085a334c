"""LCKDSegmentation: brain-tumour segmentation from any subset of FLAIR, T1, T1ce and T2.

The four classes Slicer discovers (module, widget, logic, test). They are thin: the work is done by
``LCKDSegmentationLib`` (no Qt, tested outside Slicer) and by the ``lckd segment`` command, which
runs in its own ``PythonSlicer`` process so that the application stays responsive. Nothing heavy
is imported here: torch never enters the application's process.
"""

import logging
from pathlib import Path
from typing import Optional

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer without i18n support

    def _(text):
        return text

    def translate(context, text):
        return text


#: (sequence, selector widget, parameter name), in channel order.
SLOTS = (("flair", "flairSelector", "flairVolume"), ("t1", "t1Selector", "t1Volume"),
         ("t1ce", "t1ceSelector", "t1ceVolume"), ("t2", "t2Selector", "t2Volume"))
#: Device combo box entries, in the order of the .ui file.
DEVICES = ("auto", "cuda", "cpu")
SETTINGS = "LCKDSegmentation/"
DOCUMENTATION = "https://github.com/lckd-segmentation/LCKDSegmentation/blob/main/Resources/Docs/SlicerModule.md"
CUSTOM_MODEL = "file"


def resourcesFolder() -> Path:
    return Path(__file__).resolve().parent / "Resources"


class LCKDSegmentation(ScriptedLoadableModule):
    """The module's description; registers sample data and terminology once Slicer has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LCKD Brain Tumour Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LCKDSegmentation developers"]
        self.parent.helpText = _(
            "Segments a brain tumour (necrosis, oedema, enhancing tumour) from whichever MRI sequences are "
            "loaded: any subset of FLAIR, T1, T1ce and T2. Before you run it, the module shows the accuracy the "
            "model reached on its validation cases with exactly the sequences you have. "
            "<b>Not for clinical use.</b>")
        link = _('See the <a href="{url}">module documentation</a>.').format(url=DOCUMENTATION)
        self.parent.helpText += f"<p>{link}</p>"
        self.parent.acknowledgementText = _(
            "Implements learnable cross-modal knowledge distillation (LCKD, Wang et al., MICCAI 2023) and "
            "meta-learned modality-weighted knowledge distillation (MetaKD, Wang et al., arXiv:2405.07155). "
            "The bundled demonstration model was trained on synthetic phantoms only.")
        slicer.app.connect("startupCompleted()", registerStartupItems)


def registerStartupItems():
    """Terminology and sample data; light (no torch, no file reading beyond JSON)."""
    try:
        terminologyLogic = slicer.modules.terminologies.logic()
        terminologyLogic.LoadTerminologyFromFile(str(resourcesFolder() / "LCKDSegmentation.term.json"))
    except AttributeError:
        logging.warning("LCKDSegmentation: the Terminologies module is not available; segments keep their codes")
    try:
        import SampleData

        from LCKDSegmentationLib.sampleData import registerSampleData

        registerSampleData(SampleData)
    except ImportError:
        logging.warning("LCKDSegmentation: the Sample Data module is not available")


@parameterNodeWrapper
class LCKDSegmentationParameterNode:
    """The inputs, the options that belong to the scene, and the latest result."""

    flairVolume: Optional[slicer.vtkMRMLScalarVolumeNode]
    t1Volume: Optional[slicer.vtkMRMLScalarVolumeNode]
    t1ceVolume: Optional[slicer.vtkMRMLScalarVolumeNode]
    t2Volume: Optional[slicer.vtkMRMLScalarVolumeNode]
    outputSegmentation: Optional[slicer.vtkMRMLSegmentationNode]
    brats2023Labels: bool = False
    postprocess: bool = False


class LCKDSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: slots, expected accuracy, model and device, Segment/Cancel, progress, results."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._updating = False
        self.catalog = []
        self._summary = None
        self._offered = set()  # volumes auto-assignment has already considered (user choices are kept)
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.pollJob)

    # -- set-up ------------------------------------------------------------------------------------

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LCKDSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LCKDSegmentationLogic()

        self.ui.volumesTable.setColumnCount(2)
        self.ui.volumesTable.setHorizontalHeaderLabels([_("Region"), _("Volume (mL)")])
        self.ui.volumesTable.horizontalHeader().setStretchLastSection(True)
        self.ui.volumesTable.verticalHeader().setVisible(False)
        self.ui.volumesTable.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.populateModels()
        device = str(qt.QSettings().value(SETTINGS + "device", "auto"))
        self.ui.deviceComboBox.setCurrentIndex(DEVICES.index(device) if device in DEVICES else 0)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.autoAssignButton.connect("clicked(bool)", lambda checked: self.autoAssign(onlyNew=False))
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.loadWeightsButton.connect("clicked(bool)", self.onLoadWeights)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.deleteModelsButton.connect("clicked(bool)", self.onDeleteModels)
        self.ui.reinstallButton.connect("clicked(bool)", self.onReinstall)
        self.ui.versionsButton.connect("clicked(bool)", self.onShowVersions)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.initializeParameterNode()
        self.onModelChanged()

    def cleanup(self):
        self.removeObservers()
        self._timer.stop()
        if self._job is not None:
            self.logic.cancel(self._job)
            self._job = None

    def enter(self):
        self.initializeParameterNode()
        self.autoAssign()

    def exit(self):
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)

    def onSceneStartClose(self, caller, event):
        if self._job is not None:
            self.onCancel()
        self._offered.clear()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"):
            qt.QTimer.singleShot(0, self.autoAssign)  # after the loader has named it

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self.updateGui()

    # -- inputs ------------------------------------------------------------------------------------

    def selectedVolumes(self):
        if not self._parameterNode:
            return {sequence: None for sequence, _selector, _name in SLOTS}
        return {sequence: getattr(self._parameterNode, name) for sequence, _selector, name in SLOTS}

    def autoAssign(self, onlyNew=True):
        """Fill the empty slots from the loaded volumes' names; filled slots are left as the user set them.

        With ``onlyNew`` (on loading and on entering the module), a volume is proposed only once, so a slot
        the user emptied on purpose stays empty; the button proposes every loaded volume again.
        """
        if not self._parameterNode or self._job is not None:
            return
        from LCKDSegmentationLib.sequenceAssignment import autoAssign

        selected = self.selectedVolumes()
        used = {node.GetID() for node in selected.values() if node is not None}
        candidates = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                      if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetID() not in used
                      and not (onlyNew and node.GetID() in self._offered)]
        self._offered.update(node.GetID() for node in candidates)
        taken = [sequence for sequence, node in selected.items() if node is not None]
        assignment = autoAssign([node.GetName() for node in candidates], taken=taken)
        byName = {}
        for node in candidates:
            byName.setdefault(node.GetName(), node)
        with slicer.util.NodeModify(self._parameterNode):
            for sequence, _selector, name in SLOTS:
                if sequence in assignment:
                    setattr(self._parameterNode, name, byName[assignment[sequence]])

    def updateGui(self, caller=None, event=None):
        if self._updating or not hasattr(self, "ui"):
            return
        self._updating = True
        try:
            from LCKDSegmentationLib.sequenceAssignment import assignmentProblems

            running = self._job is not None
            problems = assignmentProblems(self.selectedVolumes())
            self.ui.problemLabel.text = " ".join(problems) if any(
                node is not None for node in self.selectedVolumes().values()) else ""
            self.ui.segmentButton.enabled = running or not problems
            self.ui.segmentButton.text = _("Cancel") if running else _("Segment")
            self.ui.segmentButton.toolTip = (_("Stop the segmentation; the scene is left as it was") if running
                                             else " ".join(problems) or _("Segment the tumour"))
            for _sequence, selector, _name in SLOTS:
                getattr(self.ui, selector).enabled = not running
            for widget in (self.ui.modelComboBox, self.ui.deviceComboBox, self.ui.autoAssignButton,
                           self.ui.loadWeightsButton, self.ui.deleteModelsButton, self.ui.reinstallButton):
                widget.enabled = not running
            self.updateExpectation()
        finally:
            self._updating = False

    # -- model -------------------------------------------------------------------------------------

    def populateModels(self):
        from LCKDSegmentationLib.modelCatalog import loadCatalog

        try:
            self.catalog = loadCatalog()
        except (OSError, ValueError) as error:
            logging.error(f"LCKDSegmentation: model catalogue unusable: {error}")
            self.catalog = []
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for entry in self.catalog:
            combo.addItem(entry.title, entry.name)
            combo.setItemData(combo.count - 1, entry.describe(), qt.Qt.ToolTipRole)
        custom = str(qt.QSettings().value(SETTINGS + "customModel", "") or "")
        if custom and Path(custom).is_file():
            combo.addItem(_("From file: {name}").format(name=Path(custom).name), CUSTOM_MODEL)
            combo.setItemData(combo.count - 1, custom, qt.Qt.ToolTipRole)
        chosen = str(qt.QSettings().value(SETTINGS + "model", "") or "")
        index = combo.findData(chosen) if chosen else -1
        combo.setCurrentIndex(index if index >= 0 else 0)
        combo.blockSignals(False)

    def currentModelChoice(self):
        """("file", path) or ("catalogue", entry), or (None, None) when nothing is available."""
        combo = self.ui.modelComboBox
        data = combo.itemData(combo.currentIndex) if combo.currentIndex >= 0 else None
        if data == CUSTOM_MODEL:
            return CUSTOM_MODEL, Path(str(qt.QSettings().value(SETTINGS + "customModel", "")))
        entry = next((entry for entry in self.catalog if entry.name == data), None)
        return ("catalogue", entry) if entry is not None else (None, None)

    def localModelPath(self):
        """The chosen model's file when it is on this computer (bundled, downloaded or local), else None."""
        from LCKDSegmentationLib.modelCatalog import localPath

        kind, value = self.currentModelChoice()
        if kind == CUSTOM_MODEL:
            return value if value.is_file() else None
        if kind == "catalogue":
            return localPath(value)
        return None

    def onModelChanged(self, index=None):
        combo = self.ui.modelComboBox
        if combo.currentIndex >= 0:
            qt.QSettings().setValue(SETTINGS + "model", combo.itemData(combo.currentIndex))
        self._summary = None
        path = self.localModelPath()
        kind, value = self.currentModelChoice()
        if path is not None:
            from LCKDSegmentationLib.modelCard import modelText

            try:
                self._summary = self.logic.modelSummary(path)
                self.ui.modelInfoLabel.text = modelText(self._summary, tr=_)
            except Exception as error:  # a damaged or foreign file: say so, keep the panel usable
                self.ui.modelInfoLabel.text = _("This model file cannot be used: {error}").format(error=error)
        elif kind == "catalogue":
            self.ui.modelInfoLabel.text = _("Not downloaded yet; it will be downloaded (after you agree) when "
                                            "you click Segment.") + "\n" + value.describe()
        else:
            self.ui.modelInfoLabel.text = _("No model is available.")
        self.updateExpectation()

    def updateExpectation(self):
        """What the missing sequences will cost, from the model's own validation table."""
        from LCKDSegmentationLib.modelCard import expectationText

        present = [sequence for sequence, node in self.selectedVolumes().items() if node is not None]
        summary = self._summary
        if summary is None or not present:
            self.ui.expectationLabel.text = ""
            return
        self.ui.expectationLabel.text = expectationText(summary, present, tr=_)

    def onDeviceChanged(self, index):
        qt.QSettings().setValue(SETTINGS + "device", DEVICES[max(index, 0)])

    def obtainModelPath(self):
        """The chosen model's file, downloading a catalogue model after the user agreed; None if not."""
        path = self.localModelPath()
        if path is not None:
            return path
        kind, entry = self.currentModelChoice()
        if kind != "catalogue":
            slicer.util.errorDisplay(_("The chosen model file is missing. Load weights from a file or choose "
                                       "another model."))
            return None
        size = f" ({entry.sizeBytes / 1e6:.0f} MB)" if entry.sizeBytes else ""
        if not slicer.util.confirmOkCancelDisplay(
                _("The model '{title}' must be downloaded first{size} from\n{url}\n\nLicence: {licence}. "
                  "Download it now?").format(title=entry.title, size=size, url=entry.url, licence=entry.licence),
                windowTitle=_("Download model")):
            return None
        from LCKDSegmentationLib.modelCatalog import DownloadCancelledError, download

        dialog = slicer.util.createProgressDialog(labelText=_("Downloading {title}...").format(title=entry.title),
                                                  maximum=100)

        def onProgress(done, total):
            dialog.setValue(int(100 * done / total) if total else 0)
            slicer.app.processEvents()

        try:
            path = download(entry, onProgress=onProgress, isCancelled=lambda: dialog.wasCanceled)
        except DownloadCancelledError:
            return None
        except Exception as error:
            slicer.util.errorDisplay(_("The download failed: {error}").format(error=error))
            return None
        finally:
            dialog.close()
        self.onModelChanged()
        return path

    # -- running -----------------------------------------------------------------------------------

    def onSegmentButton(self):
        if self._job is not None:
            self.onCancel()
        else:
            self.startSegmentation()

    def currentOptions(self, modelPath, device=None):
        from LCKDSegmentationLib.logic import SegmentationOptions

        return SegmentationOptions(
            modelPath=modelPath, device=device or DEVICES[max(self.ui.deviceComboBox.currentIndex, 0)],
            labels="brats2023" if self._parameterNode.brats2023Labels else "brats2018",
            postprocess=self._parameterNode.postprocess)

    def startSegmentation(self, device=None):
        if not self.logic.ensureDependencies():
            self.log(_("Python packages are missing; nothing was done."))
            return
        modelPath = self.obtainModelPath()
        if modelPath is None:
            return
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        try:
            with slicer.util.WaitCursor():
                self._job = self.logic.start(self.selectedVolumes(), self.currentOptions(modelPath, device))
        except ValueError as error:
            slicer.util.errorDisplay(str(error))
            return
        self.log(_("Segmenting {sequences} with {model}...").format(
            sequences=" + ".join(self._job.sequences), model=Path(str(modelPath)).name))
        self._timer.start()
        self.updateGui()

    def onCancel(self):
        job, self._job = self._job, None
        self._timer.stop()
        if job is not None:
            self.logic.cancel(job)
        self.ui.progressBar.setValue(0)
        self.log(_("Cancelled; the scene was left as it was."))
        self.updateGui()

    def log(self, message):
        logging.info(f"LCKDSegmentation: {message}")
        self.ui.logTextEdit.appendPlainText(message)

    def pollJob(self):
        job = self._job
        if job is None:
            return
        for event in job.process.poll():
            if event.get("event") in ("stage", "log", "error") and event.get("message"):
                self.log(str(event["message"]))
        self.ui.progressBar.setValue(int(100 * job.process.overallFraction))
        if not job.process.finished:
            return
        self._timer.stop()
        self._job = None
        from LCKDSegmentationLib.logic import OutOfMemoryError, SegmentationError

        try:
            with slicer.util.WaitCursor():
                result = self.logic.finish(job, slicer.mrmlScene)
        except OutOfMemoryError as error:
            self.log(str(error))
            self.updateGui()
            if job.options.device != "cpu" and slicer.util.confirmYesNoDisplay(
                    _("The GPU ran out of memory. Run the segmentation on the CPU instead (slower)?")):
                self.startSegmentation(device="cpu")
            return
        except (SegmentationError, OSError, ValueError) as error:
            self.log(_("Failed: {error}").format(error=error))
            slicer.util.errorDisplay(_("The segmentation failed: {error}").format(error=error))
            self.updateGui()
            return
        self.ui.progressBar.setValue(100)
        self.showResult(job, result)
        self.updateGui()

    def showResult(self, job, result):
        node = result.segmentationNode
        self._parameterNode.outputSegmentation = node
        self.log(_("Done in {seconds:.1f} s: {name}.").format(seconds=result.seconds, name=node.GetName()))
        self.showVolumes(result.volumesMl)
        slicer.util.setSliceViewerLayers(background=job.volumes[job.reference], fit=True)
        if self.ui.show3DButton.checked:
            self.onShow3D(True)

    def showVolumes(self, volumes):
        from LCKDSegmentationLib.regionVolumes import volumesTable

        rows = volumesTable(volumes)
        self.ui.volumesTable.setRowCount(len(rows))
        for row, (name, value) in enumerate(rows):
            self.ui.volumesTable.setItem(row, 0, qt.QTableWidgetItem(_(name)))
            self.ui.volumesTable.setItem(row, 1, qt.QTableWidgetItem(value))

    def onShow3D(self, show):
        node = self._parameterNode.outputSegmentation if self._parameterNode else None
        if node is None:
            return
        with slicer.util.WaitCursor():
            self.logic.showIn3D(node, show)

    # -- models and packages -----------------------------------------------------------------------

    def onLoadWeights(self):
        path = qt.QFileDialog.getOpenFileName(None, _("LCKD model file"), "",
                                              _("LCKD models") + " (*.safetensors)")
        if not path:
            return
        try:
            self.logic.modelSummary(path)
        except Exception as error:
            slicer.util.errorDisplay(_("This file cannot be used as an LCKD model: {error}").format(error=error))
            return
        qt.QSettings().setValue(SETTINGS + "customModel", path)
        qt.QSettings().setValue(SETTINGS + "model", CUSTOM_MODEL)
        self.populateModels()
        self.onModelChanged()

    def onOpenModelsFolder(self):
        from LCKDSegmentationLib.modelCatalog import defaultCacheFolder

        folder = defaultCacheFolder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onDeleteModels(self):
        from LCKDSegmentationLib.modelCatalog import defaultCacheFolder, deleteDownloaded

        if slicer.util.confirmOkCancelDisplay(
                _("Delete the downloaded LCKD models in {folder}? Bundled models stay.").format(
                    folder=defaultCacheFolder())):
            count = deleteDownloaded()
            self.log(_("{count} downloaded model file(s) deleted.").format(count=count))
            self.onModelChanged()

    def onReinstall(self):
        if self.logic.ensureDependencies(reinstall=True):
            self.log(_("Python packages reinstalled."))

    def onShowVersions(self):
        from LCKDSegmentationLib.dependencies import versionsText

        slicer.util.infoDisplay(versionsText(), windowTitle=_("LCKDSegmentation package versions"))


class LCKDSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer's logic class: the parameter node, plus the Qt-free logic of LCKDSegmentationLib."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from LCKDSegmentationLib.logic import LCKDSegmentationLogic as Implementation

        self.implementation = Implementation()

    def getParameterNode(self):
        return LCKDSegmentationParameterNode(super().getParameterNode())

    def ensureDependencies(self, reinstall=False, askConfirmation=True):
        from LCKDSegmentationLib.dependencies import ensureDependencies

        try:
            return ensureDependencies(askConfirmation=askConfirmation, reinstall=reinstall)
        except Exception as error:  # a declined or failed installation must not break the panel
            logging.error(f"LCKDSegmentation: installing Python packages failed: {error}")
            slicer.util.errorDisplay(_("Installing Python packages failed: {error}").format(error=error))
            return False

    def modelSummary(self, path):
        return self.implementation.modelSummary(path)

    def showIn3D(self, segmentationNode, show=True):
        self.implementation.showIn3D(segmentationNode, show)

    def start(self, volumes, options):
        return self.implementation.start(volumes, options)

    def cancel(self, job):
        self.implementation.cancel(job)

    def finish(self, job, scene=None):
        return self.implementation.finish(job, scene or slicer.mrmlScene)

    def segment(self, volumes, options, onProgress=None):
        """Blocking run on the application's scene; returns a SegmentationResult."""
        return self.implementation.segment(slicer.mrmlScene, volumes, options, onProgress=onProgress)


class LCKDSegmentationTest(ScriptedLoadableModuleTest):
    """The same flow as the pytest suite, on the sample phantom: a `tiny` model on the CPU, every subset
    of sequences (inputs on different grids and under a transform), cancel, refusals."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LCKDSegmentation1()

    def test_LCKDSegmentation1(self):
        import shutil
        import tempfile

        import SampleData

        from LCKDSegmentationLib import selfTest
        from LCKDSegmentationLib.logic import SegmentationOptions
        from LCKDSegmentationLib.sampleData import SAMPLE_NAME, registerSampleData
        from LCKDSegmentationLib.sequenceAssignment import autoAssign

        logic = LCKDSegmentationLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False), "Python packages are missing")
        implementation = logic.implementation

        self.delayDisplay("Loading the phantom sample")
        registerSampleData(SampleData)
        nodes = SampleData.SampleDataLogic().downloadSamples(SAMPLE_NAME)
        self.assertEqual(len(nodes), 4)
        assignment = autoAssign([node.GetName() for node in nodes])
        volumes = {sequence: slicer.util.getNode(name) for sequence, name in assignment.items()}
        self.assertEqual(sorted(volumes), ["flair", "t1", "t1ce", "t2"])
        volumes["flair"] = selfTest.flippedCopy(slicer.mrmlScene, volumes["flair"], "Phantom_flair_flipped")
        selfTest.moveUnderTransform(slicer.mrmlScene, volumes["t1ce"])

        self.delayDisplay("Making a tiny model")
        folder = Path(tempfile.mkdtemp(prefix="LCKDSegmentationTest-"))
        try:
            model = selfTest.makeTinyModel(folder / "tiny.safetensors", implementation.python,
                                           implementation.libraryFolder)
            options = SegmentationOptions(modelPath=model, device="cpu", threads=1)

            self.delayDisplay("Refusals")
            self.assertEqual(selfTest.checkRefusals(implementation, slicer.mrmlScene, volumes, options), [])
            self.delayDisplay("Cancel")
            self.assertEqual(selfTest.checkCancel(implementation, slicer.mrmlScene, volumes, options), [])
            self.delayDisplay("Every subset of sequences")
            problems = selfTest.checkSubsets(implementation, slicer.mrmlScene, volumes, options, concurrency=2)
            self.assertEqual(len(problems), 15)
            self.assertEqual({key: found for key, found in problems.items() if found}, {})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")
