"""Patch augmentation (method.md section 6): three chains, chosen by the ``augmentation`` setting.

All draw random scale 0.9-1.1 and flips, then nnU-Net-style augmentations: elastic deformation,
rotation (+-15 degrees) with scaling, Gaussian noise, blur, brightness, contrast, simulated low
resolution, gamma, mirroring. Labels are resampled with nearest neighbour.

* ``monai``: the MONAI transform chain, each spatial transform resampling the patch in turn
  (what runs before the ``fast`` chain existed keep this).
* ``fast``: the same transforms with the same parameters and probabilities, the spatial ones
  composed into one resampling: the zoom and flips (every patch) as one separable interpolation
  of a window copied flipped from the case; rotation, scaling and the elastic displacement (some
  patches) as one ``grid_sample``, the elastic field smoothed on a grid 3x coarser than the patch
  and interpolated up (the same Gaussian random field as MONAI's full-resolution smoothing,
  zero-padded at the patch border as MONAI's is). Whatever MONAI's chain pads with zeros (outside
  the patch at any of its steps) is zero here too. The intensity transforms are MONAI's formulas,
  kernels and probabilities, computed in place in float32.
* ``released``: the ``fast`` chain with the authors' magnitudes: 4x the elastic displacement,
  scaling and rotation read the real context around the patch (zero only outside the case), and
  additive brightness (per sequence, N(0, 0.1), probability 0.15) instead of multiplicative.

Fix (method.md section 6): the authors' rotation pushes labels outside the volume to -1. Here
anything outside the image after a spatial transform is background (0), and a final check maps
any value that is not a BraTS label to background.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d
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
from scipy import ndimage

from .config import TrainConfig
from .data import CachedCase, crop

KEYS = ("image", "label")
VALID_LABELS = (0, 1, 2, 4)
ROTATION = math.radians(15.0)
ZOOM = (0.9, 1.1)
ELASTIC_SIGMA, ELASTIC_MAGNITUDE = (9.0, 13.0), (50.0, 200.0)
AFFINE_PROBABILITY, SCALE = 0.2, 0.15
#: the elastic field is smoothed on nodes this many times the smoothing width apart (then interpolated)
ELASTIC_NODES_PER_SIGMA = 3.0
#: the released chain's magnitudes
RELEASED_ELASTIC_FACTOR = 4.0
BRIGHTNESS_PROBABILITY, ADDITIVE_BRIGHTNESS_SIGMA = 0.15, 0.1


def make_augmentation(config: TrainConfig):
    """The chain ``config.augmentation`` names, or None when ``augment`` is off."""
    if not config.augment:
        return None
    if config.augmentation == "monai":
        return Augmentation(config)
    return FastAugmentation(config, released=config.augmentation == "released")


def _clean_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.rint(labels).astype(np.int16)
    labels[~np.isin(labels, VALID_LABELS)] = 0
    return labels.astype(np.uint8)


class Augmentation:
    """The MONAI chain: callable ``(case, patch start, seed) -> augmented images, labels``."""

    def __init__(self, config: TrainConfig) -> None:
        self.tile = tuple(config.tile_size)
        spatial = dict(keys=KEYS, mode=("bilinear", "nearest"), padding_mode="zeros")
        self.transform = Compose([
            RandZoomd(keys=KEYS, prob=1.0, min_zoom=ZOOM[0], max_zoom=ZOOM[1], mode=("trilinear", "nearest"),
                      padding_mode="constant", keep_size=True),
            Rand3DElasticd(prob=config.elastic_probability, sigma_range=ELASTIC_SIGMA,
                           magnitude_range=ELASTIC_MAGNITUDE, **spatial),
            RandAffined(prob=AFFINE_PROBABILITY, rotate_range=(ROTATION,) * 3, scale_range=(SCALE,) * 3, **spatial),
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

    def __call__(self, case: CachedCase, start: Sequence[int], seed: int) -> Tuple[np.ndarray, np.ndarray]:
        images, labels = crop(case, start, self.tile)
        return self.transform_patch(images, labels, seed)

    def transform_patch(self, images: np.ndarray, labels: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
        """The chain on a cropped patch ``(4, D, H, W)`` and its labels."""
        self.transform.set_random_state(seed=seed)
        out = self.transform({"image": images, "label": labels[None].astype(np.float32)})
        return np.asarray(out["image"], dtype=np.float32), _clean_labels(np.asarray(out["label"])[0])


def _window(case: CachedCase, start: Sequence[int], size: Sequence[int], flips: Sequence[bool],
            bounds: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The box ``start .. start + size`` of the case's images and labels, zero outside ``bounds``
    (first voxel, end) and reversed along the axes where ``flips``: one copy from the memory map."""
    out_images = np.zeros((case.images.shape[0],) + tuple(int(n) for n in size), np.float32)
    out_labels = np.zeros(tuple(int(n) for n in size), np.uint8)
    source, target = [], []
    for s, n, lowest, end, flip in zip(start, size, *bounds, flips):
        a, b = min(max(s, lowest), end), max(min(s + n, end), lowest)
        if b <= a:
            return out_images, out_labels
        lo, hi = a - s, b - s
        source.append(slice(a, b))
        target.append(slice(n - hi, n - lo) if flip else slice(lo, hi))
    reverse = tuple(slice(None, None, -1) if flip else slice(None) for flip in flips)
    out_images[(slice(None),) + tuple(target)] = case.images[(slice(None),) + tuple(source)][(slice(None),) + reverse]
    out_labels[tuple(target)] = case.labels[tuple(source)][reverse]
    return out_images, out_labels


