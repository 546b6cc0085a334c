"""Detect input the model cannot read: not skull-stripped, not co-registered, very thick slices.

The model (like every BraTS model) expects BraTS-ready sequences: skull-stripped, co-registered
with each other and near-isotropic. Raw scans from a scanner are none of these, and the network
then labels eyes and scalp as tumour. :func:`check_inputs` finds such input from the images alone,
in well under a second: each image is looked at on a grid of about 2 mm.

* *Not skull-stripped*: a skull-stripped image is zero outside the brain, so most of its field of
  view is one background value (75-87 % on the BraTS 2018/2023 cases and the HD-BET-stripped
  clinical scans; 3-10 % on the raw clinical scans); and its tissue is brain-sized (1.2-1.7 L on
  those cases; 3.0 L on the raw scans, which cover only 143 mm of the head).
* *Not co-registered*: the tissue of each sequence must lie where the reference's lies (at least
  95 % of the smaller of the two tissue regions inside the other).
* *Very thick slices*: voxels longer than 3 mm along any axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, NamedTuple, Optional, Union

import numpy as np
from scipy import ndimage

from .geometry import Grid, resample
from .io import PathLike, Volume, load_volume
from .sequences import SEQUENCE_TITLES

#: Below this share of background voxels (exactly the background value) an image is not skull-stripped.
MIN_BACKGROUND_SHARE = 0.30
#: Above this much tissue (mL, largest connected part, holes filled) an image shows a head, not a brain.
MAX_BRAIN_ML = 2200.0
#: Voxels longer than this (mm) along any axis are "very thick slices".
MAX_SLICE_MM = 3.0
#: Below this share of the smaller tissue region lying inside the other, two sequences are not co-registered
#: (0.987-1.000 on the BraTS cases; 0.80-0.94 on the clinical scans as the scanner placed them, which a
#: rigid registration moves by 9-14 degrees and 3-17 mm; about 2 mm of misalignment costs 5 %).
MIN_OVERLAP = 0.95
#: The coarse grid the check looks at (mm).
CHECK_SPACING_MM = 2.0

PREPROCESS_FIX = "run with --preprocess (co-registration, brain extraction, 1 mm resampling), " \
                 "or --assume-preprocessed if it is BraTS-ready already"


class InputProblem(NamedTuple):
    """One reason the model cannot read an input: the file, what is wrong, how to fix it."""

    file: str
    message: str
    fix: str

    def line(self) -> str:
        """The problem as the one line the command prints."""
        return f"{self.file}: {self.message}; {self.fix}"


@dataclass
class _Tissue:
    """An image's tissue mask on a coarse grid, and what was measured on the way."""

    mask: np.ndarray
    grid: Grid
    background_share: float
    tissue_ml: float


def _coarse(volume: Volume) -> tuple:
    """Every n-th voxel along each axis finer than :data:`CHECK_SPACING_MM`; the matching affine."""
    steps = [max(1, int(round(CHECK_SPACING_MM / s))) for s in volume.spacing]
    data = volume.data[::steps[0], ::steps[1], ::steps[2]]
    affine = volume.affine @ np.diag(steps + [1])
    return data, affine


def _tissue(volume: Volume) -> _Tissue:
    data, affine = _coarse(volume)
    background = 0.0 if np.any(data == 0) else float(data.min())
    is_background = data == background
    background_share = float(is_background.mean())
    values = data[~is_background]
    if values.size == 0:
        mask = np.zeros(data.shape, dtype=bool)
    else:
        # 10 % of the bright end separates tissue from noise and from interpolation ringing
        mask = data > background + 0.1 * (np.percentile(values, 99) - background)
        labels, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(sizes.argmax())
        mask = ndimage.binary_fill_holes(mask)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    return _Tissue(mask=mask, grid=Grid(shape=tuple(data.shape), affine=affine),
                   background_share=background_share, tissue_ml=float(mask.sum() * voxel_ml))


def _overlap(a: _Tissue, b: _Tissue) -> float:
    """Share of the smaller tissue region that lies inside the other, in physical space."""
    b_on_a = resample(b.mask.astype(np.float32), b.grid.affine, a.grid, order=0) > 0.5
    # b's tissue outside a's field of view counts as not overlapping
    b_total = b.mask.sum() * b.grid.voxel_volume_mm3
    inside = np.logical_and(a.mask, b_on_a).sum() * a.grid.voxel_volume_mm3
    smaller = min(a.mask.sum() * a.grid.voxel_volume_mm3, b_total)
    return float(inside / smaller) if smaller > 0 else 0.0


def _name(volume: Volume, sequence: str) -> str:
    return str(volume.path) if volume.path is not None else SEQUENCE_TITLES.get(sequence, sequence)


#: The kinds of problem :func:`find_problems` sorts its findings into, in the order they are reported.
KINDS = ("skull", "slices", "registration")


def find_problems(volumes: Mapping[str, Union[Volume, PathLike]],
                  reference: Optional[str] = None) -> Dict[str, List[InputProblem]]:
    """:func:`check_inputs`' problems by kind: ``skull`` (not skull-stripped), ``slices`` (very thick
    slices, looked for only in skull-stripped images), ``registration`` (not co-registered)."""
    from .preparation import choose_reference

    loaded = {name: value if isinstance(value, Volume) else load_volume(value) for name, value in volumes.items()}
    found: Dict[str, List[InputProblem]] = {kind: [] for kind in KINDS}
    if not loaded:
        return found
    tissues = {}
    for name, volume in loaded.items():
        spacing = volume.spacing
        tissue = tissues[name] = _tissue(volume)
        if tissue.background_share < MIN_BACKGROUND_SHARE:
            found["skull"].append(InputProblem(
                _name(volume, name), f"not skull-stripped (only {tissue.background_share:.0%} of the image is "
                "zero background; a skull-stripped image is mostly zero)", PREPROCESS_FIX))
        elif tissue.tissue_ml > MAX_BRAIN_ML:
            found["skull"].append(InputProblem(
                _name(volume, name), f"not skull-stripped ({tissue.tissue_ml / 1000:.1f} L of tissue: a head, "
                "not a brain of 1-2 L)", PREPROCESS_FIX))
        elif spacing.max() > MAX_SLICE_MM:
            found["slices"].append(InputProblem(
                _name(volume, name), f"very thick slices ({spacing.max():.1f} mm; the model reads about 1 mm, "
                f"above {MAX_SLICE_MM:g} mm it misses small structures)", PREPROCESS_FIX))
    reference = choose_reference(list(loaded), reference)
    for name, volume in loaded.items():
        if name == reference:
            continue
        overlap = _overlap(tissues[reference], tissues[name])
        if overlap < MIN_OVERLAP:
            found["registration"].append(InputProblem(
                _name(volume, name), f"not co-registered with {SEQUENCE_TITLES[reference]} (only {overlap:.0%} "
                "of the tissue overlaps in physical space)", PREPROCESS_FIX))
    return found


def check_inputs(volumes: Mapping[str, Union[Volume, PathLike]],
                 reference: Optional[str] = None) -> List[InputProblem]:
    """The problems that keep the model from reading ``{sequence: volume or path}``; empty if none.

    At most one skull or slice problem per file (skull problems first), then one co-registration
    problem per sequence that does not lie where ``reference`` (default: t1ce, else t1, flair, t2) lies.
    """
    found = find_problems(volumes, reference)
    return [problem for kind in KINDS for problem in found[kind]]
