"""Checks shared by the pytest suite (slicer-core, no Qt) and ``LCKDSegmentationTest`` inside Slicer,
so both run the same flow: a `tiny` model, every subset of sequences through the logic, each
segmentation node compared with the label map the segmenter wrote, cancel, refusals, the uncertainty
overlay.

Every check returns a list of problems (empty when all is well) instead of asserting, so each
test framework reports them its own way.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from lckd.sequences import all_subsets, subset_key

from .logic import LCKDSegmentationLogic, SegmentationOptions
from .segmentationImport import BRAIN, SEGMENTS, TYPE_CODES, labelMapNodeFromArray
from .volumeExport import numpyToVtkMatrix, vtkMatrixToNumpy

_TINY_MODEL_SCRIPT = """
import json, sys
import torch
from lckd.model_file import ModelCard, save_model
from lckd.network import PRESETS, LCKDNet
torch.manual_seed(int(sys.argv[2]))
model = LCKDNet(PRESETS["tiny"])
card = ModelCard(preset="tiny", network=model.config.to_dict(), tile_size=[32, 64, 64], spacing_mm=[2.0, 2.0, 2.0],
                 name="tiny-selftest", description="random tiny network for tests",
                 validation=json.loads(sys.argv[3]), mirror_axes=json.loads(sys.argv[4]))
save_model(sys.argv[1], model, card)
"""


def syntheticValidationTable() -> Dict:
    """A validation table over the 15 subsets (more sequences, higher Dice) for display tests."""
    subsets = {}
    for subset in all_subsets():
        base = 0.3 + 0.12 * len(subset)
        subsets[subset_key(subset)] = {"ET": round(base - 0.1, 3), "TC": round(base - 0.05, 3), "WT": round(base, 3)}
    return {"subsets": subsets, "cases": 2}


def makeTinyModel(path: Path, python: str, libraryFolder: Path, seed: int = 0,
                  validation: Optional[Dict] = None, mirrorAxes: Sequence[int] = ()) -> Path:
    """Write a randomly initialised `tiny` model with ``python`` (which needs torch and safetensors); with
    ``mirrorAxes`` its card asks for test-time mirroring along them."""
    import json
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(libraryFolder), env.get("PYTHONPATH")]))
    table = json.dumps(validation if validation is not None else syntheticValidationTable())
    completed = subprocess.run([python, "-c", _TINY_MODEL_SCRIPT, str(path), str(seed), table,
                                json.dumps(list(mirrorAxes))], cwd=str(libraryFolder), env=env, capture_output=True,
                               text=True, timeout=300)
    if completed.returncode != 0:
        raise RuntimeError(f"could not make the tiny model: {completed.stderr.strip()[-500:]}")
    return Path(path)


def _localAffine(segmentationNode, worldAffine: np.ndarray) -> np.ndarray:
    """A world voxel-to-RAS matrix expressed in the segmentation node's own (parent) frame."""
    import vtk

    parent = segmentationNode.GetParentTransformNode()
    if parent is None:
        return worldAffine
    toWorld = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(toWorld)
    return np.linalg.inv(vtkMatrixToNumpy(toWorld)) @ worldAffine


def segmentMasks(segmentationNode, labels: np.ndarray, worldAffine: np.ndarray) -> Dict[str, Tuple[np.ndarray, object]]:
    """Each segment exported alone onto the label map's grid: ``{name: (mask [i, j, k], segment)}``."""
    import slicer
    import vtk
    from vtkmodules.util import numpy_support

    scene = segmentationNode.GetScene()
    geometry = labelMapNodeFromArray(scene, np.zeros(labels.shape, np.uint8),
                                     _localAffine(segmentationNode, worldAffine), "LCKD self-test geometry")
    geometry.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
    masks = {}
    try:
        segmentation = segmentationNode.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segmentId)
            exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            try:
                if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                        segmentationNode, ids, exported, geometry):
                    raise RuntimeError(f"could not export segment {segmentId}")
                image = exported.GetImageData()
                dims = image.GetDimensions()
                array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
                array = array.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0)
                segment = segmentation.GetSegment(segmentId)
                masks[segment.GetName()] = (array > 0, segment)
            finally:
                scene.RemoveNode(exported)
    finally:
        scene.RemoveNode(geometry)
    return masks


