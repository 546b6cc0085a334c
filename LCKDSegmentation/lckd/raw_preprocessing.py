"""``--preprocess``: raw scans as a hospital has them -> BraTS-ready volumes on a 1 mm grid.

1. Rigid co-registration of every sequence onto the reference (:mod:`lckd.registration`).
2. Resampling of every sequence, once, onto a near-isotropic working grid (RAS-aligned, 1 mm,
   covering the reference's field of view).
3. Brain extraction on one sequence (T1 if given, else T1ce, FLAIR, T2: deepbet was trained on
   T1-weighted images), the one mask applied to all (:mod:`lckd.brain_extraction`).

Steps the input does not need are skipped, as :func:`lckd.input_check.find_problems` judges it:
skull-stripped input keeps its own brain (its non-zero voxels; a second extraction could only
shave it), and skull-stripped, co-registered input is not registered again (the check's overlap
measure is meaningful on brains, not on heads). BraTS-ready input therefore only changes grid.
The segmenter then runs as usual on these volumes and maps its probabilities onto the reference
input's own grid. What this cannot fix: thick slices stay as uninformative as they were
(interpolation adds no detail), and a brain extraction that cuts into the tumour cuts the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import numpy as np
from scipy import ndimage

from .geometry import Grid, resample, working_grid
from .input_check import find_problems
from .io import Volume
from .preparation import choose_reference

#: The working grid's spacing (mm): BraTS' 1 mm.
WORKING_SPACING_MM = 1.0
#: Which sequence the brain is extracted from, first present wins.
EXTRACTION_PREFERENCE = ("t1", "t1ce", "flair", "t2")


@dataclass
class PreprocessedCase:
    """Co-registered, brain-extracted volumes on one working grid, and the reference's own grid."""

    volumes: Dict[str, Volume]
    registered_affines: Dict[str, np.ndarray]  # each input's own grid placed onto the reference
    brain: np.ndarray  # boolean mask on the working grid
    grid: Grid  # the working grid
    reference: str
    reference_grid: Grid
    seconds: Dict[str, float] = field(default_factory=dict)


def preprocess_case(volumes: Mapping[str, Volume], reference: Optional[str] = None, use_gpu: bool = False,
                    spacing_mm: float = WORKING_SPACING_MM) -> PreprocessedCase:
    """Co-register, resample onto the working grid and brain-extract ``{sequence: volume}``."""
    from .brain_extraction import brain_mask
    from .registration import register_rigid

    seconds: Dict[str, float] = {}
    reference = choose_reference(list(volumes), reference)
    fixed = volumes[reference]
    clock = time.perf_counter()
    found = find_problems(volumes, reference)
    stripped_already = not found["skull"]
    seconds["check"] = time.perf_counter() - clock

    clock = time.perf_counter()
    register = not (stripped_already and not found["registration"])
    registered = {name: register_rigid(fixed, volume) if register and name != reference else volume
                  for name, volume in volumes.items()}
    seconds["register"] = time.perf_counter() - clock

    clock = time.perf_counter()
    reference_grid = Grid(shape=tuple(fixed.shape), affine=fixed.affine)
    grid = working_grid(reference_grid, (spacing_mm,) * 3)
    on_grid = {name: resample(volume.data, volume.affine, grid, order=1) for name, volume in registered.items()}
    seconds["resample"] = time.perf_counter() - clock

    clock = time.perf_counter()
    source = next(name for name in EXTRACTION_PREFERENCE if name in on_grid)
    if stripped_already:  # its own brain: the non-zero voxels, with zero voxels inside it kept
        brain = ndimage.binary_fill_holes(on_grid[source] != 0)
    else:
        brain = brain_mask(on_grid[source], use_gpu=use_gpu)
    seconds["brain_extraction"] = time.perf_counter() - clock
    stripped = {name: Volume(data=np.where(brain, data, 0).astype(np.float32), affine=grid.affine,
                             path=volumes[name].path) for name, data in on_grid.items()}
    return PreprocessedCase(volumes=stripped, registered_affines={n: v.affine for n, v in registered.items()},
                            brain=brain, grid=grid, reference=reference,
                            reference_grid=reference_grid, seconds=seconds)
