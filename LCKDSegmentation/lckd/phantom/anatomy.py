"""Brain anatomy for phantoms: the MNI ICBM152 2009 template on the BraTS grid.

nilearn's wheel ships the 1 mm skull-stripped T1 template with grey- and white-matter probability
maps; cerebrospinal fluid is the brain mask (T1 > 0) minus grey and white matter. They are put on
the BraTS grid (240 x 240 x 155 at 1 mm, RAS, brain centred in-plane; the template's brain spans
exactly 155 axial slices) or on a coarser grid with the same field of view.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import LCKDError
from ..geometry import Grid, resample

BRATS_SHAPE = (240, 240, 155)
#: Template voxel that lands at BraTS voxel (120, 120, 0): the brain's in-plane centre, lowest slice.
_TEMPLATE_ANCHOR = np.array([98.0, 117.0, 0.0])
_BRATS_ANCHOR = np.array([120.0, 120.0, 0.0])


@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions on a grid: grey matter, white matter, CSF (each 0..1), and the brain mask."""

    grid: Grid
    grey: np.ndarray
    white: np.ndarray
    csf: np.ndarray
    brain: np.ndarray


def template_folder() -> Path:
    """The folder of nilearn's packaged MNI template files (never downloaded)."""
    try:
        import nilearn.datasets
    except ImportError:
        raise LCKDError("the phantom generator needs nilearn (pip install nilearn), which ships the MNI "
                        "brain template") from None
    return Path(nilearn.datasets.__file__).resolve().parent / "data"


def _template(kind: str) -> nib.Nifti1Image:
    path = template_folder() / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise LCKDError(f"{path}: the MNI template is missing from the installed nilearn package")
    return nib.load(str(path))


def brats_grid(spacing: float = 1.0) -> Grid:
    """The BraTS field of view (240 x 240 x 155 mm, RAS) sampled every ``spacing`` mm."""
    shape = tuple(int(np.ceil(n / spacing)) for n in BRATS_SHAPE)
    template = _template("t1").affine
    anchor_world = template[:3, :3] @ _TEMPLATE_ANCHOR + template[:3, 3]
    affine = np.diag([spacing, spacing, spacing, 1.0])
    # voxel centres of the coarse grid sit at the centres of spacing-sized blocks of 1 mm voxels
    affine[:3, 3] = anchor_world - _BRATS_ANCHOR + (spacing - 1.0) / 2.0
    return Grid(shape=shape, affine=affine)


@functools.lru_cache(maxsize=4)
def load_anatomy(spacing: float = 1.0) -> Anatomy:
    """Tissue maps on the BraTS grid at ``spacing`` mm (cached; treat the arrays as read-only)."""
    grid = brats_grid(spacing)
    maps = {}
    for kind in ("t1", "gm", "wm"):
        image = _template(kind)
        data = np.asarray(image.dataobj, dtype=np.float32) / 255.0
        if spacing > 1.0:  # average over the coarse voxel before sampling (partial volume)
            data = ndimage.uniform_filter(data, size=int(round(spacing)))
        maps[kind] = np.clip(resample(data, image.affine, grid, order=1), 0.0, 1.0)
    brain = maps["t1"] > 0.02
    grey = maps["gm"] * brain
    white = maps["wm"] * brain
    scale = np.maximum(grey + white, 1.0)  # the two maps may overlap slightly after interpolation
    grey, white = grey / scale, white / scale
    csf = np.clip(brain.astype(np.float32) - grey - white, 0.0, 1.0)
    for array in (grey, white, csf, brain):
        array.setflags(write=False)
    return Anatomy(grid=grid, grey=grey, white=white, csf=csf, brain=brain)