def compareWithLabelMap(segmentationNode, labels: np.ndarray, worldAffine: np.ndarray,
                        referenceVolumeNode=None) -> List[str]:
    """Problems between a segmentation node and the label map it was made from (voxels, names, codes)."""
    import slicer
    import vtk

    problems = []
    masks = segmentMasks(segmentationNode, labels, worldAffine)
    values = [int(v) for v in np.unique(labels) if v > 0]
    expected = sorted(SEGMENTS[v] for v in values if v in SEGMENTS)
    if sorted(masks) != expected:
        problems.append(f"segments {sorted(masks)}, expected {expected}")
    tagName = slicer.vtkSegment.GetTerminologyEntryTagName()
    for value in values:
        name = SEGMENTS.get(value)
        if name is None:
            problems.append(f"unexpected label value {value}")
            continue
        if name not in masks:
            continue
        mask, segment = masks[name]
        if not np.array_equal(mask, labels == value):
            differing = int((mask != (labels == value)).sum())
            problems.append(f"segment {name}: {differing} voxels differ from label {value}")
        entry = vtk.reference("")
        if not segment.GetTag(tagName, entry):
            problems.append(f"segment {name} has no terminology entry")
        elif f"^{TYPE_CODES[name]}^" not in entry.get() or "^".join(BRAIN) not in entry.get():
            problems.append(f"segment {name}: terminology entry {entry.get()!r} lacks its code or the brain")
    geometry = segmentationNode.GetSegmentation().GetConversionParameter("Reference image geometry")
    if not geometry:
        problems.append("no reference image geometry")
    if referenceVolumeNode is not None:
        role = segmentationNode.GetReferenceImageGeometryReferenceRole()
        if segmentationNode.GetNodeReferenceID(role) != referenceVolumeNode.GetID():
            problems.append("the reference geometry is not the reference volume")
        if segmentationNode.GetTransformNodeID() != referenceVolumeNode.GetTransformNodeID():
            problems.append("the segmentation is not under the reference volume's transform")
    return problems


