"""Choose the post-processing rule by measurement: Dice and HD95 of each rule and speck threshold,
15-subset averages over labelled cases (the real validation cases in Training.md).

The network runs once per case and subset (with the model card's test-time mirroring unless
``--mirror-axes`` says otherwise); every rule
is applied to the same label map on the working grid, as ``lckd evaluate --postprocess RULE`` does.

    python Testing/Benchmarks/postprocessing_rules.py --model M.safetensors --data ../shared/data/brats2018 \\
        --split training/splits/brats2018-by-source.json --out postprocessing.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

from lckd.cases import find_cases
from lckd.inference import sliding_window_probabilities
from lckd.labels import labels_from_regions, regions_from_labels
from lckd.model_file import load_model
from lckd.postprocessing import drop_small_components, postprocess, relabel_small_enhancing
from lckd.preprocess import Normalisation
from lckd.sequences import SEQUENCES, all_subsets, presence_mask
from training.command import chosen_mirror_axes, parse_mirror_axes
from training.data import prepared_one_by_one, read_split_file
from training.evaluation import REGION_INDEX, REPORTED_REGIONS, dice, hd95

SPECK_THRESHOLDS_ML = (0.1, 0.25, 0.5, 1.0, 2.0)


def variants(voxel_mm3: float) -> Dict[str, Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]]:
    """Each candidate rule as a function of a label map and the T1ce image (None: T1ce not given)."""
    rules: Dict[str, Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]] = {
        "none": lambda labels, t1ce: labels,
        "et500": lambda labels, t1ce: relabel_small_enhancing(labels, voxel_mm3),
        "largest": lambda labels, t1ce: postprocess(labels, "largest", voxel_mm3),
        "largest+et500": lambda labels, t1ce: postprocess(labels, "largest+et500", voxel_mm3),
        "released": lambda labels, t1ce: postprocess(labels, "released", voxel_mm3, t1ce=t1ce)}
    for ml in SPECK_THRESHOLDS_ML:
        rules[f"specks<{ml:g}mL"] = lambda labels, t1ce, ml=ml: drop_small_components(labels, voxel_mm3, ml)
        rules[f"specks<{ml:g}mL+et500"] = lambda labels, t1ce, ml=ml: relabel_small_enhancing(
            drop_small_components(labels, voxel_mm3, ml), voxel_mm3)
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cases", nargs="*", help="case names (default: every labelled case of --data)")
    parser.add_argument("--split", type=Path, help="a split file (lckd train --split): its validation cases")
    parser.add_argument("--fold", type=int, metavar="K", help="the fold K of a --split file of folds")
    parser.add_argument("--mirror-axes", type=parse_mirror_axes, default="model", metavar="AXES",
                        help="test-time mirroring: model (the card's, default), none, or network axes like 0,1,2")
    parser.add_argument("--out", type=Path, required=True, help="JSON file with the table")
    args = parser.parse_args()
    model, card = load_model(args.model, device="cpu")
    model.eval()
    normalisation = Normalisation.from_dict(card.normalisation) if card.normalisation else Normalisation()
    spacing = card.spacing_mm[0]
    cases = [case for case in find_cases(args.data) if case.segmentation is not None]
    held_out = read_split_file(args.split, cases, args.fold)["validation"] if args.split else []
    chosen = set(args.cases or []) | set(held_out)
    cases = [case for case in cases if not chosen or case.name in chosen]
    mirror_axes = chosen_mirror_axes(args.mirror_axes, card.mirror_axes)
    rules = variants(spacing ** 3)
    sums = {name: {f"{kind} {r}": 0.0 for kind in ("Dice", "HD95") for r in REPORTED_REGIONS} for name in rules}
    runs = 0
    for prepared in prepared_one_by_one(cases, spacing, normalisation):
        images = torch.from_numpy(np.array(prepared.images))
        truth = regions_from_labels(prepared.labels)
        for subset in all_subsets():
            with torch.no_grad():
                probabilities = sliding_window_probabilities(model, images, presence_mask(subset), card.tile_size,
                                                             mirror_axes=mirror_axes)
            labels = labels_from_regions(probabilities.numpy())
            runs += 1
            t1ce = prepared.images[SEQUENCES.index("t1ce")] if "t1ce" in subset else None
            for name, rule in rules.items():
                found = regions_from_labels(rule(labels, t1ce))
                for region in REPORTED_REGIONS:
                    index = REGION_INDEX[region]
                    sums[name][f"Dice {region}"] += dice(found[index], truth[index])
                    sums[name][f"HD95 {region}"] += hd95(found[index], truth[index], (spacing,) * 3)
        print(f"{prepared.name}: done", flush=True)
    table = {name: {key: round(value / runs, 4) for key, value in scores.items()} for name, scores in sums.items()}
    args.out.write_text(json.dumps({"model": card.name, "cases": [c.name for c in cases], "runs": runs,
                                    "mirror_axes": mirror_axes, "table": table}, indent=2))
    header = ["rule"] + list(next(iter(table.values())))
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, scores in table.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" if k.startswith("Dice") else f"{v:.1f}"
                                          for k, v in scores.items()) + " |")


if __name__ == "__main__":
    main()
