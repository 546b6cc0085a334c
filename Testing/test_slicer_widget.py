# ruff: noqa: N802, N803  (the stand-ins have Qt's and Slicer's method names)
"""The module file LCKDSegmentation.py driven outside Slicer: the real MRML scene of `slicer-core`, the real
logic and a fake `lckd` segmenter, with stand-ins for what only the application has (Qt widgets built
from the .ui file's names, QSettings, dialogs, the ScriptedLoadableModule base classes, the parameter
node wrapper). It checks the widget's own behaviour: auto-assignment, refusals, the expected-Dice
panel, Segment -> Cancel -> Segment, progress and log, results table, out-of-memory retry on the CPU,
Show 3D, weights from a file, the download after consent, and start-up registration.

What the stand-ins cannot show (real Qt/PythonQt behaviour, the real parameter node wrapper, dialogs
and views) remains checked only statically; see Resources/Docs/SlicerModule.md."""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import json
import os
import sys
import time
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402
from test_slicer_logic import RAS_2MM, add_volume, write_fake_library  # noqa: E402

from conftest import make_tiny_model_file, synthetic_head  # noqa: E402
from lckd.errors import ModelFileError  # noqa: E402
from lckd.model_file import read_card  # noqa: E402
from LCKDSegmentationLib import modelCatalog  # noqa: E402
from LCKDSegmentationLib.selfTest import sceneSnapshot, syntheticValidationTable  # noqa: E402

pytestmark = pytest.mark.xdist_group("slicer")
MODULE = Path(__file__).resolve().parents[1] / "LCKDSegmentation"


# -- stand-ins for Qt widgets (only the methods the module may call: a typo fails) ---------------------

class Widget:
    def __init__(self, name):
        self.objectName = name
        self.enabled = True
        self.toolTip = ""
        self.text = ""
        self.checked = False
        self.collapsed = False
        self.connections = {}

    def connect(self, signal, slot):
        self.connections.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        """Call the slots as PythonQt does: a slot taking fewer arguments gets the first ones only."""
        for slot in self.connections.get(signal, []):
            parameters = inspect.signature(slot).parameters.values()
            if any(p.kind == p.VAR_POSITIONAL for p in parameters):
                slot(*args)
            else:
                slot(*args[:len([p for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD])])

    def setMRMLScene(self, scene):
        self.scene = scene


class PushButton(Widget):
    def click(self):
        self.emit("clicked(bool)", False)


class CheckBox(Widget):
    pass


class ComboBox(Widget):
    def __init__(self, name):
        super().__init__(name)
        self.items = []  # [text, data, tooltip]
        self.currentIndex = -1
        self.blocked = False

    @property
    def count(self):
        return len(self.items)

    def blockSignals(self, blocked):
        self.blocked = blocked

    def clear(self):
        self.items = []
        self.setCurrentIndex(-1)

    def addItem(self, text, data=None):
        self.items.append([text, data, None])
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def setItemData(self, index, value, role):
        assert role == Qt.ToolTipRole
        self.items[index][2] = value

    def itemData(self, index):
        return self.items[index][1]

    def itemText(self, index):
        return self.items[index][0]

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    def setCurrentIndex(self, index):
        changed = index != self.currentIndex
        self.currentIndex = index
        if changed and not self.blocked:
            self.emit("currentIndexChanged(int)", index)


class DeviceComboBox(ComboBox):
    def __init__(self, name, texts):
        super().__init__(name)
        for text in texts:
            self.addItem(text)


class Label(Widget):
    pass


class ProgressBar(Widget):
    value = 0

    def setValue(self, value):
        assert 0 <= value <= 100
        self.value = value


class PlainTextEdit(Widget):
    def __init__(self, name):
        super().__init__(name)
        self.lines = []

    def clear(self):
        self.lines = []

    def appendPlainText(self, text):
        self.lines.append(text)


class TableWidget(Widget):
    def __init__(self, name, columns=0):
        super().__init__(name)
        self.cells = {}
        self.rows = 0
        self.columns = columns  # the <column> entries of the .ui file

    def setRowCount(self, rows):
        self.rows = rows

    def setItem(self, row, column, item):
        assert row < self.rows and column < self.columns
        self.cells[(row, column)] = item.text


class NodeComboBox(Widget):
    pass


