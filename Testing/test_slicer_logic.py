"""The Slicer module's logic on real MRML (slicer-core): scene, volumes, transforms, segmentation
nodes, terminology, .seg.nrrd, cancel, refusals, model catalogue, packaging list."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402  (after the skip: vtk comes with slicer-core)
from vtkmodules.util import numpy_support  # noqa: E402

from conftest import make_tiny_model_file, synthetic_head  # noqa: E402
from lckd.sequences import all_subsets  # noqa: E402
from LCKDSegmentationLib import modelCatalog  # noqa: E402
from LCKDSegmentationLib.logic import LCKDSegmentationLogic, SegmentationOptions  # noqa: E402
from LCKDSegmentationLib.segmentationImport import SEGMENTS, addLabelMapNode  # noqa: E402
from LCKDSegmentationLib.sequenceAssignment import autoAssign, checkAssignment, guessSequence  # noqa: E402
from LCKDSegmentationLib.volumeExport import exportVolume, worldIJKToRAS  # noqa: E402

pytestmark = pytest.mark.xdist_group("slicer")
MODULE = Path(__file__).resolve().parents[1] / "LCKDSegmentation"


def matrix(array):
    result = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            result.SetElement(row, column, float(array[row][column]))
    return result


def add_volume(scene, name, data, affine):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(*data.shape)
    flat = np.ascontiguousarray(data.transpose(2, 1, 0)).ravel().astype(np.float32)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    node.SetIJKToRASMatrix(matrix(affine))
    node.SetAndObserveImageData(image)
    return node


@pytest.fixture
def scene_with_volumes():
    """FLAIR on an LPS 2.5 mm grid under a translation, the others on RAS 2 mm grids."""
    scene = slicer.vtkMRMLScene()
    ras = np.array([[2.0, 0, 0, -50], [0, 2.0, 0, -56], [0, 0, 2.0, -44], [0, 0, 0, 1]])
    lps = np.array([[-2.5, 0, 0, 50], [0, -2.5, 0, 55], [0, 0, 2.5, -45], [0, 0, 0, 1]])
    shift = np.eye(4)
    shift[:3, 3] = (4.0, -2.0, 3.0)
    volumes = {}
    for index, name in enumerate(("t1", "t1ce", "t2")):
        volumes[name] = add_volume(scene, f"case_{name}", synthetic_head((50, 56, 44), ras, seed=index), ras)
    # FLAIR stored 4 mm off and moved back into place by its parent transform
    moved = lps.copy()
    moved[:3, 3] -= shift[:3, 3]
    volumes["flair"] = add_volume(scene, "case_flair", synthetic_head((40, 44, 36), lps, seed=7), moved)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    transform.SetMatrixTransformToParent(matrix(shift))
    volumes["flair"].SetAndObserveTransformNodeID(transform.GetID())
    return scene, volumes, lps


def test_sequence_names_are_assigned_and_checked():
    assert autoAssign(["T1 post Gd", "FLAIR", "t2w", "T1 MPRAGE", "DWI"]) == {
        "t1ce": "T1 post Gd", "flair": "FLAIR", "t2": "t2w", "t1": "T1 MPRAGE"}
    assert guessSequence("BraTS-GLI-00000-000-t1c") == "t1ce" and guessSequence("x-t2f") == "flair"
    node = object()
    with pytest.raises(ValueError, match="same volume"):
        checkAssignment({"t1": node, "t2": node})
    with pytest.raises(ValueError, match="at least one"):
        checkAssignment({"t1": None})


def test_export_applies_parent_transforms(scene_with_volumes, tmp_path):
    scene, volumes, lps = scene_with_volumes
    np.testing.assert_allclose(worldIJKToRAS(volumes["flair"]), lps)
    path = exportVolume(volumes["flair"], tmp_path / "flair.nii.gz")
    np.testing.assert_allclose(nib.load(str(path)).affine, lps, atol=1e-5)


def test_refusals_leave_the_scene_unchanged(scene_with_volumes, tmp_path):
    scene, volumes, _ = scene_with_volumes
    logic = LCKDSegmentationLogic()
    options = SegmentationOptions(modelPath=make_tiny_model_file(tmp_path / "m.safetensors"), device="cpu")
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="same volume"):
        logic.start({"t1": volumes["t1"], "t1ce": volumes["t1"]}, options)
    with pytest.raises(ValueError, match="at least one"):
        logic.start({}, options)
    assert scene.GetNumberOfNodes() == count


def _segment_masks(segmentation_node, geometry_node):
    """Each segment exported on its own onto ``geometry_node``'s grid, indexed [i, j, k]."""
    scene = segmentation_node.GetScene()
    masks = {}
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentation.GetSegmentIdBySegment(segment))
        exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, exported, geometry_node)
        image = exported.GetImageData()
        dims = image.GetDimensions()
        array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)
        masks[segment.GetName()] = (array > 0, segment)
        scene.RemoveNode(exported)
    return masks


