"""DICOM SEG output: one Segmentation instance on the reference series, valid for dciodvfy, read back by
highdicom and by dcmqi to the NIfTI route's label map voxel for voxel; refused without DICOM input."""

from __future__ import annotations

import csv
import shutil

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_studies import write_study
from seg_readers import dciodvfy_errors, labels_by_dcmqi, labels_by_highdicom

from conftest import DEMO_MODEL, make_tiny_model_file
from lckd.cli import main
from lckd.terminology import load_terminology


def run(*args) -> int:
    return main(["segment", "--model", str(DEMO_MODEL), *[str(a) for a in args], "--progress", "none"])


def errors(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("lckd: error")]


@pytest.fixture(scope="module")
def study_outputs(phantom_study, tmp_path_factory):
    """The phantom study segmented twice by `lckd segment --study`: as a DICOM SEG and as a NIfTI label map."""
    folder = tmp_path_factory.mktemp("study_outputs")
    seg, nifti = folder / "tumour.dcm", folder / "tumour.nii.gz"
    assert run("--study", phantom_study.folder, "-o", seg) == 0
    assert run("--study", phantom_study.folder, "-o", nifti) == 0
    return seg, nifti


def reference_series(phantom_study, name="t1ce"):
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in phantom_study.study.files[name]]