WIDGETS = {"QPushButton": PushButton, "QCheckBox": CheckBox, "QComboBox": ComboBox, "QLabel": Label,
           "QProgressBar": ProgressBar, "QPlainTextEdit": PlainTextEdit, "QTableWidget": TableWidget,
           "qMRMLNodeComboBox": NodeComboBox, "ctkCollapsibleButton": Widget, "qMRMLWidget": Widget}


def load_ui(path):
    """Fake widgets named and typed as in the .ui file."""
    root = None
    widgets = {}
    for element in ElementTree.parse(path).iter("widget"):
        name, kind = element.get("name"), element.get("class")
        texts = [item.find("property/string").text for item in element.findall("item")]
        if kind == "QComboBox" and texts:
            widget = DeviceComboBox(name, texts)
        elif kind == "QTableWidget":
            widget = TableWidget(name, columns=len(element.findall("column")))
        else:
            widget = WIDGETS[kind](name)
        if root is None:
            root = widget
        widgets[name] = widget
    root.children = widgets
    return root


class Qt:
    ToolTipRole = 3


class Settings:
    store = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


class Timer:
    def __init__(self):
        self.active = False
        self.connections = []

    def setInterval(self, milliseconds):
        pass

    def connect(self, signal, slot):
        assert signal == "timeout()"
        self.connections.append(slot)

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    @staticmethod
    def singleShot(milliseconds, function):
        function()


class TableWidgetItem:
    def __init__(self, text):
        self.text = text


def make_qt(open_file):
    qt = types.ModuleType("qt")
    qt.QTimer = Timer
    qt.QSettings = Settings
    qt.Qt = Qt
    qt.QTableWidgetItem = TableWidgetItem
    qt.QFileDialog = SimpleNamespace(getOpenFileName=lambda *args: open_file["path"])
    qt.QUrl = SimpleNamespace(fromLocalFile=lambda path: ("url", path))
    qt.QDesktopServices = SimpleNamespace(openUrl=lambda url: open_file.setdefault("opened", []).append(url))
    return qt


# -- stand-ins for Slicer's module base classes and parameter node wrapper ----------------------------

def make_scripted_loadable_module(scene):
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or SimpleNamespace(isEntered=True)
            self.layout = SimpleNamespace(addWidget=lambda widget: None)

        def setup(self):
            pass

        def resourcePath(self, name):
            return str(MODULE / "Resources" / name)

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            node = scene.GetSingletonNode("LCKDSegmentation", "vtkMRMLScriptedModuleNode")
            if node is None:
                node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag("LCKDSegmentation")
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


_VALUES = {}
#: Which Slicer the parameter node wrapper behaves like, and its live widget connections (node ID, tag).
GUI = {"version": (5, 10), "live": [], "next": 0}


def parameter_node_wrapper(cls):
    """Typed attributes kept per parameter node; setting one modifies the node (as the real wrapper does).

    ``connectGui`` returns a tag that ``disconnectGui`` takes (Slicer >= 5.10); Slicer 5.8's returns None,
    and its ``disconnectGui(None)`` does nothing, so that connection stays (as in the real wrapper)."""
    fields = {name: getattr(cls, name, None) for name in cls.__annotations__}

    def __init__(self, node):  # noqa: N807
        object.__setattr__(self, "parameterNode", node)
        _VALUES.setdefault(node.GetID(), dict(fields))

    def __getattr__(self, name):  # noqa: N807
        values = _VALUES[self.parameterNode.GetID()]
        if name not in values:
            raise AttributeError(name)
        return values[name]

    def __setattr__(self, name, value):  # noqa: N807
        values = _VALUES[self.parameterNode.GetID()]
        if name not in values:
            raise AttributeError(f"{name} is not a parameter")
        values[name] = value
        self.parameterNode.Modified()

    def connectGui(self, gui):
        GUI["next"] += 1
        GUI["live"].append((self.parameterNode.GetID(), GUI["next"]))
        return GUI["next"] if GUI["version"] >= (5, 10) else None

    def disconnectGui(self, tag):  # a tag it did not give (None on Slicer 5.8) changes nothing
        GUI["live"][:] = [(node, live) for node, live in GUI["live"] if live != tag]

    members = dict(__init__=__init__, __getattr__=__getattr__, __setattr__=__setattr__,
                   connectGui=connectGui, disconnectGui=disconnectGui,
                   AddObserver=lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
                       event, callback, priority),
                   RemoveObserver=lambda self, tag: self.parameterNode.RemoveObserver(tag),
                   StartModify=lambda self: self.parameterNode.StartModify(),
                   EndModify=lambda self, wasModified: self.parameterNode.EndModify(wasModified))
    return type(cls.__name__, (), members)


