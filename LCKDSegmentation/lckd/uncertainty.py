"""When not to trust a segmentation: the spread of the members a model averages (every network on
every mirror image of test-time mirroring), collected on the passes inference runs anyway.

* **Voxel uncertainty map**: the binary entropy (bits) of the averaged probability of each region
  (ET, WT, TC), the largest of the three: 0 where the averaged members are sure a voxel is in or
  out of every region, 1 where their average is 0.5.
* **Quality estimate per region** (ET, TC, WT): the mean Dice between each member's region mask
  (probability > 0.5) and the averaged one's: 1 when every member draws the same region.
* **Review flag**: a region whose estimate is below its threshold is named for review: the model
  card's ``review_below`` (measured for that model), else :data:`REVIEW_BELOW`.

How these compare with other measures of the spread on real cases the model never saw, and how the
thresholds were chosen: Resources/Docs/Inference.md, "Uncertainty"
(``Testing/Benchmarks/uncertainty_calibration.py``). A single network without test-time mirroring
averages one member: there is no spread, so no estimate and no map.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import numpy as np
import torch

from .labels import dice
from .sequences import REGIONS, REPORTED_REGIONS

#: The regions' names in messages.
REGION_TITLES = {"ET": "enhancing tumour", "TC": "tumour core", "WT": "whole tumour"}
#: The review thresholds of a model whose card has none (``review_below``): those that
#: Testing/Benchmarks/uncertainty_calibration.py chose (most catches minus costs, rounded to two decimals) for
#: 0.5.0 (one network, 8 mirror images) on its 7 validation cases, 15 sequence subsets each (Inference.md,
#: "Uncertainty"). A model with other members agrees differently: measure it and store its own with --write-card.
REVIEW_BELOW = {"ET": 0.93, "TC": 0.93, "WT": 0.88}


def member_count(networks: int, mirror_images: int) -> int:
    """How many members a model averages: each network on each mirror image."""
    return networks * mirror_images


def binary_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """The entropy in bits of Bernoulli probabilities: 0 at 0 and 1, 1 at 0.5."""
    p = probabilities.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def uncertainty_map(probabilities: torch.Tensor) -> torch.Tensor:
    """The voxel uncertainty map ``(Z, Y, X)`` in [0, 1] of averaged region probabilities ``(3, Z, Y, X)``."""
    return binary_entropy(probabilities).amax(dim=0)


class MemberSpread:
    """Collects the members of an averaged prediction as :func:`lckd.inference.sliding_window_probabilities`
    hands them over (``on_member``): each member's region masks, packed into bits."""

    def __init__(self) -> None:
        self.masks: List[np.ndarray] = []
        self.shape: Optional[torch.Size] = None

    def __call__(self, probabilities: torch.Tensor) -> None:
        """One member's region probabilities ``(3, Z, Y, X)``."""
        self.shape = probabilities.shape
        self.masks.append(np.packbits((probabilities > 0.5).cpu().numpy().reshape(-1)))

    @property
    def members(self) -> int:
        return len(self.masks)

    def _member_mask(self, index: int) -> torch.Tensor:
        count = int(np.prod(self.shape))
        return torch.from_numpy(np.unpackbits(self.masks[index], count=count).astype(bool).reshape(self.shape))

    def quality(self, probabilities: torch.Tensor) -> Optional[Dict[str, float]]:
        """The quality estimate per region (ET, TC, WT) for the averaged ``probabilities``; None with
        fewer than two members (no spread)."""
        if self.members < 2:
            return None
        averaged = (probabilities > 0.5).cpu()
        totals = {region: 0.0 for region in REPORTED_REGIONS}
        for index in range(self.members):
            mask = self._member_mask(index)
            for region in REPORTED_REGIONS:
                channel = REGIONS.index(region)
                totals[region] += dice(mask[channel], averaged[channel])
        return {region: totals[region] / self.members for region in REPORTED_REGIONS}


def needs_review(quality: Optional[Mapping[str, float]], below: Optional[Mapping[str, float]] = None) -> List[str]:
    """The regions (ET, TC, WT) whose quality estimate is below their review threshold (``below``, by
    default :data:`REVIEW_BELOW`)."""
    if quality is None:
        return []
    below = REVIEW_BELOW if below is None else below
    return [region for region in REPORTED_REGIONS if quality[region] < below[region]]


def review_message(region: str) -> str:
    """The review flag of one region, e.g. ``"enhancing tumour uncertain: review"``."""
    return f"{REGION_TITLES[region]} uncertain: review"
