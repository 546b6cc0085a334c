"""LCKDSegmentation: brain-tumour segmentation from any subset of FLAIR, T1, T1ce and T2.

Thin Slicer classes; the work is done by LCKDSegmentationLib (no Qt) and the `lckd` command,
which runs in its own process so the application stays responsive.
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
except ImportError:  # Slicer < 5.4

    def _(text):
        return text


SEQUENCE_SLOTS = (("flair", "flairSelector"), ("t1", "t1Selector"), ("t1ce", "t1ceSelector"),
                  ("t2", "t2Selector"))
DEVICES = ("auto", "cuda", "cpu")


class LCKDSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LCKD Brain Tumour Segmentation")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["LCKDSegmentation developers"]
        self.parent.helpText = _(
            "Segments a brain tumour (necrosis, oedema, enhancing tumour) from whichever MRI sequences are "
            "loaded: any subset of FLAIR, T1, T1ce and T2. The model was trained with learnable cross-modal "
            "knowledge distillation so that missing sequences cost as little accuracy as possible. "
            "Not for clinical use.")
        self.parent.acknowledgementText = _(
            "Implements LCKD (Wang et al., MICCAI 2023) and MetaKD (Wang et al., arXiv:2405.07155).")
        slicer.app.connect("startupCompleted()", registerStartupItems)


def registerStartupItems():
    """Sample data and terminology; nothing heavy (no torch import)."""
    resources = Path(__file__).resolve().parent / "Resources"
    try:
        terminologyLogic = slicer.modules.terminologies.logic()
        terminologyLogic.LoadTerminologyFromFile(str(resources / "LCKDSegmentation.term.json"))
    except AttributeError:
        logging.warning("Terminologies module not available; segment terminology names will be shown as codes")
    import SampleData

    sampleFolder = resources / "SampleData"
    if sampleFolder.is_dir():
        names = ["flair", "t1", "t1ce", "t2"]
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="LCKDSegmentation", sampleName="LCKDPhantom",
            thumbnailFileName=str(resources / "Icons" / "LCKDSegmentation.png"),
            uris=[(sampleFolder / f"Phantom_{name}.nii.gz").as_uri() for name in names],
            fileNames=[f"Phantom_{name}.nii.gz" for name in names],
            nodeNames=[f"Phantom_{name}" for name in names], loadFileType=["VolumeFile"] * 4)


@parameterNodeWrapper
class LCKDSegmentationParameterNode:
    flairVolume: Optional[slicer.vtkMRMLScalarVolumeNode]
    t1Volume: Optional[slicer.vtkMRMLScalarVolumeNode]
    t1ceVolume: Optional[slicer.vtkMRMLScalarVolumeNode]
    t2Volume: Optional[slicer.vtkMRMLScalarVolumeNode]
    outputSegmentation: Optional[slicer.vtkMRMLSegmentationNode]
    brats2023Labels: bool = False
    postprocess: bool = False


class LCKDSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.pollJob)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LCKDSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LCKDSegmentationLogic()
        from LCKDSegmentationLib.modelCatalog import loadCatalog

        self.catalog = loadCatalog()
        for entry in self.catalog:
            self.ui.modelComboBox.addItem(entry.title, entry.name)
        self.ui.deviceComboBox.setCurrentIndex(int(qt.QSettings().value("LCKDSegmentation/device", 0)))
        self.ui.volumesTable.setColumnCount(2)
        self.ui.volumesTable.setHorizontalHeaderLabels([_("Region"), _("Volume (mL)")])
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.autoAssignButton.connect("clicked(bool)", self.autoAssign)
        self.ui.show3DButton.connect("toggled(bool)", self.onShow3D)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.updateExpectation)
        self.ui.loadWeightsButton.connect("clicked(bool)", self.onLoadWeights)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.deleteModelsButton.connect("clicked(bool)", self.onDeleteModels)
        self.ui.reinstallButton.connect("clicked(bool)", lambda: self.logic.ensureDependencies(reinstall=True))
        self.ui.versionsButton.connect("clicked(bool)", self.onShowVersions)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.initializeParameterNode()
        self.autoAssign()

    def cleanup(self):
        self.removeObservers()
        if self._job is not None:
            self.logic.cancel(self._job)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

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

    def selectedVolumes(self):
        return {sequence: getattr(self.ui, selector).currentNode() for sequence, selector in SEQUENCE_SLOTS}

    def autoAssign(self):
        from LCKDSegmentationLib.sequenceAssignment import autoAssign

        nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        assignment = autoAssign([node.GetName() for node in nodes])
        byName = {node.GetName(): node for node in nodes}
        for sequence, selector in SEQUENCE_SLOTS:
            if sequence in assignment and getattr(self.ui, selector).currentNode() is None:
                getattr(self.ui, selector).setCurrentNode(byName[assignment[sequence]])

    def updateGui(self, caller=None, event=None):
        from LCKDSegmentationLib.sequenceAssignment import checkAssignment

        try:
            checkAssignment(self.selectedVolumes())
            problem = ""
        except ValueError as error:
            problem = str(error)
        running = self._job is not None
        self.ui.segmentButton.enabled = running or not problem
        self.ui.segmentButton.text = _("Cancel") if running else _("Segment")
        self.ui.segmentButton.toolTip = problem
        self.updateExpectation()

    def modelPath(self) -> Path:
        from LCKDSegmentationLib.modelCatalog import download, localPath

        custom = qt.QSettings().value("LCKDSegmentation/customModel", "")
        if self.ui.modelComboBox.currentData == "custom" and custom:
            return Path(custom)
        entry = self.catalog[max(self.ui.modelComboBox.currentIndex, 0)]
        path = localPath(entry)
        if path is None:
            if not slicer.util.confirmOkCancelDisplay(
                    _("Model '{name}' must be downloaded first ({url}). Download it now?").format(
                        name=entry.title, url=entry.url)):
                raise RuntimeError(_("The model is not available."))
            with slicer.util.tryWithErrorDisplay(_("Download failed."), waitCursor=True):
                path = download(entry, onProgress=lambda done, total: self.ui.progressBar.setValue(
                    int(100 * done / total) if total else 0))
        return path

    def updateExpectation(self, *args):
        """What the missing sequences will cost, from the model's own validation table."""
        from lckd.sequences import SEQUENCE_TITLES, subset_key
        from LCKDSegmentationLib.modelCatalog import localPath

        present = [s for s, node in self.selectedVolumes().items() if node is not None]
        if not present or not self.catalog:
            self.ui.expectationLabel.text = ""
            return
        entry = self.catalog[max(self.ui.modelComboBox.currentIndex, 0)]
        path = localPath(entry)
        if path is None:
            self.ui.expectationLabel.text = _("Model not downloaded yet.")
            return
        self.ui.expectationLabel.text = self.logic.expectationText(path, present)
        card = self.logic.readCard(path)
        teachers = card.teachers["per_region"] if card.teachers else None
        details = [_("Method: {method}").format(method=card.method)]
        if teachers:
            details.append(_("Elected teachers: ") + ", ".join(
                f"{region} {SEQUENCE_TITLES[s]}" for region, s in teachers.items()))
        if card.importance:
            details.append(_("Learned importance: ") + ", ".join(
                f"{SEQUENCE_TITLES[s]} {w:.2f}" for s, w in card.importance.items()))
        self.ui.modelInfoLabel.text = "\n".join(details)
        self.ui.expectationLabel.toolTip = subset_key(present)

    def onSegmentButton(self):
        if self._job is not None:
            self.logic.cancel(self._job)
            self._job = None
            self._timer.stop()
            self.ui.logTextEdit.appendPlainText(_("Cancelled; the scene was left as it was."))
            self.ui.progressBar.setValue(0)
            self.updateGui()
            return
        from LCKDSegmentationLib.logic import SegmentationOptions

        if not self.logic.ensureDependencies():
            return
        qt.QSettings().setValue("LCKDSegmentation/device", self.ui.deviceComboBox.currentIndex)
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            options = SegmentationOptions(
                modelPath=self.modelPath(), device=DEVICES[self.ui.deviceComboBox.currentIndex],
                labels="brats2023" if self._parameterNode.brats2023Labels else "brats2018",
                postprocess=self._parameterNode.postprocess)
            self.ui.logTextEdit.clear()
            self._job = self.logic.start(self.selectedVolumes(), options)
            self._timer.start()
        self.updateGui()

    def pollJob(self):
        job = self._job
        if job is None:
            return
        for event in job.process.poll():
            kind = event.get("event")
            if kind == "progress":
                self.ui.progressBar.setValue(int(100 * event["fraction"]))
            elif kind in ("stage", "log", "error"):
                self.ui.logTextEdit.appendPlainText(event.get("message", ""))
        if not job.process.finished:
            return
        self._timer.stop()
        self._job = None
        job.process.wait()
        try:
            node, done = self.logic.finish(job, slicer.mrmlScene)
        except RuntimeError as error:
            message = str(error)
            if "out of memory" in message.lower():
                message += "\n" + _("Choose CPU as the device and try again.")
            slicer.util.errorDisplay(_("Segmentation failed: ") + message)
            self.updateGui()
            return
        self._parameterNode.outputSegmentation = node
        self.showVolumes(done["volumes_ml"])
        self.ui.logTextEdit.appendPlainText(_("Done in {seconds:.1f} s.").format(seconds=done["seconds"]))
        slicer.util.setSliceViewerLayers(background=job.volumes[job.reference])
        self.updateGui()

    def showVolumes(self, volumes):
        names = {"ET": _("Enhancing tumour"), "TC": _("Tumour core"), "WT": _("Whole tumour")}
        self.ui.volumesTable.setRowCount(len(names))
        for row, region in enumerate(("ET", "TC", "WT")):
            self.ui.volumesTable.setItem(row, 0, qt.QTableWidgetItem(names[region]))
            self.ui.volumesTable.setItem(row, 1, qt.QTableWidgetItem(f"{volumes[region]:.2f}"))

    def onShow3D(self, show):
        node = self._parameterNode.outputSegmentation if self._parameterNode else None
        if node is not None:
            if show:
                node.CreateClosedSurfaceRepresentation()
            node.GetDisplayNode().SetVisibility3D(show)

    def onLoadWeights(self):
        path = qt.QFileDialog.getOpenFileName(None, _("Model file"), "", "LCKD models (*.safetensors)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Not a usable model file."), waitCursor=True):
            self.logic.readCard(path)
            qt.QSettings().setValue("LCKDSegmentation/customModel", path)
            if self.ui.modelComboBox.findData("custom") < 0:
                self.ui.modelComboBox.addItem(_("Model from file"), "custom")
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData("custom"))

    def onOpenModelsFolder(self):
        from LCKDSegmentationLib.modelCatalog import defaultCacheFolder

        folder = defaultCacheFolder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onDeleteModels(self):
        from LCKDSegmentationLib.modelCatalog import deleteDownloaded

        if slicer.util.confirmOkCancelDisplay(_("Delete all downloaded LCKD models?")):
            count = deleteDownloaded()
            slicer.util.infoDisplay(_("{count} model file(s) deleted.").format(count=count))

    def onShowVersions(self):
        from LCKDSegmentationLib.dependencies import installedVersions

        slicer.util.infoDisplay("\n".join(f"{name}: {version}" for name, version in installedVersions().items()))


class LCKDSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer's logic class; the work is in LCKDSegmentationLib.logic."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from LCKDSegmentationLib.logic import LCKDSegmentationLogic as Implementation

        self.implementation = Implementation()

    def getParameterNode(self):
        return LCKDSegmentationParameterNode(super().getParameterNode())

    def ensureDependencies(self, reinstall=False):
        from LCKDSegmentationLib.dependencies import ensureDependencies

        return ensureDependencies(askConfirmation=True, reinstall=reinstall)

    def readCard(self, path):
        from lckd.model_file import read_card

        return read_card(path)

    def expectationText(self, modelPath, present):
        return self.implementation.expectationText(modelPath, present)

    def start(self, volumes, options):
        return self.implementation.start(volumes, options)

    def cancel(self, job):
        self.implementation.cancel(job)

    def finish(self, job, scene):
        return self.implementation.finish(job, scene)


class LCKDSegmentationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: every subset of the sample phantom through the logic with the bundled model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_allSubsetsAndCancel()

    def test_allSubsetsAndCancel(self):
        import SampleData

        from lckd.sequences import all_subsets
        from LCKDSegmentationLib.logic import SegmentationOptions
        from LCKDSegmentationLib.modelCatalog import loadCatalog, localPath

        self.delayDisplay("Loading the phantom sample")
        nodes = SampleData.SampleDataLogic().downloadSample("LCKDPhantom")
        volumes = {name: node for name, node in zip(("flair", "t1", "t1ce", "t2"), nodes)}
        model = localPath(loadCatalog()[0])
        options = SegmentationOptions(modelPath=model, device="cpu")
        logic = LCKDSegmentationLogic().implementation
        for subset in all_subsets():
            segmentation, done = logic.segment(slicer.mrmlScene, {s: volumes[s] for s in subset}, options)
            self.assertIsNotNone(segmentation)
            self.assertEqual(done["sequences"], list(subset))
        count = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.start(volumes, options)
        logic.cancel(job)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        with self.assertRaises(ValueError):
            logic.start({"t1": volumes["t1"], "t2": volumes["t1"]}, options)
        self.delayDisplay("Test passed")