def make_i18n(translations):
    """slicer.i18n as Slicer has it: ``tr`` takes the context from the calling file (package.file, or the
    file's name outside a package), ``translate`` asks the application (here: records and returns the text)."""
    module = types.ModuleType("slicer.i18n")

    def getContext(sourceFile):
        folder, name = os.path.dirname(sourceFile), os.path.basename(sourceFile).replace(".py", "")
        return f"{os.path.basename(folder)}.{name}" if os.path.isfile(os.path.join(folder, "__init__.py")) else name

    def translate(context, text):
        translations.append((context, text))
        return text

    def tr(text):
        return translate(getContext(inspect.getsourcefile(sys._getframe(1))), text)

    module.getContext, module.translate, module.tr = getContext, translate, tr
    return module


class Dialogs:
    """What the user answers, and what the module showed."""

    def __init__(self):
        self.agree = True
        self.shown = []

    def confirm(self, text, *args, **kwargs):
        self.shown.append(("confirm", text))
        return self.agree

    def error(self, text, *args, **kwargs):
        self.shown.append(("error", text))

    def info(self, text, *args, **kwargs):
        self.shown.append(("info", text))


class SampleDataLogicStandIn:
    """``SampleData.SampleDataLogic.registerCustomSampleDataSource`` with Slicer 5.8's keywords; the deprecated
    ``loadFileType`` is refused here so that the module is seen to use ``loadFileTypes``."""

    def __init__(self, state):
        self.state = state

    def registerCustomSampleDataSource(self, category="Custom", sampleName=None, uris=None, fileNames=None,
                                       nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                       loadFileTypes=None, loadFiles=None, loadFileProperties=None, checksums=None):
        self.state["samples"].append(dict(category=category, sampleName=sampleName, uris=uris, fileNames=fileNames,
                                          nodeNames=nodeNames, loadFileTypes=loadFileTypes, checksums=checksums,
                                          thumbnailFileName=thumbnailFileName))


class ProgressDialog:
    def __init__(self, **kwargs):
        self.values = []
        self.wasCanceled = False

    def setValue(self, value):
        self.values.append(value)

    def close(self):
        self.closed = True


