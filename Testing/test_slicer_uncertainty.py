"""The uncertainty overlay and the quality estimate in the Slicer module's logic, on Slicer's real MRML classes
(`slicer-core`): the map becomes a scalar volume node on the reference volume's geometry, coloured with the
module's colour table and transparent where certain; the quality estimate and the review flag reach the result,
the segmentation node's attributes and the Results table; failures leave the scene as it was."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
from test_slicer_logic import RAS_2MM, add_volume, rotation, write_fake_library  # noqa: E402

from conftest import make_tiny_model_file, synthetic_head  # noqa: E402
from LCKDSegmentationLib import selfTest  # noqa: E402
from LCKDSegmentationLib.logic import LCKDSegmentationLogic, SegmentationError, SegmentationOptions  # noqa: E402
from LCKDSegmentationLib.resultsView import UNCERTAINTY_OPACITY, qualityText, resultsView, reviewText  # noqa: E402
from LCKDSegmentationLib.uncertaintyOverlay import COLOR_NODE_NAME, SHOW_ABOVE, importUncertaintyMap  # noqa: E402
from LCKDSegmentationLib.volumeExport import localIJKToRAS, volumeArray, worldIJKToRAS  # noqa: E402

pytestmark = pytest.mark.xdist_group("slicer")
SHAPE = (50, 56, 44)


@pytest.fixture
def scene_and_volumes():
    """T2 on a RAS 2 mm grid, T1ce on the same world grid but stored rotated under a rigid transform, in a study."""
    scene = slicer.vtkMRMLScene()
    volumes = {"t2": add_volume(scene, "case_T2", synthetic_head(SHAPE, RAS_2MM, seed=3), RAS_2MM),
               "t1ce": add_volume(scene, "case_t1ce", synthetic_head(SHAPE, RAS_2MM, seed=2), RAS_2MM,
                                  transform=rotation(12.0))}
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient"), "MR study")
    for node in volumes.values():
        hierarchy.CreateItem(study, node)
    return scene, volumes, study


@pytest.fixture
def fake_logic(tmp_path, monkeypatch):
    library = write_fake_library(tmp_path, monkeypatch)
    return LCKDSegmentationLogic(python=sys.executable, libraryFolder=library), tmp_path


def write_map(path, values, affine):
    nib.save(nib.Nifti1Image(values.astype(np.float32), affine), str(path))
    return path


def test_the_map_becomes_a_transparent_where_certain_overlay_on_the_reference_geometry(scene_and_volumes, tmp_path):
    scene, volumes, study = scene_and_volumes
    reference = volumes["t1ce"]
    values = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    path = write_map(tmp_path / "uncertainty.nii.gz", values, worldIJKToRAS(reference))
    node = importUncertaintyMap(scene, path, "case tumour uncertainty", referenceVolumeNode=reference)
    # on the reference's own grid, under its transform: the two share one geometry
    assert node.GetTransformNodeID() == reference.GetTransformNodeID()
    np.testing.assert_allclose(localIJKToRAS(node), localIJKToRAS(reference))
    np.testing.assert_array_equal(volumeArray(node), values)
    display = node.GetDisplayNode()
    color = scene.GetNodeByID(display.GetColorNodeID())
    assert color.GetName() == COLOR_NODE_NAME and color.GetNumberOfColors() == 256
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(SHOW_ABOVE)
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((SHOW_ABOVE, 1.0))
    assert not display.GetAutoWindowLevel() and not display.GetAutoThreshold()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    # a second map reuses the scene's colour table
    other = importUncertaintyMap(scene, path, "again", referenceVolumeNode=reference)
    assert other.GetDisplayNode().GetColorNodeID() == color.GetID()
    assert scene.GetNodesByClassByName("vtkMRMLColorTableNode", COLOR_NODE_NAME).GetNumberOfItems() == 1


def test_a_map_off_the_reference_grid_keeps_its_own_geometry(scene_and_volumes, tmp_path):
    scene, volumes, _ = scene_and_volumes
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    path = write_map(tmp_path / "map.nii", np.full((10, 12, 8), 0.5), affine)
    node = importUncertaintyMap(scene, path, "map", referenceVolumeNode=volumes["t2"])
    assert node.GetTransformNodeID() is None
    np.testing.assert_allclose(localIJKToRAS(node), affine)


@pytest.mark.parametrize("values", [np.full(SHAPE, 1.5), np.full((4, 4, 4, 2), 0.5), np.full(SHAPE, np.nan)])
def test_a_file_that_is_no_uncertainty_map_leaves_the_scene_as_it_was(scene_and_volumes, tmp_path, values):
    scene, volumes, _ = scene_and_volumes
    path = write_map(tmp_path / "bad.nii", values, RAS_2MM)
    before = selfTest.sceneSnapshot(scene)
    with pytest.raises(ValueError, match="not an uncertainty map"):
        importUncertaintyMap(scene, path, "bad", referenceVolumeNode=volumes["t2"])
    assert selfTest.sceneSnapshot(scene) == before


def test_the_segmenter_is_asked_for_the_map_and_its_result_is_imported(scene_and_volumes, fake_logic):
    scene, volumes, _ = scene_and_volumes
    logic, folder = fake_logic
    tiny = make_tiny_model_file(folder / "tiny.safetensors", mirror_axes=[2])
    options = SegmentationOptions(modelPath=tiny, device="cpu", uncertaintyMap=True)
    result = logic.segment(scene, volumes, options)
    arguments = json.loads((folder / "record.json").read_text())["args"]
    output = arguments[arguments.index("-o") + 1]
    assert arguments[arguments.index("--uncertainty") + 1] == output.replace("segmentation.nii", "uncertainty.nii")
    node = result.uncertaintyNode
    assert node.GetName() == "case_t1ce tumour uncertainty"
    assert node.GetTransformNodeID() == volumes["t1ce"].GetTransformNodeID()
    assert result.quality == {"ET": 0.41, "TC": 0.9, "WT": 0.95} and result.review == ["ET"]
    segmentation = result.segmentationNode
    assert json.loads(segmentation.GetAttribute("LCKDSegmentation.Quality")) == result.quality
    assert segmentation.GetAttribute("LCKDSegmentation.Review") == "ET"
    view = resultsView(result, volumes["t1ce"])
    assert view.rows == 3 and [view.cells[(row, 2)] for row in range(3)] == ["0.41 (review)", "0.90", "0.95"]
    assert view.review == "Enhancing tumour (ET) uncertain: review it."
    assert view.layers == {"background": volumes["t1ce"], "foreground": node, "foregroundOpacity": UNCERTAINTY_OPACITY}
    # without the option: no map asked for, none imported, the background alone
    plain = logic.segment(scene, volumes, SegmentationOptions(modelPath=tiny, device="cpu"))
    assert "--uncertainty" not in json.loads((folder / "record.json").read_text())["args"]
    assert plain.uncertaintyNode is None
    assert resultsView(plain, volumes["t1ce"]).layers == {"background": volumes["t1ce"]}


def test_a_run_that_did_not_write_the_map_fails_and_leaves_the_scene_as_it_was(scene_and_volumes, fake_logic,
                                                                                  monkeypatch):
    scene, volumes, _ = scene_and_volumes
    logic, folder = fake_logic
    monkeypatch.setenv("LCKD_FAKE_MODE", "no-map")
    before = selfTest.sceneSnapshot(scene)
    model = make_tiny_model_file(folder / "tiny.safetensors", mirror_axes=[2])
    job = logic.start(volumes, SegmentationOptions(modelPath=model, uncertaintyMap=True))
    with pytest.raises(SegmentationError, match="no result"):
        logic.finish(job, scene)
    assert selfTest.sceneSnapshot(scene) == before and not job.folder.exists()


def test_a_model_averaging_one_member_is_refused_before_anything_starts(scene_and_volumes, tmp_path):
    scene, volumes, _ = scene_and_volumes
    single = make_tiny_model_file(tmp_path / "single.safetensors")
    mirrored = make_tiny_model_file(tmp_path / "mirrored.safetensors", mirror_axes=[2])
    before = selfTest.sceneSnapshot(scene)
    for options in (SegmentationOptions(modelPath=single, uncertaintyMap=True),
                    SegmentationOptions(modelPath=mirrored, uncertaintyMap=True, skipMirroring=True)):
        with pytest.raises(ValueError, match="averages only one"):
            LCKDSegmentationLogic().start(volumes, options)
    assert selfTest.sceneSnapshot(scene) == before


def test_quality_cells_and_review_text():
    assert qualityText("ET", {}, []) == ""  # no estimate (one member averaged)
    assert qualityText("TC", {"TC": 0.834}, ["ET"]) == "0.83"
    assert qualityText("WT", {"WT": 0.2}, ["WT"]) == "0.20 (review)"
    assert reviewText([]) == ""
    assert reviewText(["WT", "ET"]) == ("Enhancing tumour (ET) uncertain: review it. "
                                        "Whole tumour (WT) uncertain: review it.")


def test_the_real_segmenter_makes_a_map_slicer_shows(scene_and_volumes, tmp_path):
    """`lckd segment --uncertainty` with a tiny network mirrored along x (two members), through the check the
    in-Slicer self-test runs; the reference (T1ce) lies under a rigid transform."""
    scene, volumes, _ = scene_and_volumes
    logic = LCKDSegmentationLogic()
    model = selfTest.makeTinyModel(tmp_path / "mirrored.safetensors", logic.python, logic.libraryFolder, seed=6,
                                   mirrorAxes=[2])
    options = SegmentationOptions(modelPath=model, device="cpu", threads=1, uncertaintyMap=True)
    assert selfTest.checkUncertainty(logic, scene, volumes, options) == []
    # and the check finds what is wrong
    assert selfTest.checkUncertainty(logic, scene, volumes, SegmentationOptions(
        modelPath=model, device="cpu", threads=1)) == ["no uncertainty map was imported"]
