"""The case loaders and the default model on the real scans of ``../shared/data`` (skipped without it)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from real_data import BRATS2018, BRATS2023, require

from lckd.cases import find_cases, read_case_folder
from lckd.io import load_volume


def test_brats2018_cases_are_found_with_all_files():
    cases = find_cases(require(BRATS2018))
    assert len(cases) == 14
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
