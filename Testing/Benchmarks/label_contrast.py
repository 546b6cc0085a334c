"""How visible each tumour label is in each sequence, per labelled case: the median intensity of the
label's voxels divided by the median of normal-appearing brain (non-zero voxels outside the label
map), on the original files. A ratio near 1 means the label is not brighter or darker than normal
brain in that sequence: a model has little intensity contrast to find it by there (e.g. an
"enhancing" tumour that does not enhance on T1ce).

    python Testing/Benchmarks/label_contrast.py --data ../shared/data/brats2018
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lckd.cases import find_cases
from lckd.io import load_volume
from lckd.labels import convert_convention
from lckd.sequences import SEQUENCES

LABELS = {"NCR": 1, "ED": 2, "ET": 4}


def contrast(image: np.ndarray, labels: np.ndarray, value: int) -> float:
    """Median of the label's voxels over the median of normal-appearing brain (nan without the label)."""
    region = labels == value
    brain = (image != 0) & (labels == 0)
    if not region.any() or not brain.any():
        return float("nan")
    return float(np.median(image[region]) / np.median(image[brain]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    args = parser.parse_args()
    print("| case | " + " | ".join(f"{s} {label}" for s in SEQUENCES for label in LABELS) + " |")
    print("| --- |" + " ---: |" * (len(SEQUENCES) * len(LABELS)))
    for case in find_cases(args.data):
        if case.segmentation is None:
            continue
        labels = convert_convention(np.asarray(load_volume(case.segmentation, allow_empty=True).data).astype(np.uint8),
                                    case.et_label, LABELS["ET"])
        cells = []
        for sequence in SEQUENCES:
            if sequence not in case.sequences:
                cells += [""] * len(LABELS)
                continue
            image = np.asarray(load_volume(case.sequences[sequence]).data)
            cells += [f"{contrast(image, labels, value):.2f}" for value in LABELS.values()]
        print(f"| {case.name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
