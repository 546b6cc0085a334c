"""The case loaders, the demo's choice of case and the real-data models on the real scans of
``../shared/data`` (skipped without it)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from real_data import BRATS2018, BRATS2023, CLINICAL, require

from lckd.cases import find_cases, read_case_folder
from lckd.io import load_volume
from lckd.labels import regions_from_labels
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice


def test_brats2018_cases_are_found_with_all_files():
    folders = sorted(path.name for path in require(BRATS2018).iterdir() if path.is_dir())
    cases = find_cases(BRATS2018)
    assert [case.name for case in cases] == folders and len(folders) >= 14
    for case in cases:
        assert case.layout == "brats2018" and case.et_label == 4
        assert sorted(case.sequences) == ["flair", "t1", "t1ce", "t2"] and case.segmentation is not None
    volume = load_volume(cases[0].sequences["t1ce"])
    assert volume.shape == (240, 240, 155) and np.allclose(np.abs(np.diag(volume.affine)[:3]), 1.0)


def test_brats2023_case_layout_and_geometry():
    case = read_case_folder(require(BRATS2023) / "BraTS-GLI-00001-000")
    assert case.layout == "brats2023" and case.et_label == 3 and case.segmentation is None
    assert case.sequences["t1ce"].name.endswith("-t1c.nii.gz") and case.sequences["flair"].name.endswith("-t2f.nii.gz")
    shapes = {load_volume(path).shape for path in case.sequences.values()}
    assert shapes == {(240, 240, 155)}
    assert nib.aff2axcodes(nib.load(str(case.sequences["t2"])).affine) in (("L", "P", "S"), ("R", "A", "S"))


def test_demo_segments_a_real_case_the_model_never_saw():
    from types import SimpleNamespace

    from demo import demo_case

    require(BRATS2018), require(CLINICAL)
    held_out = demo_case(SimpleNamespace(training={"validation_cases": ["Brats18_2013_11_1"]}))
    assert held_out.what.endswith("Brats18_2013_11_1, held out from the model's training")
    assert held_out.labels.name == "Brats18_2013_11_1_seg.nii.gz" and held_out.et_label == 4
    every_case = demo_case(SimpleNamespace(training={"validation_cases": [], "training_cases": ["Brats18_2013_11_1"]}))
    assert every_case.what.startswith("patient TCGA-FG-6692")
    assert every_case.labels.name == "reference_fusion_simple.nii.gz"
    assert sorted(every_case.sequences) == ["flair", "t1", "t1ce", "t2"]
    assert all(path.is_file() for path in [every_case.labels, *every_case.sequences.values()])


# -- a network on real cases it never saw in training ----------------------------------------------

#: The LCKD network of the brats-cpu recipe trained on the 20 training cases of the 27-case split
#: (training/splits/brats2018-27-validation.json, Training.md "Learning curve"): the 7 validation cases
#: are unseen by it.
WEIGHTS = Path(__file__).resolve().parents[1] / "Resources" / "Weights"
HELD_OUT_MODEL = WEIGHTS / "lckd-brats2018-train20-seed0.safetensors"
#: Dice floors a little below what that network measured on two of its validation cases (fp32, no
#: mirroring, as its card says; 1 mm reference grid): a regression of the pipeline or the file fails them.
FLOORS = {
    # measured: ET 0.824, TC 0.869, WT 0.860 / 0.400, 0.494, 0.875
    ("Brats18_CBICA_AOZ_1", "flair+t1+t1ce+t2"): {"ET": 0.77, "TC": 0.82, "WT": 0.81},
    ("Brats18_CBICA_AOZ_1", "flair+t2"): {"ET": 0.35, "TC": 0.44, "WT": 0.82},
    # measured: 0.649, 0.644, 0.837 / 0.317, 0.585, 0.847
    ("Brats18_TCIA02_370_1", "flair+t1+t1ce+t2"): {"ET": 0.60, "TC": 0.59, "WT": 0.79},
    ("Brats18_TCIA02_370_1", "flair+t2"): {"ET": 0.27, "TC": 0.53, "WT": 0.80},
}
#: A case through the Slicer logic with the default model (FLAIR, T1ce, T2: T1 missing), and how far
#: its WT and TC volumes may lie from the expert's, as a fraction of the expert's volume (measured
#: through lckd with 0.5.0: WT 103.1 mL against 100.9, TC 37.5 against 33.6). The case is one of the
#: default's 7 validation cases, never trained on.
SLICER_CASE = "Brats18_2013_3_1"
SLICER_VOLUME_TOLERANCE = {"WT": 0.2, "TC": 0.5}


@pytest.fixture(scope="module")
def held_out_segmenter():
    from lckd.segmenter import Segmenter

    return Segmenter(HELD_OUT_MODEL, device="cpu", precision="fp32")


@pytest.mark.slow
@pytest.mark.parametrize("case_name, subset", sorted(FLOORS))
def test_a_network_on_real_cases_it_never_saw(held_out_segmenter, case_name, subset, tmp_path):
    case = read_case_folder(require(BRATS2018) / case_name)
    assert case_name in held_out_segmenter.card.training["validation_cases"], "the floors need held-out cases"
    result = held_out_segmenter.segment_to_file({s: case.sequences[s] for s in subset.split("+")},
                                                tmp_path / "tumour.nii.gz")
    truth = regions_from_labels(np.asarray(nib.load(str(case.segmentation)).dataobj).astype(np.uint8))
    found = regions_from_labels(result.labels)
    scores = {region: dice(found[REGION_INDEX[region]], truth[REGION_INDEX[region]]) for region in REPORTED_REGIONS}
    floors = FLOORS[(case_name, subset)]
    assert all(scores[region] >= floors[region] for region in REPORTED_REGIONS), (scores, floors)


@pytest.mark.slow
@pytest.mark.xdist_group("slicer")
def test_slicer_logic_segments_a_real_case_on_slicer_core():
    pytest.importorskip("slicer")
    import slicer
    from test_slicer_logic import add_volume

    from lckd.cli import default_model
    from LCKDSegmentationLib.logic import LCKDSegmentationLogic, SegmentationOptions

    case = read_case_folder(require(BRATS2018) / SLICER_CASE)
    scene = slicer.vtkMRMLScene()
    volumes = {}
    for name in ("flair", "t1ce", "t2"):
        image = nib.load(str(case.sequences[name]))
        volumes[name] = add_volume(scene, f"{SLICER_CASE}_{name}", np.asarray(image.dataobj), image.affine)
    options = SegmentationOptions(modelPath=default_model(), device="cpu", threads=1)
    result = LCKDSegmentationLogic().segment(scene, volumes, options, timeout=600)
    truth = np.asarray(nib.load(str(case.segmentation)).dataobj)
    truth_ml = {"WT": float((truth > 0).sum()) / 1000.0, "TC": float(np.isin(truth, (1, 4)).sum()) / 1000.0}
    assert result.segmentationNode.GetSegmentation().GetNumberOfSegments() >= 2
    assert result.reference == "t1ce" and result.sequences == ["flair", "t1ce", "t2"]
    for region, expected in truth_ml.items():
        assert abs(result.volumesMl[region] - expected) <= SLICER_VOLUME_TOLERANCE[region] * expected, (
            result.volumesMl, truth_ml)


@pytest.mark.xdist_group("slicer")
def test_slicer_logic_refuses_raw_scans_naming_the_volume_and_the_checkbox(tiny_model):
    pytest.importorskip("slicer")
    import slicer
    from test_slicer_logic import add_volume

    from LCKDSegmentationLib.logic import LCKDSegmentationLogic, SegmentationError, SegmentationOptions

    scene = slicer.vtkMRMLScene()
    volumes = {}
    for name in ("flair", "t1ce"):
        image = nib.load(str(require(CLINICAL) / "native" / f"{name}.nii.gz"))
        volumes[name] = add_volume(scene, f"PACS {name}", np.asarray(image.dataobj), image.affine)
    nodes_before = scene.GetNumberOfNodes()
    with pytest.raises(SegmentationError) as refused:
        LCKDSegmentationLogic().segment(scene, volumes, SegmentationOptions(modelPath=tiny_model, device="cpu"),
                                        timeout=300)
    message = str(refused.value)
    assert message.startswith("PACS ") and "skull-stripped" in message, message
    assert "Tick 'Preprocess raw scans (co-register, skull-strip)'" in message and "--preprocess" not in message
    assert scene.GetNumberOfNodes() == nodes_before
