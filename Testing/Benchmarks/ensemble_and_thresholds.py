"""Two inference-side ideas measured on labelled cases, without retraining: averaging the region
probabilities of several models (an ensemble, as nnU-Net and Auto3DSeg do with their folds and
algorithms) and other thresholds than 0.5 per region (for the first model).

Every model runs once per case and subset (15 subsets); each candidate is then scored like ``lckd
evaluate`` (nested relabel, the post-processing rule, Dice and HD95 on the working grid) and the table
has issue 12's goal figures (method_comparison.py). The models must share spacing and normalisation.

    python Testing/Benchmarks/ensemble_and_thresholds.py --data ../shared/data/brats2018 \\
        --split training/splits/brats2018-seed0.json --mirror-axes none --out ensemble.json \\
        a=~/runs/a/model.safetensors b=~/runs/b/model.safetensors
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from lckd.cases import find_cases
from lckd.inference import sliding_window_probabilities
from lckd.labels import labels_from_regions, regions_from_labels
from lckd.model_file import load_model
from lckd.preprocess import Normalisation
from lckd.sequences import REGIONS, all_subsets, presence_mask, subset_key
from training.command import chosen_mirror_axes, parse_mirror_axes
from training.data import prepared_one_by_one, read_split_file
from training.evaluation import ScoreTable, found_regions

_spec = importlib.util.spec_from_file_location("method_comparison", Path(__file__).parent / "method_comparison.py")
method_comparison = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(method_comparison)


def parse_models(pairs: Sequence[str]) -> Dict[str, Path]:
    """``["A=a.safetensors", ...]`` -> ``{"A": Path("a.safetensors"), ...}``."""
    models: Dict[str, Path] = {}
    for pair in pairs:
        label, sep, place = pair.partition("=")
        if not sep or not label or not Path(place).expanduser().is_file():
            raise SystemExit(f"{pair}: expected LABEL=MODEL_FILE (an existing .safetensors file)")
        models[label] = Path(place).expanduser()
    return models


def candidates(labels: Sequence[str], thresholds: Sequence[float]) -> List[Tuple[str, Tuple[str, ...], np.ndarray]]:
    """(name, models averaged, thresholds in REGIONS order): every model and combination at 0.5, then
    the first model with every per-region threshold combination (ET, TC, WT named in that order)."""
    half = np.full(len(REGIONS), 0.5)
    chosen = [("+".join(c), c, half) for k in range(1, len(labels) + 1) for c in itertools.combinations(labels, k)]
    for et, tc, wt in itertools.product(thresholds, repeat=3):
        if (et, tc, wt) != (0.5, 0.5, 0.5):
            per_region = np.array([{"ET": et, "TC": tc, "WT": wt}[r] for r in REGIONS])
            chosen.append((f"{labels[0]} ET>{et:g} TC>{tc:g} WT>{wt:g}", (labels[0],), per_region))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="LABEL=MODEL_FILE")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", type=Path, help="a split file (lckd train --split): its validation cases")
    parser.add_argument("--fold", type=int, metavar="K", help="the fold K of a --split file of folds")
    parser.add_argument("--cases", default="", help="comma-separated case names: only these (of the split's)")
    parser.add_argument("--mirror-axes", type=parse_mirror_axes, default="none",
                        help="'none', 'model' (each card's) or e.g. 0,1,2")
    parser.add_argument("--postprocess", default="specks", help="a rule of lckd segment --postprocess")
    parser.add_argument("--thresholds", default="0.3,0.4,0.5", help="per-region thresholds tried (first model)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file: one evaluation per candidate")
    args = parser.parse_args()
    models = parse_models(args.models)
    loaded = {label: load_model(path, device="cpu") for label, path in models.items()}
    for model, _ in loaded.values():
        model.eval()
    cards = [card for _, card in loaded.values()]
    if len({(tuple(c.spacing_mm), json.dumps(c.normalisation, sort_keys=True)) for c in cards}) > 1:
        raise SystemExit("the models differ in spacing or normalisation: their probabilities cannot be averaged")
    spacing = cards[0].spacing_mm[0]
    normalisation = Normalisation.from_dict(cards[0].normalisation) if cards[0].normalisation else Normalisation()
    cases = [case for case in find_cases(args.data) if case.segmentation is not None]
    if args.split:
        chosen = set(read_split_file(args.split, cases, args.fold)["validation"])
        cases = [case for case in cases if case.name in chosen]
    if args.cases:
        wanted = set(args.cases.split(","))
        missing = wanted - {case.name for case in cases}
        if missing:
            raise SystemExit(f"--cases: {', '.join(sorted(missing))} not among the labelled (validation) cases")
        cases = [case for case in cases if case.name in wanted]
    tried = candidates(list(models), [float(t) for t in args.thresholds.split(",")])
    keys = [subset_key(s) for s in all_subsets()]
    tables = {name: ScoreTable(keys, spacing) for name, _, _ in tried}
    for prepared in prepared_one_by_one(cases, spacing, normalisation):
        images = torch.from_numpy(np.array(prepared.images))
        truth = regions_from_labels(prepared.labels)
        for subset in all_subsets():
            probabilities = {}
            for label, (model, card) in loaded.items():
                with torch.no_grad():
                    probabilities[label] = sliding_window_probabilities(
                        model, images, presence_mask(subset), card.tile_size,
                        mirror_axes=chosen_mirror_axes(args.mirror_axes, card.mirror_axes)).numpy()
            for name, members, threshold in tried:
                averaged = np.mean([probabilities[m] for m in members], axis=0)
                labels = labels_from_regions(averaged > threshold[:, None, None, None])
                tables[name].add(prepared.name, subset_key(subset),
                                 found_regions(labels, prepared, subset, args.postprocess, spacing), truth)
        print(f"{prepared.name}: done", flush=True)
    results = {name: table.result(args.postprocess, []) for name, table in tables.items()}
    args.out.write_text(json.dumps({"models": {k: str(v) for k, v in models.items()}, "mirror_axes": args.mirror_axes,
                                    "cases": [c.name for c in cases], "candidates": results}, indent=2))
    print(method_comparison.markdown(results).split("\n\n")[0])


if __name__ == "__main__":
    main()