@pytest.fixture
def harness(monkeypatch, tmp_path):
    """The module imported with stand-ins; yields (module, scene, dialogs, state)."""
    scene = slicer.vtkMRMLScene()
    dialogs = Dialogs()
    state = {"path": "", "layers": [], "startup": [], "samples": [], "progress": [], "translations": []}
    monkeypatch.setattr(Settings, "store", {})
    _VALUES.clear()  # parameter values of earlier tests' scenes
    monkeypatch.setitem(GUI, "version", (5, 10))
    monkeypatch.setitem(GUI, "live", [])
    monkeypatch.setitem(sys.modules, "slicer.i18n", make_i18n(state["translations"]))
    monkeypatch.setitem(sys.modules, "qt", make_qt(state))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", make_scripted_loadable_module(scene))
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper",
                        SimpleNamespace(parameterNodeWrapper=parameter_node_wrapper))
    monkeypatch.setitem(sys.modules, "SampleData", SimpleNamespace(SampleDataLogic=SampleDataLogicStandIn(state)))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", SimpleNamespace(connect=lambda signal, slot: state["startup"].append(slot),
                                                       processEvents=lambda: None, slicerHome=str(tmp_path)),
                        raising=False)
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    monkeypatch.setattr(slicer, "modules", SimpleNamespace(terminologies=SimpleNamespace(
        logic=lambda: terminologies)), raising=False)
    util = slicer.util
    monkeypatch.setattr(util, "loadUI", load_ui)
    monkeypatch.setattr(util, "childWidgetVariables", lambda root: SimpleNamespace(**root.children))
    monkeypatch.setattr(util, "WaitCursor", contextlib.nullcontext)
    monkeypatch.setattr(util, "confirmOkCancelDisplay", dialogs.confirm)
    monkeypatch.setattr(util, "confirmYesNoDisplay", dialogs.confirm)
    monkeypatch.setattr(util, "errorDisplay", dialogs.error)
    monkeypatch.setattr(util, "infoDisplay", dialogs.info)
    monkeypatch.setattr(util, "createProgressDialog", lambda **kwargs: state.setdefault("dialog", ProgressDialog()))
    monkeypatch.setattr(util, "setSliceViewerLayers", lambda **kwargs: state["layers"].append(kwargs))
    monkeypatch.setenv(modelCatalog.CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr("LCKDSegmentationLib.dependencies.ensureDependencies", lambda **kwargs: True)
    # the fake segmenter (see test_slicer_logic.py) stands in for `lckd segment`
    state["library"] = write_fake_library(tmp_path, monkeypatch)
    monkeypatch.syspath_prepend(str(MODULE))
    sys.modules.pop("LCKDSegmentation", None)
    module = importlib.import_module("LCKDSegmentation")
    state["widgets"] = []
    yield module, scene, dialogs, state
    for widget in state["widgets"]:  # as Slicer does when the module is unloaded
        widget.cleanup()
    sys.modules.pop("LCKDSegmentation", None)


def make_widget(module, state):
    widget = module.LCKDSegmentationWidget()
    state["widgets"].append(widget)
    widget.setup()
    assert widget.logic.implementation.python == sys.executable  # no PythonSlicer in this "Slicer"
    widget.logic.implementation.libraryFolder = state["library"]
    widget.logic.implementation.python = sys.executable
    return widget


def add_case(scene):
    shape = (40, 44, 36)
    return {sequence: add_volume(scene, name, synthetic_head(shape, RAS_2MM, seed=index), RAS_2MM)
            for index, (sequence, name) in enumerate([("flair", "Case FLAIR"), ("t1", "Case T1"),
                                                      ("t1ce", "Case T1 post Gd"), ("t2", "Case T2")])}


def run_until_done(widget, timeout=60.0):
    deadline = time.monotonic() + timeout
    while widget.panel.run.job is not None and time.monotonic() < deadline:
        widget.pollJob()
        time.sleep(0.02)
    assert widget.panel.run.job is None, "the segmenter did not finish"


def test_module_registers_terminology_and_sample_data_at_startup(harness):
    module, scene, dialogs, state = harness
    module.LCKDSegmentation(SimpleNamespace())
    assert state["startup"] == [module.registerStartupItems]  # nothing happens before start-up completes
    module.registerStartupItems()
    names = vtk.vtkStringArray()
    slicer.modules.terminologies.logic().GetLoadedTerminologyNames(names)
    assert "LCKDSegmentation brain tumour" in [names.GetValue(i) for i in range(names.GetNumberOfValues())]
    assert state["samples"][0]["sampleName"] == "LCKDPhantom"


def test_widget_assigns_refuses_and_explains(harness):
    module, scene, dialogs, state = harness
    volumes = add_case(scene)
    widget = make_widget(module, state)
    ui, parameters = widget.ui, widget._parameterNode
    assert ui.segmentButton.enabled is False and ui.problemLabel.text == ""
    widget.enter()
    assigned = {sequence: getattr(parameters, name) for sequence, _, name in module.SLOTS}
    assert assigned == volumes
    assert ui.segmentButton.enabled is True and ui.segmentButton.text == "Segment"
    # both bundled models have a validation table (the default's from its 7 held-out cases): the panel quotes it
    for index in (0, 1):
        ui.modelComboBox.setCurrentIndex(index)
        card = read_card(modelCatalog.localPath(modelCatalog.loadCatalog()[index]))
        expected = card.expected_dice("flair+t1+t1ce+t2")
        assert ui.expectationLabel.text.startswith("Expected Dice with FLAIR + T1 + T1ce + T2: "
                                                   f"ET {expected['ET']:.2f}, TC {expected['TC']:.2f}"), card.name
    assert ui.modelComboBox.itemData(1) == "lckd-phantom-demo"
    assert "Elected teachers" in ui.modelInfoLabel.text

    parameters.t2Volume = volumes["flair"]  # one volume in two slots
    assert ui.segmentButton.enabled is False and "same volume is selected as FLAIR and T2" in ui.problemLabel.text
    parameters.t2Volume = None
    assert ui.segmentButton.enabled is True and ui.problemLabel.text == ""
    assert "Missing T2" in ui.expectationLabel.text and "cost" in ui.expectationLabel.text

    parameters.flairVolume = None  # the user empties a slot on purpose
    add_volume(scene, "DWI", synthetic_head((40, 44, 36), RAS_2MM), RAS_2MM)  # then loads something else
    assert parameters.flairVolume is None
    widget.enter()
    assert parameters.flairVolume is None  # the volume taken out is not proposed again
    ui.autoAssignButton.click()  # asked for explicitly: every volume is proposed again
    assert parameters.flairVolume is volumes["flair"]
    parameters.flairVolume = None
    other = add_volume(scene, "Other FLAIR", synthetic_head((40, 44, 36), RAS_2MM), RAS_2MM)
    assert parameters.flairVolume is other  # a newly loaded FLAIR fills the empty slot
    ui.deviceComboBox.setCurrentIndex(2)
    assert Settings.store["LCKDSegmentation/device"] == "cpu"


def test_widget_segments_cancels_and_shows_results(harness, monkeypatch):
    module, scene, dialogs, state = harness
    volumes = add_case(scene)
    widget = make_widget(module, state)
    widget.enter()
    ui = widget.ui

    monkeypatch.setenv("LCKD_FAKE_MODE", "hang")
    before = sceneSnapshot(scene)
    ui.segmentButton.click()
    assert widget.panel.run.job is not None and widget._timer.active
    assert ui.segmentButton.text == "Cancel" and ui.segmentButton.enabled is True
    assert ui.t1Selector.enabled is False and ui.modelComboBox.enabled is False
    deadline = time.monotonic() + 30
    while widget.panel.run.job.process.stage != "infer" and time.monotonic() < deadline:
        widget.pollJob()
        time.sleep(0.02)
    assert "working" in ui.logTextEdit.lines and ui.progressBar.value == 15
    ui.segmentButton.click()  # Cancel
    assert widget.panel.run.job is None and not widget._timer.active and ui.segmentButton.text == "Segment"
    assert ui.logTextEdit.lines[-1].startswith("Cancelled") and sceneSnapshot(scene) == before

    monkeypatch.setenv("LCKD_FAKE_MODE", "ok")
    ui.segmentButton.click()
    run_until_done(widget)
    assert ui.progressBar.value == 100 and ui.logTextEdit.lines[-2].startswith("Done in")
    node = widget._parameterNode.outputSegmentation
    assert node is not None and node.GetName() == "Case T1 post Gd tumour"
    assert [ui.volumesTable.cells[(row, 0)] for row in range(3)] == [
        "Enhancing tumour (ET)", "Tumour core (TC)", "Whole tumour (WT)"]
    assert float(ui.volumesTable.cells[(2, 1)]) > float(ui.volumesTable.cells[(0, 1)]) > 0
    # the fake segmenter's quality estimate and review flag (ET): in the table, above it and in the log
    assert [ui.volumesTable.cells[(row, 2)] for row in range(3)] == ["0.41 (review)", "0.90", "0.95"]
    assert ui.reviewLabel.text == ui.logTextEdit.lines[-1] == "Enhancing tumour (ET) uncertain: review it."
    assert state["layers"][-1] == {"background": volumes["t1ce"], "fit": True}  # no map asked for: no overlay
    ui.show3DButton.checked = True
    ui.show3DButton.emit("toggled(bool)", True)
    assert node.GetSegmentation().GetNthSegment(0).GetRepresentation("Closed surface") is not None
    assert node.GetDisplayNode().GetVisibility3D()


def test_widget_offers_the_cpu_after_gpu_out_of_memory(harness, monkeypatch):
    module, scene, dialogs, state = harness
    add_case(scene)
    widget = make_widget(module, state)
    widget.enter()
    widget.ui.deviceComboBox.setCurrentIndex(1)  # GPU
    monkeypatch.setenv("LCKD_FAKE_MODE", "oom")
    widget.ui.segmentButton.click()
    assert widget.panel.run.job.options.device == "cuda"
    monkeypatch.setenv("LCKD_FAKE_MODE", "ok")  # the retry starts while the failed run is being finished
    deadline = time.monotonic() + 30
    while (widget.panel.run.job is not None and widget.panel.run.job.options.device == "cuda"
           and time.monotonic() < deadline):
        widget.pollJob()
        time.sleep(0.02)
    assert any("ran out of memory" in text for kind, text in dialogs.shown if kind == "confirm")
    assert widget.panel.run.job is not None and widget.panel.run.job.options.device == "cpu"
    run_until_done(widget)
    assert widget._parameterNode.outputSegmentation is not None

    monkeypatch.setenv("LCKD_FAKE_MODE", "error")
    widget.ui.segmentButton.click()
    run_until_done(widget)
    assert dialogs.shown[-1][0] == "error" and "the FLAIR is empty" in dialogs.shown[-1][1]


def test_widget_models_from_file_and_download_after_consent(harness, monkeypatch, tmp_path):
    module, scene, dialogs, state = harness
    add_case(scene)
    widget = make_widget(module, state)
    ui = widget.ui
    assert ui.modelComboBox.itemData(0) == "lckd-brats2018-cpu" and ui.modelComboBox.count == 2

    state["path"] = str(tmp_path / "model.pt")
    Path(state["path"]).write_bytes(b"\x80\x04" + b"\0" * 64)
    ui.loadWeightsButton.click()
    assert dialogs.shown[-1][0] == "error" and "model.pt" in dialogs.shown[-1][1] and ui.modelComboBox.count == 2

    tiny = make_tiny_model_file(tmp_path / "tiny.safetensors", validation=syntheticValidationTable())
    state["path"] = str(tiny)
    ui.loadWeightsButton.click()
    assert ui.modelComboBox.count == 3 and ui.modelComboBox.itemData(ui.modelComboBox.currentIndex) == "file"
    assert widget.panel.models.localPath(widget.currentModel()) == tiny and "tiny" in ui.modelInfoLabel.text
    assert make_widget(module, state).ui.modelComboBox.itemData(2) == "file"  # remembered

    entry = modelCatalog.ModelEntry(name="tiny-remote", version="1", title="Tiny (remote)", sha256=modelCatalog.sha256(
        tiny), licence="MIT", trainingData="none", inputs="any", url=tiny.as_uri(), sizeBytes=tiny.stat().st_size)
    widget.panel.models.reload(lambda: [entry])
    widget.populateModels()
    ui.modelComboBox.setCurrentIndex(0)
    assert widget.panel.models.localPath(widget.currentModel()) is None
    assert "Not downloaded yet" in ui.modelInfoLabel.text
    dialogs.agree = False
    assert widget.panel.models.obtain(widget.currentModel(), slicer.util) is None
    assert not modelCatalog.downloadedFiles()
    dialogs.agree = True
    path = widget.panel.models.obtain(widget.currentModel(), slicer.util)
    assert path == modelCatalog.defaultCacheFolder() / "tiny-remote-1.safetensors" and path.is_file()
    assert state["dialog"].values[-1] == 100 and "Licence: MIT" in dialogs.shown[-1][1]
    ui.deleteModelsButton.click()
    assert not path.exists() and "1 downloaded model file(s) deleted." in ui.logTextEdit.lines
    ui.openModelsFolderButton.click()
    assert state["opened"][-1] == ("url", str(modelCatalog.defaultCacheFolder()))
    ui.versionsButton.click()
    assert dialogs.shown[-1][0] == "info" and "nibabel: " in dialogs.shown[-1][1]


def test_logic_class_and_parameter_node(harness):
    module, scene, dialogs, state = harness
    logic = module.LCKDSegmentationLogic()
    parameters = logic.getParameterNode()
    assert parameters.brats2023Labels is False and parameters.postprocess is False and parameters.preprocess is False
    assert parameters.skipMirroring is False
    assert logic.getParameterNode().parameterNode is parameters.parameterNode
    summary = logic.implementation.modelSummary(MODULE / "Resources" / "Models" / "lckd-phantom-demo.safetensors")
    assert summary.name == "lckd-phantom-demo"
    assert np.isfinite(summary.expectedDice(["t1"])["ET"])


class SampleDataStandIn:
    """Slicer's Sample Data module reduced to what the in-Slicer test uses: file:// sources loaded as volumes."""

    sources = {}

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**kwargs):
            SampleDataStandIn.sources[kwargs["sampleName"]] = kwargs

        def downloadSamples(self, name):
            from urllib.parse import urlparse
            from urllib.request import url2pathname

            import nibabel as nib

            source = SampleDataStandIn.sources[name]
            nodes = []
            for uri, node_name in zip(source["uris"], source["nodeNames"]):
                image = nib.load(url2pathname(urlparse(uri).path))
                nodes.append(add_volume(slicer.mrmlScene, node_name, np.asarray(image.dataobj), image.affine))
            return nodes


