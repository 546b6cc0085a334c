"""Post-processing rules for label maps, applied on the output grid (``lckd segment --postprocess``).

* ``specks``: whole-tumour connected components (26-connected) smaller than
  :data:`MIN_COMPONENT_ML` become background. Isolated false-positive specks are the main source
  of large HD95 values on real scans.
* ``et500``: the BraTS rule. A case with less enhancing tumour than 500 voxels of 1 mm^3
  (0.5 mL) gets it relabelled as necrosis. It is stated in millilitres so that it means the same on
  any grid (the BraTS challenge applies it on its 1 mm grid).

Rules combine with ``+`` (``specks+et500``: specks first). Sizes are in mL, not voxels, for the
same reason as ``et500``. The speck size was chosen by measurement on the real-data model's 3 validation cases
(Training.md, "Post-processing"; ``Testing/Benchmarks/postprocessing_rules.py``).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .errors import LCKDError
from .labels import NECROSIS

#: Whole-tumour components smaller than this are dropped by ``specks`` (mL).
MIN_COMPONENT_ML = 2.0
#: The BraTS enhancing-tumour rule's size: 500 voxels of 1 mm^3 (mL).
MIN_ENHANCING_ML = 0.5
RULES = ("none", "specks", "et500", "specks+et500")


def parse_rule(rule: str) -> Tuple[str, ...]:
    """``"specks+et500"`` -> ``("specks", "et500")``; ``"none"`` -> ``()``; a clear error otherwise."""
    if rule not in RULES:
        raise LCKDError(f"unknown post-processing {rule!r}; choose from {', '.join(RULES)}")
    return () if rule == "none" else tuple(rule.split("+"))


def drop_small_components(labels: np.ndarray, voxel_volume_mm3: float,
                          min_ml: float = MIN_COMPONENT_ML) -> np.ndarray:
    """Whole-tumour components (any non-zero label, 26-connected) below ``min_ml`` become 0."""
    from scipy import ndimage  # not at import time: the command's parser imports this module

    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return labels
    sizes_ml = np.bincount(components.ravel())[1:] * voxel_volume_mm3 / 1000.0
    small = np.flatnonzero(sizes_ml < min_ml) + 1
    if small.size == 0:
        return labels
    cleaned = labels.copy()
    cleaned[np.isin(components, small)] = 0
    return cleaned


def relabel_small_enhancing(labels: np.ndarray, voxel_volume_mm3: float, et_label: int = 4,
                            min_ml: float = MIN_ENHANCING_ML) -> np.ndarray:
    """The BraTS rule: less than ``min_ml`` of enhancing tumour in the case -> necrosis."""
    enhancing = labels == et_label
    volume_ml = int(enhancing.sum()) * voxel_volume_mm3 / 1000.0
    if 0 < volume_ml < min_ml:
        labels = labels.copy()
        labels[enhancing] = NECROSIS
    return labels


def postprocess(labels: np.ndarray, rule: str, voxel_volume_mm3: float, et_label: int = 4) -> np.ndarray:
    """Apply a rule of :data:`RULES` to a BraTS label map with voxels of ``voxel_volume_mm3``."""
    for step in parse_rule(rule):
        if step == "specks":
            labels = drop_small_components(labels, voxel_volume_mm3)
        else:
            labels = relabel_small_enhancing(labels, voxel_volume_mm3, et_label)
    return labels
