"""Where the real scans lie (``../shared/data`` beside the repository) and a skip when they do not."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRATS2018 = SHARED_DATA / "brats2018"
BRATS2023 = SHARED_DATA / "brats2023"
CLINICAL = SHARED_DATA / "clinical" / "TCGA-FG-6692"
#: the patient after the BraTS pipeline (``flair.nii.gz`` ... ``t2.nii.gz``) and its reference label map,
#: the SIMPLE fusion of five BraTS algorithms
CLINICAL_BRATS_SPACE = CLINICAL / "brats-space"
CLINICAL_REFERENCE = CLINICAL_BRATS_SPACE / "reference_fusion_simple.nii.gz"


def require(folder: Path) -> Path:
    """``folder``, or skip the calling test with the reason when the real data is not beside the repo."""
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (the project's ../shared/data; never part of the repo)")
    return folder
