"""A DICOM study folder in any arrangement: instances grouped by series, FLAIR / T1 / T1ce / T2 recognised
from the series' own attributes, the user's choice by UID, and every bad study refused in one line."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_studies import series_datasets, study_attributes, write_study
from pydicom.uid import generate_uid

from lckd.cli import main
from lckd.dicom.recognition import recognise, select_series
from lckd.dicom.study import Series, geometry_problem, read_series_volume, read_study
from lckd.errors import InputError

AFFINE = np.array([[2.0, 0, 0, -24], [0, 2.0, 0, -28], [0, 0, 2.5, -20], [0, 0, 0, 1]])
SEQUENCE_NAMES = ("flair", "t1", "t1ce", "t2")


def errors(capsys) -> list:
    """The error lines on stderr (a study's series report comes before them)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("lckd: error")]


def small_images(shape=(24, 28, 16), seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.integers(50, 400, size=shape).astype(np.int16) for name in SEQUENCE_NAMES}


@pytest.fixture
def study(tmp_path):
    """A small four-sequence study with a localiser and a coronal reformat, files interleaved, no extensions."""
    return write_study(tmp_path / "export", small_images(), AFFINE)


def one_series(**attributes) -> Series:
    """A three-slice series with the given scanner attributes (``series_datasets`` keywords) or overrides."""
    overrides = {key: attributes.pop(key) for key in list(attributes) if key[0].isupper()}
    attributes.setdefault("description", "")
    datasets = series_datasets(np.zeros((4, 4, 3)), AFFINE, study_attributes("P", "P^P", generate_uid()),
                               series_uid=generate_uid(), number=7, **attributes)
    for dataset in datasets:
        for keyword, value in overrides.items():
            setattr(dataset, keyword, value)
    return Series(uid=datasets[0].SeriesInstanceUID, datasets=datasets, paths=[])


@pytest.mark.parametrize("attributes, expected, because", [
    (dict(description="AX T2 FLAIR"), "flair", "named FLAIR"),
    (dict(description="t2_tirm_tra_dark-fluid"), "flair", "named FLAIR"),
    (dict(description="AX T1 FLAIR", repetition=2000.0, echo=10.0, inversion=800.0), "t1", "named T1"),
    (dict(description="sag MPRAGE iso"), "t1", "no contrast agent recorded"),
    (dict(description="sag MPRAGE iso", contrast="Gadovist"), "t1ce", "ContrastBolusAgent 'Gadovist'"),
    (dict(description="AX T1 PRE", contrast="Gadovist"), "t1", "before contrast ('pre'; ContrastBolusAgent"),
    (dict(description="AX T1+C"), "t1ce", "after contrast"),
    (dict(description="T1 precontrast", contrast="Gadovist"), "t1", "before contrast ('precontrast'"),
    (dict(description="T1 SE non-contrast"), "t1", "before contrast ('non-contrast')"),
    (dict(description="T1 pre and post"), None, "both before and after contrast"),
    (dict(description="t1_se_tra_KM"), "t1ce", "after contrast"),
    (dict(description="AX T2 TSE"), "t2", "named T2"),
    (dict(description="AX T2* GRE"), None, "susceptibility-weighted"),
    (dict(description="ep2d_diff_b1000"), None, "diffusion-weighted"),
    (dict(description="3-Plane Loc"), None, "a localiser"),
    (dict(description="AX T1 POST", image_type=("DERIVED", "SECONDARY", "MPR")), None, "derived or reformatted"),
    (dict(description="COR T1 POST MPR"), None, "derived or reformatted"),
    (dict(scanning="SE\\IR", repetition=9000.0, echo=81.0, inversion=2500.0), "flair", "TI >= 1500 ms"),
    (dict(repetition=5000.0, echo=98.0), "t2", "long TE and TR"),
    (dict(repetition=550.0, echo=9.5), "t1", "short TR and TE"),
    (dict(repetition=550.0, echo=9.5, contrast="Dotarem"), "t1ce", "ContrastBolusAgent 'Dotarem'"),
    (dict(repetition=2300.0, echo=2.3, inversion=900.0), "t1", "inversion-prepared"),
    (dict(repetition=3000.0, echo=30.0), None, "not recognised"),
    (dict(description="AX T1", Modality="CT"), None, "modality CT, not MR"),
])
def test_a_series_is_recognised_from_its_own_attributes(attributes, expected, because):
    recognition = recognise(one_series(**attributes))
    assert recognition.sequence == expected
    assert because in recognition.reason


def test_a_study_in_any_arrangement_is_grouped_and_its_sequences_recognised(study, capsys):
    found = read_study(study.folder)
    assert found.uid == study.study_uid
    assert {series.uid for series in found.series} == set(study.series_uids.values())
    (study.folder / "README.TXT").write_text("not DICOM")
    assert read_study(study.folder).other_files == 1
    selection = select_series(found)
    assert {name: series.uid for name, series in selection.chosen.items()} == \
        {name: study.series_uids[name] for name in SEQUENCE_NAMES}
    skipped = {series.uid: reason for series, reason in selection.passed_over}
    assert skipped[study.series_uids["localiser"]].startswith("a localiser (ImageType LOCALIZER)")
    assert skipped[study.series_uids["reformat"]].startswith("derived or reformatted (ImageType DERIVED")
    lines = selection.lines()
    assert lines[2].startswith("T1ce   <- series 400 'AX T1 SE POST GD'") and "after contrast ('post')" in lines[2]


def test_series_volumes_are_the_written_voxels_on_the_written_grid(study):
    found = read_study(study.folder)
    images = small_images()
    for name, series in select_series(found).chosen.items():
        volume = read_series_volume(series, found.folder)
        np.testing.assert_array_equal(volume.data, images[name])
        np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-5)


