"""The Slicer module's logic on Slicer's real MRML classes (the `slicer-core` package, no Qt): a scene with
volumes on different grids and under transforms, world-space export, the segmenter process (a fake one
for failures and cancel, the real `lckd segment` with a `tiny` model for every subset), segmentation
nodes with terminology, reference geometry, subject hierarchy, region volumes, .seg.nrrd round trip."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402  (after the skip: vtk comes with slicer-core)
from vtkmodules.util import numpy_support  # noqa: E402

from conftest import make_tiny_model_file, synthetic_head  # noqa: E402
from LCKDSegmentationLib import selfTest  # noqa: E402
from LCKDSegmentationLib.logic import (  # noqa: E402
    LCKDSegmentationLogic,
    OutOfMemoryError,
    SegmentationError,
    SegmentationOptions,
)
from LCKDSegmentationLib.regionVolumes import regionVolumesMl, segmentRole  # noqa: E402
from LCKDSegmentationLib.segmentationImport import (  # noqa: E402
    TERMINOLOGY_FILE,
    importLabelMap,
    loadTerminology,
)
from LCKDSegmentationLib.volumeExport import (  # noqa: E402
    exportVolume,
    localIJKToRAS,
    numpyToVtkMatrix,
    volumeArray,
    worldIJKToRAS,
)

pytestmark = pytest.mark.xdist_group("slicer")
RAS_2MM = np.array([[2.0, 0, 0, -50], [0, 2.0, 0, -56], [0, 0, 2.0, -44], [0, 0, 0, 1]])
LPS_25MM = np.array([[-2.5, 0, 0, 50], [0, -2.5, 0, 55], [0, 0, 2.5, -45], [0, 0, 0, 1]])
SHIFT = np.array([[1.0, 0, 0, 4.0], [0, 1, 0, -2.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])


def rotation(degrees, translation=(3.0, -4.0, 2.0)):
    angle = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix[:3, 3] = translation
    return matrix


def add_volume(scene, name, data, world_affine, transform=None):
    """A scalar volume whose voxels lie at ``world_affine`` in the world, stored under ``transform``."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(*data.shape)
    flat = np.ascontiguousarray(data.transpose(2, 1, 0)).ravel()
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    local = world_affine if transform is None else np.linalg.inv(transform) @ world_affine
    node.SetIJKToRASMatrix(numpyToVtkMatrix(local))
    node.SetAndObserveImageData(image)
    if transform is not None:
        parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", f"{name} transform")
        parent.SetMatrixTransformToParent(numpyToVtkMatrix(transform))
        node.SetAndObserveTransformNodeID(parent.GetID())
    return node


def new_scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def case():
    """T1 and T2 on a RAS 2 mm grid (int16); FLAIR on an LPS 2.5 mm grid under a translation; T1ce on the
    RAS grid, stored rotated under a rigid transform; all four in one study of the subject hierarchy."""
    scene = new_scene()
    shape = (50, 56, 44)
    volumes = {
        "t1": add_volume(scene, "case_T1w", synthetic_head(shape, RAS_2MM, seed=1).astype(np.int16), RAS_2MM),
        "t1ce": add_volume(scene, "case_t1_post_gd", synthetic_head(shape, RAS_2MM, seed=2), RAS_2MM,
                           transform=rotation(12.0)),
        "t2": add_volume(scene, "case_T2", synthetic_head(shape, RAS_2MM, seed=3).astype(np.int16), RAS_2MM),
        "flair": add_volume(scene, "case_FLAIR", synthetic_head((40, 44, 36), LPS_25MM, seed=4), LPS_25MM,
                            transform=SHIFT),
    }
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "MR study")
    for node in volumes.values():  # the application's subject hierarchy plugins do this on loading
        hierarchy.CreateItem(study, node)
    return scene, volumes, study


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    return make_tiny_model_file(tmp_path_factory.mktemp("slicer-model") / "tiny.safetensors", seed=4,
                                validation=selfTest.syntheticValidationTable())


# -- export ----------------------------------------------------------------------------------------


def node_state(node):
    return (node.GetTransformNodeID(), localIJKToRAS(node).tobytes(),
            node.GetImageData().GetMTime(), volumeArray(node).tobytes())