def sceneSnapshot(scene) -> Tuple[int, Tuple[str, ...]]:
    """Node count and node IDs, to show that a scene is unchanged."""
    ids = tuple(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    return len(ids), ids


def checkSubsets(logic: LCKDSegmentationLogic, scene, volumes: Mapping[str, object], options: SegmentationOptions,
                 subsets: Optional[Iterable[Sequence[str]]] = None, concurrency: int = 3,
                 timeout: float = 600.0) -> Dict[str, List[str]]:
    """Segment each subset (several segmenter processes at once) and compare every result with the
    label map its segmenter wrote. Returns ``{subset key: problems}``; all lists empty when fine."""
    import nibabel as nib

    pending = [tuple(subset) for subset in (subsets if subsets is not None else all_subsets())]
    running = []
    problems: Dict[str, List[str]] = {}
    deadline = time.monotonic() + timeout
    while pending or running:
        while pending and len(running) < max(1, concurrency):
            subset = pending.pop(0)
            running.append((subset, logic.start({s: volumes[s] for s in subset}, options)))
        for item in list(running):
            subset, job = item
            job.process.poll()
            if not job.process.finished:
                continue
            running.remove(item)
            key = subset_key(subset)
            found: List[str] = []
            try:
                job.process.wait()
                written = nib.load(str(job.output)) if job.output.is_file() else None
                labels = None if written is None else np.asarray(written.dataobj).astype(np.uint8)
                affine = None if written is None else written.affine
                result = logic.finish(job, scene, name=f"LCKD {key}")
            except Exception as error:  # reported, not raised: the other subsets still run
                problems[key] = [f"{type(error).__name__}: {error}"]
                continue
            if job.folder.exists():
                found.append("the temporary folder was left behind")
            if result.sequences != list(subset) or result.event.get("sequences") != list(subset):
                found.append(f"sequences {result.event.get('sequences')}, expected {list(subset)}")
            reference = job.volumes[job.reference]
            found += compareWithLabelMap(result.segmentationNode, labels, affine, reference)
            for region, value in result.segmenterVolumesMl.items():
                if abs(result.volumesMl[region] - value) > 0.01 + 1e-3 * value:
                    found.append(f"{region}: {result.volumesMl[region]:.3f} mL in the node, "
                                 f"{value:.3f} mL by the segmenter")
            problems[key] = found
        if time.monotonic() > deadline:
            for _, job in running:
                logic.cancel(job)
            raise TimeoutError(f"subsets still running after {timeout} s")
        time.sleep(0.05)
    return problems


def checkCancel(logic: LCKDSegmentationLogic, scene, volumes: Mapping[str, object], options: SegmentationOptions,
                waitFor: str = "stage", timeout: float = 120.0) -> List[str]:
    """Cancel a run once it has started working (``waitFor``: an event kind); the scene must not change."""
    before = sceneSnapshot(scene)
    job = logic.start(volumes, options)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.process.running:
        if any(event.get("event") == waitFor for event in job.process.poll()):
            break
        time.sleep(0.02)
    stillRunning = job.process.running
    logic.cancel(job)
    problems = []
    if not stillRunning:
        problems.append("the segmenter ended before it could be cancelled")
    if job.process.process.poll() is None:
        problems.append("the segmenter is still running after cancel")
    if job.folder.exists():
        problems.append("the temporary folder was left behind")
    try:
        logic.finish(job, scene)
        problems.append("finish() accepted a cancelled job")
    except RuntimeError:
        pass
    if sceneSnapshot(scene) != before:
        problems.append("the scene changed")
    return problems


def checkRefusals(logic: LCKDSegmentationLogic, scene, volumes: Mapping[str, object],
                  options: SegmentationOptions) -> List[str]:
    """One volume in two slots and no volume at all must be refused without touching the scene."""
    before = sceneSnapshot(scene)
    problems = []
    some = next(node for node in volumes.values() if node is not None)
    for label, assignment in (("a duplicated input", {"t1": some, "t2": some}), ("no input", {})):
        try:
            logic.start(assignment, options)
            problems.append(f"{label} was accepted")
        except ValueError:
            pass
    if sceneSnapshot(scene) != before:
        problems.append("the scene changed")
    return problems


def checkUncertainty(logic: LCKDSegmentationLogic, scene, volumes: Mapping[str, object],
                     options: SegmentationOptions) -> List[str]:
    """Segment with the uncertainty map (``options.uncertaintyMap``, a model averaging several members): the
    map's node must lie on the reference volume's world grid with values from 0 to 1, shown through the
    module's colour table with a threshold; the quality estimate must cover ET, TC and WT."""
    from .uncertaintyOverlay import COLOR_NODE_NAME
    from .volumeExport import volumeArray, worldIJKToRAS

    result = logic.segment(scene, volumes, options, timeout=600)
    node, reference = result.uncertaintyNode, volumes[result.reference]
    if node is None:
        return ["no uncertainty map was imported"]
    problems = []
    values = volumeArray(node)
    if values.shape != volumeArray(reference).shape or not np.allclose(worldIJKToRAS(node), worldIJKToRAS(reference)):
        problems.append("the map is not on the reference volume's grid")
    if values.min() < 0 or values.max() > 1:
        problems.append(f"map values from {values.min()} to {values.max()}, not 0 to 1")
    display = node.GetDisplayNode()
    color = scene.GetNodeByID(display.GetColorNodeID()) if display is not None else None
    if color is None or color.GetName() != COLOR_NODE_NAME or not display.GetApplyThreshold():
        problems.append("the map is not shown through the uncertainty colour table with a threshold")
    if sorted(result.quality) != ["ET", "TC", "WT"] or not all(0 <= v <= 1 for v in result.quality.values()):
        problems.append(f"quality estimate {result.quality}")
    return problems


def moveUnderTransform(scene, volumeNode, translation=(4.0, -2.0, 3.0), degrees: float = 10.0,
                       keepWorldPosition: bool = True):
    """Put a volume under a new linear transform (a rotation about S and a shift); returns the transform.

    With ``keepWorldPosition`` the node's own grid is moved the opposite way first, so the image stays
    where it was in the world while its stored geometry is rotated.
    """
    import vtk

    angle = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix[:3, 3] = translation
    if keepWorldPosition:
        ijkToRAS = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRAS)
        volumeNode.SetIJKToRASMatrix(numpyToVtkMatrix(np.linalg.inv(matrix) @ vtkMatrixToNumpy(ijkToRAS)))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", f"{volumeNode.GetName()} transform")
    transform.SetMatrixTransformToParent(numpyToVtkMatrix(matrix))
    volumeNode.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def flippedCopy(scene, volumeNode, name: str):
    """A new volume with the same image in the world on another grid: the I and J axes reversed."""
    import vtk
    from vtkmodules.util import numpy_support

    from .volumeExport import localIJKToRAS, volumeArray

    data = np.ascontiguousarray(volumeArray(volumeNode)[::-1, ::-1, :])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    image = vtk.vtkImageData()
    image.SetDimensions(*data.shape)
    flat = np.ascontiguousarray(data.transpose(2, 1, 0)).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    copy.SetIJKToRASMatrix(numpyToVtkMatrix(localIJKToRAS(volumeNode) @ flip))
    copy.SetAndObserveImageData(image)
    copy.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    return copy