def test_two_candidates_for_one_sequence_are_an_error_listing_both_and_the_user_chooses(tmp_path, capsys, tiny_model):
    folder = tmp_path / "study"
    written = write_study(folder, small_images(), AFFINE, distractors=False)
    second = write_study(tmp_path / "second", {"t1ce": small_images(seed=1)["t1ce"]}, AFFINE, distractors=False,
                         descriptions={"t1ce": dict(description="COR T1 POST GD")})
    (folder / "extra").mkdir()
    for path in second.files["t1ce"]:  # the second T1ce joins the first study
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID = written.study_uid
        dataset.SeriesNumber = 700
        dataset.save_as(folder / "extra" / path.name)
    with pytest.raises(InputError) as refused:
        select_series(read_study(folder))
    message = str(refused.value)
    assert "2 series could be T1ce" in message and written.series_uids["t1ce"] in message
    assert second.series_uids["t1ce"] in message and "--t1ce-series UID" in message
    out = tmp_path / "tumour.nii.gz"
    assert main(["segment", "--study", str(folder), "-o", str(out), "--model", str(tiny_model)]) == 2
    error = errors(capsys)
    assert len(error) == 1 and "2 series could be T1ce" in error[0] and not out.exists()
    chosen = select_series(read_study(folder), {"t1ce": second.series_uids["t1ce"]})
    assert chosen.chosen["t1ce"].uid == second.series_uids["t1ce"]
    assert chosen.reasons["t1ce"].startswith("chosen with --t1ce-series")
    with pytest.raises(InputError, match="--t2-series 1.2.3: no such series in the study"):
        select_series(read_study(folder), {"t2": "1.2.3"})


def test_mixed_patients_and_two_studies_in_one_folder_are_refused(tmp_path, capsys, tiny_model):
    first = write_study(tmp_path / "mixed" / "a", small_images(), AFFINE, distractors=False)
    write_study(tmp_path / "mixed" / "b", small_images(), AFFINE, distractors=False, patient_id="OTHER-7")
    out = tmp_path / "tumour.dcm"
    assert main(["segment", "--study", str(tmp_path / "mixed"), "-o", str(out), "--model", str(tiny_model)]) == 2
    error = errors(capsys)
    assert len(error) == 1 and "holds images of 2 patients" in error[0] and "'OTHER-7'" in error[0]
    assert "'LCKD-TEST-001'" in error[0] and not out.exists()
    write_study(tmp_path / "two" / "a", small_images(), AFFINE, distractors=False)
    write_study(tmp_path / "two" / "b", small_images(), AFFINE, distractors=False)
    with pytest.raises(InputError, match="holds 2 studies"):
        read_study(tmp_path / "two")
    assert first.study_uid  # the first study alone reads fine
    assert read_study(tmp_path / "mixed" / "a").uid == first.study_uid


def test_a_study_without_a_recognisable_sequence_lists_its_series(tmp_path, capsys, tiny_model):
    folder = tmp_path / "study"
    write_study(folder, {"t2": small_images()["t2"]}, AFFINE,
                descriptions={"t2": dict(description="ep2d_diff_b1000", protocol="diffusion")})
    out = tmp_path / "tumour.nii.gz"
    assert main(["segment", "--study", str(folder), "-o", str(out), "--model", str(tiny_model)]) == 2
    error = errors(capsys)
    assert len(error) == 1 and "no series recognised as FLAIR, T1, T1ce or T2" in error[0]
    assert "a localiser" in error[0] and "diffusion-weighted" in error[0] and not out.exists()


@pytest.mark.parametrize("damage, problem", [
    ("missing", "missing slices: a gap of 5.00 mm"),
    ("uneven", "uneven slice spacing"),
    ("repeated", "repeat another's slice position"),
])
def test_a_series_with_missing_slices_or_uneven_spacing_is_refused(tmp_path, capsys, tiny_model, damage, problem):
    folder = tmp_path / "study"
    written = write_study(folder, small_images(), AFFINE, distractors=False)
    t2 = sorted(written.files["t2"], key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    if damage == "missing":
        t2[7].unlink()
    else:
        dataset = pydicom.dcmread(t2[7])
        position = [float(v) for v in dataset.ImagePositionPatient]
        position[2] = float(pydicom.dcmread(t2[8 if damage == "repeated" else 7]).ImagePositionPatient[2]) + \
            (0 if damage == "repeated" else 1.0)
        dataset.ImagePositionPatient = position
        dataset.save_as(t2[7])
    series = read_study(folder).find(written.series_uids["t2"])
    assert problem in geometry_problem(series)
    out = tmp_path / "tumour.dcm"
    assert main(["segment", "--study", str(folder), "-o", str(out), "--model", str(tiny_model)]) == 2
    error = errors(capsys)
    assert len(error) == 1 and "series 500 'AX T2 TSE'" in error[0] and problem in error[0]
    assert not out.exists() and not list(tmp_path.glob(".tumour*"))


def test_dicom_options_without_their_packages_name_the_pip_command(study, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "highdicom" else real(name, *a))
    assert main(["segment", "--study", str(study.folder), "-o", str(tmp_path / "t.dcm")]) == 2
    error = errors(capsys)
    assert error == ["lckd: error: DICOM studies and DICOM SEG output need highdicom, which is not installed: "
                     "pip install 'lckd-segmentation[dicom]'"]
