"""Agreement of bf16 with fp32 inference: Dice between the two label maps per region (ET, TC, WT)
for the bundled default model on real BraTS 2018 cases (the first ``--cases`` of ../shared/data,
where it lies beside the repository; phantom cases otherwise) and all 15 subsets of sequences (the
worst pair named with its region's size), and the mean probability difference of the paper preset
on one tile (random weights, where no trained paper weights are bundled: a probe of how rounding
grows with the network's depth).

Both precisions run the CPU path `lckd segment` takes (frozen, channels-last). Prints one JSON line.

    python Testing/Benchmarks/precision_agreement.py --cases 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from lckd.cases import find_cases, read_case_folder
from lckd.cli import BUNDLED_MODEL
from lckd.inference import TilePredictor
from lckd.io import load_volume
from lckd.labels import regions_from_labels
from lckd.network import PRESETS, LCKDNet
from lckd.phantom.generator import write_cases
from lckd.segmenter import Segmenter
from lckd.sequences import all_subsets
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_data import BRATS2018  # noqa: E402  (Testing/real_data.py: where ../shared/data lies)


def paper_probability_difference() -> float:
    """Mean |p_bf16 - p_fp32| over one paper tile with all four sequences (random weights)."""
    torch.manual_seed(0)
    tile = torch.randn(1, 4, 80, 160, 160)
    probabilities = []
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(1)
        model = LCKDNet(PRESETS["paper"]).freeze_for_inference(dtype, channels_last=True)
        with torch.no_grad():
            probabilities.append(TilePredictor(model, [True] * 4, reuse_absent=True)(tile))
    return float((probabilities[0] - probabilities[1]).abs().mean())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2,
                        help="cases: the first BraTS 2018 case folders of ../shared/data, else phantoms (seeds 100, "
                             "101, ...; 1 mm)")
    args = parser.parse_args(argv)
    segmenters = {precision: Segmenter(BUNDLED_MODEL, device="cpu", precision=precision)
                  for precision in ("fp32", "bf16")}
    scores = {region: [] for region in REPORTED_REGIONS}
    worst = {}
    with tempfile.TemporaryDirectory() as work:
        if BRATS2018.is_dir():
            source, cases = "BraTS 2018", find_cases(BRATS2018)[:args.cases]
        else:
            source = "phantom"
            cases = [read_case_folder(folder) for folder in write_cases(Path(work), n_cases=args.cases, seed=100)]
        for case in cases:
            volumes = {name: load_volume(path) for name, path in case.sequences.items()}
            for subset in all_subsets():
                regions = [regions_from_labels(segmenters[p].segment_volumes({s: volumes[s] for s in subset}).labels)
                           for p in ("fp32", "bf16")]
                for region in REPORTED_REGIONS:
                    channel = REGION_INDEX[region]
                    scores[region].append(dice(regions[0][channel], regions[1][channel]))
                    if scores[region][-1] <= min(scores[region]):
                        worst[region] = {"case": case.name, "subset": "+".join(subset),
                                         "fp32_voxels": int(regions[0][channel].sum())}
    result = {"model": BUNDLED_MODEL.name, "source": source, "cases": len(cases), "subsets": len(all_subsets()),
              "dice_min": {r: round(float(np.min(v)), 4) for r, v in scores.items()},
              "dice_mean": {r: round(float(np.mean(v)), 4) for r, v in scores.items()},
              "worst": worst,
              "paper_tile_mean_abs_probability_difference": round(paper_probability_difference(), 5)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