@pytest.mark.skipif(not os.environ.get("LCKD_SLICER_SELFTEST"), reason="minutes: set LCKD_SLICER_SELFTEST=1")
def test_in_slicer_self_test_runs_on_the_stand_ins(harness, monkeypatch):
    """LCKDSegmentationTest.runTest() itself (sample phantom, tiny model, refusals, cancel, 15 subsets, the
    uncertainty overlay)."""
    module, scene, dialogs, state = harness
    monkeypatch.setitem(sys.modules, "SampleData", SampleDataStandIn)
    test = module.LCKDSegmentationTest()
    monkeypatch.setattr(scene, "Clear", lambda *args: None, raising=False)
    test.runTest()
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 15 + 1
    assert scene.GetFirstNodeByName("Phantom_t1ce tumour uncertainty") is not None


# -- what would go wrong inside the application ------------------------------------------------------

def _fail(error):
    def raiser(*args, **kwargs):
        raise error

    return raiser


@pytest.mark.parametrize("where, error", [
    ("LCKDSegmentationLib.logic.exportVolume", RuntimeError("vtkITK could not write the volume")),
    ("LCKDSegmentationLib.logic.readModelSummary", ModelFileError("model.safetensors: not an LCKD model card")),
    ("LCKDSegmentationLib.logic.importLabelMap", ImportError("No module named 'nibabel'")),
    ("LCKDSegmentationLib.logic.regionVolumesMl", RuntimeError("no binary labelmap")),
])
def test_every_error_ends_in_a_message_a_log_line_and_segment(harness, monkeypatch, where, error):
    """An export (start) or import (finish) error: error box, log line, the button back to Segment, the scene
    as it was; the next run works."""
    module, scene, dialogs, state = harness
    add_case(scene)
    widget = make_widget(module, state)
    widget.enter()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # the application's scene always has it
    before = sceneSnapshot(scene)
    monkeypatch.setenv("LCKD_FAKE_MODE", "ok")
    monkeypatch.setattr(where, _fail(error))
    widget.ui.segmentButton.click()
    run_until_done(widget)
    assert dialogs.shown[-1] == ("error", f"The segmentation failed: {error}")
    assert widget.ui.logTextEdit.lines[-1] == f"Failed: {error}"
    assert widget.ui.segmentButton.text == "Segment" and widget.ui.segmentButton.enabled
    assert widget.ui.t1Selector.enabled and not widget._timer.active
    assert sceneSnapshot(scene) == before and widget.panel.run.job is None


