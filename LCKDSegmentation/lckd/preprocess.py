"""Per-sequence intensity normalisation and the brain bounding-box crop.

Normalisation (method.md section 1): clip at a robust maximum (the upper edge of the highest
histogram bin that still holds at least ``min_bin_count`` brain voxels), z-score over brain voxels
(non-zero voxels: BraTS images are skull-stripped with an exact-zero background), and set the
background to 0. The settings travel in the model card so training and inference agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class Normalisation:
    """Settings of the per-sequence normalisation (stored in the model card)."""

    name: str = "robust-clip-zscore"
    histogram_bins: int = 1000
    min_bin_count: int = 50

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, object]) -> Normalisation:
        settings = cls(**values)
        if settings.name != cls.name:
            raise ValueError(f"unsupported normalisation {settings.name!r}")
        return settings


def robust_maximum(values: np.ndarray, bins: int, min_count: int) -> float:
    """Upper edge of the highest histogram bin of ``values`` that holds >= ``min_count`` voxels."""
    counts, edges = np.histogram(values, bins=bins)
    populated = np.nonzero(counts >= min_count)[0]
    if populated.size == 0:
        return float(values.max())
    return float(edges[populated[-1] + 1])


def normalise(image: np.ndarray, settings: Normalisation = Normalisation(),
              brain: Optional[np.ndarray] = None) -> np.ndarray:
    """Normalised float32 copy of one sequence; ``brain`` defaults to the non-zero voxels."""
    image = np.asarray(image, dtype=np.float32)
    mask = image != 0 if brain is None else brain
    out = np.zeros_like(image)
    values = image[mask]
    if values.size == 0:
        return out
    clipped = np.minimum(values, robust_maximum(values, settings.histogram_bins, settings.min_bin_count))
    std = float(clipped.std())
    out[mask] = (clipped - clipped.mean()) / (std if std > 1e-8 else 1.0)
    return out


Box = Tuple[slice, ...]


def brain_box(images: Sequence[np.ndarray], margin: int = 4) -> Box:
    """Bounding box (slices) of the voxels that are non-zero in any image, plus ``margin``.

    Returns the whole extent when every voxel is zero.
    """
    shape = images[0].shape
    foreground = np.zeros(shape, dtype=bool)
    for image in images:
        foreground |= image != 0
    if not foreground.any():
        return tuple(slice(0, n) for n in shape)
    box = []
    for axis in range(len(shape)):
        other = tuple(a for a in range(len(shape)) if a != axis)
        hits = np.nonzero(foreground.any(axis=other))[0]
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, shape[axis])))
    return tuple(box)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The box of the last ``len(box)`` axes of ``array`` (leading axes kept)."""
    return array[(Ellipsis,) + tuple(box)]


def uncrop(array: np.ndarray, box: Box, shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Place a cropped array (leading axes kept) back into a ``shape`` array filled with ``fill``."""
    out = np.full(array.shape[: array.ndim - len(box)] + tuple(shape), fill, dtype=array.dtype)
    out[(Ellipsis,) + tuple(box)] = array
    return out
