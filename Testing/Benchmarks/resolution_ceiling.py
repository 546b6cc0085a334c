"""The Dice a perfect model could reach on a coarser working grid: each expert region is averaged
down to the working spacing (the fraction of each coarse voxel it covers, which is what a perfect
probability map would say there), brought back to the scan's grid by trilinear interpolation and
thresholded at 0.5, then scored against the region itself.

    python Testing/Benchmarks/resolution_ceiling.py --data ../shared/data/brats2018 \\
        --split training/splits/brats2018-seed0.json --spacing 1.5 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)

from lckd.cases import find_cases
from lckd.io import load_volume
from lckd.labels import convert_convention, regions_from_labels
from training.data import read_split_file
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice


def ceiling(labels: np.ndarray, voxel_mm: Sequence[float], spacing_mm: float) -> Dict[str, float]:
    """Dice of each region after the round trip through a ``spacing_mm`` grid."""
    regions = regions_from_labels(labels)
    coarse = [max(1, round(n * v / spacing_mm)) for n, v in zip(labels.shape, voxel_mm)]
    scores = {}
    for region in REPORTED_REGIONS:
        truth = regions[REGION_INDEX[region]]
        volume = torch.from_numpy(truth.astype(np.float32))[None, None]
        down = F.interpolate(volume, size=coarse, mode="area")
        back = F.interpolate(down, size=truth.shape, mode="trilinear", align_corners=False)[0, 0].numpy()
        scores[region] = round(dice(back > 0.5, truth), 4)
    return scores


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of labelled BraTS cases")
    parser.add_argument("--split", type=Path, help="score only this split file's validation cases")
    parser.add_argument("--fold", type=int, metavar="K", help="the fold K of a --split file of folds")
    parser.add_argument("--spacing", type=float, nargs="+", default=[2.0], help="working spacings (mm)")
    args = parser.parse_args(argv)
    cases = find_cases(args.data)
    if args.split is not None:
        names = set(read_split_file(args.split, cases, args.fold)["validation"])
        cases = [case for case in cases if case.name in names]
    result: Dict[str, Dict[str, Dict[str, float]]] = {}
    for case in cases:
        volume = load_volume(case.segmentation, allow_empty=True)
        labels = convert_convention(np.asarray(volume.data).astype(np.uint8), case.et_label, 4)
        result[case.name] = {f"{s:g}mm": ceiling(labels, volume.spacing, s) for s in args.spacing}
        print(case.name, json.dumps(result[case.name]), flush=True)


if __name__ == "__main__":
    main()