def test_an_installation_failure_ends_in_a_message_and_nothing_runs(harness, monkeypatch):
    module, scene, dialogs, state = harness
    add_case(scene)
    widget = make_widget(module, state)
    widget.enter()
    monkeypatch.setattr("LCKDSegmentationLib.dependencies.ensureDependencies",
                        _fail(RuntimeError("pip failed: no network")))
    widget.ui.segmentButton.click()
    assert dialogs.shown[-1] == ("error", "Installing Python packages failed: pip failed: no network")
    assert widget.ui.logTextEdit.lines[-1] == "Python packages are missing; nothing was done."
    assert widget.panel.run.job is None and widget.ui.segmentButton.text == "Segment"


def test_only_plain_scalar_volumes_are_assigned(harness):
    """Vector (RGB), tensor and diffusion-weighted volumes are scalar volume subclasses the slots cannot take."""
    module, scene, dialogs, state = harness
    for kind, name in (("vtkMRMLVectorVolumeNode", "FLAIR colour"), ("vtkMRMLDiffusionTensorVolumeNode", "T1 DTI"),
                       ("vtkMRMLDiffusionWeightedVolumeNode", "T2 DWI"), ("vtkMRMLLabelMapVolumeNode", "T1ce labels")):
        scene.AddNewNodeByClass(kind, name)
    widget = make_widget(module, state)
    widget.enter()
    widget.ui.autoAssignButton.click()
    assert widget.panel.selected(widget._parameterNode) == {"flair": None, "t1": None, "t1ce": None, "t2": None}
    volumes = add_case(scene)
    assert widget.panel.selected(widget._parameterNode) == volumes


