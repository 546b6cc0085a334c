"""A random glioma-like tumour on an anatomy: irregular core with an enhancing rim and a necrotic
centre, oedema spreading preferentially along white matter, and optional mass effect.

All work happens in a box around the tumour, so a full 1 mm case stays fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np
from scipy import ndimage

from .anatomy import Anatomy, load_anatomy

NECROSIS, OEDEMA, ENHANCING = 1, 2, 4


@dataclass
class Tumour:
    """Labels (BraTS 2018 values) and the tissue maps after mass effect, on the anatomy's grid."""

    labels: np.ndarray
    tissues: Dict[str, np.ndarray]
    centre_voxel: Tuple[int, int, int]
    enhancing: bool


@functools.lru_cache(maxsize=4)
def _depth_mm(spacing: float) -> np.ndarray:
    """Distance (mm) from each brain voxel to the outside of the brain."""
    return ndimage.distance_transform_edt(load_anatomy(spacing).brain, sampling=spacing).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma_voxels: float) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_voxels, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal 3 x 3 matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def sample_tumour(anatomy: Anatomy, rng: np.random.Generator, mass_effect: bool = True) -> Tumour:
    """Draw one tumour. Sizes span BraTS' range: core radius 5-22 mm, oedema 3-18 mm beyond it."""
    spacing = float(anatomy.grid.affine[0, 0])
    depth = _depth_mm(spacing)
    core_radius = float(np.exp(rng.uniform(np.log(5.0), np.log(22.0))))
    oedema_reach = float(rng.uniform(3.0, 18.0))
    necrotic_fraction = float(rng.uniform(0.3, 0.65))
    enhancing = bool(rng.random() < 0.88)  # some BraTS cases (lower-grade) have no enhancing tumour

    # centre: white matter of one hemisphere, deep enough for the core to stay inside the brain
    world_x = anatomy.grid.affine[0, 0] * np.arange(anatomy.grid.shape[0]) + anatomy.grid.affine[0, 3]
    side = np.sign(world_x)[:, None, None] == (1 if rng.random() < 0.5 else -1)
    candidates = (anatomy.white > 0.5) & side & (np.abs(world_x)[:, None, None] > 8.0)
    while True:
        allowed = candidates & (depth > 0.9 * core_radius + 3.0)
        if allowed.any() or core_radius < 4.0:
            break
        core_radius *= 0.85
    choices = np.flatnonzero(allowed if allowed.any() else candidates)
    centre = np.array(np.unravel_index(int(rng.choice(choices)), anatomy.grid.shape))

    half = int(np.ceil((1.5 * core_radius + 1.6 * oedema_reach + 8.0) / spacing))
    low = np.maximum(centre - half, 0)
    high = np.minimum(centre + half + 1, anatomy.grid.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    shape = tuple(int(b - a) for a, b in zip(low, high))
    offsets = np.stack(np.meshgrid(*[(np.arange(n) + a - c) * spacing for n, a, c in zip(shape, low, centre)],
                                   indexing="ij"), axis=-1)  # mm from the centre
    radius_mm = np.linalg.norm(offsets, axis=-1)

    tissues = {name: getattr(anatomy, name).copy() for name in ("grey", "white", "csf")}
    brain = anatomy.brain.copy()
    if mass_effect:  # sample tissue closer to the centre: it appears pushed outward
        strength = rng.uniform(0.1, 0.35)
        shrink = 1.0 - strength * np.exp(-((radius_mm / (2.0 * core_radius)) ** 2))
        source = centre[:, None, None, None] - low[:, None, None, None] + \
            np.moveaxis(offsets, -1, 0) * shrink / spacing
        for values in tissues.values():
            values[box] = ndimage.map_coordinates(values[box], source, order=1, mode="nearest")
        brain[box] = ndimage.map_coordinates(brain[box].astype(np.float32), source, order=1, mode="nearest") > 0.5

    # irregular core: a randomly oriented ellipsoid whose surface is perturbed by smooth noise
    axes = rng.uniform(0.75, 1.25, size=3)
    local = offsets @ _random_rotation(rng).T / axes
    shape_noise = _smooth_noise(rng, shape, 3.0 / spacing)
    core_distance = np.linalg.norm(local, axis=-1) / core_radius * (1.0 + 0.22 * shape_noise)
    inside = brain[box]
    core = (core_distance < 1.0) & inside
    necrosis = (core_distance < necrotic_fraction * (1.0 + 0.15 * _smooth_noise(rng, shape, 2.0 / spacing))) & core

    # oedema: reaches further where the tissue is white matter
    white = ndimage.gaussian_filter(tissues["white"][box], 2.0 / spacing)
    distance = ndimage.distance_transform_edt(~core, sampling=spacing) if core.any() else radius_mm
    reach = oedema_reach * (0.3 + 0.8 * white) * (1.0 + 0.25 * _smooth_noise(rng, shape, 4.0 / spacing))
    oedema = (distance <= reach) & ~core & inside & (tissues["csf"][box] < 0.6)

    labels = np.zeros(anatomy.grid.shape, dtype=np.uint8)
    region = np.zeros(shape, dtype=np.uint8)
    region[oedema] = OEDEMA
    region[core] = ENHANCING if enhancing else NECROSIS
    region[necrosis] = NECROSIS
    labels[box] = region
    tissues["brain"] = brain
    return Tumour(labels=labels, tissues=tissues, centre_voxel=tuple(int(c) for c in centre), enhancing=enhancing)