def test_the_study_route_writes_one_valid_seg_on_the_t1ce_series(phantom_study, study_outputs, tmp_path):
    seg_path, nifti_path = study_outputs
    seg = hd.seg.segread(seg_path)
    t1ce = reference_series(phantom_study)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == phantom_study.study.study_uid
    assert seg.FrameOfReferenceUID == t1ce[0].FrameOfReferenceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == phantom_study.study.series_uids["t1ce"]
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == \
        {d.SOPInstanceUID for d in t1ce}
    assert int(seg.SeriesNumber) == 602  # after the study's last series (the reformat, 601)
    labels = np.asarray(nib.load(str(nifti_path)).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 4}  # the demo model finds every region of the phantom
    types = load_terminology()["types"]
    described = [seg.get_segment_description(n) for n in seg.get_segment_numbers()]
    assert [d.segment_label for d in described] == ["necrosis", "oedema", "enhancing tumour"]
    for description, code in zip(described, ("6574001", "79654002", "C113842")):
        assert description.segmented_property_type.value == code
        assert description.segmented_property_type.scheme_designator == types[code]["CodingSchemeDesignator"]
        assert description.segmented_property_category.value == types[code]["category"]["CodeValue"]
        assert [(r.value, r.scheme_designator) for r in description.anatomic_regions] == [("12738006", "SCT")]
        algorithm = description.algorithm_identification[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("lckd-phantom-demo", "0.1.0")
        assert description.algorithm_type.value == "AUTOMATIC"
    reference = nib.load(str(phantom_study.nifti["t1ce"]))
    np.testing.assert_allclose(nib.load(str(nifti_path)).affine, reference.affine, atol=1e-4)
    by_highdicom = labels_by_highdicom(seg_path, t1ce, reference.affine, reference.shape)
    np.testing.assert_array_equal(by_highdicom, labels)
    by_dcmqi = labels_by_dcmqi(seg_path, tmp_path / "dcmqi", reference.affine, reference.shape)
    np.testing.assert_array_equal(by_dcmqi, labels)
    assert dciodvfy_errors(seg_path) == []


def test_a_dicom_series_folder_as_reference_input_gives_the_same_frames(phantom_study, tmp_path):
    series = tmp_path / "t1ce_series"
    series.mkdir()
    for path in phantom_study.study.files["t1ce"]:
        shutil.copy(path, series / path.name)
    seg_path, nifti_path = tmp_path / "t1ce.dcm", tmp_path / "t1ce.nii.gz"
    assert run("--t1ce", series, "--flair", phantom_study.nifti["flair"], "-o", seg_path) == 0
    assert run("--t1ce", phantom_study.nifti["t1ce"], "--flair", phantom_study.nifti["flair"], "-o", nifti_path) == 0
    reference = nib.load(str(nifti_path))
    labels = np.asarray(reference.dataobj)
    assert labels.any()
    found = labels_by_highdicom(seg_path, reference_series(phantom_study), reference.affine, reference.shape)
    np.testing.assert_array_equal(found, labels)
    assert "FLAIR+T1ce" in hd.seg.segread(seg_path).ContentDescription
    assert dciodvfy_errors(seg_path) == []


@pytest.mark.parametrize("reference", ["t1ce.nii.gz", "t1ce.nrrd"])
def test_seg_output_without_dicom_input_is_refused_before_any_work(phantom_study, tmp_path, capsys, reference):
    import SimpleITK

    source = phantom_study.nifti["t1ce"]
    if reference.endswith(".nrrd"):
        SimpleITK.WriteImage(SimpleITK.ReadImage(str(source)), str(tmp_path / reference))
        source = tmp_path / reference
    for output, flags in ((tmp_path / "tumour.dcm", []), (tmp_path / "tumour.seg", ["--output-format", "dicom-seg"])):
        assert run("--t1ce", source, "-o", output, *flags) == 2
        (line,) = errors(capsys)
        assert f"lckd: error: {source}: a DICOM SEG needs the source DICOM instances" in line
        assert not output.exists() and not list(tmp_path.glob(".tumour*"))


def test_an_output_name_that_contradicts_the_format_is_refused(phantom_study, tmp_path, capsys):
    assert run("--study", phantom_study.folder, "-o", tmp_path / "t.nii.gz", "--output-format", "dicom-seg") == 2
    assert errors(capsys) == [f"lckd: error: {tmp_path / 't.nii.gz'}: the name says nifti but --output-format "
                              f"dicom-seg was asked; name it FILE.dcm"]
    inside = phantom_study.study.files["t2"][0]
    assert run("--study", phantom_study.folder, "-o", inside, "--output-format", "dicom-seg") == 2
    assert errors(capsys) == [f"lckd: error: {inside}: is a file of the study folder {phantom_study.folder}; it "
                              f"would be overwritten, give another output name"]


def test_a_label_map_without_tumour_gives_a_seg_with_the_three_segments_empty(phantom_study, tmp_path):
    from lckd.dicom.segmentation_object import Algorithm, build_segmentation, write_segmentation

    reference = nib.load(str(phantom_study.nifti["t1ce"]))
    t1ce = reference_series(phantom_study)
    seg = build_segmentation(np.zeros(reference.shape, np.uint8), reference.affine, t1ce, Algorithm("m", "1"),
                             et_label=4, series_number=9, reference_name="t1ce", description="no tumour")
    path = write_segmentation(seg, tmp_path / "empty.dcm")
    read = hd.seg.segread(path)
    assert [read.get_segment_description(n).segment_label for n in read.get_segment_numbers()] == \
        ["necrosis", "oedema", "enhancing tumour"]
    assert not labels_by_highdicom(path, t1ce, reference.affine, reference.shape).any()
    assert dciodvfy_errors(path) == []


def test_a_study_prints_its_quality_estimate_and_refuses_an_uncertainty_map(phantom_study, tmp_path, capsys):
    mirrored = make_tiny_model_file(tmp_path / "mirrored.safetensors", mirror_axes=[2])  # two members averaged
    out = tmp_path / "tumour.dcm"
    assert run("--study", phantom_study.folder, "-o", out, "--model", mirrored) == 0
    printed = capsys.readouterr().out
    assert out.exists() and f"{out}: " in printed and "; quality ET " in printed
    assert run("--study", phantom_study.folder, "-o", tmp_path / "again.dcm", "--uncertainty",
               tmp_path / "map.nii.gz") == 2
    assert "--uncertainty writes a NIfTI map" in capsys.readouterr().err
    assert not (tmp_path / "again.dcm").exists() and not (tmp_path / "map.nii.gz").exists()


def test_a_batch_of_study_folders_accounts_for_every_study(phantom_study, tmp_path, capsys):
    studies = tmp_path / "studies"
    shutil.copytree(phantom_study.folder, studies / "good")
    rng = np.random.default_rng(0)
    images = {"t1": rng.integers(50, 400, size=(16, 16, 8)).astype(np.int16)}
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    write_study(studies / "mixed" / "a", images, affine, distractors=False)
    write_study(studies / "mixed" / "b", images, affine, distractors=False, patient_id="OTHER-7")
    out = tmp_path / "results"
    assert run("--batch", studies, "--studies", "--out-dir", out, "--output-format", "dicom-seg") == 1
    rows = {row["case"]: row for row in csv.DictReader(open(out / "volumes.csv"))}
    assert rows["good"]["status"] == "segmented" and rows["good"]["output"] == str(out / "good.dcm")
    assert float(rows["good"]["WT_ml"]) > 0 and rows["good"]["sequences"] == "flair+t1+t1ce+t2"
    assert [rows["good"][f"{region}_quality"] for region in ("ET", "TC", "WT")] == ["", "", ""]  # one member
    assert rows["mixed"]["status"] == "failed" and "holds images of 2 patients" in rows["mixed"]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["good.dcm", "volumes.csv"]
    err = capsys.readouterr().err
    assert "1 of 2 folders segmented" in err
    assert dciodvfy_errors(out / "good.dcm") == []
