"""LCKDSegmentation: brain-tumour segmentation from any subset of FLAIR, T1, T1ce, T2. These classes only wire Slicer
to ``LCKDSegmentationLib`` (no Qt); ``lckd segment`` runs in its own ``PythonSlicer`` process, so torch stays out."""

import logging
from typing import Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: (sequence, selector widget, parameter name), in channel order.
SLOTS = (("flair", "flairSelector", "flairVolume"), ("t1", "t1Selector", "t1Volume"),
         ("t1ce", "t1ceSelector", "t1ceVolume"), ("t2", "t2Selector", "t2Volume"))


class LCKDSegmentation(ScriptedLoadableModule):
    """The module's description; registers sample data and terminology once Slicer has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LCKD Brain Tumour Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.contributors = ["LCKDSegmentation developers"]
        self.parent.helpText = _(
            "Segments a brain tumour (necrosis, oedema, enhancing tumour) from whichever MRI sequences are "
            "loaded: any subset of FLAIR, T1, T1ce and T2. Before you run it, the module shows the accuracy the "
            "model reached on its validation cases with exactly the sequences you have. "
            '<b>Not for clinical use.</b><p>See the <a href="{url}">module documentation</a>.</p>').format(
            url="https://github.com/lckd-segmentation/SlicerLCKDSegmentation/blob/main/Resources/Docs/SlicerModule.md")
        self.parent.acknowledgementText = _(
            "Implements learnable cross-modal knowledge distillation (LCKD, Wang et al., MICCAI 2023) and "
            "meta-learned modality-weighted knowledge distillation (MetaKD, Wang et al., arXiv:2405.07155).")
        slicer.app.connect("startupCompleted()", registerStartupItems)


def registerStartupItems():
    import LCKDSegmentationLib.startup
    LCKDSegmentationLib.startup.registerStartupItems(slicer)


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
    preprocess: bool = False
    skipMirroring: bool = False
    uncertaintyMap: bool = False


class LCKDSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: connections and display; LCKDSegmentationLib's PanelController decides and acts."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = None
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.pollJob)

    def setup(self):
        from LCKDSegmentationLib.panelController import PanelController

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LCKDSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LCKDSegmentationLogic()
        self.panel = PanelController(self.logic.implementation, {sequence: name for sequence, _s, name in SLOTS},
                                     qt.QSettings(), slicer.util, self.log, slicer.app.processEvents, gui=self.ui)
        self.populateModels()
        self.ui.deviceComboBox.setCurrentIndex(self.panel.deviceIndex())
        for name, slot in (("segmentButton", self.onSegmentButton), ("loadWeightsButton", self.onLoadWeights),
                           ("autoAssignButton", lambda checked: self.autoAssign(onlyNew=False)),
                           ("openModelsFolderButton", lambda checked: qt.QDesktopServices.openUrl(
                               qt.QUrl.fromLocalFile(str(self.panel.models.folder())))),
                           ("deleteModelsButton", lambda checked: self.panel.deleteModels() and self.onModelChanged()),
                           ("reinstallButton", lambda checked: self.panel.reinstall()),
                           ("versionsButton", lambda checked: self.panel.showVersions())):
            getattr(self.ui, name).connect("clicked(bool)", slot)
        self.ui.show3DButton.connect("toggled(bool)", lambda show: self.panel.show3D(self._parameterNode, show))
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.panel.chooseDevice)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.setParameterNode(self.logic.getParameterNode())

    def cleanup(self):
        self.removeObservers()
        self.onCancel()

    def enter(self):
        self.setParameterNode(self.logic.getParameterNode())
        self.autoAssign()

    def exit(self):
        self.panel.gui.disconnect()  # as the template does; Slicer 5.8 keeps its connection (see ParameterNodeGui)
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)

    def onSceneStartClose(self, caller, event):
        self.onCancel()
        self.setParameterNode(None)
        self.panel.sceneClosed()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.setParameterNode(self.logic.getParameterNode())

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode"):
            qt.QTimer.singleShot(0, self.autoAssign)  # after the loader has named it

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = self.panel.gui.connect(parameterNode)
        if self._parameterNode:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self.updateGui()

    def autoAssign(self, onlyNew=True):
        """Fill the empty slots from the loaded volumes' names; what the user set stays as it is."""
        self.panel.assignSlots(self._parameterNode, slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"), onlyNew)

    def updateGui(self, caller=None, event=None):
        ui, state = self.ui, self.panel.state(self._parameterNode)
        ui.problemLabel.text, ui.expectationLabel.text = state.problems, state.expectation
        ui.reviewLabel.text = state.review
        button = ui.segmentButton
        button.enabled, button.text, button.toolTip = state.segmentEnabled, state.segmentText, state.segmentToolTip
        for widget in [getattr(ui, selector) for _s, selector, _n in SLOTS] + [ui.modelComboBox, ui.deviceComboBox,
                ui.autoAssignButton, ui.loadWeightsButton, ui.deleteModelsButton, ui.reinstallButton]:
            widget.enabled = state.editable

    def populateModels(self):
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for item in self.panel.models.items():
            combo.addItem(item.title, item.data)
            combo.setItemData(combo.count - 1, item.toolTip, qt.Qt.ToolTipRole)
        combo.setCurrentIndex(self.panel.models.currentIndex())
        combo.blockSignals(False)
        self.onModelChanged()

    def currentModel(self):
        combo = self.ui.modelComboBox
        return combo.itemData(combo.currentIndex) if combo.currentIndex >= 0 else None

    def onModelChanged(self, index=None):
        self.ui.modelInfoLabel.text = self.panel.chooseModel(self.currentModel())
        self.updateGui()

    def onSegmentButton(self, checked=False, device=None):
        if self.panel.run.running:
            return self.onCancel()
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        with slicer.util.WaitCursor():
            started = self.panel.startSegmentation(self._parameterNode, self.currentModel(),
                                                   self.ui.deviceComboBox.currentIndex, device)
        self.onModelChanged()  # a model downloaded just now has its card read
        if started:
            self._timer.start()

    def onCancel(self):
        self._timer.stop()
        self.panel.run.cancel()
        self.ui.progressBar.setValue(0)
        self.updateGui()

    def log(self, message):
        logging.info(f"LCKDSegmentation: {message}")
        self.ui.logTextEdit.appendPlainText(message)

    def pollJob(self):
        progress = self.panel.run.poll()
        self.ui.progressBar.setValue(progress.percent)
        if not progress.finished:
            return
        self._timer.stop()
        with slicer.util.WaitCursor():
            outcome = self.panel.finishSegmentation(slicer.mrmlScene)
        self.ui.progressBar.setValue(100 if outcome.result else 0)
        self.updateGui()
        if outcome.result is not None:
            self.showResult(outcome)
        elif outcome.offerCpu and self.panel.askForCpu():
            self.onSegmentButton(device="cpu")

    def showResult(self, outcome):
        view = self.panel.keepResult(self._parameterNode, outcome)
        self.ui.volumesTable.setRowCount(view.rows)
        for (row, column), text in view.cells.items():
            self.ui.volumesTable.setItem(row, column, qt.QTableWidgetItem(text))
        slicer.util.setSliceViewerLayers(fit=True, **view.layers)
        if self.ui.show3DButton.checked:
            self.panel.show3D(self._parameterNode, True)

    def onLoadWeights(self):
        path = qt.QFileDialog.getOpenFileName(None, _("LCKD model file"), "", _("LCKD models (*.safetensors)"))
        if self.panel.models.useFile(path, slicer.util):
            self.populateModels()


class LCKDSegmentationLogic(ScriptedLoadableModuleLogic):
    """Slicer's logic class: the parameter node; the work is LCKDSegmentationLib's logic (``implementation``)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from LCKDSegmentationLib.logic import LCKDSegmentationLogic as Implementation

        self.implementation = Implementation()

    def getParameterNode(self):
        return LCKDSegmentationParameterNode(super().getParameterNode())


class LCKDSegmentationTest(ScriptedLoadableModuleTest):
    """The pytest suite's flow on the sample phantom (tiny model, CPU): 15 subsets, grids, cancel, refusals."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_LCKDSegmentation1()

    def test_LCKDSegmentation1(self):
        from LCKDSegmentationLib.selfTest import runInSlicer

        runInSlicer(self, LCKDSegmentationLogic().implementation, slicer.mrmlScene)