def test_all_fifteen_subsets_match_the_cli_label_map(scene_with_volumes, tmp_path):
    scene, volumes, _ = scene_with_volumes
    logic = LCKDSegmentationLogic()
    options = SegmentationOptions(modelPath=make_tiny_model_file(tmp_path / "m.safetensors", seed=4), device="cpu")
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    for subset in all_subsets():
        job = logic.start({s: volumes[s] for s in subset}, options)
        done = job.process.wait()
        assert done is not None, job.process.error
        written = nib.load(str(job.output))
        labels = np.asarray(written.dataobj)
        node, _ = logic.finish(job, scene, name="+".join(subset))
        assert not job.folder.exists()
        geometry = addLabelMapNode(scene, labels, written.affine, "geometry")
        masks = _segment_masks(node, geometry)
        scene.RemoveNode(geometry)
        for value in np.unique(labels[labels > 0]):
            mask, segment = masks[SEGMENTS[int(value)]]
            np.testing.assert_array_equal(mask, labels == value)
            entry = vtk.reference("")
            assert segment.GetTag(tag, entry)
            assert re.search(r"(SCT\^6574001|SCT\^79654002|NCIt\^C113842)", entry.get())
            assert "SCT^12738006^Brain" in entry.get()
        assert node.GetSegmentation().GetConversionParameter("Reference image geometry")
        assert done["sequences"] == list(subset)


def test_seg_nrrd_round_trip(scene_with_volumes, tmp_path):
    scene, volumes, _ = scene_with_volumes
    logic = LCKDSegmentationLogic()
    options = SegmentationOptions(modelPath=make_tiny_model_file(tmp_path / "m.safetensors", seed=4), device="cpu")
    node, _ = logic.segment(scene, {"t1ce": volumes["t1ce"], "flair": volumes["flair"]}, options)
    path = tmp_path / "tumour.seg.nrrd"
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(node)
    other = slicer.vtkMRMLScene()
    loaded = other.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    geometry = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    geometry.Copy(volumes["t1ce"])
    before, after = _segment_masks(node, volumes["t1ce"]), _segment_masks(loaded, volumes["t1ce"])
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(before[name][0], after[name][0])


def test_cancel_mid_run_leaves_the_scene_as_it_was(scene_with_volumes, tmp_path):
    scene, volumes, _ = scene_with_volumes
    logic = LCKDSegmentationLogic()
    options = SegmentationOptions(modelPath=make_tiny_model_file(tmp_path / "m.safetensors"), device="cpu")
    count = scene.GetNumberOfNodes()
    job = logic.start(dict(volumes), options)
    deadline = time.time() + 60
    while not any(e.get("event") == "stage" for e in job.process.poll()) and time.time() < deadline:
        time.sleep(0.05)
    logic.cancel(job)
    assert job.process.process.poll() is not None
    assert not job.folder.exists()
    assert scene.GetNumberOfNodes() == count
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finish(job, scene)
    assert scene.GetNumberOfNodes() == count


def test_expected_dice_text_comes_from_the_model_card(tmp_path):
    table = {"subsets": {"flair+t1": {"ET": 0.31, "TC": 0.52, "WT": 0.83},
                         "flair+t1+t1ce+t2": {"ET": 0.78, "TC": 0.81, "WT": 0.88}}}
    path = make_tiny_model_file(tmp_path / "m.safetensors", validation=table)
    text = LCKDSegmentationLogic().expectationText(path, ["flair", "t1"])
    assert "ET 0.31" in text and "missing T1ce, T2" in text and "WT 0.88" in text


def test_catalogue_download_verifies_checksums(tmp_path):
    source = make_tiny_model_file(tmp_path / "source.safetensors")
    entry = modelCatalog.ModelEntry(name="tiny", version="1", title="t", sha256=modelCatalog.sha256(source),
                                    licence="x", trainingData="x", inputs="x", times={}, url=source.as_uri())
    cache = tmp_path / "cache"
    progress = []
    path = modelCatalog.download(entry, cache, onProgress=lambda done, total: progress.append(done))
    assert path.read_bytes() == source.read_bytes() and progress[-1] == source.stat().st_size
    assert modelCatalog.localPath(entry, cache) == path
    entry.sha256 = "0" * 64
    entry.version = "2"
    with pytest.raises(ValueError, match="corrupt"):
        modelCatalog.download(entry, cache)
    assert not (cache / entry.fileName).exists() and not list(cache.glob(".download-*"))
    assert modelCatalog.deleteDownloaded(cache) == 1 and not cache.exists()


def test_catalogue_bundled_model_checksum():
    for entry in modelCatalog.loadCatalog():
        if entry.bundled:
            path = modelCatalog.localPath(entry)
            assert path is not None, f"bundled model {entry.bundled} is missing"
            assert modelCatalog.sha256(path) == entry.sha256


def test_every_module_file_is_listed_in_cmake():
    listed = (MODULE / "CMakeLists.txt").read_text()
    needed = [p for p in MODULE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
              and "Testing" not in p.relative_to(MODULE).parts and p.name != "CMakeLists.txt"]
    missing = [str(p.relative_to(MODULE)) for p in needed
               if str(p.relative_to(MODULE)).replace("LCKDSegmentation.", "${MODULE_NAME}.") not in listed
               and str(p.relative_to(MODULE)) not in listed]
    assert not missing, f"not listed in LCKDSegmentation/CMakeLists.txt: {missing}"
    for line in re.findall(r"^\s+(\S+\.(?:py|png|ui|json|txt|safetensors|gz))\s*$", listed, re.MULTILINE):
        assert (MODULE / line.replace("${MODULE_NAME}", "LCKDSegmentation")).is_file(), line