def runInSlicer(test, logic: LCKDSegmentationLogic, scene, sampleDataModule=None) -> None:
    """``LCKDSegmentationTest``'s steps: ``test`` is the unittest case (assertions, ``delayDisplay``).

    The sample phantom is loaded through Slicer's Sample Data module, the FLAIR copied onto a flipped
    grid and the T1ce put under a transform; then refusals, cancel and all 15 subsets with a tiny model,
    and the uncertainty overlay with a tiny model mirrored along x.
    """
    import shutil
    import tempfile

    from .dependencies import ensureDependencies
    from .sampleData import SAMPLE_NAME, registerSampleData
    from .sequenceAssignment import autoAssign

    if sampleDataModule is None:
        import SampleData as sampleDataModule  # Slicer's Sample Data module
    # under --testing, missing packages are installed without asking (and logged); present ones are left alone
    test.assertTrue(ensureDependencies(askConfirmation=False), "Python packages are missing")
    test.delayDisplay("Loading the phantom sample")
    registerSampleData(sampleDataModule)
    nodes = sampleDataModule.SampleDataLogic().downloadSamples(SAMPLE_NAME)
    test.assertEqual(len(nodes), 4)
    byName = {node.GetName(): node for node in nodes}
    volumes = {sequence: byName[name] for sequence, name in autoAssign(list(byName)).items()}
    test.assertEqual(sorted(volumes), ["flair", "t1", "t1ce", "t2"])
    volumes["flair"] = flippedCopy(scene, volumes["flair"], "Phantom_flair_flipped")
    moveUnderTransform(scene, volumes["t1ce"])

    test.delayDisplay("Making a tiny model")
    folder = Path(tempfile.mkdtemp(prefix="LCKDSegmentationTest-"))
    try:
        model = makeTinyModel(folder / "tiny.safetensors", logic.python, logic.libraryFolder)
        options = SegmentationOptions(modelPath=model, device="cpu", threads=1)
        test.delayDisplay("Refusals")
        test.assertEqual(checkRefusals(logic, scene, volumes, options), [])
        test.delayDisplay("Cancel")
        test.assertEqual(checkCancel(logic, scene, volumes, options), [])
        test.delayDisplay("Every subset of sequences")
        problems = checkSubsets(logic, scene, volumes, options, concurrency=2)
        test.assertEqual(len(problems), 15)
        test.assertEqual({key: found for key, found in problems.items() if found}, {})
        test.delayDisplay("Uncertainty overlay")
        mirrored = makeTinyModel(folder / "mirrored.safetensors", logic.python, logic.libraryFolder, mirrorAxes=[2])
        test.assertEqual(checkUncertainty(logic, scene, {"t2": volumes["t2"], "t1ce": volumes["t1ce"]},
                                          SegmentationOptions(modelPath=mirrored, device="cpu", threads=1,
                                                              uncertaintyMap=True)), [])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    test.delayDisplay("Test passed")
