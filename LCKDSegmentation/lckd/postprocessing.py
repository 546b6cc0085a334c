"""Post-processing rules for label maps, applied on the output grid (``lckd segment --postprocess``).

* ``specks``: whole-tumour connected components (26-connected) smaller than
  :data:`MIN_COMPONENT_ML` become background. Isolated false-positive specks are the main source
  of large HD95 values on real scans.
* ``largest``: only the largest whole-tumour connected component (26-connected) is kept; every
  other component becomes background, whatever its size. It removes false-positive islands far
  from the tumour that ``specks`` keeps because they are over its size, and it also removes a real
  second lesion of a multifocal tumour.
* ``et500``: the BraTS rule. A case with less enhancing tumour than 500 voxels of 1 mm^3
  (0.5 mL) gets it relabelled as necrosis. It is stated in millilitres so that it means the same on
  any grid (the BraTS challenge applies it on its 1 mm grid).

* ``released``: the LCKD authors' ``postprocess.py`` (off by default; issue 15): tumour components
  (18-connected, as their ``skimage`` call) smaller than 2 mL or a tenth of the largest, or lying
  wholly in the first 26 mm of the array's third axis (their 26 slices of 1 mm), are dropped; in a
  kept component with almost no enhancing tumour, the darker of two intensity clusters of its
  oedema on T1ce becomes necrosis (their 3-means over the masked T1ce volume, whose zero background
  takes one cluster and whose brightest cluster they exclude, comes close to this for raw positive
  intensities; two clusters of the oedema alone do not depend on the intensity normalisation);
  then ``et500``. Their tests on a component sum label values (ET counts 4, oedema 2, necrosis 1),
  so their "450" is about 112 enhancing voxels; kept here as they act. Their script reads T1ce even
  when the network did not get it; here the clustering runs only when T1ce is one of the given
  sequences, and is deterministic (theirs starts from random centres).

Rules combine with ``+`` (``specks+et500``: specks first). Sizes are in mL, not voxels, for the
same reason as ``et500``. The speck size was chosen by measurement on the real-data model's 3 validation cases
(TrainingHistory.md, "Post-processing"; ``Testing/Benchmarks/postprocessing_rules.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import LCKDError
from .labels import NECROSIS, OEDEMA

#: Whole-tumour components smaller than this are dropped by ``specks`` (mL).
MIN_COMPONENT_ML = 2.0
#: The BraTS enhancing-tumour rule's size: 500 voxels of 1 mm^3 (mL).
MIN_ENHANCING_ML = 0.5
#: The released script's thresholds (voxels of 1 mm^3 there, mm and mL here).
RELEASED_MIN_COMPONENT_ML = 2.0
RELEASED_MIN_COMPONENT_FRACTION = 0.1
RELEASED_BORDER_MM = 26.0
RELEASED_ET_FRACTION_CASE = 0.12  # enhancing / whole tumour of the case, below which clustering may run
RELEASED_ET_FRACTION_COMPONENT = 0.05
RELEASED_ET_MAX_ML = 0.45 / 4  # their 450 compares a sum of label values (4 per enhancing voxel)
RELEASED_NECROSIS_MAX_ML = 10.0
RULES = ("none", "specks", "largest", "et500", "specks+et500", "largest+et500", "released")


def parse_rule(rule: str) -> Tuple[str, ...]:
    """``"specks+et500"`` -> ``("specks", "et500")``; ``"none"`` -> ``()``; a clear error otherwise."""
    if rule not in RULES:
        raise LCKDError(f"unknown post-processing {rule!r}; choose from {', '.join(RULES)}")
    return () if rule == "none" else tuple(rule.split("+"))


def _whole_tumour_components(labels: np.ndarray) -> Tuple[np.ndarray, int]:
    """The 26-connected components of the tumour (any non-zero label) and their count."""
    from scipy import ndimage  # not at import time: the command's parser imports this module

    return ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))


def drop_small_components(labels: np.ndarray, voxel_volume_mm3: float,
                          min_ml: float = MIN_COMPONENT_ML) -> np.ndarray:
    """Whole-tumour components (any non-zero label, 26-connected) below ``min_ml`` become 0."""
    components, count = _whole_tumour_components(labels)
    if count == 0:
        return labels
    sizes_ml = np.bincount(components.ravel())[1:] * voxel_volume_mm3 / 1000.0
    small = np.flatnonzero(sizes_ml < min_ml) + 1
    if small.size == 0:
        return labels
    cleaned = labels.copy()
    cleaned[np.isin(components, small)] = 0
    return cleaned


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Only the largest whole-tumour component (any non-zero label, 26-connected) is kept."""
    components, count = _whole_tumour_components(labels)
    if count <= 1:
        return labels
    largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
    return np.where(components == largest, labels, 0).astype(labels.dtype)