def test_export_writes_world_space_without_touching_the_nodes(case, tmp_path):
    scene, volumes, _ = case
    before = {name: node_state(node) for name, node in volumes.items()}
    snapshot = selfTest.sceneSnapshot(scene)
    np.testing.assert_allclose(worldIJKToRAS(volumes["flair"]), LPS_25MM, atol=1e-9)
    np.testing.assert_allclose(localIJKToRAS(volumes["flair"]), np.linalg.inv(SHIFT) @ LPS_25MM, atol=1e-9)
    for name, node in volumes.items():
        path = exportVolume(node, tmp_path / f"{name}.nii.gz")
        written = nib.load(str(path))
        expected = LPS_25MM if name == "flair" else RAS_2MM
        np.testing.assert_allclose(written.affine, expected, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(written.dataobj), volumeArray(node))
        assert written.get_data_dtype() == volumeArray(node).dtype
    assert {name: node_state(node) for name, node in volumes.items()} == before
    assert selfTest.sceneSnapshot(scene) == snapshot


def test_export_hardens_a_non_linear_transform_on_a_clone(tmp_path):
    scene = new_scene()
    data = synthetic_head((30, 32, 28), RAS_2MM, seed=0)
    node = add_volume(scene, "warped_t2", data, RAS_2MM)
    grid = slicer.vtkOrientedGridTransform()
    displacement = vtk.vtkImageData()
    displacement.SetOrigin(-80, -80, -80)
    displacement.SetSpacing(20, 20, 20)
    displacement.SetDimensions(9, 9, 9)
    displacement.AllocateScalars(vtk.VTK_DOUBLE, 3)
    values = numpy_support.vtk_to_numpy(displacement.GetPointData().GetScalars())
    values[:] = 0
    values[:, 2] = 5.0  # 5 mm along S, everywhere
    grid.SetDisplacementGridData(displacement)
    warp = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    warp.SetAndObserveTransformToParent(grid)
    node.SetAndObserveTransformNodeID(warp.GetID())
    assert not warp.IsTransformToWorldLinear()
    before, snapshot = node_state(node), selfTest.sceneSnapshot(scene)
    with pytest.raises(ValueError, match="non-linear"):
        worldIJKToRAS(node)
    written = nib.load(str(exportVolume(node, tmp_path / "t2.nii.gz")))

    def bright_centre(affine, array):  # world position of the lesion blob
        return (affine @ np.r_[np.argwhere(array > 300).mean(axis=0), 1.0])[:3]

    # the image moved 5 mm up in the world, whether Slicer moved the grid or resampled the voxels
    moved = bright_centre(written.affine, np.asarray(written.dataobj)) - bright_centre(RAS_2MM, data)
    np.testing.assert_allclose(moved, [0, 0, 5.0], atol=0.6)
    assert node_state(node) == before and selfTest.sceneSnapshot(scene) == snapshot


# -- import: segments, terminology, geometry, study, volumes, .seg.nrrd ---------------------------------


def phantom_labels(shape, et_label=4):
    labels = np.zeros(shape, np.uint8)
    labels[10:30, 12:32, 10:28] = 2
    labels[14:24, 16:26, 14:22] = 1
    labels[17:21, 19:23, 16:20] = et_label
    return labels


