"""BraTS case folders: detect the 2018 / 2021 / 2023 file naming and list a case's files.

* BraTS 2018-2021: ``<case>/<case>_flair.nii.gz``, ``_t1``, ``_t1ce``, ``_t2``, ``_seg`` (ET = 4).
* BraTS 2023: ``<case>/<case>-t2f.nii.gz`` (FLAIR), ``-t1n``, ``-t1c``, ``-t2w``, ``-seg`` (ET = 3).

Both ``.nii.gz`` and ``.nii`` are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from .errors import InputError
from .sequences import SEQUENCES

#: File-name suffix of each sequence (and the label map) per layout.
LAYOUT_SUFFIXES: Dict[str, Dict[str, str]] = {
    "brats2018": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "brats2021": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "seg": "_seg"},
    "brats2023": {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "seg": "-seg"},
}
#: The label value of enhancing tumour in each layout's ground truth.
LAYOUT_ET_LABEL = {"brats2018": 4, "brats2021": 4, "brats2023": 3}
NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: present sequences (channel-order keys) and the label map if any."""

    name: str
    folder: Path
    layout: str
    sequences: Dict[str, Path]
    segmentation: Optional[Path]

    @property
    def et_label(self) -> int:
        return LAYOUT_ET_LABEL[self.layout]


def _find(folder: Path, stem: str) -> Optional[Path]:
    for extension in NIFTI_EXTENSIONS:
        candidate = folder / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    return None


def case_paths(folder: Path, name: str, layout: str) -> Dict[str, Path]:
    """Where each file of a case named ``name`` goes in ``layout`` (``.nii.gz``), for writers."""
    suffixes = LAYOUT_SUFFIXES[layout]
    return {key: folder / f"{name}{suffix}.nii.gz" for key, suffix in suffixes.items()}


def read_case_folder(folder: Path | str) -> CaseFiles:
    """Detect the layout of one case folder and list its files.

    The case name is the folder name (as in every BraTS release). Raises :class:`InputError`
    naming the folder when no sequence file of a known layout is found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    name = folder.name
    best: Optional[CaseFiles] = None
    for layout, suffixes in LAYOUT_SUFFIXES.items():
        found = {seq: _find(folder, name + suffixes[seq]) for seq in SEQUENCES}
        sequences = {seq: path for seq, path in found.items() if path is not None}
        if sequences and (best is None or len(sequences) > len(best.sequences)):
            best = CaseFiles(name=name, folder=folder, layout=layout, sequences=sequences,
                             segmentation=_find(folder, name + suffixes["seg"]))
    if best is None:
        expected = ", ".join(f"{name}{s}.nii.gz" for s in LAYOUT_SUFFIXES["brats2018"].values())
        raise InputError(f"{folder}: no BraTS sequence files found (expected names like {expected}, "
                         f"or the BraTS 2023 names -t2f, -t1n, -t1c, -t2w)")
    if best.layout == "brats2018" and name.startswith("BraTS2021"):
        best = CaseFiles(best.name, best.folder, "brats2021", best.sequences, best.segmentation)
    return best


def find_cases(root: Path | str) -> List[CaseFiles]:
    """Every case folder below ``root`` (any depth, e.g. BraTS 2018 ``HGG/`` and ``LGG/``), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    cases = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        try:
            cases.append(read_case_folder(folder))
        except InputError:
            continue
    if not cases:
        raise InputError(f"{root}: no BraTS case folders found")
    return cases
