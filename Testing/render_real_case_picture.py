"""Render ``Resources/RealCase.png``: the default model on a real patient it never saw in training.

The patient is TCGA-FG-6692 (TCGA-LGG, CC BY 3.0) after the BraTS preprocessing pipeline, from
``../shared/data/clinical`` (never copied into the repository; only the picture is committed). The
reference is the SIMPLE fusion of five BraTS 2020 algorithms, not an expert label.

    python Testing/render_real_case_picture.py      # from the repository root, in the project's venv
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from demo import overlay
from real_data import CLINICAL_BRATS_SPACE, CLINICAL_REFERENCE

from lckd.cli import default_model
from lckd.segmenter import Segmenter

OUTPUT = Path(__file__).resolve().parents[1] / "Resources" / "RealCase.png"
SUBSETS = (("flair", "t1", "t1ce", "t2"), ("flair", "t2"), ("t1ce",), ("flair",))


def main() -> int:
    if not CLINICAL_BRATS_SPACE.is_dir():
        print(f"{CLINICAL_BRATS_SPACE}: not found (the project's ../shared/data)", file=sys.stderr)
        return 2
    segmenter = Segmenter(default_model(), device="cpu", precision="fp32")
    files = {name: CLINICAL_BRATS_SPACE / f"{name}.nii.gz" for name in ("flair", "t1", "t1ce", "t2")}
    reference = np.asarray(nib.load(str(CLINICAL_REFERENCE)).dataobj).astype(np.uint8)
    predictions = {"+".join(subset): segmenter.segment_files({s: files[s] for s in subset}).labels
                   for subset in SUBSETS}
    image = np.asarray(nib.load(str(files["flair"])).dataobj)
    overlay(OUTPUT, image, reference, predictions,
            f"TCGA-FG-6692 (TCGA-LGG, CC BY 3.0), never trained on; {segmenter.card.name}",
            truth_title="reference (fusion of 5 BraTS algorithms)")
    print(f"written {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
