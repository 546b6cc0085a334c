"""Patch augmentation (method.md section 6) with MONAI transforms.

Random scale 0.9-1.1 and flips, then nnU-Net-style augmentations: elastic deformation, rotation
(+-15 degrees) with scaling, Gaussian noise, blur, brightness, contrast, simulated low resolution,
gamma, mirroring. Spatial transforms sample labels with nearest neighbour and zero padding.

Fix (method.md section 6): the authors' rotation pushes labels outside the volume to -1. Here
anything outside the image after a spatial transform is background (0), and a final check maps
any value that is not a BraTS label to background.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from monai.transforms import (
    Compose,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
    RandZoomd,
)

from .config import TrainConfig

KEYS = ("image", "label")
VALID_LABELS = (0, 1, 2, 4)


class Augmentation:
    """Callable ``(images (4, D, H, W), labels (D, H, W), seed) -> augmented copies``."""

    def __init__(self, config: TrainConfig) -> None:
        rotation = math.radians(15.0)
        spatial = dict(keys=KEYS, mode=("bilinear", "nearest"), padding_mode="zeros")
        self.transform = Compose([
            RandZoomd(keys=KEYS, prob=1.0, min_zoom=0.9, max_zoom=1.1, mode=("trilinear", "nearest"),
                      padding_mode="constant", keep_size=True),
            Rand3DElasticd(prob=config.elastic_probability, sigma_range=(9, 13), magnitude_range=(50, 200),
                           **spatial),
            RandAffined(prob=0.2, rotate_range=(rotation,) * 3, scale_range=(0.15,) * 3, **spatial),
            RandGaussianNoised(keys="image", prob=0.1, std=0.1),
            RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
            RandScaleIntensityd(keys="image", prob=0.15, factors=0.25),  # brightness
            RandScaleIntensityFixedMeand(keys="image", prob=0.15, factors=0.25),  # contrast
            RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0)),
            RandAdjustContrastd(keys="image", prob=0.15, gamma=(0.7, 1.5)),  # gamma
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=0),
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1),
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=2),
        ])

    def __call__(self, images: np.ndarray, labels: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
        self.transform.set_random_state(seed=seed)
        out = self.transform({"image": images, "label": labels[None].astype(np.float32)})
        image = np.asarray(out["image"], dtype=np.float32)
        label = np.rint(np.asarray(out["label"])[0]).astype(np.int16)
        label[~np.isin(label, VALID_LABELS)] = 0
        return image, label.astype(np.uint8)