def relabel_small_enhancing(labels: np.ndarray, voxel_volume_mm3: float, et_label: int = 4,
                            min_ml: float = MIN_ENHANCING_ML) -> np.ndarray:
    """The BraTS rule: less than ``min_ml`` of enhancing tumour in the case -> necrosis."""
    enhancing = labels == et_label
    volume_ml = int(enhancing.sum()) * voxel_volume_mm3 / 1000.0
    if 0 < volume_ml < min_ml:
        labels = labels.copy()
        labels[enhancing] = NECROSIS
    return labels


def _two_means_lower(values: np.ndarray) -> np.ndarray:
    """Which ``values`` fall in the darker of two 1-D k-means clusters (deterministic: min/max start)."""
    low, high = float(values.min()), float(values.max())
    if low == high:  # one intensity: no darker cluster
        return np.zeros(values.shape, bool)
    for _ in range(20):  # Lloyd iterations on a line converge in a few steps
        darker = np.abs(values - low) <= np.abs(values - high)
        if darker.all() or not darker.any():
            break
        new_low, new_high = float(values[darker].mean()), float(values[~darker].mean())
        if new_low == low and new_high == high:
            break
        low, high = new_low, new_high
    return darker


def released_postprocess(labels: np.ndarray, spacing_mm: Sequence[float], t1ce: Optional[np.ndarray],
                         et_label: int = 4) -> np.ndarray:
    """The LCKD authors' post-processing (module docstring, ``released``) on a grid of ``spacing_mm``."""
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    components, count = ndimage.label(labels > 0, structure=ndimage.generate_binary_structure(3, 2))
    if count == 0:
        return labels
    sizes_ml = np.bincount(components.ravel())[1:] * voxel_ml
    limit_ml = min(RELEASED_MIN_COMPONENT_ML, RELEASED_MIN_COMPONENT_FRACTION * float(sizes_ml.max()))
    top_mm = np.array([box[2].stop * spacing_mm[2] for box in ndimage.find_objects(components)])
    out = labels.copy()
    out[np.isin(components, np.flatnonzero((sizes_ml < limit_ml) | (top_mm <= RELEASED_BORDER_MM)) + 1)] = 0
    # the release tests these case-wide fractions on the label map before any component is dropped
    case_et_fraction = float((labels == et_label).sum()) / max(int((labels > 0).sum()), 1)
    if t1ce is not None and case_et_fraction < RELEASED_ET_FRACTION_CASE:
        for index in np.unique(components[out > 0]):
            inside = components == index
            enhancing = int((out[inside] == et_label).sum())
            oedema = inside & (out == OEDEMA)
            weighted = 4 * enhancing + 2 * int(oedema.sum()) + int((out[inside] == NECROSIS).sum())
            if (4 * enhancing / weighted < RELEASED_ET_FRACTION_COMPONENT
                    and enhancing * voxel_ml < RELEASED_ET_MAX_ML
                    and (out == NECROSIS).sum() * voxel_ml < RELEASED_NECROSIS_MAX_ML and oedema.sum() > 1):
                where = np.flatnonzero(oedema)
                out.flat[where[_two_means_lower(t1ce.flat[where].astype(np.float64))]] = NECROSIS
    return relabel_small_enhancing(out, voxel_ml * 1000.0, et_label)


def postprocess(labels: np.ndarray, rule: str, voxel_volume_mm3: float, et_label: int = 4,
                spacing_mm: Optional[Sequence[float]] = None, t1ce: Optional[np.ndarray] = None) -> np.ndarray:
    """Apply a rule of :data:`RULES` to a BraTS label map with voxels of ``voxel_volume_mm3``.

    ``released`` also reads the voxel ``spacing_mm`` (default: cubic voxels) and the T1ce image on
    the same grid (``None`` when T1ce was not given: no clustering)."""
    for step in parse_rule(rule):
        if step == "specks":
            labels = drop_small_components(labels, voxel_volume_mm3)
        elif step == "largest":
            labels = keep_largest_component(labels)
        elif step == "released":
            spacing = tuple(spacing_mm) if spacing_mm is not None else (voxel_volume_mm3 ** (1 / 3),) * 3
            labels = released_postprocess(labels, spacing, t1ce, et_label)
        else:
            labels = relabel_small_enhancing(labels, voxel_volume_mm3, et_label)
    return labels
