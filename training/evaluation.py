"""Evaluation over all 15 non-empty subsets of the sequences (method.md section 7).

Dice and HD95 per region (ET, TC, WT) per subset, on the prepared cases' working grid, after the
same sliding window, threshold and nested relabel as ``lckd segment``.

HD95 follows the BraTS convention: the 95th percentile of the *pooled* symmetric surface
distances (both directions in one set). MONAI's ``compute_hausdorff_distance`` takes the larger
of the two directed percentiles instead, so the pooled form is computed here with scipy distance
transforms. Empty masks: both empty gives Dice 1 and HD95 0; one empty gives Dice 0 and HD95
373.13 mm (the BraTS penalty, the diagonal of the 240 x 240 x 155 mm volume).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from lckd.inference import sliding_window_probabilities
from lckd.labels import dice, labels_from_regions, regions_from_labels
from lckd.network import LCKDNet
from lckd.postprocessing import postprocess as apply_postprocessing
from lckd.sequences import REGIONS, REPORTED_REGIONS, SEQUENCES, all_subsets, presence_mask, subset_key

from .data import CachedCase

REGION_INDEX = {region: channel for channel, region in enumerate(REGIONS)}  # channel of regions_from_labels
EMPTY_HD95 = 373.13


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the pooled symmetric surface distances (mm)."""
    if not prediction.any() and not truth.any():
        return 0.0
    if not prediction.any() or not truth.any():
        return EMPTY_HD95
    surface_p, surface_t = _surface(prediction), _surface(truth)
    to_truth = ndimage.distance_transform_edt(~surface_t, sampling=spacing)
    to_prediction = ndimage.distance_transform_edt(~surface_p, sampling=spacing)
    distances = np.concatenate([to_truth[surface_p], to_prediction[surface_t]])
    return float(np.percentile(distances, 95))


class ScoreTable:
    """Dice and HD95 per case, subset and region; :meth:`result` averages them over the cases into
    the dictionary :func:`evaluate` returns (also used by benchmarks that score other predictions)."""

    def __init__(self, subset_keys: Sequence[str], spacing_mm: float) -> None:
        self.spacing = (spacing_mm,) * 3
        self.subset_keys = list(subset_keys)
        self.dice: Dict[str, Dict[str, Dict[str, float]]] = {}  # case -> subset -> region -> Dice
        self.hd95: Dict[str, Dict[str, Dict[str, float]]] = {}

    def add(self, case: str, key: str, found: np.ndarray, truth: np.ndarray) -> None:
        """Score one case's region masks ``found`` against ``truth`` (both ``regions_from_labels``)."""
        dice_row = self.dice.setdefault(case, {}).setdefault(key, {})
        hd_row = self.hd95.setdefault(case, {}).setdefault(key, {})
        for region in REPORTED_REGIONS:
            index = REGION_INDEX[region]
            dice_row[region] = dice(found[index], truth[index])
            hd_row[region] = hd95(found[index], truth[index], self.spacing)

    def result(self, postprocess: str, mirror_axes: Sequence[int]) -> Dict[str, object]:
        """The averages over the scored cases, and every case's own figures under ``per_case``."""
        cases = list(self.dice)

        def mean(scores: Dict[str, Dict[str, Dict[str, float]]], key: str, region: str) -> float:
            return float(np.mean([scores[case][key][region] for case in cases])) if cases else 0.0

        table = {k: {r: round(mean(self.dice, k, r), 4) for r in REPORTED_REGIONS} for k in self.subset_keys}
        hd = {k: {r: round(mean(self.hd95, k, r), 2) for r in REPORTED_REGIONS} for k in self.subset_keys}
        average = {r: round(float(np.mean([table[k][r] for k in table])), 4) for r in REPORTED_REGIONS}
        hd_average = {r: round(float(np.mean([hd[k][r] for k in hd])), 2) for r in REPORTED_REGIONS}
        per_case = {case: {"dice": {k: {r: round(v, 4) for r, v in per.items()} for k, per in self.dice[case].items()},
                           "hd95": {k: {r: round(v, 2) for r, v in per.items()} for k, per in self.hd95[case].items()}}
                    for case in cases}
        return {"subsets": table, "average": average, "hd95": hd, "hd95_average": hd_average, "cases": len(cases),
                "postprocess": postprocess, "mirror_axes": list(mirror_axes), "per_case": per_case}


@torch.no_grad()
def evaluate(model: LCKDNet, cases: Sequence[CachedCase], tile_size: Sequence[int], spacing_mm: float,
             device: torch.device, subsets: Optional[Sequence[Sequence[str]]] = None,
             on_step: Optional[Callable[[], None]] = None, postprocess: str = "none",
             mirror_axes: Sequence[int] = ()) -> Dict[str, object]:
    """``{"subsets": {key: {"ET": d, "TC": d, "WT": d}}, "average": {...}, "hd95": {...}, ...,
    "per_case": {case: {"dice": {key: {...}}, "hd95": {key: {...}}}}}``.

    ``postprocess`` is a rule of ``lckd segment --postprocess`` (:data:`lckd.postprocessing.RULES`),
    applied on the evaluation grid (sizes in mL, so it means the same as on the output grid);
    ``mirror_axes`` the test-time mirroring of ``lckd segment`` (none by default).
    """
    was_training = model.training
    model.eval()
    subsets = list(subsets or all_subsets())
    scores = ScoreTable([subset_key(s) for s in subsets], spacing_mm)
    for case in cases:
        images = torch.from_numpy(np.array(case.images)).to(device)
        truth = regions_from_labels(case.labels)
        for subset in subsets:
            probabilities = sliding_window_probabilities(model, images, presence_mask(subset), tile_size,
                                                         mirror_axes=mirror_axes)
            labels = labels_from_regions(probabilities.cpu().numpy())
            scores.add(case.name, subset_key(subset), found_regions(labels, case, subset, postprocess, spacing_mm),
                       truth)
            if on_step is not None:
                on_step()
    model.train(was_training)
    return scores.result(postprocess, mirror_axes)


def found_regions(labels: np.ndarray, case: CachedCase, subset: Sequence[str], postprocess: str,
                  spacing_mm: float) -> np.ndarray:
    """Region masks of a predicted label map after the post-processing rule (which may use T1ce)."""
    t1ce = case.images[SEQUENCES.index("t1ce")] if "t1ce" in subset else None
    return regions_from_labels(apply_postprocessing(labels, postprocess, spacing_mm ** 3, t1ce=t1ce))
