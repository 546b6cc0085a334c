"""BraTS label maps <-> overlapping tumour regions (method.md sections 1 and 7).

Labels: 0 background, 1 necrosis / non-enhancing core (NCR/NET), 2 oedema (ED), 4 enhancing
tumour (ET; 3 in the BraTS 2023 convention). Regions, in channel order ``ET, WT, TC``:
ET = {4}, WT = {1, 2, 4}, TC = {1, 4}.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from .sequences import REGIONS

NECROSIS = 1
OEDEMA = 2
#: The enhancing-tumour label value of each output convention.
ET_LABEL = {"brats2018": 4, "brats2023": 3}


def dice(prediction, truth) -> float:
    """Dice of two boolean masks (numpy arrays or torch tensors); both empty: 1."""
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (prediction & truth).sum() / total)


def et_label_of(convention: str) -> int:
    try:
        return ET_LABEL[convention]
    except KeyError:
        raise ValueError(f"unknown label convention {convention!r}; choose from {', '.join(ET_LABEL)}") from None


def regions_from_labels(labels: np.ndarray, et_label: int = 4) -> np.ndarray:
    """Boolean region masks ``(3, *labels.shape)`` in the order ET, WT, TC."""
    et = labels == et_label
    necrosis = labels == NECROSIS
    whole = et | necrosis | (labels == OEDEMA)
    return np.stack([et, whole, et | necrosis])


def labels_from_regions(regions: np.ndarray, threshold: float = 0.5, et_label: int = 4) -> np.ndarray:
    """Nested relabel of region probabilities or masks ``(3, ...)`` (ET, WT, TC) to a uint8 map.

    Written in nesting order: WT -> oedema, then TC -> necrosis, then ET -> enhancing tumour.
    """
    if regions.shape[0] != len(REGIONS):
        raise ValueError(f"expected {len(REGIONS)} region channels, got {regions.shape[0]}")
    masks = regions > threshold if regions.dtype != bool else regions
    labels = np.zeros(regions.shape[1:], dtype=np.uint8)
    labels[masks[1]] = OEDEMA
    labels[masks[2]] = NECROSIS
    labels[masks[0]] = et_label
    return labels


def convert_convention(labels: np.ndarray, source_et: int, target_et: int) -> np.ndarray:
    """Change the enhancing-tumour value of a label map (e.g. 3 <-> 4)."""
    if source_et == target_et:
        return labels
    converted = labels.copy()
    converted[labels == source_et] = target_et
    return converted


def region_volumes_ml(labels: np.ndarray, voxel_volume_mm3: float, et_label: int = 4) -> Dict[str, float]:
    """Volumes of ET, TC and WT in millilitres."""
    regions = regions_from_labels(labels, et_label)
    return {name: float(regions[index].sum()) * voxel_volume_mm3 / 1000.0
            for index, name in enumerate(REGIONS)}