@pytest.mark.parametrize("et_label", [4, 3])
def test_import_makes_coded_segments_on_the_reference_geometry_in_its_study(case, tmp_path, et_label):
    scene, volumes, study = case
    reference = volumes["t1ce"]  # stored rotated under a rigid transform
    labels = phantom_labels((50, 56, 44), et_label)
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, worldIJKToRAS(reference)), str(path))
    node = importLabelMap(scene, path, "tumour", referenceVolumeNode=reference, attributes={"Origin": "test"})

    assert selfTest.compareWithLabelMap(node, labels, worldIJKToRAS(reference), reference) == []
    assert node.GetTransformNodeID() == reference.GetTransformNodeID() is not None
    assert node.GetAttribute("Origin") == "test"
    assert not scene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study

    # names, colours and codes come from the shipped terminology, read by Slicer's terminology logic
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    context = terminologies.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    assert context == loadTerminology()["context"]
    segmentation = node.GetSegmentation()
    found = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        entry = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(entry.get(), parsed)
        assert parsed.GetTerminologyContextName() == context
        assert parsed.GetCategoryObject().GetCodeValue() == "49755003"
        assert (parsed.GetRegionObject().GetCodingSchemeDesignator(), parsed.GetRegionObject().GetCodeValue()) == (
            "SCT", "12738006")
        code = parsed.GetTypeObject()
        found[segment.GetName()] = (code.GetCodingSchemeDesignator(), code.GetCodeValue(),
                                    tuple(round(c * 255) for c in segment.GetColor()), segmentRole(segment))
    assert found == {"necrosis": ("SCT", "6574001", (216, 101, 79), "NCR"),
                     "oedema": ("SCT", "79654002", (128, 174, 128), "ED"),
                     "enhancing tumour": ("NCIt", "C113842", (241, 214, 145), "ET")}
    LCKDSegmentationLogic.showIn3D(node)  # what "Show 3D" does
    for index in range(segmentation.GetNumberOfSegments()):
        surface = segmentation.GetNthSegment(index).GetRepresentation("Closed surface")
        assert surface is not None and surface.GetNumberOfPoints() > 0
    assert node.GetDisplayNode().GetVisibility3D()
    LCKDSegmentationLogic.showIn3D(node, False)
    assert not node.GetDisplayNode().GetVisibility3D()
    names = vtk.vtkStringArray()
    terminologies.GetLoadedTerminologyNames(names)
    assert context in [names.GetValue(i) for i in range(names.GetNumberOfValues())]

    voxel_ml = 8.0 / 1000.0
    volumes_ml = regionVolumesMl(node)
    assert volumes_ml["ET"] == pytest.approx((labels == et_label).sum() * voxel_ml)
    assert volumes_ml["TC"] == pytest.approx(np.isin(labels, [1, et_label]).sum() * voxel_ml)
    assert volumes_ml["WT"] == pytest.approx((labels > 0).sum() * voxel_ml)


def test_import_off_the_reference_grid_keeps_the_label_geometry(case, tmp_path):
    scene, volumes, _ = case
    labels = phantom_labels((40, 44, 36))
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, LPS_25MM), str(path))
    node = importLabelMap(scene, path, "tumour", referenceVolumeNode=volumes["t1"])  # a different grid
    assert node.GetTransformNodeID() is None
    assert selfTest.compareWithLabelMap(node, labels, LPS_25MM) == []
    # the geometry reference (what DICOM SEG export uses) is the reference volume, not the removed label map
    role = node.GetReferenceImageGeometryReferenceRole()
    assert node.GetNodeReference(role) is volumes["t1"]
    assert not scene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode")


def test_import_on_the_reference_grid_references_the_reference_volume(case, tmp_path):
    scene, volumes, _ = case
    reference = volumes["t1ce"]
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(phantom_labels((50, 56, 44)), worldIJKToRAS(reference)), str(path))
    node = importLabelMap(scene, path, "tumour", referenceVolumeNode=reference)
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is reference


def test_seg_nrrd_round_trip(case, tmp_path):
    scene, volumes, _ = case
    reference = volumes["t1ce"]
    labels = phantom_labels((50, 56, 44))
    source = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, worldIJKToRAS(reference)), str(source))
    node = importLabelMap(scene, source, "tumour", referenceVolumeNode=reference)
    path = tmp_path / "tumour.seg.nrrd"
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    assert writer.WriteData(node)

    other = new_scene()
    loaded = other.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    # the file holds the segmentation in its own (parent) frame: compare there
    local = localIJKToRAS(reference)
    assert selfTest.compareWithLabelMap(loaded, labels, local) == []
    tag = slicer.vtkSegment.GetTerminologyEntryTagName()
    for index in range(node.GetSegmentation().GetNumberOfSegments()):
        written, read = node.GetSegmentation().GetNthSegment(index), loaded.GetSegmentation().GetNthSegment(index)
        first, second = vtk.reference(""), vtk.reference("")
        written.GetTag(tag, first)
        read.GetTag(tag, second)
        assert (read.GetName(), second.get(), segmentRole(read)) == (written.GetName(), first.get(),
                                                                     segmentRole(written))
    assert regionVolumesMl(loaded) == pytest.approx(regionVolumesMl(node))


# -- the segmenter process: a fake `lckd` for failures and the process tree ------------------------

