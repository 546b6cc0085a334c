"""Phantom cases: anatomy + tumour + contrast, written in BraTS 2018, 2021 or 2023 layout.

Case ``i`` of seed ``s`` depends on ``(s, i)`` only, so ``--cases 5`` and ``--cases 10`` share their
first five cases, and the same seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..cases import LAYOUT_ET_LABEL, LAYOUT_SUFFIXES, case_paths
from ..io import save_nifti
from ..sequences import SEQUENCES
from .anatomy import load_anatomy
from .contrast import render
from .tumour import ENHANCING, sample_tumour

LAYOUTS = tuple(LAYOUT_SUFFIXES)


@dataclass
class PhantomCase:
    """One synthetic case: int16 images per sequence (keys in channel order flair, t1, t1ce, t2),
    uint8 labels (BraTS 2018 values 0/1/2/4), the voxel-to-RAS-mm affine, the tumour centre voxel."""

    images: Dict[str, np.ndarray]
    labels: np.ndarray
    affine: np.ndarray
    centre_voxel: Tuple[int, int, int]

    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def stacked(self) -> np.ndarray:
        """The four sequences as one ``(4, X, Y, Z)`` array in channel order."""
        return np.stack([self.images[name] for name in SEQUENCES])


def make_case(seed: int, *, index: int = 0, spacing: float = 1.0, mass_effect: bool = True) -> PhantomCase:
    """Generate case ``index`` of ``seed`` on the BraTS field of view at ``spacing`` mm.

    The case depends on ``(seed, index, spacing, mass_effect)`` only. ``index`` and the options are
    keyword-only, so that ``make_case(seed, spacing=2.0)`` cannot be mistaken for another case.
    """
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative integers, got seed={seed}, index={index}")
    rng = np.random.default_rng([int(seed), int(index)])
    anatomy = load_anatomy(float(spacing))
    tumour = sample_tumour(anatomy, rng, mass_effect=mass_effect)
    images = render(tumour.tissues, tumour.labels, float(spacing), rng)
    return PhantomCase(images=images, labels=tumour.labels, affine=anatomy.grid.affine.copy(),
                       centre_voxel=tumour.centre_voxel)


def case_name(layout: str, index: int) -> str:
    """BraTS-like case names that the case loader recognises for each layout."""
    if layout == "brats2021":
        return f"BraTS2021_{index:05d}"
    if layout == "brats2023":
        return f"BraTS-GLI-{index:05d}-000"
    return f"Phantom_{index:04d}"


def write_case(case: PhantomCase, folder: Path, name: str, layout: str = "brats2018") -> Path:
    """Write one case's files (atomically each) into ``folder/name``."""
    case_dir = Path(folder) / name
    paths = case_paths(case_dir, name, layout)
    labels = case.labels
    if LAYOUT_ET_LABEL[layout] != ENHANCING:
        labels = np.where(labels == ENHANCING, LAYOUT_ET_LABEL[layout], labels).astype(np.uint8)
    for sequence, image in case.images.items():
        save_nifti(paths[sequence], image, case.affine)
    save_nifti(paths["seg"], labels, case.affine)
    return case_dir


def write_cases(out_dir: Path, n_cases: int = 1, seed: int = 0, layout: str = "brats2018", spacing: float = 1.0,
                preview: bool = False, mass_effect: bool = True, progress: bool = False) -> List[Path]:
    """Generate and write ``n_cases`` cases; returns their folders."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    from tqdm import tqdm

    folders = []
    for index in tqdm(range(n_cases), desc="phantoms", unit="case", disable=not progress):
        case = make_case(seed, index=index, spacing=spacing, mass_effect=mass_effect)
        folder = write_case(case, Path(out_dir), case_name(layout, index), layout)
        if preview:
            from .preview import write_preview

            write_preview(case, folder / f"{folder.name}_preview.png")
        folders.append(folder)
    return folders
