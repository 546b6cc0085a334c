"""A real BraTS case as a hospital's DICOM study (made at test time from ../shared/data, never committed):
its series recognised among a localiser and a reformat, read back voxel for voxel, and segmented by the
bundled default model into a DICOM SEG that equals the NIfTI route's label map."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_studies import write_study
from real_data import BRATS2018, require
from seg_readers import dciodvfy_errors, labels_by_dcmqi, labels_by_highdicom

from lckd.cli import main
from lckd.dicom.recognition import select_series
from lckd.dicom.study import read_series_volume, read_study

#: One of the 13 cases added after 0.4.0 (a training case of the default 0.5.0: the test compares routes, not accuracy).
CASE = "Brats18_2013_2_1"
#: One worker writes the study once for both tests.
pytestmark = pytest.mark.xdist_group("dicom-real-data")


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    folder = require(BRATS2018) / CASE
    images = {name: nib.load(str(folder / f"{CASE}_{name}.nii.gz")) for name in ("flair", "t1", "t1ce", "t2")}
    affine = images["t1ce"].affine
    assert all(np.allclose(image.affine, affine) for image in images.values())
    data = {name: np.asarray(image.dataobj) for name, image in images.items()}
    written = write_study(tmp_path_factory.mktemp("real_study") / "export", data, affine,
                          patient_id="BRATS-2013-2", patient_name="Brats18^2013^2")
    return written, folder, data, affine


def test_a_real_case_as_a_dicom_study_is_recognised_and_read_back_exactly(real_study):
    written, _, data, affine = real_study
    study = read_study(written.folder)
    selection = select_series(study)
    assert {name: series.uid for name, series in selection.chosen.items()} == \
        {name: written.series_uids[name] for name in data}
    assert {series.uid for series, _ in selection.passed_over} == \
        {written.series_uids["localiser"], written.series_uids["reformat"]}
    for name, series in selection.chosen.items():
        volume = read_series_volume(series, study.folder)
        np.testing.assert_array_equal(volume.data, data[name])
        np.testing.assert_allclose(volume.affine, affine, atol=1e-4)


@pytest.mark.slow
def test_the_default_model_segments_the_real_study_into_a_seg_equal_to_the_nifti_route(real_study, tmp_path):
    written, folder, _, affine = real_study
    seg_path, nifti_path = tmp_path / "tumour.dcm", tmp_path / "tumour.nii.gz"
    assert main(["segment", "--study", str(written.folder), "-o", str(seg_path), "--no-tta", "--progress", "none"]) == 0
    assert main(["segment", "--case", str(folder), "-o", str(nifti_path), "--no-tta", "--progress", "none"]) == 0
    labels = np.asarray(nib.load(str(nifti_path)).dataobj)
    assert labels.any()
    t1ce = [pydicom.dcmread(path, stop_before_pixels=True) for path in written.files["t1ce"]]
    np.testing.assert_array_equal(labels_by_highdicom(seg_path, t1ce, affine, labels.shape), labels)
    np.testing.assert_array_equal(labels_by_dcmqi(seg_path, tmp_path / "dcmqi", affine, labels.shape), labels)
    assert dciodvfy_errors(seg_path) == []
