"""Physical-space geometry: the working grid, resampling between grids, network axis order.

Inputs may differ in spacing, orientation (RAS, LPS, oblique) and extent. Every input is
resampled in physical (RAS mm) space onto one *working grid*: axis-aligned with RAS, at the
model's spacing, covering the reference input's field of view. The network sees that grid with
its axes ordered ``(z, y, x)`` (axial slices first, as BraTS tiles are ``D, H, W``). Region
probabilities are resampled back onto the reference input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array ``shape`` (i, j, k) and voxel-to-RAS-mm ``affine``."""

    shape: Tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))


def working_grid(reference: Grid, spacing: Sequence[float]) -> Grid:
    """RAS-aligned grid at ``spacing`` (x, y, z mm) covering ``reference``'s voxel centres."""
    spacing = np.asarray(spacing, dtype=np.float64)
    corners = np.array([[i, j, k, 1.0] for i in (0, reference.shape[0] - 1)
                        for j in (0, reference.shape[1] - 1) for k in (0, reference.shape[2] - 1)])
    world = (reference.affine @ corners.T)[:3]
    low, high = world.min(axis=1), world.max(axis=1)
    shape = tuple(int(n) for n in np.floor((high - low) / spacing + 1e-6).astype(int) + 1)
    affine = np.diag(np.append(spacing, 1.0))
    affine[:3, 3] = low
    return Grid(shape=shape, affine=affine)


Permutation = Tuple[Tuple[int, ...], Tuple[bool, ...], np.ndarray]


def _signed_permutation(matrix: np.ndarray, offset: np.ndarray) -> Optional[Permutation]:
    """If ``matrix`` maps target voxels onto source voxels by axis permutation and flips with an
    integer offset, return (axis order, flips, offset); else None."""
    rounded = np.round(matrix)
    if not np.allclose(matrix, rounded, atol=1e-5) or not np.allclose(offset, np.round(offset), atol=1e-4):
        return None
    if not np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3)) or \
            not np.array_equal(np.abs(rounded).sum(axis=1), np.ones(3)):
        return None
    order = tuple(int(np.nonzero(rounded[:, t])[0][0]) for t in range(3))
    flips = tuple(bool(rounded[order[t], t] < 0) for t in range(3))
    return order, flips, np.round(offset).astype(int)


def resample(data: np.ndarray, source_affine: np.ndarray, target: Grid, order: int = 1,
             fill: float = 0.0) -> np.ndarray:
    """Sample ``data`` (on ``source_affine``) at the voxel centres of ``target``.

    Linear (``order=1``) or nearest (``order=0``) interpolation; outside the source: ``fill``.
    Grids that differ only by axis permutations, flips and whole-voxel shifts are copied exactly.
    """
    mapping = np.linalg.inv(source_affine) @ target.affine  # target voxel -> source voxel
    matrix, offset = mapping[:3, :3], mapping[:3, 3]
    exact = _signed_permutation(matrix, offset)
    if exact is not None:
        return _copy_permuted(data, exact, target.shape, fill)
    if not np.any(matrix - np.diag(np.diagonal(matrix))):
        matrix = np.diagonal(matrix)  # axis-aligned scaling: scipy's separable path, same values, ~1.5x faster
    return ndimage.affine_transform(np.asarray(data, dtype=np.float32), matrix, offset=offset,
                                    output_shape=target.shape, order=order, mode="constant", cval=fill)


def _copy_permuted(data: np.ndarray, exact: Permutation, target_shape: Sequence[int], fill: float) -> np.ndarray:
    order, flips, offset = exact
    out = np.full(target_shape, fill, dtype=np.float32)
    # target index t along axis a reads source index offset[src] + sign * t along source axis order[a]
    target_slices, source_slices = [], [None, None, None]
    for axis in range(3):
        src_axis = order[axis]
        sign = -1 if flips[axis] else 1
        start = offset[src_axis]
        n_target, n_source = target_shape[axis], data.shape[src_axis]
        t = np.arange(n_target)
        s = start + sign * t
        valid = np.nonzero((s >= 0) & (s < n_source))[0]
        if valid.size == 0:
            return out
        t0, t1 = int(valid[0]), int(valid[-1]) + 1
        s0, s1 = int(s[t0]), int(s[t1 - 1])
        target_slices.append(slice(t0, t1))
        source_slices[src_axis] = slice(s0, s1 + 1) if sign > 0 else slice(s1, s0 + 1)
    block = data[tuple(source_slices)]
    block = np.transpose(block, order)
    flip_axes = tuple(axis for axis in range(3) if flips[axis])
    if flip_axes:
        block = np.flip(block, axis=flip_axes)
    out[tuple(target_slices)] = block
    return out


def to_network_axes(array: np.ndarray) -> np.ndarray:
    """(..., x, y, z) on the working grid -> (..., z, y, x) for the network."""
    return np.ascontiguousarray(np.swapaxes(array, -1, -3))


def from_network_axes(array: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_network_axes`."""
    return np.ascontiguousarray(np.swapaxes(array, -1, -3))