def _smooth(image: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Separable Gaussian smoothing of ``image (C, D, H, W)`` with MONAI's kernels (erf, 4 sigma) and
    zero padding, each axis as a product with its banded matrix (faster than a strided correlation)."""
    x = torch.from_numpy(image)
    c, d, h, w = x.shape
    band = []
    for n, sigma in zip((d, h, w), sigmas):
        kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=4.0, approx="erf").float()
        radius = kernel.numel() // 2
        matrix = torch.zeros(n, n)
        for offset, weight in zip(range(-radius, radius + 1), kernel):
            if abs(offset) < n:
                matrix += torch.diag(torch.full((n - abs(offset),), float(weight)), offset)
        band.append(matrix)
    x = torch.matmul(x, band[2].T)
    x = torch.matmul(band[1], x)
    return torch.matmul(band[0], x.reshape(c, d, h * w)).reshape(c, d, h, w).numpy()


def _rotation(angles: Sequence[float]) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def elastic_nodes(shape: Sequence[int], sigma: float, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """A displacement field in voxels on nodes about ``sigma / 3`` voxels apart spanning a patch of
    ``shape`` (corner nodes on corner voxels), ``(3, *nodes)``: interpolated trilinearly it has the
    statistics of MONAI's ``Rand3DElastic`` field (uniform noise in [-1, 1] per voxel, Gaussian-
    smoothed with zero padding at the patch border, times ``magnitude``)."""
    nodes = [max(2, int(math.ceil((n - 1) * ELASTIC_NODES_PER_SIGMA / sigma)) + 1) for n in shape]
    spacing = [(n - 1) / (m - 1) if n > 1 else 1.0 for n, m in zip(shape, nodes)]
    # white noise of the same density: variance 1/3 per voxel is 1/3 / (h0 h1 h2) per node
    scale = math.sqrt(1.0 / 3.0 / float(np.prod(spacing)))
    noise = rng.standard_normal((3, *nodes)).astype(np.float32) * np.float32(scale)
    return np.stack([ndimage.gaussian_filter(c, [sigma / h for h in spacing], mode="constant", truncate=3.0)
                     for c in noise]) * np.float32(magnitude)


class FastAugmentation:
    """The ``fast`` (or, with ``released``, the ``released``) chain: callable
    ``(case, patch start, seed) -> augmented images, labels``."""

    def __init__(self, config: TrainConfig, released: bool = False) -> None:
        self.tile = np.array(config.tile_size)
        self.released = released
        self.elastic_probability = config.elastic_probability
        self.elastic_factor = RELEASED_ELASTIC_FACTOR if released else 1.0

    def __call__(self, case: CachedCase, start: Sequence[int], seed: int) -> Tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        # MONAI's zoom resizes the patch to floor(size * zoom) voxels per axis, then pads or crops
        zoom = np.maximum(np.floor(self.tile * rng.uniform(*ZOOM)), 1) / self.tile
        elastic = None
        if rng.random() < self.elastic_probability:
            sigma, magnitude = rng.uniform(*ELASTIC_SIGMA), rng.uniform(*ELASTIC_MAGNITUDE) * self.elastic_factor
            elastic = elastic_nodes(self.tile, sigma, magnitude, rng)
        affine = None
        if rng.random() < AFFINE_PROBABILITY:
            angles = rng.uniform(-ROTATION, ROTATION, 3)
            affine = _rotation(angles) @ np.diag(1.0 + rng.uniform(-SCALE, SCALE, 3))
        flips = rng.random(3) < 0.5
        start = np.asarray(start)
        shape = np.array(case.labels.shape)
        if self.released:  # real context, zero outside the case
            bounds = (np.zeros(3, int), shape)
        else:  # MONAI's chain sees only the patch: everything outside it is zero
            bounds = (np.maximum(start, 0), np.minimum(start + self.tile, shape))
        if elastic is None and affine is None:
            images, labels = self._zoom(case, start, bounds, zoom, flips)
        else:
            images, labels = self._resample(case, start, bounds, zoom, elastic, affine, flips)
        return self._intensity(images, rng), labels

    def _intensity(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """MONAI's intensity chain on ``image (4, D, H, W)`` float32, in place where it can be:
        noise, blur, brightness, contrast, low resolution, gamma."""
        if rng.random() < 0.1:  # RandGaussianNoise(std=0.1): std ~ U(0, 0.1)
            std = rng.uniform(0.0, 0.1)
            image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std)
        if rng.random() < 0.2:  # RandGaussianSmooth(sigma 0.5-1 per axis), MONAI's erf kernel, zero padding
            image = _smooth(image, rng.uniform(0.5, 1.0, 3))
        if rng.random() < BRIGHTNESS_PROBABILITY:
            if self.released:  # additive, per sequence
                image += rng.normal(0.0, ADDITIVE_BRIGHTNESS_SIGMA, (image.shape[0], 1, 1, 1)).astype(np.float32)
            else:  # RandScaleIntensity(factors=0.25)
                image *= np.float32(1.0 + rng.uniform(-0.25, 0.25))
        if rng.random() < 0.15:  # RandScaleIntensityFixedMean(factors=0.25): contrast about the mean
            mean = image.mean(dtype=np.float64)
            image -= np.float32(mean)
            image *= np.float32(1.0 + rng.uniform(-0.25, 0.25))
            image += np.float32(mean)
        if rng.random() < 0.25:  # RandSimulateLowResolution(zoom 0.5-1): nearest down, trilinear up
            factor = rng.uniform(0.5, 1.0)
            shape = image.shape[1:]
            size = tuple(max(1, int(round(n * factor))) for n in shape)
            low = F.interpolate(torch.from_numpy(image)[None], size=size, mode="nearest")
            image = F.interpolate(low, size=shape, mode="trilinear", align_corners=False)[0].numpy()
        if rng.random() < 0.15:  # RandAdjustContrast(gamma 0.7-1.5)
            gamma = rng.uniform(0.7, 1.5)
            low, span = image.min(), image.max() - image.min()
            image = ((image - low) / np.float32(span + 1e-7)) ** np.float32(gamma) * span + low
        return image

    def _zoom(self, case: CachedCase, start: np.ndarray, bounds: Tuple[np.ndarray, np.ndarray], zoom: np.ndarray,
              flips: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Zoom about the patch centre and flips: the window the patch's voxels come from, copied
        flipped, then interpolated to the tile (trilinear; labels nearest)."""
        tile = self.tile
        size = np.maximum(np.rint((tile - 1) / zoom).astype(int) + 1, 1)
        first = start + np.rint((tile - 1) / 2.0 - (size - 1) / 2.0).astype(int)
        window, window_labels = _window(case, first, size, flips, bounds)
        out = F.interpolate(torch.from_numpy(window)[None], size=tuple(int(t) for t in tile), mode="trilinear",
                            align_corners=True)[0].numpy()
        index = [np.rint(np.arange(t) * (s - 1) / max(t - 1, 1)).astype(np.intp) for t, s in zip(tile, size)]
        return out, window_labels[np.ix_(*index)]

    def _resample(self, case: CachedCase, start: np.ndarray, bounds: Tuple[np.ndarray, np.ndarray], zoom: np.ndarray,
                  elastic: Optional[np.ndarray], affine: Optional[np.ndarray],
                  flips: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """MONAI's order composed into one map from output voxels to source voxels, ``grid_sample``d
        once: flip, then the affine, then the elastic displacement, then the zoom about the centre."""
        tile = self.tile.astype(float)
        centre = (tile - 1) / 2.0
        half = np.maximum(centre, 0.5)
        linear = (affine if affine is not None else np.eye(3)) @ np.diag(np.where(flips, -1.0, 1.0))
        # the source box: the corners' images, widened by the largest displacement (trilinear
        # interpolation never exceeds the nodes' values)
        corners = np.array(np.meshgrid(*[(-c, c) for c in centre], indexing="ij")).reshape(3, -1)
        reach = (linear @ corners).T
        spread = np.abs(elastic).reshape(3, -1).max(axis=1) if elastic is not None else np.zeros(3)
        low = np.floor((reach.min(axis=0) - spread) / zoom + centre).astype(int) - 1
        high = np.ceil((reach.max(axis=0) + spread) / zoom + centre).astype(int) + 2
        low, high = np.maximum(low, bounds[0] - start), np.minimum(high, bounds[1] - start)
        size = np.maximum(high - low, 1)
        window, window_labels = _window(case, start + low, size, (False,) * 3, bounds)
        # y: the affine's source points, normalised to the patch (grid_sample's x, y, z = W, H, D)
        theta = np.zeros((1, 3, 4))
        theta[0, :, :3] = (np.diag(1.0 / half) @ linear @ np.diag(half))[::-1, ::-1]
        points = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32), [1, 1, *self.tile.tolist()],
                               align_corners=True)[0]  # (D, H, W, 3)
        keep = None
        if elastic is not None:
            nodes = torch.from_numpy(elastic[::-1].copy() / half[::-1, None, None, None].astype(np.float32))
            displacement = F.grid_sample(nodes[None], points[None], mode="bilinear", padding_mode="zeros",
                                         align_corners=True)[0]
            if not self.released and affine is not None:
                keep = self._inside(points, half)
            points += displacement.permute(1, 2, 3, 0)
        if not self.released:  # zero wherever MONAI's chain stepped outside the patch
            keep = self._inside(points, half) if keep is None else keep * self._inside(points, half)
        # to the window: source voxel = u / zoom + centre - low, normalised to the window
        window_half = np.maximum((size - 1) / 2.0, 0.5)
        scale = (half / zoom / window_half)[::-1].astype(np.float32)
        shift = ((centre - low - (size - 1) / 2.0) / window_half)[::-1].astype(np.float32)
        points.mul_(torch.from_numpy(scale.copy())).add_(torch.from_numpy(shift.copy()))
        grid = points[None]
        out = F.grid_sample(torch.from_numpy(window)[None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)[0]
        out_labels = F.grid_sample(torch.from_numpy(window_labels.astype(np.float32))[None, None], grid,
                                   mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
        if keep is not None:
            out.mul_(keep)
            out_labels.mul_(keep)
        return out.numpy(), _clean_labels(out_labels.numpy())

    @staticmethod
    def _inside(points: torch.Tensor, half: np.ndarray) -> torch.Tensor:
        """Normalised points ``(D, H, W, 3)`` within the patch (half a voxel beyond its border
        voxels' centres), as 0/1 floats ``(D, H, W)``."""
        limit = torch.as_tensor((1.0 + 0.5 / half)[::-1].copy(), dtype=torch.float32)
        return (points.abs() <= limit).all(dim=-1).to(torch.float32)