@pytest.mark.parametrize("version", [(5, 8), (5, 10)])
def test_exit_disconnects_the_gui_and_never_connects_it_twice(harness, monkeypatch, version):
    module, scene, dialogs, state = harness
    monkeypatch.setitem(GUI, "version", version)
    widget = make_widget(module, state)
    for _ in range(3):
        widget.enter()
        assert len(GUI["live"]) == 1
        widget.exit()
    # Slicer >= 5.10 can undo the connection; 5.8 cannot (connectGui returns None), so it is kept, once
    assert len(GUI["live"]) == (1 if version < (5, 10) else 0)
    scene.Clear(0)  # a new scene has a new parameter node: one connection, to it
    widget.onSceneStartClose(None, None)
    widget.enter()
    assert [node for node, _tag in GUI["live"]][-1] == widget._parameterNode.parameterNode.GetID()


@pytest.mark.parametrize("parameter, flag", [("preprocess", "--preprocess"), ("skipMirroring", "--no-tta"),
                                             ("uncertaintyMap", "--uncertainty")])
def test_option_checkboxes_pass_their_flag_to_the_segmenter(harness, monkeypatch, tmp_path, parameter, flag):
    module, scene, dialogs, state = harness
    add_case(scene)
    widget = make_widget(module, state)
    widget.enter()
    monkeypatch.setenv("LCKD_FAKE_MODE", "ok")
    for checked in (False, True):
        setattr(widget._parameterNode, parameter, checked)
        widget.ui.segmentButton.click()
        run_until_done(widget)
        arguments = json.loads((tmp_path / "record.json").read_text())["args"]
        assert (flag in arguments) is checked


