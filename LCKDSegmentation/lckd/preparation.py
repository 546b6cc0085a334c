"""From input volumes to the network's input array, and from region probabilities back.

The one path both inference and training take: choose the reference input, build the working grid
(RAS-aligned, model spacing, reference field of view), resample every sequence onto it in physical
space, normalise each sequence, crop to the brain box and order axes ``(z, y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .geometry import Grid, from_network_axes, resample, to_network_axes, working_grid
from .io import Volume
from .preprocess import Box, Normalisation, brain_box, crop, normalise, uncrop
from .sequences import SEQUENCES

#: Default reference when ``--reference`` is not given: the first of these that is present.
REFERENCE_PREFERENCE = ("t1ce", "t1", "flair", "t2")


def choose_reference(available: Sequence[str], requested: Optional[str] = None) -> str:
    """The reference sequence: ``requested`` if given (and present), else t1ce > t1 > flair > t2."""
    if requested is not None:
        if requested not in available:
            raise InputError(f"--reference {requested}: that sequence was not given")
        return requested
    return next(name for name in REFERENCE_PREFERENCE if name in available)


@dataclass
class PreparedCase:
    """A case ready for the network, and what is needed to map results back."""

    images: np.ndarray  # (4, Z, Y, X) float32, normalised, brain-cropped; absent channels are zero
    present: List[bool]  # channel order flair, t1, t1ce, t2
    grid: Grid  # the working grid (RAS x, y, z), before the crop
    box: Box  # the crop box, in network axes (z, y, x)
    reference: str
    reference_grid: Grid

    @property
    def network_shape(self) -> Tuple[int, int, int]:
        """Shape of the uncropped working grid in network axes."""
        return tuple(reversed(self.grid.shape))


def prepare_case(volumes: Dict[str, Volume], spacing_mm: Sequence[float], normalisation: Normalisation,
                 reference: Optional[str] = None, margin: int = 4) -> PreparedCase:
    """Resample, normalise and crop the given sequences (any non-empty subset)."""
    if not volumes:
        raise InputError("no input sequence given: give at least one of --flair, --t1, --t1ce, --t2")
    unknown = set(volumes) - set(SEQUENCES)
    if unknown:
        raise InputError(f"unknown sequence(s): {', '.join(sorted(unknown))}")
    reference = choose_reference(list(volumes), reference)
    ref = volumes[reference]
    reference_grid = Grid(shape=tuple(ref.shape), affine=ref.affine)
    grid = working_grid(reference_grid, spacing_mm)
    channels = []
    for name in SEQUENCES:
        if name not in volumes:
            channels.append(None)
            continue
        resampled = resample(volumes[name].data, volumes[name].affine, grid, order=1)
        if not np.any(resampled != 0):
            raise InputError(f"{volumes[name].path or name}: the image does not overlap the reference "
                             f"({reference}) in physical space")
        channels.append(to_network_axes(normalise(resampled, normalisation)))
    shape = next(c for c in channels if c is not None).shape
    box = brain_box([c for c in channels if c is not None], margin=margin)
    images = np.zeros((len(SEQUENCES),) + tuple(s.stop - s.start for s in box), dtype=np.float32)
    for index, channel in enumerate(channels):
        if channel is not None:
            images[index] = crop(channel, box)
    assert tuple(reversed(grid.shape)) == shape
    return PreparedCase(images=images, present=[c is not None for c in channels], grid=grid, box=box,
                        reference=reference, reference_grid=reference_grid)


def labels_on_network_grid(labels: Volume, prepared: PreparedCase) -> np.ndarray:
    """A label map resampled (nearest) onto the prepared case's cropped network array."""
    on_grid = resample(labels.data, labels.affine, prepared.grid, order=0)
    return crop(to_network_axes(np.rint(on_grid).astype(np.uint8)), prepared.box)


def probabilities_to_reference(probabilities: np.ndarray, prepared: PreparedCase) -> np.ndarray:
    """Region probabilities ``(3, *cropped network shape)`` -> ``(3, *reference shape)``.

    Uncrops (outside the brain box: probability 0), returns to RAS axis order and resamples each
    region linearly onto the reference input's grid. Only the reference voxels that can see the
    box are interpolated (:func:`reference_footprint`); the others are 0 either way. For the demo
    model's 2 mm grid mapped back onto the 1 mm benchmark case this took 0.56-0.66 s instead of
    0.92-1.24 s.
    """
    full = uncrop(probabilities.astype(np.float32), prepared.box, prepared.network_shape, fill=0.0)
    on_grid = from_network_axes(full)
    reference = prepared.reference_grid
    footprint = reference_footprint(prepared)
    out = np.zeros((len(on_grid),) + tuple(reference.shape), dtype=np.float32)
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in footprint]
    part = Grid(shape=tuple(s.stop - s.start for s in footprint), affine=reference.affine @ shift)
    for index, region in enumerate(on_grid):
        out[(index,) + footprint] = resample(region, prepared.grid.affine, part, order=1)
    return out


def reference_footprint(prepared: PreparedCase) -> Box:
    """The reference-grid box (i, j, k slices) of the voxels whose linear interpolation on the
    working grid reads a voxel of the brain box; every other reference voxel samples only zeros."""
    # the brain box in working-grid (x, y, z) voxel coordinates, widened by the one voxel that
    # linear interpolation reaches from outside it
    low = np.array([s.start for s in reversed(prepared.box)], dtype=np.float64) - 1
    high = np.array([s.stop for s in reversed(prepared.box)], dtype=np.float64)
    corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])])
    reference = prepared.reference_grid
    to_reference = np.linalg.inv(reference.affine) @ prepared.grid.affine
    voxels = (to_reference @ corners.T)[:3]
    start = np.maximum(np.floor(voxels.min(axis=1)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(voxels.max(axis=1)).astype(int) + 2, reference.shape)
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(start, stop))
