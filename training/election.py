"""LCKD teacher election (method.md section 4).

For every case of the held-out election set, sliding-window inference with one sequence alone,
for each of the four sequences; soft Dice on probabilities, averaged over cases, per region. The
teacher of a region is the sequence with the best score; the teacher set is their union.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from lckd.inference import sliding_window_probabilities
from lckd.labels import regions_from_labels
from lckd.network import LCKDNet
from lckd.sequences import REGIONS, SEQUENCES

from .data import CachedCase


def soft_dice(probabilities: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Soft Dice per region for ``(3, ...)`` probabilities and binary targets."""
    dims = tuple(range(1, probabilities.dim()))
    intersection = (probabilities * regions).sum(dim=dims)
    return 2 * intersection / (probabilities.sum(dim=dims) + regions.sum(dim=dims) + 1.0)


@torch.no_grad()
def elect_teachers(model: LCKDNet, cases: Sequence[CachedCase], tile_size: Sequence[int],
                   device: torch.device, iteration: int = 0) -> Dict[str, object]:
    """Scores and teachers: ``{"per_region": {...}, "set": [...], "scores": {region: {seq: d}}}``."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(SEQUENCES), len(REGIONS))
    for case in cases:
        images = torch.from_numpy(np.array(case.images)).to(device)
        regions = torch.from_numpy(regions_from_labels(case.labels)).to(device).float()
        for index in range(len(SEQUENCES)):
            present = [i == index for i in range(len(SEQUENCES))]
            probabilities = sliding_window_probabilities(model, images, present, tile_size)
            totals[index] += soft_dice(probabilities, regions).cpu()
    model.train(was_training)
    scores = totals / max(len(cases), 1)
    per_region = {region: SEQUENCES[int(scores[:, r].argmax())] for r, region in enumerate(REGIONS)}
    teacher_set: List[str] = [s for s in SEQUENCES if s in per_region.values()]
    return {"per_region": per_region, "set": teacher_set, "iteration": iteration,
            "scores": {region: {s: round(float(scores[i, r]), 4) for i, s in enumerate(SEQUENCES)}
                       for r, region in enumerate(REGIONS)}}