def test_sample_data_is_registered_with_load_file_types(harness):
    module, scene, dialogs, state = harness
    module.registerStartupItems()
    assert state["samples"][0]["loadFileTypes"] == ["VolumeFile"] * 4


def test_texts_are_translated_in_the_file_that_owns_them(harness):
    """slicer.i18n.tr takes its context from the calling file: each text must be translated there, and
    only literal strings can be extracted for translators."""
    module, scene, dialogs, state = harness
    add_case(scene)
    widget = make_widget(module, state)
    widget.enter()
    widget.ui.modelComboBox.setCurrentIndex(1)  # the demo model, whose card has a validation table
    contexts = {context for context, _text in state["translations"]}
    assert {"LCKDSegmentationLib.modelCard", "LCKDSegmentationLib.panelState"} <= contexts
    by_text = {text: context for context, text in state["translations"]}
    assert by_text["Expected Dice with {inputs}: {scores}."] == "LCKDSegmentationLib.modelCard"
    assert by_text["Segment"] == "LCKDSegmentationLib.panelState"
    for path in [MODULE / "LCKDSegmentation.py", *sorted((MODULE / "LCKDSegmentationLib").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_", "tr"):
                assert all(isinstance(argument, ast.Constant) and isinstance(argument.value, str)
                           for argument in node.args), f"{path.name}:{node.lineno}: _() of a non-literal"


def test_the_uncertainty_overlay_is_shown_and_the_review_cleared_by_the_next_run(harness, monkeypatch):
    module, scene, dialogs, state = harness
    volumes = add_case(scene)
    widget = make_widget(module, state)
    widget.enter()
    monkeypatch.setenv("LCKD_FAKE_MODE", "ok")
    widget._parameterNode.uncertaintyMap = True
    widget.ui.segmentButton.click()
    run_until_done(widget)
    overlay = scene.GetFirstNodeByName("Case T1 post Gd tumour uncertainty")
    assert overlay is not None and overlay.GetDisplayNode().GetApplyThreshold()
    assert state["layers"][-1] == {"background": volumes["t1ce"], "foreground": overlay, "foregroundOpacity": 0.6,
                                   "fit": True}
    assert widget.ui.reviewLabel.text.startswith("Enhancing tumour (ET) uncertain")
    monkeypatch.setenv("LCKD_FAKE_MODE", "hang")
    widget.ui.segmentButton.click()  # a new run: the old review no longer applies
    assert widget.ui.reviewLabel.text == ""
    widget.ui.segmentButton.click()  # Cancel