FAKE_SEGMENTER = textwrap.dedent('''
    import json, os, subprocess, sys, time
    args = sys.argv[1:]
    mode = os.environ.get("LCKD_FAKE_MODE", "ok")
    with open(os.environ["LCKD_FAKE_RECORD"], "w") as record:
        json.dump({"args": args, "cwd": os.getcwd()}, record)
    def emit(**event):
        print(json.dumps(event), flush=True)
    emit(event="stage", stage="load", message="reading")
    print("a line that is not JSON", flush=True)
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(os.environ["LCKD_FAKE_CHILD"], "w") as out:
            out.write(str(child.pid))
        emit(event="stage", stage="infer", message="working")
        time.sleep(120)
    if mode == "error":
        emit(event="error", message="bad input: the FLAIR is empty")
        sys.stderr.write("lckd: error: bad input: the FLAIR is empty\\n")
        sys.exit(2)
    if mode == "oom":
        sys.stderr.write("lckd: error: the GPU ran out of memory; retry with --device cpu\\n")
        sys.exit(3)
    if mode == "crash":
        sys.exit(1)
    import nibabel as nib, numpy as np
    reference = args[args.index("--reference") + 1]
    image = nib.load(args[args.index("--" + reference) + 1])
    data = np.asarray(image.dataobj)
    labels = np.zeros(data.shape, np.uint8)
    labels[data > 150] = 2
    labels[data > 350] = 4
    emit(event="stage", stage="infer", message="segmenting")
    for k in range(4):
        emit(event="progress", fraction=k / 3, done=k, total=3)
    output = args[args.index("-o") + 1]
    nib.save(nib.Nifti1Image(labels, image.affine), output)
    if "--uncertainty" in args and mode != "no-map":  # "no-map": a segmenter that forgot the map
        spread = np.clip(data.astype(np.float32) / 500.0, 0.0, 1.0)
        nib.save(nib.Nifti1Image(spread, image.affine), args[args.index("--uncertainty") + 1])
    sequences = [s for s in ("flair", "t1", "t1ce", "t2") if "--" + s in args]
    emit(event="done", output=output, seconds=0.1, reference=reference, sequences=sequences,
         volumes_ml={"ET": 0.0, "TC": 0.0, "WT": 0.0}, quality={"ET": 0.41, "TC": 0.9, "WT": 0.95}, review=["ET"])
''')


def write_fake_library(tmp_path: Path, monkeypatch) -> Path:
    """A library folder whose `python -m lckd` is the fake segmenter; it records into ``tmp_path``."""
    library = tmp_path / "fake-library"
    (library / "lckd").mkdir(parents=True)
    (library / "lckd" / "__init__.py").write_text("")
    (library / "lckd" / "__main__.py").write_text(FAKE_SEGMENTER)
    monkeypatch.setenv("LCKD_FAKE_RECORD", str(tmp_path / "record.json"))
    monkeypatch.setenv("LCKD_FAKE_CHILD", str(tmp_path / "child.pid"))
    return library


@pytest.fixture
def fake_logic(tmp_path, monkeypatch):
    library = write_fake_library(tmp_path, monkeypatch)
    return LCKDSegmentationLogic(python=sys.executable, libraryFolder=library), tmp_path


def test_fake_segmenter_run_reports_progress_and_imports(case, fake_logic, tiny_model_path, monkeypatch):
    scene, volumes, _ = case
    logic, folder = fake_logic
    reported = []
    options = SegmentationOptions(modelPath=tiny_model_path, device="cpu", threads=1, postprocess=True)
    result = logic.segment(scene, {"t2": volumes["t2"], "flair": volumes["flair"]}, options,
                           onProgress=lambda fraction, message: reported.append((fraction, message)))
    record = json.loads((folder / "record.json").read_text())
    args = record["args"]
    assert args[0] == "segment" and Path(record["cwd"]) == folder / "fake-library"
    assert [args[args.index(f"--{s}") + 1].endswith(f"{s}.nii") for s in ("flair", "t2")] == [True, True]
    assert "--t1" not in args and "--t1ce" not in args
    pairs = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert pairs["--reference"] == "flair" and pairs["--progress"] == "json" and pairs["--device"] == "cpu"
    assert pairs["--model"] == str(tiny_model_path.resolve()) and pairs["--threads"] == "1"
    assert "--postprocess" in args and pairs["--labels"] == "brats2018" and "--no-tta" not in args
    fractions = [fraction for fraction, _ in reported]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert "reading" in [message for _, message in reported]
    node = result.segmentationNode
    assert node.GetName() == "case_FLAIR tumour" and node.GetTransformNodeID() == volumes["flair"].GetTransformNodeID()
    assert node.GetAttribute("LCKDSegmentation.Sequences") == "flair+t2"
    assert result.sequences == ["flair", "t2"] and result.reference == "flair"
    assert result.volumesMl["WT"] > result.volumesMl["ET"] > 0


@pytest.mark.parametrize("mode, error, message", [
    ("error", SegmentationError, "the FLAIR is empty"),
    ("oom", OutOfMemoryError, "ran out of memory"),
    ("crash", SegmentationError, "exited with code 1"),
])
def test_fake_segmenter_failures_leave_the_scene_unchanged(case, fake_logic, tiny_model_path, monkeypatch,
                                                           mode, error, message):
    scene, volumes, _ = case
    logic, _ = fake_logic
    monkeypatch.setenv("LCKD_FAKE_MODE", mode)
    snapshot = selfTest.sceneSnapshot(scene)
    job = logic.start(volumes, SegmentationOptions(modelPath=tiny_model_path, device="cuda"))
    with pytest.raises(error, match=message):
        logic.finish(job, scene)
    assert not job.folder.exists() and selfTest.sceneSnapshot(scene) == snapshot


def _dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(os.name == "nt" or not Path("/proc").is_dir(), reason="reads /proc")
def test_cancel_kills_the_whole_process_tree(case, fake_logic, tiny_model_path, monkeypatch):
    scene, volumes, _ = case
    logic, folder = fake_logic
    monkeypatch.setenv("LCKD_FAKE_MODE", "hang")
    snapshot = selfTest.sceneSnapshot(scene)
    job = logic.start(volumes, SegmentationOptions(modelPath=tiny_model_path, device="cpu"))
    deadline = time.monotonic() + 30
    while job.process.stage != "infer" and time.monotonic() < deadline:
        job.process.poll()
        time.sleep(0.02)
    child = int((folder / "child.pid").read_text())
    assert not _dead(child)
    logic.cancel(job)
    deadline = time.monotonic() + 5
    while not _dead(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(child) and job.process.process.poll() is not None
    assert not job.folder.exists() and selfTest.sceneSnapshot(scene) == snapshot
    with pytest.raises(SegmentationError, match="cancelled"):
        logic.finish(job, scene)


def test_refusals_leave_the_scene_unchanged(case, tiny_model_path, tmp_path):
    scene, volumes, _ = case
    logic = LCKDSegmentationLogic()
    options = SegmentationOptions(modelPath=tiny_model_path, device="cpu")
    assert selfTest.checkRefusals(logic, scene, volumes, options) == []
    snapshot = selfTest.sceneSnapshot(scene)
    for bad in (SegmentationOptions(modelPath=tmp_path / "missing.safetensors"),
                SegmentationOptions(modelPath=tiny_model_path, device="tpu"),
                SegmentationOptions(modelPath=tiny_model_path, reference="t1ce")):
        with pytest.raises(ValueError):
            logic.start({"t1": volumes["t1"]}, bad)
    assert selfTest.sceneSnapshot(scene) == snapshot


# -- the real `lckd segment` -------------------------------------------------------------------------


def test_all_fifteen_subsets_match_the_label_map_the_cli_wrote(case, tiny_model_path):
    scene, volumes, _ = case
    logic = LCKDSegmentationLogic()
    options = SegmentationOptions(modelPath=tiny_model_path, device="cpu", threads=1)
    started = time.monotonic()
    problems = selfTest.checkSubsets(logic, scene, volumes, options, concurrency=3)
    assert len(problems) == 15
    assert {key: found for key, found in problems.items() if found} == {}
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 15
    print(f"15 subsets through the logic in {time.monotonic() - started:.1f} s")


def test_cancel_mid_run_of_the_real_segmenter_leaves_the_scene_as_it_was(case, tiny_model_path):
    scene, volumes, _ = case
    logic = LCKDSegmentationLogic()
    options = SegmentationOptions(modelPath=tiny_model_path, device="cpu", threads=1)
    assert selfTest.checkCancel(logic, scene, volumes, options) == []
